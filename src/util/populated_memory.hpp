// Memory for pools that grow by hundreds of thousands of nodes at once (the
// task pool, the durable task table): chunks whose pages are all mapped by
// one call instead of one fault per 4 KiB page at first touch. On a VM
// whose faults trap to the host a fault costs ~11 µs (the fresh-page probe
// of recovery/ordo); one populating mmap maps the same pages for about half
// that. The process-wide pools never give chunks back: they keep them for
// reuse.
//
// Thread-safety: any thread. Throws std::bad_alloc when the system refuses.
#pragma once

#include <cstddef>

namespace ordo::detail {

inline constexpr std::size_t kPopulatedChunkBytes = std::size_t{2} << 20;

// `bytes` (a multiple of the page size), page-aligned, every page mapped and
// zeroed. Registered with LeakSanitizer as a root region under ASan, since
// the nodes carved from it own heap memory.
void* map_populated_chunk(std::size_t bytes);
// Gives back a chunk of `bytes` that map_populated_chunk() returned.
void unmap_populated_chunk(void* chunk, std::size_t bytes) noexcept;

}  // namespace ordo::detail
