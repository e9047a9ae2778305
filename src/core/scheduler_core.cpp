#include "core/scheduler_core.hpp"

#include <pthread.h>

#include <algorithm>
#include <array>
#include <string>

#include "ordo/errors.hpp"
#include "ordo/handle.hpp"

namespace ordo::detail {

thread_local constinit ThreadContext tls_context{nullptr, nullptr, nullptr, nullptr, 0, nullptr};

Parker* this_thread_parker() noexcept {
  if (tls_context.parker == nullptr) tls_context.parker = Parker::current();
  return tls_context.parker;
}

Worker::Worker(SchedulerCore& c, unsigned i, unsigned levels)
    : core(c),
      index(i),
      rng(0x9e3779b97f4a7c15ull * (i + 1)),
      deques(new ChaseLevDeque<Task*>[levels]),
      per_level(new PerLevel[levels]) {
  max_level.store(static_cast<std::uint8_t>(levels - 1), std::memory_order_relaxed);
  tokens.reserve(levels);
  for (unsigned l = 0; l < levels; ++l) tokens.emplace_back(c.injection_[l].queue);
}

namespace {

unsigned resolve_workers(const SchedulerOptions& options) {
  unsigned n = options.workers != 0 ? options.workers : std::max(1u, std::thread::hardware_concurrency());
  if (n > 4096) throw InvalidArgument("ordo: SchedulerOptions::workers must be at most 4096, got " + std::to_string(n));
  return n;
}

unsigned validate_levels(const SchedulerOptions& options) {
  if (options.levels < 1 || options.levels > kMaxLevels) {
    throw InvalidArgument("ordo: SchedulerOptions::levels must be between 1 and " + std::to_string(kMaxLevels) +
                          ", got " + std::to_string(options.levels));
  }
  return options.levels;
}

}  // namespace

SchedulerCore::SchedulerCore(const SchedulerOptions& options)
    : levels_(validate_levels(options)),
      name_(options.name),
      policy_(options.policy),
      sleepers_(resolve_workers(options)),
      reserved_per_level_(levels_, 0),
      tracer_(resolve_workers(options)) {
  const unsigned n = resolve_workers(options);
  if (policy_ == Policy::strict && !options.weights.empty()) {
    throw InvalidArgument("ordo: SchedulerOptions::weights are only used with Policy::weighted");
  }
  if (policy_ == Policy::weighted) {
    std::vector<unsigned> weights = options.weights;
    if (weights.empty()) {
      for (unsigned l = 0; l < levels_; ++l) weights.push_back(1u << (levels_ - 1 - l));
    }
    if (weights.size() != levels_) {
      throw InvalidArgument("ordo: SchedulerOptions::weights needs one weight per level (" + std::to_string(levels_) +
                            "), got " + std::to_string(weights.size()));
    }
    for (unsigned l = 0; l < levels_; ++l) {
      if (weights[l] == 0 || weights[l] > 1000) {
        throw InvalidArgument("ordo: weight of level " + std::to_string(l) + " must be between 1 and 1000, got " +
                              std::to_string(weights[l]));
      }
    }
    build_weighted_schedule(weights);
  }
  if (!options.age_bounds.empty()) {
    if (policy_ != Policy::strict) {
      throw InvalidArgument("ordo: SchedulerOptions::age_bounds are only used with Policy::strict");
    }
    if (options.age_bounds.size() != levels_) {
      throw InvalidArgument("ordo: SchedulerOptions::age_bounds needs one bound per level (" +
                            std::to_string(levels_) + "), got " + std::to_string(options.age_bounds.size()));
    }
    if (options.age_bounds[0].count() != 0) {
      throw InvalidArgument("ordo: age_bounds[0] must be zero: level 0 has no higher level to be served at");
    }
    std::vector<std::int64_t> bounds;
    for (unsigned l = 0; l < levels_; ++l) {
      const auto ns = options.age_bounds[l].count();
      if (ns < 0) throw InvalidArgument("ordo: age bound of level " + std::to_string(l) + " is negative");
      if (ns > 0) aged_levels_ |= 1u << l;
      bounds.push_back(ns);
    }
    if (aged_levels_ != 0) {
      ager_ = std::make_unique<Ager>(std::move(bounds), [this](Task* t, unsigned level) {
        const bool moved = move_task(t, static_cast<int>(level), level - 1);
        if (moved) promoted_.fetch_add(1, std::memory_order_relaxed);
        return moved;
      });
    }
  }
  injection_.reset(new Injection[levels_]);
  advertised_.reset(new WorkerSet[levels_]);
  eligible_.reset(new WorkerSet[levels_]);
  for (unsigned l = 0; l < levels_; ++l) {
    advertised_[l].init(n);
    eligible_[l].init(n);
  }
  workers_.reserve(n);
  for (unsigned i = 0; i < n; ++i) workers_.push_back(std::make_unique<Worker>(*this, i, levels_));
  for (const Reservation& r : options.reserved) reserve(static_cast<unsigned>(r.level), r.workers);
  std::lock_guard lock(reservation_mu_);
  apply_reservations();
}

SchedulerCore::~SchedulerCore() { stop(ShutdownMode::drain); }

// Smooth weighted round-robin: each round every level gains its weight and the
// richest level is served and pays the total. Over one round of sum(weights)
// turns each level gets exactly its weight, spread out rather than in bursts.
void SchedulerCore::build_weighted_schedule(const std::vector<unsigned>& weights) {
  std::vector<long> current(weights.size(), 0);
  long total = 0;
  for (unsigned w : weights) total += w;
  for (long turn = 0; turn < total; ++turn) {
    std::size_t best = 0;
    for (std::size_t l = 0; l < weights.size(); ++l) {
      current[l] += weights[l];
      if (current[l] > current[best]) best = l;
    }
    current[best] -= total;
    schedule_.push_back(static_cast<std::uint8_t>(best));
  }
}

void SchedulerCore::reserve(unsigned level, unsigned workers) {
  if (level >= levels_) {
    throw InvalidArgument("ordo: reserve() level " + std::to_string(level) + " is beyond this scheduler's " +
                          std::to_string(levels_) + " levels");
  }
  std::lock_guard lock(reservation_mu_);
  unsigned others = 0;
  for (unsigned l = 0; l < levels_; ++l)
    if (l != level) others += reserved_per_level_[l];
  if (level != levels_ - 1 && others + workers >= worker_count()) {
    throw InvalidArgument("ordo: reserving " + std::to_string(workers) + " worker(s) for level " +
                          std::to_string(level) + " would leave no worker for the lowest level (" +
                          std::to_string(worker_count()) + " workers, " + std::to_string(others) +
                          " already reserved)");
  }
  reserved_per_level_[level] = workers;
  apply_reservations();
  wake_all();  // parked workers re-check what they may now run (or must leave to others)
}

// Reserved workers are taken from the highest indices, highest band first.
void SchedulerCore::apply_reservations() noexcept {
  unsigned next = worker_count();
  std::vector<unsigned> cap(worker_count(), levels_ - 1);
  for (unsigned l = 0; l < levels_; ++l) {
    for (unsigned k = 0; k < reserved_per_level_[l] && next > 0; ++k) cap[--next] = l;
  }
  for (unsigned i = 0; i < worker_count(); ++i) {
    workers_[i]->max_level.store(static_cast<std::uint8_t>(cap[i]), std::memory_order_relaxed);
    for (unsigned l = 0; l < levels_; ++l) {
      if (l <= cap[i]) {
        eligible_[l].add(i);
      } else {
        eligible_[l].remove(i);
      }
    }
  }
}

void SchedulerCore::start() {
  // Workers count as busy until the shutdown loop sees them idle.
  busy_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
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
  tls_context = ThreadContext{nullptr, nullptr, nullptr, nullptr, 0, nullptr};
}

// Termination detection while draining or cancelling. Every worker counts as
// busy (busy_ starts at the number of workers) until it finds nothing here;
// an idle worker counts itself busy again *before* it looks for work, so a
// task is always either queued where an active worker will see it, running on
// a busy worker, or announced in an injection queue. Hence busy_ == 0 with
// every injection queue empty and closed means no task exists or can appear.
void SchedulerCore::shutdown_loop(Worker& w) {
  // While stopping every worker serves every level: reservations would
  // otherwise leave lower-level tasks behind a worker that will not run them.
  w.max_level.store(static_cast<std::uint8_t>(levels_ - 1), std::memory_order_relaxed);
  // idle_parked: idle, and the drain waits for a parked task to come back
  // (its rate tokens are due later); last_parked_task_left() wakes us.
  enum class Next { exit, idle, idle_parked, busy };
  // resources_.limit_changes() when the hopeless waiters were last looked
  // for: a later set_limit() may have made another one hopeless.
  std::uint64_t limits_judged = 0;
  // Called holding our busy count; gives it up unless the answer is `busy`.
  auto try_finish = [this, &limits_judged]() -> Next {
    if (busy_.fetch_sub(1, std::memory_order_seq_cst) != 1 || !injection_empty()) return Next::idle;
    if (resources_.parked() != 0) {
      // Nothing runs, so no permit is held: a waiter that needs no more
      // than each group's limit waits only for rate tokens, and the resource
      // timer requeues it (announced before it stops counting as parked).
      // One that needs more than a (lowered) limit can never run: cancel it,
      // holding a busy count again while its completion, and whatever that
      // releases, runs on this worker.
      busy_.fetch_add(1, std::memory_order_seq_cst);
      limits_judged = resources_.limit_changes();
      if (resources_.cancel_parked(ResourceManager::Which::unsatisfiable) != 0) return Next::busy;
      busy_.fetch_sub(1, std::memory_order_seq_cst);
      return Next::idle_parked;
    }
    exit_.store(true, std::memory_order_seq_cst);
    wake_all();
    return Next::exit;
  };
  for (;;) {  // busy: our count is in busy_
    while (Task* t = find_task(w)) run_task(w, t);
    Next next = try_finish();
    while (next == Next::idle || next == Next::idle_parked) {  // our count is not in busy_
      if (exit_.load(std::memory_order_seq_cst)) return;
      if (next == Next::idle_parked) {
        // seq_cst: pairs with unpark_one()'s decrement and set_limit()'s
        // count, read after joining the sleepers that both then wake.
        park_worker(w, [this, &limits_judged] {
          return resources_.parked() == 0 || resources_.limit_changes() != limits_judged;
        });
      } else {
        park_worker(w, [] { return false; });
      }
      if (exit_.load(std::memory_order_seq_cst)) return;
      busy_.fetch_add(1, std::memory_order_seq_cst);
      if (Task* t = find_task(w)) {
        run_task(w, t);
        next = Next::busy;
      } else {
        next = try_finish();
      }
    }
    if (next == Next::exit) return;
  }
}

bool SchedulerCore::injection_empty() const noexcept {
  for (unsigned l = 0; l < levels_; ++l)
    if (injection_[l].announced.load(std::memory_order_seq_cst) >= 2) return false;
  return true;
}

// The sleeping worker's half of the Dekker pair: seq_cst loads of every place
// a task for a level it serves can appear.
bool SchedulerCore::work_visible(const Worker& w) const noexcept {
  const unsigned served = w.max_level.load(std::memory_order_relaxed) + 1u;
  for (unsigned l = 0; l < served; ++l)
    if (injection_[l].announced.load(std::memory_order_seq_cst) >= 2) return true;
  for (const auto& other : workers_)
    for (unsigned l = 0; l < served; ++l)
      if (!other->deques[l].empty_seq_cst()) return true;
  return false;
}

Task* SchedulerCore::find_task(Worker& w) {
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
Task* SchedulerCore::take_at_level(Worker& w, unsigned level, bool injection_first) {
  const std::uint32_t bit = 1u << level;
  if (injection_first && injection_[level].announced.load(std::memory_order_relaxed) >= 2) {
    if (Task* t = take_injected(w, level)) {
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
  if (injection_[level].announced.load(std::memory_order_relaxed) >= 2) {
    if (Task* t = take_injected(w, level)) {
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

void SchedulerCore::push_local(Worker& w, Task* t, unsigned level) {
  w.deques[level].push(t);
  const std::uint32_t bit = 1u << level;
  w.local_levels |= bit;
  if (!(w.advertised & bit)) {  // an RMW only when the deque becomes non-empty
    advertised_[level].add(w.index);
    w.advertised |= bit;
  }
  if (sleepers_.any_relaxed()) wake_one(level);
}

Task* SchedulerCore::take_injected(Worker& w, unsigned level) {
  constexpr std::size_t kBulk = 32;
  std::array<Task*, kBulk> buf;
  Injection& inj = injection_[level];
  if (inj.granted_hint.load(std::memory_order_relaxed) != 0) {
    Task* t = nullptr;
    if (inj.granted.try_dequeue(t)) {
      inj.granted_hint.fetch_sub(1, std::memory_order_relaxed);
      // acq_rel: as below, for the granted queue's entries.
      inj.announced.fetch_sub(2, std::memory_order_acq_rel);
      return t;
    }
  }
  std::size_t n = inj.queue.try_dequeue_bulk(w.tokens[level], buf.data(), kBulk);
  if (n == 0) return nullptr;  // announced but not enqueued yet: the producer is mid-submit
  // acq_rel: the count only has to stay >= the queue's size, which the RMW
  // order on this word guarantees by itself; the acquire half makes the
  // producer's announce (a release RMW, written after the node) happen-before
  // our use of the nodes. moodycamel already orders that with fences, which
  // ThreadSanitizer cannot see; this edge, free on x86, it can.
  inj.announced.fetch_sub(2 * n, std::memory_order_acq_rel);
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

void SchedulerCore::run_task(Worker& w, Task* t) {
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
  if (mode == ExecMode::run && t->kind == TaskKind::handle && t->preds != nullptr && t->preds->needs != nullptr &&
      !t->preds->needs->held.load(std::memory_order_relaxed)) {  // relaxed: our claim ordered it
    // Parked: the task waits on its groups' lists, holding no worker; this
    // entry's reference now belongs to the wait list.
    if (!resources_.acquire_or_park(t, *t->preds->needs, level)) {
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

bool SchedulerCore::submit(Task* t) {
  const unsigned level = t->level.load(std::memory_order_relaxed);
  // relaxed `held`: a hint, unclaimed; park_if_busy's claim re-checks (NeedList::held).
  if (t->kind == TaskKind::handle && t->preds != nullptr && t->preds->needs != nullptr &&
      !t->preds->needs->held.load(std::memory_order_relaxed) &&
      (tls_context.core == this || accepting())) {
    // Its groups are full: wait on their lists now rather than in a queue,
    // so that the next release hands it the permits at once.
    if (resources_.park_if_busy(t, *t->preds->needs, level)) return true;
  }
  const bool track = ager_ != nullptr && ages(level);
  if (tls_context.core == this) {
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
    inj.announced.fetch_sub(2, std::memory_order_seq_cst);
    wake_all();  // a draining worker may be waiting for this announcement to go away
    return false;
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
    push_local(*tls_context.worker, t, level);
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
    bool work = injection_[l].announced.load(std::memory_order_seq_cst) >= 2;
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

void SchedulerCore::stop(ShutdownMode mode) {
  std::lock_guard lock(stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  phase_.store(mode == ShutdownMode::cancel ? kCancelling : kDraining, std::memory_order_seq_cst);
  for (unsigned l = 0; l < levels_; ++l) injection_[l].announced.fetch_or(kClosed, std::memory_order_seq_cst);
  if (mode == ShutdownMode::cancel) resources_.cancel_parked(ResourceManager::Which::all);
  // Workers parked before the phase change would sleep on: wake them all. A
  // worker that has not parked yet re-reads the phase (seq_cst) after joining
  // the sleep set, so it cannot miss both the store above and this wake-up.
  wake_all();
  for (auto& w : workers_) {
    if (w->thread.joinable()) w->thread.join();
  }
  if (ager_) ager_->stop();  // drops its references; every task it tracked has run or been cancelled
  resources_.stop();
}

void SchedulerCore::fill_stats(SchedulerStats& st) const {
  st.workers = worker_count();
  st.levels = levels_;
  st.steals = 0;
  st.tasks_run = 0;
  st.workers_parked = parked_count();
  st.promoted = promoted_.load(std::memory_order_relaxed);
  st.per_level.assign(levels_, LevelStats{});
  st.per_worker.assign(workers_.size(), WorkerStats{});
  std::vector<WaitHistogram::Merged> merged(levels_);
  for (unsigned l = 0; l < levels_; ++l) st.per_level[l].queued = injection_[l].announced.load(std::memory_order_relaxed) / 2;
  // Each counter is read once and every total is summed from those reads, so
  // the snapshot adds up: tasks_run == sum of per-worker == sum of per-level.
  for (std::size_t i = 0; i < workers_.size(); ++i) {
    const Worker& w = *workers_[i];
    WorkerStats& ws = st.per_worker[i];
    ws.steals = w.stolen.load(std::memory_order_relaxed);
    ws.idle_ms = static_cast<double>(w.idle_ns.load(std::memory_order_relaxed)) / 1e6;
    ws.parked = sleepers_.contains(w.index);
    const int running = w.running_level.load(std::memory_order_relaxed);
    for (unsigned l = 0; l < levels_; ++l) {
      LevelStats& ls = st.per_level[l];
      const std::uint64_t done = w.per_level[l].completed.load(std::memory_order_relaxed);
      ws.tasks_run += done;
      ls.completed += done;
      ls.queued += static_cast<std::uint64_t>(w.deques[l].size_hint());
      if (running == static_cast<int>(l)) ++ls.running;
      w.per_level[l].waits.merge_into(merged[l]);
    }
    st.tasks_run += ws.tasks_run;
    st.steals += ws.steals;
  }
  for (unsigned l = 0; l < levels_; ++l) {
    LevelStats& ls = st.per_level[l];
    ls.wait_samples = merged[l].total;
    ls.wait_p50_us = merged[l].quantile_ns(0.50) / 1000.0;
    ls.wait_p90_us = merged[l].quantile_ns(0.90) / 1000.0;
    ls.wait_p99_us = merged[l].quantile_ns(0.99) / 1000.0;
    ls.wait_max_us = static_cast<double>(merged[l].max) / 1000.0;
  }
  st.resources = resources_.all_stats();
  std::lock_guard lock(stats_sources_mu_);
  for (const auto& [owner, fill] : stats_sources_) fill(st);
}

void SchedulerCore::add_stats_source(const void* owner, std::function<void(SchedulerStats&)> fill) {
  std::lock_guard lock(stats_sources_mu_);
  stats_sources_.emplace_back(owner, std::move(fill));
}

void SchedulerCore::remove_stats_source(const void* owner) noexcept {
  std::lock_guard lock(stats_sources_mu_);
  std::erase_if(stats_sources_, [&](const auto& s) { return s.first == owner; });
}

std::uint64_t SchedulerCore::stolen_total() const noexcept {
  std::uint64_t sum = 0;
  for (const auto& w : workers_) sum += w->stolen.load(std::memory_order_relaxed);
  return sum;
}

}  // namespace ordo::detail
