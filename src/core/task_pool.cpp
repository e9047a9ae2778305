// Task node pool: per-thread caches backed by a shared stash.
//
// Thread-safety: allocate_task()/free_task() may be called from any thread;
// a node may be freed by a different thread than allocated it (it simply joins
// the freeing thread's cache). The stash is guarded by a mutex touched once per
// kBatch nodes.
// Invariants: slabs are never returned to the system while the process runs;
// the pool's footprint is the peak number of live nodes, rounded up to slabs
// (past kSmallSlabs, up to the next 2 MiB chunk).
// A pooled node is only ever named by a pointer in one thread's cache or in
// the stash: the pool never writes into a free node, so freeing one touches
// no line of it, and the thread that takes it next knows its address without
// reading another node (which is what lets it fetch nodes ahead).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "core/task_pool.hpp"
#include "ordo/detail/task.hpp"
#include "util/populated_memory.hpp"

namespace ordo::detail {

using pool::kBatch;

namespace {

struct Stash {
  std::mutex mu;
  std::vector<Task*> nodes;  // free nodes given back by threads
  std::vector<void*> slabs;  // the first kSmallSlabs, kept reachable: leak checkers see no leak
  char* chunk_next = nullptr;  // [chunk_next, chunk_end): slabs not yet handed out
  char* chunk_end = nullptr;
};

Stash& stash() {
  static auto* s = new Stash;  // immortal: thread caches may flush into it during exit
  return *s;
}

constexpr std::size_t kSlabBytes = kBatch * sizeof(Task);
// A pool that has grown past kSmallSlabs slabs (2 MiB of nodes) grows by
// populated chunks (util/populated_memory.hpp). A recovery posting 500,000
// survivors needs 64 MiB of nodes at once; faulted in page by page they were
// about a quarter of its time on a VM (the first recovery of recovery/ordo:
// 1.17x with chunks). Small programs never get this far and keep the pool's
// footprint at the 32 KiB slabs they use.
constexpr std::size_t kSmallSlabs = 64;
static_assert(kPopulatedChunkBytes % kSlabBytes == 0);

// Called with stash().mu held.
void* new_slab_locked() {
  Stash& s = stash();
  if (s.slabs.size() < kSmallSlabs) {
    void* slab = ::operator new(kSlabBytes, std::align_val_t{alignof(Task)});
    s.slabs.push_back(slab);
    return slab;
  }
  if (s.chunk_next == s.chunk_end) {
    s.chunk_next = static_cast<char*>(map_populated_chunk(kPopulatedChunkBytes));
    s.chunk_end = s.chunk_next + kPopulatedChunkBytes;
  }
  void* slab = s.chunk_next;
  s.chunk_next += kSlabBytes;
  return slab;
}

}  // namespace

namespace pool {

thread_local constinit ThreadCache cache{{}, 0, false, false};

// Gives the kBatch nodes at the bottom of the cache to the stash: the ones
// this thread freed longest ago, the least likely to still be in its cache.
[[gnu::noinline]] void flush() noexcept {
  {
    std::lock_guard lock(stash().mu);
    stash().nodes.insert(stash().nodes.end(), cache.nodes, cache.nodes + kBatch);
  }
  cache.count -= kBatch;
  std::memmove(cache.nodes, cache.nodes + kBatch, cache.count * sizeof(Task*));
}

namespace {

struct ExitHook {
  ~ExitHook() {
    std::lock_guard lock(stash().mu);
    stash().nodes.insert(stash().nodes.end(), cache.nodes, cache.nodes + cache.count);
    cache.count = 0;
    cache.exiting = true;
  }
};

}  // namespace

// Before a thread first caches a node, allocated or freed: a thread that
// only ever frees (one that drops the last reference to handles) would
// otherwise take its cache with it.
[[gnu::noinline]] void register_exit_hook() {
  thread_local ExitHook hook;
  (void)hook;
  cache.hooked = true;
}

// Called with an empty cache.
[[gnu::noinline]] void refill() {
  if (!cache.hooked) register_exit_hook();
  {
    std::lock_guard lock(stash().mu);
    std::vector<Task*>& free = stash().nodes;
    if (!free.empty()) {
      const std::size_t n = std::min(kBatch, free.size());
      std::copy(free.end() - static_cast<std::ptrdiff_t>(n), free.end(), cache.nodes);
      free.resize(free.size() - n);
      cache.count = n;
    } else {
      void* slab = new_slab_locked();
      auto* nodes = static_cast<Task*>(slab);
      for (std::size_t i = 0; i < kBatch; ++i) cache.nodes[i] = ::new (static_cast<void*>(nodes + i)) Task;
      cache.count = kBatch;
    }
  }
  // The allocations before the first fetch-ahead one.
  for (std::size_t i = 1; i <= kFetchAhead && i <= cache.count; ++i) fetch_for_writing(cache.nodes[cache.count - i]);
}

[[gnu::noinline]] void free_after_exit(Task* t) noexcept {
  std::lock_guard lock(stash().mu);
  stash().nodes.push_back(t);
}

}  // namespace pool

Task* allocate_task() { return pool::allocate(); }

void free_task(Task* t) noexcept { pool::free(t); }

}  // namespace ordo::detail
