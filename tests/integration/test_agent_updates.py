"""The device agent against a real mosquitto: verified installs, every refusal with a
reason, and the serving model byte-identical after each."""

from __future__ import annotations

import hashlib
import json
import signal
from collections import Counter
from datetime import timedelta

import numpy as np
import pytest

from shared.messages import MAX_DESIRED_BYTES, Ack, Phase, SampleBatch, TelemetryWindow
from shared.signing import SigningKey
from shared.topics import Channel
from simulator.data import sensor_rows
from simulator.rig.agent_rig import (
    DEVICE,
    Rig,
    active_bytes,
    install_v1,
    predict_ok,
    refused,
    serving,
)
from simulator.rig.agents import (
    sign_desired,
    wait_until,
)
from simulator.rig.models import make_model

pytestmark = pytest.mark.integration


def test_install_then_update_keeps_previous_as_rollback_slot(rig: Rig) -> None:
    agent = rig.start_agent()
    v1 = install_v1(rig, agent)
    assert hashlib.sha256(active_bytes(agent)).hexdigest() == hashlib.sha256(v1).hexdigest()
    predict_ok(agent)
    manifest2, data2 = make_model(
        rig.model_key, version=2, algorithm="random_forest", params={"n_estimators": 5}
    )
    rig.artifacts.add(manifest2.sha256, data2)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [manifest2]))
    wait_until(lambda: serving(agent) == 2, what="v2 serving")
    status = agent.a.updater.slots["fault"].status()
    assert status.previous is not None
    assert status.previous.version == 1
    # The state reaches the control plane's side of the broker, retained.
    wait_until(
        lambda: any(
            json.loads(p)["deployment_seq"] == 2
            for t, p in rig.publisher.received
            if t.endswith("/state")
        ),
        what="state seq 2",
    )
    predict_ok(agent)


def test_a_newer_trust_version_it_cannot_fetch_does_not_stop_an_update(rig: Rig) -> None:
    """The desired state says the control plane is at a newer trust-store version, and the
    device cannot fetch it (here: the artifact server has no /trust-stores). Signed by a key
    the device trusts, it is applied under the trust store the device has."""
    agent = rig.start_agent()
    install_v1(rig, agent)
    manifest2, data2 = make_model(rig.model_key, version=2)
    rig.artifacts.add(manifest2.sha256, data2)
    desired = sign_desired(rig.deploy_key, DEVICE, 2, [manifest2])
    ahead = desired.model_copy(update={"trust_version": 5}).signed_with(rig.deploy_key)
    rig.publish(ahead)
    wait_until(lambda: serving(agent) == 2, what="v2 serving")
    assert agent.a.updater.trust.version == 1


@pytest.mark.parametrize(
    ("attack", "reason", "model_level"),
    [
        ("flipped_artifact", "sha256_mismatch", True),
        ("manifest_edited", "bad_model_signature", True),
        ("unknown_model_key", "untrusted_model_key", True),
        ("unknown_deployment_key", "untrusted_key", False),
        ("desired_edited", "bad_signature", False),
        ("replay", "replay", False),
        ("other_device", "wrong_device", False),
        ("expired", "expired", False),
        ("oversize_artifact", "too_large", True),
        ("endless_stream", "too_large", True),
        ("declared_too_large", "too_large", True),
        ("unloadable_onnx", "load_failed", True),
        ("golden_mismatch", "golden_mismatch", True),
        ("malformed_json", "malformed", False),
        ("wrong_schema_version", "schema_version", False),
        ("over_the_cap", "too_large", False),
    ],
)
def test_attack_is_refused_and_v1_keeps_serving(
    rig: Rig, attack: str, reason: str, model_level: bool
) -> None:
    agent = rig.start_agent(max_artifact_bytes=5_000_000)
    v1 = install_v1(rig, agent)
    manifest, data = make_model(rig.model_key, version=2, seed=5)
    desired_key, seq = rig.deploy_key, 2
    payload: str | bytes | None = None
    if attack == "flipped_artifact":
        rig.artifacts.add(manifest.sha256, data, mode="flip")
    elif attack == "manifest_edited":
        manifest = manifest.model_copy(update={"version": 3})
        rig.artifacts.add(manifest.sha256, data)
    elif attack == "unknown_model_key":
        manifest, data = make_model(SigningKey.generate(), version=2, seed=5)
        rig.artifacts.add(manifest.sha256, data)
    elif attack == "unknown_deployment_key":
        desired_key = SigningKey.generate()
        rig.artifacts.add(manifest.sha256, data)
    elif attack == "desired_edited":
        signed = sign_desired(rig.deploy_key, DEVICE, 2, [manifest])
        payload = signed.model_copy(update={"seq": 3}).model_dump_json()
    elif attack == "replay":
        seq = 1  # valid signatures, sequence not above the accepted one
        rig.artifacts.add(manifest.sha256, data)
    elif attack == "other_device":
        payload = sign_desired(rig.deploy_key, "dev-b", 2, [manifest]).model_dump_json()
    elif attack == "expired":
        payload = sign_desired(
            rig.deploy_key, DEVICE, 2, [manifest], expires_in=timedelta(milliseconds=500)
        ).model_dump_json()
    elif attack == "oversize_artifact":
        rig.artifacts.add(manifest.sha256, data, mode="oversize")
    elif attack == "endless_stream":
        rig.artifacts.add(manifest.sha256, data, mode="endless")
    elif attack == "declared_too_large":
        manifest = manifest.model_copy(update={"size": 6_000_000}).signed_with(rig.model_key)
        rig.artifacts.add(manifest.sha256, data)
    elif attack == "unloadable_onnx":
        junk = b"this is not an onnx graph" * 10
        manifest = manifest.model_copy(
            update={"size": len(junk), "sha256": hashlib.sha256(junk).hexdigest()}
        ).signed_with(rig.model_key)
        rig.artifacts.add(manifest.sha256, junk)
    elif attack == "golden_mismatch":
        other, other_data = make_model(
            rig.model_key, version=2, algorithm="random_forest", params={"n_estimators": 3}
        )
        manifest = manifest.model_copy(
            update={"size": other.size, "sha256": other.sha256}
        ).signed_with(rig.model_key)
        rig.artifacts.add(manifest.sha256, other_data)
    elif attack == "malformed_json":
        payload = b'{"schema_version": 1, "device_id": '
    elif attack == "wrong_schema_version":
        document = json.loads(sign_desired(rig.deploy_key, DEVICE, 2, [manifest]).model_dump_json())
        document["schema_version"] = 2
        payload = json.dumps(document).encode()
    elif attack == "over_the_cap":  # above the agent's cap, below the broker's packet cap
        payload = b"{" + b" " * (MAX_DESIRED_BYTES + 1000) + b"}"
    if attack == "expired":
        import time

        time.sleep(1.1)
    rig.publish(
        payload if payload is not None else sign_desired(desired_key, DEVICE, seq, [manifest])
    )
    wait_until(lambda: refused(agent, reason, model_level=model_level), what=f"refusal {reason}")
    assert serving(agent) == 1
    assert active_bytes(agent) == v1  # byte-identical
    predict_ok(agent)  # and still serving
    if not model_level:
        assert agent.a.updater.accepted is not None
        assert agent.a.updater.accepted.seq == 1
    state = agent.a.state()
    errors = [state.last_error, *(m.last_error for m in state.models)]
    assert any(e is not None and e.reason == reason for e in errors)
    staged = list((agent.settings.data_dir / "staging").iterdir())
    assert staged == []  # nothing half-downloaded is left behind


def test_trickle_server_is_abandoned(rig: Rig) -> None:
    agent = rig.start_agent(
        download_min_bytes_per_second=10_000, download_grace_seconds=1.0, download_attempts=1
    )
    v1 = install_v1(rig, agent)
    manifest, data = make_model(rig.model_key, version=2, seed=6)
    rig.artifacts.add(manifest.sha256, data, mode="trickle")
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [manifest]))
    wait_until(lambda: refused(agent, "download_failed", model_level=True), what="abandon")
    assert "too slow" in (agent.a.updater.slots["fault"].last_error.message)  # type: ignore[union-attr]
    assert active_bytes(agent) == v1


def test_interrupted_download_resumes_with_range(rig: Rig) -> None:
    agent = rig.start_agent()
    install_v1(rig, agent)
    manifest, data = make_model(
        rig.model_key, version=2, algorithm="random_forest", params={"n_estimators": 20}
    )
    rig.artifacts.add(manifest.sha256, data, mode="cut")
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [manifest]))
    wait_until(lambda: serving(agent) == 2, what="v2 after a resumed download")
    ranges = [r for s, r in rig.artifacts.requests if s == manifest.sha256]
    assert ranges[0] is None
    assert ranges[1] == f"bytes={len(data) // 2}-"


def test_probation_failure_reverts_by_itself(rig: Rig) -> None:
    agent = rig.start_agent(
        probation_requests=5, probation_seconds=30, probation_latency_budget_ms=0.001
    )  # every request is "too slow"
    v1 = install_v1(rig, agent) if False else None
    del v1
    manifest, data = make_model(rig.model_key, version=1)
    rig.artifacts.add(manifest.sha256, data)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 1, [manifest]))
    wait_until(lambda: serving(agent) == 1, what="v1 on probation")
    for _ in range(6):
        try:
            predict_ok(agent)
        except LookupError:
            break
    wait_until(lambda: agent.a.updater.slots["fault"].phase is Phase.REVERTED, what="revert")
    assert refused(agent, "probation_failed", model_level=True)
    assert serving(agent) is None  # nothing to go back to: v1 was the first model


def test_restart_serves_verified_model_and_refuses_replay(rig: Rig) -> None:
    agent = rig.start_agent()
    v1 = install_v1(rig, agent)
    agent.stop()
    again = rig.start_agent()
    assert serving(again) == 1  # from disk, re-verified, before any message
    assert active_bytes(again) == v1
    wait_until(again.a.session.connected.is_set, what="reconnect")
    # The retained desired state (seq 1) arrives again: re-applied silently, not a replay.
    assert again.a.updater.last_error is None
    predict_ok(again)


def test_tampered_store_is_not_served_after_restart(rig: Rig) -> None:
    agent = rig.start_agent()
    install_v1(rig, agent)
    sha = agent.a.updater.slots["fault"].current.manifest.sha256  # type: ignore[union-attr]
    agent.stop()
    path = agent.settings.data_dir / "models" / "fault" / f"{sha}.onnx"
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))
    again = rig.start_agent()
    assert serving(again) is None
    assert refused(again, "store_corrupt", model_level=True)


def test_two_models_have_their_own_slots(rig: Rig) -> None:
    agent = rig.start_agent()
    fault, fault_data = make_model(rig.model_key, name="fault")
    other, other_data = make_model(rig.model_key, name="other", seed=3)
    rig.artifacts.add(fault.sha256, fault_data)
    rig.artifacts.add(other.sha256, other_data)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 1, [fault, other]))
    wait_until(
        lambda: serving(agent, "fault") == 1 and serving(agent, "other") == 1, what="both models"
    )
    X, _ = sensor_rows(2, seed=1)
    assert agent.a.predict_rows("other", X.tolist()).model.name == "other"
    assert np.asarray(agent.a.model_names()).tolist() == ["fault", "other"]


def test_kill_9_mid_download_resumes_after_restart(rig: Rig) -> None:
    process = rig.start_agent_process()
    v1, v1_data = make_model(rig.model_key, version=1)
    rig.artifacts.add(v1.sha256, v1_data)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 1, [v1]))
    wait_until(lambda: rig.reported_version() == 1, what="v1 reported")
    v2, v2_data = make_model(
        rig.model_key,
        version=2,
        algorithm="random_forest",
        params={"n_estimators": 40, "max_depth": 10},
        rows=2000,
    )
    assert len(v2_data) > 500_000  # seconds at 320 KiB/s
    rig.artifacts.add(v2.sha256, v2_data, mode="slow")
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [v2]))
    part = rig.tmp / DEVICE / "staging" / f"{v2.sha256}.part"
    wait_until(lambda: part.exists() and part.stat().st_size > 64_000, what="partial download")
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    had = part.stat().st_size
    assert 0 < had < len(v2_data)
    rig.artifacts.modes[v2.sha256] = "normal"
    rig.start_agent_process()
    wait_until(lambda: rig.reported_version() == 2, what="v2 after restart")
    resumed = [r for s, r in rig.artifacts.requests if s == v2.sha256][-1]
    assert resumed is not None
    assert int(resumed.removeprefix("bytes=").rstrip("-")) >= had  # resumed, not restarted
    store = rig.tmp / DEVICE / "models" / "fault"
    assert (store / f"{v2.sha256}.onnx").read_bytes() == v2_data
    assert not part.exists()


def test_crash_between_write_and_rename_converges(rig: Rig) -> None:
    agent = rig.start_agent()
    v1_data = install_v1(rig, agent)
    v2, v2_data = make_model(rig.model_key, version=2, seed=8)
    desired = sign_desired(rig.deploy_key, DEVICE, 2, [v2])
    agent.stop()
    # The state a kill -9 leaves between writing the download and renaming it into place:
    # desired state 2 accepted, the artifact complete in staging, v1 still active.
    (rig.tmp / DEVICE / "staging" / f"{v2.sha256}.part").write_bytes(v2_data)
    (rig.tmp / DEVICE / "state.json").write_text(
        json.dumps({"seq": 2, "desired": json.loads(desired.model_dump_json())})
    )
    again = rig.start_agent()
    assert serving(again) == 1  # a verified model serves from the first moment
    assert active_bytes(again) == v1_data
    wait_until(lambda: serving(again) == 2, what="v2 from the staged file")
    assert not any(s == v2.sha256 for s, _ in rig.artifacts.requests)  # nothing downloaded


def test_temp_files_of_writes_a_kill_interrupted_are_removed_at_restart(rig: Rig) -> None:
    # A kill -9 inside write_atomic (between mkstemp and the rename) leaves its temp file;
    # benchmarks/chaos.py found one (.slots.json.XXXXXXXX) after 100 kills mid-install.
    # Nothing ever reads them: the next start removes them, and nothing else.
    agent = rig.start_agent()
    v1_data = install_v1(rig, agent)
    agent.stop()
    data_dir = rig.tmp / DEVICE
    sha = hashlib.sha256(v1_data).hexdigest()
    left = [
        data_dir / "models" / "fault" / ".slots.json._eg3hz37",
        data_dir / "models" / "fault" / f".{sha}.manifest.json.k2m9x0qa",
        data_dir / ".state.json.ab12cd34",
    ]
    for path in left:
        path.write_bytes(b'{"half": ')
    kept = data_dir / ".not-ours"
    kept.write_text("x")
    again = rig.start_agent()
    assert serving(again) == 1
    assert active_bytes(again) == v1_data
    assert not [path.name for path in left if path.exists()]
    assert kept.exists()


def test_telemetry_and_samples_wait_in_the_outbox_until_acked(rig: Rig) -> None:
    agent = rig.start_agent(sample_rate=1.0, samples_per_window=2)
    install_v1(rig, agent)
    for _ in range(5):
        predict_ok(agent)  # 3 rows each
    window = agent.call(agent.a.close_window())
    assert window is not None
    (model,) = window.models
    assert (model.requests, model.errors, model.version) == (15, 0, 1)
    assert sum(model.latency_counts) == 5
    for feature in model.features:
        assert sum(feature.counts) + feature.below + feature.above + feature.missing == 15
        assert feature.n == 15
    assert sum(model.predictions) == 15
    pending = {(i.channel, i.seq): i.payload for i in agent.a.outbox.pending()}
    assert set(pending) == {("telemetry", 1), ("samples", 1)}
    batch = SampleBatch.model_validate_json(pending[("samples", 1)])
    assert len(batch.rows) == 2  # capped per window
    # Published, but only an application-level ack removes them.
    wait_until(
        lambda: any(t.endswith("/telemetry") for t, _ in rig.publisher.received),
        what="telemetry published",
    )
    assert len(agent.a.outbox) == 2
    topic = rig.publisher.topics.device(DEVICE, Channel.ACK)
    for channel in ("telemetry", "samples"):
        rig.publisher.client.publish(
            topic, Ack(channel=channel, seqs=[1]).model_dump_json(), qos=1
        ).wait_for_publish(10)
    wait_until(lambda: len(agent.a.outbox) == 0, what="acked windows removed")
    # A malformed ack is dropped and counted, nothing else happens.
    rig.publisher.client.publish(topic, b"{nope", qos=1).wait_for_publish(10)
    wait_until(lambda: agent.a.updater.dropped_messages == 1, what="bad ack counted")


def test_each_window_is_sent_once_and_unacknowledged_ones_again_every_few_windows(
    rig: Rig,
) -> None:
    """On the shipped default (outbox_resend_windows = 5), with no ack coming: each window
    is published once when it closes, and at the fifth all that wait are published again.
    Publishing everything pending at every window multiplied a lagging control plane's
    load (issue 17: 100,000 devices)."""
    agent = rig.start_agent()
    assert agent.a.settings.outbox_resend_windows == 5
    install_v1(rig, agent)

    def sent() -> Counter[int]:
        return Counter(
            TelemetryWindow.model_validate_json(p).seq
            for t, p in list(rig.publisher.received)
            if t.endswith("/telemetry")
        )

    for _ in range(4):
        predict_ok(agent)
        agent.call(agent.a.close_window())
    wait_until(lambda: sent().total() == 4, what="four windows published")
    predict_ok(agent)
    agent.call(agent.a.close_window())  # the fifth: everything again
    wait_until(lambda: sent().total() == 9, what="the pending ones again")
    assert sent() == {1: 2, 2: 2, 3: 2, 4: 2, 5: 1}
    predict_ok(agent)
    agent.call(agent.a.close_window())
    wait_until(lambda: sent()[6] == 1, what="the sixth")
    assert sent().total() == 10


def test_an_unreachable_control_plane_is_retried_not_refused(rig: Rig) -> None:
    agent = rig.start_agent(download_attempts=1)
    install_v1(rig, agent)
    manifest, data = make_model(rig.model_key, version=2, seed=9)
    rig.artifacts.add(manifest.sha256, data, mode="down")
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [manifest]))
    wait_until(lambda: refused(agent, "download_failed", model_level=True), what="first try")
    assert agent.a.updater.slots["fault"].phase is Phase.DOWNLOADING  # not a refusal
    rig.artifacts.modes[manifest.sha256] = "normal"
    wait_until(lambda: serving(agent) == 2, what="v2 once the control plane is back")
