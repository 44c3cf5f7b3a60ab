"""The S3 HTTP adapter: a bare ASGI app, because S3 routes on query flags and Host headers.

Per request: find the bucket and key (path-style `/bucket/key` or virtual-hosted
`bucket.DOMAIN/key`), verify SigV4 (header or presigned), wrap the body so aws-chunked framing
is decoded and payload hashes are checked as bytes stream in, dispatch to a handler in
`handlers.py`, and render S3Error as S3's XML error document. Every response carries
`x-amz-request-id`. `/healthz` and `/metrics` answer unauthenticated requests (the two bucket
names are reserved for that).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from scalelab.objectstore import chunked, cors, sigv4
from scalelab.objectstore.errors import DataStoreError, S3Error
from scalelab.objectstore.s3xml import error_document
from scalelab.objectstore.service import request_context

log = logging.getLogger("scalelab.objectstore.api")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

STREAMING_MODES = {
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
}


class RequestBody:
    """The request body as decoded bytes; checks x-amz-content-sha256 and chunk signatures."""

    def __init__(self, receive: Receive, headers: dict[str, str], signed: sigv4.Signed | None):
        self._receive = receive
        self.trailers: dict[str, str] = {}
        self.consumed = False
        self.finished = [False]
        payload = headers.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        self._decoder: chunked.ChunkedDecoder | None = None
        self._sha256: Any = None
        self._hash_outside = False
        self._signed = signed
        encoding = headers.get("content-encoding", "")
        if payload in STREAMING_MODES or "aws-chunked" in encoding:
            decoded = headers.get("x-amz-decoded-content-length")
            trailer = headers.get("x-amz-trailer")
            self._decoder = chunked.ChunkedDecoder(
                payload if payload in STREAMING_MODES else "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                signed,
                trailer_names=[t.strip().lower() for t in trailer.split(",")] if trailer else None,
                decoded_length=int(decoded) if decoded and decoded.isdigit() else None,
            )
        elif signed is not None and len(payload) == 64 and not signed.presigned:
            self._sha256 = hashlib.sha256()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.consumed:
            return
        self.consumed = True
        decoder = self._decoder
        more = True
        while more:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise S3Error("IncompleteBody", "the client went away mid-body")
            data: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if decoder is None:
                if self._sha256 is not None and not self._hash_outside:
                    self._sha256.update(data)
                if data:
                    yield data
                continue
            decoder.receive_data(data)
            if not more:
                decoder.receive_data(b"")
            while True:
                event = decoder.next_event()
                if event is chunked.NEED_DATA:
                    if not more:
                        raise S3Error("IncompleteBody", "the aws-chunked body ended early")
                    break
                if isinstance(event, chunked.Data):
                    yield event.data
                elif isinstance(event, chunked.Trailers):
                    self.trailers.update(event.headers)
                elif isinstance(event, chunked.EndOfMessage):
                    more = False
                    break
        self.finished[0] = True
        if not self._hash_outside:
            self.verify_payload()

    def take_payload_hash(self) -> Any:
        """Hand the x-amz-content-sha256 hash to the consumer, who feeds it the bytes (off the
        event loop, with its own hashing) and then calls `verify_payload`."""
        self._hash_outside = True
        return self._sha256

    def verify_payload(self) -> None:
        if self._sha256 is not None and self._signed is not None:
            sigv4.check_payload(self._signed, self._sha256.hexdigest())

    async def read(self, limit: int = 16 << 20) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self:
            size += len(chunk)
            if size > limit:
                raise S3Error("EntityTooLarge", "request document too large")
            parts.append(chunk)
        return b"".join(parts)


@dataclass
class Request:
    method: str
    bucket: str | None
    key: str | None
    query: dict[str, str]
    headers: dict[str, str]
    principal: str | None
    body: RequestBody
    request_id: str
    raw_path: str
    path_style: bool


@dataclass
class Response:
    status: int = 200
    body: bytes | AsyncIterator[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


Handler = Callable[[Request], Awaitable[Response]]


def int_param(req: Request, name: str, default: int, most: int | None = None) -> int:
    """A non-negative integer query parameter (max-keys, part-number-marker...), capped."""
    raw = req.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise S3Error("InvalidArgument", f"{name} must be an integer") from None
    if value < 0:
        raise S3Error("InvalidArgument", f"{name} must not be negative")
    return min(value, most) if most is not None else value


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "s3_requests",
            "S3 requests by operation and status",
            ["operation", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "s3_request_duration_seconds",
            "S3 request latency by operation",
            ["operation"],
            registry=self.registry,
        )
        self.errors = Counter(
            "s3_internal_errors",
            "requests failed by our own storage",
            ["kind"],
            registry=self.registry,
        )


def _split_host(host: str, domain: str) -> str | None:
    """The bucket named by a virtual-hosted-style Host header, if any."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    for base in {domain, "localhost"}:
        suffix = "." + base
        if base and name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


class S3App:
    """ASGI entry point. `dispatch(request) -> (operation, handler)` comes from handlers.py."""

    def __init__(
        self,
        dispatch: Callable[[Request], tuple[str, Handler]],
        credentials: dict[str, str],
        *,
        region: str,
        domain: str,
        cors_rules: Callable[[str], list[cors.CorsRule] | None],
        max_skew_seconds: int = 900,
        health: Callable[[], dict[str, Any]] | None = None,
        lifespan: Callable[[], Awaitable[None]] | None = None,
        shutdown: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dispatch = dispatch
        self.credentials = credentials
        self.region = region
        self.domain = domain
        self.cors_rules = cors_rules
        self.max_skew_seconds = max_skew_seconds
        self.health = health
        self.startup = lifespan
        self.shutdown = shutdown
        self.clock = clock
        self.metrics = Metrics()
        self.state: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.startup is not None:
                        await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.shutdown is not None:
                    await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        request_id = os.urandom(8).hex().upper()
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        raw_query = scope.get("query_string", b"").decode("latin-1")
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]},{text}" if key in headers else text
        method = scope["method"]
        operation = "Unknown"
        response: Response
        bucket: str | None = None
        finished = [False]  # set by RequestBody once the whole body has been read
        try:
            if (
                method == "GET"
                and raw_path in ("/healthz", "/metrics")
                and "authorization" not in headers
                and not raw_query
            ):
                operation = raw_path[1:]
                response = self._internal(raw_path)
            else:
                request = self._request(scope, receive, method, raw_path, raw_query, headers)
                request_context.set(_condition_keys(scope, request))
                finished = request.body.finished
                bucket = request.bucket
                request.request_id = request_id
                operation, handler = self.dispatch(request)
                if method == "OPTIONS":
                    response = self._preflight(request)
                else:
                    response = await handler(request)
        except S3Error as exc:
            response = self._error(exc, request_id, raw_path, method)
        except DataStoreError as exc:
            log.error("storage failure on %s %s: %s", method, raw_path, exc)
            self.metrics.errors.labels(type(exc).__name__).inc()
            response = self._error(S3Error("InternalError"), request_id, raw_path, method)
        except Exception:
            log.exception("unhandled error on %s %s", method, raw_path)
            self.metrics.errors.labels("unhandled").inc()
            response = self._error(S3Error("InternalError"), request_id, raw_path, method)
        if method in ("PUT", "POST") and not finished[0]:
            await self._skip_body(receive, headers, response)
        origin = headers.get("origin")
        if origin and bucket and method != "OPTIONS":
            rules = self.cors_rules(bucket)
            if rules:
                response.headers.update(cors.actual_request_headers(rules, origin, method))
        await self._send(send, response, request_id, method)
        self.metrics.requests.labels(operation, str(response.status)).inc()
        self.metrics.latency.labels(operation).observe(time.perf_counter() - start)

    def _request(
        self,
        scope: Scope,
        receive: Receive,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: dict[str, str],
    ) -> Request:
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        signed = None
        if method != "OPTIONS":
            now = datetime.fromtimestamp(self.clock(), UTC)
            signed = sigv4.verify(
                method,
                raw_path,
                raw_query,
                headers,
                self.credentials.get,
                now,
                region=self.region,
                max_skew=timedelta(seconds=self.max_skew_seconds),
            )
        path = unquote(raw_path, encoding="utf-8", errors="surrogateescape")
        host_bucket = _split_host(headers.get("host", ""), self.domain)
        if host_bucket is not None:
            bucket: str | None = host_bucket
            key = path[1:] or None
            path_style = False
        else:
            name, _, rest = path[1:].partition("/")
            bucket = name or None
            key = rest or None
            path_style = True
        return Request(
            method=method,
            bucket=bucket,
            key=key,
            query=query,
            headers=headers,
            principal=signed.access_key if signed else None,
            body=RequestBody(receive, headers, signed),
            request_id="",
            raw_path=raw_path,
            path_style=path_style,
        )

    async def _skip_body(
        self, receive: Receive, headers: dict[str, str], response: Response
    ) -> None:
        """Read what the handler left unread, so the next request on this connection parses;
        a large remainder is not worth reading: close the connection instead, as S3 does."""
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) <= 1 << 20:
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
        response.headers["connection"] = "close"

    def _preflight(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        method = request.headers.get("access-control-request-method")
        if not origin or not method or request.bucket is None:
            raise S3Error("AccessDenied", "Invalid CORS request")
        rules = self.cors_rules(request.bucket) or []
        wanted = request.headers.get("access-control-request-headers", "")
        names = [h.strip() for h in wanted.split(",") if h.strip()]
        allowed = cors.preflight(rules, origin, method, names)
        if allowed is None:
            raise S3Error("AccessDenied", "CORSResponse: This CORS request is not allowed.")
        return Response(200, headers=dict(allowed))

    def _internal(self, path: str) -> Response:
        if path == "/metrics":
            return Response(
                200, generate_latest(self.metrics.registry), content_type=CONTENT_TYPE_LATEST
            )
        extra = self.health() if self.health else {}
        return Response(
            200,
            orjson.dumps({"status": "ok", "system": "objectstore", **extra}),
            content_type="application/json",
        )

    def _error(self, exc: S3Error, request_id: str, resource: str, method: str) -> Response:
        headers = dict(exc.headers)
        if exc.status in (304,) or method == "HEAD":
            return Response(exc.status, b"", headers)
        extra = {"Resource": resource, **exc.extra} if "Resource" not in exc.extra else exc.extra
        body = error_document(exc.code, exc.message, request_id, extra)
        return Response(exc.status, body, headers, content_type="application/xml")

    async def _send(self, send: Send, response: Response, request_id: str, method: str) -> None:
        headers = [
            (b"x-amz-request-id", request_id.encode()),
            (b"x-amz-id-2", request_id.encode()),
            (b"server", b"scalelab"),
        ]
        merged = {name.lower(): value for name, value in response.headers.items()}
        if response.content_type and "content-type" not in merged:
            headers.append((b"content-type", response.content_type.encode()))
        for name, value in merged.items():
            headers.append((name.encode("latin-1"), _header_value(value)))
        body = response.body
        if isinstance(body, bytes):
            if "content-length" not in merged:
                headers.append((b"content-length", str(len(body)).encode()))
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
            return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        try:
            async for piece in body:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        except Exception as exc:
            # Headers are gone; all we can do is cut the connection so the client sees a
            # short body instead of silently wrong bytes.
            log.error("failed mid-response: %s", exc)
            self.metrics.errors.labels(type(exc).__name__).inc()
            raise
        await send({"type": "http.response.body", "body": b""})


def _condition_keys(scope: Scope, request: Request) -> dict[str, str]:
    """The policy condition keys S3 offers that we can know about this request."""
    keys = {"aws:SecureTransport": "true" if scope.get("scheme") == "https" else "false"}
    client = scope.get("client")
    if client:
        keys["aws:SourceIp"] = str(client[0])
    for name in ("prefix", "delimiter", "max-keys"):
        if name in request.query:
            keys[f"s3:{name}"] = request.query[name]
    if request.principal:
        keys["aws:username"] = request.principal
    return keys


def _header_value(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")
