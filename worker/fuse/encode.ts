// Reply encoders: our own values → FUSE 7.38 reply structs (little-endian), per
// /usr/include/linux/fuse.h. Inputs come from our filesystem layer, not from the guest, so a bad
// input here is a bug in our code and throws RangeError rather than FuseProtocolError.
//
// Each encoder writes one struct. It allocates a zeroed Buffer of the struct's size, or, when a
// `buf` is passed, writes into `buf` at `offset` (zeroing the struct's bytes first, so padding
// never leaks stale memory to the guest); either way it returns the struct's bytes as a view.
// The out-header is separate (encodeOutHeader / replyHeader), so a server can place header and
// payload into guest memory as two iovecs without copying them together first.
import type { AttrReply, Entry, LockRange, OpenReply } from '../fs/filesystem';
import type { STAT as NATIVE_STAT, StatFs } from '../../shared/native';
import * as K from './constants';

/** Offsets in the 128-byte stat buffers the filesystem returns. A copy of shared/native.ts STAT
 * so that this pure module does not load the addon; its declared type is the native constant's
 * literal type, so the compiler rejects any drift between the two. */
export const STAT_LAYOUT: typeof NATIVE_STAT = {
  dev: 0, ino: 8, mode: 16, nlink: 24, uid: 32, gid: 40, rdev: 48, size: 56, blksize: 64,
  blocks: 72, atime: 80, atimeNsec: 88, mtime: 96, mtimeNsec: 104, ctime: 112, ctimeNsec: 120,
  SIZE: 128,
} as const;

const TWO_POW_32 = 0x1_0000_0000;
const MAX_ERRNO = 4095;

/** Writes a non-negative integer as a u64; exact up to 2^53-1, beyond that as the double's exact
 * value (a file offset from lseek on a huge sparse file, say). */
export function writeU64(buf: Buffer, offset: number, value: number): void {
  if (!(value >= 0 && Number.isInteger(value) && value < 2 ** 64)) {
    throw new RangeError(`u64 field out of range: ${value}`);
  }
  if (value <= Number.MAX_SAFE_INTEGER) {
    buf.writeUInt32LE(value % TWO_POW_32, offset);
    buf.writeUInt32LE(Math.floor(value / TWO_POW_32), offset + 4);
  } else {
    buf.writeBigUInt64LE(BigInt(value), offset);
  }
}

/** The struct's bytes in `buf` at `offset` (zeroed), or a fresh zeroed Buffer. */
function structAt(size: number, buf: Buffer | undefined, offset: number): Buffer {
  if (buf === undefined) return Buffer.alloc(size);
  if (!(Number.isInteger(offset) && offset >= 0 && offset + size <= buf.length)) {
    throw new RangeError(`no room for a ${size}-byte struct at offset ${offset} of ${buf.length}`);
  }
  return buf.fill(0, offset, offset + size).subarray(offset, offset + size);
}

// ---------------------------------------------------------------------------------------------
// Out-header

/** struct fuse_out_header: `len` is the whole reply including these 16 bytes; `error` is 0 or a
 * negative errno, written as given. */
export function encodeOutHeader(buf: Buffer, offset: number, len: number, error: number, unique: bigint): void {
  buf.writeUInt32LE(len, offset);
  buf.writeInt32LE(error, offset + 4);
  buf.writeBigUInt64LE(unique, offset + 8);
}

/** The 16-byte header of a successful reply whose payload (written separately) is
 * `payloadLength` bytes. */
export function replyHeader(unique: bigint, payloadLength: number): Buffer {
  const out = Buffer.alloc(K.OUT_HEADER_SIZE);
  encodeOutHeader(out, 0, K.OUT_HEADER_SIZE + payloadLength, 0, unique);
  return out;
}

/** A whole successful reply: header + a copy of `payload` (for small payloads). */
export function okReply(unique: bigint, payload: Buffer | null = null): Buffer {
  const length = payload === null ? 0 : payload.length;
  const out = Buffer.alloc(K.OUT_HEADER_SIZE + length);
  encodeOutHeader(out, 0, out.length, 0, unique);
  if (payload !== null) payload.copy(out, K.OUT_HEADER_SIZE);
  return out;
}

/** A 16-byte error reply with error = -errno. The kernel turns anything outside 1..4095 into
 * EIO anyway, so such an errno (a bug upstream) is sent as EIO explicitly. */
export function errorReply(unique: bigint, errno: number): Buffer {
  const code = Number.isInteger(errno) && errno >= 1 && errno <= MAX_ERRNO ? errno : 5 /* EIO */;
  const out = Buffer.alloc(K.OUT_HEADER_SIZE);
  encodeOutHeader(out, 0, K.OUT_HEADER_SIZE, -code, unique);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Attributes and entries

/** Splits a cache timeout in (possibly fractional) seconds into the wire's seconds + nsec.
 * Negative, NaN and zero mean "don't cache" (0, 0); Infinity and absurdly large values are capped
 * at 2^53-1 seconds, which the kernel treats as "forever" (it caps at MAX_JIFFY_OFFSET), while
 * staying a positive i64 (the kernel reads the u64 as time64_t). */
export function splitTimeout(seconds: number): { sec: number; nsec: number } {
  // Every reply of a session carries the same timeout: split it once.
  if (seconds === lastTimeout) return lastSplit;
  const r = splitTimeoutNow(seconds);
  lastTimeout = seconds;
  lastSplit = r;
  return r;
}
let lastTimeout = Number.NaN;
let lastSplit: Readonly<{ sec: number; nsec: number }> = { sec: 0, nsec: 0 };

function splitTimeoutNow(seconds: number): { sec: number; nsec: number } {
  if (!(seconds > 0)) return { sec: 0, nsec: 0 };
  if (seconds >= Number.MAX_SAFE_INTEGER) return { sec: Number.MAX_SAFE_INTEGER, nsec: 0 };
  let sec = Math.floor(seconds);
  let nsec = Math.round((seconds - sec) * 1e9);
  if (nsec >= 1e9) { sec += 1; nsec = 0; }
  return { sec, nsec };
}

/** A host dev_t (glibc's 64-bit encoding, as two u32 halves) → the 32-bit new_encode_dev()
 * format fuse_attr.rdev carries: (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12). The
 * kernel's own dev_t holds a 12-bit major and a 20-bit minor, so every host device fits; wider
 * values (impossible on Linux) are masked to those ranges rather than overlapping bits. */
export function hostDevToFuseRdev(lo: number, hi: number): number {
  const major = (((lo >>> 8) & 0xfff) | (hi & 0xfffff000)) >>> 0;
  const minor = ((lo & 0xff) | (((lo >>> 12) | (hi << 20)) & 0xffffff00)) >>> 0;
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & 0xfff00) << 12)) >>> 0;
}

/** A u64 stat field as a u32 wire field, saturating (nlink, blksize). */
function statU32(stat: Buffer, offset: number): number {
  return stat.readUInt32LE(offset + 4) !== 0 ? 0xffff_ffff : stat.readUInt32LE(offset);
}

/** Copies 8 bytes as two u32s: for so few bytes Buffer.copy's native call costs more. */
function copy8(from: Buffer, at: number, to: Buffer, offset: number): void {
  to.writeUInt32LE(from.readUInt32LE(at), offset);
  to.writeUInt32LE(from.readUInt32LE(at + 4), offset + 4);
}

/** Writes struct fuse_attr (88 bytes, every byte) from a STAT_LAYOUT buffer into `out` at
 * `offset`. ino, size, blocks and the timestamps' seconds are u64/i64 on both sides and are
 * copied bit for bit; fuse_attr.flags is 0. */
export function encodeAttr(stat: Buffer, out: Buffer, offset: number): void {
  if (stat.length < STAT_LAYOUT.SIZE) throw new RangeError(`stat buffer has ${stat.length} bytes`);
  const S = STAT_LAYOUT;
  copy8(stat, S.ino, out, offset + 0);
  copy8(stat, S.size, out, offset + 8);
  copy8(stat, S.blocks, out, offset + 16);
  copy8(stat, S.atime, out, offset + 24);
  copy8(stat, S.mtime, out, offset + 32);
  copy8(stat, S.ctime, out, offset + 40);
  out.writeUInt32LE(stat.readUInt32LE(S.atimeNsec), offset + 48);
  out.writeUInt32LE(stat.readUInt32LE(S.mtimeNsec), offset + 52);
  out.writeUInt32LE(stat.readUInt32LE(S.ctimeNsec), offset + 56);
  out.writeUInt32LE(stat.readUInt32LE(S.mode), offset + 60);
  out.writeUInt32LE(statU32(stat, S.nlink), offset + 64);
  out.writeUInt32LE(stat.readUInt32LE(S.uid), offset + 68);
  out.writeUInt32LE(stat.readUInt32LE(S.gid), offset + 72);
  out.writeUInt32LE(hostDevToFuseRdev(stat.readUInt32LE(S.rdev), stat.readUInt32LE(S.rdev + 4)), offset + 76);
  out.writeUInt32LE(statU32(stat, S.blksize), offset + 80);
  out.writeUInt32LE(0, offset + 84); // flags: no submounts, no per-inode DAX
}

/** struct fuse_entry_out (128 bytes). A nodeid of 0 is a negative entry (cached ENOENT). */
export function encodeEntryOut(e: Entry, buf?: Buffer, offset = 0): Buffer {
  if (buf === undefined) {
    const out = Buffer.allocUnsafe(K.ENTRY_OUT_SIZE);
    writeEntryOut(e, out, 0);
    return out;
  }
  if (!(Number.isInteger(offset) && offset >= 0 && offset + K.ENTRY_OUT_SIZE <= buf.length)) {
    throw new RangeError(`no room for a ${K.ENTRY_OUT_SIZE}-byte struct at offset ${offset} of ${buf.length}`);
  }
  writeEntryOut(e, buf, offset);
  return buf.subarray(offset, offset + K.ENTRY_OUT_SIZE);
}

/** Writes every byte of fuse_entry_out at `at` (no zeroing first: READDIRPLUS writes one per
 * entry). */
export function writeEntryOut(e: Entry, out: Buffer, at: number): void {
  const entry = splitTimeout(e.entryTimeout);
  const attr = splitTimeout(e.attrTimeout);
  writeU64(out, at, e.nodeid);
  writeU64(out, at + 8, e.generation);
  writeU64(out, at + 16, entry.sec);
  writeU64(out, at + 24, attr.sec);
  out.writeUInt32LE(entry.nsec, at + 32);
  out.writeUInt32LE(attr.nsec, at + 36);
  encodeAttr(e.stat, out, at + 40);
}

/** struct fuse_attr_out (104 bytes). */
export function encodeAttrOut(a: AttrReply, buf?: Buffer, offset = 0): Buffer {
  const out = structAt(K.ATTR_OUT_SIZE, buf, offset);
  const t = splitTimeout(a.attrTimeout);
  writeU64(out, 0, t.sec);
  out.writeUInt32LE(t.nsec, 8);
  encodeAttr(a.stat, out, 16);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Other replies

/** struct fuse_open_out (16 bytes), for OPEN and OPENDIR. */
export function encodeOpenOut(o: OpenReply, buf?: Buffer, offset = 0): Buffer {
  const out = structAt(K.OPEN_OUT_SIZE, buf, offset);
  writeU64(out, 0, o.fh);
  out.writeUInt32LE(o.openFlags, 8);
  return out;
}

/** CREATE / TMPFILE reply: fuse_entry_out followed by fuse_open_out (144 bytes). */
export function encodeCreateOut(entry: Entry, open: OpenReply, buf?: Buffer, offset = 0): Buffer {
  const out = structAt(K.CREATE_OUT_SIZE, buf, offset);
  encodeEntryOut(entry, out, 0);
  encodeOpenOut(open, out, K.ENTRY_OUT_SIZE);
  return out;
}

/** struct fuse_write_out (8 bytes): bytes written. */
export function encodeWriteOut(size: number, buf?: Buffer, offset = 0): Buffer {
  const out = structAt(K.WRITE_OUT_SIZE, buf, offset);
  out.writeUInt32LE(size, 0);
  return out;
}

/** struct fuse_statfs_out = fuse_kstatfs (80 bytes). */
export function encodeStatfsOut(st: StatFs, buf?: Buffer, offset = 0): Buffer {
  const out = structAt(K.STATFS_OUT_SIZE, buf, offset);
  writeU64(out, 0, st.blocks);
  writeU64(out, 8, st.bfree);
  writeU64(out, 16, st.bavail);
  writeU64(out, 24, st.files);
  writeU64(out, 32, st.ffree);
  out.writeUInt32LE(st.bsize, 40);
  out.writeUInt32LE(st.namelen, 44);
  out.writeUInt32LE(st.frsize, 48);
  return out;
}

/** What the server answers to INIT. */
export interface InitReply {
  /** Defaults to FUSE_KERNEL_VERSION. */
  major?: number;
  /** Defaults to FUSE_KERNEL_MINOR_VERSION. */
  minor?: number;
  maxReadahead: number;
  /** 64-bit flag set; bits 32..63 go to flags2 (and FUSE_INIT_EXT is then set for you, because
   * without it the kernel ignores flags2). */
  flags: bigint;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  /** Timestamp granularity in ns (1 = full nanosecond precision). */
  timeGran: number;
  /** Only meaningful with FUSE_MAX_PAGES. */
  maxPages: number;
  /** log2 of the DAX mapping alignment; only meaningful with FUSE_MAP_ALIGNMENT. Default 0. */
  mapAlignment?: number;
}

/** struct fuse_init_out (64 bytes, 7.38). unused[7] stays zero; its first word is what 7.40
 * names max_stack_depth, so leaving it 0 also means "no passthrough stacking". */
export function encodeInitOut(init: InitReply, buf?: Buffer, offset = 0): Buffer {
  if (init.flags < 0n || init.flags >= 1n << 64n) throw new RangeError(`INIT flags out of range: ${init.flags}`);
  let flags = init.flags;
  const flags2 = Number(flags >> 32n);
  if (flags2 !== 0) flags |= K.FUSE_INIT_EXT;
  const out = structAt(K.INIT_OUT_SIZE, buf, offset);
  out.writeUInt32LE(init.major ?? K.FUSE_KERNEL_VERSION, 0);
  out.writeUInt32LE(init.minor ?? K.FUSE_KERNEL_MINOR_VERSION, 4);
  out.writeUInt32LE(init.maxReadahead, 8);
  out.writeUInt32LE(Number(flags & 0xffff_ffffn), 12);
  out.writeUInt16LE(init.maxBackground, 16);
  out.writeUInt16LE(init.congestionThreshold, 18);
  out.writeUInt32LE(init.maxWrite, 20);
  out.writeUInt32LE(init.timeGran, 24);
  out.writeUInt16LE(init.maxPages, 28);
  out.writeUInt16LE(init.mapAlignment ?? 0, 30);
  out.writeUInt32LE(flags2, 32);
  return out;
}

/** struct fuse_getxattr_out (8 bytes): the value/list size, for GETXATTR/LISTXATTR with size 0. */
export function encodeGetxattrOut(size: number, buf?: Buffer, offset = 0): Buffer {
  const out = structAt(K.GETXATTR_OUT_SIZE, buf, offset);
  out.writeUInt32LE(size, 0);
  return out;
}

/** struct fuse_lk_out (24 bytes). An end at or beyond LOCK_END_OF_FILE goes out as OFFSET_MAX,
 * the kernel's "to end of file" (it rejects anything above OFFSET_MAX with EIO). */
export function encodeLkOut(lock: LockRange, buf?: Buffer, offset = 0): Buffer {
  const out = structAt(K.LK_OUT_SIZE, buf, offset);
  writeU64(out, 0, lock.start);
  if (lock.end >= K.LOCK_END_OF_FILE) out.writeBigUInt64LE(K.FUSE_OFFSET_MAX, 8);
  else writeU64(out, 8, lock.end);
  out.writeUInt32LE(lock.type, 16);
  out.writeUInt32LE(lock.pid, 20);
  return out;
}

/** struct fuse_lseek_out (8 bytes). */
export function encodeLseekOut(position: number, buf?: Buffer, offset = 0): Buffer {
  const out = structAt(K.LSEEK_OUT_SIZE, buf, offset);
  writeU64(out, 0, position);
  return out;
}

/** READLINK's reply payload is the raw target bytes with no NUL and no struct; this returns the
 * target itself (no copy). An empty target is a filesystem bug (the kernel would EIO). */
export function encodeReadlink(target: Buffer): Buffer {
  if (target.length === 0) throw new RangeError('empty symlink target');
  return target;
}
