// Regular-file behaviour through the test frontend, checked against the host directory.
import t from 'tap';
import * as fs from 'node:fs';
import { native, C } from '../../shared/native';
import { selectedBackends } from './backend';
import { openSession, isReg, isDir, isLnk, pattern, unexpectedErrors, expectErrno, checkErrno } from './helpers';
import * as F from './fuse_proto';

const ROOT = F.FUSE_ROOT_ID;
const { ENOENT, EEXIST, ENOSYS, ENOTDIR, EISDIR, EPERM, EIO } = F.Errno;

function hostLseek(file: string, off: number, whence: number): number {
  const fd = native.openat(C.AT_FDCWD, file, C.O_RDONLY, 0);
  try { return native.lseek(fd, off, whence); } catch (e) { return -(e as { errno: number }).errno; } finally { native.close(fd); }
}

for (const kind of selectedBackends()) {
  t.test(kind, async (t) => {
    t.test('lookup and getattr of files created on the host', async (t) => {
      const s = await openSession(t, kind, {
        setup: (sh) => {
          fs.writeFileSync(`${sh}/a.txt`, 'hello from the host\n', { mode: 0o640 });
          fs.mkdirSync(`${sh}/dir`);
          fs.writeFileSync(`${sh}/dir/b`, Buffer.alloc(10_000, 7));
          fs.symlinkSync('a.txt', `${sh}/ln`);
          fs.utimesSync(`${sh}/a.txt`, new Date('2001-02-03T04:05:06.789Z'), new Date('2002-03-04T05:06:07.891Z'));
        },
      });
      const st = fs.statSync(s.host('a.txt'), { bigint: true });
      const e = await s.fuse.lookup(ROOT, 'a.txt');
      t.ok(e.nodeid > 1n, 'nodeid assigned');
      t.ok(isReg(e.attr), 'regular file');
      t.equal(e.attr.ino, st.ino, 'ino');
      t.equal(e.attr.size, st.size, 'size');
      t.equal(e.attr.mode, Number(st.mode), 'mode incl. type');
      t.equal(e.attr.nlink, Number(st.nlink), 'nlink');
      t.equal(e.attr.uid, Number(st.uid), 'uid');
      t.equal(e.attr.gid, Number(st.gid), 'gid');
      t.equal(e.attr.mtime, st.mtimeNs / 1_000_000_000n, 'mtime seconds');
      t.equal(BigInt(e.attr.mtimensec), st.mtimeNs % 1_000_000_000n, 'mtime nanoseconds');
      t.equal(e.attr.atime, st.atimeNs / 1_000_000_000n, 'atime seconds');
      t.equal(e.attr.blocks, st.blocks, 'blocks');
      const a = await s.fuse.getattr(e.nodeid);
      t.same(a.attr, e.attr, 'getattr agrees with lookup');
      const again = await s.fuse.lookup(ROOT, 'a.txt');
      t.equal(again.nodeid, e.nodeid, 'second lookup returns the same nodeid');
      const d = await s.fuse.lookup(ROOT, 'dir');
      t.ok(isDir(d.attr), 'dir is a directory');
      const b = await s.fuse.lookup(d.nodeid, 'b');
      t.equal(b.attr.size, 10_000n, 'nested file size');
      const ln = await s.fuse.lookup(ROOT, 'ln');
      t.ok(isLnk(ln.attr), 'symlink is not followed');
      t.equal(ln.attr.size, 5n, 'symlink size is the target length');
      await expectErrno(t, kind, s.fuse.lookup(ROOT, 'missing'), ENOENT, 'missing → ENOENT');
      await expectErrno(t, kind, s.fuse.lookup(e.nodeid, 'x'), ENOTDIR, 'lookup under a file → ENOTDIR');
      t.same(unexpectedErrors(s), []);
    });

    t.test('create, write, read, flush, release — data checked on the host', async (t) => {
      const s = await openSession(t, kind);
      const c = await s.fuse.create(ROOT, 'new.txt', F.O.RDWR, 0o600);
      t.ok(isReg(c.entry.attr), 'created a regular file');
      t.ok(fs.existsSync(s.host('new.txt')), 'file exists on the host');
      t.equal(fs.statSync(s.host('new.txt')).mode & 0o7777, 0o600, 'mode 0600 on the host');
      const n = c.entry.nodeid;
      const fh = c.open.fh;
      t.equal(await s.fuse.write(n, fh, 0, Buffer.from('hello world')), 11, 'wrote 11 bytes');
      t.equal(await s.fuse.write(n, fh, 100, Buffer.from('tail')), 4, 'wrote past a hole');
      t.same(fs.readFileSync(s.host('new.txt')), Buffer.concat([Buffer.from('hello world'), Buffer.alloc(89), Buffer.from('tail')]), 'host sees the data');
      t.same(await s.fuse.read(n, fh, 6, 5), Buffer.from('world'), 'read back');
      t.same(await s.fuse.read(n, fh, 100, 100), Buffer.from('tail'), 'short read at EOF');
      t.same(await s.fuse.read(n, fh, 1000, 10), Buffer.alloc(0), 'read past EOF is empty');
      fs.writeFileSync(s.host('new.txt'), 'changed on host');
      t.same(await s.fuse.read(n, fh, 0, 100), Buffer.from('changed on host'), 'host changes visible (cache=none)');
      await s.fuse.flush(n, fh);
      await s.fuse.fsync(n, fh, false);
      await s.fuse.fsync(n, fh, true);
      await s.fuse.release(n, fh, F.O.RDWR);
      await expectErrno(t, kind, s.fuse.create(ROOT, 'new.txt', F.O.RDWR | F.O.EXCL), EEXIST, 'O_EXCL create of an existing name → EEXIST');
      const o = await s.fuse.open(n, F.O.RDONLY);
      t.same(await s.fuse.read(n, o.fh, 0, 7), Buffer.from('changed'), 'reopen and read');
      await s.fuse.release(n, o.fh, F.O.RDONLY);
      const tr = await s.fuse.open(n, F.O.WRONLY | F.O.TRUNC);
      t.equal(fs.statSync(s.host('new.txt')).size, 0, 'open O_TRUNC truncates');
      await s.fuse.release(n, tr.fh, F.O.WRONLY);
      const ap = await s.fuse.open(n, F.O.WRONLY | F.O.APPEND);
      await s.fuse.write(n, ap.fh, 0, Buffer.from('ab'));
      await s.fuse.write(n, ap.fh, 0, Buffer.from('cd'));
      t.equal(fs.readFileSync(s.host('new.txt'), 'utf8'), 'abcd', 'O_APPEND writes append');
      await s.fuse.release(n, ap.fh, F.O.WRONLY);
      t.same(unexpectedErrors(s), []);
    });

    t.test('mkdir, mknod, tmpfile', async (t) => {
      const s = await openSession(t, kind);
      const d = await s.fuse.mkdir(ROOT, 'sub', 0o750);
      t.ok(isDir(d.attr), 'mkdir reply is a directory');
      t.equal(fs.statSync(s.host('sub')).mode & 0o7777, 0o750, 'host dir mode');
      t.equal(d.attr.ino, BigInt(fs.statSync(s.host('sub')).ino), 'ino matches');
      await expectErrno(t, kind, s.fuse.mkdir(ROOT, 'sub'), EEXIST, 'mkdir existing → EEXIST');
      const fifo = await s.fuse.mknod(d.nodeid, 'fifo', F.S_IFIFO | 0o640);
      t.equal(fifo.attr.mode & F.S_IFMT, F.S_IFIFO, 'FIFO created');
      t.ok(fs.statSync(s.host('sub/fifo')).isFIFO(), 'host sees a FIFO');
      const reg = await s.fuse.mknod(d.nodeid, 'reg', F.S_IFREG | 0o644);
      t.ok(isReg(reg.attr), 'mknod S_IFREG');
      t.ok(fs.statSync(s.host('sub/reg')).isFile(), 'host sees a file');
      const before = fs.readdirSync(s.host('sub')).sort();
      const r = await s.fuse.request(F.Op.TMPFILE, d.nodeid, [F.createIn(F.O.RDWR, 0o600, 0), F.cstr('/')],
        { replySize: F.ENTRY_OUT_SIZE + F.OPEN_OUT_SIZE });
      if (kind === 'c-virtiofsd' && r.error === ENOSYS) {
        t.comment('C virtiofsd: FUSE_TMPFILE → ENOSYS');
      } else {
        t.equal(r.error, 0, 'TMPFILE succeeds');
        const co = F.decodeCreateOut(r.body);
        t.ok(isReg(co.entry.attr), 'tmpfile is a regular file');
        t.equal(co.entry.attr.nlink, 0, 'tmpfile has no name');
        await s.fuse.write(co.entry.nodeid, co.open.fh, 0, Buffer.from('tmp'));
        t.same(await s.fuse.read(co.entry.nodeid, co.open.fh, 0, 10), Buffer.from('tmp'), 'tmpfile data');
        await s.fuse.release(co.entry.nodeid, co.open.fh, F.O.RDWR);
      }
      t.same(fs.readdirSync(s.host('sub')).sort(), before, 'tmpfile added no name');
    });

    t.test('setattr: mode, size, times', async (t) => {
      const s = await openSession(t, kind, { setup: (sh) => fs.writeFileSync(`${sh}/f`, Buffer.alloc(5000, 1), { mode: 0o644 }) });
      const e = await s.fuse.lookup(ROOT, 'f');
      let a = await s.fuse.setattr(e.nodeid, { valid: F.FATTR.MODE, mode: 0o600 });
      t.equal(a.attr.mode & 0o7777, 0o600, 'reply mode');
      t.equal(fs.statSync(s.host('f')).mode & 0o7777, 0o600, 'host mode');
      a = await s.fuse.setattr(e.nodeid, { valid: F.FATTR.SIZE, size: 100 });
      t.equal(a.attr.size, 100n, 'reply size');
      t.equal(fs.statSync(s.host('f')).size, 100, 'host size after truncate');
      a = await s.fuse.setattr(e.nodeid, { valid: F.FATTR.SIZE, size: 1 << 20 });
      t.equal(fs.statSync(s.host('f')).size, 1 << 20, 'host size after extend');
      a = await s.fuse.setattr(e.nodeid, {
        valid: F.FATTR.ATIME | F.FATTR.MTIME, atime: 1_000_000_000, atimensec: 123_456_789,
        mtime: 1_100_000_000, mtimensec: 987_654_321,
      });
      const st = fs.statSync(s.host('f'), { bigint: true });
      t.equal(st.atimeNs, 1_000_000_000_123_456_789n, 'host atime');
      t.equal(st.mtimeNs, 1_100_000_000_987_654_321n, 'host mtime');
      t.equal(a.attr.mtime, 1_100_000_000n, 'reply mtime');
      t.equal(a.attr.mtimensec, 987_654_321, 'reply mtime nsec');
      const now = BigInt(Math.floor(Date.now() / 1000));
      a = await s.fuse.setattr(e.nodeid, { valid: F.FATTR.MTIME | F.FATTR.MTIME_NOW });
      t.ok(a.attr.mtime >= now - 5n, 'MTIME_NOW sets the current time');
      t.equal(fs.statSync(s.host('f'), { bigint: true }).atimeNs, 1_000_000_000_123_456_789n, 'atime untouched');
      // Through an open file handle.
      const o = await s.fuse.open(e.nodeid, F.O.RDWR);
      a = await s.fuse.setattr(e.nodeid, { valid: F.FATTR.SIZE | F.FATTR.FH, fh: o.fh, size: 42 });
      t.equal(fs.statSync(s.host('f')).size, 42, 'ftruncate via fh');
      const ga = await s.fuse.getattr(e.nodeid, o.fh);
      t.equal(ga.attr.size, 42n, 'getattr with GETATTR_FH');
      await s.fuse.release(e.nodeid, o.fh, F.O.RDWR);
      t.same(unexpectedErrors(s), []);
    });

    t.test('1 MiB write and read spread over many descriptors, direct and indirect', async (t) => {
      const s = await openSession(t, kind, { negotiate: { queueSize: 1024, memoryMiB: 64 } });
      const maxWrite = Math.min(s.init!.maxWrite, 1 << 20);
      const c = await s.fuse.create(ROOT, 'big', F.O.RDWR);
      const n = c.entry.nodeid;
      const data = pattern(1 << 20, 42);
      // 4 KiB pages, like the Linux driver: 2 + 256 descriptors for a 1 MiB write.
      for (let off = 0; off < data.length; off += maxWrite) {
        const chunk = data.subarray(off, Math.min(off + maxWrite, data.length));
        t.equal(await s.fuse.write(n, c.open.fh, off, chunk, { splitIn: true }), chunk.length, `write at ${off}`);
      }
      t.ok(fs.readFileSync(s.host('big')).equals(data), 'host has the 1 MiB');
      const maxRead = Math.min(s.init!.maxPages ? s.init!.maxPages * 4096 : 1 << 20, 1 << 20);
      const parts: Buffer[] = [];
      for (let off = 0; off < data.length; off += maxRead) {
        parts.push(await s.fuse.read(n, c.open.fh, off, Math.min(maxRead, data.length - off), { splitOut: true }));
      }
      t.ok(Buffer.concat(parts).equals(data), 'read back 1 MiB in 4 KiB writable descriptors');
      const odd = await s.fuse.read(n, c.open.fh, 12345, 70_000, { splitOut: 999 });
      t.ok(odd.equals(data.subarray(12345, 12345 + 70_000)), 'odd-sized descriptors, unaligned offset');
      // Indirect.
      if (s.negotiated.ackedFeatures & (1n << 28n)) {
        const d2 = pattern(256 * 1024, 7);
        t.equal(await s.fuse.write(n, c.open.fh, 4096, d2, { splitIn: true, indirect: true }), d2.length, 'indirect write');
        const back = await s.fuse.read(n, c.open.fh, 4096, d2.length, { splitOut: true, indirect: true });
        t.ok(back.equals(d2), 'indirect read');
        const e = await s.fuse.lookup(ROOT, 'big', { indirect: true });
        t.equal(e.nodeid, n, 'indirect lookup');
        const hostNow = fs.readFileSync(s.host('big'));
        t.ok(hostNow.subarray(4096, 4096 + d2.length).equals(d2), 'host sees the indirect write');
      } else {
        t.fail('backend does not offer VIRTIO_RING_F_INDIRECT_DESC');
      }
      // Requests split at arbitrary byte boundaries, headers included.
      const w = await s.fuse.write(n, c.open.fh, 0, Buffer.from('split header'), { splitIn: 7, splitOut: 3 });
      t.equal(w, 12, 'write with the header split into 7-byte descriptors');
      const e2 = await s.fuse.lookup(ROOT, 'big', { splitIn: 5, splitOut: 11 });
      t.equal(e2.nodeid, n, 'lookup with every struct split');
      const one = await s.fuse.read(n, c.open.fh, 0, 12, { single: true });
      t.same(one, Buffer.from('split header'), 'one readable and one writable descriptor');
      await s.fuse.release(n, c.open.fh, F.O.RDWR);
      t.same(s.fe.queues.flatMap((q) => q.violations), []);
      t.same(unexpectedErrors(s), []);
    });

    t.test('fallocate, lseek SEEK_DATA/SEEK_HOLE, copy_file_range', async (t) => {
      const s = await openSession(t, kind);
      const c = await s.fuse.create(ROOT, 'f', F.O.RDWR);
      const n = c.entry.nodeid;
      const fh = c.open.fh;
      await s.fuse.fallocate(n, fh, 0, 1 << 20);
      t.equal(fs.statSync(s.host('f')).size, 1 << 20, 'fallocate extends the file');
      await s.fuse.write(n, fh, 0, Buffer.alloc(8192, 1));
      await s.fuse.fallocate(n, fh, 0, 4096, F.FALLOC_FL_PUNCH_HOLE | F.FALLOC_FL_KEEP_SIZE);
      const hb = fs.readFileSync(s.host('f'));
      t.ok(hb.subarray(0, 4096).equals(Buffer.alloc(4096)), 'punched range reads as zeros');
      t.ok(hb.subarray(4096, 8192).equals(Buffer.alloc(4096, 1)), 'data after the hole kept');
      t.equal(hb.length, 1 << 20, 'KEEP_SIZE');
      // A sparse file: data at [64K, 68K) and [512K, 516K) in a 1 MiB file.
      const sp = await s.fuse.create(ROOT, 'sparse', F.O.RDWR);
      await s.fuse.setattr(sp.entry.nodeid, { valid: F.FATTR.SIZE, size: 1 << 20 });
      await s.fuse.write(sp.entry.nodeid, sp.open.fh, 65536, Buffer.alloc(4096, 2));
      await s.fuse.write(sp.entry.nodeid, sp.open.fh, 524288, Buffer.alloc(4096, 3));
      for (const [off, whence, name] of [[0, F.SEEK_DATA, 'DATA'], [0, F.SEEK_HOLE, 'HOLE'], [70_000, F.SEEK_HOLE, 'HOLE'],
        [70_000, F.SEEK_DATA, 'DATA'], [600_000, F.SEEK_HOLE, 'HOLE'], [100, F.SEEK_SET, 'SET'], [100, F.SEEK_END, 'END']] as const) {
        const want = hostLseek(s.host('sparse'), off, whence);
        const got = await s.fuse.lseek(sp.entry.nodeid, sp.open.fh, off, whence);
        t.equal(got, BigInt(want), `SEEK_${name} from ${off} = ${want}, as on the host`);
      }
      await expectErrno(t, kind, s.fuse.lseek(sp.entry.nodeid, sp.open.fh, 600_000, F.SEEK_DATA), 6 /* ENXIO */, 'SEEK_DATA past the last data → ENXIO');
      // copy_file_range between two files.
      const src = pattern(200_000, 3);
      fs.writeFileSync(s.host('src'), src);
      const se = await s.fuse.lookup(ROOT, 'src');
      const so = await s.fuse.open(se.nodeid, F.O.RDONLY);
      const copied = await s.fuse.copyFileRange(se.nodeid, so.fh, 10, n, fh, 20, 100_000);
      t.equal(copied, 100_000, 'copied 100000 bytes');
      const dst = fs.readFileSync(s.host('f'));
      t.ok(dst.subarray(20, 100_020).equals(src.subarray(10, 100_010)), 'destination holds the source range');
      await s.fuse.release(se.nodeid, so.fh, F.O.RDONLY);
      await s.fuse.release(sp.entry.nodeid, sp.open.fh, F.O.RDWR);
      await s.fuse.release(n, fh, F.O.RDWR);
      t.same(unexpectedErrors(s), []);
    });

    t.test('errors: ENOENT, EEXIST, ENOTDIR, EISDIR, unknown opcode → ENOSYS', async (t) => {
      const s = await openSession(t, kind, { setup: (sh) => { fs.writeFileSync(`${sh}/file`, 'x'); fs.mkdirSync(`${sh}/dir`); } });
      await expectErrno(t, kind, s.fuse.lookup(ROOT, 'nope'), ENOENT, 'lookup(ROOT, nope)');
      // The kernel always looks a name up before UNLINK/RMDIR/RENAME; the C virtiofsd answers EIO
      // for names it has no inode for. Ours must give the filesystem's answer.
      await expectErrno(t, kind, s.fuse.unlink(ROOT, 'nope'), ENOENT, 'unlink of a missing name', [EIO]);
      await expectErrno(t, kind, s.fuse.rmdir(ROOT, 'nope'), ENOENT, 'rmdir of a missing name', [EIO]);
      await expectErrno(t, kind, s.fuse.rename(ROOT, 'nope', ROOT, 'other'), ENOENT, 'rename of a missing name', [EIO]);
      await expectErrno(t, kind, s.fuse.rmdir(ROOT, 'file'), ENOTDIR, 'rmdir of a file not looked up yet', [EIO]);
      await s.fuse.lookup(ROOT, 'file');
      await s.fuse.lookup(ROOT, 'dir');
      await expectErrno(t, kind, s.fuse.mkdir(ROOT, 'file'), EEXIST, 'mkdir(ROOT, file)');
      await expectErrno(t, kind, s.fuse.mknod(ROOT, 'dir', F.S_IFREG | 0o644), EEXIST, 'mknod(ROOT, dir, F.S_IFREG | 0o644)');
      await expectErrno(t, kind, s.fuse.symlink(ROOT, 'file', 'x'), EEXIST, 'symlink(ROOT, file, x)');
      await expectErrno(t, kind, s.fuse.rmdir(ROOT, 'file'), ENOTDIR, 'rmdir(ROOT, file)');
      const unl = await s.fuse.request(F.Op.UNLINK, ROOT, [F.cstr('dir')]);
      t.ok(unl.error === EISDIR || unl.error === EPERM, `unlink of a dir → EISDIR/EPERM (${unl.error})`);
      t.ok(fs.existsSync(s.host('dir')), 'dir still there');
      const dir = await s.fuse.lookup(ROOT, 'dir');
      const od = await s.fuse.request(F.Op.OPEN, dir.nodeid, [F.openIn(F.O.RDWR)], { replySize: F.OPEN_OUT_SIZE });
      t.ok(od.error !== 0, `open O_RDWR of a directory fails (${od.error})`);
      // (4096 is CUSE_INIT, which the C virtiofsd's libfuse handles: see hostile.test.ts.)
      for (const op of [0, 7, 19, 52, 99, 1000, 5000, 0x7fffffff, 0xffffffff]) {
        const r = await s.fuse.request(op, ROOT, [Buffer.alloc(16)], { replySize: 64 });
        checkErrno(t, kind, r.error, ENOSYS, `opcode ${op}`);
      }
      // BMAP / IOCTL / POLL / SETUPMAPPING: not supported by a passthrough without DAX or ioctls.
      for (const op of [F.Op.SETUPMAPPING, F.Op.REMOVEMAPPING]) {
        const r = await s.fuse.request(op, ROOT, [Buffer.alloc(40)], { replySize: 64 });
        t.ok(r.error !== 0 && r.error !== null, `opcode ${op} fails with an errno (${r.error})`);
      }
      t.ok(await s.fuse.serving(), 'still serving');
      t.same(unexpectedErrors(s), []);
    });

    t.test('statfs, syncfs, access', async (t) => {
      const s = await openSession(t, kind);
      const st = await s.fuse.statfs();
      const h = fs.statfsSync(s.shared);
      t.equal(st.bsize, h.bsize, 'bsize');
      t.equal(st.blocks, BigInt(h.blocks), 'blocks');
      t.equal(st.files, BigInt(h.files), 'files');
      t.ok(st.namelen >= 255, 'namelen');
      const r = await s.fuse.request(F.Op.SYNCFS, ROOT, [F.syncfsIn()]);
      t.equal(r.error, 0, 'SYNCFS succeeds');
      for (const mask of [0 /* F_OK */, 4 /* R_OK */, 7 /* RWX */]) {
        const a = await s.fuse.request(F.Op.ACCESS, ROOT, [F.accessIn(mask)]);
        // The C virtiofsd has no ACCESS handler (the kernel then stops sending it).
        checkErrno(t, kind, a.error, 0, `ACCESS mask ${mask}`, [ENOSYS]);
      }
    });

    t.test('opendir / fsyncdir / releasedir', async (t) => {
      const s = await openSession(t, kind);
      const od = await s.fuse.opendir(ROOT);
      await s.fuse.fsyncdir(ROOT, od.fh, false);
      await s.fuse.releasedir(ROOT, od.fh);
      t.pass('directory handle lifecycle');
      const err = await s.fuse.request(F.Op.OPENDIR, 0xdead_beefn, [F.openIn(F.O.RDONLY)], { replySize: F.OPEN_OUT_SIZE });
      t.ok(err.error !== 0, `opendir of an unknown nodeid fails (${err.error}) instead of crashing`);
      t.ok(await s.fuse.serving(), 'still serving');
    });
  });
}
