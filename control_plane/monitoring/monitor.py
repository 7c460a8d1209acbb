"""The monitoring service, run by the leading control-plane process every rollout tick.

1. Judge every closed time bucket (``monitor_bucket_seconds``, judged
   ``monitor_grace_seconds`` after it ends): telemetry windows ending in it are merged per
   (model version, selector of the model's policy) and compared with the version's training
   reference (``monitoring.drift``); labels received in it give accuracy and macro F1 per version.
   Each reading is a ``DriftResult``; a drift episode starting or ending, and an accuracy
   drop, are events.
2. Retraining: a drift or accuracy event the policy triggers on (or the schedule) becomes a
   pending trigger per model; it starts a retraining job when the cooldown is over and
   enough labelled rows are there (``monitoring.policy.retrain_decision``).
3. Release: a challenger that won (and, per policy, was approved) is rolled out with the
   policy's plan once no other rollout of the model holds its devices.

The read position is stored, so another process taking over the lead continues where this
one stopped; every bucket is committed with its readings, states and events together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from control_plane.api.schemas import RetrainRequest
from control_plane.audit.record import event_payload, record_event
from control_plane.audit.types import (
    AccuracyDropData,
    DriftClearedData,
    DriftData,
    EventType,
    FeatureReading,
    Onset,
)
from control_plane.errors import ControlPlaneError
from control_plane.fleet.selectors import parse_selector
from control_plane.monitoring import release
from control_plane.monitoring.drift import (
    DriftState,
    DriftVerdict,
    MergedWindow,
    WindowDrift,
    advance,
    evaluate_window,
    shape_fits,
)
from control_plane.monitoring.policy import (
    Go,
    ModelPolicy,
    RetrainPolicy,
    Trigger,
    accuracy_low,
    next_accuracy_streak,
    policy_of,
    retrain_decision,
    schedule_due,
)
from control_plane.monitoring.windows import merge_stored, shape_of
from control_plane.observability.logs import about
from control_plane.rollouts.engine import create_rollout
from control_plane.store.db import fast_rows
from control_plane.store.tables import (
    DefaultVersion,
    Device,
    DriftResult,
    Event,
    Feedback,
    Job,
    JobKind,
    Model,
    ModelVersion,
    MonitorState,
    RetrainState,
    SampleRowRecord,
    TelemetryModelRecord,
    TelemetryRecord,
    as_utc,
)
from shared.manifest import ModelManifest
from shared.stats import histogram_quantile

log = logging.getLogger(__name__)
CURSOR = ("", 0, "")  # the MonitorState row that holds the read position
MAX_BUCKETS_PER_TICK = 50


def labelled_since(query: Any, model: str, since: datetime) -> Any:
    """``query`` narrowed to sampled rows of ``model`` received since ``since`` that have
    a label (feedback with the same request id): the rows retraining learns from."""
    return query.join(Feedback, col(Feedback.request_id) == SampleRowRecord.request_id).where(
        SampleRowRecord.model_name == model, SampleRowRecord.received_at >= since
    )


def floor_time(moment: datetime, seconds: float) -> datetime:
    stamp = moment.timestamp()
    return datetime.fromtimestamp(stamp - stamp % seconds, UTC)


class Monitor:
    def __init__(
        self,
        engine: Engine,
        *,
        bucket_seconds: float,
        grace_seconds: float,
        submit: Callable[[int], None],
        owner: str | None = None,
    ) -> None:
        self.engine = engine
        self.bucket = timedelta(seconds=bucket_seconds)
        self.grace = timedelta(seconds=grace_seconds)
        self.submit = submit
        self.owner = owner
        self._manifests: dict[tuple[str, int], ModelManifest] = {}
        self.dropped_windows = 0  # windows whose shape did not fit their version's reference
        self.failures = 0  # steps that raised (each logged with the model it concerns)

    # --- the tick ------------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> None:
        """Judge closed buckets, start retraining, release challengers. Each step, and
        within them each model (and each version and selector of a bucket), is isolated:
        one that fails is logged with what it concerns, counted, and the rest goes on."""
        now = now or datetime.now(UTC)
        with self._isolated("judging buckets"):
            for _ in range(MAX_BUCKETS_PER_TICK):
                if not self._judge_next_bucket(now):
                    break
        with self._isolated("retraining"):
            self._retrain(now)
        with self._isolated("releases"):
            self._release()

    @contextlib.contextmanager
    def _isolated(self, what: str, session: Session | None = None) -> Iterator[None]:
        """Run a step; on failure roll its work back (to a savepoint, in ``session``), log
        it with ``what`` and count it, instead of letting it stop the others."""
        savepoint = session.begin_nested() if session is not None else None
        try:
            yield
        except Exception:
            if savepoint is not None:
                savepoint.rollback()
            self.failures += 1
            log.exception("monitor: %s failed; the rest carries on", what)
        else:
            if savepoint is not None:
                savepoint.commit()

    # --- 1. buckets ----------------------------------------------------------------------------

    def _judge_next_bucket(self, now: datetime) -> bool:
        with Session(self.engine) as session:
            cursor = session.get(MonitorState, CURSOR, with_for_update=True) or MonitorState(
                model_name=CURSOR[0], version=CURSOR[1], selector=CURSOR[2]
            )
            start = as_utc(cursor.evaluated_until)
            if start is None:
                first = session.exec(select(func.min(TelemetryRecord.window_end))).one()
                start = floor_time(as_utc(first) or now, self.bucket.total_seconds())
            end = start + self.bucket
            if end + self.grace > now:
                return False
            # Write first: that opens the transaction, so the savepoint each (model, version,
            # selector) is judged in nests inside it. On SQLite (pysqlite) a savepoint taken
            # before any write would be a transaction of its own, committed on release, and
            # a bucket half judged would be judged again (a duplicate reading).
            cursor.updated_at = now
            session.add(cursor)
            session.flush()
            self._judge(session, start, end)
            cursor.evaluated_until = end
            session.add(cursor)
            session.commit()
            return True

    def manifest(self, session: Session, name: str, version: int) -> ModelManifest | None:
        key = (name, version)
        if key not in self._manifests:
            row = session.exec(
                select(ModelVersion.manifest).where(
                    ModelVersion.model_name == name, ModelVersion.version == version
                )
            ).first()
            if row is None:
                return None
            self._manifests[key] = ModelManifest.model_validate_json(row)
        return self._manifests[key]

    def _judge(self, session: Session, start: datetime, end: datetime) -> None:
        # (device, name, version, shape, counts, moments) as read: a bucket of 100,000
        # windows makes no object per window beyond its row.
        traffic: dict[tuple[str, int], list[Stored]] = defaultdict(list)
        t = TelemetryModelRecord.__table__.c  # type: ignore[attr-defined]
        for row in fast_rows(
            session,
            sa_select(t.device_id, t.model_name, t.version, t.shape, t.counts, t.moments).where(
                t.window_end >= start, t.window_end < end
            ),
        ):
            traffic[(row[1], row[2])].append(row)
        labels = self._labels(session, start, end)
        keys = set(traffic) | set(labels)
        if not keys:
            return
        policies = {}
        for m in session.exec(
            select(Model).where(col(Model.name).in_({name for name, _ in keys}))
        ).all():
            with self._isolated(f"the policy of {m.name}"):
                policies[m.name] = policy_of(m.policy)
        devices: dict[str, dict[str, str]] = {}
        if any(s for p in policies.values() for s in p.selectors):  # only selectors need labels
            # Ids and labels only: a device's state and desired state are kilobytes each.
            devices = {
                d: dict(labels) for d, labels in session.exec(select(Device.id, Device.labels))
            }
        for name, version in sorted(keys):
            manifest = self.manifest(session, name, version)
            policy = policies.get(name)
            if manifest is None or policy is None:
                continue
            for selector in policy.selectors:
                with self._isolated(f"{name} v{version} on {selector!r} at {start}", session):
                    self._judge_one(
                        session,
                        manifest,
                        policy,
                        selector,
                        start,
                        end,
                        traffic.get((name, version), []),
                        labels.get((name, version), []),
                        devices,
                    )

    def _judge_one(
        self,
        session: Session,
        manifest: ModelManifest,
        policy: ModelPolicy,
        selector: str,
        start: datetime,
        end: datetime,
        windows: list[Stored],
        labelled: list[tuple[str | None, float, float]],
        devices: dict[str, dict[str, str]],
    ) -> None:
        name, version = manifest.name, manifest.version
        parsed = parse_selector(selector)

        def member(device_id: str | None) -> bool:
            if not selector:
                return True
            return device_id is not None and parsed.matches(devices.get(device_id, {}))

        mine = [w for w in windows if member(w[0])] if selector else windows
        fitting = _fitting(manifest, mine)
        self.dropped_windows += len(mine) - len(fitting)
        merged = None
        if fitting:
            counts, moments = [w[4] for w in fitting], [w[5] for w in fitting]
            merged = merge_stored(fitting[0][3], counts, moments)
        pairs = [(label, pred) for d, label, pred in labelled if member(d)]
        if merged is None and not pairs:
            return
        key = (name, version, selector)
        row = session.get(MonitorState, key, with_for_update=True) or MonitorState(
            model_name=name, version=version, selector=selector
        )
        drift = verdict = None
        if merged is not None:
            drift, verdict = self._judge_drift(
                session, manifest, policy, selector, row, merged, (start, end)
            )
        accuracy = f1 = None
        if pairs and manifest.output.task == "classification":
            accuracy, f1 = self._judge_accuracy(
                session, manifest, policy, selector, row, pairs, start
            )
        row.updated_at = end
        session.add(row)
        session.add(
            _reading(
                key,
                (start, end),
                devices=len({w[0] for w in mine}),
                windows=len(fitting),
                merged=merged,
                drift=drift,
                verdict=verdict,
                labels=len(pairs),
                accuracy=accuracy,
                f1=f1,
            )
        )

    def _judge_drift(
        self,
        session: Session,
        manifest: ModelManifest,
        policy: ModelPolicy,
        selector: str,
        row: MonitorState,
        merged: MergedWindow,
        bucket: tuple[datetime, datetime],
    ) -> tuple[WindowDrift, DriftVerdict]:
        """The bucket's drift reading and the verdict it leads to (with the streaks kept on
        ``row``); a drift that starts, or ends, is an event."""
        start, end = bucket
        name, version = manifest.name, manifest.version
        before = DriftState.model_validate(row.state) if row.state else None
        drift = evaluate_window(manifest.reference, merged, policy.drift)
        state, verdict = advance(before, drift, policy.drift)
        row.state = state.model_dump(mode="json")
        if verdict.newly:
            onset = start - (policy.drift.consecutive - 1) * self.bucket
            self._drift_event(session, manifest, selector, drift, verdict, onset, end)
        elif before is not None and _in_drift(before, policy) and not _in_drift(state, policy):
            record_event(
                session,
                EventType.DRIFT_CLEARED,
                f"{name} v{version} on {selector or 'all devices'}: no drift any more",
                data=DriftClearedData(selector=selector, bucket_start=start),
                model_name=name,
                version=version,
            )
        return drift, verdict

    def _judge_accuracy(
        self,
        session: Session,
        manifest: ModelManifest,
        policy: ModelPolicy,
        selector: str,
        row: MonitorState,
        pairs: list[tuple[float, float]],
        start: datetime,
    ) -> tuple[float, float]:
        """Accuracy and macro F1 on the bucket's labels; a drop below the version's
        validation accuracy for ``consecutive`` buckets is an event."""
        y = np.array([p[0] for p in pairs], dtype=np.int64)
        predicted = np.array([p[1] for p in pairs], dtype=np.int64)
        accuracy = float(np.mean(y == predicted))
        from sklearn.metrics import f1_score

        f1 = float(f1_score(y, predicted, average="macro"))
        validation = manifest.lineage.metrics.get("accuracy")
        low = accuracy_low(accuracy, len(pairs), validation, policy.accuracy)
        streak = next_accuracy_streak(row.accuracy_streak, low)
        k = policy.accuracy.consecutive
        if row.accuracy_streak < k <= streak:
            onset = start - (k - 1) * self.bucket
            self._accuracy_event(
                session, manifest, selector, accuracy, validation, len(pairs), onset
            )
        row.accuracy_streak = streak
        return accuracy, f1

    def _labels(
        self, session: Session, start: datetime, end: datetime
    ) -> dict[tuple[str, int], list[tuple[str | None, float, float]]]:
        """Labels received in the bucket, with the prediction they judge (from the
        feedback itself, else from the sampled row), per (model, version)."""
        rows = session.exec(
            select(Feedback, SampleRowRecord)
            .join(
                SampleRowRecord,
                col(SampleRowRecord.request_id) == Feedback.request_id,
                isouter=True,
            )
            .where(Feedback.received_at >= start, Feedback.received_at < end)
        ).all()
        out: dict[tuple[str, int], list[tuple[str | None, float, float]]] = defaultdict(list)
        for feedback, sample in rows:
            version = feedback.model_version or (sample.model_version if sample else None)
            prediction = feedback.prediction
            if prediction is None and sample is not None:
                prediction = sample.prediction
            if version is None or prediction is None:
                continue
            device = feedback.device_id or (sample.device_id if sample else None)
            out[(feedback.model_name, version)].append((device, feedback.label, prediction))
        return out

    def _drift_event(
        self,
        session: Session,
        manifest: ModelManifest,
        selector: str,
        drift: WindowDrift,
        verdict: Any,
        onset: datetime,
        end: datetime,
    ) -> None:
        """``onset``: start of the first of the buckets in a row that made the verdict."""
        name, version = manifest.name, manifest.version
        parts = []
        for feature in drift.features:
            if feature.name in verdict.newly_drifted_features:
                parts.append(f"{feature.name} (PSI {feature.psi:.2f}, JS {feature.js:.2f})")
        if verdict.newly_prediction_drift:
            parts.append(f"predictions (JS {drift.prediction.js:.2f})")
        if verdict.newly_dataset_drift:
            parts.append(f"the dataset ({drift.drifted_share:.0%} of features)")
        event = record_event(
            session,
            EventType.DRIFT,
            f"{name} v{version} on {selector or 'all devices'}: drift in " + ", ".join(parts),
            data=DriftData(
                selector=selector,
                onset=onset,
                bucket_end=end,
                features=list(verdict.newly_drifted_features),
                prediction_drift=verdict.newly_prediction_drift,
                dataset_drift=verdict.newly_dataset_drift,
                readings={
                    f.name: FeatureReading(psi=f.psi, js=f.js, mean_shift=f.mean_shift)
                    for f in drift.features
                    if f.name in verdict.newly_drifted_features
                },
            ),
            model_name=name,
            version=version,
        )
        session.flush()
        self._trigger(session, name, "drift", event)

    def _accuracy_event(
        self,
        session: Session,
        manifest: ModelManifest,
        selector: str,
        accuracy: float,
        validation: float | None,
        labels: int,
        onset: datetime,
    ) -> None:
        event = record_event(
            session,
            EventType.ACCURACY_DROP,
            f"{manifest.name} v{manifest.version} on {selector or 'all devices'}: "
            f"accuracy {accuracy:.3f} on {labels} labels, validation {validation:.3f}",
            data=AccuracyDropData(
                selector=selector,
                onset=onset,
                accuracy=accuracy,
                validation_accuracy=validation,
                labels=labels,
            ),
            model_name=manifest.name,
            version=manifest.version,
        )
        session.flush()
        self._trigger(session, manifest.name, "accuracy", event)

    def _trigger(self, session: Session, name: str, reason: Trigger, event: Event) -> None:
        model = session.get(Model, name)
        policy = policy_of(model.policy if model else None)
        if reason not in policy.retrain.triggers:
            return
        state = session.get(RetrainState, name) or RetrainState(model_name=name)
        state.pending_event_id, state.pending_reason = event.id, reason
        state.waiting_for = None
        session.add(state)

    # --- 2. retraining -------------------------------------------------------------------------

    def _retrain(self, now: datetime) -> None:
        with Session(self.engine) as session:
            for name in session.exec(select(Model.name)).all():
                with self._isolated(f"retraining {name}"):
                    try:
                        self._retrain_one(session, name, now)
                    except Exception:
                        session.rollback()
                        raise

    def _retrain_one(self, session: Session, name: str, now: datetime) -> None:
        model = session.get(Model, name)
        if model is None:
            return
        policy = policy_of(model.policy).retrain
        state = session.get(RetrainState, model.name, with_for_update=True)
        last = as_utc(state.last_started_at) if state else None
        if (state is None or state.pending_reason is None) and schedule_due(policy, now, last):
            state = state or RetrainState(model_name=model.name)
            state.pending_reason, state.pending_event_id = "schedule", None
        if state is None or state.pending_reason is None:
            session.rollback()
            return
        since = data_since(session, state.pending_event_id, policy, now)
        labelled = session.exec(
            labelled_since(select(func.count()).select_from(SampleRowRecord), model.name, since)
        ).one()
        reason: Any = state.pending_reason
        decision = retrain_decision(
            policy, trigger=reason, now=now, last_started_at=last, labelled_rows=labelled
        )
        job_id = None
        if isinstance(decision, Go):
            job_id = start_retraining(
                session, model.name, reason, state.pending_event_id, self.owner
            )
        elif state.waiting_for != decision.reason:
            state.waiting_for = decision.reason
            session.add(state)
        session.commit()
        if job_id is not None:  # after the commit, so the worker finds the row
            self.submit(job_id)

    # --- 3. release ----------------------------------------------------------------------------

    def _release(self) -> None:
        with Session(self.engine) as session:
            waiting = session.exec(
                select(ModelVersion).where(col(ModelVersion.release).in_(release.READY))
            ).all()
            for row in waiting:
                with self._isolated(f"the release of {row.model_name} v{row.version}"):
                    try:
                        self._release_one(session, row)
                    except Exception:
                        session.rollback()
                        raise

    def _release_one(self, session: Session, row: ModelVersion) -> None:
        model = session.get(Model, row.model_name)
        policy = policy_of(model.policy if model else None).retrain
        job = session.get(Job, row.job_id) if row.job_id else None
        try:
            rollout = create_rollout(
                session,
                model=row.model_name,
                version=str(row.version),
                selector=policy.selector,
                plan=policy.plan,
                actor=f"retraining job {row.job_id}",
            )
        except ControlPlaneError as exc:  # e.g. another rollout holds the devices
            session.rollback()
            log.info(
                "release of %s v%s waits: %s",
                row.model_name,
                row.version,
                exc,
                extra=about(model=row.model_name, version=row.version),
            )
            return
        row.release, row.rollout_id = release.rolling_out(row.release), rollout.id
        session.add(row)
        record_event(
            session,
            EventType.RELEASE,
            f"{row.model_name} v{row.version} rolling out "
            f"({rollout.id}) to {policy.selector or 'all devices'}",
            model_name=row.model_name,
            version=row.version,
            rollout_id=rollout.id,
            job_id=row.job_id,
            cause_id=job.trigger_event_id if job else None,
        )
        session.commit()


def _reading(
    key: tuple[str, int, str],
    bucket: tuple[datetime, datetime],
    *,
    devices: int,
    windows: int,
    merged: MergedWindow | None,
    drift: WindowDrift | None,
    verdict: DriftVerdict | None,
    labels: int,
    accuracy: float | None,
    f1: float | None,
) -> DriftResult:
    """One bucket's reading as stored (what the drift API and the report show)."""
    name, version, selector = key
    empty = {"name": "prediction", "rows": 0, "psi": None, "js": None, "verdict": "insufficient"}
    return DriftResult(
        model_name=name,
        version=version,
        selector=selector,
        bucket_start=bucket[0],
        bucket_end=bucket[1],
        devices=devices,
        windows=windows,
        requests=merged.requests if merged else 0,
        errors=merged.errors if merged else 0,
        p95_latency_us=histogram_quantile(merged.latency_counts, 0.95) if merged else None,
        features=[dataclasses.asdict(f) for f in drift.features] if drift else [],
        prediction=dataclasses.asdict(drift.prediction) if drift else empty,
        drifted_share=drift.drifted_share if drift else 0.0,
        drifted_features=list(verdict.drifted_features) if verdict else [],
        dataset_drift=verdict.dataset_drift if verdict else False,
        labels=labels,
        accuracy=accuracy,
        f1_macro=f1,
    )


def _fitting(manifest: ModelManifest, windows: list[Stored]) -> list[Stored]:
    """The windows binned as the manifest's reference is (of one shape: where the reference
    leaves the prediction counts open, the commonest shape among those that fit)."""
    by_shape: dict[bytes, list[Stored]] = defaultdict(list)
    for window in windows:
        by_shape[window[3]].append(window)
    fits = []
    for shape, group in by_shape.items():
        _, n_predictions, bins = shape_of(shape)
        if shape_fits(bins, n_predictions, manifest.reference):
            fits.append(group)
    return max(fits, key=len, default=[])


# A stored window as the monitor reads it: (device, name, version, shape, counts, moments).
Stored = tuple[str, str, int, bytes, bytes, bytes]


def _in_drift(state: DriftState, policy: ModelPolicy) -> bool:
    k = policy.drift.consecutive
    return (
        any(s >= k for s in state.streaks)
        or state.prediction_streak >= k
        or state.dataset_streak >= k
    )


def data_since(
    session: Session, event_id: int | None, policy: RetrainPolicy, now: datetime
) -> datetime:
    """Labelled rows from when on retrain a model: the last ``recent_seconds``, and when a
    drift or accuracy drop triggered it, only rows from its onset on (the new world)."""
    since = now - timedelta(seconds=policy.recent_seconds)
    cause = session.get(Event, event_id) if event_id is not None else None
    if cause is None or cause.type not in (EventType.DRIFT, EventType.ACCURACY_DROP):
        return since  # the schedule, or an operator
    return max(since, event_payload(cause, Onset).onset)


def champion_of(session: Session, name: str, policy: ModelPolicy) -> int | None:
    """The version a challenger must beat: what the policy's selector defaults to (the last
    finished rollout), else the latest version."""
    default = session.get(DefaultVersion, (name, policy.retrain.selector))
    if default is not None:
        return default.version
    model = session.get(Model, name)
    return model.latest_version if model and model.latest_version else None


def start_retraining(
    session: Session,
    name: str,
    trigger: Trigger,
    event_id: int | None,
    owner: str | None,
    champion: int | None = None,
) -> int | None:
    """Queue a retraining job (not committed; the caller commits, then submits it)."""
    model = session.get(Model, name)
    policy = policy_of(model.policy if model else None)
    if champion is None and event_id is not None:
        cause = session.get(Event, event_id)
        champion = cause.version if cause else None
    champion = champion or champion_of(session, name, policy)
    if champion is None:
        return None
    request = RetrainRequest(
        trigger=trigger,
        trigger_event_id=event_id,
        champion_version=champion,
        since=data_since(session, event_id, policy.retrain, datetime.now(UTC)),
        policy=policy.retrain,
    )
    job = Job(
        kind=JobKind.RETRAIN,
        model_name=name,
        request=request.model_dump(mode="json"),
        trigger_event_id=event_id,
        owner=owner,
    )
    session.add(job)
    session.flush()
    state = session.get(RetrainState, name) or RetrainState(model_name=name)
    state.pending_event_id = state.pending_reason = state.waiting_for = None
    state.last_started_at, state.last_job_id = datetime.now(UTC), job.id
    session.add(state)
    record_event(
        session,
        EventType.RETRAIN_STARTED,
        f"{name}: retraining job {job.id} ({trigger}) to challenge v{champion}",
        model_name=name,
        version=champion,
        job_id=job.id,
        cause_id=event_id,
    )
    session.flush()
    return job.id
