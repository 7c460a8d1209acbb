import json

import pytest
from pydantic import ValidationError

from shared.errors import SignatureError, VerificationError
from shared.manifest import ImportSource, ModelManifest
from shared.signing import KeyRole, SigningKey
from shared.trust import TrustedKey, TrustStore
from shared.verification import check_artifact, verify_manifest
from tests.factories import make_manifest


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def trust(key: SigningKey) -> TrustStore:
    return TrustStore(keys=[TrustedKey.from_verify_key(KeyRole.MODEL, key.verify_key)])


def test_signed_manifest_verifies_after_a_json_round_trip(
    key: SigningKey, trust: TrustStore
) -> None:
    manifest = make_manifest(key)
    assert manifest.key_id == key.key_id
    # Re-indented, re-ordered JSON still verifies: the signature is over the canonical form.
    reordered = json.dumps(dict(reversed(json.loads(manifest.model_dump_json()).items())), indent=3)
    verify_manifest(ModelManifest.model_validate_json(reordered), trust)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("version",), 2),
        (("sha256",), "cd" * 32),
        (("size",), 1235),
        (("input", "features"), ["a", "c"]),
        (("golden", "atol"), 1.0),
        (("reference", "features", 0, "bin_edges"), [0.0, 0.6, 1.0]),
        (("golden", "vectors", 0, "input"), [0.1, 0.30000001192092899]),
    ],
)
def test_any_edit_after_signing_is_detected(
    key: SigningKey, trust: TrustStore, path: tuple[str | int, ...], value: object
) -> None:
    data = json.loads(make_manifest(key).model_dump_json())
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(SignatureError, match="bad_signature"):
        verify_manifest(ModelManifest.model_validate_json(json.dumps(data)), trust)


def test_signature_by_unknown_key_is_refused(trust: TrustStore) -> None:
    with pytest.raises(SignatureError, match="untrusted_key"):
        verify_manifest(make_manifest(SigningKey.generate()), trust)


def test_deployment_key_cannot_sign_models(key: SigningKey) -> None:
    only_deployment = TrustStore(
        keys=[TrustedKey.from_verify_key(KeyRole.DEPLOYMENT, key.verify_key)]
    )
    with pytest.raises(SignatureError, match="untrusted_key"):
        verify_manifest(make_manifest(key), only_deployment)


def test_unknown_fields_and_schema_versions_are_refused(key: SigningKey) -> None:
    data = json.loads(make_manifest(key).model_dump_json())
    with pytest.raises(ValidationError):
        ModelManifest.model_validate({**data, "extra": 1})
    with pytest.raises(ValidationError):
        ModelManifest.model_validate({**data, "schema_version": 2})


def test_reference_shape_is_checked(key: SigningKey) -> None:
    data = json.loads(make_manifest(key).model_dump_json())
    data["reference"]["features"][0]["counts"] = [1]
    with pytest.raises(ValidationError, match="counts"):
        ModelManifest.model_validate_json(json.dumps(data))


def test_check_artifact(key: SigningKey) -> None:
    manifest = make_manifest(key, sha256="ab" * 32, size=10)
    check_artifact(manifest, "ab" * 32, 10)
    with pytest.raises(VerificationError, match="size_mismatch"):
        check_artifact(manifest, "ab" * 32, 11)
    with pytest.raises(VerificationError, match="sha256_mismatch"):
        check_artifact(manifest, "ac" * 32, 10)


def test_an_import_source_is_signed_and_a_trained_model_carries_none(
    key: SigningKey, trust: TrustStore
) -> None:
    """A model trained here has no ``source`` key (not null): its manifest and the bytes its
    signature covers are the same as before imports existed, so agents that predate them
    still accept it. An imported model's source is covered by the signature."""
    trained = make_manifest(key)
    assert "source" not in json.loads(trained.model_dump_json())["lineage"]
    assert b'"source"' not in trained.signed_payload()
    source = ImportSource(format="onnx", sha256="ef" * 32, filename="m.onnx")
    unsigned = trained.model_copy(
        update={"lineage": trained.lineage.model_copy(update={"source": source})}
    )
    imported = unsigned.signed_with(key)
    again = ModelManifest.model_validate_json(imported.model_dump_json())
    assert again.lineage.source == source
    verify_manifest(again, trust)
    forged = json.loads(imported.model_dump_json())
    forged["lineage"]["source"]["filename"] = "other.onnx"
    with pytest.raises(SignatureError):
        verify_manifest(ModelManifest.model_validate_json(json.dumps(forged)), trust)
