#!/usr/bin/env python3
"""Run ordo's benchmark binaries once each and print ordo/peer ratios.

Every workload `<workload>/<system>/<args>` is compared with the same workload
of every other system in the same run: a ratio below 1 means ordo is better. The
ratio is of p99_us when the workload reports latencies, of cpu_s for idle CPU,
of real time when both ran the same size, and of time per item (from
items_per_second) when they did not. Usage: ratios.py [--out DIR] BINARY [BINARY...] [-- benchmark flags]
"""
import argparse
import json
import os
import subprocess
import sys


def run(binary, out_dir, extra):
    out = os.path.join(out_dir, os.path.basename(binary) + ".json")
    cmd = [binary, "--benchmark_format=console", f"--benchmark_out={out}", "--benchmark_out_format=json"] + extra
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(out) as f:
        return json.load(f)["benchmarks"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("binaries", nargs="+")
    args, extra = parser.parse_known_args()
    os.makedirs(args.out, exist_ok=True)
    rows = {}
    errors = 0
    days = []
    for binary in args.binaries:
        for b in run(binary, args.out, extra):
            if b["name"].startswith("probe/pingpong") and "roundtrip_ns" in b:
                days.append((os.path.basename(binary), b["name"].split("/")[1], b["roundtrip_ns"]))
                continue
            if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
                continue
            if b.get("error_occurred"):
                print(f"ERROR in {b['name']}: {b.get('error_message')}", file=sys.stderr)
                errors += 1
                continue
            parts = b["name"].split("/")
            if len(parts) < 2:
                continue
            workload, system, rest = parts[0], parts[1], "/".join(parts[2:])
            rest = rest.replace("_median", "").split("/real_time")[0]
            # Sizes and iteration counts may differ between systems (a slow
            # peer runs fewer jobs): such rows are paired by time per item.
            rest = "/".join(p for p in rest.split("/") if not (p.isdigit() or p.startswith("iterations:")))
            rows.setdefault((workload, rest), {})[system] = b
    print()
    for binary, probe, ns in days:  # pingpong before the benchmarks, pingpong_after after them
        kind = "a fast day" if ns < 200 else "a slow day"
        print(f"{binary}: probe/{probe} round trip {ns:.0f} ns ({kind}: about 85 ns fast, 400 ns slow here)")
    print(f"{'workload':36} {'ordo variant':14} {'peer':12} {'ordo':>12} {'peer':>12} {'ordo/peer':>10}")
    for (workload, rest), systems in sorted(rows.items()):
        for ordo_sys in sorted(s for s in systems if s == "ordo" or s.startswith("ordo_")):
            for peer in sorted(s for s in systems if not (s == "ordo" or s.startswith("ordo_"))):
                o, p = systems[ordo_sys], systems[peer]
                key = next((k for k in ("p99_us", "cpu_s", "low_wait_ms") if k in o), "real_time")
                ov, pv = o.get(key, 0.0), p.get(key, 0.0)
                if key == "real_time" and o["name"].split("/")[2:] != p["name"].split("/")[2:]:
                    if "items_per_second" not in o or "items_per_second" not in p:
                        continue  # different sizes and no rate: not comparable
                    key = "us_per_item"
                    ov, pv = 1e6 / o["items_per_second"], 1e6 / p["items_per_second"]
                ratio = ov / pv if pv else float("nan")
                name = workload + ("/" + rest if rest else "")
                unit = o.get("time_unit", "") if key == "real_time" else ""
                print(f"{name:36} {ordo_sys:14} {peer:12} {ov:>10.3f}{unit:>2} {pv:>10.3f}{unit:>2} {ratio:>10.3f}"
                      + ("" if key == "real_time" else f"  ({key})"))
    if errors:
        print(f"{errors} benchmark(s) reported a wrong result", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
