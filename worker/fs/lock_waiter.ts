// Parked blocking lock requests (FUSE SETLKW, POSIX/OFD and flock), without threads.
//
// Design: a SETLKW whose non-blocking attempt (F_OFD_SETLK / flock(LOCK_NB)) met a conflict is
// parked here and retried with the same non-blocking call from the event loop:
// - right away (next setImmediate) when this filesystem itself released something on that inode
//   (an unlock, a downgrade, a RELEASE of an fh): guest-vs-guest contention, the usual case on a
//   virtio-fs share, gets the lock with no added latency;
// - otherwise on a per-inode backoff timer, MIN_DELAY_MS doubling up to MAX_DELAY_MS, so a lock
//   released by a host process is seen within MAX_DELAY_MS.
// Why not F_OFD_SETLKW/flock() on threads: a blocked syscall holds its thread (the libuv pool
// has 16, shared with every READ/FSYNC), and a thread blocked in the kernel cannot be cancelled
// cleanly (it takes a signal aimed at the thread, racing with its entry into the syscall) when
// the guest's process is killed, the handle is released or the session ends. Here a wait that
// has not acquired is only an entry in a list: cancelling it is removing it, it holds no
// thread, and a worker death loses nothing (the resubmitted request just parks again).
// Costs: CPU while parked is one non-blocking syscall per waiter per round (at most
// 1000/MAX_DELAY_MS rounds a second per contended inode); waiters are bounded (maxWaits, beyond
// it ENOLCK). Fairness: each round tries an inode's waiters in arrival order, so among our
// waiters the oldest compatible one wins; against a host process blocked in F_SETLKW on the same
// range the kernel wakes that one first, so a busy host-side contender can starve a guest waiter
// (the kernel's own wait queue cannot be joined without blocking a thread).
import type { Logger } from '../../shared/log';
import { FsError, type Handle, type NodeId } from './filesystem';
import * as K from './host_constants';

export const MIN_DELAY_MS = 2;
export const MAX_DELAY_MS = 50;
export const DEFAULT_MAX_WAITS = 1024;

/** One attempt: true when the lock was taken, false on a conflict (EAGAIN); throws on any other
 * error (which ends the wait with that error). */
export type LockAttempt = () => boolean;

interface Waiter {
  nodeid: NodeId;
  fh: Handle;
  /** The POSIX lock owner's id (session.ts LockOwnerRecord), null for flock. */
  ownerId: number | null;
  attempt: LockAttempt;
  resolve: () => void;
  reject: (e: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | null;
}

interface InodeWaits {
  /** Arrival order. */
  waiters: Waiter[];
  delay: number;
  timer: NodeJS.Timeout | null;
  immediate: NodeJS.Immediate | null;
}

export interface LockWaiterOptions {
  maxWaits?: number;
  minDelayMs?: number;
  maxDelayMs?: number;
  log: Logger;
}

export class LockWaiter {
  private readonly byInode = new Map<NodeId, InodeWaits>();
  private count = 0;
  private readonly maxWaits: number;
  private readonly minDelay: number;
  private readonly maxDelay: number;
  private readonly log: Logger;
  private refusedWindow = 0;
  private refusedInWindow = 0;

  constructor(opts: LockWaiterOptions) {
    this.maxWaits = opts.maxWaits ?? DEFAULT_MAX_WAITS;
    this.minDelay = opts.minDelayMs ?? MIN_DELAY_MS;
    this.maxDelay = opts.maxDelayMs ?? MAX_DELAY_MS;
    if (!Number.isSafeInteger(this.maxWaits) || this.maxWaits < 0) throw new RangeError(`maxWaits ${this.maxWaits} out of range`);
    if (!(this.minDelay >= 1 && this.maxDelay >= this.minDelay)) throw new RangeError('lock wait delays out of range');
    this.log = opts.log;
  }

  /** Waits now parked. */
  get parked(): number {
    return this.count;
  }

  /**
   * Parks a lock request whose first attempt met a conflict; resolves once an attempt takes the
   * lock. Rejects with EINTR when `signal` aborts or the wait is cancelled, with the attempt's
   * error when one fails otherwise, and throws ENOLCK at once when maxWaits are parked.
   */
  park(nodeid: NodeId, fh: Handle, ownerId: number | null, attempt: LockAttempt, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(new FsError(K.EINTR, 'lock wait interrupted'));
    if (this.count >= this.maxWaits) {
      this.logRefusal();
      throw new FsError(K.ENOLCK, `${this.count} lock waits parked`);
    }
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = { nodeid, fh, ownerId, attempt, resolve, reject, signal, onAbort: null };
      if (signal !== undefined) {
        w.onAbort = () => this.end(w, new FsError(K.EINTR, 'lock wait interrupted'));
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      let g = this.byInode.get(nodeid);
      if (g === undefined) {
        g = { waiters: [], delay: this.minDelay, timer: null, immediate: null };
        this.byInode.set(nodeid, g);
      }
      g.waiters.push(w);
      this.count++;
      if (g.timer === null && g.immediate === null) this.schedule(nodeid, g);
    });
  }

  /** Something on `nodeid` was unlocked or closed by us: retry its waiters on the next turn. */
  wake(nodeid: NodeId): void {
    const g = this.byInode.get(nodeid);
    if (g === undefined || g.immediate !== null) return;
    if (g.timer !== null) clearTimeout(g.timer);
    g.timer = null;
    g.delay = this.minDelay;
    g.immediate = setImmediate(() => {
      g.immediate = null;
      this.round(nodeid, g);
    });
  }

  /** Ends the waits on `fh` (its RELEASE) with EINTR. */
  cancelFh(nodeid: NodeId, fh: Handle): number {
    return this.cancelWhere(nodeid, (w) => w.fh === fh, 'handle released while its lock wait was parked');
  }

  /** Ends the waits of a POSIX lock owner whose locks were just dropped (FLUSH, RELEASE) with
   * EINTR: the open file description they would lock on is going away. */
  cancelOwner(nodeid: NodeId, ownerId: number): number {
    return this.cancelWhere(nodeid, (w) => w.ownerId === ownerId, 'lock owner ended while its lock wait was parked');
  }

  private cancelWhere(nodeid: NodeId, which: (w: Waiter) => boolean, why: string): number {
    const g = this.byInode.get(nodeid);
    if (g === undefined) return 0;
    const ended = g.waiters.filter(which);
    for (const w of ended) this.end(w, new FsError(K.EINTR, why));
    return ended.length;
  }

  /** Ends every wait with EINTR (the session is over). */
  cancelAll(): number {
    const n = this.count;
    for (const g of [...this.byInode.values()]) {
      for (const w of [...g.waiters]) this.end(w, new FsError(K.EINTR, 'session ended while a lock wait was parked'));
    }
    return n;
  }

  private schedule(nodeid: NodeId, g: InodeWaits): void {
    g.timer = setTimeout(() => {
      g.timer = null;
      this.round(nodeid, g);
    }, g.delay);
    // Parked waits alone must not keep the process alive.
    g.timer.unref();
  }

  /** One retry of every waiter on the inode, oldest first. */
  private round(nodeid: NodeId, g: InodeWaits): void {
    if (this.byInode.get(nodeid) !== g) return;
    let progress = false;
    for (const w of [...g.waiters]) {
      let got: boolean;
      try {
        got = w.attempt();
      } catch (e) {
        this.end(w, e);
        continue;
      }
      if (got) {
        progress = true;
        this.end(w, null);
      }
    }
    if (this.byInode.get(nodeid) !== g || g.immediate !== null) return;
    // Activity on the inode: the next release is likely soon.
    g.delay = progress ? this.minDelay : Math.min(g.delay * 2, this.maxDelay);
    this.schedule(nodeid, g);
  }

  /** Removes the waiter and settles it: acquired (err null) or failed. */
  private end(w: Waiter, err: unknown): void {
    const g = this.byInode.get(w.nodeid);
    const i = g?.waiters.indexOf(w) ?? -1;
    if (g === undefined || i < 0) return; // already ended
    g.waiters.splice(i, 1);
    this.count--;
    if (g.waiters.length === 0) {
      if (g.timer !== null) clearTimeout(g.timer);
      if (g.immediate !== null) clearImmediate(g.immediate);
      this.byInode.delete(w.nodeid);
    }
    if (w.onAbort !== null) w.signal?.removeEventListener('abort', w.onAbort);
    if (err === null) w.resolve();
    else w.reject(err);
  }

  /** A guest can flood SETLKW: one line a second at most, with the count refused. */
  private logRefusal(): void {
    const now = Date.now();
    this.refusedInWindow++;
    if (now - this.refusedWindow < 1000) return;
    this.log.warn({ parked: this.count, max: this.maxWaits, refused: this.refusedInWindow },
      'too many parked lock waits: SETLKW answered ENOLCK');
    this.refusedWindow = now;
    this.refusedInWindow = 0;
  }
}
