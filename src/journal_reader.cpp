#include "journal_reader.hpp"

#include <algorithm>

#include "journal_io.hpp"
#include "task_id_set.hpp"

namespace ordo::detail::wal {
namespace {

enum class Verdict { ok, torn, bad };

struct Check {
  Verdict verdict;
  std::uint32_t length = 0;
  const char* reason = "";
};

bool all_zero(const unsigned char* p, std::size_t n) {
  return std::all_of(p, p + n, [](unsigned char c) { return c == 0; });
}

// Judges the record at `off` of a file of `size` bytes.
Check check_record(const unsigned char* base, std::uint64_t off, std::uint64_t size, bool last) {
  const std::uint64_t remaining = size - off;
  const unsigned char* p = base + off;
  if (remaining < kRecordHeaderBytes) {
    return {last ? Verdict::torn : Verdict::bad, 0, "record header cut short"};
  }
  const std::uint32_t length = get32(p + 4);
  if (length > kMaxPayload) return {Verdict::bad, length, "impossible record length"};
  if (kRecordHeaderBytes + length > remaining) {
    return {last ? Verdict::torn : Verdict::bad, length, "record runs past the end of the file"};
  }
  const std::uint32_t crc = crc32c::extend(0, p + 8, 1 + static_cast<std::size_t>(length));
  if (crc32c::unmask(get32(p)) != crc) {
    const bool final_record = off + kRecordHeaderBytes + length == size;
    return {last && final_record ? Verdict::torn : Verdict::bad, length, "record checksum mismatch"};
  }
  if (p[8] == 0 || p[8] > kMaxRecordType) return {Verdict::bad, length, "unknown record type"};
  if (length < 8) return {Verdict::bad, length, "payload shorter than its task id"};
  return {Verdict::ok, length, ""};
}

}  // namespace

ScanResult scan_file(const std::string& path, const std::string& display, const ScanOptions& options,
                     RecoveryReport& report, const std::function<void(const RecordView&)>& on_record) {
  MappedFile file(path);
  ScanResult result;
  result.size = file.size();
  const unsigned char* base = file.data();
  std::string why;
  if (file.size() < kFileHeaderBytes && options.last_segment) {
    // Created, and the writer died before its header was whole.
    report.torn_tail = true;
    report.tail = {display, 0, file.size(), "segment header cut short"};
    return result;
  }
  auto header = decode_file_header(base, file.size(), why);
  if (!header) throw JournalCorruption("ordo: journal file " + display + ": " + why);
  result.header = *header;
  const bool snapshot = header->kind == FileKind::snapshot;
  std::uint64_t off = kFileHeaderBytes;
  while (off < file.size()) {
    Check c = check_record(base, off, file.size(), options.last_segment);
    if (c.verdict == Verdict::bad && options.last_segment && all_zero(base + off, file.size() - off)) {
      c = {Verdict::torn, 0, "zero-filled tail"};
    }
    if (c.verdict == Verdict::torn) {
      report.torn_tail = true;
      report.tail = {display, off, file.size() - off, c.reason};
      break;
    }
    if (c.verdict == Verdict::bad) {
      std::string reason = c.reason;
      if (reason == "unknown record type") reason.append(" ").append(std::to_string(base[off + 8]));
      if (!options.tolerant) {
        throw JournalCorruption("ordo: journal file " + display + " at offset " + std::to_string(off) + ": " +
                                reason);
      }
      std::uint64_t next = off + 1;
      while (next < file.size() && check_record(base, next, file.size(), false).verdict != Verdict::ok) ++next;
      report.skipped.push_back({display, off, next - off, reason});
      off = next;
      continue;
    }
    const unsigned char* p = base + off;
    const auto type = static_cast<RecordType>(p[8]);
    if (type == RecordType::snapshot_end) {
      if (!snapshot || c.length < 16 || get64(p + kRecordHeaderBytes + 8) != result.records) {
        throw JournalCorruption("ordo: journal file " + display + " at offset " + std::to_string(off) +
                                ": misplaced or inconsistent SNAPSHOT_END");
      }
      // Optional third field: the highest task id of the records it folded.
      if (c.length >= 24) report.highest_task = std::max(report.highest_task, get64(p + kRecordHeaderBytes + 16));
      result.snapshot_complete = true;
    } else {
      if (result.snapshot_complete) {
        throw JournalCorruption("ordo: journal file " + display + " at offset " + std::to_string(off) +
                                ": record after SNAPSHOT_END");
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
  if (result.valid_end == 0) result.valid_end = std::min<std::uint64_t>(off, kFileHeaderBytes);
  if (snapshot && !result.snapshot_complete) {
    throw JournalCorruption("ordo: journal file " + display + ": snapshot has no SNAPSHOT_END (incomplete)");
  }
  report.bytes += file.size();
  return result;
}

DirectoryPlan plan_directory(const std::string& dir) {
  DirectoryPlan plan;
  std::vector<std::uint64_t> segments, snapshots;
  for (const std::string& name : list_directory(dir)) {
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

ReadResult read_directory(const std::string& dir, bool tolerant, RecoveryReport& report,
                          const std::function<void(const RecordView&)>& on_record) {
  ReadResult result;
  result.plan = plan_directory(dir);
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
    scan_file(join(dir, name), name, {false, tolerant}, report, deliver);
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
    ScanResult r = scan_file(join(dir, name), name, {last, tolerant}, report, deliver);
    if (r.header.kind != FileKind::segment || (r.size >= kFileHeaderBytes && r.header.number != number)) {
      throw JournalCorruption("ordo: journal file " + name + ": its header names another file");
    }
    ++report.segments;
    if (last) result.last_valid_end = r.valid_end;
  }
  report.live_tasks = live.size();
  return result;
}

}  // namespace ordo::detail::wal
