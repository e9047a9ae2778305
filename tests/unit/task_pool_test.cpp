#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "ordo/detail/task.hpp"

namespace ordo::detail {
namespace {

TEST(TaskPool, NodesAreDistinctAndAligned) {
  std::vector<Task*> nodes;
  std::set<Task*> unique;
  for (int i = 0; i < 5000; ++i) {
    Task* t = allocate_task();
    ASSERT_EQ(reinterpret_cast<std::uintptr_t>(t) % alignof(Task), 0u);
    ASSERT_TRUE(unique.insert(t).second) << "node handed out twice";
    nodes.push_back(t);
  }
  for (Task* t : nodes) free_task(t);
}

TEST(TaskPool, APoolGrownPastItsSmallSlabsHandsOutNodesThatNeverOverlap) {
  // 40,000 live nodes: past the first 2 MiB of 32 KiB slabs, into the
  // chunks that are carved into slabs. Sorted, every node must end before
  // the next begins.
  std::vector<Task*> nodes;
  for (int i = 0; i < 40000; ++i) nodes.push_back(allocate_task());
  std::vector<Task*> sorted = nodes;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    ASSERT_EQ(reinterpret_cast<std::uintptr_t>(sorted[i]) % alignof(Task), 0u);
    if (i > 0) {
      ASSERT_GE(reinterpret_cast<std::uintptr_t>(sorted[i]) - reinterpret_cast<std::uintptr_t>(sorted[i - 1]), sizeof(Task))
          << "two live nodes overlap";
    }
  }
  for (Task* t : nodes) {
    t->payload[kPayloadBytes - 1] = std::byte{1};  // every node is writable to its last byte
    free_task(t);
  }
}

// Allocates `freed` nodes here and frees them on a thread that then exits;
// returns how many of them a new thread gets back among its first `taken`
// allocations.
int reused_after_an_exit(int freed, int taken) {
  std::vector<Task*> nodes;
  for (int i = 0; i < freed; ++i) nodes.push_back(allocate_task());
  std::thread([&] {
    for (Task* t : nodes) free_task(t);
  }).join();
  const std::set<Task*> given_back(nodes.begin(), nodes.end());
  int reused = 0;
  std::thread([&] {
    std::vector<Task*> again;
    for (int i = 0; i < taken; ++i) {
      again.push_back(allocate_task());
      reused += given_back.count(again.back()) ? 1 : 0;
    }
    for (Task* t : again) free_task(t);
  }).join();
  return reused;
}

TEST(TaskPool, NodesFreedOnAnotherThreadAreReused) {
  EXPECT_GT(reused_after_an_exit(2000, 2000), 0) << "flushed nodes never came back";
}

TEST(TaskPool, NodesCachedByAThreadThatOnlyFreesComeBackAtItsExit) {
  // A thread that never allocates (one that only drops handles) still gives
  // its cache back when it exits: a full batch of it is the first thing a new
  // thread's refill takes.
  EXPECT_EQ(reused_after_an_exit(300, 256), 256)
      << "the nodes cached by a thread that only freed were lost at its exit";
}

TEST(TaskPool, PartialCacheOfAnExitedThreadIsReused) {
  // Fewer nodes than one batch: the exit hook still gives every one of them
  // back, and a new thread's first refill takes the most recently returned.
  EXPECT_EQ(reused_after_an_exit(10, 256), 10) << "a node freed by an exited thread was lost";
}

TEST(TaskPool, NodesPassedBetweenThreadsAreNeverLiveTwice) {
  // Producers allocate, consumers free, as an outside submitter and the
  // workers do. Every live node is in `live` (a node's own bytes cannot say:
  // a fresh slab's are indeterminate), entered after its allocation and left
  // before its free: a node handed out while still live fails the insert.
  constexpr int kThreads = 4;
  constexpr int kPerThread = 40000;
  std::mutex mu;
  std::set<Task*> live;       // mu
  std::vector<Task*> handed;  // mu: allocated by one thread, freed by whichever comes next
  int twice = 0;              // mu
  std::vector<std::thread> threads;
  for (int p = 0; p < kThreads; ++p) {
    threads.emplace_back([&, p] {
      for (int i = 0; i < kPerThread; ++i) {
        Task* t = allocate_task();
        std::vector<Task*> to_free;
        {
          std::lock_guard lock(mu);
          if (!live.insert(t).second) ++twice;
          handed.push_back(t);
          if ((i + p) % 3 == 0) {  // free the others' nodes, in runs
            to_free.swap(handed);
            for (Task* n : to_free) live.erase(n);
          }
        }
        for (Task* n : to_free) free_task(n);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (Task* n : handed) free_task(n);
  EXPECT_EQ(twice, 0) << "a node was handed out while still live";
}

TEST(TaskPool, PayloadHelpersBoxLargeCallables) {
  struct Big {
    char bytes[kPayloadBytes + 1];
  };
  static_assert(!kFitsInline<Big>);
  static_assert(kFitsInline<int>);
  Task* t = allocate_task();
  emplace_payload<Big>(t);
  payload_as<Big>(t).bytes[kPayloadBytes] = 'x';
  EXPECT_EQ(payload_as<Big>(t).bytes[kPayloadBytes], 'x');
  destroy_payload<Big>(t);
  free_task(t);
}

}  // namespace
}  // namespace ordo::detail
