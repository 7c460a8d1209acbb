"""How fast the control plane's MQTT reader takes in messages while another thread of its
process computes (rollout gates over a large stage, an ingest batch), by thread switch
interval.

paho reads each packet with three or four ``recv`` calls (the fixed header byte by byte)
and answers a QoS 1 message with a ``send``; each call lets go of the GIL, and while a
thread is computing in Python, taking it back waits for that thread's switch interval
(``sys.getswitchinterval()``, 5 ms by default). A real mosquitto, a paho publisher in
another process sending N QoS 1 messages of 600 bytes (a state report's size); here an
aiomqtt subscriber as the control plane's bridge holds it, alone and beside a thread in a
pure-Python loop, with the default interval and with the control plane's.

    .venv/bin/python benchmarks/gil_reader.py [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's packages, whatever the working directory

import aiomqtt  # noqa: E402
from results import Results, add_json_argument  # noqa: E402

from control_plane.app import SWITCH_INTERVAL_SECONDS  # noqa: E402
from shared.broker_address import CONTROL_PLANE_USER  # noqa: E402
from simulator.broker import MosquittoBroker  # noqa: E402

TOPIC = "edgefleet/v1/devices/bench/state"  # the control plane's account may use it
PASSWORD = "bench-secret"  # a throw-away broker's account
PUBLISHER = """
import sys, paho.mqtt.client as mqtt
port, n, user, password, topic = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.username_pw_set(user, password)
c.max_inflight_messages_set(200)
c.connect("127.0.0.1", port)
c.loop_start()
infos = [c.publish(topic, b"x" * 600, qos=1) for _ in range(n)]
for info in infos:
    info.wait_for_publish(120)
c.disconnect()
c.loop_stop()
"""


def compute(stop: threading.Event, done: list[int]) -> None:
    """Pure Python, as gates folding 100,000 pairs are: never lets go of the GIL itself.
    Counts its rounds in ``done``."""
    total = 0
    while not stop.is_set():
        for i in range(10_000):
            total += i * i
        done[0] += 1


def compute_alone(seconds: float) -> float:
    """Rounds per second of ``compute`` with nothing beside it."""
    stop, done = threading.Event(), [0]
    worker = threading.Thread(target=compute, args=(stop, done))
    worker.start()
    time.sleep(seconds)
    stop.set()
    worker.join()
    return done[0] / seconds


async def receive(port: int, messages: int, busy: bool) -> tuple[float, float]:
    """Messages per second taken in by an aiomqtt subscriber (QoS 1), with or without a
    computing thread beside it, and that thread's rounds per second."""
    stop, done = threading.Event(), [0]
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        username=CONTROL_PLANE_USER,
        password=PASSWORD,
        max_queued_incoming_messages=None,
    ) as client:
        await client.subscribe(TOPIC, qos=1)
        worker = threading.Thread(target=compute, args=(stop, done), daemon=True)
        if busy:
            worker.start()
        args = [str(port), str(messages), CONTROL_PLANE_USER, PASSWORD, TOPIC]
        publisher = await asyncio.create_subprocess_exec(sys.executable, "-c", PUBLISHER, *args)
        began, got = 0.0, 0
        async for _ in client.messages:
            if got == 0:
                began = time.perf_counter()
            got += 1
            if got == messages:
                break
        elapsed = time.perf_counter() - began
        stop.set()
        if busy:
            worker.join()
        await publisher.wait()
    return (messages - 1) / elapsed, done[0] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    add_json_argument(parser)
    args = parser.parse_args()
    results = Results("gil_reader")
    default = sys.getswitchinterval()
    with tempfile.TemporaryDirectory(prefix="edgefleet-gil-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker")
        broker.add_control_plane_user(PASSWORD)
        broker.start()
        try:
            print(
                f"{'switch interval':>16} {'reader alone':>14} {'beside a computing thread':>27}"
                f" {'the thread: share of its rounds alone':>38}"
            )
            for interval in sorted({default, 0.001, SWITCH_INTERVAL_SECONDS, 0.0001}, reverse=True):
                sys.setswitchinterval(interval)
                rounds = compute_alone(3.0)
                alone, _ = asyncio.run(receive(broker.cp_port, args.messages, busy=False))
                busy, beside = asyncio.run(receive(broker.cp_port, args.messages, busy=True))
                print(
                    f"{interval * 1000:>13.1f} ms {alone:>10,.0f} /s {busy:>16,.0f} /s"
                    f" ({busy / alone:.2f} of alone) {beside / rounds:>37.2f}",
                    flush=True,
                )
                group = f"QoS 1 reader, switch interval {interval * 1000:g} ms"
                reader = results.add(group, "reader alone", alone, "msg/s", better="higher")
                results.add(
                    group,
                    "beside a computing thread",
                    busy,
                    "msg/s",
                    better="higher",
                    baseline=reader,
                    headline=interval in (default, SWITCH_INTERVAL_SECONDS),
                    note=f"the thread kept {beside / rounds:.0%} of its rounds",
                )
        finally:
            sys.setswitchinterval(default)
            broker.stop()
    results.write(args.json)


if __name__ == "__main__":
    main()
