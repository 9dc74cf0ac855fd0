// The split ring of the addon (native/src/ring.cc) behind the VirtRing interface: the same
// algorithm as split_ring.ts, plus an optional chain server the addon offers each popped chain
// to (the FUSE fast path, opaque here). Chains it declines come back as DescriptorChains whose
// segments point into the same guest memory buffers as GuestMemory's.
import { native, type FastFuseHandle, type IoSegment, type NativeRingHandle, type Poller, type ServedFile, type ServedNewInode, type ServedReaddir } from '../../shared/native';
import type { GuestMemory } from './guest_memory';
import { ChainError, RingError, type DescriptorChain, type InflightRegion, type RingAddresses, type RingFactory, type RingServedBatch, type VirtRing } from './split_ring';

/** The addon's ring breakage as a RingError (other errors as they are). No closure per call:
 * pop() runs for every request. */
function ringError(e: unknown): unknown {
  if (e instanceof Error && (e as { code?: string }).code === 'ERR_VIRTQUEUE_BROKEN') return new RingError(e.message);
  return e;
}

/** Bytes per served request in the addon's `records` (ring.cc kRecordEntry): u32 head,
 * u32 opcode, f64 counter, f64 nodeid, u32 reply length, u32 kind (fast_path.h ServedKind),
 * the reply (160 bytes), then what the kind says: a new inode (i32 fd, u32 file type, u64 dev,
 * u64 ino, i32 mount id, i32 handle type, u32 handle length, 4 bytes of padding, the handle:
 * 128 bytes), an opened or released file or dir (i32 fd, u32 open flags, f64 fh) or the time of
 * an intent the addon journaled (f64 wall-clock ms) in its place; a CREATE has its new inode
 * there, its file and its intent's time after it (a MKDIR: its new dir and the intent's time,
 * the file's room unused); a READDIRPLUS its f64 fh, i64 new dir position, u32 offset and u32
 * length of its long reply in the addon's `tail`, u32 length of the reply and u32 count of the
 * new inodes after it there (DIR_NEW_INODE_SIZE bytes each: f64 nodeid, then a new inode as
 * above); a FORGET or BATCH_FORGET the same with no reply and its (u64 nodeid, u64 nlookup)
 * pairs as the items. */
export const SERVED_RECORD_SIZE = 384;
const SERVED_RECORD_HEADER = 32;
const SERVED_REPLY_ROOM = 160;
const NEW_INODE_AT = SERVED_RECORD_HEADER + SERVED_REPLY_ROOM;
const MAX_HANDLE_BYTES = 128;
const CREATED_FILE_AT = NEW_INODE_AT + 40 + MAX_HANDLE_BYTES;
const CREATED_INTENT_AT = CREATED_FILE_AT + 16;
const KIND_NEW_INODE = 1, KIND_OPENED = 2, KIND_RELEASED = 3, KIND_OPENED_DIR = 4, KIND_RELEASED_DIR = 5, KIND_INTENDED = 6, KIND_CREATED = 7, KIND_MADE_DIR = 8,
  KIND_READDIR_PLUS = 9, KIND_FORGOT = 10;
const DIR_NEW_INODE_SIZE = 48 + MAX_HANDLE_BYTES;
const FORGET_PAIR_SIZE = 16;

/** A new inode as the addon lays it out (fast_path.h PutNewInode) at `p`; its handle a view. */
function readNewInode(b: Buffer, p: number): ServedNewInode {
  const len = Math.min(b.readUInt32LE(p + 32), MAX_HANDLE_BYTES);
  return {
    fd: b.readInt32LE(p), fileType: b.readUInt32LE(p + 4), dev: b.readBigUInt64LE(p + 8), ino: b.readBigUInt64LE(p + 16),
    mountId: b.readInt32LE(p + 24), handleType: b.readInt32LE(p + 28), handle: b.subarray(p + 40, p + 40 + len),
  };
}

/** One batch of the addon's served requests, copied once out of its buffer (the next batch
 * overwrites it; the replies must outlive this turn: the request log keeps them until
 * published). */
class NativeServedBatch implements RingServedBatch {
  readonly served = true;
  private readonly bytes: Buffer;
  /** The long replies (READDIRPLUS), copied too. */
  private readonly tail: Buffer;

  constructor(records: Uint8Array, readonly count: number, tail: Uint8Array, tailLength: number, readonly journaled: boolean) {
    if (!Number.isInteger(count) || count < 0 || count * SERVED_RECORD_SIZE > records.byteLength) {
      throw new RingError(`served batch of ${count} requests does not fit the addon's buffer`);
    }
    if (!Number.isInteger(tailLength) || tailLength < 0 || tailLength > tail.byteLength) {
      throw new RingError(`served batch's ${tailLength} bytes of long replies do not fit the addon's buffer`);
    }
    this.bytes = Buffer.from(records.subarray(0, count * SERVED_RECORD_SIZE));
    this.tail = tailLength === 0 ? Buffer.alloc(0) : Buffer.from(tail.subarray(0, tailLength));
  }

  head(i: number): number { return this.bytes.readUInt32LE(i * SERVED_RECORD_SIZE); }
  opcode(i: number): number { return this.bytes.readUInt32LE(i * SERVED_RECORD_SIZE + 4); }
  counter(i: number): bigint { return BigInt(this.bytes.readDoubleLE(i * SERVED_RECORD_SIZE + 8)); }
  nodeid(i: number): number { return this.bytes.readDoubleLE(i * SERVED_RECORD_SIZE + 16); }
  reply(i: number): Buffer {
    const at = i * SERVED_RECORD_SIZE;
    if (this.bytes.readUInt32LE(at + 28) === KIND_READDIR_PLUS) {
      const { tailAt, replyLen } = this.longReply(at, DIR_NEW_INODE_SIZE);
      return this.tail.subarray(tailAt, tailAt + replyLen);
    }
    const len = Math.min(this.bytes.readUInt32LE(at + 24), SERVED_REPLY_ROOM);
    return this.bytes.subarray(at + SERVED_RECORD_HEADER, at + SERVED_RECORD_HEADER + len);
  }

  readdir(i: number): ServedReaddir | null {
    const at = i * SERVED_RECORD_SIZE;
    if (this.bytes.readUInt32LE(at + 28) !== KIND_READDIR_PLUS) return null;
    const { tailAt, replyLen, count: newCount } = this.longReply(at, DIR_NEW_INODE_SIZE);
    const newInodes: Array<{ nodeid: number; inode: ServedNewInode }> = [];
    for (let k = 0, p = tailAt + replyLen; k < newCount; k++, p += DIR_NEW_INODE_SIZE) {
      newInodes.push({ nodeid: this.tail.readDoubleLE(p), inode: readNewInode(this.tail, p + 8) });
    }
    return { fh: this.bytes.readDoubleLE(at + NEW_INODE_AT), position: this.bytes.readBigInt64LE(at + NEW_INODE_AT + 8), newInodes };
  }

  forgets(i: number): Array<{ nodeid: number; nlookup: number }> | null {
    const at = i * SERVED_RECORD_SIZE;
    if (this.bytes.readUInt32LE(at + 28) !== KIND_FORGOT) return null;
    const { tailAt, count } = this.longReply(at, FORGET_PAIR_SIZE);
    const pairs: Array<{ nodeid: number; nlookup: number }> = [];
    for (let k = 0, p = tailAt; k < count; k++, p += FORGET_PAIR_SIZE) {
      // As protocol.ts reads them: a count past 2^53-1 means as much as 2^53-1.
      const n = this.tail.readBigUInt64LE(p + 8);
      pairs.push({ nodeid: Number(this.tail.readBigUInt64LE(p)), nlookup: n > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(n) });
    }
    return pairs;
  }

  /** Where a READDIRPLUS's long reply is in the tail: its reply, then its new inodes. */
  private longReply(at: number, itemSize: number): { tailAt: number; replyLen: number; count: number } {
    const tailAt = this.bytes.readUInt32LE(at + NEW_INODE_AT + 16);
    const tailLen = this.bytes.readUInt32LE(at + NEW_INODE_AT + 20);
    const replyLen = this.bytes.readUInt32LE(at + NEW_INODE_AT + 24);
    const count = this.bytes.readUInt32LE(at + NEW_INODE_AT + 28);
    if (tailAt + tailLen > this.tail.length || replyLen + count * itemSize !== tailLen) {
      throw new RingError(`served reply of ${replyLen} bytes and ${count} items in ${tailAt}+${tailLen} of the batch's ${this.tail.length} bytes`);
    }
    return { tailAt, replyLen, count };
  }

  newInode(i: number): ServedNewInode | null {
    const at = i * SERVED_RECORD_SIZE;
    const kind = this.bytes.readUInt32LE(at + 28);
    if (kind !== KIND_NEW_INODE && kind !== KIND_CREATED && kind !== KIND_MADE_DIR) return null;
    return readNewInode(this.bytes, at + NEW_INODE_AT);
  }

  opened(i: number): ServedFile | null {
    return this.file(i, KIND_OPENED);
  }

  released(i: number): ServedFile | null {
    return this.file(i, KIND_RELEASED);
  }

  openedDir(i: number): ServedFile | null {
    return this.file(i, KIND_OPENED_DIR);
  }

  releasedDir(i: number): ServedFile | null {
    return this.file(i, KIND_RELEASED_DIR);
  }

  intentMs(i: number): number | null {
    const at = i * SERVED_RECORD_SIZE;
    const kind = this.bytes.readUInt32LE(at + 28);
    return kind === KIND_INTENDED ? this.bytes.readDoubleLE(at + NEW_INODE_AT)
      : kind === KIND_CREATED || kind === KIND_MADE_DIR ? this.bytes.readDoubleLE(at + CREATED_INTENT_AT) : null;
  }

  created(i: number): ServedFile | null {
    return this.file(i, KIND_CREATED, CREATED_FILE_AT);
  }

  private file(i: number, kind: number, area = NEW_INODE_AT): ServedFile | null {
    const at = i * SERVED_RECORD_SIZE;
    if (this.bytes.readUInt32LE(at + 28) !== kind) return null;
    const p = at + area;
    return { fd: this.bytes.readInt32LE(p), flags: this.bytes.readUInt32LE(p + 4), fh: this.bytes.readDoubleLE(p + 8) };
  }
}

export class NativeSplitRing implements VirtRing {
  readonly size: number;
  private readonly ring: NativeRingHandle;
  /** Region index (as the addon numbers them) → the ArrayBuffer segments point into. */
  private readonly buffers: ArrayBuffer[];

  constructor(mem: GuestMemory, addrs: RingAddresses, lastAvailIdx: number, readonly eventIdx: boolean,
    indirect: boolean, inflight: InflightRegion | null, server: FastFuseHandle | null, queueIndex: number) {
    const regions = mem.list();
    this.buffers = regions.map((r) => r.buffer);
    this.size = addrs.size;
    if (inflight !== null && inflight.queueSize !== addrs.size) throw new RingError('inflight region size differs from the queue size');
    try {
      this.ring = new native.NativeRing(regions, addrs.size, addrs.descUser, addrs.availUser, addrs.usedUser,
        lastAvailIdx & 0xffff, eventIdx, indirect, inflight?.view.buffer as ArrayBuffer ?? null, inflight?.base ?? 0, queueIndex);
    } catch (e) {
      throw ringError(e);
    }
    if (server !== null) this.ring.attach(server);
  }

  get lastAvailIdx(): number {
    return this.ring.lastAvailIdx();
  }

  pop(): DescriptorChain | ChainError | RingServedBatch | null {
    let r: number;
    try {
      r = this.ring.pop();
    } catch (e) {
      throw ringError(e);
    }
    if (r === -1) return null;
    if (r === -2) return new ChainError(this.ring.lastError, this.ring.scratch[0]!);
    if (r === -3) return new NativeServedBatch(this.ring.records, this.ring.scratch[0]!, this.ring.tail, this.ring.scratch[1]!, this.ring.scratch[2] === 1);
    return this.chainFromScratch();
  }

  takeJournaled(): RingServedBatch | null {
    if (this.ring.takeJournaled() !== -3) return null;
    return new NativeServedBatch(this.ring.records, this.ring.scratch[0]!, this.ring.tail, this.ring.scratch[1]!, true);
  }

  readChain(head: number): DescriptorChain | ChainError {
    const r = this.ring.readChain(head);
    if (r === -2) return new ChainError(this.ring.lastError, head);
    return this.chainFromScratch();
  }

  counterOf(head: number): bigint { return this.ring.counterOf(head); }
  pushUsed(head: number, len: number): void { this.ring.pushUsed(head, len); }
  publishUsed(): boolean { return this.ring.publishUsed(); }
  enableNotification(): boolean {
    try {
      return this.ring.enableNotification();
    } catch (e) {
      throw ringError(e);
    }
  }
  disableNotification(): void { this.ring.disableNotification(); }
  pending(): number {
    try {
      return this.ring.pending();
    } catch (e) {
      throw ringError(e);
    }
  }
  availIdx(): number { return this.ring.availIdx(); }
  usedIndex(): number { return this.ring.usedIndex(); }
  recoverInflight(): number[] { return this.ring.recoverInflight(); }
  takeServed(): number { return this.ring.takeServed(); }
  bindKick(poller: Poller): void { poller.setKickHandler(this.ring); }
  setFastKick(on: boolean): void { this.ring.setFastKick(on); }
  setCallFd(fd: number | null): void { this.ring.setCallFd(fd ?? -1); }
  setQueuedDone(done: (pairs: Float64Array, count: number) => void): void { this.ring.setQueuedDone(done); }
  queuedPending(): number { return this.ring.queuedPending(); }

  private chainFromScratch(): DescriptorChain {
    const s = this.ring.scratch;
    const nr = s[3]!;
    const nw = s[4]!;
    const readable: IoSegment[] = [];
    const writable: IoSegment[] = [];
    let readableLen = 0;
    let writableLen = 0;
    let k = 5;
    for (let i = 0; i < nr; i++, k += 3) {
      readable.push({ buffer: this.buffers[s[k]!]!, offset: s[k + 1]!, length: s[k + 2]! });
      readableLen += s[k + 2]!;
    }
    for (let i = 0; i < nw; i++, k += 3) {
      writable.push({ buffer: this.buffers[s[k]!]!, offset: s[k + 1]!, length: s[k + 2]! });
      writableLen += s[k + 2]!;
    }
    return { head: s[0]!, counter: BigInt(s[1]!), resubmitted: s[2] === 1, readable, readableLen, writable, writableLen };
  }
}

/** Rings in the addon, serving through `server` (null: the addon's ring alone). */
export function nativeRingFactory(server: FastFuseHandle | null): RingFactory {
  return (mem, addrs, lastAvailIdx, eventIdx, indirect, inflight, queueIndex) =>
    new NativeSplitRing(mem, addrs, lastAvailIdx, eventIdx, indirect, inflight, server, queueIndex);
}
