// The names the guest gives for one directory entry. Each reaches the host as a single path
// component resolved beneath its parent's fd, so it must be exactly one.
//
// Decisions:
// - Create/remove/rename names must be a plain component: '.', '..', empty, '/' or NUL give
//   EINVAL (virtiofsd's is_safe_path_component); lookup gives ENOENT for an empty name and
//   EINVAL for '/' or NUL ('.' and '..' it resolves itself, see inodes.ts).
// - Length is the host filesystem's to refuse (ENAMETOOLONG from the syscall).
import { FsError } from './filesystem';
import * as K from './host_constants';

export function isDot(name: Buffer): boolean { return name.length === 1 && name[0] === 0x2e; }
export function isDotDot(name: Buffer): boolean { return name.length === 2 && name[0] === 0x2e && name[1] === 0x2e; }

/** A name must be one non-empty path component without '/' or NUL. */
export function checkComponent(name: Buffer, forLookup: boolean): void {
  if (!Buffer.isBuffer(name)) throw new FsError(K.EINVAL, 'name is not a Buffer');
  if (name.length === 0) throw new FsError(forLookup ? K.ENOENT : K.EINVAL, 'empty name');
  if (name.includes(0x2f) || name.includes(0)) throw new FsError(K.EINVAL, 'name contains / or NUL');
  if (!forLookup && (isDot(name) || isDotDot(name))) throw new FsError(K.EINVAL, `name ${name.toString()} not allowed`);
}
