"""kill -9 during remote-write ingestion: every acknowledged sample survives, no request torn.

Our server runs as a child process (`python -m scalelab serve monitoring`). Writer threads,
each with its own series, POST remote-write requests in a loop and note which got 204; the
server is killed mid-stream, restarted on the same data dir, written to again, killed again,
and restarted. Then every sample of every acknowledged request must be returned by the API,
and each request that got no answer must be there whole or not at all: its samples span
several series (one of them new with the request), and a request is one commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from scalelab.monitoring import remote_write
from scalelab.monitoring.model import Labels, labels_of

WRITERS = 4
SERIES = 6  # per writer
PER_SERIES = 5  # samples of each series in one request
STEP_MS = 10  # between a series' consecutive samples
REQUEST_MS = PER_SERIES * STEP_MS  # the time span of one request
INGEST_S = 1.5  # ingestion before each kill (longer if too little was acknowledged)
MIN_ACKED = 40  # per round, so the kill lands mid-stream and not before it
BASE = (int(time.time()) - 600) * 1000  # all samples are within minutes after this

Sample = tuple[Labels, int, float]


def request_samples(writer: int, r: int) -> set[Sample]:
    """The samples of writer's request r: PER_SERIES samples of each of its SERIES series,
    and one sample of a series that only this request has."""
    t0 = BASE + r * REQUEST_MS
    out: set[Sample] = set()
    for i in range(SERIES):
        labels = labels_of({"__name__": "crash_test", "writer": str(writer), "series": str(i)})
        for j in range(PER_SERIES):
            out.add((labels, t0 + j * STEP_MS, float(r * 1000 + j * 100 + i)))
    fresh = labels_of({"__name__": "crash_new", "writer": str(writer), "request": str(r)})
    out.add((fresh, t0, float(r)))
    return out


def request_body(writer: int, r: int) -> bytes:
    by_series: dict[Labels, list[tuple[int, float]]] = {}
    for labels, t, v in sorted(request_samples(writer, r)):
        by_series.setdefault(labels, []).append((t, v))
    return remote_write.encode_write_request(
        [(labels, [t for t, _ in s], [v for _, v in s]) for labels, s in by_series.items()]
    )


@dataclass
class Log:
    """What the writers sent and which requests were acknowledged (204)."""

    next_request: list[int] = field(default_factory=lambda: [0] * WRITERS)
    attempted: list[set[int]] = field(default_factory=lambda: [set() for _ in range(WRITERS)])
    acked: list[set[int]] = field(default_factory=lambda: [set() for _ in range(WRITERS)])
    refused: list[str] = field(default_factory=list)  # answers other than 204: a bug
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked_count(self) -> int:
        with self.lock:
            return sum(len(a) for a in self.acked)


def ingest_and_kill(server: Any, log: Log) -> None:
    """Writers hammer the server; kill -9 it mid-stream; wait for the writers to notice."""
    stop = threading.Event()
    start_count = log.acked_count()

    def writer(w: int) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = log.next_request[w]
                log.next_request[w] = r + 1
                with log.lock:
                    log.attempted[w].add(r)
                try:
                    reply = client.post(
                        f"{server.url}{remote_write.PATH}",
                        content=request_body(w, r),
                        headers=dict(remote_write.REQUEST_HEADERS),
                    )
                except httpx.TransportError:
                    return  # killed: this request's fate is unknown
                with log.lock:
                    if reply.status_code == remote_write.SUCCESS_STATUS:
                        log.acked[w].add(r)
                    else:
                        log.refused.append(f"writer {w} request {r}: {reply.status_code}")
                        return

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    try:
        began = time.monotonic()
        deadline = began + 20
        while time.monotonic() < deadline and (
            time.monotonic() - began < INGEST_S or log.acked_count() - start_count < MIN_ACKED
        ):
            time.sleep(0.02)
        server.kill()  # kill -9: no shutdown hook, no flush
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert log.acked_count() - start_count >= MIN_ACKED, "too few requests acknowledged"


def stored(url: str) -> set[Sample]:
    """Every raw sample of the crash series, read back through the query API."""
    at = (BASE + 30 * 60_000) / 1000  # after every sample; [1h] reaches back before BASE
    reply = httpx.post(
        f"{url}/api/v1/query",
        data={"query": '{__name__=~"crash_test|crash_new"}[1h]', "time": str(at)},
        timeout=60,
    )
    body = reply.json()
    assert reply.status_code == 200 and body["status"] == "success", body
    assert body["data"]["resultType"] == "matrix"
    out: set[Sample] = set()
    for series in body["data"]["result"]:
        labels = labels_of(series["metric"])
        for t, v in series["values"]:
            out.add((labels, round(float(t) * 1000), float(v)))
    return out


def test_acknowledged_samples_survive_kill_9(
    spawn_server: Callable[..., Any], tmp_path: Path
) -> None:
    env = {
        "SCALELAB_DATA": str(tmp_path),
        # small WAL segments, so the writes cross segment boundaries before each kill
        "SCALELAB_MONITORING_WAL_SEGMENT_BYTES": str(64 << 10),
    }
    log = Log()
    server = spawn_server("monitoring", env)
    ingest_and_kill(server, log)
    server = spawn_server("monitoring", env)  # replays the WAL, then takes writes again
    ingest_and_kill(server, log)
    server = spawn_server("monitoring", env)
    found = stored(server.url)

    assert not log.refused, log.refused
    problems: list[str] = []
    accounted: set[Sample] = set()
    for w in range(WRITERS):
        assert log.attempted[w] == set(range(log.next_request[w]))
        for r in sorted(log.attempted[w]):
            want = request_samples(w, r)
            accounted |= want
            present = want & found
            if r in log.acked[w]:
                if present != want:
                    problems.append(f"writer {w}: acknowledged request {r} lost {want - present}")
            elif present and present != want:  # no answer: whole or absent, never torn
                problems.append(f"writer {w}: request {r} torn, {len(present)}/{len(want)} kept")
    assert not problems, "\n".join(problems[:10])
    unexpected = found - accounted
    assert not unexpected, f"samples nobody sent: {sorted(unexpected)[:5]}"
    acked = sum(len(a) for a in log.acked)
    assert len(found) >= acked * len(request_samples(0, 0))
