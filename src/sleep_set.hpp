// SleepSet: which workers of a scheduler are parked (or about to park).
//
// Thread-safety: all members may be called from any thread.
// Protocol (the argument is in docs/architecture.md, "Sleeping and waking"):
// a worker adds itself (seq_cst RMW), then re-checks every place work can
// appear (seq_cst loads), and parks only if it saw none. A producer that made
// work visible with a seq_cst operation then reads the set (seq_cst load) and
// unparks one member it removed itself. Under one total order at least one of
// the two sees the other, so an injected task is never left with every worker
// asleep. Pushes onto a worker's own deque skip the seq_cst step: that worker
// always runs its own deque before it sleeps, so a missed wake-up there costs
// parallelism for a moment, never progress.
#pragma once

#include <atomic>
#include <bit>
#include <cstdint>
#include <memory>

namespace ordo::detail {

class SleepSet {
 public:
  explicit SleepSet(unsigned workers) : words_((workers + 63) / 64), bits_(new std::atomic<std::uint64_t>[words_]) {
    for (unsigned i = 0; i < words_; ++i) bits_[i].store(0, std::memory_order_relaxed);
  }

  void add(unsigned worker) noexcept { bits_[worker / 64].fetch_or(bit(worker), std::memory_order_seq_cst); }
  void remove(unsigned worker) noexcept { bits_[worker / 64].fetch_and(~bit(worker), std::memory_order_seq_cst); }

  // Cheap test for the local-push path; relaxed by design (see the protocol).
  bool any_relaxed() const noexcept {
    for (unsigned i = 0; i < words_; ++i)
      if (bits_[i].load(std::memory_order_relaxed) != 0) return true;
    return false;
  }

  unsigned count() const noexcept {
    unsigned n = 0;
    for (unsigned i = 0; i < words_; ++i) n += static_cast<unsigned>(std::popcount(bits_[i].load(std::memory_order_relaxed)));
    return n;
  }

  // Removes one member and returns its index, or -1 when the set is empty.
  int take_one() noexcept {
    for (unsigned i = 0; i < words_; ++i) {
      std::uint64_t m = bits_[i].load(std::memory_order_seq_cst);
      while (m != 0) {
        std::uint64_t b = m & (~m + 1);
        std::uint64_t before = bits_[i].fetch_and(~b, std::memory_order_seq_cst);
        if (before & b) return static_cast<int>(i * 64 + static_cast<unsigned>(std::countr_zero(b)));
        m = before & ~b;
      }
    }
    return -1;
  }

 private:
  static std::uint64_t bit(unsigned worker) noexcept { return std::uint64_t{1} << (worker % 64); }
  unsigned words_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> bits_;
};

}  // namespace ordo::detail
