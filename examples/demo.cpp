// ordo-demo: the four stories of ordo, told on real work, with a live
// progress line while each runs and a summary table at the end:
//  1. priorities that hold: a flood of low-priority work, and high-priority
//     requests that keep their latency through it;
//  2. a resource group: a `db` group of 4 caps the queries in flight while
//     CPU work flows on — waiting queries are parked and hold no worker;
//  3. a workflow declared in one place: fan-out, fan-in, a continuation,
//     drawn as Mermaid (and a cycle refused before anything runs);
//  4. durable jobs: a process killed with SIGKILL mid-way, a restart that
//     finishes the work, and the count of what was lost or duplicated;
//  5. a fleet on PostgreSQL (with --pg-conninfo; scripts/demo.sh starts a
//     throwaway server and passes it): three worker processes, one queue, a
//     global `db` group of 4, one worker killed with SIGKILL.
//
// --trace FILE writes the whole run as a Perfetto timeline; --metrics-port
// serves the live stats to Prometheus; --help lists everything.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "demo_durable.hpp"
#if ORDO_HAS_POSTGRES
#include "demo_fleet.hpp"
#endif
#include "demo_metrics.hpp"
#include "demo_progress.hpp"
#include "ordo/ordo.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

bool is_prime(std::uint64_t n) {
  if (n < 2) return false;
  for (std::uint64_t d = 2; d * d <= n; ++d)
    if (n % d == 0) return false;
  return true;
}

std::uint64_t count_primes(std::uint64_t lo, std::uint64_t hi) {
  std::uint64_t c = 0;
  for (std::uint64_t n = lo; n < hi; ++n) c += is_prime(n) ? 1 : 0;
  return c;
}

// A slice of real CPU work: about a quarter of a millisecond.
void cpu_slice() {
  volatile std::uint64_t primes = count_primes(0, 20'000);
  (void)primes;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

std::string fmt(const char* format, auto... args) {
  char buf[256];
  std::snprintf(buf, sizeof buf, format, args...);
  return buf;
}

struct SummaryRow {
  std::string story, result;
};

// ---- 0. the same work serially and on the pool ---------------------------
SummaryRow warm_up(ordo::Scheduler& sched) {
  const std::uint64_t limit = 2'000'000, chunk = 20'000;
  auto t0 = Clock::now();
  const std::uint64_t serial = count_primes(0, limit);
  const double serial_ms = ms_since(t0);
  std::atomic<std::uint64_t> total{0};
  t0 = Clock::now();
  ordo::TaskGroup g(sched);
  for (std::uint64_t lo = 0; lo < limit; lo += chunk) {
    g.spawn([&total, lo, hi = std::min(limit, lo + chunk)] {
      ordo::trace_label("count primes");
      total.fetch_add(count_primes(lo, hi));
    });
  }
  g.wait();
  const double parallel_ms = ms_since(t0);
  if (total.load() != serial) throw std::runtime_error("prime counts differ");
  std::printf("  primes below 2,000,000 in 100 tasks: %llu; serial %.1f ms, ordo %.1f ms (x%.2f)\n",
              static_cast<unsigned long long>(serial), serial_ms, parallel_ms, serial_ms / parallel_ms);
  return {"0. parallel vs serial", fmt("x%.2f on %u workers", serial_ms / parallel_ms, sched.worker_count())};
}

// ---- 1. a low-priority flood, high-priority requests keep their latency --
SummaryRow priority_flood(ordo::Scheduler& sched, int flood) {
  std::atomic<int> low_done{0};
  std::mutex mu;
  std::vector<double> high_start_us;  // submit -> start of each high request
  std::atomic<bool> flooding{true};
  std::printf("  %d low-priority reports queued at once; meanwhile a high-priority request every 2 ms\n", flood);
  const auto t0 = Clock::now();
  for (int i = 0; i < flood; ++i) {
    sched.post([&] {
      ordo::trace_label("low: report");
      cpu_slice();
      low_done.fetch_add(1, std::memory_order_relaxed);
    }, {.priority = ordo::low});
  }
  std::thread frontend([&] {
    std::vector<ordo::Handle<void>> pending;
    while (flooding.load()) {
      const auto submitted = Clock::now();
      pending.push_back(sched.submit([&, submitted] {
        ordo::trace_label("high: request");
        const double us = std::chrono::duration<double, std::micro>(Clock::now() - submitted).count();
        std::lock_guard lock(mu);
        high_start_us.push_back(us);
      }, {.priority = ordo::high}));
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    for (auto& h : pending) h.wait();
  });
  {
    demo::ProgressLine line([&] {
      std::vector<double> copy;
      {
        std::lock_guard lock(mu);
        copy = high_start_us;
      }
      const auto st = sched.stats();
      return fmt("low: %5d/%d done, %5llu queued | high: %4zu served, start p50 %6.1f us, p99 %7.1f us", low_done.load(),
                 flood, static_cast<unsigned long long>(st.per_level[2].queued), copy.size(), percentile(copy, 0.5),
                 percentile(copy, 0.99));
    });
    while (low_done.load() < flood) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    flooding = false;
    frontend.join();
  }
  const double elapsed = ms_since(t0);
  const auto st = sched.stats();
  const double high_p99 = percentile(high_start_us, 0.99);
  std::printf("  the flood took %.0f ms; high requests started within %.1f us (p99) — low tasks waited up to %.0f ms\n",
              elapsed, high_p99, st.per_level[2].wait_max_us / 1000.0);
  return {"1. priorities under a flood",
          fmt("high start p99 %.0f us while %d low ran (low waited up to %.0f ms)", high_p99, flood,
              st.per_level[2].wait_max_us / 1000.0)};
}

// ---- 2. a db group of 4 caps the queries; CPU work flows on --------------
SummaryRow resource_cap(ordo::Scheduler& sched, int queries, int cpu_chunks) {
  ordo::ResourceGroup db = sched.resource_group("db", 4);
  std::atomic<int> in_query{0}, max_seen{0}, queries_done{0}, cpu_done{0};
  std::printf("  %d queries (high priority) need 1 of the `db` group's 4 connections (each waits 5 ms on the\n"
              "  \"database\"); %d CPU chunks (normal) need nothing; %u workers\n", queries, cpu_chunks, sched.worker_count());
  const auto t0 = Clock::now();
  std::vector<ordo::Handle<void>> all;
  std::atomic<double> cpu_finished_ms{0}, queries_finished_ms{0};
  for (int i = 0; i < queries; ++i) {
    all.push_back(sched.submit([&] {
      ordo::trace_label("query (db)");
      const int now = in_query.fetch_add(1) + 1;
      int seen = max_seen.load();
      while (now > seen && !max_seen.compare_exchange_weak(seen, now)) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      in_query.fetch_sub(1);
      if (queries_done.fetch_add(1) + 1 == queries) queries_finished_ms = ms_since(t0);
    }, {.priority = ordo::high, .needs = {{db, 1}}}));  // a granted query goes ahead of queued CPU work
  }
  for (int i = 0; i < cpu_chunks; ++i) {
    all.push_back(sched.submit([&] {
      ordo::trace_label("cpu chunk");
      cpu_slice();
      if (cpu_done.fetch_add(1) + 1 == cpu_chunks) cpu_finished_ms = ms_since(t0);
    }));
  }
  {
    demo::ProgressLine line([&] {
      const ordo::ResourceStats rs = db.stats();
      return fmt("db: %llu/%llu in use, %3llu parked (holding no worker) | queries %4d/%d | cpu %5d/%d",
                 static_cast<unsigned long long>(rs.in_use), static_cast<unsigned long long>(rs.limit),
                 static_cast<unsigned long long>(rs.waiting), queries_done.load(), queries, cpu_done.load(), cpu_chunks);
    });
    for (auto& h : all) h.wait();
  }
  const ordo::ResourceStats rs = db.stats();
  std::printf("  at most %d queries ran at once (group's own count: %llu); queries done at %.0f ms (4 at a time: "
              "%d ms at best), CPU work done at %.0f ms beside them\n",
              max_seen.load(), static_cast<unsigned long long>(rs.max_in_use), queries_finished_ms.load(),
              queries * 5 / 4, cpu_finished_ms.load());
  if (max_seen.load() > 4) throw std::runtime_error("the db group let more than 4 queries run at once");
  return {"2. a db group of 4", fmt("max %d in flight (limit 4); queries done at %.0f ms, CPU at %.0f ms",
                                    max_seen.load(), queries_finished_ms.load(), cpu_finished_ms.load())};
}

// ---- 3. a workflow: fan-out, fan-in, continuation ------------------------
SummaryRow workflow_story(ordo::Scheduler& sched) {
  constexpr int kShards = 6;
  std::atomic<std::uint64_t> primes{0};
  ordo::Workflow nightly("nightly");
  nightly.node("extract", [] { cpu_slice(); });
  for (int s = 0; s < kShards; ++s) {
    nightly.node("shard_" + std::to_string(s), [&primes, s] {
      primes += count_primes(static_cast<std::uint64_t>(s) * 100'000, static_cast<std::uint64_t>(s + 1) * 100'000);
    }).after("extract");
  }
  ordo::NodeRef merge = nightly.node("merge", [] { cpu_slice(); });
  for (int s = 0; s < kShards; ++s) merge.after("shard_" + std::to_string(s));
  nightly.node("publish", [] {}, {.priority = ordo::high}).after("merge");
  const auto t0 = Clock::now();
  auto run = nightly.run(sched);
  // A continuation: once the run is done, a report is built from its result.
  auto report = sched.submit([&] {
    run.get();
    return primes.load();
  }).then([](std::uint64_t n) { return "primes below " + std::to_string(kShards * 100'000) + ": " + std::to_string(n); });
  const std::string text = report.get();
  const double elapsed = ms_since(t0);
  std::printf("  %zu nodes, %zu succeeded in %.1f ms; then a continuation: %s\n", nightly.size(),
              run.count(ordo::NodeStatus::succeeded), elapsed, text.c_str());
  std::printf("  as Mermaid (paste into any Markdown that renders it):\n%s", nightly.to_mermaid(&run).c_str());
  std::string refused;
  try {
    ordo::Workflow broken("broken");
    broken.node("a", [] {}).after("c");
    broken.node("b", [] {}).after("a");
    broken.node("c", [] {}).after("b");
    broken.validate();
  } catch (const ordo::InvalidGraph& e) {
    refused = e.what();
    std::printf("  a cyclic workflow is refused before it runs: %s\n", e.what());
  }
  return {"3. a workflow", fmt("%zu/%zu nodes in %.1f ms; cycle refused: %s", run.count(ordo::NodeStatus::succeeded),
                               nightly.size(), elapsed, refused.empty() ? "NO" : "yes")};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ordo-demo: the stories of ordo (priorities, resource groups, workflows, durable jobs, a fleet on "
               "PostgreSQL) on real work, with live progress and a summary table"};
  demo::DurableStoryOptions durable;
  std::string trace_path;
  int metrics_port = 0;
  double hold_seconds = 0;
  int flood = 4000;
  app.add_option("--trace", trace_path,
                 "write the run as a Chrome trace-event JSON timeline to this file (open it in https://ui.perfetto.dev "
                 "or chrome://tracing)");
  app.add_option("--metrics-port", metrics_port,
                 "serve the live stats in the Prometheus text format on http://127.0.0.1:PORT/metrics")
      ->check(CLI::Range(1, 65535));
  app.add_option("--hold", hold_seconds, "with --metrics-port: keep serving this many seconds after the stories")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--flood", flood, "low-priority tasks in story 1 (default 4000)")->check(CLI::PositiveNumber);
  app.add_option("--journal", durable.journal_dir,
                 "run only the durable story, on this journal directory (run again to resume after a crash)");
  app.add_option("--crash-after", durable.crash_after,
                 "kill the durable story's process with SIGKILL after N job effects (with --journal: this run; "
                 "without: the first run of the story)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--jobs", durable.jobs, "durable jobs in story 4 (default 100)")->check(CLI::PositiveNumber);
  app.add_flag("--quiet-child", durable.quiet, "(internal) the crashing first run of story 4")->group("");
  std::string pg_conninfo, pg_worker;
  bool fleet_only = false;
  int fleet_jobs = 240;
  app.add_option("--pg-conninfo", pg_conninfo,
                 "a PostgreSQL server for story 5, the fleet (it works in a database of its own there, dropped at "
                 "the end); without it story 5 is skipped. scripts/demo.sh starts a throwaway server and passes it");
  app.add_flag("--pg-fleet", fleet_only, "run only story 5 (needs --pg-conninfo)");
  app.add_option("--fleet-jobs", fleet_jobs, "jobs in story 5 (default 240)")->check(CLI::Range(30, 100000));
  app.add_option("--pg-worker", pg_worker, "(internal) a worker process of story 5, named so")->group("");
  CLI11_PARSE(app, argc, argv);
#if ORDO_HAS_POSTGRES
  if (!pg_worker.empty()) return demo::fleet_worker(pg_conninfo, pg_worker);
#endif
  if (fleet_only) {
#if ORDO_HAS_POSTGRES
    if (pg_conninfo.empty()) {
      std::fprintf(stderr, "ordo-demo: --pg-fleet needs --pg-conninfo (or run scripts/demo.sh --pg-fleet)\n");
      return 2;
    }
    std::printf("ordo-demo: a fleet of processes on PostgreSQL\n");
    return demo::fleet_story({.conninfo = pg_conninfo, .jobs = fleet_jobs}).exit_code;
#else
    std::fprintf(stderr, "ordo-demo: built without PostgreSQL (ORDO_POSTGRES=OFF): no fleet story\n");
    return 2;
#endif
  }
  if (!durable.journal_dir.empty()) {
    if (!durable.quiet) std::printf("ordo-demo: durable jobs on a journal that outlives this process\n");
    return demo::durable_story(durable).exit_code;
  }

  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  // Four more workers than cores: story 2's queries sleep on the "database".
  ordo::Scheduler sched{{.workers = cores + 4, .levels = 3, .name = "demo"}};
  if (!trace_path.empty()) sched.start_tracing();
  std::optional<demo::MetricsServer> metrics;
  try {
    if (metrics_port != 0) metrics.emplace(metrics_port, [&] { return ordo::to_prometheus(sched.stats(), "demo"); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ordo-demo: %s\n", e.what());
    return 2;
  }
  std::printf("ordo-demo: %u workers on %u cores, %u priority levels%s%s\n", sched.worker_count(), cores,
              sched.level_count(), trace_path.empty() ? "" : ", tracing",
              metrics ? fmt(", metrics on http://127.0.0.1:%d/metrics", metrics_port).c_str() : "");
  const auto started = Clock::now();
  std::vector<SummaryRow> rows;
  try {
    std::printf("\n0. The same work serially and on the pool\n");
    rows.push_back(warm_up(sched));
    std::printf("\n1. Priorities that hold under a flood\n");
    rows.push_back(priority_flood(sched, flood));
    std::printf("\n2. A resource group caps what it must, and nothing else\n");
    rows.push_back(resource_cap(sched, 200, 1500));
    std::printf("\n3. A workflow declared in one place\n");
    rows.push_back(workflow_story(sched));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ordo-demo: %s\n", e.what());
    return 1;
  }
  std::printf("\n4. Durable jobs survive kill -9\n");
  const demo::DurableStoryResult d = demo::durable_story(durable, &sched);
  rows.push_back({"4. durable jobs", fmt("%s; jobs=%d completed=%d lost=%d duplicated=%d",
                                         d.crashed ? "killed mid-way, resumed" : "did not crash", d.jobs, d.completed,
                                         d.lost, d.duplicated)});
  int fleet_exit = 0;
  std::printf("\n5. A fleet of processes on PostgreSQL, one killed\n");
#if ORDO_HAS_POSTGRES
  if (!pg_conninfo.empty()) {
    const demo::FleetStoryResult f = demo::fleet_story({.conninfo = pg_conninfo, .jobs = fleet_jobs});
    fleet_exit = f.exit_code;
    rows.push_back({"5. a fleet on PostgreSQL",
                    fmt("%s; enqueued=%ld completed=%ld lost=%ld duplicated=%ld db peak %ld/4, failover %.0f ms",
                        f.killed ? "1 of 3 killed" : "NOT killed", f.enqueued, f.completed, f.lost, f.duplicated,
                        std::max(f.peak_groups, f.peak_handlers), f.failover_ms)});
  } else {
    std::printf("  skipped: no --pg-conninfo (scripts/demo.sh starts a throwaway PostgreSQL and runs it)\n");
    rows.push_back({"5. a fleet on PostgreSQL", "skipped (no --pg-conninfo)"});
  }
#else
  std::printf("  skipped: ordo was built without PostgreSQL (ORDO_POSTGRES=OFF)\n");
  rows.push_back({"5. a fleet on PostgreSQL", "skipped (built without PostgreSQL)"});
#endif

  const ordo::SchedulerStats st = sched.stats();
  std::printf("\nSummary (%.1f s)\n", ms_since(started) / 1000.0);
  std::printf("  %-28s %s\n", "story", "result");
  std::printf("  %-28s %s\n", "----------------------------", "------------------------------------------------");
  for (const auto& r : rows) std::printf("  %-28s %s\n", r.story.c_str(), r.result.c_str());
  std::printf("  %-28s %llu tasks run, %llu stolen; per level completed high/normal/low: %llu/%llu/%llu\n", "scheduler",
              static_cast<unsigned long long>(st.tasks_run), static_cast<unsigned long long>(st.steals),
              static_cast<unsigned long long>(st.per_level[0].completed),
              static_cast<unsigned long long>(st.per_level[1].completed),
              static_cast<unsigned long long>(st.per_level[2].completed));
  if (!trace_path.empty()) {
    sched.stop_tracing();
    std::ofstream out(trace_path);
    const std::size_t spans = sched.write_trace(out);
    out.close();
    if (!out) {
      std::fprintf(stderr, "ordo-demo: could not write the trace to %s\n", trace_path.c_str());
      return 1;
    }
    std::printf("\ntrace: %zu task spans in %s — open https://ui.perfetto.dev and drop the file there\n", spans,
                trace_path.c_str());
  }
  if (metrics) {
    if (hold_seconds > 0) {
      std::printf("\nmetrics: serving on http://127.0.0.1:%d/metrics for %.0f more seconds\n", metrics_port, hold_seconds);
      std::fflush(stdout);
      std::this_thread::sleep_for(std::chrono::duration<double>(hold_seconds));
    }
    metrics.reset();
  }
  sched.shutdown();
  return d.exit_code != 0 ? d.exit_code : fleet_exit;
}
