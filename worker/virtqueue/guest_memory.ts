// Guest memory as the frontend described it (SET_MEM_TABLE / ADD_MEM_REG): each region is
// mapped once, and every guest physical or frontend-virtual address is translated with bounds
// checks. Addresses are JS numbers: guest physical and x86-64 user addresses fit in 2^53, and
// anything larger is simply "not in guest memory".
import { native, C, STAT, type IoSegment } from '../../shared/native';
import { GuestError } from '../../shared/errors';

/** A guest address or length outside the guest's memory. */
export class GuestMemoryError extends GuestError {}

export interface MemoryRegion {
  guestPhysAddr: number;
  size: number;
  userspaceAddr: number;
  mmapOffset: number;
  /** The mapping covers [0, mmapOffset + size) of the region's fd. */
  buffer: ArrayBuffer;
  bytes: Uint8Array;
  view: DataView;
  /** Name of the region's fd in the FdRegistry. */
  fdName: string;
}

export function toSafeNumber(v: bigint): number {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : Number.NaN;
}

export class GuestMemory {
  private regions: MemoryRegion[] = [];

  get regionCount(): number {
    return this.regions.length;
  }

  list(): readonly MemoryRegion[] {
    return this.regions;
  }

  /**
   * Validates a region and maps it, without adding it to the table (see insert/replaceAll):
   * every value in range, and the fd a regular file (memfds are) that really holds
   * [mmapOffset, mmapOffset + size). A mapping past the end of its file raises SIGBUS on the
   * first access, so a frontend could otherwise kill us with a descriptor. Does not take the fd.
   */
  static mapRegion(fd: number, fdName: string, guestPhysAddr: number, size: number, userspaceAddr: number, mmapOffset: number): MemoryRegion {
    for (const v of [guestPhysAddr, size, userspaceAddr, mmapOffset]) {
      if (!Number.isSafeInteger(v) || v < 0) throw new GuestMemoryError(`region value out of range: ${v}`);
    }
    if (size === 0) throw new GuestMemoryError('empty memory region');
    if (!Number.isSafeInteger(guestPhysAddr + size) || !Number.isSafeInteger(mmapOffset + size) || !Number.isSafeInteger(userspaceAddr + size)) {
      throw new GuestMemoryError('memory region wraps');
    }
    const st = Buffer.alloc(STAT.SIZE);
    native.fstatat(fd, '', C.AT_EMPTY_PATH!, st);
    const mode = Number(st.readBigUInt64LE(STAT.mode));
    if ((mode & C.S_IFMT!) !== C.S_IFREG) {
      throw new GuestMemoryError(`memory region fd is not a regular file or memfd (mode 0o${mode.toString(8)})`);
    }
    const fileSize = st.readBigUInt64LE(STAT.size);
    if (BigInt(mmapOffset) + BigInt(size) > fileSize) {
      throw new GuestMemoryError(`memory region [${mmapOffset}, ${mmapOffset + size}) extends past the end of its ${fileSize}-byte fd`);
    }
    const buffer = native.mmap(fd, mmapOffset + size, 0, true);
    return { guestPhysAddr, size, userspaceAddr, mmapOffset, buffer, bytes: new Uint8Array(buffer), view: new DataView(buffer), fdName };
  }

  static unmapRegion(r: MemoryRegion): void {
    native.munmap(r.buffer);
  }

  /** Throws unless the regions' guest physical ranges are pairwise disjoint. */
  static checkDisjoint(regions: readonly MemoryRegion[]): void {
    const sorted = [...regions].sort((a, b) => a.guestPhysAddr - b.guestPhysAddr);
    for (let i = 1; i < sorted.length; i++) {
      const a = sorted[i - 1]!;
      const b = sorted[i]!;
      if (b.guestPhysAddr < a.guestPhysAddr + a.size) {
        throw new GuestMemoryError(`memory region at gpa 0x${b.guestPhysAddr.toString(16)} overlaps another`);
      }
    }
  }

  /** Maps fd and adds a region. Overlapping regions are refused (nothing changes then). Does not
   * take the fd. */
  addRegion(fd: number, fdName: string, guestPhysAddr: number, size: number, userspaceAddr: number, mmapOffset: number): MemoryRegion {
    const region = GuestMemory.mapRegion(fd, fdName, guestPhysAddr, size, userspaceAddr, mmapOffset);
    try {
      this.insert(region);
    } catch (e) {
      GuestMemory.unmapRegion(region);
      throw e;
    }
    return region;
  }

  /** Adds a mapped region (mapRegion); throws, changing nothing, if it overlaps one we have. */
  insert(region: MemoryRegion): void {
    GuestMemory.checkDisjoint([...this.regions, region]);
    this.regions.push(region);
    this.regions.sort((a, b) => a.guestPhysAddr - b.guestPhysAddr);
  }

  /** Swaps in a whole validated table (checkDisjoint): unmaps the old regions and returns their
   * fd names. */
  replaceAll(regions: readonly MemoryRegion[]): string[] {
    GuestMemory.checkDisjoint(regions);
    const old = this.clear();
    this.regions = [...regions].sort((a, b) => a.guestPhysAddr - b.guestPhysAddr);
    return old;
  }

  /** Unmaps and forgets the region with this gpa/size; returns its fd name. */
  removeRegion(guestPhysAddr: number, size: number): string | null {
    const i = this.regions.findIndex((r) => r.guestPhysAddr === guestPhysAddr && r.size === size);
    if (i < 0) return null;
    const [r] = this.regions.splice(i, 1);
    native.munmap(r!.buffer);
    return r!.fdName;
  }

  clear(): string[] {
    const names = this.regions.map((r) => r.fdName);
    for (const r of this.regions) native.munmap(r.buffer);
    this.regions = [];
    return names;
  }

  /** The region holding [gpa, gpa+len), and the offset of gpa inside its mapping. */
  findGuest(gpa: number, len: number): { region: MemoryRegion; offset: number } | null {
    for (const r of this.regions) {
      if (gpa >= r.guestPhysAddr && gpa + len <= r.guestPhysAddr + r.size) {
        return { region: r, offset: r.mmapOffset + (gpa - r.guestPhysAddr) };
      }
    }
    return null;
  }

  /** Translation of a frontend (QEMU) virtual address range, used for the vring addresses. */
  findUser(uaddr: number, len: number): { region: MemoryRegion; offset: number } | null {
    for (const r of this.regions) {
      if (uaddr >= r.userspaceAddr && uaddr + len <= r.userspaceAddr + r.size) {
        return { region: r, offset: r.mmapOffset + (uaddr - r.userspaceAddr) };
      }
    }
    return null;
  }

  /** Appends the iovecs for [gpa, gpa+len) to out; the range may span adjacent regions.
   * Throws GuestMemoryError when any byte is outside guest memory. */
  appendSegments(gpa: number, len: number, out: IoSegment[]): void {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(gpa + len)) {
      throw new GuestMemoryError(`address out of range: ${gpa}+${len}`);
    }
    let addr = gpa;
    let left = len;
    while (left > 0) {
      let found: MemoryRegion | null = null;
      for (const r of this.regions) {
        if (addr >= r.guestPhysAddr && addr < r.guestPhysAddr + r.size) { found = r; break; }
      }
      if (found === null) throw new GuestMemoryError(`guest address 0x${addr.toString(16)} is not in guest memory`);
      const avail = found.guestPhysAddr + found.size - addr;
      const take = Math.min(avail, left);
      out.push({ buffer: found.buffer, offset: found.mmapOffset + (addr - found.guestPhysAddr), length: take });
      addr += take;
      left -= take;
    }
  }
}

/** Copies up to `dst.length - dstStart` bytes out of guest segments, starting `skip` bytes
 * into them. Returns bytes copied. */
export function gatherFromSegments(segments: readonly IoSegment[], skip: number, dst: Uint8Array, dstStart = 0): number {
  let copied = 0;
  let want = dst.length - dstStart;
  for (const s of segments) {
    if (want === 0) break;
    if (skip >= s.length) { skip -= s.length; continue; }
    const n = Math.min(s.length - skip, want);
    dst.set(new Uint8Array(s.buffer, s.offset + skip, n), dstStart + copied);
    copied += n;
    want -= n;
    skip = 0;
  }
  return copied;
}

/** Copies src into guest segments starting `skip` bytes in; returns bytes written (short when
 * the segments are too small). */
export function scatterToSegments(segments: readonly IoSegment[], skip: number, src: Uint8Array): number {
  let written = 0;
  for (const s of segments) {
    if (written === src.length) break;
    if (skip >= s.length) { skip -= s.length; continue; }
    const n = Math.min(s.length - skip, src.length - written);
    new Uint8Array(s.buffer, s.offset + skip, n).set(src.subarray(written, written + n));
    written += n;
    skip = 0;
  }
  return written;
}

/** The sub-list of segments covering [skip, skip+len) of the concatenation. */
export function sliceSegments(segments: readonly IoSegment[], skip: number, len: number): IoSegment[] {
  const out: IoSegment[] = [];
  for (const s of segments) {
    if (len === 0) break;
    if (skip >= s.length) { skip -= s.length; continue; }
    const n = Math.min(s.length - skip, len);
    out.push({ buffer: s.buffer, offset: s.offset + skip, length: n });
    len -= n;
    skip = 0;
  }
  return out;
}
