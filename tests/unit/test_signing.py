import pytest

from shared.errors import SignatureError
from shared.hashing import sha256_bytes, sha256_chunks
from shared.signing import KeyRole, SigningKey, VerifyKey, key_id_of
from shared.trust import TrustedKey, TrustStore


def test_sign_and_verify() -> None:
    key = SigningKey.generate()
    signature = key.sign(b"payload")
    key.verify_key.verify(b"payload", signature)


def test_flipped_byte_in_payload_fails() -> None:
    key = SigningKey.generate()
    signature = key.sign(b"payload")
    with pytest.raises(SignatureError) as info:
        key.verify_key.verify(b"paylaod", signature)
    assert info.value.reason == "bad_signature"


def test_wrong_key_fails() -> None:
    signature = SigningKey.generate().sign(b"payload")
    with pytest.raises(SignatureError, match="bad_signature"):
        SigningKey.generate().verify_key.verify(b"payload", signature)


def test_garbage_signature_is_a_signature_error() -> None:
    key = SigningKey.generate()
    with pytest.raises(SignatureError, match="bad_encoding"):
        key.verify_key.verify(b"payload", "not base64!!")


def test_key_id_is_hash_of_raw_public_key_and_pem_round_trips() -> None:
    key = SigningKey.generate()
    assert (
        key.key_id
        == key_id_of(key.verify_key.public_raw)
        == sha256_bytes(key.verify_key.public_raw)
    )
    again = SigningKey.from_pem(key.to_pem())
    assert again.key_id == key.key_id
    assert "PRIVATE" not in repr(key)


def test_trust_store_lookup_by_role_and_id() -> None:
    model, deployment = SigningKey.generate(), SigningKey.generate()
    store = TrustStore(
        keys=[
            TrustedKey.from_verify_key(KeyRole.MODEL, model.verify_key),
            TrustedKey.from_verify_key(KeyRole.DEPLOYMENT, deployment.verify_key),
        ]
    )
    assert store.key_for(KeyRole.MODEL, model.key_id) == model.verify_key
    with pytest.raises(SignatureError, match="untrusted_key"):
        store.key_for(KeyRole.MODEL, deployment.key_id)  # right key, wrong role
    assert TrustStore.model_validate_json(store.model_dump_json()) == store


def test_trust_store_refuses_mismatched_key_id() -> None:
    entry = TrustedKey.from_verify_key(KeyRole.MODEL, SigningKey.generate().verify_key)
    data = entry.model_dump()
    data["key_id"] = "0" * 64
    with pytest.raises(ValueError, match="key_id"):
        TrustedKey.model_validate(data)


def test_verify_key_must_be_32_bytes() -> None:
    with pytest.raises(SignatureError):
        VerifyKey(b"short")


def test_streaming_hash_matches_one_shot() -> None:
    data = bytes(range(256)) * 1000
    digest, size = sha256_chunks(data[i : i + 4096] for i in range(0, len(data), 4096))
    assert (digest, size) == (sha256_bytes(data), len(data))
