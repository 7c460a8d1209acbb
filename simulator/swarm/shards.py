"""A swarm in several processes, one per broker: what a fleet larger than one process may
hold looks like here. ``RLIMIT_NOFILE`` is per process (capped at 20,000 on these
machines), and both a broker and a swarm hold one descriptor per session, so 100,000
sessions need several brokers (``simulator.swarm.edges``) and several swarm processes.

Each shard is ``python -m simulator.swarm.shards CONFIG``: a ``Swarm`` on one broker. It
prints one JSON line when every device is connected, then a line whenever what its devices
serve or its counters change (at most every ``REPORT_SECONDS``); a line on its stdin (or
its end) stops it the way ``Swarm.stop`` does. ``SwarmShards`` runs them and answers what
``simulator.swarm.scenario`` asks of a swarm: ``devices``, ``counters``, ``serving``,
``wait_serving``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.trust import TrustStore
from simulator.swarm.runner import Swarm, all_serving, wait_changed
from simulator.swarm.settings import SwarmCounters, SwarmSettings

REPORT_SECONDS = 0.1
SHARD_NICENESS = 10  # the swarm takes what the control plane and the brokers leave
STOP_SECONDS = 120.0


@dataclass
class Shard:
    settings: SwarmSettings
    devices: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None
    connected: float | None = None  # seconds its swarm took to connect, once it has
    serving: Counter[tuple[str, int]] = field(default_factory=Counter)
    counters: SwarmCounters = field(default_factory=SwarmCounters)
    unacked: int = 0  # telemetry windows waiting for the control plane's ack
    telemetry_off: bool = False  # it has stopped making windows (reports after say so)


class SwarmShards:
    """Swarm processes, one per ``SwarmSettings`` (broker), devices added to each."""

    def __init__(self, trust: TrustStore, settings: list[SwarmSettings], workdir: Path) -> None:
        self.trust = trust
        self.shards = [Shard(s) for s in settings]
        self.workdir = workdir
        self.devices: dict[str, int] = {}  # device → its shard
        self._changed = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    def add(self, shard: int, device_id: str, token: str, labels: dict[str, str]) -> None:
        self.shards[shard].devices.append((device_id, token, labels))
        self.devices[device_id] = shard

    @property
    def counters(self) -> SwarmCounters:
        """Every shard's counters added up (``last_accepted``: the latest)."""
        total = SwarmCounters()
        for shard in self.shards:
            for f in fields(SwarmCounters):
                mine, theirs = getattr(total, f.name), getattr(shard.counters, f.name)
                merged = max(mine, theirs) if f.name == "last_accepted" else mine + theirs
                setattr(total, f.name, merged)
        return total

    @property
    def serving(self) -> Counter[tuple[str, int]]:
        return sum((s.serving for s in self.shards), Counter())

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self.shards if s.process is not None]

    async def start(self, timeout: float = 600.0) -> float:  # noqa: ASYNC109  (error says who)
        """Start every shard; the seconds until all of them have connected all devices."""
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i, shard in enumerate(self.shards):
            config = self.workdir / f"shard-{i}.json"
            config.write_text(
                json.dumps(
                    {
                        "trust": self.trust.model_dump_json(),
                        "settings": asdict(shard.settings),
                        "devices": shard.devices,
                    }
                )
            )
            with (self.workdir / f"shard-{i}.log").open("ab") as log:
                # Niced: the devices of a real fleet do not share the control plane's
                # cores. Seven shards at the scheduler's fair share left the control plane
                # an eighth of two cores, and it fell minutes behind (its socket held MBs
                # unread) while they verified desired states it had sent.
                shard.process = await asyncio.create_subprocess_exec(
                    "nice",
                    "-n",
                    str(SHARD_NICENESS),
                    sys.executable,
                    "-m",
                    "simulator.swarm.shards",
                    str(config),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                )
            assert shard.process.stdout is not None  # a pipe, asked for above
            self._readers.append(asyncio.create_task(self._read(shard, shard.process.stdout)))
        await self._wait(
            lambda: all(s.connected is not None for s in self.shards),
            timeout,
            lambda: f"{sum(s.connected is None for s in self.shards)} swarm shards not connected",
        )
        return time.monotonic() - began

    async def _read(self, shard: Shard, stdout: asyncio.StreamReader) -> None:
        async for line in stdout:
            report = json.loads(line)
            if "connected" in report:
                shard.connected = report["connected"]
            if "telemetry_off" in report:
                shard.telemetry_off = True
            if "serving" in report:
                shard.serving = Counter({(m, v): n for m, v, n in report["serving"]})
                shard.counters = SwarmCounters(**report["counters"])
                shard.unacked = report["unacked"]
            self._changed.set()
        self._changed.set()  # its output ended: it exited

    def _failed(self) -> str | None:
        for i, shard in enumerate(self.shards):
            if shard.process is not None and shard.process.returncode not in (None, 0):
                log = (self.workdir / f"shard-{i}.log").read_text(errors="replace")
                return f"swarm shard {i} exited with {shard.process.returncode}: {log[-2000:]}"
        return None

    async def _wait(
        self,
        done: Callable[[], bool],
        timeout: float,  # noqa: ASYNC109  (the error names what is missing)
        what: Callable[[], str],
    ) -> float:
        return await wait_changed(self._changed, done, timeout, what, 1.0, self._failed)

    async def wait_serving(self, model: str, version: int, timeout: float) -> float:  # noqa: ASYNC109
        """Seconds until every device of every shard has installed and reported it."""
        done, what = all_serving(lambda: self.serving, len(self.devices), model, version)
        return await self._wait(done, timeout, what)

    def unacked(self) -> int:
        """Telemetry windows waiting for the control plane's ack, over all shards."""
        return sum(s.unacked for s in self.shards)

    async def _tell(self, command: bytes) -> None:
        for shard in self.shards:
            process = shard.process
            if process is not None and process.stdin is not None:
                with contextlib.suppress(ConnectionError):
                    process.stdin.write(command)
                    await process.stdin.drain()

    async def stop_telemetry(self, timeout: float = STOP_SECONDS) -> None:  # noqa: ASYNC109
        """No more windows (those in the outboxes are still sent until acknowledged).
        Returns once every shard has stopped, so the counts reported after it are final:
        a report read before a shard took the command may say 0 unacknowledged while it
        still makes windows."""
        for shard in self.shards:
            shard.telemetry_off = False
        await self._tell(b"telemetry-off\n")
        await self._wait(
            lambda: all(s.telemetry_off for s in self.shards),
            timeout,
            lambda: f"{sum(not s.telemetry_off for s in self.shards)} shards still make windows",
        )

    async def set_window(self, seconds: float) -> None:
        """Telemetry windows of ``seconds`` from now on (``Swarm.set_window``)."""
        await self._tell(f"telemetry-window {seconds}\n".encode())

    async def wait_acknowledged(self, timeout: float) -> float:  # noqa: ASYNC109
        """Seconds until every shard has had every window it made acknowledged."""
        return await self._wait(
            lambda: self.unacked() == 0,
            timeout,
            lambda: f"{self.unacked()} windows unacknowledged",
        )

    async def stop(self) -> None:
        """Each shard's devices say offline and disconnect; then the shards exit."""
        await self._tell(b"stop\n")
        for shard in self.shards:
            process = shard.process
            if process is None:
                continue
            try:
                await asyncio.wait_for(process.wait(), STOP_SECONDS)
            except TimeoutError:
                process.kill()
                await process.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def run_shard(config: dict[str, Any]) -> None:
    """One shard: its swarm connected and reporting; ``telemetry-off`` on stdin stops its
    windows (those unacknowledged are still sent), ``telemetry-window S`` makes them S
    seconds long, ``stop`` or EOF stops it."""
    trust = TrustStore.model_validate_json(config["trust"])
    swarm = Swarm(trust, SwarmSettings(**config["settings"]))
    for device_id, token, labels in config["devices"]:
        swarm.add(device_id, token, labels)

    def emit(report: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()

    emit({"connected": await swarm.start()})
    command = asyncio.ensure_future(asyncio.to_thread(sys.stdin.readline))
    last: tuple[Any, ...] = ()
    while True:
        stopped = False
        if command.done():
            verb, _, argument = command.result().strip().partition(" ")
            if verb == "telemetry-off":
                swarm.stop_telemetry()
                stopped = True
            elif verb == "telemetry-window":
                swarm.set_window(float(argument))
            else:
                break
            command = asyncio.ensure_future(asyncio.to_thread(sys.stdin.readline))
        serving = [[m, v, n] for (m, v), n in swarm.serving.items() if n]
        now = (serving, asdict(swarm.counters), swarm.unacked())
        if now != last:
            emit({"serving": serving, "counters": now[1], "unacked": now[2]})
            last = now
        if stopped:  # after the report of what it had made by then
            emit({"telemetry_off": True})
        await asyncio.wait([command], timeout=REPORT_SECONDS)
    await swarm.stop()


if __name__ == "__main__":
    asyncio.run(run_shard(json.loads(Path(sys.argv[1]).read_text())))
