// fd housekeeping, credentials, rlimits and the synchronous filesystem calls.
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstdio>
#include <memory>

namespace vfsk {

static void PutU64(char* out, size_t off, uint64_t v) {
  for (int i = 0; i < 8; i++) out[off + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

// The STAT layout of shared/native.ts (16 little-endian u64s, 128 bytes).
void PutStat(char* out, const struct stat& st) {
  PutU64(out, 0, st.st_dev);
  PutU64(out, 8, st.st_ino);
  PutU64(out, 16, st.st_mode);
  PutU64(out, 24, st.st_nlink);
  PutU64(out, 32, st.st_uid);
  PutU64(out, 40, st.st_gid);
  PutU64(out, 48, st.st_rdev);
  PutU64(out, 56, static_cast<uint64_t>(st.st_size));
  PutU64(out, 64, static_cast<uint64_t>(st.st_blksize));
  PutU64(out, 72, static_cast<uint64_t>(st.st_blocks));
  PutU64(out, 80, static_cast<uint64_t>(st.st_atim.tv_sec));
  PutU64(out, 88, static_cast<uint64_t>(st.st_atim.tv_nsec));
  PutU64(out, 96, static_cast<uint64_t>(st.st_mtim.tv_sec));
  PutU64(out, 104, static_cast<uint64_t>(st.st_mtim.tv_nsec));
  PutU64(out, 112, static_cast<uint64_t>(st.st_ctim.tv_sec));
  PutU64(out, 120, static_cast<uint64_t>(st.st_ctim.tv_nsec));
}

namespace {

// Retries a syscall expression while it fails with EINTR.
#define RETRY_EINTR(expr)                  \
  ({                                       \
    decltype(expr) r_;                     \
    do {                                   \
      r_ = (expr);                         \
    } while (r_ == -1 && errno == EINTR);  \
    r_;                                    \
  })

Napi::Value Undef(Napi::Env env) { return env.Undefined(); }
Napi::Value Num(Napi::Env env, double v) { return Napi::Number::New(env, v); }

// ---------------------------------------------------------------- fds

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "close");
  int fd;
  if (!a.Count(1) || !a.Fd(0, "fd", &fd)) return {};
  // Linux releases the fd even when close() reports EINTR, so never retry.
  if (close(fd) < 0 && errno != EINTR) {
    ThrowErrno(env, errno, "close");
    return {};
  }
  return Undef(env);
}

Napi::Value Dup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "dup");
  int fd;
  int64_t minFd = 0;
  if (!a.Count(1) || !a.Fd(0, "fd", &fd)) return {};
  if (info.Length() >= 2 && !info[1].IsUndefined() && !a.Int(1, "minFd", 0, INT32_MAX, &minFd)) return {};
  int nfd = fcntl(fd, F_DUPFD_CLOEXEC, static_cast<int>(minFd));
  if (nfd < 0) {
    ThrowErrno(env, errno, "fcntl");
    return {};
  }
  return Num(env, nfd);
}

// kcmp(KCMP_FILE) on our own pid: do two fds refer to the same open file description? (As
// systemd's fd store does when it deduplicates stored fds.)
Napi::Value SameOpenFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "sameOpenFile");
  int fa, fb;
  if (!a.Count(2) || !a.Fd(0, "fdA", &fa) || !a.Fd(1, "fdB", &fb)) return {};
  const pid_t self = getpid();
  long r = syscall(SYS_kcmp, self, self, 0 /* KCMP_FILE */, (unsigned long)fa, (unsigned long)fb);
  if (r < 0) {
    ThrowErrno(env, errno, "kcmp");
    return {};
  }
  return Napi::Boolean::New(env, r == 0);
}

// Sets or clears one bit of an fd's F_GETFD/F_GETFL flags (a call of two arguments: fd, on).
static Napi::Value SetFdFlagBit(const Napi::CallbackInfo& info, const char* name, const char* what, int getCmd, int setCmd, int bit) {
  Napi::Env env = info.Env();
  Args a(info, name);
  int fd;
  bool on;
  if (!a.Count(2) || !a.Fd(0, "fd", &fd) || !a.Bool(1, what, &on)) return {};
  int fl = fcntl(fd, getCmd);
  if (fl < 0) {
    ThrowErrno(env, errno, "fcntl");
    return {};
  }
  int nfl = on ? (fl | bit) : (fl & ~bit);
  if (nfl != fl && fcntl(fd, setCmd, nfl) < 0) {
    ThrowErrno(env, errno, "fcntl");
    return {};
  }
  return Undef(env);
}

Napi::Value SetNonBlocking(const Napi::CallbackInfo& info) {
  return SetFdFlagBit(info, "setNonBlocking", "nonBlocking", F_GETFL, F_SETFL, O_NONBLOCK);
}

// F_SETFD: set or clear FD_CLOEXEC on an fd we keep (e.g. one inherited from whoever exec'd us,
// which must stay open here but not leak into our children).
Napi::Value SetCloexec(const Napi::CallbackInfo& info) {
  return SetFdFlagBit(info, "setCloexec", "cloexec", F_GETFD, F_SETFD, FD_CLOEXEC);
}

Napi::Value FdFlags(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "fdFlags");
  int fd;
  if (!a.Count(1) || !a.Fd(0, "fd", &fd)) return {};
  int fdfl = fcntl(fd, F_GETFD);
  if (fdfl < 0) {
    ThrowErrno(env, errno, "fcntl");
    return {};
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) {
    ThrowErrno(env, errno, "fcntl");
    return {};
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("cloexec", Napi::Boolean::New(env, (fdfl & FD_CLOEXEC) != 0));
  o.Set("statusFlags", Num(env, fl));
  return o;
}

Napi::Value RaiseNoFileLimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "raiseNoFileLimit");
  int64_t wanted;
  if (!a.Count(1) || !a.Int(0, "wanted", 0, kMaxSafe, &wanted)) return {};
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
    ThrowErrno(env, errno, "getrlimit");
    return {};
  }
  rlim_t want = static_cast<rlim_t>(wanted);
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
    rlimit nrl = rl;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want && geteuid() == 0) {
      // Privileged: the hard limit may go up to fs.nr_open.
      rlim_t nrOpen = 0;
      if (FILE* f = fopen("/proc/sys/fs/nr_open", "re")) {
        unsigned long long v = 0;
        if (fscanf(f, "%llu", &v) == 1) nrOpen = static_cast<rlim_t>(v);
        fclose(f);
      }
      rlim_t hard = want < nrOpen ? want : nrOpen;
      if (hard > rl.rlim_max) {
        nrl.rlim_max = hard;
        nrl.rlim_cur = hard;
        if (setrlimit(RLIMIT_NOFILE, &nrl) == 0) {
          rl = nrl;
        } else {
          nrl = rl;  // e.g. no CAP_SYS_RESOURCE in this namespace: fall back to the soft limit
        }
      }
    }
    if (rl.rlim_cur < want) {
      nrl = rl;
      nrl.rlim_cur = (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want) ? want : rl.rlim_max;
      if (nrl.rlim_cur > rl.rlim_cur) {
        if (setrlimit(RLIMIT_NOFILE, &nrl) < 0) {
          ThrowErrno(env, errno, "setrlimit");
          return {};
        }
        rl = nrl;
      }
    }
  }
  if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > static_cast<rlim_t>(kMaxSafe))
    return Num(env, static_cast<double>(kMaxSafe));
  return Num(env, static_cast<double>(rl.rlim_cur));
}

Napi::Value SetFsIds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "setFsIds");
  uint32_t uid, gid;
  if (!a.Count(2) || !a.Id(0, "uid", &uid) || !a.Id(1, "gid", &gid)) return {};
  // Raw syscalls: they act on the calling thread only (glibc's wrappers would too, but the
  // raw form makes that explicit). Each returns the previous id, success or not.
  long prevGid = syscall(SYS_setfsgid, static_cast<gid_t>(gid));
  long prevUid = syscall(SYS_setfsuid, static_cast<uid_t>(uid));
  Napi::Array arr = Napi::Array::New(env, 2);
  arr.Set(uint32_t{0}, Num(env, static_cast<double>(static_cast<uint32_t>(prevUid))));
  arr.Set(uint32_t{1}, Num(env, static_cast<double>(static_cast<uint32_t>(prevGid))));
  return arr;
}

// ---------------------------------------------------------------- paths

Napi::Value Openat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "openat");
  int dirfd, flags;
  std::string path;
  int64_t mode;
  if (!a.Count(4) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "path", "openat", &path) ||
      !a.Flags(2, "flags", &flags) || !a.Int(3, "mode", 0, 07777, &mode))
    return {};
  int fd = RETRY_EINTR(openat(dirfd, path.c_str(), flags | O_CLOEXEC, static_cast<mode_t>(mode)));
  if (fd < 0) {
    ThrowErrno(env, errno, "openat");
    return {};
  }
  return Num(env, fd);
}

Napi::Value Openat2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "openat2");
  int dirfd, flags;
  std::string path;
  int64_t mode, resolve;
  if (!a.Count(5) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "path", "openat2", &path) ||
      !a.Flags(2, "flags", &flags) || !a.Int(3, "mode", 0, 07777, &mode) ||
      !a.Int(4, "resolve", 0, kMaxSafe, &resolve))
    return {};
  open_how how;
  memset(&how, 0, sizeof how);
  how.flags = static_cast<uint64_t>(static_cast<uint32_t>(flags | O_CLOEXEC));
  // openat2 rejects a mode without O_CREAT/O_TMPFILE, so pass it only then.
  if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE) how.mode = static_cast<uint64_t>(mode);
  how.resolve = static_cast<uint64_t>(resolve);
  long fd = RETRY_EINTR(syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof how));
  if (fd < 0) {
    ThrowErrno(env, errno, "openat2");
    return {};
  }
  return Num(env, static_cast<double>(fd));
}

Napi::Value Fstatat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "fstatat");
  int dirfd, flags;
  std::string path;
  char* out;
  size_t outLen;
  if (!a.Count(4) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "path", "fstatat", &path) ||
      !a.Flags(2, "flags", &flags) || !a.Buf(3, "out", &out, &outLen))
    return {};
  if (outLen < 128) {
    ThrowRangeError(env, "fstatat(): argument 4 \"out\" must be at least 128 bytes");
    return {};
  }
  struct stat st;
  if (fstatat(dirfd, path.c_str(), &st, flags) < 0) {
    ThrowErrno(env, errno, "fstatat");
    return {};
  }
  PutStat(out, st);
  return Undef(env);
}

Napi::Value Mkdirat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "mkdirat");
  int dirfd;
  std::string path;
  int64_t mode;
  if (!a.Count(3) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "path", "mkdirat", &path) ||
      !a.Int(2, "mode", 0, 07777, &mode))
    return {};
  if (mkdirat(dirfd, path.c_str(), static_cast<mode_t>(mode)) < 0) {
    ThrowErrno(env, errno, "mkdirat");
    return {};
  }
  return Undef(env);
}

Napi::Value Mknodat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "mknodat");
  int dirfd;
  std::string path;
  int64_t mode, dev;
  if (!a.Count(4) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "path", "mknodat", &path) ||
      !a.Int(2, "mode", 0, UINT32_MAX, &mode) || !a.Int(3, "dev", 0, kMaxSafe, &dev))
    return {};
  if (mknodat(dirfd, path.c_str(), static_cast<mode_t>(mode), static_cast<dev_t>(dev)) < 0) {
    ThrowErrno(env, errno, "mknodat");
    return {};
  }
  return Undef(env);
}

Napi::Value Symlinkat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "symlinkat");
  int dirfd;
  std::string target, path;
  if (!a.Count(3) || !a.Path(0, "target", "symlinkat", &target) ||
      !a.DirFd(1, "dirfd", &dirfd) || !a.Path(2, "path", "symlinkat", &path))
    return {};
  if (symlinkat(target.c_str(), dirfd, path.c_str()) < 0) {
    ThrowErrno(env, errno, "symlinkat");
    return {};
  }
  return Undef(env);
}

Napi::Value Readlinkat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "readlinkat");
  int dirfd;
  std::string path;
  if (!a.Count(2) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "path", "readlinkat", &path))
    return {};
  // PATH_MAX bytes holds any target; one byte more tells truncation apart.
  std::unique_ptr<char[]> buf(new char[PATH_MAX + 1]);
  ssize_t n = readlinkat(dirfd, path.c_str(), buf.get(), PATH_MAX + 1);
  if (n < 0) {
    ThrowErrno(env, errno, "readlinkat");
    return {};
  }
  if (n > PATH_MAX) {
    ThrowErrno(env, ENAMETOOLONG, "readlinkat");
    return {};
  }
  return Napi::Buffer<char>::Copy(env, buf.get(), static_cast<size_t>(n));
}

Napi::Value Linkat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "linkat");
  int odir, ndir, flags;
  std::string opath, npath;
  if (!a.Count(5) || !a.DirFd(0, "olddirfd", &odir) || !a.Path(1, "oldpath", "linkat", &opath) ||
      !a.DirFd(2, "newdirfd", &ndir) || !a.Path(3, "newpath", "linkat", &npath) ||
      !a.Flags(4, "flags", &flags))
    return {};
  if (linkat(odir, opath.c_str(), ndir, npath.c_str(), flags) < 0) {
    ThrowErrno(env, errno, "linkat");
    return {};
  }
  return Undef(env);
}

Napi::Value Unlinkat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "unlinkat");
  int dirfd, flags;
  std::string path;
  if (!a.Count(3) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "path", "unlinkat", &path) ||
      !a.Flags(2, "flags", &flags))
    return {};
  if (unlinkat(dirfd, path.c_str(), flags) < 0) {
    ThrowErrno(env, errno, "unlinkat");
    return {};
  }
  return Undef(env);
}

Napi::Value Renameat2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "renameat2");
  int odir, ndir, flags;
  std::string opath, npath;
  if (!a.Count(5) || !a.DirFd(0, "olddirfd", &odir) ||
      !a.Path(1, "oldpath", "renameat2", &opath) || !a.DirFd(2, "newdirfd", &ndir) ||
      !a.Path(3, "newpath", "renameat2", &npath) || !a.Flags(4, "flags", &flags))
    return {};
  if (renameat2(odir, opath.c_str(), ndir, npath.c_str(), static_cast<unsigned>(flags)) < 0) {
    ThrowErrno(env, errno, "renameat2");
    return {};
  }
  return Undef(env);
}

Napi::Value Fchmod(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "fchmod");
  int fd;
  int64_t mode;
  if (!a.Count(2) || !a.Fd(0, "fd", &fd) || !a.Int(1, "mode", 0, 07777, &mode)) return {};
  if (fchmod(fd, static_cast<mode_t>(mode)) < 0) {
    ThrowErrno(env, errno, "fchmod");
    return {};
  }
  return Undef(env);
}

Napi::Value Faccessat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "faccessat");
  int dirfd, flags;
  std::string path;
  int64_t mode;
  if (!a.Count(4) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "path", "faccessat", &path) ||
      !a.Int(2, "mode", 0, 7, &mode) || !a.Flags(3, "flags", &flags))
    return {};
  // The raw faccessat2: glibc emulates AT_EACCESS from the mode bits where the syscall is
  // missing, which would ignore ACLs, read-only mounts and immutable files.
  if (syscall(SYS_faccessat2, dirfd, path.c_str(), static_cast<int>(mode), flags) < 0) {
    ThrowErrno(env, errno, "faccessat2");
    return {};
  }
  return Undef(env);
}

Napi::Value Fchmodat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "fchmodat");
  int dirfd, flags;
  std::string path;
  int64_t mode;
  if (!a.Count(4) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "path", "fchmodat", &path) ||
      !a.Int(2, "mode", 0, 07777, &mode) || !a.Flags(3, "flags", &flags))
    return {};
  // glibc emulates AT_SYMLINK_NOFOLLOW (via O_PATH + /proc) on kernels without fchmodat2.
  if (fchmodat(dirfd, path.c_str(), static_cast<mode_t>(mode), flags) < 0) {
    ThrowErrno(env, errno, "fchmodat");
    return {};
  }
  return Undef(env);
}

Napi::Value Fchownat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "fchownat");
  int dirfd, flags;
  std::string path;
  uint32_t uid, gid;
  if (!a.Count(5) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "path", "fchownat", &path) ||
      !a.Id(2, "uid", &uid) || !a.Id(3, "gid", &gid) || !a.Flags(4, "flags", &flags))
    return {};
  if (fchownat(dirfd, path.c_str(), static_cast<uid_t>(uid), static_cast<gid_t>(gid), flags) < 0) {
    ThrowErrno(env, errno, "fchownat");
    return {};
  }
  return Undef(env);
}

bool Nsec(Args& a, size_t i, const char* name, long* out) {
  int64_t v;
  if (!a.Int(i, name, 0, UINT32_MAX, &v)) return false;
  if (v != UTIME_NOW && v != UTIME_OMIT && v > 999999999) {
    ThrowRangeError(a.Env(), std::string("utimensat(): argument \"") + name +
                                 "\" must be < 1e9, UTIME_NOW or UTIME_OMIT");
    return false;
  }
  *out = static_cast<long>(v);
  return true;
}

Napi::Value Utimensat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "utimensat");
  int dirfd, flags;
  std::string path;
  bool isNull;
  int64_t as, ms;
  timespec ts[2];
  if (!a.Count(7) || !a.DirFd(0, "dirfd", &dirfd) ||
      !a.Path(1, "path", "utimensat", &path, true, &isNull) ||
      !a.Int(2, "atimeSec", -kMaxSafe, kMaxSafe, &as) || !Nsec(a, 3, "atimeNsec", &ts[0].tv_nsec) ||
      !a.Int(4, "mtimeSec", -kMaxSafe, kMaxSafe, &ms) || !Nsec(a, 5, "mtimeNsec", &ts[1].tv_nsec) ||
      !a.Flags(6, "flags", &flags))
    return {};
  ts[0].tv_sec = static_cast<time_t>(as);
  ts[1].tv_sec = static_cast<time_t>(ms);
  // A null path means the fd itself: the raw syscall with a NULL pathname does exactly that
  // (glibc's wrapper rejects NULL).
  long r = syscall(SYS_utimensat, dirfd, isNull ? nullptr : path.c_str(), ts, flags);
  if (r < 0) {
    ThrowErrno(env, errno, "utimensat");
    return {};
  }
  return Undef(env);
}

Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "ftruncate");
  int fd;
  int64_t len;
  if (!a.Count(2) || !a.Fd(0, "fd", &fd) || !a.Int(1, "length", 0, kMaxSafe, &len)) return {};
  if (RETRY_EINTR(ftruncate(fd, static_cast<off_t>(len))) < 0) {
    ThrowErrno(env, errno, "ftruncate");
    return {};
  }
  return Undef(env);
}

Napi::Value Fstatfs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "fstatfs");
  int fd;
  if (!a.Count(1) || !a.Fd(0, "fd", &fd)) return {};
  struct statfs st;
  if (RETRY_EINTR(fstatfs(fd, &st)) < 0) {
    ThrowErrno(env, errno, "fstatfs");
    return {};
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("bsize", Num(env, static_cast<double>(st.f_bsize)));
  o.Set("frsize", Num(env, static_cast<double>(st.f_frsize)));
  o.Set("blocks", Num(env, static_cast<double>(st.f_blocks)));
  o.Set("bfree", Num(env, static_cast<double>(st.f_bfree)));
  o.Set("bavail", Num(env, static_cast<double>(st.f_bavail)));
  o.Set("files", Num(env, static_cast<double>(st.f_files)));
  o.Set("ffree", Num(env, static_cast<double>(st.f_ffree)));
  o.Set("namelen", Num(env, static_cast<double>(st.f_namelen)));
  o.Set("type", Num(env, static_cast<double>(static_cast<uint64_t>(st.f_type))));
  return o;
}

Napi::Value Getdents64(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "getdents64");
  int fd;
  char* buf;
  size_t len;
  if (!a.Count(2) || !a.Fd(0, "fd", &fd) || !a.Buf(1, "buf", &buf, &len)) return {};
  if (len > INT_MAX) len = INT_MAX;
  long n = RETRY_EINTR(syscall(SYS_getdents64, fd, buf, len));
  if (n < 0) {
    ThrowErrno(env, errno, "getdents64");
    return {};
  }
  return Num(env, static_cast<double>(n));
}

// lseek(fd, offset, whence). `offset` is a number (exact up to 2^53, file offsets) or a bigint
// (any off_t: directory cookies such as ext4's 63-bit hashes do not fit a double); the result
// has the same type, so a cookie position comes back exact too.
Napi::Value Lseek(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "lseek");
  int fd;
  int64_t off, whence;
  if (!a.Count(3) || !a.Fd(0, "fd", &fd)) return {};
  const bool big = info[1].IsBigInt();
  if (big) {
    // Int64Value reports lossless=false for anything outside [-2^63, 2^63-1].
    bool lossless = false;
    off = info[1].As<Napi::BigInt>().Int64Value(&lossless);
    if (!lossless) {
      ThrowRangeError(env, "lseek(): argument 2 \"offset\" must be >= -(2n ** 63n) and < 2n ** 63n");
      return {};
    }
  } else if (!info[1].IsNumber()) {
    ThrowTypeError(env, "lseek(): argument 2 \"offset\" must be a number or a bigint");
    return {};
  } else if (!a.Int(1, "offset", -kMaxSafe, kMaxSafe, &off)) {
    return {};
  }
  if (!a.Int(2, "whence", 0, INT32_MAX, &whence)) return {};
  off_t r = lseek(fd, static_cast<off_t>(off), static_cast<int>(whence));
  if (r < 0) {
    ThrowErrno(env, errno, "lseek");
    return {};
  }
  if (big) return Napi::BigInt::New(env, static_cast<int64_t>(r));
  return Num(env, static_cast<double>(r));
}

// ---------------------------------------------------------------- xattrs

// target: fd (number) or path (string/Buffer).
struct XTarget {
  bool isFd = false;
  int fd = -1;
  std::string path;
};

bool GetXTarget(Args& a, size_t i, const char* syscall, XTarget* t) {
  if (a[i].IsNumber()) {
    t->isFd = true;
    return a.Fd(i, "target", &t->fd);
  }
  return a.Path(i, "target", syscall, &t->path);
}

Napi::Value Getxattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "getxattr");
  XTarget t;
  std::string name;
  char* buf;
  size_t len;
  if (!a.Count(3) || !GetXTarget(a, 0, "getxattr", &t) || !a.Path(1, "name", "getxattr", &name) ||
      !a.Buf(2, "buf", &buf, &len, true))
    return {};
  ssize_t n = t.isFd ? fgetxattr(t.fd, name.c_str(), buf, len)
                     : lgetxattr(t.path.c_str(), name.c_str(), buf, len);
  if (n < 0) {
    ThrowErrno(env, errno, t.isFd ? "fgetxattr" : "lgetxattr");
    return {};
  }
  return Num(env, static_cast<double>(n));
}

Napi::Value Setxattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "setxattr");
  XTarget t;
  std::string name;
  char* buf;
  size_t len;
  int flags;
  if (!a.Count(4) || !GetXTarget(a, 0, "setxattr", &t) || !a.Path(1, "name", "setxattr", &name) ||
      !a.Buf(2, "value", &buf, &len) || !a.Flags(3, "flags", &flags))
    return {};
  int r = t.isFd ? fsetxattr(t.fd, name.c_str(), buf, len, flags)
                 : lsetxattr(t.path.c_str(), name.c_str(), buf, len, flags);
  if (r < 0) {
    ThrowErrno(env, errno, t.isFd ? "fsetxattr" : "lsetxattr");
    return {};
  }
  return Undef(env);
}

Napi::Value Listxattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "listxattr");
  XTarget t;
  char* buf;
  size_t len;
  if (!a.Count(2) || !GetXTarget(a, 0, "listxattr", &t) || !a.Buf(1, "buf", &buf, &len, true))
    return {};
  ssize_t n = t.isFd ? flistxattr(t.fd, buf, len) : llistxattr(t.path.c_str(), buf, len);
  if (n < 0) {
    ThrowErrno(env, errno, t.isFd ? "flistxattr" : "llistxattr");
    return {};
  }
  return Num(env, static_cast<double>(n));
}

Napi::Value Removexattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "removexattr");
  XTarget t;
  std::string name;
  if (!a.Count(2) || !GetXTarget(a, 0, "removexattr", &t) ||
      !a.Path(1, "name", "removexattr", &name))
    return {};
  int r = t.isFd ? fremovexattr(t.fd, name.c_str()) : lremovexattr(t.path.c_str(), name.c_str());
  if (r < 0) {
    ThrowErrno(env, errno, t.isFd ? "fremovexattr" : "lremovexattr");
    return {};
  }
  return Undef(env);
}

// ---------------------------------------------------------------- locks

Napi::Value FcntlLock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "fcntlLock");
  int fd;
  int64_t cmd, type, whence, start, len;
  if (!a.Count(6) || !a.Fd(0, "fd", &fd) || !a.Int(1, "cmd", 0, INT32_MAX, &cmd) ||
      !a.Int(2, "type", 0, INT16_MAX, &type) || !a.Int(3, "whence", 0, 2, &whence) ||
      !a.Int(4, "start", -kMaxSafe, kMaxSafe, &start) || !a.Int(5, "len", -kMaxSafe, kMaxSafe, &len))
    return {};
  if (cmd != F_OFD_GETLK && cmd != F_OFD_SETLK) {
    // F_OFD_SETLKW would block the JS thread; blocking locks are retried non-blocking from JS.
    ThrowRangeError(env, "fcntlLock(): argument 2 \"cmd\" must be F_OFD_GETLK or F_OFD_SETLK");
    return {};
  }
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = static_cast<short>(type);
  fl.l_whence = static_cast<short>(whence);
  fl.l_start = static_cast<off_t>(start);
  fl.l_len = static_cast<off_t>(len);
  fl.l_pid = 0;  // required for OFD commands
  if (RETRY_EINTR(fcntl(fd, static_cast<int>(cmd), &fl)) < 0) {
    ThrowErrno(env, errno, "fcntl");
    return {};
  }
  if (cmd == F_OFD_SETLK) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", Num(env, fl.l_type));
  o.Set("whence", Num(env, fl.l_whence));
  o.Set("start", Num(env, static_cast<double>(fl.l_start)));
  o.Set("len", Num(env, static_cast<double>(fl.l_len)));
  o.Set("pid", Num(env, fl.l_pid));
  return o;
}

Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "flock");
  int fd;
  int64_t op;
  if (!a.Count(2) || !a.Fd(0, "fd", &fd) || !a.Int(1, "operation", 0, INT32_MAX, &op)) return {};
  if (RETRY_EINTR(flock(fd, static_cast<int>(op))) < 0) {
    ThrowErrno(env, errno, "flock");
    return {};
  }
  return Undef(env);
}

// ---------------------------------------------------------------- file handles

// struct file_handle followed by MAX_HANDLE_SZ bytes, suitably aligned.
union HandleBuf {
  file_handle fh;
  char raw[sizeof(file_handle) + MAX_HANDLE_SZ];
};

// name_to_handle_at into *hb; *mountId is the 64-bit unique id with AT_HANDLE_MNT_ID_UNIQUE
// (0x1), else the int one. Newer kernels write 8 bytes of mount id then, so the kernel always
// gets 8. Returns 0 or errno.
int HandleAt(int dirfd, const std::string& path, int flags, HandleBuf* hb, int64_t* mountId) {
  memset(hb, 0, sizeof *hb);
  hb->fh.handle_bytes = MAX_HANDLE_SZ;
  union {
    int i;
    uint64_t u;
  } mnt;
  mnt.u = 0;
  if (name_to_handle_at(dirfd, path.c_str(), &hb->fh, &mnt.i, flags) < 0) return errno;
  *mountId = (flags & 0x1) != 0 ? static_cast<int64_t>(mnt.u) : static_cast<int64_t>(mnt.i);
  return 0;
}

Napi::Value NameToHandleAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "nameToHandleAt");
  int dirfd, flags;
  std::string path;
  if (!a.Count(3) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "path", "name_to_handle_at", &path) ||
      !a.Flags(2, "flags", &flags))
    return {};
  HandleBuf hb;
  int64_t mnt;
  if (int err = HandleAt(dirfd, path, flags, &hb, &mnt); err != 0) {
    ThrowErrno(env, err, "name_to_handle_at");
    return {};
  }
  double mountId = static_cast<double>(mnt);
  Napi::Object o = Napi::Object::New(env);
  o.Set("mountId", Num(env, mountId));
  o.Set("handleType", Num(env, hb.fh.handle_type));
  o.Set("handle", Napi::Buffer<char>::Copy(env, reinterpret_cast<char*>(hb.fh.f_handle),
                                           hb.fh.handle_bytes));
  return o;
}

// An inode's attributes and file handle in one call, into the caller's buffers (no object or
// Buffer per call): `path` under dirfd ("" with AT_EMPTY_PATH: dirfd itself), no symlink
// followed. stat (>= 128 bytes) as fstatat() writes it (its failure throws); handle (>= 8 +
// MAX_HANDLE_SZ): i32 mount id, i32 handle type, the bytes. Returns the handle's length, or
// -errno when the filesystem gives none (not an error here: the inode then keeps an fd in the
// keeper).
static Napi::Value StatAndHandle(Napi::Env env, int dirfd, const std::string& path, int flags, const char* fn,
                                 char* statOut, size_t statLen, char* handleOut, size_t handleLen) {
  if (statLen < 128 || handleLen < 8 + MAX_HANDLE_SZ) {
    ThrowRangeError(env, std::string(fn) + "(): \"stat\" must be at least 128 bytes and \"handle\" at least 136");
    return {};
  }
  struct stat st;
  if (fstatat(dirfd, path.c_str(), &st, flags | AT_SYMLINK_NOFOLLOW) < 0) {
    ThrowErrno(env, errno, "fstatat");
    return {};
  }
  PutStat(statOut, st);
  HandleBuf hb;
  int64_t mnt;
  if (int err = HandleAt(dirfd, path, flags, &hb, &mnt); err != 0) return Napi::Number::New(env, -err);
  int32_t mount32 = static_cast<int32_t>(mnt);
  int32_t type = hb.fh.handle_type;
  std::memcpy(handleOut, &mount32, 4);
  std::memcpy(handleOut + 4, &type, 4);
  std::memcpy(handleOut + 8, hb.fh.f_handle, hb.fh.handle_bytes);
  return Napi::Number::New(env, static_cast<double>(hb.fh.handle_bytes));
}

// fstatHandle(fd, stat, handle): StatAndHandle of the fd itself (worker/fs/inodes.ts adopt, for
// every new inode it opened).
Napi::Value FstatHandle(const Napi::CallbackInfo& info) {
  Args a(info, "fstatHandle");
  int fd;
  char *statOut, *handleOut;
  size_t statLen, handleLen;
  if (!a.Count(3) || !a.Fd(0, "fd", &fd) || !a.Buf(1, "stat", &statOut, &statLen) || !a.Buf(2, "handle", &handleOut, &handleLen))
    return {};
  return StatAndHandle(info.Env(), fd, "", AT_EMPTY_PATH, "fstatHandle", statOut, statLen, handleOut, handleLen);
}

// fstatHandleAt(dirfd, name, stat, handle): StatAndHandle of a name under dirfd without opening
// it (READDIRPLUS of a new entry: no fd to open, keep and close).
Napi::Value FstatHandleAt(const Napi::CallbackInfo& info) {
  Args a(info, "fstatHandleAt");
  int dirfd;
  std::string path;
  char *statOut, *handleOut;
  size_t statLen, handleLen;
  if (!a.Count(4) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "name", "fstatat", &path) ||
      !a.Buf(2, "stat", &statOut, &statLen) || !a.Buf(3, "handle", &handleOut, &handleLen))
    return {};
  return StatAndHandle(info.Env(), dirfd, path, 0, "fstatHandleAt", statOut, statLen, handleOut, handleLen);
}

// Whether `path` under dirfd has exactly this handle (mount id, type, bytes): name_to_handle_at
// compared here, without the object and Buffer nameToHandleAt builds (READDIRPLUS of known
// inodes asks this once per entry).
Napi::Value SameHandleAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "sameHandleAt");
  int dirfd, flags;
  std::string path;
  int64_t mountId, type;
  char* want;
  size_t wantLen;
  if (!a.Count(6) || !a.DirFd(0, "dirfd", &dirfd) || !a.Path(1, "path", "name_to_handle_at", &path) ||
      !a.Flags(2, "flags", &flags) || !a.Int(3, "mountId", 0, (int64_t{1} << 53), &mountId) ||
      !a.Int(4, "handleType", INT32_MIN, INT32_MAX, &type) || !a.Buf(5, "handle", &want, &wantLen))
    return {};
  HandleBuf hb;
  int64_t got;
  if (int err = HandleAt(dirfd, path, flags, &hb, &got); err != 0) {
    ThrowErrno(env, err, "name_to_handle_at");
    return {};
  }
  const bool same = got == mountId && hb.fh.handle_type == type && hb.fh.handle_bytes == wantLen &&
                    memcmp(hb.fh.f_handle, want, wantLen) == 0;
  return Napi::Boolean::New(env, same);
}

Napi::Value OpenByHandleAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "openByHandleAt");
  int mountFd, flags;
  if (!a.Count(3) || !a.DirFd(0, "mountFd", &mountFd) || !a.Flags(2, "flags", &flags)) return {};
  if (!info[1].IsObject()) {
    ThrowTypeError(env, "openByHandleAt(): argument 2 \"handle\" must be an object");
    return {};
  }
  Napi::Object h = info[1].As<Napi::Object>();
  Napi::Value typeV = h.Get("handleType");
  if (env.IsExceptionPending()) return {};
  int64_t type;
  if (!CheckInt(env, typeV, "openByHandleAt(): handle.handleType", INT32_MIN, INT32_MAX, &type))
    return {};
  Napi::Value bytesV = h.Get("handle");
  if (env.IsExceptionPending()) return {};
  char* data = nullptr;
  size_t len = 0;
  if (!bytesV.IsBuffer() ||
      napi_get_buffer_info(env, bytesV, reinterpret_cast<void**>(&data), &len) != napi_ok) {
    ThrowTypeError(env, "openByHandleAt(): handle.handle must be a Buffer");
    return {};
  }
  if (len == 0 || len > MAX_HANDLE_SZ) {
    ThrowRangeError(env, "openByHandleAt(): handle.handle must be 1.." +
                             std::to_string(MAX_HANDLE_SZ) + " bytes");
    return {};
  }
  HandleBuf hb;
  memset(&hb, 0, sizeof hb);
  hb.fh.handle_bytes = static_cast<unsigned>(len);
  hb.fh.handle_type = static_cast<int>(type);
  memcpy(hb.fh.f_handle, data, len);
  int fd = RETRY_EINTR(open_by_handle_at(mountFd, &hb.fh, flags | O_CLOEXEC));
  if (fd < 0) {
    ThrowErrno(env, errno, "open_by_handle_at");
    return {};
  }
  return Num(env, fd);
}

}  // namespace

void InitFsOps(Napi::Env env, Napi::Object exports) {
  struct Fn {
    const char* name;
    Napi::Value (*fn)(const Napi::CallbackInfo&);
  };
  static const Fn fns[] = {
      {"close", Close},
      {"dup", Dup},
      {"sameOpenFile", SameOpenFile},
      {"setNonBlocking", SetNonBlocking},
      {"raiseNoFileLimit", RaiseNoFileLimit},
      {"fdFlags", FdFlags},
      {"setCloexec", SetCloexec},
      {"setFsIds", SetFsIds},
      {"openat", Openat},
      {"openat2", Openat2},
      {"fstatat", Fstatat},
      {"mkdirat", Mkdirat},
      {"mknodat", Mknodat},
      {"symlinkat", Symlinkat},
      {"readlinkat", Readlinkat},
      {"linkat", Linkat},
      {"unlinkat", Unlinkat},
      {"renameat2", Renameat2},
      {"fchmod", Fchmod},
      {"fchmodat", Fchmodat},
      {"faccessat", Faccessat},
      {"fchownat", Fchownat},
      {"utimensat", Utimensat},
      {"ftruncate", Ftruncate},
      {"fstatfs", Fstatfs},
      {"getdents64", Getdents64},
      {"lseek", Lseek},
      {"getxattr", Getxattr},
      {"setxattr", Setxattr},
      {"listxattr", Listxattr},
      {"removexattr", Removexattr},
      {"fcntlLock", FcntlLock},
      {"flock", Flock},
      {"nameToHandleAt", NameToHandleAt},
      {"fstatHandle", FstatHandle},
      {"fstatHandleAt", FstatHandleAt},
      {"sameHandleAt", SameHandleAt},
      {"openByHandleAt", OpenByHandleAt},
  };
  for (const Fn& f : fns) exports.Set(f.name, Napi::Function::New(env, f.fn, f.name));
}

}  // namespace vfsk
