// The durable-task model checker: seeded random programs of enqueues (plain
// tasks, alone or a few at once by enqueue_many, and workflows, under
// idempotency keys, some delayed), handlers that
// fail their first attempts or always, dead-set retries and discards,
// compactions, graceful restarts (shutdown(cancel)) — run by a child process
// that the parent kills with SIGKILL at random points and starts again on the
// same journal until the program has run to its end. Every effect is logged by the child with single O_APPEND
// writes (a killed process cannot tear them); the parent then checks:
//
// - nothing accepted is lost: every task or node whose enqueue returned ends
//   completed, in the dead set, discarded, or behind a discarded node;
// - a key names one task: every run of a label carries the same id;
// - nothing completed runs again, except once its process was killed (the
//   COMPLETE of an attempt cut by the crash may be lost: at least once);
// - a workflow node runs only after each of its predecessors completed;
// - a delayed task never runs before its time;
// - the dead set holds exactly the tasks whose attempts ran out: each with
//   max_attempts attempts, none completed since its last retry; a task that
//   failed max_attempts times is dead or discarded;
// - status by id agrees after each drain: no task scheduled or retrying, each
//   task of that boot completed (key retained) or dead, the dead set and
//   status() alike;
// - a failing program is named by its seed (ORDO_SEED reproduces the
//   programs; the kill points depend on timing too).
//
// Budget: ORDO_CHAOS_SECONDS (15 by default) of programs; each prints its
// totals at the end.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "journal_support.hpp"
#include "ordo/ordo.hpp"
#include "util/clock.hpp"

namespace ordo {
namespace {

using namespace std::chrono_literals;

constexpr unsigned kNodeMaxAttempts = 3;  // the "node" type's
constexpr unsigned kAlwaysFails = 1000;   // fail_first of a task that can only die
constexpr int kRestarted = 10;            // the child's exit code after a graceful restart op

struct TaskSpec {
  std::string label;
  unsigned fail_first = 0;  // attempts 1..fail_first throw
  unsigned max_attempts = kNodeMaxAttempts;
  int delay_ms = 0;
  Priority priority = normal;
};

struct FlowSpec {
  std::string label;
  std::vector<TaskSpec> nodes;
  std::vector<std::vector<std::uint32_t>> after;  // per node: predecessor indices
};

struct Op {
  enum Kind { task, flow, dead_op, compact, pause, restart } kind;
  TaskSpec task_spec;
  // A task op that starts a group: it and the next batch - 1 ops (all tasks)
  // are enqueued by one enqueue_many. 0 inside a group.
  std::size_t batch = 1;
  FlowSpec flow_spec;
  std::uint32_t pick = 0;  // dead_op: which dead task; even: retry, odd: discard
};

struct Program {
  std::vector<Op> ops;
  Durability mode = Durability::async;
};

Program generate(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto below = [&](std::uint64_t n) { return rng() % n; };
  auto failing = [&] {
    const auto r = below(10);
    return r < 5 ? 0u : r < 8 ? static_cast<unsigned>(1 + below(2)) : kAlwaysFails;
  };
  Program p;
  p.mode = std::array{Durability::sync, Durability::async, Durability::none}[below(3)];
  const std::size_t n = 10 + below(40);
  for (std::size_t i = 0; i < n; ++i) {
    Op op{};
    const auto r = below(100);
    const std::string label = "p" + std::to_string(i);
    if (r < 55) {
      const std::size_t group = below(4) == 0 ? 2 + below(3) : 1;
      for (std::size_t g = 0; g < group; ++g) {
        Op t{};
        t.kind = Op::task;
        t.batch = g == 0 ? group : 0;
        t.task_spec = {g == 0 ? label : label + "b" + std::to_string(g), failing(), static_cast<unsigned>(2 + below(3)),
                       below(5) == 0 ? static_cast<int>(below(30)) : 0, Priority{static_cast<std::uint8_t>(below(3))}};
        p.ops.push_back(std::move(t));
      }
      continue;
    } else if (r < 75) {
      op.kind = Op::flow;
      op.flow_spec.label = label;
      const std::size_t nodes = 2 + below(5);
      for (std::size_t k = 0; k < nodes; ++k) {
        op.flow_spec.nodes.push_back({label + "." + std::to_string(k), below(4) == 0 ? failing() : 0u});
        std::vector<std::uint32_t> preds;
        for (std::size_t j = 0; j < k; ++j) {
          if (below(3) == 0) preds.push_back(static_cast<std::uint32_t>(j));
        }
        op.flow_spec.after.push_back(std::move(preds));
      }
    } else if (r < 88) {
      op.kind = Op::dead_op;
      op.pick = static_cast<std::uint32_t>(rng());
    } else if (r < 93) {
      op.kind = Op::compact;
    } else if (r < 97) {
      op.kind = Op::pause;
    } else {
      op.kind = Op::restart;
    }
    p.ops.push_back(std::move(op));
  }
  return p;
}

void log_line(int fd, const std::string& line) {
  const std::string l = line + "\n";
  if (::write(fd, l.data(), l.size()) != static_cast<ssize_t>(l.size())) ::_exit(9);
}

using ordo::detail::wall_now_ns;

// What a handler needs to know of its task: its label, how many attempts
// fail, and the time it must not run before (0: none).
std::string args_of(const TaskSpec& t, std::int64_t not_before_ns = 0) {
  return t.label + " " + std::to_string(t.fail_first) + " " + std::to_string(not_before_ns);
}

// The child: recovers, runs the ops not yet logged as done, drains, then
// discards every dead workflow node (their dependents are cancelled), and
// logs the dead set that is left.
[[noreturn]] void run_child(const Program& program, const std::string& dir, const std::string& log, int boot) {
  const int fd = ::open(log.c_str(), O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0644);
  std::size_t first_op = 0;
  {
    std::ifstream in(log);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("op ", 0) == 0) first_op = std::stoul(line.substr(3)) + 1;
    }
  }
  log_line(fd, "boot " + std::to_string(boot));
  {
    Scheduler s{{.workers = 2}};
    DurableTasks d(s, dir, {.durability = program.mode, .async_interval = 2ms, .segment_bytes = 64 << 10});
    const RetryPolicy quick{.max_attempts = kNodeMaxAttempts, .initial_backoff = 1ms, .max_backoff = 8ms};
    auto handler = [fd](TaskContext& ctx, std::span<const std::byte> args) {
      std::istringstream in(test::text_of(args));
      std::string label;
      unsigned fail_first = 0;
      std::int64_t not_before_ns = 0;
      in >> label >> fail_first >> not_before_ns;
      if (wall_now_ns() < not_before_ns) log_line(fd, "early " + label);
      log_line(fd, "run " + label + " " + std::to_string(ctx.id()) + " " + std::to_string(ctx.attempt()));
      std::this_thread::sleep_for(std::chrono::microseconds(300 * ((label.size() + ctx.attempt()) % 4)));  // overlap: kills land mid-run
      if (ctx.attempt() <= fail_first) {
        log_line(fd, "fail " + label + " " + std::to_string(ctx.attempt()));
        throw std::runtime_error("attempt " + std::to_string(ctx.attempt()) + " fails");
      }
      log_line(fd, "ok " + label + " " + std::to_string(ctx.id()));
    };
    d.define("task", handler, {.retry = quick});
    d.define("node", handler, {.retry = quick});
    d.start();
    std::mt19937 pause_rng(static_cast<unsigned>(boot));
    std::vector<TaskId> accepted;    // tasks enqueued in this boot
    std::set<TaskId> discarded;      // taken out of the dead set in this boot
    for (std::size_t i = first_op; i < program.ops.size(); ++i) {
      const Op& op = program.ops[i];
      switch (op.kind) {
        case Op::task: {
          // A group is one enqueue_many; a lone task one enqueue.
          const std::size_t group = std::max<std::size_t>(1, op.batch);
          std::vector<std::string> args;
          std::vector<EnqueueOptions> options;
          for (std::size_t k = 0; k < group; ++k) {
            const TaskSpec& t = program.ops[i + k].task_spec;
            EnqueueOptions o{.priority = t.priority, .max_attempts = t.max_attempts, .idempotency_key = t.label};
            std::int64_t not_before = 0;
            if (t.delay_ms > 0) {
              o.run_at = std::chrono::system_clock::now() + std::chrono::milliseconds(t.delay_ms);
              not_before = std::chrono::duration_cast<std::chrono::nanoseconds>(o.run_at->time_since_epoch()).count();
            }
            args.push_back(args_of(t, not_before));
            options.push_back(std::move(o));
          }
          std::vector<TaskId> ids;
          if (group == 1) {
            ids.push_back(d.enqueue("task", args[0], options[0]));
          } else {
            std::vector<NewTask> batch;
            for (std::size_t k = 0; k < group; ++k) batch.push_back({"task", args[k], options[k]});
            ids = d.enqueue_many(batch);
          }
          for (std::size_t k = 0; k < group; ++k) {
            accepted.push_back(ids[k]);
            log_line(fd, "acc " + program.ops[i + k].task_spec.label + " " + std::to_string(ids[k]));
          }
          i += group - 1;  // "op" names the group's last: a restart resumes after the whole group
          break;
        }
        case Op::flow: {
          DurableWorkflow wf(op.flow_spec.label);
          for (std::size_t k = 0; k < op.flow_spec.nodes.size(); ++k) {
            std::vector<std::string> after;
            for (std::uint32_t j : op.flow_spec.after[k]) after.push_back(op.flow_spec.nodes[j].label);
            wf.node(op.flow_spec.nodes[k].label, "node", args_of(op.flow_spec.nodes[k]), after);
          }
          log_line(fd, "accflow " + op.flow_spec.label + " " + std::to_string(d.enqueue_workflow(wf, op.flow_spec.label)));
          break;
        }
        case Op::dead_op: {
          const auto dead = d.dead();
          if (dead.empty()) break;
          const TaskId id = dead[op.pick % dead.size()].id;
          const bool retry = op.pick % 2 == 0;
          log_line(fd, std::string(retry ? "retrying " : "discarding ") + std::to_string(id));
          if (!retry) discarded.insert(id);
          static_cast<void>(retry ? d.retry_dead(id) : d.discard_dead(id));
          break;
        }
        case Op::compact:
          d.journal().compact();
          break;
        case Op::pause:
          std::this_thread::sleep_for(std::chrono::milliseconds(pause_rng() % 10));
          break;
        case Op::restart:  // a graceful stop mid-program: running handlers finish, the rest waits in the journal
          log_line(fd, "op " + std::to_string(i));
          d.shutdown(ShutdownMode::cancel);
          log_line(fd, "restart");
          ::_exit(kRestarted);
      }
      log_line(fd, "op " + std::to_string(i));
    }
    d.shutdown(ShutdownMode::drain);
    // Status by id agrees with the drain: nothing waits for a time any more,
    // every task of this boot completed (its key retained) or is dead, and
    // the dead set and status() say the same.
    if (!d.scheduled().empty() || !d.retrying().empty()) log_line(fd, "bad-status scheduled or retrying tasks after a drain");
    for (const DeadTask& dj : d.dead()) {
      if (d.status(dj.id).state != DurableTaskStatus::State::dead)
        log_line(fd, "bad-status dead task " + std::to_string(dj.id) + " is " + to_string(d.status(dj.id).state));
    }
    for (const TaskId id : accepted) {
      const auto state = d.status(id).state;
      if (!discarded.count(id) && state != DurableTaskStatus::State::completed && state != DurableTaskStatus::State::dead)
        log_line(fd, "bad-status task " + std::to_string(id) + " is " + to_string(state) + " after a drain");
    }
    for (const DeadTask& dj : d.dead()) {
      if (dj.type != "node") continue;
      log_line(fd, "discarding " + std::to_string(dj.id));
      d.discard_dead(dj.id);
    }
    for (const DeadTask& dj : d.dead()) log_line(fd, "final-dead " + std::to_string(dj.id) + " " + std::to_string(dj.attempts));
    if (d.stats().workflows != 0) log_line(fd, "unfinished-workflows " + std::to_string(d.stats().workflows));
    log_line(fd, "end");
  }
  ::_exit(0);
}

struct Totals {
  std::uint64_t programs = 0, operations = 0, kills = 0, restarts = 0, runs = 0, tasks = 0;
};

// Reads the child's log and checks every invariant of the header.
void check_log(const Program& program, const std::string& log, const std::set<int>& killed_boots, Totals& totals) {
  struct Label {
    const TaskSpec* spec = nullptr;
    std::string flow;  // the workflow label, for nodes
    std::uint32_t node = 0;
    std::set<TaskId> ids;
    bool accepted = false;
    std::size_t last_ok_line = 0;
    std::size_t last_run_line = 0;
    int last_run_boot = -1;
    bool last_run_ended = false;  // its attempt logged ok or fail (else a kill cut it)
    int last_ok_boot = -1;
    bool ever_ok = false;
    bool ok_since_retry = false;
    unsigned fails_since_retry = 0;
    bool discarding = false;
  };
  std::map<std::string, Label> labels;
  std::map<std::string, const FlowSpec*> flows;
  for (const Op& op : program.ops) {
    if (op.kind == Op::task) labels[op.task_spec.label].spec = &op.task_spec;
    if (op.kind != Op::flow) continue;
    flows[op.flow_spec.label] = &op.flow_spec;
    for (std::uint32_t k = 0; k < op.flow_spec.nodes.size(); ++k) {
      Label& l = labels[op.flow_spec.nodes[k].label];
      l.spec = &op.flow_spec.nodes[k];
      l.flow = op.flow_spec.label;
      l.node = k;
    }
  }
  std::map<TaskId, std::string> label_of;
  std::map<TaskId, unsigned> final_dead;
  bool ended = false;
  int boot = -1;
  std::size_t line_no = 0;
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    std::istringstream f(line);
    std::string what, a;
    f >> what;
    if (what == "boot") {
      f >> boot;
    } else if (what == "op") {
      ++totals.operations;
    } else if (what == "acc") {
      TaskId id = 0;
      f >> a >> id;
      labels[a].accepted = true;
      labels[a].ids.insert(id);
      label_of[id] = a;
    } else if (what == "accflow") {
      TaskId fid = 0;
      f >> a >> fid;
      const FlowSpec& spec = *flows.at(a);
      for (std::uint32_t k = 0; k < spec.nodes.size(); ++k) {
        Label& l = labels[spec.nodes[k].label];
        l.accepted = true;
        l.ids.insert(fid + 1 + k);  // node k's id (enqueue_workflow numbers them so); runs confirm it below
        label_of[fid + 1 + k] = spec.nodes[k].label;
      }
    } else if (what == "run") {
      TaskId id = 0;
      unsigned attempt = 0;
      f >> a >> id >> attempt;
      ++totals.runs;
      Label& l = labels[a];
      l.ids.insert(id);
      l.last_run_line = line_no;
      l.last_run_boot = boot;
      l.last_run_ended = false;
      if (l.ever_ok && l.last_ok_boot == boot) {
        ADD_FAILURE() << a << " ran again after it completed, in the same process (line " << line_no << ")";
      } else if (l.ever_ok && !killed_boots.count(l.last_ok_boot)) {
        ADD_FAILURE() << a << " ran again after it completed in a process that was not killed (line " << line_no << ")";
      }
      if (!l.flow.empty()) {
        const FlowSpec& spec = *flows.at(l.flow);
        for (std::uint32_t p : spec.after[l.node]) {
          EXPECT_TRUE(labels[spec.nodes[p].label].ever_ok)
              << a << " ran before its predecessor " << spec.nodes[p].label << " completed (line " << line_no << ")";
        }
      }
    } else if (what == "fail") {
      f >> a;
      ++labels[a].fails_since_retry;
      labels[a].last_run_ended = true;
    } else if (what == "ok") {
      f >> a;
      Label& l = labels[a];
      l.ever_ok = l.ok_since_retry = true;
      l.last_run_ended = true;
      l.last_ok_line = line_no;
      l.last_ok_boot = boot;
    } else if (what == "retrying" || what == "discarding") {
      TaskId id = 0;
      f >> id;
      ASSERT_TRUE(label_of.count(id)) << what << " task " << id << ", which no enqueue returned";
      Label& l = labels[label_of[id]];
      if (what == "retrying") {
        l.fails_since_retry = 0;
        l.ok_since_retry = false;
      } else {
        l.discarding = true;
      }
    } else if (what == "final-dead") {
      TaskId id = 0;
      unsigned attempts = 0;
      f >> id >> attempts;
      final_dead[id] = attempts;
    } else if (what == "bad-status") {
      ADD_FAILURE() << line << " (line " << line_no << ")";
    } else if (what == "early") {
      ADD_FAILURE() << line << ": ran before its time (line " << line_no << ")";
    } else if (what == "unfinished-workflows") {
      ADD_FAILURE() << line;
    } else if (what == "end") {
      ended = true;
    }
  }
  ASSERT_TRUE(ended) << "the last run did not reach its end";
  // A node is excused from completing when a node it depends on (directly
  // or not) was discarded, or may have been.
  std::function<bool(const std::string&)> behind_discarded = [&](const std::string& name) {
    const Label& l = labels[name];
    if (l.discarding) return true;
    if (l.flow.empty()) return false;
    const FlowSpec& spec = *flows.at(l.flow);
    for (std::uint32_t p : spec.after[l.node]) {
      if (behind_discarded(spec.nodes[p].label)) return true;
    }
    return false;
  };
  for (const auto& [name, l] : labels) {
    if (!l.accepted) continue;
    ++totals.tasks;
    EXPECT_EQ(l.ids.size(), 1u) << name << " has more than one id: its key did not hold, or it was duplicated";
    const TaskId id = *l.ids.begin();
    const bool dead = final_dead.count(id) != 0;
    // In async and none modes a task's runs in the process that enqueued it
    // do not wait for their START: a kill may leave one of them uncounted
    // (docs/durability.md).
    const unsigned uncounted = program.mode == Durability::sync || killed_boots.empty() ? 0 : 1;
    if (dead) {
      EXPECT_EQ(final_dead[id], l.spec->max_attempts) << name << " is dead after a number of attempts other than its maximum";
      // Completed since its last retry, yet dead: only when its last
      // attempt died with its process — cut while it ran, or completed but
      // its COMPLETE lost — which counts it as an attempt cut short.
      const bool last_attempt_cut = killed_boots.count(l.last_run_boot) && (!l.last_run_ended || l.last_run_line < l.last_ok_line);
      EXPECT_TRUE(!l.ok_since_retry || last_attempt_cut) << name << " is dead but completed since its last retry";
      EXPECT_LE(l.fails_since_retry, l.spec->max_attempts + uncounted) << name;
    } else if (!l.ever_ok) {
      EXPECT_TRUE(behind_discarded(name)) << "accepted " << name << " (id " << id << ") never completed and is not dead: lost";
    }
    if (l.fails_since_retry >= l.spec->max_attempts + uncounted) {
      EXPECT_TRUE(dead || l.discarding) << name << " failed " << l.fails_since_retry << " times yet is not dead";
    }
  }
}

void run_program(std::uint64_t seed, Totals& totals) {
  const Program program = generate(seed);
  test::ScratchDir dir;
  const std::string journal = dir.file("journal");
  const std::string log = dir.file("effects.log");
  std::mt19937_64 rng(seed ^ 0x5eed);
  const int kills_wanted = static_cast<int>(1 + rng() % 6);
  std::set<int> killed_boots;
  bool finished = false;
  for (int boot = 0; !finished; ++boot) {
    ASSERT_LT(boot, 500) << "the program never finished: 500 boots (a restart loop)";
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) run_child(program, journal, log, boot);
    const bool kill_it = boot < kills_wanted;
    const auto deadline = std::chrono::steady_clock::now() +
                          (kill_it ? std::chrono::milliseconds(1 + rng() % 30) : std::chrono::milliseconds(60'000));
    int status = 0;
    pid_t done = 0;
    while ((done = ::waitpid(child, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(1ms);
    }
    if (done == 0) {
      ::kill(child, SIGKILL);
      ::waitpid(child, &status, 0);
      ASSERT_TRUE(kill_it) << "the last run did not finish within 60 s: a hang";
      killed_boots.insert(boot);
      ++totals.kills;
      continue;
    }
    ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status) << " in boot " << boot;
    if (WEXITSTATUS(status) == kRestarted) {
      ++totals.restarts;
      continue;
    }
    ASSERT_EQ(WEXITSTATUS(status), 0) << "the child failed in boot " << boot;
    finished = true;
  }
  check_log(program, log, killed_boots, totals);
  ++totals.programs;
  if (::testing::Test::HasFailure()) {  // keep the evidence: the scratch directory goes
    const std::string kept = "/tmp/ordo-chaos-" + std::to_string(seed) + ".log";
    std::filesystem::copy_file(log, kept, std::filesystem::copy_options::overwrite_existing);
    std::printf("durable chaos: the failing program's log is %s\n", kept.c_str());
  }
}

TEST(DurableChaos, RandomProgramsKilledAtRandomPointsKeepEveryGuarantee) {
  std::uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("ORDO_SEED")) seed = std::stoull(s);
  double budget_s = 15;
  if (const char* s = std::getenv("ORDO_CHAOS_SECONDS")) budget_s = std::stod(s);
  std::printf("durable chaos: ORDO_SEED=%llu, budget %.0f s\n", static_cast<unsigned long long>(seed), budget_s);
  std::fflush(stdout);  // before any fork: a child must not inherit (and repeat) buffered output
  std::mt19937_64 seeds(seed);
  Totals totals;
  const auto start = std::chrono::steady_clock::now();
  const auto budget = std::chrono::duration<double>(budget_s);
  const char* only = std::getenv("ORDO_CHAOS_PROGRAM");  // one program seed, as a failure names it
  while (std::chrono::steady_clock::now() - start < budget) {
    const std::uint64_t program_seed = only != nullptr ? std::stoull(only) : seeds();
    SCOPED_TRACE("ORDO_SEED=" + std::to_string(seed) + ", program " + std::to_string(totals.programs) +
                 " (program seed " + std::to_string(program_seed) + ")");
    run_program(program_seed, totals);
    if (HasFailure()) break;
  }
  std::printf("durable chaos: %llu programs, %llu operations, %llu accepted tasks and nodes, %llu handler runs, "
              "%llu kills, %llu graceful restarts in %.1f s\n",
              static_cast<unsigned long long>(totals.programs), static_cast<unsigned long long>(totals.operations),
              static_cast<unsigned long long>(totals.tasks), static_cast<unsigned long long>(totals.runs),
              static_cast<unsigned long long>(totals.kills), static_cast<unsigned long long>(totals.restarts),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  EXPECT_GT(totals.programs, 0u);
}

}  // namespace
}  // namespace ordo
