"""Peak memory of validating an uploaded dataset CSV, against its size.

Builds a CSV of sensor rows (6 float features, a string label: ``simulator.data``) of
``--mib`` MiB, then runs ``control_plane.registry.datasets.parse_csv`` on it: the growth of the
process's peak RSS while parsing (``ru_maxrss`` after, against the RSS before), and that
plus the upload itself (held by the route meanwhile), as multiples of the upload's size.
The budget: at most 3× the upload.

    .venv/bin/python benchmarks/csv_memory.py [--mib 100]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from results import Results, add_json_argument

from control_plane.registry.datasets import DatasetLimits, parse_csv
from simulator.data import sensor_csv

MiB = 1024 * 1024


def make_csv(size: int) -> bytes:
    block = sensor_csv(20_000, seed=1).encode()
    header, body = block.split(b"\n", 1)
    copies = max(1, size // len(body))
    return header + b"\n" + body * copies


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100)
    add_json_argument(parser)
    args = parser.parse_args()
    data = make_csv(args.mib * MiB)
    limits = DatasetLimits(max_rows=10**8, max_columns=1000, min_rows=1)
    before = rss()
    started = time.perf_counter()
    parsed = parse_csv(data, label="fault", nan_policy="reject", limits=limits)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    size = len(data)
    print(f"upload {size / MiB:.1f} MiB, {len(parsed.labels):,} rows × {len(parsed.features)}")
    print(f"parse, peak RSS growth  {peak / MiB:8.1f} MiB  {peak / size:5.2f}× the upload")
    total = (size + peak) / size
    print(f"upload + parse          {(size + peak) / MiB:8.1f} MiB  {total:5.2f}×  (budget 3×)")
    print(f"time                    {seconds:8.1f} s")
    results = Results("csv_memory")
    group = f"parse_csv, {size / MiB:.0f} MiB upload"
    upload = results.add(group, "upload", size / MiB, "MiB")
    results.add(group, "parse, peak RSS growth", peak / MiB, "MiB", baseline=upload)
    results.add(
        group,
        "upload + parse",
        (size + peak) / MiB,
        "MiB",
        baseline=upload,
        target="≤ 3×",
        headline=True,
    )
    results.add(group, "parse time", seconds, "s", note=f"{len(parsed.labels):,} rows")
    results.write(args.json)


if __name__ == "__main__":
    main()
