// The payloads of the durable-task records, one encoder and one decoder per
// record type (docs/journal-format.md, "Durable-task payloads"): the
// runtime, compaction and ordo-wal all read and write them through here, so
// the on-disk format is spelled out once. Little-endian integers and
// length-prefixed strings after the task id. Decoding checks every length
// against what is left and throws JournalCorruption naming the record; bytes
// after the known fields are ignored (room for optional fields, see the
// versioning rules).
//
// A decoded record's string_views point into the record's payload: they are
// valid as long as the RecordView they came from (a replay callback). The
// encoders take views too, so that writing a record copies each byte once.
//
// Thread-safety: pure functions and value types.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ordo/errors.hpp"
#include "ordo/journal.hpp"

namespace ordo::detail::records {

inline constexpr std::size_t kMaxStr16 = 0xffff;
inline constexpr std::size_t kMaxNeeds = 0xff;  // the ENQUEUE's needs count is a u8

// Throws InvalidArgument naming `field` when `value` does not fit a str16.
inline void check_str16(std::string_view value, const std::string& field) {
  if (value.size() > kMaxStr16) {
    throw InvalidArgument("ordo: " + field + " is " + std::to_string(value.size()) +
                          " bytes; the journal stores at most 65535");
  }
}

class PayloadWriter {
 public:
  void reserve(std::size_t bytes) { out_.reserve(bytes); }
  void u8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u16(std::uint16_t v) { raw(v, 2); }
  void u32(std::uint32_t v) { raw(v, 4); }
  void u64(std::uint64_t v) { raw(v, 8); }
  void i64(std::int64_t v) { u64(static_cast<std::uint64_t>(v)); }
  // At most 65535 bytes: a longer string is cut, and the length written is
  // the length kept (a length that disagreed with the bytes would corrupt
  // every field after it). Names and keys are refused before they get here
  // (check_str16); only free text such as an error message is ever cut.
  void str16(std::string_view s) {
    s = s.substr(0, kMaxStr16);
    u16(static_cast<std::uint16_t>(s.size()));
    out_.append(s);
  }
  void tail(std::string_view s) { out_.append(s); }  // the rest of the payload
  std::span<const std::byte> view() const { return {reinterpret_cast<const std::byte*>(out_.data()), out_.size()}; }

 private:
  void raw(std::uint64_t v, std::size_t n) {
    char b[8];
    for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<char>(v >> (8 * i));
    out_.append(b, n);
  }
  std::string out_;
};

class PayloadReader {
 public:
  // Reads the fields after the task id of `r`.
  explicit PayloadReader(const RecordView& r)
      : p_(reinterpret_cast<const char*>(r.payload.data()) + 8), left_(r.payload.size() - 8), type_(r.type), task_(r.task) {}
  std::uint8_t u8() { return static_cast<std::uint8_t>(num(1)); }
  std::uint16_t u16() { return static_cast<std::uint16_t>(num(2)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(num(4)); }
  std::uint64_t u64() { return num(8); }
  std::int64_t i64() { return static_cast<std::int64_t>(num(8)); }
  std::string_view str16() { return take(u16()); }
  std::string_view rest() { return take(left_); }

 private:
  std::uint64_t num(std::size_t n) {
    const auto* b = reinterpret_cast<const unsigned char*>(take(n).data());
    std::uint64_t v = 0;
    for (std::size_t i = n; i-- > 0;) v = (v << 8) | b[i];
    return v;
  }
  std::string_view take(std::size_t n) {
    if (n > left_) {
      throw JournalCorruption(std::string("ordo: journal ") + to_string(type_) + " record of task " +
                              std::to_string(task_) + " is shorter than its fields");
    }
    std::string_view out(p_, n);
    p_ += n;
    left_ -= n;
    return out;
  }
  const char* p_;
  std::size_t left_;
  RecordType type_;
  std::uint64_t task_;
};

// ENQUEUE: a task was accepted (a workflow node names its workflow).
struct Enqueue {
  struct Need {
    std::string_view group;  // resolved by name again at each start
    std::uint64_t amount = 0;
  };
  std::string_view type;
  std::uint8_t level = 0;
  std::uint32_t max_attempts = 0;  // 0: the type's
  std::int64_t run_at_ns = 0;      // 0: now
  std::string_view key;
  std::vector<Need> needs;  // at most kMaxNeeds
  std::uint64_t workflow = 0;  // 0: not a workflow node
  std::uint32_t node = 0;
  std::string_view args;
};

inline PayloadWriter encode(const Enqueue& e) {
  PayloadWriter w;
  w.reserve(2 + e.type.size() + 1 + 4 + 8 + 2 + e.key.size() + 1 + e.needs.size() * 16 + 8 + 4 + e.args.size());
  w.str16(e.type);
  w.u8(e.level);
  w.u32(e.max_attempts);
  w.i64(e.run_at_ns);
  w.str16(e.key);
  w.u8(static_cast<std::uint8_t>(e.needs.size()));
  for (const auto& need : e.needs) {
    w.str16(need.group);
    w.u64(need.amount);
  }
  w.u64(e.workflow);
  w.u32(e.node);
  w.tail(e.args);
  return w;
}

inline Enqueue decode_enqueue(const RecordView& r) {
  PayloadReader in(r);
  Enqueue e;
  e.type = in.str16();
  e.level = in.u8();
  e.max_attempts = in.u32();
  e.run_at_ns = in.i64();
  e.key = in.str16();
  const unsigned needs = in.u8();
  for (unsigned i = 0; i < needs; ++i) {
    const std::string_view group = in.str16();
    e.needs.push_back({group, in.u64()});
  }
  e.workflow = in.u64();
  e.node = in.u32();
  e.args = in.rest();
  return e;
}

// START: an attempt began.
struct Start {
  std::uint32_t attempt = 0;  // 1-based
};
inline PayloadWriter encode(const Start& s) {
  PayloadWriter w;
  w.u32(s.attempt);
  return w;
}
inline Start decode_start(const RecordView& r) {
  PayloadReader in(r);
  return {in.u32()};
}

// CHECKPOINT of a task: its progress bytes, the whole payload after the id.
// Written straight from the handler's bytes (Journal::append takes them as
// they are), read back with this.
inline std::string_view decode_task_checkpoint(const RecordView& r) { return PayloadReader(r).rest(); }

// CHECKPOINT of a workflow: the nodes discarded so far (all of them, so that
// compaction may keep only the latest).
struct WorkflowCheckpoint {
  std::vector<std::uint32_t> discarded;
};
inline PayloadWriter encode(const WorkflowCheckpoint& c) {
  PayloadWriter w;
  w.u32(static_cast<std::uint32_t>(c.discarded.size()));
  for (std::uint32_t node : c.discarded) w.u32(node);
  return w;
}
inline WorkflowCheckpoint decode_workflow_checkpoint(const RecordView& r) {
  PayloadReader in(r);
  WorkflowCheckpoint c;
  const std::uint32_t n = in.u32();
  for (std::uint32_t i = 0; i < n; ++i) c.discarded.push_back(in.u32());
  return c;
}

// COMPLETE of a task or a workflow; a tombstone while retain_until_ns lies ahead.
struct Complete {
  std::int64_t retain_until_ns = 0;  // 0: no key retained
  std::string_view key;
};
inline PayloadWriter encode(const Complete& c) {
  PayloadWriter w;
  w.i64(c.retain_until_ns);
  w.str16(c.key);
  return w;
}
inline Complete decode_complete(const RecordView& r) {
  PayloadReader in(r);
  Complete c;
  c.retain_until_ns = in.i64();
  c.key = in.str16();
  return c;
}

// Compaction's question of a COMPLETE: is it a tombstone, retaining a key
// beyond `now_ns`? The journal is storage and does not require the durable
// payloads: a COMPLETE too short for the field retains nothing.
inline bool retains_key_beyond(const RecordView& r, std::int64_t now_ns) {
  if (r.payload.size() < 8 + 8) return false;
  return PayloadReader(r).i64() > now_ns;
}

// FAIL: an attempt failed; the next one is due at retry_at_ns.
struct Fail {
  std::uint32_t attempt = 0;
  std::int64_t retry_at_ns = 0;
  std::string_view error;  // cut to 65535 bytes
};
inline PayloadWriter encode(const Fail& f) {
  PayloadWriter w;
  w.u32(f.attempt);
  w.i64(f.retry_at_ns);
  w.str16(f.error);
  return w;
}
inline Fail decode_fail(const RecordView& r) {
  PayloadReader in(r);
  Fail f;
  f.attempt = in.u32();
  f.retry_at_ns = in.i64();
  f.error = in.str16();
  return f;
}

// DEAD: attempts ran out (or recovery buried it, with its reason).
struct Dead {
  std::uint32_t attempts = 0;
  std::string_view reason;  // cut to 65535 bytes
};
inline PayloadWriter encode(const Dead& d) {
  PayloadWriter w;
  w.u32(d.attempts);
  w.str16(d.reason);
  return w;
}
inline Dead decode_dead(const RecordView& r) {
  PayloadReader in(r);
  Dead d;
  d.attempts = in.u32();
  d.reason = in.str16();
  return d;
}

// CANCEL and RETRY carry nothing after the task id.

// WORKFLOW: a durable workflow's declaration; commits its nodes' ENQUEUEs.
struct Workflow {
  struct Node {
    std::string_view name;
    std::string_view type;
  };
  struct Edge {
    std::uint32_t from = 0;
    std::uint32_t to = 0;
  };
  std::string_view name;
  std::string_view key;
  std::vector<Node> nodes;
  std::vector<Edge> edges;
};
inline PayloadWriter encode(const Workflow& f) {
  PayloadWriter w;
  w.str16(f.name);
  w.str16(f.key);
  w.u32(static_cast<std::uint32_t>(f.nodes.size()));
  for (const auto& node : f.nodes) {
    w.str16(node.name);
    w.str16(node.type);
  }
  w.u32(static_cast<std::uint32_t>(f.edges.size()));
  for (const auto& edge : f.edges) {
    w.u32(edge.from);
    w.u32(edge.to);
  }
  return w;
}
// Also checks that every edge joins two of its nodes.
inline Workflow decode_workflow(const RecordView& r) {
  PayloadReader in(r);
  Workflow f;
  f.name = in.str16();
  f.key = in.str16();
  const std::uint32_t n = in.u32();
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::string_view name = in.str16();
    f.nodes.push_back({name, in.str16()});
  }
  const std::uint32_t m = in.u32();
  for (std::uint32_t e = 0; e < m; ++e) {
    const std::uint32_t from = in.u32();
    const std::uint32_t to = in.u32();
    if (from >= n || to >= n) {
      throw JournalCorruption("ordo: journal WORKFLOW " + std::to_string(r.task) + " has an edge to no node");
    }
    f.edges.push_back({from, to});
  }
  return f;
}

}  // namespace ordo::detail::records
