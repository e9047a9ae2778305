// Priority levels. A priority is chosen per submission, never per job type.
//
// Level 0 is the most urgent. A scheduler has between 1 and kMaxLevels levels
// (default 3); the three named constants cover the default configuration and
// Priority{k} names any other level.
#pragma once

#include <cstdint>

namespace ordo {

enum class Priority : std::uint8_t { high = 0, normal = 1, low = 2 };

inline constexpr Priority high = Priority::high;
inline constexpr Priority normal = Priority::normal;
inline constexpr Priority low = Priority::low;

// Upper bound on SchedulerOptions::levels. Eight keeps the per-level state of a
// worker within a few cache lines and a level set within one byte.
inline constexpr unsigned kMaxLevels = 8;

constexpr unsigned level_of(Priority p) noexcept { return static_cast<unsigned>(p); }

}  // namespace ordo
