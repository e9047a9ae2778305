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
//  - no lost hand-off: a parker registers (seq_cst RMW on `waiters`) and then
//    dispatches its own groups; a releaser returns permits (seq_cst RMW on
//    `in_use`) and then reads `waiters` (seq_cst): one of them sees the other.
#pragma once

#include <atomic>
#include <condition_variable>
#include <thread>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "ordo/detail/task.hpp"
#include "ordo/resource.hpp"

namespace ordo {
struct Need;
}

namespace ordo::detail {

class ResourceManager;

struct NeedEntry {
  ResourceGroupCore* group;
  std::uint64_t amount;
};

// What one task needs; owned by the task (PredList::needs), pooled.
struct NeedList {
  static constexpr std::uint32_t kInline = 4;
  NeedEntry inline_entries[kInline];
  std::unique_ptr<NeedEntry[]> more;  // when a task needs more than kInline groups
  std::uint32_t count = 0;            // sorted by group id, one entry per group
  bool held = false;                  // the task holds every entry's permits

  NeedEntry* begin() noexcept { return more ? more.get() : inline_entries; }
  NeedEntry* end() noexcept { return begin() + count; }
  const NeedEntry* begin() const noexcept { return more ? more.get() : inline_entries; }
  const NeedEntry* end() const noexcept { return begin() + count; }
  NeedEntry& operator[](std::size_t i) noexcept { return begin()[i]; }
  // While parked (ResourceManager::mu_):
  unsigned level = 0;
  std::uint64_t seq = 0;
  std::int64_t parked_at_ns = 0;
};

struct Waiter {
  unsigned level;
  std::uint64_t seq;
  Task* task;
  bool operator<(const Waiter& o) const noexcept { return std::tie(level, seq) < std::tie(o.level, o.seq); }
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
  alignas(64) std::atomic<std::uint64_t> limit;
  std::atomic<std::int64_t> tat{0};
  std::atomic<std::uint64_t> in_use{0};
  std::atomic<std::uint32_t> waiters{0};
  std::atomic<std::uint64_t> max_in_use{0};
  // Guarded by manager.mu_:
  std::set<Waiter> wait_list;
  std::int64_t total_wait_ns = 0;
};

class SchedulerCore;

class ResourceManager {
 public:
  explicit ResourceManager(SchedulerCore& core) : core_(core) {}

  ~ResourceManager();
  ResourceGroupCore& create(std::string name, std::uint64_t limit);
  // A rate group: `permits` per `interval_ns`, at most `burst` at once.
  ResourceGroupCore& create_rate(std::string name, std::uint64_t permits, std::int64_t interval_ns,
                                 std::uint64_t burst);
  ResourceGroupCore* find(std::string_view name);  // or null
  // Stops the rate timer; the workers have exited.
  void stop() noexcept;
  // Validates and normalises a submission's needs; throws InvalidArgument.
  // Without `check_limits`, a need above a group's current limit is accepted
  // (a workflow node checked when its run started: it waits like a parked
  // task for a lowered limit to come back up).
  NeedList* make_needs(const std::vector<Need>& needs, bool check_limits = true);

  // On a worker, before running t: true when t now holds all its needs;
  // false when t was parked (it is requeued, holding them, when they fit).
  bool acquire_or_park(Task* t, NeedList& needs, unsigned level);
  // At submit time, for a queued (unclaimed) task: when a counting group it
  // needs is full or has waiters ahead of it, claims and parks it at once,
  // so that a release hands its permits over without waiting for a worker
  // to come across the task in a queue; true then. Otherwise (it fits, or
  // it needs a rate group, or it was cancelled meanwhile) false: queue it,
  // and it takes its permits when it runs.
  bool park_if_busy(Task* t, NeedList& needs, unsigned level);
  // Handle::cancel() of a parked task: takes it off the wait lists; it
  // stays claimed (state running), and the caller now holds the reference
  // its wait-list entry had. False if it is not parked.
  bool unpark_for_cancel(Task* t);
  void release(NeedList& needs) noexcept;
  void set_limit(ResourceGroupCore& g, std::uint64_t limit);
  // set_priority() of a parked task: moves it to its place for `level` in
  // every wait list (keeping its age), then grants what now fits. False if
  // the task is not parked.
  bool reorder_parked(Task* t, unsigned level);
  ResourceStats stats(const ResourceGroupCore& g) const;
 private:
  void park_locked(Task* t, NeedList& needs, unsigned level);  // mu_ held: onto every wait list
 public:
  std::vector<ResourceStats> all_stats() const;  // every group, in creation order

  std::uint64_t parked() const noexcept { return parked_.load(std::memory_order_seq_cst); }
  // Completes parked tasks as cancelled: all of them (shutdown(cancel)), or
  // those that need more of some group than its limit, which no release can
  // grant (a drain with nothing left running, after the limit was lowered).
  // Returns how many.
  enum class Which { all, unsatisfiable };
  std::size_t cancel_parked(Which which) noexcept;

 private:
  bool try_take_all(NeedList& needs) noexcept;
  // When the head waiter of rate group g can take its tokens, judged at `now`
  // (mu_ held). One clock reading for the whole decision: a fresh one here
  // would always lie a little after the caller's and never look due.
  std::int64_t due_ns_locked(const ResourceGroupCore& g, std::int64_t now) const noexcept;
  void timer_loop();
  // The task is queued again or completed: it no longer counts as parked.
  void unpark_one() noexcept;
  void dispatch_locked(std::vector<ResourceGroupCore*> groups) noexcept;
  void unregister_locked(Task* t, NeedList& needs) noexcept;

  SchedulerCore& core_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<ResourceGroupCore>> groups_;  // mu_; a group lives as long as the manager
  std::uint64_t next_seq_ = 0;                              // mu_
  std::atomic<std::uint64_t> parked_{0};
  // The rate timer: sleeps until the earliest head waiter of a rate group is
  // due, then dispatches; started with the first rate group.
  std::condition_variable timer_cv_;  // with mu_
  bool timer_stop_ = false;           // mu_
  std::thread timer_;
};

}  // namespace ordo::detail
