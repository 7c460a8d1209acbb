"""`edgefleet demo`: the model supply chain end to end on this machine.

Starts a real control plane (`edgefleet server` in a subprocess), generates a sensor dataset,
uploads it, trains the three algorithms through the REST API, marks the best as champion,
pulls it and verifies the signed artifact offline — then shows a tampered copy refused.
Later issues grow this into the full fleet, rollout and drift loop.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from agent.cli import verify_files
from control_plane.cli import wait_for_job
from control_plane.client import ApiClient, ApiError
from control_plane.config import load_settings
from control_plane.datadir import init_data_dir
from control_plane.schemas import TrainRequest, VersionPublic
from shared.errors import VerificationError
from simulator.data import write_sensor_csv

console = Console()
demo_app = typer.Typer()
ALGORITHMS = ("logreg", "random_forest", "hist_gb")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    log = (data_dir / "server.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet",
            "server",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise typer.Exit(f"the server exited; see {data_dir / 'server.log'}")  # type: ignore[arg-type]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/healthz", timeout=1).is_success:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    console.print(f"[red]the server did not start; see {data_dir / 'server.log'}")
    raise typer.Exit(1)


@demo_app.command("demo")
def demo(
    data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its data.")] = Path(
        "edgefleet-demo"
    ),
    rows: Annotated[int, typer.Option(min=100, max=200_000, help="Dataset rows.")] = 3000,
    seed: Annotated[int, typer.Option(help="Seed of the generated data.")] = 1,
    port: Annotated[int, typer.Option(help="API port (0: any free port).")] = 0,
) -> None:
    """Run the supply chain end to end: dataset → training → ONNX → parity gate → signed
    manifest → registry → offline verification. Prints what it made."""
    settings = load_settings(data_dir)
    init = init_data_dir(settings)
    data_dir = settings.data_dir
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    console.rule("[bold]edgefleet demo: the model supply chain")
    console.print(f"data dir {data_dir}\nstarting the control plane on {url} …")
    server = _start_server(data_dir, port)
    try:
        with ApiClient(url, init.token) as client:
            best = _run(client, data_dir, rows, seed)
    except ApiError as exc:
        console.print(f"[red]API error: {exc}")
        raise typer.Exit(1) from exc
    finally:
        server.terminate()
        server.wait(timeout=30)

    console.rule("[bold]what it made")
    console.print(
        f"data dir        {data_dir} (keys, SQLite database, content-addressed blobs)\n"
        f"dataset         {data_dir / 'sensors.csv'}\n"
        f"champion        fault v{best.version} ({best.algorithm}), sha256 {best.sha256[:16]}…\n"
        f"pulled          {data_dir / 'pulled'} (manifest, ONNX file, trust store)\n"
        f"admin token     EDGEFLEET_TOKEN={init.token}\n\n"
        "Try it yourself:\n"
        f"  .venv/bin/edgefleet server --data-dir {data_dir} --port 8000 &\n"
        f"  export EDGEFLEET_TOKEN={init.token}\n"
        f"  .venv/bin/edgefleet models show fault\n"
        f"  .venv/bin/edgefleet verify {data_dir}/pulled/fault-v{best.version}.manifest.json "
        f"{data_dir}/pulled/fault-v{best.version}.onnx --trust-store "
        f"{data_dir}/pulled/trust-store.json",
        highlight=False,
        soft_wrap=True,
    )


def _run(client: ApiClient, data_dir: Path, rows: int, seed: int) -> VersionPublic:
    csv = write_sensor_csv(data_dir / "sensors.csv", rows, seed)
    dataset = client.upload_dataset(csv, name="sensors", label="fault")
    console.print(
        f"uploaded dataset {dataset.id} ({dataset.name} v{dataset.version}): "
        f"{dataset.rows} rows × {len(dataset.features)} sensor features → "
        f"{len(dataset.classes or [])} fault classes"
    )
    table = Table(
        "version",
        "algorithm",
        "accuracy",
        "F1 (macro)",
        "ROC-AUC",
        "parity max |Δ|",
        "ONNX size",
        title="trained, exported, parity-checked, signed",
    )
    versions = []
    for algorithm in ALGORITHMS:
        job = wait_for_job(
            client,
            client.train(
                "fault", TrainRequest(dataset_id=dataset.id, algorithm=algorithm, seed=seed)
            ),
        )
        if job.status != "succeeded" or job.result_version is None:
            console.print(f"[red]training {algorithm} failed: {job.error}")
            raise typer.Exit(1)
        version = client.version("fault", str(job.result_version))
        versions.append(version)
        m = version.metrics
        table.add_row(
            str(version.version),
            algorithm,
            f"{m['accuracy']:.3f}",
            f"{m['f1_macro']:.3f}",
            f"{m.get('roc_auc', float('nan')):.3f}",
            f"{version.parity_max_abs_diff:.1e}",
            f"{version.size:,} B",
        )
    console.print(table)
    best = max(versions, key=lambda v: v.metrics["accuracy"])
    client.set_alias("fault", "champion", best.version)
    console.print(f"alias champion → v{best.version} ({best.algorithm})")

    pulled = data_dir / "pulled"
    pulled.mkdir(exist_ok=True)
    assert best.manifest is not None
    manifest = pulled / f"fault-v{best.version}.manifest.json"
    manifest.write_text(best.manifest.model_dump_json(indent=2))
    artifact = pulled / f"fault-v{best.version}.onnx"
    client.download_artifact(best.sha256, artifact)
    trust = pulled / "trust-store.json"
    trust.write_text(client.trust_store().model_dump_json(indent=2))
    checked = verify_files(manifest, artifact, trust)
    console.print(
        f"[green]verified offline[/green]: signature by model key "
        f"{checked.key_id[:16]}…, {checked.size:,} bytes, sha256 matches"
    )
    tampered = pulled / "tampered.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    try:
        verify_files(manifest, tampered, trust)
    except VerificationError as exc:
        console.print(f"[green]tampered copy refused[/green]: {exc.reason}")
    finally:
        os.unlink(tampered)
    return best
