// libFuzzer target for the journal reader: any bytes, as the last segment or
// as a middle one, strict or tolerant, must give records or a JournalCorruption
// — never a crash, a hang or a read out of bounds. The reader reads through
// the journal's FileSystem interface, here one that serves the input from
// memory (no file written per input). Build with clang and -DORDO_FUZZ=ON;
// seeds are in fuzz/corpus.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "journal/file_system.hpp"
#include "journal/reader.hpp"
#include "ordo/journal.hpp"

namespace {

const std::string kPath = "/input/wal-0000000000000001.log";
const std::string kName = "wal-0000000000000001.log";

class View final : public ordo::detail::FileBytes {
 public:
  View(const unsigned char* data, std::size_t size) {
    data_ = data;
    size_ = size;
  }
};

// Read-only: one file, a view of the input (never copied). The reader's
// per-file work is what the bytes reach; naming and ordering the files of a
// directory (plan_directory) does not depend on their content.
// Thread-safety: none needed (libFuzzer calls the target from one thread).
class InputFileSystem final : public ordo::detail::FileSystem {
 public:
  void set_input(const std::uint8_t* data, std::size_t size) {
    data_ = data;
    size_ = size;
  }

  std::unique_ptr<ordo::detail::FileBytes> read(const std::string&) override {
    return std::make_unique<View>(data_, size_);
  }
  std::vector<std::string> list(const std::string&) override { return {kName}; }

  bool make_directory(const std::string&) override { refuse(); }
  std::unique_ptr<ordo::detail::DirectoryLock> lock_directory(const std::string&) override { refuse(); }
  void sync_directory(const std::string&) override { refuse(); }
  std::unique_ptr<ordo::detail::AppendFile> create(const std::string&, Create) override { refuse(); }
  void rename(const std::string&, const std::string&) override { refuse(); }
  void remove(const std::string&) override { refuse(); }
  void truncate(const std::string&, std::uint64_t) override { refuse(); }
  std::optional<std::uint64_t> size_of(const std::string&) override { refuse(); }

 private:
  [[noreturn]] static void refuse() { throw ordo::JournalIoError("the fuzz file system is read-only"); }

  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

// One scan, as the last segment (a torn tail allowed) or a middle one
// (none), strict or tolerant: records, or the corruption scan_file would
// throw (returned, not thrown: a throw per input would cost more than the
// scan). True if it found corruption.
bool scan(InputFileSystem& fs, ordo::RecoveryReport& report, bool last, bool tolerant) {
  report.torn_tail = false;
  report.skipped.clear();
  static std::uint64_t bytes = 0;
  static const std::function<void(const ordo::RecordView&)> on_record = [](const ordo::RecordView& r) {
    bytes += r.payload.size();
  };
  ordo::detail::wal::ScanResult result;
  if (auto failure = ordo::detail::wal::try_scan_file(fs, kPath, kName, {last, tolerant, 1}, report, on_record, result)) {
    if (failure->reason.empty()) __builtin_trap();  // corruption always says why
    return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static InputFileSystem fs;
  static ordo::RecoveryReport report;  // reused: its strings keep their buffers
  fs.set_input(data, size);
  // Tolerant mode differs from strict only past corruption: without any,
  // it would repeat the strict scan.
  for (bool last : {true, false}) {
    if (scan(fs, report, last, false)) scan(fs, report, last, true);
  }
  return 0;
}
