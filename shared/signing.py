"""Ed25519 signing and verification with key ids.

A key id is the sha256 (hex) of the raw 32-byte public key, so it names the key itself
and cannot be chosen by whoever presents a signature. Signatures travel as standard
base64 of the 64 raw bytes.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared.errors import SignatureError
from shared.hashing import sha256_bytes


class KeyRole(StrEnum):
    """The two signing roles of the trust model."""

    MODEL = "model"
    DEPLOYMENT = "deployment"


def key_id_of(public_raw: bytes) -> str:
    """Key id: sha256 hex of the raw public key."""
    return sha256_bytes(public_raw)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: str, *, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise SignatureError("bad_encoding", f"{what} is not valid base64") from exc


@dataclass(frozen=True)
class VerifyKey:
    """A public Ed25519 key."""

    public_raw: bytes

    def __post_init__(self) -> None:
        if len(self.public_raw) != 32:
            raise SignatureError("bad_key", "an Ed25519 public key has 32 bytes")

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_raw)

    def verify(self, payload: bytes, signature_b64: str) -> None:
        """Raise ``SignatureError`` unless ``signature_b64`` signs ``payload`` with this key."""
        signature = b64decode_strict(signature_b64, what="signature")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_raw).verify(signature, payload)
        except InvalidSignature as exc:
            raise SignatureError(
                "bad_signature", f"signature does not verify under key {self.key_id[:16]}"
            ) from exc


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key. Never logged, never sent."""

    _private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError("bad_key", "the private key is not an Ed25519 key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def verify_key(self) -> VerifyKey:
        raw = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return VerifyKey(raw)

    @property
    def key_id(self) -> str:
        return self.verify_key.key_id

    def sign(self, payload: bytes) -> str:
        return b64encode(self._private.sign(payload))

    def __repr__(self) -> str:  # keep private material out of logs and tracebacks
        return f"SigningKey(key_id={self.key_id[:16]}…)"
