// virtiofsd's command line, both dialects, parsed into what virtiofs-keeper does with it. Pure:
// no I/O, no process state; cli/virtiofsd.ts acts on the result.
//
//  - the Rust virtiofsd's options (`--shared-dir DIR --socket-path PATH|--fd N --cache MODE ...`,
//    `--opt=value` or `--opt value`);
//  - the C virtiofsd's legacy form that libvirt 9.0 uses (`--fd=N -o source=DIR,cache=MODE,
//    xattr,flock,posix_lock --thread-pool-size=N`, `-d`, `-f`), which the Rust virtiofsd also
//    takes as `-o`.
//
// An option whose meaning we do not provide is an error (VirtiofsdArgsError, exit 1) naming it
// and why: never accepted and silently ignored. The few accepted without effect are those whose
// meaning already holds here (`-f`, `norace`, `--no-killpriv-v2`...), each said below and in the
// README's table.
import { DEFAULT_INODE_FILE_HANDLES, INODE_FILE_HANDLES, type CacheMode, type InodeFileHandles, type SandboxMode, type SeccompAction } from '../shared/config';
import { ConfigurationError } from '../shared/errors';

export class VirtiofsdArgsError extends ConfigurationError {}

/** pino level names (virtiofsd's `off` is pino's `silent`). */
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'silent';

export interface VirtiofsdServe {
  kind: 'serve';
  sharedDir: string;
  /** Exactly one of socketPath (we bind it) and fd (a listening socket someone bound for us). */
  socketPath: string | null;
  fd: number | null;
  /** Group to give the socket we bind (--socket-group), a name or a number. */
  socketGroup: string | null;
  cache: CacheMode;
  xattr: boolean;
  posixLocks: boolean;
  flockLocks: boolean;
  readdirplus: boolean;
  sandbox: SandboxMode;
  seccomp: SeccompAction;
  /** --thread-pool-size, validated; see THREAD_POOL_NOTE. */
  threadPoolSize: number | null;
  /** --readonly: requests that would change the export get EROFS. */
  readonly: boolean;
  /** RLIMIT_NOFILE to raise to (null: our default, as high as allowed). */
  rlimitNofile: number | null;
  logLevel: LogLevel;
  /** Which dialect set the shared directory (for logs). */
  dialect: 'rust' | 'legacy';
  /** How inodes are named (see InodeFileHandles in shared/config.ts). */
  inodeFileHandles: InodeFileHandles;
}

export type VirtiofsdCommand = { kind: 'help' } | { kind: 'version' } | { kind: 'capabilities' } | VirtiofsdServe;

/** What --thread-pool-size does here (README). */
export const THREAD_POOL_NOTE = 'accepted and checked, no effect: a worker serves requests on one event loop and runs '
  + 'blocking syscalls on its own libuv pool (16 threads, sized for parked lock waits)';

/** The vhost-user backend capabilities we print (docs/interop/vhost-user.json, type "fs"):
 * "separate-options" (we take the Rust virtiofsd's options); not "migrate-precopy" (no
 * SET_DEVICE_STATE_FD migration). */
export const CAPABILITIES = { type: 'fs', features: ['separate-options'] } as const;

/** Options we refuse, with why. */
const UNSUPPORTED_FLAGS: Record<string, string> = {
  '--posix-acl': 'POSIX ACLs are not supported (no FUSE_POSIX_ACL)',
  '--syslog': 'logging to syslog is not supported; logs go to stderr',
  '--allow-direct-io': 'honouring the guest\'s O_DIRECT is not supported',
  '--writeback': 'the writeback cache is not supported (FUSE_WRITEBACK_CACHE changes open/write semantics)',
  '--killpriv-v2': 'KILLPRIV_V2 is not supported: the guest kernel clears suid/sgid itself',
  '--security-label': 'security labels are not supported',
  '--allow-mmap': 'DAX/mmap of cache=never files is not supported',
  '--announce-submounts': 'announcing submounts (FUSE_SUBMOUNTS) is not supported: the guest sees one filesystem',
  '--preserve-noatime': 'O_NOATIME is not passed through',
  '--migration-verify-handles': 'migration is not supported',
  '--migration-confirm-paths': 'migration is not supported',
};
const UNSUPPORTED_VALUED: Record<string, string> = {
  '--tag': 'advertising the tag (VHOST_USER_PROTOCOL_F_CONFIG) is not supported; set the tag on the frontend',
  '--xattrmap': 'xattr mapping is not supported',
  '--modcaps': 'changing the capability set is not supported',
  '--uid-map': 'user namespaces with ID maps are not supported',
  '--gid-map': 'user namespaces with ID maps are not supported',
  '--translate-uid': 'UID translation is not supported',
  '--translate-gid': 'GID translation is not supported',
  '--migration-mode': 'migration is not supported',
  '--migration-on-error': 'migration is not supported',
};
/** Accepted and without effect: what they ask for is how we work anyway. */
const NO_EFFECT_FLAGS = new Set(['--no-announce-submounts', '--no-killpriv-v2', '-f']);

const VALUED = new Set(['--shared-dir', '--socket-path', '--socket', '--fd', '--socket-group', '--thread-pool-size', '--sandbox',
  '--seccomp', '--cache', '--log-level', '--rlimit-nofile', '--inode-file-handles', '-o', ...Object.keys(UNSUPPORTED_VALUED)]);

function fail(msg: string): never {
  throw new VirtiofsdArgsError(msg);
}

function integer(opt: string, v: string, min: number, max: number): number {
  if (!/^\d+$/.test(v)) fail(`${opt}: '${v}' is not a number`);
  const n = Number(v);
  if (n < min || n > max) fail(`${opt}: ${n} is out of range ${min}..${max}`);
  return n;
}

function oneOf<T extends string>(opt: string, v: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(v)) fail(`${opt}: '${v}' is not one of ${allowed.join(', ')}`);
  return v as T;
}

const RUST_LOG_LEVELS: Record<string, LogLevel> = { error: 'error', warn: 'warn', info: 'info', debug: 'debug', trace: 'trace', off: 'silent' };
const LEGACY_LOG_LEVELS: Record<string, LogLevel> = { err: 'error', warn: 'warn', info: 'info', debug: 'debug' };

interface Draft {
  sharedDir: string | null; socketPath: string | null; fd: number | null; socketGroup: string | null; cache: CacheMode;
  xattr: boolean; posixLocks: boolean; flockLocks: boolean; readdirplus: boolean; sandbox: SandboxMode; seccomp: SeccompAction;
  threadPoolSize: number | null; readonly: boolean; rlimitNofile: number | null; logLevel: LogLevel; debug: boolean; dialect: 'rust' | 'legacy';
  inodeFileHandles: InodeFileHandles; help: boolean; version: boolean; capabilities: boolean;
}

/** One `-o a,b=c,...` list (the C virtiofsd's options; the Rust virtiofsd's compat subset). */
function parseLegacy(d: Draft, list: string): void {
  for (const item of list.split(',')) {
    const eq = item.indexOf('=');
    const key = eq < 0 ? item : item.slice(0, eq);
    const value = eq < 0 ? null : item.slice(eq + 1);
    const o = `-o ${key}`;
    if (value !== null) {
      switch (key) {
        case 'source': if (value === '') fail('-o source= needs a directory'); d.sharedDir = value; d.dialect = 'legacy'; continue;
        case 'vhost_user_socket': if (value === '') fail('-o vhost_user_socket= needs a path'); d.socketPath = value; continue;
        case 'cache':
          if (value === 'none') d.cache = 'never';
          else if (value === 'auto' || value === 'always') d.cache = value;
          else if (value === 'metadata') fail('-o cache=metadata is not supported (auto, always, none)');
          else fail(`-o cache: '${value}' is not one of auto, always, none`);
          continue;
        case 'sandbox': d.sandbox = oneOf(o, value, ['namespace', 'chroot'] as const); continue;
        case 'log_level': case 'loglevel': {
          const l = LEGACY_LOG_LEVELS[value];
          if (l === undefined) fail(`${o}: '${value}' is not one of err, warn, info, debug`);
          d.logLevel = l;
          continue;
        }
        case 'xattrmap': fail('-o xattrmap: xattr mapping is not supported');
        case 'modcaps': fail('-o modcaps: changing the capability set is not supported');
        case 'timeout': fail('-o timeout: not supported (the cache mode sets the timeouts)');
        default: fail(`unknown option '-o ${item}'`);
      }
    }
    switch (key) {
      case 'xattr': d.xattr = true; continue;
      case 'no_xattr': d.xattr = false; continue;
      case 'flock': d.flockLocks = true; continue;
      case 'no_flock': d.flockLocks = false; continue;
      case 'posix_lock': d.posixLocks = true; continue;
      case 'no_posix_lock': d.posixLocks = false; continue;
      case 'readdirplus': d.readdirplus = true; continue;
      case 'no_readdirplus': d.readdirplus = false; continue;
      case 'debug': d.debug = true; continue;
      // No effect: what they ask for is how we work (no racy fallback, no writeback cache, no
      // O_DIRECT passthrough, no KILLPRIV_V2, no ACLs, no labels).
      case 'norace': case 'no_writeback': case 'no_allow_direct_io': case 'no_killpriv_v2': case 'no_posix_acl':
      case 'no_security_label': case 'no_announce_submounts':
        continue;
      case 'writeback': fail(`-o writeback: ${UNSUPPORTED_FLAGS['--writeback']}`);
      case 'allow_direct_io': fail(`-o allow_direct_io: ${UNSUPPORTED_FLAGS['--allow-direct-io']}`);
      case 'killpriv_v2': fail(`-o killpriv_v2: ${UNSUPPORTED_FLAGS['--killpriv-v2']}`);
      case 'posix_acl': fail(`-o posix_acl: ${UNSUPPORTED_FLAGS['--posix-acl']}`);
      case 'security_label': fail(`-o security_label: ${UNSUPPORTED_FLAGS['--security-label']}`);
      case 'announce_submounts': fail(`-o announce_submounts: ${UNSUPPORTED_FLAGS['--announce-submounts']}`);
      case '': fail('empty item in -o');
      default: fail(`unknown option '-o ${item}'`);
    }
  }
}

function applyValued(d: Draft, opt: string, v: string): void {
  switch (opt) {
    case '--shared-dir': if (v === '') fail('--shared-dir needs a directory'); d.sharedDir = v; d.dialect = 'rust'; return;
    case '--socket-path': case '--socket': if (v === '') fail(`${opt} needs a path`); d.socketPath = v; return;
    case '--fd': d.fd = integer(opt, v, 0, 2 ** 31 - 1); return;
    case '--socket-group': if (v === '') fail('--socket-group needs a group'); d.socketGroup = v; return;
    case '--thread-pool-size': d.threadPoolSize = integer(opt, v, 0, 1_000_000); return;
    case '--sandbox': d.sandbox = oneOf(opt, v, ['namespace', 'chroot', 'none'] as const); return;
    case '--seccomp': d.seccomp = oneOf(opt, v, ['kill', 'log', 'trap', 'none'] as const); return;
    case '--cache':
      if (v === 'metadata') fail('--cache metadata is not supported (auto, always, never)');
      d.cache = oneOf(opt, v, ['auto', 'always', 'never'] as const);
      return;
    case '--log-level': {
      const l = RUST_LOG_LEVELS[v];
      if (l === undefined) fail(`--log-level: '${v}' is not one of ${Object.keys(RUST_LOG_LEVELS).join(', ')}`);
      d.logLevel = l;
      return;
    }
    case '--rlimit-nofile': {
      const n = integer(opt, v, 0, 2 ** 31 - 1);
      if (n === 0) fail('--rlimit-nofile 0 (leave the limit unchanged) is not supported: the keeper and the worker size their fd budget from the limit they raise');
      d.rlimitNofile = n;
      return;
    }
    case '--inode-file-handles': d.inodeFileHandles = oneOf(opt, v, INODE_FILE_HANDLES); return;
    case '-o': parseLegacy(d, v); return;
    default: fail(`${opt}: ${UNSUPPORTED_VALUED[opt] ?? 'unknown option'}`);
  }
}

/** Parses virtiofsd's argv (without the program name). Throws VirtiofsdArgsError. */
export function parseVirtiofsdArgs(argv: readonly string[]): VirtiofsdCommand {
  const d: Draft = {
    sharedDir: null, socketPath: null, fd: null, socketGroup: null, cache: 'auto',
    // virtiofsd's defaults: no xattrs unless asked. Locks and READDIRPLUS are offered unless
    // turned off (we serve both lock kinds, and they survive worker crashes).
    xattr: false, posixLocks: true, flockLocks: true, readdirplus: true,
    // The Rust virtiofsd's defaults.
    sandbox: 'namespace', seccomp: 'kill',
    threadPoolSize: null, readonly: false, rlimitNofile: null, logLevel: 'info', debug: false, dialect: 'rust',
    inodeFileHandles: DEFAULT_INODE_FILE_HANDLES, help: false, version: false, capabilities: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '-h' || arg === '--help') { d.help = true; continue; }
    if (arg === '-V' || arg === '--version') { d.version = true; continue; }
    if (arg === '--print-capabilities') { d.capabilities = true; continue; }
    if (arg === '-d') { d.debug = true; continue; }
    if (arg === '--xattr') { d.xattr = true; continue; }
    if (arg === '--readonly') { d.readonly = true; continue; }
    if (arg === '--no-readdirplus') { d.readdirplus = false; continue; }
    if (NO_EFFECT_FLAGS.has(arg)) continue;
    if (arg in UNSUPPORTED_FLAGS) fail(`${arg}: ${UNSUPPORTED_FLAGS[arg]}`);
    let opt: string;
    let value: string | null = null;
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      opt = eq < 0 ? arg : arg.slice(0, eq);
      if (eq >= 0) value = arg.slice(eq + 1);
      if (eq >= 0 && (opt in UNSUPPORTED_FLAGS || NO_EFFECT_FLAGS.has(opt) || ['--xattr', '--readonly', '--print-capabilities', '--help', '--version', '--no-readdirplus'].includes(opt))) {
        fail(`${opt} takes no value`);
      }
    } else if (arg.startsWith('-o') && arg.length > 2) {
      opt = '-o';
      value = arg.slice(2);
    } else if (arg.startsWith('-')) {
      opt = arg;
    } else {
      fail(`unexpected argument '${arg}'`);
    }
    if (!VALUED.has(opt)) fail(`unknown option '${opt}'`);
    if (opt === '--inode-file-handles' && value === null) fail('--inode-file-handles needs =VALUE (--inode-file-handles=never)');
    if (value === null) {
      if (i + 1 >= argv.length) fail(`${opt} needs a value`);
      value = argv[++i]!;
    }
    applyValued(d, opt, value);
  }
  if (d.help) return { kind: 'help' };
  if (d.version) return { kind: 'version' };
  if (d.capabilities) return { kind: 'capabilities' };
  if (d.sharedDir === null) fail('no shared directory: give --shared-dir DIR (or -o source=DIR)');
  if (d.socketPath === null && d.fd === null) fail('no socket: give --socket-path PATH or --fd N');
  if (d.socketPath !== null && d.fd !== null) fail('--socket-path and --fd exclude each other');
  if (d.fd !== null && d.fd <= 2) fail(`--fd ${d.fd}: not a socket we can take (0, 1 and 2 are stdio)`);
  if (d.socketGroup !== null && d.fd !== null) fail('--socket-group cannot apply to an inherited socket (--fd)');
  return {
    kind: 'serve', sharedDir: d.sharedDir, socketPath: d.socketPath, fd: d.fd, socketGroup: d.socketGroup, cache: d.cache,
    xattr: d.xattr, posixLocks: d.posixLocks, flockLocks: d.flockLocks, readdirplus: d.readdirplus, sandbox: d.sandbox,
    seccomp: d.seccomp, threadPoolSize: d.threadPoolSize, readonly: d.readonly, rlimitNofile: d.rlimitNofile, logLevel: d.debug ? 'debug' : d.logLevel,
    dialect: d.dialect, inodeFileHandles: d.inodeFileHandles,
  };
}

export const VIRTIOFSD_USAGE = `Usage: virtiofsd-keeper [OPTIONS]
A drop-in for virtiofsd: serves a shared directory to a vhost-user-fs frontend, surviving its own crashes.

  --shared-dir DIR            directory to share (legacy: -o source=DIR)
  --socket-path PATH          vhost-user socket to create and listen on (alias --socket)
  --fd N                      listening socket inherited from the caller (e.g. libvirt)
  --socket-group GROUP        give the socket to this group
  --cache auto|always|never   guest caching (legacy: -o cache=auto|always|none)
  --xattr                     support extended attributes (default: off, as in virtiofsd)
  --no-readdirplus            do not offer READDIRPLUS
  --readonly                  refuse every change to the export (EROFS)
  --sandbox namespace|chroot|none
                              confine the worker (default namespace; see the README)
  --seccomp kill|log|trap|none
                              a worker syscall outside its allow-list: kill (default),
                              log (allowed, kernel audit log), trap (ENOSYS, logged), none
  --rlimit-nofile N           raise RLIMIT_NOFILE to N (default: as high as allowed)
  --thread-pool-size N        accepted, no effect (see the README)
  --inode-file-handles=never|prefer|mandatory
                              name inodes by file handles instead of an fd each (default prefer)
  --log-level LEVEL           error, warn, info, debug, trace, off (-d: debug)
  --print-capabilities        print the vhost-user backend capabilities (JSON) and exit
  -o LIST                     legacy options: source=, cache=, xattr|no_xattr, flock|no_flock,
                              posix_lock|no_posix_lock, readdirplus|no_readdirplus, sandbox=,
                              log_level=, vhost_user_socket=, debug, norace, no_* of refused ones
  -f                          accepted (we always run in the foreground)
  -V, --version               print the version and exit
  -h, --help                  print this help and exit

Refused (exit 1): --posix-acl --syslog --allow-direct-io --writeback --killpriv-v2
--security-label --allow-mmap --announce-submounts --preserve-noatime --tag --xattrmap --modcaps
--uid-map --gid-map --translate-uid --translate-gid --migration-*, and their -o forms.
`;
