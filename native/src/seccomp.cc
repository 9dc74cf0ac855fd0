// The worker's seccomp filter (worker/sandbox.ts installs it last; worker/seccomp_policy.ts is
// the reviewed allow-list). A classic BPF program checks the architecture, then the syscall
// number against each rule in the policy's order, optionally one argument's low 32 bits; what
// no rule allows gets the default action (kill the process, trap, or let the kernel log it).
// It is installed for every thread of the process at once (SECCOMP_FILTER_FLAG_TSYNC): Node's
// V8 and libuv threads exist before it.
#include "common.h"
#include "syscall_table.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <vector>

namespace vfsk {
namespace {

#if defined(__x86_64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
#else
#error "seccomp.cc: unsupported architecture (add its AUDIT_ARCH and signal return register)"
#endif

constexpr size_t kMaxProgram = 4096;  // BPF_MAXINSNS

int SyscallNumber(const std::string& name) {
  for (const SyscallEntry& e : kSyscalls) {
    if (name == e.name) return e.nr;
  }
  return -1;
}

const char* SyscallName(long nr) {
  for (const SyscallEntry& e : kSyscalls) {
    if (e.nr == nr) return e.name;
  }
  return nullptr;
}

// One rule of the policy: the syscall `nr` is allowed (no condition), allowed when its argument
// `argIndex` passes one test, or refused with `errnoValue` (e.g. clone3 → ENOSYS, so that glibc
// falls back to clone, whose flags a filter can see).
struct Rule {
  int nr = -1;
  int errnoValue = -1;
  int argIndex = -1;
  std::vector<uint32_t> equals;  // allowed when the argument is one of these
  uint32_t maskClear = 0;        // allowed when none of these bits is set
  uint32_t maskSet = 0;          // allowed when all of these bits are set
};

sock_filter Stmt(uint16_t code, uint32_t k) { return BPF_STMT(code, k); }
sock_filter Jump(uint16_t code, uint32_t k, uint8_t jt, uint8_t jf) { return BPF_JUMP(code, k, jt, jf); }

// Low 32 bits of argument i in seccomp_data (both supported architectures are little-endian).
uint32_t ArgOffset(int i) { return offsetof(seccomp_data, args) + 8 * static_cast<uint32_t>(i); }

// The body that runs when the syscall number matched: returns ALLOW, the errno, or `deny`.
std::vector<sock_filter> RuleBody(const Rule& r, uint32_t deny) {
  std::vector<sock_filter> b;
  if (r.errnoValue >= 0) {
    b.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (static_cast<uint32_t>(r.errnoValue) & SECCOMP_RET_DATA)));
    return b;
  }
  if (r.argIndex < 0) {
    b.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    return b;
  }
  b.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, ArgOffset(r.argIndex)));
  if (!r.equals.empty()) {
    // Each value: equal → ALLOW (the instruction after the last comparison); none → deny.
    size_t n = r.equals.size();
    for (size_t i = 0; i < n; i++) b.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, r.equals[i], static_cast<uint8_t>(n - i), 0));
    b.push_back(Stmt(BPF_RET | BPF_K, deny));
    b.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  } else if (r.maskClear != 0) {
    b.push_back(Jump(BPF_JMP | BPF_JSET | BPF_K, r.maskClear, 0, 1));
    b.push_back(Stmt(BPF_RET | BPF_K, deny));
    b.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  } else {
    b.push_back(Stmt(BPF_ALU | BPF_AND | BPF_K, r.maskSet));
    b.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, r.maskSet, 1, 0));
    b.push_back(Stmt(BPF_RET | BPF_K, deny));
    b.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  }
  return b;
}

bool BuildProgram(Napi::Env env, const std::vector<Rule>& rules, uint32_t deny, std::vector<sock_filter>* prog) {
  std::vector<sock_filter>& p = *prog;
  p.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
  // Another architecture's syscall numbers mean other syscalls: never allowed.
  p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, kAuditArch, 1, 0));
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
  p.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
#if defined(__x86_64__)
  // The x32 ABI reaches the same syscalls with bit 30 set: refused, whatever the number.
  p.push_back(Jump(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1));
  p.push_back(Stmt(BPF_RET | BPF_K, deny));
#endif
  for (const Rule& r : rules) {
    std::vector<sock_filter> body = RuleBody(r, deny);
    if (body.size() > 255) {
      ThrowRangeError(env, "seccompInstall: a rule's argument test is too long");
      return false;
    }
    // Every body returns, so A still holds the number for the next rule's comparison.
    p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(r.nr), 0, static_cast<uint8_t>(body.size())));
    p.insert(p.end(), body.begin(), body.end());
  }
  p.push_back(Stmt(BPF_RET | BPF_K, deny));
  if (p.size() > kMaxProgram) {
    ThrowRangeError(env, "seccompInstall: the policy needs more than 4096 BPF instructions");
    return false;
  }
  return true;
}

bool ReadU32(Napi::Env env, Napi::Object o, const char* key, const std::string& label, uint32_t* out) {
  int64_t v = 0;
  if (!CheckInt(env, o.Get(key), label + "." + key, 0, UINT32_MAX, &v)) return false;
  *out = static_cast<uint32_t>(v);
  return true;
}

bool ParseRule(Napi::Env env, Napi::Value v, size_t i, Rule* r) {
  std::string label = "seccompInstall: rules[" + std::to_string(i) + "]";
  if (!v.IsObject()) {
    ThrowTypeError(env, label + " must be an object");
    return false;
  }
  Napi::Object o = v.As<Napi::Object>();
  Napi::Value name = o.Get("syscall");
  if (!name.IsString()) {
    ThrowTypeError(env, label + ".syscall must be a string");
    return false;
  }
  std::string n = name.As<Napi::String>().Utf8Value();
  r->nr = SyscallNumber(n);
  if (r->nr < 0) {
    ThrowTypeError(env, label + ": unknown syscall " + n + " on this architecture", "ERR_INVALID_ARG_VALUE");
    return false;
  }
  if (o.Has("errno")) {
    int64_t e = 0;
    if (!CheckInt(env, o.Get("errno"), label + ".errno", 1, 4095, &e)) return false;
    r->errnoValue = static_cast<int>(e);
    return true;
  }
  if (!o.Has("arg")) return true;
  int64_t idx = 0;
  if (!CheckInt(env, o.Get("arg"), label + ".arg", 0, 5, &idx)) return false;
  r->argIndex = static_cast<int>(idx);
  int tests = 0;
  if (o.Has("equals")) {
    tests++;
    Napi::Value arr = o.Get("equals");
    if (!arr.IsArray() || arr.As<Napi::Array>().Length() == 0 || arr.As<Napi::Array>().Length() > 64) {
      ThrowTypeError(env, label + ".equals must be an array of 1 to 64 values");
      return false;
    }
    Napi::Array a = arr.As<Napi::Array>();
    for (uint32_t k = 0; k < a.Length(); k++) {
      int64_t x = 0;
      if (!CheckInt(env, a.Get(k), label + ".equals[" + std::to_string(k) + "]", 0, UINT32_MAX, &x)) return false;
      r->equals.push_back(static_cast<uint32_t>(x));
    }
  }
  if (o.Has("maskClear")) {
    tests++;
    if (!ReadU32(env, o, "maskClear", label, &r->maskClear)) return false;
  }
  if (o.Has("maskSet")) {
    tests++;
    if (!ReadU32(env, o, "maskSet", label, &r->maskSet)) return false;
  }
  if (tests != 1 || (o.Has("maskClear") && r->maskClear == 0) || (o.Has("maskSet") && r->maskSet == 0)) {
    ThrowTypeError(env, label + ": an argument rule needs exactly one of equals, maskClear, maskSet (non-zero)", "ERR_INVALID_ARG_VALUE");
    return false;
  }
  return true;
}

// --- trap mode: the refused syscall fails with ENOSYS and is logged from the signal handler
// (async-signal-safe: a fixed buffer and write(2)), at a bounded rate: the 1st, 2nd, 4th, 8th...
// refusal of each syscall number.
int gTrapLogFd = 2;
std::atomic<uint32_t> gTrapCounts[1024];

char* AppendStr(char* p, char* end, const char* s) {
  while (*s != '\0' && p < end) *p++ = *s++;
  return p;
}

char* AppendNum(char* p, char* end, unsigned long v) {
  char tmp[24];
  int n = 0;
  do { tmp[n++] = static_cast<char>('0' + v % 10); v /= 10; } while (v != 0 && n < 24);
  while (n > 0 && p < end) *p++ = tmp[--n];
  return p;
}

void OnSigsys(int, siginfo_t* info, void* context) {
  int saved = errno;
  long nr = info->si_syscall;
  auto* uc = static_cast<ucontext_t*>(context);
#if defined(__x86_64__)
  uc->uc_mcontext.gregs[REG_RAX] = -ENOSYS;
#else
  uc->uc_mcontext.regs[0] = static_cast<unsigned long long>(-ENOSYS);
#endif
  uint32_t seen = nr >= 0 && nr < 1024 ? gTrapCounts[nr].fetch_add(1, std::memory_order_relaxed) + 1 : 1;
  if ((seen & (seen - 1)) == 0) {
    const char* name = SyscallName(nr);
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    char line[320];
    char* end = line + sizeof line - 2;
    char* p = line;
    p = AppendStr(p, end, "{\"level\":50,\"time\":");
    p = AppendNum(p, end, static_cast<unsigned long>(ts.tv_sec) * 1000 + static_cast<unsigned long>(ts.tv_nsec / 1000000));
    p = AppendStr(p, end, ",\"pid\":");
    p = AppendNum(p, end, static_cast<unsigned long>(getpid()));
    p = AppendStr(p, end, ",\"component\":\"seccomp\",\"syscall\":\"");
    p = AppendStr(p, end, name != nullptr ? name : "unknown");
    p = AppendStr(p, end, "\",\"nr\":");
    p = AppendNum(p, end, static_cast<unsigned long>(nr));
    p = AppendStr(p, end, ",\"times\":");
    p = AppendNum(p, end, seen);
    p = AppendStr(p, end, ",\"msg\":\"seccomp refused a syscall outside the worker's allow-list (--seccomp trap): it failed with ENOSYS\"}");
    *p++ = '\n';
    ssize_t ignored = write(gTrapLogFd, line, static_cast<size_t>(p - line));
    (void)ignored;
  }
  errno = saved;
}

// seccompInstall(rules, action, logFd): installs the filter on every thread (see the header).
// action: "kill" (SECCOMP_RET_KILL_PROCESS), "trap" (SIGSYS: logged on logFd, the syscall fails
// with ENOSYS), "log" (allowed, and the kernel's audit log names it). Sets no_new_privs first.
Napi::Value SeccompInstall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "seccompInstall");
  std::string action;
  int logFd = -1;
  if (!a.Count(3) || !a.String(1, "action", &action) || !a.Fd(2, "logFd", &logFd)) return {};
  if (!info[0].IsArray()) {
    ThrowTypeError(env, "seccompInstall: rules must be an array");
    return {};
  }
  uint32_t deny = 0;
  if (action == "kill") deny = SECCOMP_RET_KILL_PROCESS;
  else if (action == "trap") deny = SECCOMP_RET_TRAP;
  else if (action == "log") deny = SECCOMP_RET_LOG;
  else {
    ThrowTypeError(env, "seccompInstall: action must be kill, trap or log", "ERR_INVALID_ARG_VALUE");
    return {};
  }
  Napi::Array arr = info[0].As<Napi::Array>();
  std::vector<Rule> rules(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    if (!ParseRule(env, arr.Get(i), i, &rules[i])) return {};
  }
  std::vector<sock_filter> prog;
  if (!BuildProgram(env, rules, deny, &prog)) return {};
  if (action == "trap") {
    gTrapLogFd = logFd;
    struct sigaction sa {};
    sa.sa_sigaction = OnSigsys;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSYS, &sa, nullptr) < 0) { ThrowErrno(env, errno, "sigaction"); return {}; }
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) { ThrowErrno(env, errno, "prctl"); return {}; }
  sock_fprog fprog{static_cast<unsigned short>(prog.size()), prog.data()};
  long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fprog);
  if (r != 0) {
    // > 0: the id of a thread that could not be synchronized.
    ThrowErrno(env, r > 0 ? EAGAIN : errno, r > 0 ? "seccomp (TSYNC: a thread could not take the filter)" : "seccomp");
    return {};
  }
  return env.Undefined();
}

// seccompSyscallNumber(name): the build architecture's number of a syscall, or -1.
Napi::Value SeccompSyscallNumber(const Napi::CallbackInfo& info) {
  Args a(info, "seccompSyscallNumber");
  std::string name;
  if (!a.Count(1) || !a.String(0, "name", &name)) return {};
  return Napi::Number::New(info.Env(), SyscallNumber(name));
}

}  // namespace

void InitSeccomp(Napi::Env env, Napi::Object exports) {
  exports.Set("seccompInstall", Napi::Function::New(env, SeccompInstall, "seccompInstall"));
  exports.Set("seccompSyscallNumber", Napi::Function::New(env, SeccompSyscallNumber, "seccompSyscallNumber"));
}

}  // namespace vfsk
