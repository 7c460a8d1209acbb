"""The base install is the device agent: its code must never import the server's (or the
simulator's) dependencies, and the base dependency list must not name them."""

import json
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import agent
import shared

REPO = Path(__file__).resolve().parents[2]
SERVER_ONLY = {
    "sklearn",
    "skl2onnx",
    "onnx",
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlmodel",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "scipy",
    "control_plane",
    "simulator",
}


def _modules(package: ModuleType) -> list[str]:
    return [
        m.name
        for m in pkgutil.walk_packages(
            package.__path__,
            package.__name__ + ".",
        )
    ]


def test_agent_and_shared_import_closure_is_free_of_server_dependencies() -> None:
    modules = ["edgefleet.cli", *_modules(agent), *_modules(shared)]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    loaded = set(json.loads(result.stdout))
    assert not loaded & SERVER_ONLY, f"agent/shared pulled in {sorted(loaded & SERVER_ONLY)}"


def test_base_dependencies_do_not_name_server_packages() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {
        d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower()
        for d in project["dependencies"]
    }
    assert not base & {
        "scikit-learn",
        "skl2onnx",
        "onnx",
        "fastapi",
        "uvicorn",
        "sqlmodel",
        "sqlalchemy",
        "alembic",
        "psycopg",
    }
    assert {"onnxruntime", "paho-mqtt", "cryptography", "numpy", "pydantic"} <= base


def test_help_imports_no_subcommand() -> None:
    code = (
        "import sys\nfrom edgefleet.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('control_plane', 'agent', 'simulator', 'fastapi', 'sklearn')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert "train" in result.stdout
    assert result.stdout.strip().endswith("[]")
