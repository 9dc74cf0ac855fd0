// A worker process that a re-exec'd keeper inherited (keeper/reexec.ts): still our child, but
// its ChildProcess object died with the old image and libuv does not know it. It is watched
// through a pidfd (readable once it has exited) and reaped with waitpid, and looks to the
// supervisor like a ChildProcess (WorkerProcess).
import { EventEmitter } from 'node:events';
import * as os from 'node:os';
import { native, POLL_READABLE, type Poller } from '../shared/native';

/** What the supervisor uses of a worker process: a ChildProcess, or an AdoptedProcess. */
export interface WorkerProcess {
  readonly pid?: number | undefined;
  readonly exitCode: number | null;
  readonly signalCode: NodeJS.Signals | null;
  kill(signal?: NodeJS.Signals): boolean;
  on(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  once(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
}

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(Object.entries(os.constants.signals).map(([name, n]) => [n, name as NodeJS.Signals]));

export class AdoptedProcess extends EventEmitter implements WorkerProcess {
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  private pidfd: number;
  private readonly poller: Poller;
  private exited = false;

  /** Throws if `pid` is not a process (ESRCH). */
  constructor(readonly pid: number) {
    super();
    this.pidfd = native.pidfdOpen(pid);
    try {
      this.poller = new native.Poller(this.pidfd, () => this.reap());
      this.poller.start(POLL_READABLE);
    } catch (e) {
      native.close(this.pidfd);
      throw e;
    }
    // It may have exited while no image watched it (during the execve): the pidfd is then
    // readable at once, but reap now anyway once listeners are attached.
    setImmediate(() => this.reap());
  }

  private reap(): void {
    if (this.exited) return;
    let r: { code: number | null; signal: number | null } | null;
    try {
      r = native.waitChild(this.pid);
    } catch {
      // ECHILD: reaped by someone else (cannot happen for our own child): report it gone.
      r = { code: null, signal: null };
    }
    if (r === null) return;
    this.exited = true;
    this.poller.close();
    native.close(this.pidfd);
    this.pidfd = -1;
    this.exitCode = r.code;
    this.signalCode = r.signal !== null ? SIGNAL_NAMES.get(r.signal) ?? null : null;
    this.emit('exit', this.exitCode, this.signalCode);
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): boolean {
    if (this.exited) return false;
    try {
      process.kill(this.pid, signal);
      return true;
    } catch {
      return false;
    }
  }
}
