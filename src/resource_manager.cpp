#include "resource_manager.hpp"

#include <algorithm>
#include <chrono>
#include <limits>
#include <string>

#include "ager.hpp"
#include "ordo/detail/dependency.hpp"
#include "ordo/errors.hpp"
#include "ordo/options.hpp"
#include "scheduler_core.hpp"

namespace ordo::detail {

ResourceGroupCore& ResourceManager::create(std::string name, std::uint64_t limit) {
  if (limit == 0) throw InvalidArgument("ordo: resource group '" + name + "' needs a limit of at least 1");
  std::lock_guard lock(mu_);
  for (const auto& g : groups_) {
    if (g->name == name) throw InvalidArgument("ordo: a resource group named '" + name + "' already exists");
  }
  groups_.push_back(std::make_unique<ResourceGroupCore>(*this, static_cast<std::uint32_t>(groups_.size()), name, limit));
  return *groups_.back();
}

ResourceManager::~ResourceManager() { stop(); }

ResourceGroupCore* ResourceManager::find(std::string_view name) {
  std::lock_guard lock(mu_);
  for (const auto& g : groups_)
    if (g->name == name) return g.get();
  return nullptr;
}

ResourceGroupCore& ResourceManager::create_rate(std::string name, std::uint64_t permits, std::int64_t interval_ns,
                                                std::uint64_t burst) {
  if (permits == 0 || interval_ns <= 0) {
    throw InvalidArgument("ordo: rate group '" + name + "' needs at least 1 permit per a positive interval");
  }
  if (burst == 0) throw InvalidArgument("ordo: rate group '" + name + "' needs a burst of at least 1");
  const std::int64_t emission = std::max<std::int64_t>(1, interval_ns / static_cast<std::int64_t>(permits));
  std::lock_guard lock(mu_);
  for (const auto& g : groups_) {
    if (g->name == name) throw InvalidArgument("ordo: a resource group named '" + name + "' already exists");
  }
  groups_.push_back(
      std::make_unique<ResourceGroupCore>(*this, static_cast<std::uint32_t>(groups_.size()), name, burst, emission));
  if (!timer_.joinable()) timer_ = std::thread([this] { timer_loop(); });
  return *groups_.back();
}

void ResourceManager::stop() noexcept {
  {
    std::lock_guard lock(mu_);
    timer_stop_ = true;
  }
  timer_cv_.notify_all();
  if (timer_.joinable()) timer_.join();
}

std::int64_t ResourceManager::due_ns_locked(const ResourceGroupCore& g, std::int64_t now) const noexcept {
  const Task* t = g.wait_list.begin()->task;
  std::uint64_t amount = 0;
  for (const NeedEntry& e : *t->preds->needs)
    if (e.group == &g) amount = e.amount;
  const std::int64_t tat = std::max(g.tat.load(std::memory_order_seq_cst), now);
  // relaxed: a rate group's limit (its burst) is a number, not a hand-off;
  // set_limit() re-dispatches under mu_, which orders it before this read.
  return tat + static_cast<std::int64_t>(amount) * g.emission_ns -
         static_cast<std::int64_t>(g.limit.load(std::memory_order_relaxed)) * g.emission_ns;
}

void ResourceManager::timer_loop() {
  std::unique_lock lock(mu_);
  while (!timer_stop_) {
    std::vector<ResourceGroupCore*> due;
    std::int64_t now = now_ns();
    for (const auto& g : groups_)
      if (g->is_rate() && !g->wait_list.empty() && due_ns_locked(*g, now) <= now) due.push_back(g.get());
    if (!due.empty()) dispatch_locked(std::move(due));
    // Sleep until the earliest head whose tokens are still to come. A head
    // that is due but still waiting is blocked by a counting group, whose
    // release grants it: the timer does not spin on it.
    now = now_ns();
    std::int64_t next = std::numeric_limits<std::int64_t>::max();
    for (const auto& g : groups_) {
      if (!g->is_rate() || g->wait_list.empty()) continue;
      const std::int64_t at = due_ns_locked(*g, now);
      if (at > now) next = std::min(next, at);
    }
    if (next == std::numeric_limits<std::int64_t>::max()) {
      timer_cv_.wait(lock);
    } else {
      timer_cv_.wait_for(lock, std::chrono::nanoseconds(next - now));
    }
  }
}

NeedList* ResourceManager::make_needs(const std::vector<Need>& needs, bool check_limits) {
  NeedList* list = pool_new<NeedList>();
  try {
    if (needs.size() > NeedList::kInline) list->more.reset(new NeedEntry[needs.size()]);
    for (const Need& n : needs) {
      ResourceGroupCore* g = n.group.core();
      if (g == nullptr) throw InvalidArgument("ordo: a need names an empty ResourceGroup");
      if (&g->manager != this) {
        throw InvalidArgument("ordo: resource group '" + g->name + "' belongs to another scheduler");
      }
      if (n.amount == 0) throw InvalidArgument("ordo: a need of 0 from resource group '" + g->name + "'");
      NeedEntry* same = std::find_if(list->begin(), list->end(), [g](const NeedEntry& e) { return e.group == g; });
      if (same != list->end()) {
        same->amount += n.amount;
      } else {
        list->begin()[list->count++] = NeedEntry{g, n.amount};
      }
    }
    for (const NeedEntry& e : *list) {
      if (!check_limits) break;
      const std::uint64_t limit = e.group->limit.load(std::memory_order_relaxed);
      if (e.amount > limit) {
        throw InvalidArgument("ordo: a task needs " + std::to_string(e.amount) + " of resource group '" +
                              e.group->name + "', whose limit is " + std::to_string(limit) + ": it could never run");
      }
    }
  } catch (...) {
    pool_delete(list);
    throw;
  }
  std::sort(list->begin(), list->end(), [](const NeedEntry& a, const NeedEntry& b) { return a.group->id < b.group->id; });
  return list;
}

// All or nothing, in group-id order. seq_cst on in_use: the releaser's half
// of the hand-off protocol reads `waiters` after its own RMW on in_use.
bool ResourceManager::try_take_all(NeedList& needs) noexcept {
  std::size_t taken = 0;
  for (; taken < needs.count; ++taken) {
    const NeedEntry& e = needs[taken];
    if (e.group->is_rate()) {
      const std::int64_t now = now_ns();
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
    std::uint64_t cur = e.group->in_use.load(std::memory_order_seq_cst);
    bool ok = false;
    for (;;) {
      if (cur + e.amount > e.group->limit.load(std::memory_order_seq_cst)) break;
      if (e.group->in_use.compare_exchange_weak(cur, cur + e.amount, std::memory_order_seq_cst)) {
        ok = true;
        break;
      }
    }
    if (!ok) break;
    const std::uint64_t now_in_use = cur + e.amount;
    std::uint64_t seen = e.group->max_in_use.load(std::memory_order_relaxed);  // statistics only
    while (now_in_use > seen && !e.group->max_in_use.compare_exchange_weak(seen, now_in_use, std::memory_order_relaxed)) {
    }
  }
  if (taken == needs.count) return true;
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

bool ResourceManager::acquire_or_park(Task* t, NeedList& needs, unsigned level) {
  // Fast path: nobody waits on any group we need, and everything fits.
  bool contended = false;
  for (const NeedEntry& e : needs) contended |= e.group->waiters.load(std::memory_order_seq_cst) != 0;
  if (!contended && try_take_all(needs)) {
    needs.held = true;
    return true;
  }
  {
    std::lock_guard lock(mu_);
    // May we go ahead of the tasks already waiting? Only of those with a
    // lower priority, in every group we need (priority, then age).
    bool first_in_line = true;
    for (const NeedEntry& e : needs) {
      if (!e.group->wait_list.empty() && e.group->wait_list.begin()->level <= level) first_in_line = false;
    }
    if (first_in_line && try_take_all(needs)) {
      needs.held = true;
      return true;
    }
    park_locked(t, needs, level);
  }
  return false;
}

void ResourceManager::park_locked(Task* t, NeedList& needs, unsigned level) {
  std::vector<ResourceGroupCore*> groups;
  needs.level = level;
  needs.seq = next_seq_++;
  needs.parked_at_ns = now_ns();
  for (const NeedEntry& e : needs) {
    e.group->wait_list.insert(Waiter{level, needs.seq, t});
    e.group->waiters.fetch_add(1, std::memory_order_seq_cst);  // the parker's half of the hand-off protocol
    groups.push_back(e.group);
  }
  parked_.fetch_add(1, std::memory_order_seq_cst);
  // A release that ran before we registered did not see us: look again now.
  // That may grant t, which another worker may then run and free with its
  // needs: from here on only the local copy of the groups is read.
  dispatch_locked(groups);
  for (const ResourceGroupCore* g : groups)
    if (g->is_rate()) timer_cv_.notify_one();  // it may be the earliest due now
}

bool ResourceManager::park_if_busy(Task* t, NeedList& needs, unsigned level) {
  // seq_cst loads: the same hand-off protocol as acquire_or_park (a
  // release that misses our registration is caught by park_locked's dispatch).
  auto all_fit = [&] {
    for (const NeedEntry& e : needs) {
      if (e.group->is_rate()) return true;  // rate tokens are judged when it runs
      if (e.group->in_use.load(std::memory_order_seq_cst) + e.amount > e.group->limit.load(std::memory_order_seq_cst))
        return false;
    }
    return true;
  };
  bool contended = false;
  for (const NeedEntry& e : needs) contended |= e.group->waiters.load(std::memory_order_seq_cst) != 0;
  if (!contended && all_fit()) return false;
  std::lock_guard lock(mu_);
  for (const NeedEntry& e : needs)
    if (e.group->is_rate()) return false;
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
  park_locked(t, needs, level);
  return true;
}

bool ResourceManager::unpark_for_cancel(Task* t) {
  {
    std::lock_guard lock(mu_);
    NeedList& needs = *t->preds->needs;
    if (needs.count == 0) return false;
    auto& list = needs[0].group->wait_list;
    auto it = list.find(Waiter{needs.level, needs.seq, t});
    if (it == list.end() || it->task != t) return false;  // not parked (yet, or any more)
    unregister_locked(t, needs);
    std::vector<ResourceGroupCore*> groups;
    for (const NeedEntry& e : needs) groups.push_back(e.group);
    dispatch_locked(std::move(groups));  // whoever waited behind it may fit now
  }
  unpark_one();
  return true;
}

void ResourceManager::release(NeedList& needs) noexcept {
  needs.held = false;
  bool someone_waits = false;
  for (const NeedEntry& e : needs)
    if (!e.group->is_rate()) e.group->in_use.fetch_sub(e.amount, std::memory_order_seq_cst);  // tokens are consumed
  for (const NeedEntry& e : needs)
    if (!e.group->is_rate()) someone_waits |= e.group->waiters.load(std::memory_order_seq_cst) != 0;
  if (!someone_waits) return;
  std::vector<ResourceGroupCore*> groups;
  for (const NeedEntry& e : needs) groups.push_back(e.group);
  std::lock_guard lock(mu_);
  dispatch_locked(std::move(groups));
}

void ResourceManager::unpark_one() noexcept {
  // A draining worker that went idle because a task was still parked must
  // look again once none is: it may be the last one able to see that the
  // scheduler is done.
  if (parked_.fetch_sub(1, std::memory_order_seq_cst) == 1) core_.last_parked_task_left();
}

void ResourceManager::unregister_locked(Task* t, NeedList& needs) noexcept {
  const std::int64_t waited = now_ns() - needs.parked_at_ns;
  for (const NeedEntry& e : needs) {
    e.group->wait_list.erase(Waiter{needs.level, needs.seq, t});
    e.group->waiters.fetch_sub(1, std::memory_order_seq_cst);
    e.group->total_wait_ns += waited;
  }
  // parked_ is decremented by the caller once the task is back in a queue (or
  // completed): a draining scheduler must never see it in neither place.
}

// Grants waiters in order, per group, while the best one fits: the best
// waiter of a group keeps its place (nobody behind it takes that group's
// permits), so a task needing several groups is not starved by tasks needing
// one. A grant can only consume capacity, but it removes its task from other
// groups' lists, whose next waiter may now be first: those are looked at too.
void ResourceManager::dispatch_locked(std::vector<ResourceGroupCore*> work) noexcept {
  std::vector<Task*> granted;
  while (!work.empty()) {
    ResourceGroupCore* g = work.back();
    work.pop_back();
    while (!g->wait_list.empty()) {
      Task* t = g->wait_list.begin()->task;
      NeedList& needs = *t->preds->needs;
      if (!try_take_all(needs)) break;
      needs.held = true;
      unregister_locked(t, needs);
      for (const NeedEntry& e : needs)
        if (e.group != g) work.push_back(e.group);
      granted.push_back(t);
    }
  }
  // The parked task was claimed (state running) when its worker took it;
  // give it back to the queues, holding its permits, with the reference its
  // queue entry had.
  for (Task* t : granted) {
    // release: pairs with the claim's acquire in run_task().
    t->state.fetch_and(~kStateMask, std::memory_order_release);  // kQueued is 0
    core_.resubmit(t);
    unpark_one();
  }
}

std::size_t ResourceManager::cancel_parked(Which which) noexcept {
  std::vector<Task*> doomed;
  {
    std::lock_guard lock(mu_);
    for (const auto& g : groups_) {
      for (auto it = g->wait_list.begin(); it != g->wait_list.end();) {
        Task* t = it->task;
        ++it;  // unregister_locked erases t from this list too
        const NeedList& needs = *t->preds->needs;
        // relaxed: nothing runs (a drain found every worker idle), so the
        // limit is only compared, never paired with a permit hand-off.
        const bool hopeless = std::any_of(needs.begin(), needs.end(), [](const NeedEntry& e) {
          return e.amount > e.group->limit.load(std::memory_order_relaxed);
        });
        if (which == Which::unsatisfiable && !hopeless) continue;
        unregister_locked(t, *t->preds->needs);
        doomed.push_back(t);
      }
    }
  }
  for (Task* t : doomed) {
    t->state.fetch_and(~kStateMask, std::memory_order_release);  // back to queued, so that it can be claimed
    core_.complete_cancelled(t);
    unpark_one();
  }
  return doomed.size();
}

bool ResourceManager::reorder_parked(Task* t, unsigned level) {
  std::lock_guard lock(mu_);
  NeedList& needs = *t->preds->needs;
  if (needs.count == 0) return false;  // (`held` is not ours to read: the fast path writes it without mu_)
  auto& list = needs[0].group->wait_list;
  auto it = list.find(Waiter{needs.level, needs.seq, t});
  if (it == list.end() || it->task != t) return false;  // not parked (yet, or any more)
  std::vector<ResourceGroupCore*> groups;
  for (const NeedEntry& e : needs) {
    e.group->wait_list.erase(Waiter{needs.level, needs.seq, t});
    e.group->wait_list.insert(Waiter{level, needs.seq, t});  // the same age: only the priority changes
    groups.push_back(e.group);
  }
  needs.level = level;
  t->level.store(static_cast<std::uint8_t>(level), std::memory_order_relaxed);  // read when it is queued again (mu_)
  dispatch_locked(std::move(groups));  // it may be first in line now
  return true;
}

void ResourceManager::set_limit(ResourceGroupCore& g, std::uint64_t limit) {
  if (limit == 0) throw InvalidArgument("ordo: resource group '" + g.name + "' needs a limit of at least 1");
  g.limit.store(limit, std::memory_order_seq_cst);
  std::lock_guard lock(mu_);
  dispatch_locked({&g});  // a raise may fit waiters now
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
    const std::int64_t ahead = g.tat.load(std::memory_order_relaxed) - now_ns();
    s.in_use = ahead > 0 ? static_cast<std::uint64_t>((ahead + g.emission_ns - 1) / g.emission_ns) : 0;
  } else {
    s.in_use = g.in_use.load(std::memory_order_relaxed);
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
