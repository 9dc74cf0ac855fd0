// A keeper's status as a report (the `status` CLI's JSON, the keeper's own metrics file) and in
// Prometheus text format. Pure: the keeper and the CLI both use it.
import * as path from 'node:path';
import type { KeeperStatus, UpgradeStatus } from './keeper_protocol';
import type { InodeFileHandles } from './config';

/** How the worker holds inodes (worker/fs/inode_fds.ts). */
export interface InodeHandleStats {
  mode: InodeFileHandles;
  /** New inodes get file handles. */
  active: boolean;
  /** Why not, when the mode asks for them (the fallback: an fd per inode in the keeper). */
  reason: string | null;
  /** Inodes named by a handle / holding an fd in the keeper (the root, other mounts). */
  byHandle: number;
  byFd: number;
  /** O_PATH fds of handle-named inodes the worker has open, and its bound. */
  cachedFds: number;
  cacheCapacity: number;
  /** open_by_handle_at calls since the worker started. */
  opensByHandle: number;
  /** At this worker's resume: open files and dirs whose fds the keeper never got (sent after
   * the reply: "Crash safety", rule 1) opened again by handle, and those that could not be
   * (their inode gone). Absent from older workers. */
  handlesReopened?: number;
  handlesLost?: number;
}

/** The addon's fast path since the worker started (null: off, --no-fast-path). */
export interface FastPathStats {
  /** Requests it served, by opcode, and those it handed to TypeScript. */
  getattr: number;
  read: number;
  write: number;
  /** Of those READs and WRITEs, the ones that ran on the ring's I/O threads (they would have
   * blocked the JS thread). Absent from older workers. */
  queuedRead?: number;
  queuedWrite?: number;
  /** FSYNCs of open files (all on the I/O threads). Absent from older workers. */
  fsync?: number;
  /** LOOKUPs of known inodes (their counts journaled by TypeScript). Absent from older workers. */
  lookup?: number;
  /** FLUSHes of files without lock owners. Absent from older workers. */
  flush?: number;
  /** GETXATTRs of regular files and dirs (values, ENODATA, ERANGE). Absent from older workers. */
  getxattr?: number;
  /** LISTXATTRs of regular files and dirs (lists, sizes, ERANGE), STATFSes of inodes with an
   * fd, and LSEEKs (SEEK_DATA, SEEK_HOLE; ENXIO) of open files. Absent from older workers. */
  listxattr?: number;
  statfs?: number;
  lseek?: number;
  /** SETATTRs of known inodes (their outcomes journaled by the addon when it publishes them
   * itself, else by TypeScript). Absent from older workers. */
  setattr?: number;
  /** LOOKUPs of names that do not exist, answered ENOENT. Absent from older workers. */
  lookupMissing?: number;
  /** LOOKUPs that added an inode named by a file handle (journaled by TypeScript). Absent from
   * older workers. */
  lookupNew?: number;
  /** OPENs of handle-named files and RELEASEs (journaled by TypeScript). Absent from older workers. */
  open?: number;
  release?: number;
  /** OPENDIRs of handle-named dirs and RELEASEDIRs. Absent from older workers. */
  opendir?: number;
  releasedir?: number;
  /** CREATEs, MKDIRs, UNLINKs and RMDIRs (their intents journaled by the addon, outcomes by
   * TypeScript, or by the addon for those that changed nothing but their reply). Absent from
   * older workers. */
  create?: number;
  mkdir?: number;
  /** CREATEs and MKDIRs answered with their syscall's errno (their intents journaled). */
  intentErrors?: number;
  /** Served requests whose outcome the addon journaled and published itself (SETATTR, UNLINK,
   * RMDIR, LOOKUP, READDIRPLUS, FORGET, OPEN, OPENDIR, CREATE, MKDIR; TypeScript applies their
   * session changes afterwards). Absent from older workers. */
  ownOutcomes?: number;
  unlink?: number;
  rmdir?: number;
  /** READDIRPLUSes of listings of known inodes, and the entries they listed (each a lookup
   * journaled with the reply). Absent from older workers. */
  readdirplus?: number;
  direntsPlus?: number;
  /** Of those entries, the inodes the addon added (journaled by TypeScript). */
  direntsNew?: number;
  /** Inodes FORGET and BATCH_FORGET dropped lookups of (journaled by TypeScript). */
  forget?: number;
  declined: number;
  /** The declined requests by opcode name (those with any). Absent from older workers. */
  declinedBy?: Record<string, number>;
  /** Entries of its tables. */
  inodes: number;
  files: number;
}

/** The fast path's counters as the metric's `op` label names them. */
const FAST_PATH_OPS: ReadonlyArray<readonly [keyof FastPathStats, string]> = [
  ['getattr', 'getattr'], ['read', 'read'], ['write', 'write'], ['lookup', 'lookup'], ['lookupMissing', 'lookup_enoent'], ['lookupNew', 'lookup_new'],
  ['flush', 'flush'], ['fsync', 'fsync'], ['getxattr', 'getxattr'], ['listxattr', 'listxattr'], ['statfs', 'statfs'], ['lseek', 'lseek'], ['setattr', 'setattr'], ['open', 'open'], ['release', 'release'], ['opendir', 'opendir'], ['releasedir', 'releasedir'],
  ['create', 'create'], ['mkdir', 'mkdir'], ['unlink', 'unlink'], ['rmdir', 'rmdir'], ['readdirplus', 'readdirplus'], ['forget', 'forget'],
];

export interface StatusReport {
  name: string;
  keeper: { pid: number; fdsHeld: number; stateDir: string; socketPath: string; sharedDir: string; error: string | null;
    /** null from an older keeper. */
    version: string | null; reexecs: number; lastReexec: { fromVersion: string; toVersion: string; ms: number; at: string } | null };
  worker: { pid: number | null; state: string; restarts: number; lastExit: KeeperStatus['worker']['lastExit']; uptimeS: number | null; status: string | null; standbyPid: number | null; standbyReady: boolean; backoff: KeeperStatus['worker']['backoff'] };
  vhost: { connected: boolean; queues: Array<{ index: number; size: number; running: boolean; lastAvail: number; used: number; inflight: number }> };
  fuse: { initialized: boolean; inodes: number; openFiles: number; openDirs: number; lockOwners: number; lockWaits: number; inodeHandles: InodeHandleStats | null; fastPath: FastPathStats | null };
  recovery: KeeperStatus['recovery'];
  fdNames: Record<string, number>;
  /** Planned upgrades (null from an older keeper). */
  upgrades: UpgradeStatus | null;
}

/** The report from the keeper's raw status (used by the CLI and by the keeper's metrics). */
export function buildReport(k: KeeperStatus, stateDir: string): StatusReport {
  {
    const w = (k.workerStats ?? {}) as { vhost?: StatusReport['vhost']; fuse?: StatusReport['fuse'] };
    return {
      name: path.basename(stateDir),
      keeper: { pid: k.keeper.pid, fdsHeld: k.keeper.fdsHeld, stateDir: k.keeper.stateDir, socketPath: k.keeper.socketPath, sharedDir: k.keeper.sharedDir, error: k.keeper.error,
        version: k.keeper.version ?? null, reexecs: k.keeper.reexecs ?? 0, lastReexec: k.keeper.lastReexec ?? null },
      worker: {
        pid: k.worker.pid, state: k.worker.state, restarts: k.worker.restarts, lastExit: k.worker.lastExit, status: k.worker.status,
        standbyPid: k.worker.standbyPid, standbyReady: k.worker.standbyReady,
        // An older keeper reports none.
        backoff: k.worker.backoff ?? { fruitlessDeaths: 0, delayMs: 0, restartAt: null },
        uptimeS: k.worker.startedAt && k.worker.pid ? Math.round((Date.now() - Date.parse(k.worker.startedAt)) / 100) / 10 : null,
      },
      vhost: { connected: w.vhost?.connected ?? false, queues: w.vhost?.queues ?? [] },
      fuse: { initialized: w.fuse?.initialized ?? false, inodes: w.fuse?.inodes ?? 0, openFiles: w.fuse?.openFiles ?? 0, openDirs: w.fuse?.openDirs ?? 0, lockOwners: w.fuse?.lockOwners ?? 0, lockWaits: w.fuse?.lockWaits ?? 0,
        inodeHandles: w.fuse?.inodeHandles ?? null, fastPath: w.fuse?.fastPath ?? null },
      recovery: k.recovery,
      fdNames: k.fdNames,
      upgrades: k.upgrades ?? null,
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
  metric('upgrades_total', 'counter', 'Planned upgrades done (virtiofs-keeper upgrade).', each((r) => r.upgrades?.count ?? null));
  metric('upgrade_pause_last_seconds', 'gauge', 'Queues not served during the last planned upgrade.', each((r) => sec(r.upgrades?.last?.result === 'ok' ? r.upgrades.last.pauseMs : null)));
  metric('recovery_max_seconds', 'gauge', 'Longest recovery duration.', each((r) => sec(r.recovery.maxMs)));
  out.push('# HELP virtiofs_keeper_recovery_seconds Recovery durations (worker death to first request served).',
    '# TYPE virtiofs_keeper_recovery_seconds histogram');
  for (const r of reports) {
    const h = r.recovery.histogram;
    if (h === undefined) continue;
    const name = `name="${r.name.replace(/["\\\n]/g, '_')}"`;
    h.leMs.forEach((le, i) => out.push(`virtiofs_keeper_recovery_seconds_bucket{${name},le="${le / 1000}"} ${h.counts[i]}`));
    out.push(`virtiofs_keeper_recovery_seconds_bucket{${name},le="+Inf"} ${r.recovery.count}`,
      `virtiofs_keeper_recovery_seconds_sum{${name}} ${h.sumMs / 1000}`, `virtiofs_keeper_recovery_seconds_count{${name}} ${r.recovery.count}`);
  }
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
  metric('fuse_lock_owners', 'gauge', 'POSIX lock owners (guest process, inode) holding an open file description.', each((r) => r.fuse.lockOwners));
  metric('inode_handles_active', 'gauge', 'New inodes are named by file handles (1) or hold an fd in the keeper (0).', each((r) => (r.fuse.inodeHandles === null ? null : r.fuse.inodeHandles.active ? 1 : 0)));
  metric('inodes_by_handle', 'gauge', 'Inodes named by a file handle (no fd in the keeper).', each((r) => r.fuse.inodeHandles?.byHandle ?? null));
  metric('inode_fd_cache', 'gauge', 'O_PATH fds of handle-named inodes the worker has open.', each((r) => r.fuse.inodeHandles?.cachedFds ?? null));
  metric('open_handles_reopened', 'gauge', 'At the worker\'s resume: open files and dirs the keeper never got, opened again by handle.', each((r) => r.fuse.inodeHandles?.handlesReopened ?? null));
  metric('open_handles_lost', 'gauge', 'At the worker\'s resume: open files and dirs the keeper never got that could not be opened again (their fh answers EBADF).', each((r) => r.fuse.inodeHandles?.handlesLost ?? null));
  metric('fuse_lock_waits', 'gauge', 'SETLKW requests parked waiting for a lock.', each((r) => r.fuse.lockWaits));
  metric('fast_path_requests_total', 'counter', 'Requests the addon served itself, by opcode (since the worker started).',
    reports.flatMap((r) => (r.fuse.fastPath === null ? [] : FAST_PATH_OPS
      .map(([key, op]) => [{ name: r.name, op }, r.fuse.fastPath![key] ?? 0] as [Record<string, string>, number]))));
  return out.join('\n') + '\n';
}

