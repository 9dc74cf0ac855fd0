// Small statistics and formatting helpers for the benchmark.

/** The q-quantile by the nearest-rank method (q in (0, 1]): p99 of 100 samples is the 99th
 * smallest, not the maximum. */
export function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] ?? NaN;
}

/** The median (the mean of the two middle values for an even count). */
export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Rounds to `sig` significant digits (keeps integers >= 10^sig whole). */
export function sig(x: number, digits = 3): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const mag = Math.floor(Math.log10(Math.abs(x)));
  if (mag >= digits) return Math.round(x);
  const f = 10 ** (digits - 1 - mag);
  return Math.round(x * f) / f;
}

export function fmtNum(x: number | null): string {
  if (x === null || Number.isNaN(x)) return '-';
  const v = sig(x);
  return Math.abs(v) >= 1e5 ? v.toExponential(2) : String(v);
}
