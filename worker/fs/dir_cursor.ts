// READDIR of open dirs: where each listing stands and the entries fetched but not handed out.
//
// Decisions:
// - readdir offsets are the filesystem's own d_off cookies, passed through exactly (bigint: ext4's
//   are 63-bit hashes) as in virtiofsd. The session keeps the 64-bit cookie of the dir position;
//   entries fetched but refused by the reply stay buffered (no seek back), so sequential reads
//   never seek. Any other offset (rewinddir, seekdir, a bogus cookie, or the first READDIR after
//   a worker restart, when the kernel fd position is unknown) is one lseek to exactly that
//   cookie, and the listing is whatever the filesystem returns from there (an lseek error is the
//   reply). No READDIR ever re-reads the directory to find a position. One exception keeps
//   upgrades exact: the first READDIR of a worker whose predecessor handed out rounded cookies
//   (Number(d_off)) may carry the rounded form of the journaled position; it seeks to the latter.
// - '..' listed by readdir of the root shows the root's own inode number (lookup of '..' at the
//   root is the root; the host directory above the share is not exposed).
import type { Logger } from '../../shared/log';
import { native, STAT } from '../../shared/native';
import type { DirSink, Entry, Handle } from './filesystem';
import type { DirRecord, FsSession } from './session';
import { FUSE_ROOT_ID } from '../fuse/constants';
import type { Inodes } from './inodes';
import { parseDirentBatch, type Dirent } from './host_dirents';
import * as K from './host_constants';

/** Most entries whose attributes one fstatatDirents call reads (a 4 KiB READDIRPLUS reply holds
 * about 25; a 128 KiB one about 800, read in several calls). */
const STAT_BATCH = 256;

/** In-memory readdir state of an open dir (not part of the session: rebuilt after a restart). */
interface DirCursor {
  /** True when the fd's kernel position plus `pending` correspond to the session's position. */
  synced: boolean;
  /** Entries fetched from the kernel but not handed out yet. */
  pending: Dirent[];
  /** The getdents64 bytes `pending` are views on (their names NUL-terminated in place). */
  pendingBytes: Buffer;
  next: number;
}

const NO_BYTES = Buffer.alloc(0);

/** The d_off cookie (s64, as getdents64 and the session keep it) as the u64 the guest sees. */
function cookieToWire(off: bigint): bigint {
  return BigInt.asUintN(64, off);
}

/** What workers before exact cookies sent the guest for this d_off: the u64 rounded to a double
 * (ext4's hash cookies lose their low bits). */
function legacyWireCookie(off: bigint): bigint {
  return BigInt(Number(BigInt.asUintN(64, off)));
}

export class DirCursors {
  private readonly cursors = new Map<Handle, DirCursor>();
  private readonly direntBuf: Buffer;
  /** fstatatDirents' arguments and output, reused: pairs of (name start, length), and slots. */
  private readonly statIndex = Buffer.alloc(STAT_BATCH * 8);
  private readonly statOut = Buffer.alloc(STAT_BATCH * native.DIRENT_STAT_SLOT);
  /** Per batch position: the pending entry it stats (entries of the batch in order). */
  private readonly statEntry = new Int32Array(STAT_BATCH);
  private statCount = 0;
  private statNext = 0;
  /** Whether something else (the addon's READDIRPLUS: fast_fuse.cc Readdirplus) moved the fd
   * of `fh` since the last ask; asked before each read of it here. */
  movedElsewhere: ((fh: Handle) => boolean) | null = null;

  constructor(private readonly session: FsSession, private readonly inodes: Inodes, private readonly log: Logger,
    bufferSize: number) {
    this.direntBuf = Buffer.alloc(Math.max(4096, bufferSize));
  }

  /** A dir just opened: its fd is at the start, where the session's position 0 is. */
  opened(fh: Handle): void {
    this.cursors.set(fh, { synced: true, pending: [], pendingBytes: NO_BYTES, next: 0 });
  }

  /** A dir of a resumed session: its fd's kernel position is unknown. */
  resumed(fh: Handle): void {
    this.cursors.set(fh, { synced: false, pending: [], pendingBytes: NO_BYTES, next: 0 });
  }

  closed(fh: Handle): void {
    this.cursors.delete(fh);
  }

  /** Something else (the addon's READDIRPLUS) read the fd of `fh`: its position is not where
   * our pending entries left it, so the next read here seeks. */
  movedBy(fh: Handle): void {
    const rt = this.cursors.get(fh);
    if (rt === undefined) return;
    rt.synced = false;
    rt.pending = [];
    rt.pendingBytes = NO_BYTES;
    rt.next = 0;
  }

  clear(): void {
    this.cursors.clear();
  }

  /** READDIR(PLUS) of the open dir `fh` (its record and fd), from the guest's `offset`. */
  readdir(fh: Handle, rec: DirRecord, fd: number, offset: bigint, plus: boolean, sink: DirSink): void {
    let rt = this.cursors.get(fh);
    if (rt === undefined) {
      rt = { synced: false, pending: [], pendingBytes: NO_BYTES, next: 0 };
      this.cursors.set(fh, rt);
    }
    if (this.movedElsewhere?.(fh) === true) this.movedBy(fh);
    // The guest's u64 is the s64 off_t that lseek takes and the session records.
    let cookie = BigInt.asIntN(64, offset);
    if (!rt.synced && cookie !== rec.position && offset === legacyWireCookie(rec.position)) {
      // The first READDIR since this worker started, continuing a listing an older worker
      // served with rounded cookies: the journaled position is the exact one.
      cookie = rec.position;
    }
    let position = rec.position;
    if (!(rt.synced && rec.position === cookie)) {
      // One lseek, exactly like virtiofsd's seekdir; a cookie the filesystem rejects (e.g. a
      // negative off_t) throws its errno before anything changes, so the fd's position and the
      // pending entries still belong to the session's position.
      native.lseek(fd, cookie, K.SEEK_SET);
      rt.pending = [];
      rt.pendingBytes = NO_BYTES;
      rt.next = 0;
      rt.synced = true;
      position = cookie;
    }
    this.statCount = 0;
    this.statNext = 0;
    /** Pending index up to which attributes were read ahead (exclusive). */
    let statAheadEnd = rt.next;
    let accepted = 0;
    /** The last entry the reply took: the new position is its d_off (read once, at the end). */
    let last: Dirent | null = null;
    const dirDev = plus ? this.session.getInode(rec.nodeid)?.dev ?? null : null;
    let rootIno: Buffer | null = null;
    if (rec.nodeid === FUSE_ROOT_ID) {
      rootIno = Buffer.alloc(8);
      rootIno.writeBigUInt64LE(this.session.root.ino);
    }
    try {
      for (;;) {
        if (rt.next >= rt.pending.length) {
          rt.pending = [];
          rt.pendingBytes = NO_BYTES;
          rt.next = 0;
          const n = native.getdents64(fd, this.direntBuf);
          if (n === 0) break;
          const batch = parseDirentBatch(this.direntBuf, n);
          rt.pending = batch.entries;
          rt.pendingBytes = batch.bytes;
          this.statCount = 0;
          this.statNext = 0;
          statAheadEnd = 0;
        }
        const d = rt.pending[rt.next]!;
        // A record the reply cannot take ends it before its lookup (which it would undo).
        if (sink.spaceLeft !== undefined && sink.recordSize !== undefined && sink.recordSize(d.nameLength) > sink.spaceLeft()) break;
        let entry: Entry | null = null;
        if (plus && dirDev !== null && rt.next >= statAheadEnd) statAheadEnd = this.statAhead(fd, rt, dirDev, sink);
        if (plus && !d.isDot && !d.isDotDot) {
          try {
            entry = this.inodes.lookupChildStat(fd, d.bytes, d.nameAt, d.nameLength, this.statOf(rt.next));
          } catch (e) {
            // Gone since getdents (or not ours to look up): a direntplus with nodeid 0 tells
            // the kernel to skip the lookup part, the name is still listed.
            this.log.debug({ err: e, name: d.name.toString() }, 'readdirplus lookup failed');
          }
        }
        let ok: boolean;
        try {
          if (rootIno !== null && d.isDotDot) {
            // '..' of the shared directory is the shared directory itself (as lookup says): do
            // not show the inode number of the host directory above it.
            ok = sink.add(d.name, rootIno, d.type, cookieToWire(d.off), entry);
          } else if (sink.addRaw !== undefined) {
            ok = sink.addRaw(d.bytes, d.at, d.nameAt, d.nameLength, d.type, entry);
          } else {
            ok = sink.add(d.name, d.ino, d.type, cookieToWire(d.off), entry);
          }
        } catch (e) {
          if (entry !== null) this.inodes.forget(entry.nodeid, 1);
          throw e;
        }
        if (!ok) {
          if (entry !== null) this.inodes.forget(entry.nodeid, 1);
          break;
        }
        rt.next++;
        accepted++;
        last = d;
      }
    } catch (e) {
      // Entries already in the sink are a valid (short) reply; report the error only when
      // there are none (as virtiofsd does).
      if (accepted === 0) {
        if (position !== rec.position) this.session.setDirPosition(fh, position);
        throw e;
      }
      this.log.debug({ err: e, fh }, 'readdir stopped early');
    }
    if (last !== null) position = last.off;
    if (position !== rec.position) this.session.setDirPosition(fh, position);
  }

  /** Reads ahead, in one fstatatDirents call, the attributes of the pending entries from
   * rt.next that the reply will still take and whose d_ino is already in our table (same dev as
   * the dir; a mount point's d_ino is not its root's, so that just misses): a repeat listing
   * then costs one fstatat per entry and one addon call per reply. New names are not stat'ed
   * here (their lookup opens them and stats the fd). Returns the pending index the read-ahead
   * covers up to (exclusive). Only entries that fit are read, so no attributes wait in a buffer
   * for a later READDIR. */
  private statAhead(fd: number, rt: DirCursor, dirDev: bigint, sink: DirSink): number {
    let room = sink.spaceLeft?.() ?? Infinity;
    let count = 0;
    let i = rt.next;
    for (; i < rt.pending.length && count < STAT_BATCH; i++) {
      const d = rt.pending[i]!;
      if (sink.recordSize !== undefined) {
        room -= sink.recordSize(d.nameLength);
        if (room < 0) break;
      }
      if (d.isDot || d.isDotDot) continue;
      if (this.session.findInode(dirDev, d.bytes.readBigUInt64LE(d.at)) === undefined) continue;
      this.statIndex.writeInt32LE(d.nameAt, count * 8);
      this.statIndex.writeInt32LE(d.nameLength, count * 8 + 4);
      this.statEntry[count] = i;
      count++;
    }
    // At least the current entry is covered, so the caller moves on even if it does not fit.
    if (i === rt.next) i++;
    if (count > 0) native.fstatatDirents(fd, rt.pendingBytes, this.statIndex, count, this.statOut);
    this.statCount = count;
    this.statNext = 0;
    return i;
  }

  /** The read-ahead stat of pending entry `i` (a view on the reused output: consumed before the
   * next read-ahead), or null when it was not read or failed. Entries are asked for in order. */
  private statOf(i: number): Buffer | null {
    while (this.statNext < this.statCount && this.statEntry[this.statNext]! < i) this.statNext++;
    if (this.statNext >= this.statCount || this.statEntry[this.statNext] !== i) return null;
    const slot = this.statNext * native.DIRENT_STAT_SLOT;
    if (this.statOut.readInt32LE(slot + STAT.SIZE) !== 0) return null;
    return this.statOut.subarray(slot, slot + STAT.SIZE);
  }
}
