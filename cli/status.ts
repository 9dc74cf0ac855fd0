// `virtiofs-keeper status`: asks the keeper over keeper.sock (read-only query) and prints a
// table or JSON. Exit codes for monitoring: 0 serving, 1 degraded (worker down, restarting or
// failed), 2 no keeper reachable.
import * as path from 'node:path';
import { KeeperClient } from '../shared/keeper_client';
import { DEFAULT_STATE_ROOT, keeperSocketPath, listInstances } from '../shared/config';
import { buildReport, formatPrometheus, type StatusReport } from '../shared/status_report';

export type { StatusReport } from '../shared/status_report';

export function queryStatus(stateDir: string): StatusReport {
  const client = KeeperClient.connect(keeperSocketPath(stateDir));
  try {
    return buildReport(client.queryStatus(), stateDir);
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
  row('keeper', `pid ${r.keeper.pid}${r.keeper.version !== null ? ` (${r.keeper.version})` : ''}, holds ${r.keeper.fdsHeld} fds (${Object.entries(r.fdNames).map(([k, v]) => `${k} ${v}`).join(', ')})`);
  if (r.keeper.lastReexec !== null) {
    const x = r.keeper.lastReexec;
    row('re-execs', `${r.keeper.reexecs}, the last ${x.fromVersion} → ${x.toVersion} in ${x.ms} ms at ${x.at}`);
  }
  if (r.keeper.error) row('ERROR', r.keeper.error);
  row('worker', `${r.worker.state}, pid ${r.worker.pid ?? '-'}, up ${r.worker.uptimeS ?? '-'} s, ${r.worker.restarts} restarts`);
  row('standby', r.worker.standbyReady ? `ready, pid ${r.worker.standbyPid}` : r.worker.standbyPid ? `starting, pid ${r.worker.standbyPid}` : 'none');
  if (r.worker.backoff.delayMs > 0 || r.worker.backoff.fruitlessDeaths > 0) {
    row('crash loop', `${r.worker.backoff.fruitlessDeaths} workers died without serving; ${r.worker.backoff.delayMs > 0 ? `next start in ${r.worker.backoff.delayMs} ms (at ${r.worker.backoff.restartAt})` : 'restarted at once'}`);
  }
  if (r.worker.lastExit) row('last exit', `${r.worker.lastExit.signal ?? `code ${r.worker.lastExit.code}`} at ${r.worker.lastExit.at}`);
  row('recovery', `last ${ms(r.recovery.lastMs)}, p50 ${ms(r.recovery.p50Ms)}, max ${ms(r.recovery.maxMs)} (${r.recovery.count} recoveries)`);
  const u = r.upgrades;
  if (u !== null && (u.count > 0 || u.failed > 0 || u.inProgress)) {
    const last = u.last === null ? '' : `; last ${u.last.result}${u.last.mode ? ` (${u.last.mode})` : ''} ${u.last.oldVersion ?? '?'} → ${u.last.newVersion ?? '?'}, pause ${ms(u.last.pauseMs)} at ${u.last.at}`;
    row('upgrades', `${u.count} done, ${u.failed} refused or failed${u.inProgress ? ', one in progress' : ''}; pause p50 ${ms(u.pauseP50Ms)}, p99 ${ms(u.pauseP99Ms)}, max ${ms(u.pauseMaxMs)}${last}`);
  }
  row('vhost-user', r.vhost.connected ? 'connected' : 'not connected');
  for (const q of r.vhost.queues) {
    row(`  queue ${q.index}${q.index === 0 ? ' (hiprio)' : ''}`, `size ${q.size}, ${q.running ? 'running' : 'stopped'}, last avail ${q.lastAvail}, used ${q.used}, in flight ${q.inflight}`);
  }
  row('FUSE', `${r.fuse.initialized ? 'initialized' : 'not initialized'}; ${r.fuse.inodes} inodes, ${r.fuse.openFiles} open files, ${r.fuse.openDirs} open dirs, ${r.fuse.lockOwners} lock owners, ${r.fuse.lockWaits} parked lock waits`);
  const h = r.fuse.inodeHandles;
  if (h !== null) {
    const how = h.active ? 'on' : h.mode === 'never' ? 'off (never)' : `off, every inode holds an fd: ${h.reason ?? 'unavailable'}`;
    row('inode handles', `${h.mode}: ${how}; ${h.byHandle} inodes by handle, ${h.byFd} by fd; ${h.cachedFds}/${h.cacheCapacity} cached fds, ${h.opensByHandle} opened by handle`
      + (h.handlesReopened === undefined ? '' : `; at the last resume ${h.handlesReopened} open files/dirs opened again by handle, ${h.handlesLost ?? 0} lost`));
  }
  const f = r.fuse.fastPath;
  row('fast path', f === null ? 'off (every request through TypeScript)'
    : `on: served ${f.getattr} GETATTR, ${f.read} READ, ${f.write} WRITE (${f.queuedRead ?? 0} and ${f.queuedWrite ?? 0} on I/O threads), ${f.lookup ?? 0} LOOKUP (and ${f.lookupNew ?? 0} of new inodes, ${f.lookupMissing ?? 0} ENOENT), ${f.flush ?? 0} FLUSH, ${f.fsync ?? 0} FSYNC, ${f.getxattr ?? 0} GETXATTR, ${f.listxattr ?? 0} LISTXATTR, ${f.statfs ?? 0} STATFS, ${f.lseek ?? 0} LSEEK, ${f.setattr ?? 0} SETATTR, ${f.open ?? 0} OPEN, ${f.release ?? 0} RELEASE, ${f.opendir ?? 0} OPENDIR, ${f.releasedir ?? 0} RELEASEDIR, ${f.create ?? 0} CREATE, ${f.mkdir ?? 0} MKDIR, ${f.unlink ?? 0} UNLINK, ${f.rmdir ?? 0} RMDIR, ${f.readdirplus ?? 0} READDIRPLUS (${f.direntsPlus ?? 0} entries, ${f.direntsNew ?? 0} new inodes), ${f.forget ?? 0} FORGET; ${f.ownOutcomes ?? 0} journaled and published by the addon itself; ${f.declined} handed to TypeScript${declinedMost(f.declinedBy)}; ${f.inodes} inodes, ${f.files} files in its tables`);
  return lines.join('\n');
}

/** The opcodes the fast path handed to TypeScript most, as " (most: LOOKUP 12, ...)". */
function declinedMost(by: Record<string, number> | undefined): string {
  const top = Object.entries(by ?? {}).sort((a, b) => b[1] - a[1]).slice(0, 5);
  return top.length === 0 ? '' : ` (most: ${top.map(([op, n]) => `${op} ${n}`).join(', ')})`;
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
