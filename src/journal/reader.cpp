#include "journal/reader.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "journal/posix_file_system.hpp"
#include "journal/task_id_set.hpp"

namespace ordo::detail::wal {
namespace {

enum class Verdict { ok, bad };

struct Check {
  Verdict verdict;
  std::uint32_t length = 0;
  const char* reason = "";
};

// The first non-zero byte in [p, p + n), or p + n: eight bytes a step,
// since a segment's unused reservation is up to 64 MiB of zeros.
const unsigned char* first_nonzero(const unsigned char* p, std::size_t n) {
  const unsigned char* const end = p + n;
  while (static_cast<std::size_t>(end - p) >= 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    if (word != 0) break;
    p += 8;
  }
  while (p < end && *p == 0) ++p;
  return p;
}

bool all_zero(const unsigned char* p, std::size_t n) { return first_nonzero(p, n) == p + n; }

// A reader beside a live writer reads the last segment again up to this many
// times, 1 + 2 + 4 + 8 ms apart, before it calls damage with whole records
// after it corruption: long enough for a writer preempted in mid-copy.
constexpr int kLiveRereads = 4;
constexpr std::chrono::milliseconds kFirstRereadPause{1};

// Judges the record at `off` of a file of `size` bytes.
Check check_record(const unsigned char* base, std::uint64_t off, std::uint64_t size) {
  const std::uint64_t remaining = size - off;
  const unsigned char* p = base + off;
  if (remaining < kRecordHeaderBytes) return {Verdict::bad, 0, "record header cut short"};
  const std::uint32_t length = get32(p + 4);
  if (length > kMaxPayload) return {Verdict::bad, length, "impossible record length"};
  if (kRecordHeaderBytes + length > remaining) return {Verdict::bad, length, "record runs past the end of the file"};
  const std::uint32_t crc = crc32c::extend(0, p + 8, 1 + static_cast<std::size_t>(length));
  if (crc32c::unmask(get32(p)) != crc) return {Verdict::bad, length, "record checksum mismatch"};
  if (p[8] == 0 || p[8] > kMaxRecordType) return {Verdict::bad, length, "unknown record type"};
  if (length < 8) return {Verdict::bad, length, "payload shorter than its task id"};
  return {Verdict::ok, length, ""};
}

// The reason for an error message ("unknown record type 77").
std::string describe(const Check& c, const unsigned char* record) {
  std::string reason = c.reason;
  if (reason == "unknown record type") reason.append(" ").append(std::to_string(record[8]));
  return reason;
}

// Whether a whole valid record begins at `off`: the cheap tests first, since
// this is tried at every byte of a damaged range.
bool valid_record_at(const unsigned char* base, std::uint64_t off, std::uint64_t size) {
  if (size - off < kRecordHeaderBytes + 8) return false;
  const unsigned char* p = base + off;
  if (p[8] == 0 || p[8] > kMaxRecordType) return false;  // rejects most offsets with one byte
  const std::uint32_t length = get32(p + 4);
  if (length < 8 || length > size - off - kRecordHeaderBytes) return false;
  return crc32c::unmask(get32(p)) == crc32c::extend(0, p + 8, 1 + static_cast<std::size_t>(length));
}

// The first offset after `off` at which a whole valid record begins, or `size`.
// Zeros are passed over at once: a record's type byte (its 9th) is never 0,
// so no record begins 8 bytes before a zero byte. (A copy into the mapped
// segment cut short by a kill leaves a partial record, then the
// reservation's zeros: up to 64 MiB to search.)
std::uint64_t next_valid_record(const unsigned char* base, std::uint64_t off, std::uint64_t size) {
  std::uint64_t next = off + 1;
  while (next < size && !valid_record_at(base, next, size)) {
    if (next + 8 < size && base[next + 8] == 0) {
      // The next candidate: 8 bytes before the next non-zero byte (past
      // `next`, since base[next + 8] is zero), or the last 8 bytes.
      next = static_cast<std::uint64_t>(first_nonzero(base + next + 8, size - next - 8) - base) - 8;
      continue;
    }
    ++next;
  }
  return std::min(next, size);
}

// What a crash while creating segment `number` leaves: fewer than 32 bytes,
// or the header the writer writes with its end read back as zeros (a file
// system that extended the file before the data reached the disk) and
// nothing but zeros after it. Any other bad header is corruption.
bool header_cut_short(const unsigned char* base, std::size_t size, std::uint64_t number) {
  if (size < kFileHeaderBytes) return true;
  unsigned char expected[kFileHeaderBytes];
  encode_file_header(expected, FileKind::segment, number);
  std::size_t same = 0;
  while (same < kFileHeaderBytes && base[same] == expected[same]) ++same;
  return same < kFileHeaderBytes && all_zero(base + same, size - same);
}

}  // namespace

std::string ScanFailure::message(const std::string& display) const {
  if (offset == kWholeFile) return "ordo: journal file " + display + ": " + reason;
  return "ordo: journal file " + display + " at offset " + std::to_string(offset) + ": " + reason;
}

namespace {

void set_tail(RecoveryReport& report, const std::string& display, std::uint64_t offset, std::uint64_t bytes,
              const char* reason) {
  report.torn_tail = true;
  report.tail.file.assign(display);  // assigned in place: a reused report keeps its buffers
  report.tail.offset = offset;
  report.tail.bytes = bytes;
  report.tail.reason.assign(reason);
}

}  // namespace

ScanResult scan_file(FileSystem& fs, const std::string& path, const std::string& display, const ScanOptions& options,
                     RecoveryReport& report, const std::function<void(const RecordView&)>& on_record) {
  ScanResult result;
  if (auto failure = try_scan_file(fs, path, display, options, report, on_record, result)) {
    throw JournalCorruption(failure->message(display));
  }
  return result;
}

std::optional<ScanFailure> try_scan_file(FileSystem& fs, const std::string& path, const std::string& display,
                                         const ScanOptions& options, RecoveryReport& report,
                                         const std::function<void(const RecordView&)>& on_record, ScanResult& result) {
  std::unique_ptr<FileBytes> file = fs.read(path);
  result = ScanResult{};
  const unsigned char* base = file->data();
  std::uint64_t size = file->size();
  std::string why;
  if (options.last_segment && header_cut_short(base, size, options.number)) {
    // Created, and the power went before its header was whole (or synced).
    result.size = size;
    set_tail(report, display, 0, size, "segment header cut short");
    result.header_cut_short = true;
    return std::nullopt;
  }
  auto header = decode_file_header(base, size, why);
  if (!header) return ScanFailure{ScanFailure::kWholeFile, std::move(why)};
  result.header = *header;
  const bool snapshot = header->kind == FileKind::snapshot;
  std::uint64_t off = kFileHeaderBytes;
  // Beside a live writer: how many more times the last segment may be read
  // again, and the pause before the next read.
  int rereads_left = fs.writer_may_be_live() ? kLiveRereads : 0;
  auto reread_pause = kFirstRereadPause;
  while (off < size) {
    const Check c = check_record(base, off, size);
    if (c.verdict == Verdict::bad) {
      // A tail is torn only if nothing valid follows it: what an append cut
      // by a crash leaves. Damage with a whole valid record after it is
      // corruption (a flipped length would otherwise hide every record
      // behind it), and is never cut off without an explicit repair.
      if (!options.last_segment && !options.tolerant) return ScanFailure{off, describe(c, base + off)};
      // Zeros to the end (a segment's unused reservation after a crash, up
      // to 64 MiB) are a tail at once, without a search byte by byte.
      const bool zeros = options.last_segment && all_zero(base + off, size - off);
      const std::uint64_t next = zeros ? size : next_valid_record(base, off, size);
      if (options.last_segment && next == size) {
        set_tail(report, display, off, size - off, zeros ? kZeroFilledTail : c.reason);
        break;
      }
      if (options.last_segment && rereads_left > 0) {
        // A copy of a file the writer is appending to is not one instant's
        // bytes: this record may have been read while it was being written
        // and the ones after it once they were whole. Records are only ever
        // appended, so the bytes before `off` are the same in a new read;
        // damage that is still there after the last read is corruption.
        --rereads_left;
        std::this_thread::sleep_for(reread_pause);
        reread_pause *= 2;
        file = fs.read(path);
        base = file->data();
        size = file->size();
        continue;
      }
      if (!options.tolerant) return ScanFailure{off, describe(c, base + off)};
      report.skipped.push_back({display, off, next - off, describe(c, base + off)});
      off = next;
      continue;
    }
    const unsigned char* p = base + off;
    const auto type = static_cast<RecordType>(p[8]);
    if (type == RecordType::snapshot_end) {
      if (!snapshot || c.length < 16 || get64(p + kRecordHeaderBytes + 8) != result.records) {
        return ScanFailure{off, "misplaced or inconsistent SNAPSHOT_END"};
      }
      // Optional third field: the highest task id of the records it folded.
      if (c.length >= 24) report.highest_task = std::max(report.highest_task, get64(p + kRecordHeaderBytes + 16));
      result.snapshot_complete = true;
    } else {
      if (result.snapshot_complete) {
        return ScanFailure{off, "record after SNAPSHOT_END"};
      }
      RecordView view{type, get64(p + kRecordHeaderBytes),
                      std::span<const std::byte>(reinterpret_cast<const std::byte*>(p + kRecordHeaderBytes), c.length),
                      header->number, off, snapshot};
      if (on_record) on_record(view);
      report.highest_task = std::max(report.highest_task, view.task);
      ++result.records;
    }
    off += kRecordHeaderBytes + c.length;
    result.valid_end = off;
  }
  result.size = size;
  if (result.valid_end == 0) result.valid_end = std::min<std::uint64_t>(off, kFileHeaderBytes);
  if (snapshot && !result.snapshot_complete) {
    return ScanFailure{ScanFailure::kWholeFile, "snapshot has no SNAPSHOT_END (incomplete)"};
  }
  report.bytes += size;
  return std::nullopt;
}

DirectoryPlan plan_directory(FileSystem& fs, const std::string& dir) {
  DirectoryPlan plan;
  std::vector<std::uint64_t> segments, snapshots;
  for (const std::string& name : fs.list(dir)) {
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
      plan.obsolete.push_back(name);
      continue;
    }
    auto parsed = parse_file_name(name);
    if (!parsed) continue;  // LOCK, or files that are not ours
    (parsed->first == FileKind::segment ? segments : snapshots).push_back(parsed->second);
  }
  std::sort(segments.begin(), segments.end());
  std::sort(snapshots.begin(), snapshots.end());
  if (!snapshots.empty()) plan.snapshot = snapshots.back();
  for (std::size_t i = 0; i + 1 < snapshots.size(); ++i)
    plan.obsolete.push_back(file_name(FileKind::snapshot, snapshots[i]));
  for (std::uint64_t s : segments) {
    if (s < plan.snapshot) {
      plan.obsolete.push_back(file_name(FileKind::segment, s));
    } else {
      plan.segments.push_back(s);
    }
  }
  plan.next_segment = std::max<std::uint64_t>(plan.snapshot, 1);
  if (!plan.segments.empty()) plan.next_segment = plan.segments.back() + 1;
  return plan;
}

ReadResult read_directory(FileSystem& fs, const std::string& dir, bool tolerant, RecoveryReport& report,
                          const std::function<void(const RecordView&)>& on_record) {
  ReadResult result;
  result.plan = plan_directory(fs, dir);
  const DirectoryPlan& plan = result.plan;
  TaskIdSet live;
  auto deliver = [&](const RecordView& r) {
    ++report.records;
    if (r.type == RecordType::enqueue || r.type == RecordType::workflow) {
      live.insert(r.task);
    } else if (r.type == RecordType::complete || r.type == RecordType::cancel) {
      live.erase(r.task);
    }
    if (on_record) on_record(r);
  };
  if (plan.snapshot != 0) {
    const std::string name = file_name(FileKind::snapshot, plan.snapshot);
    scan_file(fs, join(dir, name), name, {false, tolerant}, report, deliver);
    report.snapshot = plan.snapshot;
  }
  std::uint64_t expected = plan.snapshot != 0 ? plan.snapshot : (plan.segments.empty() ? 0 : plan.segments.front());
  for (std::size_t i = 0; i < plan.segments.size(); ++i) {
    const std::uint64_t number = plan.segments[i];
    const std::string name = file_name(FileKind::segment, number);
    if (number != expected) {
      const std::string missing = file_name(FileKind::segment, expected);
      if (!tolerant) throw JournalCorruption("ordo: journal " + dir + ": segment " + missing + " is missing");
      report.skipped.push_back({missing, 0, 0, "segment file missing"});
    }
    expected = number + 1;
    const bool last = i + 1 == plan.segments.size();
    ScanResult r = scan_file(fs, join(dir, name), name, {last, tolerant, number}, report, deliver);
    if (!r.header_cut_short && (r.header.kind != FileKind::segment || r.header.number != number)) {
      throw JournalCorruption("ordo: journal file " + name + ": its header names another file");
    }
    ++report.segments;
    if (last) result.last_valid_end = r.valid_end;
  }
  report.live_tasks = live.size();
  return result;
}

}  // namespace ordo::detail::wal
