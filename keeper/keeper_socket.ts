// The keeper's end of keeper.sock: accepts connections of our own uid only (SO_PEERCRED),
// reads their messages, parses each with shared/keeper_protocol.ts and hands it to the keeper.
// A message that does not parse is refused whole: its fds are closed and a rate-limited error
// is logged; the connection stays (a worker's next message may be fine).
//
// Trust: a peer is a 'worker' (may store, fetch and remove fds, report, take over) or an
// 'observer' (may ask X_STATUSQUERY or X_UPGRADE, nothing else). Workers the keeper spawns get a connected
// socketpair end at spawn (adopt(..., 'worker')); a connection accepted on the path is whatever
// the keeper's classify() says of its SO_PEERCRED pid (under systemd: a process of the worker
// unit). An observer that sends anything else is refused, logged at a bounded
// rate, and disconnected: a process of our uid that is not our worker cannot touch the fds.
import * as fs from 'node:fs';
import { dirname, join as pathJoin } from 'node:path';
import type { Logger } from '../shared/log';
import { native, C, POLL_READABLE, type Poller } from '../shared/native';
import { errorErrno, errorInfo, isResourceErrno } from '../shared/errors';
import { LogRateLimiter } from '../shared/rate_limit';
import { KeeperProtocolError, parseAssignments, parseFdNames } from '../shared/sd_notify_format';
import { MAX_MESSAGE_SIZE, SCM_MAX_FD, encodeFromKeeper, parseToKeeper, type FromKeeper, type ToKeeper } from '../shared/keeper_protocol';

/** What a keeper.sock peer may do (see the header). */
export type PeerRole = 'worker' | 'observer';

export interface KeeperPeer {
  readonly fd: number;
  readonly pid: number;
  readonly role: PeerRole;
  /** When the connection was made (CLOCK_MONOTONIC ns): a standby connected after an upgrade
   * began was started from the installed files. */
  readonly connectedNs: bigint;
  /** An FDFETCH in progress: the names to send, the next index, and the batches per request
   * (null: one, an older worker's FDFETCH). */
  fetch: { names: string[]; next: number; window: number | null } | null;
  /** FDSTOREs refused since the peer's last X_SYNC (their fds were cut off: out of fds), or
   * 'all' when a message was cut off so badly that its names are unknown. */
  refused: string[] | 'all';
}

interface Connection extends KeeperPeer {
  poller: Poller;
  badMessages: LogRateLimiter;
  /** Told the sender's real pid from the kernel's credentials on its first message (see adopt). */
  learnPid: ((pid: number) => void) | null;
}

export interface KeeperSocketHandler {
  /** One parsed message; `fds` (only on messages that carry them) pass to the handler. */
  onMessage(peer: KeeperPeer, msg: ToKeeper, fds: number[]): void;
  onClose(peer: KeeperPeer): void;
}

const RECV_BUF = Buffer.alloc(MAX_MESSAGE_SIZE);

/** While accept() fails for want of fds or memory, the listening socket is not polled (the
 * pending connection would wake us at once, forever): retried after this long, doubling. */
const ACCEPT_RETRY_MIN_MS = 20;
const ACCEPT_RETRY_MAX_MS = 1_000;

export class KeeperSocket {
  private readonly peers = new Map<number, Connection>();
  private readonly listenFd: number;
  private readonly listenPoller: Poller;
  private readonly acceptErrors = new LogRateLimiter();
  /** Refusals of observers that tried a worker's message (one limiter: many connections must
   * not multiply the log lines). */
  private readonly refusals = new LogRateLimiter();
  private readonly ownUid = process.getuid?.() ?? 0;
  /** An fd held in reserve: at EMFILE it is closed so that one more connection (a successor
   * fetching the fd set, `status`) can still be accepted. */
  private reserveFd = -1;
  private acceptRetry: { timer: NodeJS.Timeout; delayMs: number } | null = null;
  private closed = false;

  /** Listens on `path` (a stale socket there is replaced; mode 0600), or serves `listenFd`, the
   * socket already listening there (a re-exec'd keeper's, keeper/reexec.ts). `classify`
   * decides the role of a process that connects there, by its SO_PEERCRED pid. */
  constructor(path: string, private readonly handler: KeeperSocketHandler, private readonly log: Logger,
    private readonly classify: (pid: number) => PeerRole, listenFd: number | null = null) {
    if (listenFd !== null) {
      this.listenFd = listenFd;
    } else {
      // Bound and listening under a temporary name, 0600, then renamed into place: a client that
      // sees keeper.sock can connect at once (between bind and listen it would get ECONNREFUSED;
      // a test did), and never while its mode is still the umask's. The name is shorter than
      // keeper.sock's, so it fits wherever keeper.sock does.
      const staging = pathJoin(dirname(path), '.ks-new');
      removeStaleSocket(staging);
      removeStaleSocket(path);
      this.listenFd = native.unixListen(staging, 'seqpacket', 16);
      fs.chmodSync(staging, 0o600);
      fs.renameSync(staging, path);
    }
    this.listenPoller = new native.Poller(this.listenFd, () => this.acceptAll());
    this.listenPoller.start(POLL_READABLE);
    this.refillReserve();
  }

  /** The listening socket and every open connection: what a re-exec hands on. */
  handoff(): { listenFd: number; peers: KeeperPeer[] } {
    return { listenFd: this.listenFd, peers: [...this.peers.values()] };
  }

  /** Adopts an already connected socket: a spawned worker's socketpair end (tests drive the
   * keeper over one too). `learnPid`: called, before that message is handled, with the pid the
   * kernel gives the sender of the first message (SO_PASSCRED): the worker's own pid when the
   * spawned process is only its launcher (unshare --fork, a pid namespace). */
  adopt(fd: number, pid: number, role: PeerRole, learnPid: ((pid: number) => void) | null = null): KeeperPeer {
    const c: Connection = { fd, pid, role, connectedNs: process.hrtime.bigint(), fetch: null, refused: [], badMessages: new LogRateLimiter(), poller: null as unknown as Poller, learnPid };
    try {
      if (learnPid !== null) native.setPassCred(fd, true);
      c.poller = new native.Poller(fd, () => this.read(c));
      c.poller.start(POLL_READABLE);
    } catch (e) {
      native.close(fd);
      throw e;
    }
    this.peers.set(fd, c);
    return c;
  }

  private refillReserve(): void {
    if (this.reserveFd >= 0) return;
    try {
      this.reserveFd = native.openat(C.AT_FDCWD!, '/dev/null', C.O_RDONLY! | C.O_CLOEXEC!, 0);
    } catch {
      // Still short of fds: the next successful accept tries again.
    }
  }

  private acceptAll(): void {
    for (;;) {
      let fd: number;
      try {
        fd = native.accept(this.listenFd);
      } catch (e) {
        if (isResourceErrno(errorErrno(e)) && this.reserveFd >= 0) {
          // Give up the reserve so this connection gets through.
          native.close(this.reserveFd);
          this.reserveFd = -1;
          continue;
        }
        const dropped = this.acceptErrors.admit();
        if (dropped !== null) this.log.error({ err: errorInfo(e), dropped }, 'keeper.sock accept failed; retrying');
        this.pauseAccepting();
        return;
      }
      if (fd < 0) break;
      try {
        const cred = native.peerCred(fd);
        if (cred.uid !== this.ownUid) {
          this.log.warn({ peerUid: cred.uid, peerPid: cred.pid }, 'keeper.sock: refusing a peer with another uid');
          native.close(fd);
          continue;
        }
        this.adopt(fd, cred.pid, this.classify(cred.pid));
      } catch (e) {
        const dropped = this.acceptErrors.admit();
        if (dropped !== null) this.log.error({ err: errorInfo(e), dropped }, 'keeper.sock: cannot serve a new connection');
      }
    }
    this.acceptRetry = null;
    this.refillReserve();
  }

  /** Stops polling the listening socket and tries accept() again later (backoff). */
  private pauseAccepting(): void {
    if (this.closed) return;
    this.listenPoller.stop();
    const delayMs = Math.min(ACCEPT_RETRY_MAX_MS, this.acceptRetry === null ? ACCEPT_RETRY_MIN_MS : this.acceptRetry.delayMs * 2);
    const timer = setTimeout(() => {
      if (this.closed) return;
      this.acceptRetry = { timer, delayMs };
      this.listenPoller.start(POLL_READABLE);
      this.acceptAll();
    }, delayMs);
    timer.unref();
    this.acceptRetry = { timer, delayMs };
  }

  isOpen(peer: KeeperPeer): boolean {
    return this.peers.get(peer.fd) === peer;
  }

  /** Sends one message; false (and the peer is closed) if it could not be sent whole. */
  send(peer: KeeperPeer, msg: FromKeeper, fds: number[] = []): boolean {
    const data = encodeFromKeeper(msg);
    try {
      if (native.sendMsg(peer.fd, data, fds) === data.length) return true;
      this.log.error({ peerPid: peer.pid, type: msg.type }, 'keeper.sock: socket buffer full; closing the connection');
    } catch (e) {
      this.log.error({ peerPid: peer.pid, type: msg.type, err: errorInfo(e) }, 'keeper.sock send failed; closing the connection');
    }
    this.close(peer);
    return false;
  }

  /** Takes every message `peer` has queued now (a dead worker's last stores, before a
   * successor fetches the fd set). */
  drain(peer: KeeperPeer): void {
    const c = this.peers.get(peer.fd);
    if (c === peer) this.read(c);
  }

  /** Drains the peers whose process is gone (except `except`). */
  drainDead(except: KeeperPeer): void {
    for (const c of [...this.peers.values()]) {
      if (c === except) continue;
      try {
        process.kill(c.pid, 0);
      } catch {
        this.read(c);
      }
    }
  }

  /** Drains every peer of process `pid`. */
  drainPid(pid: number): void {
    for (const c of [...this.peers.values()]) if (c.pid === pid) this.read(c);
  }

  private read(c: Connection): void {
    for (;;) {
      if (!this.isOpen(c)) return;
      let r;
      try {
        r = native.recvMsg(c.fd, RECV_BUF, SCM_MAX_FD);
      } catch (e) {
        this.log.warn({ err: errorInfo(e), peerPid: c.pid }, 'keeper.sock receive failed');
        this.close(c);
        return;
      }
      if (r === null) return;
      if (r.bytes === 0 && r.fds.length === 0) {
        this.close(c);
        return;
      }
      if (c.learnPid !== null && r.credPid !== null) {
        const learn = c.learnPid;
        c.learnPid = null;
        // Once is enough: later messages need not carry credentials.
        try { native.setPassCred(c.fd, false); } catch { /* they then carry them, unread */ }
        learn(r.credPid);
      }
      let msg: ToKeeper;
      try {
        if (r.truncated) {
          this.noteRefusedStore(c, RECV_BUF.subarray(0, r.bytes));
          throw new KeeperProtocolError('message or fds truncated (out of fds?): refused');
        }
        msg = parseToKeeper(RECV_BUF.subarray(0, r.bytes), r.fds.length);
      } catch (e) {
        for (const fd of r.fds) native.close(fd);
        this.badMessage(c, e);
        continue;
      }
      // Observers (the CLI) may ask for the status and for a planned upgrade: both only start
      // what the keeper would do anyway, from files of its own installation.
      if (c.role === 'observer' && msg.type !== 'statusQuery' && msg.type !== 'upgrade') {
        for (const fd of r.fds) native.close(fd);
        this.refuseObserver(c, msg.type);
        return;
      }
      try {
        this.handler.onMessage(c, msg, r.fds);
      } catch (e) {
        this.badMessage(c, e);
      }
    }
  }

  /** A message cut off by the kernel (MSG_CTRUNC: we could not take its fds; MSG_TRUNC: too
   * long): if it stored fds, the worker is told at its next X_SYNC. */
  private noteRefusedStore(c: Connection, data: Buffer): void {
    if (c.refused === 'all') return;
    let names: string[] | null = null;
    try {
      const m = parseAssignments(data);
      if (!m.has('FDSTORE')) return;
      names = parseFdNames(m.get('FDNAME'), -1);
    } catch {
      names = null;
    }
    if (names === null) c.refused = 'all';
    else c.refused.push(...names);
  }

  /** A peer that is not our worker sent a worker's message: refused, logged, disconnected. */
  private refuseObserver(c: Connection, type: ToKeeper['type']): void {
    const dropped = this.refusals.admit();
    if (dropped !== null) {
      this.log.error({ peerPid: c.pid, type, dropped }, 'keeper.sock: refused a message from a process that is not our worker; disconnecting it');
    }
    this.close(c);
  }

  private badMessage(c: Connection, e: unknown): void {
    const dropped = c.badMessages.admit();
    if (dropped !== null) this.log.error({ err: errorInfo(e), peerPid: c.pid, dropped }, 'bad keeper.sock message');
  }

  close(peer: KeeperPeer): void {
    const c = this.peers.get(peer.fd);
    if (c !== peer) return;
    this.peers.delete(c.fd);
    c.fetch = null;
    c.poller.close();
    native.close(c.fd);
    this.handler.onClose(c);
  }

  /** Closes every connection and the listening socket. */
  closeAll(): void {
    this.closed = true;
    if (this.acceptRetry !== null) clearTimeout(this.acceptRetry.timer);
    for (const c of [...this.peers.values()]) this.close(c);
    this.listenPoller.close();
    native.close(this.listenFd);
    if (this.reserveFd >= 0) native.close(this.reserveFd);
    this.reserveFd = -1;
  }
}

export function removeStaleSocket(p: string): void {
  const st = fs.lstatSync(p, { throwIfNoEntry: false });
  if (!st) return;
  if (!st.isSocket()) throw new Error(`${p} exists and is not a socket`);
  fs.unlinkSync(p);
}
