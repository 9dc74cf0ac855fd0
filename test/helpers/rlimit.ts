// RLIMIT_NOFILE of other processes, for shortage tests (util-linux prlimit).
import * as fs from 'node:fs';
import { spawnSync } from 'node:child_process';

export function noFileLimits(pid: number): { soft: string; hard: string } {
  const m = /Max open files\s+(\S+)\s+(\S+)/.exec(fs.readFileSync(`/proc/${pid}/limits`, 'utf8'))!;
  return { soft: m[1]!, hard: m[2]! };
}

/** Sets the RLIMIT_NOFILE of `pid` (the hard limit stays unless given). */
export function setNoFile(pid: number, soft: number | string, hard: number | string = noFileLimits(pid).hard): void {
  const r = spawnSync('prlimit', ['--pid', String(pid), `--nofile=${soft}:${hard}`], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`prlimit failed: ${r.stderr}`);
}

/** The lowest fd number `pid` does not use. RLIMIT_NOFILE bounds fd numbers: with the soft limit
 * there (or below), the process can open nothing until it closes one below it. */
export function lowestFreeFd(pid: number): number {
  const used = new Set(fs.readdirSync(`/proc/${pid}/fd`).map(Number));
  let n = 0;
  while (used.has(n)) n++;
  return n;
}

/** lowestFreeFd at its lowest over a few samples: a keeper opens metrics.prom now and then for a
 * moment, and a limit set during that moment would leave it one spare fd. */
export async function settledLowestFreeFd(pid: number): Promise<number> {
  let min = Infinity;
  for (let i = 0; i < 10; i++) {
    min = Math.min(min, lowestFreeFd(pid));
    await new Promise((r) => setTimeout(r, 20));
  }
  return min;
}

export function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}
