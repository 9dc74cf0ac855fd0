// The passthrough filesystem: every FUSE operation becomes syscalls on the shared directory.
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
// - Open files and dirs: one fd each, "file.<fh>" / "dir.<fh>".
// - All table changes go through FsSession (session.ts), which can be journaled/snapshotted.
//
// Decisions:
// - Unknown nodeid or fh, or an fh that belongs to another nodeid: EBADF (both virtiofsds).
// - LOOKUP of a missing name: ENOENT (no negative entries).
// - '..' at the root is the root, '.' is the dir itself. '..' elsewhere is resolved beneath the
//   root (see lookupDotDot). Create/remove/rename names must be a plain component: '.', '..',
//   empty, '/' or NUL give EINVAL (virtiofsd's is_safe_path_component); lookup gives ENOENT for
//   an empty name and EINVAL for '/' or NUL.
// - Generation is always 0 (fds pin inodes, so a nodeid never refers to a reused inode number).
// - Cache modes: timeouts never=0, auto=1 s, always=86400 s; open flags never=DIRECT_IO,
//   always=KEEP_CACHE, auto=0; opendir always=CACHE_DIR.
// - O_DIRECT is dropped from open flags (virtiofsd's default without allow_direct_io: guest
//   memory segments need not meet O_DIRECT alignment). With FUSE_WRITEBACK_CACHE, O_WRONLY
//   becomes O_RDWR and O_APPEND is dropped (the guest page cache does appends then).
// - POSIX locks are OFD locks on the fh's own open file description, so two fh conflict with
//   each other even when the guest opened both in one process; a guest process that closes one
//   of two fds does not drop the locks held through the other. GETLK reports pid 0.
// - SETLKW (POSIX and flock) first tries the non-blocking call; on a conflict the request is
//   parked in a LockWaiter (lock_waiter.ts: event-loop retries, no thread held) until it gets
//   the lock, its INTERRUPT arrives, its fh is released or the session ends (EINTR).
// - Umask: new files are created with the process umask set to the request's umask when
//   FUSE_DONT_MASK was negotiated (the kernel then leaves masking to us; the host kernel skips it
//   for parents with a default ACL), else 0 (the guest kernel already masked the mode). The umask
//   is process-wide: it is swapped around the creating syscall on the JS thread only.
// - access(): faccessat2(AT_EACCESS) on the inode fd with the caller's fs ids: the kernel's own
//   check (ACLs, read-only mounts, immutable files). Like every other operation here it sees
//   the caller's uid and primary gid only: FUSE does not pass supplementary groups.
// - readdir offsets are the filesystem's own d_off cookies, passed through exactly (bigint: ext4's
//   are 63-bit hashes) as in virtiofsd. The session keeps the 64-bit cookie of the dir position;
//   entries fetched but refused by the reply stay buffered (no seek back), so sequential reads
//   never seek. Any other offset (rewinddir, seekdir, a bogus cookie, or the first READDIR after
//   a worker restart, when the kernel fd position is unknown) is one lseek to exactly that
//   cookie, and the listing is whatever the filesystem returns from there (an lseek error is the
//   reply). No READDIR ever re-reads the directory to find a position. One exception keeps
//   upgrades exact: the first READDIR of a worker whose predecessor handed out rounded cookies
//   (Number(d_off)) may carry the rounded form of the journaled position; it seeks to the latter.
// - '..' listed by readdir of the root shows the root's own inode number (lookup of '..' at the
//   root is the root; the host directory above the share is not exposed).
// - fds are registered before the session records them and closed after the session forgets
//   them, so after a crash at any point every session record has its fd (stray fds are closed
//   by resume()).
// - Short-lived fds (truncate without fh, xattrs, syncfs) are opened and closed within the call
//   (syncfs: when the async call completes) and are not registered.
import { statfsSync } from 'node:fs';
import type { CacheMode } from '../../shared/config';
import type { Logger } from '../../shared/log';
import { logger as makeLogger } from '../../shared/log';
import { C, native, STAT } from '../../shared/native';
import type { Callback, IoSegment, StatFs } from '../../shared/native';
import type { FdRegistry } from '../../shared/fd_registry';
import {
  FsError,
  type AttrReply, type Context, type DirSink, type Entry, type EntryProbe, type FileSystem, type Handle,
  type LockRange, type NodeId, type OpenReply, type SetattrRequest,
} from './filesystem';
import {
  FsSession, FsSessionError, ROOT_FD_NAME, dirFdName, fileFdName, inodeFdName,
  type DirRecord, type FileRecord, type InodeRecord,
} from './session';
import { parseDirents, type Dirent } from './host_dirents';
import { LockWaiter } from './lock_waiter';
import { FUSE_ROOT_ID } from '../fuse/constants';
import * as K from './host_constants';

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
}

/** In-memory readdir state of an open dir (not part of the session: rebuilt after a restart). */
interface DirRuntime {
  /** True when the fd's kernel position plus `pending` correspond to the session's position. */
  synced: boolean;
  /** Entries fetched from the kernel but not handed out yet. */
  pending: Dirent[];
  next: number;
}

const TIMEOUTS: Record<CacheMode, number> = { never: 0, auto: 1.0, always: 86400 };
const NO_ID = -1;
/** Open flags we pass on to open(2) for FUSE_OPEN/FUSE_CREATE. Everything else is dropped. */
const PASS_OPEN_FLAGS = K.O_ACCMODE | K.O_APPEND | K.O_NONBLOCK | K.O_DSYNC | K.O_SYNC | K.O_NOATIME |
  K.O_TRUNC | K.O_LARGEFILE;
const LOOKUP_RESOLVE = K.RESOLVE_BENEATH | K.RESOLVE_NO_MAGICLINKS;
/** Names remembered for the LOOKUP fast path (lookupKnown). */
const RECENT_LOOKUPS_MAX = 16_384;
/** READs/WRITEs up to this size first try RWF_NOWAIT on the JS thread; larger ones go straight
 * to the threadpool, so copying a big cached range never holds up the event loop. */
const SYNC_IO_MAX = 128 * 1024;
const RWF_NOWAIT = C.RWF_NOWAIT;
/** statfs f_type of filesystems whose file data is memory (linux/magic.h). */
const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

function errno(code: number, message?: string): FsError {
  return new FsError(code, message);
}

/** File offsets/sizes arrive as numbers; the addon takes exact integers up to 2^53. */
function checkOffset(v: number, what: string): number {
  if (!Number.isSafeInteger(v) || v < 0) throw errno(K.EINVAL, `${what} ${v} out of range`);
  return v;
}

function checkNsec(v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 999_999_999) throw errno(K.EINVAL, `nanoseconds ${v} out of range`);
  return v;
}

function procPath(fd: number): string {
  return `/proc/self/fd/${fd}`;
}

/** The d_off cookie (s64, as getdents64 and the session keep it) as the u64 the guest sees. */
function cookieToWire(off: bigint): bigint {
  return BigInt.asUintN(64, off);
}

/** What workers before exact cookies sent the guest for this d_off: the u64 rounded to a double
 * (ext4's hash cookies lose their low bits). */
function legacyWireCookie(off: bigint): bigint {
  return BigInt(Number(BigInt.asUintN(64, off)));
}

function isDot(name: Buffer): boolean { return name.length === 1 && name[0] === 0x2e; }
function isDotDot(name: Buffer): boolean { return name.length === 2 && name[0] === 0x2e && name[1] === 0x2e; }

/** A name must be one non-empty path component without '/' or NUL. */
function checkComponent(name: Buffer, forLookup: boolean): void {
  if (!Buffer.isBuffer(name)) throw errno(K.EINVAL, 'name is not a Buffer');
  if (name.length === 0) throw errno(forLookup ? K.ENOENT : K.EINVAL, 'empty name');
  if (name.includes(0x2f) || name.includes(0)) throw errno(K.EINVAL, 'name contains / or NUL');
  if (!forLookup && (isDot(name) || isDotDot(name))) throw errno(K.EINVAL, `name ${name.toString()} not allowed`);
}

export class PassthroughFs implements FileSystem {
  readonly session: FsSession;
  /** Who took which POSIX lock through which fh, for GETLK's pid (in memory only). */
  private readonly lockHolders = new Map<NodeId, Array<{ fh: Handle; start: number; end: number; pid: number }>>();
  readonly cache: CacheMode;
  readonly xattr: boolean;
  private readonly registry: FdRegistry;
  private readonly log: Logger;
  private readonly timeout: number;
  private readonly direntBuf: Buffer;
  private readonly dirState = new Map<Handle, DirRuntime>();
  /** fd name → async operations in flight on it; closing such an fd is deferred. */
  private readonly busy = new Map<string, number>();
  private readonly pendingClose = new Set<string>();
  /** Per open file, once learned: the preadv2 flags of the synchronous READ attempt (0 on
   * tmpfs), or null when there is none (RWF_NOWAIT unsupported). Unset: RWF_NOWAIT. */
  private readonly syncReadFlags = new WeakMap<FileRecord, number | null>();
  /** Open files whose filesystem answered EOPNOTSUPP to RWF_NOWAIT writes. */
  private readonly noWaitWriteUnsupported = new WeakSet<FileRecord>();
  private dontMask = false;
  private writeback = false;
  private readonly lockWaits: LockWaiter;

  constructor(opts: PassthroughOptions) {
    this.registry = opts.registry;
    this.log = opts.logger ?? makeLogger('fs');
    this.cache = opts.cache ?? 'auto';
    if (!(this.cache in TIMEOUTS)) throw new TypeError(`invalid cache mode ${String(this.cache)}`);
    this.timeout = TIMEOUTS[this.cache];
    this.xattr = opts.xattr ?? false;
    this.direntBuf = Buffer.alloc(Math.max(4096, opts.readdirBufferSize ?? 32 * 1024));
    this.lockWaits = new LockWaiter({ maxWaits: opts.maxLockWaits, log: this.log.child({ part: 'lock-waits' }) });

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
    if ((mode & K.S_IFMT) !== K.S_IFDIR) throw errno(K.ENOTDIR, 'the shared directory is not a directory');
    const dev = st.readBigUInt64LE(STAT.dev);
    const ino = st.readBigUInt64LE(STAT.ino);

    if (opts.session === undefined) {
      this.session = new FsSession({ dev, ino });
    } else {
      this.session = opts.session;
      this.resume(dev, ino, opts.verifyOnResume ?? true);
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
    const names = new Set(s.fdNames());
    for (const name of names) {
      if (!this.registry.has(name)) throw new FsSessionError(`session names fd "${name}" but the registry has none`);
    }
    if (verify) {
      const st = Buffer.alloc(STAT.SIZE);
      for (const rec of s.allInodes()) {
        native.fstatat(this.registry.get(rec.fdName)!, '', K.AT_EMPTY_PATH | K.AT_SYMLINK_NOFOLLOW, st);
        if (st.readBigUInt64LE(STAT.dev) !== rec.dev || st.readBigUInt64LE(STAT.ino) !== rec.ino) {
          throw new FsSessionError(`fd "${rec.fdName}" is not inode (${rec.dev}, ${rec.ino})`);
        }
      }
    }
    for (const [name] of [...this.registry.entries()]) {
      if (/^(inode|file|dir)\.\d+$/.test(name) && !names.has(name)) {
        this.log.warn({ fdName: name }, 'closing fd that the session does not know');
        this.registry.close(name);
      }
    }
    for (const d of s.allDirs()) this.dirState.set(d.fh, { synced: false, pending: [], next: 0 });
    this.log.info({ inodes: s.inodeCount, files: s.fileCount, dirs: s.dirCount }, 'filesystem session resumed');
  }

  // ================================================================ helpers

  private fd(name: string): number {
    const fd = this.registry.get(name);
    if (fd === undefined) throw errno(K.EBADF, `no fd registered as ${name}`);
    return fd;
  }

  private inode(nodeid: NodeId): InodeRecord {
    const rec = this.session.getInode(nodeid);
    if (rec === undefined) throw errno(K.EBADF, `unknown nodeid ${nodeid}`);
    return rec;
  }

  private dirInode(nodeid: NodeId): InodeRecord {
    const rec = this.inode(nodeid);
    if (rec.fileType !== K.S_IFDIR) throw errno(K.ENOTDIR);
    return rec;
  }

  private fileRec(nodeid: NodeId, fh: Handle): FileRecord {
    const rec = this.session.getFile(fh);
    if (rec === undefined || rec.nodeid !== nodeid) throw errno(K.EBADF, `unknown fh ${fh} for nodeid ${nodeid}`);
    return rec;
  }

  private dirRec(nodeid: NodeId, fh: Handle): DirRecord {
    const rec = this.session.getDir(fh);
    if (rec === undefined || rec.nodeid !== nodeid) throw errno(K.EBADF, `unknown dir fh ${fh} for nodeid ${nodeid}`);
    return rec;
  }

  private statFd(fd: number): Buffer {
    const st = Buffer.allocUnsafe(STAT.SIZE); // fully written by fstatat
    native.fstatat(fd, '', K.AT_EMPTY_PATH | K.AT_SYMLINK_NOFOLLOW, st);
    return st;
  }

  private entry(rec: InodeRecord, stat: Buffer): Entry {
    return { nodeid: rec.nodeid, generation: rec.generation, stat, entryTimeout: this.timeout, attrTimeout: this.timeout };
  }

  /** Takes ownership of `fd` (an O_PATH fd of the inode a name resolved to): dedups it against
   * the inode table (closing it when the inode is known) or adds a new inode. Adds one lookup. */
  private adopt(fd: number): Entry {
    let stat: Buffer;
    try {
      stat = this.statFd(fd);
    } catch (e) {
      native.close(fd);
      throw e;
    }
    const dev = stat.readBigUInt64LE(STAT.dev);
    const ino = stat.readBigUInt64LE(STAT.ino);
    const known = this.session.findInode(dev, ino);
    if (known !== undefined) {
      native.close(fd);
      return this.entry(this.session.addLookup(known.nodeid), stat);
    }
    const rec = this.registerThenRecord(inodeFdName(this.session.nextNodeId), fd,
      () => this.session.addInode({ dev, ino, generation: 0, fileType: stat.readUInt32LE(STAT.mode) & K.S_IFMT }));
    return this.entry(rec, stat);
  }

  /** Looks up one plain component (validated by the caller) under the dir fd. `knownHint`:
   * the name probably resolves to an inode we already hold (a cached lookup, or a readdir
   * entry whose d_ino is in the table), so try one fstatat first. */
  private lookupChild(dirFd: number, name: Buffer, knownHint = false): Entry {
    if (knownHint) {
      const known = this.lookupKnown(dirFd, name);
      if (known !== null) return known;
    }
    const fd = native.openat2(dirFd, name, K.O_PATH | K.O_NOFOLLOW | K.O_CLOEXEC, 0, LOOKUP_RESOLVE);
    return this.adopt(fd);
  }

  /** fstatat of the name (no symlink followed; a single component, so nothing to escape
   * through): when (dev, ino) is an inode we hold, that is the answer without opening a
   * second fd. Safe because our fd pins the inode, so its number cannot have been reused. */
  private lookupKnown(dirFd: number, name: Buffer): Entry | null {
    const stat = Buffer.allocUnsafe(STAT.SIZE);
    try {
      native.fstatat(dirFd, name, K.AT_SYMLINK_NOFOLLOW, stat);
    } catch {
      return null; // let the full path produce the errno
    }
    const known = this.session.findInode(stat.readBigUInt64LE(STAT.dev), stat.readBigUInt64LE(STAT.ino));
    return known === undefined ? null : this.entry(this.session.addLookup(known.nodeid), stat);
  }

  /** A name that LOOKUP resolved before, to try lookupKnown first. Bounded: cleared when full
   * (a miss only costs the fstatat). Stale entries are harmless: the fstatat decides. */
  private readonly recentLookups = new Set<string>(); // `${parent}/${name}`

  private rememberLookup(key: string): void {
    if (this.recentLookups.size >= RECENT_LOOKUPS_MAX) this.recentLookups.clear();
    this.recentLookups.add(key);
  }

  /** '..' of a dir other than the root. The dir's host path (from /proc/self/fd) must lie under
   * the root's; the relative path is then re-resolved beneath the root fd with no symlinks and
   * checked to still be this dir, and its '..' is opened, also beneath the root. A dir that was
   * moved out of the shared directory (by the host) has no parent for us: ENOENT. */
  private lookupDotDot(dir: InodeRecord): Entry {
    const rootFd = this.fd(ROOT_FD_NAME);
    const dirFd = this.fd(dir.fdName);
    const rootPath = native.readlinkat(K.AT_FDCWD, procPath(rootFd));
    const dirPath = native.readlinkat(K.AT_FDCWD, procPath(dirFd));
    const prefix = rootPath.length === 1 && rootPath[0] === 0x2f ? rootPath : Buffer.concat([rootPath, Buffer.from('/')]);
    if (dirPath.length <= prefix.length || !dirPath.subarray(0, prefix.length).equals(prefix)) {
      throw errno(K.ENOENT, 'directory is not below the shared directory');
    }
    const rel = dirPath.subarray(prefix.length);
    const resolve = K.RESOLVE_BENEATH | K.RESOLVE_NO_MAGICLINKS | K.RESOLVE_NO_SYMLINKS;
    const check = native.openat2(rootFd, rel, K.O_PATH | K.O_NOFOLLOW | K.O_DIRECTORY | K.O_CLOEXEC, 0, resolve);
    try {
      const st = this.statFd(check);
      if (st.readBigUInt64LE(STAT.dev) !== dir.dev || st.readBigUInt64LE(STAT.ino) !== dir.ino) {
        throw errno(K.ENOENT, 'directory moved while resolving ..');
      }
    } finally {
      native.close(check);
    }
    const parentFd = native.openat2(rootFd, Buffer.concat([rel, Buffer.from('/..')]),
      K.O_PATH | K.O_NOFOLLOW | K.O_DIRECTORY | K.O_CLOEXEC, 0, resolve);
    return this.adopt(parentFd);
  }

  /** Opens the inode for I/O through /proc/self/fd (virtiofsd's lo_inode_open). */
  private reopen(rec: InodeRecord, flags: number): number {
    if (rec.fileType === K.S_IFLNK) throw errno(K.ELOOP);
    if (rec.fileType !== K.S_IFREG && rec.fileType !== K.S_IFDIR) throw errno(K.EBADF, 'not a regular file or directory');
    return native.openat(K.AT_FDCWD, procPath(this.fd(rec.fdName)), (flags & ~K.O_NOFOLLOW) | K.O_CLOEXEC, 0);
  }

  private withTempFd<T>(rec: InodeRecord, flags: number, fn: (fd: number) => T): T {
    const fd = this.reopen(rec, flags);
    try {
      return fn(fd);
    } finally {
      native.close(fd);
    }
  }

  /** The event-loop thread's own fs ids: a caller with these needs no switch. */
  private readonly ownUid = process.geteuid?.() ?? 0;
  private readonly ownGid = process.getegid?.() ?? 0;
  /** The process umask as last set here (null: not yet known). */
  private currentUmask: number | null = null;

  /** Runs fn with the caller's fsuid/fsgid (and, when umask !== null, the right process umask).
   * The fs ids are restored afterwards; the umask is left as set, since every creation here
   * sets its own and the rest of the worker only creates 0600 files (2 syscalls fewer). */
  private withCreds<T>(ctx: Context, umask: number | null, fn: () => T): T {
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

  /** Registers an opened file fd under a new fh. */
  private addFile(nodeid: NodeId, fd: number, flags: number): OpenReply {
    const rec = this.registerThenRecord(fileFdName(this.session.nextFh), fd, () => this.session.openFile(nodeid, flags));
    return { fh: rec.fh, openFlags: this.fileOpenFlags() };
  }

  /** Crash-safe order for a new fd: register it (the keeper gets it) before the session records
   * it (the journal gets it), so a session record always has its fd; a worker that dies in
   * between leaves an fd the session does not know, which resume() closes. Removal is the other
   * way round (record first, then close). Takes ownership of fd. */
  private registerThenRecord<T extends { fdName: string }>(name: string, fd: number, record: () => T): T {
    try {
      this.registry.register(name, fd);
    } catch (e) {
      native.close(fd);
      throw e;
    }
    let rec: T;
    try {
      rec = record();
    } catch (e) {
      this.registry.close(name);
      throw e;
    }
    if (rec.fdName !== name) {
      // Cannot happen: the session allocates exactly the id we read before.
      this.registry.close(name);
      throw new Error(`fd name mismatch: registered ${name}, session recorded ${rec.fdName}`);
    }
    return rec;
  }

  /** Closes a registered fd now, or when the async operations using it have finished. */
  private closeFd(name: string): void {
    if ((this.busy.get(name) ?? 0) > 0) this.pendingClose.add(name);
    else this.registry.close(name);
  }

  private acquire(name: string): number {
    const fd = this.fd(name);
    this.busy.set(name, (this.busy.get(name) ?? 0) + 1);
    return fd;
  }

  private release_(name: string): void {
    const n = (this.busy.get(name) ?? 1) - 1;
    if (n > 0) {
      this.busy.set(name, n);
      return;
    }
    this.busy.delete(name);
    if (this.pendingClose.delete(name)) this.registry.close(name);
  }

  /** Runs an async addon call on registered fds, keeping them open until it completes. */
  private runAsync<T>(names: string[], start: (fds: number[], cb: Callback<T>) => void): Promise<T> {
    const fds: number[] = [];
    try {
      for (const n of names) fds.push(this.acquire(n));
    } catch (e) {
      for (let i = 0; i < fds.length; i++) this.release_(names[i]);
      return Promise.reject(e);
    }
    return new Promise<T>((resolve, reject) => {
      let done = false;
      const finish = (): void => {
        if (done) return;
        done = true;
        for (const n of names) this.release_(n);
      };
      try {
        start(fds, (err, res) => {
          finish();
          if (err) reject(err);
          else resolve(res);
        });
      } catch (e) {
        finish();
        reject(e);
      }
    });
  }

  // ================================================================ session

  init(flags: bigint): void {
    this.dontMask = (flags & K.FUSE_DONT_MASK) !== 0n;
    this.writeback = (flags & K.FUSE_WRITEBACK_CACHE) !== 0n;
    this.log.info({ cache: this.cache, xattr: this.xattr, dontMask: this.dontMask, writeback: this.writeback },
      'filesystem initialised');
  }

  destroy(): void {
    // Before the fds go: a parked wait holds its fh's fd busy.
    const ended = this.lockWaits.cancelAll();
    if (ended > 0) this.log.info({ ended }, 'parked lock waits ended by the session reset');
    this.lockHolders.clear();
    const names = this.session.reset();
    // Closed in bulk (one keeper message per few hundred), except those async calls still use.
    const now: string[] = [];
    for (const name of names) {
      if ((this.busy.get(name) ?? 0) > 0) this.pendingClose.add(name);
      else now.push(name);
    }
    this.registry.closeMany(now);
    this.dirState.clear();
    this.log.info({ closed: names.length }, 'filesystem session reset');
  }

  // ================================================================ names

  lookup(ctx: Context, parent: NodeId, name: Buffer): Entry {
    checkComponent(name, true);
    const dir = this.inode(parent);
    if (isDot(name) || (isDotDot(name) && parent === FUSE_ROOT_ID)) {
      if (dir.fileType !== K.S_IFDIR) throw errno(K.ENOTDIR);
      const stat = this.statFd(this.fd(dir.fdName));
      return this.entry(this.session.addLookup(dir.nodeid), stat);
    }
    if (isDotDot(name)) {
      if (dir.fileType !== K.S_IFDIR) throw errno(K.ENOTDIR);
      return this.lookupDotDot(dir);
    }
    const key = `${parent}/${name.toString('latin1')}`;
    const seen = this.recentLookups.has(key);
    const entry = this.lookupChild(this.fd(dir.fdName), name, seen);
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
    if (dropped !== null) this.closeFd(dropped.fdName);
  }

  getattr(ctx: Context, nodeid: NodeId, fh: Handle | null): AttrReply {
    const rec = this.inode(nodeid);
    return { stat: this.statFd(this.fd(rec.fdName)), attrTimeout: this.timeout };
  }

  setattr(ctx: Context, nodeid: NodeId, attr: SetattrRequest): AttrReply {
    const rec = this.inode(nodeid);
    const inodeFd = this.fd(rec.fdName);
    const valid = attr.valid;
    const fileFd = (valid & K.FATTR_FH) !== 0 ? this.fd(this.fileRec(nodeid, attr.fh).fdName) : null;

    if (valid & K.FATTR_MODE) {
      const mode = attr.mode & 0o7777;
      if (fileFd !== null) native.fchmod(fileFd, mode);
      else if (rec.fileType === K.S_IFLNK) throw errno(K.EOPNOTSUPP, 'chmod of a symlink');
      else native.fchmodat(K.AT_FDCWD, procPath(inodeFd), mode, 0);
    }
    if (valid & (K.FATTR_UID | K.FATTR_GID)) {
      const uid = valid & K.FATTR_UID ? attr.uid : NO_ID;
      const gid = valid & K.FATTR_GID ? attr.gid : NO_ID;
      native.fchownat(inodeFd, '', uid, gid, K.AT_EMPTY_PATH | K.AT_SYMLINK_NOFOLLOW);
    }
    if (valid & K.FATTR_SIZE) {
      if (!Number.isSafeInteger(attr.size) || attr.size < 0) throw errno(K.EFBIG);
      if (fileFd !== null) native.ftruncate(fileFd, attr.size);
      else if (rec.fileType === K.S_IFDIR) throw errno(K.EISDIR);
      else if (rec.fileType !== K.S_IFREG) throw errno(K.EINVAL);
      else this.withTempFd(rec, K.O_WRONLY, (fd) => native.ftruncate(fd, attr.size));
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
      this.killSuidGid(inodeFd);
    }
    return { stat: this.statFd(inodeFd), attrTimeout: this.timeout };
  }

  /** Clears S_ISUID, and S_ISGID when group-exec is set (the kernel's should_remove_suid rule),
   * for HANDLE_KILLPRIV_V2: virtiofsd gets this by dropping CAP_FSETID around the write or
   * truncate; we are privileged, so we clear the bits ourselves afterwards. */
  private killSuidGid(inodeFd: number): void {
    const mode = this.statFd(inodeFd).readUInt32LE(STAT.mode);
    let kill = mode & K.S_ISUID;
    if ((mode & K.S_ISGID) && (mode & K.S_IXGRP)) kill |= K.S_ISGID;
    if (kill) native.fchmodat(K.AT_FDCWD, procPath(inodeFd), mode & 0o7777 & ~kill, 0);
  }

  readlink(ctx: Context, nodeid: NodeId): Buffer {
    const rec = this.inode(nodeid);
    if (rec.fileType !== K.S_IFLNK) throw errno(K.EINVAL);
    return native.readlinkat(this.fd(rec.fdName), '');
  }

  symlink(ctx: Context, parent: NodeId, name: Buffer, target: Buffer): Entry {
    checkComponent(name, false);
    const dirFd = this.fd(this.dirInode(parent).fdName);
    this.withCreds(ctx, null, () => native.symlinkat(target, dirFd, name));
    return this.lookupChild(dirFd, name);
  }

  mknod(ctx: Context, parent: NodeId, name: Buffer, mode: number, rdev: number, umask: number): Entry {
    checkComponent(name, false);
    const dirFd = this.fd(this.dirInode(parent).fdName);
    const type = mode & K.S_IFMT;
    this.withCreds(ctx, umask, () => native.mknodat(dirFd, name, (type === 0 ? K.S_IFREG : type) | (mode & 0o7777), rdev));
    return this.lookupChild(dirFd, name);
  }

  mkdir(ctx: Context, parent: NodeId, name: Buffer, mode: number, umask: number): Entry {
    checkComponent(name, false);
    const dirFd = this.fd(this.dirInode(parent).fdName);
    this.withCreds(ctx, umask, () => native.mkdirat(dirFd, name, mode & 0o7777));
    return this.lookupChild(dirFd, name);
  }

  unlink(ctx: Context, parent: NodeId, name: Buffer): void {
    checkComponent(name, false);
    native.unlinkat(this.fd(this.dirInode(parent).fdName), name, 0);
  }

  rmdir(ctx: Context, parent: NodeId, name: Buffer): void {
    checkComponent(name, false);
    native.unlinkat(this.fd(this.dirInode(parent).fdName), name, K.AT_REMOVEDIR);
  }

  rename(ctx: Context, parent: NodeId, name: Buffer, newParent: NodeId, newName: Buffer, flags: number): void {
    checkComponent(name, false);
    checkComponent(newName, false);
    if ((flags & ~(K.RENAME_NOREPLACE | K.RENAME_EXCHANGE | K.RENAME_WHITEOUT)) !== 0) throw errno(K.EINVAL, 'rename flags');
    const oldFd = this.fd(this.dirInode(parent).fdName);
    const newFd = this.fd(this.dirInode(newParent).fdName);
    native.renameat2(oldFd, name, newFd, newName, flags);
  }

  link(ctx: Context, nodeid: NodeId, newParent: NodeId, newName: Buffer): Entry {
    checkComponent(newName, false);
    const rec = this.inode(nodeid);
    if (rec.fileType === K.S_IFDIR) throw errno(K.EPERM, 'hard link to a directory');
    const dirFd = this.fd(this.dirInode(newParent).fdName);
    const inodeFd = this.fd(rec.fdName);
    // As virtiofsd: the magic link leads to exactly our inode (a symlink itself, not its target)
    // and needs no CAP_DAC_READ_SEARCH, unlike AT_EMPTY_PATH.
    this.withCreds(ctx, null, () => native.linkat(K.AT_FDCWD, procPath(inodeFd), dirFd, newName, K.AT_SYMLINK_FOLLOW));
    const stat = this.statFd(inodeFd);
    return this.entry(this.session.addLookup(rec.nodeid), stat);
  }

  // ================================================================ files

  open(ctx: Context, nodeid: NodeId, flags: number): OpenReply {
    const rec = this.inode(nodeid);
    const f = this.openFlags(flags);
    const fd = this.reopen(rec, f);
    return this.addFile(nodeid, fd, f);
  }

  /** Creates with O_EXCL always: open(O_CREAT) of an existing name would open whatever is
   * there, a device node or FIFO included (CVE-2020-35517's class: a guest-made 1:5 node read
   * as the host's /dev/zero, a FIFO blocking the worker). An existing name the guest did not
   * ask O_EXCL for is opened as OPEN would open it: regular files only (virtiofsd's lo_create). */
  create(ctx: Context, parent: NodeId, name: Buffer, mode: number, flags: number, umask: number): { entry: Entry; open: OpenReply } {
    checkComponent(name, false);
    const dirFd = this.fd(this.dirInode(parent).fdName);
    const f = this.openFlags(flags);
    let fd: number;
    try {
      fd = this.withCreds(ctx, umask, () => native.openat2(dirFd, name, f | K.O_CREAT | K.O_EXCL | K.O_NOFOLLOW | K.O_CLOEXEC,
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
    const entry = this.lookupChild(dirFd, name);
    let open: OpenReply;
    try {
      const rec = this.inode(entry.nodeid);
      if (rec.fileType === K.S_IFDIR) throw errno(K.EISDIR, 'create of an existing directory');
      const fd = this.withCreds(ctx, null, () => this.reopen(rec, flags));
      open = this.addFile(entry.nodeid, fd, flags & ~K.O_TRUNC);
    } catch (e) {
      this.forget(entry.nodeid, 1);
      throw e;
    }
    return { entry, open };
  }

  tmpfile(ctx: Context, parent: NodeId, mode: number, flags: number, umask: number): { entry: Entry; open: OpenReply } {
    const dirFd = this.fd(this.dirInode(parent).fdName);
    let f = this.openFlags(flags) & ~K.O_TRUNC;
    if ((f & K.O_ACCMODE) === K.O_RDONLY) f |= K.O_RDWR;
    const fd = this.withCreds(ctx, umask, () => native.openat2(dirFd, '.', f | K.O_TMPFILE | K.O_CLOEXEC, mode & 0o7777,
      K.RESOLVE_BENEATH | K.RESOLVE_NO_MAGICLINKS | K.RESOLVE_NO_SYMLINKS));
    return this.adoptOpened(fd, f);
  }

  /** For create/tmpfile: the inode fd comes from the new file's own fd (the exact inode, no
   * second name resolution), then the file fd gets an fh. */
  private adoptOpened(fileFd: number, flags: number): { entry: Entry; open: OpenReply } {
    let entry: Entry;
    try {
      entry = this.adopt(native.openat(K.AT_FDCWD, procPath(fileFd), K.O_PATH | K.O_CLOEXEC, 0));
    } catch (e) {
      native.close(fileFd);
      throw e;
    }
    let open: OpenReply;
    try {
      open = this.addFile(entry.nodeid, fileFd, flags);
    } catch (e) {
      this.forget(entry.nodeid, 1);
      throw e;
    }
    return { entry, open };
  }

  /** The open file and the guest segments of a READ or WRITE (validated). */
  private ioTarget(nodeid: NodeId, fh: Handle, offset: number, size: number, segments: IoSegment[]): { rec: FileRecord; segs: IoSegment[] } {
    const rec = this.fileRec(nodeid, fh);
    checkOffset(offset, 'offset');
    return { rec, segs: trimSegments(segments, size) };
  }

  /** Tries the page cache on the JS thread first (preadv2 RWF_NOWAIT; a plain read on tmpfs):
   * a hit answers at once, without the two threadpool hand-offs. What would block goes to the
   * threadpool. Errors always arrive as a rejection. */
  read(ctx: Context, nodeid: NodeId, fh: Handle, offset: number, size: number, segments: IoSegment[]): number | Promise<number> {
    let rec: FileRecord;
    let segs: IoSegment[];
    let done = 0;
    try {
      ({ rec, segs } = this.ioTarget(nodeid, fh, offset, size, segments));
      let flags = this.syncReadFlags.get(rec);
      if (flags === undefined) flags = RWF_NOWAIT;
      if (size <= SYNC_IO_MAX && flags !== null) {
        // The fd cannot be closed under us: closing also happens only on this thread.
        const fd = this.fd(rec.fdName);
        const total = segmentsLength(segs);
        // A short count means EOF or a partly cached range; the next attempt tells which
        // (0 = EOF, -EAGAIN = the rest must wait for the disk). Each round makes progress.
        while (done < total) {
          const n = native.preadv2Sync(fd, offset + done, segs, flags);
          if (n === 0) return done;
          if (n < 0) {
            if (n !== -K.EOPNOTSUPP || flags !== RWF_NOWAIT) break;
            // No NOWAIT reads here (tmpfs has none). tmpfs/ramfs data is memory: a plain read
            // only copies pages and can stall only on swap-in, as our own heap can.
            flags = memoryBacked(fd) ? 0 : null;
            this.syncReadFlags.set(rec, flags);
            if (flags === null) break;
            continue;
          }
          done += n;
          segs = skipSegments(segs, n);
        }
        if (done >= total) return done;
      }
    } catch (e) {
      if (done > 0) return done; // as a short preadv: the bytes already copied are the answer
      return Promise.reject(e);
    }
    const rest = this.runAsync<number>([rec.fdName], ([fd], cb) => native.preadv(fd, offset + done, segs, cb));
    if (done === 0) return rest;
    // Bytes already copied stay a valid (short) answer even if the rest fails, as with preadv.
    return rest.then((n) => done + n, () => done);
  }

  /** Like read(): a pwritev2 RWF_NOWAIT attempt on the JS thread, then the threadpool. Many
   * filesystems (ext4) refuse buffered NOWAIT writes with EOPNOTSUPP; that is remembered per
   * open file so later writes go straight to the threadpool. */
  write(ctx: Context, nodeid: NodeId, fh: Handle, offset: number, size: number, segments: IoSegment[],
    writeFlags: number): number | Promise<number> {
    let rec: FileRecord;
    let segs: IoSegment[];
    let done = 0;
    try {
      ({ rec, segs } = this.ioTarget(nodeid, fh, offset, size, segments));
      // O_SYNC/O_DSYNC: the flush after the copy would block the event loop.
      if (size <= SYNC_IO_MAX && (rec.flags & (K.O_SYNC | K.O_DSYNC)) === 0 && !this.noWaitWriteUnsupported.has(rec)) {
        const fd = this.fd(rec.fdName);
        const n = native.pwritev2Sync(fd, offset, segs, RWF_NOWAIT);
        if (n === -K.EOPNOTSUPP) this.noWaitWriteUnsupported.add(rec);
        // A short write is a valid answer (as from pwritev); an O_APPEND one must be, since
        // appending the rest separately could interleave with another appender.
        if (n >= 0 && (n === segmentsLength(segs) || n === 0 || (rec.flags & K.O_APPEND) !== 0)) {
          return this.afterWrite(nodeid, n, writeFlags);
        }
        if (n > 0) {
          done = n;
          segs = skipSegments(segs, n);
        }
      }
    } catch (e) {
      return Promise.reject(e);
    }
    return this.runAsync<number>([rec.fdName], ([fd], cb) => native.pwritev(fd, offset + done, segs, cb))
      .then((n) => this.afterWrite(nodeid, done + n, writeFlags),
        (e: unknown) => {
          if (done === 0) throw e;
          return this.afterWrite(nodeid, done, writeFlags);
        });
  }

  private afterWrite(nodeid: NodeId, n: number, writeFlags: number): number {
    if (writeFlags & K.FUSE_WRITE_KILL_SUIDGID) {
      const inode = this.session.getInode(nodeid);
      if (inode !== undefined && inode.fileType === K.S_IFREG) this.killSuidGid(this.fd(inode.fdName));
    }
    return n;
  }

  flush(ctx: Context, nodeid: NodeId, fh: Handle, lockOwner: bigint): void {
    // As virtiofsd: close(dup(fd)), which is what close() would do for the file on the host
    // (matters for filesystems with close-to-open semantics such as NFS). OFD and flock locks
    // belong to the fh's open file description and are not affected.
    const fd = this.fd(this.fileRec(nodeid, fh).fdName);
    native.close(native.dup(fd));
  }

  release(ctx: Context, nodeid: NodeId, fh: Handle, flags: number, releaseFlags: number, lockOwner: bigint): void {
    const rec = this.fileRec(nodeid, fh);
    const ended = this.lockWaits.cancelFh(nodeid, fh);
    if (ended > 0) this.log.debug({ nodeid, fh, ended }, 'parked lock waits ended by RELEASE');
    this.dropLocks(nodeid, fh);
    // Closing the open file description drops its OFD and flock locks.
    this.lockWaits.wake(nodeid);
    if (releaseFlags & K.FUSE_RELEASE_FLOCK_UNLOCK) {
      try {
        native.flock(this.fd(rec.fdName), K.LOCK_UN);
      } catch (e) {
        this.log.debug({ err: e, fh }, 'flock(LOCK_UN) at release failed');
      }
    }
    this.session.closeFile(fh);
    this.closeFd(rec.fdName);
  }

  async fsync(ctx: Context, nodeid: NodeId, fh: Handle, dataOnly: boolean): Promise<void> {
    const rec = this.fileRec(nodeid, fh);
    return this.runAsync<void>([rec.fdName], ([fd], cb) => native.fsync(fd, dataOnly, cb));
  }

  statfs(ctx: Context, nodeid: NodeId): StatFs {
    // fstatfs works on O_PATH fds (fd_raw) since Linux 2.6.39.
    return native.fstatfs(this.fd(this.inode(nodeid).fdName));
  }

  async syncfs(ctx: Context, nodeid: NodeId): Promise<void> {
    // syncfs(2) refuses O_PATH fds: open the inode (or, for a non-regular, non-directory inode,
    // the root) read-only for the duration of the call.
    const rec = this.inode(nodeid);
    const target = rec.fileType === K.S_IFREG || rec.fileType === K.S_IFDIR ? rec : this.session.root;
    const fd = this.reopen(target, K.O_RDONLY | K.O_NONBLOCK);
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
    const rec = this.dirInode(nodeid);
    const fd = this.reopen(rec, K.O_RDONLY | K.O_DIRECTORY);
    const dir = this.registerThenRecord(dirFdName(this.session.nextFh), fd, () => this.session.openDir(nodeid));
    this.dirState.set(dir.fh, { synced: true, pending: [], next: 0 });
    return { fh: dir.fh, openFlags: this.cache === 'always' ? K.FOPEN_CACHE_DIR : 0 };
  }

  readdir(ctx: Context, nodeid: NodeId, fh: Handle, offset: bigint, plus: boolean, sink: DirSink): void {
    const rec = this.dirRec(nodeid, fh);
    const fd = this.fd(rec.fdName);
    let rt = this.dirState.get(fh);
    if (rt === undefined) {
      rt = { synced: false, pending: [], next: 0 };
      this.dirState.set(fh, rt);
    }
    // The guest's u64 is the s64 off_t that lseek takes and the session records.
    let cookie = BigInt.asIntN(64, offset);
    if (!rt.synced && cookie !== rec.position && offset === legacyWireCookie(rec.position)) {
      // The first READDIR since this worker started, continuing a listing an older worker
      // served with rounded cookies: the journaled position is the exact one.
      cookie = rec.position;
    }
    let position = rec.position;
    if (!(rt.synced && rec.position === cookie)) {
      // One lseek, exactly like virtiofsd's seekdir; a cookie the filesystem rejects (e.g. a
      // negative off_t) throws its errno before anything changes, so the fd's position and the
      // pending entries still belong to the session's position.
      native.lseek(fd, cookie, K.SEEK_SET);
      rt.pending = [];
      rt.next = 0;
      rt.synced = true;
      position = cookie;
    }
    let accepted = 0;
    const dirDev = plus ? this.session.getInode(rec.nodeid)?.dev ?? null : null;
    let rootIno: Buffer | null = null;
    if (rec.nodeid === FUSE_ROOT_ID) {
      rootIno = Buffer.alloc(8);
      rootIno.writeBigUInt64LE(this.session.root.ino);
    }
    try {
      for (;;) {
        if (rt.next >= rt.pending.length) {
          rt.pending = [];
          rt.next = 0;
          const n = native.getdents64(fd, this.direntBuf);
          if (n === 0) break;
          rt.pending = parseDirents(this.direntBuf, n);
        }
        const d = rt.pending[rt.next];
        let entry: Entry | null = null;
        if (plus && !isDot(d.name) && !isDotDot(d.name)) {
          try {
            // d_ino already in our table (same dev as the dir; a mount point's d_ino is not its
            // root's, so that just misses): a repeat listing then costs one fstatat per entry.
            const knownHint = dirDev !== null && this.session.findInode(dirDev, d.ino.readBigUInt64LE(0)) !== undefined;
            entry = this.lookupChild(fd, d.name, knownHint);
          } catch (e) {
            // Gone since getdents (or not ours to look up): a direntplus with nodeid 0 tells
            // the kernel to skip the lookup part, the name is still listed.
            this.log.debug({ err: e, name: d.name.toString() }, 'readdirplus lookup failed');
          }
        }
        let ok: boolean;
        try {
          // '..' of the shared directory is the shared directory itself (as lookup says): do
          // not show the inode number of the host directory above it.
          const ino = rootIno !== null && isDotDot(d.name) ? rootIno : d.ino;
          ok = sink.add(d.name, ino, d.type, cookieToWire(d.off), entry);
        } catch (e) {
          if (entry !== null) this.forget(entry.nodeid, 1);
          throw e;
        }
        if (!ok) {
          if (entry !== null) this.forget(entry.nodeid, 1);
          break;
        }
        rt.next++;
        accepted++;
        position = d.off;
      }
    } catch (e) {
      // Entries already in the sink are a valid (short) reply; report the error only when
      // there are none (as virtiofsd does).
      if (accepted === 0) {
        if (position !== rec.position) this.session.setDirPosition(fh, position);
        throw e;
      }
      this.log.debug({ err: e, fh }, 'readdir stopped early');
    }
    if (position !== rec.position) this.session.setDirPosition(fh, position);
  }

  releasedir(ctx: Context, nodeid: NodeId, fh: Handle): void {
    const rec = this.dirRec(nodeid, fh);
    this.session.closeDir(fh);
    this.dirState.delete(fh);
    this.closeFd(rec.fdName);
  }

  async fsyncdir(ctx: Context, nodeid: NodeId, fh: Handle, dataOnly: boolean): Promise<void> {
    const rec = this.dirRec(nodeid, fh);
    return this.runAsync<void>([rec.fdName], ([fd], cb) => native.fsync(fd, dataOnly, cb));
  }

  // ================================================================ xattrs

  /** virtiofsd opens regular files and dirs O_RDONLY and uses the f*xattr calls; for other
   * types it uses path calls that follow the /proc/self/fd magic link, which the addon does not
   * offer (its path variants are the l* ones, which would act on the magic link itself). So for
   * symlinks and special files: get/list give EOPNOTSUPP, set/remove give EPERM. */
  private xattrFd<T>(nodeid: NodeId, forWrite: boolean, fn: (fd: number) => T): T {
    if (!this.xattr) throw errno(K.ENOSYS);
    const rec = this.inode(nodeid);
    if (rec.fileType !== K.S_IFREG && rec.fileType !== K.S_IFDIR) throw errno(forWrite ? K.EPERM : K.EOPNOTSUPP);
    return this.withTempFd(rec, K.O_RDONLY | K.O_NONBLOCK, fn);
  }

  /** Sizes come from the guest: a value or list is never larger than the kernel's maximum, so
   * a larger buffer is never needed (a 0xffffffff request would otherwise allocate 4 GiB). The
   * permission checks (user.* needs read or write access, ACLs need ownership) are the
   * kernel's, made with the caller's fs ids. */
  getxattr(ctx: Context, nodeid: NodeId, name: Buffer, size: number): Buffer | number {
    // Without CAP_SYS_ADMIN the kernel hides trusted.* (ENODATA): a guest user must not read
    // host metadata such as overlayfs's trusted.overlay.* through our capability.
    if (xattrNamespace(name) === 'trusted') throw errno(K.ENODATA, 'trusted.* is not exposed');
    return this.xattrFd(nodeid, false, (fd) => this.withCreds(ctx, null, () => {
      if (size === 0) return native.getxattr(fd, name, null);
      const buf = Buffer.alloc(Math.min(size, K.XATTR_SIZE_MAX));
      const n = native.getxattr(fd, name, buf);
      return buf.subarray(0, n);
    }));
  }

  listxattr(ctx: Context, nodeid: NodeId, size: number): Buffer | number {
    return this.xattrFd(nodeid, false, (fd) => {
      const buf = Buffer.alloc(K.XATTR_LIST_MAX);
      const list = filterXattrList(buf.subarray(0, this.withCreds(ctx, null, () => native.listxattr(fd, buf))));
      if (size === 0) return list.length;
      if (list.length > size) throw errno(K.ERANGE);
      return list;
    });
  }

  /** trusted.* and security.* (but security.capability) need CAP_SYS_ADMIN, which the worker
   * holds for itself and not for the guest: EPERM, as the kernel answers an unprivileged
   * caller and the C virtiofsd (which drops CAP_SYS_ADMIN) answers everyone. File
   * capabilities (security.capability) only for the guest's root. */
  private checkXattrWrite(ctx: Context, name: Buffer): void {
    const ns = xattrNamespace(name);
    if (ns === 'trusted' || (ns === 'security' && (!name.equals(SECURITY_CAPABILITY) || ctx.uid !== 0))) {
      throw errno(K.EPERM, `xattr ${name.toString('latin1')} not settable by uid ${ctx.uid}`);
    }
  }

  setxattr(ctx: Context, nodeid: NodeId, name: Buffer, value: Buffer, flags: number): void {
    this.checkXattrWrite(ctx, name);
    this.xattrFd(nodeid, true, (fd) => this.withCreds(ctx, null, () => native.setxattr(fd, name, value, flags)));
  }

  removexattr(ctx: Context, nodeid: NodeId, name: Buffer): void {
    this.checkXattrWrite(ctx, name);
    this.xattrFd(nodeid, true, (fd) => this.withCreds(ctx, null, () => native.removexattr(fd, name)));
  }

  access(ctx: Context, nodeid: NodeId, mask: number): void {
    const rec = this.inode(nodeid);
    const want = mask & (K.R_OK | K.W_OK | K.X_OK);
    // The kernel decides, as for the caller's own access(2): AT_EACCESS checks with the fs ids
    // withCreds sets, so ACLs, read-only mounts and immutable files count, and the owner class
    // wins over group and other (a 0077 file is closed to its owner).
    this.withCreds(ctx, null, () => native.faccessat(this.fd(rec.fdName), '', want, K.AT_EACCESS | K.AT_EMPTY_PATH));
  }

  // ================================================================ locks

  getlk(ctx: Context, nodeid: NodeId, fh: Handle, owner: bigint, lock: LockRange): LockRange {
    const fd = this.fd(this.fileRec(nodeid, fh).fdName);
    const { start, len } = lockSpan(lock);
    const r = native.fcntlLock(fd, K.F_OFD_GETLK, lock.type, K.SEEK_SET, start, len);
    if (r === null || r.type === K.F_UNLCK) return { type: K.F_UNLCK, start: lock.start, end: lock.end, pid: 0 };
    const end = r.len === 0 ? K.OFFSET_MAX : r.start + r.len - 1;
    // OFD locks have no owning process (l_pid is -1): report the guest pid that took the
    // conflicting lock through another handle, as a POSIX GETLK caller expects.
    return { type: r.type, start: r.start, end, pid: this.lockHolderPid(nodeid, fh, r.start, end) };
  }

  /** Guest pid of a lock on nodeid that overlaps [start, end] and was taken through another fh
   * (0 when unknown, e.g. taken before a worker restart or by a host process). */
  private lockHolderPid(nodeid: NodeId, fh: Handle, start: number, end: number): number {
    for (const h of this.lockHolders.get(nodeid) ?? []) {
      if (h.fh !== fh && h.start <= end && start <= h.end) return h.pid;
    }
    return 0;
  }

  private noteLock(nodeid: NodeId, fh: Handle, lock: LockRange): void {
    const list = (this.lockHolders.get(nodeid) ?? []).filter((h) => !(h.fh === fh && h.start <= lock.end && lock.start <= h.end));
    if (lock.type !== K.F_UNLCK) list.push({ fh, start: lock.start, end: lock.end, pid: lock.pid });
    if (list.length > 0) this.lockHolders.set(nodeid, list);
    else this.lockHolders.delete(nodeid);
  }

  private dropLocks(nodeid: NodeId, fh: Handle): void {
    const list = this.lockHolders.get(nodeid)?.filter((h) => h.fh !== fh);
    if (list && list.length > 0) this.lockHolders.set(nodeid, list);
    else this.lockHolders.delete(nodeid);
  }

  /**
   * SETLK/SETLKW. Both run the non-blocking call first; a SETLKW that meets a conflict is parked
   * (see lock_waiter.ts) and its Promise settles when a retry takes the lock, or with EINTR when
   * `signal` aborts (INTERRUPT), the fh is released or the session ends. A taken lock is
   * recorded as SETLK records it (noteLock); a wait that did not take it changed nothing.
   */
  setlk(ctx: Context, nodeid: NodeId, fh: Handle, owner: bigint, lock: LockRange, sleep: boolean,
    isFlock: boolean, signal?: AbortSignal): void | Promise<void> {
    const rec = this.fileRec(nodeid, fh);
    let attempt: (fd: number) => void;
    if (isFlock) {
      const op = lock.type === K.F_UNLCK ? K.LOCK_UN : lock.type === K.F_RDLCK ? K.LOCK_SH : lock.type === K.F_WRLCK ? K.LOCK_EX : -1;
      if (op < 0) throw errno(K.EINVAL, 'lock type');
      attempt = (fd) => native.flock(fd, op | (op === K.LOCK_UN ? 0 : K.LOCK_NB));
    } else {
      if (lock.type !== K.F_UNLCK && lock.type !== K.F_RDLCK && lock.type !== K.F_WRLCK) throw errno(K.EINVAL, 'lock type');
      const { start, len } = lockSpan(lock);
      attempt = (fd) => {
        native.fcntlLock(fd, K.F_OFD_SETLK, lock.type, K.SEEK_SET, start, len);
        this.noteLock(nodeid, fh, lock);
      };
    }
    try {
      attempt(this.fd(rec.fdName));
    } catch (e) {
      if (!sleep || !isEagain(e)) throw e;
      return this.parkLock(nodeid, fh, rec.fdName, attempt, signal);
    }
    // An unlock or a downgrade (also a flock conversion) may let parked waiters in.
    if (lock.type !== K.F_WRLCK) this.lockWaits.wake(nodeid);
  }

  /** Parks a SETLKW; its fd stays open (busy) until the wait ends. */
  private parkLock(nodeid: NodeId, fh: Handle, fdName: string, attempt: (fd: number) => void, signal?: AbortSignal): Promise<void> {
    const fd = this.acquire(fdName);
    let p: Promise<void>;
    try {
      p = this.lockWaits.park(nodeid, fh, () => {
        try {
          attempt(fd);
          return true;
        } catch (e) {
          if (isEagain(e)) return false;
          throw e;
        }
      }, signal);
    } catch (e) {
      this.release_(fdName);
      throw e;
    }
    return p.finally(() => this.release_(fdName));
  }

  /** SETLKW waits parked now (for status and tests). */
  get parkedLockWaits(): number {
    return this.lockWaits.parked;
  }

  // ================================================================ ranges

  async fallocate(ctx: Context, nodeid: NodeId, fh: Handle, mode: number, offset: number, length: number): Promise<void> {
    const rec = this.fileRec(nodeid, fh);
    checkOffset(offset, 'offset');
    checkOffset(length, 'length');
    return this.runAsync<void>([rec.fdName], ([fd], cb) => native.fallocate(fd, mode, offset, length, cb));
  }

  lseek(ctx: Context, nodeid: NodeId, fh: Handle, offset: number, whence: number): number {
    return native.lseek(this.fd(this.fileRec(nodeid, fh).fdName), checkOffset(offset, 'offset'), whence);
  }

  async copyFileRange(ctx: Context, nodeidIn: NodeId, fhIn: Handle, offIn: number, nodeidOut: NodeId, fhOut: Handle,
    offOut: number, length: number, flags: number): Promise<number> {
    const a = this.fileRec(nodeidIn, fhIn);
    const b = this.fileRec(nodeidOut, fhOut);
    checkOffset(offIn, 'offset');
    checkOffset(offOut, 'offset');
    checkOffset(length, 'length');
    const names = a.fdName === b.fdName ? [a.fdName] : [a.fdName, b.fdName];
    return this.runAsync<number>(names, (fds, cb) =>
      native.copyFileRange(fds[0], offIn, fds[fds.length - 1], offOut, length, flags, cb));
  }

  // ================================================================ probes (no lookup counts)

  /** Never throws (the FUSE server calls it around requests it is settling): a name that is
   * not a plain component, an unknown or non-directory parent, or a failed fstatat give null. */
  probeEntry(parent: NodeId, name: Buffer): EntryProbe | null {
    try {
      checkComponent(name, false);
      const dirFd = this.fd(this.dirInode(parent).fdName);
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
      return Number(this.statFd(this.fd(rec.fdName)).readBigUInt64LE(STAT.size));
    } catch (e) {
      this.log.warn({ err: e, fh }, 'probeAppendSize failed');
      return null;
    }
  }

}

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

/** A lock conflict from F_OFD_SETLK or flock(LOCK_NB) (EWOULDBLOCK is EAGAIN on Linux). */
function isEagain(e: unknown): boolean {
  return (e as { errno?: unknown }).errno === K.EAGAIN;
}

/** fuse_file_lock (start, inclusive end) → struct flock (start, len; 0 = to EOF). Ends at or
 * above 2^53-1 (the FUSE server's LOCK_END_OF_FILE; OFFSET_MAX included) mean "to EOF". */
function lockSpan(lock: LockRange): { start: number; len: number } {
  const start = lock.start;
  if (!Number.isSafeInteger(start) || start < 0) throw errno(K.EINVAL, 'lock start');
  if (!(lock.end < Number.MAX_SAFE_INTEGER)) return { start, len: 0 };
  if (!Number.isInteger(lock.end) || lock.end < start) throw errno(K.EINVAL, 'lock end');
  return { start, len: lock.end - start + 1 };
}

/** The first `size` bytes of the segments (the server may hand buffers larger than the request). */
function memoryBacked(fd: number): boolean {
  try {
    const type = statfsSync(procPath(fd)).type;
    return type === TMPFS_MAGIC || type === RAMFS_MAGIC;
  } catch {
    return false;
  }
}

function segmentsLength(segments: IoSegment[]): number {
  let n = 0;
  for (const s of segments) n += s.length;
  return n;
}

/** The segments after their first `n` bytes. */
function skipSegments(segments: IoSegment[], n: number): IoSegment[] {
  let i = 0;
  while (i < segments.length && n >= segments[i].length) n -= segments[i++].length;
  if (i >= segments.length) return [];
  const rest = segments.slice(i);
  if (n > 0) rest[0] = { buffer: rest[0].buffer, offset: rest[0].offset + n, length: rest[0].length - n };
  return rest;
}

function trimSegments(segments: IoSegment[], size: number): IoSegment[] {
  let left = size;
  const out: IoSegment[] = [];
  for (const s of segments) {
    if (left <= 0) break;
    if (s.length <= left) {
      out.push(s);
      left -= s.length;
    } else {
      out.push({ buffer: s.buffer, offset: s.offset, length: left });
      left = 0;
    }
  }
  return out;
}
