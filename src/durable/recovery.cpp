// Durable tasks: start() — what the replayed journal holds becomes queued,
// scheduled, blocked or dead tasks, and what this process cannot run (an
// undefined type, a missing resource group) is refused or buried.
#include "durable/runtime.hpp"
#include "journal/records.hpp"
#include "ordo/resource.hpp"

namespace ordo::detail {

DurableRecovery DurableRuntime::start() {
  std::unique_lock lock(mu_);
  if (started_) throw Error("ordo: DurableTasks::start() called twice");
  DurableRecovery report;
  std::vector<std::pair<TaskId, std::string>> to_bury;  // (task, reason)
  for (auto& [id, task] : tasks_) {
    if (task.state == JournaledTask::State::dead) continue;
    // What this process lacks to run the task: its type, or a resource
    // group (or room in one) that it needs. Each has its own error.
    enum class Lack { nothing, type, group, room } lack = Lack::nothing;
    std::string problem;
    if (!types_.count(task.type)) {
      lack = Lack::type;
      problem = "its type '" + task.type + "' is not defined";
    } else {
      for (const auto& [name, amount] : task.needs()) {
        const ResourceGroup g = scheduler_.find_resource_group(name);
        if (!g.valid()) {
          lack = Lack::group;
          problem = "its type '" + task.type + "' needs resource group '" + name + "', which the scheduler does not have";
          break;
        }
        if (amount > g.limit()) {
          lack = Lack::room;
          problem = "its type '" + task.type + "' needs " + std::to_string(amount) + " of resource group '" + name +
                    "', whose limit is " + std::to_string(g.limit());
          break;
        }
      }
    }
    if (lack == Lack::nothing) continue;
    if (!options_.unknown_types_to_dead) {
      const std::string what = "ordo: the journal holds durable task " + std::to_string(id) + ", but " + problem;
      const std::string or_dead = ", or set DurableOptions::unknown_types_to_dead)";
      if (lack == Lack::type) throw UnknownTaskType(what + " (define it before start()" + or_dead);
      if (lack == Lack::group) throw UnknownResourceGroup(what + " (create it before start()" + or_dead);
      throw InvalidArgument(what + " (raise the limit before start()" + or_dead);
    }
    to_bury.emplace_back(id, "recovery: " + problem);
  }
  auto bury = [&](JournaledTask& task, const std::string& reason) {
    journal_->append(RecordType::dead, task.id, records::encode(records::Dead{task.attempts, reason}).view());
    task.state = JournaledTask::State::dead;
    task.more().last_error = reason;
  };
  for (auto& [id, reason] : to_bury) bury(tasks_.at(id), reason);
  // Nodes of a workflow whose WORKFLOW record never made it: the process
  // died inside enqueue_workflow, which had not returned. Never accepted,
  // so dropped (journaled, so that compaction forgets them too).
  for (const auto& [flow_id, nodes] : unlinked_nodes_) {
    for (TaskId node_id : nodes) {
      if (!tasks_.count(node_id)) continue;
      journal_->append(RecordType::cancel, node_id);
      tasks_.erase(node_id);
    }
  }
  unlinked_nodes_.clear();
  // Workflows: a node without an ENQUEUE was completed and compacted away.
  std::vector<TaskId> finished_flows;
  for (auto& [fid, flow] : flows_) {
    const auto n = static_cast<std::uint32_t>(flow->node_ids.size());
    flow->pending.assign(n, 0);
    flow->remaining = 0;
    // A discarded node and what depends on it never run (their records may
    // be gone: compaction, or a crash between the discard's records). What
    // the journal still holds of them is cancelled now.
    std::vector<bool> doomed(n, false);
    std::vector<std::uint32_t> discarded;
    for (std::uint32_t i = 0; i < n; ++i) {
      if (!flow->discarded[i]) continue;
      discarded.push_back(i);
      for (std::uint32_t j : flow->doomed_with(i)) doomed[j] = true;
    }
    if (!discarded.empty()) {
      flow->failed = true;
      // Again, for a discard made by ordo-wal (a node's CANCEL only).
      journal_->append(RecordType::checkpoint, fid, records::encode(records::WorkflowCheckpoint{discarded}).view());
    }
    for (std::uint32_t i = 0; i < n; ++i) {
      if (doomed[i] && flow->node_ids[i] != 0 && tasks_.count(flow->node_ids[i])) {
        journal_->append(RecordType::cancel, flow->node_ids[i]);
        tasks_.erase(flow->node_ids[i]);
      }
      if (doomed[i] || flow->node_ids[i] == 0 || !tasks_.count(flow->node_ids[i])) flow->done[i] = true;
      if (!flow->done[i]) ++flow->remaining;
    }
    for (std::uint32_t i = 0; i < n; ++i) {
      for (std::uint32_t p : flow->pred[i]) flow->pending[i] += flow->done[p] ? 0 : 1;
      if (flow->done[i] || flow->pending[i] == 0) continue;
      JournaledTask& task = tasks_.at(flow->node_ids[i]);
      if (task.state != JournaledTask::State::dead) {
        task.state = JournaledTask::State::blocked;
        ++blocked_;
      }
    }
    if (flow->remaining == 0) finished_flows.push_back(fid);  // died between its last node and its COMPLETE
  }
  for (TaskId fid : finished_flows) finish_flow_locked(*flows_.at(fid));
  report.workflows = flows_.size();
  for (auto& [id, task] : tasks_) {
    switch (task.state) {
      case JournaledTask::State::blocked:
        break;
      case JournaledTask::State::dead:
        ++report.dead;
        ++dead_;
        break;
      case JournaledTask::State::running:  // it had started when the process died
        ++report.interrupted;
        if (task.attempts >= max_attempts_of(task)) {
          bury(task, "interrupted on its last attempt (the process died while it ran)");
          ++report.dead;
          ++dead_;
          break;
        }
        [[fallthrough]];
      case JournaledTask::State::queued:
        ++report.requeued;
        queue_locked(task);
        break;
      case JournaledTask::State::waiting:
        ++report.requeued;
        ++report.delayed;
        schedule_locked(task, task.due_ns, task.retrying);
        break;
    }
  }
  report.keys = keys_.size();
  started_ = true;
  timer_ = std::thread([this] { timer_loop(); });
  post_pending(lock);
  return report;
}

}  // namespace ordo::detail
