// ordo::Scheduler: the public face of SchedulerCore, and the two entry points
// the header templates use to queue a task.
#include "ordo/scheduler.hpp"

#include <string>

#include "core/ager.hpp"
#include "core/scheduler_core.hpp"
#include "core/task_prepare.hpp"

namespace ordo {

namespace detail {

void throw_level_beyond(const SchedulerCore& core, std::uint8_t level) {
  throw InvalidArgument("ordo: priority level " + std::to_string(level) + " is beyond this scheduler's " +
                        std::to_string(core.level_count()) + " levels (0.." + std::to_string(core.level_count() - 1) +
                        ")");
}

std::uint8_t resolve_level(SchedulerCore& core, std::optional<Priority> priority) { return level_for(core, priority); }

Task* prepare_task(SchedulerCore& core, std::optional<Priority> priority, TaskKind kind, ExecFn exec) {
  return prepare_node(core, priority, kind, exec);
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
