// Spare permits: in a counting group whose limit is large for its workers, a
// worker takes permits a batch ahead and keeps some at a release, so that a
// run of tasks does not write the group's shared line per task. None of that
// may show: stats count only what tasks hold, a limit is never exceeded, and
// a waiter never waits for a permit a worker keeps in reserve — whether it
// parks while workers sit idle on spares, while they keep taking and
// returning them, or after the limit was lowered below them.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ordo/ordo.hpp"
#include "resources/resource_manager.hpp"  // the spare constants
#include "test_support.hpp"

namespace ordo {
namespace {

using test::Gate;
using test::must_finish;
using test::must_happen;
using detail::ResourceManager;

constexpr unsigned kWorkers = 2;
// The smallest limit at which workers keep spares.
constexpr std::uint64_t kLargeLimit = ResourceManager::kSpareLimitPerWorker * kWorkers;

// Runs `n` posted tasks needing `amount` of `g` and waits until all ran.
void run_tasks(Scheduler& s, ResourceGroup g, int n, std::uint64_t amount = 1) {
  std::atomic<int> ran{0};
  for (int i = 0; i < n; ++i) s.post([&ran] { ran.fetch_add(1); }, {.needs = {{g, amount}}});
  must_happen([&] { return ran.load() == n; }, std::to_string(n) + " tasks on " + g.name() + " ran");
}

TEST(ResourceSpare, StatsCountOnlyWhatTasksHoldWhileWorkersKeepSpares) {
  Scheduler s{{.workers = kWorkers}};
  auto pool = s.resource_group("pool", kLargeLimit);
  run_tasks(s, pool, 5000);
  // The last task's permit goes back after its body counted it.
  must_happen([&] { return pool.stats().in_use == 0; }, "in_use back to 0 with the workers idle");
  Gate gate;
  s.post([&] { gate.hold(); }, {.needs = {{pool, 3}}});
  gate.wait_entered();
  EXPECT_EQ(pool.stats().in_use, 3u) << "a spare permit was counted as held";
  gate.open.store(true);
  must_happen([&] { return pool.stats().in_use == 0; }, "in_use back to 0 after the holder");
  EXPECT_LE(pool.stats().max_in_use, pool.stats().limit);
}

// Idle workers keep spares of `pool`; a task needing the whole limit can
// only run once every spare is back. Nobody releases anything after it
// parks: only its own registration can take them back.
TEST(ResourceSpare, ATaskNeedingTheWholeLimitRunsWhileIdleWorkersKeepSpares) {
  for (int round = 0; round < 20; ++round) {
    Scheduler s{{.workers = kWorkers}};
    auto pool = s.resource_group("pool", kLargeLimit);
    run_tasks(s, pool, 2000);
    auto whole = s.submit([] { return 7; }, {.needs = {{pool, kLargeLimit}}});
    must_happen([&] { return whole.ready(); }, "round " + std::to_string(round) + ": the whole-limit task never ran");
    EXPECT_EQ(whole.get(), 7);
  }
}

// As above, but the whole-limit tasks park while the workers keep taking
// and returning spares for a stream of small ones: the hand-off between a
// worker adding to its spares and a parker taking them back is what is
// tested. Every task must run, and the limit is never exceeded.
TEST(ResourceSpare, WaitersForTheWholeLimitRunAmidAStreamOfSmallTasks) {
  for (unsigned seed = 1; seed <= 4 * test::kScale; ++seed) {
    Scheduler s{{.workers = kWorkers}};
    auto pool = s.resource_group("pool", kLargeLimit);
    std::mt19937 rng(seed);
    std::atomic<std::int64_t> held{0};
    std::atomic<int> over{0};
    std::atomic<int> ran{0};
    int posted = 0;
    auto body = [&](std::int64_t amount) {
      if (held.fetch_add(amount) + amount > static_cast<std::int64_t>(kLargeLimit)) over++;
      for (int spin = 0; spin < 50; ++spin) std::atomic_signal_fence(std::memory_order_seq_cst);
      held.fetch_sub(amount);
      ran++;
    };
    for (int i = 0; i < 4000; ++i) {
      const std::uint64_t amount = rng() % 200 == 0 ? kLargeLimit : 1 + rng() % 2;
      s.post([&body, amount] { body(static_cast<std::int64_t>(amount)); }, {.needs = {{pool, amount}}});
      ++posted;
    }
    must_happen([&] { return ran.load() == posted; }, "seed " + std::to_string(seed) + ": every task ran");
    EXPECT_EQ(over.load(), 0) << "seed " << seed;
    must_happen([&] { return pool.stats().in_use == 0 && pool.stats().waiting == 0; }, "every permit back");
  }
}

// Lowering the limit below what the workers keep in reserve: a task that
// needs the whole new limit still runs.
TEST(ResourceSpare, ALimitLoweredBelowTheSparesStillGrantsItsWholeLimit) {
  Scheduler s{{.workers = kWorkers}};
  auto pool = s.resource_group("pool", kLargeLimit);
  run_tasks(s, pool, 2000);
  pool.set_limit(2);
  auto pair = s.submit([] { return 2; }, {.needs = {{pool, 2}}});
  must_happen([&] { return pair.ready(); }, "a task needing the whole lowered limit never ran");
  EXPECT_EQ(pair.get(), 2);
  pool.set_limit(kLargeLimit);
  run_tasks(s, pool, 500);
  must_finish("a drain after spares came and went", [&] { s.shutdown(ShutdownMode::drain); });
  EXPECT_EQ(pool.stats().in_use, 0u);
}

}  // namespace
}  // namespace ordo
