// A split virtqueue, device side (virtio 1.x §2.7), with indirect descriptors, EVENT_IDX
// notification suppression and vhost-user inflight tracking (docs/ARCHITECTURE.md, Crash
// safety, rule 4 "Inflight tracking"). Ring indices shared with the guest go through the
// addon's acquire/release helpers; descriptors are read with plain loads after the acquire
// load of avail->idx.
import { native, type IoSegment, type Poller, type ServedFile, type ServedNewInode, type ServedReaddir } from '../../shared/native';
import { GuestMemory, GuestMemoryError } from './guest_memory';
import { GuestError } from '../../shared/errors';

export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
export const VRING_USED_F_NO_NOTIFY = 1;
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
export const MAX_QUEUE_SIZE = 32768;
/** An indirect table may hold at most this many descriptors, whatever the queue size. The
 * spec says no chain is longer than the queue, but Linux's virtio-fs puts one entry per page of
 * a large direct write in one indirect table, and QEMU and libvhost-user accept tables of up to
 * 1024 entries (VIRTQUEUE_MAX_SIZE); so do we. */
export const MAX_INDIRECT_DESCRIPTORS = 1024;

const DESC_SIZE = 16;

/** A malformed descriptor chain (the guest's doing): the request is answered or dropped. */
export class ChainError extends GuestError {
  constructor(message: string, readonly head: number) {
    super(message);
  }
}

/** A ring the guest broke as a whole (an avail index that jumps past the ring size). */
export class RingError extends GuestError {}

export interface DescriptorChain {
  head: number;
  /** The inflight-tracking counter of this pop (0n without tracking): with the head it names
   * the request across worker restarts. */
  counter: bigint;
  /** Popped by a dead worker and resubmitted after recovery. */
  resubmitted: boolean;
  /** Device-readable buffers (the request), in chain order. */
  readable: IoSegment[];
  readableLen: number;
  /** Device-writable buffers (the reply). */
  writable: IoSegment[];
  writableLen: number;
}

/** Requests the ring served itself whose outcome JavaScript must journal before their used
 * elements (already pushed) are published, in pop order: LOOKUPs (one more lookup of
 * `nodeid(i)` each, or a new inode), SETATTRs (no session change), OPEN(DIR)s (a new fh) and
 * RELEASE(DIR)s (the release itself is JavaScript's). `reply(i)` is what the guest got. One batch
 * per ring turn
 * (native_ring.ts reads it from the addon): one crossing and one copy for all of them. */
export interface RingServedBatch {
  readonly served: true;
  readonly count: number;
  /** The ring journaled these requests' outcomes and published them itself (native/src/ring.cc
   * JournalOwnBatch): only their session changes (a LOOKUP's lookup count or new inode) are
   * left to apply, without journaling or publishing anything. */
  readonly journaled?: boolean;
  head(i: number): number;
  counter(i: number): bigint;
  opcode(i: number): number;
  nodeid(i: number): number;
  reply(i: number): Buffer;
  /** The inode a LOOKUP added as `nodeid(i)`, or null. */
  newInode?(i: number): ServedNewInode | null;
  /** The file an OPEN of `nodeid(i)` opened, or null. */
  opened?(i: number): ServedFile | null;
  /** The file a RELEASE took out of the addon's table (its fd still open), or null. */
  released?(i: number): ServedFile | null;
  /** The same of OPENDIR and RELEASEDIR. */
  openedDir?(i: number): ServedFile | null;
  releasedDir?(i: number): ServedFile | null;
  /** For a request whose intent the addon journaled before its syscall (CREATE, UNLINK, RMDIR):
   * the intent's wall-clock ms; else null. */
  intentMs?(i: number): number | null;
  /** The file a CREATE opened, of the inode it added (newInode), or null. */
  created?(i: number): ServedFile | null;
  /** The dir a READDIRPLUS read, and where it stands now; or null. */
  readdir?(i: number): ServedReaddir | null;
  /** The (nodeid, nlookup) pairs of a FORGET or BATCH_FORGET; or null. */
  forgets?(i: number): Array<{ nodeid: number; nlookup: number }> | null;
}

/** A started split ring, device side: this file's SplitRing (the reference, in TypeScript) or
 * native_ring.ts's NativeSplitRing (the same algorithm in the addon, which may also serve
 * requests itself). */
export interface VirtRing {
  readonly size: number;
  readonly eventIdx: boolean;
  /** Next avail ring slot to read. */
  readonly lastAvailIdx: number;
  /** The next chain for JavaScript, null when none is available, or a ChainError for a
   * malformed one (to complete with length 0). */
  pop(): DescriptorChain | ChainError | RingServedBatch | null;
  readChain(head: number): DescriptorChain | ChainError;
  counterOf(head: number): bigint;
  pushUsed(head: number, len: number): void;
  publishUsed(): boolean;
  enableNotification(): boolean;
  disableNotification(): void;
  pending(): number;
  usedIndex(): number;
  recoverInflight(): number[];
  /** Chains the ring served itself (pushed, not yet published) since the last call. */
  takeServed?(): number;
  /** The batch the ring's own kick journaled and published (RingServedBatch.journaled), whose
   * session effects are left to apply, or null with nothing popped. */
  takeJournaled?(): RingServedBatch | null;
  /** The ring can take its queue's kicks itself (native_ring.ts): `poller` (of the kick
   * eventfd) hands them to it first. */
  bindKick?(poller: Poller): void;
  /** Kicks served without JavaScript from now on, or not (the queue server decides). */
  setFastKick?(on: boolean): void;
  /** The call eventfd a kick served without JavaScript interrupts the guest with (null: none). */
  setCallFd?(fd: number | null): void;
  /** Requests the ring runs on its I/O threads (native_ring.ts, native/src/io_pool.h) are
   * handed to `done` as (head, used length) pairs once finished; the queue completes them. */
  setQueuedDone?(done: (pairs: Float64Array, count: number) => void): void;
  /** Requests on the ring's I/O threads not yet handed to setQueuedDone's callback. */
  queuedPending?(): number;
}

/** Builds the ring of a starting queue (vhost/vrings.ts calls it; the worker chooses which). */
export type RingFactory = (mem: GuestMemory, addrs: RingAddresses, lastAvailIdx: number, eventIdx: boolean,
  indirect: boolean, inflight: InflightRegion | null, queueIndex: number) => VirtRing;

export const splitRingFactory: RingFactory = (mem, addrs, lastAvailIdx, eventIdx, indirect, inflight) =>
  new SplitRing(mem, addrs, lastAvailIdx, eventIdx, indirect, inflight);

export interface RingAddresses {
  size: number;
  descUser: number;
  availUser: number;
  usedUser: number;
}

interface Located { buffer: ArrayBuffer; view: DataView; offset: number }

// Inflight region layout (QEMU's QueueRegionSplit): u64 features, u16 version, u16 desc_num,
// u16 last_batch_head, u16 used_idx, then desc_num × {u8 inflight, u8 pad[5], u16 next,
// u64 counter}.
export const INFLIGHT_HEADER_SIZE = 16;
export const INFLIGHT_DESC_SIZE = 16;
export const INFLIGHT_ALIGN = 64;

export function inflightQueueRegionSize(queueSize: number): number {
  const raw = INFLIGHT_HEADER_SIZE + INFLIGHT_DESC_SIZE * queueSize;
  return Math.ceil(raw / INFLIGHT_ALIGN) * INFLIGHT_ALIGN;
}

export class InflightRegion {
  constructor(readonly view: DataView, readonly base: number, readonly queueSize: number) {
    if (base + inflightQueueRegionSize(queueSize) > view.byteLength) throw new RingError('inflight region too small');
  }

  /** Fresh region: zero it and write the header. */
  initialize(features: bigint): void {
    new Uint8Array(this.view.buffer, this.base, inflightQueueRegionSize(this.queueSize)).fill(0);
    this.view.setBigUint64(this.base, features, true);
    this.view.setUint16(this.base + 8, 1, true);
    this.view.setUint16(this.base + 10, this.queueSize, true);
  }

  get descNum(): number { return this.view.getUint16(this.base + 10, true); }
  get version(): number { return this.view.getUint16(this.base + 8, true); }
  get lastBatchHead(): number { return this.view.getUint16(this.base + 12, true); }
  set lastBatchHead(v: number) { this.view.setUint16(this.base + 12, v, true); }
  get usedIdx(): number { return this.view.getUint16(this.base + 14, true); }
  set usedIdx(v: number) { this.view.setUint16(this.base + 14, v & 0xffff, true); }

  private descOff(i: number): number { return this.base + INFLIGHT_HEADER_SIZE + i * INFLIGHT_DESC_SIZE; }
  isInflight(i: number): boolean { return this.view.getUint8(this.descOff(i)) !== 0; }
  setInflight(i: number, on: boolean): void { this.view.setUint8(this.descOff(i), on ? 1 : 0); }
  next(i: number): number { return this.view.getUint16(this.descOff(i) + 6, true); }
  setNext(i: number, v: number): void { this.view.setUint16(this.descOff(i) + 6, v, true); }
  counter(i: number): bigint { return this.view.getBigUint64(this.descOff(i) + 8, true); }
  setCounter(i: number, v: bigint): void { this.view.setBigUint64(this.descOff(i) + 8, v, true); }
}

export class SplitRing implements VirtRing {
  readonly size: number;
  private readonly desc: Located;
  private readonly avail: Located;
  private readonly used: Located;
  /** Next avail ring slot we will read. */
  lastAvailIdx: number;
  /** Our shadow of used->idx, published by publishUsed(). */
  private usedIdx: number;
  private publishedUsedIdx: number;
  private signalledUsedIdx: number;
  private signalledValid = false;
  private inflightCounter = 0n;
  private pendingBatch: number[] = [];

  constructor(private readonly mem: GuestMemory, addrs: RingAddresses, lastAvailIdx: number,
    readonly eventIdx: boolean, readonly indirect: boolean, private readonly inflight: InflightRegion | null) {
    const size = addrs.size;
    if (!Number.isInteger(size) || size < 1 || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
      throw new RingError(`invalid queue size ${size}`);
    }
    this.size = size;
    if (addrs.descUser % 16 !== 0 || addrs.availUser % 2 !== 0 || addrs.usedUser % 4 !== 0) {
      throw new RingError('misaligned vring address');
    }
    this.desc = this.locateUser(addrs.descUser, DESC_SIZE * size, 'descriptor table');
    this.avail = this.locateUser(addrs.availUser, 6 + 2 * size, 'avail ring');
    this.used = this.locateUser(addrs.usedUser, 6 + 8 * size, 'used ring');
    this.lastAvailIdx = lastAvailIdx & 0xffff;
    this.usedIdx = native.loadAcquireU16(this.used.buffer, this.used.offset + 2);
    this.publishedUsedIdx = this.usedIdx;
    this.signalledUsedIdx = this.usedIdx;
    if (inflight !== null && inflight.queueSize !== size) throw new RingError('inflight region size differs from the queue size');
  }

  private locateUser(uaddr: number, len: number, what: string): Located {
    const loc = this.mem.findUser(uaddr, len);
    if (loc === null) throw new RingError(`${what} at 0x${uaddr.toString(16)} (+${len}) is not in guest memory`);
    return { buffer: loc.region.buffer, view: loc.region.view, offset: loc.offset };
  }

  availIdx(): number {
    return native.loadAcquireU16(this.avail.buffer, this.avail.offset + 2);
  }

  /** Number of heads the driver has made available that we have not popped. */
  pending(): number {
    const n = (this.availIdx() - this.lastAvailIdx) & 0xffff;
    if (n > this.size) throw new RingError(`driver advanced avail idx by ${n} on a ring of ${this.size}`);
    return n;
  }

  /** Pops the next available chain. Returns null when none is available. A malformed chain is
   * returned as a ChainError for the caller to complete with length 0. */
  pop(): DescriptorChain | ChainError | null {
    if (this.pending() === 0) return null;
    const head = this.avail.view.getUint16(this.avail.offset + 4 + 2 * (this.lastAvailIdx % this.size), true);
    this.lastAvailIdx = (this.lastAvailIdx + 1) & 0xffff;
    if (head >= this.size) {
      // Not a head we can ever complete; consuming it is all we can do.
      return new ChainError(`avail ring names head ${head} on a ring of ${this.size}`, -1);
    }
    const counter = this.markInflight(head);
    try {
      const c = this.walk(head);
      c.counter = counter;
      return c;
    } catch (e) {
      if (e instanceof GuestMemoryError || e instanceof ChainError) return new ChainError(e.message, head);
      throw e;
    }
  }

  /** The inflight-tracking counter of head's last pop (0n without tracking). Reads only the
   * inflight region, never guest memory. */
  counterOf(head: number): bigint {
    return this.inflight?.counter(head) ?? 0n;
  }

  /** Re-reads a chain by head (for requests resubmitted after a restart). */
  readChain(head: number): DescriptorChain | ChainError {
    try {
      const c = this.walk(head);
      c.counter = this.counterOf(head);
      c.resubmitted = true;
      return c;
    } catch (e) {
      if (e instanceof GuestMemoryError || e instanceof ChainError) return new ChainError(e.message, head);
      throw e;
    }
  }

  private walk(head: number): DescriptorChain {
    const chain: DescriptorChain = { head, counter: 0n, resubmitted: false, readable: [], readableLen: 0, writable: [], writableLen: 0 };
    let view = this.desc.view;
    let tableOffset = this.desc.offset;
    let tableSize = this.size;
    let index = head;
    let seen = 0;
    let inIndirect = false;
    let total = 0;
    for (;;) {
      if (index >= tableSize) throw new ChainError(`descriptor index ${index} out of table (${tableSize})`, head);
      if (++seen > tableSize) throw new ChainError('descriptor chain loops or is longer than its table', head);
      if (++total > this.size + MAX_INDIRECT_DESCRIPTORS) throw new ChainError(`descriptor chain of more than ${this.size + MAX_INDIRECT_DESCRIPTORS} descriptors`, head);
      const d = tableOffset + index * DESC_SIZE;
      const addr = view.getUint32(d, true) + view.getUint32(d + 4, true) * 0x1_0000_0000;
      const len = view.getUint32(d + 8, true);
      const flags = view.getUint16(d + 12, true);
      const next = view.getUint16(d + 14, true);
      if (flags & VRING_DESC_F_INDIRECT) {
        if (!this.indirect) throw new ChainError('indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC', head);
        if (inIndirect) throw new ChainError('nested indirect descriptor table', head);
        if (flags & VRING_DESC_F_NEXT) throw new ChainError('indirect descriptor with NEXT set', head);
        if (len === 0 || len % DESC_SIZE !== 0 || len / DESC_SIZE > MAX_INDIRECT_DESCRIPTORS) {
          throw new ChainError(`bad indirect table length ${len}`, head);
        }
        const loc = this.mem.findGuest(addr, len);
        if (loc === null) throw new ChainError(`indirect table at 0x${addr.toString(16)} is not in guest memory`, head);
        view = loc.region.view;
        tableOffset = loc.offset;
        tableSize = len / DESC_SIZE;
        index = 0;
        seen = 0;
        inIndirect = true;
        continue;
      }
      if (len > 0) {
        if (flags & VRING_DESC_F_WRITE) {
          this.mem.appendSegments(addr, len, chain.writable);
          chain.writableLen += len;
        } else {
          if (chain.writableLen > 0) throw new ChainError('readable descriptor after a writable one', head);
          this.mem.appendSegments(addr, len, chain.readable);
          chain.readableLen += len;
        }
      }
      if (!(flags & VRING_DESC_F_NEXT)) break;
      index = next;
    }
    return chain;
  }

  private markInflight(head: number): bigint {
    const r = this.inflight;
    if (r === null) return 0n;
    this.inflightCounter += 1n;
    r.setCounter(head, this.inflightCounter);
    r.setInflight(head, true);
    return this.inflightCounter;
  }

  /** Queues a used element; it becomes visible to the guest at publishUsed(). */
  pushUsed(head: number, len: number): void {
    const off = this.used.offset + 4 + 8 * (this.usedIdx % this.size);
    this.used.view.setUint32(off, head, true);
    this.used.view.setUint32(off + 4, len >>> 0, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    if (this.inflight !== null) {
      // Link the batch so a successor can clear it if we die right after publishing.
      this.inflight.setNext(head, this.pendingBatch.length === 0 ? head : this.inflight.lastBatchHead);
      this.inflight.lastBatchHead = head;
      this.pendingBatch.push(head);
    }
  }

  /** Publishes queued used elements (release store of used->idx). Returns true when the driver
   * wants a notification for them. */
  publishUsed(): boolean {
    if (this.usedIdx === this.publishedUsedIdx) return false;
    const old = this.publishedUsedIdx;
    native.storeReleaseU16(this.used.buffer, this.used.offset + 2, this.usedIdx);
    this.publishedUsedIdx = this.usedIdx;
    if (this.inflight !== null) {
      for (const h of this.pendingBatch) this.inflight.setInflight(h, false);
      this.pendingBatch = [];
      this.inflight.usedIdx = this.usedIdx;
    }
    // The guest's used_event / flags must be read after our idx store is visible.
    native.fence();
    if (this.eventIdx) {
      const usedEvent = this.avail.view.getUint16(this.avail.offset + 4 + 2 * this.size, true);
      const since = this.signalledValid ? this.signalledUsedIdx : old;
      this.signalledUsedIdx = this.usedIdx;
      this.signalledValid = true;
      return ((this.usedIdx - usedEvent - 1) & 0xffff) < ((this.usedIdx - since) & 0xffff);
    }
    const flags = this.avail.view.getUint16(this.avail.offset, true);
    return (flags & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** Asks the driver to kick us for new buffers. Returns true if buffers arrived meanwhile
   * (the caller must keep draining). */
  enableNotification(): boolean {
    if (this.eventIdx) {
      native.storeReleaseU16(this.used.buffer, this.used.offset + 4 + 8 * this.size, this.lastAvailIdx);
    } else {
      const flags = this.used.view.getUint16(this.used.offset, true);
      native.storeReleaseU16(this.used.buffer, this.used.offset, flags & ~VRING_USED_F_NO_NOTIFY);
    }
    native.fence();
    return this.pending() > 0;
  }

  disableNotification(): void {
    if (this.eventIdx) return; // With EVENT_IDX, not advancing avail_event is enough.
    const flags = this.used.view.getUint16(this.used.offset, true);
    native.storeReleaseU16(this.used.buffer, this.used.offset, flags | VRING_USED_F_NO_NOTIFY);
  }

  usedIndex(): number {
    return this.publishedUsedIdx;
  }

  /**
   * After a restart: settle the inflight region against the used ring and return the heads to
   * resubmit, oldest first. Also sets lastAvailIdx = used_idx + still-inflight.
   */
  recoverInflight(): number[] {
    const r = this.inflight;
    if (r === null) return [];
    const used = native.loadAcquireU16(this.used.buffer, this.used.offset + 2);
    if (r.usedIdx !== used) {
      // The last batch reached the guest but its inflight flags were not cleared.
      let n = (used - r.usedIdx) & 0xffff;
      let h = r.lastBatchHead;
      while (n-- > 0 && h < this.size) {
        r.setInflight(h, false);
        const next = r.next(h);
        if (next === h) break;
        h = next;
      }
      r.usedIdx = used;
    }
    const heads: Array<{ head: number; counter: bigint }> = [];
    for (let i = 0; i < this.size; i++) if (r.isInflight(i)) heads.push({ head: i, counter: r.counter(i) });
    heads.sort((a, b) => (a.counter < b.counter ? -1 : a.counter > b.counter ? 1 : 0));
    // Counters keep growing across restarts (completed descs keep theirs), so a request key
    // (head, counter) is never reused within a session.
    let max = 0n;
    for (let i = 0; i < this.size; i++) if (r.counter(i) > max) max = r.counter(i);
    this.inflightCounter = max;
    this.usedIdx = used;
    this.publishedUsedIdx = used;
    this.lastAvailIdx = (used + heads.length) & 0xffff;
    return heads.map((h) => h.head);
  }
}
