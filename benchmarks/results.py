"""Figures a benchmark measured, in a form ``benchmarks/run`` gathers into one table.

Each script keeps printing its own tables; with ``--json PATH`` it also writes what it
measured as a list of figures. A figure is compared only with a baseline or a peer measured
*in the same run* (these machines swing ±50% between runs; ratios hold)::

    results = Results("device_agent")
    ort = results.add("logreg, 1 row", "onnxruntime session.run", 20.1, "µs", p99=31.0)
    results.add("logreg, 1 row", "Agent.predict", 24.9, "µs", p99=40.2,
                baseline=ort, target="≤ 1.3×")
    results.write(args.json)  # no-op when --json was not given

``better`` says which way is good ("lower": latency, CPU, memory; "higher": throughput).
``target`` is the issue's bound on the ratio to the baseline, as text: "≤ 1.3×", "≥ 1.5×";
or, written with the figure's own unit, a bound on the value itself: "≤ 1%" (a share the
docs want, with no baseline to divide by); ``met`` reads it. ``headline`` marks the figures
the README's table carries.

Named ``results`` (a module beside the scripts), so each script imports it as
``from results import Results`` with ``benchmarks/`` first on ``sys.path``, as it is when a
script is run.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Better = Literal["lower", "higher"]
_TARGET = re.compile(r"^\s*(?P<op>≤|>=|≥|<=)\s*(?P<bound>[0-9.]+)\s*(?P<unit>\S*)\s*$")


@dataclass
class Figure:
    benchmark: str  # the script: "device_agent"
    group: str  # what is being compared: "logreg, 1 row, HTTP v2 infer"
    name: str  # this figure within the group: "edgefleet agent", "FastAPI async"
    value: float
    unit: str  # "µs", "ms", "s", "MiB", "/s", "%", "count"
    p99: float | None = None
    better: Better = "lower"
    baseline: str | None = None  # the name of the figure in the same group it is set against
    baseline_value: float | None = None
    target: str | None = None  # bound on value / baseline_value: "≤ 1.3×", "≥ 1.5×"
    headline: bool = False
    note: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline_value in (None, 0):
            return None
        assert self.baseline_value is not None
        return self.value / self.baseline_value

    @property
    def met(self) -> bool | None:
        """Whether the ratio (or, for a target in the figure's unit, the value) keeps to
        ``target`` (None: no target, or a ratio target and no ratio)."""
        if self.target is None:
            return None
        match = _TARGET.match(self.target)
        if match is None or match["unit"] not in ("", "×", self.unit):
            raise ValueError(
                f"target {self.target!r}: write it as '≤ 1.3×' or '≥ 1.5×' (a ratio), "
                f"or in the figure's unit ({self.unit!r})"
            )
        measured = self.ratio if match["unit"] in ("", "×") else self.value
        if measured is None:
            return None
        bound = float(match["bound"])
        return measured <= bound if match["op"] in ("≤", "<=") else measured >= bound

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


@dataclass
class Results:
    """The figures of one benchmark run, in the order measured."""

    benchmark: str
    figures: list[Figure] = field(default_factory=list)

    def add(
        self,
        group: str,
        name: str,
        value: float,
        unit: str,
        *,
        p99: float | None = None,
        better: Better = "lower",
        baseline: Figure | None = None,
        target: str | None = None,
        headline: bool = False,
        note: str | None = None,
    ) -> Figure:
        figure = Figure(
            self.benchmark,
            group,
            name,
            float(value),
            unit,
            p99=None if p99 is None else float(p99),
            better=better,
            baseline=None if baseline is None else baseline.name,
            baseline_value=None if baseline is None else baseline.value,
            target=target,
            headline=headline,
            note=note,
        )
        figure.met  # noqa: B018  (a malformed target fails here, where it is written)
        self.figures.append(figure)
        return figure

    def write(self, path: Path | None) -> None:
        """The figures as JSON at ``path`` (nothing when None: ``--json`` not given)."""
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        figures = [f.to_json() for f in self.figures]
        path.write_text(json.dumps({"benchmark": self.benchmark, "figures": figures}, indent=1))


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """``--json PATH``: where ``Results.write`` puts the figures (for ``benchmarks/run``)."""
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the figures measured as JSON here (benchmarks/run gathers them)",
    )
