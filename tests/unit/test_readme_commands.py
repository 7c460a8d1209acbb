"""The README's command table matches the CLI, every command in it is run by a test, and it
names every setting of the agent and of the server."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import typer

from edgefleet.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


def table_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Commands") :]
    section = section[: section.index("\n## ", 1)]
    return [line for line in section.splitlines() if line.startswith("| `edgefleet")]


def cli_tree() -> dict[str, list[str]]:
    """Top-level command → its subcommands (empty for a plain command)."""
    tree = {}
    for name, entry in COMMANDS.items():
        command = typer.main.get_command(
            getattr(importlib.import_module(entry.module), entry.attribute)
        )
        tree[name] = sorted(getattr(command, "commands", {}))
    return tree


def test_the_table_names_every_command_and_subcommand_and_nothing_else() -> None:
    rows = table_rows()
    named = {re.match(r"\| `edgefleet ([a-z-]+)", row).group(1) for row in rows}  # type: ignore[union-attr]
    tree = cli_tree()
    assert named == set(tree)
    for name, subcommands in tree.items():
        text = " ".join(row for row in rows if row.startswith(f"| `edgefleet {name}"))
        missing = [sub for sub in subcommands if not re.search(rf"\b{sub}\b", text)]
        assert not missing, f"edgefleet {name}: {missing} not in the README's table"


def test_every_command_in_the_table_is_run_by_a_test() -> None:
    sources = "\n".join(
        path.read_text()
        for path in (ROOT / "tests").rglob("*.py")
        if path.name != Path(__file__).name
    )
    not_run = []
    for name, subcommands in cli_tree().items():
        for sub in [*subcommands] or [""]:
            words = rf'"{name}",\s*"{sub}"' if sub else rf'[(,]\s*"{name}"[,)]'
            if not re.search(words, sources):
                not_run.append(f"{name} {sub}".strip())
    assert not not_run, f"no test runs: {not_run}"


def test_the_readme_names_every_setting_of_the_agent_and_of_the_server() -> None:
    from agent.config import AgentSettings
    from control_plane.config import ServerSettings

    text = (ROOT / "README.md").read_text()
    agent = text[text.index("## The device agent") :]
    agent = agent[: agent.index("\n## ", 1)]
    assert [f for f in AgentSettings.model_fields if f"`{f}`" not in agent] == []
    server = text[text.index("Settings (file `DATA_DIR/config.toml`") :]
    server = server[: server.index("\n\n")]
    assert [f for f in ServerSettings.model_fields if f"`{f}`" not in server] == []
