// A read-only export (`run --readonly`, virtiofsd's --readonly): every request that would change
// the shared directory gets EROFS and changes nothing; reads, listings, lookups, locks and a
// read-only open work as before, also after a worker restart.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, expectErrno, waitFor } from './helpers';
import { queryStatus } from '../../cli/status';
import * as F from './fuse_proto';

const ROOT = F.FUSE_ROOT_ID;

t.test('ours --readonly: changes get EROFS, reads work', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', {
    extraArgs: ['--state-dir', stateDir, '--readonly'],
    setup: (d) => { fs.writeFileSync(path.join(d, 'f'), 'hello'); fs.mkdirSync(path.join(d, 'dir')); },
  });
  const before = (): string => JSON.stringify(fs.readdirSync(s.shared).sort().map((n) => [n, fs.lstatSync(path.join(s.shared, n)).mode, fs.lstatSync(path.join(s.shared, n)).size]));
  const snapshot = before();
  const check = async (round: string): Promise<void> => {
    const f = await s.fuse.lookup(ROOT, 'f');
    const d = await s.fuse.lookup(ROOT, 'dir');
    const E = F.Errno.EROFS;
    await expectErrno(t, 'ours', s.fuse.mkdir(ROOT, 'new'), E, `${round}: MKDIR`);
    await expectErrno(t, 'ours', s.fuse.mknod(ROOT, 'node', F.S_IFREG | 0o644), E, `${round}: MKNOD`);
    await expectErrno(t, 'ours', s.fuse.symlink(ROOT, 'sym', 'f'), E, `${round}: SYMLINK`);
    await expectErrno(t, 'ours', s.fuse.link(f.nodeid, ROOT, 'hard'), E, `${round}: LINK`);
    await expectErrno(t, 'ours', s.fuse.create(ROOT, 'c', F.O.WRONLY | F.O.CREAT), E, `${round}: CREATE`);
    await expectErrno(t, 'ours', s.fuse.tmpfile(ROOT, F.O.RDWR), E, `${round}: TMPFILE`);
    await expectErrno(t, 'ours', s.fuse.unlink(ROOT, 'f'), E, `${round}: UNLINK`);
    await expectErrno(t, 'ours', s.fuse.rmdir(ROOT, 'dir'), E, `${round}: RMDIR`);
    await expectErrno(t, 'ours', s.fuse.rename(ROOT, 'f', ROOT, 'g'), E, `${round}: RENAME`);
    await expectErrno(t, 'ours', s.fuse.setattr(f.nodeid, { valid: F.FATTR.MODE, mode: 0o600 }), E, `${round}: SETATTR mode`);
    await expectErrno(t, 'ours', s.fuse.setattr(f.nodeid, { valid: F.FATTR.SIZE, size: 0 }), E, `${round}: SETATTR size`);
    await expectErrno(t, 'ours', s.fuse.setxattr(f.nodeid, 'user.x', Buffer.from('1')), E, `${round}: SETXATTR`);
    await expectErrno(t, 'ours', s.fuse.removexattr(f.nodeid, 'user.x'), E, `${round}: REMOVEXATTR`);
    for (const [flags, what] of [[F.O.WRONLY, 'O_WRONLY'], [F.O.RDWR, 'O_RDWR'], [F.O.RDONLY | F.O.TRUNC, 'O_TRUNC']] as const) {
      await expectErrno(t, 'ours', s.fuse.open(f.nodeid, flags), E, `${round}: OPEN ${what}`);
    }
    await expectErrno(t, 'ours', s.fuse.access(f.nodeid, 2), E, `${round}: ACCESS W_OK`);
    await s.fuse.access(f.nodeid, 4);
    t.pass(`${round}: ACCESS R_OK works`);
    const o = await s.fuse.open(f.nodeid, F.O.RDONLY);
    t.equal((await s.fuse.read(f.nodeid, o.fh, 0, 100)).toString(), 'hello', `${round}: a read-only open reads`);
    await expectErrno(t, 'ours', s.fuse.write(f.nodeid, o.fh, 0, Buffer.from('x')), E, `${round}: WRITE`);
    await expectErrno(t, 'ours', s.fuse.fallocate(f.nodeid, o.fh, 0, 10), E, `${round}: FALLOCATE`);
    await s.fuse.setlk(f.nodeid, o.fh, 1n, { start: 0n, end: 9n, type: F.F_RDLCK, pid: 1 });
    t.pass(`${round}: a read lock is taken`);
    await s.fuse.release(f.nodeid, o.fh);
    const dh = await s.fuse.opendir(d.nodeid);
    t.ok(Array.isArray(await s.fuse.readdir(d.nodeid, dh.fh, 0)), `${round}: READDIR works`);
    await s.fuse.releasedir(d.nodeid, dh.fh);
    t.equal(before(), snapshot, `${round}: the shared directory is unchanged`);
  };
  await check('first worker');
  const pid = queryStatus(stateDir).worker.pid!;
  process.kill(pid, 'SIGKILL');
  await waitFor(() => { const q = queryStatus(stateDir); return q.worker.pid !== null && q.worker.pid !== pid && q.worker.state === 'running'; }, 'the successor', 20_000);
  await check('after a worker restart');
});
