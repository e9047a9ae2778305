// Ageing: Policy::strict with age bounds moves a task that waited too long up a level.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>
#include <vector>

#include "ordo/ordo.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using namespace std::chrono_literals;
using test::Gate;
using Clock = std::chrono::steady_clock;

void spin_for(std::chrono::microseconds d) {
  const auto end = Clock::now() + d;
  while (Clock::now() < end) {
  }
}

// One worker, a flood of high tasks that never lets up until the low task has
// run: four chains, each high task queueing its successor before it ends.
// Strict priority alone would starve the low task; with bounds it is moved to
// normal after 10 ms and to high 5 ms later, and then runs while high work is
// still queued. It cannot start before both bounds have passed.
TEST(Ageing, LowTaskRunsDuringAHighFloodOnceItsBoundsHavePassed) {
  Scheduler s{{.workers = 1, .levels = 3, .age_bounds = {0ns, 5ms, 10ms}}};
  std::atomic<int> outstanding_high{0};
  std::atomic<bool> low_ran{false};
  std::atomic<int> high_queued_when_low_ran{-1};
  std::function<void()> link = [&] {
    spin_for(50us);
    if (!low_ran.load()) {
      outstanding_high.fetch_add(1);
      s.post(link);  // inherits high
    }
    outstanding_high.fetch_sub(1);
  };
  Gate gate;
  s.post([&] { gate.hold(); }, {.priority = high});
  gate.wait_entered();
  for (int chain = 0; chain < 4; ++chain) {
    outstanding_high.fetch_add(1);
    s.post(link, {.priority = high});
  }
  const auto submitted = Clock::now();
  auto low_task = s.submit([&] {
    high_queued_when_low_ran.store(outstanding_high.load());
    low_ran.store(true);
    return Clock::now();
  }, {.priority = low});
  gate.open.store(true);
  const auto started = low_task.get();
  const auto waited = started - submitted;
  EXPECT_GE(waited, 15ms) << "promoted before its bounds passed";
  EXPECT_LT(waited, 5s) << "ageing did not bound the wait";
  EXPECT_GE(high_queued_when_low_ran.load(), 3) << "the flood had ended: ageing was not what let it run";
  EXPECT_GE(s.stats().promoted, 2u);
  s.shutdown();
}

TEST(Ageing, TasksThatRunBeforeTheirBoundAreNotMoved) {
  Scheduler s{{.workers = 2, .levels = 2, .age_bounds = {0ns, 10s}}};
  TaskGroup g(s);
  std::atomic<int> ran{0};
  for (int i = 0; i < 1000; ++i) g.spawn([&] { ran.fetch_add(1); }, {.priority = Priority{1}});
  g.wait();
  EXPECT_EQ(ran.load(), 1000);
  EXPECT_EQ(s.stats().promoted, 0u);
  s.shutdown();  // the ager drops its references to tasks long finished: no leak under ASan
}

TEST(Ageing, InvalidBoundsAreRejected) {
  EXPECT_THROW((Scheduler{{.levels = 3, .age_bounds = {1ms, 1ms, 1ms}}}), InvalidArgument);  // level 0
  EXPECT_THROW((Scheduler{{.levels = 3, .age_bounds = {0ns, 1ms}}}), InvalidArgument);        // size
  EXPECT_THROW((Scheduler{{.levels = 2, .policy = Policy::weighted, .age_bounds = {0ns, 1ms}}}), InvalidArgument);
  EXPECT_THROW((Scheduler{{.levels = 2, .age_bounds = {0ns, -1ms}}}), InvalidArgument);
}

TEST(Ageing, ShutdownWithAgedTasksStillQueuedLosesNothing) {
  for (std::size_t round = 0; round < 5 * test::kScale; ++round) {
    std::atomic<int> ran{0};
    {
      Scheduler s{{.workers = 2, .levels = 3, .age_bounds = {0ns, 200us, 100us}}};
      for (int i = 0; i < 2000; ++i) {
        s.post([&] { ran.fetch_add(1); }, {.priority = Priority{static_cast<std::uint8_t>(i % 3)}});
      }
    }
    ASSERT_EQ(ran.load(), 2000);
  }
}

}  // namespace
}  // namespace ordo
