// Durable tasks: replay of the journal into tasks, workflows and keys, record
// by record, when DurableTasks is constructed (docs/journal-format.md,
// "Durable-task payloads"). start() then decides what to queue.
#include <algorithm>
#include <chrono>
#include <string>
#include <unordered_map>
#include <vector>

#include "durable/runtime.hpp"
#include "journal/records.hpp"

namespace ordo::detail {

void DurableRuntime::replay(const RecordView& r) {
  auto task_of = [&]() -> JournaledTask* {
    auto it = tasks_.find(r.task);
    return it == tasks_.end() ? nullptr : &it->second;
  };
  next_id_ = std::max(next_id_, r.task + 1);
  switch (r.type) {
    case RecordType::enqueue: {
      const records::Enqueue e = records::decode_enqueue(r);
      JournaledTask* task = &tasks_[r.task];
      *task = JournaledTask{};
      task->id = r.task;
      task->recovered = true;
      task->type = e.type;
      task->level = e.level;
      task->max_attempts = e.max_attempts;
      task->due_ns = e.run_at_ns;
      if (!e.key.empty()) task->more().key = e.key;
      for (const auto& need : e.needs) task->more().needs.emplace_back(std::string(need.group), need.amount);
      task->flow = e.workflow;
      task->node = e.node;
      task->args = e.args;
      if (task->flow != 0) unlinked_nodes_[task->flow].push_back(r.task);  // its WORKFLOW record follows
      if (task->due_ns != 0) task->state = JournaledTask::State::waiting;
      if (!task->key().empty()) keys_[task->key()] = KeyEntry{task->id, 0};
      break;
    }
    case RecordType::start:
      if (JournaledTask* task = task_of()) {
        task->attempts = records::decode_start(r).attempt;
        task->state = JournaledTask::State::running;  // until a later record says otherwise
      }
      break;
    case RecordType::checkpoint:
      if (JournaledTask* task = task_of()) {
        task->more().checkpoint = records::decode_task_checkpoint(r);
      } else if (auto flow = flows_.find(r.task); flow != flows_.end()) {
        // A workflow's checkpoint: the nodes discarded so far (all of them,
        // so that compaction may keep only the latest).
        DurableFlow& f = *flow->second;
        for (const std::uint32_t node : records::decode_workflow_checkpoint(r).discarded) {
          if (node >= f.discarded.size()) {
            throw JournalCorruption("ordo: journal CHECKPOINT of workflow " + std::to_string(r.task) +
                                    " discards node " + std::to_string(node) + ", which it does not have");
          }
          f.discarded[node] = true;
        }
      }
      break;
    case RecordType::complete: {
      const records::Complete c = records::decode_complete(r);
      const std::int64_t retain_until = c.retain_until_ns;
      const std::string key(c.key);
      JournaledTask* task = task_of();
      auto own_flow = flows_.find(r.task);  // when it is a workflow's own COMPLETE
      if (task != nullptr && task->flow != 0) {
        if (auto flow = flows_.find(task->flow); flow != flows_.end()) flow->second->done[task->node] = true;
      }
      // The key the task (or workflow) was enqueued with stays bound only
      // while its retention lasts: one that ran out before this start is
      // free, as it would have been in the process that wrote the record.
      std::string bound = task != nullptr ? task->key() : own_flow != flows_.end() ? own_flow->second->key : std::string();
      if (bound.empty()) bound = key;
      if (!key.empty() && retain_until > wall_now_ns()) {
        keys_[key] = KeyEntry{r.task, retain_until};
      } else if (auto it = keys_.find(bound); !bound.empty() && it != keys_.end() && it->second.id == r.task) {
        keys_.erase(it);
      }
      if (own_flow != flows_.end()) flows_.erase(own_flow);
      tasks_.erase(r.task);
      break;
    }
    case RecordType::fail:
      if (JournaledTask* task = task_of()) {
        const records::Fail f = records::decode_fail(r);
        task->attempts = f.attempt;
        task->due_ns = f.retry_at_ns;
        task->more().last_error = f.error;
        task->state = JournaledTask::State::waiting;
        task->retrying = true;
      }
      break;
    case RecordType::dead:
      if (JournaledTask* task = task_of()) {
        const records::Dead d = records::decode_dead(r);
        task->attempts = d.attempts;
        task->more().last_error = d.reason;
        task->state = JournaledTask::State::dead;
      }
      break;
    case RecordType::retry:
      if (JournaledTask* task = task_of()) {
        task->attempts = 0;
        task->state = JournaledTask::State::queued;
      }
      break;
    case RecordType::cancel:
      if (JournaledTask* task = task_of()) {
        if (!task->key().empty()) keys_.erase(task->key());
        // A dead workflow node discarded while no process ran (ordo-wal dead
        // discard): the workflow failed, as if discard_dead had been called.
        if (task->flow != 0 && task->state == JournaledTask::State::dead) {
          if (auto flow = flows_.find(task->flow); flow != flows_.end()) flow->second->discarded[task->node] = true;
        }
        tasks_.erase(r.task);
      }
      break;
    case RecordType::workflow: {
      const records::Workflow decl = records::decode_workflow(r);
      auto flow = std::make_unique<DurableFlow>();
      flow->id = r.task;
      flow->name = decl.name;
      flow->key = decl.key;
      const auto n = static_cast<std::uint32_t>(decl.nodes.size());
      for (const auto& node : decl.nodes) flow->node_names.emplace_back(node.name);  // each node's ENQUEUE carries its type
      flow->node_ids.assign(n, 0);
      flow->done.assign(n, false);
      flow->discarded.assign(n, false);
      flow->succ.resize(n);
      flow->pred.resize(n);
      for (const auto& edge : decl.edges) {
        flow->succ[edge.from].push_back(edge.to);
        flow->pred[edge.to].push_back(edge.from);
      }
      // The WORKFLOW record commits the workflow: its nodes' ENQUEUEs came first.
      if (auto nodes = unlinked_nodes_.find(r.task); nodes != unlinked_nodes_.end()) {
        for (TaskId node_id : nodes->second) {
          auto task = tasks_.find(node_id);
          if (task == tasks_.end()) continue;
          if (task->second.node >= n) {
            throw JournalCorruption("ordo: journal ENQUEUE of task " + std::to_string(node_id) + " names node " +
                                    std::to_string(task->second.node) + " of workflow " + std::to_string(r.task) +
                                    ", which has " + std::to_string(n));
          }
          flow->node_ids[task->second.node] = node_id;
        }
        unlinked_nodes_.erase(nodes);
      }
      if (!flow->key.empty()) keys_[flow->key] = KeyEntry{r.task, 0};
      flows_[r.task] = std::move(flow);
      break;
    }
    default:
      break;
  }
}

}  // namespace ordo::detail
