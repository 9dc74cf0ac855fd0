// The keeper's worker supervisor: starts the worker (embedded mode) and, when it dies, its
// successor (a warm standby if one is ready, else a fresh process), with crash-loop backoff and
// priority games that shorten a takeover; it also times recoveries. Under systemd
// (workerCommand null) systemd starts workers, and this tracks them through keeper.sock: every
// worker a unit starts stands by first (X_STANDBY); the first gets the session at once when none
// serves, the others wait, and when the serving worker's connection closes (it is dead: the
// kernel closes it only once every thread of it has exited) the first waiting one takes over.
// Two worker units (virtiofs-worker@ and virtiofs-standby@) keep one waiting at all times.
//
// Crash-loop rules: a worker killed while serving is replaced at once. Deaths before READY count
// towards CRASH_LOOP_DEATHS in CRASH_WINDOW_MS; deaths after READY count as fruitless when the
// worker served nothing and lived less than STABLE_MS. Any progress resets the count.
import * as os from 'node:os';
import { spawn, type ChildProcess } from 'node:child_process';
import type { Logger } from '../shared/log';
import { native } from '../shared/native';
import { errorInfo } from '../shared/errors';
import { LogRateLimiter } from '../shared/rate_limit';
import { EXIT_HANDED_OVER, EXIT_STATE_UNUSABLE } from '../shared/config';
import { RECOVERY_BUCKETS_MS, type BackoffStatus, type ExitInfo, type KeeperStatus, type UpgradeResult, type UpgradeStatus, type WorkerInfo } from '../shared/keeper_protocol';
import { DEFAULT_UPGRADE_TIMEOUT_MS, UpgradeLog, incompatibility, type Upgrade } from './upgrade';
import { AdoptedProcess, type WorkerProcess } from './adopted_process';
import type { SupervisorHandoff } from './reexec';
import { canLowerNiceness, setProcessNiceness } from './niceness';
import type { KeeperPeer } from './keeper_socket';

/** The worker as the keeper sees it: one of these, never a mix of loose flags. */
export type WorkerPhase =
  /** A worker process is alive: started, serving (READY seen: readyAt), or shutting down. */
  | { state: 'starting' | 'running' | 'stopping'; pid: number | null; startedAt: string | null; readyAt: number | null; progress: boolean }
  /** No worker: one is due (restarting), or none will come (failed: state unusable; exited: the
   * service is over; stopped: the keeper stopped). */
  | { state: 'restarting' | 'failed' | 'exited' | 'stopped'; pid: null };

export interface SupervisorOptions {
  /** argv to start a worker (embedded mode); null when systemd starts workers. */
  workerCommand: string[] | null;
  /** argv to start a warm standby worker for fast handovers; null: none. */
  standbyCommand: string[] | null;
  /** Environment added for workers (e.g. VFSK_OWN_MOUNT_NS=1 when the command gives them their
   * own mount namespace). */
  workerEnv?: Record<string, string>;
  /** The command's process is a launcher that forks the worker into a pid namespace of its own
   * (unshare --pid --fork) and waits for it: the process we spawn is not the worker. Its real
   * pid (status, signals, priority) comes with its first keeper.sock message (see hostPidOf). */
  launcherForks?: boolean;
}

/** What the supervisor needs from the rest of the keeper. */
export interface SupervisorHost {
  /** Serve `fd`, the keeper's end of the keeper.sock connection made for the worker `pid` at
   * its spawn: the one connection that process is trusted on (see keeper_socket.ts).
   * `learnPid` (launchers that fork): to be called with the kernel's pid of the sender of its
   * first message. */
  adoptWorker(fd: number, pid: number, learnPid: ((pid: number) => void) | null): void;
  /** Take every message the worker `pid` left queued (before a successor fetches the fd set). */
  drainWorker(pid: number): void;
  /** Whether the standby's keeper.sock connection is still open. */
  isConnected(peer: KeeperPeer): boolean;
  /** Tell the standby to take over; false if that failed. */
  handOver(peer: KeeperPeer): boolean;
  /** Tell the serving worker `pid` to drain (X_DRAIN, a planned upgrade); false if that failed. */
  drain(pid: number): boolean;
  /** Close a waiting standby's connection: it exits (code 0) without a takeover. */
  release(peer: KeeperPeer): void;
  /** The worker cannot use the state: no more restarts (the keeper keeps every fd). */
  gaveUp(): void;
  /** The service is over (a worker exited cleanly). */
  serviceOver(reason: string): void;
}

/** The fd number of the keeper.sock connection in a spawned worker (stdio 0-2, then this). */
const KEEPER_FD_IN_CHILD = 3;
const CRASH_WINDOW_MS = 10_000;
const CRASH_LOOP_DEATHS = 5;
const MAX_BACKOFF_MS = 5_000;
/** See the header: deaths after READY within this time of it, without progress, are fruitless.
 * The first is replaced at once (a kill that landed just before the first request), then
 * FRUITLESS_BASE_MS doubling up to MAX_BACKOFF_MS. */
const STABLE_MS = 3_000;
const FRUITLESS_BASE_MS = 100;
/** Without a way to restore a standby's priority, it starts this long after the active worker
 * reports READY (or serves its first request after a takeover), so they do not compete for the
 * CPU. */
const STANDBY_DELAY_MS = 300;
/** Niceness added to a standby while it starts and waits, when the keeper can give it back at
 * takeover: then it starts as soon as the successor serves, without slowing it down. */
const STANDBY_NICE = 10;
/** A successor runs this much above the keeper's priority until it has served its first request
 * (or for RECOVERY_BOOST_MS at most): the guest is stalled meanwhile, and on a busy host the
 * takeover otherwise waits for the CPU behind everything else. Needs the same privilege. */
const RECOVERY_BOOST = 5;
const RECOVERY_BOOST_MS = 2_000;
/** How long a worker killed by SIGTERM waits for its successor (see onExit). */
const SIGTERM_GRACE_MS = 200;
/** Recovery samples reported in status (for benchmarks and dashboards). */
const RECENT_RECOVERIES = 200;

export class WorkerSupervisor {
  private phase: WorkerPhase = { state: 'starting', pid: null, startedAt: null, readyAt: null, progress: false };
  private child: WorkerProcess | null = null;
  /** nice: the niceness given to it (null: none). */
  private standby: { child: WorkerProcess; peer: KeeperPeer | null; spawnedAt: bigint; nice: number | null; info: WorkerInfo | null } | null = null;
  private standbyTimer: NodeJS.Timeout | null = null;
  /** The successor running with RECOVERY_BOOST (at niceness `nice`), and when its boost ends at
   * the latest. */
  private boosted: { pid: number; nice: number; timer: NodeJS.Timeout } | null = null;
  /** launcherForks: the spawned launcher's pid → its worker's real pid, once known. Every pid
   * in here and in `phase` is the launcher's (the keeper.sock peer's identity); what leaves the
   * supervisor (status, signals, priorities) is the worker's. */
  private readonly hostPids = new Map<number, number>();
  private restarts = 0;
  private lastExit: ExitInfo | null = null;
  private deaths: number[] = [];
  /** Workers in a row that died after READY without progress (see STABLE_MS). */
  private fruitlessDeaths = 0;
  private backoff: { delayMs: number; restartAt: string } | null = null;
  private restartTimer: NodeJS.Timeout | null = null;
  /** When the last worker died, until its successor serves (a recovery being timed). */
  private deathAt: bigint | null = null;
  private readonly recoveryMs: number[] = [];
  private stopping = false;
  /** Whether a standby's niceness can be restored at takeover (CAP_SYS_NICE or RLIMIT_NICE). */
  private readonly canRenice = canLowerNiceness();
  private readonly spawnErrors = new LogRateLimiter();
  /** Under systemd: the serving worker's connection (its EOF is its death). */
  private unitActive: KeeperPeer | null = null;
  /** Under systemd: workers waiting for the session (X_STANDBY), first come first served. */
  private unitStandbys: KeeperPeer[] = [];
  /** Who the serving worker is (its READY), and the planned upgrade in progress, if any. */
  private activeInfo: WorkerInfo | null = null;
  private upgrade: Upgrade | null = null;
  private readonly upgrades = new UpgradeLog();
  /** A keeper re-exec is under way (keeper/reexec.ts): no standby may start (the only child the
   * new image adopts is the serving worker). */
  private reexecPending = false;

  constructor(private readonly opts: SupervisorOptions, private readonly host: SupervisorHost, private readonly log: Logger) {}

  get embedded(): boolean {
    return this.opts.workerCommand !== null;
  }

  get workerPid(): number | null {
    return this.hostPidOf(this.phase.pid);
  }

  /** The real pid of the worker spawned as `pid` (itself unless the launcher forks; null while
   * its launcher has not reported it yet). */
  hostPidOf(pid: number | null | undefined): number | null {
    if (pid === null || pid === undefined) return null;
    return this.opts.launcherForks === true ? this.hostPids.get(pid) ?? null : pid;
  }

  /** The worker of launcher `launcherPid` is `pid` (its first keeper.sock message said so through
   * the kernel): priorities given to the launcher before it forked are given to it too. */
  private learnHostPid(launcherPid: number, pid: number): void {
    this.hostPids.set(launcherPid, pid);
    this.log.debug({ launcherPid, workerPid: pid }, 'worker pid known');
    if (this.standby?.child.pid === launcherPid && this.standby.nice !== null) setProcessNiceness(pid, this.standby.nice);
    if (this.boosted?.pid === launcherPid) setProcessNiceness(pid, this.boosted.nice);
  }

  /** Signals the worker spawned as `child`: the real worker when the launcher forks (unshare(1)
   * blocks SIGTERM while it waits; a SIGKILL to it would leave its worker to die later, after
   * the keeper reaped the launcher), else the process itself. */
  private signal(child: WorkerProcess, sig: NodeJS.Signals): void {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const forks = this.opts.launcherForks === true;
    const pid = forks ? this.hostPidOf(child.pid) : null;
    if (pid === null) {
      // Not known yet (it has sent nothing): the launcher, whose death (--kill-child) kills it.
      // Without a launcher the child is the worker itself and gets the signal asked for.
      child.kill(forks && sig === 'SIGTERM' ? 'SIGKILL' : sig);
      return;
    }
    try {
      process.kill(pid, sig);
    } catch {
      // Gone already: its launcher's exit follows.
    }
  }

  get restartCount(): number {
    return this.restarts;
  }

  get standbyPid(): number | null {
    if (!this.embedded) return this.unitStandbys[0]?.pid ?? null;
    return this.hostPidOf(this.standby?.child.pid);
  }

  start(): void {
    if (this.embedded) this.spawnWorker();
  }

  // --- what the worker reports over keeper.sock

  /** READY from `peer`: the active worker serves (under systemd, whoever says READY is it). */
  onReady(peer: KeeperPeer, info: WorkerInfo | null = null): boolean {
    const p = this.phase;
    if (this.embedded) {
      // A pid is known only while a worker process is alive.
      if (p.pid === null || peer.pid !== p.pid) return false;
      this.phase = { ...p, state: 'running', readyAt: p.readyAt ?? Date.now() };
    } else {
      this.phase = p.pid !== null && p.pid === peer.pid
        ? { ...p, state: 'running', readyAt: p.readyAt ?? Date.now() }
        : { state: 'running', pid: peer.pid, startedAt: new Date().toISOString(), readyAt: Date.now(), progress: false };
      // A worker that serves without standing by first (an older one) is the serving one too.
      this.unitActive = peer;
      this.unitStandbys = this.unitStandbys.filter((s) => s !== peer);
    }
    this.activeInfo = info;
    this.scheduleStandby();
    return true;
  }

  onStopping(peer: KeeperPeer): void {
    const p = this.phase;
    if (p.pid !== null && p.pid === peer.pid) this.phase = { ...p, state: 'stopping' };
  }

  /** X_PROGRESS or X_SERVED from `peer`. */
  onProgress(peer: KeeperPeer): void {
    const p = this.phase;
    if (p.pid === null || p.pid !== peer.pid) return;
    this.phase = { ...p, progress: true };
    this.fruitlessDeaths = 0;
  }

  /** X_SERVED: a worker completed its first request. */
  onServed(peer: KeeperPeer): void {
    this.onProgress(peer);
    const u = this.upgrade;
    if (u !== null && u.phase === 'handover' && peer.pid === this.phase.pid && this.activeInfo === null) {
      // A worker from before the upgrade protocol says no X_RESUMED: its first completed
      // request ends the pause (longer by the time the guest took to send one).
      u.notes.push('the new worker does not report its resume (an older build): pause measured to its first completed request');
      u.newPid = peer.pid;
      this.finishUpgrade('ok', null, process.hrtime.bigint());
    }
    if (this.deathAt !== null) {
      // The first request a successor completed: the end of a recovery.
      const deathAt = this.deathAt;
      const ms = Number(process.hrtime.bigint() - deathAt) / 1e6;
      this.deathAt = null;
      this.recoveryMs.push(ms);
      this.log.info({ recoveryMs: Math.round(ms * 10) / 10, exitSeenNs: deathAt.toString() }, 'worker recovered');
    }
    // The successor has done the urgent part of its takeover: back to the normal priority, and
    // its replacement may start now (after the recovery is timed: spawning takes a few ms).
    if (peer.pid === this.phase.pid && this.canRenice) {
      if (this.boosted?.pid === peer.pid) this.unboost();
      this.spawnStandby();
    }
  }

  /** X_STANDBY: our standby is loaded and waits for the takeover. */
  onStandby(peer: KeeperPeer, info: WorkerInfo | null = null): void {
    if (!this.embedded) {
      this.onUnitStandby(peer, info);
      return;
    }
    const sb = this.standby;
    if (sb === null || sb.child.pid !== peer.pid) return;
    sb.peer = peer;
    sb.info = info;
    if (this.upgrade?.phase === 'standby' && this.upgrade.newPid === peer.pid) this.upgradeStandbyReady();
    this.log.debug({ standbyPid: peer.pid, startMs: Math.round(Number(process.hrtime.bigint() - sb.spawnedAt) / 1e5) / 10 }, 'standby worker ready');
  }

  /** Under systemd: a worker unit's process waits for the session. It gets it now if no worker
   * serves (the service's first start, a restart after the keeper's, or every standby died). */
  private onUnitStandby(peer: KeeperPeer, info: WorkerInfo | null): void {
    if (this.stopping || this.unitStandbys.includes(peer)) return;
    if (this.unitActive === null && this.handOverTo(peer)) {
      this.log.info({ workerPid: peer.pid, restarts: this.restarts }, 'worker given the session');
      return;
    }
    this.unitStandbys.push(peer);
    this.log.info({ standbyPid: peer.pid }, 'standby worker waiting');
    const u = this.upgrade;
    if (u !== null && u.phase === 'standby' && peer.connectedNs > u.startedNs) {
      // The first worker started after the upgrade began (from the installed files): check
      // that it reads the session's state, then drain the serving one; this standby, first in
      // the queue, takes over.
      u.newPid = peer.pid;
      u.newHostPid = peer.pid;
      u.newInfo = info;
      this.unitStandbys.splice(this.unitStandbys.indexOf(peer), 1);
      this.unitStandbys.unshift(peer);
      const why = incompatibility(this.activeInfo, info);
      if (why !== null) {
        this.finishUpgrade('refused', `${why} (the old worker keeps serving; a crash now would meet the same refusal)`);
        return;
      }
      this.upgradeDrainOrKill(u);
    }
  }

  /** Sends X_TAKEOVER to `peer` and makes it the serving worker; false if the send failed. */
  private handOverTo(peer: KeeperPeer): boolean {
    if (!this.host.isConnected(peer) || !this.host.handOver(peer)) return false;
    this.unitActive = peer;
    this.phase = { state: 'starting', pid: peer.pid, startedAt: new Date().toISOString(), readyAt: null, progress: false };
    return true;
  }

  /** Under systemd: a worker's keeper.sock connection closed. The serving worker's closing is
   * its death (every message it sent before was handled: one connection, read in order): the
   * first waiting standby takes over at once, else the next worker systemd starts does. */
  onPeerClosed(peer: KeeperPeer): void {
    if (this.embedded || this.stopping) return;
    const i = this.unitStandbys.indexOf(peer);
    if (i >= 0) {
      this.unitStandbys.splice(i, 1);
      this.log.warn({ standbyPid: peer.pid }, 'standby worker gone');
      return;
    }
    if (peer !== this.unitActive) return;
    this.unitActive = null;
    const u = this.upgrade;
    if (u !== null && u.phase === 'standby' && u.oldPid === peer.pid) {
      this.finishUpgrade('failed', 'the serving worker died while the new one started; its successor resumes as after a crash');
    }
    if (u !== null && u.phase === 'draining' && u.oldPid === peer.pid) {
      // A planned handover (upgrade.ts), not a death: a waiting standby unit takes over, else
      // the worker unit's restart (Restart=always) brings the next worker.
      u.phase = 'handover';
      this.phase = { state: 'restarting', pid: null };
      this.log.info({ workerPid: peer.pid }, 'worker handed over for an upgrade');
      for (let next = this.unitStandbys.shift(); next !== undefined; next = this.unitStandbys.shift()) {
        if (this.handOverTo(next)) return;
      }
      return;
    }
    this.deathAt = process.hrtime.bigint();
    this.restarts++;
    this.lastExit = { code: null, signal: null, at: new Date().toISOString() };
    this.phase = { state: 'restarting', pid: null };
    this.log.warn({ workerPid: peer.pid }, 'worker connection closed: the worker died');
    for (let next = this.unitStandbys.shift(); next !== undefined; next = this.unitStandbys.shift()) {
      if (this.handOverTo(next)) {
        this.log.info({ workerPid: next.pid, restarts: this.restarts }, 'standby worker took over');
        return;
      }
    }
  }

  // --- processes (embedded mode)

  /** Starts a worker process; null if it could not be started (EMFILE, EAGAIN, ENOMEM...: the
   * caller retries with the crash-loop backoff, so a shortage delays the service, never ends it).
   * Its keeper.sock connection is made here: one end of a socketpair becomes its fd
   * KEEPER_FD_IN_CHILD, the other is adopted as a trusted worker peer. Nobody else can hold that
   * connection, so no pid check (and no pid reuse) is involved. */
  private spawnProcess(standby: boolean): ChildProcess | null {
    const [cmd, ...args] = (standby ? this.opts.standbyCommand : this.opts.workerCommand)!;
    const env: NodeJS.ProcessEnv = {
      ...process.env, ...this.opts.workerEnv, VFSK_KEEPER_PID: String(process.pid), VFSK_KEEPER_FD: String(KEEPER_FD_IN_CHILD),
      ...(standby ? { VFSK_STANDBY: '1' } : {}),
    };
    // The keeper is the unit's main process: its workers must not talk to systemd.
    for (const k of ['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID', 'LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES']) delete env[k];
    let pair: [number, number];
    try {
      pair = native.socketpair('seqpacket');
    } catch (e) {
      this.spawnFailed(standby, e);
      return null;
    }
    const [ours, theirs] = pair;
    if (this.opts.launcherForks === true) {
      // Before the worker can send anything: its first message then surely names it.
      try {
        native.setPassCred(ours, true);
      } catch (e) {
        native.close(ours);
        native.close(theirs);
        this.spawnFailed(standby, e);
        return null;
      }
    }
    let child: ChildProcess;
    try {
      child = spawn(cmd!, args, { stdio: ['ignore', 'inherit', 'inherit', theirs], env });
    } catch (e) {
      native.close(ours);
      this.spawnFailed(standby, e);
      return null;
    } finally {
      // The child has its copy (or none: it was not started).
      native.close(theirs);
    }
    if (child.pid === undefined) {
      native.close(ours);
    } else {
      try {
        const launcherPid = child.pid;
        this.host.adoptWorker(ours, launcherPid, this.opts.launcherForks === true ? (pid) => this.learnHostPid(launcherPid, pid) : null);
      } catch (e) {
        // Unserved, it would wait for ever: it dies, and its exit is handled as any death.
        this.spawnFailed(standby, e);
        this.signal(child, 'SIGKILL');
      }
    }
    child.on('exit', (code, signal) => this.onExit(child, code, signal));
    // Node reports EMFILE, ENFILE, EAGAIN, EACCES, ENOENT as an 'error' with no pid and no 'exit'.
    child.on('error', (err) => {
      if (child.pid !== undefined) {
        this.log.error({ err: errorInfo(err), workerPid: child.pid }, 'worker process error');
        return;
      }
      this.spawnFailed(standby, err);
      this.onExit(child, null, null);
    });
    return child;
  }

  private spawnFailed(standby: boolean, e: unknown): void {
    const dropped = this.spawnErrors.admit();
    if (dropped !== null) this.log.error({ err: errorInfo(e), standby, dropped }, 'cannot start a worker process; retrying');
  }

  private becomeActive(child: WorkerProcess): void {
    this.child = child;
    this.phase = { state: 'starting', pid: child.pid ?? null, startedAt: new Date().toISOString(), readyAt: null, progress: false };
  }

  private spawnWorker(): void {
    if (this.stopping || !this.embedded) return;
    const child = this.spawnProcess(false);
    if (child === null) {
      // Nothing was started: account it as a death before READY (backoff), then retry.
      this.child = null;
      this.phase = { state: 'restarting', pid: null };
      this.lastExit = { code: null, signal: null, at: new Date().toISOString() };
      setImmediate(() => this.restartAfterDeath(process.hrtime.bigint(), true, false));
      return;
    }
    this.becomeActive(child);
    if (child.pid !== undefined) this.log.info({ workerPid: child.pid, restarts: this.restarts }, 'worker spawned');
  }

  /** A warm standby: loaded and connected, blocked until the keeper hands it the session. */
  private spawnStandby(): void {
    if (this.standbyTimer !== null) clearTimeout(this.standbyTimer);
    this.standbyTimer = null;
    if (this.stopping || this.reexecPending || !this.embedded || this.standby !== null || this.opts.standbyCommand === null) return;
    const child = this.spawnProcess(true);
    if (child === null) {
      this.scheduleStandby();
      return;
    }
    let nice: number | null = null;
    if (this.canRenice && child.pid !== undefined) {
      // A launcher's child inherits this if it forks after; learnHostPid gives it otherwise.
      const n = Math.min(19, os.getPriority() + STANDBY_NICE);
      if (setProcessNiceness(child.pid, n)) nice = n;
    }
    this.standby = { child, peer: null, spawnedAt: process.hrtime.bigint(), nice, info: null };
    this.log.debug({ standbyPid: child.pid, niced: nice !== null }, 'standby worker spawned');
  }

  /** Spawns the standby once the active worker serves, so they do not compete for the CPU: at
   * once when it can start at a lower priority, else after STANDBY_DELAY_MS. */
  private scheduleStandby(): void {
    if (this.reexecPending) return;
    if (this.standbyTimer !== null || this.standby !== null || this.opts.standbyCommand === null) return;
    this.standbyTimer = setTimeout(() => { this.standbyTimer = null; this.spawnStandby(); }, STANDBY_DELAY_MS);
  }

  /** Starts the successor: the ready standby if there is one (a handover, not a Node.js start),
   * else a fresh worker. Called only after the old worker was reaped, so the two never serve
   * the queues at once. */
  private startSuccessor(): void {
    const sb = this.standby;
    if (sb !== null && sb.peer !== null && this.host.isConnected(sb.peer)) {
      this.standby = null;
      this.becomeActive(sb.child);
      if (!this.boost(sb.child.pid!) && sb.nice !== null && !setProcessNiceness(this.hostPidOf(sb.child.pid) ?? sb.child.pid!, os.getPriority())) {
        this.log.warn({ workerPid: sb.child.pid }, 'cannot restore the standby\'s priority; it serves at a lower one');
      }
      if (this.host.handOver(sb.peer)) {
        this.log.info({ workerPid: sb.child.pid, restarts: this.restarts }, 'standby worker took over');
        return;
      }
      this.log.error('standby handover failed; starting a fresh worker');
      this.signal(sb.child, 'SIGKILL');
    }
    this.spawnWorker();
    if (this.child?.pid !== undefined) this.boost(this.child.pid);
  }

  /** Raises a successor's priority for its takeover (see RECOVERY_BOOST); false if it cannot. */
  private boost(pid: number): boolean {
    if (!this.canRenice) return false;
    this.unboost();
    const nice = Math.max(-20, os.getPriority() - RECOVERY_BOOST);
    // A fresh launcher's worker inherits it, or gets it in learnHostPid.
    if (!setProcessNiceness(this.hostPidOf(pid) ?? pid, nice)) return false;
    const timer = setTimeout(() => this.unboost(), RECOVERY_BOOST_MS);
    timer.unref();
    this.boosted = { pid, nice, timer };
    return true;
  }

  /** Gives the boosted successor the keeper's own priority back. */
  private unboost(): void {
    const b = this.boosted;
    if (b === null) return;
    this.boosted = null;
    clearTimeout(b.timer);
    // A worker that died meanwhile has no threads left to renice.
    if (!setProcessNiceness(this.hostPidOf(b.pid) ?? b.pid, os.getPriority())) this.log.warn({ workerPid: b.pid }, 'cannot restore the worker\'s priority after its takeover');
  }

  private onExit(child: WorkerProcess, code: number | null, exitSignal: NodeJS.Signals | null): void {
    const hostPid = this.hostPidOf(child.pid);
    if (child.pid !== undefined) this.hostPids.delete(child.pid);
    // A worker that is PID 1 of its pid namespace cannot die of a signal of its own: on SIGTERM it
    // exits 128+15 (worker.ts), and unshare(1) passes that on as its exit code.
    const signal = exitSignal ?? (this.opts.launcherForks === true && code === 128 + 15 ? 'SIGTERM' : null);
    if (this.standby !== null && child === this.standby.child) {
      this.standby = null;
      const u = this.upgrade;
      if (u !== null && u.phase === 'standby' && u.newPid === child.pid) {
        this.finishUpgrade('failed', `the new worker exited (${signal ?? `code ${code}`}) before it was ready; the old one keeps serving`);
      }
      if (!this.stopping && signal === 'SIGTERM') {
        // As for the active worker (below): maybe a stop of the whole process group.
        this.standbyTimer = setTimeout(() => { this.standbyTimer = null; this.spawnStandby(); }, SIGTERM_GRACE_MS);
      } else if (!this.stopping && !this.reexecPending) {
        this.log.warn({ code, signal }, 'standby worker died; replacing it');
        this.scheduleStandby();
      }
      return;
    }
    if (child !== this.child) return;
    const now = process.hrtime.bigint();
    this.child = null;
    this.lastExit = { code, signal, at: new Date().toISOString() };
    const dead = this.phase;
    const pid = dead.pid;
    if (this.boosted?.pid === pid) {
      // Dead: nothing to give back (and its pid may be reused).
      clearTimeout(this.boosted.timer);
      this.boosted = null;
    }
    const readyAt = dead.state === 'starting' || dead.state === 'running' || dead.state === 'stopping' ? dead.readyAt : null;
    const progress = dead.state === 'starting' || dead.state === 'running' || dead.state === 'stopping' ? dead.progress : false;
    const diedBeforeReady = readyAt === null;
    const fruitless = !diedBeforeReady && !progress && Date.now() - readyAt < STABLE_MS;
    this.phase = { state: 'restarting', pid: null };
    this.activeInfo = null;
    // Messages the dead worker queued before dying are still in its connection: take them all
    // before a successor can fetch the fd set.
    if (pid !== null) this.host.drainWorker(pid);
    if (!this.stopping && this.upgradeExit(pid, code, signal)) return;
    if (this.stopping) {
      // stop() is waiting for this exit and finishes the shutdown.
      this.phase = { state: 'stopped', pid: null };
      return;
    }
    if (code === EXIT_STATE_UNUSABLE) {
      // Restarting cannot help; keep every fd so an operator can decide (see `status`): install
      // a build that reads the state, then `virtiofs-keeper upgrade` (retryFailed).
      this.phase = { state: 'failed', pid: null };
      if (this.upgrade?.phase === 'handover') this.finishUpgrade('failed', 'the new worker cannot use the saved state either');
      this.host.gaveUp();
      return;
    }
    if (code === 0 && signal === null) {
      // A clean exit means the service is over (the frontend disconnected).
      this.log.info({ workerPid: hostPid ?? pid }, 'worker finished: service over');
      this.phase = { state: 'exited', pid: null };
      this.host.serviceOver('worker finished');
      return;
    }
    if (signal === 'SIGTERM') {
      // A SIGTERM to our process group (libvirt stopping a virtiofsd) reaches the keeper at the
      // same moment, and its handler may run after this exit: give it that moment, so that a
      // stop does not start (and at once kill) a successor.
      this.log.info({ workerPid: hostPid ?? pid }, 'worker terminated by SIGTERM; restarting it unless the keeper stops too');
      this.restartTimer = setTimeout(() => { this.restartTimer = null; this.restartAfterDeath(now, diedBeforeReady, fruitless); }, SIGTERM_GRACE_MS);
      return;
    }
    if (pid !== null) this.log.warn({ workerPid: hostPid ?? pid, code, signal }, 'worker died; restarting');
    this.restartAfterDeath(now, diedBeforeReady, fruitless);
  }

  /** Starts the successor of a worker that died (or never started) at `now`: at once, or after
   * the crash-loop backoff. */
  private restartAfterDeath(now: bigint, diedBeforeReady: boolean, fruitless: boolean): void {
    if (this.stopping) return;
    this.phase = { state: 'restarting', pid: null };
    this.restarts++;
    this.deathAt = now;
    const t = Date.now();
    this.deaths = this.deaths.filter((d) => t - d < CRASH_WINDOW_MS);
    if (diedBeforeReady) this.deaths.push(t);
    const excess = this.deaths.length - CRASH_LOOP_DEATHS;
    // A worker that keeps dying after READY (e.g. on a request it resubmits) is a crash loop too.
    if (fruitless) this.fruitlessDeaths++;
    else if (!diedBeforeReady) this.fruitlessDeaths = 0;
    const early = excess <= 0 ? 0 : Math.min(MAX_BACKOFF_MS, 100 * 2 ** Math.min(excess, 10));
    const late = this.fruitlessDeaths <= 1 ? 0 : Math.min(MAX_BACKOFF_MS, FRUITLESS_BASE_MS * 2 ** Math.min(this.fruitlessDeaths - 2, 10));
    const delay = Math.max(early, late);
    if (delay === 0) {
      this.startSuccessor();
    } else {
      this.log.error({ deaths: this.deaths.length, windowMs: CRASH_WINDOW_MS, fruitlessDeaths: this.fruitlessDeaths, delayMs: delay }, 'worker crash loop; backing off');
      this.backoff = { delayMs: delay, restartAt: new Date(Date.now() + delay).toISOString() };
      this.restartTimer = setTimeout(() => { this.restartTimer = null; this.backoff = null; this.startSuccessor(); }, delay);
    }
  }

  // --- a keeper re-exec (keeper/reexec.ts): the serving worker lives on as the new image's child

  /** Why the keeper cannot re-exec now; null: it can (once dropStandbyForReexec is done). */
  reexecBlocker(): string | null {
    if (!this.embedded) return 'the workers are systemd\'s (restart the keeper unit: systemd\'s fd store keeps the session)';
    if (this.stopping) return 'the keeper is stopping';
    if (this.upgrade !== null) return 'an upgrade is in progress';
    const p = this.phase;
    if (p.state !== 'running' || p.pid === null || this.child === null) return `no worker is serving (worker ${p.state})`;
    if (this.opts.launcherForks === true && this.hostPidOf(p.pid) === null) return 'the serving worker has not reported its pid yet';
    return null;
  }

  /** Ends the standby (it runs the files it started from; the new image starts its own) and
   * resolves once it is reaped, so that the serving worker is the one child left to adopt. No
   * standby starts until reexecAborted(). */
  async dropStandbyForReexec(): Promise<void> {
    this.reexecPending = true;
    if (this.standbyTimer !== null) clearTimeout(this.standbyTimer);
    this.standbyTimer = null;
    this.unboost();
    const sb = this.standby;
    if (sb === null || sb.child.exitCode !== null || sb.child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      sb.child.once('exit', () => resolve());
      this.signal(sb.child, 'SIGKILL');
    });
  }

  /** The re-exec did not happen: back to normal (a standby again). */
  reexecAborted(): void {
    this.reexecPending = false;
    this.scheduleStandby();
  }

  /** What the new image needs to go on supervising (call only when reexecBlocker() is null). */
  handoff(connFd: number): SupervisorHandoff {
    const p = this.phase as Extract<WorkerPhase, { state: 'starting' | 'running' | 'stopping' }>;
    return {
      worker: { pid: p.pid!, hostPid: this.hostPidOf(p.pid), startedAt: p.startedAt, readyAt: p.readyAt, progress: p.progress, info: this.activeInfo, connFd },
      restarts: this.restarts, lastExit: this.lastExit, recoveryMs: [...this.recoveryMs],
      deathAtNs: this.deathAt !== null ? this.deathAt.toString() : null, upgrades: this.upgrades.snapshot(),
    };
  }

  /** In the re-exec'd image, instead of start(): the serving worker of the image before is ours
   * again (its exit is seen through a pidfd), with the counters as they were. */
  adoptHandoff(h: SupervisorHandoff): void {
    const w = h.worker;
    const child = new AdoptedProcess(w.pid);
    child.on('exit', (code, signal) => this.onExit(child, code, signal));
    if (this.opts.launcherForks === true && w.hostPid !== null) this.hostPids.set(w.pid, w.hostPid);
    this.child = child;
    this.phase = { state: 'running', pid: w.pid, startedAt: w.startedAt, readyAt: w.readyAt ?? Date.now(), progress: w.progress };
    this.activeInfo = w.info;
    this.restarts = h.restarts;
    this.lastExit = h.lastExit;
    this.recoveryMs.push(...h.recoveryMs.slice(-RECENT_RECOVERIES));
    this.deathAt = h.deathAtNs !== null ? BigInt(h.deathAtNs) : null;
    this.upgrades.restore(h.upgrades);
    this.scheduleStandby();
  }

  /** A keeper re-exec that ended without a worker handover (refused or failed), in the log. */
  recordKeeperOnlyUpgrade(r: UpgradeResult): void {
    this.upgrades.finishWithoutWorker(r);
  }

  // --- planned upgrades (keeper/upgrade.ts has the bookkeeping and the compatibility check)

  /** X_UPGRADE: hand the session to a worker started from the installed files; `reply` gets
   * the outcome once (refused at once if there is nothing to upgrade). */
  startUpgrade(timeoutMs: number | null, reply: (r: UpgradeResult) => void): void {
    const p = this.phase;
    const u: Upgrade = {
      phase: 'standby', startedNs: process.hrtime.bigint(), timer: setTimeout(() => this.upgradeTimedOut(), timeoutMs ?? DEFAULT_UPGRADE_TIMEOUT_MS),
      reply, oldPid: p.pid ?? 0, oldHostPid: this.hostPidOf(p.pid), oldInfo: this.activeInfo, newPid: null, newHostPid: null, newInfo: null, mode: null, pausedNs: null, drainedNs: null, left: 0, notes: [],
    };
    const refuse = (why: string): void => { this.upgrades.finish(u, 'refused', why, null); };
    if (this.upgrade !== null) return refuse('an upgrade is already in progress');
    if (this.stopping) return refuse('the keeper is stopping');
    if (p.state === 'failed' && this.embedded) return this.retryFailed(u);
    if (p.state !== 'running' || p.pid === null) return refuse(`no worker is serving (worker ${p.state})`);
    this.upgrade = u;
    this.log.info({ workerPid: p.pid, version: this.activeInfo?.version ?? null }, 'planned upgrade: starting a worker from the installed files');
    if (!this.embedded && this.unitStandbys.length > 0) {
      // Under systemd (`systemctl reload`, or the upgrade command): the standbys waiting now run
      // the files as they were when they started. Released, they exit and their units restart
      // them (Restart=always) from the installed files; the first of those to wait is checked
      // and takes over from the drained worker (onUnitStandby).
      for (const p of this.unitStandbys.splice(0)) {
        this.log.info({ standbyPid: p.pid }, 'planned upgrade: releasing a standby started from the files as they were');
        this.host.release(p);
      }
      return;
    }
    if (!this.embedded || this.opts.standbyCommand === null) {
      // No standby to load and check beforehand: the successor starts once this one exits
      // (systemd's restart, or a fresh spawn), so the pause includes a Node.js start.
      this.upgradeDrainOrKill(u);
      return;
    }
    // The standby we have was started from the files as they were then: replace it.
    const old = this.standby;
    this.standby = null;
    if (this.standbyTimer !== null) clearTimeout(this.standbyTimer);
    this.standbyTimer = null;
    if (old !== null) old.child.kill('SIGKILL');
    this.spawnStandby();
    const sb = this.standby as { child: WorkerProcess } | null;
    if (sb === null || sb.child.pid === undefined) {
      this.finishUpgrade('failed', 'cannot start a new worker process');
      return;
    }
    u.newPid = sb.child.pid;
  }

  /**
   * The keeper gave up (a worker could not use the saved state: a build too old for it, see
   * "State schema compatibility") and holds every fd. Once a build that reads it is installed,
   * an upgrade starts a worker from the installed files, which resumes the session; the upgrade
   * is over when it serves (X_RESUMED), or failed if it cannot use the state either.
   */
  private retryFailed(u: Upgrade): void {
    this.upgrade = u;
    u.phase = 'handover';
    u.mode = 'kill';
    u.pausedNs = process.hrtime.bigint();
    u.notes.push('no worker was serving (the saved state was refused): a worker started from the installed files resumed it');
    this.log.info('planned upgrade of a keeper that gave up: starting a worker from the installed files');
    this.phase = { state: 'restarting', pid: null };
    // A standby started from the files as they were would meet the same refusal.
    const sb = this.standby;
    this.standby = null;
    if (sb !== null) this.signal(sb.child, 'SIGKILL');
    this.spawnWorker();
  }

  /** The new standby is loaded: check it can read the session's state, then drain the old. */
  private upgradeStandbyReady(): void {
    const u = this.upgrade!;
    const sb = this.standby!;
    u.newInfo = sb.info;
    const why = incompatibility(this.activeInfo, sb.info);
    if (why !== null) {
      this.finishUpgrade('refused', `${why} (the old worker keeps serving; a crash now would meet the same refusal)`);
      return;
    }
    if (this.phase.pid !== u.oldPid) {
      this.finishUpgrade('failed', 'the serving worker changed while the new one started');
      return;
    }
    this.upgradeDrainOrKill(u);
  }

  private upgradeDrainOrKill(u: Upgrade): void {
    u.phase = 'draining';
    if (this.activeInfo?.drain === true && this.host.drain(u.oldPid)) {
      u.mode = 'drain';
      return;
    }
    // A worker older than the drain protocol: killed, and its successor resumes as after a
    // crash (every request in flight is resubmitted exactly once).
    u.mode = 'kill';
    u.pausedNs = process.hrtime.bigint();
    u.notes.push(`the old worker (virtiofs-keeper ${u.oldInfo?.version ?? 'older'}) cannot drain: killed, its successor resumed as after a crash`);
    if (this.embedded) this.child?.kill('SIGKILL');
    else process.kill(u.oldPid, 'SIGKILL');
  }

  /** X_DRAINED from the old worker (read before its exit is handled: drainWorker). */
  onDrained(peer: KeeperPeer, pausedNs: bigint, left: number): void {
    const u = this.upgrade;
    if (u === null || u.phase !== 'draining' || peer.pid !== u.oldPid) return;
    u.pausedNs = pausedNs;
    u.drainedNs = process.hrtime.bigint();
    u.left = left;
  }

  /** X_RESUMED: the serving worker's queues run. Ends the upgrade's pause, whichever worker it
   * is (the standby, or a fresh one if that died during its takeover). */
  onResumed(peer: KeeperPeer, resumedNs: bigint): void {
    const u = this.upgrade;
    if (u === null || u.phase !== 'handover' || peer.pid !== this.phase.pid) return;
    u.newPid = peer.pid;
    u.newInfo = this.activeInfo ?? u.newInfo;
    this.finishUpgrade('ok', null, resumedNs);
  }

  /** The old worker's exit during an upgrade; true if it was the planned one (not a death). */
  private upgradeExit(pid: number | null, code: number | null, signal: NodeJS.Signals | null): boolean {
    const u = this.upgrade;
    if (u === null || pid === null) return false;
    if (u.phase === 'standby' && pid === u.oldPid) {
      this.finishUpgrade('failed', `the serving worker died (${signal ?? `code ${code}`}) while the new one started; its successor resumes as after a crash`);
      return false;
    }
    if (u.phase === 'handover') {
      u.notes.push(`the new worker died (${signal ?? `code ${code}`}) during its takeover; a successor resumed as after a crash`);
      return false;
    }
    if (u.phase !== 'draining' || pid !== u.oldPid) return false;
    u.phase = 'handover';
    // A drained worker exits with EXIT_HANDED_OVER, or kills itself to skip Node.js's teardown.
    const planned = (u.mode === 'drain' && u.drainedNs !== null && (code === EXIT_HANDED_OVER || signal === 'SIGKILL'))
      || (u.mode === 'kill' && signal === 'SIGKILL');
    if (!planned) {
      // A death during the drain: the standby (already the new build) takes over as after a crash.
      u.notes.push(`the old worker died (${signal ?? `code ${code}`}) during its drain; its successor resumed as after a crash`);
      if (u.pausedNs === null) u.pausedNs = process.hrtime.bigint();
      return false;
    }
    this.log.info({ workerPid: pid, mode: u.mode }, 'worker handed over for an upgrade');
    this.startSuccessor();
    return true;
  }

  private upgradeTimedOut(): void {
    const u = this.upgrade;
    if (u === null) return;
    if (u.phase === 'standby' && this.standby !== null && this.standby.child.pid === u.newPid) this.standby.child.kill('SIGKILL');
    this.finishUpgrade('failed', u.phase === 'standby' ? 'the new worker was not ready in time; the old one keeps serving' : `no worker resumed in time (${u.phase})`);
  }

  private finishUpgrade(result: UpgradeResult['result'], reason: string | null, resumedNs: bigint | null = null): void {
    const u = this.upgrade;
    if (u === null) return;
    this.upgrade = null;
    u.newHostPid ??= this.hostPidOf(u.newPid);
    const r = this.upgrades.finish(u, result, reason, resumedNs);
    const fields = { result: r.result, mode: r.mode, oldPid: r.oldPid, newPid: r.newPid, oldVersion: r.oldVersion, newVersion: r.newVersion, pauseMs: r.pauseMs, drainMs: r.drainMs, left: r.left, totalMs: r.totalMs, reason: r.reason };
    if (result === 'ok') this.log.info(fields, 'planned upgrade done');
    else this.log.warn(fields, `planned upgrade ${result}`);
  }

  upgradeStatus(): UpgradeStatus {
    return this.upgrades.status(this.upgrade !== null);
  }

  /** Ends every worker (SIGTERM, then SIGKILL after 5 s) and resolves when all have exited. */
  async stop(): Promise<void> {
    this.finishUpgrade('failed', 'the keeper is stopping');
    this.stopping = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    if (this.standbyTimer) clearTimeout(this.standbyTimer);
    if (this.boosted !== null) clearTimeout(this.boosted.timer);
    const children = [this.child, this.standby?.child ?? null].filter((c): c is WorkerProcess => c !== null);
    await Promise.all(children.map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      this.signal(child, 'SIGTERM');
      const killer = setTimeout(() => this.signal(child, 'SIGKILL'), 5000);
      await exited;
      clearTimeout(killer);
    }));
  }

  status(lastStatus: string | null): { worker: KeeperStatus['worker']; recovery: KeeperStatus['recovery'] } {
    const p = this.phase;
    const alive = p.state === 'starting' || p.state === 'running' || p.state === 'stopping';
    const backoff: BackoffStatus = { fruitlessDeaths: this.fruitlessDeaths, delayMs: this.backoff?.delayMs ?? 0, restartAt: this.backoff?.restartAt ?? null };
    const sorted = [...this.recoveryMs].sort((a, b) => a - b);
    const pick = (q: number): number | null => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : null);
    return {
      worker: {
        pid: this.hostPidOf(p.pid), state: p.state, restarts: this.restarts, lastExit: this.lastExit,
        startedAt: alive ? p.startedAt : null, status: lastStatus, ready: alive && p.readyAt !== null,
        standbyPid: this.standbyPid, standbyReady: this.embedded ? this.standby?.peer != null : this.unitStandbys.length > 0, backoff,
      },
      recovery: {
        count: sorted.length,
        lastMs: this.recoveryMs.length ? this.recoveryMs[this.recoveryMs.length - 1]! : null,
        p50Ms: pick(0.5), p99Ms: pick(0.99), maxMs: sorted.length ? sorted[sorted.length - 1]! : null,
        recentMs: this.recoveryMs.slice(-RECENT_RECOVERIES),
        histogram: {
          leMs: [...RECOVERY_BUCKETS_MS],
          counts: RECOVERY_BUCKETS_MS.map((le) => sorted.filter((ms) => ms <= le).length),
          sumMs: sorted.reduce((a, b) => a + b, 0),
        },
      },
    };
  }
}
