// The driver ("guest") side of a split virtqueue (virtio 1.x §2.7), living in GuestMemory.
// Layout (linux/virtio_ring.h):
//   desc  : size × { addr u64, len u32, flags u16, next u16 }            (align 16)
//   avail : flags u16, idx u16, ring[size] u16, used_event u16           (align 2)
//   used  : flags u16, idx u16, ring[size] { id u32, len u32 }, avail_event u16  (align 4)
// The ring indices go through the addon's acquire/release helpers, because the backend reads and
// writes them concurrently from another process.
import { native, C, Poller, POLL_READABLE } from '../../shared/native';
import { GuestMemory } from './guest_memory';

export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
export const VRING_USED_F_NO_NOTIFY = 1;
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
export const DESC_SIZE = 16;

export interface ChainBuffer { gpa: bigint; len: number; writable: boolean }
export interface RawDescriptor { addr: bigint; len: number; flags: number; next: number }
export interface UsedElem { id: number; len: number }

export interface SubmitOptions {
  /** Put the chain in an indirect table (one VRING_DESC_F_INDIRECT descriptor in the ring). */
  indirect?: boolean;
  /** Do not notify the device (the caller will call kick()). */
  noKick?: boolean;
}

interface Pending {
  head: number;
  /** Ring descriptor slots to free when the chain comes back. */
  slots: number[];
  /** Guest memory to free when it comes back (indirect tables). */
  owned: bigint[];
  writableLen: number;
  promise: Promise<UsedElem>;
  resolve: (u: UsedElem) => void;
  reject: (e: Error) => void;
}

export interface Submission { head: number; used: Promise<UsedElem> }

/** Linux's vring_need_event(): should the driver notify, given the device's event index? */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

export interface VirtqueueOptions {
  eventIdx: boolean;
  /** Where to place the rings: region indices for the descriptor table and the avail/used rings. */
  descRegion?: number;
  ringRegion?: number;
}

export class Virtqueue {
  readonly index: number;
  readonly size: number;
  readonly mem: GuestMemory;
  readonly descGpa: bigint;
  readonly availGpa: bigint;
  readonly usedGpa: bigint;
  readonly kickFd: number;
  readonly callFd: number;
  readonly errFd: number;
  eventIdx: boolean;
  /** Next avail idx we will publish (free-running u16). */
  availIdx = 0;
  /** Used entries consumed so far (free-running u16). */
  lastUsedIdx = 0;
  kicks = 0;
  suppressedKicks = 0;
  interrupts = 0;
  /** Protocol violations seen by the driver: unknown used ids, used.len too large, ... */
  readonly violations: string[] = [];
  private readonly freeSlots: number[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly slotWaiters: Array<{ needed: number; run: () => void; fail: (e: Error) => void }> = [];
  /** Completion promises that nobody has asked for yet (by head). */
  private readonly unclaimed = new Map<number, Promise<UsedElem>>();
  private poller: Poller | null = null;
  private polling = false;
  private closed = false;
  private readonly descOff: number;
  private readonly availOff: number;
  private readonly usedOff: number;

  constructor(mem: GuestMemory, index: number, size: number, opts: VirtqueueOptions) {
    if (size < 1 || size > 32768 || (size & (size - 1)) !== 0) {
      throw new RangeError(`queue size ${size} must be a power of two <= 32768`);
    }
    this.mem = mem;
    this.index = index;
    this.size = size;
    this.eventIdx = opts.eventIdx;
    const nreg = mem.regions.length;
    // Descriptor table in region 0, the rings in the last region (above 4 GiB with two regions).
    this.descGpa = mem.alloc(DESC_SIZE * size, { align: 4096, region: opts.descRegion ?? 0 });
    this.availGpa = mem.alloc(6 + 2 * size, { align: 4096, region: opts.ringRegion ?? nreg - 1 });
    this.usedGpa = mem.alloc(6 + 8 * size, { align: 4096, region: opts.ringRegion ?? nreg - 1 });
    this.descOff = mem.offsetOfGpa(this.descGpa, DESC_SIZE * size);
    this.availOff = mem.offsetOfGpa(this.availGpa, 6 + 2 * size);
    this.usedOff = mem.offsetOfGpa(this.usedGpa, 6 + 8 * size);
    for (let i = 0; i < size; i++) this.freeSlots.push(i);
    const efdFlags = (C.EFD_NONBLOCK ?? 0o4000) | (C.EFD_CLOEXEC ?? 0o2000000);
    this.kickFd = native.eventfd(0, efdFlags);
    this.callFd = native.eventfd(0, efdFlags);
    this.errFd = native.eventfd(0, efdFlags);
  }

  get descUva(): bigint { return this.mem.uvaOfGpa(this.descGpa); }
  get availUva(): bigint { return this.mem.uvaOfGpa(this.availGpa); }
  get usedUva(): bigint { return this.mem.uvaOfGpa(this.usedGpa); }
  get inFlight(): number { return this.pending.size; }
  get freeDescriptors(): number { return this.freeSlots.length; }

  // --- raw ring access ---------------------------------------------------------------------

  writeDesc(slot: number, d: RawDescriptor): void {
    const o = this.descOff + slot * DESC_SIZE;
    const v = this.mem.view;
    v.setBigUint64(o, BigInt.asUintN(64, d.addr), true);
    v.setUint32(o + 8, d.len >>> 0, true);
    v.setUint16(o + 12, d.flags & 0xffff, true);
    v.setUint16(o + 14, d.next & 0xffff, true);
  }

  readDesc(slot: number): RawDescriptor {
    const o = this.descOff + slot * DESC_SIZE;
    const v = this.mem.view;
    return {
      addr: v.getBigUint64(o, true), len: v.getUint32(o + 8, true),
      flags: v.getUint16(o + 12, true), next: v.getUint16(o + 14, true),
    };
  }

  /** used->idx as published by the device (acquire). */
  deviceUsedIdx(): number { return native.loadAcquireU16(this.mem.buffer, this.usedOff + 2); }
  /** used->flags (VRING_USED_F_NO_NOTIFY). */
  usedFlags(): number { return native.loadAcquireU16(this.mem.buffer, this.usedOff); }
  /** avail_event at the end of the used ring (EVENT_IDX). */
  availEvent(): number { return native.loadAcquireU16(this.mem.buffer, this.usedOff + 4 + 8 * this.size); }
  /** The avail->idx that we published. */
  publishedAvailIdx(): number { return native.loadAcquireU16(this.mem.buffer, this.availOff + 2); }

  /** With EVENT_IDX: after each harvest, set used_event to ask for the next entry (a driver's
   * normal behaviour). Tests turn it off to check that the device honours used_event. */
  autoArmUsedEvent = true;

  /** Writes avail->used_event (EVENT_IDX): the device should notify when it passes it. */
  setUsedEvent(v: number): void {
    native.storeReleaseU16(this.mem.buffer, this.availOff + 4 + 2 * this.size, v & 0xffff);
  }

  /** Sets avail->flags (VRING_AVAIL_F_NO_INTERRUPT), meaningful without EVENT_IDX. */
  setAvailFlags(flags: number): void {
    native.storeReleaseU16(this.mem.buffer, this.availOff, flags & 0xffff);
  }

  /** Encodes descriptors into a table image (for indirect tables built by hand). */
  static encodeTable(descs: RawDescriptor[]): Buffer {
    const b = Buffer.alloc(descs.length * DESC_SIZE);
    descs.forEach((d, i) => {
      b.writeBigUInt64LE(BigInt.asUintN(64, d.addr), i * DESC_SIZE);
      b.writeUInt32LE(d.len >>> 0, i * DESC_SIZE + 8);
      b.writeUInt16LE(d.flags & 0xffff, i * DESC_SIZE + 12);
      b.writeUInt16LE(d.next & 0xffff, i * DESC_SIZE + 14);
    });
    return b;
  }

  // --- submission ---------------------------------------------------------------------------

  /** Takes n free descriptor slots out of the free list (for raw chains). */
  reserveSlots(n: number): number[] {
    if (n > this.freeSlots.length) throw new Error(`queue ${this.index}: only ${this.freeSlots.length} free descriptors, need ${n}`);
    return this.freeSlots.splice(0, n);
  }

  /** Builds a well-formed chain (readable buffers first, then writable) and makes it available. */
  submit(chain: ChainBuffer[], opts: SubmitOptions = {}): number {
    if (chain.length === 0) throw new Error('empty chain');
    let seenWritable = false;
    for (const c of chain) {
      if (c.writable) seenWritable = true;
      else if (seenWritable) throw new Error('readable buffer after a writable one');
    }
    const writableLen = chain.filter((c) => c.writable).reduce((s, c) => s + c.len, 0);
    const descs: RawDescriptor[] = chain.map((c, i) => ({
      addr: c.gpa, len: c.len,
      flags: (c.writable ? VRING_DESC_F_WRITE : 0) | (i + 1 < chain.length ? VRING_DESC_F_NEXT : 0),
      next: i + 1 < chain.length ? i + 1 : 0,
    }));
    if (opts.indirect) {
      const table = this.mem.allocWith(Virtqueue.encodeTable(descs), { align: 16 });
      const [slot] = this.reserveSlots(1);
      this.writeDesc(slot, { addr: table, len: descs.length * DESC_SIZE, flags: VRING_DESC_F_INDIRECT, next: 0 });
      this.track({ head: slot, slots: [slot], owned: [table], writableLen });
      this.publish([slot], opts.noKick);
      return slot;
    }
    const slots = this.reserveSlots(chain.length);
    descs.forEach((d, i) => {
      this.writeDesc(slots[i], { ...d, next: i + 1 < slots.length ? slots[i + 1] : 0 });
    });
    this.track({ head: slots[0], slots, owned: [], writableLen });
    this.publish([slots[0]], opts.noKick);
    return slots[0];
  }

  /**
   * Hostile-input helper: writes arbitrary descriptors into the given ring slots (which must have
   * been reserved with reserveSlots) and makes `head` available. Nothing is validated. When the
   * chain comes back, `slots` are freed; `owned` guest buffers too.
   */
  submitRaw(descriptors: Array<RawDescriptor & { slot: number }>, head: number,
    opts: { noKick?: boolean; owned?: bigint[]; slots?: number[]; writableLen?: number } = {}): number {
    for (const d of descriptors) this.writeDesc(d.slot, d);
    const slots = opts.slots ?? descriptors.map((d) => d.slot);
    this.track({ head, slots, owned: opts.owned ?? [], writableLen: opts.writableLen ?? Infinity });
    this.publish([head], opts.noKick);
    return head;
  }

  private track(t: { head: number; slots: number[]; owned: bigint[]; writableLen: number }): void {
    if (this.pending.has(t.head)) throw new Error(`queue ${this.index}: head ${t.head} already in flight`);
    let resolve!: (u: UsedElem) => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<UsedElem>((res, rej) => { resolve = res; reject = rej; });
    promise.catch(() => undefined); // rejection is reported to whoever waits
    this.pending.set(t.head, { ...t, promise, resolve, reject });
    this.unclaimed.set(t.head, promise);
  }

  /**
   * Like submitWait(), but when the ring has too few free descriptors, waits (FIFO) until enough
   * chains have come back, as a guest driver would.
   */
  submitWhenFree(chain: ChainBuffer[], opts: SubmitOptions = {}): Promise<Submission> {
    const needed = opts.indirect ? 1 : chain.length;
    if (needed > this.size) return Promise.reject(new Error(`chain of ${needed} descriptors exceeds queue size ${this.size}`));
    if (this.slotWaiters.length === 0 && this.freeSlots.length >= needed) {
      return Promise.resolve(this.submitWait(chain, opts));
    }
    return new Promise<Submission>((resolve, reject) => {
      this.slotWaiters.push({ needed, run: () => {
        try { resolve(this.submitWait(chain, opts)); } catch (e) { reject(e as Error); }
      }, fail: reject });
    });
  }

  private wakeSlotWaiters(): void {
    while (this.slotWaiters.length > 0 && this.freeSlots.length >= this.slotWaiters[0].needed) {
      this.slotWaiters.shift()!.run();
    }
  }

  /** Like submit(), returning the completion promise too. */
  submitWait(chain: ChainBuffer[], opts: SubmitOptions = {}): Submission {
    const head = this.submit(chain, opts);
    const used = this.unclaimed.get(head)!;
    this.unclaimed.delete(head);
    return { head, used };
  }

  private publish(heads: number[], noKick?: boolean): void {
    const old = this.availIdx;
    for (const h of heads) {
      this.mem.view.setUint16(this.availOff + 4 + 2 * (this.availIdx % this.size), h, true);
      this.availIdx = (this.availIdx + 1) & 0xffff;
    }
    native.storeReleaseU16(this.mem.buffer, this.availOff + 2, this.availIdx);
    this.ensurePolling();
    if (!noKick) this.maybeKick(old);
  }

  /** Notifies the device if it asked for it (EVENT_IDX avail_event / VRING_USED_F_NO_NOTIFY). */
  maybeKick(oldIdx: number): boolean {
    // The device may be updating avail_event/flags right now: full barrier between our avail->idx
    // store and reading its suppression state (virtio spec 2.7.10).
    native.fence();
    let need: boolean;
    if (this.eventIdx) need = vringNeedEvent(this.availEvent(), this.availIdx, oldIdx);
    else need = (this.usedFlags() & VRING_USED_F_NO_NOTIFY) === 0;
    if (need) this.kick();
    else this.suppressedKicks++;
    return need;
  }

  /** Unconditional notification. */
  kick(): void {
    if (this.closed) return;
    this.kicks++;
    native.eventfdWrite(this.kickFd, 1);
  }

  // --- completion ---------------------------------------------------------------------------

  /**
   * Resolves when the chain with this head comes back in the used ring (or came back already and
   * nobody has waited for it yet). Rejects after timeoutMs.
   */
  waitUsed(head: number, timeoutMs = 10_000): Promise<UsedElem> {
    const prom = this.unclaimed.get(head) ?? this.pending.get(head)?.promise;
    if (!prom) return Promise.reject(new Error(`queue ${this.index}: head ${head} is not in flight`));
    this.unclaimed.delete(head);
    return withTimeout(prom, timeoutMs, () => new Error(`queue ${this.index}: head ${head} not used ` +
      `within ${timeoutMs} ms (avail ${this.availIdx}, device used ${this.deviceUsedIdx()}, ` +
      `last seen ${this.lastUsedIdx})`));
  }

  /** Ring state for error messages. */
  describe(): string {
    return `queue ${this.index}: avail ${this.availIdx}, device used ${this.deviceUsedIdx()}, ` +
      `harvested ${this.lastUsedIdx}, used flags ${this.usedFlags()}, avail_event ${this.availEvent()}, ` +
      `kicks ${this.kicks} (+${this.suppressedKicks} suppressed), interrupts ${this.interrupts}, ` +
      `polling ${this.polling}, in flight ${this.pending.size}`;
  }

  /** True when `head` is still waiting for the device. */
  isPending(head: number): boolean { return this.pending.has(head); }

  /** Consumes used entries. Returns them (also delivered to waiters). */
  harvest(): UsedElem[] {
    const out: UsedElem[] = [];
    if (this.closed) return out;
    for (;;) {
      const usedIdx = this.deviceUsedIdx();
      if (((usedIdx - this.lastUsedIdx) & 0xffff) > this.size) {
        this.violations.push(`used->idx ${usedIdx} is more than queue size ahead of ${this.lastUsedIdx}`);
        this.lastUsedIdx = usedIdx; // resync; entries are lost
        continue;
      }
      while (this.lastUsedIdx !== usedIdx) {
        const o = this.usedOff + 4 + 8 * (this.lastUsedIdx % this.size);
        const e: UsedElem = { id: this.mem.view.getUint32(o, true), len: this.mem.view.getUint32(o + 4, true) };
        this.lastUsedIdx = (this.lastUsedIdx + 1) & 0xffff;
        out.push(e);
        this.complete(e);
      }
      if (!this.eventIdx || !this.autoArmUsedEvent) break;
      // Ask to be interrupted at the next used entry, then re-check (avoid a lost wakeup).
      this.setUsedEvent(this.lastUsedIdx);
      native.fence();
      if (this.deviceUsedIdx() === this.lastUsedIdx) break;
    }
    if (this.pending.size === 0) this.stopPolling();
    return out;
  }

  private complete(e: UsedElem): void {
    const p = this.pending.get(e.id);
    if (!p) {
      this.violations.push(`used id ${e.id} (len ${e.len}) was not in flight`);
      return;
    }
    if (e.len > p.writableLen) {
      this.violations.push(`used id ${e.id}: len ${e.len} > writable ${p.writableLen}`);
    }
    this.pending.delete(e.id);
    for (const s of p.slots) this.freeSlots.push(s);
    for (const g of p.owned) this.mem.freeGpa(g);
    p.resolve(e);
    this.wakeSlotWaiters();
  }

  private ensurePolling(): void {
    if (this.closed) return;
    if (!this.poller) {
      this.poller = new native.Poller(this.callFd, (status) => {
        if (status < 0 || this.closed) return;
        const n = native.eventfdRead(this.callFd);
        if (n > 0) this.interrupts += n; // the counter sums every write since the last read
        this.harvest();
      });
    }
    if (!this.polling) {
      this.poller.start(POLL_READABLE);
      this.polling = true;
    }
  }

  private stopPolling(): void {
    if (this.poller && this.polling) {
      this.poller.stop();
      this.polling = false;
    }
  }

  /** Reads the call eventfd now and counts what it held: notifications the device wrote while
   * nothing was polling (or not yet read) are counted before the caller takes a baseline. */
  drainInterrupts(): void {
    const n = native.eventfdRead(this.callFd);
    if (n > 0) this.interrupts += n;
  }

  /** Reads (and resets) the error eventfd counter: > 0 when the backend signalled a vring error. */
  readErr(): number {
    const v = native.eventfdRead(this.errFd);
    return v < 0 ? 0 : v;
  }

  /** Fails every waiter (the backend went away) and stops polling. */
  abort(reason: Error): void {
    for (const p of this.pending.values()) p.reject(reason);
    for (const w of this.slotWaiters.splice(0)) w.fail(reason);
    this.stopPolling();
  }

  close(): void {
    if (this.closed) return;
    this.abort(new Error(`queue ${this.index} closed`));
    this.closed = true;
    if (this.poller) this.poller.close();
    this.poller = null;
    native.close(this.kickFd);
    native.close(this.callFd);
    native.close(this.errFd);
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number, err: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(err()), ms);
    p.then((v) => { clearTimeout(timer); resolve(v); }, (e) => { clearTimeout(timer); reject(e); });
  });
}
