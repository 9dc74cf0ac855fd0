// fd accounting: every fd is registered under its documented name; destroy() leaves only
// "root"; a restarted worker resumes from a snapshot with the registry's fds.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../../shared/native';
import { FdRegistry } from '../../shared/fd_registry';
import { PassthroughFs } from '../../worker/fs/passthrough';
import { FsSession, FsSessionError } from '../../worker/fs/session';
import * as K from '../../worker/fs/host_constants';
import { Memory, ROOT, TestSink, b, ctx, fdCount, fdTarget, setup, silent } from './fixtures/helpers';

t.test('every fd is registered; destroy() leaves only root; fd count back to the start', async (t) => {
  const start = fdCount();
  const base = t.testdir({ share: { a: 'aaa', d: { x: '', y: '' } } });
  const share = path.join(base, 'share');
  const registry = new FdRegistry();
  const pfs = new PassthroughFs({ registry, sharedDir: share, logger: silent, xattr: true });
  pfs.init(0n);
  t.same([...registry.entries()].map(([n]) => n), ['root']);
  t.equal(fdCount(), start + 1, 'the root fd');
  const afterInit = fdCount();
  const mem = new Memory(4096);
  const memFds = fdCount() - afterInit;

  const a = pfs.lookup(ctx, ROOT, b('a'));
  const d = pfs.lookup(ctx, ROOT, b('d'));
  const o = pfs.open(ctx, a.nodeid, K.O_RDWR);
  const dir = pfs.opendir(ctx, d.nodeid, 0);
  pfs.readdir(ctx, d.nodeid, dir.fh, 0n, true, new TestSink(100));
  const c = pfs.create(ctx, d.nodeid, b('new'), 0o644, K.O_RDWR, 0);
  const tmp = pfs.tmpfile(ctx, ROOT, 0o600, K.O_RDWR, 0);
  pfs.mkdir(ctx, ROOT, b('m'), 0o755, 0);
  pfs.symlink(ctx, ROOT, b('s'), b('target'));
  pfs.setxattr(ctx, a.nodeid, b('user.k'), b('v'), 0);
  pfs.getxattr(ctx, a.nodeid, b('user.k'), 0);
  pfs.setattr(ctx, a.nodeid, { valid: K.FATTR_SIZE, fh: 0, size: 1, atime: 0, atimeNsec: 0, mtime: 0, mtimeNsec: 0, mode: 0, uid: 0, gid: 0 });
  await pfs.syncfs(ctx, a.nodeid);
  await pfs.read(ctx, a.nodeid, o.fh, 0, 10, [mem.seg(0, 10)]);
  pfs.flush(ctx, a.nodeid, o.fh, 0n);
  t.throws(() => pfs.open(ctx, pfs.lookup(ctx, ROOT, b('s')).nodeid, K.O_RDONLY));
  t.throws(() => pfs.lookup(ctx, ROOT, b('missing')));

  const names = [...registry.entries()].map(([n]) => n);
  t.ok(names.every((n) => /^(root|inode\.\d+|file\.\d+|dir\.\d+)$/.test(n)), 'only documented names');
  t.equal(names.filter((n) => n.startsWith('inode.')).length, pfs.session.inodeCount - 1, 'one fd per non-root inode');
  t.ok(registry.has(`file.${o.fh}`) && registry.has(`file.${c.open.fh}`) && registry.has(`file.${tmp.open.fh}`));
  t.ok(registry.has(`dir.${dir.fh}`));
  t.equal(fdCount(), afterInit + memFds + registry.size - 1, 'no fd outside the registry (temporary fds closed)');
  for (const [name, fd] of registry.entries()) t.ok(native.fdFlags(fd).cloexec, `${name} is O_CLOEXEC`);

  pfs.destroy();
  t.same([...registry.entries()].map(([n]) => n), ['root'], 'destroy leaves only root');
  t.equal(pfs.session.inodeCount, 1);
  t.equal(pfs.session.fileCount + pfs.session.dirCount, 0);
  mem.close();
  t.equal(fdCount(), afterInit, 'fd count back to its starting value');
  // still usable after destroy (a new INIT)
  pfs.init(0n);
  const again = pfs.lookup(ctx, ROOT, b('a'));
  t.ok(again.nodeid > tmp.entry.nodeid, 'nodeids keep counting after destroy');
  pfs.destroy();
  registry.closeAll();
  t.equal(fdCount(), start);
});

t.test('constructor: rootFd, sharedDir, errors', (t) => {
  const base = t.testdir({ share: { f: '' } });
  const share = path.join(base, 'share');
  const registry = new FdRegistry();
  t.teardown(() => registry.closeAll());
  t.throws(() => new PassthroughFs({ registry, logger: silent }), TypeError, 'neither');
  const fd = native.openat(K.AT_FDCWD, share, K.O_RDONLY | K.O_DIRECTORY, 0);
  t.throws(() => new PassthroughFs({ registry, logger: silent, rootFd: fd, sharedDir: share }), TypeError, 'both');
  const pfs = new PassthroughFs({ registry, logger: silent, rootFd: fd, cache: 'never' });
  t.equal(registry.get('root'), fd, 'rootFd registered as root');
  t.equal(pfs.lookup(ctx, ROOT, b('f')).entryTimeout, 0);
  t.throws(() => new PassthroughFs({ registry, logger: silent, sharedDir: share }), TypeError, 'root already registered');
  const file = path.join(share, 'f');
  const r2 = new FdRegistry();
  t.throws(() => new PassthroughFs({ registry: r2, logger: silent, sharedDir: file }), 'not a directory');
  r2.closeAll();
  t.throws(() => new PassthroughFs({ registry: new FdRegistry(), logger: silent, sharedDir: share, cache: 'sometimes' as 'auto' }), TypeError);
  t.end();
});

t.test('resume: a new worker takes over the session and the registered fds', async (t) => {
  const { fs: pfs, registry, share } = setup(t, { a: 'hello', d: { x: '' } });
  const mem = new Memory(4096);
  t.teardown(() => mem.close());
  const a = pfs.lookup(ctx, ROOT, b('a'));
  const d = pfs.lookup(ctx, ROOT, b('d'));
  const x = pfs.lookup(ctx, d.nodeid, b('x'));
  const o = pfs.open(ctx, a.nodeid, K.O_RDWR);
  pfs.setlk(ctx, a.nodeid, o.fh, 1n, { type: K.F_WRLCK, start: 0, end: 10, pid: 1 }, false, false);
  const snap = JSON.parse(JSON.stringify(pfs.session.toSnapshot())) as unknown;
  const fdsBefore = new Map(registry.entries());

  // the keeper's view: an fd the dead worker had registered but not yet recorded in the session
  const orphan = native.openat(K.AT_FDCWD, share, K.O_PATH, 0);
  registry.register('inode.999', orphan);

  const pfs2 = new PassthroughFs({ registry, logger: silent, session: FsSession.fromSnapshot(snap) });
  pfs2.init(0n);
  t.notOk(registry.has('inode.999'), 'unknown fd closed on resume');
  t.equal(fdTarget(orphan), null, 'and really closed');
  t.same(new Map(registry.entries()), fdsBefore, 'same fds, same names');
  t.equal(pfs2.lookup(ctx, ROOT, b('a')).nodeid, a.nodeid, 'dedup against the resumed table');
  t.equal(pfs2.session.getInode(a.nodeid)!.lookupCount, 2);
  t.equal(pfs2.lookup(ctx, d.nodeid, b('x')).nodeid, x.nodeid);
  t.equal(await pfs2.read(ctx, a.nodeid, o.fh, 0, 5, [mem.seg(0, 5)]), 5, 'open fh still works');
  t.equal(Buffer.from(mem.bytes.subarray(0, 5)).toString(), 'hello');
  const o2 = pfs2.open(ctx, a.nodeid, K.O_RDWR);
  t.ok(o2.fh > o.fh, 'fh counter continues');
  t.throws(() => pfs2.setlk(ctx, a.nodeid, o2.fh, 2n, { type: K.F_WRLCK, start: 5, end: 5, pid: 2 }, false, false),
    'the lock taken before the restart still holds');
  pfs2.release(ctx, a.nodeid, o.fh, 0, 0, 1n);
  pfs2.setlk(ctx, a.nodeid, o2.fh, 2n, { type: K.F_WRLCK, start: 5, end: 5, pid: 2 }, false, false);
  pfs2.release(ctx, a.nodeid, o2.fh, 0, 0, 2n);
  t.end();
});

t.test('resume refuses a session that does not match the fds', (t) => {
  const { fs: pfs, registry, share } = setup(t, { a: '', b: '' });
  const a = pfs.lookup(ctx, ROOT, b('a'));
  pfs.lookup(ctx, ROOT, b('b'));
  const snap = pfs.session.toSnapshot();

  // fd missing from the registry
  const fdA = registry.get(`inode.${a.nodeid}`)!;
  const r1 = new FdRegistry();
  r1.register('root', native.dup(registry.get('root')!));
  t.throws(() => new PassthroughFs({ registry: r1, logger: silent, session: FsSession.fromSnapshot(snap) }), FsSessionError, 'missing fd');
  // fd pointing at another inode
  r1.register(`inode.${a.nodeid}`, native.openat(K.AT_FDCWD, path.join(share, 'b'), K.O_PATH, 0));
  r1.register('inode.3', native.dup(fdA));
  t.throws(() => new PassthroughFs({ registry: r1, logger: silent, session: FsSession.fromSnapshot(snap) }), FsSessionError, 'wrong inode');
  r1.closeAll();
  // a different shared directory
  const other = t.testdir({ z: '' });
  const r2 = new FdRegistry();
  t.throws(() => new PassthroughFs({ registry: r2, logger: silent, sharedDir: other, session: FsSession.fromSnapshot(snap) }), FsSessionError, 'other root');
  r2.closeAll();
  void fs;
  t.end();
});
