// Recovery time: SIGKILL the worker while the test frontend keeps a request in flight, and
// measure from the worker's death to the first request its successor completes (the keeper's
// figure), the same from the client's side (from just before kill() to the completion of the
// first request submitted after it), plus the longest gap between two replies the client saw
// around each kill. Optionally with a large session first: N known inodes (looked up through the
// frontend) and M open files, all of which the successor must take over.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, waitFor, type TapLike } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';
import { LeanFuse, nameArg, runPool } from './lean_client';
import { quantile } from './stats';
import type { InodeFileHandles } from '../../shared/config';

export { quantile } from './stats';

export interface RecoveryResult {
  kills: number;
  /** The keeper's figure: worker death (SIGCHLD) to the successor's first completed request. */
  keeperMs: number[];
  /** Longest gap between two replies the client saw around each kill. */
  clientGapMs: number[];
  /** Client clock: kill() to the completion of the first request submitted after it. */
  clientKillMs: number[];
  /** Session size at the first kill (from the status query). */
  inodes: number;
  openFiles: number;
  /** fds the keeper held at the first kill (status fdsHeld). */
  keeperFds: number;
  /** Setup time (host files, lookups, opens), ms. */
  setupMs: number;
  /** Per kill, where the time went (ms, from the backend's log; monotonic clock shared by all
   * processes): kill → the keeper sees the exit (exitSeen), → the standby is woken (takeover;
   * 'start' for a fresh worker), → fd set fetched, → state loaded, → session built, → first
   * request served (usually the resubmitted inflight one, inside the vring restore). */
  phases: Array<Record<string, number>>;
}

export interface RecoveryOptions {
  /** Files to create on the host and look up through the frontend before the kills (default 0). */
  knownInodes?: number;
  /** Of those, how many to open (default 0). */
  openFiles?: number;
  /** --inode-file-handles (default never: an fd per inode, as the rows measured before). */
  inodeFileHandles?: InodeFileHandles;
  /** Progress messages. */
  log?: (msg: string) => void;
}

/** A minimal TapLike for running the frontend helpers outside tap. */
export function benchHarness(): TapLike & { cleanup(): Promise<void> } {
  const teardowns: Array<() => unknown> = [];
  const dirs: string[] = [];
  return {
    testdir: () => { const d = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-bench-')); dirs.push(d); return d; },
    teardown: (fn) => { teardowns.push(fn); },
    comment: () => {},
    cleanup: async () => {
      for (const fn of teardowns.reverse()) await fn();
      for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
    },
  };
}

const FILES_PER_DIR = 1000;
const dirName = (d: number): string => `d${String(d).padStart(4, '0')}`;
const fileName = (i: number): string => `f${String(i).padStart(6, '0')}`;

export async function measureRecovery(kills: number, opts: RecoveryOptions = {}): Promise<RecoveryResult> {
  const log = opts.log ?? (() => {});
  const known = opts.knownInodes ?? 0;
  const nopen = Math.min(opts.openFiles ?? 0, known);
  const h = benchHarness();
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  const t0 = Date.now();
  try {
    const ndirs = Math.ceil(known / FILES_PER_DIR);
    const s = await openSession(h, 'ours', {
      extraArgs: ['--state-dir', stateDir, '--inode-file-handles', opts.inodeFileHandles ?? 'never'],
      setup: (shared) => {
        if (known === 0) return;
        const t = Date.now();
        for (let d = 0; d < ndirs; d++) {
          const dir = path.join(shared, 'many', dirName(d));
          fs.mkdirSync(dir, { recursive: true });
          for (let i = d * FILES_PER_DIR; i < Math.min(known, (d + 1) * FILES_PER_DIR); i++) {
            fs.closeSync(fs.openSync(path.join(dir, fileName(i)), 'w'));
          }
        }
        log(`  created ${known} host files in ${Date.now() - t} ms`);
      },
    });
    if (known > 0) {
      // Look every file up once (as a guest's `find` would), then open some of them.
      const t = Date.now();
      const many = (await s.fuse.lookup(F.FUSE_ROOT_ID, 'many')).nodeid;
      const dirIds: bigint[] = [];
      for (let d = 0; d < ndirs; d++) dirIds.push((await s.fuse.lookup(many, dirName(d))).nodeid);
      const lean = new LeanFuse(s.fe, 32, 4096);
      const fileIds: bigint[] = new Array<bigint>(known);
      try {
        await runPool(lean, 32, async (sl, i) => {
          fileIds[i] = await lean.lookup(sl, dirIds[Math.floor(i / FILES_PER_DIR)]!, nameArg(fileName(i)));
        }, { count: known });
      } finally {
        lean.free();
      }
      log(`  looked up ${known} files in ${Date.now() - t} ms`);
      const t2 = Date.now();
      let next = 0;
      await Promise.all(Array.from({ length: 16 }, async () => {
        while (next < nopen) {
          const i = next++;
          await s.fuse.open(fileIds[Math.floor((i * known) / Math.max(1, nopen))]!, F.O.RDWR);
        }
      }));
      if (nopen > 0) log(`  opened ${nopen} files in ${Date.now() - t2} ms`);
    }
    const setupMs = Date.now() - t0;
    // The worker reports its session size periodically: wait until the report covers the setup.
    let st0 = queryStatus(stateDir);
    const until = Date.now() + 15_000;
    while ((st0.fuse.inodes < known || st0.fuse.openFiles < nopen) && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
      st0 = queryStatus(stateDir);
    }
    let stop = false;
    let last = performance.now();
    let killAt = 0;
    let firstAfterKill: number | null = null;
    const gaps: number[] = [];
    const killMs: number[] = [];
    const killNs: bigint[] = [];
    let maxGap = 0;
    const loop = (async () => {
      while (!stop) {
        const sub = performance.now();
        await s.fuse.getattr(F.FUSE_ROOT_ID, undefined, { timeoutMs: 60_000 });
        const now = performance.now();
        if (killAt > 0 && firstAfterKill === null && sub > killAt) firstAfterKill = now - killAt;
        maxGap = Math.max(maxGap, now - last);
        last = now;
      }
    })();
    const loopFailed = loop.then(() => null, (e: unknown) => e as Error);
    for (let i = 0; i < kills; i++) {
      // Steady state: the standby is loaded and waiting (kills far apart, as in production).
      await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'standby ready', 60_000, 10);
      const before = queryStatus(stateDir);
      maxGap = 0;
      firstAfterKill = null;
      killAt = performance.now();
      killNs.push(process.hrtime.bigint());
      process.kill(before.worker.pid!, 'SIGKILL');
      await waitFor(async () => {
        const e = await Promise.race([loopFailed, Promise.resolve(undefined)]);
        if (e) throw new Error(`the request loop failed around kill ${i + 1}: ${e.message}`);
        const st = queryStatus(stateDir);
        if (st.worker.state === 'failed') {
          const why = s.backend.log().split('\n').filter((l) => /"level":50/.test(l)).slice(-3).join(' | ');
          throw new Error(`kill ${i + 1}: the keeper gave up (worker state failed): ${why}`);
        }
        return st.recovery.count > before.recovery.count;
      }, `recovery ${i + 1}`, 60_000, 5);
      // A request submitted after the kill has completed (the successor serves).
      await waitFor(() => firstAfterKill !== null, 'a request after recovery', 60_000, 1);
      killMs.push(firstAfterKill!);
      gaps.push(maxGap);
      if ((i + 1) % 25 === 0) log(`  ${i + 1}/${kills} kills`);
    }
    stop = true;
    await loop;
    const st = queryStatus(stateDir);
    const phases = recoveryPhases(s.backend.log(), killNs);
    log(`  where the time went (ms from the previous step; p50 / p99 / max over ${phases.length} kills): ${summarisePhases(phases)}`);
    return {
      kills, keeperMs: st.recovery.recentMs.slice(-kills), clientGapMs: gaps, clientKillMs: killMs,
      inodes: st0.fuse.inodes, openFiles: st0.fuse.openFiles, keeperFds: st0.keeper.fdsHeld, setupMs, phases,
    };
  } finally {
    await h.cleanup();
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}

/** The per-kill timeline from the backend log: the keeper's 'worker recovered' lines (exitSeenNs)
 * and the successor's 'first request served after resume' lines (phasesNs), in kill order. */
export function recoveryPhases(logText: string, killNs: bigint[]): Array<Record<string, number>> {
  const exits: bigint[] = [];
  const marks: Array<Record<string, string>> = [];
  for (const line of logText.split('\n')) {
    if (!line.startsWith('{')) continue;
    let o: Record<string, unknown>;
    try { o = JSON.parse(line) as Record<string, unknown>; } catch { continue; }
    if (o.msg === 'worker recovered' && typeof o.exitSeenNs === 'string') exits.push(BigInt(o.exitSeenNs));
    if (o.msg === 'first request served after resume' && o.phasesNs) marks.push(o.phasesNs as Record<string, string>);
  }
  const ms = (a: bigint, b: bigint): number => Math.round(Number(b - a) / 1e4) / 100;
  const out: Array<Record<string, number>> = [];
  // Only the kills' recoveries: the log may hold earlier ones (none in this benchmark).
  const off = Math.max(0, exits.length - killNs.length);
  const moff = Math.max(0, marks.length - killNs.length);
  for (let i = 0; i < killNs.length; i++) {
    const e = exits[off + i];
    const m = marks[moff + i];
    if (e === undefined || m === undefined) continue;
    const row: Record<string, number> = { exitSeen: ms(killNs[i]!, e) };
    let prev = e;
    for (const [k, v] of Object.entries(m)) {
      if (k === 'start' && m.takeover !== undefined) continue;
      const t = BigInt(v);
      row[k] = ms(prev, t);
      prev = t;
    }
    row.total = ms(killNs[i]!, prev);
    out.push(row);
  }
  return out;
}

export function summarisePhases(phases: Array<Record<string, number>>): string {
  const names = [...new Set(phases.flatMap((p) => Object.keys(p)))];
  const r1 = (x: number): number => Math.round(x * 10) / 10;
  return names.map((k) => {
    const xs = phases.map((p) => p[k]).filter((x): x is number => x !== undefined);
    return `${k} ${r1(quantile(xs, 0.5))} / ${r1(quantile(xs, 0.99))} / ${r1(Math.max(...xs))}`;
  }).join(', ');
}
