// The worker's side of keeper.sock: fetches the fd set at start, mirrors every registration
// in the FdRegistry into the keeper's store (FDSTORE/FDSTOREREMOVE), and sends sd_notify-style
// status. The socket is blocking: a store must be in the keeper's queue before the worker
// goes on, because the guest may observe its effect next.
import { native } from './native';
import {
  FdStoreProtocolError, MAX_FDS_PER_MESSAGE, MAX_MESSAGE_SIZE, formatAssignments, parseAssignments, parseFdNames,
  removeMessage, storeMessage,
} from './fdstore';
import type { FdRegistryListener } from './fd_registry';
import { trustedPeerUid } from './state_dir';

export class KeeperClient implements FdRegistryListener {
  private readonly buf = Buffer.alloc(MAX_MESSAGE_SIZE);
  /** Stores deferred while a batch is open (name → fd, in registration order). */
  private batch: Map<string, number> | null = null;
  /** Removals deferred until the journal no longer names them (flushRemovals). */
  private removals: string[] = [];

  private constructor(readonly fd: number) {}

  /** Connects and checks who listens there: only a keeper of our uid (or root) is trusted with
   * handing us fds and taking ours. */
  static connect(socketPath: string): KeeperClient {
    const fd = native.unixConnect(socketPath, 'seqpacket');
    try {
      const peer = native.peerCred(fd);
      if (!trustedPeerUid(peer.uid)) {
        throw new FdStoreProtocolError(`${socketPath} is served by uid ${peer.uid} (pid ${peer.pid}), not by our keeper`);
      }
      native.setNonBlocking(fd, false);
    } catch (e) {
      native.close(fd);
      throw e;
    }
    return new KeeperClient(fd);
  }

  /** The whole named fd set the keeper holds (the caller owns the returned fds), and the last
   * control reply sequence number the keeper forwarded. */
  fetchAll(): { fds: Map<string, number>; ctlSeq: number } {
    this.send(formatAssignments({ FDFETCH: 1 }), []);
    const out = new Map<string, number>();
    for (;;) {
      const r = native.recvMsg(this.fd, this.buf, MAX_FDS_PER_MESSAGE);
      if (r === null) continue;
      if (r.bytes === 0) throw new FdStoreProtocolError('keeper closed the connection during FDFETCH');
      if (r.truncated) {
        for (const fd of r.fds) native.close(fd);
        throw new FdStoreProtocolError('FDSET message truncated');
      }
      const m = parseAssignments(this.buf.subarray(0, r.bytes));
      if (m.get('FDSET') !== '1') {
        for (const fd of r.fds) native.close(fd);
        throw new FdStoreProtocolError('unexpected reply to FDFETCH');
      }
      const names = parseFdNames(m.get('FDNAME'), r.fds.length);
      names.forEach((n, i) => out.set(n, r.fds[i]!));
      if (m.get('MORE') !== '1') return { fds: out, ctlSeq: Number(m.get('CTLSEQ') ?? '0') || 0 };
      this.send(formatAssignments({ FDFETCHNEXT: 1 }), []);
    }
  }

  onRegister(name: string, fd: number): void {
    if (this.batch !== null) {
      this.batch.set(name, fd);
      return;
    }
    this.send(storeMessage([name]), [fd]);
  }

  onUnregister(name: string): void {
    if (this.batch !== null) {
      // Registered and dropped within one batch: the keeper never needs to see it.
      if (this.batch.delete(name)) return;
      // The journal may still name this fd until the open batch's outcomes are committed:
      // the keeper keeps its copy until then (a spare fd there is closed on resume).
      this.removals.push(name);
      return;
    }
    this.send(removeMessage([name]), []);
  }

  onUnregisterMany(names: string[]): void {
    if (this.batch !== null) {
      for (const n of names) this.onUnregister(n);
      return;
    }
    for (let i = 0; i < names.length; i += MAX_FDS_PER_MESSAGE) this.send(removeMessage(names.slice(i, i + MAX_FDS_PER_MESSAGE)), []);
  }

  /** Groups stores (e.g. a readdirplus page of inodes, or every request of one event-loop
   * turn) into few messages; flushed by endBatch, which must run before anything that names
   * them becomes durable or visible. Removals wait for flushRemovals(). */
  beginBatch(): void {
    if (this.batch === null) this.batch = new Map();
  }

  endBatch(): void {
    const b = this.batch;
    this.batch = null;
    if (b === null || b.size === 0) return;
    const entries = [...b];
    for (let i = 0; i < entries.length; i += MAX_FDS_PER_MESSAGE) {
      const part = entries.slice(i, i + MAX_FDS_PER_MESSAGE);
      this.send(storeMessage(part.map(([n]) => n)), part.map(([, fd]) => fd));
    }
  }

  /** Sends the deferred removals (after the journal recorded the closes). */
  flushRemovals(): void {
    const names = this.removals;
    if (names.length === 0) return;
    this.removals = [];
    for (let i = 0; i < names.length; i += MAX_FDS_PER_MESSAGE) this.send(removeMessage(names.slice(i, i + MAX_FDS_PER_MESSAGE)), []);
  }

  /** Stores fds under names directly (not through the registry: the same fd numbers may be
   * registered under other names by their handler). */
  storeFds(names: string[], fds: number[]): void {
    this.send(storeMessage(names), fds);
  }

  removeFds(names: string[]): void {
    this.send(removeMessage(names), []);
  }

  /** The keeper writes control reply `seq` to the frontend once, however often it is asked:
   * a worker that died after asking must not make QEMU read a reply twice. */
  sendControlReply(seq: number, data: Buffer, fds: number[]): void {
    this.send(formatAssignments({ X_CTLREPLY: seq, X_DATA: data.toString('hex') }), fds);
  }

  notify(fields: Record<string, string | number>): void {
    this.send(formatAssignments(fields), []);
  }

  /** Warm standby: announce ourselves, then block until the keeper hands over the session
   * (it does so only after it has reaped the previous worker). */
  waitForTakeover(): void {
    this.send(formatAssignments({ X_STANDBY: 1 }), []);
    for (;;) {
      const r = native.recvMsg(this.fd, this.buf, 0);
      if (r === null) continue;
      if (r.bytes === 0) throw new FdStoreProtocolError('keeper closed the connection while we were on standby');
      if (parseAssignments(this.buf.subarray(0, r.bytes)).get('X_TAKEOVER') === '1') return;
    }
  }

  /** Asks the keeper for its status JSON (used by the status CLI). */
  queryStatus(): unknown {
    this.send(formatAssignments({ X_STATUSQUERY: 1 }), []);
    for (;;) {
      const r = native.recvMsg(this.fd, this.buf, 0);
      if (r === null) continue;
      if (r.bytes === 0) throw new FdStoreProtocolError('keeper closed the connection');
      return JSON.parse(this.buf.subarray(0, r.bytes).toString('utf8'));
    }
  }

  private send(msg: Buffer, fds: number[]): void {
    const n = native.sendMsg(this.fd, msg, fds);
    if (n !== msg.length) throw new FdStoreProtocolError(`short send to keeper (${n} of ${msg.length})`);
  }

  close(): void {
    native.close(this.fd);
  }
}
