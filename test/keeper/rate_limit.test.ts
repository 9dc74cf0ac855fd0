// LogRateLimiter: an error repeated a million times gives a bounded number of log lines, and
// the lines let through count exactly what was dropped.
import t from 'tap';
import { LogRateLimiter } from '../../shared/rate_limit';

t.test('a million identical errors in 10 s give at most burst + 10/s lines, with exact drop counts', async (t) => {
  const limiter = new LogRateLimiter(10, 20);
  const start = performance.now();
  let lines = 0, reportedDropped = 0, dropped = 0;
  for (let i = 0; i < 1_000_000; i++) {
    const d = limiter.admit(start + i / 100); // 100 per ms: 10 s in all
    if (d === null) dropped++;
    else { lines++; reportedDropped += d; }
  }
  t.ok(lines <= 20 + 10 * 10 + 1, `${lines} lines`);
  t.ok(lines >= 100, 'but errors keep being reported');
  t.equal(lines + dropped, 1_000_000);
  // The drops after the last line let through are reported with the next one.
  const next = limiter.admit(start + 60_000);
  t.equal(reportedDropped + (next ?? 0), dropped, 'every dropped line is counted in a later one');
});
