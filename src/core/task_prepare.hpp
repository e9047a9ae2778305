// How a task node is prepared (prepare_task in ordo/detail/task.hpp has the
// contract), forced inline: a spawn per fork/join call comes through here, so
// TaskGroup's one-call spawn (group_spawn_bytes) prepares its node without a
// call; prepare_task and resolve_level are the out-of-line copies the header
// templates use.
#pragma once

#include <cstdint>
#include <optional>

#include "core/scheduler_core.hpp"
#include "core/task_pool.hpp"

namespace ordo::detail {

[[noreturn, gnu::cold, gnu::noinline]] void throw_level_beyond(const SchedulerCore& core, std::uint8_t level);

[[gnu::always_inline]] inline std::uint8_t level_for(SchedulerCore& core, std::optional<Priority> priority) {
  std::uint8_t level;
  if (priority) {
    level = static_cast<std::uint8_t>(*priority);
    if (level >= core.level_count()) throw_level_beyond(core, level);
  } else if (tls_context.core == &core && tls_context.current != nullptr) {
    level = tls_context.current->level.load(std::memory_order_relaxed);  // inherit the running task's priority
  } else {
    level = core.default_level();
  }
  return level;
}

// A pooled node keeps whatever its last use left in it, so every field a
// kind reads is set here, also those that "should" already be zero (a
// dependent refused while it was being built leaves its setup hold in deps).
[[gnu::always_inline]] inline Task* prepare_node(SchedulerCore& core, std::optional<Priority> priority, TaskKind kind,
                                                 ExecFn exec) {
  const std::uint8_t level = level_for(core, priority);
  Task* t = pool::allocate();
  // relaxed stores: published with the node by the queue handoff.
  t->exec = exec;
  t->kind = kind;
  t->level.store(level, std::memory_order_relaxed);
  t->core = &core;
  const bool aged = core.ages(level);
  if (kind == TaskKind::handle) {
    t->movable = true;  // set_priority may move it
    t->state.store(kQueued, std::memory_order_relaxed);
    t->refs.store(2, std::memory_order_relaxed);  // the handle's and the queue entry's
    t->waiter.store(nullptr, std::memory_order_relaxed);
    t->successors = nullptr;  // overwrites the free-list link
    t->preds = nullptr;
    t->deps.store(0, std::memory_order_relaxed);  // nothing pending: raise_priority moves it, never re-levels it
  } else {
    if (kind == TaskKind::detached) t->needs = nullptr;  // (a group task's `group` is set by its spawn)
    t->movable = aged;  // the ager may move it
    if (aged) {
      t->refs.store(1, std::memory_order_relaxed);  // the queue entry's
      t->state.store(kQueued, std::memory_order_relaxed);
    }
  }
  t->enqueued_ns = (aged || (++tls_context.sample_tick & 63) == 0) ? steady_now_ns() : 0;
  return t;
}

}  // namespace ordo::detail
