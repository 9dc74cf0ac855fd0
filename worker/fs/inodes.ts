// The inode table's fds: lookup of one name, '..', dedup by (dev, ino), reopening an inode for
// I/O, and dropping inodes on FORGET.
//
// Model (like C virtiofsd's lo_inode and libfuse's passthrough_hp):
// - One O_PATH|O_NOFOLLOW fd per inode, registered as "inode.<nodeid>" ("root" for nodeid 1),
//   deduplicated by (st_dev, st_ino). Inode identity is pinned by that fd: while we hold it the
//   inode cannot be freed, so its (dev, ino) cannot be reused and its file type cannot change.
// - Lookups: openat2(parentFd, name, O_PATH|O_NOFOLLOW, RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS)
//   with a single validated path component, so nothing outside the shared directory is ever
//   reached and symlinks are never followed by us.
// - Ops on an inode use its O_PATH fd with AT_EMPTY_PATH where the syscall supports that, or
//   reopen it through "/proc/self/fd/<fd>" (how virtiofsd opens inodes: the magic link leads to
//   exactly the pinned inode). Reopening is refused for symlinks (ELOOP) and for anything that is
//   not a regular file or directory (EBADF, as virtiofsd's lo_inode_open), so device nodes,
//   FIFOs and sockets in the share are never opened.
//
// Decisions:
// - LOOKUP of a missing name: ENOENT (no negative entries).
// - '..' at the root is the root, '.' is the dir itself. '..' elsewhere is resolved beneath the
//   root (see lookupDotDot).
// - Generation is always 0 (fds pin inodes, so a nodeid never refers to a reused inode number).
// - With file handles on (inode_fds.ts), a new inode on the share's mount is recorded with its
//   name_to_handle_at handle and its fd goes to the worker's cache, not the keeper. No fd pins
//   it then, so (dev, ino) alone no longer proves identity: a known (dev, ino) is the known
//   inode only if the name's handle is the recorded one; otherwise the number was reused and
//   the name gets a new nodeid (the old one answers ESTALE).
import type { Logger } from '../../shared/log';
import { native, STAT, type ServedNewInode } from '../../shared/native';
import { BugError, errorInfo } from '../../shared/errors';
import { LogRateLimiter } from '../../shared/rate_limit';
import { at } from '../../shared/pinned_dirs';
import { FsError, type Entry, type NodeId } from './filesystem';
import { ROOT_FD_NAME, inodeFdName, type FsSession, type InodeHandle, type InodeRecord } from './session';
import type { InodeHandleSupport } from './inode_fds';
import { FUSE_ROOT_ID } from '../fuse/constants';
import type { FdLifetime } from './fd_lifetime';
import { inodeRecord } from './records';
import { checkComponent, isDot, isDotDot } from './path_component';
import * as K from './host_constants';
import { keepHandle, keepHandleFrom } from './handle_bytes';
import { MAX_HANDLE_BYTES } from './session_base';

const LOOKUP_RESOLVE = K.RESOLVE_BENEATH | K.RESOLVE_NO_MAGICLINKS;
/** Where native.fstatHandle puts an inode's file handle (i32 mount id, i32 type, the bytes):
 * read at once, kept only for a new inode (keepHandleFrom). */
const HANDLE_SCRATCH = Buffer.alloc(8 + MAX_HANDLE_BYTES);
const HANDLE_AT = 8;
/** Names remembered for the LOOKUP fast path (lookupKnown). */
const RECENT_LOOKUPS_MAX = 16_384;

/** Where /proc/self/fd/<fd> (the magic link to what `fd` refers to) opens: through the pinned
 * /proc/self/fd once the worker is confined (shared/pinned_dirs.ts). */
export function procFd(fd: number): { dirFd: number; name: string } {
  return at(`/proc/self/fd/${fd}`);
}

export function statFd(fd: number): Buffer {
  const st = Buffer.allocUnsafe(STAT.SIZE); // fully written by fstatat
  native.fstatat(fd, '', K.AT_EMPTY_PATH | K.AT_SYMLINK_NOFOLLOW, st);
  return st;
}

export class Inodes {
  /** A name that LOOKUP resolved before, to try lookupKnown first. Bounded: cleared when full
   * (a miss only costs the fstatat). Stale entries are harmless: the fstatat decides. */
  private readonly recentLookups = new Set<string>(); // `${parent}/${name}`
  private readonly shortage = new LogRateLimiter();

  constructor(private readonly session: FsSession, private readonly fds: FdLifetime,
    private readonly timeout: number, private readonly log: Logger,
    private readonly handles: InodeHandleSupport | null = null) {}

  private get handlesOn(): boolean {
    return this.handles !== null && this.handles.active && this.fds.local !== null;
  }

  /** The mount whose new inodes adopt() names by file handle, or null (handles off). */
  get handleMountId(): number | null {
    return this.handlesOn ? this.handles!.mountId : null;
  }

  /** The attributes of the inode of `fd` (O_PATH) into `stat`, and the length of its handle in
   * HANDLE_SCRATCH, or -1: handles off, another mount, or the filesystem refuses (the inode then
   * keeps an fd in the keeper). One addon call; fstat's failure throws. */
  private statAndHandle(fd: number, stat: Buffer): number {
    if (!this.handlesOn) {
      native.fstatat(fd, '', K.AT_EMPTY_PATH | K.AT_SYMLINK_NOFOLLOW, stat);
      return -1;
    }
    const n = native.fstatHandle(fd, stat, HANDLE_SCRATCH);
    return n >= 0 && HANDLE_SCRATCH.readInt32LE(0) === this.handles!.mountId ? n : -1;
  }

  /** Whether the handle in HANDLE_SCRATCH (`length` bytes) is `h`. */
  private static scratchIs(h: InodeHandle, length: number): boolean {
    return h.mountId === HANDLE_SCRATCH.readInt32LE(0) && h.handleType === HANDLE_SCRATCH.readInt32LE(4) &&
      h.handle.length === length && HANDLE_SCRATCH.compare(h.handle, 0, length, HANDLE_AT, HANDLE_AT + length) === 0;
  }

  entry(rec: InodeRecord, stat: Buffer): Entry {
    return { nodeid: rec.nodeid, generation: rec.generation, stat, entryTimeout: this.timeout, attrTimeout: this.timeout };
  }

  lookup(parent: NodeId, name: Buffer): Entry {
    checkComponent(name, true);
    const dir = inodeRecord(this.session, parent);
    if (isDot(name) || (isDotDot(name) && parent === FUSE_ROOT_ID)) {
      if (dir.fileType !== K.S_IFDIR) throw new FsError(K.ENOTDIR);
      const stat = statFd(this.fds.get(dir.fdName));
      return this.entry(this.session.addLookup(dir.nodeid), stat);
    }
    if (isDotDot(name)) {
      if (dir.fileType !== K.S_IFDIR) throw new FsError(K.ENOTDIR);
      return this.lookupDotDot(dir);
    }
    const key = `${parent}/${name.toString('latin1')}`;
    const seen = this.recentLookups.has(key);
    const entry = this.lookupChild(this.fds.get(dir.fdName), name, seen);
    if (!seen) this.rememberLookup(key);
    return entry;
  }

  forget(nodeid: NodeId, nlookup: number): void {
    if (this.session.getInode(nodeid) === undefined) {
      this.log.debug({ nodeid }, 'forget of unknown nodeid');
      return;
    }
    if (!Number.isSafeInteger(nlookup) || nlookup < 0) nlookup = Number.MAX_SAFE_INTEGER;
    const dropped = this.session.forget(nodeid, nlookup);
    if (dropped !== null) this.fds.close(dropped.fdName);
  }

  /** Takes ownership of `fd` (an O_PATH fd of the inode a name resolved to): dedups it against
   * the inode table (closing it when the inode is known) or adds a new inode. Adds one lookup. */
  adopt(fd: number): Entry {
    const stat = Buffer.allocUnsafe(STAT.SIZE); // fully written by fstatat
    let handleLen: number;
    try {
      handleLen = this.statAndHandle(fd, stat);
    } catch (e) {
      native.close(fd);
      throw e;
    }
    const dev = stat.readBigUInt64LE(STAT.dev);
    const ino = stat.readBigUInt64LE(STAT.ino);
    const known = this.session.findInode(dev, ino);
    if (known !== undefined && (known.handle === null || handleLen < 0 || Inodes.scratchIs(known.handle, handleLen))) {
      native.close(fd);
      return this.entry(this.session.addLookup(known.nodeid), stat);
    }
    const fileType = stat.readUInt32LE(STAT.mode) & K.S_IFMT;
    if (handleLen >= 0) {
      // Kept as long as the inode is known: see handle_bytes.ts.
      const handle = keepHandleFrom(HANDLE_SCRATCH.readInt32LE(0), HANDLE_SCRATCH.readInt32LE(4), HANDLE_SCRATCH, HANDLE_AT, handleLen);
      return this.entry(this.addByHandle(dev, ino, fileType, handle, fd), stat);
    }
    if (!this.fds.hasInodeRoom()) {
      native.close(fd);
      this.fds.ensureRoom(1, 0);
    }
    const rec = this.fds.registerThenRecord(inodeFdName(this.session.nextNodeId), fd,
      () => this.session.addInode({ dev, ino, generation: 0, fileType }));
    return this.entry(rec, stat);
  }

  /**
   * adopt() of an inode the addon's LOOKUP found and numbered `nodeid` (fast_fuse.cc
   * LookupNew: a (dev, ino) the session did not know, on the handles' mount): it joins the
   * session with that nodeid, its fd the cache, exactly as adopt() would have added it. The
   * addon takes the session's next nodeid, and its batch is applied before anything else can
   * take one. Were that ever not so (a bug), the reply waiting to be published names a nodeid
   * the session may have given another inode, or an inode it already has under another: this
   * throws, and the worker dies before the publish; its successor runs the LOOKUP again.
   */
  adoptFound(nodeid: NodeId, found: ServedNewInode): void {
    const handleMountId = this.handleMountId;
    if (this.session.nextNodeId !== nodeid || handleMountId === null || found.mountId !== handleMountId ||
      this.session.findInode(found.dev, found.ino) !== undefined) {
      this.log.error({ nodeid, next: this.session.nextNodeId, handles: handleMountId !== null }, 'fast-path LOOKUP numbered an inode the session cannot take; dying before its reply is published');
      throw new BugError(`fast-path LOOKUP gave nodeid ${nodeid}, the session's next is ${this.session.nextNodeId}`);
    }
    this.addByHandle(found.dev, found.ino, found.fileType, keepHandle(found.mountId, found.handleType, found.handle), found.fd);
  }

  /** A new inode named by `handle`: journaled with it; its O_PATH fd (if one was opened: -1
   * for none) is only cached here (the keeper gets none), or closed if the session refuses the
   * inode. */
  private addByHandle(dev: bigint, ino: bigint, fileType: number, handle: InodeHandle, fd: number): InodeRecord {
    let rec: InodeRecord;
    try {
      rec = this.session.addInode({ dev, ino, generation: 0, fileType, handle });
    } catch (e) {
      if (fd >= 0) native.close(fd);
      throw e;
    }
    if (fd >= 0) this.fds.local!.insert(rec.fdName, fd);
    return rec;
  }

  /** Looks up one plain component (validated by the caller) under the dir fd. `knownHint`:
   * the name probably resolves to an inode we already hold (a cached lookup, or a readdir
   * entry whose d_ino is in the table), so try one fstatat first. */
  lookupChild(dirFd: number, name: Buffer, knownHint = false): Entry {
    // Out of fds, an inode we hold is still found without a new one. With handles on, a new
    // inode needs no keeper fd (one on another mount is checked in adopt()).
    const room = this.fds.hasInodeRoom(!this.handlesOn);
    if (knownHint || !room) {
      const known = this.lookupKnown(dirFd, name);
      if (known !== null) return known;
    }
    if (!room) this.fds.ensureRoom(1, 0);
    let fd: number;
    try {
      fd = native.openat2(dirFd, name, K.O_PATH | K.O_NOFOLLOW | K.O_CLOEXEC, 0, LOOKUP_RESOLVE);
    } catch (e) {
      const errno = (e as { errno?: number }).errno;
      if (errno !== K.EMFILE && errno !== K.ENFILE) throw e;
      const known = this.lookupKnown(dirFd, name);
      if (known !== null) return known;
      // Cached inode fds are the ones we can give back; else this lookup fails, nothing else.
      try {
        if (!this.fds.relieve()) throw e;
        fd = native.openat2(dirFd, name, K.O_PATH | K.O_NOFOLLOW | K.O_CLOEXEC, 0, LOOKUP_RESOLVE);
      } catch (e2) {
        const dropped = this.shortage.admit();
        if (dropped !== null) this.log.warn({ err: errorInfo(e2), dropped }, 'out of fds: a lookup fails with EMFILE/ENFILE');
        throw e2;
      }
    }
    return this.adopt(fd);
  }

  /** fstatat of the name (no symlink followed; a single component, so nothing to escape
   * through): when (dev, ino) is an inode we hold, that is the answer without opening a
   * second fd. Safe because our fd pins the inode, so its number cannot have been reused; an
   * inode named by a handle is pinned only while the worker's cache holds its fd, otherwise
   * the name's handle must be its handle. */
  private lookupKnown(dirFd: number, name: Buffer): Entry | null {
    const stat = Buffer.allocUnsafe(STAT.SIZE);
    try {
      native.fstatat(dirFd, name, K.AT_SYMLINK_NOFOLLOW, stat);
    } catch {
      return null; // let the full path produce the errno
    }
    return this.knownFromStat(dirFd, name, stat);
  }

  /** lookupKnown with the name's fstatat (AT_SYMLINK_NOFOLLOW, under dirFd) already done.
   * `name()` gives the name, asked for only when a handle must be compared. */
  private knownFromStat(dirFd: number, name: Buffer | (() => Buffer), stat: Buffer): Entry | null {
    const known = this.session.findInode(stat.readBigUInt64LE(STAT.dev), stat.readBigUInt64LE(STAT.ino));
    if (known === undefined) return null;
    if (known.handle !== null && this.fds.local?.holds(known.fdName) !== true) {
      const h = known.handle;
      try {
        if (!native.sameHandleAt(dirFd, typeof name === 'function' ? name() : name, 0, h.mountId, h.handleType, h.handle)) return null;
      } catch {
        return null;
      }
    }
    return this.entry(this.session.addLookup(known.nodeid), stat);
  }

  /** lookupChild of a readdir entry, its name the `length` bytes at src[at], whose fstatat
   * under dirFd was just made (fstatatDirents): `stat` (kept by the entry, not copied), or null
   * when it failed or was not tried. A known inode costs no further syscall (but the handle
   * check of lookupKnown) and no view of the name; anything else takes the full path, which
   * also produces the errno. */
  lookupChildStat(dirFd: number, src: Buffer, at: number, length: number, stat: Buffer | null): Entry {
    const name = (): Buffer => src.subarray(at, at + length);
    if (stat !== null) {
      const known = this.knownFromStat(dirFd, name, stat);
      if (known !== null) return known;
    }
    if (this.handlesOn && this.fds.local?.full === true) {
      const listed = this.listedByHandle(dirFd, name());
      if (listed !== null) return listed;
    }
    return this.lookupChild(dirFd, name(), false);
  }

  /** A readdir entry the session may not know, with handles on and the inode fd cache full: its
   * attributes and handle read by name, nothing opened. An fd would only evict another one now
   * (a listing larger than the cache: its fds would be opened, cached and closed again before
   * any use); its first use opens it by handle. While the cache has room, an entry's fd is kept
   * as a LOOKUP's is: `cp -r` and `grep -r` open what they list. null when
   * the full path must decide: a stat or handle error (it produces the errno), another mount,
   * or a known number whose recorded handle is not the name's (a reused number).
   * The stat and the handle are two lookups of the name: a host that swaps the name between
   * them leaves an inode whose handle is not its (dev, ino), which then opens as ESTALE
   * (InodeFdCache checks every open by handle against the recorded number), never as
   * another file. */
  private listedByHandle(dirFd: number, name: Buffer): Entry | null {
    const stat = Buffer.allocUnsafe(STAT.SIZE); // fully written by fstatat; the entry keeps it
    let handleLen: number;
    try {
      handleLen = native.fstatHandleAt(dirFd, name, stat, HANDLE_SCRATCH);
    } catch {
      return null;
    }
    if (handleLen < 0 || HANDLE_SCRATCH.readInt32LE(0) !== this.handles!.mountId) return null;
    const dev = stat.readBigUInt64LE(STAT.dev);
    const ino = stat.readBigUInt64LE(STAT.ino);
    const known = this.session.findInode(dev, ino);
    if (known !== undefined) {
      if (known.handle !== null && !Inodes.scratchIs(known.handle, handleLen)) return null;
      return this.entry(this.session.addLookup(known.nodeid), stat);
    }
    const handle = keepHandleFrom(HANDLE_SCRATCH.readInt32LE(0), HANDLE_SCRATCH.readInt32LE(4), HANDLE_SCRATCH, HANDLE_AT, handleLen);
    const rec = this.session.addInode({ dev, ino, generation: 0, fileType: stat.readUInt32LE(STAT.mode) & K.S_IFMT, handle });
    return this.entry(rec, stat);
  }

  private rememberLookup(key: string): void {
    if (this.recentLookups.size >= RECENT_LOOKUPS_MAX) this.recentLookups.clear();
    this.recentLookups.add(key);
  }

  /** '..' of a dir other than the root. The dir's host path (from /proc/self/fd) must lie under
   * the root's; the relative path is then re-resolved beneath the root fd with no symlinks and
   * checked to still be this dir, and its '..' is opened, also beneath the root. A dir that was
   * moved out of the shared directory (by the host) has no parent for us: ENOENT. */
  private lookupDotDot(dir: InodeRecord): Entry {
    const rootFd = this.fds.get(ROOT_FD_NAME);
    const dirFd = this.fds.get(dir.fdName);
    const rootLink = procFd(rootFd);
    const dirLink = procFd(dirFd);
    const rootPath = native.readlinkat(rootLink.dirFd, rootLink.name);
    const dirPath = native.readlinkat(dirLink.dirFd, dirLink.name);
    const prefix = rootPath.length === 1 && rootPath[0] === 0x2f ? rootPath : Buffer.concat([rootPath, Buffer.from('/')]);
    if (dirPath.length <= prefix.length || !dirPath.subarray(0, prefix.length).equals(prefix)) {
      throw new FsError(K.ENOENT, 'directory is not below the shared directory');
    }
    const rel = dirPath.subarray(prefix.length);
    const resolve = K.RESOLVE_BENEATH | K.RESOLVE_NO_MAGICLINKS | K.RESOLVE_NO_SYMLINKS;
    const check = native.openat2(rootFd, rel, K.O_PATH | K.O_NOFOLLOW | K.O_DIRECTORY | K.O_CLOEXEC, 0, resolve);
    try {
      const st = statFd(check);
      if (st.readBigUInt64LE(STAT.dev) !== dir.dev || st.readBigUInt64LE(STAT.ino) !== dir.ino) {
        throw new FsError(K.ENOENT, 'directory moved while resolving ..');
      }
    } finally {
      native.close(check);
    }
    const parentFd = native.openat2(rootFd, Buffer.concat([rel, Buffer.from('/..')]),
      K.O_PATH | K.O_NOFOLLOW | K.O_DIRECTORY | K.O_CLOEXEC, 0, resolve);
    return this.adopt(parentFd);
  }

  /** Opens the inode for I/O through /proc/self/fd (virtiofsd's lo_inode_open). */
  reopen(rec: InodeRecord, flags: number): number {
    if (rec.fileType === K.S_IFLNK) throw new FsError(K.ELOOP);
    if (rec.fileType !== K.S_IFREG && rec.fileType !== K.S_IFDIR) throw new FsError(K.EBADF, 'not a regular file or directory');
    // /proc/self/fd is a pinned fd once the worker is confined (shared/pinned_dirs.ts).
    const { dirFd, name } = procFd(this.fds.get(rec.fdName));
    return native.openat(dirFd, name, (flags & ~K.O_NOFOLLOW) | K.O_CLOEXEC, 0);
  }

  /** reopen() for the duration of fn (the fd is not registered). */
  withTempFd<T>(rec: InodeRecord, flags: number, fn: (fd: number) => T): T {
    const fd = this.reopen(rec, flags);
    try {
      return fn(fd);
    } finally {
      native.close(fd);
    }
  }
}
