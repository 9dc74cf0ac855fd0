// Guest-level benchmark: a real QEMU guest (the E2E harness, TCG) copies a tree from its tmpfs
// onto the virtio-fs mount and back. Wall time of each copy is taken on the host from marker
// lines on the serial console, so it includes everything a user would wait for.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startBackend, type BackendKind } from '../e2e/backends';
import { startGuest, describeResult } from '../e2e/qemu';
import { ensureGuestImage } from '../e2e/guest-image';
import { machineCpuMs, onCleanup, processCpuMs, profiledBackend } from './procs';
import { descendantsOf } from '../frontend/backend';
import { waitFor } from '../frontend/helpers';
import type { CacheMode } from '../../shared/config';

export interface TreeShape {
  /** 4 MiB files. */
  big: number;
  /** 64 KiB files, spread over 8 directories. */
  small: number;
}

export const treeBytes = (t: TreeShape): number => t.big * 4 * 1048576 + t.small * 65536;

/** "backend 1.2 s CPU, QEMU 3.4 s, machine 87% busy": a log line's part. */
export function describeCpu(c: GuestCpu): string {
  return `backend ${(c.backendMs / 1000).toFixed(2)} s CPU, QEMU ${(c.qemuMs / 1000).toFixed(2)} s, machine ${Math.round(c.machineBusy * 100)}% busy`;
}

export function describeTree(t: TreeShape): string {
  return `${t.big} x 4 MiB + ${t.small} x 64 KiB files = ${treeBytes(t) / 1048576} MiB`;
}

export interface GuestCopyResult {
  /** tmpfs → mount (guest writes), ms. */
  copyInMs: number;
  /** mount → tmpfs (guest reads), ms. */
  copyOutMs: number;
  /** CPU during each copy. */
  copyInCpu: GuestCpu;
  copyOutCpu: GuestCpu;
  /** Creating the source tree in the guest's tmpfs (not on the mount), ms. */
  prepareMs: number;
  bootToMountMs: number;
}

function script(t: TreeShape): string {
  return `set -e
mount -o remount,size=85% /tmp
SRC=/tmp/src
mkdir -p $SRC/big
i=0
while [ $i -lt ${t.big} ]; do dd if=/dev/zero of=$SRC/big/b$i bs=1048576 count=4 2>/dev/null; i=$((i+1)); done
d=0
while [ $d -lt 8 ]; do mkdir -p $SRC/small/s$d; d=$((d+1)); done
i=0
while [ $i -lt ${t.small} ]; do dd if=/dev/zero of=$SRC/small/s$((i % 8))/f$i bs=65536 count=1 2>/dev/null; i=$((i+1)); done
echo "BENCH-MARK prepared"
cp -r $SRC /mnt/tree
echo "BENCH-MARK copied-in"
rm -rf $SRC
cp -r /mnt/tree /tmp/back
echo "BENCH-MARK copied-out"
n=$(du -sk /tmp/back | cut -f1)
echo "BENCH-SIZE $n"
rm -rf /tmp/back
`;
}

function treeSize(p: string): number {
  const st = fs.lstatSync(p);
  if (!st.isDirectory()) return st.size;
  return fs.readdirSync(p).reduce((n, e) => n + treeSize(path.join(p, e)), 0);
}

/** CPU ms used so far, read when a mark line arrives. */
export interface CpuAtMark {
  /** The backend's processes (the keeper, its workers; the C virtiofsd and its child). */
  backend: number;
  /** QEMU (its TCG vCPU thread runs the guest). */
  qemu: number;
  /** The whole machine, busy (not idle or iowait), summed over its CPUs. */
  machineBusy: number;
  /** The whole machine's time, summed over its CPUs. */
  machineTotal: number;
  /** The backend's CPU ms by process role and thread name ("worker/node", "keeper/V8
   * DefaultWorke"): where the backend's CPU goes, for the log. */
  byThread: Map<string, number>;
  /** process.hrtime in µs, the clock of the CPU profiles (prof_summary --windows). */
  hrUs: number;
}

/** CPU between two marks: the backend's and QEMU's ms, and how busy the machine was (0-1). */
export interface GuestCpu { backendMs: number; qemuMs: number; machineBusy: number }

export function cpuBetween(a: CpuAtMark, b: CpuAtMark): GuestCpu {
  const total = b.machineTotal - a.machineTotal;
  return { backendMs: b.backend - a.backend, qemuMs: b.qemu - a.qemu, machineBusy: total > 0 ? (b.machineBusy - a.machineBusy) / total : 0 };
}

/** "worker/node 1.23 s, keeper/node 0.40 s, ...": the backend's CPU between two marks by
 * process role and thread name, largest first (threads under 20 ms left out). */
export function describeThreads(a: CpuAtMark, b: CpuAtMark): string {
  const used = [...b.byThread].map(([k, ms]) => [k, ms - (a.byThread.get(k) ?? 0)] as const)
    .filter(([, ms]) => ms >= 20).sort((x, y) => y[1] - x[1]);
  return used.map(([k, ms]) => `${k} ${(ms / 1000).toFixed(2)} s`).join(', ');
}

/** CPU ms of each thread of `pid` by thread name (threads of one name summed). */
function threadCpuMs(pid: number, role: string, into: Map<string, number>): void {
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return;
  }
  for (const tid of tids) {
    let comm: string;
    try {
      comm = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    const key = `${role}/${comm.replace(/[0-9]+$/, '')}`;
    into.set(key, (into.get(key) ?? 0) + (processCpuMs(`${pid}/task/${tid}`) ?? 0));
  }
}

/** Ours: keeper (the backend's pid), worker, standby (VFSK_STANDBY=1 in its environment), or
 * the unshare(1) launcher; the C virtiofsd and its children. */
function processRole(kind: BackendKind, backendPid: number, p: number): string {
  if (p === backendPid) return kind === 'ours' ? 'keeper' : 'virtiofsd';
  if (kind !== 'ours') return 'virtiofsd-child';
  try {
    if (fs.readFileSync(`/proc/${p}/environ`, 'utf8').split('\0').includes('VFSK_STANDBY=1')) return 'standby';
    if (fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').includes('worker')) return 'worker';
  } catch { /* gone */ }
  return 'launcher';
}

export interface MarkedGuestRun {
  /** Host ms of each `BENCH-MARK <name>` line on the console, and of the mount ("mounted"). */
  marks: Map<string, number>;
  /** CPU used up to each mark (same keys as `marks`). */
  cpu: Map<string, CpuAtMark>;
  /** When the guest was started (host ms). */
  started: number;
  output: string;
  shared: string;
}

/** Boots a guest on `kind` with the shared dir prepared by `setupShared`, runs `guestScript`,
 * and times its marker lines on the host. `check` runs before the backend stops (the shared
 * dir still exists); it throws if the result is wrong. */
export async function runMarkedGuest(kind: BackendKind, opts: {
  cache: CacheMode; workDir: string; guestScript: string; need: string[];
  setupShared?: (shared: string) => void; check?: (run: MarkedGuestRun) => void; log?: (m: string) => void;
  /** CPU-profile ours' processes into this dir (as the micro runs' --profile) and write the
   * marks' windows there (windows.json: each mark from the one before it). */
  profileDir?: string;
}): Promise<MarkedGuestRun> {
  const image = await ensureGuestImage();
  const dir = fs.mkdtempSync(path.join(opts.workDir, `g-${kind}-`));
  const shared = path.join(dir, 'shared');
  fs.mkdirSync(shared);
  opts.setupShared?.(shared);
  // Short paths (sun_path is 108 bytes): the socket and ours' state dir in their own temp dir.
  const short = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-bg-'));
  const socketPath = path.join(short, 'vhost.sock');
  const stateDir = path.join(short, 'st');
  if (kind === 'ours') fs.mkdirSync(stateDir);
  const rmShort = onCleanup(`rm ${short}`, () => fs.rmSync(short, { recursive: true, force: true }));
  const profiled = kind === 'ours' && opts.profileDir !== undefined;
  const backend = await startBackend(kind, {
    sharedDir: shared, socketPath, dir, cache: opts.cache, ...(kind === 'ours' ? { stateDir } : {}),
    ...(profiled ? profiledBackend(opts.profileDir!) : {}),
  });
  const stopBackend = onCleanup(`stop guest backend ${kind}`, async () => {
    await backend.stop();
    await rmShort();
  });
  const marks = new Map<string, number>();
  const cpu = new Map<string, CpuAtMark>();
  let qemuPid: number | null = null;
  const cpuNow = (): CpuAtMark => {
    const m = machineCpuMs();
    const pids = [backend.pid, ...descendantsOf(backend.pid)];
    const backendMs = pids.reduce((sum, p) => sum + (processCpuMs(p) ?? 0), 0);
    const byThread = new Map<string, number>();
    for (const p of pids) threadCpuMs(p, processRole(kind, backend.pid, p), byThread);
    return {
      backend: backendMs, qemu: qemuPid === null ? 0 : processCpuMs(qemuPid) ?? 0, machineBusy: m.busy, machineTotal: m.total,
      byThread, hrUs: Number(process.hrtime.bigint() / 1000n),
    };
  };
  let buf = '';
  const started = performance.now();
  try {
    const g = await startGuest({
      socketPath, dir, script: opts.guestScript, image, memoryMiB: 1024, timeoutMs: 1_200_000, idleTimeoutMs: 400_000,
      onOutput: (chunk) => {
        const now = performance.now();
        buf += chunk;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          const m = /BENCH-MARK (\S+)/.exec(line) ?? /VFSK-INIT: (mounted)/.exec(line);
          if (m) {
            marks.set(m[1]!, now);
            cpu.set(m[1]!, cpuNow());
          }
        }
      },
    });
    qemuPid = g.pid;
    const killGuest = onCleanup(`kill QEMU ${g.pid}`, () => g.kill());
    const r = await g.wait();
    await killGuest();
    if (r.exitCode !== 0) throw new Error(`guest run on ${kind} failed:\n${describeResult(r, 4000)}\n--- backend log (tail) ---\n${backend.log().slice(-3000)}`);
    for (const k of ['mounted', ...opts.need]) if (!marks.has(k)) throw new Error(`guest output lacks the ${k} marker:\n${r.output.slice(-3000)}`);
    if (kind === 'ours' && opts.log !== undefined) {
      // The worker's last word on the session: what the addon served (a diagnostic, not a row).
      const disconnected = /"fastPath":(\{[^}]*\})[^\n]*frontend disconnected/;
      const served = await waitFor(() => disconnected.exec(backend.log()), 'the worker\'s disconnect', 2000, 20).catch(() => null);
      opts.log(`  fast path on ours: ${served?.[1] ?? 'no figures (the worker did not log its disconnect)'}`);
    }
    if (profiled) {
      const order = [...cpu.keys()];
      const windows = Object.fromEntries(order.slice(1).map((k, i) => [k, [cpu.get(order[i]!)!.hrUs, cpu.get(k)!.hrUs]]));
      // Before the backend stops: the keeper and worker write their profiles only at exit.
      fs.mkdirSync(opts.profileDir!, { recursive: true });
      fs.writeFileSync(path.join(opts.profileDir!, 'windows.json'), JSON.stringify(windows));
    }
    const run: MarkedGuestRun = { marks, cpu, started, output: r.output, shared };
    opts.check?.(run);
    return run;
  } finally {
    await stopBackend();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Boots a guest on `kind` (cache=none / --cache never), copies the tree in and out. */
export async function guestCopy(kind: BackendKind, t: TreeShape, workDir: string, log: (m: string) => void): Promise<GuestCopyResult> {
  const { marks, cpu, started } = await runMarkedGuest(kind, {
    cache: 'never', workDir, guestScript: script(t), need: ['prepared', 'copied-in', 'copied-out'], log,
    check: (run) => {
      const size = /BENCH-SIZE (\d+)/.exec(run.output);
      const want = treeBytes(t) / 1024;
      if (!size || Number(size[1]) < want) throw new Error(`guest copied back ${size?.[1]} KiB, expected at least ${want} KiB`);
      const onHost = treeSize(path.join(run.shared, 'tree'));
      if (onHost !== treeBytes(t)) throw new Error(`the tree on the host holds ${onHost} bytes, expected ${treeBytes(t)}`);
    },
  });
  const res: GuestCopyResult = {
    bootToMountMs: marks.get('mounted')! - started,
    prepareMs: marks.get('prepared')! - marks.get('mounted')!,
    copyInMs: marks.get('copied-in')! - marks.get('prepared')!,
    copyOutMs: marks.get('copied-out')! - marks.get('copied-in')!,
    copyInCpu: cpuBetween(cpu.get('prepared')!, cpu.get('copied-in')!),
    copyOutCpu: cpuBetween(cpu.get('copied-in')!, cpu.get('copied-out')!),
  };
  log(`  guest on ${kind}: boot ${Math.round(res.bootToMountMs)} ms, prepare ${Math.round(res.prepareMs)} ms, copy in ${Math.round(res.copyInMs)} ms ` +
    `(${describeCpu(res.copyInCpu)}), copy out ${Math.round(res.copyOutMs)} ms (${describeCpu(res.copyOutCpu)})`);
  return res;
}
