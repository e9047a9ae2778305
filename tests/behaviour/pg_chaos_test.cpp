// Over 500 lines: one generator, one child and one checker of a single model, read together.
//
// The PostgreSQL store's model checker: seeded random programs run by a
// fleet of 2 or 3 child processes on one database (a ScratchDatabase per
// program) — enqueues (priorities, idempotency keys, delays from the
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
//   behind a discarded node; nothing is left live in ordo.jobs;
// - a rolled-back enqueue_in never ran;
// - a transactional task's effect (written via ctx.transaction()) exists
//   exactly once for each completed task, never for a failed attempt, never
//   for a dead or discarded task;
// - an idempotency key names one task;
// - nothing completed runs again, and no two attempts of a task run at
//   once, unless the process that ran the earlier one was killed or that
//   attempt's lease was taken away; an attempt fails only as planned (or,
//   its lease taken away, with LeaseLost);
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
#include "pg_support.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using namespace std::chrono_literals;

constexpr unsigned kTypeMaxAttempts = 3;  // every type's default
constexpr unsigned kAlwaysFails = 1000;   // fail_first of a task that can only die
// Short, so that a killed process's tasks are taken over within the program;
// longer under the sanitizers, whose slowness must not cost a live process
// its leases.
constexpr std::chrono::milliseconds kLease{test::kScale == 1 ? 1500 : 400};
constexpr unsigned kMinLimit = 2;  // global limits stay at or above the largest need:
constexpr unsigned kMaxNeed = 2;   // a task never waits for a limit that cannot grant it
const char* const kTypes[] = {"plain", "steps", "tx"};

struct TaskSpec {
  std::string label;
  std::string type = "plain";
  unsigned fail_first = 0;    // attempts 1..fail_first throw
  unsigned max_attempts = 0;  // 0: the type's
  int delay_ms = 0;
  bool absolute = false;      // run_at (from the server's clock) rather than delay
  std::uint8_t priority = 1;
  bool keyed = true;
  unsigned slow = 0;          // 1: its first attempt runs for about a lease, 2: every attempt does
  std::vector<GlobalNeed> needs;
  enum Via { enqueue, committed_in, rolled_back_in } via = enqueue;
  unsigned effective_max() const { return max_attempts != 0 ? max_attempts : kTypeMaxAttempts; }
};

struct FlowSpec {
  std::string label;
  std::vector<TaskSpec> nodes;
  std::vector<std::vector<std::uint32_t>> after;  // per node: predecessor indices
};

struct Op {
  enum Kind { task, flow, dead_op, set_limit, status_op, steal, pause, restart } kind = task;
  TaskSpec task_spec;
  FlowSpec flow_spec;
  std::uint32_t pick = 0;  // dead_op: which dead task, even: retry, odd: discard; status_op: which task
  std::string group;
  unsigned limit = 0;
};

struct Program {
  unsigned workers = 2;
  std::vector<std::vector<Op>> ops;  // per worker
  std::map<std::string, unsigned> initial_limits;
};

Program generate(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto below = [&](std::uint64_t n) { return rng() % n; };
  auto failing = [&] {
    const auto r = below(10);
    return r < 5 ? 0u : r < 8 ? static_cast<unsigned>(1 + below(2)) : kAlwaysFails;
  };
  Program p;
  p.workers = static_cast<unsigned>(2 + below(2));
  p.initial_limits = {{"g0", static_cast<unsigned>(kMinLimit + below(3))}, {"g1", static_cast<unsigned>(kMinLimit + below(2))}};
  p.ops.resize(p.workers);
  for (unsigned w = 0; w < p.workers; ++w) {
    const std::size_t n = 8 + below(18);
    for (std::size_t i = 0; i < n; ++i) {
      Op op;
      const std::string label = "w" + std::to_string(w) + "." + std::to_string(i);
      const auto r = below(100);
      if (r < 50) {
        op.kind = Op::task;
        TaskSpec& t = op.task_spec;
        t.label = label;
        t.type = kTypes[below(3)];
        t.fail_first = failing();
        t.max_attempts = below(3) == 0 ? 0 : static_cast<unsigned>(2 + below(3));
        if (below(5) == 0) {
          t.delay_ms = static_cast<int>(below(300));
          t.absolute = below(2) == 0;
        }
        t.priority = static_cast<std::uint8_t>(below(3));
        t.keyed = below(10) < 7;
        t.slow = below(6) == 0 ? static_cast<unsigned>(1 + below(2)) : 0u;
        if (below(10) < 3) {
          if (below(2) == 0) t.needs = {{"g0", static_cast<unsigned>(1 + below(kMaxNeed))}};
          else t.needs = {{"g0", 1}, {"g1", 1}};
        }
        const auto via = below(10);
        t.via = via < 7 ? TaskSpec::enqueue : via < 9 ? TaskSpec::committed_in : TaskSpec::rolled_back_in;
      } else if (r < 65) {
        op.kind = Op::flow;
        op.flow_spec.label = label;
        const std::size_t nodes = 2 + below(4);
        for (std::size_t k = 0; k < nodes; ++k) {
          TaskSpec node;
          node.label = label + "." + std::to_string(k);
          node.type = below(3) == 0 ? "tx" : "plain";
          node.fail_first = below(4) == 0 ? failing() : 0u;
          op.flow_spec.nodes.push_back(node);
          std::vector<std::uint32_t> preds;
          for (std::size_t j = 0; j < k; ++j) {
            if (below(2) == 0) preds.push_back(static_cast<std::uint32_t>(j));
          }
          op.flow_spec.after.push_back(std::move(preds));
        }
      } else if (r < 77) {
        op.kind = Op::dead_op;
        op.pick = static_cast<std::uint32_t>(rng());
      } else if (r < 84) {
        op.kind = Op::set_limit;
        op.group = below(2) == 0 ? "g0" : "g1";
        op.limit = static_cast<unsigned>(kMinLimit + below(3));
      } else if (r < 89) {
        op.kind = Op::status_op;
        op.pick = static_cast<std::uint32_t>(rng());
      } else if (r < 95) {
        op.kind = Op::steal;
      } else if (r < 98) {
        op.kind = Op::pause;
        op.pick = static_cast<std::uint32_t>(below(20));
      } else {
        op.kind = Op::restart;
      }
      p.ops[w].push_back(std::move(op));
    }
  }
  return p;
}

void log_line(int fd, const std::string& line) {
  const std::string l = line + "\n";
  if (::write(fd, l.data(), l.size()) != static_cast<ssize_t>(l.size())) ::_exit(9);
}

// One row of `sql` on `conn` (a handler's transaction or a connection of its
// own); throws what failed.
std::vector<std::string> row_of(PGconn* conn, const std::string& sql) {
  PGresult* r = PQexec(conn, sql.c_str());
  const auto status = PQresultStatus(r);
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    const std::string why = PQerrorMessage(conn);
    PQclear(r);
    throw std::runtime_error("'" + sql + "' failed: " + why);
  }
  std::vector<std::string> row;
  if (PQntuples(r) > 0) {
    for (int c = 0; c < PQnfields(r); ++c) row.emplace_back(PQgetisnull(r, 0, c) ? "" : PQgetvalue(r, 0, c));
  }
  PQclear(r);
  return row;
}

constexpr const char* kServerNowUs = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

// What a handler needs to know of its task: its label, how many attempts
// fail, the server time it must not start before (0: none), how many global
// groups it holds permits of, and which of its attempts are slow.
std::string args_of(const TaskSpec& t, std::int64_t not_before_us = 0) {
  return t.label + " " + std::to_string(t.fail_first) + " " + std::to_string(not_before_us) + " " +
         std::to_string(t.needs.size()) + " " + std::to_string(t.slow);
}

// One child process's identity and log. Thread-safety: read-only once the
// child's DurableTasks starts; log() is one write(2) and may be called from
// any thread.
struct Child {
  int fd = -1;
  std::string tag;  // "w<worker>b<boot>", or "sweep"
  std::string conninfo;
  void log(const std::string& line) const { log_line(fd, tag + " " + line); }
};

// A connection per scheduler worker, for handlers that are not transactional.
PGconn* thread_connection(const std::string& conninfo) {
  thread_local std::unique_ptr<test::PgConn> conn;
  if (!conn || !conn->ok()) conn = std::make_unique<test::PgConn>(conninfo);
  return conn->get();
}

void handle(const Child& c, TaskContext& ctx) {
  std::istringstream in{std::string(ctx.args_text())};
  std::string label;
  unsigned fail_first = 0, needs = 0, slow = 0;
  long long not_before_us = 0;
  in >> label >> fail_first >> not_before_us >> needs >> slow;
  const std::string id = std::to_string(ctx.id());
  const std::string attempt = std::to_string(ctx.attempt());
  const bool tx = ctx.type() == "tx";
  PGconn* conn = tx ? ctx.transaction() : thread_connection(c.conninfo);
  const auto probe = row_of(conn, std::string("SELECT ") + kServerNowUs + ", coalesce((SELECT flow_id FROM ordo.jobs WHERE id = " +
                                      id + "), 0), (SELECT count(*) FROM ordo.holders WHERE job_id = " + id + ")");
  const long long now_us = std::stoll(probe.at(0));
  if (now_us < not_before_us) c.log("early " + label + " " + id + " started " + std::to_string(not_before_us - now_us) + " us before its time");
  if (std::stoul(probe.at(2)) != needs)
    c.log("bad-permits " + label + " " + id + " " + attempt + " holds " + probe.at(2) + " of its " + std::to_string(needs) + " groups");
  const std::uint32_t read = ctx.type() == "steps" ? ctx.resume_from<std::uint32_t>(0) : 0;
  c.log("run " + label + " " + id + " " + attempt + " " + probe.at(1) + " " + std::to_string(read));
  // From here every way out is logged: ok, or fail (with why).
  try {
    if (slow == 2 || (slow == 1 && ctx.attempt() == 1)) {
      std::this_thread::sleep_for(kLease);  // a lease taken away meanwhile is taken over while this runs
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(400 * ((label.size() + ctx.attempt()) % 4)));  // kills land mid-run
    }
    if (ctx.type() == "steps") {
      c.log("cping " + id + " " + std::to_string(read + 1));
      ctx.checkpoint(read + 1);  // LeaseLost once this attempt's lease was taken away
      c.log("cp " + id + " " + std::to_string(read + 1));
    }
    if (tx) row_of(conn, "INSERT INTO chaos.effects VALUES (" + id + ", " + attempt + ", '" + label + "')");
    if (ctx.attempt() <= fail_first) throw std::runtime_error("planned");
  } catch (const std::exception& e) {
    std::string why = e.what();
    for (char& ch : why) ch = ch == '\n' ? ' ' : ch;
    c.log("fail " + label + " " + id + " " + attempt + " " + (why == "planned" ? why : "error: " + why));
    throw;
  }
  c.log("ok " + label + " " + id + " " + attempt);
}

PostgresStore store_of(const std::string& conninfo) {
  PostgresStore store = postgres(conninfo);
  store.lease = kLease;
  store.poll = 100ms;
  return store;
}

std::unique_ptr<DurableTasks> open_tasks(Scheduler& s, const Child& c) {
  auto d = std::make_unique<DurableTasks>(s, store_of(c.conninfo));
  const RetryPolicy quick{.max_attempts = kTypeMaxAttempts, .initial_backoff = 1ms, .max_backoff = 8ms};
  const auto handler = [&c](TaskContext& ctx, std::span<const std::byte>) { handle(c, ctx); };
  d->define("plain", handler, {.retry = quick});
  d->define("steps", handler, {.retry = quick});
  d->define("tx", handler, {.retry = quick, .transactional = true});
  d->start();
  return d;
}

// The label and workflow of task `id`, as the database has it ("? 0" once its row is gone).
std::string describe(test::PgConn& conn, TaskId id) {
  const auto row = row_of(conn.get(), "SELECT split_part(convert_from(args, 'UTF8'), ' ', 1), coalesce(flow_id, 0) FROM ordo.jobs WHERE id = " +
                                          std::to_string(id));
  return row.empty() ? "? 0" : row[0] + " " + row[1];
}

void run_op(const Child& c, std::unique_ptr<DurableTasks>& d, Scheduler& s, test::PgConn& conn, const Op& op,
            std::vector<TaskId>& accepted) {
  switch (op.kind) {
    case Op::task: {
      const TaskSpec& t = op.task_spec;
      EnqueueOptions o{.priority = Priority{t.priority}, .global_needs = t.needs};
      if (t.max_attempts != 0) o.max_attempts = t.max_attempts;
      if (t.keyed) o.idempotency_key = t.label;
      std::int64_t not_before = 0;
      if (t.delay_ms > 0) {
        // Taken before the enqueue: its run_at is at least this plus the delay.
        not_before = std::stoll(row_of(conn.get(), std::string("SELECT ") + kServerNowUs).at(0)) + t.delay_ms * 1000;
        if (t.absolute) o.run_at = std::chrono::system_clock::time_point(std::chrono::microseconds(not_before));
        else o.delay = std::chrono::milliseconds(t.delay_ms);
      }
      const std::string args = args_of(t, not_before);
      if (t.via == TaskSpec::enqueue) {
        const TaskId id = d->enqueue(t.type, args, o);
        accepted.push_back(id);
        c.log("acc " + t.label + " " + std::to_string(id));
        break;
      }
      conn.exec("BEGIN");
      conn.exec("INSERT INTO chaos.app VALUES ('" + t.label + "')");
      const TaskId id = d->enqueue_in(conn.get(), t.type, args, o);
      if (t.via == TaskSpec::rolled_back_in) {
        conn.exec("ROLLBACK");
        c.log("rolledback " + t.label + " " + std::to_string(id));
      } else {
        conn.exec("COMMIT");
        accepted.push_back(id);
        c.log("acc " + t.label + " " + std::to_string(id));
      }
      break;
    }
    case Op::flow: {
      DurableWorkflow wf(op.flow_spec.label);
      for (std::size_t k = 0; k < op.flow_spec.nodes.size(); ++k) {
        std::vector<std::string> after;
        for (std::uint32_t j : op.flow_spec.after[k]) after.push_back(op.flow_spec.nodes[j].label);
        wf.node(op.flow_spec.nodes[k].label, op.flow_spec.nodes[k].type, args_of(op.flow_spec.nodes[k]), after);
      }
      c.log("accflow " + op.flow_spec.label + " " + std::to_string(d->enqueue_workflow(wf, op.flow_spec.label)));
      break;
    }
    case Op::dead_op: {
      const auto dead = d->dead();
      if (dead.empty()) break;
      const TaskId id = dead[op.pick % dead.size()].id;
      const bool retry = op.pick % 2 == 0;
      c.log(std::string(retry ? "retrying " : "discarding ") + std::to_string(id) + " " + describe(conn, id));
      const bool done = retry ? d->retry_dead(id) : d->discard_dead(id);
      c.log(std::string(retry ? "retried " : "discarded ") + std::to_string(id) + " " + (done ? "1" : "0"));
      break;
    }
    case Op::set_limit:
      d->set_global_limit(op.group, op.limit);
      break;
    case Op::status_op: {
      if (accepted.empty()) break;
      const TaskId id = accepted[op.pick % accepted.size()];
      c.log("status " + std::to_string(id) + " " + to_string(d->status(id).state));
      break;
    }
    case Op::steal: {  // as a process paused past its lease would lose it: the reaper takes the task back
      // Logged before the lease goes: the attempt that takes over cannot run before the line is written.
      // Mostly a task slow on every attempt: the one that takes over is still
      // running when the one that lost its lease reports its outcome.
      const auto row = row_of(conn.get(), "SELECT id, attempt, attempt - attempt_base FROM ordo.jobs WHERE state = 'running' "
                                          "ORDER BY convert_from(args, 'UTF8') LIKE '% 2' AND random() < 0.8 DESC, random() LIMIT 1");
      if (row.empty()) break;
      c.log("stealing " + row[0] + " " + row[2]);
      row_of(conn.get(), "UPDATE ordo.jobs SET lease_until = now() - interval '1 second' WHERE state = 'running' AND id = " +
                             row[0] + " AND attempt = " + row[1]);
      break;
    }
    case Op::pause:
      std::this_thread::sleep_for(std::chrono::milliseconds(op.pick));
      break;
    case Op::restart:  // a graceful stop mid-program, then a new DurableTasks on the same scheduler
      d->shutdown(ShutdownMode::cancel);
      d.reset();
      c.log("restarted");
      d = open_tasks(s, c);
      break;
  }
}

// A worker: resumes its ops after the last one logged as done, then drains.
[[noreturn]] void run_worker(const Program& program, unsigned worker, int boot, const std::string& conninfo,
                             const std::string& log) {
  Child c;
  c.fd = ::open(log.c_str(), O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0644);
  c.tag = "w" + std::to_string(worker) + "b" + std::to_string(boot);
  c.conninfo = conninfo;
  std::size_t first_op = 0;
  {
    const std::string mine = "w" + std::to_string(worker) + "b";
    std::ifstream in(log);
    for (std::string line; std::getline(in, line);) {
      std::istringstream f(line);
      std::string tag, what;
      std::size_t i = 0;
      f >> tag >> what >> i;
      if (tag.rfind(mine, 0) == 0 && what == "op") first_op = i + 1;
    }
  }
  try {
    c.log("boot");
    test::PgConn conn(conninfo);
    Scheduler s{{.workers = 2}};
    auto d = open_tasks(s, c);
    std::vector<TaskId> accepted;
    const auto& ops = program.ops[worker];
    for (std::size_t i = first_op; i < ops.size(); ++i) {
      run_op(c, d, s, conn, ops[i], accepted);
      c.log("op " + std::to_string(i));
    }
    d->shutdown(ShutdownMode::drain);
    c.log("end");
  } catch (const std::exception& e) {
    c.log(std::string("child-error ") + e.what());
    ::_exit(3);
  }
  ::_exit(0);
}

// The sweeper: once no lease is left, drains what is left, checks status
// against the drain, logs the dead set, and discards dead workflow nodes
// (their workflows then end).
[[noreturn]] void run_sweeper(const std::string& conninfo, const std::string& log) {
  Child c;
  c.fd = ::open(log.c_str(), O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0644);
  c.tag = "sweep";
  c.conninfo = conninfo;
  try {
    c.log("boot");
    test::PgConn conn(conninfo);
    Scheduler s{{.workers = 2}};
    auto d = open_tasks(s, c);
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (row_of(conn.get(), "SELECT count(*) FROM ordo.jobs WHERE state = 'running'").at(0) != "0") {
      if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("tasks still running 60 s after the fleet stopped");
      std::this_thread::sleep_for(20ms);  // the heartbeat's reaper takes back expired leases
    }
    d->shutdown(ShutdownMode::drain);
    if (!d->scheduled().empty() || !d->retrying().empty()) c.log("bad-status scheduled or retrying tasks after a drain");
    std::set<TaskId> dead_ids;
    for (const DeadTask& dj : d->dead()) {
      dead_ids.insert(dj.id);
      if (d->status(dj.id).state != DurableTaskStatus::State::dead)
        c.log("bad-status dead task " + std::to_string(dj.id) + " is " + to_string(d->status(dj.id).state));
      c.log("final-dead " + std::to_string(dj.id) + " " + std::to_string(dj.attempts) + " " + describe(conn, dj.id));
    }
    std::set<TaskId> seen;
    std::ifstream in(log);
    for (std::string line; std::getline(in, line);) {
      std::istringstream f(line);
      std::string tag, what, label;
      TaskId id = 0;
      f >> tag >> what >> label >> id;
      if ((what != "acc" && what != "run") || !seen.insert(id).second) continue;
      const auto state = d->status(id).state;
      if ((state == DurableTaskStatus::State::dead) != (dead_ids.count(id) != 0))
        c.log("bad-status task " + std::to_string(id) + " is " + to_string(state) + " against the dead set");
      c.log("final-status " + std::to_string(id) + " " + to_string(state));
    }
    for (const TaskId id : dead_ids) {
      if (row_of(conn.get(), "SELECT flow_id IS NOT NULL FROM ordo.jobs WHERE id = " + std::to_string(id)).at(0) != "t") continue;
      c.log("discarding " + std::to_string(id) + " " + describe(conn, id));
      if (!d->discard_dead(id)) c.log("bad-status dead node " + std::to_string(id) + " could not be discarded");
    }
    c.log("end");
  } catch (const std::exception& e) {
    c.log(std::string("child-error ") + e.what());
    ::_exit(3);
  }
  ::_exit(0);
}

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
                takeovers = 0;
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
      f >> label >> id;
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
      for (const Run& r : j.runs) {
        EXPECT_TRUE(!r.ok || excused(j, r)) << label << " ran again after it completed in " << r.tag
                                            << ", which was not killed and kept its lease" << where;
        EXPECT_TRUE(r.ok || r.failed || excused(j, r))
            << label << " ran while its attempt " << r.attempt << " still ran in " << r.tag
            << ", which was not killed and kept its lease" << where;
      }
      if (node_of.count(label)) {
        const auto& [spec, k] = node_of[label];
        EXPECT_NE(flow, 0u) << "a workflow node ran outside any workflow" << where;
        for (std::uint32_t p : spec->after[k]) {
          EXPECT_TRUE(node_ok.count({spec->nodes[p].label, flow}))
              << label << " ran before its predecessor " << spec->nodes[p].label << " completed" << where;
        }
      }
      if (spec_of[label]->type == "steps") {
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
          // Only an attempt whose lease was taken away may fail other than as planned (LeaseLost).
          EXPECT_TRUE(what == "ok" || why == "planned" || excused(j, *r)) << "an attempt failed unexpectedly" << where;
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
      if (state == "unknown") EXPECT_TRUE(j.ever_ok() || j.discarding) << "status lost an accepted task" << where;
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
        EXPECT_TRUE(!j.runs[r].ok || excused(j, j.runs[r])) << name << " is dead but completed since its last retry in " << j.runs[r].tag;
      }
      EXPECT_EQ(j.final_status, "dead") << name;
      continue;
    }
    for (std::size_t r = j.round_start; r < j.runs.size(); ++r) {
      if (j.runs[r].failed && j.runs[r].attempt >= spec.effective_max())
        EXPECT_TRUE(j.discarding) << name << " failed its last attempt yet is neither dead nor discarded";
    }
    if (j.discarding) continue;
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
              "%llu global grants in %.1f s\n",
              static_cast<unsigned long long>(totals.programs), static_cast<unsigned long long>(totals.operations),
              static_cast<unsigned long long>(totals.tasks), static_cast<unsigned long long>(totals.runs),
              static_cast<unsigned long long>(totals.kills), static_cast<unsigned long long>(totals.restarts),
              static_cast<unsigned long long>(totals.steals), static_cast<unsigned long long>(totals.takeovers),
              static_cast<unsigned long long>(totals.grants),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  EXPECT_GT(totals.programs, 0u);
}

}  // namespace
}  // namespace ordo
