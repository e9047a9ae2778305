// ordo::Scheduler — a work-stealing thread pool with per-priority queues.
//
// Thread-safety: every member function may be called from any thread,
// including the scheduler's own workers, except the destructor and shutdown(),
// which must not be called from one of this scheduler's workers (they wait for
// the workers to finish). See docs/architecture.md for how a task flows.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "ordo/detail/task.hpp"
#include "ordo/errors.hpp"
#include "ordo/handle.hpp"
#include "ordo/options.hpp"
#include "ordo/priority.hpp"
#include "ordo/resource.hpp"
#include "ordo/stats.hpp"

namespace ordo {

namespace detail {

class SchedulerCore;

}  // namespace detail

class Scheduler {
 public:
  // Starts the workers. Throws InvalidArgument for levels outside 1..kMaxLevels.
  explicit Scheduler(SchedulerOptions options = {});
  // Drains (as shutdown(drain)) if shutdown() was not called. Never throws.
  ~Scheduler();

  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Any thread. Runs fn() on a worker and returns a handle to its result. From
  // inside a task the new task goes to the calling worker's own deque (no
  // contention); from elsewhere to the injection queue of its level.
  // Throws InvalidArgument for a priority beyond the configured levels and
  // SchedulerStopped for an external submission after shutdown() began.
  template <class F>
  [[nodiscard("use post() to submit without a handle")]] auto submit(F&& fn, SubmitOptions options = {})
      -> Handle<std::invoke_result_t<std::decay_t<F>&>> {
    using Fn = std::decay_t<F>;
    using R = std::invoke_result_t<Fn&>;
    if (!options.after.empty() || !options.needs.empty()) {
      return submit_dependent<Fn, R>(std::forward<F>(fn), std::move(options));
    }
    detail::Task* t =
        detail::prepare_task(*core_, options.priority, detail::TaskKind::handle, &detail::exec_handle_task<Fn, R>);
    construct_or_free<Fn>(t, std::forward<F>(fn));
    if (!detail::submit_task(*core_, t)) {
      detail::discard_unqueued<Fn>(t);
      throw SchedulerStopped{};
    }
    return detail::Access::adopt<R>(t);
  }

  // Any thread. Like submit(), without a handle: the cheapest way to run a task
  // whose result nobody waits for. An exception it throws is dropped.
  template <class F>
  void post(F&& fn, SubmitOptions options = {}) {
    using Fn = std::decay_t<F>;
    if (!options.after.empty()) {
      (void)submit(std::forward<F>(fn), std::move(options));
      return;
    }
    if (!options.needs.empty()) {
      // Needs without predecessors: no handle's extras, no dependency links.
      detail::Task* t =
          detail::make_detached_with_needs(*core_, options.priority, options.needs, &detail::exec_detached_task<Fn>);
      try {
        detail::emplace_payload<Fn>(t, std::forward<F>(fn));
      } catch (...) {
        detail::discard_detached_with_needs(t);
        throw;
      }
      if (!detail::submit_task(*core_, t)) {
        detail::destroy_payload<Fn>(t);
        detail::discard_detached_with_needs(t);
        throw SchedulerStopped{};
      }
      return;
    }
    detail::Task* t =
        detail::prepare_task(*core_, options.priority, detail::TaskKind::detached, &detail::exec_detached_task<Fn>);
    construct_or_free<Fn>(t, std::forward<F>(fn));
    if (!detail::submit_task(*core_, t)) {
      detail::discard_unqueued<Fn>(t);
      throw SchedulerStopped{};
    }
  }

  // Any thread except this scheduler's workers. Stops accepting external
  // submissions, then either runs everything accepted (drain; tasks may still
  // spawn children while draining) or cancels every task not yet started
  // (cancel; their handles report TaskCancelled), and joins the workers.
  // Idempotent: later calls return at once.
  void shutdown(ShutdownMode mode = ShutdownMode::drain);

  unsigned worker_count() const noexcept;
  unsigned level_count() const noexcept;
  // Any thread. Creates a resource group: a counting semaphore of `limit`
  // permits that tasks name in SubmitOptions::needs. Throws InvalidArgument
  // for a limit of 0 or a name already used by this scheduler.
  ResourceGroup resource_group(std::string name, std::uint64_t limit);
  // Any thread. Creates a rate group: a token bucket giving `permits` per
  // `interval`, at most `burst` at once (0: burst = permits). A task that
  // needs it waits, parked on a timer, until its tokens are due; tokens are
  // consumed, not given back. Throws InvalidArgument for 0 permits, a
  // non-positive interval or a duplicate name.
  ResourceGroup rate_group(std::string name, std::uint64_t permits, std::chrono::nanoseconds interval,
                           std::uint64_t burst = 0);
  // Any thread. The group (either kind) created under `name`, or an empty
  // ResourceGroup (one whose valid() is false) if there is none.
  ResourceGroup find_resource_group(std::string_view name) const;

  // Any thread. Dedicates `workers` more workers to `level` and above: they
  // never start a task of a lower level (a running one finishes). Takes them
  // from the highest-numbered unreserved workers; reserve(level, 0) releases
  // every reservation at `level`. Throws InvalidArgument if it would leave no
  // unreserved worker or names a level beyond level_count().
  void reserve(Priority level, unsigned workers);

  // True when the calling thread is one of this scheduler's workers.
  bool is_worker_thread() const noexcept;
  // The calling worker's index in 0..worker_count()-1, or -1 when the calling
  // thread is not one of this scheduler's workers. Reserved workers are the
  // highest indices.
  int worker_index() const noexcept;
  // Any thread; never blocks the workers. Cost: a pass over every worker's
  // counters and histograms (tens of microseconds), so poll, don't spin on it.
  SchedulerStats stats() const;

  // Tracing (see docs/observability.md). Any thread. start_tracing() clears
  // an earlier trace and records, per worker, each task's begin and end
  // (its trace_label(), level and start-wait) and each park on resources,
  // keeping at most `events_per_worker` per worker (the rest are counted
  // as dropped). While tracing is off a task pays one predictable branch.
  // write_trace() writes Chrome trace-event JSON (Perfetto, chrome://tracing)
  // of what was recorded so far, also while tracing, and returns the number
  // of task spans written. Shutdown does not stop or clear a trace.
  void start_tracing(std::size_t events_per_worker = std::size_t{1} << 20);
  void stop_tracing() noexcept;
  bool tracing() const noexcept;
  std::size_t write_trace(std::ostream& out) const;
  std::uint64_t trace_events_dropped() const;


 private:
  friend struct detail::Access;

  // submit() with `after` or `needs`: queued when its predecessors finished
  // (or cancelled with them); takes its resources when a worker runs it.
  template <class Fn, class R, class F>
  Handle<R> submit_dependent(F&& fn, SubmitOptions options) {
    detail::throw_if_stopped(*core_);
    for (const TaskRef& pred : options.after)
      if (detail::Access::node(pred) == nullptr) throw InvalidArgument("ordo: SubmitOptions::after names an empty TaskRef");
    detail::Task* t = detail::make_dependent(*core_, options.priority, static_cast<std::uint32_t>(options.after.size()),
                                             &detail::exec_after<Fn, R>);
    try {
      detail::attach_needs(t, options.needs);
      detail::emplace_payload<Fn>(t, std::forward<F>(fn));
    } catch (...) {
      detail::discard_dependent(t);
      throw;
    }
    for (std::size_t i = 0; i < options.after.size(); ++i) t->preds->items[i] = detail::Access::release(options.after[i]);
    detail::link_and_arm(t, detail::SuccMode::all);
    return detail::Access::adopt<R>(t);
  }

  template <class Fn, class F>
  static void construct_or_free(detail::Task* t, F&& fn) {
    try {
      detail::emplace_payload<Fn>(t, std::forward<F>(fn));
    } catch (...) {
      detail::free_task(t);
      throw;
    }
  }

  std::unique_ptr<detail::SchedulerCore> core_;
};

namespace detail {
inline SchedulerCore& Access::core(Scheduler& scheduler) noexcept { return *scheduler.core_; }
}  // namespace detail

}  // namespace ordo
