"""The agent's errors: one base, so a caller can tell the agent's refusals from bugs. Each
also keeps the built-in base its callers catch (``ValueError`` for bad inputs, ...)."""

from __future__ import annotations


class AgentError(Exception):
    """Base of the device agent's errors."""
