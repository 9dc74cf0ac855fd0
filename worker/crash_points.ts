// Named crash points for tests: with VFSK_CRASH_POINT=<name> in the environment, the worker
// SIGKILLs itself the first time (or the VFSK_CRASH_COUNT-th time) it reaches that point.
// Production pays one comparison with null per point.
const armed: string | null = process.env.VFSK_CRASH_POINT ?? null;
let remaining = Number(process.env.VFSK_CRASH_COUNT ?? '1');

export const CRASH_POINTS = [
  'after-accept',
  'ctl-after-begin', 'ctl-after-commit', 'ctl-after-reply',
  'op-after-intent', 'op-after-syscall', 'op-after-outcome', 'op-before-publish', 'op-after-publish',
] as const;
export type CrashPointName = (typeof CRASH_POINTS)[number];

export function crashPoint(name: CrashPointName): void {
  if (armed === null || armed !== name) return;
  if (--remaining > 0) return;
  // SIGKILL, not abort(): no handlers, no core, nothing flushed — the worst case.
  process.kill(process.pid, 'SIGKILL');
}
