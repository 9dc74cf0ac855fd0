// Starts a vhost-user-fs backend for the E2E tests: Debian's C virtiofsd (the reference
// peer) or ours. Each is started in its own process group, waited for until its socket
// exists, and stopped by pid (SIGTERM, then SIGKILL to the group).
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CacheMode } from '../../shared/config';
import { repoRoot } from './guest-image';
import { withParentDeathSignal } from './qemu';

export type BackendKind = 'c-virtiofsd' | 'ours';
export const BACKEND_KINDS: readonly BackendKind[] = ['c-virtiofsd', 'ours'];

export const C_VIRTIOFSD = process.env.VFSK_C_VIRTIOFSD ?? '/usr/lib/qemu/virtiofsd';

/**
 * Options the C virtiofsd (QEMU 7.2) runs with, beyond socket/source/cache:
 * - xattr: off by default in 7.2; the workload checks xattrs.
 * - Locks stay guest-local (7.2's defaults no_posix_lock, no_flock): the guest kernel
 *   arbitrates flock/POSIX/OFD locks itself. 7.2's remote locking (-o posix_lock -o flock)
 *   is broken for what the workload checks: it answers every blocking request (F_SETLKW,
 *   and flock(LOCK_UN), which the kernel sends as a blocking SETLKW) with EOPNOTSUPP,
 *   reports l_pid -1 from F_GETLK, and keeps an OFD lock after the last close of its file.
 *   Set VFSK_C_VIRTIOFSD_LOCKS=remote to run with them anyway.
 * The namespace sandbox works as root here; set VFSK_C_VIRTIOFSD_SANDBOX=chroot where it does not.
 */
export function cVirtiofsdArgs(sharedDir: string, socketPath: string, cache: CacheMode = 'never'): string[] {
  const cacheOpt = { never: 'none', auto: 'auto', always: 'always' }[cache];
  const args = [`--socket-path=${socketPath}`, '-o', `source=${sharedDir}`, '-o', `cache=${cacheOpt}`, '-o', 'xattr'];
  if (process.env.VFSK_C_VIRTIOFSD_LOCKS === 'remote') args.push('-o', 'posix_lock', '-o', 'flock');
  const sandbox = process.env.VFSK_C_VIRTIOFSD_SANDBOX;
  if (sandbox) args.push('-o', `sandbox=${sandbox}`);
  return args;
}

/** Guest caching, in our CLI's terms: never = C virtiofsd cache=none (the default here). */

export interface BackendOptions {
  /** Directory exported to the guest. */
  sharedDir: string;
  /** vhost-user socket path to create. */
  socketPath: string;
  /** The test's temp dir: the backend's log goes here. */
  dir: string;
  /** Extra command-line arguments. */
  extraArgs?: string[];
  /** Ours only: the CLI script to run (default this checkout's bin/virtiofs-keeper.js), e.g. an
   * installed release's. */
  binPath?: string;
  /** Extra environment. */
  env?: Record<string, string>;
  /** How long to wait for the socket (default 20 000 ms). */
  startTimeoutMs?: number;
  /** Log file name in `dir` (default "<kind>.log"). */
  logName?: string;
  /** Guest caching (default 'never', i.e. the C virtiofsd's cache=none, for both kinds). */
  cache?: CacheMode;
  /**
   * Ours only: --state-dir. Default: a fresh short dir under /tmp (keeper.sock lives there
   * and sun_path is 108 bytes), removed by stop().
   */
  stateDir?: string;
}

export interface Backend {
  kind: BackendKind;
  pid: number;
  socketPath: string;
  sharedDir: string;
  /** Ours: its state directory; null for the C virtiofsd. */
  stateDir: string | null;
  /** Combined stdout+stderr of the backend. */
  logPath: string;
  /** The log so far (whole file; see logTail for big logs). */
  log(): string;
  /** The last `bytes` of the log (default 64 KiB). */
  logTail(bytes?: number): string;
  /** The process has exited. */
  exited(): boolean;
  /** Exit status, once exited. */
  exitStatus(): { code: number | null; signal: NodeJS.Signals | null } | null;
  /** Resolves when the process has exited. */
  waitExit(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, then SIGKILL (to its process group) after timeoutMs (default 5000); waits for exit. */
  stop(timeoutMs?: number): Promise<void>;
}

/** Backends to run, from VFSK_E2E_BACKENDS (default: both). */
export function backendsFromEnv(value = process.env.VFSK_E2E_BACKENDS): BackendKind[] {
  const kinds = (value ?? 'c-virtiofsd,ours')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const k of kinds) {
    if (!(BACKEND_KINDS as readonly string[]).includes(k)) {
      throw new Error(`VFSK_E2E_BACKENDS: unknown backend "${k}" (known: ${BACKEND_KINDS.join(', ')})`);
    }
  }
  return kinds as BackendKind[];
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const cp of live) killGroup(cp, 'SIGKILL');
  });
}

function killGroup(cp: ChildProcess, sig: NodeJS.Signals): void {
  if (cp.pid === undefined) return;
  // The backend leads its own process group (detached); its children (the C virtiofsd's
  // sandboxed child, our keeper's worker) are in it too.
  try {
    process.kill(-cp.pid, sig);
  } catch {
    // No group (yet/any more). Signal the pid itself only while it is not reaped, so a
    // recycled pid is never hit.
    if (cp.exitCode === null && cp.signalCode === null) {
      try {
        process.kill(cp.pid, sig);
      } catch {
        // gone
      }
    }
  }
}

function commandFor(kind: BackendKind, o: BackendOptions, stateDir: string | null): { bin: string; args: string[] } {
  switch (kind) {
    case 'c-virtiofsd':
      return { bin: C_VIRTIOFSD, args: [...cVirtiofsdArgs(o.sharedDir, o.socketPath, o.cache), ...(o.extraArgs ?? [])] };
    case 'ours':
      return {
        bin: process.execPath,
        args: [
          o.binPath ?? path.join(repoRoot(), 'bin', 'virtiofs-keeper.js'),
          'run',
          '--shared-dir', o.sharedDir,
          '--socket-path', o.socketPath,
          '--cache', o.cache ?? 'never',
          ...(stateDir !== null ? ['--state-dir', stateDir] : []),
          ...(o.extraArgs ?? []),
        ],
      };
  }
}

function isSocket(p: string): boolean {
  try {
    return fs.statSync(p).isSocket();
  } catch {
    return false;
  }
}

/** Start a backend and resolve once its vhost-user socket exists. */
export async function startBackend(kind: BackendKind, o: BackendOptions): Promise<Backend> {
  installExitHook();
  fs.mkdirSync(o.dir, { recursive: true });
  fs.mkdirSync(path.dirname(o.socketPath), { recursive: true });
  if (!fs.statSync(o.sharedDir, { throwIfNoEntry: false })?.isDirectory()) {
    throw new Error(`shared dir ${o.sharedDir} is not a directory`);
  }
  if (fs.existsSync(o.socketPath)) throw new Error(`socket path ${o.socketPath} already exists`);
  const logPath = path.join(o.dir, o.logName ?? `${kind}.log`);
  const logFd = fs.openSync(logPath, 'a');
  let stateDir: string | null = null;
  let ownStateDir: string | null = null;
  if (kind === 'ours' && !(o.extraArgs ?? []).includes('--state-dir')) {
    stateDir = o.stateDir ?? (ownStateDir = fs.mkdtempSync('/tmp/vfsk-e2e-st-'));
  }
  const plain = commandFor(kind, o, stateDir);
  const { bin, args } = withParentDeathSignal(plain.bin, plain.args);
  fs.writeSync(logFd, `# ${new Date().toISOString()} ${bin} ${args.join(' ')}\n`);
  let cp: ChildProcess;
  try {
    cp = spawn(bin, args, {
      stdio: ['ignore', logFd, logFd],
      detached: true,
      env: { ...process.env, ...(o.env ?? {}) },
    });
  } finally {
    fs.closeSync(logFd);
  }
  live.add(cp);
  let status: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  let spawnError: Error | null = null;
  const exitP = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    const done = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (status) return;
      status = { code, signal };
      live.delete(cp);
      resolve(status);
    };
    cp.on('error', (e) => {
      spawnError = e;
      if (cp.pid === undefined) done(null, null);
    });
    cp.on('exit', (code, signal) => done(code, signal));
  });
  const readLog = (): string => {
    try {
      return fs.readFileSync(logPath, 'utf8');
    } catch (e) {
      return `[cannot read ${logPath}: ${(e as Error).message}]`;
    }
  };
  const logTail = (bytes = 64 * 1024): string => {
    let fd: number | null = null;
    try {
      fd = fs.openSync(logPath, 'r');
      const size = fs.fstatSync(fd).size;
      const len = Math.min(size, bytes);
      const buf = Buffer.alloc(len);
      fs.readSync(fd, buf, 0, len, size - len);
      return (len < size ? `[... ${size - len} earlier bytes of ${logPath} omitted]\n` : '') + buf.toString('utf8');
    } catch (e) {
      return `[cannot read ${logPath}: ${(e as Error).message}]`;
    } finally {
      if (fd !== null) fs.closeSync(fd);
    }
  };

  const cleanup = (): void => {
    if (ownStateDir) fs.rmSync(ownStateDir, { recursive: true, force: true });
  };
  const stop = async (timeoutMs = 5000): Promise<void> => {
    if (status) {
      killGroup(cp, 'SIGKILL'); // leftover group members, if any
      cleanup();
      return;
    }
    killGroup(cp, 'SIGTERM');
    let t: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      exitP.then(() => false),
      new Promise<boolean>((r) => {
        t = setTimeout(() => r(true), timeoutMs);
      }),
    ]);
    if (t) clearTimeout(t);
    if (timedOut) killGroup(cp, 'SIGKILL');
    await exitP;
    killGroup(cp, 'SIGKILL');
    cleanup();
  };

  // Poll for the socket; fail early if the process dies.
  const deadline = Date.now() + (o.startTimeoutMs ?? 20_000);
  for (;;) {
    if (isSocket(o.socketPath)) break;
    if (status || spawnError) {
      await exitP;
      cleanup();
      throw new Error(
        `${kind} exited before creating ${o.socketPath} (status ${JSON.stringify(status)}` +
          `${spawnError ? `, ${(spawnError as Error).message}` : ''}):\n${logTail()}`,
      );
    }
    if (Date.now() > deadline) {
      await stop(1000);
      throw new Error(`${kind} did not create ${o.socketPath} within ${o.startTimeoutMs ?? 20_000} ms:\n${logTail()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }

  return {
    kind,
    pid: cp.pid!,
    socketPath: o.socketPath,
    sharedDir: o.sharedDir,
    stateDir,
    logPath,
    log: readLog,
    logTail,
    exited: () => status !== null,
    exitStatus: () => status,
    waitExit: () => exitP,
    stop,
  };
}
