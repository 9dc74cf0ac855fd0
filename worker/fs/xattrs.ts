// Extended attributes. Without the xattr option every xattr op answers ENOSYS (virtiofsd
// without -o xattr).
//
// Decisions:
// - Regular files and dirs are reopened O_RDONLY for the f*xattr calls, as virtiofsd does. For
//   other types virtiofsd uses path calls that follow the /proc/self/fd magic link, which the
//   addon does not offer (its path variants are the l* ones, which would act on the magic link
//   itself). So for symlinks and special files: get/list give EOPNOTSUPP, set/remove give EPERM.
// - trusted.* is not exposed: without CAP_SYS_ADMIN the kernel hides it, and a guest user must
//   not read host metadata such as overlayfs's trusted.overlay.* through our capability.
// - trusted.* and security.* (but security.capability) need CAP_SYS_ADMIN, which the worker
//   holds for itself and not for the guest: EPERM, as the kernel answers an unprivileged caller
//   and the C virtiofsd (which drops CAP_SYS_ADMIN) answers everyone. File capabilities
//   (security.capability) only for the guest's root.
// - The permission checks (user.* needs read or write access, ACLs need ownership) are the
//   kernel's, made with the caller's fs ids.
import { native } from '../../shared/native';
import { FsError, type Context, type NodeId } from './filesystem';
import type { FsSession } from './session';
import type { Credentials } from './credentials';
import type { Inodes } from './inodes';
import { inodeRecord } from './records';
import * as K from './host_constants';

const SECURITY_CAPABILITY = Buffer.from('security.capability');

/** The namespace of an xattr name (the part before the first '.'), as the kernel splits it. */
function xattrNamespace(name: Buffer): string {
  const dot = name.indexOf(0x2e);
  return dot < 0 ? '' : name.toString('latin1', 0, dot);
}

/** A listxattr result without the trusted.* names (the kernel lists them only to
 * CAP_SYS_ADMIN; we hold it, the guest does not). */
function filterXattrList(list: Buffer): Buffer {
  const keep: Buffer[] = [];
  let start = 0;
  while (start < list.length) {
    let end = list.indexOf(0, start);
    if (end < 0) end = list.length - 1;
    const name = list.subarray(start, end);
    if (xattrNamespace(name) !== 'trusted') keep.push(list.subarray(start, end + 1));
    start = end + 1;
  }
  return keep.length === 0 ? Buffer.alloc(0) : Buffer.concat(keep);
}

export class Xattrs {
  constructor(private readonly enabled: boolean, private readonly session: FsSession,
    private readonly inodes: Inodes, private readonly creds: Credentials) {}

  /** Sizes come from the guest: a value or list is never larger than the kernel's maximum, so
   * a larger buffer is never needed (a 0xffffffff request would otherwise allocate 4 GiB). */
  get(ctx: Context, nodeid: NodeId, name: Buffer, size: number): Buffer | number {
    if (xattrNamespace(name) === 'trusted') throw new FsError(K.ENODATA, 'trusted.* is not exposed');
    return this.withFd(nodeid, false, (fd) => this.creds.runAs(ctx, null, () => {
      if (size === 0) return native.getxattr(fd, name, null);
      const buf = Buffer.alloc(Math.min(size, K.XATTR_SIZE_MAX));
      const n = native.getxattr(fd, name, buf);
      return buf.subarray(0, n);
    }));
  }

  list(ctx: Context, nodeid: NodeId, size: number): Buffer | number {
    return this.withFd(nodeid, false, (fd) => {
      const buf = Buffer.alloc(K.XATTR_LIST_MAX);
      const list = filterXattrList(buf.subarray(0, this.creds.runAs(ctx, null, () => native.listxattr(fd, buf))));
      if (size === 0) return list.length;
      if (list.length > size) throw new FsError(K.ERANGE);
      return list;
    });
  }

  set(ctx: Context, nodeid: NodeId, name: Buffer, value: Buffer, flags: number): void {
    this.checkWrite(ctx, name);
    this.withFd(nodeid, true, (fd) => this.creds.runAs(ctx, null, () => native.setxattr(fd, name, value, flags)));
  }

  remove(ctx: Context, nodeid: NodeId, name: Buffer): void {
    this.checkWrite(ctx, name);
    this.withFd(nodeid, true, (fd) => this.creds.runAs(ctx, null, () => native.removexattr(fd, name)));
  }

  /** The inode reopened O_RDONLY for the duration of fn (regular files and dirs only). */
  private withFd<T>(nodeid: NodeId, forWrite: boolean, fn: (fd: number) => T): T {
    if (!this.enabled) throw new FsError(K.ENOSYS);
    const rec = inodeRecord(this.session, nodeid);
    if (rec.fileType !== K.S_IFREG && rec.fileType !== K.S_IFDIR) throw new FsError(forWrite ? K.EPERM : K.EOPNOTSUPP);
    return this.inodes.withTempFd(rec, K.O_RDONLY | K.O_NONBLOCK, fn);
  }

  private checkWrite(ctx: Context, name: Buffer): void {
    const ns = xattrNamespace(name);
    if (ns === 'trusted' || (ns === 'security' && (!name.equals(SECURITY_CAPABILITY) || ctx.uid !== 0))) {
      throw new FsError(K.EPERM, `xattr ${name.toString('latin1')} not settable by uid ${ctx.uid}`);
    }
  }
}
