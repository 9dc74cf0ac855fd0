// The worker's side of keeper.sock: fetches the fd set at start, mirrors every registration
// in the FdRegistry into the keeper's store (FDSTORE/FDSTOREREMOVE), and sends sd_notify-style
// status. The socket is blocking: a store must be in the keeper's queue before the worker
// goes on, because the guest may observe its effect next.
import { native } from './native';
import { KeeperProtocolError } from './sd_notify_format';
import {
  MAX_MESSAGE_SIZE, SCM_MAX_FD, encodeToKeeper, parseFromKeeper, type FromKeeper, type KeeperStatus, type ToKeeper,
} from './keeper_protocol';
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
        throw new KeeperProtocolError(`${socketPath} is served by uid ${peer.uid} (pid ${peer.pid}), not by our keeper`);
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
    this.send({ type: 'fetch' }, []);
    const out = new Map<string, number>();
    try {
      for (;;) {
        const { msg, fds } = this.receive(SCM_MAX_FD, 'during FDFETCH');
        if (msg.type !== 'fdSet') {
          for (const fd of fds) native.close(fd);
          throw new KeeperProtocolError(`unexpected ${msg.type} in reply to FDFETCH`);
        }
        msg.names.forEach((n, i) => {
          const prev = out.get(n);
          if (prev !== undefined) native.close(prev);
          out.set(n, fds[i]!);
        });
        if (!msg.more) return { fds: out, ctlSeq: msg.ctlSeq };
        this.send({ type: 'fetchNext' }, []);
      }
    } catch (e) {
      // A fetch that fails midway leaves nothing open: the caller owns only a complete set.
      for (const fd of out.values()) native.close(fd);
      throw e;
    }
  }

  /** The next message from the keeper; the caller owns its fds. */
  private receive(maxFds: number, when: string): { msg: FromKeeper; fds: number[] } {
    for (;;) {
      const r = native.recvMsg(this.fd, this.buf, maxFds);
      if (r === null) continue;
      if (r.bytes === 0 && r.fds.length === 0) throw new KeeperProtocolError(`keeper closed the connection ${when}`);
      try {
        if (r.truncated) throw new KeeperProtocolError(`message from the keeper truncated ${when}`);
        return { msg: parseFromKeeper(this.buf.subarray(0, r.bytes), r.fds.length), fds: r.fds };
      } catch (e) {
        for (const fd of r.fds) native.close(fd);
        throw e;
      }
    }
  }

  onRegister(name: string, fd: number): void {
    if (this.batch !== null) {
      this.batch.set(name, fd);
      return;
    }
    this.send({ type: 'store', names: [name] }, [fd]);
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
    this.send({ type: 'remove', names: [name] }, []);
  }

  onUnregisterMany(names: string[]): void {
    if (this.batch !== null) {
      for (const n of names) this.onUnregister(n);
      return;
    }
    this.sendRemovals(names);
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
    for (let i = 0; i < entries.length; i += SCM_MAX_FD) {
      const part = entries.slice(i, i + SCM_MAX_FD);
      this.send({ type: 'store', names: part.map(([n]) => n) }, part.map(([, fd]) => fd));
    }
  }

  /** Sends the deferred removals (after the journal recorded the closes). */
  flushRemovals(): void {
    const names = this.removals;
    if (names.length === 0) return;
    this.removals = [];
    this.sendRemovals(names);
  }

  /** Stores fds under names directly (not through the registry: the same fd numbers may be
   * registered under other names by their handler). */
  storeFds(names: string[], fds: number[]): void {
    this.send({ type: 'store', names }, fds);
  }

  removeFds(names: string[]): void {
    this.sendRemovals(names);
  }

  /** Removals in messages of at most SCM_MAX_FD names (a bound on the message size). */
  private sendRemovals(names: string[]): void {
    for (let i = 0; i < names.length; i += SCM_MAX_FD) this.send({ type: 'remove', names: names.slice(i, i + SCM_MAX_FD) }, []);
  }

  /** The keeper writes control reply `seq` to the frontend once, however often it is asked:
   * a worker that died after asking must not make QEMU read a reply twice. */
  sendControlReply(seq: number, data: Buffer, fds: number[]): void {
    this.send({ type: 'controlReply', seq, data }, fds);
  }

  /** A message without fds (status, progress, stats, an error). */
  notify(msg: Exclude<ToKeeper, { type: 'store' | 'controlReply' | 'fetch' | 'fetchNext' }>): void {
    this.send(msg, []);
  }

  /** Warm standby: announce ourselves, then block until the keeper hands over the session
   * (it does so only after it has reaped the previous worker). */
  waitForTakeover(): void {
    this.send({ type: 'standby' }, []);
    for (;;) {
      const { msg, fds } = this.receive(0, 'while we were on standby');
      for (const fd of fds) native.close(fd);
      if (msg.type === 'takeover') return;
      throw new KeeperProtocolError(`unexpected ${msg.type} while on standby`);
    }
  }

  /** Asks the keeper for its status (used by the status CLI). */
  queryStatus(): KeeperStatus {
    this.send({ type: 'statusQuery' }, []);
    const { msg, fds } = this.receive(0, 'before answering the status query');
    for (const fd of fds) native.close(fd);
    if (msg.type !== 'status') throw new KeeperProtocolError(`unexpected ${msg.type} in reply to the status query`);
    return msg.status;
  }

  private send(msg: ToKeeper, fds: number[]): void {
    const data = encodeToKeeper(msg);
    const n = native.sendMsg(this.fd, data, fds);
    if (n !== data.length) throw new KeeperProtocolError(`short send to keeper (${n} of ${data.length})`);
  }

  close(): void {
    native.close(this.fd);
  }
}
