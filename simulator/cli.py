"""`edgefleet simulate` and the machinery `edgefleet demo` shares with it: run a scenario,
show it live, write the report folder, print the checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from simulator.report import Report, write_report
from simulator.run import MODEL, SimOptions, Simulation
from simulator.scenarios import SCENARIOS, Outcome

console = Console()
simulate_app = typer.Typer()


async def run_scenario(
    name: str,
    options: SimOptions,
    report_dir: Path,
    *,
    duration: float | None = None,
    live: bool = False,
    plots: bool = True,
) -> Report:
    """Run scenario ``name`` and write its report into ``report_dir``; the work directory
    (broker, control plane, device data) is ``report_dir/work``, emptied first."""
    work = report_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    began = time.monotonic()
    async with Simulation(work, options) as sim:
        console.print(
            f"broker: {sim.broker.describe()}; control plane {sim.control.url} "
            f"(data {sim.control.data_dir})\n"
            f"dashboard: {sim.control.url}/ui/ (log in with the token "
            f"{sim.control.token})",
            highlight=False,
        )
        view = asyncio.create_task(_live(sim)) if live else None
        limit = asyncio.timeout(duration)
        try:
            async with limit:
                outcome = await SCENARIOS[name](sim)
        except TimeoutError as exc:
            outcome = Outcome()
            if limit.expired():
                outcome.check("finished within --duration", False, f"stopped after {duration} s")
            else:
                outcome.check("the scenario ran to the end", False, f"timed out: {exc}")
        except Exception as exc:  # a scenario that breaks is a failed run, with a report
            logging.getLogger(__name__).exception("scenario %s failed", name)
            outcome = Outcome()
            outcome.check("the scenario ran to the end", False, f"{type(exc).__name__}: {exc}")
        finally:
            if view is not None:
                view.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await view
        readings = await sim.drift()
        report = Report(
            scenario=name,
            seed=options.seed,
            devices=options.devices,
            broker=sim.broker.describe(),
            started_at=sim.started_at,
            duration_s=round(time.monotonic() - began, 1),
            checks=outcome.checks,
            samples=sim.samples,
            markers=sim.markers,
            drift=readings,
            figures={**outcome.figures, "labels_posted": sim.feedback_posted},
        )
    write_report(report, report_dir, plots=plots)
    return report


def print_checks(report: Report, report_dir: Path) -> None:
    table = Table("", "check", "detail", title=f"scenario {report.scenario}", show_lines=False)
    for check in report.checks:
        table.add_row("[green]✓" if check.passed else "[red]✗", check.name, check.detail)
    console.print(table)
    verdict = "[green]PASS" if report.passed else "[red]FAIL"
    console.print(f"{verdict}[/] — report in {report_dir / 'report.md'}", highlight=False)


async def _live(sim: Simulation) -> None:
    """A terminal view, refreshed every second: devices per version, the rollout under way,
    the newest drift and accuracy readings, the timeline."""
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        while True:
            with contextlib.suppress(Exception):  # the view must never stop the run
                live.update(await _view(sim))
            await asyncio.sleep(1.0)


async def _view(sim: Simulation) -> Group:
    versions = Table("version", "devices", title=f"t = {sim.now():.0f} s — fleet")
    serving: dict[int, int] = {}
    for device_id, version in sim.serving().items():
        if sim.fleet.is_running(device_id):
            serving[version or 0] = serving.get(version or 0, 0) + 1
    for version, count in sorted(serving.items()):
        versions.add_row(f"v{version}" if version else "none", str(count))
    rollouts: list[dict[str, Any]] = await sim.get("/rollouts")
    stage = Table("rollout", "version", "status", "stage", "gates", title="rollouts")
    for rollout in rollouts[:3]:
        gates = ", ".join(
            f"{g.get('name')} {'✓' if g.get('passed') else '✗'}" for g in rollout["gates"][:4]
        )
        stage.add_row(
            rollout["id"],
            f"v{rollout['version']}",
            rollout["status"],
            f"{rollout['stage'] + 1}/{len(rollout['stages'])}",
            gates or "—",
        )
    readings: list[dict[str, Any]] = await sim.get(f"/models/{MODEL}/drift", limit=6)
    drift = Table("bucket end", "version", "accuracy", "p95 µs", "PSI per feature", title="drift")
    for r in readings[-6:]:
        psi = " ".join(
            f"{f['name'][:4]}={f['psi']:.2f}{'!' if f['verdict'] == 'drift' else ''}"
            for f in r["features"]
            if f["psi"] is not None
        )
        drift.add_row(
            r["bucket_end"][11:19],
            f"v{r['version']}",
            "—" if r["accuracy"] is None else f"{r['accuracy']:.3f}",
            "—" if r["p95_latency_us"] is None else f"{r['p95_latency_us']:.0f}",
            psi or "(too few rows)",
        )
    timeline = Table("t (s)", "what", title="timeline")
    for marker in sim.markers[-6:]:
        timeline.add_row(f"{marker.t:.1f}", marker.label)
    return Group(versions, stage, drift, timeline)


@simulate_app.command("simulate")
def simulate(
    scenario: Annotated[
        str | None, typer.Option(help=f"Scenario: {', '.join(SCENARIOS)}.", show_default=False)
    ] = None,
    swarm: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=200_000,
            help="Instead of a scenario: N protocol-level swarm devices (no model runs; "
            "artifacts count as cached) and two rollouts, all-at-once then canary, measured.",
            show_default=False,
        ),
    ] = None,
    window_seconds: Annotated[
        float, typer.Option(min=0.1, help="With --swarm: telemetry window per device.")
    ] = 60.0,
    devices: Annotated[int, typer.Option(min=2, max=5000, help="Simulated devices.")] = 50,
    seed: Annotated[int, typer.Option(min=0, help="Seed of data, labels and cohorts.")] = 1,
    report_dir: Annotated[
        Path, typer.Option(help="Where report.json, report.md and the plots go.")
    ] = Path("edgefleet-sim"),
    duration: Annotated[
        float | None, typer.Option(min=1, help="Stop (and fail) after this many seconds.")
    ] = None,
    bucket_seconds: Annotated[
        float | None,
        typer.Option(
            min=0.5,
            help="Drift/accuracy bucket (compressed time); default: ≥ 3 s and ~1,200 requests.",
        ),
    ] = None,
    rows_per_second: Annotated[
        float, typer.Option(min=0.1, help="Inference requests per device per second.")
    ] = 10.0,
    live: Annotated[bool, typer.Option(help="Show a live terminal view.")] = False,
    plots: Annotated[bool, typer.Option(help="Draw the PNG plots.")] = True,
) -> None:
    """Run a scenario with N real agents in this process against a private broker
    (mosquitto when installed, else in-process amqtt) and a real control plane. Exits 0
    only when every check passed; REPORT_DIR/report.json holds each check with its figures.
    With --swarm N: a protocol-level swarm instead of agents (see simulator/swarm);
    REPORT_DIR/swarm.json holds its figures."""
    if (scenario is None) == (swarm is None):
        raise typer.BadParameter("give --scenario or --swarm", param_hint="--scenario")
    if swarm is not None:
        logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
        from simulator.swarm.cli import run_swarm

        raise typer.Exit(run_swarm(swarm, report_dir, window_seconds, duration))
    assert scenario is not None
    if scenario not in SCENARIOS:
        raise typer.BadParameter(
            f"{scenario!r} is not one of {', '.join(SCENARIOS)}", param_hint="--scenario"
        )
    # Agents report reconnects and slow shutdowns as warnings: expected noise in a scenario.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    options = SimOptions(
        devices=devices, seed=seed, bucket_seconds=bucket_seconds, rows_per_second=rows_per_second
    )
    report = asyncio.run(
        run_scenario(scenario, options, report_dir, duration=duration, live=live, plots=plots)
    )
    print_checks(report, report_dir)
    raise typer.Exit(0 if report.passed else 1)
