// BlockPool: same-sized blocks for the nodes of a container that holds
// hundreds of thousands of entries at once (the durable task table), and
// PooledAllocator, which gives a node-based standard container its nodes
// from one.
//
// Why: a recovery rebuilds its whole task table in memory that was never
// touched. Through malloc, that is a page fault per 4 KiB at first touch;
// past its first 2 MiB a pool grows by populated chunks
// (util/populated_memory.hpp), mapped in one call for about half the price,
// and keeps freed blocks for the next table (a restarted runtime in the same
// process reuses them warm). Blocks carry no header: a node takes exactly
// its size.
//
// Thread-safety: take() and give() from any thread; one mutex, uncontended
// in practice (a table's own lock is held around its changes anyway).
// Invariants: chunks go back to the system only in the destructor; a free
// block holds the link to the next one in its first bytes, and nothing else
// reads it.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

namespace ordo::detail {

class BlockPool {
 public:
  BlockPool(std::size_t block_bytes, std::size_t align);
  // Frees every chunk: every block must have been given back (the shared
  // pools are never destroyed).
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  void* take();
  void give(void* block) noexcept;

  // The process's pool for blocks of this size and alignment: immortal, so
  // that a container destroyed during exit may still give its nodes back.
  template <std::size_t Bytes, std::size_t Align>
  static BlockPool& shared() {
    static auto* pool = new BlockPool(Bytes, Align);
    return *pool;
  }

 private:
  struct FreeBlock {
    FreeBlock* next;
  };
  void grow_locked();

  std::mutex mu_;
  const std::size_t block_bytes_;
  const std::size_t chunk_align_;  // blocks step by a multiple of the alignment from a chunk's start
  FreeBlock* free_ = nullptr;  // mu_
  char* fresh_ = nullptr;      // mu_: [fresh_, fresh_end_) never handed out
  char* fresh_end_ = nullptr;  // mu_
  std::size_t next_chunk_bytes_;
  std::vector<void*> small_chunks_;      // mu_: kept reachable, so leak checkers see no leak
  std::vector<void*> populated_chunks_;  // mu_: each kPopulatedChunkBytes
};

// Single objects (a container's nodes) come from the BlockPool of their size;
// arrays (a hash table's buckets) from the heap.
template <class T>
class PooledAllocator {
 public:
  using value_type = T;
  PooledAllocator() noexcept = default;
  template <class U>
  PooledAllocator(const PooledAllocator<U>&) noexcept {}  // NOLINT: rebinding converts implicitly

  T* allocate(std::size_t n) {
    if (n == 1) return static_cast<T*>(pool().take());
    return std::allocator<T>{}.allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (n == 1) {
      pool().give(p);
    } else {
      std::allocator<T>{}.deallocate(p, n);
    }
  }
  template <class U>
  bool operator==(const PooledAllocator<U>&) const noexcept {
    return true;  // every instance draws on the same pools
  }

 private:
  static constexpr std::size_t kBlockBytes = sizeof(T) < sizeof(void*) ? sizeof(void*) : sizeof(T);
  static constexpr std::size_t kBlockAlign = alignof(T) < alignof(void*) ? alignof(void*) : alignof(T);
  static BlockPool& pool() { return BlockPool::shared<kBlockBytes, kBlockAlign>(); }
};

}  // namespace ordo::detail
