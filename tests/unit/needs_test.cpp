// ordo::Needs, the small vector a task's needs are written in: two in place,
// more on the heap, and the std::vector<Need> it replaces converts both ways.
#include <gtest/gtest.h>

#include <utility>
#include <vector>

#include "ordo/ordo.hpp"

namespace ordo {
namespace {

std::vector<std::uint64_t> amounts(const Needs& needs) {
  std::vector<std::uint64_t> out;
  for (const Need& n : needs) out.push_back(n.amount);
  return out;
}

Needs of_amounts(std::uint64_t count) {
  Needs needs;
  for (std::uint64_t i = 1; i <= count; ++i) needs.push_back({ResourceGroup{}, i});
  return needs;
}

TEST(Needs, GrowsPastItsTwoInPlaceEntriesKeepingOrder) {
  Needs needs = of_amounts(7);
  EXPECT_EQ(needs.size(), 7u);
  EXPECT_EQ(amounts(needs), (std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6, 7}));
  needs.clear();
  EXPECT_TRUE(needs.empty());
  needs.push_back({ResourceGroup{}, 9});
  EXPECT_EQ(amounts(needs), (std::vector<std::uint64_t>{9}));
}

TEST(Needs, CopiesAndMovesInPlaceAndOnTheHeap) {
  for (std::uint64_t count : {0u, 1u, 2u, 3u, 9u}) {
    const Needs original = of_amounts(count);
    Needs copy = original;
    EXPECT_EQ(amounts(copy), amounts(original)) << count;
    Needs moved = std::move(copy);
    EXPECT_EQ(amounts(moved), amounts(original)) << count;
    EXPECT_TRUE(copy.empty()) << "a moved-from Needs is left empty";  // NOLINT(bugprone-use-after-move)
    copy.push_back({ResourceGroup{}, 42});  // and usable
    EXPECT_EQ(amounts(copy), (std::vector<std::uint64_t>{42}));
    Needs assigned = of_amounts(5);
    assigned = original;
    EXPECT_EQ(amounts(assigned), amounts(original)) << count;
    assigned = of_amounts(count + 3);
    EXPECT_EQ(assigned.size(), count + 3);
    assigned = assigned;  // self-assignment keeps it
    EXPECT_EQ(assigned.size(), count + 3);
  }
}

TEST(Needs, ConvertsToAndFromAVectorOfNeed) {
  const std::vector<Need> vector{{ResourceGroup{}, 3}, {ResourceGroup{}, 4}, {ResourceGroup{}, 5}};
  SubmitOptions options;
  options.needs = vector;  // what code written for std::vector<Need> does
  EXPECT_EQ(amounts(options.needs), (std::vector<std::uint64_t>{3, 4, 5}));
  const std::vector<Need> back = options.needs;
  ASSERT_EQ(back.size(), 3u);
  EXPECT_EQ(back[2].amount, 5u);
  const Needs listed{{ResourceGroup{}, 1}, {ResourceGroup{}, 2}};
  EXPECT_EQ(amounts(listed), (std::vector<std::uint64_t>{1, 2}));
}

TEST(Needs, AThirdNeedOnASubmittedTaskIsTakenLikeTheFirstTwo) {
  Scheduler s{{.workers = 2}};
  auto a = s.resource_group("a", 1);
  auto b = s.resource_group("b", 1);
  auto c = s.resource_group("c", 1);
  Needs needs{{a, 1}, {b, 1}};
  needs.push_back({c, 1});
  auto h = s.submit([&] { return c.stats().in_use; }, {.needs = needs});
  EXPECT_EQ(h.get(), 1u);
  s.shutdown();
  EXPECT_EQ(c.stats().in_use, 0u);
}

}  // namespace
}  // namespace ordo
