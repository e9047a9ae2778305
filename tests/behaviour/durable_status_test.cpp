// Durable tasks seen from outside: status by id in every state, the lists of
// scheduled and retrying tasks beside the dead set (also after a restart and
// after a crash), a timed shutdown, arguments read as text.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>

#include "journal_support.hpp"
#include "ordo/ordo.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using namespace std::chrono_literals;
using test::ScratchDir;
using State = DurableTaskStatus::State;

const JournalOptions kFast{.durability = Durability::none};

// Waits for `condition` at most 20 s; false if it never held.
bool eventually(const std::function<bool()>& condition) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Every type the tests use; "hold" blocks its worker on `gate`.
void define_all(DurableTasks& d, test::Gate& gate) {
  auto nothing = [](TaskContext&, std::span<const std::byte>) {};
  d.define("hold", [&gate](TaskContext&, std::span<const std::byte>) { gate.hold(); });
  d.define("plain", nothing);
  d.define("flaky", [](TaskContext&, std::span<const std::byte>) { throw std::runtime_error("flaky failed"); },
           {.retry = {.max_attempts = 2, .initial_backoff = 1h, .max_backoff = 1h, .jitter = 0}});
  d.define("doomed", [](TaskContext&, std::span<const std::byte>) { throw std::runtime_error("doomed failed"); },
           {.retry = {.max_attempts = 1}});
}

struct Ids {
  TaskId flaky = 0, doomed = 0, keyed = 0, plain = 0, queued = 0, delayed = 0, workflow = 0;
};

void expect_states(const DurableTasks& d, const Ids& ids, std::chrono::system_clock::time_point delayed_at,
                   const char* when) {
  SCOPED_TRACE(when);
  const DurableTaskStatus flaky = d.status(ids.flaky);
  EXPECT_EQ(flaky.state, State::retrying) << to_string(flaky.state);
  EXPECT_EQ(flaky.type, "flaky");
  EXPECT_EQ(flaky.attempts, 1u);
  EXPECT_EQ(flaky.last_error, "flaky failed");
  ASSERT_TRUE(flaky.run_at.has_value());
  EXPECT_GT(*flaky.run_at, std::chrono::system_clock::now() + 50min);  // the 1 h backoff

  const DurableTaskStatus doomed = d.status(ids.doomed);
  EXPECT_EQ(doomed.state, State::dead) << to_string(doomed.state);
  EXPECT_EQ(doomed.last_error, "doomed failed");

  const DurableTaskStatus keyed = d.status(ids.keyed);
  EXPECT_EQ(keyed.state, State::completed) << to_string(keyed.state);
  ASSERT_TRUE(keyed.key_retained_until.has_value());
  EXPECT_GT(*keyed.key_retained_until, std::chrono::system_clock::now() + 23h);

  EXPECT_EQ(d.status(ids.plain).state, State::unknown) << "completed without a key: nothing retains it";
  EXPECT_EQ(d.status(ids.delayed + 1000).state, State::unknown);

  const DurableTaskStatus queued = d.status(ids.queued);
  EXPECT_EQ(queued.state, State::queued) << to_string(queued.state);
  EXPECT_EQ(queued.type, "plain");

  const DurableTaskStatus delayed = d.status(ids.delayed);
  EXPECT_EQ(delayed.state, State::scheduled) << to_string(delayed.state);
  ASSERT_TRUE(delayed.run_at.has_value());
  EXPECT_EQ(*delayed.run_at, delayed_at);

  // A workflow's nodes take the ids after the workflow's own: b waits for a.
  EXPECT_EQ(d.status(ids.workflow + 1).state, State::queued);
  EXPECT_EQ(d.status(ids.workflow + 2).state, State::blocked);

  const auto scheduled = d.scheduled();
  ASSERT_EQ(scheduled.size(), 1u);
  EXPECT_EQ(scheduled[0].id, ids.delayed);
  const auto retrying = d.retrying();
  ASSERT_EQ(retrying.size(), 1u);
  EXPECT_EQ(retrying[0].id, ids.flaky);
  EXPECT_EQ(retrying[0].attempts, 1u);
  const auto dead = d.dead();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].id, ids.doomed);
}

TEST(DurableStatus, StatusByIdSaysEveryStateAndTheListsAgreeAlsoAfterARestart) {
  ScratchDir dir;
  Ids ids;
  const auto delayed_at = std::chrono::system_clock::now() + 2h;
  {
    Scheduler s{{.workers = 1}};
    test::Gate gate;
    DurableTasks d(s, dir.path(), kFast);
    define_all(d, gate);
    d.start();
    ids.flaky = d.enqueue("flaky", "");
    ids.doomed = d.enqueue("doomed", "");
    ids.keyed = d.enqueue("plain", "", {.idempotency_key = "order:1"});
    ids.plain = d.enqueue("plain", "");
    ASSERT_TRUE(eventually([&] { return d.status(ids.flaky).state == State::retrying; }))
        << to_string(d.status(ids.flaky).state);
    ASSERT_TRUE(eventually([&] { return d.status(ids.doomed).state == State::dead; }));
    ASSERT_TRUE(eventually([&] { return d.stats().completed == 2; }));
    const TaskId held = d.enqueue("hold", "");
    gate.wait_entered();  // the only worker is held: what follows stays queued
    const DurableTaskStatus running = d.status(held);
    EXPECT_EQ(running.state, State::running) << to_string(running.state);
    EXPECT_EQ(running.attempts, 1u);
    ids.queued = d.enqueue("plain", "");
    ids.delayed = d.enqueue("plain", "", {.run_at = delayed_at});
    ids.workflow = d.enqueue_workflow(DurableWorkflow("w").node("a", "plain").node("b", "plain", "", {"a"}));
    expect_states(d, ids, delayed_at, "in the process that enqueued them");
    std::thread opener([&] {
      test::await([&] { return !d.stats().accepting; }, "!d.stats().accepting");
      gate.open = true;
    });
    d.shutdown(ShutdownMode::cancel);  // the queued ones stay in the journal
    opener.join();
  }
  Scheduler s{{.workers = 1}};
  test::Gate plain_gate;  // holds the only worker, so that start() leaves the queued tasks queued
  s.post([&] { plain_gate.hold(); });
  plain_gate.wait_entered();
  test::Gate unused;
  DurableTasks d(s, dir.path(), kFast);
  define_all(d, unused);
  d.start();
  expect_states(d, ids, delayed_at, "after a restart");
  plain_gate.open = true;
  d.shutdown(ShutdownMode::cancel);
}

// A process killed while a handler runs leaves a task whose last record is
// its START: before start() it reads as running (the attempt that was cut
// short), after start() as queued again, its attempt counted.
TEST(DurableStatus, ATaskInterruptedByACrashIsRunningBeforeStartAndQueuedAfter) {
  ScratchDir dir;
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), {.durability = Durability::sync});  // every START written before its handler
    d.define("dies", [](TaskContext&, std::span<const std::byte>) { std::raise(SIGKILL); });
    d.start();
    d.enqueue("dies", "");
    std::this_thread::sleep_for(20s);  // the handler kills the process long before
    ::_exit(1);
  }
  int status = 0;
  ASSERT_TRUE(test::wait_child_within(child, std::chrono::seconds(20), status)) << "the child never died";
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  Scheduler s{{.workers = 1}};
  test::Gate gate;
  s.post([&] { gate.hold(); });
  gate.wait_entered();
  DurableTasks d(s, dir.path(), kFast);
  d.define("dies", [](TaskContext&, std::span<const std::byte>) {});
  const DurableTaskStatus before = d.status(1);
  EXPECT_EQ(before.state, State::running) << to_string(before.state);
  EXPECT_EQ(before.type, "dies");
  EXPECT_EQ(before.attempts, 1u);
  EXPECT_EQ(d.start().interrupted, 1u);
  const DurableTaskStatus after = d.status(1);
  EXPECT_EQ(after.state, State::queued) << to_string(after.state);
  EXPECT_EQ(after.attempts, 1u);
  gate.open = true;
  d.shutdown();
  EXPECT_EQ(d.status(1).state, State::unknown);  // completed, no key
}

TEST(DurableStatus, ShutdownForGivesUpAtItsDeadlineLeavingTheShutdownBegunAndConsistent) {
  ScratchDir dir;
  Scheduler s{{.workers = 2}};
  test::Gate gate;
  std::atomic<int> ran{0};
  DurableTasks d(s, dir.path(), kFast);
  d.define("hold", [&](TaskContext&, std::span<const std::byte>) { gate.hold(); ++ran; });
  d.define("plain", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
  d.start();
  d.enqueue("hold", "");
  gate.wait_entered();
  const auto began = std::chrono::steady_clock::now();
  EXPECT_FALSE(d.shutdown_for(50ms)) << "returned true while a task still ran";
  EXPECT_GE(std::chrono::steady_clock::now() - began, 50ms);
  EXPECT_FALSE(d.stats().accepting);
  EXPECT_THROW(d.enqueue("plain", ""), Error);  // the shutdown has begun
  EXPECT_EQ(d.stats().live, 1u);                // nothing lost, nothing half-done
  gate.open = true;
  EXPECT_TRUE(d.shutdown_for(20s)) << "the drain did not finish once the task could";
  EXPECT_EQ(ran.load(), 1);
  EXPECT_EQ(d.stats().live, 0u);
  EXPECT_TRUE(d.shutdown_for(0ms)) << "a finished shutdown is done at once";
  EXPECT_EQ(Journal::read(dir.path(), {}).live_tasks, 0u);
}

TEST(DurableStatus, AHandlerReadsItsArgumentsAsTextWithoutACast) {
  ScratchDir dir;
  Scheduler s{{.workers = 1}};
  std::string seen;
  DurableTasks d(s, dir.path(), kFast);
  d.define("greet", [&](TaskContext& ctx, std::span<const std::byte>) { seen = std::string(ctx.args_text()); });
  d.start();
  d.enqueue("greet", std::string_view("hello\0world", 11));
  d.shutdown();
  EXPECT_EQ(seen, std::string("hello\0world", 11));
}

}  // namespace
}  // namespace ordo
