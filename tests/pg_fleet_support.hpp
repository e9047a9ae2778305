// Helpers for tests that run a fleet of real processes on one PostgreSQL database
// (tests/behaviour/pg_fleet_test.cpp): the tables the worker's handlers write to, a Fleet
// of pg_fleet_worker processes (spawned, killed, stopped, resumed; all killed when it goes
// away, so no test leaks one), an enqueue-only DurableTasks, and bounded waits on the
// database.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "pg_support.hpp"

extern char** environ;

namespace ordo::test {

// What pg_fleet_worker's handlers write (see the comment at the top of that file).
inline const char* const kFleetSchema = R"SQL(
CREATE TABLE fleet_events (seq bigserial PRIMARY KEY, kind text NOT NULL, job_id bigint NOT NULL,
  attempt integer NOT NULL, worker text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE fleet_effects (job_id bigint NOT NULL, attempt integer NOT NULL, worker text NOT NULL);
CREATE TABLE fleet_gauge (cur integer NOT NULL, peak integer NOT NULL);
INSERT INTO fleet_gauge VALUES (0, 0);
CREATE TABLE fleet_active (worker text NOT NULL, job_id bigint NOT NULL, attempt integer NOT NULL);
CREATE TABLE fleet_gates (job_id bigint NOT NULL, attempt integer);
)SQL";

inline std::int64_t count_of(PgConn& conn, const std::string& sql) { return std::stoll(conn.scalar(sql)); }

// Polls `done` (a database query, typically) every 20 ms until it holds or `limit` passes.
inline bool poll_until(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

struct WorkerOptions {
  unsigned workers = 2;
  std::chrono::milliseconds lease{1000};
  std::chrono::milliseconds poll{200};
  unsigned max_held = 0;  // PostgresStore::max_held; 0: its default
  // A libfaketime offset ("-5m") for the process's wall clock; empty: the real clock.
  std::string clock_offset{};
};

// Worker processes of one test. Thread-safety: one thread (the test's) uses it.
class Fleet {
 public:
  explicit Fleet(std::string conninfo) : conninfo_(std::move(conninfo)) {}
  // Kills the workers still running. One that exited by itself (a crash, a sanitizer's
  // report) fails the test: the others taking over its jobs would hide it.
  ~Fleet() {
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      if (!workers_[i].alive) continue;
      int status = 0;
      if (::waitpid(workers_[i].pid, &status, WNOHANG) == workers_[i].pid) {
        ADD_FAILURE() << "worker " << workers_[i].name << " exited by itself ("
                      << (WIFEXITED(status) ? "status " + std::to_string(WEXITSTATUS(status))
                                            : "signal " + std::to_string(WTERMSIG(status)))
                      << "; its stderr is above)";
        ::close(workers_[i].out);
        workers_[i].alive = false;
        continue;
      }
      reap(i, SIGKILL);
    }
  }
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;

  // Starts worker `name`; returns its index once it printed "ready". Throws PgError when
  // it exits or stays silent instead.
  std::size_t spawn(const std::string& name, const WorkerOptions& options = {}) {
    // Its connections carry its name, so that the test can tell when they are all gone.
    std::vector<std::string> args = {ORDO_PG_FLEET_WORKER, "--conninfo", conninfo_ + " application_name=" + name,
                                     "--name", name,
                                     "--workers", std::to_string(options.workers),
                                     "--lease-ms", std::to_string(options.lease.count()),
                                     "--poll-ms", std::to_string(options.poll.count()),
                                     "--max-held", std::to_string(options.max_held)};
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      if (options.clock_offset.empty() || std::strncmp(*e, "ASAN_OPTIONS=", 13) != 0) env.emplace_back(*e);
    }
    if (!options.clock_offset.empty()) {
      env.push_back("LD_PRELOAD=" + faketime_library());
      env.push_back("FAKETIME=" + options.clock_offset);
      env.push_back("DONT_FAKE_MONOTONIC=1");  // only the wall clock is off, as on a skewed machine
      // libfaketime is preloaded ahead of ASan's runtime, which would refuse to start.
      const char* asan = std::getenv("ASAN_OPTIONS");
      env.push_back(std::string("ASAN_OPTIONS=") + (asan != nullptr ? std::string(asan) + ":" : "") +
                    "verify_asan_link_order=0");
    }
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw PgError("pipe2 failed");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_t pid = -1;
    const int failed = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    if (failed != 0) {
      ::close(out[0]);
      throw PgError(std::string("cannot spawn ") + argv[0] + ": " + std::strerror(failed));
    }
    workers_.push_back({pid, name, out[0], true, 0});
    const std::size_t index = workers_.size() - 1;
    const std::string line = read_line(index, std::chrono::seconds(60));
    if (line.rfind("ready ", 0) != 0) {
      reap(index, SIGKILL);
      throw PgError("worker " + name + " did not start (it printed '" + line + "'; its stderr is above)");
    }
    workers_[index].clock_ms = std::stoll(line.substr(6));
    return index;
  }

  // kill -9; then, once the server has ended every session of the worker (a statement
  // it had sent may still commit until then), takes its rows out of fleet_gauge's
  // current count. Its permits are not granted to anyone else before its lease runs out.
  void kill9(std::size_t i) {
    reap(i, SIGKILL);
    PgConn conn(conninfo_);
    const std::string name = workers_[i].name;
    const bool gone = poll_until([&] {
      return conn.scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + name + "'") == "0";
    }, std::chrono::seconds(20));
    if (!gone) throw PgError("the sessions of killed worker " + name + " never ended");
    conn.exec("WITH d AS (DELETE FROM fleet_active WHERE worker = '" + name +
              "' RETURNING 1) UPDATE fleet_gauge SET cur = cur - (SELECT count(*) FROM d)");
  }
  void stop(std::size_t i) { ::kill(workers_[i].pid, SIGSTOP); }
  void resume(std::size_t i) { ::kill(workers_[i].pid, SIGCONT); }
  // Still running (not exited or killed by anything but this Fleet).
  bool alive(std::size_t i) {
    if (!workers_[i].alive) return false;
    int status = 0;
    if (::waitpid(workers_[i].pid, &status, WNOHANG) == workers_[i].pid) {
      workers_[i].alive = false;
      ::close(workers_[i].out);
    }
    return workers_[i].alive;
  }
  const std::string& name(std::size_t i) const { return workers_[i].name; }
  // The worker's wall clock when it started, in ms since the epoch (as it saw it).
  long long clock_ms(std::size_t i) const { return workers_[i].clock_ms; }
  // The index of the worker named `name`; throws PgError if none.
  std::size_t index_of(const std::string& name) const {
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      if (workers_[i].name == name) return i;
    }
    throw PgError("no worker named '" + name + "' in this fleet");
  }

 private:
  struct Worker {
    pid_t pid;
    std::string name;
    int out;  // its stdout
    bool alive;
    long long clock_ms;
  };

  static std::string faketime_library() {
    for (const char* path : {"/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                             "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"}) {
      if (::access(path, R_OK) == 0) return path;
    }
    throw PgError("libfaketime.so.1 not found: install the Debian package faketime (scripts/deps.sh)");
  }

  void reap(std::size_t i, int signal) {
    Worker& w = workers_[i];
    if (!w.alive) return;
    ::kill(w.pid, signal);
    ::kill(w.pid, SIGCONT);  // a stopped process dies of SIGKILL all the same; SIGTERM needs it running
    int status = 0;
    ::waitpid(w.pid, &status, 0);
    ::close(w.out);
    w.alive = false;
  }

  std::string read_line(std::size_t i, std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    std::string line;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return line + "<nothing more within " + std::to_string(limit.count()) + " ms>";
      pollfd fd{workers_[i].out, POLLIN, 0};
      if (::poll(&fd, 1, static_cast<int>(left.count())) <= 0) continue;
      char c;
      const ssize_t n = ::read(workers_[i].out, &c, 1);
      if (n <= 0) return line + "<exited>";
      if (c == '\n') return line;
      line += c;
    }
  }

  std::string conninfo_;
  std::vector<Worker> workers_;
};

// A DurableTasks in the test process that only enqueues: its types `tx` and `plain` (the
// worker's) have no handler here, so it never claims. Thread-safety: as DurableTasks.
class Enqueuer {
 public:
  explicit Enqueuer(const std::string& conninfo, unsigned max_attempts = 3) : jobs(sched_, store(conninfo)) {
    ordo::TaskTypeOptions options;
    options.retry.max_attempts = max_attempts;
    jobs.define("tx", {}, options);
    jobs.define("plain", {}, options);
    jobs.start();
  }
  ~Enqueuer() { jobs.shutdown(ordo::ShutdownMode::cancel); }

 private:
  static ordo::PostgresStore store(const std::string& conninfo) {
    ordo::PostgresStore s = ordo::postgres(conninfo);
    s.poll = std::chrono::milliseconds(200);
    return s;
  }
  ordo::Scheduler sched_{{.workers = 1}};

 public:
  ordo::DurableTasks jobs;
};

}  // namespace ordo::test
