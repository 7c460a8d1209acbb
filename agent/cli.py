"""Device-side commands, on a base install: ``edgefleet agent`` runs the device agent,
``edgefleet verify`` checks a model offline, ``edgefleet serve`` serves pulled models."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import httpx
import typer
from pydantic import ValidationError

if TYPE_CHECKING:
    from agent.config import AgentSettings
    from agent.server import InferenceServer

from agent.pulled import verify_files
from shared.errors import VerificationError

verify_app = typer.Typer()


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


@agent_app.callback(invoke_without_command=True)
def agent_command(
    context: typer.Context,
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
    models, serve local inference, report telemetry. Stops cleanly on SIGTERM/SIGINT.
    `edgefleet agent enroll` joins a fleet first and writes the config."""
    from agent.config import DEFAULT_CONFIG, load_agent_settings

    if context.invoked_subcommand is not None:
        return
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
    except tomllib.TOMLDecodeError as exc:  # exit 2: systemd does not restart into it
        typer.echo(f"error: {config} is not valid TOML: {exc}", err=True)
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


@agent_app.command(
    "enroll", short_help="Join a fleet with a bootstrap token: write the config and trust store."
)
def enroll_command(
    url: Annotated[str, typer.Option(help="The control plane, e.g. https://fleet.example:8000.")],
    device_id: Annotated[str, typer.Option(help="This device's id.")],
    broker_url: Annotated[
        str,
        typer.Option(
            help="The broker devices connect to, e.g. mqtts://broker.example:8883; the nodes "
            "of a broker cluster comma-separated, tried in turn."
        ),
    ],
    bootstrap_token: Annotated[
        str,
        typer.Option(
            envvar="EDGEFLEET_BOOTSTRAP_TOKEN",
            help="From `edgefleet bootstrap-tokens create` (better in the env than in argv).",
        ),
    ],
    config: Annotated[
        Path, typer.Option(help="The agent config to write (mode 0600: it holds the token).")
    ] = Path("/etc/edgefleet/agent.toml"),
    data_dir: Annotated[Path, typer.Option(help="The agent's data dir.")] = Path(
        "/var/lib/edgefleet-agent"
    ),
    trust_store: Annotated[
        Path | None,
        typer.Option(help="Where to write the trust store [default: beside the config]."),
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="A label K=V for the device (repeatable).")
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(help="CA bundle for a control plane and broker with a private CA."),
    ] = None,
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for an operator to accept it.")
    ] = 600,
) -> None:
    """Join a fleet: enroll with a bootstrap token, wait until an operator accepts the device
    (or at once when pre-authorized), then write the agent's config and trust store. Exit 0
    when the agent can start, 1 when refused or rejected, 3 when still pending after --wait
    (run it again to resume: the saved token is reused, no second use is spent)."""
    from agent.enroll import EnrollError, Enrollment, enroll
    from shared.messages import parse_labels

    try:
        labels = parse_labels(label or [])
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    config = config.expanduser().resolve()
    plan = Enrollment(
        url=url.rstrip("/"),
        device_id=device_id,
        broker_url=broker_url,
        config=config,
        data_dir=data_dir.expanduser().resolve(),
        trust_store=(trust_store or config.parent / "trust-store.json").expanduser().resolve(),
        labels=labels,
        ca_file=ca_file.expanduser().resolve() if ca_file else None,
    )
    try:
        enroll(plan, bootstrap_token, wait_seconds=wait, say=typer.echo)
    except EnrollError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from exc
    except (ValueError, OSError, httpx.HTTPError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


async def _run_agent(settings: AgentSettings) -> None:
    from agent.runtime import Agent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Agent(settings).run(stop)


serve_app = typer.Typer()


@serve_app.command("serve")
def serve_command(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR",
            help="What `edgefleet models pull --out DIR` wrote: NAME-vN.manifest.json and "
            "NAME-vN.onnx (one version per model, several models allowed) and trust-store.json.",
            show_default=False,
        ),
    ],
    host: Annotated[str, typer.Option(help="Address of the local inference API.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Its port; 0 picks a free one.")
    ] = 8500,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Serve pulled models on the agent's local inference API (Open Inference Protocol v2 and
    /v1/predict), with no broker and no control plane. Every model is verified first as the
    agent verifies a download: signature under a trusted model-signing key, size, sha256,
    onnxruntime load, inputs/outputs and golden vectors; if any fails, exit 1 with the reason.
    Prints the URL once it listens; stops on SIGTERM/SIGINT."""
    from agent.pulled import PulledModels, load_pulled
    from agent.server import InferenceServer

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        models = load_pulled(directory)
    except VerificationError as exc:
        typer.echo(f"FAILED {exc.reason}: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    for model in models:
        m = model.manifest
        typer.echo(f"OK {m.name} v{m.version}: signature, sha256 {m.sha256[:16]}…, golden vectors")
    try:
        server = InferenceServer(PulledModels(models), host, port)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc}", err=True)
        raise typer.Exit(1) from exc
    names = ", ".join(f"{m.name} v{m.manifest.version}" for m in models)
    failure = _serve_until_signal(server, f"serving {names} on {server.url}")
    if failure is not None:
        typer.echo(f"error: the local inference API failed: {failure}", err=True)
        raise typer.Exit(1)


def _serve_until_signal(server: InferenceServer, banner: str) -> BaseException | None:
    """Serve until SIGTERM or SIGINT (then stop cleanly, letting requests in flight finish),
    or until the server fails (its error is returned)."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def on_exit(error: BaseException | None) -> None:
        failures.append(error or RuntimeError("the server thread ended"))
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start(on_exit=on_exit)
    typer.echo(banner)  # after start: a client that reads it may connect at once
    try:
        stop.wait()
    finally:
        server.stop()
    return failures[0] if failures else None
