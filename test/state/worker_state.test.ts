// The request journal: binary records (fuzzed), group commit, rollback of requests without an
// outcome, and loading of schema-1 files written by an older worker.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { appendAsAddon } from '../helpers/foreign_record';
import { FsSession, type FsMutation, type InodeRecord } from '../../worker/fs/session';
import { DATA_START, StateJournal, StateFileError, encodeRecord } from '../../worker/state/journal';
import * as R from '../../worker/state/records';
import { SCHEMA_READER, SCHEMA_VERSION, StateStore, loadState } from '../../worker/state/state_store';
import { checkVhostState } from '../../worker/state/control_records';
import { requestKey, type ServedLookup } from '../../worker/fuse/exactly_once';

const FUSE_LOOKUP = 1, FUSE_FORGET = 2, FUSE_MKDIR = 9;

/** A LOOKUP reply as the native path writes it: out header, then fuse_entry_out (nodeid at 16). */
function lookupReply(nodeid: number, unique: number): Buffer {
  const b = Buffer.alloc(144, 0x5a);
  b.writeUInt32LE(144, 0);
  b.writeInt32LE(0, 4);
  b.writeBigUInt64LE(BigInt(unique), 8);
  b.writeBigUInt64LE(BigInt(nodeid), 16);
  return b;
}

const SAMPLE_LOOKUPS: R.ServedLookupEntry[] = [
  { head: 3, counter: 7n, reply: lookupReply(2, 100) },
  { head: 65535, counter: 2n ** 64n - 1n, reply: lookupReply(Number.MAX_SAFE_INTEGER, 101) },
];

const SAMPLE_MUTATIONS: FsMutation[] = [
  { op: 'addInode', nodeid: 2, dev: 66306n, ino: 18446744073709551615n, generation: 7, fileType: 0o100000 },
  { op: 'addLookup', nodeid: 2, count: 3 },
  { op: 'forget', nodeid: 2, count: Number.MAX_SAFE_INTEGER },
  { op: 'openFile', fh: 3, nodeid: 2, flags: 0o102 },
  { op: 'closeFile', fh: 3 },
  { op: 'openDir', fh: 4, nodeid: 1 },
  { op: 'setDirPosition', fh: 4, position: '-9223372036854775808' },
  { op: 'closeDir', fh: 4 },
  { op: 'reset' },
  { op: 'addInode', nodeid: 5, dev: 66306n, ino: 12n, generation: 0, fileType: 0o040000,
    handle: { mountId: 2 ** 40, handleType: -2, handle: Buffer.alloc(128, 0xa5) } },
  { op: 'addInode', nodeid: 6, dev: 66306n, ino: 13n, generation: 0, fileType: 0o100000,
    handle: { mountId: 27, handleType: 1, handle: Buffer.from('0102030405060708', 'hex') } },
];

function encode(size: number, put: (buf: Buffer, at: number) => number): Buffer {
  const buf = Buffer.alloc(size + 16);
  return buf.subarray(0, put(buf, 0));
}

const samplePayloads = (): Buffer[] => [
  encode(R.outcomeSize('0.5.1.77', Buffer.from('reply bytes'), SAMPLE_MUTATIONS.length),
    (b, at) => R.putOutcome(b, at, '0.5.1.77', FUSE_LOOKUP, Buffer.from('reply bytes'), SAMPLE_MUTATIONS)),
  encode(R.intentSize('1.2.3.4', R.encodeExtra({ src: 5n, dst: null })),
    (b, at) => R.putIntent(b, at, '1.2.3.4', 12, 1_700_000_000_123, R.encodeExtra({ src: 5n, dst: null }))),
  encode(R.intentSize('k', null), (b, at) => R.putIntent(b, at, 'k', FUSE_MKDIR, 5, null)),
  encode(32, (b, at) => R.putDeath(b, at, '0.1.2.3')),
  ...SAMPLE_MUTATIONS.map((m) => encode(1 + R.MAX_MUTATION_SIZE, (b, at) => R.putStandaloneMutation(b, at, m))),
  R.genericPayload({ t: 'init', init: null }),
  encode(R.lookupsSize(SAMPLE_LOOKUPS), (b, at) => R.putLookups(b, at, 4, SAMPLE_LOOKUPS)),
];

t.test('records round-trip', async (t) => {
  const [outcome, intent, bare, death, ...rest] = samplePayloads();
  t.same(R.decodePayload(outcome!), { t: 'outcome', key: '0.5.1.77', opcode: FUSE_LOOKUP, reply: Buffer.from('reply bytes'), mutations: SAMPLE_MUTATIONS });
  t.same(R.decodePayload(intent!), { t: 'intent', key: '1.2.3.4', opcode: 12, tsMs: 1_700_000_000_123, extra: { src: 5n, dst: null } });
  t.same(R.decodePayload(bare!), { t: 'intent', key: 'k', opcode: FUSE_MKDIR, tsMs: 5, extra: null });
  t.same(R.decodePayload(death!), { t: 'death', key: '0.1.2.3' });
  SAMPLE_MUTATIONS.forEach((m, i) => t.same(R.decodePayload(rest[i]!), { t: 'mutation', m }, `mutation ${m.op}`));
  t.same(R.decodePayload(rest[SAMPLE_MUTATIONS.length]!), { t: 'generic', value: { t: 'init', init: null } });
  t.same(R.decodePayload(rest[SAMPLE_MUTATIONS.length + 1]!), { t: 'lookups', lookups: [
    { key: '4.3.7', reply: SAMPLE_LOOKUPS[0]!.reply, nodeid: 2 },
    { key: `4.65535.${2n ** 64n - 1n}`, reply: SAMPLE_LOOKUPS[1]!.reply, nodeid: Number.MAX_SAFE_INTEGER },
  ] });
  for (const m of SAMPLE_MUTATIONS) {
    const n = R.putMutation(Buffer.alloc(R.MAX_MUTATION_SIZE), 0, m);
    t.ok(n <= R.MAX_MUTATION_SIZE, `${m.op} fits MAX_MUTATION_SIZE (${n})`);
  }
});

t.test('an inode with a file handle is its own mutation kind; an unknown kind is refused by name', async (t) => {
  const m = SAMPLE_MUTATIONS.find((x) => x.op === 'addInode' && x.handle)!;
  const p = encode(1 + R.MAX_MUTATION_SIZE, (b, at) => R.putStandaloneMutation(b, at, m));
  t.equal(p[1], 11, 'kind 11 (addInodeHandle): kinds are only appended');
  const noHandle = encode(1 + R.MAX_MUTATION_SIZE, (b, at) => R.putStandaloneMutation(b, at, SAMPLE_MUTATIONS[0]!));
  t.equal(noHandle[1], 0, 'an inode without a handle is written as before (older workers read it)');
  const future = Buffer.from(p);
  future[1] = 12;
  t.throws(() => R.decodePayload(future), { name: 'UnknownRecordError', message: /unknown mutation kind 12/ });
  const tooLong = { ...m, handle: { mountId: 1, handleType: 1, handle: Buffer.alloc(129) } } as FsMutation;
  t.throws(() => R.putMutation(Buffer.alloc(512), 0, tooLong), RangeError);
});

t.test('a journal naming inodes by handles loads (snapshot version 3 and addInodeHandle records)', async (t) => {
  const dir = t.testdir();
  const file = path.join(dir, 'state');
  const session = new FsSession({ dev: 1n, ino: 2n });
  const h = (x: number): { mountId: number; handleType: number; handle: Buffer } => ({ mountId: 3, handleType: 1, handle: Buffer.alloc(12, x) });
  session.addInode({ dev: 1n, ino: 10n, generation: 0, fileType: 0o040000, handle: h(1) });
  const store = new StateStore(file, null, null);
  store.recordNewSession(session);
  session.onMutation(store.onFsMutation);
  session.addInode({ dev: 1n, ino: 11n, generation: 0, fileType: 0o100000, handle: h(2) });
  session.addInode({ dev: 1n, ino: 10n, generation: 0, fileType: 0o100000, handle: h(3) }); // number 10 reused
  session.addInode({ dev: 1n, ino: 12n, generation: 0, fileType: 0o100000 });
  store.close();
  const loaded = loadState(file).fs!;
  t.equal(loaded.inodeCount, 5);
  t.same(loaded.getInode(3)!.handle, h(2));
  t.equal(loaded.findInode(1n, 10n)!.nodeid, 4, 'the reused number names the newer inode');
  t.equal(loaded.getInode(5)!.handle, null);
  t.same(loaded.keeperFdNames().sort(), ['inode.5', 'root']);
});

t.test('a lookups record that names no valid nodeid, or no lookup, is refused', async (t) => {
  const one = (reply: Buffer): Buffer => encode(R.lookupsSize([{ head: 1, counter: 1n, reply }]), (b, at) => R.putLookups(b, at, 0, [{ head: 1, counter: 1n, reply }]));
  t.throws(() => R.decodePayload(one(lookupReply(0, 1))), { name: 'RecordDecodeError', message: /nodeid out of range/ });
  const big = lookupReply(1, 1);
  big.writeBigUInt64LE(2n ** 53n, 16);
  t.throws(() => R.decodePayload(one(big)), { name: 'RecordDecodeError', message: /nodeid out of range/ });
  const short = Buffer.from([R.TAG_LOOKUPS, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 1, 2, 3, 4]);
  t.throws(() => R.decodePayload(short), { name: 'RecordDecodeError', message: /names no nodeid/ });
  t.throws(() => R.decodePayload(Buffer.from([R.TAG_LOOKUPS, 0, 0, 0, 0])), { name: 'RecordDecodeError', message: /without lookups/ });
  const lying = one(lookupReply(1, 1));
  lying.writeUInt16LE(2, 3); // says two entries, holds one
  t.throws(() => R.decodePayload(lying), { name: 'RecordDecodeError', message: /record ends inside/ });
  t.throws(() => R.putLookups(Buffer.alloc(64), 0, 0, []), RangeError, 'an empty batch is never written');
  t.throws(() => R.putLookups(Buffer.alloc(64), 0, 0, [{ head: 1, counter: 1n, reply: Buffer.alloc(23) }]), RangeError);
});

t.test('fuzz: truncated, corrupted and random payloads only ever give RecordDecodeError', async (t) => {
  const seconds = Number(process.env.FUZZ_SECONDS ?? '2');
  const deadline = Date.now() + seconds * 1000;
  const samples = samplePayloads();
  let runs = 0, rejected = 0;
  const check = (p: Buffer): void => {
    runs++;
    try {
      R.decodePayload(p);
    } catch (e) {
      if (!(e instanceof R.RecordDecodeError)) throw new Error(`${(e as Error).name}: ${(e as Error).message} for ${p.toString('hex').slice(0, 120)}`);
      rejected++;
    }
  };
  for (const s of samples) for (let n = 0; n < s.length; n++) check(s.subarray(0, n));
  while (Date.now() < deadline) {
    const s = Buffer.from(samples[runs % samples.length]!);
    for (let k = 0; k < 1 + (runs % 4); k++) s[(Math.random() * s.length) | 0] = (Math.random() * 256) | 0;
    check(s);
    check(Buffer.concat([Buffer.of(runs % 6), randomBytes(runs % 80)]));
  }
  t.ok(runs > 1000, `${runs} payloads decoded or rejected (${rejected} rejected)`);
  t.ok(rejected > 0, 'malformed payloads are rejected');
});

/** A session whose mutations go to a fresh store, as in the worker. */
function setup(t: { testdir: () => string }): { file: string; store: StateStore; session: FsSession } {
  const file = path.join(t.testdir(), 'state');
  const store = new StateStore(file, null, null);
  const session = new FsSession({ dev: 1n, ino: 2n });
  store.recordNewSession(session);
  session.onMutation(store.onFsMutation);
  return { file, store, session };
}

/** One LOOKUP through the ledger as the FUSE server drives it: begin, the session change,
 * end of the synchronous part, the staged outcome (not committed). */
function stagedLookup(store: StateStore, session: FsSession, key: string, ino: bigint, reply: Buffer): InodeRecord {
  store.requests.beginRequest(key, FUSE_LOOKUP, false, null);
  const rec = session.addInode({ dev: 1n, ino, generation: 0, fileType: 0o100000 });
  store.requests.endSync();
  store.requests.outcome(key, reply);
  return rec;
}

t.test('group commit: an outcome and its session changes are durable only after commitOutcomes', async (t) => {
  const { file, store, session } = setup(t);
  const inode = stagedLookup(store, session, '0.1.1.10', 99n, Buffer.from('lookup reply'));
  let st = loadState(file);
  t.equal(st.fs!.getInode(inode.nodeid), undefined, 'before the commit a crash rolls the lookup back');
  t.equal(st.ops.get('0.1.1.10'), undefined, 'and it has no recorded reply: it runs again');
  t.same(store.durability.commit(), ['0.1.1.10']);
  st = loadState(file);
  t.equal(st.fs!.getInode(inode.nodeid)?.ino, 99n, 'after the commit the inode is in the state');
  t.same(st.ops.get('0.1.1.10')?.reply, Buffer.from('lookup reply'), 'and the reply is replayed, not re-run');
  t.equal(st.ops.get('0.1.1.10')?.opcode, FUSE_LOOKUP, 'an idempotent request needs no intent record');
  store.close();
});

t.test('an intent is durable at once; its request without an outcome is ambiguous and rolled back', async (t) => {
  const { file, store, session } = setup(t);
  const before = Date.now();
  store.requests.beginRequest('0.2.1.11', FUSE_MKDIR, true, null);
  session.addInode({ dev: 1n, ino: 100n, generation: 0, fileType: 0o040000 });
  store.requests.endSync();
  const st = loadState(file);
  const op = st.ops.get('0.2.1.11');
  t.equal(op?.opcode, FUSE_MKDIR);
  t.equal(op?.reply, null, 'no outcome: the request settles against the filesystem when resubmitted');
  t.ok(op !== undefined && op.ts >= BigInt(before) * 1_000_000n, 'the intent carries its wall-clock time');
  t.equal(st.fs!.inodeCount, 1, 'its session change is not in the state');
  store.close();
});

t.test('session changes outside a request are journaled at once, after staged outcomes', async (t) => {
  const { file, store, session } = setup(t);
  const a = stagedLookup(store, session, '0.3.1.12', 101n, Buffer.alloc(0));
  session.forget(a.nodeid, 1); // e.g. a reset path: not a request's own change
  const st = loadState(file);
  t.equal(st.fs!.getInode(a.nodeid), undefined, 'the staged outcome went first, then the forget');
  t.same(st.ops.get('0.3.1.12')?.reply, Buffer.alloc(0));
  store.close();
});

/** Payload tags of the committed records after the first (the session's snapshot). */
function recordTags(file: string): number[] {
  const j = StateJournal.open(file, SCHEMA_READER);
  try {
    return j.payloads(DATA_START).slice(1).map((p) => p[0]!);
  } finally {
    j.close();
  }
}

t.test('native LOOKUPs of a ring turn: one record, replayed as outcomes with one lookup each, in order', async (t) => {
  const { file, store, session } = setup(t);
  const a = session.addInode({ dev: 1n, ino: 70n, generation: 0, fileType: 0o100000 }); // count 1
  const served = (head: number, counter: bigint, nodeid: number): ServedLookup =>
    ({ key: requestKey(0, head, counter), head, counter, nodeid, reply: lookupReply(nodeid, head) });
  const add = (nodeid: number): boolean => {
    session.addLookup(nodeid);
    return true;
  };
  store.requests.servedLookups(0, [served(3, 7n, a.nodeid), served(4, 8n, a.nodeid)], add);
  t.equal(session.getInode(a.nodeid)!.lookupCount, 3, 'the session counts them at once');
  let st = loadState(file);
  t.equal(st.fs!.getInode(a.nodeid)!.lookupCount, 1, 'before the commit a crash rolls them back');
  t.equal(st.ops.get('0.3.7'), undefined, 'and they run again');
  t.same(store.durability.commit(), ['0.3.7', '0.4.8']);
  st = loadState(file);
  t.equal(st.fs!.getInode(a.nodeid)!.lookupCount, 3, 'after the commit both lookups are in the state');
  t.same(st.ops.get('0.4.8')?.reply, lookupReply(a.nodeid, 4), 'and each reply is replayed, not re-run');
  t.equal(st.ops.get('0.3.7')?.opcode, FUSE_LOOKUP);
  t.same(recordTags(file).filter((tag) => tag !== R.TAG_MUTATION && tag !== R.TAG_GENERIC), [R.TAG_LOOKUPS], 'one record for the batch, no outcome records');

  // A FORGET of all of them, journaled in the same commit after another batch: replayed after it.
  store.requests.servedLookups(0, [served(5, 9n, a.nodeid)], add);
  store.requests.beginRequest('0.6.10', FUSE_FORGET, false, null);
  session.forget(a.nodeid, 4);
  store.requests.endSync();
  store.requests.outcome('0.6.10', Buffer.alloc(0));
  // A lookup the session refuses (cannot happen: logged) is a plain outcome without the count.
  store.requests.servedLookups(0, [served(7, 11n, 999)], () => false);
  store.durability.commit();
  st = loadState(file);
  t.equal(st.fs!.getInode(a.nodeid), undefined, 'lookup, then forget of 4: the inode is gone, no replay error');
  t.same(st.ops.get('0.7.11')?.reply, lookupReply(999, 7), 'the refused lookup still has its reply');
  t.same(recordTags(file).slice(-3), [R.TAG_LOOKUPS, R.TAG_OUTCOME, R.TAG_OUTCOME]);
  store.close();
});

t.test('a schema-1 journal (msgpack records of an older worker) still loads', async (t) => {
  const file = path.join(t.testdir(), 'state');
  const session = new FsSession({ dev: 1n, ino: 2n });
  const j = StateJournal.create(file, 1, 0n, [encodeRecord({ t: 'snapshot', vhost: null, init: null, fs: session.toSnapshot(), ctlSeq: 0, pending: null, ops: [] })]);
  j.append({ t: 'op', k: 'a', opcode: FUSE_LOOKUP, ts: 5n, x: null });
  j.append({ t: 'fs', k: 'a', m: { op: 'addInode', nodeid: 2, dev: '1', ino: '50', generation: 0, fileType: 0o100000 } });
  j.append({ t: 'op-done', k: 'a', r: Buffer.from('r') });
  j.append({ t: 'op', k: 'b', opcode: FUSE_MKDIR, ts: 6n, x: null });
  j.append({ t: 'fs', k: 'b', m: { op: 'addInode', nodeid: 3, dev: '1', ino: '51', generation: 0, fileType: 0o040000 } });
  j.close();
  const st = loadState(file);
  t.equal(st.fs!.getInode(2)?.ino, 50n, 'a finished request is applied');
  t.equal(st.fs!.getInode(3), undefined, 'an unfinished one is rolled back');
  t.equal(st.discardedMutations, 1);
  t.same(st.ops.get('a')?.reply, Buffer.from('r'));
  t.equal(SCHEMA_VERSION, 3, 'this build reads schema 3');
});

t.test('a corrupt record in a committed journal is a StateFileError naming the file', async (t) => {
  const { file, store } = setup(t);
  store.close();
  const j = StateJournal.open(file, SCHEMA_READER);
  const bad = Buffer.from([R.TAG_OUTCOME, 1, 0x6b, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 42]); // mutation kind 42
  j.appendEncoded(bad);
  j.close();
  // A kind this build does not know: refused as a newer writer's (a StateFileError subclass).
  let err: unknown = null;
  try { loadState(file); } catch (e) { err = e; }
  t.ok(err instanceof StateFileError, 'a StateFileError');
  t.match((err as Error).message, file, 'naming the file');
  t.throws(() => loadState(file), /unknown mutation kind 42/);
});

t.test('compaction keeps staged outcomes (committed first) and later records append to the new file', async (t) => {
  const { file, store, session } = setup(t);
  store.setSources({ vhost: () => null, init: () => null, fs: () => session });
  const a = stagedLookup(store, session, '0.4.1.20', 200n, Buffer.from('staged'));
  store.compact();
  let st = loadState(file);
  t.equal(st.fs!.getInode(a.nodeid)?.ino, 200n, 'the staged request is in the snapshot');
  t.same(st.ops.get('0.4.1.20')?.reply, Buffer.from('staged'), 'with its reply, for a replay');
  const b = stagedLookup(store, session, '0.4.2.21', 201n, Buffer.from('after'));
  store.durability.commit();
  st = loadState(file);
  t.equal(st.fs!.getInode(b.nodeid)?.ino, 201n, 'a request after the compaction is in the new journal');
  t.equal(st.fs!.inodeCount, 3);
  store.close();
});

t.test('the journal\'s mapping observer (the addon\'s intents) follows compactions: the last mapping it hears of is the live one', async (t) => {
  const { file, store, session } = setup(t);
  store.setSources({ vhost: () => null, init: () => null, fs: () => session });
  const heard: Array<ArrayBuffer | null> = [];
  store.onJournalMapped((m) => heard.push(m));
  t.equal(heard.length, 1, 'told of the current mapping at once');
  stagedLookup(store, session, '0.6.1.40', 400n, Buffer.from('one'));
  store.compact();
  t.ok(heard.length >= 2 && heard.at(-1) !== null && heard.at(-1) !== heard[0], 'after a compaction: the fresh file\'s mapping, not null');
  // A record written through that mapping, as the addon writes its intents, is in the live file.
  appendAsAddon(heard.at(-1)!, R.genericPayload({ t: 'init', init: null }));
  const two = stagedLookup(store, session, '0.6.2.41', 401n, Buffer.from('two'));
  store.durability.commit();
  const st = loadState(file);
  t.equal(st.fs!.getInode(two.nodeid)?.ino, 401n, 'our next record went after it, in the same file');
  store.onJournalMapped(null);
  t.equal(heard.at(-1), null, 'taken off: told null');
  store.close();
});

t.test('a compaction that cannot create its file (EISDIR here; EMFILE or ENOMEM on a short host) changes nothing and is retried', async (t) => {
  const { file, store, session } = setup(t);
  store.setSources({ vhost: () => null, init: () => null, fs: () => session });
  const a = stagedLookup(store, session, '0.5.1.30', 300n, Buffer.from('before'));
  // The new file is created beside the old one: a directory in its place makes the create fail.
  fs.mkdirSync(`${file}.new`);
  t.doesNotThrow(() => store.compact(), 'the failure is not thrown');
  let st = loadState(file);
  t.equal(st.fs!.getInode(a.nodeid)?.ino, 300n, 'the old journal holds everything (the staged outcome was committed)');
  const b = stagedLookup(store, session, '0.5.2.31', 301n, Buffer.from('during'));
  store.durability.commit();
  st = loadState(file);
  t.equal(st.fs!.getInode(b.nodeid)?.ino, 301n, 'requests after the failure append to the old journal');
  fs.rmdirSync(`${file}.new`);
  store.compact();
  st = loadState(file);
  t.equal(st.fs!.inodeCount, 3, 'the retried compaction keeps every inode');
  t.notOk(fs.existsSync(`${file}.new`), 'and renamed its file into place');
  store.close();
});

t.test('a resumed worker appends to the journal it loaded (no rewrite), unless told to rewrite', async (t) => {
  const { file, store, session } = setup(t);
  const a = stagedLookup(store, session, '0.5.1.30', 300n, Buffer.from('one'));
  store.durability.commit();
  store.requests.beginRequest('0.5.2.31', FUSE_MKDIR, true, null); // dies here: intent only
  store.close();
  const size = StateJournal.open(file, SCHEMA_READER);
  const recordsBefore = size.payloads().length;
  size.close();

  const loaded = loadState(file);
  const next = new StateStore(file, null, loaded);
  const reopened = StateJournal.open(file, SCHEMA_READER);
  t.equal(reopened.payloads().length, recordsBefore, 'nothing rewritten at start');
  reopened.close();
  loaded.fs!.onMutation(next.onFsMutation);
  const b = stagedLookup(next, loaded.fs!, '0.5.3.32', 301n, Buffer.from('two'));
  next.durability.commit();
  next.close();
  const st = loadState(file);
  t.equal(st.fs!.getInode(a.nodeid)?.ino, 300n, 'the first worker\'s request');
  t.equal(st.fs!.getInode(b.nodeid)?.ino, 301n, 'the second worker\'s request, appended');
  t.equal(st.ops.get('0.5.2.31')?.reply, null, 'the ambiguous request is still ambiguous');

  const rewritten = new StateStore(file, null, loadState(file), 0, true);
  rewritten.close();
  const j = StateJournal.open(file, SCHEMA_READER);
  t.equal(j.payloads().length, 1, 'rewrite: one snapshot record');
  j.close();
  const again = loadState(file);
  t.equal(again.fs!.inodeCount, 3, 'the snapshot holds the same session');
  t.same(again.ops.get('0.5.3.32')?.reply, Buffer.from('two'));
});

t.test('compact session snapshots (binary inode table) round-trip and reject malformed tables', async (t) => {
  const s = new FsSession({ dev: 7n, ino: 2n });
  for (let i = 0; i < 100; i++) s.addInode({ dev: 7n, ino: BigInt(1000 + i), generation: i, fileType: 0o100000 });
  s.addLookup(5, 3);
  const snap = s.toCompactSnapshot();
  const back = FsSession.fromSnapshot(snap);
  t.same(back.toSnapshot(), s.toSnapshot(), 'same session');
  const bad = (mutate: (b: Buffer) => void): unknown => {
    const table = Buffer.from(snap.inodeTable);
    mutate(table);
    return { ...snap, inodeTable: table };
  };
  t.throws(() => FsSession.fromSnapshot(bad((b) => b.writeDoubleLE(1e300, 40))), /nodeid/);
  t.throws(() => FsSession.fromSnapshot(bad((b) => b.writeBigUInt64LE(1000n, 2 * 40 + 16))), /duplicate \(dev, ino\)/);
  t.throws(() => FsSession.fromSnapshot(bad((b) => b.writeUInt32LE(5, 40 + 28))), /file type/);
  t.throws(() => FsSession.fromSnapshot(bad((b) => b.writeDoubleLE(0, 40 + 32))), /lookupCount/);
  t.throws(() => FsSession.fromSnapshot({ ...snap, inodeTable: snap.inodeTable.subarray(0, 39) }), /whole number of rows/);
});

t.test('vhost state validation: bad addresses of a stopped vring are forgotten, of a running one refused', async (t) => {
  const vring = (over: Record<string, unknown> = {}): Record<string, unknown> =>
    ({ size: 128, descUser: 0x1000, availUser: 0x2000, usedUser: 0x3000, addrSet: true, base: 0, enabled: true, kicked: true, ...over });
  const state = (vrings: unknown[], running: number[], regions: unknown[] = []): Record<string, unknown> => ({
    ownerSet: true, ackedFeatures: 1n << 32n, ackedProtocolFeatures: 8n, featuresSet: true,
    regions, nextSlot: 2, vrings, inflight: null, running,
  });
  // What an older worker journaled after a refused SET_VRING_ADDR above 2^53 on stopped queue 1.
  const poisoned = state([vring(), vring({ descUser: Number.NaN, kicked: false })], [0]);
  const ok = checkVhostState('test', poisoned);
  t.same(ok.vrings[1], { ...vring({ kicked: false }), descUser: 0, availUser: 0, usedUser: 0, addrSet: false },
    'a stopped vring with unusable addresses loads as one without addresses');
  t.same(ok.vrings[0], vring(), 'the running one is untouched');
  t.throws(() => checkVhostState('test', state([vring(), vring({ usedUser: Number.NaN })], [0, 1])), StateFileError,
    'unusable addresses of a running vring are refused');
  // Slots are fd names: large ones are fine, two regions in one are not.
  const region = (slot: number, gpa: number): Record<string, unknown> => ({ slot, guestPhysAddr: gpa, size: 4096, userspaceAddr: gpa, mmapOffset: 0 });
  t.ok(checkVhostState('test', { ...state([vring()], [0], [region(2 ** 21, 0)]), nextSlot: 2 ** 21 + 1 }), 'a slot number above 2^20 loads');
  t.throws(() => checkVhostState('test', state([vring()], [0], [region(3, 0), region(3, 8192)])), StateFileError, 'a slot used twice is refused');
});

t.test('a file says schema 2 until its first TAG_LOOKUPS record; a drain leaves schema 2 again (a planned downgrade reads it)', async (t) => {
  const { file, store, session } = setup(t);
  store.setSources({ vhost: () => null, init: () => null, fs: () => session });
  const older = { schema: 2, version: 'older' };
  const stampOf = (): { schema: number; minReader: number } => {
    const j = StateJournal.open(file, SCHEMA_READER);
    try { return { schema: j.stamp.schema, minReader: j.stamp.minReader }; } finally { j.close(); }
  };
  t.same(stampOf(), { schema: 2, minReader: 2 }, 'a fresh file: schema 2');
  t.doesNotThrow(() => StateJournal.open(file, older).close(), 'which a schema-2 build opens');
  const a = session.addInode({ dev: 1n, ino: 71n, generation: 0, fileType: 0o100000 });
  const served = (head: number, counter: bigint): ServedLookup =>
    ({ key: requestKey(0, head, counter), head, counter, nodeid: a.nodeid, reply: lookupReply(a.nodeid, head) });
  const add = (nodeid: number): boolean => { session.addLookup(nodeid); return true; };
  store.requests.servedLookups(0, [served(1, 1n), served(2, 2n)], add);
  store.durability.commit();
  t.same(stampOf(), { schema: 3, minReader: 3 }, 'with a TAG_LOOKUPS record: schema 3, readable from 3');
  t.throws(() => StateJournal.open(file, older), { name: 'StateVersionError' }, 'a schema-2 build refuses it, naming the versions');
  // A drain: base records only, then the snapshot that starts a new file.
  store.requests.writeBaseSchemaOnly();
  store.requests.servedLookups(0, [served(3, 3n)], add);
  store.durability.commit();
  t.same(recordTags(file).slice(-1), [R.TAG_OUTCOME], 'a served LOOKUP after it is a plain outcome');
  store.compact();
  t.same(stampOf(), { schema: 2, minReader: 2 }, 'the compacted file says schema 2 again');
  t.doesNotThrow(() => StateJournal.open(file, older).close(), 'and a schema-2 build opens it');
  store.requests.servedLookups(0, [served(4, 4n)], add);
  store.durability.commit();
  t.same(stampOf(), { schema: 2, minReader: 2 }, 'and it stays so (no TAG_LOOKUPS after the drain)');
  const st = loadState(file);
  t.equal(st.fs!.getInode(a.nodeid)!.lookupCount, 5, 'every lookup is in the state: 1 + 4 served');
  t.same(st.ops.get(requestKey(0, 4, 4n))?.reply, lookupReply(a.nodeid, 4), 'and each reply');
  store.close();
});
