// Enqueueing on the PostgreSQL store: each batch carries a replay token so
// that running it again after a lost connection returns the first run's ids.
// The token must name this very process's batch: a worker_name is the
// user's (the same on every restart of a pod, or shared by mistake), so a
// token built from it alone would make another process's (or the previous
// run's) batch answer for this one, and the new jobs would never exist.
#include <gtest/gtest.h>

#include <atomic>
#include <set>

#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "pg_support.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ordo::test;

ordo::PostgresStore named_store(const ScratchDatabase& db, const std::string& name) {
  ordo::PostgresStore store = ordo::postgres(db.conninfo());
  store.poll = 100ms;
  store.worker_name = name;
  return store;
}

TEST(PgEnqueue, AProcessRestartedUnderTheSameWorkerNameEnqueuesNewJobs) {
  ScratchDatabase db;
  std::set<ordo::TaskId> ids;
  for (int run = 0; run < 2; ++run) {
    ordo::Scheduler sched({.workers = 1});
    ordo::DurableTasks jobs(sched, named_store(db, "web-1"));
    jobs.define("note", ordo::TaskHandler{});  // enqueue only: the jobs stay in the store
    jobs.start();
    for (int i = 0; i < 3; ++i) ids.insert(jobs.enqueue("note", "run " + std::to_string(run)));
    jobs.shutdown();
  }
  EXPECT_EQ(ids.size(), 6u) << "the second run's enqueues returned the first run's ids";
  PgConn conn(db.conninfo());
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.jobs"), "6");
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.jobs WHERE args = 'run 1'::bytea"), "3");
}

TEST(PgEnqueue, TwoProcessesSharingAWorkerNameBothEnqueue) {
  ScratchDatabase db;
  ordo::Scheduler sched_a({.workers = 1}), sched_b({.workers = 1});
  ordo::DurableTasks a(sched_a, named_store(db, "worker"));
  ordo::DurableTasks b(sched_b, named_store(db, "worker"));
  for (ordo::DurableTasks* jobs : {&a, &b}) {
    jobs->define("note", ordo::TaskHandler{});
    jobs->start();
  }
  std::set<ordo::TaskId> ids;
  for (int i = 0; i < 5; ++i) {
    ids.insert(a.enqueue("note", "a"));
    ids.insert(b.enqueue("note", "b"));
  }
  EXPECT_EQ(ids.size(), 10u);
  PgConn conn(db.conninfo());
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.jobs WHERE args = 'b'::bytea"), "5");
}

}  // namespace
