// ordo::Workflow — a whole dependency graph declared in one place.
//
// Build it once (named or anonymous nodes, `after` edges, optional
// per-node priority and resource needs, other workflows as nodes), then run it any number of
// times, also concurrently; every run has its own handle and per-node status.
// Validation rejects cycles (naming one), unknown names and duplicate names.
// to_dot() / to_mermaid() draw the graph, with per-node status when given a run.
//
// Thread-safety: building (node, after) is single-threaded
// and must be finished before the first run; after that every const member may
// be called from any thread. A Workflow must outlive its runs.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ordo/detail/deadline.hpp"
#include "ordo/errors.hpp"
#include "ordo/priority.hpp"
#include "ordo/resource.hpp"

namespace ordo {

class Scheduler;
class Workflow;
class WorkflowRun;

namespace detail {
struct WorkflowGraph;
struct RunState;
}  // namespace detail

enum class NodeStatus : std::uint8_t { pending, running, succeeded, failed, cancelled };
const char* to_string(NodeStatus s) noexcept;

struct NodeOptions {
  // Unset: the run's priority (WorkflowRunOptions::priority).
  std::optional<Priority> priority{};
  // Resource groups the node takes while its body runs (all or nothing, like
  // SubmitOptions::needs); a node that waits for them is parked, holding no
  // worker. The groups must belong to the scheduler the workflow runs on.
  Needs needs{};
};

struct WorkflowRunOptions {
  // Priority of nodes without their own. Unset: as Scheduler::submit (inherit
  // from the running task, else normal).
  std::optional<Priority> priority{};
};

// A node of a workflow under construction. Cheap to copy; valid while its
// workflow is.
//
// Edges have one spelling: at the node that waits, `node.after(x)` — the
// predecessor named (resolved when the workflow is validated, so it may be
// declared later) or given as a NodeRef. docs/workflows.md says why.
class NodeRef {
 public:
  // `name` must finish before this node starts. Throws nothing now; an
  // unknown name is reported (InvalidGraph) when the workflow is validated.
  NodeRef& after(std::string_view name);
  // `other` must finish before this node starts. Throws InvalidGraph when
  // `other` belongs to another workflow.
  NodeRef& after(NodeRef other);
  std::size_t index() const noexcept { return index_; }

 private:
  friend class Workflow;
  NodeRef(Workflow* wf, std::size_t index) : wf_(wf), index_(index) {}
  Workflow* wf_;
  std::size_t index_;
};

class Workflow {
 public:
  explicit Workflow(std::string name = "workflow");
  ~Workflow();
  Workflow(Workflow&&) noexcept;
  Workflow& operator=(Workflow&&) noexcept;
  Workflow(const Workflow&) = delete;
  Workflow& operator=(const Workflow&) = delete;

  // Adds a node. Throws InvalidGraph for a duplicate or empty name.
  NodeRef node(std::string name, std::function<void()> body, NodeOptions options = {});
  // An anonymous node (named "#<index>" in drawings and errors): the cheapest
  // way to declare large generated graphs.
  NodeRef node(std::function<void()> body, NodeOptions options = {});
  // A node that runs `nested` to completion (a helping wait) on the same
  // scheduler; it fails if the nested run fails. `nested` must outlive this one.
  NodeRef node(std::string name, const Workflow& nested, NodeOptions options = {});

  // The node called `name`; throws InvalidGraph if there is none.
  NodeRef operator[](std::string_view name);

  const std::string& name() const noexcept;
  std::size_t size() const noexcept;

  // Checks the graph (and compiles it for running). Throws InvalidGraph.
  void validate() const;

  // Any thread. Validates, then queues the nodes without predecessors and
  // returns at once. Nodes run when their predecessors succeeded; a node whose
  // predecessor failed or was cancelled is cancelled, and the run reports the
  // first error. Throws InvalidGraph (and InvalidArgument for a node priority
  // beyond the scheduler's levels) before anything runs; a run started on a
  // scheduler that is shutting down reports SchedulerStopped from get().
  WorkflowRun run(Scheduler& scheduler, WorkflowRunOptions options = {}) const;

  // Graphviz DOT and Mermaid text; with a run, nodes are coloured by status.
  std::string to_dot(const WorkflowRun* run = nullptr) const;
  std::string to_mermaid(const WorkflowRun* run = nullptr) const;

 private:
  friend class NodeRef;
  friend struct detail::RunState;
  std::unique_ptr<detail::WorkflowGraph> graph_;
};

// One run of a workflow. Move-only; dropping it does not stop the run.
class WorkflowRun {
 public:
  WorkflowRun() noexcept = default;
  WorkflowRun(WorkflowRun&& other) noexcept;
  WorkflowRun& operator=(WorkflowRun&& other) noexcept;
  WorkflowRun(const WorkflowRun&) = delete;
  WorkflowRun& operator=(const WorkflowRun&) = delete;
  ~WorkflowRun();

  // Any thread; never blocks.
  bool ready() const noexcept;
  // Blocks until every node succeeded, failed or was cancelled. On a worker
  // the wait helps run other tasks.
  void wait() const;
  // Like wait(), for at most `timeout` / until `deadline` (as
  // Handle::wait_for / wait_until). True when the run has completed; false
  // when the time ran out first, and the run goes on (wait or get() later).
  template <class Rep, class Period>
  bool wait_for(const std::chrono::duration<Rep, Period>& timeout) const {
    return wait_until_ns(detail::deadline_after(timeout));
  }
  template <class Clock, class Duration>
  bool wait_until(const std::chrono::time_point<Clock, Duration>& deadline) const {
    return wait_until_ns(detail::steady_deadline(deadline));
  }
  // Waits, then rethrows the first node exception (TaskCancelled if nodes
  // were cancelled by shutdown without any failing).
  void get() const;

  NodeStatus status(std::size_t node) const;
  NodeStatus status(std::string_view node) const;  // throws InvalidGraph for an unknown name
  std::size_t count(NodeStatus s) const noexcept;

 private:
  friend class Workflow;
  explicit WorkflowRun(detail::RunState* state) noexcept : state_(state) {}
  bool wait_until_ns(std::int64_t deadline_ns) const;  // steady clock; detail::kNoDeadlineNs: never
  detail::RunState* state_ = nullptr;
};

}  // namespace ordo
