// linux_dirent64 parser bounds checks.
import t from 'tap';
import { parseDirents } from '../../worker/fs/host_dirents';
import { FsError } from '../../worker/fs/filesystem';

function rec(ino: bigint, off: bigint, type: number, name: string, pad = true): Buffer {
  const raw = 19 + Buffer.byteLength(name) + 1;
  const len = pad ? (raw + 7) & ~7 : raw;
  const b = Buffer.alloc(len);
  b.writeBigUInt64LE(ino, 0);
  b.writeBigInt64LE(off, 8);
  b.writeUInt16LE(len, 16);
  b.writeUInt8(type, 18);
  b.write(name, 19);
  return b;
}

t.test('parses records', (t) => {
  const buf = Buffer.concat([rec(1n, 5n, 4, '.'), rec(0xfffffffffffffffen, 0x7fffffffffffffffn, 8, 'file-name'), Buffer.alloc(64)]);
  const len = buf.length - 64;
  const d = parseDirents(buf, len);
  t.equal(d.length, 2);
  t.equal(d[0].name.toString(), '.');
  t.equal(d[0].off, 5n);
  t.equal(d[0].type, 4);
  t.equal(d[1].ino.readBigUInt64LE(0), 0xfffffffffffffffen);
  t.equal(d[1].off, 0x7fffffffffffffffn);
  t.equal(d[1].name.toString(), 'file-name');
  buf.fill(0xaa);
  t.equal(d[1].name.toString(), 'file-name', 'names are copies');
  t.same(parseDirents(buf, 0), []);
  t.end();
});

t.test('rejects malformed input', (t) => {
  const good = rec(1n, 1n, 8, 'abc');
  const bad = (b: Buffer, len = b.length): void => { parseDirents(b, len); };
  t.throws(() => bad(good, good.length + 1), FsError, 'length beyond the buffer');
  t.throws(() => bad(good, -1), FsError, 'negative length');
  t.throws(() => bad(good, 10), FsError, 'truncated header');
  const zero = Buffer.from(good); zero.writeUInt16LE(0, 16);
  t.throws(() => bad(zero), FsError, 'reclen 0 (would loop forever)');
  const long = Buffer.from(good); long.writeUInt16LE(good.length + 8, 16);
  t.throws(() => bad(long), FsError, 'reclen past the end');
  const noNul = Buffer.from(good); noNul.fill(0x41, 19);
  t.throws(() => bad(noNul), FsError, 'name without NUL');
  const empty = Buffer.from(good); empty.fill(0, 19);
  t.throws(() => bad(empty), FsError, 'empty name');
  const twoWithBadSecond = Buffer.concat([good, good.subarray(0, 12)]);
  t.throws(() => bad(twoWithBadSecond), FsError, 'trailing partial record');
  t.end();
});
