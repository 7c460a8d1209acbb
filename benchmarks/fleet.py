"""Fleet scale: rollout convergence with N real agents in one process, and telemetry ingest.

1. Rollout convergence. A private mosquitto and a real control plane (`edgefleet server` in a
   subprocess, SQLite, rollout tick 0.2 s); one logreg model trained through the REST API in
   two versions. Per fleet size N: N devices registered through the API (one broker reload
   for all of them), N real ``agent.runtime.Agent`` objects in one ``SimulatedFleet`` (one
   event loop, this process), then an all-at-once rollout of v1 and a canary rollout
   (1 device → 10% → 50% → 100%) of v2, both soak 0 with open gates: seconds from
   POST /rollouts until every agent serves the version, and until the rollout reads
   "succeeded"; this process's RSS and file descriptors per agent.
2. Telemetry ingest. ``control_plane.fleet.ingestion.store_batch`` on realistic windows
   (6 features × 10 bins, 4 classes, latency histogram), JSON parse included as the MQTT
   bridge does it: batches of 500 vs one window per call (one transaction each), on SQLite
   and on PostgreSQL when reachable at 127.0.0.1:5432.

    .venv/bin/python benchmarks/fleet.py [--quick] [--sizes 100,1000]

Everything it starts (mosquitto, the server, agents, temp dirs, a throw-away PostgreSQL
database) is stopped and removed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import gc
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Not named after a top-level package: a script's directory comes first on sys.path.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.* (broker, server helpers)

import httpx  # noqa: E402
from results import Figure, Results, add_json_argument  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402

from control_plane.fleet.ingestion import Incoming, store_batch  # noqa: E402
from control_plane.store.db import create_db_engine, migrate  # noqa: E402
from shared.messages import FeatureWindow, ModelWindow, TelemetryWindow  # noqa: E402
from shared.stats import LATENCY_BUCKETS  # noqa: E402
from simulator.broker import MosquittoBroker, find_tool  # noqa: E402
from simulator.data import write_sensor_csv  # noqa: E402
from simulator.fleet import SimulatedFleet, device_settings, raise_fd_limit  # noqa: E402
from simulator.rig.agents import CP_PASSWORD  # noqa: E402
from simulator.rig.procs import proc_cpu_seconds  # noqa: E402
from simulator.rig.server import ServerProcess, start_server  # noqa: E402

MiB = 1024 * 1024
MODEL = "fault"
OPEN_GATES = {"min_requests": 0, "min_devices_reporting": 0}
PLANS: dict[str, dict[str, Any]] = {
    "all-at-once": {"preset": "all-at-once", "soak_seconds": 0, "gates": OPEN_GATES},
    "canary": {"preset": "canary", "soak_seconds": 0, "gates": OPEN_GATES},
}
# Agent settings of the fleet beyond simulator.fleet.device_settings' defaults: a new version
# is committed (phase "serving", what the rollout gates count) 0.2 s after it went active,
# since nothing sends it requests here.
AGENT_OVERRIDES: dict[str, object] = {"probation_seconds": 0.2, "probation_requests": 0}
PG_ADMIN_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
INGEST_BATCH = 500
INGEST_DEVICES = 1000
IDLE_SECONDS = 2.0


# --- measuring --------------------------------------------------------------------------------

_BEGAN = time.perf_counter()


def progress(message: str) -> None:
    """Where the run is, on stderr: the tables on stdout stay clean."""
    print(f"[{time.perf_counter() - _BEGAN:6.1f} s] {message}", file=sys.stderr, flush=True)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def machine_info() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    ram = 0.0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            ram = int(line.split()[1]) / MiB  # kB → GiB
    mosquitto = find_tool("mosquitto")
    version = "?"
    if mosquitto:
        out = subprocess.run([mosquitto, "-h"], capture_output=True, text=True, check=False)
        version = (out.stdout or out.stderr).splitlines()[0].removeprefix("mosquitto version ")
    return (
        f"# {platform.node()}: {cpu}, {os.cpu_count()} CPUs, {ram:.1f} GiB RAM, "
        f"Linux {platform.release()}\n"
        f"# Python {platform.python_version()}, mosquitto {version}, httpx {httpx.__version__}"
    )


class LogTally(logging.Handler):
    """Counts the agents' warnings and errors, and failed download attempts (logged at INFO
    by agent.fetch), keeping one example of each."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self._lock_tally = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            key = f"{record.name} {record.levelname.lower()}"
        elif record.name == "agent.fetch" and "failed" in record.msg:
            key = "download attempt failed"
        else:
            return
        with self._lock_tally:  # worker threads log too
            self.counts[key] += 1
            self.examples.setdefault(key, record.getMessage()[:160])

    def take(self) -> str:
        with self._lock_tally:
            text = "; ".join(
                f"{n} × {k} (e.g. {self.examples[k]!r})" for k, n in sorted(self.counts.items())
            )
            self.counts.clear()
            self.examples.clear()
        return text or "none"


class LoopLag:
    """How late a 50 ms sleep wakes up in the fleet's event loop: the loop all agents share
    is the first thing a big fleet in one process runs short of."""

    TICK = 0.05

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.samples = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.TICK)
            self.samples.append(time.perf_counter() - start - self.TICK)

    async def stop(self) -> str:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        if not self.samples:
            return "-"
        ordered = sorted(self.samples)
        return f"p50 {ordered[len(ordered) // 2] * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"


class ServerLog:
    """Exceptions the control plane logged since the last ``take()``, by class."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def take(self) -> str:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            text = handle.read().decode(errors="replace")
            self.offset = handle.tell()
        counts: Counter[str] = Counter()
        examples: dict[str, str] = {}
        for match in re.finditer(r"^([\w.]+(?:Error|Exception)): (.*)$", text, re.MULTILINE):
            counts[match.group(1)] += 1
            examples.setdefault(match.group(1), match.group(2)[:110])
        return "; ".join(f"{n} × {k} ({examples[k]!r})" for k, n in counts.items()) or "none"


# --- the rig: broker, control plane, two model versions ---------------------------------------


@dataclass
class Rig:
    tmp: Path
    broker: MosquittoBroker
    server: ServerProcess
    api: httpx.Client
    trust: Path
    env: dict[str, str]
    versions: tuple[int, int] = (0, 0)

    def stop_server(self) -> None:
        """SIGTERM, then SIGKILL after 5 s: a stuck control plane does not finish its
        graceful shutdown (uvicorn waits for the requests it holds)."""
        process = self.server.process
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart_server(self) -> float:
        """Stop the control plane and start it again on the same data, port and token."""
        start = time.perf_counter()
        self.stop_server()
        self.server = start_server(self.server.data_dir, env=self.env, restart=self.server)
        return time.perf_counter() - start


@contextlib.contextmanager
def rig() -> Iterator[Rig]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefleet-fleet-")))
        broker = MosquittoBroker(tmp / "broker")
        broker.add_control_plane_user(CP_PASSWORD)
        stack.callback(broker.kill)
        broker.start()
        stack.callback(broker.stop)
        env = {
            **broker.control_plane_env(CP_PASSWORD),
            "EDGEFLEET_ROLLOUT_TICK_SECONDS": "0.2",
        }
        (tmp / "cp").mkdir()
        server = start_server(tmp / "cp", env=env)
        api = stack.enter_context(server.client())
        trust = tmp / "trust.json"
        trust.write_text(ok(api.get("/keys")).text)
        r = Rig(tmp, broker, server, api, trust, env)
        stack.callback(r.stop_server)  # the one running then (see restart_server)
        try:
            yield r
        except BaseException:
            # The temp dir goes with the stack: keep what the services said.
            kept = Path(tempfile.gettempdir()) / f"edgefleet-fleet-{os.getpid()}"
            kept.mkdir()
            shutil.copy(tmp / "cp" / "server.log", kept / "server.log")
            (kept / "mosquitto.log").write_text(broker.log_text())
            print(f"--- failed; the services' logs are kept in {kept}", file=sys.stderr)
            raise


def ok(response: httpx.Response) -> httpx.Response:
    if not response.is_success:
        raise RuntimeError(f"{response.request.url}: HTTP {response.status_code} {response.text}")
    return response


# What --model trains through the API: rows of the sensor dataset, algorithm, parameters.
MODELS: dict[str, tuple[int, str, dict[str, Any]]] = {
    "logreg": (600, "logreg", {}),
    # ~1 MB of ONNX, as device_agent.py's (unbounded depth: size grows with rows × trees).
    "rf-1mb": (2000, "random_forest", {"n_estimators": 30, "max_depth": None}),
}


def train_versions(r: Rig, model: str) -> float:
    start = time.perf_counter()
    rows, algorithm, params = MODELS[model]
    csv = write_sensor_csv(r.tmp / "sensors.csv", rows, seed=3)
    dataset = ok(
        r.api.post("/datasets", params={"name": "s", "label": "fault"}, content=csv.read_bytes())
    ).json()
    versions = []
    for seed in (0, 1):
        body = {"dataset_id": dataset["id"], "algorithm": algorithm, "params": params}
        job = ok(r.api.post(f"/models/{MODEL}/train", json={**body, "seed": seed})).json()
        deadline = time.monotonic() + 120
        while (body := ok(r.api.get(f"/jobs/{job['id']}")).json())["status"] != "succeeded":
            if body["status"] == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"training job {job['id']}: {body}")
            time.sleep(0.1)
        versions.append(int(body["result_version"]))
    r.versions = (versions[0], versions[1])
    return time.perf_counter() - start


# --- 1. rollout convergence -------------------------------------------------------------------


@dataclass
class RolloutRun:
    plan: str
    version: int
    stages: int
    serving_s: float | None  # POST /rollouts → every agent serves the version
    succeeded_s: float | None  # POST /rollouts → status "succeeded"
    outcome: str
    cp_cpu_s: float
    bench_cpu_s: float
    logs: str  # the agents' warnings and failed download attempts
    server_log: str  # exceptions in the control plane's log
    poll_errors: str  # GET /rollouts/{id} answers other than 2xx
    phases: str
    loop_lag: str


@dataclass
class FleetRun:
    n: int
    register_s: float = 0.0
    broker_users_s: float = 0.0
    build_s: float = 0.0  # SimulatedFleet.start: every agent constructed and launched
    connect_s: float = 0.0  # SimulatedFleet.start → every agent connected
    online_s: float = 0.0  # … → the control plane lists every device online
    stop_s: float = 0.0
    recovery_s: float | None = None  # fleet stopped → the API answers a DB query again
    recovery_log: str = ""
    recovery_limit_s: float = 0.0
    restart_s: float | None = None  # killed and restarted, when it did not recover
    start_lag: str = ""
    idle_cpu_pct: float = 0.0
    idle_lag: str = ""
    rss: dict[str, float] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    threads: dict[str, int] = field(default_factory=dict)
    start_logs: str = ""
    rollouts: list[RolloutRun] = field(default_factory=list)
    errors: str = ""


def register_devices(r: Rig, n: int, tag: str) -> tuple[dict[str, str], float, float]:
    start = time.perf_counter()
    tokens: dict[str, str] = {}
    for i in range(n):
        device_id = f"{tag}-{i:05d}"
        response = ok(r.api.post("/devices", json={"id": device_id, "labels": {"fleet": tag}}))
        tokens[device_id] = response.json()["token"]
    registered = time.perf_counter()
    r.broker.add_users(tokens)
    return tokens, registered - start, time.perf_counter() - registered


def wait_responsive(api: httpx.Client, limit_s: float) -> float | None:
    """Seconds until the API answers a request that needs the database (None: not within
    ``limit_s``). Requests a stuck server still holds are served first, so this measures how
    long a stall outlives its cause."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        with contextlib.suppress(httpx.TransportError):
            if api.get("/rollouts", params={"status": "running"}, timeout=5).is_success:
                return time.perf_counter() - start
        time.sleep(0.5)
    return None


def snapshot(run: FleetRun, label: str) -> None:
    gc.collect()
    run.rss[label] = rss_mib()
    run.fds[label] = open_fds()
    run.threads[label] = threading.active_count()


def phase_summary(fleet: SimulatedFleet) -> str:
    phases: Counter[str] = Counter()
    for agent in fleet.agents.values():
        slot = agent.updater.slots.get(MODEL)
        phases[slot.phase.value if slot is not None else "no slot"] += 1
    return ", ".join(f"{n} {p}" for p, n in phases.most_common())


async def wait_online(api: httpx.AsyncClient, tag: str, n: int, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    online = 0
    while True:
        with contextlib.suppress(httpx.TransportError):
            reply = await api.get("/devices", params={"selector": f"fleet={tag}"}, timeout=10)
            online = sum(bool(d["online"]) for d in ok(reply).json())
        if online == n:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the control plane lists {online} of {n} devices online")
        await asyncio.sleep(0.25)


async def timed_rollout(
    api: httpx.AsyncClient,
    r: Rig,
    fleet: SimulatedFleet,
    tally: LogTally,
    server_log: ServerLog,
    *,
    tag: str,
    plan: str,
    version: int,
    limit_s: float,
) -> RolloutRun:
    cp_cpu0, cpu0 = proc_cpu_seconds(r.server.process.pid), time.process_time()
    lag = LoopLag()
    lag.start()
    t0 = time.perf_counter()
    body = {"model": MODEL, "version": str(version), "selector": f"fleet={tag}"}
    response = ok(await api.post("/rollouts", json={**body, "plan": PLANS[plan]})).json()
    rollout_id = response["id"]
    poll_errors: Counter[str] = Counter()

    async def all_serving() -> float:
        await fleet.wait_serving(MODEL, version, limit_s)
        return time.perf_counter() - t0

    async def succeeded() -> float:
        while True:
            if serving.done() and not serving.cancelled() and serving.exception() is not None:
                raise TimeoutError("the agents did not converge")
            if time.perf_counter() - t0 > limit_s:
                raise TimeoutError(f"not succeeded after {limit_s:g} s")
            try:
                reply = await api.get(f"/rollouts/{rollout_id}", timeout=5)
            except httpx.TransportError as exc:  # a timeout: the control plane is stuck
                poll_errors[type(exc).__name__] += 1
                continue
            if not reply.is_success:  # counted and reported: the control plane is struggling
                poll_errors[f"HTTP {reply.status_code}"] += 1
            elif (status := reply.json())["status"] == "succeeded":
                return time.perf_counter() - t0
            elif status["status"] != "running":
                raise RuntimeError(f"{status['status']}: {status['reason']}")
            await asyncio.sleep(0.2)

    serving = asyncio.create_task(all_serving())
    outcome, succeeded_s, serving_s = "succeeded", None, None
    try:
        succeeded_s = await succeeded()
    except (RuntimeError, TimeoutError) as exc:
        outcome = f"{type(exc).__name__}: {exc}"
        serving.cancel()
        with contextlib.suppress(httpx.HTTPError):  # free the devices for the next plan
            await api.post(f"/rollouts/{rollout_id}/abort", timeout=3)
    await asyncio.wait([serving])
    if not serving.cancelled():
        if serving.exception() is None:
            serving_s = serving.result()
        else:
            outcome += f"; {serving.exception()}"
    return RolloutRun(
        plan=plan,
        version=version,
        stages=len(response["stages"]),
        serving_s=serving_s,
        succeeded_s=succeeded_s,
        outcome=outcome,
        cp_cpu_s=proc_cpu_seconds(r.server.process.pid) - cp_cpu0,
        bench_cpu_s=time.process_time() - cpu0,
        logs=tally.take(),
        server_log=server_log.take(),
        poll_errors=", ".join(f"{n} × {e}" for e, n in poll_errors.items()) or "none",
        phases=phase_summary(fleet),
        loop_lag=await lag.stop(),
    )


async def run_fleet(
    r: Rig,
    run: FleetRun,
    tag: str,
    tokens: dict[str, str],
    logs: tuple[LogTally, ServerLog],
    limit_s: float,
) -> None:
    tally, server_log = logs
    v1, v2 = r.versions
    settings = [
        device_settings(
            device_id,
            broker_host=r.broker.host,
            broker_port=r.broker.port,
            token=token,
            control_plane_url=r.server.url,
            trust_store=r.trust,
            data_dir=r.tmp / "agents",
            labels={"fleet": tag},
            **AGENT_OVERRIDES,
        )
        for device_id, token in tokens.items()
    ]
    headers = {"Authorization": f"Bearer {r.server.token}"}
    async with httpx.AsyncClient(
        base_url=r.server.url + "/api/v1", headers=headers, timeout=60
    ) as api:
        fleet = SimulatedFleet()
        snapshot(run, "before")
        try:
            progress(f"N={run.n}: starting the fleet")
            lag = LoopLag()
            lag.start()
            start = time.perf_counter()
            await fleet.start(settings)
            run.build_s = time.perf_counter() - start
            await fleet.wait_connected(limit_s)
            run.connect_s = time.perf_counter() - start
            await wait_online(api, tag, run.n, limit_s)
            run.online_s = time.perf_counter() - start
            run.start_lag = await lag.stop()
            # Idle: keepalives and nothing else; what N agents cost when nothing happens.
            lag.start()
            cpu0 = time.process_time()
            await asyncio.sleep(IDLE_SECONDS)
            run.idle_cpu_pct = (time.process_time() - cpu0) / IDLE_SECONDS * 100
            run.idle_lag = await lag.stop()
            snapshot(run, "connected")
            run.start_logs = f"agents: {tally.take()}; control plane: {server_log.take()}"
            for plan, version in (("all-at-once", v1), ("canary", v2)):
                progress(f"N={run.n}: {plan} rollout of v{version}")
                rollout = await timed_rollout(
                    api,
                    r,
                    fleet,
                    tally,
                    server_log,
                    tag=tag,
                    plan=plan,
                    version=version,
                    limit_s=limit_s,
                )
                run.rollouts.append(rollout)
                if rollout.succeeded_s is None:
                    break  # the next plan would start from a half-updated fleet
                snapshot(run, f"serving v{version}")
        finally:
            progress(f"N={run.n}: stopping the fleet")
            start = time.perf_counter()
            await fleet.stop()
            run.stop_s = time.perf_counter() - start
            errors = Counter(f"{type(e).__name__}: {e}" for e in fleet.errors.values())
            run.errors = "; ".join(f"{n} × {e}" for e, n in errors.items()) or "none"


def bench_rollouts(
    r: Rig, sizes: list[int], tally: LogTally, recovery_limit_s: float, results: Results
) -> list[FleetRun]:
    server_log = ServerLog(r.server.data_dir / "server.log")
    server_log.take()  # start-up and training
    runs = []
    for n in sizes:
        tag = f"n{n}"
        run = FleetRun(n)
        progress(f"N={n}: registering devices")
        tokens, run.register_s, run.broker_users_s = register_devices(r, n, tag)
        # Bounds a stuck control plane; unstuck, 50 agents converge in under 2 s here.
        limit_s = 20 + n * 0.05
        asyncio.run(run_fleet(r, run, tag, tokens, (tally, server_log), limit_s))
        progress(f"N={n}: waiting for the control plane to answer again")
        run.recovery_s = wait_responsive(r.api, recovery_limit_s)
        run.recovery_limit_s = recovery_limit_s
        run.recovery_log = server_log.take()
        if run.recovery_s is None and n != sizes[-1]:
            progress(f"N={n}: restarting the stuck control plane")
            run.restart_s = r.restart_server()
            server_log.offset = 0  # start_server truncates the log
        runs.append(run)
        print_fleet_run(run)
        record_fleet_run(results, run, headline=n == sizes[-1])
    return runs


def record_fleet_run(results: Results, run: FleetRun, headline: bool) -> None:
    """The rollouts' times (canary against all-at-once), and what the fleet took to start."""
    group = f"rollout, {run.n:,} agents in one process"
    first: dict[str, Figure] = {}
    for ro in run.rollouts:
        for what, seconds in (("→ all serve", ro.serving_s), ("→ succeeded", ro.succeeded_s)):
            if seconds is not None:
                figure = results.add(
                    group,
                    f"{ro.plan} {what}",
                    seconds,
                    "s",
                    baseline=first.get(what),
                    headline=headline and ro.plan == "all-at-once" and what == "→ succeeded",
                )
                first.setdefault(what, figure)
        cpu = results.add(
            group, f"{ro.plan}, control-plane CPU", ro.cp_cpu_s, "s", baseline=first.get("CPU")
        )
        first.setdefault("CPU", cpu)
    group = f"start, {run.n:,} agents in one process"
    rate = run.n / run.register_s
    results.add(group, "register devices, one POST each", rate, "/s", better="higher")
    results.add(group, "fleet.start → every agent connected", run.connect_s, "s")
    serving = [label for label in run.rss if label.startswith("serving")]
    if serving:
        per_agent = (run.rss[serving[-1]] - run.rss["before"]) / run.n * 1024
        results.add(group, "RSS per agent serving", per_agent, "KiB")


def print_fleet_run(run: FleetRun) -> None:
    n = run.n
    print(f"\n### N = {n:,} agents in one process, one event loop")

    def row(label: str, seconds: float, rate: str = "") -> None:
        print(f"{label:<50}{seconds:8.2f} s{rate}")

    row(
        "register devices (POST /devices, one by one)",
        run.register_s,
        f"   ({n / run.register_s:,.0f} devices/s)",
    )
    row("broker users (mosquitto_passwd -U, one reload)", run.broker_users_s)
    row(
        "fleet.start returns (agents built and launched)",
        run.build_s,
        f"   ({run.build_s / n * 1000:.1f} ms/agent)",
    )
    row(
        "fleet.start → every agent connected",
        run.connect_s,
        f"   ({n / run.connect_s:,.0f} agents/s)",
    )
    row("fleet.start → the control plane lists all online", run.online_s)
    row("fleet.stop (close window, say offline, clean up)", run.stop_s)
    if run.recovery_s is not None:
        row("fleet stopped → the API answers GET /rollouts again", run.recovery_s)
    else:
        print(
            f"fleet stopped → the API answers GET /rollouts again: not within "
            f"{run.recovery_limit_s:g} s"
        )
    if run.recovery_log != "none":
        print(f"  control plane log meanwhile: {run.recovery_log}")
    if run.restart_s is not None:
        row("so: control plane killed and restarted (same data)", run.restart_s)
    print(f"event-loop lag while starting: {run.start_lag}")
    print(
        f"idle fleet over {IDLE_SECONDS:g} s: this process {run.idle_cpu_pct:.1f} % of one core, "
        f"event-loop lag {run.idle_lag}"
    )
    print(f"log while starting: {run.start_logs}")
    print(
        f"{'plan':<13}{'v':>3}{'stages':>7}{'→ all serve':>13}{'→ succeeded':>13}"
        f"{'devices/s':>11}{'CP CPU':>9}{'bench CPU':>11}"
    )
    print(f"{'':<23}{'s':>13}{'s':>13}{'succeeded':>11}{'s':>9}{'s':>11}")

    def secs(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "-"

    for ro in run.rollouts:
        rate = f"{n / ro.succeeded_s:,.0f}" if ro.succeeded_s else "-"
        print(
            f"{ro.plan:<13}{ro.version:>3}{ro.stages:>7}{secs(ro.serving_s):>13}"
            f"{secs(ro.succeeded_s):>13}{rate:>11}{ro.cp_cpu_s:>9.1f}{ro.bench_cpu_s:>11.1f}"
        )
    for ro in run.rollouts:
        print(f"  {ro.plan}: {ro.outcome}; agents now: {ro.phases}")
        print(f"    event-loop lag during the rollout: {ro.loop_lag}")
        print(f"    agent log: {ro.logs}")
        print(
            f"    control plane log: {ro.server_log}; GET /rollouts/{{id}} errors: {ro.poll_errors}"
        )
    for plan in list(PLANS)[len(run.rollouts) :]:
        print(f"  {plan}: not run: the fleet is half-updated after the plan above failed")
    print("RSS, descriptors and threads of this process; Δ per agent from 'before' (for a second")
    print("fleet in one process the allocator reuses what the first one freed: Δ reads low)")
    base = run.rss["before"]
    print(
        f"{'this process':<22}{'RSS MiB':>9}{'Δ KiB/agent':>13}{'fds':>7}{'Δ fds/agent':>13}"
        f"{'threads':>9}"
    )
    for label, rss in run.rss.items():
        fds = run.fds[label]
        print(
            f"{label:<22}{rss:>9.1f}{(rss - base) / n * 1024:>13.0f}"
            f"{fds:>7}{(fds - run.fds['before']) / n:>13.2f}{run.threads[label]:>9}"
        )
    print(f"agents ended early / had to be cancelled: {run.errors}")


# --- 2. telemetry ingest ----------------------------------------------------------------------


def window_template() -> TelemetryWindow:
    """One device's window: one model, 6 features × 10 bins, 4 classes, ~1,000 requests."""
    latency = [0] * LATENCY_BUCKETS
    for bucket, count in ((12, 40), (13, 310), (14, 420), (15, 170), (16, 45), (20, 15)):
        latency[bucket] = count
    features = [
        FeatureWindow(
            counts=[3, 21, 64, 131, 197, 214, 182, 108, 51, 19],
            below=4,
            above=6,
            missing=0,
            n=1000,
            sum=60_123.456 + i,
            sum_sq=3_651_234.5 + i,
        )
        for i in range(6)
    ]
    model = ModelWindow(
        name=MODEL,
        version=3,
        sha256="ab" * 32,
        requests=1000,
        errors=0,
        latency_counts=latency,
        features=features,
        predictions=[552, 148, 151, 149],
    )
    end = datetime(2025, 1, 1, tzinfo=UTC)
    return TelemetryWindow(
        device_id="dev-00000",
        seq=1,
        window_start=end - timedelta(seconds=60),
        window_end=end,
        models=[model],
        outbox_dropped=0,
    )


@dataclass
class IngestRun:
    database: str
    mode: str
    windows: int
    seconds: float
    reported: int  # what store_batch said it inserted

    @property
    def per_second(self) -> float:
        return self.windows / self.seconds


class WindowSource:
    """Payloads as devices send them, each (device, seq) new, made outside the timed part."""

    def __init__(self) -> None:
        self.template = window_template()
        self.next = 0

    def payloads(self, count: int) -> list[bytes]:
        out = []
        for i in range(self.next, self.next + count):
            window = self.template.model_copy(
                update={
                    "device_id": f"dev-{i % INGEST_DEVICES:05d}",
                    "seq": 1 + i // INGEST_DEVICES,
                }
            )
            out.append(window.model_dump_json().encode())
        self.next += count
        return out


def stored_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM telemetry_window")).scalar_one())


def measure_ingest(
    engine: Engine, source: WindowSource, database: str, batch: int, budget: float
) -> IngestRun:
    """Parse + store chunks of 500 windows, either in one store_batch call or one call per
    window, until ``budget`` seconds of timed work have passed. Stored rows are counted in
    the table (untimed): store_batch's own count is what is being checked, not trusted."""
    parse = TelemetryWindow.model_validate_json
    windows, seconds, reported = 0, 0.0, 0
    before = stored_rows(engine)
    while seconds < budget:
        payloads = source.payloads(INGEST_BATCH)
        start = time.perf_counter()
        if batch > 1:
            messages: list[Incoming] = [parse(p) for p in payloads]
            reported += store_batch(engine, messages).inserted
        else:
            for p in payloads:
                reported += store_batch(engine, [parse(p)]).inserted
        seconds += time.perf_counter() - start
        windows += len(payloads)
    stored = stored_rows(engine) - before
    if stored != windows:
        raise RuntimeError(f"{stored} of {windows} windows stored")
    mode = f"batches of {batch}" if batch > 1 else "one per call"
    return IngestRun(database, mode, windows, seconds, reported)


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    """A throw-away database (as tests/conftest.py's postgres_url), or None if unreachable."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            version = conn.info.server_version
    except Exception as exc:
        print(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {str(exc)[:120]}")
        yield None
        return
    name = f"edgefleet_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    print(f"PostgreSQL {version // 10000}.{version % 10000} at {PG_ADMIN_URL} (throw-away {name})")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_ingest(tmp: Path, budget: float, results: Results) -> None:
    source = WindowSource()
    sample = source.payloads(1)[0]
    parse_n = 2000
    payloads = source.payloads(parse_n)
    start = time.perf_counter()
    for p in payloads:
        TelemetryWindow.model_validate_json(p)
    parse_us = (time.perf_counter() - start) / parse_n * 1e6
    print("\n## 2. Telemetry ingest: TelemetryWindow.model_validate_json + store_batch")
    print(
        f"    one window = {len(sample):,} bytes of JSON (1 model, 6 features × 10 bins,\n"
        f"    4 classes, {LATENCY_BUCKETS} latency buckets); {INGEST_DEVICES:,} devices, every "
        f"(device, seq) new;\n    ~{budget:g} s timed per row; the parse alone costs "
        f"{parse_us:.1f} µs/window"
    )
    runs: list[IngestRun] = []

    def measure(database: str, make_engine: Callable[[], Engine]) -> None:
        engine = make_engine()
        try:
            migrate(engine)
            store_batch(engine, [TelemetryWindow.model_validate_json(sample)])  # warm-up
            for batch in (INGEST_BATCH, 1):
                runs.append(measure_ingest(engine, source, database, batch, budget))
        finally:
            engine.dispose()

    measure("SQLite (WAL, NORMAL)", lambda: create_db_engine(f"sqlite:///{tmp / 'ingest.db'}"))
    with postgres_database() as pg_url:
        if pg_url is not None:
            measure("PostgreSQL", lambda: create_db_engine(pg_url))

    print(
        f"{'database':<22}{'mode':<18}{'windows':>9}{'seconds':>9}{'windows/s':>11}"
        f"{'µs/window':>11}{'batched ×':>11}"
    )
    for run in runs:
        batched = next(b for b in runs if b.database == run.database and b.mode != "one per call")
        ratio = "" if run is batched else f"{batched.per_second / run.per_second:>10.1f}x"
        print(
            f"{run.database:<22}{run.mode:<18}{run.windows:>9,}{run.seconds:>9.2f}"
            f"{run.per_second:>11,.0f}{run.seconds / run.windows * 1e6:>11.0f}{ratio:>11}"
        )
    for batched in runs:
        if batched.mode == "one per call":
            continue
        one = next(b for b in runs if b.database == batched.database and b is not batched)
        group = f"ingest, {batched.database}"
        each = results.add(group, one.mode, one.per_second, "windows/s", better="higher")
        results.add(
            group,
            batched.mode,
            batched.per_second,
            "windows/s",
            better="higher",
            baseline=each,
            headline=batched.database.startswith("SQLite"),
        )
    for run in runs:
        if run.reported != run.windows:
            print(
                f"NOTE {run.database}, {run.mode}: store_batch reported {run.reported:,} "
                f"inserted (so {run.windows - run.reported:,} duplicates), but the table "
                f"gained all {run.windows:,} rows"
            )


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 50, 200; ~1 s per ingest row")
    parser.add_argument("--sizes", help="fleet sizes, comma-separated (default 100,1000)")
    parser.add_argument(
        "--model", choices=sorted(MODELS), default="logreg", help="rf-1mb: a ~1 MB random forest"
    )
    add_json_argument(parser)
    args = parser.parse_args()
    results = Results("fleet")
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    sizes = sizes or ([50, 200] if args.quick else [100, 1000])
    budget = 1.0 if args.quick else 3.0
    # Before mosquitto starts, so the broker inherits the raised limit too.
    fd_limit = raise_fd_limit()
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so everything started is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` shows where a hang is

    began = time.perf_counter()
    flags = (" --quick" if args.quick else "") + (f" --sizes {args.sizes}" if args.sizes else "")
    flags += f" --model {args.model}" if args.model != "logreg" else ""
    print(f"# .venv/bin/python benchmarks/fleet.py{flags}")
    print(machine_info())
    print(f"# RLIMIT_NOFILE soft limit raised to {fd_limit:,}; all times wall clock")
    tally = LogTally()
    agent_log = logging.getLogger("agent")
    agent_log.setLevel(logging.INFO)
    agent_log.addHandler(tally)

    print("\n## 1. Rollout convergence: real agents in one SimulatedFleet, real control plane")
    print("    control plane: `edgefleet server` subprocess, SQLite, rollout tick 0.2 s;")
    print("    mosquitto from deploy/mosquitto/mosquitto.conf; agents: api_port 0, window 3600 s,")
    print("    probation 0.2 s / 0 requests; plans soak 0, gates min_requests 0,")
    print("    min_devices_reporting 0; canary = 1 device → 10% → 50% → 100%.")
    print("    → all serve: POST /rollouts until every agent's slot serves the version")
    print("    (polled every 20 ms); → succeeded: until GET /rollouts/{id} says so (every 0.2 s).")
    print("    CPU: utime+stime of the control plane process / this process during the rollout.")
    with rig() as r:
        train_s = train_versions(r, args.model)
        v1, v2 = r.versions
        artifact = ok(r.api.get(f"/models/{MODEL}/versions/{v1}")).json()
        print(
            f"trained {MODEL} v{v1} and v{v2} ({args.model}) through the REST API in"
            f" {train_s:.1f} s; "
            f"ONNX artifact {artifact.get('size', '?')} bytes"
        )
        bench_rollouts(r, sizes, tally, 10.0 if args.quick else 30.0, results)
    # With the broker and the control plane stopped: nothing else competes for the 2 CPUs.
    progress("telemetry ingest")
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="edgefleet-ingest-") as tmp:
        bench_ingest(Path(tmp), budget, results)
    print(f"\n# total {time.perf_counter() - began:.0f} s")
    results.write(args.json)


if __name__ == "__main__":
    main()
