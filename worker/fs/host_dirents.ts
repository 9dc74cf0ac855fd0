// linux_dirent64 parsing (getdents64(2) output), with bounds checks:
//   struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
// d_name is NUL-terminated inside the record; records are 8-byte aligned.
import { FsError } from './filesystem';
import { EIO } from './host_constants';

export const DIRENT64_HEADER = 19;

/** One record of a getdents64 result, read in place in its batch's `bytes` (the record at
 * `at`: d_ino at at, d_off at at + 8, d_type at at + 18, the name at nameAt, NUL-terminated).
 * Fields that cost an allocation (the views, the bigint) are made only when asked for: a long
 * listing reads most entries through the offsets alone (DirentWriter.addRaw). */
export class Dirent {
  constructor(readonly bytes: Buffer, readonly at: number, readonly nameAt: number,
    readonly nameLength: number, readonly type: number) {}

  /** 8 bytes, little-endian u64 (a view on the batch's copy, not on the getdents buffer). */
  get ino(): Buffer { return this.bytes.subarray(this.at, this.at + 8); }
  /** The cookie to seek to for the entry after this one. */
  get off(): bigint { return this.bytes.readBigInt64LE(this.at + 8); }
  /** Raw name bytes (likewise a view). */
  get name(): Buffer { return this.bytes.subarray(this.nameAt, this.nameAt + this.nameLength); }
  get isDot(): boolean { return this.nameLength === 1 && this.bytes[this.nameAt] === 0x2e; }
  get isDotDot(): boolean {
    return this.nameLength === 2 && this.bytes[this.nameAt] === 0x2e && this.bytes[this.nameAt + 1] === 0x2e;
  }
}

/** One getdents64 result: the entries and the copy of the bytes they are read from. */
export interface DirentBatch {
  bytes: Buffer;
  entries: Dirent[];
}

/** Parses `length` bytes of getdents64 output. Throws FsError(EIO) on a malformed record (the
 * kernel never produces one; this guards against a wrong length or a buffer mix-up). The
 * entries' ino and name are views on one copy of those bytes (the caller reuses `buf` for the
 * next getdents64): one allocation per call instead of two per entry. */
export function parseDirents(buf: Buffer, length: number): Dirent[] {
  return parseDirentBatch(buf, length).entries;
}

/** parseDirents, also giving the copy the entries are views on (for fstatatDirents). */
export function parseDirentBatch(buf: Buffer, length: number): DirentBatch {
  if (!Number.isInteger(length) || length < 0 || length > buf.length) {
    throw new FsError(EIO, `getdents64 length ${length} outside buffer of ${buf.length}`);
  }
  const out: Dirent[] = [];
  if (length === 0) return { bytes: Buffer.alloc(0), entries: out };
  buf = Buffer.from(buf.subarray(0, length));
  let pos = 0;
  while (pos < length) {
    if (length - pos < DIRENT64_HEADER) throw new FsError(EIO, `truncated dirent header at ${pos}`);
    const reclen = buf.readUInt16LE(pos + 16);
    if (reclen < DIRENT64_HEADER + 1 || reclen > length - pos) {
      throw new FsError(EIO, `bad dirent reclen ${reclen} at ${pos}`);
    }
    const nameStart = pos + DIRENT64_HEADER;
    const recEnd = pos + reclen;
    let nameEnd = nameStart;
    while (nameEnd < recEnd && buf[nameEnd] !== 0) nameEnd++;
    if (nameEnd === nameStart || nameEnd >= recEnd) {
      throw new FsError(EIO, `bad dirent name at ${pos}`);
    }
    out.push(new Dirent(buf, pos, nameStart, nameEnd - nameStart, buf[pos + 18]!));
    pos += reclen;
  }
  return { bytes: buf, entries: out };
}
