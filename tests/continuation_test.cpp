// Continuations and joins on handles (then, when_all, when_any, after),
// error and cancellation propagation, and dynamic priority inheritance.
#include <gtest/gtest.h>

#include <atomic>
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

}  // namespace
}  // namespace ordo
