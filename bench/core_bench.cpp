// ordo_bench_core: core scheduling workloads, ordo beside oneTBB (and the naive
// pool) in one binary and one run. Workload definitions and names follow
// docs/benchmarks.md; each workload checks its own result.
#include <benchmark/benchmark.h>
#include <tbb/global_control.h>
#include <tbb/task_group.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "bench_support.hpp"
#include "naive_pool.hpp"
#include "ordo/ordo.hpp"

namespace {

using ordo::bench::PaddedCounters;

unsigned pool_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

// One scheduler for the whole binary: start-up is not what is measured.
ordo::Scheduler& scheduler() {
  static ordo::Scheduler s{{.workers = pool_threads(), .name = "bench"}};
  return s;
}

// --- fib: a task per call, no serial cutoff -------------------------------

long fib_ordo(ordo::Scheduler& s, int n) {
  if (n < 2) return n;
  long a = 0;
  ordo::TaskGroup g(s);
  g.spawn([&] { a = fib_ordo(s, n - 1); });
  long b = fib_ordo(s, n - 2);
  g.wait();
  return a + b;
}

long fib_tbb(int n) {
  if (n < 2) return n;
  long a = 0;
  tbb::task_group g;
  g.run([&] { a = fib_tbb(n - 1); });
  long b = fib_tbb(n - 2);
  g.wait();
  return a + b;
}

long fib_serial(int n) { return n < 2 ? n : fib_serial(n - 1) + fib_serial(n - 2); }

long expected_fib(int n) {
  long a = 0, b = 1;
  for (int i = 0; i < n; ++i) {
    long c = a + b;
    a = b;
    b = c;
  }
  return a;
}

void check_fib(benchmark::State& state, long got, int n) {
  if (got != expected_fib(n)) state.SkipWithError(("fib result " + std::to_string(got) + " is wrong").c_str());
}

void BM_fib_ordo(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  auto& s = scheduler();
  long got = 0;
  for (auto _ : state) got = s.submit([&s, n] { return fib_ordo(s, n); }).get();
  check_fib(state, got, n);
}

// The same with the tracer recording every task (room for all of them, so
// nothing is dropped): what tracing costs while it is on.
void BM_fib_ordo_traced(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  auto& s = scheduler();
  long got = 0;
  for (auto _ : state) {
    state.PauseTiming();
    s.start_tracing(std::size_t{1} << 22);  // clears the previous iteration's events
    state.ResumeTiming();
    got = s.submit([&s, n] { return fib_ordo(s, n); }).get();
    state.PauseTiming();
    s.stop_tracing();
    state.ResumeTiming();
  }
  state.counters["dropped"] = static_cast<double>(s.trace_events_dropped());
  check_fib(state, got, n);
}

void BM_fib_tbb(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  long got = 0;
  for (auto _ : state) got = fib_tbb(n);
  check_fib(state, got, n);
}

void BM_fib_serial(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  long got = 0;
  for (auto _ : state) {
    got = fib_serial(n);
    benchmark::DoNotOptimize(got);
  }
  check_fib(state, got, n);
}

// --- spawn_external: one outside thread submits N tiny tasks, then waits ---

void check_count(benchmark::State& state, std::uint64_t got, std::uint64_t want) {
  if (got != want) {
    state.SkipWithError(("counted " + std::to_string(got) + " tasks, expected " + std::to_string(want)).c_str());
  }
}

void BM_spawn_external_ordo(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto& s = scheduler();
  PaddedCounters counters;
  for (auto _ : state) {
    counters.reset();
    ordo::TaskGroup g(s);
    for (std::size_t i = 0; i < n; ++i) g.spawn([&counters] { counters.add_here(); });
    g.wait();
    check_count(state, counters.sum(), n);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

void BM_spawn_external_tbb(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  PaddedCounters counters;
  for (auto _ : state) {
    counters.reset();
    tbb::task_group g;
    for (std::size_t i = 0; i < n; ++i) g.run([&counters] { counters.add_here(); });
    g.wait();
    check_count(state, counters.sum(), n);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

void BM_spawn_external_naive(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  ordo::bench::NaivePool pool(pool_threads());
  PaddedCounters counters;
  for (auto _ : state) {
    counters.reset();
    for (std::size_t i = 0; i < n; ++i) pool.submit([&counters] { counters.add_here(); });
    pool.wait_idle();
    check_count(state, counters.sum(), n);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

// --- fanout: one task inside the pool spawns N children by recursive halving

void fan_ordo(ordo::Scheduler& s, std::size_t lo, std::size_t hi, PaddedCounters& c) {
  while (hi - lo > 1) {
    ordo::TaskGroup g(s);
    const std::size_t mid = lo + (hi - lo) / 2;
    g.spawn([&s, lo, mid, &c] { fan_ordo(s, lo, mid, c); });
    fan_ordo(s, mid, hi, c);
    g.wait();
    return;
  }
  c.add_here();
}

void fan_tbb(std::size_t lo, std::size_t hi, PaddedCounters& c) {
  if (hi - lo > 1) {
    tbb::task_group g;
    const std::size_t mid = lo + (hi - lo) / 2;
    g.run([lo, mid, &c] { fan_tbb(lo, mid, c); });
    fan_tbb(mid, hi, c);
    g.wait();
    return;
  }
  c.add_here();
}

void BM_fanout_ordo(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto& s = scheduler();
  PaddedCounters counters;
  for (auto _ : state) {
    counters.reset();
    s.submit([&] { fan_ordo(s, 0, n, counters); }).get();
    check_count(state, counters.sum(), n);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

void BM_fanout_tbb(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  PaddedCounters counters;
  for (auto _ : state) {
    counters.reset();
    tbb::task_group root;
    root.run([&] { fan_tbb(0, n, counters); });
    root.wait();
    check_count(state, counters.sum(), n);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

// --- idle_cpu: CPU burnt by a pool that sits idle for 1 s after a burst ----

template <class Burst>
void measure_idle(benchmark::State& state, Burst&& burst) {
  double cpu = 0;
  for (auto _ : state) {
    burst();
    const double before = ordo::bench::process_cpu_seconds();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    cpu = ordo::bench::process_cpu_seconds() - before;
  }
  state.counters["cpu_s"] = cpu;
}

void BM_idle_cpu_ordo(benchmark::State& state) {
  auto& s = scheduler();
  measure_idle(state, [&] {
    PaddedCounters c;
    ordo::TaskGroup g(s);
    for (int i = 0; i < 10000; ++i) g.spawn([&c] { c.add_here(); });
    g.wait();
  });
}

void BM_idle_cpu_tbb(benchmark::State& state) {
  measure_idle(state, [] {
    PaddedCounters c;
    tbb::task_group g;
    for (int i = 0; i < 10000; ++i) g.run([&c] { c.add_here(); });
    g.wait();
  });
}

}  // namespace

int main(int argc, char** argv) {
  // oneTBB gets the same number of threads as ordo's pool.
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, pool_threads());
  using benchmark::RegisterBenchmark;
  RegisterBenchmark("fib/ordo", BM_fib_ordo)->Arg(30)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("fib/ordo_traced", BM_fib_ordo_traced)->Arg(30)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("fib/tbb", BM_fib_tbb)->Arg(30)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("fib/serial", BM_fib_serial)->Arg(30)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("spawn_external/ordo", BM_spawn_external_ordo)->Arg(1000000)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("spawn_external/tbb", BM_spawn_external_tbb)->Arg(1000000)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("spawn_external/naive", BM_spawn_external_naive)->Arg(1000000)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("fanout/ordo", BM_fanout_ordo)->Arg(1000000)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("fanout/tbb", BM_fanout_tbb)->Arg(1000000)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("idle_cpu/ordo", BM_idle_cpu_ordo)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  RegisterBenchmark("idle_cpu/tbb", BM_idle_cpu_tbb)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  ordo::bench::register_closing_probe();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
