// Parker: a one-permit parking spot for one thread.
//
// Thread-safety: park() only from the thread that leased the parker;
// unpark() from any thread at any time. An unpark() that finds no parked
// thread leaves a permit, so the next park() returns at once: a wake-up is
// never lost. park() may also return spuriously; callers re-check their
// condition in a loop.
// Invariant: parkers are never freed, only recycled when their thread exits.
// That makes unpark() through a stale pointer safe (at worst a spurious
// wake-up of the next lessee), which the group and handle protocols rely on:
// a completing task may unpark a waiter after the waiter's object is gone.
#pragma once

#include <atomic>
#include <cstdint>

namespace ordo::detail {

class Parker {
 public:
  void park() noexcept;
  // park() that gives up at `deadline_ns` (steady clock, as steady_now_ns()).
  // True when it consumed a permit (an unpark() reached it, or was left
  // before), false when the deadline passed first. An unpark() that races
  // the time-out is never lost: it is either consumed here (true) or left as
  // the permit for the next park().
  bool park_until(std::int64_t deadline_ns) noexcept;
  void unpark() noexcept;

  // The calling thread's parker, leased on first use and returned at thread exit.
  static Parker* current() noexcept;

 private:
  friend struct ParkerRegistry;
  static constexpr std::uint32_t kEmpty = 0;
  static constexpr std::uint32_t kNotified = 1;
  static constexpr std::uint32_t kParked = 2;

  std::atomic<std::uint32_t> state_{kEmpty};
  Parker* next_free_ = nullptr;
};

}  // namespace ordo::detail
