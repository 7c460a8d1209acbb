"""The trust store: the public keys an agent (or ``edgefleet verify``) trusts, by role.

``GET /api/v1/keys`` serves exactly this document, and agents load it from a file.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shared.errors import SignatureError
from shared.signing import KeyRole, VerifyKey, b64decode_strict, b64encode, key_id_of
from shared.wire import SCHEMA_VERSION, WireModel


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
    keys: list[TrustedKey] = Field(description="Trusted keys, any number per role.")

    def key_for(self, role: KeyRole, key_id: str) -> VerifyKey:
        """The trusted key of ``role`` with ``key_id``, or ``SignatureError('untrusted_key')``."""
        for key in self.keys:
            if key.role == role and key.key_id == key_id:
                return key.verify_key()
        raise SignatureError("untrusted_key", f"no trusted {role.value} key with id {key_id[:16]}")
