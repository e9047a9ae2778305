#include "observe/tracer.hpp"

#include <algorithm>
#include <cstdio>

#include "ordo/errors.hpp"

namespace ordo::detail {
namespace {

void write_escaped(std::ostream& out, const std::string& s) {
  out << '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out << "\\\""; break;
      case '\\': out << "\\\\"; break;
      case '\n': out << "\\n"; break;
      case '\t': out << "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out << buf;
        } else {
          out << static_cast<char>(c);
        }
    }
  }
  out << '"';
}

// A begin or end of one span, or an instant, in the order a viewer needs:
// by time; at the same time, ends of spans that began earlier first (the
// innermost, latest-begun, first), then begins, then a zero-length span's end.
struct Edge {
  std::int64_t at;
  int rank;  // 0: end of an earlier span, 1: begin or instant, 2: end of a zero-length span
  std::int64_t began;
  const TraceEvent* event;
  bool begin;
};

}  // namespace

Tracer::Tracer(unsigned workers) : workers_(workers), buffers_(std::make_unique<Buffer[]>(workers)) {}

void Tracer::start(std::size_t events_per_worker) {
#ifdef ORDO_NO_TRACER
  (void)events_per_worker;
  throw Error("ordo: this build has no tracer (configured with -DORDO_TRACER=OFF)");
#endif
  for (unsigned i = 0; i < workers_; ++i) {
    std::lock_guard lock(buffers_[i].mu);
    buffers_[i].count = 0;
    buffers_[i].dropped = 0;
    buffers_[i].labels.resize(1);
    buffers_[i].label_ids.clear();
  }
  cap_.store(events_per_worker, std::memory_order_relaxed);
  enabled_.store(true, std::memory_order_relaxed);
}

void Tracer::stop() noexcept { enabled_.store(false, std::memory_order_relaxed); }

void Tracer::record(unsigned worker, std::int64_t begin_ns, std::int64_t end_ns, std::int64_t wait_ns,
                    std::string_view label, unsigned level, bool instant) noexcept {
  Buffer& b = buffers_[worker];
  std::lock_guard lock(b.mu);
  if (b.count >= cap_.load(std::memory_order_relaxed)) {
    ++b.dropped;
    return;
  }
  try {
    std::uint32_t id = 0;
    if (!label.empty()) {
      auto it = b.label_ids.find(std::string(label));
      if (it == b.label_ids.end()) {
        b.labels.emplace_back(label);  // first, so that a failed insert below leaves no dangling id
        it = b.label_ids.emplace(b.labels.back(), static_cast<std::uint32_t>(b.labels.size() - 1)).first;
      }
      id = it->second;
    }
    if (b.count / kChunkEvents == b.chunks.size()) b.chunks.push_back(std::make_unique<TraceEvent[]>(kChunkEvents));
    b.chunks[b.count / kChunkEvents][b.count % kChunkEvents] =
        TraceEvent{begin_ns, end_ns, wait_ns, id, static_cast<std::uint8_t>(level), instant};
    ++b.count;
  } catch (...) {  // out of memory: lose the event, not the task
    ++b.dropped;
  }
}

std::uint64_t Tracer::dropped() const {
  std::uint64_t n = 0;
  for (unsigned i = 0; i < workers_; ++i) {
    std::lock_guard lock(buffers_[i].mu);
    n += buffers_[i].dropped;
  }
  return n;
}

std::size_t Tracer::write_json(std::ostream& out, const std::string& process_name) const {
  std::size_t spans = 0;
  std::int64_t epoch = INT64_MAX;  // timestamps start near 0: the earliest event
  std::vector<std::vector<TraceEvent>> copies(workers_);
  std::vector<std::vector<std::string>> labels(workers_);
  for (unsigned i = 0; i < workers_; ++i) {
    std::lock_guard lock(buffers_[i].mu);
    copies[i].reserve(buffers_[i].count);
    for (std::size_t k = 0; k < buffers_[i].count; ++k) copies[i].push_back(buffers_[i].at(k));
    labels[i] = buffers_[i].labels;
    for (const TraceEvent& e : copies[i]) epoch = std::min(epoch, e.begin_ns);
  }
  if (epoch == INT64_MAX) epoch = 0;
  auto us = [&](std::int64_t ns) { return static_cast<double>(ns - epoch) / 1000.0; };
  out << "{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n";
  out << "{\"ph\":\"M\",\"pid\":1,\"tid\":0,\"name\":\"process_name\",\"args\":{\"name\":";
  write_escaped(out, process_name);
  out << "}}";
  char num[64];
  for (unsigned i = 0; i < workers_; ++i) {
    out << ",\n{\"ph\":\"M\",\"pid\":1,\"tid\":" << i << ",\"name\":\"thread_name\",\"args\":{\"name\":\"worker " << i
        << "\"}}";
    std::vector<Edge> edges;
    edges.reserve(copies[i].size() * 2);
    for (const TraceEvent& e : copies[i]) {
      if (e.instant) {
        edges.push_back({e.begin_ns, 1, e.begin_ns, &e, true});
        continue;
      }
      edges.push_back({e.begin_ns, 1, e.begin_ns, &e, true});
      edges.push_back({e.end_ns, e.end_ns == e.begin_ns ? 2 : 0, e.begin_ns, &e, false});
    }
    std::stable_sort(edges.begin(), edges.end(), [](const Edge& a, const Edge& b) {
      if (a.at != b.at) return a.at < b.at;
      if (a.rank != b.rank) return a.rank < b.rank;
      return a.rank == 0 ? a.began > b.began : false;
    });
    for (const Edge& edge : edges) {
      const TraceEvent& e = *edge.event;
      std::snprintf(num, sizeof num, "%.3f", us(edge.at));
      out << ",\n{\"pid\":1,\"tid\":" << i << ",\"ts\":" << num << ",\"ph\":\"";
      if (e.instant) {
        out << "i\",\"s\":\"t\",\"name\":";
        write_escaped(out, e.label == 0 ? std::string("parked") : labels[i][e.label]);
        out << ",\"args\":{\"level\":" << static_cast<unsigned>(e.level) << "}}";
        continue;
      }
      if (!edge.begin) {
        out << "E\"}";
        continue;
      }
      ++spans;
      out << "B\",\"name\":";
      write_escaped(out, e.label == 0 ? "task (level " + std::to_string(e.level) + ")" : labels[i][e.label]);
      out << ",\"cat\":\"level " << static_cast<unsigned>(e.level) << "\",\"args\":{\"level\":"
          << static_cast<unsigned>(e.level);
      if (e.wait_ns >= 0) {
        std::snprintf(num, sizeof num, "%.3f", static_cast<double>(e.wait_ns) / 1000.0);
        out << ",\"wait_us\":" << num;
      }
      out << "}}";
    }
  }
  out << "\n]}\n";
  return spans;
}

}  // namespace ordo::detail
