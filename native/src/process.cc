// Processes the keeper must handle without Node.js's child_process: execve of itself (a keeper
// re-exec keeps its pid and chosen fds: docs/ARCHITECTURE.md, "Upgrades"), and children it
// adopted across that execve (their ChildProcess objects died with the old image): a pidfd to
// watch for their exit and a non-blocking wait to reap them.
#include "common.h"

#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace vfsk {
namespace {

constexpr size_t kMaxExecStrings = 4096;

bool StringArray(Args& a, Napi::Env env, size_t i, const char* name, std::vector<std::string>* out) {
  Napi::Value v = a.Info()[i];
  if (!v.IsArray()) {
    ThrowTypeError(env, std::string("argument \"") + name + "\" must be an array of strings");
    return false;
  }
  Napi::Array arr = v.As<Napi::Array>();
  if (arr.Length() > kMaxExecStrings) {
    ThrowRangeError(env, std::string("argument \"") + name + "\" has too many entries");
    return false;
  }
  for (uint32_t k = 0; k < arr.Length(); k++) {
    Napi::Value e = arr.Get(k);
    if (!e.IsString()) {
      ThrowTypeError(env, std::string("argument \"") + name + "\"[" + std::to_string(k) + "] must be a string");
      return false;
    }
    std::string s = e.As<Napi::String>().Utf8Value();
    if (s.find('\0') != std::string::npos) {
      ThrowCodeError(env, std::string("argument \"") + name + "\"[" + std::to_string(k) + "] contains a NUL byte", "ERR_INVALID_ARG_VALUE");
      return false;
    }
    out->push_back(std::move(s));
  }
  return true;
}

std::vector<char*> CStrings(std::vector<std::string>& v) {
  std::vector<char*> p;
  p.reserve(v.size() + 1);
  for (auto& s : v) p.push_back(s.data());
  p.push_back(nullptr);
  return p;
}

// execve(path, argv, env): replaces the process image; returns only on failure (throws with
// errno). Every other thread ends with the old image; fds without FD_CLOEXEC stay open.
Napi::Value Execve(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "execve");
  std::string path;
  std::vector<std::string> argv, envp;
  if (!a.Count(3) || !a.Path(0, "path", "execve", &path) || !StringArray(a, env, 1, "argv", &argv) ||
      !StringArray(a, env, 2, "env", &envp))
    return {};
  if (argv.empty()) {
    ThrowCodeError(env, "argument \"argv\" must not be empty", "ERR_INVALID_ARG_VALUE");
    return {};
  }
  std::vector<char*> av = CStrings(argv), ev = CStrings(envp);
  execve(path.c_str(), av.data(), ev.data());
  ThrowErrno(env, errno, "execve");
  return {};
}

// pidfdOpen(pid): a close-on-exec pidfd, readable once the process has exited.
Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "pidfdOpen");
  int64_t pid;
  if (!a.Count(1) || !a.Int(0, "pid", 1, INT32_MAX, &pid)) return {};
  long fd = syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0);
  if (fd < 0) {
    ThrowErrno(env, errno, "pidfd_open");
    return {};
  }
  // pidfds are always close-on-exec.
  return Napi::Number::New(env, static_cast<double>(fd));
}

// waitChild(pid): reaps our child `pid` if it has exited: { code, signal } (one of them null),
// else null (still running). Throws ECHILD for a pid that is not our child.
Napi::Value WaitChild(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "waitChild");
  int64_t pid;
  if (!a.Count(1) || !a.Int(0, "pid", 1, INT32_MAX, &pid)) return {};
  int status = 0;
  pid_t r;
  do {
    r = waitpid(static_cast<pid_t>(pid), &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    ThrowErrno(env, errno, "waitpid");
    return {};
  }
  if (r == 0) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("code", WIFEXITED(status) ? Napi::Number::New(env, WEXITSTATUS(status)) : env.Null());
  o.Set("signal", WIFSIGNALED(status) ? Napi::Number::New(env, WTERMSIG(status)) : env.Null());
  return o;
}

}  // namespace

void InitProcess(Napi::Env env, Napi::Object exports) {
  exports.Set("execve", Napi::Function::New(env, Execve, "execve"));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen, "pidfdOpen"));
  exports.Set("waitChild", Napi::Function::New(env, WaitChild, "waitChild"));
}

}  // namespace vfsk
