// POSIX and flock locks of open files (GETLK, SETLK, SETLKW, and what FLUSH, RELEASE and DESTROY
// end).
//
// Model:
// - POSIX locks belong to a FUSE lock owner: a guest process (its files_struct), or, for the
//   guest's OFD locks, the guest's open file. Each (inode, owner) gets an open file description
//   of its own, "plock.<id>" (session.ts LockOwnerRecord), and its locks are OFD locks on it: an
//   owner's locks never conflict with each other (two fds of one guest process share them), two
//   owners' do, and host processes see them as ordinary record locks.
// - The plock fd is in the keeper and the owner in the session (journaled with the request's
//   outcome) before the reply, so a lock the guest was granted outlives a worker crash and a
//   successor knows whose it is; an owner that no outcome recorded is a stray that resume
//   unlocks and closes, and the request runs again.
// - Unlocking is explicit (F_UNLCK on the whole range) before the reply: FLUSH with the owner
//   (the guest's close() of any fd drops its process's locks on that inode), RELEASE of the fh
//   the owner first locked through (ends the guest's OFD-lock owners: the kernel never flushes
//   those; a process owner has been flushed by then), DESTROY. Closing our fd would not do: the
//   keeper's copy keeps the open file description, and its locks, alive a moment longer.
// - flock locks stay on the fh's own open file description (BSD semantics are per open file,
//   and the guest's open file is our fh); RELEASE unlocks them explicitly for the same reason.
// - GETLK reports the holder's guest pid, taken from the owner record (so also after a restart):
//   the holder is the owner whose plock fd lists the conflicting lock in /proc/self/fdinfo.
// - SETLKW first tries the non-blocking call; on a conflict the request is parked in a
//   LockWaiter (lock_waiter.ts: event-loop retries, no thread held) until it gets the lock, its
//   INTERRUPT arrives, its fh is released, its owner ends or the session ends (EINTR).
import type { Logger } from '../../shared/log';
import { native } from '../../shared/native';
import { errorInfo } from '../../shared/errors';
import { FsError, type Handle, type LockRange, type NodeId } from './filesystem';
import type { FdLifetime } from './fd_lifetime';
import { lockOwnerFdName, type FsSession, type LockOwnerRecord } from './session';
import { procFd } from './inodes';
import { at } from '../../shared/pinned_dirs';
import { LockWaiter } from './lock_waiter';
import * as K from './host_constants';

/** A lock conflict from F_OFD_SETLK or flock(LOCK_NB) (EWOULDBLOCK is EAGAIN on Linux). */
function isEagain(e: unknown): boolean {
  return (e as { errno?: unknown }).errno === K.EAGAIN;
}

function errnoOf(e: unknown): number | undefined {
  const n = (e as { errno?: unknown }).errno;
  return typeof n === 'number' ? n : undefined;
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

/** One OFD lock as /proc/self/fdinfo lists it (end inclusive, OFFSET_MAX = to EOF). */
interface HeldLock { type: number; start: number; end: number }

const FDINFO_LOCK = /^lock:\s+\d+:\s+OFDLCK\s+\S+\s+(READ|WRITE)\s+\S+\s+\S+\s+(\d+)\s+(\d+|EOF)\s*$/gm;

/** The OFD locks held through fd (its open file description's own, not the inode's others). */
export function heldLocks(fd: number): HeldLock[] {
  const chunk = new ArrayBuffer(16384);
  const parts: Buffer[] = [];
  const where = at(`/proc/self/fdinfo/${fd}`);
  const path = native.openat(where.dirFd, where.name, K.O_RDONLY | K.O_CLOEXEC, 0);
  try {
    for (let pos = 0; ;) {
      const n = native.preadv2Sync(path, pos, [{ buffer: chunk, offset: 0, length: chunk.byteLength }], 0);
      if (n <= 0) break;
      parts.push(Buffer.from(chunk.slice(0, n)));
      pos += n;
    }
  } finally {
    native.close(path);
  }
  const out: HeldLock[] = [];
  for (const m of Buffer.concat(parts).toString('latin1').matchAll(FDINFO_LOCK)) {
    out.push({
      type: m[1] === 'WRITE' ? K.F_WRLCK : K.F_RDLCK,
      start: Number(m[2]),
      end: m[3] === 'EOF' ? K.OFFSET_MAX : Number(m[3]),
    });
  }
  return out;
}

export class Locks {
  private readonly waits: LockWaiter;
  /** Files this worker opened that never saw a flock operation: their RELEASE has no flock
   * lock to drop, so it skips flock(LOCK_UN) (one syscall per open file). Files a predecessor
   * opened are not here (a flock it took is in no journal we read): those are unlocked. */
  private readonly neverFlocked = new Set<string>();

  constructor(private readonly session: FsSession, private readonly fds: FdLifetime, maxWaits: number | undefined,
    private readonly log: Logger) {
    this.waits = new LockWaiter({ maxWaits, log: log.child({ part: 'lock-waits' }) });
  }

  /** A file this worker just opened (under `fileFdName`): no flock lock on it yet. */
  opened(fileFdName: string): void {
    this.neverFlocked.add(fileFdName);
  }

  /** SETLKW waits parked now (for status and tests). */
  get parked(): number {
    return this.waits.parked;
  }

  /** Whether `owner` holds a lock owner record on nodeid (a FLUSH with it changes state). */
  hasOwner(nodeid: NodeId, owner: bigint): boolean {
    return this.session.lockOwnerCount > 0 && this.session.findLockOwner(nodeid, owner) !== undefined;
  }

  /** GETLK for `owner`, whose fh's fd is `fileFd`. */
  getlk(nodeid: NodeId, owner: bigint, fileFd: number, lock: LockRange): LockRange {
    const { start, len } = lockSpan(lock);
    if (lock.type !== K.F_RDLCK && lock.type !== K.F_WRLCK) throw new FsError(K.EINVAL, 'lock type');
    // From the owner's own open file description its locks are not conflicts; an owner without
    // one holds no lock, and the fh's description holds no POSIX lock (only flock).
    const own = this.session.findLockOwner(nodeid, owner);
    const fd = own !== undefined ? this.fds.get(own.fdName) : fileFd;
    const r = native.fcntlLock(fd, K.F_OFD_GETLK, lock.type, K.SEEK_SET, start, len);
    if (r === null || r.type === K.F_UNLCK) return { type: K.F_UNLCK, start: lock.start, end: lock.end, pid: 0 };
    const end = r.len === 0 ? K.OFFSET_MAX : r.start + r.len - 1;
    return { type: r.type, start: r.start, end, pid: this.holderPid(nodeid, own, { type: r.type, start: r.start, end }) };
  }

  /**
   * SETLK/SETLKW: POSIX locks on the owner's open file description (created on its first lock
   * on the inode), flock locks on the fh's (`fileFdName`). Both run the non-blocking call first;
   * a SETLKW that meets a conflict is parked (lock_waiter.ts) and its Promise settles when a
   * retry takes the lock, or with EINTR when `signal` aborts (INTERRUPT), the fh is released,
   * the owner ends or the session ends.
   */
  setlk(nodeid: NodeId, fh: Handle, fileFdName: string, owner: bigint, lock: LockRange, sleep: boolean,
    isFlock: boolean, signal?: AbortSignal): void | Promise<void> {
    let fdName: string;
    let ownerId: number | null = null;
    let attempt: (fd: number) => void;
    if (isFlock) {
      const op = lock.type === K.F_UNLCK ? K.LOCK_UN : lock.type === K.F_RDLCK ? K.LOCK_SH : lock.type === K.F_WRLCK ? K.LOCK_EX : -1;
      if (op < 0) throw new FsError(K.EINVAL, 'lock type');
      fdName = fileFdName;
      // Before the attempt: a parked wait may take the lock later.
      this.neverFlocked.delete(fileFdName);
      attempt = (fd) => native.flock(fd, op | (op === K.LOCK_UN ? 0 : K.LOCK_NB));
    } else {
      if (lock.type !== K.F_UNLCK && lock.type !== K.F_RDLCK && lock.type !== K.F_WRLCK) throw new FsError(K.EINVAL, 'lock type');
      const { start, len } = lockSpan(lock);
      let rec = this.session.findLockOwner(nodeid, owner);
      if (rec === undefined) {
        if (lock.type === K.F_UNLCK) return; // this owner holds nothing here
        rec = this.openOwner(nodeid, fh, fileFdName, owner, lock.pid);
      }
      fdName = rec.fdName;
      ownerId = rec.id;
      attempt = (fd) => native.fcntlLock(fd, K.F_OFD_SETLK, lock.type, K.SEEK_SET, start, len);
    }
    try {
      attempt(this.fds.get(fdName));
    } catch (e) {
      if (!sleep || !isEagain(e)) throw e;
      return this.park(nodeid, fh, ownerId, fdName, attempt, signal);
    }
    // An unlock or a downgrade (also a flock conversion) may let parked waiters in.
    if (lock.type !== K.F_WRLCK) this.waits.wake(nodeid);
  }

  /** FLUSH with a lock owner: the guest closed one of the owner's fds of the inode, which drops
   * all of the owner's POSIX locks on it. */
  flush(nodeid: NodeId, owner: bigint): void {
    const rec = this.session.findLockOwner(nodeid, owner);
    if (rec !== undefined) this.endOwner(rec, 'flush');
  }

  /** RELEASE of the fh: ends its parked waits, the lock owners that first locked through it
   * (the guest's OFD locks on that open file), and its flock locks, all before the reply.
   * Done again on a replay, it changes nothing. */
  release(nodeid: NodeId, fh: Handle, fileFdName: string): void {
    const ended = this.waits.cancelFh(nodeid, fh);
    if (ended > 0) this.log.debug({ nodeid, fh, ended }, 'parked lock waits ended by RELEASE');
    if (this.session.lockOwnerCount > 0) {
      for (const rec of [...this.session.allLockOwners()]) {
        if (rec.nodeid === nodeid && rec.fh === fh) this.endOwner(rec, 'release');
      }
    }
    if (!this.neverFlocked.delete(fileFdName)) {
      try {
        native.flock(this.fds.get(fileFdName), K.LOCK_UN);
      } catch (e) {
        this.log.warn({ err: errorInfo(e), fh }, 'flock(LOCK_UN) at release failed');
      }
    }
    this.waits.wake(nodeid);
  }

  /** DESTROY: ends every parked wait (before the fds go: a parked wait holds its fd busy) and
   * unlocks every owner's locks and every open file's flock locks (the session reset then
   * closes the fds, but the keeper's copies would keep the locks a moment longer). */
  endAll(): void {
    const ended = this.waits.cancelAll();
    if (ended > 0) this.log.info({ ended }, 'parked lock waits ended by the session reset');
    for (const rec of this.session.allLockOwners()) this.unlockAll(rec.fdName, this.fds.get(rec.fdName));
    this.neverFlocked.clear();
    for (const file of this.session.allFiles()) {
      try {
        native.flock(this.fds.get(file.fdName), K.LOCK_UN);
      } catch (e) {
        this.log.warn({ err: errorInfo(e), fh: file.fh }, 'flock(LOCK_UN) at the session reset failed');
      }
    }
  }

  /** Resume: a plock fd that no session record names was created by a request whose outcome
   * never became durable: the guest was not granted its lock, so it goes before the close. */
  unlockStray(name: string, fd: number): void {
    if (name.startsWith('plock.')) this.unlockAll(name, fd);
  }

  private openOwner(nodeid: NodeId, fh: Handle, fileFdName: string, owner: bigint, pid: number): LockOwnerRecord {
    try {
      this.fds.ensureRoom(0, 1);
    } catch (e) {
      if (errnoOf(e) === K.EMFILE) throw new FsError(K.ENOLCK, 'no fd left for a new lock owner');
      throw e;
    }
    // As virtiofsd: read-write when possible, so that the owner can take read and write locks
    // through any of its fds; else the access mode of the fh it locks through now.
    const fileFd = this.fds.get(fileFdName);
    const link = procFd(fileFd);
    let fd: number;
    try {
      fd = native.openat(link.dirFd, link.name, K.O_RDWR | K.O_CLOEXEC, 0);
    } catch (e) {
      const errno = errnoOf(e);
      if (errno !== K.EACCES && errno !== K.EROFS && errno !== K.ETXTBSY) throw e;
      const accmode = native.fdFlags(fileFd).statusFlags & K.O_ACCMODE;
      fd = native.openat(link.dirFd, link.name, accmode | K.O_CLOEXEC, 0);
    }
    return this.fds.registerThenRecord(lockOwnerFdName(this.session.nextFh), fd,
      () => this.session.openLockOwner(nodeid, fh, owner, pid >>> 0));
  }

  private endOwner(rec: LockOwnerRecord, why: 'flush' | 'release'): void {
    const ended = this.waits.cancelOwner(rec.nodeid, rec.id);
    if (ended > 0) this.log.debug({ nodeid: rec.nodeid, ended, why }, 'parked lock waits ended with their owner');
    this.unlockAll(rec.fdName, this.fds.get(rec.fdName));
    this.session.closeLockOwner(rec.id);
    this.fds.close(rec.fdName);
    this.waits.wake(rec.nodeid);
  }

  private unlockAll(name: string, fd: number): void {
    try {
      native.fcntlLock(fd, K.F_OFD_SETLK, K.F_UNLCK, K.SEEK_SET, 0, 0);
    } catch (e) {
      this.log.warn({ err: errorInfo(e), fdName: name }, 'unlocking a lock owner failed');
    }
  }

  /** Guest pid of the owner (other than `self`) that holds `conflict` on nodeid: the one whose
   * open file description lists exactly that lock, else one listing an overlapping lock of a
   * conflicting type; 0 for a lock held by a host process. */
  private holderPid(nodeid: NodeId, self: LockOwnerRecord | undefined, conflict: HeldLock): number {
    let overlapping = 0;
    for (const rec of this.session.allLockOwners()) {
      if (rec.nodeid !== nodeid || rec === self) continue;
      let held: HeldLock[];
      try {
        held = heldLocks(this.fds.get(rec.fdName));
      } catch (e) {
        this.log.warn({ err: errorInfo(e), fdName: rec.fdName }, 'cannot read the locks of a lock owner');
        continue;
      }
      for (const h of held) {
        if (h.type === conflict.type && h.start === conflict.start && h.end === conflict.end) return rec.pid;
        if (overlapping === 0 && h.start <= conflict.end && conflict.start <= h.end) overlapping = rec.pid;
      }
    }
    return overlapping;
  }

  /** Parks a SETLKW; its fd stays open (busy) until the wait ends. */
  private park(nodeid: NodeId, fh: Handle, ownerId: number | null, fdName: string, attempt: (fd: number) => void,
    signal?: AbortSignal): Promise<void> {
    const fd = this.fds.acquire(fdName);
    let p: Promise<void>;
    try {
      p = this.waits.park(nodeid, fh, ownerId, () => {
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
