"""The report of a simulator run: ``report.json``, ``report.md`` and PNG plots in one folder.

Pure data in, files out; no network. The scenario runner records checks, fleet samples,
timeline markers and the control plane's drift readings into a :class:`Report`;
:func:`write_report` turns it into a folder people can read without the code.

- ``report.json`` holds everything (``passed`` included) and loads back into the same values,
  with two JSON-imposed changes: the version keys of ``samples[].versions`` become strings
  (``{"1": 30}``) and non-finite floats (NaN, ±inf) in figures become ``null``.
- ``report.md`` is plain Markdown: verdict, run facts, checks, figures, timeline, plots.
- ``accuracy.png``, ``latency.png``, ``psi.png`` and ``versions.png``; a plot without data is
  not written (and a stale copy from an earlier run in the same folder is removed), and the
  Markdown says so instead of linking it.

Plots are drawn with matplotlib's Agg canvas on a bare ``Figure``: no pyplot, so no global
figure registry to leak into and no process-wide backend switch. matplotlib is imported only
when plots are drawn, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

MarkerKind = Literal["drift", "stage", "rollout", "fault", "info"]

JSON_NAME = "report.json"
MARKDOWN_NAME = "report.md"
PSI_WATCH = 0.1  # the control plane's default DriftPolicy thresholds
PSI_DRIFT = 0.25

_FIGSIZE = (10.0, 4.0)
_DPI = 100
_MARKER_COLORS: dict[str, str] = {
    "drift": "tab:red",
    "stage": "tab:blue",
    "rollout": "tab:green",
    "fault": "black",
    "info": "tab:gray",
}
_LATENCY_MS_FROM_US = 10_000.0  # above 10 ms, plot milliseconds
_MARKER_LABEL_CHARS = 32
_HEADROOM = 0.15  # room above the data for the marker labels


@dataclass(frozen=True)
class Check:
    """One pass/fail verdict of a scenario."""

    name: str  # e.g. "all devices converge to v2"
    passed: bool
    detail: str  # one line: what was measured vs what was required
    figures: dict[str, float | int | str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Marker:
    """A moment on the run's timeline, drawn as a vertical line on every plot."""

    t: float  # seconds since the run started
    label: str  # e.g. "drift onset", "v2 stage 1/3", "broker killed"
    kind: MarkerKind


@dataclass(frozen=True)
class Sample:
    """The fleet at one moment."""

    t: float  # seconds since the run started
    versions: dict[int, int]  # model version → devices serving it now (0 = serving nothing)
    online: int  # devices connected


@dataclass
class Report:
    """What a simulator run recorded.

    ``drift`` holds the readings of ``GET /api/v1/models/{name}/drift`` as returned (JSON
    objects); each is placed on the timeline at ``bucket_end − started_at``.
    """

    scenario: str
    seed: int
    devices: int
    broker: str  # e.g. "mosquitto 2.0.11 (private, port 41234)" or "amqtt (in-process)"
    started_at: datetime  # aware UTC (a naive value is taken as UTC)
    duration_s: float
    checks: list[Check]
    samples: list[Sample]
    markers: list[Marker]
    drift: list[dict[str, Any]]
    figures: dict[str, Any] = field(default_factory=dict)  # scenario-wide figures

    @property
    def passed(self) -> bool:
        """Every check passed, and there was at least one."""
        return bool(self.checks) and all(check.passed for check in self.checks)


def write_report(report: Report, directory: Path, *, plots: bool = True) -> list[Path]:
    """Write ``directory/report.json``, ``directory/report.md`` and (``plots``) the PNGs.

    Creates ``directory`` if needed and overwrites the files of an earlier report there.
    Returns the paths written: the JSON, the Markdown, then the PNGs that had data.
    """
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / JSON_NAME
    json_path.write_text(_report_json(report) + "\n", encoding="utf-8")

    readings = _parse_drift(report.drift, _as_utc(report.started_at))
    outcomes: dict[str, Path | None] = {}  # plot file name → path written, None if skipped
    if plots:
        for plot in _PLOTS:
            outcomes[plot.file_name] = _draw(plot, report, readings, directory)
    else:
        for plot in _PLOTS:
            # The folder shows this run only: a PNG left by an earlier run would mislead.
            (directory / plot.file_name).unlink(missing_ok=True)

    markdown_path = directory / MARKDOWN_NAME
    markdown_path.write_text(_markdown(report, outcomes if plots else None), encoding="utf-8")
    pngs = [path for path in outcomes.values() if path is not None]
    logger.info("report of %s written to %s (%d plots)", report.scenario, directory, len(pngs))
    return [json_path, markdown_path, *pngs]


# --- JSON -------------------------------------------------------------------------------


def _report_json(report: Report) -> str:
    document = {
        "scenario": report.scenario,
        "passed": report.passed,
        "seed": report.seed,
        "devices": report.devices,
        "broker": report.broker,
        "started_at": _as_utc(report.started_at).isoformat(),
        "duration_s": report.duration_s,
        "checks": [
            {
                "name": check.name,
                "passed": check.passed,
                "detail": check.detail,
                "figures": check.figures,
            }
            for check in report.checks
        ],
        "figures": report.figures,
        "samples": [
            {"t": sample.t, "versions": sample.versions, "online": sample.online}
            for sample in report.samples
        ],
        "markers": [
            {"t": marker.t, "label": marker.label, "kind": marker.kind} for marker in report.markers
        ],
        "drift": report.drift,
    }
    return json.dumps(_jsonable(document), indent=2, ensure_ascii=False, allow_nan=False)


def _jsonable(value: object) -> object:
    """Plain JSON values: keys as strings, datetimes as ISO 8601, NaN/inf as null."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return _as_utc(value).isoformat()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# --- drift readings -----------------------------------------------------------------------


@dataclass(frozen=True)
class _DriftPoint:
    """The part of one drift reading the plots use."""

    t: float
    version: int
    selector: str
    requests: int
    accuracy: float | None
    p95_latency_us: float | None
    psi: dict[str, float | None]  # feature name → PSI, in input order
    prediction_psi: float | None


def _parse_drift(items: Sequence[Mapping[str, Any]], started_at: datetime) -> list[_DriftPoint]:
    """Readings in time order; one without a version or a readable ``bucket_end`` is skipped
    (logged): a report is written at the end of a long run and should not be lost to it."""
    points: list[_DriftPoint] = []
    for index, item in enumerate(items):
        try:
            end = _as_utc(datetime.fromisoformat(str(item["bucket_end"])))
            version = int(item["version"])
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("drift reading %d left out of the plots: %r", index, exc)
            continue
        features = item.get("features")
        psi: dict[str, float | None] = {}
        if isinstance(features, list):
            for feature in features:
                if isinstance(feature, Mapping) and "name" in feature:
                    psi[str(feature["name"])] = _number(feature.get("psi"))
        prediction = item.get("prediction")
        points.append(
            _DriftPoint(
                t=(end - started_at).total_seconds(),
                version=version,
                selector=str(item.get("selector") or ""),
                requests=int(_number(item.get("requests")) or 0),
                accuracy=_number(item.get("accuracy")),
                p95_latency_us=_number(item.get("p95_latency_us")),
                psi=psi,
                prediction_psi=(
                    _number(prediction.get("psi")) if isinstance(prediction, Mapping) else None
                ),
            )
        )
    return sorted(points, key=lambda point: (point.t, point.version))


def _number(value: object) -> float | None:
    """A finite number, else None (JSON null, a missing key, a stray string)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _fleet_wide(points: list[_DriftPoint]) -> list[_DriftPoint]:
    """The readings over the whole fleet (empty selector) when there are any: mixing them
    with per-selector readings would zigzag one line between populations."""
    whole = [point for point in points if point.selector == ""]
    return whole or points


def _series_label(version: int, selector: str) -> str:
    return f"v{version}" if not selector else f"v{version} · {selector}"


# --- plots --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plot:
    file_name: str
    title: str
    missing: str  # why the plot is skipped when `draw` finds no data
    # Draws onto the axes; returns False (drawing nothing) when there is no data.
    draw: Callable[[Axes, Report, list[_DriftPoint]], bool]


def _draw_accuracy(ax: Axes, report: Report, points: list[_DriftPoint]) -> bool:
    series: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for point in _fleet_wide(points):
        if point.accuracy is not None:
            series.setdefault((point.version, point.selector), []).append((point.t, point.accuracy))
    if not series:
        return False
    for (version, selector), values in sorted(series.items()):
        ts, ys = zip(*values, strict=True)
        ax.plot(
            ts,
            ys,
            marker="o",
            markersize=3,
            color=_version_color(version),
            label=_series_label(version, selector),
        )
    ax.set_ylabel("accuracy on labelled rows")
    ax.margins(y=_HEADROOM)
    return True


def _draw_latency(ax: Axes, report: Report, points: list[_DriftPoint]) -> bool:
    series: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for point in _fleet_wide(points):
        if point.p95_latency_us is not None:
            series.setdefault((point.version, point.selector), []).append(
                (point.t, point.p95_latency_us)
            )
    if not series:
        return False
    largest = max(y for values in series.values() for _, y in values)
    scale, unit = (1000.0, "ms") if largest >= _LATENCY_MS_FROM_US else (1.0, "µs")
    for (version, selector), values in sorted(series.items()):
        ax.plot(
            [t for t, _ in values],
            [y / scale for _, y in values],
            marker="o",
            markersize=3,
            color=_version_color(version),
            label=_series_label(version, selector),
        )
    ax.set_ylabel(f"p95 latency ({unit})")
    ax.set_ylim(0, largest / scale * (1 + _HEADROOM) or 1)
    return True


def _draw_psi(ax: Axes, report: Report, points: list[_DriftPoint]) -> bool:
    # Per bucket, the reading of the version that served most requests: the fleet's inputs.
    busiest: dict[float, _DriftPoint] = {}
    for point in _fleet_wide(points):
        held = busiest.get(point.t)
        if held is None or (point.requests, point.version) > (held.requests, held.version):
            busiest[point.t] = point
    series: dict[str, list[tuple[float, float]]] = {}
    prediction: list[tuple[float, float]] = []
    for t, point in sorted(busiest.items()):
        for name, value in point.psi.items():
            series.setdefault(name, [])
            if value is not None:
                series[name].append((t, value))
        if point.prediction_psi is not None:
            prediction.append((t, point.prediction_psi))
    lines = {name: values for name, values in series.items() if values}
    if not lines:
        return False
    for index, (name, values) in enumerate(lines.items()):
        ax.plot(
            [t for t, _ in values],
            [y for _, y in values],
            marker="o",
            markersize=2.5,
            color=f"C{index % 10}",
            label=name,
        )
    if prediction:
        ax.plot(
            [t for t, _ in prediction],
            [y for _, y in prediction],
            linestyle=":",
            color="dimgray",
            label="prediction",
        )
    ax.axhline(PSI_WATCH, linestyle="--", linewidth=1, color="tab:orange", label="watch (0.1)")
    ax.axhline(PSI_DRIFT, linestyle="--", linewidth=1, color="tab:red", label="drift (0.25)")
    ax.set_ylabel("PSI (busiest version)")
    highest = max(PSI_DRIFT, *(y for values in lines.values() for _, y in values))
    ax.set_ylim(0, highest * (1 + _HEADROOM))
    return True


def _draw_versions(ax: Axes, report: Report, points: list[_DriftPoint]) -> bool:
    samples = sorted(report.samples, key=lambda sample: sample.t)
    if not samples:
        return False
    ts = [sample.t for sample in samples]
    versions = sorted({version for sample in samples for version in sample.versions})
    baseline = [0.0] * len(samples)
    for version in versions:
        top = [
            low + sample.versions.get(version, 0)
            for low, sample in zip(baseline, samples, strict=True)
        ]
        ax.fill_between(
            ts,
            baseline,
            top,
            step="post",
            alpha=0.75,
            linewidth=0,
            color=_version_color(version),
            label="no model" if version == 0 else f"v{version}",
        )
        baseline = top
    ax.step(
        ts,
        [sample.online for sample in samples],
        where="post",
        color="black",
        linewidth=1.5,
        label="online",
    )
    ax.set_ylabel("devices")
    highest = max(report.devices, *baseline, *(sample.online for sample in samples))
    ax.set_ylim(0, max(highest, 1) * (1 + _HEADROOM))
    return True


_PLOTS = (
    _Plot("accuracy.png", "Accuracy", "no drift reading carried an accuracy", _draw_accuracy),
    _Plot("latency.png", "p95 latency", "no drift reading carried a p95 latency", _draw_latency),
    _Plot("psi.png", "Feature drift (PSI)", "no drift reading carried a feature PSI", _draw_psi),
    _Plot("versions.png", "Devices per model version", "no fleet samples", _draw_versions),
)


def _draw(plot: _Plot, report: Report, points: list[_DriftPoint], directory: Path) -> Path | None:
    """Draw and save one plot; None (and no file) when it has no data."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = directory / plot.file_name
    figure = Figure(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    if not plot.draw(ax, report, points):
        path.unlink(missing_ok=True)  # a stale copy from an earlier run would mislead
        return None
    _draw_markers(ax, report.markers)
    # From the start of the run to its end, stretched only by data or markers outside it.
    seen = ax.dataLim
    left, right = min(0.0, seen.x0), max(report.duration_s, seen.x1)
    # The padding keeps a marker at the end visible (and a zero-length run drawable).
    ax.set_xlim(left, right + max(0.015 * (right - left), 1.0))
    ax.set_xlabel("seconds since start")
    ax.set_title(f"{plot.title} — {report.scenario}")
    ax.grid(visible=True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    figure.savefig(path, format="png")
    return path


def _draw_markers(ax: Axes, markers: Iterable[Marker]) -> None:
    kinds_drawn: set[str] = set()
    for marker in sorted(markers, key=lambda m: m.t):
        color = _MARKER_COLORS.get(marker.kind, "tab:gray")
        # The first line of a kind carries the legend entry; "_" hides the rest from it.
        label = marker.kind if marker.kind not in kinds_drawn else "_"
        kinds_drawn.add(marker.kind)
        ax.axvline(marker.t, color=color, linestyle="-.", linewidth=1, alpha=0.7, label=label)
        ax.text(
            marker.t,
            0.98,
            _shorten(marker.label),
            transform=ax.get_xaxis_transform(),
            rotation=90,
            fontsize=7,
            color=color,
            ha="right",
            va="top",
        )


def _version_color(version: int) -> str:
    return "lightgray" if version == 0 else f"C{(version - 1) % 10}"


def _shorten(text: str) -> str:
    return text if len(text) <= _MARKER_LABEL_CHARS else text[: _MARKER_LABEL_CHARS - 1] + "…"


# --- Markdown -----------------------------------------------------------------------------


def _markdown(report: Report, plots: Mapping[str, Path | None] | None) -> str:
    """``plots``: plot file name → path written (None: skipped); None when not drawn."""
    verdict = "PASS" if report.passed else "FAIL"
    started = _as_utc(report.started_at).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"# Simulator report: {_inline(report.scenario)} — {verdict}",
        "",
        f"Seed {report.seed} · {report.devices} devices · broker {_inline(report.broker)} · "
        f"{report.duration_s:.1f} s · started {started}",
        "",
        "## Checks",
        "",
    ]
    if report.checks:
        lines += ["| | Check | Detail |", "|---|---|---|"]
        lines += [
            f"| {'✓' if check.passed else '✗'} | {_cell(check.name)} | {_cell(check.detail)} |"
            for check in report.checks
        ]
        passed = sum(check.passed for check in report.checks)
        lines += ["", f"{passed} of {len(report.checks)} checks passed."]
    else:
        lines.append("No checks were recorded, so the run does not pass.")

    lines += ["", "## Figures", ""]
    if report.figures:
        lines += ["| Figure | Value |", "|---|---|"]
        lines += [
            f"| {_cell(str(name))} | {_cell(_format_value(value))} |"
            for name, value in report.figures.items()
        ]
    else:
        lines.append("No scenario figures were recorded.")

    lines += ["", "## Timeline", ""]
    if report.markers:
        lines += ["| t (s) | Kind | Event |", "|---:|---|---|"]
        lines += [
            f"| {marker.t:.1f} | {marker.kind} | {_cell(marker.label)} |"
            for marker in sorted(report.markers, key=lambda m: m.t)
        ]
    else:
        lines.append("No markers were recorded.")

    lines += ["", "## Plots", ""]
    if plots is None:
        lines.append("Plots were not drawn for this report.")
    else:
        for plot in _PLOTS:
            written = plots.get(plot.file_name)
            if written is None:
                lines += [f"- {plot.title}: skipped, {plot.missing}.", ""]
            else:
                lines += [f"![{plot.title}]({written.name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _format_value(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"
    if isinstance(value, datetime):
        return _as_utc(value).isoformat()
    return str(value)


def _inline(text: str) -> str:
    """One line of text."""
    return " ".join(text.split())


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return _inline(text).replace("|", "\\|")


def _as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted to it."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
