// Metadata operations: getattr, setattr, readlink, symlink, mknod, mkdir, unlink, rmdir, rename,
// link, access, statfs, creator credentials and umask handling.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { STAT } from '../../shared/native';
import type { SetattrRequest } from '../../worker/fs/filesystem';
import * as K from '../../worker/fs/host_constants';
import { ROOT, b, ctx, setup, throwsErrno } from './fixtures/helpers';

const NONE: SetattrRequest = { valid: 0, fh: 0, size: 0, atime: 0, atimeNsec: 0, mtime: 0, mtimeNsec: 0, mode: 0, uid: 0, gid: 0 };
const u64 = (st: Buffer, off: number): number => Number(st.readBigUInt64LE(off));

t.test('getattr matches the host', (t) => {
  const { fs: pfs, share } = setup(t, { f: 'abcdef', d: {} });
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const a = pfs.getattr(ctx, f.nodeid, null);
  const st = fs.statSync(path.join(share, 'f'));
  t.equal(a.attrTimeout, 1.0);
  t.equal(u64(a.stat, STAT.ino), st.ino);
  t.equal(u64(a.stat, STAT.size), 6);
  t.equal(u64(a.stat, STAT.mode), st.mode);
  t.equal(u64(a.stat, STAT.nlink), 1);
  t.equal(u64(a.stat, STAT.uid), st.uid);
  t.equal(u64(a.stat, STAT.mtime), Math.floor(st.mtimeMs / 1000));
  const root = pfs.getattr(ctx, ROOT, null);
  t.equal(u64(root.stat, STAT.ino), fs.statSync(share).ino);
  throwsErrno(t, () => pfs.getattr(ctx, 99, null), K.EBADF, 'unknown nodeid → EBADF');
  t.end();
});

t.test('cache modes set timeouts and open flags', (t) => {
  for (const [cache, timeout, fileFlags, dirFlags] of [
    ['never', 0, K.FOPEN_DIRECT_IO, 0], ['auto', 1, 0, 0], ['always', 86400, K.FOPEN_KEEP_CACHE, K.FOPEN_CACHE_DIR],
  ] as const) {
    t.test(cache, (t) => {
      const { fs: pfs } = setup(t, { f: '' }, { cache });
      const e = pfs.lookup(ctx, ROOT, b('f'));
      t.equal(e.entryTimeout, timeout);
      t.equal(e.attrTimeout, timeout);
      t.equal(pfs.getattr(ctx, e.nodeid, null).attrTimeout, timeout);
      t.equal(pfs.open(ctx, e.nodeid, K.O_RDONLY).openFlags, fileFlags);
      t.equal(pfs.opendir(ctx, ROOT, 0).openFlags, dirFlags);
      t.end();
    });
  }
  t.end();
});

t.test('setattr: mode, owner, size, times', (t) => {
  const { fs: pfs, share } = setup(t, { f: 'hello world', d: {} });
  const p = path.join(share, 'f');
  const f = pfs.lookup(ctx, ROOT, b('f'));

  let r = pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_MODE, mode: K.S_IFREG | 0o640 });
  t.equal(fs.statSync(p).mode & 0o7777, 0o640, 'chmod without fh');
  t.equal(u64(r.stat, STAT.mode) & 0o7777, 0o640, 'reply has fresh attrs');

  r = pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_UID, uid: 1234 });
  t.equal(fs.statSync(p).uid, 1234);
  t.equal(fs.statSync(p).gid, 0, 'gid unchanged (-1)');
  pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_GID, gid: 5678 });
  t.equal(fs.statSync(p).uid, 1234, 'uid unchanged (-1)');
  t.equal(fs.statSync(p).gid, 5678);

  r = pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_SIZE, size: 5 });
  t.equal(fs.readFileSync(p, 'utf8'), 'hello', 'truncate without fh');
  t.equal(u64(r.stat, STAT.size), 5);

  const o = pfs.open(ctx, f.nodeid, K.O_RDWR);
  pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_SIZE | K.FATTR_FH, fh: o.fh, size: 2 });
  t.equal(fs.readFileSync(p, 'utf8'), 'he', 'truncate through the fh');
  pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_MODE | K.FATTR_FH, fh: o.fh, mode: 0o600 });
  t.equal(fs.statSync(p).mode & 0o7777, 0o600, 'fchmod through the fh');
  throwsErrno(t, () => pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_SIZE | K.FATTR_FH, fh: 999, size: 0 }), K.EBADF,
    'bad fh → EBADF');

  pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_ATIME | K.FATTR_MTIME, atime: 1_000_000, atimeNsec: 5000, mtime: 2_000_000, mtimeNsec: 0 });
  let st = fs.statSync(p, { bigint: true });
  t.equal(st.atimeNs, 1_000_000_000_005_000n, 'atime with ns');
  t.equal(st.mtimeNs, 2_000_000_000_000_000n);
  pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_MTIME, mtime: 3_000_000 });
  st = fs.statSync(p, { bigint: true });
  t.equal(st.atimeNs, 1_000_000_000_005_000n, 'atime omitted');
  t.equal(st.mtimeNs, 3_000_000_000_000_000n);
  pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_MTIME | K.FATTR_MTIME_NOW | K.FATTR_FH, fh: o.fh });
  t.ok(Math.abs(fs.statSync(p).mtimeMs - Date.now()) < 60_000, 'MTIME_NOW through the fh');
  pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_ATIME | K.FATTR_ATIME_NOW });
  t.ok(Math.abs(fs.statSync(p).atimeMs - Date.now()) < 60_000, 'ATIME_NOW');

  throwsErrno(t, () => pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_SIZE, size: 2 ** 60 }), K.EFBIG, 'size beyond 2^53');
  throwsErrno(t, () => pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_MTIME, mtime: 1, mtimeNsec: 1e9 }), K.EINVAL, 'nsec >= 1e9');
  const d = pfs.lookup(ctx, ROOT, b('d'));
  throwsErrno(t, () => pfs.setattr(ctx, d.nodeid, { ...NONE, valid: K.FATTR_SIZE, size: 0 }), K.EISDIR);
  pfs.setattr(ctx, d.nodeid, { ...NONE, valid: K.FATTR_MODE, mode: 0o711 });
  t.equal(fs.statSync(path.join(share, 'd')).mode & 0o7777, 0o711);
  pfs.release(ctx, f.nodeid, o.fh, 0, 0, 0n);
  t.end();
});

t.test('setattr FATTR_KILL_SUIDGID clears setuid/setgid on truncate and chown', (t) => {
  const { fs: pfs, share } = setup(t, { f: 'data', g: 'data' });
  const p = path.join(share, 'f');
  fs.chmodSync(p, 0o6755);
  const f = pfs.lookup(ctx, ROOT, b('f'));
  pfs.setattr(ctx, f.nodeid, { ...NONE, valid: K.FATTR_SIZE | K.FATTR_KILL_SUIDGID, size: 1 });
  t.equal(fs.statSync(p).mode & 0o7777, 0o755, 'suid and sgid (group-exec) cleared');
  const q = path.join(share, 'g');
  fs.chmodSync(q, 0o6744);
  const g = pfs.lookup(ctx, ROOT, b('g'));
  pfs.setattr(ctx, g.nodeid, { ...NONE, valid: K.FATTR_UID | K.FATTR_KILL_SUIDGID, uid: 1000 });
  t.equal(fs.statSync(q).mode & 0o7777, 0o2744, 'sgid without group-exec (mandatory locking bit) kept');
  fs.chmodSync(q, 0o4755);
  pfs.setattr(ctx, g.nodeid, { ...NONE, valid: K.FATTR_SIZE, size: 0 });
  t.equal(fs.statSync(q).mode & 0o7777, 0o4755, 'kept without the flag (we are privileged)');
  t.end();
});

t.test('symlink, readlink, mknod, mkdir, link, unlink, rmdir', (t) => {
  const { fs: pfs, share } = setup(t, { f: 'x' });
  const s = pfs.symlink(ctx, ROOT, b('s'), b('some/where\x01'));
  t.equal(fs.readlinkSync(path.join(share, 's')), 'some/where\x01');
  t.equal(pfs.readlink(ctx, s.nodeid).toString(), 'some/where\x01');
  t.equal(u64(s.stat, STAT.mode) & K.S_IFMT, K.S_IFLNK);
  t.equal(pfs.session.getInode(s.nodeid)!.fileType, K.S_IFLNK);
  const f = pfs.lookup(ctx, ROOT, b('f'));
  throwsErrno(t, () => pfs.readlink(ctx, f.nodeid), K.EINVAL, 'readlink of a file');
  throwsErrno(t, () => pfs.symlink(ctx, ROOT, b('s'), b('x')), 17, 'EEXIST');

  const d = pfs.mkdir(ctx, ROOT, b('d'), 0o750, 0);
  t.ok(fs.statSync(path.join(share, 'd')).isDirectory());
  t.equal(fs.statSync(path.join(share, 'd')).mode & 0o777, 0o750);
  t.equal(pfs.session.getInode(d.nodeid)!.lookupCount, 1, 'new entry counts one lookup');
  const n = pfs.mknod(ctx, d.nodeid, b('reg'), K.S_IFREG | 0o600, 0, 0);
  t.ok(fs.statSync(path.join(share, 'd', 'reg')).isFile());
  const fifo = pfs.mknod(ctx, d.nodeid, b('fifo'), K.S_IFIFO | 0o600, 0, 0);
  t.ok(fs.statSync(path.join(share, 'd', 'fifo')).isFIFO());
  t.not(n.nodeid, fifo.nodeid);

  const l = pfs.link(ctx, f.nodeid, d.nodeid, b('hard'));
  t.equal(l.nodeid, f.nodeid, 'link returns the same inode');
  t.equal(u64(l.stat, STAT.nlink), 2, 'fresh nlink');
  t.equal(pfs.session.getInode(f.nodeid)!.lookupCount, 2, 'link adds a lookup');
  t.equal(fs.statSync(path.join(share, 'd', 'hard')).ino, fs.statSync(path.join(share, 'f')).ino);
  throwsErrno(t, () => pfs.link(ctx, d.nodeid, ROOT, b('dirlink')), K.EPERM, 'no hard links to dirs');

  throwsErrno(t, () => pfs.rmdir(ctx, ROOT, b('d')), 39, 'ENOTEMPTY');
  throwsErrno(t, () => pfs.unlink(ctx, ROOT, b('d')), K.EISDIR);
  pfs.unlink(ctx, d.nodeid, b('reg'));
  pfs.unlink(ctx, d.nodeid, b('fifo'));
  pfs.unlink(ctx, d.nodeid, b('hard'));
  t.ok(pfs.session.getInode(n.nodeid), 'unlinked inode stays until forgotten');
  t.equal(u64(pfs.getattr(ctx, n.nodeid, null).stat, STAT.nlink), 0, 'and reports nlink 0');
  pfs.rmdir(ctx, ROOT, b('d'));
  t.notOk(fs.existsSync(path.join(share, 'd')));
  throwsErrno(t, () => pfs.rmdir(ctx, ROOT, b('f')), K.ENOTDIR);
  throwsErrno(t, () => pfs.unlink(ctx, ROOT, b('nope')), K.ENOENT);
  throwsErrno(t, () => pfs.mkdir(ctx, f.nodeid, b('x'), 0o755, 0), K.ENOTDIR, 'parent not a dir');
  t.end();
});

t.test('rename with flags', (t) => {
  const { fs: pfs, share } = setup(t, { a: 'A', b: 'B', d: { c: 'C' } });
  const d = pfs.lookup(ctx, ROOT, b('d'));
  throwsErrno(t, () => pfs.rename(ctx, ROOT, b('a'), ROOT, b('b'), K.RENAME_NOREPLACE), 17, 'NOREPLACE onto existing');
  t.equal(fs.readFileSync(path.join(share, 'b'), 'utf8'), 'B');
  pfs.rename(ctx, ROOT, b('a'), ROOT, b('b'), K.RENAME_EXCHANGE);
  t.equal(fs.readFileSync(path.join(share, 'a'), 'utf8'), 'B', 'exchanged');
  t.equal(fs.readFileSync(path.join(share, 'b'), 'utf8'), 'A');
  pfs.rename(ctx, ROOT, b('a'), d.nodeid, b('moved'), K.RENAME_NOREPLACE);
  t.equal(fs.readFileSync(path.join(share, 'd', 'moved'), 'utf8'), 'B', 'moved across dirs');
  pfs.rename(ctx, d.nodeid, b('c'), ROOT, b('b'), 0);
  t.equal(fs.readFileSync(path.join(share, 'b'), 'utf8'), 'C', 'plain rename replaces');
  throwsErrno(t, () => pfs.rename(ctx, ROOT, b('b'), ROOT, b('zz'), K.RENAME_EXCHANGE), K.ENOENT, 'EXCHANGE needs both');
  throwsErrno(t, () => pfs.rename(ctx, ROOT, b('b'), ROOT, b('zz'), 0x80), K.EINVAL, 'unknown flag');
  throwsErrno(t, () => pfs.rename(ctx, ROOT, b('b'), ROOT, b('zz'), K.RENAME_EXCHANGE | K.RENAME_NOREPLACE), K.EINVAL);
  t.end();
});

t.test('new files get the caller fsuid/fsgid', (t) => {
  const { fs: pfs, share } = setup(t, { open: {}, closed: {} });
  fs.chmodSync(path.join(share, 'open'), 0o777);
  fs.chmodSync(path.join(share, 'closed'), 0o755);
  const user = { uid: 1000, gid: 1001, pid: 42 };
  const open = pfs.lookup(ctx, ROOT, b('open'));
  const closed = pfs.lookup(ctx, ROOT, b('closed'));
  pfs.mkdir(user, open.nodeid, b('dir'), 0o755, 0);
  pfs.mknod(user, open.nodeid, b('node'), K.S_IFREG | 0o644, 0, 0);
  pfs.symlink(user, open.nodeid, b('sym'), b('target'));
  const c = pfs.create(user, open.nodeid, b('created'), K.S_IFREG | 0o644, K.O_WRONLY, 0);
  const tmp = pfs.tmpfile(user, open.nodeid, 0o600, K.O_RDWR, 0);
  pfs.link(user, tmp.entry.nodeid, open.nodeid, b('was-tmp'));
  for (const name of ['dir', 'node', 'sym', 'created', 'was-tmp']) {
    const st = fs.lstatSync(path.join(share, 'open', name));
    t.equal(st.uid, 1000, `${name} uid`);
    t.equal(st.gid, 1001, `${name} gid`);
  }
  throwsErrno(t, () => pfs.mkdir(user, closed.nodeid, b('x'), 0o755, 0), K.EACCES, 'permission checked as the caller');
  throwsErrno(t, () => pfs.create(user, closed.nodeid, b('x'), 0o644, K.O_RDWR, 0), K.EACCES);
  const probe = pfs.mkdir(ctx, ROOT, b('after'), 0o700, 0);
  t.equal(fs.statSync(path.join(share, 'after')).uid, 0, 'our own ids are restored');
  t.ok(probe.nodeid > 0);
  pfs.release(user, c.entry.nodeid, c.open.fh, 0, 0, 0n);
  pfs.release(user, tmp.entry.nodeid, tmp.open.fh, 0, 0, 0n);
  t.end();
});

t.test('umask: applied only when FUSE_DONT_MASK was negotiated', (t) => {
  const { fs: pfs, share } = setup(t, {});
  const saved = process.umask(0o027);
  t.teardown(() => { process.umask(saved); });
  pfs.init(0n);
  pfs.mkdir(ctx, ROOT, b('kernel-masked'), 0o777, 0o022);
  t.equal(fs.statSync(path.join(share, 'kernel-masked')).mode & 0o777, 0o777, 'mode used as given (our own umask ignored)');
  pfs.init(K.FUSE_DONT_MASK);
  pfs.mkdir(ctx, ROOT, b('we-mask'), 0o777, 0o022);
  t.equal(fs.statSync(path.join(share, 'we-mask')).mode & 0o777, 0o755);
  const c = pfs.create(ctx, ROOT, b('file'), K.S_IFREG | 0o666, K.O_RDWR, 0o077);
  t.equal(fs.statSync(path.join(share, 'file')).mode & 0o777, 0o600);
  pfs.mknod(ctx, ROOT, b('node'), K.S_IFREG | 0o666, 0, 0o002);
  t.equal(fs.statSync(path.join(share, 'node')).mode & 0o777, 0o664);
  // The process umask is left as the last creation set it (no restore syscalls); each creation
  // still gets its own.
  pfs.mkdir(ctx, ROOT, b('again-022'), 0o777, 0o022);
  t.equal(fs.statSync(path.join(share, 'again-022')).mode & 0o777, 0o755, 'a different umask after a cached one');
  pfs.init(0n);
  pfs.mkdir(ctx, ROOT, b('kernel-masked-2'), 0o777, 0o022);
  t.equal(fs.statSync(path.join(share, 'kernel-masked-2')).mode & 0o777, 0o777, 'back to the kernel masking');
  pfs.release(ctx, c.entry.nodeid, c.open.fh, 0, 0, 0n);
  t.end();
});

t.test('access: the kernel checks for the caller (mode classes, root, ACL-free files)', (t) => {
  const { fs: pfs, share } = setup(t, { f: '', x: '', d: {}, closed: '' });
  fs.chmodSync(path.join(share, 'f'), 0o640);
  fs.chownSync(path.join(share, 'f'), 1000, 2000);
  fs.chmodSync(path.join(share, 'x'), 0o644);
  fs.chmodSync(path.join(share, 'd'), 0o700);
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const x = pfs.lookup(ctx, ROOT, b('x'));
  const d = pfs.lookup(ctx, ROOT, b('d'));
  const owner = { uid: 1000, gid: 9, pid: 1 };
  const group = { uid: 1001, gid: 2000, pid: 1 };
  const other = { uid: 1002, gid: 9, pid: 1 };
  pfs.access(owner, f.nodeid, K.R_OK | K.W_OK);
  throwsErrno(t, () => pfs.access(owner, f.nodeid, K.X_OK), K.EACCES);
  pfs.access(group, f.nodeid, K.R_OK);
  throwsErrno(t, () => pfs.access(group, f.nodeid, K.W_OK), K.EACCES);
  throwsErrno(t, () => pfs.access(other, f.nodeid, K.R_OK), K.EACCES);
  pfs.access(other, f.nodeid, 0); // F_OK
  pfs.access(ctx, f.nodeid, K.R_OK | K.W_OK);
  throwsErrno(t, () => pfs.access(ctx, x.nodeid, K.X_OK), K.EACCES, 'root cannot execute a non-executable');
  pfs.access(ctx, d.nodeid, K.X_OK | K.R_OK | K.W_OK);
  throwsErrno(t, () => pfs.access(other, d.nodeid, K.X_OK), K.EACCES);
  // The owner class decides for the owner, even when group and other may (mode bits OR-ed
  // together got this wrong).
  fs.chmodSync(path.join(share, 'closed'), 0o077);
  fs.chownSync(path.join(share, 'closed'), 1000, 2000);
  const c = pfs.lookup(ctx, ROOT, b('closed'));
  throwsErrno(t, () => pfs.access(owner, c.nodeid, K.R_OK), K.EACCES, 'a 0077 file is closed to its owner');
  pfs.access(group, c.nodeid, K.R_OK | K.W_OK);
  t.pass('access done');
  t.end();
});

t.test('statfs works on the O_PATH inode fd', (t) => {
  const { fs: pfs, share } = setup(t, { f: '' });
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const s = pfs.statfs(ctx, f.nodeid);
  const host = fs.statfsSync(share);
  t.equal(s.bsize, host.bsize);
  t.equal(s.blocks, host.blocks);
  t.equal(s.namelen, 255);
  t.equal(pfs.statfs(ctx, ROOT).blocks, host.blocks);
  t.end();
});

t.test('probeEntry / probeAppendSize read state without lookups', (t) => {
  const { fs: pfs, share } = setup(t, { f: 'abc', d: {} });
  fs.symlinkSync('/etc/passwd', path.join(share, 'pw'));
  const before = pfs.session.toSnapshot();
  const p = pfs.probeEntry(ROOT, b('f'))!;
  const st = fs.statSync(path.join(share, 'f'), { bigint: true });
  t.equal(p.ino, st.ino);
  t.equal(p.mode, Number(st.mode));
  t.equal(p.ctimeNs, st.ctimeNs);
  t.equal(pfs.probeEntry(ROOT, b('pw'))!.mode & K.S_IFMT, K.S_IFLNK, 'symlink not followed');
  t.equal(pfs.probeEntry(ROOT, b('missing')), null);
  t.equal(pfs.probeEntry(ROOT, b('..')), null, 'not a plain name: null, no throw');
  t.equal(pfs.probeEntry(ROOT, b('d/x')), null);
  t.equal(pfs.probeEntry(ROOT, b('../outside')), null);
  t.equal(pfs.probeEntry(77, b('f')), null, 'unknown parent: null');
  t.same(pfs.session.toSnapshot(), before, 'no session change');
  const f = pfs.lookup(ctx, ROOT, b('f'));
  t.equal(pfs.probeEntry(f.nodeid, b('x')), null, 'parent not a dir: null');
  const ap = pfs.open(ctx, f.nodeid, K.O_WRONLY | K.O_APPEND);
  const plain = pfs.open(ctx, f.nodeid, K.O_WRONLY);
  t.equal(pfs.probeAppendSize(ap.fh), 3);
  t.equal(pfs.probeAppendSize(plain.fh), null);
  t.equal(pfs.probeAppendSize(999), null);
  pfs.release(ctx, f.nodeid, ap.fh, 0, 0, 0n);
  pfs.release(ctx, f.nodeid, plain.fh, 0, 0, 0n);
  t.end();
});
