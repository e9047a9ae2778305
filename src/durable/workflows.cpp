// Durable workflows: enqueueing one (journaled as node ENQUEUEs committed by
// a WORKFLOW record), releasing successors as nodes complete, ending the
// workflow, and discarding a dead node (which fails its workflow).
#include <algorithm>
#include <chrono>
#include <string>
#include <unordered_map>
#include <vector>

#include "durable/runtime.hpp"
#include "journal/records.hpp"
#include "ordo/workflow.hpp"

namespace ordo::detail {

void DurableRuntime::node_done_locked(DurableFlow& flow, std::uint32_t node) {
  if (flow.done[node]) return;
  flow.done[node] = true;
  --flow.remaining;
  for (std::uint32_t s : flow.succ[node]) {
    if (--flow.pending[s] != 0) continue;
    auto it = tasks_.find(flow.node_ids[s]);
    if (it == tasks_.end() || it->second.state != JournaledTask::State::blocked) continue;
    --blocked_;
    queue_locked(it->second);
  }
  if (flow.remaining == 0) finish_flow_locked(flow);
}

void DurableRuntime::finish_flow_locked(DurableFlow& flow) {
  // A failed workflow frees its key at once, as a discarded task does: the
  // caller discarded it and may enqueue it again.
  const bool retain = !flow.key.empty() && !flow.failed;
  const std::int64_t retain_until =
      retain ? wall_now_ns() + std::chrono::nanoseconds(options_.key_retention).count() : 0;
  const records::Complete record{retain_until, retain ? std::string_view(flow.key) : std::string_view()};
  journal_->append(RecordType::complete, flow.id, records::encode(record).view());
  if (retain) {
    keys_[flow.key] = KeyEntry{flow.id, retain_until};
  } else if (auto it = keys_.find(flow.key); !flow.key.empty() && it != keys_.end() && it->second.id == flow.id) {
    keys_.erase(it);
  }
  flows_.erase(flow.id);  // `flow` dies here
}

std::vector<std::uint32_t> DurableFlow::doomed_with(std::uint32_t from) const {
  std::vector<std::uint32_t> out{from};
  std::vector<bool> seen(succ.size(), false);
  seen[from] = true;
  for (std::size_t i = 0; i < out.size(); ++i) {
    for (std::uint32_t s : succ[out[i]]) {
      if (seen[s] || done[s]) continue;
      seen[s] = true;
      out.push_back(s);
    }
  }
  return out;
}

void DurableRuntime::discard_node_locked(JournaledTask& task, DurableFlow& flow) {
  const std::uint32_t node = task.node;
  const TaskId node_id = task.id;
  // The workflow's CHECKPOINT (every node discarded so far) commits the
  // discard: it lives as long as the workflow does, so that a restart —
  // also after compaction folded the nodes' records away — knows that the
  // node never succeeded and cancels what depends on it.
  records::WorkflowCheckpoint checkpoint;
  for (std::uint32_t i = 0; i < flow.discarded.size(); ++i) {
    if (flow.discarded[i] || i == node) checkpoint.discarded.push_back(i);
  }
  journal_->append(RecordType::checkpoint, flow.id, records::encode(checkpoint).view());
  const std::vector<std::uint32_t> doomed = flow.doomed_with(node);
  for (std::uint32_t i : doomed) {
    if (i != node && tasks_.count(flow.node_ids[i])) journal_->append(RecordType::cancel, flow.node_ids[i]);
  }
  journal_->append_durable(RecordType::cancel, node_id);
  flow.discarded[node] = true;
  flow.failed = true;
  for (std::uint32_t i : doomed) {
    // Successors of an unfinished node are blocked; the node itself is dead.
    if (auto it = tasks_.find(flow.node_ids[i]); it != tasks_.end()) {
      if (it->second.state == JournaledTask::State::dead) --dead_;
      if (it->second.state == JournaledTask::State::blocked) --blocked_;
      tasks_.erase(it);
    }
    flow.done[i] = true;
    --flow.remaining;
  }
  if (flow.remaining == 0) finish_flow_locked(flow);
  notify_drain_locked();
}

void DurableRuntime::forget_workflow_locked(TaskId flow_id, std::uint32_t nodes, std::uint32_t appended) noexcept {
  for (std::uint32_t i = 0; i < nodes; ++i) {
    auto it = tasks_.find(flow_id + 1 + i);
    if (it == tasks_.end()) continue;
    if (it->second.state == JournaledTask::State::blocked) --blocked_;
    tasks_.erase(it);
  }
  if (auto flow = flows_.find(flow_id); flow != flows_.end()) {
    const std::string& key = flow->second->key;
    if (auto k = keys_.find(key); !key.empty() && k != keys_.end() && k->second.id == flow_id) keys_.erase(k);
    flows_.erase(flow);
  }
  // Without their WORKFLOW record the next start would drop these nodes
  // anyway; cancelling them now keeps the journal's live count true. Best
  // effort: a journal that failed takes nothing more.
  try {
    for (std::uint32_t i = 0; i < appended; ++i) journal_->append(RecordType::cancel, flow_id + 1 + i);
  } catch (...) {
  }
  notify_drain_locked();
}

void DurableRuntime::release_successors_locked(TaskId flow_id, std::uint32_t node, bool durable) noexcept {
  --releasing_;
  notify_drain_locked();
  auto flow = flows_.find(flow_id);
  if (!durable || flow == flows_.end()) {
    journal_failed_ = !durable || journal_failed_;  // the next start releases them
    return;
  }
  try {
    node_done_locked(*flow->second, node);
  } catch (...) {
    journal_failed_ = true;  // the workflow's COMPLETE was not recorded; the next start finishes it
  }
}

TaskId DurableRuntime::enqueue_workflow(const DurableWorkflow& workflow, std::string key) {
  const auto& nodes = workflow.nodes();
  if (nodes.empty()) throw InvalidArgument("ordo: durable workflow '" + workflow.name() + "' has no nodes");
  if (nodes.size() > 0xffffff) throw InvalidArgument("ordo: durable workflow '" + workflow.name() + "' is too large");
  // Every string the WORKFLOW record holds has a 16-bit length (the node
  // types were checked by define()).
  records::check_str16(workflow.name(), "the durable workflow name");
  records::check_str16(key, "the idempotency key of durable workflow '" + workflow.name() + "'");
  for (const auto& node : nodes) records::check_str16(node.name, "a node name of durable workflow '" + workflow.name() + "'");
  // The checks of an in-memory Workflow: duplicate and unknown names, cycles (named).
  Workflow check(workflow.name());
  std::unordered_map<std::string, std::uint32_t> index;
  for (std::uint32_t i = 0; i < nodes.size(); ++i) {
    if (!types_.count(nodes[i].type)) {
      throw InvalidArgument("ordo: durable workflow '" + workflow.name() + "' node '" + nodes[i].name +
                            "' names undefined type '" + nodes[i].type + "'");
    }
    check.node(nodes[i].name, [] {});  // only the shape is checked
    index[nodes[i].name] = i;
  }
  std::vector<std::pair<std::uint32_t, std::uint32_t>> edges;
  for (std::uint32_t i = 0; i < nodes.size(); ++i) {
    for (const std::string& before : nodes[i].after) {
      check[nodes[i].name].after(before);
      auto it = index.find(before);
      if (it != index.end()) edges.emplace_back(it->second, i);
    }
  }
  check.validate();  // throws InvalidGraph naming the problem
  const auto n = static_cast<std::uint32_t>(nodes.size());

  std::unique_lock lock(mu_);
  if (!started_) throw Error("ordo: DurableTasks::enqueue_workflow before start()");
  if (stopping_) throw Error("ordo: DurableTasks is shutting down and accepts no new workflows");
  if (TaskId existing = 0; key_taken_locked(key, existing)) return existing;
  auto flow = std::make_unique<DurableFlow>();
  DurableFlow& f = *flow;
  f.id = next_id_;
  next_id_ += n + 1;
  f.name = workflow.name();
  f.key = key;
  f.done.assign(n, false);
  f.discarded.assign(n, false);
  f.pending.assign(n, 0);
  f.succ.resize(n);
  f.pred.resize(n);
  f.remaining = n;
  for (auto [from, to] : edges) {
    f.succ[from].push_back(to);
    f.pred[to].push_back(from);
    ++f.pending[to];
  }
  for (std::uint32_t i = 0; i < n; ++i) {
    f.node_names.push_back(nodes[i].name);
    f.node_ids.push_back(f.id + 1 + i);
    JournaledTask* task = &tasks_[f.id + 1 + i];
    task->id = f.id + 1 + i;
    task->type = nodes[i].type;
    task->args = nodes[i].args;
    task->level = static_cast<std::uint8_t>(types_.at(task->type).options.priority.value_or(Priority::normal));
    task->flow = f.id;
    task->node = i;
    task->state = JournaledTask::State::blocked;  // nothing runs before the whole workflow is durable
    ++blocked_;
  }
  if (!key.empty()) keys_[key] = KeyEntry{f.id, 0};
  // Every record is built under mu_ (tasks_ may change under other threads'
  // feet once it is dropped), then appended without it.
  records::Workflow declaration{.name = f.name, .key = f.key, .nodes = {}, .edges = {}};
  for (const auto& node : nodes) declaration.nodes.push_back({node.name, node.type});
  for (auto [from, to] : edges) declaration.edges.push_back({from, to});
  const records::PayloadWriter decl = records::encode(declaration);
  std::vector<records::PayloadWriter> node_records;
  node_records.reserve(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    const JournaledTask& task = tasks_.at(f.id + 1 + i);
    node_records.push_back(records::encode(records::Enqueue{.type = task.type, .level = task.level, .max_attempts = 0,
                                                            .run_at_ns = 0, .key = {}, .needs = {}, .workflow = f.id,
                                                            .node = i, .args = task.args}));
  }
  const TaskId flow_id = f.id;
  flows_.emplace(f.id, std::move(flow));
  lock.unlock();

  // The nodes first, the WORKFLOW record last: it commits the workflow (a
  // crash before it leaves nodes that recovery drops, never half a graph).
  std::uint32_t appended = 0;
  try {
    for (; appended < n; ++appended) {
      journal_->append(RecordType::enqueue, flow_id + 1 + appended, node_records[appended].view());
    }
    const Lsn last = journal_->append(RecordType::workflow, flow_id, decl.view());
    journal_->wait_durable(last);  // one group commit for the whole workflow
  } catch (...) {
    // Not accepted: no key, node or workflow may stay behind in memory.
    lock.lock();
    forget_workflow_locked(flow_id, n, appended);
    throw;
  }

  lock.lock();
  DurableFlow& live = *flows_.at(flow_id);  // no node ran yet: it cannot have completed
  for (std::uint32_t i = 0; i < n; ++i) {
    if (live.pending[i] != 0) continue;
    --blocked_;
    queue_locked(tasks_.at(flow_id + 1 + i));
  }
  post_pending(lock);  // the workflow may complete, and be gone, once this drops the lock
  return flow_id;
}

}  // namespace ordo::detail
