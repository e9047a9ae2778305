// The journal's writer side: appends, group commit, rotation, durability
// waits, and opening (recovery) — see journal_impl.hpp for the contract and
// docs/journal-format.md for the bytes.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <utility>

#include "journal/format.hpp"
#include "journal/journal_impl.hpp"
#include "journal/posix_file_system.hpp"
#include "journal/reader.hpp"
#include "util/clock.hpp"

namespace ordo {

const char* to_string(Durability d) noexcept {
  switch (d) {
    case Durability::sync: return "sync";
    case Durability::async: return "async";
    case Durability::none: return "none";
  }
  return "?";
}

const char* to_string(RecordType t) noexcept {
  static constexpr const char* kNames[] = {"?",    "ENQUEUE", "START", "CHECKPOINT", "COMPLETE",    "FAIL",
                                           "DEAD", "CANCEL",  "RETRY", "WORKFLOW",   "SNAPSHOT_END"};
  const auto i = static_cast<std::size_t>(t);
  return i < std::size(kNames) ? kNames[i] : "?";
}

std::string RecoveryReport::describe() const {
  std::ostringstream out;
  out << "replayed " << records << " records (" << bytes << " bytes) from " << segments << " segment(s)";
  if (snapshot != 0) out << " after snapshot " << snapshot;
  out << "; " << live_tasks << " live task(s)";
  if (torn_tail) {
    out << "\ntorn tail: " << tail.file << " at offset " << tail.offset << ": " << tail.reason << " (" << tail.bytes
        << " bytes dropped)";
  }
  for (const Damage& d : skipped) {
    out << "\nskipped: " << d.file << " at offset " << d.offset << ": " << d.reason << " (" << d.bytes << " bytes)";
  }
  return out.str();
}

namespace detail {
namespace {

void validate(const JournalOptions& o) {
  if (o.segment_bytes < 4096) throw InvalidArgument("ordo: JournalOptions::segment_bytes must be at least 4096");
  if (o.durability == Durability::async && o.async_interval.count() <= 0) {
    throw InvalidArgument("ordo: JournalOptions::async_interval must be positive in async mode");
  }
}

}  // namespace

JournalImpl::JournalImpl(std::string dir, JournalOptions options, std::shared_ptr<FileSystem> fs)
    : dir_(std::move(dir)), options_(std::move(options)), fs_(std::move(fs)) {
  const bool created = fs_->make_directory(dir_);
  // A new directory's name lives in its parent: unsynced, a power cut may
  // take the whole journal with it, synced segments and all. One that
  // exists may have been made by a process that died before this sync, so
  // it is synced again; but then a parent we may not open (no read
  // permission) is no reason to refuse a journal that opened before.
  try {
    fs_->sync_directory(parent_directory(dir_));
  } catch (const JournalIoError&) {
    if (created) throw;
  }
  lock_ = fs_->lock_directory(dir_);
}

JournalImpl::~JournalImpl() { close(); }

void JournalImpl::recover(const Journal::Replay& replay) {
  wal::ReadResult read = wal::read_directory(*fs_, dir_, options_.tolerate_corruption, report_, replay);
  live_ = report_.live_tasks;
  // Clean up what the format says is obsolete, and cut a torn tail off so
  // that the segment reads clean once it is no longer the last one.
  for (const std::string& name : read.plan.obsolete) fs_->remove(wal::join(dir_, name));
  std::uint64_t next = read.plan.next_segment;
  if (report_.torn_tail && !read.plan.segments.empty()) {
    const std::uint64_t number = read.plan.segments.back();
    const std::string last = wal::join(dir_, wal::file_name(wal::FileKind::segment, number));
    if (read.last_valid_end < wal::kFileHeaderBytes) {
      fs_->remove(last);  // not even its header was whole: the new segment takes its number
      next = number;
    } else {
      fs_->truncate(last, read.last_valid_end);
    }
  }
  fs_->sync_directory(dir_);
  segment_ = next - 1;
}

void JournalImpl::start() {
  open_segment(segment_ + 1);
  writer_ = std::thread([this] { writer_loop(); });
  compactor_ = std::thread([this] { compactor_loop(); });
}

void JournalImpl::open_segment(std::uint64_t number) {
  segment_path_ = wal::join(dir_, wal::file_name(wal::FileKind::segment, number));
  segment_file_ = fs_->create(segment_path_, FileSystem::Create::exclusive);
  unsigned char header[wal::kFileHeaderBytes];
  wal::encode_file_header(header, wal::FileKind::segment, number);
  segment_file_->append(header, sizeof header);
  if (options_.durability != Durability::none) {
    segment_file_->sync();
    fs_->sync_directory(dir_);  // the new name must survive too
  } else {
    segment_name_unsynced_ = true;  // until a sync() or the segment's end
  }
  segment_ = number;
  segment_size_ = wal::kFileHeaderBytes;
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
  sync_segment();
  segment_file_.reset();
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
  const bool was_idle = pending_.empty();
  pending_.append(record);
  pending_ends_.push_back(static_cast<std::uint32_t>(pending_.size()));
  if (type == RecordType::enqueue || type == RecordType::workflow) {
    ++live_;
  } else if ((type == RecordType::complete || type == RecordType::cancel) && live_ > 0) {
    --live_;
  }
  const Lsn lsn = ++appended_;
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

void JournalImpl::rethrow_error_locked() {
  error_delivered_ = true;
  std::rethrow_exception(error_);
}

void JournalImpl::wait_durable(Lsn lsn) {
  std::unique_lock lock(mu_);
  await_locked(lock, lsn, options_.durability == Durability::sync);
}

void JournalImpl::wait_written(Lsn lsn) {
  std::unique_lock lock(mu_);
  await_locked(lock, lsn, false);
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
      if (gathering_) writer_cv_.notify_all();  // a leader gathering its group counts arrivals
    }
    durable_cv_.wait(lock);
  }
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
  lock.unlock();
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
      lock.lock();
      written_ = std::max(written_, last);
      sync_phase_ = true;
      durable_cv_.notify_all();
      lock.unlock();
      const std::uint64_t t0 = steady_now_ns();
      sync_segment();
      last_sync_ns_.store(steady_now_ns() - t0, std::memory_order_relaxed);
      syncs_.fetch_add(1, std::memory_order_relaxed);
      lock.lock();
      durable_cv_.wait(lock, [&] { return !side_writing_; });
      sync_phase_ = false;
      unsynced_ = std::exchange(side_wrote_, false);  // what was written beside the sync is not covered by it
      lock.unlock();
      synced_now = true;
      next_periodic_sync_ = std::chrono::steady_clock::now() + options_.async_interval;
    }
    if (rotate_now) rotate();
  } catch (...) {
    lock.lock();
    if (sync_phase_) {
      durable_cv_.wait(lock, [&] { return !side_writing_; });
      sync_phase_ = false;
    }
    if (!error_) error_ = std::current_exception();
    writing_ = false;
    durable_cv_.notify_all();
    writer_cv_.notify_all();  // the writer calls the callbacks back, with false
    return;
  }
  spare_.clear();
  spare_ends_.clear();
  lock.lock();
  written_ = std::max(written_, last);
  if (synced_now || !unsynced_) synced_ = std::max(synced_, last);
  if (synced_now) expected_ = released;
  if (rotate_now) rotated_to_ = segment_;
  // Checked by whoever wrote: in sync mode the writer thread may never write
  // at all, every record being led by its waiting appender.
  if (!compact_wanted_ && options_.compact_after_bytes != 0 &&
      bytes_since_snapshot_.load(std::memory_order_relaxed) > options_.compact_after_bytes) {
    compact_wanted_ = true;
    compact_cv_.notify_one();
  }
  writing_ = false;
  durable_cv_.notify_all();
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
    written_ = std::max(written_, last);
    side_wrote_ = true;
    batches_.fetch_add(1, std::memory_order_relaxed);
    bytes_since_snapshot_.fetch_add(side_.size(), std::memory_order_relaxed);
  }
  side_.clear();
  durable_cv_.notify_all();  // the waiters it wrote for, and the token holder waiting to end its sync phase
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
  durable_cv_.notify_all();
  run_callbacks_locked(lock);  // what is left will never be durable
}

void JournalImpl::compactor_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    compact_cv_.wait(lock, [&] { return compact_wanted_ || stop_; });
    if (stop_) return;
    lock.unlock();
    try {
      compact();
    } catch (const std::exception& e) {
      // A failed background compaction loses nothing: the old files stay.
      // (One cut short by close() is not worth a word.)
      std::lock_guard check(mu_);
      if (!stop_) std::fprintf(stderr, "ordo: background compaction of %s failed: %s\n", dir_.c_str(), e.what());
    }
    lock.lock();
    compact_wanted_ = false;
  }
}

void JournalImpl::compact() {
  std::lock_guard serial(compact_mu_);
  const std::uint64_t first_kept = request_rotation();
  bytes_since_snapshot_.store(0, std::memory_order_relaxed);
  if (options_.compaction_hook) options_.compaction_hook(1);
  run_compaction(first_kept);
  compactions_.fetch_add(1, std::memory_order_relaxed);
}

void JournalImpl::close() noexcept {
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    closed_ = true;
    stop_ = true;
  }
  writer_cv_.notify_all();
  compact_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  if (compactor_.joinable()) compactor_.join();
  segment_file_.reset();
  if (error_ && !error_delivered_) {  // nobody was told: the appends it concerns were not waited for
    try {
      std::rethrow_exception(error_);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ordo: journal %s closed after an I/O error: %s\n", dir_.c_str(), e.what());
    }
  }
}

JournalStats JournalImpl::stats() const {
  JournalStats s;
  for (const std::string& name : fs_->list(dir_)) {
    auto parsed = wal::parse_file_name(name);
    if (!parsed) continue;
    // A background compaction may delete a file between the listing and here.
    const std::optional<std::uint64_t> size = fs_->size_of(wal::join(dir_, name));
    if (!size) continue;
    if (parsed->first == wal::FileKind::segment) ++s.segments;
    s.bytes += *size;
  }
  {
    std::lock_guard lock(mu_);
    s.appended = appended_;
    s.live_tasks = live_;
  }
  s.batches = batches_.load(std::memory_order_relaxed);
  s.syncs = syncs_.load(std::memory_order_relaxed);
  s.compactions = compactions_.load(std::memory_order_relaxed);
  s.last_sync_us = static_cast<double>(last_sync_ns_.load(std::memory_order_relaxed)) / 1e3;
  return s;
}

}  // namespace detail

Journal::Journal(std::unique_ptr<detail::JournalImpl> impl) : impl_(std::move(impl)) {}
Journal::~Journal() = default;

std::unique_ptr<Journal> Journal::open(const std::string& directory, JournalOptions options, const Replay& replay) {
  detail::validate(options);
  auto impl = std::make_unique<detail::JournalImpl>(directory, std::move(options));
  impl->recover(replay);
  impl->start();
  return std::unique_ptr<Journal>(new Journal(std::move(impl)));
}

RecoveryReport Journal::read(const std::string& directory, const Replay& replay, bool tolerate_corruption) {
  RecoveryReport report;
  detail::wal::read_directory(*detail::posix_file_system(), directory, tolerate_corruption, report, replay);
  return report;
}

Lsn Journal::append(RecordType type, std::uint64_t task, std::span<const std::byte> body) {
  return impl_->append(type, task, body);
}
void Journal::wait_durable(Lsn lsn) { impl_->wait_durable(lsn); }
void Journal::wait_written(Lsn lsn) { impl_->wait_written(lsn); }
void Journal::append_durable(RecordType type, std::uint64_t task, std::span<const std::byte> body) {
  impl_->wait_durable(impl_->append(type, task, body));
}
bool Journal::on_durable(Lsn lsn, std::function<void(bool)> fn) { return impl_->on_durable(lsn, std::move(fn)); }
void Journal::sync() { impl_->sync(); }
void Journal::compact() { impl_->compact(); }
JournalStats Journal::stats() const { return impl_->stats(); }
const RecoveryReport& Journal::recovery() const noexcept { return impl_->report_; }
const std::string& Journal::directory() const noexcept { return impl_->dir_; }

}  // namespace ordo
