"""Pure checks of the trust model, shared by ``edgefleet verify`` and the agent."""

from __future__ import annotations

from shared.errors import VerificationError
from shared.manifest import ModelManifest
from shared.signing import KeyRole
from shared.trust import TrustStore


def verify_manifest(manifest: ModelManifest, trust: TrustStore) -> None:
    """The manifest's signature holds under a trusted model-signing key."""
    manifest.verify_signature(trust.key_for(KeyRole.MODEL, manifest.key_id))


def check_artifact(manifest: ModelManifest, sha256: str, size: int) -> None:
    """The artifact's measured size and sha256 are the ones the manifest declares."""
    if size != manifest.size:
        raise VerificationError(
            "size_mismatch", f"artifact has {size} bytes, the manifest declares {manifest.size}"
        )
    if sha256 != manifest.sha256:
        raise VerificationError(
            "sha256_mismatch",
            f"artifact sha256 {sha256[:16]}… differs from the manifest's {manifest.sha256[:16]}…",
        )
