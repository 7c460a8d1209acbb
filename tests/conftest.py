"""Shared fixtures: data directories, a PostgreSQL database per test session, a control
plane served by a real `edgefleet server` process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from simulator.broker import free_port

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def edgefleet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgefleet", *args]


def run_cli(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the `edgefleet` CLI as a user would, in a subprocess."""
    result = subprocess.run(
        edgefleet_cmd(*args),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=REPO,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"edgefleet {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            pass
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    return PG_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    import psycopg

    name = f"edgefleet_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = postgres_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class ServerProcess:
    url: str
    token: str
    data_dir: Path
    process: subprocess.Popen[bytes]

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1",
            timeout=60,
            headers={"Authorization": f"Bearer {token or self.token}"},
        )

    @property
    def env(self) -> dict[str, str]:
        return {"EDGEFLEET_URL": self.url, "EDGEFLEET_TOKEN": self.token}


def start_server(
    data_dir: Path, env: dict[str, str] | None = None, *, restart: ServerProcess | None = None
) -> ServerProcess:
    """`edgefleet init` then `edgefleet server` on a free port; waits for /healthz. With
    ``restart``: the same data dir, port and token again, without init."""
    if restart is None:
        token_line = run_cli("init", "--data-dir", str(data_dir), env=env).stdout.strip()
        token = token_line.splitlines()[-1].split("=", 1)[1]
        port = free_port()
    else:
        token, port = restart.token, int(restart.url.rsplit(":", 1)[1])
    log = (data_dir / "server.log").open("wb")
    process = subprocess.Popen(
        edgefleet_cmd(
            "server", "--data-dir", str(data_dir), "--port", str(port), "--log-level", "warning"
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {(data_dir / 'server.log').read_text()}")
        try:
            if httpx.get(url + "/api/v1/healthz", timeout=1).status_code == 200:
                return ServerProcess(url, token, data_dir, process)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not become ready in 60 s")


def stop_server(server: ServerProcess) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture
def sensor_csv(tmp_path: Path) -> Path:
    from simulator.data import write_sensor_csv

    return write_sensor_csv(tmp_path / "sensors.csv", 600, seed=3)
