// How the two logs (control_log.ts, request_log.ts) write into the one journal that the state
// store (state_store.ts) owns, snapshots and compacts. Neither log sees the journal file.
import type { GenericRecord } from './records';

/** Writes at most `maxLength` payload bytes into `buf` at `at`; returns how many it wrote. */
export type RecordFill = (buf: Buffer, at: number) => number;

export interface JournalWriter {
  /** Journals one record with its own commit, after the durability barrier (durability.ts) has
   * made everything staged before it durable, so records stay in order. */
  append(maxLength: number, fill: RecordFill): void;
  /** append() of a msgpack record (snapshot, init, control messages). */
  appendGeneric(record: GenericRecord): void;
  /** Encodes one record behind the staged ones: not durable until commit(). No barrier: the
   * caller orders it itself (intents, the barrier's own group commit of outcomes). */
  stage(maxLength: number, fill: RecordFill): void;
  /** Makes every staged record durable with one release store. `grew`: the commit may have
   * taken the journal past its compaction limit (the store then compacts from a fresh tick). */
  commit(grew: boolean): void;
  /** The records about to be staged need a file of at least this schema (state_store.ts: a
   * file says the schema of the newest record kind it holds, so older readers read what they
   * can). */
  needSchema(schema: number): void;
  /** The addon committed records of its own (requests it journaled and published itself): the
   * store compacts, from a fresh tick, if they took the journal past its limit. */
  noteForeignCommits(): void;
}
