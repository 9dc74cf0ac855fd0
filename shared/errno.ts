// The errno values of this platform, defined once: Node's os.constants.errno (the same table
// libuv compiles in from <errno.h>). Positive numbers, as FUSE replies negate them.
import { constants } from 'node:os';

const E = constants.errno;

export const EPERM = E.EPERM;
export const ENOENT = E.ENOENT;
export const EINTR = E.EINTR;
export const EIO = E.EIO;
export const EBADF = E.EBADF;
export const EAGAIN = E.EAGAIN;
export const ENOMEM = E.ENOMEM;
export const EACCES = E.EACCES;
export const EEXIST = E.EEXIST;
export const ENOTDIR = E.ENOTDIR;
export const EISDIR = E.EISDIR;
export const EINVAL = E.EINVAL;
export const ENFILE = E.ENFILE;
export const EMFILE = E.EMFILE;
export const EFBIG = E.EFBIG;
export const ENOSPC = E.ENOSPC;
export const EROFS = E.EROFS;
export const ERANGE = E.ERANGE;
export const ENOLCK = E.ENOLCK;
export const ENOSYS = E.ENOSYS;
export const ELOOP = E.ELOOP;
export const ENODATA = E.ENODATA;
export const EPROTO = E.EPROTO;
export const EOVERFLOW = E.EOVERFLOW;
export const ENOBUFS = E.ENOBUFS;
export const EOPNOTSUPP = E.EOPNOTSUPP;
export const ETXTBSY = E.ETXTBSY;
export const ESTALE = E.ESTALE;
