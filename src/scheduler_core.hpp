// SchedulerCore: the workers, their deques, the injection queues and the
// sleep/wake and shutdown protocols behind ordo::Scheduler.
//
// Thread-safety: submit paths, wait paths and wake() may run on any thread
// concurrently; start() and stop() are called once each by the owning
// Scheduler, never from a worker.
// Invariants:
//  - a queued task is in exactly one place: one worker's deque or one
//    injection queue (a bulk take moves tasks from the latter to the former);
//  - Injection::announced >= 2 * (tasks in that queue) at all times: a
//    producer announces before it enqueues and a consumer un-announces after
//    it dequeued, so "announced == 0" means "nothing is or will be there";
//  - once the scheduler is closed (low bit of every announced word), no new
//    external task is accepted; tasks running on workers may still push onto
//    their own deques until every worker is idle.
#pragma once

#include <atomic>
#include <concurrentqueue/concurrentqueue.h>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "chase_lev_deque.hpp"
#include "ordo/options.hpp"
#include "ordo/priority.hpp"
#include "parker.hpp"
#include "sleep_set.hpp"
#include "thread_context.hpp"

namespace ordo::detail {

class SchedulerCore;

struct alignas(64) Worker {
  Worker(SchedulerCore& c, unsigned i, unsigned levels);

  SchedulerCore& core;
  const unsigned index;
  Parker* parker = nullptr;        // leased by the worker thread when it starts
  std::uint32_t local_levels = 0;  // owner only: levels whose deque may be non-empty
  std::uint64_t rng;               // owner only: victim selection
  std::unique_ptr<ChaseLevDeque<Task*>[]> deques;  // one per level
  std::vector<moodycamel::ConsumerToken> tokens;   // one per level's injection queue
  std::thread thread;

  // Written by the owner only (relaxed load + store, no RMW); read by stats.
  std::atomic<std::uint64_t> executed{0};
  std::atomic<std::uint64_t> stolen{0};
};

class SchedulerCore {
 public:
  explicit SchedulerCore(const SchedulerOptions& options);
  ~SchedulerCore();

  void start();
  void stop(ShutdownMode mode);

  unsigned worker_count() const noexcept { return static_cast<unsigned>(workers_.size()); }
  unsigned level_count() const noexcept { return levels_; }
  std::uint8_t default_level() const noexcept { return levels_ >= 2 ? 1 : 0; }

  bool submit(Task* t);

  // Helping wait of the calling thread until done() holds. On a worker (of any
  // scheduler) runs other tasks meanwhile; elsewhere spins briefly, then parks.
  // prepare_sleep() runs once, right before the first park; it must arrange
  // that whoever makes done() true unparks this thread, and returns true if
  // done() already holds.
  template <class Done, class PrepareSleep>
  static void wait_until(Done&& done, PrepareSleep&& prepare_sleep);

  // Cumulative counters summed over workers (approximate while running).
  std::uint64_t executed_total() const noexcept;
  std::uint64_t stolen_total() const noexcept;
  unsigned parked_count() const noexcept { return sleepers_.count(); }

 private:
  friend struct Worker;
  enum Phase : int { kAccepting = 0, kDraining = 1, kCancelling = 2 };

  struct alignas(64) Injection {
    moodycamel::ConcurrentQueue<Task*> queue;
    alignas(64) std::atomic<std::uint64_t> announced{0};  // 2 * count | closed bit
  };
  static constexpr std::uint64_t kClosed = 1;

  void worker_main(Worker& w);
  void shutdown_loop(Worker& w);
  Task* find_task(Worker& w);
  Task* take_injected(Worker& w, unsigned level);
  Task* steal_any(Worker& w);
  void run_task(Task* t);
  // Tries to find work with bounded spinning and yielding; null if none came
  // or stop() became true.
  template <class Stop>
  Task* spin_for_task(Worker& w, Stop&& stop);
  // Parks w unless work or `extra_wake()` is visible after joining the sleep set.
  template <class ExtraWake>
  void park_worker(Worker& w, ExtraWake&& extra_wake);
  bool work_visible() const noexcept;
  bool injection_empty() const noexcept;
  void wake_one() noexcept;
  void wake_all() noexcept;
  void finish(Task* t, ExecMode mode) noexcept;

  unsigned levels_;
  std::string name_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<Injection[]> injection_;
  SleepSet sleepers_;
  alignas(64) std::atomic<int> phase_{kAccepting};
  std::atomic<int> busy_{0};      // workers not idle; counted only once stopping
  std::atomic<bool> exit_{false};  // drain/cancel complete: workers return
  std::mutex stop_mu_;
  bool stopped_ = false;
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

template <class Done, class PrepareSleep>
void SchedulerCore::wait_until(Done&& done, PrepareSleep&& prepare_sleep) {
  if (done()) return;
  Worker* w = tls_context.worker;
  bool prepared = false;
  if (w == nullptr) {  // not a worker: nothing to help with
    for (int i = 0; i < kSpinRounds * kPausesPerRound; ++i) {
      if (done()) return;
      cpu_relax();
    }
    if (prepare_sleep()) return;
    Parker* self = this_thread_parker();
    while (!done()) self->park();
    return;
  }
  SchedulerCore& core = w->core;
  for (;;) {
    if (Task* t = core.find_task(*w)) {
      core.run_task(t);
      if (done()) return;
      continue;
    }
    if (done()) return;
    if (Task* t = core.spin_for_task(*w, done)) {
      core.run_task(t);
      if (done()) return;
      continue;
    }
    if (done()) return;
    if (!prepared) {
      prepared = true;
      if (prepare_sleep()) return;
    }
    core.park_worker(*w, done);
    if (done()) return;
  }
}

template <class Stop>
Task* SchedulerCore::spin_for_task(Worker& w, Stop&& stop) {
  for (int round = 0; round < kSpinRounds + kYieldRounds; ++round) {
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

template <class ExtraWake>
void SchedulerCore::park_worker(Worker& w, ExtraWake&& extra_wake) {
  sleepers_.add(w.index);
  if (work_visible() || exit_.load(std::memory_order_seq_cst) || extra_wake()) {
    sleepers_.remove(w.index);
    return;
  }
  w.parker->park();
  sleepers_.remove(w.index);
}

}  // namespace ordo::detail
