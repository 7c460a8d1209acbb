"""One swarm device: the device side of the wire protocol without a model runtime.

It judges every desired state with the agent's own functions (``agent.verify``: size cap,
strict parsing, deployment signature under the trust store, device id, sequence above the
last accepted one, expiry; per model the manifest's signature and size cap) and reports the
agent's transitions for an artifact it already holds (``agent.updater``: no download, so no
``downloading``): the accepted sequence at once, then per model ``verifying`` → ``probation``
→ ``serving`` (committed by the agent's own ``Probation`` rule, by time: a swarm serves no
requests), or straight to ``serving`` when the version is the rollback slot's. A refusal
keeps what serves and is reported with the agent's reason and message (``error_info``).

Telemetry follows the agent's outbox: windows numbered 1, 2, … per device, kept until the
control plane's ``Ack`` names them, each new one published when made, all pending ones
again every ``outbox_resend_windows`` windows and on every connect, the oldest dropped (and
counted in ``outbox_dropped``) beyond the cap.

Deliberate differences from the agent, all about what a swarm cannot or need not do: no
download, sha256, onnxruntime load or golden vectors; no trust-store following (a desired
state naming a newer trust version is judged under the swarm's, as the agent does when the
control plane does not answer); a swarm device is a new device (it starts at sequence floor
1 and report boot 1, and does not ask ``/floor``); nothing is kept on disk.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from pydantic import ValidationError

from agent.runtime import REPUBLISH_BATCH, STATE_SEQ_STRIDE
from agent.slot import Probation
from agent.updater import error_info
from agent.verify import Accepted, Decision, check_desired, check_model_manifest, parse_desired
from edgefleet import __version__
from shared.errors import SignatureError, VerificationError
from shared.manifest import ModelManifest
from shared.messages import (
    MAX_ACK_BYTES,
    MAX_DESIRED_BYTES,
    Ack,
    DeploymentModel,
    DesiredState,
    DeviceState,
    ErrorInfo,
    ModelRef,
    ModelStatus,
    ModelWindow,
    OnlineStatus,
    Phase,
    TelemetryWindow,
    Verdict,
)
from shared.topics import Channel, Topics
from shared.trust import TrustStore
from shared.verification import verify_manifest
from simulator.swarm.codec import MqttSession, connect_packet
from simulator.swarm.settings import SwarmCounters, SwarmSettings

log = logging.getLogger(__name__)
PARSE_REASONS = ("too_large", "malformed", "schema_version")  # counted as dropped messages


def _now() -> datetime:
    return datetime.now(UTC)


def _ref(manifest: ModelManifest | None) -> ModelRef | None:
    if manifest is None:
        return None
    return ModelRef(name=manifest.name, version=manifest.version, sha256=manifest.sha256)


class Swarm(Protocol):
    """What a device needs of the swarm it belongs to (``simulator.swarm.runner.Swarm``)."""

    topics: Topics
    trust: TrustStore
    settings: SwarmSettings
    counters: SwarmCounters

    def connack(self, device: SwarmDevice, code: int) -> None: ...
    def lost(self, device: SwarmDevice, was_connected: bool) -> None: ...
    def serving_changed(
        self, model: str, before: ModelManifest | None, after: ModelManifest | None
    ) -> None: ...
    def model_window(self, manifest: ModelManifest) -> ModelWindow: ...
    def intern(self, manifest: ModelManifest) -> ModelManifest: ...


@dataclass
class SwarmModel:
    """What one model name serves on a swarm device (the agent's ``ModelSlot`` and its
    ``Slots`` on disk, without the loaded model)."""

    name: str
    current: ModelManifest | None = None
    previous: ModelManifest | None = None
    rollout_id: str | None = None
    stage: str | None = None
    verdict: Verdict | None = None
    previous_verdict: Verdict | None = None
    target: ModelRef | None = None
    phase: Phase = Phase.IDLE
    last_error: ErrorInfo | None = None
    failed: tuple[str, int] | None = None  # (sha256, seq): refused under that desired state
    probation: Probation | None = None
    commit_timer: asyncio.TimerHandle | None = None

    def status(self) -> ModelStatus:
        return ModelStatus(
            name=self.name,
            active=_ref(self.current),
            previous=_ref(self.previous),
            target=self.target,
            phase=self.phase,
            rollout_id=self.rollout_id,
            stage=self.stage,
            last_error=self.last_error,
            verdict=None if self.probation else self.verdict,
            probation_requests=0 if self.probation or self.verdict else None,
        )


@dataclass
class SwarmDevice:
    """One device's session and state; every handler is synchronous (no task per device)."""

    swarm: Swarm
    device_id: str
    token: str
    labels: dict[str, str]
    source: str | None = None  # local address to connect from (127.0.0.x), None: any
    accepted: Accepted | None = None
    floor: int = 1
    last_error: ErrorInfo | None = None
    dropped_messages: int = 0
    models: dict[str, SwarmModel] = field(default_factory=dict)
    outbox: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    telemetry_seq: int = 0
    outbox_dropped: int = 0
    windows_made: int = 0
    reports: int = 0
    boot: int = 1
    session: MqttSession | None = None
    connected: bool = False
    connects: int = 0
    window_start: datetime = field(default_factory=_now)
    refusals: list[ErrorInfo] = field(default_factory=list)
    sent: dict[int, bytes] = field(default_factory=dict)  # with settings.record_windows
    # The outbox is sent as the agent sends it: one window at a time, the next once the
    # broker has PUBACKed the one before (the agent awaits each publish).
    draining: list[int] = field(default_factory=list)  # seqs still to send, oldest last
    drain_packet: int | None = None  # the PUBACK the drain waits for
    drain_next: bool | None = None  # asked to send (again: True) while draining
    sent_up_to: int = 0  # the highest seq sent on this connection
    windows_unsent_again: int = 0  # windows closed since all pending was sent again

    def __post_init__(self) -> None:
        topics = self.swarm.topics
        self.topic = {c: topics.device(self.device_id, c).encode() for c in Channel}
        self._by_topic = {
            topics.device(self.device_id, Channel.DESIRED): Channel.DESIRED,
            topics.device(self.device_id, Channel.ACK): Channel.ACK,
        }

    # --- the session -------------------------------------------------------------------------

    def connect_packet(self) -> bytes:
        offline = OnlineStatus(device_id=self.device_id, online=False).model_dump_json()
        return connect_packet(
            self.device_id,
            self.device_id,
            self.token,
            self.swarm.settings.keepalive_seconds,
            self.topic[Channel.ONLINE],
            offline.encode(),
        )

    def on_connack(self, code: int) -> None:
        session = self.session
        if session is None:
            return
        self.swarm.connack(self, code)
        if code != 0:
            session.close()
            return
        # As the agent's session: subscribe to desired and ack, say online (retained), then
        # publish the state and everything the outbox holds.
        session.subscribe([self.topic[Channel.DESIRED], self.topic[Channel.ACK]])
        online = OnlineStatus(device_id=self.device_id, online=True).model_dump_json()
        session.publish(self.topic[Channel.ONLINE], online.encode(), retain=True)
        self.connected = True
        self.connects += 1
        self.report()
        self.send_outbox(again=True)

    def on_puback(self, packet_id: int) -> None:
        if packet_id == self.drain_packet:
            self.drain_packet = None
            self._drain()

    def on_lost(self, exc: Exception | None) -> None:
        self.session = None
        self.draining, self.drain_packet, self.drain_next = [], None, None
        self.sent_up_to = 0  # a new connection sends everything again
        was_connected, self.connected = self.connected, False
        self.swarm.lost(self, was_connected)

    def on_message(self, topic: str, payload: bytes) -> None:
        """Never raises: a bad message is dropped and counted (as the agent does)."""
        channel = self._by_topic.get(topic)
        try:
            if channel is Channel.DESIRED:
                self.apply(payload)
            elif channel is Channel.ACK:
                if len(payload) > MAX_ACK_BYTES:
                    raise ValueError("ack too large")
                ack = Ack.model_validate_json(payload)
                if ack.channel == Channel.TELEMETRY.value:
                    for seq in ack.seqs:
                        self.outbox.pop(seq, None)
        except (ValidationError, ValueError) as exc:
            self.dropped_messages += 1
            log.warning("%s: dropped a bad message: %s", self.device_id, str(exc)[:200])

    def publish(self, channel: Channel, payload: bytes, *, retain: bool = False) -> int | None:
        """QoS 1; the packet id, None when not connected."""
        session = self.session
        if session is None or not self.connected:
            return None
        return session.publish(self.topic[channel], payload, retain=retain)

    # --- state -------------------------------------------------------------------------------

    def state(self) -> DeviceState:
        self.reports += 1
        return DeviceState(
            device_id=self.device_id,
            seq=self.boot * STATE_SEQ_STRIDE + self.reports,
            agent_version=__version__,
            labels=self.labels,
            deployment_seq=self.accepted.seq if self.accepted else 0,
            models=[m.status() for _, m in sorted(self.models.items())],
            last_error=self.last_error,
            dropped_messages=self.dropped_messages,
            outbox_dropped=self.outbox_dropped,
            updated_at=_now(),
        )

    def report(self) -> None:
        if self.connected:
            self.publish(Channel.STATE, self.state().model_dump_json().encode(), retain=True)
            self.swarm.counters.states += 1

    # --- desired states (agent.updater.Updater.apply) ---------------------------------------

    def apply(self, payload: bytes) -> None:
        swarm = self.swarm
        try:
            desired = parse_desired(payload, MAX_DESIRED_BYTES)
            decision = check_desired(
                desired,
                trust=swarm.trust,
                device_id=self.device_id,
                accepted=self.accepted,
                floor=self.floor,
                now=_now(),
            )
        except VerificationError as exc:
            if exc.reason in PARSE_REASONS:
                self.dropped_messages += 1
            self.last_error = error_info(exc.reason, exc.message, None)
            self.refusals.append(self.last_error)
            swarm.counters.refused += 1
            self.report()
            return
        if decision is Decision.APPLY:
            self.accepted = Accepted(seq=desired.seq, signature=desired.signature)
            swarm.counters.last_accepted = time.monotonic()
        swarm.counters.accepted += 1
        self.report()
        self.dispatch(desired)

    def dispatch(self, desired: DesiredState) -> None:
        for deployment in desired.models:
            name = deployment.manifest.name
            model = self.models.get(name)
            if model is None:
                model = self.models[name] = SwarmModel(name)
            self.want(model, deployment, desired.seq)

    # --- one model (agent.updater.ModelWorker) ----------------------------------------------

    def want(self, model: SwarmModel, deployment: DeploymentModel, seq: int) -> None:
        sha = deployment.manifest.sha256
        if model.probation is not None and model.current is not None:
            if model.current.sha256 != sha:  # a newer desired state pre-empts the probation
                if model.previous is not None and model.previous.sha256 == sha:
                    self._revert(model)  # a rollback: at once, no install
                else:
                    self._commit(model, Verdict.UNJUDGED)
            else:
                self._take_stage(model, deployment)
                return
        if self._satisfied(model, deployment, seq):
            self._settle(model)
            return
        self._install(model, deployment, seq)

    def _satisfied(self, model: SwarmModel, deployment: DeploymentModel, seq: int) -> bool:
        manifest = deployment.manifest
        if model.current is not None and model.current.sha256 == manifest.sha256:
            if model.current.signature != manifest.signature:  # re-signed (a key rotation)
                try:
                    verify_manifest(manifest, self.swarm.trust)
                    model.current = self.swarm.intern(manifest)
                except SignatureError as exc:
                    log.warning("%s: re-signed manifest not taken: %s", self.device_id, exc)
            self._take_stage(model, deployment)
            if model.phase in (Phase.FAILED, Phase.REVERTED):
                model.phase = Phase.SERVING
                self.report()
            return True
        return model.failed == (manifest.sha256, seq)

    def _take_stage(self, model: SwarmModel, deployment: DeploymentModel) -> None:
        if (model.rollout_id, model.stage) != (deployment.rollout_id, deployment.stage):
            model.rollout_id, model.stage = deployment.rollout_id, deployment.stage
            self.report()

    def _settle(self, model: SwarmModel) -> None:
        if model.target is not None or model.phase in (Phase.DOWNLOADING, Phase.VERIFYING):
            model.target = None
            if model.phase in (Phase.DOWNLOADING, Phase.VERIFYING, Phase.IDLE):
                model.phase = Phase.SERVING if model.current is not None else Phase.IDLE
            self.report()

    def _install(self, model: SwarmModel, deployment: DeploymentModel, seq: int) -> None:
        manifest = deployment.manifest
        model.target = _ref(manifest)
        try:
            check_model_manifest(manifest, self.swarm.trust, self.swarm.settings.max_artifact_bytes)
        except VerificationError as exc:
            model.last_error = error_info(exc.reason, exc.message, model.name, seq)
            self.refusals.append(model.last_error)
            self.swarm.counters.refused += 1
            model.failed = (manifest.sha256, seq)
            model.phase, model.target = Phase.FAILED, None
            self.report()
            return
        # Cached: no download. The agent hashes and loads it while "verifying".
        model.phase = Phase.VERIFYING
        self.report()
        self._activate(model, deployment, seq)

    def _activate(self, model: SwarmModel, deployment: DeploymentModel, seq: int) -> None:
        manifest = deployment.manifest
        back = model.previous is not None and model.previous.sha256 == manifest.sha256
        before, before_verdict = model.current, model.verdict
        verdict = model.previous_verdict if back else None  # the rollback slot's, kept
        if before is not None and before.sha256 != manifest.sha256:
            model.previous, model.previous_verdict = before, before_verdict
        model.verdict = verdict
        model.current = self.swarm.intern(manifest)
        model.rollout_id, model.stage = deployment.rollout_id, deployment.stage
        model.target, model.last_error = None, None
        self.swarm.serving_changed(model.name, before, manifest)
        if back:
            model.phase = Phase.SERVING
            self.report()
            return
        settings = self.swarm.settings
        model.probation = Probation(
            sha256=manifest.sha256,
            seq=seq,
            min_requests=settings.probation_requests,
            min_seconds=settings.probation_seconds,
            latency_budget_us=1e12,
            max_error_rate=1.0,
        )
        model.phase = Phase.PROBATION
        self.report()
        delay = model.probation.remaining()
        loop = asyncio.get_running_loop()
        model.commit_timer = loop.call_later(delay, self._probation_over, model, manifest.sha256)

    def _probation_over(self, model: SwarmModel, sha: str) -> None:
        probation = model.probation
        if probation is None or probation.sha256 != sha:
            return
        self._commit(model, probation.verdict())

    def _commit(self, model: SwarmModel, verdict: Verdict) -> None:
        if model.commit_timer is not None:
            model.commit_timer.cancel()
        model.probation, model.commit_timer = None, None
        model.phase, model.verdict = Phase.SERVING, verdict
        self.report()

    def _revert(self, model: SwarmModel) -> None:
        """Back to the rollback slot because a newer desired state asks for it."""
        if model.commit_timer is not None:
            model.commit_timer.cancel()
        before = model.current
        model.probation, model.commit_timer = None, None
        model.current, model.previous = model.previous, None
        model.verdict, model.previous_verdict = model.previous_verdict, None
        model.phase = Phase.SERVING if model.current is not None else Phase.IDLE
        self.swarm.serving_changed(model.name, before, model.current)
        self.report()

    # --- telemetry (agent.runtime.Agent.close_window and the outbox) ------------------------

    def close_window(self) -> None:
        end = _now()
        start, self.window_start = self.window_start, end
        windows = [
            self.swarm.model_window(m.current)
            for _, m in sorted(self.models.items())
            if m.current is not None
        ]
        if windows:
            self.telemetry_seq += 1
            window = TelemetryWindow(
                device_id=self.device_id,
                seq=self.telemetry_seq,
                window_start=start,
                window_end=end,
                models=windows,
                outbox_dropped=self.outbox_dropped,
            )
            payload = window.model_dump_json().encode()
            self.outbox[self.telemetry_seq] = payload
            if self.swarm.settings.record_windows:
                self.sent[self.telemetry_seq] = payload
            self.windows_made += 1
            self.swarm.counters.windows += 1
            while len(self.outbox) > self.swarm.settings.outbox_max_messages:
                self.outbox.popitem(last=False)
                self.outbox_dropped += 1
        self.windows_unsent_again += 1
        resend = self.swarm.settings.outbox_resend_windows
        self.send_outbox(again=self.windows_unsent_again >= resend)

    def send_outbox(self, *, again: bool) -> None:
        """As the agent's ``_send_outbox``: with ``again`` everything not acknowledged yet,
        else what was not sent on this connection; oldest first, at most the agent's batch
        of 200, one at a time. Asked while a drain runs, another follows it."""
        if self.drain_packet is not None or self.draining:
            self.drain_next = again or bool(self.drain_next)
            return
        if again:
            self.windows_unsent_again = 0
            seqs = list(self.outbox)
        else:
            seqs = [seq for seq in self.outbox if seq > self.sent_up_to]
        self.draining = seqs[:REPUBLISH_BATCH][::-1]
        self._drain()

    def _drain(self) -> None:
        while self.draining:
            seq = self.draining.pop()
            payload = self.outbox.get(seq)
            if payload is None:  # acknowledged meanwhile
                continue
            packet_id = self.publish(Channel.TELEMETRY, payload)
            if packet_id is None:  # not connected: the next connect sends them
                self.draining = []
                return
            self.swarm.counters.telemetry_published += 1
            self.sent_up_to = max(self.sent_up_to, seq)
            self.drain_packet = packet_id
            return
        if self.drain_next is not None:
            again, self.drain_next = self.drain_next, None
            self.send_outbox(again=again)


def jitter(seconds: float) -> float:
    return seconds * random.uniform(0.5, 1.0)  # noqa: S311  (backoff jitter, not security)
