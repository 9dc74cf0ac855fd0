import t from 'tap';
import * as M from '../../worker/vhost/messages';
import { makePrng, fuzzSeed, fuzzSeconds } from '../helpers/prng';

t.test('header and reply encoding', async (t) => {
  const r = M.encodeReply(M.Request.GET_FEATURES, M.u64Payload(0x1_0000_0001n));
  const h = M.parseHeader(r);
  t.equal(h.request, M.Request.GET_FEATURES);
  t.equal(h.flags, M.FLAG_VERSION_1 | M.FLAG_REPLY);
  t.equal(h.size, 8);
  t.equal(r.readBigUInt64LE(12), 0x1_0000_0001n);
  t.throws(() => M.parseHeader(Buffer.alloc(11)), M.VhostProtocolError);
});

t.test('vring payloads are size-checked', async (t) => {
  const s = Buffer.alloc(8);
  s.writeUInt32LE(3, 0);
  s.writeUInt32LE(256, 4);
  t.same(M.parseVringState(M.Request.SET_VRING_NUM, s), { index: 3, num: 256 });
  t.throws(() => M.parseVringState(M.Request.SET_VRING_NUM, Buffer.alloc(7)), M.VhostProtocolError);
  t.throws(() => M.parseVringState(M.Request.SET_VRING_NUM, Buffer.alloc(9)), M.VhostProtocolError);
  const a = Buffer.alloc(40);
  a.writeUInt32LE(1, 0);
  a.writeBigUInt64LE(0x7f00_0000_1000n, 8);
  a.writeBigUInt64LE(0x7f00_0000_3000n, 16);
  a.writeBigUInt64LE(0x7f00_0000_2000n, 24);
  const addr = M.parseVringAddr(M.Request.SET_VRING_ADDR, a);
  t.equal(addr.index, 1);
  t.equal(addr.descUser, 0x7f00_0000_1000n);
  t.equal(addr.usedUser, 0x7f00_0000_3000n);
  t.equal(addr.availUser, 0x7f00_0000_2000n);
  t.throws(() => M.parseVringAddr(M.Request.SET_VRING_ADDR, Buffer.alloc(32)), M.VhostProtocolError);
});

t.test('memory table validation', async (t) => {
  const mk = (n: number, slots = n): Buffer => {
    const b = Buffer.alloc(8 + 32 * slots);
    b.writeUInt32LE(n, 0);
    for (let i = 0; i < n; i++) {
      b.writeBigUInt64LE(BigInt(i) << 30n, 8 + 32 * i);
      b.writeBigUInt64LE(1n << 20n, 16 + 32 * i);
    }
    return b;
  };
  t.equal(M.parseMemTable(M.Request.SET_MEM_TABLE, mk(2)).length, 2);
  t.equal(M.parseMemTable(M.Request.SET_MEM_TABLE, mk(2, 8)).length, 2, 'QEMU sends all 8 slots');
  t.throws(() => M.parseMemTable(M.Request.SET_MEM_TABLE, mk(0, 1)), M.VhostProtocolError, 'zero regions');
  t.throws(() => M.parseMemTable(M.Request.SET_MEM_TABLE, mk(9)), M.VhostProtocolError, 'too many regions');
  const short = mk(3).subarray(0, 8 + 32 * 2);
  t.throws(() => M.parseMemTable(M.Request.SET_MEM_TABLE, short), M.VhostProtocolError, 'payload shorter than nregions');
  t.throws(() => M.parseMemTable(M.Request.SET_MEM_TABLE, Buffer.alloc(4)), M.VhostProtocolError);
});

t.test('fuzz: payload parsers only ever return or throw VhostProtocolError', async (t) => {
  const seed = fuzzSeed();
  const rnd = makePrng(seed);
  const deadline = Date.now() + fuzzSeconds(2) * 1000;
  const parsers: Array<(p: Buffer) => unknown> = [
    (p) => M.parseU64(M.Request.SET_FEATURES, p),
    (p) => M.parseVringState(M.Request.SET_VRING_BASE, p),
    (p) => M.parseVringAddr(M.Request.SET_VRING_ADDR, p),
    (p) => M.parseMemTable(M.Request.SET_MEM_TABLE, p),
    (p) => M.parseSingleRegion(M.Request.ADD_MEM_REG, p),
    (p) => M.parseInflight(M.Request.SET_INFLIGHT_FD, p),
    (p) => M.parseHeader(p),
  ];
  let runs = 0;
  while (Date.now() < deadline) {
    const len = Math.floor(rnd() * 300);
    const p = Buffer.alloc(len);
    for (let i = 0; i < len; i++) p[i] = Math.floor(rnd() * 256);
    if (len >= 4 && rnd() < 0.5) p.writeUInt32LE(Math.floor(rnd() * 10), 0);
    for (const parse of parsers) {
      try {
        parse(p);
      } catch (e) {
        if (!(e instanceof M.VhostProtocolError)) {
          t.fail(`seed ${seed}: unexpected ${String(e)} for ${p.toString('hex')}`);
          return;
        }
      }
    }
    runs++;
  }
  t.ok(runs > 100, `fuzzed ${runs} payloads (seed ${seed})`);
});
