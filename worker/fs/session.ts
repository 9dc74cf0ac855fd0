// The FUSE filesystem session: inode table, open-file table, open-dir table, POSIX lock owners
// and counters.
//
// This class holds no fds and does no syscalls; it is pure state. The fds live in the
// FdRegistry under the names recorded here ("root", "inode.<nodeid>", "file.<fh>", "dir.<fh>",
// "plock.<id>": the open file description that holds one lock owner's POSIX locks on an inode).
//
// Every mutation is expressed as an `FsMutation` record and goes through `apply()`: the named
// methods (addInode, addLookup, forget, openFile, closeFile, openDir, setDirPosition, closeDir,
// openLockOwner, closeLockOwner, reset) build the record, apply it, and hand it to the mutation listeners. A journal can
// therefore record exactly these records and rebuild the session with
// `FsSession.fromSnapshot(snapshot)` followed by `apply(record)` for each record since.
//
// Identifiers: nodeids and fh numbers are counters starting at 2 (nodeid 1 is the root), never
// reused within a session (not even across reset()). Files, dirs and lock owners share one fh
// counter.
//
// Snapshot format (version 1), a plain JSON-safe object:
//   { version: 1, nextNodeId, nextFh,
//     inodes: [{ nodeid, dev: "<u64 decimal>", ino: "<u64 decimal>", generation, lookupCount,
//                fdName, fileType }],
//     files:  [{ fh, fdName, nodeid, flags }],
//     dirs:   [{ fh, fdName, nodeid, position: "<s64 decimal>" }],
//     lockOwners: [{ id, fdName, nodeid, fh, owner: "<u64 decimal>", pid }] }
// (lockOwners is absent in snapshots written before lock owners existed: read as none.)
// Version 2 and 3: see CompactSessionSnapshot.
// 64-bit quantities (dev, ino, readdir cookies) are decimal strings: they do not fit a double.
// fromSnapshot() treats its input as untrusted and throws FsSessionError on anything malformed.
import { FUSE_ROOT_ID } from '../fuse/constants';

export const SESSION_VERSION = 1;
export const ROOT_FD_NAME = 'root';
const FIRST_ID = 2;
const U64_MAX = (1n << 64n) - 1n;
const S64_MIN = -(1n << 63n);
const S64_MAX = (1n << 63n) - 1n;

export { FsSessionError, SnapshotVersionError, MAX_HANDLE_BYTES, type InodeHandle } from './session_base';
import { FsSessionError, SnapshotVersionError, MAX_HANDLE_BYTES, type InodeHandle } from './session_base';
import { HANDLE_ROW_HEAD, INODE_ROW, SnapshotInodes, VALID_FILE_TYPES } from './snapshot_inodes';
import { KeptHandle, copyHandleBytes, handleLength, handleOver, keepHandle } from './handle_bytes';

export function sameHandle(a: InodeHandle, b: InodeHandle): boolean {
  return a.mountId === b.mountId && a.handleType === b.handleType && a.handle.equals(b.handle);
}

export interface InodeRecord {
  readonly nodeid: number;
  readonly dev: bigint;
  readonly ino: bigint;
  readonly generation: number;
  readonly lookupCount: number;
  readonly fdName: string;
  /** st_mode & S_IFMT */
  readonly fileType: number;
  /** Non-null: the inode is named by this handle and its fd ("inode.<nodeid>") is not in the
   * keeper, only (for a while) in the worker's cache. Null: the keeper holds its fd. */
  readonly handle: InodeHandle | null;
}

export interface FileRecord {
  readonly fh: number;
  readonly fdName: string;
  readonly nodeid: number;
  /** open(2) flags the file was opened with (after our adjustments). */
  readonly flags: number;
}

export interface DirRecord {
  readonly fh: number;
  readonly fdName: string;
  readonly nodeid: number;
  /** The d_off cookie after the last entry handed out (0 = start of directory). */
  readonly position: bigint;
}

/** The POSIX locks of one FUSE lock owner (a guest process, or a guest open file for OFD
 * locks) on one inode live on an open file description of their own ("plock.<id>"): locks of
 * one owner never conflict with each other, and those of two owners do. */
export interface LockOwnerRecord {
  readonly id: number;
  readonly fdName: string;
  readonly nodeid: number;
  /** The fh of the owner's first lock request: its RELEASE ends the owner (see locks.ts). */
  readonly fh: number;
  /** FUSE lock_owner (u64). */
  readonly owner: bigint;
  /** Guest pid of the owner's first lock (what GETLK reports to others). */
  readonly pid: number;
}

export type FsMutation =
  /** dev/ino: bigint; a decimal string in journals of schema 1. handle: absent or null for an
   * inode whose fd the keeper holds. */
  | { op: 'addInode'; nodeid: number; dev: bigint | string; ino: bigint | string; generation: number; fileType: number;
    handle?: InodeHandle | null }
  | { op: 'addLookup'; nodeid: number; count: number }
  | { op: 'forget'; nodeid: number; count: number }
  | { op: 'openFile'; fh: number; nodeid: number; flags: number }
  | { op: 'closeFile'; fh: number }
  | { op: 'openDir'; fh: number; nodeid: number }
  | { op: 'setDirPosition'; fh: number; position: string }
  | { op: 'closeDir'; fh: number }
  /** owner: bigint; a decimal string in snapshots. */
  | { op: 'openLockOwner'; id: number; nodeid: number; fh: number; owner: bigint; pid: number }
  | { op: 'closeLockOwner'; id: number }
  | { op: 'reset' };

/** `standalone`: the change is durable on its own, at once, not with the outcome of the request
 * that is running (see openLockOwner). */
export type MutationListener = (m: FsMutation, standalone: boolean) => void;

export interface InodeSnapshot {
  nodeid: number; dev: string; ino: string; generation: number; lookupCount: number;
  fdName: string; fileType: number;
}
export interface FileSnapshot { fh: number; fdName: string; nodeid: number; flags: number }
export interface DirSnapshot { fh: number; fdName: string; nodeid: number; position: string }
export interface LockOwnerSnapshot { id: number; fdName: string; nodeid: number; fh: number; owner: string; pid: number }
/** Version 2 (what the journal stores): the same, with the inodes as one binary table of
 * INODE_ROW-byte rows { f64 nodeid, u64 dev, u64 ino, u32 generation, u32 fileType, f64
 * lookupCount } (little-endian): about 10x faster to write and read than 20,000 objects.
 * Version 3 (written only when some inode has a file handle): version 2 plus `inodeHandles`,
 * a side table of variable rows { f64 nodeid, u64 mountId, i32 handleType, u8 length, the
 * handle's bytes } for the inodes that have one. A reader of version 2 only refuses version 3
 * ("unsupported session snapshot version 3"), so an older worker never misreads it. */
export interface CompactSessionSnapshot {
  version: 2 | 3;
  nextNodeId: number;
  nextFh: number;
  inodeTable: Buffer;
  inodeHandles?: Buffer;
  files: FileSnapshot[];
  dirs: DirSnapshot[];
  lockOwners: LockOwnerSnapshot[];
}

export interface SessionSnapshot {
  version: 1;
  nextNodeId: number;
  nextFh: number;
  inodes: InodeSnapshot[];
  files: FileSnapshot[];
  dirs: DirSnapshot[];
  lockOwners: LockOwnerSnapshot[];
}

/** An inode of the table. A class, not an object literal: tens of thousands of them live as
 * long as the guest knows them, and the fd name is derived, not stored (docs/ARCHITECTURE.md,
 * "Memory"). */
class MutableInode implements InodeRecord {
  constructor(
    readonly nodeid: number, public dev: bigint, readonly ino: bigint, readonly generation: number,
    public lookupCount: number, readonly fileType: number, readonly handle: InodeHandle | null,
  ) {}

  get fdName(): string { return inodeFdName(this.nodeid); }
}
interface MutableDir { fh: number; fdName: string; nodeid: number; position: bigint }

export function inodeFdName(nodeid: number): string {
  return nodeid === FUSE_ROOT_ID ? ROOT_FD_NAME : `inode.${nodeid}`;
}
export function fileFdName(fh: number): string { return `file.${fh}`; }
export function dirFdName(fh: number): string { return `dir.${fh}`; }
export function lockOwnerFdName(id: number): string { return `plock.${id}`; }
/** Devices a session interns (a bound against a hostile host tree of countless mounts). */
const MAX_INTERNED_DEVS = 64;
const lockOwnerKey = (nodeid: number, owner: bigint): string => `${nodeid}:${owner}`;

class DevInoIndex<T = number> {
  private readonly byDev = new Map<bigint, Map<bigint, T>>();
  /** Each device number seen, as one BigInt (canonicalDev). */
  private readonly devs = new Map<bigint, bigint>();
  /** The BigInt this index keeps for `dev`'s value (kept from the first time it is asked). */
  canonicalDev(dev: bigint): bigint {
    const known = this.devs.get(dev);
    if (known !== undefined) return known;
    if (this.devs.size < MAX_INTERNED_DEVS) this.devs.set(dev, dev);
    return dev;
  }
  get(dev: bigint, ino: bigint): T | undefined {
    return this.byDev.get(dev)?.get(ino);
  }
  set(dev: bigint, ino: bigint, nodeid: T): void {
    let m = this.byDev.get(dev);
    if (m === undefined) this.byDev.set(dev, (m = new Map()));
    m.set(ino, nodeid);
  }
  /** Removes the entry if it still names nodeid (a newer inode may have taken the number). */
  delete(dev: bigint, ino: bigint, nodeid: T): void {
    const m = this.byDev.get(dev);
    if (m === undefined || m.get(ino) !== nodeid) return;
    m.delete(ino);
    if (m.size === 0) this.byDev.delete(dev);
  }
  clear(): void {
    this.byDev.clear();
  }
}

export class FsSession {
  private readonly inodes = new Map<number, MutableInode>();
  /** dev → ino → nodeid (bigint keys: no string formatting on the lookup path). */
  /** (dev, ino) → the newest inode with that number (bigint keys: no string formatting on the
   * lookup path; the record itself: no second map lookup). */
  private byDevIno = new DevInoIndex<MutableInode>();
  private readonly files = new Map<number, FileRecord>();
  private readonly dirs = new Map<number, MutableDir>();
  private readonly lockOwners = new Map<number, LockOwnerRecord>();
  /** "nodeid:owner" → lock owner id. */
  private readonly lockOwnerIndex = new Map<string, number>();
  private nextNodeIdValue = FIRST_ID;
  /** Inodes with a handle among the decoded ones (`inodes`). */
  private handleInodes = 0;
  /** The rows of the snapshot this session was loaded from that it has not decoded yet
   * (snapshot_inodes.ts): every inode is in `inodes` or here, never both. */
  private base: SnapshotInodes | null = null;
  /** decodeSome's place in `base`: rows before it are decoded (or were dropped). */
  private decodeCursor = 0;
  /** Told of each inode of a loaded snapshot when it is first used (not a mutation: the
   * session's content does not change). fast_table.ts mirrors it. */
  onInodeDecoded: ((rec: InodeRecord) => void) | null = null;
  private nextFhValue = FIRST_ID;
  private readonly listeners: MutationListener[] = [];

  /** A new session whose root (nodeid 1, fd "root") is the given inode. The root's lookup count
   * starts at 1 and the root is never dropped, whatever FORGET says. */
  constructor(root: { dev: bigint; ino: bigint; generation?: number; fileType?: number }) {
    checkU64(root.dev, 'root dev');
    checkU64(root.ino, 'root ino');
    this.insertInode(new MutableInode(FUSE_ROOT_ID, root.dev, root.ino, root.generation ?? 0, 1, root.fileType ?? 0o040000, null));
  }

  onMutation(listener: MutationListener): void {
    this.listeners.push(listener);
  }

  // ---------------------------------------------------------------- queries

  get root(): InodeRecord { return this.inodes.get(FUSE_ROOT_ID)!; }
  get nextNodeId(): number { return this.nextNodeIdValue; }
  get nextFh(): number { return this.nextFhValue; }
  get inodeCount(): number { return this.inodes.size + (this.base?.live ?? 0); }
  /** Inodes of a loaded snapshot not decoded yet: known, but in no index outside the session. */
  get undecodedInodes(): number { return this.base?.live ?? 0; }
  get fileCount(): number { return this.files.size; }
  get dirCount(): number { return this.dirs.size; }
  get lockOwnerCount(): number { return this.lockOwners.size; }

  getInode(nodeid: number): InodeRecord | undefined { return this.mutableInode(nodeid); }
  findInode(dev: bigint, ino: bigint): InodeRecord | undefined {
    if (this.base !== null) {
      const row = this.base.rowOfNumber(dev, ino);
      if (row !== -1) this.decode(row);
    }
    return this.byDevIno.get(dev, ino);
  }
  getFile(fh: number): FileRecord | undefined { return this.files.get(fh); }
  getDir(fh: number): DirRecord | undefined { return this.dirs.get(fh); }
  /** Decodes every inode still in the loaded snapshot: use inodesWithoutHandle() where it does. */
  allInodes(): IterableIterator<InodeRecord> {
    this.decodeAll();
    return this.inodes.values();
  }
  /** The inodes whose fd the keeper holds (no handle), decoding only those. */
  inodesWithoutHandle(): InodeRecord[] {
    const out: InodeRecord[] = [];
    for (const i of this.inodes.values()) if (i.handle === null) out.push(i);
    const base = this.base;
    if (base !== null) base.forEachLive((r) => { if (!base.hasHandle(r)) out.push(this.decode(r)); });
    return out;
  }
  allFiles(): IterableIterator<FileRecord> { return this.files.values(); }
  allDirs(): IterableIterator<DirRecord> { return this.dirs.values(); }
  allLockOwners(): IterableIterator<LockOwnerRecord> { return this.lockOwners.values(); }
  findLockOwner(nodeid: number, owner: bigint): LockOwnerRecord | undefined {
    const id = this.lockOwnerIndex.get(lockOwnerKey(nodeid, owner));
    return id === undefined ? undefined : this.lockOwners.get(id);
  }

  /** Inodes named by a file handle (their fds are not in the keeper). */
  get handleInodeCount(): number { return this.handleInodes + (this.base?.liveHandles ?? 0); }

  /** Every fd name the session refers to (root included), also those of inodes named by a
   * handle, which only the worker's cache may hold. */
  fdNames(): string[] {
    const names: string[] = [];
    for (const i of this.allInodes()) names.push(i.fdName);
    for (const f of this.files.values()) names.push(f.fdName);
    for (const d of this.dirs.values()) names.push(d.fdName);
    for (const o of this.lockOwners.values()) names.push(o.fdName);
    return names;
  }

  /** The fd names the keeper must hold: fdNames() less the inodes named by a handle. */
  keeperFdNames(): string[] {
    const names: string[] = [];
    for (const i of this.inodesWithoutHandle()) names.push(i.fdName);
    for (const f of this.files.values()) names.push(f.fdName);
    for (const d of this.dirs.values()) names.push(d.fdName);
    for (const o of this.lockOwners.values()) names.push(o.fdName);
    return names;
  }

  // ---------------------------------------------------------------- mutations

  /** A new inode with lookup count 1; allocates its nodeid. The caller registers the fd under
   * the returned record's fdName (in the keeper, or only in the worker's cache when the inode
   * has a handle). An inode with a handle may take the (dev, ino) of a known inode with a
   * different handle: that one was deleted and its number reused, and it stays in the table
   * (its handle now answers ESTALE) until the guest forgets it. */
  addInode(id: { dev: bigint; ino: bigint; generation: number; fileType: number; handle?: InodeHandle | null }): InodeRecord {
    const nodeid = this.nextNodeIdValue;
    this.emit({ op: 'addInode', nodeid, dev: id.dev, ino: id.ino,
      generation: id.generation, fileType: id.fileType, ...(id.handle ? { handle: id.handle } : {}) });
    return this.inodes.get(nodeid)!;
  }

  addLookup(nodeid: number, count = 1): InodeRecord {
    this.emit({ op: 'addLookup', nodeid, count });
    return this.inodes.get(nodeid)!;
  }

  /** Subtracts count (clamped to the current count). Returns the dropped record when the inode
   * left the table (the caller closes its fd), else null. The root is never dropped. */
  forget(nodeid: number, count: number): InodeRecord | null {
    const rec = this.mutableInode(nodeid);
    this.emit({ op: 'forget', nodeid, count });
    return rec !== undefined && !this.inodes.has(nodeid) ? rec : null;
  }

  openFile(nodeid: number, flags: number): FileRecord {
    const fh = this.nextFhValue;
    this.emit({ op: 'openFile', fh, nodeid, flags });
    return this.files.get(fh)!;
  }

  closeFile(fh: number): FileRecord {
    const rec = this.files.get(fh);
    this.emit({ op: 'closeFile', fh });
    return rec!;
  }

  openDir(nodeid: number): DirRecord {
    const fh = this.nextFhValue;
    this.emit({ op: 'openDir', fh, nodeid });
    return this.dirs.get(fh)!;
  }

  setDirPosition(fh: number, position: bigint): void {
    this.emit({ op: 'setDirPosition', fh, position: position.toString() });
  }

  closeDir(fh: number): DirRecord {
    const rec = this.dirs.get(fh);
    this.emit({ op: 'closeDir', fh });
    return rec!;
  }

  /** A lock owner's open file description on nodeid; allocates its id from the fh counter. The
   * caller registers the fd under the returned record's fdName. Standalone: the request that
   * creates an owner may park (SETLKW) while another request of the same owner takes a lock
   * on it and is answered; were the owner durable only with the first request's outcome, a
   * crash in between would lose the second one's lock. An owner that exists with no lock is
   * harmless (a replay locks through it again). */
  openLockOwner(nodeid: number, fh: number, owner: bigint, pid: number): LockOwnerRecord {
    const id = this.nextFhValue;
    this.emit({ op: 'openLockOwner', id, nodeid, fh, owner, pid }, true);
    return this.lockOwners.get(id)!;
  }

  closeLockOwner(id: number): LockOwnerRecord {
    const rec = this.lockOwners.get(id);
    this.emit({ op: 'closeLockOwner', id });
    return rec!;
  }

  /** Drops every inode but the root, and every open file and dir. Counters are kept (ids are
   * never reused). Returns the fd names that were dropped (the caller closes them). */
  inodeRecords(): IterableIterator<InodeRecord> { return this.inodes.values(); }
  fileRecords(): IterableIterator<FileRecord> { return this.files.values(); }

  reset(): string[] {
    const dropped = this.fdNames().filter((n) => n !== ROOT_FD_NAME);
    this.emit({ op: 'reset' });
    return dropped;
  }

  private emit(m: FsMutation, standalone = false): void {
    this.apply(m);
    for (const l of this.listeners) l(m, standalone);
  }

  /** Validates and applies one mutation record (also used to replay a journal). Throws
   * FsSessionError and leaves the session unchanged when the record does not fit the state. */
  apply(m: FsMutation): void {
    if (m === null || typeof m !== 'object') throw new FsSessionError('mutation: not an object');
    switch (m.op) {
      case 'addInode': {
        const nodeid = checkId(m.nodeid, 'addInode.nodeid');
        if (nodeid < this.nextNodeIdValue) throw new FsSessionError(`addInode: nodeid ${nodeid} reused`);
        const dev = u64Field(m.dev, 'addInode.dev');
        const ino = u64Field(m.ino, 'addInode.ino');
        const handle = m.handle === undefined || m.handle === null ? null : checkHandle(m.handle, 'addInode.handle');
        const known = this.findInode(dev, ino);
        if (known !== undefined && !isReuse(known.handle, handle)) {
          throw new FsSessionError(`addInode: (${dev}, ${ino}) already known`);
        }
        this.insertInode(new MutableInode(nodeid, dev, ino, checkU32(m.generation, 'addInode.generation'), 1,
          checkFileType(m.fileType, 'addInode.fileType'), handle));
        this.nextNodeIdValue = nodeid + 1;
        return;
      }
      case 'addLookup': {
        const rec = this.needInode(m.nodeid, 'addLookup');
        const count = checkCount(m.count, 'addLookup.count');
        if (!Number.isSafeInteger(rec.lookupCount + count)) throw new FsSessionError('addLookup: count overflow');
        rec.lookupCount += count;
        return;
      }
      case 'forget': {
        const rec = this.needInode(m.nodeid, 'forget');
        const count = checkCount(m.count, 'forget.count');
        rec.lookupCount = Math.max(0, rec.lookupCount - count);
        if (rec.lookupCount === 0 && rec.nodeid !== FUSE_ROOT_ID) {
          this.inodes.delete(rec.nodeid);
          this.byDevIno.delete(rec.dev, rec.ino, rec);
          if (rec.handle !== null) this.handleInodes--;
        }
        return;
      }
      case 'openFile': {
        const fh = this.checkNewFh(m.fh, 'openFile');
        const nodeid = this.needInode(m.nodeid, 'openFile').nodeid;
        this.files.set(fh, { fh, fdName: fileFdName(fh), nodeid, flags: checkI32(m.flags, 'openFile.flags') });
        this.nextFhValue = fh + 1;
        return;
      }
      case 'closeFile': {
        if (!this.files.delete(checkId(m.fh, 'closeFile.fh'))) throw new FsSessionError(`closeFile: unknown fh ${m.fh}`);
        return;
      }
      case 'openDir': {
        const fh = this.checkNewFh(m.fh, 'openDir');
        const nodeid = this.needInode(m.nodeid, 'openDir').nodeid;
        this.dirs.set(fh, { fh, fdName: dirFdName(fh), nodeid, position: 0n });
        this.nextFhValue = fh + 1;
        return;
      }
      case 'setDirPosition': {
        const rec = this.dirs.get(checkId(m.fh, 'setDirPosition.fh'));
        if (rec === undefined) throw new FsSessionError(`setDirPosition: unknown fh ${m.fh}`);
        rec.position = parseS64(m.position, 'setDirPosition.position');
        return;
      }
      case 'closeDir': {
        if (!this.dirs.delete(checkId(m.fh, 'closeDir.fh'))) throw new FsSessionError(`closeDir: unknown fh ${m.fh}`);
        return;
      }
      case 'openLockOwner': {
        const id = this.checkNewFh(m.id, 'openLockOwner');
        const nodeid = this.needInode(m.nodeid, 'openLockOwner').nodeid;
        const fh = checkId(m.fh, 'openLockOwner.fh');
        if (fh >= this.nextFhValue) throw new FsSessionError(`openLockOwner: fh ${fh} was never allocated`);
        const owner = u64Field(m.owner, 'openLockOwner.owner');
        const key = lockOwnerKey(nodeid, owner);
        if (this.lockOwnerIndex.has(key)) throw new FsSessionError(`openLockOwner: owner ${owner} of nodeid ${nodeid} already open`);
        this.insertLockOwner({ id, fdName: lockOwnerFdName(id), nodeid, fh, owner, pid: checkU32(m.pid, 'openLockOwner.pid') });
        this.nextFhValue = id + 1;
        return;
      }
      case 'closeLockOwner': {
        const rec = this.lockOwners.get(checkId(m.id, 'closeLockOwner.id'));
        if (rec === undefined) throw new FsSessionError(`closeLockOwner: unknown id ${m.id}`);
        this.lockOwners.delete(rec.id);
        this.lockOwnerIndex.delete(lockOwnerKey(rec.nodeid, rec.owner));
        return;
      }
      case 'reset': {
        const root = this.inodes.get(FUSE_ROOT_ID)!;
        this.inodes.clear();
        this.byDevIno.clear();
        this.files.clear();
        this.dirs.clear();
        this.lockOwners.clear();
        this.lockOwnerIndex.clear();
        this.handleInodes = 0;
        this.base = null;
        root.lookupCount = 1;
        this.insertInode(root);
        return;
      }
      default:
        throw new FsSessionError(`unknown mutation op ${JSON.stringify((m as { op?: unknown }).op)}`);
    }
  }

  private needInode(nodeid: unknown, what: string): MutableInode {
    const rec = this.mutableInode(checkId(nodeid, `${what}.nodeid`, 1));
    if (rec === undefined) throw new FsSessionError(`${what}: unknown nodeid ${String(nodeid)}`);
    return rec;
  }

  private checkNewFh(fh: unknown, what: string): number {
    const id = checkId(fh, `${what}.fh`);
    if (id < this.nextFhValue) throw new FsSessionError(`${what}: fh ${id} reused`);
    return id;
  }

  private insertLockOwner(rec: LockOwnerRecord): void {
    this.lockOwners.set(rec.id, rec);
    this.lockOwnerIndex.set(lockOwnerKey(rec.nodeid, rec.owner), rec.id);
  }

  private mutableInode(nodeid: number): MutableInode | undefined {
    const rec = this.inodes.get(nodeid);
    if (rec !== undefined || this.base === null) return rec;
    const row = this.base.rowOf(nodeid);
    return row === -1 ? undefined : this.decode(row);
  }

  /** Moves a row of the loaded snapshot into the session's tables. Only the row that owns its
   * (dev, ino) in the snapshot is indexed by it, as the eager load indexes only the newest. */
  private decode(row: number): MutableInode {
    const base = this.base!;
    const owns = base.ownsNumber(row);
    const r = base.take(row);
    const rec = new MutableInode(r.nodeid, r.dev, r.ino, r.generation, r.lookupCount, r.fileType, r.handle);
    if (owns) this.insertInode(rec);
    else {
      this.inodes.set(rec.nodeid, rec);
      if (rec.handle !== null) this.handleInodes++;
    }
    this.onInodeDecoded?.(rec);
    return rec;
  }

  /** Decodes up to `max` rows of the loaded snapshot still undecoded (in row order), as their
   * first use would; returns how many stay undecoded. The session's content does not change. */
  decodeSome(max: number): number {
    const base = this.base;
    if (base === null) return 0;
    for (let n = 0; n < max && this.decodeCursor < base.rows; this.decodeCursor++) {
      if (base.isTaken(this.decodeCursor)) continue;
      this.decode(this.decodeCursor);
      n++;
    }
    if (base.live === 0 && this.base === base) this.base = null;
    return this.base?.live ?? 0;
  }

  private decodeAll(): void {
    const base = this.base;
    if (base === null) return;
    base.forEachLive((r) => this.decode(r));
    this.base = null;
  }

  /** Indexes (dev, ino) to the newest nodeid (a reused number belongs to the newer inode). */
  private insertInode(rec: MutableInode): void {
    // One BigInt per device, not one per inode (nearly all inodes share one or two).
    rec.dev = this.byDevIno.canonicalDev(rec.dev);
    this.inodes.set(rec.nodeid, rec);
    if (rec.handle !== null) this.handleInodes++;
    const known = this.byDevIno.get(rec.dev, rec.ino);
    if (known === undefined || known.nodeid < rec.nodeid) this.byDevIno.set(rec.dev, rec.ino, rec);
  }

  // ---------------------------------------------------------------- snapshots

  toSnapshot(withInodes = true): SessionSnapshot {
    return {
      version: SESSION_VERSION,
      nextNodeId: this.nextNodeIdValue,
      nextFh: this.nextFhValue,
      inodes: !withInodes ? [] : [...this.allInodes()].map((i) => ({
        nodeid: i.nodeid, dev: i.dev.toString(), ino: i.ino.toString(), generation: i.generation,
        lookupCount: i.lookupCount, fdName: i.fdName, fileType: i.fileType,
      })),
      files: [...this.files.values()].map((f) => ({ fh: f.fh, fdName: f.fdName, nodeid: f.nodeid, flags: f.flags })),
      dirs: [...this.dirs.values()].map((d) => ({
        fh: d.fh, fdName: d.fdName, nodeid: d.nodeid, position: d.position.toString(),
      })),
      lockOwners: [...this.lockOwners.values()].map((o) => ({
        id: o.id, fdName: o.fdName, nodeid: o.nodeid, fh: o.fh, owner: o.owner.toString(), pid: o.pid,
      })),
    };
  }

  /** Rows in ascending nodeid order (what the lazy load needs: snapshot_inodes.ts): the
   * decoded inodes, sorted if decoding made their order differ, merged with the snapshot rows
   * still undecoded, which are copied as they are. */
  toCompactSnapshot(): CompactSessionSnapshot {
    const decoded = [...this.inodes.values()];
    for (let k = 1; k < decoded.length; k++) {
      if (decoded[k - 1]!.nodeid > decoded[k]!.nodeid) {
        decoded.sort((a, b) => a.nodeid - b.nodeid);
        break;
      }
    }
    const base = this.base;
    const lazy: number[] = [];
    if (base !== null) base.forEachLive((r) => lazy.push(r));
    const table = Buffer.allocUnsafe((decoded.length + lazy.length) * INODE_ROW);
    let handleBytes = 0;
    for (const i of decoded) if (i.handle !== null) handleBytes += HANDLE_ROW_HEAD + handleLength(i.handle);
    for (const r of lazy) handleBytes += base!.handleRowSize(r);
    const handles = Buffer.allocUnsafe(handleBytes);
    // DataViews, not Buffer's write* methods: writeBigUInt64LE splits its BigInt with BigInt
    // arithmetic, and the rows of 20,000 inodes cost ~25 ms so (a compaction stalls the queues).
    const tv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    const hv = new DataView(handles.buffer, handles.byteOffset, handles.byteLength);
    let at = 0;
    let hat = 0;
    let d = 0;
    let l = 0;
    while (d < decoded.length || l < lazy.length) {
      if (l < lazy.length && (d === decoded.length || base!.nodeidAt(lazy[l]!) < decoded[d]!.nodeid)) {
        const r = lazy[l++]!;
        at = base!.copyRow(r, table, at);
        if (base!.hasHandle(r)) hat = base!.copyHandleRow(r, handles, hat);
        continue;
      }
      const i = decoded[d++]!;
      tv.setFloat64(at, i.nodeid, true);
      tv.setBigUint64(at + 8, i.dev, true);
      tv.setBigUint64(at + 16, i.ino, true);
      tv.setUint32(at + 24, i.generation, true);
      tv.setUint32(at + 28, i.fileType, true);
      tv.setFloat64(at + 32, i.lookupCount, true);
      at += INODE_ROW;
      const h = i.handle;
      if (h === null) continue;
      // { f64 nodeid, u64 mountId, i32 handleType, u8 length, bytes }; a mount id is a u32.
      hv.setFloat64(hat, i.nodeid, true);
      hv.setUint32(hat + 8, h.mountId >>> 0, true);
      hv.setUint32(hat + 12, 0, true);
      hv.setInt32(hat + 16, h.handleType | 0, true);
      hv.setUint8(hat + 20, handleLength(h));
      hat = copyHandleBytes(h, handles, hat + HANDLE_ROW_HEAD);
    }
    const { files, dirs, lockOwners } = this.toSnapshot(false);
    const snap = { nextNodeId: this.nextNodeIdValue, nextFh: this.nextFhValue, inodeTable: table, files, dirs, lockOwners };
    if (this.handleInodeCount === 0) return { version: 2, ...snap };
    return { version: 3, ...snap, inodeHandles: handles };
  }

  /** The open files, dirs and lock owners of an untrusted snapshot (after its counters). */
  private restoreHandles(files: unknown[], dirs: unknown[], lockOwners: unknown[]): void {
    const seenFh = new Set<number>();
    const handle = (raw: unknown, where: string, kind: 'file' | 'dir'): { fh: number; nodeid: number; r: Record<string, unknown> } => {
      const r = checkObject(raw, where, kind === 'file' ? ['fh', 'fdName', 'nodeid', 'flags'] : ['fh', 'fdName', 'nodeid', 'position']);
      const fh = checkId(r.fh, `${where}.fh`);
      if (fh >= this.nextFhValue) throw new FsSessionError(`${where}.fh ${fh} >= nextFh ${this.nextFhValue}`);
      if (seenFh.has(fh)) throw new FsSessionError(`${where}: duplicate fh ${fh}`);
      seenFh.add(fh);
      const expected = kind === 'file' ? fileFdName(fh) : dirFdName(fh);
      if (r.fdName !== expected) throw new FsSessionError(`${where}.fdName ${JSON.stringify(r.fdName)} (expected ${expected})`);
      const nodeid = checkId(r.nodeid, `${where}.nodeid`, 1);
      if (nodeid >= this.nextNodeIdValue) throw new FsSessionError(`${where}.nodeid ${nodeid} >= nextNodeId ${this.nextNodeIdValue}`);
      return { fh, nodeid, r };
    };
    files.forEach((raw, idx) => {
      const { fh, nodeid, r } = handle(raw, `files[${idx}]`, 'file');
      this.files.set(fh, { fh, fdName: fileFdName(fh), nodeid, flags: checkI32(r.flags, `files[${idx}].flags`) });
    });
    dirs.forEach((raw, idx) => {
      const { fh, nodeid, r } = handle(raw, `dirs[${idx}]`, 'dir');
      this.dirs.set(fh, { fh, fdName: dirFdName(fh), nodeid, position: parseS64(r.position, `dirs[${idx}].position`) });
    });
    lockOwners.forEach((raw, idx) => {
      const where = `lockOwners[${idx}]`;
      const r = checkObject(raw, where, ['id', 'fdName', 'nodeid', 'fh', 'owner', 'pid']);
      const id = checkId(r.id, `${where}.id`);
      if (id >= this.nextFhValue) throw new FsSessionError(`${where}.id ${id} >= nextFh ${this.nextFhValue}`);
      if (seenFh.has(id)) throw new FsSessionError(`${where}: duplicate id ${id}`);
      seenFh.add(id);
      if (r.fdName !== lockOwnerFdName(id)) throw new FsSessionError(`${where}.fdName ${JSON.stringify(r.fdName)} (expected ${lockOwnerFdName(id)})`);
      const nodeid = checkId(r.nodeid, `${where}.nodeid`, 1);
      if (nodeid >= this.nextNodeIdValue) throw new FsSessionError(`${where}.nodeid ${nodeid} >= nextNodeId ${this.nextNodeIdValue}`);
      const fh = checkId(r.fh, `${where}.fh`);
      if (fh >= this.nextFhValue) throw new FsSessionError(`${where}.fh ${fh} >= nextFh ${this.nextFhValue}`);
      const owner = parseU64(r.owner, `${where}.owner`);
      if (this.lockOwnerIndex.has(lockOwnerKey(nodeid, owner))) throw new FsSessionError(`${where}: duplicate owner ${owner} of nodeid ${nodeid}`);
      this.insertLockOwner({ id, fdName: lockOwnerFdName(id), nodeid, fh, owner, pid: checkU32(r.pid, `${where}.pid`) });
    });
  }

  /** Rebuilds a session from an untrusted snapshot. Checks: version, types and ranges of every
   * field, the fd naming convention, the root (nodeid 1, "root"), ids below the counters, no
   * duplicate nodeid, (dev, ino), or fh (files and dirs share the fh space), lookup counts >= 1
   * for non-root inodes. Open files/dirs may name an inode that was forgotten (FUSE allows a
   * guest to do that); they must name a nodeid that was allocated. */
  static fromSnapshot(input: unknown): FsSession {
    const version = (input as { version?: unknown } | null)?.version;
    const compact = version === 2 || version === 3;
    if (version !== SESSION_VERSION && !compact) {
      // A number we do not know is a newer writer's; anything else is a corrupt snapshot.
      const E = typeof version === 'number' ? SnapshotVersionError : FsSessionError;
      throw new E(`unsupported session snapshot version ${JSON.stringify(version)} (expected ${SESSION_VERSION}, 2 or 3)`);
    }
    const s = checkObject(input, 'snapshot', ['version', 'nextNodeId', 'nextFh', compact ? 'inodeTable' : 'inodes', 'files', 'dirs',
      ...(version === 3 ? ['inodeHandles'] : [])], ['lockOwners']);
    if (s.version !== SESSION_VERSION && !compact) {
      throw new FsSessionError(`unsupported session snapshot version ${JSON.stringify(s.version)} (expected ${SESSION_VERSION}, 2 or 3)`);
    }
    const nextNodeId = checkId(s.nextNodeId, 'nextNodeId', FIRST_ID);
    const nextFh = checkId(s.nextFh, 'nextFh', FIRST_ID);
    const inodes = compact ? [] : checkArray(s.inodes, 'inodes');
    const files = checkArray(s.files, 'files');
    const dirs = checkArray(s.dirs, 'dirs');
    const lockOwners = s.lockOwners === undefined ? [] : checkArray(s.lockOwners, 'lockOwners');

    if (compact) {
      const table = s.inodeTable;
      if (!(table instanceof Uint8Array)) throw new FsSessionError('inodeTable: not a whole number of rows');
      const handleTable = version === 3 ? s.inodeHandles : null;
      if (handleTable !== null && !(handleTable instanceof Uint8Array)) throw new FsSessionError('inodeHandles: not bytes');
      const base = SnapshotInodes.scan(table, handleTable, nextNodeId);
      // null: rows not in nodeid order (not what we write): the eager load below reads them.
      if (base !== null) {
        const root = base.take(0);
        const session = new FsSession({ dev: root.dev, ino: root.ino, generation: root.generation });
        session.inodes.get(FUSE_ROOT_ID)!.lookupCount = root.lookupCount;
        session.base = base;
        session.decodeCursor = 0;
        session.nextNodeIdValue = nextNodeId;
        session.nextFhValue = nextFh;
        session.restoreHandles(files, dirs, lockOwners);
        return session;
      }
    }
    const parsedInodes: MutableInode[] = [];
    const seenNodeIds = new Set<number>();
    const seenDevIno = new DevInoIndex<MutableInode>();
    const handles = version === 3 ? parseHandleTable(s.inodeHandles, nextNodeId) : new Map<number, InodeHandle>();
    if (compact) {
      const table = s.inodeTable;
      if (!(table instanceof Uint8Array) || table.length % INODE_ROW !== 0) throw new FsSessionError('inodeTable: not a whole number of rows');
      const b = Buffer.from(table.buffer, table.byteOffset, table.byteLength);
      for (let at = 0, idx = 0; at < b.length; at += INODE_ROW, idx++) {
        const where = `inodeTable[${idx}]`;
        const nodeid = checkId(b.readDoubleLE(at), `${where}.nodeid`, 1);
        if (nodeid >= nextNodeId) throw new FsSessionError(`${where}.nodeid ${nodeid} >= nextNodeId ${nextNodeId}`);
        if (seenNodeIds.has(nodeid)) throw new FsSessionError(`${where}: duplicate nodeid ${nodeid}`);
        seenNodeIds.add(nodeid);
        const dev = b.readBigUInt64LE(at + 8);
        const ino = b.readBigUInt64LE(at + 16);
        const handle = handles.get(nodeid) ?? null;
        handles.delete(nodeid);
        if (nodeid === FUSE_ROOT_ID && handle !== null) throw new FsSessionError(`${where}: the root has a handle`);
        const dup = seenDevIno.get(dev, ino);
        if (dup !== undefined && !mayShareNumber(dup.handle, handle)) throw new FsSessionError(`${where}: duplicate (dev, ino) (${dev}, ${ino})`);
        const rec = new MutableInode(nodeid, dev, ino, b.readUInt32LE(at + 24),
          checkCount(b.readDoubleLE(at + 32), `${where}.lookupCount`, nodeid === FUSE_ROOT_ID ? 0 : 1),
          checkFileType(b.readUInt32LE(at + 28), `${where}.fileType`), handle);
        if (dup === undefined || dup.nodeid < nodeid) seenDevIno.set(dev, ino, rec);
        parsedInodes.push(rec);
      }
      if (handles.size > 0) throw new FsSessionError(`inodeHandles: a handle for nodeid ${handles.keys().next().value} that has no inode`);
    }
    inodes.forEach((raw, idx) => {
      const where = `inodes[${idx}]`;
      const r = checkObject(raw, where, ['nodeid', 'dev', 'ino', 'generation', 'lookupCount', 'fdName', 'fileType']);
      const nodeid = checkId(r.nodeid, `${where}.nodeid`, 1);
      if (nodeid >= nextNodeId) throw new FsSessionError(`${where}.nodeid ${nodeid} >= nextNodeId ${nextNodeId}`);
      if (seenNodeIds.has(nodeid)) throw new FsSessionError(`${where}: duplicate nodeid ${nodeid}`);
      seenNodeIds.add(nodeid);
      const dev = parseU64(r.dev, `${where}.dev`);
      const ino = parseU64(r.ino, `${where}.ino`);
      if (seenDevIno.get(dev, ino) !== undefined) throw new FsSessionError(`${where}: duplicate (dev, ino) (${dev}, ${ino})`);
      const lookupCount = checkCount(r.lookupCount, `${where}.lookupCount`, nodeid === FUSE_ROOT_ID ? 0 : 1);
      if (r.fdName !== inodeFdName(nodeid)) {
        throw new FsSessionError(`${where}.fdName ${JSON.stringify(r.fdName)} (expected ${inodeFdName(nodeid)})`);
      }
      const rec = new MutableInode(nodeid, dev, ino, checkU32(r.generation, `${where}.generation`), lookupCount,
        checkFileType(r.fileType, `${where}.fileType`), null);
      seenDevIno.set(dev, ino, rec);
      parsedInodes.push(rec);
    });
    const root = parsedInodes.find((i) => i.nodeid === FUSE_ROOT_ID);
    if (root === undefined) throw new FsSessionError('snapshot has no root inode (nodeid 1)');
    if (root.fileType !== 0o040000) throw new FsSessionError('root inode is not a directory');

    const session = new FsSession({ dev: root.dev, ino: root.ino, generation: root.generation });
    // The index built while checking for duplicates is the session's (one pass over 100,000
    // inodes instead of two: bigint-keyed maps are the cost of a load).
    for (const i of parsedInodes) {
      session.inodes.set(i.nodeid, i);
      if (i.handle !== null) session.handleInodes++;
    }
    session.byDevIno = seenDevIno;
    session.nextNodeIdValue = nextNodeId;
    session.nextFhValue = nextFh;

    session.restoreHandles(files, dirs, lockOwners);
    return session;
  }
}

// ------------------------------------------------------------------ validators

/** A second inode may have the (dev, ino) of a known one only when both have handles and the
 * handles differ: the known inode was deleted and its number reused. */
/** What a loaded snapshot may hold: two inodes of one (dev, ino) unless neither has a handle
 * (an fd pins its inode, so two fd-held inodes cannot share a number). Looser than isReuse on
 * purpose: the live rule compares with the number's current owner, and once that owner is
 * forgotten its entry is gone, so a session can hold e.g. an older inode with a handle and a
 * newer one without (a later lookup that got no handle); its snapshot must load. */
export function mayShareNumber(a: InodeHandle | null, b: InodeHandle | null): boolean {
  return a !== null || b !== null;
}

function isReuse(known: InodeHandle | null, added: InodeHandle | null): boolean {
  return known !== null && added !== null && !sameHandle(known, added);
}

function checkHandle(v: unknown, where: string): InodeHandle {
  const h = v as Partial<InodeHandle> | null;
  // A kept handle's bytes are checked by their length alone: reading `handle` makes a view.
  const kept = h instanceof KeptHandle;
  const length = kept ? h.byteLength : Buffer.isBuffer(h?.handle) ? h.handle.length : 0;
  if (h === null || typeof h !== 'object' || length === 0 || length > MAX_HANDLE_BYTES) {
    throw new FsSessionError(`${where}: not a file handle of 1..${MAX_HANDLE_BYTES} bytes`);
  }
  if (typeof h.mountId !== 'number' || !Number.isSafeInteger(h.mountId) || h.mountId < 0) throw new FsSessionError(`${where}.mountId: ${describe(h.mountId)}`);
  const handleType = checkI32(h.handleType, `${where}.handleType`);
  return kept ? h : keepHandle(h.mountId, handleType, h.handle!);
}


/** The inodeHandles side table of a version 3 snapshot: nodeid → handle. */
function parseHandleTable(v: unknown, nextNodeId: number): Map<number, InodeHandle> {
  if (!(v instanceof Uint8Array)) throw new FsSessionError('inodeHandles: not bytes');
  const b = Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  const out = new Map<number, InodeHandle>();
  for (let at = 0, idx = 0; at < b.length; idx++) {
    const where = `inodeHandles[${idx}]`;
    if (at + HANDLE_ROW_HEAD > b.length) throw new FsSessionError(`${where}: cut off`);
    const nodeid = checkId(b.readDoubleLE(at), `${where}.nodeid`);
    if (nodeid >= nextNodeId) throw new FsSessionError(`${where}.nodeid ${nodeid} >= nextNodeId ${nextNodeId}`);
    if (out.has(nodeid)) throw new FsSessionError(`${where}: duplicate nodeid ${nodeid}`);
    const mountId = b.readBigUInt64LE(at + 8);
    if (mountId > BigInt(Number.MAX_SAFE_INTEGER)) throw new FsSessionError(`${where}.mountId out of range`);
    const handleType = b.readInt32LE(at + 16);
    const len = b.readUInt8(at + 20);
    at += HANDLE_ROW_HEAD;
    if (len === 0 || len > MAX_HANDLE_BYTES || at + len > b.length) throw new FsSessionError(`${where}: bad handle length ${len}`);
    // A view, not a copy: the table stays alive as long as the handles (100,000 copies cost ~50 ms).
    out.set(nodeid, handleOver(Number(mountId), handleType, b, at, len));
    at += len;
  }
  return out;
}

/** `optional`: fields that may be absent (added after the format's first version). */
function checkObject(v: unknown, where: string, keys: string[], optional: string[] = []): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new FsSessionError(`${where}: not an object`);
  const o = v as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (!keys.includes(key) && !optional.includes(key)) throw new FsSessionError(`${where}: unknown field ${JSON.stringify(key)}`);
  }
  for (const key of keys) if (!(key in o)) throw new FsSessionError(`${where}: missing field ${JSON.stringify(key)}`);
  return o;
}

function checkArray(v: unknown, where: string): unknown[] {
  if (!Array.isArray(v)) throw new FsSessionError(`${where}: not an array`);
  return v;
}

function checkId(v: unknown, where: string, min = FIRST_ID): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw new FsSessionError(`${where}: expected an integer >= ${min}, got ${describe(v)}`);
  }
  return v;
}

function checkCount(v: unknown, where: string, min = 0): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw new FsSessionError(`${where}: expected an integer >= ${min}, got ${describe(v)}`);
  }
  return v;
}

function checkU32(v: unknown, where: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new FsSessionError(`${where}: expected a u32, got ${describe(v)}`);
  }
  return v;
}

function checkI32(v: unknown, where: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < -0x80000000 || v > 0xffffffff) {
    throw new FsSessionError(`${where}: expected a 32-bit integer, got ${describe(v)}`);
  }
  return v;
}

function checkFileType(v: unknown, where: string): number {
  if (typeof v !== 'number' || !VALID_FILE_TYPES.has(v)) throw new FsSessionError(`${where}: not a file type: ${describe(v)}`);
  return v;
}

function checkU64(v: bigint, where: string): void {
  if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) throw new FsSessionError(`${where}: not a u64`);
}

function parseU64(v: unknown, where: string): bigint {
  if (typeof v !== 'string' || !/^(0|[1-9][0-9]{0,19})$/.test(v)) throw new FsSessionError(`${where}: expected a u64 decimal string, got ${describe(v)}`);
  const b = BigInt(v);
  if (b > U64_MAX) throw new FsSessionError(`${where}: ${v} out of u64 range`);
  return b;
}

/** A u64 given as a bigint, or (older journals, snapshots) as a decimal string. */
function u64Field(v: unknown, where: string): bigint {
  if (typeof v !== 'bigint') return parseU64(v, where);
  checkU64(v, where);
  return v;
}

function parseS64(v: unknown, where: string): bigint {
  if (typeof v !== 'string' || !/^(0|-?[1-9][0-9]{0,18})$/.test(v)) throw new FsSessionError(`${where}: expected an s64 decimal string, got ${describe(v)}`);
  const b = BigInt(v);
  if (b < S64_MIN || b > S64_MAX) throw new FsSessionError(`${where}: ${v} out of s64 range`);
  return b;
}

function describe(v: unknown): string {
  if (typeof v === 'bigint') return `${v}n`;
  try { return JSON.stringify(v) ?? String(v); } catch { return String(v); }
}
