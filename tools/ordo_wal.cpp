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
//   ordo-wal status DIR ID            where one durable task is (JSON)
//   ordo-wal scheduled DIR            tasks waiting for their run_at (JSON lines)
//   ordo-wal retrying DIR             tasks waiting to retry (JSON lines)
//
// stat, dump, verify, status, scheduled, retrying and dead list only read (no lock is taken; run them on a journal
// in use and a tail being written may show as torn). compact takes the lock,
// so it refuses a journal that a running process has open.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "journal/records.hpp"
#include "ordo/durable.hpp"
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
// read listed (a compaction) or add one, and may be appending to the open
// segment while it is read: a read() of it can be descheduled halfway
// through a page and see a record the writer was still copying beside the
// records it copied next (Journal::read reads such a segment again before
// it calls that corruption, but a writer stalled longer than its rereads
// still fools it). A failure is no verdict until a second read, over the
// same files, fails the same way;
// if the journal kept changing instead, say so with its own exit code
// rather than the one for corruption.
int cmd_verify(const std::string& dir) {
  std::string last_failure;
  for (int attempt = 1;; ++attempt) {
    const std::set<std::string> before = journal_files(dir);
    try {
      const ordo::RecoveryReport report = ordo::Journal::read(dir, {}, false);
      std::cout << "ok: " << report.describe() << "\n";
      return 0;
    } catch (const std::exception& e) {
      const bool files_held_still = journal_files(dir) == before;
      if (files_held_still && last_failure == e.what()) throw;  // twice the same: the failure stands
      last_failure = e.what();
      if (attempt == kVerifyAttempts) {
        std::cerr << "changed: the journal changed under each of " << kVerifyAttempts
                  << " reads (a process is appending to, rotating or compacting it): inconclusive, read it again "
                     "later; last error: "
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

// The durable tasks as the journal holds them, folded record by record
// through the same decoders the runtime uses (src/journal/records.hpp).
// "running" is a task whose last record is its START: running now, or cut
// short by a crash (the next start runs it again).
struct TaskEntry {
  ordo::DurableTaskStatus status;
  std::uint64_t flow = 0;  // the workflow it is a node of, or 0
  std::uint32_t node = 0;
};

struct LiveWorkflow {
  std::vector<std::vector<std::uint32_t>> pred;  // per node, its predecessors
  std::vector<std::uint32_t> discarded;           // its latest CHECKPOINT
};

struct JournalState {
  std::map<std::uint64_t, TaskEntry> tasks;
  std::map<std::uint64_t, LiveWorkflow> workflows;
  // Per workflow: node -> task id, for the nodes whose ENQUEUE is live.
  std::map<std::uint64_t, std::map<std::uint32_t, std::uint64_t>> node_ids;
  std::map<std::uint64_t, std::int64_t> retained;  // completed id -> key retained until (ns)
  std::int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::system_clock::now().time_since_epoch()).count();

  void fold(const ordo::RecordView& r) {
    namespace rec = ordo::detail::records;
    using State = ordo::DurableTaskStatus::State;
    auto live = [&]() -> TaskEntry* {
      auto it = tasks.find(r.task);
      return it == tasks.end() ? nullptr : &it->second;
    };
    switch (r.type) {
      case ordo::RecordType::enqueue: {
        const rec::Enqueue e = rec::decode_enqueue(r);
        TaskEntry& t = tasks[r.task];
        t = TaskEntry{};
        t.status.id = r.task;
        t.status.type = e.type;
        t.status.state = e.run_at_ns != 0 ? State::scheduled : State::queued;
        if (e.run_at_ns != 0) t.status.run_at = wall_time(e.run_at_ns);
        t.flow = e.workflow;
        t.node = e.node;
        if (e.workflow != 0) node_ids[e.workflow][e.node] = r.task;
        break;
      }
      case ordo::RecordType::start:
        if (TaskEntry* t = live()) {
          t->status.attempts = ordo::detail::records::decode_start(r).attempt;
          t->status.state = State::running;
          t->status.run_at.reset();
        }
        break;
      case ordo::RecordType::checkpoint:
        if (auto it = workflows.find(r.task); it != workflows.end()) {
          it->second.discarded = rec::decode_workflow_checkpoint(r).discarded;
        }
        break;
      case ordo::RecordType::fail:
        if (TaskEntry* t = live()) {
          const rec::Fail f = rec::decode_fail(r);
          t->status.state = State::retrying;
          t->status.attempts = f.attempt;
          t->status.run_at = wall_time(f.retry_at_ns);
          t->status.last_error = f.error;
        }
        break;
      case ordo::RecordType::dead:
        if (TaskEntry* t = live()) {
          const rec::Dead d = rec::decode_dead(r);
          t->status.state = State::dead;
          t->status.attempts = d.attempts;
          t->status.run_at.reset();
          t->status.last_error = d.reason;
        }
        break;
      case ordo::RecordType::retry:
        if (TaskEntry* t = live()) {
          t->status.state = State::queued;
          t->status.attempts = 0;
        }
        break;
      case ordo::RecordType::workflow: {
        const rec::Workflow w = rec::decode_workflow(r);
        LiveWorkflow& flow = workflows[r.task];
        flow.pred.assign(w.nodes.size(), {});
        for (const auto& edge : w.edges) flow.pred[edge.to].push_back(edge.from);
        break;
      }
      case ordo::RecordType::complete:
        if (rec::retains_key_beyond(r, now_ns)) retained[r.task] = rec::decode_complete(r).retain_until_ns;
        forget(r.task);
        break;
      case ordo::RecordType::cancel:
        forget(r.task);
        break;
      default:
        break;
    }
  }

  // A task or workflow ended (COMPLETE or CANCEL).
  void forget(std::uint64_t id) {
    tasks.erase(id);
    workflows.erase(id);
    node_ids.erase(id);
  }

  // A queued workflow node with a predecessor still live waits for it.
  bool blocked(const TaskEntry& t) const {
    if (t.flow == 0 || t.status.state != ordo::DurableTaskStatus::State::queued) return false;
    auto flow = workflows.find(t.flow);
    if (flow == workflows.end() || t.node >= flow->second.pred.size()) return false;
    auto ids = node_ids.find(t.flow);
    if (ids == node_ids.end()) return false;
    for (std::uint32_t p : flow->second.pred[t.node]) {
      auto id = ids->second.find(p);
      if (id != ids->second.end() && tasks.count(id->second)) return true;
    }
    return false;
  }

  ordo::DurableTaskStatus status(std::uint64_t id) const {
    if (auto it = tasks.find(id); it != tasks.end()) {
      ordo::DurableTaskStatus s = it->second.status;
      if (blocked(it->second)) s.state = ordo::DurableTaskStatus::State::blocked;
      return s;
    }
    ordo::DurableTaskStatus s;
    s.id = id;
    if (auto it = retained.find(id); it != retained.end()) {
      s.state = ordo::DurableTaskStatus::State::completed;
      s.key_retained_until = wall_time(it->second);
    }
    return s;
  }

  static std::chrono::system_clock::time_point wall_time(std::int64_t ns) {
    return std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::nanoseconds(ns)));
  }
};

std::string iso_utc(std::chrono::system_clock::time_point t) {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ns / 1'000'000'000);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ns / 1'000'000 % 1000));
  return buf;
}

// One task as JSON: the fields its state gives meaning to.
nlohmann::json status_json(const ordo::DurableTaskStatus& s) {
  using State = ordo::DurableTaskStatus::State;
  auto ns_of = [](std::chrono::system_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  };
  nlohmann::json out = {{"id", s.id}, {"state", ordo::to_string(s.state)}};
  if (s.state == State::unknown) return out;
  if (!s.type.empty()) out["type"] = s.type;
  if (s.state != State::completed) out["attempts"] = s.attempts;
  if (s.run_at) {
    out["run_at_ns"] = ns_of(*s.run_at);
    out["run_at"] = iso_utc(*s.run_at);
  }
  if (s.key_retained_until) {
    out["key_retained_until_ns"] = ns_of(*s.key_retained_until);
    out["key_retained_until"] = iso_utc(*s.key_retained_until);
  }
  if (!s.last_error.empty()) out["last_error"] = s.last_error;
  return out;
}

JournalState read_state(const std::string& dir) {
  JournalState state;
  ordo::Journal::read(dir, [&](const ordo::RecordView& r) { state.fold(r); });
  return state;
}

int cmd_status(const std::string& dir, std::uint64_t id) {
  std::cout << status_json(read_state(dir).status(id)).dump() << "\n";
  return 0;
}

// scheduled / retrying: one JSON object per line, by due time.
int cmd_waiting(const std::string& dir, ordo::DurableTaskStatus::State wanted) {
  const JournalState state = read_state(dir);
  std::vector<ordo::DurableTaskStatus> out;
  for (const auto& [id, t] : state.tasks) {
    if (t.status.state == wanted) out.push_back(t.status);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.run_at != b.run_at ? a.run_at < b.run_at : a.id < b.id;
  });
  for (const auto& s : out) std::cout << status_json(s).dump() << "\n";
  std::cerr << out.size() << " " << ordo::to_string(wanted) << " task(s)\n";
  return 0;
}

int cmd_dead_list(const std::string& dir) {
  const JournalState state = read_state(dir);
  int n = 0;
  for (const auto& [id, t] : state.tasks) {
    if (t.status.state != ordo::DurableTaskStatus::State::dead) continue;
    std::cout << id << "\t" << t.status.type << "\tattempts=" << t.status.attempts << "\t" << t.status.last_error
              << "\n";
    ++n;
  }
  std::cerr << n << " dead task(s)\n";
  return 0;
}

// Appends RETRY or CANCEL for a task that is dead; the journal lock keeps a
// running process from racing us.
int cmd_dead_change(const std::string& dir, std::uint64_t id, ordo::RecordType what) {
  JournalState state;
  ordo::JournalOptions options;
  options.compact_after_bytes = 0;
  auto journal = ordo::Journal::open(dir, options, [&](const ordo::RecordView& r) { state.fold(r); });
  auto it = state.tasks.find(id);
  if (it == state.tasks.end() || it->second.status.state != ordo::DurableTaskStatus::State::dead) {
    std::cerr << "error: task " << id << " is not in the dead set of " << dir << "\n";
    return 1;
  }
  if (auto flow = state.workflows.find(it->second.flow); what == ordo::RecordType::cancel && flow != state.workflows.end()) {
    // A workflow node: the workflow's CHECKPOINT records the discard first
    // (docs/journal-format.md), so that a compaction before the next start
    // cannot make the node look completed. The next start cancels the
    // nodes that depend on it.
    ordo::detail::records::WorkflowCheckpoint checkpoint{flow->second.discarded};
    checkpoint.discarded.push_back(it->second.node);
    journal->append(ordo::RecordType::checkpoint, flow->first, ordo::detail::records::encode(checkpoint).view());
  }
  journal->append_durable(what, id);
  std::cout << (what == ordo::RecordType::retry ? "retrying " : "discarded ") << id << " (" << it->second.status.type
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
  auto* status = app.add_subcommand("status", "where one durable task is, as JSON: state, type, attempts, times, error");
  auto* scheduled = app.add_subcommand("scheduled", "durable tasks waiting for their run_at, one JSON object a line");
  auto* retrying = app.add_subcommand("retrying", "durable tasks waiting for their next attempt, one JSON object a line");
  for (auto* sub : {status, scheduled, retrying}) sub->add_option("dir", dir, "journal directory")->required();
  status->add_option("id", id, "task id")->required();
  CLI11_PARSE(app, argc, argv);
  try {
    if (*stat) return cmd_stat(dir, tolerant);
    if (*dump) return cmd_dump(dir, json, tolerant);
    if (*verify) return cmd_verify(dir);
    if (*compact) return cmd_compact(dir);
    if (*dead_list) return cmd_dead_list(dir);
    if (*status) return cmd_status(dir, id);
    if (*scheduled) return cmd_waiting(dir, ordo::DurableTaskStatus::State::scheduled);
    if (*retrying) return cmd_waiting(dir, ordo::DurableTaskStatus::State::retrying);
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
