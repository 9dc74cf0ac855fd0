// The worker's seccomp allow-list (--seccomp, default kill): every syscall a confined worker
// makes — Node.js 20 and libuv, V8, glibc, our addon — and nothing it does not. Installed last
// in worker/sandbox.ts, on every thread. Derived from traces of the whole test suite and the
// benchmarks (see docs/ARCHITECTURE.md, "Seccomp": the kernel logs every refusal with its
// number, so a run with --seccomp log lists what is missing without changing behaviour).
//
// What is deliberately NOT here, and what a compromised worker therefore cannot do: execve and
// execveat, fork/vfork and clone without CLONE_THREAD (no new processes), unshare/setns/mount/
// pivot_root/chroot (the sandbox is final), ptrace and process_vm_*, bpf, perf_event_open,
// io_uring, keyctl, setuid/setgid/setresuid/setresgid/setgroups (only the fs ids change),
// socket() of any family but AF_UNIX, bind/listen/accept, kill/tgkill of any other process,
// reboot, kexec, modules, swap, clock setting, personality, userfaultfd, and every syscall that
// is not named below.
//
// Each rule allows a syscall, allows it when one argument (its low 32 bits) passes a test, or
// refuses it with an errno (glibc then falls back to a form the filter can see). Order matters
// only for speed: the filter compares numbers one rule after another, so the hottest come first.
import type { SeccompRule } from '../shared/native';
import { BugError } from '../shared/errors';

const CLONE_THREAD = 0x00010000;
const AF_UNIX = 1;
const ENOSYS = 38;
const EPERM = 1;

/** ioctl requests the worker makes: non-blocking and close-on-exec flags (libuv), and whether a
 * stdio fd is a terminal (Node's start of process.stdout/stderr). */
const IOCTL_REQUESTS = {
  TCGETS: 0x5401, TIOCGWINSZ: 0x5413, FIONREAD: 0x541b, FIONBIO: 0x5421, FIONCLEX: 0x5450, FIOCLEX: 0x5451,
} as const;

/** prctl options: thread names (V8, libuv), naming anonymous mappings (V8), reading what the
 * sandbox left (capability bounding set, dumpable, no_new_privs, seccomp mode). */
const PRCTL_OPTIONS = {
  PR_GET_DUMPABLE: 3, PR_SET_NAME: 15, PR_GET_NAME: 16, PR_GET_SECCOMP: 21, PR_CAPBSET_READ: 23,
  PR_GET_NO_NEW_PRIVS: 39, PR_SET_VMA: 0x53564d41,
} as const;

interface Group { why: string; rules: SeccompRule[] }

const allow = (...names: string[]): SeccompRule[] => names.map((syscall) => ({ syscall }));

/** The policy's groups, hottest first. `selfPid`: the worker's pid as it sees it (kill and
 * tgkill reach only itself). */
export function seccompGroups(selfPid: number): Group[] {
  return [
    {
      why: 'the request path: virtqueue kicks and calls (eventfds), file I/O on guest memory, keeper and QEMU messages',
      rules: allow('read', 'write', 'readv', 'writev', 'readlink', 'pread64', 'pwrite64', 'preadv', 'pwritev', 'preadv2', 'pwritev2',
        'epoll_wait', 'epoll_pwait', 'epoll_pwait2', 'epoll_ctl', 'futex', 'recvmsg', 'sendmsg', 'recvfrom', 'sendto'),
    },
    {
      why: 'filesystem passthrough (worker/fs/): every operation a guest can ask for, on fds and by name relative to an fd',
      rules: allow('openat', 'openat2', 'close', 'newfstatat', 'fstat', 'statx', 'getdents64', 'lseek', 'readlinkat',
        'mkdirat', 'mknodat', 'unlinkat', 'renameat', 'renameat2', 'linkat', 'symlinkat', 'fchmod', 'fchmodat', 'fchown',
        'fchownat', 'utimensat', 'ftruncate', 'fallocate', 'fsync', 'fdatasync', 'syncfs', 'copy_file_range', 'flock',
        'fstatfs', 'statfs', 'faccessat', 'faccessat2', 'fcntl', 'dup', 'dup3',
        'fgetxattr', 'fsetxattr', 'flistxattr', 'fremovexattr', 'getxattr', 'setxattr', 'listxattr', 'removexattr',
        'lgetxattr', 'lsetxattr', 'llistxattr', 'lremovexattr', 'name_to_handle_at', 'open_by_handle_at', 'kcmp'),
    },
    {
      why: 'the path forms of calls allowed above as *at(AT_FDCWD, ...): no reach beyond theirs (the root is the read-only share); Node.js and tools loaded through NODE_OPTIONS use them',
      rules: allow('open', 'stat', 'lstat', 'access', 'mkdir', 'rmdir', 'unlink', 'rename'),
    },
    {
      why: 'acting as the guest user: only the filesystem ids change (worker/fs/credentials.ts), never the process ids',
      rules: allow('setfsuid', 'setfsgid'),
    },
    {
      why: 'memory: V8\'s heap and code space, guest memory and the inflight region (mmap of fds from QEMU), memfds',
      rules: allow('mmap', 'munmap', 'mprotect', 'madvise', 'mremap', 'brk', 'msync', 'memfd_create', 'membarrier', 'mincore'),
    },
    {
      why: 'the event loop and its wake-ups (libuv): epoll, eventfds, pipes, timers',
      rules: allow('epoll_create1', 'eventfd2', 'pipe2', 'poll', 'ppoll', 'nanosleep', 'clock_nanosleep', 'clock_gettime',
        'clock_getres', 'gettimeofday', 'sched_yield', 'getrandom'),
    },
    {
      why: 'threads (V8 platform, libuv thread pool): clone only with CLONE_THREAD, so no new process can be started; clone3 is refused with ENOSYS (a filter cannot read its flags), and glibc falls back to clone',
      rules: [
        { syscall: 'clone', arg: 0, maskSet: CLONE_THREAD },
        { syscall: 'clone3', errno: ENOSYS },
        ...allow('set_robust_list', 'rseq', 'exit', 'exit_group', 'gettid', 'getpid', 'sched_getaffinity', 'sigaltstack',
          'rt_sigaction', 'rt_sigprocmask', 'rt_sigreturn', 'restart_syscall'),
      ],
    },
    {
      why: 'signals only to itself: a crash point (shared/crash_points.ts) SIGKILLs its own process; V8 and libuv signal their own threads',
      rules: [
        { syscall: 'kill', arg: 0, equals: [selfPid] },
        { syscall: 'tgkill', arg: 0, equals: [selfPid] },
      ],
    },
    {
      why: 'unix sockets only: the keeper connection and QEMU\'s are inherited; sd_notify (NOTIFY_SOCKET) is a datagram socket of its own',
      rules: [
        { syscall: 'socket', arg: 0, equals: [AF_UNIX] },
        // accept4: QEMU's connection on the listening socket the keeper passes (bind and
        // listen are not allowed: no new listening socket).
        ...allow('connect', 'accept4', 'getsockopt', 'setsockopt', 'getsockname', 'getpeername', 'shutdown'),
      ],
    },
    {
      why: 'device-like calls: only the ioctls libuv and Node make on their own fds (no guest-chosen request reaches ioctl)',
      rules: [{ syscall: 'ioctl', arg: 1, equals: Object.values(IOCTL_REQUESTS) }],
    },
    {
      why: 'naming threads and mappings, and reading the sandbox\'s state',
      rules: [{ syscall: 'prctl', arg: 0, equals: Object.values(PRCTL_OPTIONS) }],
    },
    {
      why: 'process facts Node and the status report read: ids, limits, CPU time, the host name',
      rules: allow('getuid', 'geteuid', 'getgid', 'getegid', 'getppid', 'getrlimit', 'prlimit64', 'getrusage', 'times',
        'uname', 'sysinfo', 'getcwd', 'capget', 'getpriority', 'umask'),
    },
    {
      why: 'refused softly: a call glibc or libuv makes to probe a feature, which must fail with an errno, not kill',
      rules: [{ syscall: 'io_uring_setup', errno: EPERM }],
    },
  ];
}

/** The rules in filter order. A syscall named twice is a bug in this file (the second rule
 * would never be reached), thrown as one. */
export function seccompRules(selfPid: number): SeccompRule[] {
  const seen = new Set<string>();
  const out: SeccompRule[] = [];
  for (const g of seccompGroups(selfPid)) {
    for (const r of g.rules) {
      if (seen.has(r.syscall)) throw new BugError(`seccomp policy names ${r.syscall} twice`);
      seen.add(r.syscall);
      out.push(r);
    }
  }
  return out;
}
