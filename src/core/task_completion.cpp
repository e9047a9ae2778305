// What happens after a task's payload ran or was cancelled, and how a Handle
// waits for that.
#include <string>

#include "ordo/detail/dependency.hpp"
#include "ordo/handle.hpp"
#include "core/scheduler_core.hpp"
#include "core/task_pool.hpp"

namespace ordo::detail {

void group_complete(GroupState& g) noexcept;  // task_group.cpp

void SchedulerCore::finish(Task* t, bool ran) noexcept {
  switch (t->kind) {
    case TaskKind::detached:
      if (NeedList* needs = t->needs; needs != nullptr) [[unlikely]] {
        // relaxed: as for a handle task below.
        if (needs->held.load(std::memory_order_relaxed)) resources_.release(*needs, releasing_worker());
        pool::destroy(needs);
        t->needs = nullptr;  // a stale entry of a movable task may still name the node
      }
      if (t->movable) {
        release_task(t);  // stale entries or the ager may still hold references
      } else {
        pool::free(t);
      }
      return;
    case TaskKind::group: {
      GroupState* g = t->group;  // read first: the owner may leave as soon as it sees the count
      if (t->movable) {
        release_task(t);
      } else {
        pool::free(t);
      }
      group_complete(*g);
      return;
    }
    case TaskKind::handle: {
      // relaxed: this thread ran the task, after the claim that ordered `held`.
      NeedList* needs = needs_of(t);
      if (needs != nullptr && needs->held.load(std::memory_order_relaxed)) {
        resources_.release(*needs, releasing_worker());  // every exit path comes here: return, exception, cancel
      }
      // acq_rel: release publishes the outcome to the Handle's acquire loads;
      // acquire pairs with the waiter's fetch_or so its Parker* is visible.
      const std::uint32_t before = t->state.exchange(ran ? kDone : kCancelled, std::memory_order_acq_rel);
      release_dependents(t);
      if (before & kWaiterBit) t->waiter.load(std::memory_order_relaxed)->unpark();
      release_task(t);
      return;
    }
  }
}

int SchedulerCore::releasing_worker() const noexcept {
  return tls_context.core == this ? static_cast<int>(tls_context.worker->index) : ResourceManager::kNoWorker;
}

void SchedulerCore::submit_or_cancel(Task* t) noexcept {
  bool queued = false;
  try {
    queued = submit(t);
  } catch (...) {  // the injection queue could not allocate: treat like a refusal
  }
  if (!queued) complete_cancelled(t);
}

// Completes a handle task that will not run; the caller owns one reference
// for it (a queue entry's, or its own), which this consumes.
void SchedulerCore::complete_cancelled(Task* t) noexcept {
  std::uint32_t s = t->state.load(std::memory_order_acquire);
  for (;;) {
    if ((s & kStateMask) != kQueued) {  // another entry, or cancel(), got there first
      release_task(t);
      return;
    }
    // acquire: pairs with move_task()'s release CAS, like run_task()'s claim.
    if (t->state.compare_exchange_weak(s, (s & ~kStateMask) | kRunning, std::memory_order_acquire)) break;
  }
  finish(t, t->exec(t, ExecMode::cancel));
}

// Iterative: dropping a task may drop the last reference on its predecessors,
// and theirs, down a chain of any length, without recursion.
void release_task(Task* t) noexcept {
  PredList* lists = nullptr;  // predecessor lists whose entries still need a release
  for (;;) {
    // acq_rel: the last owner must see every write the other owners made to
    // the node (the outcome, the waiter) before it destroys it.
    if (t->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      PredList* preds = nullptr;
      if (t->kind == TaskKind::handle) {
        if ((t->state.load(std::memory_order_relaxed) & kStateMask) >= kDone) t->exec(t, ExecMode::drop_outcome);
        preds = t->preds;
      }
      free_task(t);
      if (preds != nullptr) {
        preds->next_release = lists;
        lists = preds;
      }
    }
    t = nullptr;
    while (lists != nullptr && t == nullptr) {
      if (lists->cursor < lists->count) {
        t = lists->items[lists->cursor++];
      } else {
        PredList* done = lists;
        lists = lists->next_release;
        done->count = 0;  // every entry already released
        PredList::destroy(done);
      }
    }
    if (t == nullptr) return;
  }
}

namespace {

// A finished task is never touched beyond its node: its Handle may outlive
// the scheduler (whose destruction finishes every task it accepted).
bool finished(const Task* t) noexcept {
  // acquire: pairs with finish()'s exchange.
  return (t->state.load(std::memory_order_acquire) & kStateMask) >= kDone;
}

}  // namespace

void throw_empty_handle(const char* call) {
  throw InvalidArgument(std::string("ordo: Handle::") + call +
                        " on an empty handle (default-constructed, moved from, or get() already called)");
}

bool cancel_task(Task* t) {
  if (t == nullptr) throw_empty_handle("cancel()");
  if (finished(t)) return false;
  t->refs.fetch_add(1, std::memory_order_relaxed);  // ours, consumed by complete_cancelled()
  if ((t->state.load(std::memory_order_acquire) & kStateMask) != kQueued) {
    // Claimed: running, finished — or parked on resource groups, where it
    // still waits and can be taken off the lists and cancelled.
    const bool parked = needs_of(t) != nullptr && t->core->resources().unpark_for_cancel(t);
    release_task(t);  // ours, or (parked) the wait list's: ours goes to finish()
    if (!parked) return false;
    t->core->finish(t, t->exec(t, ExecMode::cancel));
    return true;
  }
  const bool claimed_by_us = [&] {
    std::uint32_t s = t->state.load(std::memory_order_acquire);
    while ((s & kStateMask) == kQueued) {
      // acquire: pairs with move_task()'s release CAS; the claim makes every queue entry stale.
      if (t->state.compare_exchange_weak(s, (s & ~kStateMask) | kRunning, std::memory_order_acquire)) return true;
    }
    return false;
  }();
  if (!claimed_by_us) {
    release_task(t);
    return false;
  }
  // Any queue entry (now, or later when its predecessors finish) is stale.
  t->core->finish(t, t->exec(t, ExecMode::cancel));
  return true;
}

bool reprioritise(Task* t, unsigned level) {
  if (t == nullptr) throw_empty_handle("set_priority()");
  if (finished(t)) return false;
  SchedulerCore& core = *t->core;
  if (level >= core.level_count()) {
    throw InvalidArgument("ordo: priority level " + std::to_string(level) + " is beyond this scheduler's " +
                          std::to_string(core.level_count()) + " levels");
  }
  // Still waiting for predecessors: re-levelled in place, never queued early.
  if (relevel_if_waiting(t, level)) return true;
  if (core.move_task(t, -1, level)) return true;
  // Not queued: perhaps parked on resource groups, where it still waits.
  return needs_of(t) != nullptr && core.resources().reorder_parked(t, level);
}

namespace {

template <class Until>
bool wait_for_task_impl(Task* t, Until until) {
  // Priority inheritance: a running task that waits for a lower-priority
  // queued one raises it (and what it waits for) to its own level.
  if (Task* waiting = tls_context.current; waiting != nullptr && t->kind == TaskKind::handle) {
    const unsigned mine = waiting->level.load(std::memory_order_relaxed);
    if (mine < t->level.load(std::memory_order_relaxed) && mine < t->core->level_count()) raise_priority(t, mine);
  }
  auto done = [t] { return (t->state.load(std::memory_order_acquire) & kStateMask) >= kDone; };
  auto prepare_sleep = [t] {
    t->waiter.store(this_thread_parker(), std::memory_order_relaxed);
    // release: publishes the waiter pointer to the completer's exchange.
    std::uint32_t before = t->state.fetch_or(kWaiterBit, std::memory_order_acq_rel);
    return (before & kStateMask) >= kDone;
  };
  // A timed wait that gives up leaves kWaiterBit and its parker behind: the
  // completion then unparks a thread that no longer waits, which its next
  // park() takes as a spurious wake-up. A later wait stores its own parker
  // before its fetch_or, so the completion always wakes the latest waiter.
  return SchedulerCore::wait_until(done, prepare_sleep, until);
}

}  // namespace

void wait_for_task(Task* t) {
  if (t == nullptr) throw_empty_handle("wait()");
  wait_for_task_impl(t, NoDeadline{});
}

bool wait_for_task_until(Task* t, std::int64_t deadline_ns) {
  if (t == nullptr) throw_empty_handle("wait_for()/wait_until()");
  if (deadline_ns == kNoDeadlineNs) return wait_for_task_impl(t, NoDeadline{});
  return wait_for_task_impl(t, Deadline{deadline_ns});
}

}  // namespace ordo::detail
