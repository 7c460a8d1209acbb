"""Errors of the ``shared`` package.

``SharedError`` is the base of everything raised here:

* ``CanonicalJSONError`` — a value that has no canonical JSON form (NaN, huge int, non-str key).
* ``SignatureError`` — a signature that does not verify, or a key that is not trusted.
* ``VerificationError`` — an artifact or manifest that fails a check; ``reason`` is a
  stable machine-readable code (e.g. ``sha256_mismatch``) for logs, exit codes and reports.
"""

from __future__ import annotations


class SharedError(Exception):
    """Base of every error raised by ``shared``."""


class CanonicalJSONError(SharedError, ValueError):
    """A value cannot be written as canonical JSON."""


class VerificationError(SharedError):
    """A check of the trust model failed; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class SignatureError(VerificationError):
    """A signature does not verify under the trusted key, or the key is unknown."""
