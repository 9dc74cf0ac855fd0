// The keeper: long-lived, small, and it never parses guest data. It owns the state directory,
// binds the vhost-user socket, holds the shared directory's root fd and every fd a worker
// stores (fd_store.ts), supervises the workers (supervisor.ts) and answers keeper.sock
// (keeper_socket.ts, messages in shared/keeper_protocol.ts). This file wires those together
// and dispatches each keeper.sock message.
//
// Trust: keeper.sock accepts only the keeper's own uid (SO_PEERCRED), and of those only its own
// workers may store or fetch fds (embedded: the connection made at spawn; systemd: processes of
// the worker unit, peer_trust.ts); anyone else of our uid gets the read-only status query.
// Nothing on it is guest data. See docs/ARCHITECTURE.md, "Processes" and "keeper.sock protocol".
import * as fs from 'node:fs';
import * as path from 'node:path';
import { logger, type Logger } from '../shared/log';
import { native, C, POLL_DISCONNECT, type Poller } from '../shared/native';
import { errorInfo } from '../shared/errors';
import { KeeperProtocolError } from '../shared/sd_notify_format';
import { growFdTable } from '../shared/fd_table';
import { SCM_MAX_FD, MAX_MESSAGE_SIZE, encodeFromKeeper, type KeeperStatus, type ToKeeper, type UpgradeResult } from '../shared/keeper_protocol';
import { type WorkerConfig, writeWorkerConfig, keeperSocketPath, DEFAULT_RLIMIT_NOFILE } from '../shared/config';
import { prepareStateDir } from '../shared/state_dir';
import { SdNotifier, consumeListenFds } from '../shared/sd_notify';
import { buildReport, formatPrometheus } from '../shared/status_report';
import { SystemdFdStore } from './systemd_fdstore';
import { FdStore } from './fd_store';
import { KeeperSocket, removeStaleSocket, type KeeperPeer, type KeeperSocketHandler, type PeerRole } from './keeper_socket';
import { WorkerSupervisor, type SupervisorOptions } from './supervisor';
import { defaultWorkerUnits, peerClassifier, type WorkerPeers } from './peer_trust';
import { EMBEDDED_KEEPER_BOUNDING, EMBEDDED_KEEPER_EFFECTIVE, capMask } from '../shared/capabilities';
import { VERSION } from '../shared/version';
import { HANDOFF_FORMAT, checkInstalledKeeper, execWithHandoff, type KeeperHandoff } from './reexec';

export interface KeeperOptions extends WorkerConfig, SupervisorOptions {
  /** A listening socket someone else bound (virtiofsd's --fd): served as vhost.listen, its path
   * (socketPath, informational) neither bound nor unlinked by us. */
  listenFd?: number;
  /** Unlink socketPath at exit (default: true unless listenFd). */
  unlinkSocket?: boolean;
  /** Remove the state directory at a clean exit (the virtiofsd entry point's derived ones). */
  removeStateDir?: boolean;
  /** Without workerCommand: which path connections are workers (default: the units
   * virtiofs-worker@<state dir name>.service and virtiofs-standby@<state dir name>.service). */
  workerPeers?: WorkerPeers;
  /** How this keeper was started (cli/serve.ts), JSON: what a re-exec'd image starts from. */
  startArgs?: unknown;
  /** The installed command-line script (a re-exec runs it; bin/virtiofs-keeper.js beside it
   * answers the dry run). Absent: no re-exec (in-process tests). */
  reexec?: { script: string; checkBin: string };
  /** fds this process keeps open for its whole life, nobody's to use (libvirt's pid file with
   * its lock: cli/virtiofsd.ts); a re-exec keeps them too. */
  keepOpenFds?: number[];
}

export class Keeper implements KeeperSocketHandler {
  private readonly log: Logger;
  private readonly store: FdStore;
  private readonly supervisor: WorkerSupervisor;
  private socket: KeeperSocket | null = null;
  /** Watches QEMU's connection for a hangup while no worker runs (state unusable). */
  private hangupPoller: Poller | null = null;
  private stopping = false;
  private startedAt = new Date().toISOString();
  /** Re-execs of this keeper (its pid's life) and the last one. */
  private reexecs = 0;
  private lastReexec: { fromVersion: string; toVersion: string; ms: number; at: string } | null = null;
  private reexecInProgress = false;
  private resolveDone: ((code: number) => void) | null = null;
  readonly done: Promise<number>;
  /** Why the last worker gave up (X_SETERROR), shown by `status`. */
  private error: string | null = null;
  /** What the workers last reported: STATUS text and X_STATS counters. */
  private lastStatus: string | null = null;
  private lastStats: unknown = null;
  /** Our RLIMIT_NOFILE soft limit after raising it (null until start). */
  private noFile: number | null = null;
  /** The highest control reply sequence number forwarded to the frontend. */
  private lastControlReply = 0;
  /** The connection of the worker that last said READY as the serving one: where X_DRAIN goes
   * (a planned upgrade, supervisor.ts). */
  private servingPeer: KeeperPeer | null = null;
  /** systemd's notify socket when we run as a Type=notify unit. */
  private readonly sd: SdNotifier | null = SdNotifier.fromEnv();
  /** keeper.sock messages handled, but the serving worker's X_STATS (one a second, for ever):
   * what the idle memory reducer watches (cli/serve.ts, shared/memory.ts). */
  private messages = 0;

  constructor(private readonly opts: KeeperOptions) {
    this.log = logger('keeper');
    this.store = new FdStore(this.log);
    this.supervisor = new WorkerSupervisor(opts, {
      adoptWorker: (fd, pid, learnPid) => {
        if (this.socket === null) throw new Error('keeper.sock is not open');
        this.socket.adopt(fd, pid, 'worker', learnPid);
      },
      drainWorker: (pid) => this.socket?.drainPid(pid),
      isConnected: (peer) => this.socket?.isOpen(peer) ?? false,
      handOver: (peer) => this.socket?.send(peer, { type: 'takeover' }) ?? false,
      release: (peer) => this.socket?.close(peer),
      drain: (pid) => this.servingPeer !== null && this.servingPeer.pid === pid && (this.socket?.send(this.servingPeer, { type: 'drain' }) ?? false),
      gaveUp: () => {
        this.log.error({ error: this.error }, 'worker cannot use the saved state; not restarting. The keeper keeps all fds.');
        this.watchFrontendHangup();
      },
      serviceOver: (reason) => { void this.stop(reason); },
    }, this.log);
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
  }

  /** `handoff`: we are a re-exec'd image (keeper/reexec.ts): everything comes from it. */
  start(handoff: KeeperHandoff | null = null): void {
    // The keeper holds a copy of every fd the worker stores: its limit is the worker's budget
    // too (told to workers in FDSET).
    this.noFile = native.raiseNoFileLimit(this.opts.rlimitNofile ?? DEFAULT_RLIMIT_NOFILE);
    // It receives every fd a worker stores: grown once now, not in the middle of a store.
    growFdTable(this.noFile, this.log);
    // A keeper restarted by systemd gets its fd store back (FileDescriptorStoreMax=).
    const inherited = handoff === null ? consumeListenFds() : new Map<string, number>();
    prepareStateDir(this.opts.stateDir);
    for (const [name, fd] of inherited) this.store.adopt(name, fd);
    for (const [name, fd] of handoff?.store ?? []) this.store.adopt(name, fd);
    if (this.opts.listenFd !== undefined && !this.store.has('vhost.listen')) this.store.adopt('vhost.listen', this.opts.listenFd);
    if (this.sd !== null) {
      const sdStore = new SystemdFdStore(this.sd, path.join(this.opts.stateDir, 'fdstore-aliases.json'), (n) => this.store.get(n), this.log);
      for (const [name, fd] of sdStore.adoptInherited(inherited)) this.store.adopt(name, fd);
      this.store.mirrorTo(sdStore);
    }
    if (inherited.size > 0) this.log.info({ fds: this.store.size }, 'took back the fd store from systemd');
    const st = fs.statSync(this.opts.sharedDir, { throwIfNoEntry: false });
    if (!st || !st.isDirectory()) throw new Error(`shared directory ${this.opts.sharedDir} is not a directory`);
    for (const p of [this.opts.socketPath, keeperSocketPath(this.opts.stateDir)]) {
      // sun_path holds 108 bytes including the NUL; bind() would only say ENAMETOOLONG.
      if (Buffer.byteLength(p) > 107) throw new Error(`socket path ${p} is ${Buffer.byteLength(p)} bytes; UNIX sockets allow at most 107`);
    }
    writeWorkerConfig(this.opts);
    if (!this.store.has('root')) this.store.put('root', native.openat(C.AT_FDCWD!, this.opts.sharedDir, C.O_PATH! | C.O_DIRECTORY!, 0));
    if (!this.store.has('vhost.listen')) {
      removeStaleSocket(this.opts.socketPath);
      this.store.put('vhost.listen', native.unixListen(this.opts.socketPath, 'stream', 1));
    }
    const peers = this.opts.workerPeers ?? { kind: 'unit', units: defaultWorkerUnits(path.basename(this.opts.stateDir)) };
    if (!this.supervisor.embedded && peers.kind === 'same-uid') {
      this.log.warn('keeper.sock trusts every process of our uid as a worker (--worker-peers same-uid)');
    }
    this.socket = new KeeperSocket(keeperSocketPath(this.opts.stateDir), this, this.log, peerClassifier(this.supervisor.embedded, peers),
      handoff?.keeperSocketFd ?? null);
    if (handoff !== null) {
      this.resumeFromHandoff(handoff);
      return;
    }
    this.log.info({ stateDir: this.opts.stateDir, socketPath: this.opts.socketPath, sharedDir: this.opts.sharedDir,
      workerPeers: this.supervisor.embedded ? 'spawned' : peers }, 'keeper started');
    this.sdNotify({ READY: 1, STATUS: this.store.has('vhost.conn') ? 'holding a live frontend connection' : 'waiting for the vhost-user frontend' });
    this.supervisor.start();
  }

  /** From here on the keeper only passes fds around: it keeps nearly no capability (see
   * shared/capabilities.ts), and is not dumpable, so that a same-uid process with fewer
   * capabilities (a confined worker of any instance) cannot reach our fds through /proc. The
   * CLI calls it right after start() (in-process tests do not: it would confine the test). */
  dropPrivileges(): void {
    native.setNotDumpable();
    if (process.geteuid?.() !== 0) return;
    if (this.supervisor.embedded) native.limitCapabilities(capMask(EMBEDDED_KEEPER_BOUNDING), capMask(EMBEDDED_KEEPER_EFFECTIVE));
    else native.limitCapabilities(0, 0);
  }

  /** Serves one already connected keeper.sock peer (in-process tests use a socketpair). */
  adoptPeer(fd: number, pid: number, role: PeerRole = 'worker'): KeeperPeer {
    if (this.socket === null) throw new Error('keeper not started');
    return this.socket.adopt(fd, pid, role);
  }

  // --- a keeper re-exec (keeper/reexec.ts, docs/ARCHITECTURE.md "Upgrades")

  /** The second half of a re-exec, in the new image: the connections, the serving worker (our
   * child still) and the counters of the image before; then the upgrade that asked for it goes
   * on with the worker's part. */
  private resumeFromHandoff(h: KeeperHandoff): void {
    const peerByFd = new Map<number, KeeperPeer>();
    for (const p of h.peers) {
      const peer = this.socket!.adopt(p.fd, p.pid, p.role);
      peer.refused = p.refused;
      peerByFd.set(p.fd, peer);
    }
    this.startedAt = h.keeper.startedAt;
    this.error = h.keeper.error;
    this.lastStatus = h.keeper.lastStatus;
    this.lastControlReply = h.keeper.lastControlReply;
    this.reexecs = h.keeper.reexecs + 1;
    this.supervisor.adoptHandoff(h.supervisor);
    this.servingPeer = peerByFd.get(h.supervisor.worker.connFd) ?? null;
    const u = h.upgrade;
    const ms = u !== null ? Math.round(Number(process.hrtime.bigint() - BigInt(u.execNs)) / 1e4) / 100 : null;
    this.lastReexec = { fromVersion: u?.fromVersion ?? h.version, toVersion: VERSION, ms: ms ?? 0, at: new Date().toISOString() };
    this.log.info({ fromVersion: h.version, toVersion: VERSION, reexecs: this.reexecs, fds: this.store.size, workerPid: this.supervisor.workerPid, execMs: ms },
      'keeper re-executed: the session, its fds and the serving worker carried over');
    if (u === null) return;
    const replyTo = u.replyFd !== null ? peerByFd.get(u.replyFd) ?? null : null;
    const keeperPart = { keeperFrom: u.fromVersion, keeperTo: VERSION, keeperMs: ms };
    this.supervisor.startUpgrade(u.timeoutMs, (result) => {
      if (replyTo !== null && this.socket?.isOpen(replyTo)) this.socket.send(replyTo, { type: 'upgraded', result: { ...result, ...keeperPart } });
    });
  }

  /** X_UPGRADE with X_KEEPER=1: this keeper re-execs into the installed build (the serving
   * worker keeps serving meanwhile), and the new image then upgrades the worker as usual. */
  private async upgradeKeeper(peer: KeeperPeer, timeoutMs: number | null, answer: (r: UpgradeResult) => void): Promise<void> {
    const startedNs = process.hrtime.bigint();
    const end = (result: 'refused' | 'failed', reason: string): void => {
      const r: UpgradeResult = { result, mode: null, oldPid: this.supervisor.workerPid, newPid: null, oldVersion: null, newVersion: null, pauseMs: null,
        drainMs: null, left: 0, totalMs: Math.round(Number(process.hrtime.bigint() - startedNs) / 1e4) / 100, reason: `keeper re-exec ${result}: ${reason}`,
        at: new Date().toISOString(), keeperFrom: VERSION, keeperTo: null, keeperMs: null };
      this.log.warn({ reason }, `keeper re-exec ${result}`);
      this.supervisor.recordKeeperOnlyUpgrade(r);
      answer(r);
    };
    const blocker = (): string | null => {
      if (this.opts.reexec === undefined) return 'this keeper was not started from an installed command (no script to re-exec)';
      if (this.sd !== null) return 'the keeper runs under systemd (restart its unit: systemd\'s fd store keeps the session)';
      if (this.servingPeer === null || !this.socket?.isOpen(this.servingPeer)) return 'no worker is serving';
      return this.supervisor.reexecBlocker();
    };
    if (this.reexecInProgress) return end('refused', 'a keeper re-exec is already in progress');
    const why = blocker();
    if (why !== null) return end('refused', why);
    this.reexecInProgress = true;
    try {
      // execve does not come back: the installed build must start and read our handoff.
      const check = await checkInstalledKeeper(this.opts.reexec!.checkBin);
      if (check.error !== null) return end('refused', check.error);
      await this.supervisor.dropStandbyForReexec();
      const late = blocker();
      if (late !== null) {
        this.supervisor.reexecAborted();
        return end('failed', late);
      }
      // Nothing of a fetch may be half-sent: no peer may be fetching (a takeover in progress).
      const { listenFd, peers } = this.socket!.handoff();
      if (peers.some((p) => p.fetch !== null)) {
        this.supervisor.reexecAborted();
        return end('failed', 'a worker is fetching the fd set');
      }
      const h: KeeperHandoff = {
        format: HANDOFF_FORMAT, version: VERSION, start: this.opts.startArgs ?? null,
        store: this.store.entries(), keepOpen: this.opts.keepOpenFds ?? [], keeperSocketFd: listenFd,
        peers: peers.map((p) => ({ fd: p.fd, pid: p.pid, role: p.role, refused: p.refused })),
        keeper: { startedAt: this.startedAt, error: this.error, lastStatus: this.lastStatus, lastControlReply: this.lastControlReply, reexecs: this.reexecs },
        supervisor: this.supervisor.handoff(this.servingPeer!.fd),
        upgrade: { replyFd: this.socket!.isOpen(peer) ? peer.fd : null, timeoutMs, startedNs: startedNs.toString(), execNs: process.hrtime.bigint().toString(), fromVersion: VERSION },
      };
      this.log.info({ fromVersion: VERSION, toVersion: check.version, fds: this.store.size, script: this.opts.reexec!.script }, 'keeper re-executing itself');
      const argv = [process.execPath, ...process.execArgv, this.opts.reexec!.script, ...process.argv.slice(2)];
      const err = execWithHandoff(h, argv, process.env);
      // Only a failed execve comes back, with everything as it was.
      this.supervisor.reexecAborted();
      end('failed', `execve: ${err.message}`);
    } finally {
      this.reexecInProgress = false;
    }
  }

  private sdNotify(fields: Record<string, string | number>): void {
    if (this.sd === null) return;
    try {
      this.sd.notify(fields);
    } catch (e) {
      this.log.warn({ err: errorInfo(e) }, 'sd_notify failed');
    }
  }

  // --- keeper.sock messages

  /** Changes whenever the keeper did some work (see `messages`). */
  get activity(): number {
    return this.messages;
  }

  onMessage(peer: KeeperPeer, msg: ToKeeper, fds: number[]): void {
    if (msg.type !== 'stats') this.messages++;
    switch (msg.type) {
      case 'store':
        msg.names.forEach((n, i) => this.store.put(n, fds[i]!));
        return;
      case 'remove':
        for (const n of msg.names) this.store.drop(n);
        return;
      case 'controlReply':
        this.forwardControlReply(msg.seq, msg.data, fds);
        return;
      case 'fetch':
        // Messages a dead predecessor left queued go first, so the snapshot holds them all.
        this.socket!.drainDead(peer);
        peer.fetch = { names: this.store.names(), next: 0, window: msg.window ?? null };
        this.sendFdWindow(peer);
        return;
      case 'fetchNext':
        if (peer.fetch === null) throw new KeeperProtocolError('FDFETCHNEXT without FDFETCH');
        this.sendFdWindow(peer);
        return;
      case 'notify':
        if (msg.status !== null) this.lastStatus = msg.status;
        if (msg.ready && this.supervisor.onReady(peer, msg.worker ?? null)) {
          this.servingPeer = peer;
          // A worker serves: why an earlier one could not start is history, and QEMU's
          // connection is its to watch again.
          this.error = null;
          this.hangupPoller?.close();
          this.hangupPoller = null;
          this.sdNotify({ STATUS: `worker ${this.supervisor.hostPidOf(peer.pid) ?? peer.pid} serving; ${this.supervisor.restartCount} restarts` });
        }
        if (msg.stopping) this.supervisor.onStopping(peer);
        return;
      case 'progress':
        this.supervisor.onProgress(peer);
        return;
      case 'served':
        this.supervisor.onServed(peer);
        return;
      case 'stats':
        this.lastStats = msg.stats;
        this.writeMetrics();
        return;
      case 'setError':
        this.error = msg.error;
        return;
      case 'standby':
        this.supervisor.onStandby(peer, msg.worker ?? null);
        return;
      case 'upgrade': {
        // From the CLI (an observer): answered when the upgrade is over, on this connection (if
        // the CLI is still there: its fd number may name another connection by then), or, when
        // detached, at once unless it was refused at once (the outcome goes to status).
        let answered = false;
        const answer = (result: UpgradeResult): void => {
          if (answered) return;
          answered = true;
          if (this.socket?.isOpen(peer)) this.socket.send(peer, { type: 'upgraded', result });
        };
        if (msg.keeper === true) void this.upgradeKeeper(peer, msg.timeoutMs, answer);
        else this.supervisor.startUpgrade(msg.timeoutMs, answer);
        if (msg.detach) {
          answer({ result: 'started', mode: null, oldPid: null, newPid: null, oldVersion: null, newVersion: null,
            pauseMs: null, drainMs: null, left: 0, totalMs: 0, reason: null, at: new Date().toISOString() });
        }
        return;
      }
      case 'drained':
        this.supervisor.onDrained(peer, msg.pausedNs, msg.left);
        return;
      case 'resumed':
        this.supervisor.onResumed(peer, msg.resumedNs);
        this.writeMetrics();
        return;
      case 'sync':
        // Every earlier message of this peer is handled (one connection, read in order).
        this.socket!.send(peer, { type: 'synced', seq: msg.seq, refused: peer.refused });
        peer.refused = [];
        return;
      case 'statusQuery': {
        const status = this.status();
        const fits = encodeFromKeeper({ type: 'status', status }).length <= MAX_MESSAGE_SIZE;
        // Per-name counts are the one part that grows; without them the status always fits.
        this.socket!.send(peer, { type: 'status', status: fits ? status : { ...status, fdNames: {} } });
        return;
      }
    }
  }

  onClose(peer: KeeperPeer): void {
    if (this.supervisor.embedded || this.stopping || peer.role !== 'worker') return;
    // systemd mode: a worker's link closed, so it died: a waiting standby takes over, and
    // systemd restarts its unit.
    const pid = this.supervisor.workerPid;
    this.supervisor.onPeerClosed(peer);
    if (pid === peer.pid) {
      const next = this.supervisor.workerPid;
      this.sdNotify({ STATUS: next !== null ? `worker died; standby ${next} took over` : 'worker died; waiting for systemd to restart it' });
    }
  }

  /** Control replies go to the frontend through the keeper, deduplicated by sequence number,
   * so a worker that dies around the send cannot make QEMU miss or double-read a reply. */
  private forwardControlReply(seq: number, data: Buffer, fds: number[]): void {
    try {
      if (seq <= this.lastControlReply) return;
      const conn = this.store.get('vhost.conn');
      if (conn === undefined) throw new KeeperProtocolError('control reply without a frontend connection');
      const n = native.sendMsg(conn, data, fds);
      if (n !== data.length) this.log.error({ seq, sent: n, len: data.length }, 'control reply not fully sent');
      this.lastControlReply = seq;
    } finally {
      for (const fd of fds) native.close(fd);
    }
  }

  /**
   * FDFETCH starts a transfer of a snapshot of the whole fd set; FDFETCHNEXT asks for the next
   * batch. The worker pulls one batch (at most SCM_MAX_FD fds) at a time, so a large set (100k
   * inodes) never overfills the socket buffer. Nothing else changes the store while a worker
   * fetches (its predecessor is dead and drained), and names cost no fds.
   */
  private sendFdWindow(peer: KeeperPeer): void {
    for (let i = 0; i < (peer.fetch!.window ?? 1); i++) {
      if (!this.sendFdBatch(peer) || peer.fetch === null) return;
    }
  }

  /** One batch; false when the connection was closed. */
  private sendFdBatch(peer: KeeperPeer): boolean {
    const f = peer.fetch!;
    const names: string[] = [];
    const fds: number[] = [];
    while (names.length < SCM_MAX_FD && f.next < f.names.length) {
      const name = f.names[f.next++]!;
      const fd = this.store.get(name);
      if (fd !== undefined) {
        names.push(name);
        fds.push(fd);
      }
    }
    const more = f.next < f.names.length;
    const msg = { type: 'fdSet' as const, names, more, ctlSeq: this.lastControlReply, keeper: { noFile: this.noFile, sync: true, upgrade: true },
      ...(f.window !== null ? { window: f.window } : {}) };
    if (!this.socket!.send(peer, msg, fds)) return false;
    if (!more) peer.fetch = null;
    return true;
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

  /** <state dir>/metrics.prom, for node_exporter's textfile collector (written atomically). */
  private writeMetrics(): void {
    const file = path.join(this.opts.stateDir, 'metrics.prom');
    try {
      fs.writeFileSync(`${file}.new`, formatPrometheus([buildReport(this.status(), this.opts.stateDir)]));
      fs.renameSync(`${file}.new`, file);
    } catch (e) {
      this.log.warn({ err: errorInfo(e) }, 'cannot write metrics.prom');
    }
  }

  status(): KeeperStatus {
    const { worker, recovery } = this.supervisor.status(this.lastStatus);
    return {
      keeper: { pid: process.pid, startedAt: this.startedAt, fdsHeld: this.store.size, stateDir: this.opts.stateDir,
        socketPath: this.opts.socketPath, sharedDir: this.opts.sharedDir, error: this.error, version: VERSION,
        reexecs: this.reexecs, lastReexec: this.lastReexec },
      worker,
      recovery,
      fdNames: this.store.countsByKind(),
      workerStats: this.lastStats,
      upgrades: this.supervisor.upgradeStatus(),
    };
  }

  async stop(reason: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.store.keepMirrored();
    this.log.info({ reason }, 'keeper stopping');
    this.sdNotify({ STOPPING: 1, STATUS: `stopping: ${reason}` });
    await this.supervisor.stop();
    this.finish(0);
  }

  private finish(code: number): void {
    this.socket?.closeAll();
    this.socket = null;
    this.hangupPoller?.close();
    this.hangupPoller = null;
    // systemd keeps its copies of the fds for the next keeper.
    this.store.closeAll();
    // Under systemd the listening socket lives on in the fd store: keep its path for the
    // restarted keeper.
    const unlinkSocket = this.sd === null && (this.opts.unlinkSocket ?? this.opts.listenFd === undefined);
    const paths = unlinkSocket ? [this.opts.socketPath, keeperSocketPath(this.opts.stateDir)] : [keeperSocketPath(this.opts.stateDir)];
    for (const p of paths) {
      try { fs.unlinkSync(p); } catch { /* already gone */ }
    }
    if (this.opts.removeStateDir === true && this.sd === null) {
      try {
        fs.rmSync(this.opts.stateDir, { recursive: true, force: true });
      } catch (e) {
        this.log.warn({ err: errorInfo(e), stateDir: this.opts.stateDir }, 'cannot remove the state directory');
      }
    }
    this.log.info('keeper stopped');
    this.resolveDone?.(code);
  }
}
