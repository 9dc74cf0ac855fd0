// Micro-benchmarks through the test frontend (no guest CPU in the way): metadata rates, a large
// directory listing, sequential and random I/O, latency at queue depth 1, peak RSS. One call of
// runMicro() measures one backend session; bench.ts alternates backends and repeats.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LeanError, LeanFuse, nameArg, runPool, type Slot } from './lean_client';
import { CLK_TCK, CpuMeter, peakRss, steadyPrivateKb, type BenchSession } from './procs';
import { IDLE_REDUCE_MS } from '../../shared/memory';
import { quantile } from './stats';
import { makePrng } from '../helpers/prng';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';

export const MIB = 1 << 20;
/** Requests in flight for the metadata rates (a guest with several busy threads). */
export const META_DEPTH = 16;
export const SEQ_DEPTH = 8;
export const DIR_ENTRIES = 10_000;
export const READDIR_BUF = 4096;
/** Files in the warm-up directory (never used by a measurement). */
export const WARM_ENTRIES = 1000;

export interface MicroParams {
  /** Seconds per time-bounded run. */
  seconds: number;
  /** CREATE+RELEASE pairs (and UNLINKs) per session. */
  creates: number;
  /** Files of the small_files_qd1 row. */
  smallFiles: number;
  /** Size of the sequential-I/O file. */
  bigMiB: number;
  /** READDIRPLUS listings per session (the first finds new inodes, the rest known ones). */
  listings: number;
}

/** The host tree every session works on (created once, before any backend starts). */
export interface Fixture {
  shared: string;
  bigMiB: number;
}

export function makeFixture(shared: string, bigMiB: number, log: (s: string) => void): Fixture {
  const t0 = Date.now();
  fs.mkdirSync(shared, { recursive: true });
  for (const [dir, prefix, n] of [['cold', 'f', DIR_ENTRIES], ['list', 'e', DIR_ENTRIES], ['warm', 'x', WARM_ENTRIES]] as const) {
    fs.mkdirSync(path.join(shared, dir));
    for (let i = 0; i < n; i++) fs.closeSync(fs.openSync(path.join(shared, dir, `${prefix}${String(i).padStart(5, '0')}`), 'w'));
  }
  writeDataFiles(shared, bigMiB);
  log(`fixture: 2 x ${DIR_ENTRIES} files, ${bigMiB} MiB file, in ${Date.now() - t0} ms`);
  return { shared, bigMiB };
}

/** The data rows' files alone (big.bin, hot.txt, the dir w/): the fixture of the disk group, whose
 * rows are READ and WRITE only. */
export function makeDataFixture(shared: string, bigMiB: number, log: (s: string) => void): Fixture {
  const t0 = Date.now();
  fs.mkdirSync(shared, { recursive: true });
  writeDataFiles(shared, bigMiB);
  log(`disk fixture: ${bigMiB} MiB file in ${shared}, in ${Date.now() - t0} ms`);
  return { shared, bigMiB };
}

function writeDataFiles(shared: string, bigMiB: number): void {
  fs.writeFileSync(path.join(shared, 'hot.txt'), Buffer.alloc(4096, 0x68));
  fs.mkdirSync(path.join(shared, 'w'));
  // Real data (not a sparse file), so reads copy page-cache pages.
  const fd = fs.openSync(path.join(shared, 'big.bin'), 'w');
  const chunk = Buffer.alloc(MIB);
  for (let i = 0; i < bigMiB; i++) {
    chunk.fill(i & 0xff);
    chunk.writeUInt32LE(i, 0);
    fs.writeSync(fd, chunk);
  }
  fs.closeSync(fd);
}

/** One measured value: `value` in the metric's unit; backend CPU per op when it is a rate. */
export interface Sample {
  value: number;
  /** Backend CPU (all its processes, user+system) per op, µs. */
  cpuUsPerOp?: number;
  /** The bench process's own CPU per op, µs (the frontend is in the loop on the same 2 cores). */
  clientCpuUsPerOp?: number;
  extra?: Record<string, unknown>;
}

export type MetricKey =
  | 'getattr' | 'lookup_hot' | 'lookup_cold' | 'create_release' | 'unlink' | 'small_files_qd1'
  | 'readdirplus_first' | 'readdirplus_again' | 'seq_read' | 'seq_write'
  | 'rand_read_qd1' | 'rand_read_qd32'
  | 'getattr_p50' | 'getattr_p99' | 'openrel_p50' | 'openrel_p99' | 'read4k_p50' | 'read4k_p99' | 'rss';

export interface MetricDef { key: MetricKey; name: string; unit: string; higherIsBetter: boolean }

export function metricDefs(p: MicroParams): MetricDef[] {
  return [
    { key: 'lookup_hot', name: `LOOKUP hot (same name), QD${META_DEPTH}`, unit: 'ops/s', higherIsBetter: true },
    { key: 'lookup_cold', name: `LOOKUP cold (${DIR_ENTRIES} distinct names, each once), QD${META_DEPTH}`, unit: 'ops/s', higherIsBetter: true },
    { key: 'getattr', name: `GETATTR, QD${META_DEPTH}`, unit: 'ops/s', higherIsBetter: true },
    { key: 'create_release', name: `CREATE+RELEASE (${p.creates} new files), QD${META_DEPTH}`, unit: 'pairs/s', higherIsBetter: true },
    { key: 'unlink', name: `UNLINK (${p.creates} files), QD${META_DEPTH}`, unit: 'ops/s', higherIsBetter: true },
    // What tar x asks of each file it unpacks, one request after the other (the guest rows'
    // developer loop spends most of its backend CPU here).
    { key: 'small_files_qd1', name: `small files written as tar x does (${p.smallFiles} x LOOKUP, CREATE, GETXATTR, 4 KiB WRITE, FLUSH, RELEASE, SETATTR), QD1`, unit: 'files/s', higherIsBetter: true },
    { key: 'readdirplus_first', name: `READDIRPLUS ${DIR_ENTRIES} entries, first listing (${READDIR_BUF} B calls)`, unit: 'ms', higherIsBetter: false },
    { key: 'readdirplus_again', name: `READDIRPLUS ${DIR_ENTRIES} entries, repeat listing`, unit: 'ms', higherIsBetter: false },
    { key: 'seq_read', name: `sequential READ, 1 MiB requests, ${SEQ_DEPTH} in flight, ${p.bigMiB} MiB file`, unit: 'MB/s', higherIsBetter: true },
    { key: 'seq_write', name: `sequential WRITE, 1 MiB requests, ${SEQ_DEPTH} in flight, ${p.bigMiB} MiB new file`, unit: 'MB/s', higherIsBetter: true },
    { key: 'rand_read_qd1', name: 'random 4 KiB READ, QD1', unit: 'IOPS', higherIsBetter: true },
    { key: 'rand_read_qd32', name: 'random 4 KiB READ, QD32', unit: 'IOPS', higherIsBetter: true },
    { key: 'getattr_p50', name: 'GETATTR latency p50, QD1', unit: 'µs', higherIsBetter: false },
    { key: 'getattr_p99', name: 'GETATTR latency p99, QD1', unit: 'µs', higherIsBetter: false },
    // A request pair TypeScript serves and journals (an open file's fd for the keeper, a
    // session change each), one after the other as grep -r or cp issue them.
    { key: 'openrel_p50', name: 'OPEN+RELEASE latency p50, QD1', unit: 'µs', higherIsBetter: false },
    { key: 'openrel_p99', name: 'OPEN+RELEASE latency p99, QD1', unit: 'µs', higherIsBetter: false },
    { key: 'read4k_p50', name: '4 KiB READ latency p50, QD1', unit: 'µs', higherIsBetter: false },
    { key: 'read4k_p99', name: '4 KiB READ latency p99, QD1', unit: 'µs', higherIsBetter: false },
    { key: 'rss', name: 'peak RSS (VmHWM) after the micro runs', unit: 'MiB', higherIsBetter: false },
  ];
}

/** Measures `fn` (which performs `ops` operations) with backend and client CPU accounting. */
async function measured(s: BenchSession, fn: () => Promise<{ ops: number; ms: number }>): Promise<{ ops: number; ms: number; cpuUsPerOp: number; clientCpuUsPerOp: number }> {
  const meter = new CpuMeter(() => s.pids());
  const c0 = process.cpuUsage();
  const r = await fn();
  const c = process.cpuUsage(c0);
  const ops = Math.max(1, r.ops);
  return { ...r, cpuUsPerOp: (meter.elapsedMs() * 1000) / ops, clientCpuUsPerOp: (c.user + c.system) / ops };
}

const rate = (r: { ops: number; ms: number }): number => (r.ops * 1000) / r.ms;

/** Awaits a request that must fail with `errno` (a bench step that expects ENOENT or ENODATA). */
async function expectErrno(p: Promise<unknown>, errno: number): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (e instanceof LeanError && e.errno === errno) return;
    throw e;
  }
  throw new Error(`expected ${F.errnoName(errno)}, the request succeeded`);
}

async function batchForget(s: BenchSession, ids: Map<bigint, number>): Promise<void> {
  const items = [...ids].map(([nodeid, n]) => ({ nodeid, nlookup: BigInt(n) }));
  for (let i = 0; i < items.length; i += 200) await s.fuse.batchForget(items.slice(i, i + 200));
}

/**
 * The same untimed warm-up for every session before anything is measured: each code path the
 * measurements use runs a few thousand times, so that a JIT (ours is Node.js) is past its
 * tiering and the first measured row is not penalised. Touches no file a measurement uses.
 */
export async function warmUp(s: BenchSession, fx: Fixture): Promise<void> {
  const fuse = s.fuse;
  const root = F.FUSE_ROOT_ID;
  const warm = (await fuse.lookup(root, 'warm')).nodeid;
  const wdir = (await fuse.lookup(root, 'w')).nodeid;
  const lean = new LeanFuse(s.fe, META_DEPTH, 4096);
  try {
    await runPool(lean, META_DEPTH, (sl) => lean.getattr(sl, warm), { count: 20_000 });
    // LOOKUPs of a name already known (the LOOKUP hot row) and OPEN+RELEASE of a known file
    // (the OPEN+RELEASE latency rows): other paths than a new inode's or a CREATE's.
    const hotName = nameArg('hot.txt');
    const hot = await runPool(lean, META_DEPTH, (sl) => lean.lookup(sl, root, hotName), { count: 5000 });
    const hotId = (await fuse.lookup(root, 'hot.txt')).nodeid;
    await runPool(lean, 1, async (sl) => {
      const fh = await lean.open(sl, hotId, F.O.RDONLY);
      await lean.release(sl, hotId, fh, F.O.RDONLY);
    }, { count: 2000 });
    await fuse.forget(hotId, hot.ops + 1);
    for (let round = 0; round < 3; round++) {
      const ids = new Map<bigint, number>();
      await runPool(lean, META_DEPTH, async (sl, i) => {
        const id = await lean.lookup(sl, warm, nameArg(`x${String(i).padStart(5, '0')}`));
        ids.set(id, (ids.get(id) ?? 0) + 1);
      }, { count: WARM_ENTRIES });
      await batchForget(s, ids);
    }
    const dname = 'warmup-scratch';
    const dir = (await fuse.mkdir(wdir, dname, 0o755)).nodeid;
    const ids = new Map<bigint, number>();
    const names = Array.from({ length: 1500 }, (_, i) => nameArg(`s${i}`));
    await runPool(lean, META_DEPTH, async (sl, i) => {
      const c = await lean.create(sl, dir, names[i]!, F.O.WRONLY | F.O.CREAT | F.O.EXCL);
      ids.set(c.nodeid, 1);
      await lean.release(sl, c.nodeid, c.fh, F.O.WRONLY);
    }, { count: names.length });
    await runPool(lean, META_DEPTH, (sl, i) => lean.unlink(sl, dir, names[i]!), { count: names.length });
    await batchForget(s, ids);
    await fuse.rmdir(wdir, dname);
    for (let k = 0; k < 3; k++) {
      const dh = await fuse.opendir(warm);
      let off = 0n;
      for (;;) {
        const b = await lean.readdirplus(lean.slots[0]!, warm, dh.fh, off, READDIR_BUF);
        if (b.count === 0) break;
        off = b.lastOff;
      }
      await fuse.releasedir(warm, dh.fh);
    }
    const big = (await fuse.lookup(root, 'big.bin')).nodeid;
    const fh = (await fuse.open(big, F.O.RDONLY)).fh;
    const pages = (fx.bigMiB * MIB) / 4096;
    await runPool(lean, META_DEPTH, (sl, i) => lean.read(sl, big, fh, ((i * 7919) % pages) * 4096, 4096), { count: 5000 });
    await fuse.release(big, fh, F.O.RDONLY);
    await fuse.forget(big, 1);
  } finally {
    lean.free();
  }
  await settle(s);
}

/**
 * Waits until the backend's processes are idle (at most one clock tick of CPU in a 100 ms
 * window; at most 3 s), so that what the warm-up left behind (ours: the standby folding the
 * journal it wrote, a compaction) is not charged to the first row measured. A quiet window, not
 * a fixed pause: it ends as soon as the backend is quiet, long before the worker's idle memory
 * reduction (IDLE_REDUCE_MS) would start.
 */
async function settle(s: BenchSession): Promise<void> {
  const deadline = Date.now() + 3000;
  for (;;) {
    const meter = new CpuMeter(() => s.pids());
    await new Promise((resolve) => setTimeout(resolve, 100));
    if (meter.elapsedMs() <= 1000 / CLK_TCK || Date.now() >= deadline) return;
  }
}

/**
 * Runs the micro workloads on one session. `only` restricts the metrics (for the journaling
 * comparison); `tag` makes this session's file names unique.
 */
export async function runMicro(s: BenchSession, fx: Fixture, p: MicroParams, tag: string,
  only?: ReadonlySet<MetricKey>, log: (m: string) => void = () => {}): Promise<Map<MetricKey, Sample>> {
  const out = new Map<MetricKey, Sample>();
  const want = (k: MetricKey): boolean => only === undefined || only.has(k);
  // Each row's time window on CLOCK_MONOTONIC (µs, as V8's CPU profiles count): from the last
  // lap() to its put(), so that prof_summary --windows can split a profile by row.
  const nowUs = (): number => Number(process.hrtime.bigint() / 1000n);
  let lapFrom = nowUs();
  const lap = (): void => { lapFrom = nowUs(); };
  const put = (k: MetricKey, x: Sample, windowUs: [number, number] = [lapFrom, nowUs()]): void => {
    out.set(k, { ...x, extra: { ...x.extra, windowUs } });
  };
  const durationMs = p.seconds * 1000;
  const fuse = s.fuse;
  const root = F.FUSE_ROOT_ID;
  const hot = (await fuse.lookup(root, 'hot.txt')).nodeid;
  const wdir = (await fuse.lookup(root, 'w')).nodeid;
  const prng = makePrng(0x5eed);

  // --- metadata rates (QD16) -----------------------------------------------------------------
  {
    const lean = new LeanFuse(s.fe, META_DEPTH, 4096, 4096);
    try {
      if (want('getattr')) {
        lap();
        const r = await measured(s, () => runPool(lean, META_DEPTH, (sl) => lean.getattr(sl, hot), { durationMs }));
        put('getattr', { value: rate(r), cpuUsPerOp: r.cpuUsPerOp, clientCpuUsPerOp: r.clientCpuUsPerOp });
      }
      if (want('lookup_hot')) {
        lap();
        const name = nameArg('hot.txt');
        const r = await measured(s, () => runPool(lean, META_DEPTH, (sl) => lean.lookup(sl, root, name), { durationMs }));
        put('lookup_hot', { value: rate(r), cpuUsPerOp: r.cpuUsPerOp, clientCpuUsPerOp: r.clientCpuUsPerOp });
        // Give the lookups back (one FORGET for the accumulated count).
        await fuse.forget(hot, r.ops);
      }
      if (want('lookup_cold')) {
        lap();
        const cold = (await fuse.lookup(root, 'cold')).nodeid;
        const names = Array.from({ length: DIR_ENTRIES }, (_, i) => nameArg(`f${String(i).padStart(5, '0')}`));
        const ids = new Map<bigint, number>();
        const r = await measured(s, () => runPool(lean, META_DEPTH, async (sl, i) => {
          const id = await lean.lookup(sl, cold, names[i]!);
          ids.set(id, (ids.get(id) ?? 0) + 1);
        }, { count: DIR_ENTRIES }));
        put('lookup_cold', { value: rate(r), cpuUsPerOp: r.cpuUsPerOp, clientCpuUsPerOp: r.clientCpuUsPerOp });
        await batchForget(s, ids);
      }
      if (want('create_release') || want('unlink')) {
        lap();
        const dname = `c-${tag}`;
        const dir = (await fuse.mkdir(wdir, dname, 0o755)).nodeid;
        const names = Array.from({ length: p.creates }, (_, i) => nameArg(`n${String(i).padStart(6, '0')}`));
        const ids = new Map<bigint, number>();
        const flags = F.O.WRONLY | F.O.CREAT | F.O.EXCL;
        const r = await measured(s, () => runPool(lean, META_DEPTH, async (sl: Slot, i) => {
          const c = await lean.create(sl, dir, names[i]!, flags);
          ids.set(c.nodeid, (ids.get(c.nodeid) ?? 0) + 1);
          await lean.release(sl, c.nodeid, c.fh, F.O.WRONLY);
        }, { count: p.creates }));
        put('create_release', { value: rate(r), cpuUsPerOp: r.cpuUsPerOp, clientCpuUsPerOp: r.clientCpuUsPerOp });
        lap();
        const u = await measured(s, () => runPool(lean, META_DEPTH, (sl, i) => lean.unlink(sl, dir, names[i]!), { count: p.creates }));
        if (want('unlink')) put('unlink', { value: rate(u), cpuUsPerOp: u.cpuUsPerOp, clientCpuUsPerOp: u.clientCpuUsPerOp });
        await batchForget(s, ids);
        await fuse.rmdir(wdir, dname);
      }
      if (want('small_files_qd1')) {
        lap();
        const dname = `s-${tag}`;
        const dir = (await fuse.mkdir(wdir, dname, 0o755)).nodeid;
        const names = Array.from({ length: p.smallFiles }, (_, i) => nameArg(`t${String(i).padStart(6, '0')}`));
        const capability = Buffer.concat([F.getxattrIn(0), nameArg('security.capability')]);
        const ids = new Map<bigint, number>();
        const flags = F.O.WRONLY | F.O.CREAT | F.O.EXCL;
        const sl = lean.slots[0]!;
        const r = await measured(s, () => runPool(lean, 1, async (_sl, i) => {
          await expectErrno(lean.lookup(sl, dir, names[i]!), F.Errno.ENOENT);
          const c = await lean.create(sl, dir, names[i]!, flags);
          ids.set(c.nodeid, (ids.get(c.nodeid) ?? 0) + 1);
          await expectErrno(lean.getxattrSize(sl, c.nodeid, capability), F.Errno.ENODATA);
          const n = await lean.write(sl, c.nodeid, c.fh, 0, 4096);
          if (n !== 4096) throw new Error(`short write: ${n} of 4096 bytes`);
          await lean.flush(sl, c.nodeid, c.fh);
          await lean.release(sl, c.nodeid, c.fh, F.O.WRONLY);
          await lean.setTimes(sl, c.nodeid, 1_700_000_000 + i);
        }, { count: p.smallFiles }));
        put('small_files_qd1', { value: rate(r), cpuUsPerOp: r.cpuUsPerOp, clientCpuUsPerOp: r.clientCpuUsPerOp });
        await runPool(lean, META_DEPTH, (slot, i) => lean.unlink(slot, dir, names[i]!), { count: p.smallFiles });
        await batchForget(s, ids);
        await fuse.rmdir(wdir, dname);
      }
      // --- READDIRPLUS of a 10,000-entry directory --------------------------------------------
      if (want('readdirplus_first') || want('readdirplus_again')) {
        const list = (await fuse.lookup(root, 'list')).nodeid;
        const times: number[] = [];
        /** Backend CPU of each listing, µs (the "op" of these rows is one whole listing). */
        const cpus: number[] = [];
        let entries = 0;
        let calls = 0;
        const meter = new CpuMeter(() => s.pids());
        const sl = lean.slots[0]!;
        const windows: Array<[number, number]> = [];
        for (let k = 0; k < p.listings; k++) {
          lap();
          const one = new CpuMeter(() => s.pids());
          const t0 = performance.now();
          const dh = await fuse.opendir(list);
          let off = 0n;
          let n = 0;
          for (;;) {
            const b = await lean.readdirplus(sl, list, dh.fh, off, READDIR_BUF);
            calls++;
            if (b.count === 0) break;
            n += b.count;
            off = b.lastOff;
          }
          await fuse.releasedir(list, dh.fh);
          times.push(performance.now() - t0);
          cpus.push(one.elapsedMs() * 1000);
          windows.push([lapFrom, nowUs()]);
          entries = n;
        }
        if (entries < DIR_ENTRIES) throw new Error(`READDIRPLUS listed ${entries} entries, expected at least ${DIR_ENTRIES}`);
        const cpuUsPerListing = (meter.elapsedMs() * 1000) / p.listings;
        put('readdirplus_first', { value: times[0]!, cpuUsPerOp: cpus[0]!, extra: { entries, callsPerListing: calls / p.listings } }, windows[0]!);
        if (times.length > 1) {
          const again = times.slice(1);
          const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
          put('readdirplus_again', { value: mean(again), cpuUsPerOp: mean(cpus.slice(1)), extra: { listingsMs: times.map((t) => Math.round(t * 10) / 10), cpuUsPerListingAll: Math.round(cpuUsPerListing) } }, [windows[1]![0], windows.at(-1)![1]]);
        }
      }
      // --- GETATTR latency at QD1 --------------------------------------------------------------
      if (want('getattr_p50') || want('getattr_p99')) {
        lap();
        const lat: number[] = [];
        await runPool(lean, 1, (sl) => lean.getattr(sl, hot), { durationMs: Math.min(durationMs, 2000) }, lat);
        put('getattr_p50', { value: quantile(lat, 0.5), extra: { samples: lat.length } });
        put('getattr_p99', { value: quantile(lat, 0.99), extra: { samples: lat.length } });
      }
      // --- OPEN+RELEASE latency at QD1 ---------------------------------------------------------
      if (want('openrel_p50') || want('openrel_p99')) {
        lap();
        const lat: number[] = [];
        await runPool(lean, 1, async (sl) => {
          const fh = await lean.open(sl, hot, F.O.RDONLY);
          await lean.release(sl, hot, fh, F.O.RDONLY);
        }, { durationMs: Math.min(durationMs, 2000) }, lat);
        put('openrel_p50', { value: quantile(lat, 0.5), extra: { samples: lat.length } });
        put('openrel_p99', { value: quantile(lat, 0.99), extra: { samples: lat.length } });
      }
    } finally {
      lean.free();
    }
  }

  // --- data path ---------------------------------------------------------------------------------
  const chunks = fx.bigMiB;
  if (want('seq_read')) {
    lap();
    const big = (await fuse.lookup(root, 'big.bin')).nodeid;
    const fh = (await fuse.open(big, F.O.RDONLY)).fh;
    const lean = new LeanFuse(s.fe, SEQ_DEPTH, MIB);
    try {
      // Warm-up pass (page cache, first-touch of the guest buffers), then the timed runs.
      await runPool(lean, SEQ_DEPTH, (sl, i) => lean.read(sl, big, fh, (i % chunks) * MIB, MIB), { count: Math.min(chunks, 32) });
      let short = 0;
      const r = await measured(s, () => runPool(lean, SEQ_DEPTH, async (sl, i) => {
        const n = await lean.read(sl, big, fh, (i % chunks) * MIB, MIB);
        if (n !== MIB) short++;
      }, { durationMs: Math.max(durationMs, 1000) }));
      if (short > 0) throw new Error(`${short} short 1 MiB reads`);
      put('seq_read', { value: (r.ops * MIB) / 1e6 / (r.ms / 1000), cpuUsPerOp: r.cpuUsPerOp, clientCpuUsPerOp: r.clientCpuUsPerOp, extra: { passes: Math.round((r.ops / chunks) * 10) / 10 } });
    } finally {
      lean.free();
    }
    await fuse.release(big, fh, F.O.RDONLY);
  }
  if (want('seq_write')) {
    lap();
    const name = `seq-${tag}.bin`;
    const c = await fuse.create(wdir, name, F.O.WRONLY);
    const lean = new LeanFuse(s.fe, SEQ_DEPTH, 64, MIB);
    try {
      let short = 0;
      const r = await measured(s, () => runPool(lean, SEQ_DEPTH, async (sl, i) => {
        const n = await lean.write(sl, c.entry.nodeid, c.open.fh, i * MIB, MIB);
        if (n !== MIB) short++;
      }, { count: chunks }));
      if (short > 0) throw new Error(`${short} short 1 MiB writes`);
      put('seq_write', { value: (r.ops * MIB) / 1e6 / (r.ms / 1000), cpuUsPerOp: r.cpuUsPerOp, clientCpuUsPerOp: r.clientCpuUsPerOp });
    } finally {
      lean.free();
    }
    await fuse.release(c.entry.nodeid, c.open.fh, F.O.WRONLY);
    const size = fs.statSync(path.join(fx.shared, 'w', name)).size;
    if (size !== chunks * MIB) throw new Error(`sequential write left ${size} bytes, expected ${chunks * MIB}`);
    await fuse.unlink(wdir, name);
    await fuse.forget(c.entry.nodeid, 1);
  }
  if (want('rand_read_qd1') || want('rand_read_qd32') || want('read4k_p50') || want('read4k_p99')) {
    const big = (await fuse.lookup(root, 'big.bin')).nodeid;
    const fh = (await fuse.open(big, F.O.RDONLY)).fh;
    const pages = (fx.bigMiB * MIB) / 4096;
    const lean = new LeanFuse(s.fe, 32, 4096);
    const rnd = (): number => Math.floor(prng() * pages) * 4096;
    try {
      await runPool(lean, 32, (sl) => lean.read(sl, big, fh, rnd(), 4096), { count: 2000 }); // warm-up
      const lat: number[] = [];
      lap();
      const r1 = await measured(s, () => runPool(lean, 1, (sl) => lean.read(sl, big, fh, rnd(), 4096), { durationMs }, lat));
      put('rand_read_qd1', { value: rate(r1), cpuUsPerOp: r1.cpuUsPerOp, clientCpuUsPerOp: r1.clientCpuUsPerOp });
      put('read4k_p50', { value: quantile(lat, 0.5), extra: { samples: lat.length } });
      put('read4k_p99', { value: quantile(lat, 0.99), extra: { samples: lat.length } });
      if (want('rand_read_qd32')) {
        lap();
        const r32 = await measured(s, () => runPool(lean, 32, (sl) => lean.read(sl, big, fh, rnd(), 4096), { durationMs }));
        put('rand_read_qd32', { value: rate(r32), cpuUsPerOp: r32.cpuUsPerOp, clientCpuUsPerOp: r32.clientCpuUsPerOp });
      }
    } finally {
      lean.free();
    }
    await fuse.release(big, fh, F.O.RDONLY);
  }

  // --- peak RSS ----------------------------------------------------------------------------------
  if (want('rss')) {
    let workerPid: number | null = null;
    let standbyPid: number | null = null;
    if (s.stateDir !== null) {
      const st = queryStatus(s.stateDir);
      workerPid = st.worker.pid;
      standbyPid = st.worker.standbyPid;
    }
    const r = peakRss(s, workerPid, standbyPid);
    const mib = (kb: number): number => Math.round((kb / 1024) * 10) / 10;
    const partsMiB = Object.fromEntries(Object.entries(r.parts).map(([k, v]) => [k, mib(v)]));
    // Then idle: what an export costs most of its life (ours gives memory back after a quiet
    // interval, shared/memory.ts), per process.
    const steady = await steadyPrivateKb(s, workerPid, standbyPid, 2 * IDLE_REDUCE_MS + 500);
    const steadyMiB = Object.fromEntries(Object.entries(steady).map(([k, v]) => [k, mib(v)]));
    put('rss', { value: r.totalKb / 1024, extra: { partsMiB, steadyPrivateMiB: steadyMiB } });
    log(`  peak RSS ${JSON.stringify(partsMiB)} MiB; private at steady state ${JSON.stringify(steadyMiB)} MiB`);
  }
  return out;
}
