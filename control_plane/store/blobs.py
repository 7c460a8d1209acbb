"""Content-addressed blob store on local disk (ONNX artifacts and uploaded datasets).

A blob lives at ``ROOT/ab/abcdef…`` (its sha256). Writes go to ``ROOT/tmp`` first, are
fsynced, then renamed into place, so a reader never sees a partial blob.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.hashing import Sha256Stream, is_sha256


@dataclass
class StagedBlob:
    """A blob being written: bytes go to a temp file and through a hasher."""

    path: Path
    handle: BinaryIO
    stream: Sha256Stream

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)
        self.stream.update(chunk)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return is_sha256(sha256) and self.path_for(sha256).is_file()

    def read_bytes(self, sha256: str) -> bytes:
        return self.path_for(sha256).read_bytes()

    @contextlib.contextmanager
    def staging(self) -> Iterator[StagedBlob]:
        """A staged blob to write through; the caller then calls ``commit``.
        The temp file is removed if it was not committed."""
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="stage-")
        staged = StagedBlob(Path(name), os.fdopen(fd, "w+b"), Sha256Stream())
        try:
            yield staged
        finally:
            staged.handle.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def commit(self, staged: StagedBlob) -> tuple[str, bool]:
        """Move a staged blob into place; return ``(sha256, newly_created)``."""
        staged.handle.flush()
        os.fsync(staged.handle.fileno())
        sha = staged.stream.hexdigest()
        final = self.path_for(sha)
        if final.is_file():
            return sha, False
        final.parent.mkdir(exist_ok=True)
        os.replace(staged.path, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return sha, True

    def put_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store ``data``; return ``(sha256, newly_created)``."""
        with self.staging() as staged:
            staged.write(data)
            return self.commit(staged)

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(sha256).unlink()
