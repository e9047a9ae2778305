#!/usr/bin/env bash
# The ctest fixture `pg` (tests/CMakeLists.txt): one throwaway PostgreSQL cluster for every
# test labelled `postgres` in a ctest run. Each test isolates itself in a database of
# its own (tests/pg_support.hpp, ScratchDatabase), so they can share the cluster under -j.
#
#   tests/pg_fixture.sh start BUILD_DIR   start a cluster in a fresh /tmp/ordo-pg.XXXXXX,
#                                         write its conninfo to BUILD_DIR/pg_conninfo.txt
#   tests/pg_fixture.sh stop BUILD_DIR    stop it, remove its directory and the file
#
# Both also stop the private clusters of tests that were killed (a timeout) before
# they could stop them. With ORDO_PG_CONNINFO set, the tests use that server and no
# shared cluster is started or stopped.
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: tests/pg_fixture.sh start|stop BUILD_DIR" >&2; exit 2; }
action=$1
file="$2/pg_conninfo.txt"
pg_sh="$(cd "$(dirname "$0")/.." && pwd)/scripts/pg.sh"

markers="$2/pg_private_clusters"

# Private clusters (ThrowawayCluster, tests/pg_support.hpp) of tests killed before they
# could stop them: each left a marker named after its /tmp directory.
stop_private_clusters() {
  local marker
  for marker in "$markers"/ordo-pg.*; do
    [ -e "$marker" ] || continue
    echo "stopping the private cluster a killed test left behind: /tmp/${marker##*/}"
    bash "$pg_sh" stop "/tmp/${marker##*/}"
    rm -f "$marker"
  done
  rmdir "$markers" 2> /dev/null || true
}
# Before any test of this run, and after the last.
stop_private_clusters

if [ -n "${ORDO_PG_CONNINFO:-}" ]; then
  echo "ORDO_PG_CONNINFO is set: the tests use that server, no shared cluster is started or stopped"
  exit 0
fi

# The cluster directory is the conninfo's host= (scripts/pg.sh puts the socket there).
stop_cluster_of() {
  local dir
  dir=$(sed -n 's/^host=\([^ ]*\) .*/\1/p' "$1")
  case "$dir" in
    /tmp/ordo-pg.*) bash "$pg_sh" stop "$dir" ;;
    *) echo "pg_fixture.sh: $1 names no cluster of this fixture (host=$dir); not stopping it" >&2 ;;
  esac
  rm -f "$1"
}

case "$action" in
  start)
    # A run interrupted before its cleanup (ctest killed) left its cluster running.
    if [ -f "$file" ]; then
      echo "stopping the cluster a previous run left behind: $(cat "$file")"
      stop_cluster_of "$file"
    fi
    dir=$(mktemp -d /tmp/ordo-pg.XXXXXX)
    if ! conninfo=$(bash "$pg_sh" start "$dir"); then
      bash "$pg_sh" stop "$dir" || true
      echo "pg_fixture.sh: could not start the test cluster (scripts/pg.sh start $dir failed, see above)" >&2
      exit 1
    fi
    echo "$conninfo" > "$file.tmp"
    mv "$file.tmp" "$file"
    echo "cluster started: $conninfo"
    ;;
  stop)
    if [ -f "$file" ]; then
      stop_cluster_of "$file"
      echo "cluster stopped"
    else
      echo "no cluster to stop ($file does not exist)"
    fi
    ;;
  *)
    echo "usage: tests/pg_fixture.sh start|stop BUILD_DIR" >&2
    exit 2
    ;;
esac
