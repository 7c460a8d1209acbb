"""A real nginx (Debian's) serving a directory as an artifact mirror, on a free port, for
the tests and benchmarks: its access log records each request with the Authorization header
it carried (a mirror must never see a device's token)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from simulator.broker import free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
LOG_FORMAT = "$request_method $uri $status auth=[$http_authorization] range=[$http_range]"


class NginxMirror:
    """``nginx -c …`` in the foreground, serving ``root`` read-only at ``url``."""

    def __init__(self, workdir: Path, root: Path) -> None:
        if NGINX is None:
            raise FileNotFoundError("apt-get install nginx-light (or nginx)")
        self.workdir, self.root = workdir, root
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.access_log = workdir / "access.log"
        user = "user root;\n" if os.geteuid() == 0 else ""  # the test's files are 0700
        (workdir / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {workdir / 'nginx.pid'};\n"
            f"error_log {workdir / 'error.log'};\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  log_format mirror '{LOG_FORMAT}';\n"
            f"  access_log {self.access_log} mirror;\n"
            f"  client_body_temp_path {workdir / 'tmp'};\n"
            f"  proxy_temp_path {workdir / 'tmp'};\n"
            f"  fastcgi_temp_path {workdir / 'tmp'};\n"
            f"  uwsgi_temp_path {workdir / 'tmp'};\n"
            f"  scgi_temp_path {workdir / 'tmp'};\n"
            "  default_type application/octet-stream;\n"
            f"  server {{\n    listen 127.0.0.1:{self.port};\n    root {root};\n"
            "    location / { limit_except GET { deny all; } }\n  }\n"
            "}\n"
        )
        (workdir / "tmp").mkdir(exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        config = str(self.workdir / "nginx.conf")
        self._process = subprocess.Popen(
            [NGINX or "nginx", "-c", config, "-p", str(self.workdir), "-e", "stderr"],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "stderr.log").open("wb"),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError((self.workdir / "stderr.log").read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen within {timeout} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)

    def requests(self) -> list[str]:
        """The access log's lines (nginx writes each when its response is done)."""
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def place(self, sha256: str, data: bytes) -> None:
        """``data`` where the blob store would keep ``sha256``: ``{root}/{sha[:2]}/{sha}``."""
        target = self.root / sha256[:2] / sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
