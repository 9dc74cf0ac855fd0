// READDIRPLUS helper: the attributes of a batch of directory entries in one addon call.
//
// fstatatDirents(dirfd, names, index, count, out): for entry i, the name at
// names[start .. start + length) (start, length = index's i-th pair of little-endian i32s; the
// name must be followed by a NUL inside `names`, as getdents64 leaves it) is fstatat'ed under
// dirfd with AT_SYMLINK_NOFOLLOW. Slot i of `out` (kDirentStatSlot bytes) receives the STAT
// layout (128 bytes) and then an i32 errno (0: the stat is valid). A name that is not one plain
// component (empty, longer than NAME_MAX, holding '/' or NUL, or not NUL-terminated in place)
// gets EINVAL in its slot and is never passed to the kernel. Bad arguments (sizes, count) throw.
//
// Why: a repeat listing costs one fstatat per entry; one call per reply instead of one per
// entry saves the addon crossing and the JS stat buffer of each entry (dir_cursor.ts).
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

namespace vfsk {
namespace {

constexpr size_t kStatSize = 128;
constexpr size_t kDirentStatSlot = 136;
constexpr size_t kIndexPair = 8;

int32_t ReadI32(const char* p) {
  int32_t v;
  memcpy(&v, p, sizeof v);  // index may be unaligned
  return v;
}

void PutErrno(char* slot, int32_t err) {
  memcpy(slot + kStatSize, &err, sizeof err);
  memset(slot + kStatSize + sizeof err, 0, kDirentStatSlot - kStatSize - sizeof err);
}

Napi::Value FstatatDirents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "fstatatDirents");
  int dirfd;
  char *names, *index, *out;
  size_t namesLen, indexLen, outLen;
  int64_t count;
  if (!a.Count(5) || !a.Fd(0, "dirfd", &dirfd) || !a.Buf(1, "names", &names, &namesLen) ||
      !a.Buf(2, "index", &index, &indexLen) || !a.Int(3, "count", 0, INT32_MAX, &count) ||
      !a.Buf(4, "out", &out, &outLen))
    return {};
  const size_t n = static_cast<size_t>(count);
  if (n > indexLen / kIndexPair) {
    ThrowRangeError(env, "fstatatDirents(): argument 3 \"index\" holds fewer than count pairs");
    return {};
  }
  if (n > outLen / kDirentStatSlot) {
    ThrowRangeError(env, "fstatatDirents(): argument 5 \"out\" holds fewer than count slots");
    return {};
  }
  for (size_t i = 0; i < n; i++) {
    char* slot = out + i * kDirentStatSlot;
    const int32_t start = ReadI32(index + i * kIndexPair);
    const int32_t length = ReadI32(index + i * kIndexPair + 4);
    // start + length < namesLen: the terminating NUL must lie inside the buffer too.
    if (start < 0 || length < 1 || length > NAME_MAX ||
        static_cast<size_t>(start) + static_cast<size_t>(length) >= namesLen) {
      PutErrno(slot, EINVAL);
      continue;
    }
    const char* name = names + start;
    if (name[length] != '\0' || memchr(name, '\0', static_cast<size_t>(length)) != nullptr ||
        memchr(name, '/', static_cast<size_t>(length)) != nullptr) {
      PutErrno(slot, EINVAL);
      continue;
    }
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      PutErrno(slot, errno);
      continue;
    }
    PutStat(slot, st);
    PutErrno(slot, 0);
  }
  return env.Undefined();
}

}  // namespace

void InitDirents(Napi::Env env, Napi::Object exports) {
  exports.Set("fstatatDirents", Napi::Function::New(env, FstatatDirents, "fstatatDirents"));
  exports.Set("DIRENT_STAT_SLOT", Napi::Number::New(env, static_cast<double>(kDirentStatSlot)));
}

}  // namespace vfsk
