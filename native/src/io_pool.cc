// The native request path's I/O threads (io_pool.h).
#include "io_pool.h"

#include <errno.h>
#include <linux/fuse.h>
#include <unistd.h>

#include <cstring>
#include <system_error>
#include <thread>

namespace vfsk {

namespace {

// fsync/fdatasync and the bare reply header with its errno.
void RunSync(IoJob* job) {
  int err = 0;
  for (;;) {
    int r = job->kind == IoKind::kFdatasync ? fdatasync(job->fd) : fsync(job->fd);
    if (r == 0) break;
    if (errno == EINTR) continue;
    err = errno;
    break;
  }
  ::close(job->fd);
  job->fd = -1;
  fuse_out_header out{sizeof(fuse_out_header), -err, job->unique};
  ScatterSegments(job->reply, 0, reinterpret_cast<const uint8_t*>(&out), sizeof out);
  job->usedLen = out.len;
}

}  // namespace

void AdvanceIov(std::vector<iovec>* iov, size_t* first, size_t n) {
  while (n > 0 && *first < iov->size()) {
    iovec& v = (*iov)[*first];
    if (n < v.iov_len) {
      v.iov_base = static_cast<uint8_t*>(v.iov_base) + n;
      v.iov_len -= n;
      return;
    }
    n -= v.iov_len;
    (*first)++;
  }
}

void RunIoJob(IoJob* job) {
  if (job->kind == IoKind::kFsync || job->kind == IoKind::kFdatasync) return RunSync(job);
  const bool write = job->kind == IoKind::kWrite;
  size_t done = job->done;
  int err = 0;
  // Skip what the JS thread already moved, then transfer the rest.
  size_t first = 0;
  AdvanceIov(&job->iov, &first, done);
  while (done < job->want && first < job->iov.size()) {
    int cnt = static_cast<int>(job->iov.size() - first);
    off_t at = static_cast<off_t>(job->offset + done);
    ssize_t n = write ? pwritev(job->fd, job->iov.data() + first, cnt, at) : preadv(job->fd, job->iov.data() + first, cnt, at);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    if (n == 0) break;  // EOF (READ), or a write that moves nothing: a short answer
    done += static_cast<size_t>(n);
    AdvanceIov(&job->iov, &first, static_cast<size_t>(n));
  }
  ::close(job->fd);
  job->fd = -1;
  constexpr uint32_t kOutHeader = sizeof(fuse_out_header);
  uint8_t reply[kOutHeader + sizeof(fuse_write_out)];
  std::memset(reply, 0, sizeof reply);
  fuse_out_header out{kOutHeader, 0, job->unique};
  uint32_t replyLen = kOutHeader;
  if (done == 0 && err != 0) {
    // Bytes already moved are the answer even when the rest failed, as from preadv/pwritev.
    out.error = -err;
  } else if (write) {
    fuse_write_out wo{static_cast<uint32_t>(done), 0};
    std::memcpy(reply + kOutHeader, &wo, sizeof wo);
    replyLen = out.len = kOutHeader + sizeof wo;
  } else {
    out.len = static_cast<uint32_t>(kOutHeader + done);
  }
  std::memcpy(reply, &out, sizeof out);
  ScatterSegments(job->reply, 0, reply, replyLen);
  job->usedLen = out.len;
}

bool IoPool::Submit(std::unique_ptr<IoJob>* job) {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->stop) return false;
  // One more thread while every one is busy, up to kThreads (started lazily: a queue that
  // never blocks costs no thread).
  if (state_->idle <= static_cast<int>(state_->queue.size()) && state_->threads < kThreads) {
    try {
      std::thread(Loop, state_).detach();
      state_->threads++;
      state_->idle++;
    } catch (const std::system_error&) {
      if (state_->threads == 0) return false;  // EAGAIN (out of threads): the ones there are will do
    }
  }
  state_->queue.push_back(std::move(*job));
  state_->cv.notify_one();
  return true;
}

void IoPool::TakeDone(std::vector<std::unique_ptr<IoJob>>* out) {
  std::lock_guard<std::mutex> lock(state_->mu);
  for (auto& j : state_->done) out->push_back(std::move(j));
  state_->done.clear();
}

void IoPool::Stop() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->stop = true;
  state_->wake = nullptr;
  state_->cv.notify_all();
}

void IoPool::Loop(std::shared_ptr<State> s) {
  std::unique_lock<std::mutex> lock(s->mu);
  for (;;) {
    s->cv.wait(lock, [&] { return s->stop || !s->queue.empty(); });
    if (s->queue.empty()) break;  // stopped
    std::unique_ptr<IoJob> job = std::move(s->queue.front());
    s->queue.pop_front();
    s->idle--;
    lock.unlock();
    RunIoJob(job.get());
    lock.lock();
    s->idle++;
    s->done.push_back(std::move(job));
    if (s->wake != nullptr) uv_async_send(s->wake);
  }
  s->threads--;
}

}  // namespace vfsk
