// Reply encoders: every field at the offset fuse.h gives it (layouts computed from the header
// text by wire.test.ts), plus the conversions (timeouts, rdev, OFFSET_MAX, 64-bit INIT flags).
import t from 'tap';
import { statSync } from 'node:fs';
import * as P from '../../worker/fuse/protocol';
import {
  encodeAttrOut, encodeCreateOut, encodeEntryOut, encodeGetxattrOut, encodeInitOut, encodeLkOut, encodeLseekOut,
  encodeOpenOut, encodeOutHeader, encodeReadlink, encodeStatfsOut, encodeWriteOut, errorReply, okReply,
  replyHeader, splitTimeout, hostDevToFuseRdev, writeU64, STAT_LAYOUT, LOCK_END_OF_FILE,
} from '../../worker/fuse/protocol';
import type { Entry } from '../../worker/fs/filesystem';
import { fuseStruct, offsetOf } from './wire.test';

/** glibc's makedev(): the 64-bit dev_t the host's stat returns. */
function glibcMakedev(major: number, minor: number): bigint {
  const M = BigInt(major);
  const m = BigInt(minor);
  return ((M & 0xfffn) << 8n) | ((M & ~0xfffn) << 32n) | (m & 0xffn) | ((m & ~0xffn) << 12n);
}

/** The kernel's new_decode_dev(): what fuse_attr.rdev means to the guest. */
function kernelDecode(rdev: number): { major: number; minor: number } {
  return { major: (rdev & 0xfff00) >>> 8, minor: ((rdev & 0xff) | ((rdev >>> 12) & 0xfff00)) >>> 0 };
}

interface StatFields {
  ino: bigint; mode: number; nlink: bigint; uid: number; gid: number; rdev: bigint; size: bigint; blksize: bigint;
  blocks: bigint; atime: bigint; atimeNsec: number; mtime: bigint; mtimeNsec: number; ctime: bigint; ctimeNsec: number;
}

/** A STAT_LAYOUT buffer, written field by field (each an LE u64; times signed). */
function statBuffer(f: Partial<StatFields> = {}): Buffer {
  const v: StatFields = {
    ino: 0xdeadbeefcafebaben, mode: 0o100644, nlink: 3n, uid: 1000, gid: 1001, rdev: 0n, size: 0x123456789abn,
    blksize: 4096n, blocks: 0x1000n, atime: -5n, atimeNsec: 111, mtime: 1700000000n, mtimeNsec: 222,
    ctime: 1700000002n, ctimeNsec: 333, ...f,
  };
  const b = Buffer.alloc(128, 0x5a);
  b.writeBigUInt64LE(0x1234n, 0); // dev
  b.writeBigUInt64LE(v.ino, 8);
  b.writeBigUInt64LE(BigInt(v.mode), 16);
  b.writeBigUInt64LE(v.nlink, 24);
  b.writeBigUInt64LE(BigInt(v.uid), 32);
  b.writeBigUInt64LE(BigInt(v.gid), 40);
  b.writeBigUInt64LE(v.rdev, 48);
  b.writeBigUInt64LE(v.size, 56);
  b.writeBigUInt64LE(v.blksize, 64);
  b.writeBigUInt64LE(v.blocks, 72);
  b.writeBigInt64LE(v.atime, 80);
  b.writeBigUInt64LE(BigInt(v.atimeNsec), 88);
  b.writeBigInt64LE(v.mtime, 96);
  b.writeBigUInt64LE(BigInt(v.mtimeNsec), 104);
  b.writeBigInt64LE(v.ctime, 112);
  b.writeBigUInt64LE(BigInt(v.ctimeNsec), 120);
  return b;
}

/** Checks a fuse_attr at `base` against statBuffer() defaults (plus overrides). */
function checkAttr(t: tap.Test, out: Buffer, base: number, rdev = 0): void {
  const at = (f: string): number => base + offsetOf('fuse_attr', f);
  t.equal(out.readBigUInt64LE(at('ino')), 0xdeadbeefcafebaben, 'ino (all 64 bits)');
  t.equal(out.readBigUInt64LE(at('size')), 0x123456789abn, 'size');
  t.equal(out.readBigUInt64LE(at('blocks')), 0x1000n, 'blocks');
  t.equal(out.readBigInt64LE(at('atime')), -5n, 'atime (negative, bit for bit)');
  t.equal(out.readBigUInt64LE(at('mtime')), 1700000000n, 'mtime');
  t.equal(out.readBigUInt64LE(at('ctime')), 1700000002n, 'ctime');
  t.equal(out.readUInt32LE(at('atimensec')), 111, 'atimensec');
  t.equal(out.readUInt32LE(at('mtimensec')), 222, 'mtimensec');
  t.equal(out.readUInt32LE(at('ctimensec')), 333, 'ctimensec');
  t.equal(out.readUInt32LE(at('mode')), 0o100644, 'mode');
  t.equal(out.readUInt32LE(at('nlink')), 3, 'nlink');
  t.equal(out.readUInt32LE(at('uid')), 1000, 'uid');
  t.equal(out.readUInt32LE(at('gid')), 1001, 'gid');
  t.equal(out.readUInt32LE(at('rdev')), rdev, 'rdev');
  t.equal(out.readUInt32LE(at('blksize')), 4096, 'blksize');
  t.equal(out.readUInt32LE(at('flags')), 0, 'flags');
}

const entry = (over: Partial<Entry> = {}): Entry => ({
  nodeid: 0x1_0000_0002, generation: 0x7_0000_0001, stat: statBuffer(), entryTimeout: 1.5, attrTimeout: 0.25, ...over,
});

t.test('struct size constants match fuse.h', async (t) => {
  const sizes: Array<[string, number]> = [
    ['fuse_in_header', P.IN_HEADER_SIZE], ['fuse_out_header', P.OUT_HEADER_SIZE], ['fuse_attr', P.ATTR_SIZE],
    ['fuse_kstatfs', P.KSTATFS_SIZE], ['fuse_file_lock', P.FILE_LOCK_SIZE], ['fuse_entry_out', P.ENTRY_OUT_SIZE],
    ['fuse_attr_out', P.ATTR_OUT_SIZE], ['fuse_open_out', P.OPEN_OUT_SIZE], ['fuse_write_out', P.WRITE_OUT_SIZE],
    ['fuse_statfs_out', P.STATFS_OUT_SIZE], ['fuse_getxattr_out', P.GETXATTR_OUT_SIZE], ['fuse_lk_out', P.LK_OUT_SIZE],
    ['fuse_lseek_out', P.LSEEK_OUT_SIZE], ['fuse_init_out', P.INIT_OUT_SIZE], ['fuse_bmap_out', P.BMAP_OUT_SIZE],
    ['fuse_poll_out', P.POLL_OUT_SIZE], ['fuse_ioctl_out', P.IOCTL_OUT_SIZE], ['fuse_forget_in', P.FORGET_IN_SIZE],
    ['fuse_forget_one', P.FORGET_ONE_SIZE], ['fuse_batch_forget_in', P.BATCH_FORGET_IN_SIZE],
    ['fuse_getattr_in', P.GETATTR_IN_SIZE], ['fuse_setattr_in', P.SETATTR_IN_SIZE], ['fuse_mknod_in', P.MKNOD_IN_SIZE],
    ['fuse_mkdir_in', P.MKDIR_IN_SIZE], ['fuse_rename_in', P.RENAME_IN_SIZE], ['fuse_rename2_in', P.RENAME2_IN_SIZE],
    ['fuse_link_in', P.LINK_IN_SIZE], ['fuse_open_in', P.OPEN_IN_SIZE], ['fuse_create_in', P.CREATE_IN_SIZE],
    ['fuse_release_in', P.RELEASE_IN_SIZE], ['fuse_flush_in', P.FLUSH_IN_SIZE], ['fuse_read_in', P.READ_IN_SIZE],
    ['fuse_write_in', P.WRITE_IN_SIZE], ['fuse_fsync_in', P.FSYNC_IN_SIZE], ['fuse_setxattr_in', P.SETXATTR_IN_SIZE],
    ['fuse_getxattr_in', P.GETXATTR_IN_SIZE], ['fuse_lk_in', P.LK_IN_SIZE], ['fuse_access_in', P.ACCESS_IN_SIZE],
    ['fuse_init_in', P.INIT_IN_SIZE], ['fuse_interrupt_in', P.INTERRUPT_IN_SIZE], ['fuse_bmap_in', P.BMAP_IN_SIZE],
    ['fuse_ioctl_in', P.IOCTL_IN_SIZE], ['fuse_poll_in', P.POLL_IN_SIZE], ['fuse_fallocate_in', P.FALLOCATE_IN_SIZE],
    ['fuse_lseek_in', P.LSEEK_IN_SIZE], ['fuse_copy_file_range_in', P.COPY_FILE_RANGE_IN_SIZE],
    ['fuse_setupmapping_in', P.SETUPMAPPING_IN_SIZE], ['fuse_removemapping_in', P.REMOVEMAPPING_IN_SIZE],
    ['fuse_removemapping_one', P.REMOVEMAPPING_ONE_SIZE], ['fuse_syncfs_in', P.SYNCFS_IN_SIZE],
    ['fuse_notify_retrieve_in', P.NOTIFY_RETRIEVE_IN_SIZE], ['fuse_dirent', P.DIRENT_NAME_OFFSET],
  ];
  for (const [name, size] of sizes) t.equal(fuseStruct(name).size, size, name);
  t.equal(offsetOf('fuse_direntplus', 'dirent.name'), P.DIRENTPLUS_NAME_OFFSET, 'FUSE_NAME_OFFSET_DIRENTPLUS');
  t.equal(P.CREATE_OUT_SIZE, P.ENTRY_OUT_SIZE + P.OPEN_OUT_SIZE);
});

t.test('STAT_LAYOUT is the documented 16 x u64 layout', async (t) => {
  const names = ['dev', 'ino', 'mode', 'nlink', 'uid', 'gid', 'rdev', 'size', 'blksize', 'blocks', 'atime', 'atimeNsec',
    'mtime', 'mtimeNsec', 'ctime', 'ctimeNsec'] as const;
  names.forEach((n, i) => t.equal(STAT_LAYOUT[n], i * 8, n));
  t.equal(STAT_LAYOUT.SIZE, 128);
});

t.test('out-header and error replies', async (t) => {
  const buf = Buffer.alloc(20, 0xaa);
  encodeOutHeader(buf, 2, 0x11223344, -13, 0x0102030405060708n);
  t.equal(buf.toString('hex'), 'aaaa' + '44332211' + 'f3ffffff' + '0807060504030201' + 'aaaa');
  const e = errorReply(0xffffffffffffffffn, 2);
  t.equal(e.toString('hex'), '10000000' + 'feffffff' + 'ffffffffffffffff');
  for (const bad of [0, -2, 4096, 1.5, NaN]) t.equal(errorReply(1n, bad).readInt32LE(4), -5, `errno ${bad} → EIO`);
  t.equal(errorReply(1n, 4095).readInt32LE(4), -4095);
  t.equal(replyHeader(9n, 100).toString('hex'), '74000000' + '00000000' + '0900000000000000');
  const ok = okReply(3n, Buffer.from('abc'));
  t.equal(ok.toString('hex'), '13000000' + '00000000' + '0300000000000000' + '616263');
  t.equal(okReply(3n).length, 16);
});

t.test('attr_out: fields at fuse.h offsets, timeout split', async (t) => {
  const out = encodeAttrOut({ stat: statBuffer(), attrTimeout: 2.000000003 });
  t.equal(out.length, fuseStruct('fuse_attr_out').size);
  t.equal(out.readBigUInt64LE(offsetOf('fuse_attr_out', 'attr_valid')), 2n);
  t.equal(out.readUInt32LE(offsetOf('fuse_attr_out', 'attr_valid_nsec')), 3);
  t.equal(out.readUInt32LE(offsetOf('fuse_attr_out', 'dummy')), 0);
  checkAttr(t, out, offsetOf('fuse_attr_out', 'attr'));
});

t.test('entry_out: fields at fuse.h offsets', async (t) => {
  const out = encodeEntryOut(entry());
  t.equal(out.length, 128);
  const at = (f: string): number => offsetOf('fuse_entry_out', f);
  t.equal(out.readBigUInt64LE(at('nodeid')), 0x1_0000_0002n);
  t.equal(out.readBigUInt64LE(at('generation')), 0x7_0000_0001n);
  t.equal(out.readBigUInt64LE(at('entry_valid')), 1n);
  t.equal(out.readUInt32LE(at('entry_valid_nsec')), 500_000_000);
  t.equal(out.readBigUInt64LE(at('attr_valid')), 0n);
  t.equal(out.readUInt32LE(at('attr_valid_nsec')), 250_000_000);
  checkAttr(t, out, at('attr'));
  // A negative entry: nodeid 0, cacheable.
  t.equal(encodeEntryOut(entry({ nodeid: 0 })).readBigUInt64LE(0), 0n);
});

t.test('writing into a caller buffer at an offset touches exactly the struct', async (t) => {
  const big = Buffer.alloc(300, 0xaa);
  const view = encodeEntryOut(entry(), big, 8);
  t.equal(view.length, 128);
  t.equal(view.buffer, big.buffer, 'a view of the caller buffer');
  t.ok(big.subarray(0, 8).every((b) => b === 0xaa), 'bytes before untouched');
  t.ok(big.subarray(136).every((b) => b === 0xaa), 'bytes after untouched');
  t.strictSame(big.subarray(8, 136), encodeEntryOut(entry()), 'same bytes as a fresh encode (padding zeroed)');
  t.throws(() => encodeEntryOut(entry(), big, 173), RangeError, 'no room');
  t.throws(() => encodeOpenOut({ fh: 1, openFlags: 0 }, big, -1), RangeError, 'negative offset');
});

t.test('rdev: glibc dev_t → new_encode_dev', async (t) => {
  for (const [major, minor] of [[0, 0], [1, 3], [8, 17], [259, 0x10005], [4095, 0xfffff], [0xabc, 0x12345], [136, 255], [136, 256]]) {
    const dev = glibcMakedev(major!, minor!);
    const out = encodeAttrOut({ stat: statBuffer({ rdev: dev }), attrTimeout: 0 });
    const rdev = out.readUInt32LE(16 + offsetOf('fuse_attr', 'rdev'));
    t.equal(rdev, ((minor! & 0xff) | (major! << 8) | ((minor! & ~0xff) << 12)) >>> 0, `${major}:${minor} formula`);
    t.strictSame(kernelDecode(rdev), { major, minor }, `${major}:${minor} decodes back in the guest`);
  }
  // A major beyond the kernel's 12 bits cannot exist on Linux; it is masked, not smeared.
  const lo = Number(glibcMakedev(0x1234, 5) & 0xffffffffn);
  const hi = Number(glibcMakedev(0x1234, 5) >> 32n);
  t.strictSame(kernelDecode(hostDevToFuseRdev(lo, hi)), { major: 0x234, minor: 5 });
  // A real device node on this host.
  const nullDev = statSync('/dev/null', { bigint: true }).rdev;
  const r = hostDevToFuseRdev(Number(nullDev & 0xffffffffn), Number(nullDev >> 32n));
  t.strictSame(kernelDecode(r), { major: 1, minor: 3 }, '/dev/null is 1:3');
});

t.test('nlink and blksize beyond u32 saturate', async (t) => {
  const out = encodeAttrOut({ stat: statBuffer({ nlink: 1n << 32n, blksize: (1n << 40n) + 7n }), attrTimeout: 0 });
  t.equal(out.readUInt32LE(16 + offsetOf('fuse_attr', 'nlink')), 0xffffffff);
  t.equal(out.readUInt32LE(16 + offsetOf('fuse_attr', 'blksize')), 0xffffffff);
  t.throws(() => encodeAttrOut({ stat: Buffer.alloc(127), attrTimeout: 0 }), RangeError, 'short stat buffer');
});

t.test('splitTimeout', async (t) => {
  t.strictSame(splitTimeout(1.5), { sec: 1, nsec: 500_000_000 });
  t.strictSame(splitTimeout(0), { sec: 0, nsec: 0 });
  t.strictSame(splitTimeout(-3), { sec: 0, nsec: 0 });
  t.strictSame(splitTimeout(NaN), { sec: 0, nsec: 0 });
  t.strictSame(splitTimeout(Infinity), { sec: Number.MAX_SAFE_INTEGER, nsec: 0 });
  t.strictSame(splitTimeout(1e300), { sec: Number.MAX_SAFE_INTEGER, nsec: 0 });
  t.strictSame(splitTimeout(0.9999999999), { sec: 1, nsec: 0 }, 'rounding carries into seconds');
  t.strictSame(splitTimeout(86400), { sec: 86400, nsec: 0 });
  const inf = encodeEntryOut(entry({ entryTimeout: Infinity }));
  t.equal(inf.readBigInt64LE(16), BigInt(Number.MAX_SAFE_INTEGER), 'stays a positive i64 for the kernel');
});

t.test('open_out, create_out, write_out, getxattr_out, lseek_out, readlink', async (t) => {
  const open = encodeOpenOut({ fh: 0x2_0000_0003, openFlags: P.FOPEN_KEEP_CACHE | P.FOPEN_CACHE_DIR });
  t.equal(open.toString('hex'), '0300000002000000' + '0a000000' + '00000000');
  const create = encodeCreateOut(entry(), { fh: 5, openFlags: 1 });
  t.equal(create.length, 144);
  t.strictSame(create.subarray(0, 128), encodeEntryOut(entry()), 'entry_out first');
  t.strictSame(create.subarray(128), encodeOpenOut({ fh: 5, openFlags: 1 }), 'then open_out');
  t.equal(encodeWriteOut(0xfffffffe).toString('hex'), 'feffffff00000000');
  t.equal(encodeGetxattrOut(17).toString('hex'), '1100000000000000');
  t.equal(encodeLseekOut(2 ** 40 + 1).toString('hex'), '0100000000010000');
  t.equal(encodeLseekOut(2 ** 60).readBigUInt64LE(0), 1n << 60n, 'beyond 2^53: the exact double');
  const target = Buffer.from('../x');
  t.equal(encodeReadlink(target), target, 'the raw bytes, no NUL, no copy');
  t.throws(() => encodeReadlink(Buffer.alloc(0)), RangeError);
});

t.test('statfs_out: fuse_kstatfs offsets', async (t) => {
  const out = encodeStatfsOut({ bsize: 4096, frsize: 1024, blocks: 2 ** 40, bfree: 7, bavail: 6, files: 5, ffree: 4, namelen: 255, type: 0x01021994 });
  t.equal(out.length, 80);
  const at = (f: string): number => offsetOf('fuse_kstatfs', f);
  t.equal(out.readBigUInt64LE(at('blocks')), 1n << 40n);
  t.equal(out.readBigUInt64LE(at('bfree')), 7n);
  t.equal(out.readBigUInt64LE(at('bavail')), 6n);
  t.equal(out.readBigUInt64LE(at('files')), 5n);
  t.equal(out.readBigUInt64LE(at('ffree')), 4n);
  t.equal(out.readUInt32LE(at('bsize')), 4096);
  t.equal(out.readUInt32LE(at('namelen')), 255);
  t.equal(out.readUInt32LE(at('frsize')), 1024);
  t.ok(out.subarray(at('padding')).every((b) => b === 0), 'padding and spare zero');
});

t.test('init_out: every field, 64-bit flags', async (t) => {
  const flags = P.FUSE_ASYNC_READ | P.FUSE_MAX_PAGES | P.FUSE_HAS_EXPIRE_ONLY | P.FUSE_SECURITY_CTX;
  const out = encodeInitOut({ maxReadahead: 131072, flags, maxBackground: 64, congestionThreshold: 48,
    maxWrite: 1 << 20, timeGran: 1, maxPages: 256, mapAlignment: 12 });
  t.equal(out.length, 64);
  const at = (f: string): number => offsetOf('fuse_init_out', f);
  t.equal(out.readUInt32LE(at('major')), 7);
  t.equal(out.readUInt32LE(at('minor')), 38);
  t.equal(out.readUInt32LE(at('max_readahead')), 131072);
  t.equal(out.readUInt32LE(at('flags')), 1 | (1 << 22) | (1 << 30), 'low word, FUSE_INIT_EXT added because flags2 is used');
  t.equal(out.readUInt16LE(at('max_background')), 64);
  t.equal(out.readUInt16LE(at('congestion_threshold')), 48);
  t.equal(out.readUInt32LE(at('max_write')), 1 << 20);
  t.equal(out.readUInt32LE(at('time_gran')), 1);
  t.equal(out.readUInt16LE(at('max_pages')), 256);
  t.equal(out.readUInt16LE(at('map_alignment')), 12);
  t.equal(out.readUInt32LE(at('flags2')), 0b1001, 'SECURITY_CTX (bit 32) and HAS_EXPIRE_ONLY (bit 35)');
  t.ok(out.subarray(at('unused')).every((b) => b === 0), 'unused (max_stack_depth in 7.40) zero');
  // Only low flags: no flags2, no FUSE_INIT_EXT invented.
  const low = encodeInitOut({ major: 7, minor: 31, maxReadahead: 0, flags: P.FUSE_POSIX_LOCKS, maxBackground: 0,
    congestionThreshold: 0, maxWrite: 4096, timeGran: 1, maxPages: 1 });
  t.equal(low.readUInt32LE(4), 31);
  t.equal(low.readUInt32LE(12), 2);
  t.equal(low.readUInt32LE(32), 0);
  t.equal(low.readUInt16LE(30), 0, 'mapAlignment defaults to 0');
  t.throws(() => encodeInitOut({ maxReadahead: 0, flags: 1n << 64n, maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGran: 0, maxPages: 0 }), RangeError);
});

t.test('lk_out: OFFSET_MAX round trip', async (t) => {
  const out = encodeLkOut({ type: 1, start: 100, end: LOCK_END_OF_FILE, pid: 4242 });
  const at = (f: string): number => offsetOf('fuse_lk_out', f);
  t.equal(out.readBigUInt64LE(at('lk.start')), 100n);
  t.equal(out.readBigUInt64LE(at('lk.end')), 0x7fffffffffffffffn);
  t.equal(out.readUInt32LE(at('lk.type')), 1);
  t.equal(out.readUInt32LE(at('lk.pid')), 4242);
  t.equal(encodeLkOut({ type: 2, start: 0, end: 199, pid: 0 }).readBigUInt64LE(8), 199n);
});

t.test('writeU64 range', async (t) => {
  const b = Buffer.alloc(8);
  writeU64(b, 0, Number.MAX_SAFE_INTEGER);
  t.equal(b.readBigUInt64LE(0), BigInt(Number.MAX_SAFE_INTEGER));
  writeU64(b, 0, 2 ** 63);
  t.equal(b.readBigUInt64LE(0), 1n << 63n);
  for (const bad of [-1, 1.5, NaN, Infinity, 2 ** 64]) t.throws(() => writeU64(b, 0, bad), RangeError, `${bad}`);
});
