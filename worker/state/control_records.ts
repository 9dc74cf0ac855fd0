// The control log's records (control_log.ts) and their validators: the vhost-user session after
// each control message, and the control message itself (begin, reply, end). They are msgpack
// records behind TAG_GENERIC (records.ts); their shapes are schema 1's and 2's alike.
// Limits are the owners' own: a journal may not hold what the backend would have refused.
import type { PendingControl, VhostSessionState, VringConfig } from '../vhost/backend';
import { MAX_MEM_SLOTS } from '../vhost/memory_table';
import { VHOST_USER_MAX_FDS } from '../vhost/messages';
import { MAX_REQUEST_QUEUES } from '../../shared/config';
import { MAX_QUEUE_SIZE } from '../virtqueue/split_ring';
import { StateFileError } from './journal';
import { fail, isBig, isBool, isObj, isUint } from './validate';

/** Virtqueues of a device: the hiprio queue and the request queues. */
const MAX_DEVICE_QUEUES = 1 + MAX_REQUEST_QUEUES;

/** The control message being handled (journaled before it is handled). */
export interface PendingRec { seq: number; request: number; flags: number; size: number; payload: Buffer; nfds: number; committed: boolean; reply: Buffer | null }

/** The control log's msgpack records. */
export type ControlRecord =
  | { t: 'vhost'; seq: number; s: VhostSessionState }
  | { t: 'ctl'; seq: number; request: number; flags: number; size: number; payload: Buffer; nfds: number }
  | { t: 'ctl-reply'; seq: number; data: Buffer }
  | { t: 'ctl-end'; seq: number };

/** The keeper holds a control message's fds under these names until the message is finished. */
export const ctlFdName = (i: number): string => `ctl.${i}`;

function checkVring(p: string, v: unknown, running: boolean): VringConfig {
  if (!isObj(v)) fail(p, 'vring is not an object');
  const ok = isUint(v.size, MAX_QUEUE_SIZE) && isBool(v.addrSet) && isUint(v.base, 0xffff) && isBool(v.enabled) && isBool(v.kicked);
  if (!ok) fail(p, 'vring fields out of range');
  const addrs = isUint(v.descUser) && isUint(v.availUser) && isUint(v.usedUser);
  if (!addrs) {
    // Unusable addresses matter only to a queue that runs: a stopped one gets SET_VRING_ADDR
    // again before it starts (older workers could journal NaN here from a refused message).
    if (running) fail(p, 'vring addresses out of range');
    return { ...(v as unknown as VringConfig), descUser: 0, availUser: 0, usedUser: 0, addrSet: false };
  }
  return v as unknown as VringConfig;
}

export function checkVhostState(p: string, v: unknown): VhostSessionState {
  if (!isObj(v)) fail(p, 'vhost state is not an object');
  // Slot numbers are only fd names (mem.<slot>): any safe integer is fine, as long as no two
  // regions share one.
  if (!isBool(v.ownerSet) || !isBig(v.ackedFeatures) || !isBig(v.ackedProtocolFeatures) || !isBool(v.featuresSet) || !isUint(v.nextSlot)) {
    fail(p, 'vhost feature fields');
  }
  // The backend maps at most MAX_MEM_SLOTS regions (GET_MAX_MEM_SLOTS, ADD_MEM_REG).
  if (!Array.isArray(v.regions) || v.regions.length > MAX_MEM_SLOTS) fail(p, 'vhost regions');
  const slots = new Set<number>();
  for (const r of v.regions as unknown[]) {
    if (!isObj(r) || !isUint(r.slot) || !isUint(r.guestPhysAddr) || !isUint(r.size) || r.size === 0 || !isUint(r.userspaceAddr) || !isUint(r.mmapOffset)) {
      fail(p, 'vhost region fields');
    }
    if (slots.has(r.slot)) fail(p, 'two vhost regions in one slot');
    slots.add(r.slot);
  }
  if (!Array.isArray(v.vrings) || v.vrings.length < 1 || v.vrings.length > MAX_DEVICE_QUEUES) fail(p, 'vhost vrings');
  const vrings = v.vrings as unknown[];
  if (!Array.isArray(v.running) || !(v.running as unknown[]).every((q) => isUint(q, vrings.length - 1))) fail(p, 'vhost running queues');
  const running = new Set(v.running as number[]);
  const checked = vrings.map((x, i) => checkVring(p, x, running.has(i)));
  if (v.inflight !== null) {
    const i = v.inflight;
    if (!isObj(i) || !isUint(i.numQueues, MAX_DEVICE_QUEUES) || !isUint(i.queueSize, MAX_QUEUE_SIZE) || !isUint(i.mmapSize)) fail(p, 'vhost inflight');
  }
  return { ...(v as unknown as VhostSessionState), vrings: checked };
}

export function checkPending(p: string, v: unknown): PendingRec | null {
  if (v === null) return null;
  if (!isObj(v) || !isUint(v.seq) || !isUint(v.request, 0xffffffff) || !isUint(v.flags, 0xffffffff) || !isUint(v.size, 0xffffffff) ||
    !Buffer.isBuffer(v.payload) || !isUint(v.nfds, VHOST_USER_MAX_FDS) || !isBool(v.committed) || !(v.reply === null || Buffer.isBuffer(v.reply))) {
    fail(p, 'pending control message');
  }
  return v as unknown as PendingRec;
}

/** The dead worker's unfinished control message, with its fds from the keeper. */
export function pendingControl(p: PendingRec, fds: Map<string, number>): PendingControl {
  const own: number[] = [];
  for (let i = 0; i < p.nfds; i++) {
    const fd = fds.get(ctlFdName(i));
    if (fd === undefined) throw new StateFileError(`control message ${p.seq} lost its fd #${i}`, 'keeper');
    own.push(fd);
  }
  return {
    seq: p.seq, header: { request: p.request, flags: p.flags, size: p.size }, payload: p.payload, fds: own,
    committed: p.committed, reply: p.reply,
  };
}
