#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ordo/ordo.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

long fib(Scheduler& s, int n) {
  if (n < 2) return n;
  long a = 0;
  TaskGroup g(s);
  g.spawn([&] { a = fib(s, n - 1); });
  long b = fib(s, n - 2);
  g.wait();
  return a + b;
}

TEST(TaskGroup, FibThroughNestedSpawnsGivesTheRightValue) {
  for (unsigned workers : {1u, 2u, 4u}) {
    Scheduler s{{.workers = workers}};
    EXPECT_EQ(s.submit([&s] { return fib(s, 20); }).get(), 6765) << workers << " workers";
  }
}

TEST(TaskGroup, FibFromAnExternalThreadAlsoWorks) {
  Scheduler s{{.workers = 2}};
  EXPECT_EQ(fib(s, 18), 2584);  // the top levels wait outside the pool
}

TEST(TaskGroup, RepeatedFibStress) {
  Scheduler s{{.workers = 3}};
  for (std::size_t i = 0; i < 10 * test::kScale; ++i) {
    ASSERT_EQ(s.submit([&s] { return fib(s, 16); }).get(), 987);
  }
}

TEST(TaskGroup, HelpingWaitNeverDeadlocksWithOneWorker) {
  Scheduler s{{.workers = 1}};
  // Three levels of groups, all waiting inside the single worker.
  std::atomic<int> leaves{0};
  auto h = s.submit([&] {
    TaskGroup outer(s);
    for (int i = 0; i < 8; ++i) {
      outer.spawn([&] {
        TaskGroup middle(s);
        for (int j = 0; j < 8; ++j) {
          middle.spawn([&] {
            TaskGroup inner(s);
            for (int k = 0; k < 8; ++k) inner.spawn([&] { leaves.fetch_add(1); });
            inner.wait();
          });
        }
        middle.wait();
      });
    }
    outer.wait();
    return leaves.load();
  });
  EXPECT_EQ(h.get(), 512);
}

TEST(TaskGroup, FirstExceptionReachesWaitAndOthersStillRun) {
  Scheduler s{{.workers = 2}};
  std::atomic<int> ran{0};
  TaskGroup g(s);
  for (int i = 0; i < 100; ++i) {
    g.spawn([&, i] {
      ran.fetch_add(1);
      if (i == 50) throw std::runtime_error("child 50 failed");
    });
  }
  try {
    g.wait();
    FAIL() << "wait() should rethrow";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "child 50 failed");
  }
  EXPECT_EQ(ran.load(), 100);
  // The group is reusable and clean after wait().
  g.spawn([&] { ran.fetch_add(1); });
  EXPECT_NO_THROW(g.wait());
  EXPECT_EQ(ran.load(), 101);
}

TEST(TaskGroup, SpawnFromAThreadThatIsNotTheOwnerIsAClearError) {
  Scheduler s{{.workers = 1}};
  TaskGroup g(s);
  std::thread other([&] {
    try {
      g.spawn([] {});
      ADD_FAILURE() << "spawn from a non-owner should throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("does not own"), std::string::npos);
    }
  });
  other.join();
}

TEST(TaskGroup, DestructorWaitsForChildren) {
  Scheduler s{{.workers = 2}};
  std::atomic<int> done{0};
  {
    TaskGroup g(s);
    for (int i = 0; i < 1000; ++i) g.spawn([&] { done.fetch_add(1); });
  }
  EXPECT_EQ(done.load(), 1000);
}

// An external owner that sleeps must be woken by the last child.
TEST(TaskGroup, ExternalOwnerIsWokenByTheLastChild) {
  Scheduler s{{.workers = 2}};
  for (std::size_t round = 0; round < 200 * test::kScale; ++round) {
    std::atomic<int> done{0};
    TaskGroup g(s);
    for (int i = 0; i < 4; ++i) {
      g.spawn([&] {
        // long enough that the owner gives up spinning and parks
        for (int k = 0; k < 20000; ++k) std::atomic_signal_fence(std::memory_order_seq_cst);
        done.fetch_add(1);
      });
    }
    g.wait();
    ASSERT_EQ(done.load(), 4);
  }
}


// A worker adds the children of one group it finished to the group's count
// in one step, at the end of a run of them. That step must come before it
// runs anything else: here the next task blocks until the owner saw its
// group complete, and a count still held back would deadlock them. (Two
// workers: the blocking task may also start before some children, which
// the other worker then runs.)
TEST(TaskGroup, AWorkerCountsTheChildrenItFinishedBeforeRunningAnythingElse) {
  Scheduler s{{.workers = 2}};
  for (int round = 0; round < 200; ++round) {
    std::atomic<bool> group_seen_done{false};
    std::atomic<int> ran{0};
    test::must_finish("the owner's wait", [&] {
      TaskGroup g(s);
      for (int i = 0; i < 8; ++i) g.spawn([&] { ran.fetch_add(1); });
      auto blocker = s.submit([&] {
        test::await([&] { return group_seen_done.load(); }, "group_seen_done.load()");
      });
      g.wait();
      group_seen_done.store(true);
      blocker.get();
    });
    ASSERT_EQ(ran.load(), 8);
  }
}

template <class Options>
concept SpawnAccepts = requires(TaskGroup& g, Options options) { g.spawn([] {}, options); };
template <class Options>
concept HasAfter = requires(Options o) { o.after; };
template <class Options>
concept HasNeeds = requires(Options o) { o.needs; };

// spawn() used to take SubmitOptions and refuse `after` and `needs` at run
// time; now it cannot be given them at all, and honours what it takes.
TEST(TaskGroup, SpawnTakesNoAfterOrNeedsAndHonoursItsPriority) {
  static_assert(SpawnAccepts<SpawnOptions>);
  static_assert(!SpawnAccepts<SubmitOptions>, "spawn must not take options it would ignore");
  static_assert(!HasAfter<SpawnOptions> && !HasNeeds<SpawnOptions>);
  Scheduler s{{.workers = 1}};
  std::atomic<int> ran{0};
  std::atomic<int> level_seen{-1};
  auto outer = s.submit([&] {
    TaskGroup g(s);
    g.spawn([&] {
      ran++;
      level_seen = static_cast<int>(s.stats().per_level[0].running);
    }, {.priority = high});
    g.wait();
  }, {.priority = low});
  ASSERT_TRUE(outer.wait_for(std::chrono::seconds(20)));
  outer.get();
  EXPECT_EQ(ran.load(), 1);
  EXPECT_EQ(level_seen.load(), 1) << "the child did not run at the priority it was spawned with";
}
// A callable that is plain bytes is copied into its node by one call
// (group_spawn_bytes), by a constant-size copy for the common sizes and
// memcpy for others; anything else is constructed in the node or on the
// heap. Each shape must arrive whole: every byte of its captures checked.
void add_to_seen(std::atomic<long>& seen, long v) { seen.fetch_add(v); }
std::atomic<long> fn_pointer_runs{0};
void count_a_run() { fn_pointer_runs.fetch_add(1); }

TEST(TaskGroup, ChildrenOfEveryCallableShapeArriveWhole) {
  Scheduler s{{.workers = 2}};
  for (std::size_t round = 0; round < 20 * test::kScale; ++round) {
    std::atomic<long> seen{0};
    fn_pointer_runs = 0;
    long expected = 0;
    auto run = [&] {
      TaskGroup g(s);
      long a = 1, b = 10, c = 100;  // not constants: the children must read their copies
      std::atomic<long>* p = &seen;
      g.spawn([] {});                                                   // 1 byte
      g.spawn([p] { add_to_seen(*p, 1000); });                          // 8
      g.spawn([p, a] { add_to_seen(*p, a); });                          // 16
      g.spawn([p, a, b] { add_to_seen(*p, 2 * (a + b)); });             // 24
      g.spawn([p, a, b, c] { add_to_seen(*p, 3 * (a + b + c)); });      // 32
      g.spawn([p, a, b, c, x = 7000L] { add_to_seen(*p, a + b + c + x); });  // 40
      int small = 5;
      g.spawn([p, small] { add_to_seen(*p, small); });                  // 16 with padding
      g.spawn(&count_a_run);                                            // a function pointer
      g.spawn(count_a_run);                                             // a function reference
      g.spawn([p, text = std::string(40, 'x')] { add_to_seen(*p, static_cast<long>(text.size())); });
      std::array<long, 32> big{};
      big.fill(3);
      g.spawn([p, big] { add_to_seen(*p, big[0] + big[31]); });         // larger than the node: heap
      g.spawn([p, n = 0]() mutable { add_to_seen(*p, ++n); });          // mutable state
      g.wait();
      expected = 1000 + 1 + 22 + 333 + 7111 + 5 + 40 + 6 + 1;
    };
    auto h = s.submit(run);  // from a worker (its own deque)
    ASSERT_TRUE(h.wait_for(std::chrono::seconds(20)));
    h.get();
    ASSERT_EQ(seen.load(), expected) << "round " << round << " (from a worker)";
    ASSERT_EQ(fn_pointer_runs.load(), 2);
    seen = 0;
    fn_pointer_runs = 0;
    run();  // from outside the pool (injection queue)
    ASSERT_EQ(seen.load(), expected) << "round " << round << " (from outside)";
    ASSERT_EQ(fn_pointer_runs.load(), 2);
  }
}

TEST(TaskGroup, AChildWithALevelBeyondTheSchedulersIsRefusedWithItsNumber) {
  Scheduler s{{.workers = 1, .levels = 2}};
  TaskGroup g(s);
  long captured = 1;
  for (int shape = 0; shape < 2; ++shape) {
    try {
      if (shape == 0) {
        g.spawn([&captured] { ++captured; }, {.priority = Priority{2}});
      } else {
        g.spawn([text = std::string(40, 'x')] { (void)text; }, {.priority = Priority{2}});
      }
      ADD_FAILURE() << "a level beyond the scheduler's was accepted (shape " << shape << ")";
    } catch (const InvalidArgument& e) {
      EXPECT_STREQ(e.what(), "ordo: priority level 2 is beyond this scheduler's 2 levels (0..1)");
    }
  }
  g.spawn([&captured] { ++captured; });  // the group is still usable, and counted nothing refused
  g.wait();
  EXPECT_EQ(captured, 2);
}

}  // namespace
}  // namespace ordo
