// Shared helpers for ordo's tests.
#pragma once

#include <cstddef>

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

}  // namespace ordo::test
