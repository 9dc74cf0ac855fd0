// The state schema compatibility rule (docs/ARCHITECTURE.md, "State schema compatibility"): a
// worker reads every schema up to its own; a newer file only when its writer declared it
// readable by ours; anything it does not know (a newer schema, record tag, mutation kind,
// record type or snapshot version) is refused with a StateVersionError naming both versions.
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FsSession } from '../../worker/fs/session';
import { StateJournal, StateFileError, StateVersionError, canRead, encodeRecord } from '../../worker/state/journal';
import * as R from '../../worker/state/records';
import { BASE_SCHEMA, SCHEMA_MIN_READER, SCHEMA_READER, SCHEMA_VERSION, StateStore, loadState } from '../../worker/state/state_store';
import { VERSION } from '../../shared/version';
import { StateError } from '../../shared/errors';

const PKG_VERSION = (JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
const NEWER = SCHEMA_VERSION + 1;

function snapshotPayload(session: FsSession | null, fsSnapshot?: unknown): Buffer {
  return R.genericPayload({ t: 'snapshot', vhost: null, init: null, fs: fsSnapshot ?? session?.toCompactSnapshot() ?? null, ctlSeq: 0, pending: null, ops: [] });
}

function session(): FsSession {
  const s = new FsSession({ dev: 1n, ino: 2n });
  s.addInode({ dev: 1n, ino: 77n, generation: 0, fileType: 0o100000 });
  return s;
}

/** A state file as a writer of schema `schema`, declaring `minReader`, version `writer`, would. */
function writeFile(t: { testdir: () => string }, schema: number, minReader: number, writer: string, payloads: Buffer[]): string {
  const file = path.join(t.testdir(), 'state');
  StateJournal.create(file, schema, 0n, payloads, { minReader, writer }).close();
  return file;
}

function refusedNamingBoth(tt: Test, file: string, writer: string, detail: RegExp): void {
  try {
    loadState(file);
    tt.fail('loaded');
  } catch (e) {
    tt.ok(e instanceof StateVersionError, `a StateVersionError (${(e as Error).message})`);
    tt.ok(e instanceof StateError, 'of kind state: the keeper stops restarting and keeps the fds');
    const m = (e as Error).message;
    tt.match(m, `virtiofs-keeper ${writer}`, 'names the writer\'s version');
    tt.match(m, `virtiofs-keeper ${VERSION}`, 'names this worker\'s version');
    tt.match(m, `reads state schemas 1 to ${SCHEMA_VERSION}`, 'and the schemas this worker reads');
    tt.match(m, detail);
  }
}

t.test('this build knows its version and stamps it into every state file it writes', async (t) => {
  t.equal(VERSION, PKG_VERSION, 'the version is package.json\'s');
  const file = path.join(t.testdir(), 'state');
  const store = new StateStore(file, null, null);
  store.recordNewSession(session());
  store.close();
  const j = StateJournal.open(file, SCHEMA_READER);
  // Until it holds a record of a newer kind (worker_state.test: TAG_LOOKUPS), a file says the
  // base schema, which builds of that schema read.
  t.same(j.stamp, { schema: BASE_SCHEMA, minReader: SCHEMA_MIN_READER, writer: VERSION });
  j.close();
  t.ok(SCHEMA_MIN_READER <= BASE_SCHEMA && BASE_SCHEMA <= SCHEMA_VERSION, 'a writer never needs a reader newer than itself');
});

t.test('the rule', async (t) => {
  t.ok(canRead(2, { schema: 1, minReader: 1 }), 'older schema: read');
  t.ok(canRead(2, { schema: 2, minReader: 2 }), 'same: read');
  t.ok(canRead(2, { schema: 3, minReader: 2 }), 'newer, declared readable by 2: read');
  t.notOk(canRead(2, { schema: 3, minReader: 3 }), 'newer, not declared: refused');
  t.notOk(canRead(2, { schema: 0, minReader: 0 }), 'schema 0 does not exist');
});

t.test('an older file (schema 1, no stamp) loads and names no writer', async (t) => {
  const file = path.join(t.testdir(), 'state');
  const s = session();
  StateJournal.create(file, 1, 0n, [encodeRecord({ t: 'snapshot', vhost: null, init: null, fs: s.toSnapshot(), ctlSeq: 0, pending: null, ops: [] })]).close();
  // A pre-rule writer left zeros where the stamp is now.
  const j = StateJournal.open(file, 1);
  t.same(j.stamp, { schema: 1, minReader: 1, writer: '' });
  j.close();
  t.equal(loadState(file).fs!.inodeCount, s.inodeCount, 'loaded');
});

t.test('a newer file declared readable by our schema loads, and the store rewrites it in ours', async (t) => {
  const s = session();
  const file = writeFile(t, NEWER, SCHEMA_VERSION, '9.9.9', [snapshotPayload(s)]);
  const st = loadState(file);
  t.equal(st.schemaVersion, NEWER);
  t.equal(st.fs!.inodeCount, s.inodeCount, 'the session is all there');
  new StateStore(file, null, st).close();
  const j = StateJournal.open(file, SCHEMA_READER);
  t.same(j.stamp, { schema: BASE_SCHEMA, minReader: SCHEMA_MIN_READER, writer: VERSION }, 'resumed in our own (base) schema');
  j.close();
  t.equal(loadState(file).fs!.inodeCount, s.inodeCount, 'and still all there');
});

t.test('a newer schema not declared readable by ours is refused, naming both versions', async (t) => {
  const file = writeFile(t, NEWER, NEWER, '9.9.9', [snapshotPayload(session())]);
  refusedNamingBoth(t, file, '9.9.9', new RegExp(`schema ${NEWER}`));
  // The opened-for-exact-schema path refuses it too (the store appends only to its own schema).
  t.throws(() => StateJournal.open(file, SCHEMA_VERSION), StateFileError);
});

t.test('an unknown mutation kind is refused as a newer writer\'s, naming both versions', async (t) => {
  // Declared readable by us, but carries a kind we do not know: the writer broke the rule, and
  // we still refuse rather than skip it.
  const bad = Buffer.from([R.TAG_OUTCOME, 1, 0x6b, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 42]); // kind 42
  const file = writeFile(t, NEWER, SCHEMA_VERSION, '9.9.9', [snapshotPayload(session()), bad]);
  refusedNamingBoth(t, file, '9.9.9', /unknown mutation kind 42/);
  // In a file of our own schema it is refused the same way (this build never writes it).
  const own = writeFile(t, SCHEMA_VERSION, SCHEMA_VERSION, '0.0.1', [snapshotPayload(session()), bad]);
  refusedNamingBoth(t, own, '0.0.1', /unknown mutation kind 42/);
});

t.test('an unknown record tag or record type is refused, naming both versions', async (t) => {
  refusedNamingBoth(t, writeFile(t, NEWER, SCHEMA_VERSION, '9.9.9', [snapshotPayload(session()), Buffer.from([200, 1, 2, 3])]),
    '9.9.9', /unknown record tag 200/);
  refusedNamingBoth(t, writeFile(t, NEWER, SCHEMA_VERSION, '9.9.9', [snapshotPayload(session()), R.genericPayload({ t: 'teleport' } as unknown as R.GenericRecord)]),
    '9.9.9', /unknown record type "teleport"/);
});

t.test('a snapshot of an unknown version is refused, naming both versions', async (t) => {
  const snap = { ...session().toCompactSnapshot(), version: 99 };
  refusedNamingBoth(t, writeFile(t, NEWER, SCHEMA_VERSION, '9.9.9', [snapshotPayload(null, snap)]), '9.9.9', /unsupported session snapshot version 99/);
});
