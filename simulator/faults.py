"""Faults the simulator injects on purpose: a model version that answers the same as its
base but ~100× slower (a latency regression a rollout gate must stop at the canary),
imported through the control plane's API as a model trained elsewhere would be; and a
relay that stalls the network of some devices."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np


def slow_variant(model_bytes: bytes, size: int = 2000) -> bytes:
    """The same model with a compute-heavy branch whose result is multiplied by zero and added
    to the probabilities: identical outputs (golden vectors still hold), a few ms per row.
    The kind of latency regression a rollout gate must catch."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_model_from_string(model_bytes)
    graph = proto.graph
    for node in graph.node:
        node.output[:] = ["probabilities_fast" if o == "probabilities" else o for o in node.output]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.full((50, 50), 1e-4, np.float32), "slow_w_tile"),
            numpy_helper.from_array(np.array([size // 50, size // 50], np.int64), "slow_w_reps"),
            numpy_helper.from_array(np.array([1, size // 6 + 1], np.int64), "slow_x_reps"),
            numpy_helper.from_array(np.array([0, 0], np.int64), "slow_starts"),
            numpy_helper.from_array(np.array([2**62, size], np.int64), "slow_ends"),
            numpy_helper.from_array(np.array([1], np.int64), "slow_axes"),
            numpy_helper.from_array(np.array(0.0, np.float32), "slow_zero"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Tile", ["slow_w_tile", "slow_w_reps"], ["slow_w"]),
            helper.make_node("Tile", ["input", "slow_x_reps"], ["slow_x_wide"]),
            helper.make_node("Slice", ["slow_x_wide", "slow_starts", "slow_ends"], ["slow_x"]),
            helper.make_node("MatMul", ["slow_x", "slow_w"], ["slow_y1"]),
            helper.make_node("MatMul", ["slow_y1", "slow_w"], ["slow_y2"]),
            helper.make_node("MatMul", ["slow_y2", "slow_w"], ["slow_y3"]),
            helper.make_node("ReduceSum", ["slow_y3", "slow_axes"], ["slow_sum"], keepdims=1),
            helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_zeros"]),
            helper.make_node("Add", ["probabilities_fast", "slow_zeros"], ["probabilities"]),
        ]
    )
    onnx.checker.check_model(proto)
    return proto.SerializeToString()  # type: ignore[no-any-return]


def register_slow_version(
    api: httpx.Client, base_version: int, model: str = "fault", timeout: float = 180
) -> int:
    """Import, through the control plane's API like any model trained elsewhere, a version
    of ``model`` that answers as ``base_version`` does but ~100x slower (``slow_variant``),
    checked against the base version's dataset; its number once the import job is done."""
    base = _ok(api.get(f"/models/{model}/versions/{base_version}")).json()
    manifest = base["manifest"]
    slow = slow_variant(_ok(api.get(base["artifact_url"].removeprefix("/api/v1"))).content)
    job = _ok(
        api.post(
            f"/models/{model}/import",
            params={
                "dataset_id": manifest["lineage"]["dataset_id"],
                "task": manifest["output"]["task"],
                "classes": manifest["output"]["classes"],
                "filename": f"{model}-v{base_version}-slow.onnx",
            },
            content=slow,
            headers={"Content-Type": "application/octet-stream"},
        )
    ).json()
    deadline = time.monotonic() + timeout
    while (job := _ok(api.get(f"/jobs/{job['id']}")).json())["status"] not in (
        "succeeded",
        "failed",
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"import job {job['id']} still {job['status']} after {timeout} s")
        time.sleep(0.1)
    if job["status"] != "succeeded":
        raise RuntimeError(f"import of the slow variant failed: {job['error']}")
    return int(job["result_version"])


def _ok(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise RuntimeError(f"{response.request.url}: HTTP {response.status_code} {response.text}")
    return response


class StallProxy:
    """A TCP relay between some agents and a server (the broker, the control plane) that can
    stall: while stalled, bytes are held in both directions (connections stay open, nothing
    gets through), as on a congested or flapping uplink. With ``rate_bytes_per_second`` each
    direction of each connection is also held to that rate, as on a slow uplink. Runs on the
    caller's event loop."""

    def __init__(
        self, target_host: str, target_port: int, rate_bytes_per_second: int | None = None
    ) -> None:
        self.target = (target_host, target_port)
        self.rate = rate_bytes_per_second
        self.host = "127.0.0.1"
        self.port = 0
        self.stalls = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stall(self) -> None:
        self.stalls += 1
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def stop(self) -> None:
        self._open.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            step = max(1, self.rate // 20) if self.rate else 65536
            while data := await reader.read(65536):
                for start in range(0, len(data), step):
                    await self._open.wait()
                    writer.write(data[start : start + step])
                    await writer.drain()
                    if self.rate:
                        await asyncio.sleep(0.05)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()  # one side ended: end the other, so the agent reconnects
