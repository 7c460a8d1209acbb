"""The simulator and the demo as a user runs them: `edgefleet simulate` per scenario and
`edgefleet demo`, at a small size, in a subprocess; each scenario's checks must pass and its
report folder must be written. (The 1,000-agent run is a benchmark: benchmarks/fleet.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.rig.server import run_cli

pytestmark = pytest.mark.integration
PNG = b"\x89PNG\r\n\x1a\n"


def read_report(directory: Path) -> dict[str, object]:
    report: dict[str, object] = json.loads((directory / "report.json").read_text())
    return report


@pytest.mark.parametrize("scenario", ["rollout", "bad-model", "churn", "chaos"])
def test_scenario_checks_pass(tmp_path: Path, scenario: str) -> None:
    out = tmp_path / "report"
    result = run_cli(
        "simulate",
        "--scenario",
        scenario,
        "--devices",
        "12",
        "--seed",
        "3",
        "--report-dir",
        str(out),
        "--no-plots",
        "--duration",
        "240",
        check=False,
        timeout=300,
    )
    report = read_report(out)
    checks = report["checks"]
    assert isinstance(checks, list) and checks
    failed = [c for c in checks if not c["passed"]]
    assert result.returncode == 0 and not failed, f"{failed}\n{result.stdout[-3000:]}"
    assert report["passed"] is True and report["scenario"] == scenario
    assert (out / "report.md").read_text().startswith(f"# Simulator report: {scenario} — PASS")
    said = " ".join(result.stdout.split())  # the console wraps long lines
    assert "dashboard: http://127.0.0.1:" in said and "/ui/ (log in with the token ef_" in said


def test_simulate_refuses_an_unknown_scenario(tmp_path: Path) -> None:
    result = run_cli("simulate", "--scenario", "nope", check=False)
    assert result.returncode == 2 and "not one of rollout, bad-model" in result.stderr


def test_demo_drifts_and_heals(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_cli(
        "demo", "--devices", "16", "--report-dir", str(out), "--no-live", check=False, timeout=300
    )
    report = read_report(out)
    names = {c["name"]: c["passed"] for c in report["checks"]}  # type: ignore[attr-defined]
    assert result.returncode == 0, f"{names}\n{result.stdout[-3000:]}"
    assert names["drift detected"] and names["accuracy recovers"]
    for plot in ("accuracy.png", "psi.png", "latency.png", "versions.png"):
        assert (out / plot).read_bytes().startswith(PNG), plot
    assert "drift onset" in (out / "report.md").read_text()
