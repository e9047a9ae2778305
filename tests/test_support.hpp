// Shared helpers for ordo's tests.
#pragma once

#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <type_traits>

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

// How long a test helper waits for something that must come before it calls
// the test hung: far beyond any honest wait, well within ctest's timeout.
inline constexpr std::chrono::seconds kHangLimit{120};

// Yields until done(). A condition that never comes aborts the test binary
// with `what` (and the wait) after `limit`, rather than hanging until
// ctest's timeout with nothing said. Callable from any thread, a task too.
template <class Done>
void await(Done&& done, const char* what, std::chrono::seconds limit = kHangLimit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "test: still waiting for %s after %lld s\n", what, static_cast<long long>(limit.count()));
      std::abort();
    }
    std::this_thread::yield();
  }
}

// Blocks a scheduler's worker until released, so that what is queued behind
// it is known to be still queued. No timing is involved: the test waits for
// `entered`, and the worker waits for `open` (each through await()).
struct Gate {
  std::atomic<bool> open{false};
  std::atomic<bool> entered{false};
  void hold(std::chrono::seconds limit = kHangLimit) {
    entered.store(true);
    await([this] { return open.load(); }, "a gate to open (the held worker would block forever)", limit);
  }
  void wait_entered(std::chrono::seconds limit = kHangLimit) const {
    await([this] { return entered.load(); }, "the gated task to start (queued behind what, or refused?)", limit);
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

// Waits up to `limit` for `done()`; false if it never became true.
inline bool eventually(const std::function<bool()>& done, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// As eventually(), for a condition whose failure means a wedged scheduler:
// its destructor would hang as well, so the failure is printed and the
// process exits instead of hanging.
// `what` is a string, or a callable making one when it failed (to show the
// state at that moment).
template <class What>
void must_happen(const std::function<bool()>& done, const What& what, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  if (eventually(done, limit)) return;
  std::string text;
  if constexpr (std::is_invocable_v<const What&>) {
    text = what();
  } else {
    text = what;
  }
  std::fprintf(stderr, "FAILED (a hang): %s (waited %lld ms)\n", text.c_str(), static_cast<long long>(limit.count()));
  std::fflush(stderr);
  std::_Exit(1);
}

// Runs `step` (a shutdown, a destructor) on its own thread and waits up to
// `limit` for it. A step that hangs holds the scheduler, so the binary cannot
// go on: the failure is printed and the process exits, instead of hanging.
inline void must_finish(const char* what, std::function<void()> step, std::chrono::milliseconds limit = std::chrono::seconds(15)) {
  std::packaged_task<void()> job(std::move(step));
  std::future<void> done = job.get_future();
  std::thread(std::move(job)).detach();
  if (done.wait_for(limit) != std::future_status::ready) {
    std::fprintf(stderr, "FAILED: %s did not finish within %lld ms (a hang)\n", what,
                 static_cast<long long>(limit.count()));
    std::fflush(stderr);
    std::_Exit(1);
  }
  done.get();
}

}  // namespace ordo::test
