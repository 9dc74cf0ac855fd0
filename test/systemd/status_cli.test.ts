// The status CLI as an operator and a monitoring script use it: table, --json, --prometheus,
// exit codes, and the keeper's metrics.prom file.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { openSession, waitFor } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';

const BIN = path.join(__dirname, '..', '..', '..', 'bin', 'virtiofs-keeper.js');
const cli = (...args: string[]) => spawnSync(process.execPath, [BIN, 'status', ...args], { encoding: 'utf8', timeout: 20_000 });

t.test('status table, JSON, Prometheus and exit codes', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', { extraArgs: ['--state-dir', stateDir], setup: (d) => fs.writeFileSync(path.join(d, 'a'), 'A') });
  const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'a');
  await s.fuse.open(e.nodeid, F.O.RDONLY);
  await waitFor(() => queryStatus(stateDir).fuse.openFiles === 1, 'stats');

  const table = cli('--state-dir', stateDir);
  t.equal(table.status, 0, 'exit 0 while serving');
  t.match(table.stdout, /worker\s+running, pid \d+/);
  t.match(table.stdout, /queue 1\s+size 128, running/);
  t.match(table.stdout, /1 open files/);

  const json = JSON.parse(cli('--state-dir', stateDir, '--json').stdout);
  for (const k of ['worker.pid', 'worker.restarts', 'worker.state', 'worker.lastExit', 'keeper.pid', 'vhost.connected', 'fuse.inodes', 'fuse.openFiles', 'fuse.openDirs', 'recovery.lastMs', 'recovery.p50Ms', 'recovery.maxMs']) {
    const v = k.split('.').reduce<unknown>((o, p) => (o as Record<string, unknown>)[p], json);
    t.not(v, undefined, `--json has ${k}`);
  }
  t.same(Object.keys(json.vhost.queues[1] ?? {}).sort(), ['index', 'inflight', 'lastAvail', 'pending', 'running', 'size', 'used'], 'per-queue fields');

  process.kill(json.worker.pid, 'SIGKILL');
  await waitFor(() => { const q = queryStatus(stateDir); return q.worker.restarts === 1 && q.worker.state === 'running'; }, 'restart', 20_000);
  // Recovery ends at the first request the successor completes.
  await s.fuse.getattr(F.FUSE_ROOT_ID);
  await waitFor(() => queryStatus(stateDir).recovery.count === 1, 'a recovery measured', 20_000);

  const prom = cli('--state-dir', stateDir, '--prometheus');
  t.equal(prom.status, 0);
  t.match(prom.stdout, /^# TYPE virtiofs_keeper_worker_restarts_total counter$/m);
  t.match(prom.stdout, /^virtiofs_keeper_worker_restarts_total\{name="[^"]+"\} 1$/m);
  t.match(prom.stdout, /^virtiofs_keeper_recovery_last_seconds\{name="[^"]+"\} [0-9.e-]+$/m);
  t.match(prom.stdout, /^virtiofs_keeper_queue_used\{name="[^"]+",queue="1"\} \d+$/m);
  await waitFor(() => fs.existsSync(path.join(stateDir, 'metrics.prom')), 'metrics.prom');
  t.match(fs.readFileSync(path.join(stateDir, 'metrics.prom'), 'utf8'), /virtiofs_keeper_worker_up\{name="[^"]+"\} 1/, 'the keeper writes metrics.prom');

  await s.close();
  const gone = cli('--state-dir', stateDir);
  t.equal(gone.status, 2, 'exit 2 when no keeper answers');
  t.match(gone.stderr, /no keeper answers/);
});
