// Test-side FUSE request builder: writes requests byte by byte from the struct layouts in
// /usr/include/linux/fuse.h, independently of worker/fuse. The other fuse tests import it; run
// as a test file itself (tap runs every file in the directory), it checks its own building
// blocks, so that a builder bug cannot hide behind the parser agreeing with it.
import t from 'tap';
import { readFileSync } from 'node:fs';

export type Field =
  | ['u16', number]
  | ['u32', number]
  | ['i32', number]
  | ['u64', bigint | number]
  | ['i64', bigint | number];

/** Packs fields little-endian, in order, without implicit padding (callers write padding). */
export function pack(...fields: Field[]): Buffer {
  const size = fields.reduce((n, [t]) => n + (t === 'u16' ? 2 : t === 'u32' || t === 'i32' ? 4 : 8), 0);
  const out = Buffer.alloc(size);
  let off = 0;
  for (const [t, v] of fields) {
    switch (t) {
      case 'u16': out.writeUInt16LE(v, off); off += 2; break;
      case 'u32': out.writeUInt32LE(v, off); off += 4; break;
      case 'i32': out.writeInt32LE(v, off); off += 4; break;
      case 'u64': out.writeBigUInt64LE(BigInt(v), off); off += 8; break;
      case 'i64': out.writeBigInt64LE(BigInt(v), off); off += 8; break;
    }
  }
  return out;
}

export const u32 = (v: number): Field => ['u32', v];
export const u64 = (v: bigint | number): Field => ['u64', v];
export const i64 = (v: bigint | number): Field => ['i64', v];

/** A C string: the bytes plus the terminating NUL. */
export function cstr(s: string | Buffer): Buffer {
  return Buffer.concat([Buffer.isBuffer(s) ? s : Buffer.from(s, 'latin1'), Buffer.alloc(1)]);
}

export interface HeaderFields {
  len?: number;
  opcode: number;
  unique?: bigint;
  nodeid?: bigint;
  uid?: number;
  gid?: number;
  pid?: number;
  totalExtlen?: number;
  padding?: number;
}

/** struct fuse_in_header (40 bytes). `len` defaults to 40 + bodyLength. */
export function inHeader(h: HeaderFields, bodyLength = 0): Buffer {
  return pack(
    u32(h.len ?? 40 + bodyLength), u32(h.opcode), u64(h.unique ?? 0x1122334455667788n),
    u64(h.nodeid ?? 7n), u32(h.uid ?? 1000), u32(h.gid ?? 100), u32(h.pid ?? 4242),
    ['u16', h.totalExtlen ?? 0], ['u16', h.padding ?? 0],
  );
}

/** A whole request: header + body, with len = 40 + body length unless overridden. */
export function request(h: HeaderFields, ...body: Buffer[]): Buffer {
  const b = Buffer.concat(body);
  return Buffer.concat([inHeader(h, b.length), b]);
}

/** Opcode numbers as written in fuse.h (enum fuse_opcode). */
export const OP = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9,
  UNLINK: 10, RMDIR: 11, RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17,
  RELEASE: 18, FSYNC: 20, SETXATTR: 21, GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24,
  FLUSH: 25, INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, FSYNCDIR: 30, GETLK: 31,
  SETLK: 32, SETLKW: 33, ACCESS: 34, CREATE: 35, INTERRUPT: 36, BMAP: 37, DESTROY: 38,
  IOCTL: 39, POLL: 40, NOTIFY_REPLY: 41, BATCH_FORGET: 42, FALLOCATE: 43, READDIRPLUS: 44,
  RENAME2: 45, LSEEK: 46, COPY_FILE_RANGE: 47, SETUPMAPPING: 48, REMOVEMAPPING: 49,
  SYNCFS: 50, TMPFILE: 51,
} as const;

export interface Sample {
  name: string;
  opcode: number;
  /** The argument bytes (what follows the in-header, payload excluded for WRITE). */
  args: Buffer;
  /** For WRITE / NOTIFY_REPLY: payload bytes counted in len but not part of `args`. */
  payload?: number;
  /** Shorter `args` lengths that are still valid requests (TMPFILE ignores its name). */
  validShorter?: number[];
  setxattrExt?: boolean;
}

/** One valid request for every opcode the virtio-fs driver can send, with recognisable values. */
export function validSamples(): Sample[] {
  const lkIn = (type: number) => pack(u64(3), u64(0xabcdef0123456789n), u64(100), u64(199), u32(type), u32(77), u32(0), u32(0));
  return [
    { name: 'INIT', opcode: OP.INIT, args: Buffer.concat([pack(u32(7), u32(38), u32(131072), u32(0x4000_0001), u32(0b1011)), Buffer.alloc(44)]) },
    { name: 'INIT (7.31, 16 bytes)', opcode: OP.INIT, args: pack(u32(7), u32(31), u32(65536), u32(0x3)) },
    { name: 'DESTROY', opcode: OP.DESTROY, args: Buffer.alloc(0) },
    { name: 'LOOKUP', opcode: OP.LOOKUP, args: cstr('hello.txt') },
    { name: 'FORGET', opcode: OP.FORGET, args: pack(u64(5)) },
    { name: 'BATCH_FORGET', opcode: OP.BATCH_FORGET, args: pack(u32(2), u32(0), u64(10), u64(1), u64(11), u64(2)) },
    { name: 'GETATTR', opcode: OP.GETATTR, args: pack(u32(1), u32(0), u64(9)) },
    {
      name: 'SETATTR', opcode: OP.SETATTR,
      args: pack(u32(0x7ff), u32(0), u64(4), u64(4096), u64(0x55n), i64(-86400), i64(1700000000), i64(1700000001),
        u32(1), u32(2), u32(3), u32(0o100644), u32(0), u32(1001), u32(1002), u32(0)),
    },
    { name: 'READLINK', opcode: OP.READLINK, args: Buffer.alloc(0) },
    { name: 'SYMLINK', opcode: OP.SYMLINK, args: Buffer.concat([cstr('link'), cstr('../target')]) },
    { name: 'MKNOD', opcode: OP.MKNOD, args: Buffer.concat([pack(u32(0o020644), u32(0x0103), u32(0o022), u32(0)), cstr('null')]) },
    { name: 'MKDIR', opcode: OP.MKDIR, args: Buffer.concat([pack(u32(0o755), u32(0o022)), cstr('dir')]) },
    { name: 'UNLINK', opcode: OP.UNLINK, args: cstr('gone') },
    { name: 'RMDIR', opcode: OP.RMDIR, args: cstr('gonedir') },
    { name: 'RENAME', opcode: OP.RENAME, args: Buffer.concat([pack(u64(12)), cstr('a'), cstr('bb')]) },
    { name: 'RENAME2', opcode: OP.RENAME2, args: Buffer.concat([pack(u64(13), u32(2), u32(0)), cstr('old'), cstr('new')]) },
    { name: 'LINK', opcode: OP.LINK, args: Buffer.concat([pack(u64(21)), cstr('hard')]) },
    { name: 'OPEN', opcode: OP.OPEN, args: pack(u32(0o102), u32(1)) },
    { name: 'OPENDIR', opcode: OP.OPENDIR, args: pack(u32(0o200000), u32(0)) },
    { name: 'CREATE', opcode: OP.CREATE, args: Buffer.concat([pack(u32(0o101), u32(0o100600), u32(0o022), u32(0)), cstr('new.txt')]) },
    { name: 'TMPFILE', opcode: OP.TMPFILE, args: Buffer.concat([pack(u32(0o20000002), u32(0o100600), u32(0o077), u32(0)), cstr('/')]), validShorter: [16, 17] },
    { name: 'READ', opcode: OP.READ, args: pack(u64(6), u64(8192), u32(4096), u32(2), u64(0x99n), u32(0o2), u32(0)) },
    { name: 'WRITE', opcode: OP.WRITE, args: pack(u64(6), u64(12288), u32(100), u32(3), u64(0x98n), u32(0o2001), u32(0)), payload: 100 },
    { name: 'FLUSH', opcode: OP.FLUSH, args: pack(u64(6), u32(0), u32(0), u64(0x97n)) },
    { name: 'RELEASE', opcode: OP.RELEASE, args: pack(u64(6), u32(0o2), u32(3), u64(0x96n)) },
    { name: 'RELEASEDIR', opcode: OP.RELEASEDIR, args: pack(u64(8), u32(0o200000), u32(0), u64(0)) },
    { name: 'FSYNC', opcode: OP.FSYNC, args: pack(u64(6), u32(1), u32(0)) },
    { name: 'FSYNCDIR', opcode: OP.FSYNCDIR, args: pack(u64(8), u32(0), u32(0)) },
    { name: 'STATFS', opcode: OP.STATFS, args: Buffer.alloc(0) },
    { name: 'SYNCFS', opcode: OP.SYNCFS, args: pack(u64(0)) },
    { name: 'READDIR', opcode: OP.READDIR, args: pack(u64(8), u64(3), u32(4096), u32(0), u64(0), u32(0), u32(0)) },
    { name: 'READDIRPLUS', opcode: OP.READDIRPLUS, args: pack(u64(8), u64(0), u32(65536), u32(0), u64(0), u32(0), u32(0)) },
    { name: 'GETXATTR', opcode: OP.GETXATTR, args: Buffer.concat([pack(u32(256), u32(0)), cstr('user.a')]) },
    { name: 'LISTXATTR', opcode: OP.LISTXATTR, args: pack(u32(0), u32(0)) },
    { name: 'SETXATTR', opcode: OP.SETXATTR, args: Buffer.concat([pack(u32(3), u32(1)), cstr('user.b'), Buffer.from('v\0z')]) },
    { name: 'SETXATTR (ext)', opcode: OP.SETXATTR, setxattrExt: true, args: Buffer.concat([pack(u32(2), u32(2), u32(1), u32(0)), cstr('system.posix_acl_access'), Buffer.from('xy')]) },
    { name: 'REMOVEXATTR', opcode: OP.REMOVEXATTR, args: cstr('user.c') },
    { name: 'ACCESS', opcode: OP.ACCESS, args: pack(u32(4), u32(0)) },
    { name: 'GETLK', opcode: OP.GETLK, args: lkIn(1) },
    { name: 'SETLK', opcode: OP.SETLK, args: lkIn(2) },
    { name: 'SETLKW', opcode: OP.SETLKW, args: pack(u64(3), u64(1), u64(0), u64(0x7fffffffffffffffn), u32(1), u32(78), u32(1), u32(0)) },
    { name: 'FALLOCATE', opcode: OP.FALLOCATE, args: pack(u64(6), u64(1024), u64(1 << 20), u32(1), u32(0)) },
    { name: 'LSEEK', opcode: OP.LSEEK, args: pack(u64(6), u64(500), u32(3), u32(0)) },
    { name: 'COPY_FILE_RANGE', opcode: OP.COPY_FILE_RANGE, args: pack(u64(6), u64(10), u64(22), u64(7), u64(20), u64(4096), u64(0)) },
    { name: 'INTERRUPT', opcode: OP.INTERRUPT, args: pack(u64(0xfeedn)) },
    { name: 'IOCTL', opcode: OP.IOCTL, args: Buffer.concat([pack(u64(6), u32(4), u32(0x5401), u64(0xdeadn), u32(4), u32(8)), Buffer.from('abcd')]) },
    { name: 'POLL', opcode: OP.POLL, args: pack(u64(6), u64(0x77n), u32(1), u32(0x41)) },
    { name: 'BMAP', opcode: OP.BMAP, args: pack(u64(33), u32(4096), u32(0)) },
    { name: 'SETUPMAPPING', opcode: OP.SETUPMAPPING, args: pack(u64(6), u64(0), u64(2 << 20), u64(3), u64(4 << 20)) },
    { name: 'REMOVEMAPPING', opcode: OP.REMOVEMAPPING, args: Buffer.concat([pack(u32(2)), pack(u64(0), u64(4096), u64(8192), u64(4096))]) },
    { name: 'NOTIFY_REPLY', opcode: OP.NOTIFY_REPLY, args: pack(u64(0), u64(4096), u32(10), u32(0), u64(0), u64(0)), payload: 10 },
  ];
}

/** The request bytes for a sample: header (len counts any payload) + args (payload omitted, as
 * the server gathers it). */
export function sampleRequest(s: Sample, header: Partial<HeaderFields> = {}): Buffer {
  const len = 40 + s.args.length + (s.payload ?? 0);
  return Buffer.concat([inHeader({ len, opcode: s.opcode, ...header }), s.args]);
}

// ---------------------------------------------------------------------------------------------
// Struct layouts computed from the text of fuse.h (natural alignment, as the C compiler lays
// them out on Linux), so that tests can check offsets against the header rather than against
// numbers copied from it.

export interface StructLayout {
  size: number;
  align: number;
  /** Field offsets and sizes; nested structs' fields are flattened as "attr.mode". */
  fields: Map<string, { offset: number; size: number }>;
}

let fuseHeaderText: string | null = null;
const PRIMITIVES: Record<string, number> = {
  uint8_t: 1, int8_t: 1, char: 1, uint16_t: 2, int16_t: 2, uint32_t: 4, int32_t: 4, uint64_t: 8, int64_t: 8,
};

export function fuseStruct(name: string): StructLayout {
  if (fuseHeaderText === null) {
    fuseHeaderText = readFileSync('/usr/include/linux/fuse.h', 'utf8').replace(/\/\*[\s\S]*?\*\//g, '');
  }
  const m = new RegExp(`struct\\s+${name}\\s*\\{([^}]*)\\};`).exec(fuseHeaderText);
  if (!m) throw new Error(`struct ${name} not found in fuse.h`);
  const fields = new Map<string, { offset: number; size: number }>();
  let offset = 0;
  let align = 1;
  for (const decl of m[1]!.split(';').map((d) => d.trim()).filter((d) => d.length > 0)) {
    const dm = /^(struct\s+\w+|\w+)\s+(\w+)(?:\[(\d*)\])?$/.exec(decl.replace(/\s+/g, ' '));
    if (!dm) throw new Error(`cannot parse "${decl}" in struct ${name}`);
    const [, type, field, count] = dm;
    let size: number;
    let fieldAlign: number;
    let nested: StructLayout | null = null;
    if (type!.startsWith('struct ')) {
      nested = fuseStruct(type!.slice(7).trim());
      size = nested.size;
      fieldAlign = nested.align;
    } else {
      const p = PRIMITIVES[type!];
      if (p === undefined) throw new Error(`unknown type ${type} in struct ${name}`);
      size = fieldAlign = p;
    }
    const n = count === undefined ? 1 : count === '' ? 0 : Number(count);
    offset = Math.ceil(offset / fieldAlign) * fieldAlign;
    align = Math.max(align, fieldAlign);
    fields.set(field!, { offset, size: size * n });
    if (nested) for (const [f, v] of nested.fields) fields.set(`${field}.${f}`, { offset: offset + v.offset, size: v.size });
    offset += size * n;
  }
  return { size: Math.ceil(offset / align) * align, align, fields };
}

/** Offset of a (possibly dotted) field of a fuse.h struct. */
export function offsetOf(struct: string, field: string): number {
  const f = fuseStruct(struct).fields.get(field);
  if (!f) throw new Error(`${struct}.${field} not found`);
  return f.offset;
}

// Self-checks, only when tap runs this file directly (not when another test imports it).
if (require.main === module) {
  t.test('pack writes little-endian fields back to back', async (t) => {
    t.strictSame(pack(['u16', 0x0102], u32(0x03040506), u64(0x0708090a0b0c0d0en), i64(-2)),
      Buffer.from('0201' + '06050403' + '0e0d0c0b0a090807' + 'feffffffffffffff', 'hex'));
  });
  t.test('inHeader follows struct fuse_in_header', async (t) => {
    const h = inHeader({ opcode: 3, unique: 5n, nodeid: 6n, uid: 7, gid: 8, pid: 9, totalExtlen: 10, padding: 11 }, 2);
    t.equal(h.toString('hex'), '2a000000' + '03000000' + '0500000000000000' + '0600000000000000' +
      '07000000' + '08000000' + '09000000' + '0a00' + '0b00');
  });
  t.test('cstr and request', async (t) => {
    t.strictSame(cstr('ab'), Buffer.from([0x61, 0x62, 0]));
    const r = request({ opcode: 1 }, cstr('x'));
    t.equal(r.length, 42);
    t.equal(r.readUInt32LE(0), 42);
  });
  t.test('fuseStruct computes fuse.h layouts', async (t) => {
    t.equal(fuseStruct('fuse_in_header').size, 40);
    t.equal(offsetOf('fuse_in_header', 'total_extlen'), 36);
    t.equal(fuseStruct('fuse_attr').size, 88);
    t.equal(offsetOf('fuse_entry_out', 'attr.rdev'), 40 + 76);
    t.equal(fuseStruct('fuse_dirent').size, 24, 'flexible name[] adds nothing');
    t.equal(offsetOf('fuse_direntplus', 'dirent.name'), 152);
    t.equal(fuseStruct('fuse_removemapping_in').size, 4);
    t.equal(fuseStruct('fuse_init_out').size, 64);
    t.throws(() => fuseStruct('no_such_struct'));
  });
  t.test('sample argument structs have their fuse.h sizes', async (t) => {
    const sizes: Record<string, number> = {
      FORGET: 8, GETATTR: 16, SETATTR: 88, OPEN: 8, OPENDIR: 8, READ: 40, WRITE: 40, FLUSH: 24, RELEASE: 24,
      RELEASEDIR: 24, FSYNC: 16, FSYNCDIR: 16, SYNCFS: 8, READDIR: 40, READDIRPLUS: 40, LISTXATTR: 8, ACCESS: 8,
      GETLK: 48, SETLK: 48, SETLKW: 48, FALLOCATE: 32, LSEEK: 24, COPY_FILE_RANGE: 56, INTERRUPT: 8, POLL: 24,
      BMAP: 16, SETUPMAPPING: 40, NOTIFY_REPLY: 40, INIT: 64, 'INIT (7.31, 16 bytes)': 16,
    };
    const samples = validSamples();
    for (const [name, size] of Object.entries(sizes)) {
      t.equal(samples.find((s) => s.name === name)?.args.length, size, name);
    }
  });
}
