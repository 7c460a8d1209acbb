"""The update pipeline: desired state → verify → download → verify → stage → swap →
probation → commit or revert. Checks live in ``agent.verify`` (pure); this module does the
I/O around them. Any failure at any step leaves the serving model as it was."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx

from agent.config import AgentSettings
from agent.fetch import DownloadRules, fetch_artifact, hash_file
from agent.inference import LoadedModel, load_model
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
)
from shared.trust import TrustStore
from shared.verification import verify_manifest

log = logging.getLogger(__name__)
Report = Callable[[], Awaitable[None]]
# Failures of the path, not of the artifact: retried with backoff, never recorded as refusals.
TRANSIENT = frozenset({"download_failed", "download_timeout"})
RETRY_MIN_SECONDS = 2.0
RETRY_MAX_SECONDS = 120.0


def _now() -> datetime:
    return datetime.now(UTC)


def _ref(entry: SlotEntry | None, name: str) -> ModelRef | None:
    return ModelRef(name=name, version=entry.version, sha256=entry.sha256) if entry else None


class Updater:
    def __init__(
        self,
        settings: AgentSettings,
        trust: TrustStore,
        store: ModelStore,
        http: httpx.AsyncClient,
        report: Report,
    ) -> None:
        self.settings = settings
        self.trust = trust
        self.store = store
        self.http = http
        self.report = report
        self.slots: dict[str, ModelSlot] = {}
        self.accepted: Accepted | None = None
        self.last_error: ErrorInfo | None = None
        self.dropped_messages = 0
        self._pending: bytes | None = None
        self._wake = asyncio.Event()
        self._retry_due = False
        self._retry_delay = RETRY_MIN_SECONDS
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
        or swapped while the agent was down): signature, sha256, load, golden vectors."""
        accepted = self.store.read_accepted()
        if accepted is not None:
            self.accepted = Accepted(seq=accepted.seq, signature=accepted.desired.signature)
        for name in self.store.model_names():
            slots = self.store.read_slots(name)
            slot = self.slot(name)
            for entry, role in ((slots.active, "active"), (slots.previous, "previous")):
                if entry is None:
                    continue
                try:
                    model = self._load_verified(name, entry.sha256)
                except (VerificationError, OSError, ValueError) as exc:
                    log.error(
                        "model %s: %s version %s on disk fails verification: %s",
                        name,
                        role,
                        entry.version,
                        exc,
                    )
                    slot.last_error = self._error("store_corrupt", str(exc), name)
                    continue
                new_slots = Slots(
                    active=entry,
                    previous=slots.previous if role == "active" else None,
                    committed=slots.committed and role == "active",
                    failed=slots.failed,
                )
                if new_slots != slots:
                    self.store.write_slots(name, new_slots)
                slot.previous = _ref(new_slots.previous, name)
                slot.rollout_id, slot.stage = entry.rollout_id, entry.stage
                slot.activate(model, None)
                slot.phase = Phase.SERVING
                log.info("model %s: serving v%s from disk", name, entry.version)
                break

    def _load_verified(self, name: str, sha256: str) -> LoadedModel:
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

    # --- desired states ----------------------------------------------------------------------

    def slot(self, name: str) -> ModelSlot:
        return self.slots.setdefault(name, ModelSlot(name))

    def submit(self, payload: bytes) -> None:
        """Hand over a desired-state payload; the newest wins if several arrive meanwhile."""
        self._pending = payload
        self._wake.set()

    async def run(self) -> None:
        resume = self.pending_desired()
        if resume is not None:  # finish what a previous run accepted (e.g. killed mid-download)
            await self.reconcile(resume)
        while True:
            retry = self._retry_due
            try:
                async with asyncio.timeout(self._retry_delay if retry else None):
                    await self._wake.wait()
            except TimeoutError:  # a download failed for want of a network: try again
                self._retry_due = False
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)
                if (desired := self.pending_desired()) is not None:
                    await self.reconcile(desired)
                continue
            self._wake.clear()
            payload, self._pending = self._pending, None
            if payload is not None:
                await self.apply(payload)

    async def apply(self, payload: bytes) -> None:
        try:
            desired = parse_desired(payload, MAX_DESIRED_BYTES)
            decision = check_desired(
                desired,
                trust=self.trust,
                device_id=self.settings.device_id,
                accepted=self.accepted,
                now=_now(),
            )
        except VerificationError as exc:
            if exc.reason in ("too_large", "malformed", "schema_version"):
                self.dropped_messages += 1
            log.warning("desired state refused: %s", exc)
            self.last_error = self._error(exc.reason, exc.message, None)
            await self.report()
            return
        if decision is Decision.APPLY:
            await asyncio.to_thread(
                self.store.write_accepted, desired
            )  # persisted before acting: replays stay refused
            self.accepted = Accepted(seq=desired.seq, signature=desired.signature)
            log.info("desired state %d accepted", desired.seq)
        await self.reconcile(desired)

    async def reconcile(self, desired: DesiredState) -> None:
        for deployment in desired.models:
            await self.install(deployment, desired.seq)
        await self.report()

    # --- one model ---------------------------------------------------------------------------

    async def install(self, deployment: DeploymentModel, seq: int) -> None:
        manifest = deployment.manifest
        name = manifest.name
        slot = self.slot(name)
        slots = self.store.read_slots(name)
        if slot.current is not None and slot.current.manifest.sha256 == manifest.sha256:
            if (slot.rollout_id, slot.stage) != (deployment.rollout_id, deployment.stage):
                slot.rollout_id, slot.stage = deployment.rollout_id, deployment.stage
                if slots.active is not None:
                    await asyncio.to_thread(
                        self.store.write_slots,
                        name,
                        slots.model_copy(
                            update={
                                "active": slots.active.model_copy(
                                    update={
                                        "rollout_id": deployment.rollout_id,
                                        "stage": deployment.stage,
                                    }
                                )
                            }
                        ),
                    )
            return
        if slots.failed == FailedTarget(sha256=manifest.sha256, seq=seq):
            return  # refused under this very desired state already; wait for a newer one
        slot.target = ModelRef(name=name, version=manifest.version, sha256=manifest.sha256)
        try:
            model = await self._fetch_and_verify(slot, manifest)
        except VerificationError as exc:
            if exc.reason in TRANSIENT:
                # The network, not the artifact: keep the partial download, try again later.
                log.info(
                    "model %s v%s: %s; retrying in %.0f s",
                    name,
                    manifest.version,
                    exc,
                    self._retry_delay,
                )
                slot.last_error = self._error(exc.reason, exc.message, name, seq)
                slot.phase, self._retry_due = Phase.DOWNLOADING, True
                await self.report()
                return
            log.warning("model %s v%s refused: %s", name, manifest.version, exc)
            await asyncio.to_thread(
                self.store.write_slots,
                name,
                slots.model_copy(update={"failed": FailedTarget(sha256=manifest.sha256, seq=seq)}),
            )
            await asyncio.to_thread(self.store.discard_staging, manifest.sha256)
            slot.last_error = self._error(exc.reason, exc.message, name, seq)
            slot.phase, slot.target = Phase.FAILED, None
            await self.report()
            return
        self._retry_delay = RETRY_MIN_SECONDS
        await self._activate(slot, slots, model, deployment, seq)

    async def _fetch_and_verify(self, slot: ModelSlot, manifest: ModelManifest) -> LoadedModel:
        name, sha = manifest.name, manifest.sha256
        check_model_manifest(manifest, self.trust, self.settings.max_artifact_bytes)
        if self.store.has_artifact(name, sha):
            path = self.store.artifact_path(name, sha)  # e.g. a rollback to the previous slot
        else:
            slot.phase = Phase.DOWNLOADING
            await self.report()
            path = self.store.staging_path(sha)
            url = f"{self.settings.control_plane_url}/api/v1/artifacts/{sha}"
            await fetch_artifact(self.http, url, path, size=manifest.size, rules=self.rules)
        slot.phase = Phase.VERIFYING
        await self.report()
        digest, size = await asyncio.to_thread(hash_file, path)
        if size != manifest.size:
            raise VerificationError(
                "size_mismatch", f"{size} bytes, the manifest declares {manifest.size}"
            )
        if digest != sha:
            raise VerificationError(
                "sha256_mismatch",
                f"downloaded sha256 {digest[:16]}… differs from the manifest's {sha[:16]}…",
            )
        model = await asyncio.to_thread(load_model, path, manifest)
        if path == self.store.staging_path(sha):  # verified: move it into the store
            await asyncio.to_thread(self.store.install, manifest, path)
        return model

    async def _activate(
        self,
        slot: ModelSlot,
        slots: Slots,
        model: LoadedModel,
        deployment: DeploymentModel,
        seq: int,
    ) -> None:
        manifest = model.manifest
        name = manifest.name
        entry = SlotEntry(
            sha256=manifest.sha256,
            version=manifest.version,
            rollout_id=deployment.rollout_id,
            stage=deployment.stage,
        )
        previous = (
            slots.active if slots.active and slots.active.sha256 != entry.sha256 else slots.previous
        )
        new_slots = Slots(active=entry, previous=previous, committed=False)
        await asyncio.to_thread(self.store.write_slots, name, new_slots)  # the commit point on disk
        old_model = slot.current
        probation = Probation(
            sha256=manifest.sha256,
            min_requests=self.settings.probation_requests,
            min_seconds=self.settings.probation_seconds,
            latency_budget_us=self.settings.probation_latency_budget_ms * 1000,
            max_error_rate=self.settings.probation_max_error_rate,
        )
        slot.activate(model, probation)
        slot.previous = _ref(previous, name)
        slot.rollout_id, slot.stage = deployment.rollout_id, deployment.stage
        slot.phase, slot.target, slot.last_error = Phase.PROBATION, None, None
        await asyncio.to_thread(self.store.prune, name, new_slots)
        log.info("model %s: v%s active, on probation", name, manifest.version)
        await self.report()

        while (reason := probation.failure()) is None and not probation.passed():
            await asyncio.sleep(0.05)
        if reason is None:
            await asyncio.to_thread(
                self.store.write_slots, name, new_slots.model_copy(update={"committed": True})
            )
            slot.probation, slot.phase = None, Phase.SERVING
            log.info("model %s: v%s committed after probation", name, manifest.version)
        else:
            await self._revert(slot, new_slots, old_model, reason, seq)
        await self.report()

    async def _revert(
        self, slot: ModelSlot, slots: Slots, old_model: LoadedModel | None, reason: str, seq: int
    ) -> None:
        bad = slots.active
        assert bad is not None
        restored = slots.previous if old_model is not None else None
        reverted = Slots(
            active=restored,
            previous=None,
            committed=True,
            failed=FailedTarget(sha256=bad.sha256, seq=seq),
        )
        await asyncio.to_thread(self.store.write_slots, slot.name, reverted)
        if old_model is not None:
            slot.activate(old_model, None)
        else:
            slot.current = None
        slot.previous = None
        if restored is not None:
            slot.rollout_id, slot.stage = restored.rollout_id, restored.stage
        slot.probation, slot.phase = None, Phase.REVERTED
        slot.last_error = self._error(
            "probation_failed", f"v{bad.version}: {reason}", slot.name, seq
        )
        log.warning("model %s: v%s failed probation (%s); reverted", slot.name, bad.version, reason)
        await asyncio.to_thread(self.store.prune, slot.name, reverted)

    def _error(
        self, reason: str, message: str, model: str | None, seq: int | None = None
    ) -> ErrorInfo:
        return ErrorInfo(reason=reason, message=message[:500], at=_now(), model=model, seq=seq)
