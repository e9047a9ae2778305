// Priority levels in the core: a worker takes the highest level it can see.
// (Ageing, weights, reserved workers and re-prioritising have their own tests.)
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
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
}

TEST(Wakeup, ParkedPoolWakesForEverySubmission) {
  Scheduler s{{.workers = 2}};
  for (std::size_t round = 0; round < 50 * test::kScale; ++round) {
    // Wait until both workers are parked, then submit: a lost wake-up would
    // leave get() waiting forever (and ctest's timeout would report it).
    while (s.stats().workers_parked < 2) std::this_thread::yield();
    ASSERT_EQ(s.submit([round] { return round; }).get(), round);
  }
}

}  // namespace
}  // namespace ordo
