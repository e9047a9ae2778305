// TaskSink: what the resource manager asks of the scheduler whose tasks it
// parks. The resource part owns this interface so that it never includes the
// core: the core includes the resource manager and implements the sink.
//
// Thread-safety: every call may come from any thread (a releasing worker, a
// cancelling caller, the rate timer). resubmit() is called from inside a
// dispatch, with the manager's lock held: no implementation may call back
// into the manager.
#pragma once

#include "ordo/detail/task.hpp"

namespace ordo::detail {

class TaskSink {
 public:
  // Queues again a claimed task that now holds all of its permits; the
  // reference of its wait-list entry goes with it.
  virtual void resubmit(Task* t) = 0;
  // Completes a parked task that will never be granted (cancelled).
  virtual void complete_cancelled(Task* t) noexcept = 0;
  // The count of parked tasks fell to zero: a draining scheduler may finish.
  virtual void last_parked_task_left() noexcept = 0;
  // How many workers: indices 0..n-1 name them in acquire and release calls.
  virtual unsigned worker_count() const noexcept = 0;

 protected:
  ~TaskSink() = default;
};

}  // namespace ordo::detail
