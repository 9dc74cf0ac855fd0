// Async (libuv threadpool) calls: preadv/pwritev on mapped memory, pread/pwrite, fsync,
// syncfs, fallocate, copy_file_range, blocking OFD locks and flock. Plus synchronous
// preadv2/pwritev2 on mapped memory, for RWF_NOWAIT attempts on the JS thread.
//
// Each call returns the syscall's own result: a short transfer is a valid answer and is not
// looped on. EINTR is retried. Buffers used by an operation are held by a strong reference
// until its callback, and mmap()ed memory additionally by an in-flight count, so munmap()
// defers the unmap until the operation has finished.
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/file.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cmath>
#include <functional>
#include <utility>

namespace vfsk {
namespace {

class SyscallWorker : public Napi::AsyncWorker {
 public:
  enum class Kind { kNumber, kVoid };

  SyscallWorker(Napi::Function cb, const char* syscall, Kind kind)
      : Napi::AsyncWorker(cb, "vfsk:io"), syscall_(syscall), kind_(kind) {}

  ~SyscallWorker() override { ReleaseMappings(); }

  void SetOp(std::function<long()> op) { op_ = std::move(op); }

  // Holds `v` (an ArrayBuffer or Buffer) alive until the callback.
  void Hold(Napi::Value v) { refs_.push_back(Napi::Persistent(v.As<Napi::Object>())); }
  void UseMapping(Mapping* m) {
    AcquireMapping(m);
    mappings_.push_back(m);
  }

 protected:
  void Execute() override {
    long r;
    do {
      errno = 0;
      r = op_();
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      err_ = errno != 0 ? errno : EIO;
    } else {
      result_ = r;
    }
  }

  void OnOK() override {
    // Release first: if munmap() was called meanwhile, the memory is unmapped before the
    // callback runs, so the callback sees the final state.
    ReleaseMappings();
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (err_ != 0) {
      Callback().Call(Receiver().Value(), {ErrnoError(env, err_, syscall_).Value(), env.Undefined()});
    } else if (kind_ == Kind::kVoid) {
      Callback().Call(Receiver().Value(), {env.Null(), env.Undefined()});
    } else {
      Callback().Call(Receiver().Value(),
                      {env.Null(), Napi::Number::New(env, static_cast<double>(result_))});
    }
  }

  void OnError(const Napi::Error& e) override {
    // Not reached (errors travel in err_), but keep the contract if it ever is.
    ReleaseMappings();
    Napi::HandleScope scope(Env());
    Callback().Call(Receiver().Value(), {e.Value(), Env().Undefined()});
  }

 private:
  void ReleaseMappings() {
    for (Mapping* m : mappings_) ReleaseMapping(m);
    mappings_.clear();
  }

  const char* syscall_;
  Kind kind_;
  std::function<long()> op_;
  std::vector<Napi::ObjectReference> refs_;
  std::vector<Mapping*> mappings_;
  int err_ = 0;
  long result_ = 0;
};

Napi::Value Queue(SyscallWorker* w, std::function<long()> op) {
  w->SetOp(std::move(op));
  w->Queue();
  return w->Env().Undefined();
}

// ---------------------------------------------------------------- preadv / pwritev

// One distinct buffer among the segments (several iovecs often share one guest mapping).
struct IovBuffer {
  Napi::Value buffer;
  char* data;
  Mapping* mapping;
};

std::string SegmentLabel(const char* syscall, uint32_t k) {
  return std::string(syscall) + "(): segments[" + std::to_string(k) + "]";
}

// An integer in [0, 2^53]. Checked inline first: this runs per READ on the event loop, so the
// valid case builds no label string; anything else goes to CheckInt for the error.
bool SegmentInt(Napi::Env env, Napi::Value v, const char* syscall, uint32_t k, const char* field,
                int64_t* out) {
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= static_cast<double>(kMaxSafe) && std::trunc(d) == d) {
      *out = static_cast<int64_t>(d);
      return true;
    }
  }
  return CheckInt(env, v, SegmentLabel(syscall, k) + "." + field, 0, kMaxSafe, out);
}

// Validates `segments` (each {buffer: ArrayBuffer, offset, length} inside its buffer) and fills
// iov; lists each distinct buffer in `distinct` (null: not needed, e.g. for a synchronous call).
bool ParseSegments(Napi::Env env, Napi::Value v, std::vector<iovec>* iov,
                   std::vector<IovBuffer>* distinct, const char* syscall) {
  if (!v.IsArray()) {
    ThrowTypeError(env, std::string(syscall) + "(): argument \"segments\" must be an array");
    return false;
  }
  Napi::Array arr = v.As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n > kMaxIov) {
    ThrowRangeError(env, std::string(syscall) + "(): at most " + std::to_string(kMaxIov) +
                             " segments (IOV_MAX), got " + std::to_string(n));
    return false;
  }
  iov->clear();
  iov->reserve(n);
  uint64_t total = 0;
  for (uint32_t k = 0; k < n; k++) {
    auto label = [&]() { return SegmentLabel(syscall, k); };
    Napi::Value sv = arr.Get(k);
    if (env.IsExceptionPending()) return false;
    if (!sv.IsObject()) {
      ThrowTypeError(env, label() + " must be an object {buffer, offset, length}");
      return false;
    }
    Napi::Object so = sv.As<Napi::Object>();
    Napi::Value bv = so.Get("buffer");
    if (env.IsExceptionPending()) return false;
    if (!bv.IsArrayBuffer()) {
      ThrowTypeError(env, label() + ".buffer must be an ArrayBuffer");
      return false;
    }
    void* data = nullptr;
    size_t byteLength = 0;
    if (napi_get_arraybuffer_info(env, bv, &data, &byteLength) != napi_ok) {
      ThrowTypeError(env, label() + ".buffer must be an ArrayBuffer");
      return false;
    }
    int64_t off, len;
    Napi::Value ov = so.Get("offset");
    if (env.IsExceptionPending() || !SegmentInt(env, ov, syscall, k, "offset", &off)) return false;
    Napi::Value lv = so.Get("length");
    if (env.IsExceptionPending() || !SegmentInt(env, lv, syscall, k, "length", &len)) return false;
    if (static_cast<uint64_t>(off) > byteLength ||
        static_cast<uint64_t>(len) > byteLength - static_cast<uint64_t>(off)) {
      ThrowRangeError(env, label() + ": offset " + std::to_string(off) + " + length " +
                               std::to_string(len) + " exceeds byteLength " +
                               std::to_string(byteLength));
      return false;
    }
    total += static_cast<uint64_t>(len);
    if (total > static_cast<uint64_t>(SSIZE_MAX)) {
      ThrowRangeError(env, std::string(syscall) + "(): total length exceeds SSIZE_MAX");
      return false;
    }
    char* base = static_cast<char*>(data);
    if (distinct != nullptr) {
      bool seen = false;
      for (const IovBuffer& s : *distinct) {
        if (s.data == base && (base != nullptr || s.buffer.StrictEquals(bv))) {
          seen = true;
          break;
        }
      }
      if (!seen) distinct->push_back({bv, base, FindMapping(base)});
    }
    iov->push_back({base + off, static_cast<size_t>(len)});
  }
  return true;
}

// Validates `segments` and fills iov; holds each distinct buffer in the new worker `*wOut`.
bool BuildIov(Args& a, size_t i, std::vector<iovec>* iov, SyscallWorker** wOut,
              Napi::Function cb, const char* syscall) {
  std::vector<IovBuffer> distinct;
  if (!ParseSegments(a.Env(), a[i], iov, &distinct, syscall)) return false;
  // All valid: only now create the worker and take references (nothing to undo on error).
  SyscallWorker* w = new SyscallWorker(cb, syscall, SyscallWorker::Kind::kNumber);
  for (const IovBuffer& s : distinct) {
    w->Hold(s.buffer);
    if (s.mapping != nullptr) w->UseMapping(s.mapping);
  }
  *wOut = w;
  return true;
}

Napi::Value VectorIo(const Napi::CallbackInfo& info, bool write) {
  const char* name = write ? "pwritev" : "preadv";
  Args a(info, name);
  int fd;
  int64_t pos;
  Napi::Function cb;
  if (!a.Count(4) || !a.Fd(0, "fd", &fd) || !a.Int(1, "position", 0, kMaxSafe, &pos) ||
      !a.Func(3, "cb", &cb))
    return {};
  auto iov = std::make_shared<std::vector<iovec>>();
  SyscallWorker* w = nullptr;
  if (!BuildIov(a, 2, iov.get(), &w, cb, name)) return {};
  off_t off = static_cast<off_t>(pos);
  if (write) {
    return Queue(w, [fd, off, iov]() -> long {
      return pwritev(fd, iov->data(), static_cast<int>(iov->size()), off);
    });
  }
  return Queue(w, [fd, off, iov]() -> long {
    return preadv(fd, iov->data(), static_cast<int>(iov->size()), off);
  });
}

Napi::Value Preadv(const Napi::CallbackInfo& info) { return VectorIo(info, false); }
Napi::Value Pwritev(const Napi::CallbackInfo& info) { return VectorIo(info, true); }

// ---------------------------------------------------------------- preadv2 / pwritev2, synchronous

// On the JS thread, meant with RWF_NOWAIT: a page-cache hit costs one syscall instead of two
// threadpool hand-offs. "Would block" (EAGAIN) and "NOWAIT not supported here" (EOPNOTSUPP)
// come back as -errno values, not exceptions, so falling back to the async call stays cheap.
// No buffer is held and no mapping pinned: munmap() only runs on this same thread, so nothing
// can unmap the memory during the call.
Napi::Value VectorIoSync(const Napi::CallbackInfo& info, bool write) {
  const char* name = write ? "pwritev2" : "preadv2";
  Args a(info, name);
  int fd, flags;
  int64_t pos;
  if (!a.Count(4) || !a.Fd(0, "fd", &fd) || !a.Int(1, "position", 0, kMaxSafe, &pos) ||
      !a.Flags(3, "flags", &flags))
    return {};
  std::vector<iovec> iov;
  if (!ParseSegments(a.Env(), info[2], &iov, nullptr, name)) return {};
  off_t off = static_cast<off_t>(pos);
  ssize_t r;
  do {
    r = write ? pwritev2(fd, iov.data(), static_cast<int>(iov.size()), off, flags)
              : preadv2(fd, iov.data(), static_cast<int>(iov.size()), off, flags);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    int err = errno;
    if (err == EAGAIN || err == EOPNOTSUPP) return Napi::Number::New(info.Env(), -err);
    ThrowErrno(info.Env(), err, name);
    return {};
  }
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

Napi::Value Preadv2Sync(const Napi::CallbackInfo& info) { return VectorIoSync(info, false); }
Napi::Value Pwritev2Sync(const Napi::CallbackInfo& info) { return VectorIoSync(info, true); }

// ---------------------------------------------------------------- pread / pwrite

Napi::Value BufferIo(const Napi::CallbackInfo& info, bool write) {
  const char* name = write ? "pwrite" : "pread";
  Args a(info, name);
  int fd;
  char* data;
  size_t len;
  int64_t pos;
  Napi::Function cb;
  if (!a.Count(4) || !a.Fd(0, "fd", &fd) || !a.Buf(1, "buf", &data, &len) ||
      !a.Int(2, "position", 0, kMaxSafe, &pos) || !a.Func(3, "cb", &cb))
    return {};
  SyscallWorker* w = new SyscallWorker(cb, name, SyscallWorker::Kind::kNumber);
  w->Hold(info[1]);
  off_t off = static_cast<off_t>(pos);
  if (write) return Queue(w, [fd, data, len, off]() -> long { return pwrite(fd, data, len, off); });
  return Queue(w, [fd, data, len, off]() -> long { return pread(fd, data, len, off); });
}

Napi::Value Pread(const Napi::CallbackInfo& info) { return BufferIo(info, false); }
Napi::Value Pwrite(const Napi::CallbackInfo& info) { return BufferIo(info, true); }

// ---------------------------------------------------------------- the rest

Napi::Value Fsync(const Napi::CallbackInfo& info) {
  Args a(info, "fsync");
  int fd;
  bool dataOnly;
  Napi::Function cb;
  if (!a.Count(3) || !a.Fd(0, "fd", &fd) || !a.Bool(1, "dataOnly", &dataOnly) ||
      !a.Func(2, "cb", &cb))
    return {};
  SyscallWorker* w =
      new SyscallWorker(cb, dataOnly ? "fdatasync" : "fsync", SyscallWorker::Kind::kVoid);
  return Queue(w, [fd, dataOnly]() -> long { return dataOnly ? fdatasync(fd) : fsync(fd); });
}

Napi::Value Syncfs(const Napi::CallbackInfo& info) {
  Args a(info, "syncfs");
  int fd;
  Napi::Function cb;
  if (!a.Count(2) || !a.Fd(0, "fd", &fd) || !a.Func(1, "cb", &cb)) return {};
  SyscallWorker* w = new SyscallWorker(cb, "syncfs", SyscallWorker::Kind::kVoid);
  return Queue(w, [fd]() -> long { return syncfs(fd); });
}

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Args a(info, "fallocate");
  int fd, mode;
  int64_t off, len;
  Napi::Function cb;
  if (!a.Count(5) || !a.Fd(0, "fd", &fd) || !a.Flags(1, "mode", &mode) ||
      !a.Int(2, "offset", 0, kMaxSafe, &off) || !a.Int(3, "length", 0, kMaxSafe, &len) ||
      !a.Func(4, "cb", &cb))
    return {};
  SyscallWorker* w = new SyscallWorker(cb, "fallocate", SyscallWorker::Kind::kVoid);
  return Queue(w, [fd, mode, off, len]() -> long {
    return fallocate(fd, mode, static_cast<off_t>(off), static_cast<off_t>(len));
  });
}

Napi::Value CopyFileRange(const Napi::CallbackInfo& info) {
  Args a(info, "copyFileRange");
  int fdIn, fdOut, flags;
  int64_t offIn, offOut, len;
  Napi::Function cb;
  if (!a.Count(7) || !a.Fd(0, "fdIn", &fdIn) || !a.Int(1, "offIn", 0, kMaxSafe, &offIn) ||
      !a.Fd(2, "fdOut", &fdOut) || !a.Int(3, "offOut", 0, kMaxSafe, &offOut) ||
      !a.Int(4, "length", 0, kMaxSafe, &len) || !a.Flags(5, "flags", &flags) ||
      !a.Func(6, "cb", &cb))
    return {};
  SyscallWorker* w = new SyscallWorker(cb, "copy_file_range", SyscallWorker::Kind::kNumber);
  return Queue(w, [fdIn, offIn, fdOut, offOut, len, flags]() -> long {
    loff_t in = offIn, out = offOut;
    return copy_file_range(fdIn, &in, fdOut, &out, static_cast<size_t>(len),
                           static_cast<unsigned>(flags));
  });
}

}  // namespace

void InitIo(Napi::Env env, Napi::Object exports) {
  // preadv2/pwritev2 flags join the constants table (built by InitErrors, which runs first).
  Napi::Value constants = exports.Get("constants");
  if (constants.IsObject()) {
    Napi::Object c = constants.As<Napi::Object>();
    c.Set("RWF_NOWAIT", Napi::Number::New(env, RWF_NOWAIT));
    c.Set("RWF_HIPRI", Napi::Number::New(env, RWF_HIPRI));
    c.Set("RWF_DSYNC", Napi::Number::New(env, RWF_DSYNC));
    c.Set("RWF_SYNC", Napi::Number::New(env, RWF_SYNC));
    c.Set("RWF_APPEND", Napi::Number::New(env, RWF_APPEND));
  }
  exports.Set("preadv", Napi::Function::New(env, Preadv, "preadv"));
  exports.Set("pwritev", Napi::Function::New(env, Pwritev, "pwritev"));
  exports.Set("preadv2Sync", Napi::Function::New(env, Preadv2Sync, "preadv2Sync"));
  exports.Set("pwritev2Sync", Napi::Function::New(env, Pwritev2Sync, "pwritev2Sync"));
  exports.Set("pread", Napi::Function::New(env, Pread, "pread"));
  exports.Set("pwrite", Napi::Function::New(env, Pwrite, "pwrite"));
  exports.Set("fsync", Napi::Function::New(env, Fsync, "fsync"));
  exports.Set("syncfs", Napi::Function::New(env, Syncfs, "syncfs"));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  exports.Set("copyFileRange", Napi::Function::New(env, CopyFileRange, "copyFileRange"));
}

}  // namespace vfsk
