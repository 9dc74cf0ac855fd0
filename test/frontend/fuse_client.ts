// FUSE over virtqueues, driver side: what the Linux virtiofs driver does, minus the kernel.
// Requests go to a request queue (vring 1.. ), FORGET/BATCH_FORGET to the hiprio queue (vring 0).
// Each request is one descriptor chain: device-readable in_header + args (+ write payload), then
// device-writable out_header + reply body. Several requests may be in flight; replies are matched
// by descriptor head and checked against the request's unique.
import * as F from './fuse_proto';
import { ChainBuffer, Virtqueue, withTimeout } from './virtqueue';
import { VhostUserFrontend } from './vhost_user';
import { GuestMemory } from './guest_memory';

export interface RequestOptions {
  /** Bytes of reply body to make room for (after the 16-byte out header). */
  replySize?: number;
  /** Bytes that follow the args in the readable part (WRITE payload). */
  writePayload?: Buffer;
  /** Put the chain in an indirect descriptor table. */
  indirect?: boolean;
  /** Spread the readable part over several descriptors: true = every arg and every 4 KiB page of
   * payload in its own descriptor; a number = cut the readable bytes into chunks of that size
   * regardless of struct boundaries. */
  splitIn?: boolean | number;
  /** Same for the writable part (true = out header, then 4 KiB chunks). */
  splitOut?: boolean | number;
  /** Everything readable in one descriptor and everything writable in one descriptor. */
  single?: boolean;
  /** Override the in_header.len (hostile tests). */
  headerLen?: number;
  /** Override unique. */
  unique?: bigint;
  /** Queue index (default: the client's request queue). */
  queue?: number;
  timeoutMs?: number;
  uid?: number;
  gid?: number;
  pid?: number;
}

export interface FuseReply {
  /** Positive errno, 0 on success; null when the device returned the chain without a reply. */
  error: number | null;
  unique: bigint;
  body: Buffer;
  /** used.len reported by the device. */
  usedLen: number;
  /** out_header.len (0 when there was no reply). */
  outLen: number;
}

export class FuseError extends Error {
  constructor(readonly errno: number, readonly opcode: number, readonly detail = '') {
    super(`FUSE op ${opcode} failed: ${F.errnoName(errno)} (${errno})${detail ? ' ' + detail : ''}`);
  }
  get code(): string { return F.errnoName(this.errno); }
}

export class FuseProtocolError extends Error {}

export interface FuseClientOptions {
  requestQueue?: number;
  hiprioQueue?: number;
  uid?: number;
  gid?: number;
  pid?: number;
  timeoutMs?: number;
}

const PAGE = 4096;

function chunks(total: number, size: number): number[] {
  const out: number[] = [];
  for (let o = 0; o < total; o += size) out.push(Math.min(size, total - o));
  return out;
}

export class FuseClient {
  readonly fe: VhostUserFrontend;
  readonly requestQueue: number;
  readonly hiprioQueue: number;
  uid: number;
  gid: number;
  pid: number;
  timeoutMs: number;
  private nextUnique = 2n;
  /** The INIT reply, once init() ran. */
  initOut: F.InitOut | null = null;
  /** Requests sent / replies received, for tests that count. */
  sent = 0;

  constructor(fe: VhostUserFrontend, opts: FuseClientOptions = {}) {
    this.fe = fe;
    this.requestQueue = opts.requestQueue ?? 1;
    this.hiprioQueue = opts.hiprioQueue ?? 0;
    this.uid = opts.uid ?? process.getuid?.() ?? 0;
    this.gid = opts.gid ?? process.getgid?.() ?? 0;
    this.pid = opts.pid ?? process.pid;
    this.timeoutMs = opts.timeoutMs ?? 15_000;
  }

  get mem(): GuestMemory {
    if (!this.fe.mem) throw new Error('not negotiated');
    return this.fe.mem;
  }

  queue(i: number): Virtqueue {
    const q = this.fe.queues[i];
    if (!q) throw new Error(`no queue ${i}`);
    return q;
  }

  allocUnique(): bigint {
    const u = this.nextUnique;
    this.nextUnique += 2n;
    return u;
  }

  get setxattrExt(): boolean {
    return this.initOut !== null && (this.initOut.flags & F.InitFlag.SETXATTR_EXT) !== 0;
  }

  // --- the generic request --------------------------------------------------------------------

  /** Lays out the request in guest memory and returns the chain plus what to free afterwards. */
  private layout(readable: Buffer, argBoundaries: number[], payloadLen: number, writableLen: number,
    opts: RequestOptions): { chain: ChainBuffer[]; owned: bigint[]; outParts: Array<{ gpa: bigint; len: number }> } {
    const mem = this.mem;
    const owned: bigint[] = [];
    const chain: ChainBuffer[] = [];
    const put = (data: Buffer): void => {
      const gpa = mem.allocWith(data);
      owned.push(gpa);
      chain.push({ gpa, len: data.length, writable: false });
    };
    // Readable part.
    let inSizes: number[];
    if (opts.single) {
      inSizes = [readable.length];
    } else if (typeof opts.splitIn === 'number') {
      inSizes = chunks(readable.length, Math.max(1, opts.splitIn));
    } else if (opts.splitIn) {
      // every arg separately, then payload pages
      inSizes = [];
      let prev = 0;
      for (const b of argBoundaries) { if (b > prev) inSizes.push(b - prev); prev = b; }
      inSizes.push(...chunks(readable.length - prev, PAGE));
    } else {
      // Linux layout: in_header | args (one buffer) | payload (one buffer per request here)
      const headerEnd = F.IN_HEADER_SIZE;
      const argsEnd = readable.length - payloadLen;
      inSizes = [headerEnd];
      if (argsEnd > headerEnd) inSizes.push(argsEnd - headerEnd);
      if (payloadLen > 0) inSizes.push(payloadLen);
    }
    let o = 0;
    for (const n of inSizes) {
      put(readable.subarray(o, o + n));
      o += n;
    }
    // Writable part.
    let outSizes: number[];
    if (writableLen === 0) outSizes = [];
    else if (opts.single) outSizes = [writableLen];
    else if (typeof opts.splitOut === 'number') outSizes = chunks(writableLen, Math.max(1, opts.splitOut));
    else if (opts.splitOut) outSizes = [F.OUT_HEADER_SIZE, ...chunks(writableLen - F.OUT_HEADER_SIZE, PAGE)];
    else outSizes = writableLen > F.OUT_HEADER_SIZE ? [F.OUT_HEADER_SIZE, writableLen - F.OUT_HEADER_SIZE] : [writableLen];
    const outParts: Array<{ gpa: bigint; len: number }> = [];
    for (const n of outSizes) {
      const gpa = mem.alloc(n);
      mem.fill(gpa, n, 0xa5); // poison: the reply must overwrite what it claims to write
      owned.push(gpa);
      chain.push({ gpa, len: n, writable: true });
      outParts.push({ gpa, len: n });
    }
    return { chain, owned, outParts };
  }

  /**
   * Sends one FUSE request and waits for its chain to come back. Never throws for an errno
   * reply (see `error`); throws FuseProtocolError for a malformed reply.
   */
  async request(opcode: number, nodeid: bigint, args: Buffer[], opts: RequestOptions = {}): Promise<FuseReply> {
    const payload = opts.writePayload ?? Buffer.alloc(0);
    const argsLen = args.reduce((s, a) => s + a.length, 0);
    const total = F.IN_HEADER_SIZE + argsLen + payload.length;
    const unique = opts.unique ?? this.allocUnique();
    const header = F.encodeInHeader({
      len: opts.headerLen ?? total, opcode, unique, nodeid, uid: opts.uid ?? this.uid,
      gid: opts.gid ?? this.gid, pid: opts.pid ?? this.pid,
    });
    const readable = Buffer.concat([header, ...args, payload]);
    const boundaries: number[] = [F.IN_HEADER_SIZE];
    let b = F.IN_HEADER_SIZE;
    for (const a of args) { b += a.length; boundaries.push(b); }
    const replySize = opts.replySize ?? 0;
    const noReplyExpected = opcode === F.Op.FORGET || opcode === F.Op.BATCH_FORGET;
    const writableLen = noReplyExpected && replySize === 0 ? 0 : F.OUT_HEADER_SIZE + replySize;
    const { chain, owned, outParts } = this.layout(readable, boundaries, payload.length, writableLen, opts);
    const queueIdx = opts.queue ?? (noReplyExpected ? this.hiprioQueue : this.requestQueue);
    const q = this.queue(queueIdx);
    let used;
    try {
      const sub = await q.submitWhenFree(chain, { indirect: opts.indirect });
      this.sent++;
      used = await withTimeout(sub.used, opts.timeoutMs ?? this.timeoutMs,
        () => new Error(`FUSE op ${opcode} (unique ${unique}) got no reply within ${opts.timeoutMs ?? this.timeoutMs} ms; ${q.describe()}`));
    } catch (e) {
      // The chain may still be owned by the device: do not free its buffers.
      throw e;
    }
    try {
      if (used.len === 0) return { error: null, unique, body: Buffer.alloc(0), usedLen: 0, outLen: 0 };
      if (used.len > writableLen) throw new FuseProtocolError(`used.len ${used.len} > writable ${writableLen}`);
      const out = Buffer.concat(outParts.map((p) => this.mem.read(p.gpa, p.len))).subarray(0, used.len);
      if (out.length < F.OUT_HEADER_SIZE) throw new FuseProtocolError(`reply of ${out.length} bytes has no out header`);
      const oh = F.decodeOutHeader(out);
      if (oh.unique !== unique) throw new FuseProtocolError(`reply unique ${oh.unique} != request unique ${unique}`);
      if (oh.len !== used.len) throw new FuseProtocolError(`out_header.len ${oh.len} != used.len ${used.len} (op ${opcode})`);
      if (oh.error > 0 || oh.error < -4095) throw new FuseProtocolError(`bad out_header.error ${oh.error}`);
      if (oh.error !== 0 && oh.len !== F.OUT_HEADER_SIZE) {
        throw new FuseProtocolError(`error reply ${oh.error} carries ${oh.len - F.OUT_HEADER_SIZE} body bytes`);
      }
      return { error: oh.error === 0 ? 0 : -oh.error, unique, body: out.subarray(F.OUT_HEADER_SIZE), usedLen: used.len, outLen: oh.len };
    } finally {
      for (const g of owned) this.mem.freeGpa(g);
    }
  }

  /** request() that throws FuseError on an errno reply and FuseProtocolError on no reply. */
  async call(opcode: number, nodeid: bigint, args: Buffer[], opts: RequestOptions = {}): Promise<Buffer> {
    const r = await this.request(opcode, nodeid, args, opts);
    if (r.error === null) throw new FuseProtocolError(`op ${opcode}: chain returned without a reply`);
    if (r.error !== 0) throw new FuseError(r.error, opcode);
    return r.body;
  }

  // --- operations ---------------------------------------------------------------------------

  async init(flags: number = F.LINUX_INIT_FLAGS, maxReadahead = 0x20000, opts: RequestOptions = {}): Promise<F.InitOut> {
    const body = await this.call(F.Op.INIT, 0n, [F.initIn(flags, maxReadahead)], { replySize: F.INIT_OUT_SIZE, ...opts });
    this.initOut = F.decodeInitOut(body);
    return this.initOut;
  }

  async lookup(parent: bigint, name: string | Buffer, opts: RequestOptions = {}): Promise<F.EntryOut> {
    return F.decodeEntryOut(await this.call(F.Op.LOOKUP, parent, [F.cstr(name)], { replySize: F.ENTRY_OUT_SIZE, ...opts }));
  }

  /** FORGET on the hiprio queue. Resolves with used.len (0: no reply, as required). */
  async forget(nodeid: bigint, nlookup: bigint | number, opts: RequestOptions = {}): Promise<number> {
    const r = await this.request(F.Op.FORGET, nodeid, [F.forgetIn(nlookup)], opts);
    return r.usedLen;
  }

  async batchForget(items: Array<{ nodeid: bigint; nlookup: bigint | number }>, opts: RequestOptions = {}): Promise<number> {
    const r = await this.request(F.Op.BATCH_FORGET, 0n, [F.batchForgetIn(items)], opts);
    return r.usedLen;
  }

  async getattr(nodeid: bigint, fh?: bigint, opts: RequestOptions = {}): Promise<F.AttrOut> {
    const args = [F.getattrIn(fh === undefined ? 0 : F.FUSE_GETATTR_FH, fh ?? 0n)];
    return F.decodeAttrOut(await this.call(F.Op.GETATTR, nodeid, args, { replySize: F.ATTR_OUT_SIZE, ...opts }));
  }

  async setattr(nodeid: bigint, a: F.SetattrArgs, opts: RequestOptions = {}): Promise<F.AttrOut> {
    return F.decodeAttrOut(await this.call(F.Op.SETATTR, nodeid, [F.setattrIn(a)], { replySize: F.ATTR_OUT_SIZE, ...opts }));
  }

  async readlink(nodeid: bigint, opts: RequestOptions = {}): Promise<Buffer> {
    return Buffer.from(await this.call(F.Op.READLINK, nodeid, [], { replySize: 4096, ...opts }));
  }

  async symlink(parent: bigint, name: string | Buffer, target: string | Buffer, opts: RequestOptions = {}): Promise<F.EntryOut> {
    // Linux: args are the name, then the target.
    return F.decodeEntryOut(await this.call(F.Op.SYMLINK, parent, [F.cstr(name), F.cstr(target)], { replySize: F.ENTRY_OUT_SIZE, ...opts }));
  }

  async mknod(parent: bigint, name: string | Buffer, mode: number, rdev = 0, umask = 0, opts: RequestOptions = {}): Promise<F.EntryOut> {
    return F.decodeEntryOut(await this.call(F.Op.MKNOD, parent, [F.mknodIn(mode, rdev, umask), F.cstr(name)], { replySize: F.ENTRY_OUT_SIZE, ...opts }));
  }

  async mkdir(parent: bigint, name: string | Buffer, mode = 0o755, umask = 0, opts: RequestOptions = {}): Promise<F.EntryOut> {
    return F.decodeEntryOut(await this.call(F.Op.MKDIR, parent, [F.mkdirIn(mode, umask), F.cstr(name)], { replySize: F.ENTRY_OUT_SIZE, ...opts }));
  }

  async unlink(parent: bigint, name: string | Buffer, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.UNLINK, parent, [F.cstr(name)], opts);
  }

  async rmdir(parent: bigint, name: string | Buffer, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.RMDIR, parent, [F.cstr(name)], opts);
  }

  async rename(olddir: bigint, oldname: string | Buffer, newdir: bigint, newname: string | Buffer, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.RENAME, olddir, [F.renameIn(newdir), F.cstr(oldname), F.cstr(newname)], opts);
  }

  async rename2(olddir: bigint, oldname: string | Buffer, newdir: bigint, newname: string | Buffer, flags: number, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.RENAME2, olddir, [F.rename2In(newdir, flags), F.cstr(oldname), F.cstr(newname)], opts);
  }

  async link(nodeid: bigint, newparent: bigint, newname: string | Buffer, opts: RequestOptions = {}): Promise<F.EntryOut> {
    return F.decodeEntryOut(await this.call(F.Op.LINK, newparent, [F.linkIn(nodeid), F.cstr(newname)], { replySize: F.ENTRY_OUT_SIZE, ...opts }));
  }

  async open(nodeid: bigint, flags: number, opts: RequestOptions = {}): Promise<F.OpenOut> {
    return F.decodeOpenOut(await this.call(F.Op.OPEN, nodeid, [F.openIn(flags)], { replySize: F.OPEN_OUT_SIZE, ...opts }));
  }

  async create(parent: bigint, name: string | Buffer, flags: number, mode = 0o644, umask = 0, opts: RequestOptions = {}): Promise<F.CreateOut> {
    const body = await this.call(F.Op.CREATE, parent, [F.createIn(flags | F.O.CREAT, mode, umask), F.cstr(name)],
      { replySize: F.ENTRY_OUT_SIZE + F.OPEN_OUT_SIZE, ...opts });
    return F.decodeCreateOut(body);
  }

  /** FUSE_TMPFILE: like CREATE with the name the kernel uses for an O_TMPFILE dentry ("/"). */
  async tmpfile(parent: bigint, flags: number, mode = 0o600, umask = 0, opts: RequestOptions = {}): Promise<F.CreateOut> {
    const body = await this.call(F.Op.TMPFILE, parent, [F.createIn(flags, mode, umask), F.cstr('/')],
      { replySize: F.ENTRY_OUT_SIZE + F.OPEN_OUT_SIZE, ...opts });
    return F.decodeCreateOut(body);
  }

  async read(nodeid: bigint, fh: bigint, offset: number | bigint, size: number, opts: RequestOptions = {}): Promise<Buffer> {
    return Buffer.from(await this.call(F.Op.READ, nodeid, [F.readIn(fh, offset, size, 0, 0n, F.O.RDWR)], { replySize: size, ...opts }));
  }

  async write(nodeid: bigint, fh: bigint, offset: number | bigint, data: Buffer, opts: RequestOptions & { writeFlags?: number } = {}): Promise<number> {
    const body = await this.call(F.Op.WRITE, nodeid, [F.writeIn(fh, offset, data.length, opts.writeFlags ?? 0, 0n, F.O.RDWR)],
      { replySize: F.WRITE_OUT_SIZE, writePayload: data, ...opts });
    return F.decodeWriteOut(body);
  }

  async flush(nodeid: bigint, fh: bigint, lockOwner = 0n, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.FLUSH, nodeid, [F.flushIn(fh, lockOwner)], opts);
  }

  async release(nodeid: bigint, fh: bigint, flags = 0, releaseFlags = 0, lockOwner = 0n, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.RELEASE, nodeid, [F.releaseIn(fh, flags, releaseFlags, lockOwner)], opts);
  }

  async fsync(nodeid: bigint, fh: bigint, datasync = false, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.FSYNC, nodeid, [F.fsyncIn(fh, datasync ? F.FUSE_FSYNC_FDATASYNC : 0)], opts);
  }

  async statfs(nodeid: bigint = F.FUSE_ROOT_ID, opts: RequestOptions = {}): Promise<F.StatfsOut> {
    return F.decodeStatfsOut(await this.call(F.Op.STATFS, nodeid, [], { replySize: F.STATFS_OUT_SIZE, ...opts }));
  }

  async syncfs(nodeid: bigint = F.FUSE_ROOT_ID, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.SYNCFS, nodeid, [F.syncfsIn()], opts);
  }

  async opendir(nodeid: bigint, flags = F.O.RDONLY | F.O.DIRECTORY, opts: RequestOptions = {}): Promise<F.OpenOut> {
    return F.decodeOpenOut(await this.call(F.Op.OPENDIR, nodeid, [F.openIn(flags)], { replySize: F.OPEN_OUT_SIZE, ...opts }));
  }

  async readdir(nodeid: bigint, fh: bigint, offset: number | bigint, size = 4096, opts: RequestOptions = {}): Promise<F.Dirent[]> {
    return F.decodeDirents(await this.call(F.Op.READDIR, nodeid, [F.readIn(fh, offset, size, 0, 0n, F.O.RDONLY | F.O.DIRECTORY)], { replySize: size, ...opts }));
  }

  async readdirplus(nodeid: bigint, fh: bigint, offset: number | bigint, size = 4096, opts: RequestOptions = {}): Promise<F.Dirent[]> {
    return F.decodeDirentsPlus(await this.call(F.Op.READDIRPLUS, nodeid, [F.readIn(fh, offset, size, 0, 0n, F.O.RDONLY | F.O.DIRECTORY)], { replySize: size, ...opts }));
  }

  /** Reads a whole directory with calls of `size` bytes, resuming at the last entry's offset. */
  async readdirAll(nodeid: bigint, fh: bigint, opts: { plus?: boolean; size?: number; maxCalls?: number } = {}): Promise<{ entries: F.Dirent[]; calls: number }> {
    const entries: F.Dirent[] = [];
    let off: bigint = 0n;
    let calls = 0;
    for (;;) {
      if (++calls > (opts.maxCalls ?? 100_000)) throw new Error('readdir does not terminate');
      const batch = opts.plus
        ? await this.readdirplus(nodeid, fh, off, opts.size ?? 4096)
        : await this.readdir(nodeid, fh, off, opts.size ?? 4096);
      if (batch.length === 0) break;
      entries.push(...batch);
      off = batch[batch.length - 1].off;
    }
    return { entries, calls };
  }

  async releasedir(nodeid: bigint, fh: bigint, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.RELEASEDIR, nodeid, [F.releaseIn(fh, F.O.RDONLY | F.O.DIRECTORY)], opts);
  }

  async fsyncdir(nodeid: bigint, fh: bigint, datasync = false, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.FSYNCDIR, nodeid, [F.fsyncIn(fh, datasync ? F.FUSE_FSYNC_FDATASYNC : 0)], opts);
  }

  /** With size 0, returns the value's size (a number); else the value. */
  async getxattr(nodeid: bigint, name: string, size: number, opts: RequestOptions = {}): Promise<Buffer | number> {
    const body = await this.call(F.Op.GETXATTR, nodeid, [F.getxattrIn(size), F.cstr(name)],
      { replySize: size === 0 ? F.GETXATTR_OUT_SIZE : size, ...opts });
    return size === 0 ? F.decodeGetxattrOut(body) : Buffer.from(body);
  }

  async setxattr(nodeid: bigint, name: string, value: Buffer, flags = 0, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.SETXATTR, nodeid, [F.setxattrIn(value.length, flags, this.setxattrExt), F.cstr(name), value], opts);
  }

  /** With size 0, returns the list's size; else the names. */
  async listxattr(nodeid: bigint, size: number, opts: RequestOptions = {}): Promise<string[] | number> {
    const body = await this.call(F.Op.LISTXATTR, nodeid, [F.getxattrIn(size)],
      { replySize: size === 0 ? F.GETXATTR_OUT_SIZE : size, ...opts });
    return size === 0 ? F.decodeGetxattrOut(body) : F.decodeXattrList(body);
  }

  async removexattr(nodeid: bigint, name: string, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.REMOVEXATTR, nodeid, [F.cstr(name)], opts);
  }

  async access(nodeid: bigint, mask: number, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.ACCESS, nodeid, [F.accessIn(mask)], opts);
  }

  async getlk(nodeid: bigint, fh: bigint, owner: bigint, lk: F.FileLock, opts: RequestOptions = {}): Promise<F.FileLock> {
    return F.decodeLkOut(await this.call(F.Op.GETLK, nodeid, [F.lkIn(fh, owner, lk)], { replySize: F.LK_OUT_SIZE, ...opts }));
  }

  async setlk(nodeid: bigint, fh: bigint, owner: bigint, lk: F.FileLock, flock = false, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.SETLK, nodeid, [F.lkIn(fh, owner, lk, flock ? F.FUSE_LK_FLOCK : 0)], opts);
  }

  async setlkw(nodeid: bigint, fh: bigint, owner: bigint, lk: F.FileLock, flock = false, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.SETLKW, nodeid, [F.lkIn(fh, owner, lk, flock ? F.FUSE_LK_FLOCK : 0)], opts);
  }

  async fallocate(nodeid: bigint, fh: bigint, offset: number | bigint, length: number | bigint, mode = 0, opts: RequestOptions = {}): Promise<void> {
    await this.call(F.Op.FALLOCATE, nodeid, [F.fallocateIn(fh, offset, length, mode)], opts);
  }

  async lseek(nodeid: bigint, fh: bigint, offset: number | bigint, whence: number, opts: RequestOptions = {}): Promise<bigint> {
    return F.decodeLseekOut(await this.call(F.Op.LSEEK, nodeid, [F.lseekIn(fh, offset, whence)], { replySize: F.LSEEK_OUT_SIZE, ...opts }));
  }

  async copyFileRange(nodeidIn: bigint, fhIn: bigint, offIn: number | bigint, nodeidOut: bigint, fhOut: bigint,
    offOut: number | bigint, len: number | bigint, flags = 0, opts: RequestOptions = {}): Promise<number> {
    const body = await this.call(F.Op.COPY_FILE_RANGE, nodeidIn,
      [F.copyFileRangeIn(fhIn, offIn, nodeidOut, fhOut, offOut, len, flags)], { replySize: F.WRITE_OUT_SIZE, ...opts });
    return F.decodeWriteOut(body);
  }

  /** FUSE_INTERRUPT for `unique`. The raw reply: servers may answer EAGAIN/ENOSYS or not at all. */
  async interrupt(unique: bigint, opts: RequestOptions = {}): Promise<FuseReply> {
    return this.request(F.Op.INTERRUPT, 0n, [F.interruptIn(unique)], { unique: this.allocUnique() | 1n, ...opts });
  }

  // --- conveniences ---------------------------------------------------------------------------

  /** Looks up a slash-separated relative path from the root, one component at a time. */
  async walk(relPath: string): Promise<F.EntryOut> {
    let cur: F.EntryOut | null = null;
    let parent = F.FUSE_ROOT_ID;
    for (const comp of relPath.split('/').filter((c) => c.length > 0)) {
      cur = await this.lookup(parent, comp);
      parent = cur.nodeid;
    }
    if (!cur) throw new Error('empty path');
    return cur;
  }

  /** A cheap "is it still serving" check: GETATTR of the root answered within timeoutMs. */
  async serving(timeoutMs = 5_000): Promise<boolean> {
    try {
      const a = await this.getattr(F.FUSE_ROOT_ID, undefined, { timeoutMs });
      return (a.attr.mode & F.S_IFMT) === F.S_IFDIR;
    } catch {
      return false;
    }
  }
}
