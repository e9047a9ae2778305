// libFuzzer target for the journal reader: any bytes, as the last segment or
// as a middle one, strict or tolerant, must give records or a JournalCorruption
// — never a crash, a hang or a read out of bounds. The reader reads through
// the journal's FileSystem interface, here one that serves the input from
// memory (no file written per input). Build with clang and -DORDO_FUZZ=ON;
// seeds are in fuzz/corpus.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "journal_file_system.hpp"
#include "journal_format.hpp"
#include "journal_reader.hpp"
#include "ordo/journal.hpp"

namespace {

using ordo::detail::wal::FileKind;
using ordo::detail::wal::file_name;

const std::string kAlone = "/alone";    // the input is the only (so the last) segment, number 1
const std::string kMiddle = "/middle";  // the input is segment 0, followed by a valid empty segment 1

class View final : public ordo::detail::FileBytes {
 public:
  View(const unsigned char* data, std::size_t size) {
    data_ = data;
    size_ = size;
  }
};

// Read-only: two directories whose files are views of the input (never copied).
class InputFileSystem final : public ordo::detail::FileSystem {
 public:
  InputFileSystem() : middle_second_(kMiddle + "/" + file_name(FileKind::segment, 1)) {
    ordo::detail::wal::encode_file_header(empty_segment_, FileKind::segment, 1);
  }
  void set_input(const std::uint8_t* data, std::size_t size) {
    data_ = data;
    size_ = size;
  }

  std::vector<std::string> list(const std::string& dir) override {
    if (dir == kAlone) return {file_name(FileKind::segment, 1)};
    return {file_name(FileKind::segment, 0), file_name(FileKind::segment, 1)};
  }
  std::unique_ptr<ordo::detail::FileBytes> read(const std::string& path) override {
    if (path == middle_second_) {
      return std::make_unique<View>(empty_segment_, sizeof empty_segment_);
    }
    return std::make_unique<View>(data_, size_);
  }

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

  const std::string middle_second_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  unsigned char empty_segment_[ordo::detail::wal::kFileHeaderBytes];
};

void read_all(InputFileSystem& fs, const std::string& dir, bool tolerant) {
  try {
    ordo::RecoveryReport report;
    std::uint64_t bytes = 0;
    ordo::detail::wal::read_directory(fs, dir, tolerant, report,
                                      [&](const ordo::RecordView& r) { bytes += r.payload.size(); });
  } catch (const ordo::JournalCorruption&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static InputFileSystem fs;
  fs.set_input(data, size);
  read_all(fs, kAlone, false);
  read_all(fs, kAlone, true);
  read_all(fs, kMiddle, false);
  read_all(fs, kMiddle, true);
  return 0;
}
