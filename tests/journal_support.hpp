// Helpers for the journal tests: scratch directories and record capture.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "ordo/journal.hpp"

namespace ordo::test {

// A fresh directory under /tmp, removed with everything in it at the end.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "ordo-journal-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct Captured {
  RecordType type;
  std::uint64_t task;
  std::string body;  // the payload after the task id
  bool operator==(const Captured&) const = default;
};

inline std::vector<Captured> read_all(const std::string& dir, RecoveryReport* report = nullptr, bool tolerant = false) {
  std::vector<Captured> out;
  RecoveryReport r = Journal::read(
      dir,
      [&](const RecordView& v) {
        out.push_back({v.type, v.task, std::string(reinterpret_cast<const char*>(v.payload.data()) + 8,
                                                   v.payload.size() - 8)});
      },
      tolerant);
  if (report != nullptr) *report = r;
  return out;
}

inline std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

inline std::string text_of(std::span<const std::byte> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

inline std::string segment_name(std::uint64_t n) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "wal-%016llu.log", static_cast<unsigned long long>(n));
  return buf;
}

}  // namespace ordo::test
