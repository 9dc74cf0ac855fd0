// `virtiofs-keeper status`: asks the keeper over keeper.sock (read-only query) and prints a
// table or JSON. Exit codes for monitoring: 0 serving, 1 degraded (worker down, restarting or
// failed), 2 no keeper reachable.
import * as path from 'node:path';
import { KeeperClient } from '../worker/keeper_client';
import type { KeeperStatus } from '../keeper/keeper';
import { keeperSocketPath } from './config';
import { DEFAULT_STATE_ROOT, listInstances } from './cli';

export interface StatusReport {
  name: string;
  keeper: { pid: number; fdsHeld: number; stateDir: string; socketPath: string; sharedDir: string; error: string | null };
  worker: { pid: number | null; state: string; restarts: number; lastExit: KeeperStatus['worker']['lastExit']; uptimeS: number | null; status: string | null; standbyPid: number | null; standbyReady: boolean };
  vhost: { connected: boolean; queues: Array<{ index: number; size: number; running: boolean; lastAvail: number; used: number; inflight: number }> };
  fuse: { initialized: boolean; inodes: number; openFiles: number; openDirs: number };
  recovery: KeeperStatus['recovery'];
  fdNames: Record<string, number>;
}

export function queryStatus(stateDir: string): StatusReport {
  const client = KeeperClient.connect(keeperSocketPath(stateDir));
  try {
    const k = client.queryStatus() as KeeperStatus;
    const w = (k.workerStats ?? {}) as { vhost?: StatusReport['vhost']; fuse?: StatusReport['fuse'] };
    return {
      name: path.basename(stateDir),
      keeper: { pid: k.keeper.pid, fdsHeld: k.keeper.fdsHeld, stateDir: k.keeper.stateDir, socketPath: k.keeper.socketPath, sharedDir: k.keeper.sharedDir, error: k.keeper.error },
      worker: {
        pid: k.worker.pid, state: k.worker.state, restarts: k.worker.restarts, lastExit: k.worker.lastExit, status: k.worker.status,
        standbyPid: k.worker.standbyPid, standbyReady: k.worker.standbyReady,
        uptimeS: k.worker.startedAt && k.worker.pid ? Math.round((Date.now() - Date.parse(k.worker.startedAt)) / 100) / 10 : null,
      },
      vhost: { connected: w.vhost?.connected ?? false, queues: w.vhost?.queues ?? [] },
      fuse: { initialized: w.fuse?.initialized ?? false, inodes: w.fuse?.inodes ?? 0, openFiles: w.fuse?.openFiles ?? 0, openDirs: w.fuse?.openDirs ?? 0 },
      recovery: k.recovery,
      fdNames: k.fdNames,
    };
  } finally {
    client.close();
  }
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
  if (r.worker.lastExit) row('last exit', `${r.worker.lastExit.signal ?? `code ${r.worker.lastExit.code}`} at ${r.worker.lastExit.at}`);
  row('recovery', `last ${ms(r.recovery.lastMs)}, p50 ${ms(r.recovery.p50Ms)}, max ${ms(r.recovery.maxMs)} (${r.recovery.count} recoveries)`);
  row('vhost-user', r.vhost.connected ? 'connected' : 'not connected');
  for (const q of r.vhost.queues) {
    row(`  queue ${q.index}${q.index === 0 ? ' (hiprio)' : ''}`, `size ${q.size}, ${q.running ? 'running' : 'stopped'}, last avail ${q.lastAvail}, used ${q.used}, in flight ${q.inflight}`);
  }
  row('FUSE', `${r.fuse.initialized ? 'initialized' : 'not initialized'}; ${r.fuse.inodes} inodes, ${r.fuse.openFiles} open files, ${r.fuse.openDirs} open dirs`);
  return lines.join('\n');
}

export function exitCodeFor(r: StatusReport): number {
  return r.worker.state === 'running' && r.keeper.error === null ? 0 : 1;
}

export async function showStatus(a: { name?: string; stateDir?: string; json: boolean }): Promise<number> {
  const dirs = a.stateDir ? [path.resolve(a.stateDir)] : a.name ? [path.join(DEFAULT_STATE_ROOT, a.name)] : listInstances().map((n) => path.join(DEFAULT_STATE_ROOT, n));
  if (dirs.length === 0) {
    process.stderr.write(`no virtiofs-keeper instances under ${DEFAULT_STATE_ROOT}\n`);
    return 2;
  }
  const reports: StatusReport[] = [];
  let code = 0;
  for (const d of dirs) {
    try {
      reports.push(queryStatus(d));
    } catch (e) {
      process.stderr.write(`virtiofs-keeper: no keeper answers at ${keeperSocketPath(d)}: ${(e as Error).message}\n`);
      code = 2;
    }
  }
  for (const r of reports) code = Math.max(code, exitCodeFor(r));
  if (a.json) process.stdout.write(JSON.stringify(a.stateDir || a.name ? reports[0] ?? null : reports, null, 2) + '\n');
  else process.stdout.write(reports.map(formatStatus).join('\n\n') + '\n');
  return code;
}
