// The one typed interface to the C++ addon (native/src). Everything else imports from here;
// the untyped `require` of the .node file happens on exactly one line below.
//
// Conventions of the addon:
// - Every fd it creates is O_CLOEXEC / SOCK_CLOEXEC / MFD_CLOEXEC / EFD_CLOEXEC, so no fd of
//   ours leaks into a child process.
// - Failed syscalls throw a NativeError carrying `code` ("ENOENT"), `errno` (positive number)
//   and `syscall`. Misuse (wrong argument count/type, out-of-range offsets) throws a TypeError
//   or RangeError with `code` "ERR_INVALID_ARG_TYPE"/"ERR_OUT_OF_RANGE".
// - Async calls run on the libuv threadpool and call back `(err: NativeError | null, result)`.
// - Paths and names are `string | Buffer`; Buffers are passed through as raw bytes (Linux
//   file names are bytes, not UTF-8). A path containing a NUL byte is rejected with EINVAL.
import * as path from 'node:path';

export type PathLike = string | Buffer;

export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

export function isNativeError(e: unknown): e is NativeError {
  return e instanceof Error && typeof (e as Partial<NativeError>).errno === 'number' &&
    typeof (e as Partial<NativeError>).code === 'string';
}

/** Byte offsets inside the 128-byte buffer filled by fstatat(); each field is a little-endian u64
 * (timestamps' seconds are i64). */
export const STAT = {
  dev: 0, ino: 8, mode: 16, nlink: 24, uid: 32, gid: 40, rdev: 48, size: 56, blksize: 64,
  blocks: 72, atime: 80, atimeNsec: 88, mtime: 96, mtimeNsec: 104, ctime: 112, ctimeNsec: 120,
  SIZE: 128,
} as const;

export interface StatFs {
  bsize: number; frsize: number; blocks: number; bfree: number; bavail: number;
  files: number; ffree: number; namelen: number;
  /** f_type: the filesystem's magic number (TMPFS_MAGIC...). */
  type: number;
}

export interface PeerCred { pid: number; uid: number; gid: number }

export interface RecvResult {
  /** Bytes received; 0 means the peer closed the connection (EOF). */
  bytes: number;
  /** File descriptors received with SCM_RIGHTS (already O_CLOEXEC). */
  fds: number[];
  /** MSG_TRUNC or MSG_CTRUNC was set: data or fds were cut off (the received fds are kept). */
  truncated: boolean;
  /** The sender's pid (in our pid namespace) when the socket has SO_PASSCRED, else null (also
   * when the sender has no pid here). */
  credPid: number | null;
}

/** One rule of the seccomp allow-list (worker/seccomp_policy.ts; native/src/seccomp.cc). */
export interface SeccompRule {
  syscall: string;
  /** Refuse with this errno instead of allowing. */
  errno?: number;
  /** Allow only when this argument (0-5) passes exactly one of the tests below. */
  arg?: number;
  equals?: readonly number[];
  maskClear?: number;
  maskSet?: number;
}

export interface FlockInfo { type: number; whence: number; start: number; len: number; pid: number }

export interface FileHandle { mountId: number; handleType: number; handle: Buffer }

/** A slice of mapped memory (an ArrayBuffer returned by mmap) used as one iovec. */
export interface IoSegment { buffer: ArrayBuffer; offset: number; length: number }

export type Callback<T> = (err: NativeError | null, result: T) => void;

export const POLL_READABLE = 1;
export const POLL_WRITABLE = 2;
/** The peer shut down or closed the connection (EPOLLRDHUP), without reading anything. */
export const POLL_DISCONNECT = 4;

/** fd readiness via uv_poll_t on the current env's loop. The callback gets a negative libuv
 * status on error, else 0, and the ready events (POLL_READABLE | POLL_WRITABLE |
 * POLL_DISCONNECT). */
/** A kick handler (Poller.setKickHandler) read the eventfd before the callback ran. */
export const POLL_KICK_READ = 8;

export interface Poller {
  start(events: number): void;
  stop(): void;
  /** Stops and releases the uv handle. Does not close the fd. Idempotent. */
  close(): void;
  /** For a kick eventfd: a readable event first goes to the ring's native kick (which reads the
   * eventfd and serves what it can); the callback runs, with POLL_KICK_READ, only when
   * JavaScript has work left. null: the callback gets every event again. */
  setKickHandler(ring: NativeRingHandle | null): void;
}
export interface PollerConstructor {
  new (fd: number, callback: (status: number, events: number) => void): Poller;
}

/** The split ring in the addon (native/src/ring.cc; worker/virtqueue/native_ring.ts wraps it).
 * Ring breakage throws an error with code "ERR_VIRTQUEUE_BROKEN". */
export interface NativeRingHandle {
  /** The next chain for JS: its head (segments in `scratch`), -1 when none, -2 malformed
   * (`lastError`, scratch[0] its head or -1), -3 the requests the server served whose session
   * effect JS must journal, in pop order (scratch[0] their count, their entries in `records`,
   * scratch[1] the bytes of their long replies in `tail`: native_ring.ts reads them). Other
   * chains the attached server serves are not returned. */
  pop(): number;
  /** The requests the ring's native kick journaled and published itself, whose session effects
   * JS applies (-3, as pop() returns them; scratch[2] is 1), or -1 with nothing popped. */
  takeJournaled(): number;
  /** A chain by head (resubmission): head, or -2. */
  readChain(head: number): number;
  pushUsed(head: number, len: number): void;
  publishUsed(): boolean;
  enableNotification(): boolean;
  disableNotification(): void;
  pending(): number;
  availIdx(): number;
  usedIndex(): number;
  lastAvailIdx(): number;
  counterOf(head: number): bigint;
  recoverInflight(): number[];
  takeServed(): number;
  attach(server: FastFuseHandle | null): void;
  /** Kicks served natively (Poller.setKickHandler) from now on, or not. */
  setFastKick(on: boolean): void;
  /** The call eventfd the native kick interrupts with (the ring keeps a dup); -1: none. */
  setCallFd(fd: number): void;
  /** fn gets the requests the ring's I/O threads finished ((head, used length) pairs, count),
   * for the queue to push and publish as its completions. */
  setQueuedDone(fn: (done: Float64Array, count: number) => void): void;
  /** Requests on the I/O threads, not yet handed to setQueuedDone's fn. */
  queuedPending(): number;
  /** Releases the ring's hold on its mappings; every later call throws. */
  close(): void;
  /** [head, counter, resubmitted, nReadable, nWritable, (region, offset, length)...]. */
  readonly scratch: Float64Array;
  readonly lastError: string;
  readonly records: Uint8Array;
  readonly tail: Uint8Array;
}

export interface NativeRingConstructor {
  new (regions: ReadonlyArray<{ buffer: ArrayBuffer; guestPhysAddr: number; size: number; userspaceAddr: number; mmapOffset: number }>,
    size: number, descUser: number, availUser: number, usedUser: number, lastAvailIdx: number, eventIdx: boolean,
    indirect: boolean, inflight: ArrayBuffer | null, inflightBase: number, queueIndex: number): NativeRingHandle;
}

/** An inode the fast path found for a LOOKUP and numbered (native/src/fast_fuse.cc LookupNew,
 * named by a file handle on the shared directory's mount), as a served batch reports it: its
 * O_PATH fd (the receiver's to keep or close), identity and handle. */
export interface ServedNewInode {
  /** -1: none opened (a READDIRPLUS's new inode while the inode fd cache is full). */
  fd: number;
  fileType: number;
  dev: bigint;
  ino: bigint;
  mountId: number;
  handleType: number;
  /** A view into the batch's copy (copy it to keep it). */
  handle: Buffer;
}

/** A file the addon's OPEN opened as the session's next fh (native/src/fast_fuse.cc Open), or
 * the file a RELEASE took out of its table (its fd is JavaScript's to close). */
export interface ServedFile {
  fd: number;
  fh: number;
  /** As passed to open(2). */
  flags: number;
}

/** A READDIRPLUS the addon served of the open dir `fh`: the dir now stands at `position`;
 * `newInodes` are the inodes it added, in the reply's order (each entry of the reply with one
 * of these nodeids, the first time, is that new inode; every other entry a lookup). */
export interface ServedReaddir {
  fh: number;
  position: bigint;
  newInodes: ReadonlyArray<{ nodeid: number; inode: ServedNewInode }>;
}

export interface FastFuseStats { getattr: number; read: number; write: number; queuedRead: number; queuedWrite: number; fsync: number; lookup: number; flush: number; getxattr: number; listxattr: number; statfs: number; lseek: number; setattr: number; lookupMissing: number; lookupNew: number; open: number; release: number; opendir: number; releasedir: number; create: number; mkdir: number; unlink: number; rmdir: number; intents: number; ownOutcomes: number; intentErrors: number; readdirplus: number; direntsPlus: number; direntsNew: number; forget: number; declined: number;
  /** Declined requests by opcode (index; the last slot counts every opcode past it). */
  declinedByOpcode: number[]; inodes: number; files: number }

/** The FUSE fast server (native/src/fast_fuse.cc): GETATTR, READ, WRITE, LOOKUP, FLUSH, GETXATTR served in the addon
 * from tables the filesystem keeps (worker/fs/fast_table.ts). */
export interface FastFuseHandle {
  setEnabled(enabled: boolean): void;
  setReadonly(readonly: boolean): void;
  setAttrTimeout(sec: number, nsec: number): void;
  /** Whether xattrs are on, and the directory fd of /proc/self/fd (AT_FDCWD: its absolute
   * path); the addon keeps a dup of it. */
  setXattr(enabled: boolean, procFdDir: number): void;
  setInode(nodeid: number, fd: number): void;
  deleteInode(nodeid: number): void;
  setFile(fh: number, nodeid: number, fd: number, flags: number): void;
  deleteFile(fh: number): void;
  /** The identity a LOOKUP checks a name against (the session's inode record), and the type
   * GETXATTR needs; `handle` null: the inode has no file handle (mountId, handleType ignored). */
  setInodeMeta(nodeid: number, dev: bigint, ino: bigint, generation: number, fileType: number,
    handle: Buffer | null, mountId: number, handleType: number): void;
  /** The session dropped the inode: its identity and its fd entry go. */
  forgetInode(nodeid: number): void;
  /** New inodes on this mount are named by file handles, so a LOOKUP may add one (-1: handles
   * are off: new inodes are TypeScript's). */
  setHandles(mountId: number): void;
  /** The session's next nodeid, which a LOOKUP that adds an inode takes (0: none added). Every
   * setInodeMeta moves it past its nodeid; clear() sets it to 0. */
  setNextNodeId(nextNodeId: number): void;
  /** The session's next fh, which an OPEN takes (0: OPEN is TypeScript's). setFile moves it
   * past its fh; clear() sets it to 0. */
  setNextFh(nextFh: number): void;
  /** How many more files OPEN may open within the fd budget (each native OPEN takes one). */
  setOpenRoom(room: number): void;
  /** The open(2) flags OPEN passes on, whether the session has the writeback cache, and the
   * FOPEN_* flags of its replies; OPEN is TypeScript's until this is called. */
  setOpenPolicy(passFlags: number, writeback: boolean, replyFlags: number, dirReplyFlags: number): void;
  /** The state journal's mapping (worker/state/journal.ts), which CREATE, MKDIR, UNLINK and RMDIR
   * write their intents to before their syscall (null: none, they are TypeScript's); set again whenever it
   * is mapped anew, and null before it is unmapped. */
  setJournal(mapping: ArrayBuffer | null): void;
  /** Whether the keeper holds every open fd (UNLINK and RMDIR need it; a native OPEN or
   * OPENDIR clears it). */
  setSettled(settled: boolean): void;
  /** LOOKUPs of known inodes the addon journals itself go into TAG_LOOKUPS records (schema 3,
   * raised in the header first), or (false: a drain leaves a file an older build reads) into
   * plain outcome records. */
  setLookupsRecords(on: boolean): void;
  /** One more inode fd would evict another (worker/fs/inode_fds.ts full): a READDIRPLUS then
   * names a new inode by its handle read by name, opening no fd. */
  setInodeCacheFull(full: boolean): void;
  /** CREATE may be served (the session did not grant FUSE_DONT_MASK: files are created with
   * umask 0, which the addon sets process-wide before its first). */
  setCreatePolicy(enabled: boolean): void;
  /** Benchmark only (VFSK_BENCH_NO_JOURNAL): CREATE, MKDIR, UNLINK and RMDIR are served without their
   * intents, as TypeScript's requests are then. */
  setUnjournaled(on: boolean): void;
  /** An open dir (RELEASEDIR's table); moves the next fh past it. */
  setDir(fh: number, nodeid: number, fd: number): void;
  deleteDir(fh: number): void;
  /** TypeScript is about to read the open dir `fh`: whether a READDIRPLUS the addon served or
   * declined moved its fd since the last call (the addon's next one seeks again). */
  takeDir(fh: number): boolean;
  /** The inode has `n` POSIX lock owners (a FLUSH may then drop locks: TypeScript's). */
  setLockOwners(nodeid: number, n: number): void;
  clear(): void;
  /** Tests: `fn` runs at the point (1 after pop, 2 after the syscall, 3 before publish, 4 after
   * the intent) of a
   * natively served request of `opcode` (-1: any). */
  armCrash(point: number, opcode: number, fn: (point: number, opcode: number) => void): void;
  stats(): FastFuseStats;
}

export interface NativeAddon {
  /** Numeric constants from the C headers: O_*, AT_*, RESOLVE_*, S_IF*, F_*, LOCK_*, RENAME_*,
   * XATTR_*, SEEK_*, FALLOC_FL_*, UTIME_NOW, UTIME_OMIT, MFD_*, F_ADD_SEALS, F_GET_SEALS, F_SEAL_*,
   * EFD_*, SHUT_*, and E* errnos
   * (every name glibc knows, plus the aliases EWOULDBLOCK, EDEADLOCK, ENOTSUP). Also SCM_MAX_FD,
   * IOV_MAX, MAX_HANDLE_SZ, PAGE_SIZE and the preadv2/pwritev2 flags RWF_*. O_LARGEFILE is the
   * kernel's bit (0o100000 on x86-64), as found in FUSE open flags; glibc's own O_LARGEFILE is 0
   * on 64-bit. */
  constants: Record<string, number>;
  /** errno → "ENAME" for every errno the platform knows; a negative value (a libuv status) is
   * taken as its absolute value; unknown numbers give "UNKNOWN". */
  errnoName(errno: number): string;

  // --- fds
  close(fd: number): void;
  /** fcntl(F_DUPFD_CLOEXEC, minFd): the lowest free fd >= minFd (default 0). */
  dup(fd: number, minFd?: number): number;
  /** kcmp(KCMP_FILE): the two fds share one open file description (dups, or SCM_RIGHTS
   * copies of one fd). */
  sameOpenFile(fdA: number, fdB: number): boolean;
  setNonBlocking(fd: number, nonBlocking: boolean): void;
  /** Raises RLIMIT_NOFILE's soft limit to min(hard, wanted) (and the hard limit too when
   * privileged, up to /proc/sys/fs/nr_open). Returns the new soft limit. */
  raiseNoFileLimit(wanted: number): number;
  /** F_SETFD: sets or clears FD_CLOEXEC. */
  setCloexec(fd: number, cloexec: boolean): void;
  /** Reads F_GETFD/F_GETFL: { cloexec, flags }. */
  fdFlags(fd: number): { cloexec: boolean; statusFlags: number };

  // --- processes (a keeper re-exec: keeper/reexec.ts)
  /** execve(path, argv, env): replaces the process image, keeping its pid and every fd without
   * FD_CLOEXEC; returns only by throwing (errno). */
  execve(path: string, argv: string[], env: string[]): never;
  /** pidfd_open(pid): a close-on-exec fd that polls readable once `pid` has exited. */
  pidfdOpen(pid: number): number;
  /** waitpid(pid, WNOHANG) on our child: its exit ({ code } or { signal } as a number) once it
   * has exited, else null; throws ECHILD for a pid that is not our child. */
  waitChild(pid: number): { code: number | null; signal: number | null } | null;

  // --- UNIX sockets (all non-blocking and close-on-exec)
  /** socket + bind + listen. Unlinks nothing. kind: "stream" | "seqpacket"; "dgram" only binds
   * (no listen; backlog ignored) to receive datagrams, e.g. a NOTIFY_SOCKET. A path starting
   * with "@" is in the abstract namespace. */
  unixListen(path: string, kind: 'stream' | 'seqpacket' | 'dgram', backlog: number): number;
  unixConnect(path: string, kind: 'stream' | 'seqpacket' | 'dgram'): number;
  /** accept4; returns -1 on EAGAIN. */
  accept(listenFd: number): number;
  socketpair(kind: 'stream' | 'seqpacket' | 'dgram'): [number, number];
  /** sendmsg with SCM_RIGHTS (fds may be empty, at most 253). MSG_NOSIGNAL. Returns bytes sent,
   * or -1 on EAGAIN. On a stream socket fds only travel with at least one byte of data. */
  sendMsg(fd: number, data: Buffer, fds: number[]): number;
  /** sendto a datagram socket path (for sd_notify: NOTIFY_SOCKET, "@" = abstract), with fds.
   * Opens and closes its own socket. */
  sendDatagram(path: string, data: Buffer, fds: number[]): void;
  /** recvmsg with MSG_CMSG_CLOEXEC into buf (at most buf.length bytes). Returns null on
   * EAGAIN. */
  recvMsg(fd: number, buf: Buffer, maxFds: number): RecvResult | null;
  peerCred(fd: number): PeerCred;
  shutdown(fd: number, how: number): void;

  // --- memory, eventfd
  memfdCreate(name: string, flags: number): number;
  /** MAP_SHARED mapping as an external ArrayBuffer. length > 0; offset page-aligned (else
   * RangeError). With writable=false the pages are read-only: a JS write through a view of it
   * kills the process (SIGSEGV), so only read it; storeRelease* refuses it with a TypeError. */
  mmap(fd: number, length: number, offset: number, writable: boolean): ArrayBuffer;
  /** fcntl(F_GET_SEALS): the F_SEAL_* bits set on a memfd (or shmem file). Throws EINVAL for an
   * fd that does not support seals. */
  getSeals(fd: number): number;
  /** fcntl(F_ADD_SEALS). Throws EPERM when the fd is sealed against new seals (F_SEAL_SEAL, as
   * on every memfd created without MFD_ALLOW_SEALING), EINVAL without seal support, EBUSY for
   * F_SEAL_WRITE with writable mappings; a RangeError for bits that are not F_SEAL_* flags. */
  addSeals(fd: number, seals: number): void;
  /** Detaches the ArrayBuffer (every view becomes length 0) and unmaps it; the unmap is deferred
   * until async I/O that uses the mapping has finished. Idempotent. */
  munmap(buffer: ArrayBuffer): void;
  eventfd(initval: number, flags: number): number;
  /** At a quiet moment: V8's low-memory GC (a synchronous full GC that also shrinks the young
   * generation and releases pooled pages) and glibc's malloc_trim(0). True if malloc gave pages
   * back. See docs/ARCHITECTURE.md, "Memory". */
  reduceMemory(): boolean;
  /** glibc's mallinfo2 in bytes (diagnostics): arena (brk + arenas), mmapped (large blocks),
   * inUse, free (held by malloc), releasable (top of the main heap). */
  mallocStats(): { arena: number; mmapped: number; inUse: number; free: number; releasable: number };
  /** Adds value to the eventfd counter (write of 8 bytes). Returns false on EAGAIN. */
  eventfdWrite(fd: number, value: number): boolean;
  /** Reads and resets the counter; returns -1 on EAGAIN. */
  eventfdRead(fd: number): number;

  // --- memory ordering for rings shared with the guest
  loadAcquireU16(buffer: ArrayBuffer, offset: number): number;
  storeReleaseU16(buffer: ArrayBuffer, offset: number, value: number): void;
  loadAcquireU64(buffer: ArrayBuffer, offset: number): bigint;
  storeReleaseU64(buffer: ArrayBuffer, offset: number, value: bigint): void;
  /** Full barrier (seq_cst fence): needed between publishing used->idx and reading
   * avail_event/flags when deciding whether to notify. */
  fence(): void;

  Poller: PollerConstructor;
  NativeRing: NativeRingConstructor;
  FastFuse: new () => FastFuseHandle;

  // --- credentials of the calling (JS) thread, for creating files as the guest's caller
  /** setfsgid(gid) then setfsuid(uid) via raw syscalls (per thread). Returns the previous
   * [uid, gid]; -1 leaves an id unchanged (so setFsIds(-1, -1) queries). Affects only the
   * synchronous calls made on the JS thread, never the async (threadpool) ones. */
  setFsIds(uid: number, gid: number): [number, number];

  // --- filesystem: synchronous, fast metadata calls
  openat(dirfd: number, path: PathLike, flags: number, mode: number): number;
  /** openat2 with struct open_how { flags, mode, resolve }. ENOSYS on old kernels. */
  openat2(dirfd: number, path: PathLike, flags: number, mode: number, resolve: number): number;
  /** Fills `out` (at least STAT.SIZE bytes) per the STAT layout. Use AT_EMPTY_PATH with "". */
  fstatat(dirfd: number, path: PathLike, flags: number, out: Buffer): void;
  mkdirat(dirfd: number, path: PathLike, mode: number): void;
  mknodat(dirfd: number, path: PathLike, mode: number, dev: number): void;
  symlinkat(target: PathLike, dirfd: number, path: PathLike): void;
  /** The link target as raw bytes. */
  readlinkat(dirfd: number, path: PathLike): Buffer;
  linkat(olddirfd: number, oldpath: PathLike, newdirfd: number, newpath: PathLike, flags: number): void;
  unlinkat(dirfd: number, path: PathLike, flags: number): void;
  renameat2(olddirfd: number, oldpath: PathLike, newdirfd: number, newpath: PathLike, flags: number): void;
  fchmod(fd: number, mode: number): void;
  fchmodat(dirfd: number, path: PathLike, mode: number, flags: number): void;
  /** faccessat2(2) (mode: F_OK or R_OK | W_OK | X_OK); throws EACCES etc. */
  faccessat(dirfd: number, path: PathLike, mode: number, flags: number): void;
  fchownat(dirfd: number, path: PathLike, uid: number, gid: number, flags: number): void;
  /** utimensat; nsec may be UTIME_NOW / UTIME_OMIT. A null path means the fd itself. */
  utimensat(dirfd: number, path: PathLike | null, atimeSec: number, atimeNsec: number,
    mtimeSec: number, mtimeNsec: number, flags: number): void;
  ftruncate(fd: number, length: number): void;
  fstatfs(fd: number): StatFs;
  /** getdents64 into buf; returns bytes filled (0 at end). Records are linux_dirent64. */
  getdents64(fd: number, buf: Buffer): number;
  /** For each of `count` names in `names` (index: pairs of LE i32 start, length; each name is
   * NUL-terminated in place, as getdents64 leaves it): fstatat(dirfd, name,
   * AT_SYMLINK_NOFOLLOW) into slot i of `out` (DIRENT_STAT_SLOT bytes: STAT layout, then an i32
   * errno, 0 when the stat is valid). A name that is not one plain component gets EINVAL. */
  fstatatDirents(dirfd: number, names: Buffer, index: Buffer, count: number, out: Buffer): void;
  /** Bytes per slot of fstatatDirents' output. */
  readonly DIRENT_STAT_SLOT: number;
  /** A number offset for files (exact up to 2^53); a bigint offset (any s64, e.g. an ext4
   * directory hash cookie) returns the new position as a bigint. */
  lseek(fd: number, offset: number, whence: number): number;
  lseek(fd: number, offset: bigint, whence: number): bigint;
  /** fd-based xattr calls when target is a number, l*xattr (no-follow) on a path when it is a
   * string/Buffer. With a null buf they return the size needed. */
  getxattr(target: number | PathLike, name: PathLike, buf: Buffer | null): number;
  setxattr(target: number | PathLike, name: PathLike, value: Buffer, flags: number): void;
  listxattr(target: number | PathLike, buf: Buffer | null): number;
  removexattr(target: number | PathLike, name: PathLike): void;
  /** Open file description locks: cmd is F_OFD_GETLK or F_OFD_SETLK (anything else is a
   * RangeError: blocking would hold a thread; worker/fs/lock_waiter.ts retries F_OFD_SETLK
   * instead). For GETLK returns the conflicting lock (type F_UNLCK when none; pid is -1 for OFD locks); for SETLK returns null, a conflict throws EAGAIN. */
  fcntlLock(fd: number, cmd: number, type: number, whence: number, start: number, len: number): FlockInfo | null;
  /** flock(2); use LOCK_NB for the non-blocking form (without it this blocks the JS thread). A
   * conflict with LOCK_NB throws code "EAGAIN" (== EWOULDBLOCK). */
  flock(fd: number, operation: number): void;
  nameToHandleAt(dirfd: number, path: PathLike, flags: number): FileHandle;
  /** fstat of `fd` (AT_EMPTY_PATH, no symlink followed) into `stat` (>= 128 bytes; throws as
   * fstatat does), then its file handle into `handle` (>= 136 bytes: i32 mount id, i32 handle
   * type, the bytes): returns the handle's length, or -errno when there is none. */
  fstatHandle(fd: number, stat: Buffer, handle: Buffer): number;
  /** fstatHandle of `name` under `dirfd` (no symlink followed, nothing opened). */
  fstatHandleAt(dirfd: number, name: PathLike, stat: Buffer, handle: Buffer): number;
  /** Whether name_to_handle_at of `path` gives exactly this handle (compared natively: no
   * object or Buffer per call). */
  sameHandleAt(dirfd: number, path: PathLike, flags: number, mountId: number, handleType: number, handle: Buffer): boolean;
  openByHandleAt(mountFd: number, handle: FileHandle, flags: number): number;

  // --- confinement (worker/sandbox.ts)
  /** In a mount namespace of our own (EPERM in our parent's; when the parent's cannot be read,
   * only if ownNamespaceDeclared): `dir` becomes "/" as a read-only, nosuid, nodev, noexec bind
   * mount, the old root is detached, cwd "/". */
  pivotRoot(dir: PathLike, ownNamespaceDeclared: boolean): void;
  /** chroot(dir), chdir("/"). */
  chrootTo(dir: PathLike): void;
  /** An O_PATH fd of the root of a bind mount of `dir` attached nowhere (open_tree
   * OPEN_TREE_CLONE): '..' from it stays at `dir`. */
  detachedTree(dir: PathLike): number;
  /** The root fd of a new procfs of our pid namespace attached nowhere: nosuid, nodev, noexec,
   * subset=pid, hidepid=invisible. */
  detachedProc(): number;
  /** The calling thread (and threads it creates later) keeps only the capabilities of
   * boundingMask in its bounding set and those of permittedMask in its permitted/effective sets
   * (bit n = capability n); inheritable and ambient become empty. */
  limitCapabilities(boundingMask: number, permittedMask: number): void;
  /** prctl(PR_SET_DUMPABLE, 0): /proc/PID/fd etc. then need CAP_SYS_PTRACE. */
  setNotDumpable(): void;
  /** _exit(status): no JS, no exit handlers, nothing flushed. */
  exitNow(status: number): never;
  /** SIGTERM then makes the process _exit(128+15) from a native handler (no JS needed). */
  exitOnSigterm(): void;
  /** SO_PASSCRED on a unix socket: recvMsg then reports the sender's pid (credPid). */
  setPassCred(fd: number, on: boolean): void;
  /** prctl(PR_SET_NO_NEW_PRIVS, 1). */
  setNoNewPrivs(): void;
  /** Installs the seccomp filter on every thread (TSYNC), after PR_SET_NO_NEW_PRIVS: each rule
   * allows its syscall, allows it when argument `arg`'s low 32 bits pass one test, or refuses it
   * with `errno`; any other syscall gets `action`: kill (SECCOMP_RET_KILL_PROCESS), trap (fails
   * with ENOSYS and is logged as a JSON line on logFd, at a bounded rate) or log (allowed; the
   * kernel's audit log names it). An unknown syscall name throws. */
  seccompInstall(rules: readonly SeccompRule[], action: 'kill' | 'trap' | 'log', logFd: number): void;
  /** This architecture's number of a syscall, or -1 when it has none by that name. */
  seccompSyscallNumber(name: string): number;
  /** What a compromised worker would try, for `sandbox-check`: 0 if it succeeded, else its
   * errno. 'socket-inet', 'connect-inet' (arg: IPv4 address, port 53), 'ptrace' (arg: pid,
   * PTRACE_ATTACH), 'mount' (arg: target, a tmpfs), 'execve' (arg: path; on success this
   * process becomes that program), 'setuid-back' (this process drops to uid 65534, then tries
   * setuid(0)). */
  probe(what: 'socket-inet' | 'connect-inet' | 'ptrace' | 'mount' | 'execve' | 'setuid-back', arg: string): number;

  // --- filesystem: slow calls, off the JS thread (except the two *Sync attempts below)
  /** preadv into mapped memory; result = bytes read. */
  preadv(fd: number, position: number, segments: IoSegment[], cb: Callback<number>): void;
  /** pwritev from mapped memory; result = bytes written. */
  pwritev(fd: number, position: number, segments: IoSegment[], cb: Callback<number>): void;
  /** preadv2 into mapped memory, synchronously on the calling (JS) thread; meant for
   * flags = RWF_NOWAIT (constants.RWF_*). Returns bytes read, or a negative errno VALUE (not an
   * exception) when the call would block or NOWAIT is not supported there: -EAGAIN (data not
   * in the page cache; with NOWAIT a partly cached range may instead give a short count) or
   * -EOPNOTSUPP. Any other failure throws a NativeError; bad segments throw like preadv. */
  preadv2Sync(fd: number, position: number, segments: IoSegment[], flags: number): number;
  /** pwritev2 from mapped memory, synchronously; same contract as preadv2Sync. Many
   * filesystems (e.g. ext4) answer -EOPNOTSUPP for buffered RWF_NOWAIT writes. */
  pwritev2Sync(fd: number, position: number, segments: IoSegment[], flags: number): number;
  /** pread/pwrite into/from a Buffer. */
  pread(fd: number, buf: Buffer, position: number, cb: Callback<number>): void;
  pwrite(fd: number, buf: Buffer, position: number, cb: Callback<number>): void;
  fsync(fd: number, dataOnly: boolean, cb: Callback<void>): void;
  syncfs(fd: number, cb: Callback<void>): void;
  fallocate(fd: number, mode: number, offset: number, length: number, cb: Callback<void>): void;
  copyFileRange(fdIn: number, offIn: number, fdOut: number, offOut: number, length: number,
    flags: number, cb: Callback<number>): void;
}

// The one untyped line: loading the compiled addon.
// eslint-disable-next-line @typescript-eslint/no-var-requires
export const native: NativeAddon = require(path.join(__dirname, '..', '..', 'build', 'Release', 'vfsk_native.node'));
export const C = native.constants;
