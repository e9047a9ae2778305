// Helpers shared by ordo's benchmark binaries, and the machine's probe that
// every binary runs first (include this header before any benchmark is
// registered).
#pragma once

#include <benchmark/benchmark.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <thread>

namespace ordo::bench {

// probe/pingpong: two threads, pinned to different cores when there are
// two, bounce one cache line 200,000 times; roundtrip_ns is the mean time of
// one round trip. On this kind of shared VM it reads about 85 ns on a fast
// day and about 400 ns on a slow one, and every result beside it should be
// read with that in mind (docs/performance.md, "Two kinds of day").
inline void pin_to_cpu(unsigned cpu) {
  const unsigned cpus = std::thread::hardware_concurrency();
  if (cpus < 2) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % cpus, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);  // best effort: a refusal only blurs the figure
}

inline void probe_pingpong(benchmark::State& state) {
  constexpr std::uint32_t kRounds = 200000;
  for (auto _ : state) {
    struct alignas(64) Line {
      std::atomic<std::uint32_t> value{0};
    } line;
    std::thread responder([&line] {
      pin_to_cpu(1);
      for (std::uint32_t i = 0; i < kRounds; ++i) {
        // acquire/release: the bounce itself is the measurement; each load
        // waits for the other thread's store of the line.
        while (line.value.load(std::memory_order_acquire) != 2 * i + 1) {
        }
        line.value.store(2 * i + 2, std::memory_order_release);
      }
    });
    pin_to_cpu(0);
    const auto start = std::chrono::steady_clock::now();
    for (std::uint32_t i = 0; i < kRounds; ++i) {
      line.value.store(2 * i + 1, std::memory_order_release);  // pairs with the responder's acquire load
      while (line.value.load(std::memory_order_acquire) != 2 * i + 2) {
      }
    }
    const auto elapsed = std::chrono::steady_clock::now() - start;
    responder.join();
    cpu_set_t all;  // the benchmarks after this one run unpinned
    CPU_ZERO(&all);
    for (unsigned c = 0; c < std::thread::hardware_concurrency(); ++c) CPU_SET(c, &all);
    pthread_setaffinity_np(pthread_self(), sizeof all, &all);
    state.counters["roundtrip_ns"] = std::chrono::duration<double, std::nano>(elapsed).count() / kRounds;
    if (line.value.load() != 2 * kRounds) state.SkipWithError("the line did not make every round trip");
  }
}

// Registered before the binary's own benchmarks (an inline variable of a
// header included first is initialised before the statics that follow it).
inline benchmark::internal::Benchmark* const kProbeRegistered =
    benchmark::RegisterBenchmark("probe/pingpong", probe_pingpong)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

// probe/pingpong_after: the same probe once more, after the binary's own
// benchmarks. The kind of day can change within one process (the host moves
// a virtual CPU), so a run is only filed under a kind of day when both
// probes agree (bench/compare_builds.py). Each binary registers it last:
// from main() just before benchmark::Initialize, or from a static defined
// after its last BENCHMARK.
inline benchmark::internal::Benchmark* register_closing_probe() {
  return benchmark::RegisterBenchmark("probe/pingpong_after", probe_pingpong)
      ->Iterations(1)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

// Per-thread counters on their own cache lines, so that a task body costs one
// uncontended relaxed fetch_add whichever thread runs it.
class PaddedCounters {
 public:
  static constexpr std::size_t kSlots = 64;

  void add_here() noexcept { slots_[slot_of_this_thread()].value.fetch_add(1, std::memory_order_relaxed); }
  std::uint64_t sum() const noexcept {
    std::uint64_t total = 0;
    for (const auto& s : slots_) total += s.value.load(std::memory_order_relaxed);
    return total;
  }
  void reset() noexcept {
    for (auto& s : slots_) s.value.store(0, std::memory_order_relaxed);
  }

 private:
  static std::size_t slot_of_this_thread() noexcept {
    static std::atomic<std::size_t> next{0};
    thread_local std::size_t slot = next.fetch_add(1, std::memory_order_relaxed) % kSlots;
    return slot;
  }
  struct alignas(64) Slot {
    std::atomic<std::uint64_t> value{0};
  };
  Slot slots_[kSlots];
};

inline double process_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

}  // namespace ordo::bench
