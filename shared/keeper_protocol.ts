// keeper.sock: every message between the keeper and its workers (and the status CLI), one
// parse and one encode per direction, used by both sides. The keeper is the process that must
// not die, so this is its trust boundary: a message that does not parse is refused whole
// (KeeperProtocolError) and its fds are closed by the receiver; nothing in it is guest data.
//
// SOCK_SEQPACKET, one message per packet, in sd_notify's format (shared/sd_notify_format.ts)
// so the worker's status messages mean the same to systemd's NOTIFY_SOCKET. A message is told
// by its one discriminating key (below); a message with none of them is an sd_notify status
// (READY/STOPPING/STATUS/WATCHDOG/MAINPID). Unknown keys beside a known discriminator are
// ignored, so a newer worker can add fields a long-lived older keeper does not know; a message
// with two discriminators, or none and no status key, is refused.
// See docs/ARCHITECTURE.md, "keeper.sock protocol".
import { KeeperProtocolError, formatAssignments, formatFdNames, parseAssignments, parseFdNames } from './sd_notify_format';

/** The most FDSET batches a keeper sends per FDFETCH/FDFETCHNEXT: the receiver's queue holds at
 * most net.unix.max_dgram_qlen messages (10 by default) before a send fails. */
export const MAX_FETCH_WINDOW = 8;
/** The window a worker asks for: each request is a round trip through the keeper, ~12 ms of
 * scheduling delay apiece on a loaded host (1,000 open files were 4 round trips). */
export const FETCH_WINDOW = 4;

/** The kernel's limit on fds in one SCM_RIGHTS message (SCM_MAX_FD): an FDSET batch holds at most
 * this many, and every receiver accepts this many. */
export const SCM_MAX_FD = 253;
/** Largest keeper.sock message either side sends or accepts (the status JSON is the largest). */
export const MAX_MESSAGE_SIZE = 64 * 1024;

/** Worker (or status CLI) → keeper. */
export type ToKeeper =
  /** FDSTORE=1 FDNAME=a:b + one fd per name: hold them (replacing older fds of those names). */
  | { type: 'store'; names: string[] }
  /** FDSTOREREMOVE=1 FDNAME=a:b: close and forget them. */
  | { type: 'remove'; names: string[] }
  /** FDFETCH=1 [X_WINDOW=n]: start sending the whole fd set (answered by 'fdSet'); with a
   * window, up to n batches per FDFETCH/FDFETCHNEXT (an older keeper ignores it: one). */
  | { type: 'fetch'; window?: number }
  /** FDFETCHNEXT=1: the next batch of the fetch in progress. */
  | { type: 'fetchNext' }
  /** X_CTLREPLY=seq X_DATA=hex + fds: write this control reply to the frontend, once per seq. */
  | { type: 'controlReply'; seq: number; data: Buffer }
  /** READY=1 / STOPPING=1 / STATUS=text, as in sd_notify; a worker's READY also says who it is
   * (X_VERSION... below; null from an older worker). */
  | { type: 'notify'; ready: boolean; stopping: boolean; status: string | null; worker?: WorkerInfo | null }
  /** X_SERVED=1: a successor completed its first request (ends a recovery). */
  | { type: 'served' }
  /** X_PROGRESS=1: the worker completed a request (it is not crash-looping). */
  | { type: 'progress' }
  /** X_STATS=json: counters for `status` and metrics.prom. */
  | { type: 'stats'; stats: unknown }
  /** X_SETERROR=text: why a worker gave up (empty: clear). */
  | { type: 'setError'; error: string | null }
  /** X_STANDBY=1: a warm standby is loaded and waits for 'takeover' (with who it is, as READY). */
  | { type: 'standby'; worker?: WorkerInfo | null }
  /** X_UPGRADE=1 [X_TIMEOUTMS=n]: hand the session to a worker started from the installed files
   * (answered by 'upgraded' when done; with X_DETACH=1 as soon as it started: `systemctl
   * reload` cannot wait, see ARCHITECTURE "Upgrades"). The one message besides X_STATUSQUERY an
   * observer (the CLI) may send. */
  | { type: 'upgrade'; timeoutMs: number | null; detach?: boolean; keeper?: boolean }
  /** X_DRAINED=1 X_PAUSEDNS=ns X_LEFT=n: the worker told to drain stopped taking requests at
   * CLOCK_MONOTONIC `pausedNs`, finished its in-flight ones but `left` (parked lock waits, or
   * any still running at the drain's deadline: the successor resubmits them), made its state
   * durable and exits now. */
  | { type: 'drained'; pausedNs: bigint; left: number }
  /** X_RESUMED=ns: a successor's queues run again since CLOCK_MONOTONIC `resumedNs` (only to a
   * keeper whose FDSET offers FEATURES=upgrade). */
  | { type: 'resumed'; resumedNs: bigint }
  /** X_STATUSQUERY=1: answered by 'status'. */
  | { type: 'statusQuery' }
  /** X_SYNC=n: answered by 'synced' once every earlier message of this connection is handled,
   * naming the stores refused since the last sync (only sent to a keeper whose FDSET says
   * FEATURES=sync). */
  | { type: 'sync'; seq: number };

/** Keeper → worker (or status CLI). */
export type FromKeeper =
  /** FDSET=1 FDNAME=a:b MORE=0|1 CTLSEQ=n + one fd per name: a batch of the fd set, and the last
   * control reply sequence number the keeper forwarded. */
  | { type: 'fdSet'; names: string[]; more: boolean; ctlSeq: number; keeper: KeeperCapabilities; window?: number }
  /** X_TAKEOVER=1: the standby may serve now (its predecessor is reaped). */
  | { type: 'takeover' }
  /** X_DRAIN=1: a planned handover: stop taking requests, finish the in-flight ones, make the
   * state durable, answer 'drained' and exit (only sent to a worker whose READY said
   * X_CANDRAIN=1). */
  | { type: 'drain' }
  /** X_UPGRADED=ok|refused|failed + fields: the answer to X_UPGRADE. */
  | { type: 'upgraded'; result: UpgradeResult }
  /** X_SYNCED=n REFUSED=a:b|*: the answer to X_SYNC n. `refused`: the names whose FDSTORE the
   * keeper could not take (its fds were cut off: the keeper was out of fds), or 'all' when it
   * could not even read which. The worker must not rely on those fds being kept. */
  | { type: 'synced'; seq: number; refused: string[] | 'all' }
  /** The status JSON (a raw JSON object, not assignments: it is the one large message). */
  | { type: 'status'; status: KeeperStatus };

/** What the keeper told a worker about itself in FDSET (absent from an older keeper's). */
export interface KeeperCapabilities {
  /** The keeper's RLIMIT_NOFILE soft limit (null: not said): it holds a copy of every fd. */
  noFile: number | null;
  /** It answers X_SYNC. */
  sync: boolean;
  /** It runs planned upgrades: wants X_RESUMED, may send X_DRAIN. */
  upgrade?: boolean;
}

/** Who a worker is, for the keeper's upgrade checks (X_VERSION, X_SCHEMA, X_SCHEMAMIN,
 * X_CANDRAIN beside READY or X_STANDBY). */
export interface WorkerInfo {
  /** Its package version. */
  version: string;
  /** The state schema it writes, which is also the newest it reads. */
  schema: number;
  /** The oldest schema that reads what it writes. */
  minReader: number;
  /** It answers X_DRAIN. */
  drain: boolean;
}

/** The outcome of one planned upgrade (X_UPGRADED's fields, and `status`). */
export interface UpgradeResult {
  /** started: only in the answer to a detached X_UPGRADE (the outcome goes to status). */
  result: 'ok' | 'refused' | 'failed' | 'started';
  /** drain: the old worker drained and handed over; kill: it could not drain (an older build)
   * and was killed, its successor resuming as after a crash. */
  mode: 'drain' | 'kill' | null;
  oldPid: number | null;
  newPid: number | null;
  oldVersion: string | null;
  newVersion: string | null;
  /** The time no queue was served: from the old worker's last pop to the new one's queues
   * running (CLOCK_MONOTONIC of both); null if unknown. */
  pauseMs: number | null;
  /** Of the pause, how long the old worker took to finish its in-flight requests. */
  drainMs: number | null;
  /** Requests left in flight for the successor (parked lock waits...). */
  left: number;
  /** From X_UPGRADE to the answer (mostly the new worker's start). */
  totalMs: number;
  /** Why it was refused or failed. */
  reason: string | null;
  at: string;
  /** A keeper re-exec before the worker's part (X_KEEPER=1): the keeper's version before and
   * after, and from its execve to the new image serving keeper.sock again (ms). Absent: none. */
  keeperFrom?: string | null;
  keeperTo?: string | null;
  keeperMs?: number | null;
}

const TO_KEEPER_KEYS: ReadonlyArray<[string, ToKeeper['type']]> = [
  ['FDSTORE', 'store'], ['FDSTOREREMOVE', 'remove'], ['FDFETCH', 'fetch'], ['FDFETCHNEXT', 'fetchNext'],
  ['X_CTLREPLY', 'controlReply'], ['X_SERVED', 'served'], ['X_PROGRESS', 'progress'], ['X_STATS', 'stats'],
  ['X_SETERROR', 'setError'], ['X_STANDBY', 'standby'], ['X_STATUSQUERY', 'statusQuery'], ['X_SYNC', 'sync'],
  ['X_UPGRADE', 'upgrade'], ['X_DRAINED', 'drained'], ['X_RESUMED', 'resumed'],
];
const NOTIFY_KEYS = ['READY', 'STOPPING', 'STATUS', 'WATCHDOG', 'MAINPID'];
/** Messages that may carry fds; the receiver closes fds attached to any other. */
const CARRIES_FDS: ReadonlySet<ToKeeper['type']> = new Set(['store', 'controlReply']);
const HEX_RE = /^(?:[0-9a-f]{2})*$/;

function flag(m: Map<string, string>, key: string): boolean {
  const v = m.get(key);
  if (v === undefined) return false;
  if (v !== '1') throw new KeeperProtocolError(`${key}=${JSON.stringify(v.slice(0, 20))}: want 1`);
  return true;
}

/** A CLOCK_MONOTONIC time in ns (decimal, at most 20 digits). */
function parseNs(text: string | undefined, key: string): bigint {
  if (text === undefined || !/^[0-9]{1,20}$/.test(text)) throw new KeeperProtocolError(`malformed ${key}`);
  const v = BigInt(text);
  if (v >= 1n << 64n) throw new KeeperProtocolError(`malformed ${key}`);
  return v;
}

/** A worker's X_VERSION... fields; null when it sent none (an older worker). */
function parseWorkerInfo(m: Map<string, string>): WorkerInfo | null {
  const version = m.get('X_VERSION');
  if (version === undefined) return null;
  const schema = parseSeq(m.get('X_SCHEMA') ?? '');
  const minReader = parseSeq(m.get('X_SCHEMAMIN') ?? '');
  if (!/^[\x21-\x7e]{1,64}$/.test(version) || schema === null || minReader === null || minReader > schema) {
    throw new KeeperProtocolError('malformed X_VERSION/X_SCHEMA/X_SCHEMAMIN');
  }
  return { version, schema, minReader, drain: flag(m, 'X_CANDRAIN') };
}

function workerInfoFields(w: WorkerInfo | null | undefined): Record<string, string | number> {
  if (w == null) return {};
  return { X_VERSION: w.version, X_SCHEMA: w.schema, X_SCHEMAMIN: w.minReader, ...(w.drain ? { X_CANDRAIN: 1 } : {}) };
}

/** A positive sequence number (1..2^53-1) in decimal, or null. */
function parseSeq(text: string): number | null {
  if (!/^[1-9][0-9]{0,15}$/.test(text)) return null;
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : null;
}

/** Parses one message to the keeper with `fdCount` fds attached. */
export function parseToKeeper(data: Buffer, fdCount: number): ToKeeper {
  const m = parseAssignments(data);
  const found = TO_KEEPER_KEYS.filter(([k]) => m.has(k));
  if (found.length > 1) throw new KeeperProtocolError(`one message with ${found.map(([k]) => k).join(' and ')}`);
  const type: ToKeeper['type'] = found.length === 1 ? found[0]![1] : 'notify';
  if (fdCount > 0 && !CARRIES_FDS.has(type)) throw new KeeperProtocolError(`${fdCount} fds attached to a ${type} message`);
  switch (type) {
    case 'store':
      flag(m, 'FDSTORE');
      return { type, names: parseFdNames(m.get('FDNAME'), fdCount) };
    case 'remove':
      flag(m, 'FDSTOREREMOVE');
      return { type, names: parseFdNames(m.get('FDNAME'), -1) };
    case 'controlReply': {
      const seq = parseSeq(m.get('X_CTLREPLY')!);
      const hex = m.get('X_DATA') ?? '';
      if (seq === null || !HEX_RE.test(hex)) throw new KeeperProtocolError('malformed X_CTLREPLY');
      return { type, seq, data: Buffer.from(hex, 'hex') };
    }
    case 'sync': {
      const seq = parseSeq(m.get('X_SYNC')!);
      if (seq === null) throw new KeeperProtocolError('malformed X_SYNC');
      return { type, seq };
    }
    case 'stats':
      try {
        return { type, stats: JSON.parse(m.get('X_STATS')!) as unknown };
      } catch {
        throw new KeeperProtocolError('X_STATS is not JSON');
      }
    case 'setError':
      return { type, error: m.get('X_SETERROR') || null };
    case 'notify': {
      if (!NOTIFY_KEYS.some((k) => m.has(k))) throw new KeeperProtocolError('no known message type');
      const worker = parseWorkerInfo(m);
      return { type, ready: flag(m, 'READY'), stopping: flag(m, 'STOPPING'), status: m.get('STATUS') ?? null, ...(worker !== null ? { worker } : {}) };
    }
    case 'upgrade': {
      flag(m, 'X_UPGRADE');
      const t = m.get('X_TIMEOUTMS');
      const timeoutMs = t === undefined ? null : parseSeq(t);
      if (t !== undefined && timeoutMs === null) throw new KeeperProtocolError('malformed X_TIMEOUTMS');
      return { type, timeoutMs, ...(m.get('X_DETACH') === '1' ? { detach: true } : {}), ...(m.get('X_KEEPER') === '1' ? { keeper: true } : {}) };
    }
    case 'drained': {
      flag(m, 'X_DRAINED');
      const left = Number(m.get('X_LEFT') ?? '0');
      if (!Number.isSafeInteger(left) || left < 0) throw new KeeperProtocolError('malformed X_LEFT');
      return { type, pausedNs: parseNs(m.get('X_PAUSEDNS'), 'X_PAUSEDNS'), left };
    }
    case 'resumed': return { type, resumedNs: parseNs(m.get('X_RESUMED'), 'X_RESUMED') };
    case 'fetch': {
      flag(m, 'FDFETCH');
      const w = m.get('X_WINDOW');
      if (w === undefined) return { type };
      const window = parseSeq(w);
      if (window === null || window < 1 || window > MAX_FETCH_WINDOW) throw new KeeperProtocolError('malformed X_WINDOW');
      return { type, window };
    }
    case 'fetchNext': flag(m, 'FDFETCHNEXT'); return { type };
    case 'served': flag(m, 'X_SERVED'); return { type };
    case 'progress': flag(m, 'X_PROGRESS'); return { type };
    case 'standby': {
      flag(m, 'X_STANDBY');
      const worker = parseWorkerInfo(m);
      return { type, ...(worker !== null ? { worker } : {}) };
    }
    case 'statusQuery': flag(m, 'X_STATUSQUERY'); return { type };
  }
}

/** The sd_notify assignments of a status message (the worker sends the same to systemd). */
export function notifyFields(n: { ready?: boolean; stopping?: boolean; status?: string | null }): Record<string, string | number> {
  const f: Record<string, string | number> = {};
  if (n.ready) f.READY = 1;
  if (n.stopping) f.STOPPING = 1;
  if (n.status != null) f.STATUS = n.status.replace(/\n/g, ' ');
  return f;
}

export function encodeToKeeper(msg: ToKeeper): Buffer {
  switch (msg.type) {
    case 'store': return formatAssignments({ FDSTORE: 1, FDNAME: formatFdNames(msg.names) });
    case 'remove': return formatAssignments({ FDSTOREREMOVE: 1, FDNAME: formatFdNames(msg.names) });
    case 'fetch': return formatAssignments({ FDFETCH: 1, ...(msg.window !== undefined ? { X_WINDOW: msg.window } : {}) });
    case 'fetchNext': return formatAssignments({ FDFETCHNEXT: 1 });
    case 'controlReply': return formatAssignments({ X_CTLREPLY: msg.seq, X_DATA: msg.data.toString('hex') });
    case 'notify': return formatAssignments({ ...notifyFields(msg), ...workerInfoFields(msg.worker) });
    case 'served': return formatAssignments({ X_SERVED: 1 });
    case 'progress': return formatAssignments({ X_PROGRESS: 1 });
    case 'stats': return formatAssignments({ X_STATS: JSON.stringify(msg.stats) });
    case 'setError': return formatAssignments({ X_SETERROR: (msg.error ?? '').replace(/\n/g, ' ') });
    case 'standby': return formatAssignments({ X_STANDBY: 1, ...workerInfoFields(msg.worker) });
    case 'upgrade': return formatAssignments({ X_UPGRADE: 1, ...(msg.timeoutMs !== null ? { X_TIMEOUTMS: msg.timeoutMs } : {}), ...(msg.detach ? { X_DETACH: 1 } : {}), ...(msg.keeper ? { X_KEEPER: 1 } : {}) });
    case 'drained': return formatAssignments({ X_DRAINED: 1, X_PAUSEDNS: msg.pausedNs.toString(), X_LEFT: msg.left });
    case 'resumed': return formatAssignments({ X_RESUMED: msg.resumedNs.toString() });
    case 'statusQuery': return formatAssignments({ X_STATUSQUERY: 1 });
    case 'sync': return formatAssignments({ X_SYNC: msg.seq });
  }
}

/** Parses one message from the keeper with `fdCount` fds attached. */
export function parseFromKeeper(data: Buffer, fdCount: number): FromKeeper {
  if (data.length > 0 && data[0] === 0x7b /* '{' */) {
    if (fdCount > 0) throw new KeeperProtocolError('fds attached to the status');
    let v: unknown;
    try {
      v = JSON.parse(data.toString('utf8'));
    } catch {
      throw new KeeperProtocolError('the status is not JSON');
    }
    if (!isKeeperStatus(v)) throw new KeeperProtocolError('the status JSON lacks keeper, worker or recovery');
    return { type: 'status', status: v };
  }
  const m = parseAssignments(data);
  if (m.has('FDSET')) {
    flag(m, 'FDSET');
    const ctlSeq = Number(m.get('CTLSEQ') ?? '0');
    const more = m.get('MORE');
    const noFileText = m.get('NOFILE');
    const noFile = noFileText === undefined ? null : parseSeq(noFileText);
    if (!Number.isSafeInteger(ctlSeq) || ctlSeq < 0 || (more !== '0' && more !== '1') || (noFileText !== undefined && noFile === null)) {
      throw new KeeperProtocolError('malformed FDSET');
    }
    const w = m.get('X_WINDOW');
    const window = w === undefined ? null : parseSeq(w);
    if (w !== undefined && (window === null || window < 1 || window > MAX_FETCH_WINDOW)) throw new KeeperProtocolError('malformed X_WINDOW');
    // Unknown features are a newer keeper's: ignored.
    const features = (m.get('FEATURES') ?? '').split(',');
    return { type: 'fdSet', names: parseFdNames(m.get('FDNAME'), fdCount), more: more === '1', ctlSeq,
      keeper: { noFile, sync: features.includes('sync'), ...(features.includes('upgrade') ? { upgrade: true } : {}) },
      ...(window !== null ? { window } : {}) };
  }
  if (fdCount > 0) throw new KeeperProtocolError(`${fdCount} fds attached to a message that carries none`);
  if (m.has('X_SYNCED')) {
    const seq = parseSeq(m.get('X_SYNCED')!);
    const r = m.get('REFUSED') ?? '';
    if (seq === null) throw new KeeperProtocolError('malformed X_SYNCED');
    return { type: 'synced', seq, refused: r === '*' ? 'all' : parseFdNames(r, -1) };
  }
  if (flag(m, 'X_TAKEOVER')) return { type: 'takeover' };
  if (flag(m, 'X_DRAIN')) return { type: 'drain' };
  if (m.has('X_UPGRADED')) return { type: 'upgraded', result: parseUpgradeResult(m) };
  throw new KeeperProtocolError('no known message type from the keeper');
}

export function encodeFromKeeper(msg: FromKeeper): Buffer {
  switch (msg.type) {
    case 'fdSet': return formatAssignments({
      FDSET: 1, FDNAME: formatFdNames(msg.names), MORE: msg.more ? 1 : 0, CTLSEQ: msg.ctlSeq,
      ...(msg.window !== undefined ? { X_WINDOW: msg.window } : {}),
      ...(msg.keeper.noFile !== null ? { NOFILE: msg.keeper.noFile } : {}),
      ...(msg.keeper.sync || msg.keeper.upgrade ? { FEATURES: [msg.keeper.sync ? 'sync' : '', msg.keeper.upgrade ? 'upgrade' : ''].filter(Boolean).join(',') } : {}),
    });
    case 'takeover': return formatAssignments({ X_TAKEOVER: 1 });
    case 'drain': return formatAssignments({ X_DRAIN: 1 });
    case 'upgraded': return formatAssignments(upgradeResultFields(msg.result));
    case 'synced': return formatAssignments({ X_SYNCED: msg.seq, REFUSED: msg.refused === 'all' ? '*' : formatFdNames(msg.refused) });
    case 'status': return Buffer.from(JSON.stringify(msg.status));
  }
}

const UPGRADE_KEYS: ReadonlyArray<[keyof UpgradeResult, string]> = [
  ['mode', 'MODE'], ['oldPid', 'OLDPID'], ['newPid', 'NEWPID'], ['oldVersion', 'OLDVERSION'], ['newVersion', 'NEWVERSION'],
  ['pauseMs', 'PAUSEMS'], ['drainMs', 'DRAINMS'], ['left', 'LEFT'], ['totalMs', 'TOTALMS'], ['reason', 'REASON'], ['at', 'AT'],
  ['keeperFrom', 'KEEPERFROM'], ['keeperTo', 'KEEPERTO'], ['keeperMs', 'KEEPERMS'],
];

function upgradeResultFields(r: UpgradeResult): Record<string, string | number> {
  const f: Record<string, string | number> = { X_UPGRADED: r.result };
  for (const [k, key] of UPGRADE_KEYS) {
    const v = r[k];
    if (v !== null && v !== undefined) f[key] = typeof v === 'string' ? v.replace(/\n/g, ' ') : v;
  }
  return f;
}

function parseUpgradeResult(m: Map<string, string>): UpgradeResult {
  const result = m.get('X_UPGRADED');
  const mode = m.get('MODE') ?? null;
  if ((result !== 'ok' && result !== 'refused' && result !== 'failed' && result !== 'started') || (mode !== null && mode !== 'drain' && mode !== 'kill')) {
    throw new KeeperProtocolError('malformed X_UPGRADED');
  }
  const num = (key: string): number | null => {
    const v = m.get(key);
    if (v === undefined) return null;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new KeeperProtocolError(`malformed ${key}`);
    return n;
  };
  return {
    result, mode, oldPid: num('OLDPID'), newPid: num('NEWPID'), oldVersion: m.get('OLDVERSION') ?? null, newVersion: m.get('NEWVERSION') ?? null,
    pauseMs: num('PAUSEMS'), drainMs: num('DRAINMS'), left: num('LEFT') ?? 0, totalMs: num('TOTALMS') ?? 0,
    reason: m.get('REASON') ?? null, at: m.get('AT') ?? '',
    ...(m.has('KEEPERFROM') || m.has('KEEPERMS') ? { keeperFrom: m.get('KEEPERFROM') ?? null, keeperTo: m.get('KEEPERTO') ?? null, keeperMs: num('KEEPERMS') } : {}),
  };
}

// --- The status (X_STATUSQUERY's answer), as both sides see it.

export interface ExitInfo { code: number | null; signal: string | null; at: string }

/** Crash-loop backoff: workers that died in a row without progress, and the pending delay. */
export interface BackoffStatus { fruitlessDeaths: number; delayMs: number; restartAt: string | null }

/** Upper bounds (ms) of the recovery-time histogram's buckets (+Inf is the count). */
export const RECOVERY_BUCKETS_MS: readonly number[] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

export interface KeeperStatus {
  keeper: { pid: number; startedAt: string; fdsHeld: number; stateDir: string; socketPath: string; sharedDir: string; error: string | null;
    /** Absent from older keepers: its version, and its re-execs (keeper/reexec.ts). */
    version?: string; reexecs?: number; lastReexec?: { fromVersion: string; toVersion: string; ms: number; at: string } | null };
  /** pid, standbyPid: the worker's own (under the namespace sandbox: null until its first
   * keeper.sock message, which names it; supervisor.ts). */
  worker: { pid: number | null; state: string; restarts: number; lastExit: ExitInfo | null; startedAt: string | null; status: string | null; ready: boolean; standbyPid: number | null; standbyReady: boolean; backoff: BackoffStatus };
  recovery: { count: number; lastMs: number | null; p50Ms: number | null; p99Ms: number | null; maxMs: number | null; recentMs: number[];
    /** Every recovery so far, as cumulative counts per upper bound (RECOVERY_BUCKETS_MS), and
     * their sum (absent from older keepers). */
    histogram?: { leMs: number[]; counts: number[]; sumMs: number } };
  fdNames: Record<string, number>;
  workerStats: unknown;
  /** Planned upgrades so far (absent from older keepers). */
  upgrades?: UpgradeStatus;
}

export interface UpgradeStatus {
  count: number;
  failed: number;
  inProgress: boolean;
  last: UpgradeResult | null;
  /** Pauses of the successful ones (ms): percentiles and the most recent. */
  pauseP50Ms: number | null;
  pauseP99Ms: number | null;
  pauseMaxMs: number | null;
  recentPauseMs: number[];
}

function isKeeperStatus(v: unknown): v is KeeperStatus {
  const obj = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);
  return obj(v) && obj(v.keeper) && obj(v.worker) && obj(v.recovery) && obj(v.fdNames)
    && typeof v.keeper.pid === 'number' && typeof v.worker.state === 'string';
}
