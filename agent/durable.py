"""Crash-safe file writes: a reader sees the old file or the new one, never a mix."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

# What ``write_atomic`` names its temp file: ``.{target}.`` and mkstemp's 8 characters (every
# target here is JSON: state, trust store, crash report, slots, manifests).
_TEMP_FILE = re.compile(r"\.[^/]+\.json\.[a-z0-9_]{8}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, rename over ``path``, fsync the dir."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def move_atomic(source: Path, destination: Path) -> None:
    """fsync ``source``, rename it to ``destination`` and fsync the directory."""
    with source.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(source, destination)
    fsync_dir(destination.parent)


def remove_interrupted_writes(directory: Path) -> list[Path]:
    """Delete the temp files ``write_atomic`` left in ``directory`` when the process died
    between creating one and renaming it (kill -9, power loss): nothing reads them, so they
    would stay for good. Call it only while nothing writes there (at start-up)."""
    removed = []
    for path in directory.iterdir():
        if _TEMP_FILE.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
