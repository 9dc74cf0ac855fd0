// Real guest, real QEMU, worker SIGKILLed under it. The guest must finish with zero errors
// and the right data; QEMU must not log a vhost-user error; status must count the restarts.
import t, { type Test } from 'tap';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startBackend, type Backend } from './backends';
import { startGuest, type GuestHandle } from './qemu';
import { queryStatus } from '../../cli/status';
import { MIXED_WORKLOAD } from './workloads/mixed';

const sha256 = (p: string): string => crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');

async function waitFor<T>(cond: () => T, what: string, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Kills the serving worker and waits until its successor serves. Returns the killed pid. */
async function killWorker(stateDir: string): Promise<number> {
  const pid = queryStatus(stateDir).worker.pid;
  if (pid === null) throw new Error('no worker');
  process.kill(pid, 'SIGKILL');
  await waitFor(() => { const s = queryStatus(stateDir); return s.worker.pid !== null && s.worker.pid !== pid && s.worker.state === 'running'; }, 'the successor');
  return pid;
}

function vhostErrors(g: GuestHandle): string[] {
  return g.stderr().split('\n').filter((l) => /vhost|Unexpected end-of-file|Failed to/i.test(l));
}

async function setup(t: Test, cache: 'never' | 'auto'): Promise<{ dir: string; shared: string; backend: Backend; stateDir: string; socketPath: string }> {
  const dir = t.testdir();
  const shared = path.join(dir, 'shared');
  fs.mkdirSync(shared);
  // UNIX socket paths are limited to 108 bytes; tap's testdir names are long.
  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-sock-'));
  const socketPath = path.join(sockDir, 'vhost.sock');
  const backend = await startBackend('ours', { sharedDir: shared, socketPath, dir, cache });
  t.teardown(async () => { await backend.stop(); fs.rmSync(sockDir, { recursive: true, force: true }); });
  return { dir, shared, backend, stateDir: backend.stateDir!, socketPath };
}


t.test('the guest runs a mixed POSIX workload with zero errors across 20+ worker SIGKILLs', async (t) => {
  const { dir, shared, stateDir, socketPath } = await setup(t, 'auto');
  const g = await startGuest({ socketPath, dir, script: MIXED_WORKLOAD, timeoutMs: 600_000 });
  t.teardown(() => g.kill());
  await g.waitForOutput(/round 1 ok/);
  let kills = 0;
  while (kills < 22 && !/ERR /.test(g.output()) && !g.exited()) {
    await killWorker(stateDir);
    kills++;
    // About once a second, with the workload running between kills.
    await new Promise((r) => setTimeout(r, 700));
  }
  // QEMU's exit ends the service, so read the status while the guest still runs.
  const st = queryStatus(stateDir);
  fs.writeFileSync(path.join(shared, 'stop'), '');
  const r = await g.wait();
  t.equal(r.exitCode, 0, 'the guest workload exited 0', { output: r.output.slice(-3000) });
  t.notMatch(r.output, /ERR /, 'no error in the guest');
  t.ok(kills >= 20, `the worker was SIGKILLed ${kills} times during the workload`);
  t.equal(st.worker.restarts, kills, 'status --json counts every restart');
  t.same(vhostErrors(g), [], 'QEMU logged no vhost-user error');
  const manifest = fs.readFileSync(path.join(shared, 'manifest'), 'utf8').trim().split('\n');
  const rounds = Number(/workload done after (\d+) rounds/.exec(r.output)?.[1] ?? 0);
  t.ok(rounds >= 40, `${rounds} rounds done`);
  t.equal(manifest.length, rounds, 'one file per round');
  let bad = 0;
  for (const line of manifest) {
    const [want, rel] = line.split(' ');
    if (sha256(path.join(shared, rel!)) !== want) bad++;
  }
  t.equal(bad, 0, 'every file on the host has the checksum the guest wrote');
  const appendLog = fs.readFileSync(path.join(shared, 'w', 'append.log'), 'utf8').trim().split('\n');
  t.same(appendLog, Array.from({ length: rounds }, (_, i) => `line ${i + 1}`), 'every append landed exactly once, in order');
  t.comment(`recovery over ${st.recovery.count} kills: p50 ${st.recovery.p50Ms?.toFixed(1)} ms, max ${st.recovery.maxMs?.toFixed(1)} ms`);
});

const STATE_SCRIPT = `
set -u
fail=0
dd if=/dev/urandom of=/tmp/u bs=64k count=16 2>/dev/null
cp /tmp/u /mnt/unl
want=$(sha256sum < /tmp/u)
exec 3< /mnt/unl
rm /mnt/unl
echo "HOLDING unlinked"
while [ ! -e /mnt/go-1 ]; do sleep 0.05; done
got=$(sha256sum <&3)
exec 3<&-
if [ "$got" = "$want" ]; then echo "ok open-unlinked file readable after the crash"; else echo "FAIL: unlinked file"; fail=1; fi
vfsk-hold flock /mnt/flk /mnt/go-2 || fail=1
vfsk-hold ofd /mnt/ofd /mnt/go-3 || fail=1
for k in 5 6 7; do vfsk-hold owner /mnt/own$k /mnt/go-$k || fail=1; done
mkdir /mnt/many && vfsk-tool mkfiles /mnt/many 5000 >/dev/null || { echo "FAIL: mkfiles"; fail=1; }
vfsk-hold readdir /mnt/many 5000 /mnt/go-4 || fail=1
dd if=/dev/urandom of=/tmp/big bs=1M count=64 2>/dev/null
sha256sum < /tmp/big | cut -d' ' -f1 > /mnt/big.sha256
echo "COPYING big"
cp /tmp/big /mnt/big || { echo "FAIL: copy"; fail=1; }
echo "COPIED big"
sync; echo 3 > /proc/sys/vm/drop_caches
if [ "$(sha256sum < /mnt/big | cut -d' ' -f1)" = "$(cat /mnt/big.sha256)" ]; then echo "ok 64 MiB write checksum"; else echo "FAIL: 64 MiB checksum"; fail=1; fi
exit $fail
`;

t.test('state that must outlive a worker crash', async (t) => {
  const { dir, shared, stateDir, socketPath } = await setup(t, 'never');
  const g = await startGuest({ socketPath, dir, script: STATE_SCRIPT, timeoutMs: 600_000 });
  t.teardown(() => g.kill());
  let from = 0;
  for (const [n, what] of [[1, 'unlinked'], [2, 'flock'], [3, 'ofd'], [5, 'owner'], [6, 'owner'], [7, 'owner'], [4, 'readdir']] as const) {
    const m = await g.waitForOutput(new RegExp(`HOLDING ${what}`), { from });
    from = m.index + m[0].length;
    await killWorker(stateDir);
    fs.writeFileSync(path.join(shared, `go-${n}`), '');
  }
  await g.waitForOutput(/COPYING big/);
  let kills = 0;
  while (!/COPIED big/.test(g.output()) && !g.exited()) {
    await killWorker(stateDir);
    kills++;
    await new Promise((r) => setTimeout(r, 300));
  }
  const r = await g.wait();
  t.equal(r.exitCode, 0, 'every check passed in the guest', { output: r.output.slice(-3000) });
  t.match(r.output, /ok open-unlinked file readable after the crash/);
  t.match(r.output, /ok flock held across the crash/);
  t.match(r.output, /ok ofd lock held across the crash/);
  t.equal(r.output.match(/ok posix lock owner held across the crash, dropped by close/g)?.length, 3,
    'POSIX lock owners: held across 3 kills, and dropped by the close right after each');
  t.match(r.output, /ok readdir of 5000 entries in \d+ calls, each exactly once, across the crash/);
  t.match(r.output, /ok 64 MiB write checksum/);
  t.ok(kills >= 1, `the 64 MiB write was interrupted by ${kills} kills`);
  t.equal(sha256(path.join(shared, 'big')), fs.readFileSync(path.join(shared, 'big.sha256'), 'utf8').trim(), 'host copy matches');
  t.same(vhostErrors(g), [], 'QEMU logged no vhost-user error');
});
