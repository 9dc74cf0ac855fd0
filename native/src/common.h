// Shared helpers of the vfsk_native addon: argument checking, error objects, per-env data.
//
// Built with NAPI_DISABLE_CPP_EXCEPTIONS: every helper that can fail throws a JS exception
// (sets it pending) and returns false; the caller then returns an empty value at once.
#ifndef VFSK_COMMON_H_
#define VFSK_COMMON_H_

#include <napi.h>

#include <sys/stat.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace vfsk {

// 2^53: the largest integer a JS number holds exactly (the brief's bound for offsets).
constexpr int64_t kMaxSafe = int64_t{1} << 53;
// SCM_MAX_FD in the kernel: at most this many fds in one SCM_RIGHTS message.
constexpr int kMaxFdsPerMsg = 253;
// IOV_MAX on Linux.
constexpr size_t kMaxIov = 1024;

// Per-env data (napi_set_instance_data): constructor references live here, never in globals.
struct InstanceData {
  Napi::FunctionReference pollerCtor;
};

// --- errors
// Name of an errno ("ENOENT"); nullptr when the platform doesn't know it.
const char* ErrnoName(int err);
// Error with code/errno/syscall and message "ENOENT: openat failed: No such file or directory".
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall);
void ThrowErrno(Napi::Env env, int err, const char* syscall);
// TypeError with code ERR_INVALID_ARG_TYPE (or `code` if given).
void ThrowTypeError(Napi::Env env, const std::string& msg, const char* code = "ERR_INVALID_ARG_TYPE");
// RangeError with code ERR_OUT_OF_RANGE.
void ThrowRangeError(Napi::Env env, const std::string& msg);
// Plain Error with a code (e.g. ERR_INVALID_STATE).
void ThrowCodeError(Napi::Env env, const std::string& msg, const char* code);
// Hands an exception that is pending after a callback from the event loop to Node's
// uncaught-exception machinery (there is no JS frame to propagate it to).
void RaisePendingAsFatal(Napi::Env env);

// --- argument checking. Each method throws and returns false on a bad argument.
class Args {
 public:
  Args(const Napi::CallbackInfo& info, const char* fn) : info_(info), env_(info.Env()), fn_(fn) {}

  Napi::Env Env() const { return env_; }
  const Napi::CallbackInfo& Info() const { return info_; }
  Napi::Value operator[](size_t i) const { return info_[i]; }

  // At least n arguments.
  bool Count(size_t n);
  // Integer number in [min, max].
  bool Int(size_t i, const char* name, int64_t min, int64_t max, int64_t* out);
  // A file descriptor: integer in [0, INT32_MAX].
  bool Fd(size_t i, const char* name, int* out);
  // A directory fd: AT_FDCWD or >= 0.
  bool DirFd(size_t i, const char* name, int* out);
  // Flags: integer in [0, UINT32_MAX], returned as the same bits in an int.
  bool Flags(size_t i, const char* name, int* out);
  // uid_t/gid_t: integer in [-1, UINT32_MAX] (-1 = "leave unchanged").
  bool Id(size_t i, const char* name, uint32_t* out);
  bool Bool(size_t i, const char* name, bool* out);
  bool Func(size_t i, const char* name, Napi::Function* out);
  bool String(size_t i, const char* name, std::string* out);
  // string (UTF-8) or Buffer (raw bytes). A NUL byte throws an EINVAL errno error naming
  // `syscall`. When allowNull and the value is null/undefined, *isNull is set.
  bool Path(size_t i, const char* name, const char* syscall, std::string* out,
            bool allowNull = false, bool* isNull = nullptr);
  // Buffer (any ArrayBufferView). allowNull: null gives data=nullptr, len=0.
  bool Buf(size_t i, const char* name, char** data, size_t* len, bool allowNull = false);
  // ArrayBuffer.
  bool ArrayBuf(size_t i, const char* name, Napi::ArrayBuffer* out, char** data, size_t* len);
  // Array of fds (each a valid fd), at most maxCount.
  bool FdArray(size_t i, const char* name, size_t maxCount, std::vector<int>* out);

 private:
  std::string Label(size_t i, const char* name) const;
  const Napi::CallbackInfo& info_;
  Napi::Env env_;
  const char* fn_;
};

// Same validation as Args::Int for a property value (used for object fields).
bool CheckInt(Napi::Env env, Napi::Value v, const std::string& label, int64_t min, int64_t max,
              int64_t* out);

// --- struct stat in the STAT layout of shared/native.ts (128 bytes at out), fsops.cc.
void PutStat(char* out, const struct ::stat& st);

// --- registration of each module's functions on `exports`
void InitErrors(Napi::Env env, Napi::Object exports);
void InitSockets(Napi::Env env, Napi::Object exports);
void InitMemory(Napi::Env env, Napi::Object exports);
void InitPoll(Napi::Env env, Napi::Object exports, InstanceData* data);
void InitFsOps(Napi::Env env, Napi::Object exports);
void InitIo(Napi::Env env, Napi::Object exports);
void InitSandbox(Napi::Env env, Napi::Object exports);
void InitSeccomp(Napi::Env env, Napi::Object exports);
void InitRing(Napi::Env env, Napi::Object exports);
void InitFastFuse(Napi::Env env, Napi::Object exports);
void InitProcess(Napi::Env env, Napi::Object exports);
void InitDirents(Napi::Env env, Napi::Object exports);

// --- mappings made by mmap(), shared by memory.cc and io.cc (JS thread only, except the
// table lookups which are locked).
struct Mapping {
  void* addr = nullptr;
  size_t len = 0;
  bool writable = false;
  int inflight = 0;         // async I/O operations using this mapping
  bool unmapPending = false;  // munmap() was called while inflight > 0
  bool unmapped = false;    // ::munmap done
  bool finalized = false;   // the ArrayBuffer's finalizer ran
};
// The live (not yet munmap()ed) mapping whose base address is `data`, or nullptr.
Mapping* FindMapping(const void* data);
// An async op starts/ends using `m` (JS thread). Release may unmap and free `m`.
void AcquireMapping(Mapping* m);
void ReleaseMapping(Mapping* m);

}  // namespace vfsk

#endif  // VFSK_COMMON_H_
