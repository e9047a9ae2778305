// Handle<T>: the submitter's view of one task — wait for it, read its value or
// its exception.
//
// Thread-safety: a Handle is a move-only value owned by one thread at a time;
// the task it refers to runs concurrently. A Handle may outlive its scheduler:
// the node it refers to stays valid until the Handle is destroyed.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>

#include "ordo/detail/access.hpp"
#include "ordo/detail/deadline.hpp"
#include "ordo/detail/exec.hpp"
#include "ordo/detail/task.hpp"
#include "ordo/errors.hpp"
#include "ordo/options.hpp"
#include "ordo/outcome.hpp"
#include "ordo/priority.hpp"

namespace ordo {

enum class TaskStatus { queued, running, succeeded, failed, cancelled };

namespace detail {

// Waits until the task has finished (done or cancelled). On a worker thread the
// wait helps: it runs other tasks instead of blocking. Acquire-synchronises with
// the completion, so the outcome may be read afterwards.
void wait_for_task(Task* t);
// As wait_for_task, giving up at `deadline_ns` (steady clock; kNoDeadlineNs:
// never). True when the task has finished.
bool wait_for_task_until(Task* t, std::int64_t deadline_ns);
// Drops one reference; the last one destroys the outcome and frees the node.
void release_task(Task* t) noexcept;
// Throws InvalidArgument naming `call` (a Handle member) on an empty handle.
[[noreturn]] void throw_empty_handle(const char* call);
// Moves a queued task to another level (see Handle::set_priority).
bool reprioritise(Task* t, unsigned level);
// See Handle::cancel().
bool cancel_task(Task* t);

// False, but only once instantiated: lets a static_assert name the misuse.
template <class>
inline constexpr bool kAlwaysFalse = false;
template <class F, class T>
using then_result_t = typename then_result<F, T, std::is_invocable_v<F&, Outcome<T>&&>, std::is_void_v<T>>::type;

}  // namespace detail

template <class T>
class Handle {
  static_assert(!std::is_reference_v<T>, "a task returns a value, not a reference");

 public:
  Handle() noexcept = default;
  Handle(Handle&& other) noexcept : task_(std::exchange(other.task_, nullptr)) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      task_ = std::exchange(other.task_, nullptr);
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  // Never blocks: dropping a handle detaches from the task, which still runs.
  ~Handle() { reset(); }

  // True until get() consumed the result or the handle was moved from.
  bool valid() const noexcept { return task_ != nullptr; }

  // Any thread. Never blocks. Throws InvalidArgument on an empty handle, as
  // every other member but valid() does.
  bool ready() const {
    if (!task_) detail::throw_empty_handle("ready()");
    return (task_->state.load(std::memory_order_acquire) & detail::kStateMask) >= detail::kDone;
  }

  // Any thread. Never blocks.
  TaskStatus status() const {
    if (!task_) detail::throw_empty_handle("status()");
    // acquire pairs with the completion's exchange in the scheduler, so the
    // outcome is visible once a final state is read.
    auto s = task_->state.load(std::memory_order_acquire) & detail::kStateMask;
    switch (s) {
      case detail::kQueued: return TaskStatus::queued;
      case detail::kRunning: return TaskStatus::running;
      case detail::kCancelled: return TaskStatus::cancelled;
      default: return outcome().error ? TaskStatus::failed : TaskStatus::succeeded;
    }
  }

  // Any thread. Moves the task to another priority level if it is still
  // queued, in O(1): it is queued again at `p` and its old queue entry is
  // skipped when reached. A task parked on resource groups (see
  // docs/resources.md) keeps its place by age among the waiters of its new
  // priority, and runs at it. A dependent still waiting for its predecessors
  // is re-levelled in place (raising them too when it goes up) and queued at
  // `p` once they are done. Returns false, changing nothing, when the task
  // has already started or finished ("too late"; a finished task's scheduler
  // is never touched, as it may be gone). Throws InvalidArgument for a level
  // beyond the scheduler's levels on a task not yet finished.
  bool set_priority(Priority p) { return detail::reprioritise(task_, static_cast<unsigned>(p)); }

  // Blocks until the task finished. On a worker of any ordo scheduler the wait
  // helps run other tasks rather than blocking the worker.
  void wait() const { detail::wait_for_task(task_); }

  // Like wait(), for at most `timeout` / until `deadline` (any clock; one
  // other than steady_clock is read once, as "that much from now"). True when
  // the task has finished — get() then returns at once — false when the time
  // ran out first; the handle stays usable either way. Helps on a worker like
  // wait(), so a task it runs meanwhile may carry it past the deadline.
  template <class Rep, class Period>
  bool wait_for(const std::chrono::duration<Rep, Period>& timeout) const {
    return detail::wait_for_task_until(task_, detail::deadline_after(timeout));
  }
  template <class Clock, class Duration>
  bool wait_until(const std::chrono::time_point<Clock, Duration>& deadline) const {
    return detail::wait_for_task_until(task_, detail::steady_deadline(deadline));
  }

  // Waits, then returns the value or rethrows the task's exception
  // (TaskCancelled if it never ran). Consumes the handle: valid() is false after.
  T get() {
    if (!task_) detail::throw_empty_handle("get()");
    wait();
    detail::Task* t = std::exchange(task_, nullptr);
    struct Release {
      detail::Task* t;
      ~Release() { detail::release_task(t); }
    } release{t};
    auto& out = detail::payload_as<Outcome<T>>(t);
    // Moved out, not copied: the node keeps no reference to the exception, so
    // it is freed by this thread, the one that used it, whoever drops the node.
    if (out.error) std::rethrow_exception(std::exchange(out.error, nullptr));
    if constexpr (!std::is_void_v<T>) return std::move(*out.value);
  }

  // Any thread. Cancels the task if it has not started — queued, waiting
  // for predecessors, or parked on resource groups (it leaves their wait
  // lists): its get() throws TaskCancelled, and so does every continuation
  // and join waiting for it (unless it takes an Outcome). Returns false when
  // it already started or finished ("too late"); then nothing changes.
  bool cancel() { return detail::cancel_task(task_); }

  // Any thread. Runs fn with this task's result once it is done, as a new task
  // on the same scheduler; consumes this handle. fn takes T (or nothing, for
  // void), or an ordo::Outcome<T> to run even after a failure. Declared here,
  // defined in ordo/continuation.hpp.
  template <class F>
  auto then(F&& fn, ThenOptions options = {}) && -> Handle<detail::then_result_t<std::decay_t<F>, T>>;
  // then() on an lvalue (or const) handle does not compile, saying why: it
  // would consume a handle its owner may still use.
  template <class F>
  void then(F&&, ThenOptions = {}) const& {
    static_assert(detail::kAlwaysFalse<F>,
                  "ordo: Handle::then() consumes the handle; call it on an rvalue: std::move(h).then(...)");
  }

 private:
  friend struct detail::Access;
  explicit Handle(detail::Task* t) noexcept : task_(t) {}
  Outcome<T>& outcome() const noexcept { return detail::payload_as<Outcome<T>>(task_); }
  void reset() noexcept {
    if (task_) detail::release_task(std::exchange(task_, nullptr));
  }

  detail::Task* task_ = nullptr;
};

}  // namespace ordo

#include "ordo/continuation.hpp"  // defines Handle::then, when_all, when_any
