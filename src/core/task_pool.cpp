// Task node pool: per-thread caches backed by a shared stash of batches.
//
// Thread-safety: allocate_task()/free_task() may be called from any thread;
// a node may be freed by a different thread than allocated it (it simply joins
// the freeing thread's cache). The stash is guarded by a mutex touched once per
// kBatch nodes.
// Invariant: slabs are never returned to the system while the process runs;
// the pool's footprint is the peak number of live nodes, rounded up to slabs.
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#include "ordo/detail/task.hpp"

namespace ordo::detail {

namespace {

constexpr std::size_t kBatch = 256;
constexpr std::size_t kCacheLimit = 2 * kBatch;

// A chain of exactly kBatch nodes. The tail travels with it so that taking
// a batch never walks it: its nodes were last written by the threads that
// freed them, and a walk is one cache miss after another (on a slow day,
// 256 misses of ~200 ns per refill, the largest cost of a submission from
// outside the pool).
struct Batch {
  Task* head;
  Task* tail;
};

struct Stash {
  std::mutex mu;
  std::vector<Batch> batches;
  std::vector<void*> slabs;  // kept reachable: leak checkers see no leak
};

Stash& stash() {
  static auto* s = new Stash;  // immortal: thread caches may flush into it during exit
  return *s;
}

// Trivial so that every access is a plain thread-local load (no TLS init guard).
struct ThreadCache {
  Task* head;
  std::size_t count;
  bool hooked;   // the exit hook is registered: whatever is cached goes back at exit
  bool exiting;  // the thread's exit hook ran: frees go straight to the stash
};
thread_local constinit ThreadCache cache{nullptr, 0, false, false};

// The first n nodes of this thread's cache, which it freed itself: hot.
Batch take_chain(std::size_t n) noexcept {
  Task* head = cache.head;
  Task* tail = head;
  for (std::size_t i = 1; i < n; ++i) tail = tail->next;
  cache.head = tail->next;
  cache.count -= n;
  tail->next = nullptr;
  return {head, tail};
}

void flush(std::size_t n) noexcept {
  const Batch chain = take_chain(n);
  std::lock_guard lock(stash().mu);
  stash().batches.push_back(chain);
}

struct ExitHook {
  ~ExitHook() {
    while (cache.count >= kBatch) flush(kBatch);
    std::lock_guard lock(stash().mu);
    while (cache.head) {  // a short tail: hand it back one node at a time as a batch of its own size
      Task* t = cache.head;
      cache.head = t->next;
      t->next = nullptr;
      orphan_tail(t);
    }
    cache.count = 0;
    cache.exiting = true;
  }
  // Nodes that do not make a full batch wait in a partial chain until one is full.
  static void orphan_tail(Task* t) {
    static Batch partial{nullptr, nullptr};  // guarded by stash().mu
    static std::size_t partial_count = 0;
    t->next = partial.head;
    partial.head = t;
    if (partial.tail == nullptr) partial.tail = t;
    if (++partial_count == kBatch) {
      stash().batches.push_back(partial);
      partial = {nullptr, nullptr};
      partial_count = 0;
    }
  }
};

// Before a thread first caches a node, allocated or freed: a thread that
// only ever frees (one that drops the last reference to handles) would
// otherwise take its cache with it.
void register_exit_hook() {
  thread_local ExitHook hook;
  (void)hook;
  cache.hooked = true;
}

void refill() {
  if (!cache.hooked) register_exit_hook();
  Batch chain;
  {
    std::lock_guard lock(stash().mu);
    if (!stash().batches.empty()) {
      chain = stash().batches.back();
      stash().batches.pop_back();
    } else {
      void* slab = ::operator new(kBatch * sizeof(Task), std::align_val_t{alignof(Task)});
      stash().slabs.push_back(slab);
      auto* nodes = static_cast<Task*>(slab);
      for (std::size_t i = 0; i < kBatch; ++i) {
        Task* t = ::new (static_cast<void*>(nodes + i)) Task;
        t->next = i + 1 < kBatch ? nodes + i + 1 : nullptr;
      }
      chain = {nodes, nodes + kBatch - 1};
    }
  }
  chain.tail->next = cache.head;
  cache.head = chain.head;
  cache.count += kBatch;
}

}  // namespace

Task* allocate_task() {
  if (cache.head == nullptr) refill();
  Task* t = cache.head;
  cache.head = t->next;
  --cache.count;
  // The next node is likely cold (freed on another core): start fetching
  // it, for writing, while the caller fills this one.
  if (cache.head != nullptr) __builtin_prefetch(cache.head, 1);
  return t;
}

void free_task(Task* t) noexcept {
  if (cache.exiting) {
    std::lock_guard lock(stash().mu);
    ExitHook::orphan_tail(t);
    return;
  }
  if (!cache.hooked) [[unlikely]] register_exit_hook();
  t->next = cache.head;
  cache.head = t;
  if (++cache.count > kCacheLimit) flush(kBatch);
}

}  // namespace ordo::detail
