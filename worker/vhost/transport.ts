// Transport layer: vhost-user messages framed on a non-blocking SOCK_STREAM UNIX socket, with
// SCM_RIGHTS fds. The header is read on its own (like libvhost-user) so that fds attached to a
// message are never confused with the next message's.
import { native, Poller, POLL_READABLE, POLL_WRITABLE } from '../../shared/native';
import { HEADER_SIZE, VHOST_USER_MAX_FDS, MAX_PAYLOAD_SIZE, parseHeader, type MessageHeader } from './messages';

export interface IncomingMessage {
  header: MessageHeader;
  payload: Buffer;
  /** The receiver owns these fds and must close or keep each one. */
  fds: number[];
}

export interface TransportHandlers {
  onMessage(msg: IncomingMessage): void;
  /** The peer closed the connection or broke the framing; the transport is closed already. */
  onClose(reason: string): void;
}

export class MessageTransport {
  private readonly poller: Poller;
  private readonly headerBuf = Buffer.alloc(HEADER_SIZE);
  private headerFill = 0;
  private header: MessageHeader | null = null;
  private payload = Buffer.alloc(0);
  private payloadFill = 0;
  private fds: number[] = [];
  private outQueue: Array<{ data: Buffer; fds: number[] }> = [];
  private closed = false;
  private paused = false;

  constructor(readonly fd: number, private readonly handlers: TransportHandlers) {
    this.poller = new native.Poller(fd, (status, events) => this.onReady(status, events));
    this.poller.start(POLL_READABLE);
  }

  /** Stops reading without closing (while a message is being handled asynchronously). */
  pause(): void {
    this.paused = true;
    this.updatePoll();
  }

  /** No message is half read (a planned handover stops reading only between messages: the
   * successor reads the next one from its first byte). */
  get atBoundary(): boolean {
    return this.header === null && this.headerFill === 0;
  }

  resume(): void {
    this.paused = false;
    this.updatePoll();
    // Data may already be buffered in the kernel; the poller fires again if so.
  }

  send(data: Buffer, fds: number[] = []): void {
    if (this.closed) return;
    this.outQueue.push({ data, fds });
    this.flush();
  }

  /** Stops polling and forgets the fd; the owner (FdRegistry) closes it. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller.close();
    for (const fd of this.fds) native.close(fd);
    this.fds = [];
  }

  private updatePoll(): void {
    if (this.closed) return;
    const events = (this.paused ? 0 : POLL_READABLE) | (this.outQueue.length > 0 ? POLL_WRITABLE : 0);
    if (events === 0) this.poller.stop();
    else this.poller.start(events);
  }

  private fail(reason: string): void {
    if (this.closed) return;
    this.close();
    this.handlers.onClose(reason);
  }

  private flush(): void {
    while (this.outQueue.length > 0) {
      const item = this.outQueue[0]!;
      let n: number;
      try {
        n = native.sendMsg(this.fd, item.data, item.fds);
      } catch (e) {
        this.fail(`send failed: ${(e as Error).message}`);
        return;
      }
      if (n < 0) break;
      if (n < item.data.length) {
        // The fds went with the first byte; only the rest of the bytes remain.
        this.outQueue[0] = { data: item.data.subarray(n), fds: [] };
        break;
      }
      this.outQueue.shift();
    }
    this.updatePoll();
  }

  private onReady(status: number, events: number): void {
    if (this.closed) return;
    if (status < 0) {
      this.fail(`poll error ${status}`);
      return;
    }
    if (events & POLL_WRITABLE) this.flush();
    if ((events & POLL_READABLE) && !this.paused) this.readAvailable();
  }

  private readAvailable(): void {
    while (!this.closed && !this.paused) {
      let r;
      try {
        if (this.header === null) {
          r = native.recvMsg(this.fd, this.headerBuf.subarray(this.headerFill), VHOST_USER_MAX_FDS);
        } else {
          r = native.recvMsg(this.fd, this.payload.subarray(this.payloadFill), VHOST_USER_MAX_FDS);
        }
      } catch (e) {
        this.fail(`receive failed: ${(e as Error).message}`);
        return;
      }
      if (r === null) return;
      for (const fd of r.fds) this.fds.push(fd);
      if (this.fds.length > VHOST_USER_MAX_FDS) {
        this.fail(`more than ${VHOST_USER_MAX_FDS} fds attached to one message`);
        return;
      }
      if (r.bytes === 0) {
        this.fail('frontend closed the connection');
        return;
      }
      if (this.header === null) {
        this.headerFill += r.bytes;
        if (this.headerFill < HEADER_SIZE) continue;
        const h = parseHeader(this.headerBuf);
        if (h.size > MAX_PAYLOAD_SIZE) {
          this.fail(`message ${h.request} announces a ${h.size}-byte payload (limit ${MAX_PAYLOAD_SIZE}); framing lost`);
          return;
        }
        this.header = h;
        this.payload = Buffer.alloc(h.size);
        this.payloadFill = 0;
      } else {
        this.payloadFill += r.bytes;
      }
      if (this.header !== null && this.payloadFill === this.header.size) {
        const msg: IncomingMessage = { header: this.header, payload: this.payload, fds: this.fds };
        this.header = null;
        this.headerFill = 0;
        this.fds = [];
        this.handlers.onMessage(msg);
      }
    }
  }
}
