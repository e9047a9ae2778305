// Helpers for tests against a real PostgreSQL server (ctest label `postgres`).
//
// The server is the `pg` fixture's throwaway cluster (tests/pg_fixture.sh, through
// scripts/pg.sh), found via the file named by ORDO_PG_CONNINFO_FILE, or whatever
// ORDO_PG_CONNINFO names. Tests share that server and stay apart by each working in a
// ScratchDatabase; a test that crashes or restarts a server runs a ThrowawayCluster of
// its own. Every failure throws PgError with libpq's message: a test without a server
// fails, it never skips. See docs/testing.md.
#pragma once

#include <libpq-fe.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace ordo::test {

// What a PostgreSQL test helper throws; its message names what failed and how.
class PgError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The server the tests use: ORDO_PG_CONNINFO if set, else the line in the file
// ORDO_PG_CONNINFO_FILE names (written by the `pg` fixture). Throws PgError naming
// both when neither leads to a conninfo.
inline std::string pg_test_conninfo() {
  if (const char* given = std::getenv("ORDO_PG_CONNINFO"); given != nullptr && *given != '\0') return given;
  const char* file = std::getenv("ORDO_PG_CONNINFO_FILE");
  if (file == nullptr || *file == '\0') {
    throw PgError(
        "no PostgreSQL server for this test: neither ORDO_PG_CONNINFO nor ORDO_PG_CONNINFO_FILE is set. Run it "
        "through ctest (its `pg` fixture starts a cluster), or start one with `scripts/pg.sh start DIR` and set "
        "ORDO_PG_CONNINFO to the line it prints");
  }
  std::ifstream in(file);
  std::string line;
  if (!in || !std::getline(in, line) || line.empty()) {
    throw PgError(std::string("no PostgreSQL server for this test: ORDO_PG_CONNINFO_FILE=") + file +
                  " is missing or empty, so the `pg` fixture (ctest test pg_cluster_start) did not run or failed; "
                  "run the test through ctest, or set ORDO_PG_CONNINFO");
  }
  return line;
}

// `conninfo` (key=value or URI form) with its dbname replaced by `dbname`, in key=value
// form. Throws PgError when libpq cannot parse it.
inline std::string pg_conninfo_with_dbname(const std::string& conninfo, const std::string& dbname) {
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &error);
  if (options == nullptr) {
    std::string why = error != nullptr ? error : "out of memory";
    PQfreemem(error);
    throw PgError("cannot parse the conninfo '" + conninfo + "': " + why);
  }
  // Values are quoted, so a space, quote or backslash in one survives the round trip.
  const auto quoted = [](const std::string& value) {
    std::string out = "'";
    for (char c : value) {
      if (c == '\'' || c == '\\') out += '\\';
      out += c;
    }
    return out + "'";
  };
  std::string result;
  for (const PQconninfoOption* option = options; option->keyword != nullptr; ++option) {
    if (option->val == nullptr || std::string(option->keyword) == "dbname") continue;
    result += std::string(option->keyword) + "=" + quoted(option->val) + " ";
  }
  PQconninfoFree(options);
  return result + "dbname=" + quoted(dbname);
}

// One libpq connection, closed on destruction; every failure throws PgError with
// PQerrorMessage. Thread-safety: like a PGconn, used by one thread at a time; distinct
// PgConn objects may be used from distinct threads at once.
class PgConn {
 public:
  explicit PgConn(const std::string& conninfo) : conn_(PQconnectdb(conninfo.c_str())) {
    if (conn_ == nullptr) throw PgError("cannot connect to '" + conninfo + "': out of memory");
    if (PQstatus(conn_) != CONNECTION_OK) {
      std::string why = PQerrorMessage(conn_);
      PQfinish(conn_);
      throw PgError("cannot connect to '" + conninfo + "': " + why);
    }
  }
  ~PgConn() {
    if (conn_ != nullptr) PQfinish(conn_);
  }
  PgConn(const PgConn&) = delete;
  PgConn& operator=(const PgConn&) = delete;
  PgConn(PgConn&& other) noexcept : conn_(std::exchange(other.conn_, nullptr)) {}
  PgConn& operator=(PgConn&& other) noexcept {
    if (this != &other) {
      if (conn_ != nullptr) PQfinish(conn_);
      conn_ = std::exchange(other.conn_, nullptr);
    }
    return *this;
  }

  // Runs `sql` (one or more statements, each committed unless inside BEGIN).
  void exec(const std::string& sql) { PQclear(run(sql)); }

  // The first column of the first row `sql` returns, as text; throws PgError when it
  // returns no row or NULL.
  std::string scalar(const std::string& sql) {
    PGresult* result = run(sql);
    if (PQntuples(result) == 0 || PQnfields(result) == 0 || PQgetisnull(result, 0, 0)) {
      PQclear(result);
      throw PgError("'" + sql + "' returned no row or NULL where a value was expected");
    }
    std::string value = PQgetvalue(result, 0, 0);
    PQclear(result);
    return value;
  }

  // False once libpq has marked the connection dead. The first exec after the server
  // went away throws but may leave this true; the next call finds the connection bad.
  bool ok() const { return PQstatus(conn_) == CONNECTION_OK; }
  PGconn* get() const { return conn_; }

 private:
  PGresult* run(const std::string& sql) {
    PGresult* result = PQexec(conn_, sql.c_str());
    const ExecStatusType status = PQresultStatus(result);  // PGRES_FATAL_ERROR for a null result
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
      PQclear(result);
      throw PgError("'" + sql + "' failed: " + PQerrorMessage(conn_));
    }
    return result;
  }

  PGconn* conn_;
};

// A database of the test's own on a shared server, created empty (ordo_t_<pid>_<n>_<random>)
// and dropped on destruction even while connections to it remain open (WITH (FORCE)).
// Thread-safety: construct and destroy from any thread; name() and conninfo() are
// const and may be read from many threads at once.
class ScratchDatabase {
 public:
  ScratchDatabase() : ScratchDatabase(pg_test_conninfo()) {}

  // `server` names the maintenance database the create and drop run in.
  explicit ScratchDatabase(std::string server) : server_(std::move(server)), name_(fresh_name()) {
    PgConn(server_).exec("CREATE DATABASE " + name_);
    conninfo_ = pg_conninfo_with_dbname(server_, name_);
  }
  ~ScratchDatabase() {
    // A destructor must not throw: a drop that fails is reported, the test goes on.
    try {
      PgConn(server_).exec("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ScratchDatabase: could not drop %s: %s\n", name_.c_str(), e.what());
    }
  }
  ScratchDatabase(const ScratchDatabase&) = delete;
  ScratchDatabase& operator=(const ScratchDatabase&) = delete;

  const std::string& name() const { return name_; }
  // The server's conninfo with dbname set to this database.
  const std::string& conninfo() const { return conninfo_; }

 private:
  // Unique across the processes of one ctest run (pid), the objects of one process
  // (counter), and runs against a long-lived ORDO_PG_CONNINFO server whose pids repeat
  // (random).
  static std::string fresh_name() {
    static std::atomic<unsigned> counter{0};
    std::random_device random;
    char suffix[16];
    std::snprintf(suffix, sizeof suffix, "%08x", static_cast<unsigned>(random()));
    return "ordo_t_" + std::to_string(::getpid()) + "_" + std::to_string(counter.fetch_add(1)) + "_" + suffix;
  }

  std::string server_;
  std::string name_;
  std::string conninfo_;
};

// Runs `command` through the shell; its stdout (stderr too if the command redirects it)
// and exit status. Throws PgError when it cannot be run at all.
struct ShellRun {
  int exit_status = -1;  // -1: killed by a signal
  std::string output;
};
inline ShellRun run_shell(const std::string& command) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) throw PgError("cannot run '" + command + "'");
  ShellRun run;
  char buffer[4096];
  std::size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) run.output.append(buffer, n);
  const int status = ::pclose(pipe);
  if (status != -1 && WIFEXITED(status)) run.exit_status = WEXITSTATUS(status);
  return run;
}

// `text` as one shell word.
inline std::string shell_quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

#ifdef ORDO_PG_SCRIPT
// A PostgreSQL cluster of the test's own (scripts/pg.sh on a fresh /tmp/ordo-pg.XXXXXX),
// for tests that crash, restart or stop a server: the fixture's cluster serves tests
// running in parallel. Stopped and removed on destruction. A test killed before that (a
// ctest timeout, a crash) leaves a marker in ORDO_PG_PRIVATE_CLUSTERS (set by ctest), by
// which the `pg` fixture's cleanup stops the cluster. Thread-safety: conninfo() and
// directory() may be read from many threads; restart() from one thread at a time.
class ThrowawayCluster {
 public:
  ThrowawayCluster() {
    char path[] = "/tmp/ordo-pg.XXXXXX";
    if (::mkdtemp(path) == nullptr) throw PgError("mkdtemp /tmp/ordo-pg.XXXXXX failed");
    directory_ = path;
    // Before the start, so that a kill during it leaves the marker too.
    if (const char* markers = std::getenv("ORDO_PG_PRIVATE_CLUSTERS"); markers != nullptr && *markers != '\0') {
      marker_ = std::string(markers) + "/" + directory_.substr(directory_.rfind('/') + 1);
      ::mkdir(markers, 0700);  // EEXIST when another test made it: fine; the open below reports the rest
      if (!std::ofstream(marker_)) throw PgError("cannot create the marker " + marker_);
    }
    const ShellRun started = pg_sh("start");
    if (started.exit_status != 0) {
      if (pg_sh("stop").exit_status == 0 && !marker_.empty()) ::unlink(marker_.c_str());
      throw PgError("scripts/pg.sh start " + directory_ + " failed (its message is above)");
    }
    conninfo_ = started.output.substr(0, started.output.find('\n'));
  }
  ~ThrowawayCluster() {
    try {
      if (pg_sh("stop").exit_status == 0) {
        if (!marker_.empty()) ::unlink(marker_.c_str());
      } else {
        std::fprintf(stderr, "ThrowawayCluster: scripts/pg.sh stop %s failed\n", directory_.c_str());
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ThrowawayCluster: %s\n", e.what());
    }
  }
  ThrowawayCluster(const ThrowawayCluster&) = delete;
  ThrowawayCluster& operator=(const ThrowawayCluster&) = delete;

  // Crash-restarts the server (pg_ctl restart -m immediate): connections are cut, what was
  // committed survives. Returns once it accepts connections again; throws PgError if not.
  void restart() {
    if (pg_sh("restart").exit_status != 0) {
      throw PgError("scripts/pg.sh restart " + directory_ + " failed (its message is above)");
    }
  }

  const std::string& conninfo() const { return conninfo_; }
  const std::string& directory() const { return directory_; }

 private:
  ShellRun pg_sh(const char* action) const {
    return run_shell("bash " + shell_quoted(ORDO_PG_SCRIPT) + " " + action + " " + shell_quoted(directory_));
  }

  std::string directory_;
  std::string conninfo_;
  std::string marker_;  // empty: no ORDO_PG_PRIVATE_CLUSTERS
};
#endif

}  // namespace ordo::test
