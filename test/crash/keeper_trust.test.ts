// keeper.sock trusts only the keeper's own workers. A real `run` service (worker + warm
// standby); this test process has the keeper's uid but is not one of its workers: its FDFETCH,
// FDSTORE and FDSTOREREMOVE are refused, it is disconnected, the refusal is logged, and the
// keeper's fd set is untouched. The status query (the CLI's read-only view) still works, and the
// real workers still store, fetch and hand over (a kill is recovered by the standby).
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { native } from '../../shared/native';
import { keeperSocketPath } from '../../shared/config';
import { encodeToKeeper, MAX_MESSAGE_SIZE, SCM_MAX_FD, type ToKeeper } from '../../shared/keeper_protocol';
import { openSession, waitFor } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';

const BIN = path.join(__dirname, '..', '..', '..', 'bin', 'virtiofs-keeper.js');

/** Connects to keeper.sock as an outsider, sends `msg` (with `fds`) and reads until EOF: what
 * came back (messages and fds) before the keeper hung up. */
async function tryAsOutsider(stateDir: string, msg: ToKeeper, fds: number[] = []): Promise<{ messages: number; fds: number; closed: boolean }> {
  const fd = native.unixConnect(keeperSocketPath(stateDir), 'seqpacket');
  try {
    const data = encodeToKeeper(msg);
    native.sendMsg(fd, data, fds);
    const buf = Buffer.alloc(MAX_MESSAGE_SIZE);
    let messages = 0;
    let got = 0;
    const closed = await waitFor(() => {
      for (;;) {
        const r = native.recvMsg(fd, buf, SCM_MAX_FD);
        if (r === null) return false;
        for (const f of r.fds) native.close(f);
        got += r.fds.length;
        if (r.bytes === 0 && r.fds.length === 0) return true;
        messages++;
      }
    }, `the keeper hanging up on ${msg.type}`, 10_000);
    return { messages, fds: got, closed };
  } finally {
    native.close(fd);
  }
}

t.test('a same-uid process that is not our worker gets the status view only', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', {
    extraArgs: ['--state-dir', stateDir],
    setup: (shared) => fs.writeFileSync(path.join(shared, 'hello.txt'), 'hello\n'),
  });
  const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'hello.txt');
  const o = await s.fuse.open(e.nodeid, F.O.RDONLY);
  await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'the standby', 20_000);
  const before = queryStatus(stateDir);

  const fetch = await tryAsOutsider(stateDir, { type: 'fetch' });
  t.same(fetch, { messages: 0, fds: 0, closed: true }, 'FDFETCH: no fd set, no fd, disconnected');
  const memfd = native.memfdCreate('intruder', 0);
  t.teardown(() => native.close(memfd));
  const store = await tryAsOutsider(stateDir, { type: 'store', names: ['root'] }, [memfd]);
  t.same(store, { messages: 0, fds: 0, closed: true }, 'FDSTORE over root: disconnected');
  const remove = await tryAsOutsider(stateDir, { type: 'remove', names: ['vhost.conn', 'mem.0'] });
  t.equal(remove.closed, true, 'FDSTOREREMOVE: disconnected');
  const standby = await tryAsOutsider(stateDir, { type: 'standby' });
  t.equal(standby.closed, true, 'X_STANDBY: disconnected');

  const log = s.backend.log().split('\n').filter((l) => l.includes('not our worker')).map((l) => JSON.parse(l) as Record<string, unknown>);
  t.equal(log.length, 4, 'each refusal is logged');
  t.same(log.map((l) => [l.type, l.peerPid, l.component]), [['fetch', process.pid, 'keeper'], ['store', process.pid, 'keeper'],
    ['remove', process.pid, 'keeper'], ['standby', process.pid, 'keeper']], 'with the message type, the peer pid and the component');

  const after = queryStatus(stateDir);
  t.same(after.fdNames, before.fdNames, 'the keeper holds the same fds');
  t.equal(after.worker.pid, before.worker.pid, 'the same worker');
  const cli = spawnSync(process.execPath, [BIN, 'status', '--state-dir', stateDir, '--json'], { encoding: 'utf8', timeout: 20_000 });
  t.equal(cli.status, 0, 'the status CLI works');
  t.equal((JSON.parse(cli.stdout) as { worker: { pid: number } }).worker.pid, before.worker.pid, 'and reports the worker');
  t.equal((await s.fuse.read(e.nodeid, o.fh, 0, 100)).toString(), 'hello\n', 'the session still serves');

  // Our own workers: the standby takes over from a killed worker (its connection made at spawn).
  process.kill(before.worker.pid!, 'SIGKILL');
  await waitFor(() => {
    const st = queryStatus(stateDir);
    return st.worker.pid === before.worker.standbyPid && st.worker.state === 'running';
  }, 'the standby serving', 20_000);
  t.equal((await s.fuse.read(e.nodeid, o.fh, 0, 100)).toString(), 'hello\n', 'the standby resumed the session (fetched the fd set)');
  const c = await s.fuse.create(F.FUSE_ROOT_ID, 'new.txt', F.O.RDWR | F.O.CREAT, 0o644);
  await s.fuse.release(c.entry.nodeid, c.open.fh);
  await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'a new standby', 20_000);
  process.kill(queryStatus(stateDir).worker.pid!, 'SIGKILL');
  await waitFor(() => { const st = queryStatus(stateDir); return st.worker.restarts === 2 && st.worker.state === 'running'; }, 'the second takeover', 20_000);
  t.equal((await s.fuse.getattr(c.entry.nodeid)).attr.mode & 0o777, 0o644, 'a file created by the first successor is known to the second');
});
