"""The HTTP app factory shared by the REST systems, and the server that runs an app.

Every REST system gets the same error shape (`{"error": {"code", "message"}}`), validation
errors as 422 naming the field, `/healthz`, and `/metrics` in the Prometheus text format with
request counts and latency histograms per route template (never per raw path, which would let
one client blow up the series count).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import orjson
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("scalelab.web")

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class HTTPError(Exception):
    """An error raised by an API layer that already knows its status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """JSON via orjson: the hot-path response of every REST system."""
    return Response(
        orjson.dumps(data), status_code=status, headers=headers, media_type="application/json"
    )


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> Response:
    return json_response({"error": {"code": code, "message": message, **extra}}, status, headers)


def _field_name(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"} and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts)


class MetricsMiddleware:
    """Counts requests and times them per (method, route template, status).

    It also turns an unhandled exception into the JSON 500 body (once, logged once), so one
    bad request never reaches uvicorn as a crash.
    """

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            status = 500
            response = error_response(500, "internal_error", "internal server error")
            await response(scope, receive, send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.requests.labels(method, template, str(status)).inc()
            self.latency.labels(method, template).observe(time.perf_counter() - start)


def create_app(
    system: str,
    *,
    routers: Iterable[APIRouter] = (),
    error_statuses: Mapping[type[Exception], int] | None = None,
    lifespan: Lifespan | None = None,
    health: HealthCheck | None = None,
    version: str = "1",
) -> FastAPI:
    """A FastAPI app with scalelab's errors, /healthz and /metrics already wired.

    error_statuses maps a system's domain exceptions (from its errors.py) to HTTP statuses; the
    exception's `code` attribute and message become the error body.
    """
    app = FastAPI(title=f"scalelab {system}", version=version, lifespan=lifespan)
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    app.state.system = system
    requests = Counter(
        "http_requests", "HTTP requests served", ["method", "route", "status"], registry=registry
    )
    latency = Histogram(
        "http_request_duration_seconds",
        "HTTP request latency",
        ["method", "route"],
        registry=registry,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    )
    app.add_middleware(MetricsMiddleware, requests=requests, latency=latency)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        fields = [
            {"field": _field_name(e.get("loc", ())), "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return error_response(422, "validation_error", summary, fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(HTTPError)
    async def _api(request: Request, exc: HTTPError) -> Response:
        return error_response(exc.status, exc.code, exc.message)

    for exc_type, status in (error_statuses or {}).items():

        async def _domain(request: Request, exc: Exception, status: int = status) -> Response:
            code = getattr(exc, "code", None) or _STATUS_CODES.get(status, "error")
            return error_response(status, code, str(exc))

        app.add_exception_handler(exc_type, _domain)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        body: dict[str, Any] = {"status": "ok", "system": system}
        if health is not None:
            try:
                body.update(await health())
            except Exception as exc:  # a failing dependency makes us unhealthy, not crash
                body.update(status="unavailable", reason=str(exc))
        return json_response(body, 200 if body["status"] == "ok" else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving, so port 0 resolves to a real port we can print and hand out."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only
    # then, and without it every response whose headers and body go out in two writes waits
    # ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when it is installed (uvicorn[standard] brings it).

    uvicorn picks uvloop only in its own `run()`; we drive `Server.serve()` ourselves, so the
    choice is made here. uvloop roughly halves the event loop's share of each request.
    """
    try:
        import uvloop
    except ImportError:  # a plain `pip install uvicorn`: the stdlib loop works too
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class _Server(uvicorn.Server):
    """uvicorn, but SIGINT/SIGTERM only ask it to exit.

    Stock uvicorn re-raises the captured signal after shutdown, which asyncio.run turns into a
    KeyboardInterrupt and a logged CancelledError; a clean Ctrl-C should print nothing.
    `before_shutdown` runs while every connection is still open: uvicorn itself would close
    WebSockets at once, and a stateful server wants to tell its clients where to go first.
    """

    before_shutdown: Callable[[], Awaitable[None]] | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.before_shutdown is not None:
            try:
                await self.before_shutdown()
            except Exception:  # a failed drain must not stop the shutdown
                log.exception("before_shutdown hook failed")
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)


class HTTPServer:
    """uvicorn serving one ASGI app on a socket bound up front."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        *,
        before_shutdown: Callable[[], Awaitable[None]] | None = None,
        ws_compression: bool = True,
    ) -> None:
        """ws_compression: offer permessage-deflate to WebSocket clients. It keeps a zlib
        state per socket each way (tens of KB) and costs CPU on every frame: a server holding
        many sockets of small frames may do better without it."""
        self.sock = bind_socket(host, port)
        self.url = url_of(self.sock)
        config = uvicorn.Config(
            app,
            log_level=log_level,
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=5,
            ws="websockets-sansio",  # the legacy implementation is deprecated
            ws_per_message_deflate=ws_compression,
        )
        self._server = _Server(config)
        self._server.before_shutdown = before_shutdown

    @property
    def started(self) -> bool:
        return bool(self._server.started)

    async def serve(self) -> None:
        try:
            await self._server.serve(sockets=[self.sock])
        finally:
            self.sock.close()

    def stop(self) -> None:
        self._server.should_exit = True


class ServerThread:
    """Runs an app's real server in a background thread: for tests and in-process benches."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        before_shutdown: Callable[[], Awaitable[None]] | None = None,
        ws_compression: bool = True,
    ) -> None:
        self.server = HTTPServer(
            app, host, port, before_shutdown=before_shutdown, ws_compression=ws_compression
        )
        self.url = self.server.url
        self._thread = threading.Thread(target=self._run, name=f"server {self.url}", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            run(self.server.serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"server failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server at {self.url} did not start in {timeout}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.stop()
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
