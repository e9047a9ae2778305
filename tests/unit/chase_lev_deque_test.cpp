#include "core/chase_lev_deque.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace ordo::detail {
namespace {

using Deque = ChaseLevDeque<std::uintptr_t>;

TEST(ChaseLevDeque, OwnerPopsNewestFirst) {
  Deque d(4);
  for (std::uintptr_t i = 1; i <= 3; ++i) d.push(i);
  std::uintptr_t v = 0;
  ASSERT_TRUE(d.pop(v));
  EXPECT_EQ(v, 3u);
  ASSERT_TRUE(d.pop(v));
  EXPECT_EQ(v, 2u);
  ASSERT_TRUE(d.pop(v));
  EXPECT_EQ(v, 1u);
  EXPECT_FALSE(d.pop(v));
}

TEST(ChaseLevDeque, ThiefStealsOldestFirstAndSaysEmpty) {
  Deque d(4);
  std::uintptr_t v = 0;
  EXPECT_EQ(d.steal(v), StealResult::empty);
  d.push(10);
  d.push(20);
  ASSERT_EQ(d.steal(v), StealResult::success);
  EXPECT_EQ(v, 10u);
  ASSERT_EQ(d.steal(v), StealResult::success);
  EXPECT_EQ(v, 20u);
  EXPECT_EQ(d.steal(v), StealResult::empty);
  EXPECT_FALSE(d.pop(v));
}

TEST(ChaseLevDeque, GrowsPastInitialCapacityKeepingOrder) {
  Deque d(2);
  for (std::uintptr_t i = 0; i < 1000; ++i) d.push(i);
  EXPECT_GE(d.capacity(), 1000u);
  std::uintptr_t v = 0;
  for (std::uintptr_t i = 0; i < 500; ++i) {
    ASSERT_EQ(d.steal(v), StealResult::success);
    EXPECT_EQ(v, i);
  }
  for (std::uintptr_t i = 1000; i-- > 500;) {
    ASSERT_TRUE(d.pop(v));
    EXPECT_EQ(v, i);
  }
  EXPECT_FALSE(d.pop(v));
}

TEST(ChaseLevDeque, PopAfterEmptyingByStealsReportsEmpty) {
  Deque d(8);
  d.push(1);
  std::uintptr_t v = 0;
  ASSERT_EQ(d.steal(v), StealResult::success);
  EXPECT_FALSE(d.pop(v));
  d.push(2);  // indices keep moving; the deque is usable again
  ASSERT_TRUE(d.pop(v));
  EXPECT_EQ(v, 2u);
}

// Owner pushes and pops (with bursts that force growth from a tiny ring) while
// several thieves steal: every item must be taken exactly once.
TEST(ChaseLevDeque, OwnerAgainstThievesEveryItemTakenExactlyOnce) {
  const std::size_t kItems = 20000 * test::kScale;
  const int kThieves = 3;
  for (int iteration = 0; iteration < 20; ++iteration) {
    Deque d(2);
    std::vector<std::atomic<std::uint8_t>> seen(kItems + 1);
    std::atomic<bool> owner_done{false};
    std::atomic<std::size_t> lost_races{0};
    auto take = [&](std::uintptr_t v) {
      ASSERT_GE(v, 1u);
      ASSERT_LE(v, kItems);
      ASSERT_EQ(seen[v].fetch_add(1, std::memory_order_relaxed), 0) << "item " << v << " taken twice";
    };
    std::vector<std::thread> thieves;
    for (int i = 0; i < kThieves; ++i) {
      thieves.emplace_back([&] {
        std::uintptr_t v = 0;
        for (;;) {
          StealResult r = d.steal(v);
          if (r == StealResult::success) {
            take(v);
          } else if (r == StealResult::lost_race) {
            lost_races.fetch_add(1, std::memory_order_relaxed);
          } else if (owner_done.load(std::memory_order_acquire)) {
            if (d.steal(v) == StealResult::success) take(v); else if (d.empty_seq_cst()) return;
          }
        }
      });
    }
    std::uintptr_t next = 1;
    std::uintptr_t v = 0;
    while (next <= kItems) {
      const std::size_t burst = 1 + (next * 7919) % 64;
      for (std::size_t i = 0; i < burst && next <= kItems; ++i) d.push(next++);
      const std::size_t pops = (next * 104729) % 48;
      for (std::size_t i = 0; i < pops; ++i)
        if (d.pop(v)) take(v);
    }
    while (d.pop(v)) take(v);
    owner_done.store(true, std::memory_order_release);
    for (auto& t : thieves) t.join();
    for (std::size_t i = 1; i <= kItems; ++i) ASSERT_EQ(seen[i].load(), 1) << "item " << i << " lost";
  }
}

}  // namespace
}  // namespace ordo::detail
