// The FUSE wire protocol (7.38, little-endian): request parsing, reply encoding, constants.
//
// Everything arriving here comes from the guest kernel and is HOSTILE. The rules this module
// keeps, so that the server can treat its output as well-formed:
//
// - Every length and count is checked before it is used. A malformed request throws
//   FuseProtocolError(errno) and nothing else: no RangeError from Buffer, no partial result.
//   errno is EIO when the bytes delivered are fewer than the in-header's `len` claims (the
//   transport and the header disagree, as libfuse answers), and EINVAL for everything else
//   (impossible `len`, truncated argument structs, bad names, counts that overrun the body,
//   u64 values no real request has).
// - `body` may be a view of guest memory that the guest can rewrite while we parse. Every fixed
//   field is read exactly once, and variable-length parts (names, xattr values) are COPIED before
//   they are validated, so the Buffers we return are exactly what we checked and stay stable.
// - u64 offsets, sizes and handles become numbers; a value above 2^53-1 is rejected with EINVAL
//   (file handles are small counters, and no file offset reaches 2^53). READDIR/READDIRPLUS
//   offsets are the exception: they are opaque directory cookies (ext4 hands out 63-bit hashes),
//   so they stay exact bigints, every u64 accepted. nodeids become numbers
//   too, but an unrepresentable nodeid becomes NaN rather than an error: our nodeids are small
//   counters, so NaN simply means "no such node" and the server answers ENOENT (or, for FORGET,
//   ignores it) without us failing a whole BATCH_FORGET. lock owners, `unique` and the fields of
//   opcodes the server does not implement stay bigint, so parsing never rejects what the server
//   would ignore anyway.
// - Names must end in a NUL inside the request, must not be empty, and the last NUL-terminated
//   string must end exactly where the arguments end: trailing bytes after the last NUL are
//   EINVAL. The kernel always sends exactly `name\0` (or `old\0new\0`); anything else is a
//   malformed or hostile request, and being strict means a request can never be read two ways.
//   Fixed-size-only requests, by contrast, may carry trailing bytes (ignored), because the kernel
//   has grown argument structs before (fuse_init_in, fuse_mknod_in, fuse_setxattr_in) and libfuse
//   and virtiofsd read only the prefix they know.
// - '/' and '..' are NOT rejected here: path policy belongs to the filesystem layer
//   (worker/fs/path_component.ts checks every name it is given).
// - The FUSE extension area (in-header total_extlen, in 8-byte units, e.g. the FUSE_SECURITY_CTX
//   context) is the last total_extlen*8 bytes of the request. It is bounded by the request's
//   length and skipped: arguments are parsed from the bytes before it.
import { constants as osConstants } from 'node:os';
import type { Handle, LockRange, NodeId, SetattrRequest } from '../fs/filesystem';
import * as K from './constants';
import { opcodeName } from './constants';
import { GuestError } from '../../shared/errors';

export * from './constants';
export * from './encode';
export { DirentWriter } from './dirent';

const { EINVAL, EIO } = osConstants.errno;

/** A request that violates the wire format. `errno` is what the server should reply with (when
 * it can still reply, i.e. it has a header and the opcode has a reply). */
export class FuseProtocolError extends GuestError {
  constructor(errno: number, message: string) {
    super(message, errno);
  }
}

function malformed(message: string): FuseProtocolError {
  return new FuseProtocolError(EINVAL, message);
}

// ---------------------------------------------------------------------------------------------
// In-header

/** struct fuse_in_header, decoded. */
export interface InHeader {
  /** Total request length including this 40-byte header (and any WRITE payload / extensions). */
  len: number;
  opcode: number;
  unique: bigint;
  /** NaN when the wire value exceeds 2^53-1 (never one of ours: "no such node"). */
  nodeid: NodeId;
  uid: number;
  gid: number;
  pid: number;
  /** Length of the extension area at the end of the request, in 8-byte units. */
  totalExtlen: number;
}

const TWO_POW_32 = 0x1_0000_0000;
/** Highest value of a u64's high word for which the u64 is still <= Number.MAX_SAFE_INTEGER. */
const MAX_SAFE_HIGH_WORD = 0x1f_ffff;

/** A u64 as a number; NaN when it does not fit exactly. */
function u64OrNaN(buf: Buffer, off: number): number {
  const lo = buf.readUInt32LE(off);
  const hi = buf.readUInt32LE(off + 4);
  return hi > MAX_SAFE_HIGH_WORD ? NaN : hi * TWO_POW_32 + lo;
}

/** A u64 offset/size/handle as a number; EINVAL when above 2^53-1. */
function u64Strict(buf: Buffer, off: number, what: string): number {
  const value = u64OrNaN(buf, off);
  if (Number.isNaN(value)) throw malformed(`${what} exceeds 2^53-1`);
  return value;
}

/** A u64 count where "more than 2^53-1" means the same as 2^53-1 (FORGET's nlookup: the kernel
 * cannot hold that many lookups, so clamping forgets everything, which is what it asked for). */
function u64Clamped(buf: Buffer, off: number): number {
  const value = u64OrNaN(buf, off);
  return Number.isNaN(value) ? Number.MAX_SAFE_INTEGER : value;
}

/** An i64 (e.g. setattr times: seconds before 1970 are negative); EINVAL outside +-(2^53-1). */
function i64Strict(buf: Buffer, off: number, what: string): number {
  const value = buf.readInt32LE(off + 4) * TWO_POW_32 + buf.readUInt32LE(off);
  if (!Number.isSafeInteger(value)) throw malformed(`${what} exceeds 2^53-1 in magnitude`);
  return value;
}

/** Decodes the 40-byte fuse_in_header at `offset`. Only throws (EIO) when fewer than 40 bytes are
 * available: the header's own `len` is validated by parseRequest, so that the server still gets
 * `unique` and can answer a request with a bad length instead of dropping it. */
export function parseInHeader(buf: Buffer, offset = 0): InHeader {
  if (!Number.isSafeInteger(offset) || offset < 0 || buf.length - offset < K.IN_HEADER_SIZE) {
    throw new FuseProtocolError(EIO, `in-header truncated: ${Math.max(0, buf.length - offset)} bytes`);
  }
  return {
    len: buf.readUInt32LE(offset),
    opcode: buf.readUInt32LE(offset + 4),
    unique: buf.readBigUInt64LE(offset + 8),
    nodeid: u64OrNaN(buf, offset + 16),
    uid: buf.readUInt32LE(offset + 24),
    gid: buf.readUInt32LE(offset + 28),
    pid: buf.readUInt32LE(offset + 32),
    totalExtlen: buf.readUInt16LE(offset + 36),
  };
}

// ---------------------------------------------------------------------------------------------
// Parsed requests. `kind` is the opcode's name without FUSE_ (see OPCODE_NAMES). The request's
// target nodeid, caller ids and `unique` stay in the InHeader.

export interface InitRequest {
  kind: 'INIT';
  major: number;
  minor: number;
  maxReadahead: number;
  /** flags | flags2 << 32 when FUSE_INIT_EXT is set, else just flags. */
  flags: bigint;
}
export interface DestroyRequest { kind: 'DESTROY' }
export interface LookupRequest { kind: 'LOOKUP'; name: Buffer }
/** No reply. The node is the in-header's nodeid. */
export interface ForgetRequest { kind: 'FORGET'; nlookup: number }
export interface ForgetItem {
  /** NaN when unrepresentable (ignore it). */
  nodeid: NodeId;
  nlookup: number;
}
/** No reply. */
export interface BatchForgetRequest { kind: 'BATCH_FORGET'; items: ForgetItem[] }
export interface GetattrRequest {
  kind: 'GETATTR';
  getattrFlags: number;
  /** The handle when FUSE_GETATTR_FH is set, else null (the wire field is then meaningless). */
  fh: Handle | null;
}
/** Extends the filesystem's SetattrRequest so the server can pass it straight to setattr(). */
export interface SetattrFuseRequest extends SetattrRequest {
  kind: 'SETATTR';
  // Inherited: valid, fh, size, atime/atimeNsec, mtime/mtimeNsec, mode, uid, gid. Every field
  // whose FATTR_* bit is clear in `valid` is 0, whatever the wire carried (the kernel leaves
  // them unset; validating them would reject requests for bytes nobody reads).
  /** Valid when FATTR_LOCKOWNER is set. */
  lockOwner: bigint;
  /** Valid when FATTR_CTIME is set. */
  ctime: number;
  ctimeNsec: number;
}
export interface ReadlinkRequest { kind: 'READLINK' }
export interface SymlinkRequest { kind: 'SYMLINK'; name: Buffer; target: Buffer }
export interface MknodRequest {
  kind: 'MKNOD';
  name: Buffer;
  mode: number;
  /** The kernel's new_encode_dev() value, which for every device number Linux can hold is the
   * same number as glibc's makedev(): pass it to mknodat as is. */
  rdev: number;
  umask: number;
}
export interface MkdirRequest { kind: 'MKDIR'; name: Buffer; mode: number; umask: number }
export interface UnlinkRequest { kind: 'UNLINK' | 'RMDIR'; name: Buffer }
export interface RenameRequest {
  kind: 'RENAME' | 'RENAME2';
  /** NaN when unrepresentable. */
  newDir: NodeId;
  /** RENAME_* flags (always 0 for RENAME). */
  flags: number;
  oldName: Buffer;
  newName: Buffer;
}
export interface LinkRequest {
  kind: 'LINK';
  /** The existing inode (NaN when unrepresentable); the new parent is the in-header nodeid. */
  oldNodeid: NodeId;
  newName: Buffer;
}
export interface OpenRequest { kind: 'OPEN' | 'OPENDIR'; flags: number; openFlags: number }
export interface CreateRequest {
  kind: 'CREATE';
  name: Buffer;
  flags: number;
  mode: number;
  umask: number;
  openFlags: number;
}
/** The kernel appends the placeholder name "/" (the unnamed dentry of O_TMPFILE); like libfuse
 * we do not read it. */
export interface TmpfileRequest { kind: 'TMPFILE'; flags: number; mode: number; umask: number; openFlags: number }
export interface ReadRequest {
  kind: 'READ';
  fh: Handle;
  offset: number;
  size: number;
  readFlags: number;
  lockOwner: bigint;
  flags: number;
}
export interface WriteRequest {
  kind: 'WRITE';
  fh: Handle;
  offset: number;
  /** Payload bytes; guaranteed equal to header.len - 80 - extensions. */
  size: number;
  writeFlags: number;
  lockOwner: bigint;
  flags: number;
  /** Where the payload starts, counted from the start of the request (the in-header). The
   * payload is never in `body`'s parsed part: the server moves it straight from guest memory and
   * must check that the descriptor chain really holds `size` bytes there. */
  payloadOffset: number;
}
export interface FlushRequest { kind: 'FLUSH'; fh: Handle; lockOwner: bigint }
export interface ReleaseRequest {
  kind: 'RELEASE' | 'RELEASEDIR';
  fh: Handle;
  flags: number;
  releaseFlags: number;
  lockOwner: bigint;
}
export interface FsyncRequest { kind: 'FSYNC' | 'FSYNCDIR'; fh: Handle; fsyncFlags: number; dataOnly: boolean }
export interface StatfsRequest { kind: 'STATFS' }
export interface SyncfsRequest { kind: 'SYNCFS' }
export interface ReaddirRequest {
  kind: 'READDIR' | 'READDIRPLUS';
  fh: Handle;
  /** The u64 cookie exactly as on the wire (an earlier reply's `off`, or anything the guest likes). */
  offset: bigint;
  size: number;
}
export interface GetxattrRequest { kind: 'GETXATTR'; name: Buffer; size: number }
export interface ListxattrRequest { kind: 'LISTXATTR'; size: number }
export interface SetxattrRequest {
  kind: 'SETXATTR';
  name: Buffer;
  value: Buffer;
  /** XATTR_CREATE / XATTR_REPLACE */
  flags: number;
  /** FUSE_SETXATTR_* (0 unless FUSE_SETXATTR_EXT was negotiated). */
  setxattrFlags: number;
}
export interface RemovexattrRequest { kind: 'REMOVEXATTR'; name: Buffer }
export interface AccessRequest { kind: 'ACCESS'; mask: number }
export interface LockRequest {
  kind: 'GETLK' | 'SETLK' | 'SETLKW';
  fh: Handle;
  owner: bigint;
  /** end is LOCK_END_OF_FILE for "to the end of the file"; end >= start is guaranteed. */
  lock: LockRange;
  lkFlags: number;
  /** FUSE_LK_FLOCK: BSD flock(2) semantics. */
  isFlock: boolean;
}
export interface FallocateRequest { kind: 'FALLOCATE'; fh: Handle; offset: number; length: number; mode: number }
export interface LseekRequest { kind: 'LSEEK'; fh: Handle; offset: number; whence: number }
export interface CopyFileRangeRequest {
  kind: 'COPY_FILE_RANGE';
  fhIn: Handle;
  offIn: number;
  /** NaN when unrepresentable. */
  nodeidOut: NodeId;
  fhOut: Handle;
  offOut: number;
  /** Clamped to 2^53-1: copy_file_range may copy less than asked, and user space does pass
   * huge lengths ("copy everything"). */
  len: number;
  flags: number;
}
export interface InterruptRequest { kind: 'INTERRUPT'; unique: bigint }
// The remaining opcodes are answered ENOSYS by the server; they are parsed (and their sizes
// checked) so that logs and the fuzzer see them, with every u64 left as a bigint.
export interface IoctlRequest {
  kind: 'IOCTL'; fh: bigint; flags: number; cmd: number; arg: bigint; inSize: number; outSize: number;
}
export interface PollRequest { kind: 'POLL'; fh: bigint; kh: bigint; flags: number; events: number }
export interface BmapRequest { kind: 'BMAP'; block: bigint; blocksize: number }
export interface SetupmappingRequest {
  kind: 'SETUPMAPPING'; fh: bigint; foffset: bigint; len: bigint; flags: bigint; moffset: bigint;
}
export interface RemovemappingRequest { kind: 'REMOVEMAPPING'; items: Array<{ moffset: bigint; len: bigint }> }
/** No reply. The answer to a FUSE_NOTIFY_RETRIEVE we never send; its payload is not parsed. */
export interface NotifyReplyRequest { kind: 'NOTIFY_REPLY'; offset: bigint; size: number }
/** An opcode this layer does not know (or CUSE_INIT): the server answers ENOSYS. */
export interface UnknownRequest { kind: 'UNKNOWN'; opcode: number }

export type FuseRequest =
  | InitRequest | DestroyRequest | LookupRequest | ForgetRequest | BatchForgetRequest
  | GetattrRequest | SetattrFuseRequest | ReadlinkRequest | SymlinkRequest | MknodRequest
  | MkdirRequest | UnlinkRequest | RenameRequest | LinkRequest | OpenRequest | CreateRequest
  | TmpfileRequest | ReadRequest | WriteRequest | FlushRequest | ReleaseRequest | FsyncRequest
  | StatfsRequest | SyncfsRequest | ReaddirRequest | GetxattrRequest | ListxattrRequest
  | SetxattrRequest | RemovexattrRequest | AccessRequest | LockRequest | FallocateRequest
  | LseekRequest | CopyFileRangeRequest | InterruptRequest | IoctlRequest | PollRequest
  | BmapRequest | SetupmappingRequest | RemovemappingRequest | NotifyReplyRequest | UnknownRequest;

export type FuseRequestKind = FuseRequest['kind'];

/** Session state the wire format depends on. */
export interface ParseOptions {
  /** FUSE_SETXATTR_EXT was negotiated: fuse_setxattr_in is 16 bytes instead of 8. */
  setxattrExt?: boolean;
}

// ---------------------------------------------------------------------------------------------
// Request parsing

/** Opcodes whose payload follows the argument struct and is not needed in `body`. */
function payloadArgsSize(opcode: number): number {
  if (opcode === K.FUSE_WRITE) return K.WRITE_IN_SIZE;
  if (opcode === K.FUSE_NOTIFY_REPLY) return K.NOTIFY_RETRIEVE_IN_SIZE;
  return -1;
}

/** How many bytes after the in-header parseRequest needs to see: the whole request, except for
 * WRITE and NOTIFY_REPLY whose bulk payload stays in guest memory. The server can use this to
 * copy no more than necessary; it must still bound `header.len` itself before allocating. */
export function bodyBytesNeeded(header: InHeader): number {
  const declared = Math.max(0, header.len - K.IN_HEADER_SIZE);
  const argsOnly = payloadArgsSize(header.opcode);
  return argsOnly >= 0 ? Math.min(declared, argsOnly) : declared;
}

function need(args: Buffer, size: number, what: string): void {
  if (args.length < size) throw malformed(`${what}: ${args.length} bytes, need ${size}`);
}

/** Copies `tail` and checks it is exactly one non-empty `name\0`. */
function oneName(tail: Buffer, what: string): Buffer {
  const copy = Buffer.from(tail);
  const nul = copy.indexOf(0);
  if (nul < 0) throw malformed(`${what}: name without NUL`);
  if (nul === 0) throw malformed(`${what}: empty name`);
  if (nul !== copy.length - 1) throw malformed(`${what}: trailing bytes after name`);
  return copy.subarray(0, nul);
}

/** Copies `tail` and checks it is exactly `first\0second\0`, both non-empty. */
function twoNames(tail: Buffer, what: string): [Buffer, Buffer] {
  const copy = Buffer.from(tail);
  const firstNul = copy.indexOf(0);
  if (firstNul < 0) throw malformed(`${what}: first name without NUL`);
  if (firstNul === 0) throw malformed(`${what}: empty first name`);
  const secondNul = copy.indexOf(0, firstNul + 1);
  if (secondNul < 0) throw malformed(`${what}: second name without NUL`);
  if (secondNul === firstNul + 1) throw malformed(`${what}: empty second name`);
  if (secondNul !== copy.length - 1) throw malformed(`${what}: trailing bytes after second name`);
  return [copy.subarray(0, firstNul), copy.subarray(firstNul + 1, secondNul)];
}

function parseLock(kind: LockRequest['kind'], args: Buffer): LockRequest {
  need(args, K.LK_IN_SIZE, kind);
  const fh = u64Strict(args, 0, 'lk fh');
  const owner = args.readBigUInt64LE(8);
  const start = u64Strict(args, 16, 'lock start');
  const endHi = args.readUInt32LE(28);
  if (endHi > 0x7fff_ffff) throw malformed('lock end beyond OFFSET_MAX');
  const endRaw = u64OrNaN(args, 24);
  const end = Number.isNaN(endRaw) ? K.LOCK_END_OF_FILE : endRaw;
  if (end < start) throw malformed('lock end before start');
  const type = args.readUInt32LE(32);
  const pid = args.readUInt32LE(36);
  const lkFlags = args.readUInt32LE(40);
  return {
    kind, fh, owner, lock: { type, start, end, pid }, lkFlags,
    isFlock: (lkFlags & K.FUSE_LK_FLOCK) !== 0,
  };
}

/**
 * Decodes one request. `body` is the bytes after the 40-byte in-header; it may be longer than
 * `header.len` says (the rest is ignored) but not shorter, except for WRITE / NOTIFY_REPLY whose
 * payload may be left out (see bodyBytesNeeded). Throws FuseProtocolError on malformed input and
 * never anything else.
 */
export function parseRequest(header: InHeader, body: Buffer, options: ParseOptions = {}): FuseRequest {
  if (!(header.len >= K.IN_HEADER_SIZE)) {
    throw malformed(`in-header len ${header.len} < ${K.IN_HEADER_SIZE}`);
  }
  const declared = header.len - K.IN_HEADER_SIZE;
  const extBytes = header.totalExtlen * 8;
  if (!(extBytes <= declared)) {
    throw malformed(`extensions (${extBytes} bytes) exceed the request (${declared} bytes)`);
  }
  const argsLength = declared - extBytes;
  const opcode = header.opcode;

  const payloadArgs = payloadArgsSize(opcode);
  if (payloadArgs >= 0) {
    if (argsLength < payloadArgs) throw malformed(`${opcodeName(opcode)}: len too small`);
    if (body.length < payloadArgs) {
      throw new FuseProtocolError(EIO, `${opcodeName(opcode)}: body ${body.length} bytes, need ${payloadArgs}`);
    }
    const args = body.subarray(0, payloadArgs);
    if (opcode === K.FUSE_WRITE) {
      const size = args.readUInt32LE(16);
      if (argsLength !== K.WRITE_IN_SIZE + size) {
        throw malformed(`WRITE: size ${size} disagrees with len ${header.len}`);
      }
      return {
        kind: 'WRITE',
        fh: u64Strict(args, 0, 'write fh'),
        offset: u64Strict(args, 8, 'write offset'),
        size,
        writeFlags: args.readUInt32LE(20),
        lockOwner: args.readBigUInt64LE(24),
        flags: args.readUInt32LE(32),
        payloadOffset: K.IN_HEADER_SIZE + K.WRITE_IN_SIZE,
      };
    }
    const size = args.readUInt32LE(16);
    if (argsLength !== K.NOTIFY_RETRIEVE_IN_SIZE + size) {
      throw malformed(`NOTIFY_REPLY: size ${size} disagrees with len ${header.len}`);
    }
    return { kind: 'NOTIFY_REPLY', offset: args.readBigUInt64LE(8), size };
  }

  if (body.length < declared) {
    throw new FuseProtocolError(EIO, `body ${body.length} bytes, in-header len says ${declared}`);
  }
  const args = body.subarray(0, argsLength);

  switch (opcode) {
    case K.FUSE_INIT: {
      need(args, 8, 'INIT');
      const major = args.readUInt32LE(0);
      const minor = args.readUInt32LE(4);
      if (major !== K.FUSE_KERNEL_VERSION) {
        // Another major: the server answers with its own major so the kernel can adapt; the rest
        // of the struct is in a layout we do not know.
        return { kind: 'INIT', major, minor, maxReadahead: 0, flags: 0n };
      }
      need(args, K.FUSE_COMPAT_INIT_IN_SIZE, 'INIT');
      const maxReadahead = args.readUInt32LE(8);
      let flags = BigInt(args.readUInt32LE(12));
      if ((flags & K.FUSE_INIT_EXT) !== 0n) {
        // A kernel that sets FUSE_INIT_EXT sends the whole 64-byte fuse_init_in.
        need(args, K.INIT_IN_SIZE, 'INIT with FUSE_INIT_EXT');
        flags |= BigInt(args.readUInt32LE(16)) << 32n;
      }
      return { kind: 'INIT', major, minor, maxReadahead, flags };
    }
    case K.FUSE_DESTROY:
      return { kind: 'DESTROY' };
    case K.FUSE_LOOKUP:
      return { kind: 'LOOKUP', name: oneName(args, 'LOOKUP') };
    case K.FUSE_FORGET:
      need(args, K.FORGET_IN_SIZE, 'FORGET');
      return { kind: 'FORGET', nlookup: u64Clamped(args, 0) };
    case K.FUSE_BATCH_FORGET: {
      need(args, K.BATCH_FORGET_IN_SIZE, 'BATCH_FORGET');
      const count = args.readUInt32LE(0);
      const room = Math.floor((args.length - K.BATCH_FORGET_IN_SIZE) / K.FORGET_ONE_SIZE);
      if (count > room) throw malformed(`BATCH_FORGET: count ${count} but room for ${room}`);
      const items: ForgetItem[] = new Array(count);
      for (let i = 0, off = K.BATCH_FORGET_IN_SIZE; i < count; i++, off += K.FORGET_ONE_SIZE) {
        items[i] = { nodeid: u64OrNaN(args, off), nlookup: u64Clamped(args, off + 8) };
      }
      return { kind: 'BATCH_FORGET', items };
    }
    case K.FUSE_GETATTR: {
      need(args, K.GETATTR_IN_SIZE, 'GETATTR');
      const getattrFlags = args.readUInt32LE(0);
      const fh = (getattrFlags & K.FUSE_GETATTR_FH) !== 0 ? u64Strict(args, 8, 'getattr fh') : null;
      return { kind: 'GETATTR', getattrFlags, fh };
    }
    case K.FUSE_SETATTR: {
      need(args, K.SETATTR_IN_SIZE, 'SETATTR');
      const valid = args.readUInt32LE(0);
      const has = (bit: number): boolean => (valid & bit) !== 0;
      return {
        kind: 'SETATTR',
        valid,
        fh: has(K.FATTR_FH) ? u64Strict(args, 8, 'setattr fh') : 0,
        size: has(K.FATTR_SIZE) ? u64Strict(args, 16, 'setattr size') : 0,
        lockOwner: has(K.FATTR_LOCKOWNER) ? args.readBigUInt64LE(24) : 0n,
        atime: has(K.FATTR_ATIME) ? i64Strict(args, 32, 'atime') : 0,
        atimeNsec: has(K.FATTR_ATIME) ? args.readUInt32LE(56) : 0,
        mtime: has(K.FATTR_MTIME) ? i64Strict(args, 40, 'mtime') : 0,
        mtimeNsec: has(K.FATTR_MTIME) ? args.readUInt32LE(60) : 0,
        ctime: has(K.FATTR_CTIME) ? i64Strict(args, 48, 'ctime') : 0,
        ctimeNsec: has(K.FATTR_CTIME) ? args.readUInt32LE(64) : 0,
        mode: has(K.FATTR_MODE) ? args.readUInt32LE(68) : 0,
        uid: has(K.FATTR_UID) ? args.readUInt32LE(76) : 0,
        gid: has(K.FATTR_GID) ? args.readUInt32LE(80) : 0,
      };
    }
    case K.FUSE_READLINK:
      return { kind: 'READLINK' };
    case K.FUSE_SYMLINK: {
      const [name, target] = twoNames(args, 'SYMLINK');
      return { kind: 'SYMLINK', name, target };
    }
    case K.FUSE_MKNOD:
      need(args, K.MKNOD_IN_SIZE, 'MKNOD');
      return {
        kind: 'MKNOD',
        mode: args.readUInt32LE(0),
        rdev: args.readUInt32LE(4),
        umask: args.readUInt32LE(8),
        name: oneName(args.subarray(K.MKNOD_IN_SIZE), 'MKNOD'),
      };
    case K.FUSE_MKDIR:
      need(args, K.MKDIR_IN_SIZE, 'MKDIR');
      return {
        kind: 'MKDIR',
        mode: args.readUInt32LE(0),
        umask: args.readUInt32LE(4),
        name: oneName(args.subarray(K.MKDIR_IN_SIZE), 'MKDIR'),
      };
    case K.FUSE_UNLINK:
      return { kind: 'UNLINK', name: oneName(args, 'UNLINK') };
    case K.FUSE_RMDIR:
      return { kind: 'RMDIR', name: oneName(args, 'RMDIR') };
    case K.FUSE_RENAME: {
      need(args, K.RENAME_IN_SIZE, 'RENAME');
      const newDir = u64OrNaN(args, 0);
      const [oldName, newName] = twoNames(args.subarray(K.RENAME_IN_SIZE), 'RENAME');
      return { kind: 'RENAME', newDir, flags: 0, oldName, newName };
    }
    case K.FUSE_RENAME2: {
      need(args, K.RENAME2_IN_SIZE, 'RENAME2');
      const newDir = u64OrNaN(args, 0);
      const flags = args.readUInt32LE(8);
      const [oldName, newName] = twoNames(args.subarray(K.RENAME2_IN_SIZE), 'RENAME2');
      return { kind: 'RENAME2', newDir, flags, oldName, newName };
    }
    case K.FUSE_LINK:
      need(args, K.LINK_IN_SIZE, 'LINK');
      return {
        kind: 'LINK',
        oldNodeid: u64OrNaN(args, 0),
        newName: oneName(args.subarray(K.LINK_IN_SIZE), 'LINK'),
      };
    case K.FUSE_OPEN:
    case K.FUSE_OPENDIR:
      need(args, K.OPEN_IN_SIZE, opcodeName(opcode));
      return {
        kind: opcode === K.FUSE_OPEN ? 'OPEN' : 'OPENDIR',
        flags: args.readUInt32LE(0),
        openFlags: args.readUInt32LE(4),
      };
    case K.FUSE_CREATE:
      need(args, K.CREATE_IN_SIZE, 'CREATE');
      return {
        kind: 'CREATE',
        flags: args.readUInt32LE(0),
        mode: args.readUInt32LE(4),
        umask: args.readUInt32LE(8),
        openFlags: args.readUInt32LE(12),
        name: oneName(args.subarray(K.CREATE_IN_SIZE), 'CREATE'),
      };
    case K.FUSE_TMPFILE:
      need(args, K.CREATE_IN_SIZE, 'TMPFILE');
      return {
        kind: 'TMPFILE',
        flags: args.readUInt32LE(0),
        mode: args.readUInt32LE(4),
        umask: args.readUInt32LE(8),
        openFlags: args.readUInt32LE(12),
      };
    case K.FUSE_READ:
      need(args, K.READ_IN_SIZE, 'READ');
      return {
        kind: 'READ',
        fh: u64Strict(args, 0, 'read fh'),
        offset: u64Strict(args, 8, 'read offset'),
        size: args.readUInt32LE(16),
        readFlags: args.readUInt32LE(20),
        lockOwner: args.readBigUInt64LE(24),
        flags: args.readUInt32LE(32),
      };
    case K.FUSE_FLUSH:
      need(args, K.FLUSH_IN_SIZE, 'FLUSH');
      return { kind: 'FLUSH', fh: u64Strict(args, 0, 'flush fh'), lockOwner: args.readBigUInt64LE(16) };
    case K.FUSE_RELEASE:
    case K.FUSE_RELEASEDIR:
      need(args, K.RELEASE_IN_SIZE, opcodeName(opcode));
      return {
        kind: opcode === K.FUSE_RELEASE ? 'RELEASE' : 'RELEASEDIR',
        fh: u64Strict(args, 0, 'release fh'),
        flags: args.readUInt32LE(8),
        releaseFlags: args.readUInt32LE(12),
        lockOwner: args.readBigUInt64LE(16),
      };
    case K.FUSE_FSYNC:
    case K.FUSE_FSYNCDIR: {
      need(args, K.FSYNC_IN_SIZE, opcodeName(opcode));
      const fsyncFlags = args.readUInt32LE(8);
      return {
        kind: opcode === K.FUSE_FSYNC ? 'FSYNC' : 'FSYNCDIR',
        fh: u64Strict(args, 0, 'fsync fh'),
        fsyncFlags,
        dataOnly: (fsyncFlags & K.FUSE_FSYNC_FDATASYNC) !== 0,
      };
    }
    case K.FUSE_STATFS:
      return { kind: 'STATFS' };
    case K.FUSE_SYNCFS:
      need(args, K.SYNCFS_IN_SIZE, 'SYNCFS');
      return { kind: 'SYNCFS' };
    case K.FUSE_READDIR:
    case K.FUSE_READDIRPLUS:
      need(args, K.READ_IN_SIZE, opcodeName(opcode));
      return {
        kind: opcode === K.FUSE_READDIR ? 'READDIR' : 'READDIRPLUS',
        fh: u64Strict(args, 0, 'readdir fh'),
        // An opaque 64-bit directory cookie: exact, so the filesystem can lseek straight to it.
        offset: args.readBigUInt64LE(8),
        size: args.readUInt32LE(16),
      };
    case K.FUSE_GETXATTR:
      need(args, K.GETXATTR_IN_SIZE, 'GETXATTR');
      return {
        kind: 'GETXATTR',
        size: args.readUInt32LE(0),
        name: oneName(args.subarray(K.GETXATTR_IN_SIZE), 'GETXATTR'),
      };
    case K.FUSE_LISTXATTR:
      need(args, K.GETXATTR_IN_SIZE, 'LISTXATTR');
      return { kind: 'LISTXATTR', size: args.readUInt32LE(0) };
    case K.FUSE_SETXATTR: {
      const structSize = options.setxattrExt ? K.SETXATTR_IN_SIZE : K.FUSE_COMPAT_SETXATTR_IN_SIZE;
      need(args, structSize, 'SETXATTR');
      const size = args.readUInt32LE(0);
      const flags = args.readUInt32LE(4);
      const setxattrFlags = options.setxattrExt ? args.readUInt32LE(8) : 0;
      const copy = Buffer.from(args.subarray(structSize));
      const nul = copy.indexOf(0);
      if (nul < 0) throw malformed('SETXATTR: name without NUL');
      if (nul === 0) throw malformed('SETXATTR: empty name');
      const value = copy.subarray(nul + 1);
      if (value.length !== size) throw malformed(`SETXATTR: size ${size} but ${value.length} value bytes`);
      return { kind: 'SETXATTR', name: copy.subarray(0, nul), value, flags, setxattrFlags };
    }
    case K.FUSE_REMOVEXATTR:
      return { kind: 'REMOVEXATTR', name: oneName(args, 'REMOVEXATTR') };
    case K.FUSE_ACCESS:
      need(args, K.ACCESS_IN_SIZE, 'ACCESS');
      return { kind: 'ACCESS', mask: args.readUInt32LE(0) };
    case K.FUSE_GETLK:
      return parseLock('GETLK', args);
    case K.FUSE_SETLK:
      return parseLock('SETLK', args);
    case K.FUSE_SETLKW:
      return parseLock('SETLKW', args);
    case K.FUSE_FALLOCATE:
      need(args, K.FALLOCATE_IN_SIZE, 'FALLOCATE');
      return {
        kind: 'FALLOCATE',
        fh: u64Strict(args, 0, 'fallocate fh'),
        offset: u64Strict(args, 8, 'fallocate offset'),
        length: u64Strict(args, 16, 'fallocate length'),
        mode: args.readUInt32LE(24),
      };
    case K.FUSE_LSEEK:
      need(args, K.LSEEK_IN_SIZE, 'LSEEK');
      return {
        kind: 'LSEEK',
        fh: u64Strict(args, 0, 'lseek fh'),
        offset: u64Strict(args, 8, 'lseek offset'),
        whence: args.readUInt32LE(16),
      };
    case K.FUSE_COPY_FILE_RANGE:
      need(args, K.COPY_FILE_RANGE_IN_SIZE, 'COPY_FILE_RANGE');
      return {
        kind: 'COPY_FILE_RANGE',
        fhIn: u64Strict(args, 0, 'copy fh_in'),
        offIn: u64Strict(args, 8, 'copy off_in'),
        nodeidOut: u64OrNaN(args, 16),
        fhOut: u64Strict(args, 24, 'copy fh_out'),
        offOut: u64Strict(args, 32, 'copy off_out'),
        len: u64Clamped(args, 40),
        flags: u64Strict(args, 48, 'copy flags'),
      };
    case K.FUSE_INTERRUPT:
      need(args, K.INTERRUPT_IN_SIZE, 'INTERRUPT');
      return { kind: 'INTERRUPT', unique: args.readBigUInt64LE(0) };
    case K.FUSE_IOCTL: {
      need(args, K.IOCTL_IN_SIZE, 'IOCTL');
      const inSize = args.readUInt32LE(24);
      if (inSize > args.length - K.IOCTL_IN_SIZE) throw malformed(`IOCTL: in_size ${inSize} overruns the request`);
      return {
        kind: 'IOCTL',
        fh: args.readBigUInt64LE(0),
        flags: args.readUInt32LE(8),
        cmd: args.readUInt32LE(12),
        arg: args.readBigUInt64LE(16),
        inSize,
        outSize: args.readUInt32LE(28),
      };
    }
    case K.FUSE_POLL:
      need(args, K.POLL_IN_SIZE, 'POLL');
      return {
        kind: 'POLL',
        fh: args.readBigUInt64LE(0),
        kh: args.readBigUInt64LE(8),
        flags: args.readUInt32LE(16),
        events: args.readUInt32LE(20),
      };
    case K.FUSE_BMAP:
      need(args, K.BMAP_IN_SIZE, 'BMAP');
      return { kind: 'BMAP', block: args.readBigUInt64LE(0), blocksize: args.readUInt32LE(8) };
    case K.FUSE_SETUPMAPPING:
      need(args, K.SETUPMAPPING_IN_SIZE, 'SETUPMAPPING');
      return {
        kind: 'SETUPMAPPING',
        fh: args.readBigUInt64LE(0),
        foffset: args.readBigUInt64LE(8),
        len: args.readBigUInt64LE(16),
        flags: args.readBigUInt64LE(24),
        moffset: args.readBigUInt64LE(32),
      };
    case K.FUSE_REMOVEMAPPING: {
      need(args, K.REMOVEMAPPING_IN_SIZE, 'REMOVEMAPPING');
      const count = args.readUInt32LE(0);
      const room = Math.floor((args.length - K.REMOVEMAPPING_IN_SIZE) / K.REMOVEMAPPING_ONE_SIZE);
      if (count > room) throw malformed(`REMOVEMAPPING: count ${count} but room for ${room}`);
      const items: RemovemappingRequest['items'] = new Array(count);
      for (let i = 0, off = K.REMOVEMAPPING_IN_SIZE; i < count; i++, off += K.REMOVEMAPPING_ONE_SIZE) {
        items[i] = { moffset: args.readBigUInt64LE(off), len: args.readBigUInt64LE(off + 8) };
      }
      return { kind: 'REMOVEMAPPING', items };
    }
    default:
      // Retired opcodes (7, 19), CUSE_INIT, the byte-swapped INIT markers and anything newer.
      return { kind: 'UNKNOWN', opcode };
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers for the server

/** Whether the server must write a FUSE reply (out-header) for this opcode. FORGET and
 * BATCH_FORGET never get one (the kernel does not wait), nor does NOTIFY_REPLY (it is itself a
 * reply) or INTERRUPT (the interrupted request's own reply answers it; virtio-fs does not send
 * INTERRUPT at all). On virtio-fs the descriptor chain of a no-reply request must still be
 * returned to the used ring, with 0 bytes written. Unknown opcodes do get a reply (ENOSYS). */
export function opcodeHasReply(opcode: number): boolean {
  return opcode !== K.FUSE_FORGET && opcode !== K.FUSE_BATCH_FORGET &&
    opcode !== K.FUSE_NOTIFY_REPLY && opcode !== K.FUSE_INTERRUPT;
}
