// Exceptions thrown by ordo. Every error names the problem in its message.
#pragma once

#include <stdexcept>
#include <string>

namespace ordo {

// Base of everything ordo throws on its own account (a task's own exceptions
// are rethrown unchanged).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Options or arguments that cannot be honoured (zero levels, a priority beyond
// the configured levels, ...). Thrown at the call, before anything is accepted.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// A dependency graph that cannot run: a cycle (named in the message, e.g.
// "extract -> transform -> extract"), an edge to an unknown node, a duplicate
// node name. Thrown when the graph is declared or validated, before any run.
class InvalidGraph : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

// The task was cancelled before it started: by Scheduler::shutdown(cancel) or,
// later, by cancellation of the task or of something it depends on.
class TaskCancelled : public Error {
 public:
  TaskCancelled() : Error("ordo: task was cancelled before it started") {}
  using Error::Error;
};

// A submission from outside the pool reached a scheduler that is shutting down
// or shut down. The submission was not accepted; nothing was queued.
class SchedulerStopped : public Error {
 public:
  SchedulerStopped() : Error("ordo: scheduler is shutting down and accepts no new external submissions") {}
};

// A durable store failed to do what was asked: the database could not be
// reached (after retrying), a statement failed, the schema is newer than this
// ordo. The message carries the server's own words. Nothing the call was to
// accept was acknowledged.
class StoreError : public Error {
 public:
  using Error::Error;
};

// PostgreSQL store: this attempt no longer holds its task. Its lease ran out
// (the process was paused, or cut off from the database) and the task went
// back to the queue, perhaps to another process; the fence (the attempt
// number) rejected this attempt's checkpoint. Let it propagate: the attempt's
// outcome is not recorded, the task's current holder decides.
class LeaseLost : public Error {
 public:
  using Error::Error;
};

}  // namespace ordo
