// lookup / forget: dedup by (dev, ino), lookup counts, fd registration and closing, name rules.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { STAT } from '../../shared/native';
import * as K from '../../worker/fs/host_constants';
import { ROOT, b, ctx, fdTarget, setup, throwsErrno } from './fixtures/helpers';

t.test('lookup dedups by (dev, ino) and counts lookups; forget closes the fd at 0', (t) => {
  const { fs: pfs, registry, share } = setup(t, { a: 'hello', sub: { x: '' } });
  fs.linkSync(path.join(share, 'a'), path.join(share, 'hardlink'));
  const before = registry.size;
  const e1 = pfs.lookup(ctx, ROOT, b('a'));
  t.equal(e1.nodeid, 2, 'first nodeid is 2');
  t.equal(e1.generation, 0);
  t.equal(e1.entryTimeout, 1.0, 'auto cache: 1 s');
  t.equal(e1.attrTimeout, 1.0);
  t.equal(e1.stat.length, STAT.SIZE);
  t.equal(Number(e1.stat.readBigUInt64LE(STAT.size)), 5);
  t.equal(Number(e1.stat.readBigUInt64LE(STAT.ino)), fs.statSync(path.join(share, 'a')).ino);
  t.equal(registry.size, before + 1, 'one fd registered');
  const fd = registry.get('inode.2')!;
  t.equal(fdTarget(fd), path.join(share, 'a'), 'inode fd points at the file');

  const e2 = pfs.lookup(ctx, ROOT, b('a'));
  t.equal(e2.nodeid, 2, 'same inode, same nodeid');
  const e3 = pfs.lookup(ctx, ROOT, b('hardlink'));
  t.equal(e3.nodeid, 2, 'hard link: same (dev, ino), same nodeid');
  t.equal(registry.size, before + 1, 'no new fd for known inodes');
  t.equal(pfs.session.getInode(2)!.lookupCount, 3);

  pfs.forget(2, 2);
  t.equal(pfs.session.getInode(2)!.lookupCount, 1);
  t.ok(registry.has('inode.2'));
  pfs.forget(2, 1);
  t.equal(pfs.session.getInode(2), undefined, 'inode dropped');
  t.notOk(registry.has('inode.2'), 'fd unregistered');
  t.not(fdTarget(fd), path.join(share, 'a'), 'fd closed');

  const e4 = pfs.lookup(ctx, ROOT, b('a'));
  t.equal(e4.nodeid, 3, 'a forgotten inode gets a new nodeid (never reused)');
  pfs.forget(3, 1);
  pfs.forget(999, 1); // unknown: ignored
  t.end();
});

t.test('forget with more than the count drops the inode; the root is never dropped', (t) => {
  const { fs: pfs, registry } = setup(t, { a: '' });
  const e = pfs.lookup(ctx, ROOT, b('a'));
  pfs.forget(e.nodeid, 100);
  t.notOk(registry.has(`inode.${e.nodeid}`));
  const r = pfs.lookup(ctx, ROOT, b('.'));
  t.equal(r.nodeid, ROOT);
  pfs.forget(ROOT, 1000);
  t.ok(pfs.session.getInode(ROOT), 'root stays');
  t.ok(registry.has('root'));
  t.equal(pfs.getattr(ctx, ROOT, null).stat.readUInt32LE(STAT.mode) & K.S_IFMT, K.S_IFDIR);
  t.end();
});

t.test('. and ..', (t) => {
  const { fs: pfs, share } = setup(t, { sub: { deeper: {} } });
  const dot = pfs.lookup(ctx, ROOT, b('.'));
  t.equal(dot.nodeid, ROOT, '. at root is root');
  const up = pfs.lookup(ctx, ROOT, b('..'));
  t.equal(up.nodeid, ROOT, '.. at root is root (no escape)');
  t.equal(up.stat.readBigUInt64LE(STAT.ino), BigInt(fs.statSync(share).ino));
  const sub = pfs.lookup(ctx, ROOT, b('sub'));
  const deeper = pfs.lookup(ctx, sub.nodeid, b('deeper'));
  t.equal(pfs.lookup(ctx, sub.nodeid, b('.')).nodeid, sub.nodeid, '. is the dir itself');
  t.equal(pfs.lookup(ctx, deeper.nodeid, b('..')).nodeid, sub.nodeid, '.. of sub/deeper is sub');
  t.equal(pfs.lookup(ctx, sub.nodeid, b('..')).nodeid, ROOT, '.. of sub is the root');
  t.equal(pfs.session.getInode(sub.nodeid)!.lookupCount, 3);
  const file = pfs.lookup(ctx, ROOT, b('.'));
  t.equal(file.nodeid, ROOT);
  t.end();
});

t.test('.. of a directory moved out of the share by the host fails', (t) => {
  const { fs: pfs, share, outside } = setup(t, { sub: { inner: {} } });
  const sub = pfs.lookup(ctx, ROOT, b('sub'));
  const inner = pfs.lookup(ctx, sub.nodeid, b('inner'));
  fs.renameSync(path.join(share, 'sub'), path.join(outside, 'moved'));
  throwsErrno(t, () => pfs.lookup(ctx, sub.nodeid, b('..')), K.ENOENT, 'no parent outside the share');
  throwsErrno(t, () => pfs.lookup(ctx, inner.nodeid, b('..')), K.ENOENT, 'nor for its children');
  t.end();
});

t.test('name rules', (t) => {
  const { fs: pfs } = setup(t, { a: '', sub: { b: '' } });
  throwsErrno(t, () => pfs.lookup(ctx, ROOT, b('sub/b')), K.EINVAL, 'slash');
  throwsErrno(t, () => pfs.lookup(ctx, ROOT, b('/etc')), K.EINVAL, 'absolute');
  throwsErrno(t, () => pfs.lookup(ctx, ROOT, Buffer.from('a\0b')), K.EINVAL, 'NUL');
  throwsErrno(t, () => pfs.lookup(ctx, ROOT, Buffer.alloc(0)), K.ENOENT, 'empty');
  throwsErrno(t, () => pfs.lookup(ctx, ROOT, b('missing')), K.ENOENT, 'missing');
  throwsErrno(t, () => pfs.lookup(ctx, ROOT, b('x'.repeat(300))), 36 /* ENAMETOOLONG */);
  throwsErrno(t, () => pfs.lookup(ctx, 77, b('a')), K.EBADF, 'unknown parent');
  const a = pfs.lookup(ctx, ROOT, b('a'));
  throwsErrno(t, () => pfs.lookup(ctx, a.nodeid, b('x')), K.ENOTDIR, 'parent not a dir');
  throwsErrno(t, () => pfs.lookup(ctx, a.nodeid, b('.')), K.ENOTDIR);
  throwsErrno(t, () => pfs.lookup(ctx, a.nodeid, b('..')), K.ENOTDIR);
  for (const bad of ['.', '..', '', 'a/b']) {
    throwsErrno(t, () => pfs.mkdir(ctx, ROOT, b(bad), 0o755, 0), K.EINVAL, `mkdir ${JSON.stringify(bad)}`);
    throwsErrno(t, () => pfs.unlink(ctx, ROOT, b(bad)), K.EINVAL, `unlink ${JSON.stringify(bad)}`);
    throwsErrno(t, () => pfs.rename(ctx, ROOT, b('a'), ROOT, b(bad), 0), K.EINVAL, `rename to ${JSON.stringify(bad)}`);
    throwsErrno(t, () => pfs.create(ctx, ROOT, b(bad), 0o644, K.O_RDWR, 0), K.EINVAL, `create ${JSON.stringify(bad)}`);
    throwsErrno(t, () => pfs.symlink(ctx, ROOT, b(bad), b('x')), K.EINVAL, `symlink ${JSON.stringify(bad)}`);
    throwsErrno(t, () => pfs.link(ctx, a.nodeid, ROOT, b(bad)), K.EINVAL, `link ${JSON.stringify(bad)}`);
  }
  t.end();
});
