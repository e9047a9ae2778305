// ordo-demo's durable story (see demo_durable.cpp).
#pragma once

#include <string>

#include "ordo/ordo.hpp"

namespace demo {

struct DurableStoryOptions {
  std::string journal_dir;  // empty: a scratch journal, and the crash and resume both happen in this run
  int crash_after = 0;      // kill -9 this process after that many job effects (0: never, with a journal)
  int jobs = 100;
  bool quiet = false;       // the crashing child of a scratch-journal story: print nothing
};

// What the story found, for the demo's summary table.
struct DurableStoryResult {
  int exit_code = 0;
  int jobs = 0, completed = 0, lost = 0, duplicated = 0;
  bool crashed = false;  // the first run died of SIGKILL as planned
  ordo::DurableStats stats;  // of the resuming run, after its drain
};

// Prints the story. `shared`: the scheduler the resuming run uses (so that
// its durable stats show in that scheduler's snapshot); null: its own.
DurableStoryResult durable_story(const DurableStoryOptions& options, ordo::Scheduler* shared = nullptr);

}  // namespace demo
