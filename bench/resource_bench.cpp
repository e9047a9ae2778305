// ordo_bench_resource: resource caps, ordo's parked waiters beside a counting
// semaphore taken inside oneTBB tasks and oneTBB's flow-graph limiter_node,
// in one binary and one run. Definitions follow docs/benchmarks.md; each
// workload checks its own result (the cap is never exceeded, all tasks ran).
#include <benchmark/benchmark.h>
#include <tbb/flow_graph.h>
#include <tbb/global_control.h>
#include <tbb/task_group.h>

#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"
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

// Counts finished tasks; the one that reaches `target` wakes the waiting
// thread, which sleeps on the counter until then. (A waiter polling every
// few tens of microseconds instead preempts a worker each time it wakes: on
// two cores that cost resource_cap/ordo about a tenth of its makespan, a
// cost that oneTBB's waits, which join the work, never pay.)
struct Countdown {
  void reset(int n) {
    target = n;
    done.store(0, std::memory_order_relaxed);  // relaxed: published to the workers by the submissions
  }
  void finished_one() {
    // acq_rel: the last task's release publishes every task's effects to the
    // waiter's acquire load; the others only count.
    if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == target) done.notify_all();
  }
  void wait() const {
    for (int seen; (seen = done.load(std::memory_order_acquire)) < target;) done.wait(seen, std::memory_order_acquire);
  }
  int count() const { return done.load(std::memory_order_acquire); }
  int target = 0;
  std::atomic<int> done{0};
};

// --- acquire_release: an uncontended permit on a submitted task --------------

// Plain and with-permit batches alternate, kPairs times per iteration, and
// each counter is a median: of every batch's ns per task, and of the
// differences within each pair. On this shared VM one batch of either kind
// can take twice as long as the next, so the last pair alone (what this
// reported until round twelve) put `ns_over_plain` anywhere from 25 to 225 ns
// for the same build.
constexpr int kPairs = 5;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t mid = v.size() / 2;
  return v.size() % 2 != 0 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

void BM_acquire_release_ordo(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  Countdown plain, with_permit;  // outlive the scheduler: its last task may still be notifying
  ordo::Scheduler s{{.workers = pool_threads()}};
  auto pool = s.resource_group("pool", 1u << 30);  // never the bottleneck
  auto ns_per_task = [n](Clock::time_point since) {
    return std::chrono::duration<double, std::nano>(Clock::now() - since).count() / n;
  };
  std::vector<double> plain_ns, with_ns, over_ns;
  for (auto _ : state) {
    for (int pair = 0; pair < kPairs; ++pair) {
      plain.reset(n);
      auto t0 = Clock::now();
      for (int i = 0; i < n; ++i) s.post([&plain] { plain.finished_one(); });
      plain.wait();
      plain_ns.push_back(ns_per_task(t0));
      with_permit.reset(n);
      t0 = Clock::now();
      for (int i = 0; i < n; ++i) s.post([&with_permit] { with_permit.finished_one(); }, {.needs = {{pool, 1}}});
      with_permit.wait();
      with_ns.push_back(ns_per_task(t0));
      over_ns.push_back(with_ns.back() - plain_ns.back());
    }
  }
  // The last task notifies the countdown from its body and returns its
  // permit after: the drain is what waits for that.
  s.shutdown(ordo::ShutdownMode::drain);
  if (pool.stats().in_use != 0) state.SkipWithError("permits were not all returned");
  state.counters["plain_ns_per_task"] = median(plain_ns);
  state.counters["with_permit_ns_per_task"] = median(with_ns);
  state.counters["ns_over_plain"] = median(over_ns);
}

// --- resource_cap: 20,000 tasks that need `db` among 200,000 CPU tasks ---------

constexpr int kDbTasks = 20000;
constexpr int kCpuTasks = 200000;
constexpr auto kDbHold = 50us;
constexpr auto kCpuWork = 5us;

std::uint64_t db_limit() { return std::max(1u, pool_threads() - 1); }

double thread_cpu_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

// The makespan no scheduler can beat on pool_threads() cores: the work
// spread over every core, or the db tasks one after another at the limit,
// whichever is longer. `submit_cpu_ms` (the submitting thread's CPU time,
// which competes with the workers for the same cores) moves it up by its
// share of each core: floor_with_submitter_ms.
double floor_ms(double submit_cpu_ms) {
  const double work_ms = (kDbTasks * std::chrono::duration<double, std::milli>(kDbHold).count() +
                          kCpuTasks * std::chrono::duration<double, std::milli>(kCpuWork).count() + submit_cpu_ms) /
                         pool_threads();
  const double db_chain_ms =
      kDbTasks * std::chrono::duration<double, std::milli>(kDbHold).count() / static_cast<double>(db_limit());
  return std::max(work_ms, db_chain_ms);
}

struct Cap {
  Cap() { done.reset(kDbTasks + kCpuTasks); }
  std::atomic<int> in_db{0};
  std::atomic<int> max_in_db{0};
  Countdown done;
  double submit_cpu_ms = 0;  // the submitting thread's, for submit_mix()
  void db_body() {
    const int now = in_db.fetch_add(1) + 1;
    int seen = max_in_db.load();
    while (now > seen && !max_in_db.compare_exchange_weak(seen, now)) {
    }
    spin_for(kDbHold);
    in_db.fetch_sub(1);
    done.finished_one();
  }
  void cpu_body() {
    spin_for(kCpuWork);
    done.finished_one();
  }
  void report(benchmark::State& state) {
    state.counters["max_in_db"] = max_in_db.load();
    state.counters["limit"] = static_cast<double>(db_limit());
    state.counters["submit_cpu_ms"] = submit_cpu_ms;
    state.counters["floor_ms"] = floor_ms(0);
    state.counters["floor_with_submitter_ms"] = floor_ms(submit_cpu_ms);
    if (max_in_db.load() > static_cast<int>(db_limit())) state.SkipWithError("the db limit was exceeded");
    if (done.count() != kDbTasks + kCpuTasks) state.SkipWithError("not every task ran");
    state.SetItemsProcessed(kDbTasks + kCpuTasks);
  }
};

// Every 11th task needs the database, the others only CPU.
template <class Db, class Cpu>
void submit_mix(Cap& cap, Db&& db, Cpu&& cpu) {
  const double cpu_before = thread_cpu_ms();
  int db_left = kDbTasks, cpu_left = kCpuTasks;
  for (int i = 0; db_left + cpu_left > 0; ++i) {
    if ((i % 11 == 0 && db_left > 0) || cpu_left == 0) {
      db();
      --db_left;
    } else {
      cpu();
      --cpu_left;
    }
  }
  cap.submit_cpu_ms = thread_cpu_ms() - cpu_before;
}

// Each system runs the workload once untimed before the timed run. A first
// run in the process pays for fresh memory (page faults on this VM: ~11 us a
// page, 40-100 ms for the first 220,000 tasks), and the systems run one after
// another in one process: without the warm-up round a later system reused
// what an earlier one had faulted in (tbb_flow ran on tbb_blocking's freed
// memory) while the first paid in full.
template <class RunOnce>
void after_a_warm_up(benchmark::State& state, RunOnce run_once) {
  {
    Cap warm_up;
    run_once(warm_up);
    warm_up.report(state);  // checked too; the timed run's figures replace its counters
  }
  for (auto _ : state) {
    Cap cap;  // outlives what run_once creates: its last task may still be notifying
    run_once(cap);
    cap.report(state);
  }
}

void BM_resource_cap_ordo(benchmark::State& state) {
  after_a_warm_up(state, [](Cap& cap) {
    ordo::Scheduler s{{.workers = pool_threads()}};
    auto db = s.resource_group("db", db_limit());
    submit_mix(cap, [&] { s.post([&cap] { cap.db_body(); }, {.needs = {{db, 1}}}); },
               [&] { s.post([&cap] { cap.cpu_body(); }); });
    cap.done.wait();
  });
}

void BM_resource_cap_tbb_blocking(benchmark::State& state) {
  after_a_warm_up(state, [](Cap& cap) {
    std::counting_semaphore<> db(static_cast<std::ptrdiff_t>(db_limit()));
    tbb::task_group g;
    submit_mix(
        cap, [&] {
          g.run([&] {
            db.acquire();  // holds the worker while it waits
            cap.db_body();
            db.release();
          });
        },
        [&] { g.run([&cap] { cap.cpu_body(); }); });
    g.wait();
  });
}

void BM_resource_cap_tbb_flow(benchmark::State& state) {
  using tbb::flow::continue_msg;
  after_a_warm_up(state, [](Cap& cap) {
    tbb::flow::graph g;
    tbb::flow::queue_node<continue_msg> db_queue(g);
    tbb::flow::limiter_node<continue_msg> limiter(g, db_limit());
    tbb::flow::function_node<continue_msg, continue_msg> db_node(g, tbb::flow::unlimited, [&](const continue_msg&) {
      cap.db_body();
      return continue_msg();
    });
    tbb::flow::function_node<int> cpu_node(g, tbb::flow::unlimited, [&](int) { cap.cpu_body(); });
    tbb::flow::make_edge(db_queue, limiter);
    tbb::flow::make_edge(limiter, db_node);
    tbb::flow::make_edge(db_node, limiter.decrementer());
    submit_mix(cap, [&] { db_queue.try_put(continue_msg()); }, [&] { cpu_node.try_put(0); });
    g.wait_for_all();
  });
}

}  // namespace

int main(int argc, char** argv) {
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, pool_threads());
  using benchmark::RegisterBenchmark;
  RegisterBenchmark("acquire_release/ordo", BM_acquire_release_ordo)->Arg(200000)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);
  for (auto [name, fn] : {std::pair{"resource_cap/ordo", &BM_resource_cap_ordo},
                          std::pair{"resource_cap/tbb_blocking", &BM_resource_cap_tbb_blocking},
                          std::pair{"resource_cap/tbb_flow", &BM_resource_cap_tbb_flow}}) {
    RegisterBenchmark(name, fn)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  ordo::bench::register_closing_probe();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
