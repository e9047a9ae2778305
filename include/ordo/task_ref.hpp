// ordo::TaskRef: a type-erased, shared reference to a submitted task, used to
// name dependencies (SubmitOptions::after) without giving up the handle.
//
// Thread-safety: a TaskRef is a value; copies may be used from any threads.
#pragma once

#include <utility>

#include "ordo/detail/access.hpp"
#include "ordo/detail/task.hpp"
#include "ordo/errors.hpp"

namespace ordo {

template <class T>
class Handle;

namespace detail {
void release_task(Task* t) noexcept;
}

class TaskRef {
 public:
  TaskRef() noexcept = default;
  // Shares the handle's task; the handle stays usable (get() still works).
  template <class T>
  TaskRef(const Handle<T>& h) : task_(detail::Access::node(h)) {  // NOLINT: implicit, so that `.after = {h1, h2}` reads naturally
    if (task_ == nullptr) throw Error("ordo: a dependency on an empty handle");
    task_->refs.fetch_add(1, std::memory_order_relaxed);  // the caller's handle keeps it alive meanwhile
  }
  TaskRef(const TaskRef& o) noexcept : task_(o.task_) {
    if (task_) task_->refs.fetch_add(1, std::memory_order_relaxed);
  }
  TaskRef(TaskRef&& o) noexcept : task_(std::exchange(o.task_, nullptr)) {}
  TaskRef& operator=(TaskRef o) noexcept {
    std::swap(task_, o.task_);
    return *this;
  }
  ~TaskRef() {
    if (task_) detail::release_task(task_);
  }

  // True when it names a task (a default-constructed or moved-from one does not).
  bool valid() const noexcept { return task_ != nullptr; }

 private:
  friend struct detail::Access;
  detail::Task* task_ = nullptr;
};

namespace detail {
inline Task* Access::node(const TaskRef& ref) noexcept { return ref.task_; }
// Gives up ownership of the reference (to a predecessor list).
inline Task* Access::release(TaskRef& ref) noexcept { return std::exchange(ref.task_, nullptr); }
}  // namespace detail

}  // namespace ordo
