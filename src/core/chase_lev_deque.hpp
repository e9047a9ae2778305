// ChaseLevDeque<T>: the work-stealing deque of one worker and one level.
//
// Thread-safety: push() and pop() only from the owning thread; steal() from
// any thread. T must be trivially copyable (ordo stores Task*).
// Invariants: items live at indices [top, bottom) of a power-of-two ring;
// top only grows (by CAS, in steal() or in pop() of the last item); bottom is
// written only by the owner. A buffer replaced by grow() is retired, not freed,
// until the deque is destroyed, because a thief may still read from it.
//
// Memory orders follow Lê, Pop, Cohen, Zappa Nardelli, "Correct and Efficient
// Work-Stealing for Weak Memory Models" (PPoPP 2013), with one deliberate
// change: the two seq_cst fences (in pop() between writing bottom and reading
// top, and in steal() between reading top and bottom) are expressed as seq_cst
// operations on bottom and top themselves. On x86-64 the cost is the same (an
// xchg in place of mov+mfence in pop(), plain loads in steal()), the argument
// is the plain store-buffer (Dekker) one under a single total order, and
// ThreadSanitizer, which does not model fences, can check it.
// See docs/architecture.md, "The deque".
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

namespace ordo::detail {

enum class StealResult { success, empty, lost_race };

template <class T>
class ChaseLevDeque {
  static_assert(std::is_trivially_copyable_v<T>);

 public:
  explicit ChaseLevDeque(std::size_t initial_capacity = 256) {
    std::size_t cap = 1;
    while (cap < initial_capacity) cap <<= 1;
    auto ring = std::make_unique<Ring>(cap);
    ring_.store(ring.get(), std::memory_order_relaxed);
    owner_ring_ = ring.get();
    rings_.push_back(std::move(ring));
  }
  ChaseLevDeque(const ChaseLevDeque&) = delete;
  ChaseLevDeque& operator=(const ChaseLevDeque&) = delete;

  // Owner only. Never fails; grows the ring when full.
  void push(T item) {
    std::int64_t b = bottom_.load(std::memory_order_relaxed);
    Ring* ring = owner_ring_;
    if (b - top_cache_ >= static_cast<std::int64_t>(ring->capacity)) {
      // top only grows, so the cached value is a lower bound: refresh it only
      // when the ring looks full. acquire pairs with the CAS on top in
      // steal(): the slots below top are no longer read by thieves.
      top_cache_ = top_.load(std::memory_order_acquire);
      if (b - top_cache_ >= static_cast<std::int64_t>(ring->capacity)) ring = grow(ring, top_cache_, b);
    }
    ring->put(b, item);
    // release pairs with the loads of bottom in steal(): a thief that sees the
    // new bottom sees the item and everything written before the push.
    bottom_.store(b + 1, std::memory_order_release);
  }

  // Owner only. Takes the newest item (LIFO). False when empty.
  bool pop(T& out) {
    std::int64_t b = bottom_.load(std::memory_order_relaxed) - 1;
    Ring* ring = owner_ring_;
    // seq_cst store, then seq_cst load of top: the Dekker pair with steal(),
    // so that pop and a thief cannot both miss each other on the last item.
    bottom_.store(b, std::memory_order_seq_cst);
    std::int64_t t = top_.load(std::memory_order_seq_cst);
    top_cache_ = t;
    if (t > b) {  // was empty
      bottom_.store(b + 1, std::memory_order_relaxed);
      return false;
    }
    out = ring->get(b);
    if (t == b) {  // last item: race thieves for it on top
      bool won = top_.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst, std::memory_order_relaxed);
      bottom_.store(b + 1, std::memory_order_relaxed);
      return won;
    }
    return true;
  }

  // Any thread. Takes the oldest item (FIFO); says why it failed.
  StealResult steal(T& out) {
    std::int64_t t = top_.load(std::memory_order_seq_cst);
    std::int64_t b = bottom_.load(std::memory_order_seq_cst);
    if (t >= b) return StealResult::empty;
    // acquire pairs with grow()'s release store: the new ring's contents are visible.
    Ring* ring = ring_.load(std::memory_order_acquire);
    T item = ring->get(t);
    if (!top_.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst, std::memory_order_relaxed)) {
      return StealResult::lost_race;
    }
    out = item;
    return StealResult::success;
  }

  // Any thread; a snapshot that may be stale by the time it is used.
  bool empty_hint() const noexcept {
    return top_.load(std::memory_order_relaxed) >= bottom_.load(std::memory_order_relaxed);
  }
  // Any thread; seq_cst so that it can take part in the sleep protocol's Dekker pair.
  bool empty_seq_cst() const noexcept {
    return top_.load(std::memory_order_seq_cst) >= bottom_.load(std::memory_order_seq_cst);
  }
  std::int64_t size_hint() const noexcept {
    auto d = bottom_.load(std::memory_order_relaxed) - top_.load(std::memory_order_relaxed);
    return d > 0 ? d : 0;
  }
  std::size_t capacity() const noexcept { return ring_.load(std::memory_order_relaxed)->capacity; }

 private:
  struct Ring {
    explicit Ring(std::size_t cap) : capacity(cap), mask(cap - 1), slots(new std::atomic<T>[cap]) {}
    // Slots are atomics accessed relaxed: a thief may read a slot the owner is
    // overwriting after wrap-around; its CAS on top then fails and discards it.
    T get(std::int64_t i) const noexcept { return slots[static_cast<std::size_t>(i) & mask].load(std::memory_order_relaxed); }
    void put(std::int64_t i, T v) noexcept { slots[static_cast<std::size_t>(i) & mask].store(v, std::memory_order_relaxed); }
    std::size_t capacity;
    std::size_t mask;
    std::unique_ptr<std::atomic<T>[]> slots;
  };

  Ring* grow(Ring* old, std::int64_t t, std::int64_t b) {
    auto bigger = std::make_unique<Ring>(old->capacity * 2);
    for (std::int64_t i = t; i < b; ++i) bigger->put(i, old->get(i));
    Ring* raw = bigger.get();
    rings_.push_back(std::move(bigger));  // the old ring stays alive (retired) until destruction
    // release pairs with steal()'s acquire load of ring_.
    ring_.store(raw, std::memory_order_release);
    owner_ring_ = raw;
    return raw;
  }

  alignas(64) std::atomic<std::int64_t> top_{0};
  alignas(64) std::atomic<std::int64_t> bottom_{0};
  // Owner-private copies, on the owner's line: the ring it writes to and a
  // lower bound of top for the capacity check.
  Ring* owner_ring_ = nullptr;
  std::int64_t top_cache_ = 0;
  alignas(64) std::atomic<Ring*> ring_{nullptr};  // what thieves read
  std::vector<std::unique_ptr<Ring>> rings_;  // owner only: current ring and retired ones
};

}  // namespace ordo::detail
