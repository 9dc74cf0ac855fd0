// `npm run bench [-- --json FILE] [-- --only NAME,...]`: benchmark rows. Speed claims come
// from here, never from timed tests.
import * as fs from 'node:fs';
import { measureRecovery, quantile } from './recovery';

export interface Row {
  name: string;
  unit: string;
  ours: number;
  peer: number | null;
  ratio: number | null;
  higherIsBetter: boolean;
  note?: string;
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function recoveryRows(kills: number): Promise<Row[]> {
  const r = await measureRecovery(kills);
  const round = (x: number): number => Math.round(x * 10) / 10;
  return [
    { name: `recovery: SIGKILL to first completed request, p50 (${kills} kills)`, unit: 'ms', ours: round(quantile(r.keeperMs, 0.5)), peer: null, ratio: null, higherIsBetter: false, note: 'C virtiofsd cannot recover: the guest hangs' },
    { name: `recovery: SIGKILL to first completed request, p99 (${kills} kills)`, unit: 'ms', ours: round(quantile(r.keeperMs, 0.99)), peer: null, ratio: null, higherIsBetter: false },
    { name: `recovery: SIGKILL to first completed request, max (${kills} kills)`, unit: 'ms', ours: round(Math.max(...r.keeperMs)), peer: null, ratio: null, higherIsBetter: false },
    { name: `recovery: longest reply gap seen by the client, p50 (${kills} kills)`, unit: 'ms', ours: round(quantile(r.clientGapMs, 0.5)), peer: null, ratio: null, higherIsBetter: false },
  ];
}

async function main(): Promise<void> {
  const only = arg('only')?.split(',');
  const want = (n: string): boolean => only === undefined || only.includes(n);
  const rows: Row[] = [];
  if (want('recovery')) rows.push(...await recoveryRows(Number(arg('kills') ?? 50)));
  const w = Math.max(...rows.map((r) => r.name.length));
  for (const r of rows) {
    const peer = r.peer === null ? '-' : String(r.peer);
    const ratio = r.ratio === null ? '' : `  ratio ${r.ratio.toFixed(2)}`;
    process.stdout.write(`${r.name.padEnd(w)}  ours ${String(r.ours).padStart(8)} ${r.unit}  peer ${peer.padStart(8)}${ratio}${r.note ? `  (${r.note})` : ''}\n`);
  }
  const json = arg('json');
  if (json) fs.writeFileSync(json, JSON.stringify(rows, null, 2));
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
