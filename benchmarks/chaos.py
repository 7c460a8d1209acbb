"""Reliability under chaos: what survives a broker killed -9 during a rollout, and an agent
killed -9 in the middle of an install.

1. **Broker chaos.** N real agents (``simulator.fleet``, one process, the agent's own code)
   against a real control plane (``edgefleet server``, SQLite) and a mosquitto with the
   project's configuration (``simulator.broker``). Every agent serves v1 (a logistic
   regression) and sends telemetry (an app here calls each agent once a second; 1 s
   windows). Then a staged rollout of v2, a ~1 MB random forest trained through the API,
   and meanwhile the broker is killed -9 and restarted on the same port and persistence K
   times: kill i comes once i/(K+1) of the fleet has installed v2, or after a randomized gap
   of a few seconds, whichever is first (never before the broker was up ~1 s). Then: every
   agent serves v2 and the rollout succeeded; with the app stopped and every outbox
   drained, each device's stored telemetry sequence numbers are exactly 1..k, k being
   what its outbox numbered (read from the control plane's database: none lost, none
   twice); every model an agent served, each time it changed while the chaos ran and again
   at the end, hashes to its signed manifest's sha256 and answers inference.
2. **Install chaos.** M agents as ``edgefleet agent`` OS processes (``simulator.rig``: a
   mosquitto, an artifact server serving the ~1 MB artifact at 320 KiB/s so that a download
   lasts ~3 s, and signed desired states). Each serves v1, is given v2, and is killed -9 at
   a phase chosen at random per agent (as many of each): **download** (once its partial
   file holds a random share of the artifact), **verify** (as it reports ``verifying``),
   **activation** (as one of its steps, at random, lands in the model store: v2's manifest,
   its artifact, the slots switched to it), **probation** (at a random point of its 3 s
   probation). The phase it was really in is read from its data dir after
   the kill. Restarted on the same data dir, each must serve a verified model: the model
   its local API says it serves hashes to the sha256 of v2's or v1's signed manifest, whose
   signature verifies, and it answers ``POST /v2/models/fault/infer``. Agents run
   ``--batch`` at a time.

    .venv/bin/python benchmarks/chaos.py [--quick] [--agents 200] [--broker-kills 20]
        [--install-kills 100] [--batch 10] [--parts broker,install] [--json PATH]

``--quick``: 20 agents and 3 broker kills, 10 install kills (a minute or two). It exits 1
(after printing and writing the figures) when any of those claims does not hold. Everything
it starts (mosquitto, the control plane, agent processes, temp dirs) is stopped and
removed on the way out, also on failure; with ``--keep`` the temp dir stays (logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's packages, whatever the working directory

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from results import Results, add_json_argument  # noqa: E402

from agent.fetch import hash_file  # noqa: E402
from agent.model_store import ModelStore, Slots  # noqa: E402
from agent.runtime import Agent  # noqa: E402
from shared.broker_address import CONTROL_PLANE_USER  # noqa: E402
from shared.errors import VerificationError  # noqa: E402
from shared.manifest import ModelManifest  # noqa: E402
from shared.messages import DeviceState, ModelStatus, Phase  # noqa: E402
from shared.topics import Channel, Topics  # noqa: E402
from shared.trust import TrustStore  # noqa: E402
from shared.verification import verify_manifest  # noqa: E402
from simulator.broker import MosquittoBroker, free_port, mosquitto_version  # noqa: E402
from simulator.data import sensor_csv, sensor_rows  # noqa: E402
from simulator.rig.agent_rig import Rig, open_rig  # noqa: E402
from simulator.rig.agents import CP_PASSWORD  # noqa: E402
from simulator.rig.models import make_model  # noqa: E402
from simulator.rig.server import edgefleet_cmd  # noqa: E402
from simulator.run import MODEL, OPEN_GATES, SimOptions, Simulation  # noqa: E402

# ~1 MB of ONNX: benchmarks/device_agent.py's RF_1MB and fleet.py's rf-1mb (unbounded depth:
# the size grows with rows × trees).
RF_ROWS = 2000
RF_PARAMS: dict[str, Any] = {"n_estimators": 30, "max_depth": None}
FINAL = ("succeeded", "rolled_back", "aborted", "paused")
PHASES = ("download", "verify", "activation", "probation")
PROBATION_SECONDS = 3.0  # part 2: long enough to be caught, short enough for 100 agents
SLOW_BYTES_PER_SECOND = 320 * 1024  # the rig's artifact server in "slow" mode
_BEGAN = time.perf_counter()


def progress(message: str) -> None:
    """Where the run is, on stderr (the tables on stdout stay clean)."""
    print(f"[{time.perf_counter() - _BEGAN:6.1f} s] {message}", file=sys.stderr, flush=True)


class LogTally(logging.Handler):
    """Counts warnings and errors logged in this process (the in-process agents' and the
    rig's) by logger, with one example each, instead of printing thousands of lines."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.name} {record.levelname.lower()}"
        with self._guard:
            self.counts[key] += 1
            self.examples.setdefault(key, record.getMessage().splitlines()[0][:120])

    def take(self) -> str:
        with self._guard:
            text = "; ".join(
                f"{n} × {k} (e.g. {self.examples[k]!r})" for k, n in sorted(self.counts.items())
            )
            self.counts.clear()
            self.examples.clear()
        return text or "none"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- 1. broker chaos --------------------------------------------------------------------------


@dataclass
class BrokerKill:
    at_s: float  # since POST /rollouts
    installed: int  # agents serving v2 when it was killed
    rollout_running: bool
    down_s: float  # kill → the restarted broker listens


@dataclass
class BrokerChaos:
    agents: int
    model_bytes: int
    version: int
    kills: list[BrokerKill] = field(default_factory=list)
    status: str = ""
    reason: str | None = None
    succeeded_s: float | None = None
    converged: int = 0
    windows_made: int = 0
    windows_stored: int = 0  # of those made
    windows_lost: int = 0
    windows_duplicated: int = 0
    windows_unknown: int = 0  # stored, but no agent made that number
    windows_waiting: int = 0  # still in an outbox when the count gave up waiting
    drained_s: float = 0.0
    swaps_checked: int = 0
    partial_while_running: list[str] = field(default_factory=list)
    partial_at_end: list[str] = field(default_factory=list)
    inference: Counter[str] = field(default_factory=Counter)
    logs: str = ""
    server_log: str = ""
    seconds: float = 0.0


class Background:
    """A task run beside the scenario: ``start``ed, then cancelled at ``stop``."""

    name = "background"
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        raise NotImplementedError


class App(Background):
    """What calls each agent: one single-row request a second per device while it serves,
    in ticks of 0.2 s (a fifth of the fleet each tick). Counts answers and errors by type."""

    name = "app"

    def __init__(self, sim: Simulation, seed: int) -> None:
        self.sim = sim
        self.counts: Counter[str] = Counter()
        self.rows = sensor_rows(512, seed)[0].astype(np.float32)

    async def _run(self) -> None:
        for tick in itertools.count():
            await asyncio.sleep(0.2)
            fleet = self.sim.fleet
            for i, (device_id, agent) in enumerate(sorted(fleet.agents.items())):
                if i % 5 != tick % 5 or not fleet.is_running(device_id):
                    continue
                slot = agent.updater.slots.get(MODEL)
                if slot is None or slot.current is None:
                    continue
                row = self.rows[(tick + i) % len(self.rows)][None, :]
                try:
                    agent.predict(MODEL, row)
                    self.counts["answered"] += 1
                except Exception as exc:  # counted and reported: an app would retry
                    self.counts[type(exc).__name__] += 1


class ServingWatch(Background):
    """Every model an agent serves, checked when it starts serving: the file of the version
    in the agent's store hashes to the signed manifest's sha256 and size, and the manifest's
    signature verifies. Polled every 0.1 s (a swap and back within 0.1 s goes unseen)."""

    name = "serving-watch"

    def __init__(self, sim: Simulation, trust: TrustStore) -> None:
        self.sim, self.trust = sim, trust
        self.seen: dict[str, str] = {}  # device → sha256 last checked
        self.checked = 0
        self.bad: list[str] = []

    async def _run(self) -> None:
        while True:
            for device_id, agent in list(self.sim.fleet.agents.items()):
                slot = agent.updater.slots.get(MODEL)
                if slot is None or slot.current is None:
                    continue
                manifest = slot.current.manifest
                if self.seen.get(device_id) == manifest.sha256:
                    continue
                self.seen[device_id] = manifest.sha256
                self.checked += 1
                problem = await asyncio.to_thread(served_file_problem, agent, manifest, self.trust)
                if problem is not None:
                    self.bad.append(f"{device_id} v{manifest.version}: {problem}")
            await asyncio.sleep(0.1)


def served_file_problem(agent: Agent, manifest: ModelManifest, trust: TrustStore) -> str | None:
    """Why the model an in-process agent serves is not its verified artifact (None: it is)."""
    try:
        verify_manifest(manifest, trust)
    except VerificationError as exc:
        return f"manifest: {exc}"
    path = agent.store.artifact_path(manifest.name, manifest.sha256)
    try:
        digest, size = hash_file(path)
    except OSError as exc:
        return f"{path.name}: {exc}"
    if (digest, size) != (manifest.sha256, manifest.size):
        return f"{path.name} holds {size} bytes with sha256 {digest[:12]}…"
    return None


def rollout_plan(kills: int) -> dict[str, Any]:
    """Seven stages with soaks that keep the rollout going for about as long as the kills
    take (~2.5 s each), so that most of them hit it in progress; gates open (the latency
    of a random forest against a logistic regression is not what is measured here), an
    install timeout far above what the kills cost."""
    soak = max(1.0, round(kills * 2.5 / 6, 1))
    stages: list[dict[str, Any]] = [{"count": 1, "soak_seconds": soak}]
    stages += [{"percent": p, "soak_seconds": soak} for p in (5, 10, 25, 50, 75)]
    stages.append({"percent": 100, "soak_seconds": 0})
    return {"stages": stages, "gates": {**OPEN_GATES, "install_timeout_seconds": 900}}


async def train_random_forest(sim: Simulation, seed: int) -> int:
    """A ~1 MB random forest trained through the API; its version."""
    csv = sensor_csv(RF_ROWS, seed=seed)
    dataset = (
        await sim.api.post(
            "/datasets",
            params={"name": "sensors-rf", "label": "fault"},
            content=csv.encode(),
            headers={"Content-Type": "text/csv"},
        )
    ).raise_for_status()
    job = (
        await sim.api.post(
            f"/models/{MODEL}/train",
            json={
                "dataset_id": dataset.json()["id"],
                "algorithm": "random_forest",
                "params": RF_PARAMS,
                "seed": seed,
            },
        )
    ).raise_for_status()
    done = await sim.wait_job(job.json()["id"], timeout=600)
    if done["status"] != "succeeded" or done["result_version"] is None:
        raise RuntimeError(f"training the random forest failed: {done['error']}")
    return int(done["result_version"])


def serving_count(sim: Simulation, version: int) -> int:
    return sum(v == version for v in sim.fleet.serving(MODEL).values())


async def kill_broker_during(
    sim: Simulation, broker: MosquittoBroker, rollout_id: str, version: int, kills: int, seed: int
) -> list[BrokerKill]:
    """Kill -9 and restart the broker ``kills`` times: kill i once i/(kills+1) of the fleet
    serves ``version`` or after a random 2–5 s, whichever comes first, and never before the
    broker has been up for a random 0.5–1.5 s."""
    rng = random.Random(seed)
    n = sim.options.devices
    loop = asyncio.get_running_loop()
    began = loop.time()
    done: list[BrokerKill] = []
    for i in range(1, kills + 1):
        up_since = loop.time()
        least, most = rng.uniform(0.5, 1.5), rng.uniform(2.0, 5.0)
        due = n * i / (kills + 1)
        while True:
            up = loop.time() - up_since
            if up >= most or (up >= least and serving_count(sim, version) >= due):
                break
            await asyncio.sleep(0.05)
        rollout = await sim.get(f"/rollouts/{rollout_id}")
        installed = serving_count(sim, version)
        killed = loop.time()
        await asyncio.to_thread(broker.restart, kill=True)
        done.append(
            BrokerKill(
                at_s=killed - began,
                installed=installed,
                rollout_running=rollout["status"] not in FINAL,
                down_s=loop.time() - killed,
            )
        )
        progress(
            f"broker kill {i}/{kills}: {installed}/{n} on v{version}, rollout "
            f"{rollout['status']}, back in {done[-1].down_s * 1000:.0f} ms"
        )
    return done


async def windows_settled(sim: Simulation, window: float, limit_s: float) -> tuple[float, int]:
    """With the app stopped: wait until no agent makes new windows and every outbox has
    sent and had acknowledged all of its own. Seconds waited, windows still waiting."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    last: dict[str, int] | None = None
    while True:
        made = {d: a.outbox.last_seq("telemetry") for d, a in sim.fleet.agents.items()}
        waiting = sum(
            1
            for a in sim.fleet.agents.values()
            for item in a.outbox.pending(100_000)
            if item.channel == "telemetry"
        )
        if waiting == 0 and made == last:
            return loop.time() - start, 0
        if loop.time() - start > limit_s:
            return loop.time() - start, waiting
        last = made
        await asyncio.sleep(2 * window)


def stored_seqs(database_url: str) -> dict[str, list[int]]:
    """Every (device, seq) the control plane stored, read from its SQLite file (read-only):
    exact and cheap, where the telemetry API would rebuild every window's histograms."""
    prefix = "sqlite:///"
    if not database_url.startswith(prefix):
        raise RuntimeError(f"expected the simulator's SQLite database, not {database_url}")
    path = database_url.removeprefix(prefix)
    stored: dict[str, list[int]] = {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        for device_id, seq in db.execute(
            "SELECT device_id, seq FROM telemetry_window ORDER BY device_id, seq"
        ):
            stored.setdefault(str(device_id), []).append(int(seq))
    return stored


async def broker_chaos(n: int, kills: int, seed: int, workdir: Path) -> BrokerChaos:
    tally = LogTally()
    logging.getLogger().addHandler(tally)
    began = time.perf_counter()
    # The app below is the only load (no sampled rows, no labels); 1 s telemetry windows.
    options = SimOptions(
        devices=n,
        seed=seed,
        rows_per_second=0.0,
        window_seconds=1.0,
        bucket_seconds=60.0,  # drift buckets: not what is measured here
        samples_per_window=0,
    )
    try:
        async with Simulation(workdir, options) as sim:
            if not isinstance(sim.broker, MosquittoBroker):
                raise RuntimeError("broker chaos needs mosquitto (apt-get install mosquitto)")
            progress(f"part 1: {sim.broker.describe()}; registering and starting {n} agents")
            await sim.add_devices(range(n))
            await sim.fleet.wait_connected(300)
            v1 = await sim.train()
            first = await sim.rollout(
                v1, {"preset": "all-at-once", "soak_seconds": 0, "gates": OPEN_GATES}, "initial"
            )
            await sim.wait_rollout(first["id"], FINAL, timeout=600)
            await sim.wait_serving(v1, timeout=600)
            app = App(sim, seed)
            app.start()
            progress(f"part 1: every agent serves v{v1} (logreg); training the random forest")
            v2 = await train_random_forest(sim, seed + 1)
            manifest = ModelManifest.model_validate_json(
                json.dumps((await sim.get(f"/models/{MODEL}/versions/{v2}"))["manifest"])
            )
            out = BrokerChaos(agents=n, model_bytes=manifest.size, version=v2)
            trust = TrustStore.model_validate_json(sim.trust_path.read_bytes())
            watch = ServingWatch(sim, trust)
            watch.start()
            progress(f"part 1: rollout of v{v2} ({manifest.size:,} B) with {kills} broker kills")
            posted = time.perf_counter()
            rollout = await sim.rollout(v2, rollout_plan(kills), "chaos")
            out.kills = await kill_broker_during(sim, sim.broker, rollout["id"], v2, kills, seed)
            done = await sim.wait_rollout(rollout["id"], FINAL, timeout=900)
            out.status, out.reason = done["status"], done["reason"]
            if done["status"] == "succeeded":
                out.succeeded_s = time.perf_counter() - posted
            with contextlib.suppress(TimeoutError):
                await sim.wait_serving(v2, timeout=300)
            out.converged = serving_count(sim, v2)
            await app.stop()
            await watch.stop()
            out.inference = app.counts
            out.swaps_checked, out.partial_while_running = watch.checked, watch.bad
            progress("part 1: app stopped; waiting for every outbox to drain")
            out.drained_s, out.windows_waiting = await windows_settled(sim, 1.0, limit_s=300)
            count_windows(out, sim)
            out.partial_at_end = await asyncio.to_thread(final_check, sim, trust, manifest)
            out.logs = tally.take()
            out.server_log = logged_exceptions(sim.control.log_path)
    finally:
        logging.getLogger().removeHandler(tally)
    out.seconds = time.perf_counter() - began
    return out


def logged_exceptions(path: Path) -> str:
    """Exceptions and tracebacks in the control plane's log, by class, one example each."""
    text = path.read_text(errors="replace") if path.exists() else ""
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for match in re.finditer(r"^([\w.]+(?:Error|Exception)): (.*)$", text, re.MULTILINE):
        counts[match.group(1)] += 1
        examples.setdefault(match.group(1), match.group(2)[:120])
    tracebacks = text.count("Traceback (most recent call last)")
    found = "; ".join(f"{n} × {k} ({examples[k]!r})" for k, n in counts.items())
    return f"{tracebacks} tracebacks; {found}" if tracebacks or found else "none"


def count_windows(out: BrokerChaos, sim: Simulation) -> None:
    """Per device: the numbers its outbox gave (1..k) against those the control plane
    stored (exactly once each is the claim)."""
    stored = stored_seqs(sim.control.settings.resolved_database_url)
    for device_id, agent in sim.fleet.agents.items():
        k = agent.outbox.last_seq("telemetry")
        seqs = stored.get(device_id, [])
        made = set(range(1, k + 1))
        out.windows_made += k
        out.windows_stored += len(made & set(seqs))
        out.windows_lost += len(made - set(seqs))
        out.windows_duplicated += len(seqs) - len(set(seqs))
        out.windows_unknown += len(set(seqs) - made)
    out.windows_unknown += sum(len(s) for d, s in stored.items() if d not in sim.fleet.agents)


def final_check(sim: Simulation, trust: TrustStore, manifest: ModelManifest) -> list[str]:
    """Every agent serves the rollout's version from a file that hashes to its signed
    manifest, and answers a request."""
    bad = []
    row = sensor_rows(1, seed=5)[0].tolist()
    for device_id, agent in sorted(sim.fleet.agents.items()):
        slot = agent.updater.slots.get(MODEL)
        current = slot.current if slot is not None else None
        if current is None:
            bad.append(f"{device_id}: serves nothing")
            continue
        if current.manifest.sha256 != manifest.sha256:
            bad.append(f"{device_id}: serves v{current.manifest.version}, not v{manifest.version}")
        problem = served_file_problem(agent, current.manifest, trust)
        if problem is not None:
            bad.append(f"{device_id}: {problem}")
        try:
            labels = agent.predict_rows(MODEL, row).outputs.labels
            if labels is None or len(labels) != 1:
                bad.append(f"{device_id}: inference answered {labels!r}")
        except Exception as exc:  # reported as a finding
            bad.append(f"{device_id}: inference failed: {type(exc).__name__}: {exc}")
    return bad


def print_broker_chaos(out: BrokerChaos) -> None:
    kills = out.kills
    during = sum(k.rollout_running for k in kills)
    down = [k.down_s * 1000 for k in kills]
    print(
        f"\n## 1. Broker killed -9 and restarted {len(kills)} times during a rollout of a "
        f"{out.model_bytes:,}-byte model to {out.agents} agents ({out.seconds:.0f} s)"
    )
    rows = [
        ("kills while the rollout ran", f"{during} of {len(kills)}"),
        ("agents on v2 at each kill", ", ".join(str(k.installed) for k in kills)),
        ("seconds after POST /rollouts", ", ".join(f"{k.at_s:.0f}" for k in kills)),
        (
            "kill → restarted broker listening",
            f"p50 {statistics.median(down):.0f} ms, max {max(down):.0f} ms" if down else "-",
        ),
        (
            "rollout",
            f"{out.status} in {out.succeeded_s:.1f} s"
            if out.succeeded_s
            else f"{out.status} ({out.reason or 'no reason'})",
        ),
        ("converged (serving the new version)", f"{out.converged} of {out.agents}"),
        ("telemetry windows made", f"{out.windows_made:,}"),
        ("  stored exactly once", f"{out.windows_stored:,} of {out.windows_made:,}"),
        ("  lost", f"{out.windows_lost}"),
        ("  stored twice", f"{out.windows_duplicated}"),
        ("  stored but never made", f"{out.windows_unknown}"),
        ("  still in an outbox after the wait", f"{out.windows_waiting}"),
        ("  outboxes drained in", f"{out.drained_s:.1f} s after the app stopped"),
        (
            "partial or unverified models served",
            f"{len(out.partial_while_running) + len(out.partial_at_end)} "
            f"({out.swaps_checked} models checked as they started serving, "
            f"{out.agents} at the end with a request each)",
        ),
        (
            "the app's requests",
            ", ".join(f"{n:,} {k}" for k, n in out.inference.most_common()) or "none",
        ),
        ("warnings/errors logged in-process", out.logs),
        ("exceptions in the control plane's log", out.server_log),
    ]
    for label, value in rows:
        print(f"  {label:<38} {value}")
    for problem in (out.partial_while_running + out.partial_at_end)[:20]:
        print(f"  ✗ {problem}")


# --- 2. install chaos -------------------------------------------------------------------------


class StateWatch:
    """The devices' state reports, as the control plane receives them (its account, its
    listener): the newest report per device (by its sequence, which grows across restarts),
    and waiting until one satisfies a predicate."""

    def __init__(self, broker: MosquittoBroker, abort: threading.Event) -> None:
        self.topics = Topics()
        self.latest: dict[str, DeviceState] = {}
        self.abort = abort
        self._cond = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"chaos-watch-{os.getpid()}"
        )
        self.client.username_pw_set(CONTROL_PLANE_USER, CP_PASSWORD)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.cp_port)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.topics.all_devices(Channel.STATE), qos=1)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            state = DeviceState.model_validate_json(message.payload)
        except ValidationError:
            return
        with self._cond:
            old = self.latest.get(state.device_id)
            if old is None or state.seq > old.seq:
                self.latest[state.device_id] = state
                self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def status(self, device_id: str) -> ModelStatus | None:
        state = self.latest.get(device_id)
        return next((m for m in state.models if m.name == MODEL), None) if state else None

    def wait(
        self, device_id: str, predicate: Callable[[ModelStatus], bool], timeout: float
    ) -> ModelStatus | None:
        """The first status of ``MODEL`` on ``device_id`` that satisfies ``predicate`` (None
        after ``timeout`` or on abort)."""

        def ready() -> bool:
            status = self.status(device_id)
            return self.abort.is_set() or (status is not None and predicate(status))

        with self._cond:
            if not self._cond.wait_for(ready, timeout) or self.abort.is_set():
                return None
            return self.status(device_id)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class InstallKill:
    device_id: str
    aimed: str  # the phase chosen for it
    reported: str = "-"  # the last phase it reported before the kill
    observed: str = "-"  # the phase its data dir shows after the kill
    at: str = ""  # where in it
    leftovers: list[str] = field(default_factory=list)  # temp files left after the restart
    outcome: str = "-"  # "new", "previous", or what went wrong
    version: int | None = None
    api_ok: bool = False
    recovered_s: float | None = None  # restart → serving v2 committed
    detail: str = ""


@dataclass
class Models:
    v1: tuple[ModelManifest, bytes]
    v2: tuple[ModelManifest, bytes]

    def kind(self, sha256: str) -> str | None:
        return {self.v1[0].sha256: "previous", self.v2[0].sha256: "new"}.get(sha256)


class AgentProcess:
    """One ``edgefleet agent --config`` process of the rig, restartable on its data dir."""

    def __init__(self, rig: Rig, device_id: str, processes: set[subprocess.Popen[bytes]]) -> None:
        self.rig, self.device_id = rig, device_id
        self.api_port = free_port()
        self.settings = rig.settings(
            device_id,
            api_port=self.api_port,
            probation_seconds=PROBATION_SECONDS,
            probation_requests=0,
        )
        self.config = rig.config_file(self.settings)
        self.log = rig.tmp / "logs" / f"{device_id}.log"
        self.log.parent.mkdir(exist_ok=True)
        self.processes = processes
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                edgefleet_cmd("agent", "--config", str(self.config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        self.processes.add(self.process)

    def kill(self) -> None:
        """SIGKILL, as a power cut would: nothing runs after it."""
        process = self.process
        if process is not None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            self.processes.discard(process)

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.processes.discard(process)

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.settings.data_dir)

    def log_tail(self, lines: int = 5) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])


def observed_phase(agent: AgentProcess, v2: ModelManifest, reported: str) -> tuple[str, str]:
    """The install phase an agent's data dir shows after a kill, and where in it (the last
    reported phase separates the activation's last step from the probation)."""
    store = agent.store
    slots_path = store.models_dir / MODEL / "slots.json"
    slots = Slots.model_validate_json(slots_path.read_bytes()) if slots_path.exists() else Slots()
    if slots.active is not None and slots.active.sha256 == v2.sha256:
        if slots.committed:
            return "committed", "the install was over"
        if reported == Phase.PROBATION:
            return "probation", "active, not committed"
        return "activation", "slots switched, probation not reported yet"
    manifest = store.manifest_path(MODEL, v2.sha256).exists()
    artifact = store.artifact_path(MODEL, v2.sha256).exists()
    if manifest or artifact:
        where = "manifest and artifact stored" if manifest and artifact else "manifest stored"
        return "activation", f"{where}, slots not switched"
    part = store.staging_path(v2.sha256)
    if part.exists():
        size = part.stat().st_size
        if size >= v2.size:
            return "verify", "download complete"
        return "download", f"{size / v2.size:.0%} downloaded"
    return "before download", "nothing staged"


def leftovers(agent: AgentProcess) -> list[str]:
    """Files an interrupted atomic write leaves behind (``write_atomic``'s temp files)."""
    store = agent.store
    return sorted(
        str(p.relative_to(store.data_dir))
        for directory in (store.data_dir, store.models_dir / MODEL, store.staging_dir)
        if directory.is_dir()
        for p in directory.iterdir()
        if p.name.startswith(".")
    )


def wait_file(
    path: Path,
    done: Callable[[Path], bool],
    timeout: float,
    abort: threading.Event,
    still: Callable[[], bool],
) -> bool:
    """Poll ``path`` every 0.5 ms until ``done(path)`` (False on timeout, on abort, or once
    ``still()`` is False: the agent went past the point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not abort.is_set():
        if done(path):
            return True
        if not still():
            return False
        time.sleep(0.0005)
    return False


def infer_body(manifest: ModelManifest) -> dict[str, Any]:
    row = sensor_rows(1, seed=7)[0].astype(np.float32)
    return {
        "inputs": [
            {
                "name": manifest.input.tensor.name,
                "shape": [1, row.shape[1]],
                "datatype": "FP32",
                "data": row.reshape(-1).tolist(),
            }
        ]
    }


def check_served(
    agent: AgentProcess, models: Models, trust: TrustStore, result: InstallKill
) -> None:
    """What the restarted agent's local API says it serves, checked against the bytes in its
    store and the signed manifests; and one inference request."""
    with httpx.Client(base_url=f"http://127.0.0.1:{agent.api_port}", timeout=10) as client:
        meta = client.get(f"/v2/models/{MODEL}")
        if meta.status_code != 200:
            result.outcome, result.detail = "none", f"GET /v2/models: {meta.status_code}"
            return
        sha, version = meta.json()["parameters"]["sha256"], int(meta.json()["versions"][0])
        result.version = version
        kind = models.kind(sha)
        if kind is None:
            result.outcome, result.detail = "unknown", f"serves sha256 {sha[:12]}…"
            return
        manifest = (models.v2 if kind == "new" else models.v1)[0]
        store = agent.store
        digest, size = hash_file(store.artifact_path(MODEL, sha))
        on_disk = store.read_manifest(MODEL, sha)
        try:
            verify_manifest(on_disk, trust)
        except VerificationError as exc:
            result.outcome, result.detail = "unverified", f"manifest on disk: {exc}"
            return
        if (digest, size) != (manifest.sha256, manifest.size) or on_disk.sha256 != sha:
            result.outcome = "partial"
            result.detail = f"file of {size} B, sha256 {digest[:12]}… for {sha[:12]}…"
            return
        result.outcome = kind
        answer = client.post(f"/v2/models/{MODEL}/infer", json=infer_body(manifest))
        result.api_ok = answer.status_code == 200 and bool(answer.json().get("outputs"))
        if not result.api_ok:
            result.detail = f"infer: {answer.status_code} {answer.text[:100]}"


def run_one(
    rig: Rig,
    watch: StateWatch,
    models: Models,
    trust: TrustStore,
    device_id: str,
    aimed: str,
    rng: random.Random,
    processes: set[subprocess.Popen[bytes]],
    publish_lock: threading.Lock,
) -> InstallKill:
    """Serve v1, take v2, be killed -9 at the aimed phase, restart, and be checked."""
    result = InstallKill(device_id, aimed)
    agent = AgentProcess(rig, device_id, processes)
    v1, v2 = models.v1[0], models.v2[0]
    share = rng.uniform(0.1, 0.9)  # of the download, or of the probation, when it is killed
    try:
        agent.start()
        with publish_lock:
            rig.publish(rig.next_desired(device_id, [v1]))
        if (
            watch.wait(
                device_id,
                lambda s: (
                    s.active is not None
                    and s.active.sha256 == v1.sha256
                    and s.phase is Phase.SERVING
                    and s.target is None
                ),
                timeout=120,
            )
            is None
        ):
            result.outcome = "v1 never served"
            result.detail = agent.log_tail()
            return result
        with publish_lock:
            rig.publish(rig.next_desired(device_id, [v2]))
        store = agent.store

        def installing() -> bool:
            status = watch.status(device_id)
            return (
                status is None
                or status.phase is not Phase.SERVING
                or (status.active is not None and status.active.sha256 != v2.sha256)
            )

        if aimed == "download":
            watch.wait(device_id, lambda s: s.phase is Phase.DOWNLOADING, timeout=120)
            wait_file(
                store.staging_path(v2.sha256),
                lambda p: p.exists() and p.stat().st_size >= share * v2.size,
                120,
                watch.abort,
                lambda: (s := watch.status(device_id)) is not None and s.phase is Phase.DOWNLOADING,
            )
        elif aimed == "verify":
            watch.wait(
                device_id,
                lambda s: (
                    s.phase is not Phase.DOWNLOADING
                    and (
                        s.phase is Phase.VERIFYING
                        or (s.active is not None and s.active.sha256 == v2.sha256)
                    )
                ),
                timeout=120,
            )
        elif aimed == "activation":
            watch.wait(
                device_id,
                lambda s: (
                    s.phase is Phase.VERIFYING
                    or (s.active is not None and s.active.sha256 == v2.sha256)
                ),
                timeout=120,
            )
            # Its three steps, one at random: the manifest stored, the artifact moved into
            # the store, the slots switched to it (the commit point).
            slots = store.models_dir / MODEL / "slots.json"
            step: tuple[Path, Callable[[Path], bool]] = rng.choice(
                [
                    (store.manifest_path(MODEL, v2.sha256), Path.exists),
                    (store.artifact_path(MODEL, v2.sha256), Path.exists),
                    (slots, lambda p: v2.sha256 in p.read_text(errors="replace")),
                ]
            )
            wait_file(*step, 120, watch.abort, installing)
        else:  # probation
            watch.wait(
                device_id,
                lambda s: s.active is not None and s.active.sha256 == v2.sha256,
                timeout=120,
            )
            time.sleep(share * PROBATION_SECONDS)  # a random point of it, not a judgement
        status = watch.status(device_id)
        result.reported = status.phase.value if status is not None else "-"
        agent.kill()
        result.observed, result.at = observed_phase(agent, v2, result.reported)

        restarted = time.monotonic()
        agent.start()
        committed = watch.wait(
            device_id,
            lambda s: (
                s.active is not None
                and s.active.sha256 == v2.sha256
                and s.phase is Phase.SERVING
                and s.target is None
            ),
            timeout=180,
        )
        if committed is not None:
            result.recovered_s = time.monotonic() - restarted
        elif agent.process is not None and agent.process.poll() is not None:
            result.outcome = f"exited {agent.process.returncode} after the restart"
            result.detail = agent.log_tail()
            return result
        else:  # not on v2 after 3 min: check what it serves all the same
            status = watch.status(device_id)
            result.detail = f"not on v2 after 180 s: {status!r}"[:300]
        ready = wait_http(agent, timeout=60, abort=watch.abort)
        if not ready:
            result.outcome, result.detail = "none", "its local API never said a model serves"
            return result
        check_served(agent, models, trust, result)
        result.leftovers = leftovers(agent)
        return result
    except Exception as exc:  # one agent's failure is a finding, not the end of the run
        result.outcome = f"error: {type(exc).__name__}"
        result.detail = f"{exc} | {agent.log_tail(3)}"[:400]
        return result
    finally:
        agent.stop()


def wait_http(agent: AgentProcess, timeout: float, abort: threading.Event) -> bool:
    """Until the agent's local API answers that a model serves."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=f"http://127.0.0.1:{agent.api_port}", timeout=2) as client:
        while time.monotonic() < deadline and not abort.is_set():
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"/v2/models/{MODEL}/ready").status_code == 200:
                    return True
            time.sleep(0.05)
    return False


@contextlib.contextmanager
def install_rig(
    tmp: Path, devices: list[str]
) -> Iterator[tuple[Rig, set[subprocess.Popen[bytes]]]]:
    """The rig (broker with an account per device, artifact server, publisher) and the set
    of agent processes alive, every one of them killed on the way out."""
    processes: set[subprocess.Popen[bytes]] = set()
    try:
        with open_rig(tmp, devices) as rig:
            yield rig, processes
    finally:
        for process in list(processes):
            process.kill()
            process.wait(10)


def install_chaos(m: int, batch: int, seed: int, tmp: Path) -> tuple[list[InstallKill], int, float]:
    began = time.perf_counter()
    rng = random.Random(seed)
    aims = [PHASES[i % len(PHASES)] for i in range(m)]
    rng.shuffle(aims)
    devices = [f"kill-{i:03d}" for i in range(m)]
    progress(f"part 2: {m} agents, {batch} at a time; building the models")
    abort = threading.Event()
    with install_rig(tmp, devices) as (rig, processes):
        v1 = make_model(rig.model_key, version=1)
        v2 = make_model(
            rig.model_key, version=2, algorithm="random_forest", rows=RF_ROWS, params=RF_PARAMS
        )
        models = Models(v1, v2)
        rig.artifacts.add(v1[0].sha256, v1[1])
        rig.artifacts.add(v2[0].sha256, v2[1], mode="slow")
        trust = TrustStore.model_validate_json(rig.trust_path.read_bytes())
        watch = StateWatch(rig.broker, abort)
        lock = threading.Lock()
        seeds = [rng.randrange(2**32) for _ in devices]
        results: list[InstallKill] = []
        try:
            with ThreadPoolExecutor(batch, thread_name_prefix="install-chaos") as pool:
                futures = [
                    pool.submit(
                        run_one,
                        rig,
                        watch,
                        models,
                        trust,
                        device_id,
                        aim,
                        random.Random(s),
                        processes,
                        lock,
                    )
                    for device_id, aim, s in zip(devices, aims, seeds, strict=True)
                ]
                try:
                    for i, future in enumerate(futures, 1):
                        result = future.result()
                        results.append(result)
                        progress(
                            f"part 2: {i}/{m} {result.device_id} aimed at {result.aimed}, "
                            f"killed in {result.observed} ({result.at}; reported "
                            f"{result.reported}) → "
                            f"{result.outcome}{' ' + result.detail if result.detail else ''}"
                        )
                except BaseException:
                    abort.set()
                    watch.wake()
                    for future in futures:
                        future.cancel()
                    raise
        finally:
            watch.close()
    return results, len(v2[1]), time.perf_counter() - began


OBSERVED = ("download", "verify", "activation", "probation", "committed", "before download")


def print_install_chaos(results: list[InstallKill], model_bytes: int, seconds: float) -> None:
    print(
        f"\n## 2. {len(results)} agents (edgefleet agent processes) killed -9 mid-install of a "
        f"{model_bytes:,}-byte model, then restarted on the same data dir ({seconds:.0f} s)"
    )
    print(
        f"  {'':<12}{'':>7}   {'killed in (read from its data dir)':<74}"
        f"{'serving a verified model after the restart'}"
    )
    print(
        f"  {'aimed at':<12}{'agents':>7}   "
        + "".join(f"{k:>11}" for k in OBSERVED[:-1])
        + f"{'other':>8}      {'new':>5}{'previous':>9}{'none':>6}{'infer ok':>10}"
        f"{'restart → v2 p50':>18}{'max':>7}"
    )
    for aimed in (*PHASES, "all"):
        rows = [r for r in results if aimed in ("all", r.aimed)]
        if not rows:
            continue
        observed = Counter(r.observed for r in rows)
        outcomes = Counter(r.outcome for r in rows)
        other = len(rows) - outcomes["new"] - outcomes["previous"]
        recovered = [r.recovered_s for r in rows if r.recovered_s is not None]
        p50 = f"{statistics.median(recovered):.1f} s" if recovered else "-"
        worst = f"{max(recovered):.1f} s" if recovered else "-"
        print(
            f"  {aimed:<12}{len(rows):>7}   "
            + "".join(f"{observed[k]:>11}" for k in OBSERVED[:-1])
            + f"{len(rows) - sum(observed[k] for k in OBSERVED[:-1]):>8}      "
            f"{outcomes['new']:>5}{outcomes['previous']:>9}{other:>6}"
            f"{sum(r.api_ok for r in rows):>10}{p50:>18}{worst:>7}"
        )
    points = Counter(f"{r.observed}: {r.at}" for r in results if r.observed != "download")
    downloaded = [r.at.split("%")[0] for r in results if r.observed == "download"]
    print("  where in the phase: " + "; ".join(f"{n} × {k}" for k, n in sorted(points.items())))
    if downloaded:
        print(f"  download killed at {', '.join(sorted(downloaded, key=int))} % of the artifact")
    left = [r for r in results if r.leftovers]
    print(
        f"  temp files of interrupted atomic writes left in the data dir: {len(left)} agents"
        + (f" (e.g. {left[0].device_id}: {', '.join(left[0].leftovers[:3])})" if left else "")
    )
    for r in results:
        if r.outcome not in ("new", "previous") or not r.api_ok or r.detail:
            print(f"  ✗ {r.device_id} ({r.aimed}, killed in {r.observed}): {r.outcome} {r.detail}")


# --- figures ----------------------------------------------------------------------------------


def record_broker(results: Results, out: BrokerChaos) -> None:
    group = (
        f"broker killed -9 ×{len(out.kills)} during a rollout of a "
        f"{out.model_bytes / 1e6:.1f} MB model to {out.agents} agents"
    )
    total = results.add(group, "agents", out.agents, "count", better="higher")
    results.add(
        group,
        "converged (serving the new version)",
        out.converged,
        "count",
        better="higher",
        baseline=total,
        target="≥ 1×",
        headline=True,
        note=f"rollout {out.status}",
    )
    kills = results.add(group, "broker kills", len(out.kills), "count")
    results.add(
        group,
        "kills while the rollout ran",
        sum(k.rollout_running for k in out.kills),
        "count",
        better="higher",
        baseline=kills,
    )
    made = results.add(group, "telemetry windows made", out.windows_made, "count", better="higher")
    results.add(
        group,
        "windows stored exactly once",
        out.windows_stored,
        "count",
        better="higher",
        baseline=made,
        target="≥ 1×",
    )
    results.add(group, "windows lost", out.windows_lost, "count", headline=True)
    results.add(group, "windows duplicated", out.windows_duplicated, "count", headline=True)
    results.add(
        group,
        "partial models served",
        len(out.partial_while_running) + len(out.partial_at_end),
        "count",
        headline=True,
        note=f"{out.swaps_checked} swaps and {out.agents} final models",
    )
    if out.succeeded_s is not None:
        results.add(group, "POST /rollouts → succeeded", out.succeeded_s, "s")


def record_install(results: Results, runs: list[InstallKill], model_bytes: int) -> None:
    group = f"agents killed -9 mid-install of a {model_bytes / 1e6:.1f} MB model, restarted"
    total = results.add(group, "agents killed", len(runs), "count", better="higher")
    verified = sum(r.outcome in ("new", "previous") and r.api_ok for r in runs)
    results.add(
        group,
        "serving a verified model after the restart",
        verified,
        "count",
        better="higher",
        baseline=total,
        target="≥ 1×",
        headline=True,
    )
    results.add(
        group,
        "on the new version",
        sum(r.outcome == "new" for r in runs),
        "count",
        better="higher",
        baseline=total,
    )
    results.add(
        group,
        "on the previous version",
        sum(r.outcome == "previous" for r in runs),
        "count",
        baseline=total,
    )
    results.add(
        group,
        "partial or unverified models served",
        sum(r.outcome in ("partial", "unverified", "unknown") for r in runs),
        "count",
        headline=True,
    )
    for phase in PHASES:
        results.add(
            group,
            f"killed in {phase}",
            sum(r.observed == phase for r in runs),
            "count",
            better="higher",
        )


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 agents, 3 kills; 10 agents")
    parser.add_argument("--agents", type=int, help="part 1's fleet (default 200)")
    parser.add_argument("--broker-kills", type=int, help="part 1's broker kills (default 20)")
    parser.add_argument("--install-kills", type=int, help="part 2's agents (default 100)")
    parser.add_argument("--batch", type=int, help="part 2's agent processes at once (10)")
    parser.add_argument("--parts", default="broker,install", help="broker, install or both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    add_json_argument(parser)
    args = parser.parse_args()
    n = args.agents or (20 if args.quick else 200)
    kills = args.broker_kills if args.broker_kills is not None else (3 if args.quick else 20)
    m = args.install_kills if args.install_kills is not None else (10 if args.quick else 100)
    batch = args.batch or (5 if args.quick else 10)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts <= {"broker", "install"}:
        parser.error("--parts: broker, install or both")
    logging.basicConfig(level=logging.CRITICAL)  # LogTally counts the warnings instead
    logging.getLogger().setLevel(logging.WARNING)

    command = " ".join(["benchmarks/chaos.py", *sys.argv[1:]])
    print(f"# .venv/bin/python {command}")
    print(f"# {os.cpu_count()} CPUs, {mosquitto_version()}, seed {args.seed}")
    results = Results("chaos")
    failed: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-chaos-"))
    try:
        if "broker" in parts:
            out = asyncio.run(broker_chaos(n, kills, args.seed, tmp / "broker-chaos"))
            print_broker_chaos(out)
            record_broker(results, out)
            failed += broker_failures(out)
        if "install" in parts:
            runs, size, seconds = install_chaos(m, batch, args.seed, tmp / "install-chaos")
            print_install_chaos(runs, size, seconds)
            record_install(results, runs, size)
            bad = [r for r in runs if r.outcome not in ("new", "previous") or not r.api_ok]
            if bad:
                failed.append(f"{len(bad)} of {len(runs)} killed agents serve no verified model")
    finally:
        if args.keep:
            print(f"# kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results.write(args.json)
    print(f"\n# total {time.perf_counter() - _BEGAN:.0f} s")
    if failed:  # the figures are written; the run says it did not hold
        print(f"# FAILED: {'; '.join(failed)}")
        sys.exit(1)


def broker_failures(out: BrokerChaos) -> list[str]:
    """What part 1 claims and did not hold."""
    checks = {
        f"rollout {out.status}": out.status == "succeeded",
        f"{out.converged} of {out.agents} agents converged": out.converged == out.agents,
        f"{out.windows_lost} windows lost": out.windows_lost == 0,
        f"{out.windows_duplicated} windows stored twice": out.windows_duplicated == 0,
        f"{out.windows_unknown} windows stored but never made": out.windows_unknown == 0,
        f"{out.windows_waiting} windows still unacknowledged": out.windows_waiting == 0,
        "partial or unverified models served": not (
            out.partial_while_running or out.partial_at_end
        ),
    }
    return [claim for claim, held in checks.items() if not held]


if __name__ == "__main__":
    main()
