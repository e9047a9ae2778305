// DurableBackend: what ordo::DurableTasks asks of the store behind it — the
// local journal (DurableRuntime, src/durable) or PostgreSQL (PgRuntime,
// src/postgres). Each call has the contract DurableTasks documents.
//
// Thread-safety: as DurableTasks: define() before start() from one thread,
// everything else from any thread, including from inside a handler.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ordo/durable.hpp"

namespace ordo::detail {

// The wait before attempt `attempt + 1` after attempt `attempt` failed, by
// `policy` (exponential, capped, with jitter drawn from `rng`, an xorshift64
// state the caller owns and guards).
std::int64_t retry_delay_ns(const RetryPolicy& policy, unsigned attempt, std::uint64_t& rng) noexcept;

class DurableBackend {
 public:
  virtual ~DurableBackend() = default;

  virtual void define(std::string type, TaskHandler handler, TaskTypeOptions options) = 0;
  virtual DurableRecovery start() = 0;
  virtual TaskId enqueue(std::string_view type, std::span<const std::byte> args, EnqueueOptions options) = 0;
  virtual std::vector<TaskId> enqueue_many(std::span<const NewTask> batch) = 0;
  virtual TaskId enqueue_in(pg_conn* transaction, std::string_view type, std::string_view args,
                            EnqueueOptions options);
  virtual TaskId enqueue_workflow(const DurableWorkflow& workflow, std::string key) = 0;
  virtual void set_global_limit(const std::string& name, unsigned limit);
  virtual void set_global_rate(const std::string& name, double per_second, unsigned burst);
  virtual std::vector<DeadTask> dead() const = 0;
  virtual DurableTaskStatus status(TaskId id) const = 0;
  // The tasks waiting for a time: retrying ones (true) or scheduled ones.
  virtual std::vector<DurableTaskStatus> waiting(bool retrying) const = 0;
  virtual bool retry_dead(TaskId id) = 0;
  virtual bool discard_dead(TaskId id) = 0;
  // Waits until `deadline` at most (none: for as long as it takes). True
  // once the shutdown is done; false when the time ran out or when called
  // from inside a handler (the shutdown has begun either way).
  virtual bool shutdown(ShutdownMode mode, std::optional<std::chrono::steady_clock::time_point> deadline) noexcept = 0;
  virtual DurableStats stats() const = 0;
  // Null when the store is not a journal.
  virtual Journal* journal() noexcept { return nullptr; }

 protected:
  // TaskContext's constructor is private to this class and what derives from it.
  static TaskContext context_for(AttemptView& attempt) { return TaskContext(attempt); }
};

}  // namespace ordo::detail
