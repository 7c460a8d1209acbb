"""Test helpers for agents: a real HTTP artifact server with fault modes, an agent running
in its own thread and event loop, a control-plane publisher on the real broker, and signed
desired states made with test keys."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentSettings
from agent.runtime import Agent
from shared.broker_address import CONTROL_PLANE_USER
from shared.manifest import ModelManifest
from shared.messages import DeploymentModel, DesiredState, SequenceFloor
from shared.signing import KeyRole, SigningKey
from shared.topics import Channel, Topics
from shared.trust import TrustedKey, TrustStore
from simulator.broker import MosquittoBroker
from simulator.rig.cluster import NatsCluster

T = TypeVar("T")
CP_PASSWORD = "cp-secret"  # noqa: S105  (a test rig's throw-away secret)


def wait_until(
    predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class ArtifactServer:
    """Serves artifacts like the control plane does (Range, bearer token), plus faults:
    ``flip`` (one byte changed), ``oversize`` (extra bytes), ``endless`` (no length, never
    ends), ``trickle`` (a few bytes a second), ``slow`` (320 KiB/s), ``cut`` (closes the
    connection half way on the first request only, so a resume must finish it), ``down``
    (503 until the mode changes). It also answers the sequence floor a device asks for when
    it starts with an empty data dir (``floors``; zeros by default)."""

    def __init__(self, token: str | None = None) -> None:
        self.blobs: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []  # (sha, Range header)
        self.token = token
        self.floors: dict[str, SequenceFloor] = {}
        self.floor_requests = 0
        self.floor_down = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def add(self, sha256: str, data: bytes, mode: str = "normal") -> None:
        self.blobs[sha256] = data
        self.modes[sha256] = mode

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        match = re.fullmatch(r"/api/v1/artifacts/([0-9a-f]{64})", request.path)
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            request.send_response(401)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        floor = re.fullmatch(r"/api/v1/devices/([a-z0-9-]+)/floor", request.path)
        if floor:  # what the control plane answers a device that starts with no state
            body = (
                (
                    self.floors.get(floor.group(1))
                    or SequenceFloor(
                        device_id=floor.group(1),
                        deployment_seq=0,
                        telemetry_seq=0,
                        samples_seq=0,
                        state_seq=0,
                    )
                )
                .model_dump_json()
                .encode()
            )
            self.floor_requests += 1
            request.send_response(503 if self.floor_down else 200)
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
            return
        if not match or match.group(1) not in self.blobs:
            request.send_response(404)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        sha = match.group(1)
        data, mode = self.blobs[sha], self.modes[sha]
        if mode == "down":  # the control plane is unreachable for now
            request.send_response(503)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        range_header = request.headers.get("Range")
        first_request = not any(s == sha for s, _ in self.requests)
        self.requests.append((sha, range_header))
        if mode == "flip":
            data = data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]
        elif mode == "oversize":
            data = data + b"\0" * 4096
        start = 0
        if range_header and mode not in ("endless",):
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            request.send_response(206)
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            request.send_response(200)
        if mode == "endless":
            request.send_header("Connection", "close")
            request.end_headers()
            try:
                while True:
                    request.wfile.write(b"\0" * 65536)
            except OSError:
                return
        body = data[start:]
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        try:
            if mode in ("trickle", "slow"):  # 40 B/s, or 320 KiB/s
                step, pause = (8, 0.2) if mode == "trickle" else (32 * 1024, 0.1)
                for i in range(0, len(body), step):
                    request.wfile.write(body[i : i + step])
                    request.wfile.flush()
                    time.sleep(pause)
            elif mode == "cut" and first_request:
                request.wfile.write(body[: len(body) // 2])
                request.wfile.flush()
                request.close_connection = True
                request.connection.shutdown(2)
            else:
                request.wfile.write(body)
        except OSError:
            return


class AgentThread:
    """A real ``Agent`` in its own thread and event loop (as a device would run it)."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.agent: Agent | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("agent did not start")
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._run())
        except BaseException as exc:
            self.error = exc
            self._ready.set()
        finally:  # as asyncio.run does: cancel what is left, then close the loop
            left = asyncio.all_tasks(self.loop)
            for task in left:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self.loop.close()

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        self.agent = Agent(self.settings)
        self._ready.set()
        await self.agent.run(self._stop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop as SIGTERM would; a hang is a bug, reported with what the agent awaits. The
        agent bounds its own stop (5 s to close its window and say offline, 10 s for its
        parts, 5 s for requests in flight): ``timeout`` must exceed that sum."""
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            stacks = io.StringIO()

            async def dump() -> None:
                for task in asyncio.all_tasks():
                    print(task, file=stacks)
                    task.print_stack(limit=8, file=stacks)

            asyncio.run_coroutine_threadsafe(dump(), self.loop).result(5)
            raise AssertionError(f"agent did not stop within {timeout} s:\n{stacks.getvalue()}")

    @property
    def a(self) -> Agent:
        assert self.agent is not None
        return self.agent


class Publisher:
    """The control plane's broker identity, to publish desired states in tests."""

    def __init__(self, broker: MosquittoBroker, topics: Topics | None = None) -> None:
        self.topics = topics or Topics()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-cp")
        self.client.username_pw_set(CONTROL_PLANE_USER, CP_PASSWORD)
        self.received: list[tuple[str, bytes]] = []
        self.client.on_message = lambda _c, _u, m: self.received.append((m.topic, bytes(m.payload)))
        self.client.connect(broker.host, broker.cp_port)
        self.client.loop_start()
        self.client.subscribe(self.topics.all_devices(Channel.STATE), qos=1)
        self.client.subscribe(self.topics.all_devices(Channel.TELEMETRY), qos=1)

    def desired(self, device_id: str, payload: bytes | str) -> None:
        info = self.client.publish(
            self.topics.device(device_id, Channel.DESIRED), payload, qos=1, retain=True
        )
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def sign_desired(
    key: SigningKey,
    device_id: str,
    seq: int,
    manifests: list[ModelManifest],
    *,
    expires_in: timedelta = timedelta(days=1),
    mirrors: list[str] | None = None,
) -> DesiredState:
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    return DesiredState(
        device_id=device_id,
        seq=seq,
        models=[DeploymentModel(manifest=m) for m in manifests],
        issued_at=issued,
        expires_at=issued + expires_in,
        mirrors=mirrors,
        key_id="",
        signature="",
    ).signed_with(key)


def agent_settings(
    tmp: Path,
    *,
    device_id: str,
    broker: MosquittoBroker | NatsCluster,
    token: str,
    control_plane_url: str,
    trust_store: Path,
    **overrides: Any,
) -> AgentSettings:
    """``broker``: mosquitto, or a cluster (every node, the first one first)."""
    url = (
        broker.urls(0, device_id, token)
        if isinstance(broker, NatsCluster)
        else f"mqtt://{device_id}:{token}@{broker.host}:{broker.port}"
    )
    values: dict[str, Any] = {
        "device_id": device_id,
        "broker_url": url,
        "control_plane_url": control_plane_url,
        "token": token,
        "trust_store": trust_store,
        "data_dir": tmp / device_id,
        "api_port": 0,
        # Shorter than shipped, for tests about something else: one window an hour (a test
        # closes them itself), probation by time alone, 0.2 s instead of 30 s. The shipped
        # defaults run end to end in tests/e2e/test_agent_defaults.py.
        "window_seconds": 3600,
        "probation_seconds": 0.2,
        "probation_requests": 0,
        "reconnect_max_seconds": 1.0,
        "download_grace_seconds": 2.0,
        "download_attempts": 2,
    }
    if isinstance(broker, NatsCluster):
        values.update(broker.agent_values())
    values.update(overrides)
    return AgentSettings.model_validate(values)


def trusted_keys(tmp: Path) -> tuple[SigningKey, SigningKey, Path]:
    """Fresh model-signing and deployment-signing keys, and a trust-store file for them."""
    model_key, deploy_key = SigningKey.generate(), SigningKey.generate()
    trust = TrustStore(
        keys=[
            TrustedKey.from_verify_key(KeyRole.MODEL, model_key.verify_key),
            TrustedKey.from_verify_key(KeyRole.DEPLOYMENT, deploy_key.verify_key),
        ]
    )
    path = tmp / "trust.json"
    path.write_text(trust.model_dump_json())
    return model_key, deploy_key, path
