// Test plumbing: one backend + frontend + FUSE client per test, torn down by pid at the end.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Backend, BackendKind, startBackend } from './backend';
import { VhostUserFrontend, NegotiateOptions, Negotiated } from './vhost_user';
import { FuseClient } from './fuse_client';
import * as F from './fuse_proto';
import type { Test } from 'tap';

/** The bits of tap's Test that we use (kept structural so that helpers do not depend on tap). */
export interface TapLike {
  testdir(fixture?: unknown): string;
  teardown(fn: () => unknown): void;
  comment(...args: unknown[]): void;
}

export interface Session {
  kind: BackendKind;
  /** t.testdir(): holds shared/, outside/ and the backend log. */
  dir: string;
  /** The exported directory. */
  shared: string;
  /** A sibling of shared/ that must never be reachable through the backend. */
  outside: string;
  socketPath: string;
  backend: Backend;
  fe: VhostUserFrontend;
  fuse: FuseClient;
  negotiated: Negotiated;
  init: F.InitOut | null;
  /** Host path inside the shared dir. */
  host(rel: string): string;
  /** Closes the frontend and stops the backend (also done at teardown). */
  close(): Promise<void>;
}

export interface SessionOptions {
  negotiate?: NegotiateOptions;
  /** false: do not send FUSE_INIT. A number: INIT flags. Default: LINUX_INIT_FLAGS. */
  init?: boolean | number;
  extraArgs?: string[];
  /** Supplementary groups the backend process starts with. */
  backendGroups?: number[];
  /** Runs before the backend starts (populate the shared dir). */
  setup?: (shared: string, outside: string) => void;
  /** Ours: the bin/virtiofs-keeper.js to run (an installed copy). */
  binPath?: string;
  /** See BackendOptions.withoutNodeOptions. */
  withoutNodeOptions?: boolean;
  /** The directory holding shared/ and outside/ (default t.testdir()); removed at teardown when
   * given. */
  baseDir?: string;
}

/** Poll `cond` until it is truthy (or throw after timeoutMs). Never a sleep-for-correctness. */
export async function waitFor<T>(cond: () => T | Promise<T>, what: string, timeoutMs = 10_000, intervalMs = 10): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Open fds of process `pid` (default: this one). */
export function openFdCount(pid: number | 'self' = 'self'): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

/** "fd -> target" for each open fd of `pid` (default: this one). */
export function openFds(pid: number | 'self' = 'self'): string[] {
  const out: string[] = [];
  for (const f of fs.readdirSync(`/proc/${pid}/fd`)) {
    try { out.push(`${f} -> ${fs.readlinkSync(`/proc/${pid}/fd/${f}`)}`); } catch { /* the readdir fd, or closed meanwhile */ }
  }
  return out;
}

/** Whether process `pid` has ended: gone, or a zombie nobody reaped yet. */
export function processEnded(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return / [ZX] /.test(stat.slice(stat.lastIndexOf(')')));
  } catch {
    return true;
  }
}

export async function openSession(t: TapLike, kind: BackendKind, opts: SessionOptions = {}): Promise<Session> {
  const dir = opts.baseDir ?? t.testdir();
  if (opts.baseDir !== undefined) t.teardown(() => fs.rmSync(opts.baseDir!, { recursive: true, force: true }));
  const shared = path.join(dir, 'shared');
  const outside = path.join(dir, 'outside');
  fs.mkdirSync(shared, { recursive: true });
  fs.mkdirSync(outside, { recursive: true });
  fs.writeFileSync(path.join(outside, 'secret.txt'), 'outside the shared dir\n');
  opts.setup?.(shared, outside);
  // UNIX socket paths are limited to 108 bytes, and testdir paths can be long.
  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-fe-'));
  const socketPath = path.join(sockDir, 'vhost.sock');
  const backend = await startBackend(kind, {
    sharedDir: shared, socketPath, dir, extraArgs: opts.extraArgs,
    ...(opts.backendGroups ? { supplementaryGroups: opts.backendGroups } : {}),
    ...(opts.binPath ? { binPath: opts.binPath } : {}),
    ...(opts.withoutNodeOptions === true ? { withoutNodeOptions: true } : {}),
  });
  let fe: VhostUserFrontend | null = null;
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    try { fe?.close(); } finally {
      try { await backend.stop(); } finally {
        fs.rmSync(sockDir, { recursive: true, force: true });
      }
    }
  };
  t.teardown(close);
  try {
    fe = await VhostUserFrontend.connect(socketPath, { isAlive: () => !backend.exited, timeoutMs: 15_000 });
    const negotiated = await fe.negotiate(opts.negotiate ?? {});
    const fuse = new FuseClient(fe);
    let init: F.InitOut | null = null;
    if (opts.init !== false) {
      init = await fuse.init(typeof opts.init === 'number' ? opts.init : F.LINUX_INIT_FLAGS);
    }
    return {
      kind, dir, shared, outside, socketPath, backend, fe, fuse, negotiated, init,
      host: (rel: string) => path.join(shared, rel),
      close,
    };
  } catch (e) {
    t.comment(`backend log:\n${backend.log()}`);
    throw e;
  }
}

/**
 * Is the backend still serving? A FUSE GETATTR of the root and a GET_FEATURES round trip, each
 * answered within timeoutMs (default 15 s for ours, 3 s for the C virtiofsd). Resolves early when
 * the backend exits or closes the connection. `why` says what happened.
 */
export async function probeServing(s: Session, timeoutMs = s.kind === 'ours' ? 15_000 : 3_000): Promise<{ ok: boolean; why: string }> {
  const died = s.backend.waitExit(timeoutMs).then((exited) => (exited
    ? `backend exited (${s.backend.exitSignal ?? `code ${s.backend.exitCode}`})` : null));
  const closed = s.fe.waitClosed(timeoutMs).then((c) => (c ? 'connection closed' : null));
  const probe = (async () => {
    if (!(await s.fuse.serving(timeoutMs))) return 'FUSE request not answered';
    if (!(await s.fe.controlAlive(timeoutMs))) return 'control channel not answering';
    return 'ok';
  })();
  const first = await Promise.race([probe, died.then((d) => d ?? probe), closed.then((c) => c ?? probe)]);
  // A closed connection is usually the backend exiting: say which.
  if (first === 'connection closed' && (await s.backend.waitExit(2_000))) {
    return { ok: false, why: `connection closed; backend exited (${s.backend.exitSignal ?? `code ${s.backend.exitCode}`})` };
  }
  return { ok: first === 'ok', why: first };
}

/** Lines of our backend's JSON log at level error or above, minus those matching `allow`. */
export function unexpectedErrors(s: Session, allow: RegExp[] = []): string[] {
  if (s.kind !== 'ours') return [];
  const out: string[] = [];
  for (const line of s.backend.log().split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const j = JSON.parse(line) as { level?: number };
      if ((j.level ?? 0) >= 50 && !allow.some((re) => re.test(line))) out.push(line);
    } catch { /* not JSON */ }
  }
  return out;
}

export function isDir(a: F.Attr): boolean { return (a.mode & F.S_IFMT) === F.S_IFDIR; }
export function isReg(a: F.Attr): boolean { return (a.mode & F.S_IFMT) === F.S_IFREG; }
export function isLnk(a: F.Attr): boolean { return (a.mode & F.S_IFMT) === F.S_IFLNK; }

/** Deterministic pseudo-random bytes. */
export function pattern(len: number, seed = 1): Buffer {
  const b = Buffer.alloc(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

export type TapAsserts = Pick<Test, 'ok' | 'fail' | 'comment'>;

/**
 * Expects `p` to fail with errno `want`. For the C virtiofsd (the reference, not the standard)
 * `cAlso` lists other errnos it is known to give; those pass with a comment.
 */
export async function expectErrno(t: TapAsserts, kind: BackendKind, p: Promise<unknown>, want: number,
  msg: string, cAlso: number[] = []): Promise<void> {
  try {
    await p;
    t.fail(`${msg}: succeeded, expected ${F.errnoName(want)}`);
  } catch (e) {
    const errno = (e as { errno?: unknown }).errno;
    if (typeof errno !== 'number') { t.fail(`${msg}: ${(e as Error).message}`); return; }
    if (errno === want) { t.ok(true, `${msg} → ${F.errnoName(want)}`); return; }
    if (kind === 'c-virtiofsd' && cAlso.includes(errno)) {
      t.ok(true, `${msg} → ${F.errnoName(errno)} (C virtiofsd; ours must give ${F.errnoName(want)})`);
      return;
    }
    t.fail(`${msg}: got ${F.errnoName(errno)}, expected ${F.errnoName(want)}`);
  }
}

/** Like expectErrno for a raw FuseReply's error field. */
export function checkErrno(t: TapAsserts, kind: BackendKind, got: number | null, want: number, msg: string,
  cAlso: number[] = []): void {
  if (got === want) { t.ok(true, `${msg} → ${F.errnoName(want)}`); return; }
  if (got !== null && kind === 'c-virtiofsd' && cAlso.includes(got)) {
    t.ok(true, `${msg} → ${F.errnoName(got)} (C virtiofsd; ours must give ${F.errnoName(want)})`);
    return;
  }
  t.fail(`${msg}: got ${got === null ? 'no reply' : F.errnoName(got)}, expected ${F.errnoName(want)}`);
}
