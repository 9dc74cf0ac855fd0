// The operators' view: Debian's prometheus-node-exporter, its textfile collector pointed at our
// state directory, serves our metrics.prom on its /metrics. A backend served by the test
// frontend loses its worker twice; the restarts, the recoveries (counter and histogram), the
// queues and the keeper's fds come back through node_exporter as the dashboard
// (docs/grafana-dashboard.json) queries them, and the textfile collector reports no error.
import t from 'tap';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, waitFor } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';

const NODE_EXPORTER = '/usr/bin/prometheus-node-exporter';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

async function scrape(port: number): Promise<string> {
  try {
    const r = await fetch(`http://127.0.0.1:${port}/metrics`);
    return r.ok ? await r.text() : '';
  } catch {
    return '';
  }
}

/** The value of one sample line `name{labels} value` (labels in the exporter's order). */
function sample(text: string, series: string): number | null {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? null : Number(line.slice(series.length + 1));
}

t.test('node_exporter\'s textfile collector serves our metrics.prom', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', { extraArgs: ['--state-dir', stateDir] });
  const name = queryStatus(stateDir).name;
  for (let i = 0; i < 2; i++) {
    const before = queryStatus(stateDir);
    process.kill(before.worker.pid!, 'SIGKILL');
    // The successor's first served request ends the recovery.
    t.ok(await s.fuse.serving(15_000), `the backend serves after kill ${i + 1}`);
    await waitFor(() => queryStatus(stateDir).recovery.count === before.recovery.count + 1, 'the recovery to be counted', 15_000);
  }
  const metrics = path.join(stateDir, 'metrics.prom');
  await waitFor(() => fs.existsSync(metrics) && /virtiofs_keeper_recoveries_total\{[^}]*\} 2\n/.test(fs.readFileSync(metrics, 'utf8')),
    'metrics.prom to show both recoveries', 15_000);

  const port = await freePort();
  const logPath = path.join(t.testdir(), 'node-exporter.log');
  const logFd = fs.openSync(logPath, 'w');
  const exporter = spawn(NODE_EXPORTER, [`--web.listen-address=127.0.0.1:${port}`, '--collector.disable-defaults', '--collector.textfile',
    `--collector.textfile.directory=${stateDir}`], { stdio: ['ignore', logFd, logFd] });
  fs.closeSync(logFd);
  t.teardown(async () => {
    if (exporter.exitCode !== null || exporter.signalCode !== null) return;
    const gone = new Promise((r) => exporter.once('exit', r));
    process.kill(exporter.pid!, 'SIGKILL');
    await gone;
  });
  const text: string = await waitFor(async (): Promise<string> => { const x = await scrape(port); return /virtiofs_keeper_/.test(x) ? x : ''; },
    'node_exporter to serve our series', 20_000, 100).catch((e: Error) => { t.comment(fs.readFileSync(logPath, 'utf8')); throw e; });

  const n = `name="${name}"`;
  t.equal(sample(text, 'node_textfile_scrape_error'), 0, 'the textfile collector parsed metrics.prom without error');
  t.equal(sample(text, `virtiofs_keeper_worker_restarts_total{${n}}`), 2, 'restarts');
  t.equal(sample(text, `virtiofs_keeper_recoveries_total{${n}}`), 2, 'recoveries');
  t.equal(sample(text, `virtiofs_keeper_worker_up{${n}}`), 1, 'the worker is up');
  t.equal(sample(text, `virtiofs_keeper_vhost_connected{${n}}`), 1, 'the frontend is connected');
  t.match(text, /# TYPE virtiofs_keeper_recovery_seconds histogram/, 'the recovery time is a histogram');
  t.equal(sample(text, `virtiofs_keeper_recovery_seconds_count{${n}}`), 2, 'histogram count');
  t.equal(sample(text, `virtiofs_keeper_recovery_seconds_bucket{${n},le="+Inf"}`), 2, 'the +Inf bucket holds every recovery');
  const sum = sample(text, `virtiofs_keeper_recovery_seconds_sum{${n}}`);
  t.ok(sum !== null && sum > 0 && sum < 30, `histogram sum ${sum} s`);
  const maxS = sample(text, `virtiofs_keeper_recovery_max_seconds{${n}}`)!;
  t.ok(maxS > 0 && maxS <= sum!, 'the longest recovery is within the sum');
  t.ok((sample(text, `virtiofs_keeper_keeper_fds{${n}}`) ?? 0) >= 3, 'fds held by the keeper (root, listen, connection at least)');
  t.ok((sample(text, `virtiofs_keeper_queue_size{${n},queue="1"}`) ?? 0) > 0, 'the request queue\'s size');
  t.not(sample(text, `virtiofs_keeper_queue_inflight{${n},queue="1"}`), null, 'queue depth (requests in flight)');
});
