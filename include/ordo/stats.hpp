// Stats snapshots: what Scheduler::stats(), ResourceGroup::stats() and
// DurableTasks::stats() return, and what to_prometheus() (ordo/observability.hpp)
// prints. Plain values: a snapshot is the caller's to keep.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ordo {

struct ResourceStats {
  std::string name;
  std::uint64_t limit = 0;
  std::uint64_t in_use = 0;      // held by tasks now (not counting workers' spares)
  // The most ever taken at once; never above the limit. In a group with
  // spare permits (docs/resources.md) it may count up to 16 per worker more.
  std::uint64_t max_in_use = 0;
  std::uint64_t waiting = 0;     // tasks parked on this group now
  double total_wait_ms = 0;      // time tasks spent parked on this group
};

struct DurableStats {
  std::uint64_t live = 0;      // enqueued, not complete, cancelled or dead
  std::uint64_t running = 0;
  std::uint64_t retrying = 0;  // waiting for a backoff to expire
  std::uint64_t delayed = 0;   // waiting for run_at
  std::uint64_t dead = 0;
  std::uint64_t completed = 0;  // since this process started
  std::uint64_t failed_attempts = 0;
  std::uint64_t workflows = 0;  // live durable workflows
  bool accepting = false;  // started, and shutdown() not yet begun
  // Its journal (filled by DurableTasks::stats() and Scheduler::stats()).
  std::string directory;
  std::uint64_t journal_bytes = 0;  // segments and snapshot on disk
  double last_fsync_us = 0;         // latency of the journal's latest fdatasync
  // PostgreSQL store: failures of its background work (claims, renewals,
  // outcomes, asynchronous enqueues) since start, and the latest one's
  // message; each was retried or left to the lease, as docs/postgres.md says.
  std::uint64_t store_errors = 0;
  std::string last_store_error;
  // PostgreSQL store: outcomes of this process's attempts that the fence
  // rejected, because the task's lease had run out first (the process, or
  // its connection to the server, stalled for longer than the lease): each
  // such task ran, or runs, again in whichever process took it over. 0 on a
  // journal, which has no leases.
  std::uint64_t fenced = 0;
};

// One priority level in a stats snapshot.
struct LevelStats {
  std::uint64_t queued = 0;     // waiting in deques and injection queues now
  std::uint64_t running = 0;    // being run by a worker now
  std::uint64_t completed = 0;  // run (or cancelled) since start
  // Start-wait (queued -> started) of a sample of tasks: every 64th task a
  // thread queues, and every task of a level with an age bound.
  std::uint64_t wait_samples = 0;
  double wait_p50_us = 0;
  double wait_p90_us = 0;
  double wait_p99_us = 0;
  double wait_max_us = 0;
};

// One worker in a stats snapshot.
struct WorkerStats {
  std::uint64_t tasks_run = 0;  // payloads run or cancelled
  std::uint64_t steals = 0;     // tasks taken from another worker's deque
  double idle_ms = 0;           // time spent asleep for lack of work
  bool parked = false;          // asleep (or about to be) now
};

// Cumulative counters of one scheduler. Each is summed over workers without a
// lock, so a snapshot taken while tasks run is approximate (never torn).
struct SchedulerStats {
  unsigned workers = 0;
  unsigned levels = 0;
  std::uint64_t tasks_run = 0;  // payloads run or cancelled by workers
  std::uint64_t steals = 0;     // tasks taken from another worker's deque
  unsigned workers_parked = 0;  // workers asleep (or about to be) for lack of work
  std::uint64_t promoted = 0;   // tasks moved up a level by ageing
  std::vector<LevelStats> per_level;  // index = level
  std::vector<WorkerStats> per_worker;  // index = worker
  std::vector<ResourceStats> resources;  // every group, in creation order
  std::vector<DurableStats> durable;     // every live DurableTasks on this scheduler
};

}  // namespace ordo
