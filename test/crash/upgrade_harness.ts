// What the upgrade tests share (test/crash/upgrade.test.ts, keeper_reexec.test.ts): installed
// copies of this build switched by a symlink, the real upgrade CLI, and a client that keeps
// doing I/O and checks every reply.
import type { Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFile, execFileSync } from 'node:child_process';
import { pattern, type Session } from '../frontend/helpers';
import { REPO_ROOT } from '../frontend/backend';
import * as F from '../frontend/fuse_proto';
import type { UpgradeResult } from '../../shared/keeper_protocol';

const ROOT = F.FUSE_ROOT_ID;

export const PKG_VERSION = (JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

export interface Release { dir: string; version: string }

/** A copy of this build installed at `dir`: bin, dist (without the tests), the addon, package.json
 * (with `version`); node_modules is the checkout's. `patch` edits its compiled files. */
export function install(dir: string, version: string, patch: Array<[string, string, string]> = []): Release {
  fs.mkdirSync(path.join(dir, 'build', 'Release'), { recursive: true });
  fs.cpSync(path.join(REPO_ROOT, 'bin'), path.join(dir, 'bin'), { recursive: true });
  fs.cpSync(path.join(REPO_ROOT, 'dist'), path.join(dir, 'dist'), { recursive: true, filter: (src) => !src.startsWith(path.join(REPO_ROOT, 'dist', 'test')) });
  fs.copyFileSync(path.join(REPO_ROOT, 'build', 'Release', 'vfsk_native.node'), path.join(dir, 'build', 'Release', 'vfsk_native.node'));
  const pkg = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ ...pkg, version }, null, 2));
  fs.symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  for (const [file, from, to] of patch) {
    const p = path.join(dir, 'dist', file);
    const text = fs.readFileSync(p, 'utf8');
    if (!text.includes(from)) throw new Error(`${file} has no ${from}: the test's patch is out of date`);
    fs.writeFileSync(p, text.replace(from, to));
  }
  return { dir, version };
}

export const SCHEMA = (schema: number, minReader: number): Array<[string, string, string]> => [
  ['worker/state/state_store.js', 'exports.SCHEMA_VERSION = 3;', `exports.SCHEMA_VERSION = ${schema};`],
  ['worker/state/state_store.js', 'exports.SCHEMA_MIN_READER = 2;', `exports.SCHEMA_MIN_READER = ${minReader};`],
];

/** Points <root>/current at `rel` atomically (rename over the old link). */
export function switchTo(root: string, rel: Release): void {
  const tmp = path.join(root, 'current.new');
  fs.rmSync(tmp, { force: true });
  fs.symlinkSync(rel.dir, tmp);
  fs.renameSync(tmp, path.join(root, 'current'));
}

/** The real CLI, as an operator runs it (async: the client keeps running in this process). */
export function runUpgrade(stateDir: string, extraArgs: string[] = []): Promise<{ code: number; result: UpgradeResult | null; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(REPO_ROOT, 'bin', 'virtiofs-keeper.js'), 'upgrade', '--state-dir', stateDir, '--json', ...extraArgs],
      { timeout: 120_000 }, (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1;
        let result: UpgradeResult | null = null;
        try { result = JSON.parse(stdout) as UpgradeResult; } catch { /* reported below */ }
        resolve({ code, result, out: `${stdout}${stderr}` });
      });
  });
}

/**
 * The client's work while upgrades happen: FILES files created and kept open for the whole test
 * (the session's handles), each written block by block through its handle and read back, plus
 * lookups and getattrs, and new files created, written, released. Every reply is checked; any
 * error or wrong byte counts. Latencies are kept to show what the client saw of each pause.
 */
export const FILES = 4;
const BLOCK = 4096;
const BLOCKS = 64;
export class Load {
  errors: string[] = [];
  ops = 0;
  readonly latMs: number[] = [];
  private stopped = false;
  private loops: Array<Promise<void>> = [];
  readonly handles: Array<{ nodeid: bigint; fh: bigint; name: string }> = [];
  /** What each file holds: block index → seed written (acknowledged writes only). */
  readonly written: Array<Map<number, number>> = [];
  private seq = 0;

  constructor(private readonly s: Session) {}

  async start(loops = 2): Promise<void> {
    for (let i = 0; i < FILES; i++) {
      const c = await this.s.fuse.create(ROOT, `open${i}`, F.O.RDWR, 0o644);
      this.handles.push({ nodeid: c.entry.nodeid, fh: c.open.fh, name: `open${i}` });
      this.written.push(new Map());
    }
    for (let l = 0; l < loops; l++) this.loops.push(this.loop(l));
  }

  private async timed<T>(what: string, p: () => Promise<T>): Promise<T | null> {
    const t0 = process.hrtime.bigint();
    try {
      return await p();
    } catch (e) {
      this.errors.push(`${what}: ${(e as Error).message}`);
      return null;
    } finally {
      this.latMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
      this.ops++;
    }
  }

  private async loop(l: number): Promise<void> {
    while (!this.stopped) {
      const i = this.seq++;
      const f = i % FILES;
      const h = this.handles[f]!;
      switch (i % 5) {
        case 0: case 1: {
          // Two loops never write the same block at once: blocks are split by loop.
          const block = ((i * 7) % (BLOCKS / 2)) * 2 + l;
          const seed = i + 1;
          const n = await this.timed('write', () => this.s.fuse.write(h.nodeid, h.fh, block * BLOCK, pattern(BLOCK, seed)));
          if (n !== null && n !== BLOCK) this.errors.push(`write returned ${n}`);
          if (n === BLOCK) this.written[f]!.set(block, seed);
          break;
        }
        case 2: {
          const known = [...this.written[f]!].filter(([b]) => b % 2 === l);
          if (known.length === 0) break;
          const [block, seed] = known[i % known.length]!;
          const data = await this.timed('read', () => this.s.fuse.read(h.nodeid, h.fh, block * BLOCK, BLOCK));
          if (data !== null && !data.equals(pattern(BLOCK, seed))) this.errors.push(`read of ${h.name} block ${block} differs`);
          break;
        }
        case 3: {
          const e = await this.timed('lookup', () => this.s.fuse.lookup(ROOT, h.name));
          if (e !== null && e.nodeid !== h.nodeid) this.errors.push(`lookup ${h.name} gave nodeid ${e.nodeid}, not ${h.nodeid}`);
          if (e !== null) await this.timed('forget', () => this.s.fuse.forget(e.nodeid, 1));
          await this.timed('getattr', () => this.s.fuse.getattr(h.nodeid, h.fh));
          break;
        }
        case 4: {
          const name = `new${l}-${i}`;
          const c = await this.timed('create', () => this.s.fuse.create(ROOT, name, F.O.RDWR, 0o644));
          if (c === null) break;
          await this.timed('write new', () => this.s.fuse.write(c.entry.nodeid, c.open.fh, 0, Buffer.from(name)));
          await this.timed('release', () => this.s.fuse.release(c.entry.nodeid, c.open.fh, F.O.RDWR));
          await this.timed('forget new', () => this.s.fuse.forget(c.entry.nodeid, 1));
          break;
        }
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.loops);
  }

  /** Every acknowledged write is in the host file, and every open handle still reads it. */
  async verify(t: Test): Promise<void> {
    for (let f = 0; f < FILES; f++) {
      const h = this.handles[f]!;
      const host = fs.readFileSync(this.s.host(h.name));
      let bad = 0;
      for (const [block, seed] of this.written[f]!) {
        if (!host.subarray(block * BLOCK, (block + 1) * BLOCK).equals(pattern(BLOCK, seed))) bad++;
        const viaHandle = await this.s.fuse.read(h.nodeid, h.fh, block * BLOCK, BLOCK);
        if (!viaHandle.equals(pattern(BLOCK, seed))) bad++;
      }
      t.equal(bad, 0, `${h.name}: all ${this.written[f]!.size} acknowledged blocks on the host and through the handle opened before the upgrades`);
    }
  }

  p99(): number {
    const s = [...this.latMs].sort((a, b) => a - b);
    return s.length ? s[Math.min(s.length - 1, Math.floor(0.99 * s.length))]! : 0;
  }

  max(): number {
    return this.latMs.reduce((a, b) => Math.max(a, b), 0);
  }
}

export function pctl(v: number[], q: number): number {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}


/** Builds commit `rev` at `dir` as an installation: its sources, compiled with this checkout's
 * TypeScript and node_modules, and its addon (copied if native/ is the same, else built). */
export function installRev(dir: string, rev: string): Release {
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('sh', ['-c', `git -C "${REPO_ROOT}" archive "${rev}" | tar -x -C "${dir}"`]);
  fs.symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  let nativeSame = true;
  try {
    execFileSync('git', ['-C', REPO_ROOT, 'diff', '--quiet', rev, 'HEAD', '--', 'native', 'binding.gyp']);
  } catch {
    nativeSame = false;
  }
  if (nativeSame) {
    fs.mkdirSync(path.join(dir, 'build', 'Release'), { recursive: true });
    fs.copyFileSync(path.join(REPO_ROOT, 'build', 'Release', 'vfsk_native.node'), path.join(dir, 'build', 'Release', 'vfsk_native.node'));
  } else {
    execFileSync(process.execPath, [path.join(REPO_ROOT, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'), 'rebuild'], { cwd: dir, stdio: 'ignore' });
  }
  execFileSync(process.execPath, [path.join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: dir, stdio: 'ignore' });
  const version = (JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version: string }).version;
  return { dir, version };
}

