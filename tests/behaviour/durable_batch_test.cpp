// DurableTasks::enqueue_many on the journal store: one durable batch, ids in
// order, checked as a whole before anything is accepted, keys resolved within
// the batch, and what a restart finds. (The PostgreSQL side is in
// pg_enqueue_test.cpp; the journal's own power-cut test waits for batches
// through their last record, as enqueue_many does.)
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "journal_support.hpp"
#include "ordo/ordo.hpp"
#include "test_support.hpp"

namespace ordo {
namespace {

using namespace std::chrono_literals;
using test::ScratchDir;

std::vector<NewTask> batch_of(const std::string& type, const std::vector<std::string>& args, EnqueueOptions options = {}) {
  std::vector<NewTask> tasks;
  for (const std::string& a : args) tasks.push_back({type, a, options});
  return tasks;
}

TEST(DurableBatch, EveryTaskOfABatchRunsOnceAndTheIdsComeInOrder) {
  ScratchDir dir;
  Scheduler s{{.workers = 2}};
  std::mutex mu;
  std::multiset<std::string> seen;
  DurableTasks d(s, dir.path(), {.durability = Durability::none});
  d.define("t", [&](TaskContext&, std::span<const std::byte> args) {
    std::lock_guard lock(mu);
    seen.emplace(reinterpret_cast<const char*>(args.data()), args.size());
  });
  d.start();
  std::vector<std::string> args;
  for (int i = 0; i < 300; ++i) args.push_back("task " + std::to_string(i));
  const std::vector<TaskId> ids = d.enqueue_many(batch_of("t", args));
  ASSERT_EQ(ids.size(), args.size());
  for (std::size_t i = 1; i < ids.size(); ++i) EXPECT_LT(ids[i - 1], ids[i]) << "ids out of order at " << i;
  EXPECT_TRUE(d.enqueue_many({}).empty());
  d.shutdown();
  EXPECT_EQ(seen, std::multiset<std::string>(args.begin(), args.end()));
  EXPECT_EQ(d.stats().live, 0u);
}

// The point of a batch: 200 tasks made durable by one wait, not 200.
TEST(DurableBatch, ABatchIsMadeDurableByOneSyncInSyncMode) {
  ScratchDir dir;
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), {.durability = Durability::sync});
  d.define("later", [](TaskContext&, std::span<const std::byte>) {});
  d.start();
  const std::uint64_t syncs_before = d.journal().stats().syncs;
  std::vector<std::string> args(200, "x");
  d.enqueue_many(batch_of("later", args, {.delay = std::chrono::hours(1)}));  // nothing runs meanwhile
  const std::uint64_t syncs = d.journal().stats().syncs - syncs_before;
  EXPECT_GE(syncs, 1u);
  EXPECT_LE(syncs, 2u) << "a batch of 200 took " << syncs << " fdatasyncs";
  EXPECT_EQ(d.scheduled().size(), 200u);
  d.shutdown(ShutdownMode::cancel);
}

TEST(DurableBatch, OneInvalidTaskRefusesTheWholeBatchNamingItAndLeavesNoKeyBehind) {
  ScratchDir dir;
  std::atomic<int> ran{0};
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), {.durability = Durability::none});
  d.define("t", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
  d.start();
  std::vector<NewTask> tasks = {{"t", "a", {.idempotency_key = "k1"}}, {"t", "b"}, {"no_such_type", "c"}};
  try {
    d.enqueue_many(tasks);
    FAIL() << "a batch with an unknown type was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_type"), std::string::npos) << e.what();
  }
  const std::string too_big((64u << 20) + 1, 'x');
  tasks = {{"t", "a", {.idempotency_key = "k1"}}, {"t", too_big}};
  EXPECT_THROW(d.enqueue_many(tasks), InvalidArgument);
  EXPECT_EQ(d.stats().live, 0u);
  const TaskId fresh = d.enqueue("t", "a", {.idempotency_key = "k1"});  // the key was never taken
  d.shutdown();
  EXPECT_EQ(ran.load(), 1);
  EXPECT_EQ(d.status(fresh).state, DurableTaskStatus::State::completed);
}

TEST(DurableBatch, AKeyTakenBeforeOrRepeatedWithinTheBatchGivesTheExistingId) {
  ScratchDir dir;
  std::atomic<int> ran{0};
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), {.durability = Durability::none});
  d.define("t", [&](TaskContext&, std::span<const std::byte>) { ++ran; });
  d.start();
  const TaskId before = d.enqueue("t", "", {.idempotency_key = "old"});  // live or retained, the key holds
  const std::vector<TaskId> ids = d.enqueue_many(std::vector<NewTask>{
      {"t", "", {.idempotency_key = "new"}}, {"t", "", {.idempotency_key = "old"}}, {"t", "", {.idempotency_key = "new"}}, {"t", ""}});
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids[1], before);
  EXPECT_EQ(ids[2], ids[0]);
  EXPECT_NE(ids[3], ids[0]);
  d.shutdown(ShutdownMode::drain);
  EXPECT_EQ(ran.load(), 3);  // "old", "new" and the keyless one, once each
}

TEST(DurableBatch, ABatchThatReturnedIsThereAfterARestart) {
  ScratchDir dir;
  std::vector<TaskId> ids;
  {
    Scheduler s{{.workers = 1}};
    DurableTasks d(s, dir.path(), {.durability = Durability::sync});
    d.define("later", [](TaskContext&, std::span<const std::byte>) {});
    d.start();
    std::vector<std::string> args;
    for (int i = 0; i < 50; ++i) args.push_back(std::to_string(i));
    ids = d.enqueue_many(batch_of("later", args, {.delay = std::chrono::hours(1)}));
    d.shutdown(ShutdownMode::cancel);
  }
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), {.durability = Durability::sync});
  d.define("later", [](TaskContext&, std::span<const std::byte>) {});
  const DurableRecovery r = d.start();
  EXPECT_EQ(r.requeued, 50u);
  EXPECT_EQ(r.delayed, 50u);
  for (TaskId id : ids) EXPECT_EQ(d.status(id).state, DurableTaskStatus::State::scheduled) << "task " << id;
  d.shutdown(ShutdownMode::cancel);
}

TEST(DurableBatch, ABatchBeforeStartOrAfterShutdownIsAClearError) {
  ScratchDir dir;
  Scheduler s{{.workers = 1}};
  DurableTasks d(s, dir.path(), {.durability = Durability::none});
  d.define("t", [](TaskContext&, std::span<const std::byte>) {});
  const std::vector<NewTask> one = {{"t", ""}};
  EXPECT_THROW(d.enqueue_many(one), Error);
  d.start();
  d.shutdown();
  EXPECT_THROW(d.enqueue_many(one), Error);
}

}  // namespace
}  // namespace ordo
