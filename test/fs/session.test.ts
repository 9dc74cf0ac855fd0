// FsSession: counters, mutations and their records, snapshot round trip, validation of
// corrupted snapshots, journal replay.
import t from 'tap';
import { FsSession, FsSessionError, SESSION_VERSION, type FsMutation, type SessionSnapshot } from '../../worker/fs/session';
import * as R from '../../worker/state/records';

const DIR = 0o040000;
const REG = 0o100000;

function sample(): FsSession {
  const s = new FsSession({ dev: 2049n, ino: 2n });
  const a = s.addInode({ dev: 2049n, ino: 100n, generation: 0, fileType: REG });
  const d = s.addInode({ dev: 2049n, ino: 0xfffffffffffffff0n, generation: 7, fileType: DIR });
  s.addLookup(a.nodeid, 2);
  s.openFile(a.nodeid, 0o102);
  const dir = s.openDir(d.nodeid);
  s.setDirPosition(dir.fh, 0x7fffffffffffffffn);
  return s;
}

t.test('counters start at 2, ids never reused, records named by convention', (t) => {
  const s = new FsSession({ dev: 1n, ino: 2n });
  t.equal(s.root.nodeid, 1);
  t.equal(s.root.fdName, 'root');
  t.equal(s.root.lookupCount, 1);
  const a = s.addInode({ dev: 1n, ino: 10n, generation: 0, fileType: REG });
  t.equal(a.nodeid, 2);
  t.equal(a.fdName, 'inode.2');
  t.equal(a.lookupCount, 1);
  t.equal(s.findInode(1n, 10n)!.nodeid, 2, 'dedup index');
  t.throws(() => s.addInode({ dev: 1n, ino: 10n, generation: 0, fileType: REG }), FsSessionError, 'duplicate (dev, ino)');
  t.equal(s.forget(2, 1)!.nodeid, 2, 'dropped at 0');
  t.equal(s.findInode(1n, 10n), undefined);
  const b = s.addInode({ dev: 1n, ino: 10n, generation: 0, fileType: REG });
  t.equal(b.nodeid, 3, 'nodeid not reused');
  const f = s.openFile(3, 0);
  t.equal(f.fh, 2);
  t.equal(f.fdName, 'file.2');
  const d = s.openDir(1);
  t.equal(d.fh, 3, 'files and dirs share the fh counter');
  t.equal(d.fdName, 'dir.3');
  t.equal(d.position, 0n);
  s.closeFile(2);
  s.closeDir(3);
  t.equal(s.openFile(3, 0).fh, 4, 'fh not reused');
  t.equal(s.forget(1, 100), null, 'root never dropped');
  t.equal(s.root.lookupCount, 0);
  t.throws(() => s.addLookup(99), FsSessionError, 'unknown nodeid');
  t.throws(() => s.closeFile(99), FsSessionError);
  t.throws(() => s.closeDir(4), FsSessionError, 'a file fh is not a dir fh');
  t.throws(() => s.setDirPosition(4, 1n), FsSessionError);
  t.throws(() => s.openFile(42, 0), FsSessionError, 'open of an unknown inode');
  const dropped = s.reset();
  t.same(dropped.sort(), ['file.4', 'inode.3']);
  t.equal(s.inodeCount, 1);
  t.equal(s.fileCount, 0);
  t.equal(s.root.lookupCount, 1);
  t.equal(s.addInode({ dev: 1n, ino: 11n, generation: 0, fileType: REG }).nodeid, 4, 'counters survive reset');
  t.end();
});

t.test('snapshot round trip through JSON', (t) => {
  const s = sample();
  const snap = s.toSnapshot();
  t.equal(snap.version, SESSION_VERSION);
  const json = JSON.parse(JSON.stringify(snap)) as unknown;
  const r = FsSession.fromSnapshot(json);
  t.same(r.toSnapshot(), snap, 'identical after the round trip');
  t.equal(r.getInode(3)!.ino, 0xfffffffffffffff0n, 'u64 ino exact');
  t.equal(r.getDir(3)!.position, 0x7fffffffffffffffn, 's64 cookie exact');
  t.equal(r.findInode(2049n, 100n)!.lookupCount, 3);
  t.equal(r.addInode({ dev: 5n, ino: 5n, generation: 0, fileType: REG }).nodeid, 4, 'counters restored');
  t.equal(r.openFile(2, 0).fh, 4);
  t.end();
});

t.test('journal replay: snapshot + recorded mutations rebuild the session', (t) => {
  const s = sample();
  const base = s.toSnapshot();
  const journal: FsMutation[] = [];
  // Through the journal's own encoding, as the worker records them.
  s.onMutation((m) => {
    const buf = Buffer.alloc(1 + R.MAX_MUTATION_SIZE);
    const d = R.decodePayload(buf.subarray(0, R.putStandaloneMutation(buf, 0, m)));
    if (d.t !== 'mutation') throw new Error('not a mutation record');
    journal.push(d.m);
  });
  const n = s.addInode({ dev: 9n, ino: 9n, generation: 0, fileType: REG });
  s.addLookup(n.nodeid, 4);
  s.forget(n.nodeid, 2);
  s.forget(2, 3);
  const f = s.openFile(n.nodeid, 2);
  s.closeFile(2);
  s.setDirPosition(3, -5n);
  s.closeDir(3);
  s.openDir(1);
  void f;
  t.same(journal.map((m) => m.op), ['addInode', 'addLookup', 'forget', 'forget', 'openFile', 'closeFile', 'setDirPosition', 'closeDir', 'openDir']);
  const r = FsSession.fromSnapshot(base);
  for (const m of journal) r.apply(m);
  t.same(r.toSnapshot(), s.toSnapshot());
  t.throws(() => r.apply({ op: 'addInode', nodeid: 2, dev: '1', ino: '1', generation: 0, fileType: REG }), FsSessionError, 'replayed nodeid reuse');
  t.throws(() => r.apply({ op: 'openFile', fh: 2, nodeid: 1, flags: 0 }), FsSessionError, 'replayed fh reuse');
  t.throws(() => r.apply({ op: 'bogus' } as unknown as FsMutation), FsSessionError);
  t.throws(() => r.apply({ op: 'setDirPosition', fh: 6, position: '99999999999999999999' }), FsSessionError);
  t.end();
});

t.test('corrupted snapshots are rejected with FsSessionError', (t) => {
  const good = sample().toSnapshot();
  const clone = (): SessionSnapshot => JSON.parse(JSON.stringify(good)) as SessionSnapshot;
  type Mut = (s: SessionSnapshot) => unknown;
  const cases: [string, Mut][] = [
    ['not an object', () => 'nope'],
    ['null', () => null],
    ['array', () => []],
    ['version 2', (s) => { (s as { version: number }).version = 2; }],
    ['version missing', (s) => { delete (s as Partial<SessionSnapshot>).version; }],
    ['unknown field', (s) => { (s as unknown as Record<string, unknown>).extra = 1; }],
    ['nextNodeId float', (s) => { s.nextNodeId = 4.5; }],
    ['nextNodeId 1', (s) => { s.nextNodeId = 1; }],
    ['nextFh string', (s) => { (s as unknown as Record<string, unknown>).nextFh = '4'; }],
    ['inodes not array', (s) => { (s as unknown as Record<string, unknown>).inodes = {}; }],
    ['no root', (s) => { s.inodes = s.inodes.filter((i) => i.nodeid !== 1); }],
    ['root not a dir', (s) => { s.inodes[0].fileType = REG; }],
    ['duplicate nodeid', (s) => { s.inodes.push({ ...s.inodes[1], ino: '12345' }); }],
    ['duplicate dev/ino', (s) => { s.inodes[2].ino = s.inodes[1].ino; }],
    ['nodeid beyond counter', (s) => { s.inodes[1].nodeid = 50; s.inodes[1].fdName = 'inode.50'; }],
    ['nodeid 0', (s) => { s.inodes[1].nodeid = 0; }],
    ['negative nodeid', (s) => { s.inodes[1].nodeid = -2; }],
    ['bad fdName', (s) => { s.inodes[1].fdName = 'inode.7'; }],
    ['root fdName', (s) => { s.inodes[0].fdName = 'inode.1'; }],
    ['dev not decimal', (s) => { s.inodes[1].dev = '0x801'; }],
    ['dev number', (s) => { (s.inodes[1] as unknown as Record<string, unknown>).dev = 2049; }],
    ['ino above u64', (s) => { s.inodes[1].ino = '18446744073709551616'; }],
    ['ino negative', (s) => { s.inodes[1].ino = '-1'; }],
    ['ino leading zero', (s) => { s.inodes[1].ino = '0100'; }],
    ['lookupCount 0', (s) => { s.inodes[1].lookupCount = 0; }],
    ['lookupCount negative', (s) => { s.inodes[1].lookupCount = -1; }],
    ['lookupCount NaN', (s) => { s.inodes[1].lookupCount = NaN; }],
    ['generation above u32', (s) => { s.inodes[1].generation = 2 ** 32; }],
    ['bad fileType', (s) => { s.inodes[1].fileType = 0o777; }],
    ['inode missing field', (s) => { delete (s.inodes[1] as Partial<typeof s.inodes[1]>).fileType; }],
    ['inode extra field', (s) => { (s.inodes[1] as unknown as Record<string, unknown>).path = '/etc'; }],
    ['inode null', (s) => { (s.inodes as unknown[])[1] = null; }],
    ['fh duplicate between files and dirs', (s) => { s.dirs[0].fh = s.files[0].fh; s.dirs[0].fdName = `dir.${s.files[0].fh}`; }],
    ['fh duplicate file', (s) => { s.files.push({ ...s.files[0] }); }],
    ['fh beyond counter', (s) => { s.files[0].fh = 10; s.files[0].fdName = 'file.10'; }],
    ['fh 1', (s) => { s.files[0].fh = 1; s.files[0].fdName = 'file.1'; }],
    ['file fdName', (s) => { s.files[0].fdName = 'dir.2'; }],
    ['file nodeid beyond counter', (s) => { s.files[0].nodeid = 99; }],
    ['file flags float', (s) => { s.files[0].flags = 1.5; }],
    ['file flags too big', (s) => { s.files[0].flags = 2 ** 33; }],
    ['dir position not a string', (s) => { (s.dirs[0] as unknown as Record<string, unknown>).position = 5; }],
    ['dir position above s64', (s) => { s.dirs[0].position = '9223372036854775808'; }],
    ['dir position garbage', (s) => { s.dirs[0].position = '12abc'; }],
    ['dir fdName', (s) => { s.dirs[0].fdName = 'file.3'; }],
  ];
  for (const [name, mut] of cases) {
    const s = clone();
    const r = mut(s);
    const input = r === undefined ? s : r;
    t.throws(() => FsSession.fromSnapshot(input), FsSessionError, name);
  }
  t.doesNotThrow(() => FsSession.fromSnapshot(clone()), 'the uncorrupted snapshot loads');
  // An open file may refer to an inode the guest already forgot (allowed by FUSE).
  const s = clone();
  s.inodes = s.inodes.filter((i) => i.nodeid !== 2);
  t.equal(FsSession.fromSnapshot(s).getFile(2)!.nodeid, 2, 'dangling handle nodeid accepted');
  t.end();
});
