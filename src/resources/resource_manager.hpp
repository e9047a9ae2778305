// ResourceManager: the resource groups of one scheduler, their permits and
// their wait lists.
//
// Thread-safety: acquire_or_park() and release() run on workers (release also
// on whichever thread cancels a task); create(), set_limit() and stats on any
// thread. The fast paths are lock-free; everything that touches a wait list
// holds mu_.
// Invariants:
//  - in_use <= limit after every successful acquisition (a CAS that would
//    exceed the limit fails); lowering the limit never revokes;
//  - a task holds either all of its needs or none (taken in group-id order,
//    rolled back on the first failure: no hold-and-wait, so no deadlock);
//  - a parked task is registered in the wait list of every group it needs and
//    counted in each group's `waiters`; it is granted only when it is the
//    best waiter of the group being dispatched and all its needs fit;
//  - a waiter that needs more of some group than that group's limit (after
//    set_limit lowered it) is hopeless for now: it stays parked, but every
//    dispatch and the rate timer pass over it, so it blocks nobody; raising
//    the limit makes it an ordinary waiter again;
//  - parking, unparking and re-ordering never allocate: a task's wait-list
//    nodes are allocated before anything is claimed or changed
//    (prepare_wait_nodes), and dispatching uses an intrusive list of groups;
//  - no lost hand-off: a parker registers (seq_cst RMW on `waiters`) and then
//    dispatches its own groups; a releaser returns permits (seq_cst RMW on
//    `in_use`) and then reads `waiters` (seq_cst): one of them sees the other;
//  - spare permits (ResourceGroupCore::spares) are counted in `in_use`; none
//    is kept while anyone waits on the group: a parker takes every worker's
//    back after registering (seq_cst exchange), and a worker that adds to
//    its own (seq_cst RMW) reads `waiters` after and gives them back if it
//    sees one — so a waiter never waits for a permit nobody holds;
//  - no forgotten rate waiter: every dispatch that looks at a rate group
//    (park, release, grant, cancel, set_priority, set_limit, the timer)
//    notifies the timer, which recomputes every rate group's next deadline.
#pragma once

#include <atomic>
#include <condition_variable>
#include <thread>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "ordo/detail/task.hpp"
#include "ordo/resource.hpp"
#include "resources/task_sink.hpp"

namespace ordo {
struct Need;
}

namespace ordo::detail {

class ResourceManager;

// A test-only fault point (no public option): while positive, each
// allocation of a task's wait-list entries fails with std::bad_alloc and
// counts it down. Relaxed: a counter on its own, publishing nothing.
inline std::atomic<int> fail_wait_list_allocations{0};

struct NeedEntry {
  ResourceGroupCore* group;
  std::uint64_t amount;
};

// One task's entry in one group's wait list: priority, then age.
struct Waiter {
  unsigned level;
  std::uint64_t seq;
  Task* task;
  bool operator<(const Waiter& o) const noexcept { return std::tie(level, seq) < std::tie(o.level, o.seq); }
};

using WaitList = std::set<Waiter>;
using WaitNode = WaitList::node_type;

// What one task needs; owned by the task (PredList::needs), pooled.
struct NeedList {
  static constexpr std::uint32_t kInline = 4;
  NeedEntry inline_entries[kInline];
  std::unique_ptr<NeedEntry[]> more;  // when a task needs more than kInline groups
  std::uint32_t count = 0;            // sorted by group id, one entry per group
  // The task holds every entry's permits. Written and read by whoever
  // claimed the task (its claim orders them); submit() also reads it
  // unclaimed, racing a worker that took a moved entry of the same task, as
  // a hint that the claim in park_if_busy() re-checks: hence an atomic, and
  // relaxed everywhere.
  std::atomic<bool> held{false};

  NeedEntry* begin() noexcept { return more ? more.get() : inline_entries; }
  NeedEntry* end() noexcept { return begin() + count; }
  const NeedEntry* begin() const noexcept { return more ? more.get() : inline_entries; }
  const NeedEntry* end() const noexcept { return begin() + count; }
  NeedEntry& operator[](std::size_t i) noexcept { return begin()[i]; }
  const NeedEntry& operator[](std::size_t i) const noexcept { return begin()[i]; }
  // One wait-list node per entry (same order), allocated the first time the
  // task may have to wait and kept until the list is freed. While the task
  // is parked the nodes are in the groups' lists: the handles are empty and
  // `pos` names each node in its list, so that a grant, a cancel or a
  // re-ordering takes it out without searching a list that may hold tens of
  // thousands of waiters (mu_).
  struct WaitSlot {
    WaitNode node;
    WaitList::iterator pos;
  };
  std::unique_ptr<WaitSlot[]> wait_slots;  // written unparked by the claimer, outside mu_
  // While parked (ResourceManager::mu_):
  bool parked = false;  // in its groups' lists; read under mu_ by cancel and set_priority
  unsigned level = 0;
  std::uint64_t seq = 0;
  std::int64_t parked_at_ns = 0;
};

class ResourceGroupCore {
 public:
  ResourceGroupCore(ResourceManager& m, std::uint32_t id, std::string name, std::uint64_t limit,
                    std::int64_t emission_ns = 0)
      : manager(m), id(id), name(std::move(name)), emission_ns(emission_ns), limit(limit) {}

  bool is_rate() const noexcept { return emission_ns != 0; }

  ResourceManager& manager;
  const std::uint32_t id;  // the global acquisition order
  const std::string name;
  // Rate groups (a token bucket as GCRA): one token every emission_ns, at
  // most `limit` (the burst) at once. `tat` is the theoretical arrival time of
  // the next token; taking k tokens moves it k * emission_ns on, and is
  // allowed while tat - now stays within limit * emission_ns. Tokens are
  // consumed, never given back. Zero for counting groups.
  const std::int64_t emission_ns;
  // Read on every submission, written seldom (set_limit, parking): a line
  // of its own, apart from the one workers write task after task.
  alignas(64) std::atomic<std::uint64_t> limit;
  std::atomic<std::uint32_t> waiters{0};
  // Taken and returned by workers, task after task. Includes the spares.
  alignas(64) std::atomic<std::uint64_t> in_use{0};
  std::atomic<std::uint64_t> max_in_use{0};
  std::atomic<std::int64_t> tat{0};
  // Spare permits, one slot per worker (counting groups of a large limit
  // only, see ResourceManager::spares_allowed): taken from in_use ahead of
  // need, or kept at a release, so that a run of tasks on one worker takes
  // and returns permits on its own line instead of the shared in_use line
  // that the other workers and the submitters read. The owner takes from
  // and adds to its slot; anyone may take a slot whole (exchange) to give
  // it back to in_use. Null for rate groups.
  struct alignas(64) SpareSlot {
    std::atomic<std::uint64_t> permits{0};
  };
  std::unique_ptr<SpareSlot[]> spares;
  unsigned spare_slots = 0;
  // Guarded by manager.mu_:
  WaitList wait_list;
  std::int64_t total_wait_ns = 0;
  bool to_dispatch = false;                     // on the manager's to-dispatch list
  ResourceGroupCore* next_to_dispatch = nullptr;
};

class ResourceManager {
 public:
  explicit ResourceManager(TaskSink& core) : core_(core) {}

  ~ResourceManager();
  ResourceGroupCore& create(std::string name, std::uint64_t limit);
  // A rate group: `permits` per `interval_ns`, at most `burst` at once.
  ResourceGroupCore& create_rate(std::string name, std::uint64_t permits, std::int64_t interval_ns,
                                 std::uint64_t burst);
  ResourceGroupCore* find(std::string_view name);  // or null
  // Stops the rate timer; the workers have exited.
  void stop() noexcept;
  // Validates a submission's needs and writes them, one entry per group in
  // group-id order, into `list` (fresh: no entries); throws InvalidArgument,
  // leaving `list` for its owner to destroy. The caller allocates the list
  // (in a pooled node, as the core does, or on its stack to validate only).
  // Without `check_limits`, a need above a group's current limit is accepted
  // (a workflow node checked when its run started: it waits like a parked
  // task for a lowered limit to come back up).
  void fill_needs(NeedList& list, std::span<const Need> needs, bool check_limits = true);

  // On worker `worker`, before running t: true when t now holds all its
  // needs; false when t was parked (it is requeued, holding them, when they
  // fit) or, with no memory for its wait-list nodes, queued again as it was.
  bool acquire_or_park(Task* t, NeedList& needs, unsigned level, unsigned worker);
  // At submit time, for a queued (unclaimed) task: when a counting group it
  // needs is full or has waiters ahead of it, claims and parks it at once,
  // so that a release hands its permits over without waiting for a worker
  // to come across the task in a queue; true then. Otherwise (it fits, or
  // it needs a rate group, or it was cancelled meanwhile, or there is no
  // memory for its wait-list nodes) false: queue it, and it takes its
  // permits when it runs.
  bool park_if_busy(Task* t, NeedList& needs, unsigned level);
  // Handle::cancel() of a parked task: takes it off the wait lists; it
  // stays claimed (state running), and the caller now holds the reference
  // its wait-list entry had. False if it is not parked.
  bool unpark_for_cancel(Task* t);
  // Returns what a finished task held. `worker`: the worker it finished on,
  // which may keep some as spares; kNoWorker from any other thread.
  static constexpr int kNoWorker = -1;
  void release(NeedList& needs, int worker = kNoWorker) noexcept;
  // Lowering below a waiter's need leaves it parked but passed over (see the
  // invariants); a draining scheduler is woken to cancel it.
  void set_limit(ResourceGroupCore& g, std::uint64_t limit);
  // Counts set_limit() calls. A draining worker that found nothing to cancel
  // sleeps until no task is parked or this changes (seq_cst: set_limit
  // stores the limit, bumps this, then wakes the sleepers).
  std::uint64_t limit_changes() const noexcept { return limit_changes_.load(std::memory_order_seq_cst); }
  // set_priority() of a parked task: moves it to its place for `level` in
  // every wait list (keeping its age), then grants what now fits. False if
  // the task is not parked.
  bool reorder_parked(Task* t, unsigned level);
  ResourceStats stats(const ResourceGroupCore& g) const;
  // A worker keeps at most this many spare permits of a group, and takes
  // this many ahead when it has too few; only in a group whose limit is at
  // least kSpareLimitPerWorker per worker, and only while under half of it.
  static constexpr std::uint64_t kSpareBatch = 8;
  static constexpr std::uint64_t kSpareMost = 2 * kSpareBatch;
  static constexpr std::uint64_t kSpareLimitPerWorker = 8 * kSpareMost;
  std::vector<ResourceStats> all_stats() const;  // every group, in creation order

  std::uint64_t parked() const noexcept { return parked_.load(std::memory_order_seq_cst); }
  // Completes parked tasks as cancelled: all of them (shutdown(cancel)), or
  // those that need more of some group than its limit, which no release can
  // grant (a drain with nothing left running, after the limit was lowered).
  // Returns how many.
  enum class Which { all, unsatisfiable };
  std::size_t cancel_parked(Which which) noexcept;

 private:
  // `worker`: a worker not holding mu_, which may use and refill its spares;
  // kNoWorker otherwise (a dispatch under mu_).
  bool try_take_all(NeedList& needs, int worker) noexcept;
  static bool spares_allowed(const ResourceGroupCore& g, std::uint64_t limit) noexcept {
    return g.spares != nullptr && limit >= kSpareLimitPerWorker * g.spare_slots;
  }
  // Gives every worker's spares of g back to in_use.
  static void reclaim_spares(ResourceGroupCore& g) noexcept;
  // A worker that kept spares and then saw a waiter: gives back its own and
  // dispatches g (takes mu_).
  void return_spares_and_dispatch(ResourceGroupCore& g, unsigned worker) noexcept;
  // Some need is above its group's current limit: no release can grant it.
  static bool exceeds_a_limit(const NeedList& needs) noexcept;
  // Allocates needs.wait_slots if it has none yet; false (nothing changed)
  // when there is no memory.
  static bool prepare_wait_nodes(NeedList& needs) noexcept;
  // The best waiter of g that is not hopeless, or null (mu_ held).
  const Waiter* first_eligible_locked(const ResourceGroupCore& g) const noexcept;
  // When waiter w of rate group g can take its tokens, judged at `now` (mu_
  // held). One clock reading for the whole decision: a fresh one here
  // would always lie a little after the caller's and never look due.
  static std::int64_t due_ns_locked(const ResourceGroupCore& g, const Waiter& w, std::int64_t now) noexcept;
  void timer_loop();
  // The task is queued again or completed: it no longer counts as parked.
  void unpark_one() noexcept;
  void park_locked(Task* t, NeedList& needs, unsigned level) noexcept;  // onto every wait list; nodes prepared
  // Puts g on the to-dispatch list (once) for the next dispatch_locked().
  void mark_locked(ResourceGroupCore& g) noexcept;
  // Grants the waiters of every marked group that now fit (see the .cpp).
  void dispatch_locked() noexcept;
  void unregister_locked(NeedList& needs) noexcept;

  TaskSink& core_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<ResourceGroupCore>> groups_;  // mu_; a group lives as long as the manager
  std::uint64_t next_seq_ = 0;                              // mu_
  ResourceGroupCore* to_dispatch_ = nullptr;                // mu_; linked by next_to_dispatch
  std::atomic<std::uint64_t> parked_{0};
  std::atomic<std::uint64_t> limit_changes_{0};
  // The rate timer: sleeps until the earliest due head waiter of a rate
  // group, then dispatches; started with the first rate group.
  std::condition_variable timer_cv_;  // with mu_
  bool timer_stop_ = false;           // mu_
  std::thread timer_;
};

}  // namespace ordo::detail
