// The bench's picture (`npm run bench` writes it, `--svg FILE`, default docs/bench.svg; or
// `node dist/test/bench/chart.js ROWS.json OUT.svg` from a saved `--json`): one bar per row
// that has a peer figure, ours/peer on a log scale with the 1.0 line (green where ours is
// better, red where it is worse: above 1.0 for rates, below for times and memory), then the
// recovery-time distribution of every recovery row that kept its per-kill samples (sorted
// samples: the share of kills recovered within x ms). Plain SVG, no dependency.
import * as fs from 'node:fs';

export interface ChartRow {
  name: string;
  unit: string;
  ours: number;
  peer: number | null;
  ratio: number | null;
  higherIsBetter: boolean;
  /** Per-repeat (or per-kill) values behind the medians. */
  oursRuns?: number[];
}

const WIDTH = 960;
const LABEL_W = 470;
const BAR_H = 16;
const ROW_GAP = 4;
const PAD = 16;
const RATIO_MIN = 1 / 8;
const RATIO_MAX = 8;

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function fmt(n: number): string {
  return Math.abs(n) >= 100 ? n.toFixed(0) : Math.abs(n) >= 10 ? n.toFixed(1) : n.toFixed(2);
}

/** Whether ours is at least as good as the peer on this row. */
export function oursWins(r: ChartRow): boolean {
  if (r.ratio === null) return false;
  return r.higherIsBetter ? r.ratio >= 1 : r.ratio <= 1;
}

function ratioSection(rows: ChartRow[], top: number, out: string[]): number {
  const plotX = LABEL_W + PAD;
  const plotW = WIDTH - plotX - PAD - 60;
  const x = (ratio: number): number => {
    const c = Math.min(RATIO_MAX, Math.max(RATIO_MIN, ratio));
    return plotX + ((Math.log2(c) - Math.log2(RATIO_MIN)) / (Math.log2(RATIO_MAX) - Math.log2(RATIO_MIN))) * plotW;
  };
  out.push(`<text x="${PAD}" y="${top + 18}" class="title">ours / C virtiofsd, same run, medians (log scale; green: ours better, red: ours worse)</text>`);
  let y = top + 34;
  const first = y;
  for (const r of rows) {
    const ratio = r.ratio!;
    const x1 = x(1);
    const x2 = x(ratio);
    const colour = oursWins(r) ? '#2e8b57' : '#c0392b';
    out.push(`<text x="${LABEL_W}" y="${y + BAR_H - 4}" class="label" text-anchor="end">${esc(r.name.length > 78 ? `${r.name.slice(0, 77)}…` : r.name)}</text>`);
    out.push(`<rect x="${Math.min(x1, x2).toFixed(1)}" y="${y}" width="${Math.max(1, Math.abs(x2 - x1)).toFixed(1)}" height="${BAR_H}" fill="${colour}"/>`);
    out.push(`<text x="${(Math.max(x1, x2) + 4).toFixed(1)}" y="${y + BAR_H - 4}" class="value">${fmt(ratio)}${r.higherIsBetter ? '' : ' (lower is better)'}</text>`);
    y += BAR_H + ROW_GAP;
  }
  for (const tick of [0.125, 0.25, 0.5, 1, 2, 4, 8]) {
    out.push(`<line x1="${x(tick).toFixed(1)}" y1="${first - 4}" x2="${x(tick).toFixed(1)}" y2="${y}" class="${tick === 1 ? 'one' : 'grid'}"/>`);
    out.push(`<text x="${x(tick).toFixed(1)}" y="${y + 14}" class="tick" text-anchor="middle">${tick < 1 ? `1/${1 / tick}` : String(tick)}</text>`);
  }
  return y + 24;
}

function recoverySection(rows: ChartRow[], top: number, out: string[]): number {
  const plotX = PAD + 50;
  const plotW = WIDTH - plotX - PAD - 240;
  const plotH = 220;
  out.push(`<text x="${PAD}" y="${top + 18}" class="title">recovery: SIGKILL to first completed request, share of kills recovered within x ms</text>`);
  const y0 = top + 30;
  const all = rows.flatMap((r) => r.oursRuns!);
  const maxMs = Math.max(1, ...all) * 1.05;
  const px = (ms: number): number => plotX + (ms / maxMs) * plotW;
  const py = (share: number): number => y0 + plotH - share * plotH;
  const palette = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];
  out.push(`<rect x="${plotX}" y="${y0}" width="${plotW}" height="${plotH}" class="frame"/>`);
  for (let i = 0; i <= 4; i++) {
    const ms = (maxMs / 4) * i;
    out.push(`<text x="${px(ms).toFixed(1)}" y="${y0 + plotH + 14}" class="tick" text-anchor="middle">${fmt(ms)} ms</text>`);
    out.push(`<text x="${plotX - 4}" y="${(py(i / 4) + 4).toFixed(1)}" class="tick" text-anchor="end">${i * 25}%</text>`);
  }
  rows.forEach((r, i) => {
    const s = [...r.oursRuns!].sort((a, b) => a - b);
    const pts = s.map((v, k) => `${px(v).toFixed(1)},${py((k + 1) / s.length).toFixed(1)}`);
    const colour = palette[i % palette.length]!;
    out.push(`<polyline points="${px(0).toFixed(1)},${py(0).toFixed(1)} ${pts.join(' ')}" fill="none" stroke="${colour}" stroke-width="2"/>`);
    const label = r.name.replace(/^recovery: SIGKILL to first completed request, /, '').replace(/, p50 /, ' ');
    out.push(`<text x="${plotX + plotW + 10}" y="${y0 + 14 + i * 16}" class="label" fill="${colour}">${esc(label.length > 40 ? `${label.slice(0, 39)}…` : label)} (n=${s.length})</text>`);
  });
  return y0 + plotH + 30;
}

/** The SVG for a bench's rows (see the header). */
export function renderChart(rows: readonly ChartRow[], title: string): string {
  const compared = rows.filter((r) => r.ratio !== null && Number.isFinite(r.ratio) && r.ratio > 0);
  // The p50 rows of recovery carry every kill's sample; p99/max rows repeat them.
  const recovery = rows.filter((r) => r.name.startsWith('recovery') && r.name.includes(' p50 ') && (r.oursRuns?.length ?? 0) > 0);
  const body: string[] = [];
  let y = 28;
  if (compared.length > 0) y = ratioSection(compared, y, body);
  if (recovery.length > 0) y = recoverySection(recovery, y, body);
  if (compared.length === 0 && recovery.length === 0) {
    body.push(`<text x="${PAD}" y="${y + 20}" class="label">no row with a peer figure or recovery samples</text>`);
    y += 40;
  }
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${y}" viewBox="0 0 ${WIDTH} ${y}" font-family="sans-serif">`,
    '<style>.title{font-size:14px;font-weight:bold}.label{font-size:11px}.value{font-size:11px}.tick{font-size:10px;fill:#555}',
    '.grid{stroke:#ddd;stroke-width:1}.one{stroke:#000;stroke-width:1.5}.frame{fill:none;stroke:#999}</style>',
    `<rect width="${WIDTH}" height="${y}" fill="#fff"/>`,
    `<text x="${PAD}" y="18" class="title">${esc(title)}</text>`,
    ...body,
    '</svg>',
    '',
  ].join('\n');
}

if (require.main === module) {
  const [input, output] = process.argv.slice(2);
  if (input === undefined || output === undefined) {
    process.stderr.write('usage: node dist/test/bench/chart.js ROWS.json OUT.svg\n');
    process.exit(2);
  }
  const rows = JSON.parse(fs.readFileSync(input, 'utf8')) as ChartRow[];
  fs.writeFileSync(output, renderChart(rows, `npm run bench (${input})`));
}
