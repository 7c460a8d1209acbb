"""Many real device agents in one process: the simulator's fleet.

Every simulated device is a real ``agent.runtime.Agent`` (the code a device runs, not a model
of it), so a fleet exercises the broker, the control plane and the agent's update path as
real devices would. All agents share the calling thread's asyncio loop: aiomqtt drives paho
from that loop (epoll), so the number per process is bounded by file descriptors and memory,
not by paho's select() loop (at most ~1,024 descriptors). Call ``raise_fd_limit()`` before
starting a large fleet, and before starting a broker subprocess, which inherits the limit.

    fleet = SimulatedFleet()
    await fleet.start([device_settings(...), ...])
    await fleet.wait_connected(60)
    ...
    await fleet.wait_serving("fault", 3, timeout=120)
    await fleet.stop()
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from agent.config import AgentSettings
from agent.runtime import Agent, load_trust_store
from shared.trust import TrustStore

log = logging.getLogger(__name__)

# Linux's ceiling for RLIMIT_NOFILE when the hard limit reads "unlimited".
_NR_OPEN = Path("/proc/sys/fs/nr_open")
_DEFAULT_NR_OPEN = 1 << 20
POLL_SECONDS = 0.02
CANCEL_GRACE_SECONDS = 10.0


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the new soft limit.
    Each agent holds an MQTT socket, an HTTP connection while downloading and its outbox
    database (three descriptors in WAL mode), so the usual soft limit of 1,024 stops a fleet
    at a few hundred agents."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # setrlimit refuses more than fs.nr_open
        try:
            target = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            target = _DEFAULT_NR_OPEN
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def device_settings(
    device_id: str,
    *,
    broker_host: str,
    broker_port: int,
    token: str,
    control_plane_url: str,
    trust_store: Path,
    data_dir: Path,
    **overrides: object,
) -> AgentSettings:
    """Settings of one simulated device: MQTT username = device id, password = its token,
    data under ``data_dir / device_id``. No local inference API by default (each would take a
    port and an HTTP thread) and one telemetry window an hour (set ``window_seconds`` for
    telemetry traffic); ``overrides`` replace any of these."""
    values: dict[str, object] = {
        "device_id": device_id,
        "broker_url": f"mqtt://{device_id}:{token}@{broker_host}:{broker_port}",
        "control_plane_url": control_plane_url,
        "token": token,
        "trust_store": trust_store,
        "data_dir": data_dir / device_id,
        "api_port": 0,
        "window_seconds": 3600.0,
    }
    values.update(overrides)
    return AgentSettings.model_validate(values)


class SimulatedFleet:
    """Real agents in the running event loop. ``agents`` holds every agent started, running
    or stopped (a stopped agent stays inspectable); starting a device id again replaces it,
    as a device reboot would."""

    def __init__(
        self,
        trust: TrustStore | None = None,
        *,
        build_concurrency: int = 8,
        stop_timeout: float = 30.0,
    ) -> None:
        """``trust``: one trust store for every agent (default: each agent's
        ``trust_store`` file, read once per distinct path). ``build_concurrency``: agents
        constructed at once, in worker threads. ``stop_timeout``: how long ``stop`` waits
        for agents to go offline cleanly before cancelling them."""
        self.agents: dict[str, Agent] = {}
        self.errors: dict[str, BaseException] = {}  # device id → why its agent ended early
        self.build_concurrency = build_concurrency
        self.stop_timeout = stop_timeout
        self._trust = trust
        self._trust_by_path: dict[Path, TrustStore] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()

    # --- life cycle ---------------------------------------------------------------------

    async def start(self, settings: list[AgentSettings]) -> None:
        """Construct one agent per settings object and start ``agent.run``. Construction
        blocks (outbox database, model store, re-verifying models on disk, and ~25 ms of CPU
        for the SSL context of each agent's httpx client), so it runs in worker threads,
        ``build_concurrency`` at a time, while the agents already built connect. If some
        fail to build, the others keep running and the first error is raised; ``stop()``
        cleans up."""
        ids = [s.device_id for s in settings]
        if len(set(ids)) != len(ids):
            raise ValueError("device ids in one start() call must be unique")
        running = [d for d in ids if d in self._tasks and not self._tasks[d].done()]
        if running:
            raise ValueError(f"{len(running)} of these agents are running already: {running[:5]}")
        trust = {s.device_id: self._trust_for(s) for s in settings}
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(self.build_concurrency, thread_name_prefix="fleet-build")

        async def build_and_launch(s: AgentSettings) -> None:
            agent = await loop.run_in_executor(pool, Agent, s, trust[s.device_id])
            self._launch(agent)

        try:
            outcomes = await asyncio.gather(
                *(build_and_launch(s) for s in settings), return_exceptions=True
            )
        finally:
            # Not waiting: a cancelled start() must not block the loop on queued builds.
            pool.shutdown(wait=False, cancel_futures=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            log.error("%d of %d agents failed to start", len(failures), len(settings))
            raise failures[0]

    async def stop(self) -> None:
        """Set the stop event (each agent closes its window and says offline), wait up to
        ``stop_timeout`` for all of them, then cancel the rest (recorded in ``errors``)."""
        self._stop.set()
        tasks = dict(self._tasks)
        self._tasks.clear()
        self._stop = asyncio.Event()  # for a later start()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks.values(), timeout=self.stop_timeout)
        if not pending:
            return
        log.warning(
            "%d agents did not stop within %g s; cancelling them", len(pending), self.stop_timeout
        )
        for device_id, task in tasks.items():
            if task in pending:
                self.errors[device_id] = TimeoutError("did not stop in time; cancelled")
                task.cancel()
        # Bounded as well: a task that swallows its cancellation must not hang the caller.
        _, stuck = await asyncio.wait(pending, timeout=CANCEL_GRACE_SECONDS)
        for device_id, task in tasks.items():
            if task in stuck:
                self.errors[device_id] = TimeoutError("ignored its cancellation; left running")
                log.error("%s: agent ignored its cancellation: %s", device_id, task.get_stack())

    async def __aenter__(self) -> SimulatedFleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _trust_for(self, settings: AgentSettings) -> TrustStore:
        if self._trust is not None:
            return self._trust
        path = settings.trust_store
        if path not in self._trust_by_path:
            self._trust_by_path[path] = load_trust_store(settings)
        return self._trust_by_path[path]

    def _launch(self, agent: Agent) -> None:
        device_id = agent.settings.device_id
        self.agents[device_id] = agent
        self.errors.pop(device_id, None)
        self._tasks[device_id] = asyncio.create_task(
            self._run(agent, self._stop), name=f"agent {device_id}"
        )

    async def _run(self, agent: Agent, stop: asyncio.Event) -> None:
        try:
            await agent.run(stop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one agent's crash must not end the fleet
            log.exception("%s: agent ended with an error", agent.settings.device_id)
            self.errors[agent.settings.device_id] = exc
        else:
            if not stop.is_set():
                self.errors[agent.settings.device_id] = RuntimeError("agent returned by itself")

    async def kill(self, device_id: str) -> None:
        """End one agent without a goodbye, as a device losing power would: its task is
        cancelled (the broker publishes its Last Will); ``start`` brings it back."""
        task = self._tasks.pop(device_id, None)
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_GRACE_SECONDS)

    # --- observing ----------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Agents whose ``run`` has not ended."""
        return sum(not t.done() for t in self._tasks.values())

    def is_running(self, device_id: str) -> bool:
        task = self._tasks.get(device_id)
        return task is not None and not task.done()

    def connected(self) -> dict[str, bool]:
        """Device → connected to the broker now."""
        return {d: a.session.connected.is_set() for d, a in self.agents.items()}

    def serving(self, model: str) -> dict[str, int | None]:
        """Device → version of ``model`` serving requests now (None: none)."""
        out: dict[str, int | None] = {}
        for device_id, agent in self.agents.items():
            slot = agent.updater.slots.get(model)
            current = slot.current if slot is not None else None
            out[device_id] = current.manifest.version if current is not None else None
        return out

    # A timeout argument, not asyncio.timeout(): on expiry the error names the stragglers.
    async def wait_connected(self, timeout: float) -> float:  # noqa: ASYNC109
        """Seconds until every agent is connected; TimeoutError names the stragglers."""
        return await self._wait(
            lambda: [d for d, up in self.connected().items() if not up],
            timeout,
            "connected to the broker",
        )

    async def wait_serving(self, model: str, version: int, timeout: float) -> float:  # noqa: ASYNC109
        """Seconds until every agent serves ``model`` at ``version``; TimeoutError names the
        stragglers."""
        return await self._wait(
            lambda: [d for d, v in self.serving(model).items() if v != version],
            timeout,
            f"serving {model} v{version}",
        )

    async def _wait(
        self,
        behind: Callable[[], list[str]],
        timeout: float,  # noqa: ASYNC109
        what: str,
    ) -> float:
        start = time.monotonic()
        while left := behind():
            if time.monotonic() - start > timeout:
                raise TimeoutError(
                    f"{len(left)} of {len(self.agents)} agents not {what} after {timeout:g} s "
                    f"(e.g. {', '.join(sorted(left)[:5])})"
                )
            await asyncio.sleep(POLL_SECONDS)
        return time.monotonic() - start
