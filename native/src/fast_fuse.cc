// The FUSE fast server: GETATTR, READ and WRITE (not append, not O_SYNC), LOOKUP of known
// inodes, FLUSH, GETXATTR and SETATTR of known inodes and open files, OPEN and OPENDIR of
// handle-named files and dirs and their RELEASE and RELEASEDIR, CREATE and MKDIR of new names,
// UNLINK and RMDIR, served on the JS thread straight from the ring (ring.cc), with no JavaScript.
// worker/fuse/server.ts stays the definition of behaviour: this file serves only the plain,
// well-formed case of each opcode and declines everything else (a length that is not exactly
// the expected one, an unknown nodeid or fh, an offset past 2^53, a syscall error, a read or
// write that would block), which the TypeScript server then answers — errors included.
//
// Decisions:
// - CREATE, MKDIR, UNLINK and RMDIR are not idempotent (EEXIST, ENOENT the second time): as TypeScript does
//   (worker/fuse/exactly_once.ts), their intent is journaled before the syscall, here, into the
//   journal's mapping (worker/state/journal.ts: one record and its commit, as
//   RequestLog.beginRequest writes one), and their outcome by JavaScript before the publish.
// - LOOKUP, SETATTR, OPEN(DIR) and RELEASE(DIR) are journaled by JavaScript before their
//   replies are published (Served::needsRecord: a LOOKUP's lookup count, a SETATTR's reply, an
//   OPEN's new fh, a RELEASE's closeFile, as TypeScript journals them). The others change no session state, so they need no journal record: a request served
//   here and lost in a crash is still marked in the inflight region and is run again by the
//   successor (through TypeScript), which gives the same reply (READ, GETATTR) or writes the
//   same bytes at the same offset (WRITE without O_APPEND).
// - The tables (nodeid → O_PATH fd, fh → fd, nodeid, open flags) are owned by the TypeScript
//   filesystem (worker/fs/fast_table.ts), which removes an entry before it closes the fd or
//   forgets the id: no fd number here is ever a closed or reused one.
// - A READ or WRITE that would block (RWF_NOWAIT says EAGAIN, or the filesystem has no NOWAIT
//   buffered writes), an O_SYNC WRITE and a READ larger than kMaxSyncRead run on the ring's I/O
//   threads (io_pool.h), so the event loop never waits for a disk.
// - GETXATTR (worker/fs/xattrs.ts get: the inode reopened O_RDONLY through /proc/self/fd, then
//   fgetxattr with the caller's fs ids) answers errors here: ENODATA and ERANGE are what the
//   kernel says of the name and the size, and the common answer (a guest kernel asks for
//   security.capability before every write). Every other errno, an fs id that does not take,
//   trusted.* and files that are neither regular nor directories are TypeScript's. The only
//   other error answered here is LOOKUP's ENOENT (a create's lookup first).
#include "common.h"
#include "fast_path.h"
#include "io_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <linux/openat2.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

namespace vfsk {
namespace {

constexpr size_t kInHeader = sizeof(fuse_in_header);    // 40
constexpr size_t kOutHeader = sizeof(fuse_out_header);  // 16
constexpr size_t kAttrReply = kOutHeader + sizeof(fuse_attr_out);  // GETATTR's and SETATTR's reply
static_assert(kAttrReply <= sizeof(Served::reply) && kOutHeader + sizeof(fuse_entry_out) <= sizeof(Served::reply),
              "a journaled reply (SETATTR, LOOKUP) fits Served::reply");
// Reads larger than worker/fs/io.ts SYNC_IO_MAX go to the threadpool, where they copy in
// parallel (`npm run bench`, 1 MiB sequential READ at 8 in flight: 8.6 GB/s there, 6.5-7.1
// served here). Writes to one file take its inode lock, so they gain nothing there and pay
// the hand-off (1 MiB WRITE: 469 µs of backend CPU each there, 313 here): up to the largest a
// session allows (server.ts MAX_WRITE) they are served here, a copy of at most ~100 µs.
constexpr uint64_t kMaxSyncRead = 128 * 1024;
constexpr uint64_t kMaxSyncWrite = 1024 * 1024;
// The largest READ served natively (the I/O threads take those above kMaxSyncRead); a larger
// one (the kernel asks at most max_pages) is TypeScript's. A WRITE above kMaxSyncWrite
// (server.ts MAX_WRITE) is TypeScript's EINVAL.
constexpr uint64_t kMaxRead = 4 * 1024 * 1024;
constexpr size_t kDirent64Header = 19;                    // linux_dirent64 before d_name
constexpr size_t kDirentPlusName = sizeof(fuse_entry_out) + FUSE_NAME_OFFSET;  // 152
constexpr size_t kDirentBuffer = 32 * 1024;               // one getdents64 of READDIRPLUS
constexpr size_t kFuseNameMax = 1024;                     // worker/fuse/constants.ts FUSE_NAME_MAX
constexpr size_t kMaxName = 255;                        // NAME_MAX (and XATTR_NAME_MAX): longer names are TypeScript's
constexpr size_t kXattrSizeMax = 65536;                 // XATTR_SIZE_MAX, as worker/fs/xattrs.ts caps a buffer
constexpr uint64_t kMaxSafeU = static_cast<uint64_t>(kMaxSafe);
constexpr long kTmpfsMagic = 0x01021994;
constexpr uint32_t kOpcodeSlots = 64;  // FUSE opcodes are below 64, but for CUSE_INIT (4096)
constexpr long kRamfsMagic = 0x858458f6;
constexpr int kOpenAppend = 02000;
constexpr int kOpenSyncBits = 04010000 | 010000;  // O_SYNC (includes __O_DSYNC) | O_DSYNC
// The state journal's layout (worker/state/journal.ts) and its intent record
// (worker/state/records.ts putIntent): u32 length, u32 crc32, then tag, key (u8 length and
// latin1), u32 opcode, f64 wall-clock ms, u32 extra length (0).
constexpr size_t kJournalCommitAt = 16;
constexpr size_t kJournalDataStart = 4096;
constexpr size_t kJournalRecordHeader = 8;
constexpr uint8_t kTagIntent = 1;
constexpr uint8_t kTagOutcome = 2;  // worker/state/records.ts TAG_OUTCOME
constexpr uint8_t kTagLookups = 5;  // worker/state/records.ts TAG_LOOKUPS
// The header's schema and min-reader fields (journal.ts raiseSchema) and the schema a
// TAG_LOOKUPS record needs (records.ts LOOKUPS_SCHEMA).
constexpr size_t kJournalSchemaAt = 12;
constexpr size_t kJournalMinReaderAt = 32;
constexpr uint32_t kLookupsSchema = 3;
constexpr size_t kMaxKey = 48;  // "65535.65535." and a u64 counter

const napi_type_tag kFastFuseTag = {0x7666736b66617374ULL, 0x6675736531000001ULL};

// How a file takes synchronous I/O on the JS thread: RWF_NOWAIT, plainly (memory-backed files:
// tmpfs/ramfs have no NOWAIT but never wait for a disk), or not at all.
enum class SyncIo : uint8_t { kNowait, kPlain, kNone };

struct DevIno {
  uint64_t dev, ino;
  bool operator==(const DevIno& o) const { return dev == o.dev && ino == o.ino; }
};
struct DevInoHash {
  size_t operator()(const DevIno& k) const { return std::hash<uint64_t>()(k.ino * 1000003u ^ k.dev); }
};

// What identifies an inode of the session (worker/fs/session.ts InodeRecord).
struct InodeMeta {
  uint64_t dev, ino, generation;
  uint32_t fileType;  // st_mode & S_IFMT
  bool hasHandle;
  int mountId;
  int handleType;
  std::vector<uint8_t> handle;
};

struct DirEntry {
  DirEntry() = default;
  DirEntry(int f, uint64_t n) : fd(f), nodeid(n) {}
  int fd = -1;
  uint64_t nodeid = 0;
  // READDIRPLUS's cursor (Readdirplus): whether this path served the dir's last READDIRPLUS,
  // so the fd's position and `pending` stand at `position`; whether it moved the fd since
  // JavaScript last asked (takeDir); and whether a listing met a name the session does not
  // know (then the rest of this fh's listings are JavaScript's: it looks new names up).
  bool cursorOurs = false;
  bool touched = false;
  bool unknownSeen = false;
  int64_t position = 0;
  std::vector<uint8_t> pending;  // getdents64 bytes not handed out yet, from pendingAt
  size_t pendingAt = 0;
  void DropCursor() {
    cursorOurs = false;
    pending.clear();
    pendingAt = 0;
  }
};

// Room for name_to_handle_at's handle.
struct HandleBuffer {
  HandleBuffer() { u.fh.handle_bytes = MAX_HANDLE_SZ; }
  union {
    file_handle fh;
    uint8_t bytes[sizeof(file_handle) + MAX_HANDLE_SZ];
  } u;
};

// A name a READDIRPLUS met that the session does not know: its identified inode (fd open) and
// where its entry is in the reply.
struct DirNewInode {
  NewInode inode;
  size_t at = 0;
};

struct FileEntry {
  int fd;
  uint64_t nodeid;
  int flags;
  SyncIo read = SyncIo::kNowait;
  SyncIo write = SyncIo::kNowait;
};

template <typename T>
inline T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

bool MemoryBacked(int fd) {
  struct statfs s;
  if (fstatfs(fd, &s) != 0) return false;
  return s.f_type == kTmpfsMagic || static_cast<unsigned long>(s.f_type) == static_cast<unsigned long>(kRamfsMagic);
}

// The iovecs of [skip, skip+len) of the segments; false when more than IOV_MAX are needed.
bool SliceIov(const std::vector<ChainSegment>& segs, size_t skip, size_t len, std::vector<iovec>* out) {
  out->clear();
  for (const ChainSegment& s : segs) {
    if (len == 0) break;
    if (skip >= s.len) { skip -= s.len; continue; }
    size_t n = std::min<size_t>(s.len - skip, len);
    if (out->size() == kMaxIov) return false;
    out->push_back({s.host + skip, n});
    len -= n;
    skip = 0;
  }
  return len == 0;
}

uint32_t SaturateU32(uint64_t v) { return v > 0xffffffffULL ? 0xffffffffU : static_cast<uint32_t>(v); }

// CRC-32 (IEEE 802.3, reflected; zlib's crc32, which the journal's reader checks).
uint32_t Crc32(const uint8_t* p, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xedb88320U ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xffffffffU;
  for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffU;
}

class FastFuse : public Napi::ObjectWrap<FastFuse>, public ChainServer {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FastFuse", {
      InstanceMethod<&FastFuse::SetEnabled>("setEnabled"),
      InstanceMethod<&FastFuse::SetReadonly>("setReadonly"),
      InstanceMethod<&FastFuse::SetAttrTimeout>("setAttrTimeout"),
      InstanceMethod<&FastFuse::SetXattr>("setXattr"),
      InstanceMethod<&FastFuse::SetInode>("setInode"),
      InstanceMethod<&FastFuse::DeleteInode>("deleteInode"),
      InstanceMethod<&FastFuse::SetFile>("setFile"),
      InstanceMethod<&FastFuse::SetInodeMeta>("setInodeMeta"),
      InstanceMethod<&FastFuse::ForgetInode>("forgetInode"),
      InstanceMethod<&FastFuse::SetLockOwners>("setLockOwners"),
      InstanceMethod<&FastFuse::DeleteFile>("deleteFile"),
      InstanceMethod<&FastFuse::SetDir>("setDir"),
      InstanceMethod<&FastFuse::DeleteDir>("deleteDir"),
      InstanceMethod<&FastFuse::TakeDir>("takeDir"),
      InstanceMethod<&FastFuse::Clear>("clear"),
      InstanceMethod<&FastFuse::SetHandles>("setHandles"),
      InstanceMethod<&FastFuse::SetNextNodeId>("setNextNodeId"),
      InstanceMethod<&FastFuse::SetNextFh>("setNextFh"),
      InstanceMethod<&FastFuse::SetOpenRoom>("setOpenRoom"),
      InstanceMethod<&FastFuse::SetOpenPolicy>("setOpenPolicy"),
      InstanceMethod<&FastFuse::SetJournal>("setJournal"),
      InstanceMethod<&FastFuse::SetSettled>("setSettled"),
      InstanceMethod<&FastFuse::SetInodeCacheFull>("setInodeCacheFull"),
      InstanceMethod<&FastFuse::SetCreatePolicy>("setCreatePolicy"),
      InstanceMethod<&FastFuse::SetUnjournaled>("setUnjournaled"),
      InstanceMethod<&FastFuse::SetLookupsRecords>("setLookupsRecords"),
      InstanceMethod<&FastFuse::ArmCrash>("armCrash"),
      InstanceMethod<&FastFuse::Stats>("stats"),
    });
  }

  explicit FastFuse(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FastFuse>(info) {
    napi_type_tag_object(info.Env(), info.This(), &kFastFuseTag);
  }

  ~FastFuse() override {
    if (procFdDir_ >= 0) close(procFdDir_);
    if (journalMapping_ != nullptr) ReleaseMapping(journalMapping_);
  }

  bool Serve(const Chain& c, Served* out) override {
    out->own = OwnRecord::kNo;
    if (!enabled_ || c.readableLen < kInHeader) return Decline();
    // The header and the largest args we use, copied once: the guest may change its buffers.
    uint8_t in[kInHeader + std::max(sizeof(fuse_getxattr_in), sizeof(fuse_create_in)) + kMaxName + 1];
    size_t have = GatherSegments(c.readable, 0, in, std::min<uint64_t>(c.readableLen, sizeof in));
    fuse_in_header h;
    std::memcpy(&h, in, sizeof h);
    bool served;
    if (h.len != c.readableLen || (!forgotten_.empty() && forgotten_.count(h.nodeid) != 0)) {
      // A nodeid a FORGET of this batch may have dropped: JavaScript's, once it applied it.
      served = Decline();
    } else if (h.opcode == FUSE_FORGET || h.opcode == FUSE_BATCH_FORGET) {
      // No reply, so no writable buffer needed.
      served = Forget(c, h, in, have, out);
    } else {
      served = c.writableLen < kOutHeader ? Decline() : ServeOp(c, h, in, have, out);
    }
    if (!served) declinedByOpcode_[std::min<uint32_t>(h.opcode, kOpcodeSlots - 1)]++;
    return served;
  }

  bool ServeOp(const Chain& c, const fuse_in_header& h, const uint8_t* in, size_t have, Served* out) {
    out->opcode = h.opcode;
    out->needsRecord = false;
    out->own = OwnRecord::kNo;
    out->kind = ServedKind::kPlain;
    uint32_t* usedLen = &out->usedLen;
    switch (h.opcode) {
      case FUSE_GETATTR:
        return have == kInHeader + sizeof(fuse_getattr_in) && h.len == have && Getattr(c, h, in + kInHeader, usedLen);
      case FUSE_READ:
        return have == kInHeader + sizeof(fuse_read_in) && h.len == have && Read(c, h, in + kInHeader, out);
      case FUSE_WRITE:
        return have >= kInHeader + sizeof(fuse_write_in) && Write(c, h, in + kInHeader, out);
      case FUSE_LOOKUP:
        return h.len == have && Lookup(c, h, in + kInHeader, have - kInHeader, out);
      case FUSE_FLUSH:
        return have == kInHeader + sizeof(fuse_flush_in) && h.len == have && Flush(c, h, in + kInHeader, usedLen);
      case FUSE_GETXATTR:
        return h.len == have && Getxattr(c, h, in + kInHeader, have - kInHeader, usedLen);
      case FUSE_SETATTR:
        return have == kInHeader + sizeof(fuse_setattr_in) && h.len == have && Setattr(c, h, in + kInHeader, out);
      case FUSE_OPEN:
        return have == kInHeader + sizeof(fuse_open_in) && h.len == have && Open(c, h, in + kInHeader, out);
      case FUSE_RELEASE:
        return have == kInHeader + sizeof(fuse_release_in) && h.len == have && Release(c, h, in + kInHeader, out);
      case FUSE_OPENDIR:
        return have == kInHeader + sizeof(fuse_open_in) && h.len == have && Opendir(c, h, out);
      case FUSE_RELEASEDIR:
        return have == kInHeader + sizeof(fuse_release_in) && h.len == have && Releasedir(c, h, in + kInHeader, out);
      case FUSE_MKDIR:
        return h.len == have && Mkdir(c, h, in + kInHeader, have - kInHeader, out);
      case FUSE_CREATE:
        return h.len == have && Create(c, h, in + kInHeader, have - kInHeader, out);
      case FUSE_UNLINK:
        return h.len == have && Remove(c, h, in + kInHeader, have - kInHeader, 0, out);
      case FUSE_RMDIR:
        return h.len == have && Remove(c, h, in + kInHeader, have - kInHeader, AT_REMOVEDIR, out);
      case FUSE_READDIRPLUS:
        return have == kInHeader + sizeof(fuse_read_in) && h.len == have && Readdirplus(c, h, in + kInHeader, out);
      case FUSE_FSYNC:
        return have == kInHeader + sizeof(fuse_fsync_in) && h.len == have && Fsync(c, h, in + kInHeader, out);
      case FUSE_LISTXATTR:
        return have == kInHeader + sizeof(fuse_getxattr_in) && h.len == have && Listxattr(c, h, in + kInHeader, usedLen);
      case FUSE_STATFS:
        return have == kInHeader && h.len == have && Statfs(c, h, usedLen);
      case FUSE_LSEEK:
        return have == kInHeader + sizeof(fuse_lseek_in) && h.len == have && Lseek(c, h, in + kInHeader, usedLen);
      default:
        return Decline();
    }
  }

  void BatchTaken() override { forgotten_.clear(); }

  // A FORGET of this batch named `nodeid`: the session may drop it when JavaScript applies it.
  bool Forgotten(uint64_t nodeid) const { return !forgotten_.empty() && forgotten_.count(nodeid) != 0; }

  bool CrashArmed() const override { return crashPoint_ != NativeCrashPoint::kNone; }

  void CrashPoint(NativeCrashPoint point, uint32_t opcode) override {
    if (point != crashPoint_ || (crashOpcode_ >= 0 && static_cast<uint32_t>(crashOpcode_) != opcode)) return;
    // Calls the JS crash point (marker file, then SIGKILL): it does not return when it fires.
    crashFn_.Call({Napi::Number::New(crashFn_.Env(), static_cast<int>(point)), Napi::Number::New(crashFn_.Env(), opcode)});
  }

 private:
  bool Decline() {
    declined_++;
    return false;
  }

  bool Getattr(const Chain& c, const fuse_in_header& h, const uint8_t* args, uint32_t* usedLen) {
    fuse_getattr_in g;
    std::memcpy(&g, args, sizeof g);
    if ((g.getattr_flags & FUSE_GETATTR_FH) != 0 && g.fh >= kMaxSafeU) return Decline();
    auto it = inodes_.find(h.nodeid);
    if (it == inodes_.end() || c.writableLen < kAttrReply) return Decline();
    struct stat st;
    if (fstatat(it->second, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return Decline();
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    uint8_t reply[kAttrReply];
    *usedLen = WriteAttrReply(c, h, st, reply);
    getattrs_++;
    return true;
  }

  // The fuse_attr_out reply of GETATTR and SETATTR (encode.ts encodeAttrOut), built in `reply`
  // (kAttrReply bytes) and written to the guest; returns its length.
  uint32_t WriteAttrReply(const Chain& c, const fuse_in_header& h, const struct stat& st, uint8_t* reply) const {
    std::memset(reply, 0, kAttrReply);
    fuse_out_header oh{static_cast<uint32_t>(kAttrReply), 0, h.unique};
    std::memcpy(reply, &oh, sizeof oh);
    fuse_attr_out a;
    std::memset(&a, 0, sizeof a);
    a.attr_valid = attrSec_;
    a.attr_valid_nsec = attrNsec_;
    FillAttr(st, &a.attr);
    std::memcpy(reply + kOutHeader, &a, sizeof a);
    ScatterSegments(c.writable, 0, reply, kAttrReply);
    return static_cast<uint32_t>(kAttrReply);
  }

  // As worker/fuse/encode.ts encodeAttr: the kernel's new_encode_dev for rdev, u64 fields that
  // are u32 on the wire saturate.
  static void FillAttr(const struct stat& st, fuse_attr* a) {
    a->ino = st.st_ino;
    a->size = st.st_size;
    a->blocks = st.st_blocks;
    a->atime = st.st_atim.tv_sec;
    a->mtime = st.st_mtim.tv_sec;
    a->ctime = st.st_ctim.tv_sec;
    a->atimensec = st.st_atim.tv_nsec;
    a->mtimensec = st.st_mtim.tv_nsec;
    a->ctimensec = st.st_ctim.tv_nsec;
    a->mode = st.st_mode;
    a->nlink = SaturateU32(st.st_nlink);
    a->uid = st.st_uid;
    a->gid = st.st_gid;
    uint32_t maj = major(st.st_rdev), min = minor(st.st_rdev);
    a->rdev = (min & 0xff) | ((maj & 0xfff) << 8) | ((min & 0xfff00) << 12);
    a->blksize = SaturateU32(static_cast<uint64_t>(st.st_blksize));
    a->flags = 0;
  }

  // LOOKUP of a name whose inode the session knows (worker/fs/inodes.ts lookupKnown, the same
  // test): fstatat of the name under the parent's fd, its (dev, ino) in the table, and for an
  // inode named by a file handle whose fd nobody holds the name's handle equal to the recorded
  // one (nothing pins such an inode, so its number may have been reused). One more lookup of
  // that nodeid is the session effect, which JavaScript journals before the reply is published
  // (needsRecord). A name that does not exist is answered ENOENT here, as TypeScript answers it
  // (no negative entries): no session effect, so nothing to journal, and a successor that runs
  // it again answers for the directory as it is then, which the guest cannot tell from a later
  // request. '.', '..', new inodes and every other error are TypeScript's.
  bool Lookup(const Chain& c, const fuse_in_header& h, const uint8_t* args, size_t len, Served* out) {
    constexpr size_t kReply = kOutHeader + sizeof(fuse_entry_out);
    if (len < 2 || args[len - 1] != 0 || c.writableLen < kReply) return Decline();
    const char* name = reinterpret_cast<const char*>(args);
    size_t n = len - 1;
    if (std::memchr(name, 0, n) != nullptr || std::memchr(name, '/', n) != nullptr) return Decline();
    if ((n == 1 && name[0] == '.') || (n == 2 && name[0] == '.' && name[1] == '.')) return Decline();
    auto parent = inodes_.find(h.nodeid);
    if (parent == inodes_.end()) return Decline();
    struct stat st;
    if (fstatat(parent->second, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno != ENOENT) return Decline();
      CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
      lookupsMissing_++;
      return ReplyError(c, h, ENOENT, &out->usedLen);
    }
    auto known = byDevIno_.find(DevIno{st.st_dev, st.st_ino});
    if (known == byDevIno_.end()) return LookupNew(c, h, parent->second, name, out);
    const InodeMeta& m = meta_.at(known->second);
    if (Forgotten(known->second) || !StillTheInode(parent->second, name, known->second, m)) return Decline();
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    WriteEntryReply(c, h, known->second, m.generation, st, out);
    out->own = OwnRecord::kAddLookup;
    lookups_++;
    return true;
  }

  // FORGET and BATCH_FORGET of inodes in the table (worker/fs/inodes.ts forget, each pair): no
  // reply (used length 0); the pairs go to JavaScript (kForgot), which drops the lookups and
  // journals them before the used element is published, as its own FORGET (no intent: a
  // successor that runs it again finds its outcome, or never saw it). A dropped inode leaves
  // the tables once JavaScript applies the batch; until then every request of a nodeid forgotten
  // in this batch is declined (forgotten_), so none is served from a table entry the session
  // no longer has. Declined: the root, a nodeid not in the table (TypeScript logs it), a count
  // of 0, a BATCH_FORGET whose count is not exactly its length or past kMaxForgets.
  bool Forget(const Chain& c, const fuse_in_header& h, const uint8_t* in, size_t have, Served* out) {
    uint8_t* pairs = dirReply_.data();
    uint32_t count;
    if (h.opcode == FUSE_FORGET) {
      if (have != kInHeader + sizeof(fuse_forget_in) || h.len != have) return Decline();
      count = 1;
      Store<uint64_t>(pairs, h.nodeid);
      std::memcpy(pairs + 8, in + kInHeader, 8);
    } else {
      if (have < kInHeader + sizeof(fuse_batch_forget_in)) return Decline();
      fuse_batch_forget_in b;
      std::memcpy(&b, in + kInHeader, sizeof b);
      count = b.count;
      if (count == 0 || count > kMaxForgets || h.len != kInHeader + sizeof b + uint64_t{count} * sizeof(fuse_forget_one)) return Decline();
      // The pairs straight from the guest's buffers (they may change: this copy is what counts).
      if (GatherSegments(c.readable, kInHeader + sizeof b, pairs, count * sizeof(fuse_forget_one)) != count * sizeof(fuse_forget_one)) return Decline();
    }
    for (uint32_t i = 0; i < count; i++) {
      uint64_t nodeid = Load<uint64_t>(pairs + 16 * i);
      uint64_t nlookup = Load<uint64_t>(pairs + 16 * i + 8);
      if (nodeid == FUSE_ROOT_ID || nlookup == 0 || meta_.count(nodeid) == 0) return Decline();
    }
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    for (uint32_t i = 0; i < count; i++) forgotten_.insert(Load<uint64_t>(pairs + 16 * i));
    out->usedLen = 0;
    out->replyLen = 0;
    out->needsRecord = true;
    out->nodeid = h.nodeid;
    out->opcode = h.opcode;
    out->kind = ServedKind::kForgot;
    out->own = OwnRecord::kForgets;
    out->file = OpenedFile{};
    out->longReply = pairs;
    out->longReplyLen = count * 16;
    out->dirReplyLen = 0;
    out->dirNewInodes = count;
    out->dirPosition = 0;
    forgets_ += count;
    return true;
  }

  // Whether `name` under `parentFd`, whose (dev, ino) is the known inode `nodeid`'s, is that
  // inode: an inode whose O_PATH fd we hold (in the table: the cache or the keeper has it open)
  // is pinned, so its number cannot have been reused; for one named by a file handle whose fd
  // nobody holds, the name's handle must be the recorded one.
  bool StillTheInode(int parentFd, const char* name, uint64_t nodeid, const InodeMeta& m) const {
    if (!m.hasHandle || inodes_.count(nodeid) != 0) return true;
    HandleBuffer h;
    int mountId = 0;
    if (name_to_handle_at(parentFd, name, &h.u.fh, &mountId, 0) != 0) return false;
    return mountId == m.mountId && h.u.fh.handle_type == m.handleType && h.u.fh.handle_bytes == m.handle.size() &&
           std::memcmp(h.u.fh.f_handle, m.handle.data(), m.handle.size()) == 0;
  }

  // READDIRPLUS of a dir in the dir table (worker/fs/dir_cursor.ts readdir, each entry as
  // worker/fs/inodes.ts lookupChildStat finds it), from the start or from where this path's
  // own last READDIRPLUS of the fh ended. A name of an inode the session knows: fstatat of the
  // name, its (dev, ino) the one getdents64 gave and in the table, StillTheInode (as Lookup). A
  // name it does not know: opened and identified as LookupNew does (handles on, the shared
  // directory's mount), the inode taking the session's next nodeid once the whole reply is
  // known (a hard link met twice is one inode: the second is a lookup of the first). Each entry
  // is one more lookup of its nodeid (or a new inode), and the dir's position moves to the last
  // entry's cookie: JavaScript journals both with the reply (kReaddirPlus) before it is
  // published. Like TypeScript: '.' and '..' with a zero entry ('..' of the root with the
  // root's own inode number), the names that fit min(size, the buffers, kMaxDirReply), and the
  // first record that does not fit ends the reply (as does the kMaxDirNewInodes+1st new inode).
  // Declined, with nothing added: any other offset (a seek: TypeScript's, whose cursor knows a
  // legacy cookie), a new name while new inodes are TypeScript's (and the rest of this fh's
  // listings with it), a name gone or changed since getdents64, any syscall error, a first
  // record that does not fit. A declined one may have moved the fd: TypeScript asks (takeDir)
  // before it reads the dir.
  bool Readdirplus(const Chain& c, const fuse_in_header& h, const uint8_t* args, Served* out) {
    fuse_read_in r;
    std::memcpy(&r, args, sizeof r);
    if (r.fh >= kMaxSafeU || c.writableLen < kOutHeader) return Decline();
    auto it = dirs_.find(r.fh);
    if (it == dirs_.end() || it->second.nodeid != h.nodeid || it->second.unknownSeen) return Decline();
    DirEntry& d = it->second;
    auto dirMeta = meta_.find(d.nodeid);
    if (dirMeta == meta_.end()) return Decline();
    const uint64_t dirDev = dirMeta->second.dev;
    const int64_t cookie = static_cast<int64_t>(r.offset);
    const bool continues = d.cursorOurs && d.position == cookie;
    if (!continues && cookie != 0) return Decline();
    const size_t room = std::min<uint64_t>({r.size, c.writableLen - kOutHeader, kMaxDirReply - kOutHeader});
    const bool newAllowed = handleMountId_ >= 0 && nextNodeId_ != 0 && nextNodeId_ + kMaxDirNewInodes < kMaxSafeU;
    d.touched = true;
    if (!continues) {
      d.DropCursor();
      if (lseek(d.fd, 0, SEEK_SET) != 0) return Decline();
      d.cursorOurs = true;
      d.position = 0;
    }
    uint8_t* reply = dirReply_.data();
    dirNew_.clear();
    size_t used = 0;
    uint32_t entries = 0;
    int64_t position = d.position;
    bool eof = false;
    for (;;) {
      if (d.pendingAt >= d.pending.size()) {
        d.pending.resize(kDirentBuffer);
        d.pendingAt = 0;
        long n = syscall(SYS_getdents64, d.fd, d.pending.data(), d.pending.size());
        if (n <= 0) {
          d.pending.clear();
          if (n < 0) return DeclineDir(&d);
          eof = true;
          break;
        }
        d.pending.resize(static_cast<size_t>(n));
      }
      const uint8_t* p = d.pending.data() + d.pendingAt;
      const size_t left = d.pending.size() - d.pendingAt;
      // host_dirents.ts parseDirentBatch's checks (the kernel never fails them).
      if (left < kDirent64Header + 1) return DeclineDir(&d);
      const uint16_t reclen = Load<uint16_t>(p + 16);
      if (reclen < kDirent64Header + 1 || reclen > left) return DeclineDir(&d);
      const char* name = reinterpret_cast<const char*>(p + kDirent64Header);
      const void* nul = std::memchr(name, 0, reclen - kDirent64Header);
      if (nul == nullptr || nul == name) return DeclineDir(&d);
      const size_t nameLen = static_cast<size_t>(static_cast<const char*>(nul) - name);
      if (nameLen > kFuseNameMax) return DeclineDir(&d);
      const size_t size = (kDirentPlusName + nameLen + 7) & ~size_t{7};
      if (used + size > room) break;
      const uint64_t dIno = Load<uint64_t>(p);
      const int64_t dOff = Load<int64_t>(p + 8);
      const bool dot = nameLen == 1 && name[0] == '.';
      const bool dotDot = nameLen == 2 && name[0] == '.' && name[1] == '.';
      uint8_t* rec = reply + kOutHeader + used;
      std::memset(rec, 0, size);
      uint64_t ino = dIno;
      if (dotDot && d.nodeid == FUSE_ROOT_ID) {
        // The shared directory's '..' is the shared directory itself, as LOOKUP says.
        ino = dirMeta->second.ino;
      } else if (!dot && !dotDot) {
        fuse_entry_out e;
        struct stat st;
        auto known = byDevIno_.find(DevIno{dirDev, dIno});
        if (known != byDevIno_.end()) {
          const InodeMeta& m = meta_.at(known->second);
          if (Forgotten(known->second) || fstatat(d.fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_dev != dirDev || st.st_ino != dIno ||
              !StillTheInode(d.fd, name, known->second, m))
            return DeclineDir(&d);
          FillEntry(known->second, m.generation, st, &e);
        } else {
          if (!newAllowed) {
            d.unknownSeen = true;
            return DeclineDir(&d);
          }
          if (dirNew_.size() == kMaxDirNewInodes) break;
          DirNewInode n;
          n.at = kOutHeader + used;
          if (inodeCacheFull_) {
            // As inodes.ts listedByHandle: an fd would only evict another before any use.
            if (!IdentifyByName(d.fd, name, &n.inode, &st) || st.st_dev != dirDev || st.st_ino != dIno) return DeclineDir(&d);
          } else {
            int fd = OpenPathBeneath(d.fd, name);
            if (fd < 0) return DeclineDir(&d);
            if (!Identify(fd, &n.inode, &st) || st.st_dev != dirDev || st.st_ino != dIno) {
              close(fd);
              return DeclineDir(&d);
            }
          }
          dirNew_.push_back(n);
          FillEntry(0, 0, st, &e);  // its nodeid once the reply is whole
        }
        std::memcpy(rec, &e, sizeof e);
        entries++;
      }
      fuse_dirent de;
      de.ino = ino;
      de.off = static_cast<uint64_t>(dOff);
      de.namelen = static_cast<uint32_t>(nameLen);
      de.type = p[18];
      std::memcpy(rec + sizeof(fuse_entry_out), &de, FUSE_NAME_OFFSET);
      std::memcpy(rec + kDirentPlusName, name, nameLen);
      used += size;
      position = dOff;
      d.pendingAt += reclen;
    }
    if (used == 0 && !eof) return DeclineDir(&d);
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    // The new inodes take their nodeids in the reply's order; one already added by an earlier
    // name of this reply (a hard link) is that inode, looked up again.
    uint8_t* list = reply + kOutHeader + used;
    uint32_t added = 0;
    for (DirNewInode& n : dirNew_) {
      auto again = byDevIno_.find(DevIno{n.inode.dev, n.inode.ino});
      uint64_t nodeid;
      // (Not one forgotten in this batch: phase 1 found no known inode of this (dev, ino).)
      if (again != byDevIno_.end()) {
        nodeid = again->second;
        if (n.inode.fd >= 0) close(n.inode.fd);
      } else {
        nodeid = AddNewInode(n.inode);
        PutDirNewInode(nodeid, n.inode, list + static_cast<size_t>(added) * kDirNewInodeBytes);
        added++;
      }
      Store<uint64_t>(reply + n.at, nodeid);
    }
    dirNew_.clear();
    d.position = position;
    fuse_out_header oh{static_cast<uint32_t>(kOutHeader + used), 0, h.unique};
    std::memcpy(reply, &oh, sizeof oh);
    ScatterSegments(c.writable, 0, reply, kOutHeader + used);
    out->usedLen = static_cast<uint32_t>(kOutHeader + used);
    out->replyLen = 0;
    out->needsRecord = true;
    out->nodeid = h.nodeid;
    out->kind = ServedKind::kReaddirPlus;
    out->own = OwnRecord::kDirEntries;
    out->file = OpenedFile{d.fd, r.fh, 0};
    out->longReply = reply;
    out->dirReplyLen = static_cast<uint32_t>(kOutHeader + used);
    out->dirNewInodes = added;
    out->longReplyLen = out->dirReplyLen + added * kDirNewInodeBytes;
    out->dirPosition = position;
    readdirplus_++;
    direntsPlus_ += entries;
    direntsNew_ += added;
    return true;
  }

  // A new inode in a READDIRPLUS's long reply (fast_path.h kDirNewInodeBytes).
  static void PutDirNewInode(uint64_t nodeid, const NewInode& n, uint8_t* p) {
    std::memset(p, 0, kDirNewInodeBytes);
    Store<double>(p, static_cast<double>(nodeid));
    PutNewInode(n, p + 8);
  }

  // A READDIRPLUS declined after it may have moved the fd: the next one here seeks again; the
  // new inodes it opened are closed, none added.
  bool DeclineDir(DirEntry* d) {
    for (const DirNewInode& n : dirNew_) {
      if (n.inode.fd >= 0) close(n.inode.fd);
    }
    dirNew_.clear();
    d->DropCursor();
    return Decline();
  }

  // The fuse_entry_out reply of a LOOKUP (encode.ts encodeEntryOut), in out->reply and the guest's
  // buffers; the request needs its journal record.
  void WriteEntryReply(const Chain& c, const fuse_in_header& h, uint64_t nodeid, uint64_t generation, const struct stat& st,
                       Served* out) const {
    constexpr size_t kReply = kOutHeader + sizeof(fuse_entry_out);
    uint8_t* reply = out->reply;
    std::memset(reply, 0, kReply);
    fuse_out_header oh{static_cast<uint32_t>(kReply), 0, h.unique};
    std::memcpy(reply, &oh, sizeof oh);
    fuse_entry_out e;
    FillEntry(nodeid, generation, st, &e);
    std::memcpy(reply + kOutHeader, &e, sizeof e);
    ScatterSegments(c.writable, 0, reply, kReply);
    out->usedLen = kReply;
    out->replyLen = kReply;
    out->needsRecord = true;
    out->nodeid = nodeid;
  }

  // An entry (encode.ts encodeEntryOut's body) with the session's timeouts.
  void FillEntry(uint64_t nodeid, uint64_t generation, const struct stat& st, fuse_entry_out* e) const {
    std::memset(e, 0, sizeof *e);
    e->nodeid = nodeid;
    e->generation = generation;
    e->entry_valid = e->attr_valid = attrSec_;
    e->entry_valid_nsec = e->attr_valid_nsec = attrNsec_;
    FillAttr(st, &e->attr);
  }

  // LOOKUP of a name whose inode the session does not know (worker/fs/inodes.ts lookupChild and
  // adopt, for an inode named by a file handle): opened O_PATH beneath the parent, its (dev, ino)
  // from the fd, its handle from name_to_handle_at on the fd, which must be on the shared
  // directory's mount. The inode gets the next nodeid (JavaScript adds it to the session with
  // that nodeid before anything else allocates one: the batch comes before any chain popped
  // after it) and its fd goes to the table; JavaScript takes the fd into its inode fd cache and
  // journals the addInode. Declined: handles off, a (dev, ino) that is known after all (the name
  // changed meanwhile), another mount, any syscall error (TypeScript gives the errno: EMFILE's
  // relief included).
  bool LookupNew(const Chain& c, const fuse_in_header& h, int parentFd, const char* name, Served* out) {
    if (handleMountId_ < 0 || nextNodeId_ == 0 || nextNodeId_ >= kMaxSafeU) return Decline();
    int fd = OpenPathBeneath(parentFd, name);
    if (fd < 0) return Decline();
    struct stat st;
    if (!Identify(fd, &out->inode, &st)) {
      close(fd);
      return Decline();
    }
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    uint64_t nodeid = AddNewInode(out->inode);
    WriteEntryReply(c, h, nodeid, 0, st, out);
    out->kind = ServedKind::kNewInode;
    out->own = OwnRecord::kAddInode;
    lookupsNew_++;
    return true;
  }

  // An O_PATH fd of `name` beneath `parentFd`, as a lookup opens it (worker/fs/inodes.ts
  // lookupChild: RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS, no symlink followed), or -1.
  static int OpenPathBeneath(int parentFd, const char* name) {
    open_how how;
    std::memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    long r;
    do {
      r = syscall(SYS_openat2, parentFd, name, &how, sizeof how);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -1 : static_cast<int>(r);
  }

  // A new inode's identity from its O_PATH fd `fd` (worker/fs/inodes.ts adopt): its attributes
  // (*st), (dev, ino), type and file handle, which must be on the shared directory's mount. False
  // when a syscall fails, the handle is on another mount or too long, or the session knows the
  // (dev, ino) already.
  bool Identify(int fd, NewInode* n, struct stat* st) const {
    return IdentifyAt(fd, "", AT_EMPTY_PATH, fd, n, st);
  }

  // The same read by name under `dirFd`, nothing opened (worker/fs/inodes.ts listedByHandle:
  // fstatat and name_to_handle_at of the name): n->fd is -1. The two read the name twice; a
  // host that swaps it between them leaves an inode whose handle is not its (dev, ino), which
  // opens as ESTALE (every open by handle is checked against the recorded number), never as
  // another file.
  bool IdentifyByName(int dirFd, const char* name, NewInode* n, struct stat* st) const {
    return IdentifyAt(dirFd, name, 0, -1, n, st);
  }

  bool IdentifyAt(int at, const char* name, int emptyPath, int fd, NewInode* n, struct stat* st) const {
    HandleBuffer h;
    file_handle& fh = h.u.fh;
    int mountId = 0;
    if (fstatat(at, name, st, emptyPath | AT_SYMLINK_NOFOLLOW) != 0 || byDevIno_.count(DevIno{st->st_dev, st->st_ino}) != 0 ||
        name_to_handle_at(at, name, &fh, &mountId, emptyPath) != 0 || mountId != handleMountId_ ||
        fh.handle_bytes > sizeof n->handle)
      return false;
    n->fd = fd;
    n->fileType = st->st_mode & S_IFMT;
    n->dev = st->st_dev;
    n->ino = st->st_ino;
    n->mountId = mountId;
    n->handleType = fh.handle_type;
    n->handleLen = fh.handle_bytes;
    std::memcpy(n->handle, fh.f_handle, n->handleLen);
    return true;
  }

  // The identified inode takes the session's next nodeid and joins the tables (its fd too, if
  // it has one).
  uint64_t AddNewInode(const NewInode& n) {
    uint64_t nodeid = nextNodeId_++;
    InodeMeta m{};
    m.dev = n.dev;
    m.ino = n.ino;
    m.generation = 0;
    m.fileType = n.fileType;
    m.hasHandle = true;
    m.mountId = n.mountId;
    m.handleType = n.handleType;
    m.handle.assign(n.handle, n.handle + n.handleLen);
    meta_[nodeid] = std::move(m);
    byDevIno_[DevIno{n.dev, n.ino}] = nodeid;
    if (n.fd >= 0) inodes_[nodeid] = n.fd;
    return nodeid;
  }

  // CREATE of a name that does not exist (worker/fs/passthrough.ts create and adoptOpened:
  // openat2 with O_CREAT|O_EXCL|O_NOFOLLOW beneath the parent, RESOLVE_NO_SYMLINKS, the
  // caller's fs ids and umask 0 (FUSE_DONT_MASK is never granted: the guest masked the mode);
  // the O_PATH fd reopened from the new file's fd, its identity and handle), as the session's
  // next nodeid and fh. Not idempotent: the intent is journaled first (WriteIntent), the
  // outcome by JavaScript, which adds the inode and registers the file as for a LOOKUP that
  // added one and an OPEN. Declined, with nothing done: no create policy or no handles, a
  // read-only export, a name TypeScript refuses or that exists (EEXIST, or an open of what is
  // there: TypeScript's), no room for an fh or in the journal, an fs id that does not take, and
  // every error of the create itself (TypeScript gives the errno). Once the file exists this
  // is answered here, unless its identity cannot be taken (another mount, a (dev, ino) the
  // session knows): then the file is removed again and TypeScript runs the request.
  bool Create(const Chain& c, const fuse_in_header& h, const uint8_t* args, size_t len, Served* out) {
    constexpr size_t kReply = kOutHeader + sizeof(fuse_entry_out) + sizeof(fuse_open_out);
    static_assert(kReply <= sizeof(Served::reply), "CREATE's reply fits Served::reply");
    fuse_create_in ci;
    const char* name;
    int parentFd;
    if (!openPolicySet_ || nextFh_ == 0 || nextFh_ >= kMaxSafeU || openRoom_ < 1 ||
        !CanMakeNew(c, h, args, len, kReply, &ci, &name, &parentFd))
      return Decline();
    struct stat st;
    if (fstatat(parentFd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT) return Decline();
    uint32_t flags = OpenFlags(ci.flags);
    double tsMs;
    EnsureUmaskZero();
    open_how how;
    std::memset(&how, 0, sizeof how);
    how.flags = flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    how.mode = ci.mode & 07777;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS;
    long r = -1;
    int err = 0;
    if (!IntendThenRunAs(c, h, &tsMs, [&] {
          do {
            r = syscall(SYS_openat2, parentFd, name, &how, sizeof how);
          } while (r < 0 && errno == EINTR);
          err = r < 0 ? errno : 0;
        }))
      return Decline();
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    // A name made meanwhile may be opened instead (no O_EXCL asked), and fds may be given back:
    // TypeScript's. Any other errno is its answer too, given here.
    if (err == EEXIST || err == EMFILE || err == ENFILE) return Decline();
    if (err != 0) return ReplyIntendedError(c, h, err, tsMs, out);
    const int file = static_cast<int>(r);
    int pathFd = Reopen(file, O_PATH);
    struct stat fst;
    if (pathFd < 0 || !Identify(pathFd, &out->inode, &fst)) {
      if (pathFd >= 0) close(pathFd);
      close(file);
      unlinkat(parentFd, name, 0);
      return Decline();
    }
    uint64_t nodeid = AddNewInode(out->inode);
    flags &= ~static_cast<uint32_t>(O_TRUNC);
    uint64_t fh = TakeFh();
    files_[fh] = FileEntry{file, nodeid, static_cast<int>(flags)};
    uint8_t* reply = out->reply;
    std::memset(reply, 0, kReply);
    fuse_out_header oh{static_cast<uint32_t>(kReply), 0, h.unique};
    std::memcpy(reply, &oh, sizeof oh);
    fuse_entry_out e;
    FillEntry(nodeid, 0, fst, &e);
    std::memcpy(reply + kOutHeader, &e, sizeof e);
    fuse_open_out o{};
    o.fh = fh;
    o.open_flags = openReplyFlags_;
    std::memcpy(reply + kOutHeader + sizeof e, &o, sizeof o);
    ScatterSegments(c.writable, 0, reply, kReply);
    out->usedLen = out->replyLen = kReply;
    out->needsRecord = true;
    out->nodeid = nodeid;
    out->kind = ServedKind::kCreated;
    out->own = OwnRecord::kCreated;
    out->file = OpenedFile{file, fh, flags};
    out->intentTsMs = tsMs;
    creates_++;
    return true;
  }

  // MKDIR (worker/fs/passthrough.ts mkdir: mkdirat with the caller's fs ids and umask 0, then
  // lookupChild: openat2 O_PATH beneath the parent, the new dir's identity and handle), as the
  // session's next nodeid; the intent first, as CREATE's. Declined, with nothing done, as
  // CREATE; mkdirat's errno is the answer (TypeScript's too, EEXIST included); a dir made whose
  // identity cannot be taken is removed again and TypeScript runs the request.
  bool Mkdir(const Chain& c, const fuse_in_header& h, const uint8_t* args, size_t len, Served* out) {
    fuse_mkdir_in mi;
    const char* name;
    int parentFd;
    if (!CanMakeNew(c, h, args, len, kOutHeader + sizeof(fuse_entry_out), &mi, &name, &parentFd)) return Decline();
    double tsMs;
    EnsureUmaskZero();
    int r = -1, err = 0;
    if (!IntendThenRunAs(c, h, &tsMs, [&] {
          do {
            r = mkdirat(parentFd, name, mi.mode & 07777);
          } while (r != 0 && errno == EINTR);
          err = r == 0 ? 0 : errno;
        }))
      return Decline();
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    if (err != 0) return ReplyIntendedError(c, h, err, tsMs, out);
    int fd = OpenPathBeneath(parentFd, name);
    struct stat st;
    if (fd < 0 || !Identify(fd, &out->inode, &st) || out->inode.fileType != S_IFDIR) {
      if (fd >= 0) close(fd);
      unlinkat(parentFd, name, AT_REMOVEDIR);
      return Decline();
    }
    uint64_t nodeid = AddNewInode(out->inode);
    WriteEntryReply(c, h, nodeid, 0, st, out);
    out->kind = ServedKind::kMadeDir;
    out->own = OwnRecord::kAddInode;
    out->intentTsMs = tsMs;
    mkdirs_++;
    return true;
  }

  // What CREATE and MKDIR need before anything is written: the policy (umask 0), handles and a
  // nodeid to take, a writable export, room for the reply of `replyLen`, their args (*in), a
  // plain NUL-terminated name after them (*name) and a parent directory in the table (*parentFd).
  template <typename In>
  bool CanMakeNew(const Chain& c, const fuse_in_header& h, const uint8_t* args, size_t len, size_t replyLen, In* in,
                  const char** name, int* parentFd) const {
    if (!createPolicy_ || readonly_ || handleMountId_ < 0 || nextNodeId_ == 0 || nextNodeId_ >= kMaxSafeU || c.writableLen < replyLen)
      return false;
    if (len < sizeof *in + 2 || args[len - 1] != 0) return false;
    std::memcpy(in, args, sizeof *in);
    *name = reinterpret_cast<const char*>(args + sizeof *in);
    return PlainName(*name, len - sizeof *in - 1) && ParentDir(h.nodeid, parentFd);
  }

  // The fd of the directory `nodeid` names (in the table, of type S_IFDIR).
  bool ParentDir(uint64_t nodeid, int* fd) const {
    auto parent = inodes_.find(nodeid);
    auto meta = meta_.find(nodeid);
    if (parent == inodes_.end() || meta == meta_.end() || meta->second.fileType != S_IFDIR) return false;
    *fd = parent->second;
    return true;
  }

  // The process umask is 0 before the first creation here (process-wide; the worker's own files
  // are created 0600 explicitly), as worker/fs/credentials.ts runAs sets it without
  // FUSE_DONT_MASK.
  void EnsureUmaskZero() {
    if (umaskZero_) return;
    umask(0);
    umaskZero_ = true;
  }

  // Journals the request's intent, then runs `fn` (its syscall) with the caller's fs ids: false,
  // with nothing done, when an id does not take or the intent cannot be written. (A crash point
  // armed after the intent runs with those ids: tests only.)
  template <typename Fn>
  bool IntendThenRunAs(const Chain& c, const fuse_in_header& h, double* tsMs, Fn fn) {
    bool intended = false;
    bool took = RunAs(h.uid, h.gid, [&] {
      if (!WriteIntent(c, h.opcode, tsMs)) return;
      intended = true;
      CrashPoint(NativeCrashPoint::kAfterIntent, h.opcode);
      fn();
    });
    return took && intended;
  }

  // The errno reply of a CREATE or MKDIR whose intent is journaled.
  bool ReplyIntendedError(const Chain& c, const fuse_in_header& h, int err, double tsMs, Served* out) {
    WriteIntendedReply(c, h, err, tsMs, out);
    intentErrors_++;
    return true;
  }

  // The header-only reply (errno `err`, 0: success) of a request whose intent is journaled: its
  // outcome is JavaScript's to journal, as of any reply (kIntended).
  void WriteIntendedReply(const Chain& c, const fuse_in_header& h, int err, double tsMs, Served* out) const {
    WriteEmptyReply(c, h, out, err);
    out->kind = ServedKind::kIntended;
    out->own = OwnRecord::kOutcome;
    out->intentTsMs = tsMs;
  }

  // Whether `name` (n bytes) is one plain path component: not empty, '.' or '..', no '/' or NUL
  // (worker/fs/path_component.ts checkComponent for names that create or remove).
  static bool PlainName(const char* name, size_t n) {
    if (n == 0 || std::memchr(name, 0, n) != nullptr || std::memchr(name, '/', n) != nullptr) return false;
    return !((n == 1 && name[0] == '.') || (n == 2 && name[0] == '.' && name[1] == '.'));
  }

  // The open(2) flags of an OPEN's or CREATE's request flags (worker/fs/passthrough.ts
  // openFlags): those passed on, and under the writeback cache O_WRONLY as O_RDWR, no O_APPEND.
  uint32_t OpenFlags(uint32_t requested) const {
    uint32_t flags = requested & openPassFlags_;
    if (writeback_) {
      if ((flags & O_ACCMODE) == O_WRONLY) flags = (flags & ~static_cast<uint32_t>(O_ACCMODE)) | O_RDWR;
      flags &= ~static_cast<uint32_t>(O_APPEND);
    }
    return flags;
  }

  // OPEN of a regular file named by a file handle, with its O_PATH fd in the table
  // (worker/fs/passthrough.ts open: the flags it passes on, the fd reopened through
  // /proc/self/fd with our own ids). The fh is the session's next one (JavaScript adds the file
  // with it before anything else takes one, as for LookupNew's nodeid) and its fd goes to the
  // file table at once; JavaScript registers the fd (reopenable: it reaches the keeper after
  // the publish) and journals the openFile before the reply is published. Declined: no policy
  // or fh yet, the fd budget used up (setOpenRoom), an inode without a handle (its file fd goes
  // to the keeper before the reply: TypeScript's), O_TRUNC (not run twice), a read-only export
  // with write access, any syscall error (TypeScript gives the errno).
  bool Open(const Chain& c, const fuse_in_header& h, const uint8_t* args, Served* out) {
    fuse_open_in o;
    std::memcpy(&o, args, sizeof o);
    int pathFd;
    if (!CanOpen(c, h, S_IFREG, &pathFd)) return Decline();
    uint32_t flags = OpenFlags(o.flags);
    if ((flags & O_TRUNC) != 0 || (readonly_ && (flags & O_ACCMODE) != O_RDONLY)) return Decline();
    int file = Reopen(pathFd, flags & ~static_cast<uint32_t>(O_NOFOLLOW));
    if (file < 0) return Decline();
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    uint64_t fh = TakeFh();
    files_[fh] = FileEntry{file, h.nodeid, static_cast<int>(flags)};
    WriteOpenReply(c, h, fh, openReplyFlags_, out);
    out->kind = ServedKind::kOpened;
    out->own = OwnRecord::kOpenFile;
    out->file = OpenedFile{file, fh, flags};
    opens_++;
    return true;
  }

  // What OPEN and OPENDIR need before they open anything: a policy, an fh to take, room in the
  // fd budget, room for the reply, and an inode of `fileType` named by a handle whose O_PATH
  // fd is in the table (*pathFd).
  bool CanOpen(const Chain& c, const fuse_in_header& h, uint32_t fileType, int* pathFd) const {
    if (!openPolicySet_ || nextFh_ == 0 || nextFh_ >= kMaxSafeU || openRoom_ < 1 ||
        c.writableLen < kOutHeader + sizeof(fuse_open_out))
      return false;
    auto fd = inodes_.find(h.nodeid);
    auto meta = meta_.find(h.nodeid);
    if (fd == inodes_.end() || meta == meta_.end() || meta->second.fileType != fileType || !meta->second.hasHandle) return false;
    *pathFd = fd->second;
    return true;
  }

  // The inode's O_PATH fd reopened with `flags` through /proc/self/fd (worker/fs/inodes.ts
  // reopen), or -1.
  int Reopen(int pathFd, uint32_t flags) const {
    ProcFdName p(procFdDir_, pathFd);
    int fd;
    do {
      fd = openat(p.dir, p.name, static_cast<int>(flags) | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd;
  }

  // The session's next fh, taken by an OPEN or OPENDIR with one fd of the budget's room.
  uint64_t TakeFh() {
    openRoom_--;
    settled_ = false;  // the new fd reaches the keeper after the publish
    return nextFh_++;
  }

  // The fuse_open_out reply of OPEN and OPENDIR, in out->reply and the guest's buffers; the
  // request needs its journal record (the session's new fh).
  void WriteOpenReply(const Chain& c, const fuse_in_header& h, uint64_t fh, uint32_t openFlags, Served* out) const {
    constexpr size_t kReply = kOutHeader + sizeof(fuse_open_out);
    uint8_t* reply = out->reply;
    std::memset(reply, 0, kReply);
    fuse_out_header oh{static_cast<uint32_t>(kReply), 0, h.unique};
    std::memcpy(reply, &oh, sizeof oh);
    fuse_open_out r{};
    r.fh = fh;
    r.open_flags = openFlags;
    std::memcpy(reply + kOutHeader, &r, sizeof r);
    ScatterSegments(c.writable, 0, reply, kReply);
    out->usedLen = out->replyLen = kReply;
    out->needsRecord = true;
    out->nodeid = h.nodeid;
  }

  // OPENDIR of a directory named by a file handle, with its O_PATH fd in the table
  // (worker/fs/passthrough.ts opendir: reopened O_RDONLY|O_DIRECTORY through /proc/self/fd,
  // whatever flags the request has), as OPEN: the session's next fh, the fd budget's room,
  // JavaScript registers the fd (reopenable: a dir's position is its journaled cookie) and
  // journals the openDir. The dir's fd goes to the dir table, which only RELEASEDIR uses.
  bool Opendir(const Chain& c, const fuse_in_header& h, Served* out) {
    int pathFd;
    if (!CanOpen(c, h, S_IFDIR, &pathFd)) return Decline();
    constexpr uint32_t kFlags = O_RDONLY | O_DIRECTORY;
    int dir = Reopen(pathFd, kFlags);
    if (dir < 0) return Decline();
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    uint64_t fh = TakeFh();
    dirs_[fh] = DirEntry{dir, h.nodeid};
    WriteOpenReply(c, h, fh, dirReplyFlags_, out);
    out->kind = ServedKind::kOpenedDir;
    out->own = OwnRecord::kOpenDir;
    out->file = OpenedFile{dir, fh, kFlags};
    opendirs_++;
    return true;
  }

  // RELEASEDIR of a dir in the dir table: as Release, the release itself is JavaScript's.
  bool Releasedir(const Chain& c, const fuse_in_header& h, const uint8_t* args, Served* out) {
    fuse_release_in r;
    std::memcpy(&r, args, sizeof r);
    if (r.fh >= kMaxSafeU || c.writableLen < kOutHeader) return Decline();
    auto it = dirs_.find(r.fh);
    if (it == dirs_.end() || it->second.nodeid != h.nodeid) return Decline();
    OpenedFile gone{it->second.fd, r.fh, 0};
    dirs_.erase(it);
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    WriteEmptyReply(c, h, out);
    out->kind = ServedKind::kReleasedDir;
    out->file = gone;
    releasedirs_++;
    return true;
  }

  // A reply of the out header alone (RELEASE, RELEASEDIR; an errno `err`), journaled.
  void WriteEmptyReply(const Chain& c, const fuse_in_header& h, Served* out, int err = 0) const {
    fuse_out_header oh{static_cast<uint32_t>(kOutHeader), -err, h.unique};
    std::memcpy(out->reply, &oh, sizeof oh);
    ScatterSegments(c.writable, 0, out->reply, kOutHeader);
    out->usedLen = out->replyLen = kOutHeader;
    out->needsRecord = true;
    out->nodeid = h.nodeid;
  }

  // RELEASE of an open file in the table: it leaves the table now (nothing here uses its fd
  // again) and JavaScript does the release itself before the reply is published
  // (worker/fs/passthrough.ts release: its locks, the session's closeFile, the fd closed or
  // handed back to the keeper), so this only saves the parsing and the reply. Its outcome is
  // journaled like TypeScript's: a resubmission gets the recorded reply.
  bool Release(const Chain& c, const fuse_in_header& h, const uint8_t* args, Served* out) {
    fuse_release_in r;
    std::memcpy(&r, args, sizeof r);
    if (r.fh >= kMaxSafeU || c.writableLen < kOutHeader) return Decline();
    FileEntry* f = FileFor(r.fh, h.nodeid);
    if (f == nullptr) return Decline();
    OpenedFile gone{f->fd, r.fh, static_cast<uint32_t>(f->flags)};
    files_.erase(r.fh);
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    WriteEmptyReply(c, h, out);
    out->kind = ServedKind::kReleased;
    out->file = gone;
    releases_++;
    return true;
  }

  // UNLINK (flags 0) and RMDIR (AT_REMOVEDIR) of a plain name in a directory whose fd is in the
  // table (worker/fs/passthrough.ts unlink and rmdir: the keeper holds every open fd first, then
  // unlinkat). The intent is journaled before the syscall (WriteIntent) and the outcome by
  // JavaScript before the publish, so a successor that finds the intent without an outcome
  // settles ENOENT as done (worker/fuse/exactly_once.ts). The syscall's errno is the answer, as
  // TypeScript's. Declined: a read-only export, a name TypeScript refuses ('.', '..', empty, a
  // '/' or NUL in it), no journal or no room in it, an open fd the keeper may not hold yet
  // (setSettled; a file this batch opened), and nothing has happened then.
  bool Remove(const Chain& c, const fuse_in_header& h, const uint8_t* args, size_t len, int flags, Served* out) {
    if (readonly_ || !settled_ || len < 2 || args[len - 1] != 0 || c.writableLen < kOutHeader) return Decline();
    const char* name = reinterpret_cast<const char*>(args);
    if (!PlainName(name, len - 1)) return Decline();
    int parentFd;
    if (!ParentDir(h.nodeid, &parentFd)) return Decline();
    double tsMs;
    if (!WriteIntent(c, h.opcode, &tsMs)) return Decline();
    CrashPoint(NativeCrashPoint::kAfterIntent, h.opcode);
    int r;
    do {
      r = unlinkat(parentFd, name, flags);
    } while (r != 0 && errno == EINTR);
    int err = r == 0 ? 0 : errno;
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    WriteIntendedReply(c, h, err, tsMs, out);
    (flags == 0 ? unlinks_ : rmdirs_)++;
    return true;
  }

  // Journals the intent of the chain's request and commits it (a release store of the commit
  // offset, as the journal's own commit): appended at the committed end, which is the end of
  // what JavaScript wrote (it stages records only inside one synchronous group commit, never
  // across a pop; worker/state/journal.ts takes our records as committed before its next
  // ones). False, with nothing written, without a journal or room in its mapping.
  bool WriteIntent(const Chain& c, uint32_t opcode, double* tsMs) {
    if (unjournaled_) {
      *tsMs = 0;
      return true;
    }
    if (journal_ == nullptr) return false;
    char key[kMaxKey];
    int keyLen = RequestKey(c.queue, c.head, c.counter, key);
    if (keyLen < 0) return false;
    const size_t payload = 1 + 1 + static_cast<size_t>(keyLen) + 4 + 8 + 4;
    uint64_t* commit = reinterpret_cast<uint64_t*>(journal_ + kJournalCommitAt);
    uint64_t end = __atomic_load_n(commit, __ATOMIC_ACQUIRE);
    if (end < kJournalDataStart || end > journalLen_ || journalLen_ - end < kJournalRecordHeader + payload) return false;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    *tsMs = static_cast<double>(now.tv_sec) * 1000 + static_cast<double>(now.tv_nsec / 1000000);
    uint8_t* rec = journal_ + end;
    uint8_t* q = PutRecordKey(rec, kTagIntent, key, keyLen);
    Store(q, opcode);
    Store(q + 4, *tsMs);
    Store(q + 12, uint32_t{0});
    SealRecord(rec, payload);
    __atomic_store_n(commit, end + kJournalRecordHeader + payload, __ATOMIC_RELEASE);
    intents_++;
    return true;
  }

  // A journal record's payload start at `rec` (after its length and CRC): the tag and the
  // request's key as records.ts putStr writes it; returns where the payload goes on.
  static uint8_t* PutRecordKey(uint8_t* rec, uint8_t tag, const char* key, int keyLen) {
    uint8_t* p = rec + kJournalRecordHeader;
    p[0] = tag;
    p[1] = static_cast<uint8_t>(keyLen);
    std::memcpy(p + 2, key, static_cast<size_t>(keyLen));
    return p + 2 + keyLen;
  }

  // The record's header: its payload's length and CRC-32 (journal.ts stage).
  static void SealRecord(uint8_t* rec, size_t payload) {
    Store(rec, static_cast<uint32_t>(payload));
    Store(rec + 4, Crc32(rec + kJournalRecordHeader, payload));
  }

  // worker/fuse/exactly_once.ts requestKey: "queue.head.counter"; its length, or -1.
  static int RequestKey(uint32_t queue, uint32_t head, uint64_t counter, char (&key)[kMaxKey]) {
    int n = snprintf(key, sizeof key, "%u.%u.%llu", static_cast<unsigned>(queue), static_cast<unsigned>(head),
                     static_cast<unsigned long long>(counter));
    return n <= 0 || static_cast<size_t>(n) >= sizeof key ? -1 : n;
  }

  // Journals each request's outcome (the record worker/state/records.ts putOutcome writes: tag,
  // key, opcode, the reply, its session mutations) after the committed end and commits them
  // with one release store, as JavaScript's group commit (worker/state/request_log.ts
  // commitStaged) would have. The mutations are what TypeScript's session would emit for the
  // request: none (Served::own kOutcome), addLookup(nodeid, 1) for a LOOKUP of a known inode, or
  // the addInode with its handle (addInodeHandle) of a LOOKUP's new inode, the lookup count of 1
  // implied. Consecutive LOOKUPs of known inodes go into one TAG_LOOKUPS record instead, as the
  // request log writes them (setLookupsRecords: not while a drain leaves a file for an older
  // build), the header's schema raised first as journal.ts raiseSchema does. UNLINK and RMDIR
  // are served only while the keeper holds every fd (settled_), so the fd store JavaScript's
  // barrier would wait for is done (the op-after-fdstore point, for tests); a LOOKUP's new
  // inode is named by its handle and needs no fd in the keeper.
  bool JournalOutcomes(uint32_t queue, const std::vector<PlainOutcome>& outcomes) override {
    if (unjournaled_) {
      ownOutcomes_ += outcomes.size();
      return true;
    }
    if (journal_ == nullptr || outcomes.empty() || queue > 0xffff) return false;
    uint64_t* commit = reinterpret_cast<uint64_t*>(journal_ + kJournalCommitAt);
    const uint64_t start = __atomic_load_n(commit, __ATOMIC_ACQUIRE);
    if (start < kJournalDataStart || start > journalLen_) return false;
    char key[kMaxKey];
    uint64_t need = 0;
    bool lookups = false;
    for (size_t i = 0; i < outcomes.size();) {
      size_t run = LookupRun(outcomes, i);
      if (run > 0) {
        need += kJournalRecordHeader + LookupsPayload(outcomes, i, run);
        lookups = true;
        i += run;
        continue;
      }
      const PlainOutcome& o = outcomes[i++];
      int keyLen = RequestKey(queue, o.head, o.counter, key);
      uint32_t count;
      size_t mutations;
      if (keyLen < 0 || !MutationsOf(o, &count, &mutations)) return false;
      need += kJournalRecordHeader + OutcomePayload(keyLen, o.replyLen, mutations);
    }
    if (journalLen_ - start < need) return false;
    for (const PlainOutcome& o : outcomes) CrashPoint(NativeCrashPoint::kAfterFdstore, o.opcode);
    if (lookups && Load<uint32_t>(journal_ + kJournalSchemaAt) < kLookupsSchema) {
      // Before the record, as raiseSchema: a reader that sees it sees the header say so.
      Store(journal_ + kJournalSchemaAt, kLookupsSchema);
      Store(journal_ + kJournalMinReaderAt, kLookupsSchema);
    }
    uint64_t end = start;
    for (size_t i = 0; i < outcomes.size();) {
      uint8_t* rec = journal_ + end;
      size_t payload;
      size_t run = LookupRun(outcomes, i);
      if (run > 0) {
        payload = PutLookups(queue, outcomes, i, run, rec + kJournalRecordHeader);
        i += run;
      } else {
        const PlainOutcome& o = outcomes[i++];
        int keyLen = RequestKey(queue, o.head, o.counter, key);
        uint32_t count;
        size_t mutations;
        MutationsOf(o, &count, &mutations);
        payload = OutcomePayload(keyLen, o.replyLen, mutations);
        uint8_t* q = PutRecordKey(rec, kTagOutcome, key, keyLen);
        Store(q, o.opcode);
        Store(q + 4, o.replyLen);
        std::memcpy(q + 8, o.reply, o.replyLen);
        q += 8 + o.replyLen;
        Store(q, count);
        PutMutations(o, q + 4);
      }
      SealRecord(rec, payload);
      end += kJournalRecordHeader + payload;
    }
    __atomic_store_n(commit, end, __ATOMIC_RELEASE);
    ownOutcomes_ += outcomes.size();
    for (const PlainOutcome& o : outcomes) CrashPoint(NativeCrashPoint::kAfterOutcome, o.opcode);
    return true;
  }

  // How many LOOKUPs of known inodes start at outcomes[i] that one TAG_LOOKUPS record takes (0:
  // none, or such records are off).
  size_t LookupRun(const std::vector<PlainOutcome>& outcomes, size_t i) const {
    if (!lookupsRecords_) return 0;
    size_t n = 0;
    while (i + n < outcomes.size() && n < 0xffff) {
      const PlainOutcome& o = outcomes[i + n];
      if (o.own != OwnRecord::kAddLookup || o.head > 0xffff || o.replyLen > 0xffff || o.replyLen < kOutHeader + 8) break;
      n++;
    }
    return n;
  }

  // records.ts putLookups: tag, u16 queue, u16 count, then per LOOKUP u16 head, u64 counter, u16
  // reply length, the reply (whose nodeid the loader counts one more lookup of).
  static size_t LookupsPayload(const std::vector<PlainOutcome>& outcomes, size_t i, size_t run) {
    size_t n = 1 + 2 + 2;
    for (size_t k = i; k < i + run; k++) n += 2 + 8 + 2 + outcomes[k].replyLen;
    return n;
  }

  static size_t PutLookups(uint32_t queue, const std::vector<PlainOutcome>& outcomes, size_t i, size_t run, uint8_t* p) {
    uint8_t* start = p;
    p[0] = kTagLookups;
    Store(p + 1, static_cast<uint16_t>(queue));
    Store(p + 3, static_cast<uint16_t>(run));
    p += 5;
    for (size_t k = i; k < i + run; k++) {
      const PlainOutcome& o = outcomes[k];
      Store(p, static_cast<uint16_t>(o.head));
      Store(p + 2, o.counter);
      Store(p + 10, static_cast<uint16_t>(o.replyLen));
      std::memcpy(p + 12, o.reply, o.replyLen);
      p += 12 + o.replyLen;
    }
    return static_cast<size_t>(p - start);
  }

  // An outcome record's payload: tag, key (u8 length + bytes), opcode, reply length, the reply,
  // the mutation count and the mutations.
  static size_t OutcomePayload(int keyLen, uint32_t replyLen, size_t mutations) {
    return 1 + 1 + static_cast<size_t>(keyLen) + 4 + 4 + replyLen + 4 + mutations;
  }

  static constexpr size_t kNoMutation = SIZE_MAX;
  // records.ts mutation kinds (MUTATION_KINDS' order).
  static constexpr uint8_t kMutationAddLookup = 1;
  static constexpr uint8_t kMutationForget = 2;
  static constexpr uint8_t kMutationOpenFile = 3;
  static constexpr uint8_t kMutationOpenDir = 5;
  static constexpr uint8_t kMutationSetDirPosition = 6;
  static constexpr uint8_t kMutationAddInodeHandle = 11;
  static constexpr size_t kCountMutationBytes = 1 + 8 + 8;  // addLookup, forget
  static constexpr size_t kAddInodeBytes = 1 + 8 + 8 + 8 + 4 + 4 + 8 + 4 + 1;  // and the handle

  // The outcome's mutations as records.ts putMutation writes them: how many and their bytes,
  // or false when they cannot be written (TypeScript journals the batch then): an id past
  // 2^53, a handle records.ts would refuse, a READDIRPLUS reply whose entries do not match its
  // new inodes.
  static bool MutationsOf(const PlainOutcome& o, uint32_t* count, size_t* bytes) {
    *count = 0;
    *bytes = 0;
    return WalkMutations(o, [&](uint8_t, size_t size, auto&&) {
      (*count)++;
      *bytes += size;
    });
  }

  static void PutMutations(const PlainOutcome& o, uint8_t* p) {
    WalkMutations(o, [&](uint8_t kind, size_t size, auto&& fill) {
      p[0] = kind;
      fill(p + 1);
      p += size;
    });
  }

  // Calls emit(kind, bytes, fill) for each of the outcome's mutations in order; fill(p) writes
  // its fields after the kind byte. False: one cannot be written (see MutationsOf).
  template <typename Emit>
  static bool WalkMutations(const PlainOutcome& o, Emit&& emit) {
    switch (o.own) {
      case OwnRecord::kOutcome:
        return true;
      case OwnRecord::kAddLookup:
        return EmitCount(kMutationAddLookup, o.nodeid, 1, emit);
      case OwnRecord::kAddInode:
        return EmitNewInode(o.nodeid, o.newInode, emit);
      case OwnRecord::kForgets:
        for (uint32_t i = 0; i < o.itemCount; i++) {
          uint64_t nlookup = Load<uint64_t>(o.items + 16 * i + 8);
          // As native_ring.ts reads the pairs: a count past 2^53-1 means as much as 2^53-1.
          if (!EmitCount(kMutationForget, Load<uint64_t>(o.items + 16 * i), std::min<uint64_t>(nlookup, kMaxSafeU), emit)) return false;
        }
        return true;
      case OwnRecord::kDirEntries:
        return WalkDirEntries(o, emit);
      case OwnRecord::kCreated:
        return EmitNewInode(o.nodeid, o.newInode, emit) && EmitOpen(kMutationOpenFile, o, emit);
      case OwnRecord::kOpenFile:
        return EmitOpen(kMutationOpenFile, o, emit);
      case OwnRecord::kOpenDir:
        return EmitOpen(kMutationOpenDir, o, emit);
      default:
        return false;
    }
  }

  // A READDIRPLUS's mutations as passthrough.ts readdirplusServed makes them: per entry of the
  // reply, its new inode (the next of `items` whose nodeid it names) or one more lookup (not
  // '.', '..': nodeid 0); then the dir's position (always: the same state when unchanged).
  template <typename Emit>
  static bool WalkDirEntries(const PlainOutcome& o, Emit&& emit) {
    uint32_t next = 0;
    for (size_t at = kOutHeader; at < o.replyLen;) {
      if (at + kDirentPlusName > o.replyLen) return false;
      uint64_t nodeid = Load<uint64_t>(o.reply + at);
      uint32_t nameLen = Load<uint32_t>(o.reply + at + sizeof(fuse_entry_out) + 16);
      const uint8_t* added = o.items + static_cast<size_t>(next) * kDirNewInodeBytes;
      if (next < o.itemCount && static_cast<uint64_t>(Load<double>(added)) == nodeid) {
        if (!EmitNewInode(nodeid, added + 8, emit)) return false;
        next++;
      } else if (nodeid != 0 && !EmitCount(kMutationAddLookup, nodeid, 1, emit)) {
        return false;
      }
      at += (kDirentPlusName + nameLen + 7) & ~size_t{7};
    }
    if (next != o.itemCount || o.fh == 0 || o.fh >= kMaxSafeU) return false;
    char position[24];
    int len = snprintf(position, sizeof position, "%lld", static_cast<long long>(o.position));
    if (len <= 0 || static_cast<size_t>(len) >= sizeof position) return false;
    emit(kMutationSetDirPosition, 1 + 8 + 1 + static_cast<size_t>(len), [&](uint8_t* p) {
      Store(p, static_cast<double>(o.fh));
      p[8] = static_cast<uint8_t>(len);
      std::memcpy(p + 9, position, static_cast<size_t>(len));
    });
    return true;
  }

  // openFile (f64 fh, f64 nodeid, f64 open flags) or openDir (f64 fh, f64 nodeid).
  template <typename Emit>
  static bool EmitOpen(uint8_t kind, const PlainOutcome& o, Emit&& emit) {
    if (o.fh == 0 || o.fh >= kMaxSafeU || o.nodeid == 0 || o.nodeid >= kMaxSafeU) return false;
    emit(kind, kind == kMutationOpenFile ? 1 + 8 + 8 + 8 : 1 + 8 + 8, [&](uint8_t* p) {
      Store(p, static_cast<double>(o.fh));
      Store(p + 8, static_cast<double>(o.nodeid));
      if (kind == kMutationOpenFile) Store(p + 16, static_cast<double>(o.openFlags));
    });
    return true;
  }

  // addLookup or forget: f64 nodeid, f64 count.
  template <typename Emit>
  static bool EmitCount(uint8_t kind, uint64_t nodeid, uint64_t count, Emit&& emit) {
    if (nodeid == 0 || nodeid >= kMaxSafeU || count == 0 || count > kMaxSafeU) return false;
    emit(kind, kCountMutationBytes, [&](uint8_t* p) {
      Store(p, static_cast<double>(nodeid));
      Store(p + 8, static_cast<double>(count));
    });
    return true;
  }

  // addInodeHandle of a new inode laid out as PutNewInode writes it (i32 fd, u32 file type, u64
  // dev, u64 ino, i32 mount id, i32 handle type, u32 handle length, padding, the handle): f64
  // nodeid, u64 dev, u64 ino, u32 generation (0, as inodes.ts adds an inode), u32 file type,
  // u64 mount id, i32 handle type, u8 handle length, the handle.
  template <typename Emit>
  static bool EmitNewInode(uint64_t nodeid, const uint8_t* n, Emit&& emit) {
    int32_t mountId = Load<int32_t>(n + 24);
    uint32_t handleLen = Load<uint32_t>(n + 32);
    if (nodeid == 0 || nodeid >= kMaxSafeU || mountId < 0 || handleLen == 0 || handleLen > sizeof(NewInode::handle)) return false;
    emit(kMutationAddInodeHandle, kAddInodeBytes + handleLen, [&](uint8_t* p) {
      Store(p, static_cast<double>(nodeid));
      std::memcpy(p + 8, n + 8, 16);  // dev, ino
      Store(p + 24, uint32_t{0});
      std::memcpy(p + 28, n + 4, 4);  // file type
      Store(p + 32, static_cast<uint64_t>(mountId));
      std::memcpy(p + 40, n + 28, 4);  // handle type
      p[44] = static_cast<uint8_t>(handleLen);
      std::memcpy(p + 45, n + 40, handleLen);
    });
    return true;
  }

  template <typename T>
  static void Store(uint8_t* p, T v) {
    std::memcpy(p, &v, sizeof v);
  }

  // GETXATTR of a regular file or directory the session knows, with its fd in the table (see
  // the header for what is left to TypeScript).
  bool Getxattr(const Chain& c, const fuse_in_header& h, const uint8_t* args, size_t len, uint32_t* usedLen) {
    if (!xattr_ || len < sizeof(fuse_getxattr_in) + 2 || args[len - 1] != 0) return Decline();
    fuse_getxattr_in g;
    std::memcpy(&g, args, sizeof g);
    const char* name = reinterpret_cast<const char*>(args + sizeof g);
    size_t n = len - sizeof g - 1;
    if (std::memchr(name, 0, n) != nullptr || (n >= 8 && std::memcmp(name, "trusted.", 8) == 0)) return Decline();
    auto fd = inodes_.find(h.nodeid);
    auto meta = meta_.find(h.nodeid);
    if (fd == inodes_.end() || meta == meta_.end()) return Decline();
    if (meta->second.fileType != S_IFREG && meta->second.fileType != S_IFDIR) return Decline();
    size_t want = std::min<size_t>(g.size, kXattrSizeMax);
    if (c.writableLen < kOutHeader + (g.size == 0 ? sizeof(fuse_getxattr_out) : want)) return Decline();
    int file = Reopen(fd->second, O_RDONLY | O_NONBLOCK);
    if (file < 0) return Decline();
    if (want > 0 && xattrBuf_.size() < kXattrSizeMax) xattrBuf_.resize(kXattrSizeMax);
    ssize_t got = -1;
    int err = 0;
    bool took = RunAs(h.uid, h.gid, [&] {
      got = fgetxattr(file, name, want > 0 ? xattrBuf_.data() : nullptr, want);
      err = got < 0 ? errno : 0;
    });
    close(file);
    if (!took || (got < 0 && err != ENODATA && err != ERANGE)) return Decline();
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    getxattrs_++;
    if (got < 0) return ReplyError(c, h, err, usedLen);
    return ReplyXattr(c, h, g.size == 0, static_cast<size_t>(got), usedLen);
  }

  // A GETXATTR's or LISTXATTR's answer: the size alone (fuse_getxattr_out) when the guest asked
  // for it, else the `len` bytes in xattrBuf_.
  bool ReplyXattr(const Chain& c, const fuse_in_header& h, bool sizeOnly, size_t len, uint32_t* usedLen) {
    uint8_t head[kOutHeader + sizeof(fuse_getxattr_out)];
    std::memset(head, 0, sizeof head);
    if (sizeOnly) {
      fuse_out_header oh{static_cast<uint32_t>(sizeof head), 0, h.unique};
      fuse_getxattr_out o{};
      o.size = static_cast<uint32_t>(len);
      std::memcpy(head, &oh, sizeof oh);
      std::memcpy(head + kOutHeader, &o, sizeof o);
      ScatterSegments(c.writable, 0, head, sizeof head);
      *usedLen = sizeof head;
      return true;
    }
    fuse_out_header oh{static_cast<uint32_t>(kOutHeader + len), 0, h.unique};
    std::memcpy(head, &oh, sizeof oh);
    ScatterSegments(c.writable, 0, head, kOutHeader);
    ScatterSegments(c.writable, kOutHeader, xattrBuf_.data(), len);
    *usedLen = static_cast<uint32_t>(kOutHeader + len);
    return true;
  }

  // LISTXATTR of a regular file or directory whose fd is in the table (worker/fs/xattrs.ts list:
  // flistxattr of the inode reopened O_RDONLY|O_NONBLOCK with the caller's fs ids, the
  // trusted.* names left out, ERANGE when the rest is longer than the guest's size). Other
  // errors, and a reply larger than the chain's buffers, go to TypeScript.
  bool Listxattr(const Chain& c, const fuse_in_header& h, const uint8_t* args, uint32_t* usedLen) {
    if (!xattr_) return Decline();
    fuse_getxattr_in g;
    std::memcpy(&g, args, sizeof g);
    auto fd = inodes_.find(h.nodeid);
    auto meta = meta_.find(h.nodeid);
    if (fd == inodes_.end() || meta == meta_.end()) return Decline();
    if (meta->second.fileType != S_IFREG && meta->second.fileType != S_IFDIR) return Decline();
    if (c.writableLen < kOutHeader + sizeof(fuse_getxattr_out)) return Decline();
    int file = Reopen(fd->second, O_RDONLY | O_NONBLOCK);
    if (file < 0) return Decline();
    if (xattrBuf_.size() < kXattrSizeMax) xattrBuf_.resize(kXattrSizeMax);
    ssize_t got = -1;
    bool took = RunAs(h.uid, h.gid, [&] { got = flistxattr(file, reinterpret_cast<char*>(xattrBuf_.data()), kXattrSizeMax); });
    close(file);
    if (!took || got < 0) return Decline();
    size_t len = FilterTrusted(xattrBuf_.data(), static_cast<size_t>(got));
    if (g.size != 0 && len <= g.size && c.writableLen < kOutHeader + len) return Decline();
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    listxattrs_++;
    if (g.size != 0 && len > g.size) return ReplyError(c, h, ERANGE, usedLen);
    return ReplyXattr(c, h, g.size == 0, len, usedLen);
  }

  // Drops the trusted.* names from a listxattr result in place (the kernel lists them only to
  // CAP_SYS_ADMIN: we hold it, the guest does not); returns the length left. As xattrs.ts
  // filterXattrList, a last name without its NUL is kept whole.
  static size_t FilterTrusted(uint8_t* list, size_t n) {
    size_t out = 0;
    for (size_t start = 0; start < n;) {
      const void* nul = std::memchr(list + start, 0, n - start);
      size_t end = nul != nullptr ? static_cast<size_t>(static_cast<const uint8_t*>(nul) - list) : n - 1;
      bool trusted = end - start >= 8 && std::memcmp(list + start, "trusted.", 8) == 0;
      if (!trusted) {
        std::memmove(list + out, list + start, end + 1 - start);
        out += end + 1 - start;
      }
      start = end + 1;
    }
    return out;
  }

  // An fd's /proc/self/fd entry as (dir fd, name): the pinned directory once confined, the
  // absolute path before (worker/fs/inodes.ts procFd).
  struct ProcFdName {
    int dir;
    char name[40];
    ProcFdName(int procFdDir, int fd) : dir(procFdDir >= 0 ? procFdDir : AT_FDCWD) {
      snprintf(name, sizeof name, procFdDir >= 0 ? "%d" : "/proc/self/fd/%d", fd);
    }
  };

  // SETATTR (worker/fs/passthrough.ts setattr, the same syscalls in the same order: mode,
  // owner, size, times; then the attributes) of an inode whose fd is in the table. Journaled
  // like TypeScript's SETATTR: no intent (a second run with the same absolute values is the
  // first), its outcome before the publish (needsRecord; no session change). Left to
  // TypeScript: a read-only export, a size without an fh (a temporary fd), KILL_SUIDGID with
  // a size or owner (the suid/sgid bits cleared by hand), chmod of a symlink (EOPNOTSUPP),
  // values the parser refuses, and every syscall error. A declined SETATTR may have done some
  // of its steps: TypeScript does them all again, which changes nothing (absolute values).
  bool Setattr(const Chain& c, const fuse_in_header& h, const uint8_t* args, Served* out) {
    fuse_setattr_in s;
    std::memcpy(&s, args, sizeof s);
    const uint32_t v = s.valid;
    if (readonly_ || c.writableLen < kAttrReply) return Decline();
    if ((v & FATTR_FH) != 0 && s.fh >= kMaxSafeU) return Decline();
    if ((v & FATTR_SIZE) != 0 && (s.size >= kMaxSafeU || (v & FATTR_FH) == 0)) return Decline();
    if ((v & FATTR_KILL_SUIDGID) != 0 && (v & (FATTR_SIZE | FATTR_UID | FATTR_GID)) != 0) return Decline();
    // What the parser (worker/fuse/protocol.ts) refuses whenever the bit is set.
    if (((v & FATTR_ATIME) != 0 && !SafeSeconds(s.atime)) || ((v & FATTR_MTIME) != 0 && !SafeSeconds(s.mtime)) ||
        ((v & FATTR_CTIME) != 0 && !SafeSeconds(s.ctime)))
      return Decline();
    auto fd = inodes_.find(h.nodeid);
    auto meta = meta_.find(h.nodeid);
    if (fd == inodes_.end() || meta == meta_.end()) return Decline();
    const int inodeFd = fd->second;
    int fileFd = -1;
    if ((v & FATTR_FH) != 0) {
      FileEntry* f = FileFor(s.fh, h.nodeid);
      if (f == nullptr) return Decline();
      fileFd = f->fd;
    }
    timespec times[2];
    bool setTimes = (v & (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW)) != 0;
    if (setTimes && (!TimeArg(v, FATTR_ATIME, FATTR_ATIME_NOW, s.atime, s.atimensec, &times[0]) ||
                     !TimeArg(v, FATTR_MTIME, FATTR_MTIME_NOW, s.mtime, s.mtimensec, &times[1])))
      return Decline();
    if ((v & FATTR_MODE) != 0) {
      mode_t mode = s.mode & 07777;
      if (fileFd >= 0) {
        if (fchmod(fileFd, mode) != 0) return Decline();
      } else {
        if (meta->second.fileType == S_IFLNK) return Decline();
        ProcFdName p(procFdDir_, inodeFd);
        if (fchmodat(p.dir, p.name, mode, 0) != 0) return Decline();
      }
    }
    if ((v & (FATTR_UID | FATTR_GID)) != 0) {
      uid_t uid = (v & FATTR_UID) != 0 ? s.uid : static_cast<uid_t>(-1);
      gid_t gid = (v & FATTR_GID) != 0 ? s.gid : static_cast<gid_t>(-1);
      if (fchownat(inodeFd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return Decline();
    }
    if ((v & FATTR_SIZE) != 0 && ftruncate(fileFd, static_cast<off_t>(s.size)) != 0) return Decline();
    if (setTimes) {
      int r = fileFd >= 0 ? futimens(fileFd, times) : utimensat(inodeFd, "", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
      if (r != 0) return Decline();
    }
    struct stat st;
    if (fstatat(inodeFd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return Decline();
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    out->usedLen = out->replyLen = WriteAttrReply(c, h, st, out->reply);
    out->needsRecord = true;
    out->own = OwnRecord::kOutcome;
    out->nodeid = h.nodeid;
    setattrs_++;
    return true;
  }

  // An i64 of seconds within ±(2^53 - 1), as the parser's i64Strict wants it.
  static bool SafeSeconds(uint64_t raw) {
    int64_t secs = static_cast<int64_t>(raw);
    return secs < kMaxSafe && secs > -kMaxSafe;
  }

  // One of SETATTR's two times as utimensat takes it (passthrough.ts): now, the given value, or
  // left alone; false for nanoseconds past 999,999,999 (TypeScript's EINVAL).
  static bool TimeArg(uint32_t valid, uint32_t setBit, uint32_t nowBit, uint64_t sec, uint32_t nsec, timespec* out) {
    out->tv_sec = 0;
    if ((valid & nowBit) != 0) {
      out->tv_nsec = UTIME_NOW;
      return true;
    }
    if ((valid & setBit) == 0) {
      out->tv_nsec = UTIME_OMIT;
      return true;
    }
    if (nsec > 999999999U) return false;
    out->tv_sec = static_cast<time_t>(static_cast<int64_t>(sec));
    out->tv_nsec = static_cast<long>(nsec);
    return true;
  }

  // Runs fn with the caller's fs ids (this thread only, as worker/fs/credentials.ts runAs), and
  // restores ours. False, without running fn, when an id did not take.
  template <typename Fn>
  bool RunAs(uint32_t uid, uint32_t gid, Fn fn) {
    if (uid == ownUid_ && gid == ownGid_) {
      fn();
      return true;
    }
    long prevGid = syscall(SYS_setfsgid, static_cast<gid_t>(gid));
    long prevUid = syscall(SYS_setfsuid, static_cast<uid_t>(uid));
    // An invalid id changes nothing and returns the current one: how to read it back.
    bool took = syscall(SYS_setfsuid, static_cast<uid_t>(-1)) == static_cast<long>(uid) &&
                syscall(SYS_setfsgid, static_cast<gid_t>(-1)) == static_cast<long>(gid);
    if (took) fn();
    syscall(SYS_setfsuid, static_cast<uid_t>(prevUid));
    syscall(SYS_setfsgid, static_cast<gid_t>(prevGid));
    return took;
  }

  bool ReplyError(const Chain& c, const fuse_in_header& h, int err, uint32_t* usedLen) {
    fuse_out_header oh{static_cast<uint32_t>(kOutHeader), -err, h.unique};
    ScatterSegments(c.writable, 0, reinterpret_cast<const uint8_t*>(&oh), kOutHeader);
    *usedLen = kOutHeader;
    return true;
  }

  // STATFS of an inode whose fd is in the table (passthrough.ts statfs: fstatfs of its fd, O_PATH
  // or not; encode.ts encodeStatfsOut). Errors go to TypeScript, which answers them.
  bool Statfs(const Chain& c, const fuse_in_header& h, uint32_t* usedLen) {
    constexpr size_t kReply = kOutHeader + sizeof(fuse_statfs_out);
    auto it = inodes_.find(h.nodeid);
    if (it == inodes_.end() || c.writableLen < kReply) return Decline();
    struct statfs st;
    if (fstatfs(it->second, &st) != 0) return Decline();
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    uint8_t reply[kReply];
    std::memset(reply, 0, sizeof reply);
    fuse_out_header oh{static_cast<uint32_t>(kReply), 0, h.unique};
    std::memcpy(reply, &oh, sizeof oh);
    fuse_statfs_out o;
    std::memset(&o, 0, sizeof o);
    o.st.blocks = st.f_blocks;
    o.st.bfree = st.f_bfree;
    o.st.bavail = st.f_bavail;
    o.st.files = st.f_files;
    o.st.ffree = st.f_ffree;
    o.st.bsize = static_cast<uint32_t>(st.f_bsize);
    o.st.namelen = static_cast<uint32_t>(st.f_namelen);
    o.st.frsize = static_cast<uint32_t>(st.f_frsize);
    std::memcpy(reply + kOutHeader, &o, sizeof o);
    ScatterSegments(c.writable, 0, reply, kReply);
    *usedLen = static_cast<uint32_t>(kReply);
    statfses_++;
    return true;
  }

  // LSEEK with SEEK_DATA or SEEK_HOLE (the only whence the kernel sends; passthrough.ts lseek:
  // lseek of the open file's fd) of an offset TypeScript accepts. ENXIO (no data or hole past
  // the offset: every file a guest's cp probes ends so) is answered here; other errors, and
  // other whence values, go to TypeScript.
  bool Lseek(const Chain& c, const fuse_in_header& h, const uint8_t* args, uint32_t* usedLen) {
    constexpr size_t kReply = kOutHeader + sizeof(fuse_lseek_out);
    fuse_lseek_in l;
    std::memcpy(&l, args, sizeof l);
    if (l.fh >= kMaxSafeU || l.offset > static_cast<uint64_t>(kMaxSafe) || (l.whence != SEEK_DATA && l.whence != SEEK_HOLE)) return Decline();
    FileEntry* e = FileFor(l.fh, h.nodeid);
    if (e == nullptr || c.writableLen < kReply) return Decline();
    off_t at = lseek(e->fd, static_cast<off_t>(l.offset), static_cast<int>(l.whence));
    if (at < 0 && errno != ENXIO) return Decline();
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    lseeks_++;
    if (at < 0) return ReplyError(c, h, ENXIO, usedLen);
    uint8_t reply[kReply];
    std::memset(reply, 0, sizeof reply);
    fuse_out_header oh{static_cast<uint32_t>(kReply), 0, h.unique};
    std::memcpy(reply, &oh, sizeof oh);
    fuse_lseek_out o{};
    o.offset = static_cast<uint64_t>(at);
    std::memcpy(reply + kOutHeader, &o, sizeof o);
    ScatterSegments(c.writable, 0, reply, kReply);
    *usedLen = static_cast<uint32_t>(kReply);
    return true;
  }

  // FLUSH of an open file whose inode has no POSIX lock owner (worker/fs/passthrough.ts flush:
  // close(dup(fd)), which is what a close() does on the host; with an owner the flush may drop
  // its locks, a session change TypeScript journals).
  bool Flush(const Chain& c, const fuse_in_header& h, const uint8_t* args, uint32_t* usedLen) {
    fuse_flush_in f;
    std::memcpy(&f, args, sizeof f);
    if (f.fh >= kMaxSafeU) return Decline();
    FileEntry* e = FileFor(f.fh, h.nodeid);
    if (e == nullptr || lockOwners_.count(h.nodeid) != 0) return Decline();
    int d = fcntl(e->fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) return Decline();
    ::close(d);
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    fuse_out_header out{static_cast<uint32_t>(kOutHeader), 0, h.unique};
    ScatterSegments(c.writable, 0, reinterpret_cast<const uint8_t*>(&out), sizeof out);
    *usedLen = kOutHeader;
    flushes_++;
    return true;
  }

  // FSYNC of an open file (passthrough.ts fsync: fsync, or fdatasync for FUSE_FSYNC_FDATASYNC),
  // always on the ring's I/O threads: it waits for the disk. Nothing of the session changes,
  // and a second run is harmless, so a successor runs it again if it was in flight.
  bool Fsync(const Chain& c, const fuse_in_header& h, const uint8_t* args, Served* out) {
    fuse_fsync_in f;
    std::memcpy(&f, args, sizeof f);
    if (f.fh >= kMaxSafeU) return Decline();
    FileEntry* e = FileFor(f.fh, h.nodeid);
    if (e == nullptr) return Decline();
    out->queued = NewJob(c, h, e, (f.fsync_flags & FUSE_FSYNC_FDATASYNC) != 0 ? IoKind::kFdatasync : IoKind::kFsync);
    if (!out->queued) return Decline();
    fsyncs_++;
    return true;
  }

  // A job for the ring's I/O threads answering this chain, with a dup of the file's fd; null
  // when no fd is left.
  static std::unique_ptr<IoJob> NewJob(const Chain& c, const fuse_in_header& h, const FileEntry* f, IoKind kind) {
    int fd = fcntl(f->fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return nullptr;
    auto job = std::make_unique<IoJob>();
    job->fd = fd;
    job->kind = kind;
    job->opcode = h.opcode;
    job->head = c.head;
    job->unique = h.unique;
    job->reply = c.writable;
    return job;
  }

  FileEntry* FileFor(uint64_t fh, uint64_t nodeid) {
    auto it = files_.find(fh);
    if (it == files_.end() || it->second.nodeid != nodeid) return nullptr;
    return &it->second;
  }

  enum class Transfer { kDone, kWouldBlock, kFailed };

  // preadv2/pwritev2 of the whole range with the file's sync mode on the JS thread: kWouldBlock
  // (the I/O threads go on from *done) when it would block or the filesystem has no sync mode,
  // kFailed (TypeScript's, which answers the errno) when the syscall fails.
  Transfer SyncTransfer(FileEntry* f, bool write, uint64_t offset, size_t want, size_t* done) {
    SyncIo* mode = write ? &f->write : &f->read;
    size_t first = 0;
    *done = 0;
    while (*done < want) {
      if (*mode == SyncIo::kNone) return Transfer::kWouldBlock;
      int flags = *mode == SyncIo::kNowait ? RWF_NOWAIT : 0;
      iovec* v = iov_.data() + first;
      int cnt = static_cast<int>(iov_.size() - first);
      ssize_t n = write ? pwritev2(f->fd, v, cnt, static_cast<off_t>(offset + *done), flags)
                        : preadv2(f->fd, v, cnt, static_cast<off_t>(offset + *done), flags);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EOPNOTSUPP && *mode == SyncIo::kNowait) {
          *mode = MemoryBacked(f->fd) ? SyncIo::kPlain : SyncIo::kNone;
          continue;
        }
        return errno == EAGAIN ? Transfer::kWouldBlock : Transfer::kFailed;
      }
      if (n == 0) {
        if (write) return Transfer::kFailed;
        break;  // EOF
      }
      *done += static_cast<size_t>(n);
      AdvanceIov(&iov_, &first, static_cast<size_t>(n));
    }
    return Transfer::kDone;
  }

  // Hands the rest of a READ or WRITE (iov_ holds all of it, *done of it moved) to the ring's
  // I/O threads (io_pool.h), with a dup of the file's fd. Declined when no fd is left.
  bool QueueTransfer(const Chain& c, const fuse_in_header& h, const FileEntry* f, bool write, uint64_t offset, size_t want,
                     size_t done, Served* out) {
    std::unique_ptr<IoJob> job = NewJob(c, h, f, write ? IoKind::kWrite : IoKind::kRead);
    if (!job) return Decline();
    job->offset = offset;
    job->done = done;
    job->want = want;
    job->iov = iov_;
    out->queued = std::move(job);
    if (write) {
      writes_++;
      queuedWrites_++;
    } else {
      reads_++;
      queuedReads_++;
    }
    return true;
  }

  // A READ the JS thread cannot answer from the page cache at once (or larger than
  // kMaxSyncRead) goes to the I/O threads.
  bool Read(const Chain& c, const fuse_in_header& h, const uint8_t* args, Served* served) {
    uint32_t* usedLen = &served->usedLen;
    fuse_read_in r;
    std::memcpy(&r, args, sizeof r);
    if (r.fh >= kMaxSafeU || r.offset >= kMaxSafeU || r.size > kMaxRead) return Decline();
    FileEntry* f = FileFor(r.fh, h.nodeid);
    if (f == nullptr) return Decline();
    size_t want = std::min<uint64_t>(r.size, c.writableLen - kOutHeader);
    if (!SliceIov(c.writable, kOutHeader, want, &iov_)) return Decline();
    size_t done = 0;
    if (want > kMaxSyncRead) {
      return QueueTransfer(c, h, f, false, r.offset, want, 0, served);
    }
    if (want > 0) {
      Transfer t = SyncTransfer(f, false, r.offset, want, &done);
      if (t == Transfer::kFailed) return Decline();
      if (t == Transfer::kWouldBlock) {
        SliceIov(c.writable, kOutHeader, want, &iov_);  // SyncTransfer advanced it
        return QueueTransfer(c, h, f, false, r.offset, want, done, served);
      }
    }
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    fuse_out_header out{static_cast<uint32_t>(kOutHeader + done), 0, h.unique};
    ScatterSegments(c.writable, 0, reinterpret_cast<const uint8_t*>(&out), sizeof out);
    *usedLen = out.len;
    reads_++;
    return true;
  }

  // A WRITE that would block the JS thread (no NOWAIT buffered writes on the filesystem, the
  // page cache full of dirty pages, O_SYNC) goes to the I/O threads.
  bool Write(const Chain& c, const fuse_in_header& h, const uint8_t* args, Served* served) {
    uint32_t* usedLen = &served->usedLen;
    fuse_write_in w;
    std::memcpy(&w, args, sizeof w);
    constexpr size_t kReply = kOutHeader + sizeof(fuse_write_out);
    if (readonly_ || h.len != kInHeader + sizeof w + w.size || w.size > kMaxSyncWrite || w.fh >= kMaxSafeU ||
        w.offset >= kMaxSafeU || (w.write_flags & FUSE_WRITE_KILL_SUIDGID) != 0 || c.writableLen < kReply)
      return Decline();
    FileEntry* f = FileFor(w.fh, h.nodeid);
    // Appends journal an intent (their second run would append twice).
    if (f == nullptr || (f->flags & kOpenAppend) != 0) return Decline();
    if (!SliceIov(c.readable, kInHeader + sizeof w, w.size, &iov_)) return Decline();
    size_t done = 0;
    if ((f->flags & kOpenSyncBits) != 0) {
      return QueueTransfer(c, h, f, true, w.offset, w.size, 0, served);
    }
    if (w.size > 0) {
      Transfer t = SyncTransfer(f, true, w.offset, w.size, &done);
      if (t == Transfer::kFailed) return Decline();
      if (t == Transfer::kWouldBlock) {
        SliceIov(c.readable, kInHeader + sizeof w, w.size, &iov_);  // SyncTransfer advanced it
        return QueueTransfer(c, h, f, true, w.offset, w.size, done, served);
      }
    }
    CrashPoint(NativeCrashPoint::kAfterSyscall, h.opcode);
    uint8_t reply[kReply];
    std::memset(reply, 0, sizeof reply);
    fuse_out_header out{static_cast<uint32_t>(kReply), 0, h.unique};
    std::memcpy(reply, &out, sizeof out);
    fuse_write_out wo{static_cast<uint32_t>(done), 0};
    std::memcpy(reply + kOutHeader, &wo, sizeof wo);
    ScatterSegments(c.writable, 0, reply, kReply);
    *usedLen = kReply;
    writes_++;
    return true;
  }

  // --- JS methods

  Napi::Value SetEnabled(const Napi::CallbackInfo& info) { return SetFlag(info, "setEnabled", "enabled", &enabled_); }

  Napi::Value SetReadonly(const Napi::CallbackInfo& info) { return SetFlag(info, "setReadonly", "readonly", &readonly_); }

  // A setter of one boolean argument.
  static Napi::Value SetFlag(const Napi::CallbackInfo& info, const char* fn, const char* arg, bool* flag) {
    Args a(info, fn);
    if (!a.Count(1) || !a.Bool(0, arg, flag)) return {};
    return info.Env().Undefined();
  }

  // setXattr(enabled, procFdDir): whether xattrs are on (off: TypeScript answers ENOSYS), and the
  // directory fd of /proc/self/fd (AT_FDCWD: the absolute path, unconfined). A dup is kept, so a
  // pin the caller replaces or closes never makes this one another directory.
  Napi::Value SetXattr(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Args a(info, "setXattr");
    bool enabled;
    int dirFd;
    if (!a.Count(2) || !a.Bool(0, "enabled", &enabled) || !a.DirFd(1, "procFdDir", &dirFd)) return {};
    int dup = -1;
    if (dirFd >= 0) {
      dup = fcntl(dirFd, F_DUPFD_CLOEXEC, 0);
      if (dup < 0) {
        ThrowErrno(env, errno, "fcntl");
        return {};
      }
    }
    if (procFdDir_ >= 0) close(procFdDir_);
    procFdDir_ = dup;
    xattr_ = enabled;
    return env.Undefined();
  }

  Napi::Value SetAttrTimeout(const Napi::CallbackInfo& info) {
    Args a(info, "setAttrTimeout");
    int64_t sec, nsec;
    if (!a.Count(2) || !a.Int(0, "sec", 0, kMaxSafe, &sec) || !a.Int(1, "nsec", 0, 999999999, &nsec)) return {};
    attrSec_ = static_cast<uint64_t>(sec);
    attrNsec_ = static_cast<uint32_t>(nsec);
    return info.Env().Undefined();
  }

  Napi::Value SetInode(const Napi::CallbackInfo& info) {
    Args a(info, "setInode");
    int64_t nodeid;
    int fd;
    if (!a.Count(2) || !a.Int(0, "nodeid", 1, kMaxSafe, &nodeid) || !a.Fd(1, "fd", &fd)) return {};
    inodes_[static_cast<uint64_t>(nodeid)] = fd;
    return info.Env().Undefined();
  }

  Napi::Value DeleteInode(const Napi::CallbackInfo& info) {
    Args a(info, "deleteInode");
    int64_t nodeid;
    if (!a.Count(1) || !a.Int(0, "nodeid", 0, kMaxSafe, &nodeid)) return {};
    inodes_.erase(static_cast<uint64_t>(nodeid));
    return info.Env().Undefined();
  }

  Napi::Value SetFile(const Napi::CallbackInfo& info) {
    Args a(info, "setFile");
    int64_t fh, nodeid;
    int fd, flags;
    if (!a.Count(4) || !a.Int(0, "fh", 0, kMaxSafe, &fh) || !a.Int(1, "nodeid", 1, kMaxSafe, &nodeid) ||
        !a.Fd(2, "fd", &fd) || !a.Flags(3, "flags", &flags))
      return {};
    files_[static_cast<uint64_t>(fh)] = FileEntry{fd, static_cast<uint64_t>(nodeid), flags};
    FhTaken(static_cast<uint64_t>(fh));
    return info.Env().Undefined();
  }

  // The session took `fh` (an open file or dir): the next fh is past it.
  void FhTaken(uint64_t fh) {
    if (nextFh_ != 0 && fh >= nextFh_) nextFh_ = fh + 1;
  }

  // setDir(fh, nodeid, fd): an open dir (RELEASEDIR's table); moves the next fh past it.
  Napi::Value SetDir(const Napi::CallbackInfo& info) {
    Args a(info, "setDir");
    int64_t fh, nodeid;
    int fd;
    if (!a.Count(3) || !a.Int(0, "fh", 0, kMaxSafe, &fh) || !a.Int(1, "nodeid", 1, kMaxSafe, &nodeid) || !a.Fd(2, "fd", &fd)) return {};
    dirs_[static_cast<uint64_t>(fh)] = DirEntry{fd, static_cast<uint64_t>(nodeid)};
    FhTaken(static_cast<uint64_t>(fh));
    return info.Env().Undefined();
  }

  // takeDir(fh): TypeScript is about to read the open dir `fh`: whether a READDIRPLUS here moved
  // its fd since the last takeDir (its own cursor then seeks), and the next one here seeks too.
  Napi::Value TakeDir(const Napi::CallbackInfo& info) {
    Args a(info, "takeDir");
    int64_t fh;
    if (!a.Count(1) || !a.Int(0, "fh", 0, kMaxSafe, &fh)) return {};
    auto it = dirs_.find(static_cast<uint64_t>(fh));
    bool moved = false;
    if (it != dirs_.end()) {
      moved = it->second.touched;
      it->second.touched = false;
      it->second.DropCursor();
    }
    return Napi::Boolean::New(info.Env(), moved);
  }

  Napi::Value DeleteDir(const Napi::CallbackInfo& info) {
    Args a(info, "deleteDir");
    int64_t fh;
    if (!a.Count(1) || !a.Int(0, "fh", 0, kMaxSafe, &fh)) return {};
    dirs_.erase(static_cast<uint64_t>(fh));
    return info.Env().Undefined();
  }

  Napi::Value DeleteFile(const Napi::CallbackInfo& info) {
    Args a(info, "deleteFile");
    int64_t fh;
    if (!a.Count(1) || !a.Int(0, "fh", 0, kMaxSafe, &fh)) return {};
    files_.erase(static_cast<uint64_t>(fh));
    return info.Env().Undefined();
  }

  // setInodeMeta(nodeid, dev: bigint, ino: bigint, generation, fileType, handle: Buffer | null,
  // mountId, handleType): the identity LOOKUP checks a name against, and the type GETXATTR needs.
  // Flat arguments: at a resume this runs for every decoded inode, and reading an object's
  // properties from here (a getter among them) cost more than the call.
  Napi::Value SetInodeMeta(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Args a(info, "setInodeMeta");
    int64_t nodeid, generation, fileType;
    if (!a.Count(8) || !a.Int(0, "nodeid", 1, kMaxSafe, &nodeid) || !a.Int(3, "generation", 0, 0xffffffffLL, &generation) ||
        !a.Int(4, "fileType", 0, 0170000, &fileType))
      return {};
    if (!info[1].IsBigInt() || !info[2].IsBigInt()) {
      ThrowTypeError(env, "setInodeMeta(): dev and ino must be bigints");
      return {};
    }
    bool lossless = true;
    InodeMeta m{};
    m.dev = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
    m.ino = info[2].As<Napi::BigInt>().Uint64Value(&lossless);
    m.generation = static_cast<uint64_t>(generation);
    m.fileType = static_cast<uint32_t>(fileType) & S_IFMT;
    m.hasHandle = false;
    if (!info[5].IsNull()) {
      int64_t mountId, type;
      if (!info[5].IsBuffer() || info[5].As<Napi::Buffer<uint8_t>>().Length() > MAX_HANDLE_SZ) {
        ThrowTypeError(env, "setInodeMeta(): argument 6 \"handle\" must be null or a Buffer of at most MAX_HANDLE_SZ bytes");
        return {};
      }
      if (!a.Int(6, "mountId", INT32_MIN, INT32_MAX, &mountId) || !a.Int(7, "handleType", INT32_MIN, INT32_MAX, &type)) return {};
      Napi::Buffer<uint8_t> b = info[5].As<Napi::Buffer<uint8_t>>();
      m.hasHandle = true;
      m.mountId = static_cast<int>(mountId);
      m.handleType = static_cast<int>(type);
      m.handle.assign(b.Data(), b.Data() + b.Length());
    }
    uint64_t id = static_cast<uint64_t>(nodeid);
    if (nextNodeId_ != 0 && id >= nextNodeId_) nextNodeId_ = id + 1;
    auto old = meta_.find(id);
    if (old != meta_.end()) {
      auto k = byDevIno_.find(DevIno{old->second.dev, old->second.ino});
      if (k != byDevIno_.end() && k->second == id) byDevIno_.erase(k);
    }
    // A reused (dev, ino) names the newest inode, as the session's index does (session.ts
    // insertInode), whatever order the entries come in.
    auto k = byDevIno_.find(DevIno{m.dev, m.ino});
    if (k == byDevIno_.end() || k->second < id) byDevIno_[DevIno{m.dev, m.ino}] = id;
    meta_[id] = std::move(m);
    return env.Undefined();
  }

  // setHandles(mountId | -1): new inodes on this mount are named by file handles, so LOOKUP may
  // add them (-1: handles are off, new inodes are TypeScript's).
  Napi::Value SetHandles(const Napi::CallbackInfo& info) {
    Args a(info, "setHandles");
    int64_t mountId;
    if (!a.Count(1) || !a.Int(0, "mountId", -1, INT32_MAX, &mountId)) return {};
    handleMountId_ = static_cast<int>(mountId);
    return info.Env().Undefined();
  }

  // setNextNodeId(n): the session's next nodeid (at start and after a reset; every setInodeMeta
  // moves it past its nodeid). 0: LOOKUP adds no inode. Never moved back otherwise: a nodeid
  // taken here and not yet in the session must not be taken twice.
  Napi::Value SetNextNodeId(const Napi::CallbackInfo& info) { return SetNextId(info, "setNextNodeId", "nextNodeId", &nextNodeId_); }

  // An id counter the addon takes from: 0 (none taken here) or never moved back.
  static Napi::Value SetNextId(const Napi::CallbackInfo& info, const char* fn, const char* arg, uint64_t* id) {
    Args a(info, fn);
    int64_t n;
    if (!a.Count(1) || !a.Int(0, arg, 0, kMaxSafe, &n)) return {};
    uint64_t next = static_cast<uint64_t>(n);
    *id = next == 0 ? 0 : std::max(*id, next);
    return info.Env().Undefined();
  }

  // setNextFh(n): the session's next fh, which an OPEN takes (0: OPEN is TypeScript's); at
  // start, after a reset and whenever the session takes one (setFile also moves it past its
  // fh). As setNextNodeId: never moved back otherwise.
  Napi::Value SetNextFh(const Napi::CallbackInfo& info) { return SetNextId(info, "setNextFh", "nextFh", &nextFh_); }

  // setOpenRoom(n): how many more files OPEN may open before the fd budget (shared/fd_registry.ts)
  // is used up; each OPEN here takes one, and JavaScript sets it again as fds come and go.
  Napi::Value SetOpenRoom(const Napi::CallbackInfo& info) {
    Args a(info, "setOpenRoom");
    int64_t n;
    if (!a.Count(1) || !a.Int(0, "room", 0, kMaxSafe, &n)) return {};
    openRoom_ = n;
    return info.Env().Undefined();
  }

  // setOpenPolicy(passFlags, writeback, replyFlags, dirReplyFlags): the open(2) flags an OPEN
  // passes on (passthrough.ts PASS_OPEN_FLAGS), whether the session has the writeback cache
  // (O_WRONLY opens O_RDWR, without O_APPEND), and the FOPEN_* flags of OPEN's and OPENDIR's
  // replies (the cache mode).
  Napi::Value SetOpenPolicy(const Napi::CallbackInfo& info) {
    Args a(info, "setOpenPolicy");
    int64_t pass, reply, dirReply;
    bool writeback;
    if (!a.Count(4) || !a.Int(0, "passFlags", 0, 0xffffffffLL, &pass) || !a.Bool(1, "writeback", &writeback) ||
        !a.Int(2, "replyFlags", 0, 0xffffffffLL, &reply) || !a.Int(3, "dirReplyFlags", 0, 0xffffffffLL, &dirReply))
      return {};
    openPassFlags_ = static_cast<uint32_t>(pass);
    writeback_ = writeback;
    openReplyFlags_ = static_cast<uint32_t>(reply);
    dirReplyFlags_ = static_cast<uint32_t>(dirReply);
    openPolicySet_ = true;
    return info.Env().Undefined();
  }

  // setJournal(mapping | null): the state journal's mapping (native.mmap's ArrayBuffer; null:
  // none, CREATE, MKDIR, UNLINK and RMDIR are TypeScript's). JavaScript sets it again whenever it maps the
  // journal anew (grown, compacted) and null before it unmaps it; we hold the mapping meanwhile.
  Napi::Value SetJournal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Args a(info, "setJournal");
    if (!a.Count(1)) return {};
    Mapping* m = nullptr;
    if (!info[0].IsNull()) {
      Napi::ArrayBuffer ab;
      char* data;
      size_t len;
      if (!a.ArrayBuf(0, "mapping", &ab, &data, &len)) return {};
      m = FindMapping(data);
      if (m == nullptr || !m->writable || len <= kJournalDataStart) {
        ThrowCodeError(env, "setJournal(): argument 1 \"mapping\" must be a live writable mapping past the journal's header",
                       "ERR_INVALID_ARG_VALUE");
        return {};
      }
      AcquireMapping(m);
      journal_ = reinterpret_cast<uint8_t*>(data);
      journalLen_ = len;
    } else {
      journal_ = nullptr;
      journalLen_ = 0;
    }
    if (journalMapping_ != nullptr) ReleaseMapping(journalMapping_);
    journalMapping_ = m;
    return env.Undefined();
  }

  // setSettled(settled): whether the keeper holds every open fd (shared/keeper_client.ts
  // settled), which UNLINK and RMDIR need (a file removed while open is reopened by its fd
  // only). An OPEN, OPENDIR or CREATE here unsettles it until JavaScript says so again.
  Napi::Value SetSettled(const Napi::CallbackInfo& info) { return SetFlag(info, "setSettled", "settled", &settled_); }
  // setInodeCacheFull(full): one more inode fd would evict another (worker/fs/inode_fds.ts
  // full), so a READDIRPLUS names a new inode by its handle read by name, without an fd.
  Napi::Value SetInodeCacheFull(const Napi::CallbackInfo& info) {
    return SetFlag(info, "setInodeCacheFull", "full", &inodeCacheFull_);
  }

  // setCreatePolicy(enabled): CREATE may be served (JavaScript says so once the session's INIT
  // did not grant FUSE_DONT_MASK: the guest masked the mode, so files are created with umask 0).
  Napi::Value SetCreatePolicy(const Napi::CallbackInfo& info) {
    return SetFlag(info, "setCreatePolicy", "enabled", &createPolicy_);
  }

  // setUnjournaled(on): benchmark only (VFSK_BENCH_NO_JOURNAL, which measures what journaling
  // costs): CREATE, MKDIR, UNLINK and RMDIR are served without their intents, as TypeScript's
  // are then.
  Napi::Value SetUnjournaled(const Napi::CallbackInfo& info) { return SetFlag(info, "setUnjournaled", "on", &unjournaled_); }
  Napi::Value SetLookupsRecords(const Napi::CallbackInfo& info) { return SetFlag(info, "setLookupsRecords", "on", &lookupsRecords_); }

  // forgetInode(nodeid): the session dropped the inode (its fd entry goes too).
  Napi::Value ForgetInode(const Napi::CallbackInfo& info) {
    Args a(info, "forgetInode");
    int64_t nodeid;
    if (!a.Count(1) || !a.Int(0, "nodeid", 0, kMaxSafe, &nodeid)) return {};
    uint64_t id = static_cast<uint64_t>(nodeid);
    auto m = meta_.find(id);
    if (m != meta_.end()) {
      auto k = byDevIno_.find(DevIno{m->second.dev, m->second.ino});
      if (k != byDevIno_.end() && k->second == id) byDevIno_.erase(k);
      meta_.erase(m);
    }
    inodes_.erase(id);
    return info.Env().Undefined();
  }

  // setLockOwners(nodeid, n): the inode has n POSIX lock owners (0: none; FLUSH is ours then).
  Napi::Value SetLockOwners(const Napi::CallbackInfo& info) {
    Args a(info, "setLockOwners");
    int64_t nodeid, n;
    if (!a.Count(2) || !a.Int(0, "nodeid", 0, kMaxSafe, &nodeid) || !a.Int(1, "n", 0, kMaxSafe, &n)) return {};
    if (n == 0) lockOwners_.erase(static_cast<uint64_t>(nodeid));
    else lockOwners_[static_cast<uint64_t>(nodeid)] = static_cast<uint64_t>(n);
    return info.Env().Undefined();
  }

  Napi::Value Clear(const Napi::CallbackInfo& info) {
    forgotten_.clear();
    lockOwners_.clear();
    inodes_.clear();
    files_.clear();
    dirs_.clear();
    meta_.clear();
    byDevIno_.clear();
    nextNodeId_ = 0;
    nextFh_ = 0;
    return info.Env().Undefined();
  }

  // armCrash(point 1..4, opcode | -1, fn(point, opcode)): tests only (shared/crash_points.ts).
  Napi::Value ArmCrash(const Napi::CallbackInfo& info) {
    Args a(info, "armCrash");
    int64_t point, opcode;
    Napi::Function fn;
    if (!a.Count(3) || !a.Int(0, "point", 1, static_cast<int64_t>(NativeCrashPoint::kAfterFdstore), &point) || !a.Int(1, "opcode", -1, 0xffffffffLL, &opcode) ||
        !a.Func(2, "fn", &fn))
      return {};
    crashPoint_ = static_cast<NativeCrashPoint>(point);
    crashOpcode_ = opcode;
    crashFn_ = Napi::Persistent(fn);
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("getattr", Napi::Number::New(env, static_cast<double>(getattrs_)));
    o.Set("read", Napi::Number::New(env, static_cast<double>(reads_)));
    o.Set("write", Napi::Number::New(env, static_cast<double>(writes_)));
    o.Set("queuedRead", Napi::Number::New(env, static_cast<double>(queuedReads_)));
    o.Set("queuedWrite", Napi::Number::New(env, static_cast<double>(queuedWrites_)));
    o.Set("fsync", Napi::Number::New(env, static_cast<double>(fsyncs_)));
    o.Set("lookup", Napi::Number::New(env, static_cast<double>(lookups_)));
    o.Set("flush", Napi::Number::New(env, static_cast<double>(flushes_)));
    o.Set("getxattr", Napi::Number::New(env, static_cast<double>(getxattrs_)));
    o.Set("listxattr", Napi::Number::New(env, static_cast<double>(listxattrs_)));
    o.Set("statfs", Napi::Number::New(env, static_cast<double>(statfses_)));
    o.Set("lseek", Napi::Number::New(env, static_cast<double>(lseeks_)));
    o.Set("setattr", Napi::Number::New(env, static_cast<double>(setattrs_)));
    o.Set("lookupMissing", Napi::Number::New(env, static_cast<double>(lookupsMissing_)));
    o.Set("lookupNew", Napi::Number::New(env, static_cast<double>(lookupsNew_)));
    o.Set("open", Napi::Number::New(env, static_cast<double>(opens_)));
    o.Set("release", Napi::Number::New(env, static_cast<double>(releases_)));
    o.Set("opendir", Napi::Number::New(env, static_cast<double>(opendirs_)));
    o.Set("releasedir", Napi::Number::New(env, static_cast<double>(releasedirs_)));
    o.Set("create", Napi::Number::New(env, static_cast<double>(creates_)));
    o.Set("mkdir", Napi::Number::New(env, static_cast<double>(mkdirs_)));
    o.Set("intentErrors", Napi::Number::New(env, static_cast<double>(intentErrors_)));
    o.Set("unlink", Napi::Number::New(env, static_cast<double>(unlinks_)));
    o.Set("rmdir", Napi::Number::New(env, static_cast<double>(rmdirs_)));
    o.Set("intents", Napi::Number::New(env, static_cast<double>(intents_)));
    o.Set("ownOutcomes", Napi::Number::New(env, static_cast<double>(ownOutcomes_)));
    o.Set("readdirplus", Napi::Number::New(env, static_cast<double>(readdirplus_)));
    o.Set("direntsPlus", Napi::Number::New(env, static_cast<double>(direntsPlus_)));
    o.Set("direntsNew", Napi::Number::New(env, static_cast<double>(direntsNew_)));
    o.Set("forget", Napi::Number::New(env, static_cast<double>(forgets_)));
    o.Set("declined", Napi::Number::New(env, static_cast<double>(declined_)));
    // Declined requests by opcode (the last slot: opcodes past it), for what to serve next.
    Napi::Array byOp = Napi::Array::New(env, kOpcodeSlots);
    for (uint32_t i = 0; i < kOpcodeSlots; i++) byOp.Set(i, Napi::Number::New(env, static_cast<double>(declinedByOpcode_[i])));
    o.Set("declinedByOpcode", byOp);
    o.Set("inodes", Napi::Number::New(env, static_cast<double>(inodes_.size())));
    o.Set("files", Napi::Number::New(env, static_cast<double>(files_.size())));
    return o;
  }

  bool enabled_ = false;
  bool readonly_ = false;
  uint64_t attrSec_ = 0;
  uint32_t attrNsec_ = 0;
  std::unordered_map<uint64_t, int> inodes_;
  std::unordered_map<uint64_t, FileEntry> files_;
  std::unordered_map<uint64_t, DirEntry> dirs_;  // open dirs (RELEASEDIR)
  std::unordered_map<uint64_t, InodeMeta> meta_;
  std::unordered_map<uint64_t, uint64_t> lockOwners_;  // nodeid → POSIX lock owners
  std::unordered_map<DevIno, uint64_t, DevInoHash> byDevIno_;
  std::vector<iovec> iov_;
  uint64_t queuedReads_ = 0, queuedWrites_ = 0, fsyncs_ = 0;
  uint64_t statfses_ = 0, lseeks_ = 0, listxattrs_ = 0;
  uint64_t getattrs_ = 0, reads_ = 0, writes_ = 0, lookups_ = 0, flushes_ = 0, getxattrs_ = 0, setattrs_ = 0, lookupsMissing_ = 0,
           declined_ = 0, lookupsNew_ = 0, opens_ = 0, releases_ = 0,
           opendirs_ = 0, releasedirs_ = 0, unlinks_ = 0, rmdirs_ = 0, intents_ = 0, ownOutcomes_ = 0, creates_ = 0, mkdirs_ = 0, intentErrors_ = 0,
           readdirplus_ = 0, direntsPlus_ = 0, direntsNew_ = 0, forgets_ = 0;
  std::unordered_set<uint64_t> forgotten_;  // nodeids a FORGET of the batch not yet taken named
  // READDIRPLUS's reply and the new inodes after it; the new names of the reply being built.
  std::vector<uint8_t> dirReply_ = std::vector<uint8_t>(kMaxLongReply);
  std::vector<DirNewInode> dirNew_;
  int handleMountId_ = -1;   // setHandles
  uint64_t nextNodeId_ = 0;  // the session's next nodeid (0: unknown, no new inodes here)
  uint64_t nextFh_ = 0;      // the session's next fh (0: unknown, OPEN is TypeScript's)
  int64_t openRoom_ = 0;     // files OPEN may still open within the fd budget
  uint64_t declinedByOpcode_[kOpcodeSlots] = {};
  bool openPolicySet_ = false;
  uint32_t openPassFlags_ = 0;
  bool writeback_ = false;
  uint32_t openReplyFlags_ = 0;
  uint32_t dirReplyFlags_ = 0;
  bool xattr_ = false;
  int procFdDir_ = -1;  // our dup of /proc/self/fd's pinned fd, or -1 (absolute path)
  std::vector<uint8_t> xattrBuf_;
  uint8_t* journal_ = nullptr;  // setJournal: the journal's mapping (held: journalMapping_)
  size_t journalLen_ = 0;
  Mapping* journalMapping_ = nullptr;
  bool settled_ = false;  // setSettled
  bool inodeCacheFull_ = false;  // setInodeCacheFull
  bool createPolicy_ = false;  // setCreatePolicy
  bool umaskZero_ = false;     // the process umask was set to 0 for CREATE
  bool unjournaled_ = false;   // setUnjournaled (benchmark only)
  bool lookupsRecords_ = false;  // setLookupsRecords: LOOKUPs of known inodes as TAG_LOOKUPS records
  const uint32_t ownUid_ = static_cast<uint32_t>(geteuid());
  const uint32_t ownGid_ = static_cast<uint32_t>(getegid());
  NativeCrashPoint crashPoint_ = NativeCrashPoint::kNone;
  int64_t crashOpcode_ = -1;
  Napi::FunctionReference crashFn_;
};

}  // namespace

ChainServer* UnwrapChainServer(Napi::Env env, Napi::Value v) {
  bool tagged = false;
  if (v.IsObject()) napi_check_object_type_tag(env, v, &kFastFuseTag, &tagged);
  if (!tagged) {
    ThrowTypeError(env, "attach(): argument 1 \"server\" must be a FastFuse");
    return nullptr;
  }
  return FastFuse::Unwrap(v.As<Napi::Object>());
}

void InitFastFuse(Napi::Env env, Napi::Object exports) {
  exports.Set("FastFuse", FastFuse::Define(env));
}

}  // namespace vfsk
