// Argument checking (TypeError/RangeError with codes), EINVAL for NUL in paths, the constants
// table, errnoName, and that no fd of ours leaks into a child process.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { execFileSync } from 'node:child_process';
import { native, C, isNativeError } from '../../shared/native';

type AnyFn = (...args: unknown[]) => unknown;
const raw = native as unknown as Record<string, AnyFn>;

t.test('wrong types throw TypeError ERR_INVALID_ARG_TYPE', async (t) => {
  const cases: Array<[string, unknown[]]> = [
    ['close', ['1']],
    ['close', []],
    ['dup', [null]],
    ['setNonBlocking', [0, 'yes']],
    ['fdFlags', [{}]],
    ['unixListen', [1, 'stream', 1]],
    ['unixListen', ['/tmp/x', 1, 1]],
    ['unixConnect', ['/tmp/x']],
    ['socketpair', [1]],
    ['sendMsg', [0, 'str', []]],
    ['sendMsg', [0, Buffer.alloc(1), [0, 'x']]],
    ['sendMsg', [0, Buffer.alloc(1), 5]],
    ['recvMsg', [0, new ArrayBuffer(4), 1]],
    ['memfdCreate', [5, 0]],
    ['mmap', ['0', 4096, 0, true]],
    ['munmap', [{}]],
    ['eventfd', [0n, 0]],
    ['loadAcquireU16', [{}, 0]],
    ['storeReleaseU16', [new ArrayBuffer(8), 0, '1']],
    ['openat', [C.AT_FDCWD, {}, 0, 0]],
    ['openat', [C.AT_FDCWD, '/', '0', 0]],
    ['openat2', [C.AT_FDCWD, '/', 0, 0]],
    ['fstatat', [C.AT_FDCWD, '/', 0, new Uint8Array(128).buffer]],
    ['readlinkat', [C.AT_FDCWD, 1]],
    ['getxattr', [{}, 'user.x', null]],
    ['getxattr', [0, 'user.x', 'notabuffer']],
    ['utimensat', [C.AT_FDCWD, 5, 0, 0, 0, 0, 0]],
    ['fcntlLock', [0, C.F_OFD_GETLK, C.F_WRLCK, 0, 0]],
    ['nameToHandleAt', [C.AT_FDCWD, null, 0]],
    ['fstatHandle', [0, Buffer.alloc(128), 'x']],
    ['fstatHandleAt', [0, 'f', Buffer.alloc(128), 'x']],
    ['sameHandleAt', [C.AT_FDCWD, 'x', 0, 0, 0]],
    ['openByHandleAt', [C.AT_FDCWD, null, 0]],
    ['setFsIds', ['0', 0]],
    ['raiseNoFileLimit', ['1']],
    ['pread', [0, Buffer.alloc(1), 0, 'cb']],
    ['lseek', [0, '0', 0]],
    ['lseek', [0, 0n, 0n]],
  ];
  for (const [name, args] of cases) {
    try {
      raw[name](...args);
      t.fail(`${name}(${args.map(String).join(', ')}) should throw`);
    } catch (e) {
      t.ok(e instanceof TypeError && (e as { code?: string }).code === 'ERR_INVALID_ARG_TYPE',
        `${name}: TypeError ERR_INVALID_ARG_TYPE (${(e as Error).message})`);
    }
  }
  t.throws(() => native.socketpair('raw' as 'stream'), { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => native.unixListen('/tmp/x', 'raw' as 'stream', 1), { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' });
});

t.test('out-of-range numbers throw RangeError ERR_OUT_OF_RANGE', async (t) => {
  const cases: Array<[string, unknown[]]> = [
    ['close', [-1]],
    ['close', [1.5]],
    ['close', [NaN]],
    ['close', [Infinity]],
    ['close', [2 ** 31]],
    ['dup', [-5]],
    ['openat', [-2, 'x', 0, 0]],
    ['openat', [C.AT_FDCWD, 'x', -1, 0]],
    ['openat', [C.AT_FDCWD, 'x', 0, 0o100000]],
    ['lseek', [0, 2 ** 53 + 2, 0]],
    ['lseek', [0, 1n << 63n, 0]],
    ['lseek', [0, -(1n << 63n) - 1n, 0]],
    ['ftruncate', [0, -1]],
    ['mknodat', [C.AT_FDCWD, 'x', 0, -1]],
    ['recvMsg', [0, Buffer.alloc(1), 254]],
    ['recvMsg', [0, Buffer.alloc(1), -1]],
    ['sendMsg', [0, Buffer.alloc(1), Array.from({ length: 254 }, () => 0)]],
    ['sendMsg', [0, Buffer.alloc(1), [-1]]],
    ['eventfd', [-1, 0]],
    ['eventfd', [2 ** 32, 0]],
    ['unixListen', ['/tmp/x', 'stream', -1]],
    ['fchownat', [C.AT_FDCWD, 'x', -2, 0, 0]],
    ['fchownat', [C.AT_FDCWD, 'x', 0, 2 ** 32, 0]],
    ['setFsIds', [2 ** 32, 0]],
    ['fcntlLock', [0, C.F_OFD_GETLK, C.F_WRLCK, 3, 0, 0]],
    ['fcntlLock', [0, C.F_OFD_GETLK, C.F_WRLCK, 0, 2 ** 54, 0]],
    ['fcntlLock', [0, 999, C.F_WRLCK, 0, 0, 0]],
    ['errnoName', [1.5]],
    ['utimensat', [C.AT_FDCWD, null, 2 ** 54, 0, 0, 0, 0]],
    ['loadAcquireU16', [new ArrayBuffer(8), 8]],
    ['loadAcquireU64', [new ArrayBuffer(16), 1]],
  ];
  for (const [name, args] of cases) {
    try {
      raw[name](...args);
      t.fail(`${name}(${args.map(String).join(', ')}) should throw`);
    } catch (e) {
      t.ok(e instanceof RangeError && (e as { code?: string }).code === 'ERR_OUT_OF_RANGE',
        `${name}(${args.slice(0, 3).map(String).join(', ')}...): RangeError ERR_OUT_OF_RANGE (${(e as Error).message})`);
    }
  }
});

t.test('a NUL byte in a path or name is EINVAL', async (t) => {
  const dir = t.testdir({ f: 'x' });
  const nul = 'f\0../../etc/passwd';
  const bnul = Buffer.from('f\0x');
  const check = (fn: () => unknown, syscall: string): void => {
    try {
      fn();
      t.fail(`${syscall} should throw`);
    } catch (e) {
      t.ok(isNativeError(e) && e.code === 'EINVAL' && e.errno === C.EINVAL && e.syscall === syscall, `${syscall}: EINVAL`);
    }
  };
  const d = native.openat(C.AT_FDCWD, dir, C.O_RDONLY | C.O_DIRECTORY, 0);
  check(() => native.openat(d, nul, C.O_RDONLY, 0), 'openat');
  check(() => native.openat(d, bnul, C.O_RDONLY, 0), 'openat');
  check(() => native.openat2(d, nul, C.O_RDONLY, 0, C.RESOLVE_BENEATH), 'openat2');
  check(() => native.fstatat(d, bnul, 0, Buffer.alloc(128)), 'fstatat');
  check(() => native.mkdirat(d, nul, 0o755), 'mkdirat');
  check(() => native.symlinkat(nul, d, 'l'), 'symlinkat');
  check(() => native.unlinkat(d, bnul, 0), 'unlinkat');
  check(() => native.renameat2(d, 'f', d, nul, 0), 'renameat2');
  check(() => native.linkat(d, nul, d, 'g', 0), 'linkat');
  check(() => native.getxattr(path.join(dir, 'f'), 'user.a\0b', null), 'getxattr');
  check(() => native.setxattr(nul, 'user.a', Buffer.from('v'), 0), 'setxattr');
  check(() => native.unixListen(path.join(dir, 's\0ock'), 'stream', 1), 'bind');
  check(() => native.unixConnect(path.join(dir, 's\0ock'), 'stream'), 'connect');
  check(() => native.nameToHandleAt(d, nul, 0), 'name_to_handle_at');
  t.same(fs.readdirSync(dir), ['f'], 'nothing was created');
  native.close(d);
});

t.test('constants and errnoName', async (t) => {
  const expected = ['O_RDONLY', 'O_WRONLY', 'O_RDWR', 'O_CREAT', 'O_EXCL', 'O_TRUNC', 'O_APPEND', 'O_NONBLOCK',
    'O_DIRECTORY', 'O_NOFOLLOW', 'O_PATH', 'O_CLOEXEC', 'O_TMPFILE', 'O_NOATIME', 'O_DIRECT', 'O_SYNC', 'O_DSYNC',
    'O_LARGEFILE', 'O_ACCMODE', 'AT_FDCWD', 'AT_EMPTY_PATH', 'AT_SYMLINK_NOFOLLOW', 'AT_SYMLINK_FOLLOW',
    'AT_REMOVEDIR', 'RESOLVE_BENEATH', 'RESOLVE_IN_ROOT', 'RESOLVE_NO_MAGICLINKS', 'RESOLVE_NO_SYMLINKS',
    'RESOLVE_NO_XDEV', 'S_IFMT', 'S_IFREG', 'S_IFDIR', 'S_IFLNK', 'S_IFCHR', 'S_IFBLK', 'S_IFIFO', 'S_IFSOCK',
    'F_OFD_GETLK', 'F_OFD_SETLK', 'F_OFD_SETLKW', 'F_RDLCK', 'F_WRLCK', 'F_UNLCK', 'SEEK_SET', 'SEEK_CUR',
    'SEEK_END', 'SEEK_DATA', 'SEEK_HOLE', 'LOCK_SH', 'LOCK_EX', 'LOCK_UN', 'LOCK_NB', 'RENAME_NOREPLACE',
    'RENAME_EXCHANGE', 'RENAME_WHITEOUT', 'XATTR_CREATE', 'XATTR_REPLACE', 'FALLOC_FL_KEEP_SIZE',
    'FALLOC_FL_PUNCH_HOLE', 'FALLOC_FL_ZERO_RANGE', 'FALLOC_FL_COLLAPSE_RANGE', 'FALLOC_FL_INSERT_RANGE',
    'UTIME_NOW', 'UTIME_OMIT', 'MFD_CLOEXEC', 'MFD_ALLOW_SEALING', 'EFD_NONBLOCK', 'EFD_CLOEXEC', 'EFD_SEMAPHORE',
    'SHUT_RD', 'SHUT_WR', 'SHUT_RDWR'];
  const missing = expected.filter((k) => typeof C[k] !== 'number');
  t.same(missing, [], 'every listed constant is exported');
  // Spot-check values against the Linux x86-64/generic ABI and Node's own table.
  t.equal(C.O_RDONLY, 0);
  t.equal(C.O_CREAT, fs.constants.O_CREAT);
  t.equal(C.O_DIRECTORY, fs.constants.O_DIRECTORY);
  t.equal(C.O_NOFOLLOW, fs.constants.O_NOFOLLOW);
  t.equal(C.AT_FDCWD, -100);
  t.equal(C.AT_EMPTY_PATH, 0x1000);
  t.equal(C.RESOLVE_BENEATH, 0x08);
  t.equal(C.RESOLVE_IN_ROOT, 0x10);
  t.equal(C.F_OFD_GETLK, 36);
  t.equal(C.F_OFD_SETLK, 37);
  t.equal(C.F_OFD_SETLKW, 38);
  t.equal(C.S_IFDIR, 0o040000);
  t.equal(C.RENAME_EXCHANGE, 2);
  t.equal(C.UTIME_OMIT, (1 << 30) - 2);
  t.equal(C.FALLOC_FL_PUNCH_HOLE, 2);
  // Every errno 1..133 by name, agreeing with Node's (libuv's) table where Node has one.
  const osErr = os.constants.errno as Record<string, number>;
  const unnamed: number[] = [];
  for (let e = 1; e <= 133; e++) {
    const name = native.errnoName(e);
    if (name === 'UNKNOWN') unnamed.push(e);
    else t.equal(C[name], e, `${name} = ${e}`);
  }
  t.same(unnamed, [41, 58], 'only the two holes in Linux errno numbering have no name');
  for (const [name, value] of Object.entries(osErr)) t.equal(C[name], value, `${name} matches os.constants.errno`);
  t.equal(native.errnoName(C.ENOENT), 'ENOENT');
  t.equal(native.errnoName(-C.EAGAIN), 'EAGAIN', 'a negative (libuv) status works too');
  t.equal(native.errnoName(4000), 'UNKNOWN');
  t.equal(C.EWOULDBLOCK, C.EAGAIN);
  t.equal(C.ENOTSUP, C.EOPNOTSUPP);
});

t.test('no fd of ours leaks into a child process', async (t) => {
  const dir = t.testdir({ f: 'x', sub: {} });
  const mine: number[] = [];
  const [a, b] = native.socketpair('stream');
  mine.push(a, b);
  const d0 = native.openat(C.AT_FDCWD, dir, C.O_PATH | C.O_DIRECTORY, 0);
  const l = native.unixListen(`/proc/self/fd/${d0}/l.sock`, 'stream', 4);
  const c = native.unixConnect(`/proc/self/fd/${d0}/l.sock`, 'stream');
  native.close(d0);
  const s = native.accept(l);
  mine.push(l, c, s);
  const m = native.memfdCreate('vfsk-leak', 0);
  native.ftruncate(m, 4096);
  const ab = native.mmap(m, 4096, 0, true);
  mine.push(m, native.eventfd(0, 0), native.eventfd(0, C.EFD_NONBLOCK));
  const d = native.openat(C.AT_FDCWD, dir, C.O_RDONLY | C.O_DIRECTORY, 0);
  mine.push(d, native.openat(d, 'f', C.O_RDONLY, 0), native.openat2(d, 'sub', C.O_PATH, 0, C.RESOLVE_BENEATH));
  mine.push(native.dup(d), native.openByHandleAt(d, native.nameToHandleAt(d, 'f', 0), C.O_RDONLY));
  // fds received over SCM_RIGHTS (MSG_CMSG_CLOEXEC).
  native.sendMsg(a, Buffer.from('x'), [m, d]);
  const r = native.recvMsg(b, Buffer.alloc(1), 2);
  t.equal(r?.fds.length, 2);
  mine.push(...(r?.fds ?? []));
  t.ok(mine.every((fd) => native.fdFlags(fd).cloexec), 'all carry FD_CLOEXEC');

  const out = execFileSync('ls', ['-l', '/proc/self/fd'], { encoding: 'utf8' });
  const inChild = new Map<number, string>();
  for (const line of out.split('\n')) {
    const mm = /\s(\d+) -> (.*)$/.exec(line);
    if (mm) inChild.set(Number(mm[1]), mm[2]);
  }
  t.ok(inChild.has(0) && inChild.has(1) && inChild.has(2), 'the listing works (stdio is there)');
  const leaked = mine.filter((fd) => {
    const target = inChild.get(fd);
    // ls's own directory fd for /proc/self/fd may reuse a low number; it is not ours.
    return target !== undefined && !target.includes('/proc/') ;
  });
  t.same(leaked, [], `none of ${mine.join(',')} is open in the child`);
  native.munmap(ab);
  for (const fd of mine) native.close(fd);
});

t.test("FastFuse's OPEN and OPENDIR settings check their arguments", async (t) => {
  const f = new native.FastFuse();
  const m = f as unknown as Record<string, AnyFn>;
  const typeCases: Array<[string, unknown[]]> = [
    ['setNextFh', ['1']], ['setNextFh', []], ['setOpenRoom', [null]], ['setOpenPolicy', [1, 'yes', 0, 0]], ['setOpenPolicy', [1, false, 0]],
    ['setDir', [1, 2, 'x']], ['deleteDir', [{}]], ['takeDir', ['7']], ['takeDir', []],
  ];
  for (const [name, args] of typeCases) {
    try {
      m[name]!.apply(f, args);
      t.fail(`${name} accepted ${JSON.stringify(args)}`);
    } catch (e) {
      t.ok(e instanceof TypeError && (e as { code?: string }).code === 'ERR_INVALID_ARG_TYPE', `${name}(${args.map(String).join(', ')}): TypeError (${(e as Error).message})`);
    }
  }
  const rangeCases: Array<[string, unknown[]]> = [
    ['setNextFh', [-1]], ['setNextFh', [2 ** 53 + 2]], ['setOpenRoom', [-1]], ['setOpenPolicy', [2 ** 32, false, 0, 0]], ['setOpenPolicy', [0, true, -1, 0]],
    ['setOpenPolicy', [0, true, 0, 2 ** 32]], ['setDir', [1, 0, 3]], ['setDir', [-1, 2, 3]], ['deleteDir', [2 ** 53 + 2]], ['takeDir', [-1]],
  ];
  for (const [name, args] of rangeCases) {
    try {
      m[name]!.apply(f, args);
      t.fail(`${name} accepted ${JSON.stringify(args)}`);
    } catch (e) {
      t.ok(e instanceof RangeError && (e as { code?: string }).code === 'ERR_OUT_OF_RANGE', `${name}(${args.map(String).join(', ')}): RangeError (${(e as Error).message})`);
    }
  }
  f.setNextFh(5);
  f.setOpenRoom(0);
  f.setOpenPolicy(3, true, 1, 8);
  f.setDir(7, 2, 0);
  t.equal(f.takeDir(7), false, 'takeDir of a dir nothing read: not moved');
  t.equal(f.takeDir(8), false, 'takeDir of no dir: not moved');
  f.deleteDir(7);
  t.pass('in-range values are taken');
});

t.test("FastFuse's journal and settled settings check their arguments", async (t) => {
  const f = new native.FastFuse();
  const m = f as unknown as Record<string, AnyFn>;
  for (const [name, args] of [['setJournal', []], ['setJournal', [Buffer.alloc(8192)]], ['setJournal', [5]], ['setSettled', ['yes']], ['setSettled', []], ['setInodeCacheFull', [1]], ['setUnjournaled', [1]], ['setCreatePolicy', [null]]] as Array<[string, unknown[]]>) {
    try {
      m[name]!.apply(f, args);
      t.fail(`${name} accepted ${JSON.stringify(args)}`);
    } catch (e) {
      t.ok(e instanceof TypeError && (e as { code?: string }).code === 'ERR_INVALID_ARG_TYPE', `${name}: TypeError (${(e as Error).message})`);
    }
  }
  // An ArrayBuffer that is not one of the addon's live mappings, or one too small for a journal.
  const memFd = native.memfdCreate('misuse-journal', C.MFD_CLOEXEC!);
  native.ftruncate(memFd, 4096);
  const small = native.mmap(memFd, 4096, 0, true);
  for (const ab of [new ArrayBuffer(8192), small]) {
    try {
      f.setJournal(ab);
      t.fail('setJournal took a buffer that is no journal mapping');
    } catch (e) {
      t.equal((e as { code?: string }).code, 'ERR_INVALID_ARG_VALUE', `refused: ${(e as Error).message}`);
    }
  }
  native.munmap(small);
  native.ftruncate(memFd, 8192);
  const ok = native.mmap(memFd, 8192, 0, true);
  f.setJournal(ok);
  f.setSettled(true);
  f.setJournal(null);
  native.munmap(ok);
  native.close(memFd);
  t.pass('a writable mapping past the header is taken, and null lets it go');
});
