// Tracer: task begin/end per worker, kept in per-worker buffers while
// tracing is on, written out as Chrome trace-event JSON (Perfetto and
// chrome://tracing open it).
//
// Thread-safety: enabled() is a relaxed load, read by every worker once
// per task (the only cost while tracing is off). start(), stop() and
// write_json() may be called from any thread; record_*() only by the worker
// that owns the buffer. Each buffer has its own mutex, taken once per
// recorded event (tracing on) and by write_json(), so a trace can be
// written while tasks still run. Invariant: a buffer holds at most cap_
// events; what does not fit is counted in `dropped`, never reallocated.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <vector>

namespace ordo::detail {

struct TraceEvent {
  std::int64_t begin_ns;  // steady clock
  std::int64_t end_ns;    // == begin_ns for an instant
  std::int64_t wait_ns;   // queued -> started, or -1 when the task was not timed
  std::string label;      // trace_label() of the task, or empty
  std::uint8_t level;
  bool instant;           // a moment (a task parked on its resources), not a span
};

class Tracer {
 public:
  explicit Tracer(unsigned workers);

  // relaxed: a switch, not a fence; an event recorded just after stop() is
  // harmless (its buffer's mutex orders it with write_json()).
#ifdef ORDO_NO_TRACER  // -DORDO_TRACER=OFF: the baseline the tracer's cost is measured against
  static constexpr bool enabled() noexcept { return false; }
#else
  bool enabled() const noexcept { return enabled_.load(std::memory_order_relaxed); }
#endif
  void start(std::size_t events_per_worker);  // clears what an earlier trace left; throws Error when compiled out
  void stop() noexcept;
  void record(unsigned worker, TraceEvent event);
  // Returns the number of task spans written.
  std::size_t write_json(std::ostream& out, const std::string& process_name) const;
  std::uint64_t dropped() const;

 private:
  struct alignas(64) Buffer {
    mutable std::mutex mu;
    std::vector<TraceEvent> events;
    std::uint64_t dropped = 0;
  };
  std::atomic<bool> enabled_{false};
  const unsigned workers_;
  std::unique_ptr<Buffer[]> buffers_;
  std::atomic<std::size_t> cap_{0};  // relaxed: read by record() under the buffer's mutex, set before enabling
};

}  // namespace ordo::detail
