// Payloads of the durable-task records (docs/journal-format.md, "Durable-task
// payloads"): little-endian integers and length-prefixed strings after the
// task id. Decoding checks every length against what is left and throws
// JournalCorruption naming the record; bytes after the known fields are
// ignored (room for optional fields, see the versioning rules).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "journal/format.hpp"
#include "ordo/journal.hpp"

namespace ordo::detail {

inline constexpr std::size_t kMaxStr16 = 0xffff;

// Throws InvalidArgument naming `field` when `value` does not fit a str16.
inline void check_str16(std::string_view value, const std::string& field) {
  if (value.size() > kMaxStr16) {
    throw InvalidArgument("ordo: " + field + " is " + std::to_string(value.size()) +
                          " bytes; the journal stores at most 65535");
  }
}

class PayloadWriter {
 public:
  void u8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u16(std::uint16_t v) { raw(&v, 2); }
  void u32(std::uint32_t v) { raw(&v, 4); }
  void u64(std::uint64_t v) { raw(&v, 8); }
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
  void bytes32(std::string_view s) {
    u32(static_cast<std::uint32_t>(s.size()));
    out_.append(s);
  }
  void tail(std::string_view s) { out_.append(s); }  // the rest of the payload
  std::span<const std::byte> view() const { return {reinterpret_cast<const std::byte*>(out_.data()), out_.size()}; }

 private:
  void raw(const void* p, std::size_t n) {
    unsigned char b[8];
    std::uint64_t v = 0;
    std::memcpy(&v, p, n);
    for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
    out_.append(reinterpret_cast<const char*>(b), n);
  }
  std::string out_;
};

class PayloadReader {
 public:
  // Reads the fields after the task id of `r`.
  explicit PayloadReader(const RecordView& r)
      : p_(reinterpret_cast<const unsigned char*>(r.payload.data()) + 8),
        left_(r.payload.size() - 8),
        type_(r.type),
        task_(r.task) {}
  std::uint8_t u8() { return need(1), static_cast<std::uint8_t>(take(1)[0]); }
  std::uint16_t u16() { return static_cast<std::uint16_t>(num(2)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(num(4)); }
  std::uint64_t u64() { return num(8); }
  std::int64_t i64() { return static_cast<std::int64_t>(num(8)); }
  std::string str16() {
    const std::size_t n = u16();
    return text(n);
  }
  std::string bytes32() {
    const std::size_t n = u32();
    return text(n);
  }
  std::string rest() { return text(left_); }
  bool empty() const noexcept { return left_ == 0; }

 private:
  std::uint64_t num(std::size_t n) {
    need(n);
    const unsigned char* b = take(n);
    std::uint64_t v = 0;
    for (std::size_t i = n; i-- > 0;) v = (v << 8) | b[i];
    return v;
  }
  std::string text(std::size_t n) {
    need(n);
    const unsigned char* b = take(n);
    return std::string(reinterpret_cast<const char*>(b), n);
  }
  void need(std::size_t n) const {
    if (n > left_) {
      throw JournalCorruption(std::string("ordo: journal ") + to_string(type_) + " record of task " +
                              std::to_string(task_) + " is shorter than its fields");
    }
  }
  const unsigned char* take(std::size_t n) {
    const unsigned char* b = p_;
    p_ += n;
    left_ -= n;
    return b;
  }
  const unsigned char* p_;
  std::size_t left_;
  RecordType type_;
  std::uint64_t task_;
};

}  // namespace ordo::detail
