// The programs of tests/behaviour/pg_chaos_test.cpp, and the child processes
// that run them: what a program is and how it is generated from a seed, the
// handlers (which log every effect), a worker of the fleet, and the sweeper
// that drains what the fleet left. The checker is in the test file. See
// docs/testing.md.
#pragma once

#include <fcntl.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
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

namespace ordo::pg_chaos {

using namespace std::chrono_literals;

inline constexpr unsigned kTypeMaxAttempts = 3;  // every type's default
inline constexpr unsigned kAlwaysFails = 1000;   // fail_first of a task that can only die
// Short, so that a killed process's tasks are taken over within the program;
// longer under the sanitizers, whose slowness must not cost a live process
// its leases.
inline constexpr std::chrono::milliseconds kLease{test::kScale == 1 ? 1500 : 400};
inline constexpr unsigned kMinLimit = 2;  // global limits stay at or above the largest need:
inline constexpr unsigned kMaxNeed = 2;   // a task never waits for a limit that cannot grant it
inline const char* const kTypes[] = {"plain", "steps", "tx"};

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
  // many: by one enqueue_many together with the op's batch_mates.
  enum Via { enqueue, committed_in, rolled_back_in, many } via = enqueue;
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
  std::vector<TaskSpec> batch_mates;  // via many: enqueued in the same call, after task_spec
  FlowSpec flow_spec;
  std::uint32_t pick = 0;  // dead_op: which dead task, even: retry, odd: discard; status_op: which task
  std::string group;
  unsigned limit = 0;
};

struct Program {
  unsigned workers = 2;
  std::vector<std::vector<Op>> ops;  // per worker
  std::vector<bool> async_enqueue;   // per worker: PostgresStore::async_enqueue
  std::map<std::string, unsigned> initial_limits;
};

inline Program generate(std::uint64_t seed) {
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
  for (unsigned w = 0; w < p.workers; ++w) p.async_enqueue.push_back(below(2) == 0);
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
        t.via = via < 5 ? TaskSpec::enqueue : via < 7 ? TaskSpec::many : via < 9 ? TaskSpec::committed_in : TaskSpec::rolled_back_in;
        for (std::uint64_t k = 0, mates = t.via == TaskSpec::many ? below(4) : 0; k < mates; ++k) {
          TaskSpec mate = t;
          mate.label = label + "m" + std::to_string(k);
          mate.fail_first = failing();
          op.batch_mates.push_back(std::move(mate));
        }
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

inline void log_line(int fd, const std::string& line) {
  const std::string l = line + "\n";
  if (::write(fd, l.data(), l.size()) != static_cast<ssize_t>(l.size())) ::_exit(9);
}

// One row of `sql` on `conn` (a handler's transaction or a connection of its
// own); throws what failed.
inline std::vector<std::string> row_of(PGconn* conn, const std::string& sql) {
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

inline constexpr const char* kServerNowUs = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

// What a handler needs to know of its task: its label, how many attempts
// fail, the server time it must not start before (0: none), how many global
// groups it holds permits of, and which of its attempts are slow.
inline std::string args_of(const TaskSpec& t, std::int64_t not_before_us = 0) {
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
  bool async_enqueue = false;
  void log(const std::string& line) const { log_line(fd, tag + " " + line); }
};

// How many of this DurableTasks' outcomes the fence rejected: each one an
// attempt whose lease ran out on its own (this process or its server
// stalled past it), which the checker may then find run again elsewhere.
inline void log_fenced(const Child& c, DurableTasks& d) { c.log("fenced " + std::to_string(d.stats().fenced)); }

// A connection per scheduler worker, for handlers that are not transactional.
inline PGconn* thread_connection(const std::string& conninfo) {
  thread_local std::unique_ptr<test::PgConn> conn;
  if (!conn || !conn->ok()) conn = std::make_unique<test::PgConn>(conninfo);
  return conn->get();
}

inline void handle(const Child& c, TaskContext& ctx) {
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

inline PostgresStore store_of(const std::string& conninfo, bool async_enqueue = false) {
  PostgresStore store = postgres(conninfo);
  store.async_enqueue = async_enqueue;
  store.lease = kLease;
  store.poll = 100ms;
  return store;
}

inline std::unique_ptr<DurableTasks> open_tasks(Scheduler& s, const Child& c) {
  auto d = std::make_unique<DurableTasks>(s, store_of(c.conninfo, c.async_enqueue));
  const RetryPolicy quick{.max_attempts = kTypeMaxAttempts, .initial_backoff = 1ms, .max_backoff = 8ms};
  const auto handler = [&c](TaskContext& ctx, std::span<const std::byte>) { handle(c, ctx); };
  d->define("plain", handler, {.retry = quick});
  d->define("steps", handler, {.retry = quick});
  d->define("tx", handler, {.retry = quick, .transactional = true});
  d->start();
  return d;
}

// The label and workflow of task `id`, as the database has it ("? 0" once its row is gone).
inline std::string describe(test::PgConn& conn, TaskId id) {
  const auto row = row_of(conn.get(), "SELECT split_part(convert_from(args, 'UTF8'), ' ', 1), coalesce(flow_id, 0) FROM ordo.jobs WHERE id = " +
                                          std::to_string(id));
  return row.empty() ? "? 0" : row[0] + " " + row[1];
}

inline void run_op(const Child& c, std::unique_ptr<DurableTasks>& d, Scheduler& s, test::PgConn& conn, const Op& op,
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
      if (t.via == TaskSpec::many) {  // always committed before it returns, also with async_enqueue
        std::vector<std::string> all_args = {args};
        std::vector<EnqueueOptions> all_options = {o};
        for (const TaskSpec& m : op.batch_mates) {
          all_args.push_back(args_of(m, not_before));  // the same delay: taken before this call too
          EnqueueOptions mo = o;
          if (m.keyed) mo.idempotency_key = m.label;
          all_options.push_back(std::move(mo));
        }
        std::vector<NewTask> batch;
        batch.push_back({t.type, all_args[0], all_options[0]});
        for (std::size_t k = 0; k < op.batch_mates.size(); ++k)
          batch.push_back({op.batch_mates[k].type, all_args[k + 1], all_options[k + 1]});
        const std::vector<TaskId> ids = d->enqueue_many(batch);
        for (std::size_t k = 0; k < ids.size(); ++k) {
          accepted.push_back(ids[k]);
          c.log("acc " + (k == 0 ? t.label : op.batch_mates[k - 1].label) + " " + std::to_string(ids[k]));
        }
        break;
      }
      if (t.via == TaskSpec::enqueue) {
        const TaskId id = d->enqueue(t.type, args, o);
        accepted.push_back(id);
        // Committed later (PostgresStore::async_enqueue): lost if this process dies first.
        const bool later = c.async_enqueue && !t.keyed && t.needs.empty();
        c.log("acc " + t.label + " " + std::to_string(id) + (later ? " async" : ""));
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
      log_fenced(c, *d);
      d.reset();
      c.log("restarted");
      d = open_tasks(s, c);
      break;
  }
}

// A worker: resumes its ops after the last one logged as done, then drains.
[[noreturn]] inline void run_worker(const Program& program, unsigned worker, int boot, const std::string& conninfo,
                             const std::string& log) {
  Child c;
  c.fd = ::open(log.c_str(), O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0644);
  c.tag = "w" + std::to_string(worker) + "b" + std::to_string(boot);
  c.conninfo = conninfo;
  c.async_enqueue = program.async_enqueue[worker];
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
    log_fenced(c, *d);
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
[[noreturn]] inline void run_sweeper(const std::string& conninfo, const std::string& log) {
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

}  // namespace ordo::pg_chaos
