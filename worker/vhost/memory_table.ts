// The guest memory table (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG, GET_MAX_MEM_SLOTS): which
// memfd regions are mapped where, under which fd names the keeper holds them, and re-mapping
// them for a restarted worker.
//
// A message that changes the table is validated and mapped completely before anything of the
// old table changes; a nack leaves the table, its fds and the journaled state as they were.
// New regions take slot numbers (fd names mem.<slot>) the current table does not use, so
// registering them never replaces an fd the current table still needs.
import type { Logger } from '../../shared/log';
import { native, C, isNativeError } from '../../shared/native';
import type { FdRegistry } from '../../shared/fd_registry';
import { errorInfo } from '../../shared/errors';
import { faultPoint } from '../../shared/fault_points';
import { GuestMemory, GuestMemoryError, toSafeNumber, type MemoryRegion } from '../virtqueue/guest_memory';
import * as M from './messages';
import type { IncomingMessage } from './transport';
import { VhostError } from './errors';
import { expectFds, peekFd, takeFd } from './message_fds';
import type { NegotiatedFeatures } from './features';

export const MAX_MEM_SLOTS = 32;

/** One region as the session state records it (its fd is mem.<slot> in the keeper). */
export interface SavedRegion { slot: number; guestPhysAddr: number; size: number; userspaceAddr: number; mmapOffset: number }

export class MemoryTable {
  readonly memory = new GuestMemory();
  private readonly regionSlots = new Map<string, number>(); // fdName → slot
  private nextSlotNumber = 0;
  private warnedUnsealable = false;

  constructor(private readonly registry: FdRegistry, private readonly features: NegotiatedFeatures,
    private readonly log: Logger) {}

  /** Re-maps the regions a dead worker had, from the fds the keeper held. */
  restore(regions: SavedRegion[], nextSlot: number): void {
    this.nextSlotNumber = nextSlot;
    for (const r of regions) {
      const fdName = `mem.${r.slot}`;
      const fd = this.registry.get(fdName);
      if (fd === undefined) throw new VhostError(`memory region fd ${fdName} is missing from the fd store`);
      try {
        faultPoint('resume-mmap');
        this.memory.addRegion(fd, fdName, r.guestPhysAddr, r.size, r.userspaceAddr, r.mmapOffset);
      } catch (e) {
        // The frontend shrank an unsealable memfd while no worker ran: mapping it would fault.
        // Serve without the region (requests into it fail) rather than call the state unusable.
        if (!(e instanceof GuestMemoryError)) throw e;
        this.log.error({ fdName, err: errorInfo(e) }, 'a saved guest memory region is no longer valid; dropped');
        this.registry.close(fdName);
        continue;
      }
      this.regionSlots.set(fdName, r.slot);
    }
  }

  saved(): SavedRegion[] {
    return this.memory.list().map((r) => ({
      slot: this.regionSlots.get(r.fdName) ?? -1, guestPhysAddr: r.guestPhysAddr, size: r.size,
      userspaceAddr: r.userspaceAddr, mmapOffset: r.mmapOffset,
    }));
  }

  get nextSlot(): number {
    return this.nextSlotNumber;
  }

  /** SET_MEM_TABLE: replaces the whole table. */
  setTable(msg: IncomingMessage): void {
    const descs = M.parseMemTable(msg.header.request, msg.payload);
    expectFds(msg, descs.length);
    const slots = this.freeSlots(descs.length);
    const mapped: MemoryRegion[] = [];
    try {
      descs.forEach((d, i) => mapped.push(this.prepareRegion(d, peekFd(msg, i), `mem.${slots[i]}`)));
      GuestMemory.checkDisjoint(mapped);
    } catch (e) {
      for (const r of mapped) GuestMemory.unmapRegion(r);
      throw e;
    }
    // Valid: swap. Nothing below fails on frontend input.
    descs.forEach((_, i) => this.registry.replace(`mem.${slots[i]}`, takeFd(msg, i)));
    const old = this.memory.replaceAll(mapped);
    for (const name of old) {
      this.registry.close(name);
      this.regionSlots.delete(name);
    }
    mapped.forEach((r, i) => this.regionSlots.set(r.fdName, slots[i]!));
    this.updateNextSlot();
    for (const r of mapped) this.log.debug({ fdName: r.fdName, gpa: `0x${r.guestPhysAddr.toString(16)}`, size: r.size, uaddr: `0x${r.userspaceAddr.toString(16)}` }, 'memory region mapped');
  }

  /** ADD_MEM_REG: one more region (CONFIGURE_MEM_SLOTS). */
  addRegion(msg: IncomingMessage): void {
    expectFds(msg, 1);
    if (!this.features.hasProtocol(M.ProtocolFeature.CONFIGURE_MEM_SLOTS)) throw new VhostError('ADD_MEM_REG without CONFIGURE_MEM_SLOTS');
    if (this.memory.regionCount >= MAX_MEM_SLOTS) throw new VhostError('ADD_MEM_REG: no free memory slot');
    const r = M.parseSingleRegion(msg.header.request, msg.payload);
    const slot = this.freeSlots(1)[0]!;
    const region = this.prepareRegion(r, peekFd(msg, 0), `mem.${slot}`);
    try {
      GuestMemory.checkDisjoint([...this.memory.list(), region]);
    } catch (e) {
      GuestMemory.unmapRegion(region);
      throw e;
    }
    this.registry.replace(region.fdName, takeFd(msg, 0));
    this.memory.insert(region);
    this.regionSlots.set(region.fdName, slot);
    this.updateNextSlot();
  }

  /** REM_MEM_REG: drops the region of that address and size. */
  removeRegion(msg: IncomingMessage): void {
    // QEMU attaches the region's fd to REM_MEM_REG too; it is not needed (dispatch closes it).
    if (msg.fds.length > 1) throw new VhostError(`REM_MEM_REG with ${msg.fds.length} fds`);
    const r = M.parseSingleRegion(msg.header.request, msg.payload);
    const name = this.memory.removeRegion(toSafeNumber(r.guestPhysAddr), toSafeNumber(r.memorySize));
    if (name === null) throw new VhostError('REM_MEM_REG: no such region');
    this.registry.close(name);
    this.regionSlots.delete(name);
    this.updateNextSlot();
  }

  /** Unmaps every region and closes its fd in the keeper (the connection ended). */
  release(): void {
    for (const name of this.memory.clear()) this.registry.close(name);
  }

  /** The n lowest slot numbers no current region uses. */
  private freeSlots(n: number): number[] {
    const used = new Set(this.regionSlots.values());
    const out: number[] = [];
    for (let s = 0; out.length < n; s++) if (!used.has(s)) out.push(s);
    return out;
  }

  private updateNextSlot(): void {
    // Informational (kept in the journaled state for older readers): one past the highest slot.
    this.nextSlotNumber = Math.max(-1, ...this.regionSlots.values()) + 1;
  }

  /** Validates one region of a message and maps it (not yet in the table; the fd stays the
   * message's). Seals the memfd against shrinking first, so the size checked stays true. */
  private prepareRegion(r: M.MemoryRegionDesc, fd: number, fdName: string): MemoryRegion {
    const gpa = toSafeNumber(r.guestPhysAddr);
    const size = toSafeNumber(r.memorySize);
    const uaddr = toSafeNumber(r.userspaceAddr);
    const off = toSafeNumber(r.mmapOffset);
    if ([gpa, size, uaddr, off].some((x) => Number.isNaN(x))) throw new VhostError('memory region value above 2^53');
    this.sealAgainstShrinking(fd);
    return GuestMemory.mapRegion(fd, fdName, gpa, size, uaddr, off);
  }

  /** F_SEAL_SHRINK on a region's memfd: the frontend cannot truncate guest memory under our
   * mappings later (QEMU's memfd backend seals it already with seal=on). A memfd made without
   * MFD_ALLOW_SEALING, or a file without seal support, is still accepted: warned about once. */
  private sealAgainstShrinking(fd: number): void {
    let why: string;
    try {
      if ((native.getSeals(fd) & C.F_SEAL_SHRINK!) !== 0) return;
      native.addSeals(fd, C.F_SEAL_SHRINK!);
      return;
    } catch (e) {
      if (!isNativeError(e) || (e.code !== 'EPERM' && e.code !== 'EINVAL')) throw e;
      why = e.code === 'EPERM' ? 'its memfd does not allow sealing' : 'its fd does not support seals';
    }
    if (this.warnedUnsealable) return;
    this.warnedUnsealable = true;
    this.log.warn({ why }, 'a guest memory region cannot be sealed against shrinking: if the frontend truncates it, accesses fault (only the first such region is logged)');
  }
}
