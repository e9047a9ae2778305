// Thin POSIX helpers for the journal: every failure becomes a JournalIoError
// naming the call, the path and errno's text. Thread-safety: stateless, except
// that each object (FileLock, MappedFile) is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ordo::detail::wal {

[[noreturn]] void throw_io(const char* call, const std::string& path);

std::string join(const std::string& dir, const std::string& name);
void make_directory(const std::string& dir);  // creates it if absent (one level)
std::vector<std::string> list_directory(const std::string& dir);
void fsync_directory(const std::string& dir);
void write_all(int fd, const void* data, std::size_t n, const std::string& path);
void sync_data(int fd, const std::string& path);  // fdatasync
std::uint64_t file_size(const std::string& path);
void truncate_file(const std::string& path, std::uint64_t size);  // and syncs it
void remove_file(const std::string& path);                        // absent is fine
void rename_file(const std::string& from, const std::string& to);

// The one-process-at-a-time lock: flock(LOCK_EX | LOCK_NB) on dir/LOCK.
class FileLock {
 public:
  explicit FileLock(const std::string& dir);  // throws JournalLocked if held
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

// A whole file mapped read-only (empty files map to nothing).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const unsigned char* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }

 private:
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace ordo::detail::wal
