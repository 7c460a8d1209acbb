"""Device-side commands, on a base install: ``edgefleet agent`` runs the device agent,
``edgefleet verify`` checks a model offline."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

if TYPE_CHECKING:
    from agent.config import AgentSettings

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


agent_app = typer.Typer()


@agent_app.command("agent")
def agent_command(
    config: Annotated[
        Path | None,
        typer.Option(
            help="Agent config (TOML); EDGEFLEET_AGENT_* env variables override it.",
            show_default=False,
        ),
    ] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print a commented default config.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the device agent: follow this device's desired state over MQTT, install verified
    models, serve local inference, report telemetry. Stops cleanly on SIGTERM/SIGINT."""
    from agent.config import DEFAULT_CONFIG, load_agent_settings

    if print_config:
        typer.echo(DEFAULT_CONFIG, nl=False)
        return
    if config is not None and not config.is_file():
        typer.echo(f"error: config file {config} not found", err=True)
        raise typer.Exit(2)
    try:
        settings = load_agent_settings(config)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        typer.echo(f"error: invalid agent config: {problems}", err=True)
        raise typer.Exit(2) from exc
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from agent.runtime import AgentCrashedError

    try:
        asyncio.run(_run_agent(settings))
    except (OSError, ValidationError, AgentCrashedError) as exc:
        # Non-zero, so that systemd (Restart=always) restarts it; a crash was logged with
        # its traceback and is reported in the device state after the restart.
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


async def _run_agent(settings: AgentSettings) -> None:
    from agent.runtime import Agent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Agent(settings).run(stop)
