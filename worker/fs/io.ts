// READ and WRITE of open files. The payload moves between the file and the guest memory
// segments in the addon and never passes through JS.
//
// Decisions:
// - Small requests first try the page cache on the JS thread (preadv2/pwritev2 RWF_NOWAIT): a
//   hit answers at once, without the two threadpool hand-offs; what would block goes to the
//   threadpool.
// - What a file's filesystem refuses is learned once per open file: without NOWAIT reads
//   (tmpfs) a memory-backed file is read plainly on the JS thread, others go to the threadpool;
//   without NOWAIT buffered writes (ext4) writes go straight to the threadpool.
// - Bytes already copied are a valid short answer even when the rest fails, as with preadv.
import { C, native, STAT } from '../../shared/native';
import type { IoSegment } from '../../shared/native';
import { FsError, type Handle, type NodeId } from './filesystem';
import type { FileRecord, FsSession } from './session';
import type { FdLifetime } from './fd_lifetime';
import { fileRecord } from './records';
import { procFd, statFd } from './inodes';
import * as K from './host_constants';

/** READs/WRITEs up to this size first try RWF_NOWAIT on the JS thread; larger ones go straight
 * to the threadpool, so copying a big cached range never holds up the event loop. */
const SYNC_IO_MAX = 128 * 1024;
const RWF_NOWAIT = C.RWF_NOWAIT;
/** statfs f_type of filesystems whose file data is memory (linux/magic.h). */
const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

/** File offsets/sizes arrive as numbers; the addon takes exact integers up to 2^53. */
export function checkOffset(v: number, what: string): number {
  if (!Number.isSafeInteger(v) || v < 0) throw new FsError(K.EINVAL, `${what} ${v} out of range`);
  return v;
}

/** Clears S_ISUID, and S_ISGID when group-exec is set (the kernel's should_remove_suid rule),
 * for HANDLE_KILLPRIV_V2 after a write or truncate: virtiofsd gets this by dropping CAP_FSETID
 * around the call; we are privileged, so we clear the bits ourselves afterwards. */
export function killSuidGid(inodeFd: number): void {
  const mode = statFd(inodeFd).readUInt32LE(STAT.mode);
  let kill = mode & K.S_ISUID;
  if ((mode & K.S_ISGID) && (mode & K.S_IXGRP)) kill |= K.S_ISGID;
  if (kill) {
    const link = procFd(inodeFd);
    native.fchmodat(link.dirFd, link.name, mode & 0o7777 & ~kill, 0);
  }
}

export class FileIo {
  /** Per open file, once learned: the preadv2 flags of the synchronous READ attempt (0 on
   * tmpfs), or null when there is none (RWF_NOWAIT unsupported). Unset: RWF_NOWAIT. */
  private readonly syncReadFlags = new WeakMap<FileRecord, number | null>();
  /** Open files whose filesystem answered EOPNOTSUPP to RWF_NOWAIT writes. */
  private readonly noWaitWriteUnsupported = new WeakSet<FileRecord>();

  constructor(private readonly session: FsSession, private readonly fds: FdLifetime) {}

  /** The open file and the guest segments of a READ or WRITE (validated). */
  private ioTarget(nodeid: NodeId, fh: Handle, offset: number, size: number, segments: IoSegment[]): { rec: FileRecord; segs: IoSegment[] } {
    const rec = fileRecord(this.session, nodeid, fh);
    checkOffset(offset, 'offset');
    return { rec, segs: trimSegments(segments, size) };
  }

  /** Tries the page cache on the JS thread first (preadv2 RWF_NOWAIT; a plain read on tmpfs):
   * a hit answers at once, without the two threadpool hand-offs. What would block goes to the
   * threadpool. Errors always arrive as a rejection. */
  read(nodeid: NodeId, fh: Handle, offset: number, size: number, segments: IoSegment[]): number | Promise<number> {
    let rec: FileRecord;
    let segs: IoSegment[];
    let done = 0;
    try {
      ({ rec, segs } = this.ioTarget(nodeid, fh, offset, size, segments));
      let flags = this.syncReadFlags.get(rec);
      if (flags === undefined) flags = RWF_NOWAIT;
      if (size <= SYNC_IO_MAX && flags !== null) {
        // The fd cannot be closed under us: closing also happens only on this thread.
        const fd = this.fds.get(rec.fdName);
        const total = segmentsLength(segs);
        // A short count means EOF or a partly cached range; the next attempt tells which
        // (0 = EOF, -EAGAIN = the rest must wait for the disk). Each round makes progress.
        while (done < total) {
          const n = native.preadv2Sync(fd, offset + done, segs, flags);
          if (n === 0) return done;
          if (n < 0) {
            if (n !== -K.EOPNOTSUPP || flags !== RWF_NOWAIT) break;
            // No NOWAIT reads here (tmpfs has none). tmpfs/ramfs data is memory: a plain read
            // only copies pages and can stall only on swap-in, as our own heap can.
            flags = memoryBacked(fd) ? 0 : null;
            this.syncReadFlags.set(rec, flags);
            if (flags === null) break;
            continue;
          }
          done += n;
          segs = skipSegments(segs, n);
        }
        if (done >= total) return done;
      }
    } catch (e) {
      if (done > 0) return done; // as a short preadv: the bytes already copied are the answer
      return Promise.reject(e);
    }
    const rest = this.fds.runAsync<number>([rec.fdName], ([fd], cb) => native.preadv(fd, offset + done, segs, cb));
    if (done === 0) return rest;
    // Bytes already copied stay a valid (short) answer even if the rest fails, as with preadv.
    return rest.then((n) => done + n, () => done);
  }

  /** Like read(): a pwritev2 RWF_NOWAIT attempt on the JS thread, then the threadpool. Many
   * filesystems (ext4) refuse buffered NOWAIT writes with EOPNOTSUPP; that is remembered per
   * open file so later writes go straight to the threadpool. */
  write(nodeid: NodeId, fh: Handle, offset: number, size: number, segments: IoSegment[],
    writeFlags: number): number | Promise<number> {
    let rec: FileRecord;
    let segs: IoSegment[];
    let done = 0;
    try {
      ({ rec, segs } = this.ioTarget(nodeid, fh, offset, size, segments));
      // O_SYNC/O_DSYNC: the flush after the copy would block the event loop.
      if (size <= SYNC_IO_MAX && (rec.flags & (K.O_SYNC | K.O_DSYNC)) === 0 && !this.noWaitWriteUnsupported.has(rec)) {
        const fd = this.fds.get(rec.fdName);
        const n = native.pwritev2Sync(fd, offset, segs, RWF_NOWAIT);
        if (n === -K.EOPNOTSUPP) this.noWaitWriteUnsupported.add(rec);
        // A short write is a valid answer (as from pwritev); an O_APPEND one must be, since
        // appending the rest separately could interleave with another appender.
        if (n >= 0 && (n === segmentsLength(segs) || n === 0 || (rec.flags & K.O_APPEND) !== 0)) {
          return this.afterWrite(nodeid, n, writeFlags);
        }
        if (n > 0) {
          done = n;
          segs = skipSegments(segs, n);
        }
      }
    } catch (e) {
      return Promise.reject(e);
    }
    return this.fds.runAsync<number>([rec.fdName], ([fd], cb) => native.pwritev(fd, offset + done, segs, cb))
      .then((n) => this.afterWrite(nodeid, done + n, writeFlags),
        (e: unknown) => {
          if (done === 0) throw e;
          return this.afterWrite(nodeid, done, writeFlags);
        });
  }

  private afterWrite(nodeid: NodeId, n: number, writeFlags: number): number {
    if (writeFlags & K.FUSE_WRITE_KILL_SUIDGID) {
      const inode = this.session.getInode(nodeid);
      if (inode !== undefined && inode.fileType === K.S_IFREG) killSuidGid(this.fds.get(inode.fdName));
    }
    return n;
  }
}

function memoryBacked(fd: number): boolean {
  try {
    const type = native.fstatfs(fd).type;
    return type === TMPFS_MAGIC || type === RAMFS_MAGIC;
  } catch {
    return false;
  }
}

function segmentsLength(segments: IoSegment[]): number {
  let n = 0;
  for (const s of segments) n += s.length;
  return n;
}

/** The segments after their first `n` bytes. */
function skipSegments(segments: IoSegment[], n: number): IoSegment[] {
  let i = 0;
  while (i < segments.length && n >= segments[i].length) n -= segments[i++].length;
  if (i >= segments.length) return [];
  const rest = segments.slice(i);
  if (n > 0) rest[0] = { buffer: rest[0].buffer, offset: rest[0].offset + n, length: rest[0].length - n };
  return rest;
}

/** The first `size` bytes of the segments (the server may hand buffers larger than the request). */
function trimSegments(segments: IoSegment[], size: number): IoSegment[] {
  let left = size;
  const out: IoSegment[] = [];
  for (const s of segments) {
    if (left <= 0) break;
    if (s.length <= left) {
      out.push(s);
      left -= s.length;
    } else {
      out.push({ buffer: s.buffer, offset: s.offset, length: left });
      left = 0;
    }
  }
  return out;
}
