// The test frontend's own FUSE wire encoder/decoder (from /usr/include/linux/fuse.h, 7.38).
// Deliberately independent of the server's implementation so that each cross-checks the other.
// Every struct is little-endian; sizes are asserted against the header's layout.

export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 38;
export const FUSE_ROOT_ID = 1n;

export const Op = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9,
  UNLINK: 10, RMDIR: 11, RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17,
  RELEASE: 18, FSYNC: 20, SETXATTR: 21, GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24,
  FLUSH: 25, INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, FSYNCDIR: 30, GETLK: 31,
  SETLK: 32, SETLKW: 33, ACCESS: 34, CREATE: 35, INTERRUPT: 36, BMAP: 37, DESTROY: 38,
  IOCTL: 39, POLL: 40, NOTIFY_REPLY: 41, BATCH_FORGET: 42, FALLOCATE: 43, READDIRPLUS: 44,
  RENAME2: 45, LSEEK: 46, COPY_FILE_RANGE: 47, SETUPMAPPING: 48, REMOVEMAPPING: 49,
  SYNCFS: 50, TMPFILE: 51,
} as const;

/** fuse_init_in.flags / flags2 (as one 64-bit number; bits >= 32 go to flags2). */
export const InitFlag = {
  ASYNC_READ: 1 << 0, POSIX_LOCKS: 1 << 1, FILE_OPS: 1 << 2, ATOMIC_O_TRUNC: 1 << 3,
  EXPORT_SUPPORT: 1 << 4, BIG_WRITES: 1 << 5, DONT_MASK: 1 << 6, SPLICE_WRITE: 1 << 7,
  SPLICE_MOVE: 1 << 8, SPLICE_READ: 1 << 9, FLOCK_LOCKS: 1 << 10, HAS_IOCTL_DIR: 1 << 11,
  AUTO_INVAL_DATA: 1 << 12, DO_READDIRPLUS: 1 << 13, READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15, WRITEBACK_CACHE: 1 << 16, NO_OPEN_SUPPORT: 1 << 17,
  PARALLEL_DIROPS: 1 << 18, HANDLE_KILLPRIV: 1 << 19, POSIX_ACL: 1 << 20,
  ABORT_ERROR: 1 << 21, MAX_PAGES: 1 << 22, CACHE_SYMLINKS: 1 << 23,
  NO_OPENDIR_SUPPORT: 1 << 24, EXPLICIT_INVAL_DATA: 1 << 25, MAP_ALIGNMENT: 1 << 26,
  SUBMOUNTS: 1 << 27, HANDLE_KILLPRIV_V2: 1 << 28, SETXATTR_EXT: 1 << 29, INIT_EXT: 1 << 30,
  INIT_RESERVED: 2 ** 31, SECURITY_CTX: 2 ** 32, HAS_INODE_DAX: 2 ** 33,
  HAS_EXPIRE_ONLY: 2 ** 35,
} as const;

/** What Linux 6.x's virtiofs driver (fs/fuse/inode.c fuse_send_init) offers, minus the DAX and
 * security-context bits that need a DAX window / an LSM. */
export const LINUX_INIT_FLAGS =
  InitFlag.ASYNC_READ | InitFlag.POSIX_LOCKS | InitFlag.ATOMIC_O_TRUNC | InitFlag.EXPORT_SUPPORT |
  InitFlag.BIG_WRITES | InitFlag.DONT_MASK | InitFlag.FLOCK_LOCKS | InitFlag.HAS_IOCTL_DIR |
  InitFlag.AUTO_INVAL_DATA | InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO |
  InitFlag.ASYNC_DIO | InitFlag.WRITEBACK_CACHE | InitFlag.NO_OPEN_SUPPORT |
  InitFlag.PARALLEL_DIROPS | InitFlag.HANDLE_KILLPRIV | InitFlag.POSIX_ACL |
  InitFlag.ABORT_ERROR | InitFlag.MAX_PAGES | InitFlag.CACHE_SYMLINKS |
  InitFlag.NO_OPENDIR_SUPPORT | InitFlag.EXPLICIT_INVAL_DATA | InitFlag.HANDLE_KILLPRIV_V2 |
  InitFlag.SETXATTR_EXT | InitFlag.INIT_EXT | InitFlag.SUBMOUNTS | InitFlag.HAS_EXPIRE_ONLY;

export const FATTR = {
  MODE: 1 << 0, UID: 1 << 1, GID: 1 << 2, SIZE: 1 << 3, ATIME: 1 << 4, MTIME: 1 << 5,
  FH: 1 << 6, ATIME_NOW: 1 << 7, MTIME_NOW: 1 << 8, LOCKOWNER: 1 << 9, CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

export const FOPEN = {
  DIRECT_IO: 1 << 0, KEEP_CACHE: 1 << 1, NONSEEKABLE: 1 << 2, CACHE_DIR: 1 << 3,
  STREAM: 1 << 4, NOFLUSH: 1 << 5, PARALLEL_DIRECT_WRITES: 1 << 6,
} as const;

export const FUSE_RELEASE_FLUSH = 1 << 0;
export const FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1;
export const FUSE_GETATTR_FH = 1 << 0;
export const FUSE_LK_FLOCK = 1 << 0;
export const FUSE_WRITE_LOCKOWNER = 1 << 1;
export const FUSE_READ_LOCKOWNER = 1 << 1;
export const FUSE_FSYNC_FDATASYNC = 1 << 0;

// Linux values used in requests (x86-64 / generic).
export const O = {
  RDONLY: 0, WRONLY: 1, RDWR: 2, CREAT: 0o100, EXCL: 0o200, NOCTTY: 0o400, TRUNC: 0o1000,
  APPEND: 0o2000, NONBLOCK: 0o4000, DIRECTORY: 0o200000, NOFOLLOW: 0o400000,
  CLOEXEC: 0o2000000, LARGEFILE: 0o100000, SYNC: 0o4010000,
} as const;
export const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFDIR = 0o040000;
export const S_IFLNK = 0o120000;
export const S_IFIFO = 0o010000;
export const S_IFCHR = 0o020000;
export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const F_UNLCK = 2;
export const SEEK_SET = 0;
export const SEEK_CUR = 1;
export const SEEK_END = 2;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const RENAME_NOREPLACE = 1 << 0;
export const RENAME_EXCHANGE = 1 << 1;
export const RENAME_WHITEOUT = 1 << 2;
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;
export const FALLOC_FL_KEEP_SIZE = 1;
export const FALLOC_FL_PUNCH_HOLE = 2;
export const DT_DIR = 4;
export const DT_REG = 8;
export const DT_LNK = 10;

/** Linux errno values (asm-generic/errno-base.h, errno.h) that the tests look for. */
export const Errno = {
  EPERM: 1, ENOENT: 2, EINTR: 4, EIO: 5, EBADF: 9, EAGAIN: 11, ENOMEM: 12, EACCES: 13, EFAULT: 14,
  EBUSY: 16, EEXIST: 17, EXDEV: 18, ENOTDIR: 20, EISDIR: 21, EINVAL: 22, ENFILE: 23,
  EMFILE: 24, EFBIG: 27, ENOSPC: 28, ESPIPE: 29, EROFS: 30, EMLINK: 31, ERANGE: 34,
  EDEADLK: 35, ENAMETOOLONG: 36, ENOLCK: 37, ENOSYS: 38, ENOTEMPTY: 39, ELOOP: 40,
  ENODATA: 61, EOVERFLOW: 75, EPROTO: 71, E2BIG: 7, EOPNOTSUPP: 95, ENOTSUP: 95,
  ENOTCONN: 107, ENXIO: 6, ESTALE: 116, EBADMSG: 74, EMSGSIZE: 90,
} as const;
const ERRNO_NAMES = new Map<number, string>(Object.entries(Errno).map(([k, v]) => [v, k]));
export function errnoName(e: number): string {
  return e === 0 ? 'success' : ERRNO_NAMES.get(e) ?? `errno${e}`;
}

export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
export const ATTR_SIZE = 88;
export const ENTRY_OUT_SIZE = 40 + ATTR_SIZE; // 128
export const ATTR_OUT_SIZE = 16 + ATTR_SIZE; // 104
export const OPEN_OUT_SIZE = 16;
export const INIT_IN_SIZE = 64;
export const INIT_OUT_SIZE = 64;
export const STATFS_OUT_SIZE = 80;
export const WRITE_OUT_SIZE = 8;
export const GETXATTR_OUT_SIZE = 8;
export const LK_OUT_SIZE = 24;
export const LSEEK_OUT_SIZE = 8;
export const DIRENT_HEADER_SIZE = 24;
export const DIRENTPLUS_HEADER_SIZE = ENTRY_OUT_SIZE + DIRENT_HEADER_SIZE; // 152

// ---------------------------------------------------------------------------------------------
// Small builder for fixed little-endian structs.

export class StructWriter {
  readonly buf: Buffer;
  private pos = 0;
  constructor(size: number) { this.buf = Buffer.alloc(size); }
  u16(v: number): this { this.buf.writeUInt16LE(v, this.pos); this.pos += 2; return this; }
  u32(v: number): this { this.buf.writeUInt32LE(v >>> 0, this.pos); this.pos += 4; return this; }
  i32(v: number): this { this.buf.writeInt32LE(v, this.pos); this.pos += 4; return this; }
  u64(v: number | bigint): this {
    this.buf.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v)), this.pos); this.pos += 8; return this;
  }
  pad(n: number): this { this.pos += n; return this; }
  done(): Buffer {
    if (this.pos !== this.buf.length) throw new Error(`struct size ${this.pos} != ${this.buf.length}`);
    return this.buf;
  }
}

/** A C string: the bytes plus a terminating NUL. */
export function cstr(s: string | Buffer): Buffer {
  const b = typeof s === 'string' ? Buffer.from(s) : s;
  return Buffer.concat([b, Buffer.alloc(1)]);
}

export interface InHeader {
  len: number; opcode: number; unique: bigint; nodeid: bigint; uid: number; gid: number;
  pid: number; totalExtlen?: number;
}
export function encodeInHeader(h: InHeader): Buffer {
  return new StructWriter(IN_HEADER_SIZE).u32(h.len).u32(h.opcode).u64(h.unique).u64(h.nodeid)
    .u32(h.uid).u32(h.gid).u32(h.pid).u16(h.totalExtlen ?? 0).u16(0).done();
}

export interface OutHeader { len: number; error: number; unique: bigint }
export function decodeOutHeader(b: Buffer): OutHeader {
  if (b.length < OUT_HEADER_SIZE) throw new Error(`out header too short: ${b.length}`);
  return { len: b.readUInt32LE(0), error: b.readInt32LE(4), unique: b.readBigUInt64LE(8) };
}

// ---------------------------------------------------------------------------------------------
// Request argument encoders.

export function initIn(flags: number, maxReadahead = 0x20000): Buffer {
  const lo = flags % 2 ** 32;
  const hi = Math.floor(flags / 2 ** 32);
  return new StructWriter(INIT_IN_SIZE).u32(FUSE_KERNEL_VERSION).u32(FUSE_KERNEL_MINOR_VERSION)
    .u32(maxReadahead).u32(lo).u32(hi).pad(44).done();
}
export function forgetIn(nlookup: bigint | number): Buffer {
  return new StructWriter(8).u64(nlookup).done();
}
export function batchForgetIn(items: Array<{ nodeid: bigint; nlookup: bigint | number }>): Buffer {
  const w = new StructWriter(8 + 16 * items.length).u32(items.length).u32(0);
  for (const it of items) w.u64(it.nodeid).u64(it.nlookup);
  return w.done();
}
export function getattrIn(flags: number, fh: bigint | number): Buffer {
  return new StructWriter(16).u32(flags).u32(0).u64(fh).done();
}
export interface SetattrArgs {
  valid: number; fh?: bigint; size?: number | bigint; lockOwner?: bigint;
  atime?: number | bigint; mtime?: number | bigint; ctime?: number | bigint;
  atimensec?: number; mtimensec?: number; ctimensec?: number;
  mode?: number; uid?: number; gid?: number;
}
export function setattrIn(a: SetattrArgs): Buffer {
  return new StructWriter(88).u32(a.valid).u32(0).u64(a.fh ?? 0n).u64(a.size ?? 0)
    .u64(a.lockOwner ?? 0n).u64(a.atime ?? 0).u64(a.mtime ?? 0).u64(a.ctime ?? 0)
    .u32(a.atimensec ?? 0).u32(a.mtimensec ?? 0).u32(a.ctimensec ?? 0).u32(a.mode ?? 0)
    .u32(0).u32(a.uid ?? 0).u32(a.gid ?? 0).u32(0).done();
}
export function mknodIn(mode: number, rdev: number, umask: number): Buffer {
  return new StructWriter(16).u32(mode).u32(rdev).u32(umask).u32(0).done();
}
export function mkdirIn(mode: number, umask: number): Buffer {
  return new StructWriter(8).u32(mode).u32(umask).done();
}
export function renameIn(newdir: bigint): Buffer {
  return new StructWriter(8).u64(newdir).done();
}
export function rename2In(newdir: bigint, flags: number): Buffer {
  return new StructWriter(16).u64(newdir).u32(flags).u32(0).done();
}
export function linkIn(oldnodeid: bigint): Buffer {
  return new StructWriter(8).u64(oldnodeid).done();
}
export function openIn(flags: number, openFlags = 0): Buffer {
  return new StructWriter(8).u32(flags).u32(openFlags).done();
}
export function createIn(flags: number, mode: number, umask: number, openFlags = 0): Buffer {
  return new StructWriter(16).u32(flags).u32(mode).u32(umask).u32(openFlags).done();
}
export function releaseIn(fh: bigint, flags: number, releaseFlags = 0, lockOwner = 0n): Buffer {
  return new StructWriter(24).u64(fh).u32(flags).u32(releaseFlags).u64(lockOwner).done();
}
export function flushIn(fh: bigint, lockOwner = 0n): Buffer {
  return new StructWriter(24).u64(fh).u32(0).u32(0).u64(lockOwner).done();
}
export function readIn(fh: bigint, offset: number | bigint, size: number, readFlags = 0,
  lockOwner = 0n, flags = 0): Buffer {
  return new StructWriter(40).u64(fh).u64(offset).u32(size).u32(readFlags).u64(lockOwner)
    .u32(flags).u32(0).done();
}
export function writeIn(fh: bigint, offset: number | bigint, size: number, writeFlags = 0,
  lockOwner = 0n, flags = 0): Buffer {
  return new StructWriter(40).u64(fh).u64(offset).u32(size).u32(writeFlags).u64(lockOwner)
    .u32(flags).u32(0).done();
}
export function fsyncIn(fh: bigint, fsyncFlags = 0): Buffer {
  return new StructWriter(16).u64(fh).u32(fsyncFlags).u32(0).done();
}
/** fuse_setxattr_in: the 16-byte form when FUSE_SETXATTR_EXT was negotiated, else 8 bytes. */
export function setxattrIn(size: number, flags: number, ext: boolean, setxattrFlags = 0): Buffer {
  if (!ext) return new StructWriter(8).u32(size).u32(flags).done();
  return new StructWriter(16).u32(size).u32(flags).u32(setxattrFlags).u32(0).done();
}
export function getxattrIn(size: number): Buffer {
  return new StructWriter(8).u32(size).u32(0).done();
}
export interface FileLock { start: bigint; end: bigint; type: number; pid: number }
export function lkIn(fh: bigint, owner: bigint, lk: FileLock, lkFlags = 0): Buffer {
  return new StructWriter(48).u64(fh).u64(owner).u64(lk.start).u64(lk.end).u32(lk.type)
    .u32(lk.pid).u32(lkFlags).u32(0).done();
}
export function accessIn(mask: number): Buffer {
  return new StructWriter(8).u32(mask).u32(0).done();
}
export function interruptIn(unique: bigint): Buffer {
  return new StructWriter(8).u64(unique).done();
}
export function fallocateIn(fh: bigint, offset: number | bigint, length: number | bigint,
  mode: number): Buffer {
  return new StructWriter(32).u64(fh).u64(offset).u64(length).u32(mode).u32(0).done();
}
export function lseekIn(fh: bigint, offset: number | bigint, whence: number): Buffer {
  return new StructWriter(24).u64(fh).u64(offset).u32(whence).u32(0).done();
}
export function copyFileRangeIn(fhIn: bigint, offIn: number | bigint, nodeidOut: bigint,
  fhOut: bigint, offOut: number | bigint, len: number | bigint, flags = 0): Buffer {
  return new StructWriter(56).u64(fhIn).u64(offIn).u64(nodeidOut).u64(fhOut).u64(offOut)
    .u64(len).u64(flags).done();
}
export function syncfsIn(): Buffer {
  return new StructWriter(8).u64(0).done();
}

// ---------------------------------------------------------------------------------------------
// Reply decoders.

function need(b: Buffer, n: number, what: string): void {
  if (b.length < n) throw new Error(`${what}: reply body ${b.length} bytes, expected >= ${n}`);
}

export interface Attr {
  ino: bigint; size: bigint; blocks: bigint; atime: bigint; mtime: bigint; ctime: bigint;
  atimensec: number; mtimensec: number; ctimensec: number; mode: number; nlink: number;
  uid: number; gid: number; rdev: number; blksize: number; flags: number;
}
export function decodeAttr(b: Buffer, off = 0): Attr {
  need(b, off + ATTR_SIZE, 'fuse_attr');
  return {
    ino: b.readBigUInt64LE(off), size: b.readBigUInt64LE(off + 8),
    blocks: b.readBigUInt64LE(off + 16), atime: b.readBigUInt64LE(off + 24),
    mtime: b.readBigUInt64LE(off + 32), ctime: b.readBigUInt64LE(off + 40),
    atimensec: b.readUInt32LE(off + 48), mtimensec: b.readUInt32LE(off + 52),
    ctimensec: b.readUInt32LE(off + 56), mode: b.readUInt32LE(off + 60),
    nlink: b.readUInt32LE(off + 64), uid: b.readUInt32LE(off + 68), gid: b.readUInt32LE(off + 72),
    rdev: b.readUInt32LE(off + 76), blksize: b.readUInt32LE(off + 80),
    flags: b.readUInt32LE(off + 84),
  };
}

export interface EntryOut {
  nodeid: bigint; generation: bigint; entryValid: bigint; attrValid: bigint;
  entryValidNsec: number; attrValidNsec: number; attr: Attr;
}
export function decodeEntryOut(b: Buffer, off = 0): EntryOut {
  need(b, off + ENTRY_OUT_SIZE, 'fuse_entry_out');
  return {
    nodeid: b.readBigUInt64LE(off), generation: b.readBigUInt64LE(off + 8),
    entryValid: b.readBigUInt64LE(off + 16), attrValid: b.readBigUInt64LE(off + 24),
    entryValidNsec: b.readUInt32LE(off + 32), attrValidNsec: b.readUInt32LE(off + 36),
    attr: decodeAttr(b, off + 40),
  };
}

export interface AttrOut { attrValid: bigint; attrValidNsec: number; attr: Attr }
export function decodeAttrOut(b: Buffer): AttrOut {
  need(b, ATTR_OUT_SIZE, 'fuse_attr_out');
  return { attrValid: b.readBigUInt64LE(0), attrValidNsec: b.readUInt32LE(8), attr: decodeAttr(b, 16) };
}

export interface OpenOut { fh: bigint; openFlags: number }
export function decodeOpenOut(b: Buffer, off = 0): OpenOut {
  need(b, off + OPEN_OUT_SIZE, 'fuse_open_out');
  return { fh: b.readBigUInt64LE(off), openFlags: b.readUInt32LE(off + 8) };
}

export interface CreateOut { entry: EntryOut; open: OpenOut }
export function decodeCreateOut(b: Buffer): CreateOut {
  need(b, ENTRY_OUT_SIZE + OPEN_OUT_SIZE, 'create reply');
  return { entry: decodeEntryOut(b, 0), open: decodeOpenOut(b, ENTRY_OUT_SIZE) };
}

export interface InitOut {
  major: number; minor: number; maxReadahead: number; flags: number; maxBackground: number;
  congestionThreshold: number; maxWrite: number; timeGran: number; maxPages: number;
  mapAlignment: number; flags2: number;
  /** flags | flags2 << 32 as one number. */
  allFlags: number;
  bodyLength: number;
}
export function decodeInitOut(b: Buffer): InitOut {
  need(b, 24, 'fuse_init_out');
  const r: InitOut = {
    major: b.readUInt32LE(0), minor: b.readUInt32LE(4), maxReadahead: b.readUInt32LE(8),
    flags: b.readUInt32LE(12), maxBackground: b.readUInt16LE(16),
    congestionThreshold: b.readUInt16LE(18), maxWrite: b.readUInt32LE(20),
    timeGran: b.length >= 28 ? b.readUInt32LE(24) : 0,
    maxPages: b.length >= 30 ? b.readUInt16LE(28) : 0,
    mapAlignment: b.length >= 32 ? b.readUInt16LE(30) : 0,
    flags2: b.length >= 36 ? b.readUInt32LE(32) : 0, allFlags: 0, bodyLength: b.length,
  };
  r.allFlags = r.flags + r.flags2 * 2 ** 32;
  return r;
}

export interface StatfsOut {
  blocks: bigint; bfree: bigint; bavail: bigint; files: bigint; ffree: bigint; bsize: number;
  namelen: number; frsize: number;
}
export function decodeStatfsOut(b: Buffer): StatfsOut {
  need(b, 48, 'fuse_statfs_out');
  return {
    blocks: b.readBigUInt64LE(0), bfree: b.readBigUInt64LE(8), bavail: b.readBigUInt64LE(16),
    files: b.readBigUInt64LE(24), ffree: b.readBigUInt64LE(32), bsize: b.readUInt32LE(40),
    namelen: b.readUInt32LE(44), frsize: b.length >= 52 ? b.readUInt32LE(48) : 0,
  };
}

export function decodeWriteOut(b: Buffer): number {
  need(b, WRITE_OUT_SIZE, 'fuse_write_out');
  return b.readUInt32LE(0);
}
export function decodeGetxattrOut(b: Buffer): number {
  need(b, GETXATTR_OUT_SIZE, 'fuse_getxattr_out');
  return b.readUInt32LE(0);
}
export function decodeLkOut(b: Buffer): FileLock {
  need(b, LK_OUT_SIZE, 'fuse_lk_out');
  return { start: b.readBigUInt64LE(0), end: b.readBigUInt64LE(8), type: b.readUInt32LE(16), pid: b.readUInt32LE(20) };
}
export function decodeLseekOut(b: Buffer): bigint {
  need(b, LSEEK_OUT_SIZE, 'fuse_lseek_out');
  return b.readBigUInt64LE(0);
}

export interface Dirent { ino: bigint; off: bigint; type: number; name: Buffer; entry?: EntryOut }

function align8(n: number): number { return (n + 7) & ~7; }

/** Decodes a READDIR reply (fuse_dirent records, each padded to 8 bytes). Throws on a malformed
 * record: a test must notice a server that writes garbage. */
export function decodeDirents(b: Buffer): Dirent[] {
  const out: Dirent[] = [];
  let p = 0;
  while (p < b.length) {
    if (b.length - p < DIRENT_HEADER_SIZE) throw new Error(`truncated dirent at ${p}`);
    const namelen = b.readUInt32LE(p + 16);
    const recLen = align8(DIRENT_HEADER_SIZE + namelen);
    if (namelen === 0 || namelen > 4096 || p + DIRENT_HEADER_SIZE + namelen > b.length) {
      throw new Error(`bad dirent namelen ${namelen} at ${p}`);
    }
    out.push({
      ino: b.readBigUInt64LE(p), off: b.readBigUInt64LE(p + 8), type: b.readUInt32LE(p + 20),
      name: Buffer.from(b.subarray(p + DIRENT_HEADER_SIZE, p + DIRENT_HEADER_SIZE + namelen)),
    });
    p += Math.min(recLen, b.length - p);
  }
  return out;
}

/** Decodes a READDIRPLUS reply (fuse_direntplus records). */
export function decodeDirentsPlus(b: Buffer): Dirent[] {
  const out: Dirent[] = [];
  let p = 0;
  while (p < b.length) {
    if (b.length - p < DIRENTPLUS_HEADER_SIZE) throw new Error(`truncated direntplus at ${p}`);
    const entry = decodeEntryOut(b, p);
    const d = p + ENTRY_OUT_SIZE;
    const namelen = b.readUInt32LE(d + 16);
    if (namelen === 0 || namelen > 4096 || d + DIRENT_HEADER_SIZE + namelen > b.length) {
      throw new Error(`bad direntplus namelen ${namelen} at ${p}`);
    }
    out.push({
      ino: b.readBigUInt64LE(d), off: b.readBigUInt64LE(d + 8), type: b.readUInt32LE(d + 20),
      name: Buffer.from(b.subarray(d + DIRENT_HEADER_SIZE, d + DIRENT_HEADER_SIZE + namelen)),
      entry,
    });
    p += Math.min(align8(DIRENTPLUS_HEADER_SIZE + namelen), b.length - p);
  }
  return out;
}

/** Splits a LISTXATTR reply (NUL-separated names). */
export function decodeXattrList(b: Buffer): string[] {
  return b.toString('latin1').split('\0').filter((s) => s.length > 0);
}
