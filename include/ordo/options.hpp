// Options for a scheduler and for one submission.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "ordo/errors.hpp"
#include "ordo/priority.hpp"
#include "ordo/resource.hpp"
#include "ordo/task_ref.hpp"

namespace ordo {

// How workers choose between levels. See docs/priorities.md.
enum class Policy {
  // Always the highest non-empty level visible anywhere in the pool.
  strict,
  // Levels served in proportion to `weights` while several have work
  // (smooth weighted round-robin: deterministic, no random shuffles); a level
  // with no work gives its turn to the others.
  weighted,
};

// k workers that never run tasks below `level`.
struct Reservation {
  Priority level;
  unsigned workers;
};

struct SchedulerOptions {
  // Worker threads; 0 means std::thread::hardware_concurrency() (at least 1).
  unsigned workers = 0;
  // Priority levels, 1..kMaxLevels. Level 0 is served first.
  unsigned levels = 3;
  // Prefix of worker thread names (visible in top, gdb, perf); at most 11 chars kept.
  std::string name = "ordo";
  Policy policy = Policy::strict;
  // Policy::weighted only: one weight (>= 1) per level. Empty means 2^(levels-1-l)
  // for level l: each level served twice as often as the one below it.
  std::vector<unsigned> weights{};
  // Policy::strict only: one bound per level, or empty for no ageing. A task
  // that has waited at level l longer than age_bounds[l] (when non-zero) is
  // moved to level l-1, where it waits under that level's bound in turn, so
  // nothing starves forever. age_bounds[0] must be zero. See docs/priorities.md.
  std::vector<std::chrono::nanoseconds> age_bounds{};
  // Workers dedicated to high bands (see Scheduler::reserve). At least one
  // worker must stay unreserved, so that every level is served.
  std::vector<Reservation> reserved{};
};

// Options of Scheduler::submit and Scheduler::post; each field is honoured by
// both (post() with `after` runs like submit() without a handle).
struct SubmitOptions {
  // Unset: a task submitted from inside a running task inherits that task's
  // priority; a task submitted from any other thread runs at `normal` (or the
  // lowest level when the scheduler has fewer than two).
  std::optional<Priority> priority{};
  // Start only after all of these finished. If one of them failed or was
  // cancelled, this task is cancelled (TaskCancelled, saying so); the
  // original error stays with that task's own handle. Lower-priority
  // predecessors are raised to this task's priority.
  std::vector<TaskRef> after{};
  // Resources held while the task runs, taken all at once when a worker is
  // about to run it (see ordo/resource.hpp). A need of 0, a need above the
  // group's limit, or a group of another scheduler is rejected with
  // InvalidArgument before anything is queued.
  Needs needs{};
};

// Options of Handle::then. No `after`: a continuation runs after the handle
// it continues; to wait for more tasks, join them first (when_all).
struct ThenOptions {
  // Unset: as SubmitOptions::priority, judged on the thread calling then().
  std::optional<Priority> priority{};
  // As SubmitOptions::needs: the continuation parks, holding no worker,
  // until its permits are free.
  Needs needs{};
};

// Options of TaskGroup::spawn. Only a priority: a child is joined by the
// group's wait(), not by dependencies, and holds no resources (submit() a
// task that needs them, and wait for its handle inside the child).
struct SpawnOptions {
  // Unset: as SubmitOptions::priority.
  std::optional<Priority> priority{};
};

enum class ShutdownMode {
  drain,   // run everything already accepted (and what it spawns), then stop
  cancel,  // cancel everything not yet started; running tasks finish
};

}  // namespace ordo
