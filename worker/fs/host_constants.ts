// Host constants the filesystem layer passes to syscalls: open/at/openat2 flags, S_IF* types,
// lock and seek values, errno (re-exported from the one table) and the FUSE flag words the
// FileSystem interface speaks in (re-exported from the FUSE ABI leaf, not copied).
//
// Syscall constants come from the addon (`C`, read from the C headers); each has the Linux
// x86-64/generic value as a fallback so that a constant the addon does not export yet cannot
// silently become `undefined` (which would turn into 0 in bit arithmetic).
import { C } from '../../shared/native';

function k(name: string, linuxValue: number): number {
  const v = C[name];
  return typeof v === 'number' ? v : linuxValue;
}

// --- open(2)
export const O_RDONLY = k('O_RDONLY', 0);
export const O_WRONLY = k('O_WRONLY', 1);
export const O_RDWR = k('O_RDWR', 2);
export const O_ACCMODE = k('O_ACCMODE', 3);
export const O_CREAT = k('O_CREAT', 0o100);
export const O_EXCL = k('O_EXCL', 0o200);
export const O_NOCTTY = k('O_NOCTTY', 0o400);
export const O_TRUNC = k('O_TRUNC', 0o1000);
export const O_APPEND = k('O_APPEND', 0o2000);
export const O_NONBLOCK = k('O_NONBLOCK', 0o4000);
export const O_DSYNC = k('O_DSYNC', 0o10000);
export const O_DIRECT = k('O_DIRECT', 0o40000);
export const O_LARGEFILE = k('O_LARGEFILE', 0o100000);
export const O_DIRECTORY = k('O_DIRECTORY', 0o200000);
export const O_NOFOLLOW = k('O_NOFOLLOW', 0o400000);
export const O_NOATIME = k('O_NOATIME', 0o1000000);
export const O_CLOEXEC = k('O_CLOEXEC', 0o2000000);
export const O_SYNC = k('O_SYNC', 0o4010000);
export const O_PATH = k('O_PATH', 0o10000000);
export const O_TMPFILE = k('O_TMPFILE', 0o20200000);

// --- *at(2)
export const AT_FDCWD = k('AT_FDCWD', -100);
export const AT_SYMLINK_NOFOLLOW = k('AT_SYMLINK_NOFOLLOW', 0x100);
export const AT_REMOVEDIR = k('AT_REMOVEDIR', 0x200);
export const AT_SYMLINK_FOLLOW = k('AT_SYMLINK_FOLLOW', 0x400);
export const AT_EMPTY_PATH = k('AT_EMPTY_PATH', 0x1000);
export const AT_EACCESS = k('AT_EACCESS', 0x200);

// --- openat2(2)
export const RESOLVE_NO_XDEV = k('RESOLVE_NO_XDEV', 0x01);
export const RESOLVE_NO_MAGICLINKS = k('RESOLVE_NO_MAGICLINKS', 0x02);
export const RESOLVE_NO_SYMLINKS = k('RESOLVE_NO_SYMLINKS', 0x04);
export const RESOLVE_BENEATH = k('RESOLVE_BENEATH', 0x08);

// --- stat(2)
export const S_IFMT = k('S_IFMT', 0o170000);
export const S_IFSOCK = k('S_IFSOCK', 0o140000);
export const S_IFLNK = k('S_IFLNK', 0o120000);
export const S_IFREG = k('S_IFREG', 0o100000);
export const S_IFBLK = k('S_IFBLK', 0o060000);
export const S_IFDIR = k('S_IFDIR', 0o040000);
export const S_IFCHR = k('S_IFCHR', 0o020000);
export const S_IFIFO = k('S_IFIFO', 0o010000);
export const S_ISUID = k('S_ISUID', 0o4000);
export const S_ISGID = k('S_ISGID', 0o2000);
export const S_IXGRP = k('S_IXGRP', 0o010);
export const FILE_TYPES: readonly number[] = [S_IFSOCK, S_IFLNK, S_IFREG, S_IFBLK, S_IFDIR, S_IFCHR, S_IFIFO];

// --- fcntl(2) / flock(2) / lseek(2)
export const F_RDLCK = k('F_RDLCK', 0);
export const F_WRLCK = k('F_WRLCK', 1);
export const F_UNLCK = k('F_UNLCK', 2);
export const F_OFD_GETLK = k('F_OFD_GETLK', 36);
export const F_OFD_SETLK = k('F_OFD_SETLK', 37);
export const LOCK_SH = k('LOCK_SH', 1);
export const LOCK_EX = k('LOCK_EX', 2);
export const LOCK_NB = k('LOCK_NB', 4);
export const LOCK_UN = k('LOCK_UN', 8);
export const SEEK_SET = k('SEEK_SET', 0);

// --- misc
export const RENAME_NOREPLACE = k('RENAME_NOREPLACE', 1);
export const RENAME_EXCHANGE = k('RENAME_EXCHANGE', 2);
export const RENAME_WHITEOUT = k('RENAME_WHITEOUT', 4);
export const UTIME_NOW = k('UTIME_NOW', (1 << 30) - 1);
export const UTIME_OMIT = k('UTIME_OMIT', (1 << 30) - 2);
export const R_OK = 4;
export const W_OK = 2;
export const X_OK = 1;

// --- errno (one table for the whole program: shared/errno.ts)
export {
  EPERM, ENOENT, EINTR, EIO, EEXIST, ENODATA, ERANGE, EBADF, EACCES, EISDIR, EFBIG, EINVAL, ENOTDIR, EAGAIN, ENOLCK, ENOSYS, ELOOP, EOPNOTSUPP,
  EMFILE, ENFILE, EROFS, ETXTBSY, ESTALE,
} from '../../shared/errno';
/** Largest xattr value and list (linux/limits.h XATTR_SIZE_MAX, XATTR_LIST_MAX). */
export const XATTR_SIZE_MAX = 65536;
export const XATTR_LIST_MAX = 65536;

// --- FUSE flag words the FileSystem interface speaks in (defined once, in the FUSE layer).
export {
  FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE, FATTR_ATIME, FATTR_MTIME, FATTR_FH, FATTR_ATIME_NOW,
  FATTR_MTIME_NOW, FATTR_LOCKOWNER, FATTR_CTIME, FATTR_KILL_SUIDGID,
  FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_NONSEEKABLE, FOPEN_CACHE_DIR,
  FUSE_WRITE_CACHE, FUSE_WRITE_LOCKOWNER, FUSE_WRITE_KILL_SUIDGID,
  FUSE_RELEASE_FLUSH, FUSE_RELEASE_FLOCK_UNLOCK,
  FUSE_DONT_MASK, FUSE_WRITEBACK_CACHE, FUSE_HANDLE_KILLPRIV_V2,
} from '../fuse/constants';

/** Largest file offset: GETLK's end for a lock "to EOF". As a JS number this is 2^63; the FUSE
 * server's encodeLkOut sends any end at or above 2^53-1 as 0x7fffffffffffffff. */
export const OFFSET_MAX = 0x7fffffffffffffff;
