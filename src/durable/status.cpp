// Durable tasks: where a task is, by id, and the lists of tasks waiting for a
// time (scheduled, retrying). Read-only views of the
// runtime's state, taken under its lock.
#include <algorithm>
#include <chrono>

#include "durable/runtime.hpp"

namespace ordo {

const char* to_string(DurableTaskStatus::State state) noexcept {
  using State = DurableTaskStatus::State;
  switch (state) {
    case State::queued: return "queued";
    case State::blocked: return "blocked";
    case State::scheduled: return "scheduled";
    case State::running: return "running";
    case State::retrying: return "retrying";
    case State::dead: return "dead";
    case State::completed: return "completed";
    case State::unknown: break;
  }
  return "unknown";
}

namespace detail {
namespace {

std::chrono::system_clock::time_point wall_time(std::int64_t ns) {
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::nanoseconds(ns)));
}

DurableTaskStatus unknown(TaskId id) {
  DurableTaskStatus out;
  out.id = id;
  return out;
}

}  // namespace

DurableTaskStatus DurableRuntime::describe_locked(const JournaledTask& task) const {
  using State = DurableTaskStatus::State;
  DurableTaskStatus out;
  out.id = task.id;
  out.type = task.type;
  out.attempts = task.attempts;
  out.last_error = task.last_error();
  switch (task.state) {
    case JournaledTask::State::queued: out.state = State::queued; break;
    case JournaledTask::State::running: out.state = State::running; break;
    case JournaledTask::State::blocked: out.state = State::blocked; break;
    case JournaledTask::State::dead: out.state = State::dead; break;
    case JournaledTask::State::waiting:
      // Without a time it is an enqueue whose ENQUEUE is not yet durable:
      // not accepted (the enqueue may still fail), so not a task yet.
      if (task.due_ns == 0 && !task.retrying) return unknown(task.id);
      out.state = task.retrying ? State::retrying : State::scheduled;
      out.run_at = wall_time(task.due_ns);
      break;
  }
  return out;
}

DurableTaskStatus DurableRuntime::status(TaskId id) const {
  std::lock_guard lock(mu_);
  if (auto it = tasks_.find(id); it != tasks_.end()) return describe_locked(it->second);
  // Finished: only a retained idempotency key remembers it.
  const std::int64_t now = wall_now_ns();
  for (const auto& [key, entry] : keys_) {
    if (entry.id != id || entry.retain_until_ns == 0 || entry.retain_until_ns <= now) continue;
    DurableTaskStatus out = unknown(id);
    out.state = DurableTaskStatus::State::completed;
    out.key_retained_until = wall_time(entry.retain_until_ns);
    return out;
  }
  return unknown(id);
}

std::vector<DurableTaskStatus> DurableRuntime::waiting(bool retrying) const {
  std::vector<DurableTaskStatus> out;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, task] : tasks_) {
      if (task.state != JournaledTask::State::waiting || task.retrying != retrying) continue;
      if (task.due_ns == 0 && !task.retrying) continue;  // not accepted yet (see describe_locked)
      out.push_back(describe_locked(task));
    }
  }
  std::sort(out.begin(), out.end(), [](const DurableTaskStatus& a, const DurableTaskStatus& b) {
    return a.run_at != b.run_at ? a.run_at < b.run_at : a.id < b.id;
  });
  return out;
}

}  // namespace detail
}  // namespace ordo
