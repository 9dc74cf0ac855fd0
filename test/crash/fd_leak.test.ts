// 50 worker restarts: the keeper's fd count returns to its steady value, and each new worker
// holds the same set of fds (what the keeper handed it plus its own fixed set), so no worker
// inherits an fd it does not own and nothing accumulates.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, waitFor } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';

const fdCount = (pid: number): number => fs.readdirSync(`/proc/${pid}/fd`).length;
/** What each fd of a process points at, with socket/anon inode numbers masked. */
function fdKinds(pid: number): string[] {
  const out: string[] = [];
  for (const f of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      // A confined worker's pinned /proc/self/fd and /proc/self/fdinfo (worker/sandbox.ts) name its own pid.
      out.push(fs.readlinkSync(`/proc/${pid}/fd/${f}`).replace(/\[\d+\]/, '[]').replace(/\(deleted\)/, '').replace(/^\/\d+\/(fd|fdinfo)$/, '/PID/$1'));
    } catch { /* closed meanwhile */ }
  }
  return out.sort();
}

t.test('no fd accumulates across 50 worker restarts', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', {
    extraArgs: ['--state-dir', stateDir],
    setup: (d) => { for (let i = 0; i < 5; i++) fs.writeFileSync(path.join(d, `f${i}`), `file ${i}`); },
  });
  // Some session state that holds fds: inodes, open files, an open dir.
  for (let i = 0; i < 5; i++) {
    const e = await s.fuse.lookup(F.FUSE_ROOT_ID, `f${i}`);
    await s.fuse.open(e.nodeid, F.O.RDONLY);
  }
  await s.fuse.opendir(F.FUSE_ROOT_ID);
  const keeperPid = queryStatus(stateDir).keeper.pid;
  let keeperSteady = -1;
  let workerSteady: string[] | null = null;
  for (let i = 0; i < 50; i++) {
    const old = queryStatus(stateDir).worker.pid!;
    process.kill(old, 'SIGKILL');
    const st = await waitFor(() => {
      const q = queryStatus(stateDir);
      return q.worker.pid !== null && q.worker.pid !== old && q.worker.state === 'running' && q.vhost.connected ? q : null;
    }, `worker ${i + 1} running`, 20_000);
    // A request through the new worker: it is really serving.
    await s.fuse.getattr(F.FUSE_ROOT_ID);
    // Steady state includes a loaded standby (with its own keeper.sock connection).
    await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'the standby', 20_000);
    const workerPid = st!.worker.pid!;
    if (i === 0) {
      keeperSteady = fdCount(keeperPid);
      workerSteady = fdKinds(workerPid);
      t.comment(`keeper holds ${keeperSteady} fds, a worker ${workerSteady.length}`);
      continue;
    }
    // A worker opens a few fds lazily while it settles (libuv's threadpool, the journal);
    // a leak never converges.
    // Our own status queries briefly add a keeper.sock connection: growth is what a leak looks
    // like, so the keeper's baseline is the least it was seen holding.
    const settled = await waitFor(() => {
      const k = fdCount(keeperPid);
      if (k < keeperSteady) keeperSteady = k;
      return k <= keeperSteady && fdKinds(workerPid).join('\n') === workerSteady!.join('\n');
    }, 'fd sets to settle', 3000).then(() => true, () => false);
    if (!settled) {
      const now = fdKinds(workerPid);
      const extra = now.filter((k) => !workerSteady!.includes(k));
      const missing = workerSteady!.filter((k) => !now.includes(k));
      t.fail(`restart ${i + 1}: keeper ${fdCount(keeperPid)} fds (steady ${keeperSteady}); worker ${now.length} fds (steady ${workerSteady!.length})`, { extra, missing });
      return;
    }
  }
  t.ok(fdCount(keeperPid) <= keeperSteady + 1, `keeper fd count back to its steady value (${keeperSteady}, +1 for a status query) after 50 restarts`);
  const st = queryStatus(stateDir);
  t.equal(st.worker.restarts, 50, '50 restarts counted');
  // The worker's counts reach the keeper once a second: poll for them.
  await waitFor(() => { const f = queryStatus(stateDir).fuse; return f.openFiles === 5 && f.openDirs === 1; }, 'the open files and dir in the status', 10_000)
    .catch(() => undefined);
  const fuse = queryStatus(stateDir).fuse;
  t.equal(fuse.openFiles, 5, 'open files survived');
  t.equal(fuse.openDirs, 1, 'open dir survived');
  // The keeper must not leak its own fds into a worker: no worker fd names keeper.sock's
  // listening socket or another worker's connection (sockets are masked, so count them).
  const sockets = workerSteady!.filter((k) => k.startsWith('socket:')).length;
  t.ok(sockets <= 3, `a worker holds ${sockets} sockets (keeper link, QEMU connection, listening socket)`);
});
