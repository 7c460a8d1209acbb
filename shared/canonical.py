"""Canonical JSON: the exact bytes that get signed.

The rule (both sides implement it through this one function):

* UTF-8, no BOM; object keys sorted by Unicode code point; separators ``,`` and ``:``
  with no whitespace; non-ASCII characters written as themselves, not ``\\u`` escapes.
* Only ``dict`` (string keys), ``list``/``tuple``, ``str``, ``bool``, ``None``, ``int`` and
  ``float``.
* Integers must lie within ±(2**53 − 1), so that every JSON reader (including ones that
  hold numbers as doubles) reads back the same value.
* Floats must be finite (NaN and ±Infinity have no JSON form and are refused). A float is
  written as the *shortest* decimal that reads back to the same IEEE-754 double (Python's
  ``repr``), so ``parse(write(x)) == x`` bit for bit; ``-0.0`` is written as ``0.0``.
  A float keeps its decimal point or exponent (``1.0``, not ``1``), so a reader that
  distinguishes ints from floats sees the same types again.

A signature is always checked over the canonical form of the *parsed* document (never
over the received bytes), so whitespace or key order on the wire does not matter, but
every value does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from shared.errors import CanonicalJSONError

MAX_SAFE_INT = 2**53 - 1


def _normalise(value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise CanonicalJSONError(f"{path}: integer {value} is outside ±(2**53-1)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalJSONError(f"{path}: {value!r} is not a finite number")
        return 0.0 if value == 0.0 else value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(f"{path}: object key {key!r} is not a string")
            out[key] = _normalise(item, f"{path}.{key}")
        return out
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_normalise(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise CanonicalJSONError(f"{path}: {type(value).__name__} has no canonical JSON form")


def canonical_json(value: Any) -> bytes:
    """Return the canonical JSON bytes of ``value`` (see the module docstring)."""
    normalised = _normalise(value, "$")
    # json uses float.__repr__ (shortest round-trip) for floats; sort_keys sorts by code point.
    text = json.dumps(
        normalised, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")
