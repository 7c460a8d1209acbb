"""The agent's local inference HTTP API: the Open Inference Protocol's required REST API (v2,
as KServe's ``required_api.md`` defines it) plus a small ``/v1/predict`` for named features.

One asyncio event loop in its own thread (uvloop's when it is installed), HTTP/1.1 parsed by
httptools (llhttp, the parser Node.js uses), JSON by orjson: no web framework, and nothing
the agent's base install does not carry. A request is answered on the loop itself, inference
included: a small model's ``session.run`` takes microseconds, less than handing the request
to a thread and back. A route whose answers take more CPU (``OFFLOAD_AFTER_US``, a moving
average per route) or a large body goes to a worker thread instead, so one heavy batch
never holds up the health checks or another client's small requests. Inference goes through an
:class:`InferenceBackend` (the agent's model slots, or the models ``edgefleet serve``
loaded). The protocol's documents are built in ``agent.open_inference``.

Routes (``[/versions/{v}]``: optional; a version other than the serving one is a 404)::

    GET  /v2                                       server metadata
    GET  /v2/health/live                           200 {"live": true}
    GET  /v2/health/ready                          200 {"ready": true} when every model
                                                   assigned to this device serves, else 400
    GET  /v2/models/{name}[/versions/{v}]          model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready    200 serving; 400 assigned, not yet serving
    POST /v2/models/{name}[/versions/{v}]/infer    v2 inference request → v2 inference response
    POST /v1/predict                {"model"?, "features": {...}} or {"model"?, "rows": [...]}

Errors answer ``{"error": "..."}``: 400 malformed request (or not ready), 404 unknown model,
version or route, 405 wrong method, 411 no Content-Length (chunked bodies are refused), 413
body over 8 MiB, 422 inputs that do not fit the model, 431 headers over 64 KiB, 503 model
withdrawn, the agent stopping or too many connections, 500 inference failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol, cast
from urllib.parse import unquote

import httptools
import numpy as np
import numpy.typing as npt
import orjson

from agent.inference import InputError, LoadedModel, Outputs
from agent.open_inference import (
    InferenceRequest,
    RequestError,
    json_floats,
    model_metadata,
    server_metadata,
)
from agent.slot import ModelUnavailableError, Prediction
from edgefleet import __version__
from shared.manifest import ModelManifest

try:  # uvloop: a faster event loop, where it installs (not on Windows)
    import uvloop

    _new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvloop is a dependency where it installs
    _new_event_loop = asyncio.new_event_loop

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024  # request line and headers
MAX_CONNECTIONS = 512  # beyond: 503 and close (each holds a socket and its buffers)
IDLE_TIMEOUT_S = 60.0  # an idle keep-alive connection is closed after this
DRAIN_TIMEOUT_S = 5.0  # stop() waits this long for requests in flight
# A route whose answers took more CPU than this (moving average) is answered in a worker
# thread from then on; so is a body over OFFLOAD_BODY_BYTES. Below, the loop answers at once.
OFFLOAD_AFTER_US = 2000.0
OFFLOAD_BODY_BYTES = 256 * 1024
WORKER_THREADS = 2
WRITE_BUFFER_HIGH = 1024 * 1024  # a client not reading its answers stops being read
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?$"
)
_STATUS_LINES = {
    status: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus
}

Json = dict[str, Any]
AssignedModels = Callable[[], Iterable[str]]


class InferenceBackend(Protocol):
    """What the server needs from the agent: the serving models, and inference on them."""

    def model_names(self) -> list[str]:
        """Names that have a serving model."""
        ...

    def model(self, name: str) -> LoadedModel:
        """The serving version; raises ModelUnavailableError."""
        ...

    def predict(
        self, name: str, X: npt.NDArray[np.float32], model: LoadedModel | None = None
    ) -> Prediction:
        """Run ``model`` (the version the rows were validated against; default: the serving
        one); raises ModelUnavailableError, anything else is a failure."""
        ...


class InferenceServer:
    """The local inference API on ``host:port`` (port 0 picks a free port). The socket is bound
    at construction, so :attr:`port` is known before :meth:`start`.

    ``assigned`` names the models this device should serve: ``/v2/health/ready`` answers
    ready once every one of them serves (and at least one is assigned). Without it, every
    model the backend serves is the assignment (ready as soon as one serves)."""

    def __init__(
        self,
        backend: InferenceBackend,
        host: str = "127.0.0.1",
        port: int = 8500,
        *,
        assigned: AssignedModels | None = None,
        metrics: Callable[[], str] | None = None,
    ) -> None:
        self._router = _Router(backend, assigned or backend.model_names, metrics)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(128)  # bursts of new connections from several local apps
        except OSError:
            self._socket.close()
            raise
        self._socket.setblocking(False)
        self._host = host
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8500``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def start(self, on_exit: Callable[[BaseException | None], None] | None = None) -> None:
        """Serve in a daemon thread. ``on_exit`` is called (in that thread) if serving ends
        other than by ``stop``, with the exception that ended it."""
        if self._thread is not None:
            raise RuntimeError("the inference server is already started")
        loop = self._loop = _new_event_loop()
        started = threading.Event()

        def serve() -> None:
            error: BaseException | None = None
            try:
                loop.run_until_complete(self._serve(started))
            except BaseException as exc:
                logger.exception("the local inference API failed")
                error = exc
            finally:
                started.set()
                loop.close()
            if on_exit is not None and not self._router.stopping:
                on_exit(error)

        self._thread = threading.Thread(
            target=serve, name=f"inference-server:{self.port}", daemon=True
        )
        self._thread.start()
        started.wait()
        logger.info("local inference API listening on %s", self.url)

    async def _serve(self, started: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        router = self._router
        server = await loop.create_server(lambda: _Connection(router), sock=self._socket)
        started.set()
        housekeeping = asyncio.ensure_future(router.housekeeping())
        try:
            await self._stop.wait()
        finally:
            housekeeping.cancel()
            server.close()  # no new connections
            await router.drain(DRAIN_TIMEOUT_S)
            router.shut_down()

    def stop(self) -> None:
        """Stop accepting, end keep-alive connections, close the socket. Requests in flight
        finish and get their response (waiting up to ``DRAIN_TIMEOUT_S`` for them)."""
        self._router.stopping = True
        if self._thread is not None and self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop ended already (it failed)
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join()
        self._socket.close()

    def __enter__(self) -> InferenceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class _Response:
    status: HTTPStatus
    body: Mapping[str, object]
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None  # a plain-text answer (Prometheus exposition) instead of JSON
    close: bool = False  # end the connection after it


@dataclass(slots=True)
class _Request:
    method: str
    path: bytes
    body: bytes
    keep_alive: bool
    refusal: _Response | None = None  # refused while parsed: this is its answer


class _Router:
    """The routes, shared by every connection of one server (and its worker threads)."""

    def __init__(
        self,
        backend: InferenceBackend,
        assigned: AssignedModels,
        metrics: Callable[[], str] | None,
    ) -> None:
        self.backend = backend
        self.assigned = assigned
        self.metrics = metrics
        self.stopping = False
        self.connections: set[_Connection] = set()
        self.date = _http_date()
        # Per path: moving average of the CPU time an answer took (the thread's, not the
        # clock's: a busy machine that preempts the loop must not make a route look slow,
        # which would send it to a thread and make it slower still).
        self._cost_us: dict[bytes, float] = {}
        self._workers: ThreadPoolExecutor | None = None
        self._paths: dict[bytes, tuple[str, str, re.Match[str] | None]] = {}

    # --- connections and threads --------------------------------------------------------------

    def offloaded(self, request: _Request) -> bool:
        """Whether to answer in a worker thread (slow route, big body)."""
        return (
            len(request.body) > OFFLOAD_BODY_BYTES
            or self._cost_us.get(request.path, 0.0) > OFFLOAD_AFTER_US
        )

    def submit(self, request: _Request) -> Future[tuple[_Response, bool]]:
        if self._workers is None:  # started on first use: most devices never need it
            self._workers = ThreadPoolExecutor(WORKER_THREADS, "inference-worker")
        return self._workers.submit(self.answer, request)

    def answer(self, request: _Request) -> tuple[_Response, bool]:
        """The response, and whether its body may be sent (not for HEAD)."""
        started = time.thread_time_ns()
        response = self.respond(request)
        if response.status is HTTPStatus.OK:
            cost = (time.thread_time_ns() - started) / 1000
            cost_us = self._cost_us
            if len(cost_us) > 1024:  # paths name models; a flood of names must not grow it
                cost_us.clear()
            cost_us[request.path] = 0.8 * cost_us.get(request.path, cost) + 0.2 * cost
        return response, request.method != "HEAD"

    async def housekeeping(self) -> None:
        """Once a second: the Date header's value, and idle keep-alive connections closed."""
        while True:
            await asyncio.sleep(1.0)
            self.date = _http_date()
            idle_since = time.monotonic() - IDLE_TIMEOUT_S
            for connection in list(self.connections):
                if connection.idle_since(idle_since):
                    connection.close()

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109
        """Close idle connections now, the others once their answers are written."""
        for connection in list(self.connections):
            connection.closing = True
            if connection.idle_since(None):
                connection.close()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.connections:
            logger.warning("%d connections still open at stop", len(self.connections))
            for connection in list(self.connections):
                connection.abort()

    def shut_down(self) -> None:
        if self._workers is not None:
            self._workers.shutdown(wait=False, cancel_futures=True)

    # --- routes -------------------------------------------------------------------------------

    def respond(self, request: _Request) -> _Response:
        try:
            return self._route(request)
        except _HttpError as exc:
            return _Response(exc.status, {"error": exc.message}, exc.headers)
        except RequestError as exc:
            return _Response(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except InputError as exc:
            return _Response(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(exc)})
        except ModelUnavailableError as exc:
            return _Response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        except Exception:
            logger.exception("%s %s failed", request.method, request.path[:200])
            return _Response(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"error": "inference failed; the agent log has the details"},
            )

    def _split(self, raw: bytes) -> tuple[str, str, re.Match[str] | None]:
        """The path decoded, its route's kind and model match; cached per raw path."""
        known = self._paths.get(raw)
        if known is not None:
            return known
        path = raw.partition(b"?")[0].decode("latin-1")
        match = _MODEL_PATH.fullmatch(path)
        split = (path, "model" if match else path, match)
        if len(self._paths) < 1024:
            self._paths[raw] = split
        return split

    def _route(self, request: _Request) -> _Response:
        if self.stopping:  # a request that came in on a kept-alive connection
            raise _HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "the agent is shutting down")
        path, kind, match = self._split(request.path)
        routes: dict[str, Callable[[], _Response]]
        if kind == "model":
            assert match is not None
            name, action = unquote(match["name"]), match["action"]
            version = None if match["version"] is None else unquote(match["version"])
            if action == "/infer":
                routes = {"POST": lambda: self._infer(name, version, _json_body(request.body))}
            elif action == "/ready":
                routes = {"GET": lambda: self._model_ready(name, version)}
            else:
                routes = {"GET": lambda: self._metadata(name, version)}
        elif kind == "/v2":
            routes = {"GET": lambda: _Response(HTTPStatus.OK, server_metadata(__version__))}
        elif kind == "/v2/health/live":
            routes = {"GET": lambda: _Response(HTTPStatus.OK, {"live": True})}
        elif kind == "/v2/health/ready":
            routes = {"GET": self._ready}
        elif kind == "/metrics" and self.metrics is not None:
            metrics = self.metrics
            routes = {"GET": lambda: _Response(HTTPStatus.OK, {}, text=metrics())}
        elif kind == "/v1/predict":
            routes = {"POST": lambda: self._predict(_json_body(request.body))}
        else:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no route {path}")
        handler = routes.get(request.method)
        if handler is None:
            allowed = ", ".join(routes)
            raise _HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{request.method} is not allowed on {path}; use {allowed}",
                {"Allow": allowed},
            )
        return handler()

    def _ready(self) -> _Response:
        """Ready when every assigned model serves; a 4xx means not ready (the protocol's
        rule), with what is missing."""
        assigned = sorted(set(self.assigned()))
        serving = set(self.backend.model_names())
        waiting = [name for name in assigned if name not in serving]
        if assigned and not waiting:
            return _Response(HTTPStatus.OK, {"ready": True})
        if assigned:
            reason = f"assigned models not serving yet: {', '.join(waiting)}"
        else:
            reason = "no model is assigned to this device"
        return _Response(HTTPStatus.BAD_REQUEST, {"ready": False, "error": reason})

    def _model_ready(self, name: str, version: str | None) -> _Response:
        if name in self.assigned() and name not in self.backend.model_names():
            return _Response(
                HTTPStatus.BAD_REQUEST,
                {
                    "name": name,
                    "ready": False,
                    "error": f"model {name!r} is assigned to this device but not serving yet",
                },
            )
        self._model(name, version)
        return _Response(HTTPStatus.OK, {"name": name, "ready": True})

    def _metadata(self, name: str, version: str | None) -> _Response:
        return _Response(HTTPStatus.OK, model_metadata(self._model(name, version)))

    def _model(self, name: str, version: str | None = None) -> LoadedModel:
        """The serving version of ``name``; with ``version``, only if that one serves."""
        try:
            model = self.backend.model(name)
        except ModelUnavailableError:
            serving = ", ".join(self.backend.model_names()) or "none"
            assigned = " yet; it is assigned to it" if name in self.assigned() else ""
            raise _HttpError(
                HTTPStatus.NOT_FOUND,
                f"no model {name!r} is serving on this device{assigned} (serving: {serving})",
            ) from None
        if version is not None and version != str(model.manifest.version):
            raise _HttpError(
                HTTPStatus.NOT_FOUND,
                f"model {name!r} has no version {version!r} on this device; "
                f"it serves version {model.manifest.version}",
            )
        return model

    def _infer(self, name: str, version: str | None, body: Json) -> _Response:
        request = InferenceRequest.parse(body)
        prediction = self._run(name, request.rows, version)
        return _Response(
            HTTPStatus.OK,
            request.response(prediction),
            {"X-Request-Id": prediction.request_id},
        )

    def _predict(self, body: Json) -> _Response:
        name = body.get("model")
        if name is None:
            names = self.backend.model_names()
            if not names:
                raise ModelUnavailableError("no model is serving on this device")
            if len(names) > 1:
                raise _HttpError(
                    HTTPStatus.BAD_REQUEST,
                    f'several models serve ({", ".join(names)}); name one with "model"',
                )
            name = names[0]
        elif not isinstance(name, str):
            raise _HttpError(HTTPStatus.BAD_REQUEST, '"model" must be a string')
        if ("features" in body) == ("rows" in body):
            raise _HttpError(
                HTTPStatus.BAD_REQUEST,
                'give either "features" (one row) or "rows" (a list of rows), not both',
            )
        if "features" in body:
            if not isinstance(body["features"], dict):
                raise _HttpError(HTTPStatus.BAD_REQUEST, '"features" must be an object')
            rows = [body["features"]]
        else:
            rows = body["rows"]
            if not isinstance(rows, list):
                raise _HttpError(HTTPStatus.BAD_REQUEST, '"rows" must be a list of objects')
        prediction = self._run(name, lambda model: model.rows_from_named(rows))
        manifest = prediction.model.manifest
        return _Response(
            HTTPStatus.OK,
            {
                "request_id": prediction.request_id,
                "model": manifest.name,
                "version": manifest.version,
                "predictions": _named_predictions(manifest, prediction.outputs),
            },
            {"X-Request-Id": prediction.request_id},
        )

    def _run(
        self,
        name: str,
        rows: Callable[[LoadedModel], npt.NDArray[np.float32]],
        version: str | None = None,
    ) -> Prediction:
        """Validate against the serving version and run on that same version, even if a swap
        lands in between."""
        model = self._model(name, version)
        return self.backend.predict(name, rows(model), model)


class _Connection(asyncio.Protocol):
    """One client connection: requests parsed as they arrive, answered in order."""

    def __init__(self, router: _Router) -> None:
        self.router = router
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closing = False  # close once the answers in hand are written
        self._url = b""
        self._head_bytes = 0
        self._content_length: bytes | None = None
        self._chunked = False
        self._expect_continue = False
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._refusal: _Response | None = None  # decided in a parser callback
        self._reading = True  # False after a refusal: what follows is not parsed
        self._requests: deque[_Request] = deque()  # parsed, not answered yet
        self._busy = False  # a worker thread is answering one of them
        self._writes_paused = False
        self._last_active = time.monotonic()

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # a TCP transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.router.connections.add(self)
        if len(self.router.connections) > MAX_CONNECTIONS:
            self._write(
                _Response(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    {"error": f"over {MAX_CONNECTIONS} connections; try again later"},
                    close=True,
                ),
                body=True,
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self.router.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self._last_active = time.monotonic()
        if not self._reading:
            return
        refusal = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            refusal = self._refusal  # decided in a callback
        except httptools.HttpParserUpgrade:
            refusal = _refused(HTTPStatus.BAD_REQUEST, "protocol upgrades are not served")
        except httptools.HttpParserError as exc:
            refusal = _refused(HTTPStatus.BAD_REQUEST, f"malformed HTTP request: {exc}")
        if refusal is not None:  # answered after the requests before it
            self._reading = False
            self._requests.append(_Request("", b"", b"", False, refusal))
        self._answer()

    def pause_writing(self) -> None:  # the client does not read its answers
        self._writes_paused = True
        self._pace_reading()

    def resume_writing(self) -> None:
        self._writes_paused = False
        self._pace_reading()

    def _pace_reading(self) -> None:
        """Read while answers are read by the client and no worker answers a request."""
        if self.transport is None or self.transport.is_closing():
            return
        if self._writes_paused or self._busy:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._head_bytes = 0
        self._content_length = None
        self._chunked = False
        self._expect_continue = False
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"headers over {MAX_HEAD_BYTES} bytes",
            )
        lowered = name.lower()
        if lowered == b"content-length":
            self._content_length = value
        elif lowered == b"transfer-encoding":
            self._chunked = True
        elif lowered == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True

    def on_headers_complete(self) -> None:
        if self._chunked:
            self._refuse(
                HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not supported; send Content-Length"
            )
        length = int(self._content_length or 0)  # llhttp checked it is a number
        if length > MAX_BODY_BYTES:
            self._refuse(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes; at most {MAX_BODY_BYTES} per request",
            )
        if self._content_length is None and self.parser.get_method() in (b"POST", b"PUT"):
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        if self._expect_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._body_bytes += len(body)

    def on_message_complete(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._requests.append(
            _Request(
                self.parser.get_method().decode("ascii"),
                self._url,
                body,
                self.parser.should_keep_alive(),
            )
        )

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        self._refusal = _refused(status, message)
        raise _RefusedError  # stops the parser; data_received answers

    # --- answering -----------------------------------------------------------------------------

    def _answer(self) -> None:
        """Answer the parsed requests in order: on the loop, or one at a time in a worker
        thread (reading paused meanwhile, so answers keep the order of requests)."""
        router = self.router
        while self._requests and not self._busy:
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            request = self._requests.popleft()
            if request.refusal is not None:
                self._write(request.refusal, body=True)
                return
            if router.offloaded(request):
                self._offload(request)
                return
            response, body = router.answer(request)
            self._finish(request, response, body)

    def _offload(self, request: _Request) -> None:
        """Answer ``request`` in a worker thread; reading pauses until it is written."""
        self._busy = True
        self._pace_reading()
        loop = asyncio.get_running_loop()

        def answered(done: Future[tuple[_Response, bool]]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: stopping
                loop.call_soon_threadsafe(self._answered, request, done)

        self.router.submit(request).add_done_callback(answered)

    def _answered(self, request: _Request, done: Future[tuple[_Response, bool]]) -> None:
        self._busy = False
        if self.transport is None:
            return  # the client went away meanwhile
        if done.cancelled():  # stopping: the worker threads are shut down
            response, body = _refused(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down"), True
        else:
            response, body = done.result()
        self._finish(request, response, body)
        self._pace_reading()
        self._answer()

    def _finish(self, request: _Request, response: _Response, body: bool) -> None:
        if not request.keep_alive:
            response.close = True
        self._write(response, body)
        self._last_active = time.monotonic()

    def _write(self, response: _Response, body: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        if response.text is not None:
            payload, content_type = response.text.encode(), METRICS_CONTENT_TYPE
        else:
            payload = orjson.dumps(response.body, option=orjson.OPT_SERIALIZE_NUMPY)
            content_type = b"application/json"
        close = response.close or self.closing
        head = [
            _STATUS_LINES[response.status],
            b"Server: edgefleet-agent\r\nDate: ",
            self.router.date,
            b"\r\nContent-Type: ",
            content_type,
            b"\r\nContent-Length: ",
            str(len(payload)).encode(),
            b"\r\n",
        ]
        for key, value in response.headers.items():
            head.append(f"{key}: {value}\r\n".encode("latin-1"))
        if close:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        if body:
            head.append(payload)
        transport.write(b"".join(head))
        if close:
            self.closing = True
            transport.close()

    # --- for the server -------------------------------------------------------------------------

    def idle_since(self, moment: float | None) -> bool:
        """Nothing in hand, and (with ``moment``) nothing received since it."""
        if self._busy or self._requests:
            return False
        return moment is None or self._last_active < moment

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _RefusedError(Exception):
    """Raised in a parser callback to stop parsing a request that is refused."""


def _refused(status: HTTPStatus, message: str) -> _Response:
    """A refusal after which the connection's state is unknown: it closes."""
    return _Response(status, {"error": message}, close=True)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _http_date() -> bytes:
    """Now, as HTTP's Date header writes it (RFC 9110's IMF-fixdate)."""
    t = time.gmtime()
    day, month = _DAYS[t.tm_wday], _MONTHS[t.tm_mon - 1]
    clock = f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    return f"{day}, {t.tm_mday:02d} {month} {t.tm_year} {clock} GMT".encode()


def _json_body(raw: bytes) -> Json:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # The standard library says what is wrong in words (NaN, Infinity) and reads what
        # orjson does not (integers past 64 bits); it only runs on bodies orjson refused.
        try:
            body = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, NaN
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _HttpError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
    return body


def _refuse_constant(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON; send null for a missing value")


def _named_predictions(manifest: ModelManifest, outputs: Outputs) -> list[Json]:
    if manifest.output.task == "regression":
        return [{"value": value} for value in json_floats(outputs.values)]
    assert outputs.labels is not None
    classes = manifest.output.classes
    k = int(outputs.values.shape[1])
    names = [classes[j] if j < len(classes) else str(j) for j in range(k)]
    probabilities = json_floats(outputs.values)
    return [
        {
            "class": names[label] if 0 <= label < k else str(label),
            "class_index": label,
            "probabilities": dict(zip(names, probabilities[i * k : (i + 1) * k], strict=True)),
        }
        for i, label in enumerate(outputs.labels.tolist())
    ]
