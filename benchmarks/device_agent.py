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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

# Not `agent.py`: a script's directory comes first on sys.path, so that name would shadow the
# `agent` package for every benchmark here, and `mypy .` would see two modules named `agent`.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the project's packages, run from anywhere

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

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


def bench_inference(agent: AgentThread, models: list[tuple[str, str, bytes]], repeats: int) -> None:
    a = agent.a
    port = a.settings.api_port
    X = sensor_rows(64, seed=3)[0].astype(np.float32)
    print(f"\n## 1. Inference latency, µs (in-process agent {DEVICE}, its HTTP API on :{port})")
    print("    ×ort = median over bare onnxruntime session.run on the same bytes with the")
    print("    agent's session options (agent.inference.session_for: 1 intra-op thread).")
    print("    HTTP: one keep-alive connection; client and server share this process's GIL.")
    print(f"{'model':<15}{'rows':>5}  {'path':<46}{'median':>9}{'[p99]':>10}{'×ort':>8}")
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
        raw = RawHttp(port)
        stack.callback(raw.close)
        for path, call in http_paths(client, raw, "GET", "/v2/health/live"):
            med, p99 = timings_us(call, repeats, warmup=100)
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
                ort_median = 0.0
                for path, call in paths:
                    med, p99 = timings_us(call, n, warmup=100)
                    ort_median = ort_median or med
                    print(
                        f"{label:<15}{rows:>5}  {path:<46}{med:>9.1f}{p99:>10.1f}"
                        f"{med / ort_median:>7.1f}x"
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


def bench_footprint(r: Rig, logreg: Model, idle_seconds: float, repeats: int) -> None:
    manifest, model_bytes = logreg
    api_port = free_port()
    config = write_config(r, api_port)
    base = f"http://127.0.0.1:{api_port}"
    log_path = r.tmp / f"{SUB_DEVICE}.log"
    print(f"\n## 2. Footprint: `python -m edgefleet agent --config …` ({manifest.size:,} B logreg)")
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(log_path.open("wb"))
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "edgefleet", "agent", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        stack.callback(stop_process, process)
        client = stack.enter_context(httpx.Client(base_url=base, timeout=2))

        def answers(path: str) -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"agent exited {process.returncode}:\n{log_path.read_text()}")
            try:
                return client.get(path).status_code == 200
            except httpx.TransportError:
                return False

        while not answers("/v2/health/live"):
            if time.perf_counter() - start > 60:
                raise RuntimeError(f"agent not live after 60 s:\n{log_path.read_text()}")
            time.sleep(0.005)
        startup = time.perf_counter() - start
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

        # Cross-check of part 1 without a shared GIL (client here, server in the agent
        # process), with the agent's own CPU per request from /proc.
        X = sensor_rows(64, seed=3)[0].astype(np.float32)
        raw = RawHttp(api_port)
        stack.callback(raw.close)
        http_rows: list[tuple[int, str, float, float, float]] = []
        requests = 0
        for rows in (1, 64):
            n = repeats if rows == 1 else max(100, repeats // 4)
            body = v2_body("input", np.ascontiguousarray(X[:rows]))
            for path, call in http_paths(client, raw, "POST", "/v2/models/fault/infer", body):
                cpu_before = proc_cpu_seconds(process.pid)
                med, p99 = timings_us(call, n, warmup=100)
                cpu_us = (proc_cpu_seconds(process.pid) - cpu_before) / (n + 100) * 1e6
                requests += n + 100
                http_rows.append((rows, path, med, p99, cpu_us))
        rss_after = proc_rss_mib(process.pid)

    model_path = r.tmp / "baseline.onnx"
    model_path.write_bytes(model_bytes)
    rss_bare = rss_of_script(BARE_SCRIPT)
    rss_base = rss_of_script(BASELINE_SCRIPT, str(model_path))
    print(f"start-up (process start → GET /v2/health/live 200)     {startup * 1000:8.0f} ms")
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
        (f"edgefleet agent, after {requests:,} more HTTP requests", rss_after),
    ):
        print(f"{label:<50}{rss:>8.1f}{rss / rss_base:>11.2f}x")
    print("HTTP to the agent process from this one (no shared GIL), µs; agent CPU per request")
    print("from its utime+stime (10 ms ticks: an average, warm-up included)")
    print(f"{'rows':>6}  {'path':<46}{'median':>9}{'[p99]':>10}{'agent CPU':>11}")
    for rows, path, med, p99, cpu_us in http_rows:
        print(f"{rows:>6}  {path:<46}{med:>9.1f}{p99:>10.1f}{cpu_us:>11.0f}")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (~1 minute)")
    args = parser.parse_args()
    repeats = 400 if args.quick else 2000
    reps = 3 if args.quick else 5
    idle_seconds = 5.0 if args.quick else 10.0

    began = time.perf_counter()
    print(f"# .venv/bin/python benchmarks/device_agent.py{' --quick' if args.quick else ''}")
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
            bench_inference(
                agent,
                [("logreg", "fault", logreg[1]), ("random forest", "fault-rf", rf[1])],
                repeats,
            )
            bench_footprint(r, logreg, idle_seconds, repeats)
            bench_deploys(
                r, agent, [("random forest 1MB", rf_1mb), ("random forest 10MB", rf_10mb)]
            )
        finally:
            agent.stop()
    print(f"\n# total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
