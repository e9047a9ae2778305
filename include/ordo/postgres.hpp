// ordo::postgres — durable tasks kept in a PostgreSQL database, shared by a
// fleet of processes: one queue, one dead set, global resource groups and
// priorities that hold across machines. See docs/postgres.md.
//
//   ordo::DurableTasks jobs(sched, ordo::postgres("host=db dbname=app"));
//
// Available when ordo was built with ORDO_POSTGRES (the default); otherwise
// constructing a DurableTasks on it throws Error.
#pragma once

#include <chrono>
#include <string>

namespace ordo {

struct PostgresStore {
  // A libpq connection string ("host=/run/pg dbname=app", "postgresql://...").
  std::string conninfo;
  // The schema ordo's tables live in; created and migrated on first use.
  std::string schema = "ordo";
  // How long a claimed task stays this process's without a renewal. A
  // process that dies (kill -9, machine lost) gives its tasks and global
  // permits back this long after its last renewal. Renewed every lease / 3.
  std::chrono::milliseconds lease{std::chrono::seconds(5)};
  // Wake-ups come by LISTEN/NOTIFY; this is the fallback poll when none
  // arrives (lost notification, delayed tasks falling due, expired leases).
  std::chrono::milliseconds poll{std::chrono::seconds(1)};
  // Most tasks claimed in one round trip.
  unsigned claim_batch = 128;
  // Most claimed tasks this process holds at once (queued locally or
  // running); 0: 8 per worker of the scheduler. Tasks needing global groups
  // are claimed only for threads with nothing else of this store to run, so
  // a global permit is never held by a task waiting for a thread.
  unsigned max_held = 0;
  // A waiting task rises one level per `ageing` of waiting, as the local
  // scheduler's strict-with-ageing rule; 0: strictly by level.
  std::chrono::milliseconds ageing{std::chrono::seconds(10)};
  // false: enqueue() returns once its task is committed (group commit:
  // concurrent callers share a transaction). true: it returns at once with
  // an id reserved ahead, and a background thread commits the tasks in
  // batches within milliseconds; a process that dies first loses the tasks
  // not yet committed (as the journal's async mode loses its unsynced tail).
  // A task with an idempotency key or global needs is always committed
  // first: its id, or its groups, are the database's to decide.
  bool async_enqueue = false;
  // Connections for synchronous enqueues: callers share them in lanes (a
  // thread keeps to one), each committing its waiting callers' tasks in one
  // transaction; the lanes commit side by side.
  unsigned enqueue_connections = 4;
  // Shown as the holder of leases and permits; empty: host:pid.
  std::string worker_name;
  // Connections kept for `transactional` task types (one per handler
  // running at once); 0: the scheduler's worker count.
  unsigned transaction_connections = 0;
  // How long a step whose connection was lost keeps reconnecting before it
  // gives up: enqueue, enqueue_many, enqueue_workflow, status, the dead
  // set's calls, set_global_* and checkpoints then throw StoreError; the
  // asynchronous flusher drops its batch (counted in store_errors); the
  // finisher drops outcomes, whose jobs run again once their leases are
  // reaped. 0: one try. Claims and heartbeats simply try again next round.
  std::chrono::milliseconds reconnect_patience{std::chrono::seconds(30)};
};

// The PostgreSQL store with default options and this connection string.
inline PostgresStore postgres(std::string conninfo) {
  PostgresStore store;
  store.conninfo = std::move(conninfo);
  return store;
}

}  // namespace ordo
