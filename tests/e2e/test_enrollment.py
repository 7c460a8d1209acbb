"""A device joins a fleet as an operator would set it up, with no hand edits: certificates
from `edgefleet certs create`, mosquitto with the dynamic security plugin and a TLS
listener, `edgefleet server` over HTTPS, a bootstrap token from the CLI, `edgefleet agent
enroll` on the device, `edgefleet devices approve`, then `edgefleet agent` with the config
enroll wrote: it takes a deployment over mqtts:// and https:// and serves it. A wrong CA is
refused and writes nothing."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from simulator.broker import MosquittoBroker, dynsec_plugin, free_port, mosquitto_available
from simulator.data import write_sensor_csv
from simulator.rig.agents import CP_PASSWORD, wait_until
from simulator.rig.server import (
    REPO,
    ServerProcess,
    edgefleet_cmd,
    run_cli,
    start_server,
    stop_server,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not mosquitto_available() or dynsec_plugin() is None,
        reason="needs mosquitto with mosquitto_dynamic_security.so (Debian: apt install mosquitto)",
    ),
]
DEVICE = "dev-tls"


@dataclass
class Site:
    tmp: Path
    tls: Path
    broker: MosquittoBroker
    server: ServerProcess

    @property
    def ca(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.tls / "ca.pem")

    @property
    def operator_env(self) -> dict[str, str]:
        # The CLI (httpx) trusts the private CA through SSL_CERT_FILE.
        return {**self.server.env, "SSL_CERT_FILE": str(self.tls / "ca.pem")}

    def enroll_cmd(self, bootstrap: str, ca: Path, config: Path, *extra: str) -> list[str]:
        return edgefleet_cmd(
            "agent", "enroll",
            "--url", self.server.url,
            "--device-id", DEVICE,
            "--broker-url", f"mqtts://127.0.0.1:{self.broker.port}",
            "--bootstrap-token", bootstrap,
            "--config", str(config),
            "--data-dir", str(self.tmp / "device" / "data"),
            "--ca-file", str(ca),
            "--label", "hw=rpi4",
            *extra,
        )  # fmt: skip


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    tls = tmp_path / "tls"
    made = run_cli(
        "certs", "create", "--out", str(tls), "--host", "127.0.0.1", "--host", "localhost"
    )
    assert "server.key" in made.stdout
    assert stat.S_IMODE((tls / "ca.key").stat().st_mode) == 0o600
    broker = MosquittoBroker(
        tmp_path / "broker", auth="dynsec", tls=(tls / "server.pem", tls / "server.key")
    )
    broker.add_control_plane_user(CP_PASSWORD)
    broker.start()
    env = {
        "EDGEFLEET_MQTT_URL": broker.control_plane_url(CP_PASSWORD),
        "EDGEFLEET_TLS_CERTFILE": str(tls / "server.pem"),
        "EDGEFLEET_TLS_KEYFILE": str(tls / "server.key"),
    }
    server = start_server(tmp_path / "cp", env=env, ca_file=tls / "ca.pem")
    try:
        yield Site(tmp_path, tls, broker, server)
    finally:
        stop_server(server)
        broker.stop()


def test_a_device_enrolls_over_tls_and_serves_what_is_deployed(site: Site) -> None:
    env = site.operator_env
    csv = write_sensor_csv(site.tmp / "sensors.csv", 400, seed=1)
    upload = run_cli("datasets", "upload", str(csv), "--name", "s", "--label", "fault", env=env)
    dataset = upload.stdout.strip().splitlines()[-1]
    run_cli("train", "--model", "fault", "--dataset", dataset, "--algorithm", "logreg", env=env)
    issued = run_cli(
        "bootstrap-tokens", "create", "--name", "batch-1", "--label", "site=lab", env=env
    )
    bootstrap = issued.stdout.strip().splitlines()[-1].split("=", 1)[1]

    # On the device: enroll; no operator within --wait 0, so exit 3 (pending) ...
    config = site.tmp / "device" / "agent.toml"
    first = subprocess.run(
        site.enroll_cmd(bootstrap, site.tls / "ca.pem", config, "--wait", "0"),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert first.returncode == 3, first.stdout + first.stderr
    assert "still pending; run the same command again to resume" in first.stderr
    # ... then the same command again resumes with the saved token (the bootstrap token had
    # one use: a second enrollment would be refused) and waits for an operator.
    enrolling = subprocess.Popen(
        site.enroll_cmd(bootstrap, site.tls / "ca.pem", config, "--wait", "300"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    try:
        with site.server.client() as api:
            wait_until(
                lambda: api.get(f"/devices/{DEVICE}").status_code == 200, what="enrolled, pending"
            )
            assert api.get(f"/devices/{DEVICE}").json()["admission"] == "pending"
        run_cli("devices", "approve", DEVICE, env=env)
        output, _ = enrolling.communicate(timeout=120)
    finally:
        if enrolling.poll() is None:
            enrolling.kill()
    assert enrolling.returncode == 0, output
    assert "ready: edgefleet agent --config" in output
    assert f"resuming the enrollment of {DEVICE}" in output
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    trust = config.parent / "trust-store.json"
    assert trust.read_bytes() == httpx.get(site.server.url + "/api/v1/keys", verify=site.ca).content

    # The agent runs on exactly what enroll wrote (the port of its local API from the env,
    # so parallel test runs do not collide).
    api_port = free_port()
    log = (site.tmp / "agent.log").open("wb")
    agent = subprocess.Popen(
        edgefleet_cmd("agent", "--config", str(config)),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "EDGEFLEET_AGENT_API_PORT": str(api_port)},
        cwd=REPO,
    )
    try:
        with site.server.client() as api:
            wait_until(lambda: api.get(f"/devices/{DEVICE}").json()["online"], what="online")
            run_cli("deploy", "fault:1", "--device", DEVICE, env=env)

            def active() -> bool:
                state = api.get(f"/devices/{DEVICE}").json()["state"]
                models = state["models"] if state else []
                return bool(models) and (models[0]["active"] or {}).get("version") == 1

            wait_until(active, timeout=120, what="v1 installed over https and mqtts")
            device = api.get(f"/devices/{DEVICE}").json()
            assert device["labels"] == {"hw": "rpi4", "site": "lab"}
        ready = httpx.get(f"http://127.0.0.1:{api_port}/v2/health/ready")
        assert ready.status_code == 200, ready.text
    finally:
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
        log.close()


def test_a_wrong_ca_is_refused_and_nothing_is_written(site: Site) -> None:
    other = site.tmp / "other-ca"
    run_cli("certs", "create", "--out", str(other), "--host", "127.0.0.1")
    issued = run_cli("bootstrap-tokens", "create", "--name", "b", env=site.operator_env)
    bootstrap = issued.stdout.strip().splitlines()[-1].split("=", 1)[1]
    config = site.tmp / "device" / "agent.toml"
    result = subprocess.run(
        site.enroll_cmd(bootstrap, other / "ca.pem", config),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert not config.exists()
    with site.server.client() as api:
        assert api.get(f"/devices/{DEVICE}").status_code == 404
        (token,) = api.get("/bootstrap-tokens").json()
        assert token["uses"] == 0
    # The broker's TLS listener refuses the handshake the same way.
    context = ssl.create_default_context(cafile=str(other / "ca.pem"))
    address = (site.broker.host, site.broker.port)
    with (
        socket.create_connection(address, timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1")
    # And certificates are never overwritten.
    again = run_cli("certs", "create", "--out", str(other), "--host", "x", check=False)
    assert again.returncode == 2
    assert "never overwritten" in again.stderr
