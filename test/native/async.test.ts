// Async (threadpool) calls, including preadv/pwritev on mmapped memfd "guest memory".
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native, C, isNativeError, Callback, NativeError } from '../../shared/native';

const PAGE = C.PAGE_SIZE;

// Promisifies a native async call: resolves with the result, rejects with the NativeError.
function call<T>(fn: (cb: Callback<T>) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    fn((err, res) => (err ? reject(err) : resolve(res)));
  });
}

function mapsMention(name: string): number {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`/memfd:${name} `)).length;
}

t.test('pread/pwrite with Buffers', async (t) => {
  const dir = t.testdir();
  const f = native.openat(C.AT_FDCWD, path.join(dir, 'f'), C.O_CREAT | C.O_RDWR, 0o600);
  t.equal(await call<number>((cb) => native.pwrite(f, Buffer.from('hello world'), 3, cb)), 11);
  const buf = Buffer.alloc(32);
  t.equal(await call<number>((cb) => native.pread(f, buf, 0, cb)), 14, 'short read at EOF is returned as is');
  t.equal(buf.subarray(3, 14).toString(), 'hello world');
  t.same([...buf.subarray(0, 3)], [0, 0, 0]);
  t.equal(await call<number>((cb) => native.pread(f, buf, 1000, cb)), 0, 'EOF');
  const err = await call<number>((cb) => native.pread(999999, buf, 0, cb)).catch((e: unknown) => e);
  t.ok(isNativeError(err));
  t.match(err, { code: 'EBADF', errno: C.EBADF, syscall: 'pread' });
  const dfd = native.openat(C.AT_FDCWD, dir, C.O_RDONLY | C.O_DIRECTORY, 0);
  t.match(await call<number>((cb) => native.pwrite(dfd, buf, 0, cb)).catch((e: unknown) => e), { code: 'EBADF', syscall: 'pwrite' });
  native.close(dfd);
  native.close(f);
});

t.test('callbacks receive null error on success', async (t) => {
  const dir = t.testdir();
  const f = native.openat(C.AT_FDCWD, path.join(dir, 'f'), C.O_CREAT | C.O_RDWR, 0o600);
  const args = await new Promise<[NativeError | null, number]>((resolve) =>
    native.pwrite(f, Buffer.from('x'), 0, (e, r) => resolve([e, r])));
  t.same(args, [null, 1]);
  const args2 = await new Promise<unknown[]>((resolve) => native.fsync(f, false, (...a: unknown[]) => resolve(a)));
  t.equal(args2[0], null);
  native.close(f);
});

t.test('preadv/pwritev into and from an mmapped memfd', async (t) => {
  const dir = t.testdir();
  const f = native.openat(C.AT_FDCWD, path.join(dir, 'data'), C.O_CREAT | C.O_RDWR, 0o600);
  const mem = native.memfdCreate('vfsk-guest', 0);
  native.ftruncate(mem, 4 * PAGE);
  const ab = native.mmap(mem, 4 * PAGE, 0, true);
  const view = new Uint8Array(ab);
  for (let i = 0; i < view.length; i++) view[i] = i % 251;
  // Two scattered segments -> one contiguous write.
  const n = await call<number>((cb) => native.pwritev(f, 10, [
    { buffer: ab, offset: PAGE, length: 100 },
    { buffer: ab, offset: 3 * PAGE + 5, length: 50 },
  ], cb));
  t.equal(n, 150);
  const onDisk = fs.readFileSync(path.join(dir, 'data'));
  t.equal(onDisk.length, 160);
  t.same(onDisk.subarray(10, 110), Buffer.from(view.subarray(PAGE, PAGE + 100)));
  t.same(onDisk.subarray(110, 160), Buffer.from(view.subarray(3 * PAGE + 5, 3 * PAGE + 55)));
  // Read back into a different place of a second mapping of the same memfd.
  const ab2 = native.mmap(mem, PAGE, 2 * PAGE, true);
  new Uint8Array(ab2).fill(0);
  const r = await call<number>((cb) => native.preadv(f, 10, [
    { buffer: ab2, offset: 0, length: 60 },
    { buffer: new ArrayBuffer(8), offset: 0, length: 8 }, // plain ArrayBuffers work too
    { buffer: ab2, offset: 1000, length: 3000 },
  ], cb));
  t.equal(r, 150, 'short read at EOF returns the byte count');
  t.same(Buffer.from(view.subarray(2 * PAGE, 2 * PAGE + 60)), onDisk.subarray(10, 70), 'visible through the first mapping');
  t.same(Buffer.from(new Uint8Array(ab2, 1000, 82)), onDisk.subarray(78, 160));
  t.equal(await call<number>((cb) => native.preadv(f, 0, [], cb)), 0, 'empty iovec');
  native.munmap(ab);
  native.munmap(ab2);
  native.close(mem);
  native.close(f);
});

t.test('munmap is deferred while an async pwritev uses the mapping', async (t) => {
  const dir = t.testdir();
  const f = native.openat(C.AT_FDCWD, path.join(dir, 'big'), C.O_CREAT | C.O_RDWR, 0o600);
  const name = `vfsk-defer-${process.pid}`;
  const mem = native.memfdCreate(name, 0);
  const len = 16 * 1024 * 1024;
  native.ftruncate(mem, len);
  const ab = native.mmap(mem, len, 0, true);
  const v = new Uint32Array(ab);
  for (let i = 0; i < v.length; i++) v[i] = i;
  let mappedInCallback = -1;
  const done = new Promise<[NativeError | null, number]>((resolve) => {
    native.pwritev(f, 0, [{ buffer: ab, offset: 0, length: len }], (err, n) => {
      mappedInCallback = mapsMention(name);
      resolve([err, n]);
    });
  });
  native.munmap(ab);
  t.equal(ab.byteLength, 0, 'detached at once');
  t.equal(v.length, 0, 'views are length 0 at once');
  t.equal(mapsMention(name), 1, 'but still mapped while the write is in flight');
  native.munmap(ab); // idempotent, even while deferred
  const [err, n] = await done;
  t.equal(err, null);
  t.equal(n, len);
  t.equal(mappedInCallback, 0, 'unmapped by the time the callback runs');
  const back = fs.readFileSync(path.join(dir, 'big'));
  t.equal(back.length, len);
  const u = new Uint32Array(back.buffer, back.byteOffset, len / 4);
  let bad = 0;
  for (let i = 0; i < u.length; i++) if (u[i] !== i) bad++;
  t.equal(bad, 0, 'the data written is the data that was mapped');
  native.close(mem);
  native.close(f);
});

t.test('many concurrent preadv on one mapping, then munmap', async (t) => {
  const dir = t.testdir({ f: Buffer.alloc(PAGE, 7) });
  const f = native.openat(C.AT_FDCWD, path.join(dir, 'f'), C.O_RDONLY, 0);
  const name = `vfsk-many-${process.pid}`;
  const mem = native.memfdCreate(name, 0);
  native.ftruncate(mem, 64 * PAGE);
  const ab = native.mmap(mem, 64 * PAGE, 0, true);
  const all = [];
  for (let i = 0; i < 64; i++) {
    all.push(call<number>((cb) => native.preadv(f, 0, [{ buffer: ab, offset: i * PAGE, length: PAGE }], cb)));
  }
  native.munmap(ab);
  const res = await Promise.all(all);
  t.ok(res.every((n) => n === PAGE));
  t.equal(mapsMention(name), 0);
  const check = native.mmap(mem, 64 * PAGE, 0, false);
  t.ok(new Uint8Array(check).every((b) => b === 7), 'every page was filled');
  native.munmap(check);
  native.close(mem);
  native.close(f);
});

t.test('fsync, syncfs, fallocate, copyFileRange', async (t) => {
  const dir = t.testdir();
  const a = native.openat(C.AT_FDCWD, path.join(dir, 'a'), C.O_CREAT | C.O_RDWR, 0o600);
  const b = native.openat(C.AT_FDCWD, path.join(dir, 'b'), C.O_CREAT | C.O_RDWR, 0o600);
  await call<number>((cb) => native.pwrite(a, Buffer.from('0123456789abcdef'), 0, cb));
  t.equal(await call<void>((cb) => native.fsync(a, false, cb)), undefined);
  await call<void>((cb) => native.fsync(a, true, cb));
  await call<void>((cb) => native.syncfs(a, cb));
  t.match(await call<void>((cb) => native.fsync(999999, true, cb)).catch((e: unknown) => e), { code: 'EBADF', syscall: 'fdatasync' });
  t.equal(await call<number>((cb) => native.copyFileRange(a, 4, b, 2, 8, 0, cb)), 8);
  const got = fs.readFileSync(path.join(dir, 'b'));
  t.same([...got.subarray(0, 2)], [0, 0]);
  t.equal(got.subarray(2).toString(), '456789ab');
  t.equal(await call<number>((cb) => native.copyFileRange(a, 100, b, 0, 8, 0, cb)), 0, 'past EOF copies nothing');
  await call<void>((cb) => native.fallocate(a, C.FALLOC_FL_KEEP_SIZE, 0, 1 << 20, cb));
  t.equal(fs.statSync(path.join(dir, 'a')).size, 16, 'KEEP_SIZE');
  t.ok(fs.statSync(path.join(dir, 'a')).blocks * 512 >= 1 << 20, 'blocks allocated');
  await call<void>((cb) => native.fallocate(a, 0, 0, 100, cb));
  t.equal(fs.statSync(path.join(dir, 'a')).size, 100);
  await call<void>((cb) => native.fallocate(a, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, 0, 4, cb));
  t.equal(fs.readFileSync(path.join(dir, 'a')).subarray(0, 6).toString('latin1'), '\0\0\0\x0045');
  t.match(await call<void>((cb) => native.fallocate(a, 0, 0, 0, cb)).catch((e: unknown) => e), { code: 'EINVAL', syscall: 'fallocate' });
  native.close(a);
  native.close(b);
});

t.test('async misuse throws synchronously and queues nothing', async (t) => {
  const mem = native.memfdCreate('vfsk-misuse', 0);
  native.ftruncate(mem, PAGE);
  const ab = native.mmap(mem, PAGE, 0, true);
  const noop = (): void => { t.fail('callback must not run'); };
  const seg = (o: number, l: number) => [{ buffer: ab, offset: o, length: l }];
  t.throws(() => native.preadv(mem, 0, seg(0, PAGE + 1), noop), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }, 'length past byteLength');
  t.throws(() => native.preadv(mem, 0, seg(PAGE, 1), noop), { name: 'RangeError' }, 'offset at the end');
  t.throws(() => native.preadv(mem, 0, seg(-1, 1), noop), { name: 'RangeError' });
  t.throws(() => native.preadv(mem, 0, seg(0.5, 1), noop), { name: 'RangeError' });
  t.throws(() => native.preadv(mem, -1, seg(0, 1), noop), { name: 'RangeError' }, 'negative position');
  t.throws(() => native.preadv(mem, 2 ** 53 + 2, seg(0, 1), noop), { name: 'RangeError' });
  t.throws(() => native.preadv(mem, 0, [{ buffer: Buffer.alloc(4) as unknown as ArrayBuffer, offset: 0, length: 1 }], noop),
    { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, 'a Buffer is not an ArrayBuffer');
  t.throws(() => native.preadv(mem, 0, [null as unknown as { buffer: ArrayBuffer; offset: number; length: number }], noop), { name: 'TypeError' });
  t.throws(() => native.preadv(mem, 0, 'x' as unknown as [], noop), { name: 'TypeError' });
  const many = Array.from({ length: 1025 }, () => ({ buffer: ab, offset: 0, length: 1 }));
  t.throws(() => native.pwritev(mem, 0, many, noop), { name: 'RangeError' }, 'more than IOV_MAX');
  t.throws(() => native.pwritev(mem, 0, seg(0, 1), undefined as unknown as () => void), { name: 'TypeError' }, 'missing callback');
  t.throws(() => native.pread(mem, 'x' as unknown as Buffer, 0, noop), { name: 'TypeError' });
  t.throws(() => native.copyFileRange(mem, -1, mem, 0, 1, 0, noop), { name: 'RangeError' });
  t.throws(() => native.fallocate(mem, 0, 0, -1, noop), { name: 'RangeError' });
  t.throws(() => native.fsync(mem, 0 as unknown as boolean, noop), { name: 'TypeError' });
  t.throws(() => (native.syncfs as unknown as (fd: number) => void)(mem), { name: 'TypeError' }, 'too few arguments');
  // 1024 segments is fine.
  const ok = Array.from({ length: 1024 }, (_, i) => ({ buffer: ab, offset: i, length: 1 }));
  t.equal(await call<number>((cb) => native.pwritev(mem, 0, ok, cb)), 1024);
  native.munmap(ab);
  // A detached mapping has byteLength 0: any non-empty segment is out of range.
  t.throws(() => native.preadv(mem, 0, seg(0, 1), noop), { name: 'RangeError' });
  native.close(mem);
});
