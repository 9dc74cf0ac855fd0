// vhost-user layer: the backend side of QEMU's protocol for one connection. It negotiates
// features (features.ts) and dispatches every control message to the part it concerns: the
// memory table (memory_table.ts), the vrings and their queues (vrings.ts), the inflight region
// (inflight.ts). Each message is journaled before it is handled and its reply sent once
// (ControlJournal). Every malformed message is answered with a REPLY_ACK failure (when the
// frontend asked for one) or logged; none is fatal except those that break the stream's framing
// (handled by the transport).
import type { Logger } from '../../shared/log';
import { native } from '../../shared/native';
import type { FdRegistry } from '../../shared/fd_registry';
import { crashPoint } from '../../shared/crash_points';
import { errorInfo } from '../../shared/errors';
import type { QueueHandler } from '../virtqueue/queue_server';
import type { RingFactory } from '../virtqueue/split_ring';
import * as M from './messages';
import { MessageTransport, type IncomingMessage } from './transport';
import { VhostError } from './errors';
import { expectFds, takeFd } from './message_fds';
import { NegotiatedFeatures, OFFERED_FEATURES, OFFERED_PROTOCOL_FEATURES } from './features';
import { MemoryTable, MAX_MEM_SLOTS, type SavedRegion } from './memory_table';
import { InflightTracking, type InflightLayout } from './inflight';
import { Vrings, type QueueStats, type VringConfig } from './vrings';

// The state layer (worker/state) reads the session state's types from here.
export type { VringConfig } from './vrings';

export interface VhostDevice {
  /** Total virtqueues (hiprio + request queues). */
  readonly numQueues: number;
  createQueueHandler(index: number): QueueHandler;
  /** The ring each started queue runs on (absent: the TypeScript SplitRing). */
  readonly createRing?: RingFactory;
  /** The frontend reset the device (RESET_OWNER / RESET_DEVICE). */
  onReset(): void;
}

/**
 * Makes control messages crash-safe (docs/ARCHITECTURE.md, Crash safety, rule 3 "Control messages
 * once"). Without one (tests, single-process use) replies go straight to the socket.
 */
export interface ControlJournal {
  /** Durable record of a consumed message and the names its fds are stored under; returns its
   * sequence number. */
  begin(header: M.MessageHeader, payload: Buffer, fds: number[]): number;
  /** The session state after handling message `seq`, durable before any reply. */
  commit(seq: number, state: VhostSessionState): void;
  /** Sends reply `seq` to the frontend exactly once, even if called again after a restart. */
  reply(seq: number, data: Buffer, fds: number[]): void;
  end(seq: number): void;
}

/** A consumed control message a dead worker may not have finished. */
export interface PendingControl {
  seq: number;
  header: M.MessageHeader;
  payload: Buffer;
  fds: number[];
  /** The dead worker committed its state change; only the reply may be missing. */
  committed: boolean;
  /** The reply the committed handler produced, if any (replayed; the keeper dedups it). */
  reply: Buffer | null;
}

/** What the vhost-user session remembers (the part a restarted worker needs). */
export interface VhostSessionState {
  ownerSet: boolean;
  ackedFeatures: bigint;
  ackedProtocolFeatures: bigint;
  featuresSet: boolean;
  regions: SavedRegion[];
  nextSlot: number;
  vrings: VringConfig[];
  inflight: InflightLayout | null;
  /** Queues that were being served (restarted on resume). */
  running: number[];
}

export class VhostUserBackend {
  private readonly transport: MessageTransport;
  private ownerSet = false;
  private readonly features = new NegotiatedFeatures();
  private readonly memoryTable: MemoryTable;
  private readonly inflight: InflightTracking;
  private readonly vrings: Vrings;
  private closed = false;
  /** A message whose handling waits (GET_VRING_BASE draining); later messages queue. */
  private busy = false;
  /** A planned handover is draining this session (drain()): control reading stays paused. */
  private draining = false;
  private onSettle: (() => void) | null = null;
  private readonly backlog: IncomingMessage[] = [];
  /** Fds the reply of the message being handled carries. */
  private readonly pendingReplyFds: number[] = [];

  constructor(connFd: number, private readonly device: VhostDevice,
    private readonly registry: FdRegistry, private readonly log: Logger,
    private readonly onDisconnect: (reason: string) => void,
    private readonly journal: ControlJournal | null = null) {
    this.memoryTable = new MemoryTable(registry, this.features, log);
    this.inflight = new InflightTracking(device.numQueues, registry, this.features);
    this.vrings = new Vrings(device.numQueues, (index) => device.createQueueHandler(index), this.memoryTable.memory,
      this.inflight, this.features, registry, log, device.createRing);
    this.transport = new MessageTransport(connFd, {
      onMessage: (msg) => this.enqueue(msg),
      onClose: (reason) => this.disconnect(reason),
    });
  }

  /**
   * Resumes a session a dead worker was serving: the memory table is re-mapped from the fds
   * the keeper held, the vrings are rebuilt, inflight requests are resubmitted, and a control
   * message the dead worker consumed but did not finish is finished.
   */
  restore(state: VhostSessionState, pending: PendingControl | null): void {
    if (state.vrings.length !== this.vrings.count) {
      throw new VhostError(`saved session has ${state.vrings.length} queues, this device ${this.vrings.count}`);
    }
    this.ownerSet = state.ownerSet;
    this.features.acked = state.ackedFeatures;
    this.features.ackedProtocol = state.ackedProtocolFeatures;
    this.features.set = state.featuresSet;
    this.memoryTable.restore(state.regions, state.nextSlot);
    if (state.inflight !== null) this.inflight.restore(state.inflight);
    this.vrings.restore(state.vrings, state.running);
    if (pending !== null) this.finishPending(pending);
  }

  private finishPending(p: PendingControl): void {
    const name = M.requestName(p.header.request);
    if (p.committed && p.reply !== null) {
      this.log.warn({ request: name, seq: p.seq }, 'finishing the reply of a control message the previous worker handled');
      this.sendReply(p.seq, p.header, p.reply, true);
      this.journal?.end(p.seq);
      for (const fd of p.fds) native.close(fd);
      return;
    }
    // Handlers are idempotent against their own partial effects (fds are replaced by name), and
    // a committed message without a recorded reply never sent one: handle it again.
    this.log.warn({ request: name, seq: p.seq }, 'handling a control message the previous worker consumed but did not finish');
    this.dispatch({ header: p.header, payload: p.payload, fds: p.fds }, p.seq);
  }

  get connected(): boolean {
    return !this.closed;
  }

  state(): VhostSessionState {
    return {
      ownerSet: this.ownerSet,
      ackedFeatures: this.features.acked,
      ackedProtocolFeatures: this.features.ackedProtocol,
      featuresSet: this.features.set,
      regions: this.memoryTable.saved(),
      nextSlot: this.memoryTable.nextSlot,
      vrings: this.vrings.saved(),
      inflight: this.inflight.layout,
      running: this.vrings.runningIndices(),
    };
  }

  queueStats(): QueueStats[] {
    return this.vrings.stats();
  }

  /** Closes the connection as if the frontend had hung up (SIGTERM path). */
  async shutdown(reason: string): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.transport.close();
    await this.vrings.stopAll();
    this.releaseResources();
    this.log.info({ reason }, 'vhost-user connection closed');
  }

  private disconnect(reason: string): void {
    if (this.closed) return;
    void this.shutdown(reason).then(() => this.onDisconnect(reason));
  }

  private enqueue(msg: IncomingMessage): void {
    if (this.busy) {
      this.backlog.push(msg);
      return;
    }
    this.dispatch(msg);
  }

  private dispatch(msg: IncomingMessage, resumedSeq?: number): void {
    const { request, flags } = msg.header;
    const name = M.requestName(request);
    let reply: Buffer | null = null;
    let ok = true;
    let async: Promise<Buffer> | null = null;
    // The handler takes fds out of msg.fds; keep the original list to close what is left.
    const fds = msg.fds;
    msg.fds = [...fds];
    const seq = resumedSeq ?? (this.journal ? this.journal.begin(msg.header, msg.payload, fds) : 0);
    crashPoint('ctl-after-begin');
    try {
      if ((flags & M.VERSION_MASK) !== M.FLAG_VERSION_1) throw new VhostError(`unsupported message version in flags 0x${flags.toString(16)}`);
      const r = this.handle(msg);
      if (r instanceof Promise) async = r;
      else reply = r;
    } catch (e) {
      ok = false;
      this.log.error({ request: name, err: errorInfo(e) }, 'vhost-user request failed');
    } finally {
      // Any fd the handler did not take is closed here, so a malformed message cannot leak.
      const stray = msg.fds.filter((fd, i) => fd >= 0 && fds[i] === fd);
      for (const fd of stray) native.close(fd);
      if (stray.length > 0 && ok) this.log.warn({ request: name, fds: stray.length }, 'closed fds the message should not carry');
    }
    if (async !== null) {
      this.busy = true;
      this.transport.pause();
      async.then((payload) => this.finish(msg, seq, payload, true), (e) => {
        this.log.error({ request: name, err: errorInfo(e) }, 'vhost-user request failed');
        this.finish(msg, seq, null, false);
      });
      return;
    }
    this.finish(msg, seq, reply, ok);
  }

  /** The reply body a message gets: its protocol reply, a REPLY_ACK status, or none. */
  private replyFor(header: M.MessageHeader, reply: Buffer | null, ok: boolean): Buffer | null {
    // A failed GET_* still gets a reply, or QEMU would wait forever: an empty payload.
    if (M.hasProtocolReply(header.request)) return reply ?? Buffer.alloc(0);
    if ((header.flags & M.FLAG_NEED_REPLY) && this.features.hasProtocol(M.ProtocolFeature.REPLY_ACK)) return M.u64Payload(ok ? 0n : 1n);
    return null;
  }

  /** A framed control reply straight to the frontend: what the keeper does for us, done by us
   * once it is gone for good (Worker.keeperGone). */
  sendFramedReply(data: Buffer, fds: number[]): void {
    if (!this.closed) this.transport.send(data, fds);
  }

  private sendReply(seq: number, header: M.MessageHeader, body: Buffer | null, alreadyFramed = false): void {
    if (this.closed || body === null) return;
    const data = alreadyFramed ? body : M.encodeReply(header.request, body);
    const fds = this.pendingReplyFds.splice(0);
    if (this.journal) this.journal.reply(seq, data, fds);
    else this.transport.send(data, fds);
  }

  private finish(msg: IncomingMessage, seq: number, reply: Buffer | null, ok: boolean): void {
    const body = this.replyFor(msg.header, reply, ok);
    if (this.journal) this.journal.commit(seq, this.state());
    crashPoint('ctl-after-commit');
    this.sendReply(seq, msg.header, body);
    crashPoint('ctl-after-reply');
    this.journal?.end(seq);
    this.pendingReplyFds.splice(0);
    if (this.busy) {
      this.busy = false;
      if (!this.draining) this.transport.resume();
      // Read messages are not journaled yet: even a draining worker handles its backlog.
      while (!this.busy && this.backlog.length > 0) this.dispatch(this.backlog.shift()!);
      this.onSettle?.();
    }
  }

  /**
   * A planned handover (docs/ARCHITECTURE.md, "Upgrades"): stop reading control messages (at a
   * message boundary: QEMU's next one waits in the socket for the successor), stop popping
   * requests, and wait until every control message read is handled and every request in flight
   * is completed and published, except up to `waiting()` of them (parked lock waits, which may
   * wait for ever), or until `deadlineMs`. Resolves with the requests left in flight: they stay
   * marked in the inflight region and the successor resubmits them, as after a crash.
   */
  async drain(deadlineMs: number, waiting: () => number): Promise<number> {
    this.draining = true;
    const deadline = Date.now() + deadlineMs;
    // A message half read (QEMU split it) is finished first; rare, so polled.
    while (!this.closed && !this.transport.atBoundary && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
    this.transport.pause();
    const settled = (): boolean => this.closed || (!this.busy && this.backlog.length === 0 && this.vrings.inflightTotal() <= waiting());
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => done(), Math.max(0, deadline - Date.now()));
      const done = (): void => {
        clearTimeout(timer);
        this.onSettle = null;
        resolve();
      };
      this.onSettle = () => { if (settled()) done(); };
      this.vrings.pauseAll(() => this.onSettle?.());
      crashPoint('drain-after-pause');
      if (settled()) done();
    });
    this.vrings.flushAll();
    return this.vrings.inflightTotal();
  }

  /** The reply carries fd, which is closed once sent (the reply goes out in this turn). */
  private attachToReply(fd: number): void {
    this.pendingReplyFds.push(fd);
    setImmediate(() => native.close(fd));
  }

  private handle(msg: IncomingMessage): Buffer | null | Promise<Buffer> {
    const { request } = msg.header;
    const p = msg.payload;
    switch (request) {
      case M.Request.GET_FEATURES:
        return M.u64Payload(OFFERED_FEATURES);
      case M.Request.SET_FEATURES: {
        expectFds(msg, 0);
        const f = M.parseU64(request, p);
        this.features.ack(f);
        this.log.debug({ features: `0x${f.toString(16)}` }, 'features acked');
        return null;
      }
      case M.Request.GET_PROTOCOL_FEATURES:
        return M.u64Payload(OFFERED_PROTOCOL_FEATURES);
      case M.Request.SET_PROTOCOL_FEATURES:
        expectFds(msg, 0);
        this.features.ackProtocol(M.parseU64(request, p));
        return null;
      case M.Request.SET_OWNER:
        expectFds(msg, 0);
        if (p.length !== 0) throw new VhostError(`SET_OWNER with a ${p.length}-byte payload`);
        this.ownerSet = true;
        return null;
      case M.Request.RESET_OWNER:
      case M.Request.RESET_DEVICE:
        expectFds(msg, 0);
        return this.resetDevice().then(() => Buffer.alloc(0));
      case M.Request.GET_QUEUE_NUM:
        return M.u64Payload(BigInt(this.device.numQueues));
      case M.Request.GET_MAX_MEM_SLOTS:
        return M.u64Payload(BigInt(MAX_MEM_SLOTS));
      case M.Request.SET_MEM_TABLE:
        this.memoryTable.setTable(msg);
        this.vrings.relocateRunning();
        return null;
      case M.Request.ADD_MEM_REG:
        this.memoryTable.addRegion(msg);
        this.vrings.relocateRunning();
        return null;
      case M.Request.REM_MEM_REG:
        this.memoryTable.removeRegion(msg);
        this.vrings.relocateRunning();
        return null;
      case M.Request.SET_VRING_NUM:
        this.vrings.setNum(msg);
        return null;
      case M.Request.SET_VRING_ADDR:
        this.vrings.setAddr(msg);
        return null;
      case M.Request.SET_VRING_BASE:
        this.vrings.setBase(msg);
        return null;
      case M.Request.GET_VRING_BASE:
        return this.vrings.getBase(msg);
      case M.Request.SET_VRING_KICK:
      case M.Request.SET_VRING_CALL:
      case M.Request.SET_VRING_ERR:
        this.vrings.setFd(msg);
        return null;
      case M.Request.SET_VRING_ENABLE:
        this.vrings.setEnable(msg);
        return null;
      case M.Request.SET_BACKEND_REQ_FD:
        expectFds(msg, 1);
        if (!this.features.hasProtocol(M.ProtocolFeature.BACKEND_REQ)) throw new VhostError('SET_BACKEND_REQ_FD without BACKEND_REQ');
        this.registry.replace('vhost.backend', takeFd(msg, 0));
        return null;
      case M.Request.GET_INFLIGHT_FD: {
        const { payload, replyFd } = this.inflight.getFd(msg, this.vrings.anyRunning());
        this.attachToReply(replyFd);
        return payload;
      }
      case M.Request.SET_INFLIGHT_FD:
        this.inflight.setFd(msg, this.vrings.anyRunning());
        return null;
      case M.Request.GET_CONFIG:
        // We offer no CONFIG protocol feature; an empty reply tells the frontend it failed.
        return Buffer.alloc(0);
      default:
        throw new VhostError(`unsupported request ${M.requestName(request)} (${p.length}-byte payload, ${msg.fds.length} fds)`);
    }
  }

  private async resetDevice(): Promise<void> {
    await this.vrings.reset();
    this.features.resetDeviceFeatures();
    this.device.onReset();
  }

  private releaseResources(): void {
    this.memoryTable.release();
    this.vrings.release();
    this.inflight.release();
    this.registry.close('vhost.backend');
  }
}
