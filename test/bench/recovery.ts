// Recovery time: SIGKILL the worker while the test frontend keeps a request in flight, and
// measure from the worker's death to the first request its successor completes (the keeper's
// figure), plus the longest gap between two replies the client saw around each kill.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, waitFor, type TapLike } from '../frontend/helpers';
import { queryStatus } from '../../shared/status';
import * as F from '../frontend/fuse_proto';

export interface RecoveryResult {
  kills: number;
  keeperMs: number[];
  clientGapMs: number[];
}

export function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? NaN;
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

export async function measureRecovery(kills: number): Promise<RecoveryResult> {
  const h = benchHarness();
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  try {
    const s = await openSession(h, 'ours', { extraArgs: ['--state-dir', stateDir] });
    let stop = false;
    let last = performance.now();
    const gaps: number[] = [];
    let maxGap = 0;
    const loop = (async () => {
      while (!stop) {
        await s.fuse.getattr(F.FUSE_ROOT_ID, undefined, { timeoutMs: 30_000 });
        const now = performance.now();
        maxGap = Math.max(maxGap, now - last);
        last = now;
      }
    })();
    for (let i = 0; i < kills; i++) {
      // Steady state: the standby is loaded and waiting (kills far apart, as in production).
      await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'standby ready', 30_000, 10);
      const before = queryStatus(stateDir);
      maxGap = 0;
      process.kill(before.worker.pid!, 'SIGKILL');
      await waitFor(() => queryStatus(stateDir).recovery.count > before.recovery.count, `recovery ${i + 1}`, 30_000, 5);
      // Let a few requests through the new worker before the next kill.
      const seen = performance.now();
      await waitFor(() => last > seen, 'a request after recovery', 10_000, 2);
      gaps.push(maxGap);
    }
    stop = true;
    await loop;
    const st = queryStatus(stateDir);
    return { kills, keeperMs: st.recovery.recentMs.slice(-kills), clientGapMs: gaps };
  } finally {
    await h.cleanup();
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}

