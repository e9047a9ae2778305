// WorkerSet: a set of worker indices as an array of atomic 64-bit words.
//
// Thread-safety: all members may be called from any thread. Used for the sleep
// set (which workers are parked), the per-level advertisement masks (which
// workers' deques may hold tasks of a level) and the per-level eligibility
// masks (which workers serve a level).
//
// The sleep protocol built on it (the argument is in docs/architecture.md,
// "Sleeping and waking"): a worker adds itself (seq_cst RMW), then re-checks
// every place work can appear (seq_cst loads), and parks only if it saw none.
// A producer that made work visible with a seq_cst operation then reads the
// set (seq_cst load) and unparks one member it removed itself.
#pragma once

#include <atomic>
#include <bit>
#include <cstdint>
#include <memory>

namespace ordo::detail {

class alignas(64) WorkerSet {
 public:
  WorkerSet() = default;
  explicit WorkerSet(unsigned workers) { init(workers); }
  WorkerSet(const WorkerSet&) = delete;
  WorkerSet& operator=(const WorkerSet&) = delete;

  // Not thread-safe; once, before the set is shared.
  void init(unsigned workers) {
    words_ = (workers + 63) / 64;
    heap_.reset(words_ > 1 ? new std::atomic<std::uint64_t>[words_] : nullptr);
    bits_ = words_ > 1 ? heap_.get() : &inline_word_;
    for (unsigned i = 0; i < words_; ++i) bits_[i].store(0, std::memory_order_relaxed);
  }

  void add(unsigned worker) noexcept { bits_[worker / 64].fetch_or(bit(worker), std::memory_order_seq_cst); }
  // False when the worker was no longer a member: a producer's take_one()
  // removed it, and the unpark that came with it is meant for new work.
  bool remove(unsigned worker) noexcept {
    return (bits_[worker / 64].fetch_and(~bit(worker), std::memory_order_seq_cst) & bit(worker)) != 0;
  }
  bool contains(unsigned worker) const noexcept {
    return (bits_[worker / 64].load(std::memory_order_relaxed) & bit(worker)) != 0;
  }

  // Cheap test; relaxed by design: callers use it as a hint.
  bool any_relaxed() const noexcept {
    if (words_ == 1) return inline_word_.load(std::memory_order_relaxed) != 0;
    for (unsigned i = 0; i < words_; ++i)
      if (bits_[i].load(std::memory_order_relaxed) != 0) return true;
    return false;
  }
  bool any_other_relaxed(unsigned self) const noexcept {
    if (words_ == 1) return (inline_word_.load(std::memory_order_relaxed) & ~bit(self)) != 0;
    for (unsigned i = 0; i < words_; ++i) {
      std::uint64_t m = bits_[i].load(std::memory_order_relaxed);
      if (i == self / 64) m &= ~bit(self);
      if (m != 0) return true;
    }
    return false;
  }
  unsigned count() const noexcept {
    unsigned n = 0;
    for (unsigned i = 0; i < words_; ++i)
      n += static_cast<unsigned>(std::popcount(bits_[i].load(std::memory_order_relaxed)));
    return n;
  }

  // Removes one member that is also in `filter` (all members when null) and
  // returns its index, or -1 when there is none.
  int take_one(const WorkerSet* filter = nullptr) noexcept {
    for (unsigned i = 0; i < words_; ++i) {
      const std::uint64_t allowed = filter ? filter->bits_[i].load(std::memory_order_relaxed) : ~std::uint64_t{0};
      std::uint64_t m = bits_[i].load(std::memory_order_seq_cst) & allowed;
      while (m != 0) {
        std::uint64_t b = m & (~m + 1);
        std::uint64_t before = bits_[i].fetch_and(~b, std::memory_order_seq_cst);
        if (before & b) return static_cast<int>(i * 64 + static_cast<unsigned>(std::countr_zero(b)));
        m = before & ~b & allowed;
      }
    }
    return -1;
  }

  // Calls fn(index) for members other than `self`, starting from word `start`
  // (to spread thieves over victims) until fn returns true. Relaxed reads:
  // a hint of where to look.
  template <class Fn>
  bool any_of_others(unsigned self, unsigned start, Fn&& fn) const {
    for (unsigned k = 0; k < words_; ++k) {
      const unsigned i = (start + k) % words_;
      std::uint64_t m = bits_[i].load(std::memory_order_relaxed);
      if (i == self / 64) m &= ~bit(self);
      // rotate within the word too, so that thieves do not all pick worker 0
      const unsigned rot = start % 64;
      std::uint64_t r = std::rotr(m, static_cast<int>(rot));
      while (r != 0) {
        const unsigned j = (static_cast<unsigned>(std::countr_zero(r)) + rot) % 64;
        r &= r - 1;
        if (fn(i * 64 + j)) return true;
      }
    }
    return false;
  }

 private:
  static std::uint64_t bit(unsigned worker) noexcept { return std::uint64_t{1} << (worker % 64); }
  // Up to 64 workers the set is one word inside the object: one load, no
  // pointer chase, on the paths that run for every task.
  std::atomic<std::uint64_t> inline_word_{0};
  unsigned words_ = 0;
  std::atomic<std::uint64_t>* bits_ = &inline_word_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> heap_;
};

}  // namespace ordo::detail
