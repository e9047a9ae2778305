// The journal's writer side: appends, group commit led by waiting appenders,
// the writer thread (unwaited records, periodic sync, rotation, on_durable
// callbacks) and segment files. See journal_impl.hpp for the contract and
// docs/journal-format.md for the bytes; journal.cpp opens and closes.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "journal/format.hpp"
#include "journal/journal_impl.hpp"
#include "journal/posix_file_system.hpp"
#include "util/clock.hpp"

namespace ordo::detail {
void JournalImpl::open_segment(std::uint64_t number) {
  segment_path_ = wal::join(dir_, wal::file_name(wal::FileKind::segment, number));
  segment_file_ = fs_->create(segment_path_, FileSystem::Create::exclusive);
  unsigned char header[wal::kFileHeaderBytes];
  wal::encode_file_header(header, wal::FileKind::segment, number);
  segment_file_->append(header, sizeof header);
  // The segment's space is taken now, so that the syncs of its records
  // commit no change of size: on ext4 an fdatasync after an append that
  // grew the file costs about half again as much as one after a write
  // into reserved space. Trimmed when the segment is closed.
  // Outside sync mode its records are copied into a mapping of that space
  // rather than written: no system call per batch. Not in sync mode, where
  // every batch is synced: a write into a page the sync just cleaned faults
  // and costs more than the write (durable_enqueue/ordo_sync 8% slower).
  segment_file_->reserve(std::min(options_.segment_bytes, kSegmentReservation),
                         options_.durability != Durability::sync);
  if (options_.durability != Durability::none) {
    segment_file_->sync();
    fs_->sync_directory(dir_);  // the new name must survive too
  } else {
    segment_name_unsynced_ = true;  // until a sync() or the segment's end
  }
  segment_ = number;
  segment_size_ = wal::kFileHeaderBytes;
  note_segment_size();
}

void JournalImpl::note_segment_size() noexcept {
  // relaxed: statistics for stats(), which may read a segment's number with
  // the size of the one before it for a moment.
  open_segment_number_.store(segment_, std::memory_order_relaxed);
  open_segment_bytes_.store(segment_size_, std::memory_order_relaxed);
}

void JournalImpl::close_segment() {
  segment_file_->trim();  // the unused reservation: a closed segment ends with its last record
  sync_segment();
  segment_file_.reset();
}

void JournalImpl::sync_segment() {
  segment_file_->sync();
  if (segment_name_unsynced_) {
    fs_->sync_directory(dir_);
    segment_name_unsynced_ = false;
  }
}

void JournalImpl::rotate() {
  // Every mode, `none` included, leaves a closed segment synced, name and
  // all: a power cut can then only cut the tail of the last segment, never
  // leave a hole in the middle that would make the journal unreadable.
  close_segment();
  open_segment(segment_ + 1);
}

Lsn JournalImpl::append(RecordType type, std::uint64_t task, std::span<const std::byte> body) {
  if (body.size() + 8 > wal::kMaxPayload) {
    throw InvalidArgument("ordo: a journal record payload is limited to 64 MiB (got " + std::to_string(body.size() + 8) +
                          " bytes)");
  }
  const auto length = static_cast<std::uint32_t>(body.size() + 8);
  // Encoded outside the lock: appenders contend only for the copy.
  thread_local std::string record;
  record.resize(wal::kRecordHeaderBytes + length);
  auto* p = reinterpret_cast<unsigned char*>(record.data());
  wal::put64(p + wal::kRecordHeaderBytes, task);
  if (!body.empty()) std::memcpy(p + wal::kRecordHeaderBytes + 8, body.data(), body.size());
  wal::encode_record_header(p, type, p + wal::kRecordHeaderBytes, length);
  std::unique_lock lock(mu_);
  if (closed_) throw Error("ordo: append to a closed journal (" + dir_ + ")");
  if (error_) rethrow_error_locked();
  if (type == RecordType::enqueue || type == RecordType::workflow) {
    ++live_;
  } else if ((type == RecordType::complete || type == RecordType::cancel) && live_ > 0) {
    --live_;
  }
  const Lsn lsn = ++appended_;
  const bool was_idle = pending_.empty();
  if (was_idle && copy_now_locked(record.size())) {
    copy_locked(lock, record, lsn);
    return lsn;
  }
  pending_.append(record);
  pending_ends_.push_back(static_cast<std::uint32_t>(pending_.size()));
  // Nobody is woken: a record is waited for by its appender, who leads the
  // write of everything pending, or else the writer thread takes it within
  // kUnwaitedWriteDelay. A wake-up per append cost more than the append.
  bool wake = false;
  if (was_idle) {
    pending_since_ = std::chrono::steady_clock::now();
    wake = std::exchange(writer_asleep_, false);
  }
  lock.unlock();
  if (wake) writer_cv_.notify_all();  // it sets its timer for this record
  return lsn;
}

bool JournalImpl::copy_now_locked(std::size_t bytes) const noexcept {
  // Outside sync mode only: there a record must be synced before its
  // appender returns, which this path would not save it. Nobody else may be
  // at the segment: no token holder, or one in fdatasync with no side
  // writer beside it (a copy into the mapping does not disturb the sync).
  // In this order: the segment's fields are the token holder's to change
  // until that is known.
  return options_.durability != Durability::sync && (!writing_ || (sync_phase_ && !side_writing_)) && segment_file_ &&
         segment_size_ + bytes <= options_.segment_bytes && segment_file_->copies(bytes);
}

void JournalImpl::copy_locked(std::unique_lock<std::mutex>& lock, const std::string& record, Lsn lsn) {
  try {
    segment_file_->append(record.data(), record.size());
  } catch (...) {
    if (!error_) error_ = std::current_exception();
    notify_durable(lock);
    writer_cv_.notify_all();  // the writer calls the callbacks back, with false
    rethrow_error_locked();
  }
  segment_size_ += record.size();
  note_segment_size();
  // Every record before it is written too: pending_ was empty, and a token
  // holder in its sync phase counted its batch written before that phase.
  written_ = lsn;
  publish_marks_locked();
  if (writing_) {
    side_wrote_ = true;  // the holder's sync may not cover it
  } else {
    unsynced_ = true;
  }
  batches_.fetch_add(1, std::memory_order_relaxed);
  bytes_since_snapshot_.fetch_add(record.size(), std::memory_order_relaxed);
  want_compaction_if_due_locked();
  // A writer asleep for good must set its timer for the periodic sync of
  // what this copy left unsynced (none mode has no such sync).
  if (options_.durability != Durability::none && std::exchange(writer_asleep_, false)) writer_cv_.notify_all();
}

void JournalImpl::want_compaction_if_due_locked() noexcept {
  // Checked by whoever wrote: in sync mode the writer thread may never write
  // at all, every record being led by its waiting appender, and outside it
  // every record may be copied by its own appender.
  if (!compact_wanted_ && options_.compact_after_bytes != 0 &&
      bytes_since_snapshot_.load(std::memory_order_relaxed) > options_.compact_after_bytes) {
    compact_wanted_ = true;
    compact_cv_.notify_one();
  }
}

void JournalImpl::rethrow_error_locked() {
  error_delivered_ = true;
  std::rethrow_exception(error_);
}

void JournalImpl::wait_durable(Lsn lsn) {
  const bool need_sync = options_.durability == Durability::sync;
  // acquire: pairs with publish_marks_locked()'s release stores.
  if ((need_sync ? synced_mark_ : written_mark_).load(std::memory_order_acquire) >= lsn) return;
  std::unique_lock lock(mu_);
  await_locked(lock, lsn, need_sync);
}

void JournalImpl::wait_written(Lsn lsn) {
  if (written_mark_.load(std::memory_order_acquire) >= lsn) return;  // acquire: as in wait_durable
  std::unique_lock lock(mu_);
  await_locked(lock, lsn, false);
}

void JournalImpl::publish_marks_locked() noexcept {
  // release: pairs with the waits' acquire loads; what the marks cover was
  // written (copied, or its write returned) before they moved.
  written_mark_.store(written_, std::memory_order_release);
  synced_mark_.store(synced_, std::memory_order_release);
}

bool JournalImpl::on_durable(Lsn lsn, std::function<void(bool)> fn) {
  std::unique_lock lock(mu_);
  if (durable_mark_locked() >= lsn) return false;
  if (error_) rethrow_error_locked();
  if (writer_exited_) throw Error("ordo: on_durable on a closed journal (" + dir_ + ")");
  callbacks_.emplace(lsn, std::move(fn));
  writer_cv_.notify_all();  // in sync mode the writer syncs for it at once
  return true;
}

void JournalImpl::run_callbacks_locked(std::unique_lock<std::mutex>& lock) {
  const bool never = error_ != nullptr || writer_exited_;
  const auto end = never ? callbacks_.end() : callbacks_.upper_bound(durable_mark_locked());
  if (callbacks_.begin() == end) return;
  std::vector<std::function<void(bool)>> due;
  for (auto it = callbacks_.begin(); it != end; ++it) due.push_back(std::move(it->second));
  callbacks_.erase(callbacks_.begin(), end);
  lock.unlock();
  for (auto& fn : due) fn(!never);
  lock.lock();
}

void JournalImpl::sync() {
  std::unique_lock lock(mu_);
  if (closed_) return;
  await_locked(lock, appended_, true);
}

// Group commit without a hand-off: a waiting thread whose record is not yet
// durable and finds nobody writing becomes the leader and writes (and
// syncs) everything pending itself; the others wait for it, and the next
// leader takes whatever piled up meanwhile. The writer thread only writes
// what nobody waits for.
void JournalImpl::await_locked(std::unique_lock<std::mutex>& lock, Lsn lsn, bool need_sync) {
  bool arrived = false;
  for (;;) {
    if ((need_sync ? synced_ : written_) >= lsn) return;
    if (error_) rethrow_error_locked();
    if (!writing_ && !writer_exited_) {
      flush_locked(lock, need_sync, true, /*written_only=*/!need_sync);
      continue;
    }
    // The token holder is in fdatasync: one who only needs its record
    // written (a task's START) writes what is pending beside it, instead of
    // waiting for a sync it does not need.
    if (!need_sync && sync_phase_ && !side_writing_ && !pending_.empty() &&
        segment_size_ + pending_.size() <= options_.segment_bytes) {
      side_write_locked(lock);
      continue;
    }
    if (!arrived && need_sync) {  // one arrival per wait, for the batch after the one in flight
      arrived = true;
      ++arrivals_;
      // A leader gathering its group waits for the whole of it: only the
      // arrival that completes the group wakes it (one wake-up per arrival
      // cost each batch a context switch per member on two cores).
      if (gathering_ && arrivals_ + 1 >= expected_) writer_cv_.notify_all();
    }
    if (!need_sync) {
      // Written-only waiters (async mode, a START) share one broadcast:
      // their batches take microseconds, and a wake-up each, even outside
      // mu_, cost them more than the broadcast's wasted ones (measured:
      // append/ordo_async 1.1-1.3x slower with a parker each).
      durable_cv_.wait(lock);
      continue;
    }
    // A sync waiter sleeps on its own parker, listed with what it waits
    // for: a batch's writer wakes exactly the waiters it satisfied (and one
    // who must lead next), and those return without taking mu_ again. A
    // broadcast woke every waiter after every sync, those waiting for the
    // next one included, and each of them then queued for mu_.
    JournalWaiter self{lsn, Parker::current()};
    self.next = waiters_;
    waiters_ = &self;
    lock.unlock();
    // acquire: pairs with notify_durable()'s release store of the verdict.
    while (self.verdict.load(std::memory_order_acquire) == JournalWaiter::kWaiting) self.parker->park();
    if (self.verdict.load(std::memory_order_relaxed) == JournalWaiter::kDone) return;  // with mu_ not held
    lock.lock();
  }
}

void JournalImpl::notify_durable(std::unique_lock<std::mutex>& lock) noexcept {
  bool leader_wanted = !writing_ && !writer_exited_;
  const bool everyone = error_ != nullptr || writer_exited_;
  // Woken after mu_ is dropped: a futex wake per waiter inside the critical
  // section kept appenders out of it for as long (async batches are short).
  constexpr std::size_t kBatchedWakes = 16;
  Parker* wake[kBatchedWakes];
  std::size_t waking = 0;
  JournalWaiter** link = &waiters_;
  while (JournalWaiter* w = *link) {
    int verdict = JournalWaiter::kWaiting;
    if (synced_ >= w->lsn) {
      verdict = JournalWaiter::kDone;
    } else if (everyone || leader_wanted) {
      verdict = JournalWaiter::kLookAgain;
      leader_wanted = false;
    }
    if (verdict == JournalWaiter::kWaiting) {
      link = &w->next;
      continue;
    }
    *link = w->next;
    // Read before the verdict: once it is set the waiter may return and its
    // frame be gone; a parker lives as long as the process.
    Parker* const parker = w->parker;
    // release: publishes the watermarks (or error_) to the waiter's acquire load.
    w->verdict.store(verdict, std::memory_order_release);
    if (waking < kBatchedWakes) {
      wake[waking++] = parker;
    } else {
      parker->unpark();
    }
  }
  durable_cv_.notify_all();  // written-only waiters, request_rotation(), a token holder waiting for a side write
  if (waking == 0) return;
  lock.unlock();
  for (std::size_t i = 0; i < waking; ++i) wake[i]->unpark();  // a stale permit at worst: park() callers loop
  lock.lock();
}

void JournalImpl::flush_locked(std::unique_lock<std::mutex>& lock, bool sync, bool leader, bool written_only) {
  writing_ = true;
  if (leader && sync && options_.durability == Durability::sync && expected_ > 1) {
    // The threads the last sync released are appending again: an fdatasync
    // shared by all of them beats one now and another for the stragglers.
    // Bounded by a fraction of what a sync costs.
    const auto patience = std::chrono::nanoseconds(
        std::min<std::uint64_t>(last_sync_ns_.load(std::memory_order_relaxed) / 2, 250'000));
    gathering_ = true;
    writer_cv_.wait_for(lock, patience, [&] { return stop_ || arrivals_ + 1 >= expected_; });
    gathering_ = false;
  }
  spare_.swap(pending_);
  spare_ends_.swap(pending_ends_);
  const Lsn last = appended_;
  // One who needs its records only written (a worker writing a task's
  // START) never takes on the periodic sync or a requested rotation: they
  // are the writer thread's (woken below), so no worker waits on the disk.
  const bool rotate_now = !written_only && std::exchange(rotate_wanted_, false);
  const std::uint32_t released = arrivals_ + (leader && sync ? 1 : 0);  // the sync waiters this batch will release
  arrivals_ = 0;
  // With nothing to write and nothing to rotate, the holder keeps the lock
  // until its sync phase (or its release): an append then never finds it in
  // a write phase, so outside sync mode it copies its record itself and
  // returns with it written, instead of leaving it pending (up to
  // kUnwaitedWriteDelay) behind a periodic sync that had nothing to write.
  if (!spare_.empty() || rotate_now) lock.unlock();
  bool synced_now = false;
  try {
    if (!spare_.empty()) {
      write_batch(spare_, spare_ends_);
      unsynced_ = true;
    }
    const auto now = std::chrono::steady_clock::now();
    if (!written_only && options_.durability != Durability::none && unsynced_ && now >= next_periodic_sync_) sync = true;
    if (sync && unsynced_) {
      // Written: those who wait only for that need not wait for the
      // fdatasync too, and may write beside it (side_write_locked).
      if (!lock.owns_lock()) lock.lock();
      written_ = std::max(written_, last);
      publish_marks_locked();
      sync_phase_ = true;
      notify_durable(lock);
      lock.unlock();
      const std::uint64_t t0 = steady_now_ns();
      sync_segment();
      last_sync_ns_.store(steady_now_ns() - t0, std::memory_order_relaxed);
      syncs_.fetch_add(1, std::memory_order_relaxed);
      lock.lock();
      durable_cv_.wait(lock, [&] { return !side_writing_; });
      sync_phase_ = false;
      unsynced_ = std::exchange(side_wrote_, false);  // what was written beside the sync is not covered by it
      synced_now = true;
      next_periodic_sync_ = std::chrono::steady_clock::now() + options_.async_interval;
      // Kept to the release, as above: past its sync phase, the holder
      // would otherwise make appends wait that could copy.
    }
    if (rotate_now) {
      if (lock.owns_lock()) lock.unlock();
      rotate();
    }
  } catch (...) {
    if (!lock.owns_lock()) lock.lock();
    if (sync_phase_) {
      durable_cv_.wait(lock, [&] { return !side_writing_; });
      sync_phase_ = false;
    }
    if (!error_) error_ = std::current_exception();
    writing_ = false;
    notify_durable(lock);
    writer_cv_.notify_all();  // the writer calls the callbacks back, with false
    return;
  }
  spare_.clear();
  spare_ends_.clear();
  if (!lock.owns_lock()) lock.lock();
  written_ = std::max(written_, last);
  if (synced_now || !unsynced_) synced_ = std::max(synced_, last);
  publish_marks_locked();
  if (synced_now) expected_ = released;
  if (rotate_now) rotated_to_ = segment_;
  want_compaction_if_due_locked();
  writing_ = false;
  notify_durable(lock);
  writer_cv_.notify_all();  // the writer may be waiting for the token, or have callbacks to run
}

void JournalImpl::side_write_locked(std::unique_lock<std::mutex>& lock) {
  side_writing_ = true;
  side_.swap(pending_);
  pending_ends_.clear();
  const Lsn last = appended_;
  // Stable until side_writing_ is false again: the token holder, in its
  // sync phase, neither writes nor rotates before it has seen that.
  AppendFile* const file = segment_file_.get();
  lock.unlock();
  std::exception_ptr failed;
  try {
    file->append(side_.data(), side_.size());
  } catch (...) {
    failed = std::current_exception();
  }
  lock.lock();
  side_writing_ = false;
  if (failed) {
    if (!error_) error_ = failed;
  } else {
    segment_size_ += side_.size();
    note_segment_size();
    written_ = std::max(written_, last);
    publish_marks_locked();
    side_wrote_ = true;
    batches_.fetch_add(1, std::memory_order_relaxed);
    bytes_since_snapshot_.fetch_add(side_.size(), std::memory_order_relaxed);
  }
  side_.clear();
  notify_durable(lock);  // the waiters it wrote for, and the token holder waiting to end its sync phase
  writer_cv_.notify_all();   // callbacks that became due
}

std::uint64_t JournalImpl::request_rotation() {
  std::unique_lock lock(mu_);
  if (error_) rethrow_error_locked();
  if (stop_) throw Error("ordo: journal " + dir_ + " is closing: no compaction");
  const std::uint64_t before = rotated_to_;
  rotate_wanted_ = true;
  writer_cv_.notify_one();
  durable_cv_.wait(lock, [&] { return error_ || writer_exited_ || rotated_to_ != before; });
  if (error_) rethrow_error_locked();
  if (rotated_to_ == before) throw Error("ordo: journal " + dir_ + " is closing: no compaction");
  return rotated_to_;
}

void JournalImpl::write_batch(const std::string& batch, const std::vector<std::uint32_t>& ends) {
  // Rotate between records, before one that would take the segment past its
  // size (a record bigger than a segment gets one of its own).
  std::size_t from = 0;
  std::size_t i = 0;
  while (from < batch.size()) {
    std::size_t to = from;
    while (i < ends.size() && (to == from || segment_size_ + (ends[i] - from) <= options_.segment_bytes)) {
      if (to == from && segment_size_ + (ends[i] - from) > options_.segment_bytes &&
          segment_size_ > wal::kFileHeaderBytes) {
        break;  // even the first record does not fit: rotate first
      }
      to = ends[i++];
    }
    if (to == from) {
      rotate();
      continue;
    }
    segment_file_->append(batch.data() + from, to - from);
    segment_size_ += to - from;
    note_segment_size();
    from = to;
    if (from < batch.size()) rotate();
  }
  batches_.fetch_add(1, std::memory_order_relaxed);
  bytes_since_snapshot_.fetch_add(batch.size(), std::memory_order_relaxed);
}

void JournalImpl::writer_loop() {
  // Writes what nobody waits for (waiters lead their own writes), rotates
  // on request, makes the periodic sync, and the last flush when stopping.
  // Token-holder fields (unsynced_, next_periodic_sync_) are read only
  // while nobody holds the token: mu_ orders them after its release.
  std::unique_lock lock(mu_);
  bool lingered = false;
  // In sync mode an on_durable callback is a waiter: it gets its sync now.
  auto callback_waits = [&] { return !callbacks_.empty() && options_.durability == Durability::sync; };
  auto has_work = [&] {
    return stop_ || rotate_wanted_ || callback_waits() ||
           (!pending_.empty() && std::chrono::steady_clock::now() >= pending_since_ + kUnwaitedWriteDelay);
  };
  for (;;) {
    if (writing_) {
      writer_cv_.wait(lock, [&] { return !writing_; });
      continue;
    }
    if (error_) break;
    if (!callbacks_.empty() && callbacks_.begin()->first <= durable_mark_locked()) {
      run_callbacks_locked(lock);
      continue;
    }
    const bool periodic = options_.durability != Durability::none && unsynced_;
    if (!has_work() && !(periodic && std::chrono::steady_clock::now() >= next_periodic_sync_)) {
      // Each wake-up goes round the loop: the deadlines may have moved.
      auto due = std::chrono::steady_clock::time_point::max();
      if (periodic) due = next_periodic_sync_;  // a copy: a leader may move it while we wait
      if (!pending_.empty()) due = std::min(due, pending_since_ + kUnwaitedWriteDelay);
      if (due != std::chrono::steady_clock::time_point::max()) {
        lingered = false;
        writer_cv_.wait_until(lock, due);
      } else if (!lingered) {
        // Idle for now: linger one delay before sleeping for good, so that
        // a busy journal's appends seldom have to wake the writer.
        lingered = true;
        writer_cv_.wait_for(lock, kUnwaitedWriteDelay);
      } else {
        writer_asleep_ = true;  // the next append that finds nothing pending wakes it
        writer_cv_.wait(lock);
        writer_asleep_ = false;
      }
      continue;
    }
    const bool stopping = stop_;
    flush_locked(lock, stopping || callback_waits(), false);
    if (error_) break;
    if (stopping && pending_.empty() && !unsynced_) break;
  }
  writer_exited_ = true;
  notify_durable(lock);
  run_callbacks_locked(lock);  // what is left will never be durable
}

}  // namespace ordo::detail
