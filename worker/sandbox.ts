// The worker's confinement, entered once it is fully loaded and connected to its keeper, before
// it reads a byte from the guest or QEMU (a standby before it waits for its takeover):
//
// - namespace (default): the keeper started us in new mount, pid, net, ipc and uts namespaces
//   (unshare(1), sandboxLauncher below; under systemd the worker unit's PrivateNetwork/
//   PrivateIPC/ProtectHostname/ProtectProc and its own mount namespace, no pid namespace). Here the shared directory becomes "/" by
//   pivot_root, as a read-only, noexec bind mount: the worker serves the guest through the
//   keeper's fds, never through its own root. The old root is detached: nothing else of the host
//   is reachable by path.
// - chroot: chroot into the shared directory (no namespaces needed).
// - none: as before, logged as a warning.
//
// What the worker still reaches outside, through fds opened before (shared/pinned_dirs.ts): the
// state directory (journal, compaction), /proc/self/fd (re-opening inodes) and /proc/self/fdinfo
// (GETLK). A plain fd opened before the pivot would be a way out: openat(fd, "../..") climbs to
// the top of the host mount it is on (/, /tmp: the host's files; the host's /proc: /proc/sys,
// every process). So each is opened on a mount attached nowhere, from whose root ".." goes
// nowhere: a clone of the state dir's mount rooted at the state dir, and a procfs of our own
// (subset=pid, hidepid=invisible; in namespace mode of our own pid namespace, so it lists only
// ourselves). Then every capability but PASSTHROUGH_CAPS leaves the bounding, permitted and
// effective sets, and last the seccomp filter (worker/seccomp_policy.ts) is installed on every
// thread: from then on a syscall outside the allow-list kills the worker (--seccomp kill; trap
// and log for finding what a new Node.js version needs).
//
// No lazy loading: the worker's whole module graph is imported statically by worker.ts before
// this runs (cli/main.ts imports it, then calls workerMain), and Node's built-in modules are in
// its binary. After the pivot a require() of a file not yet loaded could not find it; the guard
// below turns that into a BugError naming the module (test/crash/sandbox.test.ts asserts the
// worker's module list is complete before the pivot).
import Module from 'node:module';
import type { Logger } from '../shared/log';
import { native, C } from '../shared/native';
import { pinDir, pinDirFd } from '../shared/pinned_dirs';
import { BugError, errorInfo } from '../shared/errors';
import type { SandboxMode, SeccompAction } from '../shared/config';
import { seccompRules } from './seccomp_policy';
import { PASSTHROUGH_CAPS, capMask } from '../shared/capabilities';

/** The argv prefix that starts a worker in its own namespaces for `mode` (embedded mode). With
 * --pid, unshare(1) forks the worker as PID 1 of a new pid namespace and stays its parent: it
 * exits (passing on the worker's exit code or killing itself with its signal) only once the
 * worker and everything in its namespace are gone, so the keeper reaping it still means "the
 * predecessor is dead". --kill-child: if unshare itself is killed, so is the worker. The
 * worker's real pid reaches the keeper with its first keeper.sock message (supervisor.ts). */
export function sandboxLauncher(mode: SandboxMode, euid: number): string[] {
  if (mode !== 'namespace') return [];
  return ['/usr/bin/unshare', '--mount', '--net', '--ipc', '--uts', '--pid', '--fork', '--kill-child', '--propagation', 'private',
    ...(euid === 0 ? [] : ['--user', '--map-root-user']), '--'];
}

/** PID 1 of a pid namespace (the worker under sandboxLauncher) ignores every signal it has no
 * handler for when sent from inside its namespace (its own SIGKILL included), and SIGTERM and
 * SIGINT even from outside. So it handles SIGTERM as the default would (die at once, code
 * 128+15: it cannot die of a signal it sends itself; supervisor.ts reads that code as SIGTERM),
 * natively, since a standby waits for its takeover in a blocking read where no JS handler would
 * run; and its crash points exit with native.exitNow (shared/crash_points.ts). */
export function actAsInit(): void {
  if (process.pid !== 1) return;
  native.exitOnSigterm();
}

let entered: SandboxMode | null = null;

/** Confines this process (see the header). */
export function enterSandbox(mode: SandboxMode, seccomp: SeccompAction, sharedDir: string, stateDir: string, log: Logger): void {
  if (entered !== null) throw new BugError(`sandbox entered twice (${entered}, then ${mode})`);
  pinOutside(mode, stateDir, log);
  // The worker unit declares its own mount namespace (VFSK_OWN_MOUNT_NS=1): systemd's is
  // unreadable from inside the unit.
  if (mode === 'namespace') native.pivotRoot(sharedDir, process.env.VFSK_OWN_MOUNT_NS === '1');
  else if (mode === 'chroot') native.chrootTo(sharedDir);
  else log.warn('the worker runs unconfined (--sandbox none): it sees the whole host filesystem');
  if (process.geteuid?.() === 0) native.limitCapabilities(capMask(PASSTHROUGH_CAPS), capMask(PASSTHROUGH_CAPS));
  // Another instance's worker runs as the same uid with the same capabilities: without this it
  // could open our fds (guest memory included) through /proc/PID/fd.
  if (mode !== 'none') native.setNotDumpable();
  entered = mode;
  if (mode !== 'none') forbidLazyLoading();
  if (seccomp === 'none') {
    log.warn('the worker runs without a seccomp filter (--seccomp none)');
  } else {
    // For deriving the allow-list only (docs/ARCHITECTURE.md, "Security model"): every worker of
    // a test run lets refused calls through and the kernel log names them.
    const derive = process.env.VFSK_SECCOMP_DERIVE === 'log';
    if (derive) log.warn('VFSK_SECCOMP_DERIVE=log: seccomp logs instead of refusing (for deriving the allow-list)');
    native.seccompInstall(seccompRules(process.pid), derive ? 'log' : seccomp, Number(process.env.VFSK_LOG_FD ?? 1));
  }
  log.info({ sandbox: mode, seccomp, sharedDir }, 'worker confined');
}

/** Pins the directories reached outside the root (see the header). */
function pinOutside(mode: SandboxMode, stateDir: string, log: Logger): void {
  if (mode === 'none') {
    for (const d of [stateDir, '/proc/self/fd', '/proc/self/fdinfo']) pinDir(d);
    return;
  }
  pinDetached(mode, stateDir, () => native.detachedTree(stateDir), log);
  let proc = -1;
  const openProc = (sub: string) => (): number => {
    if (proc < 0) proc = native.detachedProc();
    return native.openat(proc, sub, C.O_PATH! | C.O_DIRECTORY! | C.O_CLOEXEC!, 0);
  };
  try {
    pinDetached(mode, '/proc/self/fd', openProc('self/fd'), log);
    // GETLK finds which lock owner holds a lock in its description's fdinfo (worker/fs/locks.ts).
    pinDetached(mode, '/proc/self/fdinfo', openProc('self/fdinfo'), log);
  } finally {
    // Its root stays reachable as '../..' of both: nothing is lost by closing it.
    if (proc >= 0) native.close(proc);
  }
}

/** pinDirFd(dir, open()); in chroot mode, when that is refused (no CAP_SYS_ADMIN), a plain pin
 * that '..' can climb out of, logged as a warning (`sandbox-check` shows it NOT BLOCKED). */
function pinDetached(mode: SandboxMode, dir: string, open: () => number, log: Logger): void {
  try {
    pinDirFd(dir, open());
  } catch (e) {
    if (mode === 'namespace') throw e;
    log.warn({ err: errorInfo(e), dir }, "cannot pin a directory on a detached mount: '..' from its fd reaches the host");
    pinDir(dir);
  }
}

/** After the pivot, a require() that needs a file not loaded yet cannot find it: that is a bug,
 * reported as one with the module's name (see the header). Loaded modules still resolve. */
function forbidLazyLoading(): void {
  const M = Module as unknown as { _load: (request: string, parent: unknown, isMain: boolean) => unknown };
  const load = M._load;
  M._load = function guardedLoad(request: string, parent: unknown, isMain: boolean): unknown {
    try {
      return load.call(this, request, parent, isMain);
    } catch (e) {
      throw new BugError(`require('${request}') after the worker was confined: every module must be loaded before (${(e as Error).message})`);
    }
  };
}
