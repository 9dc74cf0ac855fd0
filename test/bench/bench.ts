// `npm run bench [-- OPTIONS]`: our backend and Debian's C virtiofsd measured side by side, in
// the same run, alternating, with repeats; medians and the ratio ours/peer. Speed claims come
// from here, never from timed tests. See test/bench/README.md.
//
//   --json FILE        also write the rows as JSON (one object per row)
//   --svg FILE         where the chart goes (default docs/bench.svg in a checkout; chart.ts)
//   --only G,...       groups: micro, journal, disk, recovery, recovery-systemd, recovery-state,
//                      guest (default: all; recovery-systemd needs root and systemd-nspawn;
//                      disk: the READ/WRITE rows on a disk filesystem, $VFSK_BENCH_DISK_TMP or
//                      /var/tmp, skipped if that is tmpfs)
//   --repeats N        sessions per backend for micro/journal/guest (default 3)
//   --quick            a smaller run (< 5 minutes)
//   --kills N          SIGKILLs for the recovery rows (default 100; quick 20)
//   --kills-state N    SIGKILLs for the large-session recovery rows (default: --kills; quick 10)
//   --state-inodes N   known inodes for those rows (default 100,000; quick 20,000)
//   --state-open N     open files for those rows (default 1% of --state-inodes)
//                      The large-session rows run twice: with inode file handles (no fd per
//                      inode: the full size) and with an fd per inode (capped by RLIMIT_NOFILE).
//   --seconds S        length of each time-bounded micro run (default 3; quick 0.5)
//   --rows K,...       only these micro metrics (micro.ts MetricKey: readdirplus_first,
//                      create_release...; default all): a profile of one row, a quick check
//   --profile DIR      CPU-profile our backend's processes (micro sessions: DIR/<variant>-<repeat>/;
//                      dev loop: DIR/devloop-<n>/, windows.json per step)
//   --no-snapshot      run the checkout's build directly (default: a private copy, see below)
//   --help             this text (an unknown option is refused, not ignored)
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { REPO_ROOT } from '../frontend/backend';
import { measureRecovery } from './recovery';
import { measureSystemdRecovery, systemdRecoveryUnavailable } from './recovery_systemd';
import type { InodeFileHandles } from '../../shared/config';
import { IDLE_REDUCE_MS } from '../../shared/memory';
import { makeDataFixture, makeFixture, metricDefs, runMicro, warmUp, type MetricDef, type MetricKey, type MicroParams, type Sample } from './micro';
import { guestCopy, describeTree, treeBytes, type GuestCopyResult, type GuestCpu, type TreeShape } from './guest_copy';
import type { BackendKind } from '../e2e/backends';
import { DEV_STEPS, describeDevTree, guestDevLoop, type DevLoopResult, type DevTreeShape } from './guest_devloop';
import { installSignalCleanup, makeSnapshot, onCleanup, openBenchSession, profiledBackend, runAllCleanups, tempDir, NO_JOURNAL_ENV, type Variant } from './procs';
import { median, quantile, sig, fmtNum } from './stats';
import { renderChart, type ChartRow } from './chart';

/** A chart row (name, unit, ours, peer, ratio, direction, per-run values) and the rest. */
export interface Row extends ChartRow {
  note?: string;
  peerRuns?: number[];
  /** Backend CPU per operation (median over repeats), µs: all processes of the backend. */
  oursCpuUsPerOp?: number;
  peerCpuUsPerOp?: number;
  extra?: Record<string, unknown>;
}

// --- arguments -------------------------------------------------------------------------------

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const flag = (name: string): boolean => process.argv.includes(`--${name}`);
function num(name: string, dflt: number): number {
  const v = arg(name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} wants a positive number, got ${v}`);
  return n;
}

const GROUPS = ['micro', 'journal', 'disk', 'recovery', 'recovery-systemd', 'recovery-state', 'guest'] as const;
type Group = (typeof GROUPS)[number];

interface Config {
  quick: boolean;
  repeats: number;
  micro: MicroParams;
  kills: number;
  killsState: number;
  stateInodes: number;
  stateOpen: number;
  tree: TreeShape;
  devTree: DevTreeShape;
  guestRepeats: number;
  groups: Set<Group>;
  profileDir: string | null;
  rows: Set<MetricKey> | null;
}

function config(): Config {
  const quick = flag('quick');
  const only = arg('only')?.split(',').map((s) => s.trim()).filter(Boolean);
  for (const g of only ?? []) if (!(GROUPS as readonly string[]).includes(g)) throw new Error(`--only: unknown group ${g} (known: ${GROUPS.join(', ')})`);
  const kills = num('kills', quick ? 20 : 100);
  const repeats = num('repeats', 3);
  return {
    quick,
    repeats,
    micro: {
      seconds: num('seconds', quick ? 0.5 : 3),
      creates: quick ? 2000 : 5000,
      smallFiles: quick ? 1000 : 2000,
      bigMiB: quick ? 64 : 256,
      listings: quick ? 2 : 3,
    },
    kills,
    killsState: num('kills-state', quick ? 10 : kills),
    stateInodes: num('state-inodes', quick ? 20_000 : 100_000),
    stateOpen: num('state-open', Math.max(1, Math.round(num('state-inodes', quick ? 20_000 : 100_000) / 100))),
    tree: quick ? { big: 14, small: 128 } : { big: 56, small: 512 },
    // The issue's loop untarred about 1,900 files.
    devTree: quick ? { dirs: 40, filesPerDir: 12 } : { dirs: 160, filesPerDir: 12 },
    guestRepeats: repeats,
    groups: new Set<Group>((only as Group[] | undefined) ?? GROUPS),
    profileDir: arg('profile') ? path.resolve(arg('profile')!) : null,
    rows: arg('rows') ? new Set(arg('rows')!.split(',').map((r) => r.trim()).filter(Boolean) as MetricKey[]) : null,
  };
}

const log = (m: string): void => { process.stderr.write(`${m}\n`); };

// --- phases ------------------------------------------------------------------------------------

const r1 = (x: number): number => Math.round(x * 10) / 10;

function ratioOf(ours: number, peer: number | null): number | null {
  return peer === null || peer === 0 || !Number.isFinite(peer) ? null : sig(ours / peer, 3);
}

/**
 * RSS by kind after the micro runs (current values: VmHWM has no split), summed over the processes
 * of each side: what is private to the backend, what is file-backed (for ours mostly the node
 * binary: the same page-cache pages in keeper, worker and standby, so the sum overstates what
 * they cost together), and what is shared memory (the guest memory the frontend shares with the
 * backend, which the VM pays for anyway; ours also maps its tmpfs state journal).
 */
function rssKindRows(o: Sample[], p: Sample[]): Row[] {
  const kinds: Array<[string, string, string]> = [
    ['anon', 'private (RssAnon)', 'heap, stacks, malloc: memory only this backend uses'],
    ['file', 'file-backed (RssFile)', 'executable and libraries in the page cache; ours: the node binary, counted once per process although keeper, worker and standby share the same pages'],
    ['shmem', 'shared memory (RssShmem)', 'guest memory mapped from the frontend (shared with the VM, not the backend\'s cost); ours also maps its tmpfs state journal'],
  ];
  const sumKind = (x: Sample, kind: string, roles?: string[]): number => {
    const parts = (x.extra?.partsMiB ?? {}) as Record<string, number>;
    return Object.entries(parts).filter(([k]) => k.endsWith(`:${kind}`) && (!roles || roles.includes(k.split(':')[0]!))).reduce((a, [, v]) => a + v, 0);
  };
  const out: Row[] = [];
  const mk = (name: string, ours: number[], peer: number[], note: string): void => {
    if (ours.length === 0) return;
    const om = sig(median(ours), 4);
    const pm = peer.length ? sig(median(peer), 4) : null;
    out.push({ name, unit: 'MiB', ours: om, peer: pm, ratio: ratioOf(om, pm), higherIsBetter: false,
      oursRuns: ours.map((x) => sig(x, 4)), peerRuns: peer.map((x) => sig(x, 4)), note });
  };
  for (const [kind, label, note] of kinds) {
    mk(`RSS after the micro runs, ${label}, all processes`, o.map((x) => sumKind(x, kind)), p.map((x) => sumKind(x, kind)), note);
  }
  const peak = (x: Sample, roles: string[]): number => {
    const parts = (x.extra?.partsMiB ?? {}) as Record<string, number>;
    return roles.reduce((a, r) => a + (parts[r] ?? 0), 0);
  };
  // Private memory again once the backend has been idle (steadyPrivateKb), with ours split by
  // process: the issue's target (at most 32 MiB per export) is on this row.
  const steadyParts = (x: Sample): Record<string, number> => (x.extra?.steadyPrivateMiB ?? {}) as Record<string, number>;
  const steadySum = (x: Sample): number => Object.values(steadyParts(x)).reduce((a, b) => a + b, 0);
  // The unshare(1) launchers (one per worker, pids vary) are summed into one role.
  const byRole = new Map<string, number[]>();
  for (const x of o) {
    const roles = new Map<string, number>();
    for (const [k, v] of Object.entries(steadyParts(x))) {
      const role = k.startsWith('launcher-') ? 'launchers' : k;
      roles.set(role, (roles.get(role) ?? 0) + v);
    }
    for (const [role, v] of roles) byRole.set(role, [...(byRole.get(role) ?? []), v]);
  }
  const split = [...byRole].map(([role, xs]) => `${role} ${sig(median(xs), 3)}`).join(', ');
  mk('private memory at steady state (RssAnon after the micro runs and >= 2 idle intervals), all processes',
    o.map(steadySum).filter((x) => x > 0), p.map(steadySum).filter((x) => x > 0),
    `ours = keeper + worker + standby + the workers' unshare(1) launchers, median MiB each: ${split}; memory is given back after ${IDLE_REDUCE_MS / 1000} s without activity (docs/ARCHITECTURE.md, "Memory")`);
  // Guest memory stays mapped (and resident once touched), so the current RssShmem is a fair
  // estimate of the shared memory inside the peak.
  mk('peak RSS minus shared memory (VmHWM - RssShmem), ours = keeper + worker',
    o.map((x) => peak(x, ['keeper', 'worker']) - sumKind(x, 'shmem', ['keeper', 'worker'])),
    p.map((x) => peak(x, ['virtiofsd']) - sumKind(x, 'shmem', ['virtiofsd'])),
    'what the backend holds beyond the guest memory it shares with the VM (and the tmpfs journal)');
  return out;
}

async function microPhase(cfg: Config, rows: Row[]): Promise<void> {
  const root = tempDir('vfsk-bench-');
  const fx = makeFixture(path.join(root, 'shared'), cfg.micro.bigMiB, log);
  const variants: Variant[] = [];
  if (cfg.groups.has('micro')) variants.push('ours', 'c-virtiofsd');
  // The journaling comparison runs in its own fresh sessions, both doing exactly the same thing
  // (in a full session the journal already holds the earlier rows' records and compacts at
  // other moments, which moves these rates by 20-30% on its own).
  if (cfg.groups.has('journal')) variants.push('ours-journal', 'ours-nojournal');
  const journalKeys: MetricKey[] = ['lookup_cold', 'create_release', 'unlink', 'small_files_qd1'];
  // The data rows again with the shared directory on a disk filesystem, as most exports are:
  // there a READ or WRITE can block (ext4 has no RWF_NOWAIT buffered writes), which tmpfs
  // never shows. Only the data rows: creating the metadata rows' 20,000 files on this VM's
  // disk costs 400-900 µs each and varies run to run.
  const diskKeys: MetricKey[] = ['seq_read', 'seq_write', 'rand_read_qd1', 'rand_read_qd32'];
  const disk = cfg.groups.has('disk') ? diskDir() : null;
  const fxDisk = disk === null ? null : makeDataFixture(path.join(disk.dir, 'shared'), cfg.micro.bigMiB, log);
  if (fxDisk !== null) variants.push('ours-disk', 'c-virtiofsd-disk');
  const results = new Map<Variant, Array<Map<MetricKey, Sample>>>();
  /** Per ours-nojournal session: did the worker log that journaling is off? */
  const noJournalHonoured: boolean[] = [];
  /** 1-minute load average when each session started (other users of the machine show up here). */
  const load1 = new Map<Variant, number[]>();
  for (let rep = 0; rep < cfg.repeats; rep++) {
    // Alternate: rotate the order every repeat so no backend always runs first (or last).
    const order = variants.map((_, i) => variants[(i + rep) % variants.length]!);
    if (rep % 2 === 1) {
      // Rotation keeps the journal pair's relative order; swap it every other repeat.
      const a = order.indexOf('ours-journal');
      const b = order.indexOf('ours-nojournal');
      if (a >= 0 && b >= 0) [order[a], order[b]] = [order[b]!, order[a]!];
    }
    for (const v of order) {
      const t0 = Date.now();
      const { env, extraArgs }: { env: NodeJS.ProcessEnv; extraArgs: string[] } =
        cfg.profileDir && v !== 'c-virtiofsd' ? profiledBackend(path.join(cfg.profileDir, `${v}-${rep}`)) : { env: {}, extraArgs: [] };
      if (!load1.has(v)) load1.set(v, []);
      load1.get(v)!.push(Math.round(os.loadavg()[0]! * 100) / 100);
      const onDisk = v === 'ours-disk' || v === 'c-virtiofsd-disk';
      const vfx = onDisk ? fxDisk! : fx;
      const s = await openBenchSession(v, { sharedDir: vfx.shared, logDir: path.join(root, 'logs', `${v}-${rep}`), env, extraArgs });
      try {
        if (!onDisk) await warmUp(s, fx);
        if (v === 'ours-nojournal') noJournalHonoured.push(s.backend.log().includes(`${NO_JOURNAL_ENV}=1`));
        const only = v === 'ours-journal' || v === 'ours-nojournal' ? new Set(journalKeys)
          : onDisk ? new Set(diskKeys.filter((k) => cfg.rows?.has(k) ?? true)) : cfg.rows ?? undefined;
        const res = await runMicro(s, vfx, cfg.micro, `${v}-${rep}`, only, log);
        if (!results.has(v)) results.set(v, []);
        results.get(v)!.push(res);
        if (env.VFSK_BENCH_PROF_DIR !== undefined) {
          // Each row's time window, to split the profiles by row (prof_summary --windows).
          const windows = Object.fromEntries([...res].map(([k, x]) => [k, x.extra?.windowUs ?? null]));
          fs.mkdirSync(env.VFSK_BENCH_PROF_DIR, { recursive: true });
          fs.writeFileSync(path.join(env.VFSK_BENCH_PROF_DIR, 'windows.json'), JSON.stringify(windows));
        }
        const brief = [...res].filter(([k]) => ['getattr', 'lookup_cold', 'create_release', 'seq_read', 'rand_read_qd1'].includes(k))
          .map(([k, x]) => `${k} ${fmtNum(x.value)}`).join(', ');
        log(`repeat ${rep + 1}/${cfg.repeats} ${v}: ${brief} (${((Date.now() - t0) / 1000).toFixed(1)} s; load ${load1.get(v)!.at(-1)})`);
      } finally {
        await s.close();
      }
    }
  }
  const runsOf = (v: Variant, k: MetricKey): Sample[] => (results.get(v) ?? []).map((m) => m.get(k)).filter((x): x is Sample => x !== undefined);
  const cpuMedian = (xs: Sample[]): number | undefined => {
    const c = xs.map((x) => x.cpuUsPerOp).filter((x): x is number => x !== undefined);
    return c.length ? sig(median(c), 3) : undefined;
  };
  if (cfg.groups.has('micro')) {
    for (const d of metricDefs(cfg.micro)) {
      const o = runsOf('ours', d.key);
      const p = runsOf('c-virtiofsd', d.key);
      if (o.length === 0) continue;
      const ours = sig(median(o.map((x) => x.value)), 4);
      const peer = p.length ? sig(median(p.map((x) => x.value)), 4) : null;
      const row: Row = {
        name: d.name, unit: d.unit, ours, peer, ratio: ratioOf(ours, peer), higherIsBetter: d.higherIsBetter,
        oursRuns: o.map((x) => sig(x.value, 4)), peerRuns: p.map((x) => sig(x.value, 4)),
      };
      const oc = cpuMedian(o);
      const pc = cpuMedian(p);
      if (oc !== undefined) row.oursCpuUsPerOp = oc;
      if (pc !== undefined) row.peerCpuUsPerOp = pc;
      const extras: Record<string, unknown> = { load1: { ours: load1.get('ours') ?? [], peer: load1.get('c-virtiofsd') ?? [] } };
      if (o.some((x) => x.extra)) extras.ours = o.map((x) => x.extra ?? null);
      if (p.some((x) => x.extra)) extras.peer = p.map((x) => x.extra ?? null);
      const oc2 = o.map((x) => x.clientCpuUsPerOp).filter((x): x is number => x !== undefined);
      if (oc2.length) extras.clientCpuUsPerOp = { ours: sig(median(oc2), 3), peer: sig(median(p.map((x) => x.clientCpuUsPerOp ?? NaN)), 3) };
      row.extra = extras;
      if (d.key === 'rss') {
        row.note = 'ours = keeper + worker + warm standby (VmHWM of each, summed); C virtiofsd = its one process (sandbox=chroot)';
      }
      rows.push(row);
      if (d.key === 'rss') {
        // The same without the standby (what a --no-standby deployment would cost).
        const noStandby = o.map((x) => {
          const parts = (x.extra?.partsMiB ?? {}) as Record<string, number>;
          return (parts.keeper ?? 0) + (parts.worker ?? 0);
        });
        const v = sig(median(noStandby), 4);
        rows.push({
          name: 'peak RSS, ours without the standby (keeper + worker)', unit: 'MiB', ours: v, peer, ratio: ratioOf(v, peer),
          higherIsBetter: false, oursRuns: noStandby.map((x) => sig(x, 4)), peerRuns: row.peerRuns ?? [],
        });
        rows.push(...rssKindRows(o, p));
      }
    }
  }
  /** A row of metric `d` from two sets of sessions of ours (or ours against the peer on a
   * disk), with their median CPU per op. */
  const pairRow = (d: MetricDef, name: string, o: Sample[], p: Sample[], note: string): Row | null => {
    if (o.length === 0 || p.length === 0) return null;
    const ours = sig(median(o.map((x) => x.value)), 4);
    const peer = sig(median(p.map((x) => x.value)), 4);
    const row: Row = {
      name, unit: d.unit, ours, peer, ratio: ratioOf(ours, peer), higherIsBetter: d.higherIsBetter,
      oursRuns: o.map((x) => sig(x.value, 4)), peerRuns: p.map((x) => sig(x.value, 4)), note,
    };
    const oc = cpuMedian(o);
    const pc = cpuMedian(p);
    if (oc !== undefined) row.oursCpuUsPerOp = oc;
    if (pc !== undefined) row.peerCpuUsPerOp = pc;
    return row;
  };
  if (cfg.groups.has('journal')) {
    const honoured = noJournalHonoured.length > 0 && noJournalHonoured.every(Boolean)
      ? 'the worker logged that request and session journaling was off in every such session'
      : `the worker did NOT log that journaling was off (${noJournalHonoured.filter(Boolean).length}/${noJournalHonoured.length} sessions): the switch is not honoured, so the ratio only shows noise`;
    for (const d of metricDefs(cfg.micro).filter((x) => journalKeys.includes(x.key))) {
      const row = pairRow(d, `journaling: ${d.name}, crash safety on (ours) vs ${NO_JOURNAL_ENV}=1 (peer), fresh sessions`,
        runsOf('ours-journal', d.key), runsOf('ours-nojournal', d.key), `peer column = our backend with ${NO_JOURNAL_ENV}=1 in its environment; ${honoured}`);
      if (row !== null) rows.push(row);
    }
  }
  if (disk !== null) {
    for (const d of metricDefs(cfg.micro).filter((x) => diskKeys.includes(x.key))) {
      const row = pairRow(d, `on a disk filesystem (${disk.type}): ${d.name}`, runsOf('ours-disk', d.key), runsOf('c-virtiofsd-disk', d.key),
        `shared directory in ${disk.dir}; READs come from the page cache (the file was written just before); a WRITE row of more than the kernel's dirty-page limit (the full run's 256 MiB here) also meets writeback throttling, i.e. the disk`);
      if (row !== null) rows.push(row);
    }
  }
}

/** statfs f_type of the filesystems the disk group refuses (memory, not a disk). */
const MEMORY_FS: ReadonlyMap<number, string> = new Map([[0x01021994, 'tmpfs'], [0x858458f6, 'ramfs']]);
const DISK_FS_NAMES: ReadonlyMap<number, string> = new Map([[0xef53, 'ext4'], [0x58465342, 'xfs'], [0x9123683e, 'btrfs'], [0x794c7630, 'overlayfs']]);

/** The disk group's temp dir ($VFSK_BENCH_DISK_TMP, else /var/tmp), or null (logged) when it
 * is memory-backed or not writable. */
function diskDir(): { dir: string; type: string } | null {
  const base = process.env.VFSK_BENCH_DISK_TMP ?? '/var/tmp';
  try {
    const type = fs.statfsSync(base).type;
    if (MEMORY_FS.has(type)) {
      log(`disk group skipped: ${base} is ${MEMORY_FS.get(type)} (set VFSK_BENCH_DISK_TMP to a dir on a disk filesystem)`);
      return null;
    }
    const dir = fs.mkdtempSync(path.join(base, 'vfsk-bench-disk-'));
    onCleanup(`remove ${dir}`, async () => fs.rmSync(dir, { recursive: true, force: true }));
    return { dir, type: DISK_FS_NAMES.get(type) ?? `f_type 0x${type.toString(16)}` };
  } catch (e) {
    log(`disk group skipped: ${base}: ${(e as Error).message}`);
    return null;
  }
}

/**
 * How many fds a backend process may hold: every known inode is an O_PATH fd in the worker and
 * again in the keeper. The backend raises RLIMIT_NOFILE itself; where the hard limit cannot be
 * raised (a container without CAP_SYS_RESOURCE in its user namespace), the current hard limit
 * caps the session size. Returns null when the limit can be raised to `want`.
 */
function noFileCap(want: number): number | null {
  const probe = spawnSync('prlimit', [`--nofile=${want}:${want}`, 'true'], { stdio: 'ignore' });
  if (probe.status === 0) return null;
  const m = /^Max open files\s+\S+\s+(\d+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
  return m ? Number(m[1]) : null;
}

async function recoveryRun(rows: Row[], kills: number, inodes: number, open: number, note: string | null,
  inodeFileHandles: InodeFileHandles = 'never'): Promise<boolean> {
  const how = inodeFileHandles === 'never' ? 'an fd each' : 'file handles';
  const label = inodes > 0 ? `, ${inodes.toLocaleString('en-US')} known inodes (${how}) + ${open.toLocaleString('en-US')} open files` : '';
  const n = `(${kills} kills${label})`;
  const none = { peer: null, ratio: null, higherIsBetter: false } as const;
  log(`recovery: ${kills} kills${label}`);
  const t0 = Date.now();
  let r;
  try {
    r = await measureRecovery(kills, inodes > 0 ? { knownInodes: inodes, openFiles: open, inodeFileHandles, log } : { inodeFileHandles, log });
  } catch (e) {
    const msg = (e as Error).message.split('\n')[0]!;
    log(`recovery${label}: FAILED: ${msg}`);
    rows.push({ name: `recovery: SIGKILL to first completed request ${n}`, unit: 'ms', ours: NaN, ...none, note: `FAILED: ${msg}${note ? `. ${note}` : ''}`, extra: { failed: true } });
    return false;
  }
  log(`recovery${label}: done in ${((Date.now() - t0) / 1000).toFixed(1)} s (session: ${r.inodes} inodes, ${r.openFiles} open files, ${r.keeperFds} fds in the keeper; setup ${(r.setupMs / 1000).toFixed(1)} s)`);
  const runs = (xs: number[]): number[] => xs.map(r1);
  rows.push(
    { name: `recovery: SIGKILL to first completed request, keeper clock, p50 ${n}`, unit: 'ms', ours: r1(quantile(r.keeperMs, 0.5)), ...none, note: `C virtiofsd cannot recover: the guest hangs. Keeper clock: from the keeper reaping the worker to the successor's first completed request${note ? `. ${note}` : ''}`, oursRuns: runs(r.keeperMs), extra: { inodes: r.inodes, openFiles: r.openFiles, keeperFds: r.keeperFds, inodeFileHandles } },
    { name: `recovery: SIGKILL to first completed request, keeper clock, p99 ${n}`, unit: 'ms', ours: r1(quantile(r.keeperMs, 0.99)), ...none },
    { name: `recovery: SIGKILL to first completed request, keeper clock, max ${n}`, unit: 'ms', ours: r1(Math.max(...r.keeperMs)), ...none },
    { name: `recovery: SIGKILL to first completed request, client clock, p50 ${n}`, unit: 'ms', ours: r1(quantile(r.clientKillMs, 0.5)), ...none, note: 'from just before kill() to the completion of the first GETATTR submitted after it', oursRuns: runs(r.clientKillMs) },
    { name: `recovery: SIGKILL to first completed request, client clock, p99 ${n}`, unit: 'ms', ours: r1(quantile(r.clientKillMs, 0.99)), ...none },
    { name: `recovery: longest reply gap seen by the client, p50 ${n}`, unit: 'ms', ours: r1(quantile(r.clientGapMs, 0.5)), ...none, oursRuns: runs(r.clientGapMs) },
    { name: `recovery: longest reply gap seen by the client, p99 ${n}`, unit: 'ms', ours: r1(quantile(r.clientGapMs, 0.99)), ...none },
  );
  return true;
}

/** The same rows under systemd with the warm standby (the three units in an nspawn machine). */
async function systemdRecoveryRun(rows: Row[], kills: number): Promise<void> {
  const n = `(${kills} kills, systemd units with the warm standby)`;
  const none = { peer: null, ratio: null, higherIsBetter: false } as const;
  const why = systemdRecoveryUnavailable();
  if (why !== null) {
    log(`recovery under systemd: not run: ${why}`);
    rows.push({ name: `recovery: SIGKILL to first completed request ${n}`, unit: 'ms', ours: NaN, ...none, note: `not run: ${why}` });
    return;
  }
  log(`recovery under systemd: ${kills} kills`);
  const t0 = Date.now();
  let r;
  try {
    r = await measureSystemdRecovery(kills, REPO_ROOT, log);
  } catch (e) {
    const msg = (e as Error).message.split('\n')[0]!;
    log(`recovery under systemd: FAILED: ${msg}`);
    rows.push({ name: `recovery: SIGKILL to first completed request ${n}`, unit: 'ms', ours: NaN, ...none, note: `FAILED: ${msg}`, extra: { failed: true } });
    return;
  }
  log(`recovery under systemd: done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const runs = (xs: number[]): number[] => xs.map(r1);
  rows.push(
    { name: `recovery: SIGKILL to first completed request, keeper clock, p50 ${n}`, unit: 'ms', ours: r1(quantile(r.keeperMs, 0.5)), ...none, note: 'virtiofs-worker@ + virtiofs-standby@ in a systemd-nspawn machine: the waiting worker takes over when the serving one\'s keeper.sock connection closes. Keeper clock: from that EOF to the successor\'s first completed request', oursRuns: runs(r.keeperMs) },
    { name: `recovery: SIGKILL to first completed request, keeper clock, p99 ${n}`, unit: 'ms', ours: r1(quantile(r.keeperMs, 0.99)), ...none },
    { name: `recovery: SIGKILL to first completed request, keeper clock, max ${n}`, unit: 'ms', ours: r1(Math.max(...r.keeperMs)), ...none },
    { name: `recovery: SIGKILL to first completed request, client clock, p50 ${n}`, unit: 'ms', ours: r1(quantile(r.clientKillMs, 0.5)), ...none, note: 'from just before kill() to the completion of the first GETATTR submitted after it', oursRuns: runs(r.clientKillMs) },
    { name: `recovery: SIGKILL to first completed request, client clock, p99 ${n}`, unit: 'ms', ours: r1(quantile(r.clientKillMs, 0.99)), ...none },
    { name: `recovery: longest reply gap seen by the client, p99 ${n}`, unit: 'ms', ours: r1(quantile(r.clientGapMs, 0.99)), ...none, oursRuns: runs(r.clientGapMs) },
  );
}

/** Known inodes (with 10% of them open) used when the requested large session fails to recover. */
const FALLBACK_INODES = 10_000;

async function recoveryPhase(cfg: Config, rows: Row[], withState: boolean): Promise<void> {
  if (!withState) {
    await recoveryRun(rows, cfg.kills, 0, 0, null);
    return;
  }
  // Inodes named by file handles hold no fd (in the keeper or, beyond a bounded cache, in the
  // worker): the requested size runs whatever RLIMIT_NOFILE is.
  await recoveryRun(rows, cfg.killsState, cfg.stateInodes, cfg.stateOpen, null, 'prefer');
  // Beside it, today's figure with an fd per inode, as large as the fd limit allows.
  let inodes = cfg.stateInodes;
  let capNote: string | null = null;
  const need = inodes + cfg.stateOpen + 1000;
  const hard = noFileCap(need);
  if (hard !== null && hard < need) {
    const n = Math.max(1000, hard - cfg.stateOpen - 1000);
    capNote = `${inodes.toLocaleString('en-US')} known inodes requested; capped at ${n.toLocaleString('en-US')}: RLIMIT_NOFILE's hard limit here is ${hard} and cannot be raised (prlimit --nofile=${need} fails even as root), and each inode is an fd in the worker and again in the keeper (the C virtiofsd hits EMFILE at the same point)`;
    log(`recovery: ${capNote}`);
    inodes = n;
  }
  const ok = await recoveryRun(rows, cfg.killsState, inodes, cfg.stateOpen, capNote);
  if (!ok && inodes > FALLBACK_INODES) {
    await recoveryRun(rows, cfg.killsState, FALLBACK_INODES, FALLBACK_INODES / 10,
      `fallback size after the requested one failed (${inodes.toLocaleString('en-US')} inodes)`);
  }
}

/** Runs `run` for both backends `repeats` times, alternating which goes first. */
async function alternating<R>(repeats: number, run: (k: BackendKind) => Promise<R>): Promise<Map<BackendKind, R[]>> {
  const kinds = ['ours', 'c-virtiofsd'] as const;
  const res = new Map<BackendKind, R[]>();
  for (let rep = 0; rep < repeats; rep++) {
    const order = rep % 2 === 0 ? kinds : [...kinds].reverse();
    for (const k of order) {
      const r = await run(k);
      if (!res.has(k)) res.set(k, []);
      res.get(k)!.push(r);
    }
  }
  return res;
}

async function guestPhase(cfg: Config, rows: Row[]): Promise<void> {
  const work = tempDir('vfsk-bench-g-');
  log(`guest: ${describeTree(cfg.tree)}, ${cfg.guestRepeats} repeat(s) per backend`);
  const res = await alternating(cfg.guestRepeats, (k) => guestCopy(k, cfg.tree, work, log));
  const mib = treeBytes(cfg.tree) / 1048576;
  const mk = (what: string, f: (x: GuestCopyResult) => number, cpuOf: ((x: GuestCopyResult) => GuestCpu) | null): Row => {
    const o = (res.get('ours') ?? []).map(f).map((x) => sig(x / 1000, 4));
    const p = (res.get('c-virtiofsd') ?? []).map(f).map((x) => sig(x / 1000, 4));
    const ours = sig(median(o), 4);
    const peer = p.length ? sig(median(p), 4) : null;
    return { name: `guest (QEMU TCG, cache=none): ${what}, ${mib} MiB tree (${describeTree(cfg.tree)})`, unit: 's', ours, peer, ratio: ratioOf(ours, peer), higherIsBetter: false, oursRuns: o, peerRuns: p,
      ...(cpuOf === null ? {} : { note: guestCpuNote(res, cpuOf) }) };
  };
  rows.push(
    mk('cp -r tmpfs → mount', (x) => x.copyInMs, (x) => x.copyInCpu),
    mk('cp -r mount → tmpfs', (x) => x.copyOutMs, (x) => x.copyOutCpu),
    mk('both copies', (x) => x.copyInMs + x.copyOutMs, null),
  );
  await devLoopPhase(cfg, rows, work);
}

/** Medians of the CPU the backend and QEMU used in a guest row, and how busy the machine was
 * (2 CPUs: QEMU's TCG thread holds one while the guest runs, so a busy machine means the
 * backend's CPU competes with the guest's). */
function guestCpuNote<T>(res: Map<BackendKind, T[]>, cpuOf: (x: T) => GuestCpu): string {
  const part = (k: BackendKind, label: string): string => {
    const c = (res.get(k) ?? []).map(cpuOf);
    if (c.length === 0) return `${label}: -`;
    return `${label}: backend ${sig(median(c.map((x) => x.backendMs / 1000)), 3)} s CPU, QEMU ${sig(median(c.map((x) => x.qemuMs / 1000)), 3)} s, ` +
      `machine ${Math.round(median(c.map((x) => x.machineBusy)) * 100)}% busy`;
  };
  return `median CPU: ${part('ours', 'ours')}; ${part('c-virtiofsd', 'C virtiofsd')}`;
}

/** The developer's loop (guest_devloop.ts), both backends in their default cache mode. */
async function devLoopPhase(cfg: Config, rows: Row[], work: string): Promise<void> {
  log(`guest dev loop: ${describeDevTree(cfg.devTree)}, ${cfg.guestRepeats} repeat(s) per backend`);
  let run = 0;
  const res: Map<BackendKind, DevLoopResult[]> = await alternating(cfg.guestRepeats, (k) =>
    guestDevLoop(k, cfg.devTree, work, log, cfg.profileDir === null ? undefined : path.join(cfg.profileDir, `devloop-${run++}`)));
  const o = (res.get('ours') ?? []).map((x) => sig(x.totalMs / 1000, 4));
  const p = (res.get('c-virtiofsd') ?? []).map((x) => sig(x.totalMs / 1000, 4));
  const ours = sig(median(o), 4);
  const peer = p.length ? sig(median(p), 4) : null;
  const steps = (k: BackendKind): string => DEV_STEPS.map((s) => `${s} ${sig(median((res.get(k) ?? []).map((x) => x.stepsMs[s] / 1000)), 3)}`).join(', ');
  rows.push({
    name: `guest (QEMU TCG, default cache: auto): developer loop (tar x, find, stat, grep -r, cp -a, rm -rf), ${describeDevTree(cfg.devTree)}`,
    unit: 's', ours, peer, ratio: ratioOf(ours, peer), higherIsBetter: false, oursRuns: o, peerRuns: p,
    note: `median s per step: ours ${steps('ours')}; C virtiofsd ${steps('c-virtiofsd')}; ${guestCpuNote(res, (x) => x.cpu)}`,
  });
}

// --- output --------------------------------------------------------------------------------------

function verdict(r: Row): string {
  if (r.ratio === null) return '';
  const better = r.higherIsBetter ? r.ratio >= 1 : r.ratio <= 1;
  const f = r.higherIsBetter ? (better ? r.ratio : 1 / r.ratio) : (better ? 1 / r.ratio : r.ratio);
  if (Math.abs(f - 1) < 0.02) return 'same';
  return `ours ${f.toFixed(2)}x ${better ? 'better' : 'worse'}`;
}

function printRows(rows: Row[]): void {
  const w = Math.min(110, Math.max(...rows.map((r) => r.name.length)));
  const out: string[] = [];
  out.push(`${'row'.padEnd(w)}  ${'unit'.padEnd(7)} ${'ours'.padStart(9)} ${'peer'.padStart(9)}  ${'ours/peer'.padStart(9)}  verdict`);
  for (const r of rows) {
    out.push(`${r.name.padEnd(w)}  ${r.unit.padEnd(7)} ${fmtNum(r.ours).padStart(9)} ${fmtNum(r.peer).padStart(9)}  ${(r.ratio === null ? '' : r.ratio.toFixed(3)).padStart(9)}  ${verdict(r)}`);
    const bits: string[] = [];
    if (r.oursRuns && r.oursRuns.length <= 12) bits.push(`ours runs [${r.oursRuns.map(fmtNum).join(', ')}]`);
    else if (r.oursRuns) bits.push(`ours: ${r.oursRuns.length} samples (in the JSON)`);
    if (r.peerRuns && r.peerRuns.length) bits.push(`peer runs [${r.peerRuns.map(fmtNum).join(', ')}]`);
    if (r.oursCpuUsPerOp !== undefined || r.peerCpuUsPerOp !== undefined) bits.push(`backend CPU/op ours ${fmtNum(r.oursCpuUsPerOp ?? null)} µs, peer ${fmtNum(r.peerCpuUsPerOp ?? null)} µs`);
    if (bits.length) out.push(`${''.padEnd(4)}${bits.join('; ')}`);
    if (r.note) out.push(`${''.padEnd(4)}note: ${r.note}`);
  }
  process.stdout.write(out.join('\n') + '\n');
}

// --- main ----------------------------------------------------------------------------------------

async function runInSnapshot(): Promise<number> {
  const snap = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-bench-snap-'));
  try {
    makeSnapshot(REPO_ROOT, snap);
    let rev = 'unknown';
    try {
      rev = execFileSync('git', ['-C', REPO_ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
      const dirty = execFileSync('git', ['-C', REPO_ROOT, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim();
      if (dirty) rev += ` + ${dirty.split('\n').length} modified files`;
    } catch { /* not a git checkout */ }
    const child = spawn(process.execPath, [path.join(snap, 'dist', 'test', 'bench', 'bench.js'), ...process.argv.slice(2)], {
      stdio: 'inherit', env: { ...process.env, VFSK_BENCH_SNAPSHOT: snap, VFSK_BENCH_REV: rev },
    });
    const fwd = (sig: NodeJS.Signals): void => { try { process.kill(child.pid!, sig); } catch { /* gone */ } };
    const handlers = (['SIGINT', 'SIGTERM', 'SIGHUP'] as const).map((s) => { const h = (): void => fwd(s); process.on(s, h); return [s, h] as const; });
    const code = await new Promise<number>((resolve) => child.on('exit', (c, s) => resolve(c ?? (s ? 128 + (os.constants.signals[s] ?? 1) : 1))));
    for (const [s, h] of handlers) process.off(s, h);
    return code;
  } finally {
    fs.rmSync(snap, { recursive: true, force: true });
  }
}

/**
 * Where every temp dir of the run goes (shared dirs, state dirs, sockets): tmpfs by default, so
 * that the rows measure the backends and not this VM's disk (ext4 here costs 400-900 µs of CPU
 * per file creation, 50-100x tmpfs, and varies run to run). $VFSK_BENCH_TMP overrides.
 */
function chooseTmp(): string {
  const want = process.env.VFSK_BENCH_TMP ?? '/dev/shm';
  try {
    fs.accessSync(want, fs.constants.W_OK);
    return want;
  } catch {
    return os.tmpdir();
  }
}

/** The options of the header above (a value follows those not in FLAGS). */
const OPTIONS = ['json', 'svg', 'only', 'repeats', 'kills', 'kills-state', 'state-inodes', 'state-open', 'seconds', 'rows', 'profile'];
const FLAGS = ['quick', 'no-snapshot', 'help'];

/** The usage (this file's header) for --help, and the misspelt option that must not start a
 * full 12-minute run with defaults instead (null: the arguments are fine). */
function checkArguments(argv: string[]): string | null {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const name = a.startsWith('--') ? a.slice(2) : null;
    if (name !== null && OPTIONS.includes(name)) {
      const value = argv[++i];
      if (value === undefined || value.startsWith('--')) return `bench: ${a} wants a value`;
      continue;
    }
    if (name !== null && FLAGS.includes(name)) continue;
    return `bench: unknown argument ${a}`;
  }
  return null;
}

function usage(): string {
  const lines = fs.readFileSync(__filename, 'utf8').split('\n');
  const start = lines.findIndex((l) => l.startsWith('// `npm run bench'));
  const out: string[] = [];
  for (let i = start; i >= 0 && i < lines.length && lines[i]!.startsWith('//'); i++) out.push(lines[i]!.replace(/^\/\/ ?/, ''));
  return out.join('\n');
}

async function main(): Promise<number> {
  if (flag('help')) {
    process.stdout.write(`${usage()}\n`);
    return 0;
  }
  const bad = checkArguments(process.argv.slice(2));
  if (bad !== null) {
    log(`${bad} (npm run bench -- --help)`);
    return 2;
  }
  // os.tmpdir() follows $TMPDIR; our spawned backends inherit it too (harmless).
  process.env.TMPDIR = chooseTmp();
  if (!process.env.VFSK_BENCH_SNAPSHOT && !flag('no-snapshot')) return runInSnapshot();
  installSignalCleanup();
  const cfg = config();
  const rows: Row[] = [];
  let failures = 0;
  const started = Date.now();
  log(`bench: ${cfg.quick ? 'quick' : 'full'}; groups ${[...cfg.groups].join(', ')}; ${cfg.repeats} repeats; build ${process.env.VFSK_BENCH_REV ?? 'checkout (no snapshot)'}; ` +
    `temp dirs in ${os.tmpdir()}; ${os.cpus().length} CPUs, load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  try {
    // A failing phase is reported as a FAILED row; the others still run.
    const phase = async (name: string, fn: () => Promise<void>): Promise<void> => {
      try {
        await fn();
      } catch (e) {
        const msg = (e as Error).message;
        log(`bench: phase ${name} FAILED: ${(e as Error).stack ?? msg}`);
        rows.push({ name: `${name}: FAILED`, unit: '-', ours: NaN, peer: null, ratio: null, higherIsBetter: true, note: msg.split('\n').slice(0, 3).join(' | '), extra: { failed: true } });
        failures++;
      }
    };
    if (cfg.groups.has('micro') || cfg.groups.has('journal') || cfg.groups.has('disk')) await phase('micro', () => microPhase(cfg, rows));
    if (cfg.groups.has('recovery')) await phase('recovery', () => recoveryPhase(cfg, rows, false));
    if (cfg.groups.has('recovery-systemd')) await phase('recovery-systemd', () => systemdRecoveryRun(rows, cfg.kills));
    if (cfg.groups.has('recovery-state')) await phase('recovery-state', () => recoveryPhase(cfg, rows, true));
    if (cfg.groups.has('guest')) await phase('guest', () => guestPhase(cfg, rows));
  } finally {
    await runAllCleanups();
  }
  log(`bench: done in ${((Date.now() - started) / 1000).toFixed(0)} s; load average now ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  printRows(rows);
  const json = arg('json');
  if (json) fs.writeFileSync(path.resolve(json), JSON.stringify(rows, null, 2) + '\n');
  // The picture the README shows (test/bench/chart.ts): docs/bench.svg when run from a checkout.
  const svg = arg('svg') ?? (fs.existsSync('docs') ? path.join('docs', 'bench.svg') : 'bench.svg');
  const title = `npm run bench${cfg.quick ? ' --quick' : ''}, ${new Date().toISOString().slice(0, 10)}, build ${process.env.VFSK_BENCH_REV ?? 'checkout'}, ${os.cpus().length} CPUs`;
  fs.writeFileSync(path.resolve(svg), renderChart(rows, title));
  log(`bench: chart written to ${svg}`);
  const failedRows = rows.filter((r) => r.extra?.failed).length;
  if (failedRows > 0) log(`bench: ${failedRows} row(s) FAILED (see above)`);
  return failures > 0 || failedRows > 0 ? 1 : 0;
}

main().then((code) => process.exit(code), async (e: unknown) => {
  process.stderr.write(`bench failed: ${(e as Error).stack ?? String(e)}\n`);
  await runAllCleanups();
  process.exit(1);
});
