// Binary encoding of the journal records written on the request path (schema 2; TAG_LOOKUPS is
// schema 3's).
//
// A request costs one record: its outcome, carrying the reply and the session mutations the
// request made. Requests that are not idempotent also write an intent record before they run.
// These are hand-encoded straight into the mapped journal: msgpack of a small object, its
// allocations and a second copy cost more than the rest of a cached LOOKUP. Rare records
// (snapshots, vhost-user control messages, INIT) stay msgpack, behind a tag byte: their types
// and validators are at the end of this file (the control log's in control_records.ts).
//
// Payload layout, little-endian; `str` = u8 length + latin1 bytes, `num` = f64 (an integer
// below 2^53, checked on load):
//   TAG_GENERIC   msgpack of the record object
//   TAG_INTENT    str key, u32 opcode, f64 ts_ms, u32 extra length, msgpack extra (0 = null)
//   TAG_OUTCOME   str key, u32 opcode, u32 reply length, reply, u32 count, mutation × count
//   TAG_MUTATION  mutation (a session change made outside any request)
//   TAG_DEATH     str key
//   TAG_LOOKUPS   u16 queue, u16 count, then count × (u16 head, u64 counter, u16 reply length,
//                 reply): the LOOKUPs the native path served in one ring turn, in pop order, one
//                 record for all. Each is an outcome of opcode LOOKUP, key "queue.head.counter",
//                 whose one session mutation is addLookup(the nodeid of its reply, 1).
// mutation = u8 kind, then per kind:
//   addInode num nodeid, u64 dev, u64 ino, u32 generation, u32 fileType
//   addLookup / forget  num nodeid, num count
//   openFile num fh, num nodeid, f64 flags      openDir num fh, num nodeid
//   closeFile / closeDir num fh                 setDirPosition num fh, str position
//   reset (nothing)
//   openLockOwner num id, num nodeid, num fh, u64 owner, u32 pid      closeLockOwner num id
//   addInodeHandle (an addInode whose inode has a file handle): addInode's fields, then
//     u64 mountId, i32 handleType, u8 length, the handle's bytes (1..128)
// Kinds are only ever appended, each with a new schema (state_store.ts): a journal of an older
// worker stays readable; an older worker meets an unknown kind or tag only in a newer journal,
// and refuses it (UnknownRecordError → StateVersionError naming both versions).
import { keepHandleFrom, type KeptHandle } from '../fs/handle_bytes';
import { MAX_HANDLE_BYTES, type CompactSessionSnapshot, type FsMutation, type SessionSnapshot } from '../fs/session';
import type { InitResult } from '../fuse/server';
import { requestKey, type OpRecord } from '../fuse/exactly_once';
import type { VhostSessionState } from '../vhost/backend';
import type { ControlRecord, PendingRec } from './control_records';
import { decodeRecord, encodeRecord } from './journal';
import { fail, isBig, isObj, isUint } from './validate';
import { StateError } from '../../shared/errors';

export const TAG_GENERIC = 0;
export const TAG_INTENT = 1;
export const TAG_OUTCOME = 2;
export const TAG_MUTATION = 3;
export const TAG_DEATH = 4;
export const TAG_LOOKUPS = 5;
/** The file schema a TAG_LOOKUPS record needs (state_store.ts: files say the newest record kind they hold). */
export const LOOKUPS_SCHEMA = 3;

const MAX_SAFE_U64 = BigInt(Number.MAX_SAFE_INTEGER);
const MUTATION_KINDS = ['addInode', 'addLookup', 'forget', 'openFile', 'closeFile', 'openDir', 'setDirPosition', 'closeDir', 'reset',
  'openLockOwner', 'closeLockOwner', 'addInodeHandle'] as const;
const KIND_CODE = new Map<string, number>(MUTATION_KINDS.map((k, i) => [k, i]));
/** Upper bound of one encoded mutation (addInodeHandle: 1 + 8 + 8 + 8 + 4 + 4 + 8 + 4 + 1 + 128). */
export const MAX_MUTATION_SIZE = 176;
const MAX_STR = 255;

export class RecordDecodeError extends StateError {}
/** A record tag or mutation kind this build does not know: a newer writer's (see the
 * compatibility rule in docs/ARCHITECTURE.md), refused as such, never skipped. */
export class UnknownRecordError extends RecordDecodeError {}

/** A decoded request-path record, in the shape the loader folds. */
export type DecodedRecord =
  | { t: 'generic'; value: unknown }
  | { t: 'intent'; key: string; opcode: number; tsMs: number; extra: unknown }
  | { t: 'outcome'; key: string; opcode: number; reply: Buffer; mutations: FsMutation[] }
  | { t: 'mutation'; m: FsMutation }
  | { t: 'death'; key: string }
  | { t: 'lookups'; lookups: DecodedLookup[] };

/** One LOOKUP of a TAG_LOOKUPS record: an outcome of opcode LOOKUP plus addLookup(nodeid, 1). */
export interface DecodedLookup { key: string; reply: Buffer; nodeid: number }

/** A LOOKUP the native path served, as the request log writes it into a TAG_LOOKUPS record. */
export interface ServedLookupEntry { head: number; counter: bigint; reply: Buffer }

/** Entries of one TAG_LOOKUPS record at most (a ring turn hands over at most 256: ring.cc). */
export const MAX_LOOKUPS_PER_RECORD = 0xffff;
/** Where a LOOKUP reply names its nodeid: fuse_out_header (16 bytes), then fuse_entry_out.nodeid. */
const REPLY_NODEID_AT = 16;

// ---------------------------------------------------------------- encoding

export const strSize = (s: string): number => 1 + s.length;

function putStr(buf: Buffer, at: number, s: string): number {
  if (s.length > MAX_STR) throw new RangeError(`journal string of ${s.length} characters`);
  buf[at] = s.length;
  buf.write(s, at + 1, s.length, 'latin1');
  return at + 1 + s.length;
}

export function putMutation(buf: Buffer, at: number, m: FsMutation): number {
  const code = m.op === 'addInode' && m.handle ? KIND_CODE.get('addInodeHandle') : KIND_CODE.get(m.op);
  if (code === undefined) throw new RangeError(`unknown session mutation ${String(m.op)}`);
  buf[at++] = code;
  switch (m.op) {
    case 'addInode': {
      at = buf.writeDoubleLE(m.nodeid, at);
      at = buf.writeBigUInt64LE(BigInt(m.dev), at);
      at = buf.writeBigUInt64LE(BigInt(m.ino), at);
      at = buf.writeUInt32LE(m.generation >>> 0, at);
      at = buf.writeUInt32LE(m.fileType >>> 0, at);
      const h = m.handle;
      if (!h) return at;
      if (h.handle.length === 0 || h.handle.length > MAX_HANDLE_BYTES) throw new RangeError(`file handle of ${h.handle.length} bytes`);
      at = buf.writeBigUInt64LE(BigInt(h.mountId), at);
      at = buf.writeInt32LE(h.handleType | 0, at);
      at = buf.writeUInt8(h.handle.length, at);
      return at + h.handle.copy(buf, at);
    }
    case 'addLookup':
    case 'forget':
      at = buf.writeDoubleLE(m.nodeid, at);
      return buf.writeDoubleLE(m.count, at);
    case 'openFile':
      at = buf.writeDoubleLE(m.fh, at);
      at = buf.writeDoubleLE(m.nodeid, at);
      return buf.writeDoubleLE(m.flags, at);
    case 'openDir':
      at = buf.writeDoubleLE(m.fh, at);
      return buf.writeDoubleLE(m.nodeid, at);
    case 'closeFile':
    case 'closeDir':
      return buf.writeDoubleLE(m.fh, at);
    case 'setDirPosition':
      at = buf.writeDoubleLE(m.fh, at);
      return putStr(buf, at, m.position);
    case 'reset':
      return at;
    case 'openLockOwner':
      at = buf.writeDoubleLE(m.id, at);
      at = buf.writeDoubleLE(m.nodeid, at);
      at = buf.writeDoubleLE(m.fh, at);
      at = buf.writeBigUInt64LE(m.owner, at);
      return buf.writeUInt32LE(m.pid >>> 0, at);
    case 'closeLockOwner':
      return buf.writeDoubleLE(m.id, at);
  }
}

export function intentSize(key: string, extra: Buffer | null): number {
  return 1 + strSize(key) + 4 + 8 + 4 + (extra?.length ?? 0);
}

export function encodeExtra(extra: unknown): Buffer | null {
  return extra === null || extra === undefined ? null : encodeRecord(extra);
}

export function putIntent(buf: Buffer, at: number, key: string, opcode: number, tsMs: number, extra: Buffer | null): number {
  buf[at++] = TAG_INTENT;
  at = putStr(buf, at, key);
  at = buf.writeUInt32LE(opcode >>> 0, at);
  at = buf.writeDoubleLE(tsMs, at);
  at = buf.writeUInt32LE(extra?.length ?? 0, at);
  return extra === null ? at : at + extra.copy(buf, at);
}

export function outcomeSize(key: string, reply: Buffer, mutations: number): number {
  return 1 + strSize(key) + 4 + 4 + reply.length + 4 + mutations * MAX_MUTATION_SIZE;
}

export function putOutcome(buf: Buffer, at: number, key: string, opcode: number, reply: Buffer, mutations: readonly FsMutation[]): number {
  buf[at++] = TAG_OUTCOME;
  at = putStr(buf, at, key);
  at = buf.writeUInt32LE(opcode >>> 0, at);
  at = buf.writeUInt32LE(reply.length, at);
  at += reply.copy(buf, at);
  at = buf.writeUInt32LE(mutations.length, at);
  for (const m of mutations) at = putMutation(buf, at, m);
  return at;
}

export function lookupsSize(entries: readonly ServedLookupEntry[]): number {
  let n = 1 + 2 + 2;
  for (const e of entries) n += 2 + 8 + 2 + e.reply.length;
  return n;
}

export function putLookups(buf: Buffer, at: number, queue: number, entries: readonly ServedLookupEntry[]): number {
  if (entries.length === 0 || entries.length > MAX_LOOKUPS_PER_RECORD) throw new RangeError(`lookups record of ${entries.length} entries`);
  buf[at++] = TAG_LOOKUPS;
  at = buf.writeUInt16LE(queue, at);
  at = buf.writeUInt16LE(entries.length, at);
  for (const e of entries) {
    if (e.reply.length < REPLY_NODEID_AT + 8 || e.reply.length > 0xffff) throw new RangeError(`LOOKUP reply of ${e.reply.length} bytes`);
    at = buf.writeUInt16LE(e.head, at);
    at = buf.writeBigUInt64LE(e.counter, at);
    at = buf.writeUInt16LE(e.reply.length, at);
    at += e.reply.copy(buf, at);
  }
  return at;
}

export function putDeath(buf: Buffer, at: number, key: string): number {
  buf[at++] = TAG_DEATH;
  return putStr(buf, at, key);
}

export function putStandaloneMutation(buf: Buffer, at: number, m: FsMutation): number {
  buf[at++] = TAG_MUTATION;
  return putMutation(buf, at, m);
}

export function genericPayload(value: unknown): Buffer {
  const out = encodeRecord(value, 1);
  out[0] = TAG_GENERIC;
  return out;
}

// ---------------------------------------------------------------- decoding (untrusted input)

class Reader {
  private at = 0;
  constructor(private readonly b: Buffer) {}

  private need(n: number, what: string): void {
    if (this.at + n > this.b.length) throw new RecordDecodeError(`record ends inside ${what}`);
  }
  u8(what: string): number {
    this.need(1, what);
    return this.b[this.at++]!;
  }
  u64(what: string): bigint {
    this.need(8, what);
    const v = this.b.readBigUInt64LE(this.at);
    this.at += 8;
    return v;
  }
  u16(what: string): number {
    this.need(2, what);
    const v = this.b.readUInt16LE(this.at);
    this.at += 2;
    return v;
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.b.readUInt32LE(this.at);
    this.at += 4;
    return v;
  }
  i32(what: string): number {
    this.need(4, what);
    const v = this.b.readInt32LE(this.at);
    this.at += 4;
    return v;
  }
  f64(what: string): number {
    this.need(8, what);
    const v = this.b.readDoubleLE(this.at);
    this.at += 8;
    return v;
  }
  uint(what: string): number {
    const v = this.f64(what);
    if (!Number.isSafeInteger(v) || v < 0) throw new RecordDecodeError(`${what} is not a non-negative integer`);
    return v;
  }
  str(what: string): string {
    const n = this.u8(what);
    this.need(n, what);
    const s = this.b.toString('latin1', this.at, this.at + n);
    this.at += n;
    return s;
  }
  bytes(n: number, what: string): Buffer {
    this.need(n, what);
    const v = this.b.subarray(this.at, this.at + n);
    this.at += n;
    return v;
  }
  /** The next `n` bytes as a kept inode handle: copied into the handle slabs, no view made. */
  handle(mountId: number, handleType: number, n: number): KeptHandle {
    this.need(n, 'handle');
    const h = keepHandleFrom(mountId, handleType, this.b, this.at, n);
    this.at += n;
    return h;
  }
  end(): void {
    if (this.at !== this.b.length) throw new RecordDecodeError(`${this.b.length - this.at} stray bytes after the record`);
  }
}

function readMutation(r: Reader): FsMutation {
  const code = r.u8('mutation kind');
  const op = MUTATION_KINDS[code];
  switch (op) {
    case 'addInode':
      return { op, nodeid: r.uint('nodeid'), dev: r.u64('dev'), ino: r.u64('ino'), generation: r.u32('generation'), fileType: r.u32('fileType') };
    case 'addInodeHandle': {
      const nodeid = r.uint('nodeid'), dev = r.u64('dev'), ino = r.u64('ino'), generation = r.u32('generation'), fileType = r.u32('fileType');
      const mountId = r.u64('mountId');
      if (mountId > MAX_SAFE_U64) throw new RecordDecodeError('mount id out of range');
      const handleType = r.i32('handleType');
      const len = r.u8('handle length');
      if (len === 0 || len > MAX_HANDLE_BYTES) throw new RecordDecodeError(`file handle of ${len} bytes`);
      return { op: 'addInode', nodeid, dev, ino, generation, fileType, handle: r.handle(Number(mountId), handleType, len) };
    }
    case 'addLookup':
    case 'forget':
      return { op, nodeid: r.uint('nodeid'), count: r.uint('count') };
    case 'openFile': {
      const fh = r.uint('fh');
      const nodeid = r.uint('nodeid');
      const flags = r.f64('flags');
      if (!Number.isInteger(flags)) throw new RecordDecodeError('open flags are not an integer');
      return { op, fh, nodeid, flags };
    }
    case 'openDir':
      return { op, fh: r.uint('fh'), nodeid: r.uint('nodeid') };
    case 'closeFile':
    case 'closeDir':
      return { op, fh: r.uint('fh') };
    case 'setDirPosition':
      return { op, fh: r.uint('fh'), position: r.str('position') };
    case 'reset':
      return { op };
    case 'openLockOwner':
      return { op, id: r.uint('id'), nodeid: r.uint('nodeid'), fh: r.uint('fh'), owner: r.u64('owner'), pid: r.u32('pid') };
    case 'closeLockOwner':
      return { op, id: r.uint('id') };
    default:
      throw new UnknownRecordError(`unknown mutation kind ${code}`);
  }
}

/** Decodes one schema-2 payload. Throws RecordDecodeError on anything malformed. */
export function decodePayload(payload: Buffer): DecodedRecord {
  const r = new Reader(payload);
  const tag = r.u8('tag');
  let out: DecodedRecord;
  switch (tag) {
    case TAG_GENERIC:
      try {
        return { t: 'generic', value: decodeRecord(payload.subarray(1)) };
      } catch (e) {
        throw new RecordDecodeError(`msgpack: ${(e as Error).message}`);
      }
    case TAG_INTENT: {
      const key = r.str('key');
      const opcode = r.u32('opcode');
      const tsMs = r.f64('timestamp');
      if (!Number.isFinite(tsMs) || tsMs < 0) throw new RecordDecodeError('bad intent timestamp');
      const n = r.u32('extra length');
      let extra: unknown = null;
      if (n > 0) {
        try {
          extra = decodeRecord(Buffer.from(r.bytes(n, 'extra')));
        } catch (e) {
          throw new RecordDecodeError(`intent extra: ${(e as Error).message}`);
        }
      }
      out = { t: 'intent', key, opcode, tsMs, extra };
      break;
    }
    case TAG_OUTCOME: {
      const key = r.str('key');
      const opcode = r.u32('opcode');
      const reply = r.bytes(r.u32('reply length'), 'reply');
      const count = r.u32('mutation count');
      if (count > payload.length) throw new RecordDecodeError(`mutation count ${count} larger than the record`);
      const mutations: FsMutation[] = [];
      for (let i = 0; i < count; i++) mutations.push(readMutation(r));
      out = { t: 'outcome', key, opcode, reply, mutations };
      break;
    }
    case TAG_MUTATION:
      out = { t: 'mutation', m: readMutation(r) };
      break;
    case TAG_DEATH:
      out = { t: 'death', key: r.str('key') };
      break;
    case TAG_LOOKUPS: {
      const queue = r.u16('queue');
      const count = r.u16('lookup count');
      if (count === 0) throw new RecordDecodeError('lookups record without lookups');
      const lookups: DecodedLookup[] = [];
      for (let i = 0; i < count; i++) {
        const head = r.u16('head');
        const counter = r.u64('counter');
        const reply = r.bytes(r.u16('reply length'), 'reply');
        if (reply.length < REPLY_NODEID_AT + 8) throw new RecordDecodeError(`LOOKUP reply of ${reply.length} bytes names no nodeid`);
        const nodeid = reply.readBigUInt64LE(REPLY_NODEID_AT);
        if (nodeid === 0n || nodeid > BigInt(Number.MAX_SAFE_INTEGER)) throw new RecordDecodeError('LOOKUP reply nodeid out of range');
        lookups.push({ key: requestKey(queue, head, counter), reply, nodeid: Number(nodeid) });
      }
      out = { t: 'lookups', lookups };
      break;
    }
    default:
      throw new UnknownRecordError(`unknown record tag ${tag}`);
  }
  r.end();
  return out;
}

// ---------------------------------------------------------------- msgpack records and validators

/** The session-wide msgpack records (state_store.ts): the snapshot a journal starts with (and
 * that compaction writes), and the FUSE INIT result. Schema 1 also wrote 'op', 'op-done',
 * 'op-death' and 'fs' records as msgpack (the binary forms above are their schema-2 forms). */
export type SessionRecord =
  | {
    t: 'snapshot'; vhost: VhostSessionState | null; init: InitResult | null; fs: SessionSnapshot | CompactSessionSnapshot | null;
    ctlSeq: number; pending: PendingRec | null; ops?: Array<[string, OpRecord]>;
  }
  | { t: 'init'; init: InitResult | null };

/** Every record written as msgpack (TAG_GENERIC). */
export type GenericRecord = SessionRecord | ControlRecord;

/** Request keys are `${queue}.${head}.${counter}` (older journals added the unique). */
const MAX_KEY_LENGTH = 200;
const isKey = (v: unknown): v is string => typeof v === 'string' && v.length <= MAX_KEY_LENGTH;

export function checkInit(p: string, v: unknown): InitResult | null {
  if (v === null) return null;
  if (!isObj(v) || v.major !== 7 || !isUint(v.minor, 1000) || !isBig(v.flags) || !isUint(v.maxReadahead, 0xffffffff) ||
    !isUint(v.maxWrite, 0xffffffff) || !isUint(v.maxPages, 0xffff)) {
    fail(p, 'FUSE init result');
  }
  return v as unknown as InitResult;
}

/** A snapshot's entry for one journaled request. */
export function checkOp(p: string, v: unknown): OpRecord {
  if (!isObj(v) || !isUint(v.opcode, 0xffffffff) || typeof v.ts !== 'bigint' || !(v.reply === null || Buffer.isBuffer(v.reply)) || !isUint(v.deaths, 1000)) {
    fail(p, 'op record');
  }
  return { opcode: v.opcode, ts: v.ts, extra: v.extra ?? null, reply: v.reply as Buffer | null, deaths: v.deaths };
}

/** A request's intent as the loader folds it (schema 1's 'op' shape). */
export function checkIntentRecord(p: string, r: Record<string, unknown>): { k: string; opcode: number; ts: bigint; x: unknown } {
  if (!isKey(r.k) || !isUint(r.opcode, 0xffffffff) || typeof r.ts !== 'bigint') fail(p, 'op intent');
  return { k: r.k, opcode: r.opcode, ts: r.ts, x: r.x ?? null };
}

/** A request's outcome as the loader folds it (schema 1's 'op-done' shape; `opcode` and `muts`
 * are checked by the fold, where they are used). */
export function checkOutcomeRecord(p: string, r: Record<string, unknown>): { k: string; r: Buffer } {
  if (!isKey(r.k) || !Buffer.isBuffer(r.r)) fail(p, 'op outcome');
  return { k: r.k, r: r.r };
}

export function checkDeathRecord(p: string, r: Record<string, unknown>): string {
  if (!isKey(r.k)) fail(p, 'op death record');
  return r.k;
}
