// The keeper short of fds (RLIMIT_NOFILE cut to what it holds, with prlimit) while the worker is
// killed: it cannot accept or spawn for a while. It must neither die nor spin nor give up: once
// the limit is back, a successor starts by itself and the session goes on where it was.
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { native } from '../../shared/native';
import { alive, noFileLimits, setNoFile, settledLowestFreeFd as lowestFreeFd } from '../helpers/rlimit';
import { keeperSocketPath } from '../../shared/config';
import { encodeToKeeper, parseFromKeeper, MAX_MESSAGE_SIZE } from '../../shared/keeper_protocol';
import { KeeperClient } from '../../shared/keeper_client';
import { openSession, processEnded, waitFor } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';
import { FuseError } from '../frontend/fuse_client';
import { hostFlockErrno } from '../helpers/flock';

/** User + system CPU time of `pid` in seconds. */
function cpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
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
  const originalSoft = noFileLimits(keeperPid).soft;
  t.teardown(() => { if (alive(keeperPid)) setNoFile(keeperPid, originalSoft); });

  // Below what the keeper holds even after the dead worker's connection closes: it cannot
  // spawn (a process start needs pipes) until the limit is back.
  setNoFile(keeperPid, (await lowestFreeFd(keeperPid)) - 4);
  process.kill(workerPid, 'SIGKILL');
  // processEnded, not alive() then a read of /proc: the process may be reaped in between (ENOENT).
  await waitFor(() => processEnded(workerPid), 'the worker dead');
  const cpu0 = cpuSeconds(keeperPid);
  const t0 = Date.now();
  // The shortage lasts a while; meanwhile the keeper retries (no worker can start).
  await waitFor(() => Date.now() - t0 >= 2000, 'two seconds of shortage', 5000, 50);
  const cpu = cpuSeconds(keeperPid) - cpu0;
  t.ok(alive(keeperPid), 'the keeper survived the shortage');
  t.ok(cpu < 0.5, `the keeper did not spin while it could not spawn (${cpu.toFixed(2)} s CPU in 2 s)`);

  setNoFile(keeperPid, originalSoft);
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
  const originalSoft = noFileLimits(keeperPid).soft;
  t.teardown(() => { if (alive(keeperPid)) setNoFile(keeperPid, originalSoft); });
  // Exactly what it holds: one more fd only by giving up its reserve.
  setNoFile(keeperPid, await lowestFreeFd(keeperPid));
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
  setNoFile(keeperPid, originalSoft);
  t.equal(await exited, 0, 'and is answered once fds are back');
  t.ok(alive(keeperPid), 'the keeper is alive');
  t.equal((await s.fuse.getattr(F.FUSE_ROOT_ID)).attr.mode & 0o170000, 0o040000, 'the session still serves');
});

t.test('fd stores are acknowledged: refused while the keeper is out of fds, sent again until they land', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-ks-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'shared'));
  const stateDir = path.join(dir, 'st');
  const bin = path.join(__dirname, '..', '..', '..', 'bin', 'virtiofs-keeper.js');
  // The keeper alone (no worker): this test is its only keeper.sock client.
  const keeper = spawn(process.execPath, [bin, 'keeper', '--worker-peers', 'same-uid', '--shared-dir', path.join(dir, 'shared'), '--socket-path', path.join(dir, 'v.sock'), '--state-dir', stateDir],
    { stdio: ['ignore', 'ignore', 'inherit'] });
  t.teardown(() => { if (keeper.exitCode === null) keeper.kill('SIGKILL'); });
  await waitFor(() => fs.existsSync(keeperSocketPath(stateDir)), 'keeper.sock');
  const client = KeeperClient.connect(keeperSocketPath(stateDir));
  t.teardown(() => client.close());
  const first = client.fetchAll();
  t.equal(first.keeper.sync, true, 'the keeper offers X_SYNC');
  t.ok((first.keeper.noFile ?? 0) > 0, `and says its fd limit (${first.keeper.noFile})`);
  for (const fd of first.fds.values()) native.close(fd);
  const originalSoft = noFileLimits(keeper.pid!).soft;
  t.teardown(() => { if (alive(keeper.pid!)) setNoFile(keeper.pid!, originalSoft); });

  // A shortage that passes: the limit comes back 300 ms into the client's retries.
  setNoFile(keeper.pid!, await lowestFreeFd(keeper.pid!));
  const hard = /Max open files\s+\S+\s+(\S+)/.exec(fs.readFileSync(`/proc/${keeper.pid}/limits`, 'utf8'))![1]!;
  const restorer = spawn('sh', ['-c', `sleep 0.3; prlimit --pid ${keeper.pid} --nofile=${originalSoft}:${hard}`], { stdio: 'ignore' });
  const files = [native.memfdCreate('a', 0), native.memfdCreate('b', 0)];
  let refused: string[] | null = null;
  client.onStoresRefused = (e) => { refused = e.names; };
  const t0 = Date.now();
  client.storeFds(['test.a', 'test.b'], files);
  const waited = Date.now() - t0;
  await new Promise((r) => restorer.once('exit', r));
  t.equal(refused, null, 'the stores landed once the keeper had fds again');
  t.ok(waited >= 250, `the client waited for them (${waited} ms)`);
  const second = client.fetchAll();
  t.ok(second.fds.has('test.a') && second.fds.has('test.b'), 'the keeper holds both');
  for (const fd of second.fds.values()) native.close(fd);

  // A shortage that does not pass: the owner is told which stores did not land.
  setNoFile(keeper.pid!, (await lowestFreeFd(keeper.pid!)) - 2);
  client.storeFds(['test.c'], [files[0]!]);
  t.same(refused, ['test.c'], 'after the retries the refused name is reported');

  // A limit cut just before a store: the keeper refuses it, the client sends it again until
  // the limit is back 300 ms later.
  setNoFile(keeper.pid!, originalSoft);
  refused = null;
  setNoFile(keeper.pid!, (await lowestFreeFd(keeper.pid!)) - 2);
  const restorer2 = spawn('sh', ['-c', `sleep 0.3; prlimit --pid ${keeper.pid} --nofile=${originalSoft}:${hard}`], { stdio: 'ignore' });
  client.storeFds(['test.d'], [files[1]!]);
  await new Promise((r) => restorer2.once('exit', r));
  t.equal(refused, null, 'nothing was given up');
  const third = client.fetchAll();
  t.ok(third.fds.has('test.d'), 'a store made just after a limit cut is held once the limit is back');
  for (const fd of third.fds.values()) native.close(fd);
  for (const fd of files) native.close(fd);
  t.ok(alive(keeper.pid!), 'the keeper is alive');
});

t.test('a worker whose fd stores the keeper refuses dies before journaling them; the lookups are replayed', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const N = 20;
  const s = await openSession(t, 'ours', {
    extraArgs: ['--state-dir', stateDir, '--no-standby', '--inode-file-handles', 'never'], // an fd per inode: what runs out here
    setup: (shared) => { for (let i = 0; i < N; i++) fs.writeFileSync(path.join(shared, `f${i}`), `file ${i}\n`); },
  });
  await s.fuse.getattr(F.FUSE_ROOT_ID);
  const keeperPid = queryStatus(stateDir).keeper.pid;
  const firstWorker = queryStatus(stateDir).worker.pid!;
  const originalSoft = noFileLimits(keeperPid).soft;
  t.teardown(() => { if (alive(keeperPid)) setNoFile(keeperPid, originalSoft); });
  // The keeper cannot take one more fd: every LOOKUP's inode fd would be lost.
  setNoFile(keeperPid, (await lowestFreeFd(keeperPid)) - 2);
  const lookups = Array.from({ length: N }, (_, i) => s.fuse.lookup(F.FUSE_ROOT_ID, `f${i}`, { timeoutMs: 60_000 }));
  // The worker retries, then dies unjournaled (the keeper cannot even spawn a successor now).
  await waitFor(() => !alive(firstWorker), 'the worker dead before it journaled what the keeper lacks', 20_000, 50);
  setNoFile(keeperPid, originalSoft);
  const entries = await Promise.all(lookups);
  t.equal(entries.length, N, 'every LOOKUP is answered after the shortage (no error)');
  t.ok(s.backend.log().includes('the keeper refused fds'), 'the worker said why it died');
  // The proof: after one more kill, every nodeid still has its fd in the keeper.
  const pid = (await waitFor(() => { const q = queryStatus(stateDir); return q.worker.state === 'running' ? q.worker.pid : null; }, 'a worker serving', 20_000))!;
  process.kill(pid, 'SIGKILL');
  await waitFor(() => { const q = queryStatus(stateDir); return q.worker.pid !== null && q.worker.pid !== pid && q.worker.state === 'running'; }, 'the next worker', 20_000);
  for (let i = 0; i < N; i++) {
    const o = await s.fuse.open(entries[i]!.nodeid, F.O.RDONLY);
    t.equal((await s.fuse.read(entries[i]!.nodeid, o.fh, 0, 100)).toString(), `file ${i}\n`, `f${i} reads through its nodeid`);
    await s.fuse.release(entries[i]!.nodeid, o.fh);
  }
});

/** A host with a hard limit of `limit` fds: the keeper's now, and through it the next worker's
 * (the running one is killed). Returns the keeper's pid once the successor runs. */
async function underFdLimit(t: Test, stateDir: string, limit: number): Promise<number> {
  const { keeper: { pid: keeperPid }, worker: { pid: firstWorker } } = queryStatus(stateDir);
  const r = spawnSync('prlimit', ['--pid', String(keeperPid), `--nofile=${limit}:${limit}`], { encoding: 'utf8' });
  t.equal(r.status, 0, `prlimit ${r.stderr}`);
  process.kill(firstWorker!, 'SIGKILL');
  await waitFor(() => { const q = queryStatus(stateDir); return q.worker.pid !== firstWorker && q.worker.state === 'running' ? q : null; },
    `a worker under the ${limit}-fd limit`, 20_000);
  return keeperPid;
}

t.test('a guest holding more inodes than the fd limit allows gets EMFILE past it, and everything else keeps working', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const N = 600;
  const s = await openSession(t, 'ours', {
    extraArgs: ['--state-dir', stateDir, '--no-standby', '--inode-file-handles', 'never'], // an fd per inode: what runs out here
    setup: (shared) => { for (let i = 0; i < N; i++) fs.writeFileSync(path.join(shared, `f${i}`), `${i}`); },
  });
  await s.fuse.getattr(F.FUSE_ROOT_ID);
  const keeperPid = await underFdLimit(t, stateDir, 768);
  const results = [];
  for (let i = 0; i < N; i++) {
    results.push(await s.fuse.lookup(F.FUSE_ROOT_ID, `f${i}`).then((e) => e, (e: unknown) => e));
  }
  const ok = results.filter((x): x is F.EntryOut => !(x instanceof Error));
  const failed = results.filter((x) => x instanceof Error) as Array<{ errno?: number }>;
  t.ok(ok.length > 300 && ok.length < N, `${ok.length} lookups got an inode, ${failed.length} did not`);
  t.ok(failed.every((e) => e.errno === F.Errno.EMFILE), 'those past the limit got EMFILE, nothing else');
  t.equal((await s.fuse.getattr(ok[0]!.nodeid)).attr.size, 1n, 'held inodes keep working');
  t.equal((await s.fuse.lookup(F.FUSE_ROOT_ID, 'f0')).nodeid, ok[0]!.nodeid, 'a lookup of a held inode works at the limit');
  t.ok(alive(keeperPid), 'the keeper is alive');
  // The guest drops its caches: every inode is forgotten, and the whole tree is reachable.
  await s.fuse.batchForget(ok.map((e) => ({ nodeid: e.nodeid, nlookup: 1 })).concat([{ nodeid: ok[0]!.nodeid, nlookup: 1 }]));
  for (let i = 0; i < N; i += 100) {
    const batch = await Promise.all(Array.from({ length: 100 }, (_, k) => s.fuse.lookup(F.FUSE_ROOT_ID, `f${i + k}`)));
    for (const e of batch) await s.fuse.forget(e.nodeid, 1);
  }
  t.pass(`after the forgets all ${N} names were looked up again (100 at a time)`);
  t.equal(queryStatus(stateDir).worker.restarts, 1, 'no worker died on the way');
});

t.test('a guest opening more files than the fd budget allows gets EMFILE past it, from the native OPEN as from TypeScript', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const N = 600;
  const s = await openSession(t, 'ours', {
    extraArgs: ['--state-dir', stateDir, '--no-standby'], // handles on: each OPEN's fd is what runs out
    setup: (shared) => fs.writeFileSync(path.join(shared, 'f'), 'opened many times'),
  });
  await s.fuse.getattr(F.FUSE_ROOT_ID);
  const keeperPid = await underFdLimit(t, stateDir, 768);
  const nodeid = (await s.fuse.lookup(F.FUSE_ROOT_ID, 'f')).nodeid;
  const results: Array<F.OpenOut | FuseError> = [];
  for (let i = 0; i < N; i++) results.push(await s.fuse.open(nodeid, F.O.RDONLY).then((o) => o, (e: FuseError) => e));
  const ok = results.filter((x): x is F.OpenOut => !(x instanceof FuseError));
  const failed = results.filter((x): x is FuseError => x instanceof FuseError);
  t.ok(ok.length > 300 && ok.length < N, `${ok.length} opens got an fh, ${failed.length} did not`);
  t.ok(failed.every((e) => e.errno === F.Errno.EMFILE), 'those past the budget got EMFILE, nothing else');
  // The worker pushes its counters once a second. Every open within the budget is the
  // addon's: its room is the budget's, kept current as fds come and go.
  await waitFor(() => (queryStatus(stateDir).fuse.fastPath?.open ?? 0) >= ok.length ? true : undefined, 'the native OPEN counter', 10_000).catch(() => {});
  const served = queryStatus(stateDir).fuse.fastPath?.open ?? 0;
  t.equal(served, ok.length, `the addon served every open within the budget (${served} of ${ok.length})`);
  t.equal((await s.fuse.read(nodeid, ok[0]!.fh, 0, 6)).toString(), 'opened', 'an open fh reads at the limit');
  for (const o of ok) await s.fuse.release(nodeid, o.fh);
  const again = await s.fuse.open(nodeid, F.O.RDONLY);
  t.equal((await s.fuse.read(nodeid, again.fh, 7, 4)).toString(), 'many', 'after the releases a file opens again');
  await s.fuse.release(nodeid, again.fh);
  await waitFor(() => queryStatus(stateDir).fuse.openFiles === 0 ? true : undefined, 'no open files', 10_000);
  t.ok(alive(keeperPid), 'the keeper is alive');
  t.equal(queryStatus(stateDir).worker.restarts, 1, 'no worker died on the way');
});

t.test('opens while the keeper is out of fds: served without waiting for it, kept by the keeper before an unlink, rename, rmdir or flock', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', {
    // Inodes named by file handles (the default): an open file's fd is reopenable, so the
    // keeper gets it after the reply (KeeperClient.sendSoon).
    extraArgs: ['--state-dir', stateDir, '--no-standby', '--inode-file-handles', 'mandatory'],
    setup: (shared) => {
      for (const n of ['a', 'b', 'c', 'd', 'r', 'x']) fs.writeFileSync(path.join(shared, n), `file ${n}\n`);
      fs.mkdirSync(path.join(shared, 'dd'));
    },
  });
  const e = Object.fromEntries(await Promise.all(['a', 'b', 'c', 'd', 'r', 'dd'].map(async (n) => [n, (await s.fuse.lookup(F.FUSE_ROOT_ID, n)).nodeid] as const)));
  const { keeper: { pid: keeperPid }, worker: { pid: firstWorker } } = queryStatus(stateDir);
  const originalSoft = noFileLimits(keeperPid).soft;
  t.teardown(() => { if (alive(keeperPid)) setNoFile(keeperPid, originalSoft); });
  const { hard } = noFileLimits(keeperPid);

  /** The keeper cut to no free fd: `open` is answered at once (its fds dropped by the kernel),
   * then `act` must wait until the keeper holds them, which it can once the limit comes back
   * 300 ms later. */
  const duringShortage = async <T>(what: string, open: () => Promise<T>, act: (o: T) => Promise<unknown>): Promise<T> => {
    setNoFile(keeperPid, await lowestFreeFd(keeperPid));
    const o = await open();
    const restorer = spawn('sh', ['-c', `sleep 0.3; prlimit --pid ${keeperPid} --nofile=${originalSoft}:${hard}`], { stdio: 'ignore' });
    const restored = new Promise((r) => restorer.once('exit', r));
    const t0 = Date.now();
    await act(o);
    const waited = Date.now() - t0;
    await restored;
    t.ok(waited >= 250, `${what} waited for the keeper (${waited} ms)`);
    return o;
  };

  // c is open when its name goes; r when a rename replaces it; dd when it is removed: nothing
  // could open them again after a death. A flock lock lives on d's own open file description.
  const [a, b, c] = await duringShortage('the UNLINK of an open file', async () => {
    const opened = [await s.fuse.open(e.a!, F.O.RDONLY), await s.fuse.open(e.b!, F.O.RDWR), await s.fuse.open(e.c!, F.O.RDONLY)];
    t.equal((await s.fuse.read(e.a!, opened[0]!.fh, 0, 100)).toString(), 'file a\n', 'an open during the shortage reads');
    return opened;
  }, () => s.fuse.unlink(F.FUSE_ROOT_ID, 'c'));
  const r = await duringShortage('the RENAME over an open file', () => s.fuse.open(e.r!, F.O.RDONLY), () => s.fuse.rename(F.FUSE_ROOT_ID, 'x', F.FUSE_ROOT_ID, 'r'));
  const dd = await duringShortage('the RMDIR of an open dir', () => s.fuse.opendir(e.dd!), () => s.fuse.rmdir(F.FUSE_ROOT_ID, 'dd'));
  const d = await duringShortage('the flock', () => s.fuse.open(e.d!, F.O.RDWR),
    (o) => s.fuse.setlk(e.d!, o.fh, 9n, { start: 0n, end: 0x7fffffffffffffffn, type: F.F_WRLCK, pid: 0 }, true));
  t.equal(queryStatus(stateDir).worker.pid, firstWorker, 'the worker waited for the keeper instead of dying');

  process.kill(firstWorker!, 'SIGKILL');
  await waitFor(() => { const q = queryStatus(stateDir); return q.worker.pid !== firstWorker && q.worker.state === 'running' ? q : null; }, 'a successor', 20_000);
  t.equal((await s.fuse.read(e.a!, a!.fh, 0, 100)).toString(), 'file a\n', 'a reads after the death');
  t.equal(await s.fuse.write(e.b!, b!.fh, 0, Buffer.from('FILE')), 4, 'b writes after the death (its read-write description)');
  t.equal(fs.readFileSync(s.host('b'), 'utf8'), 'FILE b\n');
  t.equal((await s.fuse.read(e.c!, c!.fh, 0, 100)).toString(), 'file c\n', 'the unlinked c still reads: the keeper held it');
  t.equal((await s.fuse.read(e.r!, r.fh, 0, 100)).toString(), 'file r\n', 'the replaced r still reads its old bytes');
  t.equal(fs.readFileSync(s.host('r'), 'utf8'), 'file x\n', 'while the name holds the new file');
  // getdents64 of a removed directory is ENOENT on Linux: the host's own answer through a live
  // fd. A lost fh would be EBADF.
  const listErrno = await s.fuse.readdir(e.dd!, dd.fh, 0).then(() => 0, (err: FuseError) => err.errno);
  t.equal(listErrno, F.Errno.ENOENT, 'the removed dir answers through its fh as the host does (ENOENT, not EBADF)');
  t.equal(hostFlockErrno(s.host('d')), 'EWOULDBLOCK', 'the flock lock on d outlived the worker: the keeper held d');
  t.notMatch(s.backend.log(), /could not be opened again by its handle/, 'no fh was lost');
  const h = queryStatus(stateDir).fuse.inodeHandles!;
  t.equal(h.handlesLost, 0, 'status: none lost');
  // Each settle sent again every store the keeper refused since the last X_SYNC (a and b
  // too): nothing was left to reopen. (A reopen: the crash matrix's OPEN, CREATE, OPENDIR.)
  t.equal(h.handlesReopened, 0, 'status: nothing had to be opened again by handle');
  for (const [n, o] of [['a', a!], ['b', b!], ['c', c!], ['d', d], ['r', r]] as const) await s.fuse.release(e[n]!, o.fh);
  await s.fuse.releasedir(e.dd!, dd.fh);
  t.equal(hostFlockErrno(s.host('d')), null, 'the release dropped the flock lock');
  await waitFor(() => queryStatus(stateDir).fuse.openFiles === 0 && queryStatus(stateDir).fuse.openDirs === 0, 'every file and dir released');
  t.equal(queryStatus(stateDir).fdNames.file ?? 0, 0, 'and the keeper holds no file fd');
});
