// ordo-wal: inspect, verify and compact an ordo journal directory.
//
//   ordo-wal stat DIR                 segments, records, live tasks, size
//   ordo-wal dump DIR [--json]        every record, as text or JSON lines
//   ordo-wal verify DIR               exit 1 on corruption, naming where; 3 if the
//                                     journal kept changing under the read (in use)
//   ordo-wal compact DIR              fold history into a snapshot now
//   ordo-wal dead list DIR            durable tasks in the dead set
//   ordo-wal dead retry DIR ID        send one back for another round of attempts
//   ordo-wal dead discard DIR ID      drop one for good
//
// stat, dump and verify only read (no lock is taken; run them on a journal
// in use and a tail being written may show as torn). compact takes the lock,
// so it refuses a journal that a running process has open.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <set>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "ordo/journal.hpp"

namespace {

std::string hex(std::span<const std::byte> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::byte b : bytes) {
    out.push_back(kDigits[std::to_integer<unsigned>(b) >> 4]);
    out.push_back(kDigits[std::to_integer<unsigned>(b) & 0xf]);
  }
  return out;
}

std::string file_of(const ordo::RecordView& r) {
  char buf[48];
  std::snprintf(buf, sizeof buf, r.from_snapshot ? "snapshot-%016llu.snap" : "wal-%016llu.log",
                static_cast<unsigned long long>(r.segment));
  return buf;
}

int cmd_stat(const std::string& dir, bool tolerant) {
  std::map<std::string, std::uint64_t> per_type;
  const ordo::RecoveryReport report =
      ordo::Journal::read(dir, [&](const ordo::RecordView& r) { per_type[ordo::to_string(r.type)]++; }, tolerant);
  std::cout << "journal      " << dir << "\n"
            << "snapshot     " << (report.snapshot != 0 ? std::to_string(report.snapshot) : "none") << "\n"
            << "segments     " << report.segments << "\n"
            << "records      " << report.records << "\n"
            << "live tasks   " << report.live_tasks << "\n"
            << "size         " << report.bytes << " bytes\n";
  for (const auto& [type, n] : per_type) std::cout << "  " << type << " " << n << "\n";
  if (report.torn_tail || !report.skipped.empty()) std::cout << report.describe() << "\n";
  return 0;
}

int cmd_dump(const std::string& dir, bool json, bool tolerant) {
  const ordo::RecoveryReport report = ordo::Journal::read(
      dir,
      [&](const ordo::RecordView& r) {
        if (json) {
          nlohmann::json line = {{"file", file_of(r)},       {"offset", r.offset},
                                 {"type", ordo::to_string(r.type)}, {"task", r.task},
                                 {"body_hex", hex(r.payload.subspan(8))}};
          std::cout << line.dump() << "\n";
        } else {
          std::cout << file_of(r) << ":" << r.offset << " " << ordo::to_string(r.type) << " task=" << r.task
                    << " body=" << r.payload.size() - 8 << "B\n";
        }
      },
      tolerant);
  if (report.torn_tail || !report.skipped.empty()) std::cerr << report.describe() << "\n";
  return 0;
}

// verify's exit code when a process using the journal kept rotating or
// compacting while it read: no damage was found, but the read was not whole.
constexpr int kExitJournalChanged = 3;
constexpr int kVerifyAttempts = 3;

// The journal's own files: what a rotation or a compaction changes.
std::set<std::string> journal_files(const std::string& dir) {
  std::set<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("wal-", 0) == 0 || name.rfind("snapshot-", 0) == 0) names.insert(name);
  }
  return names;
}

// No lock is taken, so a process using the journal may delete a file this
// read listed (a compaction) or add one: a failure while the files changed
// is no verdict. Read again; if the journal kept changing, say so with its
// own exit code rather than the one for corruption.
int cmd_verify(const std::string& dir) {
  for (int attempt = 1;; ++attempt) {
    const std::set<std::string> before = journal_files(dir);
    try {
      const ordo::RecoveryReport report = ordo::Journal::read(dir, {}, false);
      std::cout << "ok: " << report.describe() << "\n";
      return 0;
    } catch (const std::exception& e) {
      if (journal_files(dir) == before) throw;  // the files held still: the failure stands
      if (attempt == kVerifyAttempts) {
        std::cerr << "changed: the journal's files changed under each of " << kVerifyAttempts
                  << " reads (a process is rotating or compacting it): inconclusive, read it again later; last error: "
                  << e.what() << "\n";
        return kExitJournalChanged;
      }
    }
  }
}

int cmd_compact(const std::string& dir) {
  ordo::JournalOptions options;
  options.compact_after_bytes = 0;  // only the compaction asked for
  auto journal = ordo::Journal::open(dir, options);
  const std::uint64_t before = journal->stats().bytes;
  journal->compact();
  const ordo::JournalStats after = journal->stats();
  std::cout << "compacted " << dir << ": " << before << " -> " << after.bytes << " bytes, " << after.live_tasks
            << " live task(s)\n";
  return 0;
}

// The dead set as the journal holds it (payloads: docs/journal-format.md).
struct DeadTaskRecord {
  std::string type;
  std::uint32_t attempts = 0;
  std::string reason;
  bool dead = false;
  std::uint64_t flow = 0;  // the workflow it is a node of, or 0
  std::uint32_t node = 0;
};

// Per live workflow: the nodes its latest CHECKPOINT lists as discarded.
using DiscardedNodes = std::map<std::uint64_t, std::vector<std::uint32_t>>;

std::string str16_at(std::span<const std::byte> p, std::size_t& at) {
  if (at + 2 > p.size()) return {};
  const std::size_t n = std::to_integer<std::size_t>(p[at]) | std::to_integer<std::size_t>(p[at + 1]) << 8;
  at += 2;
  if (at + n > p.size()) return {};
  std::string s(reinterpret_cast<const char*>(p.data()) + at, n);
  at += n;
  return s;
}

std::uint64_t uint_at(std::span<const std::byte> p, std::size_t& at, int bytes) {
  std::uint64_t v = 0;
  if (at + static_cast<std::size_t>(bytes) > p.size()) {
    at = p.size() + 1;  // past the end: every later read fails too
    return 0;
  }
  for (int i = bytes - 1; i >= 0; --i) v = v << 8 | std::to_integer<std::uint64_t>(p[at + static_cast<std::size_t>(i)]);
  at += static_cast<std::size_t>(bytes);
  return v;
}

void fold_dead(const ordo::RecordView& r, std::map<std::uint64_t, DeadTaskRecord>& tasks, DiscardedNodes* flows = nullptr) {
  switch (r.type) {
    case ordo::RecordType::enqueue: {
      std::size_t at = 8;
      DeadTaskRecord& t = tasks[r.task];
      t.type = str16_at(r.payload, at);
      uint_at(r.payload, at, 1 + 4 + 8);  // level, max attempts, run at
      str16_at(r.payload, at);             // key
      const auto needs = uint_at(r.payload, at, 1);
      for (std::uint64_t i = 0; i < needs; ++i) {
        str16_at(r.payload, at);
        uint_at(r.payload, at, 8);
      }
      t.flow = uint_at(r.payload, at, 8);
      t.node = static_cast<std::uint32_t>(uint_at(r.payload, at, 4));
      if (at > r.payload.size()) t.flow = 0;
      break;
    }
    case ordo::RecordType::workflow:
      if (flows != nullptr) (*flows)[r.task];
      break;
    case ordo::RecordType::checkpoint:
      if (flows != nullptr) {
        if (auto it = flows->find(r.task); it != flows->end()) {
          std::size_t at = 8;
          it->second.clear();
          const auto n = uint_at(r.payload, at, 4);
          for (std::uint64_t i = 0; i < n && at <= r.payload.size(); ++i) {
            it->second.push_back(static_cast<std::uint32_t>(uint_at(r.payload, at, 4)));
          }
        }
      }
      break;
    case ordo::RecordType::dead: {
      DeadTaskRecord& t = tasks[r.task];
      t.dead = true;
      std::size_t at = 8;
      if (r.payload.size() >= 12) {
        t.attempts = 0;
        for (int i = 3; i >= 0; --i) t.attempts = t.attempts << 8 | std::to_integer<std::uint32_t>(r.payload[8 + static_cast<std::size_t>(i)]);
        at = 12;
        t.reason = str16_at(r.payload, at);
      }
      break;
    }
    case ordo::RecordType::retry:
      tasks[r.task].dead = false;
      break;
    case ordo::RecordType::complete:
    case ordo::RecordType::cancel:
      tasks.erase(r.task);
      if (flows != nullptr) flows->erase(r.task);
      break;
    default:
      break;
  }
}

int cmd_dead_list(const std::string& dir) {
  std::map<std::uint64_t, DeadTaskRecord> tasks;
  ordo::Journal::read(dir, [&](const ordo::RecordView& r) { fold_dead(r, tasks); });
  int n = 0;
  for (const auto& [id, t] : tasks) {
    if (!t.dead) continue;
    std::cout << id << "\t" << t.type << "\tattempts=" << t.attempts << "\t" << t.reason << "\n";
    ++n;
  }
  std::cerr << n << " dead task(s)\n";
  return 0;
}

// Appends RETRY or CANCEL for a task that is dead; the journal lock keeps a
// running process from racing us.
int cmd_dead_change(const std::string& dir, std::uint64_t id, ordo::RecordType what) {
  std::map<std::uint64_t, DeadTaskRecord> tasks;
  DiscardedNodes flows;
  ordo::JournalOptions options;
  options.compact_after_bytes = 0;
  auto journal = ordo::Journal::open(dir, options, [&](const ordo::RecordView& r) { fold_dead(r, tasks, &flows); });
  auto it = tasks.find(id);
  if (it == tasks.end() || !it->second.dead) {
    std::cerr << "error: task " << id << " is not in the dead set of " << dir << "\n";
    return 1;
  }
  if (auto flow = flows.find(it->second.flow); what == ordo::RecordType::cancel && flow != flows.end()) {
    // A workflow node: the workflow's CHECKPOINT records the discard first
    // (docs/journal-format.md), so that a compaction before the next start
    // cannot make the node look completed. The next start cancels the
    // nodes that depend on it.
    std::vector<std::uint32_t> discarded = flow->second;
    discarded.push_back(it->second.node);
    std::string body;
    auto put32 = [&](std::uint32_t v) {
      for (int i = 0; i < 4; ++i) body.push_back(static_cast<char>(v >> (8 * i)));
    };
    put32(static_cast<std::uint32_t>(discarded.size()));
    for (std::uint32_t n : discarded) put32(n);
    journal->append(ordo::RecordType::checkpoint, flow->first,
                    std::as_bytes(std::span<const char>(body.data(), body.size())));
  }
  journal->append_durable(what, id);
  std::cout << (what == ordo::RecordType::retry ? "retrying " : "discarded ") << id << " (" << it->second.type
            << ")" << (what == ordo::RecordType::retry ? ": it runs at the next start\n" : "\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ordo-wal: inspect, verify and compact an ordo journal"};
  app.require_subcommand(1);
  std::string dir;
  bool json = false;
  bool tolerant = false;
  auto* stat = app.add_subcommand("stat", "segments, records per type, live tasks, size");
  auto* dump = app.add_subcommand("dump", "every record in replay order");
  auto* verify = app.add_subcommand(
      "verify",
      "read everything; exit 0 if sound, 1 on corruption (naming file and offset) or an I/O error, 3 if a process "
      "using the journal rotated or compacted it under each of 3 reads (nothing wrong found: run it again)");
  auto* compact = app.add_subcommand("compact", "write the live state as a snapshot and drop older files");
  for (auto* sub : {stat, dump, verify, compact}) sub->add_option("dir", dir, "journal directory")->required();
  for (auto* sub : {stat, dump}) sub->add_flag("--tolerant", tolerant, "skip damaged records instead of stopping");
  dump->add_flag("--json", json, "one JSON object per line");
  auto* dead = app.add_subcommand("dead", "the dead set of durable tasks");
  dead->require_subcommand(1);
  std::uint64_t id = 0;
  auto* dead_list = dead->add_subcommand("list", "id, type, attempts and last error of each dead task");
  auto* dead_retry = dead->add_subcommand("retry", "send a dead task back for another round of attempts");
  auto* dead_discard = dead->add_subcommand("discard", "drop a dead task for good");
  for (auto* sub : {dead_list, dead_retry, dead_discard}) sub->add_option("dir", dir, "journal directory")->required();
  for (auto* sub : {dead_retry, dead_discard}) sub->add_option("id", id, "task id (from dead list)")->required();
  CLI11_PARSE(app, argc, argv);
  try {
    if (*stat) return cmd_stat(dir, tolerant);
    if (*dump) return cmd_dump(dir, json, tolerant);
    if (*verify) return cmd_verify(dir);
    if (*compact) return cmd_compact(dir);
    if (*dead_list) return cmd_dead_list(dir);
    if (*dead_retry) return cmd_dead_change(dir, id, ordo::RecordType::retry);
    if (*dead_discard) return cmd_dead_change(dir, id, ordo::RecordType::cancel);
  } catch (const ordo::JournalCorruption& e) {
    std::cerr << "corrupt: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 2;
}
