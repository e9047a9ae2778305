// Observability: Prometheus text for a stats snapshot, and naming the
// running task in a trace. The snapshot itself is Scheduler::stats()
// (ordo/stats.hpp); tracing is started and written through the Scheduler.
#pragma once

#include <string>
#include <string_view>

#include "ordo/stats.hpp"

namespace ordo {

// Any thread. The Prometheus text exposition format (0.0.4) of `stats`:
// every metric named ordo_*, with HELP and TYPE lines, labelled by level,
// worker, resource group or journal directory. `scheduler` becomes a
// scheduler="..." label on every sample when not empty (several schedulers
// in one process). Serve it as text/plain; version=0.0.4.
std::string to_prometheus(const SchedulerStats& stats, std::string_view scheduler = {});

// From inside a task: names it in the trace being recorded (else "task").
// A no-op when tracing is off or outside a task. Workflow nodes are named
// after the node and durable jobs after their type without being asked.
void trace_label(std::string_view label);

}  // namespace ordo
