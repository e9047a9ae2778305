// WorkflowGraph: the declared nodes and edges of a Workflow, and the compiled
// form a run walks (successor lists in CSR form, in-degrees, a topological order).
//
// Thread-safety: built by one thread; compile() may be called from several
// threads (it takes compile_mu), after which the compiled arrays are read-only.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ordo/workflow.hpp"

namespace ordo::detail {

inline constexpr std::uint8_t kNoLevel = 0xff;
inline constexpr std::uint32_t kNoNode = 0xffffffffu;

struct WorkflowGraph {
  std::string name;
  std::vector<std::function<void()>> bodies;
  std::vector<std::uint8_t> levels;  // kNoLevel: the run's priority
  std::unordered_map<std::uint32_t, Needs> needs;  // nodes with resource needs only
  std::unordered_map<std::uint32_t, std::string> names;  // named nodes only
  std::unordered_map<std::string, std::uint32_t> by_name;
  std::unordered_map<std::uint32_t, const Workflow*> nested;
  std::vector<std::pair<std::uint32_t, std::uint32_t>> edges;  // (from, to)
  struct NamedEdge {
    std::string name;    // the predecessor, resolved at compile time
    std::uint32_t node;  // the node that waits for it
  };
  std::vector<NamedEdge> named_edges;

  // Compiled form; valid while `compiled` is true.
  std::mutex compile_mu;
  bool compiled = false;
  std::vector<std::uint32_t> succ_begin;  // size n + 1
  std::vector<std::uint32_t> succ;
  std::vector<std::int32_t> in_degree;
  std::vector<std::uint32_t> roots;
  std::vector<std::uint32_t> topo;  // a topological order
  std::uint32_t sinks = 0;          // nodes without successors
  // Sinks per completion shard (sink v counts in shard v % kCompletionShards).
  static constexpr std::uint32_t kCompletionShards = 8;
  std::uint32_t shard_sinks[kCompletionShards] = {};
  std::uint32_t used_shards = 0;  // shards with at least one sink
  bool has_levels = false;

  std::string display_name(std::uint32_t i) const {
    auto it = names.find(i);
    if (it != names.end()) return it->second;
    std::string anonymous = "#";
    anonymous += std::to_string(i);
    return anonymous;
  }
  std::uint32_t size() const noexcept { return static_cast<std::uint32_t>(bodies.size()); }
  bool is_sink(std::uint32_t v) const noexcept { return succ_begin[v] == succ_begin[v + 1]; }
  void invalidate() noexcept { compiled = false; }
  // Throws InvalidGraph. Idempotent; thread-safe.
  void compile();
};

}  // namespace ordo::detail
