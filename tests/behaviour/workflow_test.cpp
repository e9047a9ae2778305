#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ordo/ordo.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using test::Gate;

TEST(Workflow, DiamondRunsInDependencyOrder) {
  Scheduler s{{.workers = 2}};
  std::mutex mu;
  std::vector<std::string> order;
  auto note = [&](const char* n) {
    return [&, n] {
      std::lock_guard lock(mu);
      order.emplace_back(n);
    };
  };
  Workflow wf("diamond");
  wf.node("extract", note("extract"));
  wf.node("left", note("left")).after("extract");
  wf.node("right", note("right")).after("extract");
  wf.node("load", note("load")).after("left").after("right");
  auto run = wf.run(s);
  run.get();
  ASSERT_EQ(order.size(), 4u);
  EXPECT_EQ(order.front(), "extract");
  EXPECT_EQ(order.back(), "load");
  EXPECT_EQ(run.status("load"), NodeStatus::succeeded);
  EXPECT_EQ(run.count(NodeStatus::succeeded), 4u);
}

TEST(Workflow, EdgesMayNameNodesDeclaredLaterOrUseTheirRefs) {
  Scheduler s{{.workers = 2}};
  std::atomic<int> step{0};
  int seen_by_b = -1, seen_by_c = -1;
  Workflow wf("forward");
  wf.node("c", [&] { seen_by_c = step.fetch_add(1); }).after("b");
  NodeRef a = wf.node("a", [&] { step.fetch_add(1); });
  wf.node("b", [&] { seen_by_b = step.fetch_add(1); }).after(a);
  Workflow other("other");
  NodeRef stranger = other.node("x", [] {});
  EXPECT_THROW(wf["c"].after(stranger), InvalidGraph);
  wf.run(s).get();
  EXPECT_EQ(seen_by_b, 1);
  EXPECT_EQ(seen_by_c, 2);
}

TEST(Workflow, CycleIsRejectedWithTheCycleNamed) {
  Workflow wf("loop");
  wf.node("a", [] {}).after("c");
  wf.node("b", [] {}).after("a");
  wf.node("c", [] {}).after("b");
  wf.node("outside", [] {}).after("a");
  try {
    wf.validate();
    FAIL() << "a cycle must be rejected";
  } catch (const InvalidGraph& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cycle"), std::string::npos) << msg;
    EXPECT_TRUE(msg.find("a -> b -> c -> a") != std::string::npos || msg.find("b -> c -> a -> b") != std::string::npos ||
                msg.find("c -> a -> b -> c") != std::string::npos)
        << msg;
    EXPECT_EQ(msg.find("outside"), std::string::npos) << msg;
  }
  Scheduler s{{.workers = 1}};
  EXPECT_THROW(wf.run(s), InvalidGraph);
}

TEST(Workflow, SelfLoopUnknownAndDuplicateNamesAreRejected) {
  Workflow self("self");
  auto n = self.node("x", [] {});
  n.after(n);
  EXPECT_THROW(self.validate(), InvalidGraph);

  Workflow unknown("typo");
  unknown.node("load", [] {}).after("extrct");
  try {
    unknown.validate();
    FAIL();
  } catch (const InvalidGraph& e) {
    EXPECT_NE(std::string(e.what()).find("unknown node 'extrct'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'load'"), std::string::npos) << e.what();
  }

  Workflow dup("dup");
  dup.node("a", [] {});
  EXPECT_THROW(dup.node("a", [] {}), InvalidGraph);
  EXPECT_THROW(dup["missing"], InvalidGraph);
}

TEST(Workflow, NodeWithAnEmptyBodyIsRefusedNamingTheNode) {
  Workflow w("etl");
  try {
    w.node("extract", std::function<void()>{});
    FAIL() << "an empty body must be refused";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("'extract'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("empty body"), std::string::npos) << e.what();
  }
  EXPECT_THROW(w.node(std::function<void()>{}), InvalidArgument);
  EXPECT_THROW(w["extract"], InvalidGraph);  // nothing of the refused node stays behind
  w.node("extract", [] {});
  Scheduler s{{.workers = 1}};
  w.run(s).get();
}

TEST(Workflow, FailureCancelsDependentsButNotIndependentNodes) {
  Scheduler s{{.workers = 2}};
  std::atomic<int> downstream_ran{0}, independent_ran{0};
  Workflow wf("etl");
  wf.node("extract", [] { throw std::runtime_error("source unreachable"); });
  wf.node("transform", [&] { downstream_ran++; }).after("extract");
  wf.node("load", [&] { downstream_ran++; }).after("transform");
  wf.node("audit", [&] { independent_ran++; });
  auto run = wf.run(s);
  try {
    run.get();
    FAIL() << "get() must rethrow the node's error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "source unreachable");
  }
  EXPECT_EQ(downstream_ran.load(), 0);
  EXPECT_EQ(independent_ran.load(), 1);
  EXPECT_EQ(run.status("extract"), NodeStatus::failed);
  EXPECT_EQ(run.status("transform"), NodeStatus::cancelled);
  EXPECT_EQ(run.status("load"), NodeStatus::cancelled);
  EXPECT_EQ(run.status("audit"), NodeStatus::succeeded);
}

TEST(Workflow, LongChainsRunAndCancelWithoutDeepRecursion) {
  Scheduler s{{.workers = 2}};
  const int n = 100000;
  long counter = 0;
  Workflow chain("chain");
  NodeRef prev = chain.node([&] { ++counter; });
  for (int i = 1; i < n; ++i) {
    NodeRef next = chain.node([&] { ++counter; });
    next.after(prev);
    prev = next;
  }
  chain.run(s).get();
  EXPECT_EQ(counter, n);

  Workflow failing("failing-chain");
  NodeRef head = failing.node([] { throw std::logic_error("first link"); });
  prev = head;
  for (int i = 1; i < n; ++i) {
    NodeRef next = failing.node([&] { ++counter; });
    next.after(prev);
    prev = next;
  }
  auto run = failing.run(s);
  EXPECT_THROW(run.get(), std::logic_error);
  EXPECT_EQ(run.count(NodeStatus::cancelled), static_cast<std::size_t>(n - 1));
}

// Runs of one workflow overlap freely. In every run B starts after A finished,
// so when B starts, A has finished more times than B had started before it.
TEST(Workflow, ThousandConcurrentRunsGiveIdenticalResults) {
  Scheduler s{{.workers = 3}};
  std::atomic<int> a_done{0}, b_started{0}, c_done{0}, violations{0};
  Workflow wf("shared");
  wf.node("a", [&] { a_done.fetch_add(1); });
  wf.node("b", [&] {
      // The RMW first: it synchronises with every earlier B start, whose A had
      // finished before it, so the load that follows sees all those A's too.
      const int earlier_b = b_started.fetch_add(1);
      if (a_done.load() <= earlier_b) violations.fetch_add(1);
    }).after("a");
  wf.node("c", [&] { c_done.fetch_add(1); }).after("b");
  const int runs = 1000;
  std::vector<WorkflowRun> handles;
  std::thread other([&] {
    std::vector<WorkflowRun> mine;
    for (int i = 0; i < runs / 2; ++i) mine.push_back(wf.run(s));
    for (auto& r : mine) r.get();
  });
  for (int i = 0; i < runs / 2; ++i) handles.push_back(wf.run(s));
  for (auto& r : handles) {
    r.get();
    EXPECT_EQ(r.count(NodeStatus::succeeded), 3u);
  }
  other.join();
  EXPECT_EQ(a_done.load(), runs);
  EXPECT_EQ(c_done.load(), runs);
  EXPECT_EQ(violations.load(), 0);
}

// Random DAGs: each node's value is a function of its predecessors' values,
// so any order violation changes the result. Checked against a serial
// evaluation in index order (edges only go from lower to higher index).
TEST(Workflow, RandomDagsMatchASerialTopologicalExecution) {
  Scheduler s{{.workers = 3}};
  for (unsigned seed = 1; seed <= 10 * test::kScale; ++seed) {
    std::mt19937 rng(seed);
    const int n = 300;
    std::vector<std::vector<int>> preds(n);
    for (int j = 1; j < n; ++j) {
      const int k = static_cast<int>(rng() % 4);
      for (int e = 0; e < k; ++e) preds[j].push_back(static_cast<int>(rng() % j));
    }
    auto compute = [&](std::vector<std::uint64_t>& value, int j) {
      std::uint64_t h = 1469598103934665603ull ^ static_cast<std::uint64_t>(j);
      for (int p : preds[j]) h = (h ^ value[p]) * 1099511628211ull;
      value[j] = h;
    };
    std::vector<std::uint64_t> expected(n), got(n);
    for (int j = 0; j < n; ++j) compute(expected, j);
    Workflow wf("random-" + std::to_string(seed));
    std::vector<NodeRef> nodes;
    for (int j = 0; j < n; ++j) nodes.push_back(wf.node([&, j] { compute(got, j); }));
    for (int j = 0; j < n; ++j)
      for (int p : preds[j]) nodes[j].after(nodes[p]);
    wf.run(s).get();
    ASSERT_EQ(got, expected) << "seed " << seed;
  }
}

TEST(Workflow, NestedWorkflowRunsAsOneNode) {
  Scheduler s{{.workers = 2}};
  std::atomic<int> inner_ran{0};
  int after_saw = -1;
  Workflow inner("inner");
  inner.node("i1", [&] { inner_ran++; });
  inner.node("i2", [&] { inner_ran++; }).after("i1");
  Workflow outer("outer");
  outer.node("prepare", [] {});
  outer.node("sub", inner).after("prepare");
  outer.node("finish", [&] { after_saw = inner_ran.load(); }).after("sub");
  auto run = outer.run(s);
  run.get();
  EXPECT_EQ(after_saw, 2);
  EXPECT_NE(outer.to_dot(&run).find("shape=box3d"), std::string::npos);
}

TEST(Workflow, DrawsItselfAsDotAndMermaidWithStatus) {
  Scheduler s{{.workers = 1}};
  Workflow wf("nightly");
  wf.node("extract", [] {});
  wf.node("transform", [] { throw std::runtime_error("bad row"); }).after("extract");
  wf.node("load", [] {}).after("transform");
  const std::string plain = wf.to_dot();
  EXPECT_NE(plain.find("digraph \"nightly\""), std::string::npos);
  EXPECT_NE(plain.find("\"extract\" -> \"transform\""), std::string::npos);
  auto run = wf.run(s);
  EXPECT_THROW(run.get(), std::runtime_error);
  const std::string dot = wf.to_dot(&run);
  EXPECT_NE(dot.find("\"extract\" [fillcolor=palegreen"), std::string::npos) << dot;
  EXPECT_NE(dot.find("\"transform\" [fillcolor=salmon"), std::string::npos) << dot;
  EXPECT_NE(dot.find("\"load\" [fillcolor=lightgrey"), std::string::npos) << dot;
  const std::string mermaid = wf.to_mermaid(&run);
  EXPECT_NE(mermaid.find("flowchart LR"), std::string::npos);
  EXPECT_NE(mermaid.find("n0 --> n1"), std::string::npos);
  EXPECT_NE(mermaid.find("class n1 failed"), std::string::npos) << mermaid;
}

// A low node that a high node depends on runs at high: it is not left behind
// normal work queued before it.
TEST(Workflow, LowPredecessorOfAHighNodeInheritsHighPriority) {
  Scheduler s{{.workers = 1, .levels = 3}};
  Gate gate;
  s.post([&] { gate.hold(); }, {.priority = high});
  gate.wait_entered();
  std::vector<std::string> order;
  for (int i = 0; i < 5; ++i) s.post([&] { order.push_back("normal"); }, {.priority = normal});
  Workflow wf("report");
  wf.node("fetch", [&] { order.push_back("fetch"); }, {.priority = low});
  wf.node("render", [&] { order.push_back("render"); }, {.priority = high}).after("fetch");
  auto run = wf.run(s);
  gate.open.store(true);
  run.get();
  s.shutdown();
  ASSERT_EQ(order.size(), 7u);
  EXPECT_EQ(order[0], "fetch");
  EXPECT_EQ(order[1], "render");
}

TEST(Workflow, RunWaitForTimesOutWhileANodeIsHeldThenCompletes) {
  using namespace std::chrono_literals;
  using Clock = std::chrono::steady_clock;
  Scheduler s{{.workers = 2}};
  Gate gate;
  std::atomic<int> ran{0};
  Workflow wf("held");
  wf.node("first", [&] { ran.fetch_add(1); });
  wf.node("held", [&] { gate.hold(); ran.fetch_add(1); }).after("first");
  wf.node("last", [&] { ran.fetch_add(1); }).after("held");
  WorkflowRun run = wf.run(s);
  gate.wait_entered();
  const auto before = Clock::now();
  EXPECT_FALSE(run.wait_for(100ms));
  const auto waited = Clock::now() - before;
  EXPECT_GE(waited, 100ms);
  EXPECT_LT(waited, 10s);
  EXPECT_FALSE(run.wait_until(Clock::now() + 20ms));
  EXPECT_FALSE(run.ready());
  gate.open.store(true);
  EXPECT_TRUE(run.wait_for(20s)) << "the run's completion after a timed-out wait was not seen";
  EXPECT_NO_THROW(run.get());
  EXPECT_EQ(ran.load(), 3);
  // Finished in time, also from inside a task (a helping timed wait).
  for (int i = 0; i < 100; ++i) {
    auto inner = s.submit([&] { return wf.run(s).wait_for(20s); });
    ASSERT_TRUE(inner.get()) << "iteration " << i;
  }
  gate.open.store(true);
}

TEST(Workflow, EmptyWorkflowCompletesAtOnce) {
  Scheduler s{{.workers = 1}};
  Workflow wf("empty");
  auto run = wf.run(s);
  EXPECT_TRUE(run.ready());
  EXPECT_NO_THROW(run.get());
}

TEST(Workflow, NodeNeedsCapConcurrencyAcrossConcurrentRuns) {
  Scheduler s{{.workers = 4}};
  auto db = s.resource_group("db", 2);
  std::atomic<int> in_db{0}, most{0}, ran{0};
  Workflow wf("etl");
  auto fan_in = wf.node("report", [] {});
  auto fan_out = wf.node("start", [] {});
  for (int i = 0; i < 16; ++i) {
    auto query = wf.node("query" + std::to_string(i), [&] {
      const int now = ++in_db;
      int seen = most.load();
      while (now > seen && !most.compare_exchange_weak(seen, now)) {
      }
      for (int k = 0; k < 20; ++k) std::this_thread::yield();  // stay inside long enough to overlap
      --in_db;
      ++ran;
    }, {.needs = {{db, 1}}}).after(fan_out);
    fan_in.after(query);
  }
  constexpr int kRuns = 10 * static_cast<int>(test::kScale);
  std::vector<WorkflowRun> runs;
  for (int r = 0; r < kRuns; ++r) runs.push_back(wf.run(s));
  for (auto& r : runs) {
    r.get();
    EXPECT_EQ(r.count(NodeStatus::succeeded), 18u);
  }
  EXPECT_EQ(ran.load(), 16 * kRuns);
  EXPECT_LE(most.load(), 2);
  EXPECT_LE(db.stats().max_in_use, 2u);
  EXPECT_EQ(db.stats().in_use, 0u);
}

TEST(Workflow, NodeFailureWithNeedsReturnsPermitsAndCancelsDownstream) {
  Scheduler s{{.workers = 2}};
  auto db = s.resource_group("db", 1);
  Workflow wf("fails");
  wf.node("load", [] { throw std::runtime_error("disk"); }, {.needs = {{db, 1}}});
  wf.node("use", [] {}, {.needs = {{db, 1}}}).after("load");
  auto run = wf.run(s);
  EXPECT_THROW(run.get(), std::runtime_error);
  EXPECT_EQ(run.status("use"), NodeStatus::cancelled);
  EXPECT_EQ(db.stats().in_use, 0u);
}

// Found by the model checker: a node queued after its group's limit was
// lowered below its need failed its run with InvalidArgument (shown as
// cancelled); a task in the same place waits for the limit to come back.
TEST(Workflow, NodeWhoseLimitWasLoweredAfterTheRunStartedWaitsForItToComeBack) {
  Scheduler s{{.workers = 2}};
  auto db = s.resource_group("db", 2);
  test::Gate gate;
  std::atomic<bool> bulk_ran{false};
  Workflow wf("lowered");
  wf.node("first", [&] { gate.hold(); });
  wf.node("bulk_load", [&] { bulk_ran = true; }, {.needs = {{db, 2}}}).after("first");
  auto run = wf.run(s);
  gate.wait_entered();
  db.set_limit(1);
  gate.open.store(true);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (db.stats().waiting == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  ASSERT_EQ(db.stats().waiting, 1u) << "the node must wait, parked, for the limit to come back";
  EXPECT_FALSE(bulk_ran.load());
  EXPECT_EQ(run.status("bulk_load"), NodeStatus::pending);
  db.set_limit(2);
  run.get();
  EXPECT_TRUE(bulk_ran.load());
  EXPECT_EQ(db.stats().in_use, 0u);
}

TEST(Workflow, NodeNeedBeyondTheLimitIsRejectedAtRunNamingTheNode) {
  Scheduler s{{.workers = 1}};
  auto db = s.resource_group("db", 2);
  Workflow wf("big");
  wf.node("bulk_load", [] {}, {.needs = {{db, 3}}});
  try {
    (void)wf.run(s);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("bulk_load"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ordo
