// The split virtqueue in C++ (virtio 1.x §2.7, device side): the same algorithm, checks and
// memory ordering as worker/virtqueue/split_ring.ts, which stays the reference (and serves with
// --no-fast-path). Chains it pops go first to an attached ChainServer (fast_fuse.cc); what that
// declines is handed to JavaScript as segment triples in a Float64Array.
//
// Decisions:
// - The ring holds its memory regions and inflight mapping acquired (AcquireMapping), so a
//   munmap() from JS while the ring lives is deferred: no access here can touch unmapped memory.
// - Fields shared with the guest are read once each (a racing guest sees its own garbage
//   checked, never a second read that differs); indices go through acquire/release atomics.
// - Inflight tracking (vhost-user "Inflight I/O tracking", split layout): a head is marked before
//   its chain is read, linked into the batch at push, cleared after the used index is published.
#include "common.h"
#include "fast_path.h"
#include "io_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace vfsk {
namespace {

constexpr uint16_t kDescFNext = 1;
constexpr uint16_t kDescFWrite = 2;
constexpr uint16_t kDescFIndirect = 4;
constexpr uint16_t kUsedFNoNotify = 1;
constexpr uint16_t kAvailFNoInterrupt = 1;
constexpr uint32_t kMaxQueueSize = 32768;
constexpr uint32_t kMaxIndirect = 1024;
constexpr size_t kDescSize = 16;
constexpr size_t kInflightHeader = 16;
constexpr size_t kInflightDesc = 16;
// Segment triples the JS scratch holds beyond the 5 leading values; longer chains grow it.
constexpr size_t kScratchTriples = 64;
const napi_type_tag kNativeRingTag = {0x7666736b72696e67ULL, 0x6e61746976650001ULL};

struct Region {
  uint64_t gpa, size, uaddr, mmapOffset;
  uint8_t* base;  // the mapping (ArrayBuffer data)
  size_t mapLen;
  Mapping* mapping;
};

inline uint16_t LoadAcquire16(const uint8_t* p) {
  return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_ACQUIRE);
}
inline void StoreRelease16(uint8_t* p, uint16_t v) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELEASE);
}
template <typename T>
inline T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void Store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

class ChainFault {
 public:
  explicit ChainFault(std::string m) : message(std::move(m)) {}
  std::string message;
};

enum class PopResult { kEmpty, kServed, kChain, kMalformed, kBroken };

// One served request JavaScript must journal, as `records` holds it (native_ring.ts
// SERVED_RECORD_SIZE reads the same layout): u32 head, u32 opcode, f64 counter, f64 nodeid,
// u32 reply length, u32 kind (ServedKind), then the reply (Served::reply's room), then what the
// kind says: an inode (i32 fd, u32 file type, u64 dev, u64 ino, i32 mount id, i32 handle type,
// u32 handle length, 4 bytes of padding, the handle: 128 bytes), a file (i32 fd, u32 open
// flags, f64 fh) or an intent's time (f64 ms) in its place; a CREATE has its inode there, its
// file and intent time after it; a MKDIR its inode there, its intent time after the file's room;
// a READDIRPLUS (whose reply is in `tail`, not in the reply's room) its f64 fh, i64 new dir
// position, u32 offset and u32 length of its long reply in `tail`, u32 length of the reply and
// u32 count of the new inodes after it there.
constexpr size_t kRecordHeader = 32;
constexpr size_t kNewInodeAt = kRecordHeader + sizeof(Served::reply);
constexpr size_t kCreatedFileAt = kNewInodeAt + kNewInodeBytes;
constexpr size_t kCreatedIntentAt = kCreatedFileAt + 16;
constexpr size_t kRecordEntry = kCreatedIntentAt + 8;
static_assert(kRecordEntry == 384, "native_ring.ts SERVED_RECORD_SIZE");
// A batch ends at this many (JavaScript journals them, then pops on): bounds the buffers.
constexpr uint32_t kMaxRecords = 256;
// Bytes of long replies (Served::longReply) a batch holds: it ends before one more might not fit.
constexpr size_t kTailBytes = 1024 * 1024;
static_assert(kTailBytes >= 4 * kMaxLongReply, "a batch holds several long replies");

class NativeRing : public Napi::ObjectWrap<NativeRing>, public KickHandler {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeRing", {
      InstanceMethod<&NativeRing::Pop>("pop"),
      InstanceMethod<&NativeRing::TakeJournaled>("takeJournaled"),
      InstanceMethod<&NativeRing::ReadChain>("readChain"),
      InstanceMethod<&NativeRing::PushUsed>("pushUsed"),
      InstanceMethod<&NativeRing::PublishUsed>("publishUsed"),
      InstanceMethod<&NativeRing::EnableNotification>("enableNotification"),
      InstanceMethod<&NativeRing::DisableNotification>("disableNotification"),
      InstanceMethod<&NativeRing::Pending>("pending"),
      InstanceMethod<&NativeRing::AvailIdx>("availIdx"),
      InstanceMethod<&NativeRing::UsedIndex>("usedIndex"),
      InstanceMethod<&NativeRing::LastAvailIdx>("lastAvailIdx"),
      InstanceMethod<&NativeRing::CounterOf>("counterOf"),
      InstanceMethod<&NativeRing::RecoverInflight>("recoverInflight"),
      InstanceMethod<&NativeRing::TakeServed>("takeServed"),
      InstanceMethod<&NativeRing::Attach>("attach"),
      InstanceMethod<&NativeRing::Close>("close"),
      InstanceMethod<&NativeRing::SetFastKick>("setFastKick"),
      InstanceMethod<&NativeRing::SetCallFd>("setCallFd"),
      InstanceMethod<&NativeRing::SetQueuedDone>("setQueuedDone"),
      InstanceMethod<&NativeRing::QueuedPending>("queuedPending"),
      InstanceAccessor<&NativeRing::Scratch>("scratch"),
      InstanceAccessor<&NativeRing::LastError>("lastError"),
      InstanceAccessor<&NativeRing::Records>("records"),
      InstanceAccessor<&NativeRing::Tail>("tail"),
    });
  }

  // new NativeRing(regions, size, descUser, availUser, usedUser, lastAvailIdx, eventIdx,
  //                indirect, inflightBuffer | null, inflightBase, queueIndex)
  // regions: [{buffer, guestPhysAddr, size, userspaceAddr, mmapOffset}] (GuestMemory's).
  explicit NativeRing(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeRing>(info) {
    napi_type_tag_object(info.Env(), info.This(), &kNativeRingTag);
    Init(info);
  }

  ~NativeRing() override {
    ReleaseAll();
    StopPool();
  }

 private:
  // The constructor's work; on a bad argument it throws (the object is then never used).
  void Init(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Args a(info, "NativeRing");
    int64_t size, desc, avail, used, last, inflightBase, queue;
    if (!a.Count(11) || !a.Int(1, "size", 1, kMaxQueueSize, &size) || !a.Int(2, "descUser", 0, kMaxSafe, &desc) ||
        !a.Int(3, "availUser", 0, kMaxSafe, &avail) || !a.Int(4, "usedUser", 0, kMaxSafe, &used) ||
        !a.Int(5, "lastAvailIdx", 0, 0xffff, &last) || !a.Bool(6, "eventIdx", &eventIdx_) ||
        !a.Bool(7, "indirect", &indirect_) || !a.Int(9, "inflightBase", 0, kMaxSafe, &inflightBase) ||
        !a.Int(10, "queueIndex", 0, 0xffff, &queue))
      return;
    chain_.queue = static_cast<uint16_t>(queue);
    env_ = env;
    if ((size & (size - 1)) != 0) return Broken(env, "invalid queue size " + std::to_string(size));
    size_ = static_cast<uint32_t>(size);
    if (!info[0].IsArray()) return ThrowTypeError(env, "NativeRing(): argument 1 \"regions\" must be an array");
    Napi::Array regions = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < regions.Length(); i++) {
      Napi::Value v = regions.Get(i);
      if (!v.IsObject()) return ThrowTypeError(env, "NativeRing(): regions[" + std::to_string(i) + "] must be an object");
      Napi::Object o = v.As<Napi::Object>();
      Napi::Value buf = o.Get("buffer");
      if (!buf.IsArrayBuffer()) return ThrowTypeError(env, "NativeRing(): regions[i].buffer must be an ArrayBuffer");
      Napi::ArrayBuffer ab = buf.As<Napi::ArrayBuffer>();
      Region r{};
      int64_t gpa, rsize, uaddr, moff;
      std::string label = "NativeRing(): regions[" + std::to_string(i) + "]";
      if (!CheckInt(env, o.Get("guestPhysAddr"), label + ".guestPhysAddr", 0, kMaxSafe, &gpa) ||
          !CheckInt(env, o.Get("size"), label + ".size", 1, kMaxSafe, &rsize) ||
          !CheckInt(env, o.Get("userspaceAddr"), label + ".userspaceAddr", 0, kMaxSafe, &uaddr) ||
          !CheckInt(env, o.Get("mmapOffset"), label + ".mmapOffset", 0, kMaxSafe, &moff))
        return ReleaseAll();
      r.gpa = gpa; r.size = rsize; r.uaddr = uaddr; r.mmapOffset = moff;
      r.base = static_cast<uint8_t*>(ab.Data());
      r.mapLen = ab.ByteLength();
      if (r.base == nullptr || r.mmapOffset + r.size > r.mapLen) {
        ReleaseAll();
        return ThrowRangeError(env, label + " does not fit its buffer");
      }
      r.mapping = FindMapping(r.base);
      if (r.mapping == nullptr) {
        ReleaseAll();
        return ThrowCodeError(env, label + ".buffer is not a live mapping", "ERR_INVALID_STATE");
      }
      AcquireMapping(r.mapping);
      regions_.push_back(r);
      regionRefs_.push_back(Napi::Persistent(ab.As<Napi::Object>()));
    }
    if (desc % 16 != 0 || avail % 2 != 0 || used % 4 != 0) {
      ReleaseAll();
      return Broken(env, "misaligned vring address");
    }
    desc_ = LocateUser(desc, kDescSize * size_);
    avail_ = LocateUser(avail, 6 + 2 * size_);
    used_ = LocateUser(used, 6 + 8 * size_);
    if (desc_ == nullptr || avail_ == nullptr || used_ == nullptr) {
      const char* what = desc_ == nullptr ? "descriptor table" : avail_ == nullptr ? "avail ring" : "used ring";
      ReleaseAll();
      return Broken(env, std::string(what) + " is not in guest memory");
    }
    if (!info[8].IsNull() && !info[8].IsUndefined()) {
      if (!info[8].IsArrayBuffer()) {
        ReleaseAll();
        return ThrowTypeError(env, "NativeRing(): argument 9 \"inflight\" must be an ArrayBuffer or null");
      }
      Napi::ArrayBuffer ab = info[8].As<Napi::ArrayBuffer>();
      size_t need = kInflightHeader + kInflightDesc * size_;
      uint8_t* base = static_cast<uint8_t*>(ab.Data());
      Mapping* m = base == nullptr ? nullptr : FindMapping(base);
      if (m == nullptr || static_cast<uint64_t>(inflightBase) + need > ab.ByteLength()) {
        ReleaseAll();
        return Broken(env, "inflight region too small");
      }
      AcquireMapping(m);
      inflightMapping_ = m;
      inflightRef_ = Napi::Persistent(ab.As<Napi::Object>());
      inflight_ = base + inflightBase;
      if (Load<uint16_t>(inflight_ + 10) != size_) {
        ReleaseAll();
        return Broken(env, "inflight region size differs from the queue size");
      }
    }
    lastAvail_ = static_cast<uint16_t>(last);
    usedIdx_ = LoadAcquire16(used_ + 2);
    publishedUsed_ = signalledUsed_ = usedIdx_;
    scratch_ = Napi::Persistent(Napi::Float64Array::New(env, 5 + 3 * kScratchTriples));
    recordBytes_.reserve(kMaxRecords * kRecordEntry);
    recordOwn_.reserve(kMaxRecords);
    records_ = Napi::Persistent(Napi::Uint8Array::New(env, kMaxRecords * kRecordEntry));
    tail_ = Napi::Persistent(Napi::Uint8Array::New(env, kTailBytes));
  }

  // --- JS methods

  // Pops until a chain needs JavaScript: returns its head (its segments in `scratch`), -1 when
  // the ring is empty, -2 for a malformed chain (`lastError`; scratch[0] is its head or -1),
  // -3 for the served requests whose effect JavaScript must journal (all of them since the
  // last -3, in pop order: scratch[0] is their count, `records` holds them). Those come before
  // any chain popped after them, so JavaScript applies session changes in pop order (a FORGET
  // after a LOOKUP sees its count). A chain the native kick (OnKick) left for JavaScript comes
  // next.
  Napi::Value Pop(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Live(env)) return {};
    PopResult r = pending_;
    pending_ = PopResult::kEmpty;
    if (r == PopResult::kEmpty && recordCount_ == 0) r = PopServe();
    if (recordCount_ > 0) {
      pending_ = r;
      return ExportRecords(env);
    }
    switch (r) {
      case PopResult::kEmpty: return Napi::Number::New(env, -1);
      case PopResult::kMalformed: return MalformedValue(env);
      case PopResult::kBroken: Broken(env, lastError_); return {};
      default: return Export(env, chain_, false);
    }
  }

  // The batch OnKick journaled and published itself (applyOnly_) as pop() would return it (-3),
  // or -1 with nothing popped: the kick then left nothing else to JavaScript (it ended with
  // notifications on and the ring empty).
  Napi::Value TakeJournaled(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Live(env)) return {};
    if (!applyOnly_ || recordCount_ == 0) return Napi::Number::New(env, -1);
    return ExportRecords(env);
  }

  // readChain(head): a chain a dead worker left in flight, for JavaScript (never served here:
  // the FUSE server's exactly-once rules decide what a resubmitted request gets).
  Napi::Value ReadChain(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Args a(info, "readChain");
    int64_t head;
    if (!Live(env) || !a.Count(1) || !a.Int(0, "head", 0, size_ - 1, &head)) return {};
    chain_.Clear();
    chain_.head = static_cast<uint16_t>(head);
    chain_.counter = CounterAt(static_cast<uint32_t>(head));
    try {
      Walk(static_cast<uint16_t>(head), &chain_);
    } catch (const ChainFault& f) {
      lastError_ = f.message;
      malformedHead_ = static_cast<int>(head);
      return MalformedValue(env);
    }
    return Export(env, chain_, true);
  }

  Napi::Value PushUsed(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Args a(info, "pushUsed");
    int64_t head, len;
    if (!Live(env) || !a.Count(2) || !a.Int(0, "head", 0, size_ - 1, &head) || !a.Int(1, "len", 0, 0xffffffffLL, &len)) return {};
    PushUsedInternal(static_cast<uint16_t>(head), static_cast<uint32_t>(len));
    // Published only by JavaScript's flush, after its PublishBarrier (durability.ts).
    jsPushed_++;
    return env.Undefined();
  }

  // Release store of used->idx; true when the driver wants an interrupt.
  Napi::Value PublishUsed(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Live(env)) return {};
    return Napi::Boolean::New(env, PublishInternal());
  }

  Napi::Value EnableNotification(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Live(env)) return {};
    bool more;
    if (!EnableNotificationInternal(&more)) {
      Broken(env, lastError_);
      return {};
    }
    return Napi::Boolean::New(env, more);
  }

  Napi::Value DisableNotification(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Live(env)) return {};
    DisableNotificationInternal();
    return env.Undefined();
  }

  // setFastKick(on): kicks are served in OnKick without entering JavaScript (QueueServer turns
  // it on once it has seen the queue's first completion, off when it pauses or stops).
  Napi::Value SetFastKick(const Napi::CallbackInfo& info) {
    Args a(info, "setFastKick");
    if (!a.Count(1) || !a.Bool(0, "on", &fastKick_)) return {};
    return info.Env().Undefined();
  }

  // setCallFd(fd | -1): the call eventfd OnKick interrupts the guest with. The ring keeps a dup,
  // so a closed or reused fd number can never be written to; Vrings updates it whenever the
  // frontend sets a new one.
  Napi::Value SetCallFd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Args a(info, "setCallFd");
    int64_t fd;
    if (!a.Count(1) || !a.Int(0, "fd", -1, 0x7fffffff, &fd)) return {};
    int dup = -1;
    if (fd >= 0) {
      dup = fcntl(static_cast<int>(fd), F_DUPFD_CLOEXEC, 0);
      if (dup < 0) {
        ThrowErrno(env, errno, "fcntl");
        return {};
      }
    }
    if (callFd_ >= 0) ::close(callFd_);
    callFd_ = dup;
    return env.Undefined();
  }

 public:
  // A kick, from the kick eventfd's poller (poll.cc), before any JavaScript runs: serves what
  // the fast server can and publishes it. False: JavaScript must run the kick (a chain needs it,
  // the ring broke, JavaScript has completions to publish through its barrier, or fast kicks are
  // off); the eventfd has been read either way.
  bool OnKick(int kickFd) override {
    uint64_t v;
    while (::read(kickFd, &v, sizeof v) < 0 && errno == EINTR) {}
    if (!fastKick_ || closed_ || closeWhenIdle_ || server_ == nullptr || pending_ != PopResult::kEmpty || recordCount_ > 0) return false;
    for (;;) {
      DisableNotificationInternal();
      for (;;) {
        PopResult r = PopServe();
        if (r == PopResult::kEmpty) break;
        if (r != PopResult::kServed) {
          pending_ = r;
          return false;
        }
      }
      // Served requests to journal: JavaScript pops them (one batch), runs the rest of the
      // kick (notifications stay off until its loop re-enables them) and publishes. Unless
      // the server can journal them itself (below, just before the publish: a chain popped
      // later still hands them to JavaScript, unjournaled).
      if (recordCount_ > 0 && (!OwnBatchPossible() || BatchFull())) return false;
      bool more;
      if (!EnableNotificationInternal(&more)) return false;
      if (!more) break;
    }
    if (recordCount_ > 0 && !JournalOwnBatch()) return false;
    // JavaScript's own completions wait for its barrier; its flush publishes these too.
    if (served_ == 0 || jsPushed_ > 0) return served_ == 0 && recordCount_ == 0;
    served_ = 0;
    if (server_->CrashArmed()) published_ = servedOpcodes_;
    bool interrupt = PublishInternal();
    // Published, the guest not yet interrupted: where JavaScript's op-after-publish is too
    // (QueueServer.flush: published, then notify).
    if (server_->CrashArmed()) {
      for (uint32_t op : published_) server_->CrashPoint(NativeCrashPoint::kAfterPublish, op);
    }
    if (interrupt && callFd_ >= 0) {
      uint64_t one = 1;
      while (::write(callFd_, &one, sizeof one) < 0 && errno == EINTR) {}
    }
    // Journaled and published, their session changes left (applyOnly_): JavaScript's pop takes them.
    return recordCount_ == 0;
  }

 private:
  Napi::Value Pending(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t pending;
    if (!Live(env) || !PendingChecked(env, &pending)) return {};
    return Napi::Number::New(env, pending);
  }

  Napi::Value AvailIdx(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Live(env)) return {};
    return Napi::Number::New(env, LoadAcquire16(avail_ + 2));
  }

  Napi::Value UsedIndex(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), publishedUsed_); }
  Napi::Value LastAvailIdx(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), lastAvail_); }

  Napi::Value CounterOf(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Args a(info, "counterOf");
    int64_t head;
    if (!Live(env) || !a.Count(1) || !a.Int(0, "head", 0, size_ - 1, &head)) return {};
    return Napi::BigInt::New(env, CounterAt(static_cast<uint32_t>(head)));
  }

  // After a restart: settles the inflight region against the used ring and returns the heads to
  // resubmit, oldest first (split_ring.ts recoverInflight, the same steps).
  Napi::Value RecoverInflight(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Live(env)) return {};
    Napi::Array out = Napi::Array::New(env);
    if (inflight_ == nullptr) return out;
    uint16_t used = LoadAcquire16(used_ + 2);
    uint16_t regionUsed = Load<uint16_t>(inflight_ + 14);
    if (regionUsed != used) {
      // The last batch reached the guest but its inflight flags were not cleared.
      uint16_t n = static_cast<uint16_t>(used - regionUsed);
      uint16_t h = Load<uint16_t>(inflight_ + 12);
      while (n-- > 0 && h < size_) {
        inflight_[InflightDescOff(h)] = 0;
        uint16_t next = Load<uint16_t>(inflight_ + InflightDescOff(h) + 6);
        if (next == h) break;
        h = next;
      }
      Store<uint16_t>(inflight_ + 14, used);
    }
    std::vector<std::pair<uint64_t, uint16_t>> heads;
    uint64_t max = 0;
    for (uint32_t i = 0; i < size_; i++) {
      uint64_t c = CounterAt(i);
      if (c > max) max = c;
      if (inflight_[InflightDescOff(i)] != 0) heads.emplace_back(c, static_cast<uint16_t>(i));
    }
    std::stable_sort(heads.begin(), heads.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    // Counters keep growing across restarts, so (head, counter) never names two requests.
    inflightCounter_ = max;
    usedIdx_ = publishedUsed_ = used;
    lastAvail_ = static_cast<uint16_t>(used + heads.size());
    for (uint32_t i = 0; i < heads.size(); i++) out.Set(i, Napi::Number::New(env, heads[i].second));
    return out;
  }

  // How many chains were served natively since the last call.
  Napi::Value TakeServed(const Napi::CallbackInfo& info) {
    uint32_t n = served_;
    served_ = 0;
    return Napi::Number::New(info.Env(), n);
  }

  // attach(server | null): the FastFuse object (fast_fuse.cc) that serves chains natively.
  Napi::Value Attach(const Napi::CallbackInfo& info);

  // Queued I/O still writes into guest memory: the mappings stay acquired until the last job
  // is collected (QueuedDone), whose completions then go to JavaScript as usual.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (queuedPending_ > 0) {
      if (callFd_ >= 0) ::close(callFd_);
      callFd_ = -1;
      fastKick_ = false;
      closeWhenIdle_ = true;
    } else {
      ReleaseAll();
    }
    return info.Env().Undefined();
  }

  // setQueuedDone(fn): fn(done: Float64Array of (head, used length) pairs, count) is called on
  // the JS thread with the requests the I/O threads finished (QueueServer completes them). The
  // ring holds fn strongly only while jobs are out (the caller keeps it otherwise): fn may
  // reach this ring, and a strong reference for ever would keep both alive.
  Napi::Value SetQueuedDone(const Napi::CallbackInfo& info) {
    Args a(info, "setQueuedDone");
    Napi::Function fn;
    if (!a.Count(1) || !a.Func(0, "fn", &fn)) return {};
    queuedDoneFn_ = Napi::Reference<Napi::Function>::New(fn, queuedPending_ > 0 ? 1 : 0);
    return info.Env().Undefined();
  }

  // Requests on the I/O threads, not yet handed to JavaScript.
  Napi::Value QueuedPending(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), queuedPending_); }

  Napi::Value Scratch(const Napi::CallbackInfo& info) { return scratch_.Value(); }

  // --- queued I/O (io_pool.h)

  // Runs the job on the ring's I/O threads; the ring holds itself (and so its mappings) until
  // every job is back. Without a thread (none could be started) it runs here, as the
  // threadpool-less fallback of a host out of threads, and is pushed as served.
  void Queue(std::unique_ptr<IoJob> job) {
    if (pool_ == nullptr && !StartPool()) {
      RunNow(std::move(job));
      return;
    }
    if (!pool_->Submit(&job)) {
      RunNow(std::move(job));
      return;
    }
    if (queuedPending_++ == 0) {
      // Jobs in flight keep the ring, its callback and the event loop alive, as libuv's
      // threadpool requests do.
      Ref();
      if (!queuedDoneFn_.IsEmpty()) queuedDoneFn_.Ref();
      uv_ref(reinterpret_cast<uv_handle_t*>(wake_));
    }
  }

  void RunNow(std::unique_ptr<IoJob> job) {
    RunIoJob(job.get());
    if (server_ != nullptr && server_->CrashArmed()) server_->CrashPoint(NativeCrashPoint::kAfterSyscall, job->opcode);
    PushUsedInternal(job->head, job->usedLen);
    served_++;
    if (server_ != nullptr && server_->CrashArmed()) servedOpcodes_.push_back(job->opcode);
  }

  bool StartPool() {
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env_, &loop) != napi_ok || loop == nullptr) return false;
    auto* wake = new uv_async_t;
    if (uv_async_init(loop, wake, [](uv_async_t* h) { static_cast<NativeRing*>(h->data)->QueuedDone(); }) != 0) {
      delete wake;
      return false;
    }
    wake->data = this;
    uv_unref(reinterpret_cast<uv_handle_t*>(wake));  // referenced while jobs are in flight
    wake_ = wake;
    pool_ = std::make_unique<IoPool>(wake);
    return true;
  }

  void StopPool() {
    if (pool_ == nullptr) return;
    pool_->Stop();
    pool_.reset();
    uv_close(reinterpret_cast<uv_handle_t*>(wake_), [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
    wake_ = nullptr;
  }

  // On the JS thread (the pool's uv_async): hands the finished jobs to JavaScript.
  void QueuedDone() {
    if (pool_ == nullptr) return;
    finished_.clear();
    pool_->TakeDone(&finished_);
    if (finished_.empty()) return;
    Napi::HandleScope scope(env_);
    uint32_t n = static_cast<uint32_t>(finished_.size());
    if (server_ != nullptr && server_->CrashArmed()) {
      // After the syscall: the reply is in the guest's buffers, nothing pushed. Before the
      // publish: JavaScript's flush publishes them through PublishInternal.
      for (const auto& j : finished_) {
        server_->CrashPoint(NativeCrashPoint::kAfterSyscall, j->opcode);
        servedOpcodes_.push_back(j->opcode);
      }
    }
    Napi::Float64Array pairs = Napi::Float64Array::New(env_, 2 * static_cast<size_t>(n));
    for (uint32_t i = 0; i < n; i++) {
      pairs[2 * i] = finished_[i]->head;
      pairs[2 * i + 1] = finished_[i]->usedLen;
    }
    finished_.clear();
    queuedPending_ -= n;
    Napi::Function fn = queuedDoneFn_.IsEmpty() ? Napi::Function() : queuedDoneFn_.Value();
    if (!fn.IsEmpty()) {
      fn.MakeCallback(Value(), {pairs, Napi::Number::New(env_, n)});
      if (env_.IsExceptionPending()) {
        // As any exception of a callback from the event loop: the worker's uncaught handler.
        Napi::Error e = env_.GetAndClearPendingException();
        napi_fatal_exception(env_, e.Value());
      }
    }
    if (queuedPending_ == 0) {
      if (!queuedDoneFn_.IsEmpty()) queuedDoneFn_.Unref();
      uv_unref(reinterpret_cast<uv_handle_t*>(wake_));
      if (closeWhenIdle_) ReleaseAll();
      Unref();
    }
  }

  Napi::Value LastError(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), lastError_); }
  Napi::Value Records(const Napi::CallbackInfo& info) { return records_.Value(); }
  Napi::Value Tail(const Napi::CallbackInfo& info) { return tail_.Value(); }

  // --- internals

  bool Live(Napi::Env env) {
    if (closed_ || closeWhenIdle_) {
      ThrowCodeError(env, "the ring is closed", "ERR_INVALID_STATE");
      return false;
    }
    return true;
  }

  void Broken(Napi::Env env, const std::string& msg) { ThrowCodeError(env, msg, "ERR_VIRTQUEUE_BROKEN"); }

  bool PendingChecked(Napi::Env env, uint32_t* out) {
    if (!PendingInternal(out)) {
      Broken(env, lastError_);
      return false;
    }
    return true;
  }

  // Heads made available and not popped; false (lastError_) when the driver broke the ring.
  bool PendingInternal(uint32_t* out) {
    uint16_t n = static_cast<uint16_t>(LoadAcquire16(avail_ + 2) - lastAvail_);
    if (n > size_) {
      lastError_ = "driver advanced avail idx by " + std::to_string(n) + " on a ring of " + std::to_string(size_);
      return false;
    }
    *out = n;
    return true;
  }

  // Pops chains and serves what the server takes, until one needs JavaScript (kChain, in
  // chain_; kMalformed, in lastError_/malformedHead_), the ring is empty or broken. Served
  // requests JavaScript must journal are queued in recordBytes_ (AddRecord) meanwhile.
  PopResult PopServe() {
    Served served;
    for (;;) {
      // A full batch: kEmpty for now, Pop() hands the batch to JavaScript and then goes on.
      if (BatchFull()) return PopResult::kEmpty;
      uint32_t pending;
      if (!PendingInternal(&pending)) return PopResult::kBroken;
      if (pending == 0) return PopResult::kEmpty;
      uint16_t head = Load<uint16_t>(avail_ + 4 + 2 * (lastAvail_ % size_));
      lastAvail_ = static_cast<uint16_t>(lastAvail_ + 1);
      if (head >= size_) {
        // Not a head we can ever complete; consuming it is all we can do.
        lastError_ = "avail ring names head " + std::to_string(head) + " on a ring of " + std::to_string(size_);
        malformedHead_ = -1;
        return PopResult::kMalformed;
      }
      uint64_t counter = MarkInflight(head);
      chain_.Clear();
      chain_.head = head;
      chain_.counter = counter;
      try {
        Walk(head, &chain_);
      } catch (const ChainFault& f) {
        lastError_ = f.message;
        malformedHead_ = head;
        return PopResult::kMalformed;
      }
      if (server_ == nullptr) return PopResult::kChain;
      if (server_->CrashArmed()) server_->CrashPoint(NativeCrashPoint::kAfterPop, PeekOpcode());
      if (!server_->Serve(chain_, &served)) return PopResult::kChain;
      if (served.queued) {
        Queue(std::move(served.queued));
        continue;
      }
      PushUsedInternal(head, served.usedLen);
      if (served.needsRecord) {
        // Published only after JavaScript journaled its effect, by its flush (barrier first).
        jsPushed_++;
        AddRecord(served);
        continue;
      }
      served_++;
      if (server_->CrashArmed()) servedOpcodes_.push_back(served.opcode);
    }
  }

  // Release store of used->idx; true when the driver wants an interrupt.
  bool PublishInternal() {
    if (usedIdx_ == publishedUsed_) return false;
    if (server_ != nullptr && server_->CrashArmed()) {
      for (uint32_t op : servedOpcodes_) server_->CrashPoint(NativeCrashPoint::kBeforePublish, op);
    }
    servedOpcodes_.clear();
    jsPushed_ = 0;
    uint16_t old = publishedUsed_;
    StoreRelease16(used_ + 2, usedIdx_);
    publishedUsed_ = usedIdx_;
    if (inflight_ != nullptr) {
      for (uint16_t h : pendingBatch_) inflight_[InflightDescOff(h)] = 0;
      pendingBatch_.clear();
      Store<uint16_t>(inflight_ + 14, usedIdx_);
    }
    // The guest's used_event / flags must be read after our idx store is visible.
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (eventIdx_) {
      uint16_t usedEvent = Load<uint16_t>(avail_ + 4 + 2 * size_);
      uint16_t since = signalledValid_ ? signalledUsed_ : old;
      signalledUsed_ = usedIdx_;
      signalledValid_ = true;
      return static_cast<uint16_t>(usedIdx_ - usedEvent - 1) < static_cast<uint16_t>(usedIdx_ - since);
    }
    uint16_t flags = Load<uint16_t>(avail_);
    return (flags & kAvailFNoInterrupt) == 0;
  }

  // Asks the driver to kick us; *more: buffers arrived meanwhile. False: the ring broke.
  bool EnableNotificationInternal(bool* more) {
    if (eventIdx_) {
      StoreRelease16(used_ + 4 + 8 * size_, lastAvail_);
    } else {
      uint16_t flags = Load<uint16_t>(used_);
      StoreRelease16(used_, static_cast<uint16_t>(flags & ~kUsedFNoNotify));
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint32_t pending;
    if (!PendingInternal(&pending)) return false;
    *more = pending > 0;
    return true;
  }

  void DisableNotificationInternal() {
    if (!eventIdx_) {  // with EVENT_IDX, not advancing avail_event is enough
      uint16_t flags = Load<uint16_t>(used_);
      StoreRelease16(used_, static_cast<uint16_t>(flags | kUsedFNoNotify));
    }
  }

  uint8_t* LocateUser(uint64_t uaddr, uint64_t len) {
    for (const Region& r : regions_) {
      if (uaddr >= r.uaddr && uaddr + len <= r.uaddr + r.size) return r.base + r.mmapOffset + (uaddr - r.uaddr);
    }
    return nullptr;
  }

  const Region* FindGuest(uint64_t gpa, uint64_t len, uint32_t* index) const {
    for (uint32_t i = 0; i < regions_.size(); i++) {
      const Region& r = regions_[i];
      if (gpa >= r.gpa && gpa + len <= r.gpa + r.size && gpa + len >= gpa) {
        *index = i;
        return &r;
      }
    }
    return nullptr;
  }

  // [gpa, gpa+len) as segments; the range may span adjacent regions.
  void AppendSegments(uint64_t gpa, uint32_t len, std::vector<ChainSegment>* out) const {
    if (gpa >= static_cast<uint64_t>(kMaxSafe) || gpa + len >= static_cast<uint64_t>(kMaxSafe)) {
      throw ChainFault("address out of range: " + std::to_string(gpa) + "+" + std::to_string(len));
    }
    uint64_t addr = gpa;
    uint64_t left = len;
    while (left > 0) {
      const Region* found = nullptr;
      uint32_t index = 0;
      for (uint32_t i = 0; i < regions_.size(); i++) {
        const Region& r = regions_[i];
        if (addr >= r.gpa && addr < r.gpa + r.size) { found = &r; index = i; break; }
      }
      if (found == nullptr) throw ChainFault("guest address 0x" + Hex(addr) + " is not in guest memory");
      uint64_t take = std::min(found->gpa + found->size - addr, left);
      uint64_t off = found->mmapOffset + (addr - found->gpa);
      out->push_back({found->base + off, static_cast<uint32_t>(take), index, off});
      addr += take;
      left -= take;
    }
  }

  static std::string Hex(uint64_t v) {
    char b[24];
    snprintf(b, sizeof b, "%llx", static_cast<unsigned long long>(v));
    return b;
  }

  void Walk(uint16_t head, Chain* chain) const {
    const uint8_t* table = desc_;
    uint32_t tableSize = size_;
    uint32_t index = head;
    uint32_t seen = 0, total = 0;
    bool inIndirect = false;
    for (;;) {
      if (index >= tableSize) throw ChainFault("descriptor index " + std::to_string(index) + " out of table (" + std::to_string(tableSize) + ")");
      if (++seen > tableSize) throw ChainFault("descriptor chain loops or is longer than its table");
      if (++total > size_ + kMaxIndirect) throw ChainFault("descriptor chain of more than " + std::to_string(size_ + kMaxIndirect) + " descriptors");
      const uint8_t* d = table + index * kDescSize;
      uint64_t addr = Load<uint64_t>(d);
      uint32_t len = Load<uint32_t>(d + 8);
      uint16_t flags = Load<uint16_t>(d + 12);
      uint16_t next = Load<uint16_t>(d + 14);
      if (flags & kDescFIndirect) {
        if (!indirect_) throw ChainFault("indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC");
        if (inIndirect) throw ChainFault("nested indirect descriptor table");
        if (flags & kDescFNext) throw ChainFault("indirect descriptor with NEXT set");
        if (len == 0 || len % kDescSize != 0 || len / kDescSize > kMaxIndirect) throw ChainFault("bad indirect table length " + std::to_string(len));
        uint32_t ri;
        const Region* r = addr < static_cast<uint64_t>(kMaxSafe) ? FindGuest(addr, len, &ri) : nullptr;
        if (r == nullptr) throw ChainFault("indirect table at 0x" + Hex(addr) + " is not in guest memory");
        table = r->base + r->mmapOffset + (addr - r->gpa);
        tableSize = len / kDescSize;
        index = 0;
        seen = 0;
        inIndirect = true;
        continue;
      }
      if (len > 0) {
        if (flags & kDescFWrite) {
          AppendSegments(addr, len, &chain->writable);
          chain->writableLen += len;
        } else {
          if (chain->writableLen > 0) throw ChainFault("readable descriptor after a writable one");
          AppendSegments(addr, len, &chain->readable);
          chain->readableLen += len;
        }
      }
      if (!(flags & kDescFNext)) break;
      index = next;
    }
  }

  size_t InflightDescOff(uint32_t i) const { return kInflightHeader + i * kInflightDesc; }
  uint64_t CounterAt(uint32_t head) const {
    return inflight_ == nullptr ? 0 : Load<uint64_t>(inflight_ + InflightDescOff(head) + 8);
  }

  uint64_t MarkInflight(uint16_t head) {
    if (inflight_ == nullptr) return 0;
    inflightCounter_++;
    Store<uint64_t>(inflight_ + InflightDescOff(head) + 8, inflightCounter_);
    inflight_[InflightDescOff(head)] = 1;
    return inflightCounter_;
  }

  void PushUsedInternal(uint16_t head, uint32_t len) {
    uint8_t* e = used_ + 4 + 8 * (usedIdx_ % size_);
    Store<uint32_t>(e, head);
    Store<uint32_t>(e + 4, len);
    usedIdx_ = static_cast<uint16_t>(usedIdx_ + 1);
    if (inflight_ != nullptr) {
      // Link the batch so a successor can clear it if we die right after publishing.
      uint16_t prev = pendingBatch_.empty() ? head : Load<uint16_t>(inflight_ + 12);
      Store<uint16_t>(inflight_ + InflightDescOff(head) + 6, prev);
      Store<uint16_t>(inflight_ + 12, head);
      pendingBatch_.push_back(head);
    }
  }

  uint32_t PeekOpcode() const {
    uint8_t hdr[8];
    if (GatherSegments(chain_.readable, 0, hdr, 8) < 8) return 0;
    return Load<uint32_t>(hdr + 4);
  }

  Napi::Value MalformedValue(Napi::Env env) {
    Napi::Float64Array s = scratch_.Value();
    s[0] = malformedHead_;
    return Napi::Number::New(env, -2);
  }

  // Queues a served request (chain_ is its chain) for JavaScript's journal, in the layout of
  // kRecordEntry (PopServe stops at kMaxRecords).
  void AddRecord(const Served& served) {
    size_t at = recordBytes_.size();
    recordBytes_.resize(at + kRecordEntry);
    uint8_t* e = recordBytes_.data() + at;
    std::memset(e, 0, kRecordHeader);
    Store<uint32_t>(e, chain_.head);
    Store<uint32_t>(e + 4, served.opcode);
    Store<double>(e + 8, static_cast<double>(chain_.counter));
    Store<double>(e + 16, static_cast<double>(served.nodeid));
    uint32_t len = std::min<uint32_t>(served.replyLen, sizeof(Served::reply));
    Store<uint32_t>(e + 24, len);
    Store<uint32_t>(e + 28, static_cast<uint32_t>(served.kind));
    std::memcpy(e + kRecordHeader, served.reply, len);
    if (served.kind == ServedKind::kOpened || served.kind == ServedKind::kReleased || served.kind == ServedKind::kOpenedDir ||
        served.kind == ServedKind::kReleasedDir) {
      uint8_t* p = e + kNewInodeAt;
      Store<int32_t>(p, served.file.fd);
      Store<uint32_t>(p + 4, served.file.flags);
      Store<double>(p + 8, static_cast<double>(served.file.fh));
    }
    if (served.kind == ServedKind::kIntended) Store<double>(e + kNewInodeAt, served.intentTsMs);
    if (served.kind == ServedKind::kCreated) {
      uint8_t* f = e + kCreatedFileAt;
      Store<int32_t>(f, served.file.fd);
      Store<uint32_t>(f + 4, served.file.flags);
      Store<double>(f + 8, static_cast<double>(served.file.fh));
      Store<double>(e + kCreatedIntentAt, served.intentTsMs);
    }
    if (served.kind == ServedKind::kMadeDir) Store<double>(e + kCreatedIntentAt, served.intentTsMs);
    if (served.kind == ServedKind::kReaddirPlus || served.kind == ServedKind::kForgot) {
      uint32_t tailLen = std::min<uint32_t>(served.longReplyLen, kMaxLongReply);
      size_t tailAt = tailBytes_.size();
      tailBytes_.insert(tailBytes_.end(), served.longReply, served.longReply + tailLen);
      uint8_t* p = e + kNewInodeAt;
      Store<double>(p, static_cast<double>(served.file.fh));
      Store<int64_t>(p + 8, served.dirPosition);
      Store<uint32_t>(p + 16, static_cast<uint32_t>(tailAt));
      Store<uint32_t>(p + 20, tailLen);
      Store<uint32_t>(p + 24, std::min(served.dirReplyLen, tailLen));
      Store<uint32_t>(p + 28, served.dirNewInodes);
    }
    if (served.kind == ServedKind::kNewInode || served.kind == ServedKind::kCreated || served.kind == ServedKind::kMadeDir) {
      PutNewInode(served.inode, e + kNewInodeAt);
    }
    OwnRecord own = len == served.replyLen ? served.own : OwnRecord::kNo;
    recordOwn_.push_back(own);
    if (own != OwnRecord::kNo) ownable_++;
    recordCount_++;
  }

  // No room for one more record or long reply: the batch ends (PopServe), and goes to
  // JavaScript.
  bool BatchFull() const { return recordCount_ >= kMaxRecords || tailBytes_.size() + kMaxLongReply > kTailBytes; }

  // Whether the server may journal the queued records itself: each is one it can write
  // (Served::own), and nothing else JavaScript pushed waits for its barrier.
  bool OwnBatchPossible() const {
    return recordCount_ > 0 && ownable_ == recordCount_ && jsPushed_ == recordCount_;
  }

  // When OwnBatchPossible, the server journals the records' outcomes
  // (ChainServer::JournalOutcomes) and they become requests served without a record: OnKick
  // publishes them with the rest. Only OnKick does this, right before its publish, with nothing
  // left to pop: so no compaction of the journal (JavaScript's, which keeps only the outcomes
  // its request log knows) can come between the outcome and the publish. Records with a session
  // change (a LOOKUP's count or new inode, a READDIRPLUS's, a FORGET's, an OPEN's fh...) stay
  // queued, marked journaled (applyOnly_): OnKick then hands the kick to JavaScript, which takes
  // them first (takeJournaled) and applies the changes to its session before anything else
  // runs, journaling and publishing nothing. False (no journal, no room, a record the server
  // cannot write): JavaScript gets the batch to journal.
  bool JournalOwnBatch() {
    if (!OwnBatchPossible()) return false;
    outcomes_.clear();
    uint32_t toApply = 0;
    for (uint32_t i = 0; i < recordCount_; i++) {
      const uint8_t* e = recordBytes_.data() + static_cast<size_t>(i) * kRecordEntry;
      PlainOutcome o;
      o.head = Load<uint32_t>(e);
      o.opcode = Load<uint32_t>(e + 4);
      o.counter = static_cast<uint64_t>(Load<double>(e + 8));
      o.nodeid = static_cast<uint64_t>(Load<double>(e + 16));
      o.replyLen = Load<uint32_t>(e + 24);
      o.reply = e + kRecordHeader;
      o.own = recordOwn_[i];
      o.newInode = e + kNewInodeAt;
      if (o.own == OwnRecord::kDirEntries || o.own == OwnRecord::kForgets) {
        // AddRecord's long-reply fields: fh, position, the reply and its items in tailBytes_.
        const uint8_t* p = e + kNewInodeAt;
        uint32_t tailAt = Load<uint32_t>(p + 16), tailLen = Load<uint32_t>(p + 20), replyLen = Load<uint32_t>(p + 24);
        if (static_cast<size_t>(tailAt) + tailLen > tailBytes_.size() || replyLen > tailLen) return false;
        o.fh = static_cast<uint64_t>(Load<double>(p));
        o.position = Load<int64_t>(p + 8);
        o.reply = tailBytes_.data() + tailAt;
        o.replyLen = replyLen;
        o.items = o.reply + replyLen;
        o.itemCount = Load<uint32_t>(p + 28);
      }
      if (o.own == OwnRecord::kOpenFile || o.own == OwnRecord::kOpenDir || o.own == OwnRecord::kCreated) {
        // AddRecord's file: i32 fd, u32 open flags, f64 fh (a CREATE's after its inode).
        const uint8_t* f = e + (o.own == OwnRecord::kCreated ? kCreatedFileAt : kNewInodeAt);
        o.openFlags = Load<uint32_t>(f + 4);
        o.fh = static_cast<uint64_t>(Load<double>(f + 8));
      }
      if (o.own != OwnRecord::kOutcome) toApply++;
      outcomes_.push_back(o);
    }
    if (!server_->JournalOutcomes(chain_.queue, outcomes_)) return false;
    if (server_->CrashArmed()) {
      for (const PlainOutcome& o : outcomes_) servedOpcodes_.push_back(o.opcode);
    }
    served_ += recordCount_;
    jsPushed_ -= recordCount_;
    if (toApply > 0) {
      applyOnly_ = true;
      return true;
    }
    ClearRecords();
    return true;
  }

  void ClearRecords() {
    recordBytes_.clear();
    recordOwn_.clear();
    recordCount_ = 0;
    ownable_ = 0;
    applyOnly_ = false;
  }

  // The queued served requests: -3, scratch[0] = their count, their entries in `records`,
  // scratch[1] = the bytes of their long replies in `tail`.
  Napi::Value ExportRecords(Napi::Env env) {
    Napi::Uint8Array r = records_.Value();
    size_t bytes = std::min(recordBytes_.size(), r.ByteLength());
    std::memcpy(r.Data(), recordBytes_.data(), bytes);
    Napi::Uint8Array t = tail_.Value();
    size_t tailBytes = std::min(tailBytes_.size(), t.ByteLength());
    std::memcpy(t.Data(), tailBytes_.data(), tailBytes);
    Napi::Float64Array s = scratch_.Value();
    s[0] = static_cast<double>(bytes / kRecordEntry);
    s[1] = static_cast<double>(tailBytes);
    s[2] = applyOnly_ ? 1 : 0;
    tailBytes_.clear();
    ClearRecords();
    if (server_ != nullptr) server_->BatchTaken();
    return Napi::Number::New(env, -3);
  }

  // scratch: [head, counter, resubmitted, nReadable, nWritable, (region, offset, len)...]
  Napi::Value Export(Napi::Env env, const Chain& c, bool resubmitted) {
    size_t triples = c.readable.size() + c.writable.size();
    Napi::Float64Array s = scratch_.Value();
    if (5 + 3 * triples > s.ElementLength()) {
      s = Napi::Float64Array::New(env, 5 + 3 * triples);
      scratch_ = Napi::Persistent(s);
    }
    double* p = s.Data();
    p[0] = c.head;
    p[1] = static_cast<double>(c.counter);
    p[2] = resubmitted ? 1 : 0;
    p[3] = static_cast<double>(c.readable.size());
    p[4] = static_cast<double>(c.writable.size());
    size_t k = 5;
    for (const auto* v : {&c.readable, &c.writable}) {
      for (const ChainSegment& g : *v) {
        p[k++] = g.region;
        p[k++] = static_cast<double>(g.offset);
        p[k++] = g.len;
      }
    }
    return Napi::Number::New(env, c.head);
  }

  void ReleaseAll() {
    if (callFd_ >= 0) ::close(callFd_);
    callFd_ = -1;
    if (closed_) return;
    closed_ = true;
    for (Region& r : regions_) ReleaseMapping(r.mapping);
    regions_.clear();
    regionRefs_.clear();
    if (inflightMapping_ != nullptr) ReleaseMapping(inflightMapping_);
    inflightMapping_ = nullptr;
    inflight_ = nullptr;
    if (!inflightRef_.IsEmpty()) inflightRef_.Reset();
    if (!serverRef_.IsEmpty()) serverRef_.Reset();
    server_ = nullptr;
  }

  Napi::Env env_ = nullptr;
  std::unique_ptr<IoPool> pool_;
  uv_async_t* wake_ = nullptr;
  uint32_t queuedPending_ = 0;
  bool closeWhenIdle_ = false;
  std::vector<std::unique_ptr<IoJob>> finished_;
  Napi::Reference<Napi::Function> queuedDoneFn_;
  uint32_t size_ = 0;
  bool eventIdx_ = false, indirect_ = false, closed_ = false, signalledValid_ = false;
  std::vector<Region> regions_;
  std::vector<Napi::ObjectReference> regionRefs_;
  uint8_t* desc_ = nullptr;
  uint8_t* avail_ = nullptr;
  uint8_t* used_ = nullptr;
  uint8_t* inflight_ = nullptr;
  Mapping* inflightMapping_ = nullptr;
  Napi::ObjectReference inflightRef_;
  uint16_t lastAvail_ = 0, usedIdx_ = 0, publishedUsed_ = 0, signalledUsed_ = 0;
  uint64_t inflightCounter_ = 0;
  std::vector<uint16_t> pendingBatch_;
  std::vector<uint32_t> servedOpcodes_;  // crash tests only
  PopResult pending_ = PopResult::kEmpty;  // what OnKick left for JavaScript's next pop()
  int malformedHead_ = -1;
  bool fastKick_ = false;
  uint32_t jsPushed_ = 0;  // used elements JavaScript pushed since the last publish
  int callFd_ = -1;
  uint32_t served_ = 0;
  Chain chain_;
  Napi::Reference<Napi::Float64Array> scratch_;
  Napi::Reference<Napi::Uint8Array> records_;  // JavaScript's view of the last exported batch
  Napi::Reference<Napi::Uint8Array> tail_;     // and of its long replies
  std::vector<uint8_t> recordBytes_;  // served requests to journal, kRecordEntry bytes each
  std::vector<uint8_t> tailBytes_;    // their long replies (AddRecord)
  uint32_t recordCount_ = 0;
  std::vector<OwnRecord> recordOwn_;       // each queued record's Served::own (kNo: JavaScript's to write)
  uint32_t ownable_ = 0;                   // of the queued records, those the server may journal
  bool applyOnly_ = false;                 // the queued records are journaled and published (JournalOwnBatch)
  std::vector<PlainOutcome> outcomes_;     // JournalOwnBatch's list (kept: no allocation per kick)
  std::vector<uint32_t> published_;        // OnKick: the opcodes it published (crash points only)
  std::string lastError_;
  ChainServer* server_ = nullptr;
  Napi::ObjectReference serverRef_;
};

Napi::Value NativeRing::Attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!Live(env)) return {};
  if (info.Length() < 1 || info[0].IsNull() || info[0].IsUndefined()) {
    if (!serverRef_.IsEmpty()) serverRef_.Reset();
    server_ = nullptr;
    return env.Undefined();
  }
  ChainServer* s = UnwrapChainServer(env, info[0]);
  if (s == nullptr) return {};
  serverRef_ = Napi::Persistent(info[0].As<Napi::Object>());
  server_ = s;
  return env.Undefined();
}

}  // namespace

size_t GatherSegments(const std::vector<ChainSegment>& segs, size_t skip, uint8_t* dst, size_t len) {
  size_t copied = 0;
  for (const ChainSegment& s : segs) {
    if (copied == len) break;
    if (skip >= s.len) { skip -= s.len; continue; }
    size_t n = std::min<size_t>(s.len - skip, len - copied);
    std::memcpy(dst + copied, s.host + skip, n);
    copied += n;
    skip = 0;
  }
  return copied;
}

size_t ScatterSegments(const std::vector<ChainSegment>& segs, size_t skip, const uint8_t* src, size_t len) {
  size_t written = 0;
  for (const ChainSegment& s : segs) {
    if (written == len) break;
    if (skip >= s.len) { skip -= s.len; continue; }
    size_t n = std::min<size_t>(s.len - skip, len - written);
    std::memcpy(s.host + skip, src + written, n);
    written += n;
    skip = 0;
  }
  return written;
}

KickHandler* UnwrapKickHandler(Napi::Env env, Napi::Value v) {
  bool tagged = false;
  if (v.IsObject()) napi_check_object_type_tag(env, v, &kNativeRingTag, &tagged);
  if (!tagged) {
    ThrowTypeError(env, "setKickHandler(): argument 1 \"ring\" must be a NativeRing");
    return nullptr;
  }
  return NativeRing::Unwrap(v.As<Napi::Object>());
}

void InitRing(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeRing", NativeRing::Define(env));
}

}  // namespace vfsk
