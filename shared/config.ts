// Service configuration shared by keeper and worker. The keeper writes it into the state
// directory so a worker started by anyone (the keeper, systemd) serves the same export.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ConfigurationError } from './errors';

/** The most request queues a device offers (besides hiprio). */
export const MAX_REQUEST_QUEUES = 64;

export type CacheMode = 'auto' | 'always' | 'never';
/** How the worker is confined (worker/sandbox.ts): its root becomes the shared directory by
 * pivot_root in its own mount (and net, ipc, uts) namespaces, or by chroot; or not at all. */
export type SandboxMode = 'namespace' | 'chroot' | 'none';
export const SANDBOX_MODES: readonly SandboxMode[] = ['namespace', 'chroot', 'none'];

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
  /** The worker's confinement (absent in configs written before it existed: none). */
  sandbox?: SandboxMode;
}

export class ConfigError extends ConfigurationError {}

export const DEFAULT_STATE_ROOT = '/run/virtiofs-keeper';

/** Worker exit codes the keeper acts on: 0 = the frontend left, the service is over (the
 * keeper exits too); 3 = the saved state cannot be used (the keeper keeps every fd and does
 * not restart the worker). Anything else, or a signal, is a crash: restart at once. */
export const EXIT_SERVICE_OVER = 0;
export const EXIT_STATE_UNUSABLE = 3;
/** The worker could not start for a reason that may pass (resources, host errors): restart it. */
export const EXIT_START_FAILED = 4;

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
    ...(c.sandbox !== undefined ? { sandbox: c.sandbox } : {}),
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
  const sb = o.sandbox;
  if (sb !== undefined && !SANDBOX_MODES.includes(sb as SandboxMode)) throw new ConfigError(`config: bad sandbox mode ${String(sb).slice(0, 20)}`);
  return {
    stateDir, sharedDir: str('sharedDir'), socketPath: str('socketPath'), cache, requestQueues: q,
    keepListening: bool('keepListening'), xattr: bool('xattr'),
    ...(w !== undefined ? { maxLockWaits: w } : {}),
    ...(sb !== undefined ? { sandbox: sb as SandboxMode } : {}),
  };
}
