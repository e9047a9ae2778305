// Over 500 lines: the checker of every invariant below is one pass over one log, read as a whole.
//
// The PostgreSQL store's model checker: seeded random programs run by a
// fleet of 2 or 3 child processes on one database (a ScratchDatabase per
// program) — enqueues, alone or a few by one enqueue_many (priorities, idempotency keys, delays from the
// server's clock, max_attempts, global needs), enqueue_in inside a
// transaction that commits or rolls back, plain, checkpointing and
// transactional types whose handlers fail their first attempts or always,
// workflows with failing nodes, dead-set retries and discards, global
// counting groups whose limits change mid-run, status() queries, leases
// taken away from attempts still running (as a paused process would lose
// them), and shutdown(cancel) followed by a new DurableTasks. One child, the
// victim, is killed with SIGKILL at random points and started again; the
// lease is short, so the others take its tasks over. A last child (the
// sweeper) waits for every lease to end, drains, discards dead workflow
// nodes and logs the dead set. Every child logs its effects with single
// O_APPEND writes to one shared log (a killed process cannot tear them; the
// order of lines is the order of the writes); triggers record every grant
// of a global group in the database. The parent then checks:
//
// - nothing accepted is lost: every task whose enqueue returned (and every
//   node of an accepted workflow) completed, is dead, was discarded, or is
//   behind a discarded node — except an asynchronous enqueue (some workers
//   run with PostgresStore::async_enqueue) whose process was killed before
//   it committed the task; nothing is left live in ordo.jobs;
// - a rolled-back enqueue_in never ran, and its transaction's own write is
//   gone with it; a committed one's stays;
// - a transactional task's effect (written via ctx.transaction()) exists
//   exactly once for each completed task, never for a failed attempt, never
//   for a dead or discarded task;
// - an idempotency key names one task;
// - nothing completed runs again, and no two attempts of a task run at
//   once, unless the process that ran the earlier one was killed or that
//   attempt's lease was taken away; an attempt fails only as planned (or,
//   its lease taken away, with LeaseLost). A lease may also run out on its
//   own when a process or the server stalls past it (a loaded disk delays
//   the renewal's commit): such an attempt's outcome is rejected by the
//   fence, and each process logs how many of its outcomes were. So the
//   attempts of a living process that break this rule may number at most
//   its fenced outcomes (a bound loose by the outcomes of the attempts the
//   test took leases from, which are fenced too);
// - no attempt beyond max_attempts; a workflow node runs only after each of
//   its predecessors completed (in the same workflow);
// - a delayed task never starts before its time, by the server's clock;
// - a checkpoint read is the last one written (or one whose writer died);
// - a running task holds its global permits; no grant ever takes a group
//   above the limit in force (holders above a lowered limit keep theirs);
//   in_use is back to 0, ordo.holders empty and peak within the limits;
// - no statement deadlocked (pg_stat_database.deadlocks);
// - the dead set is the tasks whose attempts ran out: each with
//   max_attempts attempts, none completed since its last retry (except by
//   an attempt cut short), every task that failed its last attempt is dead
//   or discarded; status() agrees with the dead set and the drain;
// - a failing program is named by its seed (ORDO_SEED reproduces the
//   programs; ORDO_CHAOS_PROGRAM runs one; the kill points depend on timing).
//
// The programs and the child processes are in tests/pg_chaos_program.hpp.
// Budget: ORDO_CHAOS_SECONDS (15 by default) of programs.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "pg_chaos_program.hpp"
#include "pg_support.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using namespace std::chrono_literals;

using namespace pg_chaos;

// Creates the schema and the global groups (in a child: the parent runs no
// threads, so that it forks cleanly), then records every grant and limit.
void prepare(const Program& program, const std::string& conninfo) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    try {
      Scheduler s{{.workers = 1}};
      DurableTasks d(s, store_of(conninfo));
      for (const auto& [group, limit] : program.initial_limits) d.set_global_limit(group, limit);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pg chaos: preparing the database failed: %s\n", e.what());
      ::_exit(3);
    }
    ::_exit(0);
  }
  int status = 0;
  ASSERT_TRUE(test::wait_child_within(child, 60s, status)) << "preparing the database hung";
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "preparing the database failed";
  test::PgConn conn(conninfo);
  conn.exec(R"SQL(
    CREATE SCHEMA chaos;
    CREATE TABLE chaos.effects (job bigint, attempt integer, label text);
    CREATE TABLE chaos.app (label text);
    CREATE TABLE chaos.grants (grp text, before integer, after integer, lim integer);
    CREATE TABLE chaos.limits (grp text, lim integer);
    CREATE TABLE chaos.violations (what text);
    INSERT INTO chaos.limits SELECT name, lim FROM ordo.groups;
    CREATE FUNCTION chaos.on_group() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.lim <> OLD.lim THEN INSERT INTO chaos.limits VALUES (NEW.name, NEW.lim); END IF;
      IF NEW.in_use > OLD.in_use THEN INSERT INTO chaos.grants VALUES (NEW.name, OLD.in_use, NEW.in_use, NEW.lim); END IF;
      IF NEW.kind = 'count' AND NEW.in_use > OLD.in_use AND NEW.in_use > NEW.lim THEN
        INSERT INTO chaos.violations VALUES ('group ' || NEW.name || ': a grant took in_use from ' || OLD.in_use || ' to ' ||
                                             NEW.in_use || ', above its limit ' || NEW.lim);
      END IF;
      IF NEW.in_use < 0 THEN INSERT INTO chaos.violations VALUES ('group ' || NEW.name || ' in_use ' || NEW.in_use); END IF;
      RETURN NULL;
    END $$;
    CREATE TRIGGER chaos_groups AFTER UPDATE ON ordo.groups FOR EACH ROW EXECUTE FUNCTION chaos.on_group();
    -- At each commit that changed a group: its in_use is what its holders hold. Every
    -- change of a group's holders runs under that group's row lock, so nothing moves
    -- between this check and the commit.
    CREATE FUNCTION chaos.on_group_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE counted integer; held integer;
    BEGIN
      SELECT in_use INTO counted FROM ordo.groups WHERE name = NEW.name;
      SELECT coalesce(sum(count), 0) INTO held FROM ordo.holders WHERE group_name = NEW.name;
      IF NEW.kind = 'count' AND counted <> held THEN
        INSERT INTO chaos.violations VALUES ('group ' || NEW.name || ': in_use ' || counted || ' but its holders hold ' || held);
      END IF;
      RETURN NULL;
    END $$;
    CREATE CONSTRAINT TRIGGER chaos_group_commit AFTER UPDATE ON ordo.groups DEFERRABLE INITIALLY DEFERRED
      FOR EACH ROW EXECUTE FUNCTION chaos.on_group_commit();
  )SQL");
}

struct Totals {
  std::uint64_t programs = 0, operations = 0, kills = 0, restarts = 0, runs = 0, tasks = 0, grants = 0, steals = 0,
                takeovers = 0, async_lost = 0, lapses = 0;
};

// Reads the shared log and the database, and checks every invariant of the header.
void check(const Program& program, const std::string& log, const std::set<std::string>& killed,
           const std::string& conninfo, Totals& totals) {
  std::map<std::string, const TaskSpec*> spec_of;
  std::map<std::string, const FlowSpec*> flows;
  std::map<std::string, std::pair<const FlowSpec*, std::uint32_t>> node_of;
  for (const auto& ops : program.ops) {
    for (const Op& op : ops) {
      if (op.kind == Op::task) spec_of[op.task_spec.label] = &op.task_spec;
      for (const TaskSpec& mate : op.batch_mates) spec_of[mate.label] = &mate;
      if (op.kind != Op::flow) continue;
      flows[op.flow_spec.label] = &op.flow_spec;
      for (std::uint32_t k = 0; k < op.flow_spec.nodes.size(); ++k) {
        spec_of[op.flow_spec.nodes[k].label] = &op.flow_spec.nodes[k];
        node_of[op.flow_spec.nodes[k].label] = {&op.flow_spec, k};
      }
    }
  }
  struct Run {
    std::string tag;
    unsigned attempt = 0;
    bool ok = false;
    bool failed = false;
  };
  struct Job {
    std::string label;
    TaskId flow = 0;  // a node's workflow
    bool accepted = false;
    std::string async_tag;  // enqueued asynchronously by this process (committed later), or empty
    std::vector<Run> runs;
    std::size_t round_start = 0;  // the first run since the last retry_dead (or an attempt at one)
    bool discarding = false;
    std::set<unsigned> stolen;  // attempts whose lease was taken away
    std::uint32_t cp_confirmed = 0;
    std::set<std::uint32_t> cp_attempted;
    std::string final_status;
    bool dead = false;
    unsigned dead_attempts = 0;
    bool ever_ok() const {
      for (const Run& r : runs) {
        if (r.ok) return true;
      }
      return false;
    }
  };
  using NodeKey = std::pair<std::string, TaskId>;  // a node label in one workflow (its id)
  std::map<TaskId, Job> jobs;
  std::map<std::string, std::set<TaskId>> ids_of_label;
  std::set<std::string> rolled_back, discarded_labels;
  std::map<std::string, std::set<TaskId>> accepted_flows;
  std::set<NodeKey> node_ok, node_dead, node_discarded;
  const auto excused = [&](const Job& j, const Run& r) { return killed.count(r.tag) != 0 || j.stolen.count(r.attempt) != 0; };
  // Attempts of living processes that broke the rule above without a kill
  // or a steal to excuse them, by process: each needs an outcome its process
  // reports as fenced (checked at the end, when every count is logged).
  std::map<std::string, std::set<std::pair<TaskId, unsigned>>> lapsed;
  std::map<std::string, std::vector<std::string>> lapse_reports;
  std::map<std::string, std::uint64_t> fenced;
  const auto lapse = [&](TaskId id, const Run& r, const std::string& report) {
    lapsed[r.tag].insert({id, r.attempt});
    lapse_reports[r.tag].push_back(report);
  };
  bool ended = false;
  std::size_t line_no = 0;
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    std::istringstream f(line);
    std::string tag, what, label;
    f >> tag >> what;
    const std::string where = " (line " + std::to_string(line_no) + ": " + line + ")";
    if (what == "op") {
      ++totals.operations;
    } else if (what == "restarted") {
      ++totals.restarts;
    } else if (what == "acc") {
      TaskId id = 0;
      std::string async;
      f >> label >> id >> async;
      if (async == "async") jobs[id].async_tag = tag;
      jobs[id].accepted = true;
      jobs[id].label = label;
      ids_of_label[label].insert(id);
    } else if (what == "rolledback") {
      f >> label;
      rolled_back.insert(label);
    } else if (what == "accflow") {
      TaskId fid = 0;
      f >> label >> fid;
      accepted_flows[label].insert(fid);
    } else if (what == "run") {
      TaskId id = 0, flow = 0;
      unsigned attempt = 0;
      std::uint32_t read = 0;
      f >> label >> id >> attempt >> flow >> read;
      ++totals.runs;
      Job& j = jobs[id];
      j.label = label;
      ids_of_label[label].insert(id);
      EXPECT_FALSE(rolled_back.count(label)) << "a rolled-back enqueue_in ran" << where;
      ASSERT_TRUE(spec_of.count(label)) << "a run of a label no program has" << where;
      EXPECT_LE(attempt, spec_of[label]->effective_max()) << "an attempt beyond max_attempts" << where;
      if (!j.runs.empty()) {
        const Run& before = j.runs.back();
        if (before.tag != tag && (killed.count(before.tag) || j.stolen.count(before.attempt))) ++totals.takeovers;
      }
      // A steal stands for a process paused past its lease, but the process
      // was not paused: an attempt it had queued before the steal may start
      // after it, even after the attempt that took over (a paused process
      // would see its lease run out by its own clock and not start it). The
      // fence rejects its outcome, as it would the paused one's.
      const bool late_stolen_start = j.stolen.count(attempt) != 0;
      const Run now{tag, attempt};
      for (const Run& r : j.runs) {
        // Attempts only rise: of the two, the lower one held the lease that
        // ran out (its log line may come later: a loaded process can be
        // descheduled between starting the handler and writing the line).
        const Run& stale = attempt < r.attempt ? now : r;
        if (late_stolen_start || excused(j, r) || excused(j, stale)) continue;
        if (r.ok) lapse(id, stale, label + " ran again after it completed in " + r.tag + where);
        if (!r.ok && !r.failed) lapse(id, stale, label + " ran while its attempt " + std::to_string(r.attempt) + " still ran in " + r.tag + where);
      }
      if (node_of.count(label)) {
        const auto& [spec, k] = node_of[label];
        EXPECT_NE(flow, 0u) << "a workflow node ran outside any workflow" << where;
        for (std::uint32_t p : spec->after[k]) {
          EXPECT_TRUE(node_ok.count({spec->nodes[p].label, flow}))
              << label << " ran before its predecessor " << spec->nodes[p].label << " completed" << where;
        }
      }
      if (spec_of[label]->type == "steps" && !late_stolen_start) {  // a late one read its claim's checkpoint
        EXPECT_TRUE(read >= j.cp_confirmed && (read == 0 || j.cp_attempted.count(read)))
            << "read checkpoint " << read << ", the last one written was " << j.cp_confirmed << where;
      }
      j.runs.push_back({tag, attempt});
      j.flow = flow;
    } else if (what == "ok" || what == "fail") {
      TaskId id = 0;
      unsigned attempt = 0;
      std::string why;
      f >> label >> id >> attempt >> why;
      Job& j = jobs[id];
      bool found = false;
      for (auto r = j.runs.rbegin(); r != j.runs.rend() && !found; ++r) {
        if (r->tag == tag && r->attempt == attempt && !r->ok && !r->failed) {
          (what == "ok" ? r->ok : r->failed) = true;
          found = true;
          // Only an attempt whose lease was taken away (or ran out) may fail other than as planned (LeaseLost).
          if (what != "ok" && why != "planned" && !excused(j, *r)) lapse(id, *r, "an attempt failed unexpectedly" + where);
        }
      }
      EXPECT_TRUE(found) << what << " without its run" << where;
      if (what == "ok" && node_of.count(label)) node_ok.insert({label, j.flow});
    } else if (what == "cping" || what == "cp") {
      TaskId id = 0;
      std::uint32_t value = 0;
      f >> id >> value;
      if (what == "cping") jobs[id].cp_attempted.insert(value);
      else jobs[id].cp_confirmed = std::max(jobs[id].cp_confirmed, value);
    } else if (what == "fenced") {
      std::uint64_t n = 0;
      f >> n;
      fenced[tag] += n;
    } else if (what == "stealing") {
      TaskId id = 0;
      unsigned attempt = 0;
      f >> id >> attempt;
      jobs[id].stolen.insert(attempt);
      ++totals.steals;
    } else if (what == "retrying" || what == "discarding") {
      TaskId id = 0, flow = 0;
      f >> id >> label >> flow;
      Job& j = jobs[id];
      if (what == "retrying") {
        j.round_start = j.runs.size();
      } else {
        j.discarding = true;
        if (label != "?") discarded_labels.insert(label);
        if (flow != 0) node_discarded.insert({label, flow});
      }
    } else if (what == "bad-permits") {  // a running task holds its permits, unless its lease was taken away
      TaskId id = 0;
      unsigned attempt = 0;
      f >> label >> id >> attempt;
      EXPECT_TRUE(jobs[id].stolen.count(attempt)) << "a running task without its global permits" << where;
    } else if (what == "status") {
      TaskId id = 0;
      std::string state;
      f >> id >> state;
      const Job& j = jobs[id];
      if (state == "completed") EXPECT_TRUE(j.ever_ok()) << "status says completed before any run completed" << where;
      // (An asynchronous enqueue may not be committed yet.)
      if (state == "unknown" && j.async_tag.empty()) EXPECT_TRUE(j.ever_ok() || j.discarding) << "status lost an accepted task" << where;
    } else if (what == "final-dead") {
      TaskId id = 0, flow = 0;
      unsigned attempts = 0;
      f >> id >> attempts >> label >> flow;
      Job& j = jobs[id];
      j.dead = true;
      j.dead_attempts = attempts;
      if (j.label.empty()) j.label = label;
      if (flow != 0) node_dead.insert({label, flow});
    } else if (what == "final-status") {
      TaskId id = 0;
      std::string state;
      f >> id >> state;
      jobs[id].final_status = state;
    } else if (what == "end") {
      ended = tag == "sweep";
    } else if (what != "boot" && what != "retried" && what != "discarded") {
      ADD_FAILURE() << "the log reports a failure" << where;
    }
  }
  ASSERT_TRUE(ended) << "the sweeper did not reach its end";
  // Keys: one id per key (a discarded task's key is free again).
  for (const auto& [label, ids] : ids_of_label) {
    if (!spec_of.count(label) || node_of.count(label) || discarded_labels.count(label)) continue;
    // Without a key, an enqueue cut short by a kill (before the op was logged as done) is made again.
    const std::size_t allowed = spec_of[label]->keyed || label.rfind("w0.", 0) != 0 ? 1 : 1 + killed.size();
    EXPECT_LE(ids.size(), allowed) << label << " has " << ids.size() << " ids: its key did not hold, or it was duplicated";
  }
  for (const auto& [label, fids] : accepted_flows) {
    bool any_discarded = false;
    for (const auto& node : flows.at(label)->nodes) any_discarded = any_discarded || discarded_labels.count(node.label);
    if (!any_discarded) EXPECT_EQ(fids.size(), 1u) << "workflow " << label << " has more than one id under its key";
  }
  // Nothing accepted lost; the dead set is the tasks whose attempts ran out.
  for (const auto& [id, j] : jobs) {
    if (j.label.empty() || !spec_of.count(j.label)) continue;
    const TaskSpec& spec = *spec_of[j.label];
    if (j.accepted) ++totals.tasks;
    const std::string name = j.label + " (id " + std::to_string(id) + ")";
    if (j.dead) {
      EXPECT_EQ(j.dead_attempts, spec.effective_max()) << name << " is dead after a number of attempts other than its maximum";
      for (std::size_t r = j.round_start; r < j.runs.size(); ++r) {
        if (j.runs[r].ok && !excused(j, j.runs[r])) lapse(id, j.runs[r], name + " is dead but completed since its last retry in " + j.runs[r].tag);
      }
      EXPECT_EQ(j.final_status, "dead") << name;
      continue;
    }
    for (std::size_t r = j.round_start; r < j.runs.size(); ++r) {
      if (j.runs[r].failed && j.runs[r].attempt >= spec.effective_max())
        EXPECT_TRUE(j.discarding) << name << " failed its last attempt yet is neither dead nor discarded";
    }
    if (j.discarding) continue;
    // An asynchronous enqueue whose process was killed before it committed
    // the task is lost, as PostgresStore::async_enqueue says; never one whose process lived.
    if (killed.count(j.async_tag) && j.runs.empty() && j.final_status == "unknown") {
      ++totals.async_lost;
      continue;
    }
    if (j.accepted || !j.runs.empty()) {
      EXPECT_TRUE(j.final_status == "completed" || j.final_status == "unknown")
          << name << " is " << j.final_status << " after the drain";
      const bool behind = node_of.count(j.label) != 0;  // a node's outcome is checked by its workflow below
      if (!behind) EXPECT_TRUE(j.ever_ok()) << "accepted " << name << " never completed and is not dead: lost";
      if (!behind && j.ever_ok()) EXPECT_EQ(j.final_status, spec.keyed ? "completed" : "unknown") << name;
    }
  }
  std::function<bool(const FlowSpec&, std::uint32_t, TaskId)> behind_discarded = [&](const FlowSpec& spec, std::uint32_t k, TaskId fid) {
    if (node_discarded.count({spec.nodes[k].label, fid})) return true;
    for (std::uint32_t p : spec.after[k]) {
      if (behind_discarded(spec, p, fid)) return true;
    }
    return false;
  };
  for (const auto& [label, fids] : accepted_flows) {
    const FlowSpec& spec = *flows.at(label);
    for (const TaskId fid : fids) {
      for (std::uint32_t k = 0; k < spec.nodes.size(); ++k) {
        const NodeKey node{spec.nodes[k].label, fid};
        EXPECT_TRUE(node_ok.count(node) || node_dead.count(node) || behind_discarded(spec, k, fid))
            << "node " << node.first << " of accepted workflow " << fid << " never completed, is not dead, and is not behind a discarded node: lost";
      }
    }
  }
  // The database: nothing live, no permit held, no grant above a limit, and
  // each transactional effect once per completed task.
  test::PgConn conn(conninfo);
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.jobs WHERE state IN ('available', 'running', 'blocked')"), "0") << "live tasks after the sweep";
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.workflows WHERE state = 'running'"), "0") << "unfinished workflows after the sweep";
  EXPECT_EQ(conn.scalar("SELECT coalesce(sum(abs(in_use)), 0) FROM ordo.groups"), "0") << "permits still counted in ordo.groups.in_use";
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.holders"), "0") << "ordo.holders is not empty";
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM chaos.violations"), "0") << conn.scalar("SELECT coalesce(min(what), '') FROM chaos.violations");
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM chaos.grants WHERE after > lim"), "0")
      << "a grant took a group above its limit: " << conn.scalar("SELECT coalesce(min(grp || ' ' || before || '->' || after || ' limit ' || lim), '') FROM chaos.grants WHERE after > lim");
  EXPECT_EQ(conn.scalar("SELECT count(*) FROM ordo.groups g WHERE peak > (SELECT max(lim) FROM chaos.limits l WHERE l.grp = g.name)"), "0")
      << "a group's peak is above every limit it had";
  // enqueue_in left the caller's transaction to the caller: its own row
  // committed or rolled back with the task.
  for (const std::string& label : rolled_back) {
    EXPECT_EQ(conn.scalar("SELECT count(*) FROM chaos.app WHERE label = '" + label + "'"), "0")
        << "the rolled-back transaction of " << label << "'s enqueue_in committed";
  }
  for (const auto& [id, j] : jobs) {
    if (!j.accepted || !spec_of.count(j.label) || spec_of[j.label]->via != TaskSpec::committed_in) continue;
    EXPECT_NE(conn.scalar("SELECT count(*) FROM chaos.app WHERE label = '" + j.label + "'"), "0")
        << "the committed transaction of " << j.label << "'s enqueue_in lost its own row";
  }
  // A lease that ran out on its own is excused only by an outcome its
  // process saw fenced: more breaches than that are a bug.
  for (const auto& [tag, attempts] : lapsed) {
    std::string reports;
    for (const std::string& report : lapse_reports[tag]) reports += "\n  " + report;
    EXPECT_LE(attempts.size(), fenced[tag])
        << attempts.size() << " attempts in " << tag << " (not killed, no lease taken away) broke the rule, but only "
        << fenced[tag] << " of its outcomes were fenced (leases that ran out on their own):" << reports;
    totals.lapses += attempts.size();
  }
  totals.grants += std::stoull(conn.scalar("SELECT count(*) FROM chaos.grants"));
  // The fleet's statements take their locks in one order: none waited for
  // another until the server's detector aborted it (the count may lag, never lead).
  EXPECT_EQ(conn.scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"), "0")
      << "statements on this database deadlocked (the server's log names them)";
  PGresult* r = PQexec(conn.get(), "SELECT job, count(*), min(attempt) FROM chaos.effects GROUP BY job");
  ASSERT_EQ(PQresultStatus(r), PGRES_TUPLES_OK);
  std::map<TaskId, std::pair<long, unsigned>> effects;
  for (int i = 0; i < PQntuples(r); ++i) {
    effects[std::stoull(PQgetvalue(r, i, 0))] = {std::stol(PQgetvalue(r, i, 1)), static_cast<unsigned>(std::stoul(PQgetvalue(r, i, 2)))};
  }
  PQclear(r);
  for (const auto& [id, j] : jobs) {
    if (j.label.empty() || !spec_of.count(j.label) || spec_of[j.label]->type != "tx") continue;
    const auto [count, first_attempt] = effects.count(id) ? effects[id] : std::pair<long, unsigned>{0, 0};
    const std::string name = j.label + " (id " + std::to_string(id) + ")";
    if (j.dead || j.discarding) {
      EXPECT_EQ(count, 0) << name << " is dead or discarded, yet an attempt's effect committed";
    } else if (j.ever_ok()) {
      EXPECT_EQ(count, 1) << name << " completed; its effect should exist exactly once";
    }
    if (count > 0) EXPECT_GT(first_attempt, spec_of[j.label]->fail_first) << name << ": a failed attempt's effect committed";
  }
}

void run_program(std::uint64_t seed, Totals& totals) {
  const Program program = generate(seed);
  test::ScratchDatabase db;
  prepare(program, db.conninfo());
  if (::testing::Test::HasFatalFailure()) return;
  char dir_template[] = "/tmp/ordo-pg-chaos.XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string log = std::string(dir_template) + "/effects.log";
  std::mt19937_64 rng(seed ^ 0x5eed);
  int kills_left = static_cast<int>(1 + rng() % 4);
  std::set<std::string> killed;
  std::vector<pid_t> pids(program.workers, 0);
  std::vector<bool> finished(program.workers, false);
  for (unsigned w = 0; w < program.workers; ++w) {
    pids[w] = ::fork();
    ASSERT_GE(pids[w], 0);
    if (pids[w] == 0) run_worker(program, w, 0, db.conninfo(), log);
  }
  int victim_boot = 0;
  const auto kill_gap = [&] { return std::chrono::milliseconds(5 + rng() % (kLease.count() + 100)); };
  auto kill_at = std::chrono::steady_clock::now() + kill_gap();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(test::kScale == 1 ? 240 : 40);
  std::string failure;
  test::PgConn watch(db.conninfo());
  auto next_look = std::chrono::steady_clock::now();
  for (unsigned done = 0; done < program.workers && failure.empty();) {
    if (std::chrono::steady_clock::now() > give_up) {
      failure = "the fleet did not finish its programs in time: a hang";
      break;
    }
    if (std::chrono::steady_clock::now() >= next_look) {  // a broken count stops the program at once
      next_look += 200ms;
      if (watch.scalar("SELECT count(*) FROM chaos.violations") != "0") {
        failure = "the database broke an invariant while the fleet ran";
        break;
      }
    }
    for (unsigned w = 0; w < program.workers; ++w) {
      if (finished[w]) continue;
      int status = 0;
      const pid_t got = ::waitpid(pids[w], &status, WNOHANG);
      if (got == 0 && w == 0 && kills_left > 0 && std::chrono::steady_clock::now() >= kill_at) {
        ::kill(pids[w], SIGKILL);
        ::waitpid(pids[w], &status, 0);
        killed.insert("w0b" + std::to_string(victim_boot));
        ++totals.kills;
        --kills_left;
        pids[w] = ::fork();
        if (pids[w] == 0) run_worker(program, w, victim_boot + 1, db.conninfo(), log);
        ++victim_boot;
        kill_at = std::chrono::steady_clock::now() + kill_gap();
        continue;
      }
      if (got == 0) continue;
      finished[w] = true;
      ++done;
      if (WIFSIGNALED(status)) {
        failure = "worker " + std::to_string(w) + " died of signal " + std::to_string(WTERMSIG(status));
      } else if (WEXITSTATUS(status) != 0) {
        failure = "worker " + std::to_string(w) + " exited with " + std::to_string(WEXITSTATUS(status)) + " (see child-error in the log)";
      }
    }
    std::this_thread::sleep_for(1ms);
  }
  for (unsigned w = 0; w < program.workers; ++w) {
    if (!finished[w]) {
      ::kill(pids[w], SIGKILL);
      ::waitpid(pids[w], nullptr, 0);
    }
  }
  if (failure.empty()) {
    const pid_t sweeper = ::fork();
    ASSERT_GE(sweeper, 0);
    if (sweeper == 0) run_sweeper(db.conninfo(), log);
    int status = 0;
    if (!test::wait_child_within(sweeper, 120s, status)) failure = "the sweeper hung";
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failure = "the sweeper failed (see child-error in the log)";
  }
  if (!failure.empty()) {
    test::PgConn conn(db.conninfo());
    ADD_FAILURE() << failure << "; jobs by state: "
                  << conn.scalar("SELECT coalesce(string_agg(state || ' ' || n, ', '), 'none') FROM "
                                 "(SELECT state, count(*) AS n FROM ordo.jobs GROUP BY state) s")
                  << "; groups: " << conn.scalar("SELECT string_agg(name || ' in_use ' || in_use || ' limit ' || lim, ', ') FROM ordo.groups")
                  << "; violations: " << conn.scalar("SELECT coalesce(string_agg(what, '; '), 'none') FROM chaos.violations");
  } else {
    check(program, log, killed, db.conninfo(), totals);
  }
  ++totals.programs;
  if (::testing::Test::HasFailure()) {  // keep the evidence: the scratch directory goes
    const std::string kept = "/tmp/ordo-pg-chaos-" + std::to_string(seed) + ".log";
    std::filesystem::copy_file(log, kept, std::filesystem::copy_options::overwrite_existing);
    std::printf("pg chaos: the failing program's log is %s\n", kept.c_str());
  }
  std::filesystem::remove_all(dir_template);
}

TEST(PgChaos, RandomProgramsOnAFleetWithKillsAndTakeoversKeepEveryGuarantee) {
  std::uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("ORDO_SEED")) seed = std::stoull(s);
  double budget_s = 15;
  if (const char* s = std::getenv("ORDO_CHAOS_SECONDS")) budget_s = std::stod(s);
  std::printf("pg chaos: ORDO_SEED=%llu, budget %.0f s, lease %lld ms\n", static_cast<unsigned long long>(seed), budget_s,
              static_cast<long long>(kLease.count()));
  std::fflush(stdout);  // before any fork: a child must not inherit (and repeat) buffered output
  std::mt19937_64 seeds(seed);
  Totals totals;
  const auto start = std::chrono::steady_clock::now();
  const auto budget = std::chrono::duration<double>(budget_s);
  const char* only = std::getenv("ORDO_CHAOS_PROGRAM");  // one program seed, as a failure names it
  while (std::chrono::steady_clock::now() - start < budget) {
    const std::uint64_t program_seed = only != nullptr ? std::stoull(only) : seeds();
    SCOPED_TRACE("ORDO_SEED=" + std::to_string(seed) + ", program " + std::to_string(totals.programs) +
                 " (ORDO_CHAOS_PROGRAM=" + std::to_string(program_seed) + ")");
    run_program(program_seed, totals);
    if (HasFailure() || only != nullptr) break;
  }
  std::printf("pg chaos: %llu programs, %llu operations, %llu accepted tasks and nodes, %llu handler runs, "
              "%llu kills, %llu graceful restarts, %llu leases taken away, %llu runs after a takeover, "
              "%llu global grants, %llu asynchronous enqueues lost with their killed process, "
              "%llu attempts run again after a lease ran out on its own in %.1f s\n",
              static_cast<unsigned long long>(totals.programs), static_cast<unsigned long long>(totals.operations),
              static_cast<unsigned long long>(totals.tasks), static_cast<unsigned long long>(totals.runs),
              static_cast<unsigned long long>(totals.kills), static_cast<unsigned long long>(totals.restarts),
              static_cast<unsigned long long>(totals.steals), static_cast<unsigned long long>(totals.takeovers),
              static_cast<unsigned long long>(totals.grants), static_cast<unsigned long long>(totals.async_lost),
              static_cast<unsigned long long>(totals.lapses), std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  EXPECT_GT(totals.programs, 0u);
}

}  // namespace
}  // namespace ordo
