#include "scheduler_core.hpp"

#include <pthread.h>

#include <algorithm>
#include <array>
#include <string>

#include "ordo/errors.hpp"

namespace ordo::detail {

thread_local constinit ThreadContext tls_context{nullptr, nullptr, nullptr, nullptr};

Parker* this_thread_parker() noexcept {
  if (tls_context.parker == nullptr) tls_context.parker = Parker::current();
  return tls_context.parker;
}

Worker::Worker(SchedulerCore& c, unsigned i, unsigned levels)
    : core(c), index(i), rng(0x9e3779b97f4a7c15ull * (i + 1)), deques(new ChaseLevDeque<Task*>[levels]) {
  tokens.reserve(levels);
  for (unsigned l = 0; l < levels; ++l) tokens.emplace_back(c.injection_[l].queue);
}

SchedulerCore::SchedulerCore(const SchedulerOptions& options)
    : levels_(options.levels),
      name_(options.name),
      sleepers_(options.workers != 0 ? options.workers : std::max(1u, std::thread::hardware_concurrency())) {
  if (options.levels < 1 || options.levels > kMaxLevels) {
    throw InvalidArgument("ordo: SchedulerOptions::levels must be between 1 and " + std::to_string(kMaxLevels) +
                          ", got " + std::to_string(options.levels));
  }
  unsigned n = options.workers != 0 ? options.workers : std::max(1u, std::thread::hardware_concurrency());
  if (n > 4096) throw InvalidArgument("ordo: SchedulerOptions::workers must be at most 4096, got " + std::to_string(n));
  injection_.reset(new Injection[levels_]);
  workers_.reserve(n);
  for (unsigned i = 0; i < n; ++i) workers_.push_back(std::make_unique<Worker>(*this, i, levels_));
}

SchedulerCore::~SchedulerCore() { stop(ShutdownMode::drain); }

void SchedulerCore::start() {
  // Workers count as busy until the shutdown loop sees them idle.
  busy_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  for (auto& w : workers_) {
    Worker* raw = w.get();
    raw->thread = std::thread([this, raw] { worker_main(*raw); });
  }
}

void SchedulerCore::worker_main(Worker& w) {
  tls_context = ThreadContext{this, &w, nullptr, nullptr};
  w.parker = this_thread_parker();
  std::string thread_name = name_.substr(0, 11) + "-" + std::to_string(w.index);
  pthread_setname_np(pthread_self(), thread_name.c_str());

  for (;;) {
    if (phase_.load(std::memory_order_relaxed) != kAccepting) break;
    if (Task* t = find_task(w)) {
      run_task(t);
      continue;
    }
    // seq_cst: pairs with stop()'s phase store when read inside park_worker().
    auto stopping = [this] { return phase_.load(std::memory_order_seq_cst) != kAccepting; };
    if (Task* t = spin_for_task(w, stopping)) {
      run_task(t);
      continue;
    }
    park_worker(w, stopping);
  }
  shutdown_loop(w);
  tls_context = ThreadContext{nullptr, nullptr, nullptr, nullptr};
}

// Termination detection while draining or cancelling. Every worker counts as
// busy (busy_ starts at the number of workers) until it finds nothing here;
// an idle worker counts itself busy again *before* it looks for work, so a
// task is always either queued where an active worker will see it, running on
// a busy worker, or announced in an injection queue. Hence busy_ == 0 with
// every injection queue empty and closed means no task exists or can appear.
void SchedulerCore::shutdown_loop(Worker& w) {
  for (;;) {
    while (Task* t = find_task(w)) run_task(t);
    if (busy_.fetch_sub(1, std::memory_order_seq_cst) == 1 && injection_empty()) {
      exit_.store(true, std::memory_order_seq_cst);
      wake_all();
      return;
    }
    for (;;) {
      if (exit_.load(std::memory_order_seq_cst)) return;
      park_worker(w, [] { return false; });
      if (exit_.load(std::memory_order_seq_cst)) return;
      busy_.fetch_add(1, std::memory_order_seq_cst);
      if (Task* t = find_task(w)) {
        run_task(t);
        break;  // back to the busy loop
      }
      if (busy_.fetch_sub(1, std::memory_order_seq_cst) == 1 && injection_empty()) {
        exit_.store(true, std::memory_order_seq_cst);
        wake_all();
        return;
      }
    }
  }
}

bool SchedulerCore::injection_empty() const noexcept {
  for (unsigned l = 0; l < levels_; ++l)
    if (injection_[l].announced.load(std::memory_order_seq_cst) >= 2) return false;
  return true;
}

bool SchedulerCore::work_visible() const noexcept {
  if (!injection_empty()) return true;
  for (const auto& other : workers_)
    for (unsigned l = 0; l < levels_; ++l)
      if (!other->deques[l].empty_seq_cst()) return true;
  return false;
}

Task* SchedulerCore::find_task(Worker& w) {
  for (unsigned l = 0; l < levels_; ++l) {
    const std::uint32_t bit = 1u << l;
    if (w.local_levels & bit) {
      Task* t;
      if (w.deques[l].pop(t)) return t;
      w.local_levels &= ~bit;
    }
    // relaxed: a hint; the sleep protocol re-reads it seq_cst before parking.
    if (injection_[l].announced.load(std::memory_order_relaxed) >= 2) {
      if (Task* t = take_injected(w, l)) return t;
    }
  }
  return steal_any(w);
}

Task* SchedulerCore::take_injected(Worker& w, unsigned level) {
  constexpr std::size_t kBulk = 32;
  std::array<Task*, kBulk> buf;
  Injection& inj = injection_[level];
  std::size_t n = inj.queue.try_dequeue_bulk(w.tokens[level], buf.data(), kBulk);
  if (n == 0) return nullptr;  // announced but not enqueued yet: the producer is mid-submit
  // acq_rel: the count only has to stay >= the queue's size, which the RMW
  // order on this word guarantees by itself; the acquire half makes the
  // producer's announce (a release RMW, written after the node) happen-before
  // our use of the nodes. moodycamel already orders that with fences, which
  // ThreadSanitizer cannot see; this edge, free on x86, it can.
  inj.announced.fetch_sub(2 * n, std::memory_order_acq_rel);
  if (n > 1) {
    // Keep the rest on our deque where thieves can take them; pushed newest
    // first so that our own LIFO pops run them in submission order.
    for (std::size_t i = n - 1; i >= 1; --i) w.deques[level].push(buf[i]);
    w.local_levels |= 1u << level;
    if (sleepers_.any_relaxed()) wake_one();
  }
  return buf[0];
}

Task* SchedulerCore::steal_any(Worker& w) {
  const unsigned n = worker_count();
  if (n == 1) return nullptr;
  w.rng ^= w.rng << 13;
  w.rng ^= w.rng >> 7;
  w.rng ^= w.rng << 17;
  const unsigned start = static_cast<unsigned>(w.rng % n);
  for (unsigned l = 0; l < levels_; ++l) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      bool contended = false;
      for (unsigned k = 0; k < n; ++k) {
        unsigned v = (start + k) % n;
        if (v == w.index) continue;
        Task* t;
        switch (workers_[v]->deques[l].steal(t)) {
          case StealResult::success:
            w.stolen.store(w.stolen.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
            return t;
          case StealResult::lost_race:
            contended = true;
            break;
          case StealResult::empty:
            break;
        }
      }
      if (!contended) break;  // every victim was empty at this level: next level
    }
  }
  return nullptr;
}

void SchedulerCore::run_task(Task* t) {
  const ExecMode mode = phase_.load(std::memory_order_relaxed) == kCancelling ? ExecMode::cancel : ExecMode::run;
  Task* outer = tls_context.current;
  tls_context.current = t;
  // An RMW, not a store: a waiter may have set kWaiterBit concurrently.
  // relaxed: informational only; the outcome is published by finish().
  if (t->kind == TaskKind::handle) t->state.fetch_or(kRunning, std::memory_order_relaxed);
  t->exec(t, mode);
  tls_context.current = outer;
  Worker& w = *tls_context.worker;
  w.executed.store(w.executed.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  finish(t, mode);
}

bool SchedulerCore::submit(Task* t) {
  const unsigned level = t->level;
  if (tls_context.core == this) {
    Worker& w = *tls_context.worker;
    w.deques[level].push(t);
    w.local_levels |= 1u << level;
    if (sleepers_.any_relaxed()) wake_one();
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
  inj.queue.enqueue(t);
  wake_one();
  return true;
}

void SchedulerCore::wake_one() noexcept {
  int idx = sleepers_.take_one();
  if (idx >= 0) workers_[static_cast<unsigned>(idx)]->parker->unpark();
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
  // Workers parked before the phase change would sleep on: wake them all. A
  // worker that has not parked yet re-reads the phase (seq_cst) after joining
  // the sleep set, so it cannot miss both the store above and this wake-up.
  wake_all();
  for (auto& w : workers_) {
    if (w->thread.joinable()) w->thread.join();
  }
}

std::uint64_t SchedulerCore::executed_total() const noexcept {
  std::uint64_t sum = 0;
  for (const auto& w : workers_) sum += w->executed.load(std::memory_order_relaxed);
  return sum;
}

std::uint64_t SchedulerCore::stolen_total() const noexcept {
  std::uint64_t sum = 0;
  for (const auto& w : workers_) sum += w->stolen.load(std::memory_order_relaxed);
  return sum;
}

}  // namespace ordo::detail
