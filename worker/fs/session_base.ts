// What the session (session.ts) and its lazily decoded snapshot rows (snapshot_inodes.ts) both
// need: the session's error types and the file handle type. Re-exported by session.ts.
import { StateError } from '../../shared/errors';

/** A session mutation or snapshot that contradicts the session (replayed state that does not fit). */
export class FsSessionError extends StateError {}
/** A snapshot of a version this build does not know (a newer writer's): never guessed at. */
export class SnapshotVersionError extends FsSessionError {}

/** A file handle (name_to_handle_at) that names an inode without holding an fd: the inode is
 * opened again with open_by_handle_at (inode_fds.ts). The handle carries the inode's
 * generation, so it never names a later inode that reused the number. */
export interface InodeHandle {
  readonly mountId: number;
  readonly handleType: number;
  /** 1..MAX_HANDLE_BYTES bytes. */
  readonly handle: Buffer;
}
/** MAX_HANDLE_SZ of Linux. */
export const MAX_HANDLE_BYTES = 128;
