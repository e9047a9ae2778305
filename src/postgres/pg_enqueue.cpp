// PostgreSQL store: accepting tasks (group-committed batches, or inside the
// caller's transaction), workflows, and global groups.
#include <ctime>
#include <unordered_map>

#include "ordo/resource.hpp"
#include "ordo/workflow.hpp"
#include "postgres/pg_runtime.hpp"

namespace ordo::detail {

// One enqueue waiting for its batch to commit.
struct PgRuntime::EnqueueRequest {
  std::string type;
  std::string args;
  std::int64_t level = 1;
  std::int64_t max_attempts = 3;
  std::optional<std::string> delay_ms;
  std::optional<std::string> run_at;  // timestamptz text, UTC
  std::optional<std::string> key;
  std::optional<std::string> needs;   // local groups, "name=count" lines
  std::optional<std::string> groups;  // global groups, an array literal
  std::optional<std::string> counts;
  TaskId id = 0;
  std::exception_ptr error;
  bool done = false;  // under enqueue_mu_, set by the leader after id and error
};

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
std::vector<pg::Param> enqueue_params(const std::string& token, const std::vector<PgRuntime::EnqueueRequest*>& batch) {
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

constexpr const char* kEnqueueCall =
    "SELECT @S.enqueue($1, $2::text[], $3::bytea[], $4::integer[], $5::integer[], $6::bigint[], $7::timestamptz[],"
    " $8::text[], $9::text[], $10::text[], $11::text[])";

}  // namespace

TaskId PgRuntime::enqueue(std::string_view type, std::span<const std::byte> args, EnqueueOptions options) {
  EnqueueRequest req = make_request(type, {reinterpret_cast<const char*>(args.data()), args.size()}, options);
  std::unique_lock lock(enqueue_mu_);
  {
    std::lock_guard state(mu_);
    if (!started_) throw Error("ordo: DurableTasks::enqueue before start()");
    if (stopping_) throw Error("ordo: DurableTasks is shutting down and accepts no new tasks");
  }
  enqueue_pending_.push_back(&req);
  while (!req.done) {
    if (enqueue_leader_) {
      enqueue_done_.wait(lock);
      continue;
    }
    // Leader: commits everyone waiting in one transaction (group commit).
    enqueue_leader_ = true;
    std::vector<EnqueueRequest*> batch;
    batch.swap(enqueue_pending_);
    lock.unlock();
    commit_enqueues(batch);
    lock.lock();
    // Under enqueue_mu_: the waiters read `done` (and then id and error,
    // written before it) under it.
    for (EnqueueRequest* r : batch) r->done = true;
    enqueue_leader_ = false;
    enqueue_done_.notify_all();
  }
  if (req.error) std::rethrow_exception(req.error);
  return req.id;
}

void PgRuntime::commit_enqueues(std::vector<EnqueueRequest*>& batch) {
  const auto call = [&](const std::vector<EnqueueRequest*>& part) {
    // The token makes a re-run after a lost connection return the first
    // run's ids instead of enqueueing twice.
    const std::string token = enqueue_token_prefix_ + std::to_string(++enqueue_batches_);
    const pg::Result r = pg::with_reconnect(*enqueue_conn_, std::chrono::seconds(30),
                                        [&] { return enqueue_conn_->exec(sql(kEnqueueCall), enqueue_params(token, part)); });
    const std::vector<TaskId> ids = parse_ids(r.text(0, 0));
    for (std::size_t i = 0; i < part.size() && i < ids.size(); ++i) part[i]->id = ids[i];
  };
  try {
    call(batch);
  } catch (const pg::StatementError& e) {
    if (batch.size() == 1 || enqueue_conn_->broken()) {
      for (EnqueueRequest* r : batch) r->error = std::current_exception();
    } else {
      // One bad task (an undefined global group) must not fail the others.
      for (EnqueueRequest* r : batch) {
        try {
          call({r});
        } catch (...) {
          r->error = std::current_exception();
        }
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
  const pg::Result r = conn.exec(sql(kEnqueueCall), enqueue_params({}, {&req}));
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
