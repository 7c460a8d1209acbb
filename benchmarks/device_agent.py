"""The device agent's own costs, measured side by side in one run against a private mosquitto:

1. inference latency (1 and 64 rows, logreg and a ~1 MB random forest): bare onnxruntime
   ``session.run`` vs ``Agent.predict`` (pre-validated float32 array) vs
   ``Agent.predict_rows`` (lists, validated) vs the local HTTP API (v2 infer, v1 predict)
   over one keep-alive ``httpx.Client``, with the ratio to bare onnxruntime;
2. footprint of ``edgefleet agent --config …`` serving one model: start-up time, RSS against
   a bare python + onnxruntime process holding the same model, idle CPU;
3. deploy latency: signed desired state published → new model active, for ~1 MB and ~10 MB
   random forests (a distinct artifact each time, so every deploy downloads).

    .venv/bin/python benchmarks/device_agent.py [--quick]

Everything it starts (mosquitto, agent subprocesses, an artifact server, temp dirs) is
stopped and removed on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

# Not `agent.py`: a script's directory comes first on sys.path, so that name would shadow the
# `agent` package for every benchmark here, and `mypy .` would see two modules named `agent`.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the project's packages, run from anywhere

import base_profile  # noqa: E402  (benchmarks/base_profile.py)
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from results import Figure, Results, add_json_argument  # noqa: E402  (benchmarks/results.py)

from agent.config import AgentSettings  # noqa: E402
from agent.fetch import hash_file  # noqa: E402
from agent.inference import load_model, session_for  # noqa: E402
from shared.manifest import ModelManifest  # noqa: E402
from shared.messages import Phase  # noqa: E402
from shared.signing import SigningKey  # noqa: E402
from shared.topics import Channel  # noqa: E402
from simulator.broker import free_port  # noqa: E402
from simulator.data import FEATURES, sensor_rows  # noqa: E402
from simulator.rig.agent_rig import Rig, open_rig  # noqa: E402
from simulator.rig.agents import AgentThread, wait_until  # noqa: E402
from simulator.rig.models import make_model  # noqa: E402
from simulator.rig.procs import proc_cpu_seconds, proc_rss_mib  # noqa: E402

DEVICE = "bench-inproc"
SUB_DEVICE = "bench-proc"
MiB = 1024 * 1024
# ~1 MB and ~10 MB ONNX random forests (unbounded depth: size grows with rows × trees).
RF_1MB: dict[str, Any] = {"rows": 2000, "params": {"n_estimators": 30, "max_depth": None}}
RF_10MB: dict[str, Any] = {"rows": 5000, "params": {"n_estimators": 120, "max_depth": None}}

Model = tuple[ModelManifest, bytes]
# The interpreter `edgefleet agent` runs under: this one, or a base install's
# (--base-profile: the agent alone, as on a device; the checkout's code either way, as the
# agent process starts in the checkout).
AGENT_PYTHON = [sys.executable]


# --- measuring --------------------------------------------------------------------------------


def timings_us(call: Callable[[], object], repeats: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        call()
    samples = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter_ns()
        call()
        samples[i] = (time.perf_counter_ns() - start) / 1000
    return float(np.median(samples)), float(np.percentile(samples, 99))


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ok(response: httpx.Response) -> httpx.Response:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url}: HTTP {response.status_code} {response.text}")
    return response


class RawHttp:
    """A bare keep-alive HTTP/1.1 client on one socket (TCP_NODELAY), with requests encoded
    beforehand: what is left of a round trip is the agent's cost plus the loopback."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    @staticmethod
    def encode(method: str, path: str, body: bytes = b"") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + body

    def exchange(self, request: bytes) -> bytes:
        self.sock.sendall(request)
        status = self.file.readline()
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = self.file.read(length)
        if not status.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"{request[:60]!r}: {status!r} {payload[:300]!r}")
        return payload

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def v2_body(tensor: str, batch: np.ndarray[Any, np.dtype[np.float32]]) -> bytes:
    rows, width = batch.shape
    tensor_json = {
        "name": tensor,
        "shape": [rows, width],
        "datatype": "FP32",
        "data": batch.reshape(-1).tolist(),
    }
    return json.dumps({"inputs": [tensor_json]}).encode()


# --- the rig: broker, keys, artifact server, publisher (simulator.rig.agent_rig) -------------


@contextlib.contextmanager
def rig() -> Iterator[Rig]:
    with (
        tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp,
        open_rig(Path(tmp), devices=(DEVICE, SUB_DEVICE)) as opened,
    ):
        yield opened


def start_agent_thread(r: Rig) -> AgentThread:
    agent = r.start_agent(
        device_id=DEVICE,
        api_port=free_port(),
        probation_seconds=0,  # committed at once: the figures are about inference
    )
    wait_until(agent.a.session.connected.is_set, what="in-process agent connected")
    return agent


def serving_sha(agent: AgentThread, name: str) -> str | None:
    slot = agent.a.updater.slots.get(name)
    current = slot.current if slot is not None else None
    return current.manifest.sha256 if current is not None else None


# --- 1. inference latency ---------------------------------------------------------------------


def http_paths(
    client: httpx.Client, raw: RawHttp, method: str, path: str, body: bytes = b""
) -> list[tuple[str, Callable[[], object]]]:
    """The same request through httpx and through the bare socket client."""
    headers = {"Content-Type": "application/json"} if body else {}
    request = partial(client.request, method, path, content=body or None, headers=headers)
    return [
        (f"{method} {path} (httpx)", partial(ok_call, request)),
        (f"{method} {path} (raw socket)", partial(raw.exchange, raw.encode(method, path, body))),
    ]


def ok_call(request: Callable[[], httpx.Response]) -> None:
    ok(request())


def rounds_us(
    calls: list[Callable[[], object]], repeats: int, warmup: int
) -> list[tuple[float, float]]:
    """Median and p99 µs of each call, the calls taken in turn ``repeats`` times (so a busy
    spell of the machine falls on all of them alike)."""
    for _ in range(warmup):
        for call in calls:
            call()
    samples = np.empty((len(calls), repeats))
    clock = time.perf_counter_ns
    for i in range(repeats):
        for j, call in enumerate(calls):
            start = clock()
            call()
            samples[j, i] = clock() - start
    samples /= 1000
    return [(float(np.median(s)), float(np.percentile(s, 99))) for s in samples]


def bench_inference(
    agent: AgentThread, models: list[tuple[str, str, bytes]], repeats: int, results: Results
) -> None:
    a = agent.a
    port = a.settings.api_port
    X = sensor_rows(64, seed=3)[0].astype(np.float32)
    print(f"\n## 1. Inference latency, µs (in-process agent {DEVICE}, its HTTP API on :{port})")
    print("    ×ort = median over bare onnxruntime session.run on the same bytes with the")
    print("    agent's session options (agent.inference.session_for: 1 intra-op thread);")
    print("    the paths of a row taken in turn. HTTP: one keep-alive connection; client and")
    print("    server share this process's GIL (section 2b: each in its own process).")
    print(f"{'model':<15}{'rows':>5}  {'path':<46}{'median':>9}{'[p99]':>10}{'×ort':>8}")
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
        raw = RawHttp(port)
        stack.callback(raw.close)
        floor = http_paths(client, raw, "GET", "/v2/health/live")
        for (path, _), (med, p99) in zip(
            floor, rounds_us([call for _, call in floor], repeats, 100), strict=True
        ):
            print(f"{'HTTP floor':<15}{'-':>5}  {path:<46}{med:>9.1f}{p99:>10.1f}")
        for label, name, model_bytes in models:
            session = session_for(model_bytes)
            model = a.model(name)
            tensor = model.manifest.input.tensor.name
            for rows in (1, 64):
                batch = np.ascontiguousarray(X[:rows])
                n = repeats if rows == 1 else max(100, repeats // 4)
                paths: list[tuple[str, Callable[[], object]]] = [
                    ("onnxruntime session.run", partial(session.run, None, {tensor: batch})),
                    (
                        "Agent.predict (validated float32 array)",
                        partial(a.predict, name, batch, model),
                    ),
                    (
                        "Agent.predict_rows (lists, validated)",
                        partial(a.predict_rows, name, batch.tolist()),
                    ),
                    *http_paths(
                        client, raw, "POST", f"/v2/models/{name}/infer", v2_body(tensor, batch)
                    ),
                ]
                if rows == 1:
                    features = dict(zip(FEATURES, batch[0].tolist(), strict=True))
                    v1 = json.dumps({"model": name, "features": features}).encode()
                    paths += http_paths(client, raw, "POST", "/v1/predict", v1)
                # In-process paths in rounds of their own: an HTTP request between two calls
                # leaves the next one on cold caches.
                timed = rounds_us([call for _, call in paths[:3]], n, warmup=100)
                timed += rounds_us([call for _, call in paths[3:]], n, warmup=100)
                group = f"in-process, {label}, {rows} row{'s' if rows > 1 else ''}"
                ort_figure = results.add(group, paths[0][0], *timed[0][:1], "µs", p99=timed[0][1])
                for (path, _), (med, p99) in zip(paths, timed, strict=True):
                    print(
                        f"{label:<15}{rows:>5}  {path:<46}{med:>9.1f}{p99:>10.1f}"
                        f"{med / ort_figure.value:>7.1f}x"
                    )
                    if path.startswith("Agent."):
                        results.add(
                            group,
                            path,
                            med,
                            "µs",
                            p99=p99,
                            baseline=ort_figure,
                            target="≤ 1.3×" if path.startswith("Agent.predict ") else None,
                            headline=label == "logreg" and path.startswith("Agent.predict "),
                        )
                bookkeeping = timed[1][0] - ort_figure.value
                results.add(
                    group, "Agent.predict less session.run", bookkeeping, "µs", target="≤ 5 µs"
                )


# --- 2. footprint of `edgefleet agent` --------------------------------------------------------

BASELINE_SCRIPT = """\
import sys
import numpy, onnxruntime
o = onnxruntime.SessionOptions()
o.intra_op_num_threads = 1
o.inter_op_num_threads = 1
s = onnxruntime.InferenceSession(sys.argv[1], sess_options=o, providers=["CPUExecutionProvider"])
s.run(None, {"input": numpy.zeros((1, 6), dtype=numpy.float32)})
print([l for l in open("/proc/self/status") if l.startswith("VmRSS:")][0].split()[1])
"""
BARE_SCRIPT = """\
print([l for l in open("/proc/self/status") if l.startswith("VmRSS:")][0].split()[1])
"""


def rss_of_script(script: str, *args: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True
    )
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def write_config(r: Rig, api_port: int) -> Path:
    """The second device's agent on the shipped telemetry window, committing at once (deploy
    latency is measured up to "serving")."""
    return r.config_file(
        r.settings(
            SUB_DEVICE,
            api_port=api_port,
            window_seconds=AgentSettings.model_fields["window_seconds"].default,
            probation_seconds=0,
        )
    )


def start_agent_process(
    config: Path, log_path: Path, ready: str
) -> tuple[subprocess.Popen[bytes], float]:
    """``edgefleet agent --config`` started, and the seconds until ``ready`` answers 200."""
    port = AgentSettings.model_validate(tomllib.loads(config.read_text())).api_port
    command = [AGENT_PYTHON[0], "-m", "edgefleet", "agent", "--config", str(config)]
    server, seconds = start_server(AGENT, command, port, log_path, ready)
    return server.process, seconds


def bench_footprint(
    r: Rig, logreg: Model, idle_seconds: float, starts: int, results: Results
) -> None:
    manifest, model_bytes = logreg
    api_port = free_port()
    config = write_config(r, api_port)
    base = f"http://127.0.0.1:{api_port}"
    log_path = r.tmp / f"{SUB_DEVICE}.log"
    print(f"\n## 2. Footprint: `python -m edgefleet agent --config …` ({manifest.size:,} B logreg)")
    model_path = r.tmp / "baseline.onnx"
    model_path.write_bytes(model_bytes)
    baseline_starts = []
    for _ in range(starts):
        began = time.perf_counter()
        rss_of_script(BASELINE_SCRIPT, str(model_path))
        baseline_starts.append(time.perf_counter() - began)
    startups = []
    for _ in range(starts - 1):  # started and stopped: a fresh data dir, no model yet
        process, seconds = start_agent_process(config, log_path, "/v2/health/live")
        stop_process(process)
        startups.append(seconds)
    with contextlib.ExitStack() as stack:
        process, seconds = start_agent_process(config, log_path, "/v2/health/live")
        stack.callback(stop_process, process)
        startups.append(seconds)
        startup = statistics.median(startups)
        client = stack.enter_context(httpx.Client(base_url=base, timeout=2))

        def answers(path: str) -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"agent exited {process.returncode}:\n{log_path.read_text()}")
            try:
                return client.get(path).status_code == 200
            except httpx.TransportError:
                return False

        rss_empty = proc_rss_mib(process.pid)
        # The agent subscribes after it is live: publishing now still reaches it (retained).
        published = time.perf_counter()
        r.publish(r.next_desired(SUB_DEVICE, [manifest]))
        while not answers("/v2/models/fault/ready"):
            if time.perf_counter() - published > 60:
                raise RuntimeError(f"model not ready after 60 s:\n{log_path.read_text()}")
            time.sleep(0.002)
        ready = time.perf_counter() - published
        time.sleep(1.0)  # let the post-activation state reports and probation commit settle
        rss_serving = proc_rss_mib(process.pid)
        cpu0, wall0 = proc_cpu_seconds(process.pid), time.perf_counter()
        time.sleep(idle_seconds)
        cpu1, wall1 = proc_cpu_seconds(process.pid), time.perf_counter()
        idle_cpu = 100 * (cpu1 - cpu0) / (wall1 - wall0)
        body = v2_body("input", sensor_rows(1, seed=3)[0].astype(np.float32))

        for _ in range(1000):  # what serving leaves behind
            ok(client.post("/v2/models/fault/infer", content=body))
        rss_after = proc_rss_mib(process.pid)
    restarts = []  # the model installed: a device's reboot, up to serving it
    for _ in range(starts):
        process, seconds = start_agent_process(config, log_path, "/v2/models/fault/ready")
        stop_process(process)
        restarts.append(seconds)
    restart = statistics.median(restarts)
    rss_bare = rss_of_script(BARE_SCRIPT)
    rss_base = rss_of_script(BASELINE_SCRIPT, str(model_path))
    print(
        f"start-up (process start → GET /v2/health/live 200)     {startup * 1000:8.0f} ms"
        f"   (median of {starts}: {', '.join(f'{t * 1000:.0f}' for t in startups)})"
    )
    bare_ms = statistics.median(baseline_starts) * 1000
    print(
        f"restart, model on disk (→ GET /v2/models/fault/ready)  {restart * 1000:8.0f} ms"
        f"   (python + numpy + onnxruntime + the model: {bare_ms:.0f} ms)"
    )
    print(f"deploy (publish → GET /v2/models/fault/ready 200)       {ready * 1000:8.0f} ms")
    print(
        f"idle CPU over {idle_seconds:g} s (utime+stime, % of one core)   {idle_cpu:8.2f} %"
        f"   ({(cpu1 - cpu0) * 1000:.0f} ms CPU)"
    )
    print(f"{'RSS (VmRSS)':<50}{'MiB':>8}{'×baseline':>12}")
    for label, rss in (
        ("python, no imports", rss_bare),
        ("baseline: python + numpy + onnxruntime + same model", rss_base),
        ("edgefleet agent, live, no model yet", rss_empty),
        ("edgefleet agent, serving, idle", rss_serving),
        ("edgefleet agent, after 1,000 HTTP requests", rss_after),
    ):
        print(f"{label:<50}{rss:>8.1f}{rss / rss_base:>11.2f}x")
    group = "edgefleet agent process, logreg"
    results.add(group, "start-up to live", startup, "s", target="≤ 0.5 s", headline=True)
    bare_start = results.add(
        group,
        "python + numpy + onnxruntime + the model: start",
        statistics.median(baseline_starts),
        "s",
    )
    results.add(group, "restart to ready, the model on disk", restart, "s", baseline=bare_start)
    results.add(group, "idle CPU", idle_cpu, "%", target="≤ 1 %")
    bare = results.add(group, "python + numpy + onnxruntime + the model", rss_base, "MiB")
    results.add(group, "RSS serving, after 1,000 requests", rss_after, "MiB", baseline=bare)
    results.add(
        group,
        "RSS over python + numpy + onnxruntime + the model",
        rss_after - rss_base,
        "MiB",
        target="≤ 30 MiB",
        headline=True,
    )


# --- 2b. the agent's HTTP API against hand-written peers --------------------------------------

PEERS = {  # benchmarks/peers.py
    "fastapi-async": "FastAPI, async def",
    "fastapi-def": "FastAPI, def (threadpool)",
    "starlette": "bare Starlette route",
}
AGENT = "edgefleet agent"


@dataclass
class Server:
    label: str
    process: subprocess.Popen[bytes]
    port: int


def start_server(
    label: str, command: list[str], port: int, log: Path, live: str
) -> tuple[Server, float]:
    """A server process, once it answers ``live`` with 200; the seconds that took."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=REPO)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{label} exited {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(live).status_code == 200:
                    return Server(label, process, port), time.perf_counter() - started
            if time.perf_counter() - started > 60:
                stop_process(process)
                raise RuntimeError(f"{label}: {live} not 200 after 60 s:\n{log.read_text()}")
            time.sleep(0.002)


def interleaved(
    servers: list[Server], body: bytes, path: str, repeats: int, warmup: int
) -> dict[str, tuple[float, float, float]]:
    """Per server: median and p99 µs of ``repeats`` requests sent to each in turn (one
    keep-alive connection each), and its CPU µs per request over them."""
    clients = [RawHttp(s.port) for s in servers]
    request = RawHttp.encode("POST", path, body)
    try:
        for _ in range(warmup):
            for client in clients:
                client.exchange(request)
        cpu0 = [proc_cpu_seconds(s.process.pid) for s in servers]
        samples = np.empty((len(servers), repeats))
        for i in range(repeats):
            for j, client in enumerate(clients):
                start = time.perf_counter_ns()
                client.exchange(request)
                samples[j, i] = (time.perf_counter_ns() - start) / 1000
        cpu1 = [proc_cpu_seconds(s.process.pid) for s in servers]
    finally:
        for client in clients:
            client.close()
    return {
        s.label: (
            float(np.median(samples[j])),
            float(np.percentile(samples[j], 99)),
            (cpu1[j] - cpu0[j]) / repeats * 1e6,
        )
        for j, s in enumerate(servers)
    }


def throughput(server: Server, request_file: Path, seconds: float, connections: int) -> float:
    """Answers per second to ``connections`` concurrent keep-alive clients (another process:
    benchmarks/http_load.py)."""
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "http_load.py"),
            str(server.port),
            str(request_file),
            str(seconds),
            str(connections),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load on {server.label} failed:\n{out.stderr[-3000:]}")
    figures = json.loads(out.stdout)
    return float(figures["requests"] / figures["seconds"])


def bench_http_peers(
    r: Rig, logreg: Model, repeats: int, load_seconds: float, results: Results
) -> None:
    """The agent's local API (``edgefleet agent``, serving) against the peers on the same
    model file, each in its own process: latency and CPU per request, interleaved; answers
    per second to 8 concurrent clients; RSS."""
    manifest, model_bytes = logreg
    model_path = r.tmp / "peer-model.onnx"
    model_path.write_bytes(model_bytes)
    print("\n## 2b. Local HTTP inference against hand-written peers (each its own process)")
    print("    POST /v2/models/fault/infer, FP32 rows of the logreg; one keep-alive raw-socket")
    print(f"    client per server, {repeats} requests to each in turn; CPU: the server's")
    print("    utime+stime over them; concurrent: 8 keep-alive clients in another process.")
    with contextlib.ExitStack() as stack:
        api_port = free_port()
        config = write_config(r, api_port)
        process, _ = start_agent_process(config, r.tmp / "peer-agent.log", "/v2/health/live")
        agent = Server(AGENT, process, api_port)
        stack.callback(stop_process, agent.process)
        r.publish(r.next_desired(SUB_DEVICE, [manifest]))
        wait_until(
            lambda: (
                httpx.get(f"http://127.0.0.1:{api_port}/v2/models/fault/ready").status_code == 200
            ),
            what="the agent serving the model",
        )
        servers = [agent]
        for kind, label in PEERS.items():
            port = free_port()
            command = [sys.executable, str(REPO / "benchmarks" / "peers.py"), kind]
            peer, _ = start_server(
                label,
                [*command, str(model_path), str(port)],
                port,
                r.tmp / f"{kind}.log",
                "/v2/health/live",
            )
            stack.callback(stop_process, peer.process)
            servers.append(peer)
        X = sensor_rows(64, seed=3)[0].astype(np.float32)
        print(f"{'rows':>5}  {'server':<28}{'p50 µs':>9}{'p99 µs':>9}{'CPU µs':>9}{'req/s ×8':>10}")
        for rows in (1, 64):
            body = v2_body("input", np.ascontiguousarray(X[:rows]))
            path = "/v2/models/fault/infer"
            n = repeats if rows == 1 else max(300, repeats // 2)
            measured = interleaved(servers, body, path, n, warmup=200)
            request_file = r.tmp / f"request-{rows}.http"
            request_file.write_bytes(RawHttp.encode("POST", path, body))
            rates = {s.label: throughput(s, request_file, load_seconds, 8) for s in servers}
            group = f"HTTP v2 infer, logreg, {rows} row{'s' if rows > 1 else ''}"
            figures: dict[str, dict[str, Figure]] = {}
            for label in [*PEERS.values(), AGENT]:
                med, p99, cpu = measured[label]
                print(
                    f"{rows:>5}  {label:<28}{med:>9.0f}{p99:>9.0f}{cpu:>9.0f}{rates[label]:>10.0f}"
                )
                if label == AGENT:
                    continue
                figures[label] = {
                    "p50": results.add(f"{group}: p50", label, med, "µs", p99=p99),
                    "cpu": results.add(f"{group}: server CPU per request", label, cpu, "µs"),
                    "rate": results.add(
                        f"{group}: answers/s, 8 clients", label, rates[label], "/s", better="higher"
                    ),
                }
            med, p99, cpu = measured[AGENT]
            starlette, fastapi = figures[PEERS["starlette"]], figures[PEERS["fastapi-async"]]
            for kind, value, tail in (("p50", med, p99), ("cpu", cpu, None)):
                group_name = starlette[kind].group
                results.add(
                    group_name,
                    AGENT,
                    value,
                    "µs",
                    baseline=starlette[kind],
                    p99=tail,
                    target="≤ 1×",
                    headline=rows == 1,
                )
                results.add(
                    group_name,
                    f"{AGENT} (against FastAPI async)",
                    value,
                    "µs",
                    baseline=fastapi[kind],
                    p99=tail,
                    target="≤ 0.8×",
                )
            results.add(
                fastapi["rate"].group,
                AGENT,
                rates[AGENT],
                "/s",
                better="higher",
                baseline=fastapi["rate"],
                target="≥ 1.5×",
                headline=rows == 1,
            )
        print(
            f"{'':>5}  {'RSS MiB after':<28}"
            + "  ".join(f"{s.label}: {proc_rss_mib(s.process.pid):.1f}" for s in servers)
        )


# --- 3. deploy latency ------------------------------------------------------------------------


@dataclass
class Deploy:
    total_ms: float
    accept_ms: float | None  # publish → DOWNLOADING seen
    download_ms: float | None  # DOWNLOADING → VERIFYING
    verify_ms: float | None  # VERIFYING → new model active (hash, load, golden, install)


def deploy_once(r: Rig, agent: AgentThread, manifest: ModelManifest) -> Deploy:
    slot = agent.a.updater.slots[manifest.name]
    old = serving_sha(agent, manifest.name)
    assert old != manifest.sha256
    payload = r.next_desired(DEVICE, [manifest]).model_dump_json()
    topic = r.publisher.topics.device(DEVICE, Channel.DESIRED)
    seen: dict[Phase, float] = {}
    start = time.perf_counter()
    info = r.publisher.client.publish(topic, payload, qos=1, retain=True)
    while (current := slot.current) is None or current.manifest.sha256 != manifest.sha256:
        phase = slot.phase
        if phase not in seen:
            seen[phase] = time.perf_counter()
        if time.perf_counter() - start > 60:
            raise RuntimeError(f"v{manifest.version} not active after 60 s: {slot.status()}")
        time.sleep(0.001)
    active = time.perf_counter()
    info.wait_for_publish(10)
    wait_until(lambda: slot.phase is Phase.SERVING, what="probation committed")
    dl, ver = seen.get(Phase.DOWNLOADING), seen.get(Phase.VERIFYING)

    def ms(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else (b - a) * 1000

    return Deploy(
        total_ms=(active - start) * 1000,
        accept_ms=ms(start, dl),
        download_ms=ms(dl, ver),
        verify_ms=ms(ver, active),
    )


def bench_deploys(r: Rig, agent: AgentThread, sizes: list[tuple[str, list[Model]]]) -> None:
    print(f"\n## 3. Deploy latency, ms (in-process agent {DEVICE}, model 'fault-rf' serving)")
    print("    publish signed desired state → slots[name].current has the new sha256")
    print("    (1 ms poll); each deploy a distinct artifact, so each one downloads;")
    print("    probation_seconds = probation_requests = 0. Phases from slot.phase, polled:")
    print("    accept = publish → DOWNLOADING (MQTT, signature, state.json fsync),")
    print("    download = → VERIFYING (incl. fsync), verify = → active (sha256, onnxruntime")
    print("    load, golden vectors, install fsyncs)")
    print(
        f"{'model':<18}{'ONNX bytes':>12}{'n':>3}{'median':>9}{'max':>9}"
        f"{'accept':>9}{'download':>10}{'verify':>9}{'downloads':>11}"
    )
    for label, models in sizes:
        requests_before = len(r.artifacts.requests)
        results = []
        for manifest, data in models:
            r.artifacts.add(manifest.sha256, data)
            results.append(deploy_once(r, agent, manifest))
        downloads = len(r.artifacts.requests) - requests_before

        def med(values: list[float | None]) -> str:
            known = [v for v in values if v is not None]
            return f"{statistics.median(known):.1f}" if known else "-"

        totals = [d.total_ms for d in results]
        sizes_text = "/".join(f"{len(d) / MiB:.2f}" for _, d in models)
        print(
            f"{label:<18}{statistics.median(len(d) for _, d in models):>12,.0f}{len(results):>3}"
            f"{statistics.median(totals):>9.1f}{max(totals):>9.1f}"
            f"{med([d.accept_ms for d in results]):>9}{med([d.download_ms for d in results]):>10}"
            f"{med([d.verify_ms for d in results]):>9}{downloads:>6} of {len(results)}"
        )
        print(
            f"{'':<18}sizes MiB: {sizes_text}; totals ms: {', '.join(f'{t:.0f}' for t in totals)}"
        )
        # What the verify phase is made of, measured here on the installed file.
        manifest, _ = models[-1]
        path = agent.a.store.artifact_path(manifest.name, manifest.sha256)
        hash_ms = timings_us(partial(hash_file, path), 3, warmup=1)[0] / 1000
        load_ms = timings_us(partial(load_model, path, manifest), 3, warmup=1)[0] / 1000
        print(
            f"{'':<18}offline on the installed file: sha256 {hash_ms:.1f} ms, "
            f"load_model (session + golden vectors) {load_ms:.1f} ms"
        )


# --- main -------------------------------------------------------------------------------------


def build_models(
    key: SigningKey, reps: int
) -> tuple[Model, Model, list[Model], list[Model], float]:
    start = time.perf_counter()
    logreg = make_model(key, name="fault")
    rf = make_model(key, name="fault-rf", algorithm="random_forest", **RF_1MB)
    version = 1
    sizes: list[list[Model]] = []
    for spec, seed0 in ((RF_1MB, 100), (RF_10MB, 200)):
        built = []
        for i in range(reps):
            version += 1
            built.append(
                make_model(
                    key,
                    name="fault-rf",
                    version=version,
                    algorithm="random_forest",
                    seed=seed0 + i,
                    **spec,
                )
            )
        sizes.append(built)
    return logreg, rf, sizes[0], sizes[1], time.perf_counter() - start


PARTS = ("inference", "footprint", "peers", "deploy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (~2 minutes)")
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}"
    )
    parser.add_argument(
        "--base-profile",
        type=Path,
        metavar="DIR",
        help="run `edgefleet agent` from a venv holding the base install alone (built there by "
        "benchmarks/base_profile.py unless it exists), as a device would",
    )
    add_json_argument(parser)
    args = parser.parse_args()
    if args.base_profile is not None:
        AGENT_PYTHON[0] = str(base_profile.ensure(args.base_profile))
    parts = set(args.only.split(","))
    repeats = 400 if args.quick else 3000
    reps = 3 if args.quick else 5
    idle_seconds = 5.0 if args.quick else 10.0
    load_seconds = 2.0 if args.quick else 5.0
    results = Results("device_agent")

    began = time.perf_counter()
    print(f"# .venv/bin/python benchmarks/device_agent.py {' '.join(sys.argv[1:])}")
    print(f"# edgefleet agent runs under {AGENT_PYTHON[0]}")
    print(
        f"# Python {platform.python_version()}, onnxruntime {ort.__version__}, "
        f"numpy {np.__version__}, {os.cpu_count()} CPUs; medians [p99]"
    )
    with rig() as r:
        logreg, rf, rf_1mb, rf_10mb, build_s = build_models(r.model_key, reps)
        print(
            f"# built {2 + 2 * reps} signed models in {build_s:.1f} s: logreg "
            f"{len(logreg[1]):,} B, random forest {len(rf[1]):,} B"
        )
        for manifest, data in (logreg, rf):
            r.artifacts.add(manifest.sha256, data)
        if "footprint" in parts:
            bench_footprint(r, logreg, idle_seconds, 3 if args.quick else 7, results)
        if "peers" in parts:
            bench_http_peers(r, logreg, repeats, load_seconds, results)
        if parts & {"inference", "deploy"}:
            agent = start_agent_thread(r)
            try:
                r.publish(r.next_desired(DEVICE, [logreg[0], rf[0]]))
                wait_until(
                    lambda: (
                        serving_sha(agent, "fault") == logreg[0].sha256
                        and serving_sha(agent, "fault-rf") == rf[0].sha256
                    ),
                    what="both models serving",
                )
                if "inference" in parts:
                    bench_inference(
                        agent,
                        [("logreg", "fault", logreg[1]), ("random forest", "fault-rf", rf[1])],
                        repeats,
                        results,
                    )
                if "deploy" in parts:
                    bench_deploys(
                        r, agent, [("random forest 1MB", rf_1mb), ("random forest 10MB", rf_10mb)]
                    )
            finally:
                agent.stop()
    results.write(args.json)
    print(f"\n# total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
