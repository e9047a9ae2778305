// Software prefetches of the lines a thread is about to touch, for the
// places where ordo knows an address well before it uses it: a node handed
// out a few allocations from now, the tasks of a batch taken from an
// injection queue. Hints only: a wrong or stale address costs a wasted
// fetch, never a fault.
#pragma once

#include <cstddef>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace ordo::detail {

inline constexpr std::size_t kCacheLine = 64;

#if defined(__x86_64__)
// PREFETCHW is not in the baseline x86-64 target, so GCC compiles
// __builtin_prefetch(p, 1) to a read prefetch; it is asked of the CPU once.
inline const bool prefetchw_supported = [] {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(0x80000001u, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_PRFCHW) != 0;
}();
#endif

// The lines of [p, p + bytes), in shared state: for what is only read.
inline void prefetch_for_reading(const void* p, std::size_t bytes) noexcept {
  const char* at = static_cast<const char*>(p);
  for (std::size_t off = 0; off < bytes; off += kCacheLine) __builtin_prefetch(at + off, 0);
}

// The lines of [p, p + bytes), owned: for what is written next. A read
// prefetch would bring a line in shared with the core that last wrote it,
// and the first store would still wait for that copy's invalidation.
inline void prefetch_for_writing(const void* p, std::size_t bytes) noexcept {
  const char* at = static_cast<const char*>(p);
#if defined(__x86_64__)
  if (prefetchw_supported) {
    for (std::size_t off = 0; off < bytes; off += kCacheLine) asm volatile("prefetchw %0" : : "m"(at[off]));
    return;
  }
#endif
  for (std::size_t off = 0; off < bytes; off += kCacheLine) __builtin_prefetch(at + off, 1);
}

}  // namespace ordo::detail
