#include "util/block_pool.hpp"

#include "util/populated_memory.hpp"

namespace ordo::detail {

namespace {
// The first chunk: a pool that only ever holds a few hundred nodes costs no
// more than malloc would. Chunks double up to kPopulatedChunkBytes, from
// which on they are populated.
constexpr std::size_t kFirstChunkBytes = std::size_t{64} << 10;
}  // namespace

BlockPool::BlockPool(std::size_t block_bytes, std::size_t align)
    : block_bytes_((block_bytes + align - 1) / align * align),
      chunk_align_(align < alignof(std::max_align_t) ? alignof(std::max_align_t) : align),
      next_chunk_bytes_(kFirstChunkBytes) {}

BlockPool::~BlockPool() {
  for (void* chunk : small_chunks_) ::operator delete(chunk, std::align_val_t{chunk_align_});
  for (void* chunk : populated_chunks_) unmap_populated_chunk(chunk, kPopulatedChunkBytes);
}

void* BlockPool::take() {
  std::lock_guard lock(mu_);
  if (free_ != nullptr) {
    FreeBlock* block = free_;
    free_ = block->next;
    return block;
  }
  if (static_cast<std::size_t>(fresh_end_ - fresh_) < block_bytes_) grow_locked();
  void* block = fresh_;
  fresh_ += block_bytes_;
  return block;
}

void BlockPool::give(void* block) noexcept {
  std::lock_guard lock(mu_);
  free_ = ::new (block) FreeBlock{free_};
}

void BlockPool::grow_locked() {
  // What is left of the current chunk (less than one block) is dropped.
  const std::size_t bytes = next_chunk_bytes_;
  if (bytes < kPopulatedChunkBytes) {
    fresh_ = static_cast<char*>(::operator new(bytes, std::align_val_t{chunk_align_}));
    small_chunks_.push_back(fresh_);
    next_chunk_bytes_ *= 2;
  } else {
    fresh_ = static_cast<char*>(map_populated_chunk(bytes));
    populated_chunks_.push_back(fresh_);
  }
  fresh_end_ = fresh_ + bytes;
}

}  // namespace ordo::detail
