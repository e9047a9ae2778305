// Durable tasks: running jobs on the scheduler, retries, the dead set,
// delays, idempotency keys, checkpoints, recovery at start(), shutdown.
// Replay of the journal is durable_replay.cpp, workflows durable_workflows.cpp;
// the records' payloads are specified in docs/journal-format.md.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include "durable/codec.hpp"
#include "durable/runtime.hpp"
#include "core/scheduler_core.hpp"
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

// The task object the scheduler runs: runs the job, or, destroyed unrun
// (the scheduler cancelled it or refused it), tells the runtime so.
struct Runner {
  DurableRuntime* rt;
  JobId id;
  Runner(DurableRuntime* rt, JobId id) noexcept : rt(rt), id(id) {}
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
  detail::Access::core(scheduler_).add_stats_source(this, [this](SchedulerStats& st) { st.durable.push_back(stats()); });
}

DurableRuntime::~DurableRuntime() {
  detail::Access::core(scheduler_).remove_stats_source(this);
  shutdown(ShutdownMode::drain);
}

bool DurableRuntime::key_taken_locked(const std::string& key, JobId& existing) const {
  if (key.empty()) return false;
  auto it = keys_.find(key);
  if (it == keys_.end()) return false;
  if (it->second.retain_until_ns != 0 && it->second.retain_until_ns <= wall_now_ns()) return false;
  existing = it->second.id;
  return true;
}

void DurableRuntime::define(std::string type, JobHandler handler, JobTypeOptions options) {
  std::lock_guard lock(mu_);
  if (started_) throw Error("ordo: DurableTasks::define('" + type + "') after start()");
  if (type.empty() || type.size() > 0xffff) throw InvalidArgument("ordo: a durable task type needs a name (1..65535 bytes)");
  if (!handler) throw InvalidArgument("ordo: durable task type '" + type + "' has no handler");
  if (options.retry.max_attempts == 0) throw InvalidArgument("ordo: durable task type '" + type + "' needs max_attempts >= 1");
  if (!types_.emplace(type, JobType{std::move(handler), options}).second) {
    throw InvalidArgument("ordo: durable task type '" + type + "' is already defined");
  }
}

const JobType* DurableRuntime::type_of(DurableJob& job) const {
  if (job.kind == nullptr) {
    auto it = types_.find(job.type);
    if (it != types_.end()) job.kind = &it->second;
  }
  return job.kind;
}

unsigned DurableRuntime::max_attempts_of(DurableJob& job) const {
  if (job.max_attempts != 0) return job.max_attempts;
  const JobType* type = type_of(job);
  return type == nullptr ? 1 : type->options.retry.max_attempts;
}

std::int64_t DurableRuntime::backoff_ns(DurableJob& job, unsigned attempt) {
  const RetryPolicy& p = type_of(job)->options.retry;  // run() found the type
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

void DurableRuntime::schedule_locked(DurableJob& job, std::int64_t due_ns, bool retrying) {
  job.state = DurableJob::State::waiting;
  job.due_ns = due_ns;
  job.retrying = retrying;
  const bool earliest = timers_.empty() || due_ns < timers_.begin()->first;
  timers_.emplace(due_ns, job.id);
  if (earliest) timer_cv_.notify_one();  // else the timer already wakes in time
}

void DurableRuntime::queue_locked(DurableJob& job) {
  job.state = DurableJob::State::queued;
  job.due_ns = 0;
  ++in_flight_;
  postings_.push_back(job.id);
}

void DurableRuntime::post_pending(std::unique_lock<std::mutex>& lock) {
  while (!postings_.empty()) {
    // What each post needs is read under mu_; the posts run without it, in
    // one go (a refused post destroys its Runner, which takes mu_).
    struct Posting {
      JobId id;
      SubmitOptions options;
    };
    std::vector<Posting> batch;
    batch.reserve(postings_.size());
    for (JobId id : postings_) {
      const DurableJob& job = jobs_.at(id);
      Posting p{id, SubmitOptions{.priority = Priority{job.level}}};
      for (const auto& [name, amount] : job.needs()) p.options.needs.push_back({scheduler_.find_resource_group(name), amount});
      batch.push_back(std::move(p));
    }
    postings_.clear();
    lock.unlock();
    for (Posting& p : batch) {
      try {
        scheduler_.post(Runner(this, p.id), std::move(p.options));
      } catch (...) {
        // Refused (the scheduler is stopping, or a need no longer fits): the
        // Runner was dropped, which left the job live in the journal.
      }
    }
    lock.lock();
  }
}

DurableRecovery DurableRuntime::start() {
  std::unique_lock lock(mu_);
  if (started_) throw Error("ordo: DurableTasks::start() called twice");
  DurableRecovery report;
  std::vector<std::pair<JobId, std::string>> to_bury;  // (job, reason)
  for (auto& [id, job] : jobs_) {
    if (job.state == DurableJob::State::dead) continue;
    std::string problem;
    if (!types_.count(job.type)) {
      problem = "type '" + job.type + "' is not defined";
    } else {
      for (const auto& [name, amount] : job.needs()) {
        ResourceGroup g = scheduler_.find_resource_group(name);
        if (!g.valid()) problem = "resource group '" + name + "' does not exist";
        else if (amount > g.limit()) problem = "needs more of '" + name + "' than its limit";
      }
    }
    if (problem.empty()) continue;
    if (!options_.unknown_types_to_dead) {
      throw UnknownJobType("ordo: the journal holds durable task " + std::to_string(id) + ", but its " + problem +
                           " (define it before start(), or set DurableOptions::unknown_types_to_dead)");
    }
    to_bury.emplace_back(id, "recovery: " + problem);
  }
  auto bury = [&](DurableJob& job, const std::string& reason) {
    PayloadWriter w;
    w.u32(job.attempts);
    w.str16(reason);
    journal_->append(RecordType::dead, job.id, w.view());
    job.state = DurableJob::State::dead;
    job.more().last_error = reason;
  };
  for (auto& [id, reason] : to_bury) bury(jobs_.at(id), reason);
  // Nodes of a workflow whose WORKFLOW record never made it: the process
  // died inside enqueue_workflow, which had not returned. Never accepted,
  // so dropped (journaled, so that compaction forgets them too).
  for (const auto& [flow_id, nodes] : unlinked_nodes_) {
    for (JobId node_id : nodes) {
      if (!jobs_.count(node_id)) continue;
      journal_->append(RecordType::cancel, node_id);
      jobs_.erase(node_id);
    }
  }
  unlinked_nodes_.clear();
  // Workflows: a node without an ENQUEUE was completed and compacted away.
  std::vector<JobId> finished_flows;
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
      PayloadWriter w;  // again, for a discard made by ordo-wal (a node's CANCEL only)
      w.u32(static_cast<std::uint32_t>(discarded.size()));
      for (std::uint32_t i : discarded) w.u32(i);
      journal_->append(RecordType::checkpoint, fid, w.view());
    }
    for (std::uint32_t i = 0; i < n; ++i) {
      if (doomed[i] && flow->node_ids[i] != 0 && jobs_.count(flow->node_ids[i])) {
        journal_->append(RecordType::cancel, flow->node_ids[i]);
        jobs_.erase(flow->node_ids[i]);
      }
      if (doomed[i] || flow->node_ids[i] == 0 || !jobs_.count(flow->node_ids[i])) flow->done[i] = true;
      if (!flow->done[i]) ++flow->remaining;
    }
    for (std::uint32_t i = 0; i < n; ++i) {
      for (std::uint32_t p : flow->pred[i]) flow->pending[i] += flow->done[p] ? 0 : 1;
      if (flow->done[i] || flow->pending[i] == 0) continue;
      DurableJob& job = jobs_.at(flow->node_ids[i]);
      if (job.state != DurableJob::State::dead) {
        job.state = DurableJob::State::blocked;
        ++blocked_;
      }
    }
    if (flow->remaining == 0) finished_flows.push_back(fid);  // died between its last node and its COMPLETE
  }
  for (JobId fid : finished_flows) finish_flow_locked(*flows_.at(fid));
  report.workflows = flows_.size();
  for (auto& [id, job] : jobs_) {
    switch (job.state) {
      case DurableJob::State::blocked:
        break;
      case DurableJob::State::dead:
        ++report.dead;
        ++dead_;
        break;
      case DurableJob::State::running:  // it had started when the process died
        ++report.interrupted;
        if (job.attempts >= max_attempts_of(job)) {
          bury(job, "interrupted on its last attempt (the process died while it ran)");
          ++report.dead;
          ++dead_;
          break;
        }
        [[fallthrough]];
      case DurableJob::State::queued:
        ++report.requeued;
        queue_locked(job);
        break;
      case DurableJob::State::waiting:
        ++report.requeued;
        ++report.delayed;
        schedule_locked(job, job.due_ns, job.retrying);
        break;
    }
  }
  report.keys = keys_.size();
  started_ = true;
  timer_ = std::thread([this] { timer_loop(); });
  post_pending(lock);
  return report;
}

JobId DurableRuntime::enqueue(std::string_view type, std::span<const std::byte> args, EnqueueOptions options) {
  auto type_it = types_.find(std::string(type));
  if (type_it == types_.end()) throw InvalidArgument("ordo: no durable task type named '" + std::string(type) + "'");
  if (options.needs.size() > 255) throw InvalidArgument("ordo: a durable task may need at most 255 groups");
  for (const auto& [name, amount] : options.needs) {
    check_str16(name, "a resource group name a durable task needs");
    ResourceGroup g = scheduler_.find_resource_group(name);
    if (!g.valid()) throw InvalidArgument("ordo: durable task needs unknown resource group '" + name + "'");
    if (amount == 0 || amount > g.limit()) {
      throw InvalidArgument("ordo: durable task needs " + std::to_string(amount) + " of resource group '" + name +
                            "', whose limit is " + std::to_string(g.limit()));
    }
  }
  check_str16(options.idempotency_key, "the idempotency key of a durable task");
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
  if (JobId existing = 0; key_taken_locked(options.idempotency_key, existing)) return existing;
  DurableJob* job = &jobs_[next_id_];  // stays in jobs_ until it completes, which needs the post below
  job->id = next_id_++;
  job->type = std::string(type);
  job->kind = &type_it->second;
  job->args.assign(reinterpret_cast<const char*>(args.data()), args.size());
  job->level = static_cast<std::uint8_t>(priority);
  job->max_attempts = options.max_attempts.value_or(0);
  if (!options.idempotency_key.empty() || !options.needs.empty()) {
    job->more().key = options.idempotency_key;
    job->more().needs = options.needs;
  }
  job->state = DurableJob::State::waiting;  // not runnable until its ENQUEUE is durable
  DurableJob& j = *job;
  const JobId id = j.id;
  if (!j.key().empty()) keys_[j.key()] = KeyEntry{j.id, 0};
  lock.unlock();

  PayloadWriter w;
  w.str16(j.type);
  w.u8(j.level);
  w.u32(j.max_attempts);
  w.i64(due);
  w.str16(j.key());
  w.u8(static_cast<std::uint8_t>(j.needs().size()));
  for (const auto& [name, amount] : j.needs()) {
    w.str16(name);
    w.u64(amount);
  }
  w.u64(0);  // not a workflow node
  w.u32(0);
  w.tail(j.args);
  try {
    journal_->append_durable(RecordType::enqueue, j.id, w.view());
  } catch (...) {
    lock.lock();
    if (!j.key().empty()) keys_.erase(j.key());
    jobs_.erase(j.id);
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

void DurableRuntime::run(JobId id) {
  std::unique_lock lock(mu_);
  --in_flight_;
  auto it = jobs_.find(id);
  if (it == jobs_.end() || it->second.state != DurableJob::State::queued) {
    notify_drain_locked();
    return;
  }
  DurableJob& job = it->second;
  if (cancelling_) {  // shutdown(cancel): it stays live in the journal for the next start
    notify_drain_locked();
    return;
  }
  job.state = DurableJob::State::running;
  ++running_;
  const unsigned attempt = ++job.attempts;
  const JobType* type = type_of(job);  // start() and enqueue() made sure it is defined
  const bool write_start_first = start_written_always_ || job.recovered || attempt > 1;
  lock.unlock();

  PayloadWriter start;
  start.u32(attempt);
  try {
    // In the OS before the handler runs (not synced: a worker never waits
    // for the disk): a handler that kills the process at once has still
    // used an attempt, so a poison pill ends in the dead set instead of a
    // crash loop. Concurrent workers' STARTs share one write. In async and
    // none modes the first attempt of a task enqueued by this process skips
    // the wait (a write per job would cost a third of their throughput):
    // should it kill the process before its START is written, the restart
    // recovers it, and from then on every attempt is counted: one
    // uncounted run at most.
    const Lsn lsn = journal_->append(RecordType::start, id, start.view());
    if (write_start_first) journal_->wait_written(lsn);
  } catch (...) {
    lock.lock();
    --running_;
    journal_lost_locked(job);
    return;
  }
  JobContext ctx(*this, job);
  std::string error;
  bool ok = false;
  const DurableRuntime* outer = std::exchange(t_in_handler_of, this);  // a helping wait may nest runs
  try {
    trace_label(job.type);
    type->handler(ctx, as_span(job.args));
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
    record_outcome_locked(job, attempt, ok, error);
  } catch (...) {  // the journal can record nothing more (an I/O error, named by the journal)
    journal_lost_locked(job);
    return;
  }
  notify_drain_locked();
  post_pending(lock);  // successors a workflow node released
}

void DurableRuntime::journal_lost_locked(DurableJob& job) noexcept {
  // Whatever the journal last holds for this job is what the next start
  // sees; this process stops counting on it, and a drain no longer waits
  // for it.
  job.state = DurableJob::State::queued;
  journal_failed_ = true;
  notify_drain_locked();
}

void DurableRuntime::record_outcome_locked(DurableJob& job, unsigned attempt, bool ok, const std::string& error) {
  const JobId id = job.id;
  if (ok) {
    const std::int64_t retain_until =
        job.key().empty() ? 0 : wall_now_ns() + std::chrono::nanoseconds(options_.key_retention).count();
    PayloadWriter w;
    w.i64(retain_until);
    w.str16(job.key());
    const Lsn complete = journal_->append(RecordType::complete, id, w.view());
    if (!job.key().empty()) keys_[job.key()] = KeyEntry{id, retain_until};
    ++completed_;
    const JobId flow_id = job.flow;
    const std::uint32_t node = job.node;
    jobs_.erase(id);  // `job` is gone: a failure below must not reach journal_lost_locked(job)
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
  } else if (attempt >= max_attempts_of(job)) {
    ++failed_attempts_;
    PayloadWriter w;
    w.u32(attempt);
    w.str16(error);
    journal_->append(RecordType::dead, id, w.view());
    job.state = DurableJob::State::dead;
    job.more().last_error = error;
    ++dead_;
  } else {
    ++failed_attempts_;
    const std::int64_t due = wall_now_ns() + backoff_ns(job, attempt);
    PayloadWriter w;
    w.u32(attempt);
    w.i64(due);
    w.str16(error);
    journal_->append(RecordType::fail, id, w.view());
    job.more().last_error = error;
    schedule_locked(job, due, true);
  }
}

void DurableRuntime::dropped(JobId id) noexcept {
  std::lock_guard lock(mu_);
  --in_flight_;
  auto it = jobs_.find(id);
  if (it != jobs_.end() && it->second.state == DurableJob::State::queued) scheduler_refused_ = true;
  notify_drain_locked();
}

void DurableRuntime::checkpoint(DurableJob& job, std::span<const std::byte> bytes) {
  journal_->append_durable(RecordType::checkpoint, job.id, bytes);
  std::lock_guard lock(mu_);
  job.more().checkpoint.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
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
      const JobId id = timers_.begin()->second;
      timers_.erase(timers_.begin());
      auto it = jobs_.find(id);
      if (it != jobs_.end() && it->second.state == DurableJob::State::waiting) queue_locked(it->second);
    }
    post_pending(lock);
  }
}

std::vector<DeadJob> DurableRuntime::dead() const {
  std::lock_guard lock(mu_);
  std::vector<DeadJob> out;
  for (const auto& [id, job] : jobs_) {
    if (job.state == DurableJob::State::dead) out.push_back({id, job.type, job.attempts, job.last_error()});
  }
  std::sort(out.begin(), out.end(), [](const DeadJob& a, const DeadJob& b) { return a.id < b.id; });
  return out;
}

bool DurableRuntime::retry_dead(JobId id) {
  std::unique_lock lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end() || it->second.state != DurableJob::State::dead) return false;
  if (!types_.count(it->second.type)) {
    throw UnknownJobType("ordo: dead task " + std::to_string(id) + " has type '" + it->second.type +
                         "', which is not defined");
  }
  journal_->append_durable(RecordType::retry, id);
  it->second.attempts = 0;
  --dead_;
  queue_locked(it->second);
  post_pending(lock);
  return true;
}

bool DurableRuntime::discard_dead(JobId id) {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end() || it->second.state != DurableJob::State::dead) return false;
  if (it->second.flow != 0) {
    if (auto flow = flows_.find(it->second.flow); flow != flows_.end()) {
      discard_node_locked(it->second, *flow->second);
      return true;
    }
  }
  journal_->append_durable(RecordType::cancel, id);
  if (!it->second.key().empty()) keys_.erase(it->second.key());
  jobs_.erase(it);
  --dead_;
  return true;
}

void DurableRuntime::shutdown(ShutdownMode mode) noexcept {
  std::unique_lock lock(mu_);
  if (stopped_) return;
  stopping_ = true;
  if (mode == ShutdownMode::cancel) cancelling_ = true;
  timer_cv_.notify_all();
  // From inside a handler: waiting would wait for this very handler. The
  // shutdown has begun (nothing new is accepted; cancel: nothing queued
  // starts); a shutdown() outside any handler, or the destructor, waits.
  if (t_in_handler_of == this) return;
  // drain: every job that is not dead finishes (timers included), unless
  // the scheduler stopped running our tasks; cancel: only what runs now.
  changed_.wait(lock, [&] {
    if (in_flight_ != 0 || running_ != 0 || releasing_ != 0) return false;
    // Blocked nodes wait for a live predecessor (still counted here) or
    // for a dead one (which only retry_dead revives): neither keeps a drain.
    return cancelling_ || !started_ || scheduler_refused_ || journal_failed_ || jobs_.size() == dead_ + blocked_;
  });
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
}

DurableStats DurableRuntime::stats() const {
  DurableStats s;
  const JournalStats js = journal_->stats();  // lists the directory: outside mu_
  s.journal_bytes = js.bytes;
  s.last_fsync_us = js.last_sync_us;
  s.directory = journal_->directory();
  std::lock_guard lock(mu_);
  s.live = jobs_.size() - dead_;
  s.running = running_;
  s.dead = dead_;
  s.completed = completed_;
  s.failed_attempts = failed_attempts_;
  s.accepting = started_ && !stopping_;
  s.workflows = flows_.size();
  for (const auto& [due, id] : timers_) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    (it->second.retrying ? s.retrying : s.delayed)++;
  }
  return s;
}

}  // namespace detail

JobId JobContext::id() const noexcept { return job_.id; }
const std::string& JobContext::type() const noexcept { return job_.type; }
unsigned JobContext::attempt() const noexcept { return job_.attempts; }
std::span<const std::byte> JobContext::last_checkpoint() const noexcept {
  return {reinterpret_cast<const std::byte*>(job_.checkpoint().data()), job_.checkpoint().size()};
}
void JobContext::checkpoint(std::span<const std::byte> bytes) { rt_.checkpoint(job_, bytes); }

DurableTasks::DurableTasks(Scheduler& scheduler, const std::string& directory, JournalOptions journal,
                           DurableOptions options)
    : rt_(std::make_unique<detail::DurableRuntime>(scheduler, directory, std::move(journal), options)) {}
DurableTasks::~DurableTasks() = default;
void DurableTasks::define(std::string type, JobHandler handler, JobTypeOptions options) {
  rt_->define(std::move(type), std::move(handler), options);
}
DurableRecovery DurableTasks::start() { return rt_->start(); }
JobId DurableTasks::enqueue(std::string_view type, std::span<const std::byte> args, EnqueueOptions options) {
  return rt_->enqueue(type, args, std::move(options));
}
JobId DurableTasks::enqueue_workflow(const DurableWorkflow& workflow, std::string idempotency_key) {
  return rt_->enqueue_workflow(workflow, std::move(idempotency_key));
}
std::vector<DeadJob> DurableTasks::dead() const { return rt_->dead(); }
bool DurableTasks::retry_dead(JobId id) { return rt_->retry_dead(id); }
bool DurableTasks::discard_dead(JobId id) { return rt_->discard_dead(id); }
void DurableTasks::shutdown(ShutdownMode mode) { rt_->shutdown(mode); }
DurableStats DurableTasks::stats() const { return rt_->stats(); }
Journal& DurableTasks::journal() noexcept { return rt_->journal(); }

}  // namespace ordo
