// The addon's fast path (native/src/fast_fuse.cc) against the TypeScript server it stands in
// for: the same replies for GETATTR, READ and WRITE, the status counters that show which path
// served, and the cases it must hand to TypeScript (released fhs, forgotten nodeids, appends,
// errors) answered exactly as TypeScript answers them.
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, waitFor, type Session } from './helpers';
import { FuseError } from './fuse_client';
import * as F from './fuse_proto';
import { queryStatus } from '../../cli/status';
import { native } from '../../shared/native';
import type { FastPathStats } from '../../shared/status_report';
import { hostFlockErrno } from '../helpers/flock';
import { loadState } from '../../worker/state/state_store';
import { stateFilePath } from '../../shared/config';
import { DATA_START, StateJournal } from '../../worker/state/journal';
import * as R from '../../worker/state/records';
import { noFileLimits, setNoFile } from '../helpers/rlimit';

const EBADF = 9;

/** The errno a request was refused with (0: it was not). */
async function errnoOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
    return 0;
  } catch (e) {
    if (e instanceof FuseError) return e.errno;
    throw e;
  }
}

/** `tmpfs`: the shared directory on /dev/shm (writes are served natively there; ext4 has no
 * RWF_NOWAIT buffered writes, so they go to the threadpool through TypeScript). */
async function session(t: Test, fastPath: boolean, tmpfs = false): Promise<{ s: Session; stateDir: string }> {
  // UNIX socket paths are limited to 108 bytes: keep the state dir (keeper.sock) short.
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-fp-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', {
    extraArgs: ['--state-dir', stateDir, ...(fastPath ? [] : ['--no-fast-path'])],
    ...(tmpfs ? { baseDir: fs.mkdtempSync('/dev/shm/vfsk-fp-') } : {}),
    setup: (shared) => {
      fs.writeFileSync(path.join(shared, 'data'), Buffer.from(Array.from({ length: 200_000 }, (_, i) => i % 251)));
      fs.writeFileSync(path.join(shared, 'log'), 'first\n');
    },
  });
  return { s, stateDir };
}

/** The worker pushes its stats once a second: poll until `cond` holds. */
function fastStats(stateDir: string, cond: (f: FastPathStats) => boolean, what: string): Promise<FastPathStats> {
  let last: FastPathStats | null = null;
  return waitFor((): FastPathStats | undefined => {
    const f = queryStatus(stateDir).fuse.fastPath;
    last = f;
    return f !== null && cond(f) ? f : undefined;
  }, what, 15_000, 50).catch((e: Error) => {
    throw new Error(`${e.message}; last seen ${JSON.stringify(last)}`);
  }) as Promise<FastPathStats>;
}

const NS = 1_000_000_000n;

function sameAttr(t: Test, a: F.Attr, host: fs.BigIntStats, what: string): void {
  // The wire's mtime is an i64 in a u64; a time before 1970 has seconds rounded down.
  const sec = host.mtimeNs >= 0n ? host.mtimeNs / NS : -((-host.mtimeNs + NS - 1n) / NS);
  t.same({ ino: a.ino, size: a.size, mode: a.mode, nlink: a.nlink, uid: a.uid, gid: a.gid, mtime: BigInt.asIntN(64, a.mtime), mtimensec: a.mtimensec },
    { ino: host.ino, size: host.size, mode: Number(host.mode), nlink: Number(host.nlink), uid: Number(host.uid), gid: Number(host.gid),
      mtime: sec, mtimensec: Number(host.mtimeNs - sec * NS) }, what);
}

for (const medium of ['tmpfs', 'ext4'] as const) t.test(`the fast path serves GETATTR, READ and WRITE with the replies TypeScript gives (${medium})`, async (t) => {
  const replies: Record<string, unknown> = {};
  for (const fastPath of [true, false]) {
    const { s, stateDir } = await session(t, fastPath, medium === 'tmpfs');
    const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'data');
    // A LOOKUP of a known inode: the fast path's (its count journaled by TypeScript).
    const again = await s.fuse.lookup(F.FUSE_ROOT_ID, 'data');
    t.equal(again.nodeid, e.nodeid, 'a second LOOKUP names the same nodeid');
    sameAttr(t, again.attr, fs.lstatSync(s.host('data'), { bigint: true }), 'with the attributes of the file');
    const o = await s.fuse.open(e.nodeid, F.O.RDWR);
    const attr = await s.fuse.getattr(e.nodeid);
    sameAttr(t, attr.attr, fs.lstatSync(s.host('data'), { bigint: true }), `GETATTR matches lstat (fast path ${fastPath})`);
    const root = await s.fuse.getattr(F.FUSE_ROOT_ID);
    sameAttr(t, root.attr, fs.lstatSync(s.shared, { bigint: true }), 'GETATTR of the root');
    const head = await s.fuse.read(e.nodeid, o.fh, 0, 4096);
    const tail = await s.fuse.read(e.nodeid, o.fh, 199_000, 4096); // short: EOF at 200,000
    const past = await s.fuse.read(e.nodeid, o.fh, 300_000, 4096);
    t.equal(await s.fuse.write(e.nodeid, o.fh, 10, Buffer.from('written here')), 12, 'WRITE says 12 bytes');
    t.equal(fs.readFileSync(s.host('data')).subarray(10, 22).toString(), 'written here', 'the bytes reached the file');
    // A write of up to 1 MiB is the addon's on tmpfs (reads above 128 KiB are the threadpool's).
    const big = Buffer.from(Array.from({ length: 700_000 }, (_, i) => (i * 7) % 256));
    t.equal(await s.fuse.write(e.nodeid, o.fh, 50_000, big), big.length, 'a 700,000-byte WRITE says all of it');
    t.ok(fs.readFileSync(s.host('data')).subarray(50_000, 750_000).equals(big), 'and all of it reached the file');
    await s.fuse.flush(e.nodeid, o.fh, 0x99n);
    const after = await s.fuse.read(e.nodeid, o.fh, 0, 32);
    // The ring's I/O threads (native/src/io_pool.h) on both media: a READ above 128 KiB (short
    // at EOF), WRITEs through an O_SYNC fh, and the errno of one through a read-only fh.
    const large = await s.fuse.read(e.nodeid, o.fh, 600_000, 200_000);
    t.ok(large.equals(fs.readFileSync(s.host('data')).subarray(600_000)), 'a 200,000-byte READ gets the bytes up to EOF');
    const sync = await s.fuse.open(e.nodeid, F.O.RDWR | F.O.SYNC);
    t.equal(await s.fuse.write(e.nodeid, sync.fh, 5, Buffer.from('synced')), 6, 'an O_SYNC WRITE says 6 bytes');
    t.equal(fs.readFileSync(s.host('data')).subarray(5, 11).toString(), 'synced', 'and reached the file');
    const readOnly = await s.fuse.open(e.nodeid, F.O.RDONLY | F.O.SYNC);
    const refused = await errnoOf(s.fuse.write(e.nodeid, readOnly.fh, 0, Buffer.from('no')));
    t.equal(refused, EBADF, 'a WRITE through a read-only fh: EBADF');
    // FSYNC (always on the I/O threads): fsync and fdatasync; an fh the session does not have.
    const synced = [await errnoOf(s.fuse.fsync(e.nodeid, o.fh)), await errnoOf(s.fuse.fsync(e.nodeid, sync.fh, true)),
      await errnoOf(s.fuse.fsync(e.nodeid, 987_654n))];
    t.same(synced.slice(0, 2), [0, 0], 'FSYNC and FDATASYNC succeed');
    await s.fuse.release(e.nodeid, sync.fh);
    await s.fuse.release(e.nodeid, readOnly.fh);
    replies[String(fastPath)] = { attrValid: [attr.attrValid, attr.attrValidNsec], head, tail, past, after: after.toString('hex'),
      entry: [again.entryValid, again.attrValid, again.generation], large: large.length, refused, synced };
    t.equal(tail.length, 1000, 'a read across EOF is short');
    t.equal(past.length, 0, 'a read past EOF is empty');
    if (fastPath) {
      const writes = medium === 'tmpfs' ? 2 : 0;
      const counted = (x: FastPathStats): boolean => x.getattr >= 2 && x.read >= 5 && x.write >= writes + 2 && (x.lookup ?? 0) >= 1 &&
        (x.flush ?? 0) >= 1 && (x.queuedRead ?? 0) >= 1 && (x.queuedWrite ?? 0) >= 2 && (x.fsync ?? 0) >= 2;
      const f = await fastStats(stateDir, counted, 'the fast path counters');
      t.ok(counted(f), `served natively, the large READ, the O_SYNC WRITEs and the FSYNCs on the I/O threads: ${JSON.stringify(f)}`);
      // Two LOOKUPs, two counts: one FORGET leaves the inode, the second drops it.
      await s.fuse.forget(e.nodeid, 1);
      t.equal((await s.fuse.getattr(e.nodeid)).attr.ino, attr.attr.ino, 'known after one FORGET');
      await s.fuse.release(e.nodeid, o.fh);
      await s.fuse.forget(e.nodeid, 1);
      t.equal(await errnoOf(s.fuse.getattr(e.nodeid)), EBADF, 'gone after the second: the fast-path LOOKUP counted once');
    } else {
      await waitFor(() => queryStatus(stateDir).fuse.inodes >= 2, 'worker stats');
      t.equal(queryStatus(stateDir).fuse.fastPath, null, '--no-fast-path: status says the fast path is off');
    }
    await s.close();
  }
  t.same(replies.true, replies.false, 'both paths gave the same replies');
});

t.test('the fast path serves GETXATTR and LISTXATTR (values, lists, sizes, ENODATA, ERANGE) with the replies TypeScript gives', async (t) => {
  const replies: Record<string, unknown> = {};
  for (const fastPath of [true, false]) {
    const { s, stateDir } = await session(t, fastPath, true);
    const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'data');
    fs.chmodSync(s.host('data'), 0o600);
    await s.fuse.setxattr(e.nodeid, 'user.k', Buffer.from('value of k'));
    const big = Buffer.alloc(3000, 0x5a);
    await s.fuse.setxattr(e.nodeid, 'user.big', big);
    const seen = {
      value: (await s.fuse.getxattr(e.nodeid, 'user.k', 256) as Buffer).toString(),
      size: await s.fuse.getxattr(e.nodeid, 'user.k', 0),
      bigOk: (await s.fuse.getxattr(e.nodeid, 'user.big', 65536 * 4) as Buffer).equals(big),
      missing: await errnoOf(s.fuse.getxattr(e.nodeid, 'user.missing', 256)),
      capability: await errnoOf(s.fuse.getxattr(e.nodeid, 'security.capability', 0)),
      tooSmall: await errnoOf(s.fuse.getxattr(e.nodeid, 'user.k', 3)),
      rootDir: await errnoOf(s.fuse.getxattr(F.FUSE_ROOT_ID, 'user.missing', 64)),
      // Another user of a 0600 root file: the kernel refuses with that user's fs ids (TypeScript).
      otherUser: await errnoOf(s.fuse.getxattr(e.nodeid, 'user.k', 256, { uid: 1000, gid: 1000 })),
      trusted: await errnoOf(s.fuse.getxattr(e.nodeid, 'trusted.x', 64)),
      unknownNode: await errnoOf(s.fuse.getxattr(987654n, 'user.k', 64)),
      // A trusted.* name set on the host is not listed (we may read it, the guest may not).
      list: await (async () => {
        const fd = fs.openSync(s.host('data'), 'r');
        try { native.setxattr(fd, 'trusted.hidden', Buffer.from('x'), 0); } finally { fs.closeSync(fd); }
        const size = await s.fuse.listxattr(e.nodeid, 0) as number;
        return {
          size, names: (await s.fuse.listxattr(e.nodeid, size) as string[]).sort(),
          tooSmall: await errnoOf(s.fuse.listxattr(e.nodeid, size - 1)),
          rootDir: await s.fuse.listxattr(F.FUSE_ROOT_ID, 0),
          otherUser: await s.fuse.listxattr(e.nodeid, 0, { uid: 1000, gid: 1000 }).then((x) => x, (err: FuseError) => `errno ${err.errno}`),
          unknownNode: await errnoOf(s.fuse.listxattr(987654n, 64)),
        };
      })(),
    };
    replies[String(fastPath)] = seen;
    if (fastPath) {
      const f = await fastStats(stateDir, (x) => (x.getxattr ?? 0) >= 7 && (x.listxattr ?? 0) >= 4, 'the fast path GETXATTR and LISTXATTR counters');
      t.ok((f.getxattr ?? 0) >= 7 && (f.listxattr ?? 0) >= 4, `GETXATTRs and LISTXATTRs served natively: ${JSON.stringify(f)}`);
    }
    await s.close();
  }
  t.same(replies.true, replies.false, 'both paths gave the same replies');
  t.same(replies.true, {
    value: 'value of k', size: 10, bigOk: true, missing: 61, capability: 61, tooSmall: 34, rootDir: 61,
    otherUser: 13, trusted: 61, unknownNode: EBADF,
    list: { size: 16, names: ['user.big', 'user.k'], tooSmall: 34, rootDir: 0, otherUser: 16, unknownNode: EBADF },
  }, 'the replies are the kernel\'s: ENODATA, ERANGE, EACCES for another user, and ours for trusted.* and an unknown nodeid');
});

t.test('the fast path serves STATFS and LSEEK (SEEK_DATA, SEEK_HOLE, ENXIO) with the replies TypeScript gives', async (t) => {
  const replies: Record<string, unknown> = {};
  const MIB = 1 << 20;
  for (const fastPath of [true, false]) {
    const { s, stateDir } = await session(t, fastPath, true);
    // Data at [0, 4096) and [1 MiB, 1 MiB + 4096), holes elsewhere, 2 MiB long.
    const fd = fs.openSync(s.host('sparse'), 'w');
    fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 0);
    fs.writeSync(fd, Buffer.alloc(4096, 2), 0, 4096, MIB);
    fs.ftruncateSync(fd, 2 * MIB);
    fs.closeSync(fd);
    const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'sparse');
    const other = await s.fuse.lookup(F.FUSE_ROOT_ID, 'data');
    const fh = (await s.fuse.open(e.nodeid, F.O.RDONLY)).fh;
    const seek = async (offset: number | bigint, whence: number, opts: { fh?: bigint; nodeid?: bigint } = {}): Promise<string> => {
      try {
        return String(await s.fuse.lseek(opts.nodeid ?? e.nodeid, opts.fh ?? fh, offset, whence));
      } catch (err) {
        if (err instanceof FuseError) return `errno ${err.errno}`;
        throw err;
      }
    };
    // Fields of a filesystem's statfs that do not change while it is used.
    const stable = (x: F.StatfsOut): unknown => ({ blocks: x.blocks, files: x.files, bsize: x.bsize, namelen: x.namelen, frsize: x.frsize, sane: x.bfree <= x.blocks && x.bavail <= x.blocks && x.ffree <= x.files });
    const seen = {
      lseek: [
        await seek(0, F.SEEK_DATA), await seek(0, F.SEEK_HOLE), await seek(4096, F.SEEK_DATA), await seek(100, F.SEEK_DATA),
        await seek(MIB, F.SEEK_HOLE), await seek(MIB + 4096, F.SEEK_DATA), await seek(1.5 * MIB, F.SEEK_HOLE),
        await seek(2 * MIB, F.SEEK_DATA), await seek(3 * MIB, F.SEEK_HOLE),
        // TypeScript's: other whence values, offsets it refuses, an fh of another inode or none.
        await seek(100, F.SEEK_SET), await seek(2n ** 60n, F.SEEK_DATA), await seek(0, F.SEEK_DATA, { nodeid: other.nodeid }),
        await seek(0, F.SEEK_DATA, { fh: 987654n }),
      ],
      statfsRoot: stable(await s.fuse.statfs(F.FUSE_ROOT_ID)),
      statfsFile: stable(await s.fuse.statfs(e.nodeid)),
      statfsUnknown: await errnoOf(s.fuse.statfs(987654n)),
    };
    replies[String(fastPath)] = seen;
    if (fastPath) {
      const f = await fastStats(stateDir, (x) => (x.lseek ?? 0) >= 9 && (x.statfs ?? 0) >= 2, 'the fast path STATFS and LSEEK counters');
      t.ok((f.lseek ?? 0) >= 9 && (f.statfs ?? 0) >= 2, `served natively: ${f.lseek} LSEEK, ${f.statfs} STATFS`);
    } else {
      const f = queryStatus(stateDir).fuse.fastPath;
      t.equal(f, null, 'the other session has no fast path');
    }
    await s.fuse.release(e.nodeid, fh, F.O.RDONLY);
    await s.close();
  }
  t.same(replies.true, replies.false, 'both paths gave the same replies');
  const want = (replies.true as { lseek: string[] }).lseek;
  t.same(want.slice(0, 9), ['0', '4096', String(MIB), '100', String(MIB + 4096), 'errno 6', String(1.5 * MIB), 'errno 6', 'errno 6'],
    'the kernel\'s answers: data and holes where they are, ENXIO past the last data or the end');
  t.same((replies.true as { statfsRoot: unknown }).statfsRoot, (replies.true as { statfsFile: unknown }).statfsFile, 'one filesystem');
});

t.test('the fast path serves SETATTR (mode, owner, size, times) with the replies TypeScript gives', async (t) => {
  const A = F.FATTR;
  const replies: Record<string, unknown> = {};
  for (const fastPath of [true, false]) {
    const { s, stateDir } = await session(t, fastPath, true);
    fs.symlinkSync('data', s.host('link'));
    const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'data');
    const link = await s.fuse.lookup(F.FUSE_ROOT_ID, 'link');
    const o = await s.fuse.open(e.nodeid, F.O.RDWR);
    const host = (): fs.BigIntStats => fs.lstatSync(s.host('data'), { bigint: true });
    /** What a reply says, checked against lstat of the file it names at that moment. */
    /** `times`: the request set both times to given values (else they differ between runs). */
    const attrOf = async (p: Promise<F.AttrOut>, times = false, file = 'data'): Promise<unknown> => {
      try {
        const r = await p;
        sameAttr(t, r.attr, fs.lstatSync(s.host(file), { bigint: true }), 'the reply has the file\'s attributes after the change');
        return { mode: r.attr.mode, uid: r.attr.uid, gid: r.attr.gid, size: r.attr.size, valid: [r.attrValid, r.attrValidNsec],
          ...(times ? { atime: [r.attr.atime, r.attr.atimensec], mtime: [r.attr.mtime, r.attr.mtimensec] } : {}) };
      } catch (err) {
        if (err instanceof FuseError) return { errno: err.errno };
        throw err;
      }
    };
    const seen = {
      chmodByInode: await attrOf(s.fuse.setattr(e.nodeid, { valid: A.MODE, mode: 0o100640 })),
      chmodByFh: await attrOf(s.fuse.setattr(e.nodeid, { valid: A.MODE | A.FH, fh: o.fh, mode: 0o2751 })),
      chown: await attrOf(s.fuse.setattr(e.nodeid, { valid: A.UID | A.GID, uid: 1234, gid: 5678 })),
      chgrpOnly: await attrOf(s.fuse.setattr(e.nodeid, { valid: A.GID, gid: 42 })),
      times: await attrOf(s.fuse.setattr(e.nodeid, { valid: A.ATIME | A.MTIME, atime: 1_600_000_000n, atimensec: 5, mtime: -2n, mtimensec: 999_999_999 }), true),
      timesByFh: await attrOf(s.fuse.setattr(e.nodeid, { valid: A.MTIME | A.FH, fh: o.fh, mtime: 1_234_567_890n, mtimensec: 42 })),
      truncateByFh: await attrOf(s.fuse.setattr(e.nodeid, { valid: A.SIZE | A.FH, fh: o.fh, size: 1000 })),
      all: await attrOf(s.fuse.setattr(e.nodeid, { valid: A.MODE | A.UID | A.SIZE | A.ATIME | A.MTIME | A.FH | A.LOCKOWNER | A.CTIME,
        fh: o.fh, mode: 0o600, uid: 0, size: 3, atime: 7n, mtime: 8n, ctime: 9n, lockOwner: 77n }), true),
      // Left to TypeScript: a size without an fh, KILL_SUIDGID with a size, a symlink's mode,
      // bad nanoseconds, an unknown fh or nodeid.
      truncateByInode: await attrOf(s.fuse.setattr(e.nodeid, { valid: A.SIZE, size: 2 })),
      killSuid: await attrOf(s.fuse.setattr(e.nodeid, { valid: A.SIZE | A.FH | A.KILL_SUIDGID, fh: o.fh, size: 1 })),
      symlinkMode: await attrOf(s.fuse.setattr(link.nodeid, { valid: A.MODE, mode: 0o777 }), false, 'link'),
      symlinkTimes: await attrOf(s.fuse.setattr(link.nodeid, { valid: A.MTIME, mtime: 99n }), false, 'link'),
      badNsec: await attrOf(s.fuse.setattr(e.nodeid, { valid: A.MTIME, mtime: 1n, mtimensec: 1_000_000_000 })),
      unknownFh: await attrOf(s.fuse.setattr(e.nodeid, { valid: A.MODE | A.FH, fh: o.fh + 99n, mode: 0o644 })),
      unknownNode: await attrOf(s.fuse.setattr(987654n, { valid: A.MODE, mode: 0o644 })),
      nowTimes: await s.fuse.setattr(e.nodeid, { valid: A.ATIME_NOW | A.MTIME_NOW }).then((r) => {
        sameAttr(t, r.attr, host(), 'MTIME_NOW: the reply has the file\'s new times');
        return r.attr.mtime >= BigInt(Math.floor(Date.now() / 1000) - 60);
      }),
    };
    t.equal(Number(host().mode) & 0o7777, 0o600, 'the host file has the mode of the last SETATTR');
    t.equal(host().size, 1n, 'and its size');
    replies[String(fastPath)] = seen;
    if (fastPath) {
      const f = await fastStats(stateDir, (x) => (x.setattr ?? 0) >= 9, 'the fast path SETATTR counter');
      t.ok((f.setattr ?? 0) >= 9, `SETATTRs served natively: ${JSON.stringify(f)}`);
    }
    await s.close();
  }
  t.same(replies.true, replies.false, 'both paths gave the same replies');
  const r = replies.true as Record<string, { errno?: number; mode?: number; size?: bigint }>;
  t.same([r.symlinkMode?.errno, r.badNsec?.errno, r.unknownFh?.errno, r.unknownNode?.errno], [95, 22, EBADF, EBADF],
    'EOPNOTSUPP for a symlink\'s mode, EINVAL for bad nanoseconds, EBADF for an unknown fh or nodeid');
  t.same([r.chmodByFh?.mode, r.truncateByFh?.size, r.all?.size], [0o102751, 1000n, 3n], 'the values took');
});

t.test('the fast path serves OPEN and RELEASE with the replies TypeScript gives, fh numbers and locks included', async (t) => {
  const replies: Record<string, unknown> = {};
  for (const fastPath of [true, false]) {
    const { s, stateDir } = await session(t, fastPath, true);
    fs.mkdirSync(s.host('dir'));
    fs.symlinkSync('data', s.host('link'));
    const root = F.FUSE_ROOT_ID;
    const data = (await s.fuse.lookup(root, 'data')).nodeid;
    const log = (await s.fuse.lookup(root, 'log')).nodeid;
    const dir = (await s.fuse.lookup(root, 'dir')).nodeid;
    const link = (await s.fuse.lookup(root, 'link')).nodeid;
    const seen: Record<string, unknown> = {};
    // Every taker of an fh in turn: the addon's OPEN must number after the others.
    const ro = await s.fuse.open(data, F.O.RDONLY);
    const d = await s.fuse.opendir(dir);
    const rw = await s.fuse.open(data, F.O.RDWR | F.O.NONBLOCK | F.O.LARGEFILE);
    const ap = await s.fuse.open(log, F.O.WRONLY | F.O.APPEND);
    seen.fhs = [ro, d, rw, ap].map((o) => [o.fh, o.openFlags]);
    seen.read = (await s.fuse.read(data, ro.fh, 5, 8)).toString('hex');
    t.equal(await s.fuse.write(data, rw.fh, 0, Buffer.from('RW')), 2, 'WRITE through an fh OPEN gave');
    // O_APPEND is kept in the fh's flags: this write is TypeScript's, at the end.
    t.equal(await s.fuse.write(log, ap.fh, 0, Buffer.from('second\n')), 7, 'an append through the fh');
    t.equal(fs.readFileSync(s.host('log'), 'utf8'), 'first\nsecond\n', 'appended, not written at 0');
    // What the addon declines: O_TRUNC, a directory, a symlink, a released or unknown fh.
    const tr = await s.fuse.open(log, F.O.WRONLY | F.O.TRUNC);
    t.equal(fs.statSync(s.host('log')).size, 0, 'O_TRUNC truncated (TypeScript)');
    seen.trunc = tr.fh;
    // OPEN of a directory (TypeScript opens it O_RDONLY, as virtiofsd does).
    const od = await s.fuse.open(dir, F.O.RDONLY);
    seen.dirOpen = od.fh;
    await s.fuse.release(dir, od.fh);
    seen.errors = [await errnoOf(s.fuse.open(dir, F.O.RDWR)), await errnoOf(s.fuse.open(link, F.O.RDONLY)),
      await errnoOf(s.fuse.open(12345n, F.O.RDONLY))];
    // Locks through natively opened fhs end with their RELEASE (done by TypeScript's release).
    await s.fuse.setlk(data, rw.fh, 0x77n, { start: 0n, end: 9n, type: F.F_WRLCK, pid: 4242 });
    await s.fuse.setlk(log, ap.fh, 0x78n, { start: 0n, end: 0n, type: F.F_WRLCK, pid: 0 }, true);
    t.equal(hostFlockErrno(s.host('log')), 'EWOULDBLOCK', 'the flock is held');
    for (const [n, o] of [[data, ro], [data, rw], [log, ap], [log, tr]] as const) await s.fuse.release(n, o.fh);
    t.equal(hostFlockErrno(s.host('log')), null, 'the flock went with its RELEASE');
    const other = await s.fuse.open(data, F.O.RDWR);
    t.equal(await errnoOf(s.fuse.setlk(data, other.fh, 0x79n, { start: 0n, end: 9n, type: F.F_WRLCK, pid: 5353 })), 0,
      'the POSIX lock went with the RELEASE of the fh it was taken through');
    seen.again = await errnoOf(s.fuse.release(data, rw.fh));
    seen.other = other.fh;
    await s.fuse.release(data, other.fh);
    await s.fuse.releasedir(dir, d.fh);
    replies[String(fastPath)] = seen;
    // The flock settled its fh's fd into the keeper; the RELEASE's removal follows the publish.
    await waitFor(() => { const q = queryStatus(stateDir); return q.fuse.openFiles === 0 && (q.fdNames.file ?? 0) === 0 ? true : undefined; },
      'no open files, and no file fd in the keeper', 10_000).catch((e: Error) => { const q = queryStatus(stateDir); throw new Error(`${e.message}: ${JSON.stringify({ open: q.fuse.openFiles, fdNames: q.fdNames })}`); });
    t.pass('no open files, and no file fd in the keeper');
    if (fastPath) {
      const f = await fastStats(stateDir, (x) => (x.open ?? 0) >= 4 && (x.release ?? 0) >= 5 && (x.releasedir ?? 0) >= 1, 'the fast path OPEN and RELEASE counters');
      t.ok((f.open ?? 0) >= 4 && (f.release ?? 0) >= 5, `served natively: ${JSON.stringify(f)}`);
      t.same([f.opendir, f.releasedir], [1, 1], 'and the OPENDIR and RELEASEDIR of the dir');
      // O_TRUNC, the directory twice, the symlink, the unknown nodeid; the second RELEASE.
      t.same([f.declinedBy?.OPEN, f.declinedBy?.RELEASE], [5, 1], 'status counts what it declined, by opcode');
    }
    await s.close();
  }
  t.same(replies.true, replies.false, 'both paths gave the same fhs, flags, bytes and errors');
});

t.test('the fast path serves CREATE and MKDIR of new names with the replies TypeScript gives: nodeids, fhs, modes, flags', async (t) => {
  const seen: Record<string, unknown> = {};
  for (const fastPath of [true, false]) {
    const { s, stateDir } = await session(t, fastPath, true);
    fs.mkdirSync(s.host('dir'));
    const root = F.FUSE_ROOT_ID;
    const dir = (await s.fuse.lookup(root, 'dir')).nodeid;
    const data = (await s.fuse.lookup(root, 'data')).nodeid;
    const r: Record<string, unknown> = {};
    const made = async (parent: bigint, name: string, flags: number, mode: number): Promise<unknown> => {
      try {
        const c = await s.fuse.create(parent, name, flags, mode);
        return { nodeid: c.entry.nodeid, mode: c.entry.attr.mode, size: c.entry.attr.size, fh: c.open.fh, openFlags: c.open.openFlags };
      } catch (e) {
        if (e instanceof FuseError) return e.errno;
        throw e;
      }
    };
    r.excl = await made(dir, 'n1', F.O.RDWR | F.O.CREAT | F.O.EXCL, 0o640);
    r.plain = await made(dir, 'n2', F.O.WRONLY | F.O.CREAT, 0o600);
    r.appendTrunc = await made(root, 'n3', F.O.WRONLY | F.O.CREAT | F.O.APPEND | F.O.TRUNC, 0o644);
    r.exists = await made(root, 'data', F.O.RDWR | F.O.CREAT | F.O.EXCL, 0o644); // EEXIST (TypeScript's)
    r.openExisting = await made(root, 'log', F.O.RDONLY | F.O.CREAT, 0o644); // opens it (TypeScript's)
    r.dot = await made(dir, '.', F.O.RDWR | F.O.CREAT, 0o644);
    r.slash = await made(dir, 'a/b', F.O.RDWR | F.O.CREAT, 0o644);
    r.underFile = await made(data, 'x', F.O.RDWR | F.O.CREAT, 0o644);
    r.unknownParent = await made(987654n, 'x', F.O.RDWR | F.O.CREAT, 0o644);
    const mkdir = (parent: bigint, name: string, mode: number): Promise<unknown> => s.fuse.mkdir(parent, name, mode)
      .then((e) => ({ nodeid: e.nodeid, mode: e.attr.mode }), (e: unknown) => { if (e instanceof FuseError) return e.errno; throw e; });
    r.mkdir = await mkdir(dir, 'm1', 0o750);
    r.mkdirExists = await mkdir(root, 'dir', 0o755); // EEXIST (TypeScript's)
    r.mkdirDot = await mkdir(dir, '..', 0o755); // EINVAL (TypeScript's)
    r.createInMade = await made((r.mkdir as { nodeid: bigint }).nodeid, 'inner', F.O.RDWR | F.O.CREAT | F.O.EXCL, 0o600);
    const inner = r.createInMade as { nodeid: bigint; fh: bigint };
    await s.fuse.release(inner.nodeid, inner.fh);
    const n1 = r.excl as { nodeid: bigint; fh: bigint };
    const n3 = r.appendTrunc as { nodeid: bigint; fh: bigint };
    r.write = await s.fuse.write(n1.nodeid, n1.fh, 0, Buffer.from('created'));
    r.readBack = (await s.fuse.read(n1.nodeid, n1.fh, 0, 16)).toString();
    await s.fuse.write(n3.nodeid, n3.fh, 0, Buffer.from('one'));
    await s.fuse.write(n3.nodeid, n3.fh, 0, Buffer.from('two'));
    r.appended = fs.readFileSync(s.host('n3'), 'utf8'); // O_APPEND kept in the fh's flags
    r.hostModes = ['dir/n1', 'dir/n2', 'n3', 'dir/m1', 'dir/m1/inner'].map((n) => (fs.statSync(s.host(n)).mode & 0o7777).toString(8));
    // The created inode is the session's: a LOOKUP finds the same nodeid, a FORGET of both drops it.
    r.lookup = (await s.fuse.lookup(dir, 'n1')).nodeid === n1.nodeid;
    for (const [n, fh] of [[n1.nodeid, n1.fh], [n3.nodeid, n3.fh]] as const) await s.fuse.release(n, fh);
    const n2 = r.plain as { nodeid: bigint; fh: bigint };
    await s.fuse.release(n2.nodeid, n2.fh);
    const oe = r.openExisting as { nodeid: bigint; fh: bigint };
    await s.fuse.release(oe.nodeid, oe.fh);
    seen[String(fastPath)] = r;
    await waitFor(() => { const q = queryStatus(stateDir); return q.fuse.openFiles === 0 && (q.fdNames.file ?? 0) === 0 ? true : undefined; },
      'no open files, and no file fd in the keeper', 10_000);
    if (fastPath) {
      const f = await fastStats(stateDir, (x) => (x.create ?? 0) >= 4 && (x.mkdir ?? 0) >= 1, 'the fast path CREATE and MKDIR counters');
      t.same([f.create, f.mkdir], [4, 1], `the new names were created natively (one in the new dir): ${JSON.stringify(f)}`);
      // The existing dir's EEXIST is mkdirat's, answered natively; data, log, '.', 'a/b', under a
      // file, under an unknown parent, and MKDIR of '..': TypeScript's.
      t.equal(f.intentErrors, 1, 'one errno answered natively');
      t.same([f.declinedBy?.CREATE, f.declinedBy?.MKDIR], [6, 1], 'the rest declined');
    }
    await s.close();
  }
  t.same(seen.true, seen.false, 'both paths gave the same nodeids, fhs, attributes and errors');
  const r = seen.true as Record<string, unknown>;
  t.same([r.exists, r.dot, r.slash, r.underFile, r.unknownParent], [17, 22, 22, 20, EBADF], 'EEXIST, EINVAL, ENOTDIR, EBADF');
  t.same([r.mkdirExists, r.mkdirDot], [17, 22], 'MKDIR: EEXIST, EINVAL');
  t.same([r.write, r.readBack, r.appended, r.hostModes, r.lookup], [7, 'created', 'onetwo', ['640', '600', '644', '750', '600'], true], 'the files are there as asked');
});

t.test('the fast path serves UNLINK and RMDIR with the replies TypeScript gives, after the keeper holds every open fd', async (t) => {
  const seen: Record<string, unknown> = {};
  for (const fastPath of [true, false]) {
    const { s, stateDir } = await session(t, fastPath, true);
    fs.mkdirSync(s.host('dir'));
    fs.mkdirSync(s.host('dir/sub'));
    fs.mkdirSync(s.host('full'));
    fs.writeFileSync(s.host('full/x'), 'x');
    for (const n of ['a', 'b', 'c', 'open']) fs.writeFileSync(s.host(`dir/${n}`), n);
    const root = F.FUSE_ROOT_ID;
    const dir = (await s.fuse.lookup(root, 'dir')).nodeid;
    const data = (await s.fuse.lookup(root, 'data')).nodeid;
    const r: Record<string, unknown> = {
      a: await errnoOf(s.fuse.unlink(dir, 'a')),
      again: await errnoOf(s.fuse.unlink(dir, 'a')), // ENOENT, from the syscall
      dirAsFile: await errnoOf(s.fuse.unlink(root, 'dir')), // EISDIR
      notEmpty: await errnoOf(s.fuse.rmdir(root, 'full')), // ENOTEMPTY
      fileAsDir: await errnoOf(s.fuse.rmdir(dir, 'b')), // ENOTDIR
      underFile: await errnoOf(s.fuse.unlink(data, 'x')), // ENOTDIR: the parent is a file (TypeScript's)
      dot: await errnoOf(s.fuse.rmdir(dir, '.')), // EINVAL (TypeScript's)
      slash: await errnoOf(s.fuse.unlink(dir, 'b/c')), // EINVAL (TypeScript's)
      unknownParent: await errnoOf(s.fuse.unlink(987654n, 'a')),
      sub: await errnoOf(s.fuse.rmdir(dir, 'sub')),
    };
    // A file open through an fh, then unlinked: the keeper must hold its fd first (the first
    // UNLINK after the OPEN is TypeScript's, which waits for the keeper), and it stays readable.
    const open = (await s.fuse.lookup(dir, 'open')).nodeid;
    const fh = (await s.fuse.open(open, F.O.RDONLY)).fh;
    r.openUnlinked = await errnoOf(s.fuse.unlink(dir, 'open'));
    r.readAfter = (await s.fuse.read(open, fh, 0, 16)).toString();
    r.b = await errnoOf(s.fuse.unlink(dir, 'b'));
    await s.fuse.release(open, fh);
    r.left = fs.readdirSync(s.host('dir')).sort();
    seen[String(fastPath)] = r;
    if (fastPath) {
      const f = await fastStats(stateDir, (x) => (x.unlink ?? 0) + (x.rmdir ?? 0) >= 7, 'the fast path UNLINK and RMDIR counters');
      // UNLINK a, again, dir, b; RMDIR full, b, sub: theirs (errors included). The UNLINK right
      // after the OPEN, of a parent that is a file, '.', 'b/c' and the unknown parent: TypeScript's.
      t.same([f.unlink, f.rmdir], [4, 3], `served natively: ${JSON.stringify(f)}`);
      t.same([f.declinedBy?.UNLINK, f.declinedBy?.RMDIR], [4, 1], 'and declined');
    }
    await s.close();
  }
  t.same(seen.true, seen.false, 'both paths gave the same replies');
  t.same(seen.true, { a: 0, again: 2, dirAsFile: 21, notEmpty: 39, fileAsDir: 20, underFile: 20, dot: 22, slash: 22, unknownParent: EBADF,
    sub: 0, openUnlinked: 0, readAfter: 'open', b: 0, left: ['c'] }, 'ENOENT, EISDIR, ENOTEMPTY, ENOTDIR, EINVAL, EBADF');
});

t.test('a SETATTR, UNLINK, RMDIR, failed MKDIR, LOOKUP, READDIRPLUS or FORGET the addon journals itself: its outcome in the state file is the reply the guest got, with its session change', async (t) => {
  const { s, stateDir } = await session(t, true, true);
  fs.writeFileSync(s.host('m'), 'M', { mode: 0o644 });
  fs.writeFileSync(s.host('gone'), 'G');
  fs.mkdirSync(s.host('rd'));
  fs.mkdirSync(s.host('exists'));
  const root = F.FUSE_ROOT_ID;
  const m = (await s.fuse.lookup(root, 'm')).nodeid;
  /** The outcomes of `opcode` in the state file, as a successor would fold them. */
  const outcomes = (opcode: number): Buffer[] =>
    [...loadState(stateFilePath(stateDir)).ops.values()].filter((o) => o.opcode === opcode && o.reply !== null).map((o) => o.reply!);
  const attr = (await s.fuse.setattr(m, { valid: F.FATTR.MODE, mode: 0o100600 })).attr;
  const setattrs = outcomes(F.Op.SETATTR);
  // out header (16 bytes), attr_valid, attr_valid_nsec and padding (16), then fuse_attr: its
  // mode after ino, size, blocks, the three times (48) and their nanoseconds (12).
  t.ok(setattrs.some((r) => r.length === 16 + 104 && r.readInt32LE(4) === 0 && r.readUInt32LE(92) === attr.mode && r.readBigUInt64LE(32) === attr.ino),
    `the SETATTR's reply is journaled (mode ${attr.mode.toString(8)})`);
  await s.fuse.unlink(root, 'gone');
  t.ok(outcomes(F.Op.UNLINK).some((r) => r.length === 16 && r.readInt32LE(4) === 0), 'the UNLINK\'s reply (success) is journaled');
  await s.fuse.rmdir(root, 'rd');
  t.ok(outcomes(F.Op.RMDIR).some((r) => r.length === 16 && r.readInt32LE(4) === 0), 'the RMDIR\'s reply (success) is journaled');
  t.equal(await errnoOf(s.fuse.mkdir(root, 'exists', 0o755)), F.Errno.EEXIST, 'MKDIR of a name that exists: EEXIST');
  t.ok(outcomes(F.Op.MKDIR).some((r) => r.length === 16 && r.readInt32LE(4) === -F.Errno.EEXIST), 'the MKDIR\'s errno reply is journaled');
  // LOOKUPs of a known inode (one more lookup) and of a new one (numbered by the addon, named by
  // its handle): journaled by the addon too, with those session changes; published before
  // TypeScript applies them, so the state file must already say them.
  const lookupOutcomes = (): Buffer[] => outcomes(F.Op.LOOKUP).filter((r) => r.length === 16 + 128);
  const before = lookupOutcomes().length;
  t.equal((await s.fuse.lookup(root, 'm')).nodeid, m, 'a LOOKUP of the known inode');
  fs.writeFileSync(s.host('fresh'), 'F');
  const fresh = await s.fuse.lookup(root, 'fresh');
  const journaled = lookupOutcomes();
  t.same(journaled.slice(before).map((r) => r.readBigUInt64LE(16)), [m, fresh.nodeid], 'both LOOKUPs\' replies are journaled, in order');
  // The known inode's LOOKUP in a TAG_LOOKUPS record (as the request log writes a batch of
  // them), the file's header raised to that record's schema; the new inode's as an outcome.
  const journal = StateJournal.open(stateFilePath(stateDir), [R.LOOKUPS_SCHEMA]);
  const records = journal.payloads(DATA_START).map((p) => R.decodePayload(p));
  t.equal(journal.schemaVersion, R.LOOKUPS_SCHEMA, 'the header says the TAG_LOOKUPS schema');
  journal.close();
  const lookupsRecord = records.find((d) => d.t === 'lookups' && d.lookups.some((l) => l.nodeid === Number(m)));
  t.ok(lookupsRecord !== undefined, 'the known inode\'s LOOKUP is in a TAG_LOOKUPS record');
  t.ok(records.some((d) => d.t === 'outcome' && d.opcode === F.Op.LOOKUP && d.mutations.some((x) => x.op === 'addInode' && x.nodeid === Number(fresh.nodeid))),
    'the new inode\'s LOOKUP is an outcome with its addInode');
  const loaded = loadState(stateFilePath(stateDir)).fs!;
  t.equal(loaded.getInode(Number(m))?.lookupCount, 2, 'the known inode\'s count is 2 in the state a successor loads (the first LOOKUP and this one)');
  const freshInode = loaded.getInode(Number(fresh.nodeid));
  t.same([freshInode?.ino, freshInode?.lookupCount, freshInode?.handle !== null], [BigInt(fs.statSync(s.host('fresh')).ino), 1, true],
    'the new inode is in it, counted once, with its handle');
  // A READDIRPLUS (of 'm' and 'fresh', known, and 'late', new) and FORGETs, journaled by the
  // addon with their session changes: each entry's lookup or new inode and the dir's position;
  // the dropped lookups.
  fs.writeFileSync(s.host('late'), 'L');
  const dh = await s.fuse.opendir(root);
  const listed = (await s.fuse.readdirAll(root, dh.fh, { plus: true })).entries;
  await s.fuse.releasedir(root, dh.fh);
  const late = listed.find((d) => d.name.toString() === 'late')!.entry!.nodeid;
  const afterList = loadState(stateFilePath(stateDir));
  const plusOutcome = [...afterList.ops.values()].some((o) => o.opcode === F.Op.READDIRPLUS && o.reply !== null && o.reply.includes(Buffer.from('late')));
  t.ok(plusOutcome, 'the READDIRPLUS reply is journaled');
  const counts = (st: ReturnType<typeof loadState>): Array<number | undefined> => [m, fresh.nodeid, late].map((id) => st.fs!.getInode(Number(id))?.lookupCount);
  t.same(counts(afterList), [3, 2, 1], 'each listed inode counted once more, the new one added, in the state a successor loads');
  await s.fuse.batchForget([{ nodeid: late, nlookup: 1n }, { nodeid: m, nlookup: 1n }]);
  await s.fuse.forget(fresh.nodeid, 1);
  t.same(counts(loadState(stateFilePath(stateDir))), [2, 1, undefined], 'the BATCH_FORGET and FORGET are journaled: the new inode is gone, the others counted down');
  // The worker's own session applied them too.
  t.equal(await errnoOf(s.fuse.getattr(late)), F.Errno.EBADF, 'the inode forgotten is gone from the worker\'s session');
  await s.fuse.forget(fresh.nodeid, 1);
  t.equal(await errnoOf(s.fuse.getattr(fresh.nodeid)), F.Errno.EBADF, 'the new inode is gone after one more FORGET');
  await s.fuse.forget(m, 1);
  t.equal((await s.fuse.getattr(m)).attr.ino, BigInt(fs.statSync(s.host('m')).ino), 'the other is still there after one FORGET less than its count');
  // Three LOOKUPs: of 'm' (new, then known) and of 'fresh' (new); the READDIRPLUS calls; three
  // FORGETs (the BATCH_FORGET before them, the hiprio queue's first request, is served natively
  // but journaled by TypeScript: the queue's first completion turns the native kicks on). A
  // request JavaScript's own kick pops (one that came while it ran) is served natively and
  // journaled by JavaScript too: the readdirAll's calls may be. The crash matrix shows each
  // kind dying in the addon's journaling.
  const f = await fastStats(stateDir, (x) => (x.forget ?? 0) >= 5 && (x.ownOutcomes ?? 0) >= 10, 'the addon\'s own outcomes');
  const readdirs = f.readdirplus ?? 0;
  t.ok(readdirs >= 1 && f.ownOutcomes! >= 10 && f.ownOutcomes! <= 10 + readdirs, `the READDIRPLUS calls (${readdirs}) served natively, journaled by the addon (${f.ownOutcomes})`);
  t.same([f.setattr, f.unlink, f.rmdir, f.intentErrors, f.lookup, f.lookupNew, f.forget], [1, 1, 1, 1, 1, 2, 5],
    `served and journaled by the addon: ${JSON.stringify(f)}`);
  t.same([fs.statSync(s.host('m')).mode & 0o777, fs.existsSync(s.host('gone')), fs.existsSync(s.host('rd'))], [0o600, false, false], 'and done on the host');
});

t.test('the fast path serves READDIRPLUS with the replies TypeScript gives: entries, new inodes, counts, positions', async (t) => {
  const seen: Record<string, unknown> = {};
  for (const fastPath of [true, false]) {
    const { s, stateDir } = await session(t, fastPath, true);
    /** What a listing of the host dir `dir` showed: inode numbers as whether they are the
     * host's, times left out (the two runs' files are not the same). */
    const shown = (ents: F.Dirent[], dir: string): unknown[] => ents.map((d) => {
      const name = d.name.toString();
      const ino = BigInt(fs.lstatSync(name === '..' && dir === s.shared ? dir : path.join(dir, name)).ino);
      return {
        name, ino: d.ino === ino, off: d.off, type: d.type, nodeid: d.entry?.nodeid ?? null,
        attr: d.entry === undefined || d.entry.nodeid === 0n ? null : [d.entry.attr.ino === ino, d.entry.attr.mode, d.entry.attr.size, d.entry.attr.nlink, d.entry.generation, d.entry.entryValid],
      };
    });
    fs.mkdirSync(s.host('big'));
    for (let i = 0; i < 120; i++) fs.writeFileSync(s.host(`big/f${String(i).padStart(3, '0')}`), 'x'.repeat(i));
    fs.mkdirSync(s.host('big/sub'));
    fs.symlinkSync('f000', s.host('big/link'));
    fs.mkdirSync(s.host('mixed'));
    for (const n of ['k1', 'k2', 'new', 'k3']) fs.writeFileSync(s.host(`mixed/${n}`), n);
    const root = F.FUSE_ROOT_ID;
    const big = (await s.fuse.lookup(root, 'big')).nodeid;
    const mixed = (await s.fuse.lookup(root, 'mixed')).nodeid;
    const ids = new Map<string, bigint>();
    for (const n of fs.readdirSync(s.host('big'))) ids.set(n, (await s.fuse.lookup(big, n)).nodeid);
    for (const n of ['k1', 'k2', 'k3']) ids.set(n, (await s.fuse.lookup(mixed, n)).nodeid);
    const r: Record<string, unknown> = {};
    // A whole listing in 4 KiB replies (the addon's), then again in small ones.
    const dh = (await s.fuse.opendir(big)).fh;
    const whole = await s.fuse.readdirAll(big, dh, { plus: true });
    r.whole = shown(whole.entries, s.host('big'));
    r.wholeCalls = whole.calls;
    const small = await s.fuse.readdirAll(big, dh, { plus: true, size: 700 });
    r.small = shown(small.entries, s.host('big'));
    // Part of a listing here, a READDIR (TypeScript's) in the middle, the rest: each entry once.
    const part = await s.fuse.readdirplus(big, dh, 0, 2000);
    const mid = await s.fuse.readdir(big, dh, part[part.length - 1]!.off, 300);
    const rest = await s.fuse.readdirAll(big, dh, { plus: true });
    r.rewound = rest.entries.length;
    const fromMid: F.Dirent[] = [];
    for (let off = mid[mid.length - 1]!.off, calls = 0; calls < 100; calls++) {
      const page = await s.fuse.readdirplus(big, dh, off, 4096);
      if (page.length === 0) break;
      fromMid.push(...page);
      off = page[page.length - 1]!.off;
    }
    r.pieced = [...part, ...mid, ...fromMid].map((d) => d.name.toString()).sort();
    // A name the session does not know: added by the addon as TypeScript would add it.
    const mh = (await s.fuse.opendir(mixed)).fh;
    const m = await s.fuse.readdirAll(mixed, mh, { plus: true });
    r.mixed = shown(m.entries, s.host('mixed'));
    r.mixedAgain = shown((await s.fuse.readdirAll(mixed, mh, { plus: true })).entries, s.host('mixed'));
    // The root: '..' shows the root's own inode number.
    const rh = (await s.fuse.opendir(root)).fh;
    const rootList = (await s.fuse.readdirAll(root, rh, { plus: true })).entries;
    r.root = shown(rootList, s.shared);
    // A READDIRPLUS of an fh under another nodeid, and of no open dir: EBADF.
    r.wrongNode = await errnoOf(s.fuse.readdirplus(mixed, dh, 0));
    r.noDir = await errnoOf(s.fuse.readdirplus(big, 987654n, 0));
    for (const h of [dh, mh]) await s.fuse.releasedir(h === dh ? big : mixed, h);
    await s.fuse.releasedir(root, rh);
    // Every listing counted one lookup per entry: f007 was looked up once and listed in five
    // replies (whole, small, part or rest, rest, from the middle), so six FORGETs drop it.
    const f7 = ids.get('f007')!;
    const listed = [whole.entries, small.entries, part, rest.entries, fromMid].filter((l) => l.some((d) => d.name.toString() === 'f007')).length;
    await s.fuse.batchForget([{ nodeid: f7, nlookup: listed }]);
    r.keptAfterListed = (await s.fuse.getattr(f7)).attr.size;
    await s.fuse.forget(f7, 1);
    r.goneAfterAll = await errnoOf(s.fuse.getattr(f7));
    seen[String(fastPath)] = r;
    if (fastPath) {
      const f = await fastStats(stateDir, (x) => (x.readdirplus ?? 0) >= 2, 'the fast path READDIRPLUS counter');
      t.ok((f.readdirplus ?? 0) >= whole.calls + small.calls, `served natively: ${JSON.stringify(f)}`);
      t.ok((f.direntsPlus ?? 0) >= 2 * 122, 'every entry of the two whole listings among them');
      t.ok((f.direntsNew ?? 0) >= 3, `the names the session did not know added natively (mixed/new, data, log): ${f.direntsNew}`);
      t.ok((f.declinedBy?.READDIRPLUS ?? 0) >= 2, 'the seeks after the READDIR declined');
    }
    await s.close();
  }
  t.same(seen.true, seen.false, 'both paths gave the same replies');
  const r = seen.true as Record<string, unknown>;
  t.equal((r.whole as unknown[]).length, 124, "122 names, '.' and '..'");
  t.same(r.small, r.whole, 'small replies list the same');
  t.same(r.pieced, ['.', '..', ...[...Array(120).keys()].map((i) => `f${String(i).padStart(3, '0')}`), 'link', 'sub'].sort(), 'a listing pieced from both paths has each entry once');
  t.equal(r.rewound, 124, 'a listing from 0 after TypeScript read the fd has everything');
  t.ok((r.root as Array<{ name: string; ino: boolean }>).every((d) => d.ino), "the root's '..' is the root, and every inode number the host's");
  t.same((r.whole as Array<{ name: string; ino: boolean; attr: unknown[] | null }>).filter((d) => !(d.ino && (d.attr === null || d.attr[0] === true))), [], 'each entry with its own inode number and attributes');
  t.same([r.wrongNode, r.noDir, r.keptAfterListed, r.goneAfterAll], [EBADF, EBADF, 7n, EBADF], 'EBADF; each listing counted once');
});

t.test('with the inode fd cache full, a READDIRPLUS names new inodes by handle as TypeScript does, opening none', async (t) => {
  const seen: Record<string, unknown> = {};
  for (const fastPath of [true, false]) {
    const { s, stateDir } = await session(t, fastPath, true);
    fs.mkdirSync(s.host('many'));
    for (let i = 0; i < 600; i++) fs.writeFileSync(s.host(`many/m${i}`), String(i));
    // Every worker from now on under a 2048-fd limit (an inode fd cache of 256): two kills
    // hand the session to a standby started under it.
    const keeperPid = queryStatus(stateDir).keeper.pid!;
    setNoFile(keeperPid, 2048, 2048);
    for (let k = 0; k < 2; k++) {
      const pid = (await waitFor(() => queryStatus(stateDir).worker.pid, 'the worker pid', 30_000))!;
      await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'a ready standby', 30_000);
      process.kill(pid, 'SIGKILL');
      await waitFor(() => { const q = queryStatus(stateDir); return q.worker.state === 'running' && q.worker.pid !== null && q.worker.pid !== pid ? q : undefined; }, 'the standby serving', 30_000);
    }
    t.equal(noFileLimits(queryStatus(stateDir).worker.pid!).hard, '2048', 'the serving worker has 2048 fds');
    const many = (await s.fuse.lookup(F.FUSE_ROOT_ID, 'many')).nodeid;
    const dh = (await s.fuse.opendir(many)).fh;
    const first = (await s.fuse.readdirAll(many, dh, { plus: true })).entries;
    const again = (await s.fuse.readdirAll(many, dh, { plus: true })).entries;
    const named = first.filter((d) => d.name.toString().startsWith('m'));
    let right = 0;
    for (const d of named) if (d.entry!.attr.ino === BigInt(fs.lstatSync(s.host(`many/${d.name.toString()}`)).ino)) right++;
    // Each a new inode, named by its handle; reading through one opens it by handle.
    const last = named[named.length - 1]!;
    const fh = (await s.fuse.open(last.entry!.nodeid, F.O.RDONLY)).fh;
    seen[String(fastPath)] = {
      ids: first.map((d) => [d.name.toString(), d.entry?.nodeid ?? null]),
      again: again.map((d) => [d.name.toString(), d.entry?.nodeid ?? null]),
      right, read: (await s.fuse.read(last.entry!.nodeid, fh, 0, 8)).toString(),
    };
    t.equal(named.length, 600, 'all 600 names listed');
    if (fastPath) {
      const f = await fastStats(stateDir, (x) => (x.direntsNew ?? 0) >= 600, 'the new inodes the addon added');
      t.ok((f.direntsNew ?? 0) >= 600, `added natively: ${f.direntsNew}`);
      const h = await waitFor(() => { const q = queryStatus(stateDir).fuse.inodeHandles; return q != null && q.byHandle >= 600 ? q : undefined; }, 'the inodes named by handles', 15_000, 50);
      t.ok(h !== undefined, `named by handles: ${h?.byHandle}`);
    }
    await s.close();
  }
  t.same(seen.true, seen.false, 'both paths gave the same nodeids, and each file reads');
  t.equal((seen.true as { right: number }).right, 600, 'each entry with its own attributes');
});

t.test('the fast path answers a LOOKUP of a missing name ENOENT, as TypeScript does', async (t) => {
  const seen: Record<string, unknown> = {};
  for (const fastPath of [true, false]) {
    const { s, stateDir } = await session(t, fastPath, true);
    fs.mkdirSync(s.host('dir'));
    const dir = await s.fuse.lookup(F.FUSE_ROOT_ID, 'dir');
    const data = await s.fuse.lookup(F.FUSE_ROOT_ID, 'data');
    const r = {
      missing: await errnoOf(s.fuse.lookup(F.FUSE_ROOT_ID, 'missing')),
      inDir: await errnoOf(s.fuse.lookup(dir.nodeid, 'nothing here')),
      underFile: await errnoOf(s.fuse.lookup(data.nodeid, 'x')), // ENOTDIR: TypeScript's
      tooLong: await errnoOf(s.fuse.lookup(F.FUSE_ROOT_ID, 'n'.repeat(300))),
      unknownParent: await errnoOf(s.fuse.lookup(987654n, 'missing')),
      // The name appears on the host: the next LOOKUP finds it (no negative entry anywhere).
      appeared: await (async () => {
        fs.writeFileSync(s.host('missing'), 'now here');
        return (await s.fuse.lookup(F.FUSE_ROOT_ID, 'missing')).attr.size;
      })(),
    };
    seen[String(fastPath)] = r;
    if (fastPath) {
      const f = await fastStats(stateDir, (x) => (x.lookupMissing ?? 0) >= 2, 'the fast path ENOENT counter');
      t.equal(f.lookupMissing, 2, `two LOOKUPs answered ENOENT natively: ${JSON.stringify(f)}`);
    }
    await s.close();
  }
  t.same(seen.true, seen.false, 'both paths gave the same replies');
  t.same(seen.true, { missing: 2, inDir: 2, underFile: 20, tooLong: 36, unknownParent: EBADF, appeared: 8n }, 'ENOENT, ENOTDIR, ENAMETOOLONG, EBADF');
});

t.test('a LOOKUP of an inode the session does not know adds it natively, as TypeScript would', async (t) => {
  const seen: Record<string, unknown> = {};
  for (const fastPath of [true, false]) {
    const { s, stateDir } = await session(t, fastPath, true);
    fs.mkdirSync(s.host('dir'));
    fs.writeFileSync(s.host('dir/a'), 'aa');
    fs.symlinkSync('a', s.host('dir/link'));
    const dir = await s.fuse.lookup(F.FUSE_ROOT_ID, 'dir');
    const a = await s.fuse.lookup(dir.nodeid, 'a');
    const link = await s.fuse.lookup(dir.nodeid, 'link');
    const again = await s.fuse.lookup(dir.nodeid, 'a');
    sameAttr(t, a.attr, fs.lstatSync(s.host('dir/a'), { bigint: true }), 'the attributes of the new inode');
    sameAttr(t, link.attr, fs.lstatSync(s.host('dir/link'), { bigint: true }), 'a symlink is looked up, not followed');
    t.equal(again.nodeid, a.nodeid, 'a second LOOKUP finds the same inode');
    // The inode is the session's: GETATTR, OPEN, READ and READLINK through it work.
    const o = await s.fuse.open(a.nodeid, F.O.RDONLY);
    const read = (await s.fuse.read(a.nodeid, o.fh, 0, 10)).toString();
    await s.fuse.release(a.nodeid, o.fh);
    const target = (await s.fuse.readlink(link.nodeid)).toString();
    // Two lookups: one FORGET keeps it, the second drops it (counted once each).
    await s.fuse.forget(a.nodeid, 1);
    const kept = (await s.fuse.getattr(a.nodeid)).attr.ino === a.attr.ino;
    await s.fuse.forget(a.nodeid, 1);
    const gone = await errnoOf(s.fuse.getattr(a.nodeid));
    seen[String(fastPath)] = { ids: [dir.nodeid, a.nodeid, link.nodeid], gen: [a.generation, link.generation], read, target, kept, gone };
    if (fastPath) {
      const f = await fastStats(stateDir, (x) => (x.lookupNew ?? 0) >= 3, 'the fast path new-inode counter');
      t.equal(f.lookupNew, 3, `dir, a and link added natively: ${JSON.stringify(f)}`);
      const byHandle = await waitFor(() => { const h = queryStatus(stateDir).fuse.inodeHandles; return h != null && h.byHandle >= 2 ? h.byHandle : undefined; }, 'the inodes named by handles', 15_000, 50);
      t.ok(byHandle !== undefined && byHandle >= 2, `named by their handles (${byHandle})`);
    }
    await s.close();
  }
  t.same(seen.true, seen.false, 'both paths gave the same nodeids and replies');
  t.match(seen.true, { read: 'aa', target: 'a', kept: true, gone: EBADF }, 'the inodes work, and each lookup counted once');
});

t.test('after a restart from a compacted journal, the successor decodes the loaded inode rows in the background and adds new inodes natively again', async (t) => {
  const { s, stateDir } = await session(t, true, true);
  // Enough new inodes that their outcomes (~250 B each) pass the journal's compaction size
  // (1 MiB) well before the last: the successor loads most as snapshot rows, undecoded until used.
  const N = 6000;
  fs.mkdirSync(s.host('many'));
  for (let i = 0; i < N; i++) fs.writeFileSync(s.host(`many/f${i}`), '');
  fs.writeFileSync(s.host('late'), 'late');
  const many = (await s.fuse.lookup(F.FUSE_ROOT_ID, 'many')).nodeid;
  const before: bigint[] = [];
  for (let i = 0; i < N; i++) before.push((await s.fuse.lookup(many, `f${i}`)).nodeid);
  const first = queryStatus(stateDir).worker.pid!;
  process.kill(first, 'SIGKILL');
  await waitFor(() => { const q = queryStatus(stateDir); return q.worker.pid !== first && q.worker.state === 'running' ? q : null; }, 'a successor', 20_000);
  await waitFor(() => /loaded inode rows decoded/.test(s.backend.log()), 'the background decode', 20_000, 50);
  const decoded = /"rows":(\d+)[^\n]*loaded inode rows decoded/.exec(s.backend.log());
  t.ok(decoded !== null && Number(decoded[1]) >= N / 2, `the successor decoded ${decoded?.[1]} loaded rows it was not asked for`);
  const late = await s.fuse.lookup(F.FUSE_ROOT_ID, 'late');
  t.notOk(before.includes(late.nodeid), 'the new inode has a nodeid of its own');
  const f = await fastStats(stateDir, (x) => (x.lookupNew ?? 0) >= 1, 'the successor\'s new-inode counter');
  t.equal(f.lookupNew, 1, 'added by the addon');
  // No inode got a second nodeid: the old names give their old ones.
  for (const i of [0, N / 2, N - 1]) t.equal((await s.fuse.lookup(many, `f${i}`)).nodeid, before[i], `f${i} keeps its nodeid`);
  t.equal((await s.fuse.read(late.nodeid, (await s.fuse.open(late.nodeid, F.O.RDONLY)).fh, 0, 10)).toString(), 'late', 'and reads');
});

t.test('what the fast path must not serve goes to TypeScript', async (t) => {
  const { s, stateDir } = await session(t, true);
  const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'data');
  const o = await s.fuse.open(e.nodeid, F.O.RDONLY);
  await s.fuse.read(e.nodeid, o.fh, 0, 10);
  await s.fuse.release(e.nodeid, o.fh);
  t.equal(await errnoOf(s.fuse.read(e.nodeid, o.fh, 0, 10)), EBADF, 'a released fh is EBADF (its table entry left before the fd closed)');
  const other = await s.fuse.open(e.nodeid, F.O.RDONLY);
  t.equal(await errnoOf(s.fuse.read(e.nodeid + 1000n, other.fh, 0, 10)), EBADF, 'an fh read under another nodeid is EBADF');
  const log = await s.fuse.lookup(F.FUSE_ROOT_ID, 'log');
  const a = await s.fuse.open(log.nodeid, F.O.WRONLY | F.O.APPEND);
  t.equal(await s.fuse.write(log.nodeid, a.fh, 0, Buffer.from('second\n')), 7);
  t.equal(fs.readFileSync(s.host('log'), 'utf8'), 'first\nsecond\n', 'an O_APPEND write appends (journaled, in TypeScript)');
  await s.fuse.release(log.nodeid, a.fh);
  await s.fuse.forget(log.nodeid, 1);
  t.equal(await errnoOf(s.fuse.getattr(log.nodeid)), EBADF, 'GETATTR of a forgotten nodeid is EBADF (its entry left with the FORGET)');
  t.equal(await errnoOf(s.fuse.getattr(987654n)), EBADF, 'an unknown nodeid is EBADF');
  const f = await fastStats(stateDir, (x) => x.declined >= 4, 'declined counted');
  t.ok(f.files >= 1 && f.declined >= 4, `declined: ${f.declined}, tables: ${f.inodes} inodes, ${f.files} files`);
});

t.test('a worker kill keeps the fast path serving: the successor rebuilds its tables', async (t) => {
  const { s, stateDir } = await session(t, true);
  const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'data');
  const o = await s.fuse.open(e.nodeid, F.O.RDWR);
  await s.fuse.getattr(e.nodeid);
  const pid = (await waitFor(() => queryStatus(stateDir).worker.pid, 'the worker pid'))!;
  process.kill(pid, 'SIGKILL');
  await waitFor(() => {
    const st = queryStatus(stateDir);
    return st.worker.pid !== null && st.worker.pid !== pid && st.worker.state === 'running';
  }, 'a new worker', 15_000);
  t.equal((await s.fuse.read(e.nodeid, o.fh, 0, 3)).toString('hex'), '000102', 'the open fh reads after the kill');
  // The first GETATTR goes to TypeScript: the successor's inode fd cache is empty, and opening
  // the inode by its handle puts its fd in the table for the second.
  await s.fuse.getattr(e.nodeid);
  await s.fuse.getattr(e.nodeid);
  const f = await fastStats(stateDir, (x) => x.read >= 1 && x.getattr >= 1 && x.files >= 1, 'the successor serves natively');
  t.ok(f.read >= 1 && f.getattr >= 1, `the successor served natively: ${JSON.stringify(f)}`);
});
