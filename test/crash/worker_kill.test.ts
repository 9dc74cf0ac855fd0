// A worker SIGKILLed between requests: the keeper keeps QEMU's connection and every fd, a new
// worker resumes, and the frontend keeps going with the same nodeids and file handles.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, waitFor } from '../frontend/helpers';
import { queryStatus } from '../../shared/status';
import * as F from '../frontend/fuse_proto';

async function killWorker(stateDir: string): Promise<number> {
  const before = queryStatus(stateDir);
  const pid = before.worker.pid;
  if (pid === null) throw new Error('no worker running');
  process.kill(pid, 'SIGKILL');
  await waitFor(() => {
    const s = queryStatus(stateDir);
    return s.worker.pid !== null && s.worker.pid !== pid && s.worker.state === 'running';
  }, 'a new worker', 15_000);
  return pid;
}

t.test('session state survives worker kills between requests', async (t) => {
  // UNIX socket paths are limited to 108 bytes: keep the state dir (keeper.sock) short.
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', {
    extraArgs: ['--state-dir', stateDir],
    setup: (shared) => fs.writeFileSync(path.join(shared, 'hello.txt'), 'hello world\n'),
  });
  const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'hello.txt');
  const o = await s.fuse.open(e.nodeid, F.O.RDWR);
  const d = await s.fuse.mkdir(F.FUSE_ROOT_ID, 'sub', 0o755);
  await killWorker(stateDir);
  t.equal((await s.fuse.read(e.nodeid, o.fh, 0, 100)).toString(), 'hello world\n', 'open fh still reads after the kill');
  t.equal((await s.fuse.getattr(d.nodeid)).attr.ino, BigInt(fs.statSync(s.host('sub')).ino), 'nodeid of sub still valid');
  const c = await s.fuse.create(d.nodeid, 'new.txt', F.O.RDWR | F.O.CREAT, 0o644);
  await killWorker(stateDir);
  t.equal(await s.fuse.write(c.entry.nodeid, c.open.fh, 0, Buffer.from('after two kills')), 15);
  await s.fuse.release(c.entry.nodeid, c.open.fh);
  t.equal(fs.readFileSync(s.host('sub/new.txt'), 'utf8'), 'after two kills');
  const st = queryStatus(stateDir);
  t.equal(st.worker.restarts, 2, 'status counts the restarts');
  t.ok(st.recovery.count >= 1, 'recovery time measured');
  t.equal(st.vhost.connected, true);
});

t.test('a session with 15,000 inodes survives a kill (the fd set is fetched in pulled batches)', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const N = 15_000;
  const s = await openSession(t, 'ours', {
    extraArgs: ['--state-dir', stateDir],
    setup: (shared) => { for (let i = 0; i < N; i++) fs.writeFileSync(path.join(shared, `f${i}`), ''); },
  });
  const nodeids: bigint[] = new Array(N);
  for (let i = 0; i < N; i += 64) {
    const batch = await Promise.all(Array.from({ length: Math.min(64, N - i) }, (_, k) => s.fuse.lookup(F.FUSE_ROOT_ID, `f${i + k}`)));
    batch.forEach((e, k) => { nodeids[i + k] = e.nodeid; });
  }
  await waitFor(() => queryStatus(stateDir).fuse.inodes === N + 1, 'all inodes known', 30_000);
  await killWorker(stateDir);
  t.equal((await s.fuse.getattr(nodeids[N - 1]!, undefined, { timeoutMs: 60_000 })).attr.ino,
    BigInt(fs.statSync(s.host(`f${N - 1}`)).ino), 'the last inode is still valid after the kill');
  t.equal((await s.fuse.getattr(nodeids[0]!)).attr.ino, BigInt(fs.statSync(s.host('f0')).ino), 'and the first');
  await waitFor(() => queryStatus(stateDir).fuse.inodes === N + 1, 'the successor knows every inode', 30_000);
  t.pass(`${N} inodes resumed`);
});
