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
#include <functional>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/scheduler_core.hpp"  // the test-only fault point needs_submission_pause_us
#include "journal_support.hpp"
#include "ordo/ordo.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using namespace std::chrono_literals;
using test::ScratchDir;

const JournalOptions kFast{.durability = Durability::none};

// Runs `body` in a forked child and returns its result, or -1 when it did
// not finish within `limit` (the child is killed): a test of something that
// used to deadlock fails instead of hanging the test binary.
int result_in_child_within(std::chrono::seconds limit, const std::function<int()>& body) {
  const pid_t child = ::fork();
  if (child < 0) throw std::runtime_error("fork failed");
  if (child == 0) ::_exit(body());
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (::waitpid(child, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(child, SIGKILL);
      ::waitpid(child, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(5ms);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(Durable, EnqueuedTasksRunOnceAndLeaveNothingLive) {
  ScratchDir dir;
  Scheduler s{{.workers = 2}};
  std::mutex mu;
  std::multiset<std::string> seen;
  {
    DurableTasks d(s, dir.path(), kFast);
    d.define("greet", [&](TaskContext&, std::span<const std::byte> args) {
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
  d.define("flaky", [&](TaskContext& ctx, std::span<const std::byte>) {
    {
      std::lock_guard lock(mu);
      attempts.push_back(std::chrono::steady_clock::now());
    }
    throw std::runtime_error("attempt " + std::to_string(ctx.attempt()) + " failed");
  }, {.retry = {.max_attempts = 3, .initial_backoff = 20ms, .multiplier = 2.0, .jitter = 0.1}});
  d.start();
  const TaskId id = d.enqueue("flaky", "");
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
    d.define("job", [&](TaskContext&, std::span<const std::byte>) {
      if (!healthy) throw std::runtime_error("down");
      ++ran;
    }, {.retry = {.max_attempts = 1}});
  };
  TaskId a = 0, b = 0;
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
    d.define("later", [](TaskContext&, std::span<const std::byte>) { FAIL() << "ran in the first process"; });
    d.start();
    d.enqueue("later", "", {.run_at = due});
    EXPECT_EQ(d.stats().delayed, 1u);
    d.shutdown(ShutdownMode::cancel);  // leaves it in the journal
  }
  std::atomic<bool> ran{false};
  std::chrono::system_clock::time_point ran_at;
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("later", [&](TaskContext&, std::span<const std::byte>) {
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
    d.define("charge", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
  };
  TaskId first = 0;
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
  d.define("send_push", [&](TaskContext& ctx, std::span<const std::byte>) {
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

// A checkpoint of another size than the T asked for is not "no checkpoint":
// resuming from zero would redo (or skip) work silently.
TEST(Durable, ResumeFromACheckpointOfAnotherSizeIsAnErrorNamingBothSizes) {
  ScratchDir dir;
  Scheduler s{{.workers = 1}};
  std::string error;
  std::atomic<bool> empty_gave_default{false};
  DurableTasks d(s, dir.path(), kFast);
  d.define("resize", [&](TaskContext& ctx, std::span<const std::byte>) {
    if (ctx.attempt() == 1) {
      empty_gave_default = ctx.resume_from<std::uint64_t>(99) == 99;  // no checkpoint yet
      ctx.checkpoint(std::uint16_t{7});
      throw std::runtime_error("first attempt fails after its checkpoint");
    }
    try {
      (void)ctx.resume_from<std::uint64_t>(0);
    } catch (const InvalidArgument& e) {
      error = e.what();
    }
  }, {.retry = {.max_attempts = 2, .initial_backoff = 1ms}});
  d.start();
  d.enqueue("resize", "");
  d.shutdown();
  EXPECT_TRUE(empty_gave_default);
  ASSERT_FALSE(error.empty()) << "resume_from<uint64_t> of a 2-byte checkpoint did not throw";
  EXPECT_NE(error.find("2 bytes"), std::string::npos) << error;
  EXPECT_NE(error.find("8 bytes"), std::string::npos) << error;
}

TEST(Durable, UnknownTypeOnRecoveryIsAClearErrorOrDeadByOption) {
  ScratchDir dir;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("old_type", [](TaskContext&, std::span<const std::byte>) {});
    d.start();
    d.enqueue("old_type", "x", {.delay = std::chrono::hours(1)});
    d.shutdown(ShutdownMode::cancel);
  }
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    try {
      d.start();
      FAIL() << "expected UnknownTaskType";
    } catch (const UnknownTaskType& e) {
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
  d.define("t", [](TaskContext&, std::span<const std::byte>) {});
  EXPECT_THROW(d.define("t", [](TaskContext&, std::span<const std::byte>) {}), InvalidArgument);
  EXPECT_THROW(d.enqueue("t", ""), Error);  // before start()
  d.start();
  EXPECT_THROW(d.enqueue("nope", ""), InvalidArgument);
  Scheduler other{{.workers = 1}};
  const ResourceGroup not_ours = other.resource_group("db", 1);
  EXPECT_THROW(d.enqueue("t", "", {.needs = {{not_ours, 1}}}), InvalidArgument);  // another scheduler's group
  EXPECT_THROW(d.enqueue("t", "", {.needs = {{ResourceGroup{}, 1}}}), InvalidArgument);
  const ResourceGroup db = s.resource_group("db", 2);
  EXPECT_THROW(d.enqueue("t", "", {.needs = {{db, 3}}}), InvalidArgument);  // more than its limit
  EXPECT_THROW(d.enqueue("t", "", {.needs = {{db, 0}}}), InvalidArgument);
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
    d.define("t", [&](TaskContext&, std::span<const std::byte> args) {
      if (test::text_of(args) == "blocker") gate.hold();
      ++ran;
    });
    d.start();
    d.enqueue("t", "blocker");
    gate.wait_entered();
    for (int i = 0; i < 10; ++i) d.enqueue("t", "queued");
    std::thread opener([&] {
      test::await([&] { return !d.stats().accepting; }, "!d.stats().accepting");
      gate.open = true;  // let the running one finish once cancel began
    });
    d.shutdown(ShutdownMode::cancel);
    opener.join();
    EXPECT_EQ(ran.load(), 1);
  }
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("t", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
  EXPECT_EQ(d.start().requeued, 10u);
  d.shutdown();
  EXPECT_EQ(ran.load(), 11);
}

// Tasks enqueued with priorities and needs, left queued by one process, run
// in the next one in priority order (one worker, held until every task is
// queued), and each task that needs the group takes its permit there (the
// group's high-water mark, which stays 0 if a need was lost).
TEST(Durable, PriorityAndNeedsAreJournaledAndHonouredAfterRestart) {
  ScratchDir dir;
  const Priority order[] = {low, normal, high, low, high, normal, low, high};
  auto label = [](Priority p) { return std::string(1, static_cast<char>('0' + static_cast<int>(p))); };
  {
    Scheduler s{{.workers = 1}};
    const ResourceGroup db = s.resource_group("db", 1);
    test::Gate gate;
    DurableTasks d(s, dir.path(), kFast);
    d.define("hold", [&](TaskContext&, std::span<const std::byte>) { gate.hold(); });
    d.define("p", [](TaskContext&, std::span<const std::byte>) { FAIL() << "ran in the first process"; });
    d.define("n", [](TaskContext&, std::span<const std::byte>) { FAIL() << "ran in the first process"; });
    d.start();
    d.enqueue("hold", "");
    gate.wait_entered();  // the only worker is held: what follows stays queued
    for (Priority p : order) d.enqueue("p", label(p), {.priority = p});
    for (int i = 0; i < 8; ++i) d.enqueue("n", "", {.needs = {{db, 1}}});
    std::thread opener([&] {
      test::await([&] { return !d.stats().accepting; }, "!d.stats().accepting");
      gate.open = true;
    });
    d.shutdown(ShutdownMode::cancel);  // the queued ones stay in the journal
    opener.join();
  }
  Scheduler s{{.workers = 1}};
  const ResourceGroup db = s.resource_group("db", 1);
  test::Gate gate;
  s.post([&] { gate.hold(); });
  gate.wait_entered();
  std::mutex mu;
  std::string ran;
  DurableTasks d(s, dir.path(), kFast);
  d.define("p", [&](TaskContext&, std::span<const std::byte> args) {
    std::lock_guard lock(mu);
    ran += test::text_of(args);
  });
  std::atomic<int> needs_ran{0}, holding_db{0};
  d.define("n", [&](TaskContext&, std::span<const std::byte>) {
    ++needs_ran;
    if (db.stats().in_use == 1) ++holding_db;
  });
  const DurableRecovery r = d.start();
  EXPECT_EQ(r.requeued, 16u);
  EXPECT_EQ(s.find_resource_group("db").stats().max_in_use, 0u);  // nothing ran yet
  gate.open = true;
  d.shutdown(ShutdownMode::drain);
  std::string expected;
  for (Priority p : {high, normal, low}) {
    for (Priority q : order) expected += q == p ? label(p) : "";
  }
  EXPECT_EQ(ran, expected) << "not run in priority order after the restart";
  EXPECT_EQ(needs_ran.load(), 8);
  EXPECT_EQ(holding_db.load(), 8) << "a task that needs 'db' ran without its permit";
  EXPECT_EQ(db.stats().max_in_use, 1u) << "the journaled need did not take the group's permit";
}

// The group a journaled task needs is gone at start(): its own error, naming
// the group and the task's type; or the dead set, by option.
TEST(Durable, AMissingResourceGroupAtStartIsUnknownResourceGroupNamingGroupAndType) {
  ScratchDir dir;
  {
    Scheduler s{{.workers = 1}};
    const ResourceGroup db = s.resource_group("db", 1);
    DurableTasks d(s, dir.path(), kFast);
    d.define("query", [](TaskContext&, std::span<const std::byte>) {});
    d.start();
    d.enqueue("query", "", {.delay = std::chrono::hours(1), .needs = {{db, 1}}});
    d.shutdown(ShutdownMode::cancel);
  }
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("query", [](TaskContext&, std::span<const std::byte>) {});
    try {
      d.start();
      FAIL() << "expected UnknownResourceGroup";
    } catch (const UnknownResourceGroup& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("resource group 'db'"), std::string::npos) << what;
      EXPECT_NE(what.find("type 'query'"), std::string::npos) << what;
    }
  }
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast, {.unknown_types_to_dead = true});
  d.define("query", [](TaskContext&, std::span<const std::byte>) {});
  EXPECT_EQ(d.start().dead, 1u);
  ASSERT_EQ(d.dead().size(), 1u);
  EXPECT_NE(d.dead()[0].last_error.find("'db'"), std::string::npos) << d.dead()[0].last_error;
}

TEST(Durable, ACorruptJournalIsRefusedWithAClearErrorAndLeftAsItWas) {
  ScratchDir dir;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("t", [](TaskContext&, std::span<const std::byte>) {});
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

// key_retention 0: the key's retention has run out by the time the process
// restarts, the same condition as a 1 s retention and a restart 2.5 s later,
// without a sleep.
TEST(Durable, AKeyWhoseRetentionRanOutBeforeARestartIsFreeAfterIt) {
  ScratchDir dir;
  std::atomic<int> ran{0};
  const DurableOptions expires_at_once{.key_retention = std::chrono::seconds(0)};
  TaskId first = 0;
  {
    Scheduler s{{.workers = 2}};
    DurableTasks d(s, dir.path(), kFast, expires_at_once);
    d.define("charge", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
    d.start();
    first = d.enqueue("charge", "", {.idempotency_key = "order:7"});
    d.shutdown();
    ASSERT_EQ(ran.load(), 1);
  }
  Scheduler s{{.workers = 2}};
  DurableTasks d(s, dir.path(), kFast, expires_at_once);
  d.define("charge", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
  EXPECT_EQ(d.start().keys, 0u) << "a key past its retention was remembered";
  const TaskId second = d.enqueue("charge", "", {.idempotency_key = "order:7"});
  EXPECT_NE(second, first) << "the finished task's id came back for an expired key";
  d.shutdown();
  EXPECT_EQ(ran.load(), 2);
}

// A handler's error message is journaled in a 16-bit length field: a longer
// one is cut to 65535 bytes, and the record's length says so.
TEST(Durable, AnErrorMessageOf64KiBOrMoreIsCutToItsFirst65535Bytes) {
  ScratchDir dir;
  const std::string huge(70'000, 'e');
  auto define = [&](DurableTasks& d) {
    d.define("fails", [&](TaskContext&, std::span<const std::byte>) { throw std::runtime_error(huge); },
             {.retry = {.max_attempts = 1}});
  };
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    define(d);
    d.start();
    d.enqueue("fails", "");
    d.shutdown();
  }
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  define(d);
  EXPECT_EQ(d.start().dead, 1u);
  ASSERT_EQ(d.dead().size(), 1u);
  EXPECT_EQ(d.dead()[0].last_error.size(), 0xffffu);
  EXPECT_TRUE(d.dead()[0].last_error == huge.substr(0, 0xffff)) << "not the message's first 65535 bytes";
}

TEST(Durable, AnIdempotencyKeyOf64KiBOrMoreIsRefusedNamingTheField) {
  ScratchDir dir;
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("t", [](TaskContext&, std::span<const std::byte>) {});
  d.start();
  try {
    d.enqueue("t", "", {.idempotency_key = std::string(70'000, 'k')});
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("idempotency key"), std::string::npos) << e.what();
  }
  d.shutdown();
  EXPECT_EQ(Journal::read(dir.path(), {}).records, 0u);
}

// An append that fails inside enqueue (here: a payload over the journal's
// 64 MiB limit) leaves no task and no key behind.
TEST(Durable, AFailedEnqueueLeavesNoTaskAndNoKeyBehind) {
  ScratchDir dir;
  std::atomic<int> ran{0};
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("t", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
  d.start();
  const std::string too_big((64u << 20) + 1, 'x');
  EXPECT_THROW(d.enqueue("t", too_big, {.idempotency_key = "k"}), InvalidArgument);
  EXPECT_EQ(d.stats().live, 0u);
  d.enqueue("t", "small", {.idempotency_key = "k"});  // a fresh task, not the failed one
  d.shutdown();
  EXPECT_EQ(ran.load(), 1);
}

// shutdown() from inside a handler begins the shutdown and returns at once;
// the drain is finished by a shutdown() outside any handler (or the
// destructor). Run in a child: the old behaviour deadlocked.
TEST(Durable, ShutdownFromInsideAHandlerReturnsAndTheDrainFinishesOutsideIt) {
  for (ShutdownMode mode : {ShutdownMode::drain, ShutdownMode::cancel}) {
    ScratchDir dir;
    const int result = result_in_child_within(std::chrono::seconds(20), [&] {
      Scheduler s{{.workers = 2}};
      std::atomic<bool> returned{false};
      std::atomic<bool> refused_after{false};
      std::atomic<int> ran{0};
      DurableTasks d(s, dir.path(), kFast);
      d.define("stopper", [&](TaskContext&, std::span<const std::byte>) {
        d.shutdown(mode);
        try {
          d.enqueue("plain", "");
        } catch (const Error&) {
          refused_after = true;
        }
        returned = true;
      });
      d.define("plain", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
      d.start();
      d.enqueue("stopper", "");
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (!returned && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
      if (!returned) return 2;       // the handler never came back from shutdown()
      if (!refused_after) return 3;  // shutdown began: new tasks are refused
      if (d.stats().accepting) return 4;
      d.shutdown(mode);  // waits for the rest, outside any handler
      if (d.stats().live != 0) return 5;
      return 0;
    });
    EXPECT_EQ(result, 0) << "mode " << (mode == ShutdownMode::drain ? "drain" : "cancel")
                         << (result == -1 ? ": deadlocked (the child was killed after 20 s)" : "");
  }
}

// Found by the durable chaos test: once compaction folded finished tasks
// away, a restart handed their ids out again (an idempotency key retained
// for an old id then named a new, unrelated task).
TEST(Durable, TaskIdsAreNeverReusedAlsoAfterCompactionFoldedTheFinishedOnesAway) {
  ScratchDir dir;
  TaskId highest = 0;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("t", [](TaskContext&, std::span<const std::byte>) {});
    d.start();
    for (int i = 0; i < 5; ++i) highest = std::max(highest, d.enqueue("t", ""));
    d.shutdown();
    d.journal().compact();  // nothing live: the snapshot holds no record
  }
  for (int restart = 0; restart < 2; ++restart) {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("t", [](TaskContext&, std::span<const std::byte>) {});
    d.start();
    const TaskId next = d.enqueue("t", "");
    EXPECT_GT(next, highest) << "restart " << restart << " reused a task id";
    highest = std::max(highest, next);
    d.shutdown();
    d.journal().compact();  // and again: the snapshot must carry the mark on
  }
}

// Leaves `count` tasks of type "t" live and unstarted in dir (args "0",
// "1", ...), each needing one permit of a group "pool" (limit 1000): one
// worker held by a blocker while they are enqueued, then a cancelling
// shutdown.
void leave_unstarted_tasks(const std::string& dir, int count) {
  test::Gate gate;
  Scheduler s{{.workers = 1}};
  const ResourceGroup pool = s.resource_group("pool", 1000);
  DurableTasks d(s, dir, kFast);
  d.define("t", [&](TaskContext&, std::span<const std::byte> args) {
    if (test::text_of(args) == "blocker") gate.hold();
  });
  d.start();
  d.enqueue("t", "blocker");
  gate.wait_entered();
  for (int i = 0; i < count; ++i) d.enqueue("t", std::to_string(i), {.needs = {{pool, 1}}});
  std::thread opener([&] {
    test::await([&] { return !d.stats().accepting; }, "!d.stats().accepting");
    gate.open = true;
  });
  d.shutdown(ShutdownMode::cancel);
  opener.join();
}

// Runs what leave_unstarted_tasks() left, recording each task's args.
struct Recorder {
  std::mutex mu;
  std::multiset<std::string> seen;
  std::atomic<int> count{0};
  void operator()(TaskContext&, std::span<const std::byte> args) {
    std::lock_guard lock(mu);
    seen.insert(test::text_of(args));
    count.fetch_add(1);
  }
  std::function<void(TaskContext&, std::span<const std::byte>)> handler() {
    return [this](TaskContext& c, std::span<const std::byte> a) { (*this)(c, a); };
  }
};

// A recovery queues every live task at once and posts them a chunk at a
// time, workers running the first chunks while later ones are read: each
// still runs once, with its permit, and a drain waits for the last.
TEST(Durable, ARecoveryOfThousandsOfLiveTasksRunsEachExactlyOnce) {
  constexpr int kTasks = 3000;
  ScratchDir dir;
  leave_unstarted_tasks(dir.path(), kTasks);
  Recorder recorder;
  Scheduler s{{.workers = 2}};
  const ResourceGroup pool = s.resource_group("pool", 1000);
  DurableTasks d(s, dir.path(), kFast);
  d.define("t", recorder.handler());
  EXPECT_EQ(d.start().requeued, static_cast<std::uint64_t>(kTasks));
  d.shutdown(ShutdownMode::drain);
  EXPECT_EQ(d.stats().live, 0u);
  EXPECT_EQ(pool.stats().in_use, 0u);
  ASSERT_EQ(recorder.seen.size(), static_cast<std::size_t>(kTasks));
  for (int i = 0; i < kTasks; ++i) EXPECT_EQ(recorder.seen.count(std::to_string(i)), 1u) << "task " << i;
}

// A cancelling shutdown while a recovery is still posting its chunks (each
// post slowed by the fault point, so that the cancel lands among them): the
// posts refused leave their tasks live for the next start, and across the
// two starts every task runs exactly once.
TEST(Durable, ACancelWhileARecoveryPostsLosesNoTaskAndRunsNoneTwice) {
  constexpr int kTasks = 600;
  int cut_short = 0;  // rounds in which the cancel came before the last post
  for (int round = 0; round < 4; ++round) {
    ScratchDir dir;
    leave_unstarted_tasks(dir.path(), kTasks);
    Recorder recorder;
    int first_start_ran = 0;
    {
      Scheduler s{{.workers = 2}};
      s.resource_group("pool", 1000);
      DurableTasks d(s, dir.path(), kFast);
      d.define("t", recorder.handler());
      std::thread canceller([&] {
        test::await([&] { return recorder.count.load() != 0; }, "recorder.count.load() != 0");
        d.shutdown(ShutdownMode::cancel);
      });
      detail::needs_submission_pause_us.store(200);  // 600 posts: 120 ms
      d.start();
      detail::needs_submission_pause_us.store(0);
      canceller.join();
      first_start_ran = recorder.count.load();
    }
    if (first_start_ran < kTasks) ++cut_short;
    Scheduler s{{.workers = 2}};
    s.resource_group("pool", 1000);
    DurableTasks d(s, dir.path(), kFast);
    d.define("t", recorder.handler());
    EXPECT_EQ(d.start().requeued, static_cast<std::uint64_t>(kTasks - first_start_ran)) << "round " << round;
    d.shutdown(ShutdownMode::drain);
    EXPECT_EQ(d.stats().live, 0u) << "round " << round;
    ASSERT_EQ(recorder.seen.size(), static_cast<std::size_t>(kTasks)) << "round " << round;
    for (int i = 0; i < kTasks; ++i) {
      EXPECT_EQ(recorder.seen.count(std::to_string(i)), 1u) << "round " << round << ", task " << i;
    }
  }
  EXPECT_GT(cut_short, 0) << "no round cancelled before the recovery's last post: nothing was tested";
}

}  // namespace
}  // namespace ordo
