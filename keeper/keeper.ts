// The keeper: long-lived, small, and it never parses guest data. It owns the state directory,
// binds the vhost-user socket, holds the shared directory's root fd and every fd a worker
// stores, and (in embedded mode) spawns the worker and restarts it when it dies.
//
// Trust: keeper.sock accepts only the keeper's own uid (SO_PEERCRED). Messages are
// sd_notify-formatted text (shared/fdstore.ts); nothing in them is guest data.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { logger, type Logger } from '../shared/log';
import { native, C, POLL_DISCONNECT, POLL_READABLE, type Poller } from '../shared/native';
import {
  FdStoreProtocolError, MAX_FDS_PER_MESSAGE, MAX_MESSAGE_SIZE, formatAssignments, parseAssignments, parseFdNames,
} from '../shared/fdstore';
import { type WorkerConfig, writeWorkerConfig, keeperSocketPath, EXIT_STATE_UNUSABLE } from '../shared/config';
import { prepareStateDir } from '../shared/state_dir';
import { SdNotifier, consumeListenFds } from '../shared/sd_notify';
import { SystemdFdStore } from './systemd_fdstore';
import { buildReport, formatPrometheus } from '../shared/status_report';
import type { ExitInfo, KeeperStatus } from '../shared/keeper_protocol';

export interface KeeperOptions extends WorkerConfig {
  /** argv to start a worker (embedded mode); null when systemd starts workers. */
  workerCommand: string[] | null;
  /** argv to start a warm standby worker for fast handovers (embedded mode); null: none. */
  standbyCommand: string[] | null;
}

interface Client {
  fd: number;
  poller: Poller;
  pid: number;
  /** An FDFETCH in progress: the names to send and the next index. */
  fetch: { names: string[]; next: number } | null;
}

/** Crash-loop backoff: restart at once, unless the worker died this often recently. */
const CRASH_WINDOW_MS = 10_000;
const CRASH_LOOP_DEATHS = 5;
const MAX_BACKOFF_MS = 5_000;
/** Deaths after READY count as a crash loop when the worker made no progress: served no request
 * since READY and lived less than STABLE_MS. The first is replaced at once (a kill that landed
 * just before the first request), then FRUITLESS_BASE_MS doubling up to MAX_BACKOFF_MS. Any
 * progress resets it, so workers killed while serving are always replaced at once. */
const STABLE_MS = 3_000;
const FRUITLESS_BASE_MS = 100;
const RECV_BUF = Buffer.alloc(MAX_MESSAGE_SIZE);
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
/** Recovery samples reported in status (for benchmarks and dashboards). */
const RECENT_RECOVERIES = 200;

export class Keeper {
  private readonly log: Logger;
  private readonly store = new Map<string, number>();
  private readonly clients = new Map<number, Client>();
  private listenPoller: Poller | null = null;
  /** Watches QEMU's connection for a hangup while no worker runs (state unusable). */
  private hangupPoller: Poller | null = null;
  private sockFd = -1;
  private child: ChildProcess | null = null;
  private standby: { child: ChildProcess; client: Client | null; spawnedAt: bigint; niced: boolean } | null = null;
  private standbyTimer: NodeJS.Timeout | null = null;
  /** The successor running with RECOVERY_BOOST, and when its boost ends at the latest. */
  private boosted: { pid: number; timer: NodeJS.Timeout } | null = null;
  private workerPid: number | null = null;
  private workerState = 'starting';
  private workerReady = false;
  private workerStatus: string | null = null;
  private workerStartedAt: string | null = null;
  private workerStats: unknown = null;
  private restarts = 0;
  private lastExit: ExitInfo | null = null;
  private deaths: number[] = [];
  /** Workers in a row that died after READY without progress (see STABLE_MS). */
  private fruitlessDeaths = 0;
  /** The active worker served a request since it became READY (X_SERVED / X_PROGRESS). */
  private workerProgress = false;
  private readyAt: number | null = null;
  private backoff: { delayMs: number; restartAt: string } | null = null;
  private deathAt: bigint | null = null;
  private readonly recoveryMs: number[] = [];
  private stopping = false;
  private restartTimer: NodeJS.Timeout | null = null;
  private readonly startedAt = new Date().toISOString();
  private resolveDone: ((code: number) => void) | null = null;
  readonly done: Promise<number>;
  private error: string | null = null;
  private lastControlReply = 0;
  /** systemd's notify socket when we run as a Type=notify unit. */
  private readonly sd: SdNotifier | null = SdNotifier.fromEnv();
  /** systemd mode: the keeper.sock client of the serving worker (its EOF is its death). */
  private activeClient: Client | null = null;
  /** The mirror of our store in systemd's fd store (when systemd runs us). */
  private sdStore: SystemdFdStore | null = null;
  /** Whether a standby's niceness can be restored at takeover (CAP_SYS_NICE or RLIMIT_NICE). */
  private readonly canRenice = canLowerNiceness();

  constructor(private readonly opts: KeeperOptions) {
    this.log = logger('keeper');
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
  }

  start(): void {
    native.raiseNoFileLimit(1_000_000);
    // A keeper restarted by systemd gets its fd store back (FileDescriptorStoreMax=).
    const inherited = consumeListenFds();
    prepareStateDir(this.opts.stateDir);
    for (const [name, fd] of inherited) this.store.set(name, fd);
    if (this.sd !== null) {
      this.sdStore = new SystemdFdStore(this.sd, path.join(this.opts.stateDir, 'fdstore-aliases.json'), (n) => this.store.get(n), this.log);
      for (const [name, fd] of this.sdStore.adoptInherited(inherited)) this.store.set(name, fd);
    }
    if (inherited.size > 0) this.log.info({ fds: this.store.size }, 'took back the fd store from systemd');
    const st = fs.statSync(this.opts.sharedDir, { throwIfNoEntry: false });
    if (!st || !st.isDirectory()) throw new Error(`shared directory ${this.opts.sharedDir} is not a directory`);
    for (const p of [this.opts.socketPath, keeperSocketPath(this.opts.stateDir)]) {
      // sun_path holds 108 bytes including the NUL; bind() would only say ENAMETOOLONG.
      if (Buffer.byteLength(p) > 107) throw new Error(`socket path ${p} is ${Buffer.byteLength(p)} bytes; UNIX sockets allow at most 107`);
    }
    writeWorkerConfig(this.opts);
    if (!this.store.has('root')) this.put('root', native.openat(C.AT_FDCWD!, this.opts.sharedDir, C.O_PATH! | C.O_DIRECTORY!, 0));
    if (!this.store.has('vhost.listen')) {
      removeStaleSocket(this.opts.socketPath);
      this.put('vhost.listen', native.unixListen(this.opts.socketPath, 'stream', 1));
    }
    const sockPath = keeperSocketPath(this.opts.stateDir);
    removeStaleSocket(sockPath);
    this.sockFd = native.unixListen(sockPath, 'seqpacket', 16);
    fs.chmodSync(sockPath, 0o600);
    this.listenPoller = new native.Poller(this.sockFd, () => this.acceptClients());
    this.listenPoller.start(POLL_READABLE);
    this.log.info({ stateDir: this.opts.stateDir, socketPath: this.opts.socketPath, sharedDir: this.opts.sharedDir }, 'keeper started');
    this.sdNotify({ READY: 1, STATUS: this.store.has('vhost.conn') ? 'holding a live frontend connection' : 'waiting for the vhost-user frontend' });
    if (this.opts.workerCommand !== null) this.spawnWorker();
  }

  private sdNotify(fields: Record<string, string | number>): void {
    if (this.sd === null) return;
    try {
      this.sd.notify(fields);
    } catch (e) {
      this.log.warn({ err: { message: (e as Error).message } }, 'sd_notify failed');
    }
  }

  private put(name: string, fd: number): void {
    const old = this.store.get(name);
    if (old !== undefined && old !== fd) this.drop(name);
    this.store.set(name, fd);
    // Under systemd the keeper's own fds go to systemd's fd store too, so a keeper restart
    // loses nothing either.
    if (this.sdStore !== null) {
      try {
        this.sdStore.add(name, fd);
      } catch (e) {
        this.log.error({ fdName: name, err: { message: (e as Error).message } }, 'cannot store an fd in systemd (FileDescriptorStoreMax=?)');
      }
    }
  }

  private drop(name: string): void {
    const fd = this.store.get(name);
    if (fd === undefined) return;
    if (this.sdStore !== null && !this.stopping) {
      try {
        this.sdStore.remove(name, fd);
      } catch (e) {
        this.log.warn({ fdName: name, err: { message: (e as Error).message } }, 'cannot remove an fd from systemd\'s store');
      }
    }
    this.store.delete(name);
    native.close(fd);
  }

  // --- worker supervision (embedded mode)

  private spawnProcess(standby: boolean): ChildProcess {
    const [cmd, ...args] = (standby ? this.opts.standbyCommand : this.opts.workerCommand)!;
    const env: NodeJS.ProcessEnv = { ...process.env, VFSK_KEEPER_PID: String(process.pid), ...(standby ? { VFSK_STANDBY: '1' } : {}) };
    // The keeper is the unit's main process: its workers must not talk to systemd.
    for (const k of ['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID', 'LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES']) delete env[k];
    const child = spawn(cmd!, args, { stdio: ['ignore', 'inherit', 'inherit'], env });
    child.on('exit', (code, signal) => this.onWorkerExit(child, code, signal));
    child.on('error', (err) => this.log.error({ err: { message: err.message } }, 'worker spawn failed'));
    return child;
  }

  private becomeActive(child: ChildProcess): void {
    this.child = child;
    this.workerPid = child.pid ?? null;
    this.workerState = 'starting';
    this.workerReady = false;
    this.workerProgress = false;
    this.readyAt = null;
    this.workerStartedAt = new Date().toISOString();
  }

  private spawnWorker(): void {
    if (this.stopping || this.opts.workerCommand === null) return;
    const child = this.spawnProcess(false);
    this.becomeActive(child);
    this.log.info({ workerPid: child.pid, restarts: this.restarts }, 'worker spawned');
  }

  /** A warm standby: loaded and connected, blocked until the keeper hands it the session. */
  private spawnStandby(): void {
    if (this.standbyTimer !== null) clearTimeout(this.standbyTimer);
    this.standbyTimer = null;
    if (this.stopping || this.opts.workerCommand === null || this.standby !== null || this.opts.standbyCommand === null) return;
    const child = this.spawnProcess(true);
    let niced = false;
    if (this.canRenice && child.pid !== undefined) {
      niced = setProcessNiceness(child.pid, Math.min(19, os.getPriority() + STANDBY_NICE));
    }
    this.standby = { child, client: null, spawnedAt: process.hrtime.bigint(), niced };
    this.log.debug({ standbyPid: child.pid, niced }, 'standby worker spawned');
  }

  /** Spawns the standby once the active worker serves, so they do not compete for the CPU: at
   * once when it can start at a lower priority, else after STANDBY_DELAY_MS. */
  private scheduleStandby(): void {
    if (this.standbyTimer !== null || this.standby !== null || this.opts.standbyCommand === null) return;
    this.standbyTimer = setTimeout(() => { this.standbyTimer = null; this.spawnStandby(); }, STANDBY_DELAY_MS);
  }

  /** Starts the successor: the ready standby if there is one (a handover, not a Node.js start),
   * else a fresh worker. Called only after the old worker was reaped, so the two never serve
   * the queues at once. */
  private startSuccessor(): void {
    const sb = this.standby;
    if (sb !== null && sb.client !== null && this.clients.has(sb.client.fd)) {
      this.standby = null;
      this.becomeActive(sb.child);
      if (!this.boost(sb.child.pid!) && sb.niced && !setProcessNiceness(sb.child.pid!, os.getPriority())) {
        this.log.warn({ workerPid: sb.child.pid }, 'cannot restore the standby\'s priority; it serves at a lower one');
      }
      try {
        native.sendMsg(sb.client.fd, formatAssignments({ X_TAKEOVER: 1 }), []);
        this.log.info({ workerPid: sb.child.pid, restarts: this.restarts }, 'standby worker took over');
        return;
      } catch (e) {
        this.log.error({ err: { message: (e as Error).message } }, 'standby handover failed; starting a fresh worker');
        sb.child.kill('SIGKILL');
      }
    }
    this.spawnWorker();
    if (this.child?.pid !== undefined) this.boost(this.child.pid);
  }

  /** With no worker, nobody reads QEMU's connection: notice QEMU going away (EPOLLRDHUP, which
   * reads nothing, so a message QEMU sent meanwhile stays queued), and end the service as a
   * disconnect with a worker does. What the kept fds were for is gone with the connection. */
  private watchFrontendHangup(): void {
    const conn = this.store.get('vhost.conn');
    if (conn === undefined || this.hangupPoller !== null) return;
    this.hangupPoller = new native.Poller(conn, (status, events) => {
      if (status >= 0 && (events & POLL_DISCONNECT) === 0) return;
      this.hangupPoller?.close();
      this.hangupPoller = null;
      this.log.warn({ status }, 'the frontend disconnected while no worker could serve it; the service is over');
      void this.stop('frontend disconnected');
    });
    this.hangupPoller.start(POLL_DISCONNECT);
  }

  /** Raises a successor's priority for its takeover (see RECOVERY_BOOST); false if it cannot. */
  private boost(pid: number): boolean {
    if (!this.canRenice) return false;
    this.unboost();
    if (!setProcessNiceness(pid, Math.max(-20, os.getPriority() - RECOVERY_BOOST))) return false;
    const timer = setTimeout(() => this.unboost(), RECOVERY_BOOST_MS);
    timer.unref();
    this.boosted = { pid, timer };
    return true;
  }

  /** Gives the boosted successor the keeper's own priority back. */
  private unboost(): void {
    const b = this.boosted;
    if (b === null) return;
    this.boosted = null;
    clearTimeout(b.timer);
    // A worker that died meanwhile has no threads left to renice.
    if (!setProcessNiceness(b.pid, os.getPriority())) this.log.warn({ workerPid: b.pid }, 'cannot restore the worker\'s priority after its takeover');
  }

  private onWorkerExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.standby !== null && child === this.standby.child) {
      this.standby = null;
      if (!this.stopping) {
        this.log.warn({ code, signal }, 'standby worker died; replacing it');
        this.scheduleStandby();
      }
      return;
    }
    if (child !== this.child) return;
    const now = process.hrtime.bigint();
    this.child = null;
    this.lastExit = { code, signal, at: new Date().toISOString() };
    const pid = this.workerPid;
    if (this.boosted?.pid === pid) {
      // Dead: nothing to give back (and its pid may be reused).
      clearTimeout(this.boosted.timer);
      this.boosted = null;
    }
    const diedBeforeReady = !this.workerReady;
    const fruitless = !diedBeforeReady && !this.workerProgress && (this.readyAt === null || Date.now() - this.readyAt < STABLE_MS);
    this.workerPid = null;
    this.workerReady = false;
    // Messages the dead worker queued before dying are still in its connection: take them all
    // before a successor can fetch the fd set.
    for (const c of [...this.clients.values()]) if (c.pid === pid) this.drainClient(c);
    if (this.stopping) {
      // stop() is waiting for this exit and finishes the shutdown.
      this.workerState = 'stopped';
      return;
    }
    if (code === EXIT_STATE_UNUSABLE) {
      // Restarting cannot help; keep every fd so an operator can decide (see `status`).
      this.workerState = 'failed';
      this.log.error({ workerPid: pid, error: this.error }, 'worker cannot use the saved state; not restarting. The keeper keeps all fds.');
      this.watchFrontendHangup();
      return;
    }
    if (code === 0 && signal === null) {
      // A clean exit means the service is over (the frontend disconnected).
      this.log.info({ workerPid: pid }, 'worker finished: service over');
      this.workerState = 'exited';
      void this.stop('worker finished');
      return;
    }
    this.log.warn({ workerPid: pid, code, signal }, 'worker died; restarting');
    this.workerState = 'restarting';
    this.restarts++;
    this.deathAt = now;
    // Only deaths before a worker got going count as a crash loop: a worker killed while
    // serving (an operator, the watchdog, a bad request) is replaced at once.
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

  // --- keeper.sock

  private acceptClients(): void {
    for (;;) {
      let fd: number;
      try {
        fd = native.accept(this.sockFd);
      } catch (e) {
        this.log.error({ err: { message: (e as Error).message } }, 'keeper.sock accept failed');
        return;
      }
      if (fd < 0) return;
      const cred = native.peerCred(fd);
      const myUid = process.getuid ? process.getuid() : 0;
      if (cred.uid !== myUid) {
        this.log.warn({ peerUid: cred.uid, peerPid: cred.pid }, 'keeper.sock: refusing a peer with another uid');
        native.close(fd);
        continue;
      }
      const client: Client = { fd, pid: cred.pid, fetch: null, poller: new native.Poller(fd, () => this.readClient(client)) };
      this.clients.set(fd, client);
      client.poller.start(POLL_READABLE);
    }
  }

  private closeClient(c: Client): void {
    if (!this.clients.has(c.fd)) return;
    this.clients.delete(c.fd);
    c.fetch = null;
    c.poller.close();
    native.close(c.fd);
    if (c === this.activeClient) {
      this.activeClient = null;
      // systemd mode: the worker's link closed, so it died; systemd restarts it.
      if (this.opts.workerCommand === null && !this.stopping) {
        this.deathAt = process.hrtime.bigint();
        this.restarts++;
        this.lastExit = { code: null, signal: null, at: new Date().toISOString() };
        this.workerPid = null;
        this.workerReady = false;
        this.workerState = 'restarting';
        this.log.warn({ workerPid: c.pid }, 'worker connection closed: the worker died');
        this.sdNotify({ STATUS: 'worker died; waiting for systemd to restart it' });
      }
    }
  }

  /** Takes every message a dead peer left queued, so a successor's FDFETCH sees them all. */
  private drainDeadClients(except: Client): void {
    for (const c of [...this.clients.values()]) {
      if (c === except) continue;
      try {
        process.kill(c.pid, 0);
      } catch {
        this.drainClient(c);
      }
    }
  }

  private drainClient(c: Client): void {
    this.readClient(c);
  }

  private readClient(c: Client): void {
    for (;;) {
      if (!this.clients.has(c.fd)) return;
      let r;
      try {
        r = native.recvMsg(c.fd, RECV_BUF, MAX_FDS_PER_MESSAGE);
      } catch (e) {
        this.log.warn({ err: { message: (e as Error).message }, peerPid: c.pid }, 'keeper.sock receive failed');
        this.closeClient(c);
        return;
      }
      if (r === null) return;
      if (r.bytes === 0 && r.fds.length === 0) {
        this.closeClient(c);
        return;
      }
      try {
        if (r.truncated) throw new FdStoreProtocolError('message or fds truncated');
        this.handleMessage(c, RECV_BUF.subarray(0, r.bytes), r.fds);
      } catch (e) {
        for (const fd of r.fds) native.close(fd);
        this.log.error({ err: { message: (e as Error).message }, peerPid: c.pid }, 'bad fd-store message');
      }
    }
  }

  private handleMessage(c: Client, data: Buffer, fds: number[]): void {
    const m = parseAssignments(data);
    if (m.get('FDSTORE') === '1') {
      const names = parseFdNames(m.get('FDNAME'), fds.length);
      names.forEach((n, i) => this.put(n, fds[i]!));
      return;
    }
    if (m.has('X_CTLREPLY')) {
      this.forwardControlReply(m, fds);
      return;
    }
    if (fds.length > 0) throw new FdStoreProtocolError('fds attached to a message that does not store them');
    if (m.get('FDSTOREREMOVE') === '1') {
      for (const n of parseFdNames(m.get('FDNAME'), -1)) this.drop(n);
    }
    if (m.get('FDFETCH') === '1') {
      this.drainDeadClients(c);
      this.sendFdBatch(c, true);
    }
    if (m.get('FDFETCHNEXT') === '1') this.sendFdBatch(c, false);
    if (m.has('STATUS')) this.workerStatus = m.get('STATUS')!;
    if (m.get('X_STANDBY') === '1') {
      if (this.standby !== null && this.standby.child.pid === c.pid) {
        this.standby.client = c;
        this.log.debug({ standbyPid: c.pid, startMs: Math.round(Number(process.hrtime.bigint() - this.standby.spawnedAt) / 1e5) / 10 }, 'standby worker ready');
      }
      return;
    }
    if (m.get('READY') === '1' && (c.pid === this.workerPid || this.opts.workerCommand === null)) {
      if (!this.workerReady) this.readyAt = Date.now();
      this.workerReady = true;
      this.workerState = 'running';
      this.activeClient = c;
      if (this.opts.workerCommand === null) {
        this.workerPid = c.pid;
        this.workerStartedAt = new Date().toISOString();
      }
      this.scheduleStandby();
      this.sdNotify({ STATUS: `worker ${c.pid} serving; ${this.restarts} restarts` });
    }
    if (m.get('STOPPING') === '1') this.workerState = 'stopping';
    if (m.has('X_STATS')) {
      try {
        this.workerStats = JSON.parse(m.get('X_STATS')!);
      } catch {
        throw new FdStoreProtocolError('X_STATS is not JSON');
      }
      this.writeMetrics();
    }
    if ((m.get('X_SERVED') === '1' || m.get('X_PROGRESS') === '1') && c.pid === this.workerPid) {
      this.workerProgress = true;
      this.fruitlessDeaths = 0;
    }
    if (m.get('X_SERVED') === '1' && this.deathAt !== null) {
      // First request completed by a successor: the end of a recovery.
      const deathAt = this.deathAt;
      const ms = Number(process.hrtime.bigint() - deathAt) / 1e6;
      this.deathAt = null;
      this.recoveryMs.push(ms);
      this.log.info({ recoveryMs: Math.round(ms * 10) / 10, exitSeenNs: deathAt.toString() }, 'worker recovered');
    }
    // The successor has done the urgent part of its takeover: back to the normal priority, and
    // its replacement may start now (after the recovery is timed: spawning takes a few ms).
    if (m.get('X_SERVED') === '1' && c.pid === this.workerPid && this.canRenice) {
      if (this.boosted?.pid === c.pid) this.unboost();
      this.spawnStandby();
    }
    if (m.get('X_STATUSQUERY') === '1') {
      const reply = Buffer.from(JSON.stringify(this.status()));
      native.sendMsg(c.fd, reply.length <= MAX_MESSAGE_SIZE ? reply : Buffer.from(JSON.stringify({ ...this.status(), fdNames: {} })), []);
    }
    if (m.get('X_SETERROR') !== undefined) this.error = m.get('X_SETERROR') || null;
  }

  /** Control replies go to the frontend through the keeper, deduplicated by sequence number,
   * so a worker that dies around the send cannot make QEMU miss or double-read a reply. */
  private forwardControlReply(m: Map<string, string>, fds: number[]): void {
    try {
      const seq = Number(m.get('X_CTLREPLY'));
      const hex = m.get('X_DATA') ?? '';
      if (!Number.isSafeInteger(seq) || seq <= 0 || !/^([0-9a-f]{2})*$/.test(hex)) throw new FdStoreProtocolError('malformed X_CTLREPLY');
      if (seq <= this.lastControlReply) return;
      const conn = this.store.get('vhost.conn');
      if (conn === undefined) throw new FdStoreProtocolError('control reply without a frontend connection');
      const data = Buffer.from(hex, 'hex');
      const n = native.sendMsg(conn, data, fds);
      if (n !== data.length) this.log.error({ seq, sent: n, len: data.length }, 'control reply not fully sent');
      this.lastControlReply = seq;
    } finally {
      for (const fd of fds) native.close(fd);
    }
  }

  /**
   * FDFETCH starts a transfer of a snapshot of the whole fd set; FDFETCHNEXT asks for the next
   * batch. The worker pulls one batch (at most 253 fds) at a time, so a large set (100k inodes)
   * never overfills the socket buffer.
   */
  private sendFdBatch(c: Client, start: boolean): void {
    // A snapshot of names: nothing else changes the store while a worker fetches it (its
    // predecessor is dead and drained), and names cost no fds.
    if (start) c.fetch = { names: [...this.store.keys()], next: 0 };
    const f = c.fetch;
    if (f === null) throw new FdStoreProtocolError('FDFETCHNEXT without FDFETCH');
    const batch: Array<[string, number]> = [];
    while (batch.length < MAX_FDS_PER_MESSAGE && f.next < f.names.length) {
      const name = f.names[f.next++]!;
      const fd = this.store.get(name);
      if (fd !== undefined) batch.push([name, fd]);
    }
    const more = f.next < f.names.length ? 1 : 0;
    const msg = formatAssignments({ FDSET: 1, FDNAME: batch.map(([n]) => n).join(':'), MORE: more, CTLSEQ: this.lastControlReply });
    try {
      if (native.sendMsg(c.fd, msg, batch.map(([, fd]) => fd)) < 0) throw new Error('socket buffer full');
    } catch (e) {
      this.log.error({ peerPid: c.pid, err: { message: (e as Error).message } }, 'cannot send the fd set');
      this.closeClient(c);
      return;
    }
    if (!more) c.fetch = null;
  }

  /** <state dir>/metrics.prom, for node_exporter's textfile collector (written atomically). */
  private writeMetrics(): void {
    const file = path.join(this.opts.stateDir, 'metrics.prom');
    try {
      fs.writeFileSync(`${file}.new`, formatPrometheus([buildReport(this.status(), this.opts.stateDir)]));
      fs.renameSync(`${file}.new`, file);
    } catch (e) {
      this.log.warn({ err: { message: (e as Error).message } }, 'cannot write metrics.prom');
    }
  }

  status(): KeeperStatus {
    const sorted = [...this.recoveryMs].sort((a, b) => a - b);
    const pick = (q: number): number | null => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : null);
    const fdNames: Record<string, number> = {};
    for (const name of this.store.keys()) {
      const kind = name.split('.')[0]!;
      fdNames[kind] = (fdNames[kind] ?? 0) + 1;
    }
    return {
      keeper: { pid: process.pid, startedAt: this.startedAt, fdsHeld: this.store.size, stateDir: this.opts.stateDir,
        socketPath: this.opts.socketPath, sharedDir: this.opts.sharedDir, error: this.error },
      worker: { pid: this.workerPid, state: this.workerState, restarts: this.restarts, lastExit: this.lastExit,
        startedAt: this.workerStartedAt, status: this.workerStatus, ready: this.workerReady,
        standbyPid: this.standby?.child.pid ?? null, standbyReady: this.standby?.client != null,
        backoff: { fruitlessDeaths: this.fruitlessDeaths, delayMs: this.backoff?.delayMs ?? 0, restartAt: this.backoff?.restartAt ?? null } },
      recovery: {
        count: sorted.length,
        lastMs: this.recoveryMs.length ? this.recoveryMs[this.recoveryMs.length - 1]! : null,
        p50Ms: pick(0.5), p99Ms: pick(0.99), maxMs: sorted.length ? sorted[sorted.length - 1]! : null,
        recentMs: this.recoveryMs.slice(-RECENT_RECOVERIES),
      },
      fdNames,
      workerStats: this.workerStats,
    };
  }

  async stop(reason: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.log.info({ reason }, 'keeper stopping');
    this.sdNotify({ STOPPING: 1, STATUS: `stopping: ${reason}` });
    if (this.restartTimer) clearTimeout(this.restartTimer);
    if (this.standbyTimer) clearTimeout(this.standbyTimer);
    if (this.boosted !== null) clearTimeout(this.boosted.timer);
    const children = [this.child, this.standby?.child ?? null].filter((c): c is ChildProcess => c !== null);
    await Promise.all(children.map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(killer);
    }));
    this.finish(0);
  }

  private finish(code: number): void {
    for (const c of [...this.clients.values()]) this.closeClient(c);
    this.listenPoller?.close();
    this.listenPoller = null;
    this.hangupPoller?.close();
    this.hangupPoller = null;
    if (this.sockFd >= 0) native.close(this.sockFd);
    this.sockFd = -1;
    for (const name of [...this.store.keys()]) this.drop(name);
    // Under systemd the listening socket lives on in the fd store: keep its path for the
    // restarted keeper.
    const paths = this.sd === null ? [this.opts.socketPath, keeperSocketPath(this.opts.stateDir)] : [keeperSocketPath(this.opts.stateDir)];
    for (const p of paths) {
      try { fs.unlinkSync(p); } catch { /* already gone */ }
    }
    this.log.info('keeper stopped');
    this.resolveDone?.(code);
  }
}

export function removeStaleSocket(p: string): void {
  const st = fs.lstatSync(p, { throwIfNoEntry: false });
  if (!st) return;
  if (!st.isSocket()) throw new Error(`${p} exists and is not a socket`);
  fs.unlinkSync(p);
}

/** Whether this process may lower a niceness (CAP_SYS_NICE, or RLIMIT_NICE allows it): probed on
 * its own main thread, one step down and back. */
function canLowerNiceness(): boolean {
  try {
    const own = os.getPriority();
    if (own <= -20) return true;
    os.setPriority(own - 1);
    os.setPriority(own);
    return true;
  } catch {
    return false;
  }
}

/** Sets the niceness of every thread of `pid` (setpriority(PRIO_PROCESS) on Linux changes one
 * thread; threads started later inherit their creator's). False if any thread refused. */
function setProcessNiceness(pid: number, nice: number): boolean {
  let tids: number[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`).map(Number);
  } catch {
    tids = [pid];
  }
  let ok = true;
  for (const tid of tids) {
    try {
      os.setPriority(tid, nice);
    } catch (e) {
      // A thread that exited in between is not a failure.
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH' && (e as { info?: { code?: string } }).info?.code !== 'ESRCH') ok = false;
    }
  }
  return ok;
}
