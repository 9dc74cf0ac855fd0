// READDIR / READDIRPLUS reply builder.
//
// Wire format (fuse.h): a sequence of records, each padded to 8 bytes (FUSE_DIRENT_ALIGN):
//   READDIR:     struct fuse_dirent { u64 ino; u64 off; u32 namelen; u32 type; char name[]; }
//   READDIRPLUS: struct fuse_entry_out (128 bytes) then the fuse_dirent above.
// `off` is the offset the kernel passes back in the next READDIR to continue *after* this entry.
// The kernel stops at the first record that does not fit its buffer, so the reply must hold only
// whole records and never more than the READDIR's `size` bytes.
import type { DirSink, Entry } from '../fs/filesystem';
import * as K from './constants';
import { writeEntryOut } from './encode';

const U64_MAX = (1n << 64n) - 1n;

/** First allocation when the caller gives no buffer; grows by doubling up to maxBytes, so a
 * hostile READDIR size (up to 4 GiB) costs nothing until entries actually fill it. */
const INITIAL_CAPACITY = 4096;

export class DirentWriter implements DirSink {
  private buf: Buffer;
  private used = 0;
  private records = 0;
  private readonly growable: boolean;
  readonly maxBytes: number;

  /**
   * @param maxBytes the READDIR request's `size`: the reply payload may not exceed it.
   * @param plus READDIRPLUS records (entry_out before each dirent).
   * @param target optional buffer to write into directly (e.g. a reusable one); maxBytes is then
   *   capped at its length and it is never reallocated.
   */
  constructor(maxBytes: number, readonly plus: boolean, target?: Buffer) {
    if (!(Number.isInteger(maxBytes) && maxBytes >= 0)) throw new RangeError(`bad maxBytes ${maxBytes}`);
    if (target !== undefined) {
      this.maxBytes = Math.min(maxBytes, target.length);
      this.buf = target;
      this.growable = false;
    } else {
      this.maxBytes = maxBytes;
      this.buf = Buffer.alloc(Math.min(maxBytes, INITIAL_CAPACITY));
      this.growable = true;
    }
  }

  /** Bytes of the reply payload written so far. */
  get length(): number { return this.used; }

  /** Records written so far. */
  get count(): number { return this.records; }

  /** Bytes the reply can still take. */
  spaceLeft(): number { return this.maxBytes - this.used; }

  /** The size one record for `nameLength` bytes of name takes, padding included. */
  recordSize(nameLength: number): number {
    return K.fuseDirentAlign((this.plus ? K.DIRENTPLUS_NAME_OFFSET : K.DIRENT_NAME_OFFSET) + nameLength);
  }

  /**
   * Appends one record. Returns false, writing nothing, when it would take the reply past
   * maxBytes (the caller stops there; for READDIRPLUS it must also undo that entry's lookup).
   * In plus mode a null `entry` writes an all-zero entry_out: nodeid 0 tells the kernel to list
   * the name without instantiating an inode. `type` is a DT_* value ((mode & S_IFMT) >> 12).
   * Throws RangeError for a name the kernel would reject (empty or longer than FUSE_NAME_MAX),
   * an `ino` that is not 8 bytes or a `nextOffset` outside u64: those are bugs in our filesystem
   * layer, not guest input.
   */
  add(name: Buffer, ino: Buffer, type: number, nextOffset: bigint, entry: Entry | null): boolean {
    if (name.length === 0 || name.length > K.FUSE_NAME_MAX) throw new RangeError(`bad dirent name length ${name.length}`);
    if (ino.length !== 8) throw new RangeError(`ino must be 8 bytes, got ${ino.length}`);
    if (typeof nextOffset !== 'bigint' || nextOffset < 0n || nextOffset > U64_MAX) {
      throw new RangeError(`dirent offset ${String(nextOffset)} is not a u64`);
    }
    const at = this.reserve(name.length, entry);
    if (at < 0) return false;
    this.buf.writeUInt32LE(ino.readUInt32LE(0), at);
    this.buf.writeUInt32LE(ino.readUInt32LE(4), at + 4);
    this.buf.writeBigUInt64LE(nextOffset, at + 8);
    this.finish(at, name, 0, name.length, type);
    return true;
  }

  /**
   * add() of a getdents64 record read in place (no view or bigint per entry): d_ino and d_off
   * are the 16 bytes at `src[recordAt]` (d_off's s64 bits are the u64 cookie the guest gets), the
   * name the `nameLength` bytes at `src[nameAt]`. Throws RangeError like add() for a bad name
   * length, and for offsets outside `src`.
   */
  addRaw(src: Buffer, recordAt: number, nameAt: number, nameLength: number, type: number, entry: Entry | null): boolean {
    if (nameLength <= 0 || nameLength > K.FUSE_NAME_MAX) throw new RangeError(`bad dirent name length ${nameLength}`);
    if (!(recordAt >= 0 && recordAt + 16 <= src.length && nameAt >= 0 && nameAt + nameLength <= src.length)) {
      throw new RangeError(`dirent record outside its buffer of ${src.length}`);
    }
    const at = this.reserve(nameLength, entry);
    if (at < 0) return false;
    src.copy(this.buf, at, recordAt, recordAt + 16);
    this.finish(at, src, nameAt, nameLength, type);
    return true;
  }

  /** Room for one record (its entry_out written in plus mode): the dirent's position, or -1
   * when the record would take the reply past maxBytes. */
  private reserve(nameLength: number, entry: Entry | null): number {
    const size = this.recordSize(nameLength);
    if (this.used + size > this.maxBytes) return -1;
    this.ensureCapacity(this.used + size);
    const start = this.used;
    let dirent = start;
    if (this.plus) {
      // A null entry_out must be zeros; a real one is written whole.
      if (entry !== null) writeEntryOut(entry, this.buf, start);
      else this.buf.fill(0, start, start + K.ENTRY_OUT_SIZE);
      dirent += K.ENTRY_OUT_SIZE;
    }
    // The padding after the name must be zeros: it lies in the last 8-byte word of the record,
    // zeroed before the name is copied over its start.
    this.buf.writeUInt32LE(0, start + size - 8);
    this.buf.writeUInt32LE(0, start + size - 4);
    return dirent;
  }

  /** The dirent's namelen, type and name (ino and off are written); counts the record. */
  private finish(dirent: number, src: Buffer, nameAt: number, nameLength: number, type: number): void {
    this.buf.writeUInt32LE(nameLength, dirent + 16);
    this.buf.writeUInt32LE(type, dirent + 20);
    src.copy(this.buf, dirent + K.DIRENT_NAME_OFFSET, nameAt, nameAt + nameLength);
    this.used += this.recordSize(nameLength);
    this.records += 1;
  }

  /** The records written so far: a view, not a copy. */
  bytes(): Buffer {
    return this.buf.subarray(0, this.used);
  }

  private ensureCapacity(needed: number): void {
    if (needed <= this.buf.length) return;
    if (!this.growable) throw new RangeError('target buffer too small'); // unreachable: maxBytes <= target.length
    let capacity = Math.max(this.buf.length, 64);
    while (capacity < needed) capacity *= 2;
    const grown = Buffer.alloc(Math.min(capacity, this.maxBytes));
    this.buf.copy(grown, 0, 0, this.used);
    this.buf = grown;
  }
}
