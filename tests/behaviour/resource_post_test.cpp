// Resource groups on posted tasks: post() with needs (and no predecessors)
// makes a task without a handle, which takes, waits for and returns its
// permits like a submitted one — on every path a handle task has: at once,
// parked at submission, parked by a worker, cancelled by shutdown(cancel),
// cancelled by a drain after a lowered limit, refused, or invalid.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ordo/ordo.hpp"
#include "resource_support.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using test::Gate;
using test::must_finish;
using test::must_happen;

TEST(ResourcePost, PostedTasksNeverExceedALimitRunOnceAndReturnEveryPermit) {
  for (unsigned seed = 1; seed <= 2 * test::kScale; ++seed) {
    Scheduler s{{.workers = 3, .levels = 3}};
    std::mt19937 rng(seed);
    std::vector<ResourceGroup> groups;
    for (int g = 0; g < 3; ++g) groups.push_back(s.resource_group("g" + std::to_string(g), 1 + rng() % 3));
    std::vector<std::atomic<std::int64_t>> held(groups.size());
    std::atomic<int> violations{0};
    constexpr int kTasks = 2000;
    std::vector<std::atomic<int>> runs(kTasks);
    for (int i = 0; i < kTasks; ++i) {
      std::vector<std::pair<int, int>> mine;
      std::vector<Need> needs;
      for (int g = 0; g < static_cast<int>(groups.size()); ++g) {
        if (rng() % 2 != 0) continue;
        const int amount = 1 + static_cast<int>(rng() % groups[g].limit());
        mine.emplace_back(g, amount);
        needs.push_back({groups[g], static_cast<std::uint64_t>(amount)});
      }
      if (needs.empty()) needs.push_back({groups[0], 1}), mine.emplace_back(0, 1);
      const bool throws = rng() % 10 == 0;
      s.post(
          [&, i, mine, throws] {
            for (auto [g, amount] : mine) {
              if (held[g].fetch_add(amount) + amount > static_cast<std::int64_t>(groups[g].limit())) violations++;
            }
            runs[i].fetch_add(1);
            for (int spin = 0; spin < 200; ++spin) std::atomic_signal_fence(std::memory_order_seq_cst);
            for (auto [g, amount] : mine) held[g].fetch_sub(amount);
            if (throws) throw std::runtime_error("a posted task's error is dropped");
          },
          {.priority = Priority{static_cast<std::uint8_t>(rng() % 3)}, .needs = needs});
    }
    must_finish("a drain of posted tasks with needs", [&] { s.shutdown(ShutdownMode::drain); });
    EXPECT_EQ(violations.load(), 0) << "seed " << seed;
    for (int i = 0; i < kTasks; ++i) ASSERT_EQ(runs[i].load(), 1) << "seed " << seed << ", task " << i;
    test::expect_every_permit_back(groups);
  }
}

// Posted behind a holder of the only permit: each parks at submission, and
// shutdown(cancel) completes them unrun, destroying their payloads.
TEST(ResourcePost, ShutdownCancelDropsParkedPostedTasksAndTheirPayloads) {
  Scheduler s{{.workers = 2}};
  auto db = s.resource_group("db", 1);
  Gate gate;
  s.post([&] { gate.hold(); }, {.needs = {{db, 1}}});
  gate.wait_entered();
  auto payload = std::make_shared<int>(0);
  std::atomic<int> ran{0};
  for (int i = 0; i < 5; ++i) s.post([&ran, payload] { ran++; }, {.needs = {{db, 1}}});
  must_happen([&] { return db.stats().waiting == 5; }, "five posted tasks parked");
  std::thread stopper([&] { s.shutdown(ShutdownMode::cancel); });
  must_happen([&] { return db.stats().waiting == 0; }, "shutdown(cancel) took the parked tasks off the list");
  gate.open.store(true);
  stopper.join();
  EXPECT_EQ(ran.load(), 0);
  EXPECT_EQ(payload.use_count(), 1) << "a cancelled posted task's payload was not destroyed";
  EXPECT_EQ(db.stats().in_use, 0u);
}

// A waiter the holder's release hands the permit to, and one a lowered
// limit made hopeless: the drain runs the first and cancels the second.
TEST(ResourcePost, ADrainRunsGrantedPostedWaitersAndCancelsAHopelessOne) {
  for (int round = 0; round < 10; ++round) {
    Scheduler s{{.workers = 2}};
    auto pool = s.resource_group("pool", 4);
    Gate gate;
    s.post([&] { gate.hold(); }, {.needs = {{pool, 1}}});
    gate.wait_entered();
    std::atomic<int> big_ran{0}, small_ran{0};
    s.post([&] { big_ran++; }, {.needs = {{pool, 4}}});
    s.post([&] { small_ran++; }, {.needs = {{pool, 2}}});
    must_happen([&] { return pool.stats().waiting == 2; }, "two posted waiters parked");
    pool.set_limit(2);
    gate.open.store(true);
    must_finish("shutdown(drain) with a posted waiter a lowered limit can never grant",
                [&] { s.shutdown(ShutdownMode::drain); });
    EXPECT_EQ(big_ran.load(), 0) << "round " << round;
    EXPECT_EQ(small_ran.load(), 1) << "round " << round;
    EXPECT_EQ(pool.stats().in_use, 0u);
    EXPECT_EQ(pool.stats().waiting, 0u);
  }
}

// Validation happens before anything is queued, and a refused or invalid
// post keeps nothing: neither its payload nor its needs (ASan would see a
// leaked list).
TEST(ResourcePost, InvalidOrRefusedPostsAreClearErrorsThatKeepNothing) {
  Scheduler s{{.workers = 1}};
  Scheduler other{{.workers = 1}};
  auto db = s.resource_group("db", 8);
  auto foreign = other.resource_group("db", 8);
  auto payload = std::make_shared<int>(0);
  try {
    s.post([payload] {}, {.needs = {{db, 9}}});
    FAIL() << "a need above the limit was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("limit is 8"), std::string::npos) << e.what();
  }
  EXPECT_THROW(s.post([payload] {}, {.needs = {{db, 0}}}), InvalidArgument);
  EXPECT_THROW(s.post([payload] {}, {.needs = {{foreign, 1}}}), InvalidArgument);
  EXPECT_THROW(s.post([payload] {}, {.needs = {{ResourceGroup{}, 1}}}), InvalidArgument);
  EXPECT_THROW(s.post([payload] {}, {.priority = Priority{9}, .needs = {{db, 1}}}), InvalidArgument);
  s.shutdown();
  EXPECT_THROW(s.post([payload] {}, {.needs = {{db, 1}}}), SchedulerStopped);
  EXPECT_EQ(payload.use_count(), 1) << "a payload of a post that was not accepted is still alive";
  EXPECT_EQ(db.stats().in_use, 0u);
}

}  // namespace
}  // namespace ordo
