// The request log: the FUSE side of the journal (RequestLedger, worker/fuse/exactly_once.ts).
// A journaled request costs one outcome record (its reply and the session mutations it made),
// staged as it finishes and made durable at the group commit of the durability barrier
// (durability.ts), before its used element is published; a request that is not idempotent also
// journals its intent, at once, before it runs. Resubmitted requests count their deaths here.
// Records are the binary ones of records.ts; the journal is the state store's (state_store.ts).
import type { OpRecord, RequestLedger, ServedLookup } from '../fuse/exactly_once';
import { FUSE_LOOKUP } from '../fuse/constants';
import type { FsMutation } from '../fs/session';
import type { DurabilityBarrier, OutcomeJournal } from './durability';
import type { JournalWriter } from './journal_writer';
import * as R from './records';

/** An outcome waiting for the group commit, or (`lookups`) native LOOKUPs of one queue that
 * go into one TAG_LOOKUPS record. */
interface StagedOutcome { key: string; opcode: number; reply: Buffer; mutations: FsMutation[]; lookups?: { queue: number; entries: ServedLookup[] } }
const NO_REPLY = Buffer.alloc(0);
/** currentOp while servedLookups applies lookups: their mutations are implied by the record. */
const SERVED_LOOKUPS = '';

export class RequestLog implements RequestLedger, OutcomeJournal {
  private readonly ops: Map<string, OpRecord>;
  /** The request whose synchronous part is running, and the session mutations it made. */
  private currentOp: string | null = null;
  private currentMutations: FsMutation[] = [];
  /** Mutations of requests past their synchronous part whose outcome is not yet staged. */
  private readonly opMutations = new Map<string, FsMutation[]>();
  private stagedOutcomes: StagedOutcome[] = [];
  /** Set by writeBaseSchemaOnly (a drain): no TAG_LOOKUPS record from now on. */
  private baseSchemaOnly = false;
  /** Requests loaded from the journal that no resubmitted chain has asked about yet. */
  private untouchedLoadedOps: Set<string> | null = null;

  /** `loadedOps`: the requests of the journal a successor loaded (state_store.ts loadState). */
  constructor(private readonly writer: JournalWriter, private readonly barrier: DurabilityBarrier, loadedOps: Map<string, OpRecord> | null) {
    this.ops = loadedOps ?? new Map();
    this.untouchedLoadedOps = new Set(this.ops.keys());
    barrier.journalOutcomesOf(this);
  }

  /** The requests a snapshot carries (so that a resubmitted one still finds its reply). */
  snapshotOps(): Array<[string, OpRecord]> {
    return [...this.ops];
  }

  /** A new frontend session: no request of the old one can come back. */
  forgetSession(): void {
    this.ops.clear();
    this.opMutations.clear();
  }

  /** A session mutation made by the running request is its own (durable with its outcome);
   * returns false for one made outside any request. */
  capture(m: FsMutation): boolean {
    if (this.currentOp === null) return false;
    this.currentMutations.push(m);
    return true;
  }

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
    this.writer.append(1 + R.strSize(key), (buf, at) => R.putDeath(buf, at, key) - at);
    const op = this.ops.get(key);
    if (op) return ++op.deaths;
    this.ops.set(key, { opcode: 0, ts: 0n, extra: null, reply: null, deaths: 1 });
    return 1;
  }

  beginRequest(key: string, opcode: number, intent: boolean, extra: unknown, intentJournaledMs?: number): void {
    const deaths = this.ops.get(key)?.deaths ?? 0;
    if (intentJournaledMs !== undefined) {
      // The addon wrote the intent into the journal (a compaction's snapshot must say its time).
      this.ops.set(key, { opcode, ts: BigInt(Math.round(intentJournaledMs)) * 1_000_000n, extra, reply: null, deaths });
    } else if (intent) {
      const tsMs = Date.now();
      const x = R.encodeExtra(extra);
      // Intents need no group commit: they name no fd, and order against staged outcomes of
      // other requests does not matter (an intent only marks its own request ambiguous).
      this.writer.stage(R.intentSize(key, x), (buf, at) => R.putIntent(buf, at, key, opcode, tsMs, x) - at);
      this.writer.commit(false);
      this.ops.set(key, { opcode, ts: BigInt(tsMs) * 1_000_000n, extra, reply: null, deaths });
    } else {
      this.ops.set(key, { opcode, ts: 0n, extra: null, reply: null, deaths });
    }
    this.currentOp = key;
    this.currentMutations = [];
    this.barrier.requestStarted();
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

  servedLookups(queueIndex: number, lookups: readonly ServedLookup[], addLookup: (nodeid: number) => boolean): void {
    this.barrier.requestStarted();
    let group: ServedLookup[] = [];
    const made: FsMutation[] = [];
    for (const l of lookups) {
      this.currentOp = SERVED_LOOKUPS;
      this.currentMutations = made;
      made.length = 0;
      const added = addLookup(l.nodeid);
      this.currentOp = null;
      this.currentMutations = [];
      this.ops.set(l.key, { opcode: FUSE_LOOKUP, ts: 0n, extra: null, reply: l.reply, deaths: this.ops.get(l.key)?.deaths ?? 0 });
      const m = made[0];
      if (added && made.length === 1 && m!.op === 'addLookup' && m!.nodeid === l.nodeid && m!.count === 1) {
        group.push(l);
        continue;
      }
      // Not the one lookup the record implies (the session refused it): a plain outcome with
      // what was made, after the group before it (the journal keeps the session's order).
      if (group.length > 0) this.stagedOutcomes.push({ key: SERVED_LOOKUPS, opcode: FUSE_LOOKUP, reply: NO_REPLY, mutations: [], lookups: { queue: queueIndex, entries: group } });
      group = [];
      this.stagedOutcomes.push({ key: l.key, opcode: FUSE_LOOKUP, reply: l.reply, mutations: made.slice() });
    }
    if (group.length > 0) this.stagedOutcomes.push({ key: SERVED_LOOKUPS, opcode: FUSE_LOOKUP, reply: NO_REPLY, mutations: [], lookups: { queue: queueIndex, entries: group } });
  }

  applyJournaled(apply: () => void): void {
    this.currentOp = SERVED_LOOKUPS;
    this.currentMutations = [];
    try {
      apply();
    } finally {
      this.currentOp = null;
      this.currentMutations = [];
    }
    this.writer.noteForeignCommits();
  }

  /** From now on, served LOOKUPs are journaled as plain outcomes (schema 2 records), so what
   * the drain's snapshot starts is read by a build of schema 2 too (a planned downgrade). */
  writeBaseSchemaOnly(): void {
    this.baseSchemaOnly = true;
  }

  get baseSchemaOnlyNow(): boolean {
    return this.baseSchemaOnly;
  }

  release(key: string): void {
    // Dropped from memory; the next compaction drops it from the file.
    this.ops.delete(key);
  }

  // --- OutcomeJournal (driven by the durability barrier only)

  staged(): ReadonlyArray<{ readonly opcode: number }> {
    return this.stagedOutcomes;
  }

  commitStaged(): string[] {
    const staged = this.stagedOutcomes;
    if (staged.length === 0) return [];
    this.stagedOutcomes = [];
    const keys: string[] = [];
    for (const o of staged) {
      const l = o.lookups;
      if (l !== undefined && this.baseSchemaOnly) {
        // The same outcomes as the schema-2 records of a LOOKUP served by TypeScript.
        for (const e of l.entries) {
          const muts: FsMutation[] = [{ op: 'addLookup', nodeid: e.nodeid, count: 1 }];
          this.writer.stage(R.outcomeSize(e.key, e.reply, 1), (buf, at) => R.putOutcome(buf, at, e.key, FUSE_LOOKUP, e.reply, muts) - at);
          keys.push(e.key);
        }
        continue;
      }
      if (l !== undefined) {
        this.writer.needSchema(R.LOOKUPS_SCHEMA);
        this.writer.stage(R.lookupsSize(l.entries), (buf, at) => R.putLookups(buf, at, l.queue, l.entries) - at);
        for (const e of l.entries) keys.push(e.key);
        continue;
      }
      this.writer.stage(R.outcomeSize(o.key, o.reply, o.mutations.length),
        (buf, at) => R.putOutcome(buf, at, o.key, o.opcode, o.reply, o.mutations) - at);
      keys.push(o.key);
    }
    this.writer.commit(true);
    return keys;
  }

  hasUnjournaledChanges(): boolean {
    return this.currentOp !== null || this.opMutations.size > 0;
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
