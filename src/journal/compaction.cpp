// Compaction: folds the snapshot and the segments before a rotation point
// into a new snapshot of the live tasks, then deletes what it replaces. Each
// step is crash-safe; docs/journal-format.md ("Compaction and snapshots")
// lists them, and the hook numbers below are those steps.
#include <chrono>
#include <unordered_map>

#include "journal/format.hpp"
#include "journal/journal_impl.hpp"
#include "journal/posix_file_system.hpp"
#include "journal/reader.hpp"
#include "journal/records.hpp"
#include "util/clock.hpp"

namespace ordo::detail {
namespace {

// Per live task: where its latest CHECKPOINT is, so that earlier ones can be left out.
struct Position {
  std::uint64_t file;  // segment number, or 0 for the snapshot
  std::uint64_t offset;
};

class SnapshotWriter {
 public:
  SnapshotWriter(FileSystem& fs, const std::string& path, std::uint64_t number)
      : file_(fs.create(path, FileSystem::Create::replace)) {
    unsigned char header[wal::kFileHeaderBytes];
    wal::encode_file_header(header, wal::FileKind::snapshot, number);
    buffer_.append(reinterpret_cast<const char*>(header), sizeof header);
  }
  // Copies a record verbatim: its CRC still holds.
  void copy(const RecordView& r) {
    unsigned char h[wal::kRecordHeaderBytes];
    const auto* payload = reinterpret_cast<const unsigned char*>(r.payload.data());
    wal::encode_record_header(h, r.type, payload, static_cast<std::uint32_t>(r.payload.size()));
    buffer_.append(reinterpret_cast<const char*>(h), sizeof h);
    buffer_.append(reinterpret_cast<const char*>(payload), r.payload.size());
    ++records_;
    if (buffer_.size() >= (1u << 20)) flush();
  }
  // `highest_task`: the highest task id of every record folded (kept or
  // not), so that ids are never handed out again once their records are gone.
  void finish(std::uint64_t highest_task) {
    unsigned char payload[24];
    wal::put64(payload, 0);
    wal::put64(payload + 8, records_);
    wal::put64(payload + 16, highest_task);
    unsigned char h[wal::kRecordHeaderBytes];
    wal::encode_record_header(h, RecordType::snapshot_end, payload, sizeof payload);
    buffer_.append(reinterpret_cast<const char*>(h), sizeof h);
    buffer_.append(reinterpret_cast<const char*>(payload), sizeof payload);
    flush();
    file_->sync();
    file_.reset();
  }

 private:
  void flush() {
    file_->append(buffer_.data(), buffer_.size());
    buffer_.clear();
  }
  std::unique_ptr<AppendFile> file_;
  std::string buffer_;
  std::uint64_t records_ = 0;
};

}  // namespace

void JournalImpl::run_compaction(std::uint64_t first_kept) {
  const wal::DirectoryPlan plan = wal::plan_directory(*fs_, dir_);
  // The files to fold, in replay order; 0 stands for the current snapshot.
  std::vector<std::uint64_t> files, covered;
  if (plan.snapshot != 0) files.push_back(0);
  for (std::uint64_t s : plan.segments) {
    if (s >= first_kept) continue;
    files.push_back(s);
    covered.push_back(s);
  }
  RecoveryReport scratch;  // collects highest_task, also from the old snapshot's SNAPSHOT_END
  auto for_each_record = [&](const std::function<void(const RecordView&, std::uint64_t file)>& fn) {
    for (std::uint64_t f : files) {
      const std::string name = f == 0 ? wal::file_name(wal::FileKind::snapshot, plan.snapshot)
                                      : wal::file_name(wal::FileKind::segment, f);
      // These files were complete when the writer left them: a tail that
      // looks torn here is real damage, so none is allowed.
      wal::scan_file(*fs_, wal::join(dir_, name), name, {false, options_.tolerate_corruption}, scratch,
                     [&](const RecordView& r) { fn(r, f); });
    }
  };
  // Pass 1: which tasks are live, and each one's latest checkpoint.
  std::unordered_map<std::uint64_t, Position> live;
  for_each_record([&](const RecordView& r, std::uint64_t f) {
    if (r.type == RecordType::enqueue || r.type == RecordType::workflow) {  // a task's or a workflow's life starts
      live[r.task] = Position{~0ull, 0};
    } else if (r.type == RecordType::complete || r.type == RecordType::cancel) {
      live.erase(r.task);
    } else if (r.type == RecordType::checkpoint) {
      auto it = live.find(r.task);
      if (it != live.end()) it->second = Position{f, r.offset};
    }
  });
  // Pass 2: their records, superseded checkpoints left out.
  const std::string final_name = wal::file_name(wal::FileKind::snapshot, first_kept);
  const std::string tmp_path = wal::join(dir_, final_name + ".tmp");
  {
    SnapshotWriter out(*fs_, tmp_path, first_kept);
    const std::int64_t now = wall_now_ns();
    for_each_record([&](const RecordView& r, std::uint64_t f) {
      auto it = live.find(r.task);
      if (it == live.end()) {
        // A finished task's COMPLETE stays while it retains an idempotency
        // key (a tombstone).
        if (r.type == RecordType::complete && records::retains_key_beyond(r, now)) {
          out.copy(r);
        }
        return;
      }
      if (r.type == RecordType::checkpoint && (it->second.file != f || it->second.offset != r.offset)) return;
      out.copy(r);
    });
    out.finish(scratch.highest_task);
  }
  if (compaction_crash_point) compaction_crash_point(2);
  fs_->rename(tmp_path, wal::join(dir_, final_name));
  fs_->sync_directory(dir_);  // the commit point
  if (compaction_crash_point) compaction_crash_point(3);
  if (plan.snapshot != 0) fs_->remove(wal::join(dir_, wal::file_name(wal::FileKind::snapshot, plan.snapshot)));
  for (std::uint64_t s : covered) fs_->remove(wal::join(dir_, wal::file_name(wal::FileKind::segment, s)));
  fs_->sync_directory(dir_);
  if (compaction_crash_point) compaction_crash_point(4);
}

}  // namespace ordo::detail
