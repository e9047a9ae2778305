// The task node: an intrusive, pooled, fixed-size block that carries a
// type-erased callable and, for tasks with a handle, their outcome.
//
// Thread-safety: a node is owned by exactly one party at a time (its submitter,
// then the queue it sits in, then the worker running it), except for `state`,
// `refs` and `waiter`, which a Handle may touch concurrently with the worker.
// Invariant: a node is returned to the pool exactly once, when `refs` reaches
// zero (handle tasks) or right after it ran (group and detached tasks).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>

#include "ordo/priority.hpp"

namespace ordo::detail {

class Parker;
class SchedulerCore;
struct GroupState;
struct NeedList;
struct PredList;
struct SuccNode;
struct Task;

// run: run the payload. cancel: destroy it unrun and store TaskCancelled (or,
// for a dependent task, its predecessor's error). drop_outcome: a finished
// handle task's last reference is gone; destroy the stored outcome.
enum class ExecMode : std::uint8_t { run, cancel, drop_outcome };

// What happens once the payload has run or been cancelled.
enum class TaskKind : std::uint8_t {
  detached,  // nobody observes the result: free the node at once
  group,     // counts towards a TaskGroup; the group records the first error
  handle,    // a Handle observes `state` and reads the outcome from the payload
};

// Life of a task as a Handle sees it. Values below kWaiterBit; the bit marks
// that a waiter stored its Parker in Task::waiter and must be woken.
enum TaskState : std::uint32_t {
  kQueued = 0,
  kRunning = 1,
  kDone = 2,       // the outcome (value or exception) is in the payload
  kCancelled = 3,  // the outcome holds TaskCancelled
};
inline constexpr std::uint32_t kStateMask = 0xff;
inline constexpr std::uint32_t kWaiterBit = 0x100;
// Bits 16..31 count moves (set_priority), so that a move and a claim of a
// stale entry cannot both succeed on the same observed word.
inline constexpr std::uint32_t kMoveUnit = 0x10000;

inline constexpr std::size_t kTaskNodeBytes = 128;
inline constexpr std::size_t kPayloadAlign = 16;

struct alignas(64) Task {
  // Runs (or, in cancel mode, destroys without running) the payload and stores
  // whatever the task's kind needs. Returns false when the task ends up
  // cancelled (its handle then reports TaskCancelled or the error that
  // cancelled it). Never throws.
  bool (*exec)(Task*, ExecMode) noexcept;
  union {
    GroupState* group;  // TaskKind::group
    PredList* preds;    // TaskKind::handle: the tasks it depends on, or null
    NeedList* needs;    // TaskKind::detached: what it needs of resource groups (post() with needs), or null
  };
  SuccNode* successors;  // handle tasks: dependents (atomic_ref); kSuccessorsClosed once finished
  SchedulerCore* core;  // movable tasks: the scheduler whose queues hold them
  std::atomic<Parker*> waiter;
  // Steady-clock nanoseconds when queued, or 0 when this task is not sampled
  // for wait statistics and its level has no age bound. Written before the
  // task is published to a queue, read by whoever takes it.
  std::int64_t enqueued_ns;
  std::atomic<std::uint32_t> state;
  // Handle tasks: one per holder (the handle) plus one per queue entry.
  std::atomic<std::uint32_t> refs;
  // Current level. Movable tasks may change it while queued (set_priority,
  // ageing); an entry found in a queue of another level is stale.
  std::atomic<std::uint8_t> level;
  TaskKind kind;
  // Movable tasks may have several queue entries; whoever takes one must win
  // the CAS kQueued -> kRunning (see SchedulerCore::run_task).
  bool movable;
  // Handle tasks: the stored outcome holds an error. Written with the outcome
  // (before finish() publishes the state), read only after a final state is
  // seen with acquire: lets `after` tell a failed predecessor of any type.
  bool failed;
  // Handle tasks: predecessors not yet finished, plus one while the task is
  // being set up; the decrement that reaches zero queues the task.
  std::atomic<std::int32_t> deps;
  alignas(kPayloadAlign) std::byte payload[kTaskNodeBytes - 64];
};
static_assert(sizeof(Task) == kTaskNodeBytes, "task node must stay two cache lines");
static_assert(offsetof(Task, payload) == 64, "payload offset is part of the size budget");

inline constexpr std::size_t kPayloadBytes = sizeof(Task::payload);

// A payload type lives inside the node when it fits; otherwise the node holds
// a pointer to a heap copy (one allocation, only for large captures).
template <class X>
inline constexpr bool kFitsInline = sizeof(X) <= kPayloadBytes && alignof(X) <= kPayloadAlign &&
                                    std::is_nothrow_move_constructible_v<X>;

// A payload that is only bytes: it lives inside the node, a copy of its
// bytes is a copy of it, and destroying it does nothing. TaskGroup::spawn
// hands such a callable's bytes to one out-of-line call that prepares,
// fills and queues the node (group_spawn_bytes).
template <class X>
inline constexpr bool kPlainBytes =
    kFitsInline<X> && std::is_trivially_copyable_v<X> && std::is_trivially_destructible_v<X>;

template <class X, class... Args>
void emplace_payload(Task* t, Args&&... args) {
  if constexpr (kFitsInline<X>) {
    ::new (static_cast<void*>(t->payload)) X(std::forward<Args>(args)...);
  } else {
    ::new (static_cast<void*>(t->payload)) X*(new X(std::forward<Args>(args)...));
  }
}

template <class X>
X& payload_as(Task* t) noexcept {
  if constexpr (kFitsInline<X>) {
    return *std::launder(reinterpret_cast<X*>(t->payload));
  } else {
    return **std::launder(reinterpret_cast<X**>(t->payload));
  }
}

template <class X>
void destroy_payload(Task* t) noexcept {
  if constexpr (kFitsInline<X>) {
    std::launder(reinterpret_cast<X*>(t->payload))->~X();
  } else {
    delete *std::launder(reinterpret_cast<X**>(t->payload));
  }
}

// Marks a finished task's successor list: dependents added later are
// released at once.
inline SuccNode* const kSuccessorsClosed = reinterpret_cast<SuccNode*>(std::uintptr_t{1});

using ExecFn = bool (*)(Task*, ExecMode) noexcept;

// The level a submission runs at: `priority` validated (InvalidArgument if
// beyond the configured levels), or, unset, the running task's level when
// called from inside a task of `core`, else the default (normal).
std::uint8_t resolve_level(SchedulerCore& core, std::optional<Priority> priority);

// How a task node is initialised (the body, prepare_node, is in
// src/core/task_prepare.hpp, inlined into ordo's own spawn paths): takes a
// node from the calling thread's pool and sets every field its kind uses —
// exec, kind, level (as resolve_level), core, movability, wait sampling; for
// a handle task also its state (queued), two references (the handle's and
// the queue entry's), no waiter, no successors, no predecessors and no
// pending count. The caller constructs the payload, and sets `group` for a
// group task; make_dependent() adds predecessor slots to a handle task.
// Throws like resolve_level.
Task* prepare_task(SchedulerCore& core, std::optional<Priority> priority, TaskKind kind, ExecFn exec);

// Queues a prepared node: onto the calling worker's own deque when called from
// a worker of `core`, else onto the injection queue of its level. Returns false,
// without queuing, when the scheduler no longer accepts external submissions;
// the caller still owns the node then.
bool submit_task(SchedulerCore& core, Task* t);

// Node allocation from the calling thread's cache (see src/core/task_pool.cpp).
// Callable from any thread; allocation never touches a lock except to move a
// batch of nodes between a thread cache and the shared stash.
Task* allocate_task();
void free_task(Task* t) noexcept;

}  // namespace ordo::detail
