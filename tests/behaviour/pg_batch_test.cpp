// DurableTasks::enqueue_many on the PostgreSQL store: a batch is one
// transaction (all of its tasks or none), returns once committed even with
// async_enqueue, resolves idempotency keys within itself, and one bad batch
// sharing a commit with other callers' enqueues does not fail theirs.
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ordo/durable.hpp"
#include "ordo/errors.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "pg_support.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ordo::test;

ordo::PostgresStore quick_store(const ScratchDatabase& db) {
  ordo::PostgresStore store = ordo::postgres(db.conninfo());
  store.poll = 100ms;
  return store;
}

std::vector<ordo::NewTask> batch_of(const std::string& type, const std::vector<std::string>& args) {
  std::vector<ordo::NewTask> tasks;
  for (const std::string& a : args) tasks.push_back({type, a});
  return tasks;
}

TEST(PgBatch, EveryTaskOfABatchRunsOnceAndTheIdsComeInOrder) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 2});
  ordo::DurableTasks jobs(sched, quick_store(db));
  std::atomic<int> ran{0};
  jobs.define("t", [&](ordo::TaskContext&, std::span<const std::byte>) { ++ran; });
  jobs.start();
  std::vector<std::string> args;
  for (int i = 0; i < 300; ++i) args.push_back(std::to_string(i));
  const std::vector<ordo::TaskId> ids = jobs.enqueue_many(batch_of("t", args));
  ASSERT_EQ(ids.size(), args.size());
  for (std::size_t i = 1; i < ids.size(); ++i) EXPECT_LT(ids[i - 1], ids[i]) << "ids out of order at " << i;
  EXPECT_TRUE(jobs.enqueue_many({}).empty());
  jobs.shutdown();
  EXPECT_EQ(ran.load(), 300);
  PgConn conn(db.conninfo());
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.jobs"), "0");
}

TEST(PgBatch, WithAsynchronousEnqueuesABatchStillReturnsOnlyOnceCommitted) {
  ScratchDatabase db;
  ordo::PostgresStore store = quick_store(db);
  store.async_enqueue = true;
  ordo::Scheduler sched({.workers = 1});
  ordo::DurableTasks jobs(sched, store);
  jobs.define("note", ordo::TaskHandler{});  // enqueue-only: the rows stay
  jobs.start();
  const std::vector<std::string> args(100, "x");
  const auto ids = jobs.enqueue_many(batch_of("note", args));
  PgConn conn(db.conninfo());
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.jobs"), "100");  // read at once, from another connection
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.jobs WHERE id = " + std::to_string(ids.back())), "1");
  jobs.shutdown();
}

TEST(PgBatch, ATaskNeedingAnUndefinedGlobalGroupRefusesItsWholeBatchButNoOtherCallersTasks) {
  ScratchDatabase db;
  ordo::PostgresStore store = quick_store(db);
  store.enqueue_connections = 1;  // every caller shares one lane, so commits are shared
  ordo::Scheduler sched({.workers = 1});
  ordo::DurableTasks jobs(sched, store);
  jobs.define("note", ordo::TaskHandler{});
  jobs.start();
  std::atomic<bool> stop{false};
  std::atomic<int> lone_failures{0};
  std::atomic<int> lone_ok{0};
  std::thread lone([&] {  // lone enqueues that may share a commit with the bad batches
    while (!stop.load()) {
      try {
        jobs.enqueue("note", "lone");
        ++lone_ok;
      } catch (...) {
        ++lone_failures;
      }
    }
  });
  std::vector<ordo::NewTask> bad = {{"note", "good 1"}, {"note", "good 2"}, {"note", "bad", {.global_needs = {{"nowhere", 1}}}}};
  for (int round = 0; round < 20; ++round) {
    try {
      jobs.enqueue_many(bad);
      ADD_FAILURE() << "a batch needing an undefined global group was accepted";
    } catch (const ordo::InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("nowhere"), std::string::npos) << e.what();
    }
  }
  ASSERT_TRUE(eventually([&] { return lone_ok.load() > 20; }));
  stop = true;
  lone.join();
  jobs.shutdown();
  EXPECT_EQ(lone_failures.load(), 0);
  PgConn conn(db.conninfo());
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.jobs WHERE args <> 'lone'::bytea"), "0") << "part of a refused batch committed";
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.jobs WHERE args = 'lone'::bytea"), std::to_string(lone_ok.load()));
}

TEST(PgBatch, AKeyTakenBeforeOrRepeatedWithinTheBatchGivesTheExistingId) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 1});
  ordo::DurableTasks jobs(sched, quick_store(db));
  jobs.define("note", ordo::TaskHandler{});
  jobs.start();
  const ordo::TaskId before = jobs.enqueue("note", "", {.idempotency_key = "old"});
  const std::vector<ordo::TaskId> ids = jobs.enqueue_many(std::vector<ordo::NewTask>{
      {"note", "", {.idempotency_key = "new"}}, {"note", "", {.idempotency_key = "old"}},
      {"note", "", {.idempotency_key = "new"}}, {"note", ""}});
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids[1], before);
  EXPECT_EQ(ids[2], ids[0]);
  EXPECT_NE(ids[3], ids[0]);
  jobs.shutdown();
  PgConn conn(db.conninfo());
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.jobs"), "3");
}

TEST(PgBatch, AnInvalidTaskIsRefusedBeforeAnythingIsSent) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 1});
  ordo::DurableTasks jobs(sched, quick_store(db));
  jobs.define("note", ordo::TaskHandler{});
  const std::vector<ordo::NewTask> one = {{"note", ""}};
  EXPECT_THROW(jobs.enqueue_many(one), ordo::Error);  // before start()
  jobs.start();
  try {
    jobs.enqueue_many(std::vector<ordo::NewTask>{{"note", "a"}, {"no_such_type", "b"}});
    FAIL() << "a batch with an unknown type was accepted";
  } catch (const ordo::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_type"), std::string::npos) << e.what();
  }
  jobs.shutdown();
  EXPECT_THROW(jobs.enqueue_many(one), ordo::Error);  // after shutdown
  PgConn conn(db.conninfo());
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.jobs"), "0");
}

}  // namespace
