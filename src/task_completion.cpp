// What happens after a task's payload ran or was cancelled, and how a Handle
// waits for that.
#include <string>

#include "ordo/handle.hpp"
#include "scheduler_core.hpp"

namespace ordo::detail {

void group_complete(GroupState& g) noexcept;  // task_group.cpp

void SchedulerCore::finish(Task* t, ExecMode mode) noexcept {
  switch (t->kind) {
    case TaskKind::detached:
      if (t->movable) {
        release_task(t);  // stale entries or the ager may still hold references
      } else {
        free_task(t);
      }
      return;
    case TaskKind::group: {
      GroupState* g = t->group;  // read first: the owner may leave as soon as it sees the count
      if (t->movable) {
        release_task(t);
      } else {
        free_task(t);
      }
      group_complete(*g);
      return;
    }
    case TaskKind::handle: {
      const std::uint32_t final_state = mode == ExecMode::run ? kDone : kCancelled;
      // acq_rel: release publishes the outcome to the Handle's acquire loads;
      // acquire pairs with the waiter's fetch_or so its Parker* is visible.
      std::uint32_t before = t->state.exchange(final_state, std::memory_order_acq_rel);
      if (before & kWaiterBit) t->waiter.load(std::memory_order_relaxed)->unpark();
      release_task(t);
      return;
    }
  }
}

void release_task(Task* t) noexcept {
  // acq_rel: the last owner must see every write the other owner made to the
  // node (the outcome, the waiter) before it destroys it.
  if (t->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    if (t->kind == TaskKind::handle && (t->state.load(std::memory_order_relaxed) & kStateMask) >= kDone) {
      t->drop_outcome(t);
    }
    free_task(t);
  }
}

bool reprioritise(Task* t, unsigned level) {
  if (t == nullptr) throw Error("ordo: Handle::set_priority() on an empty handle");
  SchedulerCore& core = *t->core;
  if (level >= core.level_count()) {
    throw InvalidArgument("ordo: priority level " + std::to_string(level) + " is beyond this scheduler's " +
                          std::to_string(core.level_count()) + " levels");
  }
  return core.move_task(t, -1, level);
}

void wait_for_task(Task* t) {
  auto done = [t] { return (t->state.load(std::memory_order_acquire) & kStateMask) >= kDone; };
  auto prepare_sleep = [t] {
    t->waiter.store(this_thread_parker(), std::memory_order_relaxed);
    // release: publishes the waiter pointer to the completer's exchange.
    std::uint32_t before = t->state.fetch_or(kWaiterBit, std::memory_order_acq_rel);
    return (before & kStateMask) >= kDone;
  };
  SchedulerCore::wait_until(done, prepare_sleep);
}

}  // namespace ordo::detail
