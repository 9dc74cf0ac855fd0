// Giving memory back (shared/memory.ts, docs/ARCHITECTURE.md "Memory"): the addon's
// reduceMemory really releases garbage and the young generation, and the idle reducer runs it
// once per quiet period, never while activity goes on. The bound on a whole service is
// test/frontend/memory.test.ts.
import t from 'tap';
import * as v8 from 'node:v8';
import { native } from '../../shared/native';
import { IdleMemoryReducer } from '../../shared/memory';
import { logger } from '../../shared/log';
import { keepHandle } from '../../worker/fs/handle_bytes';

/** The bytes of a kept handle (a view of its slab). */
const keepHandleBytes = (bytes: Uint8Array): Buffer => keepHandle(1, 1, bytes).handle;

const heapPhysical = (): number => v8.getHeapStatistics().total_physical_size;

t.test('reduceMemory gives the heap garbage back; mallocStats reads glibc', async (t) => {
  native.reduceMemory();
  const base = heapPhysical();
  let junk: Array<{ i: number; s: string }> | null = [];
  for (let i = 0; i < 300_000; i++) junk.push({ i, s: `x${i}` });
  const grown = heapPhysical();
  t.ok(grown > base + 8 * 1024 * 1024, `the heap grew by ${((grown - base) / 1048576).toFixed(1)} MiB`);
  junk = null;
  t.type(native.reduceMemory(), 'boolean', 'reduceMemory says whether malloc gave pages back');
  const after = heapPhysical();
  t.ok(after < base + 2 * 1024 * 1024, `and shrank back to ${((after - base) / 1048576).toFixed(1)} MiB above where it started`);
  const m = native.mallocStats();
  for (const k of ['arena', 'mmapped', 'inUse', 'free', 'releasable'] as const) t.ok(Number.isFinite(m[k]) && m[k] >= 0, `mallocStats().${k} = ${m[k]}`);
  t.ok(m.inUse > 0, 'something is malloc\'d');
});

t.test('the idle reducer: once after activity stops for a whole interval, not again while idle', async (t) => {
  let activity = 0;
  const r = new IdleMemoryReducer(() => activity, logger('memory-test'), 60_000);
  t.equal(r.tick(), true, 'the first quiet tick gives the start-up garbage back');
  t.equal(r.tick(), false, 'not again while nothing happens');
  activity++;
  t.equal(r.tick(), false, 'a tick that sees activity does not reduce (a burst may go on)');
  activity++;
  t.equal(r.tick(), false, 'nor the next one if there was more');
  t.equal(r.tick(), true, 'a whole quiet interval after activity: reduces');
  t.equal(r.tick(), false, 'once');
  r.start();
  r.stop();
});

t.test('inode handle bytes: copies, packed into shared slabs', async (t) => {
  const a = keepHandleBytes(Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]));
  const src = Buffer.from([9, 9, 9, 9]);
  const b = keepHandleBytes(src);
  src.fill(0);
  t.same([...a], [1, 2, 3, 4, 5, 6, 7, 8], 'first handle intact');
  t.same([...b], [9, 9, 9, 9], 'a copy: the source changing does not matter');
  t.equal(a.buffer, b.buffer, 'both in one slab');
  t.equal(a.buffer.byteLength, 64 * 1024, 'of 64 KiB');
  // A slab that cannot take the next handle is left for a new one.
  let last = b;
  for (let i = 0; i < 600; i++) last = keepHandleBytes(Buffer.alloc(128, i & 0xff));
  t.not(last.buffer, a.buffer, 'a full slab is followed by a new one');
  t.same([...last], new Array(128).fill(599 & 0xff), 'whose bytes are right');
});
