// The journal's life: options, opening (recovery of what is on disk), the
// compactor thread, closing, statistics and the public Journal facade. The
// writer side lives in group_commit.cpp; journal_impl.hpp has the contract.
#include <algorithm>
#include <cstdio>
#include <sstream>
#include <utility>

#include "journal/format.hpp"
#include "journal/journal_impl.hpp"
#include "journal/posix_file_system.hpp"
#include "journal/reader.hpp"

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
    out << "\ntorn tail: " << tail.file << " at offset " << tail.offset << ": " << tail.reason << " (" << tail.bytes;
    // Zeros held no record (the usual case: the open segment's unused
    // reservation after a crash): nothing was lost with them.
    out << (tail.reason == detail::wal::kZeroFilledTail ? " bytes, all zeros, no record in them)" : " bytes dropped)");
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
  if (compaction_crash_point) compaction_crash_point(1);
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
  if (segment_file_ && !error_) {
    // A clean close leaves the last segment as long as its records, like a
    // rotation: only a crash leaves its reservation behind (read as a
    // zero-filled tail and cut off by the next open).
    try {
      segment_file_->trim();
      if (options_.durability != Durability::none) segment_file_->sync();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ordo: journal %s: trimming the last segment on close failed: %s\n", dir_.c_str(), e.what());
    }
  }
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
    std::uint64_t bytes = *size;
    if (parsed->first == wal::FileKind::segment) {
      ++s.segments;
      // The open segment's file holds its reservation too: count what is written.
      // relaxed: see open_segment_bytes_.
      if (parsed->second == open_segment_number_.load(std::memory_order_relaxed))
        bytes = std::min(bytes, open_segment_bytes_.load(std::memory_order_relaxed));
    }
    s.bytes += bytes;
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
  detail::wal::read_directory(*detail::posix_file_system_without_lock(), directory, tolerate_corruption, report, replay);
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
