#!/usr/bin/env python3
"""Compares two builds of one benchmark binary on this noisy machine.

Runs the old and the new binary alternately (the order flips each round, so
that a drift of the machine hits both alike) and prints, per benchmark, the
median of each with its range, and new/old. A peer's row (tbb, sqlite) in
the same filter shows how much the machine itself moved between the two.

If the filter also selects probe/pingpong, each run is filed under the kind
of day its probes measured (fast: a round trip under 200 ns; slow: above),
and the kinds are reported apart: their figures differ by far more than
most changes do. A binary probes again after its benchmarks
(probe/pingpong_after); a run whose two probes disagree is filed as
"mixed", since the day changed somewhere inside it.

usage: compare_builds.py OLD_BINARY NEW_BINARY FILTER [ROUNDS] [--counter NAME] [-- extra benchmark flags]
  --counter NAME   compare that user counter (items_per_second, ns_over_plain,
                   p99_us, ...) instead of the real time; a benchmark
                   without it is compared by real time, marked so
example: compare_builds.py old/bench/ordo_bench_core build/test/bench/ordo_bench_core '^fib/(ordo|tbb)/' 10
         compare_builds.py old/bench/ordo_bench_durable build/test/bench/ordo_bench_durable \\
             '^(probe/|durable_enqueue/(ordo_async|sqlite_normal))' 8 --counter items_per_second
"""
import collections
import json
import statistics
import subprocess
import sys

FAST_DAY_NS = 200  # probe/pingpong round trip: about 85 ns on a fast day, 400 on a slow one


def run_once(binary, pattern, extra, counter):
    out = subprocess.run([binary, f"--benchmark_filter={pattern}", "--benchmark_format=json"] + extra,
                         capture_output=True, text=True, check=True).stdout
    days, values = set(), {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") != "median":
                continue
            b = dict(b, name=b["run_name"])  # a repeated benchmark counts by its median
        if b["name"].startswith("probe/") and "roundtrip_ns" in b:
            days.add("fast" if b["roundtrip_ns"] < FAST_DAY_NS else "slow")
            continue
        if counter is not None and counter in b:
            values[b["name"]] = b[counter]
        else:  # a benchmark without that counter is compared by its time, and says so
            values[b["name"] + ("" if counter is None else " (real_time)")] = b["real_time"]
    day = "-" if not days else days.pop() if len(days) == 1 else "mixed"
    return day, values


def describe(values):
    return f"{statistics.median(values):12.3f} [{min(values):.3f}-{max(values):.3f}] (n={len(values)})"


def main() -> int:
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        extra = args[args.index("--") + 1:]
        args = args[:args.index("--")]
    counter = None
    if "--counter" in args:
        at = args.index("--counter")
        if at + 1 >= len(args):
            print(__doc__, file=sys.stderr)
            return 2
        counter = args[at + 1]
        del args[at:at + 2]
    if len(args) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    old, new, pattern = args[:3]
    rounds = int(args[3]) if len(args) == 4 else 6
    # (day, benchmark) -> {"old": [...], "new": [...]}
    results = collections.defaultdict(lambda: {"old": [], "new": []})
    for r in range(rounds):
        order = (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old))
        for tag, binary in order:
            day, values = run_once(binary, pattern, extra, counter)
            for name, value in values.items():
                results[(day, name)][tag].append(value)
    print(f"comparing {counter or 'real_time'}; day: fast/slow by the probes before and after, "
          "mixed when they disagree, '-' without a probe")
    for (day, name), by_build in sorted(results.items()):
        olds, news = by_build["old"], by_build["new"]
        if not olds or not news:
            print(f"{day:4s} {name}: only in the {'new' if news else 'old'} build's runs")
            continue
        ratio = statistics.median(news) / statistics.median(olds)
        print(f"{day:4s} {name:60s} old {describe(olds)}  new {describe(news)}  new/old {ratio:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
