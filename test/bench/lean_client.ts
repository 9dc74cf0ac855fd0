// A lean FUSE request path for timed loops, on the test frontend's virtqueue. FuseClient (the
// tests' client) allocates, zeroes and poisons every buffer per request and copies each reply out
// of guest memory; at 1 MiB per request or 100k requests/s that client work would dominate the
// measurement and shrink every ratio towards 1. Here each in-flight slot owns fixed guest buffers
// (like a guest's page-cache pages), the header and args are written straight into guest memory,
// and only the out header (16 bytes) and what the caller asks for are read back.
//
// Every reply is still checked: used.len, out_header.len and unique must agree, and an error
// reply is a thrown LeanError (with its errno), so a backend that fails fast is not a fast backend.
import { VhostUserFrontend } from '../frontend/vhost_user';
import { Virtqueue, type ChainBuffer } from '../frontend/virtqueue';
import { GuestMemory } from '../frontend/guest_memory';
import * as F from '../frontend/fuse_proto';

export class LeanError extends Error {
  constructor(readonly errno: number, readonly opcode: number) {
    super(`FUSE op ${opcode} failed: ${F.errnoName(errno)} (${errno})`);
  }
}

/** One request's guest buffers: readable (header + args [+ payload]) and writable (out header + body). */
export interface Slot {
  readonly index: number;
  inGpa: bigint;
  inOff: number;
  inCap: number;
  payGpa: bigint | null;
  payCap: number;
  outGpa: bigint;
  outOff: number;
  outCap: number;
}

export interface Reply {
  /** Offset of the reply body in guest memory (mem.bytes). */
  bodyOff: number;
  bodyLen: number;
}

const ARGS_CAP = 4096 - F.IN_HEADER_SIZE;

export class LeanFuse {
  readonly mem: GuestMemory;
  readonly q: Virtqueue;
  readonly slots: Slot[] = [];
  private unique = 0x10_0000; // above anything FuseClient used for setup (it counts from 2 by 2)
  private readonly uid: number;
  private readonly gid: number;
  private readonly pid: number;

  /**
   * @param depth  slots (requests in flight at once)
   * @param replyCap  writable body bytes per slot
   * @param payloadCap  WRITE payload bytes per slot (0: none)
   */
  constructor(fe: VhostUserFrontend, depth: number, replyCap: number, payloadCap = 0, requestQueue = 1) {
    if (!fe.mem) throw new Error('not negotiated');
    this.mem = fe.mem;
    const q = fe.queues[requestQueue];
    if (!q) throw new Error(`no queue ${requestQueue}`);
    this.q = q;
    this.uid = process.getuid?.() ?? 0;
    this.gid = process.getgid?.() ?? 0;
    this.pid = process.pid;
    for (let i = 0; i < depth; i++) {
      const inGpa = this.mem.alloc(4096, { align: 4096 });
      const payGpa = payloadCap > 0 ? this.mem.alloc(payloadCap, { align: 4096 }) : null;
      if (payGpa !== null) this.mem.fill(payGpa, payloadCap, 0x5a + i);
      const outGpa = this.mem.alloc(F.OUT_HEADER_SIZE + replyCap, { align: 4096 });
      this.slots.push({
        index: i, inGpa, inOff: this.mem.offsetOfGpa(inGpa, 4096), inCap: 4096, payGpa, payCap: payloadCap,
        outGpa, outOff: this.mem.offsetOfGpa(outGpa, F.OUT_HEADER_SIZE + replyCap), outCap: replyCap,
      });
    }
  }

  /** Gives the slots' guest memory back. Only when nothing is in flight. */
  free(): void {
    for (const s of this.slots) {
      this.mem.freeGpa(s.inGpa);
      if (s.payGpa !== null) this.mem.freeGpa(s.payGpa);
      this.mem.freeGpa(s.outGpa);
    }
    this.slots.length = 0;
  }

  /**
   * Sends one request from `slot`: `args` go after the in header; `payloadLen` bytes of the slot's
   * payload buffer follow (WRITE); `replyLen` body bytes are offered for the reply.
   */
  async request(slot: Slot, opcode: number, nodeid: bigint, args: Buffer | null, replyLen: number, payloadLen = 0): Promise<Reply> {
    const argsLen = args === null ? 0 : args.length;
    if (argsLen > ARGS_CAP) throw new Error(`args of ${argsLen} bytes do not fit a slot`);
    if (replyLen > slot.outCap) throw new Error(`reply of ${replyLen} bytes does not fit a slot`);
    if (payloadLen > slot.payCap) throw new Error(`payload of ${payloadLen} bytes does not fit a slot`);
    const v = this.mem.view;
    const o = slot.inOff;
    const u = this.unique;
    this.unique += 2;
    v.setUint32(o, F.IN_HEADER_SIZE + argsLen + payloadLen, true);
    v.setUint32(o + 4, opcode, true);
    v.setUint32(o + 8, u >>> 0, true);
    v.setUint32(o + 12, Math.floor(u / 2 ** 32), true);
    v.setBigUint64(o + 16, nodeid, true);
    v.setUint32(o + 24, this.uid, true);
    v.setUint32(o + 28, this.gid, true);
    v.setUint32(o + 32, this.pid, true);
    v.setUint32(o + 36, 0, true);
    if (args !== null) this.mem.bytes.set(args, o + F.IN_HEADER_SIZE);
    const chain: ChainBuffer[] = [{ gpa: slot.inGpa, len: F.IN_HEADER_SIZE + argsLen, writable: false }];
    if (payloadLen > 0) chain.push({ gpa: slot.payGpa!, len: payloadLen, writable: false });
    chain.push({ gpa: slot.outGpa, len: F.OUT_HEADER_SIZE, writable: true });
    if (replyLen > 0) chain.push({ gpa: slot.outGpa + BigInt(F.OUT_HEADER_SIZE), len: replyLen, writable: true });
    // Poison the out header so that a stale one from the slot's last request cannot pass.
    v.setUint32(slot.outOff, 0xa5a5a5a5, true);
    const sub = this.q.freeDescriptors >= chain.length ? this.q.submitWait(chain) : await this.q.submitWhenFree(chain);
    const used = await sub.used;
    const oo = slot.outOff;
    const outLen = v.getUint32(oo, true);
    const error = v.getInt32(oo + 4, true);
    const uLo = v.getUint32(oo + 8, true);
    if (used.len < F.OUT_HEADER_SIZE || outLen !== used.len || uLo !== (u >>> 0)) {
      throw new Error(`bad reply to op ${opcode}: used.len ${used.len}, out_header.len ${outLen}, unique low ${uLo} (want ${u >>> 0})`);
    }
    if (error !== 0) throw new LeanError(-error, opcode);
    return { bodyOff: oo + F.OUT_HEADER_SIZE, bodyLen: used.len - F.OUT_HEADER_SIZE };
  }

  // --- the operations the bench uses ------------------------------------------------------

  async getattr(slot: Slot, nodeid: bigint): Promise<void> {
    await this.request(slot, F.Op.GETATTR, nodeid, GETATTR_ARGS, F.ATTR_OUT_SIZE);
  }

  /** Returns the nodeid. */
  async lookup(slot: Slot, parent: bigint, name: Buffer): Promise<bigint> {
    const r = await this.request(slot, F.Op.LOOKUP, parent, name, F.ENTRY_OUT_SIZE);
    return this.mem.view.getBigUint64(r.bodyOff, true);
  }

  /** CREATE; returns nodeid and fh. */
  async create(slot: Slot, parent: bigint, name: Buffer, flags: number, mode = 0o644): Promise<{ nodeid: bigint; fh: bigint }> {
    const args = Buffer.concat([F.createIn(flags | F.O.CREAT, mode, 0), name]);
    const r = await this.request(slot, F.Op.CREATE, parent, args, F.ENTRY_OUT_SIZE + F.OPEN_OUT_SIZE);
    const v = this.mem.view;
    return { nodeid: v.getBigUint64(r.bodyOff, true), fh: v.getBigUint64(r.bodyOff + F.ENTRY_OUT_SIZE, true) };
  }

  /** OPEN; returns the fh. */
  async open(slot: Slot, nodeid: bigint, flags: number): Promise<bigint> {
    const r = await this.request(slot, F.Op.OPEN, nodeid, F.openIn(flags), F.OPEN_OUT_SIZE);
    return this.mem.view.getBigUint64(r.bodyOff, true);
  }

  async release(slot: Slot, nodeid: bigint, fh: bigint, flags: number): Promise<void> {
    await this.request(slot, F.Op.RELEASE, nodeid, F.releaseIn(fh, flags), 0);
  }

  async unlink(slot: Slot, parent: bigint, name: Buffer): Promise<void> {
    await this.request(slot, F.Op.UNLINK, parent, name, 0);
  }

  /** READ of `size` bytes; returns the bytes read (the data stays in guest memory). */
  async read(slot: Slot, nodeid: bigint, fh: bigint, offset: number, size: number): Promise<number> {
    const r = await this.request(slot, F.Op.READ, nodeid, F.readIn(fh, offset, size, 0, 0n, F.O.RDWR), size);
    return r.bodyLen;
  }

  /** WRITE of `size` bytes from the slot's payload buffer; returns the count written. */
  async write(slot: Slot, nodeid: bigint, fh: bigint, offset: number, size: number): Promise<number> {
    const r = await this.request(slot, F.Op.WRITE, nodeid, F.writeIn(fh, offset, size, 0, 0n, F.O.RDWR), F.WRITE_OUT_SIZE, size);
    return this.mem.view.getUint32(r.bodyOff, true);
  }

  /** SETATTR of atime and mtime (what tar x does to each file it wrote). */
  async setTimes(slot: Slot, nodeid: bigint, sec: number): Promise<void> {
    const args = F.setattrIn({ valid: F.FATTR.ATIME | F.FATTR.MTIME, atime: sec, mtime: sec });
    await this.request(slot, F.Op.SETATTR, nodeid, args, F.ATTR_OUT_SIZE);
  }

  async flush(slot: Slot, nodeid: bigint, fh: bigint): Promise<void> {
    await this.request(slot, F.Op.FLUSH, nodeid, F.flushIn(fh), 0);
  }

  /** GETXATTR of `name` asking for its size (`args` = getxattrIn(0) + the name); returns the size. */
  async getxattrSize(slot: Slot, nodeid: bigint, args: Buffer): Promise<number> {
    const r = await this.request(slot, F.Op.GETXATTR, nodeid, args, 8);
    return this.mem.view.getUint32(r.bodyOff, true);
  }

  /** One READDIRPLUS call; returns the entry count and the last entry's offset (cookie). */
  async readdirplus(slot: Slot, nodeid: bigint, fh: bigint, offset: bigint, size: number): Promise<{ count: number; lastOff: bigint; nodeids: bigint[] }> {
    const r = await this.request(slot, F.Op.READDIRPLUS, nodeid, F.readIn(fh, offset, size, 0, 0n, F.O.RDONLY | F.O.DIRECTORY), size);
    const v = this.mem.view;
    let p = 0;
    let count = 0;
    let lastOff = offset;
    const nodeids: bigint[] = [];
    while (p + F.DIRENTPLUS_HEADER_SIZE <= r.bodyLen) {
      const base = r.bodyOff + p;
      const d = base + F.ENTRY_OUT_SIZE;
      const namelen = v.getUint32(d + 16, true);
      if (namelen === 0 || namelen > 4096 || p + F.DIRENTPLUS_HEADER_SIZE + namelen > r.bodyLen) {
        throw new Error(`bad direntplus namelen ${namelen} at ${p}`);
      }
      nodeids.push(v.getBigUint64(base, true));
      lastOff = v.getBigUint64(d + 8, true);
      count++;
      p += (F.DIRENTPLUS_HEADER_SIZE + namelen + 7) & ~7;
    }
    return { count, lastOff, nodeids };
  }
}

const GETATTR_ARGS = F.getattrIn(0, 0n);

/** A NUL-terminated name. */
export function nameArg(s: string): Buffer {
  return F.cstr(s);
}

/**
 * Runs `op(slot, i)` for i = 0, 1, ... with `depth` requests in flight at once, until `count` ops
 * are done (count given) or `durationMs` has passed. Returns ops done and elapsed ms; with
 * `latencies`, each op's latency in µs is pushed there.
 */
export async function runPool(lean: LeanFuse, depth: number,
  op: (slot: Slot, i: number) => Promise<unknown>,
  limit: { count?: number; durationMs?: number }, latencies?: number[]): Promise<{ ops: number; ms: number }> {
  if (depth > lean.slots.length) throw new Error(`depth ${depth} > ${lean.slots.length} slots`);
  let next = 0;
  let done = 0;
  const t0 = performance.now();
  const deadline = limit.durationMs !== undefined ? t0 + limit.durationMs : Infinity;
  const count = limit.count ?? Infinity;
  const lane = async (slot: Slot): Promise<void> => {
    for (;;) {
      if (next >= count) return;
      if (deadline !== Infinity && performance.now() >= deadline) return;
      const i = next++;
      if (latencies) {
        const s = performance.now();
        await op(slot, i);
        latencies.push((performance.now() - s) * 1000);
      } else {
        await op(slot, i);
      }
      done++;
    }
  };
  await Promise.all(lean.slots.slice(0, depth).map((s) => lane(s)));
  return { ops: done, ms: performance.now() - t0 };
}
