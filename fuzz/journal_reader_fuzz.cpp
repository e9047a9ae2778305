// libFuzzer target for the journal reader: any bytes, as the last segment or
// as a middle one, strict or tolerant, must give records or a JournalCorruption
// — never a crash, a hang or a read out of bounds. Build with clang and
// -DORDO_FUZZ=ON; seeds are in fuzz/corpus.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "ordo/journal.hpp"

namespace {

struct Dirs {
  std::string alone;   // the input is the only (so the last) segment
  std::string middle;  // the input is followed by a valid empty segment
  Dirs() {
    char a[] = "/tmp/ordo-fuzz-XXXXXX";
    char b[] = "/tmp/ordo-fuzz-XXXXXX";
    alone = ::mkdtemp(a);
    middle = ::mkdtemp(b);
    // A valid second segment for `middle`: what a fresh journal starts with.
    auto j = ordo::Journal::open(middle, {.durability = ordo::Durability::none});
  }
};

void put(const std::string& path, const std::uint8_t* data, std::size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
}

void read_all(const std::string& dir, bool tolerant) {
  try {
    std::uint64_t bytes = 0;
    ordo::Journal::read(
        dir, [&](const ordo::RecordView& r) { bytes += r.payload.size(); }, tolerant);
  } catch (const ordo::JournalCorruption&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Dirs dirs;
  put(dirs.alone + "/wal-0000000000000001.log", data, size);
  read_all(dirs.alone, false);
  read_all(dirs.alone, true);
  put(dirs.middle + "/wal-0000000000000000.log", data, size);  // before the valid segment 1
  read_all(dirs.middle, false);
  read_all(dirs.middle, true);
  return 0;
}
