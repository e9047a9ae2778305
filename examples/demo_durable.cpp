// ordo-demo, the durable story: jobs journaled before they are accepted, a
// process that dies with SIGKILL in the middle, and a restart that finishes
// the work. The summary is counted from what the handlers actually did (an
// effects log written with single O_APPEND writes), not asserted.
#include "demo_durable.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "demo_progress.hpp"
#include "ordo/ordo.hpp"

namespace demo {
namespace {

// Reads the effects log: how many times each job's effect was applied.
std::map<std::string, int> effects_in(const std::string& path) {
  std::map<std::string, int> count;
  std::ifstream in(path);
  std::string what, key;
  std::string id;
  while (in >> what >> key >> id) count[key] += what == "effect" ? 1 : 0;
  return count;
}

struct RunResult {
  ordo::DurableRecovery recovery;
  int ran = 0;      // handlers that applied their effect in this run
  int skipped = 0;  // handlers that found their effect already applied (a re-run after a crash)
  ordo::DurableStats stats;
};

// One process's life on the journal: recover, enqueue every job under its
// key (those already accepted are not enqueued twice), run them all. With
// crash_after > 0 the process kills itself with SIGKILL right after that
// many effects — after the effect, before the COMPLETE record: the worst spot.
RunResult run_jobs(const DurableStoryOptions& o, const std::string& effects_path, int crash_after,
                   ordo::Scheduler* shared) {
  RunResult result;
  std::set<std::string> applied;
  for (const auto& [key, n] : effects_in(effects_path))
    if (n > 0) applied.insert(key);
  std::mutex mu;
  const int fd = ::open(effects_path.c_str(), O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0644);
  std::atomic<int> effects{0};
  {
    std::optional<ordo::Scheduler> own;
    if (shared == nullptr) own.emplace(ordo::SchedulerOptions{.workers = 2, .name = "durable-demo"});
    ordo::Scheduler& sched = shared != nullptr ? *shared : *own;
    ordo::DurableTasks durable(sched, o.journal_dir, {.durability = ordo::Durability::sync});
    durable.define("invoice", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
      const std::string key(ctx.args_text());
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // "render and send the invoice"
      {
        // Idempotent by key: a re-run after a crash finds its effect done.
        std::lock_guard lock(mu);
        if (!applied.insert(key).second) {
          ++result.skipped;
          return;
        }
        const std::string line = "effect " + key + " " + std::to_string(ctx.id()) + "\n";
        if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) throw std::runtime_error("effects log");
        ++result.ran;
      }
      if (crash_after > 0 && effects.fetch_add(1) + 1 == crash_after) ::kill(::getpid(), SIGKILL);
    });
    result.recovery = durable.start();
    std::optional<ProgressLine> progress;
    if (!o.quiet) {
      progress.emplace([&] {
        const ordo::DurableStats st = durable.stats();
        return "invoices: " + std::to_string(st.completed) + " completed in this run, " + std::to_string(st.live) +
               " live, journal " + std::to_string(st.journal_bytes / 1024) + " KiB, last fsync " +
               std::to_string(static_cast<int>(st.last_fsync_us)) + " us";
      });
    }
    for (int i = 0; i < o.jobs; ++i) {
      const std::string key = "invoice-" + std::to_string(i);
      durable.enqueue("invoice", key, {.idempotency_key = key});
    }
    durable.shutdown(ordo::ShutdownMode::drain);
    if (progress) progress->finish();
    result.stats = durable.stats();
  }
  ::close(fd);
  return result;
}

void summarise(const DurableStoryOptions& o, const std::string& effects_path, DurableStoryResult& out) {
  const auto count = effects_in(effects_path);
  out.jobs = o.jobs;
  for (int i = 0; i < o.jobs; ++i) {
    auto it = count.find("invoice-" + std::to_string(i));
    const int n = it == count.end() ? 0 : it->second;
    out.lost += n == 0 ? 1 : 0;
    out.duplicated += n > 1 ? n - 1 : 0;
    out.completed += n > 0 ? 1 : 0;
  }
  if (!o.quiet) {
    std::printf("  summary: jobs=%d completed=%d lost=%d duplicated=%d\n", out.jobs, out.completed, out.lost,
                out.duplicated);
  }
}

}  // namespace

DurableStoryResult durable_story(const DurableStoryOptions& options, ordo::Scheduler* shared) {
  DurableStoryOptions o = options;
  DurableStoryResult result;
  std::string scratch;
  if (o.journal_dir.empty()) {
    char pattern[] = "/tmp/ordo-demo-XXXXXX";
    scratch = ::mkdtemp(pattern);
    o.journal_dir = scratch + "/journal";
  }
  std::filesystem::create_directories(o.journal_dir);
  const std::string effects_path = o.journal_dir + "/demo-effects.log";
  if (!o.quiet) std::printf("  journal: %s (sync: each enqueue returns once it is on disk)\n", o.journal_dir.c_str());
  if (!scratch.empty()) {
    // The whole story in one go: a child process (this program, started
    // afresh with --journal) crashes, this one resumes. Everything exec
    // needs is built before fork: between the two only exec is called.
    const int crash_after = o.crash_after > 0 ? o.crash_after : o.jobs * 2 / 5;
    const std::string crash_arg = std::to_string(crash_after), jobs_arg = std::to_string(o.jobs);
    const char* argv[] = {"ordo-demo", "--journal", o.journal_dir.c_str(), "--crash-after", crash_arg.c_str(),
                          "--jobs", jobs_arg.c_str(), "--quiet-child", nullptr};
    std::fflush(stdout);
    const pid_t child = ::fork();
    if (child == 0) {
      ::execv("/proc/self/exe", const_cast<char* const*>(argv));
      ::_exit(127);
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    result.crashed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    std::printf("  run 1 (process %d): enqueuing and sending %d invoices, %s after %d effects\n", static_cast<int>(child),
                o.jobs, result.crashed ? "killed itself with SIGKILL" : "did NOT crash as planned", crash_after);
    const RunResult r = run_jobs(o, effects_path, 0, shared);
    std::printf("  run 2 (this process): %s\n", r.recovery.describe().c_str());
    std::printf("    %d invoice(s) sent now; %d re-run(s) found their effect already applied (idempotent by key)\n", r.ran,
                r.skipped);
    result.stats = r.stats;
    summarise(o, effects_path, result);
    std::error_code ec;
    std::filesystem::remove_all(scratch, ec);
    result.exit_code = result.crashed && result.lost == 0 && result.duplicated == 0 ? 0 : 1;
    return result;
  }
  // --journal DIR: this process is one run; run again to resume.
  if (o.crash_after > 0 && !o.quiet) {
    std::printf("  this run kills itself with SIGKILL after %d effects; run again with the same --journal to resume\n",
                o.crash_after);
  }
  std::fflush(stdout);  // SIGKILL would drop what is still buffered
  const RunResult r = run_jobs(o, effects_path, o.crash_after, shared);
  if (!o.quiet) {
    std::printf("  %s\n  %d invoice(s) sent in this run, %d re-run(s) skipped by key\n", r.recovery.describe().c_str(),
                r.ran, r.skipped);
  }
  result.stats = r.stats;
  summarise(o, effects_path, result);
  return result;
}

}  // namespace demo
