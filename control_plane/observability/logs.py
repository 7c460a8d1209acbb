"""The control plane's logging: its own loggers and uvicorn's through one handler, as text
(default) or one JSON object a line. A line about a device, rollout, model or job carries
``device_id``, ``rollout_id``, ``model``, ``version``, ``job_id`` as fields (``about``), so
logs can be filtered without parsing messages. Nothing secret is logged: messages name
devices and models, never tokens, passwords or URLs with credentials."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

FIELDS = ("device_id", "rollout_id", "model", "version", "job_id")
LogFormat = Literal["text", "json"]


def about(
    *,
    device_id: str | None = None,
    rollout_id: str | None = None,
    model: str | None = None,
    version: int | None = None,
    job_id: int | None = None,
) -> dict[str, Any]:
    """``extra=`` for a log call: the fields that say what the line is about."""
    given = {
        "device_id": device_id,
        "rollout_id": rollout_id,
        "model": model,
        "version": version,
        "job_id": job_id,
    }
    return {k: v for k, v in given.items() if v is not None}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the fields,
    and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_config(level: str = "info", fmt: LogFormat = "text") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the server (uvicorn takes it as ``log_config``):
    the control plane's loggers at ``level``, uvicorn's error and access logs with them."""
    formatter = {"()": JsonFormatter if fmt == "json" else TextFormatter}
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    logger = {"handlers": ["main"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"main": handler},
        "loggers": {name: logger for name in ("control_plane", "uvicorn", "uvicorn.access")},
    }
