"""Crash-safe file writes: a reader sees the old file or the new one, never a mix."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
