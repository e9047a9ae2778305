#!/usr/bin/env bash
# Builds ordo-demo (Release) and runs it. Story 5, the fleet, needs a PostgreSQL server:
# this script starts a throwaway one (scripts/pg.sh, in a fresh /tmp directory), passes
# it to the demo and stops it when the demo ends, also when it fails or is interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DORDO_BUILD_TESTS=OFF -DORDO_BUILD_BENCHMARKS=OFF \
  -DORDO_BUILD_EXAMPLES=ON > /dev/null
cmake --build build/release --target ordo-demo -j 2
demo=build/release/examples/ordo-demo
if ! grep -q '^ORDO_POSTGRES:BOOL=ON' build/release/CMakeCache.txt; then
  exec "$demo" "$@"  # built without PostgreSQL: the demo says story 5 is skipped
fi
pg_dir="$(mktemp -d /tmp/ordo-demo-pg.XXXXXX)"
trap 'bash scripts/pg.sh stop "$pg_dir" || echo "demo.sh: could not stop the server in $pg_dir" >&2' EXIT
conninfo="$(bash scripts/pg.sh start "$pg_dir")"
"$demo" --pg-conninfo "$conninfo" "$@"
