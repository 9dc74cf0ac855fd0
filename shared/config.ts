// Service configuration shared by keeper and worker. The keeper writes it into the state
// directory so a worker started by anyone (the keeper, systemd) serves the same export.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ConfigurationError } from './errors';

/** The most request queues a device offers (besides hiprio). */
export const MAX_REQUEST_QUEUES = 64;

export type CacheMode = 'auto' | 'always' | 'never';
/** How inodes are held (worker/fs/inode_fds.ts): 'never' an fd each in the keeper; 'prefer'
 * file handles where the share supports them, else fds; 'mandatory' handles or no start. */
export type InodeFileHandles = 'never' | 'prefer' | 'mandatory';
export const INODE_FILE_HANDLES: readonly InodeFileHandles[] = ['never', 'prefer', 'mandatory'];
export const DEFAULT_INODE_FILE_HANDLES: InodeFileHandles = 'prefer';

/** How the worker is confined (worker/sandbox.ts): its root becomes the shared directory by
 * pivot_root in its own mount (and net, ipc, uts) namespaces, or by chroot; or not at all. */
export type SandboxMode = 'namespace' | 'chroot' | 'none';
export const SANDBOX_MODES: readonly SandboxMode[] = ['namespace', 'chroot', 'none'];
/** What a syscall outside the worker's allow-list (worker/seccomp_policy.ts) does, as
 * virtiofsd's --seccomp: kill the worker, trap (fail with ENOSYS and log it), log (allow it; the
 * kernel's audit log names it), or no filter at all. */
export type SeccompAction = 'kill' | 'log' | 'trap' | 'none';
export const SECCOMP_ACTIONS: readonly SeccompAction[] = ['kill', 'log', 'trap', 'none'];
export const DEFAULT_SECCOMP_ACTION: SeccompAction = 'kill';

export interface WorkerConfig {
  stateDir: string;
  sharedDir: string;
  socketPath: string;
  cache: CacheMode;
  /** Request queues besides the hiprio queue: 1..MAX_REQUEST_QUEUES. */
  requestQueues: number;
  keepListening: boolean;
  xattr: boolean;
  /** Parked SETLKW waits at most (absent in configs written before it existed: the default). */
  maxLockWaits?: number;
  /** FUSE INIT offers: remote POSIX locks (FUSE_POSIX_LOCKS), flock (FUSE_FLOCK_LOCKS),
   * READDIRPLUS. Absent: offered (virtiofsd's no_posix_lock, no_flock, --no-readdirplus clear
   * them; the guest kernel then keeps those locks local, or uses plain READDIR). */
  posixLocks?: boolean;
  flockLocks?: boolean;
  readdirplus?: boolean;
  /** A read-only export: requests that would change the filesystem get EROFS (absent: false). */
  readonly?: boolean;
  /** The addon serves GETATTR/READ/WRITE itself (absent: true; false: --no-fast-path, every
   * request through the TypeScript server). */
  fastPath?: boolean;
  /** RLIMIT_NOFILE the keeper and the worker raise their soft limit to (absent: DEFAULT_RLIMIT_NOFILE). */
  rlimitNofile?: number;
  /** The worker's confinement and seccomp action (absent in configs written before they
   * existed: 'none'; see SandboxMode). */
  sandbox?: SandboxMode;
  seccomp?: SeccompAction;
  /** Absent in configs written before it existed: DEFAULT_INODE_FILE_HANDLES. */
  inodeFileHandles?: InodeFileHandles;
}

export class ConfigError extends ConfigurationError {}

export const DEFAULT_STATE_ROOT = '/run/virtiofs-keeper';

/** The fd limit both processes raise their soft limit to unless configured (capped by the hard one). */
export const DEFAULT_RLIMIT_NOFILE = 1_000_000;

/** Worker exit codes the keeper acts on: 0 = the frontend left, the service is over (the
 * keeper exits too); 3 = the saved state cannot be used (the keeper keeps every fd and does
 * not restart the worker). Anything else, or a signal, is a crash: restart at once. */
export const EXIT_SERVICE_OVER = 0;
export const EXIT_STATE_UNUSABLE = 3;
/** The worker could not start for a reason that may pass (resources, host errors): restart it. */
export const EXIT_START_FAILED = 4;
/** The worker drained and handed its session over for a planned upgrade (X_DRAIN): its
 * successor is the keeper's standby (embedded) or the unit's restart (systemd). */
export const EXIT_HANDED_OVER = 5;

/** Names of the instances with a keeper.sock under the state root. */
export function listInstances(root = DEFAULT_STATE_ROOT): string[] {
  try {
    return fs.readdirSync(root).filter((n) => fs.existsSync(path.join(root, n, 'keeper.sock'))).sort();
  } catch {
    return [];
  }
}

export const keeperSocketPath = (stateDir: string): string => path.join(stateDir, 'keeper.sock');
export const stateFilePath = (stateDir: string): string => path.join(stateDir, 'state');
const configPath = (stateDir: string): string => path.join(stateDir, 'config.json');

export function writeWorkerConfig(c: WorkerConfig): void {
  const tmp = `${configPath(c.stateDir)}.new`;
  const body: WorkerConfig = {
    stateDir: c.stateDir, sharedDir: c.sharedDir, socketPath: c.socketPath, cache: c.cache,
    requestQueues: c.requestQueues, keepListening: c.keepListening, xattr: c.xattr,
    ...(c.maxLockWaits !== undefined ? { maxLockWaits: c.maxLockWaits } : {}),
    ...(c.posixLocks !== undefined ? { posixLocks: c.posixLocks } : {}),
    ...(c.flockLocks !== undefined ? { flockLocks: c.flockLocks } : {}),
    ...(c.readdirplus !== undefined ? { readdirplus: c.readdirplus } : {}),
    ...(c.readonly !== undefined ? { readonly: c.readonly } : {}),
    ...(c.fastPath !== undefined ? { fastPath: c.fastPath } : {}),
    ...(c.rlimitNofile !== undefined ? { rlimitNofile: c.rlimitNofile } : {}),
    ...(c.sandbox !== undefined ? { sandbox: c.sandbox } : {}),
    ...(c.seccomp !== undefined ? { seccomp: c.seccomp } : {}),
    ...(c.inodeFileHandles !== undefined ? { inodeFileHandles: c.inodeFileHandles } : {}),
  };
  fs.writeFileSync(tmp, JSON.stringify(body, null, 2), { mode: 0o600 });
  fs.renameSync(tmp, configPath(c.stateDir));
}

export function readWorkerConfig(stateDir: string): WorkerConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(configPath(stateDir), 'utf8'));
  } catch (e) {
    throw new ConfigError(`cannot read ${configPath(stateDir)}: ${(e as Error).message}`);
  }
  const o = raw as Record<string, unknown>;
  const str = (k: string): string => {
    if (typeof o[k] !== 'string' || (o[k] as string).length === 0) throw new ConfigError(`config: ${k} must be a non-empty string`);
    return o[k] as string;
  };
  const bool = (k: string): boolean => {
    if (typeof o[k] !== 'boolean') throw new ConfigError(`config: ${k} must be a boolean`);
    return o[k] as boolean;
  };
  const cache = str('cache');
  if (cache !== 'auto' && cache !== 'always' && cache !== 'never') throw new ConfigError(`config: bad cache mode ${cache}`);
  const q = o.requestQueues;
  if (typeof q !== 'number' || !Number.isInteger(q) || q < 1 || q > MAX_REQUEST_QUEUES) throw new ConfigError(`config: requestQueues must be 1..${MAX_REQUEST_QUEUES}`);
  const w = o.maxLockWaits;
  if (w !== undefined && (typeof w !== 'number' || !Number.isInteger(w) || w < 0 || w > 65536)) {
    throw new ConfigError('config: maxLockWaits must be 0..65536');
  }
  const optBool = (k: 'posixLocks' | 'flockLocks' | 'readdirplus' | 'readonly' | 'fastPath'): { [key: string]: boolean } => {
    if (o[k] === undefined) return {};
    return { [k]: bool(k) };
  };
  const r = o.rlimitNofile;
  if (r !== undefined && (typeof r !== 'number' || !Number.isInteger(r) || r < 1)) throw new ConfigError('config: rlimitNofile must be a positive integer');
  const sandbox = o.sandbox;
  if (sandbox !== undefined && !(['namespace', 'chroot', 'none'] as unknown[]).includes(sandbox)) throw new ConfigError('config: bad sandbox mode');
  const seccomp = o.seccomp;
  if (seccomp !== undefined && !(['kill', 'log', 'trap', 'none'] as unknown[]).includes(seccomp)) throw new ConfigError('config: bad seccomp action');
  const h = o.inodeFileHandles;
  if (h !== undefined && !INODE_FILE_HANDLES.includes(h as InodeFileHandles)) throw new ConfigError(`config: inodeFileHandles must be one of ${INODE_FILE_HANDLES.join(', ')}`);
  return {
    stateDir, sharedDir: str('sharedDir'), socketPath: str('socketPath'), cache, requestQueues: q,
    keepListening: bool('keepListening'), xattr: bool('xattr'),
    ...(w !== undefined ? { maxLockWaits: w } : {}),
    ...optBool('posixLocks'), ...optBool('flockLocks'), ...optBool('readdirplus'), ...optBool('readonly'), ...optBool('fastPath'),
    ...(r !== undefined ? { rlimitNofile: r } : {}),
    ...(sandbox !== undefined ? { sandbox: sandbox as SandboxMode } : {}),
    ...(seccomp !== undefined ? { seccomp: seccomp as SeccompAction } : {}),
    ...(h !== undefined ? { inodeFileHandles: h as InodeFileHandles } : {}),
  };
}
