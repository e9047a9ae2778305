// CRC-32C (Castagnoli), as the journal stores it: see docs/journal-format.md.
// Uses the SSE4.2 crc32 instruction when the CPU has it (checked once), and a
// table otherwise. Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ordo::detail::crc32c {

// Extends `crc` (a finished CRC of earlier bytes, or 0) over [data, data + n).
std::uint32_t extend(std::uint32_t crc, const void* data, std::size_t n) noexcept;
inline std::uint32_t value(const void* data, std::size_t n) noexcept { return extend(0, data, n); }

inline constexpr std::uint32_t kMaskDelta = 0x6f72646fu;  // "ordo"
inline std::uint32_t mask(std::uint32_t crc) noexcept { return ((crc >> 15) | (crc << 17)) + kMaskDelta; }
inline std::uint32_t unmask(std::uint32_t masked) noexcept {
  const std::uint32_t rot = masked - kMaskDelta;
  return (rot >> 17) | (rot << 15);
}

// The table implementation, whatever the CPU (tests compare the two).
std::uint32_t extend_portable(std::uint32_t crc, const void* data, std::size_t n) noexcept;

// Whether extend() uses the CPU instruction (reported by benchmarks).
bool hardware_accelerated() noexcept;

}  // namespace ordo::detail::crc32c
