#include "journal/task_id_set.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <unordered_set>

namespace ordo::detail {
namespace {

// Random inserts and erases over a small id range (so that probe runs
// collide, wrap around the table and get erased from the middle), checked
// against std::unordered_set after every step.
TEST(TaskIdSet, MatchesAStandardSetUnderRandomInsertsAndErases) {
  for (std::uint64_t seed = 1; seed <= 5; ++seed) {
    std::mt19937_64 rng(seed);
    TaskIdSet set;
    std::unordered_set<std::uint64_t> model;
    const std::uint64_t range = seed * 700;  // around the first table's size
    // Half the ids in the bitmap's window after the first one, half far
    // outside it (and 0), where the hash table holds them.
    auto pick = [&](std::uint64_t r) { return r % 2 == 0 ? 5000 + r / 2 : (r / 2) << 40; };
    set.insert(pick(0));  // the first id places the window
    model.insert(pick(0));
    for (int step = 0; step < 200'000; ++step) {
      const std::uint64_t id = pick(rng() % range);
      if (rng() % 3 == 0) {
        set.erase(id);
        model.erase(id);
      } else {
        set.insert(id);
        model.insert(id);
      }
      ASSERT_EQ(set.size(), model.size()) << "seed " << seed << " step " << step;
    }
    for (std::uint64_t r = 0; r < range; ++r) {  // erasing each finds exactly the ones held
      const std::uint64_t id = pick(r);
      const std::size_t before = set.size();
      set.erase(id);
      ASSERT_EQ(before - set.size(), model.count(id)) << "seed " << seed << " id " << id;
    }
    EXPECT_EQ(set.size(), 0u);
  }
}

TEST(TaskIdSet, SequentialIdsOfAReplayGrowAndShrink) {
  TaskIdSet set;
  for (std::uint64_t id = 1; id <= 1'000'000; ++id) {
    set.insert(id);
    if (id % 2 == 0) set.erase(id);
  }
  EXPECT_EQ(set.size(), 500'000u);
  set.insert(1);  // already there
  EXPECT_EQ(set.size(), 500'000u);
}

}  // namespace
}  // namespace ordo::detail
