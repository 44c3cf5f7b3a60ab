"""Prometheus's HTTP API, thin: parameters in, `service.Monitoring` calls, Prometheus JSON out.

Every query endpoint takes GET parameters or a form POST (Grafana sends both), repeated
`match[]`, and answers `{"status": "success", "data": ...}` or `{"status": "error",
"errorType": ..., "error": ...}` with the status Prometheus gives that error type. Queries run
on a worker thread so a slow one never stalls ingestion on the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

import anyio
import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from scalelab.monitoring import params
from scalelab.monitoring.errors import BadData, MonitoringError

MAX_POINTS = 11_000  # Prometheus's limit of points per series in a range query


class Service(Protocol):
    """What the API needs from the monitoring service (see service.Monitoring)."""

    def query(self, query: str, time_ms: int, timeout_ms: int | None) -> dict[str, Any]: ...

    def query_range(
        self, query: str, start_ms: int, end_ms: int, step_ms: int, timeout_ms: int | None
    ) -> dict[str, Any]: ...

    def series(self, matches: list[str], start_ms: int, end_ms: int) -> list[dict[str, str]]: ...

    def label_names(self, matches: list[str], start_ms: int, end_ms: int) -> list[str]: ...

    def label_values(
        self, name: str, matches: list[str], start_ms: int, end_ms: int
    ) -> list[str]: ...

    def metadata(
        self, metric: str | None, limit: int | None
    ) -> dict[str, list[dict[str, str]]]: ...

    def remote_write(
        self, body: bytes, content_encoding: str | None, content_type: str | None
    ) -> None: ...

    def push_lines(self, body: bytes) -> int: ...

    def targets(self, state: str | None) -> dict[str, Any]: ...

    def rules_json(self) -> dict[str, Any]: ...

    def alerts_json(self) -> dict[str, Any]: ...

    async def reload(self) -> None: ...

    def am_alerts(self, filters: list[str]) -> list[dict[str, Any]]: ...

    def am_receive(self, body: Any) -> None: ...

    def silences(self, filters: list[str]) -> list[dict[str, Any]]: ...

    def create_silence(self, body: Any) -> dict[str, str]: ...

    def silence(self, silence_id: str) -> dict[str, Any]: ...

    def expire_silence(self, silence_id: str) -> None: ...

    def now_ms(self) -> int: ...


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def success(data: Any) -> Response:
    return _json({"status": "success", "data": data})


def failure(exc: MonitoringError) -> Response:
    body = {"status": "error", "errorType": exc.error_type, "error": str(exc)}
    return _json(body, exc.status)


class Params:
    """GET query parameters and url-encoded form fields, merged as Go's r.Form does (the
    form's values first)."""

    def __init__(self, request: Request, form: dict[str, list[str]]) -> None:
        self._query = request.query_params
        self._form = form

    def get(self, name: str) -> str | None:
        if name in self._form:
            return self._form[name][0]
        return self._query.get(name)

    def getlist(self, name: str) -> list[str]:
        return self._form.get(name, []) + self._query.getlist(name)


async def _params(request: Request) -> Params:
    form: dict[str, list[str]] = {}
    if request.method == "POST":
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/x-www-form-urlencoded"):
            body = (await request.body()).decode("utf-8", "replace")
            form = parse_qs(body, keep_blank_values=True)
    return Params(request, form)


def _time(p: Params, name: str, default: int) -> int:
    text = p.get(name)
    return default if text in (None, "") else params.parse_time(text, name)


def _timeout(p: Params) -> int | None:
    text = p.get("timeout")
    return None if text in (None, "") else params.parse_step(text, "timeout")


def _required(p: Params, name: str) -> str:
    value = p.get(name)
    if value is None or value == "":
        raise BadData(f'invalid parameter "{name}": parameter is required')
    return value


Handler = Callable[[Request], Awaitable[Response]]


def router(service: Service) -> APIRouter:
    api = APIRouter()

    def endpoint(path: str, methods: tuple[str, ...] = ("GET", "POST")) -> Callable[..., Any]:
        def wrap(fn: Callable[[Request], Awaitable[Any]]) -> Handler:
            async def handler(request: Request) -> Response:
                try:
                    result = await fn(request)
                except MonitoringError as exc:
                    return failure(exc)
                return result if isinstance(result, Response) else success(result)

            api.add_api_route(path, handler, methods=list(methods), include_in_schema=False)
            return handler

        return wrap

    @endpoint("/api/v1/query")
    async def query(request: Request) -> Any:
        p = await _params(request)
        q = _required(p, "query")
        t = _time(p, "time", service.now_ms())
        timeout = _timeout(p)
        return await anyio.to_thread.run_sync(service.query, q, t, timeout)

    @endpoint("/api/v1/query_range")
    async def query_range(request: Request) -> Any:
        p = await _params(request)
        q = _required(p, "query")
        start = params.parse_time(_required(p, "start"), "start")
        end = params.parse_time(_required(p, "end"), "end")
        if end < start:
            raise BadData('invalid parameter "end": end timestamp must not be before start time')
        step = params.parse_step(_required(p, "step"))
        if step <= 0:
            raise BadData(
                'invalid parameter "step": zero or negative query resolution step widths are '
                "not accepted. Try a positive integer"
            )
        if (end - start) // step > MAX_POINTS:
            raise BadData(
                "exceeded maximum resolution of 11,000 points per timeseries. "
                "Try decreasing the query resolution (?step=XX)"
            )
        timeout = _timeout(p)
        return await anyio.to_thread.run_sync(service.query_range, q, start, end, step, timeout)

    def _range(p: Params) -> tuple[int, int]:
        return _time(p, "start", params.MIN_TIME_MS), _time(p, "end", params.MAX_TIME_MS)

    @endpoint("/api/v1/series")
    async def series(request: Request) -> Any:
        p = await _params(request)
        matches = p.getlist("match[]")
        if not matches:
            raise BadData("no match[] parameter provided")
        start, end = _range(p)
        return await anyio.to_thread.run_sync(service.series, matches, start, end)

    @endpoint("/api/v1/labels")
    async def labels(request: Request) -> Any:
        p = await _params(request)
        start, end = _range(p)
        return await anyio.to_thread.run_sync(service.label_names, p.getlist("match[]"), start, end)

    @endpoint("/api/v1/label/{name}/values", ("GET",))
    async def label_values(request: Request) -> Any:
        p = await _params(request)
        name = request.path_params["name"]
        start, end = _range(p)
        return await anyio.to_thread.run_sync(
            service.label_values, name, p.getlist("match[]"), start, end
        )

    @endpoint("/api/v1/metadata", ("GET",))
    async def metadata(request: Request) -> Any:
        p = await _params(request)
        limit_text = p.get("limit")
        try:
            limit = int(limit_text) if limit_text else None
        except ValueError:
            raise BadData('invalid parameter "limit": not a number') from None
        return service.metadata(p.get("metric") or None, limit)

    @endpoint("/api/v1/targets", ("GET",))
    async def targets(request: Request) -> Any:
        return service.targets(request.query_params.get("state"))

    @endpoint("/api/v1/rules", ("GET",))
    async def rules(request: Request) -> Any:
        data = service.rules_json()
        kind = request.query_params.get("type")
        if kind in ("alert", "record"):
            wanted = "alerting" if kind == "alert" else "recording"
            data = {
                "groups": [
                    {**g, "rules": [r for r in g["rules"] if r["type"] == wanted]}
                    for g in data["groups"]
                ]
            }
        return data

    @endpoint("/api/v1/alerts", ("GET",))
    async def alerts(request: Request) -> Any:
        return service.alerts_json()

    @endpoint("/api/v1/status/buildinfo", ("GET",))
    async def buildinfo(request: Request) -> Any:
        from scalelab import __version__

        return {
            "version": __version__,
            "revision": "",
            "branch": "",
            "buildUser": "scalelab",
            "buildDate": "",
            "goVersion": "",
        }

    @endpoint("/api/v1/write", ("POST",))
    async def write(request: Request) -> Any:
        body = await request.body()
        await anyio.to_thread.run_sync(
            service.remote_write,
            body,
            request.headers.get("content-encoding"),
            request.headers.get("content-type"),
        )
        return Response(status_code=204)

    @endpoint("/api/v1/push", ("POST",))
    async def push(request: Request) -> Any:
        body = await request.body()
        await anyio.to_thread.run_sync(service.push_lines, body)
        return Response(status_code=204)

    # Alertmanager's API v2: bare JSON bodies, errors as text with the status
    def am_endpoint(path: str, methods: tuple[str, ...]) -> Callable[..., Any]:
        def wrap(fn: Callable[[Request], Awaitable[Any]]) -> Handler:
            async def handler(request: Request) -> Response:
                try:
                    result = await fn(request)
                except MonitoringError as exc:
                    return _json(str(exc), exc.status)
                return result if isinstance(result, Response) else _json(result)

            api.add_api_route(path, handler, methods=list(methods), include_in_schema=False)
            return handler

        return wrap

    async def _body(request: Request) -> Any:
        try:
            return orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise BadData(f"the body is not JSON: {exc}") from None

    @am_endpoint("/api/v2/alerts", ("GET",))
    async def am_alerts(request: Request) -> Any:
        return service.am_alerts(request.query_params.getlist("filter"))

    @am_endpoint("/api/v2/alerts", ("POST",))
    async def am_post_alerts(request: Request) -> Any:
        service.am_receive(await _body(request))
        return Response(status_code=200)

    @am_endpoint("/api/v2/silences", ("GET",))
    async def silences(request: Request) -> Any:
        return service.silences(request.query_params.getlist("filter"))

    @am_endpoint("/api/v2/silences", ("POST",))
    async def create_silence(request: Request) -> Any:
        return service.create_silence(await _body(request))

    @am_endpoint("/api/v2/silence/{silence_id}", ("GET",))
    async def silence(request: Request) -> Any:
        return service.silence(request.path_params["silence_id"])

    @am_endpoint("/api/v2/silence/{silence_id}", ("DELETE",))
    async def expire(request: Request) -> Any:
        service.expire_silence(request.path_params["silence_id"])
        return Response(status_code=200)

    @api.post("/-/reload", include_in_schema=False)
    async def reload(request: Request) -> Response:
        try:
            await service.reload()
        except MonitoringError as exc:
            return Response(f"failed to reload config: {exc}\n", 500, media_type="text/plain")
        return Response(status_code=200)

    @api.get("/-/healthy", include_in_schema=False)
    async def healthy() -> Response:
        return Response("Prometheus Server is Healthy.\n", media_type="text/plain")

    @api.get("/-/ready", include_in_schema=False)
    async def ready() -> Response:
        return Response("Prometheus Server is Ready.\n", media_type="text/plain")

    return api


def install(app: FastAPI, service: Service) -> None:
    app.include_router(router(service))
