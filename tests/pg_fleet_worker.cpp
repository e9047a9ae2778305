// One process of a test fleet (tests/behaviour/pg_fleet_test.cpp): a scheduler and a
// DurableTasks on the PostgreSQL store, running until SIGTERM (then shutdown(cancel)) or
// until the test kills or stops it. Its handlers record what they do in the database, so
// the test judges the fleet from there, whatever became of the processes:
//   fleet_events  (seq, kind 'start'|'end', job_id, attempt, worker): seq orders them;
//   fleet_effects (job_id, attempt, worker): the job's effect — with type `tx` inserted in
//                 the attempt's transaction (commits with the completion, or not at all),
//                 with type `plain` in autocommit (at least once);
//   fleet_gauge   (name, cur, peak) and fleet_active (worker, job_id, attempt): handlers
//                 of jobs whose args say `track` count themselves in and out, so `peak` is
//                 the most that ever ran at once fleet-wide (the test takes a killed
//                 worker's rows out of `cur`);
//   fleet_gates   (job_id, attempt NULL = any): a job whose args say `gate` waits for its row.
// The tables are created by the test (fleet_schema_sql in pg_fleet_support.hpp).
//
// A `tx` attempt first takes pg_advisory_xact_lock(job, attempt) in its transaction: the
// test knows the attempt's transaction has ended (committed or rolled back) once it can
// take that lock itself.
//
// Args of a job, space separated: sleep=MS, gate, track, fail_unless_gate (fails while no
// gate row exists). Command line: --conninfo C --name N [--workers N] [--lease-ms L]
// [--poll-ms P] [--max-held H]. Prints "ready <system_clock ms>" once started (the test
// checks a faked clock with it).
#include <libpq-fe.h>
#include <signal.h>
#include <sys/prctl.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "pg_support.hpp"

namespace {

using namespace std::chrono_literals;
using ordo::test::PgConn;
using ordo::test::PgError;

std::string g_conninfo;
std::string g_name;

struct JobArgs {
  int sleep_ms = 0;
  bool gate = false;
  bool track = false;
  bool fail_unless_gate = false;
};

JobArgs parse(std::string_view text) {
  JobArgs args;
  std::istringstream in{std::string(text)};
  for (std::string word; in >> word;) {
    if (word.rfind("sleep=", 0) == 0) args.sleep_ms = std::stoi(word.substr(6));
    if (word == "gate") args.gate = true;
    if (word == "track") args.track = true;
    if (word == "fail_unless_gate") args.fail_unless_gate = true;
  }
  return args;
}

// Each scheduler worker thread's own autocommit connection, dropped after any failure
// (a restarted server), so the next attempt connects afresh.
thread_local std::unique_ptr<PgConn> t_conn;

std::string local_scalar(const std::string& sql) {
  try {
    if (!t_conn) t_conn = std::make_unique<PgConn>(g_conninfo);
    return t_conn->scalar(sql);
  } catch (...) {
    t_conn.reset();
    throw;
  }
}
void local_exec(const std::string& sql) {
  try {
    if (!t_conn) t_conn = std::make_unique<PgConn>(g_conninfo);
    t_conn->exec(sql);
  } catch (...) {
    t_conn.reset();
    throw;
  }
}

void exec_in(pg_conn* conn, const std::string& sql) {
  PGresult* r = PQexec(conn, sql.c_str());
  const ExecStatusType status = PQresultStatus(r);
  PQclear(r);
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    throw PgError("'" + sql + "' failed in the attempt's transaction: " + PQerrorMessage(conn));
  }
}

bool gate_open(const std::string& job, const std::string& attempt) {
  return local_scalar("SELECT EXISTS (SELECT 1 FROM fleet_gates WHERE job_id = " + job +
                      " AND (attempt IS NULL OR attempt = " + attempt + "))") == "t";
}

void handle(ordo::TaskContext& ctx, bool transactional) {
  const JobArgs args = parse(ctx.args_text());
  const std::string job = std::to_string(ctx.id());
  const std::string attempt = std::to_string(ctx.attempt());
  const std::string who = "'" + g_name + "'";
  if (transactional) exec_in(ctx.transaction(), "SELECT pg_advisory_xact_lock(" + job + ", " + attempt + ")");
  local_exec("INSERT INTO fleet_events (kind, job_id, attempt, worker) VALUES ('start', " + job + ", " + attempt +
             ", " + who + ")");
  if (args.fail_unless_gate && !gate_open(job, attempt)) {
    throw std::runtime_error("job " + job + " fails until its gate opens");
  }
  if (args.track) {
    local_exec("WITH a AS (INSERT INTO fleet_active VALUES (" + who + ", " + job + ", " + attempt +
               ")) UPDATE fleet_gauge SET cur = cur + 1, peak = greatest(peak, cur + 1)");
  }
  // A gate the test never opens leaves the job held until the process dies.
  while (args.gate && !gate_open(job, attempt)) std::this_thread::sleep_for(10ms);
  if (args.sleep_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(args.sleep_ms));
  const std::string effect =
      "INSERT INTO fleet_effects (job_id, attempt, worker) VALUES (" + job + ", " + attempt + ", " + who + ")";
  if (transactional) {
    exec_in(ctx.transaction(), effect);
  } else {
    local_exec(effect);
  }
  if (args.track) {
    local_exec("WITH d AS (DELETE FROM fleet_active WHERE worker = " + who + " AND job_id = " + job +
               " AND attempt = " + attempt + " RETURNING 1) UPDATE fleet_gauge SET cur = cur - (SELECT count(*) FROM d)");
  }
  local_exec("INSERT INTO fleet_events (kind, job_id, attempt, worker) VALUES ('end', " + job + ", " + attempt +
             ", " + who + ")");
}

int run(int argc, char** argv) {
  unsigned workers = 2;
  ordo::PostgresStore store;
  store.lease = 1000ms;
  store.poll = 200ms;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    const std::string value = argv[i + 1];
    if (key == "--conninfo") {
      g_conninfo = value;
    } else if (key == "--name") {
      g_name = value;
    } else if (key == "--workers") {
      workers = static_cast<unsigned>(std::stoul(value));
    } else if (key == "--lease-ms") {
      store.lease = std::chrono::milliseconds(std::stol(value));
    } else if (key == "--poll-ms") {
      store.poll = std::chrono::milliseconds(std::stol(value));
    } else if (key == "--max-held") {
      store.max_held = static_cast<unsigned>(std::stoul(value));
    } else {
      std::fprintf(stderr, "pg_fleet_worker: unknown option %s\n", key.c_str());
      return 2;
    }
  }
  if (g_conninfo.empty() || g_name.empty() || g_name.find('\'') != std::string::npos) {
    std::fprintf(stderr, "pg_fleet_worker: --conninfo and --name (no quotes) are required\n");
    return 2;
  }
  store.conninfo = g_conninfo;
  store.worker_name = g_name;

  // SIGTERM is taken by sigwait below; blocked before any thread exists so none gets it.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  ordo::Scheduler sched({.workers = workers});
  ordo::DurableTasks jobs(sched, store);
  ordo::TaskTypeOptions tx_options;
  tx_options.transactional = true;
  tx_options.retry.initial_backoff = 20ms;
  tx_options.retry.max_backoff = 200ms;
  ordo::TaskTypeOptions plain_options = tx_options;
  plain_options.transactional = false;
  jobs.define("tx", [](ordo::TaskContext& ctx, std::span<const std::byte>) { handle(ctx, true); }, tx_options);
  jobs.define("plain", [](ordo::TaskContext& ctx, std::span<const std::byte>) { handle(ctx, false); }, plain_options);
  jobs.start();
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::system_clock::now().time_since_epoch()).count();
  std::printf("ready %lld\n", static_cast<long long>(now_ms));
  std::fflush(stdout);

  int signal = 0;
  sigwait(&stop_signals, &signal);
  jobs.shutdown(ordo::ShutdownMode::cancel);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // A test that dies leaves no worker behind.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pg_fleet_worker: %s\n", e.what());
    return 1;
  }
}
