// Starts a vhost-user-fs backend for the test frontend: Debian's C virtiofsd (the reference) or
// ours. Output goes to a log file in the test's directory. stop() kills by pid: SIGTERM, then
// SIGKILL after a timeout, and waits for the exit.
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export type BackendKind = 'c-virtiofsd' | 'ours';

export const C_VIRTIOFSD = process.env.VFSK_C_VIRTIOFSD ?? '/usr/lib/qemu/virtiofsd';
export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');

export interface BackendOptions {
  sharedDir: string;
  socketPath: string;
  /** Directory for logs (and state, for ours). */
  dir: string;
  extraArgs?: string[];
  env?: NodeJS.ProcessEnv;
  /** Start the backend with these supplementary groups (util-linux setpriv; we run as root). */
  supplementaryGroups?: number[];
  /** Ours: run this bin/virtiofs-keeper.js (an installed copy) instead of the checkout's. */
  binPath?: string;
  /** Start the backend without NODE_OPTIONS in its environment (env(1) -u, exec'd in place),
   * which tap's process tracking otherwise puts back into every child's environment whatever
   * the spawn asked for (its ESM loader: a thread and an isolate in each of our processes). */
  withoutNodeOptions?: boolean;
}

export interface Backend {
  kind: BackendKind;
  pid: number;
  socketPath: string;
  logPath: string;
  child: ChildProcess;
  readonly exited: boolean;
  readonly exitCode: number | null;
  readonly exitSignal: NodeJS.Signals | null;
  /** Resolves true when the process has exited (false on timeout). */
  waitExit(timeoutMs: number): Promise<boolean>;
  /** SIGTERM, then SIGKILL after graceMs; waits for the exit. Idempotent. */
  stop(graceMs?: number): Promise<void>;
  /** The log so far. */
  log(): string;
}

/** Backend kinds selected for this run: $VFSK_BACKENDS (comma-separated), default both. */
export function selectedBackends(): BackendKind[] {
  const list = (process.env.VFSK_BACKENDS ?? 'c-virtiofsd,ours').split(',').map((s) => s.trim()).filter(Boolean);
  for (const k of list) {
    if (k !== 'c-virtiofsd' && k !== 'ours') throw new Error(`unknown backend kind in VFSK_BACKENDS: ${k}`);
  }
  return list as BackendKind[];
}

export function backendCommand(kind: BackendKind, o: BackendOptions): { cmd: string; args: string[] } {
  if (kind === 'c-virtiofsd') {
    // xattr, posix_lock and flock are off by default in the C virtiofsd; the tests need them.
    // sandbox=chroot keeps it a single process (namespace mode forks a child into new pid/mount
    // namespaces), so that killing our pid kills the server.
    return {
      cmd: C_VIRTIOFSD,
      args: [`--socket-path=${o.socketPath}`, '-o', `source=${o.sharedDir}`, '-o', 'cache=none',
        '-o', 'xattr', '-o', 'posix_lock', '-o', 'flock', '-o', 'sandbox=chroot',
        ...(process.env.VFSK_DEBUG ? ['-o', 'log_level=debug'] : []),
        ...(o.extraArgs ?? [])],
    };
  }
  return {
    cmd: process.execPath,
    args: [o.binPath ?? path.join(REPO_ROOT, 'bin', 'virtiofs-keeper.js'), 'run', '--shared-dir', o.sharedDir,
      '--socket-path', o.socketPath, ...(o.extraArgs ?? [])],
  };
}

/** Direct children of `pid` (from /proc/<pid>/task/<pid>/children, else a /proc scan). */
function childrenOf(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch { /* fall back to a scan */ }
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(e));
    } catch { /* gone */ }
  }
  return out;
}

/** All descendants of `pid`, depth first. */
export function descendantsOf(pid: number): number[] {
  const out: number[] = [];
  for (const c of childrenOf(pid)) out.push(c, ...descendantsOf(c));
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

export async function startBackend(kind: BackendKind, o: BackendOptions): Promise<Backend> {
  fs.mkdirSync(o.dir, { recursive: true });
  const logPath = path.join(o.dir, `${kind}.log`);
  // Ours keeps a state directory (with keeper.sock, so its path must stay short); give each
  // backend its own unless the caller chose one.
  let ownStateDir: string | null = null;
  if (kind === 'ours' && !(o.extraArgs ?? []).includes('--state-dir')) {
    ownStateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-fest-'));
    o = { ...o, extraArgs: [...(o.extraArgs ?? []), '--state-dir', ownStateDir] };
  }
  const logFd = fs.openSync(logPath, 'a');
  const plain = backendCommand(kind, o);
  // setpriv execs the command in place: the pid stays the backend's.
  const grouped = o.supplementaryGroups === undefined ? plain
    : { cmd: '/usr/bin/setpriv', args: [`--groups=${o.supplementaryGroups.join(',')}`, '--', plain.cmd, ...plain.args] };
  const { cmd, args } = o.withoutNodeOptions !== true ? grouped
    : { cmd: '/usr/bin/env', args: ['-u', 'NODE_OPTIONS', grouped.cmd, ...grouped.args] };
  let child: ChildProcess;
  try {
    child = spawn(cmd, args, {
      stdio: ['ignore', logFd, logFd],
      env: { ...process.env, ...o.env },
      detached: false,
    });
  } finally {
    fs.closeSync(logFd);
  }
  let exited = false;
  let exitCode: number | null = null;
  let exitSignal: NodeJS.Signals | null = null;
  const exitWaiters: Array<() => void> = [];
  const spawnError = await new Promise<Error | null>((resolve) => {
    child.once('spawn', () => resolve(null));
    child.once('error', (e) => resolve(e));
  });
  if (spawnError) throw spawnError;
  child.on('exit', (code, signal) => {
    exited = true;
    exitCode = code;
    exitSignal = signal;
    for (const w of exitWaiters.splice(0)) w();
  });
  const pid = child.pid!;
  const waitExit = (timeoutMs: number): Promise<boolean> => {
    if (exited) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const t = setTimeout(() => {
        const i = exitWaiters.indexOf(done);
        if (i >= 0) exitWaiters.splice(i, 1);
        resolve(false);
      }, timeoutMs);
      t.unref();
      const done = (): void => { clearTimeout(t); resolve(true); };
      exitWaiters.push(done);
    });
  };
  const backend: Backend = {
    kind, pid, socketPath: o.socketPath, logPath, child,
    get exited() { return exited; },
    get exitCode() { return exitCode; },
    get exitSignal() { return exitSignal; },
    waitExit,
    async stop(graceMs = 5_000) {
      // Children (ours: the worker) are the backend's to stop; remember them to make sure.
      const kids = exited ? [] : descendantsOf(pid);
      try {
        if (!exited) {
          try { process.kill(pid, 'SIGTERM'); } catch { /* already gone */ }
          if (!(await waitExit(graceMs))) {
            try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
            if (!(await waitExit(10_000))) throw new Error(`backend pid ${pid} did not exit after SIGKILL`);
          }
        }
        const deadline = Date.now() + graceMs;
        while (kids.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        for (const k of kids.filter(alive)) {
          try { process.kill(k, 'SIGKILL'); } catch { /* gone */ }
        }
      } finally {
        if (ownStateDir) fs.rmSync(ownStateDir, { recursive: true, force: true });
      }
    },
    log() {
      try { return fs.readFileSync(logPath, 'utf8'); } catch { return ''; }
    },
  };
  return backend;
}
