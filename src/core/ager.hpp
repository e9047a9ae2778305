// Ager: promotes tasks that waited past their level's age bound one level up
// (Policy::strict with SchedulerOptions::age_bounds).
//
// Thread-safety: track() from any thread; run() on the ager's own thread;
// stop() once, from the thread that stops the scheduler, after the workers
// have exited.
// Invariants: each tracked task holds one reference (taken by track()) until
// the ager drops it; each level's list is in deadline order, because every
// task of a level gets the same bound and is tracked when it is queued. The
// thread sleeps while no task is tracked: an idle scheduler costs no CPU.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "ordo/detail/task.hpp"
#include "util/clock.hpp"

namespace ordo::detail {

class Ager {
 public:
  // promote(t, from_level) moves t one level up if it is still queued at
  // from_level; it returns true when the task moved.
  Ager(std::vector<std::int64_t> bounds_ns, std::function<bool(Task*, unsigned)> promote);
  ~Ager();

  bool ages(unsigned level) const noexcept { return level < bounds_.size() && bounds_[level] > 0; }
  // Takes a reference on t and remembers it for its current level.
  void track(Task* t, unsigned level, std::int64_t now);
  void stop();

 private:
  struct Entry {
    Task* task;
    std::int64_t deadline_ns;
  };
  void run();

  const std::vector<std::int64_t> bounds_;
  const std::function<bool(Task*, unsigned)> promote_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::vector<std::deque<Entry>> lists_;  // per level; mu_
  bool stopping_ = false;                 // mu_
  std::thread thread_;
};

}  // namespace ordo::detail
