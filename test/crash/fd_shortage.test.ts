// The keeper short of fds (RLIMIT_NOFILE cut to what it holds, with prlimit) while the worker is
// killed: it cannot accept or spawn for a while. It must neither die nor spin nor give up: once
// the limit is back, a successor starts by itself and the session goes on where it was.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { native } from '../../shared/native';
import { keeperSocketPath } from '../../shared/config';
import { encodeToKeeper, parseFromKeeper, MAX_MESSAGE_SIZE } from '../../shared/keeper_protocol';
import { openSession, waitFor } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';

/** The lowest fd number `pid` does not use (over a few samples: the keeper opens metrics.prom
 * now and then for a moment). RLIMIT_NOFILE bounds fd numbers, so with the soft limit there no
 * new fd can be made until one below it is closed. */
async function lowestFreeFd(pid: number): Promise<number> {
  let min = Infinity;
  for (let i = 0; i < 10; i++) {
    const used = new Set(fs.readdirSync(`/proc/${pid}/fd`).map(Number));
    let n = 0;
    while (used.has(n)) n++;
    min = Math.min(min, n);
    await new Promise((r) => setTimeout(r, 20));
  }
  return min;
}

/** Sets the soft RLIMIT_NOFILE of `pid` (the hard limit stays). */
function setSoftNoFile(pid: number, soft: number | 'hard'): void {
  const hard = /Max open files\s+\S+\s+(\S+)/.exec(fs.readFileSync(`/proc/${pid}/limits`, 'utf8'))![1]!;
  const r = spawnSync('prlimit', ['--pid', String(pid), `--nofile=${soft === 'hard' ? hard : soft}:${hard}`], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`prlimit failed: ${r.stderr}`);
}

function softNoFile(pid: number): number {
  return Number(/Max open files\s+(\S+)/.exec(fs.readFileSync(`/proc/${pid}/limits`, 'utf8'))![1]);
}

/** User + system CPU time of `pid` in seconds. */
function cpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

t.test('a worker killed while the keeper is out of fds is replaced once fds are back', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', {
    // No standby: its handover needs no new fd, and this is about spawning a fresh worker.
    extraArgs: ['--state-dir', stateDir, '--no-standby'],
    setup: (shared) => fs.writeFileSync(path.join(shared, 'kept.txt'), 'written before the shortage\n'),
  });
  const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'kept.txt');
  const o = await s.fuse.open(e.nodeid, F.O.RDWR);
  const before = queryStatus(stateDir);
  const keeperPid = before.keeper.pid;
  const workerPid = before.worker.pid!;
  const originalSoft = softNoFile(keeperPid);
  t.teardown(() => { if (alive(keeperPid)) setSoftNoFile(keeperPid, originalSoft); });

  // Below what the keeper holds even after the dead worker's connection closes: it cannot
  // spawn (a process start needs pipes) until the limit is back.
  setSoftNoFile(keeperPid, (await lowestFreeFd(keeperPid)) - 4);
  process.kill(workerPid, 'SIGKILL');
  await waitFor(() => !alive(workerPid) || /^Z/.test(fs.readFileSync(`/proc/${workerPid}/stat`, 'utf8').replace(/^.*\) /, '')), 'the worker dead');
  const cpu0 = cpuSeconds(keeperPid);
  const t0 = Date.now();
  // The shortage lasts a while; meanwhile the keeper retries (no worker can start).
  await waitFor(() => Date.now() - t0 >= 2000, 'two seconds of shortage', 5000, 50);
  const cpu = cpuSeconds(keeperPid) - cpu0;
  t.ok(alive(keeperPid), 'the keeper survived the shortage');
  t.ok(cpu < 0.5, `the keeper did not spin while it could not spawn (${cpu.toFixed(2)} s CPU in 2 s)`);

  setSoftNoFile(keeperPid, originalSoft);
  const after = (await waitFor(() => {
    const q = queryStatus(stateDir);
    return q.worker.pid !== null && q.worker.pid !== workerPid && q.worker.state === 'running' && q.vhost.connected ? q : null;
  }, 'a successor started by itself once fds were back', 30_000, 100))!;
  t.ok(after.worker.restarts > 1, `the keeper retried the start (${after.worker.restarts} attempts)`);
  t.equal(after.keeper.pid, keeperPid, 'the same keeper');
  t.equal((await s.fuse.read(e.nodeid, o.fh, 0, 100)).toString(), 'written before the shortage\n', 'the open file still reads');
  t.equal(await s.fuse.write(e.nodeid, o.fh, 0, Buffer.from('WRITTEN')), 7, 'and writes');
  await s.fuse.release(e.nodeid, o.fh);
  t.equal(fs.readFileSync(s.host('kept.txt'), 'utf8'), 'WRITTEN before the shortage\n', 'the bytes are on the host');
});

t.test('keeper.sock at EMFILE: one connection gets through on the reserve fd, the rest wait without spinning', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', { extraArgs: ['--state-dir', stateDir] });
  const keeperPid = queryStatus(stateDir).keeper.pid;
  const originalSoft = softNoFile(keeperPid);
  t.teardown(() => { if (alive(keeperPid)) setSoftNoFile(keeperPid, originalSoft); });
  // Exactly what it holds: one more fd only by giving up its reserve.
  setSoftNoFile(keeperPid, await lowestFreeFd(keeperPid));
  // The first connection stays open (it holds the keeper's last fd); non-blocking, polled.
  const fd = native.unixConnect(keeperSocketPath(stateDir), 'seqpacket');
  t.teardown(() => native.close(fd));
  const query = encodeToKeeper({ type: 'statusQuery' });
  t.equal(native.sendMsg(fd, query, []), query.length);
  const buf = Buffer.alloc(MAX_MESSAGE_SIZE);
  const r = await waitFor(() => native.recvMsg(fd, buf, 0), 'the first status answer at EMFILE', 10_000);
  const answer = parseFromKeeper(buf.subarray(0, r!.bytes), 0);
  t.equal(answer.type === 'status' && answer.status.keeper.pid, keeperPid, 'the first connection is served at EMFILE (the reserve fd)');
  // A second connection waits in the backlog: the keeper retries accept() with backoff.
  const bin = path.join(__dirname, '..', '..', '..', 'bin', 'virtiofs-keeper.js');
  const second = spawn(process.execPath, [bin, 'status', '--state-dir', stateDir, '--json'], { stdio: 'ignore' });
  const exited = new Promise<number | null>((resolve) => second.once('exit', (code) => resolve(code)));
  t.teardown(() => { if (second.exitCode === null) second.kill('SIGKILL'); });
  const cpu0 = cpuSeconds(keeperPid);
  const t0 = Date.now();
  await waitFor(() => Date.now() - t0 >= 1500, 'a while at EMFILE', 5000, 50);
  const cpu = cpuSeconds(keeperPid) - cpu0;
  t.ok(cpu < 0.5, `no busy loop on the listening socket (${cpu.toFixed(2)} s CPU in 1.5 s)`);
  t.equal(second.exitCode, null, 'the second query is still waiting');
  setSoftNoFile(keeperPid, originalSoft);
  t.equal(await exited, 0, 'and is answered once fds are back');
  t.ok(alive(keeperPid), 'the keeper is alive');
  t.equal((await s.fuse.getattr(F.FUSE_ROOT_ID)).attr.mode & 0o170000, 0o040000, 'the session still serves');
});
