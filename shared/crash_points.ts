// Named crash points for tests: with VFSK_CRASH_POINT=<name> in the environment, the worker
// SIGKILLs itself when it reaches that point (optionally only for the FUSE opcode in
// VFSK_CRASH_OPCODE). With VFSK_CRASH_MARKER=<file>, the crash fires once across all worker
// processes: the marker file is written first and disarms every later worker.
// Production pays one comparison with null per point.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native, C } from './native';
import { at, existsAt, pinDir } from './pinned_dirs';

const armed: string | null = process.env.VFSK_CRASH_POINT ?? null;
const opcodeFilter: number | null = process.env.VFSK_CRASH_OPCODE ? Number(process.env.VFSK_CRASH_OPCODE) : null;
const marker: string | null = process.env.VFSK_CRASH_MARKER ?? null;
// Reachable after the worker's root moved into the shared directory (worker/sandbox.ts).
if (armed !== null && marker !== null) pinDirIfPossible(path.dirname(marker));

/** pinDir, or nothing (the path is then used as it is). */
export function pinDirIfPossible(dir: string): void {
  try {
    pinDir(dir);
  } catch {
    // Not there yet: the marker is looked up by path.
  }
}

export const CRASH_POINTS = [
  'after-accept', 'resume-after-ready', 'resubmit-before-read',
  'ctl-after-begin', 'ctl-after-commit', 'ctl-after-reply',
  'op-after-intent', 'op-after-syscall', 'op-after-fdstore', 'op-after-outcome', 'op-before-publish', 'op-after-publish',
  // The addon's fast path (native/src/fast_fuse.cc) reaches op-after-pop, op-after-syscall,
  // op-before-publish and (UNLINK, RMDIR) op-after-intent for the requests it serves, and
  // op-after-fdstore, op-after-outcome and op-after-publish for those whose outcome it
  // journals itself (ring.cc JournalOwnBatch) (armNativeCrash).
  'op-after-pop',
  // A planned upgrade's drain (worker.ts, vhost/backend.ts): with requests in flight, and done
  // but not yet said.
  'drain-after-pause', 'drain-before-drained',
] as const;
export type CrashPointName = (typeof CRASH_POINTS)[number];

/** `where`: 'native' when the addon's fast path reached the point (written to the marker, so a
 * test can tell which path served the request). */
export function crashPoint(name: CrashPointName, opcode?: number, where?: 'native'): void {
  if (armed === null || armed !== name) return;
  if (opcodeFilter !== null && opcode !== opcodeFilter) return;
  if (marker !== null) {
    if (existsAt(marker)) return;
    const { dirFd, name: file } = at(marker);
    const fd = native.openat(dirFd, file, C.O_WRONLY! | C.O_CREAT! | C.O_EXCL! | C.O_CLOEXEC!, 0o644);
    fs.writeSync(fd, `${name} ${opcode ?? ''}${where !== undefined ? ` ${where}` : ''}\n`);
    fs.closeSync(fd);
  }
  // SIGKILL, not abort(): no handlers, nothing flushed — the worst case.
  dieNow();
}

/** The addon's fast path numbers its points (native/src/fast_path.h NativeCrashPoint). */
const NATIVE_POINTS: ReadonlyMap<CrashPointName, number> = new Map<CrashPointName, number>([
  ['op-after-pop', 1], ['op-after-syscall', 2], ['op-before-publish', 3], ['op-after-intent', 4], ['op-after-outcome', 5],
  ['op-after-publish', 6], ['op-after-fdstore', 7],
]);

/** Arms the armed crash point in the addon's fast path too, when it has that point: the
 * addon calls back into crashPoint() there. */
export function armNativeCrash(target: { armCrash(point: number, opcode: number, fn: (point: number, opcode: number) => void): void }): void {
  if (armed === null) return;
  const point = NATIVE_POINTS.get(armed as CrashPointName);
  if (point === undefined) return;
  const name = armed as CrashPointName;
  target.armCrash(point, opcodeFilter ?? -1, (_p, opcode) => crashPoint(name, opcode, 'native'));
}

/** Dies at once, as of SIGKILL: no handler runs, nothing is flushed. PID 1 of a pid namespace
 * (worker/sandbox.ts's launcher) ignores its own SIGKILL: it _exits instead, with the status a
 * SIGKILL would give a shell. */
export function dieNow(): never {
  if (process.pid === 1) native.exitNow(128 + 9);
  process.kill(process.pid, 'SIGKILL');
  // Not reached: SIGKILL is not delivered later.
  return native.exitNow(128 + 9);
}
