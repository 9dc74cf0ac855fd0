// fstatatDirents: a batch of fstatat calls on names read in place from a getdents64 buffer.
// Names are checked before any syscall (one plain, NUL-terminated component), argument sizes
// throw, and random index pairs over random bytes only ever give stats or errnos.
import t from 'tap';
import type { Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native, C, STAT } from '../../shared/native';
import { parseDirentBatch } from '../../worker/fs/host_dirents';
import { fuzzSeed, makePrng } from '../helpers/prng';

const SLOT = native.DIRENT_STAT_SLOT;
const EINVAL = 22;
const ENOENT = 2;

function openDir(t: Test, dir: string): number {
  const fd = native.openat(C.AT_FDCWD, dir, C.O_RDONLY | C.O_DIRECTORY, 0);
  t.teardown(() => native.close(fd));
  return fd;
}

function index(pairs: Array<[number, number]>): Buffer {
  const b = Buffer.alloc(pairs.length * 8);
  pairs.forEach(([at, len], i) => { b.writeInt32LE(at, i * 8); b.writeInt32LE(len, i * 8 + 4); });
  return b;
}

const errnoOf = (out: Buffer, i: number): number => out.readInt32LE(i * SLOT + STAT.SIZE);

t.test('the stats of a getdents64 batch equal fstatat of each name', async (t) => {
  const dir = t.testdir({ a: 'x', 'long-name-of-a-file': 'yy', sub: {}, link: t.fixture('symlink', 'nowhere') });
  const fd = openDir(t, dir);
  const buf = Buffer.alloc(4096);
  const n = native.getdents64(fd, buf);
  const batch = parseDirentBatch(buf, n);
  const entries = batch.entries.filter((d) => !d.isDot && !d.isDotDot);
  t.equal(entries.length, 4);
  const out = Buffer.alloc(entries.length * SLOT, 0xaa);
  native.fstatatDirents(fd, batch.bytes, index(entries.map((d) => [d.nameAt, d.nameLength])), entries.length, out);
  entries.forEach((d, i) => {
    t.equal(errnoOf(out, i), 0, `${d.name.toString()}: no error`);
    const want = Buffer.alloc(STAT.SIZE);
    native.fstatat(fd, d.name, C.AT_SYMLINK_NOFOLLOW, want);
    // atime may differ by a read in between: compare identity, mode, size.
    for (const f of ['dev', 'ino', 'mode', 'size'] as const) {
      t.equal(out.readBigUInt64LE(i * SLOT + STAT[f]), want.readBigUInt64LE(STAT[f]), `${d.name.toString()} ${f}`);
    }
    t.equal(out.readInt32LE(i * SLOT + STAT.SIZE + 4), 0, 'slot padding zeroed');
  });
  const link = entries.findIndex((d) => d.name.toString() === 'link');
  t.equal(Number(out.readBigUInt64LE(link * SLOT + STAT.mode)) & 0o170000, 0o120000, 'the symlink itself, not followed');
});

t.test('a name gone since getdents gets its errno in its slot, the others their stats', async (t) => {
  const dir = t.testdir({ a: '', b: '' });
  const fd = openDir(t, dir);
  const names = Buffer.from('a\0b\0');
  fs.unlinkSync(path.join(dir, 'a'));
  const out = Buffer.alloc(2 * SLOT);
  native.fstatatDirents(fd, names, index([[0, 1], [2, 1]]), 2, out);
  t.equal(errnoOf(out, 0), ENOENT);
  t.equal(errnoOf(out, 1), 0);
});

t.test('names that are not one terminated component never reach the kernel', async (t) => {
  const dir = t.testdir({ sub: { f: '' }, 'ab': '' });
  const fd = openDir(t, dir);
  const names = Buffer.from('sub/f\0ab\0a\0b\0..\0x');
  const cases: Array<[number, number, string]> = [
    [0, 5, 'a slash'],
    [6, 1, 'not NUL-terminated in place'],
    [9, 3, 'a NUL inside'],
    [6, 0, 'empty'],
    [-1, 1, 'negative start'],
    [names.length - 1, 1, 'terminator past the end'],
    [names.length, 1, 'start at the end'],
    [0x7fffffff, 1, 'start far beyond'],
    [0, 256, 'longer than NAME_MAX'],
    [0, -5, 'negative length'],
  ];
  const out = Buffer.alloc(cases.length * SLOT);
  native.fstatatDirents(fd, names, index(cases.map(([a, l]) => [a, l])), cases.length, out);
  cases.forEach(([, , what], i) => t.equal(errnoOf(out, i), EINVAL, what));
  const ok = Buffer.alloc(SLOT);
  native.fstatatDirents(fd, names, index([[6, 2]]), 1, ok);
  t.equal(errnoOf(ok, 0), 0, 'a plain name is stat\'ed');
  native.fstatatDirents(fd, names, index([[13, 2]]), 1, ok);
  t.equal(errnoOf(ok, 0), 0, '".." is one component (the caller skips it)');
});

t.test('bad arguments throw, writing nothing', async (t) => {
  const dir = t.testdir({ a: '' });
  const fd = openDir(t, dir);
  const names = Buffer.from('a\0');
  const out = Buffer.alloc(SLOT, 0x55);
  t.throws(() => native.fstatatDirents(fd, names, index([[0, 1]]), 2, Buffer.alloc(2 * SLOT)), RangeError, 'count beyond the index');
  t.throws(() => native.fstatatDirents(fd, names, index([[0, 1], [0, 1]]), 2, out), RangeError, 'count beyond the output');
  t.throws(() => native.fstatatDirents(fd, names, index([[0, 1]]), -1, out), RangeError, 'negative count');
  t.throws(() => native.fstatatDirents(fd, names, index([[0, 1]]), 1.5, out), 'fractional count');
  t.throws(() => native.fstatatDirents(-1, names, index([[0, 1]]), 1, out), 'negative fd');
  t.throws(() => native.fstatatDirents(fd, 'a' as unknown as Buffer, index([[0, 1]]), 1, out), TypeError, 'names not a Buffer');
  t.throws(() => (native.fstatatDirents as unknown as (...a: unknown[]) => void)(fd, names, index([[0, 1]]), 1), TypeError, 'too few arguments');
  t.ok(out.equals(Buffer.alloc(SLOT, 0x55)), 'output untouched');
  native.fstatatDirents(fd, names, index([]), 0, Buffer.alloc(0));
  t.pass('count 0 with empty buffers');
});

t.test('fuzz: random index pairs over random bytes give a stat or an errno, never a crash', async (t) => {
  const seed = fuzzSeed();
  t.comment(`FUZZ_SEED=${seed}`);
  const rnd = makePrng(seed);
  const dir = t.testdir({ a: '', b: '', ab: '' });
  const fd = openDir(t, dir);
  const alphabet = [0, 0x2f, 0x2e, 0x61, 0x62];
  let stats = 0;
  for (let round = 0; round < 2000; round++) {
    const names = Buffer.alloc(1 + Math.floor(rnd() * 24));
    for (let i = 0; i < names.length; i++) names[i] = alphabet[Math.floor(rnd() * alphabet.length)]!;
    const count = Math.floor(rnd() * 8);
    const pairs: Array<[number, number]> = [];
    for (let i = 0; i < count; i++) pairs.push([Math.floor(rnd() * 40) - 8, Math.floor(rnd() * 12) - 2]);
    const out = Buffer.alloc(count * SLOT);
    native.fstatatDirents(fd, names, index(pairs), count, out);
    for (let i = 0; i < count; i++) {
      const e = errnoOf(out, i);
      const [at, len] = pairs[i]!;
      const valid = at >= 0 && len >= 1 && at + len < names.length && names[at + len] === 0 &&
        !names.subarray(at, at + len).includes(0) && !names.subarray(at, at + len).includes(0x2f);
      if (!valid) {
        if (e !== EINVAL) t.fail(`round ${round} pair ${i}: invalid name got errno ${e}`);
        continue;
      }
      const name = names.subarray(at, at + len).toString('latin1');
      const exists = ['a', 'b', 'ab', '.', '..'].includes(name);
      if (exists ? e !== 0 : e !== ENOENT) t.fail(`round ${round}: ${JSON.stringify(name)} got errno ${e}`);
      if (e === 0) stats++;
    }
  }
  t.ok(stats > 0, `some names were stat'ed (${stats})`);
});
