// preadv2Sync/pwritev2Sync: synchronous RWF_NOWAIT attempts on the JS thread into/from mmapped
// memfd "guest memory". Page-cache misses are made real by dropping a file's clean pages with
// `dd oflag=nocache` (posix_fadvise POSIX_FADV_DONTNEED) on the test dir's filesystem.
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { native, C, isNativeError, type IoSegment } from '../../shared/native';

const PAGE = C.PAGE_SIZE;

function guestMemory(t: Test, size: number): { ab: ArrayBuffer; view: Uint8Array; seg: (o: number, l: number) => IoSegment } {
  const mem = native.memfdCreate('vfsk-sync-io', C.MFD_CLOEXEC);
  native.ftruncate(mem, size);
  const ab = native.mmap(mem, size, 0, true);
  t.teardown(() => {
    native.munmap(ab);
    native.close(mem);
  });
  return { ab, view: new Uint8Array(ab), seg: (offset, length) => ({ buffer: ab, offset, length }) };
}

/** Drops the file's (clean, synced) pages from the page cache. */
function dropCache(file: string): void {
  execFileSync('dd', [`of=${file}`, 'oflag=nocache', 'conv=notrunc,fdatasync', 'count=0'], { stdio: 'ignore' });
}

/** Whether the filesystem of `dir` supports RWF_NOWAIT reads at all (tmpfs does not). */
function noWaitReads(dir: string): boolean {
  const probe = path.join(dir, 'probe');
  fs.writeFileSync(probe, 'x');
  const fd = native.openat(C.AT_FDCWD, probe, C.O_RDONLY, 0);
  try {
    return native.preadv2Sync(fd, 0, [], C.RWF_NOWAIT) !== -C.EOPNOTSUPP;
  } finally {
    native.close(fd);
  }
}

t.test('RWF_* constants are exported', async (t) => {
  t.equal(C.RWF_NOWAIT, 8);
  t.equal(C.RWF_HIPRI, 1);
  t.equal(C.RWF_DSYNC, 2);
  t.equal(C.RWF_SYNC, 4);
  t.equal(C.RWF_APPEND, 16);
});

t.test('preadv2Sync/pwritev2Sync with flags 0 behave like preadv/pwritev', async (t) => {
  const dir = t.testdir();
  const f = native.openat(C.AT_FDCWD, path.join(dir, 'f'), C.O_CREAT | C.O_RDWR, 0o600);
  t.teardown(() => native.close(f));
  const { view, seg } = guestMemory(t, 4 * PAGE);
  Buffer.from('hello ').copy(Buffer.from(view.buffer), PAGE - 6);
  Buffer.from('world').copy(Buffer.from(view.buffer), 3 * PAGE);
  t.equal(native.pwritev2Sync(f, 2, [seg(PAGE - 6, 6), seg(3 * PAGE, 5)], 0), 11, 'two segments written');
  t.equal(fs.readFileSync(path.join(dir, 'f'), 'latin1'), '\0\0hello world');
  view.fill(0);
  t.equal(native.preadv2Sync(f, 4, [seg(10, 3), seg(2 * PAGE, 100)], 0), 9, 'short read at EOF returned as is');
  t.equal(Buffer.from(view.subarray(10, 13)).toString(), 'llo');
  t.equal(Buffer.from(view.subarray(2 * PAGE, 2 * PAGE + 6)).toString(), ' world');
  t.equal(view[2 * PAGE + 6], 0, 'nothing past EOF touched');
  t.equal(native.preadv2Sync(f, 1000, [seg(0, 10)], 0), 0, 'EOF');
  t.equal(native.preadv2Sync(f, 0, [], 0), 0, 'no segments');
  t.equal(native.pwritev2Sync(f, 0, [seg(0, 0)], 0), 0, 'empty segment');
});

t.test('RWF_NOWAIT read: a cached range is served, a dropped one gives -EAGAIN (a value)', async (t) => {
  const dir = t.testdir();
  if (!noWaitReads(dir)) {
    t.pass(`skipped: the test dir's filesystem has no RWF_NOWAIT reads`);
    return;
  }
  const file = path.join(dir, 'f');
  const data = Buffer.alloc(1 << 20);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
  fs.writeFileSync(file, data);
  const f = native.openat(C.AT_FDCWD, file, C.O_RDONLY, 0);
  t.teardown(() => native.close(f));
  const { view, seg } = guestMemory(t, 1 << 20);

  t.equal(native.preadv2Sync(f, 4096, [seg(0, 4096)], C.RWF_NOWAIT), 4096, 'page-cache hit');
  t.same(Buffer.from(view.subarray(0, 4096)), data.subarray(4096, 8192));

  dropCache(file);
  view.fill(0);
  // The first miss also starts readahead, so only the first attempt is sure to miss.
  t.equal(native.preadv2Sync(f, 512 * 1024, [seg(0, 4096)], C.RWF_NOWAIT), -C.EAGAIN, 'miss: -EAGAIN, not an exception');
  t.equal(view[0], 0, 'nothing copied on a miss');
  t.equal(native.preadv2Sync(f, 1 << 20, [seg(0, 4096)], C.RWF_NOWAIT), 0, 'EOF is 0, not EAGAIN');
});

t.test('RWF_NOWAIT on tmpfs (no NOWAIT support) gives -EOPNOTSUPP as a value', async (t) => {
  if (!fs.existsSync('/dev/shm')) {
    t.pass('skipped: no /dev/shm');
    return;
  }
  const dir = fs.mkdtempSync('/dev/shm/vfsk-sync-io-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const f = native.openat(C.AT_FDCWD, path.join(dir, 'f'), C.O_CREAT | C.O_RDWR, 0o600);
  t.teardown(() => native.close(f));
  const { seg } = guestMemory(t, PAGE);
  const r = native.preadv2Sync(f, 0, [seg(0, 10)], C.RWF_NOWAIT);
  const w = native.pwritev2Sync(f, 0, [seg(0, 10)], C.RWF_NOWAIT);
  // Kernels may add NOWAIT to tmpfs; then these are plain successes.
  t.ok(r === -C.EOPNOTSUPP || r === 0, `read: ${r}`);
  t.ok(w === -C.EOPNOTSUPP || w === -C.EAGAIN || w === 10, `write: ${w}`);
});

t.test('other errors throw coded errors', async (t) => {
  const dir = t.testdir();
  const { seg } = guestMemory(t, PAGE);
  const e1 = (() => {
    try {
      return native.preadv2Sync(999999, 0, [seg(0, 1)], C.RWF_NOWAIT);
    } catch (e) {
      return e;
    }
  })();
  t.ok(isNativeError(e1));
  t.match(e1, { code: 'EBADF', errno: C.EBADF, syscall: 'preadv2' });
  const dfd = native.openat(C.AT_FDCWD, dir, C.O_RDONLY | C.O_DIRECTORY, 0);
  t.teardown(() => native.close(dfd));
  t.throws(() => native.pwritev2Sync(dfd, 0, [seg(0, 1)], 0), { code: 'EBADF', syscall: 'pwritev2' }, 'write to a dir fd');
  t.throws(() => native.preadv2Sync(dfd, 0, [seg(0, 1)], 0), { code: 'EISDIR', syscall: 'preadv2' }, 'read a dir');
  const f = native.openat(C.AT_FDCWD, path.join(dir, 'f'), C.O_CREAT | C.O_RDWR, 0o600);
  t.teardown(() => native.close(f));
  // The kernel rejects unknown RWF_* bits with EOPNOTSUPP, which reads as "use the async call".
  t.equal(native.preadv2Sync(f, 0, [seg(0, 1)], 0x40000000), -C.EOPNOTSUPP, 'unknown RWF flag: -EOPNOTSUPP');
});

t.test('segment and argument validation throws before any I/O', async (t) => {
  const dir = t.testdir();
  const f = native.openat(C.AT_FDCWD, path.join(dir, 'f'), C.O_CREAT | C.O_RDWR, 0o600);
  t.teardown(() => native.close(f));
  fs.writeFileSync(path.join(dir, 'f'), 'abc');
  const { ab, seg } = guestMemory(t, PAGE);
  for (const fn of [native.preadv2Sync, native.pwritev2Sync]) {
    const name = fn === native.preadv2Sync ? 'preadv2' : 'pwritev2';
    t.throws(() => fn(f, 0, [seg(PAGE - 1, 2)], 0), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }, `${name}: past the end`);
    t.throws(() => fn(f, 0, [seg(PAGE + 1, 0)], 0), { code: 'ERR_OUT_OF_RANGE' }, `${name}: offset past the end`);
    t.throws(() => fn(f, 0, [seg(-1, 1)], 0), { code: 'ERR_OUT_OF_RANGE' }, `${name}: negative offset`);
    t.throws(() => fn(f, 0, [seg(0.5, 1)], 0), { code: 'ERR_OUT_OF_RANGE' }, `${name}: fractional offset`);
    t.throws(() => fn(f, 0, [seg(0, NaN)], 0), { code: 'ERR_OUT_OF_RANGE' }, `${name}: NaN length`);
    t.throws(() => fn(f, 0, [{ buffer: ab, offset: '0', length: 1 } as unknown as IoSegment], 0),
      { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, `${name}: string offset`);
    t.throws(() => fn(f, 0, [{ buffer: Buffer.alloc(4), offset: 0, length: 1 } as unknown as IoSegment], 0),
      { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, `${name}: a Buffer is not an ArrayBuffer`);
    t.throws(() => fn(f, 0, [null as unknown as IoSegment], 0), { code: 'ERR_INVALID_ARG_TYPE' }, `${name}: null segment`);
    t.throws(() => fn(f, 0, {} as unknown as IoSegment[], 0), { code: 'ERR_INVALID_ARG_TYPE' }, `${name}: not an array`);
    t.throws(() => fn(f, 0, Array.from({ length: 1025 }, () => seg(0, 1)), 0), { code: 'ERR_OUT_OF_RANGE' }, `${name}: > IOV_MAX`);
    t.throws(() => fn(f, -1, [seg(0, 1)], 0), { code: 'ERR_OUT_OF_RANGE' }, `${name}: negative position`);
    t.throws(() => fn(f, 2 ** 60, [seg(0, 1)], 0), { code: 'ERR_OUT_OF_RANGE' }, `${name}: position beyond 2^53`);
    t.throws(() => fn(f, 0, [seg(0, 1)], -1), { code: 'ERR_OUT_OF_RANGE' }, `${name}: negative flags`);
    t.throws(() => (fn as unknown as (...a: unknown[]) => number)(f, 0, [seg(0, 1)]), { code: 'ERR_INVALID_ARG_TYPE' }, `${name}: missing flags`);
  }
  t.equal(fs.readFileSync(path.join(dir, 'f'), 'latin1'), 'abc', 'no write happened');

  // A munmap()ed (detached) buffer has byteLength 0: any non-empty segment is out of range.
  const mem = native.memfdCreate('vfsk-sync-io-gone', C.MFD_CLOEXEC);
  native.ftruncate(mem, PAGE);
  const gone = native.mmap(mem, PAGE, 0, true);
  native.munmap(gone);
  native.close(mem);
  t.throws(() => native.preadv2Sync(f, 0, [{ buffer: gone, offset: 0, length: 1 }], 0), { code: 'ERR_OUT_OF_RANGE' }, 'unmapped buffer');
  t.equal(native.preadv2Sync(f, 0, [{ buffer: gone, offset: 0, length: 0 }], 0), 0, 'empty segment of an unmapped buffer is fine');
});
