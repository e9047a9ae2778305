// The journal's writer side: appends, group commit, rotation, durability
// waits, and opening (recovery) — see journal_impl.hpp for the contract and
// docs/journal-format.md for the bytes.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <utility>

#include "journal_format.hpp"
#include "journal_impl.hpp"
#include "journal_reader.hpp"

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

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

void validate(const JournalOptions& o) {
  if (o.segment_bytes < 4096) throw InvalidArgument("ordo: JournalOptions::segment_bytes must be at least 4096");
  if (o.durability == Durability::async && o.async_interval.count() <= 0) {
    throw InvalidArgument("ordo: JournalOptions::async_interval must be positive in async mode");
  }
}

}  // namespace

JournalImpl::JournalImpl(std::string dir, JournalOptions options)
    : dir_(std::move(dir)), options_(std::move(options)), lock_((wal::make_directory(dir_), dir_)) {}

JournalImpl::~JournalImpl() { close(); }

void JournalImpl::recover(const Journal::Replay& replay) {
  wal::ReadResult read = wal::read_directory(dir_, options_.tolerate_corruption, report_, replay);
  live_ = report_.live_tasks;
  // Clean up what the format says is obsolete, and cut a torn tail off so
  // that the segment reads clean once it is no longer the last one.
  for (const std::string& name : read.plan.obsolete) wal::remove_file(wal::join(dir_, name));
  std::uint64_t next = read.plan.next_segment;
  if (report_.torn_tail && !read.plan.segments.empty()) {
    const std::uint64_t number = read.plan.segments.back();
    const std::string last = wal::join(dir_, wal::file_name(wal::FileKind::segment, number));
    if (read.last_valid_end < wal::kFileHeaderBytes) {
      wal::remove_file(last);  // not even its header was whole: the new segment takes its number
      next = number;
    } else {
      wal::truncate_file(last, read.last_valid_end);
    }
  }
  wal::fsync_directory(dir_);
  segment_ = next - 1;
}

void JournalImpl::start() {
  open_segment(segment_ + 1);
  writer_ = std::thread([this] { writer_loop(); });
  compactor_ = std::thread([this] { compactor_loop(); });
}

void JournalImpl::open_segment(std::uint64_t number) {
  segment_path_ = wal::join(dir_, wal::file_name(wal::FileKind::segment, number));
  fd_ = ::open(segment_path_.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) wal::throw_io("open", segment_path_);
  unsigned char header[wal::kFileHeaderBytes];
  wal::encode_file_header(header, wal::FileKind::segment, number);
  wal::write_all(fd_, header, sizeof header, segment_path_);
  if (options_.durability != Durability::none) {
    wal::sync_data(fd_, segment_path_);
    wal::fsync_directory(dir_);  // the new name must survive too
  }
  segment_ = number;
  segment_size_ = wal::kFileHeaderBytes;
}

void JournalImpl::rotate() {
  if (options_.durability != Durability::none) wal::sync_data(fd_, segment_path_);
  ::close(fd_);
  fd_ = -1;
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
  if (error_) std::rethrow_exception(error_);
  const bool was_idle = pending_.empty();
  pending_.append(record);
  pending_ends_.push_back(static_cast<std::uint32_t>(pending_.size()));
  if (type == RecordType::enqueue || type == RecordType::workflow) {
    ++live_;
  } else if ((type == RecordType::complete || type == RecordType::cancel) && live_ > 0) {
    --live_;
  }
  const Lsn lsn = ++appended_;
  const bool wake = was_idle || gathering_;
  lock.unlock();
  if (wake) writer_cv_.notify_one();  // a busy writer picks it up with its next batch
  return lsn;
}

void JournalImpl::wait_durable(Lsn lsn) {
  std::unique_lock lock(mu_);
  const bool need_sync = options_.durability == Durability::sync;
  if (need_sync && synced_ < lsn && sync_wanted_ < lsn) {
    // In sync mode the writer syncs for waiters only: records nobody waits
    // for (a task's START or COMPLETE) ride along with the next sync, or the
    // periodic one, instead of each costing an fdatasync of their own.
    sync_wanted_ = lsn;
    writer_cv_.notify_one();
  }
  ++waiters_;
  durable_cv_.wait(lock, [&] { return error_ || (need_sync ? synced_ : written_) >= lsn; });
  --waiters_;
  if (error_ && (need_sync ? synced_ : written_) < lsn) std::rethrow_exception(error_);
}

void JournalImpl::sync() {
  std::unique_lock lock(mu_);
  if (closed_) return;
  const Lsn target = appended_;
  if (synced_ >= target) return;
  sync_wanted_ = std::max(sync_wanted_, target);
  writer_cv_.notify_one();
  durable_cv_.wait(lock, [&] { return error_ || synced_ >= target; });
  if (error_ && synced_ < target) std::rethrow_exception(error_);
}

std::uint64_t JournalImpl::request_rotation() {
  std::unique_lock lock(mu_);
  if (error_) std::rethrow_exception(error_);
  if (stop_) throw Error("ordo: journal " + dir_ + " is closing: no compaction");
  const std::uint64_t before = rotated_to_;
  rotate_wanted_ = true;
  writer_cv_.notify_one();
  durable_cv_.wait(lock, [&] { return error_ || writer_exited_ || rotated_to_ != before; });
  if (error_) std::rethrow_exception(error_);
  if (rotated_to_ == before) throw Error("ordo: journal " + dir_ + " is closing: no compaction");
  return rotated_to_;
}

void JournalImpl::fail(std::exception_ptr e) noexcept {
  std::lock_guard lock(mu_);
  if (!error_) error_ = e;
  durable_cv_.notify_all();
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
    wal::write_all(fd_, batch.data() + from, to - from, segment_path_);
    segment_size_ += to - from;
    from = to;
    if (from < batch.size()) rotate();
  }
  batches_.fetch_add(1, std::memory_order_relaxed);
  bytes_since_snapshot_.fetch_add(batch.size(), std::memory_order_relaxed);
}

void JournalImpl::writer_loop() {
  std::string batch;
  std::vector<std::uint32_t> ends;
  bool unsynced = false;  // written bytes not yet fdatasync'd
  auto next_async_sync = std::chrono::steady_clock::now() + options_.async_interval;
  std::unique_lock lock(mu_);
  for (;;) {
    auto has_work = [&] {
      return !pending_.empty() || stop_ || rotate_wanted_ || sync_wanted_ > synced_;
    };
    if (!has_work()) {
      if (options_.durability != Durability::none && unsynced) {  // the periodic sync
        writer_cv_.wait_until(lock, next_async_sync, has_work);
      } else {
        writer_cv_.wait(lock, has_work);
      }
    }
    if (options_.durability == Durability::sync && !stop_ && !pending_ends_.empty() &&
        pending_ends_.size() < expected_) {
      // The threads the last sync released are appending again; an fdatasync
      // shared by all of them beats one now and another for the stragglers.
      // Waiting is bounded by a fraction of what a sync costs.
      const auto patience = std::chrono::nanoseconds(
          std::min<std::uint64_t>(last_sync_ns_.load(std::memory_order_relaxed) / 4, 100'000));
      gathering_ = true;
      writer_cv_.wait_for(lock, patience, [&] { return stop_ || pending_ends_.size() >= expected_; });
      gathering_ = false;
    }
    batch.swap(pending_);
    ends.swap(pending_ends_);
    const Lsn last = appended_;
    const bool rotate_now = std::exchange(rotate_wanted_, false);
    const bool stopping = stop_;
    bool sync_now = sync_wanted_ > synced_ || stopping;
    lock.unlock();
    try {
      if (!batch.empty()) {
        write_batch(batch, ends);
        unsynced = true;
      }
      const auto now = std::chrono::steady_clock::now();
      if (options_.durability != Durability::none && unsynced && now >= next_async_sync) sync_now = true;
      if (sync_now && unsynced) {
        const std::uint64_t t0 = now_ns();
        wal::sync_data(fd_, segment_path_);
        last_sync_ns_.store(now_ns() - t0, std::memory_order_relaxed);
        syncs_.fetch_add(1, std::memory_order_relaxed);
        unsynced = false;
        next_async_sync = std::chrono::steady_clock::now() + options_.async_interval;
      }
      if (rotate_now) rotate();
    } catch (...) {
      fail(std::current_exception());
      lock.lock();
      writer_exited_ = true;
      return;  // appends now throw; waiters are woken with the error
    }
    batch.clear();
    ends.clear();
    lock.lock();
    written_ = last;
    if (!unsynced) synced_ = last;
    expected_ = waiters_;
    if (rotate_now) rotated_to_ = segment_;
    durable_cv_.notify_all();
    if (stopping && pending_.empty()) {
      writer_exited_ = true;
      durable_cv_.notify_all();
      return;
    }
    if (!compact_wanted_ && options_.compact_after_bytes != 0 &&
        bytes_since_snapshot_.load(std::memory_order_relaxed) > options_.compact_after_bytes) {
      compact_wanted_ = true;
      compact_cv_.notify_one();
    }
  }
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
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (error_) {
    try {
      std::rethrow_exception(error_);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ordo: journal %s closed after an I/O error: %s\n", dir_.c_str(), e.what());
    }
  }
}

JournalStats JournalImpl::stats() const {
  JournalStats s;
  for (const std::string& name : wal::list_directory(dir_)) {
    auto parsed = wal::parse_file_name(name);
    if (!parsed) continue;
    struct stat st{};
    // A background compaction may delete a file between the listing and here.
    if (::stat(wal::join(dir_, name).c_str(), &st) != 0) continue;
    if (parsed->first == wal::FileKind::segment) ++s.segments;
    s.bytes += static_cast<std::uint64_t>(st.st_size);
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
  detail::wal::read_directory(directory, tolerate_corruption, report, replay);
  return report;
}

Lsn Journal::append(RecordType type, std::uint64_t task, std::span<const std::byte> body) {
  return impl_->append(type, task, body);
}
void Journal::wait_durable(Lsn lsn) { impl_->wait_durable(lsn); }
void Journal::append_durable(RecordType type, std::uint64_t task, std::span<const std::byte> body) {
  impl_->wait_durable(impl_->append(type, task, body));
}
void Journal::sync() { impl_->sync(); }
void Journal::compact() { impl_->compact(); }
JournalStats Journal::stats() const { return impl_->stats(); }
const RecoveryReport& Journal::recovery() const noexcept { return impl_->report_; }
const std::string& Journal::directory() const noexcept { return impl_->dir_; }

}  // namespace ordo
