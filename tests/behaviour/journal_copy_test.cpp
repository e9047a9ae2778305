// Outside sync mode an appender copies its record into the open segment's
// mapping itself, under the journal's lock, whenever nothing is pending and
// nobody but a syncing token holder is at the segment (a holder with
// nothing to write keeps the lock until its sync phase, so it never stands
// in the way): the record is written when append() returns. These tests pin what that path must keep:
// the record is there at once, records stay in LSN order when some of them
// must wait (a rotation), and a record copied beside a sync in progress is
// left for the next sync rather than counted as covered by that one.
#include <gtest/gtest.h>

#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "journal/journal_impl.hpp"
#include "journal_support.hpp"
#include "power_cut_file_system.hpp"

namespace ordo {
namespace {

using test::ScratchDir;

std::vector<std::uint64_t> ids_in(const std::string& dir) {
  std::vector<std::uint64_t> ids;
  for (const auto& r : test::read_all(dir)) ids.push_back(r.task);
  return ids;
}

TEST(JournalCopy, AnAppendOutsideSyncModeIsInItsSegmentWhenAppendReturns) {
  for (Durability mode : {Durability::async, Durability::none}) {
    ScratchDir dir;
    // A small segment: each read below copies the whole reservation. A
    // periodic sync every 100 µs keeps the writer thread taking the token
    // beside the appends: a holder with nothing to write must not make them
    // wait.
    auto j = Journal::open(dir.path(),
                           {.durability = mode, .async_interval = std::chrono::microseconds(100), .segment_bytes = 1 << 20});
    const std::string body(40, 'c');
    for (std::uint64_t task = 1; task <= 200; ++task) {
      j->append(RecordType::enqueue, task, test::bytes(body));
      // No wait: another process reading the files now (or this one's
      // restart after a kill -9 now) finds every record appended so far.
      const std::vector<std::uint64_t> ids = ids_in(dir.path());
      ASSERT_EQ(ids.size(), task) << to_string(mode) << ": record " << task << " was not in the segment when append returned";
      ASSERT_EQ(ids.back(), task);
    }
  }
}

// A record that does not fit the open segment waits for a leader (or the
// writer) to rotate; those appended after it must not be copied into the old
// segment ahead of it, though a smaller one would fit there. Read while
// appending, the files always hold the records 1..m in order.
TEST(JournalCopy, RecordsAppendedBehindOneWaitingForARotationKeepTheirOrder) {
  for (Durability mode : {Durability::async, Durability::none}) {
    ScratchDir dir;
    auto j = Journal::open(dir.path(), {.durability = mode, .segment_bytes = 4096, .compact_after_bytes = 0});
    constexpr std::uint64_t kRecords = 400;  // about 25 rotations
    for (std::uint64_t task = 1; task <= kRecords; ++task) {
      const std::string body(task % 3 == 0 ? 10 : 400, 'r');  // large ones that may not fit, small ones that may
      j->append(RecordType::enqueue, task, test::bytes(body));
      const std::vector<std::uint64_t> ids = ids_in(dir.path());
      ASSERT_LE(ids.size(), task);
      for (std::size_t i = 0; i < ids.size(); ++i) {
        ASSERT_EQ(ids[i], i + 1) << to_string(mode) << ": after append " << task << ", record " << ids[i]
                                 << " stands where record " << i + 1 << " belongs";
      }
    }
    j->sync();
    EXPECT_EQ(ids_in(dir.path()).size(), kRecords);
    EXPECT_GE(j->stats().segments, 10u) << "the appends did not rotate";
  }
}

// The model file system, with a gate in front of every fdatasync of an
// append file: once armed, the next sync waits there until opened.
class GatedSyncs final : public detail::FileSystem {
 public:
  explicit GatedSyncs(std::shared_ptr<test::PowerCutFileSystem> inner) : inner_(std::move(inner)) {}

  void arm() {
    std::lock_guard lock(mu_);
    armed_ = true;
    entered_ = false;
  }
  void wait_until_a_sync_waits() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return entered_; });
  }
  void open() {
    std::lock_guard lock(mu_);
    armed_ = false;
    cv_.notify_all();
  }

  bool make_directory(const std::string& dir) override { return inner_->make_directory(dir); }
  std::unique_ptr<detail::DirectoryLock> lock_directory(const std::string& dir) override {
    return inner_->lock_directory(dir);
  }
  std::vector<std::string> list(const std::string& dir) override { return inner_->list(dir); }
  void sync_directory(const std::string& dir) override { inner_->sync_directory(dir); }
  std::unique_ptr<detail::AppendFile> create(const std::string& path, Create how) override {
    return std::make_unique<File>(this, inner_->create(path, how));
  }
  void rename(const std::string& from, const std::string& to) override { inner_->rename(from, to); }
  void remove(const std::string& path) override { inner_->remove(path); }
  void truncate(const std::string& path, std::uint64_t size) override { inner_->truncate(path, size); }
  std::optional<std::uint64_t> size_of(const std::string& path) override { return inner_->size_of(path); }
  std::unique_ptr<detail::FileBytes> read(const std::string& path) override { return inner_->read(path); }

 private:
  class File final : public detail::AppendFile {
   public:
    File(GatedSyncs* gate, std::unique_ptr<detail::AppendFile> inner) : gate_(gate), inner_(std::move(inner)) {}
    void append(const void* data, std::size_t n) override { inner_->append(data, n); }
    // The gate is after the model's sync: what it made durable is what
    // was appended before it, as with an fdatasync that has gathered its
    // pages and waits for the disk.
    void sync() override {
      inner_->sync();
      std::unique_lock lock(gate_->mu_);
      if (gate_->armed_) {
        gate_->entered_ = true;
        gate_->cv_.notify_all();
        gate_->cv_.wait(lock, [&] { return !gate_->armed_; });
      }
    }
    void reserve(std::uint64_t bytes, bool copy_appends) override { inner_->reserve(bytes, copy_appends); }
    void trim() override { inner_->trim(); }
    bool copies(std::size_t n) const noexcept override { return inner_->copies(n); }

   private:
    GatedSyncs* gate_;
    std::unique_ptr<detail::AppendFile> inner_;
  };

  std::shared_ptr<test::PowerCutFileSystem> inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false;
  bool entered_ = false;
};

// While a sync() is in fdatasync, an append is copied beside it: written at
// once, but not covered by that sync, whose data was gathered before. The
// next sync() must sync it; a power cut after that loses nothing.
TEST(JournalCopy, ARecordCopiedBesideAnFdatasyncIsSyncedByTheNextSync) {
  test::DiskImage disk;
  disk.directories = {"/", "/data"};
  auto model = std::make_shared<test::PowerCutFileSystem>(disk);
  auto gated = std::make_shared<GatedSyncs>(model);
  // A small segment: the model's images hold its whole reservation.
  detail::JournalImpl j("/data/journal",
                        {.durability = Durability::async, .async_interval = std::chrono::hours(1), .segment_bytes = 1 << 20},
                        gated);
  j.recover({});
  j.start();
  const std::string body(40, 'b');
  j.append(RecordType::enqueue, 1, test::bytes(body));
  j.sync();  // also puts the periodic sync an hour away: no sync but ours below
  j.append(RecordType::enqueue, 2, test::bytes(body));

  gated->arm();
  auto first_sync = std::async(std::launch::async, [&] { j.sync(); });
  gated->wait_until_a_sync_waits();
  j.append(RecordType::enqueue, 3, test::bytes(body));
  {
    std::vector<std::uint64_t> ids;
    detail::JournalImpl reader("/data/journal", {}, std::make_shared<test::PowerCutFileSystem>(model->current()));
    reader.recover([&](const RecordView& r) { ids.push_back(r.task); });
    EXPECT_EQ(ids, (std::vector<std::uint64_t>{1, 2, 3})) << "the record appended beside the sync was not written at once";
  }
  gated->open();
  first_sync.get();

  j.sync();
  std::vector<std::uint64_t> ids;
  {
    detail::JournalImpl reader("/data/journal", {}, std::make_shared<test::PowerCutFileSystem>(model->synced_only()));
    reader.recover([&](const RecordView& r) { ids.push_back(r.task); });
  }
  EXPECT_EQ(ids, (std::vector<std::uint64_t>{1, 2, 3}))
      << "sync() returned, yet a power cut loses the record copied beside the sync before it";
  j.close();
}

}  // namespace
}  // namespace ordo
