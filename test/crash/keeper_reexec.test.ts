// A keeper re-exec (`virtiofs-keeper upgrade --keeper`, keeper/reexec.ts): the embedded keeper
// replaces its image by the installed build's with execve, keeping its pid and every fd, while
// the serving worker keeps serving; then the worker is upgraded as usual. Under a client doing
// I/O: zero client errors, every acknowledged write on disk, the handles opened before intact,
// the keeper's pid and fd count unchanged, the worker adopted by the new image (its later death
// is seen, reaped and recovered from). Refusals (an installed build that cannot read the
// handoff) and a failed execve (injected ENOMEM) leave everything as it was.
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openFdCount, openFds, openSession, processEnded, waitFor, type Session } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';
import { withEnv } from '../helpers/env';
import { Load, PKG_VERSION, install, pctl, runUpgrade, switchTo, type Release } from './upgrade_harness';
import type { UpgradeResult } from '../../shared/keeper_protocol';

const ROUNDS = Number(process.env.VFSK_REEXEC_ROUNDS ?? 4);

interface Setup { root: string; stateDir: string; s: Session; cur: Release; next: Release }

async function setup(t: Test, env: Record<string, string> = {}, extra: Record<string, Release> = {}): Promise<Setup & { extra: Record<string, Release> }> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-rx-'));
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => {
    fs.rmSync(stateDir, { recursive: true, force: true });
    fs.rmSync(root, { recursive: true, force: true });
  });
  const cur = install(path.join(root, 'rel-cur'), PKG_VERSION);
  const next = install(path.join(root, 'rel-next'), `${PKG_VERSION}-next`);
  const extras: Record<string, Release> = {};
  for (const [name, r] of Object.entries(extra)) extras[name] = r;
  switchTo(root, cur);
  const s = await withEnv(env, () => openSession(t, 'ours', {
    binPath: path.join(root, 'current', 'bin', 'virtiofs-keeper.js'), extraArgs: ['--state-dir', stateDir],
  }));
  await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'the first standby ready', 60_000);
  return { root, stateDir, s, cur, next, extra: extras };
}

/** fds of `pid` without transients: the fewest seen over half a second. The keeper opens fds
 * for moments (metrics.prom.new every second, a status query's connection until it reads the
 * EOF): a single count can catch one. */
async function stableFdCount(pid: number): Promise<number> {
  let min = Infinity;
  for (let i = 0; i < 10; i++) {
    min = Math.min(min, openFdCount(pid));
    await new Promise((r) => setTimeout(r, 50));
  }
  return min;
}

t.test(`keeper re-exec ×${ROUNDS} under I/O: same pid, same fds, zero client errors`, async (t) => {
  const u = await setup(t);
  const keeperPid = queryStatus(u.stateDir).keeper.pid;
  t.equal(keeperPid, u.s.backend.pid, 'status names the process we started');
  const load = new Load(u.s);
  await load.start();
  await waitFor(() => load.ops > 200, 'the client going', 30_000);
  const results: UpgradeResult[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const rel = i % 2 === 0 ? u.next : u.cur;
    const workerBefore = queryStatus(u.stateDir).worker.pid;
    switchTo(u.root, rel);
    const r = await runUpgrade(u.stateDir, ['--keeper']);
    if (r.code !== 0 || r.result === null) t.comment(`upgrade output: ${r.out}\nbackend log:\n${u.s.backend.log().slice(-20_000)}`);
    t.equal(r.code, 0, `round ${i + 1}: exit 0`);
    t.equal(r.result?.result, 'ok', 'result ok');
    t.equal(r.result?.keeperTo, rel.version, `the keeper now runs ${rel.version}`);
    t.type(r.result?.keeperMs, 'number', 'the re-exec is timed');
    t.equal(r.result?.oldPid, workerBefore, 'the worker serving before the re-exec was still serving after it (adopted), and drained');
    t.equal(r.result?.newVersion, rel.version, 'then the worker was upgraded too');
    t.equal(r.result?.mode, 'drain');
    const st = queryStatus(u.stateDir);
    t.equal(st.keeper.pid, keeperPid, 'the keeper\'s pid did not change');
    t.equal(st.keeper.version, rel.version, 'status says the new version');
    t.equal(st.keeper.reexecs, i + 1, 'status counts the re-execs');
    t.equal(st.worker.restarts, 0, 'no crash counted');
    results.push(r.result!);
    const opsBefore = load.ops;
    await waitFor(() => load.ops > opsBefore + 50, 'the client going on after the re-exec', 30_000);
  }
  t.equal(queryStatus(u.stateDir).upgrades?.count, ROUNDS, 'status counts the upgrades across re-execs');
  t.match(u.s.backend.log(), /keeper re-executed/, 'the new image logs where the first one did (stdio kept across execve)');
  // The adopted worker's death is seen (pidfd), reaped and recovered from by the new image.
  const victim = queryStatus(u.stateDir).worker.pid!;
  process.kill(victim, 'SIGKILL');
  await waitFor(() => { const w = queryStatus(u.stateDir).worker; return w.pid !== null && w.pid !== victim && w.state === 'running'; }, 'a successor serving', 30_000);
  await waitFor(() => processEnded(victim), 'the killed worker reaped', 10_000);
  const opsBefore = load.ops;
  await waitFor(() => load.ops > opsBefore + 50, 'the client going on after the kill', 30_000);
  await load.stop();
  t.same(load.errors.slice(0, 10), [], `zero client errors in ${load.ops} requests`);
  await load.verify(t);
  t.equal(queryStatus(u.stateDir).worker.restarts, 1, 'the kill counted as the one restart');
  const keeperMs = results.map((r) => r.keeperMs!);
  const pauses = results.map((r) => r.pauseMs!);
  t.comment(`keeper re-exec (execve to the new image serving keeper.sock; the worker served meanwhile): ${keeperMs.map((v) => v.toFixed(1)).join(' ')} ms, p50 ${pctl(keeperMs, 0.5).toFixed(1)}`);
  t.comment(`worker handover pauses after it: ${pauses.map((v) => v.toFixed(2)).join(' ')} ms; client latency p99 ${load.p99().toFixed(1)} ms, max ${load.max().toFixed(1)} ms`);
});

t.test('the keeper holds as many fds after re-execs as before (nothing leaked, nothing lost)', async (t) => {
  const u = await setup(t);
  const keeperPid = queryStatus(u.stateDir).keeper.pid;
  const before = { held: queryStatus(u.stateDir).keeper.fdsHeld, fds: await stableFdCount(keeperPid) };
  for (let i = 0; i < 3; i++) {
    switchTo(u.root, i % 2 === 0 ? u.next : u.cur);
    const r = await runUpgrade(u.stateDir, ['--keeper']);
    t.equal(r.result?.result, 'ok', `re-exec ${i + 1} ok`);
    await waitFor(() => queryStatus(u.stateDir).worker.standbyReady, 'a standby again', 60_000);
  }
  const after = { held: queryStatus(u.stateDir).keeper.fdsHeld, fds: await stableFdCount(keeperPid) };
  t.equal(after.held, before.held, `the fd store holds ${before.held} fds, as before`);
  t.equal(after.fds, before.fds, `the keeper process has ${before.fds} fds open, as before`);
});

t.test('refused before any change when the installed keeper cannot read the handoff', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-rx-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const u = await setup(t, {}, {
    future: install(path.join(root, 'rel-future'), `${PKG_VERSION}-future`, [['keeper/reexec.js', 'exports.HANDOFF_FORMATS = [1];', 'exports.HANDOFF_FORMATS = [2];']]),
  });
  const st0 = queryStatus(u.stateDir);
  switchTo(u.root, u.extra.future!);
  const r = await runUpgrade(u.stateDir, ['--keeper']);
  t.equal(r.code, 1, 'exit 1');
  t.equal(r.result?.result, 'refused');
  t.match(r.result?.reason ?? '', `virtiofs-keeper ${PKG_VERSION}-future) does not read keeper handoff format 1`, 'the refusal names the installed version and the format');
  const st = queryStatus(u.stateDir);
  t.equal(st.keeper.pid, st0.keeper.pid, 'same keeper');
  t.equal(st.keeper.version, PKG_VERSION, 'still the old version');
  t.equal(st.keeper.reexecs, 0);
  t.equal(st.worker.pid, st0.worker.pid, 'the worker kept serving');
  t.equal(st.upgrades?.failed, 1, 'status counts the refusal');
  const e = await u.s.fuse.getattr(1n);
  t.ok(e.attr.mode > 0, 'the session answers');
});

t.test('a failed execve (ENOMEM injected) leaves the keeper, its fds and the worker as they were', async (t) => {
  const counter = path.join(os.tmpdir(), `vfsk-rx-fault-${process.pid}`);
  t.teardown(() => fs.rmSync(counter, { force: true }));
  const u = await setup(t, { VFSK_FAULT_POINT: 'keeper-execve', VFSK_FAULT_FILE: counter, VFSK_FAULT_ERRNO: 'ENOMEM' });
  const st0 = queryStatus(u.stateDir);
  fs.writeFileSync(counter, '2\n');
  switchTo(u.root, u.next);
  // Two failed attempts: fds are compared between them, since Node.js opens one /dev/null of its
  // own for good at a process's first spawn with piped stdio (the first dry run's).
  let fds0 = 0;
  let targets0: string[] = [];
  for (let attempt = 1; attempt <= 2; attempt++) {
    const r = await runUpgrade(u.stateDir, ['--keeper']);
    t.equal(r.code, 1, `attempt ${attempt}: exit 1`);
    t.equal(r.result?.result, 'failed');
    t.match(r.result?.reason ?? '', /execve: ENOMEM/, 'says why');
    const st = queryStatus(u.stateDir);
    t.equal(st.keeper.version, PKG_VERSION, 'the old image runs on');
    t.equal(st.worker.pid, st0.worker.pid, 'the worker kept serving');
    await waitFor(() => queryStatus(u.stateDir).worker.standbyReady, 'a standby again', 60_000);
    if (attempt === 1) {
      fds0 = await stableFdCount(st0.keeper.pid);
      targets0 = openFds(st0.keeper.pid);
      continue;
    }
    const fds1 = await stableFdCount(st0.keeper.pid);
    if (fds1 !== fds0) {
      const now = openFds(st0.keeper.pid);
      t.comment(`fds only before / only after: ${JSON.stringify(targets0.filter((x) => !now.includes(x)))} / ${JSON.stringify(now.filter((x) => !targets0.includes(x)))}`);
    }
    t.equal(fds1, fds0, 'no fd leaked by a failed attempt');
  }
  // Every fd lost FD_CLOEXEC for the execve and got it back: a worker started now does not
  // inherit, say, keeper.sock's listening socket (it fetches what it needs from the keeper).
  const victim = queryStatus(u.stateDir).worker.pid!;
  process.kill(victim, 'SIGKILL');
  await waitFor(() => { const w = queryStatus(u.stateDir).worker; return w.pid !== null && w.pid !== victim && w.state === 'running'; }, 'a successor serving', 30_000);
  // Bound as .ks-new and renamed into place (keeper_socket.ts): /proc/net/unix has the bound name.
  const sockPath = path.join(u.stateDir, '.ks-new');
  const listenInode = fs.readFileSync('/proc/net/unix', 'utf8').split('\n').map((l) => l.trim().split(/\s+/))
    .find((f) => f[7] === sockPath && (parseInt(f[3]!, 16) & 0x10000) !== 0)?.[6];
  t.ok(listenInode, 'keeper.sock\'s listening socket found');
  const successor = queryStatus(u.stateDir).worker.pid!;
  t.notOk(openFds(successor).some((x) => x.endsWith(` -> socket:[${listenInode}]`)), 'the successor does not hold keeper.sock\'s listening socket');
  // The next attempt (no fault left) works.
  const again = await runUpgrade(u.stateDir, ['--keeper']);
  t.equal(again.result?.result, 'ok', 'the retry re-execs');
  t.equal(queryStatus(u.stateDir).keeper.version, `${PKG_VERSION}-next`);
  const e = await u.s.fuse.getattr(1n);
  t.ok(e.attr.mode > 0, 'the session answers');
});
