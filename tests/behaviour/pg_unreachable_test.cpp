// The PostgreSQL store while its database cannot be reached. The outage is
// made without stopping the shared server: the test's own database stops
// accepting connections and the store's sessions are terminated, which is
// what a client sees of a server that went away.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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

// A server that takes the TCP connection and never answers (a wedged
// server, a proxy in front of a dead one): libpq alone would wait for ever.
// ordo connects with a connect_timeout of 10 s unless the conninfo sets one.
TEST(PgUnreachable, AServerThatNeverAnswersIsAnErrorWithinTheDefaultConnectTimeout) {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;  // any free port
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  ASSERT_EQ(::listen(listener, 8), 0);  // the kernel completes the handshakes; nobody ever accepts
  socklen_t length = sizeof address;
  ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length), 0);
  const std::string conninfo = "host=127.0.0.1 port=" + std::to_string(ntohs(address.sin_port)) + " dbname=ordo user=ordo";
  ordo::Scheduler sched({.workers = 1});
  const auto started = Clock::now();
  must_finish("constructing a DurableTasks against a server that never answers", [&] {
    EXPECT_THROW(ordo::DurableTasks(sched, ordo::postgres(conninfo)), ordo::StoreError);
  }, 25s);
  const auto took = Clock::now() - started;
  EXPECT_GE(took, 9s) << "gave up before the 10 s default";
  // The conninfo's own connect_timeout wins over the default.
  const auto started_short = Clock::now();
  must_finish("the same with connect_timeout=2", [&] {
    EXPECT_THROW(ordo::DurableTasks(sched, ordo::postgres(conninfo + " connect_timeout=2")), ordo::StoreError);
  }, 8s);
  EXPECT_LT(Clock::now() - started_short, 6s);
  ::close(listener);
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
