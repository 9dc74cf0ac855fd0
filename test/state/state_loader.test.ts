// StateLoader: the fold of the state file in steps, as a warm standby follows the serving
// worker's journal (worker/state/state_store.ts). After every step its state must be what
// loadState gives for the file at that moment: through appends, a journal that grows past its
// mapping, a request that dies half-way (its mutations held back), a compaction (a new file:
// the fold starts over) and staged records that are not committed (not read).
import t, { type Test } from 'tap';
import * as path from 'node:path';
import { FsSession } from '../../worker/fs/session';
import { StateStore, StateLoader, loadState, type LoadedState } from '../../worker/state/state_store';

const FUSE_LOOKUP = 1, FUSE_MKDIR = 9;

const big = (_k: string, v: unknown): unknown => typeof v === 'bigint' ? `${v}n` : Buffer.isBuffer(v) ? v.toString('hex') : v;
/** What a successor resumes from, comparable. */
function digest(st: LoadedState): string {
  const fs = st.fs;
  return JSON.stringify({
    fs: fs === null ? null : { ...fs.toSnapshot(), inodes: fs.toSnapshot().inodes.sort((a, b) => a.nodeid - b.nodeid) },
    ops: [...st.ops.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([k, op]) => [k, op.opcode, op.deaths, op.reply?.toString('hex') ?? null]),
    ctlSeq: st.ctlSeq, pending: st.pending, vhost: st.vhost, init: st.init, discarded: st.discardedMutations,
  }, big);
}

/** A state file in the test's dir, written by a store that journals a fresh session's changes. */
function journaledSession(t: Test): { file: string; store: StateStore; session: FsSession } {
  const file = path.join(t.testdir(), 'state');
  const store = new StateStore(file, null, null);
  const session = new FsSession({ dev: 1n, ino: 2n });
  store.recordNewSession(session);
  session.onMutation(store.onFsMutation);
  return { file, store, session };
}

t.test('a loader stepped along a growing, compacted journal always holds what loadState reads', async (t) => {
  const { file, store, session } = journaledSession(t);
  store.setSources({ vhost: () => null, init: () => null, fs: () => session });

  // finish() spends a loader: so many loaders take every step together, and check k finishes
  // the k-th, which has been stepped k times, and compares it with a load of the file as it is.
  const loaders = Array.from({ length: 40 }, () => new StateLoader(file));
  const loader = loaders[loaders.length - 1]!;
  let checks = 0;
  const check = (what: string): void => {
    for (const l of loaders.slice(checks)) l.catchUp();
    t.equal(digest(loaders[checks++]!.finish()), digest(loadState(file)), what);
  };
  check('fresh journal');

  let ino = 100n;
  let key = 0;
  const lookup = (): void => {
    const k = `0.${key % 256}.${key++}`;
    store.requests.beginRequest(k, FUSE_LOOKUP, false, null);
    session.addInode({ dev: 1n, ino: ino++, generation: 0, fileType: 0o100000, handle: { mountId: 3, handleType: 1, handle: Buffer.alloc(12, key % 251) } });
    store.requests.endSync();
    store.requests.outcome(k, Buffer.alloc(144, 1));
  };
  for (let round = 0; round < 6; round++) {
    for (let i = 0; i < 2000; i++) lookup();
    store.durability.commit();
    check(`round ${round}: appended`);
    // A request that dies after its intent and a mutation: held back, then rolled back.
    store.requests.beginRequest(`9.9.${round}`, FUSE_MKDIR, true, null);
    session.addInode({ dev: 1n, ino: ino++, generation: 0, fileType: 0o040000 });
    store.requests.endSync();
    check(`round ${round}: a request without its outcome`);
    store.requests.outcome(`9.9.${round}`, Buffer.from('made'));
    store.durability.commit();
    check(`round ${round}: its outcome`);
    if (round % 2 === 1) {
      const before = loader.restarts;
      store.compact();
      check(`round ${round}: compacted`);
      t.equal(loader.restarts, before + 1, 'a compaction (another file) starts the fold over');
    }
  }
  // Staged, not committed: a successor must not see it, nor the loader.
  store.requests.beginRequest('0.1.staged', FUSE_LOOKUP, false, null);
  session.addInode({ dev: 1n, ino: ino++, generation: 0, fileType: 0o100000 });
  store.requests.endSync();
  store.requests.outcome('0.1.staged', Buffer.from('staged'));
  check('a staged outcome is not read before its commit');

  const final = loader.finish();
  t.equal(digest(final), digest(loadState(file)), 'finish() gives the state loadState gives');
  t.ok(final.fs!.inodeCount > 12_000, `${final.fs!.inodeCount} inodes`);
  t.throws(() => loader.catchUp(), /already finished/);
  store.close();
});

t.test('a loader that has not started over keeps folding the same file past its first mapping', async (t) => {
  const file = path.join(t.testdir(), 'state');
  const store = new StateStore(file, null, null);
  const session = new FsSession({ dev: 1n, ino: 2n });
  store.recordNewSession(session);
  session.onMutation(store.onFsMutation);
  // No sources: no compaction, so the file grows past the 1 MiB it was created with.
  const loader = new StateLoader(file);
  loader.catchUp();
  for (let i = 0; i < 30_000; i++) session.addInode({ dev: 1n, ino: BigInt(1000 + i), generation: 0, fileType: 0o100000 });
  loader.catchUp();
  t.equal(loader.restarts, 1, 'one file all along');
  const st = loader.finish();
  t.equal(st.fs!.inodeCount, 30_001);
  t.equal(digest(st), digest(loadState(file)));
  store.close();
});

t.test("a request on a descriptor head drops the head's earlier outcomes from the fold", async (t) => {
  const { file, store, session } = journaledSession(t);
  let ino = 100n;
  const lookup = (k: string): void => {
    store.requests.beginRequest(k, FUSE_LOOKUP, false, null);
    session.addInode({ dev: 1n, ino: ino++, generation: 0, fileType: 0o100000 });
    store.requests.endSync();
    store.requests.outcome(k, Buffer.alloc(144, Number(ino % 200n)));
  };
  // Heads 0..7 of queue 1, each used 50 times (counters grow); head 3 of queue 2 once.
  let counter = 0;
  for (let round = 0; round < 50; round++) for (let head = 0; head < 8; head++) lookup(`1.${head}.${counter++}`);
  lookup(`2.3.${counter++}`);
  // A request that died after its intent: its key is kept whatever comes after on the head.
  store.requests.beginRequest(`1.9.${counter++}`, FUSE_MKDIR, true, null);
  session.addInode({ dev: 1n, ino: ino++, generation: 0, fileType: 0o040000 });
  store.requests.endSync();
  store.durability.commit();

  const loader = new StateLoader(file);
  loader.catchUp();
  const st = loader.finish();
  const keys = [...st.ops.keys()].sort();
  t.equal(keys.length, 10, 'one outcome per head: 8 heads of queue 1, head 3 of queue 2, the dead intent');
  for (let head = 0; head < 8; head++) {
    t.ok(st.ops.has(`1.${head}.${49 * 8 + head}`), `queue 1 head ${head}: the newest request's outcome`);
  }
  t.ok(st.ops.has('2.3.400'), 'the same head number on another queue is another head');
  t.ok(st.ops.has('1.9.401'), 'the intent without an outcome');
  t.equal(st.ops.get('1.0.392')!.reply!.length, 144, 'with its reply');
  t.equal(st.fs!.inodeCount, 1 + 401, 'every outcome folded into the session (the dead request rolled back)');
  // The same fold in steps gives the same ops.
  t.same([...loadState(file).ops.keys()].sort(), keys, 'loadState agrees');
  store.close();
});
