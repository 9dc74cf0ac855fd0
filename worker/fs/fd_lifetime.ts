// The fds the session's records name ("root", "inode.<nodeid>", "file.<fh>", "dir.<fh>",
// "plock.<id>"): they
// live in the FdRegistry, which hands them to the keeper, so they survive a worker crash.
//
// Decisions:
// - fds are registered before the session records them and closed after the session forgets
//   them, so after a crash at any point every session record has its fd (stray fds are closed
//   on resume, closeStrays).
// - An fd that async calls (threadpool) are using is closed when the last of them completes,
//   not earlier: its number must not be reused under a running call.
// - Short-lived fds (truncate without fh, xattrs, syncfs) are opened and closed within the call
//   (syncfs: when the async call completes) and are not registered.
// - Inodes named by a file handle have their fd in the worker's cache (inode_fds.ts) instead
//   of the registry: get() and acquire() find it there (opening it by handle), close() drops
//   it. The budget counts the registry only, whose fds are held twice (here and in the
//   keeper); the cache's bounded size is taken off the budget by the worker.
import type { Logger } from '../../shared/log';
import { native } from '../../shared/native';
import type { Callback } from '../../shared/native';
import type { FdRegistry } from '../../shared/fd_registry';
import { FsError } from './filesystem';
import type { InodeFdCache } from './inode_fds';
import * as K from './host_constants';

/** Budget kept for open files and dirs: a guest that holds as many inodes as it can still
 * opens the ones it holds and lists directories. */
const HANDLE_RESERVE = 64;

/** The fd names the session hands out (session.ts inodeFdName, fileFdName, dirFdName,
 * lockOwnerFdName). */
const SESSION_FD_NAME = /^(inode|file|dir|plock)\.\d+$/;

export class FdLifetime {
  /** fd name → async operations in flight on it; closing such an fd is deferred. */
  private readonly busy = new Map<string, number>();
  private readonly pendingClose = new Set<string>();

  constructor(private readonly registry: FdRegistry, private readonly log: Logger,
    /** The fds of inodes named by handles (none: every inode fd is in the registry). */
    readonly local: InodeFdCache | null = null) {}

  /** Whether one more inode fd fits the budget (FdRegistry.setCapacity), keeping
   * HANDLE_RESERVE for open files and dirs. `inKeeper` false: the inode will be named by a
   * handle, so it needs no registry fd (the cache evicts to make room). */
  hasInodeRoom(inKeeper = true): boolean {
    return !inKeeper || this.registry.hasRoom(1 + HANDLE_RESERVE);
  }

  /** EMFILE unless `inodes` more inode fds (keeping HANDLE_RESERVE) and `handles` more file or
   * dir fds fit the budget: checked before a syscall that would create something needing them,
   * so a refused request changed nothing. */
  ensureRoom(inodes: number, handles: number): void {
    const need = handles + (inodes > 0 ? inodes + HANDLE_RESERVE : 0);
    if (!this.registry.hasRoom(need)) throw new FsError(K.EMFILE, `fd budget of the worker and keeper used up (${this.registry.size} held)`);
  }

  /** The fd registered as `name` (EBADF when there is none). */
  get(name: string): number {
    const fd = this.registry.get(name);
    if (fd !== undefined) return fd;
    if (this.local === null) throw new FsError(K.EBADF, `no fd registered as ${name}`);
    // A cached fd first: owns() parses the name and looks the inode up.
    const cached = this.local.cached(name);
    if (cached !== undefined) return cached;
    if (this.local.owns(name)) return this.local.get(name);
    throw new FsError(K.EBADF, `no fd registered as ${name}`);
  }

  /** Out of fds: closes some cached inode fds. Whether any were closed. */
  relieve(): boolean {
    return (this.local?.relieve() ?? 0) > 0;
  }

  /** Crash-safe order for a new fd: register it (the keeper gets it) before the session records
   * it (the journal gets it), so a session record always has its fd; a worker that dies in
   * between leaves an fd the session does not know, which resume closes. Removal is the other
   * way round (record first, then close). Takes ownership of fd. `reopenable`: the record is
   * all a successor needs to open the fd again (FdRegistryListener.onRegister). */
  registerThenRecord<T extends { fdName: string }>(name: string, fd: number, record: () => T, reopenable = false): T {
    try {
      this.registry.register(name, fd, reopenable);
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
  close(name: string): void {
    if ((this.busy.get(name) ?? 0) > 0) this.pendingClose.add(name);
    else this.closeNow(name);
  }

  private closeNow(name: string): void {
    this.registry.close(name);
    this.local?.drop(name);
  }

  /** close() for many fds at once: those closed now go in bulk (one keeper message per few
   * hundred). */
  closeMany(names: string[]): void {
    const now: string[] = [];
    for (const name of names) {
      if ((this.busy.get(name) ?? 0) > 0) this.pendingClose.add(name);
      else now.push(name);
    }
    this.registry.closeMany(now);
    if (this.local !== null) for (const name of now) this.local.drop(name);
  }

  /** On resume: closes the registered fds named like the session's that it does not know (a
   * worker died between registering and recording them). `beforeClose` sees each one first
   * (the keeper's copy keeps its open file description alive a moment longer). */
  closeStrays(known: Set<string>, beforeClose?: (name: string, fd: number) => void): void {
    for (const [name, fd] of [...this.registry.entries()]) {
      if (SESSION_FD_NAME.test(name) && !known.has(name)) {
        this.log.warn({ fdName: name }, 'closing fd that the session does not know');
        beforeClose?.(name, fd);
        this.registry.close(name);
      }
    }
  }

  /** The fd, kept open until the matching release(). */
  acquire(name: string): number {
    const fd = this.get(name);
    this.busy.set(name, (this.busy.get(name) ?? 0) + 1);
    this.local?.pin(name);
    return fd;
  }

  release(name: string): void {
    this.local?.unpin(name);
    const n = (this.busy.get(name) ?? 1) - 1;
    if (n > 0) {
      this.busy.set(name, n);
      return;
    }
    this.busy.delete(name);
    if (this.pendingClose.delete(name)) this.closeNow(name);
  }

  /** Runs an async addon call on registered fds, keeping them open until it completes. */
  runAsync<T>(names: string[], start: (fds: number[], cb: Callback<T>) => void): Promise<T> {
    const fds: number[] = [];
    try {
      for (const n of names) fds.push(this.acquire(n));
    } catch (e) {
      for (let i = 0; i < fds.length; i++) this.release(names[i]);
      return Promise.reject(e);
    }
    return new Promise<T>((resolve, reject) => {
      let done = false;
      const finish = (): void => {
        if (done) return;
        done = true;
        for (const n of names) this.release(n);
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
}
