// The worker process: serves FUSE-over-virtio for one export. It holds nothing the service
// cannot lose: every fd is mirrored in the keeper (FdRegistry → KeeperClient) and every other
// piece of session state is in the state file (StateStore) before the guest or QEMU can
// observe it, in the order the durability barrier (state/durability.ts) owns. Started fresh it
// accepts QEMU; started after a crash it resumes the session.
import * as fs from 'node:fs';
import { logger, type Logger } from '../shared/log';
import { native, POLL_READABLE, type FastFuseHandle, type Poller } from '../shared/native';
import type { FastPathStats } from '../shared/status_report';
import { FdRegistry } from '../shared/fd_registry';
import { DEFAULT_INODE_FILE_HANDLES, DEFAULT_RLIMIT_NOFILE, type InodeFileHandles, EXIT_HANDED_OVER, EXIT_SERVICE_OVER, EXIT_START_FAILED, EXIT_STATE_UNUSABLE, keeperSocketPath, readWorkerConfig, stateFilePath, type WorkerConfig } from '../shared/config';
import { KeeperClient, type FdStoreRefusedError } from '../shared/keeper_client';
import { notifyFields, type WorkerInfo } from '../shared/keeper_protocol';
import { VERSION } from '../shared/version';
import { checkStateDir } from '../shared/state_dir';
import { VhostUserBackend } from './vhost/backend';
import { errorInfo, errorKind, startFailurePolicy } from '../shared/errors';
import { VirtioFsDevice } from './device';
import { FuseServer } from './fuse/server';
import { FUSE_DO_READDIRPLUS, FUSE_FLOCK_LOCKS, FUSE_POSIX_LOCKS, FUSE_READDIRPLUS_AUTO, opcodeName } from './fuse/constants';
import { DEFAULT_INODE_FD_CACHE, PassthroughFs } from './fs/passthrough';
import { MIN_CAPACITY } from './fs/inode_fds';
import { loadState, SCHEMA_MIN_READER, SCHEMA_VERSION, StateLoader, StateStore, type LoadedState } from './state/state_store';
import { pendingControl } from './state/control_records';
import { UnjournaledLedger } from './state/request_log';
import { armNativeCrash, crashPoint, dieNow } from '../shared/crash_points';
import { nativeRingFactory } from './virtqueue/native_ring';
import { faultPoint } from '../shared/fault_points';
import { LogRateLimiter } from '../shared/rate_limit';
import { SdNotifier, watchdogIntervalMs } from '../shared/sd_notify';
import { existsAt } from '../shared/pinned_dirs';
import { growFdTable } from '../shared/fd_table';
import { actAsInit, enterSandbox } from './sandbox';
import { IdleMemoryReducer, reduceMemory } from '../shared/memory';


/** Who this worker is, told to the keeper with READY and X_STANDBY (its upgrade checks). */
export const WORKER_INFO: WorkerInfo = { version: VERSION, schema: SCHEMA_VERSION, minReader: SCHEMA_MIN_READER, drain: true };
/** How long a drain waits for requests in flight; the rest are left to the successor. */
const DRAIN_DEADLINE_MS = 1_000;

/** fds that belong to the service, not to one frontend session. */
const SERVICE_FDS = new Set(['root', 'vhost.listen']);
const STATS_INTERVAL_MS = 1000;

export class Worker {
  private readonly log: Logger;
  private readonly registry = new FdRegistry();
  private store!: StateStore;
  private listenPoller: Poller | null = null;
  private readonly acceptErrors = new LogRateLimiter();
  private backend: VhostUserBackend | null = null;
  private fsImpl: PassthroughFs | null = null;
  private fastPath: FastFuseHandle | null = null;
  private server: FuseServer | null = null;
  private statsTimer: NodeJS.Timeout | null = null;
  private inodeFdCache = DEFAULT_INODE_FD_CACHE;
  private watchdogTimer: NodeJS.Timeout | null = null;
  /** Gives memory back once the queues have been idle for a while (shared/memory.ts). */
  private readonly idleReducer = new IdleMemoryReducer(() => this.activity(), logger('memory'));
  /** systemd's notify socket when systemd runs this worker (virtiofs-worker@.service). */
  private readonly sd: SdNotifier | null = SdNotifier.fromEnv();
  private lastAvailSeen = new Map<number, number>();
  private resolveDone: ((code: number) => void) | null = null;
  readonly done: Promise<number>;
  /** Monotonic ns marks of a resume (logged with the first served request: recovery timing). */
  private readonly marks: Array<[string, bigint]> = [];
  /** A standby's load of the state file, followed while it waits: its takeover folds only the
   * records committed since the last step (docs/ARCHITECTURE.md, "Recovery of a large session"). */
  private preload: StateLoader | null = null;
  private preloadTimer: NodeJS.Timeout | null = null;
  /** Preload steps that folded something: a standby following a busy journal allocates as much
   * as the worker it follows, and gives it back once the journal has been quiet a while. */
  private preloadFolds = 0;
  /** The preload's fold (StateLoader.restarts) whose snapshot had its fd-holding inodes
   * decoded (-1: none yet). */
  private preloadDecodedFold = -1;
  private readonly preloadReducer = new IdleMemoryReducer(() => this.preloadFolds, logger('memory'));

  /** `spawnedByKeeper`: an embedded keeper started us (our connection was inherited), not
   * systemd. */
  constructor(private readonly config: WorkerConfig, private readonly keeper: KeeperClient, private readonly spawnedByKeeper = false) {
    this.log = logger('worker');
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
  }

  /**
   * The keeper could not take fds that outcomes about to be journaled name (it was out of fds
   * for longer than the client's retries). Journaling them would break "fds in the keeper
   * before the outcome is durable", and the requests' syscalls have happened, so the one safe
   * answer is to die now, before the commit: the successor rolls those requests back and runs
   * them again once the keeper can hold their fds (the crash-loop backoff paces it).
   */
  private storesRefused(e: FdStoreRefusedError): never {
    this.log.fatal({ err: errorInfo(e), fds: e.names.length }, 'the keeper refused fds; dying before anything names them, for a successor to replay');
    // Not process.kill(SIGKILL): as PID 1 of its pid namespace the worker ignores its own.
    dieNow();
  }

  /**
   * The keeper is gone (killed). Under systemd it comes back with every fd from its fd store and
   * BindsTo= stops this worker: die now, before anything needs it (a request whose fd store
   * failed must not be answered); requests not yet published are replayed by a successor under
   * the new keeper. Embedded (we were spawned, so the keeper was `run` or the virtiofsd entry
   * point libvirt launched), nothing will restart it: dying would end the guest's session, as a
   * crashed virtiofsd does. Instead a worker serving a frontend serves on without it (stores,
   * syncs and reports dropped, control replies sent to QEMU directly): the guest keeps working,
   * but the session is no longer crash-safe, and this worker's own end now ends it.
   */
  private keeperGone(e: Error): void {
    const backend = this.backend;
    if (this.spawnedByKeeper && backend !== null && !this.keeper.orphaned) {
      this.keeper.orphan((data, fds) => backend.sendFramedReply(data, fds));
      this.log.error({ err: errorInfo(e) },
        'the keeper is gone and nothing will restart it: serving on without it; this session is no longer crash-safe (a crash of this worker now ends it)');
      return;
    }
    if (this.keeper.orphaned) return;
    this.log.fatal({ err: errorInfo(e) }, 'the keeper is gone; dying before anything needs it, for a successor under its successor');
    // Not process.kill(SIGKILL): as PID 1 of its pid namespace the worker ignores its own.
    dieNow();
  }

  /** What must happen before the worker is confined: systemd's notify socket is connected
   * while its path is reachable. */
  beforeSandbox(): void {
    this.sd?.connect();
  }

  /** A standby systemd started: its unit is active once the standby is loaded and confined
   * (Type=notify), and the keeper.sock READY (which would make it the serving worker) waits for
   * the takeover. */
  announceStandby(): void {
    this.sdNotify({ READY: 1, STATUS: 'standby: loaded, waiting for the keeper to hand over the session' });
  }

  /** While on standby under systemd: the unit's watchdog is kept happy as long as the event
   * loop runs (a SIGSTOPped or wedged standby is replaced, as a wedged worker is). */
  standbyWatchdogTick(): void {
    this.sdNotify({ WATCHDOG: 1 });
  }

  /** Changes whenever a request was popped or the frontend (dis)connected: the idle reducer's
   * signal. lastAvail is a u16 per queue; a wrap of exactly 65536 in one interval is missed
   * for one interval only. */
  private activity(): number {
    let n = this.backend === null ? 0 : 1;
    for (const q of this.backend?.queueStats() ?? []) n += q.lastAvail + 65536 * q.index;
    return n;
  }

  /** A standby loads the session now and follows the serving worker's journal until its
   * takeover (stopPreloading). */
  startPreloading(): void {
    this.preloadStep();
    this.preloadTimer = setInterval(() => this.preloadStep(), PRELOAD_INTERVAL_MS);
    this.preloadReducer.start();
  }

  stopPreloading(): void {
    if (this.preloadTimer !== null) clearInterval(this.preloadTimer);
    this.preloadTimer = null;
    this.preloadReducer.stop();
  }

  private preloadStep(): void {
    const path = stateFilePath(this.config.stateDir);
    try {
      if (this.preload === null) {
        if (!existsAt(path)) return;
        this.preload = new StateLoader(path);
      }
      // The inodes whose fds the keeper holds are all checked at the takeover (reconcile, the
      // fd verification): decoded now, not then (18,000 of them cost ~100 ms). Only a fold that
      // started from a file's snapshot has undecoded ones: records add decoded inodes, and a
      // walk over every inode at each step cost the standby more than folding the records.
      if (this.preload.catchUp()) {
        this.preloadFolds++;
        const session = this.preload.session;
        if (session !== null && this.preload.restarts !== this.preloadDecodedFold) {
          session.inodesWithoutHandle();
          this.preloadDecodedFold = this.preload.restarts;
        }
      }
    } catch (e) {
      // The takeover loads the file from the start instead, and reports what is wrong with it
      // with the usual consequences (a state error stops the restarts): a standby does not
      // judge. No more tries: a broken file would be read in full every step.
      this.log.warn({ err: errorInfo(e) }, 'cannot preload the state file on standby; the takeover will load it');
      this.preload?.close();
      this.preload = null;
      this.stopPreloading();
    }
  }

  /** The session from the state file: what the standby preloaded plus the tail, or all of it. */
  private loadStateFile(path: string): LoadedState {
    const preload = this.preload;
    this.preload = null;
    if (preload !== null) {
      try {
        preload.catchUp();
        const loaded = preload.finish();
        this.log.debug({ fromScratch: preload.restarts > 1 }, 'state loaded on standby; folded its tail at takeover');
        return loaded;
      } catch (e) {
        preload.close();
        this.log.warn({ err: errorInfo(e) }, 'the preloaded state does not continue; loading the state file from the start');
      }
    }
    return loadState(path);
  }

  /** Records a phase of the start (process.hrtime is CLOCK_MONOTONIC, comparable with the keeper's). */
  mark(what: string): void {
    this.marks.push([what, process.hrtime.bigint()]);
  }

  start(): void {
    this.mark('start');
    const ownNoFile = native.raiseNoFileLimit(this.config.rlimitNofile ?? DEFAULT_RLIMIT_NOFILE);
    faultPoint('resume-fetch');
    const { fds, ctlSeq, keeper: caps } = this.keeper.fetchAll();
    // The inode fd cache is the worker's alone: its size comes off the worker's share.
    this.inodeFdCache = inodeFdCacheSize(ownNoFile, this.config.inodeFileHandles ?? DEFAULT_INODE_FILE_HANDLES);
    this.registry.setCapacity(fdBudget(ownNoFile - this.inodeFdCache, caps.noFile));
    this.keeper.onStoresRefused = (e) => this.storesRefused(e);
    this.keeper.onKeeperGone = (e) => this.keeperGone(e);
    // From READY on (sent below, in the middle of this synchronous start) the keeper may ask for
    // a drain: a synchronous wait for X_SYNCED that meets it must take it for us. It runs from
    // the event loop, so after this start.
    this.keeper.watchDrain(() => void this.drain());
    this.mark('fetched');
    for (const [name, fd] of fds) if (!name.startsWith('ctl.')) this.registry.adopt(name, fd);
    this.registry.addListener(this.keeper);
    if (!this.registry.has('root') || !this.registry.has('vhost.listen')) {
      throw new Error('the keeper holds no root or vhost.listen fd');
    }
    const statePath = stateFilePath(this.config.stateDir);
    let loaded: LoadedState | null = null;
    let reconciled = false;
    if (this.registry.has('vhost.conn') && existsAt(statePath)) {
      faultPoint('resume-journal-open');
      loaded = this.loadStateFile(statePath);
      this.mark('loaded');
      if (loaded.vhost === null) loaded = null;
      else reconciled = this.reconcile(loaded) > 0;
    }
    this.preload?.close();
    this.preload = null;
    // Changes reconcile() made are not in the journal: then the store starts a new one.
    this.store = new StateStore(statePath, this.keeper, loaded, ctlSeq, reconciled);
    if (loaded !== null) {
      this.resume(loaded, fds);
    } else {
      for (const [, fd] of fds) if (!this.registry.names().some((n) => this.registry.get(n) === fd)) native.close(fd);
      this.dropSessionFds();
      this.store.recordNewSession(null);
      this.listen();
    }
    // The queues run (or the listening socket is polled) from here on: the end of an upgrade's
    // pause, which the keeper measures from the predecessor's last pop.
    if (this.keeper.keeperUpgrades) this.keeper.notify({ type: 'resumed', resumedNs: process.hrtime.bigint() });
    this.sendStats();
    this.statsTimer = setInterval(() => this.sendStats(), STATS_INTERVAL_MS);
    this.statsTimer.unref();
    this.idleReducer.start();
    const wd = watchdogIntervalMs();
    if (this.sd !== null && wd !== null) {
      this.watchdogTimer = setInterval(() => this.watchdogTick(), Math.max(10, wd / 2));
      this.watchdogTick();
    }
  }

  /**
   * WATCHDOG=1 only while the queues make progress or are idle: a queue with buffers the
   * guest made available that we have not consumed since the last tick means the worker is
   * wedged, and systemd should replace it. (A wedged event loop sends nothing at all.)
   * Requests that legitimately block in the threadpool (SETLKW) do not stop the pings.
   */
  private watchdogTick(): void {
    const stats = this.backend?.queueStats() ?? [];
    let stuck = false;
    const seen = new Map<number, number>();
    for (const q of stats) {
      if (!q.running) continue;
      seen.set(q.index, q.lastAvail);
      if (q.pending !== 0 && this.lastAvailSeen.get(q.index) === q.lastAvail) stuck = true;
    }
    this.lastAvailSeen = seen;
    if (stuck) {
      this.log.warn({ queues: stats }, 'queues are not making progress: withholding the watchdog ping');
      return;
    }
    this.sdNotify({ WATCHDOG: 1 });
  }

  private sdNotify(fields: Record<string, string | number>): void {
    if (this.sd === null) return;
    try {
      this.sd.notify(fields);
    } catch (e) {
      this.log.warn({ err: errorInfo(e) }, 'sd_notify failed');
    }
  }

  /** Status to the keeper and, under systemd, to systemd. */
  private announce(n: { ready?: boolean; stopping?: boolean; status: string }): void {
    this.keeper.notify({ type: 'notify', ready: n.ready ?? false, stopping: n.stopping ?? false, status: n.status, worker: n.ready ? WORKER_INFO : null });
    this.sdNotify(notifyFields(n));
  }

  /**
   * A request that died after closing an fd in the keeper but before its outcome was journaled
   * (RELEASE, RELEASEDIR, the last FORGET) had its session change rolled back: the fd is gone
   * while the session still names it. The close did happen, so finish it in the session; the
   * resubmitted request then settles as already done.
   */
  private reconcile(loaded: LoadedState): number {
    const session = loaded.fs;
    if (session === null) return 0;
    const missing = (name: string): boolean => !this.registry.has(name);
    // An open file or dir of an inode named by a handle may never have reached the keeper
    // (KeeperClient.sendSoon): PassthroughFs.resume opens it again. A close that did
    // happen is then made again by the resubmitted request.
    const byHandle = (nodeid: number): boolean => (session.getInode(nodeid)?.handle ?? null) !== null;
    const files = [...session.allFiles()].filter((f) => missing(f.fdName) && !byHandle(f.nodeid));
    const dirs = [...session.allDirs()].filter((d) => missing(d.fdName) && !byHandle(d.nodeid));
    // An inode named by a handle has no fd in the keeper to miss.
    const inodes = session.inodesWithoutHandle().filter((i) => i.nodeid !== 1 && missing(i.fdName));
    for (const f of files) session.closeFile(f.fh);
    for (const d of dirs) session.closeDir(d.fh);
    for (const i of inodes) session.forget(i.nodeid, i.lookupCount);
    const dropped = files.length + dirs.length + inodes.length;
    if (dropped > 0) this.log.warn({ dropped }, 'finished closes that a dead worker made in the keeper but not in the journal');
    return dropped;
  }

  /** Closes (in the keeper too) every fd of a previous frontend session. */
  private dropSessionFds(): void {
    for (const name of this.registry.names()) if (!SERVICE_FDS.has(name)) this.registry.close(name);
  }

  private listen(): void {
    const fd = this.registry.get('vhost.listen')!;
    this.listenPoller = new native.Poller(fd, () => this.acceptOne());
    this.listenPoller.start(POLL_READABLE);
    this.announce({ ready: true, status: 'waiting for the vhost-user frontend' });
    this.log.info({ socketPath: this.config.socketPath }, 'waiting for the vhost-user frontend');
  }

  private acceptOne(): void {
    let fd: number;
    try {
      fd = native.accept(this.registry.get('vhost.listen')!);
    } catch (e) {
      // At EMFILE the pending connection would wake the poller at once, for ever: pause it.
      const dropped = this.acceptErrors.admit();
      if (dropped !== null) this.log.error({ err: errorInfo(e), dropped }, 'accept of the frontend failed; retrying');
      this.listenPoller?.stop();
      const retry = setTimeout(() => this.listenPoller?.start(POLL_READABLE), ACCEPT_RETRY_MS);
      retry.unref();
      return;
    }
    if (fd < 0) return;
    if (this.backend !== null) {
      this.log.warn('refusing a second frontend connection');
      native.close(fd);
      return;
    }
    // The keeper holds the connection before we read a byte from it: from here on QEMU never
    // sees it close, whatever happens to this process.
    this.registry.register('vhost.conn', fd);
    crashPoint('after-accept');
    this.listenPoller?.close();
    this.listenPoller = null;
    const peer = native.peerCred(fd);
    this.log.info({ peerPid: peer.pid }, 'frontend connected');
    this.startSession(fd, null);
  }

  private resume(loaded: LoadedState, fetched: Map<string, number>): void {
    const t0 = process.hrtime.bigint();
    const pending = loaded.pending ? pendingControl(loaded.pending, fetched) : null;
    for (const [name, fd] of fetched) if (name.startsWith('ctl.') && !(pending?.fds.includes(fd))) native.close(fd);
    this.startSession(this.registry.get('vhost.conn')!, loaded);
    crashPoint('resume-after-ready');
    this.mark('session');
    this.backend!.restore(loaded.vhost!, pending);
    // Every resubmitted request has consulted the journal by now (dispatch is synchronous).
    const pruned = this.store.requests.pruneLoadedOps();
    if (pruned > 0) this.log.debug({ pruned }, 'dropped the recorded outcomes of requests published before the death');
    this.mark('restored');
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    this.log.info({ resumeMs: Math.round(ms * 10) / 10, inodes: this.fsImpl?.session.inodeCount }, 'resumed the session from the keeper');
  }

  private startSession(connFd: number, loaded: LoadedState | null): void {
    const fastPath = fastPathEnabled(this.config) ? new native.FastFuse() : null;
    if (fastPath !== null) armNativeCrash(fastPath);
    const fsImpl = new PassthroughFs({
      registry: this.registry, cache: this.config.cache, xattr: this.config.xattr, logger: logger('fs'),
      maxLockWaits: this.config.maxLockWaits,
      ...(this.config.rlimitNofile !== undefined ? { noFileLimit: this.config.rlimitNofile } : {}),
      inodeFileHandles: this.config.inodeFileHandles ?? DEFAULT_INODE_FILE_HANDLES,
      inodeFdCache: this.inodeFdCache,
      fastPath,
      ...(loaded?.fs ? { session: loaded.fs } : {}),
    });
    if (loaded === null) this.store.recordNewSession(fsImpl.session);
    // Benchmark-only: measures what crash safety costs. Never for production use.
    const journaling = process.env.VFSK_BENCH_NO_JOURNAL !== '1';
    if (journaling) fsImpl.session.onMutation(this.store.onFsMutation);
    else this.log.warn('VFSK_BENCH_NO_JOURNAL=1: request and session journaling is OFF; a worker crash will lose state');
    // The addon's CREATE, MKDIR, UNLINK and RMDIR journal their intents themselves, into the
    // journal's mapping, and a batch of requests that changed nothing but their replies
    // (SETATTR, UNLINK, RMDIR, failed CREATEs and MKDIRs) its outcomes too (native/src/ring.cc
    // JournalOwnBatch); UNLINK and RMDIR need the keeper to hold every open fd first (as
    // passthrough.ts unlink).
    this.fastPath?.setJournal(null);
    if (fastPath !== null) {
      if (journaling) this.store.onJournalMapped((map) => fastPath.setJournal(map));
      else fastPath.setUnjournaled(true);
      fastPath.setLookupsRecords(journaling && !this.store.requests.baseSchemaOnlyNow);
      this.keeper.onSettledChange = (settled) => fastPath.setSettled(settled);
      fastPath.setSettled(this.keeper.settled);
    }
    const server = new FuseServer(fsImpl, {
      cache: this.config.cache,
      withheldInitFlags: withheldInitFlags(this.config),
      readonly: this.config.readonly === true,
      restoredInit: loaded?.init ?? null,
      onInit: (init) => this.store.recordInit(init),
      // Without journaling the keeper stores are still batched per turn, so the benchmark's
      // on/off rows differ by the journal alone.
      ledger: journaling ? this.store.requests : new UnjournaledLedger(this.store.durability),
      fastPath,
    }, logger('fuse'));
    // Every queue runs the durability barrier just before it publishes used elements.
    const device = new VirtioFsDevice(this.config.requestQueues, server, logger('virtqueue'), this.store.durability,
      fastPath !== null ? nativeRingFactory(fastPath) : undefined);
    if (loaded !== null) device.onFirstCompletion(() => this.onFirstServed());
    // A served request is the progress the keeper's crash-loop backoff waits for.
    else device.onFirstCompletion(() => this.keeper.notify({ type: 'progress' }));
    this.fsImpl = fsImpl;
    this.server = server;
    this.fastPath = fastPath;
    this.backend = new VhostUserBackend(connFd, device, this.registry, logger('vhost'), (reason) => this.onDisconnect(reason), this.store.control);
    this.store.setSources({
      vhost: () => this.backend?.state() ?? null,
      init: () => this.server?.init ?? null,
      fs: () => this.fsImpl?.session ?? null,
    });
    this.announce({ ready: true, status: loaded ? 'serving (resumed after a worker restart)' : 'serving' });
  }

  private onFirstServed(): void {
    this.keeper.notify({ type: 'served' });
    this.mark('served');
    // Phase ends in monotonic ns (for the recovery benchmark's timeline) and ms since the first mark.
    const t0 = this.marks[0]![1];
    this.log.info({
      phasesMs: Object.fromEntries(this.marks.map(([k, t]) => [k, Math.round(Number(t - t0) / 1e4) / 100])),
      phasesNs: Object.fromEntries(this.marks.map(([k, t]) => [k, t.toString()])),
    }, 'first request served after resume');
  }

  private onDisconnect(reason: string): void {
    // What the addon served this session, beside what TypeScript did (the status counters end here).
    this.log.info({ reason, fastPath: fastPathStats(this.fastPath) }, 'frontend disconnected');
    this.server?.reset();
    this.backend = null;
    this.server = null;
    this.fsImpl = null;
    this.dropSessionFds();
    this.store.recordNewSession(null);
    if (this.config.keepListening) {
      this.listen();
      return;
    }
    this.announce({ stopping: true, status: 'frontend disconnected' });
    this.finish(EXIT_SERVICE_OVER);
  }

  /**
   * X_DRAIN, a planned upgrade: stop taking requests and control messages, finish what is in
   * flight (but parked lock waits, or whatever is left at DRAIN_DEADLINE_MS: the successor
   * resubmits those, exactly once, as after a crash), publish through the durability barrier
   * (every outcome journaled, every fd in the keeper), say X_DRAINED and exit. The successor
   * starts only once this process is gone. A death anywhere in here is an ordinary crash.
   */
  private async drain(): Promise<void> {
    const pausedNs = process.hrtime.bigint();
    // The successor may be an older build (a planned downgrade): leave it a file it reads.
    this.store.requests.writeBaseSchemaOnly();
    this.fastPath?.setLookupsRecords(false);
    this.listenPoller?.close();
    this.listenPoller = null;
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.idleReducer.stop();
    const fsImpl = this.fsImpl;
    const left = this.backend === null ? 0 : await this.backend.drain(DRAIN_DEADLINE_MS, () => fsImpl?.parkedLockWaits ?? 0);
    this.store.durability.commit();
    // Every open file's fd in the keeper: the successor may be an older build, which cannot
    // open again by handle the ones sent after their reply (KeeperClient.sendSoon).
    this.registry.settle();
    // The successor's load replays the journal since its last snapshot (up to ~1 MiB: ~100 ms
    // measured on a busy host, the largest part of the pause): a snapshot now (crash-safe: a
    // new file renamed over the old) leaves it one record to read.
    if (this.backend !== null) this.store.compact();
    crashPoint('drain-before-drained');
    this.keeper.notify({ type: 'drained', pausedNs, left });
    this.log.info({ drainMs: Math.round(Number(process.hrtime.bigint() - pausedNs) / 1e4) / 100, left }, 'drained for a planned upgrade; handing over');
    this.finish(EXIT_HANDED_OVER);
    // Everything is durable and said (logs are synchronous), and our keeper waits for this
    // process to be gone before its successor takes over: Node.js's teardown (~20 ms measured
    // on a busy host) would only lengthen the pause. Under systemd the exit code tells the unit.
    if (this.sd === null) {
      // As PID 1 of its pid namespace its own SIGKILL is ignored: _exit with the handover code,
      // which unshare(1) passes on.
      if (process.pid === 1) native.exitNow(EXIT_HANDED_OVER);
      process.kill(process.pid, 'SIGKILL');
    }
  }

  private sendStats(): void {
    try {
      this.keeper.notify({ type: 'stats', stats: this.stats() });
    } catch (e) {
      this.log.error({ err: errorInfo(e) }, 'cannot send stats to the keeper');
    }
  }

  stats(): Record<string, unknown> {
    return {
      vhost: { connected: this.backend?.connected ?? false, queues: this.backend?.queueStats() ?? [] },
      fuse: {
        initialized: this.server?.init != null,
        inodes: this.fsImpl?.session.inodeCount ?? 0,
        openFiles: this.fsImpl?.session.fileCount ?? 0,
        openDirs: this.fsImpl?.session.dirCount ?? 0,
        lockOwners: this.fsImpl?.session.lockOwnerCount ?? 0,
        lockWaits: this.fsImpl?.parkedLockWaits ?? 0,
        inodeHandles: this.fsImpl?.inodeHandleStats ?? null,
        fastPath: fastPathStats(this.fastPath),
      },
      fds: this.registry.size,
    };
  }

  private finish(code: number): void {
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.idleReducer.stop();
    if (this.watchdogTimer) clearInterval(this.watchdogTimer);
    this.store.close();
    this.keeper.close();
    this.resolveDone?.(code);
  }
}

/** Waits for the keeper's takeover as a standby: loaded and preloading the session before it
 * says X_STANDBY (a standby the keeper counts as ready has the session), on the event loop, not
 * blocked in recv (the preload follows the journal meanwhile). `unit`: started by a systemd
 * unit, which is told READY (announceStandby) and pinged while it waits. False: released
 * without a takeover. */
async function standBy(worker: Worker, keeper: KeeperClient, log: Logger, unit: boolean): Promise<boolean> {
  await warmThreadPool(log);
  worker.startPreloading();
  collectStartupGarbage(log);
  let tick = (): void => {};
  let intervalMs = STANDBY_IDLE_TICK_MS;
  if (unit) {
    worker.announceStandby();
    const wd = watchdogIntervalMs();
    tick = () => worker.standbyWatchdogTick();
    if (wd !== null) intervalMs = Math.max(10, wd / 2);
  }
  try {
    await keeper.waitForTakeoverAsync(tick, intervalMs, WORKER_INFO);
    worker.mark('takeover');
  } catch (e) {
    log.info({ err: errorInfo(e) }, 'standby released without a takeover');
    return false;
  } finally {
    worker.stopPreloading();
  }
  log.info('standby worker taking over');
  return true;
}

/**
 * A standby starts libuv's threadpool before it waits: the pool's threads are created at its
 * first use, which would otherwise be the first READ or WRITE of a takeover. After the sandbox,
 * so they are created with the reduced capability sets ('/' is the shared directory then).
 */
async function warmThreadPool(log: Logger): Promise<void> {
  try {
    await fs.promises.stat('/');
  } catch (e) {
    log.debug({ err: errorInfo(e) }, 'cannot warm the threadpool before standing by');
  }
}

/**
 * A standby collects its start-up garbage before it announces itself: otherwise the first GC
 * comes in the middle of a takeover (mapping guest memory counts as external memory and forces
 * one) and has to copy a young generation full of start-up objects (5-7 ms measured). The
 * low-memory GC also shrinks the young generation to its minimum and returns the freed pages
 * and malloc's start-up garbage: a waiting standby holds ~12 MiB private instead of ~18.
 */
function collectStartupGarbage(log: Logger): void {
  reduceMemory(log, 'standing by');
}

/** The FUSE INIT flags the configuration withholds (virtiofsd's no_posix_lock, no_flock,
 * --no-readdirplus): the guest kernel then keeps those locks to itself, or uses READDIR. */
export function withheldInitFlags(c: WorkerConfig): bigint {
  let f = 0n;
  if (c.posixLocks === false) f |= FUSE_POSIX_LOCKS;
  if (c.flockLocks === false) f |= FUSE_FLOCK_LOCKS;
  if (c.readdirplus === false) f |= FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO;
  return f;
}

/** The addon's counters as status shows them: declined requests by opcode name. */
function fastPathStats(fastPath: FastFuseHandle | null): FastPathStats | null {
  if (fastPath === null) return null;
  const { declinedByOpcode, ...stats } = fastPath.stats();
  const declinedBy: Record<string, number> = {};
  declinedByOpcode.forEach((n, op) => { if (n > 0) declinedBy[op === declinedByOpcode.length - 1 ? 'other' : opcodeName(op)] = n; });
  return { ...stats, declinedBy };
}

/** How often a standby folds what the serving worker journaled since (StateLoader.catchUp): a
 * takeover then folds at most this long's worth of records (a few hundred at a busy guest's
 * rate, ~1 ms); an idle step costs a stat and an atomic load. */
const PRELOAD_INTERVAL_MS = 50;

/** A standby without a watchdog to ping still needs a timer for its wait (any long period). */
const STANDBY_IDLE_TICK_MS = 3_600_000;

/** A failed accept() of the frontend (EMFILE...) is tried again after this long. */
const ACCEPT_RETRY_MS = 100;

/** fds left to the worker and the keeper beyond the registered ones: their own sockets, the
 * journal, Node.js internals, short-lived fds (xattrs, syncfs, compaction), keeper.sock peers. */
const FD_RESERVE = 256;

/** How many fds the worker may register: each is held here and again in the keeper, so the
 * lower of the two limits counts (an older keeper does not say its own). */
/** O_PATH fds of handle-named inodes kept open: DEFAULT_INODE_FD_CACHE, at most an eighth of
 * the fd limit; the minimum with 'never' (only a resumed session's handle inodes use it). */
function inodeFdCacheSize(ownNoFile: number, mode: InodeFileHandles): number {
  if (mode === 'never') return MIN_CAPACITY;
  return Math.max(MIN_CAPACITY, Math.min(DEFAULT_INODE_FD_CACHE, Math.floor(ownNoFile / 8)));
}

function fdBudget(ownNoFile: number, keeperNoFile: number | null): number {
  return Math.max(0, Math.min(ownNoFile, keeperNoFile ?? ownNoFile) - FD_RESERVE);
}

/** A worker the keeper spawned uses the connection made for it (VFSK_KEEPER_FD: the keeper
 * trusts nothing else from a process it spawned); one systemd starts connects to keeper.sock,
 * where the keeper checks that it belongs to the worker unit. */
function connectKeeper(stateDir: string): { client: KeeperClient; spawned: boolean } {
  const inherited = process.env.VFSK_KEEPER_FD;
  delete process.env.VFSK_KEEPER_FD;
  if (inherited === undefined) return { client: KeeperClient.connect(keeperSocketPath(stateDir)), spawned: false };
  if (!/^[0-9]{1,9}$/.test(inherited)) throw new Error(`VFSK_KEEPER_FD=${inherited.slice(0, 20)} is not an fd number`);
  return { client: KeeperClient.inherited(Number(inherited)), spawned: true };
}

export async function workerMain(stateDir: string): Promise<number> {
  const log = logger('worker');
  // PID 1 of its own pid namespace (the namespace sandbox's launcher): SIGTERM must still end it.
  actAsInit();
  // Blocking lock waits (SETLKW, flock) each hold a threadpool thread; 4 is too few. Must be
  // set before the first threadpool use.
  process.env.UV_THREADPOOL_SIZE ??= '16';
  // As root we act for a guest user with setfsuid/setfsgid, which leave our supplementary groups
  // in force: the guest user would gain whatever access they give (e.g. root's group 0 from a
  // login shell). FUSE passes one gid; that one alone must count.
  if (process.geteuid?.() === 0 && process.setgroups !== undefined) {
    try {
      process.setgroups([]);
    } catch (e) {
      log.warn({ err: errorInfo(e) }, 'cannot drop supplementary groups');
    }
  }
  // Spawned by an embedded keeper (its own connection), or started by systemd (or by hand).
  const spawned = process.env.VFSK_KEEPER_FD !== undefined;
  let config: WorkerConfig;
  let keeper: KeeperClient;
  let spawnedByKeeper = false;
  try {
    checkStateDir(stateDir);
    config = readWorkerConfig(stateDir);
    ({ client: keeper, spawned: spawnedByKeeper } = connectKeeper(stateDir));
  } catch (e) {
    log.error({ err: errorInfo(e) }, 'cannot reach the keeper');
    return 1;
  }
  const worker = new Worker(config, keeper, spawnedByKeeper);
  try {
    // Raising RLIMIT_NOFILE past the hard limit reads /proc/sys/fs/nr_open: before the pivot.
    growFdTable(native.raiseNoFileLimit(1_000_000), log);
    worker.beforeSandbox();
    enterSandbox(config.sandbox ?? 'none', config.seccomp ?? 'none', config.sharedDir, stateDir, log);
  } catch (e) {
    log.error({ err: errorInfo(e) }, 'cannot confine the worker');
    try {
      keeper.notify({ type: 'setError', error: `worker cannot enter its sandbox (${config.sandbox ?? 'none'}): ${(e as Error).message}` });
    } catch {
      // The keeper logs our exit anyway.
    }
    return EXIT_START_FAILED;
  }
  if (process.env.VFSK_STANDBY === '1') {
    if (!(await standBy(worker, keeper, log, false))) return 0;
  } else if (!spawned) {
    // Under systemd every worker stands by first: the keeper hands the session at once to the
    // first one when none serves, and keeps the next (the other worker unit's, or this unit's
    // restart) waiting until the serving one dies (docs/ARCHITECTURE.md, "Processes").
    if (!(await standBy(worker, keeper, log, true))) return 0;
  }
  try {
    worker.start();
  } catch (e) {
    // The rule is on the error's kind (shared/errors.ts): only state or configuration that
    // failed validation stops the restarts; a successor short of fds or memory may succeed on
    // the next try. Either way `status` shows why (the keeper clears it at the next READY).
    const kind = errorKind(e);
    const retry = startFailurePolicy(kind) === 'restart';
    const message = (e as Error).message;
    log.error({ err: errorInfo(e) }, retry ? 'cannot resume the session now; exiting for the keeper to retry' : 'cannot resume the session: state is unusable');
    try {
      keeper.notify({ type: 'setError', error: `worker cannot start (${kind}${retry ? ', retrying' : ''}): ${message}` });
    } catch {
      // The keeper logs our exit anyway.
    }
    return retry ? EXIT_START_FAILED : EXIT_STATE_UNUSABLE;
  }
  return worker.done;
}

/** Whether the addon serves the hot requests itself (docs/ARCHITECTURE.md, "The native request
 * path"). VFSK_FAST_PATH=0 turns it off whatever the config says: for tests, which run the
 * frontend, hostile and crash suites on both paths. */
export function fastPathEnabled(config: WorkerConfig): boolean {
  return config.fastPath !== false && process.env.VFSK_FAST_PATH !== '0';
}
