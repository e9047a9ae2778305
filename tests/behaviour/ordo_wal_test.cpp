// ordo-wal, run as users run it: on a journal written by this test.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <fstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "journal_support.hpp"
#include "ordo/ordo.hpp"

namespace ordo {
namespace {

struct ToolRun {
  int exit_code;
  std::string out;  // stdout and stderr
};

ToolRun ordo_wal(const std::string& args) {
  const std::string command = std::string(ORDO_WAL_PATH) + " " + args + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  std::string out;
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

void write_sample(const std::string& dir) {
  auto j = Journal::open(dir, {.durability = Durability::none});
  for (std::uint64_t t = 1; t <= 10; ++t) j->append(RecordType::enqueue, t, test::bytes("hi"));
  for (std::uint64_t t = 1; t <= 4; ++t) j->append(RecordType::complete, t);
}

TEST(OrdoWal, StatCountsRecordsAndLiveTasks) {
  test::ScratchDir dir;
  write_sample(dir.path());
  const ToolRun r = ordo_wal("stat " + dir.path());
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("records      14"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("live tasks   6"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ENQUEUE 10"), std::string::npos) << r.out;
}

TEST(OrdoWal, DumpJsonLinesCarryTypeTaskAndBody) {
  test::ScratchDir dir;
  write_sample(dir.path());
  const ToolRun r = ordo_wal("dump --json " + dir.path());
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find(R"("body_hex":"6869")"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(R"("type":"COMPLETE")"), std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 14);
}

TEST(OrdoWal, VerifyExitsNonZeroOnCorruptionNamingWhere) {
  test::ScratchDir dir;
  write_sample(dir.path());
  write_sample(dir.path());  // a second segment: damage in the first is not a tail
  EXPECT_EQ(ordo_wal("verify " + dir.path()).exit_code, 0);
  const std::string seg = dir.file(test::segment_name(1));
  std::fstream f(seg, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(50);
  f.put('\x7f');
  f.close();
  const ToolRun r = ordo_wal("verify " + dir.path());
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("wal-0000000000000001.log at offset"), std::string::npos) << r.out;
}

// verify reads without the lock: a process compacting meanwhile deletes files
// under it. That is no corruption: verify must read again (exit 0) or say
// the journal kept changing (exit 3), never exit 1 as for corruption.
TEST(OrdoWal, VerifyOnAJournalCompactingMeanwhileNeverReportsCorruption) {
  test::ScratchDir dir;
  auto j = Journal::open(dir.path(), {.durability = Durability::none, .segment_bytes = 1 << 20, .compact_after_bytes = 0});
  // Live tasks make a snapshot that takes verify a while to read, while the
  // segments it listed are folded and deleted.
  const std::string body(200, 'x');
  std::uint64_t task = 1;
  for (; task <= 40000; ++task) j->append(RecordType::enqueue, task, test::bytes(body));
  j->compact();
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> compactions{0};
  std::thread churn([&] {
    while (!stop) {
      for (int i = 0; i < 40; ++i, ++task) {
        j->append(RecordType::enqueue, task, test::bytes(body));
        j->append(RecordType::complete, task);
      }
      j->compact();
      ++compactions;
    }
  });
  int runs = 0, changed = 0;
  std::string failure;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (runs < 400 && failure.empty() && std::chrono::steady_clock::now() < deadline) {
    const ToolRun r = ordo_wal("verify " + dir.path());
    ++runs;
    if (r.exit_code == 3) ++changed;
    if (r.exit_code != 0 && r.exit_code != 3) failure = "exit " + std::to_string(r.exit_code) + ": " + r.out;
  }
  stop = true;
  churn.join();
  EXPECT_EQ(failure, "") << "after " << runs << " runs, " << compactions.load() << " compactions";
  EXPECT_GE(compactions.load(), 3u) << "the journal was not changing under verify";
  std::printf("%d verify runs during %llu compactions; %d said the journal kept changing\n", runs,
              static_cast<unsigned long long>(compactions.load()), changed);
}

TEST(OrdoWal, CompactShrinksTheJournalAndRefusesOneInUse) {
  test::ScratchDir dir;
  write_sample(dir.path());
  const ToolRun r = ordo_wal("compact " + dir.path());
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("6 live task(s)"), std::string::npos) << r.out;
  auto open = Journal::open(dir.path(), {.durability = Durability::none});
  EXPECT_EQ(open->recovery().live_tasks, 6u);
  const ToolRun refused = ordo_wal("compact " + dir.path());
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.out.find("already open"), std::string::npos) << refused.out;
}

TEST(OrdoWal, UnknownCommandIsAUsageError) {
  const ToolRun r = ordo_wal("frobnicate /tmp");
  EXPECT_NE(r.exit_code, 0);
}

TEST(OrdoWal, DeadListRetryAndDiscardWorkOnADurableJournal) {
  test::ScratchDir dir;
  std::atomic<bool> healthy{false};
  std::atomic<int> ran{0};
  auto define = [&](DurableTasks& d) {
    d.define("mail", [&](TaskContext&, std::span<const std::byte>) {
      if (!healthy) throw std::runtime_error("smtp down");
      ++ran;
    }, {.retry = {.max_attempts = 1}});
  };
  TaskId a = 0, b = 0;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), {.durability = Durability::none});
    define(d);
    d.start();
    a = d.enqueue("mail", "to a");
    b = d.enqueue("mail", "to b");
  }
  const ToolRun list = ordo_wal("dead list " + dir.path());
  EXPECT_EQ(list.exit_code, 0) << list.out;
  EXPECT_NE(list.out.find(std::to_string(a) + "\tmail\tattempts=1\tsmtp down"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("2 dead task(s)"), std::string::npos) << list.out;
  EXPECT_EQ(ordo_wal("dead retry " + dir.path() + " " + std::to_string(a)).exit_code, 0);
  EXPECT_EQ(ordo_wal("dead discard " + dir.path() + " " + std::to_string(b)).exit_code, 0);
  EXPECT_EQ(ordo_wal("dead discard " + dir.path() + " " + std::to_string(b)).exit_code, 1);  // no longer dead
  healthy = true;
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), {.durability = Durability::none});
  define(d);
  const DurableRecovery r = d.start();
  EXPECT_EQ(r.requeued, 1u);
  EXPECT_EQ(r.dead, 0u);
  d.shutdown();
  EXPECT_EQ(ran.load(), 1);
}

// A dead workflow node discarded from the shell, then the journal compacted
// before any process starts: the node's records are folded away, yet the
// next start must know it never succeeded — its dependents never run.
TEST(OrdoWal, DeadDiscardOfAWorkflowNodeSurvivesACompactionBeforeTheNextStart) {
  test::ScratchDir dir;
  std::atomic<int> dependents_ran{0};
  auto define = [&](DurableTasks& d) {
    d.define("fails", [](TaskContext&, std::span<const std::byte>) { throw std::runtime_error("broken"); },
             {.retry = {.max_attempts = 1}});
    d.define("step", [&](TaskContext&, std::span<const std::byte>) { ++dependents_ran; });
  };
  TaskId dead_node = 0;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), {.durability = Durability::none});
    define(d);
    d.start();
    DurableWorkflow wf("w");
    wf.node("a", "fails").node("b", "step", "", {"a"}).node("c", "step", "", {"b"});
    d.enqueue_workflow(wf, "w-key");
    d.shutdown();
    ASSERT_EQ(d.dead().size(), 1u);
    dead_node = d.dead()[0].id;
  }
  const ToolRun discard = ordo_wal("dead discard " + dir.path() + " " + std::to_string(dead_node));
  ASSERT_EQ(discard.exit_code, 0) << discard.out;
  const ToolRun compact = ordo_wal("compact " + dir.path());
  ASSERT_EQ(compact.exit_code, 0) << compact.out;
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), {.durability = Durability::none});
  define(d);
  d.start();
  d.shutdown();
  EXPECT_EQ(dependents_ran.load(), 0) << "nodes depending on a discarded node ran";
  EXPECT_EQ(d.stats().workflows, 0u);
  EXPECT_EQ(d.stats().live, 0u);
}

// status, scheduled and retrying read the journal as the runtime reads it:
// every state the runtime reports, the same times, with no process running.
TEST(OrdoWal, StatusScheduledAndRetryingSayWhatTheRuntimeSays) {
  using State = DurableTaskStatus::State;
  test::ScratchDir dir;
  std::vector<DurableTaskStatus> expected;
  TaskId never = 0;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), {.durability = Durability::none});
    d.define("ok", [](TaskContext&, std::span<const std::byte>) {});
    d.define("flaky", [](TaskContext&, std::span<const std::byte>) { throw std::runtime_error("flaky failed"); },
             {.retry = {.max_attempts = 2, .initial_backoff = std::chrono::hours(1), .max_backoff = std::chrono::hours(1)}});
    d.define("doomed", [](TaskContext&, std::span<const std::byte>) { throw std::runtime_error("doomed failed"); },
             {.retry = {.max_attempts = 1}});
    d.define("fails", [](TaskContext&, std::span<const std::byte>) { throw std::runtime_error("node failed"); },
             {.retry = {.max_attempts = 1}});
    d.start();
    const TaskId flaky = d.enqueue("flaky", "");
    const TaskId doomed = d.enqueue("doomed", "");
    const TaskId keyed = d.enqueue("ok", "", {.idempotency_key = "order:1"});
    const TaskId later = d.enqueue("ok", "", {.delay = std::chrono::hours(2)});
    // b waits for a, which dies: b stays blocked (nodes take the ids after their workflow's).
    const TaskId flow = d.enqueue_workflow(DurableWorkflow("w").node("a", "fails").node("b", "ok", "", {"a"}));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!(d.status(flaky).state == State::retrying && d.status(doomed).state == State::dead &&
             d.status(keyed).state == State::completed && d.status(flow + 1).state == State::dead)) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the tasks never settled";
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    never = flow + 100;
    for (TaskId id : {flaky, doomed, keyed, later, flow + 1, flow + 2, never}) expected.push_back(d.status(id));
    EXPECT_EQ(expected[5].state, State::blocked);
    d.shutdown(ShutdownMode::cancel);
  }
  auto ns = [](const std::optional<std::chrono::system_clock::time_point>& t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t->time_since_epoch()).count();
  };
  for (const DurableTaskStatus& want : expected) {
    const ToolRun r = ordo_wal("status " + dir.path() + " " + std::to_string(want.id));
    ASSERT_EQ(r.exit_code, 0) << r.out;
    const nlohmann::json got = nlohmann::json::parse(r.out);
    SCOPED_TRACE(r.out);
    EXPECT_EQ(got["id"], want.id);
    EXPECT_EQ(got["state"], to_string(want.state));
    if (want.state == State::unknown) continue;
    if (!want.type.empty()) EXPECT_EQ(got["type"], want.type);
    if (want.state != State::completed) EXPECT_EQ(got["attempts"], want.attempts);
    if (want.run_at) EXPECT_EQ(got["run_at_ns"], ns(want.run_at));
    if (want.key_retained_until) EXPECT_EQ(got["key_retained_until_ns"], ns(want.key_retained_until));
    if (!want.last_error.empty()) EXPECT_EQ(got["last_error"], want.last_error);
  }
  const ToolRun scheduled = ordo_wal("scheduled " + dir.path());
  ASSERT_EQ(scheduled.exit_code, 0) << scheduled.out;
  EXPECT_NE(scheduled.out.find("1 scheduled task(s)"), std::string::npos) << scheduled.out;
  EXPECT_EQ(nlohmann::json::parse(scheduled.out.substr(0, scheduled.out.find('\n')))["id"], expected[3].id);
  const ToolRun retrying = ordo_wal("retrying " + dir.path());
  ASSERT_EQ(retrying.exit_code, 0) << retrying.out;
  EXPECT_NE(retrying.out.find("1 retrying task(s)"), std::string::npos) << retrying.out;
  const nlohmann::json line = nlohmann::json::parse(retrying.out.substr(0, retrying.out.find('\n')));
  EXPECT_EQ(line["id"], expected[0].id);
  EXPECT_EQ(line["last_error"], "flaky failed");
  EXPECT_EQ(ordo_wal("status " + dir.path()).exit_code, 106) << "an id is required";
}

}  // namespace
}  // namespace ordo
