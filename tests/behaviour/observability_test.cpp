// Stats snapshots that add up under load, the Prometheus text, and the
// Chrome trace-event JSON of the tracer.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "journal_support.hpp"
#include "test_support.hpp"
#include "ordo/durable.hpp"
#include "ordo/observability.hpp"
#include "ordo/scheduler.hpp"
#include "ordo/task_group.hpp"
#include "ordo/workflow.hpp"

namespace ordo {
namespace {

using test::Gate;

std::uint64_t sum_levels(const SchedulerStats& st) {
  std::uint64_t n = 0;
  for (const auto& l : st.per_level) n += l.completed;
  return n;
}
std::uint64_t sum_workers(const SchedulerStats& st) {
  std::uint64_t n = 0;
  for (const auto& w : st.per_worker) n += w.tasks_run;
  return n;
}

TEST(Stats, SnapshotsAddUpAndOnlyGrowWhileTasksRun) {
  for (int round = 0; round < 5; ++round) {
    Scheduler s{{.workers = 2}};
    ResourceGroup db = s.resource_group("db", 2);
    constexpr int kTasks = 20'000;
    std::atomic<bool> done{false};
    std::thread submitter([&] {
      for (int i = 0; i < kTasks; ++i) {
        SubmitOptions o{.priority = Priority{static_cast<std::uint8_t>(i % 3)}};
        if (i % 10 == 0) o.needs.push_back({db, 1});
        s.post([] {}, std::move(o));
      }
      done = true;
    });
    std::uint64_t last = 0;
    int snapshots = 0;
    while (!done.load() || snapshots < 10) {
      const SchedulerStats st = s.stats();
      ASSERT_EQ(st.tasks_run, sum_levels(st)) << "tasks_run and the per-level sum disagree";
      ASSERT_EQ(st.tasks_run, sum_workers(st)) << "tasks_run and the per-worker sum disagree";
      ASSERT_GE(st.tasks_run, last) << "a counter went backwards";
      ASSERT_EQ(st.per_worker.size(), 2u);
      ASSERT_EQ(st.resources.size(), 1u);
      ASSERT_LE(st.resources[0].in_use, st.resources[0].limit);
      ASSERT_LE(st.resources[0].max_in_use, 2u);
      last = st.tasks_run;
      ++snapshots;
    }
    submitter.join();
    s.shutdown();
    const SchedulerStats end = s.stats();
    EXPECT_EQ(end.tasks_run, static_cast<std::uint64_t>(kTasks));
    EXPECT_EQ(sum_levels(end), static_cast<std::uint64_t>(kTasks));
    for (const auto& l : end.per_level) EXPECT_EQ(l.queued + l.running, 0u);
    EXPECT_EQ(end.resources[0].in_use, 0u);
  }
}

TEST(Stats, PerLevelQueuedRunningCompletedAndWaits) {
  Scheduler s{{.workers = 1, .levels = 3}};
  Gate gate;
  s.post([&] { gate.hold(); }, {.priority = normal});
  gate.wait_entered();
  for (int i = 0; i < 640; ++i) s.post([] {}, {.priority = low});
  for (int i = 0; i < 128; ++i) s.post([] {}, {.priority = high});
  auto busy = s.stats();
  ASSERT_EQ(busy.per_level.size(), 3u);
  EXPECT_EQ(busy.per_level[2].queued, 640u);
  EXPECT_EQ(busy.per_level[0].queued, 128u);
  EXPECT_EQ(busy.per_level[1].running, 1u);
  gate.open.store(true);
  s.shutdown();
  auto done = s.stats();
  EXPECT_EQ(done.per_level[0].completed, 128u);
  EXPECT_EQ(done.per_level[1].completed, 1u);
  EXPECT_EQ(done.per_level[2].completed, 640u);
  for (const auto& l : done.per_level) {
    EXPECT_EQ(l.queued, 0u);
    EXPECT_EQ(l.running, 0u);
    EXPECT_LE(l.wait_p50_us, l.wait_p99_us);
    EXPECT_LE(l.wait_p99_us, l.wait_max_us);
  }
  // Every 64th task a thread queues is timed: 769 tasks from this thread,
  // whose tick may have started anywhere in its cycle.
  const auto samples = done.per_level[0].wait_samples + done.per_level[1].wait_samples + done.per_level[2].wait_samples;
  EXPECT_GE(samples, 769u / 64u);
  EXPECT_LE(samples, 769u / 64u + 1);
  EXPECT_GT(done.per_level[2].wait_samples, 0u);
}

TEST(Stats, DurableTasksAppearInTheSchedulerSnapshotWhileTheyLive) {
  test::ScratchDir dir;
  Scheduler s{{.workers = 2}};
  {
    DurableTasks durable(s, dir.path(), {.durability = Durability::none});
    durable.define("job", [](TaskContext&, std::span<const std::byte>) {});
    durable.start();
    for (int i = 0; i < 10; ++i) durable.enqueue("job", std::string("x"));
    durable.shutdown();
    const SchedulerStats st = s.stats();
    ASSERT_EQ(st.durable.size(), 1u);
    EXPECT_EQ(st.durable[0].completed, 10u);
    EXPECT_EQ(st.durable[0].live, 0u);
    EXPECT_EQ(st.durable[0].directory, dir.path());
    EXPECT_GT(st.durable[0].journal_bytes, 0u);
  }
  EXPECT_TRUE(s.stats().durable.empty()) << "a destroyed DurableTasks is still reported";
}

// The text format, line by line: HELP and TYPE before a family's samples,
// valid names and labels, numeric values, counters named *_total.
TEST(Prometheus, TextParsesWithValidNamesTypesAndLabels) {
  test::ScratchDir dir;
  Scheduler s{{.workers = 2}};
  s.resource_group("db \"primary\"\\1", 4);  // a name that needs escaping
  s.rate_group("api", 10, std::chrono::seconds(1), 5);
  DurableTasks durable(s, dir.path(), {.durability = Durability::none});
  durable.define("job", [](TaskContext&, std::span<const std::byte>) {});
  durable.start();
  durable.enqueue("job", std::string("x"));
  for (int i = 0; i < 100; ++i) s.post([] {});
  const std::string text = to_prometheus(s.stats(), "main");

  const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+)");
  const std::regex type(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|summary|histogram|untyped))");
  const std::string label = R"([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*")";
  const std::regex sample("([a-zA-Z_:][a-zA-Z0-9_:]*)\\{(" + label + "(?:," + label + ")*)\\} (\\S+)");
  std::map<std::string, std::string> types;
  std::set<std::string> helped, sampled;
  std::istringstream in(text);
  std::string line;
  int samples = 0;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, help)) {
      helped.insert(m[1]);
    } else if (std::regex_match(line, m, type)) {
      ASSERT_TRUE(helped.count(m[1])) << "TYPE before HELP: " << line;
      ASSERT_TRUE(types.emplace(m[1], m[2]).second) << "family declared twice: " << line;
    } else if (std::regex_match(line, m, sample)) {
      const std::string name = m[1];
      ASSERT_TRUE(types.count(name)) << "sample of an undeclared family: " << line;
      ASSERT_NE(std::string(m[2]).find("scheduler=\"main\""), std::string::npos) << line;
      std::size_t used = 0;
      const double v = std::stod(m[3], &used);
      ASSERT_EQ(used, std::string(m[3]).size()) << "not a number: " << line;
      if (types[name] == "counter") {
        EXPECT_TRUE(name.ends_with("_total")) << name;
        EXPECT_GE(v, 0) << line;
      }
      sampled.insert(name);
      ++samples;
    } else {
      FAIL() << "not a valid exposition line: '" << line << "'";
    }
  }
  EXPECT_GT(samples, 30);
  for (const char* family : {"ordo_tasks_run_total", "ordo_level_queued", "ordo_worker_idle_seconds_total",
                             "ordo_resource_in_use", "ordo_durable_live", "ordo_durable_last_fsync_seconds"}) {
    EXPECT_TRUE(sampled.count(family)) << family << " missing";
  }
  EXPECT_NE(text.find(R"(group="db \"primary\"\\1")"), std::string::npos) << "label value not escaped";
  durable.shutdown();
}

// Begin and end events of one worker must nest like a call stack.
void expect_paired(const nlohmann::json& trace, std::size_t* spans, std::multiset<std::string>* names) {
  std::map<int, std::vector<std::string>> open;
  std::map<int, double> last_ts;
  for (const auto& e : trace.at("traceEvents")) {
    const std::string ph = e.at("ph");
    if (ph == "M") continue;
    const int tid = e.at("tid");
    const double ts = e.at("ts");
    ASSERT_GE(ts, last_ts[tid]) << "events of worker " << tid << " out of time order";
    last_ts[tid] = ts;
    if (ph == "B") {
      open[tid].push_back(e.at("name"));
      names->insert(e.at("name").get<std::string>());
      ++*spans;
    } else if (ph == "E") {
      ASSERT_FALSE(open[tid].empty()) << "an end without a begin on worker " << tid;
      open[tid].pop_back();
    } else {
      ASSERT_EQ(ph, "i");
    }
  }
  for (const auto& [tid, stack] : open) EXPECT_TRUE(stack.empty()) << "worker " << tid << " has unended spans";
}

TEST(Trace, JsonIsValidAndBeginsAndEndsPairPerWorker) {
  for (int round = 0; round < 3; ++round) {
    Scheduler s{{.workers = 2}};
    ResourceGroup one = s.resource_group("one", 1);
    s.start_tracing();
    EXPECT_TRUE(s.tracing());
    constexpr int kParents = 200;
    TaskGroup g(s);
    for (int i = 0; i < kParents; ++i) {
      g.spawn([&s] {
        trace_label("parent");
        // A child waited for from inside a task: the wait may run it nested.
        auto child = s.submit([] { trace_label("child"); });
        child.wait();
      });
    }
    g.wait();
    std::vector<Handle<void>> limited;
    for (int i = 0; i < 50; ++i) limited.push_back(s.submit([] { std::this_thread::yield(); }, {.needs = {{one, 1}}}));
    for (auto& h : limited) h.wait();
    Workflow wf("etl");
    wf.node("extract", [] {});
    wf.node("load", [] {}).after("extract");
    wf.run(s).get();
    s.stop_tracing();
    s.post([] {});  // not traced
    s.shutdown();

    std::stringstream out;
    const std::size_t written = s.write_trace(out);
    const nlohmann::json trace = nlohmann::json::parse(out.str());  // throws if not JSON
    std::size_t spans = 0;
    std::multiset<std::string> names;
    expect_paired(trace, &spans, &names);
    EXPECT_EQ(spans, written);
    EXPECT_EQ(names.count("parent"), static_cast<std::size_t>(kParents));
    EXPECT_EQ(names.count("child"), static_cast<std::size_t>(kParents));
    EXPECT_EQ(names.count("etl/extract") + names.count("etl/extract +"), 1u);
    std::size_t workflow_spans = 0;  // one task may run both nodes, as "etl/extract +"
    for (const std::string& n : names) workflow_spans += n.starts_with("etl/") ? 1 : 0;
    EXPECT_GE(workflow_spans, 1u);
    EXPECT_EQ(spans, static_cast<std::size_t>(2 * kParents + 50) + workflow_spans)
        << "a task ran untraced, or one traced after stop_tracing()";
  }
}

TEST(Trace, OffByDefaultAndEventsBeyondTheCapAreCountedAsDropped) {
  Scheduler s{{.workers = 1}};
  EXPECT_FALSE(s.tracing());
  {
    TaskGroup before(s);
    for (int i = 0; i < 100; ++i) before.spawn([] {});
    before.wait();
  }
  s.start_tracing(10);
  for (int i = 0; i < 100; ++i) s.post([] {});
  s.shutdown();
  std::stringstream out;
  EXPECT_EQ(s.write_trace(out), 10u);
  EXPECT_EQ(s.trace_events_dropped(), 90u);
}

}  // namespace
}  // namespace ordo
