"""Simulator scale: scenarios of `edgefleet simulate` at fleet sizes, with the figures the
scenario reports plus this process's memory and CPU.

1. ``rollout`` at N devices (default 1,000) with a light app load (1 request per device per
   second): seconds to a finished canary rollout, devices/s, RSS per agent (Δ from before the
   fleet started), CPU of this process (all agents and the world) and of the whole run.
2. ``chaos`` at N/5 devices: broker killed and restarted twice, control plane killed once,
   10% of agents killed and restarted per round, during a rollout; restarts survived,
   telemetry windows produced vs stored, devices converged.

    .venv/bin/python benchmarks/sim_scale.py [--devices 1000] [--quick]

Each run writes its report folder under a temporary directory (printed).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import Results, add_json_argument  # noqa: E402

from simulator.cli import run_scenario  # noqa: E402
from simulator.report import Report  # noqa: E402
from simulator.run import SimOptions  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(name: str, devices: int, directory: Path) -> tuple[Report, float, float, float]:
    before_rss, before_cpu, began = rss_mib(), cpu_seconds(), time.monotonic()
    options = SimOptions(devices=devices, seed=1, rows_per_second=1.0, samples_per_window=2)
    report = asyncio.run(run_scenario(name, options, directory / name, plots=False))
    return report, rss_mib() - before_rss, cpu_seconds() - before_cpu, time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 devices")
    add_json_argument(parser)
    args = parser.parse_args()
    results = Results("sim_scale")
    n = 100 if args.quick else args.devices
    with tempfile.TemporaryDirectory(prefix="edgefleet-simbench-") as tmp:
        directory = Path(tmp)
        print(f"# .venv/bin/python benchmarks/sim_scale.py --devices {n}; reports in {tmp}")
        for name, size in (("rollout", n), ("chaos", max(10, n // 5))):
            report, rss, cpu, wall = run(name, size, directory)
            verdict = "PASS" if report.passed else "FAIL"
            print(f"\n## {name}, {size} devices: {verdict} in {wall:.1f} s")
            for check in report.checks:
                print(f"  {'✓' if check.passed else '✗'} {check.name}: {check.detail}")
            print(
                f"  this process: RSS +{rss:.0f} MiB ({rss * 1024 / size:.0f} KiB per agent "
                f"after the run), CPU {cpu:.1f} s over {wall:.1f} s "
                f"({cpu / wall:.0%} of one core)"
            )
            for key, value in report.figures.items():
                print(f"  {key}: {value}")
            record(results, name, size, report, (rss, cpu, wall))
    results.write(args.json)


def record(
    results: Results, name: str, size: int, report: Report, usage: tuple[float, float, float]
) -> None:
    """The scenario's verdict and numeric figures; windows stored against those produced."""
    rss, cpu, wall = usage
    group = f"{name}, {size:,} devices"
    passed = sum(check.passed for check in report.checks)
    failed = "; ".join(c.name for c in report.checks if not c.passed)
    verdict = f"{'PASS' if report.passed else 'FAIL'}" + (f": {failed}" if failed else "")
    results.add(group, "scenario", wall, "s", headline=name == "rollout", note=verdict)
    results.add(
        group, "checks passed", passed, "count", better="higher", note=f"of {len(report.checks)}"
    )
    results.add(group, "RSS per agent", rss * 1024 / size, "KiB")
    results.add(group, "this process's CPU, share of one core", cpu / wall * 100, "%")
    numbers = {k: v for k, v in report.figures.items() if isinstance(v, int | float)}
    produced = None
    if "windows_produced" in numbers:
        produced = results.add(group, "windows produced", numbers.pop("windows_produced"), "count")
    if "windows_stored" in numbers:
        stored = numbers.pop("windows_stored")
        results.add(
            group,
            "windows stored",
            stored,
            "count",
            baseline=produced,
            target="≥ 1×",
            headline=produced is not None,
        )
    for key, value in numbers.items():
        if key.endswith("per_second"):
            results.add(group, key.replace("_", " "), value, "/s", better="higher")
        else:
            unit = "s" if key.endswith("seconds") else "count"
            results.add(group, key.replace("_", " "), value, unit)


if __name__ == "__main__":
    main()
