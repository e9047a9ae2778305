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
#include <memory>
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
    if constexpr (detail::kPlainBytes<Fn>) {
      // The common lambda (captures by reference or of plain values): one call.
      const Fn callable(std::forward<F>(fn));
      if (!detail::group_spawn_bytes(state_, options.priority, &detail::exec_group_task<Fn>,
                                     std::addressof(callable), sizeof(Fn))) {
        throw SchedulerStopped{};
      }
    } else {
      detail::Task* t = detail::prepare_task(*state_.core, options.priority, detail::TaskKind::group,
                                             &detail::exec_group_task<Fn>);
      t->group = &state_;
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
  }

  // Owner only. Returns when every child spawned so far has finished; rethrows
  // the first exception a child threw, or TaskCancelled if a child was
  // cancelled by shutdown(cancel). The group can be reused afterwards.
  void wait() { detail::group_wait(state_); }

 private:
  detail::GroupState state_;
};

}  // namespace ordo
