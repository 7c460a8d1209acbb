"""``benchmarks/run``: figures' ratios and targets, the markdown it renders from
``latest.json``, and that it runs every benchmark script there is (none is run here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # as when a script runs: its directory first

import suite  # noqa: E402
from results import Figure, Results  # noqa: E402


def figure(value: float, baseline: float | None, target: str | None, unit: str = "µs") -> Figure:
    return Figure("b", "g", "n", value, unit, baseline_value=baseline, target=target)


def test_the_ratio_is_the_figure_over_its_baseline() -> None:
    assert figure(6.0, 4.0, None).ratio == 1.5
    assert figure(6.0, None, None).ratio is None
    assert figure(6.0, 0.0, None).ratio is None  # nothing to divide by


@pytest.mark.parametrize(
    ("value", "baseline", "target", "met"),
    [
        (1.2, 1.0, "≤ 1.3×", True),
        (1.4, 1.0, "≤ 1.3×", False),
        (1.3, 1.0, "≤1.3×", True),  # the bound itself keeps to it
        (2.0, 1.0, "≥ 1.5×", True),
        (1.0, 1.0, "≥ 1.5×", False),
        (1.4, 1.0, "<= 1.3", False),  # ASCII, no ×: still a ratio
        (3.0, 2.0, ">= 1.5", True),
        (1.2, None, "≤ 1.3×", None),  # a ratio target without a baseline: not judged
        (1.2, 1.0, None, None),
    ],
)
def test_met_reads_a_ratio_target(
    value: float, baseline: float | None, target: str | None, met: bool | None
) -> None:
    assert figure(value, baseline, target).met is met


def test_a_target_in_the_figures_unit_bounds_the_value_itself() -> None:
    assert figure(0.5, None, "≤ 1%", unit="%").met is True
    assert figure(2.0, None, "≤ 1%", unit="%").met is False
    assert figure(99.5, 50.0, "≥ 99%", unit="%").met is True  # the baseline does not matter


@pytest.mark.parametrize("target", ["about 2x", "≤ 1%", "1.3×", "≤ fast"])
def test_a_malformed_target_fails_where_it_is_written(target: str) -> None:
    with pytest.raises(ValueError, match="target"):
        Results("b").add("g", "n", 1.0, "ms", target=target)  # "%" is not the unit: ms


def test_figures_survive_the_json_round_trip(tmp_path: Path) -> None:
    results = Results("b")
    base = results.add("g", "old", 10.0, "ms", p99=20.0)
    results.add("g", "new", 5.0, "ms", baseline=base, target="≤ 0.8×", headline=True)
    results.write(tmp_path / "b.json")
    written = json.loads((tmp_path / "b.json").read_text())["figures"]
    assert [suite.figure_from_json(f) for f in written] == results.figures
    assert written[1]["ratio"] == 0.5
    assert written[1]["met"] is True


# --- the markdown ---------------------------------------------------------------------------


def report() -> dict[str, Any]:
    results = Results("inference")
    sklearn = results.add("logreg, 1 row", "scikit-learn", 124.0, "µs", p99=215.0)
    results.add(
        "logreg, 1 row", "onnxruntime", 6.5, "µs", p99=12.9, baseline=sklearn, headline=True
    )
    upload = results.add("parse, 100 MiB", "upload", 99.7, "MiB")
    results.add("parse, 100 MiB", "upload | parse", 207.4, "MiB", baseline=upload, target="≤ 3×")
    results.add("parse, 100 MiB", "slow", 400.0, "MiB", baseline=upload, target="≤ 3×")
    results.add("ingest", "batched", 4952.0, "/s", better="higher", note="SQLite")
    return {
        "environment": {
            "date": "2026-12-08T10:00:00+00:00",
            "mode": "quick",
            "command": "benchmarks/run --quick",
            "git_commit": "0123456789abcdef",
            "git_uncommitted_changes": False,
            "os": "Linux 6.1",
            "cpu_count": 2,
            "cpu_model": "AMD EPYC",
            "memory_gib": 7.8,
            "load_average": [0.5, 0.4, 0.3],
            "python": "3.11.7",
            "packages": {"numpy": "2.4.6", "onnxruntime": None},
            "tools": {"mosquitto": "2.0.11", "postgresql": None},
        },
        "benchmarks": [
            {
                "name": "inference",
                "status": "ok",
                "command": [".venv/bin/python", "benchmarks/inference.py", "--repeats", "300"],
                "seconds": 42.0,
                "figures": [f.to_json() for f in results.figures],
            },
            {
                "name": "fleet",
                "status": "failed",
                "reason": "exit status 1",
                "command": [".venv/bin/python", "benchmarks/fleet.py", "--quick"],
                "seconds": 75.0,
                "tail": "Traceback (most recent call last):\nRuntimeError: boom",
                "figures": None,
            },
            {
                "name": "chaos",
                "status": "missing",
                "reason": "no chaos.py",
                "command": [".venv/bin/python", "benchmarks/chaos.py", "--quick"],
                "seconds": 0.0,
            },
        ],
    }


def section(markdown: str, title: str) -> str:
    text = markdown[markdown.index(f"\n## {title}\n") :]
    end = text.find("\n## ", 1)
    return text if end < 0 else text[:end]


def test_the_markdown_puts_the_environment_and_the_headline_first() -> None:
    markdown = suite.render(report())
    assert markdown.startswith("# Benchmarks: quick run, 2026-12-08T10:00:00+00:00\n")
    assert "1 of 3 benchmarks ran, in 1 min 57 s; commit 0123456789ab." in markdown
    titles = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert titles[:3] == ["## Environment", "## Headline", "## Benchmarks"]
    environment = section(markdown, "Environment")
    assert "| CPU | 2 × AMD EPYC |" in environment
    assert "| numpy | 2.4.6 |" in environment
    assert "| postgresql | — |" in environment  # not reachable: said so, not left out
    headline = section(markdown, "Headline")
    assert headline.count("\n| inference |") == 1
    assert (
        "| inference | logreg, 1 row | onnxruntime | 6.50 µs | 12.9 µs | scikit-learn (124 µs) "
        "| 0.05× |  |"
    ) in headline


def test_each_benchmark_gets_a_table_of_figures_against_their_baselines() -> None:
    markdown = suite.render(report())
    table = section(markdown, "inference").strip().splitlines()
    assert table[:3] == ["## inference", "", suite.FIGURE_HEADER]
    assert table[3] == suite.FIGURE_RULE
    rows = table[4:]
    assert len(rows) == 6
    assert rows[0] == "| logreg, 1 row | scikit-learn | 124 µs | 215 µs |  |  |  |"
    # a "|" in a name is escaped; targets carry their verdict
    assert rows[3] == (
        "| parse, 100 MiB | upload \\| parse | 207 MiB |  | upload (99.7 MiB) | 2.08× | ≤ 3× ✓ |"
    )
    assert rows[4].endswith("| 4.01× | ≤ 3× ✗ |")
    assert rows[5] == "| ingest | batched (SQLite) | 4,952/s |  |  |  |  |"


def test_failed_and_missing_benchmarks_are_listed_with_why() -> None:
    markdown = suite.render(report())
    listing = section(markdown, "Benchmarks")
    assert "| fleet | failed: exit status 1 | 1 min 15 s | 0 |" in listing
    assert "| chaos | missing: no chaos.py | 0 s | 0 |" in listing
    assert "`.venv/bin/python benchmarks/inference.py --repeats 300`" in listing
    fleet = section(markdown, "fleet")
    assert "**failed**: exit status 1" in fleet
    assert "```text\nTraceback (most recent call last):\nRuntimeError: boom\n```" in fleet
    assert "**missing**: no chaos.py" in section(markdown, "chaos")


# --- the scripts ----------------------------------------------------------------------------


def benchmark_scripts() -> list[str]:
    return sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem not in suite.HELPERS)


def test_the_suite_runs_every_benchmark_script() -> None:
    names = [b.name for b in suite.BENCHMARKS]
    assert len(names) == len(set(names))
    assert set(benchmark_scripts()) <= set(names)
    assert (BENCHMARKS / "run").stat().st_mode & 0o111, "benchmarks/run is not executable"


@pytest.mark.parametrize("name", benchmark_scripts())
def test_every_benchmark_script_writes_its_figures_as_json(name: str) -> None:
    source = (BENCHMARKS / f"{name}.py").read_text()
    assert "add_json_argument(parser)" in source, f"{name}.py takes no --json"
    assert ".write(args.json)" in source, f"{name}.py does not write its figures"


SCRIPTS = {
    "fine": "import json, sys\n"
    "path = sys.argv[sys.argv.index('--json') + 1]\n"
    "figure = {'benchmark': 'fine', 'group': 'g', 'name': 'n', 'value': 1.5, 'unit': 'ms'}\n"
    "open(path, 'w').write(json.dumps({'benchmark': 'fine', 'figures': [figure]}))\n"
    "print('measured')\n",
    "broken": "print('step 1')\nraise SystemExit('it broke')\n",
    "silent": "print('nothing to say')\n",
    "stuck": "import time\nprint('waiting', flush=True)\ntime.sleep(60)\n",
}


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny scripts in place of the benchmarks, and the results beside them."""
    for name, source in SCRIPTS.items():
        (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.setattr(suite, "HERE", tmp_path)
    monkeypatch.setattr(suite, "REPO", tmp_path)
    monkeypatch.setattr(suite, "RESULTS", tmp_path / "results")
    return tmp_path


def run(name: str, tmp: Path, limit: float = 60) -> suite.Outcome:
    return suite.run_benchmark(suite.Benchmark(name, ("--x",)), ("--x",), tmp, limit)


def test_a_benchmark_that_writes_its_figures_is_ok(scripts: Path) -> None:
    outcome = run("fine", scripts)
    assert (outcome.status, outcome.exit_code, outcome.reason) == ("ok", 0, None)
    assert outcome.command == [".venv/bin/python", "benchmarks/fine.py", "--x"]
    assert outcome.figures is not None
    assert [f["value"] for f in outcome.figures] == [1.5]
    assert outcome.log == "results/logs/fine.log"
    assert (scripts / "results" / "logs" / "fine.log").read_text().endswith("measured\n")


@pytest.mark.parametrize(
    ("name", "reason", "said"),
    [
        ("broken", "exit status 1", "it broke"),
        ("silent", "wrote no JSON", "nothing to say"),
        ("stuck", "stopped after 1 s (its time limit)", "waiting"),
    ],
)
def test_a_benchmark_that_fails_is_recorded_with_the_tail_of_its_output(
    scripts: Path, name: str, reason: str, said: str
) -> None:
    outcome = run(name, scripts, limit=1)
    assert (outcome.status, outcome.reason) == ("failed", reason)
    assert outcome.tail is not None
    assert said in outcome.tail
    assert outcome.seconds < 30  # a stuck one is interrupted, not waited for


def test_a_benchmark_not_written_yet_is_missing(scripts: Path) -> None:
    outcome = run("chaos", scripts)
    assert (outcome.status, outcome.reason) == ("missing", "no chaos.py")


def test_the_suite_parses_its_command_line() -> None:
    args, chosen, extra = suite.parse(["--full", "--skip", "chaos,device_agent"])
    assert args.mode == "full"
    assert [b.name for b in chosen] == [
        b.name for b in suite.BENCHMARKS if b.name not in ("chaos", "device_agent")
    ]
    assert extra == []
    args, chosen, extra = suite.parse(["--only", "scale", "--", "--sizes", ""])
    assert args.mode == "quick"
    assert [b.name for b in chosen] == ["scale"]
    assert extra == ["--sizes", ""]
    for wrong in (
        ["--only", "nope"],
        ["--only", "scale,fleet", "--", "--x"],
        ["--quick", "--full"],
    ):
        with pytest.raises(SystemExit):
            suite.parse(wrong)


def test_a_partial_run_replaces_its_own_figures_and_keeps_the_others(tmp_path: Path) -> None:
    latest = tmp_path / "latest.json"
    before = [{"name": "inference", "seconds": 1.0}, {"name": "chaos", "seconds": 2.0}]
    latest.write_text(json.dumps({"environment": {"mode": "full"}, "benchmarks": before}))
    again = [{"name": "chaos", "seconds": 3.0}, {"name": "fleet", "seconds": 4.0}]
    runs = suite.merged(again, latest, "full")
    assert [(r["name"], r["seconds"]) for r in runs] == [
        ("inference", 1.0),
        ("fleet", 4.0),
        ("chaos", 3.0),
    ]
    other_mode = suite.merged(again, latest, "quick")  # the last run's were full: not kept
    assert [r["name"] for r in other_mode] == ["fleet", "chaos"]
