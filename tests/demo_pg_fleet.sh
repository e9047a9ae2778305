#!/usr/bin/env bash
# ordo-demo's fleet story as scripts/demo.sh runs it: a throwaway PostgreSQL cluster
# (stopped on any exit), three worker processes, one killed with SIGKILL. The story
# must end with its own verdict (exit 0) and a summary counted from the database:
# every acknowledged job's effect exactly once, and never more than 4 `db` holders.
set -euo pipefail
demo="$1"
pg_sh="$2"
pg_dir="$(mktemp -d /tmp/ordo-demo-pg.XXXXXX)"
trap 'bash "$pg_sh" stop "$pg_dir"' EXIT
conninfo="$(bash "$pg_sh" start "$pg_dir")"
set +e
out="$("$demo" --pg-fleet --pg-conninfo "$conninfo" 2>&1)"
rc=$?
set -e
echo "$out"
if [ "$rc" -ne 0 ]; then
  echo "the fleet story exited with $rc" >&2
  exit 1
fi
grep -Eq "summary: enqueued=240 completed=240 lost=0 duplicated=0 db_peak=[1-4] failover_ms=[0-9]+" <<<"$out"
grep -Eq "killed worker w1 \(pid [0-9]+\) with SIGKILL after [0-9]+ effects; it held job\(s\) [0-9]" <<<"$out"
grep -Eq "its jobs started elsewhere [0-9]+ ms after the kill" <<<"$out"
grep -Eq "most db holders fleet-wide: [1-4] by the database \(ordo.groups.peak\), [1-4] by the handlers' own count" <<<"$out"
# The story's database is dropped, and nothing else is left behind on the server.
left="$(psql "$conninfo" -Atc "SELECT count(*) FROM pg_database WHERE datname LIKE 'ordo_demo_fleet_%'")" || left="?"
[ "$left" = "0" ] || { echo "the story left its database behind ($left)" >&2; exit 1; }
