// The worker's confinement (worker/sandbox.ts decides when): making the shared directory the
// process's root (pivot_root in a private mount namespace, or chroot) and dropping
// capabilities. Each function checks its arguments and throws errno errors.
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <signal.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace vfsk {
namespace {

bool Fail(Napi::Env env, const char* syscall) {
  ThrowErrno(env, errno, syscall);
  return false;
}

// Whether we share our parent's mount namespace (the keeper's, a shell's, or systemd's):
// pivoting that one would change the root of every process in it. A worker the keeper started
// through unshare(1), or a unit with a mount namespace of its own, does not.
// `declared`: the launcher says the namespace is ours (a unit with a mount namespace of its own
// sets VFSK_OWN_MOUNT_NS=1, and so does the keeper for unshare(1)), which is taken when the
// parent's cannot be read (EACCES: systemd as PID 1 holds capabilities the unit's bounding set
// lacks) or is not in our pid namespace.
bool InParentMountNs(Napi::Env env, bool declared, bool* out) {
  struct stat self {}, parent {};
  pid_t ppid = getppid();
  // 0: our parent is outside our pid namespace (unshare --pid --fork, which made our mount
  // namespace before it forked us and so shares it): only the launcher's word tells.
  if (ppid == 0) {
    if (declared) {
      *out = false;
      return true;
    }
    ThrowErrno(env, EPERM, "pivot_root (a parent outside our pid namespace, and no namespace of our own declared)");
    return false;
  }
  std::string parentNs = "/proc/" + std::to_string(ppid) + "/ns/mnt";
  if (stat("/proc/self/ns/mnt", &self) < 0) return Fail(env, "stat");
  if (stat(parentNs.c_str(), &parent) < 0) {
    // ENOENT: a /proc with hidepid=invisible (ProtectProc=invisible) hides PID 1.
    if ((errno == EACCES || errno == EPERM || errno == ENOENT) && declared) {
      *out = false;
      return true;
    }
    return Fail(env, "stat");
  }
  *out = self.st_dev == parent.st_dev && self.st_ino == parent.st_ino;
  return true;
}

// pivotRoot(dir, ownNamespaceDeclared): in a mount namespace of our own, `dir` becomes "/" (a read-only, nosuid,
// nodev, noexec bind of it: the worker reaches the share through the keeper's fds, never through
// its own root), the old root is detached, and the cwd is "/". Refuses (EPERM) in its parent's mount
// namespace.
Napi::Value PivotRoot(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "pivotRoot");
  std::string dir;
  bool declared = false;
  if (!a.Count(2) || !a.Path(0, "dir", "pivot_root", &dir) || !a.Bool(1, "ownNamespaceDeclared", &declared)) return {};
  bool shared = false;
  if (!InParentMountNs(env, declared, &shared)) return {};
  if (shared) {
    ThrowErrno(env, EPERM, "pivot_root (the process shares its parent's mount namespace)");
    return {};
  }
  // Nothing we mount propagates back to the namespace we came from.
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0) { Fail(env, "mount"); return {}; }
  if (mount(dir.c_str(), dir.c_str(), nullptr, MS_BIND | MS_REC, nullptr) < 0) { Fail(env, "mount"); return {}; }
  if (mount(nullptr, dir.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) < 0) {
    Fail(env, "mount");
    return {};
  }
  if (chdir(dir.c_str()) < 0) { Fail(env, "chdir"); return {}; }
  // pivot_root(".", "."): the old root ends up stacked on "/", and is detached at once.
  if (syscall(SYS_pivot_root, ".", ".") < 0) { Fail(env, "pivot_root"); return {}; }
  if (umount2(".", MNT_DETACH) < 0) { Fail(env, "umount2"); return {}; }
  if (chdir("/") < 0) { Fail(env, "chdir"); return {}; }
  return env.Undefined();
}

// detachedTree(dir): an O_PATH fd of the root of a new bind mount of `dir` that is attached
// nowhere (open_tree OPEN_TREE_CLONE). A directory fd opened before the pivot would let
// openat(fd, "../..") climb to the top of whatever mount it is on (the host's / or /tmp); from
// the root of a mount without a parent, ".." stays put. Needs CAP_SYS_ADMIN over the mount
// namespace; the clone lives as long as an fd refers to it.
Napi::Value DetachedTree(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "detachedTree");
  std::string dir;
  if (!a.Count(1) || !a.Path(0, "dir", "open_tree", &dir)) return {};
  int fd = static_cast<int>(syscall(SYS_open_tree, AT_FDCWD, dir.c_str(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC));
  if (fd < 0) { Fail(env, "open_tree"); return {}; }
  return Napi::Number::New(env, fd);
}

// detachedProc(): the root fd of a new procfs of our pid namespace, attached nowhere (so ".."
// stays at its root, as for detachedTree), nosuid, nodev, noexec, with subset=pid (no
// /proc/sys, sysrq-trigger, kcore...: only pid dirs and self) and hidepid=invisible (only
// processes we may ptrace are listed). Needs CAP_SYS_ADMIN over our pid namespace.
Napi::Value DetachedProc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "detachedProc");
  if (!a.Count(0)) return {};
  int fs = static_cast<int>(syscall(SYS_fsopen, "proc", FSOPEN_CLOEXEC));
  if (fs < 0) { Fail(env, "fsopen"); return {}; }
  const char* failed = nullptr;
  if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "subset", "pid", 0) < 0) failed = "fsconfig subset=pid";
  else if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "hidepid", "invisible", 0) < 0) failed = "fsconfig hidepid=invisible";
  else if (syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) < 0) failed = "fsconfig create";
  int mnt = -1;
  if (failed == nullptr) {
    mnt = static_cast<int>(syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC));
    if (mnt < 0) failed = "fsmount";
  }
  int err = errno;
  close(fs);
  if (failed != nullptr) { ThrowErrno(env, err, failed); return {}; }
  return Napi::Number::New(env, mnt);
}

// chrootTo(dir): chroot(dir) and chdir("/").
Napi::Value ChrootTo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "chrootTo");
  std::string dir;
  if (!a.Count(1) || !a.Path(0, "dir", "chroot", &dir)) return {};
  if (chroot(dir.c_str()) < 0) { Fail(env, "chroot"); return {}; }
  if (chdir("/") < 0) { Fail(env, "chdir"); return {}; }
  return env.Undefined();
}

// The highest capability number the kernel knows (PR_CAPBSET_READ fails past it).
int LastCap() {
  int last = 0;
  while (last < 63 && prctl(PR_CAPBSET_READ, last + 1, 0, 0, 0) >= 0) last++;
  return last;
}

// limitCapabilities(boundingMask, permittedMask): the calling thread keeps only the
// capabilities of boundingMask in its bounding set (dropping needs CAP_SETPCAP, so it is done
// first) and only those of permittedMask (within what it has) in its permitted and effective
// sets; inheritable and ambient become empty. Bit n = capability n; masks below 2^53. Threads
// created afterwards inherit this; threads that already exist keep theirs.
Napi::Value LimitCapabilities(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "limitCapabilities");
  int64_t bnd64, prm64;
  if (!a.Count(2) || !a.Int(0, "boundingMask", 0, kMaxSafe - 1, &bnd64) || !a.Int(1, "permittedMask", 0, kMaxSafe - 1, &prm64)) return {};
  uint64_t bnd = static_cast<uint64_t>(bnd64), prm = static_cast<uint64_t>(prm64);
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) { Fail(env, "prctl"); return {}; }
  int last = LastCap();
  for (int cap = 0; cap <= last; cap++) {
    if (bnd & (uint64_t{1} << cap)) continue;
    int in = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
    if (in < 0) { Fail(env, "prctl"); return {}; }
    if (in == 1 && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) { Fail(env, "prctl"); return {}; }
  }
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (syscall(SYS_capget, &hdr, data) < 0) { Fail(env, "capget"); return {}; }
  for (int i = 0; i < 2; i++) {
    uint32_t k = static_cast<uint32_t>(prm >> (32 * i));
    data[i].permitted &= k;
    data[i].effective = data[i].permitted;
    data[i].inheritable = 0;
  }
  if (syscall(SYS_capset, &hdr, data) < 0) { Fail(env, "capset"); return {}; }
  return env.Undefined();
}

// setNotDumpable(): PR_SET_DUMPABLE 0: /proc/PID/{fd,mem,environ...} of this process need
// CAP_SYS_PTRACE, so a same-uid process with fewer capabilities (a confined worker of any
// instance) cannot take our fds through /proc.
Napi::Value SetNotDumpable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) { Fail(env, "prctl"); return {}; }
  return env.Undefined();
}

// setNoNewPrivs(): PR_SET_NO_NEW_PRIVS (execve can never grant privileges; seccomp needs it).
Napi::Value SetNoNewPrivs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) { Fail(env, "prctl"); return {}; }
  return env.Undefined();
}

// exitNow(status): _exit(status) at once: no JS, no exit handlers, nothing flushed. For the
// crash points of a worker that is PID 1 of its pid namespace, which a SIGKILL sent from inside
// that namespace (its own process.kill) does not reach.
Napi::Value ExitNow(const Napi::CallbackInfo& info) {
  Args a(info, "exitNow");
  int64_t status;
  if (!a.Count(1) || !a.Int(0, "status", 0, 255, &status)) return {};
  _exit(static_cast<int>(status));
}

void ExitWithSignalStatus(int sig) { _exit(128 + sig); }

// exitOnSigterm(): SIGTERM makes the process _exit(128+15) at once, from a native handler.
// PID 1 of a pid namespace (the worker under the namespace sandbox) never gets the default
// action of SIGTERM, and a JS handler runs only when the event loop turns (a standby waits in a
// blocking read for its takeover). Async-signal-safe: the handler calls _exit only.
Napi::Value ExitOnSigterm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "exitOnSigterm");
  if (!a.Count(0)) return {};
  struct sigaction sa {};
  sa.sa_handler = ExitWithSignalStatus;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGTERM, &sa, nullptr) < 0) { Fail(env, "sigaction"); return {}; }
  return env.Undefined();
}

// setPassCred(fd, on): SO_PASSCRED on a unix socket: every message received on it then carries
// the sender's pid as the kernel knows it, in our pid namespace (recvMsg's credPid). The keeper
// learns a worker's real pid so: the worker is unshare(1)'s child in a pid namespace of its own,
// and SO_PEERCRED of a socketpair names the process that made the pair (the keeper).
Napi::Value SetPassCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "setPassCred");
  int fd;
  bool on = false;
  if (!a.Count(2) || !a.Fd(0, "fd", &fd) || !a.Bool(1, "on", &on)) return {};
  int v = on ? 1 : 0;
  if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &v, sizeof v) < 0) { Fail(env, "setsockopt"); return {}; }
  return env.Undefined();
}

int TryExec(const char* path) {
  char* const argv[] = {const_cast<char*>(path), nullptr};
  char* const envp[] = {nullptr};
  execve(path, argv, envp);
  return errno;
}

int TrySetuidBack(const char*) {
  if (setresuid(65534, 65534, 65534) < 0) return errno;
  return setuid(0) < 0 ? errno : 0;
}

// probe(what, arg): what a compromised worker would try (`virtiofs-keeper sandbox-check`).
// Returns 0 when the attempt succeeded, else its errno. what: "socket-inet" (socket(AF_INET)),
// "connect-inet" (TCP to the IPv4 address arg, port 53), "ptrace" (PTRACE_ATTACH to pid arg),
// "mount" (a tmpfs on arg), "execve" (arg: on success this process becomes that program),
// "setuid-back" (drops this process to uid 65534, then tries setuid(0)). sandbox-check runs each
// attempt in a process of its own (a seccomp kill ends it).
Napi::Value Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "probe");
  std::string what, arg;
  if (!a.Count(2) || !a.String(0, "what", &what) || !a.String(1, "arg", &arg)) return {};
  int err = 0;
  if (what == "socket-inet" || what == "connect-inet") {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      err = errno;
    } else if (what == "connect-inet") {
      sockaddr_in sa{};
      sa.sin_family = AF_INET;
      sa.sin_port = htons(53);
      if (inet_pton(AF_INET, arg.c_str(), &sa.sin_addr) != 1) {
        close(fd);
        ThrowTypeError(env, "probe: connect-inet wants an IPv4 address");
        return {};
      }
      if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) err = errno;
    }
    if (fd >= 0) close(fd);
  } else if (what == "ptrace") {
    long pid = std::strtol(arg.c_str(), nullptr, 10);
    if (pid <= 0) { ThrowTypeError(env, "probe: ptrace wants a pid"); return {}; }
    if (ptrace(PTRACE_ATTACH, static_cast<pid_t>(pid), nullptr, nullptr) < 0) err = errno;
    else ptrace(PTRACE_DETACH, static_cast<pid_t>(pid), nullptr, nullptr);
  } else if (what == "mount") {
    if (mount("tmpfs", arg.c_str(), "tmpfs", 0, nullptr) < 0) err = errno;
    else umount2(arg.c_str(), MNT_DETACH);
  } else if (what == "execve") {
    err = TryExec(arg.c_str());
  } else if (what == "setuid-back") {
    err = TrySetuidBack(arg.c_str());
  } else {
    ThrowTypeError(env, "probe: unknown attempt " + what, "ERR_INVALID_ARG_VALUE");
    return {};
  }
  return Napi::Number::New(env, err);
}

}  // namespace

void InitSandbox(Napi::Env env, Napi::Object exports) {
  exports.Set("pivotRoot", Napi::Function::New(env, PivotRoot, "pivotRoot"));
  exports.Set("detachedTree", Napi::Function::New(env, DetachedTree, "detachedTree"));
  exports.Set("detachedProc", Napi::Function::New(env, DetachedProc, "detachedProc"));
  exports.Set("chrootTo", Napi::Function::New(env, ChrootTo, "chrootTo"));
  exports.Set("limitCapabilities", Napi::Function::New(env, LimitCapabilities, "limitCapabilities"));
  exports.Set("setNotDumpable", Napi::Function::New(env, SetNotDumpable, "setNotDumpable"));
  exports.Set("exitNow", Napi::Function::New(env, ExitNow, "exitNow"));
  exports.Set("exitOnSigterm", Napi::Function::New(env, ExitOnSigterm, "exitOnSigterm"));
  exports.Set("setPassCred", Napi::Function::New(env, SetPassCred, "setPassCred"));
  exports.Set("setNoNewPrivs", Napi::Function::New(env, SetNoNewPrivs, "setNoNewPrivs"));
  exports.Set("probe", Napi::Function::New(env, Probe, "probe"));
}

}  // namespace vfsk
