// The one versioned state module: everything a restarted worker needs that is not an fd.
// It journals, in the state file (journal.ts), every change before anyone can observe it:
//   - the vhost-user session (features, memory table, vrings) after each control message,
//     and the control message itself before it is handled (so a half-answered one finishes);
//   - the FUSE INIT result;
//   - every FsSession mutation (inodes + lookup counts, open files and dirs, dir positions).
// Loading treats the file as untrusted input: every record is validated, and a bad one is a
// StateFileError naming the file and the problem.
import type { KeeperClient } from '../keeper_client';
import type { ControlJournal, PendingControl, VhostSessionState, VringConfig } from '../vhost/backend';
import type { MessageHeader } from '../vhost/messages';
import type { InitResult } from '../fuse/server';
import { FsSession, type FsMutation, type SessionSnapshot } from '../fs/session';
import { StateJournal, StateFileError } from './journal';

export const SCHEMA_VERSION = 1;
/** Compact when the journal passes this many bytes. */
const COMPACT_BYTES = 8 << 20;

/** A journaled FUSE request (exactly-once): its intent, and once known, the reply bytes. */
export interface OpRecord {
  opcode: number;
  /** Wall-clock ns at intent: files created after this by the request are ours. */
  ts: bigint;
  extra: unknown;
  /** The full reply (out header + body) the request produced; empty for no-reply requests. */
  reply: Buffer | null;
  /** Worker deaths this request has been inflight across. */
  deaths: number;
}

/** What the FUSE server needs from the journal. */
export interface RequestLedger {
  get(key: string): OpRecord | undefined;
  /** A resubmitted request: records one more death and returns the total. */
  recordDeath(key: string): number;
  intent(key: string, opcode: number, extra: unknown): void;
  outcome(key: string, reply: Buffer): void;
  /** Ends the synchronous part of a request: later FS mutations are not its own. */
  endSync(): void;
  /** The request's used element is visible to the guest; it will never be resubmitted. */
  release(key: string): void;
}

type Rec =
  | { t: 'snapshot'; vhost: VhostSessionState | null; init: InitResult | null; fs: SessionSnapshot | null; ctlSeq: number; pending: PendingRec | null; ops?: Array<[string, OpRecord]> }
  | { t: 'op'; k: string; opcode: number; ts: bigint; x: unknown }
  | { t: 'op-done'; k: string; r: Buffer }
  | { t: 'op-death'; k: string }
  | { t: 'vhost'; seq: number; s: VhostSessionState }
  | { t: 'ctl'; seq: number; request: number; flags: number; size: number; payload: Buffer; nfds: number }
  | { t: 'ctl-reply'; seq: number; data: Buffer }
  | { t: 'ctl-end'; seq: number }
  | { t: 'init'; init: InitResult | null }
  | { t: 'fs'; m: FsMutation; k?: string };

interface PendingRec { seq: number; request: number; flags: number; size: number; payload: Buffer; nfds: number; committed: boolean; reply: Buffer | null }

export interface LoadedState {
  vhost: VhostSessionState | null;
  init: InitResult | null;
  fs: FsSession | null;
  ctlSeq: number;
  pending: PendingRec | null;
  ops: Map<string, OpRecord>;
  /** FS mutations of requests that died before their outcome: rolled back (not applied). */
  discardedMutations: number;
}

export const ctlFdName = (i: number): string => `ctl.${i}`;

// --- validation of untrusted records

function fail(path: string, what: string): never {
  throw new StateFileError(`invalid state record: ${what}`, path);
}
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isUint = (v: unknown, max = Number.MAX_SAFE_INTEGER): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max;
const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
const isBig = (v: unknown): v is bigint => typeof v === 'bigint' && v >= 0n && v < 1n << 64n;

function checkVring(p: string, v: unknown): VringConfig {
  if (!isObj(v)) fail(p, 'vring is not an object');
  const ok = isUint(v.size, 32768) && isUint(v.descUser) && isUint(v.availUser) && isUint(v.usedUser) &&
    isBool(v.addrSet) && isUint(v.base, 0xffff) && isBool(v.enabled) && isBool(v.kicked);
  if (!ok) fail(p, 'vring fields out of range');
  return v as unknown as VringConfig;
}

export function checkVhostState(p: string, v: unknown): VhostSessionState {
  if (!isObj(v)) fail(p, 'vhost state is not an object');
  if (!isBool(v.ownerSet) || !isBig(v.ackedFeatures) || !isBig(v.ackedProtocolFeatures) || !isBool(v.featuresSet) || !isUint(v.nextSlot, 1 << 20)) {
    fail(p, 'vhost feature fields');
  }
  if (!Array.isArray(v.regions) || v.regions.length > 64) fail(p, 'vhost regions');
  for (const r of v.regions as unknown[]) {
    if (!isObj(r) || !isUint(r.slot, 1 << 20) || !isUint(r.guestPhysAddr) || !isUint(r.size) || r.size === 0 || !isUint(r.userspaceAddr) || !isUint(r.mmapOffset)) {
      fail(p, 'vhost region fields');
    }
  }
  if (!Array.isArray(v.vrings) || v.vrings.length < 1 || v.vrings.length > 65) fail(p, 'vhost vrings');
  (v.vrings as unknown[]).forEach((x) => checkVring(p, x));
  if (v.inflight !== null) {
    const i = v.inflight;
    if (!isObj(i) || !isUint(i.numQueues, 65) || !isUint(i.queueSize, 32768) || !isUint(i.mmapSize)) fail(p, 'vhost inflight');
  }
  if (!Array.isArray(v.running) || !(v.running as unknown[]).every((q) => isUint(q, (v.vrings as unknown[]).length - 1))) fail(p, 'vhost running queues');
  return v as unknown as VhostSessionState;
}

function checkInit(p: string, v: unknown): InitResult | null {
  if (v === null) return null;
  if (!isObj(v) || v.major !== 7 || !isUint(v.minor, 1000) || !isBig(v.flags) || !isUint(v.maxReadahead, 0xffffffff) ||
    !isUint(v.maxWrite, 0xffffffff) || !isUint(v.maxPages, 0xffff)) {
    fail(p, 'FUSE init result');
  }
  return v as unknown as InitResult;
}

function checkPending(p: string, v: unknown): PendingRec | null {
  if (v === null) return null;
  if (!isObj(v) || !isUint(v.seq) || !isUint(v.request, 0xffffffff) || !isUint(v.flags, 0xffffffff) || !isUint(v.size, 0xffffffff) ||
    !Buffer.isBuffer(v.payload) || !isUint(v.nfds, 8) || !isBool(v.committed) || !(v.reply === null || Buffer.isBuffer(v.reply))) {
    fail(p, 'pending control message');
  }
  return v as unknown as PendingRec;
}

/** Folds the journal into the state a restarted worker resumes from. */
export function loadState(path: string): LoadedState {
  const journal = StateJournal.open(path, SCHEMA_VERSION);
  try {
    const st: LoadedState = { vhost: null, init: null, fs: null, ctlSeq: 0, pending: null, ops: new Map(), discardedMutations: 0 };
    // Mutations made by a request are applied only once its outcome is journaled: a request
    // that died half-way is rolled back here and runs again when it is resubmitted.
    const held = new Map<string, FsMutation[]>();
    const applyFs = (m: FsMutation): void => {
      if (st.fs === null) fail(path, 'fs mutation before any fs session');
      try {
        st.fs.apply(m);
      } catch (e) {
        fail(path, `fs mutation: ${(e as Error).message}`);
      }
    };
    for (const raw of journal.records()) {
      if (!isObj(raw) || typeof raw.t !== 'string') fail(path, 'record without a type');
      const r = raw as Record<string, unknown>;
      switch (r.t) {
        case 'snapshot':
          st.vhost = r.vhost === null ? null : checkVhostState(path, r.vhost);
          st.init = checkInit(path, r.init);
          try {
            st.fs = r.fs === null ? null : FsSession.fromSnapshot(r.fs);
          } catch (e) {
            fail(path, `fs snapshot: ${(e as Error).message}`);
          }
          if (!isUint(r.ctlSeq)) fail(path, 'snapshot ctlSeq');
          st.ctlSeq = r.ctlSeq;
          st.pending = checkPending(path, r.pending);
          st.ops = new Map();
          held.clear();
          if (r.ops !== undefined) {
            if (!Array.isArray(r.ops)) fail(path, 'snapshot ops');
            for (const e of r.ops as unknown[]) {
              if (!Array.isArray(e) || typeof e[0] !== 'string') fail(path, 'snapshot op entry');
              st.ops.set(e[0], checkOp(path, e[1]));
            }
          }
          break;
        case 'op':
          if (typeof r.k !== 'string' || r.k.length > 200 || !isUint(r.opcode, 0xffffffff) || typeof r.ts !== 'bigint') fail(path, 'op intent');
          st.ops.set(r.k, { opcode: r.opcode, ts: r.ts, extra: r.x ?? null, reply: null, deaths: st.ops.get(r.k)?.deaths ?? 0 });
          held.set(r.k, []);
          break;
        case 'op-done': {
          const op = typeof r.k === 'string' ? st.ops.get(r.k) : undefined;
          if (op === undefined || !Buffer.isBuffer(r.r)) fail(path, 'op outcome without its intent');
          op.reply = r.r;
          for (const m of held.get(r.k as string) ?? []) applyFs(m);
          held.delete(r.k as string);
          break;
        }
        case 'op-death': {
          if (typeof r.k !== 'string' || r.k.length > 200) fail(path, 'op death record');
          const op = st.ops.get(r.k);
          if (op) op.deaths++;
          else st.ops.set(r.k, { opcode: 0, ts: 0n, extra: null, reply: null, deaths: 1 });
          break;
        }
        case 'vhost':
          if (!isUint(r.seq)) fail(path, 'vhost seq');
          st.vhost = checkVhostState(path, r.s);
          if (st.pending !== null && st.pending.seq === r.seq) st.pending.committed = true;
          break;
        case 'ctl':
          if (!isUint(r.seq) || r.seq <= st.ctlSeq) fail(path, 'ctl sequence number does not increase');
          st.ctlSeq = r.seq;
          st.pending = checkPending(path, { seq: r.seq, request: r.request, flags: r.flags, size: r.size, payload: r.payload, nfds: r.nfds, committed: false, reply: null });
          break;
        case 'ctl-reply':
          if (st.pending === null || st.pending.seq !== r.seq || !Buffer.isBuffer(r.data)) fail(path, 'ctl-reply without its message');
          st.pending.committed = true;
          st.pending.reply = r.data;
          break;
        case 'ctl-end':
          if (st.pending !== null && st.pending.seq === r.seq) st.pending = null;
          break;
        case 'init':
          st.init = checkInit(path, r.init);
          break;
        case 'fs': {
          const h = typeof r.k === 'string' ? held.get(r.k) : undefined;
          if (h !== undefined) h.push(r.m as FsMutation);
          else applyFs(r.m as FsMutation);
          break;
        }
        default:
          fail(path, `unknown record type ${JSON.stringify(r.t).slice(0, 40)}`);
      }
    }
    for (const h of held.values()) st.discardedMutations += h.length;
    return st;
  } finally {
    journal.close();
  }
}

function checkOp(p: string, v: unknown): OpRecord {
  if (!isObj(v) || !isUint(v.opcode, 0xffffffff) || typeof v.ts !== 'bigint' || !(v.reply === null || Buffer.isBuffer(v.reply)) || !isUint(v.deaths, 1000)) {
    fail(p, 'op record');
  }
  return { opcode: v.opcode, ts: v.ts, extra: v.extra ?? null, reply: v.reply as Buffer | null, deaths: v.deaths };
}

export interface StateSources {
  vhost(): VhostSessionState | null;
  init(): InitResult | null;
  fs(): FsSession | null;
}

/** Writes the journal. One per worker process. */
export class WorkerStateStore implements ControlJournal, RequestLedger {
  private journal: StateJournal;
  private ctlSeq: number;
  private pending: PendingRec | null;
  private readonly ops: Map<string, OpRecord>;
  /** The request whose synchronous part is running: FS mutations are tagged with it. */
  private currentOp: string | null = null;
  private sources: StateSources | null = null;
  private compactQueued = false;

  constructor(private readonly path: string, private readonly keeper: KeeperClient | null, loaded: LoadedState | null, keeperCtlSeq = 0) {
    // The keeper drops control replies with a sequence number it has already forwarded.
    this.ctlSeq = Math.max(loaded?.ctlSeq ?? 0, keeperCtlSeq);
    this.pending = loaded?.pending ?? null;
    this.ops = loaded?.ops ?? new Map();
    const snap: Rec = {
      t: 'snapshot', vhost: loaded?.vhost ?? null, init: loaded?.init ?? null, fs: loaded?.fs?.toSnapshot() ?? null,
      ctlSeq: this.ctlSeq, pending: this.pending, ops: [...this.ops],
    };
    // Every start compacts: the folded state becomes the new journal's first record.
    this.journal = StateJournal.create(path, SCHEMA_VERSION, 0n, [snap]);
  }

  /** Where compaction reads the live state from. */
  setSources(s: StateSources): void {
    this.sources = s;
  }

  private append(r: Rec): void {
    this.journal.append(r);
    if (this.journal.committedBytes > COMPACT_BYTES && !this.compactQueued && this.sources !== null) {
      this.compactQueued = true;
      // Between events every structure is consistent, so snapshot from a fresh tick.
      setImmediate(() => this.compact());
    }
  }

  compact(): void {
    this.compactQueued = false;
    if (this.sources === null) return;
    const s = this.sources;
    const snap: Rec = { t: 'snapshot', vhost: s.vhost(), init: s.init(), fs: s.fs()?.toSnapshot() ?? null, ctlSeq: this.ctlSeq, pending: this.pending, ops: [...this.ops] };
    const old = this.journal;
    this.journal = StateJournal.create(this.path, SCHEMA_VERSION, old.generation + 1n, [snap]);
    old.close();
  }

  recordInit(init: InitResult | null): void {
    this.append({ t: 'init', init });
  }

  /** A new frontend connection (or the fresh session after a disconnect): forget the old one. */
  recordNewSession(fs: FsSession | null): void {
    this.pending = null;
    this.ops.clear();
    this.append({ t: 'snapshot', vhost: null, init: null, fs: fs?.toSnapshot() ?? null, ctlSeq: this.ctlSeq, pending: null, ops: [] });
  }

  readonly onFsMutation = (m: FsMutation): void => {
    this.append(this.currentOp === null ? { t: 'fs', m } : { t: 'fs', m, k: this.currentOp });
  };

  // --- RequestLedger

  get(key: string): OpRecord | undefined {
    return this.ops.get(key);
  }

  recordDeath(key: string): number {
    this.append({ t: 'op-death', k: key });
    const op = this.ops.get(key);
    if (op) return ++op.deaths;
    this.ops.set(key, { opcode: 0, ts: 0n, extra: null, reply: null, deaths: 1 });
    return 1;
  }

  intent(key: string, opcode: number, extra: unknown): void {
    const ts = BigInt(Date.now()) * 1_000_000n;
    const deaths = this.ops.get(key)?.deaths ?? 0;
    this.ops.set(key, { opcode, ts, extra, reply: null, deaths });
    this.append({ t: 'op', k: key, opcode, ts, x: extra });
    this.currentOp = key;
    // The request's new fds go to the keeper in one message (a READDIRPLUS page registers one
    // per entry); flushed before the outcome is journaled. If we die first, the fds die with
    // us and the request's session changes are rolled back on load: still consistent.
    this.keeper?.beginBatch();
  }

  outcome(key: string, reply: Buffer): void {
    this.keeper?.endBatch();
    const op = this.ops.get(key);
    if (op) op.reply = reply;
    this.append({ t: 'op-done', k: key, r: reply });
    if (this.currentOp === key) this.currentOp = null;
  }

  endSync(): void {
    this.keeper?.endBatch();
    this.currentOp = null;
  }

  release(key: string): void {
    // Dropped from memory; the next compaction drops it from the file.
    this.ops.delete(key);
  }

  // --- ControlJournal

  begin(header: MessageHeader, payload: Buffer, fds: number[]): number {
    const seq = ++this.ctlSeq;
    // The keeper keeps its own copy of the message's fds until the message is finished.
    if (fds.length > 0 && this.keeper !== null) this.keeper.storeFds(fds.map((_, i) => ctlFdName(i)), fds);
    this.pending = { seq, request: header.request, flags: header.flags, size: header.size, payload, nfds: fds.length, committed: false, reply: null };
    this.append({ t: 'ctl', seq, request: header.request, flags: header.flags, size: header.size, payload, nfds: fds.length });
    return seq;
  }

  commit(seq: number, state: VhostSessionState): void {
    if (this.pending?.seq === seq) this.pending.committed = true;
    this.append({ t: 'vhost', seq, s: state });
  }

  reply(seq: number, data: Buffer, fds: number[]): void {
    if (this.pending?.seq === seq) this.pending.reply = data;
    this.append({ t: 'ctl-reply', seq, data });
    if (this.keeper === null) throw new Error('control replies need the keeper');
    this.keeper.sendControlReply(seq, data, fds);
  }

  end(seq: number): void {
    const nfds = this.pending?.seq === seq ? this.pending.nfds : 0;
    if (nfds > 0 && this.keeper !== null) this.keeper.removeFds(Array.from({ length: nfds }, (_, i) => ctlFdName(i)));
    if (this.pending?.seq === seq) this.pending = null;
    this.append({ t: 'ctl-end', seq });
  }

  close(): void {
    this.journal.close();
  }
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
