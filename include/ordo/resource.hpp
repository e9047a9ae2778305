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
#include <string>

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

}  // namespace ordo
