// ordo_bench_cluster: durable tasks on PostgreSQL shared by several processes.
// Whole jobs (enqueue -> claim -> run an empty body -> complete) by ordo's
// store against the classic SKIP LOCKED queue written plainly (one job per
// claim transaction, one per completion), in the same binary and run; then
// start latency, failover and a global group. See docs/benchmarks.md,
// "Beyond one machine". Worker processes are this binary started with --worker.
//
// The server: ORDO_PG_CONNINFO if set, else a throwaway cluster started with
// scripts/pg.sh for the run. Each benchmark uses a database of its own.
#include <benchmark/benchmark.h>
#include <libpq-fe.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"
#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string g_server;      // conninfo of the maintenance database
std::string g_self;        // this binary
std::string g_cluster_dir;  // when this run started the cluster

struct Conn {
  PGconn* c;
  explicit Conn(const std::string& info) : c(PQconnectdb(info.c_str())) {
    if (PQstatus(c) != CONNECTION_OK) throw std::runtime_error(std::string("connect: ") + PQerrorMessage(c));
  }
  ~Conn() { PQfinish(c); }
  std::string one(const std::string& sql) {
    PGresult* r = PQexec(c, sql.c_str());
    const auto st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
      std::string why = PQerrorMessage(c);
      PQclear(r);
      throw std::runtime_error(sql + ": " + why);
    }
    std::string v = PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    PQclear(r);
    return v;
  }
};

std::string with_db(const std::string& db) { return g_server + " dbname=" + db; }

// A fresh database per benchmark, dropped afterwards.
struct Database {
  std::string name;
  explicit Database(const char* tag) {
    static int n = 0;
    name = "ordo_bench_" + std::string(tag) + "_" + std::to_string(getpid()) + "_" + std::to_string(n++);
    Conn(g_server).one("CREATE DATABASE " + name);
  }
  ~Database() {
    try {
      Conn(g_server).one("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)");
    } catch (...) {
    }
  }
  std::string conninfo() const { return with_db(name); }
};

// Worker processes: this binary with --worker KIND CONNINFO ARG; they run
// until their stdin closes (or a signal).
struct Worker {
  pid_t pid = -1;
  int to_child = -1;
  Worker(const std::string& kind, const std::string& conninfo, const std::string& arg) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");  // no other child inherits the write end
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[0], 0);
    posix_spawn_file_actions_addclose(&actions, fds[1]);
    std::vector<std::string> args = {g_self, "--worker", kind, conninfo, arg};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid, g_self.c_str(), &actions, nullptr, argv.data(), environ) != 0) throw std::runtime_error("spawn");
    posix_spawn_file_actions_destroy(&actions);
    close(fds[0]);
    to_child = fds[1];
  }
  void kill_now() {
    if (pid > 0) ::kill(pid, SIGKILL);
  }
  ~Worker() {
    if (to_child >= 0) close(to_child);
    if (pid > 0) {
      int status = 0;
      waitpid(pid, &status, 0);
    }
  }
};

void wait_stdin_closed() {
  char c;
  while (read(0, &c, 1) > 0) {
  }
}

// Waits until `sql` (a count) says 0; false after `limit`.
bool wait_zero(Conn& conn, const std::string& sql, std::chrono::seconds limit) {
  const auto give_up = Clock::now() + limit;
  while (Clock::now() < give_up) {
    if (conn.one(sql) == "0") return true;
    std::this_thread::sleep_for(1ms);  // polling the database for the benchmark's end
  }
  return false;
}

ordo::PostgresStore store(const std::string& conninfo, std::chrono::milliseconds lease = 5000ms) {
  ordo::PostgresStore s = ordo::postgres(conninfo);
  s.lease = lease;
  s.claim_batch = 256;
  s.max_held = 512;
  return s;
}

// ---- ordo worker and classic worker --------------------------------------

int ordo_worker(const std::string& conninfo, const std::string& arg) {
  ordo::Scheduler sched({.workers = 2});
  ordo::DurableTasks jobs(sched, store(conninfo, std::chrono::milliseconds(std::stoi(arg))));
  jobs.define("empty", [](ordo::TaskContext&, std::span<const std::byte>) {});
  ordo::TaskTypeOptions tx;
  tx.transactional = true;
  jobs.define("stamp", [](ordo::TaskContext& ctx, std::span<const std::byte>) {
    // Start latency: now - the enqueue time carried in the arguments (one clock: one machine).
    const auto enqueued = std::stoll(std::string(ctx.args_text()));
    const auto now = std::chrono::duration_cast<std::chrono::microseconds>(
                         std::chrono::system_clock::now().time_since_epoch()).count();
    const std::string sql = "INSERT INTO latency VALUES (" + std::to_string(now - enqueued) + ")";
    PQclear(PQexec(ctx.transaction(), sql.c_str()));
  }, tx);
  jobs.define("slow", [](ordo::TaskContext&, std::span<const std::byte>) { std::this_thread::sleep_for(20ms); });
  jobs.start();
  std::printf("ready\n");
  std::fflush(stdout);
  wait_stdin_closed();
  jobs.shutdown(ordo::ShutdownMode::cancel);
  return 0;
}

int classic_worker(const std::string& conninfo, int threads) {
  std::atomic<bool> done{false};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      Conn c(conninfo);
      while (!done.load()) {
        // Claim one job in its own transaction, run it, complete it in another.
        c.one("BEGIN");
        const std::string id = c.one(
            "SELECT id FROM classic_jobs WHERE state = 'available' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED");
        if (id.empty()) {
          c.one("COMMIT");
          std::this_thread::sleep_for(1ms);  // an empty queue: the classic poll
          continue;
        }
        c.one("UPDATE classic_jobs SET state = 'running', attempt = attempt + 1, locked_at = now() WHERE id = " + id);
        c.one("COMMIT");
        c.one("DELETE FROM classic_jobs WHERE id = " + id);
      }
    });
  }
  wait_stdin_closed();
  done = true;
  for (auto& t : pool) t.join();
  return 0;
}

// ---- benchmarks -----------------------------------------------------------

constexpr int kSubmitters = 8;
constexpr int kJobs = 20000;
constexpr int kBatch = 100;  // tasks per enqueue_many call, and per classic_bulk transaction

// How ordo's submitters enqueue: one enqueue_many call per kBatch tasks
// (returns after the commit), one enqueue per task (returns after the
// commit), or one enqueue per task with PostgresStore::async_enqueue
// (returns before the commit).
enum class Submit { batch, single, async };

void cluster_job_ordo(benchmark::State& state, Submit how) {
  for (auto _ : state) {
    Database db("ordo");
    ordo::Scheduler sched({.workers = 1});
    ordo::PostgresStore producer_store = store(db.conninfo());
    producer_store.async_enqueue = how == Submit::async;
    ordo::DurableTasks producer(sched, producer_store);
    producer.define("empty", {});  // enqueue-only here: the worker processes run it
    producer.start();
    std::vector<std::unique_ptr<Worker>> workers;
    for (int w = 0; w < 2; ++w) workers.push_back(std::make_unique<Worker>("ordo", db.conninfo(), "5000"));
    Conn watch(db.conninfo());
    std::this_thread::sleep_for(300ms);  // the workers connect and LISTEN before the clock starts
    const auto t0 = Clock::now();
    std::vector<std::thread> submitters;
    for (int s = 0; s < kSubmitters; ++s) {
      submitters.emplace_back([&, s] {
        const int mine = kJobs / kSubmitters + (s < kJobs % kSubmitters ? 1 : 0);
        if (how == Submit::batch) {
          const std::vector<ordo::NewTask> batch(kBatch, ordo::NewTask{"empty"});
          for (int done = 0; done < mine; done += kBatch) {
            producer.enqueue_many(std::span(batch).first(static_cast<std::size_t>(std::min(kBatch, mine - done))));
          }
        } else {
          for (int i = 0; i < mine; ++i) producer.enqueue("empty", "");
        }
      });
    }
    for (auto& t : submitters) t.join();
    const auto enqueued = Clock::now();
    // The producer runs none of them: its drain returns once every enqueue is committed.
    producer.shutdown();
    if (!wait_zero(watch, "SELECT count(*) FROM ordo.jobs", 120s)) state.SkipWithError("jobs left undone");
    const auto t1 = Clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    state.counters["enqueue_per_s"] = kJobs / std::chrono::duration<double>(enqueued - t0).count();
    producer.shutdown(ordo::ShutdownMode::cancel);
  }
  state.SetItemsProcessed(state.iterations() * kJobs);
}

// bulk: the submitters insert kBatch jobs per transaction (one multi-row
// INSERT); claims and completions stay one job per transaction.
void cluster_job_classic(benchmark::State& state, bool bulk) {
  for (auto _ : state) {
    Database db("classic");
    Conn setup(db.conninfo());
    setup.one("CREATE TABLE classic_jobs (id bigserial PRIMARY KEY, args bytea NOT NULL DEFAULT '', "
              "state text NOT NULL DEFAULT 'available', attempt integer NOT NULL DEFAULT 0, locked_at timestamptz)");
    setup.one("CREATE INDEX classic_ready ON classic_jobs (id) WHERE state = 'available'");
    std::vector<std::unique_ptr<Worker>> workers;
    for (int w = 0; w < 2; ++w) workers.push_back(std::make_unique<Worker>("classic", db.conninfo(), "2"));
    std::this_thread::sleep_for(300ms);
    const auto t0 = Clock::now();
    std::vector<std::thread> submitters;
    for (int s = 0; s < kSubmitters; ++s) {
      submitters.emplace_back([&, s] {
        Conn c(db.conninfo());
        const int mine = kJobs / kSubmitters + (s < kJobs % kSubmitters ? 1 : 0);
        for (int done = 0; done < mine;) {
          const int n = bulk ? std::min(kBatch, mine - done) : 1;
          c.one(n == 1 ? std::string("INSERT INTO classic_jobs DEFAULT VALUES")
                       : "INSERT INTO classic_jobs (args) SELECT '' FROM generate_series(1, " + std::to_string(n) + ")");
          done += n;
        }
      });
    }
    for (auto& t : submitters) t.join();
    const auto enqueued = Clock::now();
    if (!wait_zero(setup, "SELECT count(*) FROM classic_jobs", 300s)) state.SkipWithError("jobs left undone");
    const auto t1 = Clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    state.counters["enqueue_per_s"] = kJobs / std::chrono::duration<double>(enqueued - t0).count();
  }
  state.SetItemsProcessed(state.iterations() * kJobs);
}

// Enqueue-to-start latency on an idle fleet under moderate load: one job
// every 5 ms, started by whichever worker a NOTIFY wakes first.
void start_latency_ordo(benchmark::State& state) {
  const int n = 1000;
  for (auto _ : state) {
    Database db("latency");
    Conn setup(db.conninfo());
    setup.one("CREATE TABLE latency (us bigint NOT NULL)");
    ordo::Scheduler sched({.workers = 1});
    ordo::DurableTasks producer(sched, store(db.conninfo()));
    ordo::TaskTypeOptions tx;
    tx.transactional = true;
    producer.define("stamp", {}, tx);
    producer.start();
    std::vector<std::unique_ptr<Worker>> workers;
    for (int w = 0; w < 2; ++w) workers.push_back(std::make_unique<Worker>("ordo", db.conninfo(), "5000"));
    std::this_thread::sleep_for(500ms);  // idle fleet: every worker waiting on LISTEN
    for (int i = 0; i < n; ++i) {
      const auto now = std::chrono::duration_cast<std::chrono::microseconds>(
                           std::chrono::system_clock::now().time_since_epoch()).count();
      producer.enqueue("stamp", std::to_string(now));
      std::this_thread::sleep_for(5ms);  // the load's pace, not a wait for a result
    }
    if (!wait_zero(setup, "SELECT " + std::to_string(n) + " - count(*) FROM latency", 30s)) {
      state.SkipWithError("jobs left unstarted");
    }
    const std::string p50 = setup.one("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY us) FROM latency");
    const std::string p99 = setup.one("SELECT percentile_disc(0.99) WITHIN GROUP (ORDER BY us) FROM latency");
    state.counters["p50_us"] = std::stod(p50);
    state.counters["p99_us"] = std::stod(p99);
    producer.shutdown(ordo::ShutdownMode::cancel);
  }
}

// Failover: kill -9 of a process holding slow jobs; the time until the
// survivor has run them all, against lease + 1 s.
void failover_ordo(benchmark::State& state) {
  const int lease_ms = 1000;
  for (auto _ : state) {
    Database db("failover");
    ordo::Scheduler sched({.workers = 1});
    ordo::DurableTasks producer(sched, store(db.conninfo()));
    producer.define("slow", {});
    producer.start();
    auto victim = std::make_unique<Worker>("ordo", db.conninfo(), std::to_string(lease_ms));
    Conn watch(db.conninfo());
    for (int i = 0; i < 40; ++i) producer.enqueue("slow", "");
    // The victim claims them all; then it dies with them.
    const auto give_up = Clock::now() + 20s;
    while (watch.one("SELECT count(*) FROM ordo.jobs WHERE state = 'available'") != "0" && Clock::now() < give_up) {
      std::this_thread::sleep_for(1ms);  // waiting for the claims
    }
    Worker survivor("ordo", db.conninfo(), std::to_string(lease_ms));
    std::this_thread::sleep_for(300ms);
    const auto killed = Clock::now();
    victim->kill_now();
    victim.reset();
    if (!wait_zero(watch, "SELECT count(*) FROM ordo.jobs WHERE state = 'running' AND attempt = 1", 60s)) {
      state.SkipWithError("the victim's jobs were never taken over");
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - killed).count();
    state.SetIterationTime(seconds);
    state.counters["lease_ms"] = lease_ms;
    state.counters["failover_ms"] = seconds * 1000;
    producer.shutdown(ordo::ShutdownMode::cancel);
  }
}

// A global group of 4 contended by two processes of 2 workers: grants per
// second, and the most holders the database ever counted (the limit, never above).
void global_group_ordo(benchmark::State& state) {
  const int n = 2000;
  for (auto _ : state) {
    Database db("group");
    ordo::Scheduler sched({.workers = 1});
    ordo::DurableTasks producer(sched, store(db.conninfo()));
    producer.define("empty", {});
    producer.set_global_limit("db", 4);
    producer.start();
    std::vector<std::unique_ptr<Worker>> workers;
    for (int w = 0; w < 2; ++w) workers.push_back(std::make_unique<Worker>("ordo", db.conninfo(), "5000"));
    Conn watch(db.conninfo());
    std::this_thread::sleep_for(300ms);
    const auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) producer.enqueue("empty", "", {.global_needs = {{"db", 1}}});
    if (!wait_zero(watch, "SELECT count(*) FROM ordo.jobs", 120s)) state.SkipWithError("jobs left undone");
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
    state.counters["limit"] = 4;
    state.counters["max_holders"] = std::stod(watch.one("SELECT peak FROM ordo.groups WHERE name = 'db'"));
    if (state.counters["max_holders"] > 4) state.SkipWithError("more holders than the limit");
    producer.shutdown(ordo::ShutdownMode::cancel);
  }
  state.SetItemsProcessed(state.iterations() * n);
}

BENCHMARK_CAPTURE(cluster_job_ordo, batch, Submit::batch)->Name("cluster_job/ordo_pg/threads:8")->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(cluster_job_ordo, single, Submit::single)->Name("cluster_job/ordo_pg_single/threads:8")->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(cluster_job_ordo, async, Submit::async)->Name("cluster_job/ordo_pg_async/threads:8")->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(cluster_job_classic, single, false)->Name("cluster_job/classic/threads:8")->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(cluster_job_classic, bulk, true)->Name("cluster_job/classic_bulk/threads:8")->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(start_latency_ordo)->Name("cluster_latency/ordo_pg")->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(failover_ordo)->Name("cluster_failover/ordo_pg")->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(global_group_ordo)->Name("global_group/ordo_pg")->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);

void start_cluster() {
  char dir[] = "/tmp/ordo-pg.XXXXXX";
  if (mkdtemp(dir) == nullptr) throw std::runtime_error("mkdtemp");
  g_cluster_dir = dir;
  const std::string cmd = std::string("bash ") + ORDO_PG_SCRIPT + " start " + g_cluster_dir;
  FILE* p = popen(cmd.c_str(), "r");
  char line[512] = {};
  if (p == nullptr || std::fgets(line, sizeof line, p) == nullptr) throw std::runtime_error("scripts/pg.sh start failed");
  pclose(p);
  g_server = line;
  while (!g_server.empty() && g_server.back() == '\n') g_server.pop_back();
}

}  // namespace

int main(int argc, char** argv) {
  g_self = argv[0];
  if (argc >= 5 && std::strcmp(argv[1], "--worker") == 0) {
    const std::string kind = argv[2];
    if (kind == "ordo") return ordo_worker(argv[3], argv[4]);
    return classic_worker(argv[3], std::stoi(argv[4]));
  }
  if (const char* given = std::getenv("ORDO_PG_CONNINFO"); given != nullptr && *given != '\0') {
    g_server = given;
  } else {
    start_cluster();
  }
  ordo::bench::register_closing_probe();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (!g_cluster_dir.empty()) {
    const std::string cmd = std::string("bash ") + ORDO_PG_SCRIPT + " stop " + g_cluster_dir + " > /dev/null";
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "could not stop the cluster in %s\n", g_cluster_dir.c_str());
  }
  return 0;
}
