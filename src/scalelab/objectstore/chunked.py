"""Sans-I/O decoder for S3's `aws-chunked` content encoding, in the style of h11.

Streaming uploads frame the object as `hex-size[;chunk-signature=SIG]` lines, each followed
by that many bytes; a zero-size chunk ends the data and may be followed by trailer lines
(`x-amz-checksum-crc32:...`) and, when signed, `x-amz-trailer-signature`. The caller feeds
bytes with `receive_data` (b"" for end of body) and pulls `Data`, `Trailers` and
`EndOfMessage` events with `next_event`; nothing here reads sockets, so the same decoder
serves every server loop and is tested by splitting bodies at arbitrary points.

Signed chunks are released only after their chained signature verifies, so a consumer never
sees bytes the client did not sign (a signed chunk is held until complete, hence capped at
16 MiB by default; SDKs sign 64-128 KiB chunks); unsigned chunks are released as they
arrive. Framing is
never part of `Data`. Line ends may be CRLF or bare LF, as clients differ; in trailer modes
blank lines before the trailers (and, signed, before the trailer signature) are skipped,
which covers the AWS documentation's example and minio-go's `name:value\\n\\r\\n` form. The
trailer signature covers the canonical trailer block: `name:value\\n` lines sorted by name
(the order received is accepted too). At end of body (b""), a missing final blank line is
tolerated once everything that must be verified has been (and a missing line end only after
x-amz-trailer-signature, which verifies itself).
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from typing import Final, Literal

from scalelab.objectstore.errors import S3Error
from scalelab.objectstore.sigv4 import (
    EMPTY_SHA256,
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    Signed,
    hmac_hex,
    signatures_equal,
)

MODES = (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
TRAILER_SIGNATURE = "x-amz-trailer-signature"
MAX_SIGNED_CHUNK = 16 << 20
MAX_LINE = 4096
MAX_TRAILER_BYTES = 16 << 10

_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_SIG = re.compile(r"[0-9a-fA-F]{64}")
_LF = 0x0A
_CR = 0x0D


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = Sentinel.NEED_DATA


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class Trailers:
    headers: dict[str, str]


@dataclass(frozen=True)
class EndOfMessage:
    pass


Event = Data | Trailers | EndOfMessage


class _State(enum.Enum):
    SIZE = enum.auto()  # expecting a chunk-size line
    DATA = enum.auto()  # inside a chunk's data
    DATA_END = enum.auto()  # expecting the line end after an unsigned chunk's data
    FINAL = enum.auto()  # after the last chunk of a trailer-less body: expecting a blank line
    TRAILERS = enum.auto()  # reading trailer lines
    DONE = enum.auto()


def _incomplete(message: str) -> S3Error:
    return S3Error("IncompleteBody", message)


class ChunkedDecoder:
    """Decode one aws-chunked body; see the module docstring for the protocol.

    `payload_mode` is the request's x-amz-content-sha256 (one of `MODES`); `signed` the
    verified request (required for the two signed modes); `trailer_names` the lower-cased
    names from x-amz-trailer (None: accept whatever trailers arrive); `decoded_length` the
    x-amz-decoded-content-length (None: unchecked). Errors are raised from `next_event` as
    `S3Error`s, and raised again on every later call.
    """

    def __init__(
        self,
        payload_mode: str,
        signed: Signed | None,
        *,
        trailer_names: list[str] | None,
        decoded_length: int | None,
        max_signed_chunk: int = MAX_SIGNED_CHUNK,
    ) -> None:
        if payload_mode not in MODES:
            if payload_mode.startswith("STREAMING-AWS4-ECDSA"):
                raise S3Error("NotImplemented", f"{payload_mode} (SigV4a) is not supported.")
            raise S3Error(
                "InvalidArgument",
                f"x-amz-content-sha256 {payload_mode!r} is not an aws-chunked payload mode.",
                ArgumentName="x-amz-content-sha256",
                ArgumentValue=payload_mode,
            )
        self._signed_chunks = payload_mode != STREAMING_UNSIGNED_TRAILER
        if self._signed_chunks and signed is None:
            raise S3Error("InvalidRequest", f"{payload_mode} requires a signed request.")
        self._signed = signed
        self._previous = signed.seed_signature if signed is not None else ""
        self._trailing = payload_mode != STREAMING_SIGNED
        self._expected = None if trailer_names is None else {n.lower() for n in trailer_names}
        self._decoded_length = decoded_length
        self._max_signed_chunk = max_signed_chunk
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf already searched for a line feed
        self._eof = False
        self._state = _State.SIZE
        self._size = 0  # size of the current chunk
        self._remaining = 0  # unsigned: data bytes of the current chunk not yet released
        self._chunk_signature = ""
        self._total = 0
        self._trailers: dict[str, str] = {}
        self._trailer_order: list[tuple[str, str]] = []
        self._trailer_bytes = 0
        self._trailer_signed = False
        self._queue: list[Event] = []
        self._error: S3Error | None = None

    @property
    def bytes_decoded(self) -> int:
        """Payload bytes announced by the chunk-size lines read so far."""
        return self._total

    def receive_data(self, data: bytes) -> None:
        """Add body bytes; b"" means the body ended (no more data will come)."""
        if self._eof:
            raise RuntimeError("receive_data after the end of the body was signalled")
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event | Literal[Sentinel.NEED_DATA]:
        """The next event, or NEED_DATA until more bytes (or the end) are received."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except S3Error as error:
            self._error = error
            raise

    # --- the state machine -----------------------------------------------------------------

    def _next(self) -> Event | Literal[Sentinel.NEED_DATA]:
        if self._queue:
            return self._queue.pop(0)
        while True:
            state = self._state
            if state is _State.SIZE:
                line = self._line(at_eof_ok=False)
                if line is None:
                    return self._need()
                self._chunk_header(line)
            elif state is _State.DATA:
                if self._signed_chunks:
                    event = self._signed_data()
                else:
                    event = self._unsigned_data()
                return event
            elif state is _State.DATA_END:
                ending = self._line_end(0)
                if not ending:
                    return self._need()
                self._consume(ending)
                self._state = _State.SIZE
            elif state is _State.FINAL:
                line = self._line(at_eof_ok=True)
                if line is None:
                    if self._eof and not self._buf:
                        return self._finish()
                    return self._need()
                if line:
                    raise _incomplete("Unexpected data after the final aws-chunked chunk.")
                return self._finish()
            elif state is _State.TRAILERS:
                # Only the self-verifying signature line may lack its line end at the end.
                line = self._line(at_eof_ok=self._eof and self._signature_line_pending())
                if line is None:
                    if self._eof and not self._buf and self._may_end():
                        return self._finish()
                    return self._need()
                if self._trailer_line(line):
                    return self._finish()
            else:
                self._check_nothing_after_end()
                self._buf.clear()
                return EndOfMessage()

    def _need(self) -> Literal[Sentinel.NEED_DATA]:
        if self._eof:
            raise _incomplete("The request body terminated unexpectedly.")
        return NEED_DATA

    def _line(self, *, at_eof_ok: bool) -> bytes | None:
        """The next line without its line end, or None if it has not fully arrived."""
        buf = self._buf
        end = buf.find(b"\n", self._scan, MAX_LINE + 1)  # never scan into a chunk's data
        if end < 0:
            if len(buf) > MAX_LINE:
                raise _incomplete("An aws-chunked framing line is too long.")
            if at_eof_ok and self._eof and buf:
                end = len(buf)
            else:
                self._scan = min(len(buf), MAX_LINE + 1)
                return None
        if end > MAX_LINE:
            raise _incomplete("An aws-chunked framing line is too long.")
        line = bytes(buf[:end])
        self._consume(end + 1)
        return line[:-1] if line.endswith(b"\r") else line

    def _consume(self, count: int) -> None:
        del self._buf[:count]  # O(1) at the front of a bytearray in CPython
        self._scan = 0

    def _line_end(self, offset: int) -> int:
        """Length of the CRLF or LF at `offset` of the buffer (0 if not there yet)."""
        buf = self._buf
        if len(buf) <= offset:
            return 0
        if buf[offset] == _LF:
            return 1
        if buf[offset] == _CR:
            if len(buf) <= offset + 1:
                return 0
            if buf[offset + 1] == _LF:
                return 2
        raise _incomplete("An aws-chunked chunk's data is not followed by CRLF.")

    def _chunk_header(self, line: bytes) -> None:
        size_text, _, extensions = line.partition(b";")
        size_text = size_text.strip(b" \t")
        if _SIZE.fullmatch(size_text) is None:
            raise _incomplete(f"Invalid aws-chunked chunk size line {line[:80]!r}.")
        size = int(size_text, 16)
        if self._signed_chunks:
            signature = None
            for extension in extensions.split(b";"):
                name, _, value = extension.partition(b"=")
                if name.strip() == b"chunk-signature":
                    signature = value.strip().decode("ascii", "replace")
            if signature is None or _SIG.fullmatch(signature) is None:
                raise S3Error("SignatureDoesNotMatch", "An aws-chunked chunk is not signed.")
            if size > self._max_signed_chunk:
                raise S3Error(
                    "InvalidRequest",
                    f"A signed chunk of {size} bytes exceeds the largest accepted "
                    f"({self._max_signed_chunk}).",
                )
            self._chunk_signature = signature
        if size == 0:
            if self._signed_chunks:
                self._verify_chunk(memoryview(b""))
            self._check_length(final=True)
            self._state = _State.TRAILERS if self._trailing else _State.FINAL
            return
        self._total += size
        self._check_length(final=False)
        self._size = self._remaining = size
        self._state = _State.DATA

    def _check_length(self, *, final: bool) -> None:
        expected = self._decoded_length
        if expected is None:
            return
        if self._total > expected or (final and self._total != expected):
            raise _incomplete(
                f"The aws-chunked body holds {'at least ' if not final else ''}{self._total} "
                f"bytes, but x-amz-decoded-content-length is {expected}."
            )

    def _unsigned_data(self) -> Data | Literal[Sentinel.NEED_DATA]:
        take = min(self._remaining, len(self._buf))
        if take == 0:
            return self._need()
        with memoryview(self._buf) as view:
            data = bytes(view[:take])
        self._consume(take)
        self._remaining -= take
        if self._remaining == 0:
            self._state = _State.DATA_END
        return Data(data)

    def _signed_data(self) -> Data | Literal[Sentinel.NEED_DATA]:
        size = self._size
        ending = self._line_end(size)
        if not ending:
            return self._need()
        with memoryview(self._buf) as view, view[:size] as chunk:
            self._verify_chunk(chunk)
            data = bytes(chunk)
        self._consume(size + ending)
        self._state = _State.SIZE
        return Data(data)

    def _verify_chunk(self, chunk: memoryview) -> None:
        signed = self._signed
        assert signed is not None
        string_to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                signed.amz_date,
                signed.scope,
                self._previous,
                EMPTY_SHA256,
                hashlib.sha256(chunk).hexdigest(),
            ]
        )
        expected = hmac_hex(signed.signing_key, string_to_sign)
        if not signatures_equal(expected, self._chunk_signature):
            raise S3Error(
                "SignatureDoesNotMatch",
                "The chunk signature we calculated does not match the signature you provided.",
            )
        self._previous = expected

    # --- trailers ------------------------------------------------------------------------

    def _trailer_line(self, line: bytes) -> bool:
        """Take one trailer-section line; True when it ends the section."""
        signed_trailer = self._signed_chunks
        if not line:
            if signed_trailer:
                return self._trailer_signed  # blank lines before the signature are skipped
            # Skipped while declared trailers have yet to come (a blank line before them).
            return bool(self._trailers) or not self._expected
        self._trailer_bytes += len(line)
        if self._trailer_bytes > MAX_TRAILER_BYTES:
            raise S3Error("InvalidRequest", "The aws-chunked trailers are too large.")
        if self._trailer_signed:
            raise S3Error("InvalidRequest", "Trailers follow x-amz-trailer-signature.")
        raw_name, colon, raw_value = line.partition(b":")
        name = raw_name.strip().decode("latin-1").lower()
        value = raw_value.strip().decode("latin-1")
        if not colon or not name:
            raise S3Error("InvalidRequest", f"Malformed aws-chunked trailer line {line[:80]!r}.")
        if name == TRAILER_SIGNATURE:
            if not signed_trailer:
                raise S3Error("InvalidRequest", "An unsigned-payload trailer carries a signature.")
            self._verify_trailers(value)
            self._trailer_signed = True
            return False
        if name in self._trailers:
            raise S3Error("InvalidRequest", f"The trailer {name} is repeated.")
        if self._expected is not None and name not in self._expected:
            raise S3Error("InvalidRequest", f"The trailer {name} is not declared in x-amz-trailer.")
        self._trailers[name] = value
        self._trailer_order.append((name, value))
        return False

    def _verify_trailers(self, provided: str) -> None:
        signed = self._signed
        assert signed is not None
        blocks = ["".join(f"{n}:{v}\n" for n, v in sorted(self._trailer_order))]
        received = "".join(f"{n}:{v}\n" for n, v in self._trailer_order)
        if received != blocks[0]:
            blocks.append(received)
        for block in blocks:
            string_to_sign = "\n".join(
                [
                    "AWS4-HMAC-SHA256-TRAILER",
                    signed.amz_date,
                    signed.scope,
                    self._previous,
                    hashlib.sha256(block.encode("latin-1")).hexdigest(),
                ]
            )
            if signatures_equal(hmac_hex(signed.signing_key, string_to_sign), provided):
                return
        raise S3Error(
            "SignatureDoesNotMatch",
            "The trailer signature we calculated does not match the signature you provided.",
        )

    def _check_nothing_after_end(self) -> None:
        if self._buf.strip(b"\r\n"):
            raise _incomplete("Unexpected data after the end of the aws-chunked body.")

    def _signature_line_pending(self) -> bool:
        name = TRAILER_SIGNATURE.encode()
        return self._signed_chunks and self._buf[: len(name)].lower() == name

    def _may_end(self) -> bool:
        """At end of body without the final blank line: is the trailer section complete?"""
        if self._signed_chunks:
            return self._trailer_signed
        return True

    def _finish(self) -> Event:
        self._check_nothing_after_end()
        if self._state is _State.TRAILERS:
            if self._signed_chunks and not self._trailer_signed:
                raise S3Error("SignatureDoesNotMatch", "The trailers carry no signature.")
            if self._expected is not None:
                missing = sorted(self._expected - self._trailers.keys())
                if missing:
                    raise S3Error(
                        "InvalidRequest",
                        f"The trailer(s) {', '.join(missing)} declared in x-amz-trailer "
                        "did not arrive.",
                    )
            self._state = _State.DONE
            self._queue.append(EndOfMessage())
            return Trailers(dict(self._trailers))
        self._state = _State.DONE
        return EndOfMessage()
