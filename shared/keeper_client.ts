// The worker's side of keeper.sock: fetches the fd set at start, mirrors every registration
// in the FdRegistry into the keeper's store (FDSTORE/FDSTOREREMOVE), and sends sd_notify-style
// status. The socket is blocking: a store must be in the keeper's queue before the worker
// goes on, because the guest may observe its effect next.
//
// A store is known to have landed only when the keeper says so: the kernel drops the fds of a
// message the keeper has no fd numbers for (MSG_CTRUNC), and the sender never learns. So after
// each group of stores (one batch, or one store outside a batch) the client asks X_SYNC and
// waits for X_SYNCED, which names what the keeper refused; those are sent again for a while
// (the shortage may pass), and if they still do not land the owner's onStoresRefused decides
// (the worker dies before anything that names them is journaled, and its successor replays).
// A keeper that does not offer FEATURES=sync (older) gets no X_SYNC.
//
// Reopenable fds (an open file or dir of an inode named by a file handle: the journal records
// all a successor needs to open it again) are not waited for, and neither are removals the
// journal no longer needs: both wait up to LAZY_LINGER_MS after a publish (sendSoon) and then
// go together, and sooner when LAZY_MAX are waiting or any other message goes to the keeper
// (which keeps their order). Each message wakes the keeper (~100 µs of its CPU on this kind
// of machine), and most files a guest opens are released within that time: those are never
// sent, and their release sends no removal. Whichever X_SYNC comes next confirms the stores.
// settle() sends and confirms them at once, for the steps after which a successor could not
// reopen one (an unlink, a flock lock).
import { native, POLL_DISCONNECT, POLL_READABLE, type Poller } from './native';
import { KeeperProtocolError } from './sd_notify_format';
import {
  FETCH_WINDOW, MAX_MESSAGE_SIZE, SCM_MAX_FD, encodeToKeeper, parseFromKeeper,
  type FromKeeper, type KeeperCapabilities, type KeeperStatus, type ToKeeper, type UpgradeResult, type WorkerInfo,
} from './keeper_protocol';
import type { FdRegistryListener } from './fd_registry';
import { trustedPeerUid } from './state_dir';
import { ResourceError } from './errors';
import { constants as osConstants } from 'node:os';

/** Stores the keeper still refused after STORE_RETRIES tries, RETRY_SLEEP_MS apart. */
export class FdStoreRefusedError extends ResourceError {
  constructor(readonly names: string[]) {
    super(`the keeper could not take ${names.length} fds (${names.slice(0, 3).join(', ')}${names.length > 3 ? ', ...' : ''}): it is out of fds`, osConstants.errno.EMFILE);
  }
}

/** sendmsg errors that mean the keeper's end of the connection is closed. */
const KEEPER_GONE = new Set(['EPIPE', 'ECONNRESET', 'ENOTCONN']);

/** About a second of retries: a short shortage passes without a restart. */
const STORE_RETRIES = 50;
const RETRY_SLEEP_MS = 20;
const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/** How long reopenable stores and journaled removals wait after a publish for company. It is
 * also the window in which a worker's death loses an fh a host process unlinked meanwhile
 * (docs/ARCHITECTURE.md, "Crash safety", rule 1), so it stays short. */
export const LAZY_LINGER_MS = 20;
/** Waiting stores and removals that are sent at once: the keeper still holds the removed fds,
 * which the fd budget's reserve must cover. */
export const LAZY_MAX = 64;

export class KeeperClient implements FdRegistryListener {
  private readonly buf = Buffer.alloc(MAX_MESSAGE_SIZE);
  /** Stores deferred while a batch is open (name → fd, in registration order); `batching`
   * says whether one is. One Map for every batch: a request opens one, so a new Map per
   * request was most of what the request path allocated. */
  private readonly batch = new Map<string, number>();
  private batching = false;
  /** Reopenable stores not sent yet (sendPending, settle). */
  private deferred = new Map<string, number>();
  /** Removals deferred until the journal no longer names them (removalsJournaled). */
  private removals: string[] = [];
  /** Removals the journal no longer needs, waiting to go with the deferred stores. */
  private readyRemovals: string[] = [];
  /** Sends what waits (sendSoon): made once and re-armed (refresh) rather than a new timer
   * per publish; `lingerArmed` says whether it is to send when it fires (stopLinger only
   * disarms it, and a disarmed timer fires as a no-op). */
  private lingerTimer: NodeJS.Timeout | null = null;
  private lingerArmed = false;
  /** Set while sendPending sends, so that its own messages do not call it again. */
  private sendingPending = false;
  /** Whether the keeper answers X_SYNC (its FDSET said so). */
  private canSync = false;
  private syncSeq = 0;
  /** Stores sent since the last X_SYNCED (name → fd, still open: an fd closed meanwhile
   * leaves the map, so a refused one is never sent again under a reused number). */
  private readonly unsynced = new Map<string, number>();
  /** Whether the keeper runs planned upgrades (its FDSET said FEATURES=upgrade). */
  keeperUpgrades = false;
  /** Told whenever `settled` changes (the addon's UNLINK and RMDIR need it: FastFuseHandle.setSettled). */
  onSettledChange: ((settled: boolean) => void) | null = null;
  private settledSaid: boolean | null = null;
  /** Watches the connection for X_DRAIN while the worker serves (watchDrain). */
  private drainPoller: Poller | null = null;
  private onDrain: (() => void) | null = null;
  private drainAsked = false;
  /** Called when stores did not land after every retry (default: throw FdStoreRefusedError). */
  onStoresRefused: (e: FdStoreRefusedError) => void = (e) => { throw e; };
  /** Called when the keeper is gone (its end closed: EPIPE, ECONNRESET, EOF) before the error
   * is thrown: nothing that needed the keeper may go on (the worker dies there; default: the
   * error is thrown). */
  onKeeperGone: (e: Error) => void = () => {};
  /** Set by orphan(): the keeper is gone for good and the worker serves on without it. */
  private orphanedTo: ((data: Buffer, fds: number[]) => void) | null = null;

  private constructor(readonly fd: number) {}

  /** Connects and checks who listens there: only a keeper of our uid (or root) is trusted with
   * handing us fds and taking ours. */
  static connect(socketPath: string): KeeperClient {
    const fd = native.unixConnect(socketPath, 'seqpacket');
    try {
      const peer = native.peerCred(fd);
      if (!trustedPeerUid(peer.uid)) {
        throw new KeeperProtocolError(`${socketPath} is served by uid ${peer.uid} (pid ${peer.pid}), not by our keeper`);
      }
      native.setNonBlocking(fd, false);
    } catch (e) {
      native.close(fd);
      throw e;
    }
    return new KeeperClient(fd);
  }

  /** The connection the keeper made for us at spawn (fd `fd`, inherited): the one on which it
   * trusts us as its worker. Moved to a close-on-exec fd; the inherited number is closed. */
  static inherited(fd: number): KeeperClient {
    let own: number;
    try {
      const peer = native.peerCred(fd);
      if (!trustedPeerUid(peer.uid)) throw new KeeperProtocolError(`inherited keeper.sock fd ${fd} leads to uid ${peer.uid} (pid ${peer.pid}), not to our keeper`);
      own = native.dup(fd);
    } finally {
      native.close(fd);
    }
    try {
      native.setNonBlocking(own, false);
    } catch (e) {
      native.close(own);
      throw e;
    }
    return new KeeperClient(own);
  }

  /** The whole named fd set the keeper holds (the caller owns the returned fds), and the last
   * control reply sequence number the keeper forwarded. */
  fetchAll(): { fds: Map<string, number>; ctlSeq: number; keeper: KeeperCapabilities } {
    this.send({ type: 'fetch', window: FETCH_WINDOW }, []);
    const out = new Map<string, number>();
    // Batches left of the window asked for (an older keeper's FDSET says none: one per request).
    let left = 0;
    try {
      for (;;) {
        const { msg, fds } = this.receive(SCM_MAX_FD, 'during FDFETCH');
        if (msg.type !== 'fdSet') {
          for (const fd of fds) native.close(fd);
          throw new KeeperProtocolError(`unexpected ${msg.type} in reply to FDFETCH`);
        }
        msg.names.forEach((n, i) => {
          const prev = out.get(n);
          if (prev !== undefined) native.close(prev);
          out.set(n, fds[i]!);
        });
        if (!msg.more) {
          this.canSync = msg.keeper.sync;
          this.keeperUpgrades = msg.keeper.upgrade === true;
          return { fds: out, ctlSeq: msg.ctlSeq, keeper: msg.keeper };
        }
        if (left === 0) left = msg.window ?? 1;
        if (--left === 0) this.send({ type: 'fetchNext' }, []);
      }
    } catch (e) {
      // A fetch that fails midway leaves nothing open: the caller owns only a complete set.
      for (const fd of out.values()) native.close(fd);
      throw e;
    }
  }

  /** The next message from the keeper; the caller owns its fds. */
  private receive(maxFds: number, when: string): { msg: FromKeeper; fds: number[] } {
    for (;;) {
      let r: ReturnType<typeof native.recvMsg>;
      try {
        r = native.recvMsg(this.fd, this.buf, maxFds);
      } catch (e) {
        if (KEEPER_GONE.has((e as { code?: string }).code ?? '')) this.onKeeperGone(e as Error);
        throw e;
      }
      if (r === null) {
        // EAGAIN: the fd was non-blocking (libuv makes a polled fd so). Block instead of
        // spinning: a spin on recvmsg cost ~50 µs of CPU per X_SYNC round trip.
        native.setNonBlocking(this.fd, false);
        continue;
      }
      if (r.bytes === 0 && r.fds.length === 0) {
        const e = new KeeperProtocolError(`keeper closed the connection ${when}`);
        this.onKeeperGone(e);
        throw e;
      }
      try {
        if (r.truncated) throw new KeeperProtocolError(`message from the keeper truncated ${when}`);
        const msg = parseFromKeeper(this.buf.subarray(0, r.bytes), r.fds.length);
        // X_DRAIN comes whenever the keeper decides, e.g. while we wait for X_SYNCED: note it
        // and act on it from the event loop, between requests.
        if (msg.type === 'drain' && this.onDrain !== null) {
          this.drainRequested();
          continue;
        }
        return { msg, fds: r.fds };
      } catch (e) {
        for (const fd of r.fds) native.close(fd);
        throw e;
      }
    }
  }

  /** The keeper holds every fd stored so far, reopenable ones included: settle() has nothing
   * to do (before a step that may remove a name, passthrough.ts keepOpenFilesReachable). */
  get settled(): boolean {
    return this.deferred.size === 0 && this.unsynced.size === 0;
  }

  private tellSettled(): void {
    const settled = this.settled;
    if (settled === this.settledSaid) return;
    this.settledSaid = settled;
    this.onSettledChange?.(settled);
  }

  onRegister(name: string, fd: number, reopenable = false): void {
    if (reopenable) {
      if (!this.orphaned) this.deferred.set(name, fd);
      this.tellSettled();
      return;
    }
    if (this.batching) {
      this.batch.set(name, fd);
      return;
    }
    this.store([name], [fd]);
    this.sync();
  }

  /** A closed fd leaves the waiting stores; whether the keeper never got it (no removal then). */
  private neverSent(name: string): boolean {
    if (this.deferred.delete(name)) {
      if (this.deferred.size === 0 && this.readyRemovals.length === 0) this.stopLinger();
      this.tellSettled();
      return true;
    }
    if (this.unsynced.delete(name)) this.tellSettled();
    return false;
  }

  onUnregister(name: string): void {
    if (this.neverSent(name)) return;
    if (this.batching) {
      // Registered and dropped within one batch: the keeper never needs to see it.
      if (this.batch.delete(name)) return;
      // The journal may still name this fd until the open batch's outcomes are committed:
      // the keeper keeps its copy until then (a spare fd there is closed on resume).
      this.removals.push(name);
      return;
    }
    this.send({ type: 'remove', names: [name] }, []);
  }

  onUnregisterMany(names: string[]): void {
    if (this.batching) {
      for (const n of names) this.onUnregister(n);
      return;
    }
    this.sendRemovals(names.filter((n) => !this.neverSent(n)));
  }

  /** Groups stores (e.g. a readdirplus page of inodes, or every request of one event-loop
   * turn) into few messages; flushed by endBatch, which must run before anything that names
   * them becomes durable or visible. Removals wait for removalsJournaled(). */
  beginBatch(): void {
    this.batching = true;
  }

  endBatch(): void {
    this.batching = false;
    const b = this.batch;
    if (b.size === 0) return;
    const entries = [...b];
    b.clear();
    this.storeEntries(entries);
    this.sync();
  }

  /** After a publish: what may wait (reopenable stores, journaled removals) goes within
   * LAZY_LINGER_MS, at once if LAZY_MAX wait. */
  sendSoon(): void {
    const waiting = this.deferred.size + this.readyRemovals.length;
    if (waiting === 0) return;
    if (waiting >= LAZY_MAX) {
      this.sendPending();
      return;
    }
    if (this.lingerArmed) return;
    this.lingerArmed = true;
    if (this.lingerTimer !== null) {
      this.lingerTimer.refresh();
      return;
    }
    this.lingerTimer = setTimeout(() => {
      if (!this.lingerArmed) return;
      this.lingerArmed = false;
      this.sendPending();
    }, LAZY_LINGER_MS);
    this.lingerTimer.unref();
  }

  /** Sends the waiting reopenable stores and journaled removals now, without waiting for the
   * keeper. The next X_SYNC confirms the stores. */
  sendPending(): void {
    this.stopLinger();
    if (this.sendingPending || (this.deferred.size === 0 && this.readyRemovals.length === 0)) return;
    this.sendingPending = true;
    try {
      if (this.deferred.size > 0) {
        const entries = [...this.deferred];
        this.deferred.clear();
        this.storeEntries(entries);
      }
      if (this.readyRemovals.length > 0) {
        const names = this.readyRemovals;
        this.readyRemovals = [];
        this.sendRemovals(names);
      }
    } finally {
      this.sendingPending = false;
    }
  }

  private stopLinger(): void {
    this.lingerArmed = false;
  }

  /** Returns once the keeper holds every fd stored so far, reopenable ones included. */
  settle(): void {
    this.sendPending();
    this.sync();
  }

  private storeEntries(entries: Array<[string, number]>): void {
    for (let i = 0; i < entries.length; i += SCM_MAX_FD) {
      const part = entries.slice(i, i + SCM_MAX_FD);
      this.store(part.map(([n]) => n), part.map(([, fd]) => fd));
    }
  }

  private store(names: string[], fds: number[]): void {
    this.send({ type: 'store', names }, fds);
    if (this.canSync) names.forEach((n, i) => this.unsynced.set(n, fds[i]!));
    this.tellSettled();
  }

  /** Waits until the keeper has taken every store sent since the last sync, sending refused
   * ones again (see the header). */
  private sync(): void {
    if (!this.canSync || this.unsynced.size === 0) return;
    for (let attempt = 0; ; attempt++) {
      const seq = ++this.syncSeq;
      this.send({ type: 'sync', seq }, []);
      if (this.orphaned) return;
      let answer: { msg: FromKeeper; fds: number[] };
      try {
        answer = this.receive(0, 'while waiting for X_SYNCED');
      } catch (e) {
        // The keeper died while we waited, and we serve on without it (orphan()).
        if (this.orphaned) return;
        throw e;
      }
      const { msg, fds } = answer;
      for (const fd of fds) native.close(fd);
      if (msg.type !== 'synced' || msg.seq !== seq) throw new KeeperProtocolError(`unexpected ${msg.type} in reply to X_SYNC ${seq}`);
      const refused = msg.refused === 'all' ? [...this.unsynced.keys()] : msg.refused.filter((n) => this.unsynced.has(n));
      if (refused.length === 0) {
        this.unsynced.clear();
        this.tellSettled();
        return;
      }
      const again: Array<[string, number]> = refused.map((n) => [n, this.unsynced.get(n)!]);
      this.unsynced.clear();
      if (attempt >= STORE_RETRIES) {
        this.tellSettled();
        this.onStoresRefused(new FdStoreRefusedError(refused));
        return;
      }
      Atomics.wait(sleepCell, 0, 0, RETRY_SLEEP_MS);
      this.storeEntries(again);
    }
  }

  /**
   * The keeper is gone and nothing will restart it (embedded mode: Worker.keeperGone): from now
   * on stores, removals, syncs and reports are dropped, and a control reply goes to the
   * frontend through `sendToFrontend`, since the keeper can no longer forward it.
   */
  orphan(sendToFrontend: (data: Buffer, fds: number[]) => void): void {
    this.orphanedTo = sendToFrontend;
    this.batching = false;
    this.batch.clear();
    this.deferred.clear();
    this.removals = [];
    this.readyRemovals = [];
    this.stopLinger();
    this.unsynced.clear();
    this.tellSettled();
    this.stopWatching();
  }

  get orphaned(): boolean {
    return this.orphanedTo !== null;
  }

  /** The journal recorded the closes of the removals deferred so far: they may go, with the
   * next sendSoon or sendPending. */
  removalsJournaled(): void {
    if (this.removals.length === 0) return;
    for (const n of this.removals) this.readyRemovals.push(n);
    this.removals = [];
  }

  /** Stores fds under names directly (not through the registry: the same fd numbers may be
   * registered under other names by their handler). */
  storeFds(names: string[], fds: number[]): void {
    this.store(names, fds);
    this.sync();
  }

  removeFds(names: string[]): void {
    this.sendRemovals(names);
  }

  /** Removals in messages of at most SCM_MAX_FD names (a bound on the message size). */
  private sendRemovals(names: string[]): void {
    for (let i = 0; i < names.length; i += SCM_MAX_FD) this.send({ type: 'remove', names: names.slice(i, i + SCM_MAX_FD) }, []);
  }

  /** The keeper writes control reply `seq` to the frontend once, however often it is asked:
   * a worker that died after asking must not make QEMU read a reply twice. */
  sendControlReply(seq: number, data: Buffer, fds: number[]): void {
    this.send({ type: 'controlReply', seq, data }, fds);
    // Orphaned before or by this send: the frontend gets it from us (no successor will resume
    // this session, so there is no later send to deduplicate against).
    this.orphanedTo?.(data, fds);
  }

  /** A message without fds (status, progress, stats, an error). */
  notify(msg: Exclude<ToKeeper, { type: 'store' | 'controlReply' | 'fetch' | 'fetchNext' }>): void {
    this.send(msg, []);
  }

  /** Warm standby: announce ourselves, then block until the keeper hands over the session
   * (it does so only after it has reaped the previous worker). */
  waitForTakeover(worker: WorkerInfo | null = null): void {
    this.send({ type: 'standby', worker }, []);
    for (;;) {
      const { msg, fds } = this.receive(0, 'while we were on standby');
      for (const fd of fds) native.close(fd);
      if (msg.type === 'takeover') return;
      throw new KeeperProtocolError(`unexpected ${msg.type} while on standby`);
    }
  }

  /** Serves X_DRAIN (a planned upgrade) while the worker runs: `onDrain` is called once, from
   * the event loop. Nothing else arrives unasked on this connection. */
  watchDrain(onDrain: () => void): void {
    this.onDrain = onDrain;
    this.drainPoller = new native.Poller(this.fd, (status) => {
      if (status < 0) {
        this.stopWatching();
        return;
      }
      // Only X_DRAIN can be waiting here (every answer is read by its question).
      // Non-blocking: a synchronous receive earlier in this loop turn may have taken what made
      // the fd readable.
      let r: ReturnType<typeof native.recvMsg>;
      try {
        native.setNonBlocking(this.fd, true);
        try {
          r = native.recvMsg(this.fd, this.buf, 0);
        } finally {
          native.setNonBlocking(this.fd, false);
        }
      } catch {
        this.stopWatching();
        return;
      }
      if (r === null) return;
      // The keeper is gone: nothing will ask us to drain (the next store fails loudly).
      if (r.bytes === 0 && r.fds.length === 0) {
        this.stopWatching();
        return;
      }
      for (const fd of r.fds) native.close(fd);
      try {
        if (parseFromKeeper(this.buf.subarray(0, r.bytes), 0).type === 'drain') this.drainRequested();
      } catch {
        // A message we do not know from a newer keeper: ignored, as unknown keys are.
      }
    });
    this.drainPoller.start(POLL_READABLE);
    // uv_poll_init made the fd non-blocking; our synchronous receives (X_SYNCED) must block,
    // and the poll only needs readiness.
    native.setNonBlocking(this.fd, false);
  }

  private drainRequested(): void {
    if (this.drainAsked) return;
    this.drainAsked = true;
    const cb = this.onDrain;
    if (cb !== null) setImmediate(cb);
  }

  private stopWatching(): void {
    this.drainPoller?.close();
    this.drainPoller = null;
  }

  /** Asks the keeper for a planned upgrade and waits for its answer (the upgrade CLI). */
  upgrade(timeoutMs: number | null, detach = false, keeper = false): UpgradeResult {
    this.send({ type: 'upgrade', timeoutMs, ...(detach ? { detach: true } : {}), ...(keeper ? { keeper: true } : {}) }, []);
    const { msg, fds } = this.receive(0, 'before answering the upgrade (an older keeper refuses X_UPGRADE)');
    for (const fd of fds) native.close(fd);
    if (msg.type !== 'upgraded') throw new KeeperProtocolError(`unexpected ${msg.type} in reply to X_UPGRADE`);
    return msg.result;
  }

  /**
   * The same wait without blocking the event loop, for a standby systemd started: its unit has
   * a watchdog, so `tick` (WATCHDOG=1) must keep running while it waits, and so must a SIGTERM
   * from `systemctl stop`. Resolves at X_TAKEOVER; rejects when the keeper closes the connection
   * or sends anything else. The wake-up costs one libuv poll, not a Node.js start.
   */
  waitForTakeoverAsync(tick: () => void, tickMs: number, worker: WorkerInfo | null = null): Promise<void> {
    this.send({ type: 'standby', worker }, []);
    native.setNonBlocking(this.fd, true);
    return new Promise<void>((resolve, reject) => {
      const timer = setInterval(tick, tickMs);
      const done = (e: Error | null): void => {
        clearInterval(timer);
        poller.close();
        try {
          native.setNonBlocking(this.fd, false);
        } catch (err) {
          e ??= err as Error;
        }
        if (e === null) resolve();
        else reject(e);
      };
      const poller = new native.Poller(this.fd, (status) => {
        if (status < 0) {
          done(new KeeperProtocolError(`polling keeper.sock failed (${native.errnoName(status)}) while we were on standby`));
          return;
        }
        try {
          const r = native.recvMsg(this.fd, this.buf, 0);
          if (r === null) return;
          for (const fd of r.fds) native.close(fd);
          if (r.bytes === 0) throw new KeeperProtocolError('keeper closed the connection while we were on standby');
          const msg = parseFromKeeper(this.buf.subarray(0, r.bytes), r.fds.length);
          if (msg.type !== 'takeover') throw new KeeperProtocolError(`unexpected ${msg.type} while on standby`);
          done(null);
        } catch (e) {
          done(e as Error);
        }
      });
      poller.start(POLL_READABLE | POLL_DISCONNECT);
    });
  }

  /** Asks the keeper for its status (used by the status CLI). */
  queryStatus(): KeeperStatus {
    this.send({ type: 'statusQuery' }, []);
    const { msg, fds } = this.receive(0, 'before answering the status query');
    for (const fd of fds) native.close(fd);
    if (msg.type !== 'status') throw new KeeperProtocolError(`unexpected ${msg.type} in reply to the status query`);
    return msg.status;
  }

  private send(msg: ToKeeper, fds: number[]): void {
    if (this.orphaned) return;
    // What waits goes first: the keeper sees every store and removal in the order they were
    // made (a name stored again after its removal, an X_SYNC that must confirm them).
    if (!this.sendingPending) this.sendPending();
    const data = encodeToKeeper(msg);
    let n: number;
    try {
      n = native.sendMsg(this.fd, data, fds);
    } catch (e) {
      if (KEEPER_GONE.has((e as { code?: string }).code ?? '')) {
        this.onKeeperGone(e as Error);
        if (this.orphaned) return;
      }
      throw e;
    }
    if (n !== data.length) throw new KeeperProtocolError(`short send to keeper (${n} of ${data.length})`);
  }

  close(): void {
    this.stopLinger();
    if (this.lingerTimer !== null) clearTimeout(this.lingerTimer);
    this.lingerTimer = null;
    this.stopWatching();
    native.close(this.fd);
  }
}
