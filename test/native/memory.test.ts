// memfd + mmap (external ArrayBuffers), munmap, ring helpers, eventfd and the Poller.
import t from 'tap';
import * as fs from 'node:fs';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { native, C, POLL_DISCONNECT, POLL_READABLE, POLL_WRITABLE } from '../../shared/native';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

function mapsMention(name: string): number {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`/memfd:${name} `)).length;
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const PAGE = C.PAGE_SIZE;

t.test('memfd + two mappings see each other\'s writes', async (t) => {
  const name = `vfsk-mm-${process.pid}`;
  const fd = native.memfdCreate(name, C.MFD_ALLOW_SEALING);
  t.ok(native.fdFlags(fd).cloexec, 'memfd is cloexec');
  native.ftruncate(fd, 4 * PAGE);
  const a = native.mmap(fd, 4 * PAGE, 0, true);
  const b = native.mmap(fd, 2 * PAGE, 2 * PAGE, true);
  t.equal(a.byteLength, 4 * PAGE);
  t.equal(b.byteLength, 2 * PAGE);
  t.equal(mapsMention(name), 2);
  const va = new Uint8Array(a);
  const vb = new Uint8Array(b);
  va[2 * PAGE + 7] = 0xab;
  t.equal(vb[7], 0xab, 'write through a is visible through b (offset mapping)');
  vb[100] = 0x5a;
  t.equal(va[2 * PAGE + 100], 0x5a, 'and back');
  // Read-only mapping sees the data too.
  const ro = native.mmap(fd, PAGE, 2 * PAGE, false);
  t.equal(new Uint8Array(ro)[7], 0xab);
  native.munmap(ro);
  native.munmap(a);
  native.munmap(b);
  t.equal(a.byteLength, 0, 'munmap detaches the buffer');
  t.equal(va.length, 0, 'existing views become length 0');
  t.equal(vb.length, 0);
  t.equal(mapsMention(name), 0, 'unmapped at once when no I/O is in flight');
  native.munmap(a); // idempotent
  native.close(fd);
});

t.test('mmap argument and errno checks', async (t) => {
  const fd = native.memfdCreate('vfsk-mm-args', 0);
  native.ftruncate(fd, PAGE);
  t.throws(() => native.mmap(fd, 0, 0, true), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }, 'length 0');
  t.throws(() => native.mmap(fd, PAGE, 100, true), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }, 'unaligned offset');
  t.throws(() => native.mmap(fd, PAGE, -PAGE, true), { name: 'RangeError' }, 'negative offset');
  t.throws(() => native.mmap(fd, 2 ** 53 + 2, 0, true), { name: 'RangeError' }, 'length beyond 2^53');
  t.throws(() => native.mmap(fd, PAGE, 0, 1 as unknown as boolean), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
  const bad = native.eventfd(0, 0);
  t.throws(() => native.mmap(bad, PAGE, 0, true), { code: 'ENODEV', syscall: 'mmap' });
  native.close(bad);
  t.throws(() => native.munmap(new ArrayBuffer(16)), { name: 'TypeError' }, 'munmap of a non-mapping');
  t.throws(() => native.munmap(new Uint8Array(4) as unknown as ArrayBuffer), { name: 'TypeError' });
  t.throws(() => native.memfdCreate('a\0b', 0), { code: 'EINVAL', syscall: 'memfd_create' });
  native.close(fd);
});

t.test('a garbage-collected mapping is unmapped by its finalizer', async (t) => {
  const name = `vfsk-gc-${process.pid}`;
  const fd = native.memfdCreate(name, 0);
  native.ftruncate(fd, PAGE);
  (() => {
    const ab = native.mmap(fd, PAGE, 0, true);
    new Uint8Array(ab)[0] = 1;
  })();
  t.equal(mapsMention(name), 1);
  await until(() => {
    gc();
    return mapsMention(name) === 0;
  }, 'finalizer unmap');
  t.equal(mapsMention(name), 0);
  native.close(fd);
});

t.test('acquire/release helpers', async (t) => {
  const fd = native.memfdCreate('vfsk-ring', 0);
  native.ftruncate(fd, PAGE);
  const a = native.mmap(fd, PAGE, 0, true);
  const b = native.mmap(fd, PAGE, 0, true);
  native.storeReleaseU16(a, 2, 0xbeef);
  t.equal(native.loadAcquireU16(b, 2), 0xbeef);
  t.equal(new DataView(b).getUint16(2, true), 0xbeef, 'native byte order is little-endian');
  native.storeReleaseU64(a, 8, 0xfedcba9876543210n);
  t.equal(native.loadAcquireU64(b, 8), 0xfedcba9876543210n);
  native.storeReleaseU64(a, PAGE - 8, 2n ** 64n - 1n);
  t.equal(native.loadAcquireU64(b, PAGE - 8), 2n ** 64n - 1n, 'last aligned u64');
  native.fence();
  // Bounds and alignment.
  t.throws(() => native.loadAcquireU16(a, 1), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }, 'misaligned u16');
  t.throws(() => native.loadAcquireU64(a, 4), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }, 'misaligned u64');
  t.throws(() => native.storeReleaseU64(a, 12, 1n), { name: 'RangeError' }, 'misaligned store');
  t.throws(() => native.loadAcquireU16(a, PAGE), { name: 'RangeError' }, 'past the end');
  t.throws(() => native.loadAcquireU64(a, PAGE - 4), { name: 'RangeError' }, 'straddles the end');
  t.throws(() => native.loadAcquireU16(a, -2), { name: 'RangeError' });
  t.throws(() => native.storeReleaseU16(a, 0, 0x10000), { name: 'RangeError' }, 'u16 overflow');
  t.throws(() => native.storeReleaseU64(a, 0, -1n), { name: 'RangeError' }, 'negative bigint');
  t.throws(() => native.storeReleaseU64(a, 0, 2n ** 64n), { name: 'RangeError' }, 'u64 overflow');
  t.throws(() => native.storeReleaseU64(a, 0, 1 as unknown as bigint), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => native.loadAcquireU16(new Uint16Array(4) as unknown as ArrayBuffer, 0), { name: 'TypeError' });
  // Plain ArrayBuffers work too.
  const plain = new ArrayBuffer(16);
  native.storeReleaseU16(plain, 4, 7);
  t.equal(new Uint16Array(plain)[2], 7);
  // A read-only mapping refuses stores (a JS write would fault).
  const ro = native.mmap(fd, PAGE, 0, false);
  t.equal(native.loadAcquireU16(ro, 2), 0xbeef);
  t.throws(() => native.storeReleaseU16(ro, 2, 1), { name: 'TypeError' });
  // After munmap: length 0, so every offset is out of range.
  native.munmap(a);
  t.throws(() => native.loadAcquireU16(a, 0), { name: 'RangeError' });
  native.munmap(b);
  native.munmap(ro);
  native.close(fd);
});

t.test('eventfd', async (t) => {
  const fd = native.eventfd(0, C.EFD_NONBLOCK);
  t.ok(native.fdFlags(fd).cloexec);
  t.equal(native.eventfdRead(fd), -1, 'empty counter: -1 (EAGAIN)');
  t.equal(native.eventfdWrite(fd, 3), true);
  t.equal(native.eventfdWrite(fd, 4), true);
  t.equal(native.eventfdRead(fd), 7);
  t.equal(native.eventfdRead(fd), -1);
  // A full counter (0xfffffffffffffffe max): the write would overflow, EAGAIN -> false.
  const full = native.eventfd(0, C.EFD_NONBLOCK);
  t.equal(native.eventfdWrite(full, 2 ** 53), true);
  let ok = true;
  for (let i = 0; i < 2100 && ok; i++) ok = native.eventfdWrite(full, 2 ** 53);
  t.equal(ok, false, 'eventfdWrite returns false on EAGAIN');
  native.close(full);
  const sem = native.eventfd(2, C.EFD_NONBLOCK | C.EFD_SEMAPHORE);
  t.equal(native.eventfdRead(sem), 1);
  t.equal(native.eventfdRead(sem), 1);
  t.equal(native.eventfdRead(sem), -1);
  t.throws(() => native.eventfdWrite(fd, -1), { name: 'RangeError' });
  t.throws(() => native.eventfdRead(999999), { code: 'EBADF', errno: C.EBADF, syscall: 'read' });
  native.close(sem);
  native.close(fd);
});

t.test('Poller fires on readable, stops, and closes cleanly', async (t) => {
  const fd = native.eventfd(0, C.EFD_NONBLOCK);
  const events: Array<[number, number]> = [];
  const p = new native.Poller(fd, (status, ev) => {
    events.push([status, ev]);
    native.eventfdRead(fd); // drain, or it fires again
  });
  p.start(POLL_READABLE);
  native.eventfdWrite(fd, 1);
  await until(() => events.length >= 1, 'poll callback');
  t.same(events[0], [0, POLL_READABLE]);
  // Fires again on new data.
  native.eventfdWrite(fd, 1);
  await until(() => events.length >= 2, 'second poll callback');
  t.same(events[1], [0, POLL_READABLE]);
  // Stopped: no callbacks.
  p.stop();
  const n = events.length;
  native.eventfdWrite(fd, 1);
  await new Promise((r) => setTimeout(r, 50));
  t.equal(events.length, n, 'no callback while stopped');
  // Restart: the pending readiness is reported.
  p.start(POLL_READABLE | POLL_WRITABLE);
  await until(() => events.length > n, 'callback after restart');
  t.equal(events[n][0], 0);
  t.ok((events[n][1] & POLL_READABLE) !== 0 || (events[n][1] & POLL_WRITABLE) !== 0);
  p.close();
  p.close(); // idempotent
  p.stop(); // harmless after close
  t.throws(() => p.start(POLL_READABLE), { code: 'ERR_INVALID_STATE' });
  const m = events.length;
  native.eventfdWrite(fd, 1);
  await new Promise((r) => setTimeout(r, 50));
  t.equal(events.length, m, 'no callback after close');
  native.close(fd);
});

t.test('Poller: close from inside the callback, writable events, GC safety', async (t) => {
  const [a, b] = native.socketpair('stream');
  let calls = 0;
  let status = -1;
  let evs = 0;
  const p = new native.Poller(a, (s, ev) => {
    calls++;
    status = s;
    evs = ev;
    p.close();
  });
  p.start(POLL_WRITABLE);
  await until(() => calls > 0, 'writable callback');
  t.equal(status, 0);
  t.equal(evs, POLL_WRITABLE);
  await new Promise((r) => setTimeout(r, 20));
  t.equal(calls, 1, 'closed inside the callback: no more calls');
  // A started poller is kept alive by the addon even with no JS reference.
  let fired = 0;
  (() => {
    const q = new native.Poller(b, () => {
      fired++;
      q.close();
    });
    q.start(POLL_READABLE);
  })();
  gc();
  await new Promise((r) => setImmediate(r));
  gc();
  native.sendMsg(a, Buffer.from('x'), []);
  await until(() => fired === 1, 'callback of an unreferenced started poller');
  // Pollers dropped without close() or after close() are collected without crashing.
  for (let i = 0; i < 50; i++) {
    const x = new native.Poller(a, () => undefined);
    if (i % 2 === 0) x.close();
  }
  gc();
  await new Promise((r) => setTimeout(r, 10));
  gc();
  t.pass('survived GC of pollers');
  native.close(a);
  native.close(b);
});

t.test('Poller misuse', async (t) => {
  t.throws(() => new native.Poller(-1, () => undefined), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => new native.Poller(0, null as unknown as () => void), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
  const dir = t.testdir({ f: 'x' });
  const fd = fs.openSync(`${dir}/f`, 'r');
  t.throws(() => new native.Poller(fd, () => undefined), { code: 'EPERM', syscall: 'uv_poll_init' },
    'regular files cannot be polled');
  fs.closeSync(fd);
  const efd = native.eventfd(0, 0);
  const p = new native.Poller(efd, () => undefined);
  t.throws(() => p.start(0), { name: 'RangeError' });
  t.throws(() => p.start(8), { name: 'RangeError' });
  p.close();
  native.close(efd);
});

t.test('Poller: POLL_DISCONNECT reports a peer hangup without reading, and nothing before it', async (t) => {
  const [a, b] = native.socketpair('stream');
  const seen: number[] = [];
  const p = new native.Poller(a, (status, ev) => { if (status >= 0) seen.push(ev); });
  p.start(POLL_DISCONNECT);
  native.sendMsg(b, Buffer.from('queued'), []);
  await new Promise((r) => setTimeout(r, 50));
  t.same(seen, [], 'data from a live peer is not a disconnect');
  native.close(b);
  const deadline = Date.now() + 5000;
  while (seen.length === 0 && Date.now() < deadline) await new Promise((r) => setImmediate(r));
  t.ok(seen.length > 0 && (seen[0]! & POLL_DISCONNECT) !== 0, 'the hangup is reported');
  const buf = Buffer.alloc(16);
  t.equal(native.recvMsg(a, buf, 0)?.bytes, 6, 'what the peer sent before hanging up is still there');
  p.close();
  native.close(a);
  const efd = native.eventfd(0, 0);
  const q = new native.Poller(efd, () => {});
  t.throws(() => q.start(8), { code: 'ERR_OUT_OF_RANGE' }, 'unknown event bits are refused');
  q.close();
  native.close(efd);
});

t.test('getSeals/addSeals: seal a memfd against shrinking; errors carry code and errno', async (t) => {
  const fd = native.memfdCreate(`vfsk-seal-${process.pid}`, C.MFD_ALLOW_SEALING);
  t.teardown(() => native.close(fd));
  native.ftruncate(fd, 2 * PAGE);
  t.equal(native.getSeals(fd), 0, 'a sealable memfd starts without seals');
  native.addSeals(fd, C.F_SEAL_SHRINK!);
  t.equal(native.getSeals(fd), C.F_SEAL_SHRINK, 'F_SEAL_SHRINK set');
  t.throws(() => native.ftruncate(fd, PAGE), { code: 'EPERM' }, 'the memfd can no longer shrink');
  native.ftruncate(fd, 4 * PAGE);
  t.pass('but may grow');
  const plain = native.memfdCreate(`vfsk-noseal-${process.pid}`, 0);
  t.teardown(() => native.close(plain));
  t.equal(native.getSeals(plain), C.F_SEAL_SEAL, 'a memfd without MFD_ALLOW_SEALING is sealed against seals');
  t.throws(() => native.addSeals(plain, C.F_SEAL_SHRINK!), { code: 'EPERM', errno: C.EPERM, syscall: 'fcntl' });
  const r = fs.openSync('/proc/self/stat', 'r');
  t.teardown(() => fs.closeSync(r));
  t.throws(() => native.getSeals(r), { code: 'EINVAL' }, 'a file without seal support');
  t.throws(() => native.addSeals(fd, 1 << 20), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => native.addSeals(fd, -1), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => (native.addSeals as unknown as (fd: number) => void)(fd), { code: 'ERR_INVALID_ARG_TYPE' });
});
