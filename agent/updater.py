"""The update pipeline: desired state → verify → download → verify → stage → swap →
probation → commit or revert. Checks live in ``agent.verify`` (pure); this module does the
I/O around them. Any failure at any step leaves the serving model as it was.

The ``Updater`` takes desired states one at a time (the newest wins if several arrive
meanwhile) and hands each model it names to that model's ``ModelWorker``, at once: a worker
runs on its own, so a download or a probation of one model never holds up another model or
the next desired state. A newer desired state pre-empts what a worker is doing:

* a download of a version nobody wants any more is cancelled; its partial file is kept (the
  latest one per model) so that the same version resumes if it is wanted again;
* a version on probation ends its probation early: if the newer state names the version
  before it (the rollback slot, a rollback), that version serves again at once and the
  interrupted one is dropped; if it names any other version, the interrupted one is
  committed ``unjudged`` (unless it has already failed) and becomes the rollback slot of the
  new target. As Mender finishes the update in progress before taking the next deployment,
  the device always has a committed version to fall back on.

A version is installed from the rollback slot without probation (it was committed on this
device before); every other version is watched by its ``Probation`` until it is judged,
its time runs out, or it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

import httpx

from agent.config import AgentSettings
from agent.durable import move_atomic
from agent.fetch import (
    DownloadRules,
    fetch_artifact,
    fetch_floor,
    fetch_trust_chain,
    hash_file,
)
from agent.inference import LoadedModel, load_model
from agent.metrics import AgentMetrics
from agent.model_store import FailedTarget, ModelStore, SlotEntry, Slots
from agent.slot import ModelSlot, Probation
from agent.verify import Accepted, Decision, check_desired, check_model_manifest, parse_desired
from shared.errors import VerificationError
from shared.manifest import ModelManifest
from shared.messages import (
    MAX_DESIRED_BYTES,
    DeploymentModel,
    DesiredState,
    ErrorInfo,
    ModelRef,
    Phase,
    SequenceFloor,
    Verdict,
)
from shared.trust import TrustStore, check_successor
from shared.verification import verify_manifest

log = logging.getLogger(__name__)
Report = Callable[[], Awaitable[None]]
RaiseOutboxFloor = Callable[[SequenceFloor], None]
# Failures of the path, not of the artifact: retried with backoff, never recorded as refusals.
TRANSIENT = frozenset({"download_failed", "download_timeout"})
RETRY_MIN_SECONDS = 2.0
RETRY_MAX_SECONDS = 120.0


def _now() -> datetime:
    return datetime.now(UTC)


def _ref(entry: SlotEntry | None, name: str) -> ModelRef | None:
    return ModelRef(name=name, version=entry.version, sha256=entry.sha256) if entry else None


def _jitter(seconds: float) -> float:
    return seconds * random.uniform(0.5, 1.0)  # noqa: S311  (backoff jitter, not security)


def error_info(reason: str, message: str, model: str | None, seq: int | None = None) -> ErrorInfo:
    return ErrorInfo(reason=reason, message=message[:500], at=_now(), model=model, seq=seq)


class Outcome(Enum):
    DONE = "done"  # activated (maybe on probation)
    REFUSED = "refused"  # the version failed a check: not retried under this desired state
    RETRY = "retry"  # the network failed: try again after a backoff
    SUPERSEDED = "superseded"  # a newer desired state wants something else


class Updater:
    def __init__(
        self,
        settings: AgentSettings,
        trust: TrustStore,
        store: ModelStore,
        http: httpx.AsyncClient,
        report: Report,
        raise_outbox_floor: RaiseOutboxFloor | None = None,
        mirror_http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.trust = trust
        self.store = store
        self.http = http
        # For artifact mirrors: no device token (a mirror is not trusted with it). None:
        # mirrors named in desired states are not used.
        self.mirror_http = mirror_http
        self.report = report
        self._raise_outbox_floor = raise_outbox_floor
        self.slots: dict[str, ModelSlot] = {}
        self.metrics = AgentMetrics() if settings.api_metrics else None
        self.workers: dict[str, ModelWorker] = {}
        # The model names the accepted desired state names: what this device should serve
        # (the local API is ready when all of them do). Read from HTTP threads: replaced
        # whole, never changed in place.
        self.assigned: frozenset[str] = frozenset()
        self.accepted: Accepted | None = None
        self.floor = 1  # the lowest desired-state sequence this device may accept
        self.floor_known = asyncio.Event()
        self.last_error: ErrorInfo | None = None
        self.dropped_messages = 0
        self._pending: bytes | None = None
        self._wake = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self.rules = DownloadRules(
            max_bytes=settings.max_artifact_bytes,
            deadline_seconds=settings.download_deadline_seconds,
            min_bytes_per_second=settings.download_min_bytes_per_second,
            grace_seconds=settings.download_grace_seconds,
            attempts=settings.download_attempts,
        )

    # --- start-up ----------------------------------------------------------------------------

    def load_from_disk(self) -> None:
        """Serve what the store holds, after verifying it again (a file may have been damaged
        or swapped while the agent was down): signature, sha256, load, golden vectors. A
        version that was on probation when the agent stopped goes on probation again."""
        for path in self.store.discard_interrupted_writes():  # a kill -9 mid-write
            log.info("%s: removed %s (an interrupted write)", self.settings.device_id, path)
        accepted = self.store.read_accepted()
        if accepted is not None:
            self.accepted = Accepted(seq=accepted.seq, signature=accepted.desired.signature)
            self.floor = accepted.seq
            wanted = {m.manifest.sha256 for m in accepted.desired.models}
            self.assigned = frozenset(m.manifest.name for m in accepted.desired.models)
        else:
            wanted = set()
        for sha in self.store.staged():  # downloads nobody wants any more (superseded, then
            if sha not in wanted:  # a restart): the partial files go
                self.store.discard_staging(sha)
        for name in self.store.model_names():
            self._worker(name).load_from_disk(accepted.seq if accepted else 0)

    def load_verified(self, name: str, sha256: str) -> LoadedModel:
        """A model from the store, verified again (blocking: signature, sha256, load)."""
        manifest = self.store.read_manifest(name, sha256)
        verify_manifest(manifest, self.trust)
        path = self.store.artifact_path(name, sha256)
        digest, size = hash_file(path)
        if (digest, size) != (manifest.sha256, manifest.size):
            raise VerificationError("sha256_mismatch", f"{path} does not match its manifest")
        return load_model(path, manifest)

    def pending_desired(self) -> DesiredState | None:
        accepted = self.store.read_accepted()
        return accepted.desired if accepted else None

    async def learn_floor(self) -> None:
        """With no accepted sequence (a new or wiped data dir), ask the control plane which
        sequences it has issued and stored for this device before accepting anything: a
        genuine but older desired state replayed to a wiped device is refused, and new
        telemetry numbers continue above the stored ones. Retried until it answers."""
        if self.accepted is not None:
            self.floor_known.set()
            return
        delay = RETRY_MIN_SECONDS
        while True:
            try:
                floor = await fetch_floor(
                    self.http, self.settings.control_plane_url, self.settings.device_id
                )
                break
            except VerificationError as exc:
                log.warning("%s: %s; retrying in %.0f s", self.settings.device_id, exc, delay)
                self.last_error = error_info(exc.reason, exc.message, None)
                await self.report()
            await asyncio.sleep(_jitter(delay))
            delay = min(delay * 2, RETRY_MAX_SECONDS)
        self.floor = max(1, floor.deployment_seq)
        if self._raise_outbox_floor is not None:
            await asyncio.to_thread(self._raise_outbox_floor, floor)
        if self.last_error is not None and self.last_error.reason == "floor_unknown":
            self.last_error = None
        log.info(
            "%s: no accepted desired state; accepting sequence %d and above",
            self.settings.device_id,
            self.floor,
        )
        self.floor_known.set()

    # --- desired states ----------------------------------------------------------------------

    def slot(self, name: str) -> ModelSlot:
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = ModelSlot(name, self.metrics)
        return slot

    def _worker(self, name: str) -> ModelWorker:
        worker = self.workers.get(name)
        if worker is None:
            worker = self.workers[name] = ModelWorker(self, self.slot(name))
            if self._group is not None:
                self._group.create_task(worker.run(), name=f"model-worker:{name}")
        return worker

    def submit(self, payload: bytes) -> None:
        """Hand over a desired-state payload; the newest wins if several arrive meanwhile."""
        self._pending = payload
        self._wake.set()

    async def run(self) -> None:
        """Take desired states until cancelled. The model workers run in the same task
        group: a worker that fails (a bug, not a refusal) ends the updater with its error."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            for name, worker in self.workers.items():
                group.create_task(worker.run(), name=f"model-worker:{name}")
            await self.learn_floor()
            resume = self.pending_desired()
            if resume is not None:  # finish what a previous run accepted (e.g. killed mid-download)
                self.dispatch(resume)
            while True:
                await self._wake.wait()
                self._wake.clear()
                payload, self._pending = self._pending, None
                if payload is not None:
                    await self.apply(payload)

    async def follow_trust(self, wanted: int) -> None:
        """Move the trust store one version at a time up to ``wanted`` (what a desired state
        says the control plane is at), each version checked against the one before and
        saved before the next: a version signed by any other key changes nothing."""
        chain = await fetch_trust_chain(
            self.http, self.settings.control_plane_url, self.trust.version
        )
        for link in chain:
            if self.trust.version >= wanted:
                break
            trust = check_successor(self.trust, link)
            await asyncio.to_thread(self.store.write_trust, trust)
            self.trust = trust
            log.info("%s: trust store version %d", self.settings.device_id, trust.version)

    async def apply(self, payload: bytes) -> None:
        try:
            desired = parse_desired(payload, MAX_DESIRED_BYTES)
            if desired.trust_version is not None and desired.trust_version > self.trust.version:
                try:
                    await self.follow_trust(desired.trust_version)
                except VerificationError as exc:
                    if exc.reason != "trust_store_unknown":
                        raise  # a version the keys before it did not sign: refused
                    # The control plane did not answer: judge the desired state under the
                    # trust store this device has (its next one follows again).
                    log.warning("%s: trust store not followed: %s", self.settings.device_id, exc)
            decision = check_desired(
                desired,
                trust=self.trust,
                device_id=self.settings.device_id,
                accepted=self.accepted,
                floor=self.floor,
                now=_now(),
            )
        except VerificationError as exc:
            if exc.reason in ("too_large", "malformed", "schema_version"):
                self.dropped_messages += 1
            log.warning("%s: desired state refused: %s", self.settings.device_id, exc)
            self.last_error = error_info(exc.reason, exc.message, None)
            await self.report()
            return
        if decision is Decision.APPLY:
            # Persisted before acting: replays stay refused after a restart.
            await asyncio.to_thread(self.store.write_accepted, desired)
            self.accepted = Accepted(seq=desired.seq, signature=desired.signature)
            log.info("%s: desired state %d accepted", self.settings.device_id, desired.seq)
        self.dispatch(desired)
        await self.report()

    def dispatch(self, desired: DesiredState) -> None:
        """Give each model its new target; models the state does not name keep serving as
        they are (an update of theirs still in flight is called off)."""
        named = frozenset(deployment.manifest.name for deployment in desired.models)
        self.assigned = named
        mirrors = tuple(desired.mirrors or ())
        for deployment in desired.models:
            self._worker(deployment.manifest.name).want(deployment, desired.seq, mirrors)
        for name, worker in self.workers.items():
            if name not in named:
                worker.release()


class ModelWorker:
    """Everything that changes what one model name serves on this device: installs, the
    probation watch, reverts. One task per model name, woken by ``want``/``release`` and by
    probation decisions."""

    def __init__(self, updater: Updater, slot: ModelSlot) -> None:
        self.updater = updater
        self.store = updater.store
        self.slot = slot
        self.name = slot.name
        self.disk = Slots()  # slots.json as last written
        self.wanted: tuple[DeploymentModel, int] | None = None
        self.mirrors: tuple[str, ...] = ()  # where the wanted artifact may come from first
        self.standby: LoadedModel | None = None  # the rollback slot, loaded, while on probation
        self._changed = asyncio.Event()
        self._download: asyncio.Task[None] | None = None
        self._downloading: str | None = None  # sha256 of the download in flight
        self._kept_part: str | None = None  # the latest superseded partial download
        self._retry_delay = RETRY_MIN_SECONDS

    # --- what is wanted ----------------------------------------------------------------------

    def want(self, deployment: DeploymentModel, seq: int, mirrors: tuple[str, ...] = ()) -> None:
        """The newest desired state names this model: serve ``deployment``'s version
        (downloaded from ``mirrors`` first, if it has to be)."""
        self.wanted = (deployment, seq)
        self.mirrors = mirrors
        self._preempt()
        self._changed.set()

    def release(self) -> None:
        """The newest desired state does not name this model: keep serving what serves."""
        if self.wanted is not None:
            self.wanted = None
            self._preempt()
            self._changed.set()

    def wanted_sha(self) -> str | None:
        return self.wanted[0].manifest.sha256 if self.wanted else None

    def _preempt(self) -> None:
        download = self._download
        if download is not None and not download.done() and self._downloading != self.wanted_sha():
            download.cancel()

    # --- start-up ----------------------------------------------------------------------------

    def load_from_disk(self, accepted_seq: int) -> None:
        """Serve the active version (or, if it fails verification, the previous one); a
        refusal recorded before the restart is reported again."""
        slots = self.store.read_slots(self.name)
        self.disk = slots
        if slots.last_error is not None:
            self.slot.last_error = slots.last_error
            failed = slots.last_error.reason == "probation_failed"
            self.slot.phase = Phase.REVERTED if failed else Phase.FAILED
        for entry, role in ((slots.active, "active"), (slots.previous, "previous")):
            if entry is None:
                continue
            try:
                model = self.updater.load_verified(self.name, entry.sha256)
            except (VerificationError, OSError, ValueError) as exc:
                log.error(
                    "model %s: %s version %s on disk fails verification: %s",
                    self.name,
                    role,
                    entry.version,
                    exc,
                )
                self.slot.last_error = error_info("store_corrupt", str(exc), self.name)
                continue
            on_probation = role == "active" and not slots.committed
            new_slots = slots.model_copy(
                update={
                    "active": entry,
                    "previous": slots.previous if role == "active" else None,
                    "committed": not on_probation,
                }
            )
            if new_slots != slots:
                self.store.write_slots(self.name, new_slots)
                self.disk = new_slots
            slot = self.slot
            slot.previous = _ref(new_slots.previous, self.name)
            slot.rollout_id, slot.stage = entry.rollout_id, entry.stage
            slot.verdict, slot.probation_requests = entry.verdict, entry.probation_requests
            slot.activate(
                model, self._probation(entry.sha256, accepted_seq) if on_probation else None
            )
            if on_probation:
                slot.phase = Phase.PROBATION
            elif slot.phase not in (Phase.FAILED, Phase.REVERTED):  # a refusal stays true
                slot.phase = Phase.SERVING
            log.info(
                "model %s: serving v%s from disk%s",
                self.name,
                entry.version,
                ", on probation again" if on_probation else "",
            )
            return

    def _probation(self, sha256: str, seq: int) -> Probation:
        settings = self.updater.settings
        return Probation(
            sha256=sha256,
            seq=seq,
            min_requests=settings.probation_requests,
            min_seconds=settings.probation_seconds,
            latency_budget_us=settings.probation_latency_budget_ms * 1000,
            max_error_rate=settings.probation_max_error_rate,
        )

    # --- the worker --------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            self._changed.clear()
            if self.slot.probation is not None:
                await self._watch_probation(self.slot.probation)
                continue
            wanted = self.wanted
            if wanted is None or await self._satisfied(*wanted):
                await self._settle_phase()
                await self._changed.wait()
                continue
            outcome = await self._install(*wanted)
            if outcome is Outcome.RETRY:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_jitter(self._retry_delay)):
                        await self._changed.wait()
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)

    async def _report(self) -> None:
        await self.updater.report()

    async def _write(self, slots: Slots) -> None:
        await asyncio.to_thread(self.store.write_slots, self.name, slots)
        self.disk = slots

    async def _take_resigned(self, manifest: ModelManifest) -> None:
        """The version serving, with its manifest signed again (a model-key rotation): keep
        the new signature, so the version still verifies after the old key is retired. A
        manifest that does not verify, or says anything else, is ignored (logged)."""
        unsigned = {"key_id", "signature"}
        try:
            stored = await asyncio.to_thread(self.store.read_manifest, self.name, manifest.sha256)
            if stored.signature == manifest.signature:
                return
            verify_manifest(manifest, self.updater.trust)
            if manifest.model_dump(exclude=unsigned) != stored.model_dump(exclude=unsigned):
                raise VerificationError("manifest_changed", "the same artifact, another manifest")
            await asyncio.to_thread(self.store.write_manifest, manifest)
        except (VerificationError, OSError, ValueError) as exc:
            log.warning("model %s: the manifest signed again is not taken: %s", self.name, exc)

    async def _satisfied(self, deployment: DeploymentModel, seq: int) -> bool:
        """Nothing to install: the version serves already (its rollout and stage are
        brought up to date), or it was refused under this very desired state."""
        sha = deployment.manifest.sha256
        slot = self.slot
        if slot.current is not None and slot.current.manifest.sha256 == sha:
            await self._take_resigned(deployment.manifest)
            if (slot.rollout_id, slot.stage) != (deployment.rollout_id, deployment.stage):
                slot.rollout_id, slot.stage = deployment.rollout_id, deployment.stage
                if self.disk.active is not None:
                    await self._write(
                        self.disk.model_copy(
                            update={
                                "active": self.disk.active.model_copy(
                                    update={
                                        "rollout_id": deployment.rollout_id,
                                        "stage": deployment.stage,
                                    }
                                )
                            }
                        )
                    )
                await self._report()
            if slot.phase in (Phase.FAILED, Phase.REVERTED):
                slot.phase = Phase.SERVING  # a newer desired state asks for what serves
                await self._report()
            return True
        return self.disk.failed == FailedTarget(sha256=sha, seq=seq)

    async def _settle_phase(self) -> None:
        """Nothing in flight: say so (no target, and not a phase of an update)."""
        slot = self.slot
        if slot.target is not None or slot.phase in (Phase.DOWNLOADING, Phase.VERIFYING):
            slot.target = None
            if slot.phase in (Phase.DOWNLOADING, Phase.VERIFYING, Phase.IDLE):
                slot.phase = Phase.SERVING if slot.current is not None else Phase.IDLE
            await self._report()

    # --- install -----------------------------------------------------------------------------

    async def _install(self, deployment: DeploymentModel, seq: int) -> Outcome:
        manifest = deployment.manifest
        name, sha = self.name, manifest.sha256
        slot = self.slot
        slot.target = ModelRef(name=name, version=manifest.version, sha256=sha)
        try:
            check_model_manifest(
                manifest, self.updater.trust, self.updater.settings.max_artifact_bytes
            )
            if self.store.has_artifact(name, sha):
                path = self.store.artifact_path(name, sha)  # e.g. back to the rollback slot
            else:
                slot.phase = Phase.DOWNLOADING
                await self._report()
                path = self.store.staging_path(sha)
                if not await self._download_to(manifest):
                    return Outcome.SUPERSEDED
            if self.wanted_sha() != sha:
                return Outcome.SUPERSEDED
            slot.phase = Phase.VERIFYING
            await self._report()
            model = await self._verify(path, manifest)
            if self.wanted_sha() != sha:  # the verified download stays staged for later
                return Outcome.SUPERSEDED
            if path == self.store.staging_path(sha):  # verified: move it into the store
                await asyncio.to_thread(self.store.install, manifest, path)
        except VerificationError as exc:
            if exc.reason in TRANSIENT:
                # The network, not the artifact: keep the partial download, try again later.
                log.info(
                    "model %s v%s: %s; retrying in about %.0f s",
                    name,
                    manifest.version,
                    exc,
                    self._retry_delay,
                )
                slot.last_error = error_info(exc.reason, exc.message, name, seq)
                slot.phase = Phase.DOWNLOADING
                await self._report()
                return Outcome.RETRY
            log.warning("model %s v%s refused: %s", name, manifest.version, exc)
            # The refused bytes go before the refusal shows: whoever sees it sees no leftover.
            await asyncio.to_thread(self.store.discard_staging, sha)
            if self._kept_part == sha:
                self._kept_part = None
            slot.last_error = error_info(exc.reason, exc.message, name, seq)
            await self._write(
                self.disk.model_copy(
                    update={
                        "failed": FailedTarget(sha256=sha, seq=seq),
                        "last_error": slot.last_error,
                    }
                )
            )
            slot.phase, slot.target = Phase.FAILED, None
            await self._report()
            return Outcome.REFUSED
        self._retry_delay = RETRY_MIN_SECONDS
        await self._activate(model, deployment, seq)
        return Outcome.DONE

    async def _download_to(self, manifest: ModelManifest) -> bool:
        """Download into staging; False when a newer desired state called it off (the
        partial file stays for a later resume: the latest one per model)."""
        sha = manifest.sha256
        settings = self.updater.settings
        url = f"{settings.control_plane_url}/api/v1/artifacts/{sha}"
        download = asyncio.create_task(
            self._fetch(manifest, url), name=f"download:{self.name}:{sha[:12]}"
        )
        self._download, self._downloading = download, sha
        try:
            await download
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the agent stops (awaiting the download cancelled it, too)
            log.info("model %s: download of v%s called off", self.name, manifest.version)
            if self._kept_part not in (None, sha):
                await asyncio.to_thread(self.store.discard_staging, self._kept_part)
            self._kept_part = sha
            return False
        finally:
            self._download, self._downloading = None, None
        if self._kept_part == sha:
            self._kept_part = None
        return True

    async def _fetch(self, manifest: ModelManifest, url: str) -> None:
        """The artifact into staging: from the first mirror that has the right bytes (its
        sha256 checked before the file takes the control plane's staging place), else from
        the control plane. A mirror that is down, slow or wrong costs one attempt."""
        sha, updater = manifest.sha256, self.updater
        part = self.store.staging_path(sha)
        mirrors = self.mirrors if updater.mirror_http is not None else ()
        if mirrors and not part.exists():  # a download from the control plane resumes there
            rules = dataclasses.replace(updater.rules, attempts=1)
            held = self.store.mirror_staging_path(sha)
            for mirror in mirrors:
                source = f"{mirror.rstrip('/')}/{sha[:2]}/{sha}"
                try:
                    assert updater.mirror_http is not None
                    await fetch_artifact(
                        updater.mirror_http, source, held, size=manifest.size, rules=rules
                    )
                    digest, _ = await asyncio.to_thread(hash_file, held)
                    if digest != sha:
                        raise VerificationError(
                            "sha256_mismatch", f"the mirror sent sha256 {digest[:16]}…"
                        )
                except VerificationError as exc:
                    log.warning("model %s: mirror %s: %s; next source", self.name, mirror, exc)
                    await asyncio.to_thread(held.unlink, missing_ok=True)
                    continue
                await asyncio.to_thread(move_atomic, held, part)
                log.info("model %s: v%s from mirror %s", self.name, manifest.version, mirror)
                return
        await fetch_artifact(updater.http, url, part, size=manifest.size, rules=updater.rules)

    async def _verify(self, path: Path, manifest: ModelManifest) -> LoadedModel:
        digest, size = await asyncio.to_thread(hash_file, path)
        if size != manifest.size:
            raise VerificationError(
                "size_mismatch", f"{size} bytes, the manifest declares {manifest.size}"
            )
        if digest != manifest.sha256:
            raise VerificationError(
                "sha256_mismatch",
                f"downloaded sha256 {digest[:16]}… differs from the manifest's "
                f"{manifest.sha256[:16]}…",
            )
        return await asyncio.to_thread(load_model, path, manifest)

    async def _activate(self, model: LoadedModel, deployment: DeploymentModel, seq: int) -> None:
        manifest = model.manifest
        slot, disk = self.slot, self.disk
        entry = SlotEntry(
            sha256=manifest.sha256,
            version=manifest.version,
            rollout_id=deployment.rollout_id,
            stage=deployment.stage,
        )
        back = disk.previous is not None and disk.previous.sha256 == entry.sha256
        if back:  # to the rollback slot: committed on this device before, no probation
            assert disk.previous is not None
            entry = entry.model_copy(
                update={
                    "verdict": disk.previous.verdict,
                    "probation_requests": disk.previous.probation_requests,
                }
            )
        previous = (
            disk.active if disk.active and disk.active.sha256 != entry.sha256 else disk.previous
        )
        new_slots = Slots(active=entry, previous=previous, committed=back)
        await self._write(new_slots)  # the commit point on disk
        self.standby = slot.current
        slot.activate(model, None if back else self._probation(manifest.sha256, seq))
        slot.previous = _ref(previous, self.name)
        slot.rollout_id, slot.stage = deployment.rollout_id, deployment.stage
        slot.verdict, slot.probation_requests = entry.verdict, entry.probation_requests
        slot.phase = Phase.SERVING if back else Phase.PROBATION
        slot.target, slot.last_error = None, None
        await asyncio.to_thread(self.store.prune, self.name, new_slots)
        log.info(
            "model %s: v%s active%s",
            self.name,
            manifest.version,
            " again (the rollback slot)" if back else ", on probation",
        )
        if back:
            self.standby = None
        await self._report()

    # --- probation ---------------------------------------------------------------------------

    async def _watch_probation(self, probation: Probation) -> None:
        """Until the probation ends: a failure reverts, enough requests or the time commits,
        a newer desired state pre-empts (see the module's docstring)."""
        loop = asyncio.get_running_loop()

        def wake() -> None:  # from an HTTP thread, or from the loop itself
            loop.call_soon_threadsafe(self._changed.set)

        probation.on_decision = wake
        while True:
            self._changed.clear()
            if (reason := probation.failure()) is not None:
                await self._revert(probation, reason)
                return
            if probation.passed():
                await self._commit(probation, probation.verdict())
                return
            wanted = self.wanted_sha()
            if wanted is not None and wanted != probation.sha256:
                previous = self.disk.previous
                if previous is not None and wanted == previous.sha256:
                    await self._revert(probation, None)  # a rollback: at once
                else:
                    await self._commit(probation, Verdict.UNJUDGED)
                return
            if self.wanted is not None:  # the same version, maybe in another rollout stage
                await self._satisfied(*self.wanted)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(probation.remaining()):
                    await self._changed.wait()

    async def _commit(self, probation: Probation, verdict: Verdict) -> None:
        disk = self.disk
        assert disk.active is not None
        active = disk.active.model_copy(
            update={"verdict": verdict, "probation_requests": probation.requests}
        )
        await self._write(disk.model_copy(update={"active": active, "committed": True}))
        slot = self.slot
        slot.probation, slot.phase = None, Phase.SERVING
        slot.verdict, slot.probation_requests = verdict, probation.requests
        self.standby = None
        log.info(
            "model %s: v%s committed after probation (%s, %d requests)",
            self.name,
            active.version,
            verdict.value,
            probation.requests,
        )
        await self._report()

    async def _revert(self, probation: Probation, reason: str | None) -> None:
        """Back to the rollback slot: because the version failed (``reason``), or because a
        newer desired state asks for the rollback slot's version (``None``)."""
        disk, slot = self.disk, self.slot
        bad, restored = disk.active, disk.previous
        assert bad is not None
        model = None
        if restored is not None:
            if self.standby is not None and self.standby.manifest.sha256 == restored.sha256:
                model = self.standby
            else:  # e.g. after a restart during probation
                try:
                    model = await asyncio.to_thread(
                        self.updater.load_verified, self.name, restored.sha256
                    )
                except (VerificationError, OSError, ValueError) as exc:
                    log.error("model %s: the rollback slot fails verification: %s", self.name, exc)
                    restored = None
        error = None
        if reason is not None:
            error = error_info(
                "probation_failed", f"v{bad.version}: {reason}", self.name, probation.seq
            )
        reverted = Slots(
            active=restored,
            previous=None,
            committed=True,
            failed=FailedTarget(sha256=bad.sha256, seq=probation.seq) if error else None,
            last_error=error,
        )
        await self._write(reverted)
        if model is not None:
            slot.activate(model, None)
        else:
            slot.current, slot.probation = None, None
        slot.previous, self.standby = None, None
        if restored is not None:
            slot.rollout_id, slot.stage = restored.rollout_id, restored.stage
            slot.verdict, slot.probation_requests = restored.verdict, restored.probation_requests
        if reason is None:
            slot.phase = Phase.SERVING if model is not None else Phase.IDLE
            log.info("model %s: v%s set aside for a rollback", self.name, bad.version)
        else:
            slot.phase, slot.last_error = Phase.REVERTED, error
            log.warning(
                "model %s: v%s failed probation (%s); reverted", self.name, bad.version, reason
            )
        await asyncio.to_thread(self.store.prune, self.name, reverted)
        await self._report()
