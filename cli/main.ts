// The `virtiofs-keeper` command line.
import * as path from 'node:path';
import * as v8 from 'node:v8';
import type { Argv } from 'yargs';
import { logger } from '../shared/log';
import { DEFAULT_STATE_ROOT, SANDBOX_MODES, type CacheMode, type SandboxMode } from '../shared/config';

/** An export name from a socket path: "/run/vm1-fs.sock" → "vm1-fs". */
export function nameFromSocket(socketPath: string): string {
  const base = path.basename(socketPath).replace(/\.sock$/, '').replace(/[^A-Za-z0-9._-]/g, '_');
  return base.length > 0 ? base : 'default';
}

interface ServeArgs {
  sharedDir: string; socketPath: string; stateDir: string; cache: CacheMode; numRequestQueues: number;
  keepListening: boolean; xattr: boolean; standby: boolean; maxLockWaits: number;
  workerPeers: 'unit' | 'same-uid'; workerUnit: string; sandbox: SandboxMode;
}

function serveOptions<T>(y: Argv<T>) {
  return y
    .option('shared-dir', { type: 'string', demandOption: true, describe: 'host directory to export' })
    .option('socket-path', { type: 'string', demandOption: true, describe: 'vhost-user UNIX socket to listen on (QEMU connects here)' })
    .option('state-dir', { type: 'string', describe: `state directory on tmpfs (default ${DEFAULT_STATE_ROOT}/<name>)` })
    .option('name', { type: 'string', describe: 'export name (default: from the socket file name)' })
    .option('cache', { choices: ['auto', 'always', 'never'] as const, default: 'auto' as const, describe: 'guest caching: entry/attr timeouts and open flags' })
    .option('num-request-queues', { type: 'number', default: 1, describe: 'request virtqueues to offer (MQ)' })
    .option('keep-listening', { type: 'boolean', default: false, describe: 'after the frontend disconnects, wait for the next one instead of exiting' })
    .option('xattr', { type: 'boolean', default: true, describe: 'support extended attributes' })
    .option('max-lock-waits', { type: 'number', default: 1024, describe: 'blocking lock requests (SETLKW) parked at once (0..65536); beyond, ENOLCK' })
    .check((a) => {
      const w = a['max-lock-waits'];
      if (!Number.isInteger(w) || w < 0 || w > 65536) throw new Error('--max-lock-waits must be an integer 0..65536');
      return true;
    })
    .option('standby', { type: 'boolean', default: true, describe: 'keep a warm standby worker, so a crash costs a handover instead of a Node.js start' })
    .option('worker-peers', { choices: ['unit', 'same-uid'] as const, default: 'unit' as const,
      describe: '`keeper` only: who may act as a worker on keeper.sock (unit: processes of --worker-unit; same-uid: any process of our uid)' })
    .option('sandbox', { choices: SANDBOX_MODES, default: 'namespace' as SandboxMode,
      describe: 'confine the worker: namespace (own mount/net/ipc/uts namespaces, pivot_root into the shared dir), chroot, or none' })
    .option('worker-unit', { type: 'string', describe: '`keeper` only: the worker unit (default virtiofs-worker@<name>.service)' });
}

function resolveServeArgs(a: Record<string, unknown>): ServeArgs {
  const socketPath = path.resolve(a['socket-path'] as string);
  const name = (a.name as string | undefined) ?? nameFromSocket(socketPath);
  return {
    sharedDir: path.resolve(a['shared-dir'] as string), socketPath,
    stateDir: path.resolve((a['state-dir'] as string | undefined) ?? path.join(DEFAULT_STATE_ROOT, name)),
    cache: a.cache as CacheMode, numRequestQueues: a['num-request-queues'] as number,
    keepListening: a['keep-listening'] as boolean, xattr: a.xattr as boolean, standby: a.standby as boolean,
    maxLockWaits: a['max-lock-waits'] as number,
    workerPeers: a['worker-peers'] as 'unit' | 'same-uid',
    workerUnit: (a['worker-unit'] as string | undefined) ?? `virtiofs-worker@${name}.service`,
    sandbox: a.sandbox as SandboxMode,
  };
}

async function keeperCommand(a: ServeArgs, embedded: boolean): Promise<number> {
  // The keeper's young generation would otherwise grow to 2 x 16 MiB under a burst of fd-store
  // messages (21 MiB private RSS measured instead of 12) for no gain: its objects are tiny and
  // short-lived. V8 reads this factor whenever it would grow the new space, so setting it now
  // works (unlike --max-semi-space-size, which only a node command line can set).
  v8.setFlagsFromString('--semi-space-growth-factor=1');
  const { Keeper } = await import('../keeper/keeper');
  const { sandboxLauncher } = await import('../worker/sandbox');
  const log = logger('main');
  const binPath = path.join(__dirname, '..', '..', 'bin', 'virtiofs-keeper.js');
  // A 4 MiB cap on the worker's semi-spaces (V8's default lets them grow to 16 MiB each): 20-25 MiB
  // less peak RSS in the micro benchmarks, with no measurable change in CPU per request.
  const workerArgs = ['--max-semi-space-size=4', binPath, 'worker', '--state-dir', a.stateDir];
  // namespace: the worker starts in its own namespaces (it pivots into the share once loaded).
  const launch = [...sandboxLauncher(a.sandbox, process.geteuid?.() ?? 0), process.execPath];
  const keeper = new Keeper({
    stateDir: a.stateDir, sharedDir: a.sharedDir, socketPath: a.socketPath, cache: a.cache,
    requestQueues: a.numRequestQueues, keepListening: a.keepListening, xattr: a.xattr, maxLockWaits: a.maxLockWaits, sandbox: a.sandbox,
    workerCommand: embedded ? [...launch, ...workerArgs] : null,
    // unshare(1) gave them their own mount namespace (the non-dumpable keeper's cannot be read).
    ...(a.sandbox === 'namespace' ? { workerEnv: { VFSK_OWN_MOUNT_NS: '1' } } : {}),
    workerPeers: a.workerPeers === 'unit' ? { kind: 'unit', unit: a.workerUnit } : { kind: 'same-uid' },
    // A warm standby compiles all of its code while it waits (--no-lazy), instead of function by
    // function in the middle of a takeover: this halved fetch + load + resume + first request.
    standbyCommand: embedded && a.standby ? [...launch, '--no-lazy', ...workerArgs] : null,
  });
  const onSignal = (signal: NodeJS.Signals): void => { void keeper.stop(`received ${signal}`); };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    keeper.start();
    keeper.dropPrivileges();
  } catch (e) {
    log.error({ err: { message: (e as Error).message, code: (e as { code?: string }).code } }, 'cannot start');
    process.stderr.write(`virtiofs-keeper: ${(e as Error).message}\n`);
    await keeper.stop('start failed');
    return 1;
  }
  return keeper.done;
}

async function statusCommand(a: { name?: string; stateDir?: string; json: boolean; prometheus: boolean; watch: boolean }): Promise<number> {
  const { showStatus } = await import('./status');
  return showStatus(a);
}

/** `worker --state-dir DIR` (as the keeper and the systemd unit start it), or null. */
function workerStateDir(argv: string[]): string | null {
  if (argv[0] !== 'worker') return null;
  if (argv.length === 3 && argv[1] === '--state-dir' && argv[2]) return argv[2];
  if (argv.length === 2 && argv[1]!.startsWith('--state-dir=') && argv[1]!.length > 12) return argv[1]!.slice(12);
  return null;
}

async function workerCommand(stateDir: string): Promise<void> {
  const { workerMain } = await import('../worker/worker');
  const { EXIT_START_FAILED, EXIT_STATE_UNUSABLE } = await import('../shared/config');
  const code = await workerMain(path.resolve(stateDir));
  // A start that failed half-way may have left pollers running (the frontend connection, kick
  // eventfds): exit now, so that nothing of it keeps serving beside the successor.
  if (code === EXIT_START_FAILED || code === EXIT_STATE_UNUSABLE) process.exit(code);
  process.exitCode = code;
}

export function main(argv: string[]): void {
  // The daemon the keeper spawns (every restart, every standby) does not load the CLI parser:
  // yargs costs each process ~3 MiB and start-up time.
  const stateDir = workerStateDir(argv);
  if (stateDir !== null) {
    void workerCommand(stateDir);
    return;
  }
  // sandbox-check's inner half: loaded whole before it confines itself (no yargs).
  if (argv[0] === 'sandbox-probe' && argv.length === 2) {
    void import('./sandbox_check').then((m) => { process.exitCode = m.sandboxProbe(argv[1]!); });
    return;
  }
  void import('yargs').then(({ default: yargs }) => cli(yargs(argv)));
}

function cli(y: Argv): Promise<unknown> {
  return y
    .scriptName('virtiofs-keeper')
    .strict()
    .command('run', 'serve a shared directory: the keeper plus a worker it restarts when it dies (embedded mode)',
      (y) => serveOptions(y),
      async (a) => { process.exitCode = await keeperCommand(resolveServeArgs(a), true); })
    .command('keeper', 'the keeper alone (under systemd, which starts `worker` separately)',
      (y) => serveOptions(y),
      async (a) => { process.exitCode = await keeperCommand(resolveServeArgs(a), false); })
    .command('worker', 'the restartable worker; resumes from the keeper in --state-dir',
      (y) => y.option('state-dir', { type: 'string', demandOption: true, describe: 'the keeper\'s state directory' }),
      async (a) => { await workerCommand(a['state-dir']); })
    .command('status [name]', 'show the state of one instance (or list all of them)',
      (y) => y
        .positional('name', { type: 'string', describe: 'export name' })
        .option('state-dir', { type: 'string', describe: 'state directory (instead of a name)' })
        .option('json', { type: 'boolean', default: false, describe: 'machine-readable output' })
        .option('prometheus', { type: 'boolean', default: false, describe: 'Prometheus text format' })
        .option('watch', { type: 'boolean', default: false, describe: 'refresh every second' }),
      async (a) => {
        process.exitCode = await statusCommand({
          ...(a.name !== undefined ? { name: a.name } : {}),
          ...(a['state-dir'] !== undefined ? { stateDir: a['state-dir'] } : {}),
          json: a.json, prometheus: a.prometheus, watch: a.watch,
        });
      })
    .command('sandbox-check', 'build the worker\'s sandbox and try what a compromised worker would; print what was blocked',
      (y) => y
        .option('shared-dir', { type: 'string', demandOption: true, describe: 'the shared directory to confine into' })
        .option('sandbox', { choices: SANDBOX_MODES, default: 'namespace' as SandboxMode, describe: 'the mode to check' })
        .option('other-keeper-sock', { type: 'string', describe: 'keeper.sock of a running instance to try FDFETCH on (and whose keeper to ptrace)' })
        .option('json', { type: 'boolean', default: false, describe: 'print the rows as JSON' }),
      async (a) => {
        const { sandboxCheck } = await import('./sandbox_check');
        const r = await sandboxCheck({ sharedDir: a['shared-dir'], sandbox: a.sandbox as SandboxMode, otherKeeperSock: a['other-keeper-sock'] ?? null },
          (t) => { if (!a.json) process.stdout.write(t); });
        if (a.json) process.stdout.write(`${JSON.stringify(r.rows)}\n`);
        process.exitCode = r.code;
      })
    .command('install-units', 'write the systemd unit pair (virtiofs-keeper@, virtiofs-worker@) with this checkout\'s paths',
      (y) => y
        .option('prefix', { type: 'string', default: '/etc/systemd/system', describe: 'unit directory' })
        .option('config-dir', { type: 'string', default: '/etc/virtiofs-keeper', describe: 'directory of <name>.conf files' }),
      async (a) => {
        const { installUnits } = await import('./install_units');
        for (const f of installUnits({ prefix: path.resolve(a.prefix), configDir: path.resolve(a['config-dir']) })) process.stdout.write(`wrote ${f}\n`);
        process.stdout.write('next: create /etc/virtiofs-keeper/<name>.conf, then systemctl daemon-reload && systemctl enable --now virtiofs-keeper@<name>\n');
      })
    .demandCommand(1)
    .help()
    .parseAsync();
}
