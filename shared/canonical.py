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


class _NotCanonical(Exception):  # noqa: N818  (internal: becomes CanonicalJSONError)
    """A value with no canonical form; ``where`` collects its path on the way out."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.where: list[str] = []  # innermost first


def _normalise(value: Any) -> Any:
    # No path is built on the way in (it cost more than the rest together: a desired
    # state has hundreds of values); one that fails gathers it on the way out, for free
    # until then (3.11's exceptions cost nothing unless raised).
    kind = type(value)  # exact types first: ABC checks cost more than the rest
    if kind is str or kind is bool or value is None:
        return value
    if kind is not dict and kind is not list and isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise _NotCanonical(f"integer {value} is outside ±(2**53-1)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotCanonical(f"{value!r} is not a finite number")
        return 0.0 if value == 0.0 else value
    if kind is dict or (kind is not list and isinstance(value, Mapping)):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotCanonical(f"object key {key!r} is not a string")
            try:
                out[key] = _normalise(item)
            except _NotCanonical as exc:
                exc.where.append(f".{key}")
                raise
        return out
    if kind is list or (isinstance(value, Sequence) and not isinstance(value, bytes | bytearray)):
        items = []
        for i, item in enumerate(value):
            try:
                items.append(_normalise(item))
            except _NotCanonical as exc:
                exc.where.append(f"[{i}]")
                raise
        return items
    raise _NotCanonical(f"{type(value).__name__} has no canonical JSON form")


def canonical_json(value: Any) -> bytes:
    """Return the canonical JSON bytes of ``value`` (see the module docstring)."""
    try:
        normalised = _normalise(value)
    except _NotCanonical as exc:
        path = "$" + "".join(reversed(exc.where))
        raise CanonicalJSONError(f"{path}: {exc.problem}") from None
    # json uses float.__repr__ (shortest round-trip) for floats; sort_keys sorts by code point.
    text = json.dumps(
        normalised, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")
