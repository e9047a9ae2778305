// Workflow: building, validation (compile) and drawing.
#include "ordo/workflow.hpp"

#include <algorithm>
#include <sstream>

#include "graph/workflow_graph.hpp"

namespace ordo {

const char* to_string(NodeStatus s) noexcept {
  switch (s) {
    case NodeStatus::pending: return "pending";
    case NodeStatus::running: return "running";
    case NodeStatus::succeeded: return "succeeded";
    case NodeStatus::failed: return "failed";
    case NodeStatus::cancelled: return "cancelled";
  }
  return "unknown";
}

NodeRef& NodeRef::after(std::string_view name) {
  wf_->graph_->named_edges.push_back({std::string(name), static_cast<std::uint32_t>(index_)});
  wf_->graph_->invalidate();
  return *this;
}

NodeRef& NodeRef::after(NodeRef other) {
  detail::WorkflowGraph& g = *wf_->graph_;
  if (other.wf_ != wf_) {
    throw InvalidGraph("ordo: workflow '" + g.name + "': an edge joins nodes of different workflows");
  }
  g.edges.emplace_back(static_cast<std::uint32_t>(other.index_), static_cast<std::uint32_t>(index_));
  g.invalidate();
  return *this;
}

Workflow::Workflow(std::string name) : graph_(std::make_unique<detail::WorkflowGraph>()) {
  graph_->name = std::move(name);
}
Workflow::~Workflow() = default;
Workflow::Workflow(Workflow&&) noexcept = default;
Workflow& Workflow::operator=(Workflow&&) noexcept = default;

namespace {

std::uint8_t level_of_options(const NodeOptions& o) {
  return o.priority ? static_cast<std::uint8_t>(*o.priority) : detail::kNoLevel;
}

// Appends a node (a nested workflow's node has no body of its own) and
// returns its index; `name` empty for an anonymous node.
std::size_t append_node(detail::WorkflowGraph& g, std::string name, std::function<void()> body, NodeOptions options) {
  if (g.bodies.size() >= detail::kNoNode) throw InvalidGraph("ordo: workflow '" + g.name + "' has too many nodes");
  if (!name.empty() && g.by_name.count(name)) {
    throw InvalidGraph("ordo: workflow '" + g.name + "' already has a node named '" + name + "'");
  }
  const auto i = static_cast<std::uint32_t>(g.bodies.size());
  g.bodies.push_back(std::move(body));
  g.levels.push_back(level_of_options(options));
  if (options.priority) g.has_levels = true;
  if (!options.needs.empty()) g.needs.emplace(i, std::move(options.needs));
  if (!name.empty()) {
    g.by_name.emplace(name, i);
    g.names.emplace(i, std::move(name));
  }
  g.invalidate();
  return i;
}

// A node whose body is an empty std::function would "succeed" without doing
// anything; submit() and define() refuse empty callables, and so does node().
void require_body(const detail::WorkflowGraph& g, const std::function<void()>& body, const std::string& node) {
  if (!body) throw InvalidArgument("ordo: workflow '" + g.name + "': node '" + node + "' has an empty body");
}

}  // namespace

NodeRef Workflow::node(std::function<void()> body, NodeOptions options) {
  auto& g = *graph_;
  std::string label = "#";  // not "#" + to_string(): GCC 12 warns falsely (-Wrestrict) on that
  label += std::to_string(g.bodies.size());
  require_body(g, body, label);
  return NodeRef(this, append_node(g, {}, std::move(body), std::move(options)));
}

NodeRef Workflow::node(std::string name, std::function<void()> body, NodeOptions options) {
  auto& g = *graph_;
  if (name.empty()) throw InvalidGraph("ordo: workflow '" + g.name + "': a named node needs a non-empty name");
  require_body(g, body, name);
  return NodeRef(this, append_node(g, std::move(name), std::move(body), std::move(options)));
}

NodeRef Workflow::node(std::string name, const Workflow& nested, NodeOptions options) {
  auto& g = *graph_;
  if (&nested == this) throw InvalidGraph("ordo: workflow '" + g.name + "' cannot contain itself");
  if (name.empty()) throw InvalidGraph("ordo: workflow '" + g.name + "': a named node needs a non-empty name");
  const std::size_t i = append_node(g, std::move(name), {}, std::move(options));
  g.nested.emplace(static_cast<std::uint32_t>(i), &nested);
  return NodeRef(this, i);
}

NodeRef Workflow::operator[](std::string_view name) {
  auto it = graph_->by_name.find(std::string(name));
  if (it == graph_->by_name.end()) {
    throw InvalidGraph("ordo: workflow '" + graph_->name + "' has no node named '" + std::string(name) + "'");
  }
  return NodeRef(this, it->second);
}

const std::string& Workflow::name() const noexcept { return graph_->name; }
std::size_t Workflow::size() const noexcept { return graph_->size(); }
void Workflow::validate() const { graph_->compile(); }

namespace detail {

namespace {

// Names one cycle among `stuck` (nodes Kahn's algorithm could not order): walk
// predecessors that are also stuck until a node repeats.
std::string describe_cycle(const WorkflowGraph& g, const std::vector<std::int32_t>& left,
                           const std::vector<std::vector<std::uint32_t>>& preds) {
  std::uint32_t start = 0;
  while (left[start] == 0) ++start;
  std::vector<std::int64_t> seen_at(g.size(), -1);
  std::vector<std::uint32_t> path;
  std::uint32_t v = start;
  while (seen_at[v] < 0) {
    seen_at[v] = static_cast<std::int64_t>(path.size());
    path.push_back(v);
    for (std::uint32_t p : preds[v]) {
      if (left[p] > 0) {
        v = p;
        break;
      }
    }
  }
  // path[seen_at[v]..] walked backwards along edges: print it forwards.
  std::vector<std::uint32_t> cycle(path.begin() + seen_at[v], path.end());
  std::reverse(cycle.begin(), cycle.end());
  std::string text;
  for (std::uint32_t c : cycle) text += g.display_name(c) + " -> ";
  return text + g.display_name(cycle.front());
}

}  // namespace

void WorkflowGraph::compile() {
  std::lock_guard lock(compile_mu);
  if (compiled) return;
  const std::uint32_t n = size();
  std::vector<std::pair<std::uint32_t, std::uint32_t>> all = edges;
  for (const NamedEdge& e : named_edges) {
    auto it = by_name.find(e.name);
    if (it == by_name.end()) {
      throw InvalidGraph("ordo: workflow '" + name + "': node '" + display_name(e.node) + "' is after unknown node '" +
                         e.name + "'");
    }
    all.emplace_back(it->second, e.node);
  }
  for (auto [from, to] : all) {
    if (from == to) {
      throw InvalidGraph("ordo: workflow '" + name + "' has a cycle: " + display_name(from) + " -> " +
                         display_name(from));
    }
  }
  succ_begin.assign(n + 1, 0);
  for (auto [from, to] : all) ++succ_begin[from + 1];
  for (std::uint32_t i = 0; i < n; ++i) succ_begin[i + 1] += succ_begin[i];
  succ.assign(all.size(), 0);
  std::vector<std::uint32_t> fill(succ_begin.begin(), succ_begin.end() - 1);
  in_degree.assign(n, 0);
  for (auto [from, to] : all) {
    succ[fill[from]++] = to;
    ++in_degree[to];
  }
  // Kahn's algorithm: a topological order, or a cycle.
  std::vector<std::int32_t> left = in_degree;
  topo.clear();
  topo.reserve(n);
  roots.clear();
  for (std::uint32_t i = 0; i < n; ++i) {
    if (left[i] == 0) {
      topo.push_back(i);
      roots.push_back(i);
    }
  }
  for (std::size_t k = 0; k < topo.size(); ++k) {
    const std::uint32_t v = topo[k];
    for (std::uint32_t e = succ_begin[v]; e < succ_begin[v + 1]; ++e)
      if (--left[succ[e]] == 0) topo.push_back(succ[e]);
  }
  if (topo.size() != n) {
    std::vector<std::vector<std::uint32_t>> preds(n);
    for (auto [from, to] : all) preds[to].push_back(from);
    throw InvalidGraph("ordo: workflow '" + name + "' has a cycle: " + describe_cycle(*this, left, preds));
  }
  sinks = 0;
  for (auto& c : shard_sinks) c = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    if (is_sink(i)) {
      ++sinks;
      ++shard_sinks[i % kCompletionShards];
    }
  }
  used_shards = 0;
  for (auto c : shard_sinks) used_shards += c > 0 ? 1 : 0;
  compiled = true;
}

}  // namespace detail

namespace {

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

const char* dot_colour(NodeStatus s) {
  switch (s) {
    case NodeStatus::pending: return "white";
    case NodeStatus::running: return "gold";
    case NodeStatus::succeeded: return "palegreen";
    case NodeStatus::failed: return "salmon";
    case NodeStatus::cancelled: return "lightgrey";
  }
  return "white";
}

}  // namespace

std::string Workflow::to_dot(const WorkflowRun* run) const {
  graph_->compile();
  const auto& g = *graph_;
  std::ostringstream out;
  out << "digraph " << quoted(g.name) << " {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fillcolor=white];\n";
  for (std::uint32_t i = 0; i < g.size(); ++i) {
    out << "  " << quoted(g.display_name(i));
    std::string attrs;
    if (g.nested.count(i)) attrs += "shape=box3d";
    if (run != nullptr) {
      if (!attrs.empty()) attrs += ", ";
      attrs += std::string("fillcolor=") + dot_colour(run->status(i)) + ", tooltip=" + to_string(run->status(i));
    }
    if (!attrs.empty()) out << " [" << attrs << "]";
    out << ";\n";
  }
  for (std::uint32_t v = 0; v < g.size(); ++v)
    for (std::uint32_t e = g.succ_begin[v]; e < g.succ_begin[v + 1]; ++e)
      out << "  " << quoted(g.display_name(v)) << " -> " << quoted(g.display_name(g.succ[e])) << ";\n";
  out << "}\n";
  return out.str();
}

std::string Workflow::to_mermaid(const WorkflowRun* run) const {
  graph_->compile();
  const auto& g = *graph_;
  std::ostringstream out;
  out << "flowchart LR\n";
  for (std::uint32_t i = 0; i < g.size(); ++i) {
    std::string label = g.display_name(i);
    std::replace(label.begin(), label.end(), '"', '\'');
    out << "  n" << i << (g.nested.count(i) ? "[[\"" : "[\"") << label << (g.nested.count(i) ? "\"]]" : "\"]") << "\n";
  }
  for (std::uint32_t v = 0; v < g.size(); ++v)
    for (std::uint32_t e = g.succ_begin[v]; e < g.succ_begin[v + 1]; ++e)
      out << "  n" << v << " --> n" << g.succ[e] << "\n";
  if (run != nullptr) {
    out << "  classDef pending fill:#ffffff\n  classDef running fill:#ffd700\n  classDef succeeded fill:#98fb98\n"
           "  classDef failed fill:#fa8072\n  classDef cancelled fill:#d3d3d3\n";
    for (std::uint32_t i = 0; i < g.size(); ++i) out << "  class n" << i << " " << to_string(run->status(i)) << "\n";
  }
  return out.str();
}

}  // namespace ordo
