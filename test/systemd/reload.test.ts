// `systemctl reload virtiofs-keeper@t1` under a real systemd (systemd-nspawn, real/nspawn.ts):
// the keeper unit's ExecReload runs `virtiofs-keeper upgrade`, which under systemd releases the
// waiting standby (its unit restarts it from the installed files), drains the serving worker
// and hands the session to the new one: a planned upgrade, not a crash. RELOADS reloads while a
// client (the test vhost-user frontend in this process, real/client.ts) reads, stats and
// appends in a loop; each must start (the reload ends there: ExecReload --detach) and finish
// in status as a drained handover, leave two processes that started after it (the new
// worker serving, the drained worker's unit's restart waiting), and the client must see no
// error and lose no record. The pauses (the keeper's X_DRAINED..X_RESUMED, and the client's
// longest gap between two iterations) are reported, not asserted: timing is the host's.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { nspawnUnavailable, type Machine } from './real/nspawn';
import { LoopClient, HELLO, RECORD_SIZE, record } from './real/client';
import { Units, KEEPER, WORKER, STANDBY, stopAtTeardown } from './real/units';
import { quantile } from '../bench/stats';
import type { StatusReport } from '../../shared/status_report';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const RELOADS = 6;

const EXPECTED = [
  /Failed to configure loopback network device, ignoring/,
];

const unavailable = nspawnUnavailable();

t.test('systemctl reload of the keeper unit is a planned upgrade under systemd as PID 1 (systemd-nspawn)', { timeout: 600_000 }, async (t) => {
  if (unavailable !== null) {
    t.fail(`systemd-nspawn cannot run here: ${unavailable}`);
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-rl-'));
  let client: LoopClient | null = null;
  let m: Machine | null = null;
  stopAtTeardown(t, dir, () => ({ client, machine: m }));
  const shared = path.join(dir, 'shared');
  fs.mkdirSync(shared);
  fs.writeFileSync(path.join(shared, 'hello'), HELLO);
  fs.writeFileSync(path.join(shared, 'log'), '');

  const booted = await Units.boot({ dir, root: ROOT }, (mm) => { m = mm; });
  const u = booted.units;
  const machine = u.machine;
  t.equal(booted.verify, null, 'systemd-analyze verify passes silently on the three units (ExecReload included)');
  const failWith = async (e: unknown): Promise<never> => {
    t.comment(`journal:\n${await machine.journal([KEEPER, WORKER, STANDBY], 300)}`);
    throw e;
  };
  const steady = (what: string): Promise<StatusReport> => u.steady(what).catch(failWith);

  await u.start();
  await steady('a serving worker and a waiting standby');
  const c = new LoopClient(path.join(dir, 'vhost.sock'));
  client = c;
  await c.open();
  t.equal(await c.readHello(), HELLO, 'the client reads through the worker systemd started');
  c.start();
  await c.progress(20, 60_000, 'requests served before the reloads').catch(failWith);

  const pauses: number[] = [];
  const gaps: number[] = [];
  const wrong: string[] = [];
  for (let i = 0; i < RELOADS; i++) {
    const before = await steady(`the steady state before reload ${i + 1}`);
    const oldPids = [before.worker.pid, before.worker.standbyPid];
    const count = before.upgrades?.count ?? 0;
    c.resetGap();
    const t0 = performance.now();
    try {
      await machine.run(['systemctl', 'reload', KEEPER], { timeoutMs: 120_000 });
    } catch (e) {
      return failWith(new Error(`reload ${i + 1}: ${(e as Error).message}`));
    }
    const reloadMs = performance.now() - t0;
    // The reload ends once the upgrade started (ExecReload --detach); its outcome is in status.
    const done = await u.waitStatus((s) => (s.upgrades?.count ?? 0) + (s.upgrades?.failed ?? 0) > count + (before.upgrades?.failed ?? 0) && s.upgrades?.inProgress === false,
      `the upgrade of reload ${i + 1} to finish`).catch(failWith);
    const after = await steady(`the steady state after reload ${i + 1}`);
    void done;
    const last = after.upgrades?.last ?? null;
    if ((after.upgrades?.count ?? 0) !== count + 1 || last === null || last.result !== 'ok' || last.mode !== 'drain') {
      wrong.push(`reload ${i + 1}: ${JSON.stringify(last)}`);
      continue;
    }
    if (oldPids.includes(after.worker.pid) || oldPids.includes(after.worker.standbyPid)) {
      wrong.push(`reload ${i + 1}: pids ${JSON.stringify(oldPids)} -> serving ${after.worker.pid}, waiting ${after.worker.standbyPid}`);
    }
    // Requests after the reload: the new worker serves.
    await c.progress(10, 60_000, `requests served after reload ${i + 1}`).catch(failWith);
    pauses.push(last.pauseMs ?? NaN);
    gaps.push(c.maxGapMs);
    t.comment(`reload ${i + 1}: worker ${before.worker.pid} -> ${after.worker.pid} (standby ${before.worker.standbyPid} released, ${after.worker.standbyPid} waits); pause ${last.pauseMs?.toFixed(1)} ms (drain ${last.drainMs?.toFixed(1)} ms, ${last.left} left in flight); client's longest gap ${c.maxGapMs.toFixed(1)} ms; systemctl reload took ${reloadMs.toFixed(0)} ms`);
  }
  t.same(wrong, [], `each of ${RELOADS} reloads was a drained handover to a worker started after it`);
  const r1 = (x: number): number => Math.round(x * 10) / 10;
  const line = (xs: number[]): string => `p50 ${r1(quantile(xs, 0.5))} ms, p99 ${r1(quantile(xs, 0.99))} ms, max ${r1(Math.max(...xs))} ms`;
  t.comment(`pause over ${pauses.length} reloads (the keeper: the old worker's last pop to the new one's queues running): ${line(pauses)}`);
  t.comment(`client's longest gap between two iterations per reload: ${line(gaps)}`);
  const st = await u.status();
  t.equal(st.upgrades?.failed ?? -1, 0, 'no upgrade failed');

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
  t.same(bad, [], 'the keeper, the workers and systemd logged no unexpected error (a drained worker\'s exit 5 is a success)');
});
