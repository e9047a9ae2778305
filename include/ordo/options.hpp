// Options for a scheduler and for one submission.
#pragma once

#include <optional>
#include <string>

#include "ordo/priority.hpp"

namespace ordo {

struct SchedulerOptions {
  // Worker threads; 0 means std::thread::hardware_concurrency() (at least 1).
  unsigned workers = 0;
  // Priority levels, 1..kMaxLevels. Level 0 is served first.
  unsigned levels = 3;
  // Prefix of worker thread names (visible in top, gdb, perf); at most 11 chars kept.
  std::string name = "ordo";
};

struct SubmitOptions {
  // Unset: a task submitted from inside a running task inherits that task's
  // priority; a task submitted from any other thread runs at `normal` (or the
  // lowest level when the scheduler has fewer than two).
  std::optional<Priority> priority;
};

enum class ShutdownMode {
  drain,   // run everything already accepted (and what it spawns), then stop
  cancel,  // cancel everything not yet started; running tasks finish
};

}  // namespace ordo
