// Dependencies between handle tasks: predecessor lists, lock-free successor
// lists, and the hand-over from a finished task to the tasks that wait for it.
//
// Thread-safety: every function may be called from any thread.
// Invariants: a dependent task is queued exactly once, by whoever brings its
// `deps` count to zero (a finishing predecessor, or its creator releasing the
// setup hold). Every PredList entry and every SuccNode holds a reference on
// the task it names, so neither side can be freed while the other needs it.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "ordo/detail/task.hpp"
#include "ordo/resource.hpp"

namespace ordo::detail {

struct NeedList;

// A handle task's extras: the tasks it depends on, and what it needs of
// resource groups (ResourceManager). Allocated only for tasks that have either.
struct PredList {
  NeedList* needs;           // or null; owned
  std::uint32_t count;
  std::uint32_t cursor;      // release_task(): entries already released
  PredList* next_release;    // release_task(): lists still being released
  std::atomic<bool> fired;   // when_any: the first predecessor to finish releases the task
  bool pooled;               // lives in a pooled task node (else operator new)
  Task* items[1];            // `count` entries, allocated in place

  static PredList* make(std::uint32_t count);
  // Drops the references on every predecessor and frees the list.
  static void destroy(PredList* list) noexcept;
};

// What a task needs of resource groups, or null: a handle task carries them
// in its extras, a posted (detached) one in the node; group tasks need
// nothing. The one spelling of "does this task take permits".
inline NeedList* needs_of(const Task* t) noexcept {
  switch (t->kind) {
    case TaskKind::handle:
      return t->preds != nullptr ? t->preds->needs : nullptr;
    case TaskKind::detached:
      return t->needs;
    case TaskKind::group:
      break;
  }
  return nullptr;
}

enum class SuccMode : std::uint8_t { all, any };

// Makes `succ` wait for `pred`. The caller has counted `pred` in succ->deps
// (for SuccMode::any, the list counts once however many predecessors it has).
// If pred has already finished, succ is released at once.
void add_successor(Task* pred, Task* succ, SuccMode mode);
// Drops the setup hold on `t`'s deps; queues it when nothing else is pending.
void arm_dependent(Task* t);
// Raises `t` and, transitively, its unfinished predecessors to `level`
// (priority inheritance): queued ones are moved, waiting ones re-levelled.
void raise_priority(Task* t, unsigned level);
// Moves a dependent that still waits for predecessors to `level` without
// queuing it (raising its unfinished predecessors when `level` is higher).
// False, changing nothing, when `t` is not such a task: queued, started or done.
bool relevel_if_waiting(Task* t, unsigned level);
// Sets up a dependent handle task whose PredList is filled (each entry owning
// a reference): counts, links to every predecessor, raises lower-priority
// predecessors, then releases the setup hold (queuing it if all are done).
void link_and_arm(Task* t, SuccMode mode);
// A handle task's node (prepare_task) with `preds` empty predecessor slots
// and the setup hold counted. Throws like prepare_task.
Task* make_dependent(SchedulerCore& core, std::optional<Priority> priority, std::uint32_t preds, ExecFn exec);
// Frees a dependent whose payload could not be built (nothing was linked yet).
void discard_dependent(Task* t) noexcept;
// Validates `needs` (InvalidArgument) and attaches them to a dependent's extras.
// `check_limits` false: see ResourceManager::fill_needs.
void attach_needs(Task* t, std::span<const Need> needs, bool check_limits = true);
// A detached task's node (prepare_task) that needs `needs` (validated as
// attach_needs does). Throws like prepare_task, InvalidArgument, or
// SchedulerStopped; nothing is left allocated then.
Task* make_detached_with_needs(SchedulerCore& core, std::optional<Priority> priority, std::span<const Need> needs,
                               ExecFn exec);
// Frees a detached task's needs (not its payload) and its node: one that was
// never queued, or whose payload could not be built.
void discard_detached_with_needs(Task* t) noexcept;
// Throws SchedulerStopped if `core` no longer accepts external submissions.
void throw_if_stopped(SchedulerCore& core);
// Called by finish(): closes t's successor list and releases its dependents.
void release_dependents(Task* t) noexcept;

}  // namespace ordo::detail
