#include "core/parker.hpp"

#include <mutex>

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
#else
void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected) noexcept { word->wait(expected); }
void futex_wake_one(std::atomic<std::uint32_t>* word) noexcept { word->notify_one(); }
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
