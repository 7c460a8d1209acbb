"""Admission: at most so many HTTP requests at once between arriving and starting their
response; the others wait their turn on the event loop, holding nothing.

A synchronous route runs in steps, each a separate job for the worker threads (its
dependencies, the route, the validation of its response), and its database session holds a
pooled connection from its first query until the request ends. With more requests in
flight than threads, requests holding connections waited for threads held by requests
waiting for connections: 1,000 agents asking for their sequence floor at once got nothing
for the pool's 30 s timeout, then errors, and none came online. Admitting fewer requests
than there are threads and connections, each admitted one finds both.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Admission:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._slots is None:  # on the server's loop
            self._slots = asyncio.Semaphore(self.limit)
        slots = self._slots
        await slots.acquire()
        admitted = True

        def leave() -> None:
            nonlocal admitted
            if admitted:
                admitted = False
                slots.release()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                leave()  # what is left (sending the body) needs no thread
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            leave()
