// The randomized model checker of the in-process API: random programs over
// submit/post, then/when_all/when_any/after, set_priority and cancel at random
// moments, task groups with nested helping waits (children of both spawn
// paths: plain-bytes callables and constructed ones), timed waits (wait_for on
// handles, on workflow runs, and inside tasks), counting groups with
// weighted needs, rate groups, tasks needing several groups, set_limit up and
// down, reserve() changes, concurrent workflow runs, and shutdown (drain or
// cancel) at a random point. While a program runs and after it ends, it checks:
//  - every handle and every run resolves (a watchdog turns a hang into a
//    failure that prints the seed and a stats snapshot);
//  - a task runs at most once, and runs unless something allowed it not to
//    (its cancel() said true, a predecessor did not succeed, a shutdown by
//    cancel, or a drain that found it waiting for more than a lowered limit);
//  - its handle reports exactly what happened: its value, its own error, or
//    TaskCancelled / a predecessor's error when it did not run;
//  - no task starts before its predecessors succeeded (one of them, for
//    when_any); a workflow node succeeds only after its predecessors did;
//  - a counting group never has more in use than its highest limit so far
//    (than its limit, when it was never changed), and every permit is back
//    at the end; a rate group never hands out more than burst + rate × time;
//  - the stats snapshot adds up.
//
// ORDO_SEED=<n> replays a run's programs (the interleavings differ), from
// program ORDO_CHAOS_FIRST=<k> on; ORDO_CHAOS_REPEAT=1 runs that one program
// again and again (to catch a rare interleaving of a reported program);
// ORDO_CHAOS_SECONDS=<s> sets the budget (default 20: a soak is a long one).
// ORDO_CHAOS_PAUSE_US=<n> sets the scheduler's test-only fault points (the
// pauses inside a shutdown's steps, its judge's reads and its look for
// hopeless waiters, a refused or a parking submission) to n microseconds: a hunt for a rare interleaving of
// shutdown, parking and submission goes faster with its windows wide open.
// (Over 600 lines: the program generator and its model only make sense
// together.)
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/scheduler_core.hpp"  // the test-only fault points, for ORDO_CHAOS_PAUSE_US
#include "ordo/ordo.hpp"

namespace ordo {
namespace {

using Clock = std::chrono::steady_clock;

struct ChaosError {
  int id;
};

std::uint64_t env_u64(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

// One task of a program as the model sees it.
struct Node {
  enum class Mode { none, all, any, recover };  // how it depends on `preds`
  int id = 0;
  Mode mode = Mode::none;
  std::vector<Node*> preds;
  bool throws = false;
  int spin_us = 0;
  int children = 0;       // TaskGroup children spawned (and waited for, helping)
  bool nested_get = false;  // submits a subtask and get()s it (helping wait)
  int nested_wait_for_us = -1;  // >= 0: a timed wait of that long on the subtask first
  std::vector<std::pair<int, std::uint64_t>> counting;  // group index, amount
  std::vector<std::pair<int, std::uint64_t>> rate;
  std::atomic<int> runs{0};
  std::atomic<bool> finished{false};  // body returned or threw
  std::atomic<bool> succeeded{false};  // body returned
  std::atomic<bool> early_start{false};
  bool cancelled_by_us = false;  // cancel() returned true
  Handle<int> handle;            // empty once consumed by a continuation or join
  int value() const { return id * 7 + 1; }
};

struct CountingModel {
  ResourceGroup group;
  std::uint64_t original = 0;
  std::uint64_t current = 0;     // driver thread only
  std::atomic<std::uint64_t> highest{0};  // the highest limit set so far
  std::atomic<bool> changed{false};
  std::atomic<std::int64_t> in_use{0};
  std::atomic<bool> over{false};
};

struct RateModel {
  ResourceGroup group;
  std::uint64_t permits = 0, burst = 0;
  std::chrono::nanoseconds interval{};
  std::atomic<std::uint64_t> taken{0};
};

struct WorkflowModel {
  std::unique_ptr<Workflow> workflow;
  std::vector<std::vector<int>> preds;
  std::vector<bool> throws;
  std::unique_ptr<std::atomic<int>[]> ran;  // body runs, over every run
  std::vector<WorkflowRun> runs;
};

class Program {
 public:
  Program(std::uint64_t seed, std::string& failure, std::atomic<std::uint64_t>& ops)
      : rng_(seed), failure_(failure), ops_(ops) {}

  void run() {
    configure();
    const int op_count = pick(20, 160);
    const int shutdown_at = chance(0.4) ? pick(0, op_count) : -1;
    const bool shutdown_cancel = chance(0.5);
    for (int op = 0; op < op_count; ++op) {
      if (op == shutdown_at) {
        begin_shutdown(shutdown_cancel);
        break;
      }
      one_operation();
      ops_.fetch_add(1, std::memory_order_relaxed);
    }
    if (!shutdown_) restore_limits();
    check_outcomes();
    check_workflows();
    // Everything accepted has run or been cancelled once the drain returns
    // (a second shutdown() returns at once, so the first is joined).
    if (shutdown_thread_.joinable()) shutdown_thread_.join();
    scheduler_->shutdown(ShutdownMode::drain);
    check_after_the_end();
  }

  // The watchdog's view: a one-line summary and the live stats. The
  // watchdog runs on its own thread while the driver builds the program, so
  // it reads only what the driver publishes under log_mu_.
  std::string describe() const {
    std::lock_guard lock(log_mu_);
    std::string out = "waiting for " + waiting_on_ + "\n  " + shape_ + " nodes=" + std::to_string(node_count_) +
                      " last ops:";
    for (const auto& s : log_) out += " " + s;
    return out;
  }
  // Null until configured. stats() may be called on any thread.
  Scheduler* scheduler() const {
    std::lock_guard lock(log_mu_);
    return watched_;
  }

 private:
  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool chance(double p) { return std::bernoulli_distribution(p)(rng_); }
  void fail(const std::string& what) {  // any thread
    std::lock_guard lock(log_mu_);
    if (failure_.empty()) failure_ = what;
  }
  // What the driver waits for, for the watchdog's report.
  void set_waiting_on(const Node& n) {
    std::string what = "task " + std::to_string(n.id) + " (mode " + std::to_string(static_cast<int>(n.mode)) +
                       ", runs " + std::to_string(n.runs.load()) + ", cancelled " + std::to_string(n.cancelled_by_us) +
                       ", counting needs " + std::to_string(n.counting.size()) + ", rate needs " +
                       std::to_string(n.rate.size()) + ", preds";
    for (const Node* p : n.preds)
      what += " " + std::to_string(p->id) + (p->succeeded ? ":ok" : p->finished ? ":failed" : p->runs ? ":running" : ":not run");
    what += ")";
    std::lock_guard lock(log_mu_);
    waiting_on_ = std::move(what);
  }
  void note(std::string op) {
    std::lock_guard lock(log_mu_);
    log_.push_back(std::move(op));
    if (log_.size() > 24) log_.erase(log_.begin());
  }

  void configure() {
    workers_ = static_cast<unsigned>(pick(1, 4));
    levels_ = static_cast<unsigned>(pick(1, 4));
    SchedulerOptions o{.workers = workers_, .levels = levels_};
    if (levels_ > 1 && chance(0.3)) o.policy = Policy::weighted;
    if (o.policy == Policy::strict && levels_ > 1 && chance(0.3)) {
      o.age_bounds.assign(levels_, std::chrono::nanoseconds{0});
      for (unsigned l = 1; l < levels_; ++l) o.age_bounds[l] = std::chrono::microseconds(pick(50, 2000));
    }
    if (workers_ > 1 && levels_ > 1 && chance(0.3)) {
      o.reserved.push_back({Priority{0}, static_cast<unsigned>(pick(1, static_cast<int>(workers_) - 1))});
    }
    scheduler_ = std::make_unique<Scheduler>(o);
    {
      std::lock_guard lock(log_mu_);
      watched_ = scheduler_.get();
      shape_ = "workers=" + std::to_string(workers_) + " levels=" + std::to_string(levels_) +
               (o.policy == Policy::weighted ? " weighted" : "") + (o.age_bounds.empty() ? "" : " ageing") +
               (o.reserved.empty() ? "" : " reserved");
    }
    const int counting = pick(0, 3);
    for (int g = 0; g < counting; ++g) {
      auto m = std::make_unique<CountingModel>();
      // Now and then a limit large enough that workers keep spare permits
      // (ResourceManager::kSpareLimitPerWorker): their hand-back to waiters
      // is checked too.
      m->original = m->current = chance(0.2) ? 128u * workers_ + static_cast<std::uint64_t>(pick(0, 64))
                                             : static_cast<std::uint64_t>(pick(1, 4));
      m->highest = m->original;
      m->group = scheduler_->resource_group("c" + std::to_string(g), m->original);
      counting_.push_back(std::move(m));
    }
    const int rates = pick(0, 2);
    for (int g = 0; g < rates; ++g) {
      auto m = std::make_unique<RateModel>();
      m->permits = static_cast<std::uint64_t>(pick(1, 120));
      m->burst = static_cast<std::uint64_t>(pick(1, 3));
      m->interval = std::chrono::microseconds(pick(500, 5000));
      m->group = scheduler_->rate_group("r" + std::to_string(g), m->permits, m->interval, m->burst);
      rates_.push_back(std::move(m));
    }
    started_ = Clock::now();
  }

  Priority level() { return Priority{static_cast<std::uint8_t>(pick(0, static_cast<int>(levels_) - 1))}; }

  std::vector<Node*> valid_handles() {
    std::vector<Node*> out;
    for (auto& n : nodes_)
      if (n->handle.valid()) out.push_back(n.get());
    return out;
  }
  Node* random_valid() {
    auto v = valid_handles();
    return v.empty() ? nullptr : v[static_cast<std::size_t>(pick(0, static_cast<int>(v.size()) - 1))];
  }
  std::vector<Node*> distinct_valid(int want) {
    auto v = valid_handles();
    std::shuffle(v.begin(), v.end(), rng_);
    if (static_cast<int>(v.size()) > want) v.resize(static_cast<std::size_t>(want));
    return v;
  }

  Node* new_node(Node::Mode mode, std::vector<Node*> preds) {
    auto n = std::make_unique<Node>();
    n->id = static_cast<int>(nodes_.size());
    n->mode = mode;
    n->preds = std::move(preds);
    n->throws = chance(0.08);
    n->spin_us = chance(0.3) ? pick(0, 60) : 0;
    nodes_.push_back(std::move(n));
    {
      std::lock_guard lock(log_mu_);
      node_count_ = nodes_.size();
    }
    return nodes_.back().get();
  }

  // Needs are only for tasks that never wait on others: a task holding a
  // permit while waiting for one that needs it would be the user's deadlock.
  std::vector<Need> random_needs(Node& n) {
    std::vector<Need> needs;
    for (std::size_t g = 0; g < counting_.size(); ++g) {
      if (!chance(0.35)) continue;
      const int most = static_cast<int>(counting_[g]->current);
      // In a large group mostly small needs (those run on spares), now and
      // then up to the whole limit (that one waits for them to come back).
      auto amount = static_cast<std::uint64_t>(most > 8 && chance(0.9) ? pick(1, 3) : pick(1, most));
      needs.push_back({counting_[g]->group, amount});
      n.counting.emplace_back(static_cast<int>(g), amount);
    }
    for (std::size_t g = 0; g < rates_.size(); ++g) {
      if (!chance(0.25)) continue;
      auto amount = static_cast<std::uint64_t>(pick(1, static_cast<int>(rates_[g]->burst)));
      needs.push_back({rates_[g]->group, amount});
      n.rate.emplace_back(static_cast<int>(g), amount);
    }
    if (needs.empty()) {
      n.children = chance(0.15) ? pick(1, 4) : 0;
      n.nested_get = chance(0.1);
      if (n.nested_get && chance(0.5)) n.nested_wait_for_us = pick(0, 200);
    }
    return needs;
  }

  // The body every task of the model runs.
  int body(Node& n) {
    n.runs.fetch_add(1);
    bool ok = n.mode != Node::Mode::any;
    for (Node* p : n.preds) {
      if (n.mode == Node::Mode::all && !p->succeeded.load()) ok = false;
      if (n.mode == Node::Mode::any && p->finished.load()) ok = true;
      if (n.mode == Node::Mode::recover && p->runs.load() > 0 && !p->finished.load()) ok = false;
    }
    if (!ok) n.early_start = true;
    for (auto [g, amount] : n.counting) {
      auto& m = *counting_[static_cast<std::size_t>(g)];
      const auto now = m.in_use.fetch_add(static_cast<std::int64_t>(amount)) + static_cast<std::int64_t>(amount);
      const auto bound = m.changed ? m.highest.load() : m.original;
      if (now > static_cast<std::int64_t>(bound)) m.over = true;
    }
    for (auto [g, amount] : n.rate) rates_[static_cast<std::size_t>(g)]->taken.fetch_add(amount);
    if (n.spin_us > 0) {
      const auto until = Clock::now() + std::chrono::microseconds(n.spin_us);
      while (Clock::now() < until) {
      }
    }
    if (n.children > 0) {
      std::atomic<int> done{0};
      TaskGroup g(*scheduler_);
      for (int c = 0; c < n.children; ++c) {
        // Both spawn paths: a callable of plain bytes (copied into its node
        // by one call) and one that must be constructed there (a string).
        if (c % 2 == 0) {
          g.spawn([&] {
            TaskGroup inner(*scheduler_);
            inner.spawn([&] { done.fetch_add(1); });
            inner.wait();
          });
        } else {
          g.spawn([&, tag = std::string("constructed in the node")] {
            TaskGroup inner(*scheduler_);
            inner.spawn([&done, tag] { done.fetch_add(tag.empty() ? 0 : 1); });
            inner.wait();
          });
        }
      }
      try {
        g.wait();
        if (done.load() != n.children) fail("a task group's wait returned before its children ran");
      } catch (const TaskCancelled&) {  // children not started when shutdown(cancel) began
        if (!cancel_started_.load()) fail("a task group's children were cancelled without a shutdown(cancel)");
      }
    }
    if (n.nested_get) {
      try {
        auto sub = scheduler_->submit([] { return 5; });
        // A timed helping wait on a worker: true means finished, and only then.
        if (n.nested_wait_for_us >= 0 && sub.wait_for(std::chrono::microseconds(n.nested_wait_for_us)) && !sub.ready())
          fail("a nested wait_for said finished before the subtask was");
        if (sub.get() != 5) fail("a nested subtask returned the wrong value");
      } catch (const TaskCancelled&) {  // shutdown(cancel) may cancel it
      }
    }
    for (auto [g, amount] : n.counting) counting_[static_cast<std::size_t>(g)]->in_use.fetch_sub(static_cast<std::int64_t>(amount));
    n.finished = true;
    if (n.throws) throw ChaosError{n.id};
    n.succeeded = true;
    return n.value();
  }

  void one_operation() {
    const int what = pick(0, 99);
    try {
      if (what < 28) {
        submit_plain();
      } else if (what < 36) {
        Node* parent = random_valid();
        if (parent == nullptr) return submit_plain();
        Node* n = new_node(Node::Mode::all, {parent});
        ThenOptions o;
        if (chance(0.5)) o.priority = level();
        o.needs = random_needs(*n);
        n->handle = std::move(parent->handle).then([this, n](int) { return body(*n); }, std::move(o));
        note("then#" + std::to_string(n->id));
      } else if (what < 40) {
        Node* parent = random_valid();
        if (parent == nullptr) return submit_plain();
        Node* n = new_node(Node::Mode::recover, {parent});
        n->handle = std::move(parent->handle).then([this, n](Outcome<int>) { return body(*n); });
        note("recover#" + std::to_string(n->id));
      } else if (what < 46) {
        join(false);
      } else if (what < 50) {
        join(true);
      } else if (what < 56) {
        post();
      } else if (what < 64) {
        if (Node* n = random_valid()) {
          n->cancelled_by_us = n->handle.cancel() || n->cancelled_by_us;
          note("cancel#" + std::to_string(n->id));
        }
      } else if (what < 73) {
        if (Node* n = random_valid()) {
          (void)n->handle.set_priority(level());
          note("prio#" + std::to_string(n->id));
        }
      } else if (what < 78) {
        change_limit();
      } else if (what < 80) {
        if (levels_ > 1 && workers_ > 1) {
          try {
            scheduler_->reserve(Priority{static_cast<std::uint8_t>(pick(0, static_cast<int>(levels_) - 2))},
                                static_cast<unsigned>(pick(0, static_cast<int>(workers_) - 1)));
          } catch (const InvalidArgument&) {  // would leave no unreserved worker: refused, nothing changed
          }
          note("reserve");
        }
      } else if (what < 85) {
        run_workflow();
      } else if (what < 90) {
        for (Node* n : valid_handles()) {  // observe without consuming
          (void)n->handle.ready();
          (void)n->handle.status();
          // A timed wait never says "finished" early, and leaves the handle usable.
          if (n->handle.wait_for(std::chrono::microseconds(pick(0, 300))) && !n->handle.ready())
            fail("task " + std::to_string(n->id) + ": wait_for said finished before it was");
          break;
        }
        for (auto& m : workflows_) {
          if (m->runs.empty()) continue;
          WorkflowRun& run = m->runs[static_cast<std::size_t>(pick(0, static_cast<int>(m->runs.size()) - 1))];
          if (run.wait_for(std::chrono::microseconds(pick(0, 300))) && !run.ready())
            fail("a workflow run's wait_for said finished before it was");
          break;
        }
      } else {
        if (chance(0.5)) {
          std::this_thread::yield();
        } else {
          std::this_thread::sleep_for(std::chrono::microseconds(pick(1, 300)));
        }
      }
    } catch (const std::exception& e) {
      fail(std::string("an operation threw: ") + e.what());
    }
  }

  void submit_plain() {
    std::vector<Node*> after;
    if (chance(0.3)) after = distinct_valid(pick(1, 3));
    Node* n = new_node(after.empty() ? Node::Mode::none : Node::Mode::all, after);
    SubmitOptions o;
    if (chance(0.6)) o.priority = level();
    for (Node* p : after) o.after.emplace_back(p->handle);
    o.needs = random_needs(*n);
    n->handle = scheduler_->submit([this, n] { return body(*n); }, std::move(o));
    note("submit#" + std::to_string(n->id));
  }

  void join(bool any) {
    auto inputs = distinct_valid(pick(1, 3));
    if (inputs.empty()) return submit_plain();
    Node* n = new_node(any ? Node::Mode::any : Node::Mode::all, inputs);
    std::vector<Handle<int>> handles;
    for (Node* p : inputs) handles.push_back(std::move(p->handle));
    if (any) {
      n->handle = when_any(std::move(handles)).then([this, n](std::pair<std::size_t, int>) { return body(*n); });
    } else {
      n->handle = when_all(std::move(handles)).then([this, n](std::vector<int>) { return body(*n); });
    }
    note(std::string(any ? "any#" : "all#") + std::to_string(n->id));
  }

  void post() {
    SubmitOptions o;
    if (chance(0.5)) o.priority = level();
    if (chance(0.5) && !(counting_.empty() && rates_.empty())) {
      // With needs: a task without a handle that takes permits. Its node is
      // checked like any other's (limits in body(), lost or run twice at the
      // end), by its runs alone.
      Node* n = new_node(Node::Mode::all, {});
      o.needs = random_needs(*n);
      scheduler_->post([this, n] { (void)body(*n); }, std::move(o));
      note("post#" + std::to_string(n->id));
      return;
    }
    ++posted_;
    scheduler_->post([this] { posted_ran_.fetch_add(1); }, std::move(o));
    note("post");
  }

  void change_limit() {
    if (counting_.empty()) return;
    auto& m = *counting_[static_cast<std::size_t>(pick(0, static_cast<int>(counting_.size()) - 1))];
    const auto limit = static_cast<std::uint64_t>(pick(1, static_cast<int>(m.original) + 2));
    m.changed = true;  // bodies then compare with `highest`, raised before the limit
    if (limit > m.highest.load()) m.highest = limit;  // before the new room can be handed out
    m.group.set_limit(limit);
    m.current = limit;
    note("limit=" + std::to_string(limit));
  }

  // Every waiter fits again: what a lowered limit held back can now run.
  void restore_limits() {
    for (auto& m : counting_) {
      const auto limit = m->highest.load();
      m->group.set_limit(limit);
      m->current = limit;
    }
  }

  void begin_shutdown(bool cancel) {
    shutdown_ = true;
    cancel_shutdown_ = cancel;
    cancel_started_ = cancel;
    for (auto& m : counting_) limit_at_shutdown_.push_back(m->current);
    note(cancel ? "shutdown(cancel)" : "shutdown(drain)");
    // From another thread: the driver must not wait for it (a drain runs
    // everything first); the scheduler refuses new work at once.
    shutdown_thread_ = std::thread([this, cancel] { scheduler_->shutdown(cancel ? ShutdownMode::cancel : ShutdownMode::drain); });
    while (true) {  // until submissions are refused
      try {
        scheduler_->post([] {});
      } catch (const SchedulerStopped&) {
        break;
      }
      std::this_thread::yield();
    }
  }

  void run_workflow() {
    auto m = std::make_unique<WorkflowModel>();
    const int size = pick(1, 6);
    m->workflow = std::make_unique<Workflow>("wf" + std::to_string(workflows_.size()));
    m->ran = std::make_unique<std::atomic<int>[]>(static_cast<std::size_t>(size));
    m->preds.resize(static_cast<std::size_t>(size));
    for (int i = 0; i < size; ++i) {
      const bool throws = chance(0.1);
      m->throws.push_back(throws);
      NodeOptions o;
      if (chance(0.3)) o.priority = level();
      if (!counting_.empty() && chance(0.3)) {
        auto& g = *counting_[static_cast<std::size_t>(pick(0, static_cast<int>(counting_.size()) - 1))];
        o.needs.push_back({g.group, static_cast<std::uint64_t>(pick(1, static_cast<int>(g.current)))});
      }
      std::atomic<int>* ran = &m->ran[static_cast<std::size_t>(i)];
      auto ref = m->workflow->node("n" + std::to_string(i), [ran, throws] {
        ran->fetch_add(1);
        if (throws) throw std::runtime_error("node failed");
      }, std::move(o));
      for (int j = 0; j < i; ++j) {
        if (chance(0.4)) {
          ref.after("n" + std::to_string(j));
          m->preds[static_cast<std::size_t>(i)].push_back(j);
        }
      }
    }
    const int runs = pick(1, 3);
    for (int r = 0; r < runs; ++r) {
      WorkflowRunOptions o;
      if (chance(0.5)) o.priority = level();
      m->runs.push_back(m->workflow->run(*scheduler_, o));
    }
    note("workflow x" + std::to_string(runs));
    workflows_.push_back(std::move(m));
  }

  // Why a task that did not run was allowed not to.
  bool excused(const Node& n) const {
    if (n.cancelled_by_us || cancel_shutdown_) return true;
    if (shutdown_) {  // a drain cancels a waiter needing more than a lowered limit
      for (auto [g, amount] : n.counting)
        if (amount > limit_at_shutdown_[static_cast<std::size_t>(g)]) return true;
    }
    if (n.mode == Node::Mode::all) {
      for (const Node* p : n.preds)
        if (!p->succeeded.load()) return true;
    }
    // when_any completes with whichever input finished first: it may be one
    // that failed or was cancelled even if another succeeded later. Unless
    // every input succeeded, which one won is not known here.
    if (n.mode == Node::Mode::any) {
      for (const Node* p : n.preds)
        if (!p->succeeded.load()) return true;
    }
    return false;
  }

  void check_outcomes() {
    // Every handle still held resolves; the watchdog catches a hang.
    for (auto& np : nodes_) {
      Node& n = *np;
      if (n.early_start.load()) fail("task " + std::to_string(n.id) + " started before its predecessors succeeded");
      if (!n.handle.valid()) continue;
      set_waiting_on(n);
      std::optional<int> value;
      std::optional<int> error_of;
      bool cancelled = false;
      try {
        value = n.handle.get();
      } catch (const ChaosError& e) {
        error_of = e.id;
      } catch (const TaskCancelled&) {
        cancelled = true;
      } catch (const std::exception& e) {
        fail("task " + std::to_string(n.id) + ": unexpected exception " + e.what());
        continue;
      }
      const bool ran = n.runs.load() > 0;
      const std::string id = "task " + std::to_string(n.id);
      if (ran && !n.throws && value != n.value()) fail(id + " ran but its handle does not hold its value");
      if (ran && n.throws && error_of != n.id) fail(id + " threw but its handle does not hold its error");
      if (!ran && value) fail(id + " never ran but its handle holds a value");
      if (!ran && error_of == n.id) fail(id + " never ran but its handle holds its own error");
      if (!ran && !excused(n)) fail(id + " was lost: it never ran, and nothing cancelled it");
      if (n.cancelled_by_us && ran) fail(id + " ran although cancel() returned true");
      (void)cancelled;
    }
  }

  // After the final drain: tasks whose handles a continuation consumed (their
  // dependents may have resolved early, by cancel()) must have run too.
  void check_after_the_end() {
    for (const auto& n : nodes_) {
      if (n->runs.load() > 1) fail("task " + std::to_string(n->id) + " ran " + std::to_string(n->runs.load()) + " times");
      if (n->runs.load() == 0 && !excused(*n)) fail("task " + std::to_string(n->id) + " was lost: it never ran");
    }
    if (posted_ran_.load() > posted_) fail("a posted task ran twice");
    if (!cancel_shutdown_ && posted_ran_.load() != posted_) fail("a posted task was lost");
    check_end_state();
  }

  void check_workflows() {
    for (auto& m : workflows_) {
      std::vector<int> ran_in_runs(m->throws.size(), 0);
      for (auto& run : m->runs) {
        {
          std::lock_guard lock(log_mu_);
          waiting_on_ = "a run of workflow " + m->workflow->name();
        }
        bool failed_node = false, cancelled_node = false;
        run.wait();
        for (std::size_t i = 0; i < m->throws.size(); ++i) {
          const NodeStatus s = run.status(i);
          if (s == NodeStatus::pending || s == NodeStatus::running) fail("a finished run has an unfinished node");
          if (s == NodeStatus::succeeded || s == NodeStatus::failed) ran_in_runs[i]++;
          if (s == NodeStatus::failed) failed_node = true;
          if (s == NodeStatus::cancelled) cancelled_node = true;
          if (s == NodeStatus::failed && !m->throws[i]) fail("a workflow node that cannot throw failed");
          if (s == NodeStatus::succeeded && m->throws[i]) fail("a workflow node that throws succeeded");
          if (s == NodeStatus::succeeded || s == NodeStatus::failed) {
            for (int p : m->preds[i])
              if (run.status(static_cast<std::size_t>(p)) != NodeStatus::succeeded)
                fail("a workflow node ran although a predecessor did not succeed");
          }
          if (s == NodeStatus::cancelled && !cancel_shutdown_ && !shutdown_) {
            bool excuse = false;
            for (int p : m->preds[i]) excuse = excuse || run.status(static_cast<std::size_t>(p)) != NodeStatus::succeeded;
            if (!excuse) {
              std::string what = "workflow node n" + std::to_string(i) + " was cancelled although its predecessors succeeded; run:";
              for (std::size_t j = 0; j < m->throws.size(); ++j) what += std::string(" ") + to_string(run.status(j));
              fail(what + "\n" + m->workflow->to_mermaid(&run));
            }
          }
        }
        bool threw = false;
        try {
          run.get();
        } catch (...) {
          threw = true;
        }
        if (threw != (failed_node || cancelled_node)) fail("a run's get() disagrees with its nodes' statuses");
      }
      for (std::size_t i = 0; i < m->throws.size(); ++i)
        if (ran_in_runs[i] != m->ran[i].load()) fail("a workflow node body ran a different number of times than reported");
    }
  }

  void check_end_state() {
    for (auto& m : counting_) {
      if (m->over.load()) fail("group " + m->group.name() + " had more in use than its limit");
      const auto st = m->group.stats();
      if (st.in_use != 0) fail("group " + m->group.name() + " kept permits after every task finished");
      if (st.waiting != 0) fail("group " + m->group.name() + " kept parked waiters after every task finished");
      if (m->in_use.load() != 0) fail("the model's in-use count of a group is not back to zero");
    }
    const double elapsed_s = std::chrono::duration<double>(Clock::now() - started_).count();
    for (auto& m : rates_) {
      const double per_s = static_cast<double>(m->permits) / std::chrono::duration<double>(m->interval).count();
      const double bound = static_cast<double>(m->burst) + per_s * elapsed_s + static_cast<double>(m->permits);
      if (static_cast<double>(m->taken.load()) > bound) fail("rate group " + m->group.name() + " handed out more than its rate");
    }
    // The pool is stopped: the snapshot is final.
    const auto st = scheduler_->stats();
    std::uint64_t per_worker = 0, per_level = 0;
    for (const auto& w : st.per_worker) per_worker += w.tasks_run;
    for (const auto& l : st.per_level) per_level += l.completed;
    if (st.tasks_run != per_worker || st.tasks_run != per_level) fail("the stats snapshot does not add up");
  }

  std::mt19937_64 rng_;
  std::string& failure_;
  std::atomic<std::uint64_t>& ops_;
  unsigned workers_ = 1, levels_ = 1;
  std::unique_ptr<Scheduler> scheduler_;
  std::vector<std::unique_ptr<CountingModel>> counting_;
  std::vector<std::unique_ptr<RateModel>> rates_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<std::unique_ptr<WorkflowModel>> workflows_;
  std::uint64_t posted_ = 0;
  std::atomic<std::uint64_t> posted_ran_{0};
  bool shutdown_ = false;
  bool cancel_shutdown_ = false;
  std::atomic<bool> cancel_started_{false};
  std::vector<std::uint64_t> limit_at_shutdown_;
  std::thread shutdown_thread_;
  Clock::time_point started_;
  mutable std::mutex log_mu_;
  std::vector<std::string> log_;
  std::string waiting_on_ = "nothing";
  std::string shape_ = "not configured yet";  // log_mu_
  std::size_t node_count_ = 0;                 // log_mu_
  Scheduler* watched_ = nullptr;               // log_mu_; lives as long as the Program

 public:
  ~Program() {
    if (shutdown_thread_.joinable()) shutdown_thread_.join();
  }
};

TEST(Chaos, RandomProgramsOverTheWholeApiKeepEveryInvariant) {
  const std::uint64_t seed = env_u64("ORDO_SEED", std::random_device{}());
  const auto budget = std::chrono::seconds(env_u64("ORDO_CHAOS_SECONDS", 20));
  const auto pause_us = static_cast<int>(env_u64("ORDO_CHAOS_PAUSE_US", 0));
  struct PausesOff {
    ~PausesOff() { set(0); }
    static void set(int us) {
      for (auto* p : {&detail::drain_judge_pause_us, &detail::refused_submission_pause_us,
                      &detail::needs_submission_pause_us, &detail::drain_idle_pause_us, &detail::stop_step_pause_us,
                      &detail::drain_unsatisfiable_pause_us})
        p->store(us);
    }
  } pauses_off;
  PausesOff::set(pause_us);
  std::printf("chaos: ORDO_SEED=%llu, %llu s, fault-point pauses %d us\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(budget.count()), pause_us);
  std::fflush(stdout);
  std::atomic<std::uint64_t> ops{0};
  std::uint64_t programs = env_u64("ORDO_CHAOS_FIRST", 0);  // replays from a reported program on
  const std::uint64_t first = programs;
  const bool repeat = env_u64("ORDO_CHAOS_REPEAT", 0) != 0;
  std::mutex current_mu;
  Program* current = nullptr;
  std::uint64_t current_index = 0;
  Clock::time_point current_started;
  std::atomic<bool> finished{false};
  // A hang is a failure: report what was running, then end the process.
  std::thread watchdog([&] {
    while (!finished.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      std::lock_guard lock(current_mu);
      if (current == nullptr || Clock::now() - current_started < std::chrono::seconds(60)) continue;
      std::fprintf(stderr, "chaos: program %llu of ORDO_SEED=%llu hung for 60 s\n  %s\n",
                   static_cast<unsigned long long>(current_index), static_cast<unsigned long long>(seed),
                   current->describe().c_str());
      Scheduler* s = current->scheduler();
      if (s == nullptr) {
        std::fprintf(stderr, "  (no scheduler yet)\n");
        std::abort();
      }
      const auto st = s->stats();
      std::fprintf(stderr, "  stats: tasks_run=%llu parked workers=%u\n", static_cast<unsigned long long>(st.tasks_run),
                   st.workers_parked);
      for (std::size_t w = 0; w < st.per_worker.size(); ++w)
        std::fprintf(stderr, "  worker %zu: parked=%d tasks_run=%llu\n", w, st.per_worker[w].parked ? 1 : 0,
                     static_cast<unsigned long long>(st.per_worker[w].tasks_run));
      for (const auto& r : st.resources)
        std::fprintf(stderr, "  group %s: limit=%llu in_use=%llu waiting=%llu\n", r.name.c_str(),
                     static_cast<unsigned long long>(r.limit), static_cast<unsigned long long>(r.in_use),
                     static_cast<unsigned long long>(r.waiting));
      for (std::size_t l = 0; l < st.per_level.size(); ++l)
        std::fprintf(stderr, "  level %zu: queued=%llu running=%llu\n", l,
                     static_cast<unsigned long long>(st.per_level[l].queued),
                     static_cast<unsigned long long>(st.per_level[l].running));
      std::fflush(stderr);
      std::abort();
    }
  });
  const auto deadline = Clock::now() + budget;
  std::string failure;
  while (Clock::now() < deadline && failure.empty()) {
    Program program(seed + (repeat ? first : programs), failure, ops);
    {
      std::lock_guard lock(current_mu);
      current = &program;
      current_index = repeat ? first : programs;
      current_started = Clock::now();
    }
    program.run();
    {
      std::lock_guard lock(current_mu);
      current = nullptr;
    }
    if (!failure.empty()) {
      ADD_FAILURE() << "program " << (repeat ? first : programs) << " of ORDO_SEED=" << seed << ": " << failure << "\n  "
                    << program.describe();
    }
    ++programs;
  }
  finished = true;
  watchdog.join();
  std::printf("chaos: %llu programs, %llu operations\n", static_cast<unsigned long long>(programs),
              static_cast<unsigned long long>(ops.load()));
  RecordProperty("programs", static_cast<int>(programs));
  EXPECT_GT(programs, 0u);
}

}  // namespace
}  // namespace ordo
