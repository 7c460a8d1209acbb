"""A three-node NATS cluster with JetStream and MQTT, on free ports in a work directory, with
the accounts the fleet needs; any node can be killed (-9) and started again.

Why NATS (``benchmarks/broker_cluster.py``, ``docs/broker-cluster.md``): its MQTT keeps
retained messages and sessions in JetStream streams replicated on all three nodes (R3), so
a retained desired state published through one node reaches a device on another, and
survives the loss of any one node. RabbitMQ 3.10's MQTT plugin keeps retained messages per
node.

Behaviour of nats-server 2.9.10 this rig relies on (checked by the benchmark):

* MQTT needs ``server_name`` on every node, JetStream enabled for the users' account, and a
  JetStream meta leader (two of three nodes up): until then CONNECT is refused.
* MQTT topics are NATS subjects with ``/`` as ``.``, so permissions are written on
  subjects; a QoS 1 subscription is a JetStream consumer delivering on ``$MQTT.sub.<id>``,
  which a restricted user must be allowed to subscribe to (before 2.11.12).
* SIGHUP reloads the configuration (here: the users file) without dropping anyone. Like
  mosquitto's, the reload is asynchronous; ``reload`` waits until a marker user's new
  password is accepted by every running node.
* ``$share/...`` filters are accepted and deliver nothing: 2.9 has no MQTT shared
  subscriptions (NATS clients have queue groups).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from shared.broker_address import CONTROL_PLANE_USER
from shared.topics import DEFAULT_ROOT
from simulator.broker import connack_code, free_ports

RELOAD_MARKER_USER = "edgefleet-test-reload-marker"
_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")
# What a device may do, as in deploy/mosquitto/acl: read its desired state and acks, write
# its state, online status, telemetry and samples.
DEVICE_READS = ("desired", "ack")
DEVICE_WRITES = ("state", "online", "telemetry", "samples")


def nats_server_path() -> str | None:
    found = shutil.which("nats-server")
    if found:
        return found
    for directory in _SEARCH_DIRS:
        candidate = Path(directory) / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def nats_version() -> str:
    path = nats_server_path()
    if path is None:
        return "nats-server (not installed)"
    result = subprocess.run([path, "--version"], check=False, capture_output=True, text=True)
    return result.stdout.strip() or "nats-server"


@dataclass
class NatsNode:
    """One node: its ports, files and process."""

    name: str
    workdir: Path
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.workdir / "nats.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "nats.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process is not None else None


class NatsCluster:
    """Three nats-server processes (by default) clustered on 127.0.0.1, MQTT on each, every
    stream replicated on all nodes. Users: the control plane's service account (everything
    under the topic root) and one per device (username = device id, its own topics only),
    added with ``add_user``/``add_users`` at any time."""

    def __init__(self, workdir: Path, nodes: int = 3, *, topic_root: str = DEFAULT_ROOT) -> None:
        if nats_server_path() is None:
            raise FileNotFoundError("nats-server not found (apt-get install nats-server)")
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.subject_root = topic_root.replace("/", ".")
        self.accounts_path = self.workdir / "accounts.conf"  # included by every node
        self._users: dict[str, str] = {}
        self._cp_users: dict[str, str] = {RELOAD_MARKER_USER: secrets.token_hex(16)}
        ports = iter(free_ports(4 * nodes))
        self.nodes = [
            NatsNode(
                name=f"n{i + 1}",
                workdir=self.workdir / f"n{i + 1}",
                client_port=next(ports),
                cluster_port=next(ports),
                mqtt_port=next(ports),
                http_port=next(ports),
            )
            for i in range(nodes)
        ]
        for node in self.nodes:
            node.workdir.mkdir(exist_ok=True)
            node.config_path.write_text(self._render(node))
        self._write_users()

    # -- configuration -------------------------------------------------------------------

    def _render(self, node: NatsNode) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
        replicas = min(3, len(self.nodes))
        return (
            f"server_name: {node.name}\n"
            f"listen: 127.0.0.1:{node.client_port}\n"
            f"http: 127.0.0.1:{node.http_port}\n"
            f'jetstream {{ store_dir: "{node.workdir / "js"}", max_mem: 64M, max_file: 4G }}\n'
            f"cluster {{ name: edgefleet, listen: 127.0.0.1:{node.cluster_port}, "
            f"routes: [{routes}] }}\n"
            # Retained messages and sessions on every node: any one may die.
            f"mqtt {{ listen: 127.0.0.1:{node.mqtt_port}, stream_replicas: {replicas} }}\n"
            'include "../accounts.conf"\n'  # relative to nats.conf
        )

    def _user_entries(self) -> list[dict[str, object]]:
        root = self.subject_root
        entries: list[dict[str, object]] = [
            {"user": user, "password": password} for user, password in self._cp_users.items()
        ]
        for device, token in self._users.items():
            own = f"{root}.devices.{device}"
            entries.append(
                {
                    "user": device,
                    "password": token,
                    "permissions": {
                        "publish": {"allow": [f"{own}.{c}" for c in DEVICE_WRITES]},
                        "subscribe": {
                            "allow": [f"{own}.{c}" for c in DEVICE_READS] + ["$MQTT.sub.>"]
                        },
                    },
                }
            )
        return entries

    def _write_users(self) -> None:
        # nats.conf accepts JSON values; one user a line, no separators needed.
        users = "\n".join(json.dumps(entry) for entry in self._user_entries())
        text = f"accounts {{ FLEET {{ jetstream: enabled, users: [\n{users}\n] }} }}\n"
        tmp = self.accounts_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        tmp.replace(self.accounts_path)

    # -- addresses -----------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, index: int) -> str:
        return f"mqtt://{self.host}:{self.nodes[index].mqtt_port}"

    def urls(self, first: int = 0, username: str | None = None, password: str = "") -> str:
        """Every node as one comma-separated ``broker_url`` starting with node ``first``
        (with ``username``: ``mqtt://user:pass@…`` on each)."""
        order = self.nodes[first:] + self.nodes[:first]
        auth = f"{username}:{password}@" if username else ""
        return ",".join(f"mqtt://{auth}{self.host}:{n.mqtt_port}" for n in order)

    @property
    def accounts(self) -> str:
        """The control plane's ``broker_accounts``: users are kept here, not by dynsec."""
        return "manual"

    def control_plane_url(
        self, password: str, username: str = CONTROL_PLANE_USER, first: int = 0
    ) -> str:
        return self.urls(first, username, password)

    def control_plane_env(self, password: str, first: int = 0) -> dict[str, str]:
        return {
            "EDGEFLEET_MQTT_URL": self.control_plane_url(password, first=first),
            "EDGEFLEET_BROKER_ACCOUNTS": self.accounts,
            # QoS 1 subscriptions are JetStream consumers, refused while JetStream is busy.
            "EDGEFLEET_MQTT_SUBSCRIBE_QOS": "0",
        }

    def agent_values(self) -> dict[str, object]:
        """Agent settings this cluster needs beyond ``broker_url``: subscriptions at QoS 0,
        plain NATS subscriptions. At QoS 1 each is a JetStream consumer, and one granted
        again after a node died can deliver nothing (docs/broker-cluster.md)."""
        return {"mqtt_subscribe_qos": 0}

    # -- users ---------------------------------------------------------------------------

    def add_control_plane_user(self, password: str, username: str = CONTROL_PLANE_USER) -> None:
        self._cp_users[username] = password
        self._apply_users()

    def add_user(self, username: str, password: str) -> None:
        self.add_users({username: password})

    def add_users(self, users: dict[str, str]) -> None:
        self._users.update(users)
        self._apply_users()

    def _apply_users(self) -> None:
        if any(node.running for node in self.nodes):
            self.reload()
        else:
            self._write_users()

    def reload(self, timeout: float = 30.0) -> None:
        """Rewrite the users file with a new marker password, SIGHUP every running node and
        wait until each accepts the marker's new password."""
        marker = secrets.token_hex(16)
        self._cp_users[RELOAD_MARKER_USER] = marker
        self._write_users()
        running = [node for node in self.nodes if node.running]
        for node in running:
            assert node.process is not None
            node.process.send_signal(signal.SIGHUP)
        for node in running:
            self._wait_connack(node, RELOAD_MARKER_USER, marker, timeout)

    def _wait_connack(self, node: NatsNode, user: str, password: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not node.running:
                raise RuntimeError(f"nats {node.name} exited\n{self.log_text(node)}")
            try:
                last = connack_code(self.host, node.mqtt_port, user, password, timeout=5.0)
                if last == 0:
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(
            f"nats {node.name} did not accept MQTT logins within {timeout} s ({last})\n"
            f"{self.log_text(node)}"
        )

    # -- processes -----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        for index in range(len(self.nodes)):
            self.start_node(index, wait=False)
        for node in self.nodes:
            self._wait_ready(node, timeout)

    def start_node(self, index: int, *, wait: bool = True, timeout: float = 60.0) -> None:
        node = self.nodes[index]
        if node.running:
            raise RuntimeError(f"nats {node.name} is already running")
        path = nats_server_path()
        assert path is not None
        with node.log_path.open("ab") as log:
            node.process = subprocess.Popen(
                [path, "-c", str(node.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=node.workdir,
            )
        if wait:
            self._wait_ready(node, timeout)

    def _wait_ready(self, node: NatsNode, timeout: float) -> None:
        """Ready = MQTT logins accepted (JetStream has a meta leader and the account's MQTT
        streams exist)."""
        self._wait_connack(node, RELOAD_MARKER_USER, self._cp_users[RELOAD_MARKER_USER], timeout)

    def kill_node(self, index: int) -> None:
        """SIGKILL, as in a crash."""
        node = self.nodes[index]
        if node.process is None:
            return
        if node.process.poll() is None:
            node.process.kill()
        node.process.wait()
        node.process = None

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
            node.process = None

    def mqtt_clients(self, index: int) -> list[str]:
        """Client ids of the MQTT connections node ``index`` holds (its monitoring port)."""
        node = self.nodes[index]
        url = f"http://{self.host}:{node.http_port}/connz?limit=100000"
        with urllib.request.urlopen(url, timeout=10) as response:
            connections = json.load(response)["connections"] or []
        return [c["mqtt_client"] for c in connections if c.get("mqtt_client")]

    def log_text(self, node: NatsNode | None = None) -> str:
        nodes = [node] if node is not None else self.nodes
        parts = []
        for n in nodes:
            if n.log_path.exists():
                tail = n.log_path.read_text(errors="replace").splitlines()[-40:]
                parts.append(f"--- {n.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def describe(self) -> str:
        ports = ", ".join(str(n.mqtt_port) for n in self.nodes)
        return f"{nats_version()} x{len(self.nodes)} (private, MQTT ports {ports})"

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        for index in range(len(self.nodes)):
            self.kill_node(index)
