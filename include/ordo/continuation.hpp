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
#include "ordo/detail/exec.hpp"
#include "ordo/handle.hpp"
#include "ordo/options.hpp"

namespace ordo {

namespace detail {

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
  detail::Task* t = detail::make_dependent(*task_->core, options.priority, 1, &detail::exec_then<Fn, T, U>);
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
  detail::Task* t = detail::make_dependent(*first->core, std::nullopt, sizeof...(Ts), &detail::exec_when_all<Ts...>);
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
                                           static_cast<std::uint32_t>(handles.size()), &detail::exec_when_all_range<T>);
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
                                           static_cast<std::uint32_t>(handles.size()), &detail::exec_when_any<T>);
  for (std::size_t i = 0; i < handles.size(); ++i) t->preds->items[i] = detail::Access::release(handles[i]);
  detail::link_and_arm(t, detail::SuccMode::any);
  return detail::Access::adopt<U>(t);
}

}  // namespace ordo
