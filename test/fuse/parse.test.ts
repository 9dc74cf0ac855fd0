// Request parsing: golden decodes of hand-built requests for every opcode, then malformed input.
import t from 'tap';
import { readFileSync } from 'node:fs';
import {
  FuseProtocolError, parseInHeader, parseRequest, opcodeHasReply, bodyBytesNeeded,
  OPCODE_NAMES, opcodeName, LOCK_END_OF_FILE, type FuseRequest, type InHeader, type ParseOptions,
} from '../../worker/fuse/protocol';
import * as P from '../../worker/fuse/protocol';
import { OP, cstr, inHeader, pack, request, sampleRequest, u32, u64, validSamples } from './wire.test';

const EINVAL = 22;
const EIO = 5;

/** Parses a whole request buffer (header + body) the way the server does. */
function parse(buf: Buffer, options?: ParseOptions): FuseRequest {
  const header = parseInHeader(buf);
  return parseRequest(header, buf.subarray(40), options);
}

function expectProtocolError(t: tap.Test, fn: () => unknown, errno: number, what: string): void {
  try {
    const r = fn();
    t.fail(`${what}: expected FuseProtocolError(${errno}), got ${JSON.stringify(r, (_k, v) => typeof v === 'bigint' ? `${v}n` : v)}`);
  } catch (e) {
    if (!(e instanceof FuseProtocolError)) {
      t.fail(`${what}: expected FuseProtocolError, got ${String(e)}`);
      return;
    }
    t.equal(e.errno, errno, `${what}: errno ${errno} (${e.message})`);
  }
}

t.test('fuse.h constants match the header file', async (t) => {
  const h = readFileSync('/usr/include/linux/fuse.h', 'utf8');
  const define = (name: string): string | undefined => new RegExp(`#define\\s+${name}\\s+([^\\n/]+)`).exec(h)?.[1]?.trim();
  const enumValue = (name: string): number => Number(new RegExp(`\\b${name}\\s*=\\s*(\\d+)`).exec(h)?.[1]);
  t.equal(Number(define('FUSE_KERNEL_VERSION')), P.FUSE_KERNEL_VERSION);
  t.equal(Number(define('FUSE_KERNEL_MINOR_VERSION')), P.FUSE_KERNEL_MINOR_VERSION);
  let checked = 0;
  for (const [opcode, name] of OPCODE_NAMES) {
    const cname = name === 'CUSE_INIT' ? 'CUSE_INIT' : `FUSE_${name}`;
    t.equal(enumValue(cname), opcode, `${cname} = ${opcode}`);
    t.equal((P as unknown as Record<string, number>)[cname], opcode, `exported ${cname}`);
    checked++;
  }
  t.equal(checked, 50, '49 FUSE opcodes + CUSE_INIT');
  // Every (1 << n) / (1ULL << n) define in fuse.h that we export must agree.
  const exported = P as unknown as Record<string, unknown>;
  let flags = 0;
  for (const m of h.matchAll(/#define\s+(\w+)\s+\((1(?:ULL|ull)?) << (\d+)\)/g)) {
    const [, name, , bit] = m;
    if (!(name! in exported)) continue;
    const v = exported[name!];
    t.equal(BigInt(v as number | bigint), 1n << BigInt(bit!), `${name} = 1 << ${bit}`);
    flags++;
  }
  t.ok(flags >= 75, `checked ${flags} flag constants`);
  for (const name of ['FUSE_COMPAT_ENTRY_OUT_SIZE', 'FUSE_COMPAT_ATTR_OUT_SIZE', 'FUSE_COMPAT_MKNOD_IN_SIZE',
    'FUSE_COMPAT_WRITE_IN_SIZE', 'FUSE_COMPAT_STATFS_SIZE', 'FUSE_COMPAT_SETXATTR_IN_SIZE',
    'FUSE_COMPAT_INIT_OUT_SIZE', 'FUSE_COMPAT_22_INIT_OUT_SIZE', 'FUSE_ROOT_ID', 'FUSE_MIN_READ_BUFFER',
    'FUSE_IOCTL_MAX_IOV']) {
    t.equal(Number(define(name)), exported[name], name);
  }
  t.equal(opcodeName(7), 'UNKNOWN(7)');
  t.equal(opcodeName(16), 'WRITE');
});

t.test('parseInHeader decodes every field at its fuse.h offset', async (t) => {
  const raw = inHeader({ len: 0x01020304, opcode: 0x0a0b0c0d, unique: 0xfedcba9876543210n, nodeid: 0x1fffffffffffffn,
    uid: 0xfffffffe, gid: 5, pid: 0x7fffffff, totalExtlen: 0xbeef, padding: 0xffff });
  t.equal(raw.length, 40);
  const h = parseInHeader(raw);
  t.strictSame(h, {
    len: 0x01020304, opcode: 0x0a0b0c0d, unique: 0xfedcba9876543210n, nodeid: Number.MAX_SAFE_INTEGER,
    uid: 0xfffffffe, gid: 5, pid: 0x7fffffff, totalExtlen: 0xbeef,
  });
  // At an offset inside a larger buffer.
  const shifted = Buffer.concat([Buffer.alloc(13, 0xee), raw, Buffer.alloc(3)]);
  t.strictSame(parseInHeader(shifted, 13), h);
  // nodeid above 2^53-1 is NaN ("no such node"), not an error.
  t.ok(Number.isNaN(parseInHeader(inHeader({ opcode: 1, nodeid: 1n << 53n })).nodeid));
  t.ok(Number.isNaN(parseInHeader(inHeader({ opcode: 1, nodeid: 0xffffffffffffffffn })).nodeid));
  t.equal(parseInHeader(inHeader({ opcode: 1, nodeid: 1n })).nodeid, 1);
  for (let n = 0; n < 40; n++) expectProtocolError(t, () => parseInHeader(raw.subarray(0, n)), EIO, `${n}-byte header`);
  expectProtocolError(t, () => parseInHeader(shifted, 17), EIO, 'header overrunning the buffer at an offset');
  t.doesNotThrow(() => parseInHeader(shifted, 16), 'exactly 40 bytes left at the offset');
  expectProtocolError(t, () => parseInHeader(raw, -1), EIO, 'negative offset');
  expectProtocolError(t, () => parseInHeader(raw, 0.5), EIO, 'fractional offset');
});

t.test('golden decodes, one per opcode', async (t) => {
  const samples = new Map(validSamples().map((s) => [s.name, s]));
  const decode = (name: string): FuseRequest => {
    const s = samples.get(name)!;
    return parse(sampleRequest(s), { setxattrExt: s.setxattrExt === true });
  };
  const B = (s: string): Buffer => Buffer.from(s, 'latin1');
  const expected: Record<string, FuseRequest> = {
    'INIT': { kind: 'INIT', major: 7, minor: 38, maxReadahead: 131072, flags: 0x4000_0001n | (0b1011n << 32n) },
    'INIT (7.31, 16 bytes)': { kind: 'INIT', major: 7, minor: 31, maxReadahead: 65536, flags: 3n },
    'DESTROY': { kind: 'DESTROY' },
    'LOOKUP': { kind: 'LOOKUP', name: B('hello.txt') },
    'FORGET': { kind: 'FORGET', nlookup: 5 },
    'BATCH_FORGET': { kind: 'BATCH_FORGET', items: [{ nodeid: 10, nlookup: 1 }, { nodeid: 11, nlookup: 2 }] },
    'GETATTR': { kind: 'GETATTR', getattrFlags: 1, fh: 9 },
    'SETATTR': {
      kind: 'SETATTR', valid: 0x7ff, fh: 4, size: 4096, lockOwner: 0x55n, atime: -86400, atimeNsec: 1,
      mtime: 1700000000, mtimeNsec: 2, ctime: 1700000001, ctimeNsec: 3, mode: 0o100644, uid: 1001, gid: 1002,
    },
    'READLINK': { kind: 'READLINK' },
    'SYMLINK': { kind: 'SYMLINK', name: B('link'), target: B('../target') },
    'MKNOD': { kind: 'MKNOD', name: B('null'), mode: 0o020644, rdev: 0x0103, umask: 0o022 },
    'MKDIR': { kind: 'MKDIR', name: B('dir'), mode: 0o755, umask: 0o022 },
    'UNLINK': { kind: 'UNLINK', name: B('gone') },
    'RMDIR': { kind: 'RMDIR', name: B('gonedir') },
    'RENAME': { kind: 'RENAME', newDir: 12, flags: 0, oldName: B('a'), newName: B('bb') },
    'RENAME2': { kind: 'RENAME2', newDir: 13, flags: 2, oldName: B('old'), newName: B('new') },
    'LINK': { kind: 'LINK', oldNodeid: 21, newName: B('hard') },
    'OPEN': { kind: 'OPEN', flags: 0o102, openFlags: 1 },
    'OPENDIR': { kind: 'OPENDIR', flags: 0o200000, openFlags: 0 },
    'CREATE': { kind: 'CREATE', name: B('new.txt'), flags: 0o101, mode: 0o100600, umask: 0o022, openFlags: 0 },
    'TMPFILE': { kind: 'TMPFILE', flags: 0o20000002, mode: 0o100600, umask: 0o077, openFlags: 0 },
    'READ': { kind: 'READ', fh: 6, offset: 8192, size: 4096, readFlags: 2, lockOwner: 0x99n, flags: 0o2 },
    'WRITE': { kind: 'WRITE', fh: 6, offset: 12288, size: 100, writeFlags: 3, lockOwner: 0x98n, flags: 0o2001, payloadOffset: 80 },
    'FLUSH': { kind: 'FLUSH', fh: 6, lockOwner: 0x97n },
    'RELEASE': { kind: 'RELEASE', fh: 6, flags: 0o2, releaseFlags: 3, lockOwner: 0x96n },
    'RELEASEDIR': { kind: 'RELEASEDIR', fh: 8, flags: 0o200000, releaseFlags: 0, lockOwner: 0n },
    'FSYNC': { kind: 'FSYNC', fh: 6, fsyncFlags: 1, dataOnly: true },
    'FSYNCDIR': { kind: 'FSYNCDIR', fh: 8, fsyncFlags: 0, dataOnly: false },
    'STATFS': { kind: 'STATFS' },
    'SYNCFS': { kind: 'SYNCFS' },
    'READDIR': { kind: 'READDIR', fh: 8, offset: 3n, size: 4096 },
    'READDIRPLUS': { kind: 'READDIRPLUS', fh: 8, offset: 0n, size: 65536 },
    'GETXATTR': { kind: 'GETXATTR', name: B('user.a'), size: 256 },
    'LISTXATTR': { kind: 'LISTXATTR', size: 0 },
    'SETXATTR': { kind: 'SETXATTR', name: B('user.b'), value: B('v\0z'), flags: 1, setxattrFlags: 0 },
    'SETXATTR (ext)': { kind: 'SETXATTR', name: B('system.posix_acl_access'), value: B('xy'), flags: 2, setxattrFlags: 1 },
    'REMOVEXATTR': { kind: 'REMOVEXATTR', name: B('user.c') },
    'ACCESS': { kind: 'ACCESS', mask: 4 },
    'GETLK': { kind: 'GETLK', fh: 3, owner: 0xabcdef0123456789n, lock: { type: 1, start: 100, end: 199, pid: 77 }, lkFlags: 0, isFlock: false },
    'SETLK': { kind: 'SETLK', fh: 3, owner: 0xabcdef0123456789n, lock: { type: 2, start: 100, end: 199, pid: 77 }, lkFlags: 0, isFlock: false },
    'SETLKW': { kind: 'SETLKW', fh: 3, owner: 1n, lock: { type: 1, start: 0, end: LOCK_END_OF_FILE, pid: 78 }, lkFlags: 1, isFlock: true },
    'FALLOCATE': { kind: 'FALLOCATE', fh: 6, offset: 1024, length: 1 << 20, mode: 1 },
    'LSEEK': { kind: 'LSEEK', fh: 6, offset: 500, whence: 3 },
    'COPY_FILE_RANGE': { kind: 'COPY_FILE_RANGE', fhIn: 6, offIn: 10, nodeidOut: 22, fhOut: 7, offOut: 20, len: 4096, flags: 0 },
    'INTERRUPT': { kind: 'INTERRUPT', unique: 0xfeedn },
    'IOCTL': { kind: 'IOCTL', fh: 6n, flags: 4, cmd: 0x5401, arg: 0xdeadn, inSize: 4, outSize: 8 },
    'POLL': { kind: 'POLL', fh: 6n, kh: 0x77n, flags: 1, events: 0x41 },
    'BMAP': { kind: 'BMAP', block: 33n, blocksize: 4096 },
    'SETUPMAPPING': { kind: 'SETUPMAPPING', fh: 6n, foffset: 0n, len: 2n << 20n, flags: 3n, moffset: 4n << 20n },
    'REMOVEMAPPING': { kind: 'REMOVEMAPPING', items: [{ moffset: 0n, len: 4096n }, { moffset: 8192n, len: 4096n }] },
    'NOTIFY_REPLY': { kind: 'NOTIFY_REPLY', offset: 4096n, size: 10 },
  };
  t.strictSame([...samples.keys()].sort(), Object.keys(expected).sort(), 'a golden decode for every sample');
  for (const [name, want] of Object.entries(expected)) t.strictSame(decode(name), want, name);
  // Every opcode in the name table (except CUSE_INIT) has a sample whose kind is that name.
  const kinds = new Set(Object.values(expected).map((r) => r.kind));
  for (const [opcode, name] of OPCODE_NAMES) {
    if (opcode !== P.CUSE_INIT) t.ok(kinds.has(name as FuseRequest['kind']), `sample covers ${name}`);
  }
});

t.test('body longer than the header says: the excess is ignored', async (t) => {
  const body = Buffer.concat([cstr('foo'), Buffer.from('GARBAGE\0more\0')]);
  const h = parseInHeader(inHeader({ opcode: OP.LOOKUP, len: 44 }));
  t.strictSame(parseRequest(h, body), { kind: 'LOOKUP', name: Buffer.from('foo') });
});

t.test('header len disagreeing with the body', async (t) => {
  const req = request({ opcode: OP.LOOKUP }, cstr('foo'));
  for (let len = 0; len < 40; len++) {
    const h: InHeader = { ...parseInHeader(req), len };
    expectProtocolError(t, () => parseRequest(h, req.subarray(40)), EINVAL, `len ${len} < 40`);
  }
  // len claims more than the body holds: the transport lost bytes → EIO.
  const h = parseInHeader(req);
  expectProtocolError(t, () => parseRequest({ ...h, len: h.len + 1 }, req.subarray(40)), EIO, 'len one past the body');
  expectProtocolError(t, () => parseRequest({ ...h, len: 0xffffffff }, req.subarray(40)), EIO, 'len 4 GiB');
  // len shorter than the name: the NUL falls outside → EINVAL.
  expectProtocolError(t, () => parseRequest({ ...h, len: h.len - 1 }, req.subarray(40)), EINVAL, 'len cutting off the NUL');
  // A header object with a nonsensical len (NaN) must not slip through.
  expectProtocolError(t, () => parseRequest({ ...h, len: NaN }, req.subarray(40)), EINVAL, 'NaN len');
});

t.test('names: NUL-terminated, non-empty, nothing after', async (t) => {
  const one = (op: number, prefix: Buffer, tail: Buffer): Buffer => request({ opcode: op }, prefix, tail);
  const nameOps: Array<[string, number, Buffer]> = [
    ['LOOKUP', OP.LOOKUP, Buffer.alloc(0)], ['UNLINK', OP.UNLINK, Buffer.alloc(0)], ['RMDIR', OP.RMDIR, Buffer.alloc(0)],
    ['REMOVEXATTR', OP.REMOVEXATTR, Buffer.alloc(0)], ['MKDIR', OP.MKDIR, pack(u32(0o755), u32(0))],
    ['MKNOD', OP.MKNOD, pack(u32(0o10644), u32(0), u32(0), u32(0))], ['LINK', OP.LINK, pack(u64(3))],
    ['CREATE', OP.CREATE, pack(u32(0), u32(0o644), u32(0), u32(0))], ['GETXATTR', OP.GETXATTR, pack(u32(0), u32(0))],
  ];
  for (const [what, op, prefix] of nameOps) {
    expectProtocolError(t, () => parse(one(op, prefix, Buffer.from('abc'))), EINVAL, `${what}: no NUL`);
    expectProtocolError(t, () => parse(one(op, prefix, Buffer.alloc(0))), EINVAL, `${what}: no name at all`);
    expectProtocolError(t, () => parse(one(op, prefix, Buffer.from([0]))), EINVAL, `${what}: empty name`);
    expectProtocolError(t, () => parse(one(op, prefix, Buffer.from('abc\0x'))), EINVAL, `${what}: trailing byte`);
    expectProtocolError(t, () => parse(one(op, prefix, Buffer.from('abc\0\0'))), EINVAL, `${what}: trailing NUL`);
    const ok = parse(one(op, prefix, cstr('../x/y'))) as { name?: Buffer; newName?: Buffer };
    t.strictSame(ok.name ?? ok.newName, Buffer.from('../x/y'), `${what}: '/' and '..' pass through`);
  }
  const twoNameOps: Array<[string, number, Buffer]> = [
    ['SYMLINK', OP.SYMLINK, Buffer.alloc(0)], ['RENAME', OP.RENAME, pack(u64(1))],
    ['RENAME2', OP.RENAME2, pack(u64(1), u32(0), u32(0))],
  ];
  for (const [what, op, prefix] of twoNameOps) {
    for (const [tail, label] of [
      ['a', 'no NUL'], ['a\0', 'missing second name'], ['a\0b', 'second without NUL'], ['\0b\0', 'empty first'],
      ['a\0\0', 'empty second'], ['a\0b\0c', 'trailing byte'], ['a\0b\0\0', 'trailing NUL'], ['', 'nothing'],
    ] as const) {
      expectProtocolError(t, () => parse(one(op, prefix, Buffer.from(tail, 'latin1'))), EINVAL, `${what}: ${label}`);
    }
  }
  // Non-UTF-8 bytes are names like any other.
  const odd = Buffer.from([0xff, 0xfe, 0x80]);
  t.strictSame(parse(request({ opcode: OP.LOOKUP }, cstr(odd))), { kind: 'LOOKUP', name: odd });
});

t.test('variable-length parts are copies: the guest rewriting memory after parsing changes nothing', async (t) => {
  const req = request({ opcode: OP.RENAME }, pack(u64(1)), cstr('old'), cstr('new'));
  const r = parse(req);
  if (r.kind !== 'RENAME') throw new Error('expected RENAME');
  req.fill(0x2e, 48); // the guest writes "...." over both names
  t.equal(r.oldName.toString(), 'old');
  t.equal(r.newName.toString(), 'new');
  const sx = request({ opcode: OP.SETXATTR }, pack(u32(2), u32(0)), cstr('user.x'), Buffer.from('vv'));
  const s = parse(sx);
  sx.fill(0x41, 48);
  t.strictSame(s, { kind: 'SETXATTR', name: Buffer.from('user.x'), value: Buffer.from('vv'), flags: 0, setxattrFlags: 0 });
});

t.test('every opcode, every truncation: FuseProtocolError and nothing else', async (t) => {
  let cases = 0;
  for (const s of validSamples()) {
    const options = { setxattrExt: s.setxattrExt === true };
    const full = sampleRequest(s);
    t.doesNotThrow(() => parse(full, options), `${s.name}: the untruncated sample parses`);
    for (let k = 0; k < s.args.length; k++) {
      const cut = s.args.subarray(0, k);
      // len says the request really is this short (for WRITE / NOTIFY_REPLY: no payload either).
      const shorter = Buffer.concat([inHeader({ opcode: s.opcode, len: 40 + k }), cut]);
      if (s.validShorter?.includes(k)) {
        t.doesNotThrow(() => parse(shorter, options), `${s.name}: ${k} bytes is still valid`);
      } else {
        expectProtocolError(t, () => parse(shorter, options), EINVAL, `${s.name} truncated to ${k} (len consistent)`);
      }
      // Header unchanged, body cut short: the transport lost bytes.
      const lost = Buffer.concat([full.subarray(0, 40), cut]);
      expectProtocolError(t, () => parse(lost, options), EIO, `${s.name} body cut to ${k} (len unchanged)`);
      cases += 2;
    }
  }
  t.ok(cases > 1000, `${cases} truncation cases`);
});

t.test('all opcode numbers × short bodies never throw anything but FuseProtocolError', async (t) => {
  const opcodes = [...Array(64).keys(), 4096, 1048576, 436207616, 0xffffffff];
  let outcomes = 0;
  for (const opcode of opcodes) {
    for (let n = 0; n <= 72; n++) {
      for (const fill of [0x00, 0xff, 0x41]) {
        const buf = request({ opcode }, Buffer.alloc(n, fill));
        try {
          const r = parse(buf);
          t.type(r.kind, 'string');
        } catch (e) {
          if (!(e instanceof FuseProtocolError)) t.fail(`opcode ${opcode}, ${n} bytes of ${fill}: ${String(e)}`);
        }
        outcomes++;
      }
    }
  }
  t.equal(outcomes, opcodes.length * 73 * 3);
});

t.test('unknown opcodes parse as UNKNOWN', async (t) => {
  for (const opcode of [0, 7, 19, 52, 100, 4095, P.CUSE_INIT, P.CUSE_INIT_BSWAP_RESERVED, P.FUSE_INIT_BSWAP_RESERVED, 0xffffffff]) {
    t.strictSame(parse(request({ opcode }, Buffer.from('whatever'))), { kind: 'UNKNOWN', opcode }, `opcode ${opcode}`);
    t.ok(opcodeHasReply(opcode), `opcode ${opcode} gets an (ENOSYS) reply`);
  }
});

t.test('BATCH_FORGET counts', async (t) => {
  const bf = (count: number, items: number): Buffer => request({ opcode: OP.BATCH_FORGET }, pack(u32(count), u32(0)),
    ...Array.from({ length: items }, (_, i) => pack(u64(i + 1), u64(1))));
  t.strictSame(parse(bf(0, 0)), { kind: 'BATCH_FORGET', items: [] });
  t.equal((parse(bf(3, 3)) as { items: unknown[] }).items.length, 3);
  t.equal((parse(bf(2, 3)) as { items: unknown[] }).items.length, 2, 'fewer items than room: trailing ignored');
  expectProtocolError(t, () => parse(bf(4, 3)), EINVAL, 'count one past the body');
  expectProtocolError(t, () => parse(bf(0xffffffff, 1)), EINVAL, 'count 2^32-1');
  // A partial trailing item does not count as room.
  const partial = request({ opcode: OP.BATCH_FORGET }, pack(u32(2), u32(0)), pack(u64(1), u64(1)), Buffer.alloc(15));
  expectProtocolError(t, () => parse(partial), EINVAL, 'second item one byte short');
  // Unrepresentable nodeids become NaN; huge nlookup is clamped (forget everything).
  const huge = request({ opcode: OP.BATCH_FORGET }, pack(u32(1), u32(0)), pack(u64(1n << 60n), u64(0xffffffffffffffffn)));
  const r = parse(huge) as { items: Array<{ nodeid: number; nlookup: number }> };
  t.ok(Number.isNaN(r.items[0]!.nodeid));
  t.equal(r.items[0]!.nlookup, Number.MAX_SAFE_INTEGER);
  t.strictSame(parse(request({ opcode: OP.FORGET }, pack(u64(1n << 62n)))), { kind: 'FORGET', nlookup: Number.MAX_SAFE_INTEGER });
});

t.test('READDIR/READDIRPLUS offsets are exact 64-bit cookies, every u64 accepted', async (t) => {
  // ext4 cookies are 63-bit hashes: a rounded one cannot be lseek'd to.
  const cookies = [0n, (1n << 53n) + 1n, 0x5f3759df_12345677n, 0x7fffffffffffffffn, 1n << 63n, 0xffffffffffffffffn];
  for (const opcode of [OP.READDIR, OP.READDIRPLUS]) {
    for (const off of cookies) {
      const r = parse(request({ opcode }, pack(u64(8), u64(off), u32(4096), u32(0), u64(0), u32(0), u32(0))));
      t.strictSame(r, { kind: opcode === OP.READDIR ? 'READDIR' : 'READDIRPLUS', fh: 8, offset: off, size: 4096 }, `opcode ${opcode} cookie 0x${off.toString(16)}`);
    }
  }
});

t.test('u64 values beyond 2^53-1', async (t) => {
  const read = (fh: bigint, off: bigint): Buffer => request({ opcode: OP.READ }, pack(u64(fh), u64(off), u32(1), u32(0), u64(0), u32(0), u32(0)));
  t.equal((parse(read(1n, (1n << 53n) - 1n)) as { offset: number }).offset, Number.MAX_SAFE_INTEGER, '2^53-1 is fine');
  expectProtocolError(t, () => parse(read(1n, 1n << 53n)), EINVAL, 'offset 2^53');
  expectProtocolError(t, () => parse(read(1n, 0xffffffffffffffffn)), EINVAL, 'offset 2^64-1');
  expectProtocolError(t, () => parse(read(1n << 53n, 0n)), EINVAL, 'fh 2^53');
  const write = (off: bigint): Buffer => Buffer.concat([inHeader({ opcode: OP.WRITE, len: 80 }), pack(u64(1), u64(off), u32(0), u32(0), u64(0), u32(0), u32(0))]);
  expectProtocolError(t, () => parse(write(1n << 63n)), EINVAL, 'write offset 2^63');
  const fall = pack(u64(1), u64(0), u64(1n << 60n), u32(0), u32(0));
  expectProtocolError(t, () => parse(request({ opcode: OP.FALLOCATE }, fall)), EINVAL, 'fallocate length 2^60');
  expectProtocolError(t, () => parse(request({ opcode: OP.LSEEK }, pack(u64(1), u64(-1n & 0xffffffffffffffffn), u32(0), u32(0)))), EINVAL, 'lseek offset -1');
  // nodeids: NaN, not an error.
  const ren = parse(request({ opcode: OP.RENAME }, pack(u64(1n << 63n)), cstr('a'), cstr('b'))) as { newDir: number };
  t.ok(Number.isNaN(ren.newDir), 'RENAME newdir 2^63 → NaN');
  const link = parse(request({ opcode: OP.LINK }, pack(u64(0xffffffffffffffffn)), cstr('a'))) as { oldNodeid: number };
  t.ok(Number.isNaN(link.oldNodeid), 'LINK oldnodeid 2^64-1 → NaN');
  // copy_file_range: len is clamped ("copy everything"), offsets are strict.
  const cfr = (len: bigint, offOut: bigint): Buffer => request({ opcode: OP.COPY_FILE_RANGE }, pack(u64(1), u64(0), u64(1n << 62n), u64(2), u64(offOut), u64(len), u64(0)));
  const c = parse(cfr(0xffffffffffffffffn, 0n)) as { len: number; nodeidOut: number };
  t.equal(c.len, Number.MAX_SAFE_INTEGER);
  t.ok(Number.isNaN(c.nodeidOut));
  expectProtocolError(t, () => parse(cfr(1n, 1n << 53n)), EINVAL, 'copy off_out 2^53');
  // GETATTR: fh only read (and checked) when FUSE_GETATTR_FH is set.
  t.strictSame(parse(request({ opcode: OP.GETATTR }, pack(u32(0), u32(0), u64(0xffffffffffffffffn)))), { kind: 'GETATTR', getattrFlags: 0, fh: null });
  expectProtocolError(t, () => parse(request({ opcode: OP.GETATTR }, pack(u32(1), u32(0), u64(0xffffffffffffffffn)))), EINVAL, 'getattr fh 2^64-1 with GETATTR_FH');
});

t.test('SETATTR reads only the fields `valid` names', async (t) => {
  const setattr = (valid: number): Buffer => request({ opcode: OP.SETATTR }, pack(
    u32(valid), u32(0xffffffff), u64(0xffffffffffffffffn), u64(0xffffffffffffffffn), u64(9), u64(1n << 63n), u64(1n << 62n),
    u64(1n << 61n), u32(5), u32(6), u32(7), u32(0o644), u32(0xffffffff), u32(10), u32(11), u32(0xffffffff)));
  t.strictSame(parse(setattr(P.FATTR_MODE | P.FATTR_UID | P.FATTR_GID)), {
    kind: 'SETATTR', valid: 7, fh: 0, size: 0, lockOwner: 0n, atime: 0, atimeNsec: 0, mtime: 0, mtimeNsec: 0,
    ctime: 0, ctimeNsec: 0, mode: 0o644, uid: 10, gid: 11,
  });
  t.equal((parse(setattr(P.FATTR_LOCKOWNER)) as { lockOwner: bigint }).lockOwner, 9n);
  expectProtocolError(t, () => parse(setattr(P.FATTR_SIZE)), EINVAL, 'size 2^64-1');
  expectProtocolError(t, () => parse(setattr(P.FATTR_FH)), EINVAL, 'fh 2^64-1');
  expectProtocolError(t, () => parse(setattr(P.FATTR_ATIME)), EINVAL, 'atime -2^63');
  expectProtocolError(t, () => parse(setattr(P.FATTR_MTIME)), EINVAL, 'mtime 2^62');
  expectProtocolError(t, () => parse(setattr(P.FATTR_CTIME)), EINVAL, 'ctime 2^61');
  // A negative (pre-1970) time is fine.
  const neg = request({ opcode: OP.SETATTR }, pack(u32(P.FATTR_MTIME), u32(0), u64(0), u64(0), u64(0), u64(0),
    ['i64', -(2 ** 40)], u64(0), u32(0), u32(999999999), u32(0), u32(0), u32(0), u32(0), u32(0), u32(0)));
  const r = parse(neg) as { mtime: number; mtimeNsec: number };
  t.equal(r.mtime, -(2 ** 40));
  t.equal(r.mtimeNsec, 999999999);
});

t.test('locks: OFFSET_MAX, ranges, flock', async (t) => {
  const lk = (start: bigint, end: bigint): Buffer => request({ opcode: OP.SETLK }, pack(u64(1), u64(2), u64(start), u64(end), u32(1), u32(3), u32(0), u32(0)));
  t.equal((parse(lk(5n, 0x7fffffffffffffffn)) as { lock: { end: number } }).lock.end, LOCK_END_OF_FILE, 'OFFSET_MAX');
  t.equal((parse(lk(5n, 1n << 60n)) as { lock: { end: number } }).lock.end, LOCK_END_OF_FILE, 'beyond 2^53: to EOF');
  t.equal((parse(lk(5n, 5n)) as { lock: { end: number } }).lock.end, 5, 'one-byte lock');
  expectProtocolError(t, () => parse(lk(5n, 1n << 63n)), EINVAL, 'end beyond OFFSET_MAX');
  expectProtocolError(t, () => parse(lk(5n, 4n)), EINVAL, 'end before start');
  expectProtocolError(t, () => parse(lk(1n << 53n, 0x7fffffffffffffffn)), EINVAL, 'start 2^53');
});

t.test('INIT variants', async (t) => {
  const init = (...body: Buffer[]): Buffer => request({ opcode: OP.INIT }, ...body);
  // FUSE_INIT_EXT clear: flags2 ignored even if the full struct is there.
  t.strictSame(parse(init(pack(u32(7), u32(38), u32(0), u32(0x1), u32(0xffffffff)), Buffer.alloc(44))),
    { kind: 'INIT', major: 7, minor: 38, maxReadahead: 0, flags: 1n });
  // All 64 flag bits.
  t.strictSame(parse(init(pack(u32(7), u32(38), u32(0), u32(0xffffffff), u32(0xffffffff)), Buffer.alloc(44))),
    { kind: 'INIT', major: 7, minor: 38, maxReadahead: 0, flags: 0xffffffffffffffffn });
  expectProtocolError(t, () => parse(init(pack(u32(7), u32(38), u32(0), u32(0x4000_0000)))), EINVAL, 'INIT_EXT with a 16-byte struct');
  expectProtocolError(t, () => parse(init(pack(u32(7), u32(38)))), EINVAL, 'major 7 with 8 bytes');
  // Another major: only major/minor are read, so the server can answer with its own major.
  t.strictSame(parse(init(pack(u32(8), u32(0)))), { kind: 'INIT', major: 8, minor: 0, maxReadahead: 0, flags: 0n });
  // An old minor is parsed; refusing it (EPROTO) is the server's decision.
  t.strictSame(parse(init(pack(u32(7), u32(8), u32(4096), u32(0)))), { kind: 'INIT', major: 7, minor: 8, maxReadahead: 4096, flags: 0n });
});

t.test('SETXATTR: compat and extended struct, value length', async (t) => {
  const compat = (size: number, value: string): Buffer => request({ opcode: OP.SETXATTR }, pack(u32(size), u32(0)), cstr('user.k'), Buffer.from(value));
  t.strictSame(parse(compat(0, '')), { kind: 'SETXATTR', name: Buffer.from('user.k'), value: Buffer.alloc(0), flags: 0, setxattrFlags: 0 }, 'empty value');
  expectProtocolError(t, () => parse(compat(3, 'ab')), EINVAL, 'size larger than the value');
  expectProtocolError(t, () => parse(compat(1, 'ab')), EINVAL, 'size smaller than the value');
  expectProtocolError(t, () => parse(request({ opcode: OP.SETXATTR }, pack(u32(0), u32(0)), Buffer.from([0]))), EINVAL, 'empty name');
  expectProtocolError(t, () => parse(request({ opcode: OP.SETXATTR }, pack(u32(0), u32(0)), Buffer.from('user.k'))), EINVAL, 'name without NUL');
  // The same bytes mean different things depending on FUSE_SETXATTR_EXT.
  const ext = request({ opcode: OP.SETXATTR }, pack(u32(1), u32(0), u32(1), u32(0)), cstr('user.k'), Buffer.from('v'));
  t.strictSame(parse(ext, { setxattrExt: true }), { kind: 'SETXATTR', name: Buffer.from('user.k'), value: Buffer.from('v'), flags: 0, setxattrFlags: 1 });
  t.throws(() => parse(ext, { setxattrExt: false }), FuseProtocolError, 'an extended struct read as compat is malformed here');
});

t.test('extensions (total_extlen) are skipped, and bounded', async (t) => {
  const secctx = Buffer.concat([pack(u32(32), u32(1)), pack(u32(24), u32(0)), Buffer.from('security.selinux\0'), Buffer.alloc(7)]);
  t.equal(secctx.length % 8, 0);
  const create = Buffer.concat([inHeader({ opcode: OP.CREATE, totalExtlen: secctx.length / 8 }, 16 + 4 + secctx.length),
    pack(u32(0o101), u32(0o644), u32(0o22), u32(0)), cstr('f.c'), secctx]);
  t.strictSame(parse(create), { kind: 'CREATE', name: Buffer.from('f.c'), flags: 0o101, mode: 0o644, umask: 0o22, openFlags: 0 });
  // The same request claiming more extension than there is request.
  const tooMuch = Buffer.from(create);
  tooMuch.writeUInt16LE(0xffff, 36);
  expectProtocolError(t, () => parse(tooMuch), EINVAL, 'total_extlen 0xffff');
  // Claiming one word too many eats into the name.
  const oneMore = Buffer.from(create);
  oneMore.writeUInt16LE(secctx.length / 8 + 1, 36);
  expectProtocolError(t, () => parse(oneMore), EINVAL, 'extension overlapping the name');
  // Claiming too little leaves extension bytes after the name: trailing bytes.
  const oneLess = Buffer.from(create);
  oneLess.writeUInt16LE(secctx.length / 8 - 1, 36);
  expectProtocolError(t, () => parse(oneLess), EINVAL, 'extension bytes read as trailing bytes');
  // A fixed-size request with an extension: still parses.
  t.strictSame(parse(Buffer.concat([inHeader({ opcode: OP.ACCESS, totalExtlen: 1 }, 16), pack(u32(2), u32(0)), Buffer.alloc(8, 0xff)])),
    { kind: 'ACCESS', mask: 2 });
});

t.test('WRITE: payload outside the body, size checked against len', async (t) => {
  const args = pack(u64(1), u64(0), u32(10), u32(0), u64(0), u32(0), u32(0));
  const h = (len: number, totalExtlen = 0): InHeader => parseInHeader(inHeader({ opcode: OP.WRITE, len, totalExtlen }));
  t.equal(parseRequest(h(90), args).kind, 'WRITE', 'body holds only fuse_write_in');
  t.equal(parseRequest(h(90), Buffer.concat([args, Buffer.alloc(10)])).kind, 'WRITE', 'body holds the payload too');
  t.equal(parseRequest(h(98, 1), args).kind, 'WRITE', 'extension after the payload');
  expectProtocolError(t, () => parseRequest(h(89), args), EINVAL, 'len one short of the payload');
  expectProtocolError(t, () => parseRequest(h(91), args), EINVAL, 'len one past the payload');
  expectProtocolError(t, () => parseRequest(h(79), args), EINVAL, 'len shorter than fuse_write_in');
  expectProtocolError(t, () => parseRequest(h(90), args.subarray(0, 39)), EIO, 'body shorter than fuse_write_in');
  const zero = pack(u64(1), u64(0), u32(0), u32(0), u64(0), u32(0), u32(0));
  t.equal((parseRequest(h(80), zero) as { size: number }).size, 0, 'zero-length write');
  t.equal(bodyBytesNeeded(h(90)), 40);
  t.equal(bodyBytesNeeded(h(0xffffffff)), 40, 'a huge WRITE needs only its args');
  t.equal(bodyBytesNeeded(parseInHeader(inHeader({ opcode: OP.LOOKUP, len: 45 }))), 5);
  t.equal(bodyBytesNeeded(parseInHeader(inHeader({ opcode: OP.LOOKUP, len: 3 }))), 0);
  t.equal(bodyBytesNeeded(parseInHeader(inHeader({ opcode: OP.NOTIFY_REPLY, len: 1000 }))), 40);
});

t.test('IOCTL and REMOVEMAPPING counts', async (t) => {
  const ioctl = (inSize: number, data: number): Buffer => request({ opcode: OP.IOCTL }, pack(u64(1), u32(0), u32(1), u64(0), u32(inSize), u32(0)), Buffer.alloc(data));
  t.equal((parse(ioctl(4, 4)) as { inSize: number }).inSize, 4);
  expectProtocolError(t, () => parse(ioctl(5, 4)), EINVAL, 'in_size past the body');
  expectProtocolError(t, () => parse(ioctl(0xffffffff, 4)), EINVAL, 'in_size 2^32-1');
  const rm = (count: number, items: number): Buffer => request({ opcode: OP.REMOVEMAPPING }, pack(u32(count)), Buffer.alloc(items * 16));
  t.equal((parse(rm(3, 3)) as { items: unknown[] }).items.length, 3);
  expectProtocolError(t, () => parse(rm(4, 3)), EINVAL, 'count past the body');
});

t.test('opcodeHasReply', async (t) => {
  for (const op of [OP.FORGET, OP.BATCH_FORGET, OP.NOTIFY_REPLY, OP.INTERRUPT]) t.notOk(opcodeHasReply(op), opcodeName(op));
  for (const op of Object.values(OP)) {
    if (op !== OP.FORGET && op !== OP.BATCH_FORGET && op !== OP.NOTIFY_REPLY && op !== OP.INTERRUPT) {
      t.ok(opcodeHasReply(op), opcodeName(op));
    }
  }
});
