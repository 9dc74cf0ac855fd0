// Poller: fd readiness through a uv_poll_t on the current env's libuv loop.
//
// Lifetime: the uv handle is heap-allocated and owned by libuv from uv_close() until its close
// callback, which frees it. While started, the JS object is kept alive by a strong reference
// (ObjectWrap::Ref), so the callback always has an object to call into. If the JS object is
// collected without close(), the destructor closes the handle; handle->data is cleared first
// so a late event can never reach a freed Poller.
#include "common.h"
#include "fast_path.h"

#include <uv.h>

namespace vfsk {
namespace {

constexpr int kReadable = 1;    // POLL_READABLE in shared/native.ts == UV_READABLE
constexpr int kWritable = 2;    // POLL_WRITABLE == UV_WRITABLE
constexpr int kDisconnect = 4;  // POLL_DISCONNECT == UV_DISCONNECT (EPOLLRDHUP: the peer hung up)
// POLL_KICK_READ: a kick handler (setKickHandler) has read the eventfd before the callback.
constexpr int kKickRead = 8;
static_assert(kReadable == UV_READABLE && kWritable == UV_WRITABLE && kDisconnect == UV_DISCONNECT, "uv event bits");

void OnHandleClosed(uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); }

class Poller : public Napi::ObjectWrap<Poller> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Poller",
                       {
                           InstanceMethod<&Poller::Start>("start"),
                           InstanceMethod<&Poller::Stop>("stop"),
                           InstanceMethod<&Poller::Close>("close"),
                           InstanceMethod<&Poller::SetKickHandler>("setKickHandler"),
                       });
  }

  explicit Poller(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Poller>(info) {
    Napi::Env env = info.Env();
    if (!info.IsConstructCall()) {
      ThrowTypeError(env, "Poller must be called with new");
      return;
    }
    Args a(info, "Poller");
    int fd;
    Napi::Function cb;
    if (!a.Count(2) || !a.Fd(0, "fd", &fd) || !a.Func(1, "callback", &cb)) return;
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      ThrowCodeError(env, "Poller: no libuv loop for this env", "ERR_NAPI");
      return;
    }
    uv_poll_t* h = new uv_poll_t();
    int r = uv_poll_init(loop, h, fd);
    if (r < 0) {
      delete h;  // a failed uv_poll_init leaves nothing registered with the loop
      ThrowErrno(env, -r, "uv_poll_init");
      return;
    }
    h->data = this;
    handle_ = h;
    fd_ = fd;
    callback_ = Napi::Persistent(cb);
    asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "vfsk:Poller");
  }

  ~Poller() override { CloseHandle(); }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Args a(info, "Poller.start");
    int64_t events;
    if (!a.Count(1) || !a.Int(0, "events", 1, kReadable | kWritable | kDisconnect, &events)) return {};
    if (handle_ == nullptr) {
      ThrowCodeError(env, "Poller.start(): the poller is closed", "ERR_INVALID_STATE");
      return {};
    }
    int r = uv_poll_start(handle_, static_cast<int>(events), OnPoll);
    if (r < 0) {
      ThrowErrno(env, -r, "uv_poll_start");
      return {};
    }
    if (!referenced_) {
      Ref();
      referenced_ = true;
    }
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (handle_ != nullptr) uv_poll_stop(handle_);
    Unreference();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseHandle();
    Unreference();
    return info.Env().Undefined();
  }

  // setKickHandler(ring | null): a readable event goes to the ring's OnKick first (the fd is a
  // kick eventfd); the callback runs only when that leaves work for JavaScript.
  Napi::Value SetKickHandler(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || info[0].IsNull() || info[0].IsUndefined()) {
      kick_ = nullptr;
      if (!kickRef_.IsEmpty()) kickRef_.Reset();
      return env.Undefined();
    }
    KickHandler* k = UnwrapKickHandler(env, info[0]);
    if (k == nullptr) return {};
    kickRef_ = Napi::Persistent(info[0].As<Napi::Object>());
    kick_ = k;
    return env.Undefined();
  }

  void Unreference() {
    if (referenced_) {
      referenced_ = false;
      Unref();
    }
  }

  void CloseHandle() {
    if (handle_ == nullptr) return;
    uv_poll_stop(handle_);
    handle_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(handle_), OnHandleClosed);
    handle_ = nullptr;
  }

  static void OnPoll(uv_poll_t* h, int status, int events) {
    Poller* self = static_cast<Poller*>(h->data);
    if (self == nullptr || self->callback_.IsEmpty()) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    if (self->kick_ != nullptr && status == 0 && (events & kReadable) != 0) {
      if (self->kick_->OnKick(self->fd_)) return;
      events |= kKickRead;
    }
    // Keep the JS object alive for the duration of the call, whatever the callback does.
    Napi::Object keep = self->Value();
    napi_value argv[2] = {Napi::Number::New(env, status), Napi::Number::New(env, events & (kReadable | kWritable | kDisconnect | kKickRead))};
    // MakeCallback: runs with the async context and drains microtasks afterwards.
    self->callback_.MakeCallback(keep, 2, argv, *self->asyncContext_);
    RaisePendingAsFatal(env);
  }

  uv_poll_t* handle_ = nullptr;
  int fd_ = -1;
  KickHandler* kick_ = nullptr;
  Napi::ObjectReference kickRef_;
  bool referenced_ = false;
  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
};

}  // namespace

void InitPoll(Napi::Env env, Napi::Object exports, InstanceData* data) {
  Napi::Function ctor = Poller::Define(env);
  data->pollerCtor = Napi::Persistent(ctor);
  exports.Set("Poller", ctor);
}

}  // namespace vfsk
