// Exactly-once execution of FUSE requests across worker crashes (docs/ARCHITECTURE.md, "Crash
// safety", rule 5).
//
// A request that changes anything is journaled: its outcome (the reply bytes and its session
// changes) after it ran and before its used element can be published; a request that is not
// idempotent also journals its intent before it runs. A resubmitted request whose outcome is
// journaled gets that reply again and does not run. One without an outcome is rolled back on
// load (its session changes were never journaled, and fds it closed are still in the keeper)
// and runs again. If it has an intent, it died inside the window between the two journal
// writes and its syscall may or may not have happened. The rules below settle that by looking
// at the filesystem, under this assumption:
//
//   ASSUMPTION: while the worker is being restarted (≈ tens of ms), no other process creates,
//   removes or renames the same names in the shared directory, and a name found created
//   with a ctime at or after our intent (minus clock granularity) was created by us.
//
// Requests that are idempotent when run again (SETATTR with absolute values, SETLK for the same
// owner, FALLOCATE without INSERT/COLLAPSE_RANGE, COPY_FILE_RANGE, OPEN, LOOKUP, READDIR*) are
// simply run again; their rolled-back session effects are redone by that run.
import type { EntryProbe, FileSystem } from '../fs/filesystem';
import type { FuseRequest, InHeader } from './protocol';
import { EBADF, EEXIST, ENODATA, ENOENT } from '../../shared/errno';

const O_EXCL = 0o200;
const RENAME_NOREPLACE = 1, RENAME_EXCHANGE = 2;
const XATTR_CREATE = 1;
/** The kernel's file timestamps come from a coarse clock that may lag ours by a tick or more. */
const CTIME_SLACK_NS = 1_000_000_000n;

/** Request kinds that change state (the filesystem's or the session's). A FLUSH is journaled
 * too when it drops a lock owner (FileSystem.flushChangesState); it runs again like SETLK. */
export const JOURNALED_KINDS: ReadonlySet<FuseRequest['kind']> = new Set<FuseRequest['kind']>([
  'LOOKUP', 'FORGET', 'BATCH_FORGET', 'SETATTR', 'SYMLINK', 'MKNOD', 'MKDIR', 'UNLINK', 'RMDIR', 'RENAME', 'RENAME2',
  'LINK', 'OPEN', 'CREATE', 'TMPFILE', 'WRITE', 'RELEASE', 'OPENDIR', 'READDIR', 'READDIRPLUS', 'RELEASEDIR',
  'SETXATTR', 'REMOVEXATTR', 'SETLK', 'SETLKW', 'FALLOCATE', 'COPY_FILE_RANGE',
]);

/** Kinds whose second run differs from the first when the first took effect (EEXIST, ENOENT,
 * a second append): they journal an intent. The rest of JOURNALED_KINDS run again as they
 * are: their session effects were rolled back and the syscall is idempotent. */
const INTENT_KINDS: ReadonlySet<FuseRequest['kind']> = new Set<FuseRequest['kind']>([
  'SYMLINK', 'MKNOD', 'MKDIR', 'UNLINK', 'RMDIR', 'RENAME', 'RENAME2', 'LINK', 'CREATE', 'TMPFILE',
  'SETXATTR', 'REMOVEXATTR',
]);

/** Whether `req` needs an intent record; `extra` is its intentExtra(). */
export function needsIntent(req: FuseRequest, extra: unknown): boolean {
  if (req.kind === 'WRITE') return (extra as { appendSize?: number | null } | null)?.appendSize != null;
  return INTENT_KINDS.has(req.kind);
}

/** Pre-state the ambiguity rules need, captured before the request runs. */
export function intentExtra(fs: FileSystem, h: InHeader, req: FuseRequest): unknown {
  switch (req.kind) {
    case 'RENAME':
    case 'RENAME2': {
      const src = probe(fs, h.nodeid, req.oldName);
      const dst = probe(fs, req.newDir, req.newName);
      return { src: src?.ino ?? null, dst: dst?.ino ?? null };
    }
    case 'WRITE':
      return { appendSize: probeSize(fs, req.fh) };
    default:
      return null;
  }
}

const probe = (fs: FileSystem, parent: number, name: Buffer): EntryProbe | null => fs.probeEntry?.(parent, name) ?? null;
const probeSize = (fs: FileSystem, fh: number): number | null => fs.probeAppendSize?.(fh) ?? null;

function errnoOf(e: unknown): number | null {
  const n = (e as { errno?: unknown }).errno;
  return typeof n === 'number' ? n : null;
}

function createdByUs(p: { ctimeNs: bigint } | null, intentTs: bigint): boolean {
  return p !== null && p.ctimeNs + CTIME_SLACK_NS >= intentTs;
}

/** Runs `op`; if it fails with `errno` and `settled()` says the request already took effect,
 * returns `already()` instead. */
function settle<T>(op: () => T, errno: number, settled: () => boolean, already: () => T): T {
  try {
    return op();
  } catch (e) {
    if (errnoOf(e) === errno && settled()) return already();
    throw e;
  }
}

/**
 * The filesystem as seen by a resubmitted request that may already have run (intent journaled,
 * no outcome). Mutating methods check whether the request already took effect and then answer
 * as if they had just done it; everything else goes straight to `fs`.
 */
export function settlingFileSystem(fs: FileSystem, intentTs: bigint, extra: unknown): FileSystem {
  const x = (extra ?? {}) as { src?: bigint | null; dst?: bigint | null; appendSize?: number | null };
  const overrides: Partial<FileSystem> = {
    mkdir: (ctx, parent, name, mode, umask) => settle(() => fs.mkdir(ctx, parent, name, mode, umask), EEXIST,
      () => createdByUs(probe(fs, parent, name), intentTs), () => fs.lookup(ctx, parent, name)),
    mknod: (ctx, parent, name, mode, rdev, umask) => settle(() => fs.mknod(ctx, parent, name, mode, rdev, umask), EEXIST,
      () => createdByUs(probe(fs, parent, name), intentTs), () => fs.lookup(ctx, parent, name)),
    symlink: (ctx, parent, name, target) => settle(() => fs.symlink(ctx, parent, name, target), EEXIST,
      () => createdByUs(probe(fs, parent, name), intentTs), () => fs.lookup(ctx, parent, name)),
    create: (ctx, parent, name, mode, flags, umask) => settle(() => fs.create(ctx, parent, name, mode, flags, umask), EEXIST,
      () => (flags & O_EXCL) !== 0 && createdByUs(probe(fs, parent, name), intentTs),
      () => fs.create(ctx, parent, name, mode, flags & ~O_EXCL, umask)),
    link: (ctx, nodeid, newParent, newName) => settle(() => fs.link(ctx, nodeid, newParent, newName), EEXIST,
      () => probe(fs, newParent, newName)?.ino === fs.getattr(ctx, nodeid, null).stat.readBigUInt64LE(8),
      () => fs.lookup(ctx, newParent, newName)),
    unlink: (ctx, parent, name) => settle(() => fs.unlink(ctx, parent, name), ENOENT, () => true, () => undefined),
    rmdir: (ctx, parent, name) => settle(() => fs.rmdir(ctx, parent, name), ENOENT, () => true, () => undefined),
    rename: (ctx, parent, name, newParent, newName, flags) => {
      if ((flags & RENAME_EXCHANGE) && x.src != null && x.dst != null &&
        probe(fs, parent, name)?.ino === x.dst && probe(fs, newParent, newName)?.ino === x.src) return; // already exchanged
      const moved = (): boolean => x.src != null && probe(fs, parent, name) === null && probe(fs, newParent, newName)?.ino === x.src;
      try {
        fs.rename(ctx, parent, name, newParent, newName, flags);
      } catch (e) {
        const errno = errnoOf(e);
        if ((errno === ENOENT || (errno === EEXIST && (flags & RENAME_NOREPLACE))) && moved()) return;
        throw e;
      }
    },
    removexattr: (ctx, nodeid, name) => settle(() => fs.removexattr(ctx, nodeid, name), ENODATA, () => true, () => undefined),
    setxattr: (ctx, nodeid, name, value, flags) => settle(() => fs.setxattr(ctx, nodeid, name, value, flags), EEXIST,
      () => (flags & XATTR_CREATE) !== 0, () => undefined),
    release: (ctx, nodeid, fh, flags, releaseFlags, lockOwner) => settle(() => fs.release(ctx, nodeid, fh, flags, releaseFlags, lockOwner),
      EBADF, () => true, () => undefined),
    releasedir: (ctx, nodeid, fh) => settle(() => fs.releasedir(ctx, nodeid, fh), EBADF, () => true, () => undefined),
    write: (ctx, nodeid, fh, offset, size, segments, writeFlags) => {
      if (typeof x.appendSize === 'number') {
        const now = probeSize(fs, fh);
        // An append that landed grew the file by its size; the bytes there are the guest's.
        if (now !== null && now >= x.appendSize + size) return Promise.resolve(size);
      }
      return fs.write(ctx, nodeid, fh, offset, size, segments, writeFlags);
    },
  };
  return new Proxy(fs, {
    get(target, prop, receiver) {
      const o = (overrides as Record<string | symbol, unknown>)[prop];
      if (o !== undefined) return o;
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

/** A journaled FUSE request (exactly-once): its intent, and once known, the reply bytes. */
export interface OpRecord {
  opcode: number;
  /** Wall-clock ns at intent: files created after this by the request are ours. */
  ts: bigint;
  extra: unknown;
  /** The full reply (out header + body) the request produced; empty for no-reply requests. */
  reply: Buffer | null;
  /** Worker deaths this request has been inflight across. */
  deaths: number;
}

/** What the FUSE server needs from the journal. */
/** A journaled request's name: unique per request of a session, since a head's counter
 * (inflight region) only grows, across restarts too. */
export const requestKey = (queueIndex: number, head: number, counter: bigint): string => `${queueIndex}.${head}.${counter}`;

export interface RequestLedger {
  get(key: string): OpRecord | undefined;
  /** A resubmitted request: records one more death and returns the total. */
  recordDeath(key: string): number;
  /** Starts a journaled request: session mutations until endSync() are its own and become
   * durable with its outcome. With `intent`, the intent is journaled now, before the request
   * runs: a request that is not idempotent needs it to settle a death between its syscall and
   * its outcome. `intentJournaledMs`: the addon journaled the intent already, at that wall-clock
   * time (native/src/fast_fuse.cc WriteIntent); `intent` is false then. */
  beginRequest(key: string, opcode: number, intent: boolean, extra: unknown, intentJournaledMs?: number): void;
  /** Stages the request's outcome (its reply). It becomes durable at the group commit that
   * runs before any used element is published (worker/state/durability.ts: the staged
   * outcomes' fds to the keeper, then the outcomes to the journal, then fd removals). */
  outcome(key: string, reply: Buffer): void;
  /** Ends the synchronous part of a request: later FS mutations are not its own. */
  endSync(): void;
  /** The request's used element is visible to the guest; it will never be resubmitted. */
  release(key: string): void;
  /** LOOKUPs the native path served in one ring turn, in pop order (their replies are written,
   * not yet published): each is a journaled request whose session effect is one lookup of
   * its nodeid, which `addLookup` makes (false: it could not). Staged for the group commit as
   * beginRequest/outcome would stage them, in fewer bytes (one record for the batch).
   * Optional: without it, each goes through beginRequest/outcome. */
  servedLookups?(queueIndex: number, lookups: readonly ServedLookup[], addLookup: (nodeid: number) => boolean): void;
  /** Runs `apply`, whose session mutations are already in the journal (requests the addon
   * journaled and published itself: RingServedBatch.journaled), so none is journaled again.
   * Optional: a ledger without a journal applies them as they come. */
  applyJournaled?(apply: () => void): void;
}

/** A LOOKUP the native path served (RequestLedger.servedLookups). */
export interface ServedLookup {
  key: string;
  head: number;
  counter: bigint;
  nodeid: number;
  reply: Buffer;
}
