"""The device registry: registration (with a device token), and what devices report."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, case, delete, func, insert, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, aliased, defer
from sqlmodel import Session, col, select

from control_plane.audit.record import event_values, record_event
from control_plane.audit.types import DeviceModelData, EventType, Payload
from control_plane.auth.tokens import issue_token, new_token
from control_plane.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError
from control_plane.fleet.selectors import Selector, Term
from control_plane.store.db import refresh_statistics
from control_plane.store.tables import (
    Admission,
    ApiToken,
    Device,
    DeviceDeployment,
    DeviceLabel,
    DeviceModel,
    Event,
    Role,
    SampleRecord,
    TelemetryRecord,
)
from shared.messages import DeviceState, ModelStatus, OnlineStatus, SequenceFloor
from shared.topics import is_device_id

MAX_LABELS = 32
ANALYZE_AFTER = 1000  # devices registered at once: the planner needs their statistics now
RESERVED_PREFIX = "edgefleet-"  # broker service accounts: edgefleet-control-plane, …


def check_labels(labels: dict[str, str], loc: tuple[str | int, ...] = ("body", "labels")) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidInputError(f"at most {MAX_LABELS} labels", loc=loc)
    for key, value in labels.items():
        if not key or len(key) > 63 or len(value) > 63 or "," in key + value or "=" in key:
            raise InvalidInputError(
                f"label {key}={value}: keys and values are 1-63 characters "
                "without ',' (and no '=' in keys)",
                loc=loc,
            )


def check_device_id(device_id: str, loc: tuple[str | int, ...] = ("body", "id")) -> None:
    if not is_device_id(device_id):
        raise InvalidInputError("device ids match ^[a-z0-9][a-z0-9-]{0,63}$", loc=loc)
    if device_id.startswith(RESERVED_PREFIX):
        raise InvalidInputError(
            f"device ids starting with {RESERVED_PREFIX!r} are reserved for the broker's "
            "service accounts (the control plane's, for one)",
            loc=loc,
            code="reserved",
        )


def register_device(session: Session, device_id: str, labels: dict[str, str]) -> tuple[Device, str]:
    """Register a device, accepted, and issue its token (role ``device``); the token is also
    the device's MQTT password (username = device id). Committed."""
    return register_devices(session, [(device_id, labels)])[0]


def register_devices(
    session: Session, wanted: Sequence[tuple[str, dict[str, str]]], *, listed: bool = False
) -> list[tuple[Device, str]]:
    """``register_device`` for many in one transaction: all are checked before any is
    stored, and none is registered if one cannot be. ``listed``: the body was a list (error
    locations name the item)."""
    for index, (device_id, labels) in enumerate(wanted):
        where: tuple[str | int, ...] = ("body", index) if listed else ("body",)
        check_device_id(device_id, loc=(*where, "id"))
        check_labels(labels, loc=(*where, "labels"))
    ids = [device_id for device_id, _ in wanted]
    if len(set(ids)) != len(ids):
        twice = sorted(d for d, n in Counter(ids).items() if n > 1)[:5]
        raise InvalidInputError(f"the list names a device twice: {', '.join(twice)}", loc=("body",))
    known = {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(ids))).all()}
    taken = sorted(d for d, device in known.items() if device.registered)
    if taken:
        raise ConflictError(
            f"device {taken[0]!r} is already registered"
            if len(taken) == 1
            else f"{len(taken)} devices are already registered: {', '.join(taken[:5])}…",
            loc=("body", ids.index(taken[0]), "id") if listed else ("body", "id"),
        )
    issued = []
    for device_id, labels in wanted:
        device = known.get(device_id) or Device(id=device_id, labels=labels)
        device.registered = True
        device.admission = Admission.ACCEPTED
        device.labels = {**device.labels, **labels}
        session.add(device)
        token, secret = new_token(name=f"device:{device_id}", role=Role.DEVICE, device_id=device_id)
        session.add(token)
        record_event(
            session, EventType.DEVICE_ADMISSION, "registered: accepted", device_id=device_id
        )
        issued.append(secret)
    try:
        session.commit()
    except IntegrityError as exc:  # registered meanwhile, by another request or process
        session.rollback()
        raise ConflictError(
            "a device of the request was registered meanwhile: try again", loc=("body",)
        ) from exc
    if len(ids) >= ANALYZE_AFTER:
        refresh_statistics(session, "device", "device_label")
    stored = {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(ids))).all()}
    return [(stored[device_id], secret) for device_id, secret in zip(ids, issued, strict=True)]


def forget_devices(session: Session, device_ids: Sequence[str]) -> None:
    """Undo ``register_devices`` when their broker accounts could not be made: the devices,
    their tokens and their admission events go."""
    session.exec(delete(ApiToken).where(col(ApiToken.device_id).in_(device_ids)))
    session.exec(
        delete(Event).where(
            col(Event.device_id).in_(device_ids), col(Event.type) == EventType.DEVICE_ADMISSION
        )
    )
    session.exec(delete(DeviceModel).where(col(DeviceModel.device_id).in_(device_ids)))
    session.exec(delete(DeviceLabel).where(col(DeviceLabel.device_id).in_(device_ids)))
    session.exec(delete(DeviceDeployment).where(col(DeviceDeployment.device_id).in_(device_ids)))
    session.exec(delete(Device).where(col(Device.id).in_(device_ids)))
    session.commit()


def issue_device_token(session: Session, device_id: str) -> tuple[ApiToken, str]:
    return issue_token(session, name=f"device:{device_id}", role=Role.DEVICE, device_id=device_id)


def get_device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}", loc=("path", "device_id"))
    return device


def sequence_floor(session: Session, device_id: str, caller: ApiToken) -> SequenceFloor:
    """What this control plane has issued to and stored of a device: a device whose data dir
    was wiped learns it before accepting anything. A device token sees only its own."""
    if caller.role == Role.DEVICE and caller.device_id != device_id:
        raise ForbiddenError("a device token reads only its own device", loc=("path", "device_id"))
    device = get_device(session, device_id)
    stored = [
        session.exec(
            select(func.coalesce(func.max(table.seq), 0)).where(table.device_id == device_id)
        ).one()
        for table in (TelemetryRecord, SampleRecord)
    ]
    return SequenceFloor(
        device_id=device_id,
        deployment_seq=device.deployment_seq,
        telemetry_seq=int(stored[0]),
        samples_seq=int(stored[1]),
        state_seq=device.state_seq,
    )


def list_devices(session: Session) -> list[Device]:
    return list(session.exec(select(Device).order_by(col(Device.id))).all())


def _has_label(term: Term, device_id: Mapped[str]) -> ColumnElement[bool]:
    """Whether ``device_id`` has the term's label: its key, and for ``=``/``!=`` its value
    (a lookup by ``device_label``'s primary key)."""
    label = aliased(DeviceLabel)
    query = select(label.device_id).where(label.device_id == device_id, label.key == term.key)
    if term.op in ("=", "!="):
        query = query.where(label.value == term.value)
    return query.exists()


def _labelled(term: Term) -> list[ColumnElement[bool]]:
    """``device_label`` rows of devices that have ``term``'s label (``=`` or ``exists``)."""
    wanted = [col(DeviceLabel.key) == term.key]
    return wanted + ([col(DeviceLabel.value) == term.value] if term.op == "=" else [])


def selected(session: Session, selector: Selector) -> list[ColumnElement[bool]]:
    """The selector as SQL conditions on ``device``: the same devices ``selector.matches``
    would pick (``key!=value`` also picks devices without the key), found in
    ``device_label``. When a term needs a label (``key=value`` or ``key``) that under a
    third of the fleet has, only the label rows of the rarest such term are read and the
    other terms looked up for those devices (``hw=jetson,site=s3`` reads 5,000 rows of
    100,000 devices); otherwise every device is looked up, which is cheaper per device
    than gathering a long list of ids (measured on SQLite: 0.4 s against 1 s for 66,666
    matches of 100,000)."""
    needed = [term for term in selector.terms if term.op in ("=", "exists")]
    if needed:
        count = select(func.count()).select_from(DeviceLabel)
        having = {term: session.exec(count.where(*_labelled(term))).one() for term in needed}
        driver = min(needed, key=having.__getitem__)
        fleet = session.exec(select(func.count()).select_from(Device)).one()
        if having[driver] * 3 <= fleet:
            ids = select(DeviceLabel.device_id).where(*_labelled(driver))
            for term in selector.terms:
                if term != driver:
                    has = _has_label(term, col(DeviceLabel.device_id))
                    ids = ids.where(has if term.op in ("=", "exists") else ~has)
            return [col(Device.id).in_(ids)]
    conditions = []
    for term in selector.terms:
        has = _has_label(term, col(Device.id))
        conditions.append(has if term.op in ("=", "exists") else ~has)
    return conditions


def matching_devices(session: Session, selector: Selector) -> list[Device]:
    """The devices ``selector`` matches, by id."""
    query = select(Device).where(*selected(session, selector)).order_by(col(Device.id))
    return list(session.exec(query).all())


def page_of_devices(
    session: Session, selector: Selector, limit: int | None, offset: int, after: str | None = None
) -> tuple[int, list[Device]]:
    """How many devices ``selector`` matches, and ``limit`` of them by id from ``offset``
    among those after the id ``after`` (a key the index finds: a deep ``offset`` reads
    every row it skips)."""
    where = selected(session, selector)
    total = session.exec(select(func.count()).select_from(Device).where(*where))
    query = select(Device).where(*where)
    if after is not None:
        query = query.where(col(Device.id) > after)
    query = query.order_by(col(Device.id)).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return int(total.one()), list(session.exec(query).all())


def fleet_counts(
    session: Session, selector: Selector
) -> tuple[int, int, list[tuple[str, int | None, str, int]]]:
    """Devices ``selector`` matches, how many are online, and devices per (model, active
    version, phase) as they last reported: counted by the database."""
    where = selected(session, selector)
    devices, online = session.exec(
        select(func.count(), func.coalesce(func.sum(case((col(Device.online), 1), else_=0)), 0))
        .select_from(Device)
        .where(*where)
    ).one()
    query = select(DeviceModel.model_name, DeviceModel.version, DeviceModel.phase, func.count())
    if selector.terms:  # the whole fleet needs no join
        query = query.join(Device, col(Device.id) == DeviceModel.device_id).where(*where)
    groups = session.exec(
        query.group_by(
            col(DeviceModel.model_name), col(DeviceModel.version), col(DeviceModel.phase)
        ).order_by(col(DeviceModel.model_name), col(DeviceModel.version), col(DeviceModel.phase))
    ).all()
    return int(devices), int(online), [(m, v, p, int(n)) for m, v, p, n in groups]


@dataclass(frozen=True)
class _Change:
    kind: EventType
    message: str
    data: Payload | None = None
    model_name: str | None = None
    version: int | None = None


def _changes(old: DeviceState | None, new: DeviceState) -> list[_Change]:
    """Events worth recording between two state reports: versions, refusals, reverts."""
    events: list[_Change] = []
    before = {m.name: m for m in old.models} if old else {}
    for model in new.models:
        was = before.get(model.name)
        old_active = was.active.version if was and was.active else None
        new_active = model.active.version if model.active else None
        if new_active != old_active:
            events.append(
                _Change(
                    EventType.DEVICE_MODEL,
                    f"{model.name}: v{old_active} → v{new_active}",
                    DeviceModelData(previous=old_active),
                    model.name,
                    new_active,
                )
            )
        error = model.last_error
        if error and (was is None or was.last_error != error):
            events.append(
                _Change(
                    EventType.DEVICE_REFUSAL,
                    f"{model.name}: {error.reason}: {error.message}",
                    model_name=model.name,
                )
            )
    if new.last_error and (old is None or old.last_error != new.last_error):
        events.append(
            _Change(EventType.DEVICE_REFUSAL, f"{new.last_error.reason}: {new.last_error.message}")
        )
    return events


ModelRow = tuple[int | None, str, int | None]  # device_model's version, phase, error_seq
# Tables written with multi-row statements (no ORM objects) by ingest.
DEVICE: Table = Device.__table__  # type: ignore[attr-defined]
DEVICE_MODEL: Table = DeviceModel.__table__  # type: ignore[attr-defined]
EVENT: Table = Event.__table__  # type: ignore[attr-defined]


def apply_reports(
    session: Session, reports: Sequence[DeviceState | OnlineStatus], seen: datetime
) -> None:
    """Record devices' retained states and online flags, in the order given per device
    (creating a device that was never registered). A state counts only if it is newer by
    the device's own report counter than the stored one: a clock from the future decides
    nothing. The devices' rows are read (and locked, in id order, so two processes storing
    reports of the same devices wait for each other instead of deadlocking, and the second
    sees the reports stored and records no events twice) in one query, their models in
    another. Registered devices (all but a few) are written with one multi-row statement
    per table, not through ORM objects: at 100,000 devices connecting, the objects and
    their flush were most of ingest's time. The others (new devices, and devices whose
    labels follow their reports) go through the ORM, whose flush keeps ``device_label``."""
    ids = sorted({r.device_id for r in reports})
    t = DEVICE.c
    rows = session.connection().execute(
        sa_select(t.id, t.registered, t.online, t.state, t.state_seq)
        .where(t.id.in_(ids))
        .order_by(t.id)
        .with_for_update()
    )
    known = {i: _Reported(on, state, seq) for i, registered, on, state, seq in rows if registered}
    others = [r for r in reports if r.device_id not in known]
    if others:
        _apply_through_orm(session, others, seen)
    mine = [r for r in reports if r.device_id in known]
    if mine:
        _apply_registered(session, known, mine, seen)


@dataclass
class _Reported:
    """A registered device's row, as the reports of a batch leave it."""

    online: bool
    state: str | None
    state_seq: int
    touched: bool = False
    parsed: DeviceState | None = None
    read: bool = False  # ``parsed`` is ``state`` read (None: no state yet)
    models: dict[str, ModelRow] | None = None  # what its latest report says, if any

    def last_state(self) -> DeviceState | None:
        if not self.read:
            self.parsed = DeviceState.model_validate_json(self.state) if self.state else None
            self.read = True
        return self.parsed


def _apply_registered(
    session: Session,
    devices: dict[str, _Reported],
    reports: Sequence[DeviceState | OnlineStatus],
    seen: datetime,
) -> None:
    events: list[dict[str, object]] = []
    for report in reports:
        device = devices[report.device_id]
        if isinstance(report, OnlineStatus):
            if device.online != report.online:
                kind = EventType.DEVICE_ONLINE if report.online else EventType.DEVICE_OFFLINE
                message = "online" if report.online else "offline"
                events.append(event_values(kind, message, device_id=report.device_id))
            device.online = report.online
        elif report.seq > device.state_seq:  # else seen already, or older (reordered)
            for change in _changes(device.last_state(), report):
                events.append(
                    event_values(
                        change.kind,
                        change.message,
                        data=change.data,
                        device_id=report.device_id,
                        model_name=change.model_name,
                        version=change.version,
                    )
                )
            device.state, device.state_seq = report.model_dump_json(), report.seq
            device.parsed, device.read = report, True
            device.models = {m.name: _model_row(m) for m in report.models}
        else:
            continue
        device.touched = True
    connection = session.connection()
    table = DEVICE
    written = [
        {"b_id": i, "b_online": d.online, "b_state": d.state, "b_seq": d.state_seq, "b_seen": seen}
        for i, d in devices.items()
        if d.touched
    ]
    if written:
        connection.execute(
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values(
                online=bindparam("b_online"),
                state=bindparam("b_state"),
                state_seq=bindparam("b_seq"),
                last_seen=bindparam("b_seen"),
            ),
            written,
        )
    if events:
        connection.execute(insert(EVENT), events)
    _write_models(session, {i: d.models for i, d in devices.items() if d.models is not None})


def _model_row(model: ModelStatus) -> ModelRow:
    version = model.active.version if model.active else None
    error_seq = (model.last_error.seq or 0) if model.last_error else None
    return version, model.phase.value, error_seq


def _write_models(session: Session, reported: dict[str, dict[str, ModelRow]]) -> None:
    """Make ``device_model`` equal to what each device's latest report says."""
    if not reported:
        return
    stored: dict[str, dict[str, ModelRow]] = defaultdict(dict)
    table = DEVICE_MODEL
    t = table.c
    for device_id, name, version, phase, error_seq in session.connection().execute(
        sa_select(t.device_id, t.model_name, t.version, t.phase, t.error_seq).where(
            t.device_id.in_(list(reported))
        )
    ):
        stored[device_id][name] = (version, phase, error_seq)
    gone, new, changed = [], [], []
    for device_id, models in reported.items():
        before = stored[device_id]
        gone += [{"b_id": device_id, "b_name": n} for n in before.keys() - models.keys()]
        for name, (version, phase, error_seq) in models.items():
            row = {"device_id": device_id, "model_name": name, "version": version}
            row |= {"phase": phase, "error_seq": error_seq}
            if name not in before:
                new.append(row)
            elif before[name] != (version, phase, error_seq):
                changed.append({f"b_{k}": v for k, v in row.items()})
    connection = session.connection()
    by_key = (table.c.device_id == bindparam("b_device_id")) & (
        table.c.model_name == bindparam("b_model_name")
    )
    if gone:
        key = (table.c.device_id == bindparam("b_id")) & (table.c.model_name == bindparam("b_name"))
        connection.execute(delete(table).where(key), gone)
    if new:
        connection.execute(insert(table), new)
    if changed:
        values: dict[str, Any] = {c: bindparam(f"b_{c}") for c in ("version", "phase", "error_seq")}
        connection.execute(update(table).where(by_key).values(**values), changed)


def _apply_through_orm(
    session: Session, reports: Sequence[DeviceState | OnlineStatus], seen: datetime
) -> None:
    """``apply_reports`` for devices not registered (made here, labels from their reports)."""
    ids = sorted({r.device_id for r in reports})
    devices = {
        d.id: d
        for d in session.exec(
            select(Device)
            .where(col(Device.id).in_(ids))
            .order_by(col(Device.id))
            .options(defer(Device.desired), defer(Device.previous_desired))  # type: ignore[arg-type]
            .with_for_update()
        )
    }
    models: dict[str, dict[str, DeviceModel]] = defaultdict(dict)
    for row in session.exec(select(DeviceModel).where(col(DeviceModel.device_id).in_(ids))):
        models[row.device_id][row.model_name] = row
    parsed: dict[str, DeviceState | None] = {}
    with session.no_autoflush:
        for report in reports:
            device = devices.get(report.device_id)
            if device is None:
                device = devices[report.device_id] = Device(id=report.device_id, labels={})
                session.add(device)
            if isinstance(report, OnlineStatus):
                _apply_online(session, device, report.online)
            elif report.seq > device.state_seq:  # else seen already, or older (reordered)
                if report.device_id not in parsed:
                    stored = device.state
                    parsed[device.id] = DeviceState.model_validate_json(stored) if stored else None
                _apply_state(session, device, parsed[device.id], report, models[device.id])
                parsed[device.id] = report
            else:
                continue
            device.last_seen = seen


def _apply_state(
    session: Session,
    device: Device,
    old: DeviceState | None,
    state: DeviceState,
    models: dict[str, DeviceModel],
) -> None:
    for change in _changes(old, state):
        record_event(
            session,
            change.kind,
            change.message,
            data=change.data,
            device_id=state.device_id,
            model_name=change.model_name,
            version=change.version,
        )
    device.state, device.state_seq = state.model_dump_json(), state.seq
    if not device.registered:
        device.labels = state.labels
    # device_model equal to what the report says
    reported = {m.name for m in state.models}
    for name in set(models) - reported:
        dropped = models.pop(name)
        if dropped in session.new:  # added by an earlier report of this batch
            session.expunge(dropped)
        else:
            session.delete(dropped)
    for model in state.models:
        row = models.get(model.name)
        if row is None:
            row = models[model.name] = DeviceModel(
                device_id=state.device_id, model_name=model.name, phase=model.phase.value
            )
            session.add(row)
        row.version = model.active.version if model.active else None
        row.phase = model.phase.value
        row.error_seq = (model.last_error.seq or 0) if model.last_error else None


def _apply_online(session: Session, device: Device, online: bool) -> None:
    if device.online != online:
        record_event(
            session,
            EventType.DEVICE_ONLINE if online else EventType.DEVICE_OFFLINE,
            "online" if online else "offline",
            device_id=device.id,
        )
    device.online = online
