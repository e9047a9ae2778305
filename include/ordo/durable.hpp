// ordo::DurableTasks — tasks that survive a crash.
//
// A durable task is an instance of a *registered type*: a name and a handler
// that receives a TaskContext and the task's argument bytes. Closures cannot
// be durable (they cannot be rebuilt after a restart); a durable submission
// names a type. Every step of a task's life is written to a Journal
// (ENQUEUE, START, CHECKPOINT, COMPLETE, FAIL, DEAD, CANCEL), so that after a
// kill -9 the next start knows exactly which tasks were accepted and not
// finished, and runs them again — at least once, never lost. See
// docs/durability.md.
//
// Where tasks are kept is chosen at construction: a journal directory (one
// process, the embedded default) or a PostgreSQL database shared by a fleet of
// processes (ordo::postgres(), include/ordo/postgres.hpp, docs/postgres.md).
//
// Life of a DurableTasks: construct it on a scheduler and a store (a journal
// is replayed into memory; a database's schema is migrated; nothing runs
// yet); define() every type;
// start() queues what the journal holds; enqueue() from then on; shutdown()
// (or the destructor, which drains) before the scheduler goes away.
//
// Thread-safety: define() before start(), from one thread. Everything else
// may be called from any thread, including from inside a handler.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "ordo/errors.hpp"
#include "ordo/journal.hpp"
#include "ordo/options.hpp"
#include "ordo/priority.hpp"
#include "ordo/resource.hpp"
#include "ordo/stats.hpp"

struct pg_conn;  // libpq's connection (PGconn); only the PostgreSQL store hands one out

namespace ordo {

class Scheduler;
struct PostgresStore;
namespace detail {
class DurableBackend;
}  // namespace detail

using TaskId = std::uint64_t;

namespace detail {
// The store's side of one running attempt, behind a TaskContext. Each store
// implements it; valid while the handler runs.
class AttemptView {
 public:
  virtual TaskId id() const noexcept = 0;
  virtual const std::string& type() const noexcept = 0;
  virtual unsigned attempt() const noexcept = 0;
  virtual std::string_view args() const noexcept = 0;
  virtual std::span<const std::byte> last_checkpoint() const noexcept = 0;
  virtual void checkpoint(std::span<const std::byte> bytes) = 0;
  virtual pg_conn* transaction() = 0;

 protected:
  ~AttemptView() = default;
};
}  // namespace detail

// A journal holds a task whose type this process has not defined.
class UnknownTaskType : public Error {
 public:
  using Error::Error;
};

// A journal holds a task that needs a resource group (by name) which this
// process's scheduler does not have at start(): the message names the group,
// the task and its type.
class UnknownResourceGroup : public Error {
 public:
  using Error::Error;
};

// What a handler sees of its task. Valid during the handler call only.
class TaskContext {
 public:
  TaskId id() const noexcept;
  const std::string& type() const noexcept;
  // 1 for the first attempt; attempts interrupted by a crash count too.
  unsigned attempt() const noexcept;
  // The task's arguments (also passed to the handler as bytes), as text.
  std::string_view args_text() const noexcept;
  // The bytes of the latest checkpoint() of this task (from any earlier
  // attempt, or this one), empty if none.
  std::span<const std::byte> last_checkpoint() const noexcept;
  // Records progress: returns once it is durable under the journal's mode
  // (sync: on disk; async/none: written to the OS), or committed in the
  // database. A re-run attempt reads it back from last_checkpoint(). Throws
  // what Journal::append throws; on PostgreSQL, LeaseLost when this attempt
  // no longer holds the task (its lease ran out and it was taken back).
  void checkpoint(std::span<const std::byte> bytes);
  // PostgreSQL store, a type defined with `transactional`: the connection on
  // which this attempt's transaction is open. What the handler does on it
  // commits together with the task's completion, or not at all (the attempt
  // failed, or lost its lease): effects exactly once. Do not COMMIT or
  // ROLLBACK it yourself. Throws Error for any other task.
  pg_conn* transaction();

  // Typed helpers for trivially copyable progress markers (an index, a struct).
  template <class T>
  void checkpoint(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>, "checkpoint a trivially copyable value, or bytes");
    checkpoint(std::span<const std::byte>(reinterpret_cast<const std::byte*>(&value), sizeof(T)));
  }
  // The last checkpointed T, or `otherwise` when there is none. A checkpoint
  // of another size than T (the type changed between versions, or a
  // checkpoint of bytes) throws InvalidArgument naming both sizes: starting
  // over from `otherwise` would silently redo or skip work.
  template <class T>
  T resume_from(T otherwise) const {
    static_assert(std::is_trivially_copyable_v<T>, "resume from a trivially copyable value");
    const auto bytes = last_checkpoint();
    if (bytes.empty()) return otherwise;
    if (bytes.size() != sizeof(T)) throw_checkpoint_size(bytes.size(), sizeof(T));
    T value;
    std::memcpy(&value, bytes.data(), sizeof(T));
    return value;
  }

 private:
  friend class detail::DurableBackend;
  [[noreturn]] void throw_checkpoint_size(std::size_t stored, std::size_t wanted) const;
  explicit TaskContext(detail::AttemptView& attempt) : attempt_(attempt) {}
  detail::AttemptView& attempt_;
};

using TaskHandler = std::function<void(TaskContext&, std::span<const std::byte> args)>;

// Exponential backoff with jitter: attempt k (k >= 1) that fails waits
// min(max, initial * multiplier^(k-1)) scaled by a random factor in
// [1 - jitter, 1 + jitter] before attempt k + 1.
struct RetryPolicy {
  unsigned max_attempts = 3;  // then the task goes to the dead set
  std::chrono::milliseconds initial_backoff{100};
  double multiplier = 2.0;
  std::chrono::milliseconds max_backoff{std::chrono::minutes(10)};
  double jitter = 0.2;
};

struct TaskTypeOptions {
  RetryPolicy retry{};
  std::optional<Priority> priority{};  // unset: normal
  // PostgreSQL store only: each attempt runs inside a database transaction
  // that also records its completion (TaskContext::transaction()).
  bool transactional = false;
};

// A share of a global resource group: a limit kept in the PostgreSQL store
// and counted across every process of the fleet (DurableTasks::
// set_global_limit / set_global_rate).
struct GlobalNeed {
  std::string group;
  unsigned count = 1;
};

struct EnqueueOptions {
  std::optional<Priority> priority{};       // unset: the type's
  std::optional<unsigned> max_attempts{};  // unset: the type's
  // While a task with this key is live, or completed less than
  // key_retention ago, enqueue returns that task's id instead of a new one.
  std::string idempotency_key{};
  // Run no earlier than this (survives restarts).
  std::optional<std::chrono::system_clock::time_point> run_at{};
  std::optional<std::chrono::milliseconds> delay{};  // run_at = now + delay
  // Resource groups of this scheduler, as SubmitOptions::needs takes them.
  // Journaled by the group's name and resolved by name at each start(): the
  // scheduler of the next process must have a group of that name
  // (UnknownResourceGroup otherwise).
  Needs needs{};
  // PostgreSQL store only: global groups, all granted (server-side, in one
  // transaction) before the task is claimed by any process, and held until
  // its attempt ends or its lease runs out.
  std::vector<GlobalNeed> global_needs{};
};

// One task of DurableTasks::enqueue_many: what enqueue() takes. The views
// need to last only for the call.
struct NewTask {
  std::string_view type;
  std::string_view args{};  // bytes
  EnqueueOptions options{};
};

// A DAG of durable task types, declared in one place and journaled as a
// whole: after a crash it resumes midway — completed nodes are not run
// again, an interrupted one is retried, the rest wait for their
// predecessors as before. Validation (unknown and duplicate names, cycles
// named) happens at enqueue_workflow.
class DurableWorkflow {
 public:
  struct Node {
    std::string name;
    std::string type;
    std::string args;
    std::vector<std::string> after;
  };
  explicit DurableWorkflow(std::string name) : name_(std::move(name)) {}
  // Adds a node running durable type `type` on `args` once every node named
  // in `after` has completed.
  DurableWorkflow& node(std::string name, std::string type, std::string args = {},
                        std::vector<std::string> after = {}) {
    nodes_.push_back({std::move(name), std::move(type), std::move(args), std::move(after)});
    return *this;
  }
  const std::string& name() const noexcept { return name_; }
  const std::vector<Node>& nodes() const noexcept { return nodes_; }

 private:
  std::string name_;
  std::vector<Node> nodes_;
};

struct DurableOptions {
  // Recovery: a journaled task this process cannot run at start() — its
  // type is not defined (UnknownTaskType), it needs a resource group the
  // scheduler lacks (UnknownResourceGroup) or more of one than its limit
  // (InvalidArgument) — throws that error (false) or goes to the dead set
  // with that reason (true).
  bool unknown_types_to_dead = false;
  std::chrono::seconds key_retention{std::chrono::hours(24)};
};

// What start() found in the journal.
struct DurableRecovery {
  std::uint64_t requeued = 0;     // live tasks queued again (or scheduled, if delayed)
  std::uint64_t interrupted = 0;  // of those, ones that had STARTed: an attempt cut short
  std::uint64_t delayed = 0;      // of those, ones waiting for a time (delay or backoff)
  std::uint64_t dead = 0;         // in the dead set
  std::uint64_t keys = 0;         // idempotency keys remembered
  std::uint64_t workflows = 0;    // live workflows resumed
  std::string describe() const;
};

// Where a durable task is, by id (DurableTasks::status, and the lists of
// scheduled, retrying and dead tasks).
struct DurableTaskStatus {
  enum class State : std::uint8_t {
    unknown,    // never enqueued here, completed without a key (or its key's retention ran out), discarded
    queued,     // runnable, waiting for a worker (or not yet started: recovered before start())
    blocked,    // a workflow node waiting for its predecessors
    scheduled,  // waiting for its run_at (enqueued with run_at or delay)
    running,    // an attempt is running (before start(): one was, when the process stopped)
    retrying,   // an attempt failed; the next one is due at run_at
    dead,       // in the dead set
    completed,  // succeeded, and its idempotency key is still retained (until key_retained_until)
  };
  TaskId id = 0;
  State state = State::unknown;
  std::string type;       // empty when unknown or completed
  unsigned attempts = 0;  // attempts started so far (retrying: the next one is attempts + 1)
  std::optional<std::chrono::system_clock::time_point> run_at;  // scheduled, retrying
  std::optional<std::chrono::system_clock::time_point> key_retained_until;  // completed
  std::string last_error;  // retrying, dead (and a queued task that failed before)
};
// "queued", "retrying"...: the names ordo-wal prints.
const char* to_string(DurableTaskStatus::State state) noexcept;

struct DeadTask {
  TaskId id = 0;
  std::string type;
  unsigned attempts = 0;
  std::string last_error;
};


class DurableTasks {
 public:
  // Opens the journal in `directory` and replays it into memory. Nothing
  // runs until start(). Throws what Journal::open throws.
  DurableTasks(Scheduler& scheduler, const std::string& directory, JournalOptions journal = {},
               DurableOptions options = {});
  // Keeps the tasks in a PostgreSQL database shared with other processes
  // (ordo::postgres(conninfo)): connects, creates or migrates the schema.
  // Throws StoreError when the database cannot be reached or its schema is
  // newer than this ordo; Error when ordo was built without PostgreSQL.
  DurableTasks(Scheduler& scheduler, const PostgresStore& store, DurableOptions options = {});
  // shutdown(drain) if not called. Never throws.
  ~DurableTasks();

  // Before start(). Throws InvalidArgument for an empty or duplicate name.
  // An empty handler: on the PostgreSQL store the type is enqueue-only in
  // this process (other processes run it; docs/postgres.md); the journal
  // store refuses it with InvalidArgument.
  void define(std::string type, TaskHandler handler, TaskTypeOptions options = {});
  // Queues every live task of the journal with its priority, needs, attempt
  // count and last checkpoint. Throws UnknownTaskType, UnknownResourceGroup
  // or InvalidArgument (naming the task, its type and what is missing; see
  // DurableOptions) unless unknown_types_to_dead; nothing is queued then.
  DurableRecovery start();

  // After start(). Returns once the ENQUEUE record is durable under the
  // journal's mode. Throws InvalidArgument (unknown type; a need of a
  // default-constructed group, of another scheduler's group, of 0 or more
  // than the limit; a key or group name of 64 KiB or more; on PostgreSQL a
  // global group not defined), Error after shutdown, StoreError when the
  // database stays unreachable; a call that throws leaves no task and no key
  // behind (on PostgreSQL, unless the connection was lost as it committed:
  // docs/postgres.md, Operations).
  TaskId enqueue(std::string_view type, std::span<const std::byte> args, EnqueueOptions options = {});
  TaskId enqueue(std::string_view type, std::string_view args, EnqueueOptions options = {}) {
    return enqueue(type, std::as_bytes(std::span<const char>(args.data(), args.size())), std::move(options));
  }

  // After start(); any thread. Enqueues every task of `tasks` as one durable
  // batch and returns their ids in order, once all of them are durable: one
  // journal write and wait (one fdatasync in sync mode), or one PostgreSQL
  // transaction (also with async_enqueue: this call always waits for the
  // commit). Each task is checked as enqueue() checks it, all before any is
  // accepted: a call that throws (the same errors as enqueue) leaves none of
  // them and no key behind. A key already taken, or repeated within the
  // batch, gives the id of the task that has it. On PostgreSQL the batch
  // commits as a whole or not at all; on the journal a crash before the call
  // returns may keep some of its tasks (each one whole).
  std::vector<TaskId> enqueue_many(std::span<const NewTask> tasks);

  // PostgreSQL store: enqueues inside the caller's open transaction on
  // `transaction` (the task exists exactly when that transaction commits).
  // Any thread, before or after start(). Throws Error on the journal store.
  TaskId enqueue_in(pg_conn* transaction, std::string_view type, std::string_view args,
                    EnqueueOptions options = {});

  // PostgreSQL store: creates global counting group `name` or changes its
  // limit (fleet-wide; holders above a lowered limit keep their permits, no
  // new one is granted until they are back under it). Any thread.
  void set_global_limit(const std::string& name, unsigned limit);
  // PostgreSQL store: a global rate group, `per_second` grants with bursts of
  // `burst`, timed by the server's clock.
  void set_global_rate(const std::string& name, double per_second, unsigned burst = 1);

  // After start(). Journals the whole workflow (one durable batch) and queues
  // its roots; returns the workflow's id. With an idempotency key, a
  // workflow with that key that is live (or completed within key_retention)
  // is returned instead. Throws InvalidGraph (cycle, unknown or duplicate
  // node names), InvalidArgument (unknown type, empty workflow).
  TaskId enqueue_workflow(const DurableWorkflow& workflow, std::string idempotency_key = {});

  // Where task (or workflow) `id` is. A workflow's own id says only
  // `completed` (while its key is retained) or `unknown`: ask for its nodes.
  // Cost: a look-up, or, for an id not live, one pass over the retained keys.
  DurableTaskStatus status(TaskId id) const;
  // Tasks waiting for their run_at, and tasks waiting to retry, by due time.
  std::vector<DurableTaskStatus> scheduled() const;
  std::vector<DurableTaskStatus> retrying() const;
  // The dead set: tasks whose attempts ran out (or unknown types).
  std::vector<DeadTask> dead() const;
  // Sends a dead task back for a fresh round of attempts. False if it is not dead.
  bool retry_dead(TaskId id);
  // Drops a dead task for good (journaled as CANCEL). False if it is not dead.
  // A workflow node: the workflow fails — every node depending on it is
  // cancelled, the others still run, and the workflow then ends without
  // retaining its key (docs/durability.md).
  bool discard_dead(TaskId id);

  // drain: waits until no task is live except dead ones (delayed and retrying
  // tasks included: their times are waited for). cancel: queued tasks that
  // have not started stay in the journal for the next start; running ones
  // finish. Either way the journal is synced. Idempotent. From inside a
  // handler it only begins the shutdown (nothing new is accepted; cancel:
  // nothing queued starts) and returns: a later call outside any handler,
  // or the destructor, does the waiting.
  void shutdown(ShutdownMode mode = ShutdownMode::drain);
  // shutdown(mode), waiting at most `timeout`. True once it is done (as
  // shutdown() leaves it). False when the time ran out: the shutdown has
  // begun (nothing new is accepted; cancel: nothing queued starts) and goes
  // on — tasks still running finish and are journaled as ever; call it
  // again, or shutdown(), or let the destructor finish it. From inside a
  // handler it only begins the shutdown and returns false.
  bool shutdown_for(std::chrono::milliseconds timeout, ShutdownMode mode = ShutdownMode::drain);

  DurableStats stats() const;
  // The journal store's journal. Throws Error on the PostgreSQL store.
  Journal& journal();

  DurableTasks(const DurableTasks&) = delete;
  DurableTasks& operator=(const DurableTasks&) = delete;

 private:
  std::unique_ptr<detail::DurableBackend> rt_;
};

}  // namespace ordo
