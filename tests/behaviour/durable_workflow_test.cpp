// Durable workflows: dependency order, validation, resuming after a crash,
// idempotency keys, and what discarding a dead node does to its workflow.
// Plain durable tasks are durable_test.cpp; the crash harness is
// durable_crash_test.cpp.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "journal_support.hpp"
#include "ordo/ordo.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using namespace std::chrono_literals;
using test::ScratchDir;

const JournalOptions kFast{.durability = Durability::none};

// Waits up to 10 s for `done`; false if it never held.
template <class Pred>
bool within_10s(Pred done) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

TEST(DurableWorkflow, NodesRunInDependencyOrderAndTheWorkflowCompletes) {
  ScratchDir dir;
  Scheduler s{{.workers = 2}};
  std::mutex mu;
  std::vector<std::string> order;
  DurableTasks d(s, dir.path(), kFast);
  d.define("step", [&](TaskContext&, std::span<const std::byte> args) {
    std::lock_guard lock(mu);
    order.push_back(test::text_of(args));
  });
  d.start();
  DurableWorkflow wf("etl");
  wf.node("extract", "step", "extract")
      .node("clean", "step", "clean", {"extract"})
      .node("enrich", "step", "enrich", {"extract"})
      .node("load", "step", "load", {"clean", "enrich"});
  const TaskId id = d.enqueue_workflow(wf, "etl:2026-11-26");
  EXPECT_EQ(d.enqueue_workflow(wf, "etl:2026-11-26"), id);  // the key deduplicates
  d.shutdown();
  ASSERT_EQ(order.size(), 4u);
  EXPECT_EQ(order.front(), "extract");
  EXPECT_EQ(order.back(), "load");
  EXPECT_EQ(d.stats().workflows, 0u);
  EXPECT_EQ(Journal::read(dir.path(), {}).live_tasks, 0u);
}

TEST(DurableWorkflow, ACycleOrAnUnknownNameIsRejectedBeforeAnythingIsJournaled) {
  ScratchDir dir;
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("step", [](TaskContext&, std::span<const std::byte>) {});
  d.start();
  DurableWorkflow cyclic("loop");
  cyclic.node("a", "step", "", {"c"}).node("b", "step", "", {"a"}).node("c", "step", "", {"b"});
  try {
    d.enqueue_workflow(cyclic);
    FAIL() << "expected InvalidGraph";
  } catch (const InvalidGraph& e) {
    EXPECT_NE(std::string(e.what()).find("cycle"), std::string::npos) << e.what();
  }
  DurableWorkflow unknown("typo");
  unknown.node("a", "step").node("b", "step", "", {"aa"});
  EXPECT_THROW(d.enqueue_workflow(unknown), InvalidGraph);
  DurableWorkflow untyped("untyped");
  untyped.node("a", "no_such_type");
  EXPECT_THROW(d.enqueue_workflow(untyped), InvalidArgument);
  d.shutdown();
  EXPECT_EQ(Journal::read(dir.path(), {}).records, 0u);
}

// A child runs a -> b -> c; b compacts the journal and then kills the
// process on its first attempt. The restart must not run a again, must
// retry b, and must run c after it.
TEST(DurableWorkflow, AfterACrashItResumesMidwayWithoutRerunningFinishedNodes) {
  ScratchDir dir;
  const std::string journal = dir.file("journal");
  const std::string effects = dir.file("effects");
  auto define = [&](DurableTasks& d, bool crash) {
    d.define("step", [&, crash](TaskContext& ctx, std::span<const std::byte> args) {
      const std::string line = test::text_of(args) + " attempt " + std::to_string(ctx.attempt()) + "\n";
      FILE* f = std::fopen(effects.c_str(), "a");
      std::fputs(line.c_str(), f);
      std::fclose(f);
      if (crash && test::text_of(args) == "b") {
        d.journal().compact();  // a's records are folded away: "done" must survive that
        ::kill(::getpid(), SIGKILL);
      }
    }, {.retry = {.max_attempts = 5}});
  };
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, journal, {.durability = Durability::sync});
    define(d, true);
    d.start();
    DurableWorkflow wf("chain");
    wf.node("a", "step", "a").node("b", "step", "b", {"a"}).node("c", "step", "c", {"b"});
    d.enqueue_workflow(wf);
    d.shutdown();
    ::_exit(3);  // not reached: b kills the process
  }
  int status = 0;
  ASSERT_TRUE(test::wait_child_within(child, std::chrono::seconds(60), status)) << "the child hung";
  ASSERT_TRUE(WIFSIGNALED(status)) << "the child was meant to die in b";
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, journal, {.durability = Durability::sync});
    define(d, false);
    const DurableRecovery r = d.start();
    EXPECT_EQ(r.workflows, 1u);
    EXPECT_EQ(r.interrupted, 1u);
    d.shutdown();
    EXPECT_EQ(d.stats().workflows, 0u);
  }
  std::ifstream in(effects);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  EXPECT_EQ(lines, (std::vector<std::string>{"a attempt 1", "b attempt 1", "b attempt 2", "c attempt 1"}));
}

TEST(DurableWorkflow, AWorkflowWhoseCommitRecordWasLostIsDroppedAndItsKeyIsFree) {
  ScratchDir dir;
  test::Gate gate;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("block", [&](TaskContext&, std::span<const std::byte>) { gate.hold(); });
    d.define("step", [](TaskContext&, std::span<const std::byte>) { FAIL() << "a node ran in the first process"; });
    d.start();
    d.enqueue("block", "");
    gate.wait_entered();  // the only worker is busy: the nodes stay queued
    DurableWorkflow wf("w");
    wf.node("a", "step").node("b", "step", "", {"a"});
    d.enqueue_workflow(wf, "wf-key");
    std::thread opener([&] {
      test::await([&] { return !d.stats().accepting; }, "!d.stats().accepting");
      gate.open = true;
    });
    d.shutdown(ShutdownMode::cancel);
    opener.join();
  }
  // Cut the journal just before the WORKFLOW record, as a crash inside
  // enqueue_workflow would have left it.
  std::uint64_t segment = 0, offset = 0;
  Journal::read(dir.path(), [&](const RecordView& r) {
    if (r.type == RecordType::workflow) {
      segment = r.segment;
      offset = r.offset;
    }
  });
  ASSERT_NE(segment, 0u);
  std::filesystem::resize_file(dir.file(test::segment_name(segment)), offset);
  std::atomic<int> ran{0};
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("block", [](TaskContext&, std::span<const std::byte>) {});
  d.define("step", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
  const DurableRecovery r = d.start();
  EXPECT_EQ(r.workflows, 0u);
  EXPECT_EQ(r.requeued, 1u);  // the blocker (its COMPLETE followed the cut); not the two nodes, never accepted
  DurableWorkflow wf("w");
  wf.node("a", "step").node("b", "step", "", {"a"});
  d.enqueue_workflow(wf, "wf-key");  // not deduplicated against the lost one
  d.shutdown();
  EXPECT_EQ(ran.load(), 2);
}


TEST(DurableWorkflow, AWorkflowKeyWhoseRetentionRanOutBeforeARestartIsFreeAfterIt) {
  ScratchDir dir;
  std::atomic<int> ran{0};
  const DurableOptions expires_at_once{.key_retention = std::chrono::seconds(0)};
  DurableWorkflow wf("pair");
  wf.node("a", "step").node("b", "step", "", {"a"});
  TaskId first = 0;
  {
    Scheduler s{{.workers = 2}};
    DurableTasks d(s, dir.path(), kFast, expires_at_once);
    d.define("step", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
    d.start();
    first = d.enqueue_workflow(wf, "nightly:1");
    d.shutdown();
    ASSERT_EQ(ran.load(), 2);
  }
  Scheduler s{{.workers = 2}};
  DurableTasks d(s, dir.path(), kFast, expires_at_once);
  d.define("step", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
  EXPECT_EQ(d.start().keys, 0u) << "a workflow key past its retention was remembered";
  EXPECT_NE(d.enqueue_workflow(wf, "nightly:1"), first) << "the finished workflow came back for an expired key";
  d.shutdown();
  EXPECT_EQ(ran.load(), 4);
}

// Discarding a dead node resolves its workflow as failed: the nodes that
// depend on it (directly or not) are cancelled, independent nodes still
// run, and the workflow ends — in this process and, the same, after a
// restart (also once compaction folded the records away).
TEST(DurableWorkflow, DiscardingADeadNodeCancelsItsSuccessorsAndEndsTheWorkflow) {
  ScratchDir dir;
  std::mutex mu;
  std::multiset<std::string> ran;
  auto define = [&](DurableTasks& d) {
    d.define("fails", [](TaskContext&, std::span<const std::byte>) { throw std::runtime_error("broken"); },
             {.retry = {.max_attempts = 1}});
    d.define("step", [&](TaskContext&, std::span<const std::byte> args) {
      std::lock_guard lock(mu);
      ran.insert(test::text_of(args));
    });
  };
  auto ran_now = [&] {
    std::lock_guard lock(mu);
    return ran;
  };
  {
    Scheduler s{{.workers = 2}};
    DurableTasks d(s, dir.path(), kFast);
    define(d);
    d.start();
    DurableWorkflow wf("w");
    wf.node("a", "fails")
        .node("b", "step", "b", {"a"})
        .node("c", "step", "c", {"b"})
        .node("x", "step", "x")
        .node("y", "step", "y", {"x"});
    d.enqueue_workflow(wf, "w-key");
    ASSERT_TRUE(within_10s([&] { return d.dead().size() == 1 && ran_now().count("y") == 1; }));
    ASSERT_TRUE(d.discard_dead(d.dead()[0].id));
    EXPECT_TRUE(within_10s([&] { return d.stats().workflows == 0; }))
        << "the workflow never ended after its dead node was discarded";
    d.shutdown();
    EXPECT_EQ(d.stats().live, 0u);
    d.journal().compact();
  }
  EXPECT_EQ(ran_now(), (std::multiset<std::string>{"x", "y"}));
  EXPECT_EQ(Journal::read(dir.path(), {}).live_tasks, 0u);
  Scheduler s{{.workers = 2}};
  DurableTasks d(s, dir.path(), kFast);
  define(d);
  EXPECT_EQ(d.start().workflows, 0u);
  DurableWorkflow again("w");
  again.node("b", "step", "b2");
  d.enqueue_workflow(again, "w-key");  // a discarded workflow's key is free, as a discarded task's is
  d.shutdown();
  EXPECT_EQ(ran_now(), (std::multiset<std::string>{"x", "y", "b2"}));
}

// The discard made while no process ran (ordo-wal dead discard appends a
// CANCEL for the node): the next start must not count the node as done.
TEST(DurableWorkflow, ANodeDiscardedWhileNoProcessRanStillHoldsItsSuccessorsAfterARestart) {
  ScratchDir dir;
  std::atomic<int> successors_ran{0};
  auto define = [&](DurableTasks& d) {
    d.define("fails", [](TaskContext&, std::span<const std::byte>) { throw std::runtime_error("broken"); },
             {.retry = {.max_attempts = 1}});
    d.define("step", [&](TaskContext&, std::span<const std::byte>) { ++successors_ran; });
  };
  TaskId dead_node = 0;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    define(d);
    d.start();
    DurableWorkflow wf("w");
    wf.node("a", "fails").node("b", "step", "", {"a"}).node("c", "step", "", {"b"});
    d.enqueue_workflow(wf);
    d.shutdown();  // returns: a is dead, b and c wait for it
    ASSERT_EQ(d.dead().size(), 1u);
    dead_node = d.dead()[0].id;
  }
  {
    auto journal = Journal::open(dir.path(), kFast);  // what `ordo-wal dead discard` does
    journal->append_durable(RecordType::cancel, dead_node);
  }
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  define(d);
  d.start();
  d.shutdown();
  EXPECT_EQ(successors_ran.load(), 0) << "successors of a discarded node ran";
  EXPECT_EQ(d.stats().workflows, 0u) << "the workflow did not end";
  EXPECT_EQ(d.stats().live, 0u);
}

TEST(DurableWorkflow, NamesOf64KiBOrMoreAreRefusedNamingTheField) {
  ScratchDir dir;
  const std::string huge(70'000, 'n');
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("step", [](TaskContext&, std::span<const std::byte>) {});
    d.start();
    auto refused_naming = [&](const DurableWorkflow& wf, const std::string& key, const std::string& field) {
      try {
        d.enqueue_workflow(wf, key);
        ADD_FAILURE() << "expected InvalidArgument naming the " << field;
      } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
      }
    };
    DurableWorkflow long_name(huge);
    long_name.node("a", "step");
    refused_naming(long_name, "", "workflow name");
    DurableWorkflow long_node("w");
    long_node.node(huge, "step");
    refused_naming(long_node, "", "node name");
    DurableWorkflow fine("w");
    fine.node("a", "step");
    refused_naming(fine, huge, "idempotency key");
    d.shutdown();
  }
  EXPECT_EQ(Journal::read(dir.path(), {}).records, 0u);
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);  // the journal still opens
  d.define("step", [](TaskContext&, std::span<const std::byte>) {});
  EXPECT_EQ(d.start().workflows, 0u);
}

// An append that fails inside enqueue_workflow (here: a node's record over
// the journal's 64 MiB limit, after the first node's record was appended)
// leaves no workflow, no node and no key behind, here or after a restart.
TEST(DurableWorkflow, AFailedAppendLeavesNoPhantomWorkflowOrKey) {
  ScratchDir dir;
  std::atomic<int> ran{0};
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), kFast);
    d.define("step", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
    d.start();
    DurableWorkflow too_big("w");
    too_big.node("a", "step").node("b", "step", std::string((64u << 20) + 1, 'x'), {"a"});
    EXPECT_THROW(d.enqueue_workflow(too_big, "w-key"), InvalidArgument);
    EXPECT_EQ(d.stats().workflows, 0u);
    EXPECT_EQ(d.stats().live, 0u);
    DurableWorkflow fine("w");
    fine.node("a", "step").node("b", "step", "", {"a"});
    d.enqueue_workflow(fine, "w-key");  // a fresh workflow, not the phantom
    d.shutdown();
    EXPECT_EQ(ran.load(), 2);
  }
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), kFast);
  d.define("step", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
  const DurableRecovery r = d.start();
  EXPECT_EQ(r.requeued, 0u);
  EXPECT_EQ(r.workflows, 0u);
  d.shutdown();
  EXPECT_EQ(ran.load(), 2);
}

}  // namespace
}  // namespace ordo
