#!/usr/bin/env python3
"""Reads `ncu --csv --page details` (or `--csv` raw metrics) output on stdin
and prints, per kernel launch, the metrics whose names match the
arguments (substrings, case-insensitive; all when none): a compact table of
ncu's sections for comparing kernels."""
import csv
import sys

wanted = [w.lower() for w in sys.argv[1:]]
lines = [line for line in sys.stdin if line.startswith('"')]
rows = list(csv.reader(lines))
if not rows:
    print("no ncu rows")
    sys.exit(0)
head, rows = rows[0], rows[1:]
ident, name = head.index("ID"), head.index("Kernel Name")
metric, value = head.index("Metric Name"), head.index("Metric Value")
unit = head.index("Metric Unit") if "Metric Unit" in head else None
launches = {}
for r in rows:
    m = r[metric]
    if wanted and not any(w in m.lower() for w in wanted):
        continue
    u = r[unit] if unit is not None else ""
    launches.setdefault((int(r[ident]), r[name]), []).append((m, r[value], u))
for (i, k), ms in sorted(launches.items()):
    print(f"## launch {i}: {k[:60]}")
    for m, v, u in ms:
        print(f"  {m[:64]:64} {v:>14} {u}")
