"""Every benchmark in one command: ``benchmarks/run [--quick | --full]`` (this module is its
code; ``run`` only picks the interpreter).

Each script in ``BENCHMARKS`` runs as a subprocess from the repository's root, one at a time
(they measure CPU: two at once would measure each other), with the mode's arguments and
``--json`` into a temp dir; what it prints goes to ``benchmarks/results/logs/<name>.log``.
Their figures and the environment are merged into ``benchmarks/results/latest.json``, and
``benchmarks/results/latest.md`` renders them: the headline figures first, then one table
per benchmark, each figure beside the baseline or peer it was measured against in the same
run (these machines swing ±50% between runs; ratios hold).

A benchmark that exits non-zero, writes no JSON or runs past its time limit is recorded as
failed, with the tail of its output; a script that does not exist (yet) as missing. The
runner goes on, and exits 1 at the end if any benchmark failed or was missing.

Modes: ``--quick`` (the default) runs each script at its smallest sensible sizes, the whole
suite in about a quarter of an hour on 2 cores; ``--full`` at the sizes
``benchmarks/README.md`` documents, with nothing past ~1 hour a script: fleets of 100,000
devices (``scale.py``'s swarm and ingest, ``api_reads.py``) are left out, stopping at
10,000 (``telemetry.py``'s 100,000 windows in one process stay). Ask for one with its own
arguments after ``--``, e.g. ``benchmarks/run --only scale -- --sizes ""
--swarm-sizes 100000 --swarm-plans all-at-once``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from results import Figure

Mode = Literal["quick", "full"]
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
# Modules beside the scripts that are not benchmarks (peers, http_load: device_agent's).
HELPERS = frozenset({"results", "suite", "peers", "http_load"})
# A benchmark past this is stopped and recorded as failed (seconds).
TIME_LIMIT: dict[Mode, float] = {"quick": 20 * 60, "full": 90 * 60}
TAIL_LINES = 40
PACKAGES = (
    "numpy",
    "onnxruntime",
    "paho-mqtt",
    "aiomqtt",
    "scikit-learn",
    "skl2onnx",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "psycopg",
    "pydantic",
)


@dataclass(frozen=True)
class Benchmark:
    """``benchmarks/<name>.py`` and its arguments in each mode (``--json`` is added)."""

    name: str
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()

    @property
    def script(self) -> Path:
        return HERE / f"{self.name}.py"

    def args(self, mode: Mode) -> tuple[str, ...]:
        return self.quick if mode == "quick" else self.full


BASE_PROFILE = str(Path(tempfile.gettempdir()) / "edgefleet-base-profile")
# In the order the issue names them, then the rest. Quick: the smallest sizes that still
# compare something; full: the README's sizes (its defaults unless said).
BENCHMARKS = (
    Benchmark("inference", ("--repeats", "300")),
    # The agent from the base install, as on a device: base_profile.py's venv (built by the
    # first of the two to run, with pip; reused after).
    Benchmark(
        "device_agent",
        ("--quick", "--base-profile", BASE_PROFILE),
        ("--base-profile", BASE_PROFILE),
    ),
    Benchmark("base_profile", ("--venv", BASE_PROFILE)),
    Benchmark("fleet", ("--quick",)),  # full: 100 and 1,000 agents
    Benchmark("drift", ("--quick",)),
    Benchmark(
        "scale",
        ("--sizes", "1000", "--swarm-sizes", "1000"),
        ("--sizes", "1000,10000", "--swarm-sizes", "10000", "--ingest-sizes", "10000"),
    ),
    Benchmark("gates", ("--stages", "100", "--runs", "8000")),
    Benchmark("telemetry", ("--sizes", "1000", "--ingest", "5000"), ("--sizes", "10000,100000")),
    Benchmark("api_reads", ("--sizes", "1000"), ("--sizes", "10000")),
    Benchmark("registration", ("--devices", "200")),
    Benchmark("dashboard", ("--sizes", "10,200", "--loads", "3")),
    Benchmark("preemption", ("--runs", "3")),
    Benchmark("csv_memory", ("--mib", "20")),
    Benchmark("gil_reader", ("--messages", "5000")),
    Benchmark("swarm_clients", ("--sizes", "1000"), ("--sizes", "1000,5000,15000")),
    Benchmark("broker_cluster", ("--devices", "100")),
    Benchmark("sim_scale", ("--devices", "50")),
    Benchmark("chaos", ("--quick",)),
)


# --- running ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One benchmark's run, as ``latest.json`` holds it."""

    name: str
    status: Literal["ok", "failed", "missing"]
    command: list[str]
    seconds: float = 0.0
    exit_code: int | None = None
    reason: str | None = None
    log: str | None = None
    load_average_before: list[float] | None = None
    tail: str | None = None
    figures: list[dict[str, Any]] | None = None
    started: str | None = None  # when, and on which commit: a partial run keeps the others'
    git_commit: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def command_for(benchmark: Benchmark, args: Iterable[str]) -> list[str]:
    """The command as shown: repository-relative, without ``--json``."""
    return [".venv/bin/python", f"benchmarks/{benchmark.name}.py", *args]


def run_benchmark(
    benchmark: Benchmark, args: tuple[str, ...], json_dir: Path, limit: float
) -> Outcome:
    shown = command_for(benchmark, args)
    if not benchmark.script.exists():
        return Outcome(benchmark.name, "missing", shown, reason=f"no {benchmark.script.name}")
    out = json_dir / f"{benchmark.name}.json"
    log = RESULTS / "logs" / f"{benchmark.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(benchmark.script), *args, "--json", str(out)]
    outcome = Outcome(benchmark.name, "failed", shown, log=str(log.relative_to(REPO)))
    outcome.started = datetime.now(UTC).isoformat(timespec="seconds")
    outcome.git_commit = git("rev-parse", "HEAD")
    outcome.load_average_before = [round(x, 2) for x in os.getloadavg()]
    began = time.perf_counter()
    with log.open("w") as handle:
        handle.write(f"$ {shlex.join(shown)}\n")
        handle.flush()
        with running(command, handle) as process:
            try:
                outcome.exit_code = process.wait(limit)
            except subprocess.TimeoutExpired:
                outcome.reason = f"stopped after {limit:.0f} s (its time limit)"
    outcome.seconds = round(time.perf_counter() - began, 1)
    if outcome.reason is None and outcome.exit_code != 0:
        outcome.reason = f"exit status {outcome.exit_code}"
    if out.exists():
        try:
            outcome.figures = json.loads(out.read_text())["figures"]
            for figure in outcome.figures or []:
                figure_from_json(figure).met  # noqa: B018  (a malformed figure fails here)
        except (ValueError, KeyError, TypeError) as exc:
            outcome.figures = None
            outcome.reason = outcome.reason or f"unreadable JSON: {exc}"
    elif outcome.reason is None:
        outcome.reason = "wrote no JSON"
    if outcome.reason is None:
        outcome.status = "ok"
    else:
        outcome.tail = tail(log, TAIL_LINES)
    return outcome


@contextlib.contextmanager
def running(command: list[str], log: Any) -> Iterator[subprocess.Popen[bytes]]:
    """The benchmark in a process group of its own; stopped on the way out if still running
    (a time limit, Ctrl-C): SIGINT first, so its ``finally`` blocks stop what it started."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        # A job started in the background by a shell (`benchmarks/run &`), or by a pytest
        # worker, inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
        # handler: the SIGINT that lets a benchmark stop what it started would do nothing.
        preexec_fn=_default_sigint,  # noqa: PLW1509  (the runner starts no threads)
    )
    try:
        yield process
    finally:
        for sig, grace in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tail(path: Path, lines: int) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- environment ------------------------------------------------------------------------------


def environment(mode: Mode, command: str) -> dict[str, Any]:
    """Where and with what the figures were measured."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "command": command,
        "git_commit": git("rev-parse", "HEAD"),
        "git_uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
        "os": f"{platform.system()} {platform.release()}",
        "cpu_count": os.cpu_count(),
        "cpu_model": proc_field("/proc/cpuinfo", "model name"),
        "memory_gib": memory_gib(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "tools": {
            "mosquitto": tool_version(["mosquitto", "-h"], r"mosquitto version (\S+)"),
            "postgresql": postgresql_version(),
            "nats-server": tool_version(["nats-server", "--version"], r"v?(\d[\w.]*)"),
            "rabbitmq": tool_version(
                ["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"], r"(\S+)"
            ),
            "chromium": tool_version(["chromium", "--version"], r"Chromium (\S+)"),
        },
    }


def git(*args: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode == 0:
            return done.stdout.strip()
    return None


def proc_field(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def memory_gib() -> float | None:
    total = proc_field("/proc/meminfo", "MemTotal")  # "16318480 kB"
    return round(int(total.split()[0]) / 1024**2, 1) if total else None


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tool_version(command: list[str], pattern: str) -> str | None:
    """The version a tool reports, searched for where mosquitto hides too (/usr/sbin)."""
    from simulator.broker import find_tool

    found = find_tool(command[0])
    if found is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            [found, *command[1:]], capture_output=True, text=True, timeout=30, check=False
        )
        match = re.search(pattern, done.stdout + done.stderr)
        return match.group(1) if match else None
    return None


def postgresql_version() -> str | None:
    """The server the benchmarks use (``EDGEFLEET_TEST_PG``), or None if unreachable."""
    try:
        import psycopg
        from fleet import PG_ADMIN_URL

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            version = conn.info.server_version
    except Exception:
        return None
    return f"{version // 10000}.{version % 10000}"


# --- rendering --------------------------------------------------------------------------------


def figure_from_json(data: dict[str, Any]) -> Figure:
    """A figure as ``Results.write`` wrote it (``ratio`` and ``met`` are computed again)."""
    return Figure(**{f.name: data[f.name] for f in fields(Figure) if f.name in data})


def number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    size = abs(value)
    if size >= 100 or value == int(value):
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if size >= 1 else f"{value:.3g}"


def quantity(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "count":
        return number(value)
    if unit in ("%", "×") or unit.startswith("/"):
        return f"{number(value)}{unit}"
    return f"{number(value)} {unit}"


def ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return ""
    if ratio >= 10:
        return f"{ratio:,.1f}×"
    return f"{ratio:.2f}×" if ratio >= 0.01 else f"{ratio:.2g}×"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def figure_row(figure: Figure, *, with_benchmark: bool = False) -> str:
    against = ""
    if figure.baseline is not None:
        against = f"{figure.baseline} ({quantity(figure.baseline_value, figure.unit)})"
    target = figure.target or ""
    if figure.met is not None:
        target += " ✓" if figure.met else " ✗"
    name = figure.name + (f" ({figure.note})" if figure.note else "")
    cells = [
        figure.group,
        name,
        quantity(figure.value, figure.unit),
        quantity(figure.p99, figure.unit),
        against,
        ratio_text(figure.ratio),
        target,
    ]
    if with_benchmark:
        cells.insert(0, figure.benchmark)
    return "| " + " | ".join(cell(c) for c in cells) + " |"


FIGURE_HEADER = "| group | figure | median | p99 | against | ratio | target |"
FIGURE_RULE = "|---|---|---:|---:|---|---:|---|"


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def render(report: dict[str, Any]) -> str:
    """``latest.md`` from what ``latest.json`` holds."""
    env = report["environment"]
    runs = report["benchmarks"]
    ok = sum(r["status"] == "ok" for r in runs)
    commit = env.get("git_commit") or "?"
    lines = [
        f"# Benchmarks: {env['mode']} run, {env['date']}",
        "",
        f"`{env['command']}`: {ok} of {len(runs)} benchmarks ran, in "
        f"{duration(sum(r['seconds'] for r in runs))}; commit {commit[:12]}"
        + (" with uncommitted changes" if env.get("git_uncommitted_changes") else "")
        + ". Medians; each figure against a baseline or peer measured in the same run "
        "(ratio = figure / that one).",
        "",
        "## Environment",
        "",
        "| | |",
        "|---|---|",
    ]
    cpu = f"{env.get('cpu_count')} × {env.get('cpu_model') or '?'}"
    facts = [
        ("CPU", cpu),
        ("memory", f"{env.get('memory_gib')} GiB"),
        ("OS", env.get("os")),
        ("load average at start", ", ".join(str(x) for x in env.get("load_average") or [])),
        ("Python", env.get("python")),
        *((name, v) for name, v in (env.get("packages") or {}).items()),
        *((name, v) for name, v in (env.get("tools") or {}).items()),
    ]
    lines += [f"| {cell(name)} | {cell(str(value or '—'))} |" for name, value in facts]
    figures = [figure_from_json(f) for r in runs for f in r.get("figures") or []]
    headline = [f for f in figures if f.headline]
    if headline:
        lines += ["", "## Headline", "", "| benchmark " + FIGURE_HEADER, "|---" + FIGURE_RULE]
        lines += [figure_row(f, with_benchmark=True) for f in headline]
    lines += ["", "## Benchmarks", "", "| benchmark | status | time | figures | command | run |"]
    lines.append("|---|---|---:|---:|---|---|")
    for r in runs:
        status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
        count = len(r.get("figures") or [])
        shown = f"`{shlex.join(r['command'])}`"
        run = f"{r.get('started') or ''} {(r.get('git_commit') or '')[:12]}".strip()
        lines.append(
            f"| {r['name']} | {cell(status)} | {duration(r['seconds'])} | {count} | {cell(shown)} "
            f"| {run} |"
        )
    for r in runs:
        lines += ["", f"## {r['name']}", ""]
        if r["status"] != "ok":
            lines += [f"**{r['status']}**: {r.get('reason')}", ""]
            if r.get("tail"):
                lines += ["```text", r["tail"], "```", ""]
        if r.get("figures"):
            lines += [FIGURE_HEADER, FIGURE_RULE]
            lines += [figure_row(figure_from_json(f)) for f in r["figures"]]
        elif r["status"] == "ok":
            lines.append("No figures.")
    return "\n".join(lines) + "\n"


# --- command line -----------------------------------------------------------------------------


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[Benchmark], list[str]]:
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(
        prog="benchmarks/run",
        description="Run every benchmark; write benchmarks/results/latest.json and latest.md.",
        epilog="After --: arguments for the one benchmark --only names, instead of the mode's.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", dest="mode", action="store_const", const="quick", help="the default"
    )
    mode.add_argument("--full", dest="mode", action="store_const", const="full")
    parser.set_defaults(mode="quick")
    parser.add_argument("--only", default="", help="names, comma-separated")
    parser.add_argument("--skip", default="", help="names, comma-separated")
    parser.add_argument("--list", action="store_true", help="show the benchmarks and stop")
    args = parser.parse_args(argv)
    known = [b.name for b in BENCHMARKS]
    only, skip = (set(filter(None, v.split(","))) for v in (args.only, args.skip))
    if unknown := (only | skip) - set(known):
        parser.error(f"no benchmark {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    chosen = [b for b in BENCHMARKS if (not only or b.name in only) and b.name not in skip]
    if extra and len(chosen) != 1:
        parser.error("arguments after -- need --only with exactly one benchmark")
    return args, chosen, extra


def main(argv: list[str]) -> int:
    args, chosen, extra = parse(argv)
    mode: Mode = args.mode
    if args.list:
        for b in chosen:
            print(f"{b.name:<16} {shlex.join(command_for(b, extra or b.args(mode)))}")
        return 0
    command = shlex.join(["benchmarks/run", *argv])
    env = environment(mode, command)
    outcomes: list[Outcome] = []
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        for i, benchmark in enumerate(chosen, 1):
            bench_args = tuple(extra) if extra else benchmark.args(mode)
            shown = shlex.join(command_for(benchmark, bench_args))
            progress(f"[{i}/{len(chosen)}] {shown}")
            try:
                outcome = run_benchmark(benchmark, bench_args, Path(tmp), TIME_LIMIT[mode])
            except KeyboardInterrupt:
                command_line = command_for(benchmark, bench_args)
                outcome = Outcome(benchmark.name, "failed", command_line, reason="interrupted")
                interrupted = True
            outcomes.append(outcome)
            figures = len(outcome.figures or [])
            said = outcome.status + (f" ({outcome.reason})" if outcome.reason else "")
            seconds = f"{outcome.seconds:.0f} s"
            progress(f"[{i}/{len(chosen)}] {benchmark.name}: {said}, {seconds}, {figures} figures")
            if interrupted:
                break
    runs = merged([o.to_json() for o in outcomes], RESULTS / "latest.json", mode)
    report = {"environment": env, "benchmarks": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    markdown = render(report)
    (RESULTS / "latest.md").write_text(markdown)
    print(markdown)
    progress(f"wrote {RESULTS.relative_to(REPO)}/latest.json and latest.md")
    if interrupted:
        return 130
    return 0 if all(o.status == "ok" for o in outcomes) else 1


def merged(runs: list[dict[str, Any]], latest: Path, mode: Mode) -> list[dict[str, Any]]:
    """``runs`` with the other benchmarks of the last run of the same mode (a partial run,
    ``--only``, replaces its own and keeps theirs), in the suite's order."""
    by_name = {}
    with contextlib.suppress(OSError, ValueError, KeyError):
        last = json.loads(latest.read_text())
        if last["environment"]["mode"] == mode:
            by_name = {r["name"]: r for r in last["benchmarks"]}
    by_name.update({r["name"]: r for r in runs})
    order = [b.name for b in BENCHMARKS]
    return sorted(
        by_name.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else len(order)
    )


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
