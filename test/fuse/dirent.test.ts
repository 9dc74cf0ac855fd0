// DirentWriter: READDIR / READDIRPLUS records, 8-byte alignment, the exact-fit boundary.
import t from 'tap';
import { DirentWriter, encodeEntryOut } from '../../worker/fuse/protocol';
import type { Entry } from '../../worker/fs/filesystem';
import { fuseStruct, offsetOf } from './wire.test';

const DIRENT = fuseStruct('fuse_dirent').size; // 24: offsetof(name)
const DIRENTPLUS = offsetOf('fuse_direntplus', 'dirent.name'); // 152
const align8 = (n: number): number => Math.ceil(n / 8) * 8;

function ino(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
}

function entryFor(nodeid: number): Entry {
  const stat = Buffer.alloc(128);
  stat.writeBigUInt64LE(BigInt(nodeid) + 1000n, 8); // ino
  stat.writeBigUInt64LE(0o100644n, 16); // mode
  return { nodeid, generation: 1, stat, entryTimeout: 1, attrTimeout: 1 };
}

interface Parsed { entryOut: Buffer | null; ino: bigint; off: bigint; namelen: number; type: number; name: string; start: number; size: number }

/** Walks a reply the way the kernel's parse_dirfile / parse_dirplusfile do. */
function parseRecords(buf: Buffer, plus: boolean): Parsed[] {
  const out: Parsed[] = [];
  let pos = 0;
  const head = plus ? DIRENTPLUS : DIRENT;
  while (pos < buf.length) {
    if (buf.length - pos < head) throw new Error(`partial record at ${pos}`);
    const d = pos + (plus ? DIRENTPLUS - DIRENT : 0);
    const namelen = buf.readUInt32LE(d + offsetOf('fuse_dirent', 'namelen'));
    const size = align8(head + namelen);
    if (pos + size > buf.length) throw new Error(`record at ${pos} overruns`);
    out.push({
      entryOut: plus ? buf.subarray(pos, pos + 128) : null,
      ino: buf.readBigUInt64LE(d + offsetOf('fuse_dirent', 'ino')),
      off: buf.readBigUInt64LE(d + offsetOf('fuse_dirent', 'off')),
      namelen,
      type: buf.readUInt32LE(d + offsetOf('fuse_dirent', 'type')),
      name: buf.toString('latin1', d + DIRENT, d + DIRENT + namelen),
      start: pos,
      size,
    });
    // Padding after the name must be zeros (nothing stale leaks to the guest).
    if (!buf.subarray(d + DIRENT + namelen, pos + size).every((b) => b === 0)) throw new Error(`non-zero padding at ${pos}`);
    pos += size;
  }
  return out;
}

t.test('one READDIR record, field by field', async (t) => {
  const w = new DirentWriter(4096, false);
  t.equal(w.add(Buffer.from('abc'), ino(0x1122334455667788n), 8, 42n, null), true);
  const b = w.bytes();
  t.equal(b.length, 32, 'align8(24 + 3)');
  t.equal(b.toString('hex'),
    '8877665544332211' + '2a00000000000000' + '03000000' + '08000000' + '616263' + '0000000000');
  t.equal(w.count, 1);
  t.equal(w.length, 32);
});

t.test('records are 8-byte aligned for every name length', async (t) => {
  const w = new DirentWriter(1 << 20, false);
  let expected = 0;
  for (let n = 1; n <= 40; n++) {
    t.equal(w.recordSize(n), align8(24 + n), `recordSize(${n})`);
    t.ok(w.add(Buffer.alloc(n, 0x61 + (n % 26)), ino(BigInt(n)), 4, BigInt(n), null));
    expected += align8(24 + n);
  }
  t.equal(w.length, expected);
  const recs = parseRecords(w.bytes(), false);
  t.equal(recs.length, 40);
  recs.forEach((r, i) => {
    t.equal(r.start % 8, 0, `record ${i} starts aligned`);
    t.equal(r.namelen, i + 1);
    t.equal(r.off, BigInt(i + 1));
    t.equal(r.ino, BigInt(i + 1));
  });
});

t.test('exact fit boundary', async (t) => {
  const exact = new DirentWriter(32 + 40, false); // "abc" (32) + "0123456789abcdef" (align8(24+16) = 40)
  t.ok(exact.add(Buffer.from('abc'), ino(1n), 8, 1n, null));
  t.ok(exact.add(Buffer.from('0123456789abcdef'), ino(2n), 8, 2n, null), 'fills the buffer exactly');
  t.notOk(exact.add(Buffer.from('x'), ino(3n), 8, 3n, null), 'nothing more fits');
  t.equal(exact.length, 72);

  const oneShort = new DirentWriter(32 + 39, false);
  t.ok(oneShort.add(Buffer.from('abc'), ino(1n), 8, 1n, null));
  t.notOk(oneShort.add(Buffer.from('0123456789abcdef'), ino(2n), 8, 2n, null), 'one byte short');
  t.equal(oneShort.length, 32, 'the refused record left nothing behind');
  t.equal(parseRecords(oneShort.bytes(), false).length, 1);

  // Padding counts: a 25-byte record needs 32.
  t.notOk(new DirentWriter(31, false).add(Buffer.from('a'), ino(1n), 8, 1n, null));
  t.ok(new DirentWriter(32, false).add(Buffer.from('a'), ino(1n), 8, 1n, null));
  const empty = new DirentWriter(0, false);
  t.notOk(empty.add(Buffer.from('a'), ino(1n), 8, 1n, null));
  t.equal(empty.bytes().length, 0);
});

t.test('READDIRPLUS: entry_out before each dirent; null entry → zeroed entry_out', async (t) => {
  const w = new DirentWriter(4096, true);
  t.equal(w.recordSize(5), align8(DIRENTPLUS + 5));
  t.ok(w.add(Buffer.from('file1'), ino(1001n), 8, 1n, entryFor(1)));
  t.ok(w.add(Buffer.from('.'), ino(1n), 4, 2n, null));
  t.ok(w.add(Buffer.from('sub'), ino(1003n), 4, 3n, entryFor(3)));
  const recs = parseRecords(w.bytes(), true);
  t.equal(recs.length, 3);
  t.strictSame(recs[0]!.entryOut, encodeEntryOut(entryFor(1)), 'entry_out encoded as encodeEntryOut does');
  t.equal(recs[0]!.name, 'file1');
  t.equal(recs[0]!.size, 160, 'align8(152 + 5)');
  t.ok(recs[1]!.entryOut!.every((b) => b === 0), 'null entry: all-zero entry_out (nodeid 0)');
  t.equal(recs[1]!.name, '.');
  t.equal(recs[2]!.entryOut!.readBigUInt64LE(0), 3n);
  t.equal(recs[2]!.off, 3n);

  // Exact fit in plus mode.
  const fit = new DirentWriter(160, true);
  t.ok(fit.add(Buffer.from('file1'), ino(1n), 8, 1n, entryFor(1)));
  t.notOk(fit.add(Buffer.from('a'), ino(2n), 8, 2n, entryFor(2)));
  t.notOk(new DirentWriter(159, true).add(Buffer.from('file1'), ino(1n), 8, 1n, entryFor(1)));
});

t.test('caller target buffer: written in place, stale bytes never leak, bytes() is a view', async (t) => {
  const target = Buffer.alloc(1000, 0xff);
  const w = new DirentWriter(4096, true, target);
  t.equal(w.maxBytes, 1000, 'capped at the target length');
  t.ok(w.add(Buffer.from('a'), ino(1n), 8, 1n, null));
  t.ok(w.add(Buffer.from('bb'), ino(2n), 8, 2n, entryFor(2)));
  const bytes = w.bytes();
  t.equal(bytes.buffer, target.buffer, 'no copy');
  t.equal(bytes.byteOffset, target.byteOffset);
  const recs = parseRecords(bytes, true); // throws on non-zero padding
  t.equal(recs.length, 2);
  t.ok(recs[0]!.entryOut!.every((b) => b === 0), 'zeroed entry_out over 0xff');
  t.ok(target.subarray(bytes.length).every((b) => b === 0xff), 'nothing written past the records');
});

t.test('growth: a huge maxBytes allocates as entries come, and the records survive growing', async (t) => {
  const w = new DirentWriter(0xffffffff, false); // a hostile READDIR size
  for (let i = 0; i < 2000; i++) t.ok(w.add(Buffer.from(`name-${i}`), ino(BigInt(i)), 8, BigInt(i + 1), null), `add ${i}`);
  const recs = parseRecords(w.bytes(), false);
  t.equal(recs.length, 2000);
  t.equal(recs[1999]!.name, 'name-1999');
  t.equal(recs[1234]!.off, 1235n);
  t.ok(w.bytes().buffer.byteLength < 4 * w.length + 8192, 'capacity stays proportional to the content');
});

t.test('misuse by our own filesystem layer throws', async (t) => {
  const w = new DirentWriter(4096, false);
  t.throws(() => w.add(Buffer.alloc(0), ino(1n), 8, 1n, null), RangeError, 'empty name');
  t.throws(() => w.add(Buffer.alloc(1025, 0x61), ino(1n), 8, 1n, null), RangeError, 'name > FUSE_NAME_MAX');
  t.throws(() => w.add(Buffer.from('a'), Buffer.alloc(4), 8, 1n, null), RangeError, '4-byte ino');
  t.throws(() => new DirentWriter(-1, false), RangeError);
  t.throws(() => new DirentWriter(1.5, false), RangeError);
  t.ok(w.add(Buffer.alloc(1024, 0x61), ino(1n), 8, 1n, null), 'FUSE_NAME_MAX itself is fine');
  t.throws(() => w.add(Buffer.from('a'), ino(1n), 8, -1n, null), RangeError, 'negative cookie (an unconverted s64 d_off)');
  t.throws(() => w.add(Buffer.from('a'), ino(1n), 8, 1n << 64n, null), RangeError, 'cookie beyond u64');
});

t.test('cookies are written exactly, all 64 bits', async (t) => {
  const w = new DirentWriter(4096, false);
  const cookies = [(1n << 53n) + 1n, 0x5f3759df_12345677n, 0x7fffffffffffffffn, 0xffffffffffffffffn];
  for (const c of cookies) t.ok(w.add(Buffer.from('n'), ino(1n), 8, c, null));
  t.same(parseRecords(w.bytes(), false).map((r) => r.off), cookies);
});

/** A getdents64 record (d_ino, d_off, reclen, type, name, NUL) at the start of a padded buffer. */
function rawRecord(inoValue: bigint, off: bigint, type: number, name: Buffer, lead: number): { src: Buffer; at: number; nameAt: number } {
  const src = Buffer.alloc(lead + 19 + name.length + 1 + 8, 0xee);
  src.writeBigUInt64LE(inoValue, lead);
  src.writeBigInt64LE(off, lead + 8);
  src.writeUInt16LE(19 + name.length + 1, lead + 16);
  src[lead + 18] = type;
  name.copy(src, lead + 19);
  src[lead + 19 + name.length] = 0;
  return { src, at: lead, nameAt: lead + 19 };
}

t.test('addRaw writes the same bytes as add, for every name length, both modes, any s64 d_off', async (t) => {
  const offs = [1n, 0x7fffffffffffffffn, -1n, -0x8000000000000000n, 0x12345678_9abcdefn];
  for (const plus of [false, true]) {
    for (let len = 1; len <= 40; len++) {
      const viaAdd = new DirentWriter(65536, plus, Buffer.alloc(65536, 0x77));
      const viaRaw = new DirentWriter(65536, plus, Buffer.alloc(65536, 0x33));
      for (const [k, off] of offs.entries()) {
        const name = Buffer.alloc(len, 0x61 + k);
        const inoValue = 0xfedcba98_76543210n + BigInt(len);
        const entry = k % 2 === 0 ? entryFor(len) : null;
        const r = rawRecord(inoValue, off, 8, name, (len * 8) % 24);
        t.equal(viaRaw.addRaw(r.src, r.at, r.nameAt, len, 8, entry), viaAdd.add(name, ino(inoValue), 8, BigInt.asUintN(64, off), entry));
      }
      if (!viaRaw.bytes().equals(viaAdd.bytes())) t.fail(`plus=${plus} name length ${len}: bytes differ`);
    }
  }
  t.pass('compared');
});

t.test('addRaw refuses a record that does not fit, writing nothing, and checks its offsets', async (t) => {
  const name = Buffer.from('abc');
  const r = rawRecord(5n, 9n, 4, name, 0);
  const w = new DirentWriter(align8(DIRENTPLUS + 3), true);
  t.ok(w.addRaw(r.src, r.at, r.nameAt, 3, 4, entryFor(1)), 'exact fit');
  t.notOk(w.addRaw(r.src, r.at, r.nameAt, 3, 4, null), 'one more does not fit');
  t.equal(w.count, 1);
  t.equal(w.spaceLeft(), 0);
  const v = new DirentWriter(4096, false);
  t.throws(() => v.addRaw(r.src, r.at, r.nameAt, 0, 4, null), RangeError, 'empty name');
  t.throws(() => v.addRaw(r.src, r.at, r.nameAt, 1025, 4, null), RangeError, 'name > FUSE_NAME_MAX');
  t.throws(() => v.addRaw(r.src, r.src.length - 8, r.nameAt, 3, 4, null), RangeError, 'record past the buffer');
  t.throws(() => v.addRaw(r.src, -1, r.nameAt, 3, 4, null), RangeError, 'negative record offset');
  t.throws(() => v.addRaw(r.src, 0, r.src.length - 2, 3, 4, null), RangeError, 'name past the buffer');
  t.equal(v.length, 0, 'nothing written');
});
