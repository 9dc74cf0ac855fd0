// `virtiofs-keeper status`: asks the keeper over keeper.sock (read-only query) and prints a
// table or JSON. Exit codes for monitoring: 0 serving, 1 degraded (worker down, restarting or
// failed), 2 no keeper reachable.
import * as path from 'node:path';
import { KeeperClient } from '../worker/keeper_client';
import type { KeeperStatus } from '../keeper/keeper';
import { DEFAULT_STATE_ROOT, keeperSocketPath, listInstances } from './config';

export interface StatusReport {
  name: string;
  keeper: { pid: number; fdsHeld: number; stateDir: string; socketPath: string; sharedDir: string; error: string | null };
  worker: { pid: number | null; state: string; restarts: number; lastExit: KeeperStatus['worker']['lastExit']; uptimeS: number | null; status: string | null; standbyPid: number | null; standbyReady: boolean; backoff: KeeperStatus['worker']['backoff'] };
  vhost: { connected: boolean; queues: Array<{ index: number; size: number; running: boolean; lastAvail: number; used: number; inflight: number }> };
  fuse: { initialized: boolean; inodes: number; openFiles: number; openDirs: number; lockWaits: number };
  recovery: KeeperStatus['recovery'];
  fdNames: Record<string, number>;
}

export function queryStatus(stateDir: string): StatusReport {
  const client = KeeperClient.connect(keeperSocketPath(stateDir));
  try {
    return buildReport(client.queryStatus() as KeeperStatus, stateDir);
  } finally {
    client.close();
  }
}

/** The report from the keeper's raw status (used by the CLI and by the keeper's metrics). */
export function buildReport(k: KeeperStatus, stateDir: string): StatusReport {
  {
    const w = (k.workerStats ?? {}) as { vhost?: StatusReport['vhost']; fuse?: StatusReport['fuse'] };
    return {
      name: path.basename(stateDir),
      keeper: { pid: k.keeper.pid, fdsHeld: k.keeper.fdsHeld, stateDir: k.keeper.stateDir, socketPath: k.keeper.socketPath, sharedDir: k.keeper.sharedDir, error: k.keeper.error },
      worker: {
        pid: k.worker.pid, state: k.worker.state, restarts: k.worker.restarts, lastExit: k.worker.lastExit, status: k.worker.status,
        standbyPid: k.worker.standbyPid, standbyReady: k.worker.standbyReady,
        // An older keeper reports none.
        backoff: k.worker.backoff ?? { fruitlessDeaths: 0, delayMs: 0, restartAt: null },
        uptimeS: k.worker.startedAt && k.worker.pid ? Math.round((Date.now() - Date.parse(k.worker.startedAt)) / 100) / 10 : null,
      },
      vhost: { connected: w.vhost?.connected ?? false, queues: w.vhost?.queues ?? [] },
      fuse: { initialized: w.fuse?.initialized ?? false, inodes: w.fuse?.inodes ?? 0, openFiles: w.fuse?.openFiles ?? 0, openDirs: w.fuse?.openDirs ?? 0, lockWaits: w.fuse?.lockWaits ?? 0 },
      recovery: k.recovery,
      fdNames: k.fdNames,
    };
  }
}

/** Prometheus text exposition format (0.0.4) of a report. */
export function formatPrometheus(reports: StatusReport[]): string {
  const out: string[] = [];
  const metric = (name: string, type: 'gauge' | 'counter', help: string, rows: Array<[Record<string, string>, number | null]>): void => {
    out.push(`# HELP virtiofs_keeper_${name} ${help}`, `# TYPE virtiofs_keeper_${name} ${type}`);
    for (const [labels, v] of rows) {
      if (v === null || !Number.isFinite(v)) continue;
      const l = Object.entries(labels).map(([k, x]) => `${k}="${x.replace(/["\\\n]/g, '_')}"`).join(',');
      out.push(`virtiofs_keeper_${name}{${l}} ${v}`);
    }
  };
  const each = (f: (r: StatusReport) => number | null): Array<[Record<string, string>, number | null]> => reports.map((r) => [{ name: r.name }, f(r)]);
  const sec = (ms: number | null): number | null => (ms === null ? null : ms / 1000);
  metric('worker_up', 'gauge', 'The worker is serving (1) or not (0).', each((r) => (r.worker.state === 'running' ? 1 : 0)));
  metric('worker_restarts_total', 'counter', 'Worker restarts since the keeper started.', each((r) => r.worker.restarts));
  metric('worker_backoff_seconds', 'gauge', 'Crash-loop delay before the next worker starts (0: none).', each((r) => r.worker.backoff.delayMs / 1000));
  metric('worker_uptime_seconds', 'gauge', 'Seconds since the serving worker started.', each((r) => r.worker.uptimeS));
  metric('standby_ready', 'gauge', 'A warm standby worker is loaded and waiting.', each((r) => (r.worker.standbyReady ? 1 : 0)));
  metric('keeper_error', 'gauge', 'The keeper reports an error (e.g. unusable saved state).', each((r) => (r.keeper.error ? 1 : 0)));
  metric('keeper_fds', 'gauge', 'File descriptors held by the keeper.', each((r) => r.keeper.fdsHeld));
  metric('recoveries_total', 'counter', 'Completed recoveries (worker death to first request served).', each((r) => r.recovery.count));
  metric('recovery_last_seconds', 'gauge', 'Duration of the last recovery.', each((r) => sec(r.recovery.lastMs)));
  metric('recovery_p50_seconds', 'gauge', 'Median recovery duration.', each((r) => sec(r.recovery.p50Ms)));
  metric('recovery_max_seconds', 'gauge', 'Longest recovery duration.', each((r) => sec(r.recovery.maxMs)));
  metric('vhost_connected', 'gauge', 'The vhost-user frontend (QEMU) is connected.', each((r) => (r.vhost.connected ? 1 : 0)));
  const q = (f: (x: StatusReport['vhost']['queues'][number]) => number): Array<[Record<string, string>, number]> =>
    reports.flatMap((r) => r.vhost.queues.map((x) => [{ name: r.name, queue: String(x.index) }, f(x)] as [Record<string, string>, number]));
  metric('queue_size', 'gauge', 'Virtqueue size.', q((x) => x.size));
  metric('queue_last_avail', 'gauge', 'Last avail index consumed.', q((x) => x.lastAvail));
  metric('queue_used', 'gauge', 'Used index published.', q((x) => x.used));
  metric('queue_inflight', 'gauge', 'Requests in flight.', q((x) => x.inflight));
  metric('fuse_inodes', 'gauge', 'Inodes the guest knows (with lookup counts).', each((r) => r.fuse.inodes));
  metric('fuse_open_files', 'gauge', 'Open file handles.', each((r) => r.fuse.openFiles));
  metric('fuse_open_dirs', 'gauge', 'Open directory handles.', each((r) => r.fuse.openDirs));
  metric('fuse_lock_waits', 'gauge', 'SETLKW requests parked waiting for a lock.', each((r) => r.fuse.lockWaits));
  return out.join('\n') + '\n';
}

const ms = (v: number | null): string => (v === null ? '-' : `${v.toFixed(1)} ms`);

export function formatStatus(r: StatusReport): string {
  const lines: string[] = [];
  const row = (k: string, v: string): void => { lines.push(`  ${k.padEnd(18)} ${v}`); };
  lines.push(`virtiofs-keeper instance ${r.name}`);
  row('shared dir', r.keeper.sharedDir);
  row('socket', r.keeper.socketPath);
  row('keeper', `pid ${r.keeper.pid}, holds ${r.keeper.fdsHeld} fds (${Object.entries(r.fdNames).map(([k, v]) => `${k} ${v}`).join(', ')})`);
  if (r.keeper.error) row('ERROR', r.keeper.error);
  row('worker', `${r.worker.state}, pid ${r.worker.pid ?? '-'}, up ${r.worker.uptimeS ?? '-'} s, ${r.worker.restarts} restarts`);
  row('standby', r.worker.standbyReady ? `ready, pid ${r.worker.standbyPid}` : r.worker.standbyPid ? `starting, pid ${r.worker.standbyPid}` : 'none');
  if (r.worker.backoff.delayMs > 0 || r.worker.backoff.fruitlessDeaths > 0) {
    row('crash loop', `${r.worker.backoff.fruitlessDeaths} workers died without serving; ${r.worker.backoff.delayMs > 0 ? `next start in ${r.worker.backoff.delayMs} ms (at ${r.worker.backoff.restartAt})` : 'restarted at once'}`);
  }
  if (r.worker.lastExit) row('last exit', `${r.worker.lastExit.signal ?? `code ${r.worker.lastExit.code}`} at ${r.worker.lastExit.at}`);
  row('recovery', `last ${ms(r.recovery.lastMs)}, p50 ${ms(r.recovery.p50Ms)}, max ${ms(r.recovery.maxMs)} (${r.recovery.count} recoveries)`);
  row('vhost-user', r.vhost.connected ? 'connected' : 'not connected');
  for (const q of r.vhost.queues) {
    row(`  queue ${q.index}${q.index === 0 ? ' (hiprio)' : ''}`, `size ${q.size}, ${q.running ? 'running' : 'stopped'}, last avail ${q.lastAvail}, used ${q.used}, in flight ${q.inflight}`);
  }
  row('FUSE', `${r.fuse.initialized ? 'initialized' : 'not initialized'}; ${r.fuse.inodes} inodes, ${r.fuse.openFiles} open files, ${r.fuse.openDirs} open dirs, ${r.fuse.lockWaits} parked lock waits`);
  return lines.join('\n');
}

export function exitCodeFor(r: StatusReport): number {
  return r.worker.state === 'running' && r.keeper.error === null ? 0 : 1;
}

export async function showStatus(a: { name?: string; stateDir?: string; json: boolean; prometheus?: boolean; watch?: boolean }): Promise<number> {
  const dirs = a.stateDir ? [path.resolve(a.stateDir)] : a.name ? [path.join(DEFAULT_STATE_ROOT, a.name)] : listInstances().map((n) => path.join(DEFAULT_STATE_ROOT, n));
  if (dirs.length === 0) {
    process.stderr.write(`no virtiofs-keeper instances under ${DEFAULT_STATE_ROOT}\n`);
    return 2;
  }
  const once = (): { text: string; code: number; errors: string[] } => {
    const reports: StatusReport[] = [];
    const errors: string[] = [];
    let code = 0;
    for (const d of dirs) {
      try {
        reports.push(queryStatus(d));
      } catch (e) {
        errors.push(`virtiofs-keeper: no keeper answers at ${keeperSocketPath(d)}: ${(e as Error).message}`);
        code = 2;
      }
    }
    for (const r of reports) code = Math.max(code, exitCodeFor(r));
    let text: string;
    if (a.prometheus) text = formatPrometheus(reports);
    else if (a.json) text = JSON.stringify(a.stateDir || a.name ? reports[0] ?? null : reports, null, 2) + '\n';
    else text = reports.map(formatStatus).join('\n\n') + '\n';
    return { text, code, errors };
  };
  if (!a.watch) {
    const r = once();
    for (const e of r.errors) process.stderr.write(`${e}\n`);
    process.stdout.write(r.text);
    return r.code;
  }
  // --watch: redraw every second until interrupted.
  let last = 0;
  const stop = new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
  for (;;) {
    const r = once();
    last = r.code;
    process.stdout.write(`\x1b[H\x1b[2J${new Date().toISOString()}  (Ctrl-C to quit)\n${r.errors.join('\n')}${r.errors.length ? '\n' : ''}${r.text}`);
    const tick = new Promise<'tick'>((resolve) => setTimeout(() => resolve('tick'), 1000));
    if ((await Promise.race([tick, stop.then(() => 'stop' as const)])) === 'stop') return last;
  }
}
