// ordo-demo's durable story (see demo_durable.cpp).
#pragma once

#include <string>

namespace demo {

struct DurableStoryOptions {
  std::string journal_dir;  // empty: a scratch journal, and the crash and resume both happen in this run
  int crash_after = 0;      // kill -9 this process after that many job effects (0: never, with a journal)
  int jobs = 100;
};

// Prints the story; returns the process exit code.
int durable_story(const DurableStoryOptions& options);

}  // namespace demo
