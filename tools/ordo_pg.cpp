// ordo-pg: look after the durable tasks a fleet keeps in PostgreSQL
// (docs/postgres.md, "The admin tool").
//
//   ordo-pg [-d CONNINFO] [--schema S] [--json] dead          dead jobs: id, type, attempts, last error
//   ordo-pg ... retry ID                                      a dead job back for a fresh round of attempts
//   ordo-pg ... discard ID                                    a dead job dropped for good
//   ordo-pg ... depth                                         jobs per priority level and state
//   ordo-pg ... leases                                        running jobs: owner, attempt, lease left
//   ordo-pg ... groups                                        global groups: limit, in use, peak, holders
//   ordo-pg ... status ID                                     where one job is
//
// The server is --conninfo, or ORDO_PG_CONNINFO. Everything it says is the
// database's, fleet-wide, read with the server's clock. retry and discard
// call the same functions as DurableTasks::retry_dead / discard_dead
// (S.retry_dead, S.discard_dead), so they are safe while the fleet runs.
// The tool never creates or migrates the schema.
//
// Exit codes: 0 done; 1 an error (unreachable server, no such schema, a
// job that is not dead, an unknown id for status), named on stderr; CLI11's
// own codes for a malformed command line.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "postgres/connection.hpp"
#include "postgres/schema.hpp"

namespace {

namespace pg = ordo::detail::pg;
using json = nlohmann::ordered_json;  // keys in the order written

// An error the user must see as it is, without a stack of context.
struct ToolError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Store {
 public:
  Store(const std::string& conninfo, std::string schema) : schema_(std::move(schema)), conn_(connect(conninfo)) {
    const pg::Result found = exec("SELECT to_regclass('@S.jobs') IS NOT NULL, to_regclass('@S.schema_migrations') IS NOT NULL");
    if (!found.boolean(0, 0) || !found.boolean(0, 1)) {
      throw ToolError("schema '" + schema_ + "' holds no ordo tables in this database (is it the database and --schema "
                      "the fleet uses? ordo creates them when a DurableTasks first connects)");
    }
    const auto version = exec("SELECT coalesce(max(version), 0) FROM @S.schema_migrations").int64(0, 0);
    if (version > pg::kSchemaVersion) {
      throw ToolError("schema '" + schema_ + "' is at version " + std::to_string(version) +
                      ", newer than this ordo-pg knows (" + std::to_string(pg::kSchemaVersion) + "): use a newer ordo-pg");
    }
  }

  pg::Result exec(const std::string& sql, const std::vector<pg::Param>& params = {}) {
    return conn_.exec(pg::in_schema(sql, schema_), params);
  }

 private:
  static pg::Connection connect(const std::string& conninfo) {
    try {
      return pg::Connection(conninfo);
    } catch (const ordo::StoreError& e) {
      throw ToolError(std::string("cannot reach the database: ") + e.what());
    }
  }
  std::string schema_;
  pg::Connection conn_;
};

std::string level_name(std::int64_t level) {
  switch (level) {
    case 0: return "high";
    case 1: return "normal";
    case 2: return "low";
    default: return "level " + std::to_string(level);
  }
}

// Prints rows as columns padded to their widest cell.
void print_table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width(head.size());
  for (std::size_t c = 0; c < head.size(); ++c) width[c] = head[c].size();
  for (const auto& row : rows)
    for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  const auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (std::size_t c = 0; c < cells.size(); ++c) {
      out += cells[c];
      if (c + 1 < cells.size()) out += std::string(width[c] - cells[c].size() + 2, ' ');
    }
    std::cout << out << "\n";
  };
  line(head);
  for (const auto& row : rows) line(row);
}

int cmd_dead(Store& store, bool as_json) {
  const pg::Result r = store.exec(
      "SELECT id, type, attempt - attempt_base, coalesce(last_error, ''), flow_id FROM @S.jobs WHERE state = 'dead' ORDER BY id");
  json out = json::array();
  std::vector<std::vector<std::string>> rows;
  for (int i = 0; i < r.rows(); ++i) {
    json job = {{"id", r.int64(i, 0)}, {"type", r.text(i, 1)}, {"attempts", r.int64(i, 2)}, {"last_error", r.text(i, 3)}};
    if (!r.is_null(i, 4)) job["workflow"] = r.int64(i, 4);
    out.push_back(job);
    rows.push_back({std::to_string(r.int64(i, 0)), std::string(r.text(i, 1)), std::to_string(r.int64(i, 2)),
                    std::string(r.text(i, 3))});
  }
  if (as_json) {
    std::cout << out.dump() << "\n";
  } else {
    print_table({"id", "type", "attempts", "last error"}, rows);
    std::cerr << r.rows() << " dead job(s)\n";
  }
  return 0;
}

// The state of a job that is not where retry/discard wanted it, for the error.
std::string state_of(Store& store, std::int64_t id) {
  const pg::Result r = store.exec("SELECT state FROM @S.jobs WHERE id = $1", {pg::Param(id)});
  return r.rows() == 1 ? "it is " + std::string(r.text(0, 0)) : "no job has that id";
}

int cmd_retry(Store& store, std::int64_t id, bool as_json) {
  if (!store.exec("SELECT @S.retry_dead($1)", {pg::Param(id)}).boolean(0, 0)) {
    throw ToolError("job " + std::to_string(id) + " is not in the dead set (" + state_of(store, id) + ")");
  }
  if (as_json) {
    std::cout << json{{"id", id}, {"retried", true}}.dump() << "\n";
  } else {
    std::cout << "retrying " << id << ": it is available to the fleet again, with a fresh round of attempts\n";
  }
  return 0;
}

int cmd_discard(Store& store, std::int64_t id, bool as_json) {
  // The retention only matters to a workflow that ends well; a discard fails
  // its workflow, so DurableOptions' default is as good as any.
  const std::int64_t retain_ms = 24LL * 3600 * 1000;
  const pg::Result flow = store.exec("SELECT flow_id FROM @S.jobs WHERE id = $1 AND state = 'dead'", {pg::Param(id)});
  if (!store.exec("SELECT @S.discard_dead($1, $2)", {pg::Param(id), pg::Param(retain_ms)}).boolean(0, 0)) {
    throw ToolError("job " + std::to_string(id) + " is not in the dead set (" + state_of(store, id) + ")");
  }
  const bool in_workflow = flow.rows() == 1 && !flow.is_null(0, 0);
  if (as_json) {
    json out = {{"id", id}, {"discarded", true}};
    if (in_workflow) out["workflow"] = flow.int64(0, 0);
    std::cout << out.dump() << "\n";
  } else {
    std::cout << "discarded " << id
              << (in_workflow ? " and the nodes of workflow " + std::to_string(flow.int64(0, 0)) +
                                    " that depend on it (the workflow fails)\n"
                              : "\n");
  }
  return 0;
}

int cmd_depth(Store& store, bool as_json) {
  const pg::Result r = store.exec(
      "SELECT level,"
      " count(*) FILTER (WHERE state = 'available' AND run_at <= now()),"
      " count(*) FILTER (WHERE state = 'available' AND run_at > now() AND NOT retrying),"
      " count(*) FILTER (WHERE state = 'available' AND run_at > now() AND retrying),"
      " count(*) FILTER (WHERE state = 'running'),"
      " count(*) FILTER (WHERE state = 'blocked'),"
      " count(*) FILTER (WHERE state = 'dead')"
      " FROM @S.jobs WHERE state <> 'completed' GROUP BY level ORDER BY level");
  static const char* kColumns[] = {"ready", "scheduled", "retrying", "running", "blocked", "dead"};
  json out = json::array();
  std::vector<std::vector<std::string>> rows;
  for (int i = 0; i < r.rows(); ++i) {
    json level = {{"level", r.int64(i, 0)}, {"priority", level_name(r.int64(i, 0))}};
    std::vector<std::string> row = {level_name(r.int64(i, 0))};
    for (int c = 0; c < 6; ++c) {
      level[kColumns[c]] = r.int64(i, c + 1);
      row.push_back(std::to_string(r.int64(i, c + 1)));
    }
    out.push_back(level);
    rows.push_back(row);
  }
  if (as_json) {
    std::cout << out.dump() << "\n";
  } else {
    print_table({"priority", "ready", "scheduled", "retrying", "running", "blocked", "dead"}, rows);
  }
  return 0;
}

int cmd_leases(Store& store, bool as_json) {
  const pg::Result r = store.exec(
      "SELECT id, type, coalesce(owner, ''), attempt - attempt_base, attempt,"
      " floor(extract(epoch FROM lease_until - now()) * 1000)::bigint"
      " FROM @S.jobs WHERE state = 'running' ORDER BY lease_until, id");
  json out = json::array();
  std::vector<std::vector<std::string>> rows;
  for (int i = 0; i < r.rows(); ++i) {
    out.push_back({{"id", r.int64(i, 0)}, {"type", r.text(i, 1)}, {"owner", r.text(i, 2)}, {"attempt", r.int64(i, 3)},
                   {"fence", r.int64(i, 4)}, {"lease_left_ms", r.int64(i, 5)}});
    // A negative lease: it ran out and no heartbeat has taken the job back yet.
    rows.push_back({std::to_string(r.int64(i, 0)), std::string(r.text(i, 1)), std::string(r.text(i, 2)),
                    std::to_string(r.int64(i, 3)), std::to_string(r.int64(i, 4)), std::to_string(r.int64(i, 5))});
  }
  if (as_json) {
    std::cout << out.dump() << "\n";
  } else {
    print_table({"id", "type", "owner", "attempt", "fence", "lease left ms"}, rows);
    std::cerr << r.rows() << " running job(s)\n";
  }
  return 0;
}

int cmd_groups(Store& store, bool as_json) {
  const pg::Result g = store.exec("SELECT name, kind, lim, in_use, peak, per_second FROM @S.groups ORDER BY name");
  const pg::Result h = store.exec("SELECT group_name, owner, sum(count)::bigint FROM @S.holders GROUP BY 1, 2 ORDER BY 1, 2");
  std::map<std::string, std::vector<std::pair<std::string, std::int64_t>>> holders;
  for (int i = 0; i < h.rows(); ++i) holders[std::string(h.text(i, 0))].emplace_back(h.text(i, 1), h.int64(i, 2));
  json out = json::array();
  std::vector<std::vector<std::string>> rows;
  for (int i = 0; i < g.rows(); ++i) {
    const std::string name(g.text(i, 0));
    const bool rate = g.text(i, 1) == "rate";
    json group = {{"name", name}, {"kind", g.text(i, 1)}, {"limit", g.int64(i, 2)}};
    json by_owner = json::object();
    std::string owners;
    for (const auto& [owner, n] : holders[name]) {
      by_owner[owner] = n;
      owners += (owners.empty() ? "" : ", ") + owner + " " + std::to_string(n);
    }
    if (rate) {
      group["per_second"] = std::stod(std::string(g.text(i, 5)));
      rows.push_back({name, "rate", std::string(g.text(i, 5)) + "/s, burst " + std::to_string(g.int64(i, 2)), "-", "-", "-"});
    } else {
      group["in_use"] = g.int64(i, 3);
      group["peak"] = g.int64(i, 4);
      group["holders"] = by_owner;
      rows.push_back({name, "count", std::to_string(g.int64(i, 2)), std::to_string(g.int64(i, 3)),
                      std::to_string(g.int64(i, 4)), owners.empty() ? "-" : owners});
    }
    out.push_back(group);
  }
  if (as_json) {
    std::cout << out.dump() << "\n";
  } else {
    print_table({"group", "kind", "limit", "in use", "peak", "holders by owner"}, rows);
  }
  return 0;
}

int cmd_status(Store& store, std::int64_t id, bool as_json) {
  const pg::Result r = store.exec(
      "SELECT state, type, level, attempt - attempt_base, attempt, run_at > now(), retrying,"
      " to_char(run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), coalesce(owner, ''),"
      " floor(extract(epoch FROM lease_until - now()) * 1000)::bigint, coalesce(last_error, ''), idem_key,"
      " to_char(key_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), flow_id, flow_node"
      " FROM @S.jobs WHERE id = $1",
      {pg::Param(id)});
  json out = {{"id", id}};
  if (r.rows() == 1) {
    std::string state(r.text(0, 0));
    // The names DurableTaskStatus uses (ordo::to_string): an available job
    // waits for a worker (queued), its run_at (scheduled) or its retry.
    if (state == "available") state = !r.boolean(0, 5) ? "queued" : r.boolean(0, 6) ? "retrying" : "scheduled";
    out["state"] = state;
    if (state != "completed") {
      out["type"] = r.text(0, 1);
      out["priority"] = level_name(r.int64(0, 2));
      out["attempts"] = r.int64(0, 3);
      out["fence"] = r.int64(0, 4);
    }
    if (state == "scheduled" || state == "retrying") out["run_at"] = r.text(0, 7);
    if (state == "running") {
      out["owner"] = r.text(0, 8);
      out["lease_left_ms"] = r.int64(0, 9);
    }
    if (!r.text(0, 10).empty()) out["last_error"] = r.text(0, 10);
    if (!r.is_null(0, 11)) out["idempotency_key"] = r.text(0, 11);
    if (!r.is_null(0, 12)) out["key_retained_until"] = r.text(0, 12);
    if (!r.is_null(0, 13)) {
      out["workflow"] = r.int64(0, 13);
      out["node"] = r.int64(0, 14);
    }
  } else {
    const pg::Result flow = store.exec(
        "SELECT state, name, remaining, nodes,"
        " to_char(key_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') FROM @S.workflows WHERE id = $1",
        {pg::Param(id)});
    if (flow.rows() == 1) {
      out["workflow"] = flow.text(0, 1);
      out["state"] = flow.text(0, 0);
      out["nodes"] = flow.int64(0, 3);
      out["remaining"] = flow.int64(0, 2);
      if (!flow.is_null(0, 4)) out["key_retained_until"] = flow.text(0, 4);
    } else {
      out["state"] = "unknown";
    }
  }
  if (as_json) {
    std::cout << out.dump() << "\n";
  } else {
    for (const auto& [key, value] : out.items()) {
      std::cout << key << std::string(key.size() < 20 ? 20 - key.size() : 1, ' ')
                << (value.is_string() ? value.get<std::string>() : value.dump()) << "\n";
    }
  }
  if (out["state"] == "unknown") {
    throw ToolError("no job or workflow " + std::to_string(id) +
                    " in the store (never enqueued, completed without a retained key, or discarded)");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ordo-pg: the dead set, queue depth, leases and global groups of ordo's durable tasks in PostgreSQL"};
  app.require_subcommand(1);
  app.fallthrough();  // the global options may also follow the subcommand
  std::string conninfo;
  std::string schema = "ordo";
  bool as_json = false;
  std::int64_t id = 0;
  app.add_option("-d,--conninfo", conninfo, "libpq connection string of the fleet's database")
      ->envname("ORDO_PG_CONNINFO");
  app.add_option("--schema", schema, "the schema ordo's tables are in (PostgresStore::schema)")->capture_default_str();
  app.add_flag("--json", as_json, "print one JSON document instead of a table");
  auto* dead = app.add_subcommand("dead", "dead jobs: id, type, attempts and last error");
  auto* retry = app.add_subcommand("retry", "send a dead job back for a fresh round of attempts");
  auto* discard = app.add_subcommand("discard", "drop a dead job for good (a workflow node: the workflow fails)");
  auto* depth = app.add_subcommand("depth", "jobs per priority level: ready now, scheduled, retrying, running, blocked, dead");
  auto* leases = app.add_subcommand("leases", "running jobs: id, type, owner, attempt, fence and lease left");
  auto* groups = app.add_subcommand("groups", "global groups: kind, limit, in use, peak and holders by owner");
  auto* status = app.add_subcommand("status", "where one job (or workflow) is");
  for (auto* sub : {retry, discard, status}) {
    sub->add_option("id", id, "job id")->required()->check(CLI::PositiveNumber);
  }
  CLI11_PARSE(app, argc, argv);
  try {
    if (conninfo.empty()) {
      throw ToolError("no database: give --conninfo (-d) or set ORDO_PG_CONNINFO");
    }
    pg::checked_identifier(schema, "--schema");
    Store store(conninfo, schema);
    if (*dead) return cmd_dead(store, as_json);
    if (*retry) return cmd_retry(store, id, as_json);
    if (*discard) return cmd_discard(store, id, as_json);
    if (*depth) return cmd_depth(store, as_json);
    if (*leases) return cmd_leases(store, as_json);
    if (*groups) return cmd_groups(store, as_json);
    if (*status) return cmd_status(store, id, as_json);
  } catch (const std::exception& e) {
    std::string what = e.what();
    if (what.rfind("ordo: ", 0) == 0) what.erase(0, 6);
    std::cerr << "ordo-pg: error: " << what << "\n";
    return 1;
  }
  return 2;
}
