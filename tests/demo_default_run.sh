#!/usr/bin/env bash
# ordo-demo as the README runs it, plus --trace and --metrics-port: the four
# stories end well (lost=0 duplicated=0, the db cap held), the trace is
# valid JSON whose begin/end events pair up, and a scrape of the metrics
# endpoint while the demo runs returns Prometheus text.
set -euo pipefail
demo="$1"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT
port=$((20000 + $$ % 20000))
"$demo" --trace "$dir/trace.json" --metrics-port "$port" --hold 3 > "$dir/out.txt" 2>&1 &
pid=$!
scrape=""
for _ in $(seq 1 200); do  # until the endpoint answers (the demo is running)
  if exec 3<> "/dev/tcp/127.0.0.1/$port" 2> /dev/null; then
    printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
    scrape="$(cat <&3)"
    exec 3>&-
    break
  fi
  sleep 0.05
done
wait "$pid"
pid=""
cat "$dir/out.txt"
grep -q "summary: jobs=100 completed=100 lost=0 duplicated=0" "$dir/out.txt"
grep -q "at most [1-4] queries ran at once" "$dir/out.txt"
grep -q "cyclic workflow is refused" "$dir/out.txt"
grep -q "^  scheduler " "$dir/out.txt"
grep -q "HTTP/1.1 200 OK" <<< "$scrape" || { echo "no metrics scrape answered" >&2; exit 1; }
grep -q '^ordo_tasks_run_total{scheduler="demo"} [0-9]' <<< "$scrape"
python3 - "$dir/trace.json" << 'PY'
import json, sys
events = json.load(open(sys.argv[1]))["traceEvents"]
stacks = {}
spans = 0
for e in events:
    if e["ph"] == "B":
        stacks.setdefault(e["tid"], []).append(e["name"])
        spans += 1
    elif e["ph"] == "E":
        assert stacks.get(e["tid"]), f"end without begin on worker {e['tid']}"
        stacks[e["tid"]].pop()
assert all(not s for s in stacks.values()), "unended spans"
assert spans > 5000, f"only {spans} spans"
print(f"trace: {spans} spans, begin/end paired on {len(stacks)} workers")
PY
