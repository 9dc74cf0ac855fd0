// Extended attributes and locks (OFD/POSIX via GETLK/SETLK/SETLKW, flock via FUSE_LK_FLOCK).
import t from 'tap';
import * as fs from 'node:fs';
import { native } from '../../shared/native';
import { selectedBackends } from './backend';
import { openSession, unexpectedErrors, expectErrno, checkErrno } from './helpers';
import * as F from './fuse_proto';

const ROOT = F.FUSE_ROOT_ID;
const { ENODATA, ERANGE, EEXIST, EAGAIN, EOPNOTSUPP, ENOSYS } = F.Errno;

function hostGetxattr(file: string, name: string): Buffer | null {
  try {
    const n = native.getxattr(file, name, null);
    const b = Buffer.alloc(n);
    const m = native.getxattr(file, name, b);
    return b.subarray(0, m);
  } catch (e) {
    if ((e as { code?: string }).code === 'ENODATA') return null;
    throw e;
  }
}

const WR = (start: number, end: number, pid = process.pid): F.FileLock => ({ start: BigInt(start), end: BigInt(end), type: F.F_WRLCK, pid });
const UN = (start: number, end: number): F.FileLock => ({ start: BigInt(start), end: BigInt(end), type: F.F_UNLCK, pid: 0 });

for (const kind of selectedBackends()) {
  t.test(kind, async (t) => {
    t.test('xattrs: set, get, list, remove, flags and size probing', async (t) => {
      const s = await openSession(t, kind, { setup: (sh) => fs.writeFileSync(`${sh}/f`, 'x') });
      const e = await s.fuse.lookup(ROOT, 'f');
      const value = Buffer.from('a value with \0 a NUL inside');
      await s.fuse.setxattr(e.nodeid, 'user.test', value);
      t.same(hostGetxattr(s.host('f'), 'user.test'), value, 'host sees the xattr');
      t.equal(await s.fuse.getxattr(e.nodeid, 'user.test', 0), value.length, 'size probe');
      t.same(await s.fuse.getxattr(e.nodeid, 'user.test', 256), value, 'value');
      await expectErrno(t, kind, s.fuse.getxattr(e.nodeid, 'user.test', 3), ERANGE, 'buffer too small');
      await expectErrno(t, kind, s.fuse.getxattr(e.nodeid, 'user.missing', 256), ENODATA, 'missing xattr');
      await s.fuse.setxattr(e.nodeid, 'user.second', Buffer.from('2'));
      const listSize = await s.fuse.listxattr(e.nodeid, 0) as number;
      t.ok(listSize >= 'user.test\0user.second\0'.length, `list size ${listSize}`);
      const names = await s.fuse.listxattr(e.nodeid, 4096) as string[];
      t.ok(names.includes('user.test') && names.includes('user.second'), `listed ${names.join(',')}`);
      await expectErrno(t, kind, s.fuse.listxattr(e.nodeid, 5), ERANGE, 'list buffer too small');
      await expectErrno(t, kind, s.fuse.setxattr(e.nodeid, 'user.test', Buffer.from('new'), F.XATTR_CREATE), EEXIST, 'XATTR_CREATE on an existing name');
      await expectErrno(t, kind, s.fuse.setxattr(e.nodeid, 'user.nothere', Buffer.from('v'), F.XATTR_REPLACE), ENODATA, 'XATTR_REPLACE on a missing name');
      await s.fuse.setxattr(e.nodeid, 'user.test', Buffer.from('replaced'), F.XATTR_REPLACE);
      t.same(hostGetxattr(s.host('f'), 'user.test'), Buffer.from('replaced'), 'XATTR_REPLACE replaced');
      await s.fuse.setxattr(e.nodeid, 'user.empty', Buffer.alloc(0));
      t.same(hostGetxattr(s.host('f'), 'user.empty'), Buffer.alloc(0), 'empty value');
      await s.fuse.removexattr(e.nodeid, 'user.test');
      t.equal(hostGetxattr(s.host('f'), 'user.test'), null, 'removed on the host');
      await expectErrno(t, kind, s.fuse.removexattr(e.nodeid, 'user.test'), ENODATA, 'remove twice');
      // On a directory, too.
      await s.fuse.setxattr(ROOT, 'user.dir', Buffer.from('d'));
      t.same(hostGetxattr(s.shared, 'user.dir'), Buffer.from('d'), 'xattr on the root dir');
      t.same(unexpectedErrors(s), []);
    });

    t.test('POSIX/OFD locks: conflicts between two opens, GETLK shows the holder', async (t) => {
      const s = await openSession(t, kind, { setup: (sh) => fs.writeFileSync(`${sh}/lockme`, Buffer.alloc(1000)) });
      const e = await s.fuse.lookup(ROOT, 'lockme');
      const a = await s.fuse.open(e.nodeid, F.O.RDWR);
      const b = await s.fuse.open(e.nodeid, F.O.RDWR);
      const ownerA = 0x1111n;
      const ownerB = 0x2222n;
      // Like the kernel: GETLK carries pid 0, SETLK/SETLKW the caller's tgid (0 for unlocks).
      let g = await s.fuse.getlk(e.nodeid, a.fh, ownerA, WR(0, 99, 0));
      t.equal(g.type, F.F_UNLCK, 'no lock yet');
      await s.fuse.setlk(e.nodeid, a.fh, ownerA, WR(0, 99, 100));
      g = await s.fuse.getlk(e.nodeid, b.fh, ownerB, WR(50, 60, 0));
      t.equal(g.type, F.F_WRLCK, 'GETLK from the other open reports a write lock');
      t.equal(g.start, 0n, 'conflict start');
      t.equal(g.end, 99n, 'conflict end');
      g = await s.fuse.getlk(e.nodeid, b.fh, ownerB, WR(100, 200, 0));
      t.equal(g.type, F.F_UNLCK, 'a disjoint range does not conflict');
      await expectErrno(t, kind, s.fuse.setlk(e.nodeid, b.fh, ownerB, WR(50, 60, 200)), EAGAIN, 'SETLK on a held range');
      await s.fuse.setlk(e.nodeid, b.fh, ownerB, WR(100, 200, 200));
      t.pass('SETLK on a disjoint range');
      await s.fuse.setlk(e.nodeid, a.fh, ownerA, UN(0, 99));
      await s.fuse.setlk(e.nodeid, b.fh, ownerB, WR(50, 60, 200));
      t.pass('after the unlock the other open gets the lock');
      g = await s.fuse.getlk(e.nodeid, a.fh, ownerA, { start: 0n, end: 999n, type: F.F_RDLCK, pid: 0 });
      t.equal(g.type, F.F_WRLCK, 'the first open now sees the second one\'s lock');
      // SETLKW: blocks until the holder releases (ours); the C virtiofsd refuses to sleep.
      const w = s.fuse.request(F.Op.SETLKW, e.nodeid, [F.lkIn(a.fh, ownerA, WR(55, 56, 100))]);
      if (kind === 'c-virtiofsd') {
        const r = await w;
        checkErrno(t, kind, r.error, 0, 'SETLKW on a held range', [EOPNOTSUPP, ENOSYS]);
      } else {
        let done = false;
        void w.then(() => { done = true; });
        // The waiter must not hold up the queue: other requests are answered meanwhile.
        t.ok(await s.fuse.serving(), 'requests are served while a SETLKW waits');
        t.notOk(done, 'SETLKW still waiting while the range is held');
        await s.fuse.setlk(e.nodeid, b.fh, ownerB, UN(0, 999));
        const r = await w;
        t.equal(r.error, 0, 'SETLKW granted after the holder unlocked');
        g = await s.fuse.getlk(e.nodeid, b.fh, ownerB, WR(55, 56, 0));
        t.equal(g.type, F.F_WRLCK, 'and now the other open sees it');
      }
      // flock (FUSE_LK_FLOCK)
      await s.fuse.setlk(e.nodeid, a.fh, ownerA, WR(0, 0), true);
      await expectErrno(t, kind, s.fuse.setlk(e.nodeid, b.fh, ownerB, WR(0, 0), true), EAGAIN, 'flock LOCK_EX|LOCK_NB on a held file');
      await s.fuse.setlk(e.nodeid, a.fh, ownerA, UN(0, 0), true);
      await s.fuse.setlk(e.nodeid, b.fh, ownerB, WR(0, 0), true);
      t.pass('flock taken after the holder dropped it');
      // close(2) as the kernel does it: FLUSH with the lock owner, a whole-file POSIX unlock
      // (locks_remove_posix), then RELEASE with FLOCK_UNLOCK.
      for (const [fh, owner] of [[a.fh, ownerA], [b.fh, ownerB]] as const) {
        await s.fuse.flush(e.nodeid, fh, owner);
        await s.fuse.setlk(e.nodeid, fh, owner, { start: 0n, end: 0x7fff_ffff_ffff_ffffn, type: F.F_UNLCK, pid: 0 });
        await s.fuse.release(e.nodeid, fh, F.O.RDWR, F.FUSE_RELEASE_FLOCK_UNLOCK, owner);
      }
      const c = await s.fuse.open(e.nodeid, F.O.RDWR);
      await s.fuse.setlk(e.nodeid, c.fh, 0x3333n, WR(0, 999));
      t.pass('every lock gone once both opens are released');
      await s.fuse.release(e.nodeid, c.fh, F.O.RDWR);
      t.same(unexpectedErrors(s), []);
    });
  });
}
