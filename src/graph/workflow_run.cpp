// Running a workflow: per-run counters, node tasks, failure and cancellation
// propagation, and the run's completion.
//
// A run keeps, per node, the number of predecessors still to finish, a status
// and a "poisoned" flag (some predecessor failed or was cancelled). A node that
// finishes decrements each successor; the one that brings a count to zero owns
// that successor: it runs it inline when it has the same level (no queue
// round-trip: a chain runs without touching a queue), queues it otherwise, or
// cancels it (and, transitively, what depends on it) when it is poisoned.
// Completion counts sinks (nodes without successors) not yet finished: each
// sink decrements one of kCompletionShards counters (by index, each on its
// own cache line, so that workers finishing different sinks rarely share a
// line), and a shard that drains decrements `remaining`, which also holds one
// count while the roots are being queued. Every node is an ancestor of some
// sink, and a node hands out its successors before they can start, so when
// the last sink finishes every node has finished and no thread will touch the
// run again: a node's thread touches the run only until its last successor
// decrement, which the sinks below it wait for. Counting sinks rather than
// all nodes keeps a shared counter off the path of most nodes.
#include <algorithm>
#include <memory>
#include <stdexcept>
#include <span>
#include <string>
#include <utility>

#include "ordo/detail/dependency.hpp"
#include "ordo/scheduler.hpp"
#include "ordo/workflow.hpp"
#include "resources/resource_manager.hpp"
#include "core/scheduler_core.hpp"
#include "graph/workflow_graph.hpp"
#include "ordo/detail/thread_context.hpp"

namespace ordo {
namespace detail {

struct RunState {
  const WorkflowGraph* graph;
  Scheduler* scheduler;
  SchedulerCore* core;
  std::uint8_t run_level;
  std::vector<std::uint8_t> levels;  // effective level per node; empty: all run_level
  // Per node, packed so that a node's counters share a cache line.
  struct NodeState {
    std::atomic<std::int32_t> pending;  // predecessors still to finish
    std::atomic<std::uint8_t> status;   // a NodeStatus
    std::atomic<std::uint8_t> poisoned; // a predecessor failed or was cancelled
  };
  std::unique_ptr<NodeState[]> nodes;
  std::atomic<std::int64_t> remaining{0};  // undrained shards (+1 while launching)
  struct alignas(64) Shard {
    std::atomic<std::int64_t> sinks_left{0};
  };
  Shard shards[WorkflowGraph::kCompletionShards];
  std::atomic<std::uint32_t> state{kQueued};  // kDone when every node finished; kWaiterBit
  std::atomic<Parker*> waiter{nullptr};
  std::atomic<bool> failed{false};
  std::atomic<bool> cancelled{false};
  std::exception_ptr error;  // first failure; read after the run completed
  // The handle's and the run's own (dropped by whoever completes the run).
  std::atomic<std::uint32_t> refs{2};

  std::uint8_t level_of(std::uint32_t node) const noexcept { return levels.empty() ? run_level : levels[node]; }
  // The node's resource needs, or null.
  const Needs* needs_of(std::uint32_t node) const noexcept {
    if (graph->needs.empty()) return nullptr;
    auto it = graph->needs.find(node);
    return it == graph->needs.end() ? nullptr : &it->second;
  }
};

namespace {

struct NodeJob {
  RunState* run;
  std::uint32_t node;
};

void release_run(RunState* run) noexcept {
  // acq_rel: the last owner sees every write of the others before deleting.
  if (run->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete run;
}

void record_failure(RunState* run, std::exception_ptr e) noexcept {
  bool expected = false;
  // relaxed: `error` is read only after the run completed, which every node's
  // completion happens-before (the acq_rel decrements of `remaining`).
  if (run->failed.compare_exchange_strong(expected, true, std::memory_order_relaxed)) run->error = std::move(e);
}

void complete_run(RunState* run) noexcept {
  const std::uint32_t before = run->state.exchange(kDone, std::memory_order_acq_rel);
  if (before & kWaiterBit) run->waiter.load(std::memory_order_relaxed)->unpark();
  release_run(run);
}

// One count of `remaining` done: a drained shard, or the launch.
void node_finished(RunState* run) noexcept {
  // acq_rel: the node's effects happen-before the run's completion.
  if (run->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) complete_run(run);
}

// A sink finished: count it in its shard; the shard's last sink counts the shard.
void sink_finished(RunState* run, std::uint32_t sink) noexcept {
  auto& shard = run->shards[sink % WorkflowGraph::kCompletionShards].sinks_left;
  // acq_rel: chains this sink's effects through the shard into `remaining`.
  if (shard.fetch_sub(1, std::memory_order_acq_rel) == 1) node_finished(run);
}

void set_status(RunState* run, std::uint32_t node, NodeStatus s) noexcept {
  // relaxed: informational for status()/drawings; the outcome of the run is
  // published by the completion.
  run->nodes[node].status.store(static_cast<std::uint8_t>(s), std::memory_order_relaxed);
}

// Cancels `first` (ready, poisoned) and everything that becomes ready, poisoned,
// because of it. Iterative: a cancelled chain of a million nodes needs no stack.
void cancel_from(RunState* run, std::uint32_t first) noexcept {
  std::vector<std::uint32_t> todo{first};
  const WorkflowGraph& g = *run->graph;
  const std::uint32_t* succ = g.succ.data();
  while (!todo.empty()) {
    const std::uint32_t v = todo.back();
    todo.pop_back();
    set_status(run, v, NodeStatus::cancelled);
    const std::uint32_t begin = g.succ_begin[v];
    const std::uint32_t end = g.succ_begin[v + 1];
    if (begin == end) {
      // A sink: this may complete the run. Only the local `todo` is read
      // after it, and anything still in it keeps the run from completing.
      sink_finished(run, v);
      continue;
    }
    for (std::uint32_t e = begin; e < end; ++e) {
      const std::uint32_t s = succ[e];
      run->nodes[s].poisoned.store(1, std::memory_order_relaxed);  // published by the acq_rel decrement
      if (run->nodes[s].pending.fetch_sub(1, std::memory_order_acq_rel) == 1) todo.push_back(s);
    }
  }
}

bool exec_node(Task* t, ExecMode mode) noexcept;
bool exec_node_with_needs(Task* t, ExecMode mode) noexcept;

// A node with resource needs runs as a handle-kind task (nobody holds its
// handle), because that is the kind the workers acquire needs for: it parks
// when they do not fit and holds no worker meanwhile.
void queue_node_with_needs(RunState* run, std::uint32_t node, std::span<const Need> needs) {
  Task* t = nullptr;
  try {
    t = make_dependent(*run->core, Priority{run->level_of(node)}, 0, &exec_node_with_needs);
    t->refs.store(1, std::memory_order_relaxed);  // the queue entry's alone
    // Validated when the run started; a limit lowered since makes the node
    // wait (parked, holding no worker) as it would a task, not fail.
    attach_needs(t, needs, /*check_limits=*/false);
  } catch (...) {
    if (t != nullptr) discard_dependent(t);
    record_failure(run, std::current_exception());
    cancel_from(run, node);
    return;
  }
  emplace_payload<NodeJob>(t, NodeJob{run, node});
  arm_dependent(t);  // queued; or, refused after shutdown, completed through exec_node_with_needs' cancel mode
}

void queue_node(RunState* run, std::uint32_t node) {
  if (const Needs* needs = run->needs_of(node)) {
    queue_node_with_needs(run, node, *needs);
    return;
  }
  Task* t = prepare_task(*run->core, Priority{run->level_of(node)}, TaskKind::detached, &exec_node);
  emplace_payload<NodeJob>(t, NodeJob{run, node});
  if (!run->core->submit(t)) {  // only from outside the pool, after shutdown began
    destroy_payload<NodeJob>(t);
    free_task(t);
    record_failure(run, std::make_exception_ptr(SchedulerStopped{}));
    cancel_from(run, node);
  }
}

// Hands out the successors of a finished node. Returns one to run inline, or kNoNode.
// Once the last successor has been decremented the run may complete on
// another thread and its owner may destroy the workflow: the loop bounds and
// the successor array are read into locals first, and nothing shared is read
// after the last decrement except through a successor we now own.
std::uint32_t release_successors(RunState* run, std::uint32_t v, bool ok, bool may_inline) {
  const WorkflowGraph& g = *run->graph;
  const std::uint32_t* succ = g.succ.data();
  const std::uint32_t first = g.succ_begin[v];
  const std::uint32_t last = g.succ_begin[v + 1];
  std::uint32_t inline_next = kNoNode;
  const std::uint8_t level = run->level_of(v);
  for (std::uint32_t e = first; e < last; ++e) {
    const std::uint32_t s = succ[e];
    if (!ok) run->nodes[s].poisoned.store(1, std::memory_order_relaxed);  // published by the decrement below
    if (run->nodes[s].pending.fetch_sub(1, std::memory_order_acq_rel) != 1) continue;
    // s is ours now: the run cannot complete before s has finished.
    if (run->nodes[s].poisoned.load(std::memory_order_relaxed)) {
      cancel_from(run, s);
    } else if (may_inline && inline_next == kNoNode && run->level_of(s) == level && run->needs_of(s) == nullptr) {
      inline_next = s;
    } else {
      queue_node(run, s);
    }
  }
  return inline_next;
}

void run_body(RunState* run, std::uint32_t v) {
  auto nested = run->graph->nested.find(v);
  if (nested != run->graph->nested.end()) {
    nested->second->run(*run->scheduler, {.priority = Priority{run->level_of(v)}}).get();
  } else if (run->graph->bodies[v]) {
    run->graph->bodies[v]();
  }
}

// Runs node v's body, keeping its status; returns whether it succeeded.
bool run_node(RunState* run, std::uint32_t v) noexcept {
  if (std::string* label = tls_context.trace_label; label != nullptr) [[unlikely]] {  // tracing
    try {
      // One task may run a chain of nodes: the trace names the first.
      if (label->empty()) *label = run->graph->name + "/" + run->graph->display_name(v);
      else if (label->back() != '+') *label += " +";
    } catch (...) {  // a lost trace name is not worth failing the node for
    }
  }
  set_status(run, v, NodeStatus::running);
  try {
    run_body(run, v);
    set_status(run, v, NodeStatus::succeeded);
    return true;
  } catch (...) {
    record_failure(run, std::current_exception());
    set_status(run, v, NodeStatus::failed);
    return false;
  }
}

bool exec_node(Task* t, ExecMode mode) noexcept {
  const NodeJob job = payload_as<NodeJob>(t);
  destroy_payload<NodeJob>(t);
  RunState* run = job.run;
  std::uint32_t v = job.node;
  while (v != kNoNode) {
    bool ok = false;
    if (mode == ExecMode::cancel) {  // scheduler shutdown(cancel)
      run->cancelled.store(true, std::memory_order_relaxed);
      set_status(run, v, NodeStatus::cancelled);
    } else {
      ok = run_node(run, v);
    }
    if (run->graph->is_sink(v)) {
      sink_finished(run, v);  // may complete the run: nothing of it is touched after
      return true;
    }
    std::uint32_t next = kNoNode;
    try {
      next = release_successors(run, v, ok, mode == ExecMode::run);
    } catch (...) {  // allocation failure while queuing: nothing sane is left to do
      std::terminate();
    }
    v = next;
  }
  return true;
}

bool exec_node_with_needs(Task* t, ExecMode mode) noexcept {
  if (mode == ExecMode::drop_outcome) return true;  // the job was consumed when it ran
  const NodeJob job = payload_as<NodeJob>(t);
  destroy_payload<NodeJob>(t);
  RunState* run = job.run;
  const std::uint32_t v = job.node;
  if (mode == ExecMode::cancel) {
    // relaxed: read once the run completed, which this cancellation's sink
    // count happens-before (as in exec_node).
    run->cancelled.store(true, std::memory_order_relaxed);
    cancel_from(run, v);
    return false;
  }
  const bool ok = run_node(run, v);
  // Permits go back before the successors are handed out (they may need the
  // same groups) and before the run can complete (its owner may then read
  // the groups' stats and expect them back).
  t->core->resources().release(*t->preds->needs);
  if (run->graph->is_sink(v)) {
    sink_finished(run, v);
    return true;
  }
  try {
    release_successors(run, v, ok, false);
  } catch (...) {  // allocation failure while queuing, as in exec_node
    std::terminate();
  }
  return true;
}

bool exec_launcher(Task* t, ExecMode mode) noexcept {
  RunState* run = payload_as<RunState*>(t);
  destroy_payload<RunState*>(t);
  for (std::uint32_t r : run->graph->roots) {
    if (mode == ExecMode::cancel) {
      run->cancelled.store(true, std::memory_order_relaxed);
      cancel_from(run, r);
    } else {
      queue_node(run, r);
    }
  }
  node_finished(run);  // the launch count
  return true;
}

// Static priority inheritance: a node runs at the highest level of itself and
// every node that depends on it, so a high node is never held up by a low
// predecessor waiting in the queues.
std::vector<std::uint8_t> effective_levels(const WorkflowGraph& g, std::uint8_t run_level) {
  std::vector<std::uint8_t> eff(g.size());
  for (std::uint32_t i = 0; i < g.size(); ++i) eff[i] = g.levels[i] == kNoLevel ? run_level : g.levels[i];
  for (std::size_t k = g.topo.size(); k-- > 0;) {
    const std::uint32_t v = g.topo[k];
    for (std::uint32_t e = g.succ_begin[v]; e < g.succ_begin[v + 1]; ++e) eff[v] = std::min(eff[v], eff[g.succ[e]]);
  }
  return eff;
}

}  // namespace
}  // namespace detail

WorkflowRun Workflow::run(Scheduler& scheduler, WorkflowRunOptions options) const {
  using namespace detail;
  WorkflowGraph& g = *graph_;
  g.compile();
  SchedulerCore& core = Access::core(scheduler);
  // Validates the priority and resolves an unset one exactly as submit() does.
  const std::uint8_t run_level = resolve_level(core, options.priority);
  for (std::uint32_t i = 0; i < g.size(); ++i) {
    if (g.levels[i] != kNoLevel && g.levels[i] >= core.level_count()) {
      throw InvalidArgument("ordo: workflow '" + g.name + "' node '" + g.display_name(i) + "' has priority level " +
                            std::to_string(g.levels[i]) + ", beyond the scheduler's " +
                            std::to_string(core.level_count()) + " levels");
    }
  }
  for (const auto& [node, needs] : g.needs) {
    try {
      NeedList checked;  // the checks of submit(), once per run
      core.resources().fill_needs(checked, needs);
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(std::string(e.what()) + " (workflow '" + g.name + "' node '" + g.display_name(node) + "')");
    }
  }
  auto* run = new RunState{};
  run->graph = &g;
  run->scheduler = &scheduler;
  run->core = &core;
  run->run_level = run_level;
  if (g.has_levels) run->levels = effective_levels(g, run_level);
  const std::uint32_t n = g.size();
  run->nodes.reset(new RunState::NodeState[n]);
  for (std::uint32_t i = 0; i < n; ++i) {
    run->nodes[i].pending.store(g.in_degree[i], std::memory_order_relaxed);
    run->nodes[i].status.store(static_cast<std::uint8_t>(NodeStatus::pending), std::memory_order_relaxed);
    run->nodes[i].poisoned.store(0, std::memory_order_relaxed);
  }
  WorkflowRun handle(run);
  if (n == 0) {
    run->state.store(kDone, std::memory_order_release);  // pairs with ready()/wait()'s acquire
    release_run(run);
    return handle;
  }
  // One extra count while the roots are queued, so that the run cannot
  // complete (and drop its own reference) under our feet.
  for (std::uint32_t k = 0; k < WorkflowGraph::kCompletionShards; ++k)
    run->shards[k].sinks_left.store(g.shard_sinks[k], std::memory_order_relaxed);
  run->remaining.store(static_cast<std::int64_t>(g.used_shards) + 1, std::memory_order_relaxed);
  if (g.roots.size() > 1 && !scheduler.is_worker_thread()) {
    // Many roots from outside the pool: one launcher task queues them from a
    // worker, where each is a cheap push onto its own deque (and stealable),
    // instead of one injection-queue round trip per root from this thread.
    Task* t = prepare_task(core, Priority{run_level}, TaskKind::detached, &exec_launcher);
    emplace_payload<RunState*>(t, run);
    if (core.submit(t)) return handle;
    destroy_payload<RunState*>(t);
    free_task(t);  // refused (shutting down): queue_node below reports it per root
  }
  for (std::uint32_t r : g.roots) queue_node(run, r);
  node_finished(run);
  return handle;
}

WorkflowRun::WorkflowRun(WorkflowRun&& other) noexcept : state_(std::exchange(other.state_, nullptr)) {}
WorkflowRun& WorkflowRun::operator=(WorkflowRun&& other) noexcept {
  if (this != &other) {
    if (state_) detail::release_run(state_);
    state_ = std::exchange(other.state_, nullptr);
  }
  return *this;
}
WorkflowRun::~WorkflowRun() {
  if (state_) detail::release_run(state_);
}

namespace {
void require(const detail::RunState* s) {
  if (s == nullptr) throw Error("ordo: empty WorkflowRun (moved from)");
}
}  // namespace

bool WorkflowRun::ready() const noexcept {
  // acquire: pairs with the completion's exchange; statuses and the error are visible after.
  return state_ != nullptr && (state_->state.load(std::memory_order_acquire) & detail::kStateMask) == detail::kDone;
}

void WorkflowRun::wait() const { wait_until_ns(detail::kNoDeadlineNs); }

bool WorkflowRun::wait_until_ns(std::int64_t deadline_ns) const {
  require(state_);
  detail::RunState* run = state_;
  auto done = [run] { return (run->state.load(std::memory_order_acquire) & detail::kStateMask) == detail::kDone; };
  auto prepare_sleep = [run] {
    run->waiter.store(detail::this_thread_parker(), std::memory_order_relaxed);
    // release: publishes the waiter to the completion's exchange.
    const std::uint32_t before = run->state.fetch_or(detail::kWaiterBit, std::memory_order_acq_rel);
    return (before & detail::kStateMask) == detail::kDone;
  };
  // A wait that times out leaves its parker as the run's waiter: the
  // completion's unpark is then a spurious wake-up that parkers tolerate.
  if (deadline_ns == detail::kNoDeadlineNs) return detail::SchedulerCore::wait_until(done, prepare_sleep);
  return detail::SchedulerCore::wait_until(done, prepare_sleep, detail::Deadline{deadline_ns});
}

void WorkflowRun::get() const {
  wait();
  if (state_->failed.load(std::memory_order_relaxed)) std::rethrow_exception(state_->error);
  if (state_->cancelled.load(std::memory_order_relaxed)) throw TaskCancelled{};
}

NodeStatus WorkflowRun::status(std::size_t node) const {
  require(state_);
  if (node >= state_->graph->size()) {
    throw InvalidGraph("ordo: workflow '" + state_->graph->name + "' has no node #" + std::to_string(node));
  }
  return static_cast<NodeStatus>(state_->nodes[node].status.load(std::memory_order_relaxed));
}

NodeStatus WorkflowRun::status(std::string_view node) const {
  require(state_);
  auto it = state_->graph->by_name.find(std::string(node));
  if (it == state_->graph->by_name.end()) {
    throw InvalidGraph("ordo: workflow '" + state_->graph->name + "' has no node named '" + std::string(node) + "'");
  }
  return status(it->second);
}

std::size_t WorkflowRun::count(NodeStatus s) const noexcept {
  if (state_ == nullptr) return 0;
  std::size_t n = 0;
  for (std::uint32_t i = 0; i < state_->graph->size(); ++i)
    n += state_->nodes[i].status.load(std::memory_order_relaxed) == static_cast<std::uint8_t>(s) ? 1 : 0;
  return n;
}

}  // namespace ordo
