// Entry point of the vfsk_native addon: see shared/native.ts for the typed contract.
#include "common.h"

namespace vfsk {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InstanceData* data = new InstanceData();
  env.SetInstanceData<InstanceData>(data);  // deleted with the env
  InitErrors(env, exports);
  InitSockets(env, exports);
  InitMemory(env, exports);
  InitPoll(env, exports, data);
  InitFsOps(env, exports);
  InitIo(env, exports);
  InitSandbox(env, exports);
  InitSeccomp(env, exports);
  InitRing(env, exports);
  InitFastFuse(env, exports);
  InitProcess(env, exports);
  InitDirents(env, exports);
  return exports;
}

}  // namespace vfsk

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  return vfsk::Init(env, exports);
}

NODE_API_MODULE(vfsk_native, InitAddon)
