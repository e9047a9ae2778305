// to_prometheus(): the text exposition format, written by hand (a few
// dozen lines; the format is lines of `name{labels} value`).
#include <cstdio>
#include <sstream>

#include "ordo/observability.hpp"

namespace ordo {
namespace {

std::string escape_label(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

class Exposition {
 public:
  explicit Exposition(std::string_view scheduler)
      : common_(scheduler.empty() ? std::string() : "scheduler=\"" + escape_label(scheduler) + "\"") {}

  // Starts a metric family: its HELP and TYPE lines.
  void family(const char* name, const char* type, const char* help) {
    out_ << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
    name_ = name;
  }
  void sample(double value, const std::string& labels = {}, const char* suffix = "") {
    std::string all = common_;
    if (!labels.empty()) all += (all.empty() ? "" : ",") + labels;
    out_ << name_ << suffix;
    if (!all.empty()) out_ << '{' << all << '}';
    char num[40];
    std::snprintf(num, sizeof num, "%.17g", value);
    out_ << ' ' << num << '\n';
  }
  std::string text() const { return out_.str(); }

 private:
  std::string common_;
  std::string name_;
  std::ostringstream out_;
};

std::string label(const char* key, std::string_view value) { return std::string(key) + "=\"" + escape_label(value) + "\""; }
std::string label(const char* key, std::uint64_t value) { return label(key, std::to_string(value)); }

}  // namespace

std::string to_prometheus(const SchedulerStats& st, std::string_view scheduler) {
  Exposition e(scheduler);
  auto d = [](auto v) { return static_cast<double>(v); };
  e.family("ordo_workers", "gauge", "Worker threads.");
  e.sample(st.workers);
  e.family("ordo_workers_parked", "gauge", "Workers asleep for lack of work.");
  e.sample(st.workers_parked);
  e.family("ordo_tasks_run_total", "counter", "Tasks run (or cancelled) by workers.");
  e.sample(d(st.tasks_run));
  e.family("ordo_steals_total", "counter", "Tasks taken from another worker's deque.");
  e.sample(d(st.steals));
  e.family("ordo_promoted_total", "counter", "Tasks moved up a level by ageing.");
  e.sample(d(st.promoted));

  e.family("ordo_level_queued", "gauge", "Tasks waiting to start, per priority level (0 = highest).");
  for (std::size_t l = 0; l < st.per_level.size(); ++l) e.sample(d(st.per_level[l].queued), label("level", l));
  e.family("ordo_level_running", "gauge", "Tasks running, per priority level.");
  for (std::size_t l = 0; l < st.per_level.size(); ++l) e.sample(d(st.per_level[l].running), label("level", l));
  e.family("ordo_level_completed_total", "counter", "Tasks run (or cancelled), per priority level.");
  for (std::size_t l = 0; l < st.per_level.size(); ++l) e.sample(d(st.per_level[l].completed), label("level", l));
  e.family("ordo_level_start_wait_seconds", "gauge",
           "Time from queued to started of sampled tasks: quantiles since start, per level.");
  for (std::size_t l = 0; l < st.per_level.size(); ++l) {
    const LevelStats& ls = st.per_level[l];
    const std::pair<const char*, double> qs[] = {{"0.5", ls.wait_p50_us}, {"0.9", ls.wait_p90_us}, {"0.99", ls.wait_p99_us}, {"1", ls.wait_max_us}};
    for (auto [q, us] : qs) e.sample(us / 1e6, label("level", l) + "," + label("quantile", q));
  }

  e.family("ordo_worker_tasks_run_total", "counter", "Tasks run (or cancelled), per worker.");
  for (std::size_t w = 0; w < st.per_worker.size(); ++w) e.sample(d(st.per_worker[w].tasks_run), label("worker", w));
  e.family("ordo_worker_steals_total", "counter", "Tasks stolen, per worker.");
  for (std::size_t w = 0; w < st.per_worker.size(); ++w) e.sample(d(st.per_worker[w].steals), label("worker", w));
  e.family("ordo_worker_idle_seconds_total", "counter", "Time asleep for lack of work, per worker.");
  for (std::size_t w = 0; w < st.per_worker.size(); ++w) e.sample(st.per_worker[w].idle_ms / 1e3, label("worker", w));

  if (!st.resources.empty()) {
    e.family("ordo_resource_limit", "gauge", "Permits of a resource group.");
    for (const auto& r : st.resources) e.sample(d(r.limit), label("group", r.name));
    e.family("ordo_resource_in_use", "gauge", "Permits held now (rate groups: tokens taken in the current window).");
    for (const auto& r : st.resources) e.sample(d(r.in_use), label("group", r.name));
    e.family("ordo_resource_max_in_use", "gauge", "The most permits ever held at once.");
    for (const auto& r : st.resources) e.sample(d(r.max_in_use), label("group", r.name));
    e.family("ordo_resource_waiting", "gauge", "Tasks parked on the group now.");
    for (const auto& r : st.resources) e.sample(d(r.waiting), label("group", r.name));
    e.family("ordo_resource_wait_seconds_total", "counter", "Time tasks spent parked on the group.");
    for (const auto& r : st.resources) e.sample(r.total_wait_ms / 1e3, label("group", r.name));
  }

  if (!st.durable.empty()) {
    auto each = [&](const char* name, const char* type, const char* help, auto get) {
      e.family(name, type, help);
      for (const auto& j : st.durable) e.sample(get(j), label("journal", j.directory));
    };
    each("ordo_durable_live", "gauge", "Durable tasks enqueued and not yet complete, cancelled or dead.",
         [&](const DurableStats& j) { return d(j.live); });
    each("ordo_durable_running", "gauge", "Durable tasks running now.", [&](const DurableStats& j) { return d(j.running); });
    each("ordo_durable_retrying", "gauge", "Durable tasks waiting for a retry backoff.",
         [&](const DurableStats& j) { return d(j.retrying); });
    each("ordo_durable_delayed", "gauge", "Durable tasks waiting for their run_at.",
         [&](const DurableStats& j) { return d(j.delayed); });
    each("ordo_durable_dead", "gauge", "Durable tasks in the dead set.", [&](const DurableStats& j) { return d(j.dead); });
    each("ordo_durable_completed_total", "counter", "Durable tasks completed by this process.",
         [&](const DurableStats& j) { return d(j.completed); });
    each("ordo_durable_failed_attempts_total", "counter", "Attempts that threw.",
         [&](const DurableStats& j) { return d(j.failed_attempts); });
    each("ordo_durable_journal_bytes", "gauge", "Size of the journal on disk.",
         [&](const DurableStats& j) { return d(j.journal_bytes); });
    each("ordo_durable_last_fsync_seconds", "gauge", "Latency of the journal's latest fdatasync.",
         [&](const DurableStats& j) { return j.last_fsync_us / 1e6; });
  }
  return e.text();
}

}  // namespace ordo
