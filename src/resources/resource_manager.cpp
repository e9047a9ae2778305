// ResourceManager: counting groups, every group's wait list, taking permits
// and tokens all or nothing, parking and unparking, dispatching grants,
// cancelling and re-ordering parked tasks, stats; and the public
// ResourceGroup. Rate groups' creation and their timer are in rate_groups.cpp.
#include "resources/resource_manager.hpp"

#include <algorithm>
#include <chrono>
#include <limits>
#include <memory>
#include <new>
#include <string>

#include "ordo/detail/dependency.hpp"
#include "ordo/errors.hpp"
#include "ordo/options.hpp"
#include "util/clock.hpp"

namespace ordo::detail {

ResourceGroupCore& ResourceManager::create(std::string name, std::uint64_t limit) {
  if (limit == 0) throw InvalidArgument("ordo: resource group '" + name + "' needs a limit of at least 1");
  std::lock_guard lock(mu_);
  for (const auto& g : groups_) {
    if (g->name == name) throw InvalidArgument("ordo: a resource group named '" + name + "' already exists");
  }
  auto g = std::make_unique<ResourceGroupCore>(*this, static_cast<std::uint32_t>(groups_.size()), name, limit);
  g->spare_slots = core_.worker_count();
  g->spares = std::make_unique<ResourceGroupCore::SpareSlot[]>(g->spare_slots);
  groups_.push_back(std::move(g));
  return *groups_.back();
}

ResourceManager::~ResourceManager() { stop(); }

ResourceGroupCore* ResourceManager::find(std::string_view name) {
  std::lock_guard lock(mu_);
  for (const auto& g : groups_)
    if (g->name == name) return g.get();
  return nullptr;
}

bool ResourceManager::exceeds_a_limit(const NeedList& needs) noexcept {
  // relaxed: a limit is a number compared under mu_; set_limit() stores it
  // before it takes mu_ and dispatches, so a change is always looked at again.
  for (const NeedEntry& e : needs)
    if (e.amount > e.group->limit.load(std::memory_order_relaxed)) return true;
  return false;
}

const Waiter* ResourceManager::first_eligible_locked(const ResourceGroupCore& g) const noexcept {
  for (const Waiter& w : g.wait_list)
    if (!exceeds_a_limit(*needs_of(w.task))) return &w;
  return nullptr;
}

void ResourceManager::fill_needs(NeedList& list, std::span<const Need> needs, bool check_limits) {
  if (needs.size() > NeedList::kInline) list.more.reset(new NeedEntry[needs.size()]);
  for (const Need& n : needs) {
    ResourceGroupCore* g = Access::core(n.group);
    if (g == nullptr) throw InvalidArgument("ordo: a need names an empty ResourceGroup");
    if (&g->manager != this) {
      throw InvalidArgument("ordo: resource group '" + g->name + "' belongs to another scheduler");
    }
    if (n.amount == 0) throw InvalidArgument("ordo: a need of 0 from resource group '" + g->name + "'");
    NeedEntry* same = std::find_if(list.begin(), list.end(), [g](const NeedEntry& e) { return e.group == g; });
    if (same != list.end()) {
      same->amount += n.amount;
    } else {
      list.begin()[list.count++] = NeedEntry{g, n.amount};
    }
  }
  for (const NeedEntry& e : list) {
    if (!check_limits) break;
    const std::uint64_t limit = e.group->limit.load(std::memory_order_relaxed);
    if (e.amount > limit) {
      throw InvalidArgument("ordo: a task needs " + std::to_string(e.amount) + " of resource group '" +
                            e.group->name + "', whose limit is " + std::to_string(limit) + ": it could never run");
    }
  }
  if (list.count > 1) {  // most tasks need one group: no call into the sort for them
    std::sort(list.begin(), list.end(), [](const NeedEntry& a, const NeedEntry& b) { return a.group->id < b.group->id; });
  }
}

// All or nothing, in group-id order. seq_cst on in_use: the releaser's half
// of the hand-off protocol reads `waiters` after its own RMW on in_use.
bool ResourceManager::try_take_all(NeedList& needs, int worker) noexcept {
  std::size_t taken = 0;
  // A group this call took spares ahead for and then found a waiter on:
  // they go back at the end. Once one is set no other group is refilled,
  // so one pointer is enough.
  ResourceGroupCore* refilled_seen_waiter = nullptr;
  for (; taken < needs.count; ++taken) {
    const NeedEntry& e = needs[taken];
    if (e.group->is_rate()) {
      const std::int64_t now = steady_now_ns();
      const std::int64_t cost = static_cast<std::int64_t>(e.amount) * e.group->emission_ns;
      // relaxed: the burst is a number; tokens are accounted by the CAS on tat alone.
      const std::int64_t window = static_cast<std::int64_t>(e.group->limit.load(std::memory_order_relaxed)) *
                                  e.group->emission_ns;
      std::int64_t tat = e.group->tat.load(std::memory_order_seq_cst);
      bool ok = false;
      for (;;) {
        const std::int64_t next_tat = std::max(tat, now) + cost;
        if (next_tat - now > window) break;  // not enough tokens yet
        if (e.group->tat.compare_exchange_weak(tat, next_tat, std::memory_order_seq_cst)) {
          ok = true;
          break;
        }
      }
      if (!ok) break;
      continue;
    }
    ResourceGroupCore& g = *e.group;
    if (worker != kNoWorker && g.spares != nullptr) {
      std::atomic<std::uint64_t>& mine = g.spares[worker].permits;
      std::uint64_t spare = mine.load(std::memory_order_relaxed);
      // relaxed: the permits were counted in in_use when the slot was
      // filled; the CAS only decides between us and a reclaimer's exchange.
      while (spare >= e.amount && !mine.compare_exchange_weak(spare, spare - e.amount, std::memory_order_relaxed)) {
      }
      if (spare >= e.amount) continue;  // no shared line touched
    }
    std::uint64_t cur = g.in_use.load(std::memory_order_seq_cst);
    std::uint64_t ahead = 0;
    bool ok = false;
    for (;;) {
      const std::uint64_t limit = g.limit.load(std::memory_order_seq_cst);
      if (cur + e.amount > limit) break;
      // Take a batch ahead for this worker's next tasks while the group is
      // far from its limit and nobody waits (a waiter takes them back).
      ahead = worker != kNoWorker && spares_allowed(g, limit) && cur + e.amount + kSpareBatch <= limit / 2 &&
                      refilled_seen_waiter == nullptr && g.waiters.load(std::memory_order_relaxed) == 0
                  ? kSpareBatch
                  : 0;
      if (g.in_use.compare_exchange_weak(cur, cur + e.amount + ahead, std::memory_order_seq_cst)) {
        ok = true;
        break;
      }
    }
    if (!ok) break;
    if (ahead != 0) {
      // seq_cst RMW, then seq_cst read of waiters: pairs with park_locked()
      // (registers, then reclaims); one of us sees the other.
      g.spares[worker].permits.fetch_add(ahead, std::memory_order_seq_cst);
      if (g.waiters.load(std::memory_order_seq_cst) != 0) refilled_seen_waiter = &g;
    }
    const std::uint64_t now_in_use = cur + e.amount;
    std::uint64_t seen = e.group->max_in_use.load(std::memory_order_relaxed);  // statistics only
    while (now_in_use > seen && !e.group->max_in_use.compare_exchange_weak(seen, now_in_use, std::memory_order_relaxed)) {
    }
  }
  if (refilled_seen_waiter != nullptr) return_spares_and_dispatch(*refilled_seen_waiter, static_cast<unsigned>(worker));
  if (taken == needs.count) return true;
  // What was taken from a spare slot goes back to in_use, like the rest: a
  // spare permit is one in_use already counts.
  for (std::size_t i = 0; i < taken; ++i) {
    const NeedEntry& e = needs[i];
    if (e.group->is_rate()) {
      // Give the tokens back; if the bucket refilled meanwhile this errs on
      // the side of fewer tokens, never more.
      e.group->tat.fetch_sub(static_cast<std::int64_t>(e.amount) * e.group->emission_ns, std::memory_order_seq_cst);
    } else {
      e.group->in_use.fetch_sub(e.amount, std::memory_order_seq_cst);
    }
  }
  return false;
}

bool ResourceManager::prepare_wait_nodes(NeedList& needs) noexcept {
  if (needs.wait_slots) return true;
  try {
    if (fail_wait_list_allocations.load(std::memory_order_relaxed) > 0 &&
        fail_wait_list_allocations.fetch_sub(1, std::memory_order_relaxed) > 0) {
      throw std::bad_alloc();
    }
    auto slots = std::make_unique<NeedList::WaitSlot[]>(needs.count);
    for (std::uint32_t i = 0; i < needs.count; ++i) {
      WaitList scratch;  // allocates the node; extracting it keeps the allocation
      scratch.insert(Waiter{0, 0, nullptr});
      slots[i].node = scratch.extract(scratch.begin());
    }
    needs.wait_slots = std::move(slots);
    return true;
  } catch (const std::bad_alloc&) {
    return false;
  }
}

bool ResourceManager::acquire_or_park(Task* t, NeedList& needs, unsigned level, unsigned worker) {
  // Fast path: nobody waits on any group we need, and everything fits.
  bool contended = false;
  for (const NeedEntry& e : needs) contended |= e.group->waiters.load(std::memory_order_seq_cst) != 0;
  if (!contended && try_take_all(needs, static_cast<int>(worker))) {
    needs.held.store(true, std::memory_order_relaxed);  // relaxed: see NeedList::held
    return true;
  }
  if (!prepare_wait_nodes(needs)) {
    // It cannot wait without its nodes, and nothing is changed yet: it goes
    // back to the queues as it came (claimed -> queued, with this entry's
    // reference) and tries again when a worker next takes it.
    // release: pairs with the claim's acquire in run_task().
    t->state.fetch_and(~kStateMask, std::memory_order_release);  // kQueued is 0
    core_.resubmit(t);
    return false;
  }
  std::lock_guard lock(mu_);
  // May we go ahead of the tasks already waiting? Only of those with a
  // lower priority, in every group we need (priority, then age).
  bool first_in_line = true;
  for (const NeedEntry& e : needs) {
    if (!e.group->wait_list.empty() && e.group->wait_list.begin()->level <= level) first_in_line = false;
  }
  if (first_in_line && try_take_all(needs, kNoWorker)) {
    needs.held.store(true, std::memory_order_relaxed);  // relaxed: see NeedList::held
    return true;
  }
  park_locked(t, needs, level);
  return false;
}

void ResourceManager::park_locked(Task* t, NeedList& needs, unsigned level) noexcept {
  needs.parked = true;
  needs.level = level;
  needs.seq = next_seq_++;
  needs.parked_at_ns = steady_now_ns();
  for (std::uint32_t i = 0; i < needs.count; ++i) {
    ResourceGroupCore& g = *needs[i].group;
    NeedList::WaitSlot& slot = needs.wait_slots[i];
    slot.node.value() = Waiter{level, needs.seq, t};
    // A prepared node: no allocation. The list is ordered by level (0, the
    // highest priority, first), then age: the newest waiter goes last unless
    // one of a lower priority waits. The end() hint makes that common case
    // (every waiter at one priority) constant time.
    slot.pos = g.wait_list.insert(g.wait_list.end(), std::move(slot.node));
    g.waiters.fetch_add(1, std::memory_order_seq_cst);  // the parker's half of the hand-off protocol
    reclaim_spares(g);  // after registering: see the invariants
    mark_locked(g);
  }
  parked_.fetch_add(1, std::memory_order_seq_cst);
  // A release that ran before we registered did not see us: look again now.
  // (It also wakes the rate timer: we may be the earliest due now.) That may
  // grant t, which another worker may then run and free with its needs:
  // nothing of them is read after this.
  dispatch_locked();
}

bool ResourceManager::park_if_busy(Task* t, NeedList& needs, unsigned level) {
  // seq_cst loads: the same hand-off protocol as acquire_or_park (a
  // release that misses our registration is caught by park_locked's dispatch).
  // A task that needs a rate group is never parked here: its tokens are
  // judged when it runs.
  auto all_fit = [&] {
    for (const NeedEntry& e : needs) {
      if (e.group->in_use.load(std::memory_order_seq_cst) + e.amount > e.group->limit.load(std::memory_order_seq_cst))
        return false;
    }
    return true;
  };
  // One pass for the common case: no rate group, nobody waiting, room in
  // every group: queued as usual.
  bool fits = true;
  for (const NeedEntry& e : needs) {
    if (e.group->is_rate()) return false;
    fits = fits && e.group->waiters.load(std::memory_order_seq_cst) == 0 &&
           e.group->in_use.load(std::memory_order_seq_cst) + e.amount <= e.group->limit.load(std::memory_order_seq_cst);
  }
  if (fits) return false;
  std::lock_guard lock(mu_);
  bool first_in_line = true;
  for (const NeedEntry& e : needs) {
    if (!e.group->wait_list.empty() && e.group->wait_list.begin()->level <= level) first_in_line = false;
  }
  if (first_in_line && all_fit()) return false;
  // Claim it, as a worker taking it from a queue would: a cancel() that got
  // there first wins, and then it is queued as usual (and skipped).
  std::uint32_t s = t->state.load(std::memory_order_acquire);
  for (;;) {
    if ((s & kStateMask) != kQueued) return false;
    // acquire: pairs with move_task()'s and set_priority's release, like run_task()'s claim.
    if (t->state.compare_exchange_weak(s, (s & ~kStateMask) | kRunning, std::memory_order_acquire)) break;
  }
  // Only once claimed are its needs ours: a worker that took a moved entry
  // of the same task may be preparing them too until its claim fails. And
  // only now is `held` exact (the claim's acquire pairs with a grant's
  // release): another entry may have been claimed, parked and granted
  // since our look at the hint. A granted task is not parked again — it
  // would take its permits twice and return them once — but queued, as it
  // is, holding them.
  if (needs.held.load(std::memory_order_relaxed)) {
    // release: pairs with the claim's acquire in run_task().
    t->state.fetch_and(~kStateMask, std::memory_order_release);  // kQueued is 0
    return false;
  }
  if (!prepare_wait_nodes(needs)) {
    // Without memory for its nodes it is queued as usual, unclaimed again.
    // release: pairs with the claim's acquire in run_task().
    t->state.fetch_and(~kStateMask, std::memory_order_release);  // kQueued is 0
    return false;
  }
  park_locked(t, needs, level);
  return true;
}

bool ResourceManager::unpark_for_cancel(Task* t) {
  {
    std::lock_guard lock(mu_);
    NeedList& needs = *needs_of(t);
    if (needs.count == 0) return false;
    if (!needs.parked) return false;  // not parked (yet, or any more)
    unregister_locked(needs);
    for (const NeedEntry& e : needs) mark_locked(*e.group);
    dispatch_locked();  // whoever waited behind it may fit now
  }
  unpark_one();
  return true;
}

void ResourceManager::release(NeedList& needs, int worker) noexcept {
  needs.held.store(false, std::memory_order_relaxed);  // relaxed: the finisher alone owns it now
  bool someone_waits = false;
  for (const NeedEntry& e : needs) {
    ResourceGroupCore& g = *e.group;
    if (g.is_rate()) continue;  // tokens are consumed
    const std::uint64_t limit = g.limit.load(std::memory_order_relaxed);
    if (worker != kNoWorker && spares_allowed(g, limit)) {
      std::atomic<std::uint64_t>& mine = g.spares[worker].permits;
      // Kept for this worker's next task, while the group is under half its
      // limit (nearer, a spare here would make another worker's task park
      // to get it back). seq_cst RMW: the same half of the hand-off protocol
      // as the in_use one below (waiters is read after). Relaxed loads:
      // hints, the protocol does not rest on them.
      if (mine.load(std::memory_order_relaxed) + e.amount <= kSpareMost &&
          g.in_use.load(std::memory_order_relaxed) <= limit / 2) {
        mine.fetch_add(e.amount, std::memory_order_seq_cst);
        continue;
      }
    }
    g.in_use.fetch_sub(e.amount, std::memory_order_seq_cst);
  }
  for (const NeedEntry& e : needs)
    if (!e.group->is_rate()) someone_waits |= e.group->waiters.load(std::memory_order_seq_cst) != 0;
  if (!someone_waits) return;
  if (worker != kNoWorker) {  // nothing is kept while anyone waits
    for (const NeedEntry& e : needs) {
      if (e.group->spares == nullptr) continue;
      if (const std::uint64_t mine = e.group->spares[worker].permits.exchange(0, std::memory_order_seq_cst))
        e.group->in_use.fetch_sub(mine, std::memory_order_seq_cst);
    }
  }
  std::lock_guard lock(mu_);
  for (const NeedEntry& e : needs) mark_locked(*e.group);
  dispatch_locked();
}

void ResourceManager::reclaim_spares(ResourceGroupCore& g) noexcept {
  if (g.spares == nullptr) return;
  std::uint64_t back = 0;
  for (unsigned w = 0; w < g.spare_slots; ++w) back += g.spares[w].permits.exchange(0, std::memory_order_seq_cst);
  if (back != 0) g.in_use.fetch_sub(back, std::memory_order_seq_cst);
}

void ResourceManager::return_spares_and_dispatch(ResourceGroupCore& g, unsigned worker) noexcept {
  if (const std::uint64_t mine = g.spares[worker].permits.exchange(0, std::memory_order_seq_cst))
    g.in_use.fetch_sub(mine, std::memory_order_seq_cst);
  std::lock_guard lock(mu_);
  mark_locked(g);
  dispatch_locked();
}

void ResourceManager::unpark_one() noexcept {
  // A draining worker that went idle because a task was still parked must
  // look again once none is: it may be the last one able to see that the
  // scheduler is done.
  if (parked_.fetch_sub(1, std::memory_order_seq_cst) == 1) core_.last_parked_task_left();
}

void ResourceManager::unregister_locked(NeedList& needs) noexcept {
  needs.parked = false;
  const std::int64_t waited = steady_now_ns() - needs.parked_at_ns;
  for (std::uint32_t i = 0; i < needs.count; ++i) {
    ResourceGroupCore& g = *needs[i].group;
    needs.wait_slots[i].node = g.wait_list.extract(needs.wait_slots[i].pos);  // kept for the next park
    g.waiters.fetch_sub(1, std::memory_order_seq_cst);
    g.total_wait_ns += waited;
  }
  // parked_ is decremented by the caller once the task is back in a queue (or
  // completed): a draining scheduler must never see it in neither place.
}

void ResourceManager::mark_locked(ResourceGroupCore& g) noexcept {
  if (g.to_dispatch) return;
  g.to_dispatch = true;
  g.next_to_dispatch = to_dispatch_;
  to_dispatch_ = &g;
}

// Grants waiters in order, per marked group, while the best one fits: the
// best waiter of a group keeps its place (nobody behind it takes that group's
// permits), so a task needing several groups is not starved by tasks needing
// one. A hopeless waiter (a need above a lowered limit) has no place to keep:
// it is passed over, or it would block everyone behind it for ever. A grant
// can only consume capacity, but it removes its task from other groups'
// lists, whose next waiter may now be first: those are marked too. Whatever
// changed in a rate group may move its next deadline, and so may a waiter
// found blocked on a rate group's tokens: the timer is told.
void ResourceManager::dispatch_locked() noexcept {
  bool rate_group_seen = false;
  while (ResourceGroupCore* g = to_dispatch_) {
    to_dispatch_ = g->next_to_dispatch;
    g->next_to_dispatch = nullptr;
    g->to_dispatch = false;
    rate_group_seen |= g->is_rate();
    for (auto it = g->wait_list.begin(); it != g->wait_list.end();) {
      Task* t = it->task;
      NeedList& needs = *needs_of(t);
      if (exceeds_a_limit(needs)) {
        ++it;
        continue;
      }
      if (!try_take_all(needs, kNoWorker)) {
        // A waiter that fits this group but waits for a rate group's tokens
        // must be timed: the timer may have passed over it while it was
        // hopeless (a raised limit makes it eligible here) and be asleep
        // with no deadline.
        for (const NeedEntry& e : needs) rate_group_seen |= e.group->is_rate();
        break;
      }
      ++it;  // unregister_locked takes t out of this list too
      needs.held.store(true, std::memory_order_relaxed);  // relaxed: see NeedList::held
      unregister_locked(needs);
      for (const NeedEntry& e : needs)
        if (e.group != g) mark_locked(*e.group);
      // The parked task was claimed (state running) when it was parked; give
      // it back to the queues, holding its permits, with the reference its
      // wait-list entry had. It is in no list now: we do not touch it again.
      // release: pairs with the claim's acquire in run_task().
      t->state.fetch_and(~kStateMask, std::memory_order_release);  // kQueued is 0
      core_.resubmit(t);
      unpark_one();
    }
  }
  if (rate_group_seen) timer_cv_.notify_one();
}

std::size_t ResourceManager::cancel_parked(Which which) noexcept {
  // One task at a time, so that nothing is allocated here: the completion
  // runs without mu_, and the next is looked for afresh.
  std::size_t cancelled = 0;
  for (;;) {
    Task* doomed = nullptr;
    {
      std::lock_guard lock(mu_);
      for (const auto& g : groups_) {
        for (const Waiter& w : g->wait_list) {
          if (which == Which::all || exceeds_a_limit(*needs_of(w.task))) {
            doomed = w.task;
            break;
          }
        }
        if (doomed != nullptr) break;
      }
      if (doomed == nullptr) break;
      NeedList& needs = *needs_of(doomed);
      unregister_locked(needs);
      if (which == Which::unsatisfiable) {
        // Dispatching passes over hopeless waiters already; this is for the
        // timer, whose head may have been this one.
        for (const NeedEntry& e : needs) mark_locked(*e.group);
        dispatch_locked();
      }
    }
    // back to queued, so that it can be claimed by complete_cancelled.
    doomed->state.fetch_and(~kStateMask, std::memory_order_release);  // release: pairs with its acquire claim
    core_.complete_cancelled(doomed);
    unpark_one();
    ++cancelled;
  }
  return cancelled;
}

bool ResourceManager::reorder_parked(Task* t, unsigned level) {
  std::lock_guard lock(mu_);
  NeedList& needs = *needs_of(t);
  if (needs.count == 0) return false;  // (`held` is not ours to read: the fast path writes it without mu_)
  if (!needs.parked) return false;  // not parked (yet, or any more)
  for (std::uint32_t i = 0; i < needs.count; ++i) {
    ResourceGroupCore& g = *needs[i].group;
    NeedList::WaitSlot& slot = needs.wait_slots[i];
    // The same node, moved: no allocation, so no half-moved task.
    WaitNode node = g.wait_list.extract(slot.pos);
    node.value().level = level;  // the same age: only the priority changes
    slot.pos = g.wait_list.insert(std::move(node)).position;
    mark_locked(g);
  }
  needs.level = level;
  t->level.store(static_cast<std::uint8_t>(level), std::memory_order_relaxed);  // read when it is queued again (mu_)
  dispatch_locked();  // it may be first in line now
  return true;
}

void ResourceManager::set_limit(ResourceGroupCore& g, std::uint64_t limit) {
  if (limit == 0) throw InvalidArgument("ordo: resource group '" + g.name + "' needs a limit of at least 1");
  g.limit.store(limit, std::memory_order_seq_cst);
  limit_changes_.fetch_add(1, std::memory_order_seq_cst);  // after the store: see limit_changes()
  {
    std::lock_guard lock(mu_);
    // A cut may leave the workers' spares above the new limit, or below
    // what spares_allowed() keeps them for: they come back first.
    reclaim_spares(g);
    // A raise may fit waiters now; a cut may make the head hopeless, and
    // those behind it must not wait for it.
    mark_locked(g);
    dispatch_locked();
  }
  // A draining scheduler whose workers sleep waiting for parked tasks must
  // look again: a waiter may be hopeless now, to be cancelled.
  core_.last_parked_task_left();
}

std::vector<ResourceStats> ResourceManager::all_stats() const {
  std::vector<const ResourceGroupCore*> groups;
  {
    std::lock_guard lock(mu_);
    for (const auto& g : groups_) groups.push_back(g.get());
  }
  std::vector<ResourceStats> out;
  out.reserve(groups.size());
  for (const ResourceGroupCore* g : groups) out.push_back(stats(*g));
  return out;
}

ResourceStats ResourceManager::stats(const ResourceGroupCore& g) const {
  ResourceStats s;
  s.name = g.name;
  s.limit = g.limit.load(std::memory_order_relaxed);
  if (g.is_rate()) {  // tokens taken within the current window
    const std::int64_t ahead = g.tat.load(std::memory_order_relaxed) - steady_now_ns();
    s.in_use = ahead > 0 ? static_cast<std::uint64_t>((ahead + g.emission_ns - 1) / g.emission_ns) : 0;
  } else {
    // Held by tasks: in_use less the workers' spares. Read the spares on
    // both sides of in_use and again if they moved, so that a slot given
    // back meanwhile is not subtracted twice (or not at all).
    auto spares = [&g] {
      std::uint64_t sum = 0;
      for (unsigned w = 0; w < g.spare_slots; ++w) sum += g.spares[w].permits.load(std::memory_order_seq_cst);
      return sum;
    };
    for (int attempt = 0;; ++attempt) {
      const std::uint64_t before = spares();
      const std::uint64_t counted = g.in_use.load(std::memory_order_seq_cst);
      if (spares() == before || attempt == 8) {
        s.in_use = counted > before ? counted - before : 0;
        break;
      }
    }
  }
  s.max_in_use = g.max_in_use.load(std::memory_order_relaxed);
  std::lock_guard lock(mu_);
  s.waiting = g.wait_list.size();
  s.total_wait_ms = static_cast<double>(g.total_wait_ns) / 1e6;
  return s;
}

}  // namespace ordo::detail

namespace ordo {

const std::string& ResourceGroup::name() const {
  if (!core_) throw Error("ordo: empty ResourceGroup");
  return core_->name;
}
std::uint64_t ResourceGroup::limit() const {
  if (!core_) throw Error("ordo: empty ResourceGroup");
  return core_->limit.load(std::memory_order_relaxed);
}
void ResourceGroup::set_limit(std::uint64_t limit) {
  if (!core_) throw Error("ordo: empty ResourceGroup");
  core_->manager.set_limit(*core_, limit);
}
ResourceStats ResourceGroup::stats() const {
  if (!core_) throw Error("ordo: empty ResourceGroup");
  return core_->manager.stats(*core_);
}

}  // namespace ordo
