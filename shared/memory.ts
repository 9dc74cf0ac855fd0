// Private memory of our long-lived processes (docs/ARCHITECTURE.md, "Memory"). V8 and glibc keep
// what a burst of work made them grow (young generation at its largest, old-space pages of
// collected garbage, freed malloc chunks) until the next burst; for a backend that idles most of
// its life that is the steady state, three times over (keeper, worker, standby). At a quiet
// moment each process gives it back: V8's low-memory GC plus malloc_trim (native.reduceMemory).
import * as fs from 'node:fs';
import { native } from './native';
import { errorInfo } from './errors';
import type { Logger } from './log';

/** How long a process must have seen no activity before it gives memory back. */
export const IDLE_REDUCE_MS = 2_000;

/** RssAnon of this process in kB, for the debug log (null where /proc is not reachable: a
 * confined worker's root is the shared directory). */
function rssAnonKb(): number | null {
  try {
    const status = fs.readFileSync('/proc/self/status', 'utf8');
    const m = /^RssAnon:\s+(\d+) kB/m.exec(status);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Gives memory back now (a synchronous full GC: 10-40 ms for a worker, by the machine's load);
 * logged at debug level. */
export function reduceMemory(log: Logger, why: string): void {
  const t0 = process.hrtime.bigint();
  const debug = log.isLevelEnabled('debug');
  const before = debug ? rssAnonKb() : null;
  try {
    native.reduceMemory();
  } catch (e) {
    log.debug({ err: errorInfo(e) }, 'cannot reduce memory');
    return;
  }
  if (debug) {
    log.debug({ why, ms: Math.round(Number(process.hrtime.bigint() - t0) / 1e4) / 100, rssAnonKbBefore: before, rssAnonKb: rssAnonKb() }, 'gave memory back');
  }
}

/**
 * Calls reduceMemory once after each period of activity, when a whole IDLE_REDUCE_MS interval
 * went by without any: never during a burst (a full GC would add its pause to requests), and
 * not again and again while idle. `activity` is any number that changes when there was work
 * (a counter of messages or of requests popped).
 */
export class IdleMemoryReducer {
  private last: number;
  /** Activity since the last reduction (true at the start: start-up garbage). */
  private dirty = true;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly activity: () => number, private readonly log: Logger, private readonly intervalMs = IDLE_REDUCE_MS) {
    this.last = activity();
  }

  start(): void {
    if (this.timer !== null) return;
    this.timer = setInterval(() => this.tick(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** One check (the timer's; tests call it directly). True if it reduced now. */
  tick(): boolean {
    const now = this.activity();
    if (now !== this.last) {
      this.last = now;
      this.dirty = true;
      return false;
    }
    if (!this.dirty) return false;
    this.dirty = false;
    reduceMemory(this.log, 'idle');
    return true;
  }
}
