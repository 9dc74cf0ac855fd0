// Inodes named by file handles (--inode-file-handles): no registry (keeper) fd per inode, a
// bounded cache of O_PATH fds reopened by handle, identity by handle, the fallback, resume.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native, STAT } from '../../shared/native';
import { FdRegistry } from '../../shared/fd_registry';
import { ConfigurationError } from '../../shared/errors';
import { FsSession } from '../../worker/fs/session';
import { keepHandle } from '../../worker/fs/handle_bytes';
import { PassthroughFs } from '../../worker/fs/passthrough';
import { InodeFdCache, MIN_CAPACITY } from '../../worker/fs/inode_fds';
import * as K from '../../worker/fs/host_constants';
import { ROOT, TestSink, b, ctx, fdCount, setup, silent, throwsErrno, type SinkEntry } from './fixtures/helpers';

const CACHE = 16;

function files(n: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < n; i++) out[`f${i}`] = `file ${i}\n`;
  return out;
}

const inodeNames = (r: FdRegistry): string[] => r.names().filter((n) => n.startsWith('inode.'));

t.test('prefer: inodes get handles, no registry fd each, the cache stays bounded and reopens by handle', (t) => {
  const { fs: pfs, registry, share } = setup(t, files(200), { inodeFileHandles: 'prefer', inodeFdCache: CACHE });
  t.teardown(() => pfs.destroy());
  const st0 = pfs.inodeHandleStats;
  t.equal(st0.active, true, 'handles are on (root, ext4/tmpfs)');
  t.equal(st0.reason, null);
  const fdsBefore = fdCount();
  const ids: number[] = [];
  for (let i = 0; i < 200; i++) ids.push(pfs.lookup(ctx, ROOT, b(`f${i}`)).nodeid);
  t.same(inodeNames(registry), [], 'no inode fd in the registry (the keeper holds none)');
  t.ok(fdCount() - fdsBefore <= CACHE, `the process holds at most the cache's ${CACHE} inode fds (${fdCount() - fdsBefore})`);
  const st = pfs.inodeHandleStats;
  t.equal(st.byHandle, 200);
  t.equal(st.byFd, 1, 'the root keeps its fd');
  t.equal(st.cachedFds, CACHE);
  t.equal(pfs.session.getInode(ids[0]!)!.handle!.handle.length > 0, true, 'the record carries the handle');
  // The first ones were evicted: getattr reopens them by handle and sees the same inode.
  const opens = st.opensByHandle;
  for (let i = 0; i < 200; i++) {
    const stat = pfs.getattr(ctx, ids[i]!, null).stat;
    t.equal(stat.readBigUInt64LE(STAT.ino), BigInt(fs.statSync(path.join(share, `f${i}`)).ino), `f${i} reopened as itself`);
  }
  t.ok(pfs.inodeHandleStats.opensByHandle - opens >= 200 - CACHE, 'evicted inodes were opened by handle');
  // A known name costs no new nodeid.
  t.equal(pfs.lookup(ctx, ROOT, b('f3')).nodeid, ids[3]);
  // Open files still hold fds in the registry.
  const o = pfs.open(ctx, ids[5]!, K.O_RDONLY);
  t.ok(registry.has(`file.${o.fh}`), 'an open file is a registry fd as before');
  pfs.release(ctx, ids[5]!, o.fh, 0, 0, 0n);
  // Forget closes the cached fd.
  const cachedBefore = pfs.inodeHandleStats.cachedFds;
  pfs.forget(ids[199]!, 2);
  t.equal(pfs.session.getInode(ids[199]!), undefined);
  t.equal(pfs.inodeHandleStats.cachedFds, cachedBefore - 1, 'its cached fd was closed');
  t.end();
});

t.test('a deleted inode named by handle answers ESTALE, never another inode', (t) => {
  const { fs: pfs, share } = setup(t, { gone: 'x', ...files(CACHE + 4) }, { inodeFileHandles: 'prefer', inodeFdCache: CACHE });
  t.teardown(() => pfs.destroy());
  const gone = pfs.lookup(ctx, ROOT, b('gone')).nodeid;
  for (let i = 0; i < CACHE + 4; i++) pfs.lookup(ctx, ROOT, b(`f${i}`));
  fs.unlinkSync(path.join(share, 'gone'));
  throwsErrno(t, () => pfs.getattr(ctx, gone, null), K.ESTALE, 'evicted and deleted: ESTALE');
  t.end();
});

t.test('a handle that opens another inode than the journaled (dev, ino) is refused (ESTALE)', (t) => {
  const base = t.testdir({ share: { a: 'a', b: 'b' } });
  const share = path.join(base, 'share');
  const root = native.openat(K.AT_FDCWD, share, K.O_PATH | K.O_DIRECTORY | K.O_CLOEXEC, 0);
  const rs = fs.statSync(share, { bigint: true });
  const as = fs.statSync(path.join(share, 'a'), { bigint: true });
  const session = new FsSession({ dev: rs.dev, ino: rs.ino });
  // Inode "a" as journaled, but with the handle of "b" (what a forged journal could say).
  const nodeid = session.addInode({ dev: as.dev, ino: as.ino, generation: 0, fileType: K.S_IFREG,
    handle: native.nameToHandleAt(root, 'b', 0) }).nodeid;
  const registry = new FdRegistry();
  registry.register('root', root);
  t.teardown(() => registry.closeAll());
  const pfs = new PassthroughFs({ registry, logger: silent, session, inodeFileHandles: 'prefer' });
  throwsErrno(t, () => pfs.getattr(ctx, nodeid, null), K.ESTALE);
  t.end();
});

t.test('inode number reuse: a known (dev, ino) with another handle is a new inode', (t) => {
  const root = { dev: 1n, ino: 2n };
  const h = (x: number): { mountId: number; handleType: number; handle: Buffer } => ({ mountId: 7, handleType: 1, handle: Buffer.alloc(8, x) });
  const s = new FsSession(root);
  const old = s.addInode({ dev: 1n, ino: 50n, generation: 0, fileType: K.S_IFREG, handle: h(1) });
  t.throws(() => s.addInode({ dev: 1n, ino: 50n, generation: 0, fileType: K.S_IFREG, handle: h(1) }), /already known/, 'same handle: the same inode');
  t.throws(() => s.addInode({ dev: 1n, ino: 50n, generation: 0, fileType: K.S_IFREG }), /already known/, 'no handle: refused as before');
  const young = s.addInode({ dev: 1n, ino: 50n, generation: 0, fileType: K.S_IFREG, handle: h(2) });
  t.equal(s.findInode(1n, 50n)!.nodeid, young.nodeid, '(dev, ino) now names the newer inode');
  t.ok(s.getInode(old.nodeid), 'the old one stays until forgotten');
  s.forget(old.nodeid, 1);
  t.equal(s.findInode(1n, 50n)!.nodeid, young.nodeid, 'forgetting the old one leaves the index to the new one');
  // Both survive a snapshot (version 3) with the index on the newer.
  const s2 = new FsSession(root);
  s2.addInode({ dev: 1n, ino: 50n, generation: 0, fileType: K.S_IFREG, handle: h(1) });
  const n2 = s2.addInode({ dev: 1n, ino: 50n, generation: 0, fileType: K.S_IFREG, handle: h(2) }).nodeid;
  const snap = s2.toCompactSnapshot();
  t.equal(snap.version, 3);
  const back = FsSession.fromSnapshot(snap);
  t.equal(back.inodeCount, 3);
  t.equal(back.findInode(1n, 50n)!.nodeid, n2);
  t.same(back.getInode(n2)!.handle, h(2));
  t.end();
});

t.test('snapshots: version 2 without handles, version 3 with; malformed side tables refused', (t) => {
  const s = new FsSession({ dev: 1n, ino: 2n });
  s.addInode({ dev: 1n, ino: 3n, generation: 0, fileType: K.S_IFREG });
  t.equal(s.toCompactSnapshot().version, 2, 'no handles: the format older workers read');
  s.addInode({ dev: 1n, ino: 4n, generation: 0, fileType: K.S_IFDIR, handle: { mountId: 9, handleType: -3, handle: Buffer.alloc(128, 5) } });
  const snap = s.toCompactSnapshot();
  t.equal(snap.version, 3);
  const back = FsSession.fromSnapshot(snap);
  t.same(back.getInode(3)!.handle, { mountId: 9, handleType: -3, handle: Buffer.alloc(128, 5) });
  t.equal(back.getInode(2)!.handle, null);
  t.equal(back.handleInodeCount, 1);
  t.same(back.keeperFdNames().sort(), ['inode.2', 'root']);
  const bad = (mut: (x: Buffer) => Buffer): unknown => ({ ...snap, inodeHandles: mut(Buffer.from(snap.inodeHandles!)) });
  t.throws(() => FsSession.fromSnapshot(bad((x) => x.subarray(0, x.length - 1))), /bad handle length|cut off/);
  t.throws(() => FsSession.fromSnapshot(bad((x) => { x.writeDoubleLE(99, 0); return x; })), /nextNodeId/);
  t.throws(() => FsSession.fromSnapshot({ ...bad((x) => { x.writeDoubleLE(7, 0); return x; }) as object, nextNodeId: 10 }), /that has no inode/);
  t.throws(() => FsSession.fromSnapshot(bad((x) => { x.writeUInt8(0, 20); return x; })), /bad handle length/);
  t.throws(() => FsSession.fromSnapshot({ ...snap, version: 4 }), /unsupported session snapshot version 4/);
  const v2 = { ...snap, version: 2 };
  t.throws(() => FsSession.fromSnapshot(v2), /unknown field "inodeHandles"/, 'a version 2 reader refuses the side table');
  t.end();
});

t.test('snapshots: kept handles of every length write the documented rows, byte for byte, and load back', (t) => {
  const s = new FsSession({ dev: 1n, ino: 2n });
  const want: Array<{ nodeid: number; mountId: number; handleType: number; bytes: Buffer }> = [];
  for (let len = 1; len <= 128; len++) {
    const bytes = Buffer.alloc(len);
    for (let k = 0; k < len; k++) bytes[k] = (len * 31 + k * 7) & 0xff;
    const mountId = len === 128 ? 0x7fffffff : len;
    const handleType = len % 2 === 0 ? -len : len;
    // Half as the addon hands them over (copied into the slabs), half as plain objects.
    const handle = len % 2 === 0 ? keepHandle(mountId, handleType, bytes) : { mountId, handleType, handle: Buffer.from(bytes) };
    const rec = s.addInode({ dev: 0xfedcba9876543210n, ino: BigInt(len) + (1n << 60n), generation: len, fileType: K.S_IFREG, handle });
    s.addLookup(rec.nodeid, len);
    want.push({ nodeid: rec.nodeid, mountId, handleType, bytes });
  }
  const snap = s.toCompactSnapshot();
  // The rows as the format says: { f64 nodeid, u64 dev, u64 ino, u32 generation, u32 fileType,
  // f64 lookupCount } and { f64 nodeid, u64 mountId, i32 handleType, u8 length, bytes }.
  const rows = snap.inodeTable;
  t.equal(rows.length, 129 * 40);
  let hat = 0;
  const h = snap.inodeHandles!;
  const diffs: string[] = [];
  for (const [i, w] of want.entries()) {
    const at = (i + 1) * 40;
    const len = i + 1;
    if (rows.readDoubleLE(at) !== w.nodeid || rows.readBigUInt64LE(at + 8) !== 0xfedcba9876543210n ||
      rows.readBigUInt64LE(at + 16) !== BigInt(len) + (1n << 60n) || rows.readUInt32LE(at + 24) !== len ||
      rows.readUInt32LE(at + 28) !== K.S_IFREG || rows.readDoubleLE(at + 32) !== len + 1) diffs.push(`inode row ${i + 1}`);
    if (h.readDoubleLE(hat) !== w.nodeid || h.readBigUInt64LE(hat + 8) !== BigInt(w.mountId) || h.readInt32LE(hat + 16) !== w.handleType ||
      h[hat + 20] !== len || !h.subarray(hat + 21, hat + 21 + len).equals(w.bytes)) diffs.push(`handle row of nodeid ${w.nodeid}`);
    hat += 21 + len;
  }
  t.equal(hat, h.length, 'the side table holds exactly the handle rows');
  t.same(diffs, [], 'every row as documented');
  const back = FsSession.fromSnapshot(snap);
  const loaded = want.map((w) => back.getInode(w.nodeid)!.handle);
  t.same(loaded.map((x) => x === null ? null : { mountId: x.mountId, handleType: x.handleType, bytes: x.handle.toString('hex') }),
    want.map((w) => ({ mountId: w.mountId, handleType: w.handleType, bytes: w.bytes.toString('hex') })), 'handles load back');
  t.same(back.toCompactSnapshot(), snap, 'a loaded session writes the same snapshot again');
  t.end();
});

t.test('resume: a new PassthroughFs reopens handle-named inodes with only the root fd', (t) => {
  const { fs: pfs, registry, share } = setup(t, { d: { x: 'xx' }, ...files(40) }, { inodeFileHandles: 'prefer', inodeFdCache: CACHE });
  const d = pfs.lookup(ctx, ROOT, b('d')).nodeid;
  const x = pfs.lookup(ctx, d, b('x')).nodeid;
  for (let i = 0; i < 40; i++) pfs.lookup(ctx, ROOT, b(`f${i}`));
  const snap = pfs.session.toCompactSnapshot();
  // The old worker dies: its cache goes with it; the keeper's fds are the registry's.
  const rootFd = native.openat(K.AT_FDCWD, share, K.O_PATH | K.O_DIRECTORY | K.O_CLOEXEC, 0);
  const registry2 = new FdRegistry();
  registry2.register('root', rootFd);
  t.teardown(() => registry2.closeAll());
  pfs.destroy();
  t.same(inodeNames(registry), []);
  const pfs2 = new PassthroughFs({ registry: registry2, logger: silent, session: FsSession.fromSnapshot(snap), inodeFileHandles: 'prefer', inodeFdCache: CACHE });
  t.teardown(() => pfs2.destroy());
  t.equal(pfs2.session.inodeCount, 43);
  t.equal(pfs2.lookup(ctx, d, b('x')).nodeid, x, 'a lookup under a reopened dir finds the known inode');
  const o = pfs2.open(ctx, x, K.O_RDONLY);
  t.ok(registry2.has(`file.${o.fh}`));
  pfs2.release(ctx, x, o.fh, 0, 0, 0n);
  t.end();
});

t.test('never: every inode holds a registry fd, as before', (t) => {
  const { fs: pfs, registry } = setup(t, files(5), { inodeFileHandles: 'never' });
  for (let i = 0; i < 5; i++) pfs.lookup(ctx, ROOT, b(`f${i}`));
  t.equal(inodeNames(registry).length, 5);
  t.equal(pfs.inodeHandleStats.active, false);
  t.equal(pfs.inodeHandleStats.reason, null);
  t.end();
});

t.test('a filesystem without handles: prefer falls back to fds and says why, mandatory refuses', (t) => {
  // procfs exports no file handles.
  const registry = new FdRegistry();
  t.teardown(() => registry.closeAll());
  const pfs = new PassthroughFs({ registry, sharedDir: '/proc/sys', logger: silent, inodeFileHandles: 'prefer' });
  const st = pfs.inodeHandleStats;
  t.equal(st.active, false);
  t.match(st.reason, /no file handles/);
  const e = pfs.lookup(ctx, ROOT, b('kernel'));
  t.ok(registry.has(`inode.${e.nodeid}`), 'the fallback holds an fd');
  const registry2 = new FdRegistry();
  t.teardown(() => registry2.closeAll());
  t.throws(() => new PassthroughFs({ registry: registry2, sharedDir: '/proc/sys', logger: silent, inodeFileHandles: 'mandatory' }),
    ConfigurationError);
  t.end();
});

t.test('an inode on another mount than the share keeps a registry fd', { skip: !fs.existsSync('/proc/self') }, (t) => {
  // /proc is another mount than / : a share at / reaches it by a lookup of "proc".
  const registry = new FdRegistry();
  t.teardown(() => registry.closeAll());
  const pfs = new PassthroughFs({ registry, sharedDir: '/', logger: silent, inodeFileHandles: 'prefer', inodeFdCache: CACHE });
  t.equal(pfs.inodeHandleStats.active, true);
  const proc = pfs.lookup(ctx, ROOT, b('proc')).nodeid;
  const sys = pfs.lookup(ctx, proc, b('sys')).nodeid;
  t.ok(registry.has(`inode.${sys}`), 'an inode on another mount: fd in the registry');
  t.equal(pfs.session.getInode(sys)!.handle, null);
  pfs.destroy();
  t.end();
});

t.test('fd leaks: lookups, reopens by handle, opens, forgets and a reset leave the fd count where it was', (t) => {
  const { fs: pfs, registry } = setup(t, { d: files(50) }, { inodeFileHandles: 'prefer', inodeFdCache: CACHE });
  const before = fdCount();
  const d = pfs.lookup(ctx, ROOT, b('d')).nodeid;
  const ids: number[] = [];
  for (let i = 0; i < 50; i++) ids.push(pfs.lookup(ctx, d, b(`f${i}`)).nodeid);
  for (const id of ids) pfs.getattr(ctx, id, null); // evicted ones reopened by handle
  for (const id of ids.slice(0, 10)) {
    const o = pfs.open(ctx, id, K.O_RDONLY);
    pfs.release(ctx, id, o.fh, 0, 0, 0n);
  }
  for (const id of ids.slice(0, 25)) pfs.forget(id, 1);
  t.ok(fdCount() - before <= CACHE + 1, 'bounded meanwhile (cache + its mount fd)');
  pfs.destroy();
  t.equal(fdCount(), before, 'nothing left after the reset');
  t.same(registry.names(), ['root']);
  t.end();
});

t.test('the inode fd cache evicts the least recently used unpinned fd, in O(1) per insert', (t) => {
  const cache = new InodeFdCache(new FsSession({ dev: 1n, ino: 2n }), () => -1, MIN_CAPACITY, silent);
  const open = (): number => native.openat(K.AT_FDCWD, '/', K.O_PATH | K.O_CLOEXEC, 0);
  const before = fdCount();
  for (let i = 0; i < MIN_CAPACITY; i++) cache.insert(`inode.${i + 2}`, open());
  t.equal(cache.cached('inode.2'), cache.cached('inode.2'), 'a cached fd is found');
  cache.pin('inode.3');
  cache.insert('inode.100', open());
  t.ok(cache.holds('inode.2'), 'used recently: kept');
  t.ok(cache.holds('inode.3'), 'pinned: kept');
  t.notOk(cache.holds('inode.4'), 'the least recently used unpinned one went');
  t.equal(cache.size, MIN_CAPACITY);
  // A long run of new inodes through a full cache (a big listing): what stays is the newest.
  for (let i = 0; i < 20_000; i++) cache.insert(`inode.${1000 + i}`, open());
  t.equal(cache.size, MIN_CAPACITY);
  t.ok(cache.holds('inode.3') && cache.holds('inode.20999'), 'the pinned one and the newest stay');
  t.notOk(cache.holds('inode.2'));
  t.equal(fdCount() - before, MIN_CAPACITY, 'every evicted fd was closed');
  cache.unpin('inode.3');
  t.equal(cache.relieve(), MIN_CAPACITY / 2, 'relieve closes half');
  for (let i = 0; i < 21_000; i++) cache.drop(`inode.${i}`);
  t.equal(cache.size, 0);
  t.equal(fdCount(), before, 'nothing leaked');
  t.end();
});

t.test('READDIRPLUS with the inode fd cache full names new entries by their handles without opening them; their first use opens them by handle', (t) => {
  const N = 60;
  const { fs: pfs, registry, share } = setup(t, { d: { ...files(N), sub: { x: 'x' } } }, { inodeFileHandles: 'prefer', inodeFdCache: CACHE });
  t.teardown(() => pfs.destroy());
  fs.symlinkSync('f0', path.join(share, 'd', 'sym'));
  const d = pfs.lookup(ctx, ROOT, b('d')).nodeid;
  const dir = pfs.opendir(ctx, d, K.O_RDONLY);
  const fdsBefore = fdCount();
  const room = CACHE - pfs.inodeHandleStats.cachedFds;
  const entries: SinkEntry[] = [];
  for (let offset = 0n; ;) {
    const sink = new TestSink(7);
    pfs.readdir(ctx, d, dir.fh, offset, true, sink);
    if (sink.entries.length === 0) break;
    entries.push(...sink.entries);
    offset = sink.entries.at(-1)!.off;
  }
  const listed = entries.filter((e) => e.name !== '.' && e.name !== '..');
  t.equal(listed.length, N + 2, 'every entry listed');
  t.ok(listed.every((e) => e.entry !== null && e.entry.nodeid > 1), 'each with an inode');
  t.equal(pfs.inodeHandleStats.cachedFds, CACHE, 'the cache filled up, no further');
  t.equal(fdCount() - fdsBefore, room, `the process holds only the ${room} fds the cache had room for`);
  t.same(inodeNames(registry), [], 'and the keeper none');
  for (const e of listed) {
    const host = fs.lstatSync(path.join(share, 'd', e.name), { bigint: true });
    const rec = pfs.session.getInode(e.entry!.nodeid)!;
    if (rec.ino !== host.ino || rec.handle === null || rec.fileType !== (Number(host.mode) & K.S_IFMT)) t.fail(`${e.name}: the record is the host's inode, with a handle`);
    if (e.entry!.stat.readBigUInt64LE(STAT.ino) !== host.ino) t.fail(`${e.name}: the attributes are the entry's own`);
  }
  t.pass('records and attributes are the host\'s, the symlink\'s own (not followed)');
  // The first entries were opened and kept while the cache had room; the last ones never
  // opened (an fd for them would have evicted those): their first use opens them by handle.
  const getattrOpens = (e: SinkEntry): number => {
    const opens = pfs.inodeHandleStats.opensByHandle;
    const ino = pfs.getattr(ctx, e.entry!.nodeid, null).stat.readBigUInt64LE(STAT.ino);
    if (ino !== BigInt(fs.lstatSync(path.join(share, 'd', e.name)).ino)) t.fail(`getattr of ${e.name} is ${e.name}`);
    return pfs.inodeHandleStats.opensByHandle - opens;
  };
  t.equal(getattrOpens(listed[0]!), 0, 'the first listed entry: its fd was kept');
  t.equal(getattrOpens(listed.at(-1)!), 1, 'the last: opened by handle at its first use');
  const last = listed.at(-1)!;
  t.equal(pfs.lookup(ctx, d, b(last.name)).nodeid, last.entry!.nodeid, 'a LOOKUP finds the listed inode');
  const sub = listed.find((e) => e.name === 'sub')!.entry!.nodeid;
  t.ok(pfs.lookup(ctx, sub, b('x')).nodeid > 1, 'a listed dir works as a parent');
  // A name that now holds another file: the next listing gives it a new inode.
  const f5 = listed.find((e) => e.name === 'f5')!.entry!.nodeid;
  fs.unlinkSync(path.join(share, 'd', 'f5'));
  fs.writeFileSync(path.join(share, 'd', 'f5'), 'new');
  const again = new TestSink(1000);
  pfs.readdir(ctx, d, dir.fh, 0n, true, again);
  const f5b = again.entries.find((e) => e.name === 'f5')!.entry!.nodeid;
  t.equal(pfs.getattr(ctx, f5b, null).stat.readBigUInt64LE(STAT.ino), fs.statSync(path.join(share, 'd', 'f5'), { bigint: true }).ino, 'the new f5 is the new file');
  t.not(f5b, f5, 'under a nodeid of its own');
  pfs.releasedir(ctx, d, dir.fh);
  t.end();
});
