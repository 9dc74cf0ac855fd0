// POSIX and flock locks of open files (GETLK, SETLK, SETLKW, and what RELEASE and DESTROY end).
//
// Decisions:
// - POSIX locks are OFD locks on the fh's own open file description, so two fh conflict with
//   each other even when the guest opened both in one process; a guest process that closes one
//   of two fds does not drop the locks held through the other. GETLK reports the guest pid that
//   took the conflicting lock through another fh, or 0 when that is unknown.
// - SETLKW (POSIX and flock) first tries the non-blocking call; on a conflict the request is
//   parked in a LockWaiter (lock_waiter.ts: event-loop retries, no thread held) until it gets
//   the lock, its INTERRUPT arrives, its fh is released or the session ends (EINTR).
import type { Logger } from '../../shared/log';
import { native } from '../../shared/native';
import { errorInfo } from '../../shared/errors';
import { FsError, type Handle, type LockRange, type NodeId } from './filesystem';
import type { FdLifetime } from './fd_lifetime';
import { LockWaiter } from './lock_waiter';
import * as K from './host_constants';

/** A lock conflict from F_OFD_SETLK or flock(LOCK_NB) (EWOULDBLOCK is EAGAIN on Linux). */
function isEagain(e: unknown): boolean {
  return (e as { errno?: unknown }).errno === K.EAGAIN;
}

/** fuse_file_lock (start, inclusive end) → struct flock (start, len; 0 = to EOF). Ends at or
 * above 2^53-1 (the FUSE server's LOCK_END_OF_FILE; OFFSET_MAX included) mean "to EOF". */
function lockSpan(lock: LockRange): { start: number; len: number } {
  const start = lock.start;
  if (!Number.isSafeInteger(start) || start < 0) throw new FsError(K.EINVAL, 'lock start');
  if (!(lock.end < Number.MAX_SAFE_INTEGER)) return { start, len: 0 };
  if (!Number.isInteger(lock.end) || lock.end < start) throw new FsError(K.EINVAL, 'lock end');
  return { start, len: lock.end - start + 1 };
}

export class Locks {
  /** Who took which POSIX lock through which fh, for GETLK's pid (in memory only). */
  private readonly holders = new Map<NodeId, Array<{ fh: Handle; start: number; end: number; pid: number }>>();
  private readonly waits: LockWaiter;

  constructor(private readonly fds: FdLifetime, maxWaits: number | undefined, private readonly log: Logger) {
    this.waits = new LockWaiter({ maxWaits, log: log.child({ part: 'lock-waits' }) });
  }

  /** SETLKW waits parked now (for status and tests). */
  get parked(): number {
    return this.waits.parked;
  }

  getlk(nodeid: NodeId, fh: Handle, fd: number, lock: LockRange): LockRange {
    const { start, len } = lockSpan(lock);
    const r = native.fcntlLock(fd, K.F_OFD_GETLK, lock.type, K.SEEK_SET, start, len);
    if (r === null || r.type === K.F_UNLCK) return { type: K.F_UNLCK, start: lock.start, end: lock.end, pid: 0 };
    const end = r.len === 0 ? K.OFFSET_MAX : r.start + r.len - 1;
    // OFD locks have no owning process (l_pid is -1): report the guest pid that took the
    // conflicting lock through another handle, as a POSIX GETLK caller expects.
    return { type: r.type, start: r.start, end, pid: this.holderPid(nodeid, fh, r.start, end) };
  }

  /**
   * SETLK/SETLKW on the fh whose fd is registered as `fdName`. Both run the non-blocking call
   * first; a SETLKW that meets a conflict is parked (see lock_waiter.ts) and its Promise settles
   * when a retry takes the lock, or with EINTR when `signal` aborts (INTERRUPT), the fh is
   * released or the session ends. A taken lock is recorded as SETLK records it (noteLock); a
   * wait that did not take it changed nothing.
   */
  setlk(nodeid: NodeId, fh: Handle, fdName: string, lock: LockRange, sleep: boolean, isFlock: boolean,
    signal?: AbortSignal): void | Promise<void> {
    let attempt: (fd: number) => void;
    if (isFlock) {
      const op = lock.type === K.F_UNLCK ? K.LOCK_UN : lock.type === K.F_RDLCK ? K.LOCK_SH : lock.type === K.F_WRLCK ? K.LOCK_EX : -1;
      if (op < 0) throw new FsError(K.EINVAL, 'lock type');
      attempt = (fd) => native.flock(fd, op | (op === K.LOCK_UN ? 0 : K.LOCK_NB));
    } else {
      if (lock.type !== K.F_UNLCK && lock.type !== K.F_RDLCK && lock.type !== K.F_WRLCK) throw new FsError(K.EINVAL, 'lock type');
      const { start, len } = lockSpan(lock);
      attempt = (fd) => {
        native.fcntlLock(fd, K.F_OFD_SETLK, lock.type, K.SEEK_SET, start, len);
        this.noteLock(nodeid, fh, lock);
      };
    }
    try {
      attempt(this.fds.get(fdName));
    } catch (e) {
      if (!sleep || !isEagain(e)) throw e;
      return this.park(nodeid, fh, fdName, attempt, signal);
    }
    // An unlock or a downgrade (also a flock conversion) may let parked waiters in.
    if (lock.type !== K.F_WRLCK) this.waits.wake(nodeid);
  }

  /** RELEASE of the fh: ends its parked waits, and unlocks every OFD and flock lock of its open
   * file description before the reply. Closing our fd is not enough: until the keeper has
   * dropped its copy of the same open file description, the locks would live on and block
   * another opener for a moment after the guest's close() returned. Each fh has its own open
   * file description, so this touches no other fh's locks; done again on a replay, it changes
   * nothing. */
  release(nodeid: NodeId, fh: Handle, fdName: string): void {
    const ended = this.waits.cancelFh(nodeid, fh);
    if (ended > 0) this.log.debug({ nodeid, fh, ended }, 'parked lock waits ended by RELEASE');
    this.dropLocks(nodeid, fh);
    const fd = this.fds.get(fdName);
    try {
      native.fcntlLock(fd, K.F_OFD_SETLK, K.F_UNLCK, K.SEEK_SET, 0, 0);
    } catch (e) {
      this.log.warn({ err: errorInfo(e), fh }, 'unlocking the OFD locks at release failed');
    }
    try {
      native.flock(fd, K.LOCK_UN);
    } catch (e) {
      this.log.warn({ err: errorInfo(e), fh }, 'flock(LOCK_UN) at release failed');
    }
    this.waits.wake(nodeid);
  }

  /** DESTROY: ends every parked wait (before the fds go: a parked wait holds its fh's fd busy). */
  endAll(): void {
    const ended = this.waits.cancelAll();
    if (ended > 0) this.log.info({ ended }, 'parked lock waits ended by the session reset');
    this.holders.clear();
  }

  /** Guest pid of a lock on nodeid that overlaps [start, end] and was taken through another fh
   * (0 when unknown, e.g. taken before a worker restart or by a host process). */
  private holderPid(nodeid: NodeId, fh: Handle, start: number, end: number): number {
    for (const h of this.holders.get(nodeid) ?? []) {
      if (h.fh !== fh && h.start <= end && start <= h.end) return h.pid;
    }
    return 0;
  }

  private noteLock(nodeid: NodeId, fh: Handle, lock: LockRange): void {
    const list = (this.holders.get(nodeid) ?? []).filter((h) => !(h.fh === fh && h.start <= lock.end && lock.start <= h.end));
    if (lock.type !== K.F_UNLCK) list.push({ fh, start: lock.start, end: lock.end, pid: lock.pid });
    if (list.length > 0) this.holders.set(nodeid, list);
    else this.holders.delete(nodeid);
  }

  private dropLocks(nodeid: NodeId, fh: Handle): void {
    const list = this.holders.get(nodeid)?.filter((h) => h.fh !== fh);
    if (list && list.length > 0) this.holders.set(nodeid, list);
    else this.holders.delete(nodeid);
  }

  /** Parks a SETLKW; its fd stays open (busy) until the wait ends. */
  private park(nodeid: NodeId, fh: Handle, fdName: string, attempt: (fd: number) => void, signal?: AbortSignal): Promise<void> {
    const fd = this.fds.acquire(fdName);
    let p: Promise<void>;
    try {
      p = this.waits.park(nodeid, fh, () => {
        try {
          attempt(fd);
          return true;
        } catch (e) {
          if (isEagain(e)) return false;
          throw e;
        }
      }, signal);
    } catch (e) {
      this.fds.release(fdName);
      throw e;
    }
    return p.finally(() => this.fds.release(fdName));
  }
}
