"""An ``edgefleet`` CLI run and an ``edgefleet server`` process on a free port, as a user
would start them."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from simulator.broker import free_port

REPO = Path(__file__).resolve().parents[2]


def edgefleet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgefleet", *args]


def run_cli(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the `edgefleet` CLI as a user would, in a subprocess."""
    result = subprocess.run(  # noqa: PLW1510  (checked below, with the output in the error)
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


@dataclass
class ServerProcess:
    url: str
    token: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    ca_file: Path | None = None  # HTTPS: the CA its certificate is checked against

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1",
            timeout=60,
            headers={"Authorization": f"Bearer {token or self.token}"},
            verify=ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True,
        )

    @property
    def env(self) -> dict[str, str]:
        return {"EDGEFLEET_URL": self.url, "EDGEFLEET_TOKEN": self.token}


def start_server(
    data_dir: Path,
    env: dict[str, str] | None = None,
    *,
    restart: ServerProcess | None = None,
    ca_file: Path | None = None,
) -> ServerProcess:
    """`edgefleet init` then `edgefleet server` on a free port; waits for /healthz. With
    ``restart``: the same data dir, port and token again, without init. With ``ca_file``:
    the server speaks HTTPS (``EDGEFLEET_TLS_*`` in ``env``), checked against that CA."""
    if restart is None:
        token_line = run_cli("init", "--data-dir", str(data_dir), env=env).stdout.strip()
        token = token_line.splitlines()[-1].split("=", 1)[1]
        port = free_port()
    else:
        token, port = restart.token, int(restart.url.rsplit(":", 1)[1])
    log = (data_dir / "server.log").open("wb")
    process = subprocess.Popen(
        edgefleet_cmd("server", "--data-dir", str(data_dir), "--port", str(port)),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "EDGEFLEET_LOG_LEVEL": "warning", **(env or {})},
        cwd=REPO,
    )
    ca_file = ca_file or (restart.ca_file if restart else None)
    url = f"{'https' if ca_file else 'http'}://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {(data_dir / 'server.log').read_text()}")
        try:
            if httpx.get(url + "/api/v1/healthz", timeout=1, verify=verify).status_code == 200:
                return ServerProcess(url, token, data_dir, process, ca_file)
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
