// The task pool's per-thread cache and its inline fast paths, for the hot
// paths of the scheduler itself (prepare_node, finish, a task's needs): a
// spawn allocates a node and a finished task frees one, and as calls into
// task_pool.cpp these two were 8% of fib/ordo/30's samples. Everything else
// about the pool (the stash, slabs, the exit hook, and the thread-safety
// contract) is in task_pool.cpp; code outside src/core calls
// allocate_task()/free_task().
#pragma once

#include <cstddef>
#include <new>
#include <utility>

#include "ordo/detail/task.hpp"
#include "util/prefetch.hpp"

namespace ordo::detail::pool {

inline constexpr std::size_t kBatch = 256;
inline constexpr std::size_t kCacheCapacity = 2 * kBatch;
// How many allocations ahead allocation starts fetching a node for writing.
// A thread that submits from outside the pool mostly gets nodes that workers
// freed: their lines sit in another core's cache, one transfer away (on a
// slow-interconnect day, ~200 ns, several submissions' worth). Fetching one
// ahead left most of that transfer on the submitter's path.
inline constexpr std::size_t kFetchAhead = 8;

// Trivial so that every access is a plain thread-local load (no TLS init guard).
struct ThreadCache {
  Task* nodes[kCacheCapacity];  // [0, count) free; the most recently freed on top
  std::size_t count;
  bool hooked;   // the exit hook is registered: whatever is cached goes back at exit
  bool exiting;  // the thread's exit hook ran: frees go straight to the stash
};
extern thread_local constinit ThreadCache cache;

// The rare paths, out of line: inlined, they made allocation and freeing save
// six registers on every call.
void refill();
void flush() noexcept;
void register_exit_hook();
void free_after_exit(Task* t) noexcept;

// Both of the node's lines, for writing: the submitter writes the header and
// the payload next. Read-prefetched, each line would come in shared with the
// worker that freed the node, and the first store would still wait for that
// copy's invalidation: on a slow-interconnect day the next submission's
// barrier then waits for it too (almost half of spawn_external's time there).
inline void fetch_for_writing(Task* t) noexcept { prefetch_for_writing(t, sizeof(Task)); }

inline Task* allocate() {
  if (cache.count == 0) refill();
  Task* t = cache.nodes[--cache.count];
  // The node handed out kFetchAhead allocations from now (refill() fetched
  // the first ones).
  if (cache.count >= kFetchAhead) fetch_for_writing(cache.nodes[cache.count - kFetchAhead]);
  return t;
}

inline void free(Task* t) noexcept {
  if (cache.exiting) [[unlikely]] {
    free_after_exit(t);
    return;
  }
  if (!cache.hooked) [[unlikely]] register_exit_hook();
  if (cache.count == kCacheCapacity) flush();
  cache.nodes[cache.count++] = t;
}

// Small internal objects (a task's needs) live in task nodes too: the same
// per-thread caches and fast paths, no malloc on the submit path.
template <class X, class... Args>
[[gnu::always_inline]] inline X* create(Args&&... args) {
  static_assert(sizeof(X) <= kTaskNodeBytes && alignof(X) <= alignof(Task), "too large for a pooled node");
  Task* node = allocate();
  node->~Task();
  try {
    // Default-initialised when there are no arguments: X() would zero the
    // whole object first (value-initialisation), a `rep stos` of the node
    // on every submission needing a group, before X's own initialisers.
    if constexpr (sizeof...(Args) == 0) {
      return ::new (static_cast<void*>(node)) X;
    } else {
      return ::new (static_cast<void*>(node)) X(std::forward<Args>(args)...);
    }
  } catch (...) {
    free(::new (static_cast<void*>(node)) Task);
    throw;
  }
}

template <class X>
void destroy(X* x) noexcept {
  x->~X();
  free(::new (static_cast<void*>(x)) Task);
}

}  // namespace ordo::detail::pool
