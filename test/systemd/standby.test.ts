// The warm standby under a real systemd (systemd-nspawn, see real/nspawn.ts), and the keeper's
// own crash. `install-units` writes virtiofs-keeper@t1, virtiofs-worker@t1 and its twin
// virtiofs-standby@t1; one worker serves and the other waits on keeper.sock. A client (the test
// vhost-user frontend in this process, real/client.ts) keeps one session busy throughout while:
//   (a) the serving worker is SIGKILLed KILLS times (from the host, by its host pid): each time
//       the waiting one takes over (no Node.js start), the dead one's unit restarts as the next
//       standby; recovery is timed per kill from the client (kill() to the reply of a getattr
//       submitted right after it) and by the keeper (the death seen to the successor's first
//       served request), and reported as p50/p99 (not asserted: timing is the host's);
//   (b) the serving worker is SIGSTOPped: the watchdog (WatchdogSec=2s drop-in) kills it and
//       the standby takes over; a SIGSTOPped standby is replaced the same way;
//   (c) the keeper is SIGKILLed: systemd restarts it with its fds from the fd store, the worker
//       units follow it (BindsTo=), and the session (open handles, looked-up inodes) is intact;
//       after it a kill is still a handover.
// The client must see no error, every record it wrote must be on disk, and the daemons' journal
// must hold no unexpected error.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { nspawnUnavailable, type Machine } from './real/nspawn';
import { LoopClient, HELLO, RECORD_SIZE, record } from './real/client';
import { Units, KEEPER, WORKER, STANDBY, stopAtTeardown, type Unit } from './real/units';
import { waitFor } from '../frontend/helpers';
import { quantile } from '../bench/stats';
import { recoveryPhases, summarisePhases } from '../bench/recovery';
import * as F from '../frontend/fuse_proto';
import type { StatusReport } from '../../shared/status_report';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const WATCHDOG_SEC = 2;
const KILLS = 25;

const EXPECTED = [
  /Failed to configure loopback network device, ignoring/,
  // What the test does: SIGKILLs (workers, the keeper), watchdog kills of stopped workers.
  /Main process exited, code=(killed|dumped), status=(9\/KILL|6\/ABRT)/,
  /Failed with result '(signal|core-dump|watchdog)'/,
  /Watchdog timeout \(limit /,
  /Killing process \d+ \(node\) with signal SIGABRT/,
  // (c): a worker that finds its keeper gone before systemd stops it dies on purpose.
  /"msg":"the keeper is gone; dying before anything needs it/,
];

const unavailable = nspawnUnavailable();

t.test('the warm standby and the keeper\'s crash under systemd as PID 1 (systemd-nspawn)', { timeout: 600_000 }, async (t) => {
  if (unavailable !== null) {
    t.fail(`systemd-nspawn cannot run here: ${unavailable}`);
    return;
  }
  const started = Date.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-sb-'));
  let client: LoopClient | null = null;
  let m: Machine | null = null;
  stopAtTeardown(t, dir, () => ({ client, machine: m }));
  const shared = path.join(dir, 'shared');
  fs.mkdirSync(shared);
  fs.writeFileSync(path.join(shared, 'hello'), HELLO);
  fs.writeFileSync(path.join(shared, 'log'), '');
  fs.mkdirSync(path.join(shared, 'sub'));
  fs.writeFileSync(path.join(shared, 'sub', 'inner'), 'inner\n');

  const booted = await Units.boot({ dir, root: ROOT, workerDropIn: `WatchdogSec=${WATCHDOG_SEC}s\n` }, (mm) => { m = mm; });
  const u = booted.units;
  const machine = u.machine;
  if (booted.bootState !== 'running') t.comment(`machine booted ${booted.bootState}: ${(await machine.exec(['systemctl', '--failed', '--no-legend'])).stdout.trim()}`);
  t.match(booted.installOut, /wrote \/etc\/systemd\/system\/virtiofs-standby@\.service/, 'install-units wrote the standby unit');
  t.equal(booted.verify, null, 'systemd-analyze verify passes silently on the three units inside the machine');

  const units = [KEEPER, WORKER, STANDBY];
  const journal = async (): Promise<string> => machine.journal(units, 400);
  const unit = (name: string): Promise<Unit> => u.unit(name);
  const failWith = async (e: unknown, extra = ''): Promise<never> => {
    t.comment(`journal of ${units.join(', ')}:\n${await journal()}`);
    throw new Error(`${(e as Error).message}${extra}`);
  };
  const serving = (s: Unit): boolean => s.ActiveState === 'active' && s.SubState === 'running' && s.MainPID > 0;
  const waitUnit = async (name: string, cond: (s: Unit) => boolean, what: string, timeoutMs = 30_000): Promise<Unit> => {
    let last: Unit | null = null;
    try {
      return await waitFor(async () => { const s = await unit(name); last = s; return cond(s) ? s : null; }, what, timeoutMs, 50) as Unit;
    } catch (e) {
      return failWith(e, `; ${name} is ${JSON.stringify(last)}`);
    }
  };
  const waitStatus = (cond: (s: StatusReport) => boolean, what: string): Promise<StatusReport> => u.waitStatus(cond, what).catch(failWith);
  const steady = (what: string): Promise<StatusReport> => u.steady(what).catch(failWith);
  /** Which unit a machine pid belongs to. */
  const unitOf = async (pid: number): Promise<string> => ((await unit(WORKER)).MainPID === pid ? WORKER : (await unit(STANDBY)).MainPID === pid ? STANDBY : `no unit (pid ${pid})`);

  await u.start();
  await waitUnit(KEEPER, serving, 'the keeper to be active');
  const w0 = await waitUnit(WORKER, serving, 'the worker unit (pulled in by Wants=) to be active');
  const s0 = await waitUnit(STANDBY, serving, 'the standby unit (pulled in by Wants=) to be active');
  const st0 = await steady('a serving worker and a waiting standby');
  t.same([st0.worker.pid, st0.worker.standbyPid], [w0.MainPID, s0.MainPID], 'the worker unit\'s worker serves, the standby unit\'s waits (it starts after)');

  const c = new LoopClient(path.join(dir, 'vhost.sock'));
  client = c;
  await c.open();
  t.equal(await c.readHello(), HELLO, 'the client reads through the worker systemd started');
  const sub = await c.fuse.lookup(F.FUSE_ROOT_ID, 'sub');
  const inner = await c.fuse.lookup(sub.nodeid, 'inner');
  const innerFh = (await c.fuse.open(inner.nodeid, F.O.RDONLY)).fh;
  c.start();
  const served = async (what: string): Promise<void> => {
    try {
      await c.progress(20, 60_000, what);
    } catch (e) {
      await failWith(e);
    }
  };
  await served('requests served before any kill');

  // The keeper's fds (its store, both workers' keeper.sock connections...), to compare after the
  // kills: a dead standby's or worker's connection must not stay behind.
  const keeperFds = async (): Promise<number> => fs.readdirSync(`/proc/${machine.hostPid((await unit(KEEPER)).MainPID)}/fd`).length;
  await steady('the steady state before counting the keeper\'s fds');
  const fds0 = await keeperFds();

  // (a) KILLS SIGKILLs of the serving worker, each in the steady state (a standby waits).
  const clientMs: number[] = [];
  const keeperMs: number[] = [];
  const killNs: bigint[] = [];
  const handovers: string[] = [];
  for (let i = 0; i < KILLS; i++) {
    const before = await steady(`a standby before kill ${i + 1}`);
    const victim = machine.hostPid(before.worker.pid!);
    if (victim === null) await failWith(new Error(`kill ${i + 1}: the serving worker ${before.worker.pid} has no host pid`));
    const killAt = performance.now();
    killNs.push(process.hrtime.bigint());
    process.kill(victim!, 'SIGKILL');
    // Submitted after the kill: only the successor can answer it.
    let ms: number;
    try {
      ms = await c.probe(killAt);
    } catch (e) {
      return failWith(new Error(`kill ${i + 1}: the probe failed: ${(e as Error).message}`));
    }
    clientMs.push(ms);
    const after = await waitStatus((s) => s.recovery.count > before.recovery.count, `the keeper to time recovery ${i + 1}`);
    keeperMs.push(after.recovery.lastMs!);
    if (after.worker.pid !== before.worker.standbyPid) handovers.push(`kill ${i + 1}: ${before.worker.pid} -> ${after.worker.pid}, standby was ${before.worker.standbyPid}`);
  }
  t.same(handovers, [], `(a) each of ${KILLS} SIGKILLs was a handover to the waiting standby`);
  t.same(c.errors, [], '(a) the client saw no error');
  const r1 = (x: number): number => Math.round(x * 10) / 10;
  const line = (xs: number[]): string => `p50 ${r1(quantile(xs, 0.5))} ms, p99 ${r1(quantile(xs, 0.99))} ms, max ${r1(Math.max(...xs))} ms`;
  t.comment(`recovery over ${KILLS} SIGKILLs of the serving worker under systemd with the standby:`);
  t.comment(`  client (kill() to the reply of a getattr submitted right after it): ${line(clientMs)}`);
  t.comment(`  keeper (the death seen to the successor's first served request):   ${line(keeperMs)}`);
  t.comment(`  client samples (ms): ${clientMs.map(r1).join(' ')}`);
  // Where the time went, from the daemons' own marks (CLOCK_MONOTONIC: one clock for the host and
  // the machine): kill -> the keeper sees the connection close (exitSeen) -> the standby wakes
  // (takeover) -> fd set fetched -> state loaded -> session built -> first request served.
  const daemonLog = await u.daemonLog();
  const phases = recoveryPhases(daemonLog, killNs);
  t.equal(phases.length, KILLS, 'every recovery has its timeline in the journal');
  t.comment(`  where the time went (ms from the previous step; p50 / p99 / max): ${summarisePhases(phases)}`);
  const wN = await unit(WORKER);
  const sN = await unit(STANDBY);
  t.equal(wN.NRestarts + sN.NRestarts, KILLS, `systemd restarted the dead worker's unit each time (worker ${wN.NRestarts} + standby ${sN.NRestarts})`);
  await served('requests served after the kills');
  await steady('the steady state after the kills');
  // A status query's connection may still be open for a moment: poll.
  const fds1 = await waitFor(async () => { const n = await keeperFds(); return n === fds0 ? n : null; }, `the keeper's fd count to settle at ${fds0}`, 10_000, 50).catch(async () => keeperFds());
  t.equal(fds1, fds0, `the keeper holds as many fds after ${KILLS} handovers as before (${fds0}): no dead worker's connection stays`);

  // (b) A hung worker is still replaced: SIGSTOP the serving one; no WATCHDOG=1, systemd kills it.
  let before = await steady('a standby before the SIGSTOP');
  let stopped = await unitOf(before.worker.pid!);
  process.kill(machine.hostPid(before.worker.pid!)!, 'SIGSTOP');
  const stoppedPid = before.worker.pid;
  let after = await waitStatus((s) => s.worker.pid !== stoppedPid && s.worker.state === 'running', 'the watchdog to kill the stopped worker and the standby to take over');
  t.equal(after.worker.pid, before.worker.standbyPid, `(b) the stopped worker ${before.worker.pid} (${stopped}) was replaced by the standby ${after.worker.pid}`);
  await served('requests served after the watchdog kill');
  const escaped = stopped.replace(/[.@]/g, '\\$&');
  t.match(await journal(), new RegExp(`${escaped}: Watchdog timeout \\(limit ${WATCHDOG_SEC}s\\)`), `systemd's watchdog killed ${stopped}`);
  t.same(c.errors, [], '(b) the client saw no error');

  // A hung standby is replaced too (it pings the watchdog while it waits).
  before = await steady('a standby before stopping it');
  stopped = await unitOf(before.worker.standbyPid!);
  const stoppedUnit = await unit(stopped);
  process.kill(machine.hostPid(before.worker.standbyPid!)!, 'SIGSTOP');
  await waitUnit(stopped, (s) => s.NRestarts > stoppedUnit.NRestarts && s.MainPID !== stoppedUnit.MainPID && serving(s), `the watchdog to replace the stopped standby (${stopped})`, 60_000);
  after = await steady('a new standby');
  t.ok(after.worker.pid === before.worker.pid && after.worker.standbyPid !== before.worker.standbyPid,
    `(b) the stopped standby ${before.worker.standbyPid} was replaced by ${after.worker.standbyPid}; worker ${after.worker.pid} kept serving`);
  t.same(c.errors, [], '(b) the client saw no error');

  // (c) The keeper's own crash.
  const k0 = await unit(KEEPER);
  t.ok(k0.NFileDescriptorStore >= 4, `the keeper keeps its fds in systemd's fd store (NFileDescriptorStore=${k0.NFileDescriptorStore})`);
  const t0 = performance.now();
  c.resetGap();
  process.kill(machine.hostPid(k0.MainPID)!, 'SIGKILL');
  const k1 = await waitUnit(KEEPER, (s) => s.MainPID !== k0.MainPID && serving(s), 'systemd to restart the SIGKILLed keeper');
  const stK = await steady('a serving worker and a standby after the keeper\'s restart');
  await served('requests served after the keeper\'s crash');
  const kLog = (await machine.exec(['journalctl', '--no-pager', '-o', 'cat', '-u', KEEPER, `_PID=${k1.MainPID}`])).stdout;
  t.match(kLog, /took back the fd store from systemd/, '(c) the new keeper took its fds back from systemd (LISTEN_FDS)');
  t.equal(await c.readHello(), HELLO, `(c) keeper SIGKILL: keeper ${k0.MainPID} -> ${k1.MainPID} (NRestarts=${k1.NRestarts}), worker ${stK.worker.pid}, standby ${stK.worker.standbyPid}; the handle opened first reads`);
  t.equal((await c.fuse.read(inner.nodeid, innerFh, 0, 100)).toString(), 'inner\n', '(c) a handle opened in a subdirectory reads');
  t.equal((await c.fuse.lookup(sub.nodeid, 'inner')).nodeid, inner.nodeid, '(c) a lookup names the same inode as before the crash');
  t.equal((await c.fuse.getattr(sub.nodeid)).attr.ino, sub.attr.ino, '(c) the directory\'s nodeid still names it');
  t.ok(await c.fe.controlAlive(), '(c) the frontend\'s vhost-user connection never closed');
  t.same(c.errors, [], '(c) the client saw no error');
  t.comment(`keeper SIGKILL: the client's longest pause between two iterations was ${r1(c.maxGapMs)} ms (systemd stops the workers, starts a keeper, then a worker: two Node.js starts); ${r1(performance.now() - t0)} ms until the test saw a worker serving and a standby waiting`);
  const fdsAfter = (await unit(KEEPER)).NFileDescriptorStore;
  t.ok(fdsAfter >= k0.NFileDescriptorStore, `systemd's fd store kept every fd (${k0.NFileDescriptorStore} before the keeper's SIGKILL, ${fdsAfter} after)`);

  // After the keeper's crash a worker's death is still a handover.
  before = await steady('a standby after the keeper\'s crash');
  const killAt = performance.now();
  process.kill(machine.hostPid(before.worker.pid!)!, 'SIGKILL');
  const ms = await c.probe(killAt);
  const count = before.recovery.count;
  after = await waitStatus((s) => s.recovery.count > count, 'the recovery after the keeper\'s crash');
  t.equal(after.worker.pid, before.worker.standbyPid, `(c) after the keeper's crash a SIGKILL is a handover again (${r1(ms)} ms)`);

  await c.stop();
  t.same(c.errors, [], `the client saw no error in ${c.iterations} iterations`);
  const log = fs.readFileSync(path.join(shared, 'log'), 'utf8');
  const expected = Array.from({ length: c.iterations }, (_, i) => record(i)).join('');
  t.equal(log.length, c.iterations * RECORD_SIZE, 'the written file has every record');
  t.ok(log === expected, 'and every record is right');
  c.close();
  client = null;

  const all = (await u.daemonLog()).split('\n');
  const bad = all.filter((l) => (/"level":(50|60)/.test(l) || /\b(Failed|failed|error|Error)\b/.test(l)) && !/"level":(10|20|30|40),/.test(l) && !EXPECTED.some((re) => re.test(l)));
  t.same(bad, [], 'the keeper, the workers and systemd logged no unexpected error');
  t.comment(`standby systemd test body took ${Date.now() - started} ms`);
});
