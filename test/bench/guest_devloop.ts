// Guest-level benchmark of a developer's loop on the share: a real QEMU guest (the E2E harness,
// TCG, busybox tools) unpacks a package tree of about 1,900 small source files from a tarball
// on the share, lists it, stats every file, greps it, copies it with cp -a and removes both
// copies. Both backends run in their default cache mode (ours --cache auto, the C virtiofsd
// cache=auto). Steps are timed on the host from marker lines on the serial console.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import type { BackendKind } from '../e2e/backends';
import { cpuBetween, describeCpu, describeThreads, runMarkedGuest, type GuestCpu } from './guest_copy';

export interface DevTreeShape { dirs: number; filesPerDir: number }

export const DEV_STEPS = ['untar', 'find', 'stat', 'grep', 'cp', 'rm'] as const;
export type DevStep = (typeof DEV_STEPS)[number];

export interface DevLoopResult { totalMs: number; stepsMs: Record<DevStep, number>; cpu: GuestCpu }

const NEEDLE = 'vfsk_needle_symbol';

export function describeDevTree(t: DevTreeShape): string {
  return `${t.dirs * t.filesPerDir} files in ${t.dirs} dirs`;
}

/** Writes the package tree as `pkg.tar` into `shared`: text files of 0.5–12 KiB, one in seven
 * mentioning the needle. Returns how many files mention it. */
function writePackage(shared: string, t: DevTreeShape): number {
  const src = fs.mkdtempSync(path.join(path.dirname(shared), 'pkg-'));
  let needles = 0;
  let seed = 12345;
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % n;
  };
  for (let d = 0; d < t.dirs; d++) {
    const dir = path.join(src, 'pkg', `lib${d % 12}`, `mod${d}`);
    fs.mkdirSync(dir, { recursive: true });
    for (let f = 0; f < t.filesPerDir; f++) {
      const lines: string[] = [];
      const n = 10 + rand(300);
      for (let i = 0; i < n; i++) lines.push(`export function f${d}_${f}_${i}(x) { return x * ${rand(1000)} + ${i}; }`);
      if ((d * t.filesPerDir + f) % 7 === 0) {
        lines.push(`// uses ${NEEDLE}`);
        needles++;
      }
      fs.writeFileSync(path.join(dir, `file${f}.${['js', 'ts', 'c', 'h', 'md'][f % 5]}`), lines.join('\n') + '\n');
    }
  }
  execFileSync('tar', ['-cf', path.join(shared, 'pkg.tar'), '-C', src, 'pkg']);
  fs.rmSync(src, { recursive: true, force: true });
  return needles;
}

function script(): string {
  return `set -e
cd /mnt
echo "BENCH-MARK start"
mkdir w
tar -xf pkg.tar -C w
echo "BENCH-MARK untar"
echo "BENCH-FILES $(find w -type f | wc -l)"
echo "BENCH-MARK find"
find w -type f | xargs stat -c '%s %Y' > /dev/null
echo "BENCH-MARK stat"
echo "BENCH-GREP $(grep -r -l ${NEEDLE} w | wc -l)"
echo "BENCH-MARK grep"
cp -a w w2
echo "BENCH-MARK cp"
rm -rf w w2
echo "BENCH-MARK rm"
`;
}

/** One developer loop on `kind`; throws if a step saw the wrong tree. */
export async function guestDevLoop(kind: BackendKind, t: DevTreeShape, workDir: string, log: (m: string) => void, profileDir?: string): Promise<DevLoopResult> {
  let needles = 0;
  const { marks, cpu } = await runMarkedGuest(kind, {
    cache: 'auto', workDir, guestScript: script(), need: ['start', ...DEV_STEPS], log, ...(profileDir === undefined ? {} : { profileDir }),
    setupShared: (shared) => { needles = writePackage(shared, t); },
    check: (run) => {
      const files = /BENCH-FILES (\d+)/.exec(run.output);
      const grep = /BENCH-GREP (\d+)/.exec(run.output);
      if (Number(files?.[1]) !== t.dirs * t.filesPerDir) throw new Error(`find saw ${files?.[1]} files, expected ${t.dirs * t.filesPerDir}`);
      if (Number(grep?.[1]) !== needles) throw new Error(`grep found ${grep?.[1]} files, expected ${needles}`);
      const left = fs.readdirSync(run.shared).filter((n) => n !== 'pkg.tar');
      if (left.length !== 0) throw new Error(`rm -rf left ${left.join(', ')} on the share`);
    },
  });
  const stepsMs = {} as Record<DevStep, number>;
  let prev = marks.get('start')!;
  for (const s of DEV_STEPS) {
    stepsMs[s] = marks.get(s)! - prev;
    prev = marks.get(s)!;
  }
  const totalMs = marks.get('rm')! - marks.get('start')!;
  const used = cpuBetween(cpu.get('start')!, cpu.get('rm')!);
  log(`  dev loop on ${kind}: ${Math.round(totalMs)} ms (${DEV_STEPS.map((s) => `${s} ${Math.round(stepsMs[s])}`).join(', ')}); ${describeCpu(used)}`);
  let from = 'start';
  for (const s of DEV_STEPS) {
    log(`    ${s}: ${describeCpu(cpuBetween(cpu.get(from)!, cpu.get(s)!))}; ${describeThreads(cpu.get(from)!, cpu.get(s)!)}`);
    from = s;
  }
  return { totalMs, stepsMs, cpu: used };
}
