// Shared helpers for ordo's tests.
#pragma once

#include <atomic>
#include <cstddef>
#include <thread>

namespace ordo::test {

// Sanitizer builds run every stress test too, with fewer iterations: they are
// 5-20x slower and their value lies in the interleavings checked, not counts.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
inline constexpr std::size_t kScale = 1;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
inline constexpr std::size_t kScale = 1;
#else
inline constexpr std::size_t kScale = 8;
#endif
#else
inline constexpr std::size_t kScale = 8;
#endif

// Blocks a scheduler's worker until released, so that what is queued behind
// it is known to be still queued. No timing is involved: the test waits for
// `entered`, and the worker waits for `open`.
struct Gate {
  std::atomic<bool> open{false};
  std::atomic<bool> entered{false};
  void hold() {
    entered.store(true);
    while (!open.load()) std::this_thread::yield();
  }
  void wait_entered() const {
    while (!entered.load()) std::this_thread::yield();
  }
};

}  // namespace ordo::test
