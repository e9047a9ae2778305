// GroupState: the counters behind a TaskGroup, and the calls its header
// templates make. Apart from task_group.hpp so that the group's exec thunk
// (ordo/detail/exec.hpp) can reach the fields it sets.
//
// Thread-safety: as documented on each field: `local_pending` and
// `published` belong to the owner, the atomics are shared with the threads
// that complete children.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>

#include "ordo/detail/task.hpp"
#include "ordo/detail/thread_context.hpp"

namespace ordo::detail {

// Counting protocol (src/core/task_group.cpp has the argument):
//  - the owner counts its spawns minus the children it completed itself in
//    `local_pending`, a plain field: the common fork/join path needs no atomic;
//  - any other thread that completes a child adds 1 to `remote_done`;
//  - before sleeping, the owner "publishes": it subtracts local_pending from
//    remote_done (mod 2^64), so remote_done becomes minus the number of children
//    still out and the child that brings it to zero knows it is the last and
//    wakes the owner's parker, read before its own decrement.
struct GroupState {
  explicit GroupState(SchedulerCore& c) : core(&c), owner_parker(this_thread_parker()) {}

  SchedulerCore* core;
  // The owning thread's parker: identifies the owner (parkers are unique among
  // live threads) and is immortal, so it is safe to unpark after the group is gone.
  Parker* owner_parker;
  std::uint64_t local_pending = 0;  // owner only
  bool published = false;           // owner only
  std::atomic<std::uint64_t> remote_done{0};
  std::atomic<bool> failed{false};     // first error wins; release pairs with wait()'s acquire
  std::atomic<bool> cancelled{false};  // some child was cancelled before it ran
  std::exception_ptr error;
};

// Owner only. Queues a prepared child and counts it. Returns false when the
// scheduler refused it (external submission after shutdown).
bool group_spawn(GroupState& g, Task* t);
// Owner only. Prepares a child node whose payload is the `size` bytes at
// `payload` (a kPlainBytes callable, run by `exec`), and queues and counts
// it: TaskGroup::spawn in one call. Throws like prepare_task; returns false,
// having freed the node, when the scheduler refused it.
bool group_spawn_bytes(GroupState& g, std::optional<Priority> priority, ExecFn exec, const void* payload,
                       std::size_t size);
// Owner only. Helping wait until every child finished; then resets the group
// for reuse and rethrows the first child exception (or TaskCancelled).
void group_wait(GroupState& g);
// Like group_wait without rethrowing; used by the destructor.
void group_wait_quietly(GroupState& g) noexcept;
void record_group_error(GroupState& g, std::exception_ptr e) noexcept;
struct Worker;
// The worker's thread: adds the group children it finished and held back
// (see Worker::counted_group) to their group's count.
void publish_group_children(Worker& w) noexcept;
[[noreturn]] void throw_not_owner();

}  // namespace ordo::detail
