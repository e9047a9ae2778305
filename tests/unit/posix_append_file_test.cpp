// The POSIX AppendFile: appends into a reserved file are copied into a shared
// mapping of the reservation, and past it are written. Either way the bytes
// land in order, are visible to a reader at once, survive the writing
// process's death without a sync, and a trim leaves exactly what was appended.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
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
    file->reserve(64 << 10, true);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      append_pieces(*file, 20000);
      ::_exit(0);  // no sync, no close, no destructor
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    // The same pieces, to compare with (the parent's file is not used).
    test::ScratchDir other;
    auto twin = detail::posix_file_system()->create(other.file("g"), detail::FileSystem::Create::exclusive);
    expected = append_pieces(*twin, 20000);
  }
  const std::string got = contents(*detail::posix_file_system(), path);
  ASSERT_EQ(got.size(), 64u << 10) << "the reservation is still the file's size";
  EXPECT_EQ(got.substr(0, expected.size()), expected);
  EXPECT_EQ(got.find_first_not_of('\0', expected.size()), std::string::npos) << "the rest reads as zeros";
}

}  // namespace
}  // namespace ordo
