// Access: the one door through which ordo's own code reaches the internals
// behind its public types (a scheduler's core, a resource group's core, a
// handle's task node). The public classes befriend it instead of exposing
// members, so users cannot call these and nothing in the public surface
// promises them.
//
// Thread-safety: as the members it reaches; Access itself has no state.
#pragma once

#include <utility>

namespace ordo {
class Scheduler;
class ResourceGroup;
template <class T>
class Handle;
class TaskRef;
}  // namespace ordo

namespace ordo::detail {

class SchedulerCore;
class ResourceGroupCore;
struct Task;

struct Access {
  // Defined beside Scheduler (ordo/scheduler.hpp).
  static SchedulerCore& core(Scheduler& scheduler) noexcept;
  // Defined beside ResourceGroup (ordo/resource.hpp); null for an empty group.
  static ResourceGroupCore* core(const ResourceGroup& group) noexcept;

  // The task a handle refers to (null when empty); the handle keeps it.
  template <class T>
  static Task* node(const Handle<T>& h) noexcept {
    return h.task_;
  }
  // Takes the handle's reference on its task; the handle is empty after.
  template <class T>
  static Task* release(Handle<T>& h) noexcept {
    return std::exchange(h.task_, nullptr);
  }
  // Defined beside TaskRef (ordo/task_ref.hpp).
  static Task* node(const TaskRef& ref) noexcept;
  static Task* release(TaskRef& ref) noexcept;
  // A handle that owns one reference on `t` (a handle task).
  template <class T>
  static Handle<T> adopt(Task* t) noexcept {
    return Handle<T>(t);
  }
};

}  // namespace ordo::detail
