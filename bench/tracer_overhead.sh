#!/usr/bin/env bash
# The tracer's cost while it is off: fib/ordo/30 from a build with the
# tracer compiled in (and disabled) against one configured -DORDO_TRACER=OFF,
# run alternately so that the machine's drift hits both alike. Prints each
# pair and the median ratio (target: within 3%). Usage: bench/tracer_overhead.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-7}"
for variant in on off; do
  flag=$([ "$variant" = on ] && echo ON || echo OFF)
  cmake -S . -B "build/tracer-$variant" -DCMAKE_BUILD_TYPE=Release -DORDO_TRACER="$flag" -DORDO_BUILD_TESTS=OFF \
    -DORDO_BUILD_EXAMPLES=OFF -DORDO_BUILD_TOOLS=OFF -DORDO_BUILD_BENCHMARKS=ON > /dev/null
  cmake --build "build/tracer-$variant" -j 2 --target ordo_bench_core > /dev/null
done
run() {
  "build/tracer-$1/bench/ordo_bench_core" --benchmark_filter='^fib/ordo/30' --benchmark_repetitions=5 \
    --benchmark_report_aggregates_only=true --benchmark_format=csv 2>/dev/null |
    awk -F, '/_median/ { print $3 }'  # real time, ms
}
ratios=()
for ((i = 1; i <= rounds; i++)); do
  on=$(run on)
  off=$(run off)
  ratio=$(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.4f", a / b }')
  ratios+=("$ratio")
  echo "round $i: tracer compiled in, off: $on ms; compiled out: $off ms; ratio $ratio"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ r[NR] = $1 } END { printf "median ratio (in/out): %s\n", r[int((NR + 1) / 2)] }'
