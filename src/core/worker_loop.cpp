// SchedulerCore's workers: starting them, the loop each runs (find work, run
// it, spin, park), and running one task (claiming a movable task's entry,
// acquiring its resources or parking it, timing and tracing it). run_task()
// is inlined into the loop: both stay in this file.
#include <pthread.h>

#include <string>

#include "core/scheduler_core.hpp"
#include "ordo/handle.hpp"

namespace ordo::detail {

void SchedulerCore::start() {
  // Workers count as busy until the shutdown loop sees them idle.
  // relaxed: std::thread creation below publishes it to the workers.
  busy_.store(workers_.size(), std::memory_order_relaxed);
  for (auto& w : workers_) {
    Worker* raw = w.get();
    raw->thread = std::thread([this, raw] { worker_main(*raw); });
  }
}

void SchedulerCore::worker_main(Worker& w) {
  tls_context = ThreadContext{this, &w, nullptr, nullptr, 0, nullptr};
  w.parker = this_thread_parker();
  std::string thread_name = name_.substr(0, 11) + "-" + std::to_string(w.index);
  pthread_setname_np(pthread_self(), thread_name.c_str());

  // seq_cst: pairs with stop()'s phase store when read inside park_worker().
  auto stopping = [this] { return phase_.load(std::memory_order_seq_cst) != kAccepting; };
  for (;;) {
    if (phase_.load(std::memory_order_relaxed) != kAccepting) break;
    if (Task* t = find_task(w)) {
      run_task(w, t);
      continue;
    }
    if (Task* t = spin_for_task(w, stopping)) {
      run_task(w, t);
      continue;
    }
    park_worker(w, stopping);
  }
  shutdown_loop(w);
  publish_group_children(w);
  tls_context = ThreadContext{nullptr, nullptr, nullptr, nullptr, 0, nullptr};
}

void SchedulerCore::run_task(Worker& w, Task* t) {
  // Children of the group we hold counts for may follow; anything else
  // first publishes them (see Worker::counted_group).
  if (w.counted != 0 && (t->kind != TaskKind::group || t->group != w.counted_group)) publish_group_children(w);
  if (t->movable) {
    // Claim this entry. It is stale if the task moved to another level since
    // it was queued here, or if another entry already started (or cancelled)
    // it; a stale entry only drops the reference it held.
    // acquire: pairs with set_priority's release, so a moved task's level is seen.
    std::uint32_t s = t->state.load(std::memory_order_acquire);
    for (;;) {
      if ((s & kStateMask) != kQueued || t->level.load(std::memory_order_relaxed) != w.taken_level) {
        release_task(t);
        return;
      }
      // relaxed: the node's contents were published to us by the queue
      // handoff; this CAS only decides which entry wins.
      if (t->state.compare_exchange_weak(s, (s & ~kStateMask) | kRunning, std::memory_order_relaxed)) break;
    }
  }
  const ExecMode mode = phase_.load(std::memory_order_relaxed) == kCancelling ? ExecMode::cancel : ExecMode::run;
  const unsigned level = w.taken_level;
  NeedList* needs = mode == ExecMode::run ? needs_of(t) : nullptr;
  if (needs != nullptr && !needs->held.load(std::memory_order_relaxed)) {  // relaxed: our claim ordered it
    // Parked: the task waits on its groups' lists, holding no worker; this
    // entry's reference now belongs to the wait list.
    if (!resources_.acquire_or_park(t, *needs, level, w.index)) {
      if (tracer_.enabled()) [[unlikely]] {
        const std::int64_t at = steady_now_ns();
        tracer_.record(w.index, at, at, -1, "parked (waits for its resources)", level, true);
      }
      return;
    }
  }
  Worker::PerLevel& stats = w.per_level[level];
  if (t->enqueued_ns != 0) stats.waits.record(steady_now_ns() - t->enqueued_ns);
  Task* outer = tls_context.current;
  const int outer_level = w.running_level.load(std::memory_order_relaxed);
  tls_context.current = t;
  w.running_level.store(static_cast<int>(level), std::memory_order_relaxed);
  bool ran;
  if (tracer_.enabled()) [[unlikely]] {  // the only cost of the tracer while it is off
    ran = run_traced(w, t, mode, level);
  } else {
    ran = t->exec(t, mode);
  }
  tls_context.current = outer;
  w.running_level.store(outer_level, std::memory_order_relaxed);
  stats.completed.store(stats.completed.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  finish(t, ran);
}

bool SchedulerCore::run_traced(Worker& w, Task* t, ExecMode mode, unsigned level) {
  std::string label;
  std::string* outer_label = std::exchange(tls_context.trace_label, &label);
  const std::int64_t begin = steady_now_ns();
  const bool ran = t->exec(t, mode);
  const std::int64_t end = steady_now_ns();
  tls_context.trace_label = outer_label;
  const std::int64_t wait = t->enqueued_ns != 0 ? begin - t->enqueued_ns : -1;
  tracer_.record(w.index, begin, end, wait, label, level, false);
  return ran;
}

}  // namespace ordo::detail
