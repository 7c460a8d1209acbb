"""Multi-node MQTT brokers that install here, as the fleet uses MQTT 3.1.1 (issue 17).

Each engine runs as a three-node cluster on 127.0.0.1 in a temp dir: NATS 2.9 with
JetStream's MQTT (``simulator/rig/cluster.py``: every stream on all three nodes) and
RabbitMQ 3.10 with its MQTT plugin (three nodes of our own, next to, never touching, the
system service). For each, as the control plane's account (per-device ACLs are the
end-to-end test's business):

* protocol: a retained desired state published through node 1 reaches a subscriber on node
  2 (exact topic, then the ``+`` wildcard the control plane uses for states); a QoS 1
  message crosses nodes on ``edgefleet/v1/devices/+/telemetry``; a Last Will fires on
  another node when a client's socket dies; a clean_session=false session made on node 1
  gets what was published while it was away when it comes back on node 2; ``$share/``
  splits messages between two subscribers on two nodes (or does not);
* figures: N (default 1,000) device clients spread over the nodes, each subscribed QoS 1 to
  its desired topic; the control plane publishes N retained ~800-byte desired states
  through node 1 (200 in flight): publish rate, and delivery latency p50 / p99 / last;
  node RSS idle and after; connect time of the N clients;
* kill -9 of node 1: do the retained states survive (a fresh client on node 2 subscribes to
  N exact topics and counts them), does a QoS 1 stream published on node 2 keep arriving
  on node 3, how long until node 1 is back and serves the retained states itself.

    .venv/bin/python benchmarks/broker_cluster.py [--devices 1000] [--engines nats,rabbitmq]

Prints one table per part and a JSON line per engine with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's packages, whatever the working directory

import aiomqtt  # noqa: E402
from paho.mqtt.reasoncodes import ReasonCode  # noqa: E402
from results import Figure, Results, add_json_argument  # noqa: E402

from shared.broker_address import CONTROL_PLANE_USER  # noqa: E402
from shared.topics import Channel, Topics  # noqa: E402
from simulator.broker import free_ports  # noqa: E402
from simulator.rig.cluster import NatsCluster, nats_version  # noqa: E402
from simulator.rig.procs import proc_rss_mib  # noqa: E402

PASSWORD = "bench-secret"  # a throw-away cluster's account
TOPICS = Topics()
PAYLOAD = b"x" * 800  # about a signed desired state
# The device clients' desired subscriptions (--device-qos): 1 as the agent's default, 0 as
# the agent runs on a NATS cluster (docs/broker-cluster.md, mqtt_subscribe_qos).
DEVICE_QOS: list[Literal[0, 1]] = [1]
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
WAIT = 15.0  # seconds a check waits for a message before it says "no"


class Cluster(Protocol):
    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def kill(self, index: int) -> None: ...
    def restart(self, index: int) -> None: ...
    def port(self, index: int) -> int: ...
    def pids(self) -> list[int | None]: ...
    def describe(self) -> str: ...


class Nats:
    name = "nats"

    def __init__(self, workdir: Path) -> None:
        self.cluster = NatsCluster(workdir)
        self.cluster.add_control_plane_user(PASSWORD)

    def start(self) -> None:
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()

    def kill(self, index: int) -> None:
        self.cluster.kill_node(index)

    def restart(self, index: int) -> None:
        self.cluster.start_node(index)

    def port(self, index: int) -> int:
        return self.cluster.nodes[index].mqtt_port

    def pids(self) -> list[int | None]:
        return [node.pid for node in self.cluster.nodes]

    def describe(self) -> str:
        return f"{nats_version()}, JetStream, MQTT streams R3"


class Rabbit:
    """Three RabbitMQ nodes of our own: private HOME (Erlang cookie), node names, ports,
    data and log dirs, config; nodes 2 and 3 join node 1."""

    name = "rabbitmq"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.home = workdir / "home"
        self.home.mkdir(parents=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(f"EDGEFLEETBENCH{os.getpid()}")
        cookie.chmod(0o400)
        ports = free_ports(9)
        self.nodes: list[dict[str, Any]] = [
            {"name": f"efbench{i + 1}-{os.getpid()}@localhost", "amqp": ports[3 * i],
             "dist": ports[3 * i + 1], "mqtt": ports[3 * i + 2], "dir": workdir / f"n{i + 1}"}
            for i in range(3)
        ]  # fmt: skip
        self.processes: list[subprocess.Popen[bytes] | None] = [None, None, None]
        for node in self.nodes:
            directory = Path(str(node["dir"]))
            directory.mkdir()
            (directory / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{node['amqp']}\n"
                f"mqtt.listeners.tcp.default = 127.0.0.1:{node['mqtt']}\n"
                "mqtt.allow_anonymous = false\nloopback_users = none\n"
                f"default_user = {CONTROL_PLANE_USER}\ndefault_pass = {PASSWORD}\n"
                "cluster_partition_handling = pause_minority\n"
            )
            (directory / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")

    def _env(self, index: int) -> dict[str, str]:
        node = self.nodes[index]
        directory = Path(str(node["dir"]))
        return {
            **os.environ,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": str(node["name"]),
            "RABBITMQ_NODE_PORT": str(node["amqp"]),
            "RABBITMQ_DIST_PORT": str(node["dist"]),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(directory / "pid"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
        }

    def ctl(self, index: int, *args: str) -> None:
        subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", str(self.nodes[index]["name"]), *args],
            env=self._env(index),
            check=True,
            capture_output=True,
            timeout=180,
        )

    def _launch(self, index: int) -> None:
        directory = Path(str(self.nodes[index]["dir"]))
        with (directory / "out.log").open("ab") as out:
            self.processes[index] = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")],
                env=self._env(index),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        # await_startup fails at once (69) until the node's distribution port answers.
        deadline = time.monotonic() + 180
        while True:
            try:
                self.ctl(index, "await_startup", "--timeout", "120")
                return
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def start(self) -> None:
        for index in range(3):
            self._launch(index)
        for index in (1, 2):
            self.ctl(index, "stop_app")
            self.ctl(index, "join_cluster", str(self.nodes[0]["name"]))
            self.ctl(index, "start_app")

    def kill(self, index: int) -> None:
        process = self.processes[index]
        if process is None:
            return
        # rabbitmq-server is a shell script whose child is the Erlang VM: kill the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait()
        self.processes[index] = None

    def restart(self, index: int) -> None:
        self._launch(index)

    def stop(self) -> None:
        for index, process in enumerate(self.processes):
            if process is not None:
                with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                    self.ctl(index, "stop")
                self.kill(index)

    def port(self, index: int) -> int:
        return int(self.nodes[index]["mqtt"])

    def pids(self) -> list[int | None]:
        found: list[int | None] = []
        for node in self.nodes:
            pid_file = Path(str(node["dir"])) / "pid"
            with contextlib.suppress(FileNotFoundError, ValueError):
                pid = int(pid_file.read_text().strip())
                if Path(f"/proc/{pid}").exists():
                    found.append(pid)
                    continue
            found.append(None)
        return found

    def describe(self) -> str:
        return "RabbitMQ 3.10.8 + rabbitmq_mqtt, Erlang 25"


# -- MQTT helpers -------------------------------------------------------------------------


def client(port: int, name: str, *, clean: bool = True, **extra: Any) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        username=CONTROL_PLANE_USER,
        password=PASSWORD,
        identifier=name,
        clean_session=clean,
        keepalive=30,
        timeout=30,
        max_inflight_messages=200,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        **extra,
    )


async def first_message(c: aiomqtt.Client, seconds: float = WAIT) -> aiomqtt.Message | None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in c.messages:
                return message
    return None


async def collect(c: aiomqtt.Client, count: int, seconds: float) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in c.messages:
                got.append(message)
                if len(got) >= count:
                    break
    return got


def _mqtt_string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def connect_with_will(port: int, client_id: str, will_topic: str) -> socket.socket:
    """A bare MQTT 3.1.1 CONNECT with a retained QoS 1 will; the caller closes the socket
    without DISCONNECT, as a device that loses power."""
    flags = 0x02 | 0x04 | 0x08 | 0x20 | 0x80 | 0x40  # clean, will, QoS 1, retain, user, pass
    payload = (
        _mqtt_string(client_id.encode())
        + _mqtt_string(will_topic.encode())
        + _mqtt_string(b"offline")
        + _mqtt_string(CONTROL_PLANE_USER.encode())
        + _mqtt_string(PASSWORD.encode())
    )
    body = _mqtt_string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", 30) + payload
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            break
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(bytes([0x10]) + bytes(encoded) + body)
    answer = sock.recv(4)
    if len(answer) < 4 or answer[3] != 0:
        raise ConnectionError(f"CONNECT refused: {answer!r}")
    return sock


# -- protocol checks ----------------------------------------------------------------------


async def retained_across_nodes(cl: Cluster) -> dict[str, object]:
    topic = TOPICS.device("check-retained", Channel.DESIRED)
    async with client(cl.port(0), "check-pub") as pub:
        await pub.publish(topic, b"v1", qos=1, retain=True)
    async with client(cl.port(1), "check-sub") as sub:
        await sub.subscribe(topic, qos=1)
        exact = await first_message(sub)
    async with client(cl.port(2), "check-wild") as sub:
        await sub.subscribe(TOPICS.all_devices(Channel.DESIRED), qos=1)
        wild = await first_message(sub)
    return {
        "retained_other_node": exact is not None and exact.payload == b"v1",
        "retained_wildcard_other_node": wild is not None and wild.payload == b"v1",
    }


async def wildcard_qos1_across_nodes(cl: Cluster) -> bool:
    async with client(cl.port(2), "check-ingest") as sub:
        await sub.subscribe(TOPICS.all_devices(Channel.TELEMETRY), qos=1)
        async with client(cl.port(0), "check-dev") as dev:
            await dev.publish(TOPICS.device("check-dev", Channel.TELEMETRY), b"w1", qos=1)
        message = await first_message(sub)
    return message is not None and message.payload == b"w1"


async def last_will_across_nodes(cl: Cluster) -> bool:
    topic = TOPICS.device("check-will", Channel.ONLINE)
    async with client(cl.port(2), "check-will-watch") as sub:
        await sub.subscribe(topic, qos=1)
        sock = await asyncio.to_thread(connect_with_will, cl.port(1), "check-will", topic)
        await asyncio.sleep(0.5)  # connected for a while, then the power goes
        sock.close()
        message = await first_message(sub, WAIT + 30)  # keepalive 30 s at worst
    return message is not None and message.payload == b"offline"


async def session_moves(cl: Cluster) -> bool:
    topic = TOPICS.device("check-session", Channel.ACK)
    async with client(cl.port(0), "check-session", clean=False) as c:
        await c.subscribe(topic, qos=1)
    async with client(cl.port(2), "check-session-pub") as pub:
        await pub.publish(topic, b"while-away", qos=1)
    async with client(cl.port(1), "check-session", clean=False) as c:
        message = await first_message(c)
    async with client(cl.port(1), "check-session", clean=True):
        pass  # end the session
    return message is not None and message.payload == b"while-away"


async def shared_subscription(cl: Cluster) -> str:
    flt = TOPICS.shared("bench", TOPICS.all_devices(Channel.SAMPLES))
    async with client(cl.port(1), "check-share-a") as a, client(cl.port(2), "check-share-b") as b:
        await a.subscribe(flt, qos=1)
        await b.subscribe(flt, qos=1)
        async with client(cl.port(0), "check-share-pub") as pub:
            for i in range(20):
                await pub.publish(TOPICS.device("check-share", Channel.SAMPLES), str(i), qos=1)
        got_a, got_b = await asyncio.gather(collect(a, 20, 5), collect(b, 20, 5))
    return f"{len(got_a)} + {len(got_b)} of 20"


async def protocol(cl: Cluster) -> dict[str, object]:
    result = await retained_across_nodes(cl)
    checks: list[tuple[str, Callable[[Cluster], Awaitable[object]]]] = [
        ("wildcard_qos1_other_node", wildcard_qos1_across_nodes),
        ("last_will_other_node", last_will_across_nodes),
        ("session_resumes_other_node", session_moves),
        ("shared_subscription_split", shared_subscription),
    ]
    for name, check in checks:
        try:
            result[name] = await check(cl)
        except (aiomqtt.MqttError, OSError) as exc:
            result[name] = f"error: {exc}"
    return result


# -- figures ------------------------------------------------------------------------------


async def fleet_figures(cl: Cluster, devices: int) -> dict[str, object]:
    ids = [f"bench-{i:05d}" for i in range(devices)]
    arrived: dict[str, float] = {}
    done = asyncio.Event()
    stack = contextlib.AsyncExitStack()
    started = time.perf_counter()

    async def device(i: int, device_id: str) -> None:
        c = await stack.enter_async_context(client(cl.port(i % 3), device_id))
        granted = await c.subscribe(TOPICS.device(device_id, Channel.DESIRED), qos=DEVICE_QOS[0])
        if any((g.value if isinstance(g, ReasonCode) else g) >= 0x80 for g in granted):
            refused.append(device_id)  # the agent would reconnect; this client does not

        async def read() -> None:
            async for _ in c.messages:
                arrived.setdefault(device_id, time.perf_counter())
                if len(arrived) == devices:
                    done.set()

        readers.append(asyncio.create_task(read()))

    readers: list[asyncio.Task[None]] = []
    refused: list[str] = []
    async with stack:
        for chunk in range(0, devices, 50):  # 50 connects at a time
            await asyncio.gather(*(device(i, ids[i]) for i in range(chunk, chunk + 50)
                                   if i < devices))  # fmt: skip
        connect_seconds = time.perf_counter() - started
        rss_idle = [round(proc_rss_mib(p), 1) if p else None for p in cl.pids()]
        async with client(cl.port(0), "bench-cp") as cp:
            sent: dict[str, float] = {}

            async def publish(device_id: str) -> None:
                sent[device_id] = time.perf_counter()
                await cp.publish(
                    TOPICS.device(device_id, Channel.DESIRED), PAYLOAD, qos=1, retain=True
                )

            begin = time.perf_counter()
            await asyncio.gather(*(publish(d) for d in ids))
            publish_seconds = time.perf_counter() - begin
            begin = time.perf_counter()  # telemetry-like: QoS 1, not retained, no subscriber
            await asyncio.gather(
                *(cp.publish(TOPICS.device(d, Channel.SAMPLES), PAYLOAD, qos=1) for d in ids)
            )
            plain_seconds = time.perf_counter() - begin
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 120)
        for task in readers:
            task.cancel()
        latencies = sorted(arrived[d] - sent[d] for d in arrived if d in sent)
        rss_after = [round(proc_rss_mib(p), 1) if p else None for p in cl.pids()]
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "devices": devices,
        "connect_seconds": round(connect_seconds, 2),
        "retained_publish_per_second": round(devices / publish_seconds),
        "qos1_publish_per_second": round(devices / plain_seconds),
        "subscriptions_refused": len(refused),
        "delivered": len(arrived),
        "latency_p50_ms": round(q[49] * 1000, 1),
        "latency_p99_ms": round(q[98] * 1000, 1),
        "last_delivery_s": round(max(latencies), 2) if latencies else None,
        "rss_idle_mib": rss_idle,
        "rss_after_mib": rss_after,
    }


async def count_retained(port: int, devices: int) -> int:
    """How many devices get their retained desired state, each as a device does: its own
    connection, one exact subscription. (One session with many exact subscriptions is not
    the device's case, and nats-server 2.9 delivered only ~60% of the retained messages to
    it, 300 ms per subscription.)"""

    async def one(i: int) -> bool:
        device_id = f"bench-{i:05d}"
        try:
            async with client(port, f"{device_id}-again") as c:
                await c.subscribe(TOPICS.device(device_id, Channel.DESIRED), qos=DEVICE_QOS[0])
                return await first_message(c, 10) is not None
        except aiomqtt.MqttError:
            return False

    found = 0
    for chunk in range(0, devices, 50):
        found += sum(
            await asyncio.gather(*(one(i) for i in range(chunk, min(chunk + 50, devices))))
        )
    return found


async def count_stored(port: int, devices: int) -> int:
    """The retained desired states a node still holds, through one wildcard subscription
    (RabbitMQ sends no retained message to a wildcard: 0 there says nothing)."""
    async with client(port, "bench-count-stored") as c:
        await c.subscribe(TOPICS.all_devices(Channel.DESIRED), qos=1)
        got = await collect(c, devices + 1, 60)
    return len({str(m.topic) for m in got if str(m.topic).split("/")[3].startswith("bench-")})


async def kill_figures(cl: Cluster, devices: int) -> dict[str, object]:
    """Node 1 (index 0, where the retained states were published) dies with -9 while a QoS
    1 stream flows from node 2 to a clean_session=false subscriber on node 3."""
    stream_topic = TOPICS.device("bench-stream", Channel.TELEMETRY)
    async with client(cl.port(2), "bench-stream-sub", clean=False) as sub:
        await sub.subscribe(stream_topic, qos=1)
        async with client(cl.port(1), "bench-stream-pub") as pub:
            acked = 0
            for i in range(400):
                if i == 100:
                    await asyncio.to_thread(cl.kill, 0)
                    killed_at = time.perf_counter()
                try:
                    await pub.publish(stream_topic, str(i), qos=1)
                    acked += 1
                except aiomqtt.MqttError:
                    pass
            publish_after_kill = time.perf_counter() - killed_at
        got = await collect(sub, 400, 60)
    stream = {bytes(m.payload) for m in got if isinstance(m.payload, bytes)}
    survived = await count_retained(cl.port(1), devices)
    begin = time.perf_counter()
    await asyncio.to_thread(cl.restart, 0)
    rejoin = time.perf_counter() - begin
    on_restarted = await count_retained(cl.port(0), devices)
    stored = await count_stored(cl.port(1), devices)
    return {
        "qos1_stream_acked": acked,
        "qos1_stream_received": len(stream),
        "qos1_stream_publish_s_after_kill": round(publish_after_kill, 2),
        "retained_on_survivor": f"{survived}/{devices}",
        "node_restart_s": round(rejoin, 1),
        "retained_on_restarted": f"{on_restarted}/{devices}",
        "retained_stored_wildcard": f"{stored}/{devices}",
    }


async def measure(cl: Cluster, devices: int) -> dict[str, object]:
    result: dict[str, object] = {"engine": cl.name, "version": cl.describe()}
    result["protocol"] = await protocol(cl)
    result["fleet"] = await fleet_figures(cl, devices)
    result["kill"] = await kill_figures(cl, devices)
    return result


def run_engine(name: str, devices: int) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix=f"edgefleet-{name}-"))
    cl: Cluster = Nats(workdir) if name == "nats" else Rabbit(workdir)
    begin = time.perf_counter()
    try:
        cl.start()
        start_seconds = time.perf_counter() - begin
        result = asyncio.run(measure(cl, devices))
        result["start_seconds"] = round(start_seconds, 1)
        return result
    finally:
        cl.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for part in ("protocol", "fleet", "kill"):
        keys = list(results[0][part])
        lines.append(f"\n| {part} | " + " | ".join(r["engine"] for r in results) + " |")
        lines.append("|---|" + "---|" * len(results))
        lines += [f"| {k} | " + " | ".join(str(r[part].get(k)) for r in results) + " |"
                  for k in keys]  # fmt: skip
    return "\n".join(lines)


def record(results: Results, measured: list[dict[str, Any]]) -> None:
    """NATS's figures (the choice: docs/broker-cluster.md) against RabbitMQ's, when both ran."""
    first: dict[str, Figure] = {}

    def add(group: str, engine: str, value: float, unit: str, **extra: Any) -> None:
        figure = results.add(group, engine, value, unit, baseline=first.get(group), **extra)
        first.setdefault(group, figure)

    for r in sorted(measured, key=lambda r: r["engine"] == "nats"):
        engine, fleet, kill = r["engine"], r["fleet"], r["kill"]
        n = fleet["devices"]
        split = r["protocol"].get("shared_subscription_split")  # a count, not a verdict
        checks = [v for k, v in r["protocol"].items() if k != "shared_subscription_split"]
        add(
            "protocol checks passed",
            engine,
            sum(v is True for v in checks),
            "count",
            better="higher",
            note=f"of {len(checks)}; $share split {split}",
        )
        add("cluster start", engine, r["start_seconds"], "s")
        add(f"connect {n:,} device clients", engine, fleet["connect_seconds"], "s")
        add(
            f"{n:,} retained desired states published",
            engine,
            fleet["retained_publish_per_second"],
            "/s",
            better="higher",
        )
        add(
            f"{n:,} retained desired states delivered",
            engine,
            fleet["latency_p50_ms"],
            "ms",
            p99=fleet["latency_p99_ms"],
            headline=engine == "nats",
            note=f"{fleet['delivered']} delivered, last after {fleet['last_delivery_s']} s",
        )
        add(
            "node RSS after, all three",
            engine,
            sum(m for m in fleet["rss_after_mib"] if m is not None),
            "MiB",
        )
        add(
            "QoS 1 stream across a node killed -9",
            engine,
            kill["qos1_stream_received"],
            "count",
            better="higher",
            note=f"of 400, {kill['qos1_stream_acked']} acked",
        )
        survived = int(str(kill["retained_on_survivor"]).split("/")[0])
        add(
            f"retained states on a survivor of a kill -9, of {n:,}",
            engine,
            survived,
            "count",
            better="higher",
            headline=engine == "nats",
        )
        add("killed node restarted", engine, kill["node_restart_s"], "s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--engines", default="nats,rabbitmq")
    parser.add_argument(
        "--device-qos",
        type=int,
        choices=(0, 1),
        default=1,
        help="QoS of the device clients' desired subscriptions (0: as agents on NATS run)",
    )
    add_json_argument(parser)
    args = parser.parse_args()
    DEVICE_QOS[0] = 0 if args.device_qos == 0 else 1
    results = []
    for name in args.engines.split(","):
        if name == "rabbitmq" and not (RABBIT_BIN / "rabbitmq-server").exists():
            print("rabbitmq: not installed, skipped")
            continue
        print(f"{name}: three nodes, {args.devices} devices ...", flush=True)
        result = run_engine(name, args.devices)
        print(json.dumps(result), flush=True)
        results.append(result)
    if results:
        print(table(results))
    figures = Results("broker_cluster")
    record(figures, results)
    figures.write(args.json)


if __name__ == "__main__":
    main()
