#include "util/populated_memory.hpp"

#include <sys/mman.h>

#include <new>

// GCC says it builds with ASan by __SANITIZE_ADDRESS__, Clang by __has_feature.
#if defined(__SANITIZE_ADDRESS__)
#define ORDO_LEAK_CHECKED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ORDO_LEAK_CHECKED 1
#endif
#endif
#ifndef ORDO_LEAK_CHECKED
#define ORDO_LEAK_CHECKED 0
#endif
#if ORDO_LEAK_CHECKED
#include <sanitizer/lsan_interface.h>
#endif

namespace ordo::detail {

void* map_populated_chunk(std::size_t bytes) {
  void* chunk = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (chunk == MAP_FAILED) throw std::bad_alloc();
#if ORDO_LEAK_CHECKED
  // The leak checker scans heap blocks and registered regions only: without
  // this, what a live node owns would be reported as leaked.
  __lsan_register_root_region(chunk, bytes);
#endif
  return chunk;
}

void unmap_populated_chunk(void* chunk, std::size_t bytes) noexcept {
#if ORDO_LEAK_CHECKED
  __lsan_unregister_root_region(chunk, bytes);
#endif
  ::munmap(chunk, bytes);
}

}  // namespace ordo::detail
