// Reaping on the PostgreSQL store: a job whose holder stopped renewing (a
// dead process) goes back to the queue where it was — by its level and its
// age — so failover takes about a lease, not a lease plus the whole backlog
// enqueued after it, and its ageing is not started over. A holder that only
// stalled does not start what it claimed once its lease may have run out.
#include <gtest/gtest.h>

#include <mutex>
#include <thread>
#include <string>
#include <vector>

#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "pg_support.hpp"
#include "postgres/pg_runtime.hpp"  // the test-only fault point
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

// A process claims a job, then stalls: its only worker is busy and its
// heartbeat does not run (a swap storm, a starved thread), so the lease runs
// out, is reaped, and another process takes the job over and runs it. When the stalled
// process's worker comes to the claimed attempt it must not start it: its
// lease may be gone (here it is), and the attempt would run beside the
// newer one. Before, only a renewal that reported the loss stopped it (the
// fleet model checker under load: "ran while its attempt 2 still ran").
TEST(PgReap, AClaimWhoseLeaseMayHaveRunOutIsNotStartedByItsStalledHolder) {
  ScratchDatabase db;
  struct PauseOff {
    ~PauseOff() { ordo::detail::pg_heartbeat_paused.store(false); }
  } pause_off;
  std::atomic<int> runs_stalled{0};
  std::atomic<int> runs_taker{0};
  ordo::Scheduler stalled_sched({.workers = 1});
  Gate busy;
  stalled_sched.post([&] { busy.hold(); });
  busy.wait_entered();
  ordo::detail::pg_heartbeat_paused.store(true);
  ordo::PostgresStore store = ordo::postgres(db.conninfo());
  store.lease = 300ms;
  store.poll = 20ms;
  store.worker_name = "stalled";
  ordo::DurableTasks stalled(stalled_sched, store);
  stalled.define("job", [&](ordo::TaskContext&, std::span<const std::byte>) { runs_stalled++; });
  stalled.start();
  stalled.enqueue("job", "once");
  PgConn probe(db.conninfo());
  ASSERT_TRUE(eventually([&] { return probe.scalar("SELECT count(*) FROM ordo.jobs WHERE owner = 'stalled'") == "1"; }))
      << "the stalled process never claimed the job";
  ASSERT_TRUE(eventually([&] { return probe.scalar("SELECT count(*) FROM ordo.jobs WHERE lease_until < now()") == "1"; }))
      << "the lease never ran out";
  probe.exec("SELECT ordo.reap()");  // as any other process's heartbeat would (theirs are paused too)
  {
    ordo::Scheduler taker_sched({.workers = 1});
    store.worker_name = "taker";
    ordo::DurableTasks taker(taker_sched, store);
    taker.define("job", [&](ordo::TaskContext&, std::span<const std::byte>) { runs_taker++; });
    taker.start();
    ASSERT_TRUE(eventually([&] { return runs_taker.load() == 1; })) << "the job was not taken over";
    taker.shutdown();
  }
  busy.open = true;
  stalled.shutdown();  // its worker has come to the claimed attempt by the end of the drain
  EXPECT_EQ(runs_stalled.load(), 0) << "the stalled holder started an attempt whose lease had been taken over";
  EXPECT_EQ(runs_taker.load(), 1);
}

}  // namespace
