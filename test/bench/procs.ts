// Process plumbing for the benchmark: one backend + test frontend per measured session, CPU and
// peak-RSS accounting from /proc, and a cleanup registry that kills everything the bench spawned
// (by pid) and removes its temp dirs, also on errors and on SIGINT/SIGTERM.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startBackend, descendantsOf, type Backend, type BackendKind } from '../frontend/backend';
import { VhostUserFrontend } from '../frontend/vhost_user';
import { FuseClient } from '../frontend/fuse_client';
import * as F from '../frontend/fuse_proto';

// --- cleanup registry ----------------------------------------------------------------------

const cleanups: Array<{ what: string; fn: () => unknown }> = [];

/** Registers a cleanup; returns a function that runs it now (once) and unregisters it. */
export function onCleanup(what: string, fn: () => unknown): () => Promise<void> {
  const entry = { what, fn };
  cleanups.push(entry);
  let done = false;
  return async () => {
    if (done) return;
    done = true;
    const i = cleanups.indexOf(entry);
    if (i >= 0) cleanups.splice(i, 1);
    await fn();
  };
}

/** Runs every registered cleanup, newest first; errors are reported, not thrown. */
export async function runAllCleanups(): Promise<void> {
  while (cleanups.length > 0) {
    const c = cleanups.pop()!;
    try {
      await c.fn();
    } catch (e) {
      process.stderr.write(`bench: cleanup "${c.what}" failed: ${(e as Error).message}\n`);
    }
  }
}

/** A temp dir removed at cleanup. */
export function tempDir(prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  onCleanup(`rm ${d}`, () => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

let signalsInstalled = false;
export function installSignalCleanup(): void {
  if (signalsInstalled) return;
  signalsInstalled = true;
  let stopping = false;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    // Keep handling (and ignoring) repeats: a terminal's Ctrl-C reaches this process twice (once
    // from the terminal, once forwarded by the snapshot parent), and a second default-action
    // SIGINT would kill it in the middle of its cleanup.
    process.on(sig, () => {
      if (stopping) return;
      stopping = true;
      process.stderr.write(`bench: ${sig}; stopping everything it started\n`);
      void runAllCleanups().finally(() => process.exit(128 + (os.constants.signals[sig] ?? 1)));
    });
  }
}

// --- /proc accounting ------------------------------------------------------------------------

/** What runs our backend CPU-profiled into `dir` (cpu_prof_preload.ts): the preload in
 * NODE_OPTIONS, and an unconfined worker, since a confined one cannot write its profile (its
 * root is the read-only share, and as PID 1 of its pid namespace SIGTERM ends it natively,
 * before any JS handler). The rates of such a run are not comparable. */
export function profiledBackend(dir: string): { env: Record<string, string>; extraArgs: string[] } {
  return {
    env: { VFSK_BENCH_PROF_DIR: dir, NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --require ${path.join(__dirname, 'cpu_prof_preload.js')}`.trim() },
    extraArgs: ['--sandbox', 'none', '--seccomp', 'none'],
  };
}

export const CLK_TCK = 100; // USER_HZ on Linux x86-64 (getconf CLK_TCK)

/** utime+stime of a whole process (all its threads, live and exited), or of one thread ("pid/task/tid"), in ms; null if gone. */
export function processCpuMs(pid: number | string): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields after the comm: state(3) ppid(4) ... utime(14) stime(15) → indices 11, 12 here
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
  } catch {
    return null;
  }
}

/** A /proc/<pid>/status field in kB (VmHWM, VmRSS), or null. */
export function statusKb(pid: number, field: string): number | null {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Busy (not idle or iowait) and total CPU ms of the machine, summed over its CPUs
 * (/proc/stat's first line). */
export function machineCpuMs(): { busy: number; total: number } {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = f.reduce((x, y) => x + y, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return { busy: ((total - idle) * 1000) / CLK_TCK, total: (total * 1000) / CLK_TCK };
}

/** CPU snapshot of a set of processes, to diff later. */
export class CpuMeter {
  private readonly start = new Map<number, number>();
  constructor(private readonly pids: () => number[]) {
    for (const p of pids()) this.start.set(p, processCpuMs(p) ?? 0);
  }
  /** CPU ms used since construction by the processes (new ones counted from zero). */
  elapsedMs(): number {
    let total = 0;
    for (const p of new Set([...this.pids(), ...this.start.keys()])) {
      const now = processCpuMs(p);
      if (now === null) continue; // exited: its time is lost (does not happen in steady runs)
      total += now - (this.start.get(p) ?? 0);
      // Which process the CPU went to (keeper, worker, standby), for finding where a row's goes.
      if (process.env.VFSK_BENCH_CPU_SPLIT === '1') {
        let cmd = '';
        try {
          cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').slice(0, 4).join(' ');
        } catch { /* gone */ }
        process.stderr.write(`cpu pid ${p} (${cmd}): ${now - (this.start.get(p) ?? 0)} ms\n`);
      }
    }
    return total;
  }
}

// --- build snapshot ---------------------------------------------------------------------------

/**
 * Copies what the backend and the bench need to run (bin, dist, the native addon, the guest tool
 * sources that key the guest image, package.json; node_modules as a symlink) into a temp dir, so
 * that a concurrent `tsc` in the shared checkout cannot swap code under a running benchmark (a
 * worker restarted mid-rebuild loads half-emitted JS).
 */
export function makeSnapshot(repoRoot: string, dest: string): void {
  fs.mkdirSync(dest, { recursive: true });
  fs.cpSync(path.join(repoRoot, 'bin'), path.join(dest, 'bin'), { recursive: true });
  fs.cpSync(path.join(repoRoot, 'dist'), path.join(dest, 'dist'), { recursive: true });
  fs.mkdirSync(path.join(dest, 'build', 'Release'), { recursive: true });
  fs.copyFileSync(path.join(repoRoot, 'build', 'Release', 'vfsk_native.node'), path.join(dest, 'build', 'Release', 'vfsk_native.node'));
  fs.copyFileSync(path.join(repoRoot, 'package.json'), path.join(dest, 'package.json'));
  fs.cpSync(path.join(repoRoot, 'test', 'e2e', 'guest-tools'), path.join(dest, 'test', 'e2e', 'guest-tools'), { recursive: true });
  // install-units renders these (the systemd recovery rows install them in a machine).
  fs.cpSync(path.join(repoRoot, 'systemd'), path.join(dest, 'systemd'), { recursive: true });
  fs.symlinkSync(path.join(repoRoot, 'node_modules'), path.join(dest, 'node_modules'));
}

// --- sessions -----------------------------------------------------------------------------------

/**
 * What is being measured: the two backends; for the journaling rows, ours in fresh sessions that
 * run only those workloads, with crash safety on (ours-journal) and off (ours-nojournal).
 */
export type Variant = 'ours' | 'c-virtiofsd' | 'ours-journal' | 'ours-nojournal' | 'ours-disk' | 'c-virtiofsd-disk';

export const NO_JOURNAL_ENV = 'VFSK_BENCH_NO_JOURNAL';

export interface BenchSession {
  variant: Variant;
  kind: BackendKind;
  backend: Backend;
  /** Ours: its --state-dir; null for the C virtiofsd. */
  stateDir: string | null;
  fe: VhostUserFrontend;
  fuse: FuseClient;
  /** The backend's process and its descendants (ours: keeper, worker, standby). */
  pids(): number[];
  close(): Promise<void>;
}

export interface SessionOpts {
  sharedDir: string;
  /** Logs go here. */
  logDir: string;
  env?: NodeJS.ProcessEnv;
  extraArgs?: string[];
  memoryMiB?: number;
  queueSize?: number;
}

export async function openBenchSession(variant: Variant, o: SessionOpts): Promise<BenchSession> {
  const kind: BackendKind = variant === 'c-virtiofsd' || variant === 'c-virtiofsd-disk' ? 'c-virtiofsd' : 'ours';
  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-bs-'));
  const socketPath = path.join(sockDir, 'vhost.sock');
  let stateDir: string | null = null;
  const extraArgs = [...(o.extraArgs ?? [])];
  if (kind === 'ours') {
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-bst-'));
    extraArgs.push('--state-dir', stateDir);
  }
  const env: NodeJS.ProcessEnv = { ...(o.env ?? {}) };
  if (variant === 'ours-nojournal') env[NO_JOURNAL_ENV] = '1';
  let backend: Backend | null = null;
  let fe: VhostUserFrontend | null = null;
  // Remember every pid of the tree while it is alive: stop() kills the leader and its children.
  const close = onCleanup(`stop ${variant}`, async () => {
    try { fe?.close(); } catch { /* already closed */ }
    try {
      if (backend) await backend.stop(5_000);
    } finally {
      fs.rmSync(sockDir, { recursive: true, force: true });
      if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
    }
  });
  try {
    fs.mkdirSync(o.logDir, { recursive: true });
    backend = await startBackend(kind, { sharedDir: o.sharedDir, socketPath, dir: o.logDir, extraArgs, env });
    const b = backend;
    fe = await VhostUserFrontend.connect(socketPath, { isAlive: () => !b.exited, timeoutMs: 20_000 });
    await fe.negotiate({ memoryMiB: o.memoryMiB ?? 128, queueSize: o.queueSize ?? 128 });
    const fuse = new FuseClient(fe, { timeoutMs: 60_000 });
    await fuse.init(F.LINUX_INIT_FLAGS);
    const f = fe;
    return {
      variant, kind, backend: b, stateDir, fe: f, fuse,
      pids: () => (b.exited ? [] : [b.pid, ...descendantsOf(b.pid)]),
      close,
    };
  } catch (e) {
    const log = backend?.log() ?? '';
    await close();
    throw new Error(`${variant}: session setup failed: ${(e as Error).message}${log ? `\n--- backend log (tail) ---\n${log.slice(-3000)}` : ''}`);
  }
}

/** RSS kinds from /proc/<pid>/status: private memory, file-backed pages (for ours mostly the node
 * binary, the same page-cache pages in every process), and shared memory (the guest memory the
 * frontend shares with the backend, and for ours the tmpfs state journal). */
export const RSS_KINDS = { anon: 'RssAnon', file: 'RssFile', shmem: 'RssShmem' } as const;

/** The role of each process of a session: ours keeper, worker, standby, or `launcher-<pid>` (the
 * unshare(1) that forks each worker into its pid namespace, also ours); the C virtiofsd. */
export function roleOf(s: BenchSession, p: number, workerPid: number | null, standbyPid: number | null): string {
  if (s.kind === 'c-virtiofsd') return p === s.backend.pid ? 'virtiofsd' : `child-${p}`;
  if (p === s.backend.pid) return 'keeper';
  if (p === workerPid) return 'worker';
  if (p === standbyPid) return 'standby';
  return `launcher-${p}`;
}

/** RssAnon of every process of the session in kB, by role. */
export function privateKb(s: BenchSession, workerPid: number | null, standbyPid: number | null): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of s.pids()) out[roleOf(s, p, workerPid, standbyPid)] = statusKb(p, 'RssAnon') ?? 0;
  return out;
}

/**
 * Private memory at steady state: RssAnon of every process once the backend has been idle long
 * enough for ours to give memory back (shared/memory.ts: a whole idle interval must pass after
 * the last activity, so at most two intervals; `minWaitMs` covers them) and the sum has then
 * stayed within 256 kB for a second. Polled; both backends wait the same.
 */
export async function steadyPrivateKb(s: BenchSession, workerPid: number | null, standbyPid: number | null, minWaitMs: number): Promise<Record<string, number>> {
  const start = Date.now();
  const sum = (r: Record<string, number>): number => Object.values(r).reduce((a, b) => a + b, 0);
  let last = privateKb(s, workerPid, standbyPid);
  let stableSince = Date.now();
  while (Date.now() - start < minWaitMs + 20_000) {
    await new Promise((r) => setTimeout(r, 250));
    const now = privateKb(s, workerPid, standbyPid);
    if (Math.abs(sum(now) - sum(last)) > 256) stableSince = Date.now();
    last = now;
    if (Date.now() - start >= minWaitMs && Date.now() - stableSince >= 1_000) break;
  }
  return last;
}

/**
 * Peak RSS (VmHWM) of each process of the session, in kB, keyed by role; `parts` also holds the
 * current RSS of each process by kind, keyed `<role>:<kind>` (VmHWM has no split by kind).
 */
export function peakRss(s: BenchSession, workerPid: number | null, standbyPid: number | null): { totalKb: number; parts: Record<string, number> } {
  const parts: Record<string, number> = {};
  let totalKb = 0;
  for (const p of s.pids()) {
    const role = roleOf(s, p, workerPid, standbyPid);
    const hwm = statusKb(p, 'VmHWM') ?? 0;
    parts[role] = hwm;
    totalKb += hwm;
    for (const [kind, field] of Object.entries(RSS_KINDS)) parts[`${role}:${kind}`] = statusKb(p, field) ?? 0;
  }
  return { totalKb, parts };
}
