// POSIX locks per FUSE lock owner, as the guest kernel drives them: one owner (a guest process)
// locking through two fds never conflicts with itself; closing any of its fds (FLUSH with its
// owner) drops all of its locks on the inode at once; GETLK names the holder's pid; and all of
// it holds across a worker kill (ours). Run against the C virtiofsd too (with -o posix_lock,
// which implements the same per-owner model).
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { selectedBackends, type BackendKind } from './backend';
import { openSession, waitFor, type Session } from './helpers';
import { queryStatus } from '../../cli/status';
import { FuseError } from './fuse_client';
import * as F from './fuse_proto';

const ROOT = F.FUSE_ROOT_ID;
const EAGAIN = 11;
const P1 = 4242, P2 = 5353;
const lock = (type: number, start: bigint, end: bigint, pid: number): F.FileLock => ({ start, end, type, pid });
const WR1 = lock(F.F_WRLCK, 0n, 99n, P1);
const WR2 = lock(F.F_WRLCK, 0n, 99n, P2);
const PROBE = lock(F.F_WRLCK, 0n, 0x7fffffffffffffffn, 0);

async function errnoOf(p: Promise<unknown>): Promise<number> {
  return p.then(() => 0, (e: FuseError) => e.errno);
}

interface Files { nodeid: bigint; a: bigint; a2: bigint; c: bigint }

async function openThree(s: Session): Promise<Files> {
  const e = await s.fuse.lookup(ROOT, 'lk');
  const [a, a2, c] = [await s.fuse.open(e.nodeid, F.O.RDWR), await s.fuse.open(e.nodeid, F.O.RDWR), await s.fuse.open(e.nodeid, F.O.RDWR)];
  return { nodeid: e.nodeid, a: a.fh, a2: a2.fh, c: c.fh };
}

async function session(t: Test, kind: BackendKind): Promise<{ s: Session; stateDir: string }> {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, kind, {
    ...(kind === 'ours' ? { extraArgs: ['--state-dir', stateDir] } : {}),
    setup: (d) => fs.writeFileSync(path.join(d, 'lk'), 'x'.repeat(200)),
  });
  return { s, stateDir };
}

async function killWorker(stateDir: string): Promise<void> {
  const pid = queryStatus(stateDir).worker.pid!;
  process.kill(pid, 'SIGKILL');
  await waitFor(() => { const q = queryStatus(stateDir); return q.worker.pid !== null && q.worker.pid !== pid && q.worker.state === 'running'; },
    'the successor', 20_000);
}

for (const kind of selectedBackends()) {
  t.test(`${kind}: one owner through two fds, a second owner, FLUSH drops the owner's locks`, async (t) => {
    const { s } = await session(t, kind);
    const f = await openThree(s);
    await s.fuse.setlk(f.nodeid, f.a, 1n, WR1);
    await s.fuse.setlk(f.nodeid, f.a2, 1n, lock(F.F_WRLCK, 50n, 149n, P1));
    t.pass('owner 1 locks overlapping ranges through two fds without conflict');
    t.equal(await errnoOf(s.fuse.setlk(f.nodeid, f.c, 2n, lock(F.F_RDLCK, 140n, 140n, P2))), EAGAIN, 'owner 2 conflicts');
    const seen = await s.fuse.getlk(f.nodeid, f.c, 2n, PROBE);
    t.equal(seen.type, F.F_WRLCK, 'GETLK by owner 2 sees the write lock');
    t.equal(seen.start, 0n, 'from 0');
    t.equal(seen.end, 149n, 'to 149: one owner\'s ranges merge');
    if (kind === 'ours') t.equal(seen.pid, P1, 'GETLK names the holder\'s guest pid');
    else t.comment(`C virtiofsd reports pid ${seen.pid}`);
    t.equal((await s.fuse.getlk(f.nodeid, f.a, 1n, PROBE)).type, F.F_UNLCK, 'owner 1 sees no conflict with itself');

    // The guest process closes one of its two fds: every lock it holds on the file goes.
    await s.fuse.flush(f.nodeid, f.a2, 1n);
    await s.fuse.release(f.nodeid, f.a2, F.O.RDWR, 0, 1n);
    t.equal((await s.fuse.getlk(f.nodeid, f.c, 2n, PROBE)).type, F.F_UNLCK, 'GETLK right after the close sees no lock');
    await s.fuse.setlk(f.nodeid, f.c, 2n, lock(F.F_WRLCK, 0n, 0x7fffffffffffffffn, P2));
    t.pass('a second owner gets the whole file at once');
    t.equal(await errnoOf(s.fuse.setlk(f.nodeid, f.a, 1n, WR1)), EAGAIN, 'owner 1 now conflicts with owner 2');
    await s.fuse.flush(f.nodeid, f.a, 3n);
    t.equal(await errnoOf(s.fuse.setlk(f.nodeid, f.a, 1n, WR1)), EAGAIN, 'a FLUSH by an owner without locks drops nothing');
  });

  t.test(`${kind}: a blocked SETLKW of another owner is granted when the holder closes any of its fds`, async (t) => {
    const { s } = await session(t, kind);
    const f = await openThree(s);
    await s.fuse.setlk(f.nodeid, f.a, 1n, WR1);
    const w = s.fuse.setlkw(f.nodeid, f.c, 2n, WR2, false, { timeoutMs: 10_000 }).then(() => 0, (e: FuseError) => e.errno);
    const state = await Promise.race([w, new Promise<string>((r) => setImmediate(() => r('pending')))]);
    if (kind === 'c-virtiofsd') {
      // The C virtiofsd refuses SETLKW that would wait (EOPNOTSUPP): recorded, not required.
      t.comment(`C virtiofsd: SETLKW on a held range answered ${String(await w)}`);
      return;
    }
    t.equal(state, 'pending', 'SETLKW waits');
    await s.fuse.flush(f.nodeid, f.a2, 1n); // owner 1 closes an fd it never locked through
    t.equal(await w, 0, 'granted after the holder closed another of its fds');
  });

  if (kind !== 'ours') continue;

  t.test('ours: owner locks survive a worker kill, released ones stay released, GETLK pid after restart', async (t) => {
    const { s, stateDir } = await session(t, kind);
    const f = await openThree(s);
    await s.fuse.setlk(f.nodeid, f.a, 1n, WR1);
    await s.fuse.setlk(f.nodeid, f.c, 2n, lock(F.F_RDLCK, 150n, 199n, P2));
    await s.fuse.setlk(f.nodeid, f.c, 2n, lock(F.F_UNLCK, 150n, 199n, 0));
    t.equal(queryStatus(stateDir).fdNames.plock, 2, 'the keeper holds one description per owner');
    await waitFor(() => queryStatus(stateDir).fuse.lockOwners === 2, 'status counts 2 lock owners', 10_000);
    await killWorker(stateDir);

    t.equal(await errnoOf(s.fuse.setlk(f.nodeid, f.c, 2n, lock(F.F_RDLCK, 99n, 99n, P2))), EAGAIN, 'owner 1\'s lock is held after the kill');
    const seen = await s.fuse.getlk(f.nodeid, f.c, 2n, PROBE);
    t.same([seen.type, seen.start, seen.end, seen.pid], [F.F_WRLCK, 0n, 99n, P1], 'GETLK after the restart: range and pid');
    await s.fuse.setlk(f.nodeid, f.c, 3n, lock(F.F_WRLCK, 150n, 199n, P2 + 1));
    t.pass('the range released before the kill stayed released');
    await s.fuse.setlk(f.nodeid, f.a2, 1n, WR1);
    t.pass('owner 1 relocks through another fd after the restart');
    await s.fuse.flush(f.nodeid, f.a2, 1n);
    await s.fuse.setlk(f.nodeid, f.c, 2n, WR2);
    t.pass('FLUSH after the restart drops owner 1\'s locks');

    for (const fh of [f.a, f.a2, f.c]) await s.fuse.release(f.nodeid, fh, F.O.RDWR, 0, 0n);
    await waitFor(() => (queryStatus(stateDir).fdNames.plock ?? 0) === 0, 'the keeper holds no lock owner fd', 10_000);
    await waitFor(() => queryStatus(stateDir).fuse.openFiles === 0, 'no open file left', 10_000);
    t.pass('every fh and lock owner is gone from the keeper');
  });

  t.test('ours: an owner created by a parked SETLKW is durable at once: a lock it then takes elsewhere survives a kill', async (t) => {
    const { s, stateDir } = await session(t, kind);
    const f = await openThree(s);
    await s.fuse.setlk(f.nodeid, f.c, 2n, WR2);
    // Owner 1's first request on the file parks; before it is answered, owner 1 locks another
    // range through another fd and is answered. Then the worker dies.
    const parked = s.fuse.setlkw(f.nodeid, f.a, 1n, WR1, false, { timeoutMs: 20_000 }).then(() => 0, (e: FuseError) => e.errno);
    await waitFor(() => queryStatus(stateDir).fuse.lockWaits === 1, 'the SETLKW is parked', 10_000);
    await s.fuse.setlk(f.nodeid, f.a2, 1n, lock(F.F_WRLCK, 150n, 159n, P1));
    await killWorker(stateDir);
    t.equal(await errnoOf(s.fuse.setlk(f.nodeid, f.c, 3n, lock(F.F_WRLCK, 155n, 155n, P2))), EAGAIN,
      'the answered lock of owner 1 is held after the kill');
    await s.fuse.flush(f.nodeid, f.c, 2n);
    t.equal(await parked, 0, 'the resubmitted SETLKW is granted once owner 2 closes');
    t.equal(await errnoOf(s.fuse.setlk(f.nodeid, f.c, 3n, lock(F.F_RDLCK, 0n, 0n, P2))), EAGAIN, 'owner 1 holds 0..99 now');
  });

  t.test('ours: 200 rounds of lock, kill-free close and relock by another owner; then with a kill between lock and close', async (t) => {
    const { s, stateDir } = await session(t, kind);
    const e = await s.fuse.lookup(ROOT, 'lk');
    const probe = await s.fuse.open(e.nodeid, F.O.RDWR);
    const round = async (i: number, kill: boolean): Promise<string | null> => {
      const x = await s.fuse.open(e.nodeid, F.O.RDWR);
      const y = await s.fuse.open(e.nodeid, F.O.RDWR);
      const owner = BigInt(100 + i);
      await s.fuse.setlk(e.nodeid, x.fh, owner, WR1);
      await s.fuse.setlk(e.nodeid, y.fh, owner, WR1);
      if (kill) await killWorker(stateDir);
      await s.fuse.flush(e.nodeid, y.fh, owner);
      await s.fuse.release(e.nodeid, y.fh, F.O.RDWR, 0, owner);
      const seen = await s.fuse.getlk(e.nodeid, probe.fh, 1n, PROBE);
      if (seen.type !== F.F_UNLCK) return `GETLK after close: l_type ${seen.type}`;
      try {
        await s.fuse.setlk(e.nodeid, probe.fh, 1n, WR2);
      } catch (err) {
        return `SETLK after close: ${(err as Error).message}`;
      }
      await s.fuse.setlk(e.nodeid, probe.fh, 1n, lock(F.F_UNLCK, 0n, 99n, 0));
      await s.fuse.flush(e.nodeid, x.fh, owner);
      await s.fuse.release(e.nodeid, x.fh, F.O.RDWR, 0, owner);
      return null;
    };
    const failures: string[] = [];
    for (let i = 0; i < 200; i++) {
      const f = await round(i, false);
      if (f !== null) failures.push(`round ${i}: ${f}`);
    }
    t.same(failures.slice(0, 5), [], `no round saw the closed owner's lock (${failures.length} of 200 did)`);
    const killed: string[] = [];
    for (let i = 0; i < 5; i++) {
      const f = await round(1000 + i, true);
      if (f !== null) killed.push(`round ${i}: ${f}`);
    }
    t.same(killed, [], 'with a worker kill between the lock and the close, too');
    await waitFor(() => (queryStatus(stateDir).fdNames.plock ?? 0) === 1, 'only the probe owner\'s description is left', 10_000);
  });
}
