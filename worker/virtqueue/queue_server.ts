// Virtqueue layer: serves one started ring. Pops chains, hands each to the request handler (the
// FUSE server), completes them in the used ring, and batches used-ring publication and guest
// notifications: all completions of one event-loop turn are published with one release store
// and at most one interrupt.
import type { Logger } from '../../shared/log';
import { errorInfo } from '../../shared/errors';
import { ChainError, RingError, type DescriptorChain, type RingServedBatch, type VirtRing } from './split_ring';
import { crashPoint } from '../../shared/crash_points';

/** What the vhost-user backend drives per queue (implemented by QueueServer). */
export interface QueueHandler {
  /** The ring is configured, kicked and enabled: serve it. `resubmit` lists inflight heads
   * recovered from the inflight region, oldest first. */
  start(ring: VirtRing, notify: () => void, resubmit: number[]): void;
  /** The guest kicked the queue (or we kick ourselves after a start). */
  kick(): void;
  /** Stop serving; resolves when no request of this queue is in flight any more. */
  stop(): Promise<void>;
  inflightCount(): number;
  /** A planned handover: pop nothing more (kicks are ignored: the successor kicks itself at its
   * resume) but complete and publish what is in flight; `onSettle` after each completion. */
  pause?(onSettle: () => void): void;
  /** Publishes the completions not yet published (before a planned handover). */
  flushNow?(): void;
}

export interface ChainHandler {
  /** Handles one request chain; returns the number of bytes written into its writable
   * buffers. */
  handleChain(chain: DescriptorChain, queueIndex: number): number | Promise<number>;
  /** A request a dead worker left inflight is about to be resubmitted: count that death
   * durably before anything of the chain (even an indirect table) is read, since reading it may
   * be what kills workers. 'drop': complete it unread, with length 0. */
  resubmitting?(queueIndex: number, head: number, counter: bigint): 'run' | 'drop';
  /** The queue is about to stop: requests that would wait indefinitely (parked lock waits)
   * should end now so that the queue drains. */
  stopping?(queueIndex: number): void;
  /** These heads' used elements are about to become visible to the guest (the PublishBarrier
   * has run). */
  beforePublish?(queueIndex: number, heads: number[]): void;
  /** The ring served these requests itself and pushed their used elements; their session
   * effects must be journaled now (they are published at the next flush, after the barrier). */
  ringServed?(batch: RingServedBatch, queueIndex: number): void;
  /** These heads' used elements are now visible to the guest (they will never be
   * resubmitted). */
  published?(queueIndex: number, heads: number[]): void;
}

/** Makes durable whatever the completed requests' replies depend on (worker/state/durability.ts
 * implements it and states the order); called just before each used-ring publish. */
export interface PublishBarrier {
  commit(): void;
  /** After the publish and its interrupt: what may wait until the guest has its replies. */
  published?(): void;
}

export class QueueServer implements QueueHandler {
  private ring: VirtRing | null = null;
  /** The ring served chains itself that are not yet published. */
  private ringServed = false;
  /** Kicks go to the ring first (native_ring.ts): on once the first completion was seen (the
   * recovery timing needs it here), off while paused or stopped. */
  private fastKick = false;
  private notify: () => void = () => {};
  private running = false;
  private paused = false;
  private onSettle: (() => void) | null = null;
  private inflight = 0;
  /** Requests on the I/O threads of rings this queue no longer serves from (replaced after a
   * memory table change); the current ring counts its own (queuedPending). */
  private retiredQueued = 0;
  private queuedDoneFn: ((pairs: Float64Array, count: number) => void) | null = null;
  private flushScheduled = false;
  private drainWaiters: Array<() => void> = [];
  private completedSinceStart = 0;
  private unpublished: number[] = [];
  private badChainWindow = 0;
  private badChainLogged = 0;
  private badChainSuppressed = 0;

  constructor(readonly index: number, private readonly handler: ChainHandler, private readonly log: Logger,
    private readonly onFirstCompletion?: () => void, private readonly barrier?: PublishBarrier) {}

  start(ring: VirtRing, notify: () => void, resubmit: number[]): void {
    this.ring?.setFastKick?.(false);
    this.fastKick = false;
    if (this.ring !== null && this.ring !== ring) this.retiredQueued += this.ring.queuedPending?.() ?? 0;
    this.ring = ring;
    // Held here: the ring holds it only while its I/O threads have jobs (native/src/ring.cc).
    this.queuedDoneFn = (pairs: Float64Array, count: number): void => this.queuedDone(ring, pairs, count);
    ring.setQueuedDone?.(this.queuedDoneFn);
    this.notify = notify;
    this.running = true;
    for (const head of resubmit) {
      if (this.handler.resubmitting?.(this.index, head, ring.counterOf(head)) === 'drop') {
        this.complete(head, 0);
        continue;
      }
      crashPoint('resubmit-before-read');
      this.dispatch(ring.readChain(head));
    }
    this.flush();
  }

  kick(): void {
    if (!this.running || this.ring === null || this.paused) return;
    const ring = this.ring;
    try {
      // The ring's own kick journaled and published a batch and left us only its session
      // changes to apply: it ended with the ring empty and notifications on, so the next
      // chain kicks it again.
      const journaled = ring.takeJournaled?.() ?? null;
      if (journaled !== null) {
        this.dispatch(journaled);
        return;
      }
      // Kicks are pointless while we drain; re-enabled (and re-checked) once the ring is empty.
      ring.disableNotification();
      for (;;) {
        for (let c = ring.pop(); c !== null; c = ring.pop()) this.dispatch(c);
        if (!ring.enableNotification()) break;
        ring.disableNotification();
      }
    } catch (e) {
      if (!(e instanceof RingError)) throw e;
      // The driver broke the ring (e.g. avail idx ran ahead by more than the ring size). We
      // cannot tell which entries are real; stop serving it rather than read garbage.
      this.log.error({ queue: this.index, err: errorInfo(e) }, 'virtqueue is corrupt; queue stopped');
      this.running = false;
    }
    this.noteRingServed();
    this.flush();
  }

  stop(): Promise<void> {
    this.setFastKick(false);
    this.running = false;
    this.handler.stopping?.(this.index);
    if (this.inflightCount() === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Requests popped and not yet completed: the handler's and the ring's I/O threads'. */
  inflightCount(): number {
    return this.inflight + this.retiredQueued + (this.ring?.queuedPending?.() ?? 0);
  }

  pause(onSettle: () => void): void {
    this.setFastKick(false);
    this.paused = true;
    this.onSettle = onSettle;
  }

  flushNow(): void {
    this.flush();
  }

  private dispatch(c: DescriptorChain | ChainError | RingServedBatch): void {
    if ('served' in c) {
      this.handler.ringServed?.(c, this.index);
      // Journaled and published by the ring already: nothing of them waits for the flush.
      if (c.journaled !== true) for (let i = 0; i < c.count; i++) this.unpublished.push(c.head(i));
      if (this.completedSinceStart === 0 && c.count > 0 && this.onFirstCompletion) this.onFirstCompletion();
      this.completedSinceStart += c.count;
      return;
    }
    if (c instanceof ChainError) {
      // A hostile guest can send these in a loop: log a bounded number per second.
      const now = Date.now();
      if (now - this.badChainWindow >= 1000) {
        if (this.badChainSuppressed > 0) this.log.error({ queue: this.index, suppressed: this.badChainSuppressed }, 'malformed descriptor chains not logged');
        this.badChainWindow = now;
        this.badChainLogged = 0;
        this.badChainSuppressed = 0;
      }
      if (this.badChainLogged++ < 10) this.log.error({ queue: this.index, head: c.head, err: c.message }, 'malformed descriptor chain dropped');
      else this.badChainSuppressed++;
      if (c.head >= 0) this.complete(c.head, 0);
      return;
    }
    let r: number | Promise<number>;
    try {
      r = this.handler.handleChain(c, this.index);
    } catch (e) {
      this.log.error({ queue: this.index, head: c.head, err: errorInfo(e) }, 'request handler threw');
      r = 0;
    }
    if (typeof r === 'number') {
      this.complete(c.head, r);
      return;
    }
    this.inflight++;
    r.then((len) => this.completeAsync(c.head, len), (e) => {
      this.log.error({ queue: this.index, head: c.head, err: errorInfo(e) }, 'request handler failed');
      this.completeAsync(c.head, 0);
    });
  }

  private completeAsync(head: number, len: number): void {
    this.inflight--;
    if (this.takesCompletions()) {
      this.complete(head, len);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => {
          this.flushScheduled = false;
          this.flush();
        });
      }
    } else {
      this.log.warn({ queue: this.index, head }, 'completion after the queue stopped was dropped');
    }
    this.settled();
  }

  /** Requests a ring's I/O threads finished (native_ring.ts): plain READs and WRITEs with
   * nothing to journal, published at once (a macrotask of their own: nothing of JavaScript's
   * waits between its push and its flush). */
  private queuedDone(ring: VirtRing, pairs: Float64Array, count: number): void {
    if (ring !== this.ring) this.retiredQueued -= count;
    if (this.takesCompletions()) {
      for (let i = 0; i < count; i++) this.complete(pairs[2 * i]!, pairs[2 * i + 1]!);
      this.flush();
    } else {
      this.log.warn({ queue: this.index, heads: count }, 'completions after the queue stopped were dropped');
    }
    this.settled();
  }

  private takesCompletions(): boolean {
    return this.ring !== null && (this.running || this.drainWaiters.length > 0);
  }

  /** After completions: wakes stop()'s waiters once nothing is in flight, and a pause's. */
  private settled(): void {
    if (this.inflightCount() === 0 && this.drainWaiters.length > 0) {
      this.flush();
      for (const w of this.drainWaiters.splice(0)) w();
    }
    this.onSettle?.();
  }

  /** Chains the ring served itself count as completions (recovery timing) and must be
   * published. */
  private noteRingServed(): void {
    const n = this.ring?.takeServed?.() ?? 0;
    if (n === 0) return;
    this.ringServed = true;
    if (this.completedSinceStart === 0 && this.onFirstCompletion) this.onFirstCompletion();
    this.completedSinceStart += n;
  }

  private complete(head: number, len: number): void {
    this.ring!.pushUsed(head, len);
    this.unpublished.push(head);
    if (this.completedSinceStart++ === 0 && this.onFirstCompletion) this.onFirstCompletion();
  }

  private flush(): void {
    if (this.ring === null || (this.unpublished.length === 0 && !this.ringServed)) return;
    const heads = this.unpublished;
    this.unpublished = [];
    this.ringServed = false;
    this.barrier?.commit();
    this.handler.beforePublish?.(this.index, heads);
    const wantsNotify = this.ring.publishUsed();
    this.handler.published?.(this.index, heads);
    if (wantsNotify) this.notify();
    this.barrier?.published?.();
    if (!this.fastKick && this.completedSinceStart > 0 && this.running && !this.paused) this.setFastKick(true);
  }

  private setFastKick(on: boolean): void {
    if (this.fastKick === on) return;
    this.fastKick = on;
    this.ring?.setFastKick?.(on);
  }
}
