"""The README's first command: `edgefleet demo` runs the supply chain end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def test_demo_runs_the_supply_chain(tmp_path: Path) -> None:
    result = run_cli("demo", "--data-dir", str(tmp_path / "demo"), "--rows", "400")
    assert "verified offline" in result.stdout
    assert "tampered copy refused: sha256_mismatch" in result.stdout
    pulled = tmp_path / "demo" / "pulled"
    assert (pulled / "trust-store.json").is_file()
    assert len(list(pulled.glob("fault-v*.onnx"))) == 1
