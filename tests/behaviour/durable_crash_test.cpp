// The crash harness: a child process runs a durable workload (plain tasks,
// retried tasks, delayed tasks, checkpointed tasks, all enqueued under
// idempotency keys) and is killed with SIGKILL at seeded random points; the
// parent starts it again on the same journal until it finishes. Handlers
// write their effects to a log with single O_APPEND writes, which a killed
// process cannot tear, and the parent checks that log at the end.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "journal_support.hpp"
#include "test_support.hpp"
#include "ordo/ordo.hpp"

namespace ordo {
namespace {

constexpr int kPlain = 40, kFlaky = 10, kItems = 10, kItemsPerTask = 20;

void log_effect(int fd, const std::string& line) {
  const std::string l = line + "\n";
  if (::write(fd, l.data(), l.size()) != static_cast<ssize_t>(l.size())) ::_exit(9);
}

// The child's whole life: recover, (re-)enqueue everything under keys, drain.
[[noreturn]] void run_workload(const std::string& dir, const std::string& effects) {
  const int fd = ::open(effects.c_str(), O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0644);
  {
    Scheduler s{{.workers = 2}};
    DurableTasks d(s, dir, {.durability = Durability::async, .async_interval = std::chrono::milliseconds(2)});
    auto pause = [] { std::this_thread::sleep_for(std::chrono::milliseconds(2)); };
    d.define("plain", [&](TaskContext& ctx, std::span<const std::byte> args) {
      pause();
      log_effect(fd, "done " + test::text_of(args) + " " + std::to_string(ctx.id()));
    }, {.retry = {.max_attempts = 1000}});  // each kill mid-run costs an attempt
    d.define("flaky", [&](TaskContext& ctx, std::span<const std::byte> args) {
      pause();
      if (ctx.attempt() == 1) throw std::runtime_error("first attempts fail");
      log_effect(fd, "done " + test::text_of(args) + " " + std::to_string(ctx.id()));
    }, {.retry = {.max_attempts = 1000, .initial_backoff = std::chrono::milliseconds(3)}});
    d.define("items", [&](TaskContext& ctx, std::span<const std::byte> args) {
      const std::string k = test::text_of(args);
      for (int i = ctx.resume_from<int>(0); i < kItemsPerTask; ++i) {
        pause();
        log_effect(fd, "item " + k + " " + std::to_string(i) + " " + std::to_string(ctx.id()));
        ctx.checkpoint(i + 1);
        log_effect(fd, "ckpt " + k + " " + std::to_string(i + 1));
      }
      log_effect(fd, "done " + k + " " + std::to_string(ctx.id()));
    }, {.retry = {.max_attempts = 1000}});
    d.define("wnode", [&](TaskContext&, std::span<const std::byte> args) {
      log_effect(fd, "wrun " + test::text_of(args));
      pause();
      log_effect(fd, "wdone " + test::text_of(args));
    }, {.retry = {.max_attempts = 1000}});
    d.start();
    DurableWorkflow flow("diamond");
    flow.node("w0", "wnode", "w0")
        .node("w1", "wnode", "w1", {"w0"})
        .node("w2", "wnode", "w2", {"w0"})
        .node("w3", "wnode", "w3", {"w1", "w2"});
    d.enqueue_workflow(flow, "the-diamond");
    int k = 0;
    for (int i = 0; i < kPlain; ++i, ++k) {
      EnqueueOptions o{.idempotency_key = "task-" + std::to_string(k)};
      if (i % 8 == 0) o.delay = std::chrono::milliseconds(20);
      d.enqueue("plain", std::to_string(k), o);
    }
    for (int i = 0; i < kFlaky; ++i, ++k) d.enqueue("flaky", std::to_string(k), {.idempotency_key = "task-" + std::to_string(k)});
    for (int i = 0; i < kItems; ++i, ++k) d.enqueue("items", std::to_string(k), {.idempotency_key = "task-" + std::to_string(k)});
    d.shutdown(ShutdownMode::drain);
  }
  ::_exit(0);
}

// One full workload, killed at points drawn from `seed`, run to the end.
void crash_until_done(unsigned seed) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  test::ScratchDir dir;
  const std::string journal = dir.file("journal");
  const std::string effects = dir.file("effects.log");
  std::mt19937 rng(seed);
  int kills = 0;
  bool finished = false;
  for (int round = 0; round < 60 && !finished; ++round) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) run_workload(journal, effects);
    const bool last_chance = round >= 40;  // from here on, let it finish
    if (!last_chance) {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(5, 80)(rng)));
      ::kill(child, SIGKILL);
    }
    int status = 0;
    ASSERT_TRUE(test::wait_child_within(child, std::chrono::seconds(60), status)) << "the child hung";
    if (WIFEXITED(status)) {
      ASSERT_EQ(WEXITSTATUS(status), 0) << "the workload failed in round " << round;
      finished = true;
    } else {
      ++kills;
    }
  }
  ASSERT_TRUE(finished);
  EXPECT_GT(kills, 3) << "the harness never interrupted the workload";

  std::ifstream in(effects);
  std::map<std::string, std::set<std::string>> ids_per_key;  // task key -> job ids that had effects
  std::map<std::string, int> checkpointed;                   // items task -> highest durable checkpoint seen
  std::map<std::string, std::set<int>> items_done;
  std::map<std::string, std::vector<std::size_t>> wrun, wdone;  // workflow node -> line numbers
  std::size_t line_no = 0;
  std::set<std::string> done;
  std::string line;
  while (std::getline(in, line)) {
    ++line_no;
    std::istringstream f(line);
    std::string what, k;
    f >> what >> k;
    if (what == "wrun") wrun[k].push_back(line_no);
    if (what == "wdone") wdone[k].push_back(line_no);
    if (what == "done") {
      std::string id;
      f >> id;
      done.insert(k);
      ids_per_key[k].insert(id);
    } else if (what == "item") {
      int i = 0;
      std::string id;
      f >> i >> id;
      ids_per_key[k].insert(id);
      items_done[k].insert(i);
      EXPECT_GE(i, checkpointed[k]) << "item " << i << " of task " << k << " was redone after its checkpoint";
    } else if (what == "ckpt") {
      int c = 0;
      f >> c;
      checkpointed[k] = std::max(checkpointed[k], c);
    }
  }
  for (int k = 0; k < kPlain + kFlaky + kItems; ++k) {
    const std::string key = std::to_string(k);
    EXPECT_TRUE(done.count(key)) << "accepted task " << k << " never completed (lost)";
    EXPECT_EQ(ids_per_key[key].size(), 1u) << "key task-" << k << " created more than one task (duplicated)";
  }
  // The workflow: every node finished, and no node ran after a successor finished.
  const std::pair<const char*, const char*> edges[] = {{"w0", "w1"}, {"w0", "w2"}, {"w1", "w3"}, {"w2", "w3"}};
  for (const char* node : {"w0", "w1", "w2", "w3"}) EXPECT_FALSE(wdone[node].empty()) << "workflow node " << node << " lost";
  for (auto [pred, succ] : edges) {
    if (wdone[succ].empty()) continue;
    for (std::size_t run : wrun[pred]) {
      EXPECT_LT(run, wdone[succ].front()) << pred << " ran after its successor " << succ << " finished";
    }
  }
  for (int k = kPlain + kFlaky; k < kPlain + kFlaky + kItems; ++k) {
    EXPECT_EQ(items_done[std::to_string(k)].size(), static_cast<std::size_t>(kItemsPerTask)) << "task " << k;
  }
}

TEST(DurableCrash, KilledAtRandomPointsNothingIsLostOrDuplicated) {
  for (unsigned seed = 1; seed <= 6; ++seed) crash_until_done(seed);
}

// A poison pill: a handler that kills the process the moment it starts.
// Its attempts must be on record before the handler runs, so that after
// max_attempts crashed starts the task is dead instead of running (and
// crashing) for ever. In sync mode every START is written first; in async
// and none modes only those of a recovered task, so the very first run, in
// the process that enqueued it, may go uncounted: one extra crash at most.
TEST(DurableCrash, AHandlerThatKillsTheProcessAtOnceEndsInTheDeadSetAfterMaxAttempts) {
  constexpr unsigned kMaxAttempts = 3;
  constexpr int kCrashed = 7, kDeadAsExpected = 0, kNotDead = 3;
  for (Durability mode : {Durability::sync, Durability::async, Durability::none}) {
    SCOPED_TRACE(std::string("mode ") + to_string(mode));
    test::ScratchDir dir;
    int crashes = 0;
    bool dead = false;
    for (int round = 0; round < 3 * static_cast<int>(kMaxAttempts) && !dead; ++round) {
      const pid_t child = ::fork();
      ASSERT_GE(child, 0);
      if (child == 0) {
        Scheduler s{{.workers = 2}};
        DurableTasks d(s, dir.path(), {.durability = mode});
        d.define("poison", [](TaskContext&, std::span<const std::byte>) { ::_exit(kCrashed); },
                 {.retry = {.max_attempts = kMaxAttempts}});
        d.start();
        d.enqueue("poison", "", {.idempotency_key = "the-pill"});  // the same task every round
        d.shutdown();  // drains unless the pill runs (and exits)
        const auto dead_set = d.dead();
        ::_exit(dead_set.size() == 1 && dead_set[0].attempts == kMaxAttempts ? kDeadAsExpected : kNotDead);
      }
      int status = 0;
      ASSERT_TRUE(test::wait_child_within(child, std::chrono::seconds(60), status)) << "round " << round << ": the child hung";
      ASSERT_TRUE(WIFEXITED(status)) << "round " << round;
      if (WEXITSTATUS(status) == kCrashed) {
        ++crashes;
      } else {
        ASSERT_EQ(WEXITSTATUS(status), kDeadAsExpected) << "round " << round << ": the pill was not in the dead set";
        dead = true;
      }
    }
    EXPECT_TRUE(dead) << "still crash-looping after " << crashes << " crashed starts";
    if (mode == Durability::sync) {
      EXPECT_EQ(crashes, static_cast<int>(kMaxAttempts)) << "the pill ran more often than max_attempts";
    } else {
      EXPECT_GE(crashes, static_cast<int>(kMaxAttempts));
      EXPECT_LE(crashes, static_cast<int>(kMaxAttempts) + 1) << "more than one uncounted run of the pill";
    }
  }
}

}  // namespace
}  // namespace ordo
