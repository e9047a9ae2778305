#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "ordo/ordo.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

TEST(Scheduler, SubmitReturnsTheValue) {
  Scheduler s{{.workers = 2}};
  auto h = s.submit([] { return 6 * 7; });
  EXPECT_EQ(h.get(), 42);
  EXPECT_FALSE(h.valid());
}

TEST(Scheduler, VoidTasksAndMoveOnlyResults) {
  Scheduler s{{.workers = 2}};
  std::atomic<int> ran{0};
  auto v = s.submit([&] { ran.fetch_add(1); });
  v.get();
  EXPECT_EQ(ran.load(), 1);
  auto p = s.submit([] { return std::make_unique<std::string>("moved"); });
  EXPECT_EQ(*p.get(), "moved");
}

TEST(Scheduler, ExceptionReachesGetAndWorkerSurvives) {
  Scheduler s{{.workers = 1}};
  auto bad = s.submit([]() -> int { throw std::runtime_error("boom"); });
  try {
    bad.get();
    FAIL() << "get() should rethrow";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "boom");
  }
  // The only worker is still alive and serving.
  EXPECT_EQ(s.submit([] { return 1; }).get(), 1);
}

TEST(Scheduler, StatusMovesFromQueuedToSucceededOrFailed) {
  Scheduler s{{.workers = 1}};
  auto ok = s.submit([] { return 1; });
  auto bad = s.submit([]() -> int { throw std::logic_error("x"); });
  ok.wait();
  bad.wait();
  EXPECT_EQ(ok.status(), TaskStatus::succeeded);
  EXPECT_EQ(bad.status(), TaskStatus::failed);
  EXPECT_TRUE(ok.ready());
}

TEST(Scheduler, LargeCapturesAreBoxedAndStillRun) {
  Scheduler s{{.workers = 2}};
  std::array<int, 64> big{};
  for (int i = 0; i < 64; ++i) big[i] = i;
  auto h = s.submit([big] {
    int sum = 0;
    for (int x : big) sum += x;
    return sum;
  });
  EXPECT_EQ(h.get(), 2016);
}

TEST(Scheduler, InvalidOptionsAreRejectedWithAClearMessage) {
  try {
    Scheduler s{{.levels = 0}};
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("levels"), std::string::npos);
  }
  EXPECT_THROW((Scheduler{{.levels = kMaxLevels + 1}}), InvalidArgument);
  Scheduler s{{.workers = 1, .levels = 2}};
  try {
    s.post([] {}, {.priority = Priority{2}});
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("priority level 2"), std::string::npos);
  }
}

TEST(Scheduler, MillionExternalSubmissionsAllRunExactlyOnce) {
  const std::size_t kTasks = 125000 * test::kScale;
  std::vector<std::atomic<std::uint8_t>> runs(kTasks);
  {
    Scheduler s{{.workers = 2}};
    for (std::size_t i = 0; i < kTasks; ++i) s.post([&runs, i] { runs[i].fetch_add(1, std::memory_order_relaxed); });
  }  // destructor drains
  for (std::size_t i = 0; i < kTasks; ++i) ASSERT_EQ(runs[i].load(), 1) << "task " << i;
}

TEST(Scheduler, ConcurrentExternalSubmittersAllRunExactlyOnce) {
  const int kThreads = 4;
  const std::size_t kPerThread = 10000 * test::kScale;
  std::atomic<std::size_t> count{0};
  std::atomic<std::size_t> sum{0};
  {
    Scheduler s{{.workers = 2}};
    std::vector<std::thread> producers;
    for (int p = 0; p < kThreads; ++p) {
      producers.emplace_back([&, p] {
        for (std::size_t i = 0; i < kPerThread; ++i) {
          const std::size_t value = p * kPerThread + i;
          s.post([&, value] {
            count.fetch_add(1, std::memory_order_relaxed);
            sum.fetch_add(value, std::memory_order_relaxed);
          }, {.priority = Priority{static_cast<std::uint8_t>(i % 3)}});
        }
      });
    }
    for (auto& t : producers) t.join();
  }
  const std::size_t n = kThreads * kPerThread;
  EXPECT_EQ(count.load(), n);
  EXPECT_EQ(sum.load(), n * (n - 1) / 2);
}

// The level a task runs at is observed through stats(): per_level[l].running
// counts workers whose innermost running task is at level l, and
// per_level[l].completed counts tasks run at l. The outer task does not wait
// for the inner ones (a wait from a high task would raise them, hiding what
// they were submitted at): they run after it, on the only worker.
TEST(Scheduler, TasksSubmittedFromInsideTasksRunAndInheritPriority) {
  Scheduler s{{.workers = 1}};
  auto running_at = [&s](Priority p) { return s.stats().per_level[static_cast<unsigned>(p)].running; };
  auto outer = s.submit([&] {
    auto inherits = s.submit([&] { return running_at(high); });  // no priority: inherits high
    auto explicit_low = s.submit([&] { return running_at(low); }, {.priority = low});
    return std::pair{std::move(inherits), std::move(explicit_low)};
  }, {.priority = high});
  auto [inherits, explicit_low] = outer.get();
  EXPECT_EQ(inherits.get(), 1u) << "a task submitted inside a high task without a priority did not run at high";
  EXPECT_EQ(explicit_low.get(), 1u) << "an explicit priority inside a task must win over inheritance";
  s.submit([] {}).get();  // from outside the pool, no priority: normal
  const SchedulerStats st = s.stats();
  EXPECT_EQ(st.per_level[static_cast<unsigned>(high)].completed, 2u);
  EXPECT_EQ(st.per_level[static_cast<unsigned>(normal)].completed, 1u);
  EXPECT_EQ(st.per_level[static_cast<unsigned>(low)].completed, 1u);
}

TEST(Scheduler, WaitingOnAHandleInsideTheOnlyWorkerHelpsInsteadOfDeadlocking) {
  Scheduler s{{.workers = 1}};
  auto h = s.submit([&s] {
    int total = 0;
    std::vector<Handle<int>> parts;
    for (int i = 0; i < 100; ++i) parts.push_back(s.submit([i] { return i; }));
    for (auto& p : parts) total += p.get();
    return total;
  });
  EXPECT_EQ(h.get(), 4950);
}

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

TEST(Scheduler, WaitForReturnsTrueWhenTheTaskFinishesInTime) {
  Scheduler s{{.workers = 2}};
  const auto started = Clock::now();
  for (int i = 0; i < static_cast<int>(200 * test::kScale); ++i) {
    auto h = s.submit([i] { return i; });
    ASSERT_TRUE(h.wait_for(20s)) << "iteration " << i << ": a finished task was reported as timed out";
    EXPECT_TRUE(h.ready());
    EXPECT_EQ(h.get(), i);
  }
  auto h = s.submit([] { return 7; });
  EXPECT_TRUE(h.wait_until(Clock::now() + 20s));
  EXPECT_TRUE(h.wait_until(std::chrono::system_clock::now() + 20s));  // another clock
  EXPECT_TRUE(h.wait_for(std::chrono::hours::max()));                  // saturates, never overflows
  EXPECT_EQ(h.get(), 7);
  EXPECT_LT(Clock::now() - started, 20s);
}

TEST(Scheduler, WaitForATaskHeldByAGateTimesOutAndTheHandleStaysUsable) {
  Scheduler s{{.workers = 2}};
  test::Gate gate;
  auto h = s.submit([&gate] {
    gate.hold();
    return 42;
  });
  gate.wait_entered();
  auto before = Clock::now();
  EXPECT_FALSE(h.wait_for(100ms));
  auto waited = Clock::now() - before;
  EXPECT_GE(waited, 100ms);
  EXPECT_LT(waited, 10s);
  before = Clock::now();
  EXPECT_FALSE(h.wait_until(Clock::now() + 50ms));
  EXPECT_GE(Clock::now() - before, 50ms);
  EXPECT_FALSE(h.wait_for(0ms));  // looks once
  EXPECT_FALSE(h.ready());
  gate.open.store(true);
  EXPECT_TRUE(h.wait_for(20s)) << "the completion after a timed-out wait was not seen";
  EXPECT_EQ(h.get(), 42);
  Handle<int> empty;
  EXPECT_THROW((void)empty.wait_for(1ms), InvalidArgument);
}

TEST(Scheduler, TimedWaitOnAWorkerHelpsThenTimesOutAndTheHandleStaysUsable) {
  Scheduler s{{.workers = 2}};
  test::Gate gate;
  auto held = std::make_shared<Handle<int>>(s.submit([&gate] {
    gate.hold();
    return 5;
  }));
  gate.wait_entered();  // it runs on one worker; the waiter below runs on the other
  auto waiter = s.submit([held, &s] {
    auto helped = s.submit([] { return 1; });  // on this worker's deque: the helping wait runs it
    const auto before = Clock::now();
    const bool finished = held->wait_for(100ms);
    const auto waited = Clock::now() - before;
    return std::tuple{finished, waited, helped.ready()};
  });
  ASSERT_TRUE(waiter.wait_for(20s)) << "a timed wait on a worker did not return";
  auto [finished, waited, helped_ran] = waiter.get();
  EXPECT_FALSE(finished);
  EXPECT_GE(waited, 100ms);
  EXPECT_LT(waited, 10s);
  EXPECT_TRUE(helped_ran) << "the timed wait did not help with the work queued on its worker";
  gate.open.store(true);
  EXPECT_EQ(held->get(), 5);
}

TEST(Scheduler, TimedWaitsRacingCompletionsNeverLoseAWakeUp) {
  Scheduler s{{.workers = 2}};
  const auto limit = Clock::now() + 60s;
  auto race = [&s, limit](int i) {
    auto h = s.submit([i] {
      const auto until = Clock::now() + std::chrono::microseconds(i % 40);
      while (Clock::now() < until) {
      }
      return i;
    });
    // Deadlines around the completion: each time-out races an unpark.
    while (!h.wait_for(std::chrono::microseconds(i % 23))) {
      if (Clock::now() > limit) return false;
    }
    return h.get() == i && h.valid() == false;
  };
  for (int i = 0; i < static_cast<int>(500 * test::kScale); ++i) {
    ASSERT_TRUE(race(i)) << "iteration " << i << " from outside the pool";
  }
  // The same from inside a task: timed parks of a worker.
  auto inside = s.submit([&] {
    for (int i = 0; i < static_cast<int>(200 * test::kScale); ++i)
      if (!race(i)) return i;
    return -1;
  });
  ASSERT_TRUE(inside.wait_for(60s));
  EXPECT_EQ(inside.get(), -1);
}

TEST(Scheduler, HandleOutlivesItsScheduler) {
  Handle<int> h;
  {
    Scheduler s{{.workers = 1}};
    h = s.submit([] { return 9; });
  }
  EXPECT_TRUE(h.ready());
  EXPECT_EQ(h.get(), 9);
}

TEST(Scheduler, ManySchedulersCanCoexistAndCallEachOther) {
  Scheduler a{{.workers = 1, .name = "a"}};
  Scheduler b{{.workers = 1, .name = "b"}};
  auto h = a.submit([&b] { return b.submit([] { return 3; }).get() * 2; });
  EXPECT_EQ(h.get(), 6);
  EXPECT_FALSE(a.is_worker_thread());
  EXPECT_TRUE(a.submit([&a] { return a.is_worker_thread(); }).get());
}

TEST(Scheduler, DroppedHandlesAndPostedTasksStillRun) {
  std::atomic<int> ran{0};
  {
    Scheduler s{{.workers = 2}};
    for (int i = 0; i < 1000; ++i) {
      (void)s.submit([&] { ran.fetch_add(1); });
      s.post([&] { ran.fetch_add(1); });
      s.post([] { throw std::runtime_error("ignored"); });  // must not kill a worker
    }
  }
  EXPECT_EQ(ran.load(), 2000);
}


// A worker parked in a helping wait is woken by the task it waits for (here
// cancelled from outside, so no worker is freed by it); a submission racing
// that wake-up may pick the waking worker from the sleep set. It returns to
// its own task, which here blocks without helping until the new task ran:
// unless the wake-up is passed on, the new task waits for ever while the
// idle worker sleeps. Each round reports a stall after 5 s.
TEST(Scheduler, AWakeUpThatReachesAWorkerLeavingAHelpingWaitIsPassedOn) {
  Scheduler s{{.workers = 3}};
  const int rounds = 40 * static_cast<int>(test::kScale);
  for (int round = 0; round < rounds; ++round) {
    test::Gate busy;  // keeps one worker out of the game for the round
    auto blocker = s.submit([&] { busy.hold(); });
    busy.wait_entered();
    TaskRef blocker_ref = blocker;
    auto awaited = s.submit([] {}, {.after = {blocker_ref}});  // in no queue: waits for the blocker
    std::atomic<bool> waiting{false};
    std::atomic<bool> follow_up_ran{false};
    std::atomic<bool> stalled{false};
    auto waiter = s.submit([&] {
      waiting = true;
      awaited.wait();  // helping: nothing else to run, so this worker parks
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (!follow_up_ran.load()) {  // not helping: only the idle worker can run it
        if (std::chrono::steady_clock::now() > deadline) {
          stalled = true;
          return;
        }
        std::this_thread::yield();
      }
    });
    const auto setup_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!waiting.load() || s.stats().workers_parked < 2) {  // the waiter and the idle worker sleep
      ASSERT_LT(std::chrono::steady_clock::now(), setup_deadline) << "round " << round << ": the workers never went to sleep";
      std::this_thread::yield();
    }
    ASSERT_TRUE(awaited.cancel());  // wakes the waiter
    s.post([&] { follow_up_ran = true; });
    waiter.get();
    busy.open.store(true);
    blocker.get();
    ASSERT_FALSE(stalled.load()) << "round " << round << ": the follow-up task never ran";
  }
}

}  // namespace
}  // namespace ordo
