// Blocking lock requests (SETLKW, POSIX/OFD and flock) that have to wait: they must not take a
// shared thread pool (other requests stay served), they get the lock once it is free, and they
// end (EINTR, lock not taken) on INTERRUPT, RELEASE of their handle, DESTROY and a worker death
// (the successor parks them again).
//
// The C virtiofsd (Debian's /usr/lib/qemu/virtiofsd, with -o posix_lock,flock) answers every
// SETLKW that would have to wait, POSIX and flock alike, with EOPNOTSUPP at once: the
// assertions below that only make sense with real waits run for ours.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { C, native } from '../../shared/native';
import { queryStatus } from '../../cli/status';
import { selectedBackends } from './backend';
import { openSession, unexpectedErrors, checkErrno, pattern, waitFor, type Session } from './helpers';
import type { FuseReply } from './fuse_client';
import * as F from './fuse_proto';

const ROOT = F.FUSE_ROOT_ID;
const { EINTR, EAGAIN, EOPNOTSUPP, ENOSYS, ENOLCK } = F.Errno;
const EOF = 0x7fff_ffff_ffff_ffffn;
const BIG = 256 * 1024; // above the 128 KiB a READ may do on the event loop: it takes the thread pool
/** How long another request may take while locks wait (answers take milliseconds). */
const PROMPT_MS = 5_000;

const WR = (start: number | bigint, end: number | bigint, pid = 4242): F.FileLock => ({ start: BigInt(start), end: BigInt(end), type: F.F_WRLCK, pid });
const RD = (start: number | bigint, end: number | bigint, pid = 4242): F.FileLock => ({ start: BigInt(start), end: BigInt(end), type: F.F_RDLCK, pid });
const UN = (start: number | bigint, end: number | bigint): F.FileLock => ({ start: BigInt(start), end: BigInt(end), type: F.F_UNLCK, pid: 0 });

function setlkw(s: Session, nodeid: bigint, fh: bigint, owner: bigint, lk: F.FileLock, flock = false,
  unique?: bigint): Promise<FuseReply> {
  return s.fuse.request(F.Op.SETLKW, nodeid, [F.lkIn(fh, owner, lk, flock ? F.FUSE_LK_FLOCK : 0)],
    { timeoutMs: 60_000, ...(unique !== undefined ? { unique } : {}) });
}

/** Tracks whether a request has been answered, without awaiting it. */
function track(p: Promise<FuseReply>): { p: Promise<FuseReply>; done: () => boolean } {
  let settled = false;
  void p.then(() => { settled = true; }, () => { settled = true; });
  return { p, done: () => settled };
}

/** A host-side open file description of `file` (OFD and flock locks of a host process). */
function hostFd(t: { teardown(fn: () => void): void }, file: string): number {
  const fd = native.openat(C.AT_FDCWD!, file, C.O_RDWR!, 0);
  t.teardown(() => native.close(fd));
  return fd;
}

const hostLockType = (fd: number, start: number, len: number): number =>
  native.fcntlLock(fd, C.F_OFD_GETLK!, C.F_WRLCK!, C.SEEK_SET!, start, len)!.type;

function files(sh: string): void {
  fs.writeFileSync(path.join(sh, 'lockme'), Buffer.alloc(1000));
  fs.writeFileSync(path.join(sh, 'data'), pattern(BIG));
}

for (const kind of selectedBackends()) {
  t.test(kind, async (t) => {
    t.test('24 waiting SETLKW (20 POSIX, 4 flock) do not starve READ, FSYNC and GETATTR', async (t) => {
      const s = await openSession(t, kind, { negotiate: { queueSize: 256 }, setup: files });
      const e = await s.fuse.lookup(ROOT, 'lockme');
      const d = await s.fuse.lookup(ROOT, 'data');
      const df = await s.fuse.open(d.nodeid, F.O.RDWR);
      const holder = await s.fuse.open(e.nodeid, F.O.RDWR);
      await s.fuse.setlk(e.nodeid, holder.fh, 1n, WR(0, EOF));
      await s.fuse.setlk(e.nodeid, holder.fh, 1n, WR(0, 0), true);
      const waits: Array<ReturnType<typeof track>> = [];
      for (let i = 0; i < 24; i++) {
        const o = await s.fuse.open(e.nodeid, F.O.RDWR);
        const flock = i >= 20;
        // Disjoint ranges and shared flocks: every waiter can have its lock at once afterwards.
        waits.push(track(setlkw(s, e.nodeid, o.fh, 100n + BigInt(i), flock ? RD(0, 0) : WR(i * 10, i * 10 + 9), flock)));
      }
      // One queue is served in order: once this is answered, every SETLKW above was seen.
      t.ok(await s.fuse.serving(PROMPT_MS), 'GETATTR answered while the locks wait');
      if (kind === 'c-virtiofsd') {
        for (const w of waits) checkErrno(t, kind, (await w.p).error, 0, 'SETLKW on a held lock', [EOPNOTSUPP, ENOSYS]);
      } else {
        t.equal(waits.filter((w) => w.done()).length, 0, 'no SETLKW answered while the locks are held');
      }
      const data = await s.fuse.read(d.nodeid, df.fh, 0, BIG, { timeoutMs: PROMPT_MS });
      t.ok(data.equals(pattern(BIG)), `a ${BIG / 1024} KiB READ (thread pool) answered while the locks wait`);
      await s.fuse.fsync(d.nodeid, df.fh, false, { timeoutMs: PROMPT_MS });
      t.pass('FSYNC answered while the locks wait');
      t.ok(await s.fuse.serving(PROMPT_MS), 'GETATTR still answered');
      await s.fuse.setlk(e.nodeid, holder.fh, 1n, UN(0, EOF));
      await s.fuse.setlk(e.nodeid, holder.fh, 1n, UN(0, 0), true);
      if (kind === 'ours') {
        const granted = (await Promise.all(waits.map((w) => w.p))).map((r) => r.error);
        t.same(granted, granted.map(() => 0), 'every waiting SETLKW granted once the holder unlocked');
      }
      t.same(unexpectedErrors(s), []);
    });

    t.test('a waiting SETLKW gets the lock once the holder unlocks (guest and host holders, POSIX and flock)', async (t) => {
      const s = await openSession(t, kind, { setup: files });
      const e = await s.fuse.lookup(ROOT, 'lockme');
      const a = await s.fuse.open(e.nodeid, F.O.RDWR);
      const b = await s.fuse.open(e.nodeid, F.O.RDWR);
      const host = hostFd(t, s.host('lockme'));

      // POSIX, held by the guest through another fh.
      await s.fuse.setlk(e.nodeid, a.fh, 1n, WR(0, 99));
      let w = track(setlkw(s, e.nodeid, b.fh, 2n, WR(50, 60, 777)));
      t.ok(await s.fuse.serving(), 'served meanwhile');
      if (kind === 'c-virtiofsd') {
        checkErrno(t, kind, (await w.p).error, 0, 'POSIX SETLKW on a held range', [EOPNOTSUPP, ENOSYS]);
        await s.fuse.setlk(e.nodeid, a.fh, 1n, WR(0, 0), true);
        w = track(setlkw(s, e.nodeid, b.fh, 2n, WR(0, 0), true));
        checkErrno(t, kind, (await w.p).error, 0, 'flock SETLKW on a flocked file', [EOPNOTSUPP, ENOSYS]);
        return;
      }
      {
        t.notOk(w.done(), 'SETLKW waits while the range is held');
        await s.fuse.setlk(e.nodeid, a.fh, 1n, UN(0, 99));
        t.equal((await w.p).error, 0, 'granted after the guest holder unlocked');
        const g = await s.fuse.getlk(e.nodeid, a.fh, 1n, WR(0, 999, 0));
        t.same([g.type, g.start, g.end, g.pid], [F.F_WRLCK, 50n, 60n, 777], 'GETLK shows it with the waiter\'s pid, as for SETLK');
        t.equal(hostLockType(host, 55, 1), F.F_WRLCK, 'the host sees the lock');
        await s.fuse.setlk(e.nodeid, b.fh, 2n, UN(0, EOF));

        // POSIX, held by a host process: seen by the retry timer.
        native.fcntlLock(host, C.F_OFD_SETLK!, C.F_WRLCK!, C.SEEK_SET!, 200, 10);
        w = track(setlkw(s, e.nodeid, b.fh, 2n, WR(205, 205)));
        t.ok(await s.fuse.serving(), 'served meanwhile');
        t.notOk(w.done(), 'SETLKW waits while a host process holds the range');
        native.fcntlLock(host, C.F_OFD_SETLK!, C.F_UNLCK!, C.SEEK_SET!, 200, 10);
        t.equal((await w.p).error, 0, 'granted after the host process unlocked');
        t.throws(() => native.fcntlLock(host, C.F_OFD_SETLK!, C.F_WRLCK!, C.SEEK_SET!, 205, 1), { code: 'EAGAIN' }, 'and held by the guest now');
        await s.fuse.setlk(e.nodeid, b.fh, 2n, UN(0, EOF));
      }

      // flock, held by the guest through another fh.
      await s.fuse.setlk(e.nodeid, a.fh, 1n, WR(0, 0), true);
      w = track(setlkw(s, e.nodeid, b.fh, 2n, WR(0, 0), true));
      t.ok(await s.fuse.serving(), 'served meanwhile');
      t.notOk(w.done(), 'flock SETLKW waits while the file is flocked');
      await s.fuse.setlk(e.nodeid, a.fh, 1n, UN(0, 0), true);
      t.equal((await w.p).error, 0, 'flock granted after the holder unlocked');
      await s.fuse.setlk(e.nodeid, a.fh, 1n, WR(0, 0), true).then(() => t.fail('flock still free'),
        (err: { errno?: number }) => t.equal(err.errno, EAGAIN, 'the old holder now meets the new one'));
      await s.fuse.setlk(e.nodeid, b.fh, 2n, UN(0, 0), true);

      // flock, held by a host process.
      native.flock(host, C.LOCK_EX!);
      w = track(setlkw(s, e.nodeid, b.fh, 2n, WR(0, 0), true));
      t.ok(await s.fuse.serving(), 'served meanwhile');
      t.notOk(w.done(), 'flock SETLKW waits while a host process holds the flock');
      native.flock(host, C.LOCK_UN!);
      t.equal((await w.p).error, 0, 'flock granted after the host process unlocked');
      t.throws(() => native.flock(host, C.LOCK_EX! | C.LOCK_NB!), { code: 'EAGAIN' }, 'and held by the guest now');
      await s.fuse.setlk(e.nodeid, b.fh, 2n, UN(0, 0), true);
      t.same(unexpectedErrors(s), []);
    });

    t.test('INTERRUPT ends a waiting SETLKW with EINTR and the lock is not taken', async (t) => {
      const s = await openSession(t, kind, { setup: files });
      const e = await s.fuse.lookup(ROOT, 'lockme');
      const a = await s.fuse.open(e.nodeid, F.O.RDWR);
      const b = await s.fuse.open(e.nodeid, F.O.RDWR);
      const c = await s.fuse.open(e.nodeid, F.O.RDWR);
      await s.fuse.setlk(e.nodeid, a.fh, 1n, WR(0, 99));
      let u = s.fuse.allocUnique();
      let w = track(setlkw(s, e.nodeid, b.fh, 2n, WR(10, 20), false, u));
      t.ok(await s.fuse.serving(), 'served meanwhile');
      if (kind === 'c-virtiofsd') {
        // Nothing waits (EOPNOTSUPP at once), so there is nothing to interrupt.
        checkErrno(t, kind, (await w.p).error, EINTR, 'POSIX SETLKW on a held range', [EOPNOTSUPP, ENOSYS]);
        return;
      }
      t.notOk(w.done(), 'SETLKW waits');
      // Like the kernel: on the hiprio queue, the INTERRUPT's own unique has bit 0 set.
      const ir = await s.fuse.interrupt(u, { queue: s.fuse.hiprioQueue });
      t.equal(ir.usedLen, 0, 'INTERRUPT itself gets no reply');
      t.equal((await w.p).error, EINTR, 'the interrupted SETLKW is answered EINTR');
      await s.fuse.setlk(e.nodeid, a.fh, 1n, UN(0, 99));
      await s.fuse.setlk(e.nodeid, c.fh, 3n, WR(10, 20));
      t.pass('the range is free for a third fh: the interrupted wait did not take it');
      await s.fuse.setlk(e.nodeid, c.fh, 3n, UN(0, EOF));

      // flock
      await s.fuse.setlk(e.nodeid, a.fh, 1n, WR(0, 0), true);
      u = s.fuse.allocUnique();
      w = track(setlkw(s, e.nodeid, b.fh, 2n, WR(0, 0), true, u));
      t.ok(await s.fuse.serving(), 'served meanwhile');
      t.notOk(w.done(), 'flock SETLKW waits');
      await s.fuse.interrupt(u, { queue: s.fuse.hiprioQueue });
      t.equal((await w.p).error, EINTR, 'the interrupted flock SETLKW is answered EINTR');
      await s.fuse.setlk(e.nodeid, a.fh, 1n, UN(0, 0), true);
      await s.fuse.setlk(e.nodeid, c.fh, 3n, WR(0, 0), true);
      t.pass('the flock is free for a third fh: the interrupted wait did not take it');
      await s.fuse.setlk(e.nodeid, c.fh, 3n, UN(0, 0), true);

      // An INTERRUPT seen before its request (they travel on different queues).
      await s.fuse.setlk(e.nodeid, a.fh, 1n, WR(0, 99));
      u = s.fuse.allocUnique();
      await s.fuse.interrupt(u, { queue: s.fuse.hiprioQueue });
      t.equal((await setlkw(s, e.nodeid, b.fh, 2n, WR(10, 20), false, u)).error, EINTR, 'a SETLKW already interrupted is answered EINTR');
      t.same(unexpectedErrors(s), []);
    });

    t.test('RELEASE of the handle and DESTROY end waiting SETLKW; nothing stays open or locked', async (t) => {
      const s = await openSession(t, kind, { setup: files });
      const e = await s.fuse.lookup(ROOT, 'lockme');
      const host = hostFd(t, s.host('lockme'));
      const a = await s.fuse.open(e.nodeid, F.O.RDWR);
      const b = await s.fuse.open(e.nodeid, F.O.RDWR);
      const c = await s.fuse.open(e.nodeid, F.O.RDWR);
      await s.fuse.setlk(e.nodeid, a.fh, 1n, WR(0, 99));
      await s.fuse.setlk(e.nodeid, a.fh, 1n, WR(0, 0), true);
      await s.fuse.setlk(e.nodeid, b.fh, 2n, WR(500, 599));
      const b1 = track(setlkw(s, e.nodeid, b.fh, 2n, WR(0, 9)));
      if (kind === 'c-virtiofsd') {
        checkErrno(t, kind, (await b1.p).error, EINTR, 'POSIX SETLKW on a held range', [EOPNOTSUPP, ENOSYS]);
        return;
      }
      const b2 = track(setlkw(s, e.nodeid, b.fh, 2n, WR(0, 0), true));
      const c1 = track(setlkw(s, e.nodeid, c.fh, 3n, WR(20, 29)));
      const c2 = track(setlkw(s, e.nodeid, c.fh, 3n, RD(0, 0), true));
      t.ok(await s.fuse.serving(), 'served meanwhile');
      t.notOk(b1.done() || b2.done() || c1.done() || c2.done(), 'all four wait');
      await s.fuse.release(e.nodeid, b.fh, F.O.RDWR, F.FUSE_RELEASE_FLOCK_UNLOCK, 2n, { timeoutMs: PROMPT_MS });
      t.equal((await b1.p).error, EINTR, 'RELEASE ends the POSIX wait on its fh (EINTR)');
      t.equal((await b2.p).error, EINTR, 'and the flock wait');
      await waitFor(() => hostLockType(host, 500, 100) === F.F_UNLCK, 'the released fh closed (its own lock gone)', PROMPT_MS);
      t.pass('the released fh was closed: its lock on 500-599 is gone');
      t.ok(await s.fuse.serving(), 'served');
      t.notOk(c1.done() || c2.done(), 'waits on another fh go on');
      const d = await s.fuse.request(F.Op.DESTROY, 0n, [], { timeoutMs: PROMPT_MS });
      t.equal(d.error, 0, 'DESTROY answered');
      t.equal((await c1.p).error, EINTR, 'DESTROY ends the remaining POSIX wait (EINTR)');
      t.equal((await c2.p).error, EINTR, 'and the flock wait');
      // Before DESTROY's reply, not once the keeper has dropped its copies of the fds.
      t.equal(hostLockType(host, 0, 0), F.F_UNLCK, 'no POSIX lock left once DESTROY is answered');
      native.flock(host, C.LOCK_EX! | C.LOCK_NB!);
      t.pass('no flock left either');
      t.same(unexpectedErrors(s), []);
    });
  });
}

const oursSelected = selectedBackends().includes('ours');

t.test('ours: beyond --max-lock-waits a SETLKW that would wait is answered ENOLCK', { skip: !oursSelected && 'ours not selected' }, async (t) => {
  const s = await openSession(t, 'ours', { extraArgs: ['--max-lock-waits', '3'], setup: files });
  const e = await s.fuse.lookup(ROOT, 'lockme');
  const a = await s.fuse.open(e.nodeid, F.O.RDWR);
  const b = await s.fuse.open(e.nodeid, F.O.RDWR);
  await s.fuse.setlk(e.nodeid, a.fh, 1n, WR(0, 99));
  const waits = [0, 1, 2].map((i) => track(setlkw(s, e.nodeid, b.fh, 2n, WR(i, i))));
  t.equal((await setlkw(s, e.nodeid, b.fh, 2n, WR(9, 9))).error, ENOLCK, 'the fourth wait is refused with ENOLCK');
  t.equal((await setlkw(s, e.nodeid, b.fh, 2n, WR(500, 500))).error, 0, 'a SETLKW that need not wait is still granted');
  t.notOk(waits.some((w) => w.done()), 'the three parked waits go on');
  await s.fuse.setlk(e.nodeid, a.fh, 1n, UN(0, EOF));
  t.same((await Promise.all(waits.map((w) => w.p))).map((r) => r.error), [0, 0, 0], 'and are granted');
  await waitFor(() => /too many parked lock waits/.test(s.backend.log()), 'the refusal logged');
  t.same(unexpectedErrors(s), []);
});

t.test('ours: a worker killed while 20 SETLKW wait: the successor parks them again; they end or get the lock', { skip: !oursSelected && 'ours not selected' }, async (t) => {
  // UNIX socket paths are limited to 108 bytes: keep the state dir (keeper.sock) short.
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', { extraArgs: ['--state-dir', stateDir], negotiate: { queueSize: 256 }, setup: files });
  const e = await s.fuse.lookup(ROOT, 'lockme');
  const d = await s.fuse.lookup(ROOT, 'data');
  const df = await s.fuse.open(d.nodeid, F.O.RDWR);
  const holder = await s.fuse.open(e.nodeid, F.O.RDWR);
  await s.fuse.setlk(e.nodeid, holder.fh, 1n, WR(0, EOF));
  const uniques: bigint[] = [];
  const waits: Array<ReturnType<typeof track>> = [];
  for (let i = 0; i < 20; i++) {
    const o = await s.fuse.open(e.nodeid, F.O.RDWR);
    uniques.push(s.fuse.allocUnique());
    waits.push(track(setlkw(s, e.nodeid, o.fh, 100n + BigInt(i), WR(i * 10, i * 10 + 9, 1000 + i), false, uniques[i])));
  }
  t.ok(await s.fuse.serving(), 'served while they wait');
  await waitFor(() => queryStatus(stateDir).fuse.lockWaits === 20, 'status shows 20 parked waits');
  const pid = queryStatus(stateDir).worker.pid!;
  process.kill(pid, 'SIGKILL');
  await waitFor(() => {
    const st = queryStatus(stateDir);
    return st.worker.pid !== null && st.worker.pid !== pid && st.worker.state === 'running';
  }, 'a new worker', 15_000);
  await waitFor(() => queryStatus(stateDir).fuse.lockWaits === 20, 'the successor parked the 20 resubmitted waits', 15_000);
  t.notOk(waits.some((w) => w.done()), 'none answered across the kill');
  t.ok((await s.fuse.read(d.nodeid, df.fh, 0, BIG, { timeoutMs: PROMPT_MS })).equals(pattern(BIG)), 'the successor answers a thread-pool READ meanwhile');
  await s.fuse.fsync(d.nodeid, df.fh, false, { timeoutMs: PROMPT_MS });
  t.pass('and FSYNC');
  await s.fuse.interrupt(uniques[0]!, { queue: s.fuse.hiprioQueue });
  t.equal((await waits[0]!.p).error, EINTR, 'INTERRUPT of a resubmitted wait ends it (EINTR)');
  await s.fuse.setlk(e.nodeid, holder.fh, 1n, UN(0, EOF));
  const replies = await Promise.all(waits.slice(1).map((w) => w.p));
  t.same(replies.map((r) => r.error), replies.map(() => 0), 'the other 19 granted once the holder unlocked');
  for (let i = 0; i < 20; i++) {
    const g = await s.fuse.getlk(e.nodeid, holder.fh, 1n, WR(i * 10, i * 10 + 9, 0));
    if (i === 0) t.equal(g.type, F.F_UNLCK, 'the interrupted waiter holds nothing');
    else if (g.type !== F.F_WRLCK || g.pid !== 1000 + i) t.fail(`range ${i}: ${JSON.stringify(g)}`);
  }
  t.pass('each granted waiter holds its range, recorded with its pid as SETLK records it');
  t.same(unexpectedErrors(s), []);
});
