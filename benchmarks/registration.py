"""Registering devices: one `POST /devices` each against one `POST /devices` with the list,
in the same run.

A real `edgefleet server` (SQLite), each way on a fresh one: without broker accounts (what
the control plane itself costs), then with a private mosquitto and its dynamic-security
plugin, so every registration also makes the device's broker account (a role and a client)
as the shipped default does; the last device's token must then connect. Reports devices
registered per second each way and the ratio.

    .venv/bin/python benchmarks/registration.py [--devices 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's packages, whatever the working directory

from results import Results, add_json_argument  # noqa: E402

from simulator.broker import MosquittoBroker, connack_code  # noqa: E402
from simulator.rig.agents import CP_PASSWORD  # noqa: E402
from simulator.rig.server import start_server, stop_server  # noqa: E402


def register(devices: int, listed: bool, dynsec: bool) -> float:
    """Devices per second registered on a fresh control plane (and broker)."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-registration-") as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "broker", auth="dynsec") if dynsec else None
        env = {}
        if broker is not None:
            broker.add_control_plane_user(CP_PASSWORD)
            broker.start()
            env = {"EDGEFLEET_MQTT_URL": broker.control_plane_url(CP_PASSWORD)}
        server = start_server(root / "cp", env=env)
        try:
            with server.client() as api:
                began = time.perf_counter()
                if listed:
                    body = [{"id": f"dev-{i:06d}"} for i in range(devices)]
                    answer = api.post("/devices", json=body, timeout=1800)
                    answer.raise_for_status()
                    last = answer.json()[-1]
                else:
                    for i in range(devices):
                        answer = api.post("/devices", json={"id": f"dev-{i:06d}"})
                        answer.raise_for_status()
                    last = answer.json()
                spent = time.perf_counter() - began
            if broker is not None:
                device_id = last["device"]["id"]
                code = connack_code(
                    broker.host, broker.port, device_id, last["token"], client_id=device_id
                )
                assert code == 0, f"the last device's token does not connect ({code})"
        finally:
            stop_server(server)
            if broker is not None:
                broker.stop()
    return devices / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    add_json_argument(parser)
    args = parser.parse_args()
    results = Results("registration")
    print(f"{args.devices} devices, SQLite, each way on a fresh control plane and broker")
    print(f"{'broker accounts':<34} {'one POST each':>15} {'one POST, a list':>18}   ratio")
    for dynsec, name in ((False, "none (manual)"), (True, "dynsec (the default)")):
        one = register(args.devices, listed=False, dynsec=dynsec)
        many = register(args.devices, listed=True, dynsec=dynsec)
        print(f"{name:<34} {one:>10.0f} /s {many:>13.0f} /s   × {many / one:.1f}")
        group = f"register {args.devices:,} devices, broker accounts {name}"
        each = results.add(group, "one POST each", one, "/s", better="higher")
        results.add(
            group, "one POST, a list", many, "/s", better="higher", baseline=each, headline=dynsec
        )
    results.write(args.json)


if __name__ == "__main__":
    main()
