#!/usr/bin/env bash
# ordo-demo's durable story as a user runs it: a run that kills itself with
# SIGKILL part-way, then a run on the same journal that must finish the work
# with nothing lost or duplicated (counted by the demo from its effects log).
set -euo pipefail
demo="$1"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
set +e
"$demo" --journal "$dir/journal" --crash-after 25 --jobs 60
rc=$?
set -e
if [ "$rc" -ne 137 ]; then
  echo "expected the first run to die by SIGKILL (exit 137), got $rc" >&2
  exit 1
fi
out="$("$demo" --journal "$dir/journal" --jobs 60)"
echo "$out"
grep -q "summary: jobs=60 completed=60 lost=0 duplicated=0" <<<"$out"
