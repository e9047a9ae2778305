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
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ordo::detail {

struct TraceEvent {
  std::int64_t begin_ns;  // steady clock
  std::int64_t end_ns;    // == begin_ns for an instant
  std::int64_t wait_ns;   // queued -> started, or -1 when the task was not timed
  std::uint32_t label;    // index into its buffer's labels; 0: none
  std::uint8_t level;
  bool instant;           // a moment (a task parked on its resources), not a span
};
static_assert(sizeof(TraceEvent) == 32, "a traced task costs 32 bytes of buffer");

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
  // `label` is copied once per distinct text per worker (events hold an index).
  // Never throws: an event that cannot be stored (buffer full, no memory)
  // is counted as dropped, so a traced task always reaches finish().
  void record(unsigned worker, std::int64_t begin_ns, std::int64_t end_ns, std::int64_t wait_ns,
              std::string_view label, unsigned level, bool instant) noexcept;
  // Returns the number of task spans written.
  std::size_t write_json(std::ostream& out, const std::string& process_name) const;
  std::uint64_t dropped() const;

 private:
  // Events live in fixed chunks that are never moved, and are kept (not
  // freed) by start(): a second trace reuses the memory the first touched.
  static constexpr std::size_t kChunkEvents = 1 << 15;  // 1 MiB
  struct alignas(64) Buffer {
    mutable std::mutex mu;
    std::vector<std::unique_ptr<TraceEvent[]>> chunks;
    std::size_t count = 0;  // events recorded since start()
    std::uint64_t dropped = 0;
    std::vector<std::string> labels{std::string()};  // [0]: none
    std::unordered_map<std::string, std::uint32_t> label_ids;
    const TraceEvent& at(std::size_t i) const { return chunks[i / kChunkEvents][i % kChunkEvents]; }
  };
  std::atomic<bool> enabled_{false};
  const unsigned workers_;
  std::unique_ptr<Buffer[]> buffers_;
  std::atomic<std::size_t> cap_{0};  // relaxed: read by record() under the buffer's mutex, set before enabling
};

}  // namespace ordo::detail
