// WaitHistogram: log-linear histogram of durations in nanoseconds.
//
// Thread-safety: record() only from the owning worker (relaxed load + store,
// no RMW); merge_into() from any thread, which sees each bucket whole but the
// buckets not as one snapshot. Invariant: bucket b counts durations whose
// bucket_of() is b; 4 sub-buckets per power of two bound the relative error
// of a percentile by 25%.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <cstdint>

namespace ordo::detail {

class WaitHistogram {
 public:
  static constexpr unsigned kSubBits = 2;
  static constexpr unsigned kBuckets = 64 << kSubBits;

  void record(std::int64_t ns) noexcept {
    const std::uint64_t v = ns > 0 ? static_cast<std::uint64_t>(ns) : 0;
    bump(counts_[bucket_of(v)], 1);
    if (v > max_.load(std::memory_order_relaxed)) max_.store(v, std::memory_order_relaxed);
  }

  struct Merged {
    std::array<std::uint64_t, kBuckets> counts{};
    std::uint64_t total = 0;
    std::uint64_t max = 0;
    // Upper bound of the bucket holding the q-quantile, in nanoseconds.
    double quantile_ns(double q) const noexcept {
      if (total == 0) return 0;
      const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(total - 1)) + 1;
      std::uint64_t seen = 0;
      for (unsigned b = 0; b < kBuckets; ++b) {
        seen += counts[b];
        if (seen >= rank) {
          const double upper = static_cast<double>(bucket_upper(b));
          return upper < static_cast<double>(max) ? upper : static_cast<double>(max);
        }
      }
      return static_cast<double>(max);
    }
  };

  void merge_into(Merged& m) const noexcept {
    for (unsigned b = 0; b < kBuckets; ++b) {
      const std::uint64_t c = counts_[b].load(std::memory_order_relaxed);
      m.counts[b] += c;
      m.total += c;
    }
    const std::uint64_t mx = max_.load(std::memory_order_relaxed);
    if (mx > m.max) m.max = mx;
  }

  static unsigned bucket_of(std::uint64_t v) noexcept {
    if (v < (1u << kSubBits)) return static_cast<unsigned>(v);
    const unsigned msb = 63u - static_cast<unsigned>(std::countl_zero(v));
    const unsigned sub = static_cast<unsigned>(v >> (msb - kSubBits)) & ((1u << kSubBits) - 1);
    return ((msb - kSubBits + 1) << kSubBits) + sub;
  }
  static std::uint64_t bucket_upper(unsigned b) noexcept {
    if (b < (1u << kSubBits)) return b;
    const unsigned group = b >> kSubBits;  // msb - kSubBits + 1
    const unsigned sub = b & ((1u << kSubBits) - 1);
    const unsigned msb = group + kSubBits - 1;
    const std::uint64_t base = (std::uint64_t{1} << msb) + (std::uint64_t{sub} << (msb - kSubBits));
    return base + (std::uint64_t{1} << (msb - kSubBits)) - 1;
  }

 private:
  static void bump(std::atomic<std::uint64_t>& a, std::uint64_t by) noexcept {
    a.store(a.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  }
  std::array<std::atomic<std::uint64_t>, kBuckets> counts_{};
  std::atomic<std::uint64_t> max_{0};
};

}  // namespace ordo::detail
