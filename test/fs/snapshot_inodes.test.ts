// The lazily decoded inode rows of a loaded snapshot (worker/fs/snapshot_inodes.ts): a session
// loaded that way must behave exactly as one loaded eagerly (the older path, still used for rows
// not in nodeid order), through random lookups, forgets, number reuse and compactions; and the
// lazy scan must refuse what the eager load refuses.
import t from 'tap';
import { FsSession, FsSessionError, type CompactSessionSnapshot, type InodeHandle, type InodeRecord } from '../../worker/fs/session';
import { INODE_ROW, SnapshotInodes } from '../../worker/fs/snapshot_inodes';

const REG = 0o100000;
const DIR = 0o040000;

/** A deterministic PRNG (mulberry32): failures reproduce. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const handle = (n: number, gen = 0): InodeHandle => {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(n, 0);
  b.writeUInt32LE(gen, 4);
  return { mountId: 40, handleType: 1, handle: b };
};

/** Sessions with fd inodes, handle inodes, reused numbers (an older inode whose number a newer
 * one took), forgotten inodes and open files. */
function build(seed: number, n: number): FsSession {
  const r = rng(seed);
  const s = new FsSession({ dev: 9n, ino: 2n });
  for (let i = 0; i < n; i++) {
    const ino = BigInt(100 + Math.floor(r() * n));
    const dev = r() < 0.1 ? 10n : 9n;
    const withHandle = r() < 0.8;
    const known = s.findInode(dev, ino);
    if (known !== undefined && !(withHandle && known.handle !== null)) continue;
    const rec = s.addInode({ dev, ino, generation: 0, fileType: r() < 0.1 ? DIR : REG, ...(withHandle ? { handle: handle(Number(ino), i) } : {}) });
    if (r() < 0.3) s.addLookup(rec.nodeid, 1 + Math.floor(r() * 3));
    if (r() < 0.1) s.openFile(rec.nodeid, 2);
    if (r() < 0.05) s.forget(rec.nodeid, 100);
  }
  return s;
}

/** The same snapshot with its rows reversed (root kept first): what the eager path loads. */
function eagerCopy(snap: CompactSessionSnapshot): CompactSessionSnapshot {
  const rows = snap.inodeTable.length / INODE_ROW;
  const t2 = Buffer.alloc(snap.inodeTable.length);
  snap.inodeTable.copy(t2, 0, 0, INODE_ROW);
  for (let i = 1; i < rows; i++) snap.inodeTable.copy(t2, i * INODE_ROW, (rows - i) * INODE_ROW, (rows - i + 1) * INODE_ROW);
  return { ...snap, inodeTable: t2 };
}

const view = (i: InodeRecord | undefined): unknown => i === undefined ? undefined : {
  nodeid: i.nodeid, dev: i.dev, ino: i.ino, generation: i.generation, lookupCount: i.lookupCount, fdName: i.fdName, fileType: i.fileType,
  handle: i.handle === null ? null : { ...i.handle, handle: i.handle.handle.toString('hex') },
};
const big = (_k: string, v: unknown): unknown => typeof v === 'bigint' ? `${v}n` : v;
const sorted = (s: FsSession): unknown[] => [...s.allInodes()].sort((a, b) => a.nodeid - b.nodeid).map(view);

for (const seed of [1, 2, 3, 4]) {
  t.test(`lazy and eager loads agree through random operations (seed ${seed})`, (t) => {
    const orig = build(seed, 3000);
    const snap = orig.toCompactSnapshot();
    t.not(SnapshotInodes.scan(snap.inodeTable, snap.inodeHandles ?? null, snap.nextNodeId), null, 'written in nodeid order: loads lazily');
    t.equal(SnapshotInodes.scan(eagerCopy(snap).inodeTable, snap.inodeHandles ?? null, snap.nextNodeId), null, 'reversed rows: eager path');
    const lazy = FsSession.fromSnapshot(snap);
    const eager = FsSession.fromSnapshot(eagerCopy(snap));
    t.equal(lazy.inodeCount, eager.inodeCount);
    t.equal(lazy.handleInodeCount, eager.handleInodeCount);
    t.same(lazy.keeperFdNames().sort(), eager.keeperFdNames().sort(), 'keeper fd names without decoding the handle rows');
    const r = rng(seed * 7919);
    let ops = 0;
    // Mismatches are collected, not asserted one by one (thousands of tap assertions are slow).
    const diffs: string[] = [];
    const same = (a: unknown, b: unknown, what: string): void => {
      if (JSON.stringify(a, big) !== JSON.stringify(b, big)) diffs.push(`${what}: ${JSON.stringify(a, big)} != ${JSON.stringify(b, big)}`);
    };
    for (let i = 0; i < 6000; i++) {
      const k = r();
      const dev = r() < 0.1 ? 10n : 9n;
      const ino = BigInt(100 + Math.floor(r() * 3500));
      const nodeid = 1 + Math.floor(r() * (lazy.nextNodeId + 2));
      if (k < 0.3) {
        same(view(lazy.findInode(dev, ino)), view(eager.findInode(dev, ino)), `findInode(${dev}, ${ino})`);
      } else if (k < 0.55) {
        same(view(lazy.getInode(nodeid)), view(eager.getInode(nodeid)), `getInode(${nodeid})`);
      } else if (k < 0.7) {
        if (eager.getInode(nodeid) === undefined) continue;
        same(view(lazy.forget(nodeid, 1) ?? undefined), view(eager.forget(nodeid, 1) ?? undefined), `forget(${nodeid})`);
      } else if (k < 0.8) {
        if (eager.getInode(nodeid) === undefined) continue;
        lazy.addLookup(nodeid, 2);
        eager.addLookup(nodeid, 2);
      } else if (k < 0.95) {
        // A new inode, or one reusing a known number under a new handle (or refused as a duplicate by both).
        const h = r() < 0.7 ? handle(Number(ino), 100000 + i) : null;
        const add = (s: FsSession): unknown => {
          try {
            return view(s.addInode({ dev, ino, generation: 0, fileType: REG, ...(h ? { handle: h } : {}) }));
          } catch (e) {
            return (e as Error).message;
          }
        };
        same(add(lazy), add(eager), `addInode(${dev}, ${ino})`);
      } else if (k < 0.952) {
        // A compaction and a reload in the middle: the lazy session writes merged, ordered rows.
        const again = lazy.toCompactSnapshot();
        same(sorted(FsSession.fromSnapshot(again)), sorted(eager), 'a snapshot of the half-decoded session loads the same');
        if (SnapshotInodes.scan(again.inodeTable, again.inodeHandles ?? null, again.nextNodeId) === null) diffs.push('a compaction wrote rows out of order');
      }
      ops++;
    }
    t.same(diffs.slice(0, 5), [], 'the lazy session answered every query as the eager one');
    t.ok(ops > 3000);
    t.equal(lazy.inodeCount, eager.inodeCount);
    t.equal(lazy.handleInodeCount, eager.handleInodeCount);
    t.same(sorted(lazy), sorted(eager), 'the same inodes at the end');
    t.same(lazy.fdNames().sort(), eager.fdNames().sort());
    t.end();
  });
}

t.test('the lazy scan refuses what the eager load refuses', (t) => {
  const s = new FsSession({ dev: 9n, ino: 2n });
  s.addInode({ dev: 9n, ino: 50n, generation: 0, fileType: REG, handle: handle(50) });
  s.addInode({ dev: 9n, ino: 51n, generation: 0, fileType: REG });
  s.addInode({ dev: 9n, ino: 52n, generation: 0, fileType: REG });
  s.addInode({ dev: 9n, ino: 53n, generation: 0, fileType: REG, handle: handle(53) });
  s.forget(5, 1);
  const good = s.toCompactSnapshot();
  t.doesNotThrow(() => FsSession.fromSnapshot(good));
  const mutate = (f: (t: Buffer, h: Buffer) => void): CompactSessionSnapshot => {
    const table = Buffer.from(good.inodeTable);
    const handles = Buffer.from(good.inodeHandles!);
    f(table, handles);
    return { ...good, inodeTable: table, inodeHandles: handles };
  };
  const cases: Array<[string, CompactSessionSnapshot, RegExp]> = [
    ['nodeid past the counter', mutate((tb) => tb.writeDoubleLE(99, 2 * INODE_ROW)), /nodeid 99 >= nextNodeId/],
    ['fractional nodeid', mutate((tb) => tb.writeDoubleLE(2.5, INODE_ROW)), /nodeid: expected an integer/],
    ['bad file type', mutate((tb) => tb.writeUInt32LE(0o170000, INODE_ROW + 28)), /not a file type/],
    ['zero lookup count', mutate((tb) => tb.writeDoubleLE(0, INODE_ROW + 32)), /lookupCount: expected an integer >= 1/],
    ['duplicate (dev, ino) without handles', mutate((tb) => tb.writeBigUInt64LE(51n, 3 * INODE_ROW + 16)), /duplicate \(dev, ino\)/],
    ['root is not a directory', mutate((tb) => tb.writeUInt32LE(REG, 28)), /root inode is not a directory/],
    ['handle of an unknown nodeid', mutate((_, h) => h.writeDoubleLE(5, 0)), /inodeHandles: a handle for nodeid 5 that has no inode/],
    ['handle cut off', { ...good, inodeHandles: good.inodeHandles!.subarray(0, 10) }, /cut off/],
    ['handle length 0', mutate((_, h) => { h[20] = 0; }), /bad handle length 0/],
    ['partial row', { ...good, inodeTable: good.inodeTable.subarray(0, 50) }, /not a whole number of rows/],
  ];
  for (const [what, snap, re] of cases) {
    t.throws(() => FsSession.fromSnapshot(snap), re, what);
    t.throws(() => FsSession.fromSnapshot(snap), FsSessionError, `${what}: an FsSessionError`);
  }
  t.end();
});

t.test('a number shared by an inode with a handle and a newer one without loads (a session can hold that)', (t) => {
  const s = new FsSession({ dev: 9n, ino: 2n });
  const a = s.addInode({ dev: 9n, ino: 70n, generation: 0, fileType: REG, handle: handle(70, 1) });
  const b = s.addInode({ dev: 9n, ino: 70n, generation: 0, fileType: REG, handle: handle(70, 2) });
  s.forget(b.nodeid, 1);
  const c = s.addInode({ dev: 9n, ino: 70n, generation: 0, fileType: REG });
  const snap = s.toCompactSnapshot();
  for (const [what, sn] of [['lazy', snap], ['eager', eagerCopy(snap)]] as const) {
    const l = FsSession.fromSnapshot(sn);
    t.equal(l.getInode(a.nodeid)!.handle!.handle.toString('hex'), handle(70, 1).handle.toString('hex'), `${what}: the older inode`);
    t.equal(l.findInode(9n, 70n)!.nodeid, c.nodeid, `${what}: the newest owns the number`);
  }
  t.end();
});

t.test('100,000 rows load without decoding them', (t) => {
  const s = new FsSession({ dev: 9n, ino: 2n });
  for (let i = 0; i < 100_000; i++) s.addInode({ dev: 9n, ino: BigInt(1000 + i), generation: 0, fileType: REG, handle: handle(i) });
  const snap = s.toCompactSnapshot();
  const lazy = FsSession.fromSnapshot(snap);
  t.equal(lazy.inodeCount, 100_001);
  t.equal(lazy.handleInodeCount, 100_000);
  t.same(lazy.keeperFdNames(), ['root'], 'no handle row is decoded for the keeper check');
  t.equal(lazy.findInode(9n, 1000n + 77777n)!.nodeid, 2 + 77777);
  t.equal(lazy.getInode(2 + 5)!.ino, 1005n);
  t.equal(lazy.inodeCount, 100_001, 'decoding moves rows, it does not add them');
  t.end();
});
