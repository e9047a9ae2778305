// The POSIX AppendFile: appends into a reserved file are copied into a shared
// mapping of the reservation, and past it are written. Either way the bytes
// land in order, are visible to a reader at once, survive the writing
// process's death without a sync, and a trim leaves exactly what was appended.
// The mapping keeps no pages behind the append point mapped for long.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "journal/file_system.hpp"
#include "journal_support.hpp"

namespace ordo {
namespace {

namespace fs = std::filesystem;

std::string contents(detail::FileSystem& files, const std::string& path) {
  const auto bytes = files.read(path);
  return std::string(reinterpret_cast<const char*>(bytes->data()), bytes->size());
}

// Appends pieces of rising sizes; returns what was appended, in order.
std::string append_pieces(detail::AppendFile& file, std::size_t total) {
  std::string all;
  for (std::size_t i = 0; all.size() < total; ++i) {
    const std::string piece(1 + i % 97, static_cast<char>('a' + i % 26));
    file.append(piece.data(), piece.size());
    all += piece;
  }
  return all;
}

TEST(PosixAppendFile, AppendsIntoAndPastTheReservationLandInOrder) {
  for (bool copy_appends : {true, false}) {
    SCOPED_TRACE(copy_appends ? "copied into the mapping" : "written");
    test::ScratchDir dir;
    const auto files = detail::posix_file_system();
    const std::string path = dir.file("f");
    auto file = files->create(path, detail::FileSystem::Create::exclusive);
    const std::string header = "HEADER--";
    file->append(header.data(), header.size());  // before the reservation: written
    constexpr std::uint64_t kReserved = 16 << 10;
    file->reserve(kReserved, copy_appends);
    ASSERT_EQ(fs::file_size(path), kReserved);
    const std::string body = append_pieces(*file, 40 << 10);  // crosses the reservation's end
    const std::string expected = header + body;
    EXPECT_EQ(fs::file_size(path), expected.size()) << "appends past the reservation did not grow the file";
    EXPECT_EQ(contents(*files, path), expected) << "visible before any sync";
    file->sync();
    file->trim();
    EXPECT_EQ(contents(*files, path), expected);
  }
}

// The resident size of this process's mappings of `path`, from
// /proc/self/smaps: the pages that have page table entries now.
std::uint64_t mapped_resident_bytes(const std::string& path) {
  std::ifstream smaps("/proc/self/smaps");
  std::uint64_t kib = 0;
  bool in_file = false;
  for (std::string line; std::getline(smaps, line);) {
    const bool header = !line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) && line.find('-') < line.find(' ');
    if (header) {
      in_file = line.size() >= path.size() && line.compare(line.size() - path.size(), path.size(), path) == 0;
    } else if (in_file && line.starts_with("Rss:")) {
      kib += std::stoull(line.substr(4));
    }
  }
  return kib << 10;
}

// The pages an append has left behind are unmapped (they stay in the page
// cache, dirty, for the next sync): a mapped dirty page costs writeback a
// TLB shootdown each. Their bytes are the file's all the same.
// A new file with 8 MiB reserved, its appends copied into the mapping.
struct MappedFile {
  MappedFile() { file->reserve(8 << 20, true); }
  test::ScratchDir dir;
  std::shared_ptr<detail::FileSystem> files = detail::posix_file_system();
  std::string path = dir.file("f");
  std::unique_ptr<detail::AppendFile> file = files->create(path, detail::FileSystem::Create::exclusive);
};

TEST(PosixAppendFile, PagesBehindTheAppendPointAreUnmappedAndKeepTheirBytes) {
  MappedFile m;
  auto& [dir, files, path, file] = m;
  ASSERT_TRUE(file->copies(1)) << "no mapping: nothing to test";
  std::string expected;
  for (int part = 0; part < 4; ++part) {
    expected += append_pieces(*file, (part + 1) * (1 << 20) - expected.size());
    EXPECT_LE(mapped_resident_bytes(path), 512u << 10) << "after " << expected.size() << " bytes";
    if (part % 2 == 1) file->sync();
  }
  EXPECT_EQ(contents(*files, path).substr(0, expected.size()), expected);
  file->trim();
  EXPECT_EQ(contents(*files, path), expected);
}

// The pages ahead of the append point are mapped writable in one call per
// stretch (MADV_POPULATE_WRITE), not by a page fault on each page's first
// store: faults under the journal's lock were a tenth of
// durable_enqueue/ordo_async's CPU.
TEST(PosixAppendFile, PagesAheadOfTheAppendPointAreMappedBeforeTheAppendsReachThem) {
  MappedFile m;
  auto& [dir, files, path, file] = m;
  ASSERT_TRUE(file->copies(1)) << "no mapping: nothing to test";
  const char byte = 'x';
  file->append(&byte, 1);
  EXPECT_GE(mapped_resident_bytes(path), 64u << 10) << "one page faulted in, none ahead";
  std::string expected(1, byte);
  expected += append_pieces(*file, 3 << 20);
  EXPECT_LE(mapped_resident_bytes(path), 512u << 10) << "mapped ahead, but never far";
  file->trim();
  EXPECT_EQ(contents(*files, path), expected);
}

TEST(PosixAppendFile, ATrimLeavesExactlyTheAppendedBytesAndLaterAppendsFollowThem) {
  test::ScratchDir dir;
  const auto files = detail::posix_file_system();
  const std::string path = dir.file("f");
  auto file = files->create(path, detail::FileSystem::Create::exclusive);
  file->reserve(64 << 10, true);
  std::string expected = append_pieces(*file, 5000);
  file->trim();
  EXPECT_EQ(fs::file_size(path), expected.size());
  expected += append_pieces(*file, 3000);  // no mapping any more: written
  file.reset();
  EXPECT_EQ(contents(*files, path), expected);
}

// What a kill -9 leaves: the mapping's pages are the file's page cache, so
// the bytes copied before the death are in the file, unsynced and unclosed.
TEST(PosixAppendFile, BytesCopiedIntoTheMappingSurviveTheDeathOfTheProcess) {
  test::ScratchDir dir;
  const std::string path = dir.file("f");
  std::string expected;
  {
    auto file = detail::posix_file_system()->create(path, detail::FileSystem::Create::exclusive);
    file->reserve(2 << 20, true);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      append_pieces(*file, 1 << 20);  // past several unmapped stretches
      ::_exit(0);  // no sync, no close, no destructor
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    // The same pieces, to compare with (the parent's file is not used).
    test::ScratchDir other;
    auto twin = detail::posix_file_system()->create(other.file("g"), detail::FileSystem::Create::exclusive);
    expected = append_pieces(*twin, 1 << 20);
  }
  const std::string got = contents(*detail::posix_file_system(), path);
  ASSERT_EQ(got.size(), 2u << 20) << "the reservation is still the file's size";
  EXPECT_EQ(got.substr(0, expected.size()), expected);
  EXPECT_EQ(got.find_first_not_of('\0', expected.size()), std::string::npos) << "the rest reads as zeros";
}

}  // namespace
}  // namespace ordo
