import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { StateJournal, StateFileError, DATA_START, encodeRecord } from '../../worker/state/journal';
import { appendAsAddon } from '../helpers/foreign_record';

t.test('records survive a reopen in order', async (t) => {
  const dir = t.testdir();
  const p = path.join(dir, 'state');
  const j = StateJournal.create(p, 1);
  j.append({ kind: 'a', n: 1 });
  j.append({ kind: 'b', list: [1, 2, 3], s: 'x'.repeat(100) });
  j.close();
  const k = StateJournal.open(p, 1);
  t.same(k.records(), [{ kind: 'a', n: 1 }, { kind: 'b', list: [1, 2, 3], s: 'x'.repeat(100) }]);
  k.close();
});

t.test('grows past the initial capacity', async (t) => {
  const p = path.join(t.testdir(), 'state');
  const j = StateJournal.create(p, 1);
  const big = 'y'.repeat(100_000);
  for (let i = 0; i < 30; i++) j.append({ i, big });
  j.close();
  const k = StateJournal.open(p, 1);
  const r = k.records() as Array<{ i: number }>;
  t.equal(r.length, 30);
  t.equal(r[29]!.i, 29);
  k.close();
});

t.test('a torn tail past the commit offset is ignored', async (t) => {
  const p = path.join(t.testdir(), 'state');
  const j = StateJournal.create(p, 1);
  j.append({ ok: true });
  const committed = j.committedBytes;
  j.close();
  // Bytes written after the last commit (a record the worker died while writing).
  const fd = fs.openSync(p, 'r+');
  fs.writeSync(fd, Buffer.from([200, 0, 0, 0, 1, 2, 3, 4, 5, 6]), 0, 10, committed);
  fs.closeSync(fd);
  const k = StateJournal.open(p, 1);
  t.same(k.records(), [{ ok: true }]);
  k.append({ after: 1 });
  t.same(k.records(), [{ ok: true }, { after: 1 }], 'appends overwrite the torn tail');
  k.close();
});

t.test('corruption and version mismatches are clear errors', async (t) => {
  const dir = t.testdir();
  const p = path.join(dir, 'state');
  const j = StateJournal.create(p, 1);
  j.append({ a: 1 });
  j.close();
  t.throws(() => StateJournal.open(p, 2), StateFileError, 'schema version mismatch');
  const fd = fs.openSync(p, 'r+');
  fs.writeSync(fd, Buffer.from([0xff]), 0, 1, DATA_START + 9);
  fs.closeSync(fd);
  const k = StateJournal.open(p, 1);
  t.throws(() => k.records(), /checksum/);
  k.close();
  fs.writeFileSync(path.join(dir, 'junk'), Buffer.alloc(8192, 7));
  t.throws(() => StateJournal.open(path.join(dir, 'junk'), 1), /bad magic/);
  fs.writeFileSync(path.join(dir, 'short'), Buffer.alloc(10));
  t.throws(() => StateJournal.open(path.join(dir, 'short'), 1), /shorter than its header/);
});

t.test('create with initial records replaces atomically (compaction)', async (t) => {
  const p = path.join(t.testdir(), 'state');
  const j = StateJournal.create(p, 1);
  for (let i = 0; i < 10; i++) j.append({ i });
  j.close();
  const c = StateJournal.create(p, 1, 5n, [encodeRecord({ snapshot: 'all' })]);
  t.equal(c.generation, 5n);
  c.close();
  const k = StateJournal.open(p, 1);
  t.same(k.records(), [{ snapshot: 'all' }]);
  t.equal(k.generation, 5n);
  k.close();
  t.notOk(fs.existsSync(`${p}.new`));
});

t.test('staged records become durable only at commit, all at once', async (t) => {
  const p = path.join(t.testdir(), 'state');
  const j = StateJournal.create(p, 2);
  j.append({ first: 1 });
  const stageOne = (v: unknown): void => {
    const b = encodeRecord(v);
    j.stage(b.length + 10, (buf, at) => b.copy(buf, at));
  };
  stageOne({ staged: 1 });
  stageOne({ staged: 2 });
  t.ok(j.hasStaged);
  // What a restarted worker would read now (the writer died before its commit).
  const before = StateJournal.open(p, 2);
  t.same(before.records(), [{ first: 1 }], 'staged records are not visible before commit');
  before.close();
  j.commit();
  t.notOk(j.hasStaged);
  const after = StateJournal.open(p, 2);
  t.same(after.records(), [{ first: 1 }, { staged: 1 }, { staged: 2 }]);
  t.equal(after.schemaVersion, 2);
  after.close();
  t.throws(() => j.stage(8, () => 9), /wrote 9 bytes of at most 8/, 'an encoder overrunning its reservation is caught');
  j.close();
});

t.test('open accepts any of several schema versions and reports which', async (t) => {
  const p = path.join(t.testdir(), 'state');
  StateJournal.create(p, 1).close();
  const k = StateJournal.open(p, [1, 2]);
  t.equal(k.schemaVersion, 1);
  k.close();
  t.throws(() => StateJournal.open(p, [2, 3]), /schema 1; this build reads format 1, schema 2 or 3/);
});

t.test('records another writer committed after ours (the addon\'s intents) are kept: ours go after them; one under our staged ones is an error', async (t) => {
  const p = path.join(t.testdir(), 'state');
  const j = StateJournal.create(p, 1);
  const maps: Array<ArrayBuffer | null> = [];
  j.onMapped = (m) => maps.push(m);
  t.equal(maps.length, 1, 'told of the mapping at once');
  const map = maps[0]!;
  const foreign = (value: unknown): void => appendAsAddon(map, encodeRecord(value));
  j.append({ n: 1 });
  foreign({ n: 2 });
  j.append({ n: 3 });
  foreign({ n: 4 });
  foreign({ n: 5 });
  j.stage(16, (buf, at) => encodeRecord({ n: 6 }).copy(buf, at));
  j.commit();
  // Staged, then another writer commits: our staged bytes were where its record went.
  j.stage(16, (buf, at) => encodeRecord({ n: 7 }).copy(buf, at));
  foreign({ n: 8 });
  t.throws(() => j.commit(), StateFileError, 'a record committed under staged ones is refused, not overwritten silently');
  // Growing maps the file anew: the observer hears of the new mapping before the old goes.
  const big = 'z'.repeat(400_000);
  const k = StateJournal.open(p, 1);
  t.same(k.records(), [{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }, { n: 5 }, { n: 6 }, { n: 8 }], 'in commit order, none lost');
  k.close();
  const g = StateJournal.create(path.join(t.testdir(), 'grown'), 1);
  const seen: Array<ArrayBuffer | null> = [];
  g.onMapped = (m) => seen.push(m);
  for (let i = 0; i < 5; i++) g.append({ i, big });
  t.ok(seen.length >= 2 && seen.every((m) => m !== null), 'told of each new mapping as the journal grew');
  g.close();
  t.equal(seen.at(-1), null, 'and of none before the last was unmapped');
});
