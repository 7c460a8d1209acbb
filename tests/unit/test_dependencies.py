"""Dependencies run one way, read from the source (every import, at any depth of a module):
``shared`` ← ``agent`` ← (``control_plane``, ``simulator``); the control plane uses the agent
only through its inference API; the pure cores import no I/O; no import cycles."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "agent", "control_plane", "simulator", "edgefleet")
# What each top-level package may import from the project (besides itself).
ALLOWED = {
    "shared": set(),
    "agent": {"shared", "edgefleet"},  # edgefleet/__init__: the version, nothing else
    "edgefleet": set(),  # the entry point imports subcommands by name, lazily
    "control_plane": {"shared", "agent", "edgefleet"},
    "simulator": {"shared", "agent", "control_plane", "edgefleet"},
}
# The control plane runs models with the device's own code, and nothing else of the agent.
AGENT_API = {"agent.inference"}
PURE = {
    "control_plane.audit.types",
    "control_plane.rollouts.machine",
    "control_plane.rollouts.plans",
    "control_plane.rollouts.gates",
    "control_plane.monitoring.drift",
    "control_plane.monitoring.windows",
    "control_plane.monitoring.policy",
    "control_plane.monitoring.release",
    "control_plane.training.parity",
    "control_plane.fleet.selectors",
}
IO = {
    "sqlmodel",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "aiomqtt",
    "paho",
    "onnxruntime",
    "sklearn",
    "socket",
    "subprocess",
    "logging",
    "asyncio",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    module_name(path): path
    for package in PACKAGES
    for path in (REPO / package).rglob("*.py")
    if "migrations" not in path.parts
}


@cache
def imports(module: str) -> frozenset[str]:
    """Every name ``module`` imports: project modules resolved, others by top-level name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return frozenset(
        name if name in MODULES else name.split(".")[0]
        for name in found
        if name in MODULES or name.split(".")[0] not in PACKAGES
    )


def project_imports(module: str) -> set[str]:
    return {name for name in imports(module) if name in MODULES}


def closure(module: str) -> set[str]:
    seen: set[str] = set()
    stack = [module]
    while stack:
        for name in project_imports(stack.pop()):
            if name not in seen:
                seen.add(name)
                stack.append(name)
    return seen


def test_packages_depend_one_way() -> None:
    wrong = [
        f"{module} imports {name}"
        for module in MODULES
        for name in project_imports(module)
        if (top := name.split(".")[0]) != module.split(".")[0]
        and top not in ALLOWED[module.split(".")[0]]
    ]
    assert not wrong


def test_nothing_but_tests_imports_the_tests() -> None:
    """Benchmarks and the simulator share the rig (``simulator.rig``), not test helpers."""
    sources = [*MODULES.values(), *(REPO / "benchmarks").glob("*.py")]
    wrong = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            wrong += [
                f"{path.relative_to(REPO)} imports {n}" for n in names if n.split(".")[0] == "tests"
            ]
    assert not wrong


def test_the_control_plane_uses_the_agent_only_through_its_inference_api() -> None:
    wrong = [
        f"{module} imports {name}"
        for module in MODULES
        if module.startswith("control_plane")
        for name in project_imports(module)
        if name.startswith("agent") and name not in AGENT_API
    ]
    assert not wrong


def test_pure_cores_import_no_io() -> None:
    assert set(MODULES) >= PURE
    for module in sorted(PURE):
        reached = closure(module) | {module}
        impure = {
            name for name in reached if name.startswith("control_plane") and name not in PURE
        } - {"control_plane", "control_plane.errors", *parents(PURE)}
        assert not impure, f"{module} reaches {sorted(impure)}"
        io = {name for m in reached for name in imports(m) if name in IO}
        assert not io, f"{module} reaches {sorted(io)}"


def parents(modules: set[str]) -> set[str]:
    return {m.rsplit(".", 1)[0] for m in modules}


def test_no_import_cycles() -> None:
    cycles = [
        f"{module} ↔ {name}"
        for module in MODULES
        for name in project_imports(module)
        if module in closure(name) and not module.startswith(name) and not name.startswith(module)
    ]
    assert not cycles


def test_every_control_plane_package_says_what_it_owns() -> None:
    packages = [p for p in (REPO / "control_plane").iterdir() if (p / "__init__.py").exists()]
    assert len(packages) >= 10
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc, f"{package.name}/ has no docstring"


def test_no_control_plane_function_is_longer_than_a_screen() -> None:
    """Over 60 lines (docstring included), a function does several things: split it around
    a pure core, as ``train_version`` and ``retrain`` are. Migrations are exempt."""
    long = [
        f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for module, path in MODULES.items()
        if module.startswith("control_plane")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long


def test_the_simulator_drives_the_control_plane_through_its_api() -> None:
    """Never through its database: the simulator uses the control plane's settings, the
    code of ``edgefleet init``, and (for the rig's agent-only models) its training code."""
    allowed = ("control_plane.config", "control_plane.store.datadir", "control_plane.training.")
    wrong = [
        f"{module} imports {name}"
        for module in MODULES
        if module.startswith("simulator")
        for name in project_imports(module)
        if name.startswith("control_plane") and not name.startswith(allowed)
    ]
    assert not wrong
