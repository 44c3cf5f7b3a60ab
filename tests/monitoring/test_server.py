"""The monitoring server end to end: a real exporter scraped, remote-write and line-protocol
pushes, and Prometheus's HTTP API read back with httpx, on a real server on port 0."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from scalelab.monitoring import remote_write

from .support import running_server, wait_for


@pytest.fixture
def exporter() -> Iterator[str]:
    registry = CollectorRegistry()
    Counter("jobs_done", "Jobs done", ["queue"], registry=registry).labels("fast").inc(7)
    Gauge("temperature_celsius", "Temperature", registry=registry).set(21.5)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., str]]:
    with contextlib.ExitStack() as stack:
        yield lambda **overrides: stack.enter_context(
            running_server(tmp_path / "data", **overrides)
        )


def query(url: str, q: str, **params: Any) -> dict[str, Any]:
    reply = httpx.get(f"{url}/api/v1/query", params={"query": q, **params}, timeout=30)
    body: dict[str, Any] = reply.json()
    assert reply.status_code == 200, body
    assert body["status"] == "success"
    return body["data"]  # type: ignore[no-any-return]


def test_scrapes_a_prometheus_client_exporter(
    make_server: Callable[..., str], exporter: str, tmp_path: Path
) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
        "scrape_configs:\n  - job_name: app\n    static_configs:\n"
        f"      - targets: ['{exporter}']\n"
    )
    url = make_server(scrape_config=config)

    def scraped() -> list[Any]:
        return query(url, 'jobs_done_total{job="app"}')["result"]  # type: ignore[no-any-return]

    result = wait_for(scraped)
    assert result[0]["metric"] == {
        "__name__": "jobs_done_total",
        "instance": exporter,
        "job": "app",
        "queue": "fast",
    }
    assert result[0]["value"][1] == "7"
    up = query(url, "up")["result"]
    assert [(r["metric"]["job"], r["value"][1]) for r in up] == [("app", "1")]
    targets = httpx.get(f"{url}/api/v1/targets").json()["data"]["activeTargets"]
    assert targets[0]["health"] == "up" and targets[0]["labels"]["job"] == "app"
    meta = httpx.get(f"{url}/api/v1/metadata", params={"metric": "temperature_celsius"}).json()
    assert meta["data"] == {
        "temperature_celsius": [{"type": "gauge", "help": "Temperature", "unit": ""}]
    }


def test_remote_write_then_query_range_series_and_labels(make_server: Callable[..., str]) -> None:
    url = make_server()
    t0 = 1_700_000_000_000
    series = [
        (
            (("__name__", "http_requests_total"), ("code", code), ("job", "api")),
            [t0 + i * 15_000 for i in range(40)],
            [float(i * n) for i in range(40)],
        )
        for code, n in (("200", 10), ("500", 1))
    ]
    reply = httpx.post(
        f"{url}/api/v1/write",
        content=remote_write.encode_write_request(series),
        headers={
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
        },
    )
    assert reply.status_code == 204, reply.text

    at = (t0 + 39 * 15_000) / 1000
    data = query(url, "sum by (code) (rate(http_requests_total[5m]))", time=at)
    rates = {r["metric"]["code"]: float(r["value"][1]) for r in data["result"]}
    assert rates == pytest.approx({"200": 10 / 15, "500": 1 / 15})

    params = {"query": "http_requests_total", "start": t0 / 1000, "end": at, "step": "60s"}
    for _ in range(2):  # the second answer comes from the results cache
        reply = httpx.post(f"{url}/api/v1/query_range", data=params)
        assert reply.status_code == 200, reply.text
        matrix = reply.json()["data"]
        assert matrix["resultType"] == "matrix"
        assert [len(s["values"]) for s in matrix["result"]] == [10, 10]

    found = httpx.get(f"{url}/api/v1/series", params={"match[]": '{job="api"}'}).json()["data"]
    assert sorted(s["code"] for s in found) == ["200", "500"]
    labels = httpx.get(f"{url}/api/v1/labels").json()["data"]
    assert labels == ["__name__", "code", "job"]
    codes = httpx.get(f"{url}/api/v1/label/code/values").json()["data"]
    assert codes == ["200", "500"]

    stale = httpx.post(
        f"{url}/api/v1/write",
        content=remote_write.encode_write_request([(series[0][0], [t0], [1.0])]),
        headers={"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"},
    )
    assert stale.status_code == 400
    assert "out of order" in stale.json()["error"]


def test_line_protocol_push(make_server: Callable[..., str]) -> None:
    url = make_server()
    body = b"CPU.load host=webserver01,region=us-east 1613856000 50\n"
    assert httpx.post(f"{url}/api/v1/push", content=body).status_code == 204
    data = query(url, "CPU_load", time=1613856000)
    assert data["result"] == [
        {
            "metric": {"__name__": "CPU_load", "host": "webserver01", "region": "us-east"},
            "value": [1613856000, "50"],
        }
    ]
    bad = httpx.post(f"{url}/api/v1/push", content=b"CPU.load host=a notatime 5\n")
    assert bad.status_code == 400
    assert bad.json()["errorType"] == "bad_data" and "line 1" in bad.json()["error"]


def test_errors_have_prometheus_shape(make_server: Callable[..., str]) -> None:
    url = make_server()
    reply = httpx.get(f"{url}/api/v1/query", params={"query": "sum(("})
    assert reply.status_code == 400
    body = reply.json()
    assert body["status"] == "error" and body["errorType"] == "bad_data"
    reply = httpx.get(f"{url}/api/v1/query_range", params={"query": "up", "start": 1, "end": 0})
    assert reply.status_code == 400
    reply = httpx.get(f"{url}/api/v1/series")
    assert reply.json()["error"] == "no match[] parameter provided"
    reply = httpx.post(
        f"{url}/api/v1/write",
        content=b"not snappy",
        headers={"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"},
    )
    assert reply.status_code == 400
    assert httpx.get(f"{url}/api/v1/status/buildinfo").json()["data"]["version"]
    assert query(url, "1 + 1")["result"][1] == "2"


def test_rules_fire_and_show_in_the_api(make_server: Callable[..., str], tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n  - name: demo\n    interval: 100ms\n    rules:\n"
        "      - record: job:pushed:max\n        expr: max by (job) (pushed)\n"
        "      - alert: PushedHigh\n        expr: pushed > 10\n"
        "        annotations:\n          summary: 'value {{ $value }} on {{ $labels.job }}'\n"
    )
    url = make_server(rule_files=str(rules))
    now = int(time.time())
    httpx.post(f"{url}/api/v1/push", content=f"pushed job=x {now} 42\n".encode())

    def firing() -> list[Any]:
        alerts = httpx.get(f"{url}/api/v1/alerts").json()["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]

    alert = wait_for(firing)[0]
    assert alert["labels"] == {"alertname": "PushedHigh", "job": "x"}
    assert alert["annotations"] == {"summary": "value 42 on x"}
    groups = httpx.get(f"{url}/api/v1/rules").json()["data"]["groups"]
    assert [r["type"] for r in groups[0]["rules"]] == ["recording", "alerting"]
    assert wait_for(lambda: query(url, "job:pushed:max")["result"])[0]["value"][1] == "42"
    assert wait_for(lambda: query(url, "ALERTS")["result"])[0]["metric"]["alertstate"] == "firing"


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP endpoint collecting what Alertmanager-style webhooks POST."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_alert_reaches_a_webhook_unless_silenced_and_reload_keeps_good_rules(
    make_server: Callable[..., str],
    tmp_path: Path,
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    hook, received = webhook
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n  - name: g\n    interval: 100ms\n    rules:\n"
        "      - alert: Hot\n        expr: temp > 30\n        labels: {severity: page}\n"
    )
    am = tmp_path / "alertmanager.yml"
    am.write_text(
        "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 100ms\n"
        "  group_interval: 200ms\n  repeat_interval: 1h\n"
        f"receivers:\n  - name: hook\n    webhook_configs:\n      - url: {hook}\n"
    )
    url = make_server(rule_files=str(rules), alertmanager_config=am)
    now = int(time.time())
    lines = f"temp room=lab {now} 35\ntemp room=attic {now} 40\n"
    assert httpx.post(f"{url}/api/v1/push", content=lines.encode()).status_code == 204

    payload = wait_for(lambda: received)[0]
    assert payload["version"] == "4" and payload["status"] == "firing"
    assert payload["receiver"] == "hook" and payload["groupLabels"] == {"alertname": "Hot"}
    assert sorted(a["labels"]["room"] for a in payload["alerts"]) == ["attic", "lab"]

    silence = {
        "matchers": [{"name": "room", "value": "lab", "isRegex": False, "isEqual": True}],
        "startsAt": "2020-01-01T00:00:00Z",
        "endsAt": "2100-01-01T00:00:00Z",
        "createdBy": "test",
        "comment": "maintenance",
    }
    reply = httpx.post(f"{url}/api/v2/silences", json=silence)
    assert reply.status_code == 200, reply.text
    silence_id = reply.json()["silenceID"]
    states = {s["id"]: s["status"]["state"] for s in httpx.get(f"{url}/api/v2/silences").json()}
    assert states[silence_id] == "active"
    alerts = httpx.get(f"{url}/api/v2/alerts").json()

    def state_of(room: str) -> str:
        found = [a for a in alerts if a["labels"]["room"] == room]
        return str(found[0]["status"]["state"]) if found else "missing"

    alerts = wait_for(lambda: httpx.get(f"{url}/api/v2/alerts").json())
    assert state_of("lab") == "suppressed" and state_of("attic") == "active"
    assert httpx.delete(f"{url}/api/v2/silence/{silence_id}").status_code == 200
    assert httpx.get(f"{url}/api/v2/silence/nosuch").status_code == 404

    rules.write_text(
        "groups:\n  - name: g\n    rules:\n      - alert: Broken\n        expr: sum((\n"
    )
    reply = httpx.post(f"{url}/-/reload")
    assert reply.status_code == 500 and "parse" in reply.text.lower()
    groups = httpx.get(f"{url}/api/v1/rules").json()["data"]["groups"]
    assert [r["name"] for r in groups[0]["rules"]] == ["Hot"]  # the old rules stay
    rules.write_text(
        "groups:\n  - name: g\n    rules:\n      - record: temp:max\n        expr: max(temp)\n"
    )
    assert httpx.post(f"{url}/-/reload").status_code == 200
    groups = httpx.get(f"{url}/api/v1/rules").json()["data"]["groups"]
    assert [r["name"] for r in groups[0]["rules"]] == ["temp:max"]
