// The keeper SIGKILLed in embedded mode (`run`, and the virtiofsd entry point libvirt launches):
// nothing restarts it, and dying would end the guest's session as a crashed virtiofsd does. The
// serving worker serves on without it (Worker.keeperGone): requests that would store fds are
// answered, control messages too (their replies, which the keeper used to forward, go to the
// frontend directly), the error is logged once, and the session ends cleanly when the frontend
// leaves. Crash safety is gone for the rest of the session: that is said in the log. (Under
// systemd the keeper comes back from the fd store and the workers are restarted:
// test/systemd/standby.test.ts.)
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, pattern, processEnded, waitFor } from '../frontend/helpers';
import { descendantsOf } from '../frontend/backend';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';

const alive = (pid: number): boolean => {
  try { process.kill(pid, 0); return true; } catch { return false; }
};

t.test('embedded: after the keeper\'s SIGKILL the worker serves on, answers control messages itself, and ends with the frontend', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', {
    extraArgs: ['--state-dir', stateDir],
    setup: (shared) => fs.writeFileSync(path.join(shared, 'a'), 'a'),
  });
  await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'the standby ready', 60_000);
  const a = await s.fuse.lookup(F.FUSE_ROOT_ID, 'a');
  const st = queryStatus(stateDir);
  const worker = st.worker.pid!;
  const standby = st.worker.standbyPid!;
  t.ok(descendantsOf(s.backend.pid).includes(worker), `the worker ${worker} is the keeper's child`);
  const workers = descendantsOf(s.backend.pid);
  process.kill(s.backend.pid, 'SIGKILL');
  await waitFor(() => !alive(s.backend.pid) || processEnded(s.backend.pid), 'the keeper to be gone', 10_000);
  // An OPEN stores the new fd in the keeper before it replies: that store finds the keeper gone.
  const o = await s.fuse.open(a.nodeid, F.O.RDWR, { timeoutMs: 10_000 });
  t.ok(o.fh > 0n, 'the OPEN is answered');
  t.equal(await s.fuse.write(a.nodeid, o.fh, 0, Buffer.from('AFTER')), 5, 'a WRITE through it');
  const c = await s.fuse.create(F.FUSE_ROOT_ID, 'new', F.O.RDWR, 0o644);
  t.equal(await s.fuse.write(c.entry.nodeid, c.open.fh, 0, pattern(8192, 7)), 8192, 'a CREATE and a WRITE');
  await s.fuse.release(c.entry.nodeid, c.open.fh, F.O.RDWR);
  await s.fuse.release(a.nodeid, o.fh, F.O.RDWR);
  t.equal(fs.readFileSync(s.host('a'), 'utf8'), 'AFTER', 'on the host');
  t.ok(fs.readFileSync(s.host('new')).equals(pattern(8192, 7)), 'on the host');
  const d = await s.fuse.opendir(F.FUSE_ROOT_ID);
  const { entries } = await s.fuse.readdirAll(F.FUSE_ROOT_ID, d.fh, { plus: true });
  await s.fuse.releasedir(F.FUSE_ROOT_ID, d.fh);
  t.same(entries.map((e) => e.name.toString()).filter((n) => n !== '.' && n !== '..').sort(), ['a', 'new'], 'a READDIRPLUS listing (new inodes)');
  t.equal(await s.fe.controlAlive(5_000), true, 'a control message is answered (by the worker itself: the keeper forwarded replies)');
  await waitFor(() => processEnded(standby), 'the standby to end (its keeper is gone)', 10_000);
  const log = s.backend.log();
  t.equal((log.match(/the keeper is gone and nothing will restart it: serving on without it/g) ?? []).length, 1, 'the worker said so, once');
  t.notMatch(log, /"level":60/, 'nothing fatal');
  // The frontend leaves: the worker ends the session as it does with a keeper.
  s.fe.close();
  await waitFor(() => processEnded(worker), 'the worker to end with the frontend', 10_000);
  // Their launchers (unshare) end right after them.
  try {
    await waitFor(() => workers.every(processEnded), 'every process of the service to end', 10_000);
  } catch { /* reported below */ }
  t.same(workers.filter((p) => !processEnded(p)).map((p) => `${p}: ${fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ').slice(0, 120)}`), [], 'no process of the service is left');
});
