// Helpers shared by ordo's benchmark binaries.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <sys/resource.h>

namespace ordo::bench {

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
