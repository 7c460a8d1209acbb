"""Device-side commands. ``edgefleet verify`` checks a model offline, on a base install."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from shared.errors import VerificationError
from shared.hashing import Sha256Stream
from shared.manifest import ModelManifest
from shared.trust import TrustStore
from shared.verification import check_artifact, verify_manifest

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
CHUNK = 1024 * 1024

verify_app = typer.Typer()


def _read_document(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise VerificationError("unreadable", f"{what} {path} is not a file")
    if path.stat().st_size > MAX_DOCUMENT_BYTES:
        raise VerificationError("too_large", f"{what} {path} is over {MAX_DOCUMENT_BYTES} bytes")
    return path.read_bytes()


def verify_files(manifest_path: Path, artifact_path: Path, trust_path: Path) -> ModelManifest:
    """Check signature, size and sha256; return the manifest or raise ``VerificationError``."""
    try:
        trust = TrustStore.model_validate_json(_read_document(trust_path, "trust store"))
    except ValidationError as exc:
        raise VerificationError(
            "bad_trust_store", f"{trust_path}: {exc.errors()[0]['msg']}"
        ) from exc
    try:
        manifest = ModelManifest.model_validate_json(_read_document(manifest_path, "manifest"))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise VerificationError("bad_manifest", f"{manifest_path}: {loc}: {first['msg']}") from exc
    verify_manifest(manifest, trust)
    if not artifact_path.is_file():
        raise VerificationError("unreadable", f"artifact {artifact_path} is not a file")
    stream = Sha256Stream()
    with artifact_path.open("rb") as handle:
        while stream.size <= manifest.size and (chunk := handle.read(CHUNK)):
            stream.update(chunk)  # stops reading once past the declared size
    check_artifact(manifest, stream.hexdigest(), stream.size)
    return manifest


@verify_app.command("verify")
def verify_command(
    manifest: Annotated[
        Path,
        typer.Argument(
            help="The signed manifest (JSON), e.g. the "
            "`manifest` field of GET /models/{name}/versions/{v}."
        ),
    ],
    artifact: Annotated[Path, typer.Argument(help="The ONNX file.")],
    trust_store: Annotated[Path, typer.Option(help="Trusted public keys (GET /api/v1/keys).")],
) -> None:
    """Verify a model offline: the manifest's signature under a trusted model-signing key,
    and the artifact's size and sha256. Exit 0 when all hold, 1 with the reason otherwise."""
    try:
        checked = verify_files(manifest, artifact, trust_store)
    except VerificationError as exc:
        typer.echo(f"FAILED {exc.reason}: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"OK {checked.name} v{checked.version}: signature by key {checked.key_id[:16]}…, "
        f"{checked.size} bytes, sha256 {checked.sha256}"
    )
