// Durable tasks on the PostgreSQL store, within one test process: each test
// has a database of its own on the fixture's server, and where a test needs
// a fleet it runs several DurableTasks (each with its own scheduler) on it.
// Tests that kill or stop processes are in pg_fleet_test.cpp.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "pg_support.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ordo::test;

ordo::PostgresStore store_for(const ScratchDatabase& db, std::chrono::milliseconds lease = 2000ms) {
  ordo::PostgresStore store = ordo::postgres(db.conninfo());
  store.lease = lease;
  store.poll = 200ms;
  return store;
}

std::int64_t count_of(PgConn& conn, const std::string& sql) { return std::stoll(conn.scalar(sql)); }

TEST(PgDurable, EveryEnqueuedTaskRunsOnceAndLeavesNoRow) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 2});
  ordo::DurableTasks jobs(sched, store_for(db));
  std::mutex mu;
  std::multiset<std::string> seen;
  jobs.define("note", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
    std::lock_guard lock(mu);
    seen.insert(std::string(ctx.args_text()));
  });
  jobs.start();
  constexpr int kTasks = 600;
  std::vector<std::thread> producers;
  for (int t = 0; t < 4; ++t) {
    producers.emplace_back([&, t] {
      for (int i = t; i < kTasks; i += 4) jobs.enqueue("note", std::to_string(i));
    });
  }
  for (auto& p : producers) p.join();
  jobs.shutdown();
  ASSERT_EQ(seen.size(), static_cast<std::size_t>(kTasks));
  for (int i = 0; i < kTasks; ++i) EXPECT_EQ(seen.count(std::to_string(i)), 1u) << "task " << i;
  PgConn conn(db.conninfo());
  EXPECT_EQ(count_of(conn, "SELECT count(*) FROM ordo.jobs"), 0);
  EXPECT_EQ(jobs.stats().completed, static_cast<std::uint64_t>(kTasks));
}

TEST(PgDurable, APoisonTaskEndsInTheDeadSetAfterItsAttemptsAndCanBeRetried) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 2});
  ordo::DurableTasks jobs(sched, store_for(db));
  std::atomic<int> runs{0};
  std::atomic<bool> heal{false};
  ordo::TaskTypeOptions options;
  options.retry.max_attempts = 3;
  options.retry.initial_backoff = 10ms;
  jobs.define("poison", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
    ++runs;
    if (!heal) throw std::runtime_error("bad input at attempt " + std::to_string(ctx.attempt()));
  }, options);
  jobs.start();
  const ordo::TaskId id = jobs.enqueue("poison", "x");
  ASSERT_TRUE(eventually([&] { return jobs.status(id).state == ordo::DurableTaskStatus::State::dead; }, 20s))
      << "state " << ordo::to_string(jobs.status(id).state);
  EXPECT_EQ(runs.load(), 3);
  const auto dead = jobs.dead();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].id, id);
  EXPECT_EQ(dead[0].attempts, 3u);
  EXPECT_EQ(dead[0].last_error, "bad input at attempt 3");
  heal = true;
  ASSERT_TRUE(jobs.retry_dead(id));
  EXPECT_FALSE(jobs.retry_dead(id)) << "no longer dead";
  jobs.shutdown();
  EXPECT_EQ(runs.load(), 4);
  EXPECT_EQ(jobs.status(id).state, ordo::DurableTaskStatus::State::unknown);
}

TEST(PgDurable, TheSameIdempotencyKeyFromTwoProcessesAtOnceGivesOneTask) {
  ScratchDatabase db;
  for (int round = 0; round < 20; ++round) {
    ordo::Scheduler s1({.workers = 1}), s2({.workers = 1});
    ordo::DurableTasks a(s1, store_for(db)), b(s2, store_for(db));
    std::atomic<int> runs{0};
    for (auto* d : {&a, &b}) d->define("once", [&](ordo::TaskContext&, std::span<const std::byte>) { ++runs; });
    a.start();
    b.start();
    const std::string key = "order-" + std::to_string(round);
    ordo::TaskId ida = 0, idb = 0;
    Gate go;
    std::thread ta([&] { go.hold(); ida = a.enqueue("once", "", {.idempotency_key = key}); });
    std::thread tb([&] { go.hold(); idb = b.enqueue("once", "", {.idempotency_key = key}); });
    go.open = true;
    ta.join();
    tb.join();
    EXPECT_EQ(ida, idb) << "round " << round;
    a.shutdown();
    b.shutdown();
    EXPECT_EQ(runs.load(), 1) << "round " << round;
    EXPECT_EQ(a.status(ida).state, ordo::DurableTaskStatus::State::completed) << "its key is retained";
  }
}

TEST(PgDurable, ADelayedTaskIsScheduledThenRuns) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 1});
  ordo::DurableTasks jobs(sched, store_for(db));
  std::atomic<bool> ran{false};
  jobs.define("later", [&](ordo::TaskContext&, std::span<const std::byte>) { ran = true; });
  jobs.start();
  const ordo::TaskId id = jobs.enqueue("later", "", {.delay = 400ms});
  const auto s = jobs.status(id);
  EXPECT_EQ(s.state, ordo::DurableTaskStatus::State::scheduled);
  EXPECT_EQ(jobs.scheduled().size(), 1u);
  EXPECT_FALSE(ran.load());
  ASSERT_TRUE(eventually([&] { return ran.load(); }, 10s));
  jobs.shutdown();
}

TEST(PgDurable, ACheckpointIsReadBackByTheNextAttempt) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 1});
  ordo::DurableTasks jobs(sched, store_for(db));
  std::vector<int> resumed;
  ordo::TaskTypeOptions options;
  options.retry.initial_backoff = 1ms;
  jobs.define("steps", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
    const int from = ctx.resume_from<int>(0);
    resumed.push_back(from);
    ctx.checkpoint(from + 10);
    if (ctx.attempt() < 3) throw std::runtime_error("not yet");
  }, options);
  jobs.start();
  jobs.enqueue("steps", "");
  jobs.shutdown();
  EXPECT_EQ(resumed, (std::vector<int>{0, 10, 20}));
}

TEST(PgDurable, AGlobalGroupIsNeverHeldByMoreThanItsLimitAcrossProcesses) {
  ScratchDatabase db;
  constexpr int kLimit = 3;
  std::atomic<int> inside{0}, most{0}, runs{0};
  std::vector<std::unique_ptr<ordo::Scheduler>> scheds;
  std::vector<std::unique_ptr<ordo::DurableTasks>> fleet;
  for (int p = 0; p < 3; ++p) {
    scheds.push_back(std::make_unique<ordo::Scheduler>(ordo::SchedulerOptions{.workers = 2}));
    fleet.push_back(std::make_unique<ordo::DurableTasks>(*scheds.back(), store_for(db)));
    fleet.back()->define("db", [&](ordo::TaskContext&, std::span<const std::byte>) {
      const int now = ++inside;
      int seen = most.load();
      while (now > seen && !most.compare_exchange_weak(seen, now)) {
      }
      std::this_thread::sleep_for(2ms);  // holds the permit for a while: overlap is what is tested
      --inside;
      ++runs;
    });
  }
  fleet[0]->set_global_limit("db", kLimit);
  for (auto& d : fleet) d->start();
  for (int i = 0; i < 200; ++i) fleet[static_cast<std::size_t>(i % 3)]->enqueue("db", "", {.global_needs = {{"db", 1}}});
  for (auto& d : fleet) d->shutdown();
  EXPECT_EQ(runs.load(), 200);
  EXPECT_LE(most.load(), kLimit);
  PgConn conn(db.conninfo());
  EXPECT_LE(count_of(conn, "SELECT peak FROM ordo.groups WHERE name = 'db'"), kLimit);
  EXPECT_EQ(count_of(conn, "SELECT in_use FROM ordo.groups WHERE name = 'db'"), 0);
  EXPECT_EQ(count_of(conn, "SELECT count(*) FROM ordo.holders"), 0);
}

TEST(PgDurable, AnUndefinedGlobalGroupIsRefusedNamingItAndLosesNothingElse) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 1});
  ordo::DurableTasks jobs(sched, store_for(db));
  jobs.define("t", [](ordo::TaskContext&, std::span<const std::byte>) {});
  jobs.start();
  try {
    jobs.enqueue("t", "", {.global_needs = {{"nowhere", 1}}});
    FAIL() << "an undefined global group was accepted";
  } catch (const ordo::InvalidArgument& e) {  // bad input, not a store failure
    EXPECT_NE(std::string(e.what()).find("nowhere"), std::string::npos) << e.what();
  }
  PgConn conn(db.conninfo());
  try {  // inside the caller's transaction too
    conn.exec("BEGIN");
    jobs.enqueue_in(conn.get(), "t", "", {.global_needs = {{"nowhere", 1}}});
    FAIL() << "an undefined global group was accepted by enqueue_in";
  } catch (const ordo::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("nowhere"), std::string::npos) << e.what();
  }
  conn.exec("ROLLBACK");
  EXPECT_NO_THROW(jobs.enqueue("t", ""));
  EXPECT_THROW(jobs.enqueue("missing-type", ""), ordo::InvalidArgument);
  jobs.shutdown();
}

TEST(PgDurable, EnqueueInsideTheCallersTransactionExistsExactlyWhenItCommits) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 1});
  ordo::DurableTasks jobs(sched, store_for(db));
  std::atomic<int> runs{0};
  jobs.define("mail", [&](ordo::TaskContext&, std::span<const std::byte>) { ++runs; });
  jobs.start();
  PgConn app(db.conninfo());
  app.exec("CREATE TABLE orders (id integer)");
  app.exec("BEGIN");
  app.exec("INSERT INTO orders VALUES (1)");
  const ordo::TaskId dropped = jobs.enqueue_in(app.get(), "mail", "order 1");
  app.exec("ROLLBACK");
  app.exec("BEGIN");
  app.exec("INSERT INTO orders VALUES (2)");
  const ordo::TaskId kept = jobs.enqueue_in(app.get(), "mail", "order 2");
  EXPECT_EQ(jobs.status(kept).state, ordo::DurableTaskStatus::State::unknown) << "visible before its commit";
  app.exec("COMMIT");
  jobs.shutdown();
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(jobs.status(dropped).state, ordo::DurableTaskStatus::State::unknown);
  EXPECT_THROW(jobs.enqueue_in(nullptr, "mail", ""), ordo::InvalidArgument);
}

TEST(PgDurable, ATransactionalAttemptCommitsItsWorkWithItsCompletionOrNotAtAll) {
  ScratchDatabase db;
  PgConn app(db.conninfo());
  app.exec("CREATE TABLE effects (job bigint, attempt integer)");
  ordo::Scheduler sched({.workers = 2});
  ordo::DurableTasks jobs(sched, store_for(db));
  ordo::TaskTypeOptions options;
  options.transactional = true;
  options.retry.initial_backoff = 1ms;
  jobs.define("pay", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
    const std::string sql = "INSERT INTO effects VALUES (" + std::to_string(ctx.id()) + ", " +
                            std::to_string(ctx.attempt()) + ")";
    PGresult* r = PQexec(ctx.transaction(), sql.c_str());
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) throw std::runtime_error("insert failed");
    if (ctx.attempt() < 3) throw std::runtime_error("fails after its write");  // the write must roll back
  }, options);
  jobs.define("plain", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
    EXPECT_THROW(ctx.transaction(), ordo::Error);
  });
  jobs.start();
  std::vector<ordo::TaskId> ids;
  for (int i = 0; i < 20; ++i) ids.push_back(jobs.enqueue("pay", ""));
  jobs.enqueue("plain", "");
  jobs.shutdown();
  EXPECT_EQ(count_of(app, "SELECT count(*) FROM effects"), 20);
  EXPECT_EQ(count_of(app, "SELECT count(DISTINCT job) FROM effects"), 20);
  EXPECT_EQ(count_of(app, "SELECT count(*) FROM effects WHERE attempt <> 3"), 0) << "a failed attempt's write committed";
}

TEST(PgDurable, AStaleAttemptIsFencedAndItsCheckpointRejected) {
  ScratchDatabase db;
  ordo::Scheduler s1({.workers = 1}), s2({.workers = 1});
  ordo::PostgresStore one_at_a_time = store_for(db);
  one_at_a_time.max_held = 1;  // the stalled attempt keeps `first` from claiming the task back
  ordo::DurableTasks first(s1, one_at_a_time), second(s2, store_for(db));
  PgConn admin(db.conninfo());
  Gate stalled;
  std::atomic<int> completions{0};
  std::atomic<bool> lease_lost_seen{false};
  first.define("job", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
    stalled.hold();  // as if paused past its lease
    try {
      ctx.checkpoint(1);
    } catch (const ordo::LeaseLost&) {
      lease_lost_seen = true;
      throw;
    }
    ++completions;
  });
  second.define("job", [&](ordo::TaskContext&, std::span<const std::byte>) { ++completions; });
  first.start();
  const ordo::TaskId id = first.enqueue("job", "");
  stalled.wait_entered();
  // The lease runs out (as the server sees it) and a reaper takes the task back.
  admin.exec("UPDATE ordo.jobs SET lease_until = now() - interval '1 second' WHERE id = " + std::to_string(id));
  admin.exec("SELECT ordo.reap()");
  second.start();
  ASSERT_TRUE(eventually([&] { return completions.load() == 1; }, 15s)) << "the second process never ran it";
  stalled.open = true;
  first.shutdown();
  second.shutdown();
  EXPECT_TRUE(lease_lost_seen.load());
  EXPECT_EQ(completions.load(), 1);
  EXPECT_EQ(count_of(admin, "SELECT count(*) FROM ordo.jobs"), 0);
}

// Claims take the most urgent effective level first, then the oldest; with
// ageing a waiting task rises a level per `ageing` of waiting.
std::vector<std::string> run_order(const ScratchDatabase& db, std::chrono::milliseconds ageing,
                                   std::chrono::milliseconds between) {
  ordo::Scheduler producer_sched({.workers = 1});
  ordo::DurableTasks producer(producer_sched, store_for(db));
  producer.define("t", {});  // enqueue-only
  producer.start();
  for (int i = 0; i < 5; ++i) producer.enqueue("t", "low", {.priority = ordo::low});
  std::this_thread::sleep_for(between);  // the low tasks' age when the high ones arrive: the point of the test
  for (int i = 0; i < 5; ++i) producer.enqueue("t", "high", {.priority = ordo::high});
  producer.shutdown();
  ordo::Scheduler sched({.workers = 1});
  ordo::PostgresStore one = store_for(db);
  one.max_held = 1;
  one.claim_batch = 1;
  one.ageing = ageing;
  ordo::DurableTasks worker(sched, one);
  std::mutex mu;
  std::vector<std::string> order;
  worker.define("t", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
    std::lock_guard lock(mu);
    order.emplace_back(ctx.args_text());
  });
  worker.start();
  worker.shutdown();
  return order;
}

TEST(PgDurable, ClaimsTakeHighBeforeLowAndLowWorkAgesAcrossTheFleet) {
  const std::vector<std::string> strict = {"high", "high", "high", "high", "high", "low", "low", "low", "low", "low"};
  const std::vector<std::string> aged = {"low", "low", "low", "low", "low", "high", "high", "high", "high", "high"};
  {
    ScratchDatabase db;
    EXPECT_EQ(run_order(db, 0ms, 300ms), strict) << "strict: the low tasks' age must not count";
  }
  {
    ScratchDatabase db;
    EXPECT_EQ(run_order(db, 50ms, 300ms), aged) << "low tasks waiting 6 steps of 50 ms rank with high ones, and are older";
  }
}

TEST(PgDurable, AProcessDoesNotClaimAgainATaskWhoseLostAttemptItStillRuns) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 2});
  ordo::DurableTasks jobs(sched, store_for(db, 1000ms));
  PgConn admin(db.conninfo());
  Gate stalled;
  std::mutex mu;
  std::vector<unsigned> attempts;  // as each call of "job" begins
  std::atomic<int> inside{0}, overlapped{0};
  std::atomic<bool> other_ran{false};
  ordo::TaskTypeOptions options;
  options.retry.max_attempts = 2;
  jobs.define("job", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
    if (++inside > 1) ++overlapped;
    bool first = false;
    {
      std::lock_guard lock(mu);
      attempts.push_back(ctx.attempt());
      first = attempts.size() == 1;
    }
    if (first) stalled.hold();  // as if paused past its lease
    --inside;
  }, options);
  jobs.define("other", [&](ordo::TaskContext&, std::span<const std::byte>) { other_ran = true; });
  jobs.start();
  struct Opener {  // a failed assertion must not leave the drain waiting for the stalled attempt
    Gate& gate;
    ~Opener() { gate.open = true; }
  } opener{stalled};
  const ordo::TaskId id = jobs.enqueue("job", "");
  stalled.wait_entered();
  // The lease runs out and the task is taken back while its attempt still
  // runs here. A task enqueued after it, in the same level, is claimed only
  // by a claim that passed over it (claims take the oldest first).
  admin.exec("UPDATE ordo.jobs SET lease_until = now() - interval '1 second' WHERE id = " + std::to_string(id));
  admin.exec("SELECT ordo.reap()");
  jobs.enqueue("other", "");
  ASSERT_TRUE(eventually([&] { return other_ran.load(); }, 15s)) << "the later task never ran";
  // Claimed here again, the new attempt would run beside the lost one (on
  // the Held its handler uses), or sit unrenewed until its lease ran out and
  // cost the task an attempt it never ran. Another process may take it.
  EXPECT_EQ(count_of(admin, "SELECT count(*) FROM ordo.jobs WHERE state = 'available' AND id = " + std::to_string(id)), 1)
      << "the process still running the lost attempt claimed the task again";
  stalled.open = true;
  ASSERT_TRUE(eventually([&] {
    std::lock_guard lock(mu);
    return attempts.size() >= 2 && jobs.status(id).state == ordo::DurableTaskStatus::State::unknown;
  }, 15s)) << "the next attempt never completed; the task is " << ordo::to_string(jobs.status(id).state);
  jobs.shutdown();
  std::lock_guard lock(mu);
  EXPECT_EQ(attempts, (std::vector<unsigned>{1, 2}));
  EXPECT_EQ(overlapped.load(), 0) << "two attempts of one task ran at once in one process";
}

TEST(PgDurable, AHeartbeatKeepsRenewingWhileAnotherTransactionLocksOneOfItsTasks) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 2});
  ordo::DurableTasks jobs(sched, store_for(db, 600ms));
  Gate first, second;
  jobs.define("job", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
    (ctx.args_text() == "a" ? first : second).hold();
  });
  jobs.start();
  struct Opener {  // a failed assertion must not leave the drain waiting for the held attempts
    Gate& a;
    Gate& b;
    ~Opener() { a.open = b.open = true; }
  } opener{first, second};
  const ordo::TaskId a = jobs.enqueue("job", "a");
  const ordo::TaskId b = jobs.enqueue("job", "b");
  first.wait_entered();
  second.wait_entered();
  // Another transaction holds task a's row (an application's SELECT ... FOR
  // UPDATE, or one of ordo's own statements waiting for a deadlock to be
  // found): the renewal of b must not wait for it, or b's lease runs out
  // and another process runs b a second time.
  PgConn locker(db.conninfo());
  locker.exec("BEGIN");
  locker.exec("SELECT 1 FROM ordo.jobs WHERE id = " + std::to_string(a) + " FOR UPDATE");
  PgConn admin(db.conninfo());
  const std::string lease_of_b =
      "SELECT (extract(epoch FROM lease_until) * 1000000)::bigint FROM ordo.jobs WHERE id = " + std::to_string(b);
  const std::int64_t before = count_of(admin, lease_of_b);
  // Two renewal periods (lease / 3) later than it was.
  const bool renewed = eventually([&] { return count_of(admin, lease_of_b) > before + 300000; }, 5s);
  locker.exec("ROLLBACK");
  EXPECT_TRUE(renewed) << "b's lease was not renewed while a's row was locked";
  first.open = second.open = true;
  jobs.shutdown();
}

TEST(PgDurable, RecordingAnOutcomeTakesTaskRowsBeforeGroupsAsClaimsDo) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 1});
  ordo::DurableTasks jobs(sched, store_for(db));
  jobs.define("t", {});  // enqueue-only: the test claims and reports itself, as a process would
  jobs.set_global_limit("g", 10);
  jobs.start();
  const ordo::TaskId holder = jobs.enqueue("t", "", {.global_needs = {{"g", 1}}});
  const ordo::TaskId keyed = jobs.enqueue("t", "", {.idempotency_key = "k"});
  PgConn sql(db.conninfo());
  ASSERT_EQ(count_of(sql, "SELECT count(*) FROM ordo.claim('ghost', 10, 60000, 0, 3, ARRAY['t'])"), 2);
  // A claim elsewhere has locked `keyed`'s row (here, as a claim does, a
  // candidate's row first) and will next lock group g, as claims do. The
  // outcomes of both tasks are recorded meanwhile: that must wait for the
  // row before it takes g, or the two wait for each other until the
  // server's deadlock detector aborts one of them a second later.
  PgConn claim(db.conninfo());
  claim.exec("BEGIN");
  claim.exec("SELECT 1 FROM ordo.jobs WHERE id = " + std::to_string(keyed) + " FOR UPDATE");
  std::string finish_error;
  std::thread finisher([&] {
    try {
      PgConn conn(db.conninfo());
      conn.exec("SELECT * FROM ordo.finish(ARRAY[" + std::to_string(holder) + ", " + std::to_string(keyed) +
                "], ARRAY[1, 1], ARRAY[true, true], ARRAY[NULL, NULL]::text[], ARRAY[0, 0]::bigint[], 60000)");
    } catch (const std::exception& e) {
      finish_error = e.what();
    }
  });
  const bool waiting = eventually([&] {
    return count_of(sql, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%ordo.finish(%'") == 1;
  }, 10s);
  std::string claim_error;
  try {
    claim.exec("SELECT 1 FROM ordo.groups WHERE name = 'g' FOR UPDATE");
    claim.exec("COMMIT");
  } catch (const std::exception& e) {
    claim_error = e.what();
  }
  finisher.join();
  ASSERT_TRUE(waiting) << "the outcome was recorded without waiting for the locked row";
  EXPECT_EQ(claim_error, "") << "the claim was aborted";
  EXPECT_EQ(finish_error, "") << "recording the outcomes was aborted";
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM ordo.jobs WHERE state = 'completed' AND id = " + std::to_string(keyed)), 1);
  EXPECT_EQ(count_of(sql, "SELECT in_use FROM ordo.groups WHERE name = 'g'"), 0);
  jobs.shutdown();
}

}  // namespace
