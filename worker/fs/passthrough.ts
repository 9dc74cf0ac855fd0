// The passthrough filesystem: every FUSE operation becomes syscalls on the shared directory.
// PassthroughFs is the FileSystem the FUSE server calls; it validates an operation's ids and
// names and hands each concern to its own file:
//   inodes.ts          lookup of one name, '..', the inode fds and their dedup, reopening
//   inode_fds.ts       inodes named by file handles: their fds in a bounded cache, reopened by handle
//   fd_lifetime.ts     registering, lending out and closing the fds the session names
//   records.ts         the session records of nodeids and fhs, with the errnos for bad ids
//   path_component.ts  the names the guest gives for one directory entry
//   credentials.ts     the caller's fsuid/fsgid and the umask around a syscall
//   io.ts              READ and WRITE, the fast paths first
//   dir_cursor.ts      READDIR positions and buffered entries
//   locks.ts           POSIX locks per lock owner, and flock locks (lock_waiter.ts parks SETLKW)
//   xattrs.ts          extended attributes
// All table changes go through FsSession (session.ts), which can be journaled/snapshotted.
//
// Decisions:
// - Open files and dirs: one fd each, "file.<fh>" / "dir.<fh>".
// - Cache modes: timeouts never=0, auto=1 s, always=86400 s; open flags never=DIRECT_IO,
//   always=KEEP_CACHE, auto=0; opendir always=CACHE_DIR.
// - O_DIRECT is dropped from open flags (virtiofsd's default without allow_direct_io: guest
//   memory segments need not meet O_DIRECT alignment). With FUSE_WRITEBACK_CACHE, O_WRONLY
//   becomes O_RDWR and O_APPEND is dropped (the guest page cache does appends then).
// - access(): faccessat2(AT_EACCESS) on the inode fd with the caller's fs ids: the kernel's own
//   check (ACLs, read-only mounts, immutable files).
import type { CacheMode } from '../../shared/config';
import type { Logger } from '../../shared/log';
import { logger as makeLogger } from '../../shared/log';
import { native, STAT } from '../../shared/native';
import type { FastFuseHandle, IoSegment, ServedFile, ServedNewInode, ServedReaddir, StatFs } from '../../shared/native';
import { DIRENTPLUS_NAME_OFFSET, ENTRY_OUT_SIZE, OUT_HEADER_SIZE, fuseDirentAlign } from '../fuse/constants';
import type { FdRegistry } from '../../shared/fd_registry';
import {
  FsError,
  type AttrReply, type Context, type DirSink, type Entry, type EntryProbe, type FileSystem, type Handle,
  type LockRange, type NodeId, type OpenReply, type SetattrRequest,
} from './filesystem';
import { FsSession, FsSessionError, ROOT_FD_NAME, dirFdName, fileFdName, type InodeRecord } from './session';
import { FdLifetime } from './fd_lifetime';
import { Credentials } from './credentials';
import { Inodes, procFd, statFd } from './inodes';
import { dirInodeRecord, dirRecord, fileRecord, inodeRecord } from './records';
import { checkComponent } from './path_component';
import { FileIo, checkOffset, killSuidGid } from './io';
import { DirCursors } from './dir_cursor';
import { Locks } from './locks';
import { Xattrs } from './xattrs';
import { FastTable } from './fast_table';
import { InodeFdCache, probeHandles, type InodeFileHandles, type InodeHandleSupport } from './inode_fds';
import { BugError, ConfigurationError } from '../../shared/errors';
import type { InodeHandleStats } from '../../shared/status_report';
import * as K from './host_constants';

/** Open flags that act at the open itself: dropped when a successor opens an fh again. */
const FIRST_OPEN_ONLY = K.O_CREAT | K.O_EXCL | K.O_TRUNC | K.O_NOCTTY;

export interface PassthroughOptions {
  registry: FdRegistry;
  /** The shared directory; opened O_PATH|O_DIRECTORY and registered as "root". */
  sharedDir?: string;
  /** An open fd of the shared directory (O_PATH or O_RDONLY). Registered as "root" unless the
   * registry already holds it under that name. Ownership passes to the registry. */
  rootFd?: number;
  /** Default 'auto'. */
  cache?: CacheMode;
  /** Default false: every xattr op answers ENOSYS (virtiofsd without -o xattr). */
  xattr?: boolean;
  logger?: Logger;
  /** Resume: a session restored with FsSession.fromSnapshot(). Every fd it names must already be
   * in the registry (handed back by the keeper); fds named like ours that the session does not
   * know are closed. Without it a new session is started. */
  session?: FsSession;
  /** On resume, fstat every inode fd and check its (dev, ino) against the session. Default true. */
  verifyOnResume?: boolean;
  /** RLIMIT_NOFILE wanted (each inode holds an fd). Default 1,000,000. */
  noFileLimit?: number;
  /** getdents64 buffer size. Default 32 KiB. */
  readdirBufferSize?: number;
  /** Parked SETLKW waits at most (beyond: ENOLCK). Default 1024. */
  maxLockWaits?: number;
  /** Name new inodes by file handles instead of keeper fds (inode_fds.ts). Default 'never'
   * here; the CLI's default is 'prefer'. 'mandatory' without support throws a ConfigurationError. */
  inodeFileHandles?: InodeFileHandles;
  /** How many O_PATH fds of handle-named inodes the worker keeps open. Default 4096. */
  inodeFdCache?: number;
  /** The addon's FUSE fast path, whose tables this filesystem keeps (fast_table.ts). */
  fastPath?: FastFuseHandle | null;
}

/** O_PATH fds of handle-named inodes the worker keeps open, at most (and at most an eighth of
 * its fd limit: worker.ts inodeFdCacheSize). Each costs ~0.5 KiB of kernel memory and pins its
 * inode; the C virtiofsd keeps one for every inode the guest knows. 4096 evicted (a close and
 * a table update each) on every new inode of a 10,000-entry directory, and named the rest by
 * name_to_handle_at when listed again: LOOKUP of 10,000 new names cost 33 -> 28 µs of backend
 * CPU each with room for them all (measured with the limit lifted, 26-27k -> 31-32k/s). */
export const DEFAULT_INODE_FD_CACHE = 16384;



const TIMEOUTS: Record<CacheMode, number> = { never: 0, auto: 1.0, always: 86400 };
const NO_ID = -1;
/** Open flags we pass on to open(2) for FUSE_OPEN/FUSE_CREATE. Everything else is dropped. */
const PASS_OPEN_FLAGS = K.O_ACCMODE | K.O_APPEND | K.O_NONBLOCK | K.O_DSYNC | K.O_SYNC | K.O_NOATIME |
  K.O_TRUNC | K.O_LARGEFILE;

function checkNsec(v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 999_999_999) throw new FsError(K.EINVAL, `nanoseconds ${v} out of range`);
  return v;
}

export class PassthroughFs implements FileSystem {
  readonly session: FsSession;
  readonly cache: CacheMode;
  readonly xattr: boolean;
  private readonly registry: FdRegistry;
  private readonly log: Logger;
  private readonly timeout: number;
  private readonly fds: FdLifetime;
  private readonly handles: InodeHandleSupport;
  private readonly fdCache: InodeFdCache;
  private readonly creds = new Credentials();
  private readonly locks: Locks;
  private readonly inodes: Inodes;
  private readonly dirs: DirCursors;
  private readonly io: FileIo;
  private readonly xattrs: Xattrs;
  private writeback = false;
  /** At the resume: open files and dirs opened again by handle, and those that could not be. */
  private handlesReopened = 0;
  private handlesLost = 0;
  /** The fast path's tables, when the addon serves hot requests itself. */
  readonly fastTable: FastTable | null = null;

  constructor(opts: PassthroughOptions) {
    this.registry = opts.registry;
    this.log = opts.logger ?? makeLogger('fs');
    this.cache = opts.cache ?? 'auto';
    if (!(this.cache in TIMEOUTS)) throw new TypeError(`invalid cache mode ${String(this.cache)}`);
    this.timeout = TIMEOUTS[this.cache];
    this.xattr = opts.xattr ?? false;

    try {
      const limit = native.raiseNoFileLimit(opts.noFileLimit ?? 1_000_000);
      this.log.debug({ limit }, 'RLIMIT_NOFILE');
    } catch (e) {
      this.log.warn({ err: e }, 'could not raise RLIMIT_NOFILE');
    }

    const rootFd = this.setupRootFd(opts);
    const st = Buffer.alloc(STAT.SIZE);
    native.fstatat(rootFd, '', K.AT_EMPTY_PATH | K.AT_SYMLINK_NOFOLLOW, st);
    const mode = st.readUInt32LE(STAT.mode);
    if ((mode & K.S_IFMT) !== K.S_IFDIR) throw new FsError(K.ENOTDIR, 'the shared directory is not a directory');
    const dev = st.readBigUInt64LE(STAT.dev);
    const ino = st.readBigUInt64LE(STAT.ino);

    this.session = opts.session === undefined ? new FsSession({ dev, ino }) : opts.session;
    this.handles = probeHandles(opts.inodeFileHandles ?? 'never', rootFd);
    if (this.handles.mode === 'mandatory' && !this.handles.active) {
      throw new ConfigurationError(`--inode-file-handles mandatory: ${this.handles.reason ?? 'unavailable'}`);
    }
    if (this.handles.reason !== null) this.log.warn({ reason: this.handles.reason }, 'inode file handles unavailable; every inode holds an fd in the keeper');
    // Always there: a resumed session may name inodes by handle whatever the mode is now.
    this.fdCache = new InodeFdCache(this.session, () => this.fds.get(ROOT_FD_NAME), opts.inodeFdCache ?? DEFAULT_INODE_FD_CACHE, this.log);
    this.fds = new FdLifetime(this.registry, this.log, this.fdCache);
    this.locks = new Locks(this.session, this.fds, opts.maxLockWaits, this.log);
    this.inodes = new Inodes(this.session, this.fds, this.timeout, this.log, this.handles);
    this.dirs = new DirCursors(this.session, this.inodes, this.log, opts.readdirBufferSize ?? 32 * 1024);
    this.io = new FileIo(this.session, this.fds);
    this.xattrs = new Xattrs(this.xattr, this.session, this.inodes, this.creds);
    if (opts.session !== undefined) this.resume(dev, ino, opts.verifyOnResume ?? true);
    if (opts.fastPath) {
      // New inodes are the addon's to add only where adopt() would name them by handle.
      this.fastTable = new FastTable(opts.fastPath, this.session, this.registry, this.fdCache,
        this.inodes.handleMountId, { log: this.log });
      const sec = Math.floor(this.timeout);
      opts.fastPath.setAttrTimeout(sec, Math.round((this.timeout - sec) * 1e9));
      // GETXATTR reopens inodes through /proc/self/fd as xattrs.ts does (a pinned fd once
      // the worker is confined).
      opts.fastPath.setXattr(this.xattr, procFd(0).dirFd);
      const fast = opts.fastPath;
      this.dirs.movedElsewhere = (fh) => fast.takeDir(fh);
    }
  }

  private setupRootFd(opts: PassthroughOptions): number {
    const registered = this.registry.get(ROOT_FD_NAME);
    if (opts.rootFd !== undefined && opts.sharedDir !== undefined) {
      throw new TypeError('give rootFd or sharedDir, not both');
    }
    if (opts.rootFd !== undefined) {
      if (registered === undefined) this.registry.register(ROOT_FD_NAME, opts.rootFd);
      else if (registered !== opts.rootFd) throw new TypeError(`a different fd (${registered}) is registered as "root"`);
      return opts.rootFd;
    }
    if (opts.sharedDir !== undefined) {
      if (registered !== undefined) throw new TypeError('"root" is already registered; pass rootFd instead of sharedDir');
      const fd = native.openat(K.AT_FDCWD, opts.sharedDir, K.O_PATH | K.O_DIRECTORY | K.O_CLOEXEC, 0);
      this.registry.register(ROOT_FD_NAME, fd);
      return fd;
    }
    if (registered !== undefined) return registered;
    throw new TypeError('PassthroughFs needs rootFd or sharedDir (or a registered "root" fd)');
  }

  /** Checks a restored session against the fds handed back by the keeper. */
  private resume(rootDev: bigint, rootIno: bigint, verify: boolean): void {
    const s = this.session;
    if (s.root.dev !== rootDev || s.root.ino !== rootIno) {
      throw new FsSessionError(`session root (${s.root.dev}, ${s.root.ino}) is not the shared directory (${rootDev}, ${rootIno})`);
    }
    // Inodes named by handles have no fd in the keeper: they are opened by handle when used.
    const names = new Set(s.keeperFdNames());
    this.reopenUnstored(names);
    for (const name of names) {
      if (!this.registry.has(name)) throw new FsSessionError(`session names fd "${name}" but the registry has none`);
    }
    if (verify) {
      const st = Buffer.alloc(STAT.SIZE);
      for (const rec of s.inodesWithoutHandle()) {
        native.fstatat(this.registry.get(rec.fdName)!, '', K.AT_EMPTY_PATH | K.AT_SYMLINK_NOFOLLOW, st);
        if (st.readBigUInt64LE(STAT.dev) !== rec.dev || st.readBigUInt64LE(STAT.ino) !== rec.ino) {
          throw new FsSessionError(`fd "${rec.fdName}" is not inode (${rec.dev}, ${rec.ino})`);
        }
      }
    }
    this.fds.closeStrays(names, (name, fd) => this.locks.unlockStray(name, fd));
    for (const d of s.allDirs()) this.dirs.resumed(d.fh);
    this.log.info({ inodes: s.inodeCount, files: s.fileCount, dirs: s.dirCount, lockOwners: s.lockOwnerCount },
      'filesystem session resumed');
  }

  /**
   * The open files and dirs of handle-named inodes whose fds the keeper never got (a worker
   * died before sending them: KeeperClient.sendSoon) are opened again by handle with their
   * journaled flags, less those that only mattered at the first open. One that cannot be (its
   * inode is gone: unlinked on the host and closed) leaves `names` and keeps its record
   * without an fd: its requests answer EBADF and its RELEASE drops it, as the guest's close of
   * a file whose backing vanished would.
   */
  private reopenUnstored(names: Set<string>): void {
    const reopen = (fdName: string, nodeid: number, flags: number): void => {
      if (this.registry.has(fdName)) return;
      const inode = this.session.getInode(nodeid);
      // Not reopenable: resume() refuses a session naming an fd the keeper lacks.
      if (inode === undefined || inode.handle === null) return;
      try {
        this.registry.register(fdName, this.inodes.reopen(inode, flags), true);
        this.handlesReopened++;
      } catch (e) {
        names.delete(fdName);
        this.handlesLost++;
        this.log.warn({ fdName, nodeid, err: e }, 'an open file the keeper never held could not be opened again by its handle; the guest gets EBADF through it');
      }
    };
    for (const f of this.session.allFiles()) reopen(f.fdName, f.nodeid, f.flags & ~FIRST_OPEN_ONLY);
    for (const d of this.session.allDirs()) reopen(d.fdName, d.nodeid, K.O_RDONLY | K.O_DIRECTORY);
    if (this.handlesReopened > 0) this.log.info({ reopened: this.handlesReopened }, 'opened again by handle the open files and dirs the keeper never got');
  }

  /** Inode handles for `status`. */
  get inodeHandleStats(): InodeHandleStats {
    return {
      mode: this.handles.mode, active: this.handles.active, reason: this.handles.reason,
      byHandle: this.session.handleInodeCount, byFd: this.session.inodeCount - this.session.handleInodeCount,
      cachedFds: this.fdCache.size, cacheCapacity: this.fdCache.capacity, opensByHandle: this.fdCache.opens,
      handlesReopened: this.handlesReopened, handlesLost: this.handlesLost,
    };
  }

  // ================================================================ helpers

  private openFlags(flags: number): number {
    let f = flags & PASS_OPEN_FLAGS;
    if (this.writeback) {
      if ((f & K.O_ACCMODE) === K.O_WRONLY) f = (f & ~K.O_ACCMODE) | K.O_RDWR;
      f &= ~K.O_APPEND;
    }
    return f;
  }

  private fileOpenFlags(): number {
    return this.cache === 'never' ? K.FOPEN_DIRECT_IO : this.cache === 'always' ? K.FOPEN_KEEP_CACHE : 0;
  }

  /** Registers an opened file fd under a new fh. `reopenable` false: a successor could not open
   * the file again by its inode's handle (O_TMPFILE: nothing names it once our fd is gone), so
   * the keeper must hold it first. */
  private addFile(inode: InodeRecord, fd: number, flags: number, reopenable = true): OpenReply {
    const rec = this.fds.registerThenRecord(fileFdName(this.session.nextFh), fd, () => this.session.openFile(inode.nodeid, flags),
      reopenable && inode.handle !== null);
    this.locks.opened(rec.fdName);
    return { fh: rec.fh, openFlags: this.fileOpenFlags() };
  }

  private fileFd(nodeid: NodeId, fh: Handle): number {
    return this.fds.get(fileRecord(this.session, nodeid, fh).fdName);
  }

  private dirFd(nodeid: NodeId): number {
    return this.fds.get(dirInodeRecord(this.session, nodeid).fdName);
  }

  // ================================================================ session

  init(flags: bigint): void {
    this.creds.dontMask = (flags & K.FUSE_DONT_MASK) !== 0n;
    this.writeback = (flags & K.FUSE_WRITEBACK_CACHE) !== 0n;
    // The addon's OPEN passes on the flags open() does, as openFlags() adjusts them.
    this.fastTable?.server.setOpenPolicy(PASS_OPEN_FLAGS, this.writeback, this.fileOpenFlags(), this.dirOpenFlags());
    // The addon creates with umask 0, as runAs does without FUSE_DONT_MASK.
    this.fastTable?.server.setCreatePolicy(!this.creds.dontMask);
    this.log.info({ cache: this.cache, xattr: this.xattr, dontMask: this.creds.dontMask, writeback: this.writeback },
      'filesystem initialised');
  }

  destroy(): void {
    // Before the fds go: a parked wait holds its fh's fd busy.
    this.locks.endAll();
    const names = this.session.reset();
    // Closed in bulk, except those async calls still use.
    this.fds.closeMany(names);
    this.fdCache.closeMountFd();
    this.dirs.clear();
    this.log.info({ closed: names.length }, 'filesystem session reset');
  }

  // ================================================================ names

  lookup(ctx: Context, parent: NodeId, name: Buffer): Entry {
    return this.inodes.lookup(parent, name);
  }

  addLookup(nodeid: NodeId): void {
    this.session.addLookup(nodeid);
  }

  adoptServedInode(nodeid: NodeId, found: ServedNewInode): void {
    if (this.fastTable === null) this.inodes.adoptFound(nodeid, found);
    else this.fastTable.whileAddonAdds(nodeid, () => this.inodes.adoptFound(nodeid, found));
  }

  /** open() of a file the addon opened as it would (fast_fuse.cc Open): the same registration
   * and session record; the fh must be the one the session gives next. */
  adoptServedOpen(nodeid: NodeId, file: ServedFile): void {
    const rec = this.session.getInode(nodeid);
    if (rec === undefined || rec.handle === null || file.fh !== this.session.nextFh) {
      native.close(file.fd);
      throw new BugError(`fast-path OPEN of nodeid ${nodeid} as fh ${file.fh}: the session's next fh is ${this.session.nextFh}` +
        `${rec === undefined ? ', and the inode is unknown' : rec.handle === null ? ', and the inode has no handle' : ''}`);
    }
    this.addFile(rec, file.fd, file.flags);
  }

  /** create() of a file the addon created as it would (fast_fuse.cc Create): its inode as a
   * LOOKUP's new one, its file as an OPEN's. */
  adoptServedCreate(nodeid: NodeId, found: ServedNewInode, file: ServedFile): void {
    try {
      this.adoptServedInode(nodeid, found);
    } catch (e) {
      native.close(file.fd);
      throw e;
    }
    this.adoptServedOpen(nodeid, file);
  }

  releaseServed(nodeid: NodeId, file: ServedFile): void {
    this.checkServedFd(fileFdName(file.fh), file);
    this.releaseFh(nodeid, file.fh);
  }

  /** opendir() of a dir the addon opened as it would (fast_fuse.cc Opendir). */
  adoptServedOpendir(nodeid: NodeId, dir: ServedFile): void {
    const rec = this.session.getInode(nodeid);
    if (rec === undefined || rec.handle === null || rec.fileType !== K.S_IFDIR || dir.fh !== this.session.nextFh) {
      native.close(dir.fd);
      throw new BugError(`fast-path OPENDIR of nodeid ${nodeid} as fh ${dir.fh}: the session's next fh is ${this.session.nextFh}, ` +
        `the inode ${rec === undefined ? 'unknown' : `of type ${rec.fileType.toString(8)}, ${rec.handle === null ? 'without' : 'with'} a handle`}`);
    }
    const opened = this.fds.registerThenRecord(dirFdName(dir.fh), dir.fd, () => this.session.openDir(nodeid), true);
    this.dirs.opened(opened.fh);
  }

  /** readdir() of a READDIRPLUS the addon served as it would (fast_fuse.cc Readdirplus): one
   * more lookup of each entry's nodeid in `reply` (its out header, then direntplus records),
   * and the dir's new position. Throws (the worker dies before the reply is published) for a
   * reply it cannot read or a dir or inode the session does not have: the addon serves only
   * from the session's tables. */
  readdirplusServed(nodeid: NodeId, served: ServedReaddir, reply: Buffer): void {
    const rec = this.session.getDir(served.fh);
    if (rec === undefined || rec.nodeid !== nodeid) throw new BugError(`fast-path READDIRPLUS of fh ${served.fh}, not an open dir of nodeid ${nodeid}`);
    let next = 0;
    for (let at = OUT_HEADER_SIZE; at < reply.length;) {
      if (at + DIRENTPLUS_NAME_OFFSET > reply.length) throw new BugError(`fast-path READDIRPLUS reply of ${reply.length} bytes cut at ${at}`);
      const entryNodeid = Number(reply.readBigUInt64LE(at));
      const added = served.newInodes[next];
      if (added !== undefined && added.nodeid === entryNodeid) {
        // A name the session did not know: the addon added its inode, as a LOOKUP's.
        this.adoptServedInode(entryNodeid, added.inode);
        next++;
      } else if (entryNodeid !== 0) {
        this.session.addLookup(entryNodeid);
      }
      at += fuseDirentAlign(DIRENTPLUS_NAME_OFFSET + reply.readUInt32LE(at + ENTRY_OUT_SIZE + 16));
    }
    if (next !== served.newInodes.length) {
      for (const n of served.newInodes.slice(next)) { if (n.inode.fd >= 0) native.close(n.inode.fd); }
      throw new BugError(`fast-path READDIRPLUS added ${served.newInodes.length} inodes, ${next} of them in its reply`);
    }
    if (served.position !== rec.position) this.session.setDirPosition(served.fh, served.position);
    // takeDir says so too; this does not depend on the addon's flag.
    this.dirs.movedBy(served.fh);
  }

  releasedirServed(nodeid: NodeId, dir: ServedFile): void {
    this.checkServedFd(dirFdName(dir.fh), dir);
    this.releaseDirFh(nodeid, dir.fh);
  }

  private checkServedFd(name: string, file: ServedFile): void {
    if (this.registry.get(name) !== file.fd) {
      throw new BugError(`fast-path release of ${name}: the addon's fd ${file.fd} is not the registered one`);
    }
  }

  forget(nodeid: NodeId, nlookup: number): void {
    this.inodes.forget(nodeid, nlookup);
  }

  getattr(ctx: Context, nodeid: NodeId, fh: Handle | null): AttrReply {
    const rec = inodeRecord(this.session, nodeid);
    return { stat: statFd(this.fds.get(rec.fdName)), attrTimeout: this.timeout };
  }

  setattr(ctx: Context, nodeid: NodeId, attr: SetattrRequest): AttrReply {
    const rec = inodeRecord(this.session, nodeid);
    const inodeFd = this.fds.get(rec.fdName);
    const valid = attr.valid;
    const fileFd = (valid & K.FATTR_FH) !== 0 ? this.fileFd(nodeid, attr.fh) : null;

    if (valid & K.FATTR_MODE) {
      const mode = attr.mode & 0o7777;
      if (fileFd !== null) native.fchmod(fileFd, mode);
      else if (rec.fileType === K.S_IFLNK) throw new FsError(K.EOPNOTSUPP, 'chmod of a symlink');
      else {
        const link = procFd(inodeFd);
        native.fchmodat(link.dirFd, link.name, mode, 0);
      }
    }
    if (valid & (K.FATTR_UID | K.FATTR_GID)) {
      const uid = valid & K.FATTR_UID ? attr.uid : NO_ID;
      const gid = valid & K.FATTR_GID ? attr.gid : NO_ID;
      native.fchownat(inodeFd, '', uid, gid, K.AT_EMPTY_PATH | K.AT_SYMLINK_NOFOLLOW);
    }
    if (valid & K.FATTR_SIZE) {
      if (!Number.isSafeInteger(attr.size) || attr.size < 0) throw new FsError(K.EFBIG);
      if (fileFd !== null) native.ftruncate(fileFd, attr.size);
      else if (rec.fileType === K.S_IFDIR) throw new FsError(K.EISDIR);
      else if (rec.fileType !== K.S_IFREG) throw new FsError(K.EINVAL);
      else this.inodes.withTempFd(rec, K.O_WRONLY, (fd) => native.ftruncate(fd, attr.size));
    }
    if (valid & (K.FATTR_ATIME | K.FATTR_MTIME | K.FATTR_ATIME_NOW | K.FATTR_MTIME_NOW)) {
      const [as, an] = valid & K.FATTR_ATIME_NOW ? [0, K.UTIME_NOW]
        : valid & K.FATTR_ATIME ? [attr.atime, checkNsec(attr.atimeNsec)] : [0, K.UTIME_OMIT];
      const [ms, mn] = valid & K.FATTR_MTIME_NOW ? [0, K.UTIME_NOW]
        : valid & K.FATTR_MTIME ? [attr.mtime, checkNsec(attr.mtimeNsec)] : [0, K.UTIME_OMIT];
      if (fileFd !== null) native.utimensat(fileFd, null, as, an, ms, mn, 0);
      else native.utimensat(inodeFd, '', as, an, ms, mn, K.AT_EMPTY_PATH | K.AT_SYMLINK_NOFOLLOW);
    }
    if ((valid & K.FATTR_KILL_SUIDGID) && (valid & (K.FATTR_SIZE | K.FATTR_UID | K.FATTR_GID)) &&
        rec.fileType === K.S_IFREG) {
      killSuidGid(inodeFd);
    }
    return { stat: statFd(inodeFd), attrTimeout: this.timeout };
  }

  readlink(ctx: Context, nodeid: NodeId): Buffer {
    const rec = inodeRecord(this.session, nodeid);
    if (rec.fileType !== K.S_IFLNK) throw new FsError(K.EINVAL);
    return native.readlinkat(this.fds.get(rec.fdName), '');
  }

  symlink(ctx: Context, parent: NodeId, name: Buffer, target: Buffer): Entry {
    checkComponent(name, false);
    const dirFd = this.dirFd(parent);
    this.fds.ensureRoom(1, 0);
    this.creds.runAs(ctx, null, () => native.symlinkat(target, dirFd, name));
    return this.inodes.lookupChild(dirFd, name);
  }

  mknod(ctx: Context, parent: NodeId, name: Buffer, mode: number, rdev: number, umask: number): Entry {
    checkComponent(name, false);
    const dirFd = this.dirFd(parent);
    const type = mode & K.S_IFMT;
    this.fds.ensureRoom(1, 0);
    this.creds.runAs(ctx, umask, () => native.mknodat(dirFd, name, (type === 0 ? K.S_IFREG : type) | (mode & 0o7777), rdev));
    return this.inodes.lookupChild(dirFd, name);
  }

  mkdir(ctx: Context, parent: NodeId, name: Buffer, mode: number, umask: number): Entry {
    checkComponent(name, false);
    const dirFd = this.dirFd(parent);
    this.fds.ensureRoom(1, 0);
    this.creds.runAs(ctx, umask, () => native.mkdirat(dirFd, name, mode & 0o7777));
    return this.inodes.lookupChild(dirFd, name);
  }

  unlink(ctx: Context, parent: NodeId, name: Buffer): void {
    checkComponent(name, false);
    const dirFd = this.dirFd(parent);
    this.keepOpenFilesReachable();
    native.unlinkat(dirFd, name, 0);
  }

  rmdir(ctx: Context, parent: NodeId, name: Buffer): void {
    checkComponent(name, false);
    const dirFd = this.dirFd(parent);
    this.keepOpenFilesReachable();
    native.unlinkat(dirFd, name, K.AT_REMOVEDIR);
  }

  /** A file or dir open through an fh and unlinked can no longer be opened by its handle once
   * our fd is gone: before a step that may remove a name, the keeper must hold every open
   * fd, reopenable ones included (KeeperClient.settle; test/crash/fd_shortage.test.ts). */
  private keepOpenFilesReachable(): void {
    this.registry.settle();
  }

  rename(ctx: Context, parent: NodeId, name: Buffer, newParent: NodeId, newName: Buffer, flags: number): void {
    checkComponent(name, false);
    checkComponent(newName, false);
    if ((flags & ~(K.RENAME_NOREPLACE | K.RENAME_EXCHANGE | K.RENAME_WHITEOUT)) !== 0) throw new FsError(K.EINVAL, 'rename flags');
    const oldFd = this.dirFd(parent);
    const newFd = this.dirFd(newParent);
    // A rename over an existing name unlinks it.
    this.keepOpenFilesReachable();
    native.renameat2(oldFd, name, newFd, newName, flags);
  }

  link(ctx: Context, nodeid: NodeId, newParent: NodeId, newName: Buffer): Entry {
    checkComponent(newName, false);
    const rec = inodeRecord(this.session, nodeid);
    if (rec.fileType === K.S_IFDIR) throw new FsError(K.EPERM, 'hard link to a directory');
    const dirFd = this.dirFd(newParent);
    const inodeFd = this.fds.get(rec.fdName);
    this.fds.ensureRoom(1, 0);
    // As virtiofsd: the magic link leads to exactly our inode (a symlink itself, not its target)
    // and needs no CAP_DAC_READ_SEARCH, unlike AT_EMPTY_PATH.
    const link = procFd(inodeFd);
    this.creds.runAs(ctx, null, () => native.linkat(link.dirFd, link.name, dirFd, newName, K.AT_SYMLINK_FOLLOW));
    const stat = statFd(inodeFd);
    return this.inodes.entry(this.session.addLookup(rec.nodeid), stat);
  }

  // ================================================================ files

  open(ctx: Context, nodeid: NodeId, flags: number): OpenReply {
    const rec = inodeRecord(this.session, nodeid);
    const f = this.openFlags(flags);
    this.fds.ensureRoom(0, 1);
    const fd = this.inodes.reopen(rec, f);
    return this.addFile(rec, fd, f);
  }

  /** Creates with O_EXCL always: open(O_CREAT) of an existing name would open whatever is
   * there, a device node or FIFO included (CVE-2020-35517's class: a guest-made 1:5 node read
   * as the host's /dev/zero, a FIFO blocking the worker). An existing name the guest did not
   * ask O_EXCL for is opened as OPEN would open it: regular files only (virtiofsd's lo_create). */
  create(ctx: Context, parent: NodeId, name: Buffer, mode: number, flags: number, umask: number): { entry: Entry; open: OpenReply } {
    checkComponent(name, false);
    const dirFd = this.dirFd(parent);
    const f = this.openFlags(flags);
    // Its inode and its open file.
    this.fds.ensureRoom(1, 1);
    let fd: number;
    try {
      fd = this.creds.runAs(ctx, umask, () => native.openat2(dirFd, name, f | K.O_CREAT | K.O_EXCL | K.O_NOFOLLOW | K.O_CLOEXEC,
        mode & 0o7777, K.RESOLVE_BENEATH | K.RESOLVE_NO_MAGICLINKS | K.RESOLVE_NO_SYMLINKS));
    } catch (e) {
      if ((flags & K.O_EXCL) !== 0 || (e as { errno?: number }).errno !== K.EEXIST) throw e;
      return this.openExisting(ctx, dirFd, name, f);
    }
    return this.adoptOpened(fd, f & ~K.O_TRUNC);
  }

  /** CREATE of a name that exists: look it up and open it with the caller's credentials, as
   * open(2) with O_CREAT would, but never anything that is not a regular file (reopen). */
  private openExisting(ctx: Context, dirFd: number, name: Buffer, flags: number): { entry: Entry; open: OpenReply } {
    const entry = this.inodes.lookupChild(dirFd, name);
    let open: OpenReply;
    try {
      const rec = inodeRecord(this.session, entry.nodeid);
      if (rec.fileType === K.S_IFDIR) throw new FsError(K.EISDIR, 'create of an existing directory');
      const fd = this.creds.runAs(ctx, null, () => this.inodes.reopen(rec, flags));
      open = this.addFile(rec, fd, flags & ~K.O_TRUNC);
    } catch (e) {
      this.inodes.forget(entry.nodeid, 1);
      throw e;
    }
    return { entry, open };
  }

  tmpfile(ctx: Context, parent: NodeId, mode: number, flags: number, umask: number): { entry: Entry; open: OpenReply } {
    const dirFd = this.dirFd(parent);
    let f = this.openFlags(flags) & ~K.O_TRUNC;
    if ((f & K.O_ACCMODE) === K.O_RDONLY) f |= K.O_RDWR;
    this.fds.ensureRoom(1, 1);
    const fd = this.creds.runAs(ctx, umask, () => native.openat2(dirFd, '.', f | K.O_TMPFILE | K.O_CLOEXEC, mode & 0o7777,
      K.RESOLVE_BENEATH | K.RESOLVE_NO_MAGICLINKS | K.RESOLVE_NO_SYMLINKS));
    return this.adoptOpened(fd, f, false);
  }

  /** For create/tmpfile: the inode fd comes from the new file's own fd (the exact inode, no
   * second name resolution), then the file fd gets an fh. */
  private adoptOpened(fileFd: number, flags: number, reopenable = true): { entry: Entry; open: OpenReply } {
    let entry: Entry;
    try {
      const link = procFd(fileFd);
      entry = this.inodes.adopt(native.openat(link.dirFd, link.name, K.O_PATH | K.O_CLOEXEC, 0));
    } catch (e) {
      native.close(fileFd);
      throw e;
    }
    let open: OpenReply;
    try {
      open = this.addFile(inodeRecord(this.session, entry.nodeid), fileFd, flags, reopenable);
    } catch (e) {
      this.inodes.forget(entry.nodeid, 1);
      throw e;
    }
    return { entry, open };
  }

  read(ctx: Context, nodeid: NodeId, fh: Handle, offset: number, size: number, segments: IoSegment[]): number | Promise<number> {
    return this.io.read(nodeid, fh, offset, size, segments);
  }

  write(ctx: Context, nodeid: NodeId, fh: Handle, offset: number, size: number, segments: IoSegment[],
    writeFlags: number): number | Promise<number> {
    return this.io.write(nodeid, fh, offset, size, segments, writeFlags);
  }

  flush(ctx: Context, nodeid: NodeId, fh: Handle, lockOwner: bigint): void {
    // As virtiofsd: close(dup(fd)), which is what close() would do for the file on the host
    // (matters for filesystems with close-to-open semantics such as NFS). The guest closed one
    // of lockOwner's fds: its POSIX locks on the inode go (flock locks belong to the fh).
    const fd = this.fileFd(nodeid, fh);
    native.close(native.dup(fd));
    this.locks.flush(nodeid, lockOwner);
  }

  flushChangesState(nodeid: NodeId, lockOwner: bigint): boolean {
    return this.locks.hasOwner(nodeid, lockOwner);
  }

  release(ctx: Context, nodeid: NodeId, fh: Handle, flags: number, releaseFlags: number, lockOwner: bigint): void {
    this.releaseFh(nodeid, fh);
  }

  private releaseFh(nodeid: NodeId, fh: Handle): void {
    const rec = fileRecord(this.session, nodeid, fh);
    // Every lock taken through the fh goes, whatever releaseFlags says (FUSE_RELEASE_FLOCK_UNLOCK included).
    this.locks.release(nodeid, fh, rec.fdName);
    this.session.closeFile(fh);
    this.fds.close(rec.fdName);
  }

  async fsync(ctx: Context, nodeid: NodeId, fh: Handle, dataOnly: boolean): Promise<void> {
    const rec = fileRecord(this.session, nodeid, fh);
    return this.fds.runAsync<void>([rec.fdName], ([fd], cb) => native.fsync(fd, dataOnly, cb));
  }

  statfs(ctx: Context, nodeid: NodeId): StatFs {
    // fstatfs works on O_PATH fds (fd_raw) since Linux 2.6.39.
    return native.fstatfs(this.fds.get(inodeRecord(this.session, nodeid).fdName));
  }

  async syncfs(ctx: Context, nodeid: NodeId): Promise<void> {
    // syncfs(2) refuses O_PATH fds: open the inode (or, for a non-regular, non-directory inode,
    // the root) read-only for the duration of the call.
    const rec = inodeRecord(this.session, nodeid);
    const target = rec.fileType === K.S_IFREG || rec.fileType === K.S_IFDIR ? rec : this.session.root;
    const fd = this.inodes.reopen(target, K.O_RDONLY | K.O_NONBLOCK);
    return new Promise<void>((resolve, reject) => {
      try {
        native.syncfs(fd, (err) => {
          native.close(fd);
          if (err) reject(err);
          else resolve();
        });
      } catch (e) {
        native.close(fd);
        reject(e);
      }
    });
  }

  // ================================================================ directories

  opendir(ctx: Context, nodeid: NodeId, flags: number): OpenReply {
    const rec = dirInodeRecord(this.session, nodeid);
    this.fds.ensureRoom(0, 1);
    const fd = this.inodes.reopen(rec, K.O_RDONLY | K.O_DIRECTORY);
    // Reopened by handle after a death, a dir's position is its journaled cookie (dir_cursor.ts).
    const dir = this.fds.registerThenRecord(dirFdName(this.session.nextFh), fd, () => this.session.openDir(nodeid), rec.handle !== null);
    this.dirs.opened(dir.fh);
    return { fh: dir.fh, openFlags: this.dirOpenFlags() };
  }

  private dirOpenFlags(): number {
    return this.cache === 'always' ? K.FOPEN_CACHE_DIR : 0;
  }

  readdir(ctx: Context, nodeid: NodeId, fh: Handle, offset: bigint, plus: boolean, sink: DirSink): void {
    const rec = dirRecord(this.session, nodeid, fh);
    this.dirs.readdir(fh, rec, this.fds.get(rec.fdName), offset, plus, sink);
  }

  releasedir(ctx: Context, nodeid: NodeId, fh: Handle): void {
    this.releaseDirFh(nodeid, fh);
  }

  private releaseDirFh(nodeid: NodeId, fh: Handle): void {
    const rec = dirRecord(this.session, nodeid, fh);
    this.session.closeDir(fh);
    this.dirs.closed(fh);
    this.fds.close(rec.fdName);
  }

  async fsyncdir(ctx: Context, nodeid: NodeId, fh: Handle, dataOnly: boolean): Promise<void> {
    const rec = dirRecord(this.session, nodeid, fh);
    return this.fds.runAsync<void>([rec.fdName], ([fd], cb) => native.fsync(fd, dataOnly, cb));
  }

  // ================================================================ xattrs and access

  getxattr(ctx: Context, nodeid: NodeId, name: Buffer, size: number): Buffer | number {
    return this.xattrs.get(ctx, nodeid, name, size);
  }

  listxattr(ctx: Context, nodeid: NodeId, size: number): Buffer | number {
    return this.xattrs.list(ctx, nodeid, size);
  }

  setxattr(ctx: Context, nodeid: NodeId, name: Buffer, value: Buffer, flags: number): void {
    this.xattrs.set(ctx, nodeid, name, value, flags);
  }

  removexattr(ctx: Context, nodeid: NodeId, name: Buffer): void {
    this.xattrs.remove(ctx, nodeid, name);
  }

  access(ctx: Context, nodeid: NodeId, mask: number): void {
    const rec = inodeRecord(this.session, nodeid);
    const want = mask & (K.R_OK | K.W_OK | K.X_OK);
    // The kernel decides, as for the caller's own access(2): AT_EACCESS checks with the fs ids
    // runAs sets, so ACLs, read-only mounts and immutable files count, and the owner class
    // wins over group and other (a 0077 file is closed to its owner).
    this.creds.runAs(ctx, null, () => native.faccessat(this.fds.get(rec.fdName), '', want, K.AT_EACCESS | K.AT_EMPTY_PATH));
  }

  // ================================================================ locks

  getlk(ctx: Context, nodeid: NodeId, fh: Handle, owner: bigint, lock: LockRange): LockRange {
    return this.locks.getlk(nodeid, owner, this.fileFd(nodeid, fh), lock);
  }

  setlk(ctx: Context, nodeid: NodeId, fh: Handle, owner: bigint, lock: LockRange, sleep: boolean,
    isFlock: boolean, signal?: AbortSignal): void | Promise<void> {
    const rec = fileRecord(this.session, nodeid, fh);
    if (!isFlock) {
      // POSIX: a write lock needs an fd open for writing, a read lock one open for reading (the
      // owner's own open file description is read-write, so this is checked on the fh).
      const accmode = rec.flags & K.O_ACCMODE;
      if ((lock.type === K.F_WRLCK && accmode === K.O_RDONLY) || (lock.type === K.F_RDLCK && accmode === K.O_WRONLY)) {
        throw new FsError(K.EBADF, 'lock type does not match the open mode');
      }
    } else {
      // A flock lock lives on the fh's own open file description: only the keeper's copy keeps
      // it across our death (a description reopened by handle would not have it).
      this.registry.settle();
    }
    return this.locks.setlk(nodeid, fh, rec.fdName, owner, lock, sleep, isFlock, signal);
  }

  /** SETLKW waits parked now (for status and tests). */
  get parkedLockWaits(): number {
    return this.locks.parked;
  }

  // ================================================================ ranges

  async fallocate(ctx: Context, nodeid: NodeId, fh: Handle, mode: number, offset: number, length: number): Promise<void> {
    const rec = fileRecord(this.session, nodeid, fh);
    checkOffset(offset, 'offset');
    checkOffset(length, 'length');
    return this.fds.runAsync<void>([rec.fdName], ([fd], cb) => native.fallocate(fd, mode, offset, length, cb));
  }

  lseek(ctx: Context, nodeid: NodeId, fh: Handle, offset: number, whence: number): number {
    return native.lseek(this.fileFd(nodeid, fh), checkOffset(offset, 'offset'), whence);
  }

  async copyFileRange(ctx: Context, nodeidIn: NodeId, fhIn: Handle, offIn: number, nodeidOut: NodeId, fhOut: Handle,
    offOut: number, length: number, flags: number): Promise<number> {
    const a = fileRecord(this.session, nodeidIn, fhIn);
    const b = fileRecord(this.session, nodeidOut, fhOut);
    checkOffset(offIn, 'offset');
    checkOffset(offOut, 'offset');
    checkOffset(length, 'length');
    const names = a.fdName === b.fdName ? [a.fdName] : [a.fdName, b.fdName];
    return this.fds.runAsync<number>(names, (fds, cb) =>
      native.copyFileRange(fds[0], offIn, fds[fds.length - 1], offOut, length, flags, cb));
  }

  // ================================================================ probes (no lookup counts)

  /** Never throws (the FUSE server calls it around requests it is settling): a name that is
   * not a plain component, an unknown or non-directory parent, or a failed fstatat give null. */
  probeEntry(parent: NodeId, name: Buffer): EntryProbe | null {
    try {
      checkComponent(name, false);
      const dirFd = this.dirFd(parent);
      const st = Buffer.alloc(STAT.SIZE);
      native.fstatat(dirFd, name, K.AT_SYMLINK_NOFOLLOW, st);
      return {
        ino: st.readBigUInt64LE(STAT.ino),
        mode: st.readUInt32LE(STAT.mode),
        ctimeNs: st.readBigInt64LE(STAT.ctime) * 1_000_000_000n + st.readBigInt64LE(STAT.ctimeNsec),
      };
    } catch (e) {
      const code = (e as { errno?: number }).errno;
      if (code !== K.ENOENT && code !== K.EINVAL && code !== K.EBADF && code !== K.ENOTDIR) {
        this.log.warn({ err: e, parent }, 'probeEntry failed');
      }
      return null;
    }
  }

  /** Never throws: an unknown fh or a failed fstat give null. */
  probeAppendSize(fh: Handle): number | null {
    const rec = this.session.getFile(fh);
    if (rec === undefined || (rec.flags & K.O_APPEND) === 0) return null;
    try {
      return Number(statFd(this.fds.get(rec.fdName)).readBigUInt64LE(STAT.size));
    } catch (e) {
      this.log.warn({ err: e, fh }, 'probeAppendSize failed');
      return null;
    }
  }
}
