// docs/grafana-dashboard.json stays true to what the keeper exports: valid JSON, every series a
// panel queries is one formatPrometheus writes (histogram series by their _bucket/_sum/_count
// names), and every exported series except the raw queue indices has a panel.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { formatPrometheus } from '../../shared/status_report';

interface Panel { title: string; targets: Array<{ expr: string }> }

t.test('the Grafana dashboard queries only series we export, and shows them', async (t) => {
  const file = path.join(__dirname, '..', '..', '..', 'docs', 'grafana-dashboard.json');
  const dash = JSON.parse(fs.readFileSync(file, 'utf8')) as { panels: Panel[]; templating: { list: Array<{ query: string }> } };
  const exported = new Map<string, string>();
  for (const m of formatPrometheus([]).matchAll(/^# TYPE (virtiofs_keeper_\w+) (\w+)$/gm)) exported.set(m[1]!, m[2]!);
  t.ok(exported.size >= 20, `${exported.size} series exported`);
  const queried = new Set<string>();
  const exprs = [...dash.panels.flatMap((p) => p.targets.map((x) => x.expr)), ...dash.templating.list.map((v) => v.query)];
  for (const e of exprs) for (const m of e.matchAll(/virtiofs_keeper_\w+/g)) queried.add(m[0]);
  const unknown = [...queried].filter((q) => {
    const base = q.replace(/_(bucket|sum|count)$/, '');
    return !(exported.has(q) || (exported.get(base) === 'histogram' && base !== q));
  });
  t.same(unknown, [], 'every queried series exists');
  const shown = new Set([...queried].map((q) => q.replace(/_(bucket|sum|count)$/, '')));
  const missing = [...exported.keys()].filter((n) => !shown.has(n) && !['virtiofs_keeper_queue_size', 'virtiofs_keeper_queue_last_avail',
    'virtiofs_keeper_worker_uptime_seconds', 'virtiofs_keeper_recovery_last_seconds', 'virtiofs_keeper_recovery_p50_seconds'].includes(n));
  t.same(missing, [], 'every exported series (but raw indices and ones the histogram supersedes) has a panel');
  for (const w of ['worker_restarts_total', 'recoveries_total', 'recovery_seconds_bucket', 'queue_inflight', 'keeper_fds']) {
    t.ok(queried.has(`virtiofs_keeper_${w}`), `the issue's series ${w} is on the dashboard`);
  }
  const ids = dash.panels.map((p) => (p as unknown as { id: number }).id);
  t.equal(new Set(ids).size, ids.length, 'panel ids are unique');
});
