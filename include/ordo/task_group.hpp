// ordo::TaskGroup — fork/join: spawn children, then wait for all of them.
//
// Thread-safety: a group belongs to the thread that created it (its owner).
// spawn() and wait() must be called from the owner; the children run anywhere.
// A child that wants its own children creates its own group (nested groups are
// cheap: a group is a few words on the stack and needs no allocation).
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>

#include "ordo/detail/task.hpp"
#include "ordo/detail/thread_context.hpp"
#include "ordo/errors.hpp"
#include "ordo/options.hpp"
#include "ordo/scheduler.hpp"

namespace ordo {

namespace detail {

// Counting protocol (src/core/task_group.cpp has the argument):
//  - the owner counts its spawns minus the children it completed itself in
//    `local_pending`, a plain field: the common fork/join path needs no atomic;
//  - any other thread that completes a child adds 1 to `remote_done`;
//  - before sleeping, the owner "publishes": it subtracts local_pending from
//    remote_done (mod 2^64), so remote_done becomes minus the number of children
//    still out and the child that brings it to zero knows it is the last and
//    wakes the owner's parker, read before its own decrement.
struct GroupState {
  explicit GroupState(SchedulerCore& c);

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
// Owner only. Helping wait until every child finished; then resets the group
// for reuse and rethrows the first child exception (or TaskCancelled).
void group_wait(GroupState& g);
// Like group_wait without rethrowing; used by the destructor.
void group_wait_quietly(GroupState& g) noexcept;
void record_group_error(GroupState& g, std::exception_ptr e) noexcept;
[[noreturn]] void throw_not_owner();

template <class F>
bool exec_group_task(Task* t, ExecMode mode) noexcept {
  if (mode == ExecMode::run) {
    try {
      std::invoke(payload_as<F>(t));
    } catch (...) {
      record_group_error(*t->group, std::current_exception());
    }
  } else {
    t->group->cancelled.store(true, std::memory_order_relaxed);  // read after group_wait's acquire
  }
  destroy_payload<F>(t);
  return mode == ExecMode::run;
}

}  // namespace detail

class TaskGroup {
 public:
  // Any thread; the calling thread becomes the owner.
  explicit TaskGroup(Scheduler& scheduler) : state_(detail::Access::core(scheduler)) {}
  // Waits for children still running (helping) and drops any unobserved error.
  // Never throws.
  ~TaskGroup() {
    // After a wait() both counters are zero and there is nothing to do.
    if (state_.local_pending != 0 || state_.remote_done.load(std::memory_order_acquire) != 0 ||
        state_.failed.load(std::memory_order_relaxed) || state_.cancelled.load(std::memory_order_relaxed)) {
      detail::group_wait_quietly(state_);
    }
  }

  TaskGroup(const TaskGroup&) = delete;
  TaskGroup& operator=(const TaskGroup&) = delete;

  // Owner only. Runs fn() as a child. Priority as in Scheduler::submit: unset
  // means the running task's priority (or normal outside the pool). There is
  // no `after` or `needs` (SpawnOptions): a child is joined by wait(), not by
  // dependencies, and holds no resources (submit() a task that needs them,
  // and wait for its handle inside the child).
  // Throws SchedulerStopped for a spawn from outside the pool after shutdown.
  template <class F>
  void spawn(F&& fn, SpawnOptions options = {}) {
    using Fn = std::decay_t<F>;
    if (detail::tls_context.parker != state_.owner_parker) detail::throw_not_owner();
    detail::Task* t = detail::prepare_task(*state_.core, options.priority);
    t->exec = &detail::exec_group_task<Fn>;
    t->group = &state_;
    t->kind = detail::TaskKind::group;
    try {
      detail::emplace_payload<Fn>(t, std::forward<F>(fn));
    } catch (...) {
      detail::free_task(t);
      throw;
    }
    if (!detail::group_spawn(state_, t)) {
      detail::discard_unqueued<Fn>(t);
      throw SchedulerStopped{};
    }
  }

  // Owner only. Returns when every child spawned so far has finished; rethrows
  // the first exception a child threw, or TaskCancelled if a child was
  // cancelled by shutdown(cancel). The group can be reused afterwards.
  void wait() { detail::group_wait(state_); }

 private:
  detail::GroupState state_;
};

}  // namespace ordo
