#include "util/parker.hpp"

#include <ctime>
#include <mutex>
#include <thread>

#include "util/clock.hpp"

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace ordo::detail {

namespace {

#if defined(__linux__)
static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));

void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected) noexcept {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
void futex_wake_one(std::atomic<std::uint32_t>* word) noexcept {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}
// Sleeps while *word == expected, at most until `deadline_ns` on
// CLOCK_MONOTONIC (the clock of std::chrono::steady_clock on Linux):
// FUTEX_WAIT_BITSET takes an absolute time, so a spurious return and a new
// wait do not stretch the deadline.
void futex_wait_until(std::atomic<std::uint32_t>* word, std::uint32_t expected, std::int64_t deadline_ns) noexcept {
  timespec at{};
  at.tv_sec = static_cast<time_t>(deadline_ns / 1'000'000'000);
  at.tv_nsec = static_cast<long>(deadline_ns % 1'000'000'000);
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_BITSET_PRIVATE, expected, &at, nullptr,
          FUTEX_BITSET_MATCH_ANY);
}
#else
void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected) noexcept { word->wait(expected); }
void futex_wake_one(std::atomic<std::uint32_t>* word) noexcept { word->notify_one(); }
// No timed atomic wait in the standard: poll, at a cost only to timed waits.
void futex_wait_until(std::atomic<std::uint32_t>* word, std::uint32_t expected, std::int64_t deadline_ns) noexcept {
  while (word->load(std::memory_order_relaxed) == expected && steady_now_ns() < deadline_ns)
    std::this_thread::sleep_for(std::chrono::microseconds(50));
}
#endif

}  // namespace

// Same protocol as a futex-based thread parker: kNotified is the permit.
void Parker::park() noexcept {
  // acquire pairs with unpark()'s exchange: what the unparker wrote before
  // unparking is visible after we return.
  if (state_.exchange(kEmpty, std::memory_order_acquire) == kNotified) return;
  std::uint32_t expected = kEmpty;
  if (!state_.compare_exchange_strong(expected, kParked, std::memory_order_acquire)) {
    state_.store(kEmpty, std::memory_order_relaxed);  // it was kNotified: consume the permit
    return;
  }
  for (;;) {
    futex_wait(&state_, kParked);
    expected = kNotified;
    if (state_.compare_exchange_strong(expected, kEmpty, std::memory_order_acquire)) return;
    // spurious futex return: still kParked, sleep again
  }
}

bool Parker::park_until(std::int64_t deadline_ns) noexcept {
  // acquire (here and below) pairs with unpark()'s exchange, as in park().
  if (state_.exchange(kEmpty, std::memory_order_acquire) == kNotified) return true;
  std::uint32_t expected = kEmpty;
  if (!state_.compare_exchange_strong(expected, kParked, std::memory_order_acquire)) {
    state_.store(kEmpty, std::memory_order_relaxed);  // it was kNotified: consume the permit
    return true;
  }
  for (;;) {
    if (steady_now_ns() >= deadline_ns) {
      // Leave kParked. If an unpark() got in first the word is kNotified:
      // take that permit, so that the wake-up counts (and is not left over).
      expected = kParked;
      if (state_.compare_exchange_strong(expected, kEmpty, std::memory_order_acquire)) return false;
      // The failed CAS read kNotified with acquire (only unpark() writes
      // while we are parked): consume that permit.
      state_.store(kEmpty, std::memory_order_relaxed);
      return true;
    }
    futex_wait_until(&state_, kParked, deadline_ns);
    expected = kNotified;
    if (state_.compare_exchange_strong(expected, kEmpty, std::memory_order_acquire)) return true;
  }
}

void Parker::unpark() noexcept {
  // release pairs with park()'s acquire.
  if (state_.exchange(kNotified, std::memory_order_release) == kParked) futex_wake_one(&state_);
}

struct ParkerRegistry {
  std::mutex mu;
  Parker* free_list = nullptr;

  static ParkerRegistry& instance() {
    static auto* registry = new ParkerRegistry;  // immortal, like the parkers
    return *registry;
  }
  Parker* lease() {
    std::lock_guard lock(mu);
    if (Parker* p = free_list) {
      free_list = p->next_free_;
      return p;
    }
    return new Parker;
  }
  void give_back(Parker* p) {
    std::lock_guard lock(mu);
    p->next_free_ = free_list;
    free_list = p;
  }
};

namespace {
struct ParkerLease {
  Parker* parker = ParkerRegistry::instance().lease();
  ~ParkerLease() { ParkerRegistry::instance().give_back(parker); }
};
}  // namespace

Parker* Parker::current() noexcept {
  thread_local ParkerLease lease;
  return lease.parker;
}

}  // namespace ordo::detail
