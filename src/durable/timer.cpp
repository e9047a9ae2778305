// Durable tasks: waiting for a time — a delayed task's run_at, a retry's
// backoff. One thread sleeps until the earliest due time and queues what is due.
#include <chrono>

#include "durable/runtime.hpp"

namespace ordo::detail {

void DurableRuntime::schedule_locked(JournaledTask& task, std::int64_t due_ns, bool retrying) {
  task.state = JournaledTask::State::waiting;
  task.due_ns = due_ns;
  task.retrying = retrying;
  const bool earliest = timers_.empty() || due_ns < timers_.begin()->first;
  timers_.emplace(due_ns, task.id);
  if (earliest) timer_cv_.notify_one();  // else the timer already wakes in time
}

void DurableRuntime::timer_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    if (cancelling_) return;  // set by shutdown(cancel), and by any shutdown once it is done
    if (timers_.empty()) {
      timer_cv_.wait(lock);
      continue;
    }
    const std::int64_t now = wall_now_ns();
    if (timers_.begin()->first > now) {
      timer_cv_.wait_for(lock, std::chrono::nanoseconds(timers_.begin()->first - now));
      continue;
    }
    while (!timers_.empty() && timers_.begin()->first <= now) {
      const TaskId id = timers_.begin()->second;
      timers_.erase(timers_.begin());
      auto it = tasks_.find(id);
      if (it != tasks_.end() && it->second.state == JournaledTask::State::waiting) queue_locked(it->second);
    }
    post_pending(lock);
  }
}

}  // namespace ordo::detail
