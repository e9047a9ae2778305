// TaskIdSet: the set of live task ids a journal replay keeps, without an
// allocation per id. ordo hands out ids in sequence, so most ids fall in a
// dense window after the first one seen: those are bits in a bitmap (a
// million ids in 128 KiB). Any other id (a hand-written journal, a fuzzer)
// goes to an open-addressing hash set beside it.
//
// Thread-safety: none (one replaying thread). Invariants: an id is in the
// bitmap or in the table, never both (its place depends only on the id and
// base_, fixed by the first insert). The table's size is a power of two,
// at most half full; linear probing, and erase shifts the following entries
// back, so no tombstones and a probe stops at the first empty slot. The id
// 0 marks an empty slot and is kept in a flag of its own.
#pragma once

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <vector>

namespace ordo::detail {

class TaskIdSet {
 public:
  std::size_t size() const noexcept { return size_ + dense_size_ + (has_zero_ ? 1 : 0); }

  void insert(std::uint64_t id) {
    if (!based_) {
      based_ = true;
      base_ = id;
    }
    if (in_window(id)) {
      const std::uint64_t bit = id - base_;
      if (bit / 64 >= bits_.size()) bits_.resize(std::max<std::size_t>(bit / 64 + 1, bits_.size() * 2), 0);
      std::uint64_t& word = bits_[bit / 64];
      const std::uint64_t m = std::uint64_t{1} << (bit % 64);
      dense_size_ += (word & m) == 0 ? 1 : 0;
      word |= m;
      return;
    }
    if (id == 0) {
      has_zero_ = true;
      return;
    }
    if ((size_ + 1) * 2 > slots_.size()) grow();
    std::size_t i = home(id);
    while (slots_[i] != 0) {
      if (slots_[i] == id) return;
      i = (i + 1) & mask();
    }
    slots_[i] = id;
    ++size_;
  }

  void erase(std::uint64_t id) {
    if (based_ && in_window(id)) {
      const std::uint64_t bit = id - base_;
      if (bit / 64 >= bits_.size()) return;
      std::uint64_t& word = bits_[bit / 64];
      const std::uint64_t m = std::uint64_t{1} << (bit % 64);
      dense_size_ -= (word & m) != 0 ? 1 : 0;
      word &= ~m;
      return;
    }
    if (id == 0) {
      has_zero_ = false;
      return;
    }
    if (slots_.empty()) return;
    std::size_t i = home(id);
    while (slots_[i] != id) {
      if (slots_[i] == 0) return;
      i = (i + 1) & mask();
    }
    // Backward-shift: move later entries of the probe run into the hole
    // unless that would put one before its home slot.
    std::size_t hole = i;
    for (std::size_t j = (i + 1) & mask(); slots_[j] != 0; j = (j + 1) & mask()) {
      const std::size_t want = home(slots_[j]);
      const bool movable = hole <= j ? (want <= hole || want > j) : (want <= hole && want > j);
      if (movable) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole] = 0;
    --size_;
  }

 private:
  static constexpr std::uint64_t kWindow = std::uint64_t{1} << 27;  // ids; the bitmap stays within 16 MiB
  bool in_window(std::uint64_t id) const noexcept { return id >= base_ && id - base_ < kWindow; }
  std::size_t mask() const noexcept { return slots_.size() - 1; }
  std::size_t home(std::uint64_t id) const noexcept {
    // Nearly the identity: ordo hands out ids in sequence, and sequential
    // ids in sequential slots keep a replay in the cache. The fold keeps
    // ids that differ only in their high bits apart.
    return static_cast<std::size_t>(id ^ (id >> 29) ^ (id >> 47)) & mask();
  }
  void grow() {
    std::vector<std::uint64_t> old(slots_.empty() ? 1024 : slots_.size() * 2, 0);
    old.swap(slots_);
    size_ = 0;
    for (std::uint64_t id : old) {
      if (id != 0) insert(id);
    }
  }

  bool based_ = false;
  std::uint64_t base_ = 0;
  std::vector<std::uint64_t> bits_;  // bit i: id base_ + i
  std::size_t dense_size_ = 0;
  std::vector<std::uint64_t> slots_;
  std::size_t size_ = 0;  // nonzero ids held
  bool has_zero_ = false;
};

}  // namespace ordo::detail
