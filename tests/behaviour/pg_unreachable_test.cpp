// The PostgreSQL store while its database cannot be reached. The outage is
// made without stopping the shared server: the test's own database stops
// accepting connections and the store's sessions are terminated, which is
// what a client sees of a server that went away.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "pg_support.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ordo::test;
using Clock = std::chrono::steady_clock;

// Cuts every session of `db` and refuses new ones until destroyed.
class Outage {
 public:
  explicit Outage(const ScratchDatabase& db) : db_(db) {
    PgConn server(pg_test_conninfo());
    server.exec("ALTER DATABASE " + db_.name() + " ALLOW_CONNECTIONS false");
    server.exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" + db_.name() + "'");
  }
  ~Outage() {
    try {
      PgConn(pg_test_conninfo()).exec("ALTER DATABASE " + db_.name() + " ALLOW_CONNECTIONS true");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "Outage: could not end it: %s\n", e.what());
    }
  }
  Outage(const Outage&) = delete;
  Outage& operator=(const Outage&) = delete;

 private:
  const ScratchDatabase& db_;
};

TEST(PgUnreachable, StatsAnswerAtOnceWithTheStoresCountsAsZero) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 1});
  ordo::PostgresStore store = ordo::postgres(db.conninfo());
  store.poll = 100ms;
  ordo::DurableTasks jobs(sched, store);
  jobs.define("later", ordo::TaskHandler{});
  jobs.start();
  jobs.enqueue("later", "x");
  ASSERT_EQ(jobs.stats().live, 1u);
  {
    Outage outage(db);
    // A metrics scrape must not hang for the length of a reconnect patience.
    const auto started = Clock::now();
    const ordo::DurableStats st = jobs.stats();
    const auto took = Clock::now() - started;
    EXPECT_LT(took, 3s) << "stats() took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                        << " ms while the database was away";
    EXPECT_EQ(st.live, 0u);
    EXPECT_TRUE(st.accepting);
  }
  // Back: the next call reconnects and counts again.
  EXPECT_TRUE(eventually([&] { return jobs.stats().live == 1u; }, 20s));
  jobs.shutdown(ordo::ShutdownMode::cancel);
}

TEST(PgUnreachable, StatusThrowsStoreErrorWithinOneReconnectPatience) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 1});
  ordo::PostgresStore store = ordo::postgres(db.conninfo());
  store.reconnect_patience = 3s;
  ordo::DurableTasks jobs(sched, store);
  jobs.define("later", ordo::TaskHandler{});
  jobs.start();
  const ordo::TaskId id = jobs.enqueue("later", "x");
  Outage outage(db);
  const auto started = Clock::now();
  EXPECT_THROW(jobs.status(id), ordo::StoreError);
  const auto took = Clock::now() - started;
  // One patience of reconnecting, once: not once per retry of the statement.
  EXPECT_GE(took, 2500ms) << "status() gave up before its patience";
  EXPECT_LT(took, 8s) << "status() took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  jobs.shutdown(ordo::ShutdownMode::cancel);
}

TEST(PgUnreachable, ANegativeReconnectPatienceIsRefused) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 1});
  ordo::PostgresStore store = ordo::postgres(db.conninfo());
  store.reconnect_patience = -1ms;
  EXPECT_THROW(ordo::DurableTasks(sched, store), ordo::InvalidArgument);
}

TEST(PgUnreachable, TheAsynchronousFlusherPacesItsRetriesWhileTheDatabaseIsAway) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 1});
  ordo::PostgresStore store = ordo::postgres(db.conninfo());
  store.async_enqueue = true;
  store.reconnect_patience = 2s;
  ordo::DurableTasks jobs(sched, store);
  jobs.define("later", ordo::TaskHandler{});
  jobs.start();
  jobs.enqueue("later", "x");  // returns once the first block of ids is reserved
  Outage outage(db);
  // Enough to bring the reserved ids below their refill mark: the flusher
  // then has a batch to commit and ids to reserve, and neither can be done.
  for (int i = 0; i < 3200; ++i) jobs.enqueue("later", "x");
  // Its first try reconnects for its whole patience (2 s); what is judged
  // is what it does once that try has been given up, while the database
  // stays away.
  std::this_thread::sleep_for(4s);
  const std::uint64_t before = jobs.stats().store_errors;
  std::this_thread::sleep_for(2s);  // the window whose failures are counted
  const std::uint64_t during = jobs.stats().store_errors - before;
  // Paced at 100 ms, plus the stats() calls' own failures.
  EXPECT_LT(during, 60u) << during << " failed tries in 2 s: the flusher spins on a database that is away";
  jobs.shutdown_for(1s, ordo::ShutdownMode::cancel);
}

TEST(PgUnreachable, AStartThatCannotReachTheDatabaseThrowsAndLeavesNothingToWaitFor) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 1});
  auto jobs = std::make_unique<ordo::DurableTasks>(sched, ordo::postgres(db.conninfo()));
  jobs->define("later", ordo::TaskHandler{});
  {
    Outage outage(db);
    EXPECT_THROW(jobs->start(), ordo::StoreError);
  }
  // Nothing was started: the destructor's drain has nothing to wait for.
  must_finish("destroying a DurableTasks whose start() failed", [&] { jobs.reset(); }, 20s);
}

}  // namespace
