// ordo_bench_durable: the journal against the physical floor of the disk it
// writes to (see docs/benchmarks.md, "Durability"). Every workload writes
// under /tmp and checks its own result (records read back, durable count).
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <sqlite3.h>

#include "bench_support.hpp"
#include "journal/records.hpp"
#include "ordo/ordo.hpp"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct ScratchDir {
  std::string path;
  ScratchDir() {
    std::string pattern = (fs::temp_directory_path() / "ordo-bench-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void report_latencies(benchmark::State& state, std::vector<double>& us) {
  if (us.empty()) return;
  std::sort(us.begin(), us.end());
  state.counters["p50_us"] = us[us.size() / 2];
  state.counters["p99_us"] = us[std::min(us.size() - 1, us.size() * 99 / 100)];
}

// --- fsync_floor: what one durable 4 KiB append costs on this file system ---

void BM_fsync_floor(benchmark::State& state) {
  ScratchDir dir;
  const std::string path = dir.path + "/floor";
  const int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0644);
  const std::string block(4096, 'f');
  std::vector<double> us;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size()) || ::fdatasync(fd) != 0) {
      state.SkipWithError("write or fdatasync failed");
      break;
    }
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  ::close(fd);
  report_latencies(state, us);
}
BENCHMARK(BM_fsync_floor)->Name("fsync_floor")->Iterations(500)->UseRealTime()->Unit(benchmark::kMicrosecond);

// --- append/<mode>/threads:8: each thread appends 64 bytes and waits for it ---

void append_waiting(benchmark::State& state, ordo::Durability mode) {
  constexpr int kThreads = 8;
  const int per_thread = static_cast<int>(state.range(0));
  for (auto _ : state) {
    state.PauseTiming();
    ScratchDir dir;
    auto journal = ordo::Journal::open(dir.path, {.durability = mode});
    std::vector<std::vector<double>> lat(kThreads);
    const std::string body(56, 'r');  // + the 8-byte task id = 64 bytes of payload
    state.ResumeTiming();
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        lat[t].reserve(static_cast<std::size_t>(per_thread));
        for (int i = 0; i < per_thread; ++i) {
          const auto t0 = Clock::now();
          journal->append_durable(ordo::RecordType::enqueue, static_cast<std::uint64_t>(t * per_thread + i),
                                  {reinterpret_cast<const std::byte*>(body.data()), body.size()});
          lat[t].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
        }
      });
    }
    for (auto& th : threads) th.join();
    state.PauseTiming();
    const ordo::JournalStats st = journal->stats();
    journal.reset();
    if (st.appended != static_cast<std::uint64_t>(kThreads * per_thread)) state.SkipWithError("records missing");
    std::vector<double> all;
    for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
    report_latencies(state, all);
    state.counters["records_per_sync"] = st.syncs ? static_cast<double>(st.appended) / static_cast<double>(st.syncs) : 0;
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * kThreads * per_thread);
}
void BM_append_sync(benchmark::State& s) { append_waiting(s, ordo::Durability::sync); }
void BM_append_async(benchmark::State& s) { append_waiting(s, ordo::Durability::async); }
BENCHMARK(BM_append_sync)->Name("append/ordo_sync/threads:8")->Arg(250)->Iterations(1)->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_append_async)->Name("append/ordo_async/threads:8")->Arg(5000)->Iterations(1)->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// --- append_pipelined: one thread appends without waiting, then waits once ---

void BM_append_pipelined(benchmark::State& state) {
  const auto n = static_cast<std::uint64_t>(state.range(0));
  const std::string body(56, 'p');
  for (auto _ : state) {
    state.PauseTiming();
    ScratchDir dir;
    auto journal = ordo::Journal::open(dir.path, {.durability = ordo::Durability::sync, .compact_after_bytes = 0});
    state.ResumeTiming();
    ordo::Lsn last = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      last = journal->append(ordo::RecordType::enqueue, i, {reinterpret_cast<const std::byte*>(body.data()), body.size()});
    }
    journal->wait_durable(last);
    state.PauseTiming();
    journal.reset();
    std::uint64_t read_back = 0;
    ordo::Journal::read(dir.path, [&](const ordo::RecordView&) { ++read_back; });
    if (read_back != n) state.SkipWithError("records missing after the durable wait");
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_append_pipelined)->Name("append_pipelined/ordo_sync")->Arg(1'000'000)->Iterations(1)->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// --- recovery: 1,000,000 enqueued and 500,000 completed durable tasks ---
//
// The journal is written directly, record by record, in the durable-task
// payload format (docs/journal-format.md, encoded by the library's own codec,
// src/journal/records.hpp): writing it through DurableTasks
// would take longer than the benchmark. Time: open, replay, define, start()
// — until the 500,000 survivors are queued on the scheduler.

// The physical floor of a recovery: read() every file of the journal's
// directory once into one buffer, page cache hot as it is for the recovery
// measured next (the files were just written). Seconds.
double read_directory_seconds(const std::string& dir, std::uint64_t& bytes) {
  std::vector<char> buffer(1 << 20);
  bytes = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    for (ssize_t got; (got = ::read(fd, buffer.data(), buffer.size())) > 0;) bytes += static_cast<std::uint64_t>(got);
    ::close(fd);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// What one fresh page costs this process: the first store into each 4 KiB
// page of 64 MiB of new anonymous memory (a minor fault: the kernel finds,
// zeroes and maps a page). Microseconds per page. On bare metal this is
// mostly the zeroing, well under a microsecond; on a VM whose faults trap to
// the host it can be ten times more, and then a first recovery, which builds
// all its state in memory it has never touched, is bound by it.
double fresh_page_microseconds() {
  constexpr std::size_t kBytes = std::size_t{64} << 20;
  constexpr std::size_t kPage = 4096;
  void* mapped = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) return 0;
  auto* bytes = static_cast<volatile char*>(mapped);
  const auto t0 = Clock::now();
  for (std::size_t at = 0; at < kBytes; at += kPage) bytes[at] = 1;
  const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  ::munmap(mapped, kBytes);
  return us / (kBytes / kPage);
}

std::uint64_t minor_faults_so_far() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<std::uint64_t>(usage.ru_minflt);
}

void BM_recovery(benchmark::State& state) {
  const auto n = static_cast<std::uint64_t>(state.range(0));
  ScratchDir dir;
  {
    auto journal = ordo::Journal::open(dir.path, {.durability = ordo::Durability::none, .compact_after_bytes = 0});
    namespace records = ordo::detail::records;
    const std::string args(24, 'a');
    const records::PayloadWriter enqueue = records::encode(records::Enqueue{
        .type = "job", .level = 1, .max_attempts = 0, .run_at_ns = 0, .key = {}, .needs = {}, .workflow = 0, .node = 0,
        .args = args});
    const records::PayloadWriter complete = records::encode(records::Complete{0, {}});  // no key retained
    for (std::uint64_t i = 1; i <= n; ++i) {
      journal->append(ordo::RecordType::enqueue, i, enqueue.view());
      if (i % 2 == 0) {
        journal->append(ordo::RecordType::complete, i, complete.view());
      }
    }
  }
  std::uint64_t journal_bytes = 0;
  double read_seconds = read_directory_seconds(dir.path, journal_bytes);  // warms the cache first
  read_seconds = std::min(read_seconds, read_directory_seconds(dir.path, journal_bytes));
  const double fresh_page_us = fresh_page_microseconds();
  std::uint64_t records = 0;
  std::uint64_t earlier_iterations = 0;  // each completed exactly one job
  // The first iteration is the one a restarted process runs: every page of
  // the state it builds (task table, queued task nodes) is fresh. The later
  // ones reuse what the allocators kept from it.
  double first_seconds = 0, later_seconds = 0;
  std::uint64_t first_faults = 0;
  for (auto _ : state) {
    const auto iteration_start = Clock::now();
    const std::uint64_t faults_before = minor_faults_so_far();
    ordo::Scheduler sched{{.workers = 1}};
    std::uint64_t queued = 0, live = 0;
    {
      ordo::DurableTasks durable(sched, dir.path, {.durability = ordo::Durability::none});
      // The first job to run holds the only worker until the clock stops, so
      // that "queued" is what is measured, not how fast the jobs then run.
      std::atomic<bool> measured{false};
      durable.define("job", [&](ordo::TaskContext&, std::span<const std::byte>) {
        while (!measured.load()) std::this_thread::yield();
      });
      const ordo::DurableRecovery r = durable.start();
      state.PauseTiming();
      const double seconds = std::chrono::duration<double>(Clock::now() - iteration_start).count();
      if (earlier_iterations == 0) {
        first_seconds = seconds;
        first_faults = minor_faults_so_far() - faults_before;
      } else {
        later_seconds += seconds;
      }
      queued = r.requeued;
      records = durable.journal().recovery().records;
      live = durable.journal().recovery().live_tasks;  // n / 2, less one job per earlier iteration
      // Stop taking jobs before the held one returns, so that exactly one job
      // completes per iteration however fast the worker would run the rest;
      // the survivors stay in the journal for the next iteration.
      std::thread stopper([&] { durable.shutdown(ordo::ShutdownMode::cancel); });
      while (durable.stats().accepting) std::this_thread::yield();
      measured = true;
      stopper.join();
    }
    if (queued != live || live + earlier_iterations < n / 2) {
      state.SkipWithError(("queued " + std::to_string(queued) + " of " + std::to_string(live) + " survivors").c_str());
      break;
    }
    ++earlier_iterations;
    state.ResumeTiming();
  }
  state.counters["records_per_second"] =
      benchmark::Counter(static_cast<double>(records) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  // The same records read as plain bytes, without decoding or queuing.
  state.counters["read_floor_records_per_second"] = static_cast<double>(records) / read_seconds;
  state.counters["journal_mib"] = static_cast<double>(journal_bytes) / (1 << 20);
  // The first iteration apart from the later ones, with its page faults and
  // what they would cost at the fresh-page price measured above: the part
  // of a first recovery that is the machine's, not ordo's. An upper bound:
  // the pages a populating mmap maps (the pools' chunks) count as faults
  // but cost about half.
  const auto iterations = static_cast<double>(state.iterations());
  if (first_seconds > 0) {
    state.counters["first_records_per_second"] = static_cast<double>(records) / first_seconds;
    state.counters["first_faults"] = static_cast<double>(first_faults);
    state.counters["first_fault_share"] = static_cast<double>(first_faults) * fresh_page_us * 1e-6 / first_seconds;
  }
  if (later_seconds > 0) state.counters["later_records_per_second"] = static_cast<double>(records) * (iterations - 1) / later_seconds;
  state.counters["fresh_page_us"] = fresh_page_us;
}
BENCHMARK(BM_recovery)->Name("recovery/ordo")->Arg(1'000'000)->Iterations(3)->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// --- durable_enqueue/<sys>/threads:8: enqueue durably, run, record completion ---
//
// 8 submitter threads each enqueue kPerThread jobs, each enqueue returning
// once the job is durable; the jobs run (an empty body) and their completion
// is recorded. Time: until every job is complete.

constexpr int kSubmitters = 8;

void durable_enqueue_ordo(benchmark::State& state, ordo::Durability mode) {
  const int per_thread = static_cast<int>(state.range(0));
  for (auto _ : state) {
    state.PauseTiming();
    ScratchDir dir;
    ordo::Scheduler sched{{.workers = 2}};
    auto durable = std::make_unique<ordo::DurableTasks>(sched, dir.path, ordo::JournalOptions{.durability = mode});
    std::atomic<int> ran{0};
    durable->define("job", [&](ordo::TaskContext&, std::span<const std::byte>) { ran.fetch_add(1, std::memory_order_relaxed); });
    durable->start();
    const std::string args(48, 'j');
    state.ResumeTiming();
    std::vector<std::thread> threads;
    for (int t = 0; t < kSubmitters; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < per_thread; ++i) durable->enqueue("job", args);
      });
    }
    for (auto& th : threads) th.join();
    durable->shutdown();  // every job run and its COMPLETE appended
    state.PauseTiming();
    if (ran.load() != kSubmitters * per_thread) state.SkipWithError("not every job ran");
    durable.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * kSubmitters * per_thread);
}
void BM_durable_enqueue_ordo_sync(benchmark::State& s) { durable_enqueue_ordo(s, ordo::Durability::sync); }
void BM_durable_enqueue_ordo_async(benchmark::State& s) { durable_enqueue_ordo(s, ordo::Durability::async); }
// Five repetitions of each side, reported as medians: one run of the pair
// put ordo_async anywhere in 27-39x sqlite_normal, most of it the peer's
// swing (13-35 k jobs/s from one run to the next).
constexpr int kEnqueueRepetitions = 5;
BENCHMARK(BM_durable_enqueue_ordo_sync)->Name("durable_enqueue/ordo_sync/threads:8")->Arg(250)->Iterations(1)
    ->Repetitions(kEnqueueRepetitions)->ReportAggregatesOnly(true)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_durable_enqueue_ordo_async)->Name("durable_enqueue/ordo_async/threads:8")->Arg(5000)->Iterations(1)
    ->Repetitions(kEnqueueRepetitions)->ReportAggregatesOnly(true)->UseRealTime()->Unit(benchmark::kMillisecond);

// The peer: a jobs table in SQLite (WAL mode), one transaction per step, as a
// database-backed job queue does it: insert; claim; complete.
void durable_enqueue_sqlite(benchmark::State& state, const char* synchronous) {
  const int per_thread = static_cast<int>(state.range(0));
  for (auto _ : state) {
    state.PauseTiming();
    ScratchDir dir;
    const std::string path = dir.path + "/jobs.db";
    {
      sqlite3* db = nullptr;
      sqlite3_open(path.c_str(), &db);
      sqlite3_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE jobs(id INTEGER PRIMARY KEY, args BLOB, state INTEGER)",
                   nullptr, nullptr, nullptr);
      sqlite3_close(db);
    }
    std::atomic<int> done{0};
    bool failed = false;
    state.ResumeTiming();
    std::vector<std::thread> threads;
    for (int t = 0; t < kSubmitters; ++t) {
      threads.emplace_back([&] {
        sqlite3* db = nullptr;
        sqlite3_open(path.c_str(), &db);
        sqlite3_busy_timeout(db, 10'000);
        sqlite3_exec(db, (std::string("PRAGMA synchronous=") + synchronous).c_str(), nullptr, nullptr, nullptr);
        sqlite3_stmt* insert = nullptr;
        sqlite3_stmt* update = nullptr;
        sqlite3_prepare_v2(db, "INSERT INTO jobs(args, state) VALUES(?, 0)", -1, &insert, nullptr);
        sqlite3_prepare_v2(db, "UPDATE jobs SET state = ? WHERE id = ?", -1, &update, nullptr);
        const std::string args(48, 'j');
        auto set_state = [&](sqlite3_int64 id, int st) {
          sqlite3_bind_int(update, 1, st);
          sqlite3_bind_int64(update, 2, id);
          const bool ok = sqlite3_step(update) == SQLITE_DONE;
          sqlite3_reset(update);
          return ok;
        };
        for (int i = 0; i < per_thread; ++i) {
          sqlite3_bind_blob(insert, 1, args.data(), static_cast<int>(args.size()), SQLITE_STATIC);
          bool ok = sqlite3_step(insert) == SQLITE_DONE;  // enqueue (autocommit: its own transaction)
          sqlite3_reset(insert);
          const sqlite3_int64 id = sqlite3_last_insert_rowid(db);
          ok = ok && set_state(id, 1);  // claim
          ok = ok && set_state(id, 2);  // complete
          if (!ok) failed = true;
          done.fetch_add(1, std::memory_order_relaxed);
        }
        sqlite3_finalize(insert);
        sqlite3_finalize(update);
        sqlite3_close(db);
      });
    }
    for (auto& th : threads) th.join();
    state.PauseTiming();
    if (failed || done.load() != kSubmitters * per_thread) state.SkipWithError("a SQLite step failed");
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * kSubmitters * per_thread);
}
void BM_durable_enqueue_sqlite_full(benchmark::State& s) { durable_enqueue_sqlite(s, "FULL"); }
void BM_durable_enqueue_sqlite_normal(benchmark::State& s) { durable_enqueue_sqlite(s, "NORMAL"); }
BENCHMARK(BM_durable_enqueue_sqlite_full)->Name("durable_enqueue/sqlite_full/threads:8")->Arg(50)->Iterations(1)
    ->Repetitions(kEnqueueRepetitions)->ReportAggregatesOnly(true)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_durable_enqueue_sqlite_normal)->Name("durable_enqueue/sqlite_normal/threads:8")->Arg(500)
    ->Iterations(1)->Repetitions(kEnqueueRepetitions)->ReportAggregatesOnly(true)->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Defined after the last BENCHMARK above: static initialisation in one file
// follows the order of definition, so this probe runs last.
benchmark::internal::Benchmark* const kClosingProbe = ordo::bench::register_closing_probe();

}  // namespace

BENCHMARK_MAIN();
