// Fake "guest memory" for the test frontend: one memfd, mapped once in this process, exposed to
// the backend as up to two vhost-user memory regions the way QEMU does for a q35 guest with RAM
// below and above the 4 GiB PCI hole:
//   region 0: guest physical [0, N/2)            at memfd offset 0
//   region 1: guest physical [4 GiB, 4 GiB+N/2)  at memfd offset N/2  (mmap_offset = N/2)
// Each region also has a made-up but consistent "QEMU user address" (userspace_addr); the vring
// addresses sent with SET_VRING_ADDR are such user addresses, descriptor addresses are guest
// physical. Region user addresses are not contiguous, so a backend that translates with the
// wrong region (or adds offsets twice) reads the wrong bytes or fails.
import { native, C } from '../../shared/native';

export interface MemRegion {
  /** Guest physical address of the region's first byte. */
  gpa: bigint;
  size: number;
  /** The frontend's (QEMU's) virtual address of the region, as sent in the memory table. */
  uva: bigint;
  /** Offset of the region within the memfd (the memory table's mmap_offset). */
  mmapOffset: number;
}

export interface GuestMemoryOptions {
  /** Total size; split evenly between regions. Default 64 MiB. */
  memoryMiB?: number;
  /** 1 or 2 regions. Default 2. */
  regions?: 1 | 2;
}

const PAGE = 4096;
export const HIGH_GPA_BASE = 0x1_0000_0000n;
const UVA_BASES = [0x7f12_3400_0000n, 0x7f56_7800_0000n];

interface FreeRange { start: number; end: number } // memfd offsets, [start, end)

export class GuestMemory {
  readonly fd: number;
  readonly size: number;
  readonly regions: MemRegion[];
  /** The whole memfd, mapped read-write. */
  readonly buffer: ArrayBuffer;
  readonly bytes: Buffer;
  readonly view: DataView;
  private readonly free: FreeRange[][];
  private readonly allocated = new Map<number, { region: number; start: number; end: number }>();
  private nextRegion = 0;
  private closed = false;

  constructor(opts: GuestMemoryOptions = {}) {
    const mib = opts.memoryMiB ?? 64;
    const nregions = opts.regions ?? 2;
    this.size = mib * 1024 * 1024;
    if (this.size % (nregions * 2 * 1024 * 1024) !== 0) {
      throw new RangeError('memoryMiB must be a multiple of 2 MiB per region');
    }
    this.fd = native.memfdCreate('vfsk-test-guest-ram', C.MFD_CLOEXEC ?? 1);
    try {
      // ftruncate via the addon (memfd is a regular fd).
      native.ftruncate(this.fd, this.size);
      this.buffer = native.mmap(this.fd, this.size, 0, true);
    } catch (e) {
      native.close(this.fd);
      throw e;
    }
    this.bytes = Buffer.from(this.buffer);
    this.view = new DataView(this.buffer);
    const per = this.size / nregions;
    this.regions = [];
    this.free = [];
    for (let i = 0; i < nregions; i++) {
      this.regions.push({
        gpa: i === 0 ? 0n : HIGH_GPA_BASE,
        size: per,
        uva: UVA_BASES[i],
        mmapOffset: i * per,
      });
      // Keep guest physical page 0 unused so that a zero address is never valid data.
      const start = i * per + (i === 0 ? PAGE : 0);
      this.free.push([{ start, end: (i + 1) * per }]);
    }
  }

  // --- translation ------------------------------------------------------------------------

  /** The region that holds [gpa, gpa+len), or -1. */
  regionOfGpa(gpa: bigint, len = 1): number {
    for (let i = 0; i < this.regions.length; i++) {
      const r = this.regions[i];
      if (gpa >= r.gpa && gpa + BigInt(len) <= r.gpa + BigInt(r.size)) return i;
    }
    return -1;
  }

  /** memfd offset of a guest physical address range; throws when it is not inside one region. */
  offsetOfGpa(gpa: bigint, len = 1): number {
    const i = this.regionOfGpa(gpa, len);
    if (i < 0) throw new RangeError(`gpa 0x${gpa.toString(16)}+${len} is not inside guest memory`);
    const r = this.regions[i];
    return r.mmapOffset + Number(gpa - r.gpa);
  }

  gpaOfOffset(off: number): bigint {
    for (const r of this.regions) {
      if (off >= r.mmapOffset && off < r.mmapOffset + r.size) return r.gpa + BigInt(off - r.mmapOffset);
    }
    throw new RangeError(`offset ${off} is outside guest memory`);
  }

  /** The frontend ("QEMU") user address of a guest physical address, for SET_VRING_ADDR. */
  uvaOfGpa(gpa: bigint): bigint {
    const i = this.regionOfGpa(gpa);
    if (i < 0) throw new RangeError(`gpa 0x${gpa.toString(16)} is not inside guest memory`);
    const r = this.regions[i];
    return r.uva + (gpa - r.gpa);
  }

  /** Returns the end (exclusive) of the region containing gpa. */
  regionEndGpa(region: number): bigint {
    const r = this.regions[region];
    return r.gpa + BigInt(r.size);
  }

  // --- access -----------------------------------------------------------------------------

  /** A live view (no copy) of guest memory. */
  slice(gpa: bigint, len: number): Buffer {
    const off = this.offsetOfGpa(gpa, Math.max(len, 1));
    return this.bytes.subarray(off, off + len);
  }
  read(gpa: bigint, len: number): Buffer {
    return Buffer.from(this.slice(gpa, len));
  }
  write(gpa: bigint, data: Buffer): void {
    data.copy(this.slice(gpa, data.length));
  }
  fill(gpa: bigint, len: number, value: number): void {
    this.slice(gpa, len).fill(value);
  }

  // --- allocation ---------------------------------------------------------------------------

  /**
   * Allocates `len` bytes (zeroed) inside one region. Without a region hint the regions are used
   * in turn, so that consecutive buffers of one request land in different regions.
   */
  alloc(len: number, opts: { align?: number; region?: number } = {}): bigint {
    if (this.closed) throw new Error('guest memory is closed');
    const align = opts.align ?? 16;
    const size = Math.max(len, 1);
    const order: number[] = [];
    if (opts.region !== undefined) {
      order.push(opts.region);
    } else {
      for (let k = 0; k < this.regions.length; k++) order.push((this.nextRegion + k) % this.regions.length);
      this.nextRegion = (this.nextRegion + 1) % this.regions.length;
    }
    for (const ri of order) {
      const list = this.free[ri];
      for (let i = 0; i < list.length; i++) {
        const fr = list[i];
        const start = Math.ceil(fr.start / align) * align;
        const end = start + size;
        if (end > fr.end) continue;
        // Split the free range.
        const pieces: FreeRange[] = [];
        if (start > fr.start) pieces.push({ start: fr.start, end: start });
        if (end < fr.end) pieces.push({ start: end, end: fr.end });
        list.splice(i, 1, ...pieces);
        this.bytes.fill(0, start, end);
        this.allocated.set(start, { region: ri, start, end });
        return this.gpaOfOffset(start);
      }
    }
    throw new Error(`guest memory exhausted allocating ${len} bytes`);
  }

  /** Allocates and fills. */
  allocWith(data: Buffer, opts: { align?: number; region?: number } = {}): bigint {
    const gpa = this.alloc(data.length, opts);
    this.write(gpa, data);
    return gpa;
  }

  freeGpa(gpa: bigint): void {
    if (this.closed) return;
    const off = this.offsetOfGpa(gpa);
    const a = this.allocated.get(off);
    if (!a) throw new Error(`free of unallocated gpa 0x${gpa.toString(16)}`);
    this.allocated.delete(off);
    const list = this.free[a.region];
    let idx = list.findIndex((fr) => fr.start > a.start);
    if (idx < 0) idx = list.length;
    list.splice(idx, 0, { start: a.start, end: a.end });
    // Coalesce with neighbours.
    if (idx + 1 < list.length && list[idx].end === list[idx + 1].start) {
      list[idx].end = list[idx + 1].end;
      list.splice(idx + 1, 1);
    }
    if (idx > 0 && list[idx - 1].end === list[idx].start) {
      list[idx - 1].end = list[idx].end;
      list.splice(idx, 1);
    }
  }

  /** Bytes currently allocated (to check that requests give their buffers back). */
  allocatedBytes(): number {
    let n = 0;
    for (const a of this.allocated.values()) n += a.end - a.start;
    return n;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.munmap(this.buffer);
    native.close(this.fd);
  }
}
