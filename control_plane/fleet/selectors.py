"""Label selectors over device labels (pure).

Syntax: comma-separated terms, all of which must hold: ``key=value``, ``key!=value``,
``key`` (the label exists), ``!key`` (it does not). The empty selector matches every device.
Example: ``site=berlin,hw!=rpi3,canary``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from control_plane.errors import InvalidInputError

_KEY = r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}"
_TERM = re.compile(rf"^(?P<neg>!)?(?P<key>{_KEY})(?:(?P<op>!=|=)(?P<value>[^,=!]{{0,63}}))?$")


@dataclass(frozen=True)
class Term:
    key: str
    op: str  # "=", "!=", "exists", "absent"
    value: str | None = None

    def matches(self, labels: dict[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "absent":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


@dataclass(frozen=True)
class Selector:
    terms: tuple[Term, ...]
    text: str

    def matches(self, labels: dict[str, str]) -> bool:
        return all(term.matches(labels) for term in self.terms)


def parse_selector(text: str, *, loc: tuple[str | int, ...] = ("selector",)) -> Selector:
    """Parse a selector, or raise ``InvalidInputError`` naming the bad term."""
    terms = []
    for raw in (t.strip() for t in text.split(",")) if text.strip() else ():
        match = _TERM.fullmatch(raw)
        if match is None or (match["neg"] and match["op"]):
            raise InvalidInputError(
                f"bad selector term {raw!r}: use key=value, key!=value, key or !key",
                loc=loc,
                code="bad_selector",
            )
        if match["op"]:
            terms.append(Term(match["key"], match["op"], match["value"]))
        else:
            terms.append(Term(match["key"], "absent" if match["neg"] else "exists"))
    return Selector(tuple(terms), ",".join(sorted(t.strip() for t in text.split(",") if t.strip())))
