// The state store: the one versioned state file of a worker, and everything a restarted worker
// needs that is not an fd. It owns the journal (journal.ts), what is written into it and when
// it is compacted, and it loads it. Two logs write into it (journal_writer.ts):
//   - the control log (control_log.ts): each vhost-user control message before it is handled
//     (so a half-answered one finishes), the session state after it, its reply, its end;
//   - the request log (request_log.ts): FUSE requests' intents, outcomes and deaths, each
//     outcome carrying the FsSession mutations its request made;
// and the store itself writes the session-wide records: the snapshot a journal starts with, the
// FUSE INIT result, and session mutations made outside any request. The order in which any of
// it becomes durable relative to the keeper and the guest is the durability barrier's
// (durability.ts), which runs before every record the store appends.
// Loading treats the file as untrusted input: every record is validated (control_records.ts,
// records.ts), and a bad one is a StateFileError naming the file and the problem.
import type { KeeperClient } from '../../shared/keeper_client';
import { logger } from '../../shared/log';
import { errorInfo } from '../../shared/errors';
import { LogRateLimiter } from '../../shared/rate_limit';
import type { VhostSessionState } from '../vhost/backend';
import type { InitResult } from '../fuse/server';
import type { OpRecord } from '../fuse/exactly_once';
import { FUSE_LOOKUP } from '../fuse/constants';
import { FsSession, type FsMutation } from '../fs/session';
import { DATA_START, StateJournal, StateVersionError, decodeRecord, type SchemaReader } from './journal';
import { VERSION } from '../../shared/version';
import { SnapshotVersionError } from '../fs/session';
import * as R from './records';
import { checkPending, checkVhostState, type PendingRec } from './control_records';
import { fail, isObj, isUint } from './validate';
import { ControlLog } from './control_log';
import { RequestLog } from './request_log';
import { DurabilityBarrier } from './durability';
import type { JournalWriter, RecordFill } from './journal_writer';

/** 3: TAG_LOOKUPS, the native path's LOOKUPs of a ring turn in one record (records.ts). 2:
 * binary request records behind a tag byte. 1 (msgpack records) still loads.
 * The compatibility rule (docs/ARCHITECTURE.md, "State schema compatibility"): anything a reader
 * must know to not misread a file (a record tag, a mutation kind, a snapshot version, a record
 * field it must not ignore) is a new SCHEMA_VERSION; this build reads every schema from 1 to its
 * own, and a newer file only if it says a min reader <= ours. */
export const SCHEMA_VERSION = 3;
/** What a file says until it holds a record of a newer kind: every file starts as schema 2
 * (what builds before TAG_LOOKUPS read), and says 3 from its first TAG_LOOKUPS record on
 * (needSchema). So a file a drain leaves (a snapshot, base records only: RequestLog.
 * writeBaseSchemaOnly) is read by those builds too: a planned downgrade works. */
export const BASE_SCHEMA = 2;
/** The oldest reader schema that reads what this build leaves after a drain (X_SCHEMAMIN: the
 * keeper's upgrade check): BASE_SCHEMA. */
export const SCHEMA_MIN_READER = 2;
/** Who this build is, for the rule and its errors. */
export const SCHEMA_READER: SchemaReader = { schema: SCHEMA_VERSION, version: VERSION };
const WRITER = { minReader: SCHEMA_MIN_READER, writer: VERSION };
/** Compact when the journal passes this many bytes, or COMPACT_RATIO times the last snapshot,
 * whichever is more. A restarted worker replays the records since the last snapshot (about
 * 45 ns per byte: 70 ms for 1.6 MB of LOOKUP outcomes), while a compaction of 20,000 inodes
 * with handles costs ~16 ms here (rows 6 ms, msgpackr 4-5, the new file 5; the event loop stalls
 * meanwhile): this bounds both the replay at a restart and the amortized cost per appended
 * byte. */
const COMPACT_BYTES = 1 << 20;
const COMPACT_RATIO = 2;
/** A compaction that failed (EMFILE, ENOMEM, ENOSPC) is retried no sooner than this. */
const COMPACT_RETRY_MS = 1_000;

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
function* looseRecords(journal: StateJournal, payloads: Buffer[], path: string, sizes: { last: number }): Generator<unknown> {
  const schema2 = journal.schemaVersion >= 2;
  for (const payload of payloads) {
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
      if (e instanceof R.UnknownRecordError) throw new StateVersionError(journal.stamp, SCHEMA_READER, path, e.message);
      fail(path, `record does not decode: ${(e as Error).message}`);
    }
    switch (d.t) {
      case 'generic': yield d.value; break;
      case 'intent': yield { t: 'op', k: d.key, opcode: d.opcode, ts: BigInt(Math.round(d.tsMs)) * 1_000_000n, x: d.extra }; break;
      case 'outcome': yield { t: 'op-done', k: d.key, opcode: d.opcode, r: d.reply, muts: d.mutations }; break;
      case 'mutation': yield { t: 'fs', m: d.m }; break;
      case 'death': yield { t: 'op-death', k: d.key }; break;
      case 'lookups': yield { t: 'lookups', lookups: d.lookups }; break;
    }
  }
}

/** Folds the journal into the state a restarted worker resumes from. */
export function loadState(path: string): LoadedState {
  const loader = new StateLoader(path);
  try {
    loader.catchUp();
    return loader.finish();
  } finally {
    loader.close();
  }
}

/**
 * The fold of loadState, in steps: catchUp() reads what was committed since its last call, so
 * a warm standby loads the session while it waits (and follows the serving worker's journal)
 * and its takeover reads only the tail (docs/ARCHITECTURE.md, "Recovery of a large session"). The records it folds
 * are committed (before the commit offset), and committed records never change: a file is
 * only ever appended to, and compaction or a fresh start writes a new file renamed over it. So
 * a fold in steps over one file is the fold of it at once; when the path names another file
 * (its inode differs from the one this loader holds open) the fold starts over.
 */
export class StateLoader {
  private journal: StateJournal | null = null;
  private identity = '';
  /** The offset after the last folded record. */
  private pos = DATA_START;
  private st!: LoadedState;
  /** Mutations made by a request are applied only once its outcome is journaled: a request
   * that died half-way is rolled back here and runs again when it is resubmitted. */
  private readonly held = new Map<string, FsMutation[]>();
  /** "queue.head" → the newest request key folded for that descriptor head (see keepNewest). */
  private readonly newestOfHead = new Map<string, string>();
  private readonly sizes = { last: 0 };
  private finished = false;

  constructor(private readonly path: string) {}

  /** How many times the fold started from a file's beginning (the first load, then once per
   * compaction or fresh start it followed). */
  restarts = 0;

  /** The session folded so far (null before a snapshot with one): a standby may warm it. */
  get session(): FsSession | null {
    return this.journal === null ? null : this.st.fs;
  }

  /** Folds what was committed since the last call; false if there was nothing new. Throws what
   * loadState throws; the loader is unusable after a throw. */
  catchUp(): boolean {
    if (this.finished) throw new Error('state loader already finished');
    const path = this.path;
    const now = StateJournal.identityAt(path);
    if (this.journal === null || now !== this.identity) {
      this.journal?.close();
      this.journal = null;
      const journal = StateJournal.open(path, SCHEMA_READER);
      this.journal = journal;
      this.identity = journal.identity();
      this.pos = DATA_START;
      this.held.clear();
      this.newestOfHead.clear();
      this.st = {
        vhost: null, init: null, fs: null, ctlSeq: 0, pending: null, ops: new Map(), discardedMutations: 0,
        schemaVersion: journal.schemaVersion, snapshotBytes: 0,
      };
      this.restarts++;
    } else {
      this.journal.refresh();
    }
    const journal = this.journal;
    const end = journal.committedBytes;
    if (end === this.pos) return false;
    this.fold(journal, journal.payloads(this.pos));
    this.pos = end;
    return true;
  }

  /** The folded state; the loader lets go of the file. */
  finish(): LoadedState {
    if (this.journal === null) throw new Error('state loader finished before loading');
    this.finished = true;
    this.close();
    for (const h of this.held.values()) this.st.discardedMutations += h.length;
    return this.st;
  }

  close(): void {
    this.journal?.close();
    this.journal = null;
  }

  /**
   * A request on a descriptor head makes the head's earlier requests dead: the guest reused the
   * head, so it had their replies, and a successor resubmits only what the inflight region
   * names, each head's newest counter (exactly_once.ts requestKey). Their outcomes are dropped
   * as they are folded, not kept until the takeover prunes them (RequestLog.pruneLoadedOps):
   * a standby following a busy journal otherwise held every outcome since the last compaction
   * (thousands of replies) and collected them again and again.
   */
  private keepNewest(key: string): void {
    const cut = key.lastIndexOf('.');
    if (cut <= 0) return;
    const head = key.slice(0, cut);
    const before = this.newestOfHead.get(head);
    if (before === key) return;
    this.newestOfHead.set(head, key);
    if (before !== undefined && !this.held.has(before)) this.st.ops.delete(before);
  }

  private fold(journal: StateJournal, payloads: Buffer[]): void {
    const { path, st, held, sizes } = this;
    const applyFs = (m: FsMutation): void => {
      if (st.fs === null) fail(path, 'fs mutation before any fs session');
      try {
        st.fs.apply(m);
      } catch (e) {
        fail(path, `fs mutation: ${(e as Error).message}`);
      }
    };
    for (const raw of looseRecords(journal, payloads, path, sizes)) {
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
            if (e instanceof SnapshotVersionError) throw new StateVersionError(journal.stamp, SCHEMA_READER, path, e.message);
            fail(path, `fs snapshot: ${(e as Error).message}`);
          }
          if (!isUint(r.ctlSeq)) fail(path, 'snapshot ctlSeq');
          st.ctlSeq = r.ctlSeq;
          st.pending = checkPending(path, r.pending);
          st.ops = new Map();
          held.clear();
          this.newestOfHead.clear();
          if (r.ops !== undefined) {
            if (!Array.isArray(r.ops)) fail(path, 'snapshot ops');
            for (const e of r.ops as unknown[]) {
              if (!Array.isArray(e) || typeof e[0] !== 'string') fail(path, 'snapshot op entry');
              st.ops.set(e[0], R.checkOp(path, e[1]));
              this.keepNewest(e[0]);
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
          this.keepNewest(i.k);
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
            this.keepNewest(o.k);
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
        case 'lookups': {
          // Decoded and checked by records.ts: each an outcome of opcode LOOKUP with one
          // addLookup of its reply's nodeid (as an 'op-done' with that mutation would fold).
          for (const l of r.lookups as R.DecodedLookup[]) {
            st.ops.set(l.key, { opcode: FUSE_LOOKUP, ts: 0n, extra: null, reply: l.reply, deaths: st.ops.get(l.key)?.deaths ?? 0 });
            this.keepNewest(l.key);
            for (const m of held.get(l.key) ?? []) applyFs(m);
            held.delete(l.key);
            applyFs({ op: 'addLookup', nodeid: l.nodeid, count: 1 });
          }
          break;
        }
        case 'op-death': {
          const k = R.checkDeathRecord(path, r);
          const op = st.ops.get(k);
          if (op) op.deaths++;
          else {
            st.ops.set(k, { opcode: 0, ts: 0n, extra: null, reply: null, deaths: 1 });
            this.keepNewest(k);
          }
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
          throw new StateVersionError(journal.stamp, SCHEMA_READER, path, `unknown record type ${JSON.stringify(r.t).slice(0, 40)}`);
      }
    }
  }
}

/** Where compaction reads the live state from. */
export interface StateSources {
  vhost(): VhostSessionState | null;
  init(): InitResult | null;
  fs(): FsSession | null;
}

/** Writes the journal. One per worker process. */
export class StateStore implements JournalWriter {
  /** Owns the order: new fds to the keeper → journal commit → fd removals → publish. */
  readonly durability: DurabilityBarrier;
  /** vhost-user control messages (ControlJournal). */
  readonly control: ControlLog;
  /** FUSE requests (RequestLedger). */
  readonly requests: RequestLog;
  private journal: StateJournal;
  private sources: StateSources | null = null;
  private compactQueued = false;
  /** After a failed compaction, none is tried before this time (ms). */
  private compactRetryAt = 0;
  private readonly compactErrors = new LogRateLimiter();
  private readonly log = logger('state');
  private snapshotBytes = 0;
  private mapObserver: ((map: ArrayBuffer | null) => void) | null = null;

  /** `rewrite`: the loaded state was changed after loading, so the journal must start anew. */
  constructor(private readonly path: string, keeper: KeeperClient | null, loaded: LoadedState | null, keeperCtlSeq = 0, rewrite = false) {
    this.durability = new DurabilityBarrier(keeper);
    this.control = new ControlLog(this, keeper, loaded?.ctlSeq ?? 0, loaded?.pending ?? null, keeperCtlSeq);
    this.requests = new RequestLog(this, this.durability, loaded?.ops ?? null);
    if (loaded !== null && loaded.schemaVersion >= BASE_SCHEMA && loaded.schemaVersion <= SCHEMA_VERSION && !rewrite) {
      // A resume appends to the journal it just loaded (a torn tail is overwritten): rewriting
      // it first would cost the takeover a snapshot of the whole session (~40 ms at 20,000
      // inodes). It is compacted later, like any journal.
      this.journal = StateJournal.open(path, Array.from({ length: SCHEMA_VERSION - BASE_SCHEMA + 1 }, (_, i) => BASE_SCHEMA + i));
      this.snapshotBytes = loaded.snapshotBytes;
      return;
    }
    // A fresh start (or an older schema) writes the folded state as a new journal's first record.
    const payload = R.genericPayload(this.snapshot(loaded?.vhost ?? null, loaded?.init ?? null, loaded?.fs ?? null));
    this.snapshotBytes = payload.length;
    this.journal = StateJournal.create(path, BASE_SCHEMA, 0n, [payload], WRITER);
  }

  private snapshot(vhost: VhostSessionState | null, init: InitResult | null, fs: FsSession | null): R.GenericRecord {
    const { ctlSeq, pending } = this.control.snapshotFields();
    return { t: 'snapshot', vhost, init, fs: fs?.toCompactSnapshot() ?? null, ctlSeq, pending, ops: this.requests.snapshotOps() };
  }

  /** Told of every mapping of the journal file, across compactions (null: the current one is
   * about to be unmapped): the addon journals its CREATEs', MKDIRs', UNLINKs' and RMDIRs' intents into it. */
  onJournalMapped(fn: ((map: ArrayBuffer | null) => void) | null): void {
    const before = this.mapObserver;
    this.mapObserver = fn;
    if (fn === null && before !== null) before(null);
    this.journal.onMapped = fn;
  }

  /** Where compaction reads the live state from. */
  setSources(s: StateSources): void {
    this.sources = s;
  }

  // --- JournalWriter (the logs' way in)

  append(maxLength: number, fill: RecordFill): void {
    this.durability.commit();
    this.journal.stage(maxLength, fill);
    this.journal.commit();
    this.maybeCompact();
  }

  appendGeneric(r: R.GenericRecord): void {
    const payload = R.genericPayload(r);
    this.append(payload.length, (buf, at) => payload.copy(buf, at));
  }

  stage(maxLength: number, fill: RecordFill): void {
    this.journal.stage(maxLength, fill);
  }

  commit(grew: boolean): void {
    this.journal.commit();
    if (grew) this.maybeCompact();
  }

  noteForeignCommits(): void {
    this.maybeCompact();
  }

  needSchema(schema: number): void {
    // A TAG_LOOKUPS record: older readers must refuse the file from now on (until compaction).
    this.journal.raiseSchema(schema, schema);
  }

  // --- compaction

  private maybeCompact(): void {
    const limit = Math.max(COMPACT_BYTES, COMPACT_RATIO * this.snapshotBytes);
    if (this.journal.committedBytesInFile > limit && !this.compactQueued && this.sources !== null && Date.now() >= this.compactRetryAt) {
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
    const old = this.journal;
    const payload = R.genericPayload(this.snapshot(s.vhost(), s.init(), s.fs()));
    let fresh: StateJournal;
    try {
      fresh = StateJournal.create(this.path, BASE_SCHEMA, old.generation + 1n, [payload], WRITER);
    } catch (e) {
      // Out of fds, memory or tmpfs space: the journal we have stays valid and keeps growing;
      // compaction is tried again later. A request must not fail for it.
      this.compactRetryAt = Date.now() + COMPACT_RETRY_MS;
      const dropped = this.compactErrors.admit();
      if (dropped !== null) this.log.error({ err: errorInfo(e), dropped, journalBytes: old.committedBytes }, 'journal compaction failed; retrying later');
      return;
    }
    this.snapshotBytes = payload.length;
    this.journal = fresh;
    // The observer follows the fresh file; the old one's close must not tell it null after that.
    old.onMapped = null;
    fresh.onMapped = this.mapObserver;
    old.close();
  }

  // --- session-wide records

  recordInit(init: InitResult | null): void {
    this.appendGeneric({ t: 'init', init });
  }

  /** A new frontend connection (or the fresh session after a disconnect): forget the old one. */
  recordNewSession(fs: FsSession | null): void {
    this.durability.commit();
    this.control.forgetSession();
    this.requests.forgetSession();
    this.appendGeneric({ t: 'snapshot', vhost: null, init: null, fs: fs?.toCompactSnapshot() ?? null, ctlSeq: this.control.snapshotFields().ctlSeq, pending: null, ops: [] });
  }

  readonly onFsMutation = (m: FsMutation, standalone = false): void => {
    if (!standalone && this.requests.capture(m)) return;
    this.append(1 + R.MAX_MUTATION_SIZE, (buf, at) => R.putStandaloneMutation(buf, at, m) - at);
  };

  close(): void {
    this.journal.close();
  }
}
