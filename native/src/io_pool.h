// The native request path's I/O threads (docs/ARCHITECTURE.md, "The native request path"): a
// READ or WRITE the JS thread must not wait for (RWF_NOWAIT says it would block, the
// filesystem has no NOWAIT buffered writes (ext4), O_SYNC, or more than the JS thread copies)
// and every FSYNC
// runs on a small pool of threads per request queue, as the C virtiofsd's thread pool does,
// instead of going to TypeScript and libuv's threadpool. The thread writes the reply into the
// chain's buffers; the ring (ring.cc) hands finished jobs to JavaScript, which pushes and
// publishes them as its own completions (QueueServer), so drains, pauses and a ring replaced
// after a memory table change see them like any request in flight.
#ifndef VFSK_IO_POOL_H_
#define VFSK_IO_POOL_H_

#include <sys/uio.h>
#include <uv.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "fast_path.h"

namespace vfsk {

enum class IoKind : uint8_t { kRead, kWrite, kFsync, kFdatasync };

// One READ, WRITE or FSYNC for an I/O thread.
struct IoJob {
  // A dup of the open file's fd, owned (and closed) by the job: a RELEASE that closes the
  // table's fd meanwhile cannot make this number another file's.
  int fd = -1;
  IoKind kind = IoKind::kRead;
  uint32_t opcode = 0;
  uint16_t head = 0;
  uint64_t unique = 0;
  uint64_t offset = 0;  // of the request
  size_t done = 0;      // bytes already moved on the JS thread
  size_t want = 0;      // bytes of the request
  std::vector<iovec> iov;           // the request's buffers in guest memory, all `want` bytes
  std::vector<ChainSegment> reply;  // the chain's writable segments
  uint32_t usedLen = 0;             // the reply's length, once run
};

// Drops the first n bytes of the iovecs from iov[*first] on (after a short transfer).
void AdvanceIov(std::vector<iovec>* iov, size_t* first, size_t n);

// Runs one job: the transfer from `done` on (EINTR retried, short counts continued), then the
// reply (what moved, or the errno when nothing did, as preadv/pwritev would say), into
// job->reply; or the fsync/fdatasync and its errno. Closes job->fd.
void RunIoJob(IoJob* job);

// A queue of jobs and the threads that run them (started at the first job). Finished jobs wait
// in `done` until the owner takes them; each finish wakes the owner's uv_async handle.
class IoPool {
 public:
  // `wake` is the owner's uv_async_t (initialised on the JS thread's loop); the pool only sends
  // to it, always while holding the lock the owner takes to collect, so a handle the owner
  // closes after collecting the last job is never sent to again.
  explicit IoPool(uv_async_t* wake) : state_(std::make_shared<State>(wake)) {}
  ~IoPool() { Stop(); }
  IoPool(const IoPool&) = delete;
  IoPool& operator=(const IoPool&) = delete;

  // Takes *job, or returns false leaving it there when no thread could be started.
  bool Submit(std::unique_ptr<IoJob>* job);
  // Moves the finished jobs into *out (appending).
  void TakeDone(std::vector<std::unique_ptr<IoJob>>* out);
  // Threads exit once the queue is empty; they own the shared state, not the pool.
  void Stop();

  static constexpr int kThreads = 4;

 private:
  struct State {
    explicit State(uv_async_t* w) : wake(w) {}
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::unique_ptr<IoJob>> queue;
    std::vector<std::unique_ptr<IoJob>> done;
    uv_async_t* wake;
    bool stop = false;
    int threads = 0;
    int idle = 0;
  };
  static void Loop(std::shared_ptr<State> s);
  std::shared_ptr<State> state_;
};

}  // namespace vfsk

#endif  // VFSK_IO_POOL_H_
