// The journal's one door to storage: every file operation of the writer,
// the reader and the compactor goes through a FileSystem, so that tests can
// substitute one that models a power cut (tests/power_cut_file_system.hpp)
// and the fuzz target can read from memory. The default is POSIX
// (posix_file_system.cpp). The cost is one virtual call per system call, never one
// per record.
//
// Thread-safety: a FileSystem may be called from several threads at once (the
// writer, the compactor, a reader); an AppendFile or a FileBytes is used by one
// thread at a time, except that one append may run beside a sync() of the
// same file (the journal writes a START while another thread syncs). Every failure throws JournalIoError naming the call, the
// path and the cause.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ordo::detail {

// A file being written from its start, append only (a segment, a snapshot).
class AppendFile {
 public:
  virtual ~AppendFile() = default;
  virtual void append(const void* data, std::size_t n) = 0;  // all n bytes, or throws
  // fdatasync: the bytes appended so far survive a power cut. The file's
  // name does not, until its directory is synced too.
  virtual void sync() = 0;
  // Makes the file `bytes` long ahead of the appends, the space after them
  // reading as zeros, so that a sync of later appends commits no change of
  // size (fallocate). Appends still follow the last appended byte. Only a
  // hint: a file system without the call keeps the file as it is.
  // `copy_appends`: appends into the reserved space may be copied into a
  // mapping of it rather than written (no system call each; the same bytes
  // in the same page cache). Also a hint.
  virtual void reserve(std::uint64_t bytes, bool copy_appends) {
    (void)bytes;
    (void)copy_appends;
  }
  // Cuts what reserve() added after the last appended byte; durable with
  // the next sync().
  virtual void trim() {}
  // True if an append of `n` bytes now would be a copy into memory (the
  // mapped reservation): no system call, cheap enough to make under a lock.
  virtual bool copies(std::size_t n) const noexcept {
    (void)n;
    return false;
  }
};

// A whole file's bytes, read-only, valid while this object lives.
class FileBytes {
 public:
  virtual ~FileBytes() = default;
  const unsigned char* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }

 protected:
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
};

// Held while a journal is open for writing; releasing it is destroying it.
class DirectoryLock {
 public:
  virtual ~DirectoryLock() = default;
};

class FileSystem {
 public:
  enum class Create { exclusive, replace };  // refuse an existing file / truncate it

  virtual ~FileSystem() = default;
  // Creates `dir` if absent (one level): true if it did. Throws if it exists
  // and is not a directory. Like any name, the new one survives a power cut
  // only once its parent directory is synced.
  virtual bool make_directory(const std::string& dir) = 0;
  // Throws JournalLocked if another holder (this process or another) has it.
  virtual std::unique_ptr<DirectoryLock> lock_directory(const std::string& dir) = 0;
  virtual std::vector<std::string> list(const std::string& dir) = 0;  // names, sorted
  // fsync of the directory: names created, renamed or removed in it so far survive a power cut.
  virtual void sync_directory(const std::string& dir) = 0;
  virtual std::unique_ptr<AppendFile> create(const std::string& path, Create how) = 0;
  virtual void rename(const std::string& from, const std::string& to) = 0;
  virtual void remove(const std::string& path) = 0;                         // absent is fine
  virtual void truncate(const std::string& path, std::uint64_t size) = 0;  // and syncs the file
  virtual std::optional<std::uint64_t> size_of(const std::string& path) = 0;  // nullopt: absent
  // The file's bytes; throws JournalIoError if it is absent.
  virtual std::unique_ptr<FileBytes> read(const std::string& path) = 0;
  // True for a reader beside a live writer (one that does not hold the
  // LOCK): a read of the last segment may catch a record in mid-write and
  // the records after it whole, so the reader reads it again before it
  // calls that corruption.
  virtual bool writer_may_be_live() const noexcept { return false; }
};

// The operating system's files. Shared: it holds no state. Its read() maps
// the file: for the journal's own process, which holds the LOCK, so no one
// else shrinks a file under the mapping.
std::shared_ptr<FileSystem> posix_file_system();
// The same, for a reader that does not hold the LOCK (Journal::read, so
// ordo-wal verify beside a live writer): read() copies the bytes, because
// the writer trims a segment's reservation when it closes it, and touching
// a mapping past a file's new end is SIGBUS. A file cut meanwhile reads
// shorter, as a torn tail would.
std::shared_ptr<FileSystem> posix_file_system_without_lock();

std::string join_path(const std::string& dir, const std::string& name);
std::string parent_directory(std::string path);  // "." for a bare name, "/" for a top-level one

}  // namespace ordo::detail
