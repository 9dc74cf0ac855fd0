// The one versioned state module: everything a restarted worker needs that is not an fd.
// It journals, in the state file (journal.ts), every change before anyone can observe it:
//   - the vhost-user session (features, memory table, vrings) after each control message,
//     and the control message itself before it is handled (so a half-answered one finishes);
//   - the FUSE INIT result;
//   - every FsSession mutation (inodes + lookup counts, open files and dirs, dir positions),
//     inside the outcome record of the request that made it.
// Request outcomes are group-committed: staged as they finish and made durable together, after
// the keeper holds their new fds and before their used elements are published (the durability
// barrier, durability.ts, owns that order).
// Loading treats the file as untrusted input: every record is validated, and a bad one is a
// StateFileError naming the file and the problem.
import type { KeeperClient } from '../../shared/keeper_client';
import type { ControlJournal, VhostSessionState } from '../vhost/backend';
import type { MessageHeader } from '../vhost/messages';
import type { InitResult } from '../fuse/server';
import type { OpRecord, RequestLedger } from '../fuse/exactly_once';
import { FsSession, type FsMutation } from '../fs/session';
import { StateJournal, decodeRecord } from './journal';
import * as R from './records';
import { checkPending, checkVhostState, ctlFdName, type PendingRec } from './control_records';
import { fail, isObj, isUint } from './validate';
import { DurabilityBarrier, type OutcomeJournal } from './durability';

/** 2: binary request records (records.ts) behind a tag byte. 1 (msgpack records) still loads. */
export const SCHEMA_VERSION = 2;
const READABLE_SCHEMAS = [1, 2] as const;
/** Compact when the journal passes this many bytes, or COMPACT_RATIO times the last snapshot,
 * whichever is more. A restarted worker replays the records since the last snapshot (about
 * 45 ns per byte: 70 ms for 1.6 MB of LOOKUP outcomes), while a snapshot costs ~10 ms per
 * 20,000 inodes (the event loop stalls meanwhile): this bounds both the replay at a restart
 * and the amortized cost per appended byte. */
const COMPACT_BYTES = 1 << 20;
const COMPACT_RATIO = 2;


/** Records written as msgpack (TAG_GENERIC). */
type Rec = R.GenericRecord;

export interface LoadedState {
  vhost: VhostSessionState | null;
  init: InitResult | null;
  fs: FsSession | null;
  ctlSeq: number;
  pending: PendingRec | null;
  ops: Map<string, OpRecord>;
  /** FS mutations of requests that died before their outcome: rolled back (not applied). */
  discardedMutations: number;
  /** The file's schema, and the size of its last snapshot record (for compaction). */
  schemaVersion: number;
  snapshotBytes: number;
}

/** The journal's records as loose objects in schema 1's shapes (request outcomes also carry
 * `opcode` and their mutations `muts`), for one fold over both schemas. */
function* looseRecords(journal: StateJournal, path: string, sizes: { last: number }): Generator<unknown> {
  const schema2 = journal.schemaVersion >= 2;
  for (const payload of journal.payloads()) {
    sizes.last = payload.length;
    if (!schema2) {
      try {
        yield decodeRecord(payload);
      } catch (e) {
        fail(path, `record does not decode: ${(e as Error).message}`);
      }
      continue;
    }
    let d: R.DecodedRecord;
    try {
      d = R.decodePayload(payload);
    } catch (e) {
      fail(path, `record does not decode: ${(e as Error).message}`);
    }
    switch (d.t) {
      case 'generic': yield d.value; break;
      case 'intent': yield { t: 'op', k: d.key, opcode: d.opcode, ts: BigInt(Math.round(d.tsMs)) * 1_000_000n, x: d.extra }; break;
      case 'outcome': yield { t: 'op-done', k: d.key, opcode: d.opcode, r: d.reply, muts: d.mutations }; break;
      case 'mutation': yield { t: 'fs', m: d.m }; break;
      case 'death': yield { t: 'op-death', k: d.key }; break;
    }
  }
}

/** Folds the journal into the state a restarted worker resumes from. */
export function loadState(path: string): LoadedState {
  const journal = StateJournal.open(path, READABLE_SCHEMAS);
  try {
    const st: LoadedState = {
      vhost: null, init: null, fs: null, ctlSeq: 0, pending: null, ops: new Map(), discardedMutations: 0,
      schemaVersion: journal.schemaVersion, snapshotBytes: 0,
    };
    const sizes = { last: 0 };
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
    for (const raw of looseRecords(journal, path, sizes)) {
      if (!isObj(raw) || typeof raw.t !== 'string') fail(path, 'record without a type');
      const r = raw as Record<string, unknown>;
      switch (r.t) {
        // --- session-wide records
        case 'snapshot':
          st.snapshotBytes = sizes.last;
          st.vhost = r.vhost === null ? null : checkVhostState(path, r.vhost);
          st.init = R.checkInit(path, r.init);
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
              st.ops.set(e[0], R.checkOp(path, e[1]));
            }
          }
          break;
        case 'init':
          st.init = R.checkInit(path, r.init);
          break;
        // --- the request log's records
        case 'op': {
          const i = R.checkIntentRecord(path, r);
          st.ops.set(i.k, { opcode: i.opcode, ts: i.ts, extra: i.x, reply: null, deaths: st.ops.get(i.k)?.deaths ?? 0 });
          held.set(i.k, []);
          break;
        }
        case 'op-done': {
          const o = R.checkOutcomeRecord(path, r);
          let op = st.ops.get(o.k);
          if (op === undefined || op.opcode === 0) {
            // Schema 2 journals no intent for idempotent requests: the outcome names the opcode.
            if (!isUint(r.opcode, 0xffffffff)) fail(path, 'op outcome without its intent');
            op = { opcode: r.opcode, ts: 0n, extra: null, reply: null, deaths: op?.deaths ?? 0 };
            st.ops.set(o.k, op);
          }
          op.reply = o.r;
          for (const m of held.get(o.k) ?? []) applyFs(m);
          held.delete(o.k);
          if (r.muts !== undefined) {
            if (!Array.isArray(r.muts)) fail(path, 'op outcome mutations');
            for (const m of r.muts as FsMutation[]) applyFs(m);
          }
          break;
        }
        case 'op-death': {
          const k = R.checkDeathRecord(path, r);
          const op = st.ops.get(k);
          if (op) op.deaths++;
          else st.ops.set(k, { opcode: 0, ts: 0n, extra: null, reply: null, deaths: 1 });
          break;
        }
        case 'fs': {
          const h = typeof r.k === 'string' ? held.get(r.k) : undefined;
          if (h !== undefined) h.push(r.m as FsMutation);
          else applyFs(r.m as FsMutation);
          break;
        }
        // --- the control log's records
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

export interface StateSources {
  vhost(): VhostSessionState | null;
  init(): InitResult | null;
  fs(): FsSession | null;
}

/** An outcome waiting for the group commit. */
interface StagedOutcome { key: string; opcode: number; reply: Buffer; mutations: FsMutation[] }

/** Writes the journal. One per worker process. */
export class WorkerStateStore implements ControlJournal, RequestLedger, OutcomeJournal {
  /** Owns the order: new fds to the keeper → journal commit → fd removals → publish. */
  readonly durability: DurabilityBarrier;
  private journal: StateJournal;
  private ctlSeq: number;
  private pending: PendingRec | null;
  private readonly ops: Map<string, OpRecord>;
  /** The request whose synchronous part is running, and the session mutations it made. */
  private currentOp: string | null = null;
  private currentMutations: FsMutation[] = [];
  /** Mutations of requests past their synchronous part whose outcome is not yet staged. */
  private readonly opMutations = new Map<string, FsMutation[]>();
  private stagedOutcomes: StagedOutcome[] = [];
  private sources: StateSources | null = null;
  private compactQueued = false;
  private snapshotBytes = 0;
  /** Requests loaded from the journal that no resubmitted chain has asked about yet. */
  private untouchedLoadedOps: Set<string> | null = null;

  /** `rewrite`: the loaded state was changed after loading, so the journal must start anew. */
  constructor(private readonly path: string, private readonly keeper: KeeperClient | null, loaded: LoadedState | null, keeperCtlSeq = 0, rewrite = false) {
    this.durability = new DurabilityBarrier(keeper);
    this.durability.journalOutcomesOf(this);
    // The keeper drops control replies with a sequence number it has already forwarded.
    this.ctlSeq = Math.max(loaded?.ctlSeq ?? 0, keeperCtlSeq);
    this.pending = loaded?.pending ?? null;
    this.ops = loaded?.ops ?? new Map();
    this.untouchedLoadedOps = new Set(this.ops.keys());
    if (loaded !== null && loaded.schemaVersion === SCHEMA_VERSION && !rewrite) {
      // A resume appends to the journal it just loaded (a torn tail is overwritten): rewriting
      // it first would cost the takeover a snapshot of the whole session (~40 ms at 20,000
      // inodes). It is compacted later, like any journal.
      this.journal = StateJournal.open(path, SCHEMA_VERSION);
      this.snapshotBytes = loaded.snapshotBytes;
      return;
    }
    const snap: Rec = {
      t: 'snapshot', vhost: loaded?.vhost ?? null, init: loaded?.init ?? null, fs: loaded?.fs?.toCompactSnapshot() ?? null,
      ctlSeq: this.ctlSeq, pending: this.pending, ops: [...this.ops],
    };
    // A fresh start (or an older schema) writes the folded state as a new journal's first record.
    const payload = R.genericPayload(snap);
    this.snapshotBytes = payload.length;
    this.journal = StateJournal.create(path, SCHEMA_VERSION, 0n, [payload]);
  }

  /** Where compaction reads the live state from. */
  setSources(s: StateSources): void {
    this.sources = s;
  }

  /** Journals a record now, after everything staged (so records stay in order). */
  private appendNow(maxLength: number, fill: (buf: Buffer, at: number) => number): void {
    this.durability.commit();
    this.journal.stage(maxLength, fill);
    this.journal.commit();
    this.maybeCompact();
  }

  private append(r: Rec): void {
    const payload = R.genericPayload(r);
    this.appendNow(payload.length, (buf, at) => payload.copy(buf, at));
  }

  private maybeCompact(): void {
    const limit = Math.max(COMPACT_BYTES, COMPACT_RATIO * this.snapshotBytes);
    if (this.journal.committedBytes > limit && !this.compactQueued && this.sources !== null) {
      this.compactQueued = true;
      // Between events every structure is consistent, so snapshot from a fresh tick.
      setImmediate(() => this.compact());
    }
  }

  compact(): void {
    this.compactQueued = false;
    if (this.sources === null) return;
    // The snapshot shows staged outcomes' effects: their fds must be in the keeper first.
    this.durability.commit();
    const s = this.sources;
    const snap: Rec = { t: 'snapshot', vhost: s.vhost(), init: s.init(), fs: s.fs()?.toCompactSnapshot() ?? null, ctlSeq: this.ctlSeq, pending: this.pending, ops: [...this.ops] };
    const old = this.journal;
    const payload = R.genericPayload(snap);
    this.snapshotBytes = payload.length;
    this.journal = StateJournal.create(this.path, SCHEMA_VERSION, old.generation + 1n, [payload]);
    old.close();
  }

  recordInit(init: InitResult | null): void {
    this.append({ t: 'init', init });
  }

  /** A new frontend connection (or the fresh session after a disconnect): forget the old one. */
  recordNewSession(fs: FsSession | null): void {
    this.durability.commit();
    this.pending = null;
    this.ops.clear();
    this.opMutations.clear();
    this.append({ t: 'snapshot', vhost: null, init: null, fs: fs?.toCompactSnapshot() ?? null, ctlSeq: this.ctlSeq, pending: null, ops: [] });
  }

  readonly onFsMutation = (m: FsMutation): void => {
    if (this.currentOp !== null) {
      this.currentMutations.push(m);
      return;
    }
    this.appendNow(1 + R.MAX_MUTATION_SIZE, (buf, at) => R.putStandaloneMutation(buf, at, m) - at);
  };

  // --- RequestLedger

  get(key: string): OpRecord | undefined {
    this.untouchedLoadedOps?.delete(key);
    return this.ops.get(key);
  }

  /** After the resubmitted chains have been dispatched: the other loaded requests were
   * published before the death and can never come back. Without this they would stay in
   * memory and in every later snapshot, one more batch per restart. */
  pruneLoadedOps(): number {
    const stale = this.untouchedLoadedOps;
    this.untouchedLoadedOps = null;
    if (stale === null) return 0;
    for (const key of stale) this.ops.delete(key);
    return stale.size;
  }

  recordDeath(key: string): number {
    this.untouchedLoadedOps?.delete(key);
    this.appendNow(1 + R.strSize(key), (buf, at) => R.putDeath(buf, at, key) - at);
    const op = this.ops.get(key);
    if (op) return ++op.deaths;
    this.ops.set(key, { opcode: 0, ts: 0n, extra: null, reply: null, deaths: 1 });
    return 1;
  }

  beginRequest(key: string, opcode: number, intent: boolean, extra: unknown): void {
    const deaths = this.ops.get(key)?.deaths ?? 0;
    if (intent) {
      const tsMs = Date.now();
      const x = R.encodeExtra(extra);
      // Intents need no group commit: they name no fd, and order against staged outcomes of
      // other requests does not matter (an intent only marks its own request ambiguous).
      this.journal.stage(R.intentSize(key, x), (buf, at) => R.putIntent(buf, at, key, opcode, tsMs, x) - at);
      this.journal.commit();
      this.ops.set(key, { opcode, ts: BigInt(tsMs) * 1_000_000n, extra, reply: null, deaths });
    } else {
      this.ops.set(key, { opcode, ts: 0n, extra: null, reply: null, deaths });
    }
    this.currentOp = key;
    this.currentMutations = [];
    this.durability.requestStarted();
  }

  endSync(): void {
    if (this.currentOp !== null && this.currentMutations.length > 0) this.opMutations.set(this.currentOp, this.currentMutations);
    this.currentOp = null;
    this.currentMutations = [];
  }

  outcome(key: string, reply: Buffer): void {
    if (this.currentOp === key) this.endSync();
    const op = this.ops.get(key);
    if (op) op.reply = reply;
    const mutations = this.opMutations.get(key) ?? [];
    this.opMutations.delete(key);
    this.stagedOutcomes.push({ key, opcode: op?.opcode ?? 0, reply, mutations });
  }

  // --- OutcomeJournal (driven by the durability barrier only)

  staged(): ReadonlyArray<{ readonly opcode: number }> {
    return this.stagedOutcomes;
  }

  commitStaged(): string[] {
    const staged = this.stagedOutcomes;
    if (staged.length === 0) return [];
    this.stagedOutcomes = [];
    for (const o of staged) {
      this.journal.stage(R.outcomeSize(o.key, o.reply, o.mutations.length),
        (buf, at) => R.putOutcome(buf, at, o.key, o.opcode, o.reply, o.mutations) - at);
    }
    this.journal.commit();
    this.maybeCompact();
    return staged.map((o) => o.key);
  }

  hasUnjournaledChanges(): boolean {
    return this.currentOp !== null || this.opMutations.size > 0;
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

/** Benchmark-only (VFSK_BENCH_NO_JOURNAL=1): the request path without the journal. It keeps
 * the keeper batching of the journaled path (the durability barrier without outcomes), so the
 * difference is the journal's cost alone. */
export class UnjournaledLedger implements RequestLedger {
  constructor(private readonly barrier: Pick<DurabilityBarrier, 'requestStarted'>) {}
  get(): OpRecord | undefined { return undefined; }
  recordDeath(): number { return 0; }
  beginRequest(): void { this.barrier.requestStarted(); }
  outcome(): void {}
  endSync(): void {}
  release(): void {}
}
