#!/usr/bin/env python3
"""Reads `ncu --csv --print-units base` output on stdin (metrics
gpu__time_duration.sum and launch__grid_size) and prints one line per
kernel: its name, median device time in microseconds and grid size."""
import csv
import sys

lines = [line for line in sys.stdin if line.startswith('"')]
rows = list(csv.reader(lines))
if not rows:
    print("no ncu rows")
    sys.exit(0)
head, rows = rows[0], rows[1:]
ident, name = head.index("ID"), head.index("Kernel Name")
metric, value = head.index("Metric Name"), head.index("Metric Value")
launches = {}
for r in rows:
    launches.setdefault((int(r[ident]), r[name]), {})[r[metric]] = r[value].replace(",", "")
# Kernels by name in the order of their first launch; the bench replays
# the model several times: each kernel's median over its launches.
by_name = {}
for (i, k), m in sorted(launches.items()):
    by_name.setdefault(k, []).append(
        (float(m.get("gpu__time_duration.sum", 0)) / 1000, m.get("launch__grid_size"))
    )
total = 0.0
for k, runs in by_name.items():
    times = sorted(t for t, _ in runs)
    us = times[len(times) // 2]
    total += us
    print(f"{k[:44]:44} {us:9.2f} us  grid {runs[0][1]}  ({len(runs)} launches)")
print(f"{'total':44} {total:9.2f} us")
