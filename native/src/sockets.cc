// UNIX sockets with SCM_RIGHTS. Every socket made here is SOCK_NONBLOCK | SOCK_CLOEXEC, and
// received fds carry O_CLOEXEC (MSG_CMSG_CLOEXEC).
#include "common.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>

namespace vfsk {
namespace {

bool ParseKind(Args& a, size_t i, bool allowDgram, int* type) {
  std::string kind;
  if (!a.String(i, "kind", &kind)) return false;
  if (kind == "stream") {
    *type = SOCK_STREAM;
  } else if (kind == "seqpacket") {
    *type = SOCK_SEQPACKET;
  } else if (kind == "dgram" && allowDgram) {
    *type = SOCK_DGRAM;
  } else {
    ThrowTypeError(a.Env(),
                   std::string("argument \"kind\" must be \"stream\", \"seqpacket\"") +
                       (allowDgram ? " or \"dgram\"" : "") + ", got \"" + kind + "\"",
                   "ERR_INVALID_ARG_VALUE");
    return false;
  }
  return true;
}

// Fills a sockaddr_un; "@name" is the abstract namespace. Throws (errno-style, naming
// `syscall`) when the path is empty or too long.
bool MakeAddr(Napi::Env env, const std::string& path, const char* syscall, sockaddr_un* sa,
              socklen_t* len) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (path.empty()) {
    ThrowErrno(env, EINVAL, syscall);
    return false;
  }
  bool abstract = path[0] == '@';
  // A filesystem path needs its terminating NUL inside sun_path; an abstract name does not.
  size_t room = sizeof sa->sun_path - (abstract ? 0 : 1);
  if (path.size() > room) {
    ThrowErrno(env, ENAMETOOLONG, syscall);
    return false;
  }
  memcpy(sa->sun_path, path.data(), path.size());
  if (abstract) {
    sa->sun_path[0] = '\0';
    *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  } else {
    *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  }
  return true;
}

void CloseKeepErrno(int fd) {
  int saved = errno;
  close(fd);
  errno = saved;
}

Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "unixListen");
  std::string path;
  int type;
  int64_t backlog;
  if (!a.Count(3) || !a.Path(0, "path", "bind", &path) || !ParseKind(a, 1, true, &type) ||
      !a.Int(2, "backlog", 0, INT32_MAX, &backlog))
    return {};
  sockaddr_un sa;
  socklen_t salen;
  if (!MakeAddr(env, path, "bind", &sa, &salen)) return {};
  int fd = socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ThrowErrno(env, errno, "socket");
    return {};
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), salen) < 0) {
    CloseKeepErrno(fd);
    ThrowErrno(env, errno, "bind");
    return {};
  }
  // A datagram socket is only bound (e.g. a test NOTIFY_SOCKET); listen() is for connections.
  if (type != SOCK_DGRAM && listen(fd, static_cast<int>(backlog)) < 0) {
    CloseKeepErrno(fd);
    ThrowErrno(env, errno, "listen");
    return {};
  }
  return Napi::Number::New(env, fd);
}

Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "unixConnect");
  std::string path;
  int type;
  if (!a.Count(2) || !a.Path(0, "path", "connect", &path) || !ParseKind(a, 1, true, &type))
    return {};
  sockaddr_un sa;
  socklen_t salen;
  if (!MakeAddr(env, path, "connect", &sa, &salen)) return {};
  int fd = socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ThrowErrno(env, errno, "socket");
    return {};
  }
  int r;
  do {
    r = connect(fd, reinterpret_cast<sockaddr*>(&sa), salen);
  } while (r < 0 && errno == EINTR);
  // A UNIX connect completes at once; EAGAIN means the listener's backlog is full.
  if (r < 0) {
    CloseKeepErrno(fd);
    ThrowErrno(env, errno, "connect");
    return {};
  }
  return Napi::Number::New(env, fd);
}

Napi::Value Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "accept");
  int lfd;
  if (!a.Count(1) || !a.Fd(0, "listenFd", &lfd)) return {};
  int fd;
  do {
    fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    ThrowErrno(env, errno, "accept4");
    return {};
  }
  return Napi::Number::New(env, fd);
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "socketpair");
  int type;
  if (!a.Count(1) || !ParseKind(a, 0, true, &type)) return {};
  int sv[2];
  if (socketpair(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
    ThrowErrno(env, errno, "socketpair");
    return {};
  }
  Napi::Array arr = Napi::Array::New(env, 2);
  arr.Set(uint32_t{0}, Napi::Number::New(env, sv[0]));
  arr.Set(uint32_t{1}, Napi::Number::New(env, sv[1]));
  return arr;
}

// Control buffer big enough for SCM_MAX_FD fds, suitably aligned.
union FdControl {
  char buf[CMSG_SPACE(sizeof(int) * kMaxFdsPerMsg)];
  cmsghdr align;
};

void FillMsg(msghdr* msg, iovec* iov, FdControl* ctl, char* data, size_t len,
             const std::vector<int>& fds) {
  memset(msg, 0, sizeof *msg);
  iov->iov_base = data;
  iov->iov_len = len;
  msg->msg_iov = iov;
  msg->msg_iovlen = 1;
  if (!fds.empty()) {
    size_t bytes = sizeof(int) * fds.size();
    memset(ctl, 0, sizeof *ctl);
    msg->msg_control = ctl->buf;
    msg->msg_controllen = CMSG_SPACE(bytes);
    cmsghdr* c = CMSG_FIRSTHDR(msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(bytes);
    memcpy(CMSG_DATA(c), fds.data(), bytes);
  }
}

Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "sendMsg");
  int fd;
  char* data;
  size_t len;
  std::vector<int> fds;
  if (!a.Count(3) || !a.Fd(0, "fd", &fd) || !a.Buf(1, "data", &data, &len) ||
      !a.FdArray(2, "fds", kMaxFdsPerMsg, &fds))
    return {};
  msghdr msg;
  iovec iov;
  FdControl ctl;
  FillMsg(&msg, &iov, &ctl, data, len, fds);
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    ThrowErrno(env, errno, "sendmsg");
    return {};
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value SendDatagram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "sendDatagram");
  std::string path;
  char* data;
  size_t len;
  std::vector<int> fds;
  if (!a.Count(3) || !a.Path(0, "path", "sendmsg", &path) || !a.Buf(1, "data", &data, &len) ||
      !a.FdArray(2, "fds", kMaxFdsPerMsg, &fds))
    return {};
  sockaddr_un sa;
  socklen_t salen;
  if (!MakeAddr(env, path, "sendmsg", &sa, &salen)) return {};
  // Non-blocking: a full receiver queue gives EAGAIN instead of stalling the JS thread.
  int sfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (sfd < 0) {
    ThrowErrno(env, errno, "socket");
    return {};
  }
  msghdr msg;
  iovec iov;
  FdControl ctl;
  FillMsg(&msg, &iov, &ctl, data, len, fds);
  msg.msg_name = &sa;
  msg.msg_namelen = salen;
  ssize_t n;
  do {
    n = sendmsg(sfd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  int err = errno;
  close(sfd);
  if (n < 0) {
    ThrowErrno(env, err, "sendmsg");
    return {};
  }
  return env.Undefined();
}

Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "recvMsg");
  int fd;
  char* data;
  size_t len;
  int64_t maxFds;
  if (!a.Count(3) || !a.Fd(0, "fd", &fd) || !a.Buf(1, "buf", &data, &len) ||
      !a.Int(2, "maxFds", 0, kMaxFdsPerMsg, &maxFds))
    return {};
  // Always offer room for SCM_MAX_FD fds, so the kernel never has to drop fds on our behalf;
  // fds beyond maxFds are closed here and reported as truncation.
  // And for the sender's credentials, on a socket with SO_PASSCRED (sandbox.cc setPassCred).
  union {
    char buf[CMSG_SPACE(sizeof(int) * kMaxFdsPerMsg) + CMSG_SPACE(sizeof(ucred))];
    cmsghdr align;
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  msghdr msg;
  memset(&msg, 0, sizeof msg);
  iovec iov{data, len};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = sizeof ctl.buf;
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, errno, "recvmsg");
    return {};
  }
  std::vector<int> fds;
  bool truncated = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
  int64_t credPid = -1;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
      ucred cred;
      memcpy(&cred, CMSG_DATA(c), sizeof cred);
      credPid = cred.pid;
      continue;
    }
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* p = CMSG_DATA(c);
    for (size_t k = 0; k < count; k++) {
      int rfd;
      memcpy(&rfd, p + k * sizeof(int), sizeof(int));
      if (fds.size() < static_cast<size_t>(maxFds)) {
        fds.push_back(rfd);
      } else {
        close(rfd);  // beyond what the caller accepts: never leak it
        truncated = true;
      }
    }
  }
  Napi::Object res = Napi::Object::New(env);
  res.Set("bytes", Napi::Number::New(env, static_cast<double>(n)));
  Napi::Array arr = Napi::Array::New(env, fds.size());
  for (size_t k = 0; k < fds.size(); k++)
    arr.Set(static_cast<uint32_t>(k), Napi::Number::New(env, fds[k]));
  res.Set("fds", arr);
  res.Set("truncated", Napi::Boolean::New(env, truncated));
  res.Set("credPid", credPid > 0 ? Napi::Number::New(env, static_cast<double>(credPid)) : env.Null());
  return res;
}

Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "peerCred");
  int fd;
  if (!a.Count(1) || !a.Fd(0, "fd", &fd)) return {};
  ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
    ThrowErrno(env, errno, "getsockopt");
    return {};
  }
  Napi::Object res = Napi::Object::New(env);
  res.Set("pid", Napi::Number::New(env, cred.pid));
  res.Set("uid", Napi::Number::New(env, cred.uid));
  res.Set("gid", Napi::Number::New(env, cred.gid));
  return res;
}

Napi::Value Shutdown(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, "shutdown");
  int fd;
  int64_t how;
  if (!a.Count(2) || !a.Fd(0, "fd", &fd) || !a.Int(1, "how", 0, 2, &how)) return {};
  if (shutdown(fd, static_cast<int>(how)) < 0) {
    ThrowErrno(env, errno, "shutdown");
    return {};
  }
  return env.Undefined();
}

}  // namespace

void InitSockets(Napi::Env env, Napi::Object exports) {
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("accept", Napi::Function::New(env, Accept, "accept"));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair, "socketpair"));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg, "sendMsg"));
  exports.Set("sendDatagram", Napi::Function::New(env, SendDatagram, "sendDatagram"));
  exports.Set("recvMsg", Napi::Function::New(env, RecvMsg, "recvMsg"));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  exports.Set("shutdown", Napi::Function::New(env, Shutdown, "shutdown"));
}

}  // namespace vfsk
