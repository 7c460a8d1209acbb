"""Pure checks of the update pipeline: no I/O, every refusal a ``VerificationError`` with a
stable reason code (reported in the device's retained state)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from shared.errors import SignatureError, VerificationError
from shared.manifest import ModelManifest, TensorSpec
from shared.messages import DesiredState
from shared.signing import KeyRole
from shared.trust import TrustStore
from shared.verification import verify_manifest


class Decision(Enum):
    APPLY = "apply"  # a new desired state: accept its sequence and reconcile
    REAPPLY = "reapply"  # the one already accepted (e.g. retained, seen again after restart)


@dataclass(frozen=True)
class Accepted:
    """What the agent persisted of the last accepted desired state."""

    seq: int
    signature: str


def parse_desired(payload: bytes, max_bytes: int) -> DesiredState:
    """Size cap first, then strict parsing."""
    if len(payload) > max_bytes:
        raise VerificationError("too_large", f"{len(payload)} bytes; the cap is {max_bytes}")
    try:
        return DesiredState.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        reason = "schema_version" if "schema_version" in where else "malformed"
        raise VerificationError(reason, f"{where}: {first['msg']}") from exc


def check_desired(
    desired: DesiredState,
    *,
    trust: TrustStore,
    device_id: str,
    accepted: Accepted | None,
    now: datetime,
    floor: int = 1,
) -> Decision:
    """Signature under a trusted deployment key, our device id, a sequence above the last
    accepted one (with none accepted: at least ``floor``, what the control plane last issued
    to this device), not expired. The manifests inside are checked separately, per model."""
    try:
        desired.verify_signature(trust.key_for(KeyRole.DEPLOYMENT, desired.key_id))
    except SignatureError as exc:
        reason = "untrusted_key" if exc.reason == "untrusted_key" else "bad_signature"
        raise VerificationError(reason, f"desired state: {exc.message}") from exc
    if desired.device_id != device_id:
        raise VerificationError(
            "wrong_device", f"desired state is for {desired.device_id!r}, not {device_id!r}"
        )
    if accepted is not None:
        if desired.seq == accepted.seq and desired.signature == accepted.signature:
            return Decision.REAPPLY
        if desired.seq <= accepted.seq:
            raise VerificationError(
                "replay", f"sequence {desired.seq} is not above the last accepted {accepted.seq}"
            )
    elif desired.seq < floor:
        raise VerificationError(
            "replay",
            f"sequence {desired.seq} is below {floor}, the newest the control plane issued "
            "to this device",
        )
    if desired.expires_at <= now:
        raise VerificationError("expired", f"desired state expired at {desired.expires_at}")
    return Decision.APPLY


def check_model_manifest(manifest: ModelManifest, trust: TrustStore, max_bytes: int) -> None:
    try:
        verify_manifest(manifest, trust)
    except SignatureError as exc:
        reason = "untrusted_model_key" if exc.reason == "untrusted_key" else "bad_model_signature"
        raise VerificationError(
            reason, f"model {manifest.name} v{manifest.version}: {exc.message}"
        ) from exc
    if manifest.size > max_bytes:
        raise VerificationError(
            "too_large",
            f"the artifact declares {manifest.size} bytes; this device accepts at most {max_bytes}",
        )


def check_io(manifest: ModelManifest, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """The loaded graph has the inputs and outputs the manifest promises."""
    if inputs != [manifest.input.tensor]:
        raise VerificationError(
            "io_mismatch",
            f"graph inputs {inputs} differ from the manifest's {manifest.input.tensor}",
        )
    if outputs != manifest.output.outputs:
        raise VerificationError(
            "io_mismatch",
            f"graph outputs {outputs} differ from the manifest's {manifest.output.outputs}",
        )


def golden_inputs(manifest: ModelManifest) -> npt.NDArray[np.float32]:
    return np.array(
        [[math.nan if v is None else v for v in g.input] for g in manifest.golden.vectors],
        dtype=np.float32,
    )


def check_golden(
    manifest: ModelManifest, labels: npt.NDArray[np.int64] | None, values: npt.NDArray[np.float32]
) -> None:
    """The model reproduces its golden vectors on this device within the manifest's tolerance."""
    atol = manifest.golden.atol
    for i, golden in enumerate(manifest.golden.vectors):
        if golden.probabilities is not None:
            if labels is None or int(labels[i]) != golden.label:
                raise VerificationError(
                    "golden_mismatch",
                    f"golden vector {i}: class "
                    f"{None if labels is None else int(labels[i])}, "
                    f"expected {golden.label}",
                )
            got = np.asarray(values[i], dtype=np.float64)
            want = np.asarray(golden.probabilities, dtype=np.float64)
        else:
            got = np.asarray([np.ravel(values)[i]], dtype=np.float64)
            want = np.asarray([golden.value], dtype=np.float64)
        if got.shape != want.shape or not np.all(np.abs(got - want) <= atol):
            raise VerificationError(
                "golden_mismatch",
                f"golden vector {i}: {got.tolist()} differs from {want.tolist()} beyond {atol}",
            )
