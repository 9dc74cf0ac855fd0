// POSIX locks per lock owner and flock locks per fh, and lock owners across a restart.
import t from 'tap';
import * as K from '../../worker/fs/host_constants';
import { encodeLkOut } from '../../worker/fuse/encode';
import { ROOT, b, ctx, rejectsErrno, setup, silent, sleep, throwsErrno } from './fixtures/helpers';
import { native } from '../../shared/native';
import { PassthroughFs } from '../../worker/fs/passthrough';
import { FsSession, FsSessionError, type FsMutation } from '../../worker/fs/session';
import { MAX_MUTATION_SIZE, decodePayload, putStandaloneMutation } from '../../worker/state/records';

const EAGAIN = 11;
const lk = (type: number, start: number, end: number) => ({ type, start, end, pid: 4242 });

t.test('POSIX locks conflict between two fh', async (t) => {
  const { fs: pfs } = setup(t, { f: 'x'.repeat(1000) });
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const a = pfs.open(ctx, f.nodeid, K.O_RDWR).fh;
  const c = pfs.open(ctx, f.nodeid, K.O_RDWR).fh;

  pfs.setlk(ctx, f.nodeid, a, 1n, { ...lk(K.F_WRLCK, 0, 99), pid: 4242 }, false, false);
  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 50, 60), false, false), EAGAIN, 'write/write overlap');
  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_RDLCK, 99, 99), false, false), EAGAIN, 'read/write overlap');
  pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_RDLCK, 100, 199), false, false);
  t.pass('disjoint range ok');

  const g = pfs.getlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 0, K.OFFSET_MAX));
  t.equal(g.type, K.F_WRLCK, 'getlk sees the conflicting lock');
  t.equal(g.start, 0);
  t.equal(g.end, 99);
  t.equal(g.pid, 4242, 'GETLK reports the guest pid that took the conflicting lock');
  const free = pfs.getlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 300, 400));
  t.equal(free.type, K.F_UNLCK, 'no conflict → F_UNLCK');
  const own = pfs.getlk(ctx, f.nodeid, a, 1n, lk(K.F_WRLCK, 0, 50));
  t.equal(own.type, K.F_UNLCK, 'own locks do not conflict');

  // a lock to EOF (end OFFSET_MAX) conflicts far away
  pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_WRLCK, 1000, K.OFFSET_MAX), false, false);
  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 1e12, 1e12), false, false), EAGAIN, 'to-EOF lock');
  const far = pfs.getlk(ctx, f.nodeid, c, 2n, lk(K.F_RDLCK, 5000, 6000));
  t.equal(far.end, K.OFFSET_MAX, 'to-EOF reported as OFFSET_MAX');
  t.equal(encodeLkOut(far).readBigUInt64LE(8), 0x7fffffffffffffffn, 'encodes to the kernel OFFSET_MAX');
  t.equal(encodeLkOut({ ...far, end: 99 }).readBigUInt64LE(8), 99n);
  // the FUSE server's "to EOF" (Number.MAX_SAFE_INTEGER) is to EOF here too
  pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_UNLCK, 0, Number.MAX_SAFE_INTEGER), false, false);
  pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_UNLCK, 0, Number.MAX_SAFE_INTEGER), false, false);
  pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_RDLCK, 10, Number.MAX_SAFE_INTEGER), false, false);
  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 2 ** 52, 2 ** 52 + 8), false, false), EAGAIN,
    'MAX_SAFE_INTEGER end locks to EOF');
  t.equal(pfs.getlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 0, Number.MAX_SAFE_INTEGER)).end, K.OFFSET_MAX);
  pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_UNLCK, 0, K.OFFSET_MAX), false, false);
  pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_WRLCK, 0, 99), false, false);
  pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_RDLCK, 100, 199), false, false);

  pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_UNLCK, 0, K.OFFSET_MAX), false, false);
  pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 50, 60), false, false);
  t.pass('after unlock the other fh gets it');

  // sleeping lock: waits until the holder releases its fh
  let done = false;
  const p = (pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_WRLCK, 55, 55), true, false) as Promise<void>).then(() => { done = true; });
  await sleep(100);
  t.equal(done, false, 'SETLKW waits');
  pfs.release(ctx, f.nodeid, c, 0, 0, 2n);
  await p;
  t.equal(done, true, 'granted after the holder released');

  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_WRLCK, 10, 5), false, false), K.EINVAL, 'end < start');
  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, a, 1n, lk(7, 0, 5), false, false), K.EINVAL, 'bad type');
  throwsErrno(t, () => pfs.getlk(ctx, f.nodeid, 999, 1n, lk(K.F_WRLCK, 0, 5)), K.EBADF, 'bad fh');
  pfs.release(ctx, f.nodeid, a, 0, 0, 1n);
});

t.test('flock locks conflict between two fh; FLOCK_UNLOCK at release', async (t) => {
  const { fs: pfs } = setup(t, { f: '' });
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const a = pfs.open(ctx, f.nodeid, K.O_RDONLY).fh;
  const c = pfs.open(ctx, f.nodeid, K.O_RDONLY).fh;
  const whole = lk(K.F_WRLCK, 0, K.OFFSET_MAX);
  pfs.setlk(ctx, f.nodeid, a, 1n, whole, false, true);
  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, c, 2n, whole, false, true), EAGAIN, 'exclusive flock conflicts');
  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, c, 2n, { ...whole, type: K.F_RDLCK }, false, true), EAGAIN, 'shared too');
  pfs.setlk(ctx, f.nodeid, c, 2n, { ...whole, type: K.F_RDLCK }, false, false);
  t.pass('POSIX locks are independent of flock locks');
  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 0, 1), false, false), K.EBADF, 'POSIX write lock needs a writable fh');
  pfs.setlk(ctx, f.nodeid, c, 2n, { ...whole, type: K.F_UNLCK }, false, false);

  let done = false;
  const p = (pfs.setlk(ctx, f.nodeid, c, 2n, whole, true, true) as Promise<void>).then(() => { done = true; });
  await sleep(100);
  t.equal(done, false, 'blocking flock waits');
  pfs.setlk(ctx, f.nodeid, a, 1n, { ...whole, type: K.F_UNLCK }, false, true);
  await p;
  t.equal(done, true, 'granted after LOCK_UN');

  // c holds it now; release c with FUSE_RELEASE_FLOCK_UNLOCK → a can lock
  pfs.release(ctx, f.nodeid, c, 0, K.FUSE_RELEASE_FLOCK_UNLOCK, 2n);
  pfs.setlk(ctx, f.nodeid, a, 1n, { ...whole, type: K.F_RDLCK }, false, true);
  t.pass('shared flock after the holder released');
  await rejectsErrno(t, (async () => pfs.setlk(ctx, f.nodeid, c, 2n, whole, true, true))(), K.EBADF, 'released fh');
  pfs.release(ctx, f.nodeid, a, 0, K.FUSE_RELEASE_FLOCK_UNLOCK, 1n);
});

// ---------------------------------------------------------------- POSIX semantics per lock owner

t.test('POSIX locks belong to the lock owner: one owner through two fh never conflicts with itself', async (t) => {
  const { fs: pfs, registry } = setup(t, { f: 'x'.repeat(100) });
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const a = pfs.open(ctx, f.nodeid, K.O_RDWR).fh;
  const a2 = pfs.open(ctx, f.nodeid, K.O_RDWR).fh;
  const c = pfs.open(ctx, f.nodeid, K.O_RDWR).fh;
  pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_WRLCK, 0, 99), false, false);
  pfs.setlk(ctx, f.nodeid, a2, 1n, lk(K.F_WRLCK, 50, 149), false, false);
  t.pass('owner 1 locks overlapping ranges through two fh');
  t.equal(pfs.getlk(ctx, f.nodeid, a2, 1n, lk(K.F_WRLCK, 0, K.OFFSET_MAX)).type, K.F_UNLCK, 'GETLK by the owner: its own locks are no conflict');
  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_RDLCK, 120, 120), false, false), EAGAIN, 'owner 2 conflicts with the merged range');
  const g = pfs.getlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 0, K.OFFSET_MAX));
  t.same([g.type, g.start, g.end, g.pid], [K.F_WRLCK, 0, 149, 4242], 'GETLK: the merged range and its holder\'s pid');
  t.equal([...registry.entries()].filter(([n]) => n.startsWith('plock.')).length, 2,
    'one open file description per (inode, owner), owner 1 through two fh and owner 2 whose attempt failed');

  // The guest closes one of owner 1's fds: FLUSH with its owner drops all of its locks at once.
  pfs.flush(ctx, f.nodeid, a2, 1n);
  pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 0, K.OFFSET_MAX), false, false);
  t.pass('after FLUSH of either fd, another owner gets the whole file at once');
  t.equal([...registry.entries()].filter(([n]) => n.startsWith('plock.')).length, 1, 'owner 1\'s description is closed, owner 2 has one');
  pfs.flush(ctx, f.nodeid, c, 3n);
  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_RDLCK, 0, 0), false, false), EAGAIN, 'a FLUSH by another owner drops nothing');
  for (const fh of [a, a2, c]) pfs.release(ctx, f.nodeid, fh, 0, 0, 0n);
  t.equal([...registry.entries()].filter(([n]) => n.startsWith('plock.')).length, 0, 'RELEASE of the fh an owner first locked through ends it');
  t.equal(pfs.session.lockOwnerCount, 0);
});

t.test('unlock of part of a range, and an unlock by an owner that holds nothing', async (t) => {
  const { fs: pfs } = setup(t, { f: 'x' });
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const a = pfs.open(ctx, f.nodeid, K.O_RDWR).fh;
  const c = pfs.open(ctx, f.nodeid, K.O_RDWR).fh;
  pfs.setlk(ctx, f.nodeid, c, 9n, lk(K.F_UNLCK, 0, K.OFFSET_MAX), false, false);
  t.equal(pfs.session.lockOwnerCount, 0, 'an unlock creates no owner');
  pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_WRLCK, 0, 99), false, false);
  pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_UNLCK, 40, 59), false, false);
  pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 40, 59), false, false);
  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 39, 39), false, false), EAGAIN, 'the rest stays locked');
  const g = pfs.getlk(ctx, f.nodeid, c, 2n, lk(K.F_WRLCK, 60, 200));
  t.same([g.start, g.end, g.pid], [60, 99, 4242], 'the split range');
  pfs.release(ctx, f.nodeid, a, 0, 0, 0n);
  pfs.release(ctx, f.nodeid, c, 0, 0, 0n);
});

t.test('a lock taken by a host process conflicts, and GETLK reports pid 0 for it', async (t) => {
  const { fs: pfs, share } = setup(t, { f: 'x' });
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const a = pfs.open(ctx, f.nodeid, K.O_RDWR).fh;
  const host = native.openat(K.AT_FDCWD, `${share}/f`, K.O_RDWR | K.O_CLOEXEC, 0);
  t.teardown(() => native.close(host));
  native.fcntlLock(host, K.F_OFD_SETLK, K.F_WRLCK, K.SEEK_SET, 0, 10);
  throwsErrno(t, () => pfs.setlk(ctx, f.nodeid, a, 1n, lk(K.F_WRLCK, 5, 5), false, false), EAGAIN, 'host lock conflicts');
  const g = pfs.getlk(ctx, f.nodeid, a, 1n, lk(K.F_WRLCK, 0, 100));
  t.same([g.type, g.start, g.end, g.pid], [K.F_WRLCK, 0, 9, 0], 'held by the host: pid 0');
  const r = native.fcntlLock(host, K.F_OFD_GETLK, K.F_WRLCK, K.SEEK_SET, 0, 0);
  t.equal(r?.type ?? K.F_UNLCK, K.F_UNLCK, 'no guest lock is held (the failed attempt left none)');
  pfs.release(ctx, f.nodeid, a, 0, 0, 0n);
});

t.test('a lock owner survives a restart with its locks and pid; a stray one is unlocked', async (t) => {
  const { fs: pfs, registry } = setup(t, { f: 'x'.repeat(10) });
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const a = pfs.open(ctx, f.nodeid, K.O_RDWR).fh;
  const c = pfs.open(ctx, f.nodeid, K.O_RDWR).fh;
  pfs.setlk(ctx, f.nodeid, a, 1n, { ...lk(K.F_WRLCK, 0, 9), pid: 777 }, false, false);
  const before = JSON.parse(JSON.stringify(pfs.session.toSnapshot()));
  // Owner 2's lock is taken, but the "worker dies" before its session record is durable.
  pfs.setlk(ctx, f.nodeid, c, 2n, { ...lk(K.F_RDLCK, 100, 109), pid: 888 }, false, false);

  // The successor: same fds (the keeper's), the session as journaled before owner 2.
  const pfs2 = new PassthroughFs({ registry, logger: silent, session: FsSession.fromSnapshot(before) });
  pfs2.init(0n);
  t.equal(pfs2.session.lockOwnerCount, 1, 'owner 1 restored');
  throwsErrno(t, () => pfs2.setlk(ctx, f.nodeid, c, 3n, lk(K.F_RDLCK, 5, 5), false, false), EAGAIN, 'owner 1 still holds its lock');
  const g = pfs2.getlk(ctx, f.nodeid, c, 3n, lk(K.F_WRLCK, 0, K.OFFSET_MAX));
  t.same([g.start, g.end, g.pid], [0, 9, 777], 'GETLK after the restart reports the holder\'s pid');
  pfs2.setlk(ctx, f.nodeid, c, 3n, lk(K.F_WRLCK, 100, 109), false, false);
  t.pass('owner 2\'s unrecorded lock was dropped with its stray description');
  t.equal([...registry.entries()].filter(([n]) => n.startsWith('plock.')).length, 2, 'owners 1 and 3, no stray');
  pfs2.setlk(ctx, f.nodeid, a, 1n, lk(K.F_WRLCK, 0, 9), false, false);
  t.pass('owner 1 relocks its own range through its restored description');
  pfs2.destroy();
  t.equal([...registry.entries()].filter(([n]) => n.startsWith('plock.')).length, 0, 'DESTROY closes every owner');
});

t.test('lock owners in snapshots and the journal round-trip; bad ones are refused', async (t) => {
  const { fs: pfs } = setup(t, { f: 'x' });
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const a = pfs.open(ctx, f.nodeid, K.O_RDWR).fh;
  pfs.setlk(ctx, f.nodeid, a, 0xfedcba9876543210n, lk(K.F_WRLCK, 0, 0), false, false);
  const snap = JSON.parse(JSON.stringify(pfs.session.toSnapshot()));
  t.same(snap.lockOwners, [{ id: a + 1, fdName: `plock.${a + 1}`, nodeid: f.nodeid, fh: a, owner: '18364758544493064720', pid: 4242 }]);
  const back = FsSession.fromSnapshot(snap);
  t.equal(back.findLockOwner(f.nodeid, 0xfedcba9876543210n)?.pid, 4242, 'found by (nodeid, owner)');
  const compact = FsSession.fromSnapshot(pfs.session.toCompactSnapshot());
  t.equal(compact.lockOwnerCount, 1, 'compact snapshot too');
  const { lockOwners: _drop, ...older } = snap;
  t.equal(FsSession.fromSnapshot(older).lockOwnerCount, 0, 'a snapshot from before lock owners loads with none');
  const bad = (patch: Record<string, unknown>) => ({ ...snap, lockOwners: [{ ...snap.lockOwners[0], ...patch }] });
  t.throws(() => FsSession.fromSnapshot(bad({ fdName: 'plock.1' })), FsSessionError, 'wrong fd name');
  t.throws(() => FsSession.fromSnapshot(bad({ id: snap.nextFh })), FsSessionError, 'id beyond the counter');
  t.throws(() => FsSession.fromSnapshot(bad({ id: a, fdName: `plock.${a}` })), FsSessionError, 'id shared with a file');
  t.throws(() => FsSession.fromSnapshot(bad({ owner: '-1' })), FsSessionError, 'owner not a u64');
  t.throws(() => FsSession.fromSnapshot(bad({ pid: 2 ** 33 })), FsSessionError, 'pid not a u32');
  t.throws(() => FsSession.fromSnapshot({ ...snap, lockOwners: [snap.lockOwners[0], { ...snap.lockOwners[0], id: snap.nextFh - 1 }] }), FsSessionError);

  // The journal's binary mutation records.
  for (const m of [
    { op: 'openLockOwner', id: 12, nodeid: 7, fh: 11, owner: 0xffffffffffffffffn, pid: 4_000_000_000 },
    { op: 'closeLockOwner', id: 12 },
  ] as FsMutation[]) {
    const buf = Buffer.alloc(1 + MAX_MUTATION_SIZE);
    const end = putStandaloneMutation(buf, 0, m);
    const d = decodePayload(buf.subarray(0, end));
    t.same(d, { t: 'mutation', m }, `${m.op} round-trips`);
  }
  const s = new FsSession({ dev: 1n, ino: 2n });
  t.throws(() => s.apply({ op: 'openLockOwner', id: 2, nodeid: 99, fh: 1, owner: 1n, pid: 1 }), FsSessionError, 'unknown nodeid');
  t.throws(() => s.apply({ op: 'closeLockOwner', id: 5 }), FsSessionError, 'unknown owner');
  pfs.release(ctx, f.nodeid, a, 0, 0, 0n);
});
