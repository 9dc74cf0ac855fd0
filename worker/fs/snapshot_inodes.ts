// The inode rows of a loaded compact session snapshot (session.ts, versions 2 and 3), kept as
// the snapshot's bytes and decoded into records only when the session first uses one.
//
// Why: a successor resuming a 100,000-inode session spent 120-190 ms building 100,000 record
// objects and two bigint-keyed maps before it could serve a request, most of which the guest
// never touches again. Here loading is one validating pass over the rows with no allocation per
// row: the checks fromSnapshot made (ids, ranges, file types, lookup counts, duplicate nodeids
// and (dev, ino), the handle side table), a nodeid order for binary search, and an
// open-addressing (dev, ino) index in a typed array.
//
// The writer (FsSession.toCompactSnapshot) writes rows in ascending nodeid order, and always
// has (its map's insertion order was nodeid order), so no format change is involved. A table
// that is not in that order (never written by us, but the file is untrusted) is loaded eagerly
// by the older path instead: `scan` returns null.
import { handleOver } from './handle_bytes';
import { FsSessionError, MAX_HANDLE_BYTES, type InodeHandle } from './session_base';

export const INODE_ROW = 40;
export const HANDLE_ROW_HEAD = 8 + 8 + 4 + 1;
/** S_IF* file types (the S_IFMT bits of st_mode); fixed by Linux. */
export const VALID_FILE_TYPES = new Set([0o140000, 0o120000, 0o100000, 0o060000, 0o040000, 0o020000, 0o010000]);
const ROOT = 1;
const ROW_WORDS = INODE_ROW / 4;
const ROW_F64 = INODE_ROW / 8;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
/** A (dev, ino) key as words, without allocating per lookup. */
const KEY64 = new BigUint64Array(2);
const KEY32 = new Uint32Array(KEY64.buffer);

/** One decoded row. */
export interface SnapshotRow {
  nodeid: number; dev: bigint; ino: bigint; generation: number; fileType: number; lookupCount: number;
  handle: InodeHandle | null;
}

export class SnapshotInodes {
  /** Rows not yet decoded into the session (and not dropped with it). */
  live: number;
  /** Of those, the rows with a handle. */
  liveHandles: number;
  private readonly taken: Uint8Array;

  private constructor(
    private readonly table: Buffer,
    /** The same bytes as f64 and u32 words (an aligned copy; the host is little-endian). */
    private readonly f64: Float64Array,
    private readonly u32: Uint32Array,
    private readonly handles: Buffer,
    /** Per row: offset of its handle row in `handles`, or -1. */
    private readonly handleAt: Int32Array,
    /** (dev, ino) → 1 + the newest row with that number; 0 = empty slot. */
    private readonly index: Int32Array,
    readonly rows: number,
    handleRows: number,
  ) {
    this.live = rows;
    this.liveHandles = handleRows;
    this.taken = new Uint8Array(rows);
  }

  /** Validates a compact snapshot's inode table (and handle side table, version 3) without
   * decoding it. Throws FsSessionError as the eager path does; null: not in nodeid order, for
   * the eager path to load. */
  static scan(tableIn: Uint8Array, handlesIn: Uint8Array | null, nextNodeId: number): SnapshotInodes | null {
    if (tableIn.length % INODE_ROW !== 0) throw new FsSessionError('inodeTable: not a whole number of rows');
    if (!LITTLE_ENDIAN) return null;
    // An aligned copy, read through typed arrays: Buffer's readers cost most of a row otherwise.
    const words = new ArrayBuffer(tableIn.byteLength);
    const table = Buffer.from(words);
    table.set(tableIn);
    const f64 = new Float64Array(words);
    const u32 = new Uint32Array(words);
    const handles = handlesIn === null ? Buffer.alloc(0) : Buffer.from(handlesIn.buffer, handlesIn.byteOffset, handlesIn.byteLength);
    const rows = table.length / INODE_ROW;
    // The handle table: every row well-formed, nodeids ascending (else: eager path).
    // (Messages are built only on failure: a string per row would be most of the cost.)
    const most = Math.floor(handles.length / (HANDLE_ROW_HEAD + 1));
    const hNode = new Float64Array(most);
    const hOff = new Int32Array(most);
    let nh = 0;
    for (let at = 0; at < handles.length; nh++) {
      if (at + HANDLE_ROW_HEAD > handles.length) throw new FsSessionError(`inodeHandles[${nh}]: cut off`);
      const nodeid = handles.readDoubleLE(at);
      if (!isId(nodeid, 2)) throw badId(nodeid, `inodeHandles[${nh}].nodeid`, 2);
      if (nodeid >= nextNodeId) throw new FsSessionError(`inodeHandles[${nh}].nodeid ${nodeid} >= nextNodeId ${nextNodeId}`);
      if (nh > 0 && nodeid <= hNode[nh - 1]!) return null;
      // mountId <= 2^53 - 1: its high half below 2^21.
      if (handles.readUInt32LE(at + 12) >= 0x200000) throw new FsSessionError(`inodeHandles[${nh}].mountId out of range`);
      const len = handles[at + 20]!;
      if (len === 0 || len > MAX_HANDLE_BYTES || at + HANDLE_ROW_HEAD + len > handles.length) throw new FsSessionError(`inodeHandles[${nh}]: bad handle length ${len}`);
      hNode[nh] = nodeid;
      hOff[nh] = at;
      at += HANDLE_ROW_HEAD + len;
    }
    const handleAt = new Int32Array(rows).fill(-1);
    let size = 16;
    while (size < rows * 2) size *= 2;
    const index = new Int32Array(size);
    const mask = size - 1;
    let prev = 0;
    let h = 0;
    let orphan: number | null = null;
    for (let row = 0; row < rows; row++) {
      const w = row * ROW_WORDS;
      const nodeid = f64[row * ROW_F64]!;
      if (!isId(nodeid, 1)) throw badId(nodeid, `inodeTable[${row}].nodeid`, 1);
      if (nodeid >= nextNodeId) throw new FsSessionError(`inodeTable[${row}].nodeid ${nodeid} >= nextNodeId ${nextNodeId}`);
      if (nodeid <= prev) return null;
      prev = nodeid;
      const fileType = u32[w + 7]!;
      if (!isFileType(fileType)) throw new FsSessionError(`inodeTable[${row}].fileType: not a file type: ${fileType}`);
      const lookups = f64[row * ROW_F64 + 4]!;
      if (!isId(lookups, nodeid === ROOT ? 0 : 1)) throw badId(lookups, `inodeTable[${row}].lookupCount`, nodeid === ROOT ? 0 : 1);
      // A handle whose row is missing (reported once the rows are known to be in order).
      while (h < nh && hNode[h]! < nodeid) {
        orphan ??= hNode[h]!;
        h++;
      }
      if (h < nh && hNode[h] === nodeid) handleAt[row] = hOff[h++]!;
      // (dev, ino) index: the newest (last) row with a number owns it.
      let slot = hashKey(u32[w + 2]!, u32[w + 3]!, u32[w + 4]!, u32[w + 5]!) & mask;
      for (;;) {
        const e = index[slot]!;
        if (e === 0) {
          index[slot] = row + 1;
          break;
        }
        if (sameNumber(u32, (e - 1) * ROW_WORDS, w)) {
          // As session.ts mayShareNumber: refused only when neither has a handle.
          if (handleAt[e - 1] === -1 && handleAt[row] === -1) {
            throw new FsSessionError(`inodeTable[${row}]: duplicate (dev, ino) (${table.readBigUInt64LE(row * INODE_ROW + 8)}, ${table.readBigUInt64LE(row * INODE_ROW + 16)})`);
          }
          index[slot] = row + 1;
          break;
        }
        slot = (slot + 1) & mask;
      }
    }
    if (orphan !== null) throw new FsSessionError(`inodeHandles: a handle for nodeid ${orphan} that has no inode`);
    if (h < nh) throw new FsSessionError(`inodeHandles: a handle for nodeid ${hNode[h]} that has no inode`);
    if (rows === 0 || table.readDoubleLE(0) !== ROOT) throw new FsSessionError('snapshot has no root inode (nodeid 1)');
    if (handleAt[0] !== -1) throw new FsSessionError('inodeTable[0]: the root has a handle');
    if (table.readUInt32LE(28) !== 0o040000) throw new FsSessionError('root inode is not a directory');
    return new SnapshotInodes(table, f64, u32, handles, handleAt, index, rows, nh);
  }

  /** The row of nodeid if it is still undecoded, else -1. */
  rowOf(nodeid: number): number {
    let lo = 0;
    let hi = this.rows - 1;
    const f = this.f64;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const n = f[mid * ROW_F64]!;
      if (n === nodeid) return this.taken[mid] === 0 ? mid : -1;
      if (n < nodeid) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  /** The undecoded row that owns (dev, ino), else -1 (none, or it was decoded: the session's
   * own index has it, or it was dropped). */
  rowOfNumber(dev: bigint, ino: bigint): number {
    KEY64[0] = dev;
    KEY64[1] = ino;
    const u = this.u32;
    const mask = this.index.length - 1;
    let slot = hashKey(KEY32[0]!, KEY32[1]!, KEY32[2]!, KEY32[3]!) & mask;
    for (;;) {
      const e = this.index[slot]!;
      if (e === 0) return -1;
      const w = (e - 1) * ROW_WORDS;
      if (u[w + 4] === KEY32[2] && u[w + 2] === KEY32[0] && u[w + 5] === KEY32[3] && u[w + 3] === KEY32[1]) return this.taken[e - 1] === 0 ? e - 1 : -1;
      slot = (slot + 1) & mask;
    }
  }

  /** Whether row owns its (dev, ino) in the snapshot (it is the newest row with that number). */
  ownsNumber(row: number): boolean {
    const u = this.u32;
    const w = row * ROW_WORDS;
    const mask = this.index.length - 1;
    let slot = hashKey(u[w + 2]!, u[w + 3]!, u[w + 4]!, u[w + 5]!) & mask;
    for (;;) {
      const e = this.index[slot]!;
      if (e === 0) return false;
      if (sameNumber(u, (e - 1) * ROW_WORDS, w)) return e - 1 === row;
      slot = (slot + 1) & mask;
    }
  }

  nodeidAt(row: number): number {
    return this.f64[row * ROW_F64]!;
  }

  hasHandle(row: number): boolean {
    return this.handleAt[row] !== -1;
  }

  isTaken(row: number): boolean {
    return this.taken[row] !== 0;
  }

  /** Decodes a row for the session, which owns it from now on. */
  take(row: number): SnapshotRow {
    if (this.taken[row] !== 0) throw new Error(`snapshot row ${row} taken twice`);
    this.taken[row] = 1;
    this.live--;
    const t = this.table;
    const at = row * INODE_ROW;
    const ho = this.handleAt[row]!;
    let handle: InodeHandle | null = null;
    if (ho !== -1) {
      this.liveHandles--;
      const b = this.handles;
      const len = b[ho + 20]!;
      // A view, not a copy: the table stays alive as long as its handles.
      handle = handleOver(Number(b.readBigUInt64LE(ho + 8)), b.readInt32LE(ho + 16), b, ho + HANDLE_ROW_HEAD, len);
    }
    return {
      nodeid: t.readDoubleLE(at), dev: t.readBigUInt64LE(at + 8), ino: t.readBigUInt64LE(at + 16),
      generation: t.readUInt32LE(at + 24), fileType: t.readUInt32LE(at + 28), lookupCount: t.readDoubleLE(at + 32), handle,
    };
  }

  /** The undecoded rows' bytes, in order, for a snapshot: `row` is called for each. */
  forEachLive(row: (r: number) => void): void {
    for (let r = 0; r < this.rows; r++) if (this.taken[r] === 0) row(r);
  }

  copyRow(r: number, out: Buffer, at: number): number {
    return at + this.table.copy(out, at, r * INODE_ROW, (r + 1) * INODE_ROW);
  }

  /** Size of row r's entry in the handle side table (0: none). */
  handleRowSize(r: number): number {
    const ho = this.handleAt[r]!;
    return ho === -1 ? 0 : HANDLE_ROW_HEAD + this.handles[ho + 20]!;
  }

  copyHandleRow(r: number, out: Buffer, at: number): number {
    const ho = this.handleAt[r]!;
    return at + this.handles.copy(out, at, ho, ho + HANDLE_ROW_HEAD + this.handles[ho + 20]!);
  }
}

/** murmur3's finalizer. */
function fmix(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/** (dev lo, dev hi, ino lo, ino hi) → 32 bits. */
function hashKey(a: number, b: number, c: number, d: number): number {
  return fmix(c ^ fmix(d ^ fmix(a ^ Math.imul(b, 0x9e3779b1)))) >>> 0;
}

/** Rows at word offsets a and b have the same (dev, ino). */
function sameNumber(u: Uint32Array, a: number, b: number): boolean {
  return u[a + 4] === u[b + 4] && u[a + 2] === u[b + 2] && u[a + 5] === u[b + 5] && u[a + 3] === u[b + 3];
}

const isId = (v: number, min: number): boolean => Number.isSafeInteger(v) && v >= min;

function badId(v: number, where: string, min: number): FsSessionError {
  return new FsSessionError(`${where}: expected an integer >= ${min}, got ${describe(v)}`);
}

/** VALID_FILE_TYPES without a set lookup: S_IFMT bits, one of 1, 2, 4, 6, 8, 10, 12 << 12. */
function isFileType(v: number): boolean {
  const k = v >>> 12;
  return (v & 0xfff) === 0 && v === (v >>> 0) && (k === 1 || k === 2 || k === 4 || k === 6 || k === 8 || k === 10 || k === 12);
}

function describe(v: number): string {
  return JSON.stringify(v) ?? String(v);
}
