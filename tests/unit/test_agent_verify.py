from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.config import DEFAULT_CONFIG, load_agent_settings
from agent.verify import Accepted, Decision, check_desired, parse_desired
from shared.broker_address import parse_broker_url
from shared.errors import VerificationError
from shared.messages import DesiredState
from shared.signing import KeyRole, SigningKey
from shared.trust import TrustedKey, TrustStore
from tests.factories import make_manifest

KEY = SigningKey.generate()
TRUST = TrustStore(
    keys=[
        TrustedKey.from_verify_key(KeyRole.DEPLOYMENT, KEY.verify_key),
        TrustedKey.from_verify_key(KeyRole.MODEL, KEY.verify_key),
    ]
)
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)


def desired(
    seq: int = 2,
    device: str = "dev-a",
    key: SigningKey = KEY,
    expires: timedelta = timedelta(hours=1),
) -> DesiredState:
    from shared.messages import DeploymentModel

    return DesiredState(
        device_id=device,
        seq=seq,
        models=[DeploymentModel(manifest=make_manifest(KEY))],
        issued_at=NOW - timedelta(minutes=1),
        expires_at=NOW + expires,
        key_id="",
        signature="",
    ).signed_with(key)


def check(d: DesiredState, accepted: Accepted | None = None) -> Decision:
    return check_desired(d, trust=TRUST, device_id="dev-a", accepted=accepted, now=NOW)


def test_apply_reapply_and_replay() -> None:
    first = desired(seq=2)
    assert check(first) is Decision.APPLY
    accepted = Accepted(seq=2, signature=first.signature)
    assert check(first, accepted) is Decision.REAPPLY  # the retained one, seen again
    for seq in (1, 2):
        with pytest.raises(VerificationError, match="replay"):
            check(desired(seq=seq, expires=timedelta(hours=2)), accepted)
    assert check(desired(seq=3), accepted) is Decision.APPLY


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (desired(device="dev-b"), "wrong_device"),
        (desired(key=SigningKey.generate()), "untrusted_key"),
        (desired(expires=timedelta(seconds=-1)), "expired"),
        (desired().model_copy(update={"seq": 9}), "bad_signature"),
    ],
)
def test_refusals(document: DesiredState, reason: str) -> None:
    with pytest.raises(VerificationError) as info:
        check(document)
    assert info.value.reason == reason


def test_parse_caps_and_schema() -> None:
    with pytest.raises(VerificationError, match="too_large"):
        parse_desired(b"x" * 101, 100)
    with pytest.raises(VerificationError, match="malformed"):
        parse_desired(b"{not json", 1000)
    text = desired().model_dump_json().replace('"schema_version":1', '"schema_version":2')
    with pytest.raises(VerificationError, match="schema_version"):
        parse_desired(text.encode(), 10**6)


def test_default_config_parses_and_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(DEFAULT_CONFIG)
    settings = load_agent_settings(config)
    assert settings.device_id == "dev-001"
    assert settings.labels == {"site": "berlin", "hw": "rpi4"}
    monkeypatch.setenv("EDGEFLEET_AGENT_WINDOW_SECONDS", "5")
    assert load_agent_settings(config).window_seconds == 5


def test_broker_urls() -> None:
    plain = parse_broker_url("mqtt://dev-1:p%40ss@broker.local")
    assert (plain.host, plain.port, plain.username, plain.password, plain.tls) == (
        "broker.local",
        1883,
        "dev-1",
        "p@ss",
        False,
    )
    assert parse_broker_url("mqtts://h").port == 8883
    with pytest.raises(ValueError, match="mqtt://"):
        parse_broker_url("http://h")
