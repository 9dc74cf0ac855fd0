// Runs a keeper (and, embedded, the workers it supervises) until it stops: shared by `run`,
// `keeper` and the virtiofsd-compatible entry point.
import * as path from 'node:path';
import * as v8 from 'node:v8';
import { logger } from '../shared/log';
import type { CacheMode, InodeFileHandles, SandboxMode, SeccompAction } from '../shared/config';
import type { KeeperOptions } from '../keeper/keeper';
import { KEEPER_RUNTIME_V8_FLAGS, WORKER_NODE_FLAGS, workerMallocEnv } from '../shared/node_flags';

export interface ServeArgs {
  sharedDir: string; socketPath: string; stateDir: string; cache: CacheMode; numRequestQueues: number;
  keepListening: boolean; xattr: boolean; standby: boolean; maxLockWaits: number; readonly: boolean;
  /** Absent: on (the virtiofsd entry point has no such option). */
  fastPath?: boolean;
  inodeFileHandles: InodeFileHandles; sandbox: SandboxMode; seccomp: SeccompAction;
  /** `keeper` (systemd): which keeper.sock peers are workers (keeper/peer_trust.ts). */
  workerPeers: 'unit' | 'same-uid'; workerUnits: readonly string[];
}

/** Options beyond `run`'s (the virtiofsd entry point's). */
export type ExtraKeeperOptions = Partial<Pick<KeeperOptions, 'listenFd' | 'unlinkSocket' | 'removeStateDir' | 'rlimitNofile'
  | 'posixLocks' | 'flockLocks' | 'readdirplus' | 'keepOpenFds'>> & { onStarted?: () => void };

/** How a keeper was started: what its re-exec'd image starts from (keeper/reexec.ts). */
interface StartArgs { args: ServeArgs; embedded: boolean; extra: Omit<ExtraKeeperOptions, 'onStarted'> }

/** A keeper re-exec'd by itself: the handoff in VFSK_REEXEC_FD says how it was started and
 * holds the rest (keeper/reexec.ts). */
export async function resumeKeeperCommand(): Promise<number> {
  const { takeHandoff, HandoffError } = await import('../keeper/reexec');
  let handoff;
  try {
    handoff = takeHandoff();
  } catch (e) {
    // The old image is gone: nothing can go back to it. Say why as loudly as we can.
    logger('main').fatal({ err: { message: (e as Error).message } }, 'cannot resume after a keeper re-exec');
    process.stderr.write(`virtiofs-keeper: ${(e as Error).message}\n`);
    return 1;
  }
  const start = handoff?.start as StartArgs | null | undefined;
  if (handoff === null || start === null || start === undefined || typeof start !== 'object' || typeof start.embedded !== 'boolean') {
    const msg = new HandoffError('keeper handoff without start arguments').message;
    process.stderr.write(`virtiofs-keeper: ${msg}\n`);
    return 1;
  }
  return keeperCommand(start.args, start.embedded, start.extra, handoff);
}

export async function keeperCommand(a: ServeArgs, embedded: boolean, extra: ExtraKeeperOptions = {},
  handoff: import('../keeper/reexec').KeeperHandoff | null = null): Promise<number> {
  // See shared/node_flags.ts: these V8 flags take effect when set at run time.
  for (const f of KEEPER_RUNTIME_V8_FLAGS) v8.setFlagsFromString(f);
  const { Keeper } = await import('../keeper/keeper');
  const { sandboxLauncher } = await import('../worker/sandbox');
  const { IdleMemoryReducer } = await import('../shared/memory');
  const log = logger('main');
  // Workers start from the installation as the keeper was started from it, symlinks unresolved
  // (argv[1]: e.g. /opt/vfsk/current/bin/...): a release switched by a symlink, or files
  // replaced in place, is what the next worker runs (`virtiofs-keeper upgrade`).
  const binPath = installedBin();
  const workerArgs = [...WORKER_NODE_FLAGS, binPath, 'worker', '--state-dir', a.stateDir];
  // namespace: the worker starts in its own namespaces (it pivots into the share once loaded).
  const launch = [...sandboxLauncher(a.sandbox, process.geteuid?.() ?? 0), process.execPath];
  const keeper = new Keeper({
    stateDir: a.stateDir, sharedDir: a.sharedDir, socketPath: a.socketPath, cache: a.cache,
    requestQueues: a.numRequestQueues, keepListening: a.keepListening, xattr: a.xattr, maxLockWaits: a.maxLockWaits, readonly: a.readonly,
    ...(a.fastPath === false ? { fastPath: false } : {}),
    inodeFileHandles: a.inodeFileHandles, sandbox: a.sandbox, seccomp: a.seccomp,
    ...withoutHook(extra),
    workerCommand: embedded ? [...launch, ...workerArgs] : null,
    // unshare(1) gave them their own mount namespace (the non-dumpable keeper's cannot be read),
    // and forks them into their own pid namespace (sandboxLauncher).
    workerEnv: { ...workerMallocEnv(), ...(a.sandbox === 'namespace' ? { VFSK_OWN_MOUNT_NS: '1' } : {}) },
    ...(a.sandbox === 'namespace' && embedded ? { launcherForks: true } : {}),
    workerPeers: a.workerPeers === 'unit' ? { kind: 'unit', units: a.workerUnits } : { kind: 'same-uid' },
    // It compiles our code eagerly while it loads (cli/main.ts, shared/node_flags.ts).
    standbyCommand: embedded && a.standby ? [...launch, ...workerArgs] : null,
    startArgs: { args: a, embedded, extra: withoutHook(extra) } satisfies StartArgs,
    ...(process.argv[1] !== undefined ? { reexec: { script: process.argv[1], checkBin: binPath } } : {}),
  });
  const onSignal = (signal: NodeJS.Signals): void => { void keeper.stop(`received ${signal}`); };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    keeper.start(handoff);
    // Before the keeper gives up its capabilities: --socket-group chowns the socket (done
    // already by the image before a re-exec).
    if (handoff === null) extra.onStarted?.();
    keeper.dropPrivileges();
    // Start-up garbage, and what a burst of fd stores grew, go back once it is quiet.
    new IdleMemoryReducer(() => keeper.activity, logger('memory')).start();
  } catch (e) {
    log.error({ err: { message: (e as Error).message, code: (e as { code?: string }).code } }, 'cannot start');
    process.stderr.write(`virtiofs-keeper: ${(e as Error).message}\n`);
    await keeper.stop('start failed');
    return 1;
  }
  return keeper.done;
}


function withoutHook(extra: ExtraKeeperOptions): Omit<ExtraKeeperOptions, 'onStarted'> {
  const { onStarted: _hook, ...rest } = extra;
  return rest;
}

/** bin/virtiofs-keeper.js beside the script this process was started as (either bin), else
 * this build's own. */
function installedBin(): string {
  const started = process.argv[1];
  if (started !== undefined && /(^|\/)bin\/virtiofsd?-keeper\.js$/.test(started)) return path.join(path.dirname(path.resolve(started)), 'virtiofs-keeper.js');
  return path.join(__dirname, '..', '..', 'bin', 'virtiofs-keeper.js');
}
