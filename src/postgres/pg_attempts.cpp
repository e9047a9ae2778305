// PostgreSQL store: claimed tasks onto the scheduler, one attempt (plain or
// inside a transaction that records its completion), checkpoints.
#include <algorithm>
#include <cstring>
#include <sstream>

#include "ordo/observability.hpp"
#include "ordo/resource.hpp"
#include "postgres/pg_runtime.hpp"

namespace ordo::detail {

thread_local const PgRuntime* t_in_pg_handler_of = nullptr;

namespace {

// The task object the scheduler runs: runs the attempt, or, destroyed unrun
// (the scheduler cancelled or refused it), gives the claim back.
struct PgRunner {
  PgRuntime* rt;
  TaskId id;
  unsigned attempt;
  PgRunner(PgRuntime* rt, TaskId id, unsigned attempt) noexcept : rt(rt), id(id), attempt(attempt) {}
  PgRunner(PgRunner&& other) noexcept
      : rt(std::exchange(other.rt, nullptr)), id(other.id), attempt(other.attempt) {}
  PgRunner& operator=(PgRunner&&) = delete;
  ~PgRunner() {
    if (rt != nullptr) rt->dropped(id, attempt);
  }
  void operator()() { std::exchange(rt, nullptr)->run(id, attempt); }
};

// A TaskContext's view of an attempt on the PostgreSQL store.
class PgAttempt final : public AttemptView {
 public:
  PgAttempt(PgRuntime& rt, PgRuntime::Held& held, pg::Connection* tx) : rt_(rt), held_(held), tx_(tx) {}
  TaskId id() const noexcept override { return held_.id; }
  const std::string& type() const noexcept override { return held_.type; }
  unsigned attempt() const noexcept override { return held_.attempt - held_.base; }
  std::string_view args() const noexcept override { return held_.args; }
  std::span<const std::byte> last_checkpoint() const noexcept override {
    return {reinterpret_cast<const std::byte*>(held_.checkpoint.data()), held_.checkpoint.size()};
  }
  void checkpoint(std::span<const std::byte> bytes) override { rt_.checkpoint(held_, bytes); }
  pg_conn* transaction() override {
    if (tx_ == nullptr) {
      throw Error("ordo: TaskContext::transaction(): durable type '" + held_.type +
                  "' is not transactional (TaskTypeOptions::transactional)");
    }
    return tx_->raw();
  }

 private:
  PgRuntime& rt_;
  PgRuntime::Held& held_;
  pg::Connection* tx_;
};

// "name=count" lines into this scheduler's groups; empty `error` when all resolve.
Needs resolve_needs(Scheduler& scheduler, const std::string& lines, std::string& error) {
  Needs needs;
  std::istringstream in(lines);
  for (std::string line; std::getline(in, line);) {
    const auto eq = line.rfind('=');
    if (eq == std::string::npos) continue;
    const std::string name = line.substr(0, eq);
    const unsigned long amount = std::strtoul(line.c_str() + eq + 1, nullptr, 10);
    const ResourceGroup group = scheduler.find_resource_group(name);
    if (!group.valid()) {
      error = "needs resource group '" + name + "', which this process's scheduler does not have";
      return {};
    }
    if (amount == 0 || amount > group.limit()) {
      error = "needs " + std::to_string(amount) + " of resource group '" + name + "', whose limit here is " +
              std::to_string(group.limit());
      return {};
    }
    needs.push_back({group, static_cast<std::uint32_t>(amount)});
  }
  return needs;
}

}  // namespace

std::size_t PgRuntime::claim_and_post(pg::Connection& conn, std::size_t room) {
  // Threads with nothing of ours to run: only that many jobs needing global
  // groups are claimed. One claimed beyond them would hold its permits while
  // it waits for a thread, and a process with a thread free could not run it.
  std::int64_t idle_threads = 0;
  // Tasks held here are not claimed again: one that is available lost its
  // lease while its attempt still runs here (claim's p_held). held_ only
  // grows on this thread, so every id it holds at the claim is in the list.
  std::vector<std::int64_t> held_ids;
  {
    std::lock_guard lock(mu_);
    idle_threads = std::max<std::int64_t>(0, static_cast<std::int64_t>(scheduler_.worker_count()) -
                                                 static_cast<std::int64_t>(posted_ + running_));
    held_ids.reserve(held_.size());
    for (const auto& [key, held] : held_) held_ids.push_back(static_cast<std::int64_t>(key.id));
  }
  const std::int64_t claim_sent_ns = steady_now_ns();
  const pg::Result r = conn.exec(
      sql("SELECT * FROM @S.claim($1, $2, $3, $4, $5, $6::text[], $7, $8::bigint[])"),
      {pg::Param(owner_), pg::Param(static_cast<std::int64_t>(room)),
       pg::Param(static_cast<std::int64_t>(store_.lease.count())), pg::Param(static_cast<std::int64_t>(store_.ageing.count())),
       pg::Param(static_cast<std::int64_t>(scheduler_.level_count())), pg::Param(type_list_), pg::Param(idle_threads),
       pg::int_array_literal(held_ids)});
  struct Posting {
    TaskId id;
    unsigned attempt;
    SubmitOptions options;
    std::string refused;  // why it cannot run here
  };
  std::vector<Posting> postings;
  postings.reserve(static_cast<std::size_t>(r.rows()));
  {
    std::lock_guard lock(mu_);
    for (int i = 0; i < r.rows(); ++i) {
      Held h;
      h.id = static_cast<TaskId>(r.int64(i, 0));
      h.type = std::string(r.text(i, 1));
      h.args = r.bytes(i, 2);
      h.level = static_cast<std::uint8_t>(
          std::min<std::int64_t>(r.int64(i, 3), static_cast<std::int64_t>(scheduler_.level_count()) - 1));
      h.attempt = static_cast<unsigned>(r.int64(i, 4));
      h.base = static_cast<unsigned>(r.int64(i, 5));
      h.max_attempts = static_cast<unsigned>(r.int64(i, 6));
      h.checkpoint = r.bytes(i, 7);
      h.needs = std::string(r.text(i, 8));
      h.last_error = std::string(r.text(i, 9));
      h.kind = &types_.at(h.type);  // claims take only types defined here
      h.lease_from_ns = claim_sent_ns;
      Posting p{h.id, h.attempt, SubmitOptions{.priority = Priority{h.level}}, {}};
      if (!h.needs.empty()) p.options.needs = resolve_needs(scheduler_, h.needs, p.refused);
      held_.emplace(HeldKey{h.id, h.attempt}, std::move(h));
      if (p.refused.empty()) ++posted_;
      postings.push_back(std::move(p));
    }
  }
  for (Posting& p : postings) {
    if (!p.refused.empty()) {
      std::lock_guard lock(mu_);
      Held& h = held_.at(HeldKey{p.id, p.attempt});
      outcomes_.push_back({p.id, h.attempt, false, "ordo: durable task " + std::to_string(p.id) + " " + p.refused,
                           backoff_ms(h, h.attempt - h.base)});
      ++failed_attempts_;
      finisher_cv_.notify_one();
      continue;
    }
    try {
      scheduler_.post(PgRunner(this, p.id, p.attempt), std::move(p.options));
    } catch (...) {
      // Refused (the scheduler is stopping): the runner was dropped, which
      // gave the claim back.
    }
  }
  return static_cast<std::size_t>(r.rows());
}

bool PgRuntime::lease_may_lapse(const Held& held) const noexcept {
  // A renewal is due every lease / 3; a quarter of the lease left means the
  // heartbeat missed about two (this process stalled), and the attempt
  // could be taken over before its handler even began. Run on the steady
  // clock, beside the server's: the two differ in rate only.
  const std::int64_t lease_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(store_.lease).count();
  return steady_now_ns() - held.lease_from_ns > lease_ns - lease_ns / 4;
}

std::int64_t PgRuntime::backoff_ms(const Held& held, unsigned attempt) {
  // mu_ held by the caller (rng_).
  return retry_delay_ns(held.kind->options.retry, std::max(1u, attempt), rng_) / 1000000;
}

void PgRuntime::dropped(TaskId id, unsigned attempt) noexcept {
  std::lock_guard lock(mu_);
  --posted_;
  auto it = held_.find(HeldKey{id, attempt});
  if (it == held_.end()) return;
  releases_.emplace_back(id, attempt);
  finisher_cv_.notify_one();
}

void PgRuntime::run(TaskId id, unsigned attempt) {
  std::unique_lock lock(mu_);
  --posted_;
  Held& held = held_.at(HeldKey{id, attempt});  // in held_ until its outcome is recorded, which is below
  if (cancelling_ || held.lost || lease_may_lapse(held)) {
    // shutdown(cancel): back to the queue, uncounted. Lost, or about to be:
    // another process may hold it already; the fence would reject anything
    // this one did, but could not stop the handler running twice at once.
    // The release is fenced too: it gives back only a claim still ours.
    releases_.emplace_back(id, held.attempt);
    finisher_cv_.notify_one();
    return;
  }
  held.started = true;
  ++running_;
  const Type& type = *held.kind;
  lock.unlock();
  if (type.options.transactional) {
    run_transactional(held, type);
    return;
  }
  PgAttempt view(*this, held, nullptr);
  std::string error;
  const bool ok = call_handler(held, type, view, error);
  lock.lock();
  --running_;
  if (!ok) ++failed_attempts_;
  outcomes_.push_back({id, held.attempt, ok, error, ok ? 0 : backoff_ms(held, held.attempt - held.base)});
  finisher_cv_.notify_one();
}

bool PgRuntime::call_handler(Held& held, const Type& type, AttemptView& view, std::string& error) {
  TaskContext ctx = context_for(view);
  bool ok = false;
  const PgRuntime* outer = std::exchange(t_in_pg_handler_of, this);  // a helping wait may nest runs
  try {
    trace_label(held.type);
    type.handler(ctx, {reinterpret_cast<const std::byte*>(held.args.data()), held.args.size()});
    ok = true;
  } catch (const std::exception& e) {
    error = e.what();
  } catch (...) {
    error = "a non-standard exception";
  }
  t_in_pg_handler_of = outer;
  return ok;
}

void PgRuntime::run_transactional(Held& held, const Type& type) {
  std::unique_ptr<pg::Connection> tx;
  std::string error;
  bool ok = false;
  bool recorded = false;  // the completion committed together with the handler's work
  bool fenced = false;    // the attempt no longer held the task: nothing it did was committed
  try {
    tx = take_transaction_connection();
    tx->run_script("BEGIN");
    PgAttempt view(*this, held, tx.get());
    ok = call_handler(held, type, view, error);
    if (ok) {
      // The fenced completion in the handler's own transaction: committed
      // together with its work, or (fenced) neither is.
      const pg::Result r = tx->exec(sql("SELECT * FROM @S.finish(ARRAY[$1]::bigint[], ARRAY[$2]::integer[],"
                                        " ARRAY[true], ARRAY[NULL]::text[], ARRAY[0]::bigint[], $3)"),
                                    {pg::Param(static_cast<std::int64_t>(held.id)),
                                     pg::Param(static_cast<std::int64_t>(held.attempt)), pg::Param(retain_ms_)});
      if (r.rows() == 1) {
        tx->run_script("COMMIT");
        recorded = true;
        owe_wake();  // its permits and successors, fleet-wide
      } else {
        tx->run_script("ROLLBACK");
        fenced = true;
      }
    } else {
      tx->run_script("ROLLBACK");
    }
  } catch (const std::exception& e) {
    // The transaction did not commit (or its COMMIT's answer was lost: then
    // it may have, and the fence keeps anyone from doing it again).
    error = std::string(ok ? "the completing transaction failed: " : "the attempt's transaction failed: ") + e.what();
    ok = false;
    fenced = false;
    if (tx && !tx->broken()) {
      try {
        tx->run_script("ROLLBACK");
      } catch (...) {  // the connection goes back broken; the next user reconnects
      }
    }
  }
  if (tx) give_back(std::move(tx));
  std::lock_guard lock(mu_);
  --running_;
  if (recorded) {
    ++completed_;
    held_.erase(HeldKey{held.id, held.attempt});
    changed_.notify_all();
    wake_claimer();
    return;
  }
  if (fenced) {
    ++fenced_;
    held_.erase(HeldKey{held.id, held.attempt});
    changed_.notify_all();
    wake_claimer();
    return;
  }
  ++failed_attempts_;
  outcomes_.push_back({held.id, held.attempt, false, error, backoff_ms(held, held.attempt - held.base)});
  finisher_cv_.notify_one();
}

std::unique_ptr<pg::Connection> PgRuntime::take_transaction_connection() {
  {
    std::lock_guard lock(tx_mu_);
    if (!tx_free_.empty()) {
      auto conn = std::move(tx_free_.back());
      tx_free_.pop_back();
      if (!conn->broken()) return conn;
    }
  }
  return std::make_unique<pg::Connection>(store_.conninfo);
}

void PgRuntime::give_back(std::unique_ptr<pg::Connection> conn) {
  if (conn->broken()) return;
  const unsigned keep = store_.transaction_connections != 0 ? store_.transaction_connections : scheduler_.worker_count();
  std::lock_guard lock(tx_mu_);
  if (tx_free_.size() < keep) tx_free_.push_back(std::move(conn));
}

void PgRuntime::checkpoint(Held& held, std::span<const std::byte> bytes) {
  const pg::Result r = admin(sql("UPDATE @S.jobs SET checkpoint = $3 WHERE id = $1 AND attempt = $2 AND state = 'running'"),
                             {pg::Param(static_cast<std::int64_t>(held.id)), pg::Param(static_cast<std::int64_t>(held.attempt)),
                              pg::Param::bytes({reinterpret_cast<const char*>(bytes.data()), bytes.size()})});
  if (r.affected() != 1) {
    throw LeaseLost("ordo: durable task " + std::to_string(held.id) + " attempt " +
                    std::to_string(held.attempt - held.base) +
                    " lost its lease (taken back after it ran out): its checkpoint was rejected by the fence");
  }
  std::lock_guard lock(mu_);
  held.checkpoint.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

}  // namespace ordo::detail
