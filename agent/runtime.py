"""The device agent: wires the MQTT session, the updater, telemetry and the local inference
API together. Everything comes from one ``AgentSettings``; nothing is global, so many
``Agent`` objects can run in one process (the simulator runs hundreds)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
from collections.abc import Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import certifi
import httpx
import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from agent.config import AgentSettings
from agent.durable import write_atomic
from agent.errors import AgentError
from agent.inference import LoadedModel, Rows
from agent.metrics import Serving
from agent.model_store import FOLLOWED_TRUST_STORE, ModelStore
from agent.mqtt import DeviceSession
from agent.outbox import Outbox
from agent.slot import ModelUnavailableError, Prediction
from agent.updater import Updater, error_info
from edgefleet import __version__
from shared.messages import (
    MAX_ACK_BYTES,
    Ack,
    DeviceState,
    ErrorInfo,
    ModelRef,
    SampleBatch,
    SampleRow,
    SequenceFloor,
    TelemetryWindow,
)
from shared.topics import Channel, Topics
from shared.trust import TrustStore

if TYPE_CHECKING:
    from agent.server import InferenceServer

log = logging.getLogger(__name__)
REPUBLISH_BATCH = 200
# State reports are numbered boot * STRIDE + n: boots are counted on disk, n in memory.
STATE_SEQ_STRIDE = 2**32
SHUTDOWN_SECONDS = 10.0


@functools.cache
def https_context(ca_file: Path | None) -> ssl.SSLContext:
    """The TLS context for artifact downloads, one per CA bundle and process: building one
    loads the whole CA store (~30 ms, ~0.8 MiB), which a simulator running a thousand agents
    in one process must not pay per agent. ``ca_file`` (the broker's CA) is trusted in
    addition to the system's CAs."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


def load_trust_store(settings: AgentSettings) -> TrustStore:
    """The configured trust store, or the newer version followed since (kept in the data
    dir: the configured file may sit on a read-only /etc)."""
    configured = TrustStore.model_validate_json(settings.trust_store.read_bytes())
    followed = settings.data_dir / FOLLOWED_TRUST_STORE
    if followed.is_file():
        newer = TrustStore.model_validate_json(followed.read_bytes())
        if newer.version > configured.version:
            return newer
    return configured


class Agent:
    def __init__(self, settings: AgentSettings, trust: TrustStore | None = None) -> None:
        self.settings = settings
        self.trust = trust if trust is not None else load_trust_store(settings)
        self.topics = Topics(settings.topic_root)
        self.store = ModelStore(settings.data_dir)
        self.outbox = Outbox(settings.data_dir / "outbox.db", settings.outbox_max_messages)
        self.http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {settings.token.get_secret_value()}"},
            verify=https_context(settings.tls_ca_file),
        )
        # Artifact mirrors get no token: they are not the control plane.
        self.mirror_http = httpx.AsyncClient(verify=https_context(settings.tls_ca_file))
        self.updater = Updater(
            settings,
            self.trust,
            self.store,
            self.http,
            self.publish_state,
            raise_outbox_floor=self._raise_outbox_floor,
            mirror_http=self.mirror_http,
        )
        self.session = DeviceSession(
            settings, self.topics, on_message=self._on_message, on_connect=self._on_connect
        )
        self.crash: ErrorInfo | None = read_crash(settings.data_dir)
        self._boot, self._reports = self.outbox.next_boot(), 0
        self.updater.load_from_disk()
        self._window_start = datetime.now(UTC)
        self._samples: list[tuple[LoadedModel, SampleRow]] = []
        self._rng = random.Random()  # noqa: S311  (sampling, not security)
        # The outbox's highest number sent per channel, and windows since all was sent again.
        self._sent_up_to: dict[str, int] = {}
        self._windows_unsent_again = 0

    # --- inference (thread-safe: called from HTTP threads and the event loop) -----------------

    def model_names(self) -> list[str]:
        return sorted(n for n, s in self.updater.slots.items() if s.current is not None)

    def assigned_names(self) -> list[str]:
        """The models this device should serve: those its accepted desired state names."""
        return sorted(self.updater.assigned)

    def model(self, name: str) -> LoadedModel:
        slot = self.updater.slots.get(name)
        if slot is None or slot.current is None:
            raise ModelUnavailableError(f"no model {name!r} is serving on this device")
        return slot.current

    def predict(
        self, name: str, X: npt.NDArray[np.float32], model: LoadedModel | None = None
    ) -> Prediction:
        """Run model ``name`` on validated float32 rows; records telemetry and probation.
        Pass the ``model`` the rows were validated against, so a swap in between cannot run
        them on a version with other inputs."""
        slot = self.updater.slots.get(name)
        if slot is None:
            raise ModelUnavailableError(f"no model {name!r} is serving on this device")
        prediction = slot.predict(X, model)
        if self.settings.sample_rate and self._rng.random() < self.settings.sample_rate:
            self._sample(prediction, X)
        return prediction

    def predict_rows(self, name: str, rows: Rows) -> Prediction:
        """Positional rows, validated against the model's schema (``InputError`` if not)."""
        model = self.model(name)
        return self.predict(name, model.rows_from_lists(rows), model)

    def predict_named(self, name: str, rows: Sequence[Mapping[str, Any]]) -> Prediction:
        """Rows as {feature: value}, validated against the model's schema."""
        model = self.model(name)
        return self.predict(name, model.rows_from_named(rows), model)

    def _sample(self, prediction: Prediction, X: npt.NDArray[np.float32]) -> None:
        if len(self._samples) >= self.settings.samples_per_window:
            return
        outputs = prediction.outputs
        value = int(outputs.labels[0]) if outputs.labels is not None else float(outputs.values[0])
        row = [None if np.isnan(v) else float(v) for v in X[0]]
        self._samples.append(
            (
                prediction.model,
                SampleRow(request_id=prediction.request_id, features=row, prediction=value),
            )
        )

    # --- state -------------------------------------------------------------------------------

    def state(self) -> DeviceState:
        """The device's state, numbered above every report before it (see ``DeviceState``)."""
        updater = self.updater
        self._reports += 1
        if self._reports >= STATE_SEQ_STRIDE:
            self._boot, self._reports = self.outbox.next_boot(), 1
        return DeviceState(
            device_id=self.settings.device_id,
            seq=self._boot * STATE_SEQ_STRIDE + self._reports,
            agent_version=__version__,
            labels=self.settings.labels,
            deployment_seq=updater.accepted.seq if updater.accepted else 0,
            models=[slot.status() for _, slot in sorted(updater.slots.items())],
            last_error=max(
                (e for e in (self.crash, updater.last_error) if e is not None),
                key=lambda e: e.at,
                default=None,
            ),
            dropped_messages=updater.dropped_messages,
            outbox_dropped=self.outbox.dropped,
            updated_at=datetime.now(UTC),
        )

    async def publish_state(self) -> None:
        await self.session.publish(Channel.STATE, self.state().model_dump_json(), retain=True)

    # --- MQTT --------------------------------------------------------------------------------

    def _on_message(self, channel: Channel, payload: bytes) -> None:
        """Never raises: a bad message is dropped and counted."""
        try:
            if channel is Channel.DESIRED:
                self.updater.submit(payload)
            elif channel is Channel.ACK:
                if len(payload) > MAX_ACK_BYTES:
                    raise ValueError("ack too large")
                ack = Ack.model_validate_json(payload)
                self.outbox.ack(ack.channel, ack.seqs)
        except (ValidationError, ValueError) as exc:
            self.updater.dropped_messages += 1
            log.warning(
                "%s: dropped a bad %s message: %s",
                self.settings.device_id,
                channel.value,
                str(exc)[:200],
            )

    async def _on_connect(self) -> None:
        await self.publish_state()
        self._sent_up_to = {}
        await self._send_outbox(again=True)

    async def _send_outbox(self, *, again: bool) -> None:
        """Send what is waiting in the outbox, oldest first: with ``again``, everything not
        yet acknowledged (after a connect, and every ``outbox_resend_windows`` windows);
        else only what was not sent on this connection. Sending everything at every window
        multiplied a control plane's load while it was behind (100,000 devices: half of
        what it took in were windows stored already, and its backlog grew). Duplicates are
        harmless: the control plane stores each (device, seq) once."""
        after = None if again else self._sent_up_to
        if again:
            self._windows_unsent_again = 0
        for item in await asyncio.to_thread(self.outbox.pending, REPUBLISH_BATCH, after):
            if not await self.session.publish(Channel(item.channel), item.payload):
                return
            self._sent_up_to[item.channel] = max(self._sent_up_to.get(item.channel, 0), item.seq)

    # --- telemetry ---------------------------------------------------------------------------

    async def close_window(self) -> TelemetryWindow | None:
        """Close the current window: store it in the outbox, then publish what is pending."""
        end = datetime.now(UTC)
        start, self._window_start = self._window_start, end
        models = [
            window
            for slot in self.updater.slots.values()
            for accumulator in slot.close_windows()
            if (window := accumulator.close()) is not None
        ]
        telemetry = None
        if models:
            dropped = self.outbox.dropped

            def make(seq: int) -> bytes:
                nonlocal telemetry
                telemetry = TelemetryWindow(
                    device_id=self.settings.device_id,
                    seq=seq,
                    window_start=start,
                    window_end=end,
                    models=models,
                    outbox_dropped=dropped,
                )
                return telemetry.model_dump_json().encode()

            await asyncio.to_thread(self.outbox.append, Channel.TELEMETRY.value, make)
        await self._store_samples()
        self._windows_unsent_again += 1
        await self._send_outbox(
            again=self._windows_unsent_again >= self.settings.outbox_resend_windows
        )
        return telemetry

    async def _store_samples(self) -> None:
        samples, self._samples = self._samples, []
        by_model: dict[str, tuple[LoadedModel, list[SampleRow]]] = {}
        for model, row in samples:
            by_model.setdefault(model.manifest.sha256, (model, []))[1].append(row)
        for model, rows in by_model.values():
            m = model.manifest
            ref = ModelRef(name=m.name, version=m.version, sha256=m.sha256)

            def make(seq: int, rows: list[SampleRow] = rows, ref: ModelRef = ref) -> bytes:
                return (
                    SampleBatch(device_id=self.settings.device_id, seq=seq, model=ref, rows=rows)
                    .model_dump_json()
                    .encode()
                )

            await asyncio.to_thread(self.outbox.append, Channel.SAMPLES.value, make)

    def _raise_outbox_floor(self, floor: SequenceFloor) -> None:
        self.outbox.raise_seq(Channel.TELEMETRY.value, floor.telemetry_seq)
        self.outbox.raise_seq(Channel.SAMPLES.value, floor.samples_seq)
        self._boot, self._reports = self.outbox.next_boot(floor.state_seq // STATE_SEQ_STRIDE), 0

    async def _telemetry_loop(self) -> None:
        # Numbers are allocated only once they cannot collide with what the control plane
        # stored before this data dir was wiped (the updater learns that first).
        await self.updater.floor_known.wait()
        while True:
            await asyncio.sleep(self.settings.window_seconds)
            try:
                await self.close_window()
            except Exception:  # a failed window must not stop the next ones
                log.exception("%s: closing a telemetry window failed", self.settings.device_id)

    # --- life cycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or the task is cancelled); then go offline cleanly.

        The long-running parts (MQTT session, updater, telemetry, local API) are supervised:
        when one of them fails, the failure is logged with its traceback, kept in the data
        dir and reported in the device state (now if the session still works, else after the
        restart), the other parts are stopped, and ``AgentCrashedError`` is raised so that
        the process exits non-zero and its supervisor (systemd) restarts it."""
        stop = stop or asyncio.Event()
        parts: dict[str, Coroutine[Any, Any, None]] = {}
        server = None
        if self.settings.api_port:
            server, parts["local-api"] = self._start_local_api()
        parts["mqtt"] = self.session.run()
        parts["updater"] = self.updater.run()
        parts["telemetry"] = self._telemetry_loop()
        tasks = {asyncio.create_task(coro, name=name): name for name, coro in parts.items()}
        stopping = asyncio.create_task(stop.wait())
        crashed: tuple[str, BaseException] | None = None
        try:
            done, _ = await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task, name in tasks.items():
                if task in done:  # the parts run forever: any end is a failure
                    crashed = (name, task.exception() or RuntimeError(f"{name} returned"))
                    break
            if crashed is not None:
                await self._report_crash(*crashed)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        if self.updater.floor_known.is_set():  # else its number could collide
                            await self.close_window()
                        await self.session.go_offline()
        finally:
            stopping.cancel()
            for task in tasks:
                task.cancel()
            try:  # bounded: a task stuck behind the busy thread pool must not hold up the exit
                async with asyncio.timeout(SHUTDOWN_SECONDS):
                    await asyncio.gather(*tasks, return_exceptions=True)
            except TimeoutError:
                log.warning("%s: stopped without waiting for its tasks", self.settings.device_id)
            if server is not None:
                server.stop()
            await self.http.aclose()
            await self.mirror_http.aclose()
            self.outbox.close()
        if crashed is not None:
            raise AgentCrashedError(*crashed)

    def render_metrics(self) -> str:
        """``/metrics`` (from the local API's threads)."""
        assert self.updater.metrics is not None
        serving = [
            Serving(name, slot.current.manifest.version, slot.phase.value)
            for name, slot in sorted(self.updater.slots.items())
            if slot.current is not None
        ]
        return self.updater.metrics.render(serving, len(self.outbox), self.outbox.dropped)

    def _start_local_api(self) -> tuple[InferenceServer, Coroutine[Any, Any, None]]:
        """The local inference API, started in its thread; and the part that supervises it
        (it ends only when the server thread fails)."""
        from agent.server import InferenceServer

        loop = asyncio.get_running_loop()
        server = InferenceServer(
            self,
            self.settings.api_host,
            self.settings.api_port,
            assigned=self.assigned_names,
            metrics=self.render_metrics if self.updater.metrics is not None else None,
        )
        ended: asyncio.Future[None] = loop.create_future()

        def on_exit(exc: BaseException | None) -> None:
            def settle() -> None:
                if not ended.done():
                    ended.set_exception(exc or RuntimeError("the server thread ended"))

            loop.call_soon_threadsafe(settle)

        server.start(on_exit=on_exit)
        log.info("%s: local inference API on %s", self.settings.device_id, server.url)
        return server, _wait(ended)

    async def _report_crash(self, part: str, error: BaseException) -> None:
        log.error(
            "%s: the agent's %s failed; stopping so that it is restarted",
            self.settings.device_id,
            part,
            exc_info=error,
        )
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]  # a task group's wrapping: name what failed
        self.crash = error_info("agent_crash", f"{part}: {type(error).__name__}: {error}", None)
        try:
            await asyncio.to_thread(write_crash, self.settings.data_dir, self.crash)
            async with asyncio.timeout(2):
                await self.publish_state()
        except (OSError, TimeoutError):
            pass  # the restart reports it from the data dir


class AgentCrashedError(AgentError, RuntimeError):
    """A long-running part of the agent failed; the process should exit and be restarted."""

    def __init__(self, part: str, error: BaseException) -> None:
        super().__init__(f"the agent's {part} failed: {type(error).__name__}: {error}")
        self.part = part
        self.error = error


async def _wait(future: asyncio.Future[None]) -> None:
    await future


CRASH_FILE = "crash.json"


def read_crash(data_dir: Path) -> ErrorInfo | None:
    """The failure that stopped the previous run, reported once after the restart."""
    path = data_dir / CRASH_FILE
    try:
        crash = ErrorInfo.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None
    path.unlink(missing_ok=True)
    return crash


def write_crash(data_dir: Path, crash: ErrorInfo) -> None:
    write_atomic(data_dir / CRASH_FILE, crash.model_dump_json().encode())
