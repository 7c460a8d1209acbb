"""``edgefleet agent enroll``: join a fleet with a bootstrap token and write the agent's
config and trust store, with no hand edits.

1. ``POST /api/v1/enroll`` with the bootstrap token: the device and its own token. The
   config (with that token, mode 0600) is written at once, so an interrupted enrollment
   resumes from it instead of spending another use of the bootstrap token.
2. ``GET /api/v1/enrollment`` with the device's token until an operator has accepted it
   and its broker account exists (``ready``), or it is rejected, or the wait is over.
3. ``GET /api/v1/keys`` over the same verified connection: the trust store.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.runtime import https_context
from shared.broker_address import parse_broker_urls
from shared.trust import TrustStore


class EnrollError(Exception):
    """Enrollment failed or was refused; ``exit_code`` says how (1 refused, 3 still pending)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Enrollment:
    url: str
    device_id: str
    broker_url: str
    config: Path
    data_dir: Path
    trust_store: Path
    labels: dict[str, str]
    ca_file: Path | None = None


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json()["detail"]
        return str(detail[0]["msg"] if isinstance(detail, list) else detail)
    except (ValueError, KeyError, IndexError, TypeError):
        return response.text[:200]


def _config_text(plan: Enrollment, token: str) -> str:
    values: dict[str, Any] = {
        "device_id": plan.device_id,
        "broker_url": plan.broker_url,
        "control_plane_url": plan.url,
        "token": token,
        "trust_store": str(plan.trust_store),
        "data_dir": str(plan.data_dir),
    }
    if plan.ca_file is not None:
        values["tls_ca_file"] = str(plan.ca_file)
    lines = ["# Written by `edgefleet agent enroll`; `edgefleet agent --print-config` lists"]
    lines.append("# every other setting and its default.")
    lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    if plan.labels:
        lines += ["", "[labels]", *(f"{k} = {json.dumps(v)}" for k, v in plan.labels.items())]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _saved_token(plan: Enrollment) -> str | None:
    """The token of an enrollment begun before with this config, or ``None`` (no config).
    A config for another device is never overwritten."""
    if not plan.config.exists():
        return None
    saved = tomllib.loads(plan.config.read_text())
    if saved.get("device_id") != plan.device_id or not isinstance(saved.get("token"), str):
        raise EnrollError(f"{plan.config} exists and is not this device's enrollment", 2)
    return str(saved["token"])


def enroll(
    plan: Enrollment,
    bootstrap_token: str,
    *,
    wait_seconds: float,
    poll_seconds: float = 2.0,
    say: Callable[[str], None] = print,
) -> None:
    parse_broker_urls(plan.broker_url)  # ValueError: a clear message before anything is spent
    with httpx.Client(
        base_url=plan.url + "/api/v1", verify=https_context(plan.ca_file), timeout=30
    ) as client:
        token = _saved_token(plan)
        if token is None:
            response = client.post(
                "/enroll",
                json={"device_id": plan.device_id, "labels": plan.labels},
                headers={"Authorization": f"Bearer {bootstrap_token}"},
            )
            if response.status_code != 201:
                raise EnrollError(
                    f"enrollment refused ({response.status_code}): {_detail(response)}"
                )
            token = str(response.json()["token"])
            _write_private(plan.config, _config_text(plan, token))
            say(f"enrolled {plan.device_id}: {response.json()['admission']}")
        else:
            say(f"resuming the enrollment of {plan.device_id} saved in {plan.config}")
        _wait_ready(client, token, wait_seconds, poll_seconds, say)
        keys = client.get("/keys")
        keys.raise_for_status()
        TrustStore.model_validate_json(keys.content)
        plan.trust_store.parent.mkdir(parents=True, exist_ok=True)
        plan.trust_store.write_bytes(keys.content)
    say(f"ready: edgefleet agent --config {plan.config}")


def _wait_ready(
    client: httpx.Client,
    token: str,
    wait_seconds: float,
    poll_seconds: float,
    say: Callable[[str], None],
) -> None:
    deadline = time.monotonic() + wait_seconds
    told = None
    while True:
        admission, ready = _check_in(client, token)
        if ready:
            return
        if admission == "rejected":
            raise EnrollError("an operator rejected this device")
        if admission != told:
            told = admission
            say(WAITING.get(admission, f"{admission}: trying again"))
        if time.monotonic() >= deadline:
            raise EnrollError(f"still {admission}; run the same command again to resume", 3)
        time.sleep(poll_seconds)


WAITING = {
    "pending": "pending: waiting for an operator (edgefleet devices approve ID)",
    "accepted": "accepted: waiting for the broker account",
}


def _check_in(client: httpx.Client, token: str) -> tuple[str, bool]:
    """(admission, ready). What the control plane cannot answer yet (the network; 503: the
    broker did not confirm the account) is "not ready", to be asked again."""
    try:
        response = client.get("/enrollment", headers={"Authorization": f"Bearer {token}"})
    except httpx.TransportError as exc:
        return f"unreachable ({type(exc).__name__})", False
    if response.status_code == 503:
        return "accepted", False
    if response.status_code != 200:
        raise EnrollError(f"check-in refused ({response.status_code}): {_detail(response)}")
    status = response.json()
    return str(status["admission"]), bool(status["ready"])
