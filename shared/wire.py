"""Base classes of every wire document: strict, immutable pydantic models; signed ones carry an
Ed25519 signature over the canonical JSON of their other fields."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from shared.canonical import canonical_json
from shared.signing import SigningKey, VerifyKey

SCHEMA_VERSION: Literal[1] = 1
# Integers every JSON reader reads back exactly (IEEE doubles): sequence numbers, versions
# and counts stay within ±(2^53 - 1), and the database stores them as BIGINT.
MAX_SAFE_INT = 2**53 - 1

Seq = Annotated[int, Field(ge=1, le=MAX_SAFE_INT)]
Count = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]
Version = Annotated[int, Field(ge=1, le=MAX_SAFE_INT)]


class WireModel(BaseModel):
    """A strict, immutable wire model: unknown fields are an error, nothing is coerced
    (``"7"`` is not 7, ``true`` is not 1) and floats are finite (no NaN or Infinity, which
    could be stored but not read back)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SignedDocument(WireModel):
    """A document carrying an Ed25519 signature over its canonical JSON."""

    key_id: str = Field(description="Key id (sha256 of the raw public key) of the signer.")
    signature: str = Field(description="Ed25519 over the canonical JSON of all other fields.")

    def signed_payload(self) -> bytes:
        """The canonical bytes the signature covers."""
        return canonical_json(self.model_dump(mode="json", exclude={"signature"}))

    def signed_with(self, key: SigningKey) -> Self:
        """A copy carrying ``key``'s id and signature."""
        unsigned = self.model_copy(update={"key_id": key.key_id, "signature": ""})
        return unsigned.model_copy(update={"signature": key.sign(unsigned.signed_payload())})

    def verify_signature(self, key: VerifyKey) -> None:
        """Raise ``SignatureError`` unless the signature holds under ``key``."""
        key.verify(self.signed_payload(), self.signature)
