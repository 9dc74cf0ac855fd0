// A keeper re-exec (docs/ARCHITECTURE.md, "Upgrades"): the keeper replaces its own image by the
// installed build's with execve, so its pid (libvirt's pid file and the POSIX lock on it, the
// process QEMU's peer is) and every fd it holds survive, while the serving worker keeps
// serving. What the new image needs beyond the fds travels in a memfd as JSON (the handoff),
// named by VFSK_REEXEC_FD; this file owns that format, its validation and the execve itself.
//
// Compatibility: the handoff carries HANDOFF_FORMAT. A keeper reads formats it knows
// (HANDOFF_FORMATS) and refuses any other with a clear error; and because a failed start of
// the new image would lose everything (execve does not come back), the old keeper first asks
// the installed build which formats it reads (`virtiofs-keeper reexec-check`, a dry run that
// loads every keeper module) and re-execs only if ours is among them.
import * as fs from 'node:fs';
import { spawn } from 'node:child_process';
import { native } from '../shared/native';
import { faultPoint } from '../shared/fault_points';
import { StateError } from '../shared/errors';
import { VERSION } from '../shared/version';
import type { ExitInfo, WorkerInfo } from '../shared/keeper_protocol';
import type { PeerRole } from './keeper_socket';
import type { UpgradeLogSnapshot } from './upgrade';

export const HANDOFF_FORMAT = 1;
/** Formats this build reads. */
export const HANDOFF_FORMATS: readonly number[] = [1];
export const REEXEC_FD_ENV = 'VFSK_REEXEC_FD';
/** The dry run's deadline: a Node.js start and the keeper's modules. */
const CHECK_TIMEOUT_MS = 20_000;
/** A handoff is small (names and numbers); anything larger is not ours. */
const MAX_HANDOFF_BYTES = 64 << 20;

/** One keeper.sock connection that lives on in the new image. */
export interface PeerHandoff { fd: number; pid: number; role: PeerRole; refused: string[] | 'all' }

/** The serving worker, a child process the new image adopts. */
export interface WorkerHandoff {
  /** The spawned process (the launcher when it forks) and the worker's real pid. */
  pid: number;
  hostPid: number | null;
  startedAt: string | null;
  readyAt: number | null;
  progress: boolean;
  info: WorkerInfo | null;
  /** Its keeper.sock connection (one of `peers`). */
  connFd: number;
}

export interface SupervisorHandoff {
  worker: WorkerHandoff;
  restarts: number;
  lastExit: ExitInfo | null;
  recoveryMs: number[];
  /** A recovery still being timed: its start (CLOCK_MONOTONIC ns, the same clock after execve). */
  deathAtNs: string | null;
  upgrades: UpgradeLogSnapshot;
}

/** The upgrade that asked for the re-exec: the new image goes on with the worker's part and
 * answers the CLI on its connection. */
export interface PendingUpgradeHandoff {
  replyFd: number | null;
  timeoutMs: number | null;
  /** When the CLI asked, and when the old image called execve (CLOCK_MONOTONIC ns). */
  startedNs: string;
  execNs: string;
  fromVersion: string;
}

export interface KeeperHandoff {
  format: number;
  version: string;
  /** How the keeper was started (cli/serve.ts re-creates its options from these). */
  start: unknown;
  /** The fd store, in store order. */
  store: Array<[string, number]>;
  /** fds kept open for the process's life that are nobody's (libvirt's pid file). */
  keepOpen: number[];
  keeperSocketFd: number;
  peers: PeerHandoff[];
  keeper: { startedAt: string; error: string | null; lastStatus: string | null; lastControlReply: number; reexecs: number };
  supervisor: SupervisorHandoff;
  upgrade: PendingUpgradeHandoff | null;
}

/** A handoff this build cannot use: a state problem (kind `state`), named in full. */
export class HandoffError extends StateError {}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isFd = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 31;
const isPid = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) > 0 && (v as number) < 2 ** 31;

/** Parses and validates a handoff; throws HandoffError naming what is wrong. */
export function parseHandoff(text: string): KeeperHandoff {
  let h: unknown;
  try {
    h = JSON.parse(text);
  } catch (e) {
    throw new HandoffError(`keeper handoff: not JSON (${(e as Error).message})`);
  }
  const bad = (what: string): never => { throw new HandoffError(`keeper handoff: malformed ${what}`); };
  if (!isObj(h)) return bad('document');
  if (!Number.isSafeInteger(h.format) || !HANDOFF_FORMATS.includes(h.format as number)) {
    throw new HandoffError(`keeper handoff format ${String(h.format)} from virtiofs-keeper ${String(h.version)} is not one this build (${VERSION}) reads (${HANDOFF_FORMATS.join(', ')})`);
  }
  if (typeof h.version !== 'string') bad('version');
  if (!Array.isArray(h.store) || !h.store.every((e) => Array.isArray(e) && e.length === 2 && typeof e[0] === 'string' && isFd(e[1]))) bad('store');
  if (!Array.isArray(h.keepOpen) || !h.keepOpen.every(isFd)) bad('keepOpen');
  if (!isFd(h.keeperSocketFd)) bad('keeperSocketFd');
  if (!Array.isArray(h.peers) || !h.peers.every((p) => isObj(p) && isFd(p.fd) && isPid(p.pid) && (p.role === 'worker' || p.role === 'observer')
    && (p.refused === 'all' || (Array.isArray(p.refused) && p.refused.every((n) => typeof n === 'string'))))) bad('peers');
  const k = h.keeper;
  if (!isObj(k) || typeof k.startedAt !== 'string' || !Number.isSafeInteger(k.lastControlReply) || !Number.isSafeInteger(k.reexecs)) bad('keeper');
  const s = h.supervisor;
  if (!isObj(s) || !Number.isSafeInteger(s.restarts) || !Array.isArray(s.recoveryMs) || !s.recoveryMs.every((v) => typeof v === 'number')
    || !isObj(s.upgrades) || !(s.deathAtNs === null || (typeof s.deathAtNs === 'string' && /^\d+$/.test(s.deathAtNs)))) bad('supervisor');
  const w = (s as Record<string, unknown>).worker;
  if (!isObj(w) || !isPid(w.pid) || !(w.hostPid === null || isPid(w.hostPid)) || !isFd(w.connFd) || typeof w.progress !== 'boolean'
    || !(h.peers as PeerHandoff[]).some((p) => p.fd === w.connFd && p.role === 'worker')) bad('supervisor.worker');
  const u = h.upgrade;
  if (u !== null && (!isObj(u) || !(u.replyFd === null || isFd(u.replyFd)) || typeof u.startedNs !== 'string' || typeof u.execNs !== 'string'
    || typeof u.fromVersion !== 'string')) bad('upgrade');
  // No fd may be named twice: each is adopted by exactly one owner.
  const fds = [...(h.store as Array<[string, number]>).map((e) => e[1]), ...(h.keepOpen as number[]), h.keeperSocketFd as number,
    ...(h.peers as PeerHandoff[]).map((p) => p.fd)];
  if (new Set(fds).size !== fds.length) bad('fds (one named twice)');
  return h as unknown as KeeperHandoff;
}

/** Every fd the handoff names: they must stay open across execve. */
export function handoffFds(h: KeeperHandoff): number[] {
  return [...h.store.map((e) => e[1]), ...h.keepOpen, h.keeperSocketFd, ...h.peers.map((p) => p.fd)];
}

/** Reads the handoff of the image before us, if we are a re-exec'd keeper; the memfd is closed
 * and the variable removed, so workers never see either. Every fd it names gets FD_CLOEXEC
 * back. */
export function takeHandoff(): KeeperHandoff | null {
  const v = process.env[REEXEC_FD_ENV];
  if (v === undefined) return null;
  delete process.env[REEXEC_FD_ENV];
  if (!/^\d+$/.test(v)) throw new HandoffError(`${REEXEC_FD_ENV}=${v} is not an fd`);
  const fd = Number(v);
  let text: string;
  try {
    const size = fs.fstatSync(fd).size;
    if (size > MAX_HANDOFF_BYTES) throw new HandoffError(`keeper handoff of ${size} bytes is too large`);
    const buf = Buffer.alloc(size);
    let off = 0;
    while (off < size) {
      const n = fs.readSync(fd, buf, off, size - off, off);
      if (n === 0) break;
      off += n;
    }
    text = buf.subarray(0, off).toString('utf8');
  } finally {
    native.close(fd);
  }
  const h = parseHandoff(text);
  for (const f of handoffFds(h)) native.setCloexec(f, true);
  return h;
}

/** Asks the build installed at `bin` (a dry run) which handoff formats it reads; resolves to
 * null if it reads ours, else to why not. */
export function checkInstalledKeeper(bin: string): Promise<{ error: string | null; version: string | null }> {
  return new Promise((resolve) => {
    let out = '';
    let err = '';
    let settled = false;
    const done = (r: { error: string | null; version: string | null }): void => { if (!settled) { settled = true; resolve(r); } };
    let child;
    try {
      child = spawn(process.execPath, [bin, 'reexec-check'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VFSK_LOG_LEVEL: 'silent' } });
    } catch (e) {
      done({ error: `cannot run the installed keeper: ${(e as Error).message}`, version: null });
      return;
    }
    const timer = setTimeout(() => { child.kill('SIGKILL'); done({ error: `the installed keeper did not answer within ${CHECK_TIMEOUT_MS} ms`, version: null }); }, CHECK_TIMEOUT_MS);
    child.stdout!.on('data', (d: Buffer) => { if (out.length < 4096) out += d.toString(); });
    child.stderr!.on('data', (d: Buffer) => { if (err.length < 4096) err += d.toString(); });
    child.on('error', (e) => { clearTimeout(timer); done({ error: `cannot run the installed keeper: ${e.message}`, version: null }); });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      let answer: { version?: unknown; handoffFormats?: unknown } = {};
      try {
        answer = JSON.parse(out) as typeof answer;
      } catch {
        done({ error: `the installed keeper cannot be re-executed into (${signal ?? `exit ${code}`}): ${(err.trim() || out.trim() || 'no answer').slice(0, 300)}`, version: null });
        return;
      }
      const version = typeof answer.version === 'string' ? answer.version : null;
      const formats = Array.isArray(answer.handoffFormats) ? answer.handoffFormats : [];
      if (code !== 0 || !formats.includes(HANDOFF_FORMAT)) {
        done({ error: `the installed keeper (virtiofs-keeper ${version ?? 'unknown'}) does not read keeper handoff format ${HANDOFF_FORMAT} (it reads ${formats.join(', ') || 'none'})`, version });
        return;
      }
      done({ error: null, version });
    });
  });
}

/** What `virtiofs-keeper reexec-check` prints. */
export function reexecCheckAnswer(): string {
  return `${JSON.stringify({ version: VERSION, handoffFormats: HANDOFF_FORMATS })}\n`;
}

/**
 * Replaces this process by `argv` (argv[0] the executable) with the handoff in a memfd. Every
 * fd the handoff names, and stdio, loses FD_CLOEXEC first. Returns only if execve failed: then the flags
 * are restored and the memfd closed, and the caller carries on as before (nothing was torn
 * down); the error is returned.
 */
export function execWithHandoff(h: KeeperHandoff, argv: string[], env: NodeJS.ProcessEnv): Error {
  // Node.js marks stdin, stdout and stderr close-on-exec at start (uv_disable_stdio_inheritance):
  // the new image would log to the /dev/null it opens in their place.
  const stdio = [0, 1, 2].filter((fd) => { try { return native.fdFlags(fd).cloexec; } catch { return false; } });
  const fds = [...handoffFds(h), ...stdio];
  let memfd = -1;
  const cleared: number[] = [];
  try {
    memfd = native.memfdCreate('vfsk-keeper-handoff', 0);
    const data = Buffer.from(JSON.stringify(h));
    let off = 0;
    while (off < data.length) off += fs.writeSync(memfd, data, off, data.length - off, off);
    for (const fd of [...fds, memfd]) {
      native.setCloexec(fd, false);
      cleared.push(fd);
    }
    const envList = Object.entries({ ...env, [REEXEC_FD_ENV]: String(memfd) })
      .filter((e): e is [string, string] => e[1] !== undefined).map(([k, v]) => `${k}=${v}`);
    // Tests: a failed execve (E2BIG, ENOMEM...) must leave the keeper as it was.
    faultPoint('keeper-execve');
    native.execve(argv[0]!, argv, envList);
  } catch (e) {
    for (const fd of cleared) {
      try { native.setCloexec(fd, true); } catch { /* closed meanwhile: nothing to protect */ }
    }
    if (memfd >= 0) native.close(memfd);
    return e instanceof Error ? e : new Error(String(e));
  }
  return new Error('execve returned');
}
