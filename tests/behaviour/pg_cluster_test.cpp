// The test infrastructure for the PostgreSQL backend: scripts/pg.sh, the `pg` fixture's
// cluster and the helpers of tests/pg_support.hpp. Everything the backend's tests stand
// on, checked against a real server.
#include "pg_support.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

using namespace ordo::test;

namespace {

// Sets or clears an environment variable for one test and puts back what was there.
class ScopedEnvironment {
 public:
  ScopedEnvironment(const char* name, const char* value) : name_(name) {
    if (const char* before = std::getenv(name)) before_ = before;
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnvironment() {
    if (before_) {
      ::setenv(name_, before_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnvironment(const ScopedEnvironment&) = delete;
  ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

 private:
  const char* name_;
  std::optional<std::string> before_;
};

// The value `key` has in `conninfo` as libpq reads it; "" when absent.
std::string conninfo_option(const std::string& conninfo, const std::string& key) {
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &error);
  if (options == nullptr) {
    std::string why = error != nullptr ? error : "out of memory";
    PQfreemem(error);
    throw PgError("cannot parse '" + conninfo + "': " + why);
  }
  std::string value;
  for (const PQconninfoOption* option = options; option->keyword != nullptr; ++option) {
    if (key == option->keyword && option->val != nullptr) value = option->val;
  }
  PQconninfoFree(options);
  return value;
}

std::string pg_sh_with_errors(const std::string& action, const std::string& dir) {
  return "bash " + shell_quoted(ORDO_PG_SCRIPT) + " " + action + " " + shell_quoted(dir) + " 2>&1";
}

}  // namespace

TEST(PgTestConninfo, WithNoServerNamedTheTestFailsWithAMessageInsteadOfSkipping) {
  ScopedEnvironment no_conninfo("ORDO_PG_CONNINFO", nullptr);
  ScopedEnvironment no_file("ORDO_PG_CONNINFO_FILE", nullptr);
  try {
    pg_test_conninfo();
    FAIL() << "pg_test_conninfo() returned although no server was named";
  } catch (const PgError& e) {
    EXPECT_NE(std::string(e.what()).find("ORDO_PG_CONNINFO"), std::string::npos) << e.what();
  }
}

TEST(PgTestConninfo, AFixtureFileThatIsMissingFailsNamingTheFixture) {
  ScopedEnvironment no_conninfo("ORDO_PG_CONNINFO", nullptr);
  ScopedEnvironment missing_file("ORDO_PG_CONNINFO_FILE", "/nonexistent/pg_conninfo.txt");
  try {
    pg_test_conninfo();
    FAIL() << "pg_test_conninfo() returned although the fixture's file does not exist";
  } catch (const PgError& e) {
    EXPECT_NE(std::string(e.what()).find("pg_cluster_start"), std::string::npos) << e.what();
  }
}

TEST(PgTestConninfo, TheEnvironmentOverridesTheFixturesFile) {
  ScopedEnvironment given("ORDO_PG_CONNINFO", "host=/elsewhere user=someone dbname=other");
  EXPECT_EQ(pg_test_conninfo(), "host=/elsewhere user=someone dbname=other");
}

TEST(PgConninfoWithDbname, ReplacesTheDatabaseAndKeepsTheRestInEitherForm) {
  for (const std::string given : {"host=/tmp/x user=postgres dbname=postgres", "host=/tmp/x user=postgres",
                                  "postgresql://postgres@/postgres?host=/tmp/x"}) {
    const std::string result = pg_conninfo_with_dbname(given, "t1");
    EXPECT_EQ(conninfo_option(result, "dbname"), "t1") << given << " -> " << result;
    EXPECT_EQ(conninfo_option(result, "host"), "/tmp/x") << given << " -> " << result;
    EXPECT_EQ(conninfo_option(result, "user"), "postgres") << given << " -> " << result;
  }
  const std::string odd = pg_conninfo_with_dbname("host=/tmp/x application_name='it\\'s a b'", "t1");
  EXPECT_EQ(conninfo_option(odd, "application_name"), "it's a b") << odd;
  EXPECT_THROW(pg_conninfo_with_dbname("host=/tmp/x nonsense=1", "t1"), PgError);
}

TEST(ScratchDatabase, AnswersQueriesInADatabaseOfItsOwn) {
  ScratchDatabase db;
  PgConn conn(db.conninfo());
  EXPECT_EQ(conn.scalar("SELECT 1"), "1");
  EXPECT_EQ(conn.scalar("SELECT current_database()"), db.name());
}

TEST(ScratchDatabase, TwoAreDistinctDatabases) {
  ScratchDatabase first;
  ScratchDatabase second;
  ASSERT_NE(first.name(), second.name());
  PgConn a(first.conninfo());
  PgConn b(second.conninfo());
  a.exec("CREATE TABLE marker (v int); INSERT INTO marker VALUES (1)");
  EXPECT_EQ(a.scalar("SELECT to_regclass('marker') IS NULL"), "f");
  EXPECT_EQ(b.scalar("SELECT to_regclass('marker') IS NULL"), "t");
}

TEST(ScratchDatabase, IsDroppedOnDestructionEvenWhileAConnectionToItIsOpen) {
  PgConn maintenance(pg_test_conninfo());
  std::optional<ScratchDatabase> db(std::in_place);
  const std::string name = db->name();
  PgConn still_open(db->conninfo());
  still_open.exec("CREATE TABLE t (v int)");
  ASSERT_EQ(maintenance.scalar("SELECT count(*) FROM pg_database WHERE datname = '" + name + "'"), "1");

  db.reset();

  EXPECT_EQ(maintenance.scalar("SELECT count(*) FROM pg_database WHERE datname = '" + name + "'"), "0");
  EXPECT_THROW(still_open.exec("SELECT 1"), PgError);
}

TEST(PgConn, ReportsAFailedStatementWithTheServersMessage) {
  ScratchDatabase db;
  PgConn conn(db.conninfo());
  try {
    conn.exec("SELECT * FROM no_such_table");
    FAIL() << "a statement on a missing table succeeded";
  } catch (const PgError& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_table"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(conn.ok()) << "a failed statement must not cost the connection";
  EXPECT_THROW(conn.scalar("SELECT NULL"), PgError);
  EXPECT_THROW(conn.scalar("SELECT 1 WHERE false"), PgError);
}

TEST(PgConn, ConnectingToNoServerThrowsNamingTheConninfo) {
  try {
    PgConn conn("host=/nonexistent-ordo-socket-dir user=postgres dbname=postgres");
    FAIL() << "connected to a server that does not exist";
  } catch (const PgError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-ordo-socket-dir"), std::string::npos) << e.what();
  }
}

TEST(ThrowawayCluster, ListensOnItsSocketOnlyAndCommitsDurably) {
  ThrowawayCluster cluster;
  EXPECT_EQ(cluster.conninfo(), "host=" + cluster.directory() + " user=postgres dbname=postgres");
  PgConn conn(cluster.conninfo());
  EXPECT_EQ(conn.scalar("SHOW listen_addresses"), "");
  EXPECT_EQ(conn.scalar("SHOW unix_socket_directories"), cluster.directory());
  EXPECT_EQ(conn.scalar("SHOW fsync"), "on");
  EXPECT_EQ(conn.scalar("SHOW synchronous_commit"), "on");
  EXPECT_EQ(conn.scalar("SHOW max_connections"), "200");
}

TEST(ThrowawayCluster, ACrashRestartKeepsWhatWasCommittedAndCutsOldConnections) {
  ThrowawayCluster cluster;
  PgConn old_conn(cluster.conninfo());
  old_conn.exec("CREATE TABLE t (v int); INSERT INTO t VALUES (42)");
  PgConn in_flight(cluster.conninfo());
  in_flight.exec("BEGIN; INSERT INTO t VALUES (7)");

  cluster.restart();  // returns once the server accepts connections: no wait needed

  EXPECT_THROW(old_conn.exec("SELECT 1"), PgError);
  EXPECT_THROW(old_conn.exec("SELECT 1"), PgError) << "a cut connection must not come back by itself";
  EXPECT_FALSE(old_conn.ok());
  EXPECT_THROW(in_flight.exec("COMMIT"), PgError);
  PgConn new_conn(cluster.conninfo());
  EXPECT_EQ(new_conn.scalar("SELECT string_agg(v::text, ',') FROM t"), "42");
}

TEST(ThrowawayCluster, StartingAgainOnARunningClusterReturnsItsConninfoAndKeepsItRunning) {
  ThrowawayCluster cluster;
  PgConn conn(cluster.conninfo());
  const ShellRun again = run_shell("bash " + shell_quoted(ORDO_PG_SCRIPT) + " start " + shell_quoted(cluster.directory()));
  ASSERT_EQ(again.exit_status, 0);
  EXPECT_EQ(again.output, cluster.conninfo() + "\n");
  EXPECT_EQ(conn.scalar("SELECT 1"), "1") << "a second start must not restart the server";
}

TEST(PgScript, StopRemovesTheClusterAndItsDirectory) {
  std::string directory;
  {
    ThrowawayCluster cluster;
    directory = cluster.directory();
    ASSERT_TRUE(std::filesystem::exists(directory + "/data/PG_VERSION"));
  }
  EXPECT_FALSE(std::filesystem::exists(directory));
  const ShellRun conninfo = run_shell(pg_sh_with_errors("conninfo", directory));
  EXPECT_NE(conninfo.exit_status, 0) << conninfo.output;
}

TEST(PgScript, RefusesADirectoryWhoseSocketPathWouldBeTooLong) {
  const std::string too_long = "/tmp/ordo-pg-" + std::string(100, 'x');
  const ShellRun run = run_shell(pg_sh_with_errors("start", too_long));
  EXPECT_NE(run.exit_status, 0);
  EXPECT_NE(run.output.find("too long"), std::string::npos) << run.output;
  EXPECT_FALSE(std::filesystem::exists(too_long));
}

TEST(PgScript, StopRefusesToRemoveADirectoryThatIsNotACluster) {
  char path[] = "/tmp/ordo-pg.XXXXXX";
  ASSERT_NE(::mkdtemp(path), nullptr);
  const std::string directory = path;
  std::ofstream(directory + "/precious") << "not a cluster";

  const ShellRun run = run_shell(pg_sh_with_errors("stop", directory));

  EXPECT_NE(run.exit_status, 0);
  EXPECT_NE(run.output.find("refusing"), std::string::npos) << run.output;
  EXPECT_TRUE(std::filesystem::exists(directory + "/precious"));
  std::filesystem::remove_all(directory);
}
