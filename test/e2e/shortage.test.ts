// A real guest while the host runs short of fds: (1) the keeper cannot take one more fd for a
// few seconds, and the worker is killed in the middle, while the guest writes and reads back
// files: nothing is lost and the guest sees no error; (2) the guest holds more inodes than the
// fd limit allows: the lookups past it fail with EMFILE ("Too many open files"), everything
// else keeps working, and after dropping its caches the guest reaches the whole tree.
import t, { type Test } from 'tap';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startBackend } from './backends';
import { startGuest, type GuestHandle } from './qemu';
import { queryStatus } from '../../cli/status';
import { waitFor } from '../frontend/helpers';
import { alive, settledLowestFreeFd, noFileLimits as limits, setNoFile as prlimit } from '../helpers/rlimit';

function vhostErrors(g: GuestHandle): string[] {
  return g.stderr().split('\n').filter((l) => /vhost|Unexpected end-of-file|Failed to/i.test(l));
}

async function setup(t: Test, populate?: (shared: string) => void, extraArgs: string[] = []): Promise<{ shared: string; stateDir: string; socketPath: string; dir: string; log: () => string }> {
  const dir = t.testdir();
  const shared = path.join(dir, 'shared');
  fs.mkdirSync(shared);
  populate?.(shared);
  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-sock-'));
  const socketPath = path.join(sockDir, 'vhost.sock');
  const backend = await startBackend('ours', { sharedDir: shared, socketPath, dir, cache: 'auto', extraArgs });
  t.teardown(async () => { await backend.stop(); fs.rmSync(sockDir, { recursive: true, force: true }); });
  return { shared, stateDir: backend.stateDir!, socketPath, dir, log: () => backend.log() };
}

// Each round writes a file, makes a dir and reads the file back; a round that fails with
// EMFILE/ENFILE (allowed while the host is short) is retried, any other error ends the run.
const WRITE_READ = `
set -u
mkdir -p /mnt/w
i=1; emfile=0
while [ $i -le 30 ] || [ ! -e /mnt/stop ]; do
  dd if=/dev/urandom of=/tmp/blk bs=4k count=$((1 + i % 16)) 2>/dev/null
  if ! out=$( { cp /tmp/blk /mnt/w/f$i && mkdir -p /mnt/w/d$i && [ "$(sha256sum < /mnt/w/f$i)" = "$(sha256sum < /tmp/blk)" ]; } 2>&1 ); then
    case "$out" in *"Too many open files"*) emfile=$((emfile + 1)); sleep 0.1; continue;; esac
    echo "ERR round $i: $out"; exit 1
  fi
  echo "$(sha256sum < /tmp/blk | cut -d' ' -f1) w/f$i" >> /tmp/manifest
  echo "round $i ok"
  i=$((i + 1))
done
cp /tmp/manifest /mnt/manifest || { echo "ERR manifest"; exit 1; }
echo "workload done after $((i - 1)) rounds, $emfile rounds retried after EMFILE"
`;

t.test('the keeper and the worker out of fds for a few seconds, the worker killed meanwhile: the guest loses nothing', async (t) => {
  const { shared, stateDir, socketPath, dir, log } = await setup(t);
  const g = await startGuest({ socketPath, dir, script: WRITE_READ, timeoutMs: 600_000 });
  t.teardown(() => g.kill());
  await g.waitForOutput(/round 3 ok/);
  const keeperPid = queryStatus(stateDir).keeper.pid;
  const original = limits(keeperPid);
  t.teardown(() => { try { prlimit(keeperPid, original.soft, original.hard); } catch { /* gone */ } });
  const before = queryStatus(stateDir).worker.restarts;
  // Not one more fd for the keeper (new inodes and files cannot be stored, no worker can be
  // spawned) nor for the worker (its own opens fail).
  const pid = queryStatus(stateDir).worker.pid;
  prlimit(keeperPid, (await settledLowestFreeFd(keeperPid)) - 2, original.hard);
  if (pid !== null) prlimit(pid, (await settledLowestFreeFd(pid)) - 2, limits(pid).hard);
  await new Promise((r) => setTimeout(r, 1000));
  // It may have died already: a worker whose fd stores the keeper refuses dies on purpose.
  if (pid !== null && alive(pid)) process.kill(pid, 'SIGKILL');
  await new Promise((r) => setTimeout(r, 2000));
  prlimit(keeperPid, original.soft, original.hard);
  await waitFor(() => { const q = queryStatus(stateDir); return q.worker.state === 'running' && q.worker.pid !== pid; }, 'a worker serving again', 60_000);
  const rounds0 = Number(/round (\d+) ok(?![\s\S]*round \d+ ok)/.exec(g.output())?.[1] ?? 0);
  await waitFor(() => Number(/round (\d+) ok(?![\s\S]*round \d+ ok)/.exec(g.output())?.[1] ?? 0) >= rounds0 + 3 || g.exited(), 'the workload going on', 60_000);
  const st = queryStatus(stateDir);
  fs.writeFileSync(path.join(shared, 'stop'), '');
  const r = await g.wait();
  t.equal(r.exitCode, 0, 'the guest workload exited 0', { output: r.output.slice(-3000) });
  t.notMatch(r.output, /ERR /, 'no error in the guest but EMFILE');
  t.comment(/workload done after .*/.exec(r.output)?.[0] ?? '');
  t.ok(st.worker.restarts > before, `the worker was replaced (${st.worker.restarts - before} restarts)`);
  t.equal(st.keeper.pid, keeperPid, 'the same keeper throughout');
  t.match(log(), /cannot start a worker process; retrying/, 'the shortage was real: the keeper could not spawn for a while');
  const manifest = fs.readFileSync(path.join(shared, 'manifest'), 'utf8').trim().split('\n');
  let bad = 0;
  for (const line of manifest) {
    const [want, rel] = line.split(' ');
    if (crypto.createHash('sha256').update(fs.readFileSync(path.join(shared, rel!))).digest('hex') !== want) bad++;
  }
  t.ok(manifest.length >= 30, `${manifest.length} files written`);
  t.equal(bad, 0, 'every file on the host has the checksum the guest wrote');
  t.same(vhostErrors(g), [], 'QEMU logged no vhost-user error');
});

const BIG_TREE = `
set -u
n=0; emfile=0; other=0
for f in /mnt/t/*; do
  if out=$(cat "$f" 2>&1 >/dev/null); then n=$((n + 1));
  else case "$out" in *"Too many open files"*) emfile=$((emfile + 1));; *) other=$((other + 1)); echo "OTHER $out";; esac; fi
done
echo "PASS1 ok=$n emfile=$emfile other=$other"
# Inodes the guest holds keep working: the root, and a file read before the limit.
stat /mnt >/dev/null && cat /mnt/t/f00000 >/dev/null && echo "HELD ok" || echo "HELD FAIL"
# Dropping its caches makes the guest forget inodes (FORGET): then every file is reachable,
# dropping again as it goes so that it never holds more than the limit.
echo 2 > /proc/sys/vm/drop_caches
n=0; bad=0; k=0
for f in /mnt/t/*; do
  cat "$f" >/dev/null 2>&1 && n=$((n + 1)) || bad=$((bad + 1))
  k=$((k + 1)); [ $((k % 100)) = 0 ] && echo 2 > /proc/sys/vm/drop_caches
done
echo "PASS2 ok=$n bad=$bad"
`;

t.test('a guest holding more inodes than the fd limit allows: EMFILE past it, all reachable after drop_caches', async (t) => {
  const N = 1500;
  const { stateDir, socketPath, dir, log } = await setup(t, (shared) => {
    fs.mkdirSync(path.join(shared, 't'));
    for (let i = 0; i < N; i++) fs.writeFileSync(path.join(shared, 't', `f${String(i).padStart(5, '0')}`), `${i}\n`);
  }, ['--inode-file-handles', 'never']); // an fd per inode: what runs out here (test/e2e/handles.test.ts: with handles)
  // A host with a hard limit of 1024 fds for the keeper, and through it for every worker.
  const keeperPid = queryStatus(stateDir).keeper.pid;
  // A starting worker's pid is known from its first keeper.sock message on (namespace sandbox).
  const firstWorker = (await waitFor(() => queryStatus(stateDir).worker.pid, 'the worker\'s pid', 30_000))!;
  prlimit(keeperPid, 1024, 1024);
  process.kill(firstWorker, 'SIGKILL');
  await waitFor(() => { const q = queryStatus(stateDir); return q.worker.pid !== null && q.worker.pid !== firstWorker && q.worker.state === 'running'; }, 'a worker under the limit', 30_000);
  const g = await startGuest({ socketPath, dir, script: BIG_TREE, timeoutMs: 600_000 });
  t.teardown(() => g.kill());
  const r = await g.wait();
  const p1 = /PASS1 ok=(\d+) emfile=(\d+) other=(\d+)/.exec(r.output);
  const p2 = /PASS2 ok=(\d+) bad=(\d+)/.exec(r.output);
  t.ok(p1 && p2, 'the guest script ran to the end', { output: r.output.slice(-3000) });
  t.ok(Number(p1![2]) > 0, `past the limit the guest got EMFILE (${p1![2]} of ${N} files; ${p1![1]} read)`);
  t.equal(Number(p1![3]), 0, 'and no other error');
  t.match(r.output, /HELD ok/, 'held inodes keep working at the limit');
  t.equal(Number(p2![1]), N, `after dropping caches every file was read (${p2![1]})`);
  // From the log: once QEMU is gone the worker ends the service, and the keeper may be gone too.
  t.equal((log().match(/"msg":"worker died; restarting"/g) ?? []).length, 1, 'no worker died (the one death logged is the kill above)');
  t.same(vhostErrors(g), [], 'QEMU logged no vhost-user error');
});
