// Shared helpers for ordo's tests.
#pragma once

#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <csignal>
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

// Waits for a forked child, at most `limit`: a child stuck (in a drain, a
// deadlock) is killed, and the caller's assertion on the result fails rather
// than ctest hanging until its own timeout. False if the child was killed.
inline bool wait_child_within(pid_t child, std::chrono::seconds limit, int& status) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (::waitpid(child, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(child, SIGKILL);
      ::waitpid(child, &status, 0);
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

}  // namespace ordo::test
