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

// What a flood is made of: low_tasks background tasks of low_duration
// saturate the pool (queued at once), then a separate thread submits
// high_tasks urgent tasks high_interval apart.
struct FloodShape {
  int low_tasks;
  std::chrono::nanoseconds low_duration;
  int high_tasks;
  std::chrono::nanoseconds high_interval;
};
// priority_flood: many short low tasks, urgent ones 200 us apart.
constexpr FloodShape kFlood{200000, 20us, 1000, 200us};

// One flood of `shape`. Each urgent task records how long it waited to start;
// the low tasks that ran in full while the urgent ones arrived give
// low_per_s. When the last urgent task has run, the rest of the flood is cut
// short (its tasks return at once) and drained.
struct Flood {
  explicit Flood(FloodShape shape) : shape(shape), waits_us(static_cast<std::size_t>(shape.high_tasks), 0.0) {}

  const FloodShape shape;
  std::atomic<bool> abort_low{false};
  std::atomic<int> low_full{0};  // ran their whole duration
  std::atomic<int> low_done{0};  // ran, or were cut short
  std::atomic<int> high_done{0};
  std::vector<double> waits_us;
  double low_per_s = 0;
  bool low_ran_out = false;  // every low task had finished before the last urgent one

  std::function<void()> low_task() {
    return [this] {
      if (!abort_low.load(std::memory_order_relaxed)) {
        spin_for(shape.low_duration);
        low_full.fetch_add(1, std::memory_order_relaxed);
      }
      low_done.fetch_add(1, std::memory_order_relaxed);
    };
  }
  std::function<void()> high_task(int i) {
    const auto submitted = Clock::now();
    return [this, i, submitted] {
      waits_us[static_cast<std::size_t>(i)] = std::chrono::duration<double, std::micro>(Clock::now() - submitted).count();
      high_done.fetch_add(1, std::memory_order_release);
    };
  }

  template <class SubmitLow, class SubmitHigh>
  void run(SubmitLow&& submit_low, SubmitHigh&& submit_high) {
    for (int i = 0; i < shape.low_tasks; ++i) submit_low(low_task());
    const int low_before = low_full.load();
    const auto t0 = Clock::now();
    std::thread submitter([&] {
      for (int i = 0; i < shape.high_tasks; ++i) {
        submit_high(high_task(i));
        std::this_thread::sleep_for(shape.high_interval);
      }
    });
    submitter.join();
    while (high_done.load(std::memory_order_acquire) < shape.high_tasks) std::this_thread::sleep_for(100us);
    low_per_s = (low_full.load() - low_before) / std::chrono::duration<double>(Clock::now() - t0).count();
    low_ran_out = low_done.load() >= shape.low_tasks;
    abort_low.store(true);
    while (low_done.load() < shape.low_tasks) std::this_thread::sleep_for(100us);
  }

  // False (and the benchmark is failed) when a task is missing.
  bool report(benchmark::State& state) {
    if (high_done.load() != shape.high_tasks || low_done.load() != shape.low_tasks) {
      state.SkipWithError("not every task ran");
      return false;
    }
    state.counters["p50_us"] = percentile_us(waits_us, 0.50);
    state.counters["p99_us"] = percentile_us(waits_us, 0.99);
    state.counters["max_us"] = percentile_us(waits_us, 1.0);
    return true;
  }
};

void BM_priority_flood_ordo(benchmark::State& state) {
  for (auto _ : state) {
    ordo::Scheduler s{{.workers = pool_threads(), .levels = 3}};
    Flood flood(kFlood);
    flood.run([&](auto fn) { s.post(std::move(fn), {.priority = ordo::low}); },
              [&](auto fn) { s.post(std::move(fn), {.priority = ordo::high}); });
    if (flood.report(state)) state.SetItemsProcessed(kFlood.low_tasks + kFlood.high_tasks);
  }
}

void BM_priority_flood_ordo_fifo(benchmark::State& state) {
  for (auto _ : state) {
    ordo::Scheduler s{{.workers = pool_threads(), .levels = 1}};
    Flood flood(kFlood);
    flood.run([&](auto fn) { s.post(std::move(fn)); }, [&](auto fn) { s.post(std::move(fn)); });
    if (flood.report(state)) state.SetItemsProcessed(kFlood.low_tasks + kFlood.high_tasks);
  }
}

void BM_priority_flood_tbb_arena(benchmark::State& state) {
  const int n = static_cast<int>(pool_threads());
  for (auto _ : state) {
    tbb::task_arena low_arena(n, 0, tbb::task_arena::priority::low);
    tbb::task_arena high_arena(n, 0, tbb::task_arena::priority::high);
    Flood flood(kFlood);
    flood.run([&](auto fn) { low_arena.enqueue(std::move(fn)); },
              [&](auto fn) { high_arena.enqueue(std::move(fn)); });
    if (flood.report(state)) state.SetItemsProcessed(kFlood.low_tasks + kFlood.high_tasks);
  }
}

void BM_priority_flood_naive(benchmark::State& state) {
  for (auto _ : state) {
    ordo::bench::NaivePool pool(pool_threads());
    Flood flood(kFlood);
    flood.run([&](auto fn) { pool.submit(std::move(fn)); }, [&](auto fn) { pool.submit(std::move(fn)); });
    pool.wait_idle();
    if (flood.report(state)) state.SetItemsProcessed(kFlood.low_tasks + kFlood.high_tasks);
  }
}

// priority_reserved: low tasks of 1 ms keep every worker busy while another
// thread submits a high task every 2 ms; each high task records how long it
// waited to start. A scheduler that never preempts makes it wait for a low
// task to end (about its length); a worker reserved for high work is idle
// when it arrives. low_per_s is the low work done meanwhile: what the
// reservation costs. Twice the low work every worker could do while the
// high tasks arrive is queued, so that none runs out of it.
FloodShape reserved_shape() {
  constexpr int kHighTasks = 500;
  constexpr auto kInterval = 2ms;
  constexpr auto kLowDuration = 1ms;
  return {static_cast<int>(pool_threads()) * 2 * kHighTasks * static_cast<int>(kInterval / kLowDuration), kLowDuration,
          kHighTasks, kInterval};
}

void report_reserved(Flood& r, benchmark::State& state) {
  if (!r.report(state)) return;
  if (r.low_ran_out) {
    state.SkipWithError("the low work ran out before the last high task: the workers were not kept busy");
    return;
  }
  state.counters["low_per_s"] = r.low_per_s;
}

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
    Flood r(reserved_shape());
    r.run([&](auto fn) { s.post(std::move(fn), {.priority = ordo::low}); },
          [&](auto fn) { s.post(std::move(fn), {.priority = ordo::high}); });
    report_reserved(r, state);
  }
}

void BM_priority_reserved_tbb_arena(benchmark::State& state) {
  const int n = static_cast<int>(pool_threads());
  for (auto _ : state) {
    tbb::task_arena low_arena(n, 0, tbb::task_arena::priority::low);
    tbb::task_arena high_arena(n, 0, tbb::task_arena::priority::high);
    Flood r(reserved_shape());
    r.run([&](auto fn) { low_arena.enqueue(std::move(fn)); }, [&](auto fn) { high_arena.enqueue(std::move(fn)); });
    report_reserved(r, state);
  }
}

// The floor of a reservation: a thread that does nothing but wait for high
// work, parked on a condition variable and woken for each task (a naive pool
// of one), while the other pool_threads() - 1 threads run the low tasks.
// What it measures is the operating system's (and on a VM the hypervisor's)
// wake-up of a sleeping thread under this load; no scheduler whose reserved
// worker sleeps between high tasks can start them sooner.
void BM_priority_reserved_floor(benchmark::State& state) {
  if (pool_threads() < 2) {
    state.SkipWithError("a dedicated thread beside the low work needs at least two");
    return;
  }
  for (auto _ : state) {
    ordo::bench::NaivePool low_pool(pool_threads() - 1);
    ordo::bench::NaivePool high_pool(1);
    Flood r(reserved_shape());
    r.run([&](auto fn) { low_pool.submit(std::move(fn)); }, [&](auto fn) { high_pool.submit(std::move(fn)); });
    low_pool.wait_idle();
    high_pool.wait_idle();
    report_reserved(r, state);
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
  RegisterBenchmark("priority_reserved/floor", BM_priority_reserved_floor)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  ordo::bench::register_closing_probe();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
