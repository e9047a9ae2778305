// Durable tasks: running tasks on the scheduler, retries, the dead set,
// delays, idempotency keys, checkpoints, recovery at start(), shutdown.
// Replay of the journal is durable_replay.cpp, workflows durable_workflows.cpp;
// the records' payloads are specified in docs/journal-format.md.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include "core/scheduler_core.hpp"
#include "durable/runtime.hpp"
#include "journal/records.hpp"
#include "ordo/observability.hpp"
#include "ordo/resource.hpp"

namespace ordo {

std::string DurableRecovery::describe() const {
  std::ostringstream out;
  out << "requeued " << requeued << " durable task(s) (" << interrupted << " interrupted, " << delayed
      << " waiting for a time), " << dead << " dead, " << keys << " idempotency key(s)";
  return out.str();
}

namespace detail {
namespace {

// The task object the scheduler runs: runs the task, or, destroyed unrun
// (the scheduler cancelled it or refused it), tells the runtime so.
struct Runner {
  DurableRuntime* rt;
  TaskId id;
  Runner(DurableRuntime* rt, TaskId id) noexcept : rt(rt), id(id) {}
  Runner(Runner&& other) noexcept : rt(std::exchange(other.rt, nullptr)), id(other.id) {}
  Runner& operator=(Runner&&) = delete;
  ~Runner() {
    if (rt != nullptr) rt->dropped(id);
  }
  void operator()() { std::exchange(rt, nullptr)->run(id); }
};

// The runtime whose handler this thread is running, if any: shutdown()
// called from there must not wait for that very handler.
thread_local const DurableRuntime* t_in_handler_of = nullptr;

std::span<const std::byte> as_span(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

}  // namespace

DurableRuntime::DurableRuntime(Scheduler& scheduler, const std::string& directory, JournalOptions journal,
                               DurableOptions options)
    : scheduler_(scheduler), options_(options), start_written_always_(journal.durability == Durability::sync) {
  journal_ = Journal::open(directory, std::move(journal), [this](const RecordView& r) { replay(r); });
  // Ids are never reused, also those of tasks whose records compaction dropped.
  next_id_ = std::max(next_id_, journal_->recovery().highest_task + 1);
  scheduler_.core().add_stats_source(this, [this](SchedulerStats& st) { st.durable.push_back(stats()); });
}

DurableRuntime::~DurableRuntime() {
  scheduler_.core().remove_stats_source(this);
  shutdown(ShutdownMode::drain);
}

bool DurableRuntime::key_taken_locked(const std::string& key, TaskId& existing) const {
  if (key.empty()) return false;
  auto it = keys_.find(key);
  if (it == keys_.end()) return false;
  if (it->second.retain_until_ns != 0 && it->second.retain_until_ns <= wall_now_ns()) return false;
  existing = it->second.id;
  return true;
}

void DurableRuntime::define(std::string type, TaskHandler handler, TaskTypeOptions options) {
  std::lock_guard lock(mu_);
  if (started_) throw Error("ordo: DurableTasks::define('" + type + "') after start()");
  if (type.empty() || type.size() > 0xffff) throw InvalidArgument("ordo: a durable task type needs a name (1..65535 bytes)");
  if (!handler) throw InvalidArgument("ordo: durable task type '" + type + "' has no handler");
  if (options.retry.max_attempts == 0) throw InvalidArgument("ordo: durable task type '" + type + "' needs max_attempts >= 1");
  if (!types_.emplace(type, TaskType{std::move(handler), options}).second) {
    throw InvalidArgument("ordo: durable task type '" + type + "' is already defined");
  }
}

const TaskType* DurableRuntime::type_of(JournaledTask& task) const {
  if (task.kind == nullptr) {
    auto it = types_.find(task.type);
    if (it != types_.end()) task.kind = &it->second;
  }
  return task.kind;
}

unsigned DurableRuntime::max_attempts_of(JournaledTask& task) const {
  if (task.max_attempts != 0) return task.max_attempts;
  const TaskType* type = type_of(task);
  return type == nullptr ? 1 : type->options.retry.max_attempts;
}

std::int64_t DurableRuntime::backoff_ns(JournaledTask& task, unsigned attempt) {
  const RetryPolicy& p = type_of(task)->options.retry;  // run() found the type
  double ns = static_cast<double>(std::chrono::nanoseconds(p.initial_backoff).count()) *
              std::pow(p.multiplier, static_cast<double>(attempt - 1));
  ns = std::min(ns, static_cast<double>(std::chrono::nanoseconds(p.max_backoff).count()));
  rng_ ^= rng_ << 13;  // xorshift64 (mu_ held): jitter, not cryptography
  rng_ ^= rng_ >> 7;
  rng_ ^= rng_ << 17;
  const double unit = static_cast<double>(rng_ >> 11) / static_cast<double>(1ull << 53);  // [0, 1)
  ns *= 1.0 + p.jitter * (2.0 * unit - 1.0);
  return static_cast<std::int64_t>(std::max(0.0, ns));
}

void DurableRuntime::schedule_locked(JournaledTask& task, std::int64_t due_ns, bool retrying) {
  task.state = JournaledTask::State::waiting;
  task.due_ns = due_ns;
  task.retrying = retrying;
  const bool earliest = timers_.empty() || due_ns < timers_.begin()->first;
  timers_.emplace(due_ns, task.id);
  if (earliest) timer_cv_.notify_one();  // else the timer already wakes in time
}

void DurableRuntime::queue_locked(JournaledTask& task) {
  task.state = JournaledTask::State::queued;
  task.due_ns = 0;
  ++in_flight_;
  postings_.push_back(task.id);
}

void DurableRuntime::post_pending(std::unique_lock<std::mutex>& lock) {
  while (!postings_.empty()) {
    // What each post needs is read under mu_; the posts run without it, in
    // one go (a refused post destroys its Runner, which takes mu_).
    struct Posting {
      TaskId id;
      SubmitOptions options;
    };
    std::vector<Posting> batch;
    batch.reserve(postings_.size());
    for (TaskId id : postings_) {
      const JournaledTask& task = tasks_.at(id);
      Posting p{id, SubmitOptions{.priority = Priority{task.level}}};
      for (const auto& [name, amount] : task.needs()) p.options.needs.push_back({scheduler_.find_resource_group(name), amount});
      batch.push_back(std::move(p));
    }
    postings_.clear();
    lock.unlock();
    for (Posting& p : batch) {
      try {
        scheduler_.post(Runner(this, p.id), std::move(p.options));
      } catch (...) {
        // Refused (the scheduler is stopping, or a need no longer fits): the
        // Runner was dropped, which left the task live in the journal.
      }
    }
    lock.lock();
  }
}

DurableRecovery DurableRuntime::start() {
  std::unique_lock lock(mu_);
  if (started_) throw Error("ordo: DurableTasks::start() called twice");
  DurableRecovery report;
  std::vector<std::pair<TaskId, std::string>> to_bury;  // (task, reason)
  for (auto& [id, task] : tasks_) {
    if (task.state == JournaledTask::State::dead) continue;
    // What this process lacks to run the task: its type, or a resource
    // group (or room in one) that it needs. Each has its own error.
    enum class Lack { nothing, type, group, room } lack = Lack::nothing;
    std::string problem;
    if (!types_.count(task.type)) {
      lack = Lack::type;
      problem = "its type '" + task.type + "' is not defined";
    } else {
      for (const auto& [name, amount] : task.needs()) {
        const ResourceGroup g = scheduler_.find_resource_group(name);
        if (!g.valid()) {
          lack = Lack::group;
          problem = "its type '" + task.type + "' needs resource group '" + name + "', which the scheduler does not have";
          break;
        }
        if (amount > g.limit()) {
          lack = Lack::room;
          problem = "its type '" + task.type + "' needs " + std::to_string(amount) + " of resource group '" + name +
                    "', whose limit is " + std::to_string(g.limit());
          break;
        }
      }
    }
    if (lack == Lack::nothing) continue;
    if (!options_.unknown_types_to_dead) {
      const std::string what = "ordo: the journal holds durable task " + std::to_string(id) + ", but " + problem;
      const std::string or_dead = ", or set DurableOptions::unknown_types_to_dead)";
      if (lack == Lack::type) throw UnknownTaskType(what + " (define it before start()" + or_dead);
      if (lack == Lack::group) throw UnknownResourceGroup(what + " (create it before start()" + or_dead);
      throw InvalidArgument(what + " (raise the limit before start()" + or_dead);
    }
    to_bury.emplace_back(id, "recovery: " + problem);
  }
  auto bury = [&](JournaledTask& task, const std::string& reason) {
    journal_->append(RecordType::dead, task.id, records::encode(records::Dead{task.attempts, reason}).view());
    task.state = JournaledTask::State::dead;
    task.more().last_error = reason;
  };
  for (auto& [id, reason] : to_bury) bury(tasks_.at(id), reason);
  // Nodes of a workflow whose WORKFLOW record never made it: the process
  // died inside enqueue_workflow, which had not returned. Never accepted,
  // so dropped (journaled, so that compaction forgets them too).
  for (const auto& [flow_id, nodes] : unlinked_nodes_) {
    for (TaskId node_id : nodes) {
      if (!tasks_.count(node_id)) continue;
      journal_->append(RecordType::cancel, node_id);
      tasks_.erase(node_id);
    }
  }
  unlinked_nodes_.clear();
  // Workflows: a node without an ENQUEUE was completed and compacted away.
  std::vector<TaskId> finished_flows;
  for (auto& [fid, flow] : flows_) {
    const auto n = static_cast<std::uint32_t>(flow->node_ids.size());
    flow->pending.assign(n, 0);
    flow->remaining = 0;
    // A discarded node and what depends on it never run (their records may
    // be gone: compaction, or a crash between the discard's records). What
    // the journal still holds of them is cancelled now.
    std::vector<bool> doomed(n, false);
    std::vector<std::uint32_t> discarded;
    for (std::uint32_t i = 0; i < n; ++i) {
      if (!flow->discarded[i]) continue;
      discarded.push_back(i);
      for (std::uint32_t j : flow->doomed_with(i)) doomed[j] = true;
    }
    if (!discarded.empty()) {
      flow->failed = true;
      // Again, for a discard made by ordo-wal (a node's CANCEL only).
      journal_->append(RecordType::checkpoint, fid, records::encode(records::WorkflowCheckpoint{discarded}).view());
    }
    for (std::uint32_t i = 0; i < n; ++i) {
      if (doomed[i] && flow->node_ids[i] != 0 && tasks_.count(flow->node_ids[i])) {
        journal_->append(RecordType::cancel, flow->node_ids[i]);
        tasks_.erase(flow->node_ids[i]);
      }
      if (doomed[i] || flow->node_ids[i] == 0 || !tasks_.count(flow->node_ids[i])) flow->done[i] = true;
      if (!flow->done[i]) ++flow->remaining;
    }
    for (std::uint32_t i = 0; i < n; ++i) {
      for (std::uint32_t p : flow->pred[i]) flow->pending[i] += flow->done[p] ? 0 : 1;
      if (flow->done[i] || flow->pending[i] == 0) continue;
      JournaledTask& task = tasks_.at(flow->node_ids[i]);
      if (task.state != JournaledTask::State::dead) {
        task.state = JournaledTask::State::blocked;
        ++blocked_;
      }
    }
    if (flow->remaining == 0) finished_flows.push_back(fid);  // died between its last node and its COMPLETE
  }
  for (TaskId fid : finished_flows) finish_flow_locked(*flows_.at(fid));
  report.workflows = flows_.size();
  for (auto& [id, task] : tasks_) {
    switch (task.state) {
      case JournaledTask::State::blocked:
        break;
      case JournaledTask::State::dead:
        ++report.dead;
        ++dead_;
        break;
      case JournaledTask::State::running:  // it had started when the process died
        ++report.interrupted;
        if (task.attempts >= max_attempts_of(task)) {
          bury(task, "interrupted on its last attempt (the process died while it ran)");
          ++report.dead;
          ++dead_;
          break;
        }
        [[fallthrough]];
      case JournaledTask::State::queued:
        ++report.requeued;
        queue_locked(task);
        break;
      case JournaledTask::State::waiting:
        ++report.requeued;
        ++report.delayed;
        schedule_locked(task, task.due_ns, task.retrying);
        break;
    }
  }
  report.keys = keys_.size();
  started_ = true;
  timer_ = std::thread([this] { timer_loop(); });
  post_pending(lock);
  return report;
}

TaskId DurableRuntime::enqueue(std::string_view type, std::span<const std::byte> args, EnqueueOptions options) {
  auto type_it = types_.find(std::string(type));
  if (type_it == types_.end()) throw InvalidArgument("ordo: no durable task type named '" + std::string(type) + "'");
  if (options.needs.size() > records::kMaxNeeds) throw InvalidArgument("ordo: a durable task may need at most 255 groups");
  std::vector<std::pair<std::string, std::uint64_t>> needs;  // journaled by name, resolved by name at each start
  needs.reserve(options.needs.size());
  for (const Need& need : options.needs) {
    if (!need.group.valid()) throw InvalidArgument("ordo: a need of a durable task names no resource group (a default-constructed ResourceGroup)");
    const std::string& name = need.group.name();
    records::check_str16(name, "a resource group name a durable task needs");
    // name() refers to the group's own string: the same address is the same
    // group, so a group of another scheduler with this name is refused.
    const ResourceGroup mine = scheduler_.find_resource_group(name);
    if (!mine.valid() || &mine.name() != &name) {
      throw InvalidArgument("ordo: durable task needs resource group '" + name + "', which is not this scheduler's");
    }
    if (need.amount == 0 || need.amount > mine.limit()) {
      throw InvalidArgument("ordo: durable task needs " + std::to_string(need.amount) + " of resource group '" + name +
                            "', whose limit is " + std::to_string(mine.limit()));
    }
    needs.emplace_back(name, need.amount);
  }
  records::check_str16(options.idempotency_key, "the idempotency key of a durable task");
  const auto priority = options.priority.value_or(type_it->second.options.priority.value_or(Priority::normal));
  if (static_cast<unsigned>(priority) >= scheduler_.level_count()) {
    throw InvalidArgument("ordo: priority level " + std::to_string(static_cast<unsigned>(priority)) +
                          " is beyond the scheduler's levels");
  }
  std::int64_t due = 0;
  if (options.run_at) due = std::chrono::duration_cast<std::chrono::nanoseconds>(options.run_at->time_since_epoch()).count();
  if (options.delay) due = wall_now_ns() + std::chrono::nanoseconds(*options.delay).count();

  std::unique_lock lock(mu_);
  if (!started_) throw Error("ordo: DurableTasks::enqueue before start()");
  if (stopping_) throw Error("ordo: DurableTasks is shutting down and accepts no new tasks");
  if (TaskId existing = 0; key_taken_locked(options.idempotency_key, existing)) return existing;
  JournaledTask* task = &tasks_[next_id_];  // stays in tasks_ until it completes, which needs the post below
  task->id = next_id_++;
  task->type = std::string(type);
  task->kind = &type_it->second;
  task->args.assign(reinterpret_cast<const char*>(args.data()), args.size());
  task->level = static_cast<std::uint8_t>(priority);
  task->max_attempts = options.max_attempts.value_or(0);
  if (!options.idempotency_key.empty() || !needs.empty()) {
    task->more().key = options.idempotency_key;
    task->more().needs = std::move(needs);
  }
  task->state = JournaledTask::State::waiting;  // not runnable until its ENQUEUE is durable
  JournaledTask& j = *task;
  const TaskId id = j.id;
  if (!j.key().empty()) keys_[j.key()] = KeyEntry{j.id, 0};
  lock.unlock();

  records::Enqueue record{.type = j.type, .level = j.level, .max_attempts = j.max_attempts, .run_at_ns = due,
                          .key = j.key(), .needs = {}, .workflow = 0, .node = 0, .args = j.args};
  for (const auto& [name, amount] : j.needs()) record.needs.push_back({name, amount});
  try {
    journal_->append_durable(RecordType::enqueue, j.id, records::encode(record).view());
  } catch (...) {
    lock.lock();
    if (!j.key().empty()) keys_.erase(j.key());
    tasks_.erase(j.id);
    notify_drain_locked();
    throw;
  }
  lock.lock();
  if (due > wall_now_ns()) {
    schedule_locked(j, due, false);
  } else {
    queue_locked(j);
    post_pending(lock);  // j may be run, and gone, once this drops the lock
  }
  return id;
}

void DurableRuntime::run(TaskId id) {
  std::unique_lock lock(mu_);
  --in_flight_;
  auto it = tasks_.find(id);
  if (it == tasks_.end() || it->second.state != JournaledTask::State::queued) {
    notify_drain_locked();
    return;
  }
  JournaledTask& task = it->second;
  if (cancelling_) {  // shutdown(cancel): it stays live in the journal for the next start
    notify_drain_locked();
    return;
  }
  task.state = JournaledTask::State::running;
  ++running_;
  const unsigned attempt = ++task.attempts;
  const TaskType* type = type_of(task);  // start() and enqueue() made sure it is defined
  const bool write_start_first = start_written_always_ || task.recovered || attempt > 1;
  lock.unlock();

  const records::PayloadWriter start = records::encode(records::Start{attempt});
  try {
    // In the OS before the handler runs (not synced: a worker never waits
    // for the disk): a handler that kills the process at once has still
    // used an attempt, so a poison pill ends in the dead set instead of a
    // crash loop. Concurrent workers' STARTs share one write. In async and
    // none modes the first attempt of a task enqueued by this process skips
    // the wait (a write per task would cost a third of their throughput):
    // should it kill the process before its START is written, the restart
    // recovers it, and from then on every attempt is counted: one
    // uncounted run at most.
    const Lsn lsn = journal_->append(RecordType::start, id, start.view());
    if (write_start_first) journal_->wait_written(lsn);
  } catch (...) {
    lock.lock();
    --running_;
    journal_lost_locked(task);
    return;
  }
  TaskContext ctx(*this, task);
  std::string error;
  bool ok = false;
  const DurableRuntime* outer = std::exchange(t_in_handler_of, this);  // a helping wait may nest runs
  try {
    trace_label(task.type);
    type->handler(ctx, as_span(task.args));
    ok = true;
  } catch (const std::exception& e) {
    error = e.what();
  } catch (...) {
    error = "a non-standard exception";
  }
  t_in_handler_of = outer;
  if (error.empty() && !ok) error = "failed";

  lock.lock();
  --running_;
  try {
    record_outcome_locked(task, attempt, ok, error);
  } catch (...) {  // the journal can record nothing more (an I/O error, named by the journal)
    journal_lost_locked(task);
    return;
  }
  notify_drain_locked();
  post_pending(lock);  // successors a workflow node released
}

void DurableRuntime::journal_lost_locked(JournaledTask& task) noexcept {
  // Whatever the journal last holds for this task is what the next start
  // sees; this process stops counting on it, and a drain no longer waits
  // for it.
  task.state = JournaledTask::State::queued;
  journal_failed_ = true;
  notify_drain_locked();
}

void DurableRuntime::record_outcome_locked(JournaledTask& task, unsigned attempt, bool ok, const std::string& error) {
  const TaskId id = task.id;
  if (ok) {
    const std::int64_t retain_until =
        task.key().empty() ? 0 : wall_now_ns() + std::chrono::nanoseconds(options_.key_retention).count();
    const Lsn complete =
        journal_->append(RecordType::complete, id, records::encode(records::Complete{retain_until, task.key()}).view());
    if (!task.key().empty()) keys_[task.key()] = KeyEntry{id, retain_until};
    ++completed_;
    const TaskId flow_id = task.flow;
    const std::uint32_t node = task.node;
    tasks_.erase(id);  // `task` is gone: a failure below must not reach journal_lost_locked(task)
    if (flow_id == 0 || !flows_.count(flow_id)) return;
    // Successors start only once this COMPLETE is durable: were they to run
    // before, a crash could lose it and run this node again after them.
    // The worker does not wait for the disk: the journal calls back.
    ++releasing_;
    bool later = false;
    try {
      later = journal_->on_durable(complete, [this, flow_id, node](bool durable) {
        std::unique_lock lock(mu_);
        release_successors_locked(flow_id, node, durable);
        post_pending(lock);
      });
    } catch (...) {  // the journal failed after the append: the next start releases them
      release_successors_locked(flow_id, node, false);
      return;
    }
    if (!later) release_successors_locked(flow_id, node, true);
  } else if (attempt >= max_attempts_of(task)) {
    ++failed_attempts_;
    journal_->append(RecordType::dead, id, records::encode(records::Dead{attempt, error}).view());
    task.state = JournaledTask::State::dead;
    task.more().last_error = error;
    ++dead_;
  } else {
    ++failed_attempts_;
    const std::int64_t due = wall_now_ns() + backoff_ns(task, attempt);
    journal_->append(RecordType::fail, id, records::encode(records::Fail{attempt, due, error}).view());
    task.more().last_error = error;
    schedule_locked(task, due, true);
  }
}

void DurableRuntime::dropped(TaskId id) noexcept {
  std::lock_guard lock(mu_);
  --in_flight_;
  auto it = tasks_.find(id);
  if (it != tasks_.end() && it->second.state == JournaledTask::State::queued) scheduler_refused_ = true;
  notify_drain_locked();
}

void DurableRuntime::checkpoint(JournaledTask& task, std::span<const std::byte> bytes) {
  journal_->append_durable(RecordType::checkpoint, task.id, bytes);
  std::lock_guard lock(mu_);
  task.more().checkpoint.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void DurableRuntime::timer_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    if (cancelling_) return;  // set by shutdown(cancel), and by any shutdown once it is done
    if (timers_.empty()) {
      timer_cv_.wait(lock);
      continue;
    }
    const std::int64_t now = wall_now_ns();
    if (timers_.begin()->first > now) {
      timer_cv_.wait_for(lock, std::chrono::nanoseconds(timers_.begin()->first - now));
      continue;
    }
    while (!timers_.empty() && timers_.begin()->first <= now) {
      const TaskId id = timers_.begin()->second;
      timers_.erase(timers_.begin());
      auto it = tasks_.find(id);
      if (it != tasks_.end() && it->second.state == JournaledTask::State::waiting) queue_locked(it->second);
    }
    post_pending(lock);
  }
}

bool DurableRuntime::retry_dead(TaskId id) {
  std::unique_lock lock(mu_);
  auto it = tasks_.find(id);
  if (it == tasks_.end() || it->second.state != JournaledTask::State::dead) return false;
  if (!types_.count(it->second.type)) {
    throw UnknownTaskType("ordo: dead task " + std::to_string(id) + " has type '" + it->second.type +
                         "', which is not defined");
  }
  journal_->append_durable(RecordType::retry, id);
  it->second.attempts = 0;
  --dead_;
  queue_locked(it->second);
  post_pending(lock);
  return true;
}

bool DurableRuntime::discard_dead(TaskId id) {
  std::lock_guard lock(mu_);
  auto it = tasks_.find(id);
  if (it == tasks_.end() || it->second.state != JournaledTask::State::dead) return false;
  if (it->second.flow != 0) {
    if (auto flow = flows_.find(it->second.flow); flow != flows_.end()) {
      discard_node_locked(it->second, *flow->second);
      return true;
    }
  }
  journal_->append_durable(RecordType::cancel, id);
  if (!it->second.key().empty()) keys_.erase(it->second.key());
  tasks_.erase(it);
  --dead_;
  return true;
}

bool DurableRuntime::shutdown(ShutdownMode mode, std::optional<std::chrono::steady_clock::time_point> deadline) noexcept {
  std::unique_lock lock(mu_);
  if (stopped_) return true;
  stopping_ = true;
  if (mode == ShutdownMode::cancel) cancelling_ = true;
  timer_cv_.notify_all();
  // From inside a handler: waiting would wait for this very handler. The
  // shutdown has begun (nothing new is accepted; cancel: nothing queued
  // starts); a shutdown() outside any handler, or the destructor, waits.
  if (t_in_handler_of == this) return false;
  // drain: every task that is not dead finishes (timers included), unless
  // the scheduler stopped running our tasks; cancel: only what runs now.
  auto settled = [&] {
    if (in_flight_ != 0 || running_ != 0 || releasing_ != 0) return false;
    // Blocked nodes wait for a live predecessor (still counted here) or
    // for a dead one (which only retry_dead revives): neither keeps a drain.
    return cancelling_ || !started_ || scheduler_refused_ || journal_failed_ || tasks_.size() == dead_ + blocked_;
  };
  if (!deadline) {
    changed_.wait(lock, settled);
  } else if (!changed_.wait_until(lock, *deadline, settled)) {
    return false;  // begun, not done: a later call (or the destructor) finishes it
  }
  if (stopped_) return true;  // a concurrent call finished it while this one waited
  stopped_ = true;
  cancelling_ = true;  // the timer thread leaves
  changed_.notify_all();  // a concurrent shutdown() call
  timer_cv_.notify_all();
  lock.unlock();
  if (timer_.joinable()) timer_.join();
  try {
    journal_->sync();
  } catch (const std::exception&) {
    // Reported by the journal when it closes; nothing here can be retried.
  }
  return true;
}

DurableStats DurableRuntime::stats() const {
  DurableStats s;
  const JournalStats js = journal_->stats();  // lists the directory: outside mu_
  s.journal_bytes = js.bytes;
  s.last_fsync_us = js.last_sync_us;
  s.directory = journal_->directory();
  std::lock_guard lock(mu_);
  s.live = tasks_.size() - dead_;
  s.running = running_;
  s.dead = dead_;
  s.completed = completed_;
  s.failed_attempts = failed_attempts_;
  s.accepting = started_ && !stopping_;
  s.workflows = flows_.size();
  for (const auto& [due, id] : timers_) {
    auto it = tasks_.find(id);
    if (it == tasks_.end()) continue;
    (it->second.retrying ? s.retrying : s.delayed)++;
  }
  return s;
}

}  // namespace detail

TaskId TaskContext::id() const noexcept { return task_.id; }
const std::string& TaskContext::type() const noexcept { return task_.type; }
unsigned TaskContext::attempt() const noexcept { return task_.attempts; }
std::string_view TaskContext::args_text() const noexcept { return task_.args; }
void TaskContext::throw_checkpoint_size(std::size_t stored, std::size_t wanted) const {
  throw InvalidArgument("ordo: durable task " + std::to_string(task_.id) + " resumes from a checkpoint of " +
                        std::to_string(stored) + " bytes, but resume_from<T> asked for a T of " +
                        std::to_string(wanted) + " bytes (read last_checkpoint() to convert an older checkpoint)");
}
std::span<const std::byte> TaskContext::last_checkpoint() const noexcept {
  return {reinterpret_cast<const std::byte*>(task_.checkpoint().data()), task_.checkpoint().size()};
}
void TaskContext::checkpoint(std::span<const std::byte> bytes) { rt_.checkpoint(task_, bytes); }

DurableTasks::DurableTasks(Scheduler& scheduler, const std::string& directory, JournalOptions journal,
                           DurableOptions options)
    : rt_(std::make_unique<detail::DurableRuntime>(scheduler, directory, std::move(journal), options)) {}
DurableTasks::~DurableTasks() = default;
void DurableTasks::define(std::string type, TaskHandler handler, TaskTypeOptions options) {
  rt_->define(std::move(type), std::move(handler), options);
}
DurableRecovery DurableTasks::start() { return rt_->start(); }
TaskId DurableTasks::enqueue(std::string_view type, std::span<const std::byte> args, EnqueueOptions options) {
  return rt_->enqueue(type, args, std::move(options));
}
TaskId DurableTasks::enqueue_workflow(const DurableWorkflow& workflow, std::string idempotency_key) {
  return rt_->enqueue_workflow(workflow, std::move(idempotency_key));
}
std::vector<DeadTask> DurableTasks::dead() const { return rt_->dead(); }
bool DurableTasks::retry_dead(TaskId id) { return rt_->retry_dead(id); }
bool DurableTasks::discard_dead(TaskId id) { return rt_->discard_dead(id); }
void DurableTasks::shutdown(ShutdownMode mode) { rt_->shutdown(mode); }
bool DurableTasks::shutdown_for(std::chrono::milliseconds timeout, ShutdownMode mode) {
  return rt_->shutdown(mode, std::chrono::steady_clock::now() + timeout);
}
DurableTaskStatus DurableTasks::status(TaskId id) const { return rt_->status(id); }
std::vector<DurableTaskStatus> DurableTasks::scheduled() const { return rt_->waiting(false); }
std::vector<DurableTaskStatus> DurableTasks::retrying() const { return rt_->waiting(true); }
DurableStats DurableTasks::stats() const { return rt_->stats(); }
Journal& DurableTasks::journal() noexcept { return rt_->journal(); }

}  // namespace ordo
