"""The control plane signs a stage's desired states in a batch, computing each shared
deployment's canonical JSON once: the bytes must be exactly the ones every verifier
computes (``SignedDocument.signed_payload``), whatever the document holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.fleet.deployments import _BatchSigner
from shared.manifest import ModelManifest
from shared.messages import DeploymentModel, DesiredState
from shared.signing import SigningKey
from simulator.rig.models import make_model

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def manifests() -> list[ModelManifest]:
    key = SigningKey.generate()
    return [make_model(key, name=name, rows=100)[0] for name in ("fault", "other")]


def document(models: list[DeploymentModel], **extra: object) -> DesiredState:
    fields: dict[str, object] = {
        "device_id": "dev-a",
        "seq": 7,
        "models": models,
        "issued_at": NOW,
        "expires_at": NOW + timedelta(days=7),
        "key_id": "",
        "signature": "",
        **extra,
    }
    return DesiredState.model_validate(fields)


def test_a_batch_signs_the_bytes_every_verifier_computes(manifests: list[ModelManifest]) -> None:
    key = SigningKey.generate()
    shared = DeploymentModel(manifest=manifests[0], rollout_id="r1", stage="10 % — canary")
    other = DeploymentModel(manifest=manifests[1])
    documents = [
        document([]),
        document([shared]),
        document([shared, other], mirrors=["https://m.example/b"], trust_version=3),
        document([shared], device_id="dev-b", seq=8),  # the shared part again, from the cache
        document([DeploymentModel(manifest=manifests[0], rollout_id="r2", stage="default")]),
    ]
    signer = _BatchSigner(key)
    for unsigned in documents:
        signed = signer.sign(unsigned)
        assert signer.payload(signed) == signed.signed_payload()
        signed.verify_signature(key.verify_key)
        assert signed == unsigned.signed_with(key)  # Ed25519 is deterministic
