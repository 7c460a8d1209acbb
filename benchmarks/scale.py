"""Control-plane cost per device at fleet scale (first part of issue 17's scale benchmark).

A real `edgefleet server` (SQLite) with its MQTT bridge on a private mosquitto (accounts
kept by hand: no dynsec cost in the figures); N devices registered in one `POST /devices`;
a model trained through the API. Then one all-at-once rollout to all N: the wall time from
`POST /rollouts` until the control plane has signed and stored every device's desired state
(`assigned == N`) and until the broker has delivered all N (a subscriber on the desired
topics counts them), and the server's CPU seconds until then, per device. No device
answers, so nothing else costs anything; the stage passes when its install timeout runs
out and the version becomes the default. Then the server's CPU share while idle for 10 s
with that default (each rollout tick looks for devices behind it). Side by side for each
size; `--profile` runs py-spy on the server during the largest rollout.

Then, with `--swarm-sizes`, the same rollouts answered: a protocol-level swarm
(`simulator/swarm`: real MQTT sessions on the same kind of broker, every desired state
verified with the agent's checks, the agent's state reports and telemetry windows, but no
download and no model run: the artifact counts as cached) of each size. From `POST
/rollouts` until the last swarm device accepted its desired state (desired states signed,
published and delivered per second), until every swarm device has the version active,
until the control plane holds it in every device's state, and until `succeeded`; all at
once, then canary with zero soak; CPU seconds of the broker, the control plane and the
swarm over that time, and their RSS. Every such figure is labelled "swarm".

With ``--ingest-sizes``, telemetry at scale: a swarm on control-plane processes sharing
one PostgreSQL and splitting telemetry through a shared subscription. After an all-at-once
rollout (one process leading), windows of each ``--ingest-windows`` length (60 s: a
fleet's rate; shorter: past what one process stores) into each ``--ingest-processes``
count in turn: windows made, stored and refused as duplicates per second, the backlog,
and each process's, PostgreSQL's, the brokers' and the swarm's CPU.

    .venv/bin/python benchmarks/scale.py [--sizes 1000,10000] [--profile out.svg]
    .venv/bin/python benchmarks/scale.py --sizes "" --swarm-sizes 10000,100000
    .venv/bin/python benchmarks/scale.py --sizes "" --ingest-sizes 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's packages, whatever the working directory

import paho.mqtt.client as mqtt  # noqa: E402
from fleet import postgres_database  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from results import Results, add_json_argument  # noqa: E402

from shared.broker_address import CONTROL_PLANE_USER  # noqa: E402
from shared.topics import Channel, Topics  # noqa: E402
from shared.trust import TrustStore  # noqa: E402
from simulator.broker import MosquittoBroker  # noqa: E402
from simulator.data import write_sensor_csv  # noqa: E402
from simulator.rig.agents import (  # noqa: E402
    CP_PASSWORD,
    Publisher,
    sign_desired,
    trusted_keys,
)
from simulator.rig.fleet import OPEN_GATES  # noqa: E402
from simulator.rig.models import make_model  # noqa: E402
from simulator.rig.procs import proc_cpu_seconds  # noqa: E402
from simulator.rig.server import run_cli, start_server, stop_server  # noqa: E402
from simulator.swarm.rig import FD_HEADROOM, SwarmRig, edge_brokers_for  # noqa: E402
from simulator.swarm.runner import Swarm, raise_fd_limit  # noqa: E402
from simulator.swarm.scenario import (  # noqa: E402
    ALL_AT_ONCE,
    CANARY,
    IngestFigures,
    RolloutFigures,
    describe,
    measure_ingest,
    measure_rollout,
    swarm_rollouts,
)
from simulator.swarm.settings import SwarmSettings  # noqa: E402

IDLE_SECONDS = 10
PLANS = {"all-at-once": ALL_AT_ONCE, "canary": CANARY}
SETTLE_SECONDS = 300  # swarm: after every device installed, for reports and "succeeded"


class DesiredWatch:
    """Counts the devices whose desired state the broker has delivered (as the control
    plane's user, on the devices' desired topics)."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.devices: set[str] = set()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scale-watch")
        self.client.username_pw_set(CONTROL_PLANE_USER, CP_PASSWORD)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.cp_port)
        self.client.subscribe(Topics().all_devices(Channel.DESIRED), qos=0)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        with self._lock:
            self.devices.add(message.topic.split("/")[-2])

    def count(self) -> int:
        with self._lock:
            return len(self.devices)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def rollout_cost(devices: int, profile: Path | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-scale-") as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "broker")
        broker.add_control_plane_user(CP_PASSWORD)
        broker.start()
        server = start_server(root / "cp", env=broker.control_plane_env(CP_PASSWORD))
        try:
            csv = write_sensor_csv(root / "s.csv", 300, seed=1)
            cli_env = server.env
            run_cli("datasets", "upload", str(csv), "--name", "s", "--label", "fault", env=cli_env)
            run_cli(
                "train", "--model", "fault", "--dataset", "1", "--algorithm", "logreg", env=cli_env
            )
            with server.client() as api:
                body = [
                    {"id": f"dev-{i:06d}", "labels": {"site": str(i % 7)}} for i in range(devices)
                ]
                api.post("/devices", json=body, timeout=600).raise_for_status()
                spy = None
                if profile is not None:
                    spy = subprocess.Popen(
                        [
                            str(Path(sys.executable).parent / "py-spy"),
                            "record",
                            "-o",
                            str(profile),
                            "-p",
                            str(server.process.pid),
                            "--nonblocking",
                            "--format",
                            "raw" if profile.suffix == ".txt" else "flamegraph",
                            "-r",
                            "200",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    time.sleep(1)
                watch = DesiredWatch(broker)
                cpu0, began = proc_cpu_seconds(server.process.pid), time.perf_counter()
                # Nobody installs: the stage passes when its install timeout runs out (no
                # install required), so the rollout ends and its version becomes the default.
                gates = {**OPEN_GATES, "install_timeout_seconds": 2, "min_install_success": 0}
                plan = {"preset": "all-at-once", "soak_seconds": 0, "gates": gates}
                created = api.post(
                    "/rollouts", json={"model": "fault", "version": "1", "plan": plan}
                )
                created.raise_for_status()
                path = f"/rollouts/{created.json()['id']}"
                while api.get(path).json()["assigned"] < devices:
                    time.sleep(0.05)
                assigned = time.perf_counter() - began
                while watch.count() < devices:
                    time.sleep(0.01)
                wall = time.perf_counter() - began
                cpu = proc_cpu_seconds(server.process.pid) - cpu0
                watch.close()
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(60)
                while api.get(path).json()["status"] != "succeeded":
                    time.sleep(0.2)
                # Idle with a default: each rollout tick looks for devices behind it.
                time.sleep(2)
                cpu0, began = proc_cpu_seconds(server.process.pid), time.perf_counter()
                time.sleep(IDLE_SECONDS)
                idle = (proc_cpu_seconds(server.process.pid) - cpu0) / (time.perf_counter() - began)
        finally:
            stop_server(server)
            broker.stop()
    return {
        "assigned_s": assigned,
        "wall_s": wall,
        "cpu_s": cpu,
        "per_device_ms": cpu / devices * 1000,
        "idle": idle,
    }


def record_cost(results: Results, n: int, r: dict[str, float], headline: bool) -> None:
    """The rollout's times; its CPU per device against the first size's, in this run."""
    group = f"rollout to {n:,} devices, no device answering"
    results.add(group, "→ signed and stored for all", r["assigned_s"], "s")
    results.add(group, "→ delivered to all", r["wall_s"], "s")
    results.add(group, "server CPU", r["cpu_s"], "s")
    results.add(group, "server idle CPU after", r["idle"] * 100, "%")
    group = "rollout, no device answering: server CPU per device"
    first = next((f for f in results.figures if f.group == group), None)
    name = f"{n:,} devices"
    per_device = r["per_device_ms"]
    results.add(group, name, per_device, "ms", baseline=first, headline=headline)


def swarm_figures(
    devices: int,
    window_seconds: float,
    profile: Path | None,
    broker: dict[str, str],
    plans: tuple[dict[str, Any], ...],
    results: Results,
    edges: int | None = None,
) -> None:
    """Both rollouts on a swarm of ``devices``; prints one line per plan. Past what one
    broker holds here (a descriptor per session, RLIMIT_NOFILE per process), the devices
    are on edge brokers bridged to the control plane's, one swarm process per edge (or on
    ``edges`` of them, when given)."""
    edges = edge_brokers_for(devices) if edges is None else max(edges, edge_brokers_for(devices))
    spy: list[subprocess.Popen[bytes]] = []

    def ready(rig: SwarmRig) -> None:
        where = f" on {edges} edge brokers bridged to the control plane's" if edges else ""
        print(
            f"{devices:>8} swarm{where}: registered in {rig.register_seconds:.1f} s, connected"
            f" in {rig.connect_seconds:.1f} s; RSS MiB broker {rig.usage().broker_rss:.0f}, "
            f"swarm {rig.usage().swarm_rss:.0f}",
            flush=True,
        )
        if profile is not None:
            spy.append(py_spy(profile, os.getpid(), native=False))

    def rollout_done(figures: RolloutFigures) -> None:
        print_swarm(figures)
        record_swarm(results, figures)

    with tempfile.TemporaryDirectory(prefix="edgefleet-swarm-") as tmp:
        figures = asyncio.run(
            swarm_rollouts(
                Path(tmp),
                devices,
                timeout=3600,
                settle=SETTLE_SECONDS,
                window_seconds=window_seconds,
                on_ready=ready,
                on_rollout=rollout_done,
                broker_options=broker,
                plans=plans,
                edge_brokers=edges,
            )
        )
    for process in spy:
        process.send_signal(2)
        process.wait(60)
    del figures


def swarm_ingest(
    devices: int,
    windows: list[float],
    processes: list[int],
    seconds: float,
    broker: dict[str, str],
    results: Results,
    edges: int | None = None,
) -> None:
    """Telemetry from a swarm of ``devices`` into control-plane processes on PostgreSQL
    that split it through a shared subscription: the swarm takes a version all at once
    (one process leading; its line says how long), then at each window length (the
    offered load: 60 s is a fleet's rate, shorter ones go past what one process stores)
    and each number of processes, what was stored per second over ``seconds``."""
    edges = edge_brokers_for(devices) if edges is None else max(edges, edge_brokers_for(devices))
    with postgres_database() as url:
        if url is None:
            print(f"{devices:>8} swarm ingest: not run (PostgreSQL not reachable)")
            return
        with tempfile.TemporaryDirectory(prefix="edgefleet-ingest-") as tmp:
            asyncio.run(
                _swarm_ingest(
                    Path(tmp), devices, url, windows, processes, seconds, broker, edges, results
                )
            )


async def _swarm_ingest(
    workdir: Path,
    devices: int,
    url: str,
    windows: list[float],
    processes: list[int],
    seconds: float,
    broker: dict[str, str],
    edges: int,
    results: Results,
) -> None:
    async with SwarmRig(
        workdir,
        devices,
        swarm_options={"window_seconds": windows[0]},
        server_env={"EDGEFLEET_DATABASE_URL": url, "EDGEFLEET_MQTT_SHARED_GROUP": "ingest"},
        broker_options=broker,
        edge_brokers=edges,
    ) as rig:
        print(
            f"{devices:>8} swarm on PostgreSQL{f' and {edges} edge brokers' if edges else ''}:"
            f" registered in {rig.register_seconds:.1f} s, connected in"
            f" {rig.connect_seconds:.1f} s",
            flush=True,
        )
        version = await rig.train()
        rollout = await measure_rollout(rig, version, ALL_AT_ONCE, 3600, SETTLE_SECONDS)
        print(f"{'':>8} {describe(rollout)}", flush=True)
        print(
            f"{'devices':>8} {'window':>7} {'procs':>5} {'made/s':>8} {'stored/s':>9}"
            f" {'dup/s':>7} {'unacked before → after':>23} {'CP CPU (each)':>15}"
            f" {'PG CPU':>6} {'brk CPU':>7} {'swm CPU':>7} {'desired':>7}  keeps up"
        )
        for window in windows:
            await rig.set_window(window)
            for count in processes:
                await rig.run_control_planes(count)
                figures = await measure_ingest(rig, window, seconds)
                print_ingest(figures)
                record_ingest(results, figures)


def print_ingest(f: IngestFigures) -> None:
    cpu = "+".join(f"{c:.2f}" for c in f.control_plane_cpu)
    print(
        f"{f.devices:>8} {f.window_seconds:>6.0f}s {f.processes:>5} {f.made_per_second:>8,.0f}"
        f" {sum(f.stored_per_second):>9,.0f} {sum(f.duplicates_per_second):>7,.0f}"
        f" {f.unacked_before:>11,} → {f.unacked_after:<9,} {cpu:>15} {f.database_cpu:>6.2f}"
        f" {f.broker_cpu:>7.2f} {f.swarm_cpu:>7.2f} {f.accepted:>7,}"
        f"  {'yes' if f.keeps_up else 'no'}",
        flush=True,
    )


def swarm_alone(devices: int, results: Results) -> None:
    """The swarm's own cost, no control plane: N desired states signed beforehand (as the
    control plane signs them) and retained on the broker, then the swarm connects; from
    its first CONNECT until every device has verified, installed and reported, with the
    swarm's CPU seconds (sessions, verification, state reports; no telemetry)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < devices + FD_HEADROOM:
        print(f"{devices:>8} swarm alone: not run (RLIMIT_NOFILE capped at {hard:,})")
        return
    raise_fd_limit(devices + FD_HEADROOM)
    with tempfile.TemporaryDirectory(prefix="edgefleet-swarm-alone-") as tmp:
        root = Path(tmp)
        model_key, deploy_key, trust_path = trusted_keys(root)
        manifest, _ = make_model(model_key)
        broker = MosquittoBroker(root / "broker")
        broker.add_control_plane_user(CP_PASSWORD)
        broker.start()
        try:
            ids = [f"swarm-{i:06d}" for i in range(devices)]
            broker.add_users(dict.fromkeys(ids, "token"), timeout=600)
            publisher = Publisher(broker)
            infos: list[mqtt.MQTTMessageInfo] = []
            for device_id in ids:
                desired = sign_desired(deploy_key, device_id, 1, [manifest])
                info = publisher.client.publish(
                    Topics().device(device_id, Channel.DESIRED),
                    desired.model_dump_json(),
                    qos=1,
                    retain=True,
                )
                infos.append(info)
            for info in infos:
                info.wait_for_publish(60)
            publisher.close()
            trust = TrustStore.model_validate_json(trust_path.read_text())

            async def run() -> tuple[float, float]:
                swarm = Swarm(trust, SwarmSettings(broker.host, broker.port, window_seconds=None))
                for device_id in ids:
                    swarm.add(device_id, "token", {})
                cpu0, began = proc_cpu_seconds(os.getpid()), time.monotonic()
                await swarm.start()
                await swarm.wait_serving(manifest.name, manifest.version, 3600)
                wall, cpu = time.monotonic() - began, proc_cpu_seconds(os.getpid()) - cpu0
                await swarm.stop()
                return wall, cpu

            wall, cpu = asyncio.run(run())
        finally:
            broker.stop(60)
    print(
        f"{devices:>8} swarm alone: connect + verify + install + report for all in {wall:.1f} s,"
        f" swarm CPU {cpu:.1f} s = {cpu / devices * 1000:.2f} ms per device"
        f" ({devices / cpu:,.0f} devices per CPU-second)",
        flush=True,
    )
    group = f"swarm alone, {devices:,} devices"
    results.add(group, "connect + verify + install + report", wall, "s")
    results.add(group, "swarm CPU per device", cpu / devices * 1000, "ms")


def record_swarm(results: Results, f: RolloutFigures) -> None:
    """A swarm rollout's times from POST /rollouts, and the CPU each party spent."""
    group = f"swarm {f.plan}, {f.devices:,} devices"
    results.add(group, "→ last desired state accepted", f.desired_s, "s")
    results.add(group, "→ every swarm device on the version", f.installed_s, "s")
    if f.reported_s is not None:
        results.add(group, "→ the control plane holds it for all", f.reported_s, "s")
    if f.succeeded_s is not None:
        results.add(group, "→ succeeded", f.succeeded_s, "s", headline=f.plan == "all-at-once")
    results.add(group, "control-plane CPU", f.usage.control_plane_cpu, "s")
    results.add(group, "broker CPU", f.usage.broker_cpu, "s")
    results.add(group, "swarm CPU", f.usage.swarm_cpu, "s")


def record_ingest(results: Results, f: IngestFigures) -> None:
    """Windows stored per second against those made (the offered load)."""
    group = (
        f"swarm ingest, {f.devices:,} devices, {f.window_seconds:g} s windows, "
        f"{f.processes} process{'es' if f.processes > 1 else ''}"
    )
    made = results.add(group, "windows made", f.made_per_second, "/s", better="higher")
    results.add(
        group,
        "windows stored",
        sum(f.stored_per_second),
        "/s",
        better="higher",
        baseline=made,
        note="keeps up" if f.keeps_up else "falls behind",
    )
    results.add(group, "control-plane CPU", sum(f.control_plane_cpu), "s/s")


def print_swarm(f: RolloutFigures) -> None:
    u = f.usage

    def secs(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f}s"

    print(
        f"{f.devices:>8} swarm {f.plan:<12} {f.desired_s:>8.1f}s {f.desired_per_second:>9,.0f}"
        f" {f.installed_s:>9.1f}s {secs(f.reported_s):>10} {secs(f.succeeded_s):>10}"
        f" {u.broker_cpu:>7.1f} {u.control_plane_cpu:>7.1f} {u.swarm_cpu:>7.1f}"
        f" {u.broker_rss:>7.0f} {u.control_plane_rss:>7.0f} {u.swarm_rss:>7.0f}"
        f" {f.broker_drops:>6}",
        flush=True,
    )


def py_spy(out: Path, pid: int, *, native: bool) -> subprocess.Popen[bytes]:
    args = [str(Path(sys.executable).parent / "py-spy"), "record", "-o", str(out), "-p", str(pid)]
    args += ["--nonblocking", "-r", "100"]
    args += ["--format", "raw" if out.suffix == ".txt" else "flamegraph"]
    if native:
        args.append("--native")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help='"" skips this part')
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--swarm-sizes", default="", help="e.g. 10000,100000")
    parser.add_argument(
        "--swarm-window", type=float, default=60.0, help="swarm telemetry window (s)"
    )
    parser.add_argument(
        "--profile-swarm", type=Path, default=None, help="py-spy the swarm (largest size)"
    )
    parser.add_argument("--swarm-plans", default="all-at-once,canary")
    parser.add_argument(
        "--swarm-install-timeout", type=int, default=None, help="the install gate's bound (s)"
    )
    parser.add_argument(
        "--swarm-alone", default="", help="swarm sizes to measure without a control plane"
    )
    parser.add_argument(
        "--broker-max-queued",
        type=int,
        default=None,
        help="swarm: mosquitto's max_queued_messages instead of deploy/'s (1,000,000)",
    )
    parser.add_argument(
        "--broker-autosave",
        type=int,
        default=None,
        help="swarm: mosquitto's autosave_interval (s) instead of deploy/'s 300 (each save "
        "rewrites the whole database: ~260 MB at 100,000 devices)",
    )
    parser.add_argument(
        "--ingest-sizes",
        default="",
        help="swarm sizes whose telemetry ingest is measured on PostgreSQL (e.g. 100000)",
    )
    parser.add_argument(
        "--ingest-windows",
        default="60,10",
        help="ingest: the swarm's telemetry windows (s), a fleet's rate and past it",
    )
    parser.add_argument(
        "--ingest-processes", default="1,2", help="ingest: control-plane processes, in turn"
    )
    parser.add_argument(
        "--ingest-seconds", type=float, default=120.0, help="ingest: each measurement's span"
    )
    parser.add_argument(
        "--edge-brokers",
        type=int,
        default=None,
        help="swarm: on this many edge brokers even where one broker would do",
    )
    add_json_argument(parser)
    args = parser.parse_args()
    results = Results("scale")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if sizes:
        print("all-at-once rollout, no device answering; server CPU from /proc")
        print(
            f"{'devices':>8} {'signed':>9} {'published':>10} {'server CPU':>11}"
            f" {'per device':>11} {'published/s':>12} {'idle CPU after':>15}"
        )
    for n in sizes:
        r = rollout_cost(n, args.profile if n == sizes[-1] else None)
        print(
            f"{n:>8} {r['assigned_s']:>8.2f}s {r['wall_s']:>9.2f}s {r['cpu_s']:>10.2f}s"
            f" {r['per_device_ms']:>9.2f}ms {n / r['wall_s']:>12.0f} {r['idle'] * 100:>14.1f}%"
        )
        record_cost(results, n, r, headline=n == sizes[-1])
    gates = {}
    if args.swarm_install_timeout is not None:
        gates["install_timeout_seconds"] = args.swarm_install_timeout
    plans = tuple({**PLANS[name], "gates": gates} for name in args.swarm_plans.split(",") if name)
    for n in (int(s) for s in args.swarm_alone.split(",") if s):
        swarm_alone(n, results)
    swarm_sizes = [int(s) for s in args.swarm_sizes.split(",") if s]
    broker = {}
    if args.broker_max_queued is not None:
        broker["max_queued_messages"] = str(args.broker_max_queued)
    if args.broker_autosave is not None:
        broker["autosave_interval"] = str(args.broker_autosave)
    ingest_sizes = [int(s) for s in args.ingest_sizes.split(",") if s]
    if ingest_sizes:
        print(
            "\nSWARM TELEMETRY INGEST (protocol-level devices) into control-plane processes on"
            " PostgreSQL splitting it\n(shared subscription); per second over"
            f" {args.ingest_seconds:.0f} s: windows made (the offered load), stored, refused"
            " as duplicates (resent);\nCPU seconds per second; desired: desired states the"
            " swarm accepted (again) meanwhile; keeps up: no backlog growing past a window's worth"
        )
    for n in ingest_sizes:
        swarm_ingest(
            n,
            [float(w) for w in args.ingest_windows.split(",")],
            [int(p) for p in args.ingest_processes.split(",")],
            args.ingest_seconds,
            broker,
            results,
            args.edge_brokers,
        )
    if not swarm_sizes:
        results.write(args.json)
        return
    print(
        "\nSWARM (protocol-level devices: desired states verified with the agent's checks, "
        "artifacts counted as cached, no model run)\nfrom POST /rollouts: last desired state "
        "accepted (and per second), every swarm device on the version, the control plane "
        "holding it for all, succeeded (never: not within 300 s more); CPU s over that time,\n"
        "RSS MiB at its end; drops: mosquitto's 'outgoing messages are being dropped' so far"
    )
    print(
        f"{'devices':>8} {'':5} {'plan':<12} {'desired':>9} {'desired/s':>9} {'installed':>10}"
        f" {'reported':>10} {'succeeded':>10} {'brk CPU':>7} {'CP CPU':>7} {'swm CPU':>7}"
        f" {'brk RSS':>7} {'CP RSS':>7} {'swm RSS':>7} {'drops':>6}"
    )
    for n in swarm_sizes:
        profile = args.profile_swarm if n == swarm_sizes[-1] else None
        swarm_figures(n, args.swarm_window, profile, broker, plans, results, args.edge_brokers)
    results.write(args.json)


if __name__ == "__main__":
    main()
