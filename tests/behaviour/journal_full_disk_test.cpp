// A journal on a file system that fills up: on a real ext4 (a loop-mounted
// image), another file takes every free block while the journal is open.
// Outside sync mode the open segment's records are copied into a mapping of
// its reserved space; those copies must go on working (the space is
// allocated), and the first write that needs space the disk no longer has
// must be a JournalIoError naming ENOSPC — never a SIGBUS — with every
// record a sync() acknowledged still there when the disk has room again.
//
// Needs root (mount). Run by the README's test command and by CI, both as
// root; elsewhere it says why it did not run.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "journal_support.hpp"
#include "ordo/journal.hpp"

namespace ordo {
namespace {

namespace fs = std::filesystem;
using test::ScratchDir;

// A 32 MiB ext4 image mounted on a scratch directory for the test's length.
class SmallExt4 {
 public:
  SmallExt4() {
    image_ = scratch_.file("disk.img");
    mount_point_ = scratch_.file("mnt");
    fs::create_directory(mount_point_);
    const std::string make = "truncate -s 32M " + image_ + " && mkfs.ext4 -q -F " + image_ + " >/dev/null 2>&1";
    if (std::system(make.c_str()) != 0) return;
    mounted_ = std::system(("mount -o loop " + image_ + " " + mount_point_ + " 2>/dev/null").c_str()) == 0;
  }
  ~SmallExt4() {
    if (mounted_) (void)std::system(("umount " + mount_point_).c_str());
  }
  bool mounted() const { return mounted_; }
  std::string path(const std::string& name) const { return mount_point_ + "/" + name; }

 private:
  ScratchDir scratch_;
  std::string image_, mount_point_;
  bool mounted_ = false;
};

// Writes `path` until the file system refuses: afterwards no block is free.
void fill_disk(const std::string& path) {
  const int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  const std::vector<char> block(1 << 16, 'f');
  for (;;) {
    if (::write(fd, block.data(), block.size()) <= 0) break;
  }
  for (;;) {  // the last partial blocks
    if (::write(fd, block.data(), 512) <= 0) break;
  }
  ::fsync(fd);
  ::close(fd);
}

// Runs in a child process, so that a SIGBUS is reported as one. Appends
// until the journal reports an error, syncing every 500 records; writes the
// number of records the last successful sync() covered to `acked_fd`.
[[noreturn]] void append_until_full(const std::string& dir, const std::string& filler, Durability mode, int acked_fd) {
  std::uint64_t acked = 0;
  int code = 0;
  try {
    auto j = Journal::open(dir, {.durability = mode, .segment_bytes = 4 << 20});
    fill_disk(filler);
    const std::string body(100, 'r');
    for (std::uint64_t task = 1; task < 1'000'000; ++task) {
      j->append(RecordType::enqueue, task, test::bytes(body));
      if (task % 500 == 0) {
        j->sync();
        acked = task;
      }
    }
    code = 2;  // a million records on a full 32 MiB disk: the error never came
  } catch (const JournalIoError& e) {
    code = std::string(e.what()).find("No space left on device") != std::string::npos ? 0 : 3;
    if (code != 0) std::fprintf(stderr, "unexpected error: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "not a JournalIoError: %s\n", e.what());
    code = 4;
  }
  if (::write(acked_fd, &acked, sizeof acked) != sizeof acked) code = 5;
  ::_exit(code);
}

TEST(JournalFullDisk, AFullDiskIsAnIoErrorNamingENOSPCAndLosesNothingSynced) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a loop file system";
  for (Durability mode : {Durability::async, Durability::none, Durability::sync}) {
    SmallExt4 disk;
    ASSERT_TRUE(disk.mounted()) << "could not make and loop-mount a 32 MiB ext4 image (root, mkfs.ext4, a loop device)";
    int pipe_fds[2];
    ASSERT_EQ(::pipe(pipe_fds), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) append_until_full(disk.path("journal"), disk.path("filler"), mode, pipe_fds[1]);
    ::close(pipe_fds[1]);
    std::uint64_t acked = 0;
    const bool reported = ::read(pipe_fds[0], &acked, sizeof acked) == sizeof acked;
    ::close(pipe_fds[0]);
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_FALSE(WIFSIGNALED(status)) << to_string(mode) << ": the appending process died of signal " << WTERMSIG(status)
                                      << (WTERMSIG(status) == SIGBUS ? " (SIGBUS)" : "");
    ASSERT_EQ(WEXITSTATUS(status), 0) << to_string(mode) << ": see the child's message above";
    ASSERT_TRUE(reported);
    EXPECT_GT(acked, 0u) << to_string(mode) << ": nothing was synced before the disk filled";
    std::printf("%s: %llu records synced before the disk was full\n", to_string(mode), static_cast<unsigned long long>(acked));

    fs::remove(disk.path("filler"));
    auto reopened = Journal::open(disk.path("journal"), {.durability = mode});
    EXPECT_GE(reopened->recovery().records, acked)
        << to_string(mode) << ": records acknowledged by a sync() before the disk filled are gone";
  }
}

}  // namespace
}  // namespace ordo
