// PostgreSQL store: accepting tasks (group-committed batches, or inside the
// caller's transaction), workflows, and global groups.
#include <ctime>
#include <unordered_map>

#include "ordo/resource.hpp"
#include "ordo/workflow.hpp"
#include "postgres/pg_runtime.hpp"

namespace ordo::detail {


namespace {

std::string utc_text(std::chrono::system_clock::time_point at) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(at.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(us / 1000000);
  std::int64_t frac = us % 1000000;
  if (frac < 0) {
    frac += 1000000;
    --secs;
  }
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:%02d.%06lld+00", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<long long>(frac));
  return buf;
}

std::vector<TaskId> parse_ids(std::string_view array) {
  std::vector<TaskId> ids;
  TaskId value = 0;
  bool in_number = false;
  for (char c : array) {
    if (c >= '0' && c <= '9') {
      value = value * 10 + static_cast<TaskId>(c - '0');
      in_number = true;
    } else if (in_number) {
      ids.push_back(value);
      value = 0;
      in_number = false;
    }
  }
  return ids;
}

}  // namespace

PgRuntime::EnqueueRequest PgRuntime::make_request(std::string_view type, std::string_view args,
                                                  const EnqueueOptions& options) const {
  auto type_it = types_.find(std::string(type));
  if (type_it == types_.end()) throw InvalidArgument("ordo: no durable task type named '" + std::string(type) + "'");
  const TaskTypeOptions& defaults = type_it->second.options;
  EnqueueRequest req;
  req.type = std::string(type);
  req.args = std::string(args);
  const auto priority = options.priority.value_or(defaults.priority.value_or(Priority::normal));
  if (static_cast<unsigned>(priority) >= scheduler_.level_count()) {
    throw InvalidArgument("ordo: priority level " + std::to_string(static_cast<unsigned>(priority)) +
                          " is beyond the scheduler's levels");
  }
  req.level = static_cast<std::int64_t>(priority);
  req.max_attempts = options.max_attempts.value_or(defaults.retry.max_attempts);
  if (req.max_attempts == 0) throw InvalidArgument("ordo: a durable task needs max_attempts of at least 1");
  if (options.delay) req.delay_ms = std::to_string(std::max<std::int64_t>(0, options.delay->count()));
  else if (options.run_at) req.run_at = utc_text(*options.run_at);
  if (!options.idempotency_key.empty()) req.key = options.idempotency_key;
  std::string needs;
  for (const Need& need : options.needs) {
    if (!need.group.valid()) {
      throw InvalidArgument("ordo: a need of a durable task names no resource group (a default-constructed ResourceGroup)");
    }
    const std::string& name = need.group.name();
    const ResourceGroup mine = scheduler_.find_resource_group(name);
    if (!mine.valid() || &mine.name() != &name) {
      throw InvalidArgument("ordo: durable task needs resource group '" + name + "', which is not this scheduler's");
    }
    if (need.amount == 0 || need.amount > mine.limit() || name.find_first_of("=\n") != std::string::npos) {
      throw InvalidArgument("ordo: durable task needs " + std::to_string(need.amount) + " of resource group '" + name +
                            "', whose limit is " + std::to_string(mine.limit()));
    }
    needs += name + "=" + std::to_string(need.amount) + "\n";
  }
  if (!needs.empty()) req.needs = std::move(needs);
  if (!options.global_needs.empty()) {
    std::vector<std::string> names;
    std::vector<std::int64_t> counts;
    for (const GlobalNeed& need : options.global_needs) {
      if (need.group.empty() || need.count == 0) {
        throw InvalidArgument("ordo: a global need must name a group and a count of at least 1 (got '" + need.group +
                              "' x " + std::to_string(need.count) + ")");
      }
      for (const std::string& seen : names) {
        if (seen == need.group) throw InvalidArgument("ordo: global group '" + need.group + "' is needed twice");
      }
      names.push_back(need.group);
      counts.push_back(need.count);
    }
    req.groups = pg::array_literal(names);
    req.counts = pg::int_array_literal(counts);
  }
  return req;
}

namespace {

// The parameters of one @S.enqueue call for `batch`.
// `reserved`: the ids the tasks were given already (asynchronous enqueues), or empty.
std::vector<pg::Param> enqueue_params(const std::string& token, bool notify,
                                      const std::vector<PgRuntime::EnqueueRequest*>& batch,
                                      const std::vector<std::int64_t>& reserved = {}) {
  std::vector<std::string> types;
  std::vector<std::string> args;
  std::vector<std::int64_t> levels;
  std::vector<std::int64_t> maxes;
  std::vector<std::optional<std::string>> delays, run_ats, keys, needs, groups, counts;
  for (const auto* r : batch) {
    types.push_back(r->type);
    args.push_back(pg::bytea_hex(r->args));
    levels.push_back(r->level);
    maxes.push_back(r->max_attempts);
    delays.push_back(r->delay_ms);
    run_ats.push_back(r->run_at);
    keys.push_back(r->key);
    needs.push_back(r->needs);
    groups.push_back(r->groups);
    counts.push_back(r->counts);
  }
  return {token.empty() ? pg::Param::null() : pg::Param(token),
          pg::Param(notify ? "t" : "f"),
          reserved.empty() ? pg::Param::null() : pg::Param(pg::int_array_literal(reserved)),
          pg::array_literal(types),
          pg::array_literal(args),
          pg::int_array_literal(levels),
          pg::int_array_literal(maxes),
          pg::array_literal(delays),
          pg::array_literal(run_ats),
          pg::array_literal(keys),
          pg::array_literal(needs),
          pg::array_literal(groups),
          pg::array_literal(counts)};
}

// What a caller of enqueue is told when the database refused its batch: the
// function's own refusal of bad input (an undefined global group, SQLSTATE
// 22023) is InvalidArgument, as the same mistake is in this process;
// anything else stays a StoreError.
std::exception_ptr refusal(const pg::StatementError& e) {
  if (e.sqlstate() == "22023") return std::make_exception_ptr(InvalidArgument(e.what()));
  return std::make_exception_ptr(e);
}

constexpr const char* kEnqueueCall =
    "SELECT @S.enqueue($1, $2, $3::bigint[], $4::text[], $5::bytea[], $6::integer[], $7::integer[], $8::bigint[],"
    " $9::timestamptz[], $10::text[], $11::text[], $12::text[], $13::text[])";

}  // namespace

TaskId PgRuntime::enqueue(std::string_view type, std::span<const std::byte> args, EnqueueOptions options) {
  EnqueueRequest req = make_request(type, {reinterpret_cast<const char*>(args.data()), args.size()}, options);
  // Asynchronous: the id is one reserved already, the commit follows
  // (a key, or a global group to check, needs the database's answer first).
  const bool async = store_.async_enqueue && !req.key && !req.groups;
  {
    std::lock_guard state(mu_);
    if (!started_) throw Error("ordo: DurableTasks::enqueue before start()");
    if (stopping_) throw Error("ordo: DurableTasks is shutting down and accepts no new tasks");
    if (async) ++unflushed_;
  }
  if (async) return enqueue_async(std::move(req));
  commit_through_lane({&req, 1});
  if (req.error) std::rethrow_exception(req.error);
  return req.id;
}

std::vector<TaskId> PgRuntime::enqueue_many(std::span<const NewTask> batch) {
  std::vector<EnqueueRequest> reqs;
  reqs.reserve(batch.size());
  for (const NewTask& t : batch) reqs.push_back(make_request(t.type, t.args, t.options));
  {
    std::lock_guard state(mu_);
    if (!started_) throw Error("ordo: DurableTasks::enqueue_many before start()");
    if (stopping_) throw Error("ordo: DurableTasks is shutting down and accepts no new tasks");
  }
  std::vector<TaskId> ids;
  if (reqs.empty()) return ids;
  reqs.front().unit = static_cast<std::uint32_t>(reqs.size());
  for (std::size_t i = 1; i < reqs.size(); ++i) reqs[i].unit = 0;
  commit_through_lane(reqs);
  if (reqs.front().error) std::rethrow_exception(reqs.front().error);  // the unit failed as a whole
  ids.reserve(reqs.size());
  for (const EnqueueRequest& r : reqs) ids.push_back(r.id);
  return ids;
}

void PgRuntime::commit_through_lane(std::span<EnqueueRequest> reqs) {
  static std::atomic<unsigned> threads_seen{0};
  thread_local const unsigned my_lane = threads_seen.fetch_add(1, std::memory_order_relaxed);  // a counter only
  EnqueueLane& lane = *lanes_[my_lane % lanes_.size()];
  std::unique_lock lock(lane.mu);
  for (EnqueueRequest& r : reqs) lane.pending.push_back(&r);
  EnqueueRequest& req = reqs.back();  // a unit's requests are done together
  while (!req.done) {
    if (lane.leader) {
      lane.done.wait(lock);
      continue;
    }
    // Leader: commits everyone waiting in this lane in one transaction.
    lane.leader = true;
    std::vector<EnqueueRequest*> batch;
    batch.swap(lane.pending);
    lock.unlock();
    commit_enqueues(lane, batch);
    lock.lock();
    for (EnqueueRequest* r : batch) r->done = true;  // under lane.mu: what the waiters read
    lane.leader = false;
    lane.done.notify_all();
  }
}

TaskId PgRuntime::enqueue_async(EnqueueRequest req) {
  std::unique_lock lock(async_mu_);
  async_cv_.wait(lock, [this] { return !reserved_ids_.empty() || async_failed_; });
  const auto not_accepted = [&](std::exception_ptr why) {
    lock.unlock();
    std::lock_guard state(mu_);
    --unflushed_;  // counted by enqueue() before it came here
    changed_.notify_all();
    std::rethrow_exception(why);
  };
  if (reserved_ids_.empty()) {
    // Built under async_mu_, which guards async_error_.
    not_accepted(std::make_exception_ptr(StoreError("ordo: postgres: no task id could be reserved: " + async_error_)));
  }
  const TaskId id = reserved_ids_.back();
  req.id = id;
  try {
    async_pending_.push_back(std::make_unique<EnqueueRequest>(std::move(req)));
  } catch (...) {  // no memory: nothing was accepted, the id is simply not used
    not_accepted(std::current_exception());
  }
  reserved_ids_.pop_back();
  if (async_pending_.size() == 1 || reserved_ids_.size() < kReserveLow) async_cv_.notify_all();
  return id;
}

void PgRuntime::flush_loop() {
  std::unique_ptr<pg::Connection> conn;
  for (;;) {
    std::vector<std::unique_ptr<EnqueueRequest>> batch;
    bool reserve = false;
    {
      std::unique_lock lock(async_mu_);
      async_cv_.wait(lock, [this] {
        return flusher_done_ || !async_pending_.empty() || reserved_ids_.size() < kReserveLow;
      });
      if (flusher_done_ && async_pending_.empty()) return;
      batch.swap(async_pending_);
      reserve = reserved_ids_.size() < kReserveLow;
    }
    std::string error;
    try {
      if (!conn) conn = std::make_unique<pg::Connection>(store_.conninfo);
      if (!batch.empty()) {
        std::vector<EnqueueRequest*> part;
        std::vector<std::int64_t> ids;
        for (auto& r : batch) {
          part.push_back(r.get());
          ids.push_back(static_cast<std::int64_t>(r->id));
        }
        const std::string token = enqueue_token_prefix_ + "a" + std::to_string(++async_batches_);
        pg::with_reconnect(*conn, store_.reconnect_patience,
                           [&] { return conn->exec(sql(kEnqueueCall), enqueue_params(token, false, part, ids)); });
        owe_wake();
      }
      if (reserve) {
        const pg::Result r = pg::with_reconnect(*conn, store_.reconnect_patience, [&] {
          return conn->exec(sql("SELECT * FROM @S.reserve_ids($1)"), {pg::Param(static_cast<std::int64_t>(kReserveBlock))});
        });
        std::lock_guard lock(async_mu_);
        for (int i = r.rows() - 1; i >= 0; --i) reserved_ids_.push_back(static_cast<TaskId>(r.int64(i, 0)));
        async_failed_ = false;
        async_cv_.notify_all();
      }
    } catch (const std::exception& e) {
      // The server stayed away (or refused the batch): these tasks are lost,
      // as an asynchronous journal loses its unsynced tail.
      error = e.what();
      note_store_error(e);
      if (conn && conn->broken()) conn.reset();
    }
    {
      std::lock_guard state(mu_);
      if (!error.empty()) async_lost_ += batch.size();
      unflushed_ -= batch.size();
      changed_.notify_all();
    }
    if (!error.empty()) {
      std::unique_lock lock(async_mu_);
      async_error_ = error;
      if (reserved_ids_.empty()) async_failed_ = true;  // waiting callers are told, not left waiting
      async_cv_.notify_all();
      // The ids still run low, so the wait above would let the next try
      // start at once: a database that refuses connections fast would be
      // asked again and again without a pause.
      async_cv_.wait_for(lock, std::chrono::milliseconds(100), [this] { return flusher_done_; });
    }
  }
}

void PgRuntime::commit_enqueues(EnqueueLane& lane, std::vector<EnqueueRequest*>& batch) {
  const auto call = [&](const std::vector<EnqueueRequest*>& part) {
    if (!lane.conn) lane.conn = std::make_unique<pg::Connection>(store_.conninfo);
    // The token makes a re-run after a lost connection return the first
    // run's ids instead of enqueueing twice.
    const std::string token = enqueue_token_prefix_ + std::to_string(++enqueue_batches_);  // unique, not ordered
    const pg::Result r = pg::with_reconnect(*lane.conn, store_.reconnect_patience, [&] {
      return lane.conn->exec(sql(kEnqueueCall), enqueue_params(token, false, part));
    });
    owe_wake();
    const std::vector<TaskId> ids = parse_ids(r.text(0, 0));
    for (std::size_t i = 0; i < part.size() && i < ids.size(); ++i) part[i]->id = ids[i];
  };
  try {
    call(batch);
  } catch (const pg::StatementError& e) {
    if (batch.front()->unit == batch.size() || !lane.conn || lane.conn->broken()) {
      for (EnqueueRequest* r : batch) r->error = refusal(e);
    } else {
      // One bad task (an undefined global group) must not fail the others:
      // each unit (a lone enqueue, or one enqueue_many) again on its own.
      for (std::size_t begin = 0; begin < batch.size();) {
        const std::size_t end = begin + std::max<std::size_t>(1, batch[begin]->unit);
        const std::vector<EnqueueRequest*> unit(batch.begin() + begin, batch.begin() + end);
        std::exception_ptr error;
        try {
          call(unit);
        } catch (const pg::StatementError& e) {
          error = refusal(e);
        } catch (...) {
          error = std::current_exception();
        }
        for (EnqueueRequest* r : unit)
          if (error) r->error = error;
        begin = end;
      }
    }
  } catch (...) {
    for (EnqueueRequest* r : batch) r->error = std::current_exception();
  }
}

TaskId PgRuntime::enqueue_in(pg_conn* transaction, std::string_view type, std::string_view args, EnqueueOptions options) {
  if (transaction == nullptr) throw InvalidArgument("ordo: DurableTasks::enqueue_in needs a connection (got null)");
  EnqueueRequest req = make_request(type, args, options);
  pg::Connection conn = pg::Connection::borrow(transaction);
  const pg::Result r = [&] {
    try {
      return conn.exec(sql(kEnqueueCall), enqueue_params({}, true, {&req}));
    } catch (const pg::StatementError& e) {
      std::rethrow_exception(refusal(e));
    }
  }();
  const std::vector<TaskId> ids = parse_ids(r.text(0, 0));
  if (ids.size() != 1) throw StoreError("ordo: postgres: enqueue returned no id");
  return ids.front();
}

TaskId PgRuntime::enqueue_workflow(const DurableWorkflow& workflow, std::string key) {
  const auto& nodes = workflow.nodes();
  if (nodes.empty()) throw InvalidArgument("ordo: durable workflow '" + workflow.name() + "' has no nodes");
  // The checks of an in-memory Workflow: duplicate and unknown names, cycles (named).
  Workflow check(workflow.name());
  std::unordered_map<std::string, std::int64_t> index;
  std::vector<std::string> types, args;
  std::vector<std::int64_t> levels, maxes;
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    auto type_it = types_.find(nodes[i].type);
    if (type_it == types_.end()) {
      throw InvalidArgument("ordo: durable workflow '" + workflow.name() + "' node '" + nodes[i].name +
                            "' names undefined type '" + nodes[i].type + "'");
    }
    check.node(nodes[i].name, [] {});
    index[nodes[i].name] = static_cast<std::int64_t>(i);
    types.push_back(nodes[i].type);
    args.push_back(pg::bytea_hex(nodes[i].args));
    levels.push_back(static_cast<std::int64_t>(type_it->second.options.priority.value_or(Priority::normal)));
    maxes.push_back(type_it->second.options.retry.max_attempts);
  }
  std::vector<std::int64_t> from, to, pending(nodes.size(), 0);
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    std::vector<std::int64_t> seen;
    for (const std::string& before : nodes[i].after) {
      check[nodes[i].name].after(before);
      auto it = index.find(before);
      if (it == index.end() || std::find(seen.begin(), seen.end(), it->second) != seen.end()) continue;
      seen.push_back(it->second);
      from.push_back(it->second);
      to.push_back(static_cast<std::int64_t>(i));
      ++pending[i];
    }
  }
  check.validate();  // throws InvalidGraph naming the problem
  {
    std::lock_guard lock(mu_);
    if (!started_) throw Error("ordo: DurableTasks::enqueue_workflow before start()");
    if (stopping_) throw Error("ordo: DurableTasks is shutting down and accepts no new workflows");
  }
  const pg::Result r = admin(
      sql("SELECT @S.enqueue_workflow($1, $2, $3::text[], $4::bytea[], $5::integer[], $6::integer[], $7::integer[],"
          " $8::integer[], $9::integer[])"),
      {pg::Param(workflow.name()), key.empty() ? pg::Param::null() : pg::Param(key), pg::array_literal(types),
       pg::array_literal(args), pg::int_array_literal(levels), pg::int_array_literal(maxes),
       pg::int_array_literal(pending), pg::int_array_literal(from), pg::int_array_literal(to)});
  return static_cast<TaskId>(r.int64(0, 0));
}

void PgRuntime::set_global_limit(const std::string& name, unsigned limit) {
  if (name.empty()) throw InvalidArgument("ordo: a global group needs a name");
  if (limit > 1000000000u) throw InvalidArgument("ordo: global group '" + name + "' limit is too large");
  admin(sql("SELECT @S.set_group($1, 'count', $2, NULL)"), {pg::Param(name), pg::Param(static_cast<std::int64_t>(limit))});
}

void PgRuntime::set_global_rate(const std::string& name, double per_second, unsigned burst) {
  if (name.empty()) throw InvalidArgument("ordo: a global group needs a name");
  if (!(per_second > 0) || burst == 0) {
    throw InvalidArgument("ordo: global rate group '" + name + "' needs per_second > 0 and burst >= 1");
  }
  admin(sql("SELECT @S.set_group($1, 'rate', $2, $3)"),
        {pg::Param(name), pg::Param(static_cast<std::int64_t>(burst)), pg::Param(std::to_string(per_second))});
}

}  // namespace ordo::detail
