// Exec thunks: the function every task node points to (Task::exec). One per
// kind of payload, instantiated per callable type: run the payload (or, when
// cancelling, destroy it unrun) and store what the task's kind needs —
// nothing (detached), the first error (group), the outcome (handle), or,
// for dependents, the outcome computed from their predecessors' (then,
// after, when_all, when_any). All of them live here, so the protocol
// they share (ExecMode, store_outcome, what a cancelled task reports) reads
// in one place.
//
// Thread-safety: a thunk runs on the one thread that claimed the task (or
// that dropped its last reference, for ExecMode::drop_outcome).
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "ordo/detail/dependency.hpp"
#include "ordo/detail/group_state.hpp"
#include "ordo/detail/task.hpp"
#include "ordo/errors.hpp"
#include "ordo/outcome.hpp"

namespace ordo::detail {

// ---- detached tasks (Scheduler::post) ----------------------------------

template <class F>
bool exec_detached_task(Task* t, ExecMode mode) noexcept {
  if (mode == ExecMode::run) {
    try {
      std::invoke(payload_as<F>(t));
    } catch (...) {
      // Nobody holds a handle: the error is dropped.
    }
  }
  destroy_payload<F>(t);
  return mode == ExecMode::run;
}

template <class F>
void discard_unqueued(Task* t) noexcept {
  destroy_payload<F>(t);
  free_task(t);
}

// ---- group children (TaskGroup::spawn) ---------------------------------

template <class F>
bool exec_group_task(Task* t, ExecMode mode) noexcept {
  if (mode == ExecMode::run) {
    try {
      std::invoke(payload_as<F>(t));
    } catch (...) {
      record_group_error(*t->group, std::current_exception());
    }
  } else {
    t->group->cancelled.store(true, std::memory_order_relaxed);  // read after group_wait's acquire
  }
  destroy_payload<F>(t);
  return mode == ExecMode::run;
}

// ---- handle tasks (Scheduler::submit) ----------------------------------

template <class F, class T, bool TakesOutcome, bool Void>
struct then_result;

// Stores a handle task's outcome in its payload, noting whether it failed.
template <class R>
void store_outcome(Task* t, Outcome<R>&& out) noexcept {
  t->failed = static_cast<bool>(out.error);
  emplace_payload<Outcome<R>>(t, std::move(out));
}

template <class F, class R>
bool exec_handle_task(Task* t, ExecMode mode) noexcept {
  if (mode == ExecMode::drop_outcome) {
    destroy_payload<Outcome<R>>(t);
    return true;
  }
  Outcome<R> out;
  if (mode == ExecMode::run) {
    try {
      if constexpr (std::is_void_v<R>) {
        std::invoke(payload_as<F>(t));
      } else {
        out.value.emplace(std::invoke(payload_as<F>(t)));
      }
    } catch (...) {
      out.error = std::current_exception();
    }
  } else {
    out.error = std::make_exception_ptr(TaskCancelled{});
  }
  destroy_payload<F>(t);
  store_outcome<R>(t, std::move(out));
  return mode == ExecMode::run;
}

// ---- dependents (then, submit with after, when_all, when_any) ----------

template <class T>
using stored_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

template <class F, class T>
inline constexpr bool kTakesOutcome = std::is_invocable_v<F&, Outcome<T>&&>;

template <class F, class T, bool Void>
struct then_result<F, T, true, Void> {
  using type = std::invoke_result_t<F&, Outcome<T>&&>;
};
template <class F, class T>
struct then_result<F, T, false, true> {
  using type = std::invoke_result_t<F&>;
};
template <class F, class T>
struct then_result<F, T, false, false> {
  using type = std::invoke_result_t<F&, T&&>;
};

template <class U, class F, class... A>
void invoke_into(Outcome<U>& out, F& f, A&&... args) {
  if constexpr (std::is_void_v<U>) {
    std::invoke(f, std::forward<A>(args)...);
  } else {
    out.value.emplace(std::invoke(f, std::forward<A>(args)...));
  }
}

// A predecessor's outcome, moved out (the predecessor's handle was consumed).
template <class T>
Outcome<T> take_outcome(Task* pred) {
  return std::move(payload_as<Outcome<T>>(pred));
}

template <class U>
bool finish_exec(Task* t, Outcome<U>&& out, bool ran) noexcept {
  store_outcome<U>(t, std::move(out));
  return ran;
}

// The two modes every join handles alike: dropping the stored outcome, and
// cancellation before it ran. Empty when `mode` is ExecMode::run.
template <class U>
std::optional<bool> join_common_modes(Task* t, ExecMode mode) noexcept {
  if (mode == ExecMode::drop_outcome) {
    destroy_payload<Outcome<U>>(t);
    return true;
  }
  if (mode == ExecMode::cancel) {
    Outcome<U> out;
    out.error = std::make_exception_ptr(TaskCancelled{});
    return finish_exec<U>(t, std::move(out), false);
  }
  return std::nullopt;
}

template <class F, class T, class U>
bool exec_then(Task* t, ExecMode mode) noexcept {
  if (mode == ExecMode::drop_outcome) {
    destroy_payload<Outcome<U>>(t);
    return true;
  }
  Outcome<U> out;
  bool ran = true;
  if (mode == ExecMode::cancel) {
    out.error = std::make_exception_ptr(TaskCancelled{});
    ran = false;
  } else {
    Outcome<T> in = take_outcome<T>(t->preds->items[0]);
    try {
      if constexpr (kTakesOutcome<F, T>) {
        invoke_into(out, payload_as<F>(t), std::move(in));
      } else if (in.error) {
        out.error = std::move(in.error);
        ran = false;
      } else if constexpr (std::is_void_v<T>) {
        invoke_into(out, payload_as<F>(t));
      } else {
        invoke_into(out, payload_as<F>(t), std::move(*in.value));
      }
    } catch (...) {
      out.error = std::current_exception();
    }
  }
  destroy_payload<F>(t);
  return finish_exec<U>(t, std::move(out), ran);
}

// Scheduler::submit with `after`: the predecessors' handles stay with their
// owners, so an error is copied, not moved.
template <class F, class R>
bool exec_after(Task* t, ExecMode mode) noexcept {
  if (mode == ExecMode::drop_outcome) {
    destroy_payload<Outcome<R>>(t);
    return true;
  }
  if (mode == ExecMode::run) {
    for (std::uint32_t i = 0; i < t->preds->count; ++i) {
      Task* p = t->preds->items[i];
      // acquire: pairs with finish()'s exchange; the predecessor's outcome (and `failed`) is complete.
      if ((p->state.load(std::memory_order_acquire) & kStateMask) == kDone && !p->failed) continue;
      destroy_payload<F>(t);  // a predecessor was cancelled or failed: so is this one
      Outcome<R> out;
      out.error = std::make_exception_ptr(TaskCancelled("ordo: task cancelled because a task it runs after did not succeed"));
      return finish_exec<R>(t, std::move(out), false);
    }
  }
  return exec_handle_task<F, R>(t, mode);
}

template <class... Ts, std::size_t... I>
std::tuple<stored_t<Ts>...> take_all(Task* t, std::index_sequence<I...>) {
  auto one = [](Task* p, auto tag) -> stored_t<typename decltype(tag)::type> {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_void_v<T>) {
      return std::monostate{};
    } else {
      return std::move(*payload_as<Outcome<T>>(p).value);
    }
  };
  return std::tuple<stored_t<Ts>...>{one(t->preds->items[I], std::type_identity<Ts>{})...};
}

template <class T>
std::exception_ptr error_of(Task* p) {
  return payload_as<Outcome<T>>(p).error;
}

template <class... Ts, std::size_t... I>
std::exception_ptr first_error(Task* t, std::index_sequence<I...>) {
  std::exception_ptr e;
  ((e ? void() : void(e = error_of<Ts>(t->preds->items[I]))), ...);
  return e;
}

template <class... Ts>
bool exec_when_all(Task* t, ExecMode mode) noexcept {
  using U = std::tuple<stored_t<Ts>...>;
  if (auto handled = join_common_modes<U>(t, mode)) return *handled;
  Outcome<U> out;
  if (std::exception_ptr e = first_error<Ts...>(t, std::index_sequence_for<Ts...>{})) {
    out.error = std::move(e);
    return finish_exec<U>(t, std::move(out), false);
  }
  try {
    out.value.emplace(take_all<Ts...>(t, std::index_sequence_for<Ts...>{}));
  } catch (...) {
    out.error = std::current_exception();
  }
  return finish_exec<U>(t, std::move(out), true);
}

template <class T>
bool exec_when_all_range(Task* t, ExecMode mode) noexcept {
  using U = std::conditional_t<std::is_void_v<T>, void, std::vector<stored_t<T>>>;
  if (auto handled = join_common_modes<U>(t, mode)) return *handled;
  Outcome<U> out;
  const std::uint32_t n = t->preds->count;
  for (std::uint32_t i = 0; i < n; ++i) {
    if (auto e = error_of<T>(t->preds->items[i])) {
      out.error = e;
      return finish_exec<U>(t, std::move(out), false);
    }
  }
  if constexpr (!std::is_void_v<T>) {
    try {
      std::vector<T> values;
      values.reserve(n);
      for (std::uint32_t i = 0; i < n; ++i) values.push_back(std::move(*payload_as<Outcome<T>>(t->preds->items[i]).value));
      out.value.emplace(std::move(values));
    } catch (...) {
      out.error = std::current_exception();
    }
  }
  return finish_exec<U>(t, std::move(out), true);
}

template <class T>
bool exec_when_any(Task* t, ExecMode mode) noexcept {
  using U = std::conditional_t<std::is_void_v<T>, std::size_t, std::pair<std::size_t, stored_t<T>>>;
  if (auto handled = join_common_modes<U>(t, mode)) return *handled;
  Outcome<U> out;
  std::size_t winner = 0;
  // acquire: pairs with each predecessor's finish() exchange, so the winner's outcome is readable.
  while ((t->preds->items[winner]->state.load(std::memory_order_acquire) & kStateMask) < kDone) ++winner;
  Outcome<T> in = take_outcome<T>(t->preds->items[winner]);
  if (in.error) {
    out.error = std::move(in.error);
    return finish_exec<U>(t, std::move(out), false);
  }
  try {
    if constexpr (std::is_void_v<T>) {
      out.value.emplace(winner);
    } else {
      out.value.emplace(winner, std::move(*in.value));
    }
  } catch (...) {
    out.error = std::current_exception();
  }
  return finish_exec<U>(t, std::move(out), true);
}

}  // namespace ordo::detail
