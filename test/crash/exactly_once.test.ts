// Every named crash point × every non-idempotent opcode (and the idempotent ones that journal
// no intent but change the session): the worker is SIGKILLed at that point while serving the
// request; its successor resumes, and the request takes effect exactly once with a correct
// reply. The marker file proves the crash really happened.
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, waitFor, type Session } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';
import { withEnv } from '../helpers/env';
import { hostFlockErrno } from '../helpers/flock';
import * as F from '../frontend/fuse_proto';
import { FuseError } from '../frontend/fuse_client';

const POINTS = ['op-after-intent', 'op-after-syscall', 'op-after-fdstore', 'op-after-outcome', 'op-before-publish', 'op-after-publish'] as const;
const ROOT = F.FUSE_ROOT_ID;
const OP = {
  SETATTR: 4, SYMLINK: 6, MKNOD: 8, MKDIR: 9, UNLINK: 10, RMDIR: 11, RENAME: 12, LINK: 13, WRITE: 16,
  RELEASE: 18, REMOVEXATTR: 24, SETLK: 32, CREATE: 35, FORGET: 2, LOOKUP: 1, OPEN: 14, READDIRPLUS: 44,
  // POSIX locks per lock owner (worker/fs/locks.ts): the crash hits the request named here.
  SETLK_OWNER: 32, SETLK_UNLOCK: 32, SETLKW: 33, FLUSH: 25,
  // Inodes named by file handles (worker/fs/inode_fds.ts) vs an fd each in the keeper.
  LOOKUP_HANDLES: 1, READDIRPLUS_HANDLES: 44, LOOKUP_FDS: 1,
  // READDIRPLUS of inodes already known (their attributes read ahead in one addon call).
  READDIRPLUS_KNOWN: 44, READDIRPLUS_KNOWN_HANDLES: 44,
  // The fds of open files and dirs of handle-named inodes reach the keeper after the publish
  // (KeeperClient.sendSoon); an UNLINK or a flock lock settles them first (proven where the
  // keeper really lacks them, under an fd shortage: fd_shortage.test.ts). Here: the open fh
  // outlives a death at every point of an UNLINK of its name, a flock through it, an OPENDIR.
  UNLINK_OPEN: 10, FLOCK: 32, OPENDIR: 27,
} as const;

interface Case {
  name: keyof typeof OP;
  /** Extra command-line arguments of the backend. */
  args?: string[];
  setup?: (shared: string) => void;
  /** Runs the target request (with anything it needs first); returns what verify needs. */
  act: (s: Session) => Promise<unknown>;
  verify: (t: Test, s: Session, r: unknown, stateDir: string, point: string) => Promise<void> | void;
}

const P1 = 4242, P2 = 5353;
const WR = (pid: number): F.FileLock => ({ start: 0n, end: 99n, type: F.F_WRLCK, pid });
const WHOLE: F.FileLock = { start: 0n, end: 0x7fffffffffffffffn, type: F.F_WRLCK, pid: 0 };
interface LockFiles { nodeid: bigint; a: bigint; a2: bigint; c: bigint }
async function openLockFiles(s: Session): Promise<LockFiles> {
  const e = await s.fuse.lookup(ROOT, 'pl');
  const fh = async (): Promise<bigint> => (await s.fuse.open(e.nodeid, F.O.RDWR)).fh;
  return { nodeid: e.nodeid, a: await fh(), a2: await fh(), c: await fh() };
}
const lockErrno = (p: Promise<unknown>): Promise<number> => p.then(() => 0, (e: FuseError) => e.errno);
const lockFile = (d: string): void => fs.writeFileSync(path.join(d, 'pl'), 'x'.repeat(100));

/** Lock owners at every crash point: a lock the guest was granted is held after the kill (and
 * named with its owner's pid), one it released stays released, a FLUSH drops the owner's locks
 * exactly once, and the keeper ends with no lock owner fd once the files are closed. */
const lockOwnerCases: Case[] = [
  { name: 'SETLK_OWNER', setup: lockFile,
    act: async (s) => {
      const f = await openLockFiles(s);
      await s.fuse.setlk(f.nodeid, f.a, 1n, WR(P1));
      return f;
    },
    verify: async (t, s, r, stateDir) => {
      const f = r as LockFiles;
      t.equal(await lockErrno(s.fuse.setlk(f.nodeid, f.c, 2n, WR(P2))), 11, 'the granted lock is held after the crash');
      const seen = await s.fuse.getlk(f.nodeid, f.c, 2n, WHOLE);
      t.same([seen.type, seen.end, seen.pid], [F.F_WRLCK, 99n, P1], "GETLK names its owner's pid");
      await s.fuse.setlk(f.nodeid, f.a2, 1n, WR(P1));
      t.pass('the same owner locks the range again through another fd');
      await s.fuse.flush(f.nodeid, f.a2, 1n);
      await s.fuse.setlk(f.nodeid, f.c, 2n, WR(P2));
      t.pass('closing either fd of the owner drops its lock');
      for (const fh of [f.a, f.a2, f.c]) await s.fuse.release(f.nodeid, fh, F.O.RDWR, 0, 0n);
      await waitFor(() => (queryStatus(stateDir).fdNames.plock ?? 0) === 0, 'no lock owner fd left in the keeper', 10_000);
    } },
  { name: 'SETLK_UNLOCK', setup: lockFile,
    act: async (s) => {
      const f = await openLockFiles(s);
      await s.fuse.setlkw(f.nodeid, f.a, 1n, WR(P1)); // uncontended: granted at once
      await s.fuse.setlk(f.nodeid, f.a, 1n, { ...WR(0), type: F.F_UNLCK });
      return f;
    },
    verify: async (t, s, r) => {
      const f = r as LockFiles;
      t.equal((await s.fuse.getlk(f.nodeid, f.c, 2n, WHOLE)).type, F.F_UNLCK, 'the released lock stays released');
      await s.fuse.setlk(f.nodeid, f.c, 2n, WR(P2));
      t.pass('another owner gets it at once');
      t.equal(await lockErrno(s.fuse.setlk(f.nodeid, f.a, 1n, WR(P1))), 11, 'and the first owner conflicts with it');
    } },
  { name: 'SETLKW', setup: lockFile,
    act: async (s) => {
      const f = await openLockFiles(s);
      await s.fuse.setlk(f.nodeid, f.a, 1n, WR(P1));
      const waiting = s.fuse.setlkw(f.nodeid, f.c, 2n, WR(P2), false, { timeoutMs: 30_000 });
      await new Promise((resolve) => setTimeout(resolve, 0));
      await s.fuse.flush(f.nodeid, f.a2, 1n); // owner 1 closes one of its fds: its lock goes
      await waiting;
      return f;
    },
    verify: async (t, s, r) => {
      const f = r as LockFiles;
      t.equal(await lockErrno(s.fuse.setlk(f.nodeid, f.a, 3n, WR(P1))), 11, 'the waiter holds the lock after the crash');
      t.equal((await s.fuse.getlk(f.nodeid, f.a, 3n, WHOLE)).pid, P2, "GETLK names the waiter's pid");
      await s.fuse.flush(f.nodeid, f.c, 2n);
      await s.fuse.setlk(f.nodeid, f.a, 3n, WR(P1));
      t.pass("released by its owner's FLUSH");
    } },
  { name: 'FLUSH', setup: lockFile,
    act: async (s) => {
      const f = await openLockFiles(s);
      await s.fuse.setlk(f.nodeid, f.a, 1n, WR(P1));
      await s.fuse.flush(f.nodeid, f.a2, 1n);
      return f;
    },
    verify: async (t, s, r, stateDir) => {
      const f = r as LockFiles;
      t.equal((await s.fuse.getlk(f.nodeid, f.c, 2n, WHOLE)).type, F.F_UNLCK, 'after the FLUSH no lock of the owner is left');
      await s.fuse.setlk(f.nodeid, f.c, 2n, WR(P2));
      t.pass('another owner gets it at once');
      await waitFor(() => queryStatus(stateDir).fdNames.plock === 1, "the keeper holds only the new owner's fd", 10_000);
    } },
];

const nonIdempotent: Case[] = [
  { name: 'MKDIR', act: (s) => s.fuse.mkdir(ROOT, 'd', 0o755),
    verify: async (t, s, r) => {
      t.ok(fs.statSync(s.host('d')).isDirectory(), 'directory created');
      t.equal((await s.fuse.getattr((r as F.EntryOut).nodeid)).attr.ino, BigInt(fs.statSync(s.host('d')).ino), 'reply names it');
    } },
  { name: 'CREATE', act: (s) => s.fuse.create(ROOT, 'f', F.O.RDWR | F.O.CREAT | F.O.EXCL, 0o644),
    verify: async (t, s, r, stateDir, point) => {
      const c = r as F.CreateOut;
      t.equal(await s.fuse.write(c.entry.nodeid, c.open.fh, 0, Buffer.from('via fh')), 6, 'returned fh works');
      t.equal(fs.readFileSync(s.host('f'), 'utf8'), 'via fh');
      await reopenedIfUnsent(t, s, point, stateDir);
    } },
  { name: 'MKNOD', act: (s) => s.fuse.mknod(ROOT, 'p', F.S_IFIFO | 0o644),
    verify: (t, s) => { t.ok(fs.lstatSync(s.host('p')).isFIFO(), 'fifo created'); } },
  { name: 'SYMLINK', act: (s) => s.fuse.symlink(ROOT, 'l', 'some/target'),
    verify: (t, s) => { t.equal(fs.readlinkSync(s.host('l')), 'some/target'); } },
  { name: 'LINK', setup: (d) => fs.writeFileSync(path.join(d, 'a'), 'A'),
    act: async (s) => s.fuse.link((await s.fuse.lookup(ROOT, 'a')).nodeid, ROOT, 'b'),
    verify: (t, s) => { t.equal(fs.statSync(s.host('a')).nlink, 2, 'one new link'); t.equal(fs.statSync(s.host('b')).ino, fs.statSync(s.host('a')).ino); } },
  { name: 'UNLINK', setup: (d) => fs.writeFileSync(path.join(d, 'u'), 'U'), act: (s) => s.fuse.unlink(ROOT, 'u'),
    verify: (t, s) => { t.notOk(fs.existsSync(s.host('u')), 'removed'); } },
  // The file is open when its last name goes: only the keeper's fd keeps it reachable after
  // the death.
  { name: 'UNLINK_OPEN', setup: (d) => fs.writeFileSync(path.join(d, 'uo'), 'still readable'),
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'uo');
      const o = await s.fuse.open(e.nodeid, F.O.RDONLY);
      await s.fuse.unlink(ROOT, 'uo');
      return { e, o };
    },
    verify: async (t, s, r) => {
      const { e, o } = r as { e: F.EntryOut; o: F.OpenOut };
      t.notOk(fs.existsSync(s.host('uo')), 'removed');
      t.equal((await s.fuse.read(e.nodeid, o.fh, 0, 100)).toString(), 'still readable', 'the open fh still reads the unlinked file');
      t.notMatch(s.backend.log(), /could not be opened again by its handle/, 'no fh was lost');
    } },
  { name: 'RMDIR', setup: (d) => fs.mkdirSync(path.join(d, 'rd')), act: (s) => s.fuse.rmdir(ROOT, 'rd'),
    verify: (t, s) => { t.notOk(fs.existsSync(s.host('rd')), 'removed'); } },
  { name: 'RENAME', setup: (d) => { fs.writeFileSync(path.join(d, 'r1'), 'one'); fs.writeFileSync(path.join(d, 'r2'), 'two'); },
    act: (s) => s.fuse.rename(ROOT, 'r1', ROOT, 'r2'),
    verify: (t, s) => { t.notOk(fs.existsSync(s.host('r1'))); t.equal(fs.readFileSync(s.host('r2'), 'utf8'), 'one', 'renamed over the old r2'); } },
  { name: 'SETATTR', setup: (d) => fs.writeFileSync(path.join(d, 'm'), 'M', { mode: 0o644 }),
    act: async (s) => s.fuse.setattr((await s.fuse.lookup(ROOT, 'm')).nodeid, { valid: F.FATTR.MODE | F.FATTR.SIZE, mode: 0o100600, size: 0 }),
    verify: (t, s) => { const st = fs.statSync(s.host('m')); t.equal(st.mode & 0o777, 0o600); t.equal(st.size, 0); } },
  { name: 'WRITE', setup: (d) => fs.writeFileSync(path.join(d, 'w'), 'abc'),
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'w');
      const o = await s.fuse.open(e.nodeid, F.O.WRONLY | F.O.APPEND);
      return s.fuse.write(e.nodeid, o.fh, 0, Buffer.from('XYZ'));
    },
    verify: (t, s, r) => { t.equal(r, 3); t.equal(fs.readFileSync(s.host('w'), 'utf8'), 'abcXYZ', 'appended exactly once'); } },
  { name: 'REMOVEXATTR', setup: (d) => { fs.writeFileSync(path.join(d, 'x'), 'X'); },
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'x');
      await s.fuse.setxattr(e.nodeid, 'user.k', Buffer.from('v'));
      await s.fuse.removexattr(e.nodeid, 'user.k');
      return e;
    },
    verify: async (t, s, r) => {
      const err = await s.fuse.getxattr((r as F.EntryOut).nodeid, 'user.k', 100).then(() => null, (e: FuseError) => e.errno);
      t.equal(err, 61, 'xattr gone (ENODATA)');
    } },
  { name: 'SETLK', setup: (d) => fs.writeFileSync(path.join(d, 'k'), 'K'),
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'k');
      const a = await s.fuse.open(e.nodeid, F.O.RDWR);
      await s.fuse.setlk(e.nodeid, a.fh, 1n, { start: 0n, end: 99n, type: F.F_WRLCK, pid: 0 });
      return e;
    },
    verify: async (t, s, r) => {
      const e = r as F.EntryOut;
      const b = await s.fuse.open(e.nodeid, F.O.RDWR);
      const lk = await s.fuse.getlk(e.nodeid, b.fh, 2n, { start: 0n, end: 99n, type: F.F_WRLCK, pid: 0 });
      t.equal(lk.type, F.F_WRLCK, 'the lock is held after the crash');
    } },
  // A flock lock lives on the fh's open file description: only the keeper's copy keeps it.
  { name: 'FLOCK', setup: (d) => fs.writeFileSync(path.join(d, 'fl'), 'F'),
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'fl');
      const o = await s.fuse.open(e.nodeid, F.O.RDWR);
      await s.fuse.setlk(e.nodeid, o.fh, 7n, WHOLE, true);
      return { e, o };
    },
    verify: async (t, s, r) => {
      const { e, o } = r as { e: F.EntryOut; o: F.OpenOut };
      t.equal(hostFlockErrno(s.host('fl')), 'EWOULDBLOCK', 'the flock lock is held after the crash');
      await s.fuse.release(e.nodeid, o.fh);
      await waitFor(() => hostFlockErrno(s.host('fl')) === null, 'the release drops it');
      t.pass('released with its fh');
    } },
  { name: 'RELEASE', setup: (d) => fs.writeFileSync(path.join(d, 'rel'), 'R'),
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'rel');
      const o = await s.fuse.open(e.nodeid, F.O.RDONLY);
      await s.fuse.release(e.nodeid, o.fh);
      return o;
    },
    verify: async (t, s, r, stateDir) => {
      await waitFor(() => queryStatus(stateDir).fuse.openFiles === 0, 'no open files');
      t.equal(queryStatus(stateDir).fdNames.file ?? 0, 0, 'the keeper no longer holds the file fd');
      const err = await s.fuse.read(1n, (r as F.OpenOut).fh, 0, 10).then(() => 0, (e: FuseError) => e.errno);
      t.ok(err !== 0, 'released fh is gone');
    } },
  { name: 'FORGET', setup: (d) => fs.writeFileSync(path.join(d, 'fg'), 'F'),
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'fg');
      await s.fuse.lookup(ROOT, 'fg');
      await s.fuse.forget(e.nodeid, 1);
      return e;
    },
    verify: async (t, s, r, stateDir) => {
      const e = r as F.EntryOut;
      t.equal((await s.fuse.getattr(e.nodeid)).attr.ino, BigInt(fs.statSync(s.host('fg')).ino), 'one lookup left: still valid');
      await s.fuse.forget(e.nodeid, 1);
      await waitFor(() => queryStatus(stateDir).fuse.inodes === 1, 'only the root inode left', 10_000);
      t.pass('the second forget dropped the inode: the first counted exactly once');
    } },
];

/** READDIRPLUS of the root (the 30-file cases). */
/** Killed once the open's outcome was journaled and before the publish was followed by the
 * send (KeeperClient.sendSoon), the worker left a session naming an fd the keeper never
 * got: its successor opened it again by the inode's handle, and says so in status. Killed
 * before the outcome, the request ran again in the successor, with nothing to reopen. */
async function reopenedIfUnsent(t: Test, s: Session, point: string, stateDir: string): Promise<void> {
  const reopened = ['op-after-outcome', 'op-before-publish', 'op-after-publish'].includes(point) ? 1 : 0;
  await waitFor(() => queryStatus(stateDir).fuse.inodeHandles?.handlesReopened === reopened, `status: ${reopened} open file or dir opened again by handle`, 10_000);
  t.pass(`${reopened} opened again by handle at the resume`);
  if (reopened === 1) t.match(s.backend.log(), /opened again by handle/, 'the successor logged it');
}

async function readRootPlus(s: Session): Promise<F.Dirent[]> {
  const dh = await s.fuse.opendir(ROOT);
  return s.fuse.readdirplus(ROOT, dh.fh, 0, 65536);
}

/** The 30 entries a READDIRPLUS case got, each with a nodeid, known exactly once. */
async function plusEntries(t: Test, r: unknown, stateDir: string): Promise<F.Dirent[]> {
  const ents = (r as F.Dirent[]).filter((d) => d.entry !== undefined && d.entry.nodeid !== 0n && !['.', '..'].includes(d.name.toString()));
  t.equal(ents.length, 30, 'every entry came back with a nodeid');
  await waitFor(() => queryStatus(stateDir).fuse.inodes === 31, 'exactly 30 inodes known besides the root', 10_000);
  return ents;
}

/** No intent record: rolled back and run again when they die before their outcome is durable. */
const idempotent: Case[] = [
  { name: 'LOOKUP', setup: (d) => fs.writeFileSync(path.join(d, 'lk'), 'L'), act: (s) => s.fuse.lookup(ROOT, 'lk'),
    verify: async (t, s, r, stateDir) => {
      const e = r as F.EntryOut;
      t.equal((await s.fuse.getattr(e.nodeid)).attr.ino, BigInt(fs.statSync(s.host('lk')).ino), 'the returned nodeid is the file');
      await s.fuse.forget(e.nodeid, 1);
      await waitFor(() => queryStatus(stateDir).fuse.inodes === 1, 'one forget drops it: counted exactly once', 10_000);
      t.pass('the lookup counted exactly once');
    } },
  { name: 'OPEN', setup: (d) => fs.writeFileSync(path.join(d, 'op'), 'opened'),
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'op');
      return { e, o: await s.fuse.open(e.nodeid, F.O.RDONLY) };
    },
    verify: async (t, s, r, stateDir, point) => {
      const { e, o } = r as { e: F.EntryOut; o: F.OpenOut };
      t.equal((await s.fuse.read(e.nodeid, o.fh, 0, 100)).toString(), 'opened', 'the returned fh reads the file');
      await reopenedIfUnsent(t, s, point, stateDir);
      // The keeper's copy of the worker's counts is pushed every second: poll for it. A
      // duplicate open would never come back to 0 after the one release below.
      await waitFor(() => queryStatus(stateDir).fuse.openFiles === 1, 'one open file', 10_000);
      t.pass('exactly one open file');
      await s.fuse.release(e.nodeid, o.fh);
      await waitFor(() => queryStatus(stateDir).fuse.openFiles === 0, 'released', 10_000);
      t.pass('released');
    } },
  // A listing goes on through the fh, from the journaled position, after the fd was opened
  // again by handle.
  { name: 'OPENDIR', setup: (d) => { fs.mkdirSync(path.join(d, 'od')); for (let i = 0; i < 30; i++) fs.writeFileSync(path.join(d, 'od', `d${i}`), 'x'); },
    act: async (s) => {
      // Not the root: its fd is the keeper's "root", never opened by handle.
      const dir = (await s.fuse.lookup(ROOT, 'od')).nodeid;
      const dh = await s.fuse.opendir(dir);
      const first = await s.fuse.readdir(dir, dh.fh, 0, 256);
      return { dir, dh, first };
    },
    verify: async (t, s, r, stateDir, point) => {
      const { dir, dh, first } = r as { dir: bigint; dh: F.OpenOut; first: F.Dirent[] };
      t.ok(first.length > 0 && first.length < 32, `the first page holds part of the listing (${first.length})`);
      const names = first.map((d) => d.name.toString());
      for (let calls = 0, off = first[first.length - 1]!.off; calls < 50; calls++) {
        const page = await s.fuse.readdir(dir, dh.fh, off, 256);
        if (page.length === 0) break;
        names.push(...page.map((d) => d.name.toString()));
        off = page[page.length - 1]!.off;
      }
      t.same(names.filter((n) => n.startsWith('d')).sort(), Array.from({ length: 30 }, (_, i) => `d${i}`).sort(), 'the listing goes on through the fh, each entry once');
      await reopenedIfUnsent(t, s, point, stateDir);
      await s.fuse.releasedir(dir, dh.fh);
    } },
  { name: 'READDIRPLUS', setup: (d) => { for (let i = 0; i < 30; i++) fs.writeFileSync(path.join(d, `e${i}`), 'x'); },
    act: readRootPlus,
    verify: async (t, s, r, stateDir) => {
      const ents = await plusEntries(t, r, stateDir);
      for (const d of ents) await s.fuse.forget(d.entry!.nodeid, 1);
      await waitFor(() => queryStatus(stateDir).fuse.inodes === 1, 'one forget each drops them all', 10_000);
      t.pass('each entry counted exactly once');
    } },
];


/** READDIRPLUS of 30 entries the guest already looked up (dir_cursor.ts reads their attributes
 * ahead per reply): each must count one more lookup, exactly once, under the nodeid it had. */
function knownPlusCase(name: 'READDIRPLUS_KNOWN' | 'READDIRPLUS_KNOWN_HANDLES', args: string[]): Case {
  return { name, args, setup: (d) => { for (let i = 0; i < 30; i++) fs.writeFileSync(path.join(d, `e${i}`), `k${i}`); },
    act: async (s) => {
      const looked = new Map<string, bigint>();
      for (let i = 0; i < 30; i++) looked.set(`e${i}`, (await s.fuse.lookup(ROOT, `e${i}`)).nodeid);
      return { looked, ents: await readRootPlus(s) };
    },
    verify: async (t, s, r, stateDir) => {
      const { looked, ents: all } = r as { looked: Map<string, bigint>; ents: F.Dirent[] };
      const ents = await plusEntries(t, all, stateDir);
      t.ok(ents.every((d) => d.entry!.nodeid === looked.get(d.name.toString())), 'each entry under the nodeid its LOOKUP gave');
      t.ok(ents.every((d) => d.entry!.attr.ino === BigInt(fs.statSync(s.host(d.name.toString())).ino)), 'with its attributes');
      for (const d of ents) await s.fuse.forget(d.entry!.nodeid, 1);
      let known = 0;
      for (const d of ents) if ((await s.fuse.getattr(d.entry!.nodeid)).attr.ino === d.entry!.attr.ino) known++;
      t.equal(known, 30, 'one forget each leaves them known (LOOKUP + READDIRPLUS)');
      for (const d of ents) await s.fuse.forget(d.entry!.nodeid, 1);
      await waitFor(() => queryStatus(stateDir).fuse.inodes === 1, 'the second forget each drops them all', 10_000);
      t.pass('the READDIRPLUS counted each entry exactly once');
    } };
}

const HANDLES = ['--inode-file-handles', 'prefer'];
const inodeFdsInKeeper = (stateDir: string): number => queryStatus(stateDir).fdNames.inode ?? 0;

/** LOOKUP and READDIRPLUS with inodes named by handles: the successor has none of the dead
 * worker's inode fds (the keeper never had them) and reopens each by its journaled handle. */
const handleCases: Case[] = [
  { name: 'LOOKUP_HANDLES', args: HANDLES, setup: (d) => { fs.mkdirSync(path.join(d, 'hd')); fs.writeFileSync(path.join(d, 'hd', 'in'), 'I'); },
    act: (s) => s.fuse.lookup(ROOT, 'hd'),
    verify: async (t, s, r, stateDir) => {
      const e = r as F.EntryOut;
      t.equal(inodeFdsInKeeper(stateDir), 0, 'the keeper holds no inode fd');
      // Worker counts reach the keeper every second (and after a replay, only then): poll.
      await waitFor(() => queryStatus(stateDir).fuse.inodeHandles?.byHandle === 1, 'the inode named by its handle', 10_000);
      t.pass('the inode is named by its handle');
      t.equal((await s.fuse.getattr(e.nodeid)).attr.ino, BigInt(fs.statSync(s.host('hd')).ino), 'reopened by handle: the same dir');
      const child = await s.fuse.lookup(e.nodeid, 'in');
      t.equal(child.attr.ino, BigInt(fs.statSync(s.host('hd/in')).ino), 'a lookup under it works');
      await s.fuse.forget(child.nodeid, 1);
      await s.fuse.forget(e.nodeid, 1);
      await waitFor(() => queryStatus(stateDir).fuse.inodes === 1, 'one forget drops it: counted exactly once', 10_000);
      t.pass('the lookup counted exactly once');
    } },
  { name: 'READDIRPLUS_HANDLES', args: HANDLES, setup: (d) => { for (let i = 0; i < 30; i++) fs.writeFileSync(path.join(d, `e${i}`), `x${i}`); },
    act: readRootPlus,
    verify: async (t, s, r, stateDir) => {
      const ents = await plusEntries(t, r, stateDir);
      t.equal(inodeFdsInKeeper(stateDir), 0, 'the keeper holds no inode fd');
      for (const d of ents) {
        const o = await s.fuse.open(d.entry!.nodeid, F.O.RDONLY);
        t.equal((await s.fuse.read(d.entry!.nodeid, o.fh, 0, 10)).toString(), fs.readFileSync(s.host(d.name.toString()), 'utf8'), `${d.name} reopened by handle`);
        await s.fuse.release(d.entry!.nodeid, o.fh);
      }
      for (const d of ents) await s.fuse.forget(d.entry!.nodeid, 1);
      await waitFor(() => queryStatus(stateDir).fuse.inodes === 1, 'one forget each drops them all', 10_000);
      t.pass('each entry counted exactly once');
    } },
  { name: 'LOOKUP_FDS', args: ['--inode-file-handles', 'never'], setup: (d) => fs.writeFileSync(path.join(d, 'lk'), 'L'),
    act: (s) => s.fuse.lookup(ROOT, 'lk'),
    verify: async (t, s, r, stateDir) => {
      const e = r as F.EntryOut;
      t.equal(inodeFdsInKeeper(stateDir), 1, 'never: the keeper holds the inode fd');
      t.equal((await s.fuse.getattr(e.nodeid)).attr.ino, BigInt(fs.statSync(s.host('lk')).ino), 'the returned nodeid is the file');
      await s.fuse.forget(e.nodeid, 1);
      await waitFor(() => queryStatus(stateDir).fuse.inodes === 1 && inodeFdsInKeeper(stateDir) === 0, 'one forget drops it and its fd', 10_000);
      t.pass('the lookup counted exactly once');
    } },
];

const knownPlusCases = [knownPlusCase('READDIRPLUS_KNOWN', ['--inode-file-handles', 'never']), knownPlusCase('READDIRPLUS_KNOWN_HANDLES', HANDLES)];

/** Cases whose request the addon's fast path serves when it is on (a LOOKUP of a new inode
 * named by a handle: native/src/fast_fuse.cc LookupNew; an OPEN or OPENDIR of a handle-named
 * file or dir, a RELEASE; a READDIRPLUS: Readdirplus; a FORGET: Forget). Their outcome is TypeScript's to
 * journal, so they die at every point but TypeScript's op-after-intent, which that path does
 * not pass (the TypeScript-path run of this suite, test/ts_path/, still does). */
const SERVED_BY_ADDON = new Set(['LOOKUP', 'LOOKUP_HANDLES', 'OPEN', 'RELEASE', 'OPENDIR', 'READDIRPLUS', 'READDIRPLUS_HANDLES', 'READDIRPLUS_KNOWN',
  'READDIRPLUS_KNOWN_HANDLES', 'FORGET']);
/** Cases the addon serves with the intent it journals itself (native/src/fast_fuse.cc Remove):
 * they die in the addon at op-after-intent and op-after-syscall (the marker says so), and at
 * the points after in the addon too where it journals their outcome (OUTCOME_IN_ADDON), else in
 * TypeScript. */
const INTENT_IN_ADDON = new Set(['CREATE', 'MKDIR', 'UNLINK', 'RMDIR']);
/** Of those, the ones whose outcome the addon journals too (native/src/ring.cc
 * JournalOwnBatch: their reply and, CREATE's and MKDIR's, their new inode and file), published
 * without JavaScript: they die in the addon at every point. */
const OUTCOME_IN_ADDON = new Set(['UNLINK', 'RMDIR', 'CREATE', 'MKDIR']);
const fastPathOn = process.env.VFSK_FAST_PATH !== '0';

for (const c of [...nonIdempotent, ...idempotent, ...lockOwnerCases, ...handleCases, ...knownPlusCases]) {
  t.test(c.name, async (t) => {
    const points = fastPathOn && SERVED_BY_ADDON.has(c.name) ? POINTS.filter((p) => p !== 'op-after-intent') : POINTS;
    for (const point of points) {
      await t.test(point, async (t) => {
        const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
        t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
        const marker = path.join(stateDir, 'crashed');
        const s = await withEnv({ VFSK_CRASH_POINT: point, VFSK_CRASH_OPCODE: String(OP[c.name]), VFSK_CRASH_MARKER: marker },
          () => openSession(t, 'ours', { extraArgs: ['--state-dir', stateDir, ...(c.args ?? [])], ...(c.setup ? { setup: c.setup } : {}) }));
        let r: unknown;
        try {
          r = await c.act(s);
        } catch (e) {
          t.comment(`backend log:\n${s.backend.log()}`);
          throw e;
        }
        t.ok(fs.existsSync(marker), `the worker crashed at ${point}`);
        if (fastPathOn && INTENT_IN_ADDON.has(c.name)) {
          const inAddon = OUTCOME_IN_ADDON.has(c.name) || point === 'op-after-intent' || point === 'op-after-syscall';
          t.match(fs.readFileSync(marker, 'utf8'), new RegExp(`^${point} ${OP[c.name]}${inAddon ? ' native' : '\\n'}`), `served by the addon, died ${inAddon ? 'in it' : 'in TypeScript'}`);
        }
        // The marker is written just before the worker dies: until the keeper has reaped it (one
        // hop later under the namespace sandbox: unshare(1) reaps the worker, then the keeper
        // reaps unshare), its status still says running (CI saw restarts 0 at op-after-publish).
        await waitFor(() => { const w = queryStatus(stateDir).worker; return w.restarts >= 1 && w.state === 'running'; }, 'the successor running');
        const restarts = queryStatus(stateDir).worker.restarts;
        if (restarts !== 1) t.comment(`backend log:\n${s.backend.log().slice(-30_000)}`);
        t.equal(restarts, 1, 'one restart');
        await c.verify(t, s, r, stateDir, point);
      });
    }
  });
}

/** The addon's fast path (native/src/fast_fuse.cc) at its own crash points: GETATTR, READ and
 * a WRITE that is not an append, served without JavaScript, killed after the pop, after the
 * syscall and before the publish. Each is still in the inflight region, the successor runs it
 * again (through TypeScript) and the guest gets one correct reply; the marker says the native
 * path was where it died. On tmpfs, where the fast path serves writes too. */
const NATIVE_POINTS = ['op-after-pop', 'op-after-syscall', 'op-before-publish'] as const;
/** A request the fast path answers with a session change is journaled (a lookup count, an
 * fh): it also dies at the journal's points, after the outcome and after the publish, in
 * TypeScript or, where the addon journals the outcome itself (ownOutcome: a LOOKUP's count or
 * new inode, a SETATTR's reply; native/src/ring.cc JournalOwnBatch), in the addon. */
const JOURNALED_POINTS = ['op-after-pop', 'op-after-syscall', 'op-after-outcome', 'op-before-publish', 'op-after-publish'] as const;
interface NativeCase {
  name: string; opcode: number; journaled?: true; ownOutcome?: true;
  act: (s: Session) => Promise<unknown>; verify: (t: Test, s: Session, r: unknown, stateDir: string) => void | Promise<void>;
}
const nativeCases: NativeCase[] = [
  { name: 'LOOKUP', opcode: 1, journaled: true, ownOutcome: true,
    // READDIRPLUS makes the inode known (one lookup); the LOOKUP, of a known inode, is the
    // fast path's. Two forgets must then drop it: the LOOKUP counted exactly once.
    act: async (s) => {
      const first = (await readRootPlus(s)).find((d) => d.name.toString() === 'n')!.entry!.nodeid;
      const second = await s.fuse.lookup(ROOT, 'n');
      return [first, second.nodeid];
    },
    verify: async (t, s, r) => {
      const [a, b] = r as [bigint, bigint];
      t.equal(b, a, 'the same nodeid');
      await s.fuse.forget(a, 1);
      t.equal((await s.fuse.getattr(a)).attr.ino, BigInt(fs.statSync(s.host('n')).ino), 'still known after one forget');
      await s.fuse.forget(a, 1);
      t.equal(await s.fuse.getattr(a).then(() => 0, (e: FuseError) => e.errno), 9, 'gone after the second: the LOOKUP counted exactly once');
    } },
  { name: 'LOOKUP batch', opcode: 1, journaled: true, ownOutcome: true,
    // Four LOOKUPs in flight at once: the ring hands them to JavaScript as one batch (or a
    // few) and the journal takes each batch as one record. Five forgets must then drop the
    // inode: each LOOKUP counted exactly once, whichever were journaled before the kill.
    act: async (s) => {
      const first = (await readRootPlus(s)).find((d) => d.name.toString() === 'n')!.entry!.nodeid;
      const rest = await Promise.all([0, 1, 2, 3].map(() => s.fuse.lookup(ROOT, 'n')));
      return [first, ...rest.map((e) => e.nodeid)];
    },
    verify: async (t, s, r) => {
      const [a, ...rest] = r as bigint[];
      t.same(rest, [a, a, a, a], 'the same nodeid each time');
      await s.fuse.forget(a!, 4);
      t.equal((await s.fuse.getattr(a!)).attr.ino, BigInt(fs.statSync(s.host('n')).ino), 'still known after four forgets');
      await s.fuse.forget(a!, 1);
      t.equal(await s.fuse.getattr(a!).then(() => 0, (e: FuseError) => e.errno), 9, 'gone after the fifth: each LOOKUP counted exactly once');
    } },
  { name: 'LOOKUP of a new inode', opcode: 1, journaled: true, ownOutcome: true,
    // The session does not know 'n': the addon opens it, names it by its handle, numbers it
    // and answers, journals the addInode and publishes. Whatever the point, the guest gets one
    // nodeid, the inode is the file, and two forgets (this LOOKUP and the next) drop it.
    act: async (s) => (await s.fuse.lookup(ROOT, 'n')).nodeid,
    verify: async (t, s, r) => {
      const a = r as bigint;
      t.equal((await s.fuse.getattr(a)).attr.ino, BigInt(fs.statSync(s.host('n')).ino), 'the nodeid is the file');
      t.equal((await s.fuse.lookup(ROOT, 'n')).nodeid, a, 'a second LOOKUP finds the same inode');
      await s.fuse.forget(a, 1);
      t.equal((await s.fuse.getattr(a)).attr.ino, BigInt(fs.statSync(s.host('n')).ino), 'still known after one forget');
      await s.fuse.forget(a, 1);
      t.equal(await s.fuse.getattr(a).then(() => 0, (e: FuseError) => e.errno), 9, 'gone after the second: the first LOOKUP counted exactly once');
    } },
  { name: 'SETATTR', opcode: 4, journaled: true, ownOutcome: true,
    // Mode and both times "now": a second run after the outcome was journaled would move the
    // file's times past the ones in the reply the guest got (a worker start is many clock ticks).
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'n');
      return (await s.fuse.setattr(e.nodeid, { valid: F.FATTR.MODE | F.FATTR.ATIME_NOW | F.FATTR.MTIME_NOW, mode: 0o100604 })).attr;
    },
    verify: (t, s, r) => {
      const a = r as F.Attr;
      const host = fs.statSync(s.host('n'), { bigint: true });
      t.equal(Number(host.mode) & 0o7777, 0o604, 'the mode took');
      t.same([a.mode, a.mtime * 1_000_000_000n + BigInt(a.mtimensec), a.ctime * 1_000_000_000n + BigInt(a.ctimensec)],
        [Number(host.mode), host.mtimeNs, host.ctimeNs], 'the reply\'s times are the file\'s: run once after its outcome was journaled');
    } },
  { name: 'OPEN', opcode: 14, journaled: true, ownOutcome: true,
    // A handle-named file: the addon opens it as the session's next fh, TypeScript registers
    // the fd and journals the openFile. Whatever the point, the guest's fh reads the file
    // and one RELEASE leaves no open file: opened exactly once.
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'n');
      return { nodeid: e.nodeid, fh: (await s.fuse.open(e.nodeid, F.O.RDONLY)).fh };
    },
    verify: async (t, s, r, stateDir) => {
      const { nodeid, fh } = r as { nodeid: bigint; fh: bigint };
      t.equal((await s.fuse.read(nodeid, fh, 0, 8)).toString(), 'abcdefgh', 'the fh reads the file');
      await waitFor(() => queryStatus(stateDir).fuse.openFiles === 1 ? true : undefined, 'one open file', 10_000);
      t.pass('exactly one open file');
      await s.fuse.release(nodeid, fh);
      await waitFor(() => queryStatus(stateDir).fuse.openFiles === 0 ? true : undefined, 'released', 10_000);
      t.pass('none after its RELEASE');
    } },
  { name: 'RELEASE', opcode: 18, journaled: true,
    // The addon takes the fh out of its table; TypeScript releases it and journals the
    // closeFile. Whatever the point: no open file is left, the keeper holds no file fd, the fh
    // is gone and the file opens again.
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'n');
      const o = await s.fuse.open(e.nodeid, F.O.RDONLY);
      await s.fuse.release(e.nodeid, o.fh);
      return { nodeid: e.nodeid, fh: o.fh };
    },
    verify: async (t, s, r, stateDir) => {
      const { nodeid, fh } = r as { nodeid: bigint; fh: bigint };
      await waitFor(() => { const q = queryStatus(stateDir); return q.fuse.openFiles === 0 && (q.fdNames.file ?? 0) === 0 ? true : undefined; },
        'no open file, no file fd in the keeper', 10_000);
      t.pass('released exactly once: no open file, no file fd in the keeper');
      t.equal(await s.fuse.read(nodeid, fh, 0, 8).then(() => 0, (e: FuseError) => e.errno), 9, 'the released fh answers EBADF');
      const o = await s.fuse.open(nodeid, F.O.RDONLY);
      t.equal((await s.fuse.read(nodeid, o.fh, 0, 3)).toString(), 'abc', 'the file opens again');
      await s.fuse.release(nodeid, o.fh);
    } },
  { name: 'OPENDIR', opcode: 27, journaled: true, ownOutcome: true,
    // As OPEN, of a dir named by a handle: its fh lists the dir, and one RELEASEDIR leaves none.
    act: async (s) => {
      fs.mkdirSync(s.host('dd'));
      for (const n of ['a', 'b', 'c']) fs.writeFileSync(s.host(`dd/${n}`), n);
      const e = await s.fuse.lookup(ROOT, 'dd');
      return { nodeid: e.nodeid, fh: (await s.fuse.opendir(e.nodeid)).fh };
    },
    verify: async (t, s, r, stateDir) => {
      const { nodeid, fh } = r as { nodeid: bigint; fh: bigint };
      const names = (await s.fuse.readdirAll(nodeid, fh)).entries.map((d) => d.name.toString()).filter((n) => n !== '.' && n !== '..').sort();
      t.same(names, ['a', 'b', 'c'], 'the fh lists the dir');
      await waitFor(() => queryStatus(stateDir).fuse.openDirs === 1 ? true : undefined, 'one open dir', 10_000);
      t.pass('exactly one open dir');
      await s.fuse.releasedir(nodeid, fh);
      await waitFor(() => queryStatus(stateDir).fuse.openDirs === 0 ? true : undefined, 'released', 10_000);
      t.pass('none after its RELEASEDIR');
    } },
  { name: 'RELEASEDIR', opcode: 29, journaled: true,
    act: async (s) => {
      fs.mkdirSync(s.host('dd'));
      const e = await s.fuse.lookup(ROOT, 'dd');
      const o = await s.fuse.opendir(e.nodeid);
      await s.fuse.releasedir(e.nodeid, o.fh);
      return { nodeid: e.nodeid, fh: o.fh };
    },
    verify: async (t, s, r, stateDir) => {
      const { nodeid, fh } = r as { nodeid: bigint; fh: bigint };
      await waitFor(() => { const q = queryStatus(stateDir); return q.fuse.openDirs === 0 && (q.fdNames.dir ?? 0) === 0 ? true : undefined; },
        'no open dir, no dir fd in the keeper', 10_000);
      t.pass('released exactly once: no open dir, no dir fd in the keeper');
      t.equal(await s.fuse.readdir(nodeid, fh, 0).then(() => 0, (e: FuseError) => e.errno), 9, 'the released fh answers EBADF');
      const o = await s.fuse.opendir(nodeid);
      t.ok((await s.fuse.readdir(nodeid, o.fh, 0)).length >= 2, 'the dir opens and lists again');
      await s.fuse.releasedir(nodeid, o.fh);
    } },
  { name: 'READDIRPLUS of known inodes', opcode: 44, journaled: true, ownOutcome: true,
    // The addon lists a dir whose names the guest looked up; TypeScript journals one more
    // lookup of each and the dir's position. Whatever the point: the listing has each name
    // once, under the nodeid its LOOKUP gave, and two forgets each drop them all.
    act: async (s) => {
      fs.mkdirSync(s.host('rd'));
      for (let i = 0; i < 20; i++) fs.writeFileSync(s.host(`rd/e${i}`), `r${i}`);
      const dir = (await s.fuse.lookup(ROOT, 'rd')).nodeid;
      const looked = new Map<string, bigint>();
      for (let i = 0; i < 20; i++) looked.set(`e${i}`, (await s.fuse.lookup(dir, `e${i}`)).nodeid);
      const dh = await s.fuse.opendir(dir);
      return { looked, entries: (await s.fuse.readdirAll(dir, dh.fh, { plus: true })).entries };
    },
    verify: async (t, s, r, stateDir) => {
      const { looked, entries } = r as { looked: Map<string, bigint>; entries: F.Dirent[] };
      const named = entries.filter((d) => !['.', '..'].includes(d.name.toString()));
      t.same(named.map((d) => d.name.toString()).sort(), [...looked.keys()].sort(), 'each name listed once');
      t.ok(named.every((d) => d.entry?.nodeid === looked.get(d.name.toString())), 'under the nodeid its LOOKUP gave');
      for (const id of looked.values()) await s.fuse.forget(id, 1);
      let known = 0;
      for (const id of looked.values()) if (await s.fuse.getattr(id).then(() => true, () => false)) known++;
      t.equal(known, 20, 'one forget each leaves them known (LOOKUP + READDIRPLUS)');
      for (const id of looked.values()) await s.fuse.forget(id, 1);
      await waitFor(() => queryStatus(stateDir).fuse.inodes <= 3 ? true : undefined, 'the second forget each drops them', 10_000);
      t.pass('the READDIRPLUS counted each entry exactly once');
    } },
  { name: 'READDIRPLUS of new names', opcode: 44, journaled: true, ownOutcome: true,
    // The addon lists a dir whose names the session does not know: it adds their inodes (named
    // by handles), TypeScript journals them. Whatever the point: each name listed once with a
    // nodeid of the file, and one forget each drops them all (each added exactly once).
    act: async (s) => {
      fs.mkdirSync(s.host('rn'));
      for (let i = 0; i < 20; i++) fs.writeFileSync(s.host(`rn/e${i}`), `n${i}`);
      const dir = (await s.fuse.lookup(ROOT, 'rn')).nodeid;
      const dh = await s.fuse.opendir(dir);
      return (await s.fuse.readdirAll(dir, dh.fh, { plus: true })).entries;
    },
    verify: async (t, s, r) => {
      const named = (r as F.Dirent[]).filter((d) => !['.', '..'].includes(d.name.toString()));
      t.same(named.map((d) => d.name.toString()).sort(), Array.from({ length: 20 }, (_, i) => `e${i}`).sort(), 'each name listed once');
      let right = 0;
      for (const d of named) if ((await s.fuse.getattr(d.entry!.nodeid)).attr.ino === BigInt(fs.statSync(s.host(`rn/${d.name.toString()}`)).ino)) right++;
      t.equal(right, 20, 'each nodeid is its file');
      for (const d of named) await s.fuse.forget(d.entry!.nodeid, 1);
      let gone = 0;
      for (const d of named) if (await s.fuse.getattr(d.entry!.nodeid).then(() => false, (e: FuseError) => e.errno === 9)) gone++;
      t.equal(gone, 20, 'one forget each drops them: each added exactly once');
    } },
  ...([['FORGET', 2], ['BATCH_FORGET', 42]] as const).map(([name, opcode]): NativeCase => ({ name, opcode, journaled: true, ownOutcome: true,
    // Three LOOKUPs, then the addon drops two of them (no reply; TypeScript journals it).
    // Whatever the point: one lookup is left (the inode answers), and one more FORGET drops it.
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'n');
      for (let i = 0; i < 3; i++) await s.fuse.lookup(ROOT, 'n');
      // The hiprio queue's first request is TypeScript's (its first completion turns the
      // native kicks on): one of the other opcode first, so that this one is the addon's.
      if (opcode === 2) await s.fuse.batchForget([{ nodeid: e.nodeid, nlookup: 1 }]);
      else await s.fuse.forget(e.nodeid, 1);
      if (opcode === 2) await s.fuse.forget(e.nodeid, 2);
      else await s.fuse.batchForget([{ nodeid: e.nodeid, nlookup: 2 }]);
      return e.nodeid;
    },
    verify: async (t, s, r) => {
      const a = r as bigint;
      t.equal((await s.fuse.getattr(a)).attr.ino, BigInt(fs.statSync(s.host('n')).ino), 'one lookup left: still known');
      await s.fuse.forget(a, 1);
      t.equal(await s.fuse.getattr(a).then(() => 0, (e: FuseError) => e.errno), 9, 'gone after one more: the two dropped exactly once');
    } })),
  { name: 'LOOKUP of a missing name', opcode: 1,
    // ENOENT from the addon, nothing journaled: the successor runs it again and answers it once.
    act: (s) => s.fuse.lookup(ROOT, 'late').then(() => 0, (e: FuseError) => e.errno),
    verify: async (t, s, r) => {
      t.equal(r, 2, 'ENOENT');
      fs.writeFileSync(s.host('late'), 'L8');
      t.equal((await s.fuse.lookup(ROOT, 'late')).attr.size, 2n, 'found once it exists: no negative entry kept');
    } },
  { name: 'GETATTR', opcode: 3,
    act: async (s) => (await s.fuse.getattr((await s.fuse.lookup(ROOT, 'n')).nodeid)).attr,
    verify: (t, s, r) => { t.equal((r as F.Attr).ino, BigInt(fs.statSync(s.host('n')).ino), 'the attributes of the file'); } },
  { name: 'READ', opcode: 15,
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'n');
      const o = await s.fuse.open(e.nodeid, F.O.RDONLY);
      return (await s.fuse.read(e.nodeid, o.fh, 2, 3)).toString();
    },
    verify: (t, s, r) => { t.equal(r, 'cde', 'the bytes read'); } },
  { name: 'FLUSH', opcode: 25,
    // No lock owner on the inode: close(dup(fd)) in the addon; run again after the kill.
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'n');
      const o = await s.fuse.open(e.nodeid, F.O.RDONLY);
      await s.fuse.flush(e.nodeid, o.fh, 0x1234n);
      return (await s.fuse.read(e.nodeid, o.fh, 0, 3)).toString();
    },
    verify: (t, s, r) => { t.equal(r, 'abc', 'the fh still reads after the FLUSH'); } },
  { name: 'STATFS', opcode: 17,
    act: async (s) => (await s.fuse.statfs((await s.fuse.lookup(ROOT, 'n')).nodeid)).namelen,
    verify: (t, s, r) => { t.equal(r, 255, 'the statfs of the shared filesystem'); } },
  { name: 'LISTXATTR', opcode: 23,
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'n');
      await s.fuse.setxattr(e.nodeid, 'user.a', Buffer.from('1'));
      return s.fuse.listxattr(e.nodeid, 64);
    },
    verify: (t, s, r) => { t.same(r, ['user.a'], 'the list of the file\'s names'); } },
  { name: 'LSEEK', opcode: 46,
    // SEEK_DATA moves the shared file position too (as TypeScript's lseek): a second run is harmless.
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'n');
      const o = await s.fuse.open(e.nodeid, F.O.RDONLY);
      return String(await s.fuse.lseek(e.nodeid, o.fh, 2, F.SEEK_DATA));
    },
    verify: (t, s, r) => { t.equal(r, '2', 'data from offset 2 on'); } },
  { name: 'WRITE', opcode: 16,
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'n');
      const o = await s.fuse.open(e.nodeid, F.O.RDWR);
      return s.fuse.write(e.nodeid, o.fh, 1, Buffer.from('XYZ'));
    },
    verify: (t, s, r) => { t.equal(r, 3, 'WRITE says 3 bytes'); t.equal(fs.readFileSync(s.host('n'), 'utf8'), 'aXYZefgh', 'written once, in place'); } },
  // The ring's I/O threads (native/src/io_pool.h): a READ larger than the JS thread copies and
  // an O_SYNC WRITE run there; the crash points are where the thread's result comes back
  // (after the syscall) and the publish of its completion.
  { name: 'READ on the I/O threads', opcode: 15,
    act: async (s) => {
      fs.writeFileSync(s.host('n'), BIG_READ);
      const e = await s.fuse.lookup(ROOT, 'n');
      const o = await s.fuse.open(e.nodeid, F.O.RDONLY);
      return s.fuse.read(e.nodeid, o.fh, 1, BIG_READ.length);
    },
    verify: (t, s, r) => { t.ok((r as Buffer).equals(BIG_READ.subarray(1)), 'the bytes read, up to the end of the file'); } },
  { name: 'O_SYNC WRITE on the I/O threads', opcode: 16,
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'n');
      const o = await s.fuse.open(e.nodeid, F.O.RDWR | F.O.SYNC);
      return s.fuse.write(e.nodeid, o.fh, 1, Buffer.from('XYZ'));
    },
    verify: (t, s, r) => { t.equal(r, 3, 'WRITE says 3 bytes'); t.equal(fs.readFileSync(s.host('n'), 'utf8'), 'aXYZefgh', 'written once, in place'); } },
  { name: 'FSYNC on the I/O threads', opcode: 20,
    act: async (s) => {
      const e = await s.fuse.lookup(ROOT, 'n');
      const o = await s.fuse.open(e.nodeid, F.O.RDWR);
      await s.fuse.write(e.nodeid, o.fh, 1, Buffer.from('XYZ'));
      await s.fuse.fsync(e.nodeid, o.fh);
      return (await s.fuse.read(e.nodeid, o.fh, 0, 8)).toString();
    },
    verify: (t, s, r) => { t.equal(r, 'aXYZefgh', 'the fh reads what was written'); t.equal(fs.readFileSync(s.host('n'), 'utf8'), 'aXYZefgh', 'and so does the file'); } },
];
/** More than the JS thread reads itself (fast_fuse.cc kMaxSyncRead, 128 KiB). */
const BIG_READ = Buffer.from(Array.from({ length: 200 * 1024 }, (_, i) => (i * 7) & 0xff));

// The TypeScript-path run of this suite (test/ts_path/) has no native points to reach.
if (fastPathOn) for (const c of nativeCases) {
  t.test(`native ${c.name}`, async (t) => {
    for (const point of c.journaled ? JOURNALED_POINTS : NATIVE_POINTS) {
      await t.test(point, async (t) => {
        const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
        t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
        const marker = path.join(stateDir, 'crashed');
        const s = await withEnv({ VFSK_CRASH_POINT: point, VFSK_CRASH_OPCODE: String(c.opcode), VFSK_CRASH_MARKER: marker },
          () => openSession(t, 'ours', { extraArgs: ['--state-dir', stateDir], baseDir: fs.mkdtempSync('/dev/shm/vfsk-nc-'),
            setup: (d) => fs.writeFileSync(path.join(d, 'n'), 'abcdefgh') }));
        const r = await c.act(s);
        // A journaled request's points past the syscall are TypeScript's (FuseServer.ringServed,
        // the publish hooks), unless the addon journals its outcome itself.
        const inAddon = c.ownOutcome === true || point === 'op-after-pop' || point === 'op-after-syscall' || (point === 'op-before-publish' && !c.journaled);
        const where = inAddon ? ' native' : '';
        t.match(fs.readFileSync(marker, 'utf8'), new RegExp(`^${point} ${c.opcode}${where}`), `the worker crashed at ${point}${where}`);
        await waitFor(() => { const w = queryStatus(stateDir).worker; return w.restarts >= 1 && w.state === 'running'; }, 'the successor running');
        t.equal(queryStatus(stateDir).worker.restarts, 1, 'one restart');
        await c.verify(t, s, r, stateDir);
      });
    }
  });
}

t.test('poison: a request that kills every worker gets EIO after 3 deaths', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await withEnv({ VFSK_CRASH_POINT: 'op-after-intent', VFSK_CRASH_OPCODE: String(OP.MKDIR) },
    () => openSession(t, 'ours', { extraArgs: ['--state-dir', stateDir] }));
  const err = await s.fuse.mkdir(ROOT, 'poison', 0o755, 0, { timeoutMs: 30_000 }).then(() => 0, (e: FuseError) => e.errno);
  t.equal(err, 5, 'EIO');
  t.equal(queryStatus(stateDir).worker.restarts, 3, 'three deaths, then no more');
  t.match(s.backend.log(), /poison request/, 'logged as a poison request');
  t.equal((await s.fuse.getattr(ROOT)).attr.ino, BigInt(fs.statSync(s.shared).ino), 'the worker serves other requests');
});
