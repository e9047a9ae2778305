#include "journal/posix_file_system.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <vector>

#include "journal/format.hpp"
#include "ordo/journal.hpp"

namespace ordo::detail {

std::string join_path(const std::string& dir, const std::string& name) {
  if (!dir.empty() && dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string parent_directory(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

namespace wal {

void throw_io(const char* call, const std::string& path) {
  const int err = errno;
  throw JournalIoError(std::string("ordo: journal I/O error: ") + call + "(" + path + "): " + std::strerror(err));
}

}  // namespace wal

namespace {

using wal::throw_io;

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_io("open", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw_io("fsync", dir);
}

// Appends go through pwrite, or, once reserve() has allocated the file's
// space and was asked to, are copied into a shared mapping of that space: the same page
// cache pages a pwrite would fill (so a crash of the process keeps them, and
// fdatasync writes them back), without a system call per batch. A copy cut
// short by a crash leaves what a cut write leaves: a torn tail, followed by
// the reservation's zeros.
class PosixAppendFile final : public AppendFile {
 public:
  PosixAppendFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixAppendFile() override {
    unmap();
    ::close(fd_);
  }
  PosixAppendFile(const PosixAppendFile&) = delete;
  PosixAppendFile& operator=(const PosixAppendFile&) = delete;

  void append(const void* data, std::size_t n) override {
    const auto* p = static_cast<const char*>(data);
    if (mapped_ != nullptr && end_ + n <= mapped_bytes_) {
      if (end_ + n > populated_to_) populate_ahead(end_ + n);
      copy_in_order(mapped_ + end_, p, n);
      end_ += n;
      if (end_ - unmapped_to_ >= kUnmapChunk) unmap_behind();
      return;
    }
    while (n > 0) {
      // pwrite at our own end, not O_APPEND: after reserve() the file's
      // size lies beyond what was appended.
      const ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(end_));
      if (w < 0) {
        if (errno == EINTR) continue;
        throw_io("write", path_);
      }
      p += w;
      n -= static_cast<std::size_t>(w);
      end_ += static_cast<std::uint64_t>(w);
    }
  }
  void sync() override {
    if (::fdatasync(fd_) != 0) throw_io("fdatasync", path_);
  }
  void reserve(std::uint64_t bytes, bool copy_appends) override {
    if (bytes <= end_) return;
    int rc;
    do {
      rc = ::fallocate(fd_, 0, 0, static_cast<off_t>(bytes));
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) {
      reserved_ = std::max(reserved_, bytes);
      if (copy_appends) map_reservation();
      return;
    }
    // A file system without fallocate (or without the space) just grows
    // with each append, as it would have without the reservation.
    if (errno != EOPNOTSUPP && errno != ENOSYS && errno != ENOSPC) throw_io("fallocate", path_);
  }
  bool copies(std::size_t n) const noexcept override { return mapped_ != nullptr && end_ + n <= mapped_bytes_; }
  void trim() override {
    unmap();  // a page past the new end would be SIGBUS to touch
    if (reserved_ <= end_) return;
    if (::ftruncate(fd_, static_cast<off_t>(end_)) != 0) throw_io("ftruncate", path_);
    reserved_ = 0;
  }

 private:
  // Ascending 16-byte steps, each behind a signal fence (which keeps the
  // compiler from merging or reordering them): a process killed mid-copy
  // leaves the batch stored up to some step, that step partly, and nothing
  // after. A record is longer than a step, so no whole record can follow a
  // cut one — a reader would take that for corruption, not a torn tail.
  // A plain memcpy promises no order: it may store a range's end first.
  static constexpr std::size_t kStep = 16;
  static_assert(wal::kRecordHeaderBytes + 8 > kStep, "a record must span more than one step");
  static void copy_in_order(char* to, const char* from, std::size_t n) noexcept {
    std::size_t i = 0;
    for (; i + kStep <= n; i += kStep) {
      std::memcpy(to + i, from + i, kStep);
      std::atomic_signal_fence(std::memory_order_seq_cst);
    }
    if (i < n) std::memcpy(to + i, from + i, n - i);
  }
  // Drops our page table entries for the whole pages behind the append
  // point. The pages stay in the page cache, dirty, for the next fdatasync
  // (and a crash of the process) exactly as before; what goes is the
  // writable mapping of them. While a dirty page is mapped, writeback must
  // write-protect it first (so that a later store is seen), and with the
  // process's threads on other cores each such page costs a TLB shootdown
  // of its own: measured, a quarter of durable_enqueue/ordo_async's CPU went
  // to the periodic fdatasync's shootdowns. madvise flushes the TLB once for
  // the whole range. Appends never come back to these pages; the page the
  // append point is in stays mapped.
  static constexpr std::uint64_t kUnmapChunk = 256 * 1024;
  inline static const std::uint64_t kPageBytes = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  void unmap_behind() noexcept {
    const std::uint64_t to = end_ / kPageBytes * kPageBytes;
    if (to <= unmapped_to_) return;
    // Failure only leaves the pages mapped, which is what it was before.
    if (::madvise(mapped_ + unmapped_to_, static_cast<std::size_t>(to - unmapped_to_), MADV_DONTNEED) == 0) unmapped_to_ = to;
  }
  // Maps the pages from the append point to kPopulateChunk past `need` in
  // one call, writable, instead of a page fault on each first store.
  static constexpr std::uint64_t kPopulateChunk = 64 * 1024;
  void populate_ahead(std::uint64_t need) noexcept {
    const std::uint64_t from = std::max(populated_to_, end_ / kPageBytes * kPageBytes);
    const std::uint64_t to = std::min((need + kPopulateChunk + kPageBytes - 1) / kPageBytes * kPageBytes, mapped_bytes_);
    // Failure leaves the pages to fault in one at a time, as without this.
    if (to > from) ::madvise(mapped_ + from, static_cast<std::size_t>(to - from), MADV_POPULATE_WRITE);
    populated_to_ = to;
  }
  // Only space fallocate allocated is mapped: a store into a hole the file
  // system cannot fill (a full disk) would be SIGBUS, not an error to throw.
  // Without a mapping (none possible here) appends stay pwrites.
  void map_reservation() noexcept {
    unmap();
    void* m = ::mmap(nullptr, static_cast<std::size_t>(reserved_), PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (m == MAP_FAILED) return;
    mapped_ = static_cast<char*>(m);
    mapped_bytes_ = reserved_;
    unmapped_to_ = std::min(end_ / kPageBytes * kPageBytes, mapped_bytes_);
    populated_to_ = unmapped_to_;
  }
  void unmap() noexcept {
    if (mapped_ == nullptr) return;
    ::munmap(mapped_, static_cast<std::size_t>(mapped_bytes_));
    mapped_ = nullptr;
    mapped_bytes_ = 0;
    unmapped_to_ = 0;
    populated_to_ = 0;
  }

  const int fd_;
  const std::string path_;
  std::uint64_t end_ = 0;       // bytes appended: the file is created empty
  std::uint64_t reserved_ = 0;  // the size reserve() gave it
  char* mapped_ = nullptr;      // [0, mapped_bytes_) of the file, shared, while reserved
  std::uint64_t mapped_bytes_ = 0;
  std::uint64_t unmapped_to_ = 0;  // [0, unmapped_to_) of the mapping has no page table entries left
  std::uint64_t populated_to_ = 0;  // [unmapped_to_, populated_to_) is mapped writable already
};

// flock(LOCK_EX | LOCK_NB) on dir/LOCK: released when the descriptor closes.
class PosixLock final : public DirectoryLock {
 public:
  explicit PosixLock(const std::string& dir) {
    const std::string path = join_path(dir, "LOCK");
    fd_ = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd_ < 0) throw_io("open", path);
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(fd_);
      if (err == EWOULDBLOCK) {
        throw JournalLocked("ordo: journal " + dir + " is already open (its LOCK is held by another Journal, " +
                            "in this process or another); one process may open a journal at a time");
      }
      errno = err;
      throw_io("flock", path);
    }
  }
  ~PosixLock() override { ::close(fd_); }
  PosixLock(const PosixLock&) = delete;
  PosixLock& operator=(const PosixLock&) = delete;

 private:
  int fd_ = -1;
};

// Opens `path` read-only and reports its size; the caller closes it.
int open_for_reading(const std::string& path, std::size_t& size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_io("open", path);
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw_io("fstat", path);
  }
  size = static_cast<std::size_t>(st.st_size);
  return fd;
}

class MappedBytes final : public FileBytes {
 public:
  explicit MappedBytes(const std::string& path) {
    const int fd = open_for_reading(path, size_);
    if (size_ > 0) {
      // MAP_POPULATE: one pass maps the whole (page-cached) file instead of a
      // fault per page, which dominates a replay on virtual machines.
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        throw_io("mmap", path);
      }
      ::madvise(p, size_, MADV_SEQUENTIAL);
      data_ = static_cast<const unsigned char*>(p);
    }
    ::close(fd);
  }
  ~MappedBytes() override {
    if (data_ != nullptr) ::munmap(const_cast<unsigned char*>(data_), size_);
  }
  MappedBytes(const MappedBytes&) = delete;
  MappedBytes& operator=(const MappedBytes&) = delete;
};

// A file's bytes copied with pread, up to the end it has now.
class CopiedBytes final : public FileBytes {
 public:
  explicit CopiedBytes(const std::string& path) {
    std::size_t size = 0;
    const int fd = open_for_reading(path, size);
    copy_.resize(size);
    std::size_t got = 0;
    while (got < copy_.size()) {
      const ssize_t r = ::pread(fd, copy_.data() + got, copy_.size() - got, static_cast<off_t>(got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        ::close(fd);
        throw_io("pread", path);
      }
      if (r == 0) break;  // cut meanwhile
      got += static_cast<std::size_t>(r);
    }
    ::close(fd);
    copy_.resize(got);
    data_ = copy_.data();
    size_ = copy_.size();
  }

 private:
  std::vector<unsigned char> copy_;
};

class PosixFileSystem final : public FileSystem {
 public:
  explicit PosixFileSystem(bool map_reads) : map_reads_(map_reads) {}

  bool make_directory(const std::string& dir) override {
    const bool created = ::mkdir(dir.c_str(), 0755) == 0;
    if (!created && errno != EEXIST) throw_io("mkdir", dir);
    struct stat st{};
    if (::stat(dir.c_str(), &st) != 0) throw_io("stat", dir);
    if (!S_ISDIR(st.st_mode)) {
      errno = ENOTDIR;
      throw_io("open journal directory", dir);
    }
    return created;
  }

  std::unique_ptr<DirectoryLock> lock_directory(const std::string& dir) override {
    return std::make_unique<PosixLock>(dir);
  }

  std::vector<std::string> list(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) throw_io("opendir", dir);
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
    std::sort(names.begin(), names.end());
    return names;
  }

  void sync_directory(const std::string& dir) override { fsync_directory(dir); }

  std::unique_ptr<AppendFile> create(const std::string& path, Create how) override {
    // Read and write: a shared writable mapping of the reservation needs both.
    const int flags = how == Create::exclusive ? O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC
                                               : O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC;
    const int fd = ::open(path.c_str(), flags, 0644);
    if (fd < 0) throw_io("open", path);
    return std::make_unique<PosixAppendFile>(fd, path);
  }

  void rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) throw_io("rename", from + " -> " + to);
  }

  void remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) throw_io("unlink", path);
  }

  void truncate(const std::string& path, std::uint64_t size) override {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) throw_io("open", path);
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0 || ::fsync(fd) != 0) {
      const int err = errno;
      ::close(fd);
      errno = err;
      throw_io("ftruncate", path);
    }
    ::close(fd);
  }

  std::optional<std::uint64_t> size_of(const std::string& path) override {
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT) return std::nullopt;
      throw_io("stat", path);
    }
    return static_cast<std::uint64_t>(st.st_size);
  }

  std::unique_ptr<FileBytes> read(const std::string& path) override {
    if (map_reads_) return std::make_unique<MappedBytes>(path);
    return std::make_unique<CopiedBytes>(path);
  }
  bool writer_may_be_live() const noexcept override { return !map_reads_; }  // the writer holds the LOCK, not us

 private:
  const bool map_reads_;
};

}  // namespace

std::shared_ptr<FileSystem> posix_file_system() {
  static const std::shared_ptr<FileSystem> instance = std::make_shared<PosixFileSystem>(true);
  return instance;
}

std::shared_ptr<FileSystem> posix_file_system_without_lock() {
  static const std::shared_ptr<FileSystem> instance = std::make_shared<PosixFileSystem>(false);
  return instance;
}

}  // namespace ordo::detail
