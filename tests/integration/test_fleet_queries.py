"""The fleet's lists and counts in SQL (label selectors as JSON conditions, models per
device in ``device_model``) against the pure selector and the state reports they stand for,
on real SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, text
from sqlmodel import Session, col, select

from control_plane.fleet.devices import (
    apply_reports,
    fleet_counts,
    forget_devices,
    matching_devices,
    page_of_devices,
    register_device,
    register_devices,
)
from control_plane.fleet.selectors import Selector, Term, parse_selector
from control_plane.store.tables import Device, DeviceDeployment, DeviceLabel, DeviceModel, Event
from shared.messages import (
    DesiredState,
    DeviceState,
    ErrorInfo,
    ModelRef,
    ModelStatus,
    OnlineStatus,
    Phase,
)

pytestmark = pytest.mark.integration
KEYS = ["site", "hw", "a.b", "x/y", "k-1", "K_2"]
VALUES = st.sampled_from(["", "berlin", "rpi4", "O'Brien", 'say "hi"', "50%", "ü", "a_b", " "])


labels = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4)
terms = st.builds(
    lambda key, op, value: Term(key, op, value if op in ("=", "!=") else None),
    st.sampled_from(KEYS),
    st.sampled_from(["=", "!=", "exists", "absent"]),
    VALUES,
)
selectors = st.lists(terms, max_size=3).map(lambda t: Selector(tuple(t), "generated"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fleet=st.lists(labels, min_size=0, max_size=12),
    relabelled=st.lists(st.none() | labels, max_size=12),
    selector=selectors,
)
def test_the_database_picks_the_devices_the_selector_matches(
    engine: Engine,
    fleet: list[dict[str, str]],
    relabelled: list[dict[str, str] | None],
    selector: Selector,
) -> None:
    """Devices inserted, then some relabelled in a second flush (``device_label`` rewritten,
    not only written): SQL picks what the Python matcher picks, in id order."""
    with Session(engine) as session:
        session.exec(delete(Device))
        for i, device_labels in enumerate(fleet):
            session.add(Device(id=f"dev-{i:02d}", labels=device_labels, online=i % 2 == 0))
        session.commit()
        for device, new in zip(
            session.exec(select(Device).order_by(Device.id)), relabelled, strict=False
        ):
            if new is not None:
                fleet[int(device.id[4:])] = device.labels = new
        session.commit()
        expected = [f"dev-{i:02d}" for i, lab in enumerate(fleet) if selector.matches(lab)]
        assert [d.id for d in matching_devices(session, selector)] == expected
        total, page = page_of_devices(session, selector, limit=3, offset=1)
        assert total == len(expected) and [d.id for d in page] == expected[1:4]
        if expected:  # the next page by key: the same devices as by offset
            _, page = page_of_devices(session, selector, limit=3, offset=0, after=expected[0])
            assert [d.id for d in page] == expected[1:4]
        devices, online, _ = fleet_counts(session, selector)
        assert devices == len(expected)
        assert online == sum(int(d.split("-")[1]) % 2 == 0 for d in expected)
        assert label_rows(session) == stored_labels(session)


def label_rows(session: Session) -> dict[str, dict[str, str]]:
    """The ``device_label`` rows, as each device's labels (devices without any left out)."""
    rows: dict[str, dict[str, str]] = {}
    for row in session.exec(select(DeviceLabel)):
        rows.setdefault(row.device_id, {})[row.key] = row.value
    return rows


def stored_labels(session: Session) -> dict[str, dict[str, str]]:
    session.expire_all()  # as stored, not as this session remembers
    return {d.id: d.labels for d in session.exec(select(Device)) if d.labels}


def report(device_id: str, seq: int, models: dict[str, tuple[int | None, Phase]]) -> DeviceState:
    return DeviceState(
        device_id=device_id,
        seq=seq,
        agent_version="test",
        labels={"site": "berlin" if device_id.endswith(("0", "2")) else "paris"},
        deployment_seq=0,
        models=[
            ModelStatus(
                name=name,
                active=ModelRef(name=name, version=version, sha256="0" * 64) if version else None,
                previous=None,
                phase=phase,
            )
            for name, (version, phase) in models.items()
        ],
        dropped_messages=0,
        outbox_dropped=0,
        updated_at=datetime.now(UTC),
    )


def test_label_rows_follow_every_write_of_labels(engine: Engine) -> None:
    """``device_label`` is what ``device.labels`` says after each path that writes labels:
    registration (one, a list as the CSV import sends, an unregistered device's labels
    merged), a report of an unregistered device, pre-authorization, enrollment, PATCH,
    and deletion (``forget_devices``, the ORM, a bulk delete)."""
    from control_plane.api.routes.devices import patch_device
    from control_plane.api.schemas import DeviceUpdate
    from control_plane.fleet.enrollment import create_bootstrap_token, enroll, preauthorize

    def check() -> None:
        assert label_rows(session) == stored_labels(session)

    with Session(engine) as session:
        register_devices(session, [("dev-a", {"site": "rome"}), ("dev-b", {}), ("dev-c", {})])
        register_device(session, "dev-d", {"hw": "rpi4", "site": "oslo"})
        check()
        apply_reports(
            session, [report("dev-r0", 1, {}), report("dev-r1", 1, {})], datetime.now(UTC)
        )
        session.commit()
        check()
        assert label_rows(session)["dev-r0"] == {"site": "berlin"}
        register_devices(session, [("dev-r0", {"hw": "jetson"})])  # merged with the reported
        check()
        assert label_rows(session)["dev-r0"] == {"site": "berlin", "hw": "jetson"}
        preauthorize(session, [("dev-p", {"line": "1"})])
        _, secret = create_bootstrap_token(
            session,
            name="b",
            uses=2,
            ttl=timedelta(hours=1),
            labels={"line": "2"},
            auto_accept=True,
        )
        enroll(session, secret, "dev-p", {"extra": "x"})
        enroll(session, secret, "dev-e", {"extra": "y"})
        check()
        assert label_rows(session)["dev-p"] == {"line": "2", "extra": "x"}
        patch_device("dev-a", DeviceUpdate(labels={"hw": "rpi3"}), session, None)  # type: ignore[arg-type]
        patch_device("dev-d", DeviceUpdate(labels={}), session, None)  # type: ignore[arg-type]
        check()
        assert set(label_rows(session)) == {"dev-a", "dev-r0", "dev-r1", "dev-p", "dev-e"}
        forget_devices(session, ["dev-a"])
        session.delete(session.get(Device, "dev-e"))
        session.commit()
        check()
        session.exec(delete(Device).where(col(Device.id).in_(["dev-r1", "dev-p"])))
        session.commit()
        assert set(label_rows(session)) == {"dev-r0"}


def test_counts_follow_the_latest_report_of_each_device(engine: Engine) -> None:
    now = datetime.now(UTC)
    with Session(engine) as session:
        first = [report(f"dev-{i}", 1, {"fault": (1, Phase.SERVING)}) for i in range(4)]
        seen = report("dev-3", 1, {"other": (7, Phase.SERVING)})  # seen already: ignored
        apply_reports(session, [*first, seen], now)
        session.commit()
        apply_reports(
            session,
            [
                report("dev-0", 2, {"fault": (2, Phase.PROBATION), "other": (None, Phase.FAILED)}),
                report("dev-1", 2, {}),  # dropped every model
            ],
            now,
        )
        session.commit()
        _, _, groups = fleet_counts(session, parse_selector(""))
        assert Counter({(m, v, p): n for m, v, p, n in groups}) == Counter(
            {
                ("fault", 1, "serving"): 2,
                ("fault", 2, "probation"): 1,
                ("other", None, "failed"): 1,
            }
        )
        devices, _, berlin = fleet_counts(session, parse_selector("site=berlin"))
        assert devices == 2
        assert {(m, v, p): n for m, v, p, n in berlin} == {
            ("fault", 1, "serving"): 1,
            ("fault", 2, "probation"): 1,
            ("other", None, "failed"): 1,
        }
        # The rows agree with the stored reports they were made from.
        for device in session.exec(select(Device)).all():
            stored = DeviceState.model_validate_json(device.state or "")
            rows = session.exec(select(DeviceModel).where(DeviceModel.device_id == device.id))
            assert {(r.model_name, r.version, r.phase) for r in rows} == {
                (m.name, m.active.version if m.active else None, m.phase.value)
                for m in stored.models
            }
        assert session.exec(select(Event).where(Event.device_id == "dev-0")).all()


def test_deployment_rows_follow_each_signed_desired_state(engine: Engine) -> None:
    """What the rollout engine's late-joiner query reads instead of the desired states."""
    from control_plane.fleet.deployments import deploy_many, load_devices, sign_many
    from shared.manifest import ModelManifest
    from shared.messages import DeploymentModel
    from shared.signing import SigningKey
    from simulator.rig.models import make_model

    key = SigningKey.generate()
    manifests: list[ModelManifest] = [
        make_model(key, name=name, version=v)[0] for name, v in (("fault", 1), ("fault", 2))
    ]
    other = make_model(key, name="other", version=5)[0]
    with Session(engine) as session:
        for i in range(3):
            session.add(Device(id=f"dev-{i}", labels={}))
        session.commit()
        devices = load_devices(session, ["dev-0", "dev-1", "dev-2"])
        first = DeploymentModel(manifest=manifests[0], rollout_id="r1", stage="1 device")
        deploy_many(session, key, list(devices.values()), first, timedelta(days=1))
        second = DeploymentModel(manifest=other)
        deploy_many(session, key, [devices["dev-0"]], second, timedelta(days=1))
        update = DeploymentModel(manifest=manifests[1], rollout_id="r2", stage="default")
        deploy_many(session, key, [devices["dev-1"]], update, timedelta(days=1))
        sign_many(session, key, [(devices["dev-2"], [])], timedelta(days=1))  # told nothing
        session.commit()
        rows = session.exec(select(DeviceDeployment)).all()
        assert {(r.device_id, r.model_name, r.version, r.rollout_id, r.stage) for r in rows} == {
            ("dev-0", "fault", 1, "r1", "1 device"),
            ("dev-0", "other", 5, None, None),
            ("dev-1", "fault", 2, "r2", "default"),
        }
        for device in session.exec(select(Device)).all():  # as the stored desired states say
            desired = DesiredState.model_validate_json(device.desired or "")
            told = {r.model_name: r.version for r in rows if r.device_id == device.id}
            assert told == {m.manifest.name: m.manifest.version for m in desired.models}


ERRORS = st.none() | st.sampled_from(["sha256_mismatch", "bad_signature"]).map(
    lambda reason: ErrorInfo(reason=reason, message=reason, at=datetime(2026, 1, 1, tzinfo=UTC))
)
MODEL = st.tuples(st.none() | st.integers(1, 3), st.sampled_from(list(Phase)), ERRORS)
REPORTS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.booleans()
        | st.tuples(
            st.integers(1, 6),
            st.dictionaries(st.sampled_from(["m", "n"]), MODEL, max_size=2),
            ERRORS,
        ),
    ),
    max_size=12,
)


Reported = tuple[int, dict[str, tuple[int | None, Phase, ErrorInfo | None]], ErrorInfo | None]


def wire(device_id: str, what: bool | Reported) -> DeviceState | OnlineStatus:
    if isinstance(what, bool):
        return OnlineStatus(device_id=device_id, online=what)
    seq, models, error = what
    state = report(device_id, seq, {name: (v, phase) for name, (v, phase, _) in models.items()})
    statuses = [m.model_copy(update={"last_error": models[m.name][2]}) for m in state.models]
    return state.model_copy(update={"models": statuses, "last_error": error})


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(REPORTS, min_size=1, max_size=4))
def test_registered_devices_take_reports_as_the_orm_path_does(
    engine: Engine, batches: list[list[tuple[str, bool | Reported]]]
) -> None:
    """Registered devices' reports are written with multi-row statements, the others' through
    ORM objects: the same batches (reordered and repeated reports, models added, changed and
    dropped, refusals, online flips) leave the same rows and record the same events."""
    seen = datetime(2026, 6, 1, tzinfo=UTC)
    with Session(engine) as session:
        session.exec(delete(Event))
        session.exec(delete(DeviceModel))
        session.exec(delete(Device))
        register_devices(session, [(f"reg-{d}", {}) for d in "abc"])
        session.exec(delete(Event))
        session.commit()
        for batch in batches:
            sent = [(d, wire("x", what)) for d, what in batch]
            for world in ("reg", "orm"):
                renamed = [m.model_copy(update={"device_id": f"{world}-{d}"}) for d, m in sent]
                apply_reports(session, renamed, seen)
            session.commit()
        session.expire_all()

        def rows(world: str) -> object:
            devices = {
                d.id[4:]: (
                    d.online,
                    d.state_seq,
                    d.state and d.state.replace(world, "X"),
                    d.last_seen,
                )
                for d in session.exec(select(Device).where(col(Device.id).startswith(world)))
                if d.state_seq or d.online
            }
            models = sorted(
                (m.device_id[4:], m.model_name, m.version, m.phase, m.error_seq)
                for m in session.exec(
                    select(DeviceModel).where(col(DeviceModel.device_id).startswith(world))
                )
            )
            # Each device's events, as a set: within a batch the ORM's flush does not keep
            # the order they were added in (seen flipping between identical runs), while the
            # multi-row insert keeps the reports' order.
            events: dict[str, list[str]] = {}
            for e in session.exec(select(Event)):
                if e.device_id and e.device_id.startswith(world):
                    happened = repr((e.type, e.message, e.data, e.model_name, e.version))
                    events.setdefault(e.device_id[4:], []).append(happened)
            for listed in events.values():
                listed.sort()
            return devices, models, events

        assert rows("reg") == rows("orm")


def test_a_bulk_registration_leaves_statistics_for_the_planner(engine: Engine) -> None:
    """PostgreSQL plans with table statistics, which autovacuum gathers only later: a table
    filled at once looks empty to the planner, and a label-selector page of 100,000 devices
    took a minute through a nested loop. A registration of many devices samples the tables
    it filled."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's planner keeps no statistics unless asked; nothing to refresh")
    with Session(engine) as session:
        session.exec(delete(Device))
        session.commit()
        register_devices(session, [(f"dev-{i:04d}", {"site": f"s{i % 7}"}) for i in range(1000)])
        sampled = session.exec(
            text("SELECT reltuples FROM pg_class WHERE relname = 'device_label'")  # type: ignore[call-overload]
        ).one()
        assert sampled[0] >= 1000
