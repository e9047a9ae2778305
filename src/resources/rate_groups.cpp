// Rate groups: creating one (a token bucket kept as GCRA, see
// ResourceGroupCore), judging when a parked waiter's tokens are due, and the
// timer thread that dispatches rate waiters when they are. Counting groups,
// wait lists, acquisition (for both kinds) and dispatching are in
// resource_manager.cpp.
#include <algorithm>
#include <chrono>
#include <limits>
#include <string>

#include "ordo/detail/dependency.hpp"
#include "ordo/errors.hpp"
#include "resources/resource_manager.hpp"
#include "util/clock.hpp"

namespace ordo::detail {

ResourceGroupCore& ResourceManager::create_rate(std::string name, std::uint64_t permits, std::int64_t interval_ns,
                                                std::uint64_t burst) {
  if (permits == 0 || interval_ns <= 0) {
    throw InvalidArgument("ordo: rate group '" + name + "' needs at least 1 permit per a positive interval");
  }
  if (burst == 0) throw InvalidArgument("ordo: rate group '" + name + "' needs a burst of at least 1");
  // Rounded up: 107 per 10 ms gives one token every 93,458 ns, never more
  // tokens than asked for (rounding down would drift ahead of the rate).
  // At least 1 ns, however many permits.
  const auto interval = static_cast<std::uint64_t>(interval_ns);
  const std::int64_t emission =
      permits >= interval ? 1 : static_cast<std::int64_t>(interval / permits + (interval % permits != 0 ? 1 : 0));
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

std::int64_t ResourceManager::due_ns_locked(const ResourceGroupCore& g, const Waiter& w, std::int64_t now) noexcept {
  std::uint64_t amount = 0;
  for (const NeedEntry& e : *needs_of(w.task))
    if (e.group == &g) amount = e.amount;
  const std::int64_t tat = std::max(g.tat.load(std::memory_order_seq_cst), now);
  // relaxed: as in exceeds_a_limit().
  return tat + static_cast<std::int64_t>(amount) * g.emission_ns -
         static_cast<std::int64_t>(g.limit.load(std::memory_order_relaxed)) * g.emission_ns;
}

void ResourceManager::timer_loop() {
  std::unique_lock lock(mu_);
  while (!timer_stop_) {
    // One clock reading for the decision and for the next deadline. A head
    // due at `now` that is still waiting after the dispatch failed for want
    // of another group (a counting group, whose release dispatches it, or a
    // rate group, whose own head is timed): the timer does not spin on it.
    // Any head not due at `now` is timed, even if it is due by the time we
    // get here: judging it by a later clock would call it blocked and sleep
    // for ever (issue 11 §1.8).
    const std::int64_t now = steady_now_ns();
    for (const auto& g : groups_) {
      if (!g->is_rate()) continue;
      const Waiter* head = first_eligible_locked(*g);
      if (head != nullptr && due_ns_locked(*g, *head, now) <= now) mark_locked(*g);
    }
    dispatch_locked();
    std::int64_t next = std::numeric_limits<std::int64_t>::max();
    for (const auto& g : groups_) {
      if (!g->is_rate()) continue;
      const Waiter* head = first_eligible_locked(*g);
      if (head == nullptr) continue;
      const std::int64_t at = due_ns_locked(*g, *head, now);
      if (at > now) next = std::min(next, at);
    }
    if (next == std::numeric_limits<std::int64_t>::max()) {
      timer_cv_.wait(lock);
    } else {
      timer_cv_.wait_until(lock, std::chrono::steady_clock::time_point(std::chrono::nanoseconds(next)));
    }
  }
}

}  // namespace ordo::detail
