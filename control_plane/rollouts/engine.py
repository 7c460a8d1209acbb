"""The rollout engine: the I/O around the pure state machine in ``rollouts.machine``.

Each tick, for each active rollout: observe its devices (reported state) and telemetry,
evaluate the current stage's gates, step the state machine, and carry out its actions —
signing desired states, recording events — in the same transaction that stores the new
state. Desired states are published after the commit (publishing again is harmless: they
are retained and carry their own sequence), so a restart resumes exactly where the database
says and never advances a stage twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, and_, case
from sqlmodel import Session, col, func, select

from control_plane.audit.record import record_event
from control_plane.audit.types import EventType
from control_plane.auth.keys import KeyStore
from control_plane.config import ArtifactMirror
from control_plane.errors import ConflictError, InvalidInputError, NotFoundError
from control_plane.fleet.deployments import (
    deploy_many,
    deploy_version,
    desired_deployment,
    desired_version,
    load_devices,
    told_otherwise,
)
from control_plane.fleet.devices import matching_devices, selected
from control_plane.fleet.selectors import parse_selector
from control_plane.observability.logs import about
from control_plane.registry.versions import resolve_version
from control_plane.rollouts.gates import Installs, evaluate
from control_plane.rollouts.machine import (
    TERMINAL,
    Action,
    Command,
    MakeDefault,
    Operator,
    Record,
    RestoreDefault,
    RevertDevices,
    RolloutState,
    RolloutStatus,
    StartStage,
    Tick,
    initial_state,
    step,
)
from control_plane.rollouts.plans import PlanSpec, Stage, cohort_order, resolve
from control_plane.rollouts.traffic import StageTraffic
from control_plane.store.db import update_stored
from control_plane.store.tables import (
    DefaultVersion,
    Device,
    DeviceModel,
    ModelVersion,
    Rollout,
    RolloutDevice,
    as_utc,
    utcnow,
)
from shared.manifest import ModelManifest
from shared.messages import (
    DeploymentModel,
    DesiredState,
    DeviceState,
    Phase,
)
from shared.stats import rebin

log = logging.getLogger(__name__)
ACTIVE = (RolloutStatus.RUNNING, RolloutStatus.PAUSED)
PUBLISH_WINDOW = 200  # desired states awaiting the broker's acknowledgement at once
Publish = Callable[[DesiredState], Awaitable[bool]]


def reported_version(device: Device, model: str) -> int | None:
    """The version of ``model`` the device reports serving."""
    if not device.state:
        return None
    for status in DeviceState.model_validate_json(device.state).models:
        if status.name == model and status.active is not None:
            return status.active.version
    return None


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    devices: list[tuple[str, int | None]]  # new devices of the stage, with their current version


def plan_rollout(
    session: Session, *, model: str, version: str, selector: str, plan: PlanSpec, rollout_id: str
) -> tuple[int, list[str], list[PlannedStage]]:
    """Check a rollout request and compute its stages (the dry run and creation share it)."""
    row = resolve_version(session, model, version)
    parsed = parse_selector(selector, loc=("body", "selector"))
    devices = matching_devices(session, parsed)
    if not devices:
        raise InvalidInputError(
            f"selector {selector!r} matches no device",
            loc=("body", "selector"),
            code="empty_selection",
        )
    ids = [d.id for d in devices]
    busy = session.exec(
        select(RolloutDevice.device_id)
        .join(Rollout, col(Rollout.id) == RolloutDevice.rollout_id)
        .where(
            Rollout.model_name == model,
            col(Rollout.status).in_(ACTIVE),
            # the selector again, not the ids: 100,000 ids are past PostgreSQL's 65,535
            # parameters a statement
            col(RolloutDevice.device_id).in_(select(Device.id).where(*selected(session, parsed))),
        )
    ).all()
    if busy:
        raise ConflictError(
            f"{len(busy)} of these devices are in an active rollout of "
            f"{model!r} (e.g. {sorted(busy)[:5]})",
            loc=("body", "selector"),
            code="overlapping_rollout",
        )
    ordered = cohort_order(rollout_id, ids)
    by_id = {d.id: d for d in devices}
    stages, planned, start = resolve(plan, len(ordered)), [], 0
    for stage in stages:
        planned.append(
            PlannedStage(
                stage,
                [(d, reported_version(by_id[d], model)) for d in ordered[start : stage.target]],
            )
        )
        start = stage.target
    return row.version, ordered, planned


def new_rollout_id() -> str:
    return uuid.uuid4().hex[:12]


def create_rollout(
    session: Session,
    *,
    model: str,
    version: str,
    selector: str,
    plan: PlanSpec,
    actor: str,
    rollout_id: str | None = None,
) -> Rollout:
    rollout_id = rollout_id or new_rollout_id()
    if session.get(Rollout, rollout_id) is not None:
        raise ConflictError(f"rollout {rollout_id!r} exists", loc=("body", "id"))
    number, ordered, _ = plan_rollout(
        session, model=model, version=version, selector=selector, plan=plan, rollout_id=rollout_id
    )
    state = initial_state()
    rollout = Rollout(
        id=rollout_id,
        model_name=model,
        version=number,
        selector=parse_selector(selector).text,
        plan=plan.model_dump(mode="json"),
        status=state.status,
        stage=state.stage,
        created_by=actor,
    )
    session.add(rollout)
    session.flush()
    session.add_all(
        RolloutDevice(rollout_id=rollout_id, device_id=d, rank=i) for i, d in enumerate(ordered)
    )
    record_event(
        session,
        EventType.CREATED,
        f"{model} v{number} to {len(ordered)} devices "
        f"({rollout.selector or 'all devices'}) by {actor}",
        rollout_id=rollout_id,
    )
    session.commit()
    return rollout


def get_rollout(session: Session, rollout_id: str) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(f"no rollout {rollout_id!r}", loc=("path", "rollout_id"))
    return rollout


def stages_of(session: Session, rollout: Rollout) -> list[Stage]:
    count = session.exec(select(func.count()).where(RolloutDevice.rollout_id == rollout.id)).one()
    return resolve(PlanSpec.model_validate(rollout.plan), count)


class RolloutEngine:
    def __init__(
        self,
        engine: Engine,
        keys: KeyStore,
        ttl: timedelta,
        publish: Publish | None,
        mirrors: Sequence[ArtifactMirror] = (),
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.ttl = ttl
        self.publish = publish
        self.mirrors = mirrors  # artifact mirrors per device group (settings)
        self.failures = 0  # rollout ticks that raised (each logged with the rollout id)
        self.busy_seconds = 0.0  # the last tick's, publishing aside (the leader paces on it)
        self._manifests: dict[tuple[str, int], ModelManifest] = {}
        self.traffic = StageTraffic()  # running sums of each running stage's windows

    # --- driving ------------------------------------------------------------------------

    async def tick(self) -> None:
        began = time.monotonic()
        desired = await asyncio.to_thread(self._tick_all)
        self.busy_seconds = time.monotonic() - began
        await self._publish(desired)

    async def command(self, rollout_id: str, command: Command, actor: str) -> Rollout:
        def run() -> tuple[Rollout, list[DesiredState]]:
            with Session(self.engine) as session:
                rollout = get_rollout(session, rollout_id)
                out = self._step(session, rollout, Operator(command, datetime.now(UTC), actor))
                session.commit()
                session.refresh(rollout)
                return rollout, out

        rollout, desired = await asyncio.to_thread(run)
        await self._publish(desired)
        return rollout

    async def _publish(self, desired: list[DesiredState]) -> None:
        """Hand the signed states to the broker, ``PUBLISH_WINDOW`` in flight at a time (their
        acknowledgements awaited together, not one round trip each)."""
        if self.publish is None:
            return
        for start in range(0, len(desired), PUBLISH_WINDOW):
            window = desired[start : start + PUBLISH_WINDOW]
            await asyncio.gather(*(self.publish(document) for document in window))

    def _tick_all(self) -> list[DesiredState]:
        """Step every active rollout, each in its own transaction: one that fails (bad data,
        a bug) is logged with its id, counted and retried next tick, and holds up no other
        rollout, nor the late joiners."""
        out: list[DesiredState] = []
        with Session(self.engine) as session:
            ids = session.exec(select(Rollout.id).where(col(Rollout.status).in_(ACTIVE))).all()
            self.traffic.forget(set(ids))
            for rollout_id in ids:
                try:
                    rollout = session.get(Rollout, rollout_id, with_for_update=True)
                    if rollout is None or rollout.status not in ACTIVE:
                        session.rollback()
                        continue
                    stepped = self._step(session, rollout, self._observe(session, rollout))
                    session.commit()
                    out.extend(stepped)
                except Exception:
                    session.rollback()
                    self.failures += 1
                    log.exception(
                        "rollout %s: tick failed; the others carry on",
                        rollout_id,
                        extra=about(rollout_id=rollout_id),
                    )
            try:
                joiners = self._late_joiners(session)
                session.commit()
                out.extend(joiners)
            except Exception:
                session.rollback()
                self.failures += 1
                log.exception("late joiners: tick failed")
        return out

    # --- one rollout --------------------------------------------------------------------

    def _observe(self, session: Session, rollout: Rollout) -> Tick:
        now = datetime.now(UTC)
        stages = stages_of(session, rollout)
        if rollout.stage < 0 or rollout.status != RolloutStatus.RUNNING:
            return Tick(now)
        started = as_utc(rollout.stage_started_at)
        assert started is not None
        assigned = self.traffic.members(session, rollout, started)
        installed, failed = _install_counts(session, rollout)
        stage = stages[rollout.stage]
        lookback = timedelta(seconds=stage.gates.pair_lookback_seconds)
        grid = self._prediction_grid(session, rollout.model_name, rollout.version)
        rebin = None
        if grid is not None:

            def rebin(version: int, counts: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
                return self._on_grid(session, rollout, version, counts, grid)

        pairs, baseline = self.traffic.read(session, rollout, assigned, started, lookback, rebin)
        gates = evaluate(
            stage.gates,
            installs=Installs(len(assigned), installed, failed),
            elapsed_seconds=(now - started).total_seconds(),
            pairs=pairs,
            baseline=baseline,
        )
        rollout.gates = [g.model_dump() for g in gates]
        return Tick(now, tuple(gates))

    def _manifest(self, session: Session, model: str, version: int) -> ModelManifest | None:
        key = (model, version)
        if key not in self._manifests:
            row = session.exec(
                select(ModelVersion.manifest).where(
                    ModelVersion.model_name == model, ModelVersion.version == version
                )
            ).first()
            if row is None:
                return None
            self._manifests[key] = ModelManifest.model_validate_json(row)
        return self._manifests[key]

    def _prediction_grid(self, session: Session, model: str, version: int) -> list[float] | None:
        """The bin edges predictions are compared on: the rolled-out version's reference
        edges for a regression model (each version bins on its own), None for classes."""
        manifest = self._manifest(session, model, version)
        if manifest is None or manifest.output.task != "regression":
            return None
        return manifest.reference.prediction.bin_edges or None

    def _on_grid(
        self,
        session: Session,
        rollout: Rollout,
        version: int,
        predictions: npt.NDArray[np.int64],
        grid: list[float],
    ) -> npt.NDArray[np.float64]:
        """A regression window's prediction counts re-binned from its version's edges onto
        the rolled-out version's."""
        manifest = self._manifest(session, rollout.model_name, version)
        edges = manifest.reference.prediction.bin_edges if manifest else []
        if len(edges) != len(predictions) + 1:
            return np.zeros(len(grid) - 1)  # binned on edges we do not know: no evidence
        return rebin(predictions, edges, grid)

    def _step(
        self, session: Session, rollout: Rollout, event: Tick | Operator
    ) -> list[DesiredState]:
        stages = stages_of(session, rollout)
        state = RolloutState(
            status=RolloutStatus(rollout.status),
            stage=rollout.stage,
            stage_started_at=as_utc(rollout.stage_started_at),
            reason=rollout.reason,
        )
        plan = PlanSpec.model_validate(rollout.plan)
        new_state, actions = step(state, event, stages, plan.on_failure)
        out = self._apply(session, rollout, actions, stages)
        rollout.status, rollout.stage = new_state.status, new_state.stage
        rollout.stage_started_at, rollout.reason = new_state.stage_started_at, new_state.reason
        rollout.updated_at = utcnow()
        if new_state.status in TERMINAL:
            rollout.gates = rollout.gates or []
        session.add(rollout)
        return out

    def _apply(
        self, session: Session, rollout: Rollout, actions: list[Action], stages: list[Stage]
    ) -> list[DesiredState]:
        out: list[DesiredState] = []

        def members() -> Sequence[RolloutDevice]:  # only for the actions that need them
            return session.exec(
                select(RolloutDevice)
                .where(RolloutDevice.rollout_id == rollout.id)
                .order_by(col(RolloutDevice.rank))
            ).all()

        for action in actions:
            if isinstance(action, Record):
                record_event(session, action.type, action.message, rollout_id=rollout.id)
                log.info(
                    "rollout %s (%s v%s): %s",
                    rollout.id,
                    rollout.model_name,
                    rollout.version,
                    action.message,
                    extra=about(
                        rollout_id=rollout.id, model=rollout.model_name, version=rollout.version
                    ),
                )
            elif isinstance(action, StartStage):
                out.extend(self._start_stage(session, rollout, members(), action, stages))
            elif isinstance(action, RevertDevices):
                out.extend(self._revert(session, rollout, members()))
            elif isinstance(action, MakeDefault):
                _make_default(session, rollout)
            elif isinstance(action, RestoreDefault):
                self._restore_default(session, rollout)
        return out

    def _start_stage(
        self,
        session: Session,
        rollout: Rollout,
        members: Sequence[RolloutDevice],
        action: StartStage,
        stages: list[Stage],
    ) -> list[DesiredState]:
        """The stage's new members get the version, signed in one batch; each remembers
        what it ran before."""
        joining = [m for m in members[: action.target] if m.assigned_stage is None]
        if not joining:
            return []
        manifest = self._manifest(session, rollout.model_name, rollout.version)
        if manifest is None:
            raise NotFoundError(f"{rollout.model_name} v{rollout.version} is gone")
        devices = load_devices(session, [m.device_id for m in joining])
        name = rollout.model_name
        previous = {
            d.id: desired_version(d, name) or reported_version(d, name) for d in devices.values()
        }
        deployment = DeploymentModel(
            manifest=manifest, rollout_id=rollout.id, stage=stages[action.stage].label
        )
        signed = deploy_many(
            session,
            self.keys.deployment,
            [devices[m.device_id] for m in joining],
            deployment,
            self.ttl,
            self.mirrors,
        )
        now = utcnow()
        assigned = [
            (
                member,
                {
                    "assigned_stage": action.stage,
                    "assigned_seq": desired.seq,
                    "assigned_at": now,
                    "previous_version": previous[member.device_id],
                },
            )
            for member, desired in zip(joining, signed, strict=True)
        ]
        update_stored(session, assigned)
        return signed

    def _restore_default(self, session: Session, rollout: Rollout) -> None:
        """The default this rollout replaced comes back (or none, if there was none), unless
        a later rollout has replaced it since."""
        default = session.get(DefaultVersion, (rollout.model_name, rollout.selector))
        if default is None or default.rollout_id != rollout.id:
            return
        if default.previous_version is None or default.previous_rollout_id is None:
            session.delete(default)
            message = f"{rollout.selector or 'all devices'} has no default {rollout.model_name}"
        else:
            default.version, default.rollout_id = (
                default.previous_version,
                default.previous_rollout_id,
            )
            default.previous_version = default.previous_rollout_id = None
            default.updated_at = utcnow()
            session.add(default)
            message = (
                f"{rollout.model_name} v{default.version} is the default for "
                f"{rollout.selector or 'all devices'} again"
            )
        record_event(session, EventType.DEFAULT_RESTORED, message, rollout_id=rollout.id)

    def _deploy(
        self,
        session: Session,
        device_id: str,
        model: str,
        version: str | int,
        rollout_id: str,
        stage: str,
    ) -> DesiredState:
        """The device's next desired state with ``model`` at ``version``, for a rollout."""
        return deploy_version(
            session,
            self.keys.deployment,
            device_id=device_id,
            model=model,
            version=str(version),
            ttl=self.ttl,
            rollout_id=rollout_id,
            stage=stage,
            mirrors=self.mirrors,
        )

    def _revert(self, session: Session, rollout: Rollout, members: Any) -> list[DesiredState]:
        out = []
        for member in members:
            if member.assigned_stage is None or member.reverted:
                continue
            member.reverted = True
            session.add(member)
            if member.previous_version is None:
                record_event(
                    session,
                    EventType.NO_PREVIOUS_VERSION,
                    f"{member.device_id} had no earlier version "
                    f"of {rollout.model_name}; left as it is",
                    rollout_id=rollout.id,
                )
                continue
            out.append(
                self._deploy(
                    session,
                    member.device_id,
                    rollout.model_name,
                    str(member.previous_version),
                    rollout.id,
                    "rollback",
                )
            )
        return out

    def _late_joiners(self, session: Session) -> list[DesiredState]:
        """Devices that match a finished rollout's selector get its version when they were
        never told about that model (they joined later), or when what they were told came
        from a rollout (or default) older than this default: e.g. a device that joined while
        the rollout ran got the default before it; or the default of a rollout since rolled
        back. A single-device deployment (no rollout)
        and devices in an active rollout of the model are left alone."""
        defaults = session.exec(select(DefaultVersion)).all()
        if not defaults:
            return []
        out = []
        rollouts = session.exec(select(Rollout)).all()
        finished = {r.id: as_utc(r.updated_at) for r in rollouts}
        rolled_back = {r.id for r in rollouts if r.status == RolloutStatus.ROLLED_BACK}
        busy = set(
            session.exec(
                select(RolloutDevice.device_id, Rollout.model_name)
                .join(Rollout, col(Rollout.id) == RolloutDevice.rollout_id)
                .where(col(Rollout.status).in_(ACTIVE))
            ).all()
        )

        def behind(device: Device, default: DefaultVersion) -> bool:
            deployment = desired_deployment(device, default.model_name)
            if deployment is None:
                return True
            source = deployment.rollout_id
            if source is None or source == default.rollout_id:
                return False
            if (device.id, default.model_name) in busy:
                return False
            if source in rolled_back and deployment.stage == "default":
                return True  # joined while the default was a version since rolled back
            told_at = finished.get(source)
            default_at = as_utc(default.updated_at)
            return told_at is not None and default_at is not None and told_at < default_at

        for default in defaults:
            candidates = told_otherwise(
                session, default.model_name, default.selector, default.rollout_id
            )
            for device in candidates:
                if behind(device, default):
                    out.append(self._give_default(session, device.id, default))
        return out

    def _give_default(
        self, session: Session, device_id: str, default: DefaultVersion
    ) -> DesiredState:
        desired = self._deploy(
            session,
            device_id,
            default.model_name,
            str(default.version),
            default.rollout_id,
            "default",
        )
        record_event(
            session,
            EventType.LATE_JOINER,
            f"{device_id} given {default.model_name} v{default.version}, the default for "
            f"{default.selector or 'all devices'}",
            rollout_id=default.rollout_id,
        )
        return desired


def _make_default(session: Session, rollout: Rollout) -> None:
    """The finished rollout's version becomes the default of its selector; the one it
    replaces is kept, to come back if this rollout is rolled back."""
    default = session.get(DefaultVersion, (rollout.model_name, rollout.selector))
    if default is None:
        default = DefaultVersion(
            model_name=rollout.model_name,
            selector=rollout.selector,
            version=rollout.version,
            rollout_id=rollout.id,
        )
    elif default.rollout_id != rollout.id:
        default.previous_version = default.version
        default.previous_rollout_id = default.rollout_id
    default.version, default.rollout_id = rollout.version, rollout.id
    default.updated_at = utcnow()
    session.add(default)


def _install_counts(session: Session, rollout: Rollout) -> tuple[int, int]:
    """How many of the stage's devices serve the version (past probation), and how many
    refused the desired state they were sent (or a later one): from ``device_model``."""
    member, model = RolloutDevice, DeviceModel
    is_installed = and_(
        col(model.version) == rollout.version, col(model.phase) == Phase.SERVING.value
    )
    is_failed = and_(
        col(model.phase).in_([Phase.FAILED.value, Phase.REVERTED.value]),
        col(model.error_seq) >= func.coalesce(member.assigned_seq, 0),
    )
    installed, failed = session.exec(
        select(
            func.coalesce(func.sum(case((is_installed, 1), else_=0)), 0),
            func.coalesce(func.sum(case((is_failed, 1), else_=0)), 0),
        )
        .select_from(member)
        .join(
            model,
            and_(
                col(model.device_id) == member.device_id,
                col(model.model_name) == rollout.model_name,
            ),
        )
        .where(member.rollout_id == rollout.id, col(member.assigned_stage).is_not(None))
    ).one()
    return int(installed), int(failed)
