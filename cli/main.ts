// The `virtiofs-keeper` command line.
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { keeperCommand, type ServeArgs } from './serve';
import { defaultWorkerUnits } from '../keeper/peer_trust';
import { loadEagerly, willStandBy } from '../shared/node_flags';
import { DEFAULT_INODE_FILE_HANDLES, DEFAULT_SECCOMP_ACTION, DEFAULT_STATE_ROOT, INODE_FILE_HANDLES, SANDBOX_MODES, SECCOMP_ACTIONS, type CacheMode, type InodeFileHandles, type SandboxMode, type SeccompAction } from '../shared/config';

/** An export name from a socket path: "/run/vm1-fs.sock" → "vm1-fs". */
export function nameFromSocket(socketPath: string): string {
  const base = path.basename(socketPath).replace(/\.sock$/, '').replace(/[^A-Za-z0-9._-]/g, '_');
  return base.length > 0 ? base : 'default';
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
    .option('readonly', { type: 'boolean', default: false, describe: 'a read-only export: requests that would change it get EROFS' })
    .option('fast-path', { type: 'boolean', default: true,
      describe: 'the addon serves the common requests itself: GETATTR, LOOKUP, READ, WRITE, OPEN, CREATE, READDIRPLUS and more (--no-fast-path: every request through the TypeScript server)' })
    .option('inode-file-handles', { choices: INODE_FILE_HANDLES, default: DEFAULT_INODE_FILE_HANDLES,
      describe: 'name inodes by file handles (needs CAP_DAC_READ_SEARCH) so no fd is held per inode: never, prefer (fall back to fds), mandatory' })
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
    .option('seccomp', { choices: SECCOMP_ACTIONS, default: DEFAULT_SECCOMP_ACTION,
      describe: 'what a worker syscall outside its allow-list does: kill the worker, trap (fail with ENOSYS, logged), log (allowed, in the kernel log), none (no filter)' })
    .option('worker-unit', { type: 'string', array: true,
      describe: '`keeper` only: a worker unit, repeatable (default virtiofs-worker@<name>.service and virtiofs-standby@<name>.service)' });
}

function resolveServeArgs(a: Record<string, unknown>): ServeArgs {
  const socketPath = path.resolve(a['socket-path'] as string);
  const name = (a.name as string | undefined) ?? nameFromSocket(socketPath);
  return {
    sharedDir: path.resolve(a['shared-dir'] as string), socketPath,
    stateDir: path.resolve((a['state-dir'] as string | undefined) ?? path.join(DEFAULT_STATE_ROOT, name)),
    cache: a.cache as CacheMode, numRequestQueues: a['num-request-queues'] as number,
    keepListening: a['keep-listening'] as boolean, xattr: a.xattr as boolean, standby: a.standby as boolean,
    maxLockWaits: a['max-lock-waits'] as number, readonly: a.readonly as boolean, fastPath: a['fast-path'] as boolean,
    inodeFileHandles: a['inode-file-handles'] as InodeFileHandles,
    workerPeers: a['worker-peers'] as 'unit' | 'same-uid',
    workerUnits: (a['worker-unit'] as string[] | undefined) ?? defaultWorkerUnits(name),
    sandbox: a.sandbox as SandboxMode, seccomp: a.seccomp as SeccompAction,
  };
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
  // A worker that stands by first compiles our code now (shared/node_flags.ts); msgpackr (the
  // journal's codec, 0.5 MiB of bytecode compiled whole) and Node's modules stay lazy.
  const { workerMain } = willStandBy()
    ? await loadEagerly(['msgpackr'], () => import('../worker/worker'))
    : await import('../worker/worker');
  const { EXIT_START_FAILED, EXIT_STATE_UNUSABLE, EXIT_HANDED_OVER } = await import('../shared/config');
  const code = await workerMain(path.resolve(stateDir));
  // A start that failed half-way may have left pollers running (the frontend connection, kick
  // eventfds): exit now, so that nothing of it keeps serving beside the successor. A drained
  // worker exits at once too: its successor starts when it is gone.
  if (code === EXIT_START_FAILED || code === EXIT_STATE_UNUSABLE || code === EXIT_HANDED_OVER) process.exit(code);
  process.exitCode = code;
}

export function main(argv: string[]): void {
  // A keeper re-exec'd by itself (keeper/reexec.ts): its argv is the first image's (either
  // command line), its options come from the handoff.
  if (process.env.VFSK_REEXEC_FD !== undefined) {
    void import('./serve').then(async ({ resumeKeeperCommand }) => { process.exitCode = await resumeKeeperCommand(); });
    return;
  }
  // What a keeper asks of the installed build before it re-execs into it: does it load, and
  // which handoff formats does it read.
  if (argv[0] === 'reexec-check' && argv.length === 1) {
    void Promise.all([import('../keeper/keeper'), import('../keeper/reexec')]).then(([, m]) => { process.stdout.write(m.reexecCheckAnswer()); });
    return;
  }
  // virtiofsd's command line (libvirt, Kata... exec a virtiofsd): no yargs, its own parser.
  if (argv[0] === 'virtiofsd') {
    void import('./virtiofsd').then(({ virtiofsdMain }) => virtiofsdMain(argv.slice(1)));
    return;
  }
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
  // Two steps: the closure that runs the keeper for the life of the VM must not hold yargs.
  void import('yargs').then(({ default: yargs }) => cli(yargs(argv))).then(async (daemon) => {
    if (daemon === null) return;
    forgetCliParser();
    process.exitCode = await daemon();
  });
}

/** Modules only the command line parser uses (yargs and its dependencies). */
const CLI_PARSER_MODULE = /[\\/]node_modules[\\/](yargs|yargs-parser|cliui|y18n|string-width|strip-ansi|ansi-regex|wrap-ansi|ansi-styles|emoji-regex|is-fullwidth-code-point|escalade|get-caller-file|require-directory)[\\/]/;

/**
 * Lets the garbage collector take yargs once the keeper's options are parsed: its modules stay
 * reachable from the module cache (and their parents' `children`) for the life of the process
 * otherwise (docs/ARCHITECTURE.md, "Memory"). Nothing requires them again: the keeper's code
 * does not.
 */
function forgetCliParser(): void {
  const cache = require.cache;
  for (const [key, m] of Object.entries(cache)) {
    if (m === undefined) continue;
    if (CLI_PARSER_MODULE.test(key)) {
      delete cache[key];
      continue;
    }
    m.children = m.children.filter((c) => !CLI_PARSER_MODULE.test(c.id));
  }
}

/** Parses the command line and runs a short command; for `run` and `keeper` it returns the
 * long-lived daemon to start once the parser is gone (see forgetCliParser). */
async function cli(y: Argv): Promise<(() => Promise<number>) | null> {
  let daemon: (() => Promise<number>) | null = null;
  await y
    .scriptName('virtiofs-keeper')
    .strict()
    .command('run', 'serve a shared directory: the keeper plus a worker it restarts when it dies (embedded mode)',
      (y) => serveOptions(y),
      (a) => { const args = resolveServeArgs(a); daemon = () => keeperCommand(args, true); })
    .command('keeper', 'the keeper alone (under systemd, which starts `worker` separately)',
      (y) => serveOptions(y),
      (a) => { const args = resolveServeArgs(a); daemon = () => keeperCommand(args, false); })
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
    .command('upgrade [name]', 'hand the session to a worker started from the installed files: a graceful drain, the pause reported',
      (y) => y
        .positional('name', { type: 'string', describe: 'export name' })
        .option('state-dir', { type: 'string', describe: 'state directory (instead of a name)' })
        .option('timeout-ms', { type: 'number', describe: 'give up if no new worker serves within this long (default 60000)' })
        .option('json', { type: 'boolean', default: false, describe: 'machine-readable output' })
        .option('detach', { type: 'boolean', default: false, describe: 'return once the upgrade started; its outcome goes to status (systemctl reload: see the keeper unit)' })
        .option('keeper', { type: 'boolean', default: false, describe: 'first re-exec the keeper into the installed build (embedded mode: same pid, every fd kept, the worker serving meanwhile)' }),
      async (a) => {
        const { upgradeCommand } = await import('./upgrade');
        process.exitCode = upgradeCommand({
          ...(a.name !== undefined ? { name: a.name } : {}),
          ...(a['state-dir'] !== undefined ? { stateDir: a['state-dir'] } : {}),
          ...(a['timeout-ms'] !== undefined ? { timeoutMs: a['timeout-ms'] } : {}),
          json: a.json, noWait: a.detach, keeper: a.keeper,
        });
      })
    .command('sandbox-check', 'build the worker\'s sandbox and try what a compromised worker would; print what was blocked',
      (y) => y
        .option('shared-dir', { type: 'string', demandOption: true, describe: 'the shared directory to confine into' })
        .option('sandbox', { choices: SANDBOX_MODES, default: 'namespace' as SandboxMode, describe: 'the mode to check' })
        .option('seccomp', { choices: SECCOMP_ACTIONS, default: DEFAULT_SECCOMP_ACTION, describe: 'the seccomp action to check' })
        .option('other-keeper-sock', { type: 'string', describe: 'keeper.sock of a running instance to try FDFETCH on (and whose keeper to ptrace)' })
        .option('json', { type: 'boolean', default: false, describe: 'print the rows as JSON' }),
      async (a) => {
        const { sandboxCheck } = await import('./sandbox_check');
        const r = await sandboxCheck({ sharedDir: a['shared-dir'], sandbox: a.sandbox as SandboxMode, seccomp: a.seccomp as SeccompAction, otherKeeperSock: a['other-keeper-sock'] ?? null },
          (t) => { if (!a.json) process.stdout.write(t); });
        if (a.json) process.stdout.write(`${JSON.stringify(r.rows)}\n`);
        process.exitCode = r.code;
      })
    .command('install-units', 'write the systemd units (virtiofs-keeper@, virtiofs-worker@ and its twin virtiofs-standby@) with this checkout\'s paths',
      (y) => y
        .option('prefix', { type: 'string', default: '/etc/systemd/system', describe: 'unit directory' })
        .option('config-dir', { type: 'string', default: '/etc/virtiofs-keeper', describe: 'directory of <name>.conf files' }),
      async (a) => {
        const { installUnits } = await import('./install_units');
        for (const f of installUnits({ prefix: path.resolve(a.prefix), configDir: path.resolve(a['config-dir']) })) process.stdout.write(`wrote ${f}\n`);
        process.stdout.write('next: create /etc/virtiofs-keeper/<name>.conf, then systemctl daemon-reload && systemctl enable --now virtiofs-keeper@<name>\n');
      })
    .command('install-vhost-user', 'write the vhost-user backend descriptor (type "fs") through which libvirt finds virtiofsd-keeper',
      (y) => y.option('dir', { type: 'string', default: '/usr/share/qemu/vhost-user', describe: 'descriptor directory (/etc/qemu/vhost-user overrides it)' }),
      async (a) => {
        const { installVhostUserDescriptor } = await import('./install_vhost_user');
        process.stdout.write(`wrote ${installVhostUserDescriptor(path.resolve(a.dir))}\n`);
      })
    .demandCommand(1)
    .help()
    .parseAsync();
  return daemon;
}
