// Differential fuzz of the two split ring implementations: random (mostly hostile) descriptor
// tables, indirect tables and avail entries in one guest memory; the TypeScript SplitRing and
// the addon's ring must pop the same chains (heads, segments, lengths, counters), refuse the
// same ones and leave the same used ring and inflight region behind.
import t from 'tap';
import { native, C } from '../../shared/native';
import { GuestMemory } from '../../worker/virtqueue/guest_memory';
import { ChainError, InflightRegion, inflightQueueRegionSize, splitRingFactory, type VirtRing } from '../../worker/virtqueue/split_ring';
import { nativeRingFactory } from '../../worker/virtqueue/native_ring';
import { fuzzSeed, makePrng } from '../helpers/prng';

/** rand.int(n): an integer in [0, n). */
interface Rand { int(n: number): number }

const GPA = 0x10000;
const UADDR = 0x7f00_0000_0000;
const SIZE = 256 * 1024;
const QSIZE = 16;
const DESC = 0x1000;
const AVAIL = 0x2000;
const USED = 0x3000;
const ITERATIONS = 1500;

interface Side { mem: GuestMemory; bytes: Uint8Array; view: DataView; inflight: InflightRegion; close(): void }

function side(): Side {
  const fd = native.memfdCreate('diff-guest', C.MFD_CLOEXEC!);
  native.ftruncate(fd, SIZE);
  const mem = new GuestMemory();
  const region = mem.addRegion(fd, 'mem.0', GPA, SIZE, UADDR, 0);
  const ifd = native.memfdCreate('diff-inflight', C.MFD_CLOEXEC!);
  native.ftruncate(ifd, inflightQueueRegionSize(QSIZE));
  const ibuf = native.mmap(ifd, inflightQueueRegionSize(QSIZE), 0, true);
  const inflight = new InflightRegion(new DataView(ibuf), 0, QSIZE);
  inflight.initialize(0n);
  return { mem, bytes: region.bytes, view: region.view, inflight,
    close: () => { mem.clear(); native.munmap(ibuf); native.close(fd); native.close(ifd); } };
}

/** A random descriptor: mostly plausible, sometimes hostile (out of memory, huge, looping). */
function randomDesc(r: Rand, view: DataView, at: number, tableSize: number): void {
  const k = r.int(20);
  const addr = k === 0 ? r.int(2 ** 32) * 2 ** 20 : k === 1 ? SIZE + GPA - r.int(64) : GPA + 0x4000 + r.int(SIZE - 0x8000);
  const len = k === 2 ? 0xffff_ffff : k === 3 ? 16 * (1 + r.int(8)) : r.int(5000);
  let flags = 0;
  if (r.int(3) !== 0) flags |= 1; // NEXT
  if (r.int(3) === 0) flags |= 2; // WRITE
  if (r.int(8) === 0) flags |= 4; // INDIRECT
  view.setBigUint64(at, BigInt(addr), true);
  view.setUint32(at + 8, len >>> 0, true);
  view.setUint16(at + 12, flags, true);
  view.setUint16(at + 14, r.int(8) === 0 ? r.int(65536) : r.int(tableSize + 1), true);
}

function describe(c: ReturnType<VirtRing['pop']>): unknown {
  if (c === null) return null;
  if (c instanceof ChainError) return { error: true, head: c.head };
  if ('served' in c) throw new Error('a ring without a server served a request');
  const seg = (s: { offset: number; length: number }): [number, number] => [s.offset, s.length];
  return { head: c.head, counter: c.counter, readable: c.readable.map(seg), writable: c.writable.map(seg), rl: c.readableLen, wl: c.writableLen };
}

t.test('SplitRing and the addon ring agree on random descriptor chains', async (t) => {
  const seed = fuzzSeed();
  t.comment(`FUZZ_SEED=${seed}`);
  const next = makePrng(seed);
  const r: Rand = { int: (n) => Math.floor(next() * n) };
  const a = side();
  const b = side();
  t.teardown(() => { a.close(); b.close(); });
  let chains = 0, errors = 0;
  for (let it = 0; it < ITERATIONS; it++) {
    // One random memory image, copied to both sides.
    const img = new DataView(new ArrayBuffer(0x4000));
    for (let i = 0; i < QSIZE; i++) randomDesc(r, img, DESC + 16 * i, QSIZE);
    // Indirect tables live at 0x4000.. (the addresses the random descriptors mostly point to).
    const n = 1 + r.int(QSIZE);
    img.setUint16(AVAIL + 2, n, true);
    for (let i = 0; i < n; i++) img.setUint16(AVAIL + 4 + 2 * i, r.int(8) === 0 ? QSIZE + r.int(100) : r.int(QSIZE), true);
    for (const s of [a, b]) {
      s.bytes.fill(0, 0, 0x4000);
      s.bytes.set(new Uint8Array(img.buffer), 0);
      // Random indirect-table content at a few addresses the descriptors may name.
      s.inflight.initialize(0n);
    }
    for (let k = 0; k < 64; k++) {
      const at = 0x4000 + r.int(SIZE - 0x8000) & ~15;
      const tmp = new DataView(new ArrayBuffer(16));
      randomDesc(r, tmp, 0, 8);
      for (const s of [a, b]) new Uint8Array(s.bytes.buffer, at, 16).set(new Uint8Array(tmp.buffer));
    }
    const addrs = { size: QSIZE, descUser: UADDR + DESC, availUser: UADDR + AVAIL, usedUser: UADDR + USED };
    const eventIdx = r.int(2) === 0;
    const indirect = r.int(4) !== 0;
    const ra = splitRingFactory(a.mem, addrs, 0, eventIdx, indirect, a.inflight, 1);
    const rb = nativeRingFactory(null)(b.mem, addrs, 0, eventIdx, indirect, b.inflight, 1);
    const got: unknown[][] = [[], []];
    for (const [i, ring] of [ra, rb].entries()) {
      for (let c = ring.pop(); c !== null; c = ring.pop()) {
        got[i]!.push(describe(c));
        if ('served' in c) continue;
        if (!(c instanceof ChainError)) ring.pushUsed(c.head, c.writableLen);
        else if (c.head >= 0) ring.pushUsed(c.head, 0);
      }
      got[i]!.push(ring.publishUsed(), ring.usedIndex(), ring.lastAvailIdx);
    }
    if (JSON.stringify(got[0], (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) !==
        JSON.stringify(got[1], (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))) {
      t.same(got[1], got[0], `iteration ${it}: the addon ring differs`);
      return;
    }
    for (const x of got[0]!) {
      if (x !== null && typeof x === 'object') {
        if ('error' in x) errors++;
        else chains++;
      }
    }
    if (Buffer.compare(Buffer.from(b.bytes.buffer, USED, 4 + 8 * QSIZE), Buffer.from(a.bytes.buffer, USED, 4 + 8 * QSIZE)) !== 0) {
      t.fail(`iteration ${it}: the used rings differ`);
      return;
    }
    const ia = new Uint8Array(a.inflight.view.buffer, 0, inflightQueueRegionSize(QSIZE));
    const ib = new Uint8Array(b.inflight.view.buffer, 0, inflightQueueRegionSize(QSIZE));
    if (Buffer.compare(Buffer.from(ia), Buffer.from(ib)) !== 0) {
      t.fail(`iteration ${it}: the inflight regions differ`);
      return;
    }
  }
  t.ok(chains > 500 && errors > 500, `both kinds exercised: ${chains} chains, ${errors} refused`);
});
