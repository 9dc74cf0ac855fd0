// A throwaway systemd machine for the real-systemd test: `systemd-nspawn --boot` with systemd
// as PID 1 of a new PID namespace, on a volatile view of this host's own OS (`--volatile=yes`:
// a tmpfs root with the host's /usr bound read-only, so /etc and /var start empty and
// everything written inside vanishes with the machine). The checkout and the test's temp dir
// are bound in; commands run inside through nsenter(1) on the machine's PID 1.
//
// nspawn refuses `--directory=/` with --volatile=overlay ("Spawning container on root directory
// is not supported") and --ephemeral would copy the whole root on ext4; --volatile=yes works.
//
// When this host's PID 1 is not systemd (no /run/systemd/system), there is no bus for nspawn to
// create a scope unit with, so it runs with --keep-unit --register=no; it then makes
// "supervisor" and "payload" cgroups next to itself, so we start it in a cgroup of its own
// (in every hierarchy) and remove that subtree when the machine is gone.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { waitFor } from '../../frontend/helpers';

export const NSPAWN = '/usr/bin/systemd-nspawn';
export const NSENTER = '/usr/bin/nsenter';

/** Why this machine cannot run the test, or null when it can. */
export function nspawnUnavailable(): string | null {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'needs root (systemd-nspawn)';
  if (!fs.existsSync(NSPAWN)) return `${NSPAWN} is missing (apt-get install systemd-container; scripts/ensure-deps.sh does)`;
  if (!fs.existsSync(NSENTER)) return `${NSENTER} is missing (util-linux)`;
  if (!fs.existsSync('/usr/lib/systemd/systemd')) return 'systemd is not installed';
  return null;
}

export interface ExecResult { code: number | null; signal: string | null; stdout: string; stderr: string }

export interface MachineOptions {
  /** Machine name (also the hostname); unique per test. */
  name: string;
  /** The test's temp dir: nspawn's log goes here. */
  dir: string;
  /** [hostPath, machinePath] read-write binds. */
  binds: Array<[string, string]>;
  /** Read-only binds (same path inside). */
  bindsRo: string[];
  /** Whole-boot limit for `systemctl is-system-running` (default 60 s). */
  bootTimeoutMs?: number;
}

const EXEC_ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', SYSTEMD_PAGER: '', SYSTEMD_COLORS: '0' };

/** Every machine still running when this process exits gets SIGKILLed (last resort). */
const live = new Set<Machine>();
process.on('exit', () => { for (const m of live) m.killNow(); });

export class Machine {
  proc: ChildProcess | null = null;
  /** Host pid of the machine's PID 1 (systemd). */
  leader = 0;
  readonly logPath: string;
  private cgroups: string[] = [];
  private exited: Promise<void> = Promise.resolve();

  constructor(readonly o: MachineOptions) {
    this.logPath = path.join(o.dir, `${o.name}.nspawn.log`);
  }

  get running(): boolean {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Starts the machine and waits until its systemd reports running (or degraded). */
  async boot(): Promise<string> {
    const systemdHost = fs.existsSync('/run/systemd/system');
    const args = [
      `--directory=/`, '--volatile=yes', `--machine=${this.o.name}`, '--register=no',
      '--console=passive', '--kill-signal=SIGRTMIN+3',
      ...this.o.binds.map(([h, m]) => `--bind=${h}:${m}`),
      ...this.o.bindsRo.map((p) => `--bind-ro=${p}`),
      '--boot',
      // An empty /etc is a first boot; the interactive wizard would only fail.
      'systemd.firstboot=off',
    ];
    let cmd = NSPAWN;
    let cmdArgs = args;
    if (!systemdHost) {
      cmdArgs = ['--keep-unit', ...args];
      this.cgroups = this.makeCgroups();
      // Enter our own cgroups first, then become nspawn (the cgroup paths are plain words).
      cmd = '/bin/sh';
      cmdArgs = ['-c', `for g in ${this.cgroups.join(' ')}; do echo $$ > "$g/cgroup.procs" || exit 125; done; exec "$0" "$@"`, NSPAWN, ...cmdArgs];
    }
    const log = fs.openSync(this.logPath, 'a');
    try {
      this.proc = spawn(cmd, cmdArgs, { stdio: ['ignore', log, log], env: { ...EXEC_ENV } });
    } finally {
      fs.closeSync(log);
    }
    live.add(this);
    const proc = this.proc;
    this.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
    const nspawnPid = proc.pid!;
    // PID 1 of the machine is nspawn's child once it has exec'd systemd.
    this.leader = await waitFor(() => {
      if (!this.running) throw new Error(`systemd-nspawn exited (${proc.exitCode ?? proc.signalCode}): ${this.log()}`);
      for (const pid of childrenOf(nspawnPid)) {
        try { if (fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'systemd') return pid; } catch { /* gone */ }
      }
      return 0;
    }, 'the machine\'s PID 1 (systemd)', 20_000, 20);
    let state = '';
    await waitFor(async () => {
      if (!this.running) throw new Error(`systemd-nspawn exited (${proc.exitCode ?? proc.signalCode}): ${this.log()}`);
      state = (await this.exec(['systemctl', 'is-system-running'])).stdout.trim();
      return state === 'running' || state === 'degraded';
    }, `systemd in ${this.o.name} to finish booting (last state "${state}")`, this.o.bootTimeoutMs ?? 60_000, 50);
    return state;
  }

  /** Runs argv inside the machine (all its namespaces, its root, a clean environment). */
  exec(argv: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<ExecResult> {
    if (this.leader === 0) throw new Error('machine not booted');
    const full = ['-t', String(this.leader), '-m', '-u', '-i', '-n', '-p', '-C', '-r', '-w', '/usr/bin/env', '-i',
      ...Object.entries(EXEC_ENV).map(([k, v]) => `${k}=${v}`), ...argv];
    return new Promise((resolve) => {
      const child = execFile(NSENTER, full, { timeout: opts.timeoutMs ?? 60_000, killSignal: 'SIGKILL', maxBuffer: 64 << 20, encoding: 'utf8' },
        (err, stdout, stderr) => {
          const e = err as (NodeJS.ErrnoException & { code?: number | string; signal?: string }) | null;
          resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, signal: e?.signal ?? null, stdout, stderr });
        });
      if (opts.input !== undefined) child.stdin!.end(opts.input);
      else child.stdin!.end();
    });
  }

  /** exec() that throws with the command's output when it does not exit 0. */
  async run(argv: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<string> {
    const r = await this.exec(argv, opts);
    if (r.code !== 0) throw new Error(`in ${this.o.name}: ${argv.join(' ')} exited ${r.code ?? r.signal}\n${r.stdout}${r.stderr}`);
    return r.stdout;
  }

  /** Writes a file inside the machine (its /etc is a tmpfs we cannot see from here). */
  async writeFile(p: string, text: string): Promise<void> {
    await this.run(['sh', '-c', 'mkdir -p "$(dirname "$1")" && cat > "$1"', 'sh', p], { input: text });
  }

  /** `systemctl show` properties of a unit. */
  async show(unit: string, props: string[]): Promise<Record<string, string>> {
    const out = await this.run(['systemctl', 'show', unit, ...props.map((p) => `--property=${p}`)]);
    const r: Record<string, string> = {};
    for (const line of out.split('\n')) {
      const i = line.indexOf('=');
      if (i > 0) r[line.slice(0, i)] = line.slice(i + 1);
    }
    return r;
  }

  /** The journal of some units (message text only), for failure messages. */
  async journal(units: string[], lines = 200): Promise<string> {
    const r = await this.exec(['journalctl', '--no-pager', '-o', 'short-precise', '-n', String(lines), ...units.flatMap((u) => ['-u', u])]);
    return r.stdout + r.stderr;
  }

  /** The host pid of the machine's process `pid` (as systemctl shows it), or null if it is gone:
   * the descendant of the machine's PID 1 whose NSpid at the machine's level (the second) is
   * `pid` (other machines may run beside this one). */
  hostPid(pid: number): number | null {
    const status = (p: number | string): string[] | null => {
      try { return fs.readFileSync(`/proc/${p}/status`, 'utf8').split('\n'); } catch { return null; }
    };
    const field = (lines: string[], k: string): string[] => lines.find((l) => l.startsWith(`${k}:`))?.split(/\s+/).slice(1) ?? [];
    for (const e of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(e)) continue;
      const lines = status(e);
      if (lines === null || Number(field(lines, 'NSpid')[1]) !== pid) continue;
      for (let p = Number(field(lines, 'PPid')[0]), hops = 0; p > 1 && hops < 64; hops++) {
        if (p === this.leader) return Number(e);
        const up = status(p);
        if (up === null) break;
        p = Number(field(up, 'PPid')[0]);
      }
    }
    return null;
  }

  log(): string {
    try { return fs.readFileSync(this.logPath, 'utf8').slice(-4000); } catch { return ''; }
  }

  /** Halts the machine (systemd shuts down), SIGKILLs it after graceMs, removes our cgroups. */
  async stop(graceMs = 15_000): Promise<void> {
    if (this.running) {
      this.proc!.kill('SIGTERM'); // nspawn asks PID 1 to power off (--kill-signal)
      const timer = setTimeout(() => this.killNow(), graceMs);
      await this.exited;
      clearTimeout(timer);
    }
    this.killNow();
    live.delete(this);
    // nspawn refuses to rm -rf its propagation dir when /run is not a tmpfs.
    fs.rmSync(`/run/systemd/nspawn/propagate/${this.o.name}`, { recursive: true, force: true });
    // Every process of the machine is gone once its PID 1 is (the PID namespace dies with it).
    await waitFor(() => this.removeCgroups(), `the machine's cgroups (${this.cgroups.join(', ')}) to empty`, 10_000, 50);
  }

  /** SIGKILL the machine's PID 1 (which takes its PID namespace with it) and nspawn. */
  killNow(): void {
    if (this.leader > 0) { try { process.kill(this.leader, 'SIGKILL'); } catch { /* gone */ } }
    if (this.running) { try { this.proc!.kill('SIGKILL'); } catch { /* gone */ } }
  }

  private makeCgroups(): string[] {
    // nspawn only looks at the systemd hierarchies: cgroup2 (alone, or at unified/ in hybrid
    // mode) and the named v1 "systemd" one. (A new v1 cpuset group would have no CPUs.)
    const hierarchies: Array<[string, string]> = fs.existsSync('/sys/fs/cgroup/cgroup.procs')
      ? [['/sys/fs/cgroup', '']]
      : [['/sys/fs/cgroup/unified', ''], ['/sys/fs/cgroup/systemd', 'name=systemd']];
    const out: string[] = [];
    for (const [root, controllers] of hierarchies) {
      if (!fs.existsSync(path.join(root, 'cgroup.procs'))) continue;
      const mine = ownCgroup(controllers);
      if (mine === null) continue;
      const g = path.join(root, mine, `vfsk-${this.o.name}`);
      fs.mkdirSync(g, { recursive: true });
      out.push(g);
    }
    return out;
  }

  /** rmdir the cgroup trees we made, leaves first; true when all are gone. */
  private removeCgroups(): boolean {
    let ok = true;
    const rm = (dir: string): void => {
      let entries: fs.Dirent[];
      try { entries = fs.readdirSync(dir, { withFileTypes: true }); } catch { return; }
      for (const e of entries) if (e.isDirectory()) rm(path.join(dir, e.name));
      try { fs.rmdirSync(dir); } catch (e) { if ((e as NodeJS.ErrnoException).code !== 'ENOENT') ok = false; }
    };
    for (const g of this.cgroups) rm(g);
    return ok;
  }
}

/** This process's cgroup path in the hierarchy whose /proc/self/cgroup controller field is `controllers`. */
function ownCgroup(controllers: string): string | null {
  for (const l of fs.readFileSync('/proc/self/cgroup', 'utf8').trim().split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(l);
    if (m && m[1] === controllers) return m[2]!;
  }
  return null;
}

function childrenOf(ppid: number): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const st = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      // pid (comm) state ppid ...: comm may contain spaces and parentheses.
      const rest = st.slice(st.lastIndexOf(')') + 2).split(' ');
      if (Number(rest[1]) === ppid) out.push(Number(e));
    } catch { /* gone */ }
  }
  return out;
}
