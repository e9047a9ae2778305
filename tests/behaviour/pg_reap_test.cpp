// Reaping on the PostgreSQL store: a job whose holder stopped renewing (a
// dead process) goes back to the queue where it was — by its level and its
// age — so failover takes about a lease, not a lease plus the whole backlog
// enqueued after it, and its ageing is not started over.
#include <gtest/gtest.h>

#include <mutex>
#include <thread>
#include <string>
#include <vector>

#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "pg_support.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ordo::test;

TEST(PgReap, AJobTakenBackFromADeadHolderKeepsItsPlaceAheadOfNewerWork) {
  ScratchDatabase db;
  constexpr int kBacklog = 600;
  {
    // The producer only enqueues (no handler): the victim first, then the backlog.
    ordo::Scheduler sched({.workers = 1});
    ordo::DurableTasks producer(sched, ordo::postgres(db.conninfo()));
    producer.define("step", ordo::TaskHandler{});
    producer.start();
    producer.enqueue("step", "victim");
    for (int i = 0; i < kBacklog; ++i) producer.enqueue("step", "backlog " + std::to_string(i));
    producer.shutdown();
  }
  // A process that claims the oldest job and dies at once: its 50 ms lease
  // is never renewed.
  PgConn ghost(db.conninfo());
  ASSERT_EQ(ghost.scalar("SELECT o_args FROM ordo.claim('ghost', 1, 50, 0, 3, '{step}')"), "\\x76696374696d")
      << "the ghost did not claim the victim";

  std::mutex mu;
  std::vector<std::string> order;
  ordo::Scheduler sched({.workers = 1});
  ordo::PostgresStore store = ordo::postgres(db.conninfo());
  store.lease = 300ms;  // its heartbeat (and so its reaper) runs every 100 ms
  store.poll = 50ms;
  store.max_held = 1;   // one claim per job: the queue's order is the run order
  store.ageing = 0ms;   // strictly by level, then age
  ordo::DurableTasks worker(sched, store);
  worker.define("step", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
    std::this_thread::sleep_for(2ms);
    std::lock_guard lock(mu);
    order.emplace_back(ctx.args_text());
  });
  worker.start();
  ASSERT_TRUE(eventually([&] {
    std::lock_guard lock(mu);
    return order.size() == kBacklog + 1u;
  }, 60s)) << "not every job ran";
  worker.shutdown();
  std::size_t position = 0;
  while (position < order.size() && order[position] != "victim") ++position;
  ASSERT_LT(position, order.size()) << "the victim never ran";
  // Reaped within about 100 ms of the worker's start, while each job takes
  // a few ms: it must not wait behind the backlog enqueued after it.
  EXPECT_LT(position, kBacklog / 2u) << "the reaped job ran " << position << "th of " << order.size()
                                      << ": it went to the back of its level";
}

}  // namespace
