"""Models as ``edgefleet models pull`` writes them into a directory — ``NAME-vN.manifest.json``,
``NAME-vN.onnx`` and ``trust-store.json`` — checked offline (``edgefleet verify``), or loaded
to be served with no broker and no control plane (``edgefleet serve DIR``).

The checks are the agent's own (``shared.verification``, ``agent.verify``,
``agent.inference.load_model``); this module only finds and reads the files.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from agent.config import DEFAULT_MAX_ARTIFACT_BYTES
from agent.inference import LoadedModel, load_model
from agent.slot import ModelUnavailableError, Prediction
from agent.verify import check_model_manifest
from shared.errors import VerificationError
from shared.hashing import Sha256Stream, sha256_bytes
from shared.manifest import ModelManifest
from shared.trust import TrustStore
from shared.verification import check_artifact, verify_manifest

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
CHUNK = 1024 * 1024
TRUST_STORE_FILE = "trust-store.json"
MANIFEST_SUFFIX = ".manifest.json"
_PULLED_STEM = re.compile(r"^(?P<name>.+)-v(?P<version>[0-9]+)$")


def read_document(path: Path, what: str) -> bytes:
    """A small JSON document's bytes (at most ``MAX_DOCUMENT_BYTES``)."""
    if not path.is_file():
        raise VerificationError("unreadable", f"{what} {path} is not a file")
    if path.stat().st_size > MAX_DOCUMENT_BYTES:
        raise VerificationError("too_large", f"{what} {path} is over {MAX_DOCUMENT_BYTES} bytes")
    return path.read_bytes()


def read_trust_store(path: Path) -> TrustStore:
    try:
        return TrustStore.model_validate_json(read_document(path, "trust store"))
    except ValidationError as exc:
        raise VerificationError("bad_trust_store", f"{path}: {exc.errors()[0]['msg']}") from exc


def read_manifest(path: Path) -> ModelManifest:
    try:
        return ModelManifest.model_validate_json(read_document(path, "manifest"))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise VerificationError("bad_manifest", f"{path}: {loc}: {first['msg']}") from exc


def _chunks(path: Path, limit: int) -> Iterator[bytes]:
    """The file's bytes, stopping once past ``limit``: a file larger than its manifest says
    is not read to its end."""
    if not path.is_file():
        raise VerificationError("unreadable", f"artifact {path} is not a file")
    read = 0
    with path.open("rb") as handle:
        while read <= limit and (chunk := handle.read(CHUNK)):
            read += len(chunk)
            yield chunk


def verify_files(manifest_path: Path, artifact_path: Path, trust_path: Path) -> ModelManifest:
    """Check signature, size and sha256; return the manifest or raise ``VerificationError``."""
    trust = read_trust_store(trust_path)
    manifest = read_manifest(manifest_path)
    verify_manifest(manifest, trust)
    stream = Sha256Stream()
    for chunk in _chunks(artifact_path, manifest.size):
        stream.update(chunk)
    check_artifact(manifest, stream.hexdigest(), stream.size)
    return manifest


def find_pulled(directory: Path) -> list[tuple[Path, ModelManifest]]:
    """The manifests in ``directory`` (parsed, not yet verified), one version per model."""
    if not directory.is_dir():
        raise VerificationError("unreadable", f"{directory} is not a directory")
    found: list[tuple[Path, ModelManifest]] = []
    for path in sorted(directory.glob(f"*{MANIFEST_SUFFIX}")):
        manifest = read_manifest(path)
        stem = _PULLED_STEM.fullmatch(path.name.removesuffix(MANIFEST_SUFFIX))
        named = (stem["name"], int(stem["version"])) if stem else None
        if named != (manifest.name, manifest.version):
            raise VerificationError(
                "bad_manifest",
                f"{path.name} holds {manifest.name} v{manifest.version}; `edgefleet models "
                f"pull` names it {manifest.name}-v{manifest.version}{MANIFEST_SUFFIX}",
            )
        found.append((path, manifest))
    if not found:
        raise VerificationError(
            "no_models", f"{directory} holds no NAME-vN{MANIFEST_SUFFIX} (edgefleet models pull)"
        )
    names = [manifest.name for _, manifest in found]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        versions = ", ".join(f"v{m.version}" for _, m in found if m.name == repeated[0])
        raise VerificationError(
            "several_versions",
            f"{directory} holds {repeated[0]} {versions}; one version per model is served: "
            "remove the others",
        )
    return found


def load_pulled(
    directory: Path, max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
) -> list[LoadedModel]:
    """Every model in ``directory``, verified as the agent verifies a download before it may
    serve: manifest signature under a trusted model key (``trust-store.json``), the declared
    size within the cap, size and sha256 of the artifact, then onnxruntime load with inputs,
    outputs and golden vectors checked. The first failure raises ``VerificationError``."""
    pulled = find_pulled(directory)
    trust = read_trust_store(directory / TRUST_STORE_FILE)
    models = []
    for manifest_path, manifest in pulled:
        artifact_path = manifest_path.with_name(
            manifest_path.name.removesuffix(MANIFEST_SUFFIX) + ".onnx"
        )
        try:
            check_model_manifest(manifest, trust, max_artifact_bytes)
            # Hashed and loaded from the same bytes: the file cannot change in between.
            data = b"".join(_chunks(artifact_path, manifest.size))
            check_artifact(manifest, sha256_bytes(data), len(data))
            models.append(load_model(data, manifest))
        except VerificationError as exc:
            raise VerificationError(exc.reason, f"{artifact_path.name}: {exc.message}") from exc
    return models


class PulledModels:
    """The local API's backend for models loaded once (``edgefleet serve``): nothing swaps
    them, and every one of them is assigned."""

    def __init__(self, models: Sequence[LoadedModel]) -> None:
        self._models = {model.name: model for model in models}

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def model(self, name: str) -> LoadedModel:
        model = self._models.get(name)
        if model is None:
            raise ModelUnavailableError(f"no model {name!r} is serving on this device")
        return model

    def predict(
        self, name: str, X: npt.NDArray[np.float32], model: LoadedModel | None = None
    ) -> Prediction:
        model = model or self.model(name)
        return Prediction(request_id=uuid.uuid4().hex, model=model, outputs=model.run(X))
