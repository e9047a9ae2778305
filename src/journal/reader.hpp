// Reading a journal: one file at a time (scan_file), and a whole directory in
// replay order (read_directory). Implements the torn-tail and corruption rules
// of docs/journal-format.md. Thread-safety: each call is independent; the
// files must not be written meanwhile (the lock, or a read-only caller that
// accepts reading a torn tail as such).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "journal/file_system.hpp"
#include "journal/format.hpp"
#include "ordo/journal.hpp"

namespace ordo::detail::wal {

struct ScanOptions {
  bool last_segment = false;  // a torn tail is allowed (and reported)
  bool tolerant = false;      // skip corrupt ranges instead of throwing
  std::uint64_t number = 0;   // last_segment: its number, to recognise a header cut short
};

struct ScanResult {
  FileHeader header{};
  bool header_cut_short = false;  // last segment: no header, a torn tail from offset 0
  std::uint64_t valid_end = 0;  // offset just past the last good record
  std::uint64_t size = 0;
  std::uint64_t records = 0;    // delivered (SNAPSHOT_END excluded)
  bool snapshot_complete = false;
};

// Scans one file, calling `on_record` for each good record (except the
// snapshot terminator, which it checks). Records damage in `report`; throws
// JournalCorruption naming `display` (the file name) and the offset.
ScanResult scan_file(FileSystem& fs, const std::string& path, const std::string& display, const ScanOptions& options,
                     RecoveryReport& report, const std::function<void(const RecordView&)>& on_record);

// Why a file is corrupt: where, and the reason.
struct ScanFailure {
  static constexpr std::uint64_t kWholeFile = ~0ull;  // its header, or its end
  std::uint64_t offset;
  std::string reason;
  std::string message(const std::string& display) const;  // JournalCorruption's text
};
// scan_file without the exception: the failure is returned (the fuzz
// target's way in, where a throw per input would cost more than the scan).
// I/O errors and what on_record throws still propagate.
std::optional<ScanFailure> try_scan_file(FileSystem& fs, const std::string& path, const std::string& display,
                                         const ScanOptions& options, RecoveryReport& report,
                                         const std::function<void(const RecordView&)>& on_record, ScanResult& result);

// The files of a journal directory, in replay order.
struct DirectoryPlan {
  std::uint64_t snapshot = 0;             // number of the snapshot to read first, or 0
  std::vector<std::uint64_t> segments;    // >= snapshot, ascending
  std::vector<std::string> obsolete;      // older snapshots, covered segments, *.tmp
  std::uint64_t next_segment = 1;         // the number a writer starts with
};
DirectoryPlan plan_directory(FileSystem& fs, const std::string& dir);

struct ReadResult {
  DirectoryPlan plan;
  std::uint64_t last_valid_end = 0;  // of the last segment
};

// Replays snapshot then segments. Checks that segment numbers are contiguous.
ReadResult read_directory(FileSystem& fs, const std::string& dir, bool tolerant, RecoveryReport& report,
                          const std::function<void(const RecordView&)>& on_record);

}  // namespace ordo::detail::wal
