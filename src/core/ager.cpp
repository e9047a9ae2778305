#include "core/ager.hpp"

#include <algorithm>
#include <limits>

#include "ordo/handle.hpp"

namespace ordo::detail {

Ager::Ager(std::vector<std::int64_t> bounds_ns, std::function<bool(Task*, unsigned)> promote)
    : bounds_(std::move(bounds_ns)), promote_(std::move(promote)), lists_(bounds_.size()) {
  thread_ = std::thread([this] { run(); });
}

Ager::~Ager() { stop(); }

void Ager::track(Task* t, unsigned level, std::int64_t now) {
  t->refs.fetch_add(1, std::memory_order_relaxed);  // the ager's; dropped by run() or stop()
  bool was_empty;
  {
    std::lock_guard lock(mu_);
    was_empty = std::all_of(lists_.begin(), lists_.end(), [](const auto& l) { return l.empty(); });
    lists_[level].push_back(Entry{t, now + bounds_[level]});
  }
  if (was_empty) changed_.notify_one();
}

void Ager::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    if (stopping_) return;
    std::int64_t next = std::numeric_limits<std::int64_t>::max();
    for (const auto& l : lists_)
      if (!l.empty()) next = std::min(next, l.front().deadline_ns);
    if (next == std::numeric_limits<std::int64_t>::max()) {
      changed_.wait(lock);
      continue;
    }
    const std::int64_t now = steady_now_ns();
    if (next > now) {
      changed_.wait_for(lock, std::chrono::nanoseconds(next - now));
      continue;
    }
    // Collect what is due, then promote without the lock (promotion queues
    // the task again and may track it at its new level).
    std::vector<std::pair<Task*, unsigned>> due;
    for (unsigned level = 0; level < lists_.size(); ++level) {
      auto& l = lists_[level];
      while (!l.empty() && l.front().deadline_ns <= now) {
        due.emplace_back(l.front().task, level);
        l.pop_front();
      }
    }
    lock.unlock();
    for (auto [task, level] : due) {
      promote_(task, level);
      release_task(task);  // the ager's reference
    }
    lock.lock();
  }
}

void Ager::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (auto& l : lists_) {
    for (const Entry& e : l) release_task(e.task);
    l.clear();
  }
}

}  // namespace ordo::detail
