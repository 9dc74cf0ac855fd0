// READ/WRITE fast path: small requests try RWF_NOWAIT on the JS thread and answer with a plain
// number on a page-cache hit; misses, large requests and filesystems without NOWAIT support
// go to the threadpool (a Promise). Both paths must give the same bytes. The share lives in the
// tap test dir (ext4 here: NOWAIT reads yes, buffered NOWAIT writes no); misses are made real
// by dropping the file's pages with `dd oflag=nocache` (posix_fadvise DONTNEED).
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { C, native } from '../../shared/native';
import * as K from '../../worker/fs/host_constants';
import { Memory, ROOT, b, ctx, rejectsErrno, setup } from './fixtures/helpers';

const MiB = 1 << 20;
// The addon's own functions: spies wrap these and teardowns put these back, however nested.
const ORIG = { preadv2Sync: native.preadv2Sync, preadv: native.preadv, pwritev2Sync: native.pwritev2Sync, pwritev: native.pwritev };

function pattern(len: number, seed: number): Buffer {
  const d = Buffer.alloc(len);
  for (let i = 0; i < len; i++) d[i] = (i * 31 + seed) & 0xff;
  return d;
}

function dropCache(file: string): void {
  execFileSync('dd', [`of=${file}`, 'oflag=nocache', 'conv=notrunc,fdatasync', 'count=0'], { stdio: 'ignore' });
}

/** Counts the addon's read calls: which path served a request. */
function spyReads(t: Test): { sync: number[]; async: number } {
  const seen = { sync: [] as number[], async: 0 };
  const origSync = ORIG.preadv2Sync;
  const origAsync = ORIG.preadv;
  native.preadv2Sync = (...a) => {
    const n = origSync(...a);
    seen.sync.push(n);
    return n;
  };
  native.preadv = (...a) => {
    seen.async++;
    origAsync(...a);
  };
  t.teardown(() => {
    native.preadv2Sync = origSync;
    native.preadv = origAsync;
  });
  return seen;
}

function noWaitReads(dir: string): boolean {
  const p = path.join(dir, '.nowait-probe');
  fs.writeFileSync(p, 'x');
  const f = native.openat(C.AT_FDCWD, p, C.O_RDONLY, 0);
  try {
    return native.preadv2Sync(f, 0, [], C.RWF_NOWAIT) !== -C.EOPNOTSUPP;
  } finally {
    native.close(f);
    fs.unlinkSync(p);
  }
}

t.test('READ: cached → number; dropped → Promise; same bytes either way', async (t) => {
  const data = pattern(MiB, 1);
  const { fs: pfs, share } = setup(t, { f: data, small: 'x'.repeat(100) });
  if (!noWaitReads(share)) {
    t.pass('skipped: the test dir has no RWF_NOWAIT reads');
    return;
  }
  const mem = new Memory(MiB);
  t.teardown(() => mem.close());
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const o = pfs.open(ctx, f.nodeid, K.O_RDONLY);
  const file = path.join(share, 'f');
  fs.readFileSync(file); // all cached

  const hit = pfs.read(ctx, f.nodeid, o.fh, 8192, 4096, [mem.seg(100, 1000), mem.seg(4096, 3096)]);
  t.equal(hit, 4096, 'page-cache hit answered synchronously');
  t.same(Buffer.from(mem.bytes.subarray(100, 1100)), data.subarray(8192, 9192));
  t.same(Buffer.from(mem.bytes.subarray(4096, 7192)), data.subarray(9192, 12288));

  const big = pfs.read(ctx, f.nodeid, o.fh, 0, 256 * 1024, [mem.seg(0, 256 * 1024)]);
  t.ok(big instanceof Promise, 'larger than 128 KiB: threadpool even when cached');
  t.equal(await big, 256 * 1024);
  t.same(Buffer.from(mem.bytes.subarray(0, 256 * 1024)), data.subarray(0, 256 * 1024));

  dropCache(file);
  mem.bytes.fill(0);
  const miss = pfs.read(ctx, f.nodeid, o.fh, 512 * 1024, 4096, [mem.seg(0, 4096)]);
  t.ok(miss instanceof Promise, 'miss: falls back to the threadpool');
  t.equal(await miss, 4096);
  t.same(Buffer.from(mem.bytes.subarray(0, 4096)), data.subarray(512 * 1024, 512 * 1024 + 4096));

  // Partly cached: the first 64 KiB in the cache, the next ones not. The cached part is copied
  // on the JS thread, the rest on the threadpool; the answer is the whole range.
  dropCache(file);
  // The first 64 KiB cached by writing them again, not by reading: a read leaves a readahead
  // mark in its pages, which makes the kernel read the next ones ahead as soon as they are met.
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, data, 0, 64 * 1024, 0);
  fs.fdatasyncSync(fd);
  fs.closeSync(fd);
  mem.bytes.fill(0);
  const spy = spyReads(t);
  const part = pfs.read(ctx, f.nodeid, o.fh, 0, 128 * 1024, [mem.seg(0, 100), mem.seg(1000, 128 * 1024 - 100)]);
  t.equal(await part, 128 * 1024, 'partly cached range read in full');
  t.same(Buffer.from(mem.bytes.subarray(0, 100)), data.subarray(0, 100));
  t.same(Buffer.from(mem.bytes.subarray(1000, 1000 + 128 * 1024 - 100)), data.subarray(100, 128 * 1024));
  // The attempt that stops at the first uncached page also starts the kernel's readahead of the
  // rest (RWF_NOWAIT without NOIO), which on a fast disk may be cached before the next
  // attempt: then the JS thread reads it too. And the second half may be cached with the
  // first (seen once: the first attempt read all 128 KiB; probably a large page-cache folio,
  // which the write of the first 64 KiB filled from the disk, or a readahead still in flight
  // when the cache was dropped). Whichever, the cached bytes are read on the JS thread first
  // and nothing is read twice.
  const onJsThread = spy.sync.filter((n) => n > 0).reduce((a, n) => a + n, 0);
  t.ok(spy.sync[0] === 64 * 1024 || spy.sync[0] === 128 * 1024, `the cached part on the JS thread first (${spy.sync[0]} bytes)`);
  if (spy.sync.includes(-C.EAGAIN)) {
    t.same([onJsThread, spy.sync.length, spy.async], [64 * 1024, 2, 1], 'then a miss: the rest on the threadpool');
  } else {
    t.same([onJsThread, spy.async], [128 * 1024, 0], 'then the rest, cached meanwhile or already, on the JS thread too');
  }

  const s = pfs.lookup(ctx, ROOT, b('small'));
  const so = pfs.open(ctx, s.nodeid, K.O_RDONLY);
  t.equal(pfs.read(ctx, s.nodeid, so.fh, 0, 4096, [mem.seg(0, 4096)]), 100, 'short read at EOF stays synchronous');
  t.equal(pfs.read(ctx, s.nodeid, so.fh, 100, 4096, [mem.seg(0, 4096)]), 0, 'read at EOF');
  t.equal(pfs.read(ctx, s.nodeid, so.fh, 0, 0, [mem.seg(0, 4096)]), 0, 'size 0');

  // Errors stay rejections whichever path would have run.
  await rejectsErrno(t, pfs.read(ctx, f.nodeid, 999, 0, 1, [mem.seg(0, 1)]), K.EBADF, 'unknown fh');
  await rejectsErrno(t, pfs.read(ctx, f.nodeid, o.fh, -1, 1, [mem.seg(0, 1)]), K.EINVAL, 'negative offset');
  pfs.release(ctx, f.nodeid, o.fh, 0, 0, 0n);
  pfs.release(ctx, s.nodeid, so.fh, 0, 0, 0n);
});

t.test('READ on tmpfs (no NOWAIT reads, data is memory): a plain read on the JS thread', async (t) => {
  if (!fs.existsSync('/dev/shm')) {
    t.pass('skipped: no /dev/shm');
    return;
  }
  const data = pattern(256 * 1024, 7);
  const dir = fs.mkdtempSync('/dev/shm/vfsk-sync-io-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'f'), data);
  const { fs: shm } = setup(t, {}, { sharedDir: dir });
  const mem = new Memory(256 * 1024);
  t.teardown(() => mem.close());
  const f = shm.lookup(ctx, ROOT, b('f'));
  const o = shm.open(ctx, f.nodeid, K.O_RDONLY);
  const spy = spyReads(t);
  for (let i = 0; i < 3; i++) {
    mem.bytes.fill(0);
    t.equal(shm.read(ctx, f.nodeid, o.fh, 4096 * i, 4096, [mem.seg(0, 4096)]), 4096, `read ${i}: synchronous`);
    t.same(Buffer.from(mem.bytes.subarray(0, 4096)), data.subarray(4096 * i, 4096 * (i + 1)));
  }
  t.same(spy.sync, [-C.EOPNOTSUPP, 4096, 4096, 4096], 'NOWAIT tried once, then plain reads');
  t.equal(shm.read(ctx, f.nodeid, o.fh, 256 * 1024 - 10, 4096, [mem.seg(0, 4096)]), 10, 'short at EOF');
  const big = shm.read(ctx, f.nodeid, o.fh, 0, 256 * 1024, [mem.seg(0, 256 * 1024)]);
  t.ok(big instanceof Promise, 'large reads stay on the threadpool');
  t.equal(await big, 256 * 1024);
  t.same(Buffer.from(mem.bytes), data);
  t.equal(spy.async, 1);
  shm.release(ctx, f.nodeid, o.fh, 0, 0, 0n);
});

t.test('WRITE: small writes try NOWAIT, fall back, and land exactly once', async (t) => {
  const { fs: pfs, share } = setup(t, { f: 'x'.repeat(10), a: 'abc' });
  const mem = new Memory(MiB);
  t.teardown(() => mem.close());
  const src = pattern(200 * 1024, 3);
  Buffer.from(src).copy(Buffer.from(mem.buffer), 0);
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const o = pfs.open(ctx, f.nodeid, K.O_RDWR);
  for (let i = 0; i < 3; i++) {
    t.equal(await pfs.write(ctx, f.nodeid, o.fh, 4096 * i, 4096, [mem.seg(4096 * i, 2000), mem.seg(4096 * i + 2000, 2096)], 0), 4096, `small write ${i}`);
  }
  t.equal(await pfs.write(ctx, f.nodeid, o.fh, 3 * 4096, 150 * 1024, [mem.seg(3 * 4096, 150 * 1024)], 0), 150 * 1024, 'large write');
  const want = src.subarray(0, 3 * 4096 + 150 * 1024);
  t.same(fs.readFileSync(path.join(share, 'f')), want, 'file content');
  await rejectsErrno(t, pfs.write(ctx, f.nodeid, 999, 0, 1, [mem.seg(0, 1)], 0), K.EBADF, 'unknown fh');
  pfs.release(ctx, f.nodeid, o.fh, 0, 0, 0n);

  const a = pfs.lookup(ctx, ROOT, b('a'));
  const ao = pfs.open(ctx, a.nodeid, K.O_WRONLY | K.O_APPEND);
  Buffer.from('XYZ').copy(Buffer.from(mem.buffer), 0);
  t.equal(await pfs.write(ctx, a.nodeid, ao.fh, 0, 2, [mem.seg(0, 2)], 0), 2);
  t.equal(await pfs.write(ctx, a.nodeid, ao.fh, 0, 1, [mem.seg(2, 1)], 0), 1);
  t.equal(fs.readFileSync(path.join(share, 'a'), 'utf8'), 'abcXYZ', 'O_APPEND still appends');
  pfs.release(ctx, a.nodeid, ao.fh, 0, 0, 0n);
});

/** Stands in for a filesystem with buffered NOWAIT writes (ext4 and tmpfs have none): each
 * pwritev2Sync call gets the next scripted behaviour. 'all' writes everything (flags 0),
 * a number writes at most that many bytes, 'eagain'/'eopnotsupp' write nothing. */
function scriptWrites(t: Test, script: Array<'all' | number | 'eagain' | 'eopnotsupp'>): { calls: number; async: number } {
  const seen = { calls: 0, async: 0 };
  const origSync = ORIG.pwritev2Sync;
  const origAsync = ORIG.pwritev;
  native.pwritev2Sync = (fd, pos, segs) => {
    const step = script[seen.calls++] ?? 'all';
    if (step === 'eagain') return -C.EAGAIN;
    if (step === 'eopnotsupp') return -C.EOPNOTSUPP;
    if (step === 'all') return origSync(fd, pos, segs, 0);
    const cut: typeof segs = [];
    let left = step;
    for (const s of segs) {
      if (left <= 0) break;
      cut.push({ ...s, length: Math.min(s.length, left) });
      left -= Math.min(s.length, left);
    }
    return origSync(fd, pos, cut, 0);
  };
  native.pwritev = (...a) => {
    seen.async++;
    origAsync(...a);
  };
  t.teardown(() => {
    native.pwritev2Sync = origSync;
    native.pwritev = origAsync;
  });
  return seen;
}

t.test('WRITE paths with NOWAIT support: synchronous, short + rest, append, unsupported', async (t) => {
  const { fs: pfs, share } = setup(t, { f: '', a: 'abc', s: '' });
  const mem = new Memory(64 * 1024);
  t.teardown(() => mem.close());
  const src = pattern(64 * 1024, 5);
  Buffer.from(src).copy(Buffer.from(mem.buffer), 0);
  const spy = scriptWrites(t, ['all', 1000, 'eagain', 'eopnotsupp']);
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const o = pfs.open(ctx, f.nodeid, K.O_RDWR);
  t.equal(pfs.write(ctx, f.nodeid, o.fh, 0, 4096, [mem.seg(0, 4096)], 0), 4096, 'whole write on the JS thread: a number');
  const short = pfs.write(ctx, f.nodeid, o.fh, 4096, 4096, [mem.seg(4096, 500), mem.seg(4596, 3596)], 0);
  t.ok(short instanceof Promise, 'short NOWAIT write: the rest on the threadpool');
  t.equal(await short, 4096, 'the whole write is answered');
  t.equal(spy.async, 1);
  t.equal(await pfs.write(ctx, f.nodeid, o.fh, 8192, 4096, [mem.seg(8192, 4096)], 0), 4096, 'EAGAIN: threadpool');
  t.equal(await pfs.write(ctx, f.nodeid, o.fh, 12288, 4096, [mem.seg(12288, 4096)], 0), 4096, 'EOPNOTSUPP: threadpool');
  t.equal(spy.calls, 4);
  t.equal(await pfs.write(ctx, f.nodeid, o.fh, 16384, 4096, [mem.seg(16384, 4096)], 0), 4096);
  t.equal(spy.calls, 4, 'EOPNOTSUPP is remembered for the open file');
  t.equal(spy.async, 4);
  t.same(fs.readFileSync(path.join(share, 'f')), src.subarray(0, 20480), 'every byte once, in place');
  pfs.release(ctx, f.nodeid, o.fh, 0, 0, 0n);

  // A short append is answered short: appending the rest separately could interleave.
  const spy2 = scriptWrites(t, [2]);
  const a = pfs.lookup(ctx, ROOT, b('a'));
  const ao = pfs.open(ctx, a.nodeid, K.O_WRONLY | K.O_APPEND);
  t.equal(pfs.write(ctx, a.nodeid, ao.fh, 0, 10, [mem.seg(0, 10)], 0), 2, 'short append answered as is');
  t.equal(spy2.async, 0);
  t.same(fs.readFileSync(path.join(share, 'a')), Buffer.concat([Buffer.from('abc'), src.subarray(0, 2)]));
  pfs.release(ctx, a.nodeid, ao.fh, 0, 0, 0n);

  // O_DSYNC: the flush after the copy would block, so no synchronous attempt at all.
  const spy3 = scriptWrites(t, []);
  const sn = pfs.lookup(ctx, ROOT, b('s'));
  const so = pfs.open(ctx, sn.nodeid, K.O_WRONLY | K.O_DSYNC);
  t.equal(await pfs.write(ctx, sn.nodeid, so.fh, 0, 100, [mem.seg(0, 100)], 0), 100);
  t.equal(spy3.calls, 0, 'no NOWAIT attempt for O_DSYNC');
  t.equal(spy3.async, 1);
  pfs.release(ctx, sn.nodeid, so.fh, 0, 0, 0n);
});
