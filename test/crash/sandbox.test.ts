// The worker's sandbox seen from outside, on a real `run` service (worker + warm standby), for
// --sandbox namespace and chroot: its root (/proc/PID/root) holds exactly the shared directory,
// its namespaces (namespace mode) are not ours, its capabilities are a passthrough's only, and
// it runs under the seccomp filter (--seccomp kill, the default), and it still serves, journals
// and hands over (the successor resumes through the pinned state dir).
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, waitFor } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';
import { EMBEDDED_KEEPER_BOUNDING, EMBEDDED_KEEPER_EFFECTIVE, PASSTHROUGH_CAPS, capMask } from '../../shared/capabilities';

function statusField(pid: number, key: string): string {
  const m = new RegExp(`^${key}:\\s*(\\S+)`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (m === null) throw new Error(`no ${key} in /proc/${pid}/status`);
  return m[1]!;
}

const ns = (pid: number | 'self', kind: string): string => fs.readlinkSync(`/proc/${pid}/ns/${kind}`);

for (const mode of ['namespace', 'chroot'] as const) {
  t.test(`--sandbox ${mode}: the worker and the standby see only the shared directory`, async (t) => {
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
    t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
    const s = await openSession(t, 'ours', {
      extraArgs: ['--state-dir', stateDir, '--sandbox', mode],
      setup: (shared) => { fs.writeFileSync(path.join(shared, 'hello.txt'), 'hello\n'); fs.mkdirSync(path.join(shared, 'sub')); },
    });
    const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'hello.txt');
    const o = await s.fuse.open(e.nodeid, F.O.RDWR);
    const st = (await waitFor(() => { const r = queryStatus(stateDir); return r.worker.standbyReady ? r : null; }, 'the standby', 20_000))!;
    // What the host lets us have, less what a passthrough does not need.
    const ourBnd = BigInt(`0x${statusField(process.pid, 'CapBnd')}`);
    const want = ourBnd & BigInt(capMask(PASSTHROUGH_CAPS));
    for (const [role, pid] of [['worker', st.worker.pid!], ['standby', st.worker.standbyPid!]] as const) {
      t.same(fs.readdirSync(`/proc/${pid}/root`).sort(), ['hello.txt', 'sub'], `${role}: its root is the shared directory`);
      t.notOk(fs.existsSync(`/proc/${pid}/root/etc/passwd`), `${role}: no host file is visible`);
      t.equal(BigInt(`0x${statusField(pid, 'CapBnd')}`), want, `${role}: CapBnd is a passthrough's (${want.toString(16)})`);
      t.equal(BigInt(`0x${statusField(pid, 'CapEff')}`), want, `${role}: CapEff too`);
      t.equal(statusField(pid, 'Seccomp'), '2', `${role}: a seccomp filter is installed (Seccomp: 2)`);
      t.equal(statusField(pid, 'NoNewPrivs'), '1', `${role}: no_new_privs`);
      if (mode === 'namespace') {
        for (const kind of ['mnt', 'net', 'ipc', 'uts', 'pid']) t.not(ns(pid, kind), ns('self', kind), `${role}: its own ${kind} namespace`);
        const nspid = /^NSpid:\s*(.*)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]!.trim().split(/\s+/);
        t.same([nspid[0], nspid[nspid.length - 1]], [String(pid), '1'], `${role}: status gives its pid here, and it is pid 1 in its namespace (NSpid ${nspid.join(' ')})`);
        t.ok(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith(process.execPath), `${role}: status names the worker itself (node), not its launcher`);
      } else {
        t.equal(ns(pid, 'mnt'), ns('self', 'mnt'), `${role}: chroot, in our mount namespace`);
      }
    }
    const keeperPid = st.keeper.pid;
    t.equal(BigInt(`0x${statusField(keeperPid, 'CapEff')}`), ourBnd & BigInt(capMask(EMBEDDED_KEEPER_EFFECTIVE)), 'the keeper: only CAP_SYS_NICE effective');
    t.equal(BigInt(`0x${statusField(keeperPid, 'CapBnd')}`), ourBnd & BigInt(capMask(EMBEDDED_KEEPER_BOUNDING)), 'and a bounding set of what its workers need');
    // Serving, journaling and handing over work from inside.
    t.equal(await s.fuse.write(e.nodeid, o.fh, 0, Buffer.from('HELLO')), 5);
    const c = await s.fuse.create(F.FUSE_ROOT_ID, 'made.txt', F.O.RDWR | F.O.CREAT, 0o600);
    process.kill(st.worker.pid!, 'SIGKILL');
    await waitFor(() => { const r = queryStatus(stateDir); return r.worker.pid === st.worker.standbyPid && r.worker.state === 'running'; }, 'the standby serving', 20_000);
    t.equal((await s.fuse.read(e.nodeid, o.fh, 0, 100)).toString(), 'HELLO\n', 'the successor resumed the open file');
    t.equal(await s.fuse.write(c.entry.nodeid, c.open.fh, 0, Buffer.from('made')), 4, 'and the file created before the kill');
    await s.fuse.release(c.entry.nodeid, c.open.fh);
    t.equal(fs.readFileSync(s.host('made.txt'), 'utf8'), 'made', 'the bytes are on the host');
    const sb = (await waitFor(() => { const r = queryStatus(stateDir); return r.worker.standbyReady ? r.worker.standbyPid : null; }, 'a new standby', 20_000))!;
    if (mode === 'namespace') {
      // SIGTERM still ends a standby blocked waiting for its takeover, though as PID 1 of its pid
      // namespace it gets no default action: it handles it natively. (Not asserted in chroot
      // mode: there tap's NODE_OPTIONS hooks give the test's workers JS SIGTERM handlers, which
      // cannot run while the standby blocks.)
      process.kill(sb, 'SIGTERM');
      await waitFor(() => { const r = queryStatus(stateDir); return r.worker.standbyReady && r.worker.standbyPid !== sb; }, 'the SIGTERMed standby replaced', 20_000);
      t.notOk(fs.existsSync(`/proc/${sb}`), 'namespace: the SIGTERMed standby is gone, and replaced');
    }
    const log = s.backend.log();
    t.equal((log.match(/"msg":"worker confined"/g) ?? []).length >= 3, true, 'every worker (first, standby, its replacement) was confined');
    t.notMatch(log, /after the worker was confined/, 'no module was loaded after the pivot');
  });
}

t.test('--sandbox none and --seccomp none are logged as warnings', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', { extraArgs: ['--state-dir', stateDir, '--sandbox', 'none', '--seccomp', 'none', '--no-standby'] });
  await s.fuse.getattr(F.FUSE_ROOT_ID);
  t.match(s.backend.log(), /"level":40[^\n]*"msg":"the worker runs unconfined \(--sandbox none\)/, 'warned');
  t.match(s.backend.log(), /"level":40[^\n]*"msg":"the worker runs without a seccomp filter \(--seccomp none\)/, 'warned about seccomp too');
  t.equal(statusField(queryStatus(stateDir).worker.pid!, 'Seccomp'), '0', 'and no filter is installed');
});
