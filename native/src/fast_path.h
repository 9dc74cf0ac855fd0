// The native request path (docs/ARCHITECTURE.md, "The native request path"): the split ring
// (ring.cc) pops chains and offers each to the FUSE fast server (fast_fuse.cc), which serves the
// hot, self-contained opcodes on the JS thread without entering JavaScript and declines
// everything else, which the ring then hands to the TypeScript FUSE server.
#ifndef VFSK_FAST_PATH_H_
#define VFSK_FAST_PATH_H_

#include <napi.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace vfsk {

struct IoJob;  // io_pool.h

// One guest buffer piece, inside one mapped memory region.
struct ChainSegment {
  uint8_t* host;     // where the bytes are in our mapping
  uint32_t len;
  uint32_t region;   // index in the ring's region table
  uint64_t offset;   // offset of `host` in the region's ArrayBuffer
};

struct Chain {
  uint16_t queue = 0;  // the vring's index (a journaled request's key names it)
  uint16_t head = 0;
  uint64_t counter = 0;
  std::vector<ChainSegment> readable;
  uint64_t readableLen = 0;
  std::vector<ChainSegment> writable;
  uint64_t writableLen = 0;
  void Clear() {
    readable.clear();
    writable.clear();
    readableLen = writableLen = 0;
  }
};

// Crash points of the native path (shared/crash_points.ts names them).
enum class NativeCrashPoint : int {
  kNone = 0, kAfterPop = 1, kAfterSyscall = 2, kBeforePublish = 3, kAfterIntent = 4, kAfterOutcome = 5, kAfterPublish = 6,
  kAfterFdstore = 7
};

// A new inode a LOOKUP found (fast_fuse.cc LookupNew): what JavaScript needs to add it to the
// session (its addInode mutation) and its O_PATH fd to the inode fd cache.
struct NewInode {
  int fd = -1;
  uint32_t fileType = 0;
  uint64_t dev = 0, ino = 0;
  int mountId = 0;
  int handleType = 0;
  uint32_t handleLen = 0;
  uint8_t handle[128];
};

// A new inode as the served records lay it out (ring.cc kNewInodeAt, a READDIRPLUS's new inodes
// after their nodeid; native_ring.ts readNewInode): i32 fd, u32 file type, u64 dev, u64 ino,
// i32 mount id, i32 handle type, u32 handle length, 4 bytes of padding, the handle.
constexpr uint32_t kNewInodeBytes = 40 + sizeof(NewInode::handle);
inline void PutNewInode(const NewInode& n, uint8_t* p) {
  uint32_t handleLen = n.handleLen < sizeof n.handle ? n.handleLen : static_cast<uint32_t>(sizeof n.handle);
  std::memcpy(p, &n.fd, 4);
  std::memcpy(p + 4, &n.fileType, 4);
  std::memcpy(p + 8, &n.dev, 8);
  std::memcpy(p + 16, &n.ino, 8);
  std::memcpy(p + 24, &n.mountId, 4);
  std::memcpy(p + 28, &n.handleType, 4);
  std::memcpy(p + 32, &handleLen, 4);
  std::memcpy(p + 40, n.handle, handleLen);
}

// A file an OPEN opened (fast_fuse.cc Open): what JavaScript needs to register its fd and add
// the fh to the session (its openFile mutation).
struct OpenedFile {
  int fd = -1;
  uint64_t fh = 0;
  uint32_t flags = 0;  // as passed to open(2)
};

// What a served request leaves for JavaScript besides its reply (the record's kind).
enum class ServedKind : uint32_t {
  kPlain = 0, kNewInode = 1, kOpened = 2, kReleased = 3, kOpenedDir = 4, kReleasedDir = 5, kIntended = 6, kCreated = 7, kMadeDir = 8,
  kReaddirPlus = 9, kForgot = 10
};

// The most (nodeid, nlookup) pairs a served BATCH_FORGET carries (more are TypeScript's).
constexpr uint32_t kMaxForgets = 4096;

// A READDIRPLUS's reply is at most this long (header and records): larger requests get a
// shorter reply (the kernel asks again from where it ends), as do those past kMaxDirNewInodes
// new inodes.
constexpr uint32_t kMaxDirReply = 16 + 64 * 1024;
constexpr uint32_t kMaxDirNewInodes = 64;
// A new inode as a READDIRPLUS's long reply lists it after the reply: f64 nodeid, then as
// PutNewInode lays it out.
constexpr uint32_t kDirNewInodeBytes = 8 + 40 + 128;
// The longest "long reply" a served request leaves for JavaScript's journal besides
// Served::reply's room: a READDIRPLUS's reply and its new inodes.
constexpr uint32_t kMaxLongReply = kMaxDirReply + kMaxDirNewInodes * kDirNewInodeBytes;
static_assert(kMaxForgets * 16 <= kMaxLongReply, "a BATCH_FORGET's pairs are a long reply");

// A served request whose journal record the server may write itself (ChainServer::
// JournalOutcomes), by what the record says besides the reply: nothing (kOutcome: a SETATTR, an
// UNLINK or RMDIR, a CREATE or MKDIR that failed), one more lookup of Served::nodeid (kAddLookup:
// a LOOKUP of a known inode), the new inode Served::nodeid (kAddInode: a LOOKUP that added
// Served::inode, named by its handle; a MKDIR too), a lookup of each entry and the dir's new
// position (kDirEntries: a READDIRPLUS, its new inodes added), the lookups dropped (kForgets: a
// FORGET or BATCH_FORGET), the fh Served::file of Served::nodeid (kOpenFile: an OPEN; kOpenDir:
// an OPENDIR), or both the new inode and its fh (kCreated: a CREATE). No fd needs the keeper
// first: new inodes are named by handles, and files and dirs of such inodes are reopenable
// (their fds go to the keeper after the publish, durability.ts step 5). Every other record
// (a RELEASE: locks and fd removals) is JavaScript's to write.
enum class OwnRecord : uint8_t {
  kNo = 0, kOutcome = 1, kAddLookup = 2, kAddInode = 3, kDirEntries = 4, kForgets = 5, kOpenFile = 6, kOpenDir = 7, kCreated = 8
};

// What the server did with a chain it served.
struct Served {
  uint32_t usedLen = 0;
  uint32_t opcode = 0;
  // The request changed session state that JavaScript must journal before its used element is
  // published (a LOOKUP: one more lookup of `nodeid`, or the new inode `nodeid`); `reply` is what
  // the guest got.
  bool needsRecord = false;
  // With needsRecord: whether the server may journal the record itself
  // (ChainServer::JournalOutcomes), and what it says besides the reply.
  OwnRecord own = OwnRecord::kNo;
  uint64_t nodeid = 0;
  uint32_t replyLen = 0;
  uint8_t reply[160];
  // kNewInode: a LOOKUP that added inode `nodeid` (`inode`); kOpened: an OPEN of `nodeid`
  // (`file`); kReleased: a RELEASE of `file.fh`, whose fd JavaScript closes; kOpenedDir and
  // kReleasedDir: the same of OPENDIR and RELEASEDIR; kIntended: a request whose intent the
  // server journaled before its syscall (UNLINK, RMDIR), at `intentTsMs` (wall clock);
  // kCreated: a CREATE (its intent journaled so too) that added inode `nodeid` (`inode`) and
  // opened it (`file`); kMadeDir: a MKDIR (the same) that added inode `nodeid` (`inode`);
  // kForgot: a FORGET or BATCH_FORGET (no reply) whose (u64 nodeid, u64 nlookup) pairs,
  // `dirNewInodes` of them, are `longReply`;
  // kReaddirPlus: a READDIRPLUS of the open dir `file.fh` whose reply is the first
  // `dirReplyLen` bytes of `longReply` (one more lookup of each nonzero nodeid in it, or a new
  // inode: the `dirNewInodes` that follow the reply, in the reply's order, kDirNewInodeBytes
  // each) and after which the dir stands at `dirPosition`.
  ServedKind kind = ServedKind::kPlain;
  double intentTsMs = 0;
  NewInode inode;
  OpenedFile file;
  const uint8_t* longReply = nullptr;  // valid until the next Serve
  uint32_t longReplyLen = 0;
  uint32_t dirReplyLen = 0;
  uint32_t dirNewInodes = 0;
  int64_t dirPosition = 0;
  // A READ or WRITE the JS thread must not wait for: the ring runs it on its I/O threads
  // (io_pool.h) and pushes nothing now; JavaScript completes it when the job is done.
  std::unique_ptr<IoJob> queued;
};

// A served request whose outcome the server journals itself (Served::own): its key's parts,
// the reply the guest got and the session change the record carries (kAddLookup: of `nodeid`;
// kAddInode: the inode `nodeid`, laid out at `newInode` as PutNewInode writes it; kDirEntries:
// the reply's entries, `items` its `itemCount` new inodes (kDirNewInodeBytes each), the dir `fh`
// at `position` after it; kForgets: `items` its `itemCount` (u64 nodeid, u64 nlookup) pairs;
// kOpenFile, kOpenDir and kCreated: the fh `fh`, opened with `openFlags`).
struct PlainOutcome {
  uint32_t head = 0;
  uint64_t counter = 0;
  uint32_t opcode = 0;
  const uint8_t* reply = nullptr;
  uint32_t replyLen = 0;
  OwnRecord own = OwnRecord::kOutcome;
  uint64_t nodeid = 0;
  const uint8_t* newInode = nullptr;
  const uint8_t* items = nullptr;
  uint32_t itemCount = 0;
  uint64_t fh = 0;
  int64_t position = 0;
  uint32_t openFlags = 0;
};

// Implemented by fast_fuse.cc; the ring only knows this.
class ChainServer {
 public:
  virtual ~ChainServer() = default;
  // Serves the chain completely and returns true (with *out filled), or returns false having
  // changed nothing the guest or a successor could tell apart from a request not yet run (the
  // bytes it may have put in writable buffers are overwritten by the reply the TypeScript
  // server writes).
  virtual bool Serve(const Chain& chain, Served* out) = 0;
  // The ring handed the served requests to JavaScript, which applies their session effects
  // before anything else runs.
  virtual void BatchTaken() = 0;
  // Journals the outcomes of these served requests of queue `queue`, in order, as JavaScript's
  // request log would (one commit), so that the ring may publish them without JavaScript (which
  // then only applies their session changes: RingServedBatch.journaled). False, with nothing
  // written: no journal, no room in it, or a record it cannot write (JavaScript journals them).
  virtual bool JournalOutcomes(uint32_t queue, const std::vector<PlainOutcome>& outcomes) = 0;
  // Whether a crash point is armed (tests only): the ring then reports its points.
  virtual bool CrashArmed() const = 0;
  // The named crash point, for a request of this opcode (tests only; no-op unless armed).
  virtual void CrashPoint(NativeCrashPoint point, uint32_t opcode) = 0;
};

// Handles a queue's kick in C++ (ring.cc), called by the kick fd's Poller (poll.cc) before
// JavaScript: true when it did all there was to do, false when JavaScript must run the kick.
// It reads the kick eventfd either way.
class KickHandler {
 public:
  virtual ~KickHandler() = default;
  virtual bool OnKick(int kickFd) = 0;
};

// The KickHandler of a NativeRing object, or nullptr with a TypeError thrown.
KickHandler* UnwrapKickHandler(Napi::Env env, Napi::Value v);

// The ChainServer inside a FastFuse object, or nullptr with a TypeError thrown.
ChainServer* UnwrapChainServer(Napi::Env env, Napi::Value v);

// Copies up to `len` bytes starting `skip` bytes into the segments; returns bytes copied.
size_t GatherSegments(const std::vector<ChainSegment>& segs, size_t skip, uint8_t* dst, size_t len);
// Copies src into the segments starting `skip` bytes in; returns bytes written.
size_t ScatterSegments(const std::vector<ChainSegment>& segs, size_t skip, const uint8_t* src, size_t len);

}  // namespace vfsk

#endif  // VFSK_FAST_PATH_H_
