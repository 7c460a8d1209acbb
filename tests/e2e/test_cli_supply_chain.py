"""What a new user does, through the CLI only: init, serve, upload their CSV, train, pull,
and verify the signed artifact offline — and the refusals they may meet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.data import CLASSES
from simulator.rig.server import ServerProcess, run_cli, start_server, stop_server
from tests.factories import trained_elsewhere

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server(tmp_path / "data")
    yield running
    stop_server(running)


def test_user_trains_and_verifies_offline(
    server: ServerProcess, sensor_csv: Path, tmp_path: Path
) -> None:
    env = server.env
    upload = run_cli(
        "datasets", "upload", str(sensor_csv), "--name", "sensors", "--label", "fault", env=env
    )
    dataset_id = upload.stdout.strip().splitlines()[-1]
    assert dataset_id == "1"
    train = run_cli(
        "train",
        "--model",
        "fault",
        "--dataset",
        dataset_id,
        "--algorithm",
        "random_forest",
        "--param",
        "n_estimators=20",
        "--param",
        "max_depth=null",
        env=env,
    )
    assert train.stdout.strip().splitlines()[-1] == "1"
    assert "parity max diff" in train.stderr

    searched = run_cli(
        "train",
        "--model",
        "searched",
        "--dataset",
        dataset_id,
        "--algorithm",
        "random_forest",
        "--search",
        "max_depth=2,6",
        "--search",
        "n_estimators=5,10",
        "--folds",
        "2",
        env=env,
    )
    assert searched.stdout.strip().splitlines()[-1] == "1"
    assert "search: accuracy, 2-fold cross-validation" in searched.stderr
    assert searched.stderr.count("best") == 1
    compared = run_cli("models", "compare", "searched", "1", "1", env=env).stdout
    assert "µs / run, 64 rows" in compared and "accuracy" in compared
    as_json = ("models", "compare", "searched", "1", "1", "--output", "json")
    document = json.loads(run_cli(*as_json, env=env).stdout)
    assert document["a"]["version"] == document["b"]["version"] == 1

    listing = run_cli("models", "list", env=env).stdout
    assert "fault" in listing and "searched" in listing and "classification" in listing
    shown = json.loads(run_cli("models", "show", "fault", "--version", "1", env=env).stdout)
    assert shown["manifest"]["lineage"]["params"]["max_depth"] is None

    out = tmp_path / "pulled"
    run_cli("models", "pull", "fault", "--out", str(out), env=env)
    manifest, artifact, trust = (
        out / "fault-v1.manifest.json",
        out / "fault-v1.onnx",
        out / "trust-store.json",
    )
    ok = run_cli("verify", str(manifest), str(artifact), "--trust-store", str(trust))
    assert ok.stdout.startswith("OK fault v1")

    # A flipped byte in the artifact.
    tampered = tmp_path / "tampered.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    bad = run_cli("verify", str(manifest), str(tampered), "--trust-store", str(trust), check=False)
    assert bad.returncode == 1
    assert "FAILED sha256_mismatch" in bad.stderr
    # A truncated artifact.
    tampered.write_bytes(artifact.read_bytes()[:-1])
    bad = run_cli("verify", str(manifest), str(tampered), "--trust-store", str(trust), check=False)
    assert bad.returncode == 1
    assert "FAILED size_mismatch" in bad.stderr
    # The manifest edited after signing.
    edited = tmp_path / "edited.json"
    document = json.loads(manifest.read_text())
    document["golden"]["atol"] = 0.5
    edited.write_text(json.dumps(document))
    bad = run_cli("verify", str(edited), str(artifact), "--trust-store", str(trust), check=False)
    assert bad.returncode == 1
    assert "FAILED bad_signature" in bad.stderr
    # Keys of another installation.
    other = tmp_path / "other"
    run_cli("init", "--data-dir", str(other))
    from control_plane.auth.keys import load_keys

    (tmp_path / "other-trust.json").write_text(
        load_keys(other / "keys").trust_store().model_dump_json()
    )
    bad = run_cli(
        "verify",
        str(manifest),
        str(artifact),
        "--trust-store",
        str(tmp_path / "other-trust.json"),
        check=False,
    )
    assert bad.returncode == 1
    assert "FAILED untrusted_key" in bad.stderr
    # Not a manifest at all.
    bad = run_cli("verify", str(trust), str(artifact), "--trust-store", str(trust), check=False)
    assert bad.returncode == 1
    assert "FAILED bad_manifest" in bad.stderr


def test_cli_refusals_are_clear(server: ServerProcess, tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("a,b\n1,2\n")
    result = run_cli(
        "datasets", "upload", str(csv), "--name", "x", "--label", "y", env=server.env, check=False
    )
    assert result.returncode == 1
    assert "body.label: label column 'y' is not in the header" in result.stderr
    result = run_cli(
        "train",
        "--model",
        "m",
        "--dataset",
        "1",
        "--algorithm",
        "logreg",
        env={"EDGEFLEET_URL": server.url, "EDGEFLEET_TOKEN": ""},
        check=False,
    )
    assert result.returncode == 2
    assert "no API token" in result.stderr
    result = run_cli(
        "train",
        "--model",
        "m",
        "--dataset",
        "1",
        "--algorithm",
        "logreg",
        "--param",
        "oops",
        env=server.env,
        check=False,
    )
    assert result.returncode == 2
    assert "NAME=VALUE" in result.stderr
    result = run_cli(
        "models", "list", env={**server.env, "EDGEFLEET_TOKEN": "ef_nope"}, check=False
    )
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr
    # As the README writes it; with devices registered (the token list holds device tokens).
    run_cli("devices", "add", "dev-cli", env=server.env)
    issued = run_cli("tokens", "create", "--name", "ci", "--role", "viewer", env=server.env)
    assert issued.stdout.strip().splitlines()[-1].startswith("EDGEFLEET_TOKEN=ef_")
    listed = run_cli("tokens", "list", env=server.env).stdout
    assert "device:dev-cli" in listed and "ci" in listed
    ci_id = issued.stderr.split()[1]  # "token 3 'ci' (viewer)"
    revoked = run_cli("tokens", "revoke", ci_id, env=server.env)
    assert "revoked" in revoked.stderr


def test_user_imports_a_model_trained_elsewhere(
    server: ServerProcess, sensor_csv: Path, tmp_path: Path
) -> None:
    """As the README writes it: an ONNX file from a notebook, its reference CSV uploaded on
    the way; then pulled and verified offline like a trained version."""
    model = tmp_path / "model.onnx"
    model.write_bytes(trained_elsewhere())
    imported = run_cli(
        "models",
        "import",
        "my-model",
        str(model),
        "--reference",
        str(sensor_csv),
        "--label",
        "fault",
        "--classes",
        ",".join(CLASSES),
        env=server.env,
    )
    assert imported.stdout.strip().splitlines()[-1] == "1"
    assert "my-model v1 (onnx): accuracy" in imported.stderr
    out = tmp_path / "pulled"
    run_cli("models", "pull", "my-model", "--out", str(out), env=server.env)
    assert (out / "my-model-v1.onnx").read_bytes() == model.read_bytes()
    run_cli(
        "verify",
        str(out / "my-model-v1.manifest.json"),
        str(out / "my-model-v1.onnx"),
        "--trust-store",
        str(out / "trust-store.json"),
    )
    again = ("models", "import", "my-model", str(model), "--dataset", "1")
    refused = run_cli(*again, env=server.env, check=False)
    assert refused.returncode == 1
    assert "has classes ['normal', " in refused.stderr  # v1's order, not the dataset's
    as_model = ("models", "import", "my-model", str(sensor_csv), "--dataset", "1")
    refused = run_cli(*as_model, env=server.env, check=False)
    assert refused.returncode == 2
    assert "give --format" in refused.stderr
    refused = run_cli(*as_model, "--format", "onnx", env=server.env, check=False)
    assert refused.returncode == 1
    assert "not an ONNX model" in refused.stderr


def test_init_twice_keeps_keys_and_issues_a_new_token(tmp_path: Path) -> None:
    data = tmp_path / "d"
    first = run_cli("init", "--data-dir", str(data)).stdout.strip().splitlines()
    keys = {p.name: p.read_bytes() for p in (data / "keys").iterdir()}
    assert sorted(keys) == ["deployment-signing.key", "model-signing.key"]
    assert all(((data / "keys" / name).stat().st_mode & 0o777) == 0o600 for name in keys)
    second = run_cli("init", "--data-dir", str(data)).stdout.strip().splitlines()
    assert {p.name: p.read_bytes() for p in (data / "keys").iterdir()} == keys
    assert first[-1].startswith("EDGEFLEET_TOKEN=ef_")
    assert second[-1].startswith("EDGEFLEET_TOKEN=ef_")
    assert first[-1] != second[-1]
    assert "(kept)" in "\n".join(second)


def test_server_refuses_a_data_dir_without_keys(tmp_path: Path) -> None:
    result = run_cli("server", "--data-dir", str(tmp_path / "empty"), "--port", "1", check=False)
    assert result.returncode == 2
    assert "edgefleet init" in result.stderr


def test_env_data_dir_is_honoured(tmp_path: Path) -> None:
    run_cli("init", env={"EDGEFLEET_DATA_DIR": str(tmp_path / "from-env")})
    assert (tmp_path / "from-env" / "keys" / "model-signing.key").is_file()


def test_bad_settings_are_a_clean_error(tmp_path: Path) -> None:
    run_cli("init", "--data-dir", str(tmp_path / "d"))
    (tmp_path / "d" / "config.toml").write_text("parity_atol = 'loose'\n")
    result = run_cli("server", "--data-dir", str(tmp_path / "d"), check=False)
    assert result.returncode == 2
    assert "invalid settings: parity_atol" in result.stderr
    assert "Traceback" not in result.stderr
