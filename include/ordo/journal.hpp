// ordo::Journal — the write-ahead log under durable tasks.
//
// A directory of segment files (format: docs/journal-format.md). Many threads
// append records at once; the first thread to wait for durability leads a
// group commit: one write() of everything pending and, in sync mode, one
// fdatasync() shared by every record in it. Appending copies the record
// into memory and returns (in async and none modes usually into the open
// segment's shared mapping, so that it is written at once); only waiting
// for durability blocks, so a scheduler worker never waits on I/O unless
// it asks to. Segments rotate at a size, and a background compactor
// folds old segments into a snapshot of the live tasks.
//
// Thread-safety: every member may be called from any thread, concurrently,
// except close() and the destructor, which must not race with other calls.
// One process may have a journal open at a time (an advisory lock); a second
// open, from this process or another, throws JournalLocked.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ordo/errors.hpp"

namespace ordo {

namespace detail {
class JournalImpl;
}

// What "durable" means when an append is waited for.
enum class Durability : std::uint8_t {
  sync,   // on disk: the batch's fdatasync() returned (survives a power cut)
  async,  // written to the OS; fdatasync() every async_interval (survives a process crash)
  none,   // written to the OS; synced only when a segment closes (tests and benchmarks)
};
const char* to_string(Durability d) noexcept;

enum class RecordType : std::uint8_t {
  enqueue = 1,
  start = 2,
  checkpoint = 3,
  complete = 4,
  fail = 5,
  dead = 6,
  cancel = 7,
  retry = 8,
  workflow = 9,
  snapshot_end = 10,  // written by compaction only
};
inline constexpr std::uint8_t kMaxRecordType = 10;
const char* to_string(RecordType t) noexcept;  // "ENQUEUE", ...

// The journal is unreadable or damaged: the message names the file, the
// offset and the reason ("record checksum mismatch", "format version 2").
class JournalCorruption : public Error {
 public:
  using Error::Error;
};

// Another Journal (in this process or another) holds the directory's lock.
class JournalLocked : public Error {
 public:
  using Error::Error;
};

// An I/O call failed (the message names the call, the path and errno's text).
class JournalIoError : public Error {
 public:
  using Error::Error;
};

struct JournalOptions {
  Durability durability = Durability::sync;
  // async mode: how often the writer syncs. sync mode: the longest a record
  // nobody waits for (a START, a COMPLETE) stays unsynced.
  std::chrono::microseconds async_interval{10'000};
  // A segment is closed, and a new one started, before it would pass this size.
  std::uint64_t segment_bytes = 64ull << 20;
  // Compact in the background once the segments written since the last
  // snapshot exceed this many bytes; 0: only when compact() is called.
  std::uint64_t compact_after_bytes = 256ull << 20;
  // Skip damaged records (and report them) instead of refusing to open.
  bool tolerate_corruption = false;
};

// One record as replayed: valid only during the callback.
struct RecordView {
  RecordType type;
  std::uint64_t task;                  // the first 8 payload bytes
  std::span<const std::byte> payload;  // all of it, the task id included
  std::uint64_t segment;               // the file it came from (a snapshot: its number)
  std::uint64_t offset;                // of the record header in that file
  bool from_snapshot;
};

// What open() found and did.
struct RecoveryReport {
  std::uint64_t snapshot = 0;  // the snapshot read first, or 0
  std::uint64_t segments = 0;  // segment files read
  std::uint64_t records = 0;   // records replayed (snapshot included)
  std::uint64_t bytes = 0;     // bytes read
  std::uint64_t live_tasks = 0;
  // The highest task id any record has named, those compaction folded away
  // included (a snapshot records it): ids above it were never used.
  std::uint64_t highest_task = 0;
  struct Damage {
    std::string file;
    std::uint64_t offset = 0;
    std::uint64_t bytes = 0;  // dropped or skipped
    std::string reason;
  };
  bool torn_tail = false;
  Damage tail;                  // when torn_tail: what was cut off
  std::vector<Damage> skipped;  // tolerant mode: corrupt ranges skipped
  std::string describe() const;  // one line per finding, for logs and ordo-wal
};

struct JournalStats {
  std::uint64_t segments = 0;       // segment files now on disk
  std::uint64_t bytes = 0;          // their size, plus the snapshot's
  std::uint64_t appended = 0;       // records appended since open
  std::uint64_t batches = 0;        // writes (or copies into the mapped segment) that carried them
  std::uint64_t syncs = 0;          // fdatasync() calls
  std::uint64_t live_tasks = 0;
  std::uint64_t compactions = 0;
  double last_sync_us = 0;          // latency of the latest fdatasync()
};

// A position in the journal: every append gets the next one.
using Lsn = std::uint64_t;

class Journal {
 public:
  using Replay = std::function<void(const RecordView&)>;

  // Any thread. Opens (creating if absent) the journal in `directory`,
  // replays it through `replay` in order (snapshot first), and unless
  // read_only starts a new segment for appends. Throws JournalLocked,
  // JournalCorruption, JournalIoError, InvalidArgument (bad options).
  static std::unique_ptr<Journal> open(const std::string& directory, JournalOptions options = {},
                                       const Replay& replay = {});

  // Flushes and syncs what was appended (whatever the mode), stops the
  // threads, releases the lock. Never throws: an I/O error here is reported
  // on stderr, since the appends it concerns were not waited for (unless an
  // earlier call already threw it to a caller).
  ~Journal();

  // Any thread, never blocks on I/O. Appends one record for `task`; the
  // payload must start with the task id (see the format) — this builds it:
  // `body` is what follows the id. Throws InvalidArgument for a payload over
  // 64 MiB, Error after close() or a write error (named).
  Lsn append(RecordType type, std::uint64_t task, std::span<const std::byte> body = {});
  // Any thread. Blocks until the record at `lsn` is durable under the
  // journal's mode (see Durability). Throws JournalIoError if a write failed.
  void wait_durable(Lsn lsn);
  // Any thread. Blocks until the record at `lsn` has been written to the OS
  // (write(2) returned, or it was copied into the mapped segment), whatever
  // the mode: it then survives a crash of this
  // process, not necessarily a power cut. Cheaper than wait_durable() in
  // sync mode: it does not wait for an fdatasync() (it writes beside one in
  // progress, and leaves the periodic one to the writer thread), unless its
  // write fills the segment, whose rotation syncs it (once per
  // segment_bytes). Throws JournalIoError if a write failed.
  void wait_written(Lsn lsn);
  // append() then wait_durable().
  void append_durable(RecordType type, std::uint64_t task, std::span<const std::byte> body = {});
  // Any thread; never blocks. If the record at `lsn` is already durable
  // under the journal's mode, returns false and drops `fn`. Otherwise keeps
  // `fn` and calls it once, on the journal's writer thread and holding no
  // journal lock (so fn may append, and its caller may hold its own locks):
  // fn(true) once the record is durable — a record nobody waits for is
  // written within about a millisecond, and in sync mode a pending callback
  // gets its fdatasync at once — or fn(false) if a write error or close()
  // means it never will be. fn must not throw. Throws what append() throws
  // for a failed or closed journal.
  bool on_durable(Lsn lsn, std::function<void(bool durable)> fn);
  // Any thread. Writes and fdatasync()s everything appended so far, whatever the mode.
  void sync();
  // Any thread. Rotates and compacts now, in the calling thread; returns
  // when the snapshot is committed and the old files are gone.
  void compact();

  JournalStats stats() const;
  const RecoveryReport& recovery() const noexcept;
  const std::string& directory() const noexcept;

  // Reads a journal without opening it for writing (no lock taken), as
  // ordo-wal does: replays it and reports. Throws like open().
  static RecoveryReport read(const std::string& directory, const Replay& replay, bool tolerate_corruption = false);

  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

 private:
  explicit Journal(std::unique_ptr<detail::JournalImpl> impl);
  std::unique_ptr<detail::JournalImpl> impl_;
};

}  // namespace ordo
