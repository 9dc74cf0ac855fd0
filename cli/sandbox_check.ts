// `virtiofs-keeper sandbox-check`: builds the worker's sandbox exactly as a worker does (the
// same launcher, then worker/sandbox.ts's enterSandbox, seccomp filter included, in a child
// process per attempt), then tries from inside what a compromised worker would, and prints a
// table of what was blocked. Exit code 0 when everything was blocked, 1 otherwise.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { native, C, STAT } from '../shared/native';
import { logger } from '../shared/log';
import { errorInfo } from '../shared/errors';
import { encodeToKeeper, MAX_MESSAGE_SIZE, SCM_MAX_FD } from '../shared/keeper_protocol';
import { KeeperClient } from '../shared/keeper_client';
import type { SandboxMode, SeccompAction } from '../shared/config';
import { enterSandbox, sandboxLauncher } from '../worker/sandbox';
import { at } from '../shared/pinned_dirs';

export interface ProbeRow { attempt: string; blocked: boolean; result: string }

export interface CheckOptions { sharedDir: string; sandbox: SandboxMode; seccomp: SeccompAction; otherKeeperSock: string | null }

interface ProbeInput {
  sharedDir: string; sandbox: SandboxMode; seccomp: SeccompAction; stateDir: string; ptraceTarget: number;
  hostParent: string; otherKeeperSock: string | null; attempt: number;
  /** The host directories above the state dir, nearest first ("/" last), with their dev:ino. */
  stateAncestors: { path: string; inode: string }[];
}

const BIN = path.join(__dirname, '..', '..', 'bin', 'virtiofs-keeper.js');

function inodeOf(p: string): string {
  const st = fs.statSync(p);
  return `${st.dev}:${st.ino}`;
}

/** One probe process: confined as a worker, it makes one attempt. A seccomp kill ends the
 * process, so every attempt gets a process of its own. */
async function runProbe(input: ProbeInput): Promise<ProbeRow> {
  const argv = [...sandboxLauncher(input.sandbox, process.geteuid?.() ?? 0), process.execPath, BIN, 'sandbox-probe', JSON.stringify(input)];
  const child = spawn(argv[0]!, argv.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, VFSK_LOG_FD: '2', ...(input.sandbox === 'namespace' ? { VFSK_OWN_MOUNT_NS: '1' } : {}) },
  });
  let text = '';
  let errText = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { text += d; });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { errText += d; });
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('close', (c, s) => resolve([c, s])));
  const name = attemptNames(input)[input.attempt]!;
  // unshare(1) dies of its child's signal: SIGSYS is the kernel's seccomp kill.
  if (signal === 'SIGSYS') return { attempt: name, blocked: true, result: 'killed by seccomp (SIGSYS)' };
  if (code === 0 && text === '') return { attempt: name, blocked: false, result: 'the probe was replaced by another program (execve succeeded)' };
  if (code !== 0) throw new Error(`the sandbox probe failed (exit ${code ?? signal}): it could not build the sandbox\n${errText}`);
  return JSON.parse(text) as ProbeRow;
}

/** The outer half: starts one probe per attempt the way the keeper starts a worker, prints the table. */
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
    // What '..' from the worker's pinned state dir fd must never reach.
    const stateAncestors: { path: string; inode: string }[] = [];
    for (let d = path.dirname(stateDir); ; d = path.dirname(d)) {
      stateAncestors.push({ path: d, inode: inodeOf(d) });
      if (d === '/') break;
    }
    const base = {
      sharedDir: path.resolve(o.sharedDir), sandbox: o.sandbox, seccomp: o.seccomp, stateDir, ptraceTarget,
      hostParent: inodeOf(path.dirname(path.resolve(o.sharedDir))), otherKeeperSock: o.otherKeeperSock, stateAncestors,
    };
    const rows: ProbeRow[] = [];
    for (let attempt = 0; attempt < attemptNames({ ...base, attempt: 0 }).length; attempt++) rows.push(await runProbe({ ...base, attempt }));
    out(`sandbox-check: --sandbox ${o.sandbox} --seccomp ${o.seccomp}, shared dir ${o.sharedDir}\n`);
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

type Attempt = [name: string, run: () => { blocked: boolean; result: string }];

const byErrno = (err: number, why = ''): { blocked: boolean; result: string } => ({ blocked: err !== 0, result: `${errnoText(err)}${why}` });

/** Every attempt, in table order. */
function attempts(o: ProbeInput): Attempt[] {
  return [
    ['read /etc/shadow', () => {
      const fd = native.openat(C.AT_FDCWD!, '/etc/shadow', C.O_RDONLY! | C.O_CLOEXEC!, 0);
      native.close(fd);
      return { blocked: false, result: 'opened' };
    }],
    [`open the share's parent (${path.dirname(o.sharedDir)})`, () => {
      const fd = native.openat(C.AT_FDCWD!, path.dirname(o.sharedDir), C.O_PATH! | C.O_DIRECTORY! | C.O_CLOEXEC!, 0);
      const st = Buffer.alloc(STAT.SIZE);
      native.fstatat(fd, '', C.AT_EMPTY_PATH!, st);
      native.close(fd);
      const same = `${st.readBigUInt64LE(STAT.dev)}:${st.readBigUInt64LE(STAT.ino)}` === o.hostParent;
      return same ? { blocked: false, result: 'opened the host directory' } : { blocked: true, result: 'only a directory inside the share' };
    }],
    ['escape via the pinned state dir (openat ../..)', () => {
      // The worker's fd of its state dir (shared/pinned_dirs.ts), climbed level by level.
      const dirFd = at(path.join(o.stateDir, 'x')).dirFd;
      const reached = o.stateAncestors.filter((a, k) => inodeAt(dirFd, Array(k + 1).fill('..').join('/')) === a.inode).map((a) => a.path);
      if (reached.length > 0) return { blocked: false, result: `reached the host's ${reached.join(' and ')}` };
      const stays = inodeAt(dirFd, '..') === inodeAt(dirFd, '.');
      return { blocked: true, result: stays ? "'..' stays in the state dir" : "'..' reaches no host directory above it" };
    }],
    ['escape via the pinned /proc (../../sysrq-trigger or ../../1/root)', () => {
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
    }],
    ['socket(AF_INET)', () => byErrno(native.probe('socket-inet', ''), o.seccomp === 'none' ? ' (no seccomp filter)' : '')],
    ['connect to 1.1.1.1:53', () => byErrno(native.probe('connect-inet', '1.1.1.1'))],
    [`ptrace pid ${o.ptraceTarget} (outside the sandbox)`, () => byErrno(native.probe('ptrace', String(o.ptraceTarget)))],
    ['mount a tmpfs', () => byErrno(native.probe('mount', '/'))],
    ['execve /bin/sh', () => byErrno(native.probe('execve', '/bin/sh'))],
    ['setuid(0) after dropping to uid 65534', () => byErrno(native.probe('setuid-back', ''))],
    [`FDFETCH on another instance's keeper.sock${o.otherKeeperSock === null ? ' (none given)' : ''}`, () => {
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
    }],
  ];
}

function attemptNames(o: ProbeInput): string[] {
  return attempts(o).map(([name]) => name);
}

/** The inner half (`sandbox-probe JSON`): confines itself as a worker does, then makes one attempt. */
export function sandboxProbe(json: string): number {
  const o = JSON.parse(json) as ProbeInput;
  const log = logger('sandbox-check');
  const chosen = attempts(o)[o.attempt];
  if (chosen === undefined) {
    log.error({ attempt: o.attempt }, 'no such attempt');
    return 2;
  }
  try {
    native.raiseNoFileLimit(1_000_000);
    enterSandbox(o.sandbox, o.seccomp, o.sharedDir, o.stateDir, log);
  } catch (e) {
    log.error({ err: errorInfo(e) }, 'cannot build the sandbox');
    return 2;
  }
  const [name, run] = chosen;
  let row: ProbeRow;
  try {
    row = { attempt: name, ...run() };
  } catch (e) {
    const code = (e as { code?: string }).code ?? (e as Error).message;
    row = { attempt: name, blocked: true, result: String(code) };
  }
  process.stdout.write(JSON.stringify(row));
  return 0;
}
