"""The WebSocket message schema, version 1: a sans-I/O codec (no sockets, no clock).

Text frames carry one JSON object each. The server adapter hands every frame to `parse_client`
and writes whatever the encoders return, so the schema lives here and nowhere else.

Client -> server (`type` required; unknown fields are ignored so clients can add fields):

    {"type": "location", "lat": -90..90, "lng": -180..180}   finite numbers; bools are not
    {"type": "ping", "id": <any JSON, optional>}
    {"type": "sharing", "enabled": bool}                     location sharing off/on
    {"type": "random_nearby", "enabled": bool}               opt in/out of random nearby people

Server -> client, each with `"v": 1` and `"type"`:

    welcome          user_id, radius_m, friends: [{user_id, lat, lng, distance_m, updated_at}],
                     sharing, random_nearby
    friend_location  user_id, lat, lng, distance_m (metres, rounded to 0.1), updated_at
    friend_left_range  user_id, distance_m
    friend_offline   user_id
    friend_added     user_id
    friend_removed   user_id
    nearby_person    user_id, lat, lng, distance_m, updated_at   (random nearby, not a friend)
    error            code, message
    pong             id
    reconnect        retry_after_ms, reason

Error codes: `bad_json`, `bad_message` (the message names the field), `unknown_type`,
`rate_limited`, `too_large` (a frame over MAX_FRAME_BYTES), and `unauthorized` (no valid token:
the socket is then closed). Times are epoch seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from scalelab.nearby_friends.model import Location

VERSION = 1
MAX_FRAME_BYTES = 4096

BAD_JSON = "bad_json"
BAD_MESSAGE = "bad_message"
UNKNOWN_TYPE = "unknown_type"
RATE_LIMITED = "rate_limited"
TOO_LARGE = "too_large"
UNAUTHORIZED = "unauthorized"  # the adapter's, before it closes a socket without a valid token
ERROR_CODES = frozenset(
    {BAD_JSON, BAD_MESSAGE, UNKNOWN_TYPE, RATE_LIMITED, TOO_LARGE, UNAUTHORIZED}
)

# Every server message's fields besides "v" and "type": parse_server checks them, and the docs
# and tests read the schema from here.
SERVER_FIELDS: dict[str, tuple[str, ...]] = {
    "welcome": ("user_id", "radius_m", "friends", "sharing", "random_nearby"),
    "friend_location": ("user_id", "lat", "lng", "distance_m", "updated_at"),
    "friend_left_range": ("user_id", "distance_m"),
    "friend_offline": ("user_id",),
    "friend_added": ("user_id",),
    "friend_removed": ("user_id",),
    "nearby_person": ("user_id", "lat", "lng", "distance_m", "updated_at"),
    "error": ("code", "message"),
    "pong": ("id",),
    "reconnect": ("retry_after_ms", "reason"),
}


# -- client events ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LocationUpdate:
    lat: float
    lng: float


@dataclass(frozen=True)
class Ping:
    id: Any = None  # any JSON value, echoed in the pong so clients can match them


@dataclass(frozen=True)
class SetSharing:
    enabled: bool


@dataclass(frozen=True)
class SetRandomNearby:
    enabled: bool


ClientEvent = LocationUpdate | Ping | SetSharing | SetRandomNearby


class ProtocolError(Exception):
    """A frame the schema rejects; `code` is the error frame's code, so the session goes on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _number(data: dict[str, Any], field: str, low: float, high: float) -> float:
    value = data.get(field)
    # bool is an int subclass: {"lat": true} must not read as 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(BAD_MESSAGE, f"{field}: a number is required")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ProtocolError(BAD_MESSAGE, f"{field}: must be a number in {low:g}..{high:g}")
    return number


def _flag(data: dict[str, Any], field: str) -> bool:
    value = data.get(field)
    if not isinstance(value, bool):
        raise ProtocolError(BAD_MESSAGE, f"{field}: true or false is required")
    return value


def _ping(data: dict[str, Any]) -> Ping:
    ident = data.get("id")
    # orjson reads 1024 levels deep but writes only 254: reject now what pong() could not echo.
    try:
        orjson.dumps(ident)
    except TypeError:
        raise ProtocolError(BAD_MESSAGE, "id: nested too deeply to echo") from None
    return Ping(ident)


def _decode_object(text: str | bytes) -> dict[str, Any]:
    if isinstance(text, str):
        if len(text) > MAX_FRAME_BYTES:  # UTF-8 is never shorter than the code points
            raise ProtocolError(TOO_LARGE, f"frames are limited to {MAX_FRAME_BYTES} bytes")
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            raise ProtocolError(BAD_JSON, "frame is not valid UTF-8") from None
    else:
        raw = text
    if len(raw) > MAX_FRAME_BYTES:
        raise ProtocolError(TOO_LARGE, f"frames are limited to {MAX_FRAME_BYTES} bytes")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(BAD_JSON, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(BAD_MESSAGE, "a frame must be a JSON object")
    return data


def parse_client(text: str | bytes) -> ClientEvent:
    """One client frame as an event; anything else raises ProtocolError (and only that)."""
    data = _decode_object(text)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_MESSAGE, "type: a string is required")
    if kind == "location":
        return LocationUpdate(
            _number(data, "lat", -90.0, 90.0), _number(data, "lng", -180.0, 180.0)
        )
    if kind == "ping":
        return _ping(data)
    if kind == "sharing":
        return SetSharing(_flag(data, "enabled"))
    if kind == "random_nearby":
        return SetRandomNearby(_flag(data, "enabled"))
    raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind[:64]!r}")


def encode_client(event: ClientEvent) -> str:
    """A client frame for an event: what test clients, walkers and the bench send."""
    body: dict[str, Any]
    match event:
        case LocationUpdate(lat, lng):
            body = {"type": "location", "lat": lat, "lng": lng}
        case Ping(ident):
            body = {"type": "ping", "id": ident}
        case SetSharing(enabled):
            body = {"type": "sharing", "enabled": enabled}
        case SetRandomNearby(enabled):
            body = {"type": "random_nearby", "enabled": enabled}
    return orjson.dumps(body).decode()


# -- server messages --------------------------------------------------------------------------


def _server(kind: str, **fields: Any) -> str:
    return orjson.dumps({"v": VERSION, "type": kind, **fields}).decode()


def _tenths(x: float) -> float:
    """x to 0.1 (n / 10 is the double nearest n tenths, as round(x, 1) gives, at a third of
    its cost: this runs for every frame pushed)."""
    return round(x * 10) / 10 if math.isfinite(x) else x


def _entry(loc: Location, distance_m: float) -> dict[str, Any]:
    return {
        "user_id": loc.user_id,
        "lat": loc.lat,
        "lng": loc.lng,
        "distance_m": _tenths(distance_m),
        "updated_at": loc.updated_at,
    }


def welcome(
    user_id: int,
    radius_m: float,
    friends: Iterable[tuple[Location, float]],
    sharing: bool,
    random_nearby: bool,
) -> str:
    """The first frame: who we are, the radius, and the nearby friends as (location, distance)."""
    return _server(
        "welcome",
        user_id=user_id,
        radius_m=radius_m,
        friends=[_entry(loc, d) for loc, d in friends],
        sharing=sharing,
        random_nearby=random_nearby,
    )


def friend_location(loc: Location, distance_m: float) -> str:
    return _server("friend_location", **_entry(loc, distance_m))


def friend_left_range(user_id: int, distance_m: float) -> str:
    return _server("friend_left_range", user_id=user_id, distance_m=_tenths(distance_m))


def friend_offline(user_id: int) -> str:
    return _server("friend_offline", user_id=user_id)


def friend_added(user_id: int) -> str:
    return _server("friend_added", user_id=user_id)


def friend_removed(user_id: int) -> str:
    return _server("friend_removed", user_id=user_id)


def nearby_person(loc: Location, distance_m: float) -> str:
    return _server("nearby_person", **_entry(loc, distance_m))


def error(code: str, message: str) -> str:
    return _server("error", code=code, message=message)


def pong(id: Any) -> str:
    return _server("pong", id=id)


def reconnect(retry_after_ms: int, reason: str) -> str:
    """Sent by a draining server before it closes: resume elsewhere after retry_after_ms."""
    return _server("reconnect", retry_after_ms=retry_after_ms, reason=reason)


def parse_server(text: str | bytes) -> dict[str, Any]:
    """A server frame as a dict, checked for version 1 and its type's fields (clients, tests)."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(BAD_JSON, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(BAD_MESSAGE, "a frame must be a JSON object")
    version = data.get("v")
    if isinstance(version, bool) or version != VERSION:
        raise ProtocolError(BAD_MESSAGE, f"v: version {VERSION} is required")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_MESSAGE, "type: a string is required")
    if kind not in SERVER_FIELDS:
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind[:64]!r}")
    for field in SERVER_FIELDS[kind]:
        if field not in data:
            raise ProtocolError(BAD_MESSAGE, f"{field}: missing from {kind}")
    return data
