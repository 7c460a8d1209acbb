"""One model name on a device: the version serving requests, its telemetry, its probation.

Requests read ``slot.current`` once and run on that object, so a swap (a plain reference
assignment) never fails or splits a request: in-flight requests finish on the old version.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.errors import AgentError
from agent.inference import LoadedModel, Outputs
from agent.metrics import AgentMetrics
from agent.telemetry import WindowAccumulator
from shared.manifest import ModelManifest
from shared.messages import ErrorInfo, ModelRef, ModelStatus, Phase, Verdict


class ModelUnavailableError(AgentError, LookupError):
    """No verified model of that name is serving on this device."""


@dataclass
class Probation:
    """Watches a newly activated version. It ends at the first of: a failure (NaN output,
    error rate over the limit, too many requests over the latency budget: the agent reverts
    by itself), ``min_requests`` requests served without failing (``judged``), or
    ``min_seconds`` passed (committed, ``judged`` only if enough requests came). A
    ``min_requests`` of 0 judges by time alone; a ``min_seconds`` of 0 commits at once."""

    sha256: str
    seq: int  # the desired state it was installed under (a failure is refused under it)
    min_requests: int
    min_seconds: float
    latency_budget_us: float
    max_error_rate: float
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)  # HTTP threads observe
    requests: int = 0
    errors: int = 0
    nan_outputs: int = 0
    slow: int = 0
    # Called (from any thread) once a request decides the probation early; the watch sets
    # an asyncio event with it instead of polling the counters.
    on_decision: Callable[[], None] | None = None
    _decided: bool = False

    def observe(self, *, ok: bool, nan: bool = False, latency_us: float = 0.0) -> None:
        with self.lock:
            self.requests += 1
            self.errors += 0 if ok else 1
            self.nan_outputs += int(nan)
            self.slow += int(latency_us > self.latency_budget_us)
            decided = not self._decided and (self.failure() is not None or self.judged())
            self._decided = self._decided or decided
        if decided and self.on_decision is not None:
            self.on_decision()

    def failure(self) -> str | None:
        """Why probation failed, or None while it holds."""
        if self.nan_outputs:
            return f"{self.nan_outputs} of {self.requests} requests returned NaN"
        if self.requests and self.errors / self.requests > self.max_error_rate:
            return f"{self.errors} of {self.requests} requests failed"
        if self.requests >= 5 and self.slow / self.requests > 0.1:
            return (
                f"{self.slow} of {self.requests} requests took longer than "
                f"{self.latency_budget_us / 1000:g} ms"
            )
        return None

    def judged(self) -> bool:
        """Enough requests were served to judge the version (and none failed it)."""
        return self.min_requests > 0 and self.requests >= self.min_requests

    def remaining(self) -> float:
        """Seconds until the probation ends on time (0: now)."""
        return max(0.0, self.min_seconds - (time.monotonic() - self.started))

    def passed(self) -> bool:
        return self.judged() or self.remaining() == 0.0

    def verdict(self) -> Verdict:
        return Verdict.JUDGED if self.judged() else Verdict.UNJUDGED


@dataclass(slots=True)
class Prediction:
    request_id: str
    model: LoadedModel
    outputs: Outputs


_REQUEST_PREFIX = os.urandom(8).hex()
_REQUEST_NUMBERS = itertools.count(1)


def request_id() -> str:
    """A request's id: 32 hex digits like a uuid4's, a random prefix drawn when the process
    starts and a counter (unique without drawing 16 random bytes per request)."""
    return f"{_REQUEST_PREFIX}{next(_REQUEST_NUMBERS):016x}"


class ModelSlot:
    def __init__(self, name: str, metrics: AgentMetrics | None = None) -> None:
        self.name = name
        self.metrics = metrics
        self.current: LoadedModel | None = None
        self.previous: ModelRef | None = None
        self.target: ModelRef | None = None
        self.phase = Phase.IDLE
        self.rollout_id: str | None = None
        self.stage: str | None = None
        self.last_error: ErrorInfo | None = None
        self.probation: Probation | None = None
        self.verdict: Verdict | None = None  # how the active version was committed
        self.probation_requests: int | None = None
        self._accumulators: dict[str, WindowAccumulator] = {}
        self._lock = threading.Lock()

    def activate(self, model: LoadedModel, probation: Probation | None) -> None:
        with self._lock:
            self._accumulators.setdefault(model.manifest.sha256, WindowAccumulator(model.manifest))
            self.probation = probation
            self.current = model  # the swap: one reference assignment

    def _accumulator(self, manifest: ModelManifest) -> WindowAccumulator:
        accumulator = self._accumulators.get(manifest.sha256)
        if accumulator is None:  # a request on a version swapped out since the last window
            with self._lock:
                accumulator = self._accumulators.setdefault(
                    manifest.sha256, WindowAccumulator(manifest)
                )
        return accumulator

    def predict(self, X: npt.NDArray[np.float32], model: LoadedModel | None = None) -> Prediction:
        """Run ``model`` (default: the serving version) on validated rows."""
        model = model or self.current
        if model is None:
            raise ModelUnavailableError(f"no model {self.name!r} is serving on this device")
        accumulator = self._accumulator(model.manifest)
        probation = self.probation
        watched = probation is not None and probation.sha256 == model.manifest.sha256
        start = time.perf_counter_ns()
        try:
            outputs = model.run(X)
        except Exception:
            accumulator.record_error(X.shape[0])
            if self.metrics is not None:
                self.metrics.error(self.name, model.manifest.version)
            if watched and probation is not None:
                probation.observe(ok=False)
            raise
        latency_us = (time.perf_counter_ns() - start) / 1000
        accumulator.record(X, outputs, latency_us)
        if self.metrics is not None:
            self.metrics.observe(self.name, model.manifest.version, latency_us)
        if watched and probation is not None:
            probation.observe(
                ok=True, nan=bool(np.isnan(outputs.values).any()), latency_us=latency_us
            )
        return Prediction(request_id(), model, outputs)

    def close_windows(self) -> list[WindowAccumulator]:
        """Accumulators to close this window; ones of versions no longer serving are dropped
        after their last window."""
        with self._lock:
            accumulators = list(self._accumulators.values())
            serving = self.current.manifest.sha256 if self.current else None
            self._accumulators = {k: v for k, v in self._accumulators.items() if k == serving}
        return accumulators

    def status(self) -> ModelStatus:
        active = self.current.manifest if self.current else None
        probation = self.probation
        return ModelStatus(
            name=self.name,
            active=ModelRef(name=active.name, version=active.version, sha256=active.sha256)
            if active
            else None,
            previous=self.previous,
            target=self.target,
            phase=self.phase,
            rollout_id=self.rollout_id,
            stage=self.stage,
            last_error=self.last_error,
            verdict=None if probation else self.verdict,
            probation_requests=probation.requests if probation else self.probation_requests,
        )
