// JournalImpl: the state behind ordo::Journal — appenders, leaders of group
// commits, the background writer and the compactor.
//
// Thread-safety: mu_ guards the pending batch and every LSN watermark;
// appenders hold it only to copy their record in. The write token
// (writing_, taken and given back under mu_) is held by one thread at a
// time — a waiting thread leading a group commit, or the writer thread —
// and only its holder touches the open segment (fd, number, size), spare_
// and the sync bookkeeping, outside mu_; while nobody holds it, an appender
// may copy its record into the segment under mu_ (copy_locked).
// compact_mu_ serialises compactions. Invariants: appended_ >= written_ >=
// synced_; a record's LSN is reported durable only once every byte up to its
// end has been written (and, for synced_, fdatasync'd) — batches are written
// in LSN order, so a watermark covers every record below it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "util/parker.hpp"
#include "journal/file_system.hpp"
#include "ordo/journal.hpp"

namespace ordo::detail {

// How long a record nobody waits for may stay in memory before the writer
// thread writes it (a waiting appender writes it sooner, with its own).
inline constexpr std::chrono::microseconds kUnwaitedWriteDelay{1000};

// The most of a segment's size taken ahead of its records (less when
// JournalOptions::segment_bytes is smaller).
inline constexpr std::uint64_t kSegmentReservation = 64ull << 20;

// A test-only crash point (no public option): when set, every compaction
// calls it at each of its steps (1..4, see docs/journal-format.md), and a
// test process may _exit() there to simulate a crash. Set it only while no
// journal of the process compacts.
inline std::function<void(int step)> compaction_crash_point;

// A thread asleep in await_locked() for a sync, on its stack, listed in
// JournalImpl::waiters_ (mu_) until a waker gives it its verdict.
struct JournalWaiter {
  static constexpr int kWaiting = 0;
  static constexpr int kDone = 1;       // its record is synced: it returns
  static constexpr int kLookAgain = 2;  // it must lead, or see an error
  JournalWaiter(Lsn lsn, Parker* parker) : lsn(lsn), parker(parker) {}
  const Lsn lsn;
  Parker* const parker;
  std::atomic<int> verdict{kWaiting};
  JournalWaiter* next = nullptr;  // mu_
};

class JournalImpl {
 public:
  // `fs` carries every file operation; tests pass one that models power cuts.
  JournalImpl(std::string dir, JournalOptions options, std::shared_ptr<FileSystem> fs = posix_file_system());
  ~JournalImpl();

  void recover(const Journal::Replay& replay);  // before start(): reads, cleans up, truncates a torn tail
  void start();                                   // opens the first new segment, starts the threads

  Lsn append(RecordType type, std::uint64_t task, std::span<const std::byte> body);
  void wait_durable(Lsn lsn);
  void wait_written(Lsn lsn);
  bool on_durable(Lsn lsn, std::function<void(bool)> fn);
  void sync();
  void compact();
  void close() noexcept;
  JournalStats stats() const;

  const std::string dir_;
  const JournalOptions options_;
  RecoveryReport report_;

 private:
  [[noreturn]] void rethrow_error_locked();  // mu_ held
  void publish_marks_locked() noexcept;       // mu_ held: after written_ or synced_ moved
  void want_compaction_if_due_locked() noexcept;  // mu_ held: after a write or copy counted its bytes
  // Outside sync mode, while the segment is free and its mapping has room:
  // an appender copies its record into the segment itself, under mu_, and
  // the record is written at once — no batch, no leader, no one to wait
  // for. Only when nothing is pending, so that records stay in LSN order.
  bool copy_now_locked(std::size_t bytes) const noexcept;  // mu_ held
  void copy_locked(std::unique_lock<std::mutex>& lock, const std::string& record, Lsn lsn);  // copy_now_locked() true
  void writer_loop();
  // Waits until `lsn` is written (and synced, if need_sync), leading the
  // write itself when nobody else is writing. mu_ held on entry; on return
  // it may or may not be (callers return at once).
  void await_locked(std::unique_lock<std::mutex>& lock, Lsn lsn, bool need_sync);
  // After a watermark, writing_, sync_phase_, error_ or writer_exited_
  // changed: gives their verdicts to the listed waiters it concerns (see
  // await_locked) and wakes them and durable_cv_'s. mu_ held on entry and
  // exit; dropped for the wake-ups.
  void notify_durable(std::unique_lock<std::mutex>& lock) noexcept;
  // Holder of the write token (writing_): writes everything pending, syncs
  // if asked (or the periodic sync is due), rotates if asked. With
  // `written_only` (a waiter that needs no sync) it only writes: the
  // periodic sync and requested rotations are left to the writer thread.
  // mu_ held on entry and exit, dropped for the I/O.
  void flush_locked(std::unique_lock<std::mutex>& lock, bool sync, bool leader, bool written_only = false);
  // A waiter that needs its record only written, while the token holder is
  // in fdatasync (sync_phase_): writes everything pending to the segment
  // itself. mu_ held on entry and exit, dropped for the write.
  void side_write_locked(std::unique_lock<std::mutex>& lock);
  void write_batch(const std::string& batch, const std::vector<std::uint32_t>& ends);
  Lsn durable_mark_locked() const { return options_.durability == Durability::sync ? synced_ : written_; }
  // Writer thread: runs the on_durable callbacks that are due (all of
  // them, with false, once error_ is set or the writer has exited). mu_
  // held on entry and exit, dropped while they run.
  void run_callbacks_locked(std::unique_lock<std::mutex>& lock);
  void open_segment(std::uint64_t number);  // writer thread (or start())
  void rotate();                            // writer thread
  void close_segment();                     // write-token holder: trims, syncs and closes the open segment
  void note_segment_size() noexcept;        // write-token holder, or under mu_ a side writer or copy_locked(): for stats()
  void sync_segment();                      // write-token holder: fdatasync, and its name if not yet synced
  std::uint64_t request_rotation();         // any thread: returns the new segment's number
  void compactor_loop();
  void run_compaction(std::uint64_t first_kept);

  const std::shared_ptr<FileSystem> fs_;
  std::unique_ptr<DirectoryLock> lock_;
  mutable std::mutex mu_;
  std::condition_variable writer_cv_;   // pending work, stop, sync or rotation requests
  std::condition_variable durable_cv_;  // written_ / rotated_ advanced, a side write ended
  JournalWaiter* waiters_ = nullptr;    // threads asleep in await_locked for a sync (mu_)
  std::string pending_;                 // encoded records awaiting the writer
  std::chrono::steady_clock::time_point pending_since_{};  // when pending_ last became non-empty
  bool writer_asleep_ = false;  // the writer waits with no deadline: an append must wake it
  std::vector<std::uint32_t> pending_ends_;  // end offset of each record in pending_
  Lsn appended_ = 0;
  Lsn written_ = 0;
  Lsn synced_ = 0;
  // written_ and synced_, published after each change under mu_, so that a
  // wait for a record already there (the rule once appends copy their own
  // records) returns without taking mu_ a second time.
  std::atomic<Lsn> written_mark_{0};
  std::atomic<Lsn> synced_mark_{0};
  bool rotate_wanted_ = false;
  std::uint64_t rotated_to_ = 0;  // the segment started by the latest requested rotation
  bool stop_ = false;
  bool closed_ = false;
  bool writer_exited_ = false;
  // Group commit: threads that began waiting since the last batch was taken,
  // and how many the next leader expects back (those the last sync released).
  std::uint32_t arrivals_ = 0;
  std::uint32_t expected_ = 0;
  bool gathering_ = false;  // a leader waits briefly for them; arrivals notify it
  bool writing_ = false;    // the write token: its holder alone touches the segment and spare_ ...
  // ... except while it is in fdatasync (sync_phase_): then one side writer
  // at a time (side_writing_) may append pending records to the segment.
  // The holder ends its sync phase only once no side write is running, and
  // takes side_wrote_ as "written, not covered by my sync".
  bool sync_phase_ = false;
  bool side_writing_ = false;
  bool side_wrote_ = false;
  std::string side_;  // the side writer's batch
  std::exception_ptr error_;
  bool error_delivered_ = false;  // a caller got error_ (close() need not print it)
  std::uint64_t live_ = 0;  // enqueued and not complete/cancelled (mu_)
  std::multimap<Lsn, std::function<void(bool)>> callbacks_;  // on_durable, by the LSN they wait for (mu_)

  // The write-token holder only (the writer thread or a leading waiter).
  std::string spare_;                        // the batch being written
  std::vector<std::uint32_t> spare_ends_;
  bool unsynced_ = false;                    // written bytes not yet fdatasync'd
  std::chrono::steady_clock::time_point next_periodic_sync_ = std::chrono::steady_clock::now();
  std::unique_ptr<AppendFile> segment_file_;
  bool segment_name_unsynced_ = false;  // none mode: the directory was not synced since the segment was created
  std::uint64_t segment_ = 0;
  std::uint64_t segment_size_ = 0;
  // The open segment's number and the bytes written to it, for stats(): its
  // file is longer (the reservation). Relaxed: statistics only.
  std::atomic<std::uint64_t> open_segment_number_{0};
  std::atomic<std::uint64_t> open_segment_bytes_{0};
  std::string segment_path_;

  std::atomic<std::uint64_t> batches_{0}, syncs_{0}, compactions_{0};  // relaxed: statistics
  std::atomic<std::uint64_t> last_sync_ns_{0};
  std::atomic<std::uint64_t> bytes_since_snapshot_{0};  // relaxed: a trigger, not a bound

  std::mutex compact_mu_;
  std::condition_variable compact_cv_;  // with mu_
  bool compact_wanted_ = false;         // mu_
  std::thread writer_;
  std::thread compactor_;
};

}  // namespace ordo::detail
