// ordo_bench_graph: dependency graphs, ordo's Workflow beside oneTBB's flow
// graph (continue_node), graph construction included, in one binary and one
// run. Definitions follow Taskflow's published benchmarks and
// docs/benchmarks.md; each workload checks its own result.
#include <benchmark/benchmark.h>
#include <tbb/flow_graph.h>
#include <tbb/global_control.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"
#include "ordo/ordo.hpp"

namespace {

using ordo::bench::PaddedCounters;
using ContinueNode = tbb::flow::continue_node<tbb::flow::continue_msg>;

unsigned pool_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

ordo::Scheduler& scheduler() {
  static ordo::Scheduler s{{.workers = pool_threads(), .name = "bench"}};
  return s;
}

void check(benchmark::State& state, std::uint64_t got, std::uint64_t want, const char* what) {
  if (got != want) {
    state.SkipWithError((std::string(what) + ": got " + std::to_string(got) + ", want " + std::to_string(want)).c_str());
  }
}

// --- chain: n tasks, each after the previous, body ++counter ---------------

void BM_chain_ordo(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::uint64_t counter = 0;
  for (auto _ : state) {
    counter = 0;
    ordo::Workflow wf("chain");
    ordo::NodeRef prev = wf.node([&counter] { ++counter; });
    for (std::size_t i = 1; i < n; ++i) {
      ordo::NodeRef next = wf.node([&counter] { ++counter; });
      next.after(prev);
      prev = next;
    }
    wf.run(scheduler()).get();
    check(state, counter, n, "chain count");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

void BM_chain_tbb_flow(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::uint64_t counter = 0;
  for (auto _ : state) {
    counter = 0;
    tbb::flow::graph g;
    std::deque<ContinueNode> nodes;
    nodes.emplace_back(g, [&counter](const tbb::flow::continue_msg&) { ++counter; });
    for (std::size_t i = 1; i < n; ++i) {
      nodes.emplace_back(g, [&counter](const tbb::flow::continue_msg&) { ++counter; });
      tbb::flow::make_edge(nodes[i - 1], nodes[i]);
    }
    nodes.front().try_put(tbb::flow::continue_msg());
    g.wait_for_all();
    check(state, counter, n, "chain count");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

// --- binary_tree: node i precedes 2i and 2i+1, 2^levels - 1 nodes ----------

void BM_binary_tree_ordo(benchmark::State& state) {
  const std::size_t n = (std::size_t{1} << state.range(0)) - 1;
  PaddedCounters counters;
  for (auto _ : state) {
    counters.reset();
    ordo::Workflow wf("binary_tree");
    std::vector<ordo::NodeRef> nodes;
    nodes.reserve(n + 1);
    nodes.push_back(wf.node([] {}));  // index 0 unused by the tree: a no-op root before node 1
    for (std::size_t i = 1; i <= n; ++i) nodes.push_back(wf.node([&counters] { counters.add_here(); }));
    nodes[1].after(nodes[0]);
    for (std::size_t i = 1; 2 * i + 1 <= n; ++i) {
      nodes[2 * i].after(nodes[i]);
      nodes[2 * i + 1].after(nodes[i]);
    }
    wf.run(scheduler()).get();
    check(state, counters.sum(), n, "tree count");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

void BM_binary_tree_tbb_flow(benchmark::State& state) {
  const std::size_t n = (std::size_t{1} << state.range(0)) - 1;
  PaddedCounters counters;
  for (auto _ : state) {
    counters.reset();
    tbb::flow::graph g;
    std::deque<ContinueNode> nodes;
    nodes.emplace_back(g, [](const tbb::flow::continue_msg&) {});
    for (std::size_t i = 1; i <= n; ++i)
      nodes.emplace_back(g, [&counters](const tbb::flow::continue_msg&) { counters.add_here(); });
    tbb::flow::make_edge(nodes[0], nodes[1]);
    for (std::size_t i = 1; 2 * i + 1 <= n; ++i) {
      tbb::flow::make_edge(nodes[i], nodes[2 * i]);
      tbb::flow::make_edge(nodes[i], nodes[2 * i + 1]);
    }
    nodes[0].try_put(tbb::flow::continue_msg());
    g.wait_for_all();
    check(state, counters.sum(), n, "tree count");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

// --- wavefront: size x size cells in 8x8 blocks; block (i,j) after (i-1,j), (i,j-1)

constexpr std::size_t kBlock = 8;

struct Grid {
  explicit Grid(std::size_t n) : size(n), cells(n * n, 0) {}
  std::size_t size;
  std::vector<std::uint32_t> cells;
  void compute_block(std::size_t bi, std::size_t bj) {
    for (std::size_t r = bi * kBlock; r < (bi + 1) * kBlock; ++r) {
      for (std::size_t c = bj * kBlock; c < (bj + 1) * kBlock; ++c) {
        const std::uint32_t up = r > 0 ? cells[(r - 1) * size + c] : 1;
        const std::uint32_t left = c > 0 ? cells[r * size + c - 1] : 1;
        cells[r * size + c] = (up + left) % 1000003u;
      }
    }
  }
  std::uint32_t corner() const { return cells.back(); }
};

std::uint32_t wavefront_expected(std::size_t size) {
  static std::uint32_t cached = 0;
  static std::size_t cached_size = 0;
  if (cached_size != size) {
    Grid g(size);
    for (std::size_t i = 0; i < size / kBlock; ++i)
      for (std::size_t j = 0; j < size / kBlock; ++j) g.compute_block(i, j);
    cached = g.corner();
    cached_size = size;
  }
  return cached;
}

void BM_wavefront_ordo(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const std::size_t blocks = size / kBlock;
  const std::uint32_t want = wavefront_expected(size);
  for (auto _ : state) {
    Grid grid(size);
    ordo::Workflow wf("wavefront");
    std::vector<ordo::NodeRef> nodes;
    nodes.reserve(blocks * blocks);
    for (std::size_t i = 0; i < blocks; ++i) {
      for (std::size_t j = 0; j < blocks; ++j) {
        nodes.push_back(wf.node([&grid, i, j] { grid.compute_block(i, j); }));
        if (i > 0) nodes.back().after(nodes[(i - 1) * blocks + j]);
        if (j > 0) nodes.back().after(nodes[i * blocks + j - 1]);
      }
    }
    wf.run(scheduler()).get();
    check(state, grid.corner(), want, "wavefront corner");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * blocks * blocks));
}

void BM_wavefront_tbb_flow(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const std::size_t blocks = size / kBlock;
  const std::uint32_t want = wavefront_expected(size);
  for (auto _ : state) {
    Grid grid(size);
    tbb::flow::graph g;
    std::deque<ContinueNode> nodes;
    for (std::size_t i = 0; i < blocks; ++i) {
      for (std::size_t j = 0; j < blocks; ++j) {
        nodes.emplace_back(g, [&grid, i, j](const tbb::flow::continue_msg&) { grid.compute_block(i, j); });
        if (i > 0) tbb::flow::make_edge(nodes[(i - 1) * blocks + j], nodes.back());
        if (j > 0) tbb::flow::make_edge(nodes[i * blocks + j - 1], nodes.back());
      }
    }
    nodes.front().try_put(tbb::flow::continue_msg());
    g.wait_for_all();
    check(state, grid.corner(), want, "wavefront corner");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * blocks * blocks));
}

// --- graph_reuse: a 10,000-node random DAG built once and run 100 times ----

constexpr std::size_t kReuseNodes = 10000;
constexpr int kReuseRuns = 100;

std::vector<std::pair<std::size_t, std::size_t>> random_dag_edges() {
  std::mt19937 rng(2026);
  std::vector<std::pair<std::size_t, std::size_t>> edges;
  for (std::size_t j = 1; j < kReuseNodes; ++j) {
    const std::size_t k = rng() % 4;  // 0..3 predecessors, 1.5 on average
    for (std::size_t e = 0; e < k; ++e) edges.emplace_back(rng() % j, j);
  }
  return edges;
}

void BM_graph_reuse_ordo(benchmark::State& state) {
  const auto edges = random_dag_edges();
  PaddedCounters counters;
  for (auto _ : state) {
    counters.reset();
    ordo::Workflow wf("graph_reuse");
    std::vector<ordo::NodeRef> nodes;
    nodes.reserve(kReuseNodes);
    for (std::size_t i = 0; i < kReuseNodes; ++i) nodes.push_back(wf.node([&counters] { counters.add_here(); }));
    for (auto [a, b] : edges) nodes[b].after(nodes[a]);
    for (int r = 0; r < kReuseRuns; ++r) wf.run(scheduler()).get();
    check(state, counters.sum(), kReuseNodes * kReuseRuns, "node runs");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kReuseNodes * kReuseRuns));
}

void BM_graph_reuse_tbb_flow(benchmark::State& state) {
  const auto edges = random_dag_edges();
  PaddedCounters counters;
  for (auto _ : state) {
    counters.reset();
    tbb::flow::graph g;
    std::deque<ContinueNode> nodes;
    std::vector<bool> has_pred(kReuseNodes, false);
    for (std::size_t i = 0; i < kReuseNodes; ++i)
      nodes.emplace_back(g, [&counters](const tbb::flow::continue_msg&) { counters.add_here(); });
    for (auto [a, b] : edges) {
      tbb::flow::make_edge(nodes[a], nodes[b]);
      has_pred[b] = true;
    }
    for (int r = 0; r < kReuseRuns; ++r) {
      for (std::size_t i = 0; i < kReuseNodes; ++i)
        if (!has_pred[i]) nodes[i].try_put(tbb::flow::continue_msg());
      g.wait_for_all();
    }
    check(state, counters.sum(), kReuseNodes * kReuseRuns, "node runs");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kReuseNodes * kReuseRuns));
}

}  // namespace

int main(int argc, char** argv) {
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, pool_threads());
  using benchmark::RegisterBenchmark;
  auto ms = [](benchmark::internal::Benchmark* b) { b->UseRealTime()->Unit(benchmark::kMillisecond); };
  ms(RegisterBenchmark("chain/ordo", BM_chain_ordo)->Arg(1 << 20));
  ms(RegisterBenchmark("chain/tbb_flow", BM_chain_tbb_flow)->Arg(1 << 20));
  ms(RegisterBenchmark("binary_tree/ordo", BM_binary_tree_ordo)->Arg(20));
  ms(RegisterBenchmark("binary_tree/tbb_flow", BM_binary_tree_tbb_flow)->Arg(20));
  ms(RegisterBenchmark("wavefront/ordo", BM_wavefront_ordo)->Arg(2048));
  ms(RegisterBenchmark("wavefront/tbb_flow", BM_wavefront_tbb_flow)->Arg(2048));
  ms(RegisterBenchmark("graph_reuse/ordo", BM_graph_reuse_ordo));
  ms(RegisterBenchmark("graph_reuse/tbb_flow", BM_graph_reuse_tbb_flow));
  ordo::bench::register_closing_probe();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
