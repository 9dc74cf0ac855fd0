// The client of the real-systemd test: the test vhost-user frontend and FUSE client, keeping
// one session open through every worker and keeper restart, and issuing requests in a loop
// (read through an open handle, getattr, an idempotent pwrite of a numbered record through a
// second handle). Any error reply, protocol error or timeout is recorded; the test requires
// none.
import * as path from 'node:path';
import { VhostUserFrontend } from '../../frontend/vhost_user';
import { FuseClient } from '../../frontend/fuse_client';
import * as F from '../../frontend/fuse_proto';

export const HELLO = 'hello from the host, served by systemd\n';
export const RECORD_SIZE = 16;

export function record(i: number): string {
  return `rec ${String(i).padStart(11, '0')}\n`; // 16 bytes
}

export interface ClientError { at: string; iteration: number; op: string; message: string }

export class LoopClient {
  fe!: VhostUserFrontend;
  fuse!: FuseClient;
  hello!: { nodeid: bigint; fh: bigint };
  log!: { nodeid: bigint; fh: bigint };
  /** Completed loop iterations (each: read + getattr + pwrite). */
  iterations = 0;
  readonly errors: ClientError[] = [];
  /** The longest time between two completed iterations since resetGap() (ms). */
  maxGapMs = 0;
  private lastDone = 0;
  private running = false;
  private loopDone: Promise<void> = Promise.resolve();

  constructor(readonly socketPath: string, readonly requestTimeoutMs = 30_000) {}

  async open(): Promise<void> {
    this.fe = await VhostUserFrontend.connect(this.socketPath, { timeoutMs: 20_000 });
    await this.fe.negotiate({});
    this.fuse = new FuseClient(this.fe, { timeoutMs: this.requestTimeoutMs });
    await this.fuse.init();
    const h = await this.fuse.lookup(F.FUSE_ROOT_ID, 'hello');
    this.hello = { nodeid: h.nodeid, fh: (await this.fuse.open(h.nodeid, F.O.RDONLY)).fh };
    const l = await this.fuse.lookup(F.FUSE_ROOT_ID, 'log');
    this.log = { nodeid: l.nodeid, fh: (await this.fuse.open(l.nodeid, F.O.WRONLY)).fh };
  }

  /** Times one getattr of the handle opened first, submitted now: after a kill, a request only
   * a successor can answer (ms from `since`, performance.now(), to its reply). */
  async probe(since: number): Promise<number> {
    const a = await this.fuse.getattr(this.hello.nodeid, this.hello.fh);
    const ms = performance.now() - since;
    if (Number(a.attr.size) !== Buffer.byteLength(HELLO)) throw new Error(`getattr size ${a.attr.size}`);
    return ms;
  }

  /** One read through the handle opened before any restart. */
  async readHello(): Promise<string> {
    return (await this.fuse.read(this.hello.nodeid, this.hello.fh, 0, 4096)).toString();
  }

  resetGap(): void {
    this.maxGapMs = 0;
  }

  start(): void {
    this.running = true;
    this.loopDone = this.loop();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loopDone;
  }

  /** Resolves once `n` more iterations have completed (the session is being served). */
  async progress(n: number, timeoutMs: number, what: string): Promise<void> {
    const target = this.iterations + n;
    const deadline = Date.now() + timeoutMs;
    while (this.iterations < target) {
      if (this.errors.length > 0) throw new Error(`the client saw errors: ${JSON.stringify(this.errors)}`);
      if (!this.running) throw new Error('the client loop stopped');
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${this.iterations}/${target} iterations)`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  private async step(i: number, op: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      this.errors.push({ at: new Date().toISOString(), iteration: i, op, message: (e as Error).message });
    }
  }

  private async loop(): Promise<void> {
    for (let i = 0; this.running; i++) {
      await this.step(i, 'read', async () => {
        const s = await this.readHello();
        if (s !== HELLO) throw new Error(`read returned ${JSON.stringify(s)}`);
      });
      await this.step(i, 'getattr', async () => {
        const a = await this.fuse.getattr(this.hello.nodeid, this.hello.fh);
        if (Number(a.attr.size) !== Buffer.byteLength(HELLO)) throw new Error(`getattr size ${a.attr.size}`);
      });
      await this.step(i, 'write', async () => {
        const n = await this.fuse.write(this.log.nodeid, this.log.fh, i * RECORD_SIZE, Buffer.from(record(i)));
        if (n !== RECORD_SIZE) throw new Error(`write wrote ${n} bytes`);
      });
      if (this.errors.length > 0) { this.running = false; return; }
      this.iterations = i + 1;
      const now = performance.now();
      if (this.lastDone > 0) this.maxGapMs = Math.max(this.maxGapMs, now - this.lastDone);
      this.lastDone = now;
      // Pace the loop a little: the point is requests in flight around each kill, not load.
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  close(): void {
    this.fe?.close();
  }

  static hostPath(dir: string, name: string): string {
    return path.join(dir, 'shared', name);
  }
}
