// The test frontend's vhost-user front-end ("QEMU's role"), from the vhost-user spec
// (QEMU docs/interop/vhost-user.rst). It connects to a backend's UNIX socket, negotiates features
// the way QEMU 7.2 does for vhost-user-fs-pci, hands over memfd guest memory and eventfds, and sets
// up split virtqueues in that memory.
import { native, Poller, POLL_READABLE, isNativeError } from '../../shared/native';
import { GuestMemory, GuestMemoryOptions } from './guest_memory';
import { RawDescriptor, Virtqueue, withTimeout } from './virtqueue';

export const Req = {
  GET_FEATURES: 1, SET_FEATURES: 2, SET_OWNER: 3, RESET_OWNER: 4, SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6, SET_LOG_FD: 7, SET_VRING_NUM: 8, SET_VRING_ADDR: 9, SET_VRING_BASE: 10,
  GET_VRING_BASE: 11, SET_VRING_KICK: 12, SET_VRING_CALL: 13, SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15, SET_PROTOCOL_FEATURES: 16, GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18, SEND_RARP: 19, NET_SET_MTU: 20, SET_BACKEND_REQ_FD: 21, IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23, GET_CONFIG: 24, SET_CONFIG: 25, CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27, POSTCOPY_ADVISE: 28, POSTCOPY_LISTEN: 29, POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31, SET_INFLIGHT_FD: 32, GPU_SET_SOCKET: 33, RESET_DEVICE: 34,
  VRING_KICK: 35, GET_MAX_MEM_SLOTS: 36, ADD_MEM_REG: 37, REM_MEM_REG: 38, SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

export const Flag = { VERSION: 0x1, REPLY: 0x4, NEED_REPLY: 0x8 } as const;

/** Virtio feature bits (as bigint masks). */
export const VirtioF = {
  NOTIFY_ON_EMPTY: 1n << 24n,
  LOG_ALL: 1n << 26n, // VHOST_F_LOG_ALL
  RING_INDIRECT_DESC: 1n << 28n,
  RING_EVENT_IDX: 1n << 29n,
  PROTOCOL_FEATURES: 1n << 30n, // VHOST_USER_F_PROTOCOL_FEATURES
  VERSION_1: 1n << 32n,
  ACCESS_PLATFORM: 1n << 33n,
  RING_PACKED: 1n << 34n,
  RING_RESET: 1n << 40n,
} as const;

/** vhost-user protocol feature bits (as bigint masks). */
export const ProtoF = {
  MQ: 1n << 0n, LOG_SHMFD: 1n << 1n, RARP: 1n << 2n, REPLY_ACK: 1n << 3n, MTU: 1n << 4n,
  BACKEND_REQ: 1n << 5n, CROSS_ENDIAN: 1n << 6n, CRYPTO_SESSION: 1n << 7n, PAGEFAULT: 1n << 8n,
  CONFIG: 1n << 9n, BACKEND_SEND_FD: 1n << 10n, HOST_NOTIFIER: 1n << 11n,
  INFLIGHT_SHMFD: 1n << 12n, RESET_DEVICE: 1n << 13n, INBAND_NOTIFICATIONS: 1n << 14n,
  CONFIGURE_MEM_SLOTS: 1n << 15n, STATUS: 1n << 16n,
} as const;

/** Protocol features this frontend will ack when offered (the subset of what QEMU 7.2 acks for
 * vhost-user-fs that needs no backend-request channel). CONFIG is never acked for vhost-user-fs
 * (QEMU drops it when the device has no config notifier). */
export const DEFAULT_PROTOCOL_FEATURES = ProtoF.MQ | ProtoF.REPLY_ACK | ProtoF.INFLIGHT_SHMFD |
  ProtoF.RESET_DEVICE;

export const VRING_KICK_NOFD_MASK = 0x100n;
export const HEADER_SIZE = 12;
export const MAX_PAYLOAD = 4096;

export interface VhostMessage { request: number; flags: number; payload: Buffer; fds: number[] }

export class VhostUserError extends Error {
  constructor(message: string, readonly request?: number) { super(message); }
}

export interface NegotiateOptions {
  /** Total virtqueues including hiprio (vhost-user-fs: 1 hiprio + N request queues). Default 2. */
  queues?: number;
  queueSize?: number;
  /** Virtio features to ack if offered. Default VERSION_1 | PROTOCOL_FEATURES | EVENT_IDX |
   * INDIRECT_DESC. VERSION_1 and PROTOCOL_FEATURES must be offered; the rest are optional. */
  features?: bigint;
  /** Protocol features to ack if offered. Default DEFAULT_PROTOCOL_FEATURES. */
  protocolFeatures?: bigint;
  memoryMiB?: number;
  regions?: GuestMemoryOptions['regions'];
  /** Set NEED_REPLY on every message that has no reply of its own, when REPLY_ACK is acked
   * (stricter than QEMU, which asks only for some). Default true. */
  replyAck?: boolean;
  /** Also send SET_VRING_ERR eventfds. Default true. */
  vringErr?: boolean;
  /** Send SET_VRING_ENABLE 1 (only when PROTOCOL_FEATURES is acked). Default true. */
  enable?: boolean;
}

export interface Negotiated {
  offeredFeatures: bigint;
  ackedFeatures: bigint;
  offeredProtocolFeatures: bigint;
  ackedProtocolFeatures: bigint;
  /** GET_QUEUE_NUM reply, or undefined when MQ was not acked. */
  queueNum?: number;
  replyAck: boolean;
}

export interface ConnectOptions {
  timeoutMs?: number;
  /** Called between attempts; return false to give up early (the backend died). */
  isAlive?: () => boolean;
}

async function pause(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

export class VhostUserFrontend {
  readonly fd: number;
  mem: GuestMemory | null = null;
  queues: Virtqueue[] = [];
  negotiated: Negotiated | null = null;
  /** Messages received that nobody waited for (unexpected replies). */
  readonly unexpected: VhostMessage[] = [];
  private readonly poller: Poller;
  private polling = false;
  private rxBuf = Buffer.alloc(0);
  private rxFds: number[] = [];
  private readonly rxQueue: VhostMessage[] = [];
  private waiter: { resolve: (m: VhostMessage) => void; reject: (e: Error) => void } | null = null;
  private eof = false;
  private closed = false;
  private chain: Promise<unknown> = Promise.resolve();
  private readonly closeWaiters: Array<() => void> = [];
  private readonly scratch = Buffer.alloc(64 * 1024);

  private constructor(fd: number) {
    this.fd = fd;
    this.poller = new native.Poller(fd, (status) => this.onReadable(status));
  }

  /** Connects, retrying while the socket does not exist or refuses connections. */
  static async connect(socketPath: string, opts: ConnectOptions = {}): Promise<VhostUserFrontend> {
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    let delay = 5;
    for (;;) {
      try {
        const fd = native.unixConnect(socketPath, 'stream');
        return new VhostUserFrontend(fd);
      } catch (e) {
        const code = isNativeError(e) ? e.code : '';
        if (code !== 'ENOENT' && code !== 'ECONNREFUSED' && code !== 'EAGAIN') throw e;
        if (opts.isAlive && !opts.isAlive()) throw new Error(`backend died before ${socketPath} accepted a connection`);
        if (Date.now() > deadline) throw new Error(`timed out connecting to ${socketPath}: ${code}`);
        await pause(delay);
        delay = Math.min(delay * 2, 100);
      }
    }
  }

  get isClosedByPeer(): boolean { return this.eof; }

  // --- low-level I/O ------------------------------------------------------------------------

  private startPolling(): void {
    if (!this.polling && !this.closed && !this.eof) {
      this.poller.start(POLL_READABLE);
      this.polling = true;
    }
  }

  private stopPolling(): void {
    if (this.polling) {
      this.poller.stop();
      this.polling = false;
    }
  }

  private onReadable(status: number): void {
    if (this.closed) return;
    if (status < 0) { this.markEof(); return; }
    for (;;) {
      let r;
      try {
        r = native.recvMsg(this.fd, this.scratch, 16);
      } catch (e) {
        if (isNativeError(e) && e.code === 'ECONNRESET') { this.markEof(); return; }
        throw e;
      }
      if (r === null) break;
      if (r.bytes === 0) {
        for (const f of r.fds) native.close(f);
        this.markEof();
        break;
      }
      this.rxBuf = Buffer.concat([this.rxBuf, this.scratch.subarray(0, r.bytes)]);
      this.rxFds.push(...r.fds);
      this.parse();
    }
  }

  private parse(): void {
    while (this.rxBuf.length >= HEADER_SIZE) {
      const size = this.rxBuf.readUInt32LE(8);
      if (this.rxBuf.length < HEADER_SIZE + size) break;
      const m: VhostMessage = {
        request: this.rxBuf.readUInt32LE(0), flags: this.rxBuf.readUInt32LE(4),
        payload: Buffer.from(this.rxBuf.subarray(HEADER_SIZE, HEADER_SIZE + size)), fds: this.rxFds,
      };
      this.rxFds = [];
      this.rxBuf = this.rxBuf.subarray(HEADER_SIZE + size);
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = null;
        w.resolve(m);
      } else {
        this.rxQueue.push(m);
      }
    }
    if (!this.waiter && this.closeWaiters.length === 0) this.stopPolling();
  }

  private markEof(): void {
    this.eof = true;
    this.stopPolling();
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.reject(new VhostUserError('backend closed the vhost-user connection'));
    }
    for (const q of this.queues) q.abort(new Error('backend closed the vhost-user connection'));
    for (const w of this.closeWaiters.splice(0)) w();
  }

  /** Next message from the backend; rejects on EOF or timeout. */
  readMessage(timeoutMs = 5_000): Promise<VhostMessage> {
    const q = this.rxQueue.shift();
    if (q) return Promise.resolve(q);
    if (this.eof) return Promise.reject(new VhostUserError('backend closed the vhost-user connection'));
    if (this.waiter) return Promise.reject(new Error('concurrent readMessage'));
    const p = new Promise<VhostMessage>((resolve, reject) => { this.waiter = { resolve, reject }; });
    this.startPolling();
    return withTimeout(p, timeoutMs, () => {
      this.waiter = null;
      this.stopPolling();
      return new VhostUserError(`no reply from the backend within ${timeoutMs} ms`);
    });
  }

  /** Resolves when the backend closes the connection (EOF), or false after timeoutMs. */
  waitClosed(timeoutMs = 5_000): Promise<boolean> {
    if (this.eof) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const t = setTimeout(() => {
        const i = this.closeWaiters.indexOf(done);
        if (i >= 0) this.closeWaiters.splice(i, 1);
        if (!this.waiter && this.closeWaiters.length === 0) this.stopPolling();
        resolve(false);
      }, timeoutMs);
      t.unref();
      const done = (): void => { clearTimeout(t); resolve(true); };
      this.closeWaiters.push(done);
      this.startPolling();
    });
  }

  private sendAll(data: Buffer, fds: number[]): void {
    if (this.closed) throw new Error('frontend is closed');
    let sent = native.sendMsg(this.fd, data, fds);
    // The socket is non-blocking; messages are small, so EAGAIN/partial writes are rare. Finish
    // synchronously with a bounded spin (the backend reads concurrently).
    const deadline = Date.now() + 5_000;
    let off = sent < 0 ? 0 : sent;
    let fdsSent = sent >= 0;
    while (off < data.length) {
      if (Date.now() > deadline) throw new VhostUserError('timed out writing to the backend');
      sent = native.sendMsg(this.fd, data.subarray(off), fdsSent ? [] : fds);
      if (sent > 0) { off += sent; fdsSent = true; }
    }
  }

  /**
   * Raw send for hostile tests: header {request, flags, size} and payload bytes as given; `size`
   * defaults to the payload length but may lie.
   */
  sendRawMessage(request: number, payload: Buffer = Buffer.alloc(0), fds: number[] = [],
    opts: { flags?: number; size?: number } = {}): void {
    const h = Buffer.alloc(HEADER_SIZE);
    h.writeUInt32LE(request >>> 0, 0);
    h.writeUInt32LE((opts.flags ?? Flag.VERSION) >>> 0, 4);
    h.writeUInt32LE((opts.size ?? payload.length) >>> 0, 8);
    this.sendAll(Buffer.concat([h, payload]), fds);
  }

  /** Serializes control exchanges (one message and its reply at a time). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /**
   * Sends one message. For GET-style requests (`expectReply`), returns the reply payload. For the
   * others, when REPLY_ACK is in use (or needReply is forced), waits for the ack and throws if it
   * is non-zero.
   */
  message(request: number, payload: Buffer = Buffer.alloc(0), fds: number[] = [],
    opts: { expectReply?: boolean; needReply?: boolean; timeoutMs?: number } = {}): Promise<VhostMessage | null> {
    return this.serial(async () => {
      const wantAck = !opts.expectReply && (opts.needReply ?? this.negotiated?.replyAck ?? false);
      const flags = Flag.VERSION | (wantAck ? Flag.NEED_REPLY : 0);
      this.sendRawMessage(request, payload, fds, { flags });
      if (!opts.expectReply && !wantAck) return null;
      const m = await this.readMessage(opts.timeoutMs ?? 5_000);
      if (m.request !== request) {
        for (const f of m.fds) native.close(f);
        throw new VhostUserError(`reply to request ${request} carries request ${m.request}`, request);
      }
      if ((m.flags & 0x3) !== Flag.VERSION || (m.flags & Flag.REPLY) === 0) {
        throw new VhostUserError(`reply to request ${request} has flags 0x${m.flags.toString(16)}`, request);
      }
      if (wantAck) {
        if (m.payload.length !== 8) throw new VhostUserError(`ack for ${request} has size ${m.payload.length}`, request);
        const v = m.payload.readBigUInt64LE(0);
        if (v !== 0n) throw new VhostUserError(`backend nacked request ${request} (${v})`, request);
      }
      return m;
    });
  }

  async getU64(request: number): Promise<bigint> {
    const m = (await this.message(request, Buffer.alloc(0), [], { expectReply: true }))!;
    if (m.payload.length !== 8) throw new VhostUserError(`reply to ${request} has size ${m.payload.length}`, request);
    return m.payload.readBigUInt64LE(0);
  }

  async setU64(request: number, v: bigint, fds: number[] = [], needReply?: boolean): Promise<void> {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(v);
    await this.message(request, b, fds, { needReply });
  }

  static vringState(index: number, num: number): Buffer {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(index, 0);
    b.writeUInt32LE(num, 4);
    return b;
  }

  static vringAddr(index: number, desc: bigint, used: bigint, avail: bigint, flags = 0, log = 0n): Buffer {
    const b = Buffer.alloc(40);
    b.writeUInt32LE(index, 0);
    b.writeUInt32LE(flags, 4);
    b.writeBigUInt64LE(desc, 8);
    b.writeBigUInt64LE(used, 16);
    b.writeBigUInt64LE(avail, 24);
    b.writeBigUInt64LE(log, 32);
    return b;
  }

  /** The SET_MEM_TABLE payload for the guest memory (QEMU sends 8 + 32 × nregions bytes). */
  /** The SET_MEM_TABLE payload for `mem`'s regions (or any list of regions, hostile ones too). */
  static memTable(mem: GuestMemory | { regions: ReadonlyArray<{ gpa: bigint; size: number; uva: bigint; mmapOffset: number }> }): Buffer {
    const b = Buffer.alloc(8 + 32 * mem.regions.length);
    b.writeUInt32LE(mem.regions.length, 0);
    mem.regions.forEach((r, i) => {
      const o = 8 + 32 * i;
      b.writeBigUInt64LE(r.gpa, o);
      b.writeBigUInt64LE(BigInt(r.size), o + 8);
      b.writeBigUInt64LE(r.uva, o + 16);
      b.writeBigUInt64LE(BigInt(r.mmapOffset), o + 24);
    });
    return b;
  }

  // --- the QEMU sequence --------------------------------------------------------------------

  /**
   * QEMU 7.2's order for vhost-user-fs: backend init (GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
   * GET_QUEUE_NUM), SET_OWNER, GET_FEATURES; then at device start SET_FEATURES, SET_MEM_TABLE and
   * per queue SET_VRING_NUM/BASE/ADDR/KICK/CALL(/ERR); then SET_VRING_ENABLE 1.
   */
  async negotiate(opts: NegotiateOptions = {}): Promise<Negotiated> {
    const nq = opts.queues ?? 2;
    const qsize = opts.queueSize ?? 128;
    const wantFeatures = opts.features ??
      (VirtioF.VERSION_1 | VirtioF.PROTOCOL_FEATURES | VirtioF.RING_EVENT_IDX | VirtioF.RING_INDIRECT_DESC);
    const wantProto = opts.protocolFeatures ?? DEFAULT_PROTOCOL_FEATURES;

    const offered = await this.getU64(Req.GET_FEATURES);
    let ackedProto = 0n;
    let offeredProto = 0n;
    let queueNum: number | undefined;
    if (offered & VirtioF.PROTOCOL_FEATURES) {
      offeredProto = await this.getU64(Req.GET_PROTOCOL_FEATURES);
      ackedProto = offeredProto & wantProto;
      await this.setU64(Req.SET_PROTOCOL_FEATURES, ackedProto);
    }
    const replyAck = (opts.replyAck ?? true) && (ackedProto & ProtoF.REPLY_ACK) !== 0n;
    this.negotiated = {
      offeredFeatures: offered, ackedFeatures: 0n, offeredProtocolFeatures: offeredProto,
      ackedProtocolFeatures: ackedProto, replyAck,
    };
    if (ackedProto & ProtoF.MQ) {
      queueNum = Number(await this.getU64(Req.GET_QUEUE_NUM));
      this.negotiated.queueNum = queueNum;
      if (queueNum < nq) throw new VhostUserError(`backend supports ${queueNum} queues, want ${nq}`);
    }
    await this.message(Req.SET_OWNER);
    const offered2 = await this.getU64(Req.GET_FEATURES);
    if (offered2 !== offered) throw new VhostUserError('GET_FEATURES changed between calls');
    if (!(offered & VirtioF.VERSION_1)) throw new VhostUserError('backend does not offer VIRTIO_F_VERSION_1');
    const acked = offered & wantFeatures;
    this.negotiated.ackedFeatures = acked;
    await this.setU64(Req.SET_FEATURES, acked);

    this.mem = new GuestMemory({ memoryMiB: opts.memoryMiB ?? 64, regions: opts.regions ?? 2 });
    const mem = this.mem;
    await this.message(Req.SET_MEM_TABLE, VhostUserFrontend.memTable(mem), mem.regions.map(() => mem.fd));

    const eventIdx = (acked & VirtioF.RING_EVENT_IDX) !== 0n;
    for (let i = 0; i < nq; i++) {
      const q = new Virtqueue(mem, i, qsize, { eventIdx });
      this.queues.push(q);
      await this.message(Req.SET_VRING_NUM, VhostUserFrontend.vringState(i, qsize));
      await this.message(Req.SET_VRING_BASE, VhostUserFrontend.vringState(i, 0));
      await this.message(Req.SET_VRING_ADDR, VhostUserFrontend.vringAddr(i, q.descUva, q.usedUva, q.availUva));
      await this.setU64(Req.SET_VRING_KICK, BigInt(i), [q.kickFd]);
      await this.setU64(Req.SET_VRING_CALL, BigInt(i), [q.callFd]);
      if (opts.vringErr ?? true) await this.setU64(Req.SET_VRING_ERR, BigInt(i), [q.errFd]);
    }
    if ((opts.enable ?? true) && (acked & VirtioF.PROTOCOL_FEATURES)) {
      for (let i = 0; i < nq; i++) {
        await this.message(Req.SET_VRING_ENABLE, VhostUserFrontend.vringState(i, 1));
      }
    }
    // Without REPLY_ACK nothing above was waited for. Like QEMU's enforce_reply(), use a GET
    // request as a barrier so that the backend has processed everything before the first kick.
    if (!replyAck) await this.getU64(Req.GET_FEATURES);
    return this.negotiated;
  }

  /** GET_VRING_BASE: stops the queue and returns the backend's last avail index. */
  async stopQueue(i: number): Promise<number> {
    const m = (await this.message(Req.GET_VRING_BASE, VhostUserFrontend.vringState(i, 0), [],
      { expectReply: true }))!;
    if (m.payload.length !== 8) throw new VhostUserError(`GET_VRING_BASE reply has size ${m.payload.length}`);
    if (m.payload.readUInt32LE(0) !== i) throw new VhostUserError('GET_VRING_BASE reply for another queue');
    return m.payload.readUInt32LE(4);
  }

  /**
   * Starts a stopped queue again the way QEMU does on "cont" after "stop": SET_VRING_NUM,
   * SET_VRING_BASE (the base GET_VRING_BASE returned), SET_VRING_ADDR, SET_VRING_KICK/CALL(/ERR)
   * and SET_VRING_ENABLE. The driver-side ring state is kept.
   */
  async restartQueue(i: number, base: number, opts: { addr?: Buffer; kickFirst?: boolean } = {}): Promise<void> {
    const q = this.queues[i];
    if (!q) throw new Error(`no queue ${i}`);
    await this.message(Req.SET_VRING_NUM, VhostUserFrontend.vringState(i, q.size));
    await this.message(Req.SET_VRING_BASE, VhostUserFrontend.vringState(i, base));
    await this.message(Req.SET_VRING_ADDR, opts.addr ?? VhostUserFrontend.vringAddr(i, q.descUva, q.usedUva, q.availUva));
    // QEMU sends KICK before CALL. With requests already pending, the C virtiofsd then answers
    // before it has a call fd again (GET_VRING_BASE closed it) and panics ("Error writing eventfd:
    // Bad file descriptor"), so by default the call fd goes first.
    if (opts.kickFirst) await this.setU64(Req.SET_VRING_KICK, BigInt(i), [q.kickFd]);
    await this.setU64(Req.SET_VRING_CALL, BigInt(i), [q.callFd]);
    await this.setU64(Req.SET_VRING_ERR, BigInt(i), [q.errFd]);
    if (!opts.kickFirst) await this.setU64(Req.SET_VRING_KICK, BigInt(i), [q.kickFd]);
    if (this.negotiated && (this.negotiated.ackedFeatures & VirtioF.PROTOCOL_FEATURES)) {
      await this.message(Req.SET_VRING_ENABLE, VhostUserFrontend.vringState(i, 1));
    }
    if (!this.negotiated?.replyAck) await this.getU64(Req.GET_FEATURES);
  }

  /** Hostile-input helper: raw descriptors on queue `queue` (see Virtqueue.submitRaw). */
  submitRaw(queue: number, descriptors: Array<RawDescriptor & { slot: number }>, head: number,
    opts: { noKick?: boolean; owned?: bigint[]; slots?: number[] } = {}): number {
    const q = this.queues[queue];
    if (!q) throw new Error(`no queue ${queue}`);
    return q.submitRaw(descriptors, head, opts);
  }

  /** Cheap liveness probe of the control channel: GET_FEATURES answered within timeoutMs. */
  async controlAlive(timeoutMs = 2_000): Promise<boolean> {
    if (this.eof || this.closed) return false;
    try {
      const m = await this.message(Req.GET_FEATURES, Buffer.alloc(0), [], { expectReply: true, timeoutMs });
      return m !== null && m.payload.length === 8;
    } catch {
      return false;
    }
  }

  /** Closes the connection, the queues' eventfds and the guest memory. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopPolling();
    this.poller.close();
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.reject(new Error('frontend closed'));
    }
    for (const q of this.queues) q.close();
    this.queues = [];
    for (const w of this.closeWaiters.splice(0)) w();
    for (const m of this.rxQueue) for (const f of m.fds) native.close(f);
    for (const f of this.rxFds) native.close(f);
    native.close(this.fd);
    if (this.mem) this.mem.close();
    this.mem = null;
  }
}

