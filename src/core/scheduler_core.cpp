// SchedulerCore construction: option validation, the level policies (the
// weighted schedule, age bounds), reservations, and the per-thread context.
// The rest of SchedulerCore lives in queues.cpp (submitting and finding
// work), worker_loop.cpp (running tasks) and shutdown.cpp (shutdown, stats).
#include "core/scheduler_core.hpp"

#include <algorithm>
#include <string>

#include "ordo/errors.hpp"

namespace ordo::detail {

thread_local constinit ThreadContext tls_context{nullptr, nullptr, nullptr, nullptr, 0, nullptr};

Parker* cache_this_thread_parker() noexcept {
  tls_context.parker = Parker::current();
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
  // seq_cst fence: pairs with resubmit()'s, so that a worker that pushed a
  // grant for a level it no longer serves either sees that and wakes
  // another, or is seen by those woken here.
  std::atomic_thread_fence(std::memory_order_seq_cst);
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

}  // namespace ordo::detail
