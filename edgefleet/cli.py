"""The ``edgefleet`` command. Each subcommand is a typer app imported only when it runs, so a
device with the base install runs ``edgefleet verify``, ``agent`` and ``serve`` without the
server's dependencies, and ``edgefleet --help`` imports nothing heavy."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from edgefleet import __version__


@dataclass(frozen=True)
class LazyCommand:
    module: str
    attribute: str
    help: str
    extra: str | None = None  # the install extra whose packages the command imports


CONTROL_PLANE = "control_plane.cli.commands"
OPERATIONS = "control_plane.cli.operations"
FLEET = "control_plane.cli.fleet"
COMMANDS: dict[str, LazyCommand] = {
    "init": LazyCommand(
        CONTROL_PLANE,
        "init_app",
        "Create a data directory: keys, config, database, admin token.",
        "server",
    ),
    "server": LazyCommand(CONTROL_PLANE, "server_app", "Serve the control-plane API.", "server"),
    "datasets": LazyCommand(CONTROL_PLANE, "datasets_app", "Upload and list datasets."),
    "train": LazyCommand(
        CONTROL_PLANE,
        "train_app",
        "Train, export, sign and register a model version.",
    ),
    "models": LazyCommand(
        CONTROL_PLANE,
        "models_app",
        "Models and versions: list, show, import, compare, alias, pull; drift, policy, "
        "retrain, approve.",
    ),
    "tokens": LazyCommand(CONTROL_PLANE, "tokens_app", "Issue, list and revoke API tokens."),
    "devices": LazyCommand(
        FLEET,
        "devices_app",
        "Devices: add, list, label, approve, reject, reissue, remove, preauthorize.",
    ),
    "bootstrap-tokens": LazyCommand(
        FLEET, "bootstrap_app", "Issue, list and revoke the tokens devices enroll with."
    ),
    "deploy": LazyCommand(FLEET, "deploy_app", "Put a model version on a device."),
    "rollout": LazyCommand(
        CONTROL_PLANE,
        "rollout_app",
        "Staged rollouts: create (or dry "
        "run), list, show, watch, events, pause, resume, promote, abort, rollback.",
    ),
    "certs": LazyCommand(
        "control_plane.cli.certs", "certs_app", "Make TLS certificates (a CA and a server's)."
    ),
    "keys": LazyCommand(
        "control_plane.cli.keys",
        "keys_app",
        "Signing keys: rotate, retire, show (where the key files are).",
        "server",
    ),
    "events": LazyCommand(OPERATIONS, "events_app", "The audit log, newest first."),
    "jobs": LazyCommand(OPERATIONS, "jobs_app", "List, show and wait for jobs."),
    "feedback": LazyCommand(OPERATIONS, "feedback_app", "Post true labels for predictions."),
    "verify": LazyCommand("agent.cli", "verify_app", "Verify a signed model offline."),
    "agent": LazyCommand("agent.cli", "agent_app", "Run the device agent."),
    "serve": LazyCommand(
        "agent.cli",
        "serve_app",
        "Verify pulled models and serve them locally, with no control plane.",
    ),
    "demo": LazyCommand("simulator.demo", "demo_app", "Run the whole loop on this machine.", "sim"),
    "simulate": LazyCommand(
        "simulator.cli",
        "simulate_app",
        "Run a scenario (rollout, bad-model, drift, chaos, churn) on simulated devices.",
        "sim",
    ),
}

USAGE = """\
Usage: edgefleet COMMAND [OPTIONS] [ARGS]...

  Train, sign and roll out ONNX models to fleets of edge devices.
  Run `edgefleet COMMAND --help` for a command's options.

Options:
  --version                    Show the version and exit.
  --install-completion         Install completion for the current shell.
  --show-completion            Show completion for the current shell, to copy it.
  -h, --help                   Show this message and exit.

Commands:
"""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS) + 2
    return USAGE + "".join(
        f"  {name:<{width}}{entry.help}\n" for name, entry in sorted(COMMANDS.items())
    )


COMPLETE_VAR = "_EDGEFLEET_COMPLETE"  # typer's name for prog "edgefleet"
COMPLETION_OPTIONS = ("--show-completion", "--install-completion")


def _completion(args: list[str]) -> None:
    """Shell completion through typer, on a command tree with every command imported: only
    for a TAB press or for installing the script, never to run a command. Commands whose
    extra is not installed are left out."""
    import typer

    root = typer.Typer(add_completion=True)

    @root.callback()
    def edgefleet() -> None:
        """Train, sign and roll out ONNX models to fleets of edge devices."""

    group = typer.main.get_command(root)  # a group (it has a callback), with the options
    assert isinstance(group, typer.core.TyperGroup)
    for name, entry in COMMANDS.items():
        try:
            module = importlib.import_module(entry.module)
        except ImportError:
            continue
        group.add_command(typer.main.get_command(getattr(module, entry.attribute)), name)
    group.main(args=args, prog_name="edgefleet")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if COMPLETE_VAR in os.environ or (args and args[0] in COMPLETION_OPTIONS):
        _completion(args)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        sys.stdout.write(f"edgefleet {__version__}\n")
        sys.exit(0)
    entry = COMMANDS.get(args[0])
    if entry is None:
        sys.stderr.write(f"edgefleet: unknown command {args[0]!r}\n\n{_usage()}")
        sys.exit(2)
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        extra = entry.extra or "server"
        sys.stderr.write(
            f"edgefleet {args[0]}: needs the {extra!r} extra ({exc.name} is not "
            f"installed): pip install 'edgefleet[{extra}]'\n"
        )
        sys.exit(2)
    app = getattr(module, entry.attribute)
    app(args=args[1:], prog_name=f"edgefleet {args[0]}")
