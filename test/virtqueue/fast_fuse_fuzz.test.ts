// Fuzz of the addon's FUSE fast server (native/src/fast_fuse.cc), in process: random and mutated
// GETATTR, READ, WRITE, LOOKUP, FLUSH, GETXATTR, SETATTR, OPEN(DIR), RELEASE(DIR), CREATE,
// MKDIR, UNLINK, RMDIR and READDIRPLUS requests (wrong lengths, names without NUL, '/', '..', huge
// offsets and sizes, unknown ids, odd buffer splits) through the addon's ring with the server
// attached, over a real directory. Whatever it serves must be a well-formed reply to that
// request (length, unique, no error) that fits the guest's buffers; everything else must come
// back to JavaScript untouched in its readable part; nothing crashes.
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { native, C, STAT } from '../../shared/native';
import { GuestMemory } from '../../worker/virtqueue/guest_memory';
import { ChainError, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../../worker/virtqueue/split_ring';
import { NativeSplitRing } from '../../worker/virtqueue/native_ring';
import { StateJournal, DATA_START } from '../../worker/state/journal';
import { decodePayload } from '../../worker/state/records';
import { fuzzSeed, makePrng } from '../helpers/prng';
import { parseDirents } from '../../worker/fs/host_dirents';

const GPA = 0x10000;
const UADDR = 0x7f00_0000_0000;
const SIZE = 1 << 20;
const QSIZE = 8;
const DESC = 0x1000;
const AVAIL = 0x2000;
const USED = 0x3000;
const REQ = 0x10000;   // request bytes (readable)
const REPLY = 0x80000; // reply buffers (writable), past the largest request
const ITERATIONS = 8000;
// LOOKUP, GETATTR, SETATTR, MKDIR, UNLINK, RMDIR, OPEN, READ, WRITE, RELEASE, GETXATTR, FLUSH, OPENDIR, RELEASEDIR, CREATE, READDIRPLUS
const OPS = [1, 3, 4, 9, 10, 11, 14, 15, 16, 17, 18, 20, 22, 23, 25, 27, 29, 35, 44, 46] as const;
/** A directory of known inodes (each named by its real handle, no fd in the table), open as
 * RDIR_FH: READDIRPLUS's. */
const NODE_RDIR = 6;
const RDIR_FH = 50;
const RDIR_FIRST_NODEID = 200;
const RDIR_NAMES = ['a', 'bb', 'c'.repeat(40), 'dir', 'e', 'f'.repeat(200), 'g', 'h', 'i', 'j', 'k', 'l'];
/** The nodeid the addon's first new inode takes (setNextNodeId: CREATE's). */
const FIRST_NEW_NODEID = 1000;
/** A directory under the root, named by a handle: OPENDIR's and RELEASEDIR's. */
const NODE_DIR = 5;
const ENODATA = 61, ERANGE = 34, ENOENT = 2, ENXIO = 6;
const NODE_FILE = 2;
const FH = 7;
/** The fh the addon's first OPEN takes (setNextFh). */
const FIRST_OPEN_FH = 100;
/** passthrough.ts PASS_OPEN_FLAGS: O_ACCMODE, O_APPEND, O_NONBLOCK, O_DSYNC, O_SYNC, O_NOATIME,
 * O_TRUNC, O_LARGEFILE. */
const PASS_OPEN_FLAGS = 0o3 | 0o2000 | 0o4000 | 0o10000 | 0o4010000 | 0o1000000 | 0o1000 | 0o100000;

/** A temp dir with `files` (name → content), its O_PATH fd, and one region of guest memory;
 * at the test's end the memory goes, the fds in `owned` are closed and the dir removed. */
function fixture(t: Test, prefix: string, files: Record<string, string | Buffer>) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), content);
  const rootFd = native.openat(C.AT_FDCWD!, dir, C.O_PATH! | C.O_DIRECTORY! | C.O_CLOEXEC!, 0);
  const memFd = native.memfdCreate(`${prefix}guest`, C.MFD_CLOEXEC!);
  native.ftruncate(memFd, SIZE);
  const mem = new GuestMemory();
  const region = mem.addRegion(memFd, 'mem.0', GPA, SIZE, UADDR, 0);
  const owned = [rootFd, memFd];
  const before: Array<() => void> = [];
  t.teardown(() => {
    for (const f of before) f();
    mem.clear();
    for (const fd of owned) native.close(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, rootFd, mem, region, view: region.view, owned, before };
}

/** A fixture whose file 'f' is the known inode NODE_FILE of a fast server (its O_PATH fd in
 * the table when `withFd`). */
function fileServer(t: Test, prefix: string, withFd: boolean) {
  const f = fixture(t, prefix, { f: 'x' });
  const st = fs.statSync(path.join(f.dir, 'f'), { bigint: true });
  const server = new native.FastFuse();
  server.setEnabled(true);
  server.setAttrTimeout(1, 0);
  server.setInode(1, f.rootFd);
  server.setInodeMeta(NODE_FILE, st.dev, st.ino, 0, 0o100000, null, 0, 0);
  if (withFd) {
    const fileFd = native.openat(f.rootFd, 'f', C.O_PATH! | C.O_CLOEXEC!, 0);
    f.owned.push(fileFd);
    server.setInode(NODE_FILE, fileFd);
  }
  return { ...f, server };
}

function inoOf(fd: number): bigint {
  const b = Buffer.alloc(STAT.SIZE);
  native.fstatat(fd, '', C.AT_EMPTY_PATH!, b);
  return b.readBigUInt64LE(STAT.ino);
}

t.test('the fast server serves only well-formed requests, with well-formed replies', async (t) => {
  const seed = fuzzSeed();
  t.comment(`FUZZ_SEED=${seed}`);
  const rnd = makePrng(seed);
  const int = (n: number): number => Math.floor(rnd() * n);

  const { dir, rootFd, mem, region, view, owned } = fixture(t, 'vfsk-ff-', { f: Buffer.alloc(50_000, 7) });
  const fileFd = native.openat(rootFd, 'f', C.O_RDWR! | C.O_CLOEXEC!, 0);
  owned.push(fileFd);
  const st = fs.statSync(path.join(dir, 'f'), { bigint: true });
  fs.mkdirSync(path.join(dir, 'd'));
  const dirPathFd = native.openat(rootFd, 'd', C.O_PATH! | C.O_DIRECTORY! | C.O_CLOEXEC!, 0);
  const dirSt = fs.statSync(path.join(dir, 'd'), { bigint: true });
  const bytes = region.bytes;

  const server = new native.FastFuse();
  server.setEnabled(true);
  server.setAttrTimeout(1, 0);
  server.setInode(1, rootFd);
  // Named by a handle (what OPEN needs; LOOKUP compares none while the fd is in the table).
  server.setInodeMeta(NODE_FILE, st.dev, st.ino, 0, 0o100000, Buffer.alloc(8, 1), 1, 1);
  server.setOpenPolicy(PASS_OPEN_FLAGS, false, 0, 0);
  server.setNextFh(FIRST_OPEN_FH);
  server.setOpenRoom(1_000_000);
  /** fds the addon's OPENs opened, by fh: ours to close (JavaScript's in the worker). */
  const opened = new Map<number, number>();
  t.teardown(() => { for (const fd of opened.values()) native.close(fd); });
  let nextFh = FIRST_OPEN_FH;
  // GETXATTR reopens through /proc/self/fd (absolute: no pinned dir here). A value when the
  // filesystem takes user xattrs; ENODATA and ERANGE either way.
  server.setXattr(true, C.AT_FDCWD!);
  server.setInode(NODE_FILE, fileFd);
  try {
    native.setxattr(fileFd, 'user.k', Buffer.from('a value'), 0);
  } catch { /* no user xattrs on this filesystem */ }
  server.setFile(FH, NODE_FILE, fileFd, 2);
  server.setInodeMeta(NODE_DIR, dirSt.dev, dirSt.ino, 0, 0o040000, Buffer.alloc(8, 2), 1, 1);
  server.setInode(NODE_DIR, dirPathFd);
  t.teardown(() => native.close(dirPathFd));
  /** fds the addon's OPENDIRs opened, by fh: ours to close. */
  const openedDirs = new Map<number, number>();
  t.teardown(() => { for (const fd of openedDirs.values()) native.close(fd); });
  // READDIRPLUS's dir: every name known, the dir open as RDIR_FH.
  const rootSt = fs.statSync(dir, { bigint: true });
  fs.mkdirSync(path.join(dir, 'r'));
  const rdirSt = fs.statSync(path.join(dir, 'r'), { bigint: true });
  server.setInodeMeta(NODE_RDIR, rdirSt.dev, rdirSt.ino, 0, 0o040000, null, 0, 0);
  /** name → [nodeid, host ino] of the dir's entries. */
  const rdirEntries = new Map<string, [number, bigint]>();
  RDIR_NAMES.forEach((n, i) => {
    const host = path.join(dir, 'r', n);
    if (n === 'dir') fs.mkdirSync(host);
    else fs.writeFileSync(host, n);
    const hs = fs.lstatSync(host, { bigint: true });
    const h = native.nameToHandleAt(rootFd, path.join('r', n), 0);
    server.setInodeMeta(RDIR_FIRST_NODEID + i, hs.dev, hs.ino, 0, Number(hs.mode) & 0o170000, h.handle, h.mountId, h.handleType);
    rdirEntries.set(n, [RDIR_FIRST_NODEID + i, hs.ino]);
  });
  // Names the session does not know: the addon adds their inodes (a hard link is one inode).
  for (const n of ['n1', 'n2']) fs.writeFileSync(path.join(dir, 'r', n), n);
  fs.linkSync(path.join(dir, 'r', 'n1'), path.join(dir, 'r', 'hl'));
  /** Inode numbers of the names the addon added → their nodeids. */
  const addedByIno = new Map<bigint, number>();
  /** What the addon was last told of the inode fd cache. */
  let cacheFull = false;
  rdirEntries.set('.', [0, rdirSt.ino]);
  rdirEntries.set('..', [0, rootSt.ino]);
  const rdirFd = native.openat(rootFd, 'r', C.O_RDONLY! | C.O_DIRECTORY! | C.O_CLOEXEC!, 0);
  t.teardown(() => native.close(rdirFd));
  server.setDir(RDIR_FH, NODE_RDIR, rdirFd);
  /** The listing's order and cookies, as getdents64 gives them. */
  const listing: Array<{ name: string; off: bigint }> = [];
  {
    const lfd = native.openat(rootFd, 'r', C.O_RDONLY! | C.O_DIRECTORY! | C.O_CLOEXEC!, 0);
    const buf = Buffer.alloc(65536);
    for (let n = native.getdents64(lfd, buf); n > 0; n = native.getdents64(lfd, buf)) {
      for (const d of parseDirents(buf, n)) listing.push({ name: d.name.toString(), off: d.off });
    }
    native.close(lfd);
  }
  /** Where the addon's last served READDIRPLUS left the dir (the offset to continue from). */
  let rdirPosition = 0n;
  const ring = new NativeSplitRing(mem, { size: QSIZE, descUser: UADDR + DESC, availUser: UADDR + AVAIL, usedUser: UADDR + USED },
    0, false, false, null, server, 1);
  let queued = 0;
  let queuedDone: ((pairs: number[]) => void) | null = null;
  ring.setQueuedDone((pairs, count) => queuedDone?.(Array.from(pairs.subarray(0, 2 * count))));
  // UNLINK and RMDIR journal their intents into the state journal's mapping first.
  const journalPath = path.join(dir, 'state');
  const journal = StateJournal.create(journalPath, 2);
  journal.onMapped = (m) => server.setJournal(m);
  t.teardown(() => journal.close());
  server.setSettled(true);
  // CREATE adds inodes named by handles on the directory's mount, with umask 0.
  server.setHandles(native.nameToHandleAt(rootFd, 'd', 0).mountId);
  server.setNextNodeId(FIRST_NEW_NODEID);
  server.setCreatePolicy(true);
  let nextNodeId = FIRST_NEW_NODEID;
  /** O_PATH fds of the inodes CREATE added: ours to close (the inode fd cache's in the worker). */
  const createdInodes: number[] = [];
  t.teardown(() => { for (const fd of createdInodes) native.close(fd); });
  /** Counters of the CREATEs, UNLINKs and RMDIRs served (their intents must be in the journal). */
  const removed: bigint[] = [];

  /** A request of `opcode`: mostly right, with one thing wrong now and then. */
  function request(unique: bigint): Buffer {
    const op = OPS[int(OPS.length)]!;
    let body: Buffer;
    const dirOp = op === 27 || op === 29 || op === 9 || op === 10 || op === 11 || op === 35;
    const nodeid = [1, NODE_FILE, 3, 2 ** 53, 0, NODE_DIR, NODE_RDIR][int(8) < 6 ? (op === 1 ? 0 : op === 44 ? 6 : dirOp ? 5 : 1) : int(op === 44 ? 7 : 6)]!;
    const fh = int(6) < 5 ? FH : [0, 8, 2 ** 53 + 2][int(3)]!;
    const offset = int(6) < 5 ? int(60_000) : [2 ** 53, 2 ** 63, 2 ** 40][int(3)]!;
    switch (op) {
      case 1: {
        const names = ['f', 'f', 'missing', 'missing', 'gone', '.', '..', 'a/b', '', 'x'.repeat(300), 'f\0g'];
        const name = Buffer.from(names[int(names.length)]!);
        body = int(8) === 0 ? name : Buffer.concat([name, Buffer.from([0])]);
        break;
      }
      case 10:
      case 11: {
        // Names under the dir that exist now and then (as a file or a dir), and bad ones.
        const names = ['u', 'u', 'u', 'w', '.', '..', 'a/b', '', 'x'.repeat(300), 'u\0g'];
        const pick = names[int(names.length)]!;
        const host = path.join(dir, 'd', pick);
        if (pick.length === 1 && int(2) === 0 && !fs.existsSync(host)) {
          if (int(2) === 0) fs.writeFileSync(host, 'x');
          else fs.mkdirSync(host);
        }
        body = int(8) === 0 ? Buffer.from(pick) : Buffer.concat([Buffer.from(pick), Buffer.from([0])]);
        // The keeper does not hold every open fd yet: the addon must decline.
        server.setSettled(int(10) !== 0);
        break;
      }
      case 9:
      case 35: {
        // fuse_create_in (flags, mode, umask, open flags) or fuse_mkdir_in (mode, umask), then
        // a name: new, existing or bad.
        const names = ['c', 'c', 'c', 'u', 'w', '.', '..', 'a/b', '', 'x'.repeat(300), 'c\0g'];
        const pick = names[int(names.length)]!;
        if (pick === 'c') fs.rmSync(path.join(dir, 'd', 'c'), { force: true, recursive: true });
        const args = Buffer.alloc(op === 35 ? 16 : 8);
        const mode = int(3) === 0 ? int(0o200000) : op === 35 ? 0o100644 : 0o40755;
          if (op === 35) {
          args.writeUInt32LE(int(3) === 0 ? int(0x40_0000) : [0o100, 0o302, 0o1101, 0o2102, 0o100002, 0o200][int(6)]!, 0);
          args.writeUInt32LE(mode, 4);
          args.writeUInt32LE(int(0o1000), 8);
        } else {
          args.writeUInt32LE(mode, 0);
          args.writeUInt32LE(int(0o1000), 4);
        }
        body = Buffer.concat([args, Buffer.from(pick), int(8) === 0 ? Buffer.alloc(0) : Buffer.from([0])]);
        break;
      }
      case 3:
        body = Buffer.alloc(16);
        body.writeUInt32LE(int(4) === 0 ? 1 : 0, 0);
        body.writeBigUInt64LE(BigInt(fh), 8);
        break;
      case 4: {
        // fuse_setattr_in: valid, fh, size, lock owner, a/m/ctime, their nsecs, mode, uid, gid.
        body = Buffer.alloc(88);
        body.writeUInt32LE(int(4) === 0 ? int(0x1000) : [1, 0x30, 0x180, 0x48, 6, 0x71, 0x800 | 8][int(7)]!, 0);
        body.writeBigUInt64LE(BigInt(fh), 8);
        body.writeBigUInt64LE(BigInt(int(4) === 0 ? offset : int(60_000)), 16);
        for (const at of [32, 40, 48]) body.writeBigInt64LE([0n, 1_700_000_000n, -5n, 2n ** 53n, -(2n ** 53n), 2n ** 62n][int(6)]!, at);
        for (const at of [56, 60, 64]) body.writeUInt32LE(int(5) === 0 ? 1_000_000_000 + int(5) : int(1_000_000_000), at);
        body.writeUInt32LE(0o100000 | (int(3) === 0 ? int(0o10000) : 0o644), 68);
        body.writeUInt32LE(int(3) === 0 ? 0xffff_ffff : int(2000), 76);
        body.writeUInt32LE(int(3) === 0 ? 0xffff_ffff : int(2000), 80);
        break;
      }
      case 22: {
        const names = ['user.k', 'user.k', 'user.missing', 'security.capability', 'trusted.x', '', 'x'.repeat(300), 'a\0b'];
        const name = Buffer.from(names[int(names.length)]!);
        const args = Buffer.alloc(8);
        args.writeUInt32LE([0, 3, 7, 64, 70_000, 0xffff_ffff][int(6)]!, 0);
        body = Buffer.concat([args, name, int(8) === 0 ? Buffer.alloc(0) : Buffer.from([0])]);
        break;
      }
      case 14:
        body = Buffer.alloc(8);
        body.writeUInt32LE(int(3) === 0 ? int(0x40_0000) : [0, 1, 2, 0o2001, 0o1002, 0o4000, 0o100000, 3][int(8)]!, 0);
        body.writeUInt32LE(int(3), 4);
        break;
      case 27:
        body = Buffer.alloc(8);
        body.writeUInt32LE(int(2) === 0 ? int(0x40_0000) : 0o200000, 0);
        break;
      case 18:
      case 29: {
        body = Buffer.alloc(24);
        const mine = [...(op === 18 ? opened : openedDirs).keys()];
        body.writeBigUInt64LE(BigInt(int(3) === 0 && mine.length > 0 ? mine[int(mine.length)]! : fh), 0);
        body.writeUInt32LE(int(3), 8);
        body.writeUInt32LE(int(2), 12);
        body.writeBigUInt64LE(BigInt(int(3)), 16);
        break;
      }
      case 20:
        // fuse_fsync_in: fh, fsync_flags (FUSE_FSYNC_FDATASYNC or not), padding.
        body = Buffer.alloc(16);
        body.writeBigUInt64LE(BigInt(fh), 0);
        body.writeUInt32LE(int(2), 8);
        break;
      case 23:
        // fuse_getxattr_in: the size of the guest's buffer (0: how large is the list), padding.
        body = Buffer.alloc(int(10) === 0 ? int(20) : 8);
        if (body.length >= 4) body.writeUInt32LE([0, 0, 3, 7, 12, 64, 70_000, 0xffff_ffff][int(8)]!, 0);
        break;
      case 17:
        // STATFS has no arguments: now and then some anyway.
        body = Buffer.alloc(int(8) === 0 ? int(40) : 0);
        break;
      case 46:
        // fuse_lseek_in: fh, offset, whence (SEEK_DATA or SEEK_HOLE mostly), padding.
        body = Buffer.alloc(int(10) === 0 ? int(30) : 24);
        if (body.length >= 24) {
          body.writeBigUInt64LE(BigInt(fh), 0);
          body.writeBigUInt64LE(BigInt(offset), 8);
          body.writeUInt32LE(int(4) === 0 ? int(6) : 3 + int(2), 16);
        }
        break;
      case 25:
        body = Buffer.alloc(24);
        body.writeBigUInt64LE(BigInt(fh), 0);
        body.writeBigUInt64LE(BigInt(int(3)), 16);
        break;
      case 15:
        body = Buffer.alloc(40);
        body.writeBigUInt64LE(BigInt(fh), 0);
        body.writeBigUInt64LE(BigInt(offset), 8);
        body.writeUInt32LE(int(5) === 0 ? 0xffff_ffff : int(140_000), 16);
        break;
      case 44: {
        // From the start, from where the last one ended, or from elsewhere; sizes around a
        // record's; the dir's fh, another or a bad one; TypeScript reading the fd meanwhile.
        body = Buffer.alloc(40);
        body.writeBigUInt64LE(BigInt(int(10) === 0 ? fh : RDIR_FH), 0);
        body.writeBigUInt64LE([0n, rdirPosition, rdirPosition, rdirPosition, rdirPosition, BigInt(offset), listing[int(listing.length)]!.off][int(7)]!, 8);
        body.writeUInt32LE([0, 100, 160, 200, 400, 1000, 4096, 4096, 70_000, 0xffff_ffff][int(10)]!, 16);
        cacheFull = int(2) === 0;
        server.setInodeCacheFull(cacheFull);
        if (int(30) === 0) {
          server.takeDir(RDIR_FH);
          native.lseek(rdirFd, 0n, C.SEEK_END!);
        }
        break;
      }
      default: {
        const size = int(5) === 0 ? int(300_000) : int(3000);
        body = Buffer.alloc(40 + (int(6) === 0 ? int(3000) : size));
        body.writeBigUInt64LE(BigInt(fh), 0);
        body.writeBigUInt64LE(BigInt(offset), 8);
        body.writeUInt32LE(size, 16);
        body.writeUInt32LE(int(6) === 0 ? 4 : 0, 20); // KILL_SUIDGID now and then
      }
    }
    if (int(10) === 0) body = body.subarray(0, int(body.length + 1));
    const hdr = Buffer.alloc(40);
    const len = 40 + body.length;
    hdr.writeUInt32LE(int(10) === 0 ? len + int(5) - 2 : len, 0);
    hdr.writeUInt32LE(op, 4);
    hdr.writeBigUInt64LE(unique, 8);
    hdr.writeBigUInt64LE(BigInt(nodeid), 16);
    return Buffer.concat([hdr, body]);
  }

  let served = 0;
  let declined = 0;
  let recorded = 0;
  let readdirServed = 0;
  let readdirContinued = 0;
  for (let it = 0; it < ITERATIONS; it++) {
    const unique = BigInt(it * 2 + 2);
    const req = request(unique);
    bytes.set(req, REQ);
    // Readable part split in two descriptors somewhere; writable part of a random size.
    const split = int(req.length + 1);
    // CREATE's reply is the largest here (160 bytes): its sizes are around that.
    const writable = req.readUInt32LE(4) === 35 ? [100, 159, 160, 4096][int(4)]! : req.readUInt32LE(4) === 9 ? [100, 143, 144, 4096][int(4)]!
      : req.readUInt32LE(4) === 44 ? [16, 100, 176, 300, 4096, 4096, 70_000][int(7)]!
      : [0, 8, 16, 100, 119, 120, 143, 144, 4096, 70_000][int(10)]!;
    bytes.fill(0xee, REPLY, REPLY + 16);
    const descs: Array<[number, number, number]> = [];
    if (split > 0) descs.push([GPA + REQ, split, 0]);
    if (req.length - split > 0) descs.push([GPA + REQ + split, req.length - split, 0]);
    if (writable > 0) descs.push([GPA + REPLY, writable, VRING_DESC_F_WRITE]);
    descs.forEach(([addr, len, flags], i) => {
      const o = DESC + 16 * i;
      view.setBigUint64(o, BigInt(addr), true);
      view.setUint32(o + 8, len, true);
      view.setUint16(o + 12, flags | (i < descs.length - 1 ? VRING_DESC_F_NEXT : 0), true);
      view.setUint16(o + 14, i + 1, true);
    });
    const idx = view.getUint16(AVAIL + 2, true);
    view.setUint16(AVAIL + 4 + 2 * (idx % QSIZE), 0, true);
    view.setUint16(AVAIL + 2, (idx + 1) & 0xffff, true);
    const usedBefore = view.getUint16(USED + 2, true);
    const c = ring.pop();
    if (c instanceof ChainError) {
      t.fail(`iteration ${it}: a well-formed chain was refused: ${c.message}`);
      return;
    }
    if (c !== null && !('served' in c)) {
      // Declined: JavaScript would answer. Its request bytes are as the guest wrote them.
      declined++;
      if (!Buffer.from(bytes.buffer, REQ, req.length).equals(req)) {
        t.fail(`iteration ${it}: a declined request's bytes changed`);
        return;
      }
      ring.pushUsed(c.head, 0);
      ring.publishUsed();
      if (ring.pop() !== null) { t.fail(`iteration ${it}: more than one chain`); return; }
      continue;
    }
    if (c !== null) {
      // A served LOOKUP or SETATTR comes back for its journal: alone (one per kick here), with
      // the reply the guest got.
      recorded++;
      const op = req.readUInt32LE(4);
      const replyLen = op === 44 ? c.reply(0).length : ({ 1: 144, 4: 120, 9: 144, 10: 16, 11: 16, 14: 32, 18: 16, 27: 32, 29: 16, 35: 160 } as Record<number, number>)[op];
      // A CREATE or MKDIR answered with its syscall's errno: a bare header, with its intent.
      const intendedError = (op === 9 || op === 35) && c.reply(0).length === 16 && c.reply(0).readInt32LE(4) < 0;
      if (intendedError) {
        if (c.intentMs!(0) === null || c.newInode!(0) !== null) {
          t.fail(`iteration ${it}: an errno reply of op ${op} without its intent, or with an inode`);
          return;
        }
        removed.push(c.counter(0));
      } else if (c.count !== 1 || c.head(0) !== 0 || c.opcode(0) !== op || replyLen === undefined ||
        // A SETATTR of the dir is the dir's; OPEN(DIR), RELEASE(DIR), UNLINK and RMDIR only of
        // their kind; a CREATE's record names the new inode.
        !(op === 35 || op === 9 ? [nextNodeId] : op === 27 || op === 29 || op === 10 || op === 11 ? [NODE_DIR] : op === 4 ? [NODE_FILE, NODE_DIR]
          : op === 44 ? [NODE_RDIR] : [NODE_FILE]).includes(c.nodeid(0)) ||
        !c.reply(0).equals(Buffer.from(bytes.buffer, bytes.byteOffset + REPLY, c.reply(0).length)) || c.reply(0).length !== replyLen) {
        t.fail(`iteration ${it}: the served op ${op}'s record is not its reply (${c.count} records, node ${c.nodeid(0)}, reply ${c.reply(0).length} bytes)`);
        return;
      }
      // An OPEN: the next fh, an fd of the file, the fh in the reply. A RELEASE: the fh and fd
      // the table had (the fuzz's fixed fh goes back in, as JavaScript would not do).
      const file = op === 14 ? c.opened!(0) : op === 18 ? c.released!(0) : op === 27 ? c.openedDir!(0) : op === 29 ? c.releasedDir!(0) : null;
      if (intendedError) {
        // checked above
      } else if (op === 44) {
        // The records that follow the request's offset in the listing, as many as fit, each
        // with its inode number and nodeid (none for '.' and '..') and attributes of its inode.
        const from = req.readBigUInt64LE(48);
        const size = req.readUInt32LE(56);
        const start = from === 0n ? 0 : listing.findIndex((d) => d.off === from) + 1;
        const reply = c.reply(0);
        const served = c.readdir!(0);
        let k = start;
        let at = 16;
        let newNext = 0;
        let bad: string | null = start === 0 && from !== 0n ? `served from an offset not in the listing (${from})` : null;
        for (; bad === null && at < reply.length; k++) {
          const nodeid = Number(reply.readBigUInt64LE(at));
          const attrIno = reply.readBigUInt64LE(at + 40);
          const ino = reply.readBigUInt64LE(at + 128);
          const off = reply.readBigUInt64LE(at + 136);
          const nameLen = reply.readUInt32LE(at + 144);
          const name = reply.subarray(at + 152, at + 152 + nameLen).toString();
          const want = listing[k];
          let [wantNode, wantIno] = rdirEntries.get(name) ?? [-1, -1n];
          if (!rdirEntries.has(name) && want?.name === name) {
            // A name the session did not know: a new inode the first time, the same after.
            wantIno = fs.lstatSync(path.join(dir, 'r', name), { bigint: true }).ino;
            wantNode = addedByIno.get(wantIno) ?? -1;
            const added = served?.newInodes[newNext];
            // With the inode fd cache full, no fd is opened: the handle was read by name.
            const fdOk = added !== undefined && (added.inode.fd === -1 ? cacheFull : inoOf(added.inode.fd) === wantIno);
            if (wantNode === -1 && added !== undefined && added.nodeid === nextNodeId && added.inode.ino === wantIno && fdOk &&
              added.inode.handle.equals(native.nameToHandleAt(rootFd, path.join('r', name), 0).handle)) {
              wantNode = added.nodeid;
              addedByIno.set(wantIno, wantNode);
              if (added.inode.fd >= 0) createdInodes.push(added.inode.fd);
              nextNodeId++;
              newNext++;
            }
          }
          if (want === undefined || want.name !== name || off !== BigInt.asUintN(64, want.off) || ino !== wantIno || nodeid !== wantNode ||
            (nodeid !== 0 && attrIno !== wantIno)) bad = `record ${k - start} (${name}) is not entry ${k} of the listing`;
          at += (152 + nameLen + 7) & ~7;
        }
        if (bad === null && newNext !== served?.newInodes.length) bad = `${served?.newInodes.length} new inodes, ${newNext} of them in the reply`;
        if (bad === null && (at !== reply.length || reply.length > Math.min(size, writable - 16, 65536) + 16 || reply.readUInt32LE(0) !== reply.length)) bad = 'the reply is cut or too long';
        if (bad === null && (k === start ? k < listing.length : false)) bad = 'an empty reply before the end';
        if (bad === null && (served === null || served.fh !== RDIR_FH || served.position !== (k === start ? from : listing[k - 1]!.off))) bad = `the record's dir position ${JSON.stringify(served, (_, v) => typeof v === 'bigint' ? String(v) : v)}`;
        if (bad !== null) {
          t.fail(`iteration ${it}: READDIRPLUS from ${from}: ${bad}`);
          return;
        }
        rdirPosition = served!.position;
        readdirServed++;
        if (from !== 0n) readdirContinued++;
      } else if (op === 9) {
        // The new dir: the next nodeid, an O_PATH fd of the name, in the reply; the intent's time.
        const inode = c.newInode!(0);
        const name = req.subarray(48, req.indexOf(0, 48)).toString();
        const hostIno = fs.statSync(path.join(dir, 'd', name), { bigint: true }).ino;
        if (inode === null || inode.ino !== hostIno || inode.fileType !== 0o040000 || inoOf(inode.fd) !== hostIno ||
          c.reply(0).readBigUInt64LE(16) !== BigInt(nextNodeId) || c.intentMs!(0) === null) {
          t.fail(`iteration ${it}: MKDIR's record is not nodeid ${nextNodeId} of d/${name}`);
          return;
        }
        createdInodes.push(inode.fd);
        nextNodeId++;
        removed.push(c.counter(0));
      } else if (op === 35) {
        // The new inode (the next nodeid, an O_PATH fd of the name) and its file (the next fh,
        // an fd of the same file), both in the reply; the intent's time.
        const inode = c.newInode!(0);
        const created = c.created!(0);
        const name = req.subarray(56, req.indexOf(0, 56)).toString();
        const hostIno = fs.statSync(path.join(dir, 'd', name), { bigint: true }).ino;
        if (inode === null || created === null || inode.ino !== hostIno || inoOf(inode.fd) !== hostIno || inoOf(created.fd) !== hostIno ||
          created.fh !== nextFh || c.reply(0).readBigUInt64LE(16) !== BigInt(nextNodeId) || c.reply(0).readBigUInt64LE(144) !== BigInt(nextFh) ||
          c.intentMs!(0) === null) {
          t.fail(`iteration ${it}: CREATE's record ${JSON.stringify({ inode: inode && { fd: inode.fd, ino: String(inode.ino) }, created })} is not nodeid ${nextNodeId}, fh ${nextFh} of d/${name}`);
          return;
        }
        createdInodes.push(inode.fd);
        opened.set(nextFh++, created.fd);
        nextNodeId++;
        removed.push(c.counter(0));
      } else if (op === 10 || op === 11) {
        const ms = c.intentMs!(0);
        if (ms === null || Math.abs(ms - Date.now()) > 60_000) {
          t.fail(`iteration ${it}: ${op === 10 ? 'UNLINK' : 'RMDIR'}'s record has no intent time (${ms})`);
          return;
        }
        removed.push(c.counter(0));
      } else if (op === 14 || op === 27) {
        const ino = op === 14 ? st.ino : dirSt.ino;
        if (file === null || file.fh !== nextFh || c.reply(0).readBigUInt64LE(16) !== BigInt(nextFh) || inoOf(file.fd) !== ino) {
          t.fail(`iteration ${it}: ${op === 14 ? 'OPEN' : 'OPENDIR'}'s record ${JSON.stringify(file)} is not fh ${nextFh} of the ${op === 14 ? 'file' : 'dir'}`);
          return;
        }
        (op === 14 ? opened : openedDirs).set(nextFh++, file.fd);
      } else if (op === 29) {
        if (file === null || openedDirs.get(file.fh) !== file.fd) {
          t.fail(`iteration ${it}: RELEASEDIR's record ${JSON.stringify(file)} is not a dir of the table`);
          return;
        }
        native.close(file.fd);
        openedDirs.delete(file.fh);
      } else if (op === 18) {
        const want = file?.fh === FH ? fileFd : opened.get(file?.fh ?? -1);
        if (file === null || want !== file.fd) {
          t.fail(`iteration ${it}: RELEASE's record ${JSON.stringify(file)} is not an fh of the table`);
          return;
        }
        if (file.fh === FH) server.setFile(FH, NODE_FILE, fileFd, 2);
        else {
          native.close(file.fd);
          opened.delete(file.fh);
        }
      }
    }
    if (c !== null && ring.pop() !== null) { t.fail(`iteration ${it}: more than one chain`); return; }
    if (ring.queuedPending() > 0) {
      // A READ or WRITE on the ring's I/O threads (an O_SYNC fh, a READ above 128 KiB): its
      // reply comes with its completion, which JavaScript pushes (as QueueServer does).
      queued++;
      const pairs = await new Promise<number[]>((resolve) => { queuedDone = resolve; });
      if (pairs.length !== 2 || ring.queuedPending() !== 0) { t.fail(`iteration ${it}: queued completions ${JSON.stringify(pairs)}`); return; }
      ring.pushUsed(pairs[0]!, pairs[1]!);
    }
    ring.publishUsed();
    served++;
    const usedIdx = view.getUint16(USED + 2, true);
    const e = USED + 4 + 8 * (usedBefore % QSIZE);
    const usedLen = view.getUint32(e + 4, true);
    const outLen = view.getUint32(REPLY, true);
    const error = view.getInt32(REPLY + 4, true);
    const outUnique = view.getBigUint64(REPLY + 8, true);
    const opcode = req.readUInt32LE(4);
    // The errors answered here are a bare header: GETXATTR's ENODATA and ERANGE, LOOKUP's ENOENT,
    // LSEEK's ENXIO. UNLINK's and RMDIR's errno is the syscall's, whatever it is.
    const nativeError = usedLen === 16 && ((opcode === 22 && (error === -ENODATA || error === -ERANGE)) || (opcode === 1 && error === -ENOENT) ||
      (opcode === 46 && error === -ENXIO) || (opcode === 23 && error === -ERANGE) ||
      ([9, 10, 11, 35].includes(opcode) && error < 0 && error > -4096));
    const ok = usedIdx === ((usedBefore + 1) & 0xffff) && usedLen === outLen && (error === 0 || nativeError) && outUnique === unique &&
      usedLen <= writable && req.readUInt32LE(0) === req.length &&
      (opcode !== 3 || usedLen === 120) && (opcode !== 4 || usedLen === 120) && (opcode !== 1 || usedLen === 144 || nativeError) && (opcode !== 16 || usedLen === 24) &&
      (opcode !== 25 || usedLen === 16) && (opcode !== 20 || usedLen === 16) && (opcode !== 14 || usedLen === 32) && (opcode !== 18 || usedLen === 16) &&
      (opcode !== 27 || usedLen === 32) && (opcode !== 29 || usedLen === 16) && (opcode !== 10 || usedLen === 16) && (opcode !== 11 || usedLen === 16) &&
      (opcode !== 35 || usedLen === 160 || nativeError) && (opcode !== 9 || usedLen === 144 || nativeError) && (opcode !== 44 || usedLen >= 16) &&
      (opcode !== 17 || usedLen === 96) && (opcode !== 46 || usedLen === 24 || nativeError) &&
      (opcode !== 23 || nativeError || (req.readUInt32LE(40) === 0 ? usedLen === 24 : usedLen - 16 <= req.readUInt32LE(40)));
    if (!ok) {
      t.fail(`iteration ${it}: served op ${opcode} badly: used ${usedLen}, out ${outLen}/${error}/${outUnique}, writable ${writable}`);
      return;
    }
  }
  const stats = server.stats();
  t.equal(stats.queuedRead + stats.queuedWrite + stats.fsync, queued, `the requests that ran on the I/O threads (${queued}) are the ones counted`);
  t.ok(served > 150 && declined > 1000 && recorded > 8, `served ${served} (${recorded} journaled: LOOKUP, SETATTR, OPEN, RELEASE), declined ${declined}`);
  t.equal(stats.lookup + stats.setattr + stats.open + stats.release + stats.opendir + stats.releasedir + stats.create + stats.mkdir + stats.intentErrors + stats.unlink + stats.rmdir +
    stats.readdirplus, recorded, 'every served LOOKUP, SETATTR, OPEN(DIR), RELEASE(DIR), CREATE, MKDIR, UNLINK, RMDIR and READDIRPLUS came back for its journal');
  t.equal(stats.getattr + stats.read + stats.write + stats.lookup + stats.lookupMissing + stats.lookupNew + stats.flush + stats.getxattr +
    stats.setattr + stats.open + stats.release + stats.opendir + stats.releasedir + stats.create + stats.mkdir + stats.intentErrors + stats.unlink + stats.rmdir +
    stats.readdirplus + stats.fsync + stats.statfs + stats.lseek + stats.listxattr, served, 'the server counts what it served');
  t.ok(stats.statfs > 0 && stats.lseek > 0 && stats.listxattr > 0, `STATFS (${stats.statfs}), LSEEK (${stats.lseek}) and LISTXATTR (${stats.listxattr}) served too`);
  t.equal(addedByIno.size, 2, 'the names the session did not know were added once each, a hard link as one inode');
  t.equal(stats.direntsNew, 2, 'and counted');
  t.ok(readdirServed >= 10 && readdirServed === stats.readdirplus && readdirContinued >= 3,
    `READDIRPLUSes served: ${readdirServed} (${readdirContinued} going on from where the last ended), each the right slice of the listing`);
  t.ok(stats.unlink > 10 && stats.rmdir > 10 && stats.create > 10 && stats.mkdir > 10,
    `UNLINKs served: ${stats.unlink}, RMDIRs: ${stats.rmdir}, CREATEs: ${stats.create}, MKDIRs: ${stats.mkdir}`);
  // Their intents, as the worker's journal reader decodes them, in order: one per request.
  const reread = StateJournal.open(journalPath, [2]);
  const intents = reread.payloads(DATA_START).map((p) => decodePayload(p));
  reread.close();
  t.same(intents.map((d) => d.t === 'intent' ? d.key : d.t), removed.map((n) => `1.0.${n}`), 'each served CREATE, MKDIR, UNLINK and RMDIR journaled its intent, keyed as TypeScript keys it');
  t.equal(stats.intents, removed.length, 'and no other');
  t.ok(stats.open > 10 && stats.release > 10, `OPENs served: ${stats.open}, RELEASEs: ${stats.release}`);
  t.ok(stats.opendir > 10 && stats.releasedir > 5, `OPENDIRs served: ${stats.opendir}, RELEASEDIRs: ${stats.releasedir}`);
  // ~22 expected per run (3 names in 11, of LOOKUPs under the root with room for an entry).
  t.ok(stats.lookupMissing >= 5, `LOOKUPs answered ENOENT: ${stats.lookupMissing}`);
  t.ok(stats.getxattr > 10, `GETXATTRs served: ${stats.getxattr}`);
  t.ok(stats.setattr > 10, `SETATTRs served: ${stats.setattr}`);
});

t.test('LOOKUPs served in a row come back as one batch, before the chain popped after them', async (t) => {
  const { mem, region, view, server } = fileServer(t, 'vfsk-ffb-', false);
  const ring = new NativeSplitRing(mem, { size: 16, descUser: UADDR + DESC, availUser: UADDR + AVAIL, usedUser: UADDR + USED },
    0, false, false, null, server, 1);
  // Heads 0-2 LOOKUP 'f' (known), head 3 a GETATTR of an unknown nodeid (declined), head 4 LOOKUP.
  const kinds = ['lookup', 'lookup', 'lookup', 'getattr', 'lookup'] as const;
  kinds.forEach((kind, i) => {
    const body = kind === 'lookup' ? Buffer.from('f\0') : Buffer.alloc(16);
    const req = Buffer.alloc(40 + body.length);
    req.writeUInt32LE(req.length, 0);
    req.writeUInt32LE(kind === 'lookup' ? 1 : 3, 4);
    req.writeBigUInt64LE(BigInt(100 + i), 8);
    req.writeBigUInt64LE(kind === 'lookup' ? 1n : 99n, 16);
    body.copy(req, 40);
    region.bytes.set(req, REQ + 256 * i);
    const d = DESC + 32 * i; // two descriptors per head: request, then a 256-byte reply buffer
    view.setBigUint64(d, BigInt(GPA + REQ + 256 * i), true);
    view.setUint32(d + 8, req.length, true);
    view.setUint16(d + 12, VRING_DESC_F_NEXT, true);
    view.setUint16(d + 14, 2 * i + 1, true);
    view.setBigUint64(d + 16, BigInt(GPA + REPLY + 256 * i), true);
    view.setUint32(d + 24, 256, true);
    view.setUint16(d + 28, VRING_DESC_F_WRITE, true);
    view.setUint16(AVAIL + 4 + 2 * i, 2 * i, true);
  });
  view.setUint16(AVAIL + 2, kinds.length, true);
  const first = ring.pop();
  if (first === null || !('served' in first)) throw new Error('the LOOKUPs did not come back first');
  t.equal(first.count, 3, 'the three LOOKUPs before the declined chain, as one batch');
  t.same([0, 1, 2].map((i) => first.head(i)), [0, 2, 4], 'in pop order');
  t.same([0, 1, 2].map((i) => first.reply(i).readBigUInt64LE(8)), [100n, 101n, 102n], 'each with its own reply');
  t.same([0, 1, 2].map((i) => first.nodeid(i)), [NODE_FILE, NODE_FILE, NODE_FILE]);
  t.same([0, 1, 2].map((i) => first.counter(i)), [0n, 0n, 0n], 'and its counter (0: no inflight region here)');
  const declined = ring.pop();
  t.ok(declined !== null && !('served' in declined) && !(declined instanceof ChainError) && declined.head === 6, 'then the declined GETATTR');
  const last = ring.pop();
  t.ok(last !== null && 'served' in last && last.count === 1 && last.head(0) === 8, 'then the LOOKUP after it');
  t.equal(ring.pop(), null, 'then nothing');
  t.equal(server.stats().lookup, 4);
});

t.test('after a FORGET in a batch, nothing of its nodeid is served until JavaScript took the batch', async (t) => {
  const { mem, region, view, server } = fileServer(t, 'vfsk-fff-', true);
  const ring = new NativeSplitRing(mem, { size: 32, descUser: UADDR + DESC, availUser: UADDR + AVAIL, usedUser: UADDR + USED },
    0, false, false, null, server, 1);
  /** Puts requests on the ring from head slot `first` on (a FORGET without a reply buffer). */
  const put = (first: number, reqs: Array<{ op: number; nodeid: bigint; body: Buffer }>): void => {
    reqs.forEach((r, k) => {
      const i = first + k;
      const req = Buffer.alloc(40 + r.body.length);
      req.writeUInt32LE(req.length, 0);
      req.writeUInt32LE(r.op, 4);
      req.writeBigUInt64LE(BigInt(100 + i), 8);
      req.writeBigUInt64LE(r.nodeid, 16);
      r.body.copy(req, 40);
      region.bytes.set(req, REQ + 256 * i);
      const d = DESC + 32 * i;
      const forget = r.op === 2 || r.op === 42;
      view.setBigUint64(d, BigInt(GPA + REQ + 256 * i), true);
      view.setUint32(d + 8, req.length, true);
      view.setUint16(d + 12, forget ? 0 : VRING_DESC_F_NEXT, true);
      view.setUint16(d + 14, 2 * i + 1, true);
      view.setBigUint64(d + 16, BigInt(GPA + REPLY + 256 * i), true);
      view.setUint32(d + 24, 256, true);
      view.setUint16(d + 28, VRING_DESC_F_WRITE, true);
      view.setUint16(AVAIL + 4 + 2 * i, 2 * i, true);
    });
    view.setUint16(AVAIL + 2, first + reqs.length, true);
  };
  const u64 = (n: bigint): Buffer => { const b = Buffer.alloc(8); b.writeBigUInt64LE(n); return b; };
  const batchOf = (pairs: Array<[bigint, bigint]>): Buffer => {
    const b = Buffer.alloc(8 + 16 * pairs.length);
    b.writeUInt32LE(pairs.length, 0);
    pairs.forEach(([n, c], i) => { b.writeBigUInt64LE(n, 8 + 16 * i); b.writeBigUInt64LE(c, 16 + 16 * i); });
    return b;
  };
  const declinedAt = (what: string, head: number): void => {
    const c = ring.pop();
    t.ok(c !== null && !('served' in c) && !(c instanceof ChainError) && c.head === head, `${what} (${c === null ? 'null' : 'served' in c ? 'served' : c instanceof ChainError ? 'error' : c.head})`);
    if (c !== null && !('served' in c) && !(c instanceof ChainError)) ring.pushUsed(c.head, 0);
  };
  // A FORGET of the file, then a GETATTR of it: declined (the batch goes to JavaScript first).
  put(0, [{ op: 2, nodeid: BigInt(NODE_FILE), body: u64(3n) }, { op: 3, nodeid: BigInt(NODE_FILE), body: Buffer.alloc(16) }]);
  const first = ring.pop();
  if (first === null || !('served' in first)) throw new Error('the FORGET did not come back first');
  t.same([first.count, first.opcode(0), first.forgets!(0)], [1, 2, [{ nodeid: NODE_FILE, nlookup: 3 }]], 'the FORGET, with its nodeid and count');
  t.equal(view.getUint32(USED + 4 + 4, true), 0, 'its used element says no reply');
  declinedAt('a GETATTR of it in the same batch: declined', 2);
  // The same with a LOOKUP of its name.
  put(2, [{ op: 2, nodeid: BigInt(NODE_FILE), body: u64(1n) }, { op: 1, nodeid: 1n, body: Buffer.from('f\0') }]);
  const again = ring.pop();
  t.ok(again !== null && 'served' in again && again.count === 1 && again.opcode(0) === 2, 'a second FORGET: served');
  declinedAt('a LOOKUP of its name in the same batch: declined', 6);
  ring.publishUsed();
  // JavaScript took the batches (and here kept the inode): served again. A BATCH_FORGET of the
  // file and of an unknown nodeid is declined whole; of the file alone, served.
  put(4, [{ op: 3, nodeid: BigInt(NODE_FILE), body: Buffer.alloc(16) }, { op: 42, nodeid: 0n, body: batchOf([[BigInt(NODE_FILE), 1n], [999n, 1n]]) },
    { op: 42, nodeid: 0n, body: batchOf([[BigInt(NODE_FILE), 2n ** 60n]]) }]);
  declinedAt('a BATCH_FORGET naming an inode not in the table: declined (the GETATTR before it served)', 10);
  const second = ring.pop();
  // A count that is not its length, and a FORGET of the root or of no lookup: declined.
  const lying = batchOf([[BigInt(NODE_FILE), 1n]]);
  lying.writeUInt32LE(5, 0);
  put(7, [{ op: 42, nodeid: 0n, body: lying }, { op: 2, nodeid: 1n, body: u64(1n) }, { op: 2, nodeid: BigInt(NODE_FILE), body: u64(0n) }]);
  declinedAt('a BATCH_FORGET whose count is not its length: declined', 14);
  declinedAt('a FORGET of the root: declined', 16);
  declinedAt('a FORGET of no lookup: declined', 18);
  t.ok(second !== null && 'served' in second && second.count === 1 && second.opcode(0) === 42, 'a BATCH_FORGET of the file: served');
  if (second !== null && 'served' in second) t.same(second.forgets!(0), [{ nodeid: NODE_FILE, nlookup: Number.MAX_SAFE_INTEGER }], 'a count past 2^53-1 as 2^53-1, as the parser reads it');
  t.equal(ring.pop(), null, 'then nothing');
  t.same([server.stats().forget, server.stats().getattr], [3, 1], 'three forgotten natively, one GETATTR');
});

t.test('UNLINK and RMDIR are served only with room in a journal for their intent and the keeper holding every open fd', async (t) => {
  const { dir, rootFd, mem, region, view, owned, before } = fixture(t, 'vfsk-ffu-', { a: 'a', b: 'b', c: 'c', d: 'd' });
  const rootSt = fs.statSync(dir, { bigint: true });
  // A journal file of 8 KiB: its data area (from 4 KiB) takes some intents, not many.
  const stateFd = native.openat(rootFd, 'state', C.O_RDWR! | C.O_CREAT! | C.O_EXCL! | C.O_CLOEXEC!, 0o600);
  owned.push(stateFd);
  native.ftruncate(stateFd, 8192);
  const map = native.mmap(stateFd, 8192, 0, true);
  const server = new native.FastFuse();
  before.push(() => { server.setJournal(null); native.munmap(map); });
  server.setEnabled(true);
  server.setInode(1, rootFd);
  server.setInodeMeta(1, rootSt.dev, rootSt.ino, 0, 0o040000, null, 0, 0);
  const ring = new NativeSplitRing(mem, { size: 16, descUser: UADDR + DESC, availUser: UADDR + AVAIL, usedUser: UADDR + USED },
    0, false, false, null, server, 3);
  let n = 0;
  /** Submits UNLINK (10) of `name` under the root: 'served' (with its errno) or 'declined'. */
  const unlink = (name: string): { served: boolean; errno: number } => {
    const body = Buffer.from(`${name}\0`);
    const req = Buffer.alloc(40 + body.length);
    req.writeUInt32LE(req.length, 0);
    req.writeUInt32LE(10, 4);
    req.writeBigUInt64LE(BigInt(100 + n), 8);
    req.writeBigUInt64LE(1n, 16);
    body.copy(req, 40);
    region.bytes.set(req, REQ);
    view.setBigUint64(DESC, BigInt(GPA + REQ), true);
    view.setUint32(DESC + 8, req.length, true);
    view.setUint16(DESC + 12, VRING_DESC_F_NEXT, true);
    view.setUint16(DESC + 14, 1, true);
    view.setBigUint64(DESC + 16, BigInt(GPA + REPLY), true);
    view.setUint32(DESC + 24, 256, true);
    view.setUint16(DESC + 28, VRING_DESC_F_WRITE, true);
    view.setUint16(AVAIL + 4 + 2 * (n % 16), 0, true);
    view.setUint16(AVAIL + 2, ++n, true);
    const c = ring.pop();
    if (c === null || c instanceof ChainError) throw new Error('no chain');
    if ('served' in c) {
      ring.publishUsed();
      return { served: true, errno: -view.getInt32(REPLY + 4, true) };
    }
    ring.pushUsed(c.head, 0);
    ring.publishUsed();
    return { served: false, errno: 0 };
  };
  const commitOf = (): number => Number(native.loadAcquireU64(map, 16));
  t.same(unlink('a'), { served: false, errno: 0 }, 'no journal: declined');
  t.ok(fs.existsSync(path.join(dir, 'a')), 'and nothing removed');
  native.storeReleaseU64(map, 16, 4096n);
  server.setJournal(map);
  t.same(unlink('a'), { served: false, errno: 0 }, 'not settled: declined');
  server.setSettled(true);
  t.same(unlink('a'), { served: true, errno: 0 }, 'served');
  t.notOk(fs.existsSync(path.join(dir, 'a')), 'removed');
  t.same(unlink('a'), { served: true, errno: 2 }, 'again: ENOENT, the syscall\'s answer');
  const end = commitOf();
  const payload = Buffer.from(map, 4096 + 8, Buffer.from(map).readUInt32LE(4096));
  t.equal(Buffer.from(map).readUInt32LE(4100), zlib.crc32(payload), 'the first intent\'s checksum is zlib\'s crc32 of its payload');
  const d = decodePayload(payload);
  t.ok(d.t === 'intent' && d.key === '3.0.0' && d.opcode === 10 && Math.abs(d.tsMs - Date.now()) < 60_000,
    `decoded as TypeScript's intent of queue 3, head 0: ${JSON.stringify(d)}`);
  t.equal(end, 4096 + 2 * (8 + payload.length), 'two intents committed');
  // Room for less than one more record: declined, the commit offset unmoved.
  native.storeReleaseU64(map, 16, BigInt(8192 - 30));
  t.same(unlink('b'), { served: false, errno: 0 }, 'no room left: declined');
  t.equal(commitOf(), 8192 - 30, 'nothing written');
  t.ok(fs.existsSync(path.join(dir, 'b')), 'nothing removed');
  native.storeReleaseU64(map, 16, BigInt(end));
  server.setSettled(false);
  t.same(unlink('b'), { served: false, errno: 0 }, 'unsettled again: declined');
  server.setSettled(true);
  server.setJournal(null);
  t.same(unlink('b'), { served: false, errno: 0 }, 'journal taken away: declined');
  // The benchmark's journaling-off mode: served without an intent.
  server.setUnjournaled(true);
  t.same(unlink('b'), { served: true, errno: 0 }, 'unjournaled (benchmark only): served');
  t.equal(commitOf(), end, 'with no intent written');
  t.equal(server.stats().unlink, 3);
});
