"""Device admission: bootstrap tokens, enrollment, pre-authorized ids, and an operator's
accept / reject / reissue / decommission. Database only; the broker side (an account per
accepted device) is ``broker_accounts.py``, driven by the routes.

A device enrolls with a bootstrap token (``POST /enroll``): one use of the token is taken
in the same transaction that creates the device (so a token with one use left enrolls one
device, however many ask at once), and the device gets its own token. It is ``pending``
until an operator accepts it, or ``accepted`` at once when its id was pre-authorized or
the bootstrap token says so. Its token is good for nothing but the enrollment check-in
(``GET /enrollment``) until it is accepted.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from control_plane.audit.record import record_event
from control_plane.audit.types import EventType
from control_plane.auth.tokens import hash_token, revoke_device_tokens
from control_plane.errors import ConflictError, UnauthorizedError
from control_plane.fleet.devices import (
    check_device_id,
    check_labels,
    get_device,
    issue_device_token,
)
from control_plane.store.tables import Admission, BootstrapToken, Device, as_utc, utcnow

BOOTSTRAP_PREFIX = "efb_"
# From which states an operator's command moves a device, and to which.
TRANSITIONS: dict[str, tuple[frozenset[Admission], Admission]] = {
    "approve": (frozenset({Admission.PENDING, Admission.REJECTED}), Admission.ACCEPTED),
    "reject": (
        frozenset({Admission.PENDING, Admission.ACCEPTED, Admission.PREAUTHORIZED}),
        Admission.REJECTED,
    ),
}


def create_bootstrap_token(
    session: Session,
    *,
    name: str,
    uses: int,
    ttl: timedelta,
    labels: dict[str, str],
    auto_accept: bool,
) -> tuple[BootstrapToken, str]:
    """A bootstrap token (committed) and its secret, shown once."""
    check_labels(labels)
    secret = BOOTSTRAP_PREFIX + secrets.token_urlsafe(32)
    row = BootstrapToken(
        name=name,
        token_hash=hash_token(secret),
        max_uses=uses,
        expires_at=utcnow() + ttl,
        labels=labels,
        auto_accept=auto_accept,
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return row, secret


def list_bootstrap_tokens(session: Session) -> list[BootstrapToken]:
    return list(session.exec(select(BootstrapToken).order_by(col(BootstrapToken.id))).all())


def _usable(row: BootstrapToken | None, now: datetime) -> BootstrapToken:
    if row is None:
        raise UnauthorizedError("unknown bootstrap token", code="bootstrap_unknown")
    if row.revoked_at is not None:
        raise UnauthorizedError(
            f"bootstrap token {row.name!r} is revoked", code="bootstrap_revoked"
        )
    expires = as_utc(row.expires_at)
    if expires is not None and expires <= now:
        raise UnauthorizedError(
            f"bootstrap token {row.name!r} expired at {expires.isoformat(timespec='seconds')}",
            code="bootstrap_expired",
        )
    if row.uses >= row.max_uses:
        raise UnauthorizedError(
            f"bootstrap token {row.name!r} is used up ({row.max_uses} of {row.max_uses} uses)",
            code="bootstrap_used_up",
        )
    return row


def enroll(
    session: Session, secret: str, device_id: str, labels: dict[str, str]
) -> tuple[Device, str]:
    """Enroll a device with a bootstrap token: the device (pending, or accepted when its id
    was pre-authorized or the token accepts at once) and its token. Committed together with
    one use of the bootstrap token, or nothing is."""
    check_device_id(device_id, loc=("body", "device_id"))
    check_labels(labels)
    now = utcnow()
    bootstrap = _usable(
        session.exec(
            select(BootstrapToken).where(BootstrapToken.token_hash == hash_token(secret))
        ).first(),
        now,
    )
    device = session.get(Device, device_id, with_for_update=True)
    preauthorized = device is not None and device.admission == Admission.PREAUTHORIZED
    if device is not None and not preauthorized:
        raise ConflictError(
            f"device {device_id!r} exists ({device.admission.value}); an operator reissues a "
            "lost token (edgefleet devices reissue)",
            loc=("body", "device_id"),
            code="already_enrolled",
        )
    _take_use(session, bootstrap)
    if device is None:
        device = Device(id=device_id, labels={})
    accepted = preauthorized or bootstrap.auto_accept
    device.registered = True
    device.admission = Admission.ACCEPTED if accepted else Admission.PENDING
    device.labels = {**labels, **device.labels, **bootstrap.labels}  # the operator's win
    session.add(device)
    _, token = issue_device_token(session, device_id)
    why = "pre-authorized" if preauthorized else f"bootstrap token {bootstrap.name!r}"
    record_event(
        session,
        EventType.DEVICE_ADMISSION,
        f"enrolled with {why}: {device.admission.value}",
        device_id=device_id,
    )
    try:
        session.commit()  # a concurrent enrollment of the same new id fails here, not twice
    except IntegrityError as exc:
        session.rollback()
        raise ConflictError(
            f"device {device_id!r} exists", loc=("body", "device_id"), code="already_enrolled"
        ) from exc
    session.refresh(device)
    return device, token


def _take_use(session: Session, bootstrap: BootstrapToken) -> None:
    """One use, atomically: a concurrent enrollment cannot take the same one."""
    taken = session.execute(
        update(BootstrapToken)
        .where(
            col(BootstrapToken.id) == bootstrap.id,
            col(BootstrapToken.uses) < col(BootstrapToken.max_uses),
            col(BootstrapToken.revoked_at).is_(None),
        )
        .values(uses=BootstrapToken.uses + 1)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise UnauthorizedError(
            f"bootstrap token {bootstrap.name!r} is used up", code="bootstrap_used_up"
        )


def preauthorize(session: Session, devices: list[tuple[str, dict[str, str]]]) -> list[Device]:
    """Pre-authorize ids (all checked before any is stored): each enrolls accepted."""
    for index, (device_id, labels) in enumerate(devices):
        check_device_id(device_id, loc=("body", "devices", index, "id"))
        check_labels(labels)
    ids = [device_id for device_id, _ in devices]
    if len(set(ids)) != len(ids):
        raise ConflictError("the list names a device twice", loc=("body", "devices"))
    taken = session.exec(select(Device.id).where(col(Device.id).in_(ids))).all()
    if taken:
        shown = ", ".join(sorted(taken)[:5])
        raise ConflictError(
            f"{len(taken)} of these devices exist already ({shown}); nothing was stored",
            loc=("body", "devices"),
        )
    rows = [
        Device(id=device_id, labels=labels, registered=True, admission=Admission.PREAUTHORIZED)
        for device_id, labels in devices
    ]
    session.add_all(rows)
    session.commit()
    return rows


def admit(session: Session, device_id: str, command: str) -> Device:
    """``approve`` or ``reject`` (committed). A rejected device's token stops working at once
    (it stays, for an operator who accepts the device after all)."""
    sources, target = TRANSITIONS[command]
    device = get_device(session, device_id)
    if device.admission == target:
        return device
    if device.admission not in sources:
        raise ConflictError(
            f"device {device_id!r} is {device.admission.value}; {command} needs "
            + " or ".join(sorted(s.value for s in sources)),
            loc=("path", "device_id"),
            code="admission",
        )
    device.admission = target
    session.add(device)
    record_event(session, EventType.DEVICE_ADMISSION, target.value, device_id=device_id)
    session.commit()
    session.refresh(device)
    return device


def decommission(session: Session, device_id: str) -> tuple[Device, list[str]]:
    """The device is gone: its tokens are revoked (their hashes returned) and it is marked
    decommissioned (its history stays). Committed."""
    device = get_device(session, device_id)
    revoked = revoke_device_tokens(session, device_id)
    if device.admission != Admission.DECOMMISSIONED:
        device.admission = Admission.DECOMMISSIONED
        device.online = False
        session.add(device)
        record_event(session, EventType.DEVICE_ADMISSION, "decommissioned", device_id=device_id)
    session.commit()
    session.refresh(device)
    return device, revoked


def reissue(session: Session, device_id: str) -> tuple[Device, str, list[str]]:
    """A new token for an accepted or pending device; the old ones are revoked (their hashes
    returned). Committed."""
    device = get_device(session, device_id)
    if device.admission not in (Admission.ACCEPTED, Admission.PENDING):
        raise ConflictError(
            f"device {device_id!r} is {device.admission.value}; only an accepted or pending "
            "device gets a new token",
            loc=("path", "device_id"),
            code="admission",
        )
    revoked = revoke_device_tokens(session, device_id)
    _, token = issue_device_token(session, device_id)
    record_event(session, EventType.DEVICE_ADMISSION, "token reissued", device_id=device_id)
    session.commit()
    session.refresh(device)
    return device, token, revoked


def set_broker_account(session: Session, device_id: str, exists: bool) -> None:
    get_device(session, device_id)
    set_broker_accounts(session, [device_id], exists)


def set_broker_accounts(session: Session, device_ids: Sequence[str], exists: bool) -> None:
    session.exec(update(Device).where(col(Device.id).in_(device_ids)).values(broker_account=exists))
    session.commit()


def accounts_to_delete(session: Session) -> list[str]:
    """Devices no longer accepted whose broker account still exists (a deletion the broker
    did not confirm): deleted again at every connect."""
    return list(
        session.exec(
            select(Device.id).where(
                col(Device.broker_account),
                col(Device.admission).in_([Admission.REJECTED, Admission.DECOMMISSIONED]),
            )
        ).all()
    )
