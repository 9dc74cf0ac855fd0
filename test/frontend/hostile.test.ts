// Hostile input: malformed descriptor chains, malformed FUSE requests and malformed vhost-user
// messages. Each must get an errno reply, or for chains that cannot be answered, no reply (the
// chain dropped or returned with used.len 0), and afterwards the backend must still serve normal
// requests. Every case runs in its own session because the C virtiofsd (the reference, not the
// standard) dies on several of them: for it, outcomes are recorded as comments (and summed up in
// one comment at the end), and only ours is held to the outcome and "still serving" requirements.
import t, { Test } from 'tap';
import * as fs from 'node:fs';
import { BackendKind, selectedBackends } from './backend';
import { openSession, probeServing, Session, SessionOptions } from './helpers';
import { Virtqueue, RawDescriptor, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT, DESC_SIZE } from './virtqueue';
import { Req, Flag, VhostUserFrontend, VirtioF } from './vhost_user';
import { HIGH_GPA_BASE } from './guest_memory';
import * as F from './fuse_proto';

const ROOT = F.FUSE_ROOT_ID;

type Outcome =
  | { kind: 'reply'; error: number; unique: bigint; len: number }
  | { kind: 'len0' }
  | { kind: 'dropped' }
  | { kind: 'bad-reply'; len: number; detail: string };

function describe(o: Outcome): string {
  switch (o.kind) {
    case 'reply': return o.error === 0 ? `success reply (len ${o.len})` : `errno reply ${F.errnoName(o.error)}`;
    case 'len0': return 'returned with used.len 0';
    case 'dropped': return 'not returned (dropped)';
    case 'bad-reply': return `malformed reply: ${o.detail}`;
  }
}

interface Part { data?: Buffer; len?: number; writable?: boolean; addr?: bigint; flags?: number }

/** Writes a chain of raw parts into the ring (consecutive reserved slots) and submits its head. */
function rawChain(s: Session, q: Virtqueue, parts: Part[], opts: { loopTo?: number; nextOverride?: Map<number, number> } = {}):
  { head: number; writable: Array<{ gpa: bigint; len: number }> } {
  const mem = s.fe.mem!;
  const slots = q.reserveSlots(parts.length);
  const owned: bigint[] = [];
  const writable: Array<{ gpa: bigint; len: number }> = [];
  const descs = parts.map((p, i) => {
    let addr = p.addr;
    const len = p.len ?? p.data?.length ?? 0;
    if (addr === undefined) {
      addr = p.data ? mem.allocWith(p.data) : mem.alloc(len);
      owned.push(addr);
    }
    if (p.writable && p.addr === undefined) writable.push({ gpa: addr, len });
    const last = i === parts.length - 1;
    let flags = p.flags ?? ((p.writable ? VRING_DESC_F_WRITE : 0) | (last && opts.loopTo === undefined ? 0 : VRING_DESC_F_NEXT));
    let next = last ? (opts.loopTo !== undefined ? slots[opts.loopTo] : 0) : slots[i + 1];
    if (opts.nextOverride?.has(i)) { next = opts.nextOverride.get(i)!; flags |= VRING_DESC_F_NEXT; }
    return { slot: slots[i], addr, len, flags, next };
  });
  q.submitRaw(descs, slots[0], { owned, slots });
  return { head: slots[0], writable };
}

/** Waits for `head` until two normal requests behind it have been answered; then decides. */
async function outcomeOf(s: Session, q: Virtqueue, head: number, writable: Array<{ gpa: bigint; len: number }>, unique?: bigint): Promise<Outcome> {
  const used = q.waitUsed(head, 60_000).catch(() => null);
  let settled: { id: number; len: number } | null | undefined;
  void used.then((u) => { settled = u; });
  for (let i = 0; i < 2 && settled === undefined; i++) {
    const alive = await probeServing(s);
    if (!alive.ok) break;
  }
  if (settled === undefined) {
    // Give the device a last chance only if the queue is otherwise idle: drain what is harvested.
    q.harvest();
    await Promise.resolve();
  }
  if (!settled) return { kind: 'dropped' };
  if (settled.len === 0) return { kind: 'len0' };
  const mem = s.fe.mem!;
  const out = Buffer.concat(writable.map((w) => mem.read(w.gpa, w.len))).subarray(0, settled.len);
  if (out.length < F.OUT_HEADER_SIZE) return { kind: 'bad-reply', len: settled.len, detail: `${out.length} bytes` };
  const oh = F.decodeOutHeader(out);
  if (oh.len !== settled.len) return { kind: 'bad-reply', len: settled.len, detail: `out_header.len ${oh.len} != used.len ${settled.len}` };
  if (unique !== undefined && oh.unique !== unique) return { kind: 'bad-reply', len: settled.len, detail: `unique ${oh.unique} != ${unique}` };
  return { kind: 'reply', error: -oh.error, unique: oh.unique, len: oh.len };
}

function request(opcode: number, nodeid: bigint, args: Buffer[], unique: bigint, lenOverride?: number): Buffer {
  const argsLen = args.reduce((n, a) => n + a.length, 0);
  const h = F.encodeInHeader({ len: lenOverride ?? F.IN_HEADER_SIZE + argsLen, opcode, unique, nodeid, uid: 0, gid: 0, pid: process.pid });
  return Buffer.concat([h, ...args]);
}

interface Case {
  name: string;
  session?: SessionOptions;
  /** Runs the attack; returns the outcome (or null for control-channel cases) and extra checks. */
  run(t: Test, s: Session): Promise<Outcome | null>;
  /** Outcomes acceptable for ours. Default: errno reply, len0 or dropped. */
  accept?: (o: Outcome) => boolean;
  /** Runs before the attack / before the "still serving" probe. */
  before?: (s: Session) => Promise<void>;
  after?: (s: Session) => Promise<void>;
}

const defaultAccept = (o: Outcome): boolean => (o.kind === 'reply' && o.error > 0) || o.kind === 'len0' || o.kind === 'dropped';

function fuseCase(name: string, build: (s: Session, q: Virtqueue, unique: bigint) => { head: number; writable: Array<{ gpa: bigint; len: number }> },
  extra: Partial<Case> = {}): Case {
  return {
    name,
    async run(_t, s) {
      const q = s.fe.queues[1];
      const unique = 0x7777_0000n + BigInt(Math.floor(Math.random() * 1000)) * 2n;
      const { head, writable } = build(s, q, unique);
      return outcomeOf(s, q, head, writable, unique);
    },
    ...extra,
  };
}

const GETATTR_ARGS = [F.getattrIn(0, 0n)];
const reply = (n = F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE): Part => ({ len: n, writable: true });

const CASES: Case[] = [
  // --- FUSE header / payload disagreements
  fuseCase('in_header.len larger than the chain', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u, 4096) }, reply()])),
  fuseCase('in_header.len smaller than the header', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u, 8) }, reply()])),
  fuseCase('in_header.len 0xffffffff', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u, 0xffffffff) }, reply()])),
  fuseCase('LOOKUP whose in_header.len cuts off the name', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.LOOKUP, ROOT, [F.cstr('f')], u, F.IN_HEADER_SIZE) }, reply(F.OUT_HEADER_SIZE + F.ENTRY_OUT_SIZE)])),
  fuseCase('readable part shorter than fuse_in_header', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, [], u).subarray(0, 20) }, reply()])),
  fuseCase('WRITE whose size exceeds the payload', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.WRITE, ROOT, [F.writeIn(1n, 0, 1 << 20)], u) }, { data: Buffer.alloc(100) }, reply(24)])),
  fuseCase('name without NUL (the byte after it in guest memory is 0)', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.LOOKUP, ROOT, [Buffer.from('f')], u) }, reply(F.OUT_HEADER_SIZE + F.ENTRY_OUT_SIZE)]),
    { accept: (o) => (o.kind === 'reply' && o.error > 0) || o.kind === 'len0' }),
  fuseCase('RENAME with the second name unterminated', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.RENAME, ROOT, [F.renameIn(ROOT), F.cstr('f'), Buffer.from('g')], u) }, reply(16)]),
    { accept: (o) => (o.kind === 'reply' && o.error > 0) || o.kind === 'len0' }),
  fuseCase('SETXATTR whose size exceeds the value', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.SETXATTR, ROOT, [F.setxattrIn(4096, 0, s.fuse.setxattrExt), F.cstr('user.x'), Buffer.from('v')], u) }, reply(16)]),
    { accept: (o) => (o.kind === 'reply' && o.error > 0) || o.kind === 'len0' }),
  fuseCase('BATCH_FORGET count larger than the payload', (s, q, u) => rawChain(s, s.fe.queues[0], [{ data: request(F.Op.BATCH_FORGET, 0n, [new F.StructWriter(8).u32(1_000_000).u32(0).done()], u) }])),
  {
    name: 'reply buffer too small for the reply (a canary after it must survive)',
    async run(t, s) {
      const q = s.fe.queues[1];
      const mem = s.fe.mem!;
      const small = F.OUT_HEADER_SIZE + 10;
      const area = mem.alloc(small + 64);
      const canary = area + BigInt(small);
      mem.fill(canary, 64, 0x5a);
      const u = 0x5550n;
      const { head } = rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u) }, { addr: area, len: small, writable: true }]);
      const o = await outcomeOf(s, q, head, [{ gpa: area, len: small }], u);
      t.ok(mem.read(canary, 64).equals(Buffer.alloc(64, 0x5a)), 'nothing written past the writable descriptor');
      return o;
    },
  },
  fuseCase('readable descriptor after a writable one', (s, q, u) => rawChain(s, q, [reply(), { data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u) }])),
  fuseCase('chain with no writable descriptor for a request that needs a reply', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u) }])),
  fuseCase('zero-length descriptors around the header', (s, q, u) => rawChain(s, q, [{ len: 0 }, { data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u) }, { len: 0 }, reply()]),
    { accept: (o) => o.kind === 'reply' || o.kind === 'len0' || o.kind === 'dropped' }),

  // --- descriptor chain structure
  fuseCase('looping chain (A → B → A)', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u) }, reply()], { loopTo: 0 })),
  fuseCase('self-referencing descriptor', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u) }], { loopTo: 0 })),
  fuseCase('next index beyond the queue size', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u) }, reply()], { nextOverride: new Map([[1, 60000]]) })),
  // Linux puts one descriptor per page of a large direct write into one indirect table, so a
  // table longer than the queue is served (as QEMU and libvhost-user do) up to 1024 entries.
  ...[{ n: (q: Virtqueue) => q.size + 1, name: 'indirect table of queue size + 1 entries is served (as QEMU does)', ok: true },
    { n: () => 1025, name: 'indirect table of 1025 entries (over the 1024 limit) is refused', ok: false }].map(({ n: count, name, ok }) =>
    fuseCase(name, (s, q, u) => {
      const mem = s.fe.mem!;
      const n = count(q);
      const hdr = request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u);
      const descs: RawDescriptor[] = [];
      for (let i = 0; i < n - 2; i++) {
        const piece = i === 0 ? hdr : Buffer.alloc(0);
        descs.push({ addr: mem.allocWith(piece.length ? piece : Buffer.alloc(1)), len: piece.length, flags: VRING_DESC_F_NEXT, next: i + 1 });
      }
      const rep = mem.alloc(F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE);
      descs.push({ addr: rep, len: 16, flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, next: n - 1 });
      descs.push({ addr: rep + 16n, len: F.ATTR_OUT_SIZE, flags: VRING_DESC_F_WRITE, next: 0 });
      const table = mem.allocWith(Virtqueue.encodeTable(descs));
      const [slot] = q.reserveSlots(1);
      q.submitRaw([{ slot, addr: table, len: descs.length * DESC_SIZE, flags: VRING_DESC_F_INDIRECT, next: 0 }], slot, { slots: [slot] });
      return { head: slot, writable: [{ gpa: rep, len: F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE }] };
    }, ok ? { accept: (o) => o.kind === 'reply' && o.error === 0 } : {})),
  fuseCase('indirect chain of 65,536 descriptors (longer than any queue)', (s, q, u) => {
    const mem = s.fe.mem!;
    const n = 65_536; // the longest chain u16 next fields can link
    const hdr = mem.allocWith(request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u));
    const rep = mem.alloc(F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE);
    const table = Buffer.alloc(n * DESC_SIZE);
    for (let i = 0; i < n; i++) {
      const o = i * DESC_SIZE;
      const last = i === n - 1;
      table.writeBigUInt64LE(i === 0 ? hdr : rep, o);
      table.writeUInt32LE(i === 0 ? 56 : last ? F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE : 0, o + 8);
      table.writeUInt16LE(last ? VRING_DESC_F_WRITE : VRING_DESC_F_NEXT, o + 12);
      table.writeUInt16LE(last ? 0 : i + 1, o + 14);
    }
    const tgpa = mem.allocWith(table);
    const [slot] = q.reserveSlots(1);
    q.submitRaw([{ slot, addr: tgpa, len: n * DESC_SIZE, flags: VRING_DESC_F_INDIRECT, next: 0 }], slot, { slots: [slot] });
    return { head: slot, writable: [{ gpa: rep, len: F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE }] };
  }),
  fuseCase('indirect descriptor inside an indirect table', (s, q, u) => {
    const mem = s.fe.mem!;
    const inner = mem.allocWith(Virtqueue.encodeTable([{ addr: mem.allocWith(request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u)), len: 56, flags: 0, next: 0 }]));
    const rep = mem.alloc(F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE);
    const outer = mem.allocWith(Virtqueue.encodeTable([
      { addr: inner, len: DESC_SIZE, flags: VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, next: 1 },
      { addr: rep, len: F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE, flags: VRING_DESC_F_WRITE, next: 0 },
    ]));
    const [slot] = q.reserveSlots(1);
    q.submitRaw([{ slot, addr: outer, len: 2 * DESC_SIZE, flags: VRING_DESC_F_INDIRECT, next: 0 }], slot, { slots: [slot] });
    return { head: slot, writable: [{ gpa: rep, len: F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE }] };
  }),
  fuseCase('indirect table whose length is not a multiple of 16', (s, q, u) => {
    const mem = s.fe.mem!;
    const rep = mem.alloc(F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE);
    const table = mem.allocWith(Virtqueue.encodeTable([
      { addr: mem.allocWith(request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u)), len: 56, flags: VRING_DESC_F_NEXT, next: 1 },
      { addr: rep, len: F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE, flags: VRING_DESC_F_WRITE, next: 0 },
    ]));
    const [slot] = q.reserveSlots(1);
    q.submitRaw([{ slot, addr: table, len: 2 * DESC_SIZE - 3, flags: VRING_DESC_F_INDIRECT, next: 0 }], slot, { slots: [slot] });
    return { head: slot, writable: [{ gpa: rep, len: F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE }] };
  }),
  fuseCase('indirect table looping on itself', (s, q, u) => {
    const mem = s.fe.mem!;
    const table = mem.allocWith(Virtqueue.encodeTable([
      { addr: mem.allocWith(request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u)), len: 56, flags: VRING_DESC_F_NEXT, next: 1 },
      { addr: mem.alloc(200), len: 200, flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, next: 0 },
    ]));
    const [slot] = q.reserveSlots(1);
    q.submitRaw([{ slot, addr: table, len: 2 * DESC_SIZE, flags: VRING_DESC_F_INDIRECT, next: 0 }], slot, { slots: [slot] });
    return { head: slot, writable: [] };
  }),
  fuseCase('indirect table outside guest memory', (s, q) => {
    const [slot] = q.reserveSlots(1);
    q.submitRaw([{ slot, addr: 0x8000_0000n, len: 2 * DESC_SIZE, flags: VRING_DESC_F_INDIRECT, next: 0 }], slot, { slots: [slot] });
    return { head: slot, writable: [] };
  }),
  fuseCase('descriptor outside guest memory (in the gap between regions)', (s, q) => rawChain(s, q, [{ addr: 0x8000_0000n, len: 56 }, reply()])),
  fuseCase('descriptor straddling the end of a region', (s, q) => {
    const mem = s.fe.mem!;
    const end = mem.regionEndGpa(0);
    return rawChain(s, q, [{ addr: end - 20n, len: 56 }, reply()]);
  }),
  fuseCase('writable descriptor outside guest memory', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u) }, { addr: HIGH_GPA_BASE * 16n, len: 120, writable: true, flags: VRING_DESC_F_WRITE }])),
  fuseCase('descriptor whose address + length wraps around 2^64', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u) }, { addr: 0xffff_ffff_ffff_f000n, len: 0x2000, writable: true, flags: VRING_DESC_F_WRITE }])),
  fuseCase('total chain length over 4 GiB (two 3 GiB descriptors)', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u) }, { addr: 0x1000n, len: 0xc000_0000, writable: true, flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT }, { addr: 0x1000n, len: 0xc000_0000, writable: true, flags: VRING_DESC_F_WRITE }])),
  {
    name: 'head index beyond the queue size in the avail ring',
    async run(_t, s) {
      const q = s.fe.queues[1];
      q.submitRaw([], 40_000, { slots: [] });
      return outcomeOf(s, q, 40_000, []);
    },
    accept: (o) => o.kind === 'dropped' || o.kind === 'len0',
  },
  {
    name: 'indirect descriptors when VIRTIO_RING_F_INDIRECT_DESC was not negotiated',
    session: { negotiate: { features: VirtioF.VERSION_1 | VirtioF.PROTOCOL_FEATURES | VirtioF.RING_EVENT_IDX } },
    async run(_t, s) {
      const q = s.fe.queues[1];
      const u = 0x4440n;
      const mem = s.fe.mem!;
      const rep = mem.alloc(F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE);
      const table = mem.allocWith(Virtqueue.encodeTable([
        { addr: mem.allocWith(request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u)), len: 56, flags: VRING_DESC_F_NEXT, next: 1 },
        { addr: rep, len: F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE, flags: VRING_DESC_F_WRITE, next: 0 },
      ]));
      const [slot] = q.reserveSlots(1);
      q.submitRaw([{ slot, addr: table, len: 2 * DESC_SIZE, flags: VRING_DESC_F_INDIRECT, next: 0 }], slot, { slots: [slot] });
      return outcomeOf(s, q, slot, [{ gpa: rep, len: F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE }], u);
    },
    // Being lenient here (serving it) is harmless: accept a proper reply too.
    accept: (o) => o.kind === 'reply' || o.kind === 'len0' || o.kind === 'dropped',
  },

  // --- FUSE semantics
  fuseCase('unknown opcode', (s, q, u) => rawChain(s, q, [{ data: request(12345, ROOT, [Buffer.alloc(8)], u) }, reply(16)]),
    { accept: (o) => o.kind === 'reply' && o.error === F.Errno.ENOSYS }),
  fuseCase('CUSE_INIT (4096) on a FUSE session', (s, q, u) => rawChain(s, q, [{ data: request(4096, ROOT, [Buffer.alloc(16)], u) }, reply(100)]),
    { accept: (o) => o.kind === 'reply' && o.error > 0 }),
  // The kernel sends INIT once; refusing a second one or answering it are both fine, as long as
  // the session keeps working.
  fuseCase('second FUSE_INIT', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.INIT, 0n, [F.initIn(F.LINUX_INIT_FLAGS)], u) }, reply(16 + 64)]),
    { accept: (o) => o.kind === 'reply' }),
  fuseCase('request before FUSE_INIT', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, ROOT, GETATTR_ARGS, u) }, reply()]),
    { session: { init: false }, accept: (o) => o.kind === 'reply' && o.error > 0, after: async (s) => { await s.fuse.init(); } }),
  fuseCase('unknown nodeid', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.GETATTR, 0x1234_5678_9abcn, GETATTR_ARGS, u) }, reply()]),
    { accept: (o) => o.kind === 'reply' && o.error > 0 }),
  fuseCase('nodeid 0', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.LOOKUP, 0n, [F.cstr('f')], u) }, reply(16 + F.ENTRY_OUT_SIZE)]),
    { accept: (o) => o.kind === 'reply' && o.error > 0 }),
  fuseCase('READ with an unknown file handle', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.READ, ROOT, [F.readIn(0xdead_beefn, 0, 100)], u) }, reply(16 + 100)]),
    { accept: (o) => o.kind === 'reply' && o.error > 0 }),
  fuseCase('FORGET of an unknown nodeid', (s, q, u) => rawChain(s, s.fe.queues[0], [{ data: request(F.Op.FORGET, 0x999_9999n, [F.forgetIn(5)], u) }]),
    { accept: (o) => o.kind === 'len0' || o.kind === 'dropped' }),
  fuseCase('FORGET of the root with a huge count', (s, q, u) => rawChain(s, s.fe.queues[0], [{ data: request(F.Op.FORGET, ROOT, [F.forgetIn(1n << 62n)], u) }]),
    { accept: (o) => o.kind === 'len0' || o.kind === 'dropped' }),
  fuseCase('FORGET of a looked-up node with a count larger than its lookups', (s, q, u) => rawChain(s, s.fe.queues[0], [{ data: request(F.Op.FORGET, (s as Session & { fNode?: bigint }).fNode ?? 2n, [F.forgetIn(1000)], u) }]),
    { accept: (o) => o.kind === 'len0' || o.kind === 'dropped', before: async (s) => { (s as Session & { fNode?: bigint }).fNode = (await s.fuse.lookup(ROOT, 'f')).nodeid; } }),
  fuseCase('INTERRUPT for a unique that is not in flight', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.INTERRUPT, 0n, [F.interruptIn(0x1_0000n)], u | 1n) }, reply(16)]),
    { accept: (o) => o.kind === 'len0' || o.kind === 'dropped' || (o.kind === 'reply' && o.error > 0) }),
  fuseCase('name of 64 KiB', (s, q, u) => rawChain(s, q, [{ data: request(F.Op.LOOKUP, ROOT, [F.cstr('n'.repeat(65536))], u) }, reply(16 + F.ENTRY_OUT_SIZE)]),
    { accept: (o) => o.kind === 'reply' && (o.error === F.Errno.ENAMETOOLONG || o.error === F.Errno.EINVAL || o.error === F.Errno.ENOENT) }),
];

interface ControlCase {
  name: string;
  run(t: Test, s: Session): Promise<void>;
  /** What ours must do afterwards. Default: keep serving. */
  oursMay?: 'serve' | 'serve-or-close';
}

async function nack(fe: VhostUserFrontend, request: number, payload: Buffer, fds: number[]): Promise<string> {
  fe.sendRawMessage(request, payload, fds, { flags: Flag.VERSION | Flag.NEED_REPLY });
  try {
    const m = await fe.readMessage(3_000);
    if (m.request !== request) return `reply for request ${m.request}`;
    return m.payload.length === 8 ? `ack ${m.payload.readBigUInt64LE(0)}` : `reply of ${m.payload.length} bytes`;
  } catch (e) {
    return `no reply (${(e as Error).message})`;
  }
}

const CONTROL_CASES: ControlCase[] = [
  {
    name: 'SET_VRING_NUM with a 4-byte payload (bad size)',
    async run(t, s) {
      const r = await nack(s.fe, Req.SET_VRING_NUM, Buffer.alloc(4), []);
      t.comment(`backend answered: ${r}`);
      if (s.kind === 'ours') t.match(r, /^ack [1-9]/, 'ours nacks it');
    },
  },
  {
    name: 'SET_FEATURES with a 16-byte payload (bad size)',
    async run(t, s) {
      const b = Buffer.alloc(16);
      b.writeBigUInt64LE(s.fe.negotiated!.ackedFeatures);
      const r = await nack(s.fe, Req.SET_FEATURES, b, []);
      t.comment(`backend answered: ${r}`);
      if (s.kind === 'ours') t.match(r, /^ack [1-9]/, 'ours nacks it');
    },
  },
  {
    name: 'GET_FEATURES with a payload (size 8 instead of 0)',
    async run(t, s) {
      s.fe.sendRawMessage(Req.GET_FEATURES, Buffer.alloc(8), []);
      const r = await s.fe.readMessage(3_000).then((m) => `reply ${m.request} size ${m.payload.length}`, (e: Error) => `no reply (${e.message})`);
      t.comment(`backend answered: ${r}`);
    },
  },
  {
    name: 'unknown request 999 with NEED_REPLY',
    async run(t, s) {
      const r = await nack(s.fe, 999, Buffer.alloc(8), []);
      t.comment(`backend answered: ${r}`);
      if (s.kind === 'ours') t.match(r, /^ack [1-9]/, 'ours nacks it');
    },
  },
  {
    name: 'SET_MEM_TABLE without the fd',
    async run(t, s) {
      const r = await nack(s.fe, Req.SET_MEM_TABLE, VhostUserFrontend.memTable(s.fe.mem!), []);
      t.comment(`backend answered: ${r}`);
      if (s.kind === 'ours') t.match(r, /^ack [1-9]/, 'ours nacks it and keeps the old table');
    },
  },
  {
    name: 'SET_MEM_TABLE claiming 2 regions with only 1 region of payload',
    async run(t, s) {
      const p = VhostUserFrontend.memTable(s.fe.mem!).subarray(0, 8 + 32);
      const fd = s.fe.mem!.fd;
      const r = await nack(s.fe, Req.SET_MEM_TABLE, p, [fd, fd]);
      t.comment(`backend answered: ${r}`);
      if (s.kind === 'ours') t.match(r, /^ack [1-9]/, 'ours nacks it');
    },
  },
  {
    name: 'SET_MEM_TABLE with 9 regions',
    async run(t, s) {
      const p = Buffer.alloc(8 + 32 * 9);
      p.writeUInt32LE(9, 0);
      const fd = s.fe.mem!.fd;
      const r = await nack(s.fe, Req.SET_MEM_TABLE, p, Array(9).fill(fd));
      t.comment(`backend answered: ${r}`);
      if (s.kind === 'ours') t.match(r, /^ack [1-9]/, 'ours nacks it');
    },
  },
  {
    name: 'SET_VRING_KICK without the fd (and without the no-fd flag)',
    async run(t, s) {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(1n);
      const r = await nack(s.fe, Req.SET_VRING_KICK, b, []);
      t.comment(`backend answered: ${r}`);
      if (s.kind === 'ours') t.match(r, /^ack [1-9]/, 'ours nacks it and keeps the old kick fd');
    },
  },
  {
    name: 'SET_VRING_CALL for a queue index out of range',
    async run(t, s) {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(200n);
      const efd = s.fe.queues[1].callFd;
      const r = await nack(s.fe, Req.SET_VRING_CALL, b, [efd]);
      t.comment(`backend answered: ${r}`);
      if (s.kind === 'ours') t.match(r, /^ack [1-9]/, 'ours nacks it');
    },
  },
  {
    name: 'SET_VRING_ADDR for a queue index out of range',
    async run(t, s) {
      const q = s.fe.queues[1];
      const r = await nack(s.fe, Req.SET_VRING_ADDR, VhostUserFrontend.vringAddr(500, q.descUva, q.usedUva, q.availUva), []);
      t.comment(`backend answered: ${r}`);
      if (s.kind === 'ours') t.match(r, /^ack [1-9]/, 'ours nacks it');
    },
  },
  {
    name: 'SET_VRING_ADDR outside every region for a stopped queue, then a proper restart',
    async run(t, s) {
      const q = s.fe.queues[1];
      const base = await s.fe.stopQueue(1);
      const bad = VhostUserFrontend.vringAddr(1, 0x1000n, 0x2000n, 0x3000n);
      const r = await nack(s.fe, Req.SET_VRING_ADDR, bad, []);
      t.comment(`backend answered: ${r}`);
      if (s.kind === 'ours') t.match(r, /^ack [1-9]/, 'ours nacks it');
      if (!s.fe.isClosedByPeer && !s.backend.exited) {
        await s.fe.restartQueue(1, base).catch((e: Error) => t.comment(`restart failed: ${e.message}`));
      }
      t.equal(q.availIdx, base, 'base was the avail index');
    },
  },
  {
    name: 'GET_FEATURES carrying 3 stray fds',
    async run(t, s) {
      const fds = s.fe.queues.map((q) => q.errFd);
      s.fe.sendRawMessage(Req.GET_FEATURES, Buffer.alloc(0), fds);
      const r = await s.fe.readMessage(3_000).then((m) => `reply ${m.request} size ${m.payload.length}`, (e: Error) => `no reply (${e.message})`);
      t.comment(`backend answered: ${r}`);
      // Any reply to GET_FEATURES must carry the 8-byte feature mask (QEMU rejects others).
      if (s.kind === 'ours' && r.startsWith('reply')) t.equal(r, `reply ${Req.GET_FEATURES} size 8`, 'a well-formed GET_FEATURES reply');
    },
  },
  {
    name: 'header announcing a 1 MiB payload that never comes',
    async run(t, s) {
      s.fe.sendRawMessage(Req.SET_MEM_TABLE, Buffer.alloc(8), [], { size: 1 << 20 });
      const closed = await s.fe.waitClosed(s.kind === 'ours' ? 10_000 : 3_000);
      t.comment(closed ? 'backend closed the connection' : 'connection still open');
      if (!closed) {
        // Either it closed the connection, or it must still answer.
        t.ok(await s.fe.controlAlive(3_000), 'no hang: the control channel still answers');
      }
    },
    oursMay: 'serve-or-close',
  },
];

/** Cases where the C virtiofsd died, stopped serving or answered unacceptably in this run. */
const cFailures = new Set<string>();

function runCases(kind: BackendKind): void {
  t.test(kind, async (t) => {
    for (const c of CASES) {
      t.test(c.name, async (t) => {
        const s = await openSession(t, kind, { setup: (sh) => fs.writeFileSync(`${sh}/f`, 'x'), ...c.session });
        if (c.before) await c.before(s);
        const o = await c.run(t, s);
        if (c.after && !s.backend.exited) await c.after(s).catch((e: Error) => t.comment(`after-hook failed: ${e.message}`));
        const alive = await probeServing(s);
        const accept = c.accept ?? defaultAccept;
        t.comment(`${kind}: ${o ? describe(o) : 'n/a'}; afterwards: ${alive.why}`);
        if (kind === 'ours') {
          t.ok(o && accept(o), `acceptable outcome (${o ? describe(o) : 'none'})`);
          t.ok(alive.ok, `still serving afterwards (${alive.why})`);
        } else {
          if (!alive.ok || !(o && accept(o))) cFailures.add(c.name);
          if (o && o.kind === 'bad-reply') t.fail(`malformed reply even from the C virtiofsd: ${o.detail}`);
          else t.pass(`C virtiofsd recorded: ${o ? describe(o) : 'n/a'}; ${alive.why}`);
        }
        t.same(s.fe.queues.flatMap((q) => q.violations), [], 'no ring protocol violations');
      });
    }
    for (const c of CONTROL_CASES) {
      t.test(`vhost-user: ${c.name}`, async (t) => {
        const s = await openSession(t, kind, { setup: (sh) => fs.writeFileSync(`${sh}/f`, 'x') });
        await c.run(t, s);
        const closed = s.fe.isClosedByPeer;
        const alive = closed ? { ok: false, why: 'connection closed' } : await probeServing(s);
        t.comment(`${kind}: afterwards ${alive.why}`);
        if (kind === 'ours') {
          if (c.oursMay === 'serve-or-close') t.ok(alive.ok || /^(connection closed|backend exited)/.test(alive.why), `served or closed cleanly (${alive.why})`);
          else t.ok(alive.ok, `still serving afterwards (${alive.why})`);
        } else {
          if (!alive.ok) cFailures.add(`vhost-user: ${c.name}`);
          t.pass(`C virtiofsd recorded: ${alive.why}`);
        }
      });
    }
    t.teardown(() => {
      if (kind === 'c-virtiofsd') {
        t.comment(`C virtiofsd did not survive / answered unacceptably: ${[...cFailures].join(' | ') || 'none'}`);
      }
    });
  });
}

for (const kind of selectedBackends()) runCases(kind);
