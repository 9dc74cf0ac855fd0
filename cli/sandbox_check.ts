// `virtiofs-keeper sandbox-check`: builds the worker's sandbox exactly as a worker does (the
// same launcher, then worker/sandbox.ts's enterSandbox in a child process), then tries from
// inside what a compromised worker would, and prints a table of what was blocked. Exit code 0
// when everything was blocked, 1 otherwise.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { native, C, STAT } from '../shared/native';
import { logger } from '../shared/log';
import { errorInfo } from '../shared/errors';
import { encodeToKeeper, MAX_MESSAGE_SIZE, SCM_MAX_FD } from '../shared/keeper_protocol';
import { KeeperClient } from '../shared/keeper_client';
import type { SandboxMode } from '../shared/config';
import { enterSandbox, sandboxLauncher } from '../worker/sandbox';
import { at } from '../shared/pinned_dirs';

export interface ProbeRow { attempt: string; blocked: boolean; result: string }

export interface CheckOptions { sharedDir: string; sandbox: SandboxMode; otherKeeperSock: string | null }

const BIN = path.join(__dirname, '..', '..', 'bin', 'virtiofs-keeper.js');

function inodeOf(p: string): string {
  const st = fs.statSync(p);
  return `${st.dev}:${st.ino}`;
}

/** The outer half: starts the probe the way the keeper starts a worker, prints its table. */
export async function sandboxCheck(o: CheckOptions, out: (s: string) => void): Promise<{ code: number; rows: ProbeRow[] }> {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-check-'));
  try {
    let ptraceTarget = process.pid;
    if (o.otherKeeperSock !== null) {
      try {
        const c = KeeperClient.connect(o.otherKeeperSock);
        try { ptraceTarget = c.queryStatus().keeper.pid; } finally { c.close(); }
      } catch {
        // No keeper answers there: ptrace ourselves (a process outside the sandbox) instead.
      }
    }
    // The host directories above the state dir, nearest first: what '..' from its pinned fd
    // must never reach.
    const stateAncestors: { path: string; inode: string }[] = [];
    for (let d = path.dirname(stateDir); ; d = path.dirname(d)) {
      stateAncestors.push({ path: d, inode: inodeOf(d) });
      if (d === '/') break;
    }
    const args = ['sandbox-probe', JSON.stringify({
      sharedDir: path.resolve(o.sharedDir), sandbox: o.sandbox, stateDir, ptraceTarget,
      hostParent: inodeOf(path.dirname(path.resolve(o.sharedDir))), otherKeeperSock: o.otherKeeperSock, stateAncestors,
    })];
    const argv = [...sandboxLauncher(o.sandbox, process.geteuid?.() ?? 0), process.execPath, BIN, ...args];
    const child = spawn(argv[0]!, argv.slice(1), {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, VFSK_LOG_FD: '2', ...(o.sandbox === 'namespace' ? { VFSK_OWN_MOUNT_NS: '1' } : {}) },
    });
    let text = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { text += d; });
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    if (code !== 0) throw new Error(`the sandbox probe failed (exit ${code}): it could not build the sandbox`);
    const rows = JSON.parse(text) as ProbeRow[];
    out(`sandbox-check: --sandbox ${o.sandbox}, shared dir ${o.sharedDir}\n`);
    const w = Math.max(...rows.map((r) => r.attempt.length));
    for (const r of rows) out(`  ${r.attempt.padEnd(w)}  ${r.blocked ? 'BLOCKED    ' : 'NOT BLOCKED'}  ${r.result}\n`);
    return { code: rows.every((r) => r.blocked) ? 0 : 1, rows };
  } finally {
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}

function errnoText(err: number): string {
  return err === 0 ? 'succeeded' : `${native.errnoName(err)}`;
}

/** dev:ino of what `name` under `dirFd` opens to (O_PATH), or null when it cannot be opened. */
function inodeAt(dirFd: number, name: string, dirOnly = true): string | null {
  let fd: number;
  try {
    fd = native.openat(dirFd, name, C.O_PATH! | C.O_CLOEXEC! | (dirOnly ? C.O_DIRECTORY! : 0), 0);
  } catch {
    return null;
  }
  try {
    const st = Buffer.alloc(STAT.SIZE);
    native.fstatat(fd, '', C.AT_EMPTY_PATH!, st);
    return `${st.readBigUInt64LE(STAT.dev)}:${st.readBigUInt64LE(STAT.ino)}`;
  } finally {
    native.close(fd);
  }
}

/** The numeric entries (pids) of the directory `name` under `dirFd`. */
function pidsIn(dirFd: number, name: string): number[] {
  const fd = native.openat(dirFd, name, C.O_RDONLY! | C.O_DIRECTORY! | C.O_CLOEXEC!, 0);
  const out: number[] = [];
  try {
    const buf = Buffer.alloc(32768);
    for (let n = native.getdents64(fd, buf); n > 0; n = native.getdents64(fd, buf)) {
      // linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, name NUL-terminated.
      for (let off = 0; off < n; off += buf.readUInt16LE(off + 16)) {
        const end = buf.indexOf(0, off + 19);
        const entry = buf.toString('latin1', off + 19, end);
        if (/^\d+$/.test(entry)) out.push(Number(entry));
      }
    }
  } finally {
    native.close(fd);
  }
  return out;
}

function attempt(name: string, fn: () => { blocked: boolean; result: string }): ProbeRow {
  try {
    return { attempt: name, ...fn() };
  } catch (e) {
    const code = (e as { code?: string }).code ?? (e as Error).message;
    return { attempt: name, blocked: true, result: String(code) };
  }
}

/** The inner half (`sandbox-probe JSON`): confines itself as a worker does, then tries. */
export function sandboxProbe(json: string): number {
  const o = JSON.parse(json) as {
    sharedDir: string; sandbox: SandboxMode; stateDir: string; ptraceTarget: number; hostParent: string; otherKeeperSock: string | null;
    stateAncestors: { path: string; inode: string }[];
  };
  const log = logger('sandbox-check');
  try {
    native.raiseNoFileLimit(1_000_000);
    enterSandbox(o.sandbox, o.sharedDir, o.stateDir, log);
  } catch (e) {
    log.error({ err: errorInfo(e) }, 'cannot build the sandbox');
    return 2;
  }
  const byErrno = (err: number, why = ''): { blocked: boolean; result: string } => ({ blocked: err !== 0, result: `${errnoText(err)}${why}` });
  const rows: ProbeRow[] = [
    attempt('read /etc/shadow', () => {
      const fd = native.openat(C.AT_FDCWD!, '/etc/shadow', C.O_RDONLY! | C.O_CLOEXEC!, 0);
      native.close(fd);
      return { blocked: false, result: 'opened' };
    }),
    attempt(`open the share's parent (${path.dirname(o.sharedDir)})`, () => {
      const fd = native.openat(C.AT_FDCWD!, path.dirname(o.sharedDir), C.O_PATH! | C.O_DIRECTORY! | C.O_CLOEXEC!, 0);
      const st = Buffer.alloc(STAT.SIZE);
      native.fstatat(fd, '', C.AT_EMPTY_PATH!, st);
      native.close(fd);
      const same = `${st.readBigUInt64LE(STAT.dev)}:${st.readBigUInt64LE(STAT.ino)}` === o.hostParent;
      return same ? { blocked: false, result: 'opened the host directory' } : { blocked: true, result: 'only a directory inside the share' };
    }),
    attempt('escape via the pinned state dir (openat ../..)', () => {
      // The worker's fd of its state dir (shared/pinned_dirs.ts), climbed level by level.
      const dirFd = at(path.join(o.stateDir, 'x')).dirFd;
      const reached = o.stateAncestors.filter((a, k) => inodeAt(dirFd, Array(k + 1).fill('..').join('/')) === a.inode).map((a) => a.path);
      if (reached.length > 0) return { blocked: false, result: `reached the host's ${reached.join(' and ')}` };
      const stays = inodeAt(dirFd, '..') === inodeAt(dirFd, '.');
      return { blocked: true, result: stays ? "'..' stays in the state dir" : "'..' reaches no host directory above it" };
    }),
    attempt('escape via the pinned /proc (../../sysrq-trigger or ../../1/root)', () => {
      // The worker's fd of /proc/self/fd: '../..' is the root of the procfs it belongs to.
      const dirFd = at('/proc/self/fd/0').dirFd;
      const found: string[] = [];
      if (inodeAt(dirFd, '../../sysrq-trigger', false) !== null) found.push('../../sysrq-trigger');
      if (inodeAt(dirFd, '../../sys', true) !== null) found.push('../../sys');
      const ownRoot = inodeAt(C.AT_FDCWD!, '/');
      const pids = pidsIn(dirFd, '../..');
      // A process whose root is not ours: the host's or another sandbox's whole filesystem.
      const foreign = pids.filter((pid) => { const r = inodeAt(dirFd, `../../${pid}/root`); return r !== null && r !== ownRoot; });
      if (foreign.length > 0) found.push(`${foreign.slice(0, 3).map((p) => `../../${p}/root`).join(', ')}${foreign.length > 3 ? ` and ${foreign.length - 3} more` : ''} (another root)`);
      if (found.length > 0) return { blocked: false, result: `reached ${found.join(', ')} (${pids.length} pids listed)` };
      return { blocked: true, result: `only pid dirs, none with another root (${pids.length} listed: ${pids.slice(0, 5).join(' ')})` };
    }),
    attempt('socket(AF_INET)', () => byErrno(native.probe('socket-inet', ''), o.sandbox === 'namespace' ? ' (no seccomp filter yet; own network namespace)' : ' (no seccomp filter yet)')),
    attempt('connect to 1.1.1.1:53', () => byErrno(native.probe('connect-inet', '1.1.1.1'))),
    attempt(`ptrace pid ${o.ptraceTarget} (outside the sandbox)`, () => byErrno(native.probe('ptrace', String(o.ptraceTarget)))),
    attempt('mount a tmpfs', () => byErrno(native.probe('mount', '/'))),
    attempt('execve /bin/sh', () => byErrno(native.probe('execve', '/bin/sh'))),
    attempt('setuid(0) after dropping to uid 65534', () => byErrno(native.probe('setuid-back', ''))),
    attempt(`FDFETCH on another instance's keeper.sock${o.otherKeeperSock === null ? ' (none given)' : ''}`, () => {
      if (o.otherKeeperSock === null) return { blocked: true, result: 'not tried: no --other-keeper-sock' };
      const fd = native.unixConnect(o.otherKeeperSock, 'seqpacket');
      try {
        native.setNonBlocking(fd, false);
        native.sendMsg(fd, encodeToKeeper({ type: 'fetch' }), []);
        const r = native.recvMsg(fd, Buffer.alloc(MAX_MESSAGE_SIZE), SCM_MAX_FD);
        for (const f of r?.fds ?? []) native.close(f);
        const got = r !== null && (r.bytes > 0 || r.fds.length > 0);
        return got ? { blocked: false, result: `got ${r.fds.length} fds` } : { blocked: true, result: 'connected, refused and disconnected' };
      } finally {
        native.close(fd);
      }
    }),
  ];
  process.stdout.write(JSON.stringify(rows));
  return 0;
}
