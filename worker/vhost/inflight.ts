// Inflight I/O tracking (vhost-user INFLIGHT_SHMFD, GET/SET_INFLIGHT_FD): the memfd whose
// per-queue regions record which heads were popped but not yet used (the layout of one queue's
// region is InflightRegion, worker/virtqueue/split_ring.ts). When the frontend negotiated one,
// its region is shared with it; otherwise each queue is tracked in a memfd of our own. The
// keeper holds either (fd names inflight, inflight.<queue>), so a successor maps the same bytes
// and resubmits what they say is still in flight.
import { native, C, STAT } from '../../shared/native';
import type { FdRegistry } from '../../shared/fd_registry';
import { toSafeNumber } from '../virtqueue/guest_memory';
import { InflightRegion, inflightQueueRegionSize, MAX_QUEUE_SIZE } from '../virtqueue/split_ring';
import * as M from './messages';
import type { IncomingMessage } from './transport';
import { VhostError } from './errors';
import { expectFds, peekFd, takeFd } from './message_fds';
import type { NegotiatedFeatures } from './features';

/** The frontend's inflight region as the session state records it (its fd is `inflight`). */
export interface InflightLayout { numQueues: number; queueSize: number; mmapSize: number }

export class InflightTracking {
  /** The mapping of the frontend's region, and its layout. */
  private frontendBuffer: ArrayBuffer | null = null;
  private frontendLayout: InflightLayout | null = null;
  /** Mappings of our own per-queue inflight memfds (used when the frontend gave none). */
  private readonly ownBuffers = new Map<number, ArrayBuffer>();

  constructor(private readonly maxQueues: number, private readonly registry: FdRegistry,
    private readonly features: NegotiatedFeatures) {}

  /** The frontend gave us a region (GET_INFLIGHT_FD or SET_INFLIGHT_FD). */
  get frontendProvided(): boolean {
    return this.frontendBuffer !== null;
  }

  get layout(): InflightLayout | null {
    return this.frontendLayout;
  }

  /** A restarted worker maps the frontend's region from the fd the keeper held. */
  restore(layout: InflightLayout): void {
    const fd = this.registry.get('inflight');
    if (fd === undefined) throw new VhostError('frontend inflight fd is missing from the fd store');
    this.frontendBuffer = native.mmap(fd, layout.mmapSize, 0, true);
    this.frontendLayout = layout;
  }

  /** The region queue `index` (of `size` entries) tracks its heads in. `fresh`: the queue starts
   * anew, so its region is initialized (a recovered one is kept as it is). */
  regionFor(index: number, size: number, fresh: boolean): InflightRegion | null {
    if (this.frontendBuffer !== null && this.frontendLayout !== null) {
      const per = inflightQueueRegionSize(this.frontendLayout.queueSize);
      if (index >= this.frontendLayout.numQueues || this.frontendLayout.queueSize !== size) {
        throw new VhostError(`inflight region (${this.frontendLayout.numQueues}×${this.frontendLayout.queueSize}) does not cover queue ${index} of size ${size}`);
      }
      const region = new InflightRegion(new DataView(this.frontendBuffer), index * per, size);
      if (fresh && (region.version !== 1 || region.descNum !== size)) region.initialize(this.features.acked);
      return region;
    }
    // No frontend-provided region: track in our own memfd, so a restarted worker can resume.
    const name = `inflight.${index}`;
    const len = inflightQueueRegionSize(size);
    let fd = this.registry.get(name);
    let buf = this.ownBuffers.get(index);
    if (buf !== undefined && buf.byteLength !== len) {
      native.munmap(buf);
      this.ownBuffers.delete(index);
      buf = undefined;
    }
    if (fd !== undefined && buf === undefined && fdSize(fd) === len) {
      // A restarted worker maps the region its predecessor left in the keeper.
      buf = native.mmap(fd, len, 0, true);
      this.ownBuffers.set(index, buf);
    }
    if (fd === undefined || buf === undefined) {
      this.registry.close(name);
      fd = native.memfdCreate(`vfsk-inflight-${index}`, C.MFD_CLOEXEC!);
      native.ftruncate(fd, len);
      this.registry.register(name, fd);
      buf = native.mmap(fd, len, 0, true);
      this.ownBuffers.set(index, buf);
      fresh = true;
    }
    const region = new InflightRegion(new DataView(buf), 0, size);
    if (fresh) region.initialize(this.features.acked);
    return region;
  }

  /** GET_INFLIGHT_FD: creates and installs a fresh region; returns the reply payload and the fd
   * the reply carries (the caller closes it once sent; we keep a dup). */
  getFd(msg: IncomingMessage, queuesRunning: boolean): { payload: Buffer; replyFd: number } {
    expectFds(msg, 0);
    if (!this.features.hasProtocol(M.ProtocolFeature.INFLIGHT_SHMFD)) throw new VhostError('GET_INFLIGHT_FD without INFLIGHT_SHMFD');
    const d = M.parseInflight(msg.header.request, msg.payload);
    if (d.numQueues < 1 || d.numQueues > this.maxQueues) throw new VhostError(`GET_INFLIGHT_FD: ${d.numQueues} queues`);
    if (d.queueSize < 1 || d.queueSize > MAX_QUEUE_SIZE) throw new VhostError(`GET_INFLIGHT_FD: queue size ${d.queueSize}`);
    if (queuesRunning) throw new VhostError('GET_INFLIGHT_FD while queues run');
    const per = inflightQueueRegionSize(d.queueSize);
    const size = per * d.numQueues;
    const fd = native.memfdCreate('vfsk-inflight', C.MFD_CLOEXEC!);
    let ours = -1;
    try {
      native.ftruncate(fd, size);
      ours = native.dup(fd);
      this.install(ours, size, d.numQueues, d.queueSize);
    } catch (e) {
      if (ours >= 0 && this.registry.get('inflight') !== ours) native.close(ours);
      native.close(fd);
      throw e;
    }
    for (let q = 0; q < d.numQueues; q++) new InflightRegion(new DataView(this.frontendBuffer!), q * per, d.queueSize).initialize(this.features.acked);
    const payload = M.encodeInflight({ mmapSize: BigInt(size), mmapOffset: 0n, numQueues: d.numQueues, queueSize: d.queueSize });
    return { payload, replyFd: fd };
  }

  /** SET_INFLIGHT_FD: installs the frontend's region (after a reconnect the frontend hands back
   * the region a backend filled before). */
  setFd(msg: IncomingMessage, queuesRunning: boolean): void {
    expectFds(msg, 1);
    if (!this.features.hasProtocol(M.ProtocolFeature.INFLIGHT_SHMFD)) throw new VhostError('SET_INFLIGHT_FD without INFLIGHT_SHMFD');
    const d = M.parseInflight(msg.header.request, msg.payload);
    const size = toSafeNumber(d.mmapSize);
    const offset = toSafeNumber(d.mmapOffset);
    if (d.numQueues < 1 || d.numQueues > this.maxQueues || d.queueSize < 1 || d.queueSize > MAX_QUEUE_SIZE) {
      throw new VhostError(`SET_INFLIGHT_FD: ${d.numQueues} queues of ${d.queueSize}`);
    }
    if (offset !== 0) throw new VhostError('SET_INFLIGHT_FD: non-zero mmap offset is not supported');
    if (!(size >= inflightQueueRegionSize(d.queueSize) * d.numQueues)) throw new VhostError(`SET_INFLIGHT_FD: region of ${size} bytes is too small`);
    // Running rings hold views on the current region.
    if (queuesRunning) throw new VhostError('SET_INFLIGHT_FD while queues run');
    this.install(peekFd(msg, 0), size, d.numQueues, d.queueSize);
    takeFd(msg, 0);
  }

  /** Unmaps every region and closes its fd in the keeper (the connection ended). */
  release(): void {
    if (this.frontendBuffer !== null) native.munmap(this.frontendBuffer);
    this.frontendBuffer = null;
    for (const b of this.ownBuffers.values()) native.munmap(b);
    this.ownBuffers.clear();
    this.registry.closePrefix('inflight');
  }

  /** Maps the inflight region first (a failure changes nothing), then swaps it in. The fd must
   * hold `size` bytes: a mapping past its end faults. Takes fd only on success. */
  private install(fd: number, size: number, numQueues: number, queueSize: number): void {
    const st = Buffer.alloc(STAT.SIZE);
    native.fstatat(fd, '', C.AT_EMPTY_PATH!, st);
    if ((Number(st.readBigUInt64LE(STAT.mode)) & C.S_IFMT!) !== C.S_IFREG) throw new VhostError('inflight fd is not a regular file or memfd');
    if (st.readBigUInt64LE(STAT.size) < BigInt(size)) throw new VhostError(`inflight fd holds ${st.readBigUInt64LE(STAT.size)} bytes, not the ${size} announced`);
    const buffer = native.mmap(fd, size, 0, true);
    this.registry.replace('inflight', fd);
    if (this.frontendBuffer !== null) native.munmap(this.frontendBuffer);
    this.frontendBuffer = buffer;
    this.frontendLayout = { numQueues, queueSize, mmapSize: size };
  }
}

function fdSize(fd: number): number {
  const st = Buffer.alloc(STAT.SIZE);
  native.fstatat(fd, '', C.AT_EMPTY_PATH!, st);
  return Number(st.readBigUInt64LE(STAT.size));
}
