"""`edgefleet serve DIR` as a user runs it on a device with no control plane: a directory in
the layout `edgefleet models pull` writes (made here with the rig's keys, no server), every
model verified before anything listens, the local inference API over real HTTP, a clean stop
on SIGTERM/SIGINT, and a refusal (exit 1 with the reason) for each way a model can be wrong."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from shared.manifest import ModelManifest
from shared.signing import SigningKey
from simulator.data import CLASSES, FEATURES, sensor_rows
from simulator.rig.agents import trusted_keys, wait_until
from simulator.rig.models import make_model
from simulator.rig.server import REPO, edgefleet_cmd, run_cli

pytestmark = pytest.mark.integration

Pulled = tuple[ModelManifest, bytes]


def write_pulled(directory: Path, trust_path: Path, *models: Pulled) -> Path:
    """What `edgefleet models pull --out DIR` writes, for each of ``models``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trust-store.json").write_text(trust_path.read_text())
    for manifest, onnx in models:
        stem = f"{manifest.name}-v{manifest.version}"
        (directory / f"{stem}.manifest.json").write_text(manifest.model_dump_json(indent=2))
        (directory / f"{stem}.onnx").write_bytes(onnx)
    return directory


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, Path]:
    model_key, _, trust_path = trusted_keys(tmp_path_factory.mktemp("keys"))
    return model_key, trust_path


@pytest.fixture(scope="module")
def fault(keys: tuple[SigningKey, Path]) -> Pulled:
    return make_model(keys[0])


@pytest.fixture(scope="module")
def pump(keys: tuple[SigningKey, Path]) -> Pulled:
    return make_model(
        keys[0], name="pump", version=4, algorithm="random_forest", params={"n_estimators": 5}
    )


@contextlib.contextmanager
def serve(directory: Path, log: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`edgefleet serve DIR --port 0`; yields the process and the URL it prints once it
    listens. Killed on the way out if a test left it running."""
    with log.open("w") as stderr:
        process = subprocess.Popen(
            edgefleet_cmd("serve", str(directory), "--port", "0", "--log-level", "warning"),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
        )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # blocks until the next line, or EOF if it exits
            lines.append(line)
            if line.startswith("serving "):
                yield process, line.split()[-1]
                return
        raise AssertionError(f"serve exited {process.wait()}: {lines}\n{log.read_text()}")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def reference(pulled: Pulled, X: np.ndarray) -> tuple[list[int], np.ndarray]:
    manifest, onnx = pulled
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {manifest.input.tensor.name: X})
    return labels.tolist(), np.asarray(probabilities)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serves_pulled_models_until_stopped(
    tmp_path: Path,
    keys: tuple[SigningKey, Path],
    fault: Pulled,
    pump: Pulled,
    stop: signal.Signals,
) -> None:
    directory = write_pulled(tmp_path / "pulled", keys[1], fault, pump)
    with serve(directory, tmp_path / "serve.log") as (process, url):
        wait_until(lambda: ready(url), what="serve ready")
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/v2").json()["name"] == "edgefleet"
            meta = client.get("/v2/models/pump").json()
            assert (meta["name"], meta["versions"]) == ("pump", ["4"])
            assert meta["parameters"]["sha256"] == pump[0].sha256

            X = sensor_rows(4, seed=11)[0].astype(np.float32)
            for pulled, path in ((fault, "/v2/models/fault"), (pump, "/v2/models/pump/versions/4")):
                labels, probabilities = reference(pulled, X)
                body = {
                    "inputs": [
                        {"name": "input", "shape": [4, 6], "datatype": "FP32", "data": X.tolist()}
                    ]
                }
                answer = client.post(f"{path}/infer", json=body)
                assert answer.status_code == 200, answer.text
                label, proba = answer.json()["outputs"]
                assert label["data"] == labels
                np.testing.assert_allclose(
                    np.reshape(proba["data"], (4, 4)), probabilities, atol=1e-6
                )

            features = dict(zip(FEATURES, X[0].tolist(), strict=True))
            named = client.post("/v1/predict", json={"model": "fault", "features": features})
            assert named.status_code == 200, named.text
            assert named.json()["predictions"][0]["class"] == CLASSES[reference(fault, X)[0][0]]
            assert client.get("/v2/models/fault/versions/2").status_code == 404

        process.send_signal(stop)
        assert process.wait(20) == 0


def tampered_artifact(directory: Path) -> None:
    path = directory / "fault-v1.onnx"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))


def test_refuses_to_start_on_any_bad_model(
    tmp_path: Path, keys: tuple[SigningKey, Path], fault: Pulled, pump: Pulled
) -> None:
    model_key, trust_path = keys
    manifest, onnx = fault
    wrong_golden = manifest.golden.model_copy(
        update={
            "vectors": [
                manifest.golden.vectors[0].model_copy(
                    update={"label": (manifest.golden.vectors[0].label or 0) + 1}
                ),
                *manifest.golden.vectors[1:],
            ]
        }
    )
    stranger = SigningKey.generate()
    cases: list[tuple[str, list[Pulled], str]] = [
        ("sha256", [fault, pump], "FAILED sha256_mismatch: fault-v1.onnx:"),
        ("stranger", [pump, (manifest.signed_with(stranger), onnx)], "untrusted_model_key"),
        (
            "edited",
            [(manifest.model_copy(update={"size": manifest.size + 1}), onnx)],
            "FAILED bad_model_signature: fault-v1.onnx:",
        ),
        (
            "golden",
            [(manifest.model_copy(update={"golden": wrong_golden}).signed_with(model_key), onnx)],
            "FAILED golden_mismatch: fault-v1.onnx: golden vector 0",
        ),
        (
            "versions",
            [fault, (manifest.model_copy(update={"version": 2}).signed_with(model_key), onnx)],
            "FAILED several_versions:",
        ),
        ("empty", [], "FAILED no_models:"),
    ]
    for name, models, reason in cases:
        directory = write_pulled(tmp_path / name, trust_path, *models)
        if name == "sha256":
            tampered_artifact(directory)
        refused = run_cli("serve", str(directory), "--port", "0", check=False, timeout=120)
        assert refused.returncode == 1, (name, refused.stdout, refused.stderr)
        assert reason in refused.stderr, (name, refused.stderr)
        assert "serving" not in refused.stdout, name
