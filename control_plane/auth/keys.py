"""The two Ed25519 signing keys of a data directory (model signing, deployment signing).

Private keys are PEM files of mode 0600 under ``DATA_DIR/keys``; they are created once by
``edgefleet init`` and never overwritten. A key being rotated out waits in
``keys/previous/`` until it is retired (``auth/rotation.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from control_plane.errors import NotInitialisedError
from shared.signing import KeyRole, SigningKey
from shared.trust import TrustedKey, TrustStore

KEY_FILES = {KeyRole.MODEL: "model-signing.key", KeyRole.DEPLOYMENT: "deployment-signing.key"}
PREVIOUS_DIR = "previous"


@dataclass
class KeyStore:
    """The signing keys in use. One object per process, shared by reference: ``reload``
    swaps in the keys of a rotation in place."""

    model: SigningKey
    deployment: SigningKey
    keys_dir: Path | None = None

    def trust_store(self) -> TrustStore:
        """The first trust store (version 1): the public half of these keys, as agents and
        ``edgefleet verify`` load it. After a rotation the trust store is the latest version
        (``auth/rotation.py``)."""
        return TrustStore(
            keys=[
                TrustedKey.from_verify_key(KeyRole.MODEL, self.model.verify_key),
                TrustedKey.from_verify_key(KeyRole.DEPLOYMENT, self.deployment.verify_key),
            ]
        )

    def reload(self) -> None:
        """Read the key files again (after ``edgefleet keys rotate``)."""
        assert self.keys_dir is not None
        fresh = load_keys(self.keys_dir)
        self.model, self.deployment = fresh.model, fresh.deployment


def create_keys(keys_dir: Path) -> list[KeyRole]:
    """Create whichever key files are missing; return the roles created. Existing keys are
    never touched (``O_EXCL``), so running ``init`` twice is safe."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    created = []
    for role, file_name in KEY_FILES.items():
        path = keys_dir / file_name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as handle:
            handle.write(SigningKey.generate().to_pem())
            handle.flush()
            os.fsync(handle.fileno())
        created.append(role)
    return created


def load_keys(keys_dir: Path) -> KeyStore:
    """Load both keys, or raise ``NotInitialisedError`` naming what is missing."""
    loaded: dict[KeyRole, SigningKey] = {}
    for role, file_name in KEY_FILES.items():
        path = keys_dir / file_name
        if not path.is_file():
            raise NotInitialisedError(
                f"{path} is missing: run `edgefleet init --data-dir {keys_dir.parent}` first"
            )
        loaded[role] = SigningKey.from_pem(path.read_bytes())
    return KeyStore(loaded[KeyRole.MODEL], loaded[KeyRole.DEPLOYMENT], keys_dir)
