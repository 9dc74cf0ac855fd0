// The worker's confinement, entered once it is fully loaded and connected to its keeper, before
// it reads a byte from the guest or QEMU (a standby before it waits for its takeover):
//
// - namespace (default): the keeper started us in new mount, net, ipc and uts namespaces
//   (unshare(1), supervisor.ts; under systemd the worker unit's PrivateNetwork/PrivateIPC/
//   ProtectHostname and its own mount namespace). Here the shared directory becomes "/" by
//   pivot_root, as a read-only, noexec bind mount: the worker serves the guest through the
//   keeper's fds, never through its own root. The old root is detached: nothing else of the host
//   is reachable by path.
// - chroot: chroot into the shared directory (no namespaces needed).
// - none: as before, logged as a warning.
//
// What the worker still reaches outside, through fds opened before (shared/pinned_dirs.ts): the
// state directory (journal, compaction) and /proc/self/fd (re-opening inodes). Then every
// capability but PASSTHROUGH_CAPS leaves the bounding, permitted and effective sets, and last
// the seccomp filter (worker/seccomp_policy.ts) is installed on every thread: from then on a
// syscall outside the allow-list kills the worker (--seccomp kill; trap and log for finding
// what a new Node.js version needs).
//
// No lazy loading: the worker's whole module graph is imported statically by worker.ts before
// this runs (cli/main.ts imports it, then calls workerMain), and Node's built-in modules are in
// its binary. After the pivot a require() of a file not yet loaded could not find it; the guard
// below turns that into a BugError naming the module (test/crash/sandbox.test.ts asserts the
// worker's module list is complete before the pivot).
import Module from 'node:module';
import type { Logger } from '../shared/log';
import { native } from '../shared/native';
import { pinDir } from '../shared/pinned_dirs';
import { BugError } from '../shared/errors';
import type { SandboxMode, SeccompAction } from '../shared/config';
import { seccompRules } from './seccomp_policy';
import { PASSTHROUGH_CAPS, capMask } from '../shared/capabilities';

/** The argv prefix that starts a worker in its own namespaces for `mode` (embedded mode). */
export function sandboxLauncher(mode: SandboxMode, euid: number): string[] {
  if (mode !== 'namespace') return [];
  return ['/usr/bin/unshare', '--mount', '--net', '--ipc', '--uts', '--propagation', 'private',
    ...(euid === 0 ? [] : ['--user', '--map-root-user']), '--'];
}

let entered: SandboxMode | null = null;

/** Confines this process (see the header). */
export function enterSandbox(mode: SandboxMode, seccomp: SeccompAction, sharedDir: string, stateDir: string, log: Logger): void {
  if (entered !== null) throw new BugError(`sandbox entered twice (${entered}, then ${mode})`);
  pinDir(stateDir);
  pinDir('/proc/self/fd');
  // GETLK finds which lock owner holds a lock in its description's fdinfo (worker/fs/locks.ts).
  pinDir('/proc/self/fdinfo');
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
