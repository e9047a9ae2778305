// Priority levels in the core: a worker takes the highest level it can see.
// (Ageing, weights, reserved workers and re-prioritising have their own tests.)
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ordo/ordo.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using test::Gate;

TEST(Priority, OneWorkerRunsEveryHighBeforeAnyLowQueuedAtTheSameTime) {
  for (std::size_t round = 0; round < 5 * test::kScale; ++round) {
    Scheduler s{{.workers = 1, .levels = 3}};
    Gate gate;
    s.post([&] { gate.hold(); });
    gate.wait_entered();
    std::mutex mu;
    std::vector<int> order;  // level of each task, in the order they ran
    auto record = [&](int level) {
      std::lock_guard lock(mu);
      order.push_back(level);
    };
    for (int i = 0; i < 100; ++i) {
      s.post([&] { record(2); }, {.priority = low});
      s.post([&] { record(1); }, {.priority = normal});
      s.post([&] { record(0); }, {.priority = high});
    }
    gate.open.store(true);
    s.shutdown(ShutdownMode::drain);
    ASSERT_EQ(order.size(), 300u);
    for (std::size_t i = 1; i < order.size(); ++i) ASSERT_LE(order[i - 1], order[i]) << "at position " << i;
  }
}

TEST(Priority, ChildrenSpawnedInsideATaskRunHighestLevelFirst) {
  Scheduler s{{.workers = 1, .levels = 4}};
  std::vector<int> order;
  s.submit([&] {
     TaskGroup g(s);
     for (int i = 0; i < 20; ++i) {
       for (int level = 3; level >= 0; --level) {
         g.spawn([&order, level] { order.push_back(level); }, {.priority = Priority{static_cast<std::uint8_t>(level)}});
       }
     }
     g.wait();
   }).get();
  ASSERT_EQ(order.size(), 80u);
  for (std::size_t i = 1; i < order.size(); ++i) ASSERT_LE(order[i - 1], order[i]) << "at position " << i;
}

// With one worker, a parent posts an explicit-normal child first and an
// unprioritised child second. Both land on the worker's own deque; the second
// would run first (LIFO) if it were normal too. Inheriting "low" puts it after
// the normal one; inheriting "high" puts it before.
TEST(Priority, SpawnedChildrenInheritTheRunningTasksLevel) {
  for (Priority parent_level : {low, high}) {
    Scheduler s{{.workers = 1, .levels = 3}};
    std::vector<int> order;
    s.submit([&] {
       order.push_back(0);
       s.post([&] { order.push_back(1); }, {.priority = normal});
       s.post([&] { order.push_back(2); });  // inherits parent_level
     }, {.priority = parent_level}).get();
    s.shutdown();
    ASSERT_EQ(order.size(), 3u);
    if (parent_level == low) {
      EXPECT_EQ(order, (std::vector<int>{0, 1, 2}));
    } else {
      EXPECT_EQ(order, (std::vector<int>{0, 2, 1}));
    }
  }
}

TEST(Priority, SingleLevelSchedulerTakesDefaultSubmissions) {
  Scheduler s{{.workers = 1, .levels = 1}};
  EXPECT_EQ(s.submit([] { return 1; }).get(), 1);
  EXPECT_THROW(s.post([] {}, {.priority = normal}), InvalidArgument);
  try {
    s.post([] {}, {.priority = Priority{3}});
    ADD_FAILURE() << "a level beyond the scheduler's was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "ordo: priority level 3 is beyond this scheduler's 1 levels (0..0)");
  }
}

TEST(Wakeup, ParkedPoolWakesForEverySubmission) {
  Scheduler s{{.workers = 2}};
  for (std::size_t round = 0; round < 50 * test::kScale; ++round) {
    // Wait until both workers are parked, then submit: a lost wake-up would
    // leave get() waiting forever (and ctest's timeout would report it).
    test::await([&] { return s.stats().workers_parked >= 2; }, "s.stats().workers_parked >= 2");
    ASSERT_EQ(s.submit([round] { return round; }).get(), round);
  }
}

}  // namespace
}  // namespace ordo

namespace ordo {
namespace {

using test::Gate;

// Two workers. Worker A pushes high tasks onto its own deque and then blocks;
// low tasks wait in the injection queue. Worker B must steal every high task
// from A before it starts any low one: priority holds pool-wide.
TEST(Priority, HighTasksInAnotherWorkersDequeBeatLowTasksInTheInjectionQueue) {
  for (std::size_t round = 0; round < 5 * test::kScale; ++round) {
    Scheduler s{{.workers = 2, .levels = 3}};
    Gate hold_a, hold_b;
    std::atomic<bool> lows_queued{false};
    std::atomic<bool> highs_pushed{false};
    std::mutex mu;
    std::vector<int> order;
    auto record = [&](int level) {
      std::lock_guard lock(mu);
      order.push_back(level);
    };
    s.post([&] { hold_b.hold(); }, {.priority = normal});
    s.post([&] {
      test::await([&] { return lows_queued.load(); }, "lows_queued.load()");
      for (int i = 0; i < 50; ++i) s.post([&] { record(0); }, {.priority = high});  // onto this worker's deque
      highs_pushed.store(true);
      hold_a.hold();
    }, {.priority = normal});
    hold_b.wait_entered();
    for (int i = 0; i < 50; ++i) s.post([&] { record(2); }, {.priority = low});
    lows_queued.store(true);
    test::await([&] { return highs_pushed.load(); }, "highs_pushed.load()");
    hold_b.open.store(true);  // B is free: it must take A's high tasks first
    while (true) {
      std::lock_guard lock(mu);
      if (order.size() >= 50) break;
    }
    hold_a.open.store(true);
    s.shutdown();
    ASSERT_EQ(order.size(), 100u);
    for (std::size_t i = 0; i < 50; ++i) ASSERT_EQ(order[i], 0) << "a low task started at position " << i;
  }
}

TEST(SetPriority, MovesAQueuedTaskAheadOfItsOldLevel) {
  Scheduler s{{.workers = 1, .levels = 3}};
  Gate gate;
  s.post([&] { gate.hold(); });
  gate.wait_entered();
  std::vector<int> order;
  std::vector<Handle<void>> lows;
  for (int i = 0; i < 20; ++i) lows.push_back(s.submit([&order, i] { order.push_back(i); }, {.priority = low}));
  auto target = s.submit([&order] { order.push_back(99); }, {.priority = low});
  EXPECT_TRUE(target.set_priority(high));
  EXPECT_EQ(target.status(), TaskStatus::queued);
  gate.open.store(true);
  target.get();
  for (auto& h : lows) h.get();
  ASSERT_EQ(order.size(), 21u);
  EXPECT_EQ(order.front(), 99);
}

TEST(SetPriority, MovingDownLetsTheOthersGoFirst) {
  Scheduler s{{.workers = 1, .levels = 3}};
  Gate gate;
  s.post([&] { gate.hold(); });
  gate.wait_entered();
  std::vector<int> order;
  auto target = s.submit([&order] { order.push_back(99); }, {.priority = high});
  std::vector<Handle<void>> normals;
  for (int i = 0; i < 10; ++i) normals.push_back(s.submit([&order, i] { order.push_back(i); }, {.priority = normal}));
  EXPECT_TRUE(target.set_priority(low));
  gate.open.store(true);
  target.get();
  for (auto& h : normals) h.get();
  ASSERT_EQ(order.size(), 11u);
  EXPECT_EQ(order.back(), 99);
}

TEST(SetPriority, RunningOrFinishedTaskReportsTooLate) {
  Scheduler s{{.workers = 1, .levels = 3}};
  Gate gate;
  auto running = s.submit([&] { gate.hold(); });
  gate.wait_entered();
  EXPECT_FALSE(running.set_priority(high));
  EXPECT_THROW(running.set_priority(Priority{7}), InvalidArgument);
  EXPECT_EQ(running.status(), TaskStatus::running);
  gate.open.store(true);
  running.wait();
  EXPECT_FALSE(running.set_priority(low));
  // A finished task's scheduler may be gone (a handle may outlive it), so
  // its levels are not consulted: any level is simply too late.
  EXPECT_FALSE(running.set_priority(Priority{7}));
}

// Moves racing with workers taking the entries: every task still runs exactly
// once, and every handle sees its own result.
TEST(SetPriority, ConcurrentMovesNeverRunATaskTwiceOrLoseIt) {
  const int kTasks = 2000 * static_cast<int>(test::kScale);
  Scheduler s{{.workers = 2, .levels = 4}};
  std::vector<std::atomic<int>> runs(kTasks);
  std::vector<Handle<int>> handles;
  handles.reserve(kTasks);
  for (int i = 0; i < kTasks; ++i) {
    handles.push_back(s.submit([&runs, i] {
      runs[i].fetch_add(1);
      return i;
    }, {.priority = Priority{static_cast<std::uint8_t>(i % 4)}}));
    if (i % 3 == 0) handles[i / 2].set_priority(Priority{static_cast<std::uint8_t>((i / 3) % 4)});
  }
  std::thread mover([&] {
    for (int i = kTasks - 1; i >= 0; i -= 2) (void)handles[i].set_priority(Priority{static_cast<std::uint8_t>(i % 3)});
  });
  mover.join();
  for (int i = 0; i < kTasks; ++i) ASSERT_EQ(handles[i].get(), i);
  s.shutdown();
  for (int i = 0; i < kTasks; ++i) ASSERT_EQ(runs[i].load(), 1) << "task " << i;
}

TEST(Reserved, ReservedWorkersNeverRunALowerBand) {
  for (std::size_t round = 0; round < 3 * test::kScale; ++round) {
    Scheduler s{{.workers = 3, .levels = 3, .reserved = {{high, 1}}}};
    const int reserved_index = 2;  // reservations take the highest indices
    std::atomic<int> violations{0};
    TaskGroup g(s);
    for (int i = 0; i < 3000; ++i) {
      const Priority p = Priority{static_cast<std::uint8_t>(i % 3)};
      g.spawn([&, p] {
        if (s.worker_index() == reserved_index && p != high) violations.fetch_add(1);
      }, {.priority = p});
    }
    g.wait();
    EXPECT_EQ(violations.load(), 0);
  }
}

// Every unreserved worker is stuck in a low task; a high task still runs.
TEST(Reserved, LowFloodCannotOccupyTheReservedWorker) {
  Scheduler s{{.workers = 2, .levels = 3}};
  s.reserve(high, 1);
  Gate gate;
  std::vector<Handle<void>> lows;
  for (int i = 0; i < 20; ++i) lows.push_back(s.submit([&] { gate.hold(); }, {.priority = low}));
  gate.wait_entered();
  auto urgent = s.submit([&s] { return s.worker_index(); }, {.priority = high});
  EXPECT_EQ(urgent.get(), 1);  // ran on the reserved worker while the other is held by a low task
  gate.open.store(true);
  for (auto& h : lows) h.get();
}

TEST(Reserved, InvalidReservationsAreRejected) {
  Scheduler s{{.workers = 2, .levels = 3}};
  EXPECT_THROW(s.reserve(high, 2), InvalidArgument);  // nobody left for normal and low
  EXPECT_THROW(s.reserve(Priority{5}, 1), InvalidArgument);
  s.reserve(high, 1);
  EXPECT_THROW(s.reserve(normal, 1), InvalidArgument);
  s.reserve(high, 0);
  EXPECT_NO_THROW(s.reserve(normal, 1));
  EXPECT_THROW((Scheduler{{.workers = 1, .reserved = {{high, 1}}}}), InvalidArgument);
}

TEST(Weighted, ProportionsWithinFivePercentOverHundredThousandTasks) {
  const std::vector<unsigned> weights{6, 3, 1};
  Scheduler s{{.workers = 1, .levels = 3, .policy = Policy::weighted, .weights = weights}};
  Gate gate;
  s.post([&] { gate.hold(); });
  gate.wait_entered();
  const int kPerLevel = 100000;
  const int kObserved = 100000;
  std::vector<int> counts(3, 0);
  int seen = 0;
  for (int i = 0; i < kPerLevel; ++i) {
    for (int l = 0; l < 3; ++l) {
      s.post([&counts, &seen, l] {
        if (seen++ < kObserved) ++counts[l];
      }, {.priority = Priority{static_cast<std::uint8_t>(l)}});
    }
  }
  gate.open.store(true);
  s.shutdown();
  for (int l = 0; l < 3; ++l) {
    const double expected = kObserved * weights[l] / 10.0;
    EXPECT_NEAR(counts[l], expected, 0.05 * expected) << "level " << l;
  }
}

TEST(Weighted, InvalidWeightsAreRejected) {
  EXPECT_THROW((Scheduler{{.levels = 3, .policy = Policy::weighted, .weights = {1, 2}}}), InvalidArgument);
  EXPECT_THROW((Scheduler{{.levels = 2, .policy = Policy::weighted, .weights = {1, 0}}}), InvalidArgument);
  EXPECT_THROW((Scheduler{{.levels = 2, .weights = {1, 1}}}), InvalidArgument);  // strict has no weights
}

}  // namespace
}  // namespace ordo
