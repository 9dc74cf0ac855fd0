// Inodes named by file handles (--inode-file-handles): their O_PATH fds live only in this
// worker, in a bounded LRU cache, and are opened again by handle when needed. The keeper holds
// none of them, so neither process's fd count grows with the number of inodes the guest knows.
//
// Decisions:
// - Which inodes get a handle: with handles on (InodeHandleSupport.active), every inode
//   looked up on the mount of the shared directory (name_to_handle_at gives the root's mount
//   id) whose filesystem can export it. Others (another mount below the share, a handle
//   refused) keep an fd in the keeper as before; so do the root, open files, open dirs and lock
//   owners.
// - Identity: the handle carries the inode's generation, so open_by_handle_at of a deleted
//   inode answers ESTALE instead of reaching a later inode with the same number; the opened
//   fd is also fstat'ed and must be the journaled (dev, ino), else ESTALE.
// - The share is the boundary: a handle opens any inode of the filesystem, so handles come
//   only from our own journal (made by name_to_handle_at on an inode we reached beneath the
//   root), never from the guest, and are opened only with the root as mount fd.
// - open_by_handle_at refuses an O_PATH mount fd (EBADF), and the root's fd is O_PATH: the
//   cache keeps the root reopened O_RDONLY|O_DIRECTORY (through /proc/self/fd, as any reopen)
//   as its mount fd, the worker's own (a successor opens its own).
// - Eviction closes the least recently used unpinned fd at once. A request uses at most a few
//   inode fds synchronously, all recently used, and async calls pin theirs (FdLifetime.acquire),
//   so the cache never closes an fd under a user; it has at least MIN_CAPACITY entries.
// - Out of fds (EMFILE/ENFILE) an open evicts half of the cache and tries once more; then the
//   request fails with that errno (logged at a bounded rate), the worker keeps serving.
import type { Logger } from '../../shared/log';
import type { InodeFileHandles } from '../../shared/config';
import { native, STAT } from '../../shared/native';
import { errorInfo } from '../../shared/errors';
import { LogRateLimiter } from '../../shared/rate_limit';
import { at } from '../../shared/pinned_dirs';
import { FsError } from './filesystem';
import type { FsSession, InodeHandle, InodeRecord } from './session';
import * as K from './host_constants';

export type { InodeFileHandles };
export const MIN_CAPACITY = 16;
const INODE_NAME = /^inode\.(\d+)$/;

/** Whether new inodes get handles, and why not (for `status`). */
export interface InodeHandleSupport {
  mode: InodeFileHandles;
  active: boolean;
  /** Why handles are off although the mode asks for them (null: they are on, or mode never). */
  reason: string | null;
  /** The mount id of the shared directory (handles are made only for inodes on it). */
  mountId: number | null;
}

/** Probes name_to_handle_at and open_by_handle_at (which needs CAP_DAC_READ_SEARCH) on the
 * shared directory. 'mandatory' without support is the caller's error to raise. */
export function probeHandles(mode: InodeFileHandles, rootFd: number): InodeHandleSupport {
  if (mode === 'never') return { mode, active: false, reason: null, mountId: null };
  let h: InodeHandle;
  try {
    h = native.nameToHandleAt(rootFd, '', K.AT_EMPTY_PATH);
  } catch (e) {
    return { mode, active: false, reason: `the filesystem of the shared directory gives no file handles (${errnoName(e)})`, mountId: null };
  }
  let mountFd = -1;
  try {
    mountFd = openMountFd(rootFd);
    native.close(native.openByHandleAt(mountFd, h, K.O_PATH | K.O_CLOEXEC));
  } catch (e) {
    const why = (e as { code?: string }).code === 'EPERM' ? 'no CAP_DAC_READ_SEARCH' : errnoName(e);
    return { mode, active: false, reason: `open_by_handle_at is refused (${why})`, mountId: null };
  } finally {
    if (mountFd >= 0) native.close(mountFd);
  }
  return { mode, active: true, reason: null, mountId: h.mountId };
}

/** The root (an O_PATH fd) opened for reading: a mount fd open_by_handle_at accepts. */
function openMountFd(rootFd: number): number {
  // Through the pinned /proc/self/fd once the worker is confined (there is no /proc in its root).
  const link = at(`/proc/self/fd/${rootFd}`);
  return native.openat(link.dirFd, link.name, K.O_RDONLY | K.O_DIRECTORY | K.O_CLOEXEC, 0);
}

function errnoName(e: unknown): string {
  return (e as { code?: string }).code ?? (e as Error).message;
}

/** A cached fd, linked in recency order. */
interface Entry { name: string; fd: number; pins: number; prev: Entry | null; next: Entry | null }

/** Who must know which inode fds the cache holds. */
export interface InodeFdObserver {
  fdOpened(name: string, fd: number): void;
  /** Called before the fd is closed. */
  fdClosing(name: string): void;
}

export class InodeFdCache {
  /** fd name → entry. Recency is the linked list (head: least recently used), not the Map's
   * insertion order: evicting from a Map's front walks every entry deleted since its last
   * rehash (thousands in a long listing), which cost more than the open it made room for. */
  private readonly lru = new Map<string, Entry>();
  private head: Entry | null = null;
  private tail: Entry | null = null;
  private readonly shortage = new LogRateLimiter();
  private mountFd: number | null = null;
  /** Opens by handle since the start (for status and tests). */
  opens = 0;
  readonly capacity: number;

  constructor(private readonly session: FsSession, private readonly rootFd: () => number,
    capacity: number, private readonly log: Logger) {
    this.capacity = Math.max(MIN_CAPACITY, Math.floor(capacity));
  }

  /** Told of every fd the cache opens or closes (the fast path's table, fast_table.ts). */
  observer: InodeFdObserver | null = null;

  get size(): number { return this.lru.size; }
  /** Whether one more fd would evict one. */
  get full(): boolean { return this.lru.size >= this.capacity; }

  /** The cached fd, without opening one or touching the LRU order. */
  peek(name: string): number | undefined {
    return this.lru.get(name)?.fd;
  }

  /** Whether `name` is an inode named by a handle (so its fd is ours, not the keeper's). */
  owns(name: string): boolean {
    return this.recordOf(name) !== null;
  }

  /** Takes ownership of an fd just opened for a new inode with a handle. */
  insert(name: string, fd: number): void {
    const old = this.lru.get(name);
    if (old !== undefined) {
      this.observer?.fdClosing(name);
      native.close(old.fd);
      old.fd = fd;
      this.touch(old);
    } else {
      this.add(name, fd);
    }
    this.observer?.fdOpened(name, fd);
    this.trim();
  }

  /** The cached fd of `name`, made the most recently used; undefined when none is cached. */
  cached(name: string): number | undefined {
    const hit = this.lru.get(name);
    if (hit === undefined) return undefined;
    this.touch(hit);
    return hit.fd;
  }

  /** Whether an fd of `name` is open here now (no change of recency). While it is, the inode
   * cannot be freed, so its inode number cannot have been reused. */
  holds(name: string): boolean {
    return this.lru.has(name);
  }

  /** The inode's O_PATH fd, opened by handle if the cache has none. */
  get(name: string): number {
    const hit = this.cached(name);
    if (hit !== undefined) return hit;
    const rec = this.recordOf(name);
    if (rec === null) throw new FsError(K.EBADF, `no fd registered as ${name}`);
    const fd = this.open(rec);
    this.add(name, fd);
    this.observer?.fdOpened(name, fd);
    this.trim();
    return fd;
  }

  pin(name: string): void {
    const e = this.lru.get(name);
    if (e !== undefined) e.pins++;
  }

  unpin(name: string): void {
    const e = this.lru.get(name);
    if (e !== undefined && e.pins > 0) e.pins--;
    this.trim();
  }

  /** Closes the cached fd of an inode that left the session. */
  drop(name: string): void {
    const e = this.lru.get(name);
    if (e === undefined) return;
    this.remove(e);
    this.observer?.fdClosing(name);
    native.close(e.fd);
  }

  /** Closes up to half of the unpinned fds (the least recently used): room for a new fd. */
  relieve(): number {
    return this.evict(Math.ceil(this.lru.size / 2));
  }

  /** Closes the mount fd (opened again when needed): after a session reset. */
  closeMountFd(): void {
    if (this.mountFd !== null) native.close(this.mountFd);
    this.mountFd = null;
  }

  private recordOf(name: string): InodeRecord | null {
    const m = INODE_NAME.exec(name);
    if (m === null) return null;
    const rec = this.session.getInode(Number(m[1]));
    return rec !== undefined && rec.handle !== null && rec.fdName === name ? rec : null;
  }

  private open(rec: InodeRecord): number {
    const h = rec.handle!;
    let fd: number;
    try {
      fd = this.openOnce(h);
    } catch (e) {
      const errno = (e as { errno?: number }).errno;
      if (errno !== K.EMFILE && errno !== K.ENFILE) {
        if (errno === K.ESTALE) throw new FsError(K.ESTALE, `inode ${rec.nodeid} no longer exists`);
        throw e;
      }
      this.relieve();
      try {
        fd = this.openOnce(h);
      } catch (e2) {
        const dropped = this.shortage.admit();
        if (dropped !== null) this.log.warn({ err: errorInfo(e2), dropped, cached: this.lru.size }, 'out of fds opening an inode by handle; the request fails');
        throw e2;
      }
    }
    this.opens++;
    const st = Buffer.allocUnsafe(STAT.SIZE);
    try {
      native.fstatat(fd, '', K.AT_EMPTY_PATH | K.AT_SYMLINK_NOFOLLOW, st);
    } catch (e) {
      native.close(fd);
      throw e;
    }
    if (st.readBigUInt64LE(STAT.dev) !== rec.dev || st.readBigUInt64LE(STAT.ino) !== rec.ino) {
      native.close(fd);
      this.log.warn({ nodeid: rec.nodeid }, 'a file handle opened another inode than the journaled one');
      throw new FsError(K.ESTALE, `handle of inode ${rec.nodeid} does not open (${rec.dev}, ${rec.ino})`);
    }
    return fd;
  }

  private openOnce(h: InodeHandle): number {
    this.mountFd ??= openMountFd(this.rootFd());
    return native.openByHandleAt(this.mountFd, h, K.O_PATH | K.O_NOFOLLOW | K.O_CLOEXEC);
  }

  private trim(): void {
    if (this.lru.size > this.capacity) this.evict(this.lru.size - this.capacity);
  }

  private evict(n: number): number {
    let closed = 0;
    for (let e = this.head; e !== null && closed < n;) {
      const next = e.next;
      if (e.pins === 0) {
        this.remove(e);
        this.observer?.fdClosing(e.name);
        native.close(e.fd);
        closed++;
      }
      e = next;
    }
    return closed;
  }

  private add(name: string, fd: number): void {
    const e: Entry = { name, fd, pins: 0, prev: this.tail, next: null };
    if (this.tail !== null) this.tail.next = e;
    else this.head = e;
    this.tail = e;
    this.lru.set(name, e);
  }

  private remove(e: Entry): void {
    this.lru.delete(e.name);
    this.unlink(e);
  }

  /** Makes e the most recently used. */
  private touch(e: Entry): void {
    if (this.tail === e) return;
    this.unlink(e);
    e.prev = this.tail;
    e.next = null;
    this.tail!.next = e;
    this.tail = e;
  }

  private unlink(e: Entry): void {
    if (e.prev !== null) e.prev.next = e.next;
    else this.head = e.next;
    if (e.next !== null) e.next.prev = e.prev;
    else this.tail = e.prev;
    e.prev = null;
    e.next = null;
  }
}
