// Durable tasks: the dead set — tasks whose attempts ran out (or that
// recovery could not run) — listed, sent back for another round, discarded.
#include <algorithm>

#include "durable/runtime.hpp"

namespace ordo::detail {

std::vector<DeadTask> DurableRuntime::dead() const {
  std::lock_guard lock(mu_);
  std::vector<DeadTask> out;
  for (const auto& [id, task] : tasks_) {
    if (task.state == JournaledTask::State::dead) out.push_back({id, task.type, task.attempts, task.last_error()});
  }
  std::sort(out.begin(), out.end(), [](const DeadTask& a, const DeadTask& b) { return a.id < b.id; });
  return out;
}

bool DurableRuntime::retry_dead(TaskId id) {
  std::unique_lock lock(mu_);
  auto it = tasks_.find(id);
  if (it == tasks_.end() || it->second.state != JournaledTask::State::dead) return false;
  if (!types_.count(it->second.type)) {
    throw UnknownTaskType("ordo: dead task " + std::to_string(id) + " has type '" + it->second.type +
                         "', which is not defined");
  }
  journal_->append_durable(RecordType::retry, id);
  it->second.attempts = 0;
  --dead_;
  queue_locked(it->second);
  post_pending(lock);
  return true;
}

bool DurableRuntime::discard_dead(TaskId id) {
  std::lock_guard lock(mu_);
  auto it = tasks_.find(id);
  if (it == tasks_.end() || it->second.state != JournaledTask::State::dead) return false;
  if (it->second.flow != 0) {
    if (auto flow = flows_.find(it->second.flow); flow != flows_.end()) {
      discard_node_locked(it->second, *flow->second);
      return true;
    }
  }
  journal_->append_durable(RecordType::cancel, id);
  if (!it->second.key().empty()) keys_.erase(it->second.key());
  tasks_.erase(it);
  --dead_;
  return true;
}

}  // namespace ordo::detail
