// Durable tasks: the runtime's life (opening the journal, defining types,
// shutdown) and the public facades, DurableTasks and TaskContext, that
// forward to it. Recovery is recovery.cpp, accepting tasks enqueue.cpp,
// running them attempts.cpp, waiting for a time timer.cpp, the dead set
// dead_set.cpp, status.cpp what a task's state is; replay.cpp reads the
// journal back and workflows.cpp runs durable workflows.
#include <sstream>

#include "core/scheduler_core.hpp"
#include "ordo/detail/access.hpp"
#include "durable/runtime.hpp"
#include "journal/records.hpp"

namespace ordo {

std::string DurableRecovery::describe() const {
  std::ostringstream out;
  out << "requeued " << requeued << " durable task(s) (" << interrupted << " interrupted, " << delayed
      << " waiting for a time), " << dead << " dead, " << keys << " idempotency key(s)";
  return out.str();
}

namespace detail {

DurableRuntime::DurableRuntime(Scheduler& scheduler, const std::string& directory, JournalOptions journal,
                               DurableOptions options)
    : scheduler_(scheduler), options_(options), start_written_always_(journal.durability == Durability::sync) {
  journal_ = Journal::open(directory, std::move(journal), [this](const RecordView& r) { replay(r); });
  // Ids are never reused, also those of tasks whose records compaction dropped.
  next_id_ = std::max(next_id_, journal_->recovery().highest_task + 1);
  detail::Access::core(scheduler_).add_stats_source(this, [this](SchedulerStats& st) { st.durable.push_back(stats()); });
}

DurableRuntime::~DurableRuntime() {
  detail::Access::core(scheduler_).remove_stats_source(this);
  shutdown(ShutdownMode::drain, std::nullopt);
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

TaskId TaskContext::id() const noexcept { return attempt_.id(); }
const std::string& TaskContext::type() const noexcept { return attempt_.type(); }
unsigned TaskContext::attempt() const noexcept { return attempt_.attempt(); }
std::string_view TaskContext::args_text() const noexcept { return attempt_.args(); }
void TaskContext::throw_checkpoint_size(std::size_t stored, std::size_t wanted) const {
  throw InvalidArgument("ordo: durable task " + std::to_string(attempt_.id()) + " resumes from a checkpoint of " +
                        std::to_string(stored) + " bytes, but resume_from<T> asked for a T of " +
                        std::to_string(wanted) + " bytes (read last_checkpoint() to convert an older checkpoint)");
}
std::span<const std::byte> TaskContext::last_checkpoint() const noexcept { return attempt_.last_checkpoint(); }
void TaskContext::checkpoint(std::span<const std::byte> bytes) { attempt_.checkpoint(bytes); }
pg_conn* TaskContext::transaction() { return attempt_.transaction(); }

namespace detail {

TaskId DurableBackend::enqueue_in(pg_conn*, std::string_view, std::string_view, EnqueueOptions) {
  throw Error("ordo: DurableTasks::enqueue_in needs the PostgreSQL store (this one is a journal)");
}
void DurableBackend::set_global_limit(const std::string& name, unsigned) {
  throw Error("ordo: global group '" + name + "' needs the PostgreSQL store (this one is a journal)");
}
void DurableBackend::set_global_rate(const std::string& name, double, unsigned) {
  throw Error("ordo: global group '" + name + "' needs the PostgreSQL store (this one is a journal)");
}

}  // namespace detail

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
std::vector<TaskId> DurableTasks::enqueue_many(std::span<const NewTask> tasks) { return rt_->enqueue_many(tasks); }
TaskId DurableTasks::enqueue_in(pg_conn* transaction, std::string_view type, std::string_view args,
                                EnqueueOptions options) {
  return rt_->enqueue_in(transaction, type, args, std::move(options));
}
void DurableTasks::set_global_limit(const std::string& name, unsigned limit) { rt_->set_global_limit(name, limit); }
void DurableTasks::set_global_rate(const std::string& name, double per_second, unsigned burst) {
  rt_->set_global_rate(name, per_second, burst);
}
TaskId DurableTasks::enqueue_workflow(const DurableWorkflow& workflow, std::string idempotency_key) {
  return rt_->enqueue_workflow(workflow, std::move(idempotency_key));
}
std::vector<DeadTask> DurableTasks::dead() const { return rt_->dead(); }
bool DurableTasks::retry_dead(TaskId id) { return rt_->retry_dead(id); }
bool DurableTasks::discard_dead(TaskId id) { return rt_->discard_dead(id); }
void DurableTasks::shutdown(ShutdownMode mode) { rt_->shutdown(mode, std::nullopt); }
bool DurableTasks::shutdown_for(std::chrono::milliseconds timeout, ShutdownMode mode) {
  return rt_->shutdown(mode, std::chrono::steady_clock::now() + timeout);
}
DurableTaskStatus DurableTasks::status(TaskId id) const { return rt_->status(id); }
std::vector<DurableTaskStatus> DurableTasks::scheduled() const { return rt_->waiting(false); }
std::vector<DurableTaskStatus> DurableTasks::retrying() const { return rt_->waiting(true); }
DurableStats DurableTasks::stats() const { return rt_->stats(); }
Journal& DurableTasks::journal() {
  Journal* journal = rt_->journal();
  if (journal == nullptr) throw Error("ordo: DurableTasks::journal(): this store is PostgreSQL, not a journal");
  return *journal;
}

}  // namespace ordo
