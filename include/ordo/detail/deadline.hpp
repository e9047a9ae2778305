// Deadlines of the timed waits (Handle::wait_for / wait_until,
// WorkflowRun::wait_for / wait_until), as steady-clock nanoseconds: the clock
// the scheduler parks on. Saturating: a wait of hours::max() means "for ever",
// never an overflow into the past.
//
// Thread-safety: pure functions of their arguments and the clock.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace ordo::detail {

inline constexpr std::int64_t kNoDeadlineNs = std::numeric_limits<std::int64_t>::max();

inline std::int64_t steady_clock_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// `from` plus `d`, rounded up to whole nanoseconds (a wait never ends early),
// saturated at kNoDeadlineNs; a non-positive `d` gives `from` (look once).
template <class Rep, class Period>
std::int64_t add_saturated(std::int64_t from, const std::chrono::duration<Rep, Period>& d) noexcept {
  if (d <= d.zero()) return from;
  const double room = static_cast<double>(kNoDeadlineNs - from);
  if (std::chrono::duration<double, std::nano>(d).count() >= room) return kNoDeadlineNs;
  const std::int64_t ns = std::chrono::ceil<std::chrono::nanoseconds>(d).count();
  return ns >= kNoDeadlineNs - from ? kNoDeadlineNs : from + ns;
}

template <class Rep, class Period>
std::int64_t deadline_after(const std::chrono::duration<Rep, Period>& timeout) noexcept {
  return add_saturated(steady_clock_ns(), timeout);
}

// A time point of any clock, as a steady deadline. Another clock's time point
// is taken as "that much from now" (a later jump of that clock is not followed).
template <class Clock, class Duration>
std::int64_t steady_deadline(const std::chrono::time_point<Clock, Duration>& at) noexcept {
  if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
    return add_saturated(std::int64_t{0}, at.time_since_epoch());
  } else {
    return deadline_after(at - Clock::now());
  }
}

}  // namespace ordo::detail
