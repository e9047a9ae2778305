// Durable tasks in one process: running, retries, the dead set, delays,
// idempotency keys, checkpoints, recovery errors, shutdown modes. The crash
// harness is durable_crash_test.cpp.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "journal_support.hpp"
#include "ordo/ordo.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using namespace std::chrono_literals;
using test::ScratchDir;

const JournalOptions kFast{.durability = Durability::none};

TEST(Durable, EnqueuedTasksRunOnceAndLeaveNothingLive) {
  ScratchDir dir;
  Scheduler s{{.workers = 2}};
  std::mutex mu;
  std::multiset<std::string> seen;
  {
    DurableTasks d(s, dir.path(), kFast);
    d.define("greet", [&](JobContext&, std::span<const std::byte> args) {
      std::lock_guard lock(mu);
      seen.insert(test::text_of(args));
    });
    d.start();
    for (int i = 0; i < 200; ++i) d.enqueue("greet", "hello " + std::to_string(i));
    d.shutdown(ShutdownMode::drain);
    EXPECT_EQ(d.stats().live, 0u);
    EXPECT_EQ(d.stats().completed, 200u);
  }
  EXPECT_EQ(seen.size(), 200u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(seen.count("hello " + std::to_string(i)), 1u);
  EXPECT_EQ(Journal::read(dir.path(), {}).live_tasks, 0u);
}

TEST(Durable, FailuresAreRetriedWithBackoffThenGoToTheDeadSet) {
  ScratchDir dir;
  Scheduler s{{.workers = 2}};
  std::mutex mu;
  std::vector<std::chrono::steady_clock::time_point> attempts;
  DurableTasks d(s, dir.path(), kFast);
  d.define("flaky", [&](JobContext& ctx, std::span<const std::byte>) {
    {
      std::lock_guard lock(mu);
      attempts.push_back(std::chrono::steady_clock::now());
    }
    throw std::runtime_error("attempt " + std::to_string(ctx.attempt()) + " failed");
  }, {.retry = {.max_attempts = 3, .initial_backoff = 20ms, .multiplier = 2.0, .jitter = 0.1}});
  d.start();
  const JobId id = d.enqueue("flaky", "");
  d.shutdown(ShutdownMode::drain);  // drains through both backoffs
  ASSERT_EQ(attempts.size(), 3u);
  EXPECT_GE(attempts[1] - attempts[0], 18ms);  // 20 ms - 10% jitter
  EXPECT_GE(attempts[2] - attempts[1], 36ms);  // 40 ms - 10%
  const auto dead = d.dead();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].id, id);
  EXPECT_EQ(dead[0].attempts, 3u);
  EXPECT_EQ(dead[0].last_error, "attempt 3 failed");
  EXPECT_EQ(d.stats().failed_attempts, 3u);
}

TEST(Durable, DeadTasksCanBeRetriedOrDiscardedAndThatSurvivesARestart) {
  ScratchDir dir;
  std::atomic<bool> healthy{false};
  std::atomic<int> ran{0};
  auto define = [&](DurableTasks& d) {
    d.define("job", [&](JobContext&, std::span<const std::byte>) {
      if (!healthy) throw std::runtime_error("down");
      ++ran;
    }, {.retry = {.max_attempts = 1}});
  };
  JobId a = 0, b = 0;
  {
    Scheduler s{{.workers = 2}};
    DurableTasks d(s, dir.path(), kFast);
    define(d);
    d.start();
    a = d.enqueue("job", "a");
    b = d.enqueue("job", "b");
    d.shutdown();
    EXPECT_EQ(d.dead().size(), 2u);
  }
  Scheduler s{{.workers = 2}};
  DurableTasks d(s, dir.path(), kFast);
  define(d);
  EXPECT_EQ(d.start().dead, 2u);  // the dead set is journaled
  healthy = true;
  EXPECT_TRUE(d.retry_dead(a));
  EXPECT_TRUE(d.discard_dead(b));
  EXPECT_FALSE(d.discard_dead(b));
  d.shutdown();
  EXPECT_EQ(ran.load(), 1);
  EXPECT_TRUE(d.dead().empty());
  EXPECT_EQ(d.stats().live, 0u);
}

TEST(Durable, DelayedTaskSurvivesARestartAndRunsNotBeforeItsTime) {
  ScratchDir dir;
  const auto due = std::chrono::system_clock::now() + 300ms;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("later", [](JobContext&, std::span<const std::byte>) { FAIL() << "ran in the first process"; });
    d.start();
    d.enqueue("later", "", {.run_at = due});
    EXPECT_EQ(d.stats().delayed, 1u);
    d.shutdown(ShutdownMode::cancel);  // leaves it in the journal
  }
  std::atomic<bool> ran{false};
  std::chrono::system_clock::time_point ran_at;
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("later", [&](JobContext&, std::span<const std::byte>) {
    ran_at = std::chrono::system_clock::now();
    ran = true;
  });
  const DurableRecovery r = d.start();
  EXPECT_EQ(r.requeued, 1u);
  EXPECT_EQ(r.delayed, 1u);
  d.shutdown(ShutdownMode::drain);
  ASSERT_TRUE(ran);
  EXPECT_GE(ran_at, due);
}

TEST(Durable, IdempotencyKeyReturnsTheSameTaskAlsoAfterRestartAndCompaction) {
  ScratchDir dir;
  std::atomic<int> ran{0};
  auto define = [&](DurableTasks& d) {
    d.define("charge", [&](JobContext&, std::span<const std::byte>) { ++ran; });
  };
  JobId first = 0;
  {
    Scheduler s{{.workers = 2}};
    DurableTasks d(s, dir.path(), kFast);
    define(d);
    d.start();
    first = d.enqueue("charge", "42 EUR", {.idempotency_key = "order:42"});
    EXPECT_EQ(d.enqueue("charge", "42 EUR", {.idempotency_key = "order:42"}), first);
    d.shutdown();
    d.journal().compact();  // the completed task is folded away; its key must stay
  }
  Scheduler s{{.workers = 2}};
  DurableTasks d(s, dir.path(), kFast);
  define(d);
  EXPECT_EQ(d.start().keys, 1u);
  EXPECT_EQ(d.enqueue("charge", "42 EUR", {.idempotency_key = "order:42"}), first);
  EXPECT_NE(d.enqueue("charge", "43 EUR", {.idempotency_key = "order:43"}), first);
  d.shutdown();
  EXPECT_EQ(ran.load(), 2);
}

TEST(Durable, ARetryResumesFromTheLastCheckpoint) {
  ScratchDir dir;
  Scheduler s{{.workers = 2}};
  std::mutex mu;
  std::vector<int> done;
  DurableTasks d(s, dir.path(), kFast);
  d.define("send_push", [&](JobContext& ctx, std::span<const std::byte>) {
    for (int user = ctx.resume_from<int>(0); user < 100; ++user) {
      if (ctx.attempt() == 1 && user == 60) throw std::runtime_error("push gateway timed out");
      {
        std::lock_guard lock(mu);
        done.push_back(user);
      }
      ctx.checkpoint(user + 1);
    }
  }, {.retry = {.max_attempts = 2, .initial_backoff = 1ms}});
  d.start();
  d.enqueue("send_push", "campaign 7");
  d.shutdown();
  ASSERT_EQ(done.size(), 100u);  // no user twice, none skipped
  for (int i = 0; i < 100; ++i) EXPECT_EQ(done[static_cast<std::size_t>(i)], i);
}

TEST(Durable, UnknownTypeOnRecoveryIsAClearErrorOrDeadByOption) {
  ScratchDir dir;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("old_type", [](JobContext&, std::span<const std::byte>) {});
    d.start();
    d.enqueue("old_type", "x", {.delay = std::chrono::hours(1)});
    d.shutdown(ShutdownMode::cancel);
  }
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    try {
      d.start();
      FAIL() << "expected UnknownJobType";
    } catch (const UnknownJobType& e) {
      EXPECT_NE(std::string(e.what()).find("type 'old_type' is not defined"), std::string::npos) << e.what();
    }
  }
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast, {.unknown_types_to_dead = true});
  EXPECT_EQ(d.start().dead, 1u);  // parked as dead, not dropped
  ASSERT_EQ(d.dead().size(), 1u);
  EXPECT_NE(d.dead()[0].last_error.find("old_type"), std::string::npos);
}

TEST(Durable, InvalidEnqueuesAreRejectedAndNothingIsJournaled) {
  ScratchDir dir;
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("t", [](JobContext&, std::span<const std::byte>) {});
  EXPECT_THROW(d.define("t", [](JobContext&, std::span<const std::byte>) {}), InvalidArgument);
  EXPECT_THROW(d.enqueue("t", ""), Error);  // before start()
  d.start();
  EXPECT_THROW(d.enqueue("nope", ""), InvalidArgument);
  EXPECT_THROW(d.enqueue("t", "", {.needs = {{"db", 1}}}), InvalidArgument);
  d.shutdown();
  EXPECT_EQ(Journal::read(dir.path(), {}).records, 0u);
}

TEST(Durable, ShutdownCancelLeavesUnstartedTasksForTheNextStart) {
  ScratchDir dir;
  test::Gate gate;
  std::atomic<int> ran{0};
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("t", [&](JobContext&, std::span<const std::byte> args) {
      if (test::text_of(args) == "blocker") gate.hold();
      ++ran;
    });
    d.start();
    d.enqueue("t", "blocker");
    gate.wait_entered();
    for (int i = 0; i < 10; ++i) d.enqueue("t", "queued");
    std::thread opener([&] {
      while (d.stats().accepting) std::this_thread::yield();
      gate.open = true;  // let the running one finish once cancel began
    });
    d.shutdown(ShutdownMode::cancel);
    opener.join();
    EXPECT_EQ(ran.load(), 1);
  }
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("t", [&](JobContext&, std::span<const std::byte>) { ++ran; });
  EXPECT_EQ(d.start().requeued, 10u);
  d.shutdown();
  EXPECT_EQ(ran.load(), 11);
}

TEST(Durable, PriorityAndNeedsAreJournaledAndHonouredAfterRestart) {
  ScratchDir dir;
  {
    Scheduler s{{.workers = 1}};
    s.resource_group("db", 1);
    DurableTasks d(s, dir.path(), kFast);
    d.define("q", [](JobContext&, std::span<const std::byte>) {});
    d.start();
    d.enqueue("q", "", {.priority = low, .delay = std::chrono::hours(1), .needs = {{"db", 1}}});
    d.shutdown(ShutdownMode::cancel);
  }
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("q", [](JobContext&, std::span<const std::byte>) {});
  EXPECT_THROW(d.start(), UnknownJobType);  // the group it needs is gone: named, not dropped
}

TEST(Durable, ACorruptJournalIsRefusedWithAClearErrorAndLeftAsItWas) {
  ScratchDir dir;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("t", [](JobContext&, std::span<const std::byte>) {});
    d.start();
    d.enqueue("t", "payload that will be damaged", {.delay = std::chrono::hours(1)});
    d.shutdown(ShutdownMode::cancel);
  }
  { auto reopen = Journal::open(dir.path(), kFast); }  // a second segment: the damage is not a tail
  const std::string seg = dir.file(test::segment_name(1));
  std::string data;
  {
    std::ifstream in(seg, std::ios::binary);
    data.assign(std::istreambuf_iterator<char>(in), {});
  }
  data[50] ^= 0x04;
  std::ofstream(seg, std::ios::binary | std::ios::trunc).write(data.data(), static_cast<std::streamsize>(data.size()));
  Scheduler s{{.workers = 1}};
  try {
    DurableTasks d(s, dir.path(), kFast);
    FAIL() << "expected JournalCorruption";
  } catch (const JournalCorruption& e) {
    EXPECT_NE(std::string(e.what()).find("wal-0000000000000001.log at offset 32"), std::string::npos) << e.what();
  }
  std::ifstream again(seg, std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(again), {}), data);
}

TEST(DurableWorkflow, NodesRunInDependencyOrderAndTheWorkflowCompletes) {
  ScratchDir dir;
  Scheduler s{{.workers = 2}};
  std::mutex mu;
  std::vector<std::string> order;
  DurableTasks d(s, dir.path(), kFast);
  d.define("step", [&](JobContext&, std::span<const std::byte> args) {
    std::lock_guard lock(mu);
    order.push_back(test::text_of(args));
  });
  d.start();
  DurableWorkflow wf("etl");
  wf.node("extract", "step", "extract")
      .node("clean", "step", "clean", {"extract"})
      .node("enrich", "step", "enrich", {"extract"})
      .node("load", "step", "load", {"clean", "enrich"});
  const JobId id = d.enqueue_workflow(wf, "etl:2026-11-26");
  EXPECT_EQ(d.enqueue_workflow(wf, "etl:2026-11-26"), id);  // the key deduplicates
  d.shutdown();
  ASSERT_EQ(order.size(), 4u);
  EXPECT_EQ(order.front(), "extract");
  EXPECT_EQ(order.back(), "load");
  EXPECT_EQ(d.stats().workflows, 0u);
  EXPECT_EQ(Journal::read(dir.path(), {}).live_tasks, 0u);
}

TEST(DurableWorkflow, ACycleOrAnUnknownNameIsRejectedBeforeAnythingIsJournaled) {
  ScratchDir dir;
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("step", [](JobContext&, std::span<const std::byte>) {});
  d.start();
  DurableWorkflow cyclic("loop");
  cyclic.node("a", "step", "", {"c"}).node("b", "step", "", {"a"}).node("c", "step", "", {"b"});
  try {
    d.enqueue_workflow(cyclic);
    FAIL() << "expected InvalidGraph";
  } catch (const InvalidGraph& e) {
    EXPECT_NE(std::string(e.what()).find("cycle"), std::string::npos) << e.what();
  }
  DurableWorkflow unknown("typo");
  unknown.node("a", "step").node("b", "step", "", {"aa"});
  EXPECT_THROW(d.enqueue_workflow(unknown), InvalidGraph);
  DurableWorkflow untyped("untyped");
  untyped.node("a", "no_such_type");
  EXPECT_THROW(d.enqueue_workflow(untyped), InvalidArgument);
  d.shutdown();
  EXPECT_EQ(Journal::read(dir.path(), {}).records, 0u);
}

// A child runs a -> b -> c; b compacts the journal and then kills the
// process on its first attempt. The restart must not run a again, must
// retry b, and must run c after it.
TEST(DurableWorkflow, AfterACrashItResumesMidwayWithoutRerunningFinishedNodes) {
  ScratchDir dir;
  const std::string journal = dir.file("journal");
  const std::string effects = dir.file("effects");
  auto define = [&](DurableTasks& d, bool crash) {
    d.define("step", [&, crash](JobContext& ctx, std::span<const std::byte> args) {
      const std::string line = test::text_of(args) + " attempt " + std::to_string(ctx.attempt()) + "\n";
      FILE* f = std::fopen(effects.c_str(), "a");
      std::fputs(line.c_str(), f);
      std::fclose(f);
      if (crash && test::text_of(args) == "b") {
        d.journal().compact();  // a's records are folded away: "done" must survive that
        ::kill(::getpid(), SIGKILL);
      }
    }, {.retry = {.max_attempts = 5}});
  };
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, journal, {.durability = Durability::sync});
    define(d, true);
    d.start();
    DurableWorkflow wf("chain");
    wf.node("a", "step", "a").node("b", "step", "b", {"a"}).node("c", "step", "c", {"b"});
    d.enqueue_workflow(wf);
    d.shutdown();
    ::_exit(3);  // not reached: b kills the process
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the child was meant to die in b";
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, journal, {.durability = Durability::sync});
    define(d, false);
    const DurableRecovery r = d.start();
    EXPECT_EQ(r.workflows, 1u);
    EXPECT_EQ(r.interrupted, 1u);
    d.shutdown();
    EXPECT_EQ(d.stats().workflows, 0u);
  }
  std::ifstream in(effects);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  EXPECT_EQ(lines, (std::vector<std::string>{"a attempt 1", "b attempt 1", "b attempt 2", "c attempt 1"}));
}

TEST(DurableWorkflow, AWorkflowWhoseCommitRecordWasLostIsDroppedAndItsKeyIsFree) {
  ScratchDir dir;
  test::Gate gate;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("block", [&](JobContext&, std::span<const std::byte>) { gate.hold(); });
    d.define("step", [](JobContext&, std::span<const std::byte>) { FAIL() << "a node ran in the first process"; });
    d.start();
    d.enqueue("block", "");
    gate.wait_entered();  // the only worker is busy: the nodes stay queued
    DurableWorkflow wf("w");
    wf.node("a", "step").node("b", "step", "", {"a"});
    d.enqueue_workflow(wf, "wf-key");
    std::thread opener([&] {
      while (d.stats().accepting) std::this_thread::yield();
      gate.open = true;
    });
    d.shutdown(ShutdownMode::cancel);
    opener.join();
  }
  // Cut the journal just before the WORKFLOW record, as a crash inside
  // enqueue_workflow would have left it.
  std::uint64_t segment = 0, offset = 0;
  Journal::read(dir.path(), [&](const RecordView& r) {
    if (r.type == RecordType::workflow) {
      segment = r.segment;
      offset = r.offset;
    }
  });
  ASSERT_NE(segment, 0u);
  std::filesystem::resize_file(dir.file(test::segment_name(segment)), offset);
  std::atomic<int> ran{0};
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("block", [](JobContext&, std::span<const std::byte>) {});
  d.define("step", [&](JobContext&, std::span<const std::byte>) { ++ran; });
  const DurableRecovery r = d.start();
  EXPECT_EQ(r.workflows, 0u);
  EXPECT_EQ(r.requeued, 1u);  // the blocker (its COMPLETE followed the cut); not the two nodes, never accepted
  DurableWorkflow wf("w");
  wf.node("a", "step").node("b", "step", "", {"a"});
  d.enqueue_workflow(wf, "wf-key");  // not deduplicated against the lost one
  d.shutdown();
  EXPECT_EQ(ran.load(), 2);
}

}  // namespace
}  // namespace ordo
