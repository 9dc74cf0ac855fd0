// Planned upgrades (`virtiofs-keeper upgrade`, docs/ARCHITECTURE.md "Upgrades") under a client
// that keeps doing I/O: the service runs from an installation switched by a symlink
// (<root>/current → a release), each upgrade points it at another release and runs the real
// CLI; the session (open handles, written data) must survive with zero client errors, and the
// pause of each handover is reported. Then crashes: the old worker killed during its drain, the
// new one during its takeover — nothing lost, as in the crash matrix.
//
// Most releases are copies of this build: "next" has another version string and says it reads
// state schema 4 (and leaves files readable from 3, this build's schema), "incompatible" says
// schema 4 readable only from 4, and "nodrain" does not offer X_DRAIN. They exercise the version
// and schema checks and the fallback, not differences in code. One test builds the real commit
// before the upgrade protocol (git archive + tsc, ~1 min; the addon is copied when native/ is
// unchanged since) and upgrades to it and back: it reads schemas 1-2, and what this build leaves
// after a drain is schema 2 (no TAG_LOOKUPS record: state_store.ts BASE_SCHEMA).
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { openSession, waitFor, type Session } from '../frontend/helpers';
import { FILES, Load, PKG_VERSION, SCHEMA, install, installRev, pctl, runUpgrade, switchTo, type Release } from './upgrade_harness';
import { REPO_ROOT } from '../frontend/backend';
import { queryStatus } from '../../cli/status';
import { withEnv } from '../helpers/env';
import type { UpgradeResult } from '../../shared/keeper_protocol';
import { FUSE_ROOT_ID as F_ROOT, O as FO } from '../frontend/fuse_proto';

const UPGRADES = Number(process.env.VFSK_UPGRADE_ROUNDS ?? 8);

/** The commit just before the upgrade protocol (the parent of the one that added X_DRAINED), or
 * $VFSK_UPGRADE_FROM. */
function preProtocolRev(): string {
  if (process.env.VFSK_UPGRADE_FROM) return process.env.VFSK_UPGRADE_FROM;
  const added = execFileSync('git', ['-C', REPO_ROOT, 'log', '--format=%H', '--reverse', '-S', 'X_DRAINED', '--', 'shared/keeper_protocol.ts'], { encoding: 'utf8' }).trim().split('\n')[0];
  if (!added) throw new Error('no commit adds X_DRAINED to shared/keeper_protocol.ts (shallow clone? set VFSK_UPGRADE_FROM)');
  return `${added}^`;
}

interface Setup { root: string; stateDir: string; s: Session; releases: Record<'cur' | 'next' | 'incompatible' | 'nodrain' | 'future', Release> }

async function setup(t: Test, first: 'cur' | 'nodrain' | 'future', env: Record<string, string> = {}, args: string[] = []): Promise<Setup> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-upg-'));
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => {
    fs.rmSync(stateDir, { recursive: true, force: true });
    fs.rmSync(root, { recursive: true, force: true });
  });
  const releases = {
    cur: install(path.join(root, 'rel-cur'), PKG_VERSION),
    next: install(path.join(root, 'rel-next'), `${PKG_VERSION}-next`, SCHEMA(4, 3)),
    incompatible: install(path.join(root, 'rel-incompatible'), `${PKG_VERSION}-incompatible`, SCHEMA(4, 4)),
    nodrain: install(path.join(root, 'rel-nodrain'), `${PKG_VERSION}-nodrain`,
      [['worker/worker.js', 'minReader: state_store_1.SCHEMA_MIN_READER, drain: true', 'minReader: state_store_1.SCHEMA_MIN_READER, drain: false']]),
    // Writes files of schema 4 only (base schema 4, readable from 4): this build refuses them.
    future: install(path.join(root, 'rel-future'), `${PKG_VERSION}-future`,
      [...SCHEMA(4, 4), ['worker/state/state_store.js', 'exports.BASE_SCHEMA = 2;', 'exports.BASE_SCHEMA = 4;']]),
  };
  switchTo(root, releases[first]);
  const s = await withEnv(env, () => openSession(t, 'ours', {
    binPath: path.join(root, 'current', 'bin', 'virtiofs-keeper.js'), extraArgs: ['--state-dir', stateDir, ...args],
  }));
  // The standby is what an upgrade replaces: let the first one be up, as in a running service.
  await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'the first standby ready', 60_000);
  return { root, stateDir, s, releases };
}

async function upgradeTo(t: Test, u: Setup, rel: Release, versionKnown = true): Promise<UpgradeResult> {
  const before = queryStatus(u.stateDir).worker.pid;
  switchTo(u.root, rel);
  const r = await runUpgrade(u.stateDir);
  if (r.code !== 0 || r.result === null) t.comment(`upgrade output: ${r.out}\nbackend log:\n${u.s.backend.log().slice(-20_000)}`);
  t.equal(r.code, 0, `upgrade to ${rel.version}: exit 0`);
  t.equal(r.result?.result, 'ok', 'result ok');
  t.equal(r.result?.oldPid, before, 'from the serving worker');
  if (versionKnown) t.equal(r.result?.newVersion, rel.version, `the new worker is ${rel.version}, started from the switched installation`);
  else t.equal(r.result?.newVersion, null, 'the new worker is too old to say its version');
  t.not(r.result?.newPid, before, 'a new process serves');
  return r.result!;
}

t.test(`upgrade ×${UPGRADES} under I/O: zero client errors, handles intact, pauses reported`, async (t) => {
  const u = await setup(t, 'cur');
  const load = new Load(u.s);
  await load.start();
  await waitFor(() => load.ops > 200, 'the client going', 30_000);
  const results: UpgradeResult[] = [];
  for (let i = 0; i < UPGRADES; i++) {
    const rel = i % 2 === 0 ? u.releases.next : u.releases.cur;
    const r = await upgradeTo(t, u, rel);
    t.equal(r.mode, 'drain', 'a graceful drain, not a kill');
    t.equal(r.reason, null, 'nothing went differently');
    t.type(r.pauseMs, 'number', 'the pause is measured');
    results.push(r);
    const opsBefore = load.ops;
    await waitFor(() => load.ops > opsBefore + 50, 'the client going on after the upgrade', 30_000);
  }
  const st = queryStatus(u.stateDir);
  t.equal(st.upgrades?.count, UPGRADES, 'status counts the upgrades');
  t.equal(st.upgrades?.last?.pauseMs, results[results.length - 1]!.pauseMs, 'status shows the last pause');
  t.equal(st.worker.restarts, 0, 'no upgrade counted as a crash');
  // The way back to a build that cannot read what is written now is refused before any drain.
  await upgradeTo(t, u, u.releases.incompatible);
  const pidBefore = queryStatus(u.stateDir).worker.pid;
  switchTo(u.root, u.releases.cur);
  const refused = await runUpgrade(u.stateDir);
  t.equal(refused.code, 1, 'refused: exit 1');
  t.equal(refused.result?.result, 'refused');
  t.match(refused.result?.reason ?? '', `virtiofs-keeper ${PKG_VERSION}-incompatible`, 'the refusal names the serving version');
  t.match(refused.result?.reason ?? '', `virtiofs-keeper ${PKG_VERSION}) reads state schemas 1 to 3`, 'and the installed one');
  t.equal(queryStatus(u.stateDir).worker.pid, pidBefore, 'the old worker keeps serving');
  const opsBefore = load.ops;
  await waitFor(() => load.ops > opsBefore + 50, 'the client going on after the refusal', 30_000);
  await load.stop();
  t.same(load.errors.slice(0, 10), [], `zero client errors in ${load.ops} requests`);
  await load.verify(t);
  const pauses = results.map((r) => r.pauseMs!);
  const drains = results.map((r) => r.drainMs ?? 0);
  t.comment(`pauses (ms, queues not served, keeper-measured): ${pauses.map((p) => p.toFixed(2)).join(' ')}`);
  t.comment(`pause p50 ${pctl(pauses, 0.5).toFixed(2)} ms, p99 ${pctl(pauses, 0.99).toFixed(2)} ms, max ${Math.max(...pauses).toFixed(2)} ms; drain p50 ${pctl(drains, 0.5).toFixed(2)} ms; total per upgrade p50 ${pctl(results.map((r) => r.totalMs), 0.5).toFixed(0)} ms`);
  t.comment(`client: ${load.ops} requests, latency p99 ${load.p99().toFixed(2)} ms, max ${load.max().toFixed(2)} ms`);
  // Where a handover's time goes (the new worker's phases since it was told to take over).
  const phases = u.s.backend.log().split('\n').filter((l) => /first request served after resume|drained for a planned upgrade|planned upgrade done|handed over for an upgrade|standby worker took over/.test(l));
  t.comment(`last handover's log:\n${phases.slice(-5).join('\n')}`);
});

t.test('a worker that cannot drain (an older build) is killed and resumed instead', async (t) => {
  const u = await setup(t, 'nodrain');
  const load = new Load(u.s);
  await load.start();
  await waitFor(() => load.ops > 200, 'the client going', 30_000);
  const r = await upgradeTo(t, u, u.releases.cur);
  t.equal(r.mode, 'kill', 'kill + resume');
  t.equal(r.oldVersion, `${PKG_VERSION}-nodrain`);
  t.match(r.reason ?? '', /cannot drain/);
  // From here on, drains.
  const again = await upgradeTo(t, u, u.releases.next);
  t.equal(again.mode, 'drain', 'the next upgrade drains');
  const opsBefore = load.ops;
  await waitFor(() => load.ops > opsBefore + 50, 'the client going on', 30_000);
  await load.stop();
  t.same(load.errors.slice(0, 10), [], `zero client errors in ${load.ops} requests`);
  await load.verify(t);
  t.comment(`pauses: kill ${r.pauseMs} ms, drain ${again.pauseMs} ms`);
});

// Crash safety: a death in the middle of an upgrade is an ordinary crash, and the successor (the
// new build's standby, or a fresh worker) resumes exactly once. VFSK_CRASH_MARKER makes the
// crash fire once across every worker.
const CRASHES: Array<{ point: string; who: string; note: RegExp }> = [
  { point: 'drain-after-pause', who: 'the old worker, with requests in flight in its drain', note: /old worker died .* during its drain/ },
  { point: 'drain-before-drained', who: 'the old worker, drained but before X_DRAINED', note: /old worker died .* during its drain/ },
  { point: 'resume-after-ready', who: 'the new worker during its takeover', note: /new worker died .* during its takeover/ },
];
for (const c of CRASHES) {
  t.test(`${c.point}: ${c.who} killed: nothing lost`, async (t) => {
    const marker = path.join(os.tmpdir(), `vfsk-upg-crash-${process.pid}-${c.point}`);
    fs.rmSync(marker, { force: true });
    t.teardown(() => fs.rmSync(marker, { force: true }));
    const u = await setup(t, 'cur', { VFSK_CRASH_POINT: c.point, VFSK_CRASH_MARKER: marker });
    const load = new Load(u.s);
    await load.start(3);
    await waitFor(() => load.ops > 200, 'the client going', 30_000);
    const r = await upgradeTo(t, u, u.releases.next);
    t.ok(fs.existsSync(marker), `the worker crashed at ${c.point}`);
    t.match(r.reason ?? '', c.note, 'the upgrade says what happened');
    const opsBefore = load.ops;
    await waitFor(() => load.ops > opsBefore + 50, 'the client going on', 30_000);
    await load.stop();
    t.same(load.errors.slice(0, 10), [], `zero client errors in ${load.ops} requests`);
    await load.verify(t);
    t.equal(queryStatus(u.stateDir).worker.state, 'running');
    await waitFor(() => queryStatus(u.stateDir).fuse.openFiles === FILES, 'the open handles all there (status)', 10_000);
    t.pass('the open handles are all there');
    t.comment(`pause with the crash: ${r.pauseMs} ms (${r.reason})`);
  });
}

t.test('to the real build before the upgrade protocol and back, under I/O', async (t) => {
  // --sandbox chroot: that build predates the worker's pid namespace, and as PID 1 of one it
  // cannot confine itself (it looks for its parent's mount namespace): a keeper that launches
  // workers into a pid namespace (namespace mode) refuses a downgrade to it safely, the old
  // worker keeps serving (ARCHITECTURE.md, "State schema compatibility").
  const u = await setup(t, 'cur', {}, ['--sandbox', 'chroot']);
  const rev = preProtocolRev();
  const t0 = Date.now();
  const prev = installRev(path.join(u.root, 'rel-prev'), rev);
  t.comment(`built ${rev} in ${Date.now() - t0} ms`);
  t.notOk(fs.readFileSync(path.join(prev.dir, 'shared', 'keeper_protocol.ts'), 'utf8').includes('X_DRAIN'), `${rev} has no upgrade protocol`);
  const load = new Load(u.s);
  await load.start();
  await waitFor(() => load.ops > 200, 'the client going', 30_000);
  const down = await upgradeTo(t, u, prev, false);
  t.equal(down.mode, 'drain', 'this build drains, and the old build resumes its session');
  t.match(down.reason ?? '', /older build/, 'its pause ends at its first completed request');
  let opsBefore = load.ops;
  await waitFor(() => load.ops > opsBefore + 200, 'the client going on with the old build', 30_000);
  const up = await upgradeTo(t, u, u.releases.cur);
  t.equal(up.mode, 'kill', 'the old build cannot drain: killed and resumed by this one');
  t.equal(up.oldVersion, null);
  const again = await upgradeTo(t, u, u.releases.cur);
  t.equal(again.mode, 'drain', 'then drains again');
  opsBefore = load.ops;
  await waitFor(() => load.ops > opsBefore + 50, 'the client going on', 30_000);
  await load.stop();
  t.same(load.errors.slice(0, 10), [], `zero client errors in ${load.ops} requests`);
  await load.verify(t);
  t.comment(`pauses: to ${rev} ${down.pauseMs} ms (to its first request), back by kill ${up.pauseMs} ms, drain ${again.pauseMs} ms`);
});

t.test('a keeper that gave up on a state it could not read resumes the session once a build that reads it is installed and upgrade runs', async (t) => {
  const u = await setup(t, 'future');
  const f = await u.s.fuse.create(F_ROOT, 'kept', FO.RDWR, 0o644);
  t.equal(await u.s.fuse.write(f.entry.nodeid, f.open.fh, 0, Buffer.from('before')), 6);
  // This build installed, its standby started from it; then the serving (future) worker dies:
  // the standby cannot read the schema-4 state and the keeper gives up, holding every fd.
  switchTo(u.root, u.releases.cur);
  const oldStandby = queryStatus(u.stateDir).worker.standbyPid!;
  process.kill(oldStandby, 'SIGKILL');
  await waitFor(() => { const w = queryStatus(u.stateDir).worker; return w.standbyReady && w.standbyPid !== oldStandby; }, 'a standby from this build', 60_000);
  process.kill(queryStatus(u.stateDir).worker.pid!, 'SIGKILL');
  await waitFor(() => queryStatus(u.stateDir).worker.state === 'failed', 'the keeper to give up', 30_000);
  t.match(queryStatus(u.stateDir).keeper.error ?? '', /schema 4/, 'status says why');
  // Sent while nobody serves: answered once a worker resumes.
  const pending = u.s.fuse.read(f.entry.nodeid, f.open.fh, 0, 6, { timeoutMs: 120_000 });
  switchTo(u.root, u.releases.future);
  const r = await runUpgrade(u.stateDir);
  if (r.result?.result !== 'ok') t.comment(`upgrade output: ${r.out}\nbackend log:\n${u.s.backend.log().slice(-8000)}`);
  t.equal(r.code, 0, 'exit 0');
  t.equal(r.result?.result, 'ok');
  t.match(r.result?.reason ?? '', /no worker was serving/, 'says what it did');
  t.equal(r.result?.newVersion, `${PKG_VERSION}-future`);
  t.same(await pending, Buffer.from('before'), 'the request sent meanwhile is answered, through the handle opened before');
  t.equal(queryStatus(u.stateDir).worker.state, 'running');
  t.equal(queryStatus(u.stateDir).keeper.error, null, 'the error is history');
});
