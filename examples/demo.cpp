// ordo-demo: what ordo does, shown on real work, each parallel run side by side
// with the same work done serially on one thread.
//
// It grows with each capability; today it shows the work-stealing core:
//  1. fork/join recursion (a task per call, helping waits),
//  2. a data-parallel job split into chunks from outside the pool,
//  3. priorities chosen per submission: the same job, urgent for one caller
//     and background for another; a queued job moved up; per-level stats;
//  4. a workflow (a DAG declared in one place): failure propagation, drawing,
//     cycle detection;
//  5. durable jobs: a process killed with SIGKILL mid-way, a restart that
//     finishes the work, and the count of what was lost or duplicated.
//
// --help lists the options; --journal DIR [--crash-after N] runs only the
// durable story, on a journal that outlives the process.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "demo_durable.hpp"
#include "ordo/ordo.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

long fib_serial(int n) { return n < 2 ? n : fib_serial(n - 1) + fib_serial(n - 2); }

// A task per call down to a small cutoff, as a real recursive job would do.
long fib_parallel(ordo::Scheduler& s, int n) {
  if (n < 20) return fib_serial(n);
  long a = 0;
  ordo::TaskGroup g(s);
  g.spawn([&] { a = fib_parallel(s, n - 1); });
  long b = fib_parallel(s, n - 2);
  g.wait();
  return a + b;
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

// A background report: a fixed slice of real work (about a quarter of a millisecond).
int report(int id) {
  volatile std::uint64_t primes = count_primes(0, 20'000);
  (void)primes;
  return id;
}

void row(const char* what, const std::string& result, double serial_ms, double parallel_ms, std::uint64_t tasks) {
  std::printf("  %-34s %-14s serial %8.1f ms   ordo %8.1f ms   x%.2f   (%llu tasks)\n", what, result.c_str(),
              serial_ms, parallel_ms, serial_ms / parallel_ms, static_cast<unsigned long long>(tasks));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ordo-demo: ordo's scheduler on real work, beside the same work done serially"};
  demo::DurableStoryOptions durable;
  app.add_option("--journal", durable.journal_dir,
                 "run only the durable story, on this journal directory (run again to resume after a crash)");
  app.add_option("--crash-after", durable.crash_after,
                 "kill this process with SIGKILL after N job effects (with --journal: this run; without: the "
                 "first run of the story)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--jobs", durable.jobs, "durable jobs in the story (default 100)")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  if (!durable.journal_dir.empty()) {
    std::printf("ordo-demo: durable jobs on a journal that outlives this process\n");
    return demo::durable_story(durable);
  }
  const unsigned workers = std::max(1u, std::thread::hardware_concurrency());
  ordo::Scheduler sched{{.workers = workers, .levels = 3, .name = "demo"}};
  std::printf("ordo-demo: %u workers, %u priority levels\n\n", sched.worker_count(), sched.level_count());
  std::printf("1. Parallel work next to the same work on one thread\n");

  {  // fork/join recursion
    const int n = 40;
    auto t0 = Clock::now();
    long serial = fib_serial(n);
    double serial_ms = ms_since(t0);
    auto before = sched.stats().tasks_run;
    t0 = Clock::now();
    long parallel = sched.submit([&] { return fib_parallel(sched, n); }).get();
    double parallel_ms = ms_since(t0);
    if (parallel != serial) {
      std::fprintf(stderr, "fib mismatch: %ld vs %ld\n", parallel, serial);
      return 1;
    }
    row("fib(40), fork/join per call", std::to_string(parallel), serial_ms, parallel_ms,
        sched.stats().tasks_run - before);
  }

  {  // data-parallel chunks submitted from outside the pool
    const std::uint64_t limit = 3'000'000, chunk = 20'000;
    auto t0 = Clock::now();
    std::uint64_t serial = count_primes(0, limit);
    double serial_ms = ms_since(t0);
    auto before = sched.stats().tasks_run;
    std::atomic<std::uint64_t> total{0};
    t0 = Clock::now();
    ordo::TaskGroup g(sched);
    for (std::uint64_t lo = 0; lo < limit; lo += chunk) {
      g.spawn([&total, lo, hi = std::min(limit, lo + chunk)] { total.fetch_add(count_primes(lo, hi)); });
    }
    g.wait();
    double parallel_ms = ms_since(t0);
    if (total.load() != serial) {
      std::fprintf(stderr, "prime count mismatch\n");
      return 1;
    }
    row("primes below 3,000,000, 150 chunks", std::to_string(serial), serial_ms, parallel_ms,
        sched.stats().tasks_run - before);
  }

  std::printf("\n2. Priority per submission: one job type, two callers\n");
  {
    // A backlog of background reports fills the pool; then an interactive
    // caller submits the same report at high priority. It starts as soon as a
    // worker finishes its current task, ahead of the whole backlog.
    std::vector<ordo::Handle<int>> background;
    auto t0 = Clock::now();
    for (int i = 0; i < 400; ++i) background.push_back(sched.submit([=] { return report(i); }, {.priority = ordo::low}));
    auto submitted = Clock::now();
    std::atomic<double> started_after_ms{0};
    auto urgent = sched.submit([&] {
      started_after_ms = ms_since(submitted);
      return report(-1);
    }, {.priority = ordo::high});
    urgent.get();
    double urgent_done = ms_since(t0);
    std::size_t background_done_before = 0;
    for (auto& h : background) background_done_before += h.ready() ? 1 : 0;
    for (auto& h : background) h.get();
    double all_done = ms_since(t0);
    std::printf("  400 low-priority reports queued, then 1 high-priority report of the same kind:\n");
    std::printf("    high report started %.2f ms after submission, finished at %.1f ms,\n", started_after_ms.load(),
                urgent_done);
    std::printf("    when only %zu of 400 background reports had finished (all done at %.1f ms)\n",
                background_done_before, all_done);
  }

  std::printf("\n3. Moving a queued job up: a user starts waiting for a background report\n");
  {
    std::vector<ordo::Handle<int>> backlog;
    for (int i = 0; i < 300; ++i) backlog.push_back(sched.submit([=] { return report(i); }, {.priority = ordo::low}));
    auto t0 = Clock::now();
    const bool moved = backlog.back().set_priority(ordo::high);  // the last one queued
    backlog.back().wait();
    double waited = ms_since(t0);
    std::size_t others_done = 0;
    for (std::size_t i = 0; i + 1 < backlog.size(); ++i) others_done += backlog[i].ready() ? 1 : 0;
    for (auto& h : backlog) h.get();
    std::printf("  report #300 of 300 queued at low, then set_priority(high): %s; done %.2f ms later,\n",
                moved ? "moved" : "too late", waited);
    std::printf("    ahead of %zu of the 299 reports queued before it\n", backlog.size() - 1 - others_done);
  }

  std::printf("\n4. Per-level statistics (start waits sampled 1 task in 64)\n");
  {
    auto st = sched.stats();
    const char* names[] = {"high", "normal", "low"};
    for (unsigned l = 0; l < st.per_level.size(); ++l) {
      const auto& ls = st.per_level[l];
      std::printf("  %-6s completed %7llu   wait p50 %8.1f us   p99 %8.1f us   max %8.1f us   (%llu samples)\n",
                  names[l], static_cast<unsigned long long>(ls.completed), ls.wait_p50_us, ls.wait_p99_us,
                  ls.wait_max_us, static_cast<unsigned long long>(ls.wait_samples));
    }
  }

  std::printf("\n5. A workflow declared in one place, run twice: once clean, once with a failing step\n");
  {
    std::atomic<bool> fail_transform{false};
    std::atomic<int> rows{0};
    ordo::Workflow nightly("nightly");
    nightly.node("extract_orders", [&] { rows += static_cast<int>(count_primes(0, 50'000)); });
    nightly.node("extract_prices", [&] { rows += static_cast<int>(count_primes(0, 40'000)); });
    nightly.node("transform", [&] {
      if (fail_transform) throw std::runtime_error("price feed has a negative price");
    }).after("extract_orders").after("extract_prices");
    nightly.node("load", [] {}).after("transform");
    nightly.node("report", [] {}, {.priority = ordo::high}).after("load");
    nightly.node("audit_log", [] {});
    auto ok = nightly.run(sched);
    ok.get();
    std::printf("  run 1: %zu of %zu nodes succeeded\n", ok.count(ordo::NodeStatus::succeeded), nightly.size());
    fail_transform = true;
    auto bad = nightly.run(sched);
    try {
      bad.get();
    } catch (const std::exception& e) {
      std::printf("  run 2: failed with \"%s\"; downstream nodes were cancelled, independent ones ran:\n", e.what());
    }
    std::printf("%s", nightly.to_dot(&bad).c_str());
    try {
      ordo::Workflow broken("broken");
      broken.node("a", [] {}).after("c");
      broken.node("b", [] {}).after("a");
      broken.node("c", [] {}).after("b");
      broken.validate();
    } catch (const ordo::InvalidGraph& e) {
      std::printf("  a cyclic workflow is refused before it runs: %s\n", e.what());
    }
  }

  auto st = sched.stats();
  std::printf("\nScheduler totals: %llu tasks run, %llu stolen between workers\n",
              static_cast<unsigned long long>(st.tasks_run), static_cast<unsigned long long>(st.steals));
  sched.shutdown(ordo::ShutdownMode::drain);  // before the story forks: no worker threads left

  std::printf("\n6. Durable jobs survive kill -9\n");
  return demo::durable_story(durable);
}
