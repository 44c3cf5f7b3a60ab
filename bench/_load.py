"""A closed-loop load generator for the benches, meant to run in its own process.

Why hand-written: httpx or redis-py spend more CPU per request than the servers under test, so
they measure the client. Here each connection is an `asyncio.Protocol` that keeps exactly one
request in flight (keep-alive, no pipelining, like a browser or a service client), parses only
the framing (HTTP/1.1 Content-Length or a RESP reply) and sends the next request from inside
`data_received`: no coroutine, task or future per request. On uvloop one core drives well over
10,000 requests/s, and the result says how busy the client was, so a client-bound run shows.

Run as a child process: `python bench/_load.py < spec.json` prints one JSON result. Benches
build the spec with `http_get` / `resp_command` and call `spawn_load`.

The run has two phases on the same connections: a warm-up that sends every request of the list
once (so caches hold what the measured phase asks for), then `duration` seconds of measurement
cycling through the list. Latency is from writing a request to parsing its complete response.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

Frame = Callable[[bytearray], tuple[int, bool] | None]


# -- request encoding (used by the parent) -------------------------------------------------------


def http_get(host: str, port: int, path: str) -> bytes:
    """A keep-alive HTTP/1.1 GET with the minimum headers a server needs."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("latin-1")


def resp_command(*args: str | bytes | int | float) -> bytes:
    """A Redis command as a RESP array of bulk strings."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


# -- response framing ----------------------------------------------------------------------------


def http_frame(buf: bytearray) -> tuple[int, bool] | None:
    """(end of the first complete response, status is 200), or None if more bytes are needed."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buf[:head_end]).lower()
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError("response without Content-Length (chunked replies are not supported)")
    line_end = head.find(b"\r\n", at + 2)
    length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
    end = head_end + 4 + length
    if len(buf) < end:
        return None
    return end, head[9:12] == b"200"


def _resp_end(buf: bytearray, pos: int) -> int:
    """End offset of the RESP2 value starting at pos, or -1 if it is incomplete."""
    if pos >= len(buf):
        return -1
    line_end = buf.find(b"\r\n", pos)
    if line_end < 0:
        return -1
    kind = buf[pos]
    if kind in b"+-:":
        return line_end + 2
    count = int(buf[pos + 1 : line_end])
    if kind == ord("$"):
        end = line_end + 2 + count + 2 if count >= 0 else line_end + 2
        return end if len(buf) >= end else -1
    if kind == ord("*"):
        pos = line_end + 2
        for _ in range(max(count, 0)):
            pos = _resp_end(buf, pos)
            if pos < 0:
                return -1
        return pos
    raise ValueError(f"unexpected RESP type byte {kind!r}")


def resp_frame(buf: bytearray) -> tuple[int, bool] | None:
    """(end of the first complete reply, reply is not an error), or None if incomplete."""
    end = _resp_end(buf, 0)
    if end < 0:
        return None
    return end, buf[0] != ord("-")


FRAMES: dict[str, Frame] = {"http": http_frame, "resp": resp_frame}


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, all threads, from /proc; None off Linux or if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the closed loop -----------------------------------------------------------------------------


class _Phase:
    """One phase: hands out requests until its budget or deadline, records what completes."""

    def __init__(
        self, requests: Sequence[bytes], start: int, budget: int | None, deadline: float
    ) -> None:
        self.requests = requests
        self.next_index = start
        self.budget = budget
        self.deadline = deadline
        self.latencies: list[float] = []
        self.errors = 0
        self.outstanding = 0
        self.done = asyncio.get_running_loop().create_future()

    def take(self) -> bytes | None:
        if self.budget == 0 or time.perf_counter() >= self.deadline:
            return None
        if self.budget is not None:
            self.budget -= 1
        req = self.requests[self.next_index % len(self.requests)]
        self.next_index += 1
        self.outstanding += 1
        return req

    def complete(self, latency: float | None, ok: bool) -> None:
        self.outstanding -= 1
        if ok and latency is not None:
            self.latencies.append(latency)
        else:
            self.errors += 1

    def idle(self) -> None:
        if self.outstanding == 0 and not self.done.done():
            self.done.set_result(None)


class _Conn(asyncio.Protocol):
    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self.buf = bytearray()
        self.phase: _Phase | None = None
        self.sent_at = 0.0
        self.busy = False
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def start(self, phase: _Phase) -> None:
        self.phase = phase
        self._send()

    def _send(self) -> None:
        assert self.phase is not None and self.transport is not None
        req = None if self.closed else self.phase.take()
        if req is None:
            self.busy = False
            self.phase.idle()
            return
        self.busy = True
        self.sent_at = time.perf_counter()
        self.transport.write(req)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        parsed = self.frame(self.buf)
        if parsed is None:
            return
        end, ok = parsed
        latency = time.perf_counter() - self.sent_at
        del self.buf[:end]
        if self.buf:  # one request in flight, so nothing may follow its response
            raise ValueError("unexpected bytes after a complete response")
        assert self.phase is not None
        self.busy = False
        self.phase.complete(latency, ok)
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy and self.phase is not None:
            self.busy = False
            self.phase.complete(None, False)
            self.phase.idle()


async def _run_phase(conns: list[_Conn], phase: _Phase, grace: float) -> bool:
    """Drive a phase to its end; False if responses were still missing after the grace time."""
    for conn in conns:
        conn.start(phase)
    timeout = max(0.0, phase.deadline - time.perf_counter()) + grace
    try:
        await asyncio.wait_for(asyncio.shield(phase.done), timeout)
    except TimeoutError:
        return False
    return True


def _summary(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 3)

    return {
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3),
    }


async def run_load(
    *,
    protocol: str,
    host: str,
    port: int,
    requests: Sequence[bytes],
    concurrency: int,
    duration: float,
    warmup_max_seconds: float,
    grace_seconds: float = 10.0,
    watch_pid: int | None = None,
) -> dict[str, Any]:
    """Warm up (every request once, unless warmup_max_seconds is 0), then measure `duration`
    seconds at `concurrency`.

    watch_pid: a server process whose CPU use over the measured phase is reported, in cores.
    """
    if not requests:
        raise ValueError("no requests to send")
    loop = asyncio.get_running_loop()
    frame = FRAMES[protocol]
    conns: list[_Conn] = []
    try:
        for _ in range(concurrency):
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(frame), host, port), 10
            )
            conns.append(conn)
        warm_start = time.perf_counter()
        budget = len(requests) if warmup_max_seconds > 0 else 0  # 0 s: no warm-up phase
        warm = _Phase(requests, 0, budget, warm_start + warmup_max_seconds)
        warm_complete = await _run_phase(conns, warm, grace_seconds)
        warm_seconds = time.perf_counter() - warm_start
        alive = [c for c in conns if not c.closed and not c.busy]
        cpu0 = time.process_time()
        server0 = cpu_seconds(watch_pid) if watch_pid else None
        start = time.perf_counter()
        measured = _Phase(requests, warm.next_index, None, start + duration)
        complete = await _run_phase(alive, measured, grace_seconds)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        server1 = cpu_seconds(watch_pid) if watch_pid else None
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
    ok = len(measured.latencies)
    return {
        "protocol": protocol,
        "concurrency": concurrency,
        "duration_s": round(elapsed, 3),
        "requests_ok": ok,
        "errors": measured.errors + (0 if complete else measured.outstanding),
        "qps": round(ok / elapsed, 1) if elapsed > 0 else None,
        **_summary(measured.latencies),
        "warmup": {
            "requests": len(warm.latencies),
            "errors": warm.errors,
            "seconds": round(warm_seconds, 3),
            "covered_all_queries": warm_complete and len(warm.latencies) == len(requests),
        },
        "client_cpu_fraction": round(cpu / elapsed, 3) if elapsed > 0 else None,
        "server_cpu_cores": (
            round((server1 - server0) / elapsed, 3)
            if server0 is not None and server1 is not None and elapsed > 0
            else None
        ),
        "client_loop": type(loop).__module__.split(".")[0],
    }


# -- process boundary ----------------------------------------------------------------------------


def spawn_load(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run the load generator in a child process (the 'second process') and return its result.

    spec: protocol, host, port, requests (list of bytes), concurrency, duration,
    warmup_max_seconds and optionally watch_pid. The child is killed if it outlives timeout.
    """
    wire = {**spec, "requests": [r.decode("latin-1") for r in spec["requests"]]}
    proc = subprocess.run(
        [sys.executable, __file__],
        input=json.dumps(wire).encode(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"load generator exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
        )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _install_fast_loop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> int:
    spec = json.loads(sys.stdin.buffer.read())
    requests = [r.encode("latin-1") for r in spec.pop("requests")]
    _install_fast_loop()
    result = asyncio.run(run_load(requests=requests, **spec))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
