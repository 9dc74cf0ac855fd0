// The caller's credentials around the syscalls made on its behalf.
//
// Decisions:
// - Operations that create or link names, open an existing name for CREATE, touch xattrs or
//   check access run with the caller's fsuid/fsgid, so the host kernel makes its own permission
//   checks and new files belong to the caller. They see the caller's uid and primary gid only:
//   FUSE does not pass supplementary groups.
// - Umask: new files are created with the process umask set to the request's umask when
//   FUSE_DONT_MASK was negotiated (the kernel then leaves masking to us; the host kernel skips it
//   for parents with a default ACL), else 0 (the guest kernel already masked the mode). The umask
//   is process-wide: it is swapped around the creating syscall on the JS thread only.
import { native } from '../../shared/native';
import type { Context } from './filesystem';

export class Credentials {
  /** FUSE_DONT_MASK was negotiated (set at INIT): creations apply the request's umask. */
  dontMask = false;
  /** The event-loop thread's own fs ids: a caller with these needs no switch. */
  private readonly ownUid = process.geteuid?.() ?? 0;
  private readonly ownGid = process.getegid?.() ?? 0;
  /** The process umask as last set here (null: not yet known). */
  private currentUmask: number | null = null;

  /** Runs fn with the caller's fsuid/fsgid (and, when umask !== null, the right process umask).
   * The fs ids are restored afterwards; the umask is left as set, since every creation here
   * sets its own and the rest of the worker only creates 0600 files (2 syscalls fewer). */
  runAs<T>(ctx: Context, umask: number | null, fn: () => T): T {
    if (umask !== null) {
      const want = this.dontMask ? umask & 0o777 : 0;
      if (want !== this.currentUmask) {
        process.umask(want);
        this.currentUmask = want;
      }
    }
    if (ctx.uid === this.ownUid && ctx.gid === this.ownGid) return fn();
    const [prevUid, prevGid] = native.setFsIds(ctx.uid, ctx.gid);
    try {
      return fn();
    } finally {
      native.setFsIds(prevUid, prevGid);
    }
  }
}
