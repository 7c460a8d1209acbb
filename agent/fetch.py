"""The agent's HTTP to the control plane: artifact downloads — resumable (Range), capped at
the declared size, bounded by a deadline and a minimum throughput, so neither an endless
stream nor a trickle can hold a device hostage — and the device's sequence floor."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import TypeAdapter, ValidationError

from shared.errors import VerificationError
from shared.hashing import Sha256Stream
from shared.messages import SequenceFloor
from shared.trust import SignedTrustStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadRules:
    max_bytes: int
    deadline_seconds: float
    min_bytes_per_second: int
    grace_seconds: float
    attempts: int


class _RetryError(Exception):
    """A transient failure: resume with another attempt."""


async def fetch_artifact(
    client: httpx.AsyncClient, url: str, part: Path, *, size: int, rules: DownloadRules
) -> None:
    """Download ``url`` into ``part`` until it holds exactly ``size`` bytes, resuming what an
    earlier attempt (or an earlier process) left there. Raises ``VerificationError``."""
    if size > rules.max_bytes:
        raise VerificationError("too_large", f"{size} bytes declared; the cap is {rules.max_bytes}")
    try:
        async with asyncio.timeout(rules.deadline_seconds):
            await _attempts(client, url, part, size, rules)
    except TimeoutError as exc:
        raise VerificationError(
            "download_timeout", f"not complete within {rules.deadline_seconds:g} s"
        ) from exc


async def _attempts(
    client: httpx.AsyncClient, url: str, part: Path, size: int, rules: DownloadRules
) -> None:
    last_error = "no attempt"
    for attempt in range(rules.attempts):
        if attempt:
            await asyncio.sleep(min(10.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0))  # noqa: S311
        try:
            if await _one_attempt(client, url, part, size, rules):
                return
            last_error = "the connection closed before the end"
        except _RetryError as exc:
            last_error = str(exc)
        except httpx.HTTPError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        log.info("download of %s: attempt %d failed: %s", url, attempt + 1, last_error)
    raise VerificationError(
        "download_failed", f"{rules.attempts} attempts failed; last: {last_error}"
    )


async def _one_attempt(
    client: httpx.AsyncClient, url: str, part: Path, size: int, rules: DownloadRules
) -> bool:
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return True
    headers = {"Range": f"bytes={have}-"} if have else {}
    timeout = httpx.Timeout(rules.grace_seconds)
    async with client.stream("GET", url, headers=headers, timeout=timeout) as response:
        if response.status_code == 416:
            part.unlink(missing_ok=True)
            raise _RetryError("range not satisfiable; starting over")
        if response.status_code in (401, 403, 404):
            raise VerificationError("http_error", f"GET {url}: HTTP {response.status_code}")
        if response.status_code == 200:
            have = 0  # the server ignored the Range header: start over
        elif response.status_code == 206:
            content_range = response.headers.get("content-range", "")
            if not content_range.startswith(f"bytes {have}-"):
                raise _RetryError(f"unexpected Content-Range {content_range!r}")
        else:
            raise _RetryError(f"HTTP {response.status_code}")
        started = time.monotonic()
        received = 0
        with part.open("ab" if have else "wb") as handle:
            async for chunk in response.aiter_raw():  # as it arrives: a cut keeps what came
                received += len(chunk)
                if have + received > size:
                    handle.close()
                    part.unlink(missing_ok=True)
                    raise VerificationError(
                        "too_large", f"the server sent more than the declared {size} bytes"
                    )
                handle.write(chunk)
                elapsed = time.monotonic() - started
                if (
                    elapsed > rules.grace_seconds
                    and received / elapsed < rules.min_bytes_per_second
                ):
                    handle.flush()
                    raise _RetryError(
                        f"too slow: {received / elapsed:.0f} B/s, at least "
                        f"{rules.min_bytes_per_second} B/s needed"
                    )
            handle.flush()
            os.fsync(handle.fileno())
    return have + received == size


MAX_FLOOR_BYTES = 4096
FLOOR_TIMEOUT_SECONDS = 10.0


async def fetch_floor(client: httpx.AsyncClient, base_url: str, device_id: str) -> SequenceFloor:
    """``GET /api/v1/devices/{id}/floor`` with the device token. Raises ``VerificationError``
    (``floor_unknown``) when the control plane cannot be reached or answers anything else."""
    url = f"{base_url}/api/v1/devices/{device_id}/floor"
    try:
        response = await client.get(url, timeout=FLOOR_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        raise VerificationError("floor_unknown", f"GET {url}: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise VerificationError("floor_unknown", f"GET {url}: HTTP {response.status_code}")
    if len(response.content) > MAX_FLOOR_BYTES:
        raise VerificationError("floor_unknown", f"GET {url}: answer too large")
    try:
        floor = SequenceFloor.model_validate_json(response.content)
    except ValidationError as exc:
        raise VerificationError("floor_unknown", f"GET {url}: not a sequence floor") from exc
    if floor.device_id != device_id:
        raise VerificationError("floor_unknown", f"GET {url}: the floor of another device")
    return floor


MAX_TRUST_CHAIN_BYTES = 1024 * 1024
TRUST_CHAIN = TypeAdapter(list[SignedTrustStore])


async def fetch_trust_chain(
    client: httpx.AsyncClient, base_url: str, after: int
) -> list[SignedTrustStore]:
    """``GET /api/v1/trust-stores?after=N``: the newer trust-store versions, ascending, as
    sent (each is checked by the caller against the one before). Raises
    ``VerificationError`` (``trust_store_unknown``) when they cannot be had."""
    url = f"{base_url}/api/v1/trust-stores"
    try:
        response = await client.get(url, params={"after": after}, timeout=FLOOR_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        raise VerificationError("trust_store_unknown", f"GET {url}: {type(exc).__name__}") from exc
    if response.status_code != 200 or len(response.content) > MAX_TRUST_CHAIN_BYTES:
        raise VerificationError("trust_store_unknown", f"GET {url}: HTTP {response.status_code}")
    try:
        return TRUST_CHAIN.validate_json(response.content)
    except ValidationError as exc:
        raise VerificationError("trust_store_unknown", f"GET {url}: not trust stores") from exc


def hash_file(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, streamed (run it off the event loop)."""
    stream = Sha256Stream()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            stream.update(chunk)
    return stream.hexdigest(), stream.size
