// An in-memory FileSystem that models what a power cut leaves on disk, for the
// journal's power-cut tests.
//
// The model (what a POSIX file system promises, and no more):
// - a file's bytes survive only up to its last sync(); of what was appended
//   since, a power cut keeps any prefix (nothing, some bytes cut at any
//   offset, or all of it), and a file system that had already extended the
//   file may show zeros instead of the last of those bytes;
// - a name (create, rename, remove) survives only once its directory is
//   synced; of the name changes since, a power cut keeps a prefix, in order
//   (metadata is journaled in order by ext4 and xfs): a file created and
//   synced whose directory was not synced may vanish, and a rename not
//   followed by a directory sync may be undone;
// - truncate() syncs the file, as the journal's contract says;
// - reserve() makes a file longer with zeros after its appended bytes (the
//   appends go on after those bytes, into the zeros), trim() cuts the zeros
//   off again; either size survives only once synced.
// After cut_after(n), the n-th next mutating operation and every operation
// after it (reads included) throw JournalIoError: the machine is off. A
// crash image can be taken at any moment, and tests build a new file system
// from one (everything in it durable) to play the next boot.
//
// Thread-safety: every member may be called from any thread; one mutex
// serialises them all (the journal's threads, the test's).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "journal/file_system.hpp"
#include "ordo/journal.hpp"

namespace ordo::test {

// What is on the disk after a power cut: directories and files by path.
struct DiskImage {
  std::set<std::string> directories;            // "/" first
  std::map<std::string, std::string> files;     // path -> bytes
};

class PowerCutFileSystem final : public detail::FileSystem {
 public:
  // A disk holding `image`, all of it durable (a fresh one: just "/").
  explicit PowerCutFileSystem(const DiskImage& image = {}) {
    nodes_.push_back(Node{.directory = true});
    for (const std::string& dir : image.directories) {
      if (dir != "/") make_durable(dir, true, {});
    }
    for (const auto& [path, bytes] : image.files) make_durable(path, false, bytes);
  }

  // The power goes out just before the n-th next mutating operation (1: the next).
  void cut_after(std::uint64_t n) {
    std::lock_guard lock(mu_);
    cut_at_ = operations_ + n;
  }
  void cut_now() {
    std::lock_guard lock(mu_);
    cut_at_ = operations_;
    off_ = true;
  }
  bool is_off() const {
    std::lock_guard lock(mu_);
    return off_;
  }
  // Mutating operations done so far: a test reads it after an append was
  // acknowledged, so that an image taken at a later count must hold that append.
  std::uint64_t operations() const {
    std::lock_guard lock(mu_);
    return operations_;
  }
  // Called (under the file system's lock, with the count of operations done)
  // before each mutating operation: tests take images there.
  void on_operation(std::function<void(std::uint64_t done)> fn) {
    std::lock_guard lock(mu_);
    on_operation_ = std::move(fn);
  }

  // One disk state a power cut now could leave; `rng` picks among them.
  DiskImage crash_image(std::mt19937_64& rng) const {
    std::lock_guard lock(mu_);
    return crash_image_locked(rng);
  }
  DiskImage crash_image_locked(std::mt19937_64& rng) const {
    DiskImage image;
    image_of(0, "/", rng, image, false);
    return image;
  }
  // The worst a power cut now could leave: only what was synced.
  DiskImage synced_only() const {
    std::lock_guard lock(mu_);
    DiskImage image;
    std::mt19937_64 unused;
    image_of(0, "/", unused, image, true);
    return image;
  }
  // Everything as the running system sees it (as if all were synced).
  DiskImage current() const {
    std::lock_guard lock(mu_);
    DiskImage image;
    current_of(0, "/", image);
    return image;
  }

  bool make_directory(const std::string& dir) override {
    std::lock_guard lock(mu_);
    step("mkdir", dir);
    auto [parent, name] = split(dir);
    Node& p = nodes_[parent];
    auto it = p.entries.find(name);
    if (it != p.entries.end()) {
      if (!nodes_[it->second].directory) fail("mkdir", dir, "Not a directory");
      return false;
    }
    nodes_.push_back(Node{.directory = true});
    link(parent, name, nodes_.size() - 1);
    return true;
  }

  std::unique_ptr<detail::DirectoryLock> lock_directory(const std::string& dir) override {
    std::lock_guard lock(mu_);
    if (off_) fail("flock", dir, "power cut");
    if (!locked_.insert(dir).second) throw JournalLocked("ordo: journal " + dir + " is already open");
    return std::make_unique<Lock>(this, dir);
  }

  std::vector<std::string> list(const std::string& dir) override {
    std::lock_guard lock(mu_);
    if (off_) fail("opendir", dir, "power cut");
    const Node& d = nodes_[resolve(dir, "opendir")];
    std::vector<std::string> names;
    for (const auto& e : d.entries) names.push_back(e.first);
    return names;  // a std::map: sorted
  }

  void sync_directory(const std::string& dir) override {
    std::lock_guard lock(mu_);
    step("fsync", dir);
    Node& d = nodes_[resolve(dir, "fsync")];
    d.durable_entries = d.entries;
    d.unsynced.clear();
  }

  std::unique_ptr<detail::AppendFile> create(const std::string& path, Create how) override {
    std::lock_guard lock(mu_);
    step("open", path);
    auto [parent, name] = split(path);
    Node& p = nodes_[parent];
    auto it = p.entries.find(name);
    if (it != p.entries.end()) {
      if (how == Create::exclusive) fail("open", path, "File exists");
      nodes_[it->second].bytes.clear();  // O_TRUNC: the new size is not durable until a sync
      nodes_[it->second].reserved = 0;
      return std::make_unique<File>(this, it->second, path);
    }
    nodes_.push_back(Node{});
    link(parent, name, nodes_.size() - 1);
    return std::make_unique<File>(this, nodes_.size() - 1, path);
  }

  void rename(const std::string& from, const std::string& to) override {
    std::lock_guard lock(mu_);
    step("rename", from);
    auto [parent, name] = split(from);
    auto [to_parent, to_name] = split(to);
    if (parent != to_parent) fail("rename", from, "across directories: not modelled");
    Node& p = nodes_[parent];
    auto it = p.entries.find(name);
    if (it == p.entries.end()) fail("rename", from, "No such file or directory");
    const std::size_t node = it->second;
    p.entries.erase(it);
    p.entries[to_name] = node;
    p.unsynced.push_back({Change::rename, name, to_name, node});
  }

  void remove(const std::string& path) override {
    std::lock_guard lock(mu_);
    step("unlink", path);
    auto [parent, name] = split(path);
    Node& p = nodes_[parent];
    auto it = p.entries.find(name);
    if (it == p.entries.end()) return;
    p.entries.erase(it);
    p.unsynced.push_back({Change::unlink, name, {}, 0});
  }

  void truncate(const std::string& path, std::uint64_t size) override {
    std::lock_guard lock(mu_);
    step("ftruncate", path);
    Node& f = nodes_[resolve(path, "ftruncate")];
    f.bytes = padded(f.bytes, f.reserved);
    f.bytes.resize(std::min<std::uint64_t>(size, f.bytes.size()));
    f.durable = f.bytes;
    f.reserved = f.durable_reserved = 0;
  }

  std::optional<std::uint64_t> size_of(const std::string& path) override {
    std::lock_guard lock(mu_);
    if (off_) fail("stat", path, "power cut");
    auto node = find(path);
    if (!node) return std::nullopt;
    return std::max<std::uint64_t>(nodes_[*node].bytes.size(), nodes_[*node].reserved);
  }

  std::unique_ptr<detail::FileBytes> read(const std::string& path) override {
    std::lock_guard lock(mu_);
    if (off_) fail("open", path, "power cut");
    const Node& f = nodes_[resolve(path, "open")];
    return std::make_unique<Bytes>(padded(f.bytes, f.reserved));
  }

 private:
  struct Change {
    enum Kind { link, unlink, rename } kind;
    std::string name, to;
    std::size_t node;
  };
  struct Node {
    bool directory = false;
    std::string bytes, durable;                               // a file: now, and as of its last sync
    std::uint64_t reserved = 0, durable_reserved = 0;          // a file's size by reserve(): zeros after `bytes`
    std::map<std::string, std::size_t> entries, durable_entries;  // a directory: now, and as of its last sync
    std::vector<Change> unsynced;                              // a directory: changes since its last sync
  };

  class File final : public detail::AppendFile {
   public:
    File(PowerCutFileSystem* fs, std::size_t node, std::string path) : fs_(fs), node_(node), path_(std::move(path)) {}
    void append(const void* data, std::size_t n) override {
      std::lock_guard lock(fs_->mu_);
      fs_->step("write", path_);
      fs_->nodes_[node_].bytes.append(static_cast<const char*>(data), n);
    }
    void sync() override {
      std::lock_guard lock(fs_->mu_);
      fs_->step("fdatasync", path_);
      fs_->nodes_[node_].durable = fs_->nodes_[node_].bytes;
      fs_->nodes_[node_].durable_reserved = fs_->nodes_[node_].reserved;
    }
    // copy_appends changes no bytes: the model's appends are memory already.
    // It only makes copies() say what a mapped POSIX file would, so that
    // the journal takes the same paths here as there.
    void reserve(std::uint64_t bytes, bool copy_appends) override {
      std::lock_guard lock(fs_->mu_);
      fs_->step("fallocate", path_);
      fs_->nodes_[node_].reserved = std::max(fs_->nodes_[node_].reserved, bytes);
      copy_appends_ = copy_appends;
    }
    void trim() override {
      std::lock_guard lock(fs_->mu_);
      fs_->step("ftruncate", path_);
      fs_->nodes_[node_].reserved = 0;
      copy_appends_ = false;
    }
    bool copies(std::size_t n) const noexcept override {
      std::lock_guard lock(fs_->mu_);
      return copy_appends_ && fs_->nodes_[node_].bytes.size() + n <= fs_->nodes_[node_].reserved;
    }

   private:
    PowerCutFileSystem* fs_;
    std::size_t node_;
    std::string path_;
    bool copy_appends_ = false;  // fs_->mu_
  };

  class Bytes final : public detail::FileBytes {
   public:
    explicit Bytes(std::string copy) : copy_(std::move(copy)) {
      data_ = reinterpret_cast<const unsigned char*>(copy_.data());
      size_ = copy_.size();
    }

   private:
    std::string copy_;
  };

  class Lock final : public detail::DirectoryLock {
   public:
    Lock(PowerCutFileSystem* fs, std::string dir) : fs_(fs), dir_(std::move(dir)) {}
    ~Lock() override {
      std::lock_guard lock(fs_->mu_);
      fs_->locked_.erase(dir_);
    }

   private:
    PowerCutFileSystem* fs_;
    std::string dir_;
  };

  [[noreturn]] static void fail(const char* call, const std::string& path, const char* why) {
    throw JournalIoError(std::string("ordo: journal I/O error: ") + call + "(" + path + "): " + why);
  }

  // Counts a mutating operation; the power may go out here.
  void step(const char* call, const std::string& path) {
    if (!off_ && operations_ >= cut_at_) off_ = true;
    if (off_) fail(call, path, "power cut");
    if (on_operation_) on_operation_(operations_);
    ++operations_;
  }

  static std::vector<std::string> parts(const std::string& path) {
    std::vector<std::string> out;
    std::size_t at = 0;
    while (at < path.size()) {
      std::size_t slash = path.find('/', at);
      if (slash == std::string::npos) slash = path.size();
      if (slash > at) out.push_back(path.substr(at, slash - at));
      at = slash + 1;
    }
    return out;
  }
  std::optional<std::size_t> find(const std::string& path) const {
    std::size_t node = 0;
    for (const std::string& part : parts(path)) {
      const Node& d = nodes_[node];
      auto it = d.entries.find(part);
      if (!d.directory || it == d.entries.end()) return std::nullopt;
      node = it->second;
    }
    return node;
  }
  std::size_t resolve(const std::string& path, const char* call) const {
    auto node = find(path);
    if (!node) fail(call, path, "No such file or directory");
    return *node;
  }
  std::pair<std::size_t, std::string> split(const std::string& path) const {
    std::vector<std::string> p = parts(path);
    if (p.empty()) fail("open", path, "Is the root");
    std::string parent;
    for (std::size_t i = 0; i + 1 < p.size(); ++i) parent += "/" + p[i];
    const std::size_t dir = resolve(parent.empty() ? "/" : parent, "open");
    if (!nodes_[dir].directory) fail("open", path, "Not a directory");
    return {dir, p.back()};
  }
  void link(std::size_t parent, const std::string& name, std::size_t node) {
    nodes_[parent].entries[name] = node;
    nodes_[parent].unsynced.push_back({Change::link, name, {}, node});
  }
  void make_durable(const std::string& path, bool directory, const std::string& bytes) {
    auto [parent, name] = split(path);
    nodes_.push_back(Node{.directory = directory, .bytes = bytes, .durable = bytes});
    nodes_[parent].entries[name] = nodes_.size() - 1;
    nodes_[parent].durable_entries[name] = nodes_.size() - 1;
  }

  // A file's bytes as read: what was appended, then zeros up to its reserved size.
  static std::string padded(std::string bytes, std::uint64_t reserved) {
    if (bytes.size() < reserved) bytes.resize(reserved, '\0');
    return bytes;
  }

  // What survives of a file: its synced bytes, then a prefix of the rest,
  // the last of which may read as zeros.
  std::string surviving_bytes(const Node& f, std::mt19937_64& rng) const {
    const std::string& now = f.bytes;
    const std::string& synced = f.durable;
    if (now.size() < synced.size() || now.compare(0, synced.size(), synced) != 0) {
      return std::uniform_int_distribution<int>(0, 1)(rng) == 0 ? synced : now;  // rewritten since: one or the other
    }
    const std::size_t extra = now.size() - synced.size();
    if (extra == 0) return synced;
    switch (std::uniform_int_distribution<int>(0, 3)(rng)) {
      case 0: return synced;
      case 1: return now;
      case 2: return now.substr(0, synced.size() + std::uniform_int_distribution<std::size_t>(0, extra)(rng));
      default: {
        const std::size_t kept = synced.size() + std::uniform_int_distribution<std::size_t>(0, extra)(rng);
        const std::size_t written = std::uniform_int_distribution<std::size_t>(synced.size(), kept)(rng);
        std::string out = now.substr(0, kept);
        std::fill(out.begin() + static_cast<std::ptrdiff_t>(written), out.end(), '\0');
        return out;
      }
    }
  }

  void image_of(std::size_t dir, const std::string& path, std::mt19937_64& rng, DiskImage& image,
                bool worst) const {
    image.directories.insert(path);
    const Node& d = nodes_[dir];
    std::map<std::string, std::size_t> entries = d.durable_entries;
    const std::size_t kept = worst ? 0 : std::uniform_int_distribution<std::size_t>(0, d.unsynced.size())(rng);
    for (std::size_t i = 0; i < kept; ++i) {
      const Change& c = d.unsynced[i];
      if (c.kind == Change::link) {
        entries[c.name] = c.node;
      } else if (c.kind == Change::unlink) {
        entries.erase(c.name);
      } else {
        entries.erase(c.name);
        entries[c.to] = c.node;
      }
    }
    for (const auto& [name, node] : entries) {
      const std::string child = path == "/" ? "/" + name : path + "/" + name;
      if (nodes_[node].directory) {
        image_of(node, child, rng, image, worst);
      } else {
        const Node& f = nodes_[node];
        image.files[child] = padded(worst ? f.durable : surviving_bytes(f, rng), f.durable_reserved);
      }
    }
  }

  void current_of(std::size_t dir, const std::string& path, DiskImage& image) const {
    image.directories.insert(path);
    for (const auto& [name, node] : nodes_[dir].entries) {
      const std::string child = path == "/" ? "/" + name : path + "/" + name;
      if (nodes_[node].directory) {
        current_of(node, child, image);
      } else {
        image.files[child] = padded(nodes_[node].bytes, nodes_[node].reserved);
      }
    }
  }

  mutable std::mutex mu_;
  std::vector<Node> nodes_;  // 0 is "/"; never shrinks (an unlinked file may come back)
  std::set<std::string> locked_;
  std::uint64_t operations_ = 0;
  std::uint64_t cut_at_ = ~0ull;
  bool off_ = false;
  std::function<void(std::uint64_t)> on_operation_;
};

}  // namespace ordo::test
