// A worker SIGKILLed between requests: the keeper keeps QEMU's connection and every fd, a new
// worker resumes, and the frontend keeps going with the same nodeids and file handles.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, waitFor } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';
import { hostCookies } from '../helpers/host_cookies';

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

t.test('a readdir of an ext4 directory continues exactly across a worker kill (exact 64-bit cookies)', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const names = Array.from({ length: 1500 }, (_, i) => `e${i}`);
  const s = await openSession(t, 'ours', {
    extraArgs: ['--state-dir', stateDir],
    setup: (shared) => { fs.mkdirSync(path.join(shared, 'big')); for (const n of names) fs.writeFileSync(path.join(shared, 'big', n), ''); },
  });
  const big = await s.fuse.lookup(F.FUSE_ROOT_ID, 'big');
  const od = await s.fuse.opendir(big.nodeid);
  const got: F.Dirent[] = [];
  let off = 0n;
  for (let call = 0; ; call++) {
    // Kill the worker twice mid-listing: the new one's fd position is unknown, so its first
    // READDIR must seek to the guest's exact cookie.
    if (call === 5 || call === 20) await killWorker(stateDir);
    const batch = await s.fuse.readdir(big.nodeid, od.fh, off, 512);
    if (batch.length === 0) break;
    got.push(...batch);
    off = batch[batch.length - 1].off;
    if (call > 10_000) throw new Error('readdir does not end');
  }
  const listed = got.map((e) => e.name.toString());
  t.same(listed.filter((n, i) => listed.indexOf(n) !== i), [], 'no name twice');
  t.same([...names, '.', '..'].filter((n) => !listed.includes(n)), [], 'no name missing');
  if (fs.statfsSync(s.shared).type === 0xef53) {
    t.ok(got.filter((e) => e.off > 1n << 53n).length > names.length / 2, 'ext4: the cookies are hashes above 2^53');
  }
  // The cookies are the host's own d_off values, all 64 bits (getdents64 on the host).
  const host = hostCookies(s.host('big'));
  t.same(got.filter((e) => e.off !== host.get(e.name.toString())).map((e) => e.name.toString()), [], 'every cookie is the host d_off');
  t.equal(queryStatus(stateDir).worker.restarts, 2, 'two restarts');
  await s.fuse.releasedir(big.nodeid, od.fh);
});
