"""Errors of the control plane: what went wrong, in the domain's terms. Services raise
these; ``api/errors.py`` maps each kind to an HTTP status.

``ControlPlaneError`` is the base. An error carries the field it concerns (``loc``: a path
into what the caller gave, e.g. ``("plan", "stages", 1, "percent")``; services that know
where a value came from in a request may say so, e.g. ``("path", "name")``) and a stable
``code``, so an answer names the field and the rule it broke.
"""

from __future__ import annotations


class ControlPlaneError(Exception):
    code = "internal"

    def __init__(self, message: str, *, loc: tuple[str | int, ...] = (), code: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        if code is not None:
            self.code = code


class InvalidInputError(ControlPlaneError):
    """The request is well-formed but breaks a rule (bad CSV, unknown parameter, ...)."""

    code = "invalid"


class PayloadTooLargeError(ControlPlaneError):
    code = "too_large"


class UnauthorizedError(ControlPlaneError):
    """The credential is not (or no longer) good: unknown, revoked, expired, used up."""

    code = "unauthorized"


class ForbiddenError(ControlPlaneError):
    """The caller's token may not do this (e.g. a device token asking about another device)."""

    code = "forbidden"


class NotFoundError(ControlPlaneError):
    code = "not_found"


class ConflictError(ControlPlaneError):
    code = "conflict"


class UnavailableError(ControlPlaneError):
    """Something the request needs (the broker, say) does not answer now: try again."""

    code = "unavailable"


class NotInitialisedError(ControlPlaneError):
    """The data directory has no keys: ``edgefleet init`` was not run."""

    code = "not_initialised"


class JobFailedError(ControlPlaneError):
    """A training job step failed; the message is what the job reports."""

    code = "job_failed"
