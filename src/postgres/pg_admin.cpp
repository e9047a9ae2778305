// PostgreSQL store: status by id, the lists of waiting and dead tasks, and
// sending dead tasks back or away. Every answer is the database's, fleet-wide.
#include "postgres/pg_runtime.hpp"

namespace ordo::detail {
namespace {

std::chrono::system_clock::time_point from_epoch_us(std::int64_t us) {
  return std::chrono::system_clock::time_point(std::chrono::microseconds(us));
}

// Columns: id, state, type, attempts, run_at_us, waiting_for_time, retrying, key_until_us, last_error.
constexpr const char* kStatusColumns =
    "id, state, type, attempt - attempt_base, (extract(epoch FROM run_at) * 1000000)::bigint, run_at > now(),"
    " retrying, (extract(epoch FROM key_until) * 1000000)::bigint, coalesce(last_error, '')";

DurableTaskStatus status_of(const pg::Result& r, int row) {
  using State = DurableTaskStatus::State;
  DurableTaskStatus s;
  s.id = static_cast<TaskId>(r.int64(row, 0));
  const std::string_view state = r.text(row, 1);
  s.type = std::string(r.text(row, 2));
  s.attempts = static_cast<unsigned>(r.int64(row, 3));
  s.last_error = std::string(r.text(row, 8));
  if (state == "available") {
    if (r.boolean(row, 5)) {
      s.state = r.boolean(row, 6) ? State::retrying : State::scheduled;
      s.run_at = from_epoch_us(r.int64(row, 4));
    } else {
      s.state = State::queued;
    }
  } else if (state == "running") {
    s.state = State::running;
  } else if (state == "blocked") {
    s.state = State::blocked;
  } else if (state == "dead") {
    s.state = State::dead;
  } else {
    s.state = State::completed;
    s.type.clear();
    s.key_retained_until = from_epoch_us(r.int64(row, 7));
  }
  return s;
}

}  // namespace

DurableTaskStatus PgRuntime::status(TaskId id) const {
  const auto param = pg::Param(static_cast<std::int64_t>(id));
  const pg::Result r = admin(sql((std::string("SELECT ") + kStatusColumns + " FROM @S.jobs WHERE id = $1").c_str()), {param});
  if (r.rows() == 1) return status_of(r, 0);
  DurableTaskStatus s;
  s.id = id;
  const pg::Result flow = admin(
      sql("SELECT (extract(epoch FROM key_until) * 1000000)::bigint FROM @S.workflows WHERE id = $1 AND state = 'completed'"),
      {param});
  if (flow.rows() == 1) {
    s.state = DurableTaskStatus::State::completed;
    s.key_retained_until = from_epoch_us(flow.int64(0, 0));
  }
  return s;
}

std::vector<DurableTaskStatus> PgRuntime::waiting(bool retrying) const {
  const pg::Result r =
      admin(sql((std::string("SELECT ") + kStatusColumns +
                 " FROM @S.jobs WHERE state = 'available' AND run_at > now() AND retrying = $1 ORDER BY run_at, id")
                    .c_str()),
            {pg::Param(retrying ? "t" : "f")});
  std::vector<DurableTaskStatus> out;
  for (int i = 0; i < r.rows(); ++i) out.push_back(status_of(r, i));
  return out;
}

std::vector<DeadTask> PgRuntime::dead() const {
  const pg::Result r = admin(sql("SELECT id, type, attempt - attempt_base, coalesce(last_error, '') FROM @S.jobs"
                                 " WHERE state = 'dead' ORDER BY id"));
  std::vector<DeadTask> out;
  for (int i = 0; i < r.rows(); ++i) {
    out.push_back({static_cast<TaskId>(r.int64(i, 0)), std::string(r.text(i, 1)), static_cast<unsigned>(r.int64(i, 2)),
                   std::string(r.text(i, 3))});
  }
  return out;
}

bool PgRuntime::retry_dead(TaskId id) {
  return admin(sql("SELECT @S.retry_dead($1)"), {pg::Param(static_cast<std::int64_t>(id))}).boolean(0, 0);
}

bool PgRuntime::discard_dead(TaskId id) {
  return admin(sql("SELECT @S.discard_dead($1, $2)"), {pg::Param(static_cast<std::int64_t>(id)), pg::Param(retain_ms_)})
      .boolean(0, 0);
}

}  // namespace ordo::detail
