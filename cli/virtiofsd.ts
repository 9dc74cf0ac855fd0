// The virtiofsd-compatible entry point (`virtiofsd-keeper ...`, `virtiofs-keeper virtiofsd ...`):
// what libvirt, Kata and others exec in place of virtiofsd. The options are parsed by
// virtiofsd_args.ts; this file acts on them:
//
//  - inherited fds: every fd above 2 that came to us open across exec is handled on purpose
//    (see inheritedFds for how they are told from Node.js's own).
//    The --fd socket becomes the keeper's vhost.listen. Any other (libvirt's pid file at fd 5,
//    with a POSIX lock that libvirt reads as "alive") is kept open by this process, the one
//    that was exec'd, for its whole life: closing any fd of that file would drop the lock. All
//    are made close-on-exec, so workers never hold them.
//  - logs: pino records as human-readable lines on stderr (libvirt hands stderr to virtlogd),
//    whatever stderr is; VFSK_LOG_FORMAT=json keeps JSON lines there.
//  - the state directory is derived from the socket (under /run/virtiofs-keeper/) and removed at
//    a clean exit; workers stay in our process group, so a SIGTERM or SIGKILL to the group
//    reaches them too, and SIGTERM stops everything cleanly.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { DEFAULT_STATE_ROOT } from '../shared/config';
import { ConfigurationError, errorInfo } from '../shared/errors';
import { CAPABILITIES, VIRTIOFSD_USAGE, parseVirtiofsdArgs, THREAD_POOL_NOTE, type VirtiofsdServe } from './virtiofsd_args';

/** One line of /proc/net/unix for a socket inode: is it a listening stream socket, and its path. */
export interface UnixSocketInfo { listening: boolean; stream: boolean; path: string | null }

/** Finds the socket `inode` in the text of /proc/net/unix. */
export function parseProcNetUnix(text: string, inode: number): UnixSocketInfo | null {
  for (const line of text.split('\n').slice(1)) {
    // Num RefCount Protocol Flags Type St Inode [Path]
    const f = line.trim().split(/\s+/);
    if (f.length < 7 || Number(f[6]) !== inode) continue;
    const flags = parseInt(f[3]!, 16);
    const type = parseInt(f[4]!, 16);
    return { listening: (flags & 0x10000) !== 0, stream: type === 1, path: f.length > 7 ? f.slice(7).join(' ') : null };
  }
  return null;
}

/** A state directory name for a socket: readable, unique per path, short enough for keeper.sock. */
export function stateNameForSocket(socketPath: string | null, fallback: string): string {
  if (socketPath === null || socketPath.startsWith('@')) return fallback;
  const clean = (s: string): string => s.replace(/\.sock$/, '').replace(/[^A-Za-z0-9._-]/g, '_');
  const readable = `${clean(path.basename(path.dirname(socketPath)))}-${clean(path.basename(socketPath))}`;
  const hash = createHash('sha256').update(socketPath).digest('hex').slice(0, 8);
  // /run/virtiofs-keeper/<name>/keeper.sock must fit in 107 bytes.
  return `${readable.slice(-60)}-${hash}`;
}

interface Inherited { fd: number; target: string }

/**
 * fds above 2 that we inherited open. Node.js marks fds 0-15 close-on-exec at start-up
 * (libuv's uv_disable_stdio_inheritance), so below 16 the flag cannot tell ours from inherited
 * ones; Node.js's own fds at this point are epoll/eventfd anon inodes, /dev/null and pipes with
 * both ends here. Anything else, or anything without close-on-exec, came from whoever exec'd us.
 */
function inheritedFds(native: typeof import('../shared/native').native): Inherited[] {
  const all: Array<Inherited & { cloexec: boolean }> = [];
  for (const name of fs.readdirSync('/proc/self/fd')) {
    const fd = Number(name);
    if (!Number.isInteger(fd) || fd <= 2) continue;
    try {
      all.push({ fd, target: fs.readlinkSync(`/proc/self/fd/${fd}`), cloexec: native.fdFlags(fd).cloexec });
    } catch {
      continue; // the directory's own fd, closed meanwhile
    }
  }
  const ends = new Map<string, number>();
  for (const e of all) if (e.target.startsWith('pipe:')) ends.set(e.target, (ends.get(e.target) ?? 0) + 1);
  const nodeOwn = (e: Inherited): boolean => e.target.startsWith('anon_inode:') || e.target === '/dev/null' || (ends.get(e.target) ?? 0) > 1;
  return all.filter((e) => !e.cloexec || !nodeOwn(e)).map(({ fd, target }) => ({ fd, target }));
}

function version(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The socket behind an inherited --fd: must be a listening UNIX stream socket. */
function inspectListenFd(fd: number): UnixSocketInfo {
  let target: string;
  try {
    target = fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    throw new ConfigurationError(`--fd ${fd}: no such open fd`);
  }
  const m = /^socket:\[(\d+)\]$/.exec(target);
  if (m === null) throw new ConfigurationError(`--fd ${fd} is not a socket (${target})`);
  const info = parseProcNetUnix(fs.readFileSync('/proc/net/unix', 'utf8'), Number(m[1]));
  if (info === null) throw new ConfigurationError(`--fd ${fd} is not a UNIX socket`);
  if (!info.stream || !info.listening) throw new ConfigurationError(`--fd ${fd} is not a listening UNIX stream socket`);
  return info;
}

/** A group name or number → gid (from /etc/group). */
function groupId(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  for (const line of fs.readFileSync('/etc/group', 'utf8').split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined) return Number(gid);
  }
  throw new ConfigurationError(`--socket-group: no group '${group}'`);
}

async function serve(o: VirtiofsdServe): Promise<number> {
  // Logging is set up from the environment, and the workers inherit it.
  process.env.VFSK_LOG_FD = '2';
  process.env.VFSK_LOG_FORMAT ??= 'text';
  process.env.VFSK_LOG_LEVEL = o.logLevel;
  const { native } = await import('../shared/native');
  const { logger } = await import('../shared/log');
  const log = logger('virtiofsd');
  const inherited = inheritedFds(native);
  let socketPath: string | null = o.socketPath !== null ? path.resolve(o.socketPath) : null;
  if (o.fd !== null) {
    const info = inspectListenFd(o.fd);
    socketPath = info.path;
  }
  for (const { fd, target } of inherited) {
    // Kept for our whole life, never passed on: see the header.
    native.setCloexec(fd, true);
    if (fd !== o.fd) log.info({ fd, target }, 'keeping an inherited fd open for the life of this process');
  }
  const name = stateNameForSocket(socketPath, `fd${o.fd ?? 0}-${process.pid}`);
  const stateDir = path.join(DEFAULT_STATE_ROOT, name);
  if (o.threadPoolSize !== null) log.info({ threadPoolSize: o.threadPoolSize }, `--thread-pool-size: ${THREAD_POOL_NOTE}`);
  log.info({ dialect: o.dialect, fd: o.fd, socketPath, stateDir, cache: o.cache, xattr: o.xattr, posixLocks: o.posixLocks, flockLocks: o.flockLocks }, 'virtiofsd-compatible start');
  const { keeperCommand } = await import('./serve');
  return keeperCommand({
    sharedDir: path.resolve(o.sharedDir), socketPath: socketPath ?? `(inherited fd ${o.fd})`, stateDir, cache: o.cache,
    numRequestQueues: 1, keepListening: false, xattr: o.xattr, standby: true, maxLockWaits: 1024, readonly: o.readonly,
    inodeFileHandles: o.inodeFileHandles, sandbox: o.sandbox, seccomp: o.seccomp,
    // Not used: the embedded keeper trusts the workers it spawns by their socketpair.
    workerPeers: 'unit', workerUnits: [],
  }, true, {
    ...(o.fd !== null ? { listenFd: o.fd } : {}),
    removeStateDir: true,
    posixLocks: o.posixLocks, flockLocks: o.flockLocks, readdirplus: o.readdirplus,
    keepOpenFds: inherited.map((e) => e.fd).filter((fd) => fd !== o.fd),
    ...(o.rlimitNofile !== null ? { rlimitNofile: o.rlimitNofile } : {}),
    onStarted: () => {
      if (o.socketGroup !== null && socketPath !== null) fs.chownSync(socketPath, -1, groupId(o.socketGroup));
    },
  });
}

/** Runs virtiofsd's command line; sets process.exitCode (1 for a refused command line). */
export async function virtiofsdMain(argv: string[]): Promise<void> {
  try {
    const cmd = parseVirtiofsdArgs(argv);
    switch (cmd.kind) {
      case 'help': process.stdout.write(VIRTIOFSD_USAGE); return;
      case 'version': process.stdout.write(`virtiofsd-keeper ${version()} (virtiofs-keeper, a crash-surviving virtiofsd)\n`); return;
      case 'capabilities': process.stdout.write(`${JSON.stringify(CAPABILITIES, null, 2)}\n`); return;
      case 'serve': process.exitCode = await serve(cmd); return;
    }
  } catch (e) {
    const info = errorInfo(e);
    process.stderr.write(`virtiofsd-keeper: ${info.message}${info.kind === 'config' ? '' : ` (${info.kind})`}\n`);
    if (info.kind === 'config') process.stderr.write('Try --help.\n');
    process.exitCode = 1;
  }
}
