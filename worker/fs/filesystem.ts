// The filesystem layer's interface: what the FUSE server (worker/fuse/server.ts) calls.
// Modelled on rust-vmm's `FileSystem` trait: the server decodes and validates the wire format,
// the filesystem does the syscalls. Every method may throw an FsError (or a NativeError from the
// addon); the server turns its errno into the reply. Any other exception becomes EIO and is
// logged. Methods return a value or a Promise for calls that run off the JS thread.
//
// Lookup-count contract (as in libfuse's fuse_lowlevel.h): every method that returns an Entry
// with a non-zero nodeid (lookup, mknod, mkdir, symlink, link, create, tmpfile, and each
// readdirplus entry that is accepted) adds 1 to that inode's lookup count; FORGET subtracts
// nlookup; the inode is dropped (and its fd closed) when the count reaches 0.
import type { IoSegment, ServedFile, ServedNewInode, ServedReaddir, StatFs } from '../../shared/native';
import { GuestError } from '../../shared/errors';

/** Nodeids are counters (FUSE_ROOT_ID, 1, is the root), never pointers. */
export type NodeId = number;
/** Open file / dir handles are counters too. */
export type Handle = number;

/** A filesystem operation refused with an errno for the guest (the guest asked for it). */
export class FsError extends GuestError {
  constructor(errno: number, message?: string) {
    super(message ?? `filesystem error errno=${errno}`, errno);
  }
}

/** Caller identity from the FUSE in-header. */
export interface Context { uid: number; gid: number; pid: number }

/** A 128-byte buffer laid out as shared/native.ts STAT. */
export type StatBuffer = Buffer;

export interface Entry {
  nodeid: NodeId;
  generation: number;
  stat: StatBuffer;
  /** Seconds (may be fractional). */
  entryTimeout: number;
  attrTimeout: number;
}

export interface AttrReply { stat: StatBuffer; attrTimeout: number }

export interface OpenReply {
  fh: Handle;
  /** FOPEN_* flags (DIRECT_IO, KEEP_CACHE, CACHE_DIR, ...). */
  openFlags: number;
}

/** SETATTR: only the fields whose FATTR_* bit is in `valid` are meaningful. */
export interface SetattrRequest {
  valid: number;
  fh: Handle;
  size: number;
  atime: number; atimeNsec: number;
  mtime: number; mtimeNsec: number;
  mode: number; uid: number; gid: number;
}

export interface LockRange {
  /** F_RDLCK / F_WRLCK / F_UNLCK */
  type: number;
  start: number;
  /** Inclusive end offset as in fuse_file_lock (OFFSET_MAX = to end of file). */
  end: number;
  pid: number;
}

/** Accepts one directory entry; returns false when the reply buffer is full (the entry was not
 * taken and, for readdirplus, the filesystem must undo that entry's lookup). `nextOffset` is
 * the u64 cookie (0 <= nextOffset < 2^64) that a later readdir passes to continue after this
 * entry: exact, as ext4's hash cookies do not fit a double. */
export interface DirSink {
  add(name: Buffer, ino: Buffer /* 8 bytes, LE u64 */, type: number, nextOffset: bigint,
    entry: Entry | null): boolean;
  /** Bytes the reply can still take, and the size of one record: which entries will fit, so a
   * READDIRPLUS reads the attributes of just those. Without them, a batch is bounded by count. */
  spaceLeft?(): number;
  recordSize?(nameLength: number): number;
  /** add() of a getdents64 record read in place (DirentWriter.addRaw): d_ino and d_off (its
   * s64 bits are the u64 offset) are the 16 bytes at src[recordAt], the name nameLength bytes
   * at src[nameAt]. Optional: without it, add() gets views. */
  addRaw?(src: Buffer, recordAt: number, nameAt: number, nameLength: number, type: number, entry: Entry | null): boolean;
}

/** What a name refers to right now, read without touching lookup counts. */
export interface EntryProbe { ino: bigint; mode: number; ctimeNs: bigint }

export interface FileSystem {
  /** FUSE INIT has been negotiated; `flags` are the FUSE_* flags both sides agreed on. */
  init(flags: bigint): void;
  /** FUSE DESTROY or a new INIT: drop every inode and handle. */
  destroy(): void;

  lookup(ctx: Context, parent: NodeId, name: Buffer): Entry;
  /** The session effect of a LOOKUP the addon's fast path answered (one more lookup of a
   * known inode); throws if the inode is unknown. */
  addLookup?(nodeid: NodeId): void;
  /** The session effect of a LOOKUP the fast path answered with a new inode, which it gave
   * `nodeid` (the session's next): the inode joins the session, its fd the inode fd cache.
   * Throws (the worker must die before the publish) if the session cannot take it. */
  adoptServedInode?(nodeid: NodeId, found: ServedNewInode): void;
  /** The session effect of an OPEN the fast path answered: `file.fh` (the session's next) is
   * an open file of `nodeid` with `file.fd`. Throws (the worker must die before the publish)
   * if the session cannot take it. */
  adoptServedOpen?(nodeid: NodeId, file: ServedFile): void;
  /** The session effect of a CREATE the fast path answered: the inode it added as `nodeid`
   * (as adoptServedInode) and its file, opened as `file.fh` (as adoptServedOpen). Throws (the
   * worker must die before the publish) if the session cannot take them. */
  adoptServedCreate?(nodeid: NodeId, found: ServedNewInode, file: ServedFile): void;
  /** A RELEASE the fast path answered, having taken `file` out of its table: release() of
   * `file.fh`, which uses neither the request's flags nor its lock owner. */
  releaseServed?(nodeid: NodeId, file: ServedFile): void;
  /** The same of OPENDIR and RELEASEDIR. */
  adoptServedOpendir?(nodeid: NodeId, dir: ServedFile): void;
  releasedirServed?(nodeid: NodeId, dir: ServedFile): void;
  /** A READDIRPLUS the addon served of the open dir `served.fh` of `nodeid`: the lookups of the
   * entries in `reply` (the whole reply, out header included) and the dir's new position. */
  readdirplusServed?(nodeid: NodeId, served: ServedReaddir, reply: Buffer): void;
  forget(nodeid: NodeId, nlookup: number): void;
  getattr(ctx: Context, nodeid: NodeId, fh: Handle | null): AttrReply;
  setattr(ctx: Context, nodeid: NodeId, attr: SetattrRequest): AttrReply | Promise<AttrReply>;
  readlink(ctx: Context, nodeid: NodeId): Buffer;
  symlink(ctx: Context, parent: NodeId, name: Buffer, target: Buffer): Entry;
  mknod(ctx: Context, parent: NodeId, name: Buffer, mode: number, rdev: number, umask: number): Entry;
  mkdir(ctx: Context, parent: NodeId, name: Buffer, mode: number, umask: number): Entry;
  unlink(ctx: Context, parent: NodeId, name: Buffer): void;
  rmdir(ctx: Context, parent: NodeId, name: Buffer): void;
  /** flags: RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT */
  rename(ctx: Context, parent: NodeId, name: Buffer, newParent: NodeId, newName: Buffer, flags: number): void;
  link(ctx: Context, nodeid: NodeId, newParent: NodeId, newName: Buffer): Entry;

  open(ctx: Context, nodeid: NodeId, flags: number): OpenReply;
  create(ctx: Context, parent: NodeId, name: Buffer, mode: number, flags: number, umask: number): { entry: Entry; open: OpenReply };
  tmpfile(ctx: Context, parent: NodeId, mode: number, flags: number, umask: number): { entry: Entry; open: OpenReply };
  /** Reads into guest memory segments: bytes read, as a number when it finished synchronously
   * (a page-cache hit) or else a Promise. */
  read(ctx: Context, nodeid: NodeId, fh: Handle, offset: number, size: number, segments: IoSegment[]): number | Promise<number>;
  /** Writes from guest memory segments: bytes written, at once or as a Promise (as read).
   * `writeFlags` FUSE_WRITE_*. */
  write(ctx: Context, nodeid: NodeId, fh: Handle, offset: number, size: number, segments: IoSegment[], writeFlags: number): number | Promise<number>;
  flush(ctx: Context, nodeid: NodeId, fh: Handle, lockOwner: bigint): void;
  /** Whether a FLUSH with lockOwner would change session state (drop the owner's POSIX locks):
   * such a FLUSH is journaled like any state-changing request. Absent: never. */
  flushChangesState?(nodeid: NodeId, lockOwner: bigint): boolean;
  /** releaseFlags: FUSE_RELEASE_FLUSH / FUSE_RELEASE_FLOCK_UNLOCK */
  release(ctx: Context, nodeid: NodeId, fh: Handle, flags: number, releaseFlags: number, lockOwner: bigint): void;
  fsync(ctx: Context, nodeid: NodeId, fh: Handle, dataOnly: boolean): Promise<void>;
  statfs(ctx: Context, nodeid: NodeId): StatFs;
  syncfs(ctx: Context, nodeid: NodeId): Promise<void>;

  opendir(ctx: Context, nodeid: NodeId, flags: number): OpenReply;
  /** `offset`: the u64 cookie from the wire (0 = start), exact. */
  readdir(ctx: Context, nodeid: NodeId, fh: Handle, offset: bigint, plus: boolean, sink: DirSink): void;
  releasedir(ctx: Context, nodeid: NodeId, fh: Handle): void;
  fsyncdir(ctx: Context, nodeid: NodeId, fh: Handle, dataOnly: boolean): Promise<void>;

  /** size 0 asks for the value's length (returned as a number). ERANGE when too small. */
  getxattr(ctx: Context, nodeid: NodeId, name: Buffer, size: number): Buffer | number;
  listxattr(ctx: Context, nodeid: NodeId, size: number): Buffer | number;
  setxattr(ctx: Context, nodeid: NodeId, name: Buffer, value: Buffer, flags: number): void;
  removexattr(ctx: Context, nodeid: NodeId, name: Buffer): void;
  access(ctx: Context, nodeid: NodeId, mask: number): void;

  getlk(ctx: Context, nodeid: NodeId, fh: Handle, owner: bigint, lock: LockRange): LockRange;
  /** isFlock: FUSE_LK_FLOCK was set (BSD flock semantics on the whole file). With `sleep`
   * (SETLKW) a conflict parks the request; `signal` aborting ends that wait with EINTR. */
  setlk(ctx: Context, nodeid: NodeId, fh: Handle, owner: bigint, lock: LockRange, sleep: boolean, isFlock: boolean,
    signal?: AbortSignal): void | Promise<void>;
  fallocate(ctx: Context, nodeid: NodeId, fh: Handle, mode: number, offset: number, length: number): Promise<void>;
  lseek(ctx: Context, nodeid: NodeId, fh: Handle, offset: number, whence: number): number;
  copyFileRange(ctx: Context, nodeidIn: NodeId, fhIn: Handle, offIn: number, nodeidOut: NodeId,
    fhOut: Handle, offOut: number, length: number, flags: number): Promise<number>;

  // Non-mutating probes the FUSE server uses to settle a request a dead worker may have run.
  /** fstatat(parent, name, AT_SYMLINK_NOFOLLOW); null when the name does not exist. */
  probeEntry?(parent: NodeId, name: Buffer): EntryProbe | null;
  /** The file's size when fh was opened with O_APPEND, else null. */
  probeAppendSize?(fh: Handle): number | null;
}
