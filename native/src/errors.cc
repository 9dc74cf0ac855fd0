// Errors, argument checking, errnoName and the constants table.
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cmath>

namespace vfsk {

const char* ErrnoName(int err) {
  if (err <= 0) return nullptr;
  return strerrorname_np(err);
}

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall) {
  const char* name = ErrnoName(err);
  std::string code = name != nullptr ? name : "UNKNOWN";
  char buf[256];
  const char* desc = strerror_r(err, buf, sizeof buf);  // GNU variant: returns the string
  std::string msg = code + ": " + syscall + " failed: " + desc;
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  ErrnoError(env, err, syscall).ThrowAsJavaScriptException();
}

void ThrowTypeError(Napi::Env env, const std::string& msg, const char* code) {
  Napi::TypeError e = Napi::TypeError::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.ThrowAsJavaScriptException();
}

void ThrowRangeError(Napi::Env env, const std::string& msg) {
  Napi::RangeError e = Napi::RangeError::New(env, msg);
  e.Set("code", Napi::String::New(env, "ERR_OUT_OF_RANGE"));
  e.ThrowAsJavaScriptException();
}

void ThrowCodeError(Napi::Env env, const std::string& msg, const char* code) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.ThrowAsJavaScriptException();
}

void RaisePendingAsFatal(Napi::Env env) {
  if (!env.IsExceptionPending()) return;
  Napi::Error e = env.GetAndClearPendingException();
  napi_fatal_exception(env, e.Value());
}

// ---------------------------------------------------------------- Args

std::string Args::Label(size_t i, const char* name) const {
  return std::string(fn_) + "(): argument " + std::to_string(i + 1) + " \"" + name + "\"";
}

bool Args::Count(size_t n) {
  if (info_.Length() < n) {
    ThrowTypeError(env_, std::string(fn_) + "(): expected " + std::to_string(n) +
                             " arguments, got " + std::to_string(info_.Length()));
    return false;
  }
  return true;
}

bool CheckInt(Napi::Env env, Napi::Value v, const std::string& label, int64_t min, int64_t max,
              int64_t* out) {
  if (!v.IsNumber()) {
    ThrowTypeError(env, label + " must be a number");
    return false;
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d) {
    ThrowRangeError(env, label + " must be an integer");
    return false;
  }
  if (d < static_cast<double>(min) || d > static_cast<double>(max)) {
    ThrowRangeError(env, label + " must be >= " + std::to_string(min) + " and <= " +
                             std::to_string(max));
    return false;
  }
  *out = static_cast<int64_t>(d);
  return true;
}

bool Args::Int(size_t i, const char* name, int64_t min, int64_t max, int64_t* out) {
  return CheckInt(env_, info_[i], Label(i, name), min, max, out);
}

bool Args::Fd(size_t i, const char* name, int* out) {
  int64_t v;
  if (!Int(i, name, 0, INT32_MAX, &v)) return false;
  *out = static_cast<int>(v);
  return true;
}

bool Args::DirFd(size_t i, const char* name, int* out) {
  int64_t v;
  if (!Int(i, name, AT_FDCWD, INT32_MAX, &v)) return false;
  if (v < 0 && v != AT_FDCWD) {
    ThrowRangeError(env_, Label(i, name) + " must be AT_FDCWD or >= 0");
    return false;
  }
  *out = static_cast<int>(v);
  return true;
}

bool Args::Flags(size_t i, const char* name, int* out) {
  int64_t v;
  if (!Int(i, name, 0, UINT32_MAX, &v)) return false;
  *out = static_cast<int>(static_cast<uint32_t>(v));
  return true;
}

bool Args::Id(size_t i, const char* name, uint32_t* out) {
  int64_t v;
  if (!Int(i, name, -1, UINT32_MAX, &v)) return false;
  *out = static_cast<uint32_t>(v);  // -1 becomes (uid_t)-1
  return true;
}

bool Args::Bool(size_t i, const char* name, bool* out) {
  Napi::Value v = info_[i];
  if (!v.IsBoolean()) {
    ThrowTypeError(env_, Label(i, name) + " must be a boolean");
    return false;
  }
  *out = v.As<Napi::Boolean>().Value();
  return true;
}

bool Args::Func(size_t i, const char* name, Napi::Function* out) {
  Napi::Value v = info_[i];
  if (!v.IsFunction()) {
    ThrowTypeError(env_, Label(i, name) + " must be a function");
    return false;
  }
  *out = v.As<Napi::Function>();
  return true;
}

bool Args::String(size_t i, const char* name, std::string* out) {
  Napi::Value v = info_[i];
  if (!v.IsString()) {
    ThrowTypeError(env_, Label(i, name) + " must be a string");
    return false;
  }
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

bool Args::Path(size_t i, const char* name, const char* syscall, std::string* out, bool allowNull,
                bool* isNull) {
  Napi::Value v = info_[i];
  if (isNull != nullptr) *isNull = false;
  if (allowNull && (v.IsNull() || v.IsUndefined())) {
    if (isNull != nullptr) *isNull = true;
    out->clear();
    return true;
  }
  if (v.IsString()) {
    *out = v.As<Napi::String>().Utf8Value();
  } else if (v.IsBuffer()) {
    char* data = nullptr;
    size_t len = 0;
    if (napi_get_buffer_info(env_, v, reinterpret_cast<void**>(&data), &len) != napi_ok) {
      ThrowTypeError(env_, Label(i, name) + " must be a string or Buffer");
      return false;
    }
    out->assign(data != nullptr ? data : "", len);
  } else {
    ThrowTypeError(env_, Label(i, name) + (allowNull ? " must be a string, Buffer or null"
                                                       : " must be a string or Buffer"));
    return false;
  }
  if (out->find('\0') != std::string::npos) {
    ThrowErrno(env_, EINVAL, syscall);
    return false;
  }
  return true;
}

bool Args::Buf(size_t i, const char* name, char** data, size_t* len, bool allowNull) {
  Napi::Value v = info_[i];
  if (allowNull && (v.IsNull() || v.IsUndefined())) {
    *data = nullptr;
    *len = 0;
    return true;
  }
  if (!v.IsBuffer() ||
      napi_get_buffer_info(env_, v, reinterpret_cast<void**>(data), len) != napi_ok) {
    ThrowTypeError(env_, Label(i, name) + (allowNull ? " must be a Buffer or null"
                                                       : " must be a Buffer"));
    return false;
  }
  return true;
}

bool Args::ArrayBuf(size_t i, const char* name, Napi::ArrayBuffer* out, char** data, size_t* len) {
  Napi::Value v = info_[i];
  if (!v.IsArrayBuffer()) {
    ThrowTypeError(env_, Label(i, name) + " must be an ArrayBuffer");
    return false;
  }
  void* d = nullptr;
  size_t l = 0;
  if (napi_get_arraybuffer_info(env_, v, &d, &l) != napi_ok) {
    ThrowTypeError(env_, Label(i, name) + " must be an ArrayBuffer");
    return false;
  }
  *out = v.As<Napi::ArrayBuffer>();
  *data = static_cast<char*>(d);
  *len = l;
  return true;
}

bool Args::FdArray(size_t i, const char* name, size_t maxCount, std::vector<int>* out) {
  Napi::Value v = info_[i];
  if (!v.IsArray()) {
    ThrowTypeError(env_, Label(i, name) + " must be an array of fds");
    return false;
  }
  Napi::Array arr = v.As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n > maxCount) {
    ThrowRangeError(env_, Label(i, name) + " may hold at most " + std::to_string(maxCount) +
                              " fds, got " + std::to_string(n));
    return false;
  }
  out->clear();
  out->reserve(n);
  for (uint32_t k = 0; k < n; k++) {
    Napi::Value e = arr.Get(k);
    if (env_.IsExceptionPending()) return false;
    int64_t fd;
    if (!CheckInt(env_, e, Label(i, name) + "[" + std::to_string(k) + "]", 0, INT32_MAX, &fd))
      return false;
    out->push_back(static_cast<int>(fd));
  }
  return true;
}

// ---------------------------------------------------------------- errnoName, constants

static Napi::Value ErrnoNameJs(const Napi::CallbackInfo& info) {
  Args a(info, "errnoName");
  int64_t e;
  if (!a.Count(1) || !a.Int(0, "errno", -65535, 65535, &e)) return {};
  // Positive errno, or a negative one (a libuv status such as the Poller's).
  const char* name = ErrnoName(static_cast<int>(e < 0 ? -e : e));
  return Napi::String::New(info.Env(), name != nullptr ? name : "UNKNOWN");
}

void InitErrors(Napi::Env env, Napi::Object exports) {
  exports.Set("errnoName", Napi::Function::New(env, ErrnoNameJs, "errnoName"));

  Napi::Object c = Napi::Object::New(env);
  auto set = [&](const char* name, int64_t v) { c.Set(name, Napi::Number::New(env, static_cast<double>(v))); };
#define K(x) set(#x, (x))
  // open(2)
  K(O_RDONLY); K(O_WRONLY); K(O_RDWR); K(O_CREAT); K(O_EXCL); K(O_TRUNC); K(O_APPEND);
  K(O_NONBLOCK); K(O_DIRECTORY); K(O_NOFOLLOW); K(O_PATH); K(O_CLOEXEC); K(O_TMPFILE);
  K(O_NOATIME); K(O_DIRECT); K(O_SYNC); K(O_DSYNC); K(O_ACCMODE); K(O_NOCTTY); K(O_ASYNC);
  K(O_NDELAY);
  // glibc defines O_LARGEFILE as 0 on 64-bit targets (the kernel forces it there). We export
  // the kernel's bit instead, which is what a FUSE/virtio-fs peer sends in open flags.
#if defined(__x86_64__) || defined(__i386__)
  set("O_LARGEFILE", 0100000);
#elif defined(__aarch64__) || defined(__arm__)
  set("O_LARGEFILE", 0400000);
#else
  K(O_LARGEFILE);
#endif
  // *at(2)
  K(AT_FDCWD); K(AT_EMPTY_PATH); K(AT_SYMLINK_NOFOLLOW); K(AT_SYMLINK_FOLLOW); K(AT_REMOVEDIR);
  K(AT_NO_AUTOMOUNT); K(AT_EACCESS);
  // openat2(2)
  K(RESOLVE_BENEATH); K(RESOLVE_IN_ROOT); K(RESOLVE_NO_MAGICLINKS); K(RESOLVE_NO_SYMLINKS);
  K(RESOLVE_NO_XDEV); K(RESOLVE_CACHED);
  // stat
  K(S_IFMT); K(S_IFREG); K(S_IFDIR); K(S_IFLNK); K(S_IFCHR); K(S_IFBLK); K(S_IFIFO); K(S_IFSOCK);
  K(S_ISUID); K(S_ISGID); K(S_ISVTX);
  // fcntl, locks, lseek
  K(F_OFD_GETLK); K(F_OFD_SETLK); K(F_OFD_SETLKW); K(F_RDLCK); K(F_WRLCK); K(F_UNLCK);
  K(F_GETFD); K(F_SETFD); K(F_GETFL); K(F_SETFL); K(FD_CLOEXEC);
  K(SEEK_SET); K(SEEK_CUR); K(SEEK_END); K(SEEK_DATA); K(SEEK_HOLE);
  K(LOCK_SH); K(LOCK_EX); K(LOCK_UN); K(LOCK_NB);
  // renameat2, xattr, fallocate, utimensat
  K(RENAME_NOREPLACE); K(RENAME_EXCHANGE); K(RENAME_WHITEOUT);
  K(XATTR_CREATE); K(XATTR_REPLACE);
  K(FALLOC_FL_KEEP_SIZE); K(FALLOC_FL_PUNCH_HOLE); K(FALLOC_FL_ZERO_RANGE);
  K(FALLOC_FL_COLLAPSE_RANGE); K(FALLOC_FL_INSERT_RANGE); K(FALLOC_FL_NO_HIDE_STALE);
  K(FALLOC_FL_UNSHARE_RANGE);
  K(UTIME_NOW); K(UTIME_OMIT);
  // memfd, eventfd, sockets
  K(MFD_CLOEXEC); K(MFD_ALLOW_SEALING);
  K(F_ADD_SEALS); K(F_GET_SEALS); K(F_SEAL_SEAL); K(F_SEAL_SHRINK); K(F_SEAL_GROW); K(F_SEAL_WRITE);
#ifdef F_SEAL_FUTURE_WRITE
  K(F_SEAL_FUTURE_WRITE);
#endif
  K(EFD_NONBLOCK); K(EFD_CLOEXEC); K(EFD_SEMAPHORE);
  K(SHUT_RD); K(SHUT_WR); K(SHUT_RDWR);
  // limits of this addon
  set("SCM_MAX_FD", kMaxFdsPerMsg);
  set("IOV_MAX", static_cast<int64_t>(kMaxIov));
  K(MAX_HANDLE_SZ);
  set("PAGE_SIZE", sysconf(_SC_PAGESIZE));
#undef K
  // Every errno the platform knows by name (1..133 on Linux and beyond, if any), plus aliases.
  for (int e = 1; e < 4096; e++) {
    const char* name = strerrorname_np(e);
    if (name != nullptr) set(name, e);
  }
  set("EWOULDBLOCK", EWOULDBLOCK);
  set("EDEADLOCK", EDEADLOCK);
  set("ENOTSUP", ENOTSUP);
  exports.Set("constants", c);
}

}  // namespace vfsk
