// The tables the addon's FUSE fast path serves from (native/src/fast_fuse.cc): nodeid → the
// inode's O_PATH fd, fh → the open file's fd, nodeid and open flags, fh → an open dir's fd and
// nodeid (for RELEASEDIR). They mirror the session,
// the fd registry and the inode fd cache; with them the ids the addon may take for a new inode
// or an OPEN (the session's next nodeid and fh) and the room the fd budget leaves for OPEN.
//
// Decisions:
// - An entry leaves before the fd it names is closed (registry and cache tell us first) and
//   before the id it names is forgotten (the session's mutation is applied before the fd is
//   closed), so the addon never uses a closed or reused fd number, nor a released fh or a
//   forgotten nodeid.
// - An entry comes when its fd exists and the session knows the id: an inode's fd at its
//   registration or when the cache opens it, a file at its openFile mutation (its fd was
//   registered just before). A missing entry only sends the request to TypeScript.
import type { FastFuseHandle } from '../../shared/native';
import type { Logger } from '../../shared/log';
import type { FdRegistry, FdRegistryListener } from '../../shared/fd_registry';
import type { FsMutation, FsSession, InodeRecord } from './session';
import { ROOT_FD_NAME, dirFdName, fileFdName } from './session';
import type { InodeFdCache, InodeFdObserver } from './inode_fds';

const FUSE_ROOT_ID = 1;
/** A successor starts decoding its loaded snapshot's rows this long after the table is built
 * (its first requests, and a crash loop, do not pay for it)... */
export const BACKGROUND_DECODE_DELAY_MS = 1_000;
/** ...this many rows per turn of the event loop (~1 ms), requests served between turns. */
const BACKGROUND_DECODE_ROWS = 512;
/** The addon's OPEN room is a count it decrements; the budget itself may be Infinity. */
const MAX_OPEN_ROOM = 2 ** 31;
const INODE_NAME = /^inode\.(\d+)$/;
const FILE_NAME = /^file\.(\d+)$/;
const DIR_NAME = /^dir\.(\d+)$/;

/** The nodeid an inode fd name stands for, or null for another name. */
function nodeidOf(name: string): number | null {
  if (name === ROOT_FD_NAME) return FUSE_ROOT_ID;
  const m = INODE_NAME.exec(name);
  return m === null ? null : Number(m[1]);
}

/** The background decode of a successor's loaded snapshot rows: its delay (null: none, rows are
 * decoded by use only) and where it says it is done. */
export interface BackgroundDecode { delayMs?: number | null; log?: Logger }

export class FastTable implements FdRegistryListener, InodeFdObserver {
  /** POSIX lock owners: id → nodeid, and how many each inode has (FLUSH is the addon's only
   * for an inode with none). */
  private readonly ownerNode = new Map<number, number>();
  private readonly ownersOf = new Map<number, number>();
  /** The inode the addon added itself that the session is adding now (whileAddonAdds). */
  private addonAdds: number | null = null;
  /** What the addon was last told of the inode fd cache (setInodeCacheFull). */
  private cacheFull = false;
  /** The pending background decode (decodeInBackground). */
  private decodeTimer: NodeJS.Timeout | NodeJS.Immediate | null = null;

  /** `handleMountId`: new inodes on this mount are named by handles, so the addon's LOOKUP may
   * add them (null: handles off). */
  constructor(readonly server: FastFuseHandle, private readonly session: FsSession,
    private readonly registry: FdRegistry, private readonly cache: InodeFdCache, handleMountId: number | null = null,
    private readonly background: BackgroundDecode = {}) {
    server.setHandles(handleMountId ?? -1);
    registry.addListener(this);
    cache.observer = this;
    session.onMutation((m) => this.onMutation(m));
    // The inodes of a loaded snapshot become records when first used (snapshot_inodes.ts).
    session.onInodeDecoded = (rec) => {
      this.addInode(rec);
      if (this.session.undecodedInodes === 0) this.allowNewInodes();
    };
    this.syncAll();
  }

  /** Fills the tables from the session as it is (a resumed one: its fds were adopted without
   * telling listeners). */
  syncAll(): void {
    this.server.clear();
    for (const rec of this.session.inodeRecords()) this.addInode(rec);
    this.ownerNode.clear();
    this.ownersOf.clear();
    for (const o of this.session.allLockOwners()) this.addOwner(o.id, o.nodeid);
    for (const f of this.session.fileRecords()) {
      const fd = this.registry.get(f.fdName);
      if (fd !== undefined) this.server.setFile(f.fh, f.nodeid, fd, f.flags >>> 0);
    }
    for (const d of this.session.allDirs()) {
      const fd = this.registry.get(d.fdName);
      if (fd !== undefined) this.server.setDir(d.fh, d.nodeid, fd);
    }
    this.allowNewInodes();
    this.server.setNextFh(this.session.nextFh);
    this.updateOpenRoom();
    this.decodeInBackground();
  }

  /** The fd budget's room for the addon's OPENs, after every registration and removal. */
  private updateOpenRoom(): void {
    this.server.setOpenRoom(Math.max(0, Math.min(this.registry.room, MAX_OPEN_ROOM)));
  }

  /** The addon may add an inode a LOOKUP finds only when its (dev, ino) index holds every inode
   * the session knows: not while a loaded snapshot has inodes not decoded yet (the session finds
   * those by number, the addon would take one for a new inode). Then new inodes stay
   * TypeScript's, which decodes as it goes, until none is left. */
  private allowNewInodes(): void {
    this.server.setNextNodeId(this.session.undecodedInodes === 0 ? this.session.nextNodeId : 0);
  }

  /** Rows a restart left undecoded would keep new inodes TypeScript's for the rest of the
   * session (rows of inodes the guest never names again are never decoded by use): the
   * successor decodes them all in the background, a chunk per event-loop turn, after a delay.
   * The session's content does not change; its memory grows back to what the predecessor held. */
  private decodeInBackground(): void {
    const delayMs = this.background.delayMs === undefined ? BACKGROUND_DECODE_DELAY_MS : this.background.delayMs;
    const rows = this.session.undecodedInodes;
    if (this.decodeTimer !== null || delayMs === null || rows === 0) return;
    let t0 = 0;
    const step = (): void => {
      this.decodeTimer = null;
      t0 ||= performance.now();
      if (this.session.decodeSome(BACKGROUND_DECODE_ROWS) > 0) this.decodeTimer = setImmediate(step).unref();
      else this.background.log?.info({ rows, ms: Math.round(performance.now() - t0) }, 'loaded inode rows decoded; the fast path adds new inodes again');
    };
    this.decodeTimer = setTimeout(step, delayMs).unref();
  }

  onRegister(name: string, fd: number): void {
    this.updateOpenRoom();
    this.setInodeFd(name, fd);
  }

  onUnregister(name: string): void {
    this.forgetFd(name);
    this.updateOpenRoom();
  }

  onUnregisterMany(names: string[]): void {
    for (const name of names) this.forgetFd(name);
    this.updateOpenRoom();
  }

  /** The inode fd cache's fds are not the registry's: no change of the budget's room. */
  fdOpened(name: string, fd: number): void {
    this.setInodeFd(name, fd);
    this.noteCacheFull();
  }

  /** The addon's READDIRPLUS opens no fd for a new inode while one more would evict another. */
  private noteCacheFull(): void {
    const full = this.cache.full;
    if (full === this.cacheFull) return;
    this.cacheFull = full;
    this.server.setInodeCacheFull(full);
  }

  private setInodeFd(name: string, fd: number): void {
    const nodeid = nodeidOf(name);
    if (nodeid !== null) this.server.setInode(nodeid, fd);
  }

  private forgetFd(name: string): void {
    const nodeid = nodeidOf(name);
    if (nodeid !== null) {
      this.server.deleteInode(nodeid);
      return;
    }
    const m = FILE_NAME.exec(name);
    if (m !== null) {
      this.server.deleteFile(Number(m[1]));
      return;
    }
    const d = DIR_NAME.exec(name);
    if (d !== null) this.server.deleteDir(Number(d[1]));
  }

  fdClosing(name: string): void {
    const nodeid = nodeidOf(name);
    if (nodeid !== null) this.server.deleteInode(nodeid);
    this.noteCacheFull();
  }

  /** Runs `add`, which adds to the session the inode `nodeid` the addon added itself (a LOOKUP,
   * CREATE, MKDIR or READDIRPLUS it served): its identity is not sent back to it. */
  whileAddonAdds(nodeid: number, add: () => void): void {
    this.addonAdds = nodeid;
    try {
      add();
    } finally {
      this.addonAdds = null;
    }
  }

  /** An inode the session knows: its identity, and its fd when one is open. */
  private addInode(rec: InodeRecord): void {
    this.setMeta(rec);
    // Runs for every decoded inode at a resume (FastTable is built then): the name is made once,
    // and not at all for a handle-named inode while the cache is empty (a successor's start).
    if (rec.handle !== null && this.cache.size === 0) return;
    const name = rec.fdName;
    const fd = this.registry.get(name) ?? this.cache.peek(name);
    if (fd !== undefined) this.server.setInode(rec.nodeid, fd);
  }

  /** The identity as flat arguments: the addon reads no property (a handle's bytes are a getter). */
  private setMeta(rec: InodeRecord): void {
    const h = rec.handle;
    if (h === null) this.server.setInodeMeta(rec.nodeid, rec.dev, rec.ino, rec.generation, rec.fileType, null, 0, 0);
    else this.server.setInodeMeta(rec.nodeid, rec.dev, rec.ino, rec.generation, rec.fileType, h.handle, h.mountId, h.handleType);
  }

  private addOwner(id: number, nodeid: number): void {
    this.ownerNode.set(id, nodeid);
    const n = (this.ownersOf.get(nodeid) ?? 0) + 1;
    this.ownersOf.set(nodeid, n);
    this.server.setLockOwners(nodeid, n);
  }

  private onMutation(m: FsMutation): void {
    switch (m.op) {
      case 'openFile': {
        const fd = this.registry.get(fileFdName(m.fh));
        if (fd !== undefined) this.server.setFile(m.fh, m.nodeid, fd, m.flags >>> 0);
        else this.server.setNextFh(this.session.nextFh);
        return;
      }
      case 'closeFile':
        this.server.deleteFile(m.fh);
        return;
      case 'openDir': {
        const fd = this.registry.get(dirFdName(m.fh));
        if (fd !== undefined) this.server.setDir(m.fh, m.nodeid, fd);
        else this.server.setNextFh(this.session.nextFh);
        return;
      }
      case 'closeDir':
        this.server.deleteDir(m.fh);
        return;
      case 'addInode': {
        if (m.nodeid === this.addonAdds) return;
        const rec = this.session.getInode(m.nodeid);
        if (rec !== undefined) this.setMeta(rec);
        return;
      }
      case 'forget':
        if (this.session.getInode(m.nodeid) === undefined) this.server.forgetInode(m.nodeid);
        return;
      case 'openLockOwner':
        this.addOwner(m.id, m.nodeid);
        // The other taker of an fh (setFile and setDir move it past theirs).
        this.server.setNextFh(this.session.nextFh);
        return;
      case 'closeLockOwner': {
        const nodeid = this.ownerNode.get(m.id);
        if (nodeid === undefined) return;
        this.ownerNode.delete(m.id);
        const n = (this.ownersOf.get(nodeid) ?? 1) - 1;
        if (n > 0) this.ownersOf.set(nodeid, n);
        else this.ownersOf.delete(nodeid);
        this.server.setLockOwners(nodeid, n);
        return;
      }
      case 'reset': {
        this.ownerNode.clear();
        this.ownersOf.clear();
        this.server.clear();
        const root = this.registry.get(ROOT_FD_NAME);
        const rec = this.session.getInode(FUSE_ROOT_ID);
        if (rec !== undefined) this.setMeta(rec);
        if (root !== undefined) this.server.setInode(FUSE_ROOT_ID, root);
        this.allowNewInodes();
        this.server.setNextFh(this.session.nextFh);
        return;
      }
      default:
    }
  }
}
