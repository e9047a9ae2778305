// The journal's framing, exactly as docs/journal-format.md specifies it:
// file headers, record headers, names of files. Encoding and decoding only;
// no I/O. Thread-safety: pure functions and constants.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "journal/crc32c.hpp"
#include "ordo/journal.hpp"

namespace ordo::detail::wal {

inline constexpr std::uint32_t kVersion = 1;
inline constexpr std::size_t kFileHeaderBytes = 32;
inline constexpr std::size_t kRecordHeaderBytes = 9;
inline constexpr std::uint32_t kMaxPayload = 1u << 26;
// RecoveryReport::Damage::reason of a tail that is zeros to the end.
inline constexpr const char* kZeroFilledTail = "zero-filled tail";
inline constexpr char kSegmentMagic[8] = {'O', 'R', 'D', 'O', 'W', 'A', 'L', '\0'};
inline constexpr char kSnapshotMagic[8] = {'O', 'R', 'D', 'O', 'S', 'N', 'P', '\0'};

enum class FileKind { segment, snapshot };

inline void put32(unsigned char* p, std::uint32_t v) noexcept {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
inline void put64(unsigned char* p, std::uint64_t v) noexcept {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
inline std::uint32_t get32(const unsigned char* p) noexcept {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline std::uint64_t get64(const unsigned char* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

inline void encode_file_header(unsigned char* out, FileKind kind, std::uint64_t number) noexcept {
  std::memcpy(out, kind == FileKind::segment ? kSegmentMagic : kSnapshotMagic, 8);
  put32(out + 8, kVersion);
  put32(out + 12, 0);
  put64(out + 16, number);
  put32(out + 24, crc32c::mask(crc32c::value(out, 24)));
  put32(out + 28, 0);
}

struct FileHeader {
  FileKind kind;
  std::uint64_t number;
};

// Checks a header; on failure returns the reason for the error message.
inline std::optional<FileHeader> decode_file_header(const unsigned char* in, std::size_t available,
                                                    std::string& why) {
  if (available < kFileHeaderBytes) {
    why = "file shorter than its 32-byte header";
    return std::nullopt;
  }
  FileHeader h{};
  if (std::memcmp(in, kSegmentMagic, 8) == 0) {
    h.kind = FileKind::segment;
  } else if (std::memcmp(in, kSnapshotMagic, 8) == 0) {
    h.kind = FileKind::snapshot;
  } else {
    why = "not an ordo journal file (bad magic)";
    return std::nullopt;
  }
  if (crc32c::unmask(get32(in + 24)) != crc32c::value(in, 24)) {
    why = "file header checksum mismatch";
    return std::nullopt;
  }
  const std::uint32_t version = get32(in + 8);
  if (version > kVersion) {
    why = "written by format version " + std::to_string(version) + "; this ordo reads versions up to " +
          std::to_string(kVersion);
    return std::nullopt;
  }
  if (get32(in + 12) != 0) {
    why = "file header has unknown flags";
    return std::nullopt;
  }
  if (get32(in + 28) != 0) {
    why = "file header's reserved bytes are not zero";
    return std::nullopt;
  }
  h.number = get64(in + 16);
  return h;
}

// Writes the 9-byte record header for `payload` of `type` at `out`.
inline void encode_record_header(unsigned char* out, RecordType type, const unsigned char* payload,
                                 std::uint32_t length) noexcept {
  const auto t = static_cast<unsigned char>(type);
  std::uint32_t crc = crc32c::extend(0, &t, 1);
  crc = crc32c::extend(crc, payload, length);
  put32(out, crc32c::mask(crc));
  put32(out + 4, length);
  out[8] = t;
}

inline std::string file_name(FileKind kind, std::uint64_t number) {
  char buf[48];
  std::snprintf(buf, sizeof buf, kind == FileKind::segment ? "wal-%016llu.log" : "snapshot-%016llu.snap",
                static_cast<unsigned long long>(number));
  return buf;
}

// Parses "wal-N.log" / "snapshot-N.snap"; nullopt for any other name.
inline std::optional<std::pair<FileKind, std::uint64_t>> parse_file_name(std::string_view name) {
  auto number_between = [&](std::string_view prefix, std::string_view suffix) -> std::optional<std::uint64_t> {
    if (name.size() != prefix.size() + 16 + suffix.size()) return std::nullopt;
    if (name.substr(0, prefix.size()) != prefix || name.substr(name.size() - suffix.size()) != suffix) {
      return std::nullopt;
    }
    std::uint64_t n = 0;
    for (char c : name.substr(prefix.size(), 16)) {
      if (c < '0' || c > '9') return std::nullopt;
      n = n * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return n;
  };
  if (auto n = number_between("wal-", ".log")) return std::make_pair(FileKind::segment, *n);
  if (auto n = number_between("snapshot-", ".snap")) return std::make_pair(FileKind::snapshot, *n);
  return std::nullopt;
}

}  // namespace ordo::detail::wal
