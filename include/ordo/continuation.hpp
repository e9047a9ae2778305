// Continuations and joins on handles: then, when_all, when_any, and the
// dependent form of Scheduler::submit (SubmitOptions::after).
//
// Rules (docs/workflows.md has the whole picture):
//  - a dependent task starts after its predecessors finished; it receives
//    their results by move;
//  - if a predecessor failed or was cancelled, the dependent does not run: it
//    is cancelled with that error, and its own dependents after it — unless
//    its function takes an ordo::Outcome<T>, which it then gets either way;
//  - a dependent of higher priority raises its pending predecessors (and
//    theirs) to its priority;
//  - then/when_all/when_any consume the handles they are given.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "ordo/detail/dependency.hpp"
#include "ordo/handle.hpp"
#include "ordo/options.hpp"

namespace ordo {

namespace detail {

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

// Joins check every handle before consuming any: a refused join takes nothing.
template <class T>
void require_valid(const Handle<T>& h, const char* join) {
  if (!h.valid()) throw InvalidArgument(std::string("ordo: ") + join + " was given an empty handle");
}

}  // namespace detail

template <class T>
template <class F>
auto Handle<T>::then(F&& fn, ThenOptions options) && -> Handle<detail::then_result_t<std::decay_t<F>, T>> {
  using Fn = std::decay_t<F>;
  using U = detail::then_result_t<Fn, T>;
  if (!task_) detail::throw_empty_handle("then()");
  detail::Task* t = detail::make_dependent(*task_->core, options.priority, 1);
  t->exec = &detail::exec_then<Fn, T, U>;
  try {
    detail::attach_needs(t, options.needs);
    detail::emplace_payload<Fn>(t, std::forward<F>(fn));
  } catch (...) {
    detail::discard_dependent(t);
    throw;
  }
  t->preds->items[0] = std::exchange(task_, nullptr);  // our reference now belongs to the list
  detail::link_and_arm(t, detail::SuccMode::all);
  return detail::Access::adopt<U>(t);
}

// Any thread. A handle to the tuple of all results (void results become
// std::monostate). Fails with the first error, in argument order.
template <class... Ts>
auto when_all(Handle<Ts>&&... handles) -> Handle<std::tuple<detail::stored_t<Ts>...>> {
  static_assert(sizeof...(Ts) > 0, "when_all needs at least one handle");
  (detail::require_valid(handles, "when_all()"), ...);
  detail::Task* first = (detail::Access::node(handles), ...);
  detail::Task* t = detail::make_dependent(*first->core, std::nullopt, sizeof...(Ts));
  t->exec = &detail::exec_when_all<Ts...>;
  std::uint32_t i = 0;
  ((t->preds->items[i++] = detail::Access::release(handles)), ...);
  detail::link_and_arm(t, detail::SuccMode::all);
  return detail::Access::adopt<std::tuple<detail::stored_t<Ts>...>>(t);
}

// Any thread. A handle to all results in order (Handle<void> for void tasks).
template <class T>
auto when_all(std::vector<Handle<T>> handles)
    -> Handle<std::conditional_t<std::is_void_v<T>, void, std::vector<detail::stored_t<T>>>> {
  using U = std::conditional_t<std::is_void_v<T>, void, std::vector<detail::stored_t<T>>>;
  if (handles.empty()) throw InvalidArgument("ordo: when_all() of no handles");
  for (const auto& h : handles) detail::require_valid(h, "when_all()");
  detail::Task* t = detail::make_dependent(*detail::Access::node(handles.front())->core, std::nullopt,
                                           static_cast<std::uint32_t>(handles.size()));
  t->exec = &detail::exec_when_all_range<T>;
  for (std::size_t i = 0; i < handles.size(); ++i) t->preds->items[i] = detail::Access::release(handles[i]);
  detail::link_and_arm(t, detail::SuccMode::all);
  return detail::Access::adopt<U>(t);
}

// Any thread. Completes when one of the tasks finished, with its index (and
// value), or its error. The others keep running.
template <class T>
auto when_any(std::vector<Handle<T>> handles)
    -> Handle<std::conditional_t<std::is_void_v<T>, std::size_t, std::pair<std::size_t, detail::stored_t<T>>>> {
  using U = std::conditional_t<std::is_void_v<T>, std::size_t, std::pair<std::size_t, detail::stored_t<T>>>;
  if (handles.empty()) throw InvalidArgument("ordo: when_any() of no handles would never complete");
  for (const auto& h : handles) detail::require_valid(h, "when_any()");
  detail::Task* t = detail::make_dependent(*detail::Access::node(handles.front())->core, std::nullopt,
                                           static_cast<std::uint32_t>(handles.size()));
  t->exec = &detail::exec_when_any<T>;
  for (std::size_t i = 0; i < handles.size(); ++i) t->preds->items[i] = detail::Access::release(handles[i]);
  detail::link_and_arm(t, detail::SuccMode::any);
  return detail::Access::adopt<U>(t);
}

}  // namespace ordo
