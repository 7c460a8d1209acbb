"""deploy/ as far as this machine can check it: no container engine runs here, so the
compose file and Dockerfiles are checked for what they must say; systemd units go through
`systemd-analyze verify`; Kubernetes manifests are validated against the Kubernetes schema
(kubernetes-validate)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def dockerfile(name: str) -> list[str]:
    return [line.strip() for line in (DEPLOY / "docker" / name).read_text().splitlines()]


def test_images_run_unprivileged_and_the_agents_is_the_base_install() -> None:
    for name in ("control-plane.Dockerfile", "agent.Dockerfile"):
        lines = dockerfile(name)
        assert "USER edgefleet" in lines, name
        assert any(line.startswith("RUN useradd --system --uid 10001") for line in lines), name
    agent = dockerfile("agent.Dockerfile")
    assert "RUN pip install --no-cache-dir . && rm -rf /src" in agent  # no extras
    assert not any("control_plane" in line for line in agent)
    control_plane = dockerfile("control-plane.Dockerfile")
    assert any(line.startswith("HEALTHCHECK") for line in control_plane)
    assert any("/api/v1/healthz" in line for line in control_plane)


def test_compose_runs_the_control_plane_on_postgres_and_mosquitto_without_secrets() -> None:
    text = (DEPLOY / "compose" / "compose.yaml").read_text()
    compose: dict[str, Any] = yaml.safe_load(text)
    services = compose["services"]
    assert set(services) == {"postgres", "broker-init", "mosquitto", "control-plane"}
    assert services["broker-init"]["profiles"] == ["init"]  # a step, not a service
    control_plane = services["control-plane"]
    assert control_plane["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert control_plane["build"]["dockerfile"] == "deploy/docker/control-plane.Dockerfile"
    assert (DEPLOY / "compose" / control_plane["build"]["context"] / "pyproject.toml").is_file()
    assert "healthcheck" in services["postgres"]
    assert services["mosquitto"]["ports"] == ["1883:1883"]  # the control plane's 1884 stays in
    # Every password is interpolated from .env, and refused when unset.
    assert re.findall(r"PASSWORD\}", text) == []
    assert all(
        "${" in str(value)
        for service in services.values()
        for key, value in (service.get("environment") or {}).items()
        if "PASSWORD" in key or "URL" in key
    )
    for service in services.values():  # every file it mounts exists or is made by a step
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                path = DEPLOY / "compose" / source
                assert path.exists() or path.name.endswith(".passwd"), source


def test_composes_mosquitto_config_is_the_template_rendered() -> None:
    """The rendered file must not drift from the templates the tests run mosquitto with."""
    from simulator.broker import render_mosquitto_conf

    rendered = render_mosquitto_conf(
        "dynsec",
        {
            "port": 1883,
            "bind_address": "0.0.0.0",
            "cp_port": 1884,
            "cp_bind_address": "0.0.0.0",
            "dynsec_plugin": "/usr/lib/mosquitto_dynamic_security.so",
            "dynsec_file": "/mosquitto/data/dynamic-security.json",
            "persistence_location": "/mosquitto/data/",
            "log_dest": "stdout",
        },
    )
    committed = (DEPLOY / "compose" / "mosquitto.conf").read_text()
    assert committed.endswith(rendered)
    assert "plugin /usr/lib/mosquitto_dynamic_security.so" in committed


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize("unit", ["edgefleet-agent.service", "edgefleet-control-plane.service"])
def test_systemd_units_verify_and_are_hardened(unit: str, tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / unit).read_text()
    for setting in (
        "User=edgefleet",
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "RestartPreventExitStatus=2",
        "Restart=always",
    ):
        assert setting in text, setting
    assert "StateDirectory=" in text
    # verify checks that ExecStart's binary exists: point it at one that does.
    copy = tmp_path / unit
    copy.write_text(re.sub(r"ExecStart=\S+", "ExecStart=/bin/true", text))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_kubernetes_manifests_validate_against_the_schema() -> None:
    import kubernetes_validate

    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "control-plane.yaml").read_text()))
    kinds = {doc["kind"]: doc for doc in documents}
    assert set(kinds) == {"PersistentVolumeClaim", "Deployment", "Service"}
    for doc in documents:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/api/v1/healthz"
    assert kinds["Deployment"]["spec"]["replicas"] >= 2  # the leader lock makes this safe
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert kinds["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
