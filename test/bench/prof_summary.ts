// `node dist/test/bench/prof_summary.js FILE.cpuprofile [N] [--windows windows.json]`: the N
// functions with the most self time in a V8 CPU profile (as written by --profile), with their
// share of all samples. With --windows (the bench writes DIR/<variant>-<repeat>/windows.json
// beside the profiles: each micro row's CLOCK_MONOTONIC window in µs), one table per row, of the
// samples inside its window only.
import * as fs from 'node:fs';

interface Node { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }
interface Profile { nodes: Node[]; samples: number[]; timeDeltas: number[]; startTime: number }

export function summarise(file: string, top = 25, window: [number, number] | null = null): string {
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  let t = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i] ?? 0;
    t += dt;
    if (window !== null && (t < window[0] || t > window[1])) continue;
    const n = byId.get(p.samples[i]!);
    if (!n) continue;
    total += dt;
    const f = n.callFrame;
    const key = `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${f.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + dt);
  }
  const idle = [...self].filter(([k]) => k.startsWith('(idle)')).reduce((a, [, v]) => a + v, 0);
  const rows = [...self].filter(([k]) => !k.startsWith('(idle)')).sort((a, b) => b[1] - a[1]).slice(0, top);
  const lines = [`${file}: ${(total / 1e6).toFixed(2)} s sampled, ${(((total - idle) / 1e6)).toFixed(2)} s not idle (shares below are of the busy time)`];
  for (const [k, v] of rows) lines.push(`${((v / 1e3)).toFixed(0).padStart(8)} ms ${((100 * v) / Math.max(1, total - idle)).toFixed(1).padStart(5)}%  ${k}`);
  return lines.join('\n');
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const w = args.indexOf('--windows');
  const windowsFile = w >= 0 ? args.splice(w, 2)[1] : undefined;
  const [file, n] = args;
  if (!file || (w >= 0 && !windowsFile)) {
    process.stderr.write('usage: prof_summary FILE.cpuprofile [N] [--windows windows.json]\n');
    process.exit(2);
  }
  if (windowsFile === undefined) {
    process.stdout.write(summarise(file, Number(n ?? 25)) + '\n');
  } else {
    const windows = JSON.parse(fs.readFileSync(windowsFile, 'utf8')) as Record<string, [number, number] | null>;
    for (const [row, win] of Object.entries(windows)) {
      if (win === null) continue;
      process.stdout.write(`== ${row} (${((win[1] - win[0]) / 1000).toFixed(1)} ms)\n${summarise(file, Number(n ?? 15), win)}\n`);
    }
  }
}
