// ordo_bench_priority: how long urgent work waits behind a flood of background
// work, ordo beside oneTBB's arena priorities and a naive FIFO pool, in one
// binary and one run; and what a worker reserved for urgent work buys.
// Definitions: docs/benchmarks.md.
#include <benchmark/benchmark.h>
#include <tbb/global_control.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"
#include "naive_pool.hpp"
#include "ordo/ordo.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kLowTasks = 200000;
constexpr auto kLowTaskDuration = 20us;
constexpr int kHighTasks = 1000;
constexpr auto kHighInterval = 200us;

unsigned pool_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

void spin_for(std::chrono::nanoseconds d) {
  const auto end = Clock::now() + d;
  while (Clock::now() < end) {
  }
}

double percentile_us(std::vector<double>& v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

// One flood: kLowTasks background tasks saturate the pool, then a separate
// thread submits kHighTasks urgent tasks kHighInterval apart; each urgent task
// records how long it waited to start. When the last one has run, the rest of
// the flood is cut short (its tasks return at once) and drained.
struct Flood {
  std::atomic<bool> abort_low{false};
  std::atomic<int> low_done{0};
  std::atomic<int> high_done{0};
  std::vector<double> waits_us = std::vector<double>(kHighTasks, 0.0);

  std::function<void()> low_task() {
    return [this] {
      if (!abort_low.load(std::memory_order_relaxed)) spin_for(kLowTaskDuration);
      low_done.fetch_add(1, std::memory_order_relaxed);
    };
  }
  std::function<void()> high_task(int i) {
    const auto submitted = Clock::now();
    return [this, i, submitted] {
      waits_us[i] = std::chrono::duration<double, std::micro>(Clock::now() - submitted).count();
      high_done.fetch_add(1, std::memory_order_release);
    };
  }

  template <class SubmitLow, class SubmitHigh>
  void run(SubmitLow&& submit_low, SubmitHigh&& submit_high) {
    for (int i = 0; i < kLowTasks; ++i) submit_low(low_task());
    std::thread submitter([&] {
      for (int i = 0; i < kHighTasks; ++i) {
        submit_high(high_task(i));
        std::this_thread::sleep_for(kHighInterval);
      }
    });
    submitter.join();
    while (high_done.load(std::memory_order_acquire) < kHighTasks) std::this_thread::sleep_for(100us);
    abort_low.store(true);
    while (low_done.load() < kLowTasks) std::this_thread::sleep_for(100us);
  }

  void report(benchmark::State& state) {
    if (high_done.load() != kHighTasks || low_done.load() != kLowTasks) {
      state.SkipWithError("not every task ran");
      return;
    }
    state.counters["p50_us"] = percentile_us(waits_us, 0.50);
    state.counters["p99_us"] = percentile_us(waits_us, 0.99);
    state.counters["max_us"] = percentile_us(waits_us, 1.0);
    state.SetItemsProcessed(kLowTasks + kHighTasks);
  }
};

void BM_priority_flood_ordo(benchmark::State& state) {
  for (auto _ : state) {
    ordo::Scheduler s{{.workers = pool_threads(), .levels = 3}};
    Flood flood;
    flood.run([&](auto fn) { s.post(std::move(fn), {.priority = ordo::low}); },
              [&](auto fn) { s.post(std::move(fn), {.priority = ordo::high}); });
    flood.report(state);
  }
}

void BM_priority_flood_ordo_fifo(benchmark::State& state) {
  for (auto _ : state) {
    ordo::Scheduler s{{.workers = pool_threads(), .levels = 1}};
    Flood flood;
    flood.run([&](auto fn) { s.post(std::move(fn)); }, [&](auto fn) { s.post(std::move(fn)); });
    flood.report(state);
  }
}

void BM_priority_flood_tbb_arena(benchmark::State& state) {
  const int n = static_cast<int>(pool_threads());
  for (auto _ : state) {
    tbb::task_arena low_arena(n, 0, tbb::task_arena::priority::low);
    tbb::task_arena high_arena(n, 0, tbb::task_arena::priority::high);
    Flood flood;
    flood.run([&](auto fn) { low_arena.enqueue(std::move(fn)); },
              [&](auto fn) { high_arena.enqueue(std::move(fn)); });
    flood.report(state);
  }
}

void BM_priority_flood_naive(benchmark::State& state) {
  for (auto _ : state) {
    ordo::bench::NaivePool pool(pool_threads());
    Flood flood;
    flood.run([&](auto fn) { pool.submit(std::move(fn)); }, [&](auto fn) { pool.submit(std::move(fn)); });
    pool.wait_idle();
    flood.report(state);
  }
}

// priority_reserved: low tasks of 1 ms keep every worker busy while another
// thread submits a high task every 2 ms; each high task records how long it
// waited to start. A scheduler that never preempts makes it wait for a low
// task to end (about its length); a worker reserved for high work is idle
// when it arrives. low_per_s is the low work done meanwhile: what the
// reservation costs.
constexpr int kReservedHighTasks = 500;
constexpr auto kReservedHighInterval = 2ms;
constexpr auto kReservedLowDuration = 1ms;

struct ReservedRun {
  std::atomic<bool> stop_low{false};
  std::atomic<int> low_done{0};      // ran their full millisecond
  std::atomic<int> low_finished{0};  // ran, or were cut short at the end
  std::atomic<int> high_done{0};
  std::vector<double> waits_us = std::vector<double>(kReservedHighTasks, 0.0);
  int low_submitted = 0;
  double low_per_s = 0;
  bool low_ran_out = false;

  std::function<void()> low_task() {
    return [this] {
      if (!stop_low.load(std::memory_order_relaxed)) {
        spin_for(kReservedLowDuration);
        low_done.fetch_add(1, std::memory_order_relaxed);
      }
      low_finished.fetch_add(1, std::memory_order_relaxed);
    };
  }
  std::function<void()> high_task(int i) {
    const auto submitted = Clock::now();
    return [this, i, submitted] {
      waits_us[i] = std::chrono::duration<double, std::micro>(Clock::now() - submitted).count();
      high_done.fetch_add(1, std::memory_order_release);
    };
  }

  template <class SubmitLow, class SubmitHigh>
  void run(SubmitLow&& submit_low, SubmitHigh&& submit_high) {
    // Twice what every worker could run while the high tasks arrive.
    low_submitted = static_cast<int>(pool_threads()) * 2 * kReservedHighTasks *
                    static_cast<int>(kReservedHighInterval / kReservedLowDuration);
    for (int i = 0; i < low_submitted; ++i) submit_low(low_task());
    std::this_thread::sleep_for(5ms);  // every worker is in a low task
    const int low_before = low_done.load();
    const auto t0 = Clock::now();
    std::thread submitter([&] {
      for (int i = 0; i < kReservedHighTasks; ++i) {
        submit_high(high_task(i));
        std::this_thread::sleep_for(kReservedHighInterval);
      }
    });
    submitter.join();
    while (high_done.load(std::memory_order_acquire) < kReservedHighTasks) std::this_thread::sleep_for(100us);
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    low_per_s = (low_done.load() - low_before) / seconds;
    low_ran_out = low_finished.load() >= low_submitted;
    stop_low.store(true);
    while (low_finished.load() < low_submitted) std::this_thread::sleep_for(100us);
  }

  void report(benchmark::State& state) {
    if (high_done.load() != kReservedHighTasks || low_finished.load() != low_submitted) {
      state.SkipWithError("not every task ran");
      return;
    }
    if (low_ran_out) {
      state.SkipWithError("the low work ran out before the last high task: the workers were not kept busy");
      return;
    }
    state.counters["p50_us"] = percentile_us(waits_us, 0.50);
    state.counters["p99_us"] = percentile_us(waits_us, 0.99);
    state.counters["max_us"] = percentile_us(waits_us, 1.0);
    state.counters["low_per_s"] = low_per_s;
  }
};

void BM_priority_reserved_ordo(benchmark::State& state, bool reserved) {
  for (auto _ : state) {
    ordo::Scheduler s{{.workers = pool_threads(), .levels = 3}};
    if (reserved) {
      if (pool_threads() < 2) {
        state.SkipWithError("reserving a worker needs at least two");
        return;
      }
      s.reserve(ordo::high, 1);
    }
    ReservedRun r;
    r.run([&](auto fn) { s.post(std::move(fn), {.priority = ordo::low}); },
          [&](auto fn) { s.post(std::move(fn), {.priority = ordo::high}); });
    r.report(state);
  }
}

void BM_priority_reserved_tbb_arena(benchmark::State& state) {
  const int n = static_cast<int>(pool_threads());
  for (auto _ : state) {
    tbb::task_arena low_arena(n, 0, tbb::task_arena::priority::low);
    tbb::task_arena high_arena(n, 0, tbb::task_arena::priority::high);
    ReservedRun r;
    r.run([&](auto fn) { low_arena.enqueue(std::move(fn)); }, [&](auto fn) { high_arena.enqueue(std::move(fn)); });
    r.report(state);
  }
}

// A steady stream of high tasks keeps every worker busy (each high task queues
// its successor); one low task must still start, within the sum of the age
// bounds it crosses (low -> normal -> high) plus scheduling slack.
void BM_priority_aging_ordo(benchmark::State& state) {
  constexpr auto kLowBound = 10ms;
  constexpr auto kNormalBound = 2ms;
  for (auto _ : state) {
    ordo::Scheduler s{{.workers = pool_threads(), .levels = 3, .age_bounds = {0ns, kNormalBound, kLowBound}}};
    std::atomic<bool> stop{false};
    std::atomic<int> chains_alive{0};
    std::function<void()> link = [&] {
      spin_for(20us);
      if (!stop.load(std::memory_order_relaxed)) {
        s.post(link);  // inherits high
      } else {
        chains_alive.fetch_sub(1);
      }
    };
    const int chains = 2 * static_cast<int>(pool_threads());
    for (int i = 0; i < chains; ++i) {
      chains_alive.fetch_add(1);
      s.post(link, {.priority = ordo::high});
    }
    std::this_thread::sleep_for(5ms);  // the flood is established
    const auto submitted = Clock::now();
    auto low = s.submit([] { return Clock::now(); }, {.priority = ordo::low});
    const auto started = low.get();
    const bool flood_still_on = chains_alive.load() == chains;
    stop.store(true);
    s.shutdown();
    const double waited_ms = std::chrono::duration<double, std::milli>(started - submitted).count();
    state.counters["low_wait_ms"] = waited_ms;
    state.counters["bound_ms"] = std::chrono::duration<double, std::milli>(kLowBound + kNormalBound).count();
    if (!flood_still_on) state.SkipWithError("the high-priority stream stopped before the low task ran");
    if (waited_ms < 12.0) state.SkipWithError("low task started before its age bounds had passed");
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Enqueued arena work is run by TBB's worker threads only: give it as many
  // workers as ordo has (the main thread is one more thread).
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, pool_threads() + 1);
  using benchmark::RegisterBenchmark;
  for (auto [name, fn] : {std::pair{"priority_flood/ordo", &BM_priority_flood_ordo},
                          std::pair{"priority_flood/ordo_fifo", &BM_priority_flood_ordo_fifo},
                          std::pair{"priority_flood/tbb_arena", &BM_priority_flood_tbb_arena},
                          std::pair{"priority_flood/naive", &BM_priority_flood_naive}}) {
    RegisterBenchmark(name, fn)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  RegisterBenchmark("priority_aging/ordo", BM_priority_aging_ordo)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("priority_reserved/ordo", BM_priority_reserved_ordo, true)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("priority_reserved/ordo_unreserved", BM_priority_reserved_ordo, false)
      ->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("priority_reserved/tbb_arena", BM_priority_reserved_tbb_arena)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
