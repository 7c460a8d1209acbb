"""Errors of the control plane. Services raise these; routes map them to HTTP.

``ControlPlaneError`` is the base. Each subclass names its HTTP status and carries the
field it concerns (``loc``) and a stable ``code``, so an API answer names the field and
the rule it broke.
"""

from __future__ import annotations


class ControlPlaneError(Exception):
    status_code = 500
    code = "internal"

    def __init__(self, message: str, *, loc: tuple[str | int, ...] = (), code: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        if code is not None:
            self.code = code


class InvalidInputError(ControlPlaneError):
    """The request is well-formed but breaks a rule (bad CSV, unknown parameter, ...)."""

    status_code = 422
    code = "invalid"


class PayloadTooLargeError(ControlPlaneError):
    status_code = 413
    code = "too_large"


class ForbiddenError(ControlPlaneError):
    """The caller's token may not do this (e.g. a device token asking about another device)."""

    status_code = 403
    code = "forbidden"


class NotFoundError(ControlPlaneError):
    status_code = 404
    code = "not_found"


class ConflictError(ControlPlaneError):
    status_code = 409
    code = "conflict"


class NotInitialisedError(ControlPlaneError):
    """The data directory has no keys: ``edgefleet init`` was not run."""

    code = "not_initialised"


class JobFailedError(ControlPlaneError):
    """A training job step failed; the message is what the job reports."""

    code = "job_failed"


class ChallengerRefusedError(ControlPlaneError):
    """A retrained model did not beat the champion (or there was too little data to judge):
    nothing is registered, and the job ends ``succeeded`` at stage ``refused``."""

    code = "challenger_refused"
