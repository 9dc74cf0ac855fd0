// FUSE server: takes one descriptor chain, decodes the FUSE request from guest memory with
// bounds checks, dispatches it to the FileSystem, and writes the reply into the chain's
// writable buffers. READ and WRITE payloads move between files and guest memory in the addon
// (preadv/pwritev on the chain's iovecs); they never pass through JS.
//
// Contract per opcode follows libfuse's fuse_lowlevel.h: FORGET and BATCH_FORGET get no reply;
// every other request gets exactly one reply (an error header or a typed body).
import type { CacheMode } from '../../shared/config';
import type { Logger } from '../../shared/log';
import { isNativeError, type FastFuseHandle, type IoSegment, type ServedNewInode } from '../../shared/native';
import type { Context, FileSystem } from '../fs/filesystem';
import { FsError } from '../fs/filesystem';
import type { DescriptorChain } from '../virtqueue/split_ring';
import { gatherFromSegments, scatterToSegments, sliceSegments } from '../virtqueue/guest_memory';
import type { ChainHandler } from '../virtqueue/queue_server';
import type { RingServedBatch } from '../virtqueue/split_ring';
import * as K from './constants';
import * as ERRNO from '../../shared/errno';
import * as P from './protocol';
import { JOURNALED_KINDS, intentExtra, needsIntent, requestKey, settlingFileSystem, type RequestLedger, type ServedLookup } from './exactly_once';
import { crashPoint } from '../../shared/crash_points';
import { BugError } from '../../shared/errors';

/** A request inflight across this many worker deaths is a poison pill: answered with EIO. One
 * more death (answering it faulted too) and it is returned unread, with length 0. */
export const POISON_DEATHS = 3;

/** A request's identity across worker restarts: queue, head and inflight counter, all known
 * before any of the request's guest buffers are read. */


/** INTERRUPTs whose request we have not seen (yet: it may sit on another queue) are remembered,
 * as libfuse does, and this many at most (uniques are never reused within a session, so a stale
 * one only takes room). */
const MAX_UNMATCHED_INTERRUPTS = 64;

/** Largest request we gather into JS memory: SETXATTR values (64 KiB) plus headers. WRITE
 * payloads are not gathered. */
export const MAX_GATHERED_REQUEST = 256 * 1024;
export const MAX_WRITE = 1024 * 1024;
const MAX_PAGES = MAX_WRITE / 4096;

/** INIT flags we can honour. Deliberately absent: WRITEBACK_CACHE (changes open/write
 * semantics), POSIX_ACL and SETXATTR_EXT (no ACL handling here), DONT_MASK (the guest kernel
 * applies the umask), HANDLE_KILLPRIV_V2 (the guest kernel clears suid/sgid itself), DAX. */
export const SUPPORTED_INIT_FLAGS =
  K.FUSE_ASYNC_READ | K.FUSE_POSIX_LOCKS | K.FUSE_ATOMIC_O_TRUNC | K.FUSE_BIG_WRITES | K.FUSE_FLOCK_LOCKS |
  K.FUSE_DO_READDIRPLUS | K.FUSE_READDIRPLUS_AUTO | K.FUSE_ASYNC_DIO | K.FUSE_PARALLEL_DIROPS |
  K.FUSE_MAX_PAGES | K.FUSE_INIT_EXT;

export interface InitResult {
  major: number;
  minor: number;
  flags: bigint;
  maxReadahead: number;
  maxWrite: number;
  maxPages: number;
}

export interface FuseServerOptions {
  cache: CacheMode;
  /** INIT flags not to offer even when the guest asks (configuration: no_posix_lock, no_flock,
   * --no-readdirplus). */
  withheldInitFlags?: bigint;
  /** A read-only export (--readonly): every request that would change the filesystem gets
   * EROFS before it runs (and is never journaled). */
  readonly?: boolean;
  /** Makes the INIT result durable; called before the INIT/DESTROY reply can reach the guest. */
  onInit?: (init: InitResult | null) => void;
  /** A restarted worker resumes the session: INIT is not negotiated again. */
  restoredInit?: InitResult | null;
  /** Exactly-once journal of state-changing requests (absent: no crash safety, e.g. tests). */
  ledger?: RequestLedger;
  /** The addon's fast path (native/src/fast_fuse.cc): it serves only while a FUSE session is
   * initialized, and refuses writes itself on a read-only export. */
  fastPath?: FastFuseHandle | null;
}

/** Linux open(2) flags in FUSE OPEN requests: the access mode and O_TRUNC. */
const O_ACCMODE = 3;
const O_TRUNC = 0o1000;
const W_OK = 2;

/** Whether a request would change the exported filesystem (refused on a read-only export).
 * Locks, fsync and reads do not; OPEN does when it asks for write access or truncation, and
 * ACCESS when it asks about writing. */
export function changesFilesystem(req: P.FuseRequest): boolean {
  switch (req.kind) {
    case 'SETATTR': case 'SYMLINK': case 'MKNOD': case 'MKDIR': case 'UNLINK': case 'RMDIR': case 'RENAME': case 'RENAME2':
    case 'LINK': case 'CREATE': case 'TMPFILE': case 'WRITE': case 'SETXATTR': case 'REMOVEXATTR': case 'FALLOCATE':
    case 'COPY_FILE_RANGE':
      return true;
    case 'OPEN':
      return (req.flags & O_ACCMODE) !== 0 || (req.flags & O_TRUNC) !== 0;
    case 'ACCESS':
      // access(W_OK) answers what a write would meet.
      return (req.mask & W_OK) !== 0;
    default:
      return false;
  }
}

/** Opcodes the addon may serve with a file or dir for JavaScript to register or release. */
const SERVED_FILE_OPS: ReadonlySet<number> = new Set([K.FUSE_OPEN, K.FUSE_RELEASE, K.FUSE_OPENDIR, K.FUSE_RELEASEDIR]);

/** Identity of one request across worker restarts, and how its reply is recorded. */
interface Journaled { key: string; opcode: number }

/** A SETLKW parked in the filesystem: INTERRUPT of its unique or a stop of its queue ends it. */
interface ParkedWait { unique: bigint; queue: number; ctl: AbortController }

type Reply = Buffer | null;

/** A used-ring slot of a queue as one number (heads are below 2^15). */
const slotOf = (queueIndex: number, head: number): number => queueIndex * 65536 + head;

export class FuseServer implements ChainHandler {
  private initResult: InitResult | null = null;
  private readonly headerScratch = Buffer.alloc(P.IN_HEADER_SIZE + K.WRITE_IN_SIZE);
  /** Journaled requests whose used element is not yet published, by slotOf(queue, head) (a
   * number: no string per request). */
  private readonly unpublished = new Map<number, Journaled>();
  private readonly parked = new Set<ParkedWait>();
  private unmatchedInterrupts: bigint[] = [];

  constructor(private readonly fs: FileSystem, private readonly opts: FuseServerOptions, private readonly log: Logger) {
    opts.fastPath?.setReadonly(opts.readonly === true);
    this.setInit(opts.restoredInit ?? null);
    // A successor's filesystem learns what its predecessor's INIT agreed (the umask, writeback
    // and the addon's OPEN policy follow from it), as at the INIT itself.
    if (opts.restoredInit) fs.init(opts.restoredInit.flags);
  }

  /** The FUSE session's INIT result (null: none); the fast path serves only within one. */
  private setInit(init: InitResult | null): void {
    this.initResult = init;
    this.opts.fastPath?.setEnabled(init !== null);
  }

  get init(): InitResult | null {
    return this.initResult;
  }

  /** Device reset or disconnect: the FUSE session is over. */
  reset(): void {
    if (this.initResult !== null) this.fs.destroy();
    this.setInit(null);
    this.unmatchedInterrupts = [];
  }

  /** The queue is being stopped (GET_VRING_BASE): its parked lock waits end with EINTR now, so
   * that the queue drains and no lock is taken behind a reply that can no longer be delivered. */
  stopping(queueIndex: number): void {
    let n = 0;
    for (const w of this.parked) {
      if (w.queue !== queueIndex) continue;
      w.ctl.abort();
      n++;
    }
    if (n > 0) this.log.info({ queue: queueIndex, ended: n }, 'queue stopping: parked lock waits answered EINTR');
  }

  handleChain(chain: DescriptorChain, queueIndex: number): number | Promise<number> {
    if (chain.readableLen < P.IN_HEADER_SIZE) {
      this.log.error({ head: chain.head, readable: chain.readableLen }, 'request shorter than a FUSE header; dropped');
      return 0;
    }
    const hdrBytes = this.headerScratch.subarray(0, P.IN_HEADER_SIZE);
    gatherFromSegments(chain.readable, 0, hdrBytes);
    const h = P.parseInHeader(hdrBytes);
    if (h.len !== chain.readableLen) {
      this.log.error({ head: chain.head, opcode: h.opcode, len: h.len, chain: chain.readableLen }, 'FUSE header length disagrees with the descriptor chain');
      return this.replyError(chain, h.unique, ERRNO.EINVAL);
    }
    if (h.opcode === K.FUSE_WRITE) return this.handleWrite(chain, h, queueIndex);
    if (h.len > MAX_GATHERED_REQUEST) {
      this.log.error({ opcode: h.opcode, len: h.len }, 'request too large');
      return this.replyError(chain, h.unique, ERRNO.EINVAL);
    }
    const body = Buffer.allocUnsafe(h.len - P.IN_HEADER_SIZE);
    gatherFromSegments(chain.readable, P.IN_HEADER_SIZE, body);
    let req: P.FuseRequest;
    try {
      req = P.parseRequest(h, body);
    } catch (e) {
      if (e instanceof P.FuseProtocolError) {
        this.log.warn({ opcode: h.opcode, unique: h.unique.toString(), err: e.message }, 'malformed FUSE request');
        return P.opcodeHasReply(h.opcode) ? this.replyError(chain, h.unique, e.errno) : 0;
      }
      throw e;
    }
    return this.dispatch(chain, h, req, queueIndex);
  }

  private ctx(h: P.InHeader): Context {
    return { uid: h.uid, gid: h.gid, pid: h.pid };
  }

  private dispatch(chain: DescriptorChain, h: P.InHeader, req: P.FuseRequest, queueIndex: number): number | Promise<number> {
    if (req.kind !== 'INIT' && this.initResult === null) {
      this.log.warn({ opcode: h.opcode }, 'request before FUSE INIT');
      return P.opcodeHasReply(h.opcode) ? this.replyError(chain, h.unique, ERRNO.EIO) : 0;
    }
    if (this.opts.readonly === true && changesFilesystem(req)) return this.replyError(chain, h.unique, ERRNO.EROFS);
    const ledger = this.opts.ledger;
    let fs = this.fs;
    let journaled: Journaled | null = null;
    if (ledger !== undefined) {
      const key = requestKey(queueIndex, chain.head, chain.counter);
      if (chain.resubmitted) {
        // The death was counted by resubmitting(), before the chain was read.
        const rec = ledger.get(key);
        const deaths = rec?.deaths ?? 0;
        // Journals of earlier versions named requests with their unique too.
        const prior = rec !== undefined && (rec.opcode !== 0 || rec.reply !== null) ? rec : ledger.get(`${key}.${h.unique}`) ?? rec;
        if (prior?.reply) {
          // The dead worker finished this request: its reply, not a second run.
          this.log.info({ opcode: K.opcodeName(h.opcode), key }, 'replaying the recorded reply of a resubmitted request');
          this.unpublished.set(slotOf(queueIndex, chain.head), { key, opcode: h.opcode });
          return prior.reply.length === 0 ? 0 : this.writeReply(chain, prior.reply);
        }
        if (deaths >= POISON_DEATHS) {
          this.log.error({ opcode: K.opcodeName(h.opcode), unique: h.unique.toString(), deaths }, 'poison request: inflight across repeated worker deaths; answered EIO instead of running it again');
          // Released (its death count forgotten) once the answer is published.
          this.unpublished.set(slotOf(queueIndex, chain.head), { key, opcode: h.opcode });
          return P.opcodeHasReply(h.opcode) ? this.replyError(chain, h.unique, ERRNO.EIO) : 0;
        }
        if (prior !== undefined && prior.opcode === h.opcode) fs = settlingFileSystem(this.fs, prior.ts, prior.extra);
      }
      if (JOURNALED_KINDS.has(req.kind) || (req.kind === 'FLUSH' && this.fs.flushChangesState?.(h.nodeid, req.lockOwner) === true)) {
        journaled = { key, opcode: h.opcode };
        const extra = intentExtra(this.fs, h, req);
        ledger.beginRequest(key, h.opcode, needsIntent(req, extra), extra);
        crashPoint('op-after-intent', h.opcode);
      }
    }
    try {
      const r = this.execute(fs, chain, h, req, queueIndex);
      ledger?.endSync();
      if (r instanceof Promise) {
        return r.then((reply) => this.finish(chain, h, reply, journaled, queueIndex),
          (e) => this.finishError(chain, h, e, journaled, queueIndex));
      }
      return this.finish(chain, h, r, journaled, queueIndex);
    } catch (e) {
      ledger?.endSync();
      return this.finishError(chain, h, e, journaled, queueIndex);
    }
  }

  private finish(chain: DescriptorChain, h: P.InHeader, reply: Reply | number, j: Journaled | null, queueIndex: number): number {
    if (typeof reply === 'number') return reply; // already written (READ, never journaled)
    if (j !== null) crashPoint('op-after-syscall', h.opcode);
    if (reply === null) return this.record(chain, Buffer.alloc(0), j, queueIndex); // FORGET-type: no reply
    return this.record(chain, this.okBytes(chain, h.unique, reply), j, queueIndex);
  }

  private finishError(chain: DescriptorChain, h: P.InHeader, e: unknown, j: Journaled | null, queueIndex: number): number {
    const errno = this.errnoOf(e, h);
    if (j !== null) crashPoint('op-after-syscall', h.opcode);
    if (!P.opcodeHasReply(h.opcode)) return this.record(chain, Buffer.alloc(0), j, queueIndex);
    return this.record(chain, P.errorReply(h.unique, errno), j, queueIndex);
  }

  /** Stages a request's outcome (durable at the group commit, before the guest can see it),
   * then writes the reply. */
  private record(chain: DescriptorChain, bytes: Buffer, j: Journaled | null, queueIndex: number): number {
    if (j !== null && this.opts.ledger !== undefined) {
      this.opts.ledger.outcome(j.key, bytes);
      this.unpublished.set(slotOf(queueIndex, chain.head), j);
    }
    return bytes.length === 0 ? 0 : this.writeReply(chain, bytes);
  }

  resubmitting(queueIndex: number, head: number, counter: bigint): 'run' | 'drop' {
    const ledger = this.opts.ledger;
    if (ledger === undefined) return 'run';
    const key = requestKey(queueIndex, head, counter);
    // Journaled now, before the chain is read: a request whose buffers fault (SIGBUS) kills each
    // worker that reads it, so a death counted any later would never be counted.
    const deaths = ledger.recordDeath(key);
    if (deaths <= POISON_DEATHS) return 'run';
    this.log.error({ queue: queueIndex, head, deaths }, 'poison request: even answering it killed the worker; returned unread');
    this.unpublished.set(slotOf(queueIndex, head), { key, opcode: 0 });
    return 'drop';
  }

  /** LOOKUPs, SETATTRs, OPENs, RELEASEs, CREATEs, MKDIRs, UNLINKs and RMDIRs the addon answered
   * (native/src/fast_fuse.cc), one batch per ring turn: each one's outcome (and its session
   * change: a LOOKUP's lookup count or new inode, an OPEN's fh, a RELEASE's closeFile, a
   * CREATE's inode and fh, a MKDIR's inode; the intent of a CREATE, MKDIR or UNLINK the addon
   * journaled itself) is
   * journaled as TypeScript's own request
   * would journal it (dispatch), in pop order, so the group commit makes them durable before
   * the replies are published, and a resubmission after a crash gets the recorded reply
   * instead of a second count or a second run. */
  ringServed(batch: RingServedBatch, queueIndex: number): void {
    const ledger = this.opts.ledger;
    if (batch.journaled === true) {
      if (ledger?.applyJournaled !== undefined) ledger.applyJournaled(() => this.applyJournaled(batch));
      else this.applyJournaled(batch);
      return;
    }
    const lookups: ServedLookup[] = [];
    for (let i = 0; i < batch.count; i++) {
      const head = batch.head(i);
      const opcode = batch.opcode(i);
      const counter = batch.counter(i);
      const key = requestKey(queueIndex, head, counter);
      const found = this.servedNewInode(batch, i, opcode);
      if (found === null && ledger?.servedLookups !== undefined && opcode === K.FUSE_LOOKUP) {
        lookups.push({ key, head, counter, nodeid: batch.nodeid(i), reply: batch.reply(i) });
      } else {
        // A plain outcome, as TypeScript journals its own: a LOOKUP that added an inode (its
        // addInode), a SETATTR (no session change), an OPEN (its openFile), a RELEASE (its
        // closeFile and lock ends), a CREATE (its addInode and openFile), a MKDIR (its
        // addInode), an UNLINK or RMDIR (no session change; the intent of these four is in the
        // journal), a READDIRPLUS (its entries' lookups and the dir's position), a FORGET or
        // BATCH_FORGET (the lookups dropped; no reply), or a LOOKUP with a ledger that takes no
        // batches.
        ledger?.beginRequest(key, opcode, false, null, batch.intentMs?.(i) ?? undefined);
        this.applyServed(batch, i, opcode, found);
        ledger?.endSync();
        ledger?.outcome(key, batch.reply(i));
      }
      if (ledger !== undefined) this.unpublished.set(slotOf(queueIndex, head), { key, opcode });
    }
    if (lookups.length > 0) ledger!.servedLookups!(queueIndex, lookups, (nodeid) => this.addServedLookup(nodeid));
  }

  /** The session changes of requests the addon journaled and published itself (native/src/
   * ring.cc JournalOwnBatch), in pop order, as ringServed applies them: a LOOKUP's lookup count
   * or new inode, a MKDIR's new inode, a CREATE's new inode and file, an OPEN's file, an
   * OPENDIR's dir, a READDIRPLUS's entries and dir position, a FORGET's dropped lookups (the
   * others, SETATTR, UNLINK, RMDIR and failed CREATEs and MKDIRs, changed nothing). Their
   * records are durable, so a worker that throws here leaves a successor the same session. */
  private applyJournaled(batch: RingServedBatch): void {
    for (let i = 0; i < batch.count; i++) {
      const opcode = batch.opcode(i);
      this.applyServed(batch, i, opcode, this.servedNewInode(batch, i, opcode));
    }
  }

  /** The inode a served LOOKUP, CREATE or MKDIR added, or null (a known inode's LOOKUP, a CREATE
   * or MKDIR that failed, another opcode). */
  private servedNewInode(batch: RingServedBatch, i: number, opcode: number): ServedNewInode | null {
    return opcode === K.FUSE_LOOKUP || opcode === K.FUSE_CREATE || opcode === K.FUSE_MKDIR ? batch.newInode?.(i) ?? null : null;
  }

  /** One served request's session change, whichever journals it (ringServed, applyJournaled).
   * A CREATE or MKDIR that failed (`found` null) changed nothing. */
  private applyServed(batch: RingServedBatch, i: number, opcode: number, found: ServedNewInode | null): void {
    if (opcode === K.FUSE_READDIRPLUS) this.applyServedReaddir(batch, i);
    else if (opcode === K.FUSE_FORGET || opcode === K.FUSE_BATCH_FORGET) this.applyServedForgets(batch, i);
    else if (SERVED_FILE_OPS.has(opcode)) this.applyServedFile(batch, i, opcode);
    else if (found !== null && opcode === K.FUSE_CREATE) this.adoptServedCreate(batch, i, found);
    else if (found !== null) this.adoptServedInode(batch.nodeid(i), found);
    else if (opcode === K.FUSE_LOOKUP) this.addServedLookup(batch.nodeid(i));
  }

  /** Throws when the filesystem cannot take the inode: the worker dies before the reply that
   * names it is published (its successor runs the LOOKUP again). */
  private adoptServedInode(nodeid: number, found: ServedNewInode): void {
    if (this.fs.adoptServedInode === undefined) {
      // A filesystem without the fast path's tables never has its LOOKUPs served so.
      throw new BugError(`fast-path LOOKUP added inode ${nodeid}, which the filesystem cannot take`);
    }
    this.fs.adoptServedInode(nodeid, found);
  }

  /** A CREATE's new inode and file. Throws when the batch or the filesystem cannot take them:
   * the worker dies before the reply is published (its successor settles the CREATE by its
   * intent). */
  private adoptServedCreate(batch: RingServedBatch, i: number, found: ServedNewInode | null): void {
    const file = batch.created?.(i) ?? null;
    if (found === null || file === null || this.fs.adoptServedCreate === undefined) {
      throw new BugError(`fast-path CREATE of nodeid ${batch.nodeid(i)} that the batch or the filesystem cannot take`);
    }
    this.fs.adoptServedCreate(batch.nodeid(i), found, file);
  }

  /** An OPEN(DIR)'s new fh or a RELEASE(DIR)'s release. Throws when the batch or the filesystem
   * cannot take it: the worker dies before the reply is published (its successor runs it again). */
  private applyServedFile(batch: RingServedBatch, i: number, opcode: number): void {
    const fs = this.fs;
    const [file, apply] =
      opcode === K.FUSE_OPEN ? [batch.opened?.(i), fs.adoptServedOpen?.bind(fs)]
      : opcode === K.FUSE_RELEASE ? [batch.released?.(i), fs.releaseServed?.bind(fs)]
      : opcode === K.FUSE_OPENDIR ? [batch.openedDir?.(i), fs.adoptServedOpendir?.bind(fs)]
      : [batch.releasedDir?.(i), fs.releasedirServed?.bind(fs)];
    if (file == null || apply === undefined) {
      throw new BugError(`fast-path ${K.opcodeName(opcode)} of nodeid ${batch.nodeid(i)} that the batch or the filesystem cannot take`);
    }
    apply(batch.nodeid(i), file);
  }

  /** A FORGET or BATCH_FORGET the addon served, as execute() runs a BATCH_FORGET (the addon
   * served only inodes in its table, which mirrors the session). */
  private applyServedForgets(batch: RingServedBatch, i: number): void {
    const pairs = batch.forgets?.(i) ?? null;
    if (pairs === null) throw new BugError(`fast-path ${K.opcodeName(batch.opcode(i))} that the batch cannot take`);
    this.forgetAll(this.fs, pairs);
  }

  /** Each pair's lookups dropped; one the filesystem refuses is logged and skipped, so the rest
   * of a batch still counts. */
  private forgetAll(fs: FileSystem, items: ReadonlyArray<{ nodeid: number; nlookup: number }>): void {
    for (const f of items) {
      try {
        fs.forget(f.nodeid, f.nlookup);
      } catch (e) {
        this.log.warn({ nodeid: f.nodeid, err: (e as Error).message }, 'batch forget of an unknown node');
      }
    }
  }

  private applyServedReaddir(batch: RingServedBatch, i: number): void {
    const served = batch.readdir?.(i) ?? null;
    if (served === null || this.fs.readdirplusServed === undefined) {
      throw new BugError(`fast-path READDIRPLUS of nodeid ${batch.nodeid(i)} that the batch or the filesystem cannot take`);
    }
    this.fs.readdirplusServed(batch.nodeid(i), served, batch.reply(i));
  }

  private addServedLookup(nodeid: number): boolean {
    try {
      this.fs.addLookup!(nodeid);
      return true;
    } catch (e) {
      // Cannot happen: the fast path answers only for inodes in its table, which leave it with
      // the session's FORGET before anything else runs. Logged: the reply is already written.
      this.log.error({ nodeid, err: e instanceof Error ? e.message : String(e) }, 'fast-path LOOKUP of an inode the session does not know');
      return false;
    }
  }

  /** The queue's PublishBarrier (worker/state/durability.ts) has made the outcomes durable. */
  beforePublish(queueIndex: number, heads: number[]): void {
    if (this.opts.ledger === undefined) return;
    for (const head of heads) {
      const j = this.unpublished.get(slotOf(queueIndex, head));
      if (j === undefined) continue;
      crashPoint('op-after-outcome', j.opcode);
      crashPoint('op-before-publish', j.opcode);
    }
  }

  published(queueIndex: number, heads: number[]): void {
    for (const head of heads) {
      const id = slotOf(queueIndex, head);
      const j = this.unpublished.get(id);
      if (j === undefined) continue;
      this.unpublished.delete(id);
      this.opts.ledger?.release(j.key);
      crashPoint('op-after-publish', j.opcode);
    }
  }

  private errnoOf(e: unknown, h: P.InHeader): number {
    if (e instanceof FsError || e instanceof P.FuseProtocolError) return e.errno;
    if (isNativeError(e)) return e.errno;
    this.log.error({ opcode: K.opcodeName(h.opcode), err: e instanceof Error ? { message: e.message, stack: e.stack } : String(e) }, 'unexpected error in request');
    return ERRNO.EIO;
  }

  /** The complete reply (out header + body), or an EOVERFLOW error reply when the guest's
   * buffers cannot hold it. */
  private okBytes(chain: DescriptorChain, unique: bigint, body: Buffer): Buffer {
    const total = P.OUT_HEADER_SIZE + body.length;
    if (total > chain.writableLen) {
      this.log.warn({ unique: unique.toString(), need: total, have: chain.writableLen }, 'reply does not fit the guest buffers');
      return P.errorReply(unique, ERRNO.EOVERFLOW);
    }
    const out = Buffer.allocUnsafe(total);
    P.encodeOutHeader(out, 0, total, 0, unique);
    body.copy(out, P.OUT_HEADER_SIZE);
    return out;
  }

  /** Writes reply bytes into the chain's writable buffers; returns the used length. */
  private writeReply(chain: DescriptorChain, bytes: Buffer): number {
    if (chain.writableLen < bytes.length) {
      this.log.error({ writable: chain.writableLen, need: bytes.length }, 'no room for the reply; request dropped');
      return 0;
    }
    scatterToSegments(chain.writable, 0, bytes);
    return bytes.length;
  }

  private replyError(chain: DescriptorChain, unique: bigint, errno: number): number {
    if (chain.writableLen < P.OUT_HEADER_SIZE) {
      this.log.error({ unique: unique.toString(), errno }, 'no room for an error reply; request dropped');
      return 0;
    }
    scatterToSegments(chain.writable, 0, P.errorReply(unique, errno));
    return P.OUT_HEADER_SIZE;
  }

  private replyRoom(chain: DescriptorChain): number {
    return Math.max(0, chain.writableLen - P.OUT_HEADER_SIZE);
  }

  private handleWrite(chain: DescriptorChain, h: P.InHeader, queueIndex: number): number | Promise<number> {
    // h.len is the chain's length (handleChain): the chain holds fuse_write_in before we gather it.
    // Only the args are gathered; the parser checks size against h.len and says where the
    // payload starts, and the payload stays in guest memory.
    if (h.len < P.IN_HEADER_SIZE + K.WRITE_IN_SIZE) return this.replyError(chain, h.unique, ERRNO.EINVAL);
    const args = Buffer.allocUnsafe(K.WRITE_IN_SIZE);
    gatherFromSegments(chain.readable, P.IN_HEADER_SIZE, args);
    let req: P.FuseRequest;
    try {
      req = P.parseRequest(h, args);
    } catch (e) {
      if (e instanceof P.FuseProtocolError) return this.replyError(chain, h.unique, e.errno);
      throw e;
    }
    if (req.kind !== 'WRITE') return this.replyError(chain, h.unique, ERRNO.EINVAL);
    if (req.size > MAX_WRITE) return this.replyError(chain, h.unique, ERRNO.EINVAL);
    return this.dispatch(chain, h, req, queueIndex);
  }

  private execute(fs: FileSystem, chain: DescriptorChain, h: P.InHeader, req: P.FuseRequest, queueIndex: number): Reply | number | Promise<Reply | number> {
    const ctx = this.ctx(h);
    const node = h.nodeid;
    switch (req.kind) {
      case 'INIT': return this.doInit(req);
      case 'DESTROY':
        fs.destroy();
        this.setInit(null);
        this.unmatchedInterrupts = [];
        this.opts.onInit?.(null);
        return Buffer.alloc(0);
      case 'LOOKUP': return P.encodeEntryOut(fs.lookup(ctx, node, req.name));
      case 'FORGET':
        fs.forget(node, req.nlookup);
        return null;
      case 'BATCH_FORGET':
        this.forgetAll(fs, req.items);
        return null;
      case 'GETATTR': {
        const useFh = (req.getattrFlags & K.FUSE_GETATTR_FH) !== 0;
        return P.encodeAttrOut(fs.getattr(ctx, node, useFh ? req.fh : null));
      }
      case 'SETATTR': {
        const r = fs.setattr(ctx, node, {
          valid: req.valid, fh: req.fh, size: req.size, atime: req.atime, atimeNsec: req.atimeNsec,
          mtime: req.mtime, mtimeNsec: req.mtimeNsec, mode: req.mode, uid: req.uid, gid: req.gid,
        });
        return r instanceof Promise ? r.then((a) => P.encodeAttrOut(a)) : P.encodeAttrOut(r);
      }
      case 'READLINK': return fs.readlink(ctx, node);
      case 'SYMLINK': return P.encodeEntryOut(fs.symlink(ctx, node, req.name, req.target));
      case 'MKNOD': return P.encodeEntryOut(fs.mknod(ctx, node, req.name, req.mode, req.rdev, req.umask));
      case 'MKDIR': return P.encodeEntryOut(fs.mkdir(ctx, node, req.name, req.mode, req.umask));
      case 'UNLINK': fs.unlink(ctx, node, req.name); return Buffer.alloc(0);
      case 'RMDIR': fs.rmdir(ctx, node, req.name); return Buffer.alloc(0);
      case 'RENAME': fs.rename(ctx, node, req.oldName, req.newDir, req.newName, 0); return Buffer.alloc(0);
      case 'RENAME2': fs.rename(ctx, node, req.oldName, req.newDir, req.newName, req.flags); return Buffer.alloc(0);
      case 'LINK': return P.encodeEntryOut(fs.link(ctx, req.oldNodeid, node, req.newName));
      case 'OPEN': return P.encodeOpenOut(fs.open(ctx, node, req.flags));
      case 'CREATE': {
        const r = fs.create(ctx, node, req.name, req.mode, req.flags, req.umask);
        return P.encodeCreateOut(r.entry, r.open);
      }
      case 'TMPFILE': {
        const r = fs.tmpfile(ctx, node, req.mode, req.flags, req.umask);
        return P.encodeCreateOut(r.entry, r.open);
      }
      case 'READ': return this.doRead(chain, h, ctx, req.fh, req.offset, req.size);
      case 'WRITE': {
        const segments: IoSegment[] = sliceSegments(chain.readable, req.payloadOffset, req.size);
        // A page-cache write may finish synchronously; either way the reply is a Buffer so that
        // finish() journals it (a bare number would mean "reply already written").
        const r = fs.write(ctx, node, req.fh, req.offset, req.size, segments, req.writeFlags);
        return typeof r === 'number' ? P.encodeWriteOut(r) : r.then((n) => P.encodeWriteOut(n));
      }
      case 'FLUSH': fs.flush(ctx, node, req.fh, req.lockOwner); return Buffer.alloc(0);
      case 'RELEASE': fs.release(ctx, node, req.fh, req.flags, req.releaseFlags, req.lockOwner); return Buffer.alloc(0);
      case 'FSYNC': return fs.fsync(ctx, node, req.fh, (req.fsyncFlags & 1) !== 0).then(() => Buffer.alloc(0));
      case 'STATFS': return P.encodeStatfsOut(fs.statfs(ctx, node));
      case 'SYNCFS': return fs.syncfs(ctx, node).then(() => Buffer.alloc(0));
      case 'OPENDIR': return P.encodeOpenOut(fs.opendir(ctx, node, req.flags));
      case 'READDIR':
      case 'READDIRPLUS': {
        const writer = new P.DirentWriter(Math.min(req.size, this.replyRoom(chain)), req.kind === 'READDIRPLUS');
        fs.readdir(ctx, node, req.fh, req.offset, req.kind === 'READDIRPLUS', writer);
        return writer.bytes();
      }
      case 'RELEASEDIR': fs.releasedir(ctx, node, req.fh); return Buffer.alloc(0);
      case 'FSYNCDIR': return fs.fsyncdir(ctx, node, req.fh, (req.fsyncFlags & 1) !== 0).then(() => Buffer.alloc(0));
      case 'GETXATTR': {
        const r = fs.getxattr(ctx, node, req.name, req.size);
        return typeof r === 'number' ? P.encodeGetxattrOut(r) : r;
      }
      case 'LISTXATTR': {
        const r = fs.listxattr(ctx, node, req.size);
        return typeof r === 'number' ? P.encodeGetxattrOut(r) : r;
      }
      case 'SETXATTR': fs.setxattr(ctx, node, req.name, req.value, req.flags); return Buffer.alloc(0);
      case 'REMOVEXATTR': fs.removexattr(ctx, node, req.name); return Buffer.alloc(0);
      case 'ACCESS': fs.access(ctx, node, req.mask); return Buffer.alloc(0);
      case 'GETLK': return P.encodeLkOut(fs.getlk(ctx, node, req.fh, req.owner, req.lock));
      case 'SETLK':
        fs.setlk(ctx, node, req.fh, req.owner, req.lock, false, (req.lkFlags & K.FUSE_LK_FLOCK) !== 0);
        return Buffer.alloc(0);
      case 'SETLKW': return this.doSetlkw(fs, ctx, h, req, queueIndex);
      case 'FALLOCATE': return fs.fallocate(ctx, node, req.fh, req.mode, req.offset, req.length).then(() => Buffer.alloc(0));
      case 'LSEEK': return P.encodeLseekOut(fs.lseek(ctx, node, req.fh, req.offset, req.whence));
      case 'COPY_FILE_RANGE':
        return fs.copyFileRange(ctx, node, req.fhIn, req.offIn, req.nodeidOut, req.fhOut, req.offOut, req.len, req.flags)
          .then((n) => P.encodeWriteOut(n));
      case 'INTERRUPT':
        // Only a parked SETLKW can be waiting long enough to interrupt; everything else
        // finishes promptly and its own reply answers the interrupt (FUSE allows ignoring it).
        this.interrupt(req.unique);
        return null;
      default:
        return Promise.reject(new FsError(ERRNO.ENOSYS, `unsupported opcode ${K.opcodeName(h.opcode)}`));
    }
  }

  /** SETLKW: taken at once, or parked until it is, or EINTR (INTERRUPT, RELEASE, reset). */
  private doSetlkw(fs: FileSystem, ctx: Context, h: P.InHeader, req: P.LockRequest,
    queueIndex: number): Reply | Promise<Reply> {
    if (this.takeUnmatchedInterrupt(h.unique)) throw new FsError(ERRNO.EINTR, 'interrupted before it ran');
    const w: ParkedWait = { unique: h.unique, queue: queueIndex, ctl: new AbortController() };
    const r = fs.setlk(ctx, h.nodeid, req.fh, req.owner, req.lock, true, (req.lkFlags & K.FUSE_LK_FLOCK) !== 0, w.ctl.signal);
    if (!(r instanceof Promise)) return Buffer.alloc(0);
    this.parked.add(w);
    return r.then(() => {
      this.parked.delete(w);
      return Buffer.alloc(0);
    }, (e: unknown) => {
      this.parked.delete(w);
      throw e;
    });
  }

  private interrupt(unique: bigint): void {
    let found = false;
    for (const w of this.parked) {
      if (w.unique !== unique) continue;
      found = true;
      w.ctl.abort();
    }
    if (found) {
      this.log.debug({ unique: unique.toString() }, 'INTERRUPT ends a parked lock wait');
      return;
    }
    this.unmatchedInterrupts.push(unique);
    if (this.unmatchedInterrupts.length > MAX_UNMATCHED_INTERRUPTS) this.unmatchedInterrupts.shift();
  }

  private takeUnmatchedInterrupt(unique: bigint): boolean {
    const i = this.unmatchedInterrupts.indexOf(unique);
    if (i < 0) return false;
    this.unmatchedInterrupts.splice(i, 1);
    return true;
  }

  private doInit(req: Extract<P.FuseRequest, { kind: 'INIT' }>): Buffer {
    if (req.major < K.FUSE_KERNEL_VERSION) throw new FsError(ERRNO.EPROTO, `FUSE major ${req.major} unsupported`);
    if (req.major > K.FUSE_KERNEL_VERSION) {
      // The kernel retries INIT with our major when we answer with only our version.
      return P.encodeInitOut({ major: K.FUSE_KERNEL_VERSION, minor: K.FUSE_KERNEL_MINOR_VERSION, maxReadahead: 0, flags: 0n,
        maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGran: 0, maxPages: 0 });
    }
    if (req.minor < K.FUSE_MIN_SUPPORTED_MINOR) throw new FsError(ERRNO.EPROTO, `FUSE 7.${req.minor} is too old`);
    if (this.initResult !== null) {
      // A new INIT on a live session: the guest rebooted. Start a fresh FUSE session.
      this.log.info('FUSE INIT on a live session: dropping the previous session');
      this.fs.destroy();
      this.unmatchedInterrupts = [];
    }
    const minor = Math.min(req.minor, K.FUSE_KERNEL_MINOR_VERSION);
    let flags = req.flags & SUPPORTED_INIT_FLAGS & ~(this.opts.withheldInitFlags ?? 0n);
    if ((req.flags & K.FUSE_INIT_EXT) === 0n) flags &= 0xffff_ffffn;
    const result: InitResult = { major: K.FUSE_KERNEL_VERSION, minor, flags, maxReadahead: req.maxReadahead, maxWrite: MAX_WRITE, maxPages: MAX_PAGES };
    this.setInit(result);
    this.fs.init(flags);
    this.opts.onInit?.(result);
    this.log.info({ minor, flags: `0x${flags.toString(16)}`, cache: this.opts.cache }, 'FUSE session initialized');
    return P.encodeInitOut({ major: result.major, minor, maxReadahead: req.maxReadahead, flags, maxBackground: 64,
      congestionThreshold: 48, maxWrite: MAX_WRITE, timeGran: 1, maxPages: MAX_PAGES });
  }

  /** READ: preadv straight into the reply buffers after the out header. */
  private doRead(chain: DescriptorChain, h: P.InHeader, ctx: Context, fh: number, offset: number, size: number): Promise<number> | number {
    if (chain.writableLen < P.OUT_HEADER_SIZE) return 0;
    const want = Math.min(size, this.replyRoom(chain));
    const segments = sliceSegments(chain.writable, P.OUT_HEADER_SIZE, want);
    const done = (n: number): number => {
      const hdr = Buffer.allocUnsafe(P.OUT_HEADER_SIZE);
      P.encodeOutHeader(hdr, 0, P.OUT_HEADER_SIZE + n, 0, h.unique);
      scatterToSegments(chain.writable, 0, hdr);
      return P.OUT_HEADER_SIZE + n;
    };
    if (want === 0) return done(0);
    const r = this.fs.read(ctx, h.nodeid, fh, offset, want, segments);
    return typeof r === 'number' ? done(r) : r.then(done); // a number: served from the page cache
  }
}
