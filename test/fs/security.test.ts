// The guest must not reach anything outside the shared directory: no '..' escapes, no symlink
// escapes, no /proc magic links, no opening of device nodes.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { STAT } from '../../shared/native';
import * as K from '../../worker/fs/host_constants';
import { ROOT, TestSink, b, ctx, setup, throwsErrno } from './fixtures/helpers';

t.test('a symlink to a directory outside the share is never followed', (t) => {
  const { fs: pfs, share, outside } = setup(t, {});
  fs.symlinkSync(outside, path.join(share, 'escape'));
  fs.symlinkSync('../outside', path.join(share, 'rel-escape'));
  fs.symlinkSync('/etc', path.join(share, 'etc'));
  for (const name of ['escape', 'rel-escape', 'etc']) {
    const e = pfs.lookup(ctx, ROOT, b(name));
    t.equal(e.stat.readUInt32LE(STAT.mode) & K.S_IFMT, K.S_IFLNK, `${name} is the symlink itself`);
    throwsErrno(t, () => pfs.lookup(ctx, e.nodeid, b('secret.txt')), K.ENOTDIR, `${name}/secret.txt`);
    throwsErrno(t, () => pfs.lookup(ctx, e.nodeid, b('passwd')), K.ENOTDIR, `${name}/passwd`);
    throwsErrno(t, () => pfs.opendir(ctx, e.nodeid, 0), K.ENOTDIR);
    throwsErrno(t, () => pfs.mkdir(ctx, e.nodeid, b('x'), 0o755, 0), K.ENOTDIR);
    throwsErrno(t, () => pfs.create(ctx, e.nodeid, b('x'), 0o644, K.O_RDWR, 0), K.ENOTDIR);
    throwsErrno(t, () => pfs.statfs(ctx, 12345), K.EBADF);
  }
  t.same(fs.readdirSync(outside), ['secret.txt'], 'nothing created outside');
  t.end();
});

t.test('a symlink to /etc/passwd is not opened or followed', (t) => {
  const { fs: pfs, share } = setup(t, {}, { xattr: true });
  fs.symlinkSync('/etc/passwd', path.join(share, 'pw'));
  const e = pfs.lookup(ctx, ROOT, b('pw'));
  t.equal(pfs.readlink(ctx, e.nodeid).toString(), '/etc/passwd', 'readlink gives the target text');
  throwsErrno(t, () => pfs.open(ctx, e.nodeid, K.O_RDONLY), K.ELOOP, 'open');
  throwsErrno(t, () => pfs.open(ctx, e.nodeid, K.O_RDWR | K.O_TRUNC), K.ELOOP, 'open for writing');
  throwsErrno(t, () => pfs.opendir(ctx, e.nodeid, 0), K.ENOTDIR);
  throwsErrno(t, () => pfs.getxattr(ctx, e.nodeid, b('user.x'), 0), K.EOPNOTSUPP, 'getxattr');
  throwsErrno(t, () => pfs.listxattr(ctx, e.nodeid, 0), K.EOPNOTSUPP, 'listxattr');
  throwsErrno(t, () => pfs.setxattr(ctx, e.nodeid, b('user.x'), b('1'), 0), K.EPERM, 'setxattr');
  const req = { valid: 0, fh: 0, size: 0, atime: 0, atimeNsec: 0, mtime: 0, mtimeNsec: 0, mode: 0, uid: 0, gid: 0 };
  throwsErrno(t, () => pfs.setattr(ctx, e.nodeid, { ...req, valid: K.FATTR_SIZE }), K.EINVAL, 'truncate');
  throwsErrno(t, () => pfs.setattr(ctx, e.nodeid, { ...req, valid: K.FATTR_MODE, mode: 0o777 }), K.EOPNOTSUPP, 'chmod');
  t.end();
});

t.test('attribute changes on a symlink to an outside file change the symlink only', (t) => {
  const { fs: pfs, share, outside } = setup(t, {});
  const secret = path.join(outside, 'secret.txt');
  fs.symlinkSync(secret, path.join(share, 'link'));
  const before = fs.statSync(secret);
  const e = pfs.lookup(ctx, ROOT, b('link'));
  const req = { valid: 0, fh: 0, size: 0, atime: 0, atimeNsec: 0, mtime: 0, mtimeNsec: 0, mode: 0, uid: 0, gid: 0 };
  pfs.setattr(ctx, e.nodeid, { ...req, valid: K.FATTR_UID | K.FATTR_GID, uid: 4321, gid: 4321 });
  pfs.setattr(ctx, e.nodeid, { ...req, valid: K.FATTR_ATIME | K.FATTR_MTIME, atime: 1000, mtime: 2000 });
  const l = fs.lstatSync(path.join(share, 'link'));
  t.equal(l.uid, 4321, 'symlink chowned');
  t.equal(l.mtimeMs, 2000 * 1000, 'symlink mtime set');
  const after = fs.statSync(secret);
  t.equal(after.uid, before.uid, 'target owner unchanged');
  t.equal(after.mtimeMs, before.mtimeMs, 'target mtime unchanged');
  t.equal(after.mode, before.mode, 'target mode unchanged');

  // A hard link to the symlink links the symlink, not its target.
  pfs.link(ctx, e.nodeid, ROOT, b('link2'));
  t.ok(fs.lstatSync(path.join(share, 'link2')).isSymbolicLink());
  t.equal(fs.statSync(secret).nlink, 1, 'target link count unchanged');
  t.equal(fs.readFileSync(secret, 'utf8'), 'secret\n');
  t.end();
});

t.test('creating through a name that is a symlink fails (O_NOFOLLOW)', (t) => {
  const { fs: pfs, share, outside } = setup(t, {});
  fs.symlinkSync(path.join(outside, 'new.txt'), path.join(share, 'dangling'));
  fs.symlinkSync(path.join(outside, 'secret.txt'), path.join(share, 'existing'));
  throwsErrno(t, () => pfs.create(ctx, ROOT, b('dangling'), 0o644, K.O_RDWR, 0), K.ELOOP);
  throwsErrno(t, () => pfs.create(ctx, ROOT, b('existing'), 0o644, K.O_RDWR | K.O_TRUNC, 0), K.ELOOP);
  throwsErrno(t, () => pfs.create(ctx, ROOT, b('existing'), 0o644, K.O_RDWR | K.O_EXCL, 0), 17 /* EEXIST */);
  t.notOk(fs.existsSync(path.join(outside, 'new.txt')));
  t.equal(fs.readFileSync(path.join(outside, 'secret.txt'), 'utf8'), 'secret\n');
  t.end();
});

t.test('a symlink swapped in for a directory after lookup is not followed', (t) => {
  const { fs: pfs, share, outside } = setup(t, { sub: { f: 'x' } });
  const sub = pfs.lookup(ctx, ROOT, b('sub'));
  // Host replaces sub by a symlink to outside: our fd still pins the original directory.
  fs.renameSync(path.join(share, 'sub'), path.join(share, 'sub.old'));
  fs.symlinkSync(outside, path.join(share, 'sub'));
  throwsErrno(t, () => pfs.lookup(ctx, sub.nodeid, b('secret.txt')), K.ENOENT);
  t.equal(pfs.lookup(ctx, sub.nodeid, b('f')).stat.readBigUInt64LE(STAT.size), 1n);
  t.end();
});

t.test('readdirplus lists symlinks as themselves', (t) => {
  const { fs: pfs, share, outside } = setup(t, {});
  fs.symlinkSync(outside, path.join(share, 'escape'));
  const dir = pfs.opendir(ctx, ROOT, 0);
  const sink = new TestSink(100);
  pfs.readdir(ctx, ROOT, dir.fh, 0n, true, sink);
  const e = sink.entries.find((x) => x.name === 'escape')!;
  t.ok(e.entry);
  t.equal(e.entry!.stat.readUInt32LE(STAT.mode) & K.S_IFMT, K.S_IFLNK);
  t.equal(e.type, 10 /* DT_LNK */);
  t.same(sink.entries.map((x) => x.name).sort(), ['.', '..', 'escape']);
  t.equal(sink.entries.find((x) => x.name === '..')!.entry, null, '.. gets no entry');
  const rootIno = BigInt(fs.statSync(share).ino);
  t.equal(sink.entries.find((x) => x.name === '..')!.ino, rootIno, "the root's '..' shows the root's own inode");
  t.not(rootIno, BigInt(fs.statSync(path.dirname(share)).ino));
  pfs.releasedir(ctx, ROOT, dir.fh);
  t.end();
});

t.test('device nodes and fifos in the share are never opened', (t) => {
  const { fs: pfs } = setup(t, {});
  // /dev/null's numbers (1, 3): even a device guests could use must not be opened by us.
  const dev = pfs.mknod(ctx, ROOT, b('null'), K.S_IFCHR | 0o666, (1 << 8) | 3, 0);
  t.equal(dev.stat.readUInt32LE(STAT.mode) & K.S_IFMT, K.S_IFCHR);
  throwsErrno(t, () => pfs.open(ctx, dev.nodeid, K.O_RDWR), K.EBADF);
  const fifo = pfs.mknod(ctx, ROOT, b('fifo'), K.S_IFIFO | 0o644, 0, 0);
  throwsErrno(t, () => pfs.open(ctx, fifo.nodeid, K.O_RDONLY), K.EBADF, 'would block forever');
  t.end();
});

t.test('no escape through lookups of names reaching /proc', (t) => {
  const { fs: pfs, share } = setup(t, {});
  fs.symlinkSync('/proc/self/fd/0', path.join(share, 'magic'));
  fs.symlinkSync('/proc/self/root', path.join(share, 'procroot'));
  const m = pfs.lookup(ctx, ROOT, b('magic'));
  throwsErrno(t, () => pfs.open(ctx, m.nodeid, K.O_RDONLY), K.ELOOP);
  const r = pfs.lookup(ctx, ROOT, b('procroot'));
  throwsErrno(t, () => pfs.lookup(ctx, r.nodeid, b('etc')), K.ENOTDIR);
  t.end();
});
