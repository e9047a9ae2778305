#include "util/parker.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "test_support.hpp"
#include "util/clock.hpp"

namespace ordo::detail {
namespace {

TEST(Parker, UnparkBeforeParkLeavesAPermit) {
  Parker* p = Parker::current();
  p->unpark();
  p->park();  // must return at once: the permit was left
  SUCCEED();
}

TEST(Parker, ParkUntilTimesOutWithoutAPermitAndTakesOneThatIsThere) {
  Parker* p = Parker::current();
  const std::int64_t start = steady_now_ns();
  EXPECT_FALSE(p->park_until(start + 20'000'000));  // nobody unparks: the deadline ends it
  EXPECT_GE(steady_now_ns() - start, 20'000'000);
  p->unpark();
  EXPECT_TRUE(p->park_until(steady_now_ns() + 10'000'000'000));  // the permit, at once
  EXPECT_FALSE(p->park_until(steady_now_ns()));  // consumed: nothing is left over
}

// Timed parks racing unparks: every unpark is either taken by a park_until
// (true) or left as a permit that the next park takes; none is lost.
TEST(Parker, ParkUntilRacingUnparksNeverLosesAWakeUp) {
  const int kRounds = 5000 * static_cast<int>(test::kScale);
  std::atomic<int> turn{0};
  Parker* main_parker = Parker::current();
  std::thread other([&] {
    for (int i = 0; i < kRounds; ++i) {
      while (turn.load() != 2 * i + 1) {
      }
      turn.store(2 * i + 2);
      main_parker->unpark();
    }
  });
  const std::int64_t limit = steady_now_ns() + 60'000'000'000;
  for (int i = 0; i < kRounds; ++i) {
    turn.store(2 * i + 1);
    // Deadlines of 0..15 us: many time out just as the unpark arrives.
    while (turn.load() != 2 * i + 2) {
      main_parker->park_until(steady_now_ns() + (i % 16) * 1000);
      ASSERT_LT(steady_now_ns(), limit) << "round " << i;
    }
  }
  other.join();
  // At most one permit can be left over; it must not leak into a long wait.
  main_parker->park_until(steady_now_ns());
  EXPECT_FALSE(main_parker->park_until(steady_now_ns() + 1'000'000));
}

TEST(Parker, EachThreadHasItsOwnParker) {
  Parker* mine = Parker::current();
  Parker* theirs = nullptr;
  std::thread([&] { theirs = Parker::current(); }).join();
  EXPECT_NE(mine, theirs);
  EXPECT_EQ(mine, Parker::current());
}

// Ping-pong between two threads through parkers alone: a lost wake-up would
// hang the test (ctest's timeout reports it).
TEST(Parker, PingPongNeverLosesAWakeUp) {
  const int kRounds = 20000 * static_cast<int>(test::kScale);
  std::atomic<int> turn{0};
  Parker* main_parker = Parker::current();
  std::atomic<Parker*> other_parker{nullptr};
  std::thread other([&] {
    other_parker.store(Parker::current());
    for (int i = 0; i < kRounds; ++i) {
      while (turn.load() != 2 * i + 1) Parker::current()->park();
      turn.store(2 * i + 2);
      main_parker->unpark();
    }
  });
  test::await([&] { return other_parker.load() != nullptr; }, "other_parker.load() != nullptr");
  for (int i = 0; i < kRounds; ++i) {
    turn.store(2 * i + 1);
    other_parker.load()->unpark();
    while (turn.load() != 2 * i + 2) main_parker->park();
  }
  other.join();
  EXPECT_EQ(turn.load(), 2 * kRounds);
}

}  // namespace
}  // namespace ordo::detail
