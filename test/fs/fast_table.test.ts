// The fast path's tables (worker/fs/fast_table.ts) and when the addon may add inodes itself: a
// LOOKUP of a (dev, ino) its index lacks becomes a new inode there (native/src/fast_fuse.cc
// LookupNew), so its index must hold every inode the session knows. A session loaded from a
// compact snapshot keeps rows undecoded (snapshot_inodes.ts) that no index outside it has:
// until the last is decoded, the addon adds none (setNextNodeId(0)).
import t from 'tap';
import { native, type FastFuseHandle } from '../../shared/native';
import { FdRegistry } from '../../shared/fd_registry';
import { logger } from '../../shared/log';
import { FsSession, type InodeHandle } from '../../worker/fs/session';
import { InodeFdCache } from '../../worker/fs/inode_fds';
import { FastTable } from '../../worker/fs/fast_table';

const REG = 0o100000;
const MOUNT = 40;
const handle = (n: number): InodeHandle => {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(n, 0);
  return { mountId: MOUNT, handleType: 1, handle: b };
};

/** The addon's FastFuse, with the values of its setNextNodeId and setHandles calls noted. */
function recordingServer(): { server: FastFuseHandle; next: number[]; handles: number[] } {
  const real = new native.FastFuse();
  const next: number[] = [];
  const handles: number[] = [];
  const server = new Proxy(real, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        if (prop === 'setNextNodeId') next.push(args[0] as number);
        if (prop === 'setHandles') handles.push(args[0] as number);
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return { server, next, handles };
}

/** `decodeMs`: the background decode's delay (null: none, rows are decoded only by use). */
function table(session: FsSession, mountId: number | null, decodeMs: number | null = null): { next: number[]; handles: number[] } {
  const { server, next, handles } = recordingServer();
  const registry = new FdRegistry();
  const cache = new InodeFdCache(session, () => -1, 64, logger('test'));
  new FastTable(server, session, registry, cache, mountId, { delayMs: decodeMs });
  return { next, handles };
}

t.test('a fresh session: the addon may add inodes, numbered from the session\'s next nodeid', (t) => {
  const s = new FsSession({ dev: 9n, ino: 2n });
  s.addInode({ dev: 9n, ino: 100n, generation: 0, fileType: REG, handle: handle(100) });
  const { next, handles } = table(s, MOUNT);
  t.same(handles, [MOUNT], 'new inodes on the shared directory\'s mount');
  t.equal(next.at(-1), s.nextNodeId, `from nodeid ${s.nextNodeId}`);
  t.end();
});

t.test('handles off: the mount is -1 (the addon adds none)', (t) => {
  const { handles } = table(new FsSession({ dev: 9n, ino: 2n }), null);
  t.same(handles, [-1]);
  t.end();
});

t.test('a session with undecoded snapshot rows: none until every row is decoded', (t) => {
  const s = new FsSession({ dev: 9n, ino: 2n });
  for (let i = 0; i < 3; i++) s.addInode({ dev: 9n, ino: BigInt(100 + i), generation: 0, fileType: REG, handle: handle(100 + i) });
  const lazy = FsSession.fromSnapshot(s.toCompactSnapshot());
  t.equal(lazy.undecodedInodes, 3, 'loaded without decoding');
  const { next } = table(lazy, MOUNT);
  t.equal(next.at(-1), 0, 'undecoded rows: the addon adds no inode (its index lacks them)');
  // Found by number, as a LOOKUP through TypeScript finds them.
  t.equal(lazy.findInode(9n, 100n)?.nodeid, 2);
  t.equal(lazy.getInode(3)?.ino, 101n);
  t.equal(next.at(-1), 0, 'one row still undecoded');
  t.equal(lazy.findInode(9n, 102n)?.nodeid, 4);
  t.equal(lazy.undecodedInodes, 0);
  t.equal(next.at(-1), lazy.nextNodeId, `all decoded: new inodes from nodeid ${lazy.nextNodeId}`);
  t.end();
});

t.test('a successor decodes the rows left in the background, then the addon adds inodes again', async (t) => {
  const s = new FsSession({ dev: 9n, ino: 2n });
  const ROWS = 2000;
  for (let i = 0; i < ROWS; i++) s.addInode({ dev: 9n, ino: BigInt(100 + i), generation: 0, fileType: REG, handle: handle(100 + i) });
  // One inode forgotten since: its row is gone, not decoded.
  s.forget(5, 1);
  const lazy = FsSession.fromSnapshot(s.toCompactSnapshot());
  t.equal(lazy.undecodedInodes, ROWS - 1, 'loaded without decoding');
  t.equal(lazy.findInode(9n, 150n)?.nodeid, 52, 'one decoded by use');
  const { next } = table(lazy, MOUNT, 5);
  t.equal(next.at(-1), 0, 'at the start the addon adds no inode');
  const t0 = Date.now();
  let turns = 0;
  while (lazy.undecodedInodes > 0 && Date.now() - t0 < 10_000) {
    await new Promise((r) => setImmediate(r));
    turns++;
  }
  t.equal(lazy.undecodedInodes, 0, 'every row decoded without being used');
  t.ok(turns > 3, `in chunks, over ${turns} event-loop turns`);
  t.equal(next.at(-1), lazy.nextNodeId, `then new inodes from nodeid ${lazy.nextNodeId}`);
  t.equal(lazy.inodeCount, ROWS, 'the same inodes (the root and all but the forgotten one)');
  t.equal(lazy.getInode(5), undefined, 'the forgotten one stays gone');
  t.equal(lazy.findInode(9n, 100n + BigInt(ROWS - 1))?.nodeid, ROWS + 1, 'the last row by number');
  t.same(lazy.toCompactSnapshot(), s.toCompactSnapshot(), 'its snapshot is the one it was loaded from');
});
