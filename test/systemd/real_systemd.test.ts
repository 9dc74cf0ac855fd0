// The unit pair under a real systemd: systemd 252 as PID 1 of a systemd-nspawn machine (a
// volatile view of this host's own OS, see real/nspawn.ts) runs virtiofs-keeper@t1 and
// virtiofs-worker@t1 as installed by `install-units`, with the standby twin
// (virtiofs-standby@t1) masked: this is the unit pair alone, where each worker is a Node.js start
// (test/systemd/standby.test.ts runs the three units). A client (the test vhost-user frontend,
// in this process, on the socket bound into the machine) keeps one session open and keeps
// issuing requests while systemd
//   (a) SIGKILLs the worker (`systemctl kill -s KILL`) and restarts it (Restart=always),
//   (b) kills the worker on a watchdog timeout (WatchdogSec=2s drop-in; the worker is
//       SIGSTOPped) and restarts it,
//   (c) restarts the keeper (`systemctl restart`): the keeper takes its fds back from
//       systemd's fd store (LISTEN_FDS) and the worker, BindsTo= the keeper, restarts too.
// After each, the handle opened before any restart still reads, NRestarts counts the worker's
// restarts, and the client has seen no error. The daemons' journal must hold no errors.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Machine, nspawnUnavailable } from './real/nspawn';
import { LoopClient, HELLO, RECORD_SIZE, record } from './real/client';
import { waitFor } from '../frontend/helpers';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const KEEPER = 'virtiofs-keeper@t1.service';
const WORKER = 'virtiofs-worker@t1.service';
/** Where the test's temp dir appears inside the machine (not under /tmp: the units have PrivateTmp=). */
const IN_MACHINE = '/srv/vfsk-test';
const WATCHDOG_SEC = 2;

/**
 * Journal lines that are expected (they follow from what the test does or from the container)
 * and therefore not counted as daemon errors.
 */
const EXPECTED = [
  // PrivateNetwork= in a container without CAP_NET_ADMIN: systemd says it ignores this.
  /Failed to configure loopback network device, ignoring/,
  // (a) and (b): systemd reporting the kills the test asked for.
  /Main process exited, code=(killed|dumped), status=(9\/KILL|6\/ABRT)/,
  /Failed with result '(signal|core-dump|watchdog)'/,
  /Watchdog timeout \(limit /,
  /Killing process \d+ \(node\) with signal SIGABRT/,
];

interface Unit { ActiveState: string; SubState: string; MainPID: number; NRestarts: number; NFileDescriptorStore: number }

// Inside the machine the checkout is mounted at a fixed path outside /tmp: the units run with
// PrivateTmp=, which would hide a checkout under /tmp or /var/tmp.
const IN_MACHINE_CHECKOUT = '/opt/vfsk-checkout';
const unavailable = nspawnUnavailable();

t.test('the unit pair under systemd as PID 1 (systemd-nspawn)', { timeout: 300_000 }, async (t) => {
  // scripts/ensure-deps.sh installs all of it; a gap is a failure, not a reason to skip.
  if (unavailable !== null) {
    t.fail(`systemd-nspawn cannot run here: ${unavailable}`);
    return;
  }
  const started = Date.now();
  // Short: the socket path must fit in 107 bytes, and the machine name in 64.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-sd-'));
  // One teardown, in this order: the client, the journal (kept when failing), the machine, the dir.
  let client: LoopClient | null = null;
  let m: Machine | null = null;
  t.teardown(async () => {
    if (client) { await client.stop(); client.close(); }
    if (m && !t.passing()) {
      const keep = path.join(os.tmpdir(), `${path.basename(dir)}.journal.txt`);
      if (m.leader > 0) fs.writeFileSync(keep, (await m.exec(['journalctl', '--no-pager', '-o', 'short-precise'])).stdout + '\n--- nspawn ---\n' + m.log());
      t.comment(`the machine's journal is in ${keep}`);
    }
    if (m) await m.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const shared = path.join(dir, 'shared');
  fs.mkdirSync(shared);
  fs.writeFileSync(path.join(shared, 'hello'), HELLO);
  fs.writeFileSync(path.join(shared, 'log'), '');
  const name = `vfsk-${path.basename(dir).slice('vfsk-sd-'.length).toLowerCase().replace(/[^a-z0-9]/g, 'x')}`;

  const binds: string[] = [`${ROOT}:${IN_MACHINE_CHECKOUT}`];
  // node itself, when it does not live under /usr (the machine sees only the host's /usr).
  const nodePrefix = path.dirname(path.dirname(process.execPath));
  if (!process.execPath.startsWith('/usr/')) binds.push(nodePrefix);
  m = new Machine({ name, dir, binds: [[dir, IN_MACHINE]], bindsRo: binds });
  const state = await m.boot();
  if (state !== 'running') t.comment(`machine booted ${state}: ${(await m.exec(['systemctl', '--failed', '--no-legend'])).stdout.trim()}`);
  t.comment(`machine ${name} up in ${Date.now() - started} ms (systemd ${(await m.run(['systemctl', '--version'])).split('\n')[0]})`);

  // Install the units exactly as an operator would, plus a conf and the test's drop-in.
  const installOut = await m.run([process.execPath, path.join(IN_MACHINE_CHECKOUT, 'bin', 'virtiofs-keeper.js'), 'install-units']);
  t.match(installOut, /wrote \/etc\/systemd\/system\/virtiofs-keeper@\.service/, 'install-units wrote the units');
  await m.writeFile('/etc/virtiofs-keeper/t1.conf', [
    `SHARED_DIR=${IN_MACHINE}/shared`,
    `SOCKET_PATH=${IN_MACHINE}/vhost.sock`,
    'CACHE=never',
    'OPTIONS=',
    '',
  ].join('\n'));
  // Only to make the watchdog case fast; the unit's own WatchdogSec= is 10 s.
  await m.writeFile(`/etc/systemd/system/${WORKER}.d/50-test-watchdog.conf`, `[Service]\nWatchdogSec=${WATCHDOG_SEC}s\n`);
  // Without the warm standby: the keeper's Wants= of a masked unit pulls nothing in.
  await m.run(['systemctl', 'mask', 'virtiofs-standby@t1.service']);
  await m.run(['systemctl', 'daemon-reload']);
  const verify = await m.exec(['systemd-analyze', 'verify', KEEPER, WORKER]);
  t.equal(verify.code, 0, 'systemd-analyze verify passes on the installed units (and the drop-in) inside the machine');
  t.equal(verify.stdout + verify.stderr, '', 'with nothing to say');

  const units = [KEEPER, WORKER];
  const journal = async (): Promise<string> => m.journal(units, 400);
  const unit = async (u: string): Promise<Unit> => {
    const p = await m.show(u, ['ActiveState', 'SubState', 'MainPID', 'NRestarts', 'NFileDescriptorStore']);
    return { ActiveState: p.ActiveState!, SubState: p.SubState!, MainPID: Number(p.MainPID), NRestarts: Number(p.NRestarts), NFileDescriptorStore: Number(p.NFileDescriptorStore) };
  };
  /** Fails with `e`, after putting the units' journal in the output (tap keeps comments' lines). */
  const failWith = async (e: unknown, extra = ''): Promise<never> => {
    t.comment(`journal of ${units.join(' and ')}:\n${await journal()}`);
    throw new Error(`${(e as Error).message}${extra}`);
  };
  /** Waits for `cond` on a unit. */
  const waitUnit = async (u: string, cond: (s: Unit) => boolean, what: string, timeoutMs = 30_000): Promise<Unit> => {
    let last: Unit | null = null;
    try {
      return await waitFor(async () => { const s = await unit(u); last = s; return cond(s) ? s : null; }, what, timeoutMs, 50) as Unit;
    } catch (e) {
      return failWith(e, `; ${u} is ${JSON.stringify(last)}`);
    }
  };
  const serving = (s: Unit): boolean => s.ActiveState === 'active' && s.SubState === 'running' && s.MainPID > 0;

  const start = await m.exec(['systemctl', 'start', KEEPER], { timeoutMs: 60_000 });
  t.equal(start.code, 0, `systemctl start ${KEEPER} ${start.stderr}`);
  // Wants= pulls the worker in; Type=notify: active means READY=1 was sent.
  await waitUnit(KEEPER, serving, 'the keeper to be active');
  const w0 = await waitUnit(WORKER, serving, 'the worker (pulled in by Wants=) to be active');
  t.equal(w0.NRestarts, 0, 'the worker has not been restarted yet');
  // Its sandbox, seen from the machine: the shared directory is its root, and its unit's /proc
  // is the pid subset (ProcSubset=pid, ProtectProc=invisible).
  t.same((await m.run(['ls', '-A', `/proc/${w0.MainPID}/root`])).trim().split('\n').sort(), ['hello', 'log'], 'the worker\'s root is the shared directory');
  const procProps = await m.show(WORKER, ['ProtectProc', 'ProcSubset']);
  t.same({ ...procProps }, { ProtectProc: 'invisible', ProcSubset: 'pid' }, 'the worker unit has ProtectProc=invisible and ProcSubset=pid');

  const c1 = new LoopClient(path.join(dir, 'vhost.sock'));
  client = c1;
  await c1.open();
  t.equal(await c1.readHello(), HELLO, 'the client reads through the worker systemd started');
  c1.start();
  const served = async (what: string, c: LoopClient = c1): Promise<void> => {
    try {
      await c.progress(20, 60_000, what);
    } catch (e) {
      await failWith(e);
    }
  };
  await served('requests served before any restart');
  // The worker unit's process confined itself: the seccomp filter is on (--seccomp kill, the
  // default), under systemd's own SystemCallFilter.
  const wStatus = (await m.exec(['cat', `/proc/${w0.MainPID}/status`])).stdout;
  t.match(wStatus, /^Seccomp:\s+2$/m, 'the worker under systemd runs its seccomp filter (Seccomp: 2)');
  t.match(wStatus, /^NoNewPrivs:\s+1$/m, 'with no_new_privs');

  // (a) SIGKILL.
  const k0 = await unit(KEEPER);
  let t0 = Date.now();
  await m.run(['systemctl', 'kill', '--signal=SIGKILL', WORKER]);
  const w1 = await waitUnit(WORKER, (s) => s.NRestarts === 1 && s.MainPID !== w0.MainPID && serving(s), 'systemd to restart the SIGKILLed worker');
  await served('requests served after the SIGKILL');
  t.equal(await c1.readHello(), HELLO, `(a) SIGKILL: systemd restarted the worker (pid ${w0.MainPID} -> ${w1.MainPID}, NRestarts=1, ${Date.now() - t0} ms) and the open handle reads`);
  t.same(c1.errors, [], '(a) the client saw no error');

  // (b) Watchdog: a stopped worker sends no WATCHDOG=1; systemd kills it after WatchdogSec.
  t0 = Date.now();
  await m.run(['systemctl', 'kill', '--kill-whom=main', '--signal=SIGSTOP', WORKER]);
  const w2 = await waitUnit(WORKER, (s) => s.NRestarts === 2 && s.MainPID !== w1.MainPID && serving(s), 'the watchdog to fire and systemd to restart the worker', 60_000);
  await served('requests served after the watchdog restart');
  const wdLog = await journal();
  t.match(wdLog, new RegExp(`${WORKER.replace(/[.@]/g, '\\$&')}: Watchdog timeout \\(limit ${WATCHDOG_SEC}s\\)`), 'systemd logged the watchdog timeout');
  t.equal(await c1.readHello(), HELLO, `(b) watchdog: systemd killed and restarted the worker (pid ${w1.MainPID} -> ${w2.MainPID}, NRestarts=2, ${Date.now() - t0} ms) and the open handle reads`);
  t.same(c1.errors, [], '(b) the client saw no error');

  // (c) Keeper restart: its fds come back from systemd's fd store.
  const kBefore = await unit(KEEPER);
  t.equal(kBefore.MainPID, k0.MainPID, 'the keeper was not restarted by the worker restarts');
  t.ok(kBefore.NFileDescriptorStore >= 4, `the keeper keeps its fds in systemd's fd store (NFileDescriptorStore=${kBefore.NFileDescriptorStore})`);
  t0 = Date.now();
  const restart = await m.exec(['systemctl', 'restart', KEEPER], { timeoutMs: 60_000 });
  t.equal(restart.code, 0, `systemctl restart ${KEEPER} ${restart.stderr}`);
  const k1 = await waitUnit(KEEPER, (s) => s.MainPID !== kBefore.MainPID && serving(s), 'the keeper to come back');
  const w3 = await waitUnit(WORKER, (s) => s.MainPID !== w2.MainPID && serving(s), 'the worker to come back with the keeper');
  await served('requests served after the keeper restart');
  const kLog = (await m.exec(['journalctl', '--no-pager', '-o', 'cat', '-u', KEEPER, `_PID=${k1.MainPID}`])).stdout;
  t.match(kLog, /took back the fd store from systemd/, 'the new keeper took its fds back from systemd (LISTEN_FDS)');
  t.equal(await c1.readHello(), HELLO, `(c) keeper restart: keeper pid ${kBefore.MainPID} -> ${k1.MainPID}, worker ${w2.MainPID} -> ${w3.MainPID} (${Date.now() - t0} ms), and the open handle reads`);
  t.ok(await c1.fe.controlAlive(), 'the frontend\'s vhost-user connection never closed');
  t.ok(fs.existsSync(path.join(dir, 'vhost.sock')), 'the vhost-user socket is still in place for the next frontend');
  t.same(c1.errors, [], '(c) the client saw no error');

  // A keeper restart is a stop and a start job for the worker (BindsTo=, Wants=), not an
  // automatic restart: systemd resets the worker's counter.
  t.equal(w3.NRestarts, 0, 'the worker came back through a start job (its NRestarts was reset)');

  await c1.stop();
  t.same(c1.errors, [], `the client saw no error in ${c1.iterations} iterations`);
  // Every record written through the handle, across every restart, is on the host's disk.
  const log = fs.readFileSync(path.join(shared, 'log'), 'utf8');
  const expected = Array.from({ length: c1.iterations }, (_, i) => record(i)).join('');
  t.equal(log.length, c1.iterations * RECORD_SIZE, 'the written file has every record');
  t.ok(log === expected, 'and every record is right');

  // (d) The frontend goes away (QEMU exits); the next one connects through the same path.
  c1.close();
  client = null;
  if (fs.existsSync(path.join(dir, 'vhost.sock'))) {
    const w4 = await waitUnit(WORKER, (s) => s.MainPID !== w3.MainPID && serving(s), 'a fresh worker after the frontend hung up');
    const c2 = new LoopClient(path.join(dir, 'vhost.sock'));
    client = c2;
    await c2.open().catch(failWith);
    c2.start();
    await served('requests served to a new frontend', c2);
    await c2.stop();
    t.same(c2.errors, [], `(d) a new frontend is served after the first hung up (worker ${w3.MainPID} -> ${w4.MainPID})`);
    const w5 = await unit(WORKER);
    t.ok(w5.MainPID === w4.MainPID && w5.NRestarts === 1, `one automatic restart since the keeper restart, the hang-up's (NRestarts=${w5.NRestarts}): no watchdog false positive`);
    c2.close();
    client = null;
  }

  // No daemon error in the journal (pino level >= 50, or systemd failing at something).
  const all = (await m.exec(['journalctl', '--no-pager', '-o', 'cat', '-u', KEEPER, '-u', WORKER])).stdout.split('\n');
  const bad = all.filter((l) => (/"level":(50|60)/.test(l) || /\b(Failed|failed|error|Error)\b/.test(l)) && !/"level":(10|20|30|40),/.test(l) && !EXPECTED.some((re) => re.test(l)));
  t.same(bad, [], 'the keeper, the worker and systemd logged no unexpected error');
  t.comment(`real systemd test body took ${Date.now() - started} ms`);
});
