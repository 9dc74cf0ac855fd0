// The session records an operation names, found with the errnos the guest gets for bad ids.
//
// Decisions:
// - Unknown nodeid or fh, or an fh that belongs to another nodeid: EBADF (both virtiofsds).
// - A directory operation on an inode that is not a directory: ENOTDIR.
import { FsError, type Handle, type NodeId } from './filesystem';
import type { DirRecord, FileRecord, FsSession, InodeRecord } from './session';
import * as K from './host_constants';

export function inodeRecord(session: FsSession, nodeid: NodeId): InodeRecord {
  const rec = session.getInode(nodeid);
  if (rec === undefined) throw new FsError(K.EBADF, `unknown nodeid ${nodeid}`);
  return rec;
}

export function dirInodeRecord(session: FsSession, nodeid: NodeId): InodeRecord {
  const rec = inodeRecord(session, nodeid);
  if (rec.fileType !== K.S_IFDIR) throw new FsError(K.ENOTDIR);
  return rec;
}

export function fileRecord(session: FsSession, nodeid: NodeId, fh: Handle): FileRecord {
  const rec = session.getFile(fh);
  if (rec === undefined || rec.nodeid !== nodeid) throw new FsError(K.EBADF, `unknown fh ${fh} for nodeid ${nodeid}`);
  return rec;
}

export function dirRecord(session: FsSession, nodeid: NodeId, fh: Handle): DirRecord {
  const rec = session.getDir(fh);
  if (rec === undefined || rec.nodeid !== nodeid) throw new FsError(K.EBADF, `unknown dir fh ${fh} for nodeid ${nodeid}`);
  return rec;
}
