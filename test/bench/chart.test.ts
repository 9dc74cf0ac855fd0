// The bench chart (test/bench/chart.ts): a bar per row with a peer figure, coloured by whether
// ours is better in that row's direction, the 1.0 line, and one distribution curve per recovery
// row that kept its samples; names are escaped.
import t from 'tap';
import { renderChart, oursWins, type ChartRow } from './chart';

const rows: ChartRow[] = [
  { name: 'LOOKUP <rate>', unit: 'ops/s', ours: 50_000, peer: 100_000, ratio: 0.5, higherIsBetter: true },
  { name: 'sequential READ', unit: 'MiB/s', ours: 3000, peer: 1500, ratio: 2, higherIsBetter: true },
  { name: 'QD1 latency', unit: 'µs', ours: 20, peer: 25, ratio: 0.8, higherIsBetter: false },
  { name: 'private memory', unit: 'MiB', ours: 60, peer: 5, ratio: 12, higherIsBetter: false },
  { name: 'recovery: SIGKILL to first completed request, keeper clock, p50 (5 kills)', unit: 'ms', ours: 14, peer: null, ratio: null,
    higherIsBetter: false, oursRuns: [12, 14, 13, 30, 15] },
  { name: 'recovery: SIGKILL to first completed request, keeper clock, p99 (5 kills)', unit: 'ms', ours: 30, peer: null, ratio: null, higherIsBetter: false },
];

t.test('bars, colours, the 1.0 line and the recovery curves', async (t) => {
  const svg = renderChart(rows, 'bench & co');
  t.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/, 'an SVG document');
  t.equal((svg.match(/<rect x=[^>]*height="16" fill=/g) ?? []).length, 4, 'one bar per row with a peer figure');
  t.equal((svg.match(/fill="#2e8b57"/g) ?? []).length, 2, 'green: the faster READ and the lower latency');
  t.equal((svg.match(/fill="#c0392b"/g) ?? []).length, 2, 'red: the slower LOOKUP and the larger memory');
  t.equal((svg.match(/class="one"/g) ?? []).length, 1, 'the 1.0 line');
  t.match(svg, /LOOKUP &lt;rate&gt;/, 'names are escaped');
  t.match(svg, /bench &amp; co/, 'the title too');
  const curves = svg.match(/<polyline points="([^"]*)"/g) ?? [];
  t.equal(curves.length, 1, 'one curve: the p50 row carries the samples, p99 repeats them');
  t.equal(curves[0]!.split(' ').length - 1, 6, 'the origin and one point per kill');
  t.match(svg, /\(n=5\)/, 'labelled with its sample count');
});

t.test('who wins a row', async (t) => {
  t.equal(oursWins(rows[0]!), false);
  t.equal(oursWins(rows[1]!), true);
  t.equal(oursWins(rows[2]!), true);
  t.equal(oursWins(rows[3]!), false);
  t.equal(oursWins(rows[4]!), false, 'no peer: no verdict');
});

t.test('no usable row still gives a valid picture', async (t) => {
  t.match(renderChart([], 'empty'), /no row with a peer figure or recovery samples/);
});
