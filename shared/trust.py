"""The trust store: the public keys an agent (or ``edgefleet verify``) trusts, by role.

``GET /api/v1/keys`` serves exactly this document, and agents load it from a file.

Keys rotate as in TUF's root rotation: each new version of the trust store is signed by
the keys the version before it trusts, one of each role, and a device moves one version
at a time (``check_successor``), so a trust store signed by any other key changes nothing. A
rotation adds the new key beside the old one (both verify: the window), a retirement
then drops the old one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shared.canonical import canonical_json
from shared.errors import SignatureError
from shared.signing import KeyRole, SigningKey, VerifyKey, b64decode_strict, b64encode, key_id_of
from shared.wire import SCHEMA_VERSION, Version, WireModel

MAX_CHAIN = 100  # trust-store versions a device takes in one go


class TrustedKey(WireModel):
    """One trusted public key."""

    role: KeyRole = Field(description="What the key may sign: `model` manifests or `deployment`s.")
    algorithm: Literal["ed25519"] = Field(default="ed25519", description="Signature algorithm.")
    key_id: str = Field(description="sha256 (hex) of the raw public key.")
    public_key: str = Field(description="The raw 32-byte public key, standard base64.")

    @model_validator(mode="after")
    def _key_id_matches(self) -> TrustedKey:
        raw = b64decode_strict(self.public_key, what="public_key")
        if len(raw) != 32:
            raise ValueError("public_key must be 32 bytes (Ed25519)")
        if key_id_of(raw) != self.key_id:
            raise ValueError("key_id is not the sha256 of public_key")
        return self

    @classmethod
    def from_verify_key(cls, role: KeyRole, key: VerifyKey) -> TrustedKey:
        return cls(role=role, key_id=key.key_id, public_key=b64encode(key.public_raw))

    def verify_key(self) -> VerifyKey:
        return VerifyKey(b64decode_strict(self.public_key, what="public_key"))


class TrustStore(WireModel):
    """Public keys trusted for each role (several per role allow rotation)."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Format version.")
    version: Version = Field(
        default=1,
        exclude_if=lambda value: value == 1,
        description="Grows by one at each key rotation or retirement (absent: 1).",
    )
    keys: list[TrustedKey] = Field(max_length=32, description="Trusted keys, any number per role.")

    def key_for(self, role: KeyRole, key_id: str) -> VerifyKey:
        """The trusted key of ``role`` with ``key_id``, or ``SignatureError('untrusted_key')``."""
        for key in self.keys:
            if key.role == role and key.key_id == key_id:
                return key.verify_key()
        raise SignatureError("untrusted_key", f"no trusted {role.value} key with id {key_id[:16]}")

    def key_ids(self, role: KeyRole) -> list[str]:
        return [key.key_id for key in self.keys if key.role == role]


class TrustSignature(WireModel):
    key_id: str = Field(description="A key the previous trust-store version trusts.")
    signature: str = Field(description="Ed25519 over the canonical JSON of `trust_store`.")


class SignedTrustStore(WireModel):
    """One version of the trust store, signed by the keys of the version before it (version
    1 by its own keys: it is the root a device is given when it enrolls)."""

    trust_store: TrustStore = Field(description="The trust store of this version.")
    signatures: list[TrustSignature] = Field(
        max_length=32, description="By the keys of the version before, one of each role at least."
    )

    def payload(self) -> bytes:
        return canonical_json(self.trust_store.model_dump(mode="json"))

    @classmethod
    def sign(cls, trust_store: TrustStore, keys: list[SigningKey]) -> SignedTrustStore:
        payload = canonical_json(trust_store.model_dump(mode="json"))
        return cls(
            trust_store=trust_store,
            signatures=[TrustSignature(key_id=k.key_id, signature=k.sign(payload)) for k in keys],
        )


def check_successor(current: TrustStore, candidate: SignedTrustStore) -> TrustStore:
    """``candidate``'s trust store, if it is the next version and carries a valid signature
    by a key ``current`` trusts for each role; else ``SignatureError`` (nothing changes)."""
    new = candidate.trust_store
    if new.version != current.version + 1:
        raise SignatureError(
            "trust_store_version",
            f"trust store version {new.version} does not follow {current.version}",
        )
    for role in KeyRole:
        if not new.key_ids(role):
            raise SignatureError("trust_store_empty", f"trust store names no {role.value} key")
        trusted = set(current.key_ids(role))
        valid = False
        for signature in candidate.signatures:
            if signature.key_id in trusted:
                current.key_for(role, signature.key_id).verify(
                    candidate.payload(), signature.signature
                )  # a bad signature by a trusted key is an attack: refuse the whole document
                valid = True
        if not valid:
            raise SignatureError(
                "trust_store_unsigned",
                f"trust store version {new.version} is not signed by a trusted "
                f"{role.value} key of version {current.version}",
            )
    return new
