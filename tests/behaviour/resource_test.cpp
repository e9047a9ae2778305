// Resource groups: caps never exceeded, waiting tasks hold no worker, order
// of grants, release on every exit path, runtime limits, invalid use.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "ordo/ordo.hpp"
#include "core/scheduler_core.hpp"  // the test-only fault point needs_submission_pause_us
#include "resources/resource_manager.hpp"  // the test-only fault point fail_wait_list_allocations
#include "resource_support.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using test::Gate;
using test::must_finish;
using test::must_happen;
using namespace std::chrono_literals;

// Tracks what running tasks hold and fails the test if any group's limit is
// ever exceeded at the moment a task starts.
struct Observer {
  explicit Observer(std::vector<ResourceGroup> gs) : groups(std::move(gs)), in_use(groups.size()) {}
  std::vector<ResourceGroup> groups;
  std::vector<std::atomic<std::int64_t>> in_use;
  std::atomic<int> violations{0};
  void enter(const std::vector<std::pair<int, int>>& needs) {
    for (auto [g, amount] : needs) {
      const auto now = in_use[g].fetch_add(amount) + amount;
      if (now > static_cast<std::int64_t>(groups[g].limit())) violations.fetch_add(1);
    }
  }
  void leave(const std::vector<std::pair<int, int>>& needs) {
    for (auto [g, amount] : needs) in_use[g].fetch_sub(amount);
  }
};

TEST(Resource, RandomStressNeverExceedsALimitAndReturnsEveryPermit) {
  for (unsigned seed = 1; seed <= 3 * test::kScale; ++seed) {
    Scheduler s{{.workers = 3, .levels = 3}};
    std::mt19937 rng(seed);
    std::vector<ResourceGroup> groups;
    for (int g = 0; g < 4; ++g) groups.push_back(s.resource_group("g" + std::to_string(g), 1 + rng() % 4));
    Observer obs(groups);
    const int kTasks = 2000;
    std::vector<std::atomic<int>> runs(kTasks);
    std::vector<Handle<int>> handles;
    std::vector<bool> cancelled(kTasks, false);
    for (int i = 0; i < kTasks; ++i) {
      std::vector<std::pair<int, int>> mine;
      std::vector<Need> needs;
      const int k = 1 + static_cast<int>(rng() % 3);
      for (int j = 0; j < k; ++j) {
        const int g = static_cast<int>(rng() % groups.size());
        if (std::any_of(mine.begin(), mine.end(), [g](auto& p) { return p.first == g; })) continue;
        const int amount = 1 + static_cast<int>(rng() % groups[g].limit());
        mine.emplace_back(g, amount);
        needs.push_back({groups[g], static_cast<std::uint64_t>(amount)});
      }
      const bool throws = rng() % 10 == 0;
      handles.push_back(s.submit(
          [&, i, mine, throws] {
            obs.enter(mine);
            runs[i].fetch_add(1);
            for (int spin = 0; spin < 200; ++spin) std::atomic_signal_fence(std::memory_order_seq_cst);
            obs.leave(mine);
            if (throws) throw std::runtime_error("task failed");
            return i;
          },
          {.priority = Priority{static_cast<std::uint8_t>(rng() % 3)}, .needs = needs}));
      if (rng() % 10 == 0) cancelled[i] = handles.back().cancel();
    }
    for (int i = 0; i < kTasks; ++i) {
      try {
        handles[i].get();
      } catch (const TaskCancelled&) {
        ASSERT_TRUE(cancelled[i]) << "task " << i << " was cancelled but nobody cancelled it";
      } catch (const std::runtime_error&) {
      }
    }
    s.shutdown();
    EXPECT_EQ(obs.violations.load(), 0) << "seed " << seed;
    for (int i = 0; i < kTasks; ++i) ASSERT_EQ(runs[i].load(), cancelled[i] ? 0 : 1) << "task " << i;
    test::expect_every_permit_back(groups);
  }
}

TEST(Resource, TasksTakingGroupsInOppositeOrdersDoNotDeadlock) {
  Scheduler s{{.workers = 3}};
  auto a = s.resource_group("a", 1);
  auto b = s.resource_group("b", 1);
  std::atomic<int> done{0};
  std::vector<Handle<void>> hs;
  for (int i = 0; i < 2000; ++i) {
    std::vector<Need> needs = i % 2 ? std::vector<Need>{{a, 1}, {b, 1}} : std::vector<Need>{{b, 1}, {a, 1}};
    hs.push_back(s.submit([&] { done++; }, {.needs = needs}));
  }
  for (auto& h : hs) h.get();
  EXPECT_EQ(done.load(), 2000);
}

TEST(Resource, ParkedTasksHoldNoWorker) {
  Scheduler s{{.workers = 2}};
  auto db = s.resource_group("db", 1);
  Gate gate;
  auto holder = s.submit([&] { gate.hold(); }, {.needs = {{db, 1}}});
  gate.wait_entered();
  std::vector<Handle<void>> queries;
  for (int i = 0; i < 20; ++i) queries.push_back(s.submit([] {}, {.needs = {{db, 1}}}));
  test::await([&] { return db.stats().waiting >= 20; }, "db.stats().waiting >= 20");
  // One worker is held by the holder; twenty tasks wait for its permit; the
  // other worker must still be free for everything else.
  std::atomic<int> unrelated{0};
  TaskGroup g(s);
  for (int i = 0; i < 1000; ++i) g.spawn([&] { unrelated++; });
  g.wait();
  EXPECT_EQ(unrelated.load(), 1000);
  EXPECT_EQ(db.stats().waiting, 20u);
  gate.open.store(true);
  for (auto& q : queries) q.get();
  holder.get();
  EXPECT_EQ(db.stats().in_use, 0u);
}

// A task submitted while its group is full waits on the group's list from
// the start (no worker has to come across it first), and cancel() takes it
// off the list: it never runs, and the task behind it gets the permit.
TEST(Resource, ATaskSubmittedToAFullGroupParksAtOnceAndCanBeCancelledThere) {
  for (int round = 0; round < 20; ++round) {
    Scheduler s{{.workers = 1}};
    auto db = s.resource_group("db", 1);
    Gate gate;
    auto holder = s.submit([&] { gate.hold(); }, {.needs = {{db, 1}}});
    gate.wait_entered();  // the only worker is busy: nothing else is taken from a queue now
    std::atomic<bool> cancelled_ran{false};
    auto doomed = s.submit([&] { cancelled_ran = true; }, {.needs = {{db, 1}}});
    auto next = s.submit([] { return 7; }, {.needs = {{db, 1}}});
    EXPECT_EQ(db.stats().waiting, 2u) << "not parked at submit";
    EXPECT_TRUE(doomed.cancel());
    EXPECT_EQ(db.stats().waiting, 1u);
    EXPECT_FALSE(doomed.cancel()) << "cancelled twice";
    EXPECT_THROW(doomed.get(), TaskCancelled);
    gate.open.store(true);
    EXPECT_EQ(next.get(), 7);
    holder.get();
    EXPECT_FALSE(cancelled_ran.load());
    EXPECT_EQ(db.stats().in_use, 0u);
    EXPECT_EQ(db.stats().waiting, 0u);
  }
}

// A finishing holder hands its permit to the next waiter, which then runs
// next on the same worker: a chain of holders runs back to back, as long as
// the queues hold. At most one queued task may run in between (the worker's
// periodic look at the injection queue, so that it never starves); a bulk
// taken from there once buried the grant under 31 other tasks.
TEST(Resource, TheNextHolderOfAReleasedPermitRunsBeforeQueuedWorkOnThatWorker) {
  Scheduler s{{.workers = 1}};
  auto db = s.resource_group("db", 1);
  Gate gate;
  auto holder = s.submit([&] { gate.hold(); }, {.needs = {{db, 1}}});
  gate.wait_entered();
  std::mutex mu;
  std::string log;  // 'd' a holder, 'c' a task that needs nothing
  auto note = [&](char what) {
    std::lock_guard lock(mu);
    log.push_back(what);
  };
  constexpr int kHolders = 300, kOthers = 3000;
  std::vector<Handle<void>> holders;
  for (int i = 0; i < kHolders; ++i) holders.push_back(s.submit([&] { note('d'); }, {.needs = {{db, 1}}}));
  ASSERT_EQ(db.stats().waiting, static_cast<std::uint64_t>(kHolders)) << "not parked at submit";
  std::vector<Handle<void>> others;
  for (int i = 0; i < kOthers; ++i) others.push_back(s.submit([&] { note('c'); }));
  gate.open.store(true);
  for (auto& h : holders) h.get();
  for (auto& h : others) h.get();
  holder.get();
  std::lock_guard lock(mu);
  ASSERT_EQ(log.size(), static_cast<std::size_t>(kHolders + kOthers));
  std::size_t between = 0, most_between = 0, holders_seen = 0;
  for (char c : log) {
    if (c == 'd') {
      most_between = std::max(most_between, between);
      between = 0;
      if (++holders_seen == kHolders) break;
    } else {
      ++between;
    }
  }
  EXPECT_LE(most_between, 1u) << "a grant waited behind queued work: " << log.substr(0, 400);
}

// A worker that grants a released permit keeps the task on its own deque
// without waking anyone (it runs it next). If reserve() takes that level
// from the worker between its look at its levels and its push, the workers
// reserve() woke find nothing yet and sleep again, and the worker will not
// run the task: it must wake another after its push. The fault point holds
// the highest-numbered worker (the one a reservation takes first) in that
// window, so each round puts the holder there itself: two tasks occupy both
// workers, and the one on the highest-numbered worker submits the holder to
// its own deque. (Leaving the placement to the wake-up order once let a
// whole run of rounds miss the window under ThreadSanitizer.)
TEST(Resource, AGrantKeptByAWorkerThatReserveTakesTheLevelFromStillRuns) {
  struct PauseOff {
    ~PauseOff() { detail::grant_push_pause_us.store(0); }
  } pause_off;
  detail::grant_push_pause_us.store(50'000);
  for (int round = 0; round < 3; ++round) {
    Scheduler s{{.workers = 2, .levels = 2}};
    auto db = s.resource_group("db", 1);
    Gate occupy[2], gate;
    std::atomic<int> where[2] = {-1, -1};
    std::optional<Handle<void>> holder;
    std::atomic<bool> holder_submitted{false};
    for (int i = 0; i < 2; ++i) {
      s.post([&, i] {
        where[i].store(s.worker_index());
        occupy[i].hold();
        if (s.worker_index() == 1) {
          holder = s.submit([&] { gate.hold(); }, {.priority = Priority{1}, .needs = {{db, 1}}});
          holder_submitted.store(true);
        }
      });
    }
    occupy[0].wait_entered();
    occupy[1].wait_entered();
    ASSERT_NE(where[0].load(), where[1].load()) << "both occupying tasks on one worker";
    const int on_last = where[0].load() == 1 ? 0 : 1;
    occupy[on_last].open.store(true);  // worker 1 submits the holder to its own deque and runs it
    gate.wait_entered();
    ASSERT_TRUE(holder_submitted.load());
    occupy[1 - on_last].open.store(true);  // worker 0 goes idle
    auto waiter = s.submit([] { return 1; }, {.priority = Priority{1}, .needs = {{db, 1}}});
    must_happen([&] { return db.stats().waiting == 1 && s.stats().workers_parked == 1; },
                "the waiter parked and the idle worker asleep");
    const int pauses = detail::grant_push_pauses.load();
    gate.open.store(true);
    must_happen([&] { return detail::grant_push_pauses.load() != pauses; },
                "round " + std::to_string(round) + ": worker 1 granted the permit without reaching the fault point");
    // In the window: cut the pausing worker to level 0.
    s.reserve(Priority{0}, 1);
    must_happen([&] { return waiter.ready(); },
                "round " + std::to_string(round) + ": the grant stayed on a worker that no longer serves its level");
    EXPECT_EQ(waiter.get(), 1);
    holder->get();
  }
}

// A dependent task is queued by its last predecessor's submit() while
// set_priority() may already have queued another entry of it. If that
// entry is taken, parked and granted first, the submission must not claim
// the granted task and park it again: it would take its permits a second
// time and return them once (the model checker found permits leaked this
// way, ORDO_SEED=496429066, program 8015). The pause widens the window, and
// its counters say when the submission is in it and when it has left.
TEST(Resource, ASubmissionDoesNotParkAgainATaskAnotherEntryAlreadyGotPermitsFor) {
  struct PauseOff {
    ~PauseOff() { detail::needs_submission_pause_us.store(0); }
  } pause_off;
  Scheduler s{{.workers = 3, .levels = 3}};
  auto db = s.resource_group("db", 1);
  Gate holder_gate, pred_gate, busy_gate;
  auto holder = s.submit([&] { holder_gate.hold(); }, {.needs = {{db, 1}}});
  holder_gate.wait_entered();
  auto pred = s.submit([&] {
    pred_gate.hold();
    return 1;
  });
  pred_gate.wait_entered();
  std::atomic<int> runs{0};
  auto dependent = std::move(pred).then([&](int) { runs.fetch_add(1); }, {.needs = {{db, 1}}});
  const int pauses_before = detail::needs_submission_pauses.load();
  const int done_before = detail::needs_submission_pauses_done.load();
  detail::needs_submission_pause_us.store(300'000);
  pred_gate.open.store(true);  // its worker queues the dependent, and pauses there
  test::await([&] { return detail::needs_submission_pauses.load() != pauses_before; },
              "the dependent's submission to pause");
  // Meanwhile another entry: the third worker takes it and parks the task.
  EXPECT_TRUE(dependent.set_priority(high));
  must_happen([&] { return db.stats().waiting == 1; }, "the moved entry parks the task");
  auto busy = s.submit([&] { busy_gate.hold(); });  // every worker busy: the grant stays queued
  busy_gate.wait_entered();
  db.set_limit(2);  // grants it from this thread; the paused submission then resumes
  test::await([&] { return detail::needs_submission_pauses_done.load() != done_before; },
              "the paused submission to look at the granted task");
  ASSERT_EQ(detail::needs_submission_pauses.load(), pauses_before + 1) << "another submission paused";
  detail::needs_submission_pause_us.store(0);
  holder_gate.open.store(true);
  busy_gate.open.store(true);
  dependent.get();
  holder.get();
  busy.get();
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(db.stats().in_use, 0u) << "permits leaked";
  EXPECT_EQ(db.stats().waiting, 0u);
}

TEST(Resource, CancellingTheFirstWaiterLetsThoseBehindItThatFitRun) {
  Scheduler s{{.workers = 2}};
  auto pool = s.resource_group("pool", 4);
  Gate gate;
  auto holder = s.submit([&] { gate.hold(); }, {.needs = {{pool, 2}}});
  gate.wait_entered();
  auto big = s.submit([] {}, {.needs = {{pool, 4}}});  // first in line: needs all 4
  auto small = s.submit([] { return 1; }, {.needs = {{pool, 2}}});  // fits now, but waits behind `big`
  test::await([&] { return pool.stats().waiting >= 2; }, "pool.stats().waiting >= 2");
  EXPECT_FALSE(small.ready());
  EXPECT_TRUE(big.cancel());
  EXPECT_EQ(small.get(), 1) << "the waiter behind a cancelled one was not granted";
  gate.open.store(true);
  holder.get();
  EXPECT_EQ(pool.stats().in_use, 0u);
}

TEST(Resource, ReleaseGrantsByPriorityThenAge) {
  Scheduler s{{.workers = 2, .levels = 3}};
  auto db = s.resource_group("db", 1);
  Gate gate;
  auto holder = s.submit([&] { gate.hold(); }, {.needs = {{db, 1}}});
  gate.wait_entered();
  std::mutex mu;
  std::vector<std::string> order;
  std::vector<Handle<void>> hs;
  for (int i = 0; i < 3; ++i) {
    hs.push_back(s.submit([&, i] {
      std::lock_guard lock(mu);
      order.push_back("low" + std::to_string(i));
    }, {.priority = low, .needs = {{db, 1}}}));
    test::await([&] { return db.stats().waiting >= static_cast<std::uint64_t>(i + 1); }, "db.stats().waiting >= static_cast<std::uint64_t>(i + 1)");
  }
  for (int i = 0; i < 2; ++i) {
    hs.push_back(s.submit([&, i] {
      std::lock_guard lock(mu);
      order.push_back("high" + std::to_string(i));
    }, {.priority = high, .needs = {{db, 1}}}));
    test::await([&] { return db.stats().waiting >= static_cast<std::uint64_t>(4 + i); }, "db.stats().waiting >= static_cast<std::uint64_t>(4 + i)");
  }
  gate.open.store(true);
  for (auto& h : hs) h.get();
  EXPECT_EQ(order, (std::vector<std::string>{"high0", "high1", "low0", "low1", "low2"}));
}

TEST(Resource, SetPriorityReordersAParkedTask) {
  Scheduler s{{.workers = 2, .levels = 3}};
  auto db = s.resource_group("db", 1);
  Gate gate;
  auto holder = s.submit([&] { gate.hold(); }, {.needs = {{db, 1}}});
  gate.wait_entered();
  std::mutex mu;
  std::vector<int> order;
  std::vector<Handle<void>> hs;
  for (int i = 0; i < 3; ++i) {
    hs.push_back(s.submit([&, i] {
      std::lock_guard lock(mu);
      order.push_back(i);
    }, {.priority = low, .needs = {{db, 1}}}));
    test::await([&] { return db.stats().waiting >= static_cast<std::uint64_t>(i + 1); }, "db.stats().waiting >= static_cast<std::uint64_t>(i + 1)");
  }
  EXPECT_TRUE(hs[2].set_priority(high));  // parked: it moves ahead of the older low waiters
  EXPECT_TRUE(hs[1].set_priority(high));  // same priority now: age decides between 1 and 2
  EXPECT_FALSE(holder.set_priority(high));  // running: too late
  gate.open.store(true);
  for (auto& h : hs) h.get();
  EXPECT_EQ(order, (std::vector<int>{1, 2, 0}));
}

// Many waiters, each parked in two groups' lists, some moved to another
// level and some cancelled while parked: every move and every cancel takes
// the task's entries out of both lists by their recorded places, so the
// survivors must still be granted by (level, age) and the cancelled never
// run.
TEST(Resource, WaitersReorderedAndCancelledInTwoListsAreGrantedByLevelThenAge) {
  for (unsigned seed = 1; seed <= 3 * test::kScale; ++seed) {
    Scheduler s{{.workers = 2, .levels = 3}};
    auto db = s.resource_group("db", 1);
    auto pool = s.resource_group("pool", 1000);  // never full: it only adds a second list
    Gate gate;
    auto holder = s.submit([&] { gate.hold(); }, {.needs = {{db, 1}}});
    gate.wait_entered();
    std::mt19937 rng(seed);
    constexpr int kWaiters = 60;
    std::mutex mu;
    std::vector<int> order;
    std::vector<Handle<void>> hs;
    std::vector<unsigned> level(kWaiters);
    for (int i = 0; i < kWaiters; ++i) {
      level[i] = static_cast<unsigned>(rng() % 3);
      hs.push_back(s.submit([&, i] {
        std::lock_guard lock(mu);
        order.push_back(i);
      }, {.priority = Priority{static_cast<std::uint8_t>(level[i])}, .needs = {{db, 1}, {pool, 1}}}));
      test::await([&] { return db.stats().waiting >= static_cast<std::uint64_t>(i + 1); }, "db.stats().waiting >= static_cast<std::uint64_t>(i + 1)");
    }
    std::vector<bool> cancelled(kWaiters, false);
    for (int step = 0; step < kWaiters; ++step) {
      const int i = static_cast<int>(rng() % kWaiters);
      if (cancelled[i]) continue;
      if (rng() % 3 == 0) {
        ASSERT_TRUE(hs[i].cancel()) << "seed " << seed << ": waiter " << i << " was not parked";
        cancelled[i] = true;
      } else {
        level[i] = static_cast<unsigned>(rng() % 3);
        ASSERT_TRUE(hs[i].set_priority(Priority{static_cast<std::uint8_t>(level[i])})) << "seed " << seed;
      }
    }
    std::vector<int> expected;
    for (int i = 0; i < kWaiters; ++i)
      if (!cancelled[i]) expected.push_back(i);
    // Priority 0 is the highest; the same level keeps submission order.
    std::stable_sort(expected.begin(), expected.end(), [&](int a, int b) { return level[a] < level[b]; });
    EXPECT_EQ(db.stats().waiting, expected.size()) << "seed " << seed;
    EXPECT_EQ(pool.stats().waiting, expected.size()) << "seed " << seed;
    gate.open.store(true);
    holder.get();
    for (int i = 0; i < kWaiters; ++i) {
      if (cancelled[i]) {
        EXPECT_THROW(hs[i].get(), TaskCancelled) << "seed " << seed;
      } else {
        hs[i].get();
      }
    }
    EXPECT_EQ(order, expected) << "seed " << seed;
    EXPECT_EQ(db.stats().in_use, 0u);
    EXPECT_EQ(pool.stats().in_use, 0u);
    EXPECT_EQ(pool.stats().waiting, 0u);
  }
}

TEST(Resource, WeightedNeedsShareABudget) {
  Scheduler s{{.workers = 4}};
  auto memory = s.resource_group("memory_mib", 4096);
  Observer obs({memory});
  std::vector<Handle<void>> hs;
  for (int i = 0; i < 400; ++i) {
    const int mib = i % 3 == 0 ? 2048 : 512;
    hs.push_back(s.submit([&obs, mib] {
      obs.enter({{0, mib}});
      for (int spin = 0; spin < 2000; ++spin) std::atomic_signal_fence(std::memory_order_seq_cst);
      obs.leave({{0, mib}});
    }, {.needs = {{memory, static_cast<std::uint64_t>(mib)}}}));
  }
  for (auto& h : hs) h.get();
  EXPECT_EQ(obs.violations.load(), 0);
  EXPECT_LE(memory.stats().max_in_use, 4096u);
  EXPECT_EQ(memory.stats().in_use, 0u);
}

TEST(Resource, PermitsComeBackAfterExceptionsAndCancellation) {
  Scheduler s{{.workers = 2}};
  auto db = s.resource_group("db", 2);
  auto bad = s.submit([]() -> int { throw std::runtime_error("query failed"); }, {.needs = {{db, 2}}});
  EXPECT_THROW(bad.get(), std::runtime_error);
  EXPECT_EQ(db.stats().in_use, 0u);
  auto ok = s.submit([] { return 1; }, {.needs = {{db, 2}}});
  EXPECT_EQ(ok.get(), 1);
  EXPECT_EQ(db.stats().in_use, 0u);
}

TEST(Resource, ShutdownCancelCompletesParkedTasksAndReturnsPermits) {
  Scheduler s{{.workers = 2}};
  auto db = s.resource_group("db", 1);
  Gate gate;
  auto holder = s.submit([&] { gate.hold(); return 0; }, {.needs = {{db, 1}}});
  gate.wait_entered();
  std::vector<Handle<int>> parked;
  for (int i = 0; i < 5; ++i) parked.push_back(s.submit([] { return 1; }, {.needs = {{db, 1}}}));
  test::await([&] { return db.stats().waiting >= 5; }, "db.stats().waiting >= 5");
  std::thread stopper([&] { s.shutdown(ShutdownMode::cancel); });
  test::await([&] { return db.stats().waiting == 0; }, "db.stats().waiting == 0");  // cancel_parked ran
  gate.open.store(true);
  stopper.join();
  EXPECT_EQ(holder.get(), 0);  // it was running: it finishes
  for (auto& p : parked) EXPECT_THROW(p.get(), TaskCancelled);
  EXPECT_EQ(db.stats().in_use, 0u);
}

TEST(Resource, RaisingTheLimitLetsWaitersRunAtOnce) {
  Scheduler s{{.workers = 3}};
  auto db = s.resource_group("db", 1);
  Gate gate;
  auto holder = s.submit([&] { gate.hold(); }, {.needs = {{db, 1}}});
  gate.wait_entered();
  std::vector<Handle<void>> waiting;
  for (int i = 0; i < 3; ++i) waiting.push_back(s.submit([] {}, {.needs = {{db, 1}}}));
  test::await([&] { return db.stats().waiting >= 3; }, "db.stats().waiting >= 3");
  db.set_limit(4);
  for (auto& w : waiting) w.get();  // while the holder still holds its permit
  EXPECT_EQ(db.limit(), 4u);
  gate.open.store(true);
  holder.get();
}

TEST(Resource, InvalidUseIsAClearErrorAtSubmitTime) {
  Scheduler s{{.workers = 1}};
  Scheduler other{{.workers = 1}};
  EXPECT_THROW(s.resource_group("zero", 0), InvalidArgument);
  auto db = s.resource_group("db", 8);
  EXPECT_THROW(s.resource_group("db", 4), InvalidArgument);
  try {
    (void)s.submit([] {}, {.needs = {{db, 9}}});
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("limit is 8"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)s.submit([] {}, {.needs = {{db, 0}}}), InvalidArgument);
  auto foreign = other.resource_group("db", 8);
  EXPECT_THROW((void)s.submit([] {}, {.needs = {{foreign, 1}}}), InvalidArgument);
  EXPECT_THROW((void)s.submit([] {}, {.needs = {{ResourceGroup{}, 1}}}), InvalidArgument);
  EXPECT_THROW(db.set_limit(0), InvalidArgument);
  EXPECT_EQ(db.stats().in_use, 0u);
}

// Issue 11 §1.2: a waiter whose need a lowered limit can never grant must not
// block those behind it; it stays parked, and raising the limit again runs it.
TEST(Resource, LoweredLimitBelowAParkedWaitersNeedDoesNotWedgeThoseBehindIt) {
  for (int round = 0; round < 20; ++round) {
    Scheduler s{{.workers = 2}};
    auto pool = s.resource_group("pool", 4);
    Gate gate;
    auto holder = s.submit([&] { gate.hold(); }, {.needs = {{pool, 1}}});
    gate.wait_entered();
    auto big = s.submit([] { return 4; }, {.needs = {{pool, 4}}});    // parked: one of four is held
    auto small = s.submit([] { return 1; }, {.needs = {{pool, 1}}});  // fits, but waits behind `big`
    must_happen([&] { return pool.stats().waiting == 2; }, "two waiters parked");
    pool.set_limit(2);  // `big` can no longer fit; `small` now can
    gate.open.store(true);
    must_happen([&] { return small.ready(); },
                "round " + std::to_string(round) + ": the waiter behind one that can never fit was never granted");
    EXPECT_EQ(small.get(), 1);
    holder.get();
    EXPECT_FALSE(big.ready()) << "a waiter needing more than the limit ran";
    EXPECT_EQ(pool.stats().waiting, 1u) << "the hopeless waiter must stay parked";
    pool.set_limit(4);
    must_happen([&] { return big.ready(); }, "round " + std::to_string(round) + ": raising the limit again did not run it");
    EXPECT_EQ(big.get(), 4);
    EXPECT_EQ(pool.stats().in_use, 0u);
    EXPECT_EQ(pool.stats().waiting, 0u);
  }
}

// Issue 11 §1.2, the reported sequence: the holder finishes after the limit
// was lowered; a drain cancels the hopeless waiter and runs the others.
TEST(Resource, DrainCancelsAHopelessWaiterAndRunsThoseBehindIt) {
  for (int round = 0; round < 20; ++round) {
    Scheduler s{{.workers = 2}};
    auto pool = s.resource_group("pool", 4);
    Gate gate;
    auto holder = s.submit([&] { gate.hold(); }, {.needs = {{pool, 1}}});
    gate.wait_entered();
    auto big = s.submit([] {}, {.needs = {{pool, 4}}});
    auto small = s.submit([] { return 1; }, {.needs = {{pool, 1}}});
    auto pair = s.submit([] { return 2; }, {.needs = {{pool, 2}}});  // fits only once the holder is gone
    must_happen([&] { return pool.stats().waiting == 3; }, "three waiters parked");
    pool.set_limit(2);
    gate.open.store(true);
    must_finish("shutdown(drain) with a waiter a lowered limit can never grant",
                [&] { s.shutdown(ShutdownMode::drain); });
    holder.get();
    EXPECT_THROW(big.get(), TaskCancelled);
    EXPECT_EQ(small.get(), 1);
    EXPECT_EQ(pair.get(), 2);
    EXPECT_EQ(pool.stats().in_use, 0u);
    EXPECT_EQ(pool.stats().waiting, 0u);
  }
}

// Issue 11 §2: no memory for a task's wait-list entries, on either path that
// parks (at submit, and on a worker): the task is neither lost nor
// half-registered, no worker dies, and it runs once the permits come back.
TEST(Resource, NoMemoryForAWaitListEntryLosesNoTaskAndKillsNoWorker) {
  for (int failures : {1, 2, 5, 40}) {
    Scheduler s{{.workers = 2}};
    auto a = s.resource_group("a", 1);
    auto b = s.resource_group("b", 1);
    Gate gate;
    auto holder = s.submit([&] { gate.hold(); }, {.needs = {{a, 1}}});
    gate.wait_entered();
    detail::fail_wait_list_allocations.store(failures);
    auto x = s.submit([] { return 7; }, {.needs = {{a, 1}, {b, 1}}});
    must_happen([&] { return a.stats().waiting == 1 && detail::fail_wait_list_allocations.load() == 0; },
                "the task never parked once memory was back (" + std::to_string(failures) + " failures)");
    EXPECT_EQ(b.stats().waiting, 1u) << "registered on one list only";
    // Both workers are alive and serve other work: the holder occupies one.
    for (int i = 0; i < 100; ++i) EXPECT_EQ(s.submit([i] { return i; }).get(), i);
    gate.open.store(true);
    holder.get();
    must_happen([&] { return x.ready(); }, "the task that could not park at first never ran");
    EXPECT_EQ(x.get(), 7);
    EXPECT_EQ(a.stats().in_use, 0u);
    EXPECT_EQ(b.stats().in_use, 0u);
    EXPECT_EQ(a.stats().waiting, 0u);
    EXPECT_EQ(b.stats().waiting, 0u);
  }
  detail::fail_wait_list_allocations.store(0);
}

}  // namespace
}  // namespace ordo
