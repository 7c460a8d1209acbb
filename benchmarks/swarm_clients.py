"""Which MQTT client the swarm uses: N device sessions in this process against a private
mosquitto (password file, as for big fleets), aiomqtt (paho driven from asyncio, what the
agent uses) against the swarm's own codec (``simulator.swarm.codec``).

For each: connect + subscribe every session (CONNACK awaited); one retained 5 KiB message
per session published beforehand and delivered on subscribe (the desired state's path);
one 1 KiB QoS 1 publish per session (a state report); then 10 s idle. Wall time, this
process's CPU seconds and RSS growth per session, and idle CPU (% of a core).

    .venv/bin/python benchmarks/swarm_clients.py [--sizes 1000,5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiomqtt  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from results import Figure, Results, add_json_argument  # noqa: E402

from shared.broker_address import CONTROL_PLANE_USER  # noqa: E402
from simulator.broker import MosquittoBroker  # noqa: E402
from simulator.rig.agents import CP_PASSWORD  # noqa: E402
from simulator.rig.procs import proc_cpu_seconds, proc_rss_mib  # noqa: E402
from simulator.swarm.codec import MqttSession, connect_packet  # noqa: E402
from simulator.swarm.runner import raise_fd_limit  # noqa: E402

IDLE_SECONDS = 10
RETAINED = b"x" * 5 * 1024
REPORT = b"y" * 1024
PASSWORD = "pw"


def topic(i: int, channel: str) -> str:
    return f"edgefleet/v1/devices/dev-{i:06d}/{channel}"


def retain_all(broker: MosquittoBroker, n: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-cp")
    client.username_pw_set(CONTROL_PLANE_USER, CP_PASSWORD)
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.cp_port)
    client.loop_start()
    infos = [client.publish(topic(i, "desired"), RETAINED, qos=1, retain=True) for i in range(n)]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


async def run_aiomqtt(broker: MosquittoBroker, n: int, done: asyncio.Event) -> None:
    received, published = [0], [0]
    all_in = asyncio.Event()

    async def session(i: int) -> None:
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            username=f"dev-{i:06d}",
            password=PASSWORD,
            identifier=f"dev-{i:06d}",
            keepalive=60,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        ) as client:
            await client.subscribe(topic(i, "desired"), qos=1)
            async for _ in client.messages:
                break
            await client.publish(topic(i, "state"), REPORT, qos=1, retain=True)
            received[0] += 1
            published[0] += 1
            if published[0] == n:
                all_in.set()
            await done.wait()

    tasks = [asyncio.create_task(session(i)) for i in range(n)]
    await all_in.wait()
    await done.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _Handler:
    def __init__(self, i: int, counts: list[int], all_in: asyncio.Event, n: int) -> None:
        self.i, self.counts, self.all_in, self.n = i, counts, all_in, n
        self.session: MqttSession | None = None
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_connack(self, code: int) -> None:
        assert self.session is not None
        self.session.subscribe([topic(self.i, "desired").encode()])
        self.connack.set_result(code)

    def on_message(self, topic_: str, payload: bytes) -> None:
        assert self.session is not None
        self.session.publish(topic(self.i, "state").encode(), REPORT, retain=True)
        self.counts[0] += 1
        if self.counts[0] == self.n:
            self.all_in.set()

    def on_lost(self, exc: Exception | None) -> None:
        pass

    def on_puback(self, packet_id: int) -> None:
        pass


async def run_codec(broker: MosquittoBroker, n: int, done: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    counts, all_in = [0], asyncio.Event()
    limit = asyncio.Semaphore(500)
    handlers = [_Handler(i, counts, all_in, n) for i in range(n)]

    async def connect(h: _Handler) -> None:
        async with limit:
            session = MqttSession(h)
            h.session = session
            await loop.create_connection(lambda: session, broker.host, broker.port)
            will = topic(h.i, "online").encode()
            session.write(
                connect_packet(f"dev-{h.i:06d}", f"dev-{h.i:06d}", PASSWORD, 60, will, b"0")
            )
            await h.connack

    await asyncio.gather(*(connect(h) for h in handlers))
    await all_in.wait()
    await done.wait()
    for h in handlers:
        if h.session is not None:
            h.session.close(disconnect=True)


async def measure(
    run: Callable[[MosquittoBroker, int, asyncio.Event], Coroutine[Any, Any, None]],
    broker: MosquittoBroker,
    n: int,
) -> dict[str, float]:
    pid = os.getpid()
    rss0, cpu0, began = proc_rss_mib(pid), proc_cpu_seconds(pid), time.perf_counter()
    done = asyncio.Event()
    task = asyncio.create_task(run(broker, n, done))
    # All delivered and answered: the first phase is over when every session has published.
    while True:
        await asyncio.sleep(0.05)
        if task.done():
            task.result()
        if _all_reported(broker, n):
            break
    wall, cpu, rss = time.perf_counter() - began, proc_cpu_seconds(pid) - cpu0, proc_rss_mib(pid)
    cpu1, idle0 = proc_cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(IDLE_SECONDS)
    idle = (proc_cpu_seconds(pid) - cpu1) / (time.perf_counter() - idle0)
    done.set()
    await task
    return {"wall": wall, "cpu": cpu, "kib": (rss - rss0) * 1024 / n, "idle": idle}


_reported: dict[int, set[str]] = {}


def _all_reported(broker: MosquittoBroker, n: int) -> bool:
    return len(_reported.get(id(broker), set())) >= n


def watch_states(broker: MosquittoBroker) -> mqtt.Client:
    seen = _reported.setdefault(id(broker), set())
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-watch")
    client.username_pw_set(CONTROL_PLANE_USER, CP_PASSWORD)
    client.on_message = lambda _c, _u, m: seen.add(m.topic)
    client.connect(broker.host, broker.cp_port)
    client.subscribe("edgefleet/v1/devices/+/state", qos=0)
    client.loop_start()
    return client


def one(name: str, n: int) -> dict[str, float]:
    runs = {"aiomqtt": run_aiomqtt, "codec": run_codec}
    with tempfile.TemporaryDirectory(prefix="edgefleet-clients-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker")
        broker.add_control_plane_user(CP_PASSWORD)
        broker.start()
        try:
            broker.add_users({f"dev-{i:06d}": PASSWORD for i in range(n)})
            retain_all(broker, n)
            watch = watch_states(broker)
            result = asyncio.run(measure(runs[name], broker, n))
            watch.loop_stop()
            watch.disconnect()
        finally:
            broker.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--one", nargs=2, metavar=("CLIENT", "N"), help=argparse.SUPPRESS)
    add_json_argument(parser)
    args = parser.parse_args()
    results = Results("swarm_clients")
    sizes = [int(s) for s in args.sizes.split(",")]
    raise_fd_limit(200_000)
    if args.one:  # one measurement in a fresh process: no memory left over from another
        r = one(args.one[0], int(args.one[1]))
        print(" ".join(f"{k}={v}" for k, v in r.items()))
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"RLIMIT_NOFILE {soft}; connect + subscribe + retained 5 KiB in + 1 KiB QoS 1 out")
    print(
        f"{'client':<9}{'sessions':>9}{'wall s':>8}{'CPU s':>7}{'CPU ms/session':>15}"
        f"{'KiB/session':>12}{'idle CPU':>9}"
    )
    for n in sizes:
        aiomqtt_figures: dict[str, Figure] = {}
        for name in ("aiomqtt", "codec"):
            out = subprocess.run(
                [sys.executable, __file__, "--one", name, str(n)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()[-4:]
            r = {k: float(v) for k, v in (item.split("=") for item in out)}
            print(
                f"{name:<9}{n:>9}{r['wall']:>8.2f}{r['cpu']:>7.2f}{r['cpu'] / n * 1000:>15.3f}"
                f"{r['kib']:>12.1f}{r['idle'] * 100:>8.1f}%"
            )
            for what, value, unit in (
                ("CPU per session", r["cpu"] / n * 1000, "ms"),
                ("memory per session", r["kib"], "KiB"),
                ("idle CPU", r["idle"] * 100, "%"),
            ):
                figure = results.add(
                    f"{n:,} sessions, {what}",
                    name,
                    value,
                    unit,
                    baseline=aiomqtt_figures.get(what),
                    headline=name == "codec" and what == "CPU per session" and n == sizes[-1],
                )
                aiomqtt_figures.setdefault(what, figure)
    results.write(args.json)


if __name__ == "__main__":
    main()
