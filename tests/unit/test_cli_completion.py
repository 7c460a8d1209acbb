"""Shell completion of the whole `edgefleet` command (its commands load lazily, so completion
builds the full tree only when the shell asks)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from simulator.rig.server import REPO, edgefleet_cmd, run_cli


def complete(*words: str) -> list[str]:
    env = {
        **os.environ,
        "_EDGEFLEET_COMPLETE": "complete_bash",
        "COMP_WORDS": " ".join(["edgefleet", *words]),
        "COMP_CWORD": str(len(words)),
    }
    result = subprocess.run(
        edgefleet_cmd(), env=env, capture_output=True, text=True, cwd=REPO, timeout=60, check=True
    )
    return result.stdout.split()


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (("boo",), "bootstrap-tokens"),
        (("devices", "app"), "approve"),
        (("agent", "enr"), "enroll"),
        (("keys", "ret"), "retire"),
        (("rollout", "create", "--pre"), "--preset"),
    ],
)
def test_commands_subcommands_and_options_complete(words: tuple[str, ...], expected: str) -> None:
    assert expected in complete(*words)


def test_install_completion_writes_the_script_for_the_shell(tmp_path: Path) -> None:
    result = run_cli("--install-completion", "bash", env={"HOME": str(tmp_path)})
    assert "bash completion installed" in result.stdout
    script = (tmp_path / ".bash_completions" / "edgefleet.sh").read_text()
    assert "_EDGEFLEET_COMPLETE=complete_bash" in script
    assert "edgefleet.sh" in (tmp_path / ".bashrc").read_text()
