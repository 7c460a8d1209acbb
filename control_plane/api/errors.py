"""One error shape for every answer that is not a success, and the guard in front of JSON
bodies.

Every error answers ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`` — domain
errors, validation errors, 401/403/404/405/413 and even a 500 — and never echoes more than a
short, truncated piece of what the client sent (a 50 MB bad body once came back as a 47 MiB
error). JSON bodies are capped in size and nesting depth before anything parses them, so a
huge or deeply nested body costs a few milliseconds, not seconds and hundreds of MiB.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from control_plane.errors import (
    ConflictError,
    ControlPlaneError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    UnauthorizedError,
    UnavailableError,
)

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 2 * 1024 * 1024
MAX_JSON_DEPTH = 32
ECHO_CHARS = 80  # at most this much of a refused value comes back in an error
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_body(loc: list[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"detail": [{"loc": loc, "msg": msg, "type": kind}]}


def _echo(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"


def nesting_depth(body: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in a JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    for token in _TOKEN.finditer(body):
        char = token.group()[:1]
        if char in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif char in (b"]", b"}"):
            depth -= 1
    return deepest


class JsonBodyGuard:
    """ASGI middleware: a JSON request body over ``max_bytes`` answers 413, one nested
    deeper than ``max_depth`` answers 400, both before any parsing. Other content types (the
    CSV upload streams with its own cap) pass untouched."""

    def __init__(
        self, app: ASGIApp, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._is_json(scope):
            await self.app(scope, receive, send)
            return
        declared = self._content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await refuse(
                send, 413, ["body"], f"JSON bodies are at most {self.max_bytes} bytes", "too_large"
            )
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await refuse(
                    send,
                    413,
                    ["body"],
                    f"JSON bodies are at most {self.max_bytes} bytes",
                    "too_large",
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if nesting_depth(body) > self.max_depth:
            await refuse(
                send, 400, ["body"], f"JSON nested deeper than {self.max_depth} levels", "too_deep"
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    def _is_json(scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"content-type":
                return b"json" in value.lower()
        return False

    @staticmethod
    def _content_length(scope: Scope) -> int | None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None


async def refuse(send: Send, status: int, loc: list[str | int], msg: str, kind: str) -> None:
    """Answer an error from a middleware, in the one error shape, and close the connection."""
    payload = json.dumps(error_body(loc, msg, kind)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


SECRET_QUERY_NAMES = {b"token", b"access_token", b"api_key", b"bearer"}


class TokenInUrlGuard:
    """ASGI middleware: a request naming a token in its URL query is refused (400) whatever
    the route. URLs end up in logs, browser history and Referer headers; tokens go in the
    Authorization header only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = {
                part.split(b"=", 1)[0].lower()
                for part in scope.get("query_string", b"").split(b"&")
                if part
            }
            if named := sorted(names & SECRET_QUERY_NAMES):
                msg = "tokens go in the Authorization header, never in a URL"
                await refuse(send, 400, ["query", named[0].decode()], msg, "token_in_url")
                return
        await self.app(scope, receive, send)


STATUS: tuple[tuple[type[ControlPlaneError], int], ...] = (
    (InvalidInputError, 422),
    (PayloadTooLargeError, 413),
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (UnavailableError, 503),
)
REQUEST_PARTS = ("body", "query", "path", "header")


def status_of(exc: ControlPlaneError) -> int:
    """The HTTP status of a domain error (500: the control plane's own fault)."""
    return next((status for kind, status in STATUS if isinstance(exc, kind)), 500)


def request_loc(loc: tuple[str | int, ...]) -> list[str | int]:
    """Where in the request the field was: a domain path names a field of the body."""
    if loc and loc[0] not in REQUEST_PARTS:
        return ["body", *loc]
    return list(loc)


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the one shape, and the body guard."""

    @app.exception_handler(ControlPlaneError)
    async def _domain(_: Request, exc: ControlPlaneError) -> JSONResponse:
        return JSONResponse(
            status_code=status_of(exc),
            content=error_body(request_loc(exc.loc), exc.message, exc.code),
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = []
        for error in exc.errors()[:20]:
            msg = str(error.get("msg", "invalid"))
            if "input" in error and error.get("type") != "missing":
                msg = f"{msg} (got {_echo(error['input'])})"
            detail.append(
                {
                    "loc": [p if isinstance(p, int) else str(p) for p in error.get("loc", ())],
                    "msg": msg,
                    "type": str(error.get("type", "invalid")),
                }
            )
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = exc.detail if isinstance(exc.detail, str) else "error"
        return JSONResponse(
            status_code=exc.status_code,
            content=error_body([], msg, f"http_{exc.status_code}"),
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            status_code=500, content=error_body([], "internal error (logged)", "internal")
        )

    app.add_middleware(JsonBodyGuard)
    app.add_middleware(TokenInUrlGuard)
