// SchedulerCore's queues: putting tasks in (submit, inject, move_task,
// resubmit), finding them (own deque, injection queue, stealing, level by
// level under the policy), and waking sleepers for them. The search runs
// take_at_level(), forced inline (the compiler had kept it as a call), which
// is why the search stays in one file; push_local(), which submission shares
// with TaskGroup's spawn, is in scheduler_core.hpp.
#include <array>
#include <chrono>
#include <thread>

#include "core/scheduler_core.hpp"
#include "ordo/handle.hpp"
#include "util/prefetch.hpp"

namespace ordo::detail {

bool SchedulerCore::injection_empty() const noexcept {
  for (unsigned l = 0; l < levels_; ++l)
    if (injection_[l].pending(std::memory_order_seq_cst) >= 2) return false;
  return true;
}

// The sleeping worker's half of the Dekker pair: seq_cst loads of every place
// a task for a level it serves can appear.
bool SchedulerCore::work_visible(const Worker& w) const noexcept {
  const unsigned served = w.max_level.load(std::memory_order_relaxed) + 1u;
  for (unsigned l = 0; l < served; ++l)
    if (injection_[l].pending(std::memory_order_seq_cst) >= 2) return true;
  for (const auto& other : workers_)
    for (unsigned l = 0; l < served; ++l)
      if (!other->deques[l].empty_seq_cst()) return true;
  return false;
}

Task* SchedulerCore::find_task_at_some_level(Worker& w) {
  const unsigned served = w.max_level.load(std::memory_order_relaxed) + 1u;
  // Within a level the own deque comes first (cache-warm, no contention), but
  // a worker whose tasks keep refilling it would then never look at the
  // injection queue of that level, where submissions from outside and moved
  // tasks (set_priority, ageing) wait. Every 61st search looks there first.
  const bool injection_first = ++w.fairness_tick % 61 == 0;
  if (policy_ == Policy::weighted && served > 1) {
    // This turn's level first, then the others by priority: work-conserving.
    const unsigned first = schedule_[w.wrr_cursor];
    Task* t = first < served ? take_at_level(w, first, injection_first) : nullptr;
    for (unsigned l = 0; t == nullptr && l < served; ++l)
      if (l != first) t = take_at_level(w, l, injection_first);
    if (t != nullptr && ++w.wrr_cursor == schedule_.size()) w.wrr_cursor = 0;
    return t;
  }
  for (unsigned l = 0; l < served; ++l)
    if (Task* t = take_at_level(w, l, injection_first)) return t;
  return nullptr;
}

// Everything visible at one level: own deque, injection queue, then the deques
// of workers that advertise this level. Checked level by level from the top,
// a worker never starts a lower-level task while a higher one is visible.
// Always inlined into find_task_at_some_level, its only caller: a helping
// wait runs it twice per task (the empty upper level, then its own), and
// inlined it took fib/ordo/30 to 0.905x the time (performance.md, round eleven).
[[gnu::always_inline]] inline Task* SchedulerCore::take_at_level(Worker& w, unsigned level, bool injection_first) {
  const std::uint32_t bit = 1u << level;
  if (injection_first && injection_[level].pending(std::memory_order_relaxed) >= 2) {
    // One task only while our deque holds work: a bulk would be pushed on
    // top of it and run first, and what waits there may be a resource
    // grant that a chain of holders is waiting on (resource_cap lost a
    // tenth of its makespan to grants buried under 31 injected tasks).
    if (Task* t = take_injected(w, level, (w.local_levels & bit) ? 1 : kInjectedBulk)) {
      w.taken_level = level;
      return t;
    }
  }
  if (w.local_levels & bit) {
    Task* t;
    if (w.deques[level].pop(t)) {
      w.taken_level = level;
      return t;
    }
    w.local_levels &= ~bit;
    if (w.advertised & bit) {
      advertised_[level].remove(w.index);
      w.advertised &= ~bit;
    }
  }
  // relaxed: hints; the sleep protocol re-reads with seq_cst before parking.
  if (injection_[level].pending(std::memory_order_relaxed) >= 2) {
    if (Task* t = take_injected(w, level, kInjectedBulk)) {
      w.taken_level = level;
      return t;
    }
  }
  if (advertised_[level].any_other_relaxed(w.index)) {
    if (Task* t = steal_at_level(w, level)) {
      w.taken_level = level;
      return t;
    }
  }
  return nullptr;
}

Task* SchedulerCore::take_injected(Worker& w, unsigned level, std::size_t most) {
  std::array<Task*, kInjectedBulk> buf;
  Injection& inj = injection_[level];
  if (inj.granted_hint.load(std::memory_order_relaxed) != 0) {
    Task* t = nullptr;
    if (inj.granted.try_dequeue(t)) {
      inj.granted_hint.fetch_sub(1, std::memory_order_relaxed);
      // acq_rel: as below, for the granted queue's entries.
      inj.taken.fetch_add(2, std::memory_order_acq_rel);
      return t;
    }
  }
  std::size_t n = inj.queue.try_dequeue_bulk(w.tokens[level], buf.data(), std::min(most, kInjectedBulk));
  if (n == 0) return nullptr;  // announced but not enqueued yet: the producer is mid-submit
  // acq_rel: the release half is what pending() relies on (our count comes
  // after the announces of what we took); the acquire half makes the
  // producer's announce (written after the node) happen-before our use of
  // the nodes. moodycamel already orders that with fences, which
  // ThreadSanitizer cannot see; this edge, free on x86, it can.
  inj.taken.fetch_add(2 * n, std::memory_order_acq_rel);
  // The submitter wrote these nodes (and their needs) on another core: each
  // line is a transfer away, which run_task() would otherwise wait for task
  // after task, the node's header and then, dependent on it, its needs (on
  // a slow-interconnect day, most of what a permit added to a task). Asked
  // for all at once, they arrive together. The needs are read here, before
  // the push makes a node stealable: a thief may run and free it at once;
  // and only of a task that cannot move, whose one entry is ours (a movable
  // task's other entry may be running it, and its finish clears `needs`).
  // Only a task with needs has its payload line fetched too: fetching it
  // for every node made spawn_external/ordo 1.5x slower on a slow day
  // (measured, with the submitter's CPU time doubled; not explained).
  for (std::size_t i = 0; i < n; ++i) prefetch_for_reading(buf[i], kCacheLine);
  for (std::size_t i = 0; i < n; ++i) {
    if (buf[i]->movable) continue;
    if (const NeedList* needs = needs_of(buf[i])) {
      prefetch_for_reading(buf[i]->payload, kCacheLine);
      prefetch_for_writing(needs, sizeof(NeedList));  // `held` is written
    }
  }
  // Keep the rest on our deque where thieves can take them; pushed newest
  // first so that our own LIFO pops run them in submission order.
  for (std::size_t i = n - 1; i >= 1; --i) push_local(w, buf[i], level);
  return buf[0];
}

Task* SchedulerCore::steal_at_level(Worker& w, unsigned level) {
  w.rng ^= w.rng << 13;
  w.rng ^= w.rng >> 7;
  w.rng ^= w.rng << 17;
  const auto start = static_cast<unsigned>(w.rng);
  for (int attempt = 0; attempt < 2; ++attempt) {
    bool contended = false;
    Task* got = nullptr;
    advertised_[level].any_of_others(w.index, start, [&](unsigned victim) {
      switch (workers_[victim]->deques[level].steal(got)) {
        case StealResult::success:
          return true;
        case StealResult::lost_race:
          contended = true;
          return false;
        case StealResult::empty:
          return false;
      }
      return false;
    });
    if (got != nullptr) {
      w.stolen.store(w.stolen.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      return got;
    }
    if (!contended) break;  // every advertised deque was empty: not worth a retry
  }
  return nullptr;
}

bool SchedulerCore::submit(Task* t) {
  const unsigned level = t->level.load(std::memory_order_relaxed);
  NeedList* needs = needs_of(t);
  // Its groups are full: wait on their lists now rather than in a queue, so
  // that the next release hands it the permits at once.
  auto parked_at_once = [&] {
    // relaxed `held`: a hint, unclaimed; park_if_busy's claim re-checks (NeedList::held).
    if (needs == nullptr || needs->held.load(std::memory_order_relaxed)) return false;
    const int pause = needs_submission_pause_us.load(std::memory_order_relaxed);
    if (pause > 0) [[unlikely]] {
      needs_submission_pauses.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(std::chrono::microseconds(pause));
    }
    const bool parked = resources_.park_if_busy(t, *needs, level);
    if (pause > 0) [[unlikely]]
      needs_submission_pauses_done.fetch_add(1, std::memory_order_relaxed);
    return parked;
  };
  const bool track = ager_ != nullptr && ages(level);
  if (tls_context.core == this) {  // a busy worker: a draining judge waits for it
    if (parked_at_once()) return true;
    if (track) ager_->track(t, level, t->enqueued_ns);  // before the task can run and be freed
    Worker& w = *tls_context.worker;
    if (level <= w.max_level.load(std::memory_order_relaxed)) {
      push_local(w, t, level);
    } else {
      inject(t, level);  // a reserved worker does not keep work it will not run
    }
    return true;
  }
  Injection& inj = injection_[level];
  // seq_cst: the producer half of the sleep protocol's Dekker pair (announce,
  // then read the sleep set); also orders the announce before the enqueue.
  std::uint64_t before = inj.announced.fetch_add(2, std::memory_order_seq_cst);
  if (before & kClosed) {
    if (const int pause = refused_submission_pause_us.load(std::memory_order_relaxed); pause > 0) [[unlikely]]
      std::this_thread::sleep_for(std::chrono::microseconds(pause));
    inj.announced.fetch_sub(2, std::memory_order_seq_cst);
    wake_all();  // a draining worker may be waiting for this announcement to go away
    return false;
  }
  // Accepted, and announced before it may park: a shutdown that begins now
  // cannot end without this task. The judge (shutdown_loop) reads the
  // parked count, then the announcements, then busy_; the task is parked
  // (seq_cst RMW) before kTaskMovedOffWorkers is added and the announcement
  // withdrawn after, so whichever read comes last, one of them shows it.
  // While the phase still reads accepting (seq_cst, after the park) no
  // judge has read the parked count yet, and busy_'s line is left alone.
  // Parking before announcing let a drain or a cancel end meanwhile and
  // leave the task parked for ever, its post() accepted (shutdown_test).
  if (parked_at_once()) {
    if (phase_.load(std::memory_order_seq_cst) != kAccepting)
      busy_.fetch_add(kTaskMovedOffWorkers, std::memory_order_seq_cst);
    inj.announced.fetch_sub(2, std::memory_order_seq_cst);
    return true;
  }
  if (track) ager_->track(t, level, t->enqueued_ns);
  inj.queue.enqueue(t);
  wake_one(level);
  return true;
}

// From inside the scheduler (a worker, or a move of an accepted task): the
// closed bit does not apply, the task was accepted before.
void SchedulerCore::inject(Task* t, unsigned level) {
  injection_[level].announced.fetch_add(2, std::memory_order_seq_cst);
  injection_[level].queue.enqueue(t);
  wake_one(level);
}

// The new entry is announced *before* the move is committed: between the
// commit and the enqueue the old entry may already be skipped, and the
// announcement is what keeps a draining scheduler from concluding that no
// task is left in that window.
bool SchedulerCore::move_task(Task* t, int expected_level, unsigned new_level) {
  Injection& inj = injection_[new_level];
  inj.announced.fetch_add(2, std::memory_order_seq_cst);
  std::uint32_t s = t->state.load(std::memory_order_relaxed);
  for (;;) {
    const auto previous = t->level.load(std::memory_order_relaxed);
    if ((s & kStateMask) != kQueued || (expected_level >= 0 && previous != expected_level) ||
        previous == new_level) {
      inj.announced.fetch_sub(2, std::memory_order_seq_cst);
      wake_all();  // a draining worker may have seen the announcement and parked on it
      return (s & kStateMask) == kQueued && previous == new_level;
    }
    t->level.store(static_cast<std::uint8_t>(new_level), std::memory_order_relaxed);
    // release: pairs with run_task()'s acquire load of state, so a worker that
    // takes the old entry after this move sees the new level and skips it.
    if (t->state.compare_exchange_weak(s, s + kMoveUnit, std::memory_order_release, std::memory_order_relaxed)) break;
    t->level.store(previous, std::memory_order_relaxed);  // lost to a claim or a waiter: re-check
  }
  // The new entry's reference. The caller's (a handle's or the ager's) keeps
  // the node alive until here even if the old entry is skipped meanwhile.
  t->refs.fetch_add(1, std::memory_order_relaxed);
  if (ager_ != nullptr && ages(new_level)) ager_->track(t, new_level, steady_now_ns());
  inj.queue.enqueue(t);
  wake_one(new_level);
  return true;
}

void SchedulerCore::resubmit(Task* t) {
  const unsigned level = t->level.load(std::memory_order_relaxed);
  if (tls_context.core == this && level <= tls_context.worker->max_level.load(std::memory_order_relaxed)) {
    Worker& w = *tls_context.worker;
    if (tls_context.current == nullptr && w.deques[level].empty_hint()) {
      if (const int pause = grant_push_pause_us.load(std::memory_order_relaxed);
          pause > 0 && w.index + 1 == worker_count()) [[unlikely]] {
        grant_push_pauses.fetch_add(1, std::memory_order_relaxed);
        std::this_thread::sleep_for(std::chrono::microseconds(pause));
      }
      // A worker between tasks granted it (its finished task released the
      // permits): with nothing else in its deque it pops this next, unless
      // a higher priority is visible. Waking a sleeper to steal it would
      // cost a futex wake per grant on the chain of holders and gain
      // nothing. (The hint may read non-empty after a theft: then we wake,
      // which is merely what we did before.)
      w.deques[level].push(t);
      mark_local(w, level);
      // Unless reserve() took this level from us meanwhile: then another
      // worker must come for it. seq_cst fence: pairs with the fence in
      // reserve() between its new max_level and its wake-up, so that either
      // we see the new level here or the workers it wakes see our push.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (level > w.max_level.load(std::memory_order_relaxed)) wake_one(level);
      return;
    }
    push_local(w, t, level);
    return;
  }
  // Granted elsewhere (a submitting thread that parked it, a rate timer):
  // ahead of the injection queue, as a worker's own grant runs next.
  Injection& inj = injection_[level];
  inj.announced.fetch_add(2, std::memory_order_seq_cst);  // as inject(): announced before it can be taken
  inj.granted_hint.fetch_add(1, std::memory_order_relaxed);
  inj.granted.enqueue(t);
  wake_one(level);
}

void SchedulerCore::last_parked_task_left() noexcept {
  if (phase_.load(std::memory_order_seq_cst) != kAccepting) wake_all();
}

void SchedulerCore::wake_one(unsigned level) noexcept {
  int idx = sleepers_.take_one(&eligible_[level]);
  if (idx >= 0) workers_[static_cast<unsigned>(idx)]->parker->unpark();
}

void SchedulerCore::pass_wake_on() noexcept {
  for (unsigned l = 0; l < levels_; ++l) {
    bool work = injection_[l].pending(std::memory_order_seq_cst) >= 2;
    for (std::size_t i = 0; !work && i < workers_.size(); ++i) work = !workers_[i]->deques[l].empty_seq_cst();
    if (work) {
      wake_one(l);
      return;
    }
  }
}

void SchedulerCore::wake_all() noexcept {
  while (true) {
    int idx = sleepers_.take_one();
    if (idx < 0) break;
    workers_[static_cast<unsigned>(idx)]->parker->unpark();
  }
}

}  // namespace ordo::detail
