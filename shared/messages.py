"""Base classes for everything that crosses a process boundary.

Every wire document is a pydantic model that refuses unknown fields and is immutable;
top-level documents carry ``schema_version`` so a reader can refuse what it does not know.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION: Literal[1] = 1


class WireModel(BaseModel):
    """A strict, immutable wire model: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)
