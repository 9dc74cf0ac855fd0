// Lifecycle: QEMU disconnecting ends the service (as with virtiofsd) unless --keep-listening;
// a guest reboot (a new FUSE INIT on the live connection) starts a fresh FUSE session whose
// fds the keeper drops; a crash right after a reboot still recovers; and a state file no worker
// can use leaves the keeper holding everything until QEMU goes away.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, waitFor } from '../frontend/helpers';
import { VhostUserFrontend } from '../frontend/vhost_user';
import { FuseClient, FuseError } from '../frontend/fuse_client';
import { queryStatus } from '../../cli/status';
import { stateFilePath } from '../../shared/config';
import { DATA_START } from '../../worker/state/journal';
import * as F from '../frontend/fuse_proto';

function shortStateDir(t: Tap): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}
type Tap = { teardown(fn: () => unknown): void };

t.test('the service ends when the frontend disconnects', async (t) => {
  const s = await openSession(t, 'ours', { extraArgs: ['--state-dir', shortStateDir(t)] });
  await s.fuse.getattr(F.FUSE_ROOT_ID);
  s.fe.close();
  t.equal(await s.backend.waitExit(20_000), true, 'the keeper exits after QEMU goes away');
  t.equal(s.backend.exitCode, 0, 'with status 0');
  t.notOk(fs.existsSync(s.socketPath), 'and removes its socket');
});

t.test('--keep-listening serves the next frontend', async (t) => {
  const stateDir = shortStateDir(t);
  const s = await openSession(t, 'ours', { extraArgs: ['--state-dir', stateDir, '--keep-listening'], setup: (d) => fs.writeFileSync(path.join(d, 'x'), 'X') });
  const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'x');
  await s.fuse.open(e.nodeid, F.O.RDONLY);
  s.fe.close();
  await waitFor(() => { const q = queryStatus(stateDir); return !q.vhost.connected && q.worker.state === 'running'; }, 'the worker waiting again', 20_000);
  // "not connected" is reported while the worker is still stopping its queues; the session's
  // fds are dropped right after, so poll for them (a leak never converges).
  const closed = await waitFor(() => (queryStatus(stateDir).fdNames.file ?? 0) === 0, 'the old files closed', 10_000).then(() => true, () => false);
  t.ok(closed, 'the old session\'s files are closed in the keeper');
  const fe = await VhostUserFrontend.connect(s.socketPath, { timeoutMs: 15_000 });
  t.teardown(() => fe.close());
  await fe.negotiate({});
  const fuse = new FuseClient(fe);
  await fuse.init();
  const e2 = await fuse.lookup(F.FUSE_ROOT_ID, 'x');
  t.equal((await fuse.read(e2.nodeid, (await fuse.open(e2.nodeid, F.O.RDONLY)).fh, 0, 10)).toString(), 'X', 'a second frontend is served');
});

t.test('a guest reboot starts a fresh FUSE session, and a crash right after it recovers', async (t) => {
  const stateDir = shortStateDir(t);
  const s = await openSession(t, 'ours', { extraArgs: ['--state-dir', stateDir], setup: (d) => { fs.writeFileSync(path.join(d, 'a'), 'A'); fs.writeFileSync(path.join(d, 'b'), 'B'); } });
  const a = await s.fuse.lookup(F.FUSE_ROOT_ID, 'a');
  await s.fuse.open(a.nodeid, F.O.RDONLY);
  await waitFor(() => queryStatus(stateDir).fuse.openFiles === 1, 'one open file');
  // The rebooted guest's kernel sends INIT again on the same connection.
  await s.fuse.init();
  await waitFor(() => { const q = queryStatus(stateDir); return q.fuse.openFiles === 0 && q.fuse.inodes === 1; }, 'the old session dropped');
  await waitFor(() => (queryStatus(stateDir).fdNames.file ?? 0) === 0 && (queryStatus(stateDir).fdNames.inode ?? 0) === 0, 'the keeper closed the old fds');
  const err = await s.fuse.getattr(a.nodeid).then(() => 0, (e: FuseError) => e.errno);
  t.ok(err !== 0, `a nodeid from before the reboot is gone (errno ${err})`);
  const b = await s.fuse.lookup(F.FUSE_ROOT_ID, 'b');
  const ob = await s.fuse.open(b.nodeid, F.O.RDONLY);
  process.kill(queryStatus(stateDir).worker.pid!, 'SIGKILL');
  t.equal((await s.fuse.read(b.nodeid, ob.fh, 0, 10, { timeoutMs: 20_000 })).toString(), 'B', 'the post-reboot session survives a crash');
  t.equal(queryStatus(stateDir).worker.restarts, 1);
});

t.test('a state file no worker can use: the keeper keeps every fd, reports why, and ends when QEMU goes away', async (t) => {
  const stateDir = shortStateDir(t);
  // An fd per inode, so that the keeper holds some of the session's inodes.
  const s = await openSession(t, 'ours', { extraArgs: ['--state-dir', stateDir, '--inode-file-handles', 'never'], setup: (d) => fs.writeFileSync(path.join(d, 'x'), 'X') });
  await s.fuse.lookup(F.FUSE_ROOT_ID, 'x');
  const before = queryStatus(stateDir);
  // One flipped byte inside the first committed record: its checksum fails on load.
  const fd = fs.openSync(stateFilePath(stateDir), 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, DATA_START + 12);
  b[0] ^= 0xff;
  fs.writeSync(fd, b, 0, 1, DATA_START + 12);
  fs.closeSync(fd);
  process.kill(before.worker.pid!, 'SIGKILL');
  await waitFor(() => queryStatus(stateDir).worker.state === 'failed', 'the keeper gives up on the state', 20_000);
  const failed = queryStatus(stateDir);
  t.match(failed.keeper.error ?? '', /checksum/, 'status says why');
  t.equal(failed.fdNames.vhost, before.fdNames.vhost, 'the keeper still holds QEMU\'s connection and its listener');
  t.ok((before.fdNames.inode ?? 0) > 0 && failed.fdNames.inode === before.fdNames.inode, 'and the session\'s inode fds');
  t.equal(failed.worker.pid, null, 'no worker runs');
  t.equal(s.backend.exitCode, null, 'the keeper keeps running while QEMU is connected');
  s.fe.close();
  t.equal(await s.backend.waitExit(20_000), true, 'the keeper notices QEMU going away');
  t.equal(s.backend.exitCode, 0, 'and ends the service with status 0');
});
