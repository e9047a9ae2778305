// SchedulerCore: the workers, their deques, the injection queues, the level
// policies and the sleep/wake and shutdown protocols behind ordo::Scheduler.
//
// Thread-safety: submit paths, wait paths, reserve() and wake() may run on any
// thread concurrently; start() and stop() are called once each by the owning
// Scheduler, never from a worker.
// Invariants:
//  - a queued task has one live queue entry: in one worker's deque or one
//    injection queue (a bulk take moves tasks from the latter to the former).
//    A movable (handle) task may also have stale entries, left behind by
//    set_priority; each holds a reference and is skipped when taken;
//  - Injection::pending() >= 2 * (entries in its two queues) at all times: a
//    producer announces before it enqueues and a consumer counts it taken
//    after it dequeued, so "pending < 2" means "nothing is or will be there";
//  - a worker's deque at level l is non-empty only if the worker's bit is set
//    in advertised_[l] (set by the owner after a push, cleared by the owner
//    when it finds that deque empty): thieves find every level's work with
//    one load per level instead of a scan;
//  - once the scheduler is closed (low bit of every announced word), no new
//    external task is accepted; tasks running on workers may still queue more
//    until every worker is idle.
#pragma once

#include <atomic>
#include <concurrentqueue/concurrentqueue.h>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/chase_lev_deque.hpp"
#include "ordo/options.hpp"
#include "ordo/scheduler.hpp"
#include "ordo/priority.hpp"
#include "core/ager.hpp"
#include "util/parker.hpp"
#include "observe/tracer.hpp"
#include "resources/resource_manager.hpp"
#include "observe/wait_histogram.hpp"
#include "ordo/detail/thread_context.hpp"
#include "core/worker_set.hpp"
#include "util/clock.hpp"

namespace ordo::detail {

class SchedulerCore;

// A test-only fault point (no public option): while positive, the draining
// worker that judges whether the scheduler is done pauses this many
// microseconds between its reads of the places a task can be, widening the
// window in which another thread moves a task between them. Relaxed: a
// number on its own, publishing nothing.
inline std::atomic<int> drain_judge_pause_us{0};
// Test-only fault points of the same kind: a submission refused by shutdown
// pauses this long between announcing itself and withdrawing; a draining
// worker that found nothing to do pauses this long before it parks.
inline std::atomic<int> refused_submission_pause_us{0};
// A test-only fault point of the same kind: a submission of a task with
// needs pauses this long between its look at the needs' `held` hint and
// park_if_busy(), the window in which another entry of the same task can
// be claimed, parked and granted. It counts each pause in
// needs_submission_pauses first and, once park_if_busy() has returned, in
// needs_submission_pauses_done, so that a test knows where a submission is.
inline std::atomic<int> needs_submission_pause_us{0};
inline std::atomic<int> needs_submission_pauses{0};
inline std::atomic<int> needs_submission_pauses_done{0};
inline std::atomic<int> drain_idle_pause_us{0};
// A test-only fault point of the same kind: the draining judge that found
// tasks parked but none it could cancel pauses this long before it gives up
// its busy count to sleep until that changes.
inline std::atomic<int> drain_unsatisfiable_pause_us{0};
// A test-only fault point of the same kind: stop() pauses this long between
// its two steps, closing the injection queues and changing the phase that
// sends the workers to drain.
inline std::atomic<int> stop_step_pause_us{0};
// A test-only fault point of the same kind: the highest-numbered worker,
// granting a released permit to a task it keeps without a wake-up
// (resubmit), pauses this long between its look at the levels it serves
// and its push, and counts the pause in grant_push_pauses first.
inline std::atomic<int> grant_push_pause_us{0};
inline std::atomic<int> grant_push_pauses{0};

// The deadline of a wait: none (the untimed waits compile to the loop they
// always were, without a clock read), or a steady-clock time in nanoseconds.
struct NoDeadline {
  static constexpr bool timed = false;
  std::int64_t ns = 0;
  static constexpr bool passed() noexcept { return false; }
};
struct Deadline {
  static constexpr bool timed = true;
  std::int64_t ns;
  bool passed() const noexcept { return steady_now_ns() >= ns; }
};

struct alignas(64) Worker {
  Worker(SchedulerCore& c, unsigned i, unsigned levels);

  SchedulerCore& core;
  const unsigned index;
  Parker* parker = nullptr;        // leased by the worker thread when it starts
  // Lowest level (highest number) this worker runs; lowered by reservations.
  // relaxed: read by the worker at each search; a change takes effect at the next one.
  std::atomic<std::uint8_t> max_level{0};
  std::uint32_t local_levels = 0;  // owner only: levels whose deque may be non-empty
  std::uint32_t advertised = 0;    // owner only: levels where our bit is set in advertised_
  unsigned taken_level = 0;        // owner only: level of the entry find_task returned
  unsigned wrr_cursor = 0;         // owner only: position in the weighted schedule
  std::uint32_t fairness_tick = 0; // owner only: see take_at_level()
  std::uint64_t rng;               // owner only: victim selection
  // Owner only: children of one TaskGroup this worker finished and has not
  // yet added to the group's count (see count_group_child). Published
  // before the worker runs a task of any other kind or group, and before
  // it looks for work in vain; until then the group cannot be complete,
  // for this worker is still running one of its children or about to.
  GroupState* counted_group = nullptr;
  Parker* counted_owner = nullptr;
  std::uint64_t counted = 0;
  std::unique_ptr<ChaseLevDeque<Task*>[]> deques;  // one per level
  std::vector<moodycamel::ConsumerToken> tokens;   // one per level's injection queue
  std::thread thread;

  // Written by the owner only (relaxed load + store, no RMW); read by stats.
  std::atomic<std::uint64_t> stolen{0};
  std::atomic<std::uint64_t> idle_ns{0};  // time parked for lack of work
  std::atomic<int> running_level{-1};  // level of the innermost task running here
  struct PerLevel {
    std::atomic<std::uint64_t> completed{0};
    WaitHistogram waits;
  };
  std::unique_ptr<PerLevel[]> per_level;
};

class SchedulerCore final : public TaskSink {
 public:
  explicit SchedulerCore(const SchedulerOptions& options);
  ~SchedulerCore();

  void start();
  void stop(ShutdownMode mode);

  unsigned worker_count() const noexcept override { return static_cast<unsigned>(workers_.size()); }
  unsigned level_count() const noexcept { return levels_; }
  std::uint8_t default_level() const noexcept { return levels_ >= 2 ? 1 : 0; }

  // Queues t (its level already set). False when the scheduler refuses
  // external submissions (shut down); the caller still owns t then.
  bool submit(Task* t);
  // submit()'s own-worker branch without its general checks, for a task that
  // needs no resources and that no ager tracks (not movable): pushes t onto
  // the calling worker's deque and returns true, or returns false, doing
  // nothing, when the caller is not one of our workers or t's level is
  // reserved away from it (then call submit()). A spawn per fork/join call
  // comes here (TaskGroup::spawn).
  bool push_own(Task* t);
  // Moves a queued movable task to new_level (when expected_level >= 0, only
  // if it is still at that level): a new entry is queued and the old one will
  // be skipped. False, changing nothing, when the task is no longer queued.
  bool move_task(Task* t, int expected_level, unsigned new_level);
  void reserve(unsigned level, unsigned workers);
  // After t's payload ran (ran) or was cancelled: publish, release dependents,
  // wake a waiter, drop the executor's reference (or free, by kind).
  void finish(Task* t, bool ran) noexcept;
  // This scheduler's worker index of the calling thread, for the resource
  // manager's spare permits; ResourceManager::kNoWorker on any other thread.
  int releasing_worker() const noexcept;
  // Queues a dependent task whose last predecessor just finished; if the
  // scheduler refuses it (outside the pool, after shutdown) it completes as
  // cancelled instead.
  void submit_or_cancel(Task* t) noexcept;
  void complete_cancelled(Task* t) noexcept override;
  // Puts a claimed task back in the queues (a parked task whose resources were
  // granted); the reference of its old queue entry goes with it.
  void resubmit(Task* t) override;
  // The resource manager's parked count fell to zero (any thread).
  void last_parked_task_left() noexcept override;
  ResourceManager& resources() noexcept { return resources_; }
  bool accepting() const noexcept { return phase_.load(std::memory_order_relaxed) == kAccepting; }
  bool ages(unsigned level) const noexcept { return (aged_levels_ >> level) & 1u; }
  void fill_stats(SchedulerStats& st) const;

  // Helping wait of the calling thread until done() holds, or `until` passed;
  // returns done(). On a worker (of any scheduler) runs other tasks meanwhile
  // (a task it runs may carry it past the deadline); elsewhere spins briefly,
  // then parks. prepare_sleep() runs once, right before the first park; it
  // must arrange that whoever makes done() true unparks this thread, and
  // returns true if done() already holds. After a timed-out wait that
  // arrangement may still unpark this thread later: parkers tolerate such
  // spurious wake-ups, and every waiter re-checks its condition.
  template <class Done, class PrepareSleep, class Until = NoDeadline>
  static bool wait_until(Done&& done, PrepareSleep&& prepare_sleep, Until until = {});

  // Cumulative counters summed over workers (approximate while running).
  std::uint64_t stolen_total() const noexcept;
  // Scheduler::stats() also asks these (a DurableTasks adds its own part);
  // `owner` is the key to remove it by. Any thread.
  void add_stats_source(const void* owner, std::function<void(SchedulerStats&)> fill);
  void remove_stats_source(const void* owner) noexcept;
  Tracer& tracer() noexcept { return tracer_; }
  const std::string& name() const noexcept { return name_; }
  unsigned parked_count() const noexcept { return sleepers_.count(); }

 private:
  friend struct Worker;
  enum Phase : int { kAccepting = 0, kDraining = 1, kCancelling = 2 };

  struct alignas(64) Injection {
    moodycamel::ConcurrentQueue<Task*> queue;
    // Tasks handed their resource permits on a thread outside the pool:
    // taken before `queue`, so that a grant does not wait behind everything
    // submitted meanwhile while its permits sit idle.
    moodycamel::ConcurrentQueue<Task*> granted;
    // 2 * entries ever announced | closed bit: written by producers only.
    alignas(64) std::atomic<std::uint64_t> announced{0};
    // relaxed: a hint that `granted` may hold something; announced counts it.
    std::atomic<std::uint32_t> granted_hint{0};
    // 2 * entries taken out, written by consumers only, on a line of its
    // own: a producer's announce then does not wait for a line a consumer
    // just wrote (on a slow-interconnect day, one round trip per task) —
    // save after a consumer took a granted task and decremented
    // granted_hint beside `announced`, a rare path.
    alignas(64) std::atomic<std::uint64_t> taken{0};
    // 2 * (entries announced and not yet taken) | closed bit: never below
    // the true figure as of the second load. `taken` is read first: a
    // consumer's release increment of it comes after the announce of what
    // it took (through the queue), so the announce read next covers it and
    // the difference never wraps. With `order` weaker than seq_cst, taken is
    // still loaded with acquire for that.
    std::uint64_t pending(std::memory_order order) const noexcept {
      const std::uint64_t out = taken.load(order == std::memory_order_seq_cst ? order : std::memory_order_acquire);
      return announced.load(order) - out;
    }
  };
  static constexpr std::uint64_t kClosed = 1;

  void worker_main(Worker& w);
  void shutdown_loop(Worker& w);
  Task* find_task(Worker& w);  // null when there is none; then publishes held-back group counts
  Task* find_task_at_some_level(Worker& w);
  Task* take_at_level(Worker& w, unsigned level, bool injection_first);
  // At most `most` (<= kInjectedBulk) tasks: the first is returned, the
  // rest go to w's deque.
  static constexpr std::size_t kInjectedBulk = 32;
  Task* take_injected(Worker& w, unsigned level, std::size_t most);
  Task* steal_at_level(Worker& w, unsigned level);
  void push_local(Worker& w, Task* t, unsigned level);
  // After a push onto w's own deque: thieves may look there now.
  void mark_local(Worker& w, unsigned level);
  void inject(Task* t, unsigned level);
  // Runs the task whose entry w just took (or skips a stale entry).
  void run_task(Worker& w, Task* t);
  bool run_traced(Worker& w, Task* t, ExecMode mode, unsigned level);  // exec, timed and recorded
  // Tries to find work with bounded spinning and yielding; null if none came
  // or stop() became true.
  template <class Stop>
  Task* spin_for_task(Worker& w, Stop&& stop);
  // Parks w unless work or `extra_wake()` is visible after joining the sleep
  // set. True when a producer took w out of the set (a wake-up meant for new
  // work), false when w left it itself.
  template <class ExtraWake, class Until = NoDeadline>
  bool park_worker(Worker& w, ExtraWake&& extra_wake, Until until = {});
  // Wakes a sleeper for the highest level with visible work: hands on a
  // wake-up that the worker it reached will not use.
  void pass_wake_on() noexcept;
  bool work_visible(const Worker& w) const noexcept;
  bool injection_empty() const noexcept;
  void wake_one(unsigned level) noexcept;
  void wake_all() noexcept;
  void build_weighted_schedule(const std::vector<unsigned>& weights);
  void apply_reservations() noexcept;  // reservation_mu_ held

  unsigned levels_;
  std::uint32_t aged_levels_ = 0;  // bit l: level l has an age bound
  std::string name_;
  Policy policy_;
  std::vector<std::uint8_t> schedule_;  // weighted: the level order of one round
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<Injection[]> injection_;
  std::unique_ptr<WorkerSet[]> advertised_;  // per level
  std::unique_ptr<WorkerSet[]> eligible_;    // per level: workers that run it
  WorkerSet sleepers_;
  std::mutex reservation_mu_;
  std::vector<unsigned> reserved_per_level_;  // reservation_mu_
  std::unique_ptr<Ager> ager_;  // only with age bounds
  ResourceManager resources_{*this};
  std::atomic<std::uint64_t> promoted_{0};
  alignas(64) std::atomic<int> phase_{kAccepting};
  // Once stopping: the low 32 bits count the workers not idle; every entry
  // into busy (kBusyEntry) also adds one to the high 32 bits, so that the
  // worker that made the count 0 can tell whether anyone became busy, even
  // briefly, while it looked for the end (shutdown_loop). A submitting
  // thread that parked its task adds kTaskMovedOffWorkers (the high half
  // alone): it is not busy, but the judge may have missed the task.
  static constexpr std::uint64_t kBusyCount = 0xffff'ffffu;
  static constexpr std::uint64_t kTaskMovedOffWorkers = std::uint64_t{1} << 32;
  static constexpr std::uint64_t kBusyEntry = kTaskMovedOffWorkers + 1;
  std::atomic<std::uint64_t> busy_{0};
  std::atomic<bool> exit_{false};  // drain/cancel complete: workers return
  std::mutex stop_mu_;
  bool stopped_ = false;
  Tracer tracer_;
  mutable std::mutex stats_sources_mu_;
  std::vector<std::pair<const void*, std::function<void(SchedulerStats&)>>> stats_sources_;  // stats_sources_mu_
};

// Rounds of (look for work, then pause) before yielding, and yields before parking.
inline constexpr int kSpinRounds = 64;
inline constexpr int kPausesPerRound = 16;
inline constexpr int kYieldRounds = 8;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Always inlined into submit, push_own and take_injected: each spawn from a
// worker comes through here; fib/ordo/30 took 0.944x the time with this and
// level_for inlined (performance.md, round eleven).
[[gnu::always_inline]] inline void SchedulerCore::push_local(Worker& w, Task* t, unsigned level) {
  w.deques[level].push(t);
  mark_local(w, level);
  if (sleepers_.any_relaxed()) wake_one(level);
}

[[gnu::always_inline]] inline void SchedulerCore::mark_local(Worker& w, unsigned level) {
  const std::uint32_t bit = 1u << level;
  w.local_levels |= bit;
  if (!(w.advertised & bit)) {  // an RMW only when the deque becomes non-empty
    advertised_[level].add(w.index);
    w.advertised |= bit;
  }
}

// Not movable means that no ager tracks t (prepare_node sets `movable` for
// exactly the aged levels of non-handle tasks), and the callers' kinds carry
// no needs, so submit() would take the same branch after its checks.
[[gnu::always_inline]] inline bool SchedulerCore::push_own(Task* t) {
  if (tls_context.core != this || t->movable) return false;
  Worker& w = *tls_context.worker;
  const unsigned level = t->level.load(std::memory_order_relaxed);
  // relaxed: as every read of max_level (Worker::max_level).
  if (level > w.max_level.load(std::memory_order_relaxed)) return false;
  push_local(w, t, level);
  return true;
}

// Inline because a helping wait (TaskGroup::wait in recursive fork/join)
// calls it once per child: fib/ordo/30 took 0.90x the time with it inlined
// (performance.md, round eleven).
inline Task* SchedulerCore::find_task(Worker& w) {
  Task* t = find_task_at_some_level(w);
  // Nothing to do: whatever this worker does next (spin, park, help a wait
  // of its own), it must not hold back a group's count meanwhile.
  if (t == nullptr) publish_group_children(w);
  return t;
}

template <class Done, class PrepareSleep, class Until>
bool SchedulerCore::wait_until(Done&& done, PrepareSleep&& prepare_sleep, Until until) {
  if (done()) return true;
  Worker* w = tls_context.worker;
  bool prepared = false;
  if (w == nullptr) {  // not a worker: nothing to help with
    for (int i = 0; i < kSpinRounds * kPausesPerRound; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (prepare_sleep()) return true;
    Parker* self = this_thread_parker();
    while (!done()) {
      if constexpr (Until::timed) {
        // false: the deadline passed with no permit taken; a completion
        // racing it is seen by the last look at done().
        if (!self->park_until(until.ns)) return done();
      } else {
        self->park();
      }
    }
    return true;
  }
  SchedulerCore& core = w->core;
  auto stop = [&] { return done() || until.passed(); };
  for (;;) {
    if (Task* t = core.find_task(*w)) {
      core.run_task(*w, t);
      if (done()) return true;
      if (until.passed()) return false;
      continue;
    }
    if (done()) return true;
    if (until.passed()) return false;
    if (Task* t = core.spin_for_task(*w, stop)) {
      core.run_task(*w, t);
      if (done()) return true;
      if (until.passed()) return false;
      continue;
    }
    if (done()) return true;
    if (until.passed()) return false;
    if (!prepared) {
      prepared = true;
      if (prepare_sleep()) return true;
    }
    const bool chosen_for_new_work = core.park_worker(*w, stop, until);
    if (stop()) {
      // A producer may have picked this worker from the sleep set after the
      // awaited task woke it (or the deadline passed); it now goes back to
      // its own task, so the wake-up must reach another sleeper or the new
      // work could wait behind a long-running task while the rest of the
      // pool sleeps.
      if (chosen_for_new_work) core.pass_wake_on();
      return done();
    }
  }
}

template <class Stop>
Task* SchedulerCore::spin_for_task(Worker& w, Stop&& stop) {
  // A worker reserved for the upper levels does not yield. A yield leaves it
  // runnable but off the CPU, out of the sleep set: where it shares a core
  // with a worker running lower work, that worker keeps the core for the
  // rest of its time slice (milliseconds), and a high task submitted
  // meanwhile wakes nobody and waits for the lower task to end
  // (priority_reserved's p99 went from ~30 us to 500-700 us in a third of
  // the runs). Parking instead, it is woken like any sleeper, and the
  // kernel lets a thread that slept preempt one that ran.
  // relaxed: only chooses whether this idle period yields; a reserve()
  // that lands meanwhile is seen at the next one.
  const bool reserved = w.max_level.load(std::memory_order_relaxed) + 1u < levels_;
  const int yield_rounds = reserved ? 0 : kYieldRounds;
  for (int round = 0; round < kSpinRounds + yield_rounds; ++round) {
    if (round < kSpinRounds) {
      for (int i = 0; i < kPausesPerRound; ++i) cpu_relax();
    } else {
      std::this_thread::yield();
    }
    if (stop()) return nullptr;
    if (Task* t = find_task(w)) return t;
  }
  return nullptr;
}

template <class ExtraWake, class Until>
bool SchedulerCore::park_worker(Worker& w, ExtraWake&& extra_wake, Until until) {
  sleepers_.add(w.index);
  if (work_visible(w) || exit_.load(std::memory_order_seq_cst) || extra_wake()) {
    return !sleepers_.remove(w.index);
  }
  const std::int64_t slept_at = steady_now_ns();
  if constexpr (Until::timed) {
    w.parker->park_until(until.ns);  // a permit or the deadline: the caller looks at both
  } else {
    w.parker->park();
  }
  // relaxed: a statistic; only this worker writes it.
  w.idle_ns.store(w.idle_ns.load(std::memory_order_relaxed) + static_cast<std::uint64_t>(steady_now_ns() - slept_at),
                  std::memory_order_relaxed);
  return !sleepers_.remove(w.index);
}

}  // namespace ordo::detail
