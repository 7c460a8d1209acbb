"""The base install, the device agent alone (``pip install edgefleet``, no extras): a venv
built from this checkout (or from a git revision, to compare), its size on disk by package,
set against the part every Python ONNX server carries (numpy and onnxruntime).
``device_agent.py --base-profile DIR`` runs ``edgefleet agent`` from such a venv, as a
device would, rather than from the development venv with every extra installed.

    .venv/bin/python benchmarks/base_profile.py [--venv DIR] [--before REV] [--json PATH]

Builds the venv (~20 s; pip reads the package index or its cache) unless DIR holds one;
``--before REV`` also builds one from REV (a temporary git worktree) and sets the two side
by side.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from results import Results, add_json_argument

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
# What pip puts in every venv, not part of the install.
NOT_INSTALLED = {"pip", "setuptools", "pkg_resources", "_distutils_hack", "__pycache__"}
FLOOR = {"numpy", "numpy.libs", "onnxruntime"}  # any Python ONNX server's


def ensure(venv: Path, source: Path = REPO) -> Path:
    """``venv``'s python, after building it with ``source`` installed (no extras) unless it
    exists already."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", str(source)],
            check=True,
        )
    return python


def sizes(venv: Path) -> dict[str, int]:
    """Bytes on disk per top-level entry of the venv's site-packages (a package, its .libs
    or its .dist-info), without what every venv holds."""
    [site] = (venv / "lib").glob("python3*/site-packages")
    by: dict[str, int] = {}
    for entry in site.iterdir():
        name = entry.name.split("-")[0] if entry.name.endswith(".dist-info") else entry.name
        if name in NOT_INSTALLED or name.split(".")[0] in NOT_INSTALLED:
            continue
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        by[name] = by.get(name, 0) + sum(p.stat().st_size for p in files)
    return by


def report(label: str, by: dict[str, int], results: Results, before: dict[str, int] | None) -> None:
    total = sum(by.values())
    floor = sum(v for k, v in by.items() if k in FLOOR)
    print(f"\n{label}: {total / MiB:.1f} MiB in site-packages, {floor / MiB:.1f} MiB of it numpy")
    print("and onnxruntime")
    for name, size in sorted(by.items(), key=lambda item: -item[1])[:15]:
        print(f"  {name:<40}{size / MiB:>8.1f} MiB")
    group = "base install (the agent), site-packages"
    base = results.add(group, "numpy + onnxruntime", floor / MiB, "MiB")
    if before is not None:
        base = results.add(group, "before", sum(before.values()) / MiB, "MiB")
    results.add(group, label, total / MiB, "MiB", baseline=base, headline=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--venv", type=Path, default=Path(tempfile.gettempdir()) / "edgefleet-base-profile"
    )
    parser.add_argument("--before", metavar="REV", help="also build the base install of REV")
    add_json_argument(parser)
    args = parser.parse_args()
    results = Results("base_profile")
    before: dict[str, int] | None = None
    if args.before:
        with tempfile.TemporaryDirectory(prefix="edgefleet-before-") as tmp:
            tree = Path(tmp) / "tree"
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(REPO),
                    "worktree",
                    "add",
                    "--detach",
                    "-q",
                    str(tree),
                    args.before,
                ],
                check=True,
            )
            try:
                ensure(Path(tmp) / "venv", tree)
                before = sizes(Path(tmp) / "venv")
            finally:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True
                )
        total = sum(before.values())
        print(f"{args.before}: {total / MiB:.1f} MiB in site-packages")
    ensure(args.venv)
    report("this checkout", sizes(args.venv), results, before)
    results.write(args.json)


if __name__ == "__main__":
    main()
