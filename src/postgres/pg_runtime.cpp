// PostgreSQL store: life (connect and migrate, start, shutdown), and the
// claimer, heartbeat and finisher threads.
#include "postgres/pg_runtime.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <random>

#include "postgres/schema.hpp"

namespace ordo::detail {
namespace {

std::string random_tag() {
  std::random_device entropy;
  char tag[17];
  std::snprintf(tag, sizeof tag, "%08x%08x", entropy(), entropy());
  return tag;
}

std::string default_owner() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  return std::string(host) + ":" + std::to_string(getpid()) + ":" + random_tag().substr(0, 8);
}

}  // namespace

std::string PgRuntime::sql(const char* text) const { return pg::in_schema(text, store_.schema); }

PgRuntime::PgRuntime(Scheduler& scheduler, const PostgresStore& store, DurableOptions options)
    : scheduler_(scheduler), store_(store), options_(options) {
  pg::checked_identifier(store_.schema, "PostgresStore::schema");
  if (store_.lease < std::chrono::milliseconds(100)) {
    throw InvalidArgument("ordo: PostgresStore::lease of " + std::to_string(store_.lease.count()) +
                          " ms is below the 100 ms a heartbeat needs");
  }
  if (store_.poll <= std::chrono::milliseconds(0)) throw InvalidArgument("ordo: PostgresStore::poll must be positive");
  if (store_.claim_batch == 0) throw InvalidArgument("ordo: PostgresStore::claim_batch must be at least 1");
  if (store_.reconnect_patience < std::chrono::milliseconds(0)) {
    throw InvalidArgument("ordo: PostgresStore::reconnect_patience must not be negative");
  }
  owner_ = store_.worker_name.empty() ? default_owner() : store_.worker_name;
  enqueue_token_prefix_ = owner_ + "/" + random_tag() + "/";
  max_held_ = store_.max_held != 0 ? store_.max_held : 8 * std::max(1u, scheduler_.worker_count());
  retain_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(options_.key_retention).count();
  admin_ = std::make_unique<pg::Connection>(store_.conninfo);
  pg::migrate(*admin_, store_.schema);
  for (unsigned i = 0; i < std::max(1u, store_.enqueue_connections); ++i) lanes_.push_back(std::make_unique<EnqueueLane>());
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw StoreError("ordo: postgres: eventfd failed");
}

PgRuntime::~PgRuntime() {
  shutdown(ShutdownMode::drain, std::nullopt);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void PgRuntime::define(std::string type, TaskHandler handler, TaskTypeOptions options) {
  if (started_) throw Error("ordo: DurableTasks::define('" + type + "') after start()");
  if (type.empty()) throw InvalidArgument("ordo: a durable task type needs a name");
  if (types_.count(type)) throw InvalidArgument("ordo: durable task type '" + type + "' is defined twice");
  if (options.retry.max_attempts == 0) {
    throw InvalidArgument("ordo: durable task type '" + type + "' has max_attempts 0 (at least 1)");
  }
  types_.emplace(std::move(type), Type{std::move(handler), options});
}

DurableRecovery PgRuntime::start() {
  {
    std::lock_guard lock(mu_);
    if (started_) throw Error("ordo: DurableTasks::start() called twice");
    started_ = true;
  }
  // Only types with a handler are claimed here; one without is enqueued only.
  std::vector<std::string> runnable;
  for (const auto& [name, type] : types_) {
    if (type.handler) runnable.push_back(name);
  }
  type_list_ = pg::array_literal(runnable);
  DurableRecovery found;
  std::optional<pg::Result> counted;
  try {
    counted.emplace(admin(sql(
      "SELECT count(*) FILTER (WHERE state IN ('available', 'running', 'blocked')),"
      " count(*) FILTER (WHERE state = 'running'),"
      " count(*) FILTER (WHERE state = 'available' AND run_at > now()),"
      " count(*) FILTER (WHERE state = 'dead'),"
      " count(*) FILTER (WHERE state = 'completed'),"
      " (SELECT count(*) FROM @S.workflows WHERE state = 'running') FROM @S.jobs")));
  } catch (...) {
    // Nothing started: a later start() may try again, and the destructor's
    // drain has nothing to wait for.
    std::lock_guard lock(mu_);
    started_ = false;
    throw;
  }
  const pg::Result& r = *counted;
  found.requeued = static_cast<std::uint64_t>(r.int64(0, 0));
  found.interrupted = static_cast<std::uint64_t>(r.int64(0, 1));
  found.delayed = static_cast<std::uint64_t>(r.int64(0, 2));
  found.dead = static_cast<std::uint64_t>(r.int64(0, 3));
  found.keys = static_cast<std::uint64_t>(r.int64(0, 4));
  found.workflows = static_cast<std::uint64_t>(r.int64(0, 5));
  claimer_ = std::thread([this] { claim_loop(); });
  heartbeat_ = std::thread([this] { heartbeat_loop(); });
  finisher_ = std::thread([this] { finish_loop(); });
  if (store_.async_enqueue) flusher_ = std::thread([this] { flush_loop(); });
  notifier_ = std::thread([this] { notify_loop(); });
  return found;
}

pg::Result PgRuntime::admin(const std::string& text, const std::vector<pg::Param>& params,
                            std::optional<std::chrono::milliseconds> patience_or_default) const {
  const std::chrono::milliseconds patience = patience_or_default.value_or(store_.reconnect_patience);
  std::lock_guard lock(admin_mu_);
  for (int tries = 0;; ++tries) {
    // Outside the try: a reconnect that failed for all its patience ends the
    // call (trying again would only multiply the wait for a server that is away).
    if (admin_->broken()) admin_->reconnect(patience);
    try {
      return admin_->exec(text, params);
    } catch (const pg::StatementError& e) {
      // Each admin statement stands alone (autocommit) and is safe to run
      // again after a lost connection or a deadlock.
      if (tries >= 2 || (!admin_->broken() && !e.transient())) throw;
    }
  }
}

void PgRuntime::note_store_error(const std::exception& e) const noexcept {
  std::lock_guard lock(mu_);
  ++store_errors_;
  try {
    last_store_error_ = e.what();
  } catch (...) {  // no memory for the message: the count still tells
  }
}

void PgRuntime::owe_wake() noexcept {
  {
    std::lock_guard lock(notify_mu_);
    wake_owed_ = true;
  }
  notify_cv_.notify_one();
}

void PgRuntime::notify_loop() {
  std::unique_ptr<pg::Connection> conn;
  for (;;) {
    {
      std::unique_lock lock(notify_mu_);
      notify_cv_.wait(lock, [this] { return wake_owed_ || notifier_done_; });
      if (!wake_owed_) return;  // notifier_done_
      wake_owed_ = false;
    }
    try {
      if (!conn || conn->broken()) conn = std::make_unique<pg::Connection>(store_.conninfo);
      conn->exec(sql("SELECT @S.wake()"));  // no WAL: the transaction writes nothing
    } catch (const StoreError& e) {
      note_store_error(e);  // the claimers' poll is the fallback
      conn.reset();
    }
    // Wakes owed during this millisecond ride on the next NOTIFY.
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void PgRuntime::wake_claimer() noexcept {
  const std::uint64_t one = 1;
  [[maybe_unused]] const auto n = write(wake_fd_, &one, sizeof one);  // a full counter still wakes
}

void PgRuntime::claim_loop() {
  std::unique_ptr<pg::Connection> conn;
  const std::string listen = "LISTEN " + store_.schema + "_ready";
  for (;;) {
    std::size_t room = 0;
    bool draining = false;
    {
      std::lock_guard lock(mu_);
      if (threads_done_) return;
      if (!cancelling_ && held_.size() < max_held_) room = max_held_ - held_.size();
      draining = stopping_ && !cancelling_;
    }
    std::int64_t next_due_ms = -1;
    try {
      if (!conn || conn->broken()) {
        conn.reset();
        conn = std::make_unique<pg::Connection>(store_.conninfo);
        conn->exec(listen);
      }
      conn->drain_notifications();
      const std::size_t asked = std::min<std::size_t>(room, store_.claim_batch);
      const std::size_t got = asked > 0 ? claim_and_post(*conn, asked) : 0;
      if (got == asked && asked > 0) continue;  // more may be ready
      if (draining) {
        bool idle = false;
        {
          std::lock_guard lock(mu_);
          idle = held_.empty() && unflushed_ == 0;
        }
        if (idle && store_drained(*conn)) {
          std::lock_guard lock(mu_);
          if (held_.empty() && unflushed_ == 0) {
            drained_ = true;
            changed_.notify_all();
          }
        }
      }
      const pg::Result due = conn->exec(sql("SELECT @S.next_due_ms()"));
      if (!due.is_null(0, 0)) next_due_ms = std::max<std::int64_t>(1, due.int64(0, 0));
    } catch (const StoreError& e) {
      // Lost connection (or a restarting server): connect again next round,
      // after the poll interval.
      note_store_error(e);
      if (conn && conn->broken()) conn.reset();
    }
    std::int64_t wait_ms = store_.poll.count();
    if (next_due_ms >= 0) wait_ms = std::min(wait_ms, next_due_ms);
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {conn ? conn->socket() : -1, POLLIN, 0}};
    ::poll(fds, conn ? 2 : 1, static_cast<int>(wait_ms));
    std::uint64_t count = 0;
    [[maybe_unused]] const auto n = read(wake_fd_, &count, sizeof count);
  }
}

bool PgRuntime::store_drained(pg::Connection& conn) {
  // As on the journal, a workflow node behind a dead one (directly or not)
  // is not waited for: only a retry of that node can release it.
  const pg::Result r = conn.exec(
      sql("WITH RECURSIVE stuck(flow_id, node) AS ("
          "  SELECT flow_id, flow_node FROM @S.jobs WHERE state = 'dead' AND flow_id IS NOT NULL"
          "  UNION"
          "  SELECT e.flow_id, e.to_node FROM @S.flow_edges e JOIN stuck s ON e.flow_id = s.flow_id AND e.from_node = s.node)"
          "SELECT NOT EXISTS (SELECT 1 FROM @S.jobs j WHERE j.type = ANY($1::text[]) AND (j.state = 'available'"
          "  OR (j.state = 'blocked' AND NOT EXISTS (SELECT 1 FROM stuck s WHERE s.flow_id = j.flow_id AND s.node = j.flow_node))))"),
      {type_list_});
  return r.boolean(0, 0);
}

void PgRuntime::heartbeat_loop() {
  std::unique_ptr<pg::Connection> conn;
  const auto period = std::max(std::chrono::milliseconds(20), store_.lease / 3);
  std::vector<std::int64_t> ids;
  std::vector<std::int64_t> attempts;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      heartbeat_cv_.wait_for(lock, period, [this] { return threads_done_; });
      if (threads_done_) return;
      if (pg_heartbeat_paused.load(std::memory_order_relaxed)) [[unlikely]]
        continue;
      ids.clear();
      attempts.clear();
      for (const auto& [key, held] : held_) {
        if (held.lost) continue;
        ids.push_back(static_cast<std::int64_t>(key.id));
        attempts.push_back(key.attempt);
      }
    }
    try {
      if (!conn || conn->broken()) {
        conn.reset();
        conn = std::make_unique<pg::Connection>(store_.conninfo);
        // Nothing here waits for a lock longer than a period: renew never
        // waits, and a reap held up by another transaction's locks (one
        // waiting for a deadlock to be found holds them for a second) would
        // hold up the next renewal past the leases it keeps.
        conn->exec("SET lock_timeout = " + std::to_string(period.count()));
      }
      if (!ids.empty()) {
        const std::int64_t renew_sent_ns = steady_now_ns();
        const pg::Result r = conn->exec(sql("SELECT * FROM @S.renew($1::bigint[], $2::integer[], $3)"),
                                        {pg::int_array_literal(ids), pg::int_array_literal(attempts),
                                         pg::Param(static_cast<std::int64_t>(store_.lease.count()))});
        // renew answers with ids. Two attempts of one job may be held here
        // for a moment; only the newer can hold the job (attempts only rise),
        // so an id in the answer renewed that one.
        std::vector<TaskId> renewed;
        renewed.reserve(static_cast<std::size_t>(r.rows()));
        for (int i = 0; i < r.rows(); ++i) renewed.push_back(static_cast<TaskId>(r.int64(i, 0)));
        std::sort(renewed.begin(), renewed.end());
        std::unordered_map<TaskId, std::int64_t> newest;
        for (std::size_t i = 0; i < ids.size(); ++i) {
          auto& a = newest[static_cast<TaskId>(ids[i])];
          a = std::max(a, attempts[i]);
        }
        std::lock_guard lock(mu_);
        for (std::size_t i = 0; i < ids.size(); ++i) {
          const auto id = static_cast<TaskId>(ids[i]);
          auto it = held_.find(HeldKey{id, static_cast<unsigned>(attempts[i])});
          if (it == held_.end()) continue;
          if (attempts[i] == newest[id] && std::binary_search(renewed.begin(), renewed.end(), id)) {
            it->second.lease_from_ns = renew_sent_ns;
          } else {
            it->second.lost = true;
          }
        }
      }
      try {
        conn->exec(sql("SELECT @S.reap()"));
      } catch (const pg::StatementError& e) {
        if (e.sqlstate() != "55P03") throw;  // lock_timeout: this process reaps next period, or another does
      }
    } catch (const StoreError& e) {
      note_store_error(e);
      if (conn && conn->broken()) conn.reset();  // next period reconnects
    }
  }
}

void PgRuntime::finish_loop() {
  std::unique_ptr<pg::Connection> conn;
  for (;;) {
    std::vector<Outcome> batch;
    std::vector<std::pair<TaskId, unsigned>> releases;
    {
      std::unique_lock lock(mu_);
      finisher_cv_.wait(lock, [this] { return threads_done_ || !outcomes_.empty() || !releases_.empty(); });
      if (outcomes_.empty() && releases_.empty()) return;  // threads_done_
      batch.swap(outcomes_);
      releases.swap(releases_);
    }
    std::vector<TaskId> recorded;
    bool gave_up = false;
    try {
      if (!conn) conn = std::make_unique<pg::Connection>(store_.conninfo);
      if (!batch.empty()) {
        std::vector<std::int64_t> ids, attempts, backoffs;
        std::vector<std::string> oks;
        std::vector<std::optional<std::string>> errors;
        for (const Outcome& o : batch) {
          ids.push_back(static_cast<std::int64_t>(o.id));
          attempts.push_back(o.attempt);
          oks.push_back(o.ok ? "t" : "f");
          errors.push_back(o.ok ? std::nullopt : std::optional<std::string>(o.error));
          backoffs.push_back(o.backoff_ms);
        }
        // Safe to repeat: the fence makes a second run of an outcome that
        // did commit a no-op.
        const pg::Result r = pg::with_reconnect(*conn, store_.reconnect_patience, [&] {
          return conn->exec(sql("SELECT * FROM @S.finish($1::bigint[], $2::integer[], $3::boolean[], $4::text[],"
                                " $5::bigint[], $6)"),
                            {pg::int_array_literal(ids), pg::int_array_literal(attempts), pg::array_literal(oks),
                             pg::array_literal(errors), pg::int_array_literal(backoffs), pg::Param(retain_ms_)});
        });
        for (int i = 0; i < r.rows(); ++i) recorded.push_back(static_cast<TaskId>(r.int64(i, 0)));
      }
      if (!releases.empty()) {
        std::vector<std::int64_t> ids, attempts;
        for (const auto& [id, attempt] : releases) {
          ids.push_back(static_cast<std::int64_t>(id));
          attempts.push_back(attempt);
        }
        pg::with_reconnect(*conn, store_.reconnect_patience, [&] {
          return conn->exec(sql("SELECT * FROM @S.release($1::bigint[], $2::integer[])"),
                            {pg::int_array_literal(ids), pg::int_array_literal(attempts)});
        });
      }
    } catch (const StoreError& e) {
      // The server stayed away: these outcomes are not recorded. The leases
      // run out and the tasks run again elsewhere (at least once).
      note_store_error(e);
      gave_up = true;
      if (conn && conn->broken()) conn.reset();
    }
    std::sort(recorded.begin(), recorded.end());
    {
      std::lock_guard lock(mu_);
      for (const Outcome& o : batch) {
        held_.erase(HeldKey{o.id, o.attempt});
        if (gave_up) continue;
        if (!std::binary_search(recorded.begin(), recorded.end(), o.id)) {
          ++fenced_;
        } else if (o.ok) {
          ++completed_;
        }
      }
      for (const auto& [id, attempt] : releases) held_.erase(HeldKey{id, attempt});
      changed_.notify_all();
    }
    owe_wake();  // permits, successors or retries the batch may have freed, fleet-wide
    wake_claimer();
  }
}

bool PgRuntime::shutdown(ShutdownMode mode, std::optional<std::chrono::steady_clock::time_point> deadline) noexcept {
  std::unique_lock lock(mu_);
  if (stopped_) return true;
  stopping_ = true;
  if (mode == ShutdownMode::cancel) cancelling_ = true;
  const bool started = started_;
  lock.unlock();
  wake_claimer();
  if (t_in_pg_handler_of == this) return false;  // the handler's own attempt is still running
  lock.lock();
  const auto settled = [this] {
    return threads_done_ || (held_.empty() && unflushed_ == 0 && (cancelling_ || drained_));
  };
  if (started) {
    if (deadline) {
      if (!changed_.wait_until(lock, *deadline, settled)) return false;
    } else {
      changed_.wait(lock, settled);
    }
  }
  if (stopped_) return true;
  threads_done_ = true;
  stopped_ = true;
  finisher_cv_.notify_all();
  heartbeat_cv_.notify_all();
  lock.unlock();
  {
    std::lock_guard async(async_mu_);
    flusher_done_ = true;
    async_cv_.notify_all();
  }
  wake_claimer();
  for (std::thread* t : {&flusher_, &claimer_, &heartbeat_, &finisher_}) {
    if (t->joinable()) t->join();
  }
  {
    std::lock_guard notify(notify_mu_);  // last: the others owe it wakes until they end
    notifier_done_ = true;
  }
  notify_cv_.notify_one();
  if (notifier_.joinable()) notifier_.join();
  return true;
}

DurableStats PgRuntime::stats() const {
  DurableStats s;
  try {
    const pg::Result r = admin(sql(
        "SELECT count(*) FILTER (WHERE state IN ('available', 'running', 'blocked')),"
        " count(*) FILTER (WHERE state = 'available' AND run_at > now() AND retrying),"
        " count(*) FILTER (WHERE state = 'available' AND run_at > now() AND NOT retrying),"
        " count(*) FILTER (WHERE state = 'dead'),"
        " (SELECT count(*) FROM @S.workflows WHERE state = 'running') FROM @S.jobs"),
        {}, std::chrono::milliseconds(0));
    s.live = static_cast<std::uint64_t>(r.int64(0, 0));
    s.retrying = static_cast<std::uint64_t>(r.int64(0, 1));
    s.delayed = static_cast<std::uint64_t>(r.int64(0, 2));
    s.dead = static_cast<std::uint64_t>(r.int64(0, 3));
    s.workflows = static_cast<std::uint64_t>(r.int64(0, 4));
  } catch (const StoreError& e) {
    // The fleet-wide counts stay 0 while the server is away; this process's own follow.
    note_store_error(e);
  }
  std::lock_guard lock(mu_);
  s.running = running_;
  s.completed = completed_;
  s.failed_attempts = failed_attempts_;
  s.accepting = started_ && !stopping_;
  s.directory = "postgres schema " + store_.schema;
  s.store_errors = store_errors_;
  s.fenced = fenced_;
  s.last_store_error = last_store_error_;
  return s;
}

}  // namespace ordo::detail

namespace ordo {

DurableTasks::DurableTasks(Scheduler& scheduler, const PostgresStore& store, DurableOptions options)
    : rt_(std::make_unique<detail::PgRuntime>(scheduler, store, options)) {}

}  // namespace ordo
