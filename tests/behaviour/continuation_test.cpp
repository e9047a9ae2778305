// Continuations and joins on handles (then, when_all, when_any, after),
// error and cancellation propagation, and dynamic priority inheritance.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ordo/ordo.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using test::Gate;

TEST(Continuation, ThenChainPassesResultsAlong) {
  Scheduler s{{.workers = 2}};
  auto h = s.submit([] { return 20; }).then([](int x) { return x + 1; }).then([](int x) {
    return std::to_string(x * 2);
  });
  EXPECT_EQ(h.get(), "42");
}

TEST(Continuation, VoidAndMoveOnlyResults) {
  Scheduler s{{.workers = 2}};
  std::atomic<int> ran{0};
  auto h = s.submit([&] { ran++; }).then([&] { ran++; return std::make_unique<int>(7); }).then(
      [](std::unique_ptr<int> p) { return *p; });
  EXPECT_EQ(h.get(), 7);
  EXPECT_EQ(ran.load(), 2);
}

TEST(Continuation, WhenAllJoinsResultsInOrder) {
  Scheduler s{{.workers = 2}};
  auto both = when_all(s.submit([] { return 1; }), s.submit([] { return std::string("two"); }), s.submit([] {}));
  auto [one, two, nothing] = both.get();
  EXPECT_EQ(one, 1);
  EXPECT_EQ(two, "two");
  (void)nothing;
  std::vector<Handle<int>> parts;
  for (int i = 0; i < 100; ++i) parts.push_back(s.submit([i] { return i * i; }));
  auto all = when_all(std::move(parts)).then([](std::vector<int> v) {
    long sum = 0;
    for (int x : v) sum += x;
    return sum;
  });
  EXPECT_EQ(all.get(), 328350);
}

TEST(Continuation, WhenAnyCompletesWithAFinishedInput) {
  Scheduler s{{.workers = 2}};
  Gate gate;
  std::vector<Handle<int>> racers;
  racers.push_back(s.submit([&] { gate.hold(); return 1; }));
  gate.wait_entered();
  racers.push_back(s.submit([] { return 2; }));
  auto first = when_any(std::move(racers));
  auto [index, value] = first.get();  // the gated one cannot have finished
  EXPECT_EQ(index, 1u);
  EXPECT_EQ(value, 2);
  gate.open.store(true);
}

TEST(Continuation, FailureCancelsDependentsWithThatError) {
  Scheduler s{{.workers = 2}};
  std::atomic<int> ran{0};
  auto source = s.submit([]() -> int { throw std::runtime_error("disk full"); });
  auto chained = std::move(source).then([&](int x) { ran++; return x; }).then([&](int x) { ran++; return x; });
  try {
    chained.get();
    FAIL() << "the error must reach the end of the chain";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "disk full");
  }
  EXPECT_EQ(ran.load(), 0);
  auto joined = when_all(s.submit([] { return 1; }), s.submit([]() -> int { throw std::logic_error("bad input"); }));
  EXPECT_THROW(joined.get(), std::logic_error);
}

TEST(Continuation, OutcomeContinuationRunsAfterAFailureAndRecovers) {
  Scheduler s{{.workers = 2}};
  auto recovered = s.submit([]() -> int { throw std::runtime_error("flaky"); }).then([](Outcome<int> o) {
    return o.has_value() ? *o.value : -1;
  });
  EXPECT_EQ(recovered.get(), -1);
  auto passed = s.submit([] { return 5; }).then([](Outcome<int> o) { return o.get() + 1; });
  EXPECT_EQ(passed.get(), 6);
}

TEST(Continuation, CancelStopsTheTaskAndEverythingDownstream) {
  Scheduler s{{.workers = 1}};
  Gate gate;
  s.post([&] { gate.hold(); });
  gate.wait_entered();
  std::atomic<int> ran{0};
  auto root = s.submit([&] { ran++; return 1; });
  auto dependent = s.submit([&] { ran++; return 2; }, {.after = {root}});
  auto further = std::move(dependent).then([&](int x) { ran++; return x; });
  auto independent = s.submit([&] { ran++; return 3; });
  EXPECT_TRUE(root.cancel());
  EXPECT_FALSE(root.cancel());  // already cancelled: too late
  gate.open.store(true);
  EXPECT_THROW(further.get(), TaskCancelled);
  EXPECT_EQ(root.status(), TaskStatus::cancelled);
  EXPECT_EQ(independent.get(), 3);
  EXPECT_THROW(root.get(), TaskCancelled);
  EXPECT_EQ(ran.load(), 1);  // only the independent task ran
}

TEST(Continuation, CancelOfARunningTaskIsTooLate) {
  Scheduler s{{.workers = 1}};
  Gate gate;
  auto running = s.submit([&] { gate.hold(); return 1; });
  gate.wait_entered();
  EXPECT_FALSE(running.cancel());
  gate.open.store(true);
  EXPECT_EQ(running.get(), 1);
}

TEST(Continuation, AfterExpressesADiamondFromAnyThread) {
  Scheduler s{{.workers = 2}};
  std::mutex mu;
  std::vector<std::string> order;
  auto note = [&](const char* n) {
    std::lock_guard lock(mu);
    order.emplace_back(n);
  };
  auto a = s.submit([&] { note("a"); });
  auto b = s.submit([&] { note("b"); }, {.after = {a}});
  auto c = s.submit([&] { note("c"); }, {.after = {a}});
  auto d = s.submit([&] { note("d"); }, {.after = {b, c}});
  d.get();
  ASSERT_EQ(order.size(), 4u);
  EXPECT_EQ(order.front(), "a");
  EXPECT_EQ(order.back(), "d");
  a.get();  // handles named in `after` stay usable
  b.get();
}

// One worker, held. A low task p1, a low task p2 after it, normal tasks, then
// a high task after p2: p2 and, transitively, p1 are raised to high and run
// before the normal tasks that were queued earlier.
TEST(Continuation, HighDependentRaisesItsPendingPredecessorsTransitively) {
  Scheduler s{{.workers = 1, .levels = 3}};
  Gate gate;
  s.post([&] { gate.hold(); }, {.priority = high});
  gate.wait_entered();
  std::vector<std::string> order;
  auto p1 = s.submit([&] { order.push_back("p1"); }, {.priority = low});
  auto p2 = s.submit([&] { order.push_back("p2"); }, {.priority = low, .after = {p1}});
  for (int i = 0; i < 5; ++i) s.post([&] { order.push_back("normal"); }, {.priority = normal});
  auto urgent = s.submit([&] { order.push_back("urgent"); }, {.priority = high, .after = {p2}});
  gate.open.store(true);
  urgent.get();
  s.shutdown();
  ASSERT_EQ(order.size(), 8u);
  EXPECT_EQ(order[0], "p1");
  EXPECT_EQ(order[1], "p2");
  EXPECT_EQ(order[2], "urgent");
}

TEST(Continuation, WaitingOnALowerTaskFromInsideAHighTaskRaisesIt) {
  Scheduler s{{.workers = 1, .levels = 3}};
  Gate gate;
  s.post([&] { gate.hold(); }, {.priority = high});
  gate.wait_entered();
  std::vector<std::string> order;
  auto low_work = std::make_shared<Handle<int>>(s.submit([&] { order.push_back("low"); return 1; }, {.priority = low}));
  for (int i = 0; i < 3; ++i) s.post([&] { order.push_back("normal"); }, {.priority = normal});
  auto waiter = s.submit([&] { return low_work->get(); }, {.priority = high});
  gate.open.store(true);
  EXPECT_EQ(waiter.get(), 1);
  s.shutdown();
  ASSERT_EQ(order.size(), 4u);
  EXPECT_EQ(order[0], "low");
}

TEST(Continuation, LongChainsBuildRunAndReleaseWithoutRecursion) {
  Scheduler s{{.workers = 2}};
  Handle<long> h = s.submit([] { return 0L; });
  for (int i = 0; i < 20000; ++i) h = std::move(h).then([](long x) { return x + 1; });
  EXPECT_EQ(h.get(), 20000);
}

// Chains and joins built from several threads at once, then cancels racing
// with execution: every function runs at most once, exactly the uncancelled
// ones run, and every handle completes.
TEST(Continuation, ConcurrentChainsJoinsAndCancelsStress) {
  Scheduler s{{.workers = 3}};
  const int kThreads = 3;
  const int kPerThread = 300 * static_cast<int>(test::kScale);
  std::atomic<int> bodies{0};
  std::atomic<int> expected_bodies{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      std::mt19937 rng(static_cast<unsigned>(th + 1));
      for (int i = 0; i < kPerThread; ++i) {
        auto a = s.submit([&] { bodies++; return 1; }, {.priority = Priority{static_cast<std::uint8_t>(rng() % 3)}});
        auto b = s.submit([&] { bodies++; return 2; });
        auto joined = when_all(std::move(a), std::move(b));
        auto total = std::move(joined).then([&](std::tuple<int, int> t) {
          bodies++;
          return std::get<0>(t) + std::get<1>(t);
        });
        try {
          EXPECT_EQ(total.get(), 3);
          expected_bodies += 3;
        } catch (const TaskCancelled&) {
          ADD_FAILURE() << "nothing was cancelled";
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bodies.load(), expected_bodies.load());

  // Cancels racing with execution.
  std::atomic<int> ran{0}, cancelled{0}, completed{0};
  std::vector<Handle<int>> roots;
  std::vector<Handle<int>> tails;
  for (int i = 0; i < 2000; ++i) {
    roots.push_back(s.submit([&] { ran++; return 1; }));
    tails.push_back(s.submit([&] { ran++; return 2; }, {.after = {roots.back()}}));
  }
  std::thread canceller([&] {
    for (int i = 0; i < 2000; i += 2) cancelled += roots[i].cancel() ? 1 : 0;
  });
  canceller.join();
  for (auto& t : tails) {
    try {
      EXPECT_EQ(t.get(), 2);
      completed++;
    } catch (const TaskCancelled&) {
    }
  }
  // Each cancelled root stops itself and its tail; everything else ran once.
  EXPECT_EQ(ran.load(), 4000 - 2 * cancelled.load());
  EXPECT_EQ(completed.load(), 2000 - cancelled.load());
}

TEST(Continuation, EmptyInputsAreClearErrors) {
  Scheduler s{{.workers = 1}};
  EXPECT_THROW(when_any(std::vector<Handle<int>>{}), InvalidArgument);
  EXPECT_THROW(when_all(std::vector<Handle<int>>{}), InvalidArgument);
  Handle<int> empty;
  EXPECT_THROW(std::move(empty).then([](int x) { return x; }), Error);
}


// A dependent still waiting for its predecessors must change level without
// being queued: queued early, it would run and read a predecessor's payload
// that is still a callable, not an outcome.
TEST(Continuation, SetPriorityOnAWaitingDependentNeverRunsItEarly) {
  Scheduler s{{.workers = 2, .levels = 3}};
  for (int round = 0; round < 50 * static_cast<int>(test::kScale); ++round) {
    Gate gate;
    auto a = s.submit([&] { gate.hold(); return round; }, {.priority = low});
    auto b = s.submit([&] { gate.hold(); return 1; }, {.priority = low});
    auto c = s.submit([&] { gate.hold(); return std::string(100, 'x'); }, {.priority = low});
    TaskRef c_ref = c;
    auto after = s.submit([] { return 7; }, {.priority = low, .after = {c_ref}});
    auto then = std::move(a).then([](int x) { return x + 1; }, {.priority = low});
    std::vector<Handle<int>> any_inputs;
    any_inputs.push_back(std::move(b));
    auto any = when_any(std::move(any_inputs));
    gate.wait_entered();
    EXPECT_TRUE(then.set_priority(high));
    EXPECT_TRUE(any.set_priority(high));
    EXPECT_TRUE(after.set_priority(high));
    EXPECT_TRUE(then.set_priority(low));  // lowering a waiting task is allowed too
    EXPECT_EQ(then.status(), TaskStatus::queued);
    EXPECT_EQ(any.status(), TaskStatus::queued);
    EXPECT_EQ(after.status(), TaskStatus::queued);
    gate.open.store(true);
    EXPECT_EQ(then.get(), round + 1);
    EXPECT_EQ(any.get(), (std::pair<std::size_t, int>(0, 1)));
    EXPECT_EQ(after.get(), 7);
    EXPECT_EQ(c.get().size(), 100u);
  }
}

// Raising a waiting dependent raises what it waits for (inheritance): the
// low predecessor then runs before normal work queued ahead of it.
TEST(Continuation, RaisingAWaitingDependentRaisesItsQueuedPredecessor) {
  Scheduler s{{.workers = 1, .levels = 3}};
  Gate gate;
  s.post([&] { gate.hold(); }, {.priority = high});
  gate.wait_entered();
  std::mutex mu;
  std::vector<std::string> order;
  auto log = [&](const char* what) { std::lock_guard lock(mu); order.emplace_back(what); };
  auto normal_work = s.submit([&] { log("normal"); });
  auto pred = s.submit([&] { log("pred"); return 1; }, {.priority = low});
  auto dependent = std::move(pred).then([&](int x) { log("dependent"); return x; }, {.priority = low});
  EXPECT_TRUE(dependent.set_priority(high));
  gate.open.store(true);
  EXPECT_EQ(dependent.get(), 1);
  normal_work.get();
  EXPECT_EQ(order, (std::vector<std::string>{"pred", "dependent", "normal"}));
}

TEST(Continuation, AfterDependentOfAFailedPredecessorIsCancelled) {
  Scheduler s{{.workers = 2}};
  std::atomic<int> ran{0};
  auto failing = s.submit([]() -> int { throw std::runtime_error("boom"); });
  auto fine = s.submit([] { return 1; });
  auto dependent = s.submit([&] { ran++; return 2; }, {.after = {fine, failing}});
  EXPECT_THROW(dependent.get(), TaskCancelled);
  EXPECT_EQ(ran.load(), 0);
  EXPECT_THROW(failing.get(), std::runtime_error);  // the predecessor's own handle keeps its error
  EXPECT_EQ(fine.get(), 1);
  auto failing_void = s.submit([] { throw std::logic_error("void boom"); });
  auto dependent_void = s.submit([&] { ran++; }, {.after = {failing_void}});
  EXPECT_THROW(dependent_void.get(), TaskCancelled);
  EXPECT_EQ(ran.load(), 0);
}

TEST(Continuation, UsedUpOrEmptyHandlesThrowInvalidArgument) {
  Scheduler s{{.workers = 1}};
  auto h = s.submit([] { return 1; });
  EXPECT_EQ(h.get(), 1);
  EXPECT_FALSE(h.valid());
  EXPECT_THROW((void)h.ready(), InvalidArgument);
  EXPECT_THROW((void)h.status(), InvalidArgument);
  EXPECT_THROW(h.wait(), InvalidArgument);
  EXPECT_THROW(h.get(), InvalidArgument);
  EXPECT_THROW(h.cancel(), InvalidArgument);
  EXPECT_THROW(h.set_priority(high), InvalidArgument);
  EXPECT_THROW(std::move(h).then([](int x) { return x; }), InvalidArgument);
  Handle<int> empty;
  EXPECT_THROW(when_all(s.submit([] { return 1; }), std::move(empty)), InvalidArgument);
  Handle<int> empty_first;
  auto kept = s.submit([] { return 2; });
  EXPECT_THROW(when_all(std::move(empty_first), std::move(kept)), InvalidArgument);
  EXPECT_TRUE(kept.valid());  // a refused join consumes nothing
  EXPECT_EQ(kept.get(), 2);
  std::vector<Handle<int>> with_hole;
  with_hole.push_back(s.submit([] { return 3; }));
  with_hole.emplace_back();
  EXPECT_THROW(when_all(std::move(with_hole)), InvalidArgument);
  std::vector<Handle<int>> any_hole;
  any_hole.emplace_back();
  EXPECT_THROW(when_any(std::move(any_hole)), InvalidArgument);
  EXPECT_THROW(s.submit([] { return 4; }, {.after = {TaskRef{}}}), InvalidArgument);
  EXPECT_THROW(s.post([] {}, {.after = {TaskRef{}}}), InvalidArgument);
}

// The documentation promises that a Handle may outlive its scheduler.
// (AddressSanitizer in CI turns a touch of the freed scheduler into a failure.)
TEST(Continuation, CancelAndSetPriorityOnAFinishedTaskAfterItsSchedulerIsGone) {
  Handle<int> plain;
  Handle<int> with_needs;
  Handle<int> dependent;
  {
    Scheduler s{{.workers = 1}};
    auto db = s.resource_group("db", 1);
    plain = s.submit([] { return 1; });
    with_needs = s.submit([] { return 2; }, {.needs = {{db, 1}}});
    TaskRef p = plain;
    dependent = s.submit([] { return 3; }, {.after = {p}});
    dependent.wait();
    with_needs.wait();
  }
  EXPECT_FALSE(plain.cancel());
  EXPECT_FALSE(with_needs.cancel());
  EXPECT_FALSE(dependent.cancel());
  EXPECT_FALSE(plain.set_priority(high));
  EXPECT_FALSE(with_needs.set_priority(high));
  EXPECT_FALSE(dependent.set_priority(high));
  EXPECT_EQ(with_needs.status(), TaskStatus::succeeded);
  EXPECT_EQ(dependent.get(), 3);
}

// then() honours `needs` like submit(): a continuation waits for its permits.
TEST(Continuation, ThenHonoursNeeds) {
  Scheduler s{{.workers = 2}};
  auto db = s.resource_group("db", 1);
  Gate gate;
  auto holder = s.submit([&] { gate.hold(); }, {.needs = {{db, 1}}});
  gate.wait_entered();
  std::atomic<bool> ran{false};
  auto next = s.submit([] { return 1; }).then([&](int x) { ran = true; return x; }, {.needs = {{db, 1}}});
  // The continuation can only be parked or queued while the holder has the permit.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (db.stats().waiting == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  EXPECT_EQ(db.stats().waiting, 1u) << "the continuation must wait for db, parked";
  EXPECT_FALSE(ran.load());
  gate.open.store(true);
  EXPECT_EQ(next.get(), 1);
  holder.get();
  EXPECT_EQ(db.stats().in_use, 0u);
}

template <class Options>
concept ThenAccepts = requires(Handle<int> h, Options options) { std::move(h).then([](int x) { return x; }, options); };
template <class Options>
concept HasAfter = requires(Options o) { o.after; };

// then() used to take SubmitOptions and refuse `after` at run time; now its
// options have no `after`, and it honours what they have (priority here;
// needs in ThenHonoursNeeds).
TEST(Continuation, ThenTakesNoAfterAndHonoursItsPriority) {
  static_assert(ThenAccepts<ThenOptions>);
  static_assert(!ThenAccepts<SubmitOptions>, "then must not take options it would ignore");
  static_assert(!HasAfter<ThenOptions>);
  Scheduler s{{.workers = 1}};
  auto next = s.submit([] { return 1; }, {.priority = low}).then([&s](int x) {
    return std::pair{x, s.stats().per_level[0].running};
  }, {.priority = high});
  auto [value, running_high] = next.get();
  EXPECT_EQ(value, 1);
  EXPECT_EQ(running_high, 1u) << "the continuation did not run at the priority it was given";
}

// A callable whose copy throws: submitting it by lvalue fails while the
// dependent's node is being set up, after its setup hold was counted.
struct ThrowsWhenCopied {
  ThrowsWhenCopied() = default;
  ThrowsWhenCopied(const ThrowsWhenCopied&) { throw std::runtime_error("copy refused"); }
  ThrowsWhenCopied(ThrowsWhenCopied&&) noexcept = default;
  int operator()() const { return 0; }
};

// The node of a refused dependent goes back to this thread's pool and is the
// next one taken. A plain task built on it must not inherit the refused
// dependent's count of pending predecessors: a high dependent raising it
// would then take it for a task still waiting, re-level it in place, and its
// queue entry would be skipped as stale — the task would never run.
TEST(Continuation, ARefusedDependentLeavesNothingBehindForTheNextTaskOnItsNode) {
  Scheduler s{{.workers = 1}};
  for (int i = 0; i < 20; ++i) {
    Gate gate;
    auto blocker = s.submit([&gate] { gate.hold(); return 1; });
    gate.wait_entered();
    ThrowsWhenCopied fn;
    EXPECT_THROW((void)s.submit(fn, {.after = {blocker}}), std::runtime_error);
    auto plain = s.submit([] { return 7; }, {.priority = low});
    auto dependent = s.submit([] { return 8; }, {.priority = high, .after = {plain}});
    gate.open.store(true);
    ASSERT_TRUE(plain.wait_for(std::chrono::seconds(10))) << "iteration " << i << ": the raised task never ran";
    EXPECT_EQ(plain.get(), 7);
    EXPECT_EQ(dependent.get(), 8);
    EXPECT_EQ(blocker.get(), 1);
  }
}

}  // namespace
}  // namespace ordo
