// Power cuts, not kill -9: the journal runs on PowerCutFileSystem, which keeps
// only what was synced (and a random part of the rest), while several threads
// append, compact and rotate. Disk images are taken at random operations and
// at the cut; each is booted as the next start would boot it and checked:
// open never refuses it, every acknowledged record is there, what is lost is
// what the mode allows, and the reader calls it clean or a torn tail. The
// seed is printed; ORDO_POWER_CUT_SEED=<n> replays its cut points and choices
// (the threads' interleaving is the machine's).
//
// What each mode may lose to a power cut (docs/journal.md says the same):
// - every mode: what survives is a prefix of the records in LSN order (no
//   hole), plus everything that survived earlier boots, and every record
//   appended before a sync() that returned;
// - sync: additionally every record whose wait_durable()/append_durable()
//   returned;
// - async, none: a record whose wait_durable() returned may be lost if no
//   sync (async: the periodic one) covered it yet.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "journal/format.hpp"
#include "journal/journal_impl.hpp"
#include "journal/reader.hpp"
#include "power_cut_file_system.hpp"

namespace ordo {
namespace {

using detail::JournalImpl;
using test::DiskImage;
using test::PowerCutFileSystem;

const std::string kParent = "/data";
const std::string kDir = "/data/journal";  // created by the first open of each chain

std::uint64_t suite_seed() {
  static const std::uint64_t seed = [] {
    if (const char* s = std::getenv("ORDO_POWER_CUT_SEED")) return static_cast<std::uint64_t>(std::strtoull(s, nullptr, 10));
    return (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  }();
  return seed;
}

DiskImage empty_disk() {
  DiskImage d;
  d.directories = {"/", kParent};
  return d;
}

// What the next boot finds: the records replayed (task ids, in order), and the disk once recovery has cleaned up.
struct Boot {
  std::vector<std::uint64_t> ids;
  RecoveryReport report;
  DiskImage after;
};

Boot boot(const DiskImage& image, const JournalOptions& options) {
  auto fs = std::make_shared<PowerCutFileSystem>(image);
  Boot b;
  {
    JournalImpl j(kDir, options, fs);
    j.recover([&](const RecordView& r) { b.ids.push_back(r.task); });
    b.report = j.report_;
  }
  b.after = fs->current();
  return b;
}

// Reads `image` as ordo-wal would, strictly: the ids, or JournalCorruption.
std::vector<std::uint64_t> read_ids(const DiskImage& image, RecoveryReport& report) {
  PowerCutFileSystem fs(image);
  std::vector<std::uint64_t> ids;
  detail::wal::read_directory(fs, kDir, false, report, [&](const RecordView& r) { ids.push_back(r.task); });
  return ids;
}

struct Appended {
  std::uint64_t id;
  Lsn lsn;
  std::uint64_t acked_at;  // operations done when wait_durable returned; ~0: never returned
};
struct SyncBarrier {
  Lsn covers;             // every LSN up to this one was appended before sync() was called
  std::uint64_t done_at;  // operations done when it returned
};
struct Capture {
  std::uint64_t at;  // operations done when taken (~0: at the cut, after everything)
  DiskImage image;
  bool during_compaction;
};

struct SuiteCounters {
  std::uint64_t images = 0, rounds = 0, torn = 0, during_compaction = 0, acked = 0;
};

// A chain of boots of one journal on a PowerCutFileSystem, each ended by a
// cut. Thread-safety: driven by the test's thread; round() starts and joins
// the appenders, which touch only their own vectors and atomics, and the
// capture callback, which runs under the file system's lock.
class PowerCutRun {
 public:
  PowerCutRun(Durability mode, std::uint64_t seed) : mode_(mode), rng_(seed), capture_rng_(seed ^ 0x9e3779b97f4a7c15ull) {
    options_.durability = mode;
    options_.segment_bytes = 4096;          // rotations all the time
    options_.compact_after_bytes = 0;       // compactions come from the appenders, at random
    options_.async_interval = std::chrono::microseconds(200);
  }

  // One boot-run-cut cycle from the current disk; checks every image taken.
  void round() {
    ++counters_.rounds;
    if (chain_ == 0) disk_ = empty_disk();
    chain_ = (chain_ + 1) % 8;  // a fresh journal every 8 rounds keeps images small
    const Boot start = boot(disk_, options_);
    const std::vector<std::uint64_t> before = start.ids;

    auto fs = std::make_shared<PowerCutFileSystem>(disk_);
    std::vector<Capture> captures;
    std::atomic<bool> compacting{false};
    std::uint64_t next_capture = pick(0, 6);
    fs->on_operation([&](std::uint64_t done) {  // under the file system's lock: capture_rng_ is ours
      if (done < next_capture) return;
      captures.push_back({done, fs->crash_image_locked(capture_rng_), compacting.load()});
      next_capture = done + 1 + std::uniform_int_distribution<std::uint64_t>(0, 7)(capture_rng_);
    });
    fs->cut_after(pick(1, 400));

    std::vector<std::vector<Appended>> appended(kThreads);
    std::vector<std::vector<SyncBarrier>> barriers(kThreads);
    std::atomic<std::uint64_t> next_id{next_id_};
    try {
      JournalImpl j(kDir, options_, fs);
      j.recover({});
      j.start();
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t, seed = rng_()] {
          std::mt19937_64 rng(seed);
          Lsn last = 0;
          try {
            auto& mine = appended[static_cast<std::size_t>(t)];
            for (int i = 0; i < 2000;) {
              // Now and then a batch waited for through its last record
              // alone, as DurableTasks::enqueue_many does: waiting for a
              // record acknowledges every earlier one.
              const int batch = rng() % 8 == 0 ? 2 + static_cast<int>(rng() % 7) : 1;
              const std::size_t first = mine.size();
              for (int b = 0; b < batch; ++b, ++i) {
                const std::uint64_t id = next_id.fetch_add(1);
                const std::string body(rng() % 120, static_cast<char>('a' + id % 26));
                Appended a{id, 0, ~0ull};
                a.lsn = j.append(RecordType::enqueue, id,
                                 {reinterpret_cast<const std::byte*>(body.data()), body.size()});
                last = a.lsn;
                mine.push_back(a);
              }
              j.wait_durable(last);
              const std::uint64_t acked_at = fs->operations();
              for (std::size_t k = first; k < mine.size(); ++k) mine[k].acked_at = acked_at;
              const auto dice = rng() % 32;
              if (dice == 0) {
                compacting = true;
                j.compact();
                compacting = false;
              } else if (dice == 1) {
                j.sync();
                barriers[static_cast<std::size_t>(t)].push_back({last, fs->operations()});
              }
            }
          } catch (const Error&) {  // the power went (a JournalIoError, or "closing")
            compacting = false;
          }
        });
      }
      for (auto& th : threads) th.join();
      fs->cut_now();  // if the threads ran out of work first
    } catch (const JournalIoError&) {
      // Cut while opening: recovery itself must survive that (checked below).
    }
    next_id_ = next_id.load();
    fs->on_operation({});
    captures.push_back({~0ull, fs->crash_image(capture_rng_), false});

    // Per thread, LSNs grow; all together they are 1..n without gaps.
    std::vector<Appended> all;
    for (auto& v : appended) all.insert(all.end(), v.begin(), v.end());
    std::sort(all.begin(), all.end(), [](const Appended& a, const Appended& b) { return a.lsn < b.lsn; });
    for (std::size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i].lsn, i + 1) << "LSNs are not dense";

    for (const Capture& c : captures) {
      check(c, before, all, barriers);
      if (::testing::Test::HasFatalFailure()) return;
    }
    disk_ = captures.back().image;
  }

  const SuiteCounters& counters() const { return counters_; }
  // Every 10th journal as recovery left it (for the bit-flip test).
  std::vector<DiskImage> recovered_samples;

 private:
  static constexpr int kThreads = 3;

  std::uint64_t pick(std::uint64_t lo, std::uint64_t hi) { return std::uniform_int_distribution<std::uint64_t>(lo, hi)(rng_); }

  void check(const Capture& c, const std::vector<std::uint64_t>& before, const std::vector<Appended>& all,
             const std::vector<std::vector<SyncBarrier>>& barriers) {
    ++counters_.images;
    if (c.during_compaction) ++counters_.during_compaction;
    const std::string where = "image at operation " + (c.at == ~0ull ? std::string("of the cut") : std::to_string(c.at)) +
                              ", mode " + to_string(mode_) + ", round " + std::to_string(counters_.rounds);
    // The reader: clean, or a torn tail; never corruption.
    RecoveryReport read_report;
    try {
      if (c.image.directories.count(kDir) != 0) read_ids(c.image, read_report);  // else: created by the next open
    } catch (const JournalCorruption& e) {
      FAIL() << where << ": a power-cut state read as corruption: " << e.what();
    }
    if (read_report.torn_tail) ++counters_.torn;
    // The next boot: never refused.
    Boot b;
    try {
      b = boot(c.image, options_);
    } catch (const std::exception& e) {
      FAIL() << where << ": open refused the journal: " << e.what();
    }
    // What survived earlier boots, then a prefix of this run's records in LSN order.
    ASSERT_GE(b.ids.size(), before.size()) << where << ": records of an earlier boot were lost";
    ASSERT_TRUE(std::equal(before.begin(), before.end(), b.ids.begin())) << where << ": earlier records changed";
    const std::size_t kept = b.ids.size() - before.size();
    ASSERT_LE(kept, all.size()) << where;
    for (std::size_t i = 0; i < kept; ++i) {
      ASSERT_EQ(b.ids[before.size() + i], all[i].id)
          << where << ": the survivors are not a prefix in LSN order (hole or reordering at LSN " << i + 1 << ")";
    }
    // Acknowledged records: in sync mode each one whose wait returned before the image.
    if (mode_ == Durability::sync) {
      for (const Appended& a : all) {
        if (a.acked_at != ~0ull && a.acked_at <= c.at) {
          ++counters_.acked;
          ASSERT_LE(a.lsn, kept) << where << ": acknowledged record " << a.id << " (LSN " << a.lsn
                                 << ", acknowledged after operation " << a.acked_at << ") lost; "
                                 << kept << " of this run's records survived";
        }
      }
    }
    for (const auto& per_thread : barriers) {
      for (const SyncBarrier& s : per_thread) {
        if (s.done_at <= c.at) ASSERT_LE(s.covers, kept) << where << ": a record before a returned sync() was lost";
      }
    }
    // After recovery the journal reads clean, with the same records.
    RecoveryReport again;
    std::vector<std::uint64_t> reread;
    try {
      reread = read_ids(b.after, again);
    } catch (const JournalCorruption& e) {
      FAIL() << where << ": the recovered journal reads as corruption: " << e.what();
    }
    EXPECT_FALSE(again.torn_tail) << where << ": recovery left a torn tail: " << again.describe();
    ASSERT_EQ(reread, b.ids) << where;
    if (counters_.images % 10 == 0) recovered_samples.push_back(b.after);
  }

  const Durability mode_;
  JournalOptions options_;
  std::mt19937_64 rng_;
  std::mt19937_64 capture_rng_;  // used under the file system's lock only
  DiskImage disk_;
  int chain_ = 0;
  std::uint64_t next_id_ = 1;
  SuiteCounters counters_;
};

// Runs rounds until `images` disk states were checked.
SuiteCounters run_until(Durability mode, std::uint64_t images, std::uint64_t salt) {
  const std::uint64_t seed = suite_seed() ^ salt;
  std::printf("power cuts in %s mode: ORDO_POWER_CUT_SEED=%llu\n", to_string(mode),
              static_cast<unsigned long long>(suite_seed()));
  PowerCutRun run(mode, seed);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (run.counters().images < images) {
    run.round();
    if (::testing::Test::HasFatalFailure()) break;
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "only " << run.counters().images << " of " << images << " disk states in 5 minutes";
      break;
    }
  }
  const SuiteCounters& c = run.counters();
  std::printf("  %llu rounds, %llu power-cut states checked (%llu torn tails, %llu during a compaction, %llu "
              "acknowledgements checked)\n",
              static_cast<unsigned long long>(c.rounds), static_cast<unsigned long long>(c.images),
              static_cast<unsigned long long>(c.torn), static_cast<unsigned long long>(c.during_compaction),
              static_cast<unsigned long long>(c.acked));
  return c;
}

TEST(JournalPowerCut, SyncModeKeepsEveryAcknowledgedRecordAcrossRandomCutsDuringAppendsRotationAndCompaction) {
  const SuiteCounters c = run_until(Durability::sync, 6000, 1);
  EXPECT_GT(c.torn, 0u) << "no cut ever tore a tail: the model is not cutting";
  EXPECT_GT(c.during_compaction, 0u) << "no cut fell inside a compaction";
  EXPECT_GT(c.acked, 0u);
}

TEST(JournalPowerCut, AsyncModeLosesOnlyASuffixNotCoveredByASync) {
  const SuiteCounters c = run_until(Durability::async, 2500, 2);
  EXPECT_GT(c.torn, 0u);
}

TEST(JournalPowerCut, NoneModeLosesOnlyASuffixNotCoveredByASync) {
  const SuiteCounters c = run_until(Durability::none, 2500, 3);
  EXPECT_GT(c.torn, 0u);
}

// The time half of async mode's promise, and of sync mode's for records
// nobody waits for: the writer syncs them within about async_interval, with
// no further append or wait to prompt it. Checked on the worst case a power
// cut could leave (only what was synced), within a generous bound.
void expect_synced_without_prompting(Durability mode, bool wait) {
  auto fs = std::make_shared<PowerCutFileSystem>(empty_disk());
  // Small segments: each look below copies the synced image, reserved
  // space included, and boots a journal from it. With the default 64 MiB
  // reservation one look took about 2 s here, and over 10 s under
  // ThreadSanitizer, which failed the bound before the sync had a chance.
  JournalImpl j(kDir, {.durability = mode, .async_interval = std::chrono::milliseconds(2), .segment_bytes = 1 << 20}, fs);
  j.recover({});
  j.start();
  for (std::uint64_t id = 1; id <= 20; ++id) {
    const std::string body(50, 'x');
    const Lsn lsn = j.append(RecordType::start, id, {reinterpret_cast<const std::byte*>(body.data()), body.size()});
    if (wait) j.wait_durable(lsn);
    const auto appended = std::chrono::steady_clock::now();
    const auto deadline = appended + std::chrono::seconds(10);
    std::vector<std::uint64_t> ids;
    for (;;) {
      ids = boot(fs->synced_only(), {}).ids;
      if (ids.size() == id || std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    ASSERT_EQ(ids.size(), id) << to_string(mode) << ": record " << id
                              << " still not synced 10 s after it was appended (async_interval 2 ms)";
  }
}

TEST(JournalPowerCut, AsyncModeSyncsAnAcknowledgedRecordWithinItsIntervalUnprompted) {
  expect_synced_without_prompting(Durability::async, true);
}

TEST(JournalPowerCut, SyncModeSyncsARecordNobodyWaitsForWithinTheIntervalUnprompted) {
  expect_synced_without_prompting(Durability::sync, false);
}

// Where each record of a well-formed journal file starts.
std::vector<std::size_t> record_starts(const std::string& bytes) {
  std::vector<std::size_t> starts;
  std::size_t off = detail::wal::kFileHeaderBytes;
  while (off + detail::wal::kRecordHeaderBytes <= bytes.size()) {
    starts.push_back(off);
    off += detail::wal::kRecordHeaderBytes +
           detail::wal::get32(reinterpret_cast<const unsigned char*>(bytes.data()) + off + 4);
  }
  return starts;
}

// The other half of the reader's classification: on journals as recovery
// leaves them after power cuts (snapshots, several segments, a last segment
// of any length), a flipped bit anywhere is corruption naming the file and
// the offset of the damaged record (or the file, for its header) — except in
// the last record of the last segment, which a torn append cannot be told
// from: that one is cut as a torn tail, and only that one.
TEST(JournalPowerCut, EveryFlippedBitIsCorruptionNamingFileAndOffsetSaveInTheLastRecordWhichIsATornTail) {
  PowerCutRun run(Durability::sync, suite_seed() ^ 4);
  std::printf("bit flips: ORDO_POWER_CUT_SEED=%llu\n", static_cast<unsigned long long>(suite_seed()));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (run.recovered_samples.size() < 200) {
    run.round();
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "too few recovered journals to flip bits in";
  }
  std::mt19937_64 rng(suite_seed() ^ 5);
  std::uint64_t flips = 0, corruption = 0, torn = 0;
  for (const DiskImage& clean : run.recovered_samples) {
    RecoveryReport clean_report;
    const std::vector<std::uint64_t> clean_ids = read_ids(clean, clean_report);
    std::vector<std::string> files;  // the journal's files, and which segment is last
    std::string last_segment;
    for (const auto& [path, bytes] : clean.files) {
      const std::string name = path.substr(kDir.size() + 1);
      const auto parsed = detail::wal::parse_file_name(name);
      if (!parsed || bytes.empty()) continue;
      files.push_back(path);
      if (parsed->first == detail::wal::FileKind::segment) last_segment = std::max(last_segment, name);
    }
    for (int k = 0; k < 10 && !files.empty(); ++k) {
      const std::string path = files[rng() % files.size()];
      const std::string name = path.substr(kDir.size() + 1);
      DiskImage damaged = clean;
      std::string& bytes = damaged.files[path];
      const std::size_t at = rng() % bytes.size();
      bytes[at] = static_cast<char>(bytes[at] ^ (1 << (rng() % 8)));
      ++flips;
      const std::vector<std::size_t> starts = record_starts(clean.files.at(path));
      std::size_t record = 0;  // the start of the record holding byte `at`
      for (std::size_t s : starts) {
        if (s <= at) record = s;
      }
      const bool in_header = at < detail::wal::kFileHeaderBytes;
      const bool in_last_record = name == last_segment && !in_header && record == starts.back();
      const std::string where = name + " byte " + std::to_string(at);
      RecoveryReport report;
      try {
        const std::vector<std::uint64_t> ids = read_ids(damaged, report);
        ASSERT_TRUE(in_last_record) << where << ": a flipped bit went unnoticed (" << report.describe() << ")";
        ASSERT_TRUE(report.torn_tail) << where;
        EXPECT_EQ(report.tail.file, name);
        EXPECT_EQ(report.tail.offset, record) << where;
        ASSERT_EQ(ids.size() + 1, clean_ids.size()) << where << ": more than the last record was cut";
        EXPECT_TRUE(std::equal(ids.begin(), ids.end(), clean_ids.begin())) << where;
        ++torn;
      } catch (const JournalCorruption& e) {
        ASSERT_FALSE(in_last_record) << where << ": " << e.what();
        const std::string expected = in_header ? "journal file " + name + ":" : name + " at offset " + std::to_string(record) + ":";
        EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << where << ": " << e.what();
        ++corruption;
      }
    }
  }
  std::printf("  %llu bits flipped: %llu read as corruption naming file and offset, %llu (last record) as a torn tail\n",
              static_cast<unsigned long long>(flips), static_cast<unsigned long long>(corruption),
              static_cast<unsigned long long>(torn));
  EXPECT_GT(corruption, flips / 2);
}

}  // namespace
}  // namespace ordo
