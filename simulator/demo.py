"""`edgefleet demo`: the whole loop on this machine in a few minutes.

The ``drift`` scenario of the simulator on ~50 real agents: a private broker (mosquitto when
installed, else in-process amqtt), a real control plane, v1 trained and rolled out; then
three quarters of the sites drift, the monitor notices, a retraining proves a challenger
better, a staged rollout ships it and accuracy recovers. A live terminal view while it runs;
a report folder (report.md, report.json, PNG plots) at the end.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from simulator.cli import console, print_checks, run_scenario
from simulator.run import SimOptions

demo_app = typer.Typer()


@demo_app.command("demo")
def demo(
    devices: Annotated[int, typer.Option(min=2, max=1000, help="Simulated devices.")] = 50,
    seed: Annotated[int, typer.Option(min=0, help="Seed of data, labels and cohorts.")] = 1,
    report_dir: Annotated[
        Path, typer.Option(help="Where report.md, report.json and the plots go.")
    ] = Path("edgefleet-demo"),
    live: Annotated[bool, typer.Option(help="Show the live terminal view.")] = True,
) -> None:
    """Watch a fleet drift and heal itself: drift detected, retrained, proven better, rolled
    out in stages, accuracy back up. Exits 0 when every check passed."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    console.rule("[bold]edgefleet demo: a fleet drifts and heals itself")
    report = asyncio.run(
        run_scenario("drift", SimOptions(devices=devices, seed=seed), report_dir, live=live)
    )
    print_checks(report, report_dir)
    console.print(
        f"Open {report_dir / 'report.md'} and the plots next to it "
        "(accuracy.png, psi.png, latency.png, versions.png).\n"
        f"The control plane's data (keys, SQLite, artifacts) is in {report_dir / 'work'}.",
        highlight=False,
    )
    raise typer.Exit(0 if report.passed else 1)
