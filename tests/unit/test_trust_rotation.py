"""The trust-store chain a device follows on a key rotation (pure: shared/trust.py)."""

from __future__ import annotations

import json

import pytest

from shared.errors import SignatureError
from shared.signing import KeyRole, SigningKey
from shared.trust import SignedTrustStore, TrustedKey, TrustStore, check_successor

MODEL, DEPLOYMENT, NEW_MODEL, STRANGER = (SigningKey.generate() for _ in range(4))


def store(version: int, *keys: tuple[KeyRole, SigningKey]) -> TrustStore:
    return TrustStore(
        version=version,
        keys=[TrustedKey.from_verify_key(role, key.verify_key) for role, key in keys],
    )


FIRST = store(1, (KeyRole.MODEL, MODEL), (KeyRole.DEPLOYMENT, DEPLOYMENT))
ROTATED = store(
    2, (KeyRole.MODEL, MODEL), (KeyRole.DEPLOYMENT, DEPLOYMENT), (KeyRole.MODEL, NEW_MODEL)
)


def test_the_first_version_reads_and_writes_as_before() -> None:
    assert "version" not in json.loads(FIRST.model_dump_json())  # byte-identical to v1 files
    assert TrustStore.model_validate_json(FIRST.model_dump_json()).version == 1


def test_a_rotation_signed_by_the_current_keys_is_followed_and_both_keys_verify() -> None:
    followed = check_successor(FIRST, SignedTrustStore.sign(ROTATED, [MODEL, DEPLOYMENT]))
    assert followed == ROTATED
    for key in (MODEL, NEW_MODEL):  # the window
        assert followed.key_for(KeyRole.MODEL, key.key_id) == key.verify_key
    retired = store(3, (KeyRole.DEPLOYMENT, DEPLOYMENT), (KeyRole.MODEL, NEW_MODEL))
    assert check_successor(followed, SignedTrustStore.sign(retired, [NEW_MODEL, DEPLOYMENT]))
    with pytest.raises(SignatureError) as caught:
        retired.key_for(KeyRole.MODEL, MODEL.key_id)
    assert caught.value.reason == "untrusted_key"


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (SignedTrustStore.sign(ROTATED, [STRANGER]), "trust_store_unsigned"),
        (SignedTrustStore.sign(ROTATED, [MODEL]), "trust_store_unsigned"),  # one role only
        (SignedTrustStore.sign(ROTATED, [NEW_MODEL, DEPLOYMENT]), "trust_store_unsigned"),
        (
            SignedTrustStore.sign(
                store(3, (KeyRole.MODEL, MODEL), (KeyRole.DEPLOYMENT, DEPLOYMENT)),
                [MODEL, DEPLOYMENT],
            ),
            "trust_store_version",  # a version skipped
        ),
        (
            SignedTrustStore.sign(store(2, (KeyRole.MODEL, MODEL)), [MODEL, DEPLOYMENT]),
            "trust_store_empty",  # no deployment key left
        ),
    ],
    ids=["unknown-key", "one-role", "new-key-only", "skipped-version", "empty-role"],
)
def test_what_the_current_keys_did_not_sign_is_refused(
    candidate: SignedTrustStore, reason: str
) -> None:
    with pytest.raises(SignatureError) as caught:
        check_successor(FIRST, candidate)
    assert caught.value.reason == reason


def test_a_tampered_document_is_refused_even_with_a_good_signature_beside() -> None:
    signed = SignedTrustStore.sign(ROTATED, [MODEL, DEPLOYMENT])
    swapped = store(
        2, (KeyRole.MODEL, STRANGER), (KeyRole.DEPLOYMENT, DEPLOYMENT), (KeyRole.MODEL, MODEL)
    )
    forged = SignedTrustStore(trust_store=swapped, signatures=signed.signatures)
    with pytest.raises(SignatureError) as caught:
        check_successor(FIRST, forged)
    assert caught.value.reason == "bad_signature"
