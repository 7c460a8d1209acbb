"""The on-device model store: verified artifacts, per-model slots (active + previous), and
the last accepted desired state. Every change is an atomic file replace, so a crash at any
point leaves either the old or the new state on disk, never a mix.

Layout under ``data_dir``::

    state.json                     last accepted desired state (sequence survives restarts)
    staging/SHA.part               downloads in progress (resumed with Range)
    models/NAME/SHA.onnx           verified artifacts (only active and previous are kept)
    models/NAME/SHA.manifest.json  their signed manifests
    models/NAME/slots.json         which is active, which is the rollback slot
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from agent.durable import move_atomic, remove_interrupted_writes, write_atomic
from shared.manifest import ModelManifest
from shared.messages import DesiredState, ErrorInfo, Verdict
from shared.trust import TrustStore

FOLLOWED_TRUST_STORE = "trust-store.json"


class _Local(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlotEntry(_Local):
    sha256: str
    version: int
    rollout_id: str | None = None
    stage: str | None = None
    verdict: Verdict | None = None  # how its probation ended (None: on probation, or never)
    probation_requests: int | None = None  # requests it served on probation


class FailedTarget(_Local):
    """A version refused under a given desired state: not retried until a newer one."""

    sha256: str
    seq: int


class Slots(_Local):
    active: SlotEntry | None = None
    previous: SlotEntry | None = None
    committed: bool = True  # False while the active version is on probation
    failed: FailedTarget | None = None
    last_error: ErrorInfo | None = None  # why ``failed`` was refused (reported after restarts)


class AcceptedState(_Local):
    seq: int
    desired: DesiredState


class ModelStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.models_dir = data_dir / "models"
        self.staging_dir = data_dir / "staging"
        for directory in (data_dir, self.models_dir, self.staging_dir):
            directory.mkdir(parents=True, exist_ok=True)

    # --- the trust store followed -------------------------------------------------------------

    @property
    def trust_path(self) -> Path:
        """The latest trust-store version followed (the configured file may be read-only)."""
        return self.data_dir / FOLLOWED_TRUST_STORE

    def write_trust(self, trust: TrustStore) -> None:
        write_atomic(self.trust_path, trust.model_dump_json().encode())

    def write_manifest(self, manifest: ModelManifest) -> None:
        """Replace an installed version's manifest (the same artifact, signed again after a
        key rotation)."""
        write_atomic(
            self.manifest_path(manifest.name, manifest.sha256), manifest.model_dump_json().encode()
        )

    # --- accepted desired state ---------------------------------------------------------------

    def read_accepted(self) -> AcceptedState | None:
        path = self.data_dir / "state.json"
        if not path.exists():
            return None
        return AcceptedState.model_validate_json(path.read_bytes())

    def write_accepted(self, desired: DesiredState) -> None:
        state = AcceptedState(seq=desired.seq, desired=desired)
        write_atomic(self.data_dir / "state.json", state.model_dump_json().encode())

    # --- slots -------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return sorted(p.name for p in self.models_dir.iterdir() if (p / "slots.json").exists())

    def read_slots(self, name: str) -> Slots:
        path = self.models_dir / name / "slots.json"
        return Slots.model_validate_json(path.read_bytes()) if path.exists() else Slots()

    def write_slots(self, name: str, slots: Slots) -> None:
        directory = self.models_dir / name
        directory.mkdir(exist_ok=True)
        write_atomic(directory / "slots.json", slots.model_dump_json().encode())

    # --- artifacts ---------------------------------------------------------------------------

    def artifact_path(self, name: str, sha256: str) -> Path:
        return self.models_dir / name / f"{sha256}.onnx"

    def manifest_path(self, name: str, sha256: str) -> Path:
        return self.models_dir / name / f"{sha256}.manifest.json"

    def staging_path(self, sha256: str) -> Path:
        return self.staging_dir / f"{sha256}.part"

    def mirror_staging_path(self, sha256: str) -> Path:
        """Where a download from a mirror goes until its sha256 holds: apart from the
        control plane's, so bytes from a mirror never finish a download from it."""
        return self.staging_dir / f"{sha256}.mirror"

    def has_artifact(self, name: str, sha256: str) -> bool:
        return (
            self.artifact_path(name, sha256).is_file()
            and self.manifest_path(name, sha256).is_file()
        )

    def read_manifest(self, name: str, sha256: str) -> ModelManifest:
        return ModelManifest.model_validate_json(self.manifest_path(name, sha256).read_bytes())

    def install(self, manifest: ModelManifest, staged: Path) -> Path:
        """Move a verified download into the store (not yet active: ``write_slots`` does that)."""
        directory = self.models_dir / manifest.name
        directory.mkdir(exist_ok=True)
        self.write_manifest(manifest)
        target = self.artifact_path(manifest.name, manifest.sha256)
        if staged != target:
            move_atomic(staged, target)
        return target

    def prune(self, name: str, slots: Slots) -> None:
        """Remove artifacts that are neither active nor previous."""
        keep = {e.sha256 for e in (slots.active, slots.previous) if e is not None}
        for path in (self.models_dir / name).glob("*.onnx"):
            sha = path.name.removesuffix(".onnx")
            if sha not in keep:
                path.unlink(missing_ok=True)
                self.manifest_path(name, sha).unlink(missing_ok=True)

    def discard_interrupted_writes(self) -> list[Path]:
        """Remove what atomic writes a crash interrupted left behind (in the data dir and in
        each model's directory); the files removed. At start-up only."""
        removed = remove_interrupted_writes(self.data_dir)
        for directory in sorted(self.models_dir.iterdir()):
            if directory.is_dir():
                removed += remove_interrupted_writes(directory)
        return removed

    def staged(self) -> list[str]:
        """sha256 of every download in staging (complete or not)."""
        return sorted({p.name.split(".")[0] for p in self.staging_dir.glob("*.*")})

    def discard_staging(self, sha256: str) -> None:
        for path in (self.staging_path(sha256), self.mirror_staging_path(sha256)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
