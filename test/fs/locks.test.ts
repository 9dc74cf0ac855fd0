// POSIX (OFD) and flock locks between two fh of one file.
import t from 'tap';
import * as K from '../../worker/fs/host_constants';
import { encodeLkOut } from '../../worker/fuse/encode';
import { ROOT, b, ctx, rejectsErrno, setup, sleep, throwsErrno } from './fixtures/helpers';

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
