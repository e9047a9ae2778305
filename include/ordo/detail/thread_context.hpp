// What ordo knows about the calling thread. In the public tree only so that
// header templates (TaskGroup::spawn, GroupState's constructor) can test and
// record ownership without a call.
//
// Thread-safety: thread-local; each thread sees only its own.
#pragma once

#include <cstdint>
#include <string>

#include "ordo/detail/task.hpp"

namespace ordo::detail {

class Parker;
class SchedulerCore;
struct Worker;

struct ThreadContext {
  SchedulerCore* core;  // set on a worker thread: the scheduler it works for
  Worker* worker;       // set on a worker thread
  Task* current;        // the task this thread is running, if any
  Parker* parker;       // cached Parker::current() of a worker; null elsewhere until first wait
  std::uint32_t sample_tick;  // every 64th task this thread queues is timed for wait statistics
  std::string* trace_label;   // while a traced task runs: where trace_label() writes its name
};

// Trivial and constant-initialised: reading it is a plain TLS load.
extern thread_local constinit ThreadContext tls_context;

// Looks up the calling thread's parker and caches it in tls_context.
Parker* cache_this_thread_parker() noexcept;

// The calling thread's parker (cached after the first call). Inline: every
// TaskGroup asks for it when it is made.
inline Parker* this_thread_parker() noexcept {
  if (Parker* cached = tls_context.parker) [[likely]] return cached;
  return cache_this_thread_parker();
}

}  // namespace ordo::detail
