"""The load ``device_agent.py`` measures a local inference API's throughput with: C keep-alive
connections from one asyncio process, each sending the HTTP request held in REQUEST_FILE
and reading its answer, one after another, for S seconds. Prints {"requests", "seconds",
"cpu_seconds"} as JSON (cpu_seconds: this client's own, to see it was not the limit).

    .venv/bin/python benchmarks/http_load.py PORT REQUEST_FILE SECONDS CONNECTIONS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path


async def load(port: int, request: bytes, seconds: float, connections: int) -> dict[str, float]:
    """Answers per second of ``connections`` clients, each one request at a time."""
    done = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"answer {head[:200]!r}")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            done += 1
        writer.close()

    began, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(client() for _ in range(connections)))
    return {
        "requests": done,
        "seconds": time.monotonic() - began,
        "cpu_seconds": time.process_time() - cpu,
    }


if __name__ == "__main__":
    port, request, seconds, connections = sys.argv[1:5]
    figures = asyncio.run(
        load(int(port), Path(request).read_bytes(), float(seconds), int(connections))
    )
    print(json.dumps(figures))
