"""Content hashes. Streaming: callers feed chunks, so a 1 GB artifact never sits in memory."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class Sha256Stream:
    """Incremental sha256 that also counts bytes."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def sha256_chunks(chunks: Iterable[bytes]) -> tuple[str, int]:
    """Return ``(hex digest, total size)`` of the concatenated chunks."""
    stream = Sha256Stream()
    for chunk in chunks:
        stream.update(chunk)
    return stream.hexdigest(), stream.size


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sha256(value: str) -> bool:
    """True for a lowercase 64-hex-digit sha256 digest."""
    return bool(SHA256_RE.fullmatch(value))
