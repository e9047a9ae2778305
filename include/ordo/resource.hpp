// Resource groups: named counting semaphores that cap how many tasks use a
// resource at once (a DB pool of 8 connections, a 4 GiB memory budget).
//
// A task names what it needs at submission (SubmitOptions::needs). A worker
// that takes the task acquires all of it at once or none of it; if it cannot,
// the task is parked on the groups' wait lists — ordered by priority, then by
// age — and the worker moves on: no worker is ever held by a waiting task.
// Permits come back when the task ends, whichever way it ends, and go straight
// to the best waiter that can now proceed.
//
// Thread-safety: every member may be called from any thread. A ResourceGroup
// is a small value referring to a group owned by its scheduler; it must not
// be used after the scheduler is destroyed.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "ordo/detail/access.hpp"
#include "ordo/stats.hpp"

namespace ordo {

namespace detail {
class ResourceGroupCore;
}


class ResourceGroup {
 public:
  ResourceGroup() noexcept = default;

  const std::string& name() const;
  std::uint64_t limit() const;
  // Raising the limit hands the new room to waiters at once; lowering it lets
  // current holders finish (nothing is revoked) and admits no one until the
  // use is below the new limit. A parked waiter needing more than the new
  // limit stays parked but blocks nobody behind it; raising the limit again
  // lets it run, and a draining shutdown cancels it (TaskCancelled).
  // Throws InvalidArgument for 0.
  void set_limit(std::uint64_t limit);
  ResourceStats stats() const;

  bool valid() const noexcept { return core_ != nullptr; }

 private:
  friend class Scheduler;
  friend struct detail::Access;
  explicit ResourceGroup(detail::ResourceGroupCore* core) noexcept : core_(core) {}
  detail::ResourceGroupCore* core_ = nullptr;
};

namespace detail {
inline ResourceGroupCore* Access::core(const ResourceGroup& group) noexcept { return group.core_; }
}  // namespace detail

// What a task needs of one group while it runs.
struct Need {
  ResourceGroup group;
  std::uint64_t amount = 1;
};

// What one task needs: a small vector of Need that keeps up to two in
// place, so that a submission needing one or two groups allocates nothing
// for them. Written like a std::vector<Need> — `{{db, 1}, {memory, 512}}`,
// push_back, a range-for — and made from one (or turned back into one).
// Thread-safety: a value; as a std::vector.
class Needs {
 public:
  Needs() noexcept = default;
  Needs(std::initializer_list<Need> needs) { assign(needs.begin(), needs.size()); }
  Needs(const std::vector<Need>& needs) { assign(needs.data(), needs.size()); }  // implicit: a vector is a Needs
  Needs(const Needs& other) { assign(other.data(), other.size_); }
  Needs(Needs&& other) noexcept { take(other); }
  Needs& operator=(const Needs& other) {
    if (this != &other) {
      size_ = 0;
      assign(other.data(), other.size_);
    }
    return *this;
  }
  Needs& operator=(Needs&& other) noexcept {
    if (this != &other) {
      delete[] heap_;
      heap_ = nullptr;
      take(other);
    }
    return *this;
  }
  ~Needs() { delete[] heap_; }

  void push_back(const Need& need) {
    if (size_ == capacity_) grow(2 * capacity_);
    data()[size_++] = need;
  }
  void clear() noexcept { size_ = 0; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  Need* data() noexcept { return heap_ != nullptr ? heap_ : in_place_; }
  const Need* data() const noexcept { return heap_ != nullptr ? heap_ : in_place_; }
  Need* begin() noexcept { return data(); }
  Need* end() noexcept { return data() + size_; }
  const Need* begin() const noexcept { return data(); }
  const Need* end() const noexcept { return data() + size_; }
  Need& operator[](std::size_t i) noexcept { return data()[i]; }
  const Need& operator[](std::size_t i) const noexcept { return data()[i]; }
  operator std::vector<Need>() const { return std::vector<Need>(begin(), end()); }

 private:
  static constexpr std::size_t kInPlace = 2;
  void assign(const Need* from, std::size_t n) {
    if (n > capacity_) grow(n);
    Need* to = data();
    for (std::size_t i = 0; i < n; ++i) to[i] = from[i];
    size_ = n;
  }
  void grow(std::size_t capacity) {
    Need* bigger = new Need[capacity];
    const Need* from = data();
    for (std::size_t i = 0; i < size_; ++i) bigger[i] = from[i];
    delete[] heap_;
    heap_ = bigger;
    capacity_ = capacity;
  }
  // Leaves `other` empty and in place (heap_ already freed by the caller).
  void take(Needs& other) noexcept {
    size_ = other.size_;
    capacity_ = other.capacity_;
    if (other.heap_ != nullptr) {
      heap_ = other.heap_;
    } else {
      for (std::size_t i = 0; i < other.size_; ++i) in_place_[i] = other.in_place_[i];
    }
    other.heap_ = nullptr;
    other.size_ = 0;
    other.capacity_ = kInPlace;
  }

  Need in_place_[kInPlace];
  Need* heap_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = kInPlace;
};

}  // namespace ordo
