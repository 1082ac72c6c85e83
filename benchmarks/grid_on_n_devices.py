"""On paper: the wall time of a finished grid on N devices under both parallel modes, from its measured run times.

    .venv/bin/python benchmarks/grid_on_n_devices.py docs/results/sst2/runs.jsonl [--devices 1,2,4,8,16]

run mode: every run whole on one device; the sweep hands out runs longest first to whichever device is free,
  so the wall time is that schedule's makespan over the measured run times.
data mode: every run spread over all N devices, one after another. Its best case is perfect scaling (each run
  takes its time / N, no communication), which small batches never reach: at a global batch of 16, 8 devices
  get 2 examples each per step. So the data-mode figure is a lower bound.
"""

import argparse
import heapq
import json


def makespan(times, devices):
    """Wall time when runs, longest first, go to whichever device frees up first."""
    free = [0.0] * devices
    for t in sorted(times, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + t)
    return max(free)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("runs")
    p.add_argument("--devices", default="1,2,4,8,16")
    args = p.parse_args()
    with open(args.runs) as f:
        times = [json.loads(line)["seconds"] for line in f if line.strip()]
    total = sum(times)
    print(f"{len(times)} runs, {total / 3600:.2f} h of measured run time, longest run {max(times) / 60:.1f} min")
    print("| devices | run mode (h) | data mode, perfect scaling (h) |")
    print("|---|---|---|")
    for n in (int(x) for x in args.devices.split(",")):
        print(f"| {n} | {makespan(times, n) / 3600:.2f} | {total / n / 3600:.2f} |")


if __name__ == "__main__":
    main()
