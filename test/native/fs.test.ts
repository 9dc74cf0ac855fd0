// Synchronous filesystem calls, each on its own temp dir.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native, C, STAT, isNativeError } from '../../shared/native';

function openDir(dir: string): number {
  return native.openat(C.AT_FDCWD, dir, C.O_RDONLY | C.O_DIRECTORY, 0);
}

function stat(dirfd: number, p: string | Buffer, flags = C.AT_SYMLINK_NOFOLLOW): Buffer {
  const out = Buffer.alloc(STAT.SIZE);
  native.fstatat(dirfd, p, flags, out);
  return out;
}
const u64 = (b: Buffer, off: number): number => Number(b.readBigUInt64LE(off));

function names(dirfd: number): string[] {
  // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name\0
  const fd = native.openat(dirfd, '.', C.O_RDONLY | C.O_DIRECTORY, 0);
  const buf = Buffer.alloc(4096);
  const out: string[] = [];
  for (;;) {
    const n = native.getdents64(fd, buf);
    if (n === 0) break;
    for (let off = 0; off < n;) {
      const reclen = buf.readUInt16LE(off + 16);
      const end = buf.indexOf(0, off + 19);
      out.push(buf.subarray(off + 19, end).toString('latin1'));
      off += reclen;
    }
  }
  native.close(fd);
  return out.filter((x) => x !== '.' && x !== '..').sort();
}

t.test('openat, fstatat, errors', async (t) => {
  const dir = t.testdir({ 'a.txt': 'hello' });
  const d = openDir(dir);
  t.ok(native.fdFlags(d).cloexec);
  const f = native.openat(d, 'a.txt', C.O_RDONLY, 0);
  t.ok(native.fdFlags(f).cloexec, 'O_CLOEXEC forced');
  const st = stat(f, '', C.AT_EMPTY_PATH);
  const js = fs.statSync(path.join(dir, 'a.txt'), { bigint: true });
  t.equal(st.readBigUInt64LE(STAT.ino), js.ino);
  t.equal(st.readBigUInt64LE(STAT.dev), js.dev);
  t.equal(u64(st, STAT.size), 5);
  t.equal(u64(st, STAT.mode) & C.S_IFMT, C.S_IFREG);
  t.equal(u64(st, STAT.nlink), 1);
  t.equal(u64(st, STAT.uid), process.getuid!());
  t.equal(BigInt(u64(st, STAT.mtime)) * 1000000000n + BigInt(u64(st, STAT.mtimeNsec)), js.mtimeNs);
  try {
    native.openat(d, 'missing', C.O_RDONLY, 0);
    t.fail('should throw');
  } catch (e) {
    t.ok(isNativeError(e));
    if (isNativeError(e)) {
      t.equal(e.code, 'ENOENT');
      t.equal(e.errno, C.ENOENT);
      t.equal(e.syscall, 'openat');
      t.match(e.message, /^ENOENT: openat failed/);
    }
  }
  t.throws(() => native.openat(d, 'a.txt', C.O_CREAT | C.O_EXCL | C.O_WRONLY, 0o600), { code: 'EEXIST' });
  t.throws(() => stat(d, 'missing'), { code: 'ENOENT', syscall: 'fstatat' });
  t.throws(() => native.fstatat(d, 'a.txt', 0, Buffer.alloc(64)), { name: 'RangeError' }, 'out buffer too small');
  // O_TMPFILE and O_PATH.
  const tmp = native.openat(d, '.', C.O_TMPFILE | C.O_RDWR, 0o600);
  t.equal(u64(stat(tmp, '', C.AT_EMPTY_PATH), STAT.nlink), 0);
  const op = native.openat(d, 'a.txt', C.O_PATH, 0);
  t.ok((native.fdFlags(op).statusFlags & C.O_PATH) !== 0);
  for (const fd of [tmp, op, f, d]) native.close(fd);
});

t.test('openat2 RESOLVE_BENEATH / IN_ROOT / NO_SYMLINKS', async (t) => {
  const dir = t.testdir({ sub: { 'in.txt': 'in' }, 'x': 'outside-of-sub', 'up': t.fixture('symlink', '../x') });
  const sub = native.openat(C.AT_FDCWD, path.join(dir, 'sub'), C.O_RDONLY | C.O_DIRECTORY, 0);
  const ok = native.openat2(sub, 'in.txt', C.O_RDONLY, 0, C.RESOLVE_BENEATH);
  t.ok(native.fdFlags(ok).cloexec);
  native.close(ok);
  t.throws(() => native.openat2(sub, '../x', C.O_RDONLY, 0, C.RESOLVE_BENEATH), { code: 'EXDEV', syscall: 'openat2' });
  t.throws(() => native.openat2(sub, '/etc/passwd', C.O_RDONLY, 0, C.RESOLVE_BENEATH), { code: 'EXDEV' });
  t.throws(() => native.openat2(sub, '/proc/self/root/etc/passwd', C.O_RDONLY, 0, C.RESOLVE_IN_ROOT), { code: 'ENOENT' },
    'IN_ROOT treats / as the dirfd');
  // RESOLVE_IN_ROOT: "../in.txt" clamps at the root and finds sub/in.txt.
  const clamped = native.openat2(sub, '../in.txt', C.O_RDONLY, 0, C.RESOLVE_IN_ROOT);
  native.close(clamped);
  const d = openDir(dir);
  t.throws(() => native.openat2(d, 'up', C.O_RDONLY, 0, C.RESOLVE_NO_SYMLINKS), { code: 'ELOOP' });
  const created = native.openat2(sub, 'new.txt', C.O_CREAT | C.O_WRONLY, 0o640, C.RESOLVE_BENEATH);
  t.equal(u64(stat(created, '', C.AT_EMPTY_PATH), STAT.mode) & 0o777, 0o640 & ~process.umask());
  native.close(created);
  native.close(d);
  native.close(sub);
});

t.test('mkdirat, mknodat, symlinkat, readlinkat, linkat, unlinkat', async (t) => {
  const dir = t.testdir({ f: 'data' });
  const d = openDir(dir);
  native.mkdirat(d, 'sub', 0o755);
  t.equal(u64(stat(d, 'sub'), STAT.mode) & C.S_IFMT, C.S_IFDIR);
  t.throws(() => native.mkdirat(d, 'sub', 0o755), { code: 'EEXIST', syscall: 'mkdirat' });
  native.mknodat(d, 'fifo', C.S_IFIFO | 0o600, 0);
  t.equal(u64(stat(d, 'fifo'), STAT.mode) & C.S_IFMT, C.S_IFIFO);
  native.mknodat(d, 'reg', C.S_IFREG | 0o600, 0);
  t.equal(u64(stat(d, 'reg'), STAT.mode) & C.S_IFMT, C.S_IFREG);
  // Symlink with a non-UTF-8 target: bytes survive the round trip.
  const target = Buffer.from([0x66, 0xff, 0xfe, 0x2f, 0x61]);
  native.symlinkat(target, d, 'link');
  t.same(native.readlinkat(d, 'link'), target);
  native.symlinkat('f', d, Buffer.from('link2'));
  t.equal(native.readlinkat(d, 'link2').toString(), 'f');
  t.throws(() => native.readlinkat(d, 'f'), { code: 'EINVAL', syscall: 'readlinkat' });
  // Non-UTF-8 file name via Buffer.
  const odd = Buffer.from([0x6e, 0xe9, 0x00 + 0x41]);
  native.linkat(d, 'f', d, odd, 0);
  t.equal(u64(stat(d, 'f'), STAT.nlink), 2);
  t.ok(names(d).includes(odd.toString('latin1')), 'raw-bytes name is listed');
  native.linkat(d, 'link2', d, 'followed', C.AT_SYMLINK_FOLLOW);
  t.equal(u64(stat(d, 'followed'), STAT.mode) & C.S_IFMT, C.S_IFREG);
  native.unlinkat(d, odd, 0);
  native.unlinkat(d, 'followed', 0);
  t.equal(u64(stat(d, 'f'), STAT.nlink), 1);
  t.throws(() => native.unlinkat(d, 'sub', 0), { code: 'EISDIR' });
  native.unlinkat(d, 'sub', C.AT_REMOVEDIR);
  t.throws(() => stat(d, 'sub'), { code: 'ENOENT' });
  t.same(names(d), ['f', 'fifo', 'link', 'link2', 'reg']);
  native.close(d);
});

t.test('renameat2 flags', async (t) => {
  const dir = t.testdir({ a: 'A', b: 'B' });
  const d = openDir(dir);
  t.throws(() => native.renameat2(d, 'a', d, 'b', C.RENAME_NOREPLACE), { code: 'EEXIST', syscall: 'renameat2' });
  native.renameat2(d, 'a', d, 'b', C.RENAME_EXCHANGE);
  t.equal(fs.readFileSync(path.join(dir, 'a'), 'utf8'), 'B');
  t.equal(fs.readFileSync(path.join(dir, 'b'), 'utf8'), 'A');
  native.renameat2(d, 'a', d, 'c', 0);
  t.same(names(d), ['b', 'c']);
  native.close(d);
});

t.test('fchmod, fchmodat, fchownat, utimensat, ftruncate', async (t) => {
  const dir = t.testdir({ f: 'hello world', g: 'x' });
  const d = openDir(dir);
  const f = native.openat(d, 'f', C.O_RDWR, 0);
  native.fchmod(f, 0o604);
  t.equal(u64(stat(d, 'f'), STAT.mode) & 0o7777, 0o604);
  native.fchmodat(d, 'g', 0o640, 0);
  t.equal(u64(stat(d, 'g'), STAT.mode) & 0o7777, 0o640);
  t.throws(() => native.fchmod(f, 0o10000), { name: 'RangeError' });
  // chown to 1234:5678 (we run as root), then -1 leaves the uid alone.
  native.fchownat(d, 'g', 1234, 5678, 0);
  t.equal(u64(stat(d, 'g'), STAT.uid), 1234);
  t.equal(u64(stat(d, 'g'), STAT.gid), 5678);
  native.fchownat(d, 'g', -1, 42, C.AT_SYMLINK_NOFOLLOW);
  t.equal(u64(stat(d, 'g'), STAT.uid), 1234);
  t.equal(u64(stat(d, 'g'), STAT.gid), 42);
  native.fchownat(f, '', process.getuid!(), process.getgid!(), C.AT_EMPTY_PATH);
  // utimensat on a path, and on the fd itself with a null path.
  native.utimensat(d, 'f', 1000, 5, 2000, 6, 0);
  let st = stat(d, 'f');
  t.same([u64(st, STAT.atime), u64(st, STAT.atimeNsec), u64(st, STAT.mtime), u64(st, STAT.mtimeNsec)], [1000, 5, 2000, 6]);
  native.utimensat(f, null, 0, C.UTIME_OMIT, 3000, 7, 0);
  st = stat(d, 'f');
  t.same([u64(st, STAT.atime), u64(st, STAT.mtime), u64(st, STAT.mtimeNsec)], [1000, 3000, 7]);
  native.utimensat(f, null, 0, C.UTIME_NOW, 0, C.UTIME_OMIT, 0);
  st = stat(d, 'f');
  t.ok(Math.abs(u64(st, STAT.atime) - Date.now() / 1000) < 60, 'UTIME_NOW');
  t.equal(u64(st, STAT.mtime), 3000);
  t.throws(() => native.utimensat(f, null, 0, 1e9, 0, 0, 0), { name: 'RangeError' });
  native.ftruncate(f, 5);
  t.equal(fs.readFileSync(path.join(dir, 'f'), 'utf8'), 'hello');
  native.ftruncate(f, 10000);
  t.equal(u64(stat(d, 'f'), STAT.size), 10000);
  t.throws(() => native.ftruncate(d, 0), { code: 'EINVAL', syscall: 'ftruncate' });
  native.close(f);
  native.close(d);
});

t.test('fstatfs, getdents64, lseek', async (t) => {
  const dir = t.testdir({ one: '1', two: '22', three: { x: 'y' } });
  const d = openDir(dir);
  const sfs = native.fstatfs(d);
  const js = fs.statfsSync(dir);
  t.equal(sfs.bsize, js.bsize);
  t.equal(sfs.blocks, js.blocks);
  t.ok(sfs.namelen >= 255);
  t.same(names(d), ['one', 'three', 'two']);
  t.throws(() => native.getdents64(native.openat(d, 'one', C.O_RDONLY, 0), Buffer.alloc(1024)), { code: 'ENOTDIR' });
  const f = native.openat(d, 'two', C.O_RDWR, 0);
  t.equal(native.lseek(f, 0, C.SEEK_END), 2);
  t.equal(native.lseek(f, -1, C.SEEK_CUR), 1);
  t.equal(native.lseek(f, 0, C.SEEK_DATA), 0);
  t.equal(native.lseek(f, 0, C.SEEK_HOLE), 2);
  t.throws(() => native.lseek(f, 5, C.SEEK_DATA), { code: 'ENXIO', syscall: 'lseek' });
  t.throws(() => native.lseek(f, -10, C.SEEK_SET), { code: 'EINVAL' });
  // A bigint offset: every off_t, exactly, and the result is a bigint too.
  t.equal(native.lseek(f, 1n, C.SEEK_SET), 1n);
  t.equal(native.lseek(f, (1n << 40n) + 1n, C.SEEK_SET), (1n << 40n) + 1n); // files stop at s_maxbytes (ext4: 2^44)
  t.throws(() => native.lseek(f, -1n, C.SEEK_SET), { code: 'EINVAL', errno: 22, syscall: 'lseek' });
  native.close(f);
  // Directory cookies (ext4: 63-bit hashes) round-trip through lseek exactly.
  const dd = openDir(dir);
  const buf = Buffer.alloc(4096);
  const n = native.getdents64(dd, buf);
  // The largest d_off short of the end marker (2^63-1 on ext4).
  let cookie = 0n;
  for (let pos = 0; pos < n; pos += buf.readUInt16LE(pos + 16)) {
    const off = buf.readBigInt64LE(pos + 8);
    if (off > cookie && off < (1n << 63n) - 1n) cookie = off;
  }
  t.equal(native.lseek(dd, cookie, C.SEEK_SET), cookie, `lseek to d_off 0x${cookie.toString(16)}`);
  t.equal(native.lseek(dd, 0n, C.SEEK_CUR), cookie, 'the position is the cookie');
  t.ok(n > 0);
  if (fs.statfsSync(dir).type === 0xef53) t.ok(cookie > 1n << 53n, 'ext4: the cookie is a hash above 2^53');
  native.close(dd);
  native.close(d);
});

t.test('xattrs: set/get/list/remove on fd and path', async (t) => {
  const dir = t.testdir({ f: 'x' });
  const file = path.join(dir, 'f');
  const f = native.openat(C.AT_FDCWD, file, C.O_RDONLY, 0);
  native.setxattr(f, 'user.one', Buffer.from('value1'), 0);
  native.setxattr(file, 'user.two', Buffer.from([0, 1, 2]), C.XATTR_CREATE);
  t.throws(() => native.setxattr(file, 'user.two', Buffer.from('z'), C.XATTR_CREATE), { code: 'EEXIST', syscall: 'lsetxattr' });
  t.throws(() => native.setxattr(f, 'user.none', Buffer.from('z'), C.XATTR_REPLACE), { code: 'ENODATA', syscall: 'fsetxattr' });
  t.equal(native.getxattr(f, 'user.one', null), 6, 'size query');
  const buf = Buffer.alloc(16);
  t.equal(native.getxattr(file, 'user.one', buf), 6);
  t.equal(buf.subarray(0, 6).toString(), 'value1');
  t.equal(native.getxattr(f, Buffer.from('user.two'), buf), 3);
  t.same([...buf.subarray(0, 3)], [0, 1, 2]);
  t.throws(() => native.getxattr(f, 'user.one', Buffer.alloc(2)), { code: 'ERANGE', syscall: 'fgetxattr' });
  const lsize = native.listxattr(f, null);
  const lbuf = Buffer.alloc(lsize);
  t.equal(native.listxattr(file, lbuf), lsize);
  const list = lbuf.toString('latin1').split('\0').filter(Boolean).sort();
  t.same(list.filter((n) => n.startsWith('user.')), ['user.one', 'user.two']);
  native.removexattr(f, 'user.one');
  native.removexattr(file, 'user.two');
  t.throws(() => native.getxattr(file, 'user.one', null), { code: 'ENODATA', syscall: 'lgetxattr' });
  t.throws(() => native.removexattr(f, 'user.one'), { code: 'ENODATA', syscall: 'fremovexattr' });
  // l*xattr does not follow symlinks: user.* xattrs are not allowed on a symlink itself.
  fs.symlinkSync('f', path.join(dir, 'ln'));
  t.throws(() => native.setxattr(path.join(dir, 'ln'), 'user.x', Buffer.from('1'), 0), { code: 'EPERM' });
  native.close(f);
});

t.test('OFD locks conflict between two open file descriptions', async (t) => {
  const dir = t.testdir({ f: 'x'.repeat(100) });
  const file = path.join(dir, 'f');
  const a = native.openat(C.AT_FDCWD, file, C.O_RDWR, 0);
  const b = native.openat(C.AT_FDCWD, file, C.O_RDWR, 0);
  t.equal(native.fcntlLock(a, C.F_OFD_SETLK, C.F_WRLCK, C.SEEK_SET, 0, 10), null);
  const info = native.fcntlLock(b, C.F_OFD_GETLK, C.F_WRLCK, C.SEEK_SET, 5, 1);
  t.same(info, { type: C.F_WRLCK, whence: C.SEEK_SET, start: 0, len: 10, pid: -1 }, 'conflict reported, OFD pid -1');
  t.throws(() => native.fcntlLock(b, C.F_OFD_SETLK, C.F_RDLCK, C.SEEK_SET, 0, 1), { code: 'EAGAIN', syscall: 'fcntl' });
  t.same(native.fcntlLock(b, C.F_OFD_GETLK, C.F_WRLCK, C.SEEK_SET, 10, 5)?.type, C.F_UNLCK, 'no conflict past the range');
  native.fcntlLock(b, C.F_OFD_SETLK, C.F_WRLCK, C.SEEK_SET, 10, 5);
  // A dup shares the open file description, so it does not conflict with a.
  const a2 = native.dup(a);
  t.same(native.fcntlLock(a2, C.F_OFD_GETLK, C.F_WRLCK, C.SEEK_SET, 0, 10)?.type, C.F_UNLCK);
  native.fcntlLock(a, C.F_OFD_SETLK, C.F_UNLCK, C.SEEK_SET, 0, 10);
  t.equal(native.fcntlLock(b, C.F_OFD_SETLK, C.F_RDLCK, C.SEEK_SET, 0, 1), null);
  t.throws(() => native.fcntlLock(a, C.F_OFD_SETLKW, C.F_WRLCK, 0, 0, 1), { name: 'RangeError' }, 'SETLKW would block');
  for (const fd of [a, a2, b]) native.close(fd);
});

t.test('flock conflict', async (t) => {
  const dir = t.testdir({ f: 'x' });
  const file = path.join(dir, 'f');
  const a = native.openat(C.AT_FDCWD, file, C.O_RDONLY, 0);
  const b = native.openat(C.AT_FDCWD, file, C.O_RDONLY, 0);
  native.flock(a, C.LOCK_EX | C.LOCK_NB);
  t.throws(() => native.flock(b, C.LOCK_SH | C.LOCK_NB), { code: 'EAGAIN', errno: C.EWOULDBLOCK, syscall: 'flock' });
  native.flock(a, C.LOCK_UN);
  native.flock(b, C.LOCK_SH | C.LOCK_NB);
  native.flock(a, C.LOCK_SH | C.LOCK_NB);
  t.throws(() => native.flock(a, C.LOCK_EX | C.LOCK_NB), { code: 'EAGAIN' });
  native.close(a);
  native.close(b);
});

t.test('name_to_handle_at / open_by_handle_at round trip', async (t) => {
  const dir = t.testdir({ f: 'content' });
  const d = openDir(dir);
  const h = native.nameToHandleAt(d, 'f', 0);
  t.type(h.mountId, 'number');
  t.type(h.handleType, 'number');
  t.ok(Buffer.isBuffer(h.handle) && h.handle.length > 0 && h.handle.length <= C.MAX_HANDLE_SZ);
  const fd = native.openByHandleAt(d, h, C.O_RDONLY);
  t.ok(native.fdFlags(fd).cloexec);
  t.equal(stat(fd, '', C.AT_EMPTY_PATH).readBigUInt64LE(STAT.ino), stat(d, 'f').readBigUInt64LE(STAT.ino));
  // Survives a rename: handles name the inode, not the path.
  native.renameat2(d, 'f', d, 'g', 0);
  const fd2 = native.openByHandleAt(d, h, C.O_RDONLY);
  t.equal(fs.readFileSync(`/proc/self/fd/${fd2}`, 'utf8'), 'content');
  // A stale handle (inode gone) is ESTALE.
  native.unlinkat(d, 'g', 0);
  native.close(fd);
  native.close(fd2);
  t.throws(() => native.openByHandleAt(d, h, C.O_RDONLY), { code: 'ESTALE', syscall: 'open_by_handle_at' });
  t.throws(() => native.openByHandleAt(d, { ...h, handle: Buffer.alloc(0) }, 0), { name: 'RangeError' });
  t.throws(() => native.openByHandleAt(d, { ...h, handle: Buffer.alloc(C.MAX_HANDLE_SZ + 1) }, 0), { name: 'RangeError' });
  t.throws(() => native.openByHandleAt(d, { mountId: 0, handleType: 'x' as unknown as number, handle: h.handle }, 0), { name: 'TypeError' });
  const hd = native.nameToHandleAt(d, '', C.AT_EMPTY_PATH);
  const dd = native.openByHandleAt(d, hd, C.O_RDONLY | C.O_DIRECTORY);
  native.close(dd);
  native.close(d);
});

t.test('fstatHandle: an fd\'s attributes and handle in one call, as fstatat and nameToHandleAt give them', async (t) => {
  const dir = t.testdir({ f: 'content' });
  const d = openDir(dir);
  const fd = native.openat(d, 'f', C.O_PATH | C.O_NOFOLLOW, 0);
  const st = Buffer.alloc(128);
  const h = Buffer.alloc(8 + C.MAX_HANDLE_SZ);
  const n = native.fstatHandle(fd, st, h);
  const want = native.nameToHandleAt(fd, '', C.AT_EMPTY_PATH);
  t.equal(n, want.handle.length, 'the handle\'s length');
  t.same([h.readInt32LE(0), h.readInt32LE(4), h.subarray(8, 8 + n)], [want.mountId, want.handleType, want.handle], 'mount id, type, bytes');
  t.same(st, stat(fd, '', C.AT_EMPTY_PATH | C.AT_SYMLINK_NOFOLLOW), 'the stat fstatat writes');
  // No handle (an eventfd's filesystem exports none): -errno, the stat still written.
  const ev = native.eventfd(0, 0);
  st.fill(0);
  t.ok(native.fstatHandle(ev, st, h) < 0, 'an eventfd has no handle: -errno');
  t.not(st.readBigUInt64LE(STAT.ino), 0n, 'its stat is written');
  t.throws(() => native.fstatHandle(987654, st, h), { code: 'EBADF', syscall: 'fstatat' });
  t.throws(() => native.fstatHandle(fd, Buffer.alloc(64), h), { name: 'RangeError' });
  t.throws(() => native.fstatHandle(fd, st, Buffer.alloc(8)), { name: 'RangeError' });
  for (const x of [ev, fd, d]) native.close(x);
});

t.test('fstatHandleAt: a name\'s attributes and handle without opening it, no symlink followed', async (t) => {
  const dir = t.testdir({ f: 'content', link: t.fixture('symlink', 'f') });
  const d = openDir(dir);
  const st = Buffer.alloc(128);
  const h = Buffer.alloc(8 + C.MAX_HANDLE_SZ);
  for (const name of ['f', 'link']) {
    const n = native.fstatHandleAt(d, Buffer.from(name), st, h);
    const want = native.nameToHandleAt(d, name, 0);
    t.equal(n, want.handle.length, `${name}: the handle's length`);
    t.same([h.readInt32LE(0), h.readInt32LE(4), h.subarray(8, 8 + n)], [want.mountId, want.handleType, want.handle], `${name}: mount id, type, bytes`);
    t.same(st, stat(d, name, C.AT_SYMLINK_NOFOLLOW), `${name}: the stat fstatat writes (the link's own for the link)`);
  }
  t.throws(() => native.fstatHandleAt(d, 'nope', st, h), { code: 'ENOENT', syscall: 'fstatat' });
  t.throws(() => native.fstatHandleAt(987654, 'f', st, h), { code: 'EBADF', syscall: 'fstatat' });
  t.throws(() => native.fstatHandleAt(d, 'f', Buffer.alloc(64), h), { name: 'RangeError' });
  t.throws(() => native.fstatHandleAt(d, 'f', st, Buffer.alloc(8)), { name: 'RangeError' });
  t.throws(() => native.fstatHandleAt(d, 'a\0b', st, h), { code: 'EINVAL' }, 'a NUL in the name');
  native.close(d);
});

t.test('sameHandleAt compares a name\'s handle natively', async (t) => {
  const dir = t.testdir({ f: 'a', g: 'b' });
  const d = openDir(dir);
  const h = native.nameToHandleAt(d, 'f', 0);
  t.equal(native.sameHandleAt(d, 'f', 0, h.mountId, h.handleType, h.handle), true);
  t.equal(native.sameHandleAt(d, Buffer.from('f'), 0, h.mountId, h.handleType, h.handle), true, 'a Buffer name');
  t.equal(native.sameHandleAt(d, 'g', 0, h.mountId, h.handleType, h.handle), false, 'another inode');
  t.equal(native.sameHandleAt(d, 'f', 0, h.mountId + 1, h.handleType, h.handle), false, 'another mount id');
  t.equal(native.sameHandleAt(d, 'f', 0, h.mountId, h.handleType + 1, h.handle), false, 'another type');
  t.equal(native.sameHandleAt(d, 'f', 0, h.mountId, h.handleType, h.handle.subarray(1)), false, 'another length');
  t.throws(() => native.sameHandleAt(d, 'nope', 0, h.mountId, h.handleType, h.handle), { code: 'ENOENT', syscall: 'name_to_handle_at' });
  t.throws(() => native.sameHandleAt(d, 'f', 0, h.mountId, h.handleType, 'x' as unknown as Buffer), { name: 'TypeError' });
  native.close(d);
});

t.test('fd helpers: dup, setNonBlocking, fdFlags, close', async (t) => {
  const fd = native.eventfd(0, 0);
  t.equal(native.fdFlags(fd).statusFlags & C.O_NONBLOCK, 0);
  native.setNonBlocking(fd, true);
  t.not(native.fdFlags(fd).statusFlags & C.O_NONBLOCK, 0);
  const d = native.dup(fd);
  t.not(d, fd);
  t.ok(native.fdFlags(d).cloexec, 'F_DUPFD_CLOEXEC');
  t.not(native.fdFlags(d).statusFlags & C.O_NONBLOCK, 0, 'shares status flags');
  native.setNonBlocking(d, false);
  t.equal(native.fdFlags(fd).statusFlags & C.O_NONBLOCK, 0);
  native.close(d);
  t.throws(() => native.fdFlags(d), { code: 'EBADF', syscall: 'fcntl' });
  t.throws(() => native.close(d), { code: 'EBADF', syscall: 'close' });
  native.close(fd);
});

t.test('setFsIds changes the fs credentials of the JS thread', async (t) => {
  const dir = t.testdir();
  fs.chmodSync(dir, 0o777);
  const d = openDir(dir);
  const prev = native.setFsIds(1234, 4321);
  t.same(prev, [process.getuid!(), process.getgid!()]);
  let f = -1;
  try {
    f = native.openat(d, 'owned', C.O_CREAT | C.O_WRONLY, 0o600);
    native.mkdirat(d, 'odir', 0o700);
  } finally {
    t.same(native.setFsIds(prev[0], prev[1]), [1234, 4321], 'returns the ids that were set');
  }
  native.close(f);
  const st = stat(d, 'owned');
  t.equal(u64(st, STAT.uid), 1234);
  t.equal(u64(st, STAT.gid), 4321);
  t.equal(u64(stat(d, 'odir'), STAT.uid), 1234);
  t.same(native.setFsIds(-1, -1), prev, '-1 queries without changing');
  native.close(d);
});

t.test('raiseNoFileLimit', async (t) => {
  const limits = fs.readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
  t.ok(limits);
  // "unlimited" parses as NaN: treat it as no bound.
  const [soft0, hard0] = (limits ?? '').split(/\s+/).slice(3, 5).map((x) => (x === 'unlimited' ? Infinity : Number(x)));
  t.ok(Number.isFinite(soft0), 'a finite soft limit');
  const r = native.raiseNoFileLimit(soft0 - 1);
  t.equal(r, soft0, 'never lowers');
  const wanted = soft0 + 1000;
  const r2 = native.raiseNoFileLimit(wanted);
  t.ok(r2 >= Math.min(hard0, wanted), 'soft limit raised to min(hard, wanted) at least');
  t.ok(r2 <= Math.max(wanted, soft0), 'and not beyond what was asked');
  t.throws(() => native.raiseNoFileLimit(-1), { name: 'RangeError' });
});
