#include "core/parker.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "test_support.hpp"

namespace ordo::detail {
namespace {

TEST(Parker, UnparkBeforeParkLeavesAPermit) {
  Parker* p = Parker::current();
  p->unpark();
  p->park();  // must return at once: the permit was left
  SUCCEED();
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
  while (other_parker.load() == nullptr) std::this_thread::yield();
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
