// Upgrades of the whole service (keeper and worker) under a real guest: the service starts from
// an earlier build installed in a temp dir (the first commit with today's keeper re-exec, built
// from git), the guest runs the mixed POSIX workload, and the service is upgraded to this build and
// back, keeper (re-exec: same pid, every fd) and worker (graceful drain) each time, with zero
// guest errors and every byte on the host. The pause of each worker handover and the keeper's
// re-exec time are reported. The earlier build must itself re-exec, so it cannot be older than
// the re-exec (an older keeper is upgraded by a restart: see docs/ARCHITECTURE.md, "Upgrades").
import t from 'tap';
import * as crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startBackend } from './backends';
import { startGuest } from './qemu';
import { MIXED_WORKLOAD } from './workloads/mixed';
import { queryStatus } from '../../cli/status';
import { REPO_ROOT } from '../frontend/backend';
import { waitFor } from '../frontend/helpers';
import { PKG_VERSION, install, installRev, pctl, runUpgrade, switchTo } from '../crash/upgrade_harness';

const HANDOVERS = Number(process.env.VFSK_E2E_UPGRADES ?? 4);
const sha256 = (p: string): string => crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');

/** The first commit with a keeper re-exec that keeps stdio (the one before logged to /dev/null
 * after its re-exec), or $VFSK_REEXEC_FROM. */
function firstReexecRev(): string {
  if (process.env.VFSK_REEXEC_FROM) return process.env.VFSK_REEXEC_FROM;
  const first = execFileSync('git', ['-C', REPO_ROOT, 'log', '--format=%H', '--reverse', '-S', 'uv_disable_stdio_inheritance', '--', 'keeper/reexec.ts'],
    { encoding: 'utf8' }).trim().split('\n')[0];
  if (!first) throw new Error('no commit has the keeper re-exec in keeper/reexec.ts (shallow clone? set VFSK_REEXEC_FROM)');
  return first;
}

t.test(`a real guest across ${HANDOVERS} upgrades of keeper and worker between an earlier build and this one`, async (t) => {
  const dir = t.testdir();
  const shared = path.join(dir, 'shared');
  fs.mkdirSync(shared);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-e2e-upg-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const rev = firstReexecRev();
  const earlier = installRev(path.join(root, 'rel-earlier'), rev);
  const earlierVersion = `${earlier.version}@${rev.slice(0, 8)}`;
  // Tell the two apart in status: the earlier build keeps its package.json version; this one is
  // installed as PKG_VERSION+this.
  const current = install(path.join(root, 'rel-this'), `${PKG_VERSION}+this`);
  switchTo(root, earlier);
  const socketPath = path.join(root, 'vhost.sock');
  const backend = await startBackend('ours', { sharedDir: shared, socketPath, dir, cache: 'auto', binPath: path.join(root, 'current', 'bin', 'virtiofs-keeper.js') });
  t.teardown(() => backend.stop());
  const stateDir = backend.stateDir!;
  const g = await startGuest({ socketPath, dir, script: MIXED_WORKLOAD, timeoutMs: 600_000 });
  t.teardown(() => g.kill());
  await g.waitForOutput(/round 1 ok/);
  const keeperPid = queryStatus(stateDir).keeper.pid;
  t.equal(queryStatus(stateDir).keeper.version, earlier.version, `the service runs the earlier build (${earlierVersion})`);
  const pauses: number[] = [];
  const keeperMs: number[] = [];
  for (let i = 0; i < HANDOVERS && !/ERR /.test(g.output()) && !g.exited(); i++) {
    const to = i % 2 === 0 ? current : earlier;
    await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'a standby ready', 60_000);
    const rounds = (g.output().match(/round \d+ ok/g) ?? []).length;
    switchTo(root, to);
    const r = await runUpgrade(stateDir, ['--keeper']);
    if (r.result?.result !== 'ok') t.comment(`upgrade output: ${r.out}\nbackend log:\n${backend.log().slice(-10_000)}`);
    t.equal(r.result?.result, 'ok', `handover ${i + 1} (to ${to === current ? 'this build' : earlierVersion}): ok`);
    t.equal(r.result?.keeperTo, to.version, 'the keeper runs it');
    t.equal(r.result?.newVersion, to.version, 'and so does the worker');
    t.equal(r.result?.mode, 'drain', 'a graceful drain');
    t.equal(queryStatus(stateDir).keeper.pid, keeperPid, 'the keeper kept its pid');
    if (r.result?.pauseMs != null) pauses.push(r.result.pauseMs);
    if (r.result?.keeperMs != null) keeperMs.push(r.result.keeperMs);
    await waitFor(() => (g.output().match(/round \d+ ok/g) ?? []).length > rounds || g.exited(), 'another guest round after it', 60_000);
  }
  const st = queryStatus(stateDir);
  t.equal(st.worker.restarts, 0, 'no handover was a crash');
  t.equal(st.keeper.reexecs, HANDOVERS, 'every keeper upgrade was a re-exec');
  fs.writeFileSync(path.join(shared, 'stop'), '');
  const res = await g.wait();
  t.equal(res.exitCode, 0, 'the guest workload exited 0', { output: res.output.slice(-3000) });
  t.notMatch(res.output, /ERR /, 'no error in the guest');
  const vhost = g.stderr().split('\n').filter((l) => /vhost|Unexpected end-of-file|Failed to/i.test(l));
  t.same(vhost, [], 'QEMU logged no vhost-user error');
  const manifest = fs.readFileSync(path.join(shared, 'manifest'), 'utf8').trim().split('\n');
  const rounds = Number(/workload done after (\d+) rounds/.exec(res.output)?.[1] ?? 0);
  t.equal(manifest.length, rounds, `one file per round (${rounds})`);
  t.same(manifest.filter((line) => { const [want, rel] = line.split(' '); return sha256(path.join(shared, rel!)) !== want; }), [], 'every file on the host has the checksum the guest wrote');
  const appendLog = fs.readFileSync(path.join(shared, 'w', 'append.log'), 'utf8').trim().split('\n');
  t.same(appendLog, Array.from({ length: rounds }, (_, i) => `line ${i + 1}`), 'every append landed exactly once, in order');
  t.equal(pauses.length, HANDOVERS, 'every worker handover\'s pause was measured');
  t.equal((backend.log().match(/keeper re-executed/g) ?? []).length, HANDOVERS, 'each new keeper image logged its start where the first one logs');
  t.comment(`worker handover pauses (ms): ${pauses.map((p) => p.toFixed(2)).join(' ')}; p50 ${pctl(pauses, 0.5).toFixed(2)}, p99 ${pctl(pauses, 0.99).toFixed(2)}`);
  t.comment(`keeper re-exec (execve to keeper.sock served again; the worker served the guest meanwhile) (ms): ${keeperMs.map((p) => p.toFixed(1)).join(' ')}`);
});
