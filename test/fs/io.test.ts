// Open files: open, create, tmpfile, read, write, flush, release, fsync, syncfs, fallocate,
// lseek, copy_file_range. Payload moves between the file and mmapped memfd "guest memory".
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { C, STAT } from '../../shared/native';
import * as K from '../../worker/fs/host_constants';
import { Memory, ROOT, b, ctx, fdTarget, rejectsErrno, setup, throwsErrno } from './fixtures/helpers';

t.test('open, read and write through guest memory segments', async (t) => {
  const { fs: pfs, share, registry } = setup(t, { f: 'The quick brown fox jumps over the lazy dog' });
  const mem = new Memory(2 * 4096);
  t.teardown(() => mem.close());
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const o = pfs.open(ctx, f.nodeid, K.O_RDWR);
  t.equal(o.fh, 2, 'first fh is 2');
  t.equal(pfs.session.getFile(o.fh)!.flags & K.O_ACCMODE, K.O_RDWR);
  t.ok(registry.has(`file.${o.fh}`), 'registered as file.<fh>');
  t.equal(fdTarget(registry.get(`file.${o.fh}`)!), path.join(share, 'f'));

  // read 9 bytes at 4 into two segments (5 + 4), the second at a page boundary
  const n = await pfs.read(ctx, f.nodeid, o.fh, 4, 9, [mem.seg(100, 5), mem.seg(4096, 100)]);
  t.equal(n, 9);
  t.equal(Buffer.from(mem.bytes.subarray(100, 105)).toString(), 'quick');
  t.equal(Buffer.from(mem.bytes.subarray(4096, 4100)).toString(), ' bro');
  t.equal(mem.bytes[4100], 0, 'nothing beyond size was read');
  t.equal(await pfs.read(ctx, f.nodeid, o.fh, 1000, 10, [mem.seg(0, 10)]), 0, 'EOF → 0');

  Buffer.from('SLOW').copy(Buffer.from(mem.buffer), 200);
  Buffer.from(' red').copy(Buffer.from(mem.buffer), 4200);
  const w = await pfs.write(ctx, f.nodeid, o.fh, 4, 8, [mem.seg(200, 4), mem.seg(4200, 4)], 0);
  t.equal(w, 8);
  t.equal(fs.readFileSync(path.join(share, 'f'), 'utf8'), 'The SLOW redown fox jumps over the lazy dog');

  await rejectsErrno(t, pfs.read(ctx, f.nodeid, 999, 0, 1, [mem.seg(0, 1)]), K.EBADF, 'unknown fh');
  await rejectsErrno(t, pfs.read(ctx, 999, o.fh, 0, 1, [mem.seg(0, 1)]), K.EBADF, 'fh of another nodeid');

  await rejectsErrno(t, pfs.read(ctx, f.nodeid, o.fh, 2 ** 60, 1, [mem.seg(0, 1)]), K.EINVAL, 'offset beyond 2^53');
  await rejectsErrno(t, pfs.write(ctx, f.nodeid, o.fh, -1, 1, [mem.seg(0, 1)], 0), K.EINVAL, 'negative offset');
  pfs.flush(ctx, f.nodeid, o.fh, 1n);
  await pfs.fsync(ctx, f.nodeid, o.fh, false);
  await pfs.fsync(ctx, f.nodeid, o.fh, true);
  await pfs.syncfs(ctx, f.nodeid);
  await pfs.syncfs(ctx, ROOT);
  pfs.release(ctx, f.nodeid, o.fh, K.O_RDWR, 0, 0n);
  t.notOk(registry.has(`file.${o.fh}`), 'release closes the fd');
  t.equal(pfs.session.getFile(o.fh), undefined);
  throwsErrno(t, () => pfs.release(ctx, f.nodeid, o.fh, 0, 0, 0n), K.EBADF, 'double release');

  const ro = pfs.open(ctx, f.nodeid, K.O_RDONLY);
  t.ok(ro.fh > o.fh, 'fh never reused');
  await rejectsErrno(t, pfs.write(ctx, f.nodeid, ro.fh, 0, 1, [mem.seg(0, 1)], 0), K.EBADF, 'write on O_RDONLY fh');
  pfs.release(ctx, f.nodeid, ro.fh, 0, 0, 0n);
});

t.test('open flags: O_TRUNC, O_APPEND, dropped flags, writeback', async (t) => {
  const { fs: pfs, share } = setup(t, { f: '0123456789', g: 'abc' });
  const mem = new Memory(4096);
  t.teardown(() => mem.close());
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const o = pfs.open(ctx, f.nodeid, K.O_WRONLY | K.O_TRUNC | K.O_CREAT | K.O_EXCL | K.O_NOFOLLOW | K.O_DIRECT);
  t.equal(fs.readFileSync(path.join(share, 'f'), 'utf8'), '', 'truncated');
  const flags = pfs.session.getFile(o.fh)!.flags;
  t.equal(flags & (K.O_CREAT | K.O_EXCL | K.O_NOFOLLOW | K.O_DIRECT), 0, 'create/excl/nofollow/direct dropped');
  pfs.release(ctx, f.nodeid, o.fh, 0, 0, 0n);

  const g = pfs.lookup(ctx, ROOT, b('g'));
  const a = pfs.open(ctx, g.nodeid, K.O_WRONLY | K.O_APPEND);
  Buffer.from('XY').copy(Buffer.from(mem.buffer), 0);
  await pfs.write(ctx, g.nodeid, a.fh, 0, 2, [mem.seg(0, 2)], 0);
  t.equal(fs.readFileSync(path.join(share, 'g'), 'utf8'), 'abcXY', 'O_APPEND appends whatever the offset');
  pfs.release(ctx, g.nodeid, a.fh, 0, 0, 0n);

  pfs.init(K.FUSE_WRITEBACK_CACHE);
  const wb = pfs.open(ctx, g.nodeid, K.O_WRONLY | K.O_APPEND);
  const wf = pfs.session.getFile(wb.fh)!.flags;
  t.equal(wf & K.O_ACCMODE, K.O_RDWR, 'writeback: O_WRONLY becomes O_RDWR');
  t.equal(wf & K.O_APPEND, 0, 'writeback: O_APPEND dropped');
  pfs.release(ctx, g.nodeid, wb.fh, 0, 0, 0n);

  const d = pfs.mkdir(ctx, ROOT, b('d'), 0o755, 0);
  throwsErrno(t, () => pfs.open(ctx, d.nodeid, K.O_RDWR), K.EISDIR, 'dir for writing');
  const dr = pfs.open(ctx, d.nodeid, K.O_RDONLY);
  pfs.release(ctx, d.nodeid, dr.fh, 0, 0, 0n);
});

t.test('create and tmpfile', async (t) => {
  const { fs: pfs, share, registry } = setup(t, { exists: 'old' });
  const mem = new Memory(4096);
  t.teardown(() => mem.close());
  const c = pfs.create(ctx, ROOT, b('new'), K.S_IFREG | 0o640, K.O_RDWR | K.O_EXCL, 0);
  t.ok(fs.existsSync(path.join(share, 'new')));
  t.equal(fs.statSync(path.join(share, 'new')).mode & 0o777, 0o640);
  t.equal(c.entry.nodeid, 2);
  t.equal(c.open.fh, 2);
  t.equal(Number(c.entry.stat.readBigUInt64LE(STAT.ino)), fs.statSync(path.join(share, 'new')).ino);
  t.ok(registry.has('inode.2') && registry.has('file.2'));
  t.equal(pfs.lookup(ctx, ROOT, b('new')).nodeid, c.entry.nodeid, 'dedup with the created inode');
  t.equal(pfs.session.getInode(c.entry.nodeid)!.lookupCount, 2);
  Buffer.from('created!').copy(Buffer.from(mem.buffer), 0);
  await pfs.write(ctx, c.entry.nodeid, c.open.fh, 0, 8, [mem.seg(0, 8)], 0);
  t.equal(fs.readFileSync(path.join(share, 'new'), 'utf8'), 'created!');
  throwsErrno(t, () => pfs.create(ctx, ROOT, b('exists'), 0o644, K.O_RDWR | K.O_EXCL, 0), 17, 'O_EXCL on existing');
  const tr = pfs.create(ctx, ROOT, b('exists'), 0o644, K.O_RDWR | K.O_TRUNC, 0);
  t.equal(fs.readFileSync(path.join(share, 'exists'), 'utf8'), '', 'create without EXCL opens and truncates');
  pfs.release(ctx, tr.entry.nodeid, tr.open.fh, 0, 0, 0n);

  const tmp = pfs.tmpfile(ctx, ROOT, K.S_IFREG | 0o600, K.O_RDWR, 0);
  t.equal(Number(tmp.entry.stat.readBigUInt64LE(STAT.nlink)), 0, 'unnamed');
  Buffer.from('tmp data').copy(Buffer.from(mem.buffer), 100);
  await pfs.write(ctx, tmp.entry.nodeid, tmp.open.fh, 0, 8, [mem.seg(100, 8)], 0);
  const l = pfs.link(ctx, tmp.entry.nodeid, ROOT, b('from-tmp'));
  t.equal(l.nodeid, tmp.entry.nodeid);
  t.equal(fs.readFileSync(path.join(share, 'from-tmp'), 'utf8'), 'tmp data', 'linked tmpfile has the data');
  pfs.release(ctx, tmp.entry.nodeid, tmp.open.fh, 0, 0, 0n);
  pfs.release(ctx, c.entry.nodeid, c.open.fh, 0, 0, 0n);
});

t.test('write with FUSE_WRITE_KILL_SUIDGID clears setuid/setgid', async (t) => {
  const { fs: pfs, share } = setup(t, { f: 'data' });
  const mem = new Memory(4096);
  t.teardown(() => mem.close());
  const p = path.join(share, 'f');
  fs.chmodSync(p, 0o6755);
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const o = pfs.open(ctx, f.nodeid, K.O_RDWR);
  await pfs.write(ctx, f.nodeid, o.fh, 0, 1, [mem.seg(0, 1)], 0);
  t.equal(fs.statSync(p).mode & 0o7777, 0o6755, 'kept without the flag');
  await pfs.write(ctx, f.nodeid, o.fh, 0, 1, [mem.seg(0, 1)], K.FUSE_WRITE_KILL_SUIDGID);
  t.equal(fs.statSync(p).mode & 0o7777, 0o755, 'cleared with the flag');
  pfs.release(ctx, f.nodeid, o.fh, 0, 0, 0n);
});

t.test('fallocate, lseek SEEK_DATA/SEEK_HOLE, copy_file_range', async (t) => {
  const { fs: pfs, share } = setup(t, { src: 'copy me please', dst: '' });
  const mem = new Memory(65536);
  t.teardown(() => mem.close());
  const sparse = pfs.create(ctx, ROOT, b('sparse'), 0o644, K.O_RDWR, 0);
  const { nodeid } = sparse.entry;
  const fh = sparse.open.fh;
  await pfs.fallocate(ctx, nodeid, fh, 0, 0, 8192);
  t.equal(fs.statSync(path.join(share, 'sparse')).size, 8192, 'fallocate extends');
  await pfs.fallocate(ctx, nodeid, fh, C.FALLOC_FL_KEEP_SIZE, 8192, 8192);
  t.equal(fs.statSync(path.join(share, 'sparse')).size, 8192, 'KEEP_SIZE');
  pfs.setattr(ctx, nodeid, { valid: K.FATTR_SIZE | K.FATTR_FH, fh, size: 4 << 20, atime: 0, atimeNsec: 0, mtime: 0, mtimeNsec: 0, mode: 0, uid: 0, gid: 0 });
  mem.bytes.fill(0x61, 0, 65536);
  await pfs.write(ctx, nodeid, fh, 2 << 20, 65536, [mem.seg(0, 65536)], 0);
  t.equal(pfs.lseek(ctx, nodeid, fh, 1 << 20, C.SEEK_DATA), 2 << 20, 'SEEK_DATA skips the hole');
  t.equal(pfs.lseek(ctx, nodeid, fh, 2 << 20, C.SEEK_HOLE), (2 << 20) + 65536, 'SEEK_HOLE after the data');
  t.equal(pfs.lseek(ctx, nodeid, fh, 0, C.SEEK_END), 4 << 20);
  throwsErrno(t, () => pfs.lseek(ctx, nodeid, fh, (4 << 20) + 1, C.SEEK_DATA), 6 /* ENXIO */, 'no data past EOF');
  await rejectsErrno(t, pfs.fallocate(ctx, nodeid, fh, 0, 0, 0), K.EINVAL, 'zero length');

  const src = pfs.lookup(ctx, ROOT, b('src'));
  const dst = pfs.lookup(ctx, ROOT, b('dst'));
  const so = pfs.open(ctx, src.nodeid, K.O_RDONLY);
  const dw = pfs.open(ctx, dst.nodeid, K.O_WRONLY);
  const n = await pfs.copyFileRange(ctx, src.nodeid, so.fh, 5, dst.nodeid, dw.fh, 2, 7, 0);
  t.equal(n, 7);
  t.equal(fs.readFileSync(path.join(share, 'dst'), 'latin1'), '\0\0me plea');
  await rejectsErrno(t, pfs.copyFileRange(ctx, src.nodeid, so.fh, 0, dst.nodeid, 999, 0, 1, 0), K.EBADF);
  pfs.release(ctx, src.nodeid, so.fh, 0, 0, 0n);
  pfs.release(ctx, dst.nodeid, dw.fh, 0, 0, 0n);
  pfs.release(ctx, nodeid, fh, 0, 0, 0n);
});

t.test('release while a read is in flight defers the close', async (t) => {
  const { fs: pfs, registry } = setup(t, { f: 'x'.repeat(1 << 20) });
  const mem = new Memory(1 << 20);
  t.teardown(() => mem.close());
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const o = pfs.open(ctx, f.nodeid, K.O_RDONLY);
  const p = pfs.read(ctx, f.nodeid, o.fh, 0, 1 << 20, [mem.seg(0, 1 << 20)]);
  pfs.release(ctx, f.nodeid, o.fh, 0, 0, 0n);
  t.equal(pfs.session.getFile(o.fh), undefined, 'handle gone from the session at once');
  t.ok(registry.has(`file.${o.fh}`), 'fd kept while the read runs');
  t.equal(await p, 1 << 20);
  t.notOk(registry.has(`file.${o.fh}`), 'closed when it finished');
});
