"""The agent's local inference HTTP API: the Open Inference Protocol's required REST API (v2,
as KServe's ``required_api.md`` defines it) plus a small ``/v1/predict`` for named features.

Standard library only (``http.server``), so the agent's base install needs no web framework.
Every connection is handled in its own thread, off the agent's asyncio loop; inference itself
goes through an :class:`InferenceBackend` (the agent's model slots, or the models
``edgefleet serve`` loaded). The protocol's documents are built in ``agent.open_inference``.

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
version or route, 405 wrong method, 411 no Content-Length, 413 body over 8 MiB, 422 inputs
that do not fit the model, 503 model withdrawn or the agent stopping, 500 inference failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import numpy as np
import numpy.typing as npt

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

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
IDLE_TIMEOUT_S = 60.0  # an idle keep-alive connection holds a thread; free it eventually
DRAIN_TIMEOUT_S = 5.0  # stop() waits this long for requests in flight
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_POLL_INTERVAL_S = 0.1  # how soon stop() is noticed (the default 0.5 s slows every stop)
_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?$"
)

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
        self._httpd = _HTTPServer((host, port), backend, assigned or backend.model_names)
        self._httpd.metrics = metrics
        self._host = host
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._httpd.server_address[1])

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

        def serve() -> None:
            error: BaseException | None = None
            try:
                self._httpd.serve_forever(poll_interval=_POLL_INTERVAL_S)
            except BaseException as exc:
                logger.exception("the local inference API failed")
                error = exc
            if on_exit is not None and not self._httpd.stopping:
                on_exit(error)

        self._thread = threading.Thread(
            target=serve, name=f"inference-server:{self.port}", daemon=True
        )
        self._thread.start()
        logger.info("local inference API listening on %s", self.url)

    def stop(self) -> None:
        """Stop accepting, end keep-alive connections, close the socket. Requests in flight
        finish and get their response (waiting up to ``DRAIN_TIMEOUT_S`` for them)."""
        self._httpd.stopping = True
        if self._thread is not None:
            self._httpd.shutdown()  # blocks until serve_forever returns: only when started
            self._thread.join()
        self._httpd.close_connections(DRAIN_TIMEOUT_S)
        self._httpd.server_close()

    def __enter__(self) -> InferenceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of new connections from several local apps

    def __init__(
        self, address: tuple[str, int], backend: InferenceBackend, assigned: AssignedModels
    ) -> None:
        self.backend = backend
        self.assigned = assigned
        self.metrics: Callable[[], str] | None = None
        self._connections: set[socket.socket] = set()
        self._connections_changed = threading.Condition()
        self.stopping = False
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_changed:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self._connections_changed:
            self._connections.discard(request)
            self._connections_changed.notify_all()

    def close_connections(self, timeout: float) -> None:
        """End keep-alive connections, whose threads would otherwise go on serving them, and
        wait for their threads to finish. SHUT_RD lets a response being written complete;
        the thread's next read sees EOF."""
        with self._connections_changed:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # closed by its thread meanwhile
                connection.shutdown(socket.SHUT_RD)
        with self._connections_changed:
            if not self._connections_changed.wait_for(lambda: not self._connections, timeout):
                logger.warning("%d connections still open at stop", len(self._connections))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Only reached when writing a response fails (errors in routes become 500s); the
        # default prints a traceback to stderr.
        logger.debug("connection from %s failed", client_address, exc_info=True)


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


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "edgefleet-agent"
    sys_version = ""  # no Python version in the Server header
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries Content-Length
    disable_nagle_algorithm = True  # otherwise ~40 ms per request (delayed ACK × Nagle)
    # Buffered writes: headers and body leave in one send (handle_one_request flushes).
    wbufsize = 64 * 1024
    timeout = IDLE_TIMEOUT_S
    _body_pending = False

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (bad request line, unknown method, oversized headers)
        # answer JSON like ours; the connection's state is unknown, so it closes.
        self.close_connection = True
        self._send(_Response(HTTPStatus(code), {"error": message or HTTPStatus(code).phrase}))

    def _dispatch(self) -> None:
        self._body_pending = bool(
            self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0") != "0"
        )
        try:
            response = self._route()
        except _HttpError as exc:
            response = _Response(exc.status, {"error": exc.message}, exc.headers)
        except RequestError as exc:
            response = _Response(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except InputError as exc:
            response = _Response(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(exc)})
        except ModelUnavailableError as exc:
            response = _Response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        except Exception:
            logger.exception("%s %s failed", self.command, self.path)
            response = _Response(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"error": "inference failed; the agent log has the details"},
            )
        self._send(response)

    def _route(self) -> _Response:
        if self.server.stopping:  # a request that came in on a kept-alive connection
            self.close_connection = True
            raise _HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "the agent is shutting down")
        path = urlsplit(self.path).path
        routes: dict[str, Callable[[], _Response]]
        if path == "/v2":
            routes = {"GET": lambda: _Response(HTTPStatus.OK, server_metadata(__version__))}
        elif path == "/v2/health/live":
            routes = {"GET": lambda: _Response(HTTPStatus.OK, {"live": True})}
        elif path == "/v2/health/ready":
            routes = {"GET": self._ready}
        elif path == "/metrics" and self.server.metrics is not None:
            metrics = self.server.metrics
            routes = {"GET": lambda: _Response(HTTPStatus.OK, {}, text=metrics())}
        elif path == "/v1/predict":
            routes = {"POST": lambda: self._predict(self._json_body())}
        elif match := _MODEL_PATH.fullmatch(path):
            name, action = unquote(match["name"]), match["action"]
            version = None if match["version"] is None else unquote(match["version"])
            if action == "/infer":
                routes = {"POST": lambda: self._infer(name, version, self._json_body())}
            elif action == "/ready":
                routes = {"GET": lambda: self._model_ready(name, version)}
            else:
                routes = {"GET": lambda: self._metadata(name, version)}
        else:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no route {path}")
        handler = routes.get(self.command)
        if handler is None:
            allowed = ", ".join(routes)
            raise _HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{self.command} is not allowed on {path}; use {allowed}",
                {"Allow": allowed},
            )
        return handler()

    def _ready(self) -> _Response:
        """Ready when every assigned model serves; a 4xx means not ready (the protocol's
        rule), with what is missing."""
        assigned = sorted(set(self.server.assigned()))
        serving = set(self.server.backend.model_names())
        waiting = [name for name in assigned if name not in serving]
        if assigned and not waiting:
            return _Response(HTTPStatus.OK, {"ready": True})
        if assigned:
            reason = f"assigned models not serving yet: {', '.join(waiting)}"
        else:
            reason = "no model is assigned to this device"
        return _Response(HTTPStatus.BAD_REQUEST, {"ready": False, "error": reason})

    def _model_ready(self, name: str, version: str | None) -> _Response:
        if name in self.server.assigned() and name not in self.server.backend.model_names():
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
            model = self.server.backend.model(name)
        except ModelUnavailableError:
            serving = ", ".join(self.server.backend.model_names()) or "none"
            assigned = " yet; it is assigned to it" if name in self.server.assigned() else ""
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
            names = self.server.backend.model_names()
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
        return self.server.backend.predict(name, rows(model), model)

    def _json_body(self) -> Json:
        if self.headers.get("Transfer-Encoding"):
            raise _HttpError(
                HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not supported; send Content-Length"
            )
        declared = self.headers.get("Content-Length")
        if declared is None:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"invalid Content-Length {declared!r}")
        if length > MAX_BODY_BYTES:
            raise _HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes; at most {MAX_BODY_BYTES} per request",
            )
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "body shorter than its Content-Length")
        self._body_pending = False
        try:
            body = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, NaN
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return body

    def _send(self, response: _Response) -> None:
        if response.text is not None:
            payload, content_type = response.text.encode(), METRICS_CONTENT_TYPE
        else:
            payload = json.dumps(response.body, separators=(",", ":")).encode()
            content_type = "application/json"
        if self._body_pending:
            # An unread body would be parsed as the next request: end the connection instead.
            self.close_connection = True
        self.send_response(response.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in response.headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


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
