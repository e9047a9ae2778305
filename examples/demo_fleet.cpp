// ordo-demo, the fleet story: durable jobs on PostgreSQL shared by three
// worker processes (this program again, as `ordo-demo --pg-worker NAME`), a
// global `db` group of 4 counted across all of them, and one worker killed
// with SIGKILL while it holds jobs and permits. The others take its jobs
// once its lease runs out. Everything the summary says is counted from the
// database: the effect rows the jobs wrote in the transaction that completed
// them (no UNIQUE constraint, so a duplicate would show), the group's peak,
// and a second count of `db` holders kept by the handlers themselves.
//
// The handlers' own count: each handler takes a session-level advisory lock
// (key 4242, its job id) for its `db` section and, under the row lock of
// demo_gauge, counts such locks and raises demo_gauge.peak. Taking and
// dropping the lock both happen under that row lock, so each count is exact
// when taken; a killed process's locks vanish with its connections, as its
// handlers did.
#include "demo_fleet.hpp"

#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "demo_progress.hpp"
#include "ordo/ordo.hpp"
#include "ordo/postgres.hpp"

namespace demo {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr int kDbLimit = 4;
constexpr auto kLease = 1000ms;
constexpr auto kQueryTime = 20ms;  // what each job's "query" takes while it holds its `db` permit

// One libpq connection for the demo's own statements; every failure throws
// std::runtime_error with the server's message. Used by one thread at a time.
class PgLink {
 public:
  explicit PgLink(const std::string& conninfo) : conn_(PQconnectdb(conninfo.c_str())) {
    if (PQstatus(conn_) != CONNECTION_OK) {
      const std::string why = conn_ != nullptr ? PQerrorMessage(conn_) : "out of memory";
      PQfinish(conn_);
      throw std::runtime_error("cannot connect to PostgreSQL (" + conninfo + "): " + why);
    }
    PQsetNoticeProcessor(conn_, [](void*, const char*) {}, nullptr);
  }
  ~PgLink() { PQfinish(conn_); }
  PgLink(const PgLink&) = delete;
  PgLink& operator=(const PgLink&) = delete;

  // Runs `sql` (several statements allowed); the rows of the last one.
  std::unique_ptr<PGresult, void (*)(PGresult*)> exec(const std::string& sql) { return run(conn_, sql); }
  // The first column of the first row, as text ("" when NULL).
  std::string value(const std::string& sql) {
    auto r = exec(sql);
    if (PQntuples(r.get()) == 0) throw std::runtime_error("no row from: " + sql);
    return PQgetvalue(r.get(), 0, 0);
  }
  long number(const std::string& sql) { return std::stol("0" + value(sql)); }

  static std::unique_ptr<PGresult, void (*)(PGresult*)> run(PGconn* conn, const std::string& sql) {
    std::unique_ptr<PGresult, void (*)(PGresult*)> r(PQexec(conn, sql.c_str()), PQclear);
    const ExecStatusType status = PQresultStatus(r.get());
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
      throw std::runtime_error("'" + sql.substr(0, 80) + "' failed: " + PQerrorMessage(conn));
    }
    return r;
  }

 private:
  PGconn* conn_;
};

// `conninfo` with its dbname replaced.
std::string with_dbname(const std::string& conninfo, const std::string& dbname) {
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &error);
  if (options == nullptr) {
    const std::string why = error != nullptr ? error : "out of memory";
    PQfreemem(error);
    throw std::runtime_error("cannot parse the conninfo '" + conninfo + "': " + why);
  }
  std::string out;
  for (const PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (o->val == nullptr || std::string(o->keyword) == "dbname") continue;
    std::string quoted = "'";
    for (const char* c = o->val; *c != '\0'; ++c) {
      if (*c == '\'' || *c == '\\') quoted += '\\';
      quoted += *c;
    }
    out += std::string(o->keyword) + "=" + quoted + "' ";
  }
  PQconninfoFree(options);
  return out + "dbname=" + dbname;
}

ordo::PostgresStore store_for(const std::string& conninfo, const std::string& name) {
  ordo::PostgresStore store = ordo::postgres(conninfo);
  store.lease = kLease;
  store.poll = 200ms;
  store.worker_name = name;
  return store;
}

// The worker processes, killed (SIGKILL) and reaped if the story ends early.
// Thread-safety: the story's thread only.
class Fleet {
 public:
  struct Worker {
    std::string name;
    pid_t pid = -1;
    int stdin_fd = -1;  // closing it tells the worker to drain and exit
    int exit_status = -1;
  };
  ~Fleet() {
    for (Worker& w : workers_) {
      if (w.pid <= 0) continue;
      ::kill(w.pid, SIGKILL);
      ::waitpid(w.pid, nullptr, 0);
    }
    for (Worker& w : workers_) close_stdin(w);
  }
  void spawn(const std::string& name, const std::string& conninfo) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    // Everything exec needs is built before fork: in between only dup2 and exec run.
    const char* argv[] = {"ordo-demo", "--pg-worker", name.c_str(), "--pg-conninfo", conninfo.c_str(), nullptr};
    std::fflush(stdout);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(fds[0], STDIN_FILENO);  // the copy on 0 is not close-on-exec
      ::execv("/proc/self/exe", const_cast<char* const*>(argv));
      ::_exit(127);
    }
    ::close(fds[0]);
    if (pid < 0) {
      ::close(fds[1]);
      throw std::runtime_error("fork failed");
    }
    workers_.push_back({name, pid, fds[1], -1});
  }
  void kill(Worker& w) {
    ::kill(w.pid, SIGKILL);
    reap(w);
  }
  // Tells every live worker to drain and exit; true when all exited with 0 in time.
  bool stop_all(std::chrono::seconds patience) {
    for (Worker& w : workers_) close_stdin(w);
    const auto give_up = Clock::now() + patience;
    bool ok = true;
    for (Worker& w : workers_) {
      while (w.pid > 0 && Clock::now() < give_up) {
        int status = 0;
        if (::waitpid(w.pid, &status, WNOHANG) == w.pid) {
          w.pid = -1;
          w.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
          ok = ok && w.exit_status == 0;
        } else {
          std::this_thread::sleep_for(10ms);
        }
      }
      if (w.pid > 0) {
        std::fprintf(stderr, "ordo-demo: worker %s did not exit within %llds of its stdin closing\n", w.name.c_str(),
                     static_cast<long long>(patience.count()));
        ok = false;
      }
    }
    return ok;
  }
  std::vector<Worker>& workers() { return workers_; }

 private:
  static void close_stdin(Worker& w) {
    if (w.stdin_fd >= 0) ::close(w.stdin_fd);
    w.stdin_fd = -1;
  }
  static void reap(Worker& w) {
    int status = 0;
    ::waitpid(w.pid, &status, 0);
    w.exit_status = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
    w.pid = -1;
    close_stdin(w);
  }
  std::vector<Worker> workers_;
};

// Waits (bounded) until `done` holds; false when the time ran out.
template <class Done>
bool wait_until(Done done, std::chrono::seconds patience) {
  const auto give_up = Clock::now() + patience;
  while (!done()) {
    if (Clock::now() >= give_up) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

std::string id_list(const std::vector<ordo::TaskId>& ids) {
  std::string out;
  for (ordo::TaskId id : ids) out += (out.empty() ? "" : ",") + std::to_string(id);
  return out;
}

FleetStoryResult run_story(const FleetStoryOptions& o, const std::string& conninfo) {
  FleetStoryResult result;
  PgLink db(conninfo);
  // No UNIQUE on job: a job whose effect was applied twice shows as two rows.
  db.exec("CREATE TABLE demo_effects (job bigint NOT NULL, worker text NOT NULL, attempt integer NOT NULL,"
          " started timestamptz NOT NULL DEFAULT clock_timestamp());"
          "CREATE TABLE demo_gauge (peak integer NOT NULL); INSERT INTO demo_gauge VALUES (0);");

  ordo::Scheduler sched({.workers = 2, .name = "fleet-producer"});
  ordo::DurableTasks producer(sched, store_for(conninfo, "producer"));
  producer.define("query", ordo::TaskHandler{});  // no handler: enqueued here, run by the workers only
  producer.start();
  producer.set_global_limit("db", kDbLimit);

  Fleet fleet;
  for (int i = 1; i <= o.workers; ++i) fleet.spawn("w" + std::to_string(i), conninfo);
  std::printf("  %d worker processes (4 threads each) share one queue; global group db = %d; lease %lld ms\n",
              o.workers, kDbLimit, static_cast<long long>(kLease.count()));

  // Acknowledged: enqueue returned the id, so the job is committed.
  std::vector<ordo::TaskId> ids(static_cast<std::size_t>(o.jobs));
  {
    std::vector<std::thread> producers;
    for (int t = 0; t < 4; ++t) {
      producers.emplace_back([&, t] {
        for (int i = t; i < o.jobs; i += 4) {
          ids[static_cast<std::size_t>(i)] =
              producer.enqueue("query", std::to_string(i), {.global_needs = {{"db", 1}}});
        }
      });
    }
    for (auto& p : producers) p.join();
  }
  result.enqueued = static_cast<long>(ids.size());
  std::printf("  %d jobs enqueued by this process (type `query` has no handler here); each needs db x1 and writes\n"
              "  its effect row in the transaction that records its completion\n", o.jobs);

  // The victim: the first worker, once a third of the work is done and it
  // holds at least one job (running, or claimed and queued there).
  Fleet::Worker& victim = fleet.workers().front();
  const std::string victim_q = "'" + victim.name + "'";
  const long kill_after = o.jobs / 3;
  long effects_at_kill = 0;
  std::string kill_at;
  std::vector<ordo::TaskId> victim_jobs;
  const bool ready = wait_until([&] {
    effects_at_kill = db.number("SELECT count(*) FROM demo_effects");
    return effects_at_kill >= kill_after &&
           db.number("SELECT count(*) FROM ordo.jobs WHERE state = 'running' AND owner = " + victim_q) > 0;
  }, 60s);
  if (!ready) {
    std::fprintf(stderr, "ordo-demo: after 60 s, %ld effects and worker %s holds no job: the fleet is not running\n",
                 effects_at_kill, victim.name.c_str());
    return result;
  }
  const pid_t victim_pid = victim.pid;
  fleet.kill(victim);
  result.killed = true;
  // Its jobs still carry its name until their lease runs out and another
  // process's heartbeat takes them back.
  kill_at = db.value("SELECT clock_timestamp()");
  {
    auto r = db.exec("SELECT id FROM ordo.jobs WHERE state = 'running' AND owner = " + victim_q + " ORDER BY id");
    for (int i = 0; i < PQntuples(r.get()); ++i) victim_jobs.push_back(std::stoull(PQgetvalue(r.get(), i, 0)));
  }
  std::printf("  killed worker %s (pid %d) with SIGKILL after %ld effects; it held job(s) %s\n", victim.name.c_str(),
              static_cast<int>(victim_pid), effects_at_kill, victim_jobs.empty() ? "(none)" : id_list(victim_jobs).c_str());

  {
    std::atomic<long> done{0}, in_use{0}, peak{0};
    ProgressLine line([&] {
      return "effects " + std::to_string(done.load()) + "/" + std::to_string(o.jobs) + " | db " +
             std::to_string(in_use.load()) + "/" + std::to_string(kDbLimit) + " in use, peak " +
             std::to_string(peak.load());
    });
    const bool finished = wait_until([&] {
      auto r = db.exec("SELECT (SELECT count(DISTINCT job) FROM demo_effects), in_use, peak,"
                       " (SELECT count(*) FROM ordo.jobs WHERE state IN ('available', 'running', 'blocked'))"
                       " FROM ordo.groups WHERE name = 'db'");
      done = std::stol(PQgetvalue(r.get(), 0, 0));
      in_use = std::stol(PQgetvalue(r.get(), 0, 1));
      peak = std::stol(PQgetvalue(r.get(), 0, 2));
      return std::stol(PQgetvalue(r.get(), 0, 3)) == 0;
    }, 120s);
    line.finish();
    if (!finished) {
      std::fprintf(stderr, "ordo-demo: jobs still live after 120 s\n");
      return result;
    }
  }
  const bool stopped = fleet.stop_all(30s);

  const std::string acknowledged = "'{" + id_list(ids) + "}'::bigint[]";
  result.completed = db.number("SELECT count(DISTINCT job) FROM demo_effects WHERE job = ANY(" + acknowledged + ")");
  result.lost = db.number("SELECT count(*) FROM unnest(" + acknowledged +
                          ") AS a(id) WHERE NOT EXISTS (SELECT 1 FROM demo_effects e WHERE e.job = a.id)");
  result.duplicated = db.number("SELECT count(*) - count(DISTINCT job) FROM demo_effects");
  result.peak_groups = db.number("SELECT peak FROM ordo.groups WHERE name = 'db'");
  result.peak_handlers = db.number("SELECT peak FROM demo_gauge");
  const long dead = db.number("SELECT count(*) FROM ordo.jobs WHERE state = 'dead'");
  if (!victim_jobs.empty()) {
    auto r = db.exec("SELECT extract(epoch FROM min(started) - '" + kill_at + "'::timestamptz) * 1000,"
                     " extract(epoch FROM max(started) - '" + kill_at + "'::timestamptz) * 1000"
                     " FROM demo_effects WHERE worker <> " + victim_q + " AND job = ANY('{" + id_list(victim_jobs) +
                     "}'::bigint[])");
    if (!PQgetisnull(r.get(), 0, 0)) {
      result.failover_ms = std::stod(PQgetvalue(r.get(), 0, 0));
      result.failover_all_ms = std::stod(PQgetvalue(r.get(), 0, 1));
    }
  }
  std::string per_worker;
  {
    auto r = db.exec("SELECT worker, count(*) FROM demo_effects GROUP BY worker ORDER BY worker");
    for (int i = 0; i < PQntuples(r.get()); ++i) {
      per_worker += std::string(per_worker.empty() ? "" : ", ") + PQgetvalue(r.get(), i, 0) + " " + PQgetvalue(r.get(), i, 1);
    }
  }
  if (result.failover_ms >= 0) {
    std::printf("  its jobs started elsewhere %.0f ms after the kill (the last of them at %.0f ms); lease %lld ms\n",
                result.failover_ms, result.failover_all_ms, static_cast<long long>(kLease.count()));
  }
  std::printf("  effects per worker: %s; dead jobs: %ld; survivors drained and exited: %s\n", per_worker.c_str(), dead,
              stopped ? "yes" : "NO");
  std::printf("  most db holders fleet-wide: %ld by the database (ordo.groups.peak), %ld by the handlers' own count; "
              "limit %d\n", result.peak_groups, result.peak_handlers, kDbLimit);
  std::printf("  summary: enqueued=%ld completed=%ld lost=%ld duplicated=%ld db_peak=%ld failover_ms=%.0f\n",
              result.enqueued, result.completed, result.lost, result.duplicated,
              std::max(result.peak_groups, result.peak_handlers), result.failover_ms);
  const bool good = result.killed && stopped && dead == 0 && result.lost == 0 && result.duplicated == 0 &&
                    result.completed == result.enqueued && result.peak_groups <= kDbLimit &&
                    result.peak_handlers <= kDbLimit && result.peak_groups > 0;
  if (!good) std::fprintf(stderr, "ordo-demo: the fleet story FAILED (see the summary above)\n");
  result.exit_code = good ? 0 : 1;
  producer.shutdown();
  return result;
}

}  // namespace

FleetStoryResult fleet_story(const FleetStoryOptions& options) {
  FleetStoryResult result;
  try {
    PgLink server(options.conninfo);
    const std::string dbname = "ordo_demo_fleet_" + std::to_string(::getpid());
    server.exec("DROP DATABASE IF EXISTS " + dbname + " WITH (FORCE)");
    server.exec("CREATE DATABASE " + dbname);
    std::printf("  database %s (dropped at the end)\n", dbname.c_str());
    try {
      result = run_story(options, with_dbname(options.conninfo, dbname));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ordo-demo: the fleet story failed: %s\n", e.what());
      result.exit_code = 1;
    }
    server.exec("DROP DATABASE IF EXISTS " + dbname + " WITH (FORCE)");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ordo-demo: the fleet story failed: %s\n", e.what());
    result.exit_code = 1;
  }
  return result;
}

int fleet_worker(const std::string& conninfo, const std::string& name) {
  try {
    ordo::Scheduler sched({.workers = 4, .name = "fleet-" + name});
    ordo::DurableTasks jobs(sched, store_for(conninfo, name));
    ordo::TaskTypeOptions options;
    options.transactional = true;
    options.retry.max_attempts = 10;  // a kill costs an attempt; none of these jobs fails otherwise
    options.retry.initial_backoff = 10ms;
    jobs.define("query", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
      // One connection per worker thread for the handlers' own count, outside
      // the attempt's transaction (whose row locks would serialise every job).
      thread_local std::unique_ptr<PgLink> gauge;
      if (!gauge) gauge = std::make_unique<PgLink>(conninfo);
      const std::string key = "4242, " + std::to_string(ctx.id());
      try {
        gauge->exec("BEGIN; SELECT 1 FROM demo_gauge FOR UPDATE; SELECT pg_advisory_lock(" + key + ");"
                    " UPDATE demo_gauge SET peak = greatest(peak, (SELECT count(*) FROM pg_locks"
                    "   WHERE locktype = 'advisory' AND classid = 4242 AND objsubid = 2 AND granted)); COMMIT");
        PgLink::run(ctx.transaction(), "INSERT INTO demo_effects (job, worker, attempt) VALUES (" +
                                           std::to_string(ctx.id()) + ", '" + name + "', " +
                                           std::to_string(ctx.attempt()) + ")");
        std::this_thread::sleep_for(kQueryTime);  // the query, holding its `db` permit
        gauge->exec("BEGIN; SELECT 1 FROM demo_gauge FOR UPDATE; SELECT pg_advisory_unlock(" + key + "); COMMIT");
      } catch (...) {
        gauge.reset();  // its session (and any advisory lock) ends with it
        throw;
      }
    }, options);
    jobs.start();
    char byte;
    while (::read(STDIN_FILENO, &byte, 1) > 0) {
    }
    jobs.shutdown(ordo::ShutdownMode::drain);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ordo-demo worker %s: %s\n", name.c_str(), e.what());
    return 1;
  }
}

}  // namespace demo
