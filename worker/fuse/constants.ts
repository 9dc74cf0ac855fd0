// FUSE wire constants, transcribed from /usr/include/linux/fuse.h (protocol 7.38), which is the
// source of truth for every number here. Kept in their own module so that the parser, the
// encoders and the server share one spelling of each value; protocol.ts re-exports all of it.
//
// Compatibility policy: the server speaks 7.38 and refuses kernels below minor 27 (the server
// replies to INIT with EPROTO there), so the only "compat" sizes that matter are the ones a
// >= 7.27 kernel can still send: the 16-byte fuse_init_in (kernels before 7.36) and the 8-byte
// fuse_setxattr_in (unless FUSE_SETXATTR_EXT was negotiated). The other FUSE_COMPAT_* sizes are
// listed for reference only; nothing in this layer produces or accepts them.

// ---------------------------------------------------------------------------------------------
// Versions

/** Major protocol version we speak; a kernel offering another major gets our major back. */
export const FUSE_KERNEL_VERSION = 7;
/** Minor protocol version of the fuse.h these layouts come from. */
export const FUSE_KERNEL_MINOR_VERSION = 38;
/** Oldest kernel minor the server supports: everything this layer parses assumes >= 7.27
 * struct sizes (e.g. 40-byte fuse_read_in / fuse_write_in, 16-byte fuse_mknod_in). */
export const FUSE_MIN_SUPPORTED_MINOR = 27;

/** The nodeid of the mount's root directory. */
export const FUSE_ROOT_ID = 1;

// ---------------------------------------------------------------------------------------------
// Opcodes (enum fuse_opcode). Gaps (7, 19) are opcodes the kernel retired; they parse as UNKNOWN.

export const FUSE_LOOKUP = 1;
/** No reply. */
export const FUSE_FORGET = 2;
export const FUSE_GETATTR = 3;
export const FUSE_SETATTR = 4;
export const FUSE_READLINK = 5;
export const FUSE_SYMLINK = 6;
export const FUSE_MKNOD = 8;
export const FUSE_MKDIR = 9;
export const FUSE_UNLINK = 10;
export const FUSE_RMDIR = 11;
export const FUSE_RENAME = 12;
export const FUSE_LINK = 13;
export const FUSE_OPEN = 14;
export const FUSE_READ = 15;
export const FUSE_WRITE = 16;
export const FUSE_STATFS = 17;
export const FUSE_RELEASE = 18;
export const FUSE_FSYNC = 20;
export const FUSE_SETXATTR = 21;
export const FUSE_GETXATTR = 22;
export const FUSE_LISTXATTR = 23;
export const FUSE_REMOVEXATTR = 24;
export const FUSE_FLUSH = 25;
export const FUSE_INIT = 26;
export const FUSE_OPENDIR = 27;
export const FUSE_READDIR = 28;
export const FUSE_RELEASEDIR = 29;
export const FUSE_FSYNCDIR = 30;
export const FUSE_GETLK = 31;
export const FUSE_SETLK = 32;
export const FUSE_SETLKW = 33;
export const FUSE_ACCESS = 34;
export const FUSE_CREATE = 35;
export const FUSE_INTERRUPT = 36;
export const FUSE_BMAP = 37;
export const FUSE_DESTROY = 38;
export const FUSE_IOCTL = 39;
export const FUSE_POLL = 40;
export const FUSE_NOTIFY_REPLY = 41;
/** No reply. */
export const FUSE_BATCH_FORGET = 42;
export const FUSE_FALLOCATE = 43;
export const FUSE_READDIRPLUS = 44;
export const FUSE_RENAME2 = 45;
export const FUSE_LSEEK = 46;
export const FUSE_COPY_FILE_RANGE = 47;
export const FUSE_SETUPMAPPING = 48;
export const FUSE_REMOVEMAPPING = 49;
export const FUSE_SYNCFS = 50;
export const FUSE_TMPFILE = 51;
/** CUSE only; never valid on virtio-fs (parses as UNKNOWN). */
export const CUSE_INIT = 4096;
/** Reserved so that a byte-swapped INIT is recognisable (other-endian peer); parses as UNKNOWN. */
export const CUSE_INIT_BSWAP_RESERVED = 1048576;
export const FUSE_INIT_BSWAP_RESERVED = 436207616;

/** Opcode → name without the FUSE_ prefix; the names are also the FuseRequest `kind`s. A Map,
 * not an object, so that a hostile opcode can never hit an inherited property. */
export const OPCODE_NAMES: ReadonlyMap<number, string> = new Map<number, string>([
  [FUSE_LOOKUP, 'LOOKUP'], [FUSE_FORGET, 'FORGET'], [FUSE_GETATTR, 'GETATTR'],
  [FUSE_SETATTR, 'SETATTR'], [FUSE_READLINK, 'READLINK'], [FUSE_SYMLINK, 'SYMLINK'],
  [FUSE_MKNOD, 'MKNOD'], [FUSE_MKDIR, 'MKDIR'], [FUSE_UNLINK, 'UNLINK'], [FUSE_RMDIR, 'RMDIR'],
  [FUSE_RENAME, 'RENAME'], [FUSE_LINK, 'LINK'], [FUSE_OPEN, 'OPEN'], [FUSE_READ, 'READ'],
  [FUSE_WRITE, 'WRITE'], [FUSE_STATFS, 'STATFS'], [FUSE_RELEASE, 'RELEASE'],
  [FUSE_FSYNC, 'FSYNC'], [FUSE_SETXATTR, 'SETXATTR'], [FUSE_GETXATTR, 'GETXATTR'],
  [FUSE_LISTXATTR, 'LISTXATTR'], [FUSE_REMOVEXATTR, 'REMOVEXATTR'], [FUSE_FLUSH, 'FLUSH'],
  [FUSE_INIT, 'INIT'], [FUSE_OPENDIR, 'OPENDIR'], [FUSE_READDIR, 'READDIR'],
  [FUSE_RELEASEDIR, 'RELEASEDIR'], [FUSE_FSYNCDIR, 'FSYNCDIR'], [FUSE_GETLK, 'GETLK'],
  [FUSE_SETLK, 'SETLK'], [FUSE_SETLKW, 'SETLKW'], [FUSE_ACCESS, 'ACCESS'],
  [FUSE_CREATE, 'CREATE'], [FUSE_INTERRUPT, 'INTERRUPT'], [FUSE_BMAP, 'BMAP'],
  [FUSE_DESTROY, 'DESTROY'], [FUSE_IOCTL, 'IOCTL'], [FUSE_POLL, 'POLL'],
  [FUSE_NOTIFY_REPLY, 'NOTIFY_REPLY'], [FUSE_BATCH_FORGET, 'BATCH_FORGET'],
  [FUSE_FALLOCATE, 'FALLOCATE'], [FUSE_READDIRPLUS, 'READDIRPLUS'], [FUSE_RENAME2, 'RENAME2'],
  [FUSE_LSEEK, 'LSEEK'], [FUSE_COPY_FILE_RANGE, 'COPY_FILE_RANGE'],
  [FUSE_SETUPMAPPING, 'SETUPMAPPING'], [FUSE_REMOVEMAPPING, 'REMOVEMAPPING'],
  [FUSE_SYNCFS, 'SYNCFS'], [FUSE_TMPFILE, 'TMPFILE'], [CUSE_INIT, 'CUSE_INIT'],
]);

/** A printable name for logs, also for opcodes we do not know ("UNKNOWN(7)"). */
export function opcodeName(opcode: number): string {
  return OPCODE_NAMES.get(opcode) ?? `UNKNOWN(${opcode})`;
}

// ---------------------------------------------------------------------------------------------
// INIT flags (fuse_init_in.flags / fuse_init_out.flags, plus flags2 as bits 32..63). BigInts,
// because with FUSE_INIT_EXT the negotiated set is 64 bits wide.

export const FUSE_ASYNC_READ = 1n << 0n;
export const FUSE_POSIX_LOCKS = 1n << 1n;
export const FUSE_FILE_OPS = 1n << 2n;
export const FUSE_ATOMIC_O_TRUNC = 1n << 3n;
export const FUSE_EXPORT_SUPPORT = 1n << 4n;
export const FUSE_BIG_WRITES = 1n << 5n;
export const FUSE_DONT_MASK = 1n << 6n;
export const FUSE_SPLICE_WRITE = 1n << 7n;
export const FUSE_SPLICE_MOVE = 1n << 8n;
export const FUSE_SPLICE_READ = 1n << 9n;
export const FUSE_FLOCK_LOCKS = 1n << 10n;
export const FUSE_HAS_IOCTL_DIR = 1n << 11n;
export const FUSE_AUTO_INVAL_DATA = 1n << 12n;
export const FUSE_DO_READDIRPLUS = 1n << 13n;
export const FUSE_READDIRPLUS_AUTO = 1n << 14n;
export const FUSE_ASYNC_DIO = 1n << 15n;
export const FUSE_WRITEBACK_CACHE = 1n << 16n;
export const FUSE_NO_OPEN_SUPPORT = 1n << 17n;
export const FUSE_PARALLEL_DIROPS = 1n << 18n;
export const FUSE_HANDLE_KILLPRIV = 1n << 19n;
export const FUSE_POSIX_ACL = 1n << 20n;
export const FUSE_ABORT_ERROR = 1n << 21n;
export const FUSE_MAX_PAGES = 1n << 22n;
export const FUSE_CACHE_SYMLINKS = 1n << 23n;
export const FUSE_NO_OPENDIR_SUPPORT = 1n << 24n;
export const FUSE_EXPLICIT_INVAL_DATA = 1n << 25n;
export const FUSE_MAP_ALIGNMENT = 1n << 26n;
export const FUSE_SUBMOUNTS = 1n << 27n;
export const FUSE_HANDLE_KILLPRIV_V2 = 1n << 28n;
export const FUSE_SETXATTR_EXT = 1n << 29n;
/** fuse_init_in/out carry flags2 (bits 32..63); without it, flags2 must be ignored. */
export const FUSE_INIT_EXT = 1n << 30n;
export const FUSE_INIT_RESERVED = 1n << 31n;
/** flags2 bit 0: create/mkdir/mknod/symlink/tmpfile carry a security-context extension. */
export const FUSE_SECURITY_CTX = 1n << 32n;
export const FUSE_HAS_INODE_DAX = 1n << 33n;
export const FUSE_HAS_EXPIRE_ONLY = 1n << 35n;

/** CUSE INIT flag (listed for completeness; CUSE is not served). */
export const CUSE_UNRESTRICTED_IOCTL = 1 << 0;

// ---------------------------------------------------------------------------------------------
// Per-request flag words (plain numbers: all are u32 on the wire)

/** fuse_setattr_in.valid */
export const FATTR_MODE = 1 << 0;
export const FATTR_UID = 1 << 1;
export const FATTR_GID = 1 << 2;
export const FATTR_SIZE = 1 << 3;
export const FATTR_ATIME = 1 << 4;
export const FATTR_MTIME = 1 << 5;
export const FATTR_FH = 1 << 6;
export const FATTR_ATIME_NOW = 1 << 7;
export const FATTR_MTIME_NOW = 1 << 8;
export const FATTR_LOCKOWNER = 1 << 9;
export const FATTR_CTIME = 1 << 10;
export const FATTR_KILL_SUIDGID = 1 << 11;

/** fuse_open_out.open_flags */
export const FOPEN_DIRECT_IO = 1 << 0;
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_NONSEEKABLE = 1 << 2;
export const FOPEN_CACHE_DIR = 1 << 3;
export const FOPEN_STREAM = 1 << 4;
export const FOPEN_NOFLUSH = 1 << 5;
export const FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6;

/** fuse_release_in.release_flags */
export const FUSE_RELEASE_FLUSH = 1 << 0;
export const FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1;

/** fuse_getattr_in.getattr_flags: `fh` is valid. */
export const FUSE_GETATTR_FH = 1 << 0;

/** fuse_lk_in.lk_flags: a BSD flock(2) rather than a POSIX lock. */
export const FUSE_LK_FLOCK = 1 << 0;

/** fuse_write_in.write_flags */
export const FUSE_WRITE_CACHE = 1 << 0;
export const FUSE_WRITE_LOCKOWNER = 1 << 1;
export const FUSE_WRITE_KILL_SUIDGID = 1 << 2;
/** Obsolete alias of FUSE_WRITE_KILL_SUIDGID. */
export const FUSE_WRITE_KILL_PRIV = FUSE_WRITE_KILL_SUIDGID;

/** fuse_read_in.read_flags */
export const FUSE_READ_LOCKOWNER = 1 << 1;

/** fuse_ioctl_in.flags */
export const FUSE_IOCTL_COMPAT = 1 << 0;
export const FUSE_IOCTL_UNRESTRICTED = 1 << 1;
export const FUSE_IOCTL_RETRY = 1 << 2;
export const FUSE_IOCTL_32BIT = 1 << 3;
export const FUSE_IOCTL_DIR = 1 << 4;
export const FUSE_IOCTL_COMPAT_X32 = 1 << 5;
export const FUSE_IOCTL_MAX_IOV = 256;

/** fuse_poll_in.flags */
export const FUSE_POLL_SCHEDULE_NOTIFY = 1 << 0;

/** fuse_fsync_in.fsync_flags */
export const FUSE_FSYNC_FDATASYNC = 1 << 0;

/** fuse_attr.flags */
export const FUSE_ATTR_SUBMOUNT = 1 << 0;
export const FUSE_ATTR_DAX = 1 << 1;

/** fuse_open_in.open_flags / fuse_create_in.open_flags */
export const FUSE_OPEN_KILL_SUIDGID = 1 << 0;

/** fuse_setxattr_in.setxattr_flags (only present with FUSE_SETXATTR_EXT) */
export const FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0;

/** fuse_notify_inval_entry_out.flags */
export const FUSE_EXPIRE_ONLY = 1 << 0;

/** fuse_setupmapping_in.flags */
export const FUSE_SETUPMAPPING_FLAG_WRITE = 1n << 0n;
export const FUSE_SETUPMAPPING_FLAG_READ = 1n << 1n;

/** Extension types 0..31 are fuse_secctx_header.nr_secctx values. */
export const FUSE_MAX_NR_SECCTX = 31;

/** Notification codes (server → kernel; virtio-fs has no notification queue in our setup). */
export const FUSE_NOTIFY_POLL = 1;
export const FUSE_NOTIFY_INVAL_INODE = 2;
export const FUSE_NOTIFY_INVAL_ENTRY = 3;
export const FUSE_NOTIFY_STORE = 4;
export const FUSE_NOTIFY_RETRIEVE = 5;
export const FUSE_NOTIFY_DELETE = 6;

// ---------------------------------------------------------------------------------------------
// Limits

/** The kernel rejects readdir names longer than this (fs/fuse/fuse_i.h FUSE_NAME_MAX). */
export const FUSE_NAME_MAX = 1024;
/** NAME_MAX of Linux filesystems: the longest single path component we accept as an entry. */
export const NAME_MAX = 255;
/** fuse_file_lock.end meaning "to the end of the file" is the kernel's OFFSET_MAX (LLONG_MAX). */
export const FUSE_OFFSET_MAX = 0x7fffffffffffffffn;
/** The kernel's /dev/fuse read buffer must be at least this big (reference only). */
export const FUSE_MIN_READ_BUFFER = 8192;

// ---------------------------------------------------------------------------------------------
// Struct sizes (bytes). Each was checked against fuse.h by summing its fields; the tests pin
// the layouts with golden bytes.

export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
export const ATTR_SIZE = 88;
export const KSTATFS_SIZE = 80;
export const FILE_LOCK_SIZE = 24;
export const ENTRY_OUT_SIZE = 128;
export const ATTR_OUT_SIZE = 104;
export const OPEN_OUT_SIZE = 16;
export const CREATE_OUT_SIZE = ENTRY_OUT_SIZE + OPEN_OUT_SIZE;
export const WRITE_OUT_SIZE = 8;
export const STATFS_OUT_SIZE = KSTATFS_SIZE;
export const GETXATTR_OUT_SIZE = 8;
export const LK_OUT_SIZE = FILE_LOCK_SIZE;
export const LSEEK_OUT_SIZE = 8;
export const INIT_OUT_SIZE = 64;
export const BMAP_OUT_SIZE = 8;
export const POLL_OUT_SIZE = 8;
export const IOCTL_OUT_SIZE = 16;

export const FORGET_IN_SIZE = 8;
export const FORGET_ONE_SIZE = 16;
export const BATCH_FORGET_IN_SIZE = 8;
export const GETATTR_IN_SIZE = 16;
export const SETATTR_IN_SIZE = 88;
export const MKNOD_IN_SIZE = 16;
export const MKDIR_IN_SIZE = 8;
export const RENAME_IN_SIZE = 8;
export const RENAME2_IN_SIZE = 16;
export const LINK_IN_SIZE = 8;
export const OPEN_IN_SIZE = 8;
export const CREATE_IN_SIZE = 16;
export const RELEASE_IN_SIZE = 24;
export const FLUSH_IN_SIZE = 24;
export const READ_IN_SIZE = 40;
export const WRITE_IN_SIZE = 40;
export const FSYNC_IN_SIZE = 16;
export const SETXATTR_IN_SIZE = 16;
export const GETXATTR_IN_SIZE = 8;
export const LK_IN_SIZE = 48;
export const ACCESS_IN_SIZE = 8;
export const INIT_IN_SIZE = 64;
export const INTERRUPT_IN_SIZE = 8;
export const BMAP_IN_SIZE = 16;
export const IOCTL_IN_SIZE = 32;
export const POLL_IN_SIZE = 24;
export const FALLOCATE_IN_SIZE = 32;
export const LSEEK_IN_SIZE = 24;
export const COPY_FILE_RANGE_IN_SIZE = 56;
export const SETUPMAPPING_IN_SIZE = 40;
/** fuse_removemapping_in is a lone u32; the fuse_removemapping_one array follows unaligned. */
export const REMOVEMAPPING_IN_SIZE = 4;
export const REMOVEMAPPING_ONE_SIZE = 16;
export const SYNCFS_IN_SIZE = 8;
export const NOTIFY_RETRIEVE_IN_SIZE = 40;
export const DIRENT_NAME_OFFSET = 24;
export const DIRENTPLUS_NAME_OFFSET = ENTRY_OUT_SIZE + DIRENT_NAME_OFFSET;

/** fuse_init_in before 7.36 (major, minor, max_readahead, flags); kernels >= 7.27 but < 7.36
 * still send this, so INIT accepts it. */
export const FUSE_COMPAT_INIT_IN_SIZE = 16;
/** fuse_setxattr_in without setxattr_flags/padding: what the kernel sends unless the server
 * agreed to FUSE_SETXATTR_EXT. */
export const FUSE_COMPAT_SETXATTR_IN_SIZE = 8;
// Reference only (minors < 27 are refused, so these shapes are never produced or accepted):
export const FUSE_COMPAT_ENTRY_OUT_SIZE = 120;
export const FUSE_COMPAT_ATTR_OUT_SIZE = 96;
export const FUSE_COMPAT_MKNOD_IN_SIZE = 8;
export const FUSE_COMPAT_WRITE_IN_SIZE = 24;
export const FUSE_COMPAT_STATFS_SIZE = 48;
export const FUSE_COMPAT_INIT_OUT_SIZE = 8;
export const FUSE_COMPAT_22_INIT_OUT_SIZE = 24;

/** Variable-length records (dirents) are padded to 8 bytes. */
export function fuseDirentAlign(n: number): number {
  return n + ((8 - (n % 8)) % 8);
}

/** How a parsed fuse_file_lock.end of "to the end of the file" (the kernel's OFFSET_MAX, or any
 * end beyond 2^53-1, which no real file reaches) is represented as a JS number; encodeLkOut maps
 * it back to OFFSET_MAX. */
export const LOCK_END_OF_FILE = Number.MAX_SAFE_INTEGER;
