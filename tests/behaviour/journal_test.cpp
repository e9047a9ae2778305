// The journal's writer: group commit, durability across a killed process,
// compaction (also interrupted at each step).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "journal/journal_impl.hpp"  // the test-only compaction_crash_point
#include "journal_support.hpp"
#include "ordo/journal.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

namespace fs = std::filesystem;
using test::ScratchDir;

std::string body_of(std::uint64_t v) { return "payload-" + std::to_string(v); }

// A segment's reservation with the default segment_bytes (64 MiB).
constexpr std::uintmax_t kSegmentReservationForTests = detail::kSegmentReservation;

TEST(Journal, ConcurrentAppendersAllLandInOrderPerThread) {
  for (Durability mode : {Durability::sync, Durability::async, Durability::none}) {
    ScratchDir dir;
    constexpr int kThreads = 8;
    const int per_thread = mode == Durability::sync ? 100 : 2000;
    {
      auto j = Journal::open(dir.path(), {.durability = mode, .segment_bytes = 64 << 10});
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
          for (int i = 0; i < per_thread; ++i) {
            const std::uint64_t id = static_cast<std::uint64_t>(t) << 32 | static_cast<std::uint64_t>(i);
            j->append_durable(RecordType::enqueue, id, test::bytes(body_of(id)));
          }
        });
      }
      for (auto& th : threads) th.join();
      const JournalStats st = j->stats();
      EXPECT_EQ(st.appended, static_cast<std::uint64_t>(kThreads * per_thread));
      EXPECT_EQ(st.live_tasks, st.appended);
      if (mode == Durability::sync) {
        // Group commit: threads waiting at the same time share an fdatasync.
        EXPECT_LT(st.syncs, st.appended) << "every record paid its own fdatasync";
      }
    }
    std::vector<int> next(kThreads, 0);
    RecoveryReport report;
    for (const auto& r : test::read_all(dir.path(), &report)) {
      const int t = static_cast<int>(r.task >> 32);
      const int i = static_cast<int>(r.task & 0xffffffff);
      ASSERT_EQ(i, next[t]) << to_string(mode) << ": thread " << t << " out of order";
      ASSERT_EQ(r.body, body_of(r.task));
      ++next[t];
    }
    for (int t = 0; t < kThreads; ++t) EXPECT_EQ(next[t], per_thread) << to_string(mode);
    EXPECT_EQ(report.live_tasks, static_cast<std::uint64_t>(kThreads * per_thread));
  }
}

// A child process appends as fast as it can and reports, through a pipe,
// each record its journal called durable; the parent kills it with SIGKILL
// mid-stream, then recovers: every reported record must be there.
void kill_during_appends(Durability mode) {
  for (int round = 0; round < 3; ++round) {
    ScratchDir dir;
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::close(fds[0]);
      auto j = Journal::open(dir.path(), {.durability = mode, .segment_bytes = 256 << 10});
      for (std::uint64_t id = 1;; ++id) {
        const std::string body(id % 200, 'x');
        j->append_durable(RecordType::enqueue, id, test::bytes(body));
        if (::write(fds[1], &id, sizeof id) != sizeof id) ::_exit(3);
      }
    }
    ::close(fds[1]);
    std::uint64_t acked = 0, id = 0;
    const std::uint64_t stop_after = 200 + 500 * static_cast<std::uint64_t>(round);
    while (acked < stop_after && ::read(fds[0], &id, sizeof id) == sizeof id) acked = id;
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    while (::read(fds[0], &id, sizeof id) == sizeof id) acked = id;  // acks already in the pipe
    ::close(fds[0]);
    ASSERT_TRUE(WIFSIGNALED(status));
    ASSERT_GE(acked, stop_after);
    std::set<std::uint64_t> found;
    {
      auto j = Journal::open(dir.path(), {.durability = mode}, [&](const RecordView& r) {
        ASSERT_EQ(r.payload.size(), 8 + r.task % 200);
        found.insert(r.task);
      });
      EXPECT_GE(j->recovery().records, acked);
    }
    for (std::uint64_t k = 1; k <= acked; ++k) ASSERT_TRUE(found.count(k)) << "durable record " << k << " lost";
  }
}

TEST(Journal, KilledWriterLosesNothingReportedDurableInSyncMode) { kill_during_appends(Durability::sync); }
TEST(Journal, KilledWriterLosesNothingReportedDurableInAsyncMode) { kill_during_appends(Durability::async); }

// Tasks 1..100 enqueued; the even ones completed; the odd ones checkpointed
// three times (bodies c0, c1, c2). Expected live state: odd tasks, with
// their ENQUEUE and only the last CHECKPOINT.
void write_history(Journal& j) {
  for (std::uint64_t t = 1; t <= 100; ++t) j.append(RecordType::enqueue, t, test::bytes("args" + std::to_string(t)));
  for (int round = 0; round < 3; ++round) {
    for (std::uint64_t t = 1; t <= 100; ++t) {
      if (t % 2 == 0 && round == 0) j.append(RecordType::complete, t);
      if (t % 2 == 1) j.append(RecordType::checkpoint, t, test::bytes("c" + std::to_string(round)));
    }
  }
}

void expect_live_state(const std::string& dir) {
  std::map<std::uint64_t, std::vector<std::string>> by_task;
  auto j = Journal::open(dir, {.durability = Durability::none}, [&](const RecordView& r) {
    by_task[r.task].push_back(std::string(to_string(r.type)) + ":" +
                              std::string(reinterpret_cast<const char*>(r.payload.data()) + 8, r.payload.size() - 8));
  });
  EXPECT_EQ(j->recovery().live_tasks, 50u);
  for (std::uint64_t t = 1; t <= 100; t += 2) {
    const auto& seen = by_task[t];
    ASSERT_GE(seen.size(), 2u) << "task " << t;
    EXPECT_EQ(seen.front(), "ENQUEUE:args" + std::to_string(t));
    EXPECT_EQ(seen.back(), "CHECKPOINT:c2");
  }
  for (std::uint64_t t = 2; t <= 100; t += 2) {
    if (!by_task[t].empty()) EXPECT_EQ(by_task[t].back(), "COMPLETE:") << "task " << t;
  }
}

TEST(Journal, CompactionKeepsOnlyLiveTasksAndTheirLatestCheckpoint) {
  ScratchDir dir;
  {
    auto j = Journal::open(dir.path(), {.durability = Durability::none});
    write_history(*j);
    j->sync();
    const std::uint64_t before = j->stats().bytes;
    j->compact();
    EXPECT_LT(j->stats().bytes, before);
    EXPECT_EQ(j->stats().compactions, 1u);
  }
  std::map<std::uint64_t, int> records_per_task;
  RecoveryReport report;
  for (const auto& r : test::read_all(dir.path(), &report)) records_per_task[r.task]++;
  EXPECT_NE(report.snapshot, 0u);
  EXPECT_EQ(records_per_task.size(), 50u);  // completed tasks are gone
  for (const auto& [task, n] : records_per_task) {
    EXPECT_EQ(task % 2, 1u);
    EXPECT_EQ(n, 2) << "task " << task;  // ENQUEUE and the last CHECKPOINT
  }
  expect_live_state(dir.path());
}

TEST(Journal, CompactionInterruptedAtEachStepRecovers) {
  for (int step = 1; step <= 4; ++step) {
    ScratchDir dir;
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      const JournalOptions o{.durability = Durability::sync};
      detail::compaction_crash_point = [step](int at) {
        if (at == step) ::_exit(0);  // the process dies here, as in a crash
      };
      auto j = Journal::open(dir.path(), o);
      write_history(*j);
      j->sync();
      j->compact();
      ::_exit(7);  // not reached
    }
    int status = 0;
    ASSERT_TRUE(test::wait_child_within(child, std::chrono::seconds(60), status)) << "step " << step << ": the child hung";
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "step " << step;
    SCOPED_TRACE("crashed at compaction step " + std::to_string(step));
    expect_live_state(dir.path());
    expect_live_state(dir.path());  // and again, after the first recovery's clean-up
    for (const auto& e : fs::directory_iterator(dir.path())) EXPECT_NE(e.path().extension(), ".tmp");
  }
}

TEST(Journal, BackgroundCompactionKeepsTheSizeNearTheLiveState) {
  ScratchDir dir;
  auto j = Journal::open(dir.path(), {.durability = Durability::none, .segment_bytes = 16 << 10,
                                      .compact_after_bytes = 64 << 10});
  const std::string args(200, 'a');
  for (std::uint64_t t = 1; t <= 20000; ++t) {
    j->append(RecordType::enqueue, t, test::bytes(args));
    j->append(RecordType::complete, t);
  }
  j->sync();
  // The compactor runs on its own thread: wait (bounded) for it to have run.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (j->stats().compactions == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GE(j->stats().compactions, 1u);
  // ~4.6 MB of history; nothing is live, so after a compaction only the
  // segments written since (at most about compact_after_bytes) remain.
  j->compact();
  EXPECT_LT(j->stats().bytes, 256u << 10) << "the journal grows with history";
  EXPECT_EQ(j->stats().live_tasks, 0u);
}

// In sync mode every waited-for record is written by its waiting thread, not
// the writer thread: the size trigger must fire whoever writes.
TEST(Journal, BackgroundCompactionStartsWhenEveryRecordIsWrittenByAWaitingAppender) {
  ScratchDir dir;
  auto j = Journal::open(dir.path(), {.durability = Durability::sync, .segment_bytes = 4096,
                                      .compact_after_bytes = 8 << 10});
  const std::string args(200, 'a');
  for (std::uint64_t t = 1; t <= 100; ++t) {
    j->append_durable(RecordType::enqueue, t, test::bytes(args));
    j->append_durable(RecordType::complete, t);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (j->stats().compactions == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GE(j->stats().compactions, 1u) << "40 KiB written past an 8 KiB trigger, and no compaction in 20 s";
}

TEST(Journal, OversizedRecordIsRejectedAtAppendAndNothingElseIsLost) {
  ScratchDir dir;
  {
    auto j = Journal::open(dir.path(), {.durability = Durability::none});
    j->append_durable(RecordType::enqueue, 1);
    const std::vector<std::byte> huge(64u << 20);
    EXPECT_THROW(j->append(RecordType::enqueue, 2, huge), InvalidArgument);
    j->append(RecordType::enqueue, 3);
  }
  const auto got = test::read_all(dir.path());
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].task, 3u);
}

// on_durable: the callback comes once the record is durable under the mode,
// never before, and tells the caller when it will never be.
TEST(Journal, OnDurableCallsBackOnlyOnceTheRecordIsInTheFile) {
  for (Durability mode : {Durability::sync, Durability::async, Durability::none}) {
    for (int round = 0; round < 50; ++round) {
      ScratchDir dir;
      auto j = Journal::open(dir.path(), {.durability = mode});
      const Lsn lsn = j->append(RecordType::enqueue, 7, test::bytes(body_of(7)));
      std::promise<std::pair<bool, std::size_t>> seen;  // (durable, records in the files at that moment)
      const bool later = j->on_durable(lsn, [&](bool durable) {
        seen.set_value({durable, test::read_all(dir.path()).size()});
      });
      if (!later) {  // already durable when asked: then it must be in the file already
        ASSERT_EQ(test::read_all(dir.path()).size(), 1u) << to_string(mode);
        continue;
      }
      auto [durable, records] = seen.get_future().get();
      EXPECT_TRUE(durable) << to_string(mode);
      EXPECT_EQ(records, 1u) << to_string(mode) << ": called back before the record was written";
      if (mode == Durability::sync) EXPECT_GE(j->stats().syncs, 1u) << "called back before any fdatasync";
    }
  }
}

TEST(Journal, OnDurableForARecordAlreadyDurableReturnsFalseAndNeverCalls) {
  ScratchDir dir;
  auto j = Journal::open(dir.path(), {.durability = Durability::sync});
  const Lsn lsn = j->append(RecordType::enqueue, 1, test::bytes(body_of(1)));
  j->wait_durable(lsn);
  bool called = false;
  EXPECT_FALSE(j->on_durable(lsn, [&](bool) { called = true; }));
  j.reset();  // close: a kept callback would run now
  EXPECT_FALSE(called);
}

// wait_written (a durable task's START) beside sync-mode appenders that wait
// for fdatasync: a thread that needs only "written" may write while the
// leader syncs. Every record stays in order per thread, nothing reported
// written is lost to a SIGKILL, and the syncing threads still share syncs.
TEST(Journal, WaitWrittenBesideSyncingAppendersKeepsOrderAndLosesNothingToAKill) {
  constexpr int kThreads = 6;  // even: syncing, odd: written only
  ScratchDir dir;
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(fds[0]);
    auto j = Journal::open(dir.path(), {.durability = Durability::sync, .segment_bytes = 16 << 10});
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (std::uint64_t i = 0;; ++i) {
          const std::uint64_t id = static_cast<std::uint64_t>(t) << 32 | i;
          const Lsn lsn = j->append(RecordType::start, id, test::bytes(body_of(id)));
          if (t % 2 == 0) {
            j->wait_durable(lsn);
          } else {
            j->wait_written(lsn);
          }
          if (::write(fds[1], &id, sizeof id) != sizeof id) ::_exit(3);
        }
      });
    }
    for (auto& th : threads) th.join();
    ::_exit(0);
  }
  ::close(fds[1]);
  std::map<int, std::uint64_t> acked;  // thread -> records 0..n-1 reported
  std::uint64_t id = 0, total = 0;
  while (total < 3000 && ::read(fds[0], &id, sizeof id) == sizeof id) {
    acked[static_cast<int>(id >> 32)] = (id & 0xffffffff) + 1;
    ++total;
  }
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  while (::read(fds[0], &id, sizeof id) == sizeof id) acked[static_cast<int>(id >> 32)] = (id & 0xffffffff) + 1;
  ::close(fds[0]);
  ASSERT_TRUE(WIFSIGNALED(status));
  std::map<int, std::uint64_t> next;
  for (const auto& r : test::read_all(dir.path())) {
    const int t = static_cast<int>(r.task >> 32);
    ASSERT_EQ(r.task & 0xffffffff, next[t]) << "thread " << t << " out of order";
    ASSERT_EQ(r.body, body_of(r.task));
    ++next[t];
  }
  for (const auto& [t, n] : acked) EXPECT_GE(next[t], n) << "thread " << t << ": a record reported written was lost";
}

// A segment takes its space when it is created (so that the syncs of its
// records commit no change of size) and gives back what it did not use when
// it is closed: rotated, or the journal closed. Only a crash leaves the
// reservation behind, which reads as a zero-filled tail that the next open
// cuts off, losing nothing.
TEST(Journal, AnOpenSegmentIsReservedAndAClosedOneEndsWithItsLastRecord) {
  ScratchDir dir;
  const std::string body(100, 'r');
  std::uint64_t written = 0;
  {
    auto j = Journal::open(dir.path(), {.durability = Durability::sync, .segment_bytes = 64 << 10, .compact_after_bytes = 0});
    for (std::uint64_t task = 1; task <= 2000; ++task) j->append(RecordType::enqueue, task, test::bytes(body));
    j->sync();
    const JournalStats stats = j->stats();
    ASSERT_GE(stats.segments, 3u) << "no rotation happened";
    const std::uint64_t open_file = fs::file_size(dir.file(test::segment_name(stats.segments)));
    EXPECT_EQ(open_file, 64u << 10) << "the open segment was not reserved";
    for (std::uint64_t n = 1; n < stats.segments; ++n) {
      EXPECT_LT(fs::file_size(dir.file(test::segment_name(n))), 64u << 10) << "segment " << n << " kept its reservation";
    }
    written = stats.bytes;
    EXPECT_LT(written, stats.segments * (64u << 10)) << "stats count the reservation as written bytes";
  }
  std::uint64_t on_disk = 0;
  for (const auto& entry : fs::directory_iterator(dir.path()))
    if (entry.path().extension() == ".log") on_disk += entry.file_size();
  EXPECT_EQ(on_disk, written) << "close left a reservation behind";
  RecoveryReport report;
  EXPECT_EQ(test::read_all(dir.path(), &report).size(), 2000u);
  EXPECT_FALSE(report.torn_tail) << report.describe();
}

TEST(Journal, ACrashLeavesTheReservationAsAZeroFilledTailThatTheNextOpenCutsOff) {
  ScratchDir dir, crashed;
  auto j = Journal::open(dir.path(), {.durability = Durability::sync});
  for (std::uint64_t task = 1; task <= 50; ++task) j->append(RecordType::enqueue, task, test::bytes(body_of(task)));
  j->sync();
  // What a kill -9 now leaves: the files as the page cache holds them.
  fs::copy(dir.path(), crashed.path(), fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  const std::string last = crashed.file(test::segment_name(1));
  ASSERT_EQ(fs::file_size(last), kSegmentReservationForTests);
  RecoveryReport report;
  EXPECT_EQ(test::read_all(crashed.path(), &report).size(), 50u);
  ASSERT_TRUE(report.torn_tail);
  EXPECT_EQ(report.tail.reason, "zero-filled tail");
  // Every crash outside a clean close leaves one: its description must not
  // read as lost data.
  EXPECT_NE(report.describe().find("all zeros, no record in them"), std::string::npos) << report.describe();
  EXPECT_EQ(report.describe().find("dropped"), std::string::npos) << report.describe();
  {
    auto reopened = Journal::open(crashed.path(), {.durability = Durability::sync});
    EXPECT_EQ(reopened->recovery().records, 50u);
    EXPECT_LT(fs::file_size(last), 64u << 10) << "the tail was not cut off";
    reopened->append(RecordType::complete, 1);
  }
  RecoveryReport again;
  EXPECT_EQ(test::read_all(crashed.path(), &again).size(), 51u);
  EXPECT_FALSE(again.torn_tail) << again.describe();
}

}  // namespace
}  // namespace ordo
