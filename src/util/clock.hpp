// The two clocks ordo reads, in nanoseconds since their epochs.
//
// steady_now_ns(): intervals within one process (waits, ageing, rate tokens,
// sync timings); never goes back, means nothing after a restart.
// wall_now_ns(): times written into durable records (delays, backoff,
// retention); the same instant means the same value after a restart.
//
// Thread-safety: any thread.
#pragma once

#include <chrono>
#include <cstdint>

namespace ordo::detail {

inline std::int64_t steady_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline std::int64_t wall_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace ordo::detail
