// The journal's format and reader: round trips, torn tails, corruption.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "journal/file_system.hpp"
#include "journal/format.hpp"
#include "journal/reader.hpp"
#include "journal_support.hpp"
#include "ordo/journal.hpp"

namespace ordo {
namespace {

namespace fs = std::filesystem;
using test::Captured;
using test::ScratchDir;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void spit(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

// Writes `records` to a new journal and closes it; returns them.
std::vector<Captured> write_journal(const std::string& dir, int n, JournalOptions o = {.durability = Durability::none}) {
  std::vector<Captured> written;
  auto j = Journal::open(dir, o);
  for (int i = 0; i < n; ++i) {
    const auto type = static_cast<RecordType>(1 + i % 9);  // every type a writer may append
    std::string body(static_cast<std::size_t>(i * 7 % 50), static_cast<char>('a' + i % 26));
    j->append(type, 1000 + static_cast<std::uint64_t>(i), test::bytes(body));
    written.push_back({type, 1000 + static_cast<std::uint64_t>(i), body});
  }
  return written;
}

TEST(JournalReader, RoundTripOfEveryRecordType) {
  ScratchDir dir;
  const auto written = write_journal(dir.path(), 90);
  RecoveryReport report;
  EXPECT_EQ(test::read_all(dir.path(), &report), written);
  EXPECT_FALSE(report.torn_tail);
  EXPECT_EQ(report.records, 90u);
  EXPECT_EQ(report.segments, 1u);
}

TEST(JournalReader, ReopeningAppendsToANewSegmentAndKeepsEverything) {
  ScratchDir dir;
  auto first = write_journal(dir.path(), 10);
  auto second = write_journal(dir.path(), 5);
  first.insert(first.end(), second.begin(), second.end());
  RecoveryReport report;
  EXPECT_EQ(test::read_all(dir.path(), &report), first);
  EXPECT_EQ(report.segments, 2u);
}

TEST(JournalReader, RecordsNeverSpanSegments) {
  ScratchDir dir;
  const auto written = write_journal(dir.path(), 2000, {.durability = Durability::none, .segment_bytes = 4096});
  RecoveryReport report;
  EXPECT_EQ(test::read_all(dir.path(), &report), written);
  EXPECT_GT(report.segments, 5u);
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    if (entry.path().extension() == ".log") EXPECT_LE(fs::file_size(entry.path()), 4096u) << entry.path();
  }
}

// A closed journal of six records in one segment: the records, the
// segment's name and bytes, and where its last record starts.
struct SixRecords {
  ScratchDir dir;
  std::vector<Captured> written = write_journal(dir.path(), 6);
  std::string seg = test::segment_name(1);
  std::string full = slurp(dir.file(seg));
  std::size_t last_start = full.size() - (detail::wal::kRecordHeaderBytes + 8 + written.back().body.size());
};

TEST(JournalReader, TruncatedTrailingRecordIsIgnoredAtEveryByteOffset) {
  const SixRecords base;
  const auto& [_, written, seg, full, last_start] = base;
  for (std::size_t cut = last_start + 1; cut < full.size(); ++cut) {
    ScratchDir dir;
    spit(dir.file(seg), full.substr(0, cut));
    RecoveryReport report;
    auto got = test::read_all(dir.path(), &report);
    ASSERT_EQ(got, std::vector<Captured>(written.begin(), written.end() - 1)) << "cut at " << cut;
    ASSERT_TRUE(report.torn_tail) << "cut at " << cut;
    EXPECT_EQ(report.tail.offset, last_start);
    EXPECT_EQ(report.tail.bytes, cut - last_start);
    // Opening for writing cuts the tail off; what follows reads clean.
    {
      auto j = Journal::open(dir.path(), {.durability = Durability::none});
      EXPECT_TRUE(j->recovery().torn_tail);
      j->append(RecordType::complete, 1);
    }
    got = test::read_all(dir.path(), &report);
    EXPECT_FALSE(report.torn_tail);
    ASSERT_EQ(got.size(), written.size());
    EXPECT_EQ(got.back().type, RecordType::complete);
  }
}

TEST(JournalReader, ASegmentCutInsideItsHeaderIsReplacedWithoutLeavingAGap) {
  ScratchDir dir;
  const auto first = write_journal(dir.path(), 3);
  write_journal(dir.path(), 0);  // segment 2: only its header
  const std::string seg2 = dir.file(test::segment_name(2));
  spit(seg2, slurp(seg2).substr(0, 10));  // the writer died while creating it
  for (int round = 0; round < 2; ++round) {  // reopen twice: no "segment missing" either time
    auto j = Journal::open(dir.path(), {.durability = Durability::none});
    EXPECT_EQ(j->recovery().records, 3u + round);
    j->append(RecordType::complete, 1);
  }
  RecoveryReport report;
  EXPECT_EQ(test::read_all(dir.path(), &report).size(), 5u);
  EXPECT_FALSE(report.torn_tail);
}

TEST(JournalReader, ZeroFilledTailIsATornTail) {
  ScratchDir dir;
  const auto written = write_journal(dir.path(), 4);
  const std::string seg = dir.file(test::segment_name(1));
  spit(seg, slurp(seg) + std::string(4096, '\0'));
  RecoveryReport report;
  EXPECT_EQ(test::read_all(dir.path(), &report), written);
  EXPECT_TRUE(report.torn_tail);
  EXPECT_EQ(report.tail.bytes, 4096u);
}

// What a kill in the middle of copying a batch into the mapped segment
// leaves: whole records, then part of the next one (its 16-byte steps
// stored up to some point, the last one partly), then the reservation's
// zeros. At every cut, that is a torn tail at the cut record.
TEST(JournalReader, ACopyCutShortBeforeTheReservationsZerosIsATornTail) {
  const SixRecords base;
  const auto& [_, written, seg, full, last_start] = base;
  constexpr std::size_t kReservation = 1 << 20;
  for (std::size_t cut = last_start + 1; cut < full.size(); ++cut) {
    for (bool step_cut_from_its_end : {false, true}) {
      std::string file = full.substr(0, cut);
      if (step_cut_from_its_end) {  // the step holding the cut stored its end but not its start
        const std::size_t step_end = std::min(full.size(), (cut + 15) / 16 * 16);
        file.resize(step_end, '\0');
        for (std::size_t i = cut; i < step_end; ++i) file[i] = full[i];
        for (std::size_t i = std::max(cut / 16 * 16, last_start); i < cut; ++i) file[i] = '\0';
      }
      file.resize(kReservation, '\0');
      ScratchDir dir;
      spit(dir.file(seg), file);
      RecoveryReport report;
      ASSERT_EQ(test::read_all(dir.path(), &report), std::vector<Captured>(written.begin(), written.end() - 1))
          << "cut at " << cut;
      ASSERT_TRUE(report.torn_tail) << "cut at " << cut;
      EXPECT_EQ(report.tail.offset, last_start) << "cut at " << cut;
      EXPECT_EQ(report.tail.bytes, kReservation - last_start) << "cut at " << cut;
    }
  }
}

TEST(JournalReader, SingleBitFlipsAnywhereAreDetected) {
  ScratchDir base;
  const auto written = write_journal(base.path(), 5);
  write_journal(base.path(), 2);  // a second segment, so the first is not the last
  const std::string seg = test::segment_name(1);
  const std::string full = slurp(base.file(seg));
  for (std::size_t byte = 0; byte < full.size(); ++byte) {
    for (int bit = 0; bit < 8; bit += 3) {
      ScratchDir dir;
      fs::copy(base.path(), dir.path(), fs::copy_options::recursive | fs::copy_options::overwrite_existing);
      std::string damaged = full;
      damaged[byte] = static_cast<char>(damaged[byte] ^ (1 << bit));
      spit(dir.file(seg), damaged);
      EXPECT_THROW(test::read_all(dir.path()), JournalCorruption) << "byte " << byte << " bit " << bit;
    }
  }
}

TEST(JournalReader, FlipInTheLastRecordOfTheLastSegmentIsReportedAsATornTail) {
  ScratchDir dir;
  const auto written = write_journal(dir.path(), 5);
  const std::string seg = dir.file(test::segment_name(1));
  std::string data = slurp(seg);
  data[data.size() - 1] ^= 0x10;
  spit(seg, data);
  RecoveryReport report;
  EXPECT_EQ(test::read_all(dir.path(), &report), std::vector<Captured>(written.begin(), written.end() - 1));
  EXPECT_TRUE(report.torn_tail);
  EXPECT_EQ(report.tail.reason, "record checksum mismatch");
}

// A flipped bit in a record's length in the last segment, with acknowledged
// records after it: that is corruption, not a torn tail. Cutting it off would
// destroy every record behind it.
TEST(JournalReader, LengthFlipInTheLastSegmentWithValidRecordsAfterItIsCorruptionNotATornTail) {
  for (int bit : {0, 3, 9, 20, 30}) {  // shorter, longer, past the end of the file, impossible
    ScratchDir dir;
    const auto written = write_journal(dir.path(), 8);
    const std::string seg = dir.file(test::segment_name(1));
    // The third record: offsets of the first two, then its length field.
    std::size_t third = detail::wal::kFileHeaderBytes;
    for (int i = 0; i < 2; ++i) third += detail::wal::kRecordHeaderBytes + 8 + written[static_cast<std::size_t>(i)].body.size();
    std::string data = slurp(seg);
    data[third + 4 + static_cast<std::size_t>(bit / 8)] ^= static_cast<char>(1 << (bit % 8));
    spit(seg, data);
    SCOPED_TRACE("bit " + std::to_string(bit) + " of the length");
    try {
      RecoveryReport report;
      test::read_all(dir.path(), &report);
      ADD_FAILURE() << "read as " << (report.torn_tail ? "a torn tail: " + report.describe() : "clean");
    } catch (const JournalCorruption& e) {
      EXPECT_NE(std::string(e.what()).find("wal-0000000000000001.log at offset " + std::to_string(third)),
                std::string::npos)
          << e.what();
    }
    // Opening refuses and leaves the records behind it on disk.
    EXPECT_THROW(Journal::open(dir.path(), {.durability = Durability::none}), JournalCorruption);
    EXPECT_EQ(slurp(seg), data);
    // The explicit repair: tolerant mode skips the damaged record and keeps the rest.
    RecoveryReport report;
    auto got = test::read_all(dir.path(), &report, /*tolerant=*/true);
    auto expected = written;
    expected.erase(expected.begin() + 2);
    EXPECT_EQ(got, expected);
    EXPECT_FALSE(report.torn_tail);
    EXPECT_EQ(report.skipped.size(), 1u);
    if (!report.skipped.empty()) EXPECT_EQ(report.skipped[0].offset, third);
  }
}

// A reader beside a live writer (no LOCK): its read of the last segment
// returns the bytes of `path` with the first record's checksum zeroed (a
// record caught in mid-copy: the checksum is written last) for the first
// `torn_reads` reads, then the file as it is.
class ReadsARecordInMidWrite final : public detail::FileSystem {
 public:
  ReadsARecordInMidWrite(std::string path, int torn_reads) : path_(std::move(path)), torn_reads_(torn_reads) {}
  int reads() const { return reads_; }

  bool make_directory(const std::string& d) override { return inner_->make_directory(d); }
  std::unique_ptr<detail::DirectoryLock> lock_directory(const std::string& d) override { return inner_->lock_directory(d); }
  std::vector<std::string> list(const std::string& d) override { return inner_->list(d); }
  void sync_directory(const std::string& d) override { inner_->sync_directory(d); }
  std::unique_ptr<detail::AppendFile> create(const std::string& p, Create how) override { return inner_->create(p, how); }
  void rename(const std::string& from, const std::string& to) override { inner_->rename(from, to); }
  void remove(const std::string& p) override { inner_->remove(p); }
  void truncate(const std::string& p, std::uint64_t size) override { inner_->truncate(p, size); }
  std::optional<std::uint64_t> size_of(const std::string& p) override { return inner_->size_of(p); }
  bool writer_may_be_live() const noexcept override { return true; }
  std::unique_ptr<detail::FileBytes> read(const std::string& p) override {
    if (p != path_) return inner_->read(p);
    std::string data = slurp(p);
    if (reads_++ < torn_reads_) std::fill_n(data.begin() + detail::wal::kFileHeaderBytes, 4, '\0');
    return std::make_unique<Bytes>(std::move(data));
  }

 private:
  struct Bytes final : detail::FileBytes {
    explicit Bytes(std::string d) : held(std::move(d)) {
      data_ = reinterpret_cast<const unsigned char*>(held.data());
      size_ = held.size();
    }
    std::string held;
  };
  std::shared_ptr<detail::FileSystem> inner_ = detail::posix_file_system_without_lock();
  std::string path_;
  int torn_reads_;
  int reads_ = 0;
};

TEST(JournalReader, ARecordCaughtInMidWriteBesideALiveWriterIsReadAgainNotCalledCorruption) {
  // Its checksum not yet there, the records after it whole: a reader
  // without the LOCK reads the segment again and finds it whole.
  for (int torn_reads : {1, 3}) {
    ScratchDir dir;
    const auto written = write_journal(dir.path(), 6);
    ReadsARecordInMidWrite fs(dir.file(test::segment_name(1)), torn_reads);
    std::vector<Captured> got;
    RecoveryReport report;
    detail::wal::read_directory(fs, dir.path(), false, report, [&](const RecordView& v) {
      got.push_back({v.type, v.task, std::string(reinterpret_cast<const char*>(v.payload.data()) + 8, v.payload.size() - 8)});
    });
    EXPECT_EQ(got, written) << torn_reads << " torn reads";
    EXPECT_FALSE(report.torn_tail);
    EXPECT_EQ(fs.reads(), torn_reads + 1);
  }
}

TEST(JournalReader, DamageThatEveryRereadFindsAgainIsCorruption) {
  ScratchDir dir;
  write_journal(dir.path(), 6);
  ReadsARecordInMidWrite fs(dir.file(test::segment_name(1)), 1000);
  RecoveryReport report;
  try {
    detail::wal::read_directory(fs, dir.path(), false, report, {});
    FAIL() << "expected JournalCorruption";
  } catch (const JournalCorruption& e) {
    EXPECT_NE(std::string(e.what()).find("wal-0000000000000001.log at offset 32: record checksum mismatch"),
              std::string::npos)
        << e.what();
  }
  EXPECT_GT(fs.reads(), 1) << "the live reader never read the segment again";
  EXPECT_LT(fs.reads(), 10) << "rereads must be bounded";
}

TEST(JournalReader, CorruptionElsewhereNamesTheSegmentAndOffset) {
  ScratchDir dir;
  write_journal(dir.path(), 5);
  const std::string seg = dir.file(test::segment_name(1));
  std::string data = slurp(seg);
  data[detail::wal::kFileHeaderBytes + 12] ^= 0x01;  // inside the first record's payload
  spit(seg, data);
  try {
    test::read_all(dir.path());
    FAIL() << "expected JournalCorruption";
  } catch (const JournalCorruption& e) {
    EXPECT_NE(std::string(e.what()).find("wal-0000000000000001.log at offset 32: record checksum mismatch"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(Journal::open(dir.path()), JournalCorruption);  // opening refuses too, changing nothing
  EXPECT_EQ(slurp(seg), data);
}

TEST(JournalReader, TolerantModeSkipsADamagedRecordAndReportsIt) {
  ScratchDir dir;
  const auto written = write_journal(dir.path(), 5);
  const std::string seg = dir.file(test::segment_name(1));
  std::string data = slurp(seg);
  data[detail::wal::kFileHeaderBytes + 12] ^= 0x01;
  spit(seg, data);
  RecoveryReport report;
  auto got = test::read_all(dir.path(), &report, /*tolerant=*/true);
  EXPECT_EQ(got, std::vector<Captured>(written.begin() + 1, written.end()));
  ASSERT_EQ(report.skipped.size(), 1u);
  EXPECT_EQ(report.skipped[0].offset, 32u);
  EXPECT_EQ(report.skipped[0].bytes, detail::wal::kRecordHeaderBytes + 8 + written[0].body.size());
  EXPECT_NE(report.describe().find("skipped"), std::string::npos);
}

TEST(JournalReader, NewerFormatVersionIsRefused) {
  ScratchDir dir;
  write_journal(dir.path(), 2);
  const std::string seg = dir.file(test::segment_name(1));
  std::string data = slurp(seg);
  auto* h = reinterpret_cast<unsigned char*>(data.data());
  detail::wal::put32(h + 8, 2);
  detail::wal::put32(h + 24, detail::crc32c::mask(detail::crc32c::value(h, 24)));
  spit(seg, data);
  for (bool tolerant : {false, true}) {
    try {
      RecoveryReport r;
      test::read_all(dir.path(), &r, tolerant);
      FAIL() << "expected JournalCorruption";
    } catch (const JournalCorruption& e) {
      EXPECT_NE(std::string(e.what()).find("format version 2; this ordo reads versions up to 1"), std::string::npos)
          << e.what();
    }
  }
}

TEST(JournalReader, AMissingSegmentInTheMiddleIsAnError) {
  ScratchDir dir;
  for (int i = 0; i < 3; ++i) write_journal(dir.path(), 2);
  fs::remove(dir.file(test::segment_name(2)));
  EXPECT_THROW(test::read_all(dir.path()), JournalCorruption);
}

TEST(JournalReader, ASecondOpenGetsAClearLockError) {
  ScratchDir dir;
  auto j = Journal::open(dir.path(), {.durability = Durability::none});
  try {
    auto again = Journal::open(dir.path());
    FAIL() << "expected JournalLocked";
  } catch (const JournalLocked& e) {
    EXPECT_NE(std::string(e.what()).find("already open"), std::string::npos) << e.what();
  }
}

TEST(JournalReader, InvalidOptionsAreRejected) {
  ScratchDir dir;
  EXPECT_THROW(Journal::open(dir.path(), {.segment_bytes = 100}), InvalidArgument);
  EXPECT_THROW(Journal::open(dir.path(), {.durability = Durability::async, .async_interval = std::chrono::microseconds(0)}),
               InvalidArgument);
}

}  // namespace
}  // namespace ordo
