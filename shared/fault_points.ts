// Named fault points for tests: a syscall failure injected where a successor resumes, to show
// that a transient shortage (EMFILE, ENOMEM, EAGAIN) delays a resume and never ends the
// service. With VFSK_FAULT_POINT=<name> and VFSK_FAULT_FILE=<file> in the environment, reaching
// that point while <file> holds a count above 0 decrements it and throws the error the syscall
// would (code/errno of VFSK_FAULT_ERRNO, default EMFILE). The count lives in a file so that it
// spans worker processes, and a test arms it only when it wants (no file: no fault).
// Production pays one comparison with null per point.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { constants as osConstants } from 'node:os';
import { native, C } from './native';
import { at } from './pinned_dirs';
import { pinDirIfPossible } from './crash_points';

const armed: string | null = process.env.VFSK_FAULT_POINT ?? null;
const counterFile: string | null = process.env.VFSK_FAULT_FILE ?? null;
const errnoName: string = process.env.VFSK_FAULT_ERRNO ?? 'EMFILE';
// Reachable after the worker's root moved into the shared directory (worker/sandbox.ts).
if (armed !== null && counterFile !== null) pinDirIfPossible(path.dirname(counterFile));

/** In a successor's resume (test/crash/resume_faults.test.ts). */
export const RESUME_FAULT_POINTS = ['resume-fetch', 'resume-journal-open', 'resume-mmap', 'resume-vrings'] as const;
/** Every point: the resume's, and a keeper re-exec's execve (keeper/reexec.ts). */
export const FAULT_POINTS = [...RESUME_FAULT_POINTS, 'keeper-execve'] as const;
export type FaultPointName = (typeof FAULT_POINTS)[number];

export function faultPoint(name: FaultPointName): void {
  if (armed === null || armed !== name || counterFile === null) return;
  const { dirFd, name: file } = at(counterFile);
  let fd: number;
  try {
    fd = native.openat(dirFd, file, C.O_RDWR! | C.O_CLOEXEC!, 0);
  } catch {
    return;
  }
  try {
    const left = Number(fs.readFileSync(fd, 'utf8').trim());
    if (!(left > 0)) return;
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${left - 1}\n`, 0);
  } finally {
    fs.closeSync(fd);
  }
  const errno = (osConstants.errno as Record<string, number>)[errnoName] ?? osConstants.errno.EIO;
  throw Object.assign(new Error(`${errnoName}: injected fault at ${name}`), { code: errnoName, errno, syscall: name });
}
