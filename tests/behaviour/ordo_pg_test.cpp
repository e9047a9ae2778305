// ordo-pg, run as users run it: on a store that a DurableTasks of this test
// filled with a job in every state — dead, ready at two levels, scheduled,
// retrying, running (holding a global permit) and blocked.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <iterator>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "pg_support.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ordo::test;
using json = nlohmann::json;
using State = ordo::DurableTaskStatus::State;

struct ToolRun {
  int exit_code;
  std::string out;  // stdout only
  std::string all;  // stdout and stderr
};

// Runs ordo-pg once with `args` (already shell words): its exit code, its
// stdout, and its stdout followed by its stderr.
ToolRun ordo_pg(const std::string& args) {
  char err_path[] = "/tmp/ordo-pg-test-stderr.XXXXXX";
  const int fd = ::mkstemp(err_path);
  if (fd < 0) throw PgError("mkstemp failed");
  ::close(fd);
  const ShellRun run = run_shell(std::string(ORDO_PG_PATH) + " " + args + " 2>" + err_path);
  std::ifstream err_file(err_path);
  const std::string err((std::istreambuf_iterator<char>(err_file)), std::istreambuf_iterator<char>());
  ::unlink(err_path);
  return {run.exit_status, run.output, run.output + err};
}

// A store seeded with one job in each state, by a DurableTasks named
// "tester-1" whose `slow` job stays running until the fixture ends.
class OrdoPg : public ::testing::Test {
 protected:
  void SetUp() override {
    ordo::PostgresStore store = ordo::postgres(db_.conninfo());
    store.lease = 30s;  // the running job's lease stays put while the tool looks
    store.poll = 100ms;
    store.worker_name = "tester-1";
    jobs_.emplace(sched_, store);
    ordo::TaskTypeOptions poison;
    poison.retry.max_attempts = 2;
    poison.retry.initial_backoff = 1ms;
    jobs_->define("poison", [](ordo::TaskContext& ctx, std::span<const std::byte>) {
      throw std::runtime_error("bad input at attempt " + std::to_string(ctx.attempt()));
    }, poison);
    ordo::TaskTypeOptions flaky;
    flaky.retry.initial_backoff = std::chrono::hours(1);
    jobs_->define("flaky", [](ordo::TaskContext&, std::span<const std::byte>) {
      throw std::runtime_error("upstream timed out");
    }, flaky);
    jobs_->define("slow", [this](ordo::TaskContext&, std::span<const std::byte>) {
      std::unique_lock lock(mu_);
      slow_started_ = true;
      released_cv_.wait(lock, [this] { return released_; });
    });
    jobs_->define("report", ordo::TaskHandler{});  // enqueue-only here: stays ready
    jobs_->start();
    jobs_->set_global_limit("db", 2);
    jobs_->set_global_rate("mail", 5.0, 3);

    dead_ = jobs_->enqueue("poison", "x");
    retrying_ = jobs_->enqueue("flaky", "y");
    running_ = jobs_->enqueue("slow", "z", {.global_needs = {{"db", 1}}});
    ready_high_ = jobs_->enqueue("report", "h", {.priority = ordo::high});
    jobs_->enqueue("report", "l1", {.priority = ordo::low});
    jobs_->enqueue("report", "l2", {.priority = ordo::low});
    scheduled_ = jobs_->enqueue("report", "later", {.delay = std::chrono::hours(1)});
    flow_ = jobs_->enqueue_workflow(
        ordo::DurableWorkflow("nightly").node("extract", "report").node("load", "report", {}, {"extract"}));
    ASSERT_TRUE(eventually([&] {
      return jobs_->status(dead_).state == State::dead && jobs_->status(retrying_).state == State::retrying &&
             jobs_->status(running_).state == State::running && slow_started();
    }, 20s)) << "seeding: dead " << ordo::to_string(jobs_->status(dead_).state) << ", retrying "
             << ordo::to_string(jobs_->status(retrying_).state) << ", running "
             << ordo::to_string(jobs_->status(running_).state);
    for (const auto& s : jobs_->retrying()) ASSERT_EQ(s.id, retrying_);
  }

  void TearDown() override {
    {
      std::lock_guard lock(mu_);
      released_ = true;
    }
    released_cv_.notify_all();
    // cancel: the retrying job waits an hour, which a drain would wait for.
    if (jobs_) jobs_->shutdown(ordo::ShutdownMode::cancel);
  }

  bool slow_started() {
    std::lock_guard lock(mu_);
    return slow_started_;
  }

  // The tool's options for this store.
  std::string on_store() const { return "-d " + shell_quoted(db_.conninfo()); }

  ScratchDatabase db_;
  ordo::Scheduler sched_{{.workers = 2}};
  std::optional<ordo::DurableTasks> jobs_;
  std::mutex mu_;
  std::condition_variable released_cv_;
  bool released_ = false;
  bool slow_started_ = false;
  ordo::TaskId dead_ = 0, retrying_ = 0, running_ = 0, ready_high_ = 0, scheduled_ = 0, flow_ = 0;
};

TEST_F(OrdoPg, DeadListsEachDeadJobWithTypeAttemptsAndLastError) {
  const ToolRun text = ordo_pg(on_store() + " dead");
  ASSERT_EQ(text.exit_code, 0) << text.all;
  EXPECT_NE(text.out.find(std::to_string(dead_) + "   poison  2"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("bad input at attempt 2"), std::string::npos) << text.out;
  EXPECT_NE(text.all.find("1 dead job(s)"), std::string::npos) << text.all;

  const ToolRun as_json = ordo_pg(on_store() + " dead --json");
  ASSERT_EQ(as_json.exit_code, 0) << as_json.all;
  const json dead = json::parse(as_json.out);
  ASSERT_EQ(dead.size(), 1u) << as_json.out;
  EXPECT_EQ(dead[0]["id"], dead_);
  EXPECT_EQ(dead[0]["type"], "poison");
  EXPECT_EQ(dead[0]["attempts"], 2);
  EXPECT_EQ(dead[0]["last_error"], "bad input at attempt 2");
}

TEST_F(OrdoPg, RetrySendsADeadJobBackAndRefusesAnIdThatIsNotDead) {
  const ToolRun refused = ordo_pg(on_store() + " retry " + std::to_string(ready_high_));
  EXPECT_EQ(refused.exit_code, 1) << refused.all;
  EXPECT_NE(refused.all.find("job " + std::to_string(ready_high_) + " is not in the dead set (it is available)"),
            std::string::npos) << refused.all;
  const ToolRun missing = ordo_pg(on_store() + " retry 999999");
  EXPECT_EQ(missing.exit_code, 1) << missing.all;
  EXPECT_NE(missing.all.find("job 999999 is not in the dead set (no job has that id)"), std::string::npos) << missing.all;

  const ToolRun retried = ordo_pg(on_store() + " --json retry " + std::to_string(dead_));
  ASSERT_EQ(retried.exit_code, 0) << retried.all;
  EXPECT_EQ(json::parse(retried.out), (json{{"id", dead_}, {"retried", true}}));
  // Back in the fleet's hands: the poison runs its two attempts again and dies again.
  ASSERT_TRUE(eventually([&] {
    const auto dead = jobs_->dead();
    return dead.size() == 1 && dead[0].last_error == "bad input at attempt 2" && jobs_->status(dead_).attempts == 2 &&
           jobs_->status(dead_).state == State::dead;
  }, 20s));
  PgConn conn(db_.conninfo());
  EXPECT_EQ(conn.scalar("SELECT attempt FROM ordo.jobs WHERE id = " + std::to_string(dead_)), "4")
      << "the fence rises through a retry";
}

TEST_F(OrdoPg, DiscardDropsADeadJobAndRefusesARunningOne) {
  const ToolRun refused = ordo_pg(on_store() + " discard " + std::to_string(running_));
  EXPECT_EQ(refused.exit_code, 1) << refused.all;
  EXPECT_NE(refused.all.find("is not in the dead set (it is running)"), std::string::npos) << refused.all;
  EXPECT_EQ(jobs_->status(running_).state, State::running);

  const ToolRun discarded = ordo_pg(on_store() + " discard " + std::to_string(dead_));
  ASSERT_EQ(discarded.exit_code, 0) << discarded.all;
  EXPECT_NE(discarded.out.find("discarded " + std::to_string(dead_)), std::string::npos) << discarded.out;
  EXPECT_TRUE(jobs_->dead().empty());
  EXPECT_EQ(jobs_->status(dead_).state, State::unknown);
  const ToolRun again = ordo_pg(on_store() + " discard " + std::to_string(dead_));
  EXPECT_EQ(again.exit_code, 1) << again.all;
  EXPECT_NE(again.all.find("no job has that id"), std::string::npos) << again.all;
}

TEST_F(OrdoPg, DepthCountsEachPriorityLevelByState) {
  const ToolRun r = ordo_pg(on_store() + " depth --json");
  ASSERT_EQ(r.exit_code, 0) << r.all;
  const json levels = json::parse(r.out);
  ASSERT_EQ(levels.size(), 3u) << r.out;
  const json want = json::parse(R"([
    {"level":0,"priority":"high","ready":1,"scheduled":0,"retrying":0,"running":0,"blocked":0,"dead":0},
    {"level":1,"priority":"normal","ready":1,"scheduled":1,"retrying":1,"running":1,"blocked":1,"dead":1},
    {"level":2,"priority":"low","ready":2,"scheduled":0,"retrying":0,"running":0,"blocked":0,"dead":0}])");
  EXPECT_EQ(levels, want) << r.out;  // normal's ready one is the workflow's root, its blocked one the next node

  const ToolRun text = ordo_pg(on_store() + " depth");
  ASSERT_EQ(text.exit_code, 0) << text.all;
  EXPECT_NE(text.out.find("priority  ready  scheduled  retrying  running  blocked  dead"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("low       2      0"), std::string::npos) << text.out;
}

TEST_F(OrdoPg, LeasesShowTheRunningJobWithItsOwnerAttemptAndLeaseLeft) {
  const ToolRun r = ordo_pg(on_store() + " leases --json");
  ASSERT_EQ(r.exit_code, 0) << r.all;
  const json leases = json::parse(r.out);
  ASSERT_EQ(leases.size(), 1u) << r.out;
  EXPECT_EQ(leases[0]["id"], running_);
  EXPECT_EQ(leases[0]["type"], "slow");
  EXPECT_EQ(leases[0]["owner"], "tester-1");
  EXPECT_EQ(leases[0]["attempt"], 1);
  const auto left = leases[0]["lease_left_ms"].get<std::int64_t>();
  EXPECT_GT(left, 0);
  EXPECT_LE(left, 30000);
  const ToolRun text = ordo_pg(on_store() + " leases");
  EXPECT_NE(text.out.find("tester-1"), std::string::npos) << text.out;
}

TEST_F(OrdoPg, GroupsShowLimitInUsePeakAndHoldersByOwner) {
  const ToolRun r = ordo_pg(on_store() + " groups --json");
  ASSERT_EQ(r.exit_code, 0) << r.all;
  const json groups = json::parse(r.out);
  ASSERT_EQ(groups.size(), 2u) << r.out;
  EXPECT_EQ(groups[0], json::parse(R"({"name":"db","kind":"count","limit":2,"in_use":1,"peak":1,
                                       "holders":{"tester-1":1}})"));
  EXPECT_EQ(groups[1]["name"], "mail");
  EXPECT_EQ(groups[1]["kind"], "rate");
  EXPECT_EQ(groups[1]["limit"], 3);
  EXPECT_DOUBLE_EQ(groups[1]["per_second"].get<double>(), 5.0);
  const ToolRun text = ordo_pg(on_store() + " groups");
  EXPECT_NE(text.out.find("tester-1 1"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("5/s, burst 3"), std::string::npos) << text.out;
}

TEST_F(OrdoPg, StatusNamesEachStateAndAnUnknownIdIsAnError) {
  const auto state_of = [&](ordo::TaskId id) {
    const ToolRun r = ordo_pg(on_store() + " --json status " + std::to_string(id));
    EXPECT_EQ(r.exit_code, 0) << r.all;
    return json::parse(r.out);
  };
  EXPECT_EQ(state_of(dead_)["state"], "dead");
  EXPECT_EQ(state_of(dead_)["last_error"], "bad input at attempt 2");
  EXPECT_EQ(state_of(retrying_)["state"], "retrying");
  EXPECT_TRUE(state_of(retrying_).contains("run_at"));
  EXPECT_EQ(state_of(running_)["state"], "running");
  EXPECT_EQ(state_of(running_)["owner"], "tester-1");
  EXPECT_EQ(state_of(ready_high_)["state"], "queued");
  EXPECT_EQ(state_of(ready_high_)["priority"], "high");
  EXPECT_EQ(state_of(scheduled_)["state"], "scheduled");
  const json flow = state_of(flow_);
  EXPECT_EQ(flow["state"], "running") << flow.dump();
  EXPECT_EQ(flow["nodes"], 2);

  const ToolRun unknown = ordo_pg(on_store() + " status 987654");
  EXPECT_EQ(unknown.exit_code, 1) << unknown.all;
  EXPECT_NE(unknown.all.find("no job or workflow 987654 in the store"), std::string::npos) << unknown.all;
  const ToolRun malformed = ordo_pg(on_store() + " status seven");
  EXPECT_NE(malformed.exit_code, 0) << malformed.all;
  EXPECT_NE(malformed.all.find("seven"), std::string::npos) << malformed.all;
}

TEST_F(OrdoPg, TheConninfoMayComeFromTheEnvironment) {
  const ShellRun none = run_shell(std::string("env -u ORDO_PG_CONNINFO ") + ORDO_PG_PATH + " --json depth 2>&1");
  EXPECT_EQ(none.exit_status, 1) << "without a conninfo anywhere: " << none.output;
  EXPECT_NE(none.output.find("give --conninfo (-d) or set ORDO_PG_CONNINFO"), std::string::npos) << none.output;
  const ShellRun env = run_shell("ORDO_PG_CONNINFO=" + shell_quoted(db_.conninfo()) + " " + ORDO_PG_PATH +
                                 " leases --json 2>&1");
  ASSERT_EQ(env.exit_status, 0) << env.output;
  EXPECT_EQ(json::parse(env.output)[0]["id"], running_);
}

TEST(OrdoPgErrors, AnUnreachableServerIsAClearErrorAndExitsNonZero) {
  const ToolRun r = ordo_pg("-d " + shell_quoted("host=/nonexistent/ordo-pg-test user=postgres dbname=x") + " dead");
  EXPECT_EQ(r.exit_code, 1) << r.all;
  EXPECT_NE(r.all.find("ordo-pg: error: cannot reach the database"), std::string::npos) << r.all;
  EXPECT_NE(r.all.find("/nonexistent/ordo-pg-test"), std::string::npos) << "the message names the socket: " << r.all;
}

TEST(OrdoPgErrors, ADatabaseWithoutOrdosSchemaIsNamedAsSuch) {
  ScratchDatabase db;
  const ToolRun r = ordo_pg("-d " + shell_quoted(db.conninfo()) + " depth");
  EXPECT_EQ(r.exit_code, 1) << r.all;
  EXPECT_NE(r.all.find("schema 'ordo' holds no ordo tables in this database"), std::string::npos) << r.all;
  const ToolRun bad = ordo_pg("-d " + shell_quoted(db.conninfo()) + " --schema 'x;drop' depth");
  EXPECT_EQ(bad.exit_code, 1) << bad.all;
  EXPECT_NE(bad.all.find("--schema 'x;drop' must be lower-case letters"), std::string::npos) << bad.all;
}

}  // namespace
