// Shutdown of a DurableTasks on the PostgreSQL store: when a drain ends.
// docs/postgres.md: a process drains when it holds nothing and the store
// holds nothing it could run — as on the journal, a workflow node waiting
// for a dead predecessor is not waited for (it runs only after a retry).
#include <gtest/gtest.h>

#include <atomic>

#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "pg_support.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ordo::test;
using State = ordo::DurableTaskStatus::State;

ordo::PostgresStore store_for(const ScratchDatabase& db) {
  ordo::PostgresStore store = ordo::postgres(db.conninfo());
  store.lease = 2000ms;
  store.poll = 100ms;
  return store;
}

TEST(PgShutdown, ADrainDoesNotWaitForWorkflowNodesBehindADeadNode) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 2});
  ordo::DurableTasks jobs(sched, store_for(db));
  ordo::TaskTypeOptions once;
  once.retry.max_attempts = 1;
  jobs.define("fails", [](ordo::TaskContext&, std::span<const std::byte>) { throw std::runtime_error("broken"); },
              once);
  std::atomic<int> ran{0};
  jobs.define("step", [&](ordo::TaskContext&, std::span<const std::byte>) { ++ran; });
  jobs.start();
  // extract -> load -> publish, and an independent branch: audit.
  jobs.enqueue_workflow(ordo::DurableWorkflow("nightly")
                            .node("extract", "fails")
                            .node("load", "step", {}, {"extract"})
                            .node("publish", "step", {}, {"load"})
                            .node("audit", "step"));
  ASSERT_TRUE(eventually([&] { return jobs.dead().size() == 1 && ran.load() == 1; }, 20s))
      << jobs.dead().size() << " dead, " << ran.load() << " ran";
  if (!jobs.shutdown_for(10s)) {
    ADD_FAILURE() << "the drain waited for nodes that only a retry of the dead one can release";
    jobs.shutdown(ordo::ShutdownMode::cancel);  // else the destructor's drain would wait for ever
  }
  EXPECT_EQ(ran.load(), 1) << "only the independent branch ran";
  PgConn conn(db.conninfo());
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.jobs WHERE state = 'blocked'"), "2");
}

TEST(PgShutdown, ADrainStillWaitsForADelayedTaskWhileADeadNodeHoldsItsSuccessors) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 2});
  ordo::DurableTasks jobs(sched, store_for(db));
  ordo::TaskTypeOptions once;
  once.retry.max_attempts = 1;
  jobs.define("fails", [](ordo::TaskContext&, std::span<const std::byte>) { throw std::runtime_error("broken"); },
              once);
  std::atomic<int> ran{0};
  jobs.define("step", [&](ordo::TaskContext&, std::span<const std::byte>) { ++ran; });
  jobs.start();
  // Nodes stuck behind a dead one are not waited for; everything else that
  // could still run, a delayed task included, is.
  jobs.enqueue_workflow(ordo::DurableWorkflow("mixed").node("broken", "fails").node("after_broken", "step", {}, {"broken"}));
  const ordo::TaskId slow = jobs.enqueue("step", "slow", {.delay = 1500ms});
  ASSERT_TRUE(eventually([&] { return jobs.dead().size() == 1; }, 20s));
  if (!jobs.shutdown_for(20s)) {
    ADD_FAILURE() << "the drain did not end";
    jobs.shutdown(ordo::ShutdownMode::cancel);
  }
  EXPECT_EQ(ran.load(), 1) << "the delayed task ran before the drain ended";
  EXPECT_EQ(jobs.status(slow).state, State::unknown);
}

}  // namespace
