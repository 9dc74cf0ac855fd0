// linux_dirent64 parsing (getdents64(2) output), with bounds checks:
//   struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
// d_name is NUL-terminated inside the record; records are 8-byte aligned.
import { FsError } from './filesystem';
import { EIO } from './host_constants';

export const DIRENT64_HEADER = 19;

export interface Dirent {
  /** 8 bytes, little-endian u64 (not a view on the getdents buffer: see parseDirents). */
  ino: Buffer;
  /** The cookie to seek to for the entry after this one. */
  off: bigint;
  type: number;
  /** Raw name bytes (likewise). */
  name: Buffer;
}

/** Parses `length` bytes of getdents64 output. Throws FsError(EIO) on a malformed record (the
 * kernel never produces one; this guards against a wrong length or a buffer mix-up). The
 * entries' ino and name are views on one copy of those bytes (the caller reuses `buf` for the
 * next getdents64): one allocation per call instead of two per entry. */
export function parseDirents(buf: Buffer, length: number): Dirent[] {
  if (!Number.isInteger(length) || length < 0 || length > buf.length) {
    throw new FsError(EIO, `getdents64 length ${length} outside buffer of ${buf.length}`);
  }
  const out: Dirent[] = [];
  if (length === 0) return out;
  buf = Buffer.from(buf.subarray(0, length));
  let pos = 0;
  while (pos < length) {
    if (length - pos < DIRENT64_HEADER) throw new FsError(EIO, `truncated dirent header at ${pos}`);
    const reclen = buf.readUInt16LE(pos + 16);
    if (reclen < DIRENT64_HEADER + 1 || reclen > length - pos) {
      throw new FsError(EIO, `bad dirent reclen ${reclen} at ${pos}`);
    }
    const nameStart = pos + DIRENT64_HEADER;
    const nameEnd = buf.indexOf(0, nameStart);
    if (nameEnd <= nameStart || nameEnd >= pos + reclen) {
      throw new FsError(EIO, `bad dirent name at ${pos}`);
    }
    out.push({
      ino: buf.subarray(pos, pos + 8),
      off: buf.readBigInt64LE(pos + 8),
      type: buf[pos + 18]!,
      name: buf.subarray(nameStart, nameEnd),
    });
    pos += reclen;
  }
  return out;
}
