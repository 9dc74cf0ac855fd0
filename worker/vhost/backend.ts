// vhost-user layer: the backend side of QEMU's protocol for one connection. It negotiates
// features, keeps the memory table and the vring configuration, and starts/stops queues on a
// QueueHandler (the virtqueue → FUSE layers). Every malformed message is answered with a
// REPLY_ACK failure (when the frontend asked for one) or logged; none is fatal except those
// that break the stream's framing (handled by the transport).
import type { Logger } from '../../shared/log';
import { native, C, STAT, type Poller, POLL_READABLE, isNativeError } from '../../shared/native';
import type { FdRegistry } from '../../shared/fd_registry';
import { GuestMemory, GuestMemoryError, toSafeNumber, type MemoryRegion } from '../virtqueue/guest_memory';
import { InflightRegion, RingError, SplitRing, inflightQueueRegionSize, MAX_QUEUE_SIZE } from '../virtqueue/split_ring';
import * as M from './messages';
import { MessageTransport, type IncomingMessage } from './transport';
import { crashPoint } from '../../shared/crash_points';
import { FrontendError, errorInfo } from '../../shared/errors';
import type { QueueHandler } from '../virtqueue/queue_server';


export interface VhostDevice {
  /** Total virtqueues (hiprio + request queues). */
  readonly numQueues: number;
  createQueueHandler(index: number): QueueHandler;
  /** The frontend reset the device (RESET_OWNER / RESET_DEVICE). */
  onReset(): void;
}

/**
 * Makes control messages crash-safe (docs/ARCHITECTURE.md, Crash safety, rule 3 "Control messages
 * once"). Without one (tests, single-process use) replies go straight to the socket.
 */
export interface ControlJournal {
  /** Durable record of a consumed message and the names its fds are stored under; returns its
   * sequence number. */
  begin(header: M.MessageHeader, payload: Buffer, fds: number[]): number;
  /** The session state after handling message `seq`, durable before any reply. */
  commit(seq: number, state: VhostSessionState): void;
  /** Sends reply `seq` to the frontend exactly once, even if called again after a restart. */
  reply(seq: number, data: Buffer, fds: number[]): void;
  end(seq: number): void;
}

/** A consumed control message a dead worker may not have finished. */
export interface PendingControl {
  seq: number;
  header: M.MessageHeader;
  payload: Buffer;
  fds: number[];
  /** The dead worker committed its state change; only the reply may be missing. */
  committed: boolean;
  /** The reply the committed handler produced, if any (replayed; the keeper dedups it). */
  reply: Buffer | null;
}

export const OFFERED_FEATURES =
  M.bit(M.VIRTIO_F_VERSION_1) | M.bit(M.VIRTIO_RING_F_INDIRECT_DESC) | M.bit(M.VIRTIO_RING_F_EVENT_IDX) |
  M.bit(M.VHOST_USER_F_PROTOCOL_FEATURES);

export const OFFERED_PROTOCOL_FEATURES =
  M.bit(M.ProtocolFeature.MQ) | M.bit(M.ProtocolFeature.REPLY_ACK) | M.bit(M.ProtocolFeature.BACKEND_REQ) |
  M.bit(M.ProtocolFeature.INFLIGHT_SHMFD) | M.bit(M.ProtocolFeature.CONFIGURE_MEM_SLOTS) |
  M.bit(M.ProtocolFeature.RESET_DEVICE);

export const MAX_MEM_SLOTS = 32;
/** GET_VRING_BASE waits this long for in-flight requests (e.g. a blocked SETLKW) to finish. */
const STOP_DRAIN_TIMEOUT_MS = 5000;

export interface VringConfig {
  size: number;
  descUser: number;
  availUser: number;
  usedUser: number;
  addrSet: boolean;
  base: number;
  enabled: boolean;
  kicked: boolean;
}

/** What the vhost-user session remembers (the part a restarted worker needs). */
export interface VhostSessionState {
  ownerSet: boolean;
  ackedFeatures: bigint;
  ackedProtocolFeatures: bigint;
  featuresSet: boolean;
  regions: Array<{ slot: number; guestPhysAddr: number; size: number; userspaceAddr: number; mmapOffset: number }>;
  nextSlot: number;
  vrings: VringConfig[];
  inflight: { numQueues: number; queueSize: number; mmapSize: number } | null;
  /** Queues that were being served (restarted on resume). */
  running: number[];
}

/** A vhost-user request we refuse (bad index, memory that does not fit, wrong fd). */
class VhostError extends FrontendError {}

interface RunningQueue {
  handler: QueueHandler;
  ring: SplitRing;
  kickPoller: Poller;
}

export class VhostUserBackend {
  private readonly transport: MessageTransport;
  readonly memory = new GuestMemory();
  private ownerSet = false;
  private ackedFeatures = 0n;
  private featuresSet = false;
  private ackedProtocolFeatures = 0n;
  private readonly vrings: VringConfig[];
  private readonly running = new Map<number, RunningQueue>();
  private regionSlots = new Map<string, number>(); // fdName → slot
  private nextSlot = 0;
  private inflightBuffer: ArrayBuffer | null = null;
  private inflightInfo: { numQueues: number; queueSize: number; mmapSize: number } | null = null;
  /** Mappings of our own per-queue inflight memfds (used when the frontend gave none). */
  private readonly ownInflight = new Map<number, ArrayBuffer>();
  private closed = false;
  private warnedUnsealable = false;
  /** A message whose handling waits (GET_VRING_BASE draining); later messages queue. */
  private busy = false;
  private readonly backlog: IncomingMessage[] = [];

  constructor(connFd: number, private readonly device: VhostDevice,
    private readonly registry: FdRegistry, private readonly log: Logger,
    private readonly onDisconnect: (reason: string) => void,
    private readonly journal: ControlJournal | null = null) {
    this.vrings = [];
    for (let i = 0; i < device.numQueues; i++) this.vrings.push(emptyVring());
    this.transport = new MessageTransport(connFd, {
      onMessage: (msg) => this.enqueue(msg),
      onClose: (reason) => this.disconnect(reason),
    });
  }

  /**
   * Resumes a session a dead worker was serving: the memory table is re-mapped from the fds
   * the keeper held, the vrings are rebuilt, inflight requests are resubmitted, and a control
   * message the dead worker consumed but did not finish is finished.
   */
  restore(state: VhostSessionState, pending: PendingControl | null): void {
    if (state.vrings.length !== this.vrings.length) {
      throw new VhostError(`saved session has ${state.vrings.length} queues, this device ${this.vrings.length}`);
    }
    this.ownerSet = state.ownerSet;
    this.ackedFeatures = state.ackedFeatures;
    this.ackedProtocolFeatures = state.ackedProtocolFeatures;
    this.featuresSet = state.featuresSet;
    this.nextSlot = state.nextSlot;
    for (const r of state.regions) {
      const fdName = `mem.${r.slot}`;
      const fd = this.registry.get(fdName);
      if (fd === undefined) throw new VhostError(`memory region fd ${fdName} is missing from the fd store`);
      try {
        this.memory.addRegion(fd, fdName, r.guestPhysAddr, r.size, r.userspaceAddr, r.mmapOffset);
      } catch (e) {
        // The frontend shrank an unsealable memfd while no worker ran: mapping it would fault.
        // Serve without the region (requests into it fail) rather than call the state unusable.
        if (!(e instanceof GuestMemoryError)) throw e;
        this.log.error({ fdName, err: errorInfo(e) }, 'a saved guest memory region is no longer valid; dropped');
        this.registry.close(fdName);
        continue;
      }
      this.regionSlots.set(fdName, r.slot);
    }
    if (state.inflight !== null) {
      const fd = this.registry.get('inflight');
      if (fd === undefined) throw new VhostError('frontend inflight fd is missing from the fd store');
      this.inflightBuffer = native.mmap(fd, state.inflight.mmapSize, 0, true);
      this.inflightInfo = state.inflight;
    }
    state.vrings.forEach((v, i) => { this.vrings[i] = { ...v }; });
    for (const index of state.running) this.maybeStartQueue(index, true);
    if (pending !== null) this.finishPending(pending);
  }

  private finishPending(p: PendingControl): void {
    const name = M.requestName(p.header.request);
    if (p.committed && p.reply !== null) {
      this.log.warn({ request: name, seq: p.seq }, 'finishing the reply of a control message the previous worker handled');
      this.sendReply(p.seq, p.header, p.reply, true);
      this.journal?.end(p.seq);
      for (const fd of p.fds) native.close(fd);
      return;
    }
    // Handlers are idempotent against their own partial effects (fds are replaced by name), and
    // a committed message without a recorded reply never sent one: handle it again.
    this.log.warn({ request: name, seq: p.seq }, 'handling a control message the previous worker consumed but did not finish');
    this.dispatch({ header: p.header, payload: p.payload, fds: p.fds }, p.seq);
  }

  get connected(): boolean {
    return !this.closed;
  }

  state(): VhostSessionState {
    return {
      ownerSet: this.ownerSet,
      ackedFeatures: this.ackedFeatures,
      ackedProtocolFeatures: this.ackedProtocolFeatures,
      featuresSet: this.featuresSet,
      regions: this.memory.list().map((r) => ({
        slot: this.regionSlots.get(r.fdName) ?? -1, guestPhysAddr: r.guestPhysAddr, size: r.size,
        userspaceAddr: r.userspaceAddr, mmapOffset: r.mmapOffset,
      })),
      nextSlot: this.nextSlot,
      vrings: this.vrings.map((v) => ({ ...v })),
      inflight: this.inflightInfo,
      running: [...this.running.keys()].sort((a, b) => a - b),
    };
  }

  queueStats(): Array<{ index: number; size: number; running: boolean; lastAvail: number; used: number; inflight: number; pending: number }> {
    return this.vrings.map((v, index) => {
      const q = this.running.get(index);
      let pending = 0;
      try {
        pending = q ? q.ring.pending() : 0;
      } catch {
        pending = -1; // the driver corrupted the ring; the queue server has stopped it
      }
      return {
        index, size: v.size, running: q !== undefined,
        lastAvail: q ? q.ring.lastAvailIdx : v.base,
        used: q ? q.ring.usedIndex() : 0,
        inflight: q ? q.handler.inflightCount() : 0,
        pending,
      };
    });
  }

  /** Closes the connection as if the frontend had hung up (SIGTERM path). */
  async shutdown(reason: string): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.transport.close();
    await this.stopAllQueues();
    this.releaseResources();
    this.log.info({ reason }, 'vhost-user connection closed');
  }

  private disconnect(reason: string): void {
    if (this.closed) return;
    void this.shutdown(reason).then(() => this.onDisconnect(reason));
  }

  private hasProtocol(f: M.ProtocolFeature): boolean {
    return (this.ackedProtocolFeatures & M.bit(f)) !== 0n;
  }

  private hasFeature(bitNo: bigint): boolean {
    return (this.ackedFeatures & M.bit(bitNo)) !== 0n;
  }

  private enqueue(msg: IncomingMessage): void {
    if (this.busy) {
      this.backlog.push(msg);
      return;
    }
    this.dispatch(msg);
  }

  private dispatch(msg: IncomingMessage, resumedSeq?: number): void {
    const { request, flags } = msg.header;
    const name = M.requestName(request);
    let reply: Buffer | null = null;
    let ok = true;
    let async: Promise<Buffer> | null = null;
    // The handler takes fds out of msg.fds; keep the original list to close what is left.
    const fds = msg.fds;
    msg.fds = [...fds];
    const seq = resumedSeq ?? (this.journal ? this.journal.begin(msg.header, msg.payload, fds) : 0);
    crashPoint('ctl-after-begin');
    try {
      if ((flags & M.VERSION_MASK) !== M.FLAG_VERSION_1) throw new VhostError(`unsupported message version in flags 0x${flags.toString(16)}`);
      const r = this.handle(msg);
      if (r instanceof Promise) async = r;
      else reply = r;
    } catch (e) {
      ok = false;
      this.log.error({ request: name, err: errorInfo(e) }, 'vhost-user request failed');
    } finally {
      // Any fd the handler did not take is closed here, so a malformed message cannot leak.
      const stray = msg.fds.filter((fd, i) => fd >= 0 && fds[i] === fd);
      for (const fd of stray) native.close(fd);
      if (stray.length > 0 && ok) this.log.warn({ request: name, fds: stray.length }, 'closed fds the message should not carry');
    }
    if (async !== null) {
      this.busy = true;
      this.transport.pause();
      async.then((payload) => this.finish(msg, seq, payload, true), (e) => {
        this.log.error({ request: name, err: errorInfo(e) }, 'vhost-user request failed');
        this.finish(msg, seq, null, false);
      });
      return;
    }
    this.finish(msg, seq, reply, ok);
  }

  /** The reply body a message gets: its protocol reply, a REPLY_ACK status, or none. */
  private replyFor(header: M.MessageHeader, reply: Buffer | null, ok: boolean): Buffer | null {
    // A failed GET_* still gets a reply, or QEMU would wait forever: an empty payload.
    if (M.hasProtocolReply(header.request)) return reply ?? Buffer.alloc(0);
    if ((header.flags & M.FLAG_NEED_REPLY) && this.hasProtocol(M.ProtocolFeature.REPLY_ACK)) return M.u64Payload(ok ? 0n : 1n);
    return null;
  }

  private sendReply(seq: number, header: M.MessageHeader, body: Buffer | null, alreadyFramed = false): void {
    if (this.closed || body === null) return;
    const data = alreadyFramed ? body : M.encodeReply(header.request, body);
    const fds = this.pendingReplyFds.splice(0);
    if (this.journal) this.journal.reply(seq, data, fds);
    else this.transport.send(data, fds);
  }

  private finish(msg: IncomingMessage, seq: number, reply: Buffer | null, ok: boolean): void {
    const body = this.replyFor(msg.header, reply, ok);
    if (this.journal) this.journal.commit(seq, this.state());
    crashPoint('ctl-after-commit');
    this.sendReply(seq, msg.header, body);
    crashPoint('ctl-after-reply');
    this.journal?.end(seq);
    this.pendingReplyFds.splice(0);
    if (this.busy) {
      this.busy = false;
      this.transport.resume();
      while (!this.busy && this.backlog.length > 0) this.dispatch(this.backlog.shift()!);
    }
  }

  private readonly pendingReplyFds: number[] = [];

  /** Fd i of the message, left to the message (dispatch closes it unless taken later). */
  private peekFd(msg: IncomingMessage, i: number): number {
    const fd = msg.fds[i];
    if (fd === undefined || fd < 0) throw new VhostError(`${M.requestName(msg.header.request)}: missing fd #${i}`);
    return fd;
  }

  /** Takes fd i of the message (so dispatch will not close it). */
  private takeFd(msg: IncomingMessage, i: number): number {
    const fd = msg.fds[i];
    if (fd === undefined || fd < 0) throw new VhostError(`${M.requestName(msg.header.request)}: missing fd #${i}`);
    msg.fds[i] = -1;
    return fd;
  }

  private expectFds(msg: IncomingMessage, n: number): void {
    if (msg.fds.length !== n) {
      throw new VhostError(`${M.requestName(msg.header.request)}: got ${msg.fds.length} fds, expected ${n}`);
    }
  }

  private vringIndex(request: number, index: number): VringConfig {
    const v = this.vrings[index];
    if (v === undefined) throw new VhostError(`${M.requestName(request)}: queue index ${index} out of range (${this.vrings.length} queues)`);
    return v;
  }

  private handle(msg: IncomingMessage): Buffer | null | Promise<Buffer> {
    const { request } = msg.header;
    const p = msg.payload;
    switch (request) {
      case M.Request.GET_FEATURES:
        return M.u64Payload(OFFERED_FEATURES);
      case M.Request.SET_FEATURES: {
        this.expectFds(msg, 0);
        const f = M.parseU64(request, p);
        if (f & ~OFFERED_FEATURES) throw new VhostError(`frontend acked features we did not offer: 0x${(f & ~OFFERED_FEATURES).toString(16)}`);
        this.ackedFeatures = f;
        this.featuresSet = true;
        this.log.debug({ features: `0x${f.toString(16)}` }, 'features acked');
        return null;
      }
      case M.Request.GET_PROTOCOL_FEATURES:
        return M.u64Payload(OFFERED_PROTOCOL_FEATURES);
      case M.Request.SET_PROTOCOL_FEATURES: {
        this.expectFds(msg, 0);
        const f = M.parseU64(request, p);
        if (f & ~OFFERED_PROTOCOL_FEATURES) throw new VhostError(`frontend acked protocol features we did not offer: 0x${(f & ~OFFERED_PROTOCOL_FEATURES).toString(16)}`);
        this.ackedProtocolFeatures = f;
        return null;
      }
      case M.Request.SET_OWNER:
        this.expectFds(msg, 0);
        if (p.length !== 0) throw new VhostError(`SET_OWNER with a ${p.length}-byte payload`);
        this.ownerSet = true;
        return null;
      case M.Request.RESET_OWNER:
      case M.Request.RESET_DEVICE:
        this.expectFds(msg, 0);
        return this.resetDevice().then(() => Buffer.alloc(0));
      case M.Request.GET_QUEUE_NUM:
        return M.u64Payload(BigInt(this.device.numQueues));
      case M.Request.GET_MAX_MEM_SLOTS:
        return M.u64Payload(BigInt(MAX_MEM_SLOTS));
      case M.Request.SET_MEM_TABLE:
        return this.setMemTable(msg);
      case M.Request.ADD_MEM_REG:
        return this.addMemReg(msg);
      case M.Request.REM_MEM_REG:
        return this.remMemReg(msg);
      case M.Request.SET_VRING_NUM: {
        this.expectFds(msg, 0);
        const s = M.parseVringState(request, p);
        const v = this.vringIndex(request, s.index);
        if (s.num < 1 || s.num > MAX_QUEUE_SIZE || (s.num & (s.num - 1)) !== 0) throw new VhostError(`SET_VRING_NUM: invalid size ${s.num}`);
        if (this.running.has(s.index)) throw new VhostError(`SET_VRING_NUM on running queue ${s.index}`);
        v.size = s.num;
        return null;
      }
      case M.Request.SET_VRING_ADDR: {
        this.expectFds(msg, 0);
        const a = M.parseVringAddr(request, p);
        const v = this.vringIndex(request, a.index);
        if (this.running.has(a.index)) throw new VhostError(`SET_VRING_ADDR on running queue ${a.index}`);
        // Validated in locals and assigned only at the end: a nacked message must leave the
        // vring (and the journaled state, which a successor must be able to load) as it was.
        const desc = toSafeNumber(a.descUser);
        const avail = toSafeNumber(a.availUser);
        const used = toSafeNumber(a.usedUser);
        if ([desc, avail, used].some((x) => Number.isNaN(x))) throw new VhostError('SET_VRING_ADDR: address out of range');
        // Check against the memory table now (QEMU sends it first), so a bad address is
        // refused by this message, not silently at queue start.
        if (this.memory.regionCount > 0 && v.size > 0) {
          const parts: Array<[number, number, string]> = [[desc, 16 * v.size, 'descriptor table'], [avail, 6 + 2 * v.size, 'avail ring'], [used, 6 + 8 * v.size, 'used ring']];
          for (const [addr, len, what] of parts) {
            if (this.memory.findUser(addr, len) === null) throw new VhostError(`SET_VRING_ADDR: ${what} at 0x${addr.toString(16)} is not in guest memory`);
          }
        }
        v.descUser = desc;
        v.availUser = avail;
        v.usedUser = used;
        v.addrSet = true;
        return null;
      }
      case M.Request.SET_VRING_BASE: {
        this.expectFds(msg, 0);
        const s = M.parseVringState(request, p);
        const v = this.vringIndex(request, s.index);
        if (s.num > 0xffff) throw new VhostError(`SET_VRING_BASE: base ${s.num} out of range`);
        if (this.running.has(s.index)) throw new VhostError(`SET_VRING_BASE on running queue ${s.index}`);
        v.base = s.num;
        return null;
      }
      case M.Request.GET_VRING_BASE: {
        this.expectFds(msg, 0);
        const s = M.parseVringState(request, p);
        const v = this.vringIndex(request, s.index);
        return this.stopQueue(s.index).then((lastAvail) => {
          v.kicked = false;
          v.base = lastAvail;
          // The queue is stopped; its kick/call fds are no longer used.
          this.registry.close(`vring.${s.index}.kick`);
          return M.encodeVringState({ index: s.index, num: lastAvail });
        });
      }
      case M.Request.SET_VRING_KICK:
      case M.Request.SET_VRING_CALL:
      case M.Request.SET_VRING_ERR:
        return this.setVringFd(msg);
      case M.Request.SET_VRING_ENABLE: {
        this.expectFds(msg, 0);
        const s = M.parseVringState(request, p);
        const v = this.vringIndex(request, s.index);
        if (s.num > 1) throw new VhostError(`SET_VRING_ENABLE: bad value ${s.num}`);
        if (!this.hasFeature(M.VHOST_USER_F_PROTOCOL_FEATURES)) throw new VhostError('SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES');
        v.enabled = s.num === 1;
        if (v.enabled) this.maybeStartQueue(s.index);
        return null;
      }
      case M.Request.SET_BACKEND_REQ_FD: {
        this.expectFds(msg, 1);
        if (!this.hasProtocol(M.ProtocolFeature.BACKEND_REQ)) throw new VhostError('SET_BACKEND_REQ_FD without BACKEND_REQ');
        this.registry.replace('vhost.backend', this.takeFd(msg, 0));
        return null;
      }
      case M.Request.GET_INFLIGHT_FD:
        return this.getInflightFd(msg);
      case M.Request.SET_INFLIGHT_FD:
        return this.setInflightFd(msg);
      case M.Request.GET_CONFIG:
        // We offer no CONFIG protocol feature; an empty reply tells the frontend it failed.
        return Buffer.alloc(0);
      default:
        throw new VhostError(`unsupported request ${M.requestName(request)} (${p.length}-byte payload, ${msg.fds.length} fds)`);
    }
  }

  // --- memory table
  //
  // A message that changes the table is validated and mapped completely before anything of the
  // old table changes; a nack leaves the table, its fds and the journaled state as they were.
  // New regions take slot numbers (fd names mem.<slot>) the current table does not use, so
  // registering them never replaces an fd the current table still needs.

  private setMemTable(msg: IncomingMessage): Buffer | null {
    const descs = M.parseMemTable(msg.header.request, msg.payload);
    this.expectFds(msg, descs.length);
    const slots = this.freeSlots(descs.length);
    const mapped: MemoryRegion[] = [];
    try {
      descs.forEach((d, i) => mapped.push(this.prepareRegion(d, this.peekFd(msg, i), `mem.${slots[i]}`)));
      GuestMemory.checkDisjoint(mapped);
    } catch (e) {
      for (const r of mapped) GuestMemory.unmapRegion(r);
      throw e;
    }
    // Valid: swap. Nothing below fails on frontend input.
    descs.forEach((_, i) => this.registry.replace(`mem.${slots[i]}`, this.takeFd(msg, i)));
    const old = this.memory.replaceAll(mapped);
    for (const name of old) {
      this.registry.close(name);
      this.regionSlots.delete(name);
    }
    mapped.forEach((r, i) => this.regionSlots.set(r.fdName, slots[i]!));
    this.updateNextSlot();
    for (const r of mapped) this.log.debug({ fdName: r.fdName, gpa: `0x${r.guestPhysAddr.toString(16)}`, size: r.size, uaddr: `0x${r.userspaceAddr.toString(16)}` }, 'memory region mapped');
    this.rebuildRunningRings();
    return null;
  }

  /** The n lowest slot numbers no current region uses. */
  private freeSlots(n: number): number[] {
    const used = new Set(this.regionSlots.values());
    const out: number[] = [];
    for (let s = 0; out.length < n; s++) if (!used.has(s)) out.push(s);
    return out;
  }

  private updateNextSlot(): void {
    // Informational (kept in the journaled state for older readers): one past the highest slot.
    this.nextSlot = Math.max(-1, ...this.regionSlots.values()) + 1;
  }

  /** Validates one region of a message and maps it (not yet in the table; the fd stays the
   * message's). Seals the memfd against shrinking first, so the size checked stays true. */
  private prepareRegion(r: M.MemoryRegionDesc, fd: number, fdName: string): MemoryRegion {
    const gpa = toSafeNumber(r.guestPhysAddr);
    const size = toSafeNumber(r.memorySize);
    const uaddr = toSafeNumber(r.userspaceAddr);
    const off = toSafeNumber(r.mmapOffset);
    if ([gpa, size, uaddr, off].some((x) => Number.isNaN(x))) throw new VhostError('memory region value above 2^53');
    this.sealAgainstShrinking(fd);
    return GuestMemory.mapRegion(fd, fdName, gpa, size, uaddr, off);
  }

  /** F_SEAL_SHRINK on a region's memfd: the frontend cannot truncate guest memory under our
   * mappings later (QEMU's memfd backend seals it already with seal=on). A memfd made without
   * MFD_ALLOW_SEALING, or a file without seal support, is still accepted: warned about once. */
  private sealAgainstShrinking(fd: number): void {
    let why: string;
    try {
      if ((native.getSeals(fd) & C.F_SEAL_SHRINK!) !== 0) return;
      native.addSeals(fd, C.F_SEAL_SHRINK!);
      return;
    } catch (e) {
      if (!isNativeError(e) || (e.code !== 'EPERM' && e.code !== 'EINVAL')) throw e;
      why = e.code === 'EPERM' ? 'its memfd does not allow sealing' : 'its fd does not support seals';
    }
    if (this.warnedUnsealable) return;
    this.warnedUnsealable = true;
    this.log.warn({ why }, 'a guest memory region cannot be sealed against shrinking: if the frontend truncates it, accesses fault (only the first such region is logged)');
  }

  private addMemReg(msg: IncomingMessage): null {
    this.expectFds(msg, 1);
    if (!this.hasProtocol(M.ProtocolFeature.CONFIGURE_MEM_SLOTS)) throw new VhostError('ADD_MEM_REG without CONFIGURE_MEM_SLOTS');
    if (this.memory.regionCount >= MAX_MEM_SLOTS) throw new VhostError('ADD_MEM_REG: no free memory slot');
    const r = M.parseSingleRegion(msg.header.request, msg.payload);
    const slot = this.freeSlots(1)[0]!;
    const region = this.prepareRegion(r, this.peekFd(msg, 0), `mem.${slot}`);
    try {
      GuestMemory.checkDisjoint([...this.memory.list(), region]);
    } catch (e) {
      GuestMemory.unmapRegion(region);
      throw e;
    }
    this.registry.replace(region.fdName, this.takeFd(msg, 0));
    this.memory.insert(region);
    this.regionSlots.set(region.fdName, slot);
    this.updateNextSlot();
    this.rebuildRunningRings();
    return null;
  }

  private remMemReg(msg: IncomingMessage): null {
    // QEMU attaches the region's fd to REM_MEM_REG too; it is not needed (dispatch closes it).
    if (msg.fds.length > 1) throw new VhostError(`REM_MEM_REG with ${msg.fds.length} fds`);
    const r = M.parseSingleRegion(msg.header.request, msg.payload);
    const name = this.memory.removeRegion(toSafeNumber(r.guestPhysAddr), toSafeNumber(r.memorySize));
    if (name === null) throw new VhostError('REM_MEM_REG: no such region');
    this.registry.close(name);
    this.regionSlots.delete(name);
    this.updateNextSlot();
    this.rebuildRunningRings();
    return null;
  }

  /** Running rings hold views on the old mappings; re-locate them in the new table. */
  private rebuildRunningRings(): void {
    for (const [index, q] of this.running) {
      const v = this.vrings[index]!;
      try {
        const ring = new SplitRing(this.memory, { size: v.size, descUser: v.descUser, availUser: v.availUser, usedUser: v.usedUser },
          q.ring.lastAvailIdx, this.hasFeature(M.VIRTIO_RING_F_EVENT_IDX), this.hasFeature(M.VIRTIO_RING_F_INDIRECT_DESC),
          this.inflightRegionFor(index, v.size, false));
        q.ring = ring;
        q.handler.start(ring, () => this.notify(index), []);
      } catch (e) {
        this.log.error({ queue: index, err: errorInfo(e) }, 'queue no longer in guest memory after a memory table change; stopped');
        void this.stopQueue(index);
      }
    }
  }

  // --- vrings

  private setVringFd(msg: IncomingMessage): null {
    const { request } = msg.header;
    const u = M.parseU64(request, msg.payload);
    const index = Number(u & M.VRING_IDX_MASK);
    const noFd = (u & M.VRING_NOFD_MASK) !== 0n;
    if ((u & ~(M.VRING_IDX_MASK | M.VRING_NOFD_MASK)) !== 0n) throw new VhostError(`${M.requestName(request)}: bad payload 0x${u.toString(16)}`);
    const v = this.vringIndex(request, index);
    const kind = request === M.Request.SET_VRING_KICK ? 'kick' : request === M.Request.SET_VRING_CALL ? 'call' : 'err';
    this.expectFds(msg, noFd ? 0 : 1);
    if (noFd) {
      if (kind === 'kick') throw new VhostError('SET_VRING_KICK without an fd (polling mode) is not supported');
      this.registry.close(`vring.${index}.${kind}`);
      return null;
    }
    const fd = this.takeFd(msg, 0);
    native.setNonBlocking(fd, true);
    if (kind === 'kick') {
      // A new kick fd replaces the old one; a running queue must poll the new fd.
      const q = this.running.get(index);
      if (q) q.kickPoller.close();
      this.registry.replace(`vring.${index}.kick`, fd);
      if (q) q.kickPoller = this.pollKick(index, fd, q.handler);
      v.kicked = true;
      // Without VHOST_USER_F_PROTOCOL_FEATURES a ring starts enabled on its kick.
      if (!this.hasFeature(M.VHOST_USER_F_PROTOCOL_FEATURES)) v.enabled = true;
      this.maybeStartQueue(index);
    } else {
      this.registry.replace(`vring.${index}.${kind}`, fd);
    }
    return null;
  }

  private pollKick(index: number, fd: number, handler: QueueHandler): Poller {
    const poller = new native.Poller(fd, (status) => {
      if (status < 0) {
        this.log.error({ queue: index, status }, 'kick fd poll error');
        return;
      }
      if (native.eventfdRead(fd) >= 0) handler.kick();
    });
    poller.start(POLL_READABLE);
    return poller;
  }

  private notify(index: number): void {
    const fd = this.registry.get(`vring.${index}.call`);
    if (fd === undefined) return;
    try {
      native.eventfdWrite(fd, 1);
    } catch (e) {
      this.log.error({ queue: index, err: errorInfo(e) }, 'call eventfd write failed');
    }
  }

  private inflightRegionFor(index: number, size: number, fresh: boolean): InflightRegion | null {
    if (this.inflightBuffer !== null && this.inflightInfo !== null) {
      const per = inflightQueueRegionSize(this.inflightInfo.queueSize);
      if (index >= this.inflightInfo.numQueues || this.inflightInfo.queueSize !== size) {
        throw new VhostError(`inflight region (${this.inflightInfo.numQueues}×${this.inflightInfo.queueSize}) does not cover queue ${index} of size ${size}`);
      }
      const region = new InflightRegion(new DataView(this.inflightBuffer), index * per, size);
      if (fresh && (region.version !== 1 || region.descNum !== size)) region.initialize(this.ackedFeatures);
      return region;
    }
    // No frontend-provided region: track in our own memfd, so a restarted worker can resume.
    const name = `inflight.${index}`;
    const len = inflightQueueRegionSize(size);
    let fd = this.registry.get(name);
    let buf = this.ownInflight.get(index);
    if (buf !== undefined && buf.byteLength !== len) {
      native.munmap(buf);
      this.ownInflight.delete(index);
      buf = undefined;
    }
    if (fd !== undefined && buf === undefined && fdSize(fd) === len) {
      // A restarted worker maps the region its predecessor left in the keeper.
      buf = native.mmap(fd, len, 0, true);
      this.ownInflight.set(index, buf);
    }
    if (fd === undefined || buf === undefined) {
      this.registry.close(name);
      fd = native.memfdCreate(`vfsk-inflight-${index}`, C.MFD_CLOEXEC!);
      native.ftruncate(fd, len);
      this.registry.register(name, fd);
      buf = native.mmap(fd, len, 0, true);
      this.ownInflight.set(index, buf);
      fresh = true;
    }
    const region = new InflightRegion(new DataView(buf), 0, size);
    if (fresh) region.initialize(this.ackedFeatures);
    return region;
  }

  /** Starts a configured queue. `resume`: a restarted worker takes over a running queue, so the
   * inflight region is recovered (never re-initialized). */
  private maybeStartQueue(index: number, resume = false): void {
    const v = this.vrings[index]!;
    if (this.running.has(index) || !v.kicked || !v.enabled || !v.addrSet || v.size === 0) return;
    const handler = this.device.createQueueHandler(index);
    let ring: SplitRing;
    let resubmit: number[] = [];
    try {
      const frontendInflight = this.inflightBuffer !== null;
      const inflight = this.inflightRegionFor(index, v.size, !frontendInflight && !resume);
      ring = new SplitRing(this.memory, { size: v.size, descUser: v.descUser, availUser: v.availUser, usedUser: v.usedUser },
        v.base, this.hasFeature(M.VIRTIO_RING_F_EVENT_IDX), this.hasFeature(M.VIRTIO_RING_F_INDIRECT_DESC), inflight);
      if ((resume || frontendInflight) && inflight !== null && inflight.descNum === v.size) {
        resubmit = ring.recoverInflight();
        if (resubmit.length > 0) this.log.warn({ queue: index, heads: resubmit.length, resume }, 'resubmitting inflight requests');
      }
    } catch (e) {
      if (e instanceof RingError || e instanceof GuestMemoryError || e instanceof VhostError) {
        this.log.error({ queue: index, err: errorInfo(e) }, 'cannot start queue');
        return;
      }
      throw e;
    }
    const kickFd = this.registry.get(`vring.${index}.kick`)!;
    const kickPoller = this.pollKick(index, kickFd, handler);
    this.running.set(index, { handler, ring, kickPoller });
    this.log.info({ queue: index, size: v.size, base: v.base, eventIdx: ring.eventIdx }, 'queue started');
    handler.start(ring, () => this.notify(index), resubmit);
    // A kick may have been consumed before we polled; look at the ring once.
    handler.kick();
    // A dead worker may have published used entries without interrupting the guest; a
    // spurious interrupt is harmless.
    if (resume) this.notify(index);
  }

  private async stopQueue(index: number): Promise<number> {
    const q = this.running.get(index);
    const v = this.vrings[index]!;
    if (!q) return v.base;
    this.running.delete(index);
    q.kickPoller.close();
    const drained = q.handler.stop();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), STOP_DRAIN_TIMEOUT_MS); });
    const r = await Promise.race([drained.then(() => 'drained' as const), timeout]);
    clearTimeout(timer);
    if (r === 'timeout') this.log.warn({ queue: index, inflight: q.handler.inflightCount() }, 'queue stopped with requests still in flight');
    const lastAvail = q.ring.lastAvailIdx;
    this.log.info({ queue: index, lastAvail }, 'queue stopped');
    return lastAvail;
  }

  private async stopAllQueues(): Promise<void> {
    await Promise.all([...this.running.keys()].map((i) => this.stopQueue(i)));
  }

  private async resetDevice(): Promise<void> {
    await this.stopAllQueues();
    for (let i = 0; i < this.vrings.length; i++) this.vrings[i] = emptyVring();
    this.ackedFeatures = 0n;
    this.featuresSet = false;
    this.device.onReset();
  }

  // --- inflight fds

  private getInflightFd(msg: IncomingMessage): Buffer {
    this.expectFds(msg, 0);
    if (!this.hasProtocol(M.ProtocolFeature.INFLIGHT_SHMFD)) throw new VhostError('GET_INFLIGHT_FD without INFLIGHT_SHMFD');
    const d = M.parseInflight(msg.header.request, msg.payload);
    if (d.numQueues < 1 || d.numQueues > this.device.numQueues) throw new VhostError(`GET_INFLIGHT_FD: ${d.numQueues} queues`);
    if (d.queueSize < 1 || d.queueSize > MAX_QUEUE_SIZE) throw new VhostError(`GET_INFLIGHT_FD: queue size ${d.queueSize}`);
    if (this.running.size > 0) throw new VhostError('GET_INFLIGHT_FD while queues run');
    const per = inflightQueueRegionSize(d.queueSize);
    const size = per * d.numQueues;
    const fd = native.memfdCreate('vfsk-inflight', C.MFD_CLOEXEC!);
    let ours = -1;
    try {
      native.ftruncate(fd, size);
      ours = native.dup(fd);
      this.installInflight(ours, size, d.numQueues, d.queueSize);
    } catch (e) {
      if (ours >= 0 && this.registry.get('inflight') !== ours) native.close(ours);
      native.close(fd);
      throw e;
    }
    for (let q = 0; q < d.numQueues; q++) new InflightRegion(new DataView(this.inflightBuffer!), q * per, d.queueSize).initialize(this.ackedFeatures);
    // The reply carries the fd; it is closed after sending (we keep our dup).
    this.pendingReplyFds.push(fd);
    setImmediate(() => native.close(fd));
    return M.encodeInflight({ mmapSize: BigInt(size), mmapOffset: 0n, numQueues: d.numQueues, queueSize: d.queueSize });
  }

  private setInflightFd(msg: IncomingMessage): null {
    this.expectFds(msg, 1);
    if (!this.hasProtocol(M.ProtocolFeature.INFLIGHT_SHMFD)) throw new VhostError('SET_INFLIGHT_FD without INFLIGHT_SHMFD');
    const d = M.parseInflight(msg.header.request, msg.payload);
    const size = toSafeNumber(d.mmapSize);
    const offset = toSafeNumber(d.mmapOffset);
    if (d.numQueues < 1 || d.numQueues > this.device.numQueues || d.queueSize < 1 || d.queueSize > MAX_QUEUE_SIZE) {
      throw new VhostError(`SET_INFLIGHT_FD: ${d.numQueues} queues of ${d.queueSize}`);
    }
    if (offset !== 0) throw new VhostError('SET_INFLIGHT_FD: non-zero mmap offset is not supported');
    if (!(size >= inflightQueueRegionSize(d.queueSize) * d.numQueues)) throw new VhostError(`SET_INFLIGHT_FD: region of ${size} bytes is too small`);
    // Running rings hold views on the current region.
    if (this.running.size > 0) throw new VhostError('SET_INFLIGHT_FD while queues run');
    this.installInflight(this.peekFd(msg, 0), size, d.numQueues, d.queueSize);
    this.takeFd(msg, 0);
    return null;
  }

  /** Maps the inflight region first (a failure changes nothing), then swaps it in. The fd must
   * hold `size` bytes: a mapping past its end faults. Takes fd only on success. */
  private installInflight(fd: number, size: number, numQueues: number, queueSize: number): void {
    const st = Buffer.alloc(STAT.SIZE);
    native.fstatat(fd, '', C.AT_EMPTY_PATH!, st);
    if ((Number(st.readBigUInt64LE(STAT.mode)) & C.S_IFMT!) !== C.S_IFREG) throw new VhostError('inflight fd is not a regular file or memfd');
    if (st.readBigUInt64LE(STAT.size) < BigInt(size)) throw new VhostError(`inflight fd holds ${st.readBigUInt64LE(STAT.size)} bytes, not the ${size} announced`);
    const buffer = native.mmap(fd, size, 0, true);
    this.registry.replace('inflight', fd);
    if (this.inflightBuffer !== null) native.munmap(this.inflightBuffer);
    this.inflightBuffer = buffer;
    this.inflightInfo = { numQueues, queueSize, mmapSize: size };
  }

  private releaseResources(): void {
    for (const name of this.memory.clear()) this.registry.close(name);
    if (this.inflightBuffer !== null) native.munmap(this.inflightBuffer);
    this.inflightBuffer = null;
    for (const b of this.ownInflight.values()) native.munmap(b);
    this.ownInflight.clear();
    this.registry.closePrefix('vring.');
    this.registry.closePrefix('inflight');
    this.registry.close('vhost.backend');
  }
}

function fdSize(fd: number): number {
  const st = Buffer.alloc(STAT.SIZE);
  native.fstatat(fd, '', C.AT_EMPTY_PATH!, st);
  return Number(st.readBigUInt64LE(STAT.size));
}

function emptyVring(): VringConfig {
  return { size: 0, descUser: 0, availUser: 0, usedUser: 0, addrSet: false, base: 0, enabled: false, kicked: false };
}
