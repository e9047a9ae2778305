// ordo-demo's fleet story (see demo_fleet.cpp): three worker processes on one
// PostgreSQL queue with a global `db` group of 4; one is killed with SIGKILL.
// Built only with the PostgreSQL backend (ORDO_HAS_POSTGRES).
#pragma once

#include <string>

namespace demo {

struct FleetStoryOptions {
  std::string conninfo;  // a server to run on; the story works in a database of its own there
  int jobs = 240;
  int workers = 3;
};

struct FleetStoryResult {
  int exit_code = 1;  // 0: nothing lost or duplicated, the cap held, the kill happened and was recovered
  long enqueued = 0, completed = 0, lost = 0, duplicated = 0;
  long peak_groups = 0;   // ordo.groups.peak of `db`: the most permits the database granted at once
  long peak_handlers = 0; // the most handlers inside their `db` section at once, counted by the handlers
  double failover_ms = -1;  // kill -> the first of the killed worker's jobs started elsewhere
  double failover_all_ms = -1;  // ... the last of them
  bool killed = false;
};

// The parent's side: a database of its own, the workers, the kill, the
// summary counted from the database.
FleetStoryResult fleet_story(const FleetStoryOptions& options);

// The worker's side (ordo-demo --pg-worker NAME): runs the `query` jobs until
// its standard input closes, then drains and exits.
int fleet_worker(const std::string& conninfo, const std::string& name);

}  // namespace demo
