// The vrings: what the frontend configures per queue (SET_VRING_NUM/ADDR/BASE/KICK/CALL/ERR/
// ENABLE), validated message by message, and the queue that runs on a QueueHandler once its
// configuration is complete, until GET_VRING_BASE or a reset stops it. A running queue's kick
// eventfd is polled here and its call eventfd written here.
import type { Logger } from '../../shared/log';
import { native, type Poller, POLL_KICK_READ, POLL_READABLE } from '../../shared/native';
import type { FdRegistry } from '../../shared/fd_registry';
import { errorInfo } from '../../shared/errors';
import { faultPoint } from '../../shared/fault_points';
import { GuestMemoryError, toSafeNumber, type GuestMemory } from '../virtqueue/guest_memory';
import { RingError, MAX_QUEUE_SIZE, splitRingFactory, type RingFactory, type VirtRing } from '../virtqueue/split_ring';
import type { QueueHandler } from '../virtqueue/queue_server';
import * as M from './messages';
import type { IncomingMessage } from './transport';
import { VhostError } from './errors';
import { expectFds, takeFd } from './message_fds';
import type { NegotiatedFeatures } from './features';
import type { InflightTracking } from './inflight';

/** GET_VRING_BASE waits this long for in-flight requests (e.g. a blocked SETLKW) to finish. */
const STOP_DRAIN_TIMEOUT_MS = 5000;

export interface VringConfig {
  size: number;
  descUser: number;
  availUser: number;
  usedUser: number;
  addrSet: boolean;
  base: number;
  enabled: boolean;
  kicked: boolean;
}

export interface QueueStats { index: number; size: number; running: boolean; lastAvail: number; used: number; inflight: number; pending: number }

interface RunningQueue {
  handler: QueueHandler;
  ring: VirtRing;
  kickPoller: Poller;
}

export class Vrings {
  private readonly configs: VringConfig[] = [];
  private readonly running = new Map<number, RunningQueue>();

  constructor(numQueues: number, private readonly createQueueHandler: (index: number) => QueueHandler,
    private readonly memory: GuestMemory, private readonly inflight: InflightTracking,
    private readonly features: NegotiatedFeatures, private readonly registry: FdRegistry,
    private readonly log: Logger, private readonly createRing: RingFactory = splitRingFactory) {
    for (let i = 0; i < numQueues; i++) this.configs.push(emptyVring());
  }

  get count(): number {
    return this.configs.length;
  }

  anyRunning(): boolean {
    return this.running.size > 0;
  }

  /** A restarted worker takes over the saved configuration and restarts the queues that ran. */
  restore(saved: VringConfig[], running: number[]): void {
    saved.forEach((v, i) => { this.configs[i] = { ...v }; });
    for (const index of running) {
      faultPoint('resume-vrings');
      this.maybeStartQueue(index, true);
    }
  }

  saved(): VringConfig[] {
    return this.configs.map((v) => ({ ...v }));
  }

  runningIndices(): number[] {
    return [...this.running.keys()].sort((a, b) => a - b);
  }

  stats(): QueueStats[] {
    return this.configs.map((v, index) => {
      const q = this.running.get(index);
      let pending = 0;
      try {
        pending = q ? q.ring.pending() : 0;
      } catch {
        pending = -1; // the driver corrupted the ring; the queue server has stopped it
      }
      return {
        index, size: v.size, running: q !== undefined,
        lastAvail: q ? q.ring.lastAvailIdx : v.base,
        used: q ? q.ring.usedIndex() : 0,
        inflight: q ? q.handler.inflightCount() : 0,
        pending,
      };
    });
  }

  setNum(msg: IncomingMessage): void {
    const { request } = msg.header;
    expectFds(msg, 0);
    const s = M.parseVringState(request, msg.payload);
    const v = this.vringIndex(request, s.index);
    if (s.num < 1 || s.num > MAX_QUEUE_SIZE || (s.num & (s.num - 1)) !== 0) throw new VhostError(`SET_VRING_NUM: invalid size ${s.num}`);
    if (this.running.has(s.index)) throw new VhostError(`SET_VRING_NUM on running queue ${s.index}`);
    v.size = s.num;
  }

  setAddr(msg: IncomingMessage): void {
    const { request } = msg.header;
    expectFds(msg, 0);
    const a = M.parseVringAddr(request, msg.payload);
    const v = this.vringIndex(request, a.index);
    if (this.running.has(a.index)) throw new VhostError(`SET_VRING_ADDR on running queue ${a.index}`);
    // Validated in locals and assigned only at the end: a nacked message must leave the
    // vring (and the journaled state, which a successor must be able to load) as it was.
    const desc = toSafeNumber(a.descUser);
    const avail = toSafeNumber(a.availUser);
    const used = toSafeNumber(a.usedUser);
    if ([desc, avail, used].some((x) => Number.isNaN(x))) throw new VhostError('SET_VRING_ADDR: address out of range');
    // Check against the memory table now (QEMU sends it first), so a bad address is
    // refused by this message, not silently at queue start.
    if (this.memory.regionCount > 0 && v.size > 0) {
      const parts: Array<[number, number, string]> = [[desc, 16 * v.size, 'descriptor table'], [avail, 6 + 2 * v.size, 'avail ring'], [used, 6 + 8 * v.size, 'used ring']];
      for (const [addr, len, what] of parts) {
        if (this.memory.findUser(addr, len) === null) throw new VhostError(`SET_VRING_ADDR: ${what} at 0x${addr.toString(16)} is not in guest memory`);
      }
    }
    v.descUser = desc;
    v.availUser = avail;
    v.usedUser = used;
    v.addrSet = true;
  }

  setBase(msg: IncomingMessage): void {
    const { request } = msg.header;
    expectFds(msg, 0);
    const s = M.parseVringState(request, msg.payload);
    const v = this.vringIndex(request, s.index);
    if (s.num > 0xffff) throw new VhostError(`SET_VRING_BASE: base ${s.num} out of range`);
    if (this.running.has(s.index)) throw new VhostError(`SET_VRING_BASE on running queue ${s.index}`);
    v.base = s.num;
  }

  /** GET_VRING_BASE: stops the queue (waiting for its requests) and replies its last avail index. */
  getBase(msg: IncomingMessage): Promise<Buffer> {
    const { request } = msg.header;
    expectFds(msg, 0);
    const s = M.parseVringState(request, msg.payload);
    const v = this.vringIndex(request, s.index);
    return this.stopQueue(s.index).then((lastAvail) => {
      v.kicked = false;
      v.base = lastAvail;
      // The queue is stopped; its kick/call fds are no longer used.
      this.registry.close(`vring.${s.index}.kick`);
      return M.encodeVringState({ index: s.index, num: lastAvail });
    });
  }

  /** SET_VRING_KICK / SET_VRING_CALL / SET_VRING_ERR. */
  setFd(msg: IncomingMessage): void {
    const { request } = msg.header;
    const u = M.parseU64(request, msg.payload);
    const index = Number(u & M.VRING_IDX_MASK);
    const noFd = (u & M.VRING_NOFD_MASK) !== 0n;
    if ((u & ~(M.VRING_IDX_MASK | M.VRING_NOFD_MASK)) !== 0n) throw new VhostError(`${M.requestName(request)}: bad payload 0x${u.toString(16)}`);
    const v = this.vringIndex(request, index);
    const kind = request === M.Request.SET_VRING_KICK ? 'kick' : request === M.Request.SET_VRING_CALL ? 'call' : 'err';
    expectFds(msg, noFd ? 0 : 1);
    if (noFd) {
      if (kind === 'kick') throw new VhostError('SET_VRING_KICK without an fd (polling mode) is not supported');
      if (kind === 'call') this.running.get(index)?.ring.setCallFd?.(null);
      this.registry.close(`vring.${index}.${kind}`);
      return;
    }
    const fd = takeFd(msg, 0);
    native.setNonBlocking(fd, true);
    if (kind === 'kick') {
      // A new kick fd replaces the old one; a running queue must poll the new fd.
      const q = this.running.get(index);
      if (q) q.kickPoller.close();
      this.registry.replace(`vring.${index}.kick`, fd);
      if (q) q.kickPoller = this.pollKick(index, fd, q.handler, q.ring);
      v.kicked = true;
      // Without VHOST_USER_F_PROTOCOL_FEATURES a ring starts enabled on its kick.
      if (!this.features.has(M.VHOST_USER_F_PROTOCOL_FEATURES)) v.enabled = true;
      this.maybeStartQueue(index);
    } else {
      this.registry.replace(`vring.${index}.${kind}`, fd);
      if (kind === 'call') this.running.get(index)?.ring.setCallFd?.(fd);
    }
  }

  setEnable(msg: IncomingMessage): void {
    const { request } = msg.header;
    expectFds(msg, 0);
    const s = M.parseVringState(request, msg.payload);
    const v = this.vringIndex(request, s.index);
    if (s.num > 1) throw new VhostError(`SET_VRING_ENABLE: bad value ${s.num}`);
    if (!this.features.has(M.VHOST_USER_F_PROTOCOL_FEATURES)) throw new VhostError('SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES');
    v.enabled = s.num === 1;
    if (v.enabled) this.maybeStartQueue(s.index);
  }

  /** After a memory table change: running rings hold views on the old mappings; re-locate them
   * in the new table. */
  relocateRunning(): void {
    for (const [index, q] of this.running) {
      const v = this.configs[index]!;
      try {
        const ring = this.createRing(this.memory, { size: v.size, descUser: v.descUser, availUser: v.availUser, usedUser: v.usedUser },
          q.ring.lastAvailIdx, this.features.has(M.VIRTIO_RING_F_EVENT_IDX), this.features.has(M.VIRTIO_RING_F_INDIRECT_DESC),
          this.inflight.regionFor(index, v.size, false), index);
        q.ring.setCallFd?.(null);
        q.kickPoller.setKickHandler(null);
        q.ring = ring;
        this.bindRing(index, ring, q.kickPoller);
        q.handler.start(ring, () => this.notify(index), []);
      } catch (e) {
        this.log.error({ queue: index, err: errorInfo(e) }, 'queue no longer in guest memory after a memory table change; stopped');
        void this.stopQueue(index);
      }
    }
  }

  /** A planned handover: no queue pops any more (see QueueHandler.pause). */
  pauseAll(onSettle: () => void): void {
    for (const q of this.running.values()) q.handler.pause?.(onSettle);
  }

  /** Requests popped and not yet completed, over every queue. */
  inflightTotal(): number {
    let n = 0;
    for (const q of this.running.values()) n += q.handler.inflightCount();
    return n;
  }

  flushAll(): void {
    for (const q of this.running.values()) q.handler.flushNow?.();
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.running.keys()].map((i) => this.stopQueue(i)));
  }

  /** RESET_OWNER / RESET_DEVICE: every queue stopped and unconfigured. */
  async reset(): Promise<void> {
    await this.stopAll();
    for (let i = 0; i < this.configs.length; i++) this.configs[i] = emptyVring();
  }

  /** Closes the kick/call/err fds in the keeper (the connection ended). */
  release(): void {
    this.registry.closePrefix('vring.');
  }

  private vringIndex(request: number, index: number): VringConfig {
    const v = this.configs[index];
    if (v === undefined) throw new VhostError(`${M.requestName(request)}: queue index ${index} out of range (${this.configs.length} queues)`);
    return v;
  }

  private pollKick(index: number, fd: number, handler: QueueHandler, ring: VirtRing): Poller {
    const poller = new native.Poller(fd, (status, events) => {
      if (status < 0) {
        this.log.error({ queue: index, status }, 'kick fd poll error');
        return;
      }
      // The ring's native kick read the eventfd and left this kick to us.
      if ((events & POLL_KICK_READ) !== 0 || native.eventfdRead(fd) >= 0) handler.kick();
    });
    this.bindRing(index, ring, poller);
    poller.start(POLL_READABLE);
    return poller;
  }

  /** A ring that takes kicks itself gets them first, and interrupts with the queue's call fd. */
  private bindRing(index: number, ring: VirtRing, poller: Poller): void {
    ring.bindKick?.(poller);
    ring.setCallFd?.(this.registry.get(`vring.${index}.call`) ?? null);
  }

  private notify(index: number): void {
    const fd = this.registry.get(`vring.${index}.call`);
    if (fd === undefined) return;
    try {
      native.eventfdWrite(fd, 1);
    } catch (e) {
      this.log.error({ queue: index, err: errorInfo(e) }, 'call eventfd write failed');
    }
  }

  /** Starts a configured queue. `resume`: a restarted worker takes over a running queue, so the
   * inflight region is recovered (never re-initialized). */
  private maybeStartQueue(index: number, resume = false): void {
    const v = this.configs[index]!;
    if (this.running.has(index) || !v.kicked || !v.enabled || !v.addrSet || v.size === 0) return;
    const handler = this.createQueueHandler(index);
    let ring: VirtRing;
    let resubmit: number[] = [];
    try {
      const frontendInflight = this.inflight.frontendProvided;
      const inflight = this.inflight.regionFor(index, v.size, !frontendInflight && !resume);
      ring = this.createRing(this.memory, { size: v.size, descUser: v.descUser, availUser: v.availUser, usedUser: v.usedUser },
        v.base, this.features.has(M.VIRTIO_RING_F_EVENT_IDX), this.features.has(M.VIRTIO_RING_F_INDIRECT_DESC), inflight, index);
      if ((resume || frontendInflight) && inflight !== null && inflight.descNum === v.size) {
        resubmit = ring.recoverInflight();
        if (resubmit.length > 0) this.log.warn({ queue: index, heads: resubmit.length, resume }, 'resubmitting inflight requests');
      }
    } catch (e) {
      if (e instanceof RingError || e instanceof GuestMemoryError || e instanceof VhostError) {
        this.log.error({ queue: index, err: errorInfo(e) }, 'cannot start queue');
        return;
      }
      throw e;
    }
    const kickFd = this.registry.get(`vring.${index}.kick`)!;
    const kickPoller = this.pollKick(index, kickFd, handler, ring);
    this.running.set(index, { handler, ring, kickPoller });
    this.log.info({ queue: index, size: v.size, base: v.base, eventIdx: ring.eventIdx }, 'queue started');
    handler.start(ring, () => this.notify(index), resubmit);
    // A kick may have been consumed before we polled; look at the ring once.
    handler.kick();
    // A dead worker may have published used entries without interrupting the guest; a
    // spurious interrupt is harmless.
    if (resume) this.notify(index);
  }

  private async stopQueue(index: number): Promise<number> {
    const q = this.running.get(index);
    const v = this.configs[index]!;
    if (!q) return v.base;
    this.running.delete(index);
    q.kickPoller.close();
    q.ring.setCallFd?.(null);
    const drained = q.handler.stop();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), STOP_DRAIN_TIMEOUT_MS); });
    const r = await Promise.race([drained.then(() => 'drained' as const), timeout]);
    clearTimeout(timer);
    if (r === 'timeout') this.log.warn({ queue: index, inflight: q.handler.inflightCount() }, 'queue stopped with requests still in flight');
    const lastAvail = q.ring.lastAvailIdx;
    this.log.info({ queue: index, lastAvail }, 'queue stopped');
    return lastAvail;
  }
}

function emptyVring(): VringConfig {
  return { size: 0, descUser: 0, availUser: 0, usedUser: 0, addrSet: false, base: 0, enabled: false, kicked: false };
}
