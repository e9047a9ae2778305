// DurableRuntime: the state behind ordo::DurableTasks — the journaled tasks,
// their types, idempotency keys, the timer for delayed and retrying tasks.
//
// Thread-safety: mu_ guards tasks_, keys_, timers_ and the counters; types_
// is written before start() and read-only after. Journal appends happen
// outside mu_ (the journal has its own lock). Invariants: a task is in tasks_
// from its ENQUEUE until COMPLETE or CANCEL; once started, a task in state
// `waiting` with a due time has exactly one entry in timers_ (without one,
// it is an enqueue whose ENQUEUE is not yet durable); in_flight_ counts tasks posted to the
// scheduler whose runner has not finished or been dropped; releasing_
// counts journal callbacks not yet called back.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "durable/backend.hpp"
#include "ordo/durable.hpp"
#include "ordo/scheduler.hpp"
#include "util/block_pool.hpp"
#include "util/clock.hpp"

namespace ordo::detail {

struct TaskType;

// What few tasks have, kept apart so that a plain task stays small (recovery
// holds hundreds of thousands of them).
struct JournaledTaskExtras {
  std::string key;
  std::vector<std::pair<std::string, std::uint64_t>> needs;
  std::string checkpoint;
  std::string last_error;
};

struct JournaledTask {
  // blocked: a workflow node whose predecessors have not all completed.
  enum class State : std::uint8_t { queued, running, waiting, dead, blocked };
  TaskId id = 0;
  std::string type;
  const TaskType* kind = nullptr;  // types_[type], found once (types_ does not change after start())
  std::string args;
  std::int64_t due_ns = 0;  // system clock; while waiting
  TaskId flow = 0;           // the workflow it is a node of, or 0
  std::uint32_t node = 0;
  unsigned max_attempts = 0;
  unsigned attempts = 0;  // STARTs journaled so far
  std::uint8_t level = 1;
  State state = State::queued;
  bool retrying = false;  // waiting for a backoff (else for run_at)
  // Found live by a recovery: its process may have died running it, so
  // each of its STARTs is written before the handler runs (see run_task).
  bool recovered = false;
  std::unique_ptr<JournaledTaskExtras> extra;

  JournaledTaskExtras& more() {
    if (!extra) extra = std::make_unique<JournaledTaskExtras>();
    return *extra;
  }
  const std::string& key() const { return extra ? extra->key : kNone.key; }
  const auto& needs() const { return extra ? extra->needs : kNone.needs; }
  const std::string& checkpoint() const { return extra ? extra->checkpoint : kNone.checkpoint; }
  const std::string& last_error() const { return extra ? extra->last_error : kNone.last_error; }

 private:
  static inline const JournaledTaskExtras kNone{};
};

// A live durable workflow: its graph and which nodes are done.
struct DurableFlow {
  TaskId id = 0;
  std::string name;
  std::string key;
  std::vector<std::string> node_names;
  std::vector<TaskId> node_ids;  // 0: no ENQUEUE seen (completed and compacted away)
  std::vector<std::vector<std::uint32_t>> succ;
  std::vector<std::vector<std::uint32_t>> pred;
  std::vector<bool> done;       // completed, or cancelled with a discarded node
  std::vector<bool> discarded;  // dead nodes discarded: the workflow failed (journaled as its CHECKPOINT)
  std::vector<std::uint32_t> pending;  // predecessors not done
  std::uint32_t remaining = 0;         // nodes not done
  bool failed = false;                 // a node was discarded: it ends without retaining its key

  // `from` and every node that depends on it, directly or not, not yet done.
  std::vector<std::uint32_t> doomed_with(std::uint32_t from) const;
};

struct TaskType {
  TaskHandler handler;
  TaskTypeOptions options;
};

class DurableRuntime final : public DurableBackend {
 public:
  DurableRuntime(Scheduler& scheduler, const std::string& directory, JournalOptions journal, DurableOptions options);
  ~DurableRuntime();

  void define(std::string type, TaskHandler handler, TaskTypeOptions options) override;
  DurableRecovery start() override;
  TaskId enqueue(std::string_view type, std::span<const std::byte> args, EnqueueOptions options) override;
  std::vector<TaskId> enqueue_many(std::span<const NewTask> batch) override;
  TaskId enqueue_workflow(const DurableWorkflow& workflow, std::string key) override;
  std::vector<DeadTask> dead() const override;
  DurableTaskStatus status(TaskId id) const override;
  std::vector<DurableTaskStatus> waiting(bool retrying) const override;
  bool retry_dead(TaskId id) override;
  bool discard_dead(TaskId id) override;
  bool shutdown(ShutdownMode mode, std::optional<std::chrono::steady_clock::time_point> deadline) noexcept override;
  DurableStats stats() const override;
  Journal* journal() noexcept override { return journal_.get(); }
  void checkpoint(JournaledTask& task, std::span<const std::byte> bytes);

  // A posted task's runner: runs it, or, dropped unrun (scheduler cancel),
  // leaves it live in the journal.
  void run(TaskId id);
  void dropped(TaskId id) noexcept;

 private:
  // An enqueue that passed every check; `args` is the caller's.
  struct Accepted {
    const TaskType* kind = nullptr;
    std::vector<std::pair<std::string, std::uint64_t>> needs;
    std::uint8_t level = 0;
    unsigned max_attempts = 0;
    std::int64_t due = 0;  // system clock, 0: now
    std::span<const std::byte> args;
  };
  // Throws InvalidArgument naming what is wrong; takes no lock.
  Accepted check_enqueue(std::string_view type, std::span<const std::byte> args, const EnqueueOptions& options) const;
  // mu_ held. Null, with `existing` set, when `key` names a task already;
  // else the new task, waiting (its needs moved out of `a`).
  JournaledTask* admit_locked(std::string_view type, Accepted& a, const std::string& key, TaskId& existing);
  Lsn append_enqueue(const JournaledTask& task, std::int64_t due);  // its ENQUEUE record, not waited for
  void forget_enqueue_locked(JournaledTask& task) noexcept;  // its ENQUEUE failed: task and key go
  void release_enqueue_locked(JournaledTask& task, std::int64_t due);  // durable: queued, or scheduled
  void replay(const RecordView& r);
  DurableTaskStatus describe_locked(const JournaledTask& task) const;
  void queue_locked(JournaledTask& task);  // marks it queued and notes it in postings_
  // Posts the tasks in postings_ to the scheduler, dropping mu_ around each
  // post (a refused post destroys its Runner, which takes mu_).
  void post_pending(std::unique_lock<std::mutex>& lock);
  void schedule_locked(JournaledTask& task, std::int64_t due_ns, bool retrying);
  void timer_loop();
  std::int64_t backoff_ns(JournaledTask& task, unsigned attempt);
  // A node completed (mu_ held): releases its successors; completes the
  // workflow (journaling it) when it was the last node.
  void node_done_locked(DurableFlow& flow, std::uint32_t node);
  // Journals the workflow's COMPLETE (retaining its key unless it failed)
  // and forgets it (mu_ held; `flow` dies). Throws what Journal::append throws.
  void finish_flow_locked(DurableFlow& flow);
  // discard_dead of a workflow node (mu_ held): journals the discard, cancels
  // the nodes that depend on it, and ends the workflow if nothing else is left.
  void discard_node_locked(JournaledTask& task, DurableFlow& flow);
  // enqueue_workflow could not journal the whole workflow: every trace of it
  // leaves memory, and the node records already appended are cancelled.
  void forget_workflow_locked(TaskId flow_id, std::uint32_t nodes, std::uint32_t appended) noexcept;
  // A node's COMPLETE became durable (or never will): node_done_locked.
  void release_successors_locked(TaskId flow_id, std::uint32_t node, bool durable) noexcept;
  bool key_taken_locked(const std::string& key, TaskId& existing) const;
  // After a run: journals COMPLETE, DEAD or FAIL and updates the task (mu_
  // held). Throws what Journal::append throws.
  void record_outcome_locked(JournaledTask& task, unsigned attempt, bool ok, const std::string& error);
  // An append for `task` failed: it is left as the journal last saw it.
  void journal_lost_locked(JournaledTask& task) noexcept;
  unsigned max_attempts_of(JournaledTask& task) const;
  const TaskType* type_of(JournaledTask& task) const;  // null when the type is not defined
  // Wakes a shutdown() waiting for the tasks to settle; nobody else waits on changed_.
  void notify_drain_locked() {
    if (stopping_) changed_.notify_all();
  }

  Scheduler& scheduler_;
  const DurableOptions options_;
  bool start_written_always_ = false;  // sync mode: every START is written before its handler
  std::unique_ptr<Journal> journal_;
  std::unordered_map<std::string, TaskType> types_;
  mutable std::mutex mu_;
  std::condition_variable changed_;   // tasks settled (only shutdown() waits, so only notified once stopping_)
  std::condition_variable timer_cv_;  // an earlier timer, or stopping: the timer thread
  // Node-based: a JournaledTask& stays valid until its erase. Nodes from a
  // BlockPool: a recovery builds hundreds of thousands at once.
  std::unordered_map<TaskId, JournaledTask, std::hash<TaskId>, std::equal_to<TaskId>,
                     PooledAllocator<std::pair<const TaskId, JournaledTask>>>
      tasks_;
  struct KeyEntry {
    TaskId id;
    std::int64_t retain_until_ns;  // 0 while the task is live
  };
  std::unordered_map<std::string, KeyEntry> keys_;
  std::multimap<std::int64_t, TaskId> timers_;
  std::vector<TaskId> postings_;  // queued, to be posted by post_pending()
  std::uint64_t dead_ = 0;       // tasks_ entries in state dead
  std::uint64_t blocked_ = 0;    // tasks_ entries in state blocked
  std::unordered_map<TaskId, std::unique_ptr<DurableFlow>> flows_;
  std::unordered_map<TaskId, std::vector<TaskId>> unlinked_nodes_;  // replay: workflow -> node tasks seen before it
  TaskId next_id_ = 1;
  bool started_ = false;
  bool stopping_ = false;
  bool cancelling_ = false;
  bool stopped_ = false;
  bool scheduler_refused_ = false;  // a Runner was dropped unrun: the scheduler is stopping
  bool journal_failed_ = false;     // an append failed: outcomes can no longer be recorded
  std::uint64_t in_flight_ = 0;
  std::uint64_t running_ = 0;
  std::uint64_t releasing_ = 0;  // completed workflow nodes whose COMPLETE is not yet durable
  std::uint64_t completed_ = 0;
  std::uint64_t failed_attempts_ = 0;
  std::uint64_t rng_ = 0x9e3779b97f4a7c15ull;  // jitter (mu_)
  std::thread timer_;
};

// The runtime whose handler this thread is running, if any: shutdown()
// called from there must not wait for that very handler.
extern thread_local const DurableRuntime* t_in_handler_of;

}  // namespace ordo::detail
