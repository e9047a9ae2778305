#!/usr/bin/env python3
"""Compares two builds of one benchmark binary on this noisy machine.

Runs the old and the new binary alternately (the order flips each round, so
that a drift of the machine hits both alike) and prints, per benchmark, the
median real time of each and new/old. A peer's row (tbb, sqlite) in the same
filter shows how much the machine itself moved between the two.

usage: compare_builds.py OLD_BINARY NEW_BINARY FILTER [ROUNDS] [-- extra benchmark flags]
example: compare_builds.py old/bench/ordo_bench_core build/test/bench/ordo_bench_core '^fib/(ordo|tbb)/' 10
"""
import collections
import json
import statistics
import subprocess
import sys


def main() -> int:
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        extra = args[args.index("--") + 1:]
        args = args[:args.index("--")]
    if len(args) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    old, new, pattern = args[:3]
    rounds = int(args[3]) if len(args) == 4 else 6
    times = {"old": collections.defaultdict(list), "new": collections.defaultdict(list)}
    for r in range(rounds):
        order = (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old))
        for tag, binary in order:
            out = subprocess.run([binary, f"--benchmark_filter={pattern}", "--benchmark_format=json"] + extra,
                                 capture_output=True, text=True, check=True).stdout
            for b in json.loads(out)["benchmarks"]:
                if b.get("run_type") != "aggregate":
                    times[tag][b["name"]].append(b["real_time"])
    for name, olds in times["old"].items():
        news = times["new"].get(name)
        if not news:
            print(f"{name}: missing from the new binary")
            continue
        o, n = statistics.median(olds), statistics.median(news)
        print(f"{name:64s} old {o:11.3f}  new {n:11.3f}  new/old {n / o:6.3f}  ({len(olds)} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
