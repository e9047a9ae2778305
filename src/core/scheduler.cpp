// ordo::Scheduler: the public face of SchedulerCore, and the two entry points
// the header templates use to queue a task.
#include "ordo/scheduler.hpp"

#include <string>

#include "core/ager.hpp"
#include "core/scheduler_core.hpp"
#include "core/task_pool.hpp"

namespace ordo {

namespace detail {

namespace {

[[noreturn, gnu::cold, gnu::noinline]] void throw_level_beyond(const SchedulerCore& core, std::uint8_t level) {
  throw InvalidArgument("ordo: priority level " + std::to_string(level) + " is beyond this scheduler's " +
                        std::to_string(core.level_count()) + " levels (0.." + std::to_string(core.level_count() - 1) +
                        ")");
}

// Inlined into prepare_task (a call per spawn); resolve_level is its out-of-line copy.
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

}  // namespace

std::uint8_t resolve_level(SchedulerCore& core, std::optional<Priority> priority) { return level_for(core, priority); }

// A pooled node keeps whatever its last use left in it, so every field a
// kind reads is set here, also those that "should" already be zero (a
// dependent refused while it was being built leaves its setup hold in deps).
Task* prepare_task(SchedulerCore& core, std::optional<Priority> priority, TaskKind kind, ExecFn exec) {
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

bool submit_task(SchedulerCore& core, Task* t) { return core.submit(t); }

}  // namespace detail

Scheduler::Scheduler(SchedulerOptions options) : core_(std::make_unique<detail::SchedulerCore>(options)) {
  core_->start();
}

Scheduler::~Scheduler() {
  // A destructor running on one of our own workers cannot join that worker;
  // that is a programming error we cannot report by throwing.
  core_->stop(ShutdownMode::drain);
}

void Scheduler::shutdown(ShutdownMode mode) {
  if (is_worker_thread()) {
    throw Error("ordo: Scheduler::shutdown called from one of its own workers; it would wait for itself");
  }
  core_->stop(mode);
}

ResourceGroup Scheduler::resource_group(std::string name, std::uint64_t limit) {
  return ResourceGroup(&core_->resources().create(std::move(name), limit));
}

ResourceGroup Scheduler::rate_group(std::string name, std::uint64_t permits, std::chrono::nanoseconds interval,
                                   std::uint64_t burst) {
  return ResourceGroup(
      &core_->resources().create_rate(std::move(name), permits, interval.count(), burst != 0 ? burst : permits));
}

ResourceGroup Scheduler::find_resource_group(std::string_view name) const {
  return ResourceGroup(core_->resources().find(name));
}

void Scheduler::reserve(Priority level, unsigned workers) { core_->reserve(static_cast<unsigned>(level), workers); }

unsigned Scheduler::worker_count() const noexcept { return core_->worker_count(); }
unsigned Scheduler::level_count() const noexcept { return core_->level_count(); }
bool Scheduler::is_worker_thread() const noexcept { return detail::tls_context.core == core_.get(); }

int Scheduler::worker_index() const noexcept {
  return is_worker_thread() ? static_cast<int>(detail::tls_context.worker->index) : -1;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats st;
  core_->fill_stats(st);
  return st;
}

void Scheduler::start_tracing(std::size_t events_per_worker) { core_->tracer().start(events_per_worker); }
void Scheduler::stop_tracing() noexcept { core_->tracer().stop(); }
bool Scheduler::tracing() const noexcept { return core_->tracer().enabled(); }
std::size_t Scheduler::write_trace(std::ostream& out) const {
  return core_->tracer().write_json(out, core_->name().empty() ? std::string("ordo") : "ordo: " + core_->name());
}
std::uint64_t Scheduler::trace_events_dropped() const { return core_->tracer().dropped(); }

void trace_label(std::string_view label) {
  if (std::string* target = detail::tls_context.trace_label; target != nullptr) target->assign(label);
}

}  // namespace ordo
