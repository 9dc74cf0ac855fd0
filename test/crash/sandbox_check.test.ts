// `virtiofs-keeper sandbox-check` against a running instance: from inside a worker's sandbox
// (namespace, chroot; with the default seccomp filter, and once without it) it tries what a
// compromised worker would, including FDFETCH on that instance's keeper.sock and ptrace of its
// keeper; the table says what was blocked and how, and the instance is untouched.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { keeperSocketPath } from '../../shared/config';
import { openSession } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';
import type { ProbeRow } from '../../cli/sandbox_check';

const BIN = path.join(__dirname, '..', '..', '..', 'bin', 'virtiofs-keeper.js');

t.test('sandbox-check blocks what a compromised worker would try', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', { extraArgs: ['--state-dir', stateDir] });
  const before = queryStatus(stateDir);
  const share = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-chk-'));
  t.teardown(() => fs.rmSync(share, { recursive: true, force: true }));
  const check = (mode: string, seccomp: string): { rows: ProbeRow[]; status: number | null; row: (prefix: string) => ProbeRow } => {
    const r = spawnSync(process.execPath, [BIN, 'sandbox-check', '--shared-dir', share, '--sandbox', mode, '--seccomp', seccomp, '--json',
      '--other-keeper-sock', keeperSocketPath(stateDir)], { encoding: 'utf8', timeout: 120_000 });
    const rows = JSON.parse(r.stdout) as ProbeRow[];
    t.comment(`${mode}, seccomp ${seccomp}:\n${rows.map((x) => `  ${x.attempt}: ${x.blocked ? 'blocked' : 'NOT blocked'} (${x.result})`).join('\n')}`);
    return { rows, status: r.status, row: (prefix) => rows.find((x) => x.attempt.startsWith(prefix)) ?? t.fail(`no row ${prefix}`) as never };
  };
  const SIGSYS = 'killed by seccomp (SIGSYS)';
  for (const mode of ['namespace', 'chroot'] as const) {
    const { rows, status, row } = check(mode, 'kill');
    t.equal(rows.length, 11, `${mode}: every attempt has a row`);
    t.match(row('read /etc/shadow'), { blocked: true, result: 'ENOENT' }, `${mode}: /etc/shadow is not there`);
    t.match(row('open the share\'s parent'), { blocked: true }, `${mode}: the host outside the share is not reachable`);
    // The fds pinned before the pivot (worker/sandbox.ts) must not climb out of it with '..'.
    t.match(row('escape via the pinned state dir'), { blocked: true, result: "'..' stays in the state dir" }, `${mode}: '..' of the pinned state dir stays in it`);
    t.match(row('escape via the pinned /proc'), { blocked: true, result: /^only pid dirs/ }, `${mode}: '../..' of the pinned /proc/self/fd is a procfs of pid dirs only`);
    if (mode === 'namespace') t.match(row('escape via the pinned /proc'), { result: /\(1 listed: 1\)$/ }, 'namespace: its procfs lists itself only (its own pid namespace)');
    for (const what of ['socket(AF_INET)', 'connect to 1.1.1.1', 'ptrace pid', 'mount a tmpfs', 'execve /bin/sh', 'setuid(0) after dropping']) {
      t.match(row(what), { blocked: true, result: SIGSYS }, `${mode}: ${what}: killed by the seccomp filter`);
    }
    t.match(row('FDFETCH on another'), { blocked: true, result: 'ENOENT' }, `${mode}: the other instance's keeper.sock is out of sight`);
    t.equal(status, 0, `${mode}: everything was blocked, so the check exits 0`);
  }
  // Without the filter, what the namespaces and the dropped capabilities block alone.
  const bare = check('namespace', 'none');
  t.match(bare.row('ptrace pid'), { blocked: true, result: 'ESRCH' }, 'no seccomp: the other instance\'s keeper is not in its pid namespace: ESRCH');
  t.match(bare.row('mount a tmpfs'), { blocked: true, result: 'EPERM' }, 'no seccomp: mount: EPERM');
  t.match(bare.row('execve /bin/sh'), { blocked: true, result: 'ENOENT' }, 'no seccomp: no shell to execute');
  t.match(bare.row('setuid(0) after dropping'), { blocked: true, result: 'EPERM' }, 'no seccomp: no way back to uid 0');
  t.match(bare.row('socket(AF_INET)'), { blocked: false }, 'no seccomp: socket(AF_INET) works');
  t.match(bare.row('connect to 1.1.1.1'), { blocked: true, result: 'ENETUNREACH' }, 'no seccomp: but the own network namespace has no route out');
  t.equal(bare.status, 1, 'no seccomp: so the check exits 1');
  const after = queryStatus(stateDir);
  t.same(after.fdNames, before.fdNames, 'the instance holds the same fds');
  t.equal(after.worker.pid, before.worker.pid, 'and the same worker');
  t.ok((await s.fuse.getattr(F.FUSE_ROOT_ID)).attr.ino > 0n, 'and serves');
});
