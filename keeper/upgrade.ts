// Planned upgrades (docs/ARCHITECTURE.md, "Upgrades"): the bookkeeping of `virtiofs-keeper
// upgrade`, kept apart from the supervisor, which only drives the processes. One upgrade at a
// time: a fresh standby from the installed files → its compatibility checked against the state
// the serving worker writes → X_DRAIN (or, for a worker too old to drain, SIGKILL) → the standby
// takes over when the old worker is gone → X_RESUMED ends the pause.
import type { UpgradeResult, UpgradeStatus, WorkerInfo } from '../shared/keeper_protocol';

/** The upgrade's default deadline: a new worker must be loaded and resumed within it. */
export const DEFAULT_UPGRADE_TIMEOUT_MS = 60_000;
const RECENT_PAUSES = 200;

/** What the schema of a worker that does not say (older than the rule) is taken to be: every
 * build before the rule wrote and read schema 2 at most. */
const PRE_RULE: WorkerInfo = { version: 'unknown (older)', schema: 2, minReader: 2, drain: false };

/**
 * Whether `next` can resume what `current` writes (the state compatibility rule: a reader of
 * schema R reads 1..R, and a newer file declared readable from R). null: it can; else why not,
 * naming both versions.
 */
export function incompatibility(current: WorkerInfo | null, next: WorkerInfo | null): string | null {
  const cur = current ?? PRE_RULE;
  const nxt = next ?? PRE_RULE;
  if (cur.schema <= nxt.schema || cur.minReader <= nxt.schema) return null;
  return `the installed worker (virtiofs-keeper ${nxt.version}) reads state schemas 1 to ${nxt.schema}, but the serving worker `
    + `(virtiofs-keeper ${cur.version}) writes schema ${cur.schema}, readable from schema ${cur.minReader}: install a compatible build`;
}

export type UpgradePhase = 'standby' | 'draining' | 'handover';

/** One upgrade in progress. */
export interface Upgrade {
  phase: UpgradePhase;
  startedNs: bigint;
  timer: NodeJS.Timeout;
  reply: (r: UpgradeResult) => void;
  oldPid: number;
  oldInfo: WorkerInfo | null;
  newPid: number | null;
  /** The workers' real pids when a launcher forks them (pid namespace): what the result names,
   * as status does; oldPid/newPid stay the launchers' (the keeper.sock peers). */
  oldHostPid: number | null;
  newHostPid: number | null;
  newInfo: WorkerInfo | null;
  mode: 'drain' | 'kill' | null;
  /** When the old worker stopped popping (its X_DRAINED; for a kill, the kill). */
  pausedNs: bigint | null;
  /** When its X_DRAINED arrived (drain time = drainedNs - pausedNs). */
  drainedNs: bigint | null;
  left: number;
  /** Things that went differently (a death during the drain or the takeover). */
  notes: string[];
}

/** The log as it crosses a keeper re-exec (reexec.ts). */
export interface UpgradeLogSnapshot { count: number; failed: number; last: UpgradeResult | null; pausesMs: number[] }

export class UpgradeLog {
  private count = 0;
  private failed = 0;
  private last: UpgradeResult | null = null;
  private readonly pausesMs: number[] = [];

  snapshot(): UpgradeLogSnapshot {
    return { count: this.count, failed: this.failed, last: this.last, pausesMs: [...this.pausesMs] };
  }

  restore(s: UpgradeLogSnapshot): void {
    this.count = Number.isSafeInteger(s.count) ? s.count : 0;
    this.failed = Number.isSafeInteger(s.failed) ? s.failed : 0;
    this.last = s.last ?? null;
    this.pausesMs.splice(0, this.pausesMs.length, ...(Array.isArray(s.pausesMs) ? s.pausesMs.filter((v) => typeof v === 'number').slice(-RECENT_PAUSES) : []));
  }

  /** Counts an upgrade that ended in the keeper's part (its re-exec refused or failed). */
  finishWithoutWorker(r: UpgradeResult): void {
    if (r.result === 'ok') this.count++;
    else this.failed++;
    this.last = r;
  }

  finish(u: Upgrade, result: UpgradeResult['result'], reason: string | null, resumedNs: bigint | null): UpgradeResult {
    clearTimeout(u.timer);
    const now = process.hrtime.bigint();
    const ms = (a: bigint | null, b: bigint | null): number | null => (a === null || b === null || b < a ? null : Math.round(Number(b - a) / 1e4) / 100);
    const notes = [...u.notes, ...(reason !== null ? [reason] : [])];
    const r: UpgradeResult = {
      result, mode: u.mode, oldPid: u.oldHostPid ?? u.oldPid, newPid: u.newHostPid ?? u.newPid,
      oldVersion: u.oldInfo?.version ?? null, newVersion: u.newInfo?.version ?? null,
      pauseMs: ms(u.pausedNs, resumedNs), drainMs: ms(u.pausedNs, u.drainedNs), left: u.left,
      totalMs: ms(u.startedNs, now) ?? 0, reason: notes.length > 0 ? notes.join('; ') : null, at: new Date().toISOString(),
    };
    if (result === 'ok') {
      this.count++;
      if (r.pauseMs !== null) {
        this.pausesMs.push(r.pauseMs);
        if (this.pausesMs.length > RECENT_PAUSES) this.pausesMs.shift();
      }
    } else {
      this.failed++;
    }
    this.last = r;
    u.reply(r);
    return r;
  }

  status(inProgress: boolean): UpgradeStatus {
    const sorted = [...this.pausesMs].sort((a, b) => a - b);
    const pick = (q: number): number | null => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : null);
    return {
      count: this.count, failed: this.failed, inProgress, last: this.last,
      pauseP50Ms: pick(0.5), pauseP99Ms: pick(0.99), pauseMaxMs: sorted.length ? sorted[sorted.length - 1]! : null,
      recentPauseMs: [...this.pausesMs],
    };
  }
}
