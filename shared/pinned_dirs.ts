// Directories the worker keeps open as fds so that it can still reach them by name after its
// root moved into the shared directory (worker/sandbox.ts): the state directory (the journal
// and its compaction's new file), /proc/self/fd (re-opening inodes), and test hooks' files.
// A path under a pinned directory resolves to (its fd, the rest); any other path to
// (AT_FDCWD, path), so code that names files by path works the same inside and outside the
// sandbox as long as it opens them through at().
import * as path from 'node:path';
import { native, C } from './native';

const pinned = new Map<string, number>();

/** Opens `dir` (O_PATH) and resolves later paths under it through that fd. Idempotent. */
export function pinDir(dir: string): void {
  const abs = path.resolve(dir);
  if (pinned.has(abs)) return;
  pinned.set(abs, native.openat(C.AT_FDCWD!, abs, C.O_PATH! | C.O_DIRECTORY! | C.O_CLOEXEC!, 0));
}

/** Resolves later paths under `dir` through `fd` (a directory fd the caller opened and hands
 * over; worker/sandbox.ts opens its pinned dirs on detached mounts). Replaces (and closes) an
 * earlier pin of `dir` (a test hook's, shared/crash_points.ts). */
export function pinDirFd(dir: string, fd: number): void {
  const abs = path.resolve(dir);
  const old = pinned.get(abs);
  pinned.set(abs, fd);
  if (old !== undefined) native.close(old);
}

/** Where to open `p`: the fd of its pinned parent directory and its name there, or (AT_FDCWD, p). */
export function at(p: string): { dirFd: number; name: string } {
  if (pinned.size === 0) return { dirFd: C.AT_FDCWD!, name: p };
  const dirFd = pinned.get(path.dirname(path.resolve(p)));
  return dirFd === undefined ? { dirFd: C.AT_FDCWD!, name: p } : { dirFd, name: path.basename(p) };
}

/** Whether `p` exists (lstat through at()). */
export function existsAt(p: string): boolean {
  const { dirFd, name } = at(p);
  try {
    native.fstatat(dirFd, name, C.AT_SYMLINK_NOFOLLOW!, Buffer.alloc(128));
    return true;
  } catch {
    return false;
  }
}
