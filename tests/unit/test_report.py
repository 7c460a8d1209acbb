"""The simulator's run report: JSON that round-trips, Markdown a person can read in a
terminal, and PNG plots written only when they have data."""

import json
import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from simulator.report import Check, Marker, Report, Sample, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("accuracy.png", "latency.png", "psi.png", "versions.png")
DRIFT_PLOTS = ("accuracy.png", "latency.png", "psi.png")
STARTED = datetime(2026, 11, 22, 20, 0, 0, tzinfo=UTC)
FEATURE_NAMES = ("temperature_c", "vibration_mm_s", "current_a")
DEVICES = 50
BUCKET_S = 6.0
DRIFT_ONSET_S = 40.0


def _stamp(seconds: float, zulu: bool) -> str:
    text = (STARTED + timedelta(seconds=seconds)).isoformat()
    return text.replace("+00:00", "Z") if zulu else text


def _feature(name: str, psi: float | None) -> dict[str, Any]:
    verdict = "insufficient" if psi is None else "drift" if psi >= 0.25 else "ok"
    return {
        "name": name,
        "rows": 3000,
        "psi": psi,
        "js": None if psi is None else psi / 2,
        "verdict": verdict,
        "mean": 60.1,
        "std": 6.0,
        "mean_shift": 0.01,
        "missing_share": 0.0,
        "out_of_range_share": 0.0,
    }


def _reading(index: int, version: int, requests: int) -> dict[str, Any]:
    """Bucket ``index`` ends at (index + 1) · BUCKET_S: PSI of current_a rises after the drift
    onset, accuracy dips and recovers once v2 takes over."""
    end = (index + 1) * BUCKET_S
    drifting = end > DRIFT_ONSET_S
    psi = {
        "temperature_c": 0.02 + 0.001 * index,
        "vibration_mm_s": None if index == 0 else 0.03,
        "current_a": 0.05 + (0.08 * (end - DRIFT_ONSET_S) / BUCKET_S if drifting else 0.0),
    }
    # v1 loses accuracy on drifted inputs; v2, retrained on them, recovers it.
    accuracy = 0.84 if version == 2 else 0.86 - (0.25 if drifting else 0.0)
    return {
        "version": version,
        "selector": "",
        "bucket_start": _stamp(end - BUCKET_S, zulu=index % 2 == 0),
        "bucket_end": _stamp(end, zulu=index % 2 == 0),
        "devices": DEVICES,
        "windows": 150,
        "requests": requests,
        "errors": 0,
        "p95_latency_us": 84.1 + index,
        "features": [_feature(name, psi[name]) for name in FEATURE_NAMES],
        "prediction": _feature("prediction", 0.01),
        "drifted_share": 0.0,
        "drifted_features": ["current_a"] if drifting else [],
        "dataset_drift": False,
        "labels": 0 if index == 2 else 250,
        "accuracy": None if index == 2 else accuracy,
        "f1_macro": 0.8,
    }


def _drift() -> list[dict[str, Any]]:
    """15 readings: v1 alone for 9 buckets, then v1 and v2 side by side, v2 taking over."""
    readings = [_reading(index, 1, 3000) for index in range(9)]
    for index in range(9, 12):
        share = (index - 8) / 4
        readings.append(_reading(index, 1, int(3000 * (1 - share))))
        readings.append(_reading(index, 2, int(3000 * share)))
    return readings


def _samples() -> list[Sample]:
    samples = []
    for step in range(20):
        t = step * 4.0
        moved = 0 if t < 56 else min(DEVICES, int((t - 52) * 3))
        online = DEVICES - (3 if step == 7 else 0)
        samples.append(
            Sample(t=t, versions={0: DEVICES - online, 1: online - moved, 2: moved}, online=online)
        )
    return samples


def _report(**changes: Any) -> Report:
    fields: dict[str, Any] = {
        "scenario": "drift",
        "seed": 7,
        "devices": DEVICES,
        "broker": "mosquitto 2.0.11 (private, port 41234)",
        "started_at": STARTED,
        "duration_s": 80.0,
        "checks": [
            Check(
                name="drift is detected within 3 buckets",
                passed=True,
                detail="flagged 2 buckets after onset (required ≤ 3)",
                figures={"buckets": 2, "feature": "current_a", "psi": 0.29, "missing": None},
            ),
            Check(
                name="all devices converge to v2",
                passed=False,
                detail="41 of 50 devices on v2 after 80 s (required 50 | all)",
            ),
        ],
        "samples": _samples(),
        "markers": [
            Marker(t=60.0, label="v2 stage 2/3", kind="stage"),
            Marker(t=DRIFT_ONSET_S, label="drift onset", kind="drift"),
            Marker(t=56.0, label="v2 stage 1/3", kind="stage"),
            Marker(t=28.0, label="broker killed", kind="fault"),
        ],
        "drift": _drift(),
        "figures": {"windows_produced": 12_000, "windows_stored": 11_874, "loss_share": 0.0105},
    }
    fields.update(changes)
    return Report(**fields)


def _load(document: dict[str, Any]) -> Report:
    """A Report back from report.json (version keys return to ints)."""
    return Report(
        scenario=document["scenario"],
        seed=document["seed"],
        devices=document["devices"],
        broker=document["broker"],
        started_at=datetime.fromisoformat(document["started_at"]),
        duration_s=document["duration_s"],
        checks=[Check(**check) for check in document["checks"]],
        samples=[
            Sample(
                t=sample["t"],
                versions={int(v): n for v, n in sample["versions"].items()},
                online=sample["online"],
            )
            for sample in document["samples"]
        ],
        markers=[Marker(**marker) for marker in document["markers"]],
        drift=document["drift"],
        figures=document["figures"],
    )


def test_the_full_report_writes_json_markdown_and_four_plots(tmp_path: Path) -> None:
    report = _report()
    directory = tmp_path / "runs" / "drift"  # created on demand

    written = write_report(report, directory)

    names = [path.name for path in written]
    assert names == ["report.json", "report.md", *PLOTS]
    assert all(path.parent == directory and path.is_file() for path in written)
    for name in PLOTS:
        data = (directory / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 5_000, name


def test_report_json_round_trips(tmp_path: Path) -> None:
    report = _report()
    write_report(report, tmp_path, plots=False)

    document = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))

    assert document["passed"] is False  # one check failed
    assert document["started_at"] == "2026-11-22T20:00:00+00:00"
    assert len(document["samples"]) == 20
    assert len(document["markers"]) == 4
    assert len(document["drift"]) == 15
    assert document["samples"][0]["versions"] == {"0": 0, "1": 50, "2": 0}  # keys: strings
    assert _load(document) == report


def test_report_markdown_shows_the_verdict_checks_timeline_and_plots(tmp_path: Path) -> None:
    report = _report()
    write_report(report, tmp_path)

    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")

    assert markdown.splitlines()[0] == "# Simulator report: drift — FAIL"
    assert "Seed 7 · 50 devices · broker mosquitto 2.0.11 (private, port 41234) · 80.0 s" in (
        markdown
    )
    for check in report.checks:
        assert check.name in markdown
    assert "| ✓ | drift is detected within 3 buckets |" in markdown
    assert "| ✗ | all devices converge to v2 | 41 of 50 devices on v2 after 80 s " in markdown
    assert "(required 50 \\| all)" in markdown  # a pipe escaped inside a table cell
    assert "| windows_produced | 12,000 |" in markdown
    assert "| loss_share | 0.0105 |" in markdown
    timeline = markdown.split("## Timeline")[1].split("## Plots")[0]
    rows = [line for line in timeline.splitlines() if line[2:3].isdigit()]
    events = [row.split("|")[3].strip() for row in rows]
    assert events == ["broker killed", "drift onset", "v2 stage 1/3", "v2 stage 2/3"]
    assert "| 40.0 | drift | drift onset |" in markdown
    for name in PLOTS:
        assert f"]({name})" in markdown
    assert "skipped" not in markdown


def test_a_report_without_drift_readings_skips_the_drift_plots(tmp_path: Path) -> None:
    # A stale plot from an earlier run in the same folder must not survive.
    (tmp_path / "accuracy.png").write_bytes(PNG_SIGNATURE)

    written = write_report(_report(drift=[]), tmp_path)

    assert [path.name for path in written] == ["report.json", "report.md", "versions.png"]
    for name in DRIFT_PLOTS:
        assert not (tmp_path / name).exists()
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "- Accuracy: skipped, no drift reading carried an accuracy." in markdown
    assert "- p95 latency: skipped" in markdown
    assert "- Feature drift (PSI): skipped" in markdown
    assert "](versions.png)" in markdown
    for name in DRIFT_PLOTS:
        assert f"]({name})" not in markdown


def test_readings_without_accuracy_skip_only_the_accuracy_plot(tmp_path: Path) -> None:
    drift = [{**reading, "accuracy": None} for reading in _drift()]

    written = write_report(_report(drift=drift), tmp_path)

    assert [path.name for path in written] == [
        "report.json",
        "report.md",
        "latency.png",
        "psi.png",
        "versions.png",
    ]


def test_without_plots_no_png_is_written_and_the_markdown_says_so(tmp_path: Path) -> None:
    written = write_report(_report(), tmp_path, plots=False)

    assert [path.name for path in written] == ["report.json", "report.md"]
    assert not list(tmp_path.glob("*.png"))
    assert "Plots were not drawn" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_a_malformed_reading_is_left_out_of_the_plots_not_the_report(tmp_path: Path) -> None:
    drift = [*_drift(), {"version": 3, "bucket_end": "not a time"}, {"selector": ""}]

    written = write_report(_report(drift=drift), tmp_path)

    assert len(written) == 6
    document = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert len(document["drift"]) == 17


def test_non_finite_figures_become_null_in_json(tmp_path: Path) -> None:
    write_report(_report(figures={"ratio": float("nan"), "when": STARTED}), tmp_path, plots=False)

    document = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))

    assert document["figures"] == {"ratio": None, "when": "2026-11-22T20:00:00+00:00"}


@pytest.mark.parametrize(
    ("checks", "passed"),
    [
        ([], False),
        ([Check(name="a", passed=True, detail="")], True),
        (
            [Check(name="a", passed=True, detail=""), Check(name="b", passed=False, detail="")],
            False,
        ),
    ],
)
def test_a_report_passes_only_with_checks_all_passing(checks: list[Check], passed: bool) -> None:
    assert _report(checks=checks).passed is passed


def test_a_report_without_checks_reads_as_fail(tmp_path: Path) -> None:
    write_report(_report(checks=[]), tmp_path, plots=False)

    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert markdown.splitlines()[0] == "# Simulator report: drift — FAIL"
    assert "No checks were recorded" in markdown


def test_importing_the_module_does_not_import_matplotlib() -> None:
    code = "import sys, simulator.report; print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.strip() == "False"


def test_a_zero_length_run_with_one_sample_still_plots(tmp_path: Path) -> None:
    report = _report(duration_s=0.0, samples=[Sample(t=0.0, versions={}, online=0)], markers=[])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns on a singular axis
        written = write_report(report, tmp_path)

    assert "versions.png" in [path.name for path in written]
