#include <gtest/gtest.h>

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

TEST(TaskPool, NodesFreedOnAnotherThreadAreReused) {
  std::vector<Task*> nodes;
  for (int i = 0; i < 2000; ++i) nodes.push_back(allocate_task());
  std::thread([&] {
    for (Task* t : nodes) free_task(t);
  }).join();  // the thread's cache is flushed back to the shared stash at exit
  std::set<Task*> before(nodes.begin(), nodes.end());
  std::thread([&] {
    int reused = 0;
    std::vector<Task*> again;
    for (int i = 0; i < 2000; ++i) {
      again.push_back(allocate_task());
      reused += before.count(again.back()) ? 1 : 0;
    }
    EXPECT_GT(reused, 0) << "flushed nodes never came back";
    for (Task* t : again) free_task(t);
  }).join();
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
