"""The agent's optional Prometheus ``/metrics`` (``api_metrics = true``): inference requests,
errors and latency per model version since the agent started, what each model serves, and
the outbox. The text exposition format is written here (a few lines), so the base install
needs no metrics library; tests parse it with prometheus-client's parser."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

# Seconds. Single-row inference of a small model takes ~0.1-2 ms; the upper buckets catch a
# busy device (the probation latency budget defaults to 250 ms).
PREFIX = "edgefleet_agent_"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class _Series:
    requests: int = 0
    errors: int = 0
    latency_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))


@dataclass(frozen=True)
class Serving:
    model: str
    version: int
    phase: str


class AgentMetrics:
    """Cumulative counters, written from the inference threads (one lock, held for a few
    additions) and read by a scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, int], _Series] = {}

    def _get(self, model: str, version: int) -> _Series:
        series = self._series.get((model, version))
        if series is None:
            series = self._series.setdefault((model, version), _Series())
        return series

    def observe(self, model: str, version: int, latency_us: float) -> None:
        seconds = latency_us / 1e6
        with self._lock:
            series = self._get(model, version)
            series.requests += 1
            series.latency_sum += seconds
            for index, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    series.buckets[index] += 1
                    break

    def error(self, model: str, version: int) -> None:
        with self._lock:
            series = self._get(model, version)
            series.requests += 1
            series.errors += 1

    def render(self, serving: Iterable[Serving], outbox_depth: int, outbox_dropped: int) -> str:
        with self._lock:
            series = [
                (key, _Series(s.requests, s.errors, s.latency_sum, list(s.buckets)))
                for key, s in sorted(self._series.items(), key=lambda item: item[0])
            ]
        lines: list[str] = []
        _family(lines, "inference_requests_total", "counter", "Inference requests.")
        lines += [
            f"{PREFIX}inference_requests_total{{{_labels(*k)}}} {s.requests}" for k, s in series
        ]
        _family(lines, "inference_errors_total", "counter", "Inference requests that failed.")
        lines += [f"{PREFIX}inference_errors_total{{{_labels(*k)}}} {s.errors}" for k, s in series]
        _family(lines, "inference_seconds", "histogram", "Time in onnxruntime per request.")
        for key, s in series:
            labels, cumulative, observed = _labels(*key), 0, s.requests - s.errors
            for bound, count in zip(BUCKETS, s.buckets, strict=True):
                cumulative += count
                lines.append(
                    f'{PREFIX}inference_seconds_bucket{{{labels},le="{bound}"}} {cumulative}'
                )
            lines.append(f'{PREFIX}inference_seconds_bucket{{{labels},le="+Inf"}} {observed}')
            lines.append(f"{PREFIX}inference_seconds_sum{{{labels}}} {s.latency_sum!r}")
            lines.append(f"{PREFIX}inference_seconds_count{{{labels}}} {observed}")
        _family(lines, "model_info", "gauge", "The version each model serves, and its phase.")
        lines += [
            f'{PREFIX}model_info{{{_labels(s.model, s.version)},phase="{s.phase}"}} 1'
            for s in serving
        ]
        _family(lines, "outbox_messages", "gauge", "Telemetry messages waiting to be sent.")
        lines.append(f"{PREFIX}outbox_messages {outbox_depth}")
        _family(lines, "outbox_dropped_total", "counter", "Messages dropped at the outbox cap.")
        lines.append(f"{PREFIX}outbox_dropped_total {outbox_dropped}")
        return "\n".join(lines) + "\n"


def _family(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} {kind}"]


def _labels(model: str, version: int) -> str:
    # Model names match ^[a-z0-9][a-z0-9_-]*$ (no quote or backslash to escape).
    return f'model="{model}",version="{version}"'
