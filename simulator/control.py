"""A real control plane for the simulator and the demo: `edgefleet server` in a subprocess
on a free port, with its own data directory (created by the same code as `edgefleet init`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from control_plane.config import load_settings
from control_plane.store.datadir import init_data_dir
from simulator.broker import free_port


class ControlPlane:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        # The token goes into the server's database: ``env``'s, when it names one.
        database = self.env.get("EDGEFLEET_DATABASE_URL")
        self.settings = load_settings(data_dir, database_url=database)
        self.data_dir = self.settings.data_dir
        self.token = init_data_dir(self.settings).token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until `/healthz` answers (RuntimeError naming the log if not)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgefleet",
                    "server",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the control plane exited; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/api/v1/healthz", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.process.kill()
        raise RuntimeError(f"the control plane did not start; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )

    def async_client(self, timeout: float = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )
