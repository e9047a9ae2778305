// A fleet of real processes (tests/pg_fleet_worker.cpp) on one PostgreSQL database,
// killed (SIGKILL), stopped (SIGSTOP/SIGCONT), clock-skewed (libfaketime) and cut off
// (a server crash-restart), judged from what the database holds: each job's effect
// (written in its attempt's transaction, so exactly once when the fence holds), the
// handlers' start/end events in order, the most handlers of a global group ever running
// at once, and ordo's own tables (jobs, groups, holders, workflows). The numbers are
// those of issue 13's list of tests (7 and 8 are in pg_durable_test.cpp).
// Every wait is bounded and fails with what it waited for.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <random>
#include <set>

#include "pg_fleet_support.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ordo::test;

ordo::EnqueueOptions needing(const std::string& group, unsigned max_attempts) {
  ordo::EnqueueOptions options;
  if (!group.empty()) options.global_needs = {{group, 1}};
  options.max_attempts = max_attempts;
  return options;
}

std::string id_list(const std::vector<ordo::TaskId>& ids) {
  std::string out = "ARRAY[";
  for (std::size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + std::to_string(ids[i]);
  return out + "]::bigint[]";
}

// Jobs among `ids` whose effect is not there exactly once, as "id:count" (empty: none).
std::string effects_not_once(PgConn& sql, const std::vector<ordo::TaskId>& ids) {
  return sql.scalar("SELECT coalesce(string_agg(i || ':' || coalesce(n, 0), ' '), '') FROM unnest(" + id_list(ids) +
                    ") AS i LEFT JOIN (SELECT job_id, count(*) AS n FROM fleet_effects GROUP BY job_id) e"
                    " ON e.job_id = i WHERE coalesce(n, 0) <> 1");
}

std::string table_text(PgConn& sql, const std::string& query) {
  return sql.scalar("SELECT coalesce(string_agg(t::text, ' '), '') FROM (" + query + ") t");
}

// 1. asynq #1144, #286: a dead holder's jobs stuck, its permits never back.
TEST(PgFleet, KilledHoldersJobsRunElsewhereAndItsPermitsReturnWithinTheLease) {
  ScratchDatabase db;
  PgConn sql(db.conninfo());
  Enqueuer q(db.conninfo());
  sql.exec(kFleetSchema);
  q.jobs.set_global_limit("db", 3);
  constexpr auto kLease = 1000ms;
  Fleet fleet(db.conninfo());
  for (int i = 0; i < 3; ++i) fleet.spawn("w" + std::to_string(i), {.workers = 2, .lease = kLease});
  // Three jobs that hold db's 3 permits until their gate opens, so who holds what stays
  // put while the test picks a holder and kills it; 21 more queue behind them.
  std::vector<ordo::TaskId> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(q.jobs.enqueue("tx", "gate track", needing("db", 10)));
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM fleet_events") == 3; }, 20s))
      << "the gated jobs did not all start";
  for (int i = 0; i < 21; ++i) ids.push_back(q.jobs.enqueue("tx", "sleep=100 track", needing("db", 10)));
  const std::string victim = sql.scalar("SELECT min(owner) FROM ordo.holders");
  const auto killed_at = std::chrono::steady_clock::now();
  fleet.kill9(fleet.index_of(victim));
  const std::string held = sql.scalar("SELECT string_agg(job_id::text, ',') FROM ordo.holders WHERE owner = '" + victim + "'");
  sql.exec("INSERT INTO fleet_gates SELECT unnest(" + id_list({ids[0], ids[1], ids[2]}) + "), NULL");

  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM ordo.holders WHERE owner = '" + victim + "'") == 0; },
                         20s))
      << "the permits of " << victim << " (killed) never came back";
  const auto back_after = std::chrono::steady_clock::now() - killed_at;
  // Its last renewal was at most a heartbeat (lease / 3) before the kill; a heartbeat of
  // another process reaps within lease / 3 of the expiry; 1.5 s for a slow (sanitized) run.
  EXPECT_LE(back_after, kLease + kLease / 3 + 1500ms) << "permits of a killed holder came back after "
                                                      << std::chrono::duration_cast<std::chrono::milliseconds>(back_after).count() << " ms";
  EXPECT_GE(back_after, kLease * 2 / 3 - 100ms) << "permits taken from a holder whose lease had not run out";

  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM ordo.jobs") == 0; }, 60s))
      << "jobs left: " << table_text(sql, "SELECT id, state, owner, attempt FROM ordo.jobs");
  EXPECT_EQ(effects_not_once(sql, ids), "");
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM fleet_effects WHERE job_id IN (" + held + ") AND (worker = '" + victim +
                              "' OR attempt < 2)"), 0)
      << "the killed holder's jobs must have run on another worker, in a later attempt: "
      << table_text(sql, "SELECT * FROM fleet_effects WHERE job_id IN (" + held + ")");
  EXPECT_LE(count_of(sql, "SELECT peak FROM fleet_gauge"), 3) << "more db holders ran at once than the limit";
  EXPECT_LE(count_of(sql, "SELECT peak FROM ordo.groups WHERE name = 'db'"), 3);
  EXPECT_EQ(count_of(sql, "SELECT in_use FROM ordo.groups WHERE name = 'db'"), 0);
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM ordo.holders"), 0);
}

// 2. redis-semaphore #10, Bull "missing lock": a holder paused past its lease comes back
// and completes what another process now holds.
TEST(PgFleet, AStoppedHolderPastItsLeaseIsFencedOnResume) {
  ScratchDatabase db;
  PgConn sql(db.conninfo());
  Enqueuer q(db.conninfo());
  sql.exec(kFleetSchema);
  q.jobs.set_global_limit("db", 1);
  Fleet fleet(db.conninfo());
  fleet.spawn("w0", {.workers = 2, .lease = 1000ms});
  fleet.spawn("w1", {.workers = 2, .lease = 1000ms});
  const ordo::TaskId x = q.jobs.enqueue("tx", "gate", needing("db", 10));
  const std::string xs = std::to_string(x);
  std::string stale;
  ASSERT_TRUE(poll_until([&] {
    stale = sql.scalar("SELECT coalesce(min(worker), '') FROM fleet_events WHERE kind = 'start' AND job_id = " + xs);
    return !stale.empty();
  }, 20s)) << "job " << x << " never started";
  fleet.stop(fleet.index_of(stale));

  std::string fresh;
  ASSERT_TRUE(poll_until([&] {
    fresh = sql.scalar("SELECT coalesce(min(worker), '') FROM fleet_events WHERE kind = 'start' AND job_id = " + xs +
                       " AND attempt = 2");
    return !fresh.empty();
  }, 20s)) << "job " << x << " was never taken from " << stale << " (stopped past its lease)";
  EXPECT_NE(fresh, stale);
  // Waits for db's only permit, which attempt 2 of x holds until its gate opens.
  const ordo::TaskId y = q.jobs.enqueue("tx", "", needing("db", 10));

  // The stale attempt finishes its work and tries to complete; its transaction ends
  // (committed or rolled back) when its advisory lock is free.
  sql.exec("INSERT INTO fleet_gates VALUES (" + xs + ", 1)");
  fleet.resume(fleet.index_of(stale));
  ASSERT_TRUE(poll_until([&] { return sql.scalar("SELECT pg_try_advisory_xact_lock(" + xs + ", 1)") == "t"; }, 20s))
      << "the resumed attempt 1 of job " << x << " never ended its transaction";
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM fleet_events WHERE kind = 'end' AND job_id = " + xs + " AND attempt = 1"), 1)
      << "the resumed handler did not run to its end";
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM ordo.holders WHERE job_id = " + xs + " AND attempt = 2 AND owner = '" +
                              fresh + "'"), 1)
      << "the stale completion took the permit of the attempt holding job " << x << ": "
      << table_text(sql, "SELECT * FROM ordo.holders");

  sql.exec("INSERT INTO fleet_gates VALUES (" + xs + ", 2)");
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM ordo.jobs") == 0; }, 20s))
      << "jobs left: " << table_text(sql, "SELECT id, state, owner, attempt FROM ordo.jobs");
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM fleet_events WHERE kind = 'end' AND job_id = " +
                                                         xs + " AND attempt = 2") == 1; }, 20s))
      << "attempt 2 of job " << x << " never ended";
  EXPECT_EQ(table_text(sql, "SELECT attempt, worker FROM fleet_effects WHERE job_id = " + xs),
            "(2," + fresh + ")")
      << "job " << x << " must be completed once, by the attempt that held it (2, on " << fresh << ")";
  EXPECT_EQ(effects_not_once(sql, {x, y}), "");
  const auto y_started = count_of(sql, "SELECT min(seq) FROM fleet_events WHERE kind = 'start' AND job_id = " + std::to_string(y));
  const auto x_ended = count_of(sql, "SELECT seq FROM fleet_events WHERE kind = 'end' AND job_id = " + xs + " AND attempt = 2");
  EXPECT_GT(y_started, x_ended) << "job " << y << " started while " << fresh << " still held db's only permit";
  EXPECT_LE(count_of(sql, "SELECT peak FROM ordo.groups WHERE name = 'db'"), 1);
  EXPECT_EQ(count_of(sql, "SELECT in_use FROM ordo.groups WHERE name = 'db'"), 0);
  EXPECT_TRUE(fleet.alive(fleet.index_of(stale)));
}

// 3. asynq #717: two reapers at once each bumped the attempt of the same job.
TEST(PgFleet, TwoReapersAtOnceRaiseTheAttemptByExactlyOne) {
  ScratchDatabase db;
  {
    ordo::Scheduler sched({.workers = 1});
    ordo::DurableTasks migrate(sched, ordo::postgres(db.conninfo()));  // creates the schema; never started
  }
  PgConn sql(db.conninfo());
  sql.exec("SELECT ordo.set_group('db', 'count', 1000, NULL)");
  // 20 jobs of type `plain` needing nothing (the reapers race on the job rows: SKIP
  // LOCKED) and 20 of type `tx` needing db (they serialise on the group's row first).
  constexpr int kJobs = 20;
  const auto enqueue = [&](const std::string& type, const std::string& groups, const std::string& counts) {
    const std::string n = "ARRAY[" + std::to_string(kJobs) + "]";
    sql.exec("SELECT ordo.enqueue(NULL, true, NULL, array_fill('" + type + "'::text, " + n + "), array_fill('\\x'::bytea, " + n +
             "), array_fill(1, " + n + "), array_fill(1000, " + n + "), array_fill(NULL::bigint, " + n +
             "), array_fill(NULL::timestamptz, " + n + "), array_fill(NULL::text, " + n + "), array_fill(NULL::text, " + n +
             "), array_fill(" + groups + ", " + n + "), array_fill(" + counts + ", " + n + "))");
  };
  enqueue("plain", "NULL::text", "NULL::text");
  enqueue("tx", "'{db}'::text", "'{1}'::text");
  PgConn reaper_a(db.conninfo());
  PgConn reaper_b(db.conninfo());
  for (const std::string type : {"plain", "tx"}) {
    for (int round = 1; round <= 20; ++round) {
      const std::string where = "FROM ordo.jobs WHERE type = '" + type + "'";
      ASSERT_EQ(count_of(sql, "SELECT count(*) FROM ordo.claim('ghost', 100, 1, 0, 3, ARRAY['" + type + "'])"), kJobs)
          << type << " round " << round;
      ASSERT_EQ(count_of(sql, "SELECT count(*) " + where + " AND attempt <> " + std::to_string(round)), 0)
          << type << " round " << round << ": a claim must raise each attempt by one: "
          << table_text(sql, "SELECT id, attempt " + where);
      ASSERT_TRUE(poll_until([&] {
        return count_of(sql, "SELECT count(*) " + where + " AND state = 'running' AND lease_until < now()") == kJobs;
      }, 10s)) << "the 1 ms leases never ran out";
      std::atomic<int> ready{0};
      std::int64_t reaped_a = 0, reaped_b = 0;
      const auto reap = [&](PgConn& conn, std::int64_t& reaped) {
        ready.fetch_add(1);
        while (ready.load() < 2) {
        }
        reaped = count_of(conn, "SELECT ordo.reap()");
      };
      std::thread a([&] { reap(reaper_a, reaped_a); });
      std::thread b([&] { reap(reaper_b, reaped_b); });
      a.join();
      b.join();
      EXPECT_EQ(reaped_a + reaped_b, kJobs) << type << " round " << round << ": " << reaped_a << " + " << reaped_b;
      EXPECT_EQ(count_of(sql, "SELECT count(*) FROM ordo.jobs WHERE state <> 'available'"), 0) << type << " round " << round;
      EXPECT_EQ(count_of(sql, "SELECT in_use FROM ordo.groups WHERE name = 'db'"), 0)
          << type << " round " << round << ": permits given back once per job";
      EXPECT_EQ(count_of(sql, "SELECT count(*) FROM ordo.holders"), 0) << type << " round " << round;
      if (HasFailure()) return;
    }
  }
}

// 4. redis-semaphore README, Sidekiq Ent #4090: leases computed on a client clock that is off.
TEST(PgFleet, AClientClockSkewedByMinutesChangesNothing) {
  ScratchDatabase db;
  PgConn sql(db.conninfo());
  Enqueuer q(db.conninfo());
  sql.exec(kFleetSchema);
  q.jobs.set_global_limit("db", 2);
  // Each worker holds one job at most, so the two gated jobs below run on two of them and
  // the third could run a third db job at once, if the group let it.
  Fleet fleet(db.conninfo());
  const std::size_t skewed[3] = {
      fleet.spawn("behind", {.workers = 2, .lease = 1000ms, .max_held = 1, .clock_offset = "-5m"}),
      fleet.spawn("ahead", {.workers = 2, .lease = 1000ms, .max_held = 1, .clock_offset = "+5m"}),
      fleet.spawn("behind2", {.workers = 2, .lease = 1000ms, .max_held = 1, .clock_offset = "-2m"})};
  const auto real_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::system_clock::now().time_since_epoch()).count();
  for (const std::size_t w : skewed) {
    ASSERT_GT(std::abs(fleet.clock_ms(w) - real_ms), 100 * 1000) << fleet.name(w) << ": faketime not in effect";
  }

  std::vector<ordo::TaskId> ids;
  ids.push_back(q.jobs.enqueue("tx", "gate track", needing("db", 10)));
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM fleet_events") == 1; }, 20s));
  ids.push_back(q.jobs.enqueue("tx", "gate track", needing("db", 10)));
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM fleet_events") == 2; }, 20s));
  for (int i = 0; i < 4; ++i) ids.push_back(q.jobs.enqueue("tx", "sleep=300 track", needing("db", 10)));
  const std::string enqueued_at = sql.scalar("SELECT clock_timestamp()");
  ordo::EnqueueOptions later = needing("", 10);
  later.delay = 2000ms;
  const ordo::TaskId delayed = q.jobs.enqueue("tx", "", later);
  ids.push_back(delayed);
  // Three leases on the server's clock: only renewals keep the gated jobs their holders'.
  ASSERT_TRUE(poll_until([&] { return sql.scalar("SELECT clock_timestamp() - min(at) > interval '3 s' FROM fleet_events") == "t"; },
                         20s));
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM fleet_events WHERE job_id <> ALL(" + id_list({ids[0], ids[1], delayed}) + ")"), 0)
      << "a third db job started while the two gated ones held db's 2 permits";
  sql.exec("INSERT INTO fleet_gates SELECT unnest(" + id_list({ids[0], ids[1]}) + "), NULL");

  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM ordo.jobs") == 0; }, 60s))
      << "jobs left: " << table_text(sql, "SELECT id, state, owner, attempt, run_at FROM ordo.jobs");
  EXPECT_EQ(effects_not_once(sql, ids), "");
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM fleet_events WHERE kind = 'start' AND attempt <> 1"), 0)
      << "a job was redelivered: " << table_text(sql, "SELECT job_id, attempt, worker FROM fleet_events WHERE attempt <> 1");
  EXPECT_EQ(count_of(sql, "SELECT count(DISTINCT worker) FROM fleet_events WHERE job_id IN (" + std::to_string(ids[0]) +
                              ", " + std::to_string(ids[1]) + ")"), 2);
  EXPECT_LE(count_of(sql, "SELECT peak FROM fleet_gauge"), 2) << "more db holders ran at once than the limit";
  EXPECT_LE(count_of(sql, "SELECT peak FROM ordo.groups WHERE name = 'db'"), 2);
  EXPECT_GE(std::stod(sql.scalar("SELECT extract(epoch FROM min(at) - '" + enqueued_at +
                                 "'::timestamptz) FROM fleet_events WHERE job_id = " + std::to_string(delayed))),
            1.9)
      << "the delay of 2 s is counted on the server's clock";
}

// 5. BullMQ #3183: a job that outlives its lease is redelivered although its holder is alive.
TEST(PgFleet, ALongJobThatKeepsRenewingIsNeverRedelivered) {
  ScratchDatabase db;
  PgConn sql(db.conninfo());
  Enqueuer q(db.conninfo());
  sql.exec(kFleetSchema);
  Fleet fleet(db.conninfo());
  fleet.spawn("w0", {.workers = 2, .lease = 1000ms});
  fleet.spawn("w1", {.workers = 2, .lease = 1000ms});
  std::vector<ordo::TaskId> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(q.jobs.enqueue("tx", "sleep=3000", needing("", 10)));
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM ordo.jobs WHERE state <> 'dead'") == 0; }, 60s))
      << "jobs left: " << table_text(sql, "SELECT id, state, owner, attempt FROM ordo.jobs");
  EXPECT_EQ(table_text(sql, "SELECT id, attempt FROM ordo.jobs"), "") << "jobs that went dead";
  EXPECT_EQ(effects_not_once(sql, ids), "");
  EXPECT_EQ(table_text(sql, "SELECT job_id, attempt, worker FROM fleet_events WHERE kind = 'start' AND attempt <> 1"), "")
      << "a job running 3 leases long was redelivered";
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM fleet_events WHERE kind = 'start'"), 3);
}

// 6. Sidekiq #6185: a limit changed while saturated wedges at 0 or over-grants.
TEST(PgFleet, ALimitLoweredAndRaisedWhileSaturatedNeitherWedgesNorOverGrants) {
  ScratchDatabase db;
  PgConn sql(db.conninfo());
  Enqueuer q(db.conninfo());
  sql.exec(kFleetSchema);
  q.jobs.set_global_limit("db", 4);
  Fleet fleet(db.conninfo());
  for (int i = 0; i < 3; ++i) fleet.spawn("w" + std::to_string(i), {.workers = 3, .lease = 1000ms});
  std::vector<ordo::TaskId> ids;
  for (int i = 0; i < 60; ++i) ids.push_back(q.jobs.enqueue("tx", "sleep=100 track", needing("db", 10)));
  const auto in_use = [&] { return count_of(sql, "SELECT in_use FROM ordo.groups WHERE name = 'db'"); };
  ASSERT_TRUE(poll_until([&] { return in_use() == 4; }, 20s)) << "db never saturated";

  sql.exec("SELECT ordo.set_group('db', 'count', 1, NULL)");
  ASSERT_TRUE(poll_until([&] { return in_use() <= 1; }, 20s)) << "holders above the lowered limit never drained";
  sql.exec("UPDATE fleet_gauge SET peak = cur");
  const auto done_at_1 = count_of(sql, "SELECT count(*) FROM fleet_effects");
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM fleet_effects") >= done_at_1 + 6; }, 30s))
      << "wedged at limit 1";
  EXPECT_LE(count_of(sql, "SELECT peak FROM fleet_gauge"), 1) << "over-granted at limit 1";

  sql.exec("SELECT ordo.set_group('db', 'count', 0, NULL)");
  ASSERT_TRUE(poll_until([&] { return in_use() == 0 && count_of(sql, "SELECT cur FROM fleet_gauge") == 0; }, 20s))
      << "holders never drained at limit 0";
  sql.exec("UPDATE fleet_gauge SET peak = cur");
  const auto starts_at_0 = count_of(sql, "SELECT count(*) FROM fleet_events WHERE kind = 'start'");
  // A job needing no group runs meanwhile: the fleet is claiming, and still grants no db permit.
  const ordo::TaskId probe = q.jobs.enqueue("tx", "", needing("", 10));
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM fleet_effects WHERE job_id = " +
                                                         std::to_string(probe)) == 1; }, 20s))
      << "a job needing no group did not run while db was at 0";
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM fleet_events WHERE kind = 'start' AND job_id <> " + std::to_string(probe)),
            starts_at_0)
      << "a db job started at limit 0";
  EXPECT_EQ(count_of(sql, "SELECT peak FROM fleet_gauge"), 0);

  sql.exec("SELECT ordo.set_group('db', 'count', 3, NULL)");
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM ordo.jobs") == 0; }, 60s))
      << "wedged after the limit was raised: " << table_text(sql, "SELECT state, count(*) FROM ordo.jobs GROUP BY state");
  EXPECT_LE(count_of(sql, "SELECT peak FROM fleet_gauge"), 3) << "over-granted at limit 3";
  EXPECT_EQ(effects_not_once(sql, ids), "");
  EXPECT_EQ(in_use(), 0);
}

// A process claims ahead of its threads (PostgresStore::max_held); a job so claimed that
// needs a global group must not sit in the local queue holding a permit that another
// process, with a thread free, could run it with.
TEST(PgFleet, AJobWaitingForAThreadHoldsNoGlobalPermit) {
  ScratchDatabase db;
  PgConn sql(db.conninfo());
  Enqueuer q(db.conninfo());
  sql.exec(kFleetSchema);
  q.jobs.set_global_limit("db", 2);
  Fleet fleet(db.conninfo());
  fleet.spawn("busy", {.workers = 1});
  std::vector<ordo::TaskId> ids;
  ids.push_back(q.jobs.enqueue("tx", "gate", needing("db", 10)));
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM fleet_events") == 1; }, 20s));
  ids.push_back(q.jobs.enqueue("tx", "gate", needing("db", 10)));
  // On a notification "busy" (room for 8) claims it at once; "idle" takes longer to start.
  fleet.spawn("idle", {.workers = 1});
  EXPECT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM fleet_events") == 2; }, 10s))
      << "the second job never started, while a process had a thread free: "
      << table_text(sql, "SELECT id, state, owner FROM ordo.jobs") << " holders: "
      << table_text(sql, "SELECT job_id, owner FROM ordo.holders");
  sql.exec("INSERT INTO fleet_gates SELECT unnest(" + id_list(ids) + "), NULL");
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM ordo.jobs") == 0; }, 20s));
  EXPECT_EQ(effects_not_once(sql, ids), "");
}

// 9. BullMQ #3122, #2644: a workflow whose node failed for good waits for ever.
TEST(PgFleet, AFailedWorkflowNodeNeverLeavesItsWorkflowWaiting) {
  ScratchDatabase db;
  PgConn sql(db.conninfo());
  Enqueuer q(db.conninfo(), 2);
  sql.exec(kFleetSchema);
  Fleet fleet(db.conninfo());
  fleet.spawn("w0", {.workers = 2});
  fleet.spawn("w1", {.workers = 2});
  // a -> b (fails until its gate opens) -> c; a -> d.
  const auto flow = [](const std::string& name) {
    return ordo::DurableWorkflow(name)
        .node("a", "tx")
        .node("b", "tx", "fail_unless_gate", {"a"})
        .node("c", "tx", "", {"b"})
        .node("d", "tx", "", {"a"});
  };
  const auto node_id = [&](ordo::TaskId f, int node) {
    return sql.scalar("SELECT id FROM ordo.jobs WHERE flow_id = " + std::to_string(f) + " AND flow_node = " + std::to_string(node));
  };
  const auto wait_dead_b = [&](ordo::TaskId f, const std::string& b) {
    return poll_until([&] {
      return count_of(sql, "SELECT count(*) FROM ordo.jobs WHERE id = " + b + " AND state = 'dead'") == 1 &&
             count_of(sql, "SELECT count(*) FROM ordo.jobs WHERE flow_id = " + std::to_string(f) +
                               " AND flow_node = 3 AND state = 'completed'") == 1;
    }, 30s);
  };

  const ordo::TaskId discarded = q.jobs.enqueue_workflow(flow("discarded"));
  const std::string a1 = node_id(discarded, 0), b1 = node_id(discarded, 1), c1 = node_id(discarded, 2),
                    d1 = node_id(discarded, 3);
  ASSERT_TRUE(wait_dead_b(discarded, b1)) << "b never went dead (or d never completed): "
                                          << table_text(sql, "SELECT id, flow_node, state, attempt FROM ordo.jobs");
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM fleet_events WHERE kind = 'start' AND job_id = " + b1), 2) << "b's 2 attempts";
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM ordo.workflows WHERE id = " + std::to_string(discarded)), 1);
  ASSERT_TRUE(q.jobs.discard_dead(static_cast<ordo::TaskId>(std::stoll(b1))));
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM ordo.workflows WHERE id = " + std::to_string(discarded)), 0)
      << "the workflow did not end with its dead node discarded";
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM ordo.jobs WHERE flow_id = " + std::to_string(discarded)), 0)
      << "c, depending on the discarded b, must be cancelled";
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM fleet_events WHERE job_id IN (" + c1 + ")"), 0) << "c ran";
  const auto as_ids = [](std::initializer_list<std::string> list) {
    std::vector<ordo::TaskId> out;
    for (const auto& s : list) out.push_back(static_cast<ordo::TaskId>(std::stoll(s)));
    return out;
  };
  EXPECT_EQ(effects_not_once(sql, as_ids({a1, d1})), "");

  const ordo::TaskId retried = q.jobs.enqueue_workflow(flow("retried"));
  const std::string a2 = node_id(retried, 0), b2 = node_id(retried, 1), c2 = node_id(retried, 2),
                    d2 = node_id(retried, 3);
  ASSERT_TRUE(wait_dead_b(retried, b2)) << "b never went dead (or d never completed): "
                                        << table_text(sql, "SELECT id, flow_node, state, attempt FROM ordo.jobs");
  sql.exec("INSERT INTO fleet_gates VALUES (" + b2 + ", NULL)");
  ASSERT_TRUE(q.jobs.retry_dead(static_cast<ordo::TaskId>(std::stoll(b2))));
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM ordo.workflows WHERE id = " +
                                                         std::to_string(retried)) == 0; }, 30s))
      << "the workflow never ended after its dead node was retried: "
      << table_text(sql, "SELECT id, flow_node, state, attempt FROM ordo.jobs");
  EXPECT_EQ(effects_not_once(sql, as_ids({a2, b2, c2, d2})), "");
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM ordo.jobs"), 0);
}

// 10. A server crash-restart under load: workers and enqueuers reconnect by themselves,
// nothing acknowledged is lost, nothing runs twice.
TEST(PgFleet, AServerRestartUnderLoadLosesNothingAcknowledged) {
  ThrowawayCluster cluster;
  ScratchDatabase db(cluster.conninfo());
  {
    PgConn(db.conninfo()).exec(kFleetSchema);
  }
  Enqueuer q(db.conninfo());
  Fleet fleet(db.conninfo());
  for (int i = 0; i < 3; ++i) fleet.spawn("w" + std::to_string(i), {.workers = 2, .lease = 1000ms});
  std::mutex mu;
  std::vector<ordo::TaskId> acknowledged;
  std::atomic<bool> stop{false};
  std::atomic<int> refused{0};
  std::thread producer([&] {
    while (!stop.load()) {
      try {
        const ordo::TaskId id = q.jobs.enqueue("tx", "", needing("", 1000));
        std::lock_guard lock(mu);
        acknowledged.push_back(id);
      } catch (const ordo::Error&) {
        refused.fetch_add(1);  // not acknowledged: may or may not exist, either is fine
      }
    }
  });
  const auto acked = [&] {
    std::lock_guard lock(mu);
    return acknowledged.size();
  };
  const bool before = poll_until([&] { return acked() >= 300; }, 30s);
  std::size_t at_restart = acked();
  if (before) cluster.restart();
  const bool after = before && poll_until([&] { return acked() >= at_restart + 300; }, 60s);
  stop = true;
  producer.join();
  ASSERT_TRUE(before) << "enqueueing never got going";
  ASSERT_TRUE(after) << "enqueueing never resumed after the restart (" << acked() << " acknowledged, " << refused
                     << " refused)";

  PgConn sql(db.conninfo());
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM ordo.jobs") == 0; }, 90s))
      << "jobs left: " << table_text(sql, "SELECT state, count(*) FROM ordo.jobs GROUP BY state");
  EXPECT_EQ(effects_not_once(sql, acknowledged), "") << "acknowledged jobs lost (:0) or run twice (:2..)";
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM (SELECT job_id FROM fleet_effects GROUP BY job_id HAVING count(*) > 1) t"), 0);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_TRUE(fleet.alive(i)) << fleet.name(i) << " died with the server";
  EXPECT_GT(count_of(sql, "SELECT count(*) FROM fleet_effects WHERE job_id > " + std::to_string(acknowledged[at_restart])),
            0);
}

// 11. 100 rounds of kill -9 of a random process of a 3-process fleet under load.
TEST(PgFleet, AFleetSurvivesAHundredRandomKills) {
  ScratchDatabase db;
  PgConn sql(db.conninfo());
  Enqueuer q(db.conninfo());
  sql.exec(kFleetSchema);
  q.jobs.set_global_limit("db", 2);
  const WorkerOptions options{.workers = 2, .lease = 500ms, .poll = 100ms};
  Fleet fleet(db.conninfo());
  std::size_t slot[3];
  for (int i = 0; i < 3; ++i) slot[i] = fleet.spawn("w" + std::to_string(i) + "-0", options);
  std::mt19937 random(std::random_device{}());
  std::vector<ordo::TaskId> ids;
  for (int round = 1; round <= 100; ++round) {
    std::vector<ordo::TaskId> batch;
    // Half of them need db: its permits too must come back from every killed holder.
    for (int i = 0; i < 4; ++i) {
      batch.push_back(i % 2 == 0 ? q.jobs.enqueue("tx", "sleep=20", needing("", 1000))
                                 : q.jobs.enqueue("tx", "sleep=20 track", needing("db", 1000)));
    }
    ids.insert(ids.end(), batch.begin(), batch.end());
    ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM fleet_events WHERE job_id = ANY(" +
                                                           id_list(batch) + ")") > 0; }, 30s))
        << "round " << round << ": none of the new jobs started";
    const int victim = static_cast<int>(random() % 3);
    fleet.kill9(slot[victim]);
    slot[victim] = fleet.spawn("w" + std::to_string(victim) + "-" + std::to_string(round), options);
  }
  ASSERT_TRUE(poll_until([&] { return count_of(sql, "SELECT count(*) FROM ordo.jobs") == 0; }, 60s))
      << "jobs left: " << table_text(sql, "SELECT state, count(*) FROM ordo.jobs GROUP BY state");
  EXPECT_EQ(effects_not_once(sql, ids), "") << "jobs lost (:0) or effects duplicated (:2..)";
  EXPECT_GT(count_of(sql, "SELECT count(*) FROM fleet_events WHERE kind = 'start' AND attempt > 1"), 0)
      << "no kill ever hit a job in flight: the test proved nothing";
  EXPECT_LE(count_of(sql, "SELECT peak FROM fleet_gauge"), 2) << "more db holders ran at once than the limit";
  EXPECT_EQ(count_of(sql, "SELECT in_use FROM ordo.groups WHERE name = 'db'"), 0);
  EXPECT_EQ(count_of(sql, "SELECT count(*) FROM ordo.holders"), 0);
}

}  // namespace
