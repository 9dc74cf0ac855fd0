// Log rate limiting: a peer that sends garbage in a loop (or a syscall that fails on every
// event) must not turn the log into the outage. A token bucket per source: `burst` lines at
// once, then `perSecond`; what was dropped is counted and reported with the next line let
// through.
export class LogRateLimiter {
  private tokens: number;
  private last = performance.now();
  private dropped = 0;

  constructor(private readonly perSecond = 10, private readonly burst = 20) {
    this.tokens = burst;
  }

  /** null: drop this line; else the number of lines dropped since the last one let through.
   * `now`: a monotonic clock in ms (a wall clock may jump back). */
  admit(now = performance.now()): number | null {
    this.tokens = Math.min(this.burst, this.tokens + (Math.max(0, now - this.last) / 1000) * this.perSecond);
    this.last = now;
    if (this.tokens < 1) {
      this.dropped++;
      return null;
    }
    this.tokens--;
    const d = this.dropped;
    this.dropped = 0;
    return d;
  }
}
