// Durable tasks: running one attempt (START before the handler, then
// COMPLETE, FAIL with a backoff, or DEAD), checkpoints, and a runner the
// scheduler dropped unrun.
#include <algorithm>
#include <chrono>
#include <cmath>

#include "durable/runtime.hpp"
#include "journal/records.hpp"
#include "ordo/observability.hpp"

namespace ordo::detail {

// The runtime whose handler this thread is running, if any: shutdown()
// called from there must not wait for that very handler.
thread_local const DurableRuntime* t_in_handler_of = nullptr;

namespace {

std::span<const std::byte> as_span(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// A TaskContext's view of an attempt on the journal store.
class JournalAttempt final : public AttemptView {
 public:
  JournalAttempt(DurableRuntime& rt, JournaledTask& task) : rt_(rt), task_(task) {}
  TaskId id() const noexcept override { return task_.id; }
  const std::string& type() const noexcept override { return task_.type; }
  unsigned attempt() const noexcept override { return task_.attempts; }
  std::string_view args() const noexcept override { return task_.args; }
  std::span<const std::byte> last_checkpoint() const noexcept override { return as_span(task_.checkpoint()); }
  void checkpoint(std::span<const std::byte> bytes) override { rt_.checkpoint(task_, bytes); }
  pg_conn* transaction() override {
    throw Error("ordo: TaskContext::transaction(): task " + std::to_string(task_.id) +
                " is kept in a journal, not in PostgreSQL");
  }

 private:
  DurableRuntime& rt_;
  JournaledTask& task_;
};

}  // namespace

std::int64_t retry_delay_ns(const RetryPolicy& p, unsigned attempt, std::uint64_t& rng) noexcept {
  double ns = static_cast<double>(std::chrono::nanoseconds(p.initial_backoff).count()) *
              std::pow(p.multiplier, static_cast<double>(attempt - 1));
  ns = std::min(ns, static_cast<double>(std::chrono::nanoseconds(p.max_backoff).count()));
  rng ^= rng << 13;  // xorshift64: jitter, not cryptography
  rng ^= rng >> 7;
  rng ^= rng << 17;
  const double unit = static_cast<double>(rng >> 11) / static_cast<double>(1ull << 53);  // [0, 1)
  ns *= 1.0 + p.jitter * (2.0 * unit - 1.0);
  return static_cast<std::int64_t>(std::max(0.0, ns));
}

std::int64_t DurableRuntime::backoff_ns(JournaledTask& task, unsigned attempt) {
  return retry_delay_ns(type_of(task)->options.retry, attempt, rng_);  // run() found the type; mu_ guards rng_
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
  JournalAttempt view(*this, task);
  TaskContext ctx = context_for(view);
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

}  // namespace ordo::detail
