// PgRuntime: ordo::DurableTasks on a PostgreSQL database shared by a fleet.
//
// The database is the truth: a task is claimed (FOR UPDATE SKIP LOCKED, by
// effective level then age, with its global permits) by one process at a
// time under a lease that a heartbeat renews; the attempt number is the
// fence every outcome, checkpoint and renewal is checked against. This
// process holds in memory only the tasks it has claimed (held_).
//
// Threads: the claimer (claims while there is room, LISTENs for
// notifications, polls as a fallback), the heartbeat (renews leases, reaps
// expired ones of any process, forgets retained keys), the finisher
// (records outcomes in batches), and enqueueing callers, one of which at a
// time commits the batch of everyone waiting (group commit). Each thread
// has its own connection; admin_ serves the rest under admin_mu_.
//
// Thread-safety: mu_ guards held_, outcomes_ and the flags and counters;
// types_ is written before start() and read-only after. No statement runs
// under mu_. Invariants: an attempt is in held_ from its claim until its outcome
// is committed (or found fenced), and its lease is renewed all that while;
// `posted_` counts held tasks handed to the scheduler whose runner has not
// run or been dropped.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "durable/backend.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "postgres/connection.hpp"
#include "util/clock.hpp"

namespace ordo::detail {

// A test-only fault point (no public option): while true, every process's
// heartbeat skips its renewals and reaps, as a stalled process would. Relaxed:
// a flag on its own, publishing nothing.
inline std::atomic<bool> pg_heartbeat_paused{false};

class PgRuntime final : public DurableBackend {
 public:
  PgRuntime(Scheduler& scheduler, const PostgresStore& store, DurableOptions options);
  ~PgRuntime() override;

  void define(std::string type, TaskHandler handler, TaskTypeOptions options) override;
  DurableRecovery start() override;
  TaskId enqueue(std::string_view type, std::span<const std::byte> args, EnqueueOptions options) override;
  std::vector<TaskId> enqueue_many(std::span<const NewTask> batch) override;
  TaskId enqueue_in(pg_conn* transaction, std::string_view type, std::string_view args,
                    EnqueueOptions options) override;
  TaskId enqueue_workflow(const DurableWorkflow& workflow, std::string key) override;
  void set_global_limit(const std::string& name, unsigned limit) override;
  void set_global_rate(const std::string& name, double per_second, unsigned burst) override;
  std::vector<DeadTask> dead() const override;
  DurableTaskStatus status(TaskId id) const override;
  std::vector<DurableTaskStatus> waiting(bool retrying) const override;
  bool retry_dead(TaskId id) override;
  bool discard_dead(TaskId id) override;
  bool shutdown(ShutdownMode mode, std::optional<std::chrono::steady_clock::time_point> deadline) noexcept override;
  DurableStats stats() const override;

  // A posted task's runner: runs its attempt, or, dropped unrun, gives the
  // claim back.
  void run(TaskId id, unsigned attempt);
  void dropped(TaskId id, unsigned attempt) noexcept;

  struct Type {
    TaskHandler handler;
    TaskTypeOptions options;
  };
  // A claimed task.
  struct Held {
    TaskId id = 0;
    unsigned attempt = 0;  // the fence: claims of this task so far, fleet-wide
    unsigned base = 0;     // attempt - base is the attempt number the user sees
    unsigned max_attempts = 0;
    std::uint8_t level = 1;
    const Type* kind = nullptr;
    std::string type;
    std::string args;
    std::string checkpoint;
    std::string last_error;
    std::string needs;   // local groups, "name=count" lines
    bool lost = false;   // a renewal found the lease gone: this attempt no longer holds the task
    // steady_now_ns() just before the statement that last set the lease (the
    // claim or a renewal) was sent. The server set lease_until = its now() +
    // lease after that, so the lease runs at least until this + lease.
    std::int64_t lease_from_ns = 0;
    bool started = false;
  };
  // A claimed attempt: held_ is keyed by job *and* attempt, because this
  // process may claim a job again (its failure retried at once, or its lost
  // lease reaped) before the previous attempt's entry is gone — while that
  // attempt's outcome is being recorded, or its handler still runs.
  struct HeldKey {
    TaskId id;
    unsigned attempt;
    bool operator==(const HeldKey&) const = default;
  };
  struct HeldKeyHash {
    std::size_t operator()(const HeldKey& k) const noexcept {
      return std::hash<TaskId>()(k.id) ^ (std::hash<unsigned>()(k.attempt) * 0x9e3779b97f4a7c15ull);
    }
  };
  // One enqueue waiting for its batch to commit.
  struct EnqueueRequest {
    std::string type;
    std::string args;
    std::int64_t level = 1;
    std::int64_t max_attempts = 3;
    std::optional<std::string> delay_ms;
    std::optional<std::string> run_at;  // timestamptz text, UTC
    std::optional<std::string> key;
    std::optional<std::string> needs;   // local groups, "name=count" lines
    std::optional<std::string> groups;  // global groups, an array literal
    std::optional<std::string> counts;
    TaskId id = 0;
    std::exception_ptr error;
    bool done = false;
    // Requests of one enqueue_many commit together or not at all: the first
    // says how many follow it in the lane (1 for a lone enqueue, 0 inside).
    std::uint32_t unit = 1;
  };
  // Runs `sql` on the admin connection. A lost connection is reconnected,
  // trying for up to `patience` once per call (then StoreError); unset:
  // PostgresStore::reconnect_patience. stats() passes 0, one attempt, so
  // that it answers while the server is away.
  pg::Result admin(const std::string& sql, const std::vector<pg::Param>& params = {},
                   std::optional<std::chrono::milliseconds> patience = std::nullopt) const;
  void checkpoint(Held& held, std::span<const std::byte> bytes);
  std::string sql(const char* text) const;  // with the schema and channel filled in

 private:
  struct Outcome {
    TaskId id;
    unsigned attempt;
    bool ok;
    std::string error;
    std::int64_t backoff_ms;
  };

  void claim_loop();
  void heartbeat_loop();
  void finish_loop();
  // Claims up to `room` tasks and posts them; returns how many.
  std::size_t claim_and_post(pg::Connection& conn, std::size_t room);
  // True when the store holds nothing this process could still run (drain).
  bool store_drained(pg::Connection& conn);
  void wake_claimer() noexcept;
  // Counts a background failure for stats() (takes mu_).
  void note_store_error(const std::exception& e) const noexcept;
  struct EnqueueLane;
  // Queues `reqs` (one unit) in this thread's lane and waits until they are
  // committed, leading the lane's commit if nobody is.
  void commit_through_lane(std::span<EnqueueRequest> reqs);
  void commit_enqueues(EnqueueLane& lane, std::vector<EnqueueRequest*>& batch);
  TaskId enqueue_async(EnqueueRequest req);
  // The fleet's claimers are to be woken (new tasks, freed permits): the
  // notifier sends one NOTIFY for every wake owed meanwhile. Enqueues and
  // outcomes never NOTIFY in their own transactions: the server serialises
  // the commits of notifying transactions, WAL flush included.
  void owe_wake() noexcept;
  void notify_loop();
  void flush_loop();
  EnqueueRequest make_request(std::string_view type, std::string_view args, const EnqueueOptions& options) const;
  std::int64_t backoff_ms(const Held& held, unsigned attempt);
  // Whether `held`'s lease may run out before its attempt gets going (mu_
  // held): it is not started then, since another process may take the job
  // over at any moment (or already has) and both attempts would run.
  bool lease_may_lapse(const Held& held) const noexcept;
  void run_transactional(Held& held, const Type& type);
  // Runs the handler on `view`; false with `error` set when it threw.
  bool call_handler(Held& held, const Type& type, AttemptView& view, std::string& error);
  std::unique_ptr<pg::Connection> take_transaction_connection();
  void give_back(std::unique_ptr<pg::Connection> conn);

  Scheduler& scheduler_;
  const PostgresStore store_;
  const DurableOptions options_;
  std::string owner_;
  std::string type_list_;  // the defined types as an array literal (what claims may take)
  std::unordered_map<std::string, Type> types_;
  unsigned max_held_ = 0;
  std::int64_t retain_ms_ = 0;

  mutable std::mutex admin_mu_;
  std::unique_ptr<pg::Connection> admin_;

  // Synchronous enqueues go through lanes, a connection each: a caller
  // keeps to one lane, and in each lane one caller at a time commits the
  // batch of everyone waiting there (group commit); the lanes' commits run
  // side by side, and the server flushes their WAL together.
  struct EnqueueLane {
    std::mutex mu;
    std::condition_variable done;
    std::vector<EnqueueRequest*> pending;
    bool leader = false;
    std::unique_ptr<pg::Connection> conn;  // the leader's; connected on first use
  };
  std::vector<std::unique_ptr<EnqueueLane>> lanes_;
  std::atomic<std::uint64_t> enqueue_batches_{0};
  // Names this DurableTasks' enqueue batches (replay tokens): random per
  // instance, since worker_name is the user's and may repeat across restarts
  // or processes — a reused token returns another batch's ids.
  std::string enqueue_token_prefix_;
  std::mutex notify_mu_;
  std::condition_variable notify_cv_;
  bool wake_owed_ = false;
  bool notifier_done_ = false;
  std::thread notifier_;

  // Asynchronous enqueues: ids reserved ahead, tasks waiting for the
  // flusher's next commit (async_mu_).
  static constexpr std::size_t kReserveBlock = 4096;
  static constexpr std::size_t kReserveLow = 1024;
  std::mutex async_mu_;
  std::condition_variable async_cv_;  // pending tasks or ids running low (flusher); ids reserved (callers)
  std::vector<TaskId> reserved_ids_;
  std::vector<std::unique_ptr<EnqueueRequest>> async_pending_;
  std::uint64_t async_batches_ = 0;
  bool async_failed_ = false;  // the last reservation failed with no id left: callers throw
  std::string async_error_;
  bool flusher_done_ = false;
  std::thread flusher_;

  std::mutex tx_mu_;
  std::vector<std::unique_ptr<pg::Connection>> tx_free_;

  mutable std::mutex mu_;
  std::condition_variable changed_;      // held_ shrank, or the drain verdict changed (shutdown waits)
  std::condition_variable finisher_cv_;  // outcomes to record, or stopping
  std::condition_variable heartbeat_cv_;
  std::unordered_map<HeldKey, Held, HeldKeyHash> held_;
  std::vector<Outcome> outcomes_;
  std::vector<std::pair<TaskId, unsigned>> releases_;  // claims to give back unrun
  std::uint64_t posted_ = 0;
  std::uint64_t running_ = 0;
  std::uint64_t completed_ = 0;
  std::uint64_t failed_attempts_ = 0;
  std::uint64_t fenced_ = 0;  // outcomes the fence rejected
  std::uint64_t unflushed_ = 0;   // asynchronous enqueues accepted, not yet committed (or lost)
  std::uint64_t async_lost_ = 0;  // asynchronous enqueues whose commit failed
  mutable std::uint64_t store_errors_ = 0;  // stats() counts its own failure too
  mutable std::string last_store_error_;
  bool started_ = false;
  bool stopping_ = false;
  bool cancelling_ = false;
  bool drained_ = false;   // the claimer found nothing left to run (drain)
  bool threads_done_ = false;
  bool stopped_ = false;
  std::uint64_t rng_ = 0x2545f4914f6cdd1dull;  // backoff jitter (mu_)
  int wake_fd_ = -1;                            // eventfd: wakes the claimer's poll()
  std::thread claimer_;
  std::thread heartbeat_;
  std::thread finisher_;
};

// The PostgreSQL runtime whose handler this thread is running, if any:
// shutdown() from there must not wait for that very handler.
extern thread_local const PgRuntime* t_in_pg_handler_of;

}  // namespace ordo::detail
