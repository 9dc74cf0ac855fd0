// A real guest walks and stats a tree of 60,000 files, far more inodes than the fd limit of the
// keeper and the worker (cut to 4096 with prlimit) allows, with the worker killed in the
// middle: with --inode-file-handles every file is seen (twice: the second pass reaches inodes
// the guest holds, reopened by handle after the restart), and the keeper's fd count does not
// grow with the inodes the guest knows.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startBackend } from './backends';
import { startGuest, type GuestHandle } from './qemu';
import { queryStatus } from '../../cli/status';
import { waitFor } from '../frontend/helpers';
import { noFileLimits, setNoFile } from '../helpers/rlimit';

const DIRS = 60;
const PER_DIR = 1000;
const FILES = DIRS * PER_DIR;
const LIMIT = 4096;

const WALK = `
set -u
walk() {
  label=$1; total=0; sum=0
  for d in /mnt/t/d*; do
    r=$(find "$d" -type f -exec stat -c %s {} + | awk '{n++; s+=$1} END {print n+0, s+0}')
    set -- $r
    total=$((total + $1)); sum=$((sum + $2))
    echo "$label DIR $(basename $d) $1"
  done
  echo "$label files=$total bytes=$sum"
}
walk PASS1
walk PASS2
echo WALKED
# Bounded: if lookups fail (EMFILE), the stop file is never seen and the test must fail, not hang.
n=0
while [ ! -e /mnt/stop ] && [ $n -lt 600 ]; do sleep 0.2; n=$((n + 1)); done
[ -e /mnt/stop ] || { echo "FAIL: /mnt/stop never seen"; exit 1; }
echo DONE
`;

function vhostErrors(g: GuestHandle): string[] {
  return g.stderr().split('\n').filter((l) => /vhost|Unexpected end-of-file|Failed to/i.test(l));
}

const fdsOf = (pid: number): number => fs.readdirSync(`/proc/${pid}/fd`).length;

t.test(`a guest walks and stats ${FILES} files under a ${LIMIT}-fd limit, the worker killed in the middle: every file seen, the keeper's fds independent of the inodes`, async (t) => {
  const dir = t.testdir();
  const shared = path.join(dir, 'shared');
  let bytes = 0;
  for (let d = 0; d < DIRS; d++) {
    const sub = path.join(shared, 't', `d${String(d).padStart(2, '0')}`);
    fs.mkdirSync(sub, { recursive: true });
    for (let i = 0; i < PER_DIR; i++) {
      const body = `${d}.${i}\n`;
      bytes += body.length;
      fs.writeFileSync(path.join(sub, `f${String(i).padStart(4, '0')}`), body);
    }
  }
  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-sock-'));
  const socketPath = path.join(sockDir, 'vhost.sock');
  const backend = await startBackend('ours', { sharedDir: shared, socketPath, dir, cache: 'auto', extraArgs: ['--inode-file-handles', 'prefer'] });
  t.teardown(async () => { await backend.stop(); fs.rmSync(sockDir, { recursive: true, force: true }); });
  const stateDir = backend.stateDir!;

  // The keeper, and every worker it starts from now on, under a 4096-fd limit. The serving
  // worker and its standby were started before: two kills hand the session to a standby
  // started under the limit.
  const keeperPid = queryStatus(stateDir).keeper.pid;
  setNoFile(keeperPid, LIMIT, LIMIT);
  for (let k = 0; k < 2; k++) {
    // A starting worker's pid is known from its first keeper.sock message on (namespace sandbox).
    const pid = (await waitFor(() => queryStatus(stateDir).worker.pid, 'the worker\'s pid', 60_000))!;
    await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'a ready standby', 60_000);
    process.kill(pid, 'SIGKILL');
    await waitFor(() => { const q = queryStatus(stateDir); return q.worker.state === 'running' && q.worker.pid !== null && q.worker.pid !== pid; }, 'the standby serving', 60_000);
  }
  const limited = queryStatus(stateDir).worker.pid!;
  t.equal(noFileLimits(limited).hard, String(LIMIT), `the serving worker's fd limit is ${LIMIT}`);
  const restarts0 = queryStatus(stateDir).worker.restarts;

  const g = await startGuest({ socketPath, dir, script: WALK, timeoutMs: 900_000, memoryMiB: 1024 });
  t.teardown(() => g.kill());
  await g.waitForOutput(/PASS1 DIR d10 /, { timeoutMs: 600_000 });
  const early = queryStatus(stateDir);
  await g.waitForOutput(/PASS1 DIR d30 /, { timeoutMs: 600_000 });
  // The worker dies in the middle of the walk; its successor resumes by handles.
  await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'a ready standby', 60_000);
  const victim = queryStatus(stateDir).worker.pid!;
  process.kill(victim, 'SIGKILL');
  await g.waitForOutput(/WALKED/, { timeoutMs: 900_000 });
  const late = queryStatus(stateDir);
  const keeperFds = fdsOf(keeperPid);
  const workerFds = fdsOf(late.worker.pid!);
  fs.writeFileSync(path.join(shared, 'stop'), '');
  const r = await g.wait();
  t.equal(r.exitCode, 0, 'the guest script exited 0', { output: r.output.slice(-3000) });
  const p1 = /PASS1 files=(\d+) bytes=(\d+)/.exec(r.output);
  const p2 = /PASS2 files=(\d+) bytes=(\d+)/.exec(r.output);
  t.ok(p1 && p2, 'both passes ran');
  t.equal(Number(p1![1]), FILES, `pass 1 (worker killed in the middle) saw every file (${p1![1]})`);
  t.equal(Number(p1![2]), bytes, 'and every size');
  t.equal(Number(p2![1]), FILES, `pass 2 saw every file (${p2![1]})`);
  t.equal(Number(p2![2]), bytes, 'and every size');
  t.ok(late.worker.restarts > restarts0, 'the worker was replaced during the walk');
  t.not(late.worker.pid, victim);

  const h = late.fuse.inodeHandles!;
  t.equal(h.active, true, 'inode handles on');
  t.ok(late.fuse.inodes > LIMIT, `the guest holds more inodes (${late.fuse.inodes}) than the fd limit (${LIMIT})`);
  t.ok(h.byHandle > LIMIT, `${h.byHandle} inodes by handle, ${h.byFd} by fd`);
  const inodeFdNames = late.fdNames.inode ?? 0;
  t.equal(inodeFdNames, 0, 'the keeper holds no inode fd');
  t.ok(late.keeper.fdsHeld - early.keeper.fdsHeld < 16,
    `keeper fds held: ${early.keeper.fdsHeld} at ${early.fuse.inodes} inodes, ${late.keeper.fdsHeld} at ${late.fuse.inodes} inodes`);
  t.ok(keeperFds < 256, `the keeper process has ${keeperFds} fds open`);
  t.ok(workerFds < LIMIT, `the worker process has ${workerFds} fds open (${h.cachedFds} cached inode fds, bound ${h.cacheCapacity})`);
  t.comment(`keeper fdsHeld ${early.keeper.fdsHeld} → ${late.keeper.fdsHeld}, keeper fds ${keeperFds}, worker fds ${workerFds}, inodes ${early.fuse.inodes} → ${late.fuse.inodes}, opened by handle ${h.opensByHandle}`);
  t.same(vhostErrors(g), [], 'QEMU logged no vhost-user error');
});
