// memfd, mmap as external ArrayBuffers (with a table of live mappings), eventfd, and the
// acquire/release helpers for rings shared with the guest.
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mutex>
#include <unordered_map>

// Only for Isolate::LowMemoryNotification (reduceMemory): N-API has no way to ask V8 to give
// memory back; everything else here stays on N-API.
#include <v8.h>

namespace vfsk {
namespace {

// Live mappings by base address: an entry exists from mmap() until munmap() (or the GC
// finalizer). The Mapping object itself may outlive its entry while async I/O still uses it.
std::mutex gTableMu;
std::unordered_map<const void*, Mapping*> gTable;

void TableRemove(Mapping* m) {
  std::lock_guard<std::mutex> lk(gTableMu);
  auto it = gTable.find(m->addr);
  if (it != gTable.end() && it->second == m) gTable.erase(it);
}

void DoUnmap(Mapping* m) {
  if (!m->unmapped) {
    ::munmap(m->addr, m->len);
    m->unmapped = true;
  }
}

// Runs on the JS thread when V8 frees the backing store: after munmap() detached the buffer,
// after the buffer was garbage collected, or at env teardown.
void FinalizeMapping(napi_env /*env*/, void* /*data*/, void* hint) {
  Mapping* m = static_cast<Mapping*>(hint);
  m->finalized = true;
  TableRemove(m);
  if (m->inflight > 0) {
    m->unmapPending = true;  // the last ReleaseMapping unmaps and frees it
    return;
  }
  DoUnmap(m);
  delete m;
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "memfdCreate");
  std::string name;
  int flags;
  if (!a.Count(2) || !a.Path(0, "name", "memfd_create", &name) || !a.Flags(1, "flags", &flags))
    return {};
  int fd = memfd_create(name.c_str(), static_cast<unsigned>(flags) | MFD_CLOEXEC);
  if (fd < 0) {
    ThrowErrno(env, errno, "memfd_create");
    return {};
  }
  return Napi::Number::New(env, fd);
}

// Every seal Linux defines (memfd_create(2)); other bits are refused before the syscall.
constexpr int64_t kAllSeals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
#ifdef F_SEAL_FUTURE_WRITE
                              | F_SEAL_FUTURE_WRITE
#endif
    ;

// fcntl(F_GET_SEALS): EINVAL for an fd that does not support seals (not a memfd/shmem file).
Napi::Value GetSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "getSeals");
  int fd;
  if (!a.Count(1) || !a.Fd(0, "fd", &fd)) return {};
  int r = fcntl(fd, F_GET_SEALS);
  if (r < 0) {
    ThrowErrno(env, errno, "fcntl");
    return {};
  }
  return Napi::Number::New(env, r);
}

// fcntl(F_ADD_SEALS): EPERM when F_SEAL_SEAL is set, EBUSY for F_SEAL_WRITE with writable
// shared mappings, EINVAL for an fd without seal support.
Napi::Value AddSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "addSeals");
  int fd;
  int64_t seals;
  if (!a.Count(2) || !a.Fd(0, "fd", &fd) || !a.Int(1, "seals", 0, kAllSeals, &seals)) return {};
  if ((seals & ~kAllSeals) != 0) {
    ThrowRangeError(env, "addSeals(): argument 2 \"seals\" has bits that are not F_SEAL_* flags");
    return {};
  }
  if (fcntl(fd, F_ADD_SEALS, static_cast<int>(seals)) < 0) {
    ThrowErrno(env, errno, "fcntl");
    return {};
  }
  return env.Undefined();
}

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "mmap");
  int fd;
  int64_t length, offset;
  bool writable;
  if (!a.Count(4) || !a.Fd(0, "fd", &fd) || !a.Int(1, "length", 1, kMaxSafe, &length) ||
      !a.Int(2, "offset", 0, kMaxSafe, &offset) || !a.Bool(3, "writable", &writable))
    return {};
  long page = sysconf(_SC_PAGESIZE);
  if (offset % page != 0) {
    ThrowRangeError(env, "mmap(): argument 3 \"offset\" must be a multiple of the page size (" +
                             std::to_string(page) + ")");
    return {};
  }
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* addr = ::mmap(nullptr, static_cast<size_t>(length), prot, MAP_SHARED, fd,
                      static_cast<off_t>(offset));
  if (addr == MAP_FAILED) {
    ThrowErrno(env, errno, "mmap");
    return {};
  }
  Mapping* m = new Mapping();
  m->addr = addr;
  m->len = static_cast<size_t>(length);
  m->writable = writable;
  napi_value ab;
  napi_status st = napi_create_external_arraybuffer(env, addr, m->len, FinalizeMapping, m, &ab);
  if (st != napi_ok) {
    ::munmap(addr, m->len);
    delete m;
    if (!env.IsExceptionPending())
      ThrowCodeError(env, "mmap(): cannot create an external ArrayBuffer", "ERR_NAPI");
    return {};
  }
  {
    std::lock_guard<std::mutex> lk(gTableMu);
    gTable[addr] = m;
  }
  return Napi::Value(env, ab);
}

Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "munmap");
  Napi::ArrayBuffer ab;
  char* data;
  size_t len;
  if (!a.Count(1) || !a.ArrayBuf(0, "buffer", &ab, &data, &len)) return {};
  if (data == nullptr && len == 0) return env.Undefined();  // already detached: idempotent
  Mapping* m = FindMapping(data);
  if (m == nullptr || m->len != len) {
    ThrowTypeError(env, "munmap(): argument 1 \"buffer\" is not an ArrayBuffer returned by mmap()");
    return {};
  }
  // Pin `m` across the detach: whenever Node runs the finalizer (it defers it to the event
  // loop today), `m` stays valid until the ReleaseMapping below.
  AcquireMapping(m);
  // Detach first: every view becomes length 0, so JS can no longer reach the memory.
  napi_status st = napi_detach_arraybuffer(env, ab);
  if (st != napi_ok) {
    // Not detachable (should not happen for our external buffers). Keep the memory mapped so
    // no JS view can fault; the finalizer unmaps it when the buffer is collected.
    m->inflight--;
    if (!env.IsExceptionPending())
      ThrowCodeError(env, "munmap(): cannot detach the ArrayBuffer", "ERR_NAPI");
    return {};
  }
  TableRemove(m);
  m->unmapPending = true;
  // Unmaps now unless async I/O still uses the mapping (then the last ReleaseMapping does);
  // frees `m` if the finalizer already ran, else the finalizer frees it later.
  ReleaseMapping(m);
  return env.Undefined();
}

Napi::Value Eventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "eventfd");
  int64_t initval;
  int flags;
  if (!a.Count(2) || !a.Int(0, "initval", 0, UINT32_MAX, &initval) || !a.Flags(1, "flags", &flags))
    return {};
  int fd = eventfd(static_cast<unsigned>(initval), flags | EFD_CLOEXEC);
  if (fd < 0) {
    ThrowErrno(env, errno, "eventfd");
    return {};
  }
  return Napi::Number::New(env, fd);
}

Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "eventfdWrite");
  int fd;
  int64_t value;
  if (!a.Count(2) || !a.Fd(0, "fd", &fd) || !a.Int(1, "value", 0, kMaxSafe, &value)) return {};
  uint64_t v = static_cast<uint64_t>(value);
  ssize_t n;
  do {
    n = write(fd, &v, sizeof v);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Boolean::New(env, false);
    ThrowErrno(env, errno, "write");
    return {};
  }
  return Napi::Boolean::New(env, true);
}

Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "eventfdRead");
  int fd;
  if (!a.Count(1) || !a.Fd(0, "fd", &fd)) return {};
  uint64_t v = 0;
  ssize_t n;
  do {
    n = read(fd, &v, sizeof v);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    ThrowErrno(env, errno, "read");
    return {};
  }
  if (n != sizeof v) {
    ThrowErrno(env, EINVAL, "read");
    return {};
  }
  return Napi::Number::New(env, static_cast<double>(v));
}

// ---------------------------------------------------------------- ring helpers

// Resolves (buffer, offset) to an aligned address of `size` bytes inside the buffer.
template <typename T>
T* AtomicTarget(Args& a, const char* fn, bool forStore) {
  Napi::Env env = a.Env();
  Napi::ArrayBuffer ab;
  char* data;
  size_t len;
  int64_t offset;
  if (!a.ArrayBuf(0, "buffer", &ab, &data, &len) ||
      !a.Int(1, "offset", 0, kMaxSafe, &offset))
    return nullptr;
  if (len < sizeof(T) || static_cast<uint64_t>(offset) > len - sizeof(T)) {
    ThrowRangeError(env, std::string(fn) + "(): offset " + std::to_string(offset) + " + " +
                             std::to_string(sizeof(T)) + " is outside the buffer (byteLength " +
                             std::to_string(len) + ")");
    return nullptr;
  }
  char* p = data + offset;
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) {
    ThrowRangeError(env, std::string(fn) + "(): offset " + std::to_string(offset) +
                             " is not " + std::to_string(alignof(T)) + "-byte aligned");
    return nullptr;
  }
  if (forStore) {
    Mapping* m = FindMapping(data);
    if (m != nullptr && !m->writable) {
      ThrowTypeError(env, std::string(fn) + "(): the mapping is read-only", "ERR_INVALID_ARG_VALUE");
      return nullptr;
    }
  }
  return reinterpret_cast<T*>(p);
}

Napi::Value LoadAcquireU16(const Napi::CallbackInfo& info) {
  Args a(info, "loadAcquireU16");
  if (!a.Count(2)) return {};
  uint16_t* p = AtomicTarget<uint16_t>(a, "loadAcquireU16", false);
  if (p == nullptr) return {};
  return Napi::Number::New(info.Env(), __atomic_load_n(p, __ATOMIC_ACQUIRE));
}

Napi::Value StoreReleaseU16(const Napi::CallbackInfo& info) {
  Args a(info, "storeReleaseU16");
  int64_t v;
  if (!a.Count(3)) return {};
  uint16_t* p = AtomicTarget<uint16_t>(a, "storeReleaseU16", true);
  if (p == nullptr || !a.Int(2, "value", 0, 0xffff, &v)) return {};
  __atomic_store_n(p, static_cast<uint16_t>(v), __ATOMIC_RELEASE);
  return info.Env().Undefined();
}

Napi::Value LoadAcquireU64(const Napi::CallbackInfo& info) {
  Args a(info, "loadAcquireU64");
  if (!a.Count(2)) return {};
  uint64_t* p = AtomicTarget<uint64_t>(a, "loadAcquireU64", false);
  if (p == nullptr) return {};
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(__atomic_load_n(p, __ATOMIC_ACQUIRE)));
}

Napi::Value StoreReleaseU64(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "storeReleaseU64");
  if (!a.Count(3)) return {};
  uint64_t* p = AtomicTarget<uint64_t>(a, "storeReleaseU64", true);
  if (p == nullptr) return {};
  Napi::Value val = info[2];
  if (!val.IsBigInt()) {
    ThrowTypeError(env, "storeReleaseU64(): argument 3 \"value\" must be a bigint");
    return {};
  }
  // Reject negatives and values >= 2^64 (ToUint64 wraps them and reports lossless=false).
  bool lossless = false;
  uint64_t v = val.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) {
    ThrowRangeError(env, "storeReleaseU64(): argument 3 \"value\" must be >= 0n and < 2n ** 64n");
    return {};
  }
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
  return env.Undefined();
}

Napi::Value Fence(const Napi::CallbackInfo& info) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  return info.Env().Undefined();
}

// Gives memory back to the kernel at a quiet moment: V8's low-memory GC (full collections that
// also shrink the young generation to its minimum and release pooled pages), then glibc's
// malloc_trim, which returns the free pages of every arena (the main heap's top and the middle
// of each arena: the start-up garbage of parsing and compiling stays there otherwise).
// Synchronous: a full GC of this process's heap (10-40 ms for a worker, by the machine's load).
Napi::Value ReduceMemory(const Napi::CallbackInfo& info) {
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  if (isolate != nullptr) isolate->LowMemoryNotification();
  bool trimmed = ::malloc_trim(0) != 0;
  return Napi::Boolean::New(info.Env(), trimmed);
}

// glibc's malloc accounting (mallinfo2), in bytes: for tests and diagnostics of private memory.
Napi::Value MallocStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct mallinfo2 mi = ::mallinfo2();
  Napi::Object o = Napi::Object::New(env);
  // arena: bytes from brk (main heap) + other arenas' mmapped heaps; hblkhd: large blocks
  // mmapped on their own; uordblks: in use; fordblks: free (held, not returned).
  o.Set("arena", Napi::Number::New(env, static_cast<double>(mi.arena)));
  o.Set("mmapped", Napi::Number::New(env, static_cast<double>(mi.hblkhd)));
  o.Set("inUse", Napi::Number::New(env, static_cast<double>(mi.uordblks)));
  o.Set("free", Napi::Number::New(env, static_cast<double>(mi.fordblks)));
  o.Set("releasable", Napi::Number::New(env, static_cast<double>(mi.keepcost)));
  return o;
}

}  // namespace

Mapping* FindMapping(const void* data) {
  if (data == nullptr) return nullptr;
  std::lock_guard<std::mutex> lk(gTableMu);
  auto it = gTable.find(data);
  return it == gTable.end() ? nullptr : it->second;
}

void AcquireMapping(Mapping* m) { m->inflight++; }

void ReleaseMapping(Mapping* m) {
  if (--m->inflight > 0) return;
  if (m->unmapPending || m->finalized) DoUnmap(m);
  if (m->finalized) delete m;
}

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("getSeals", Napi::Function::New(env, GetSeals, "getSeals"));
  exports.Set("addSeals", Napi::Function::New(env, AddSeals, "addSeals"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  exports.Set("eventfd", Napi::Function::New(env, Eventfd, "eventfd"));
  exports.Set("reduceMemory", Napi::Function::New(env, ReduceMemory, "reduceMemory"));
  exports.Set("mallocStats", Napi::Function::New(env, MallocStats, "mallocStats"));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite, "eventfdWrite"));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead, "eventfdRead"));
  exports.Set("loadAcquireU16", Napi::Function::New(env, LoadAcquireU16, "loadAcquireU16"));
  exports.Set("storeReleaseU16", Napi::Function::New(env, StoreReleaseU16, "storeReleaseU16"));
  exports.Set("loadAcquireU64", Napi::Function::New(env, LoadAcquireU64, "loadAcquireU64"));
  exports.Set("storeReleaseU64", Napi::Function::New(env, StoreReleaseU64, "storeReleaseU64"));
  exports.Set("fence", Napi::Function::New(env, Fence, "fence"));
}

}  // namespace vfsk
