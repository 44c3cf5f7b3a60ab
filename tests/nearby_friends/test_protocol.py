"""The WebSocket schema v1: client frames parsed or refused with a code, server frames encoded."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.nearby_friends import protocol
from scalelab.nearby_friends.model import Location
from scalelab.nearby_friends.protocol import (
    MAX_FRAME_BYTES,
    ClientEvent,
    LocationUpdate,
    Ping,
    ProtocolError,
    SetRandomNearby,
    SetSharing,
    encode_client,
    parse_client,
    parse_server,
)

# -- client frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "event"),
    [
        ('{"type": "location", "lat": 37.5, "lng": 127}', LocationUpdate(37.5, 127.0)),
        ('{"type": "location", "lat": -90, "lng": 180.0}', LocationUpdate(-90.0, 180.0)),
        ('{"type": "location", "lat": 90, "lng": -180, "acc": 5}', LocationUpdate(90.0, -180.0)),
        ('{"type": "ping"}', Ping(None)),
        ('{"type": "ping", "id": 7}', Ping(7)),
        ('{"type": "ping", "id": {"a": [1, "x"]}}', Ping({"a": [1, "x"]})),
        ('{"type": "sharing", "enabled": false}', SetSharing(False)),
        ('{"type": "random_nearby", "enabled": true, "extra": null}', SetRandomNearby(True)),
        (b'{"type": "sharing", "enabled": true}', SetSharing(True)),
    ],
)
def test_parses_each_client_message(text: str | bytes, event: ClientEvent) -> None:
    assert parse_client(text) == event


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("text", "code", "names"),
    [
        ("", "bad_json", ""),
        ("{", "bad_json", ""),
        ("NaN", "bad_json", ""),
        (b"\xff\xfe", "bad_json", ""),
        ("\ud800", "bad_json", ""),
        ('{"type": "location", "lat": 1e999, "lng": 0}', "bad_json", ""),
        ("[]", "bad_message", ""),
        ('"location"', "bad_message", ""),
        ("{}", "bad_message", "type"),
        ('{"type": 1}', "bad_message", "type"),
        ('{"type": "teleport"}', "unknown_type", "teleport"),
        ('{"type": "location", "lng": 0}', "bad_message", "lat"),
        ('{"type": "location", "lat": 0}', "bad_message", "lng"),
        ('{"type": "location", "lat": true, "lng": 0}', "bad_message", "lat"),
        ('{"type": "location", "lat": "1", "lng": 0}', "bad_message", "lat"),
        ('{"type": "location", "lat": 90.0001, "lng": 0}', "bad_message", "lat"),
        ('{"type": "location", "lat": 0, "lng": -180.5}', "bad_message", "lng"),
        ('{"type": "location", "lat": 0, "lng": null}', "bad_message", "lng"),
        ('{"type": "sharing", "enabled": 1}', "bad_message", "enabled"),
        ('{"type": "random_nearby"}', "bad_message", "enabled"),
        ('{"type": "ping", "id": ' + _nested(300) + "}", "bad_message", "id"),
    ],
)
def test_refuses_bad_frames_with_a_code_naming_the_field(
    text: str | bytes, code: str, names: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client(text)
    assert info.value.code == code
    assert info.value.code in protocol.ERROR_CODES
    assert names in info.value.message


def test_frame_size_limit_counts_utf8_bytes() -> None:
    head = '{"type": "ping", "id": "'
    fits = head + "x" * (MAX_FRAME_BYTES - len(head) - 2) + '"}'
    assert len(fits.encode()) == MAX_FRAME_BYTES
    assert isinstance(parse_client(fits), Ping)
    assert isinstance(parse_client(fits.encode()), Ping)
    for over in (fits[:-2] + 'x"}', "x" * (MAX_FRAME_BYTES + 1)):
        for frame in (over, over.encode()):
            with pytest.raises(ProtocolError) as info:
                parse_client(frame)
            assert info.value.code == "too_large"
    # Fewer code points than the limit, more bytes: é is two bytes in UTF-8.
    wide = head + "é" * 2100 + '"}'
    assert len(wide) < MAX_FRAME_BYTES < len(wide.encode())
    with pytest.raises(ProtocolError) as info:
        parse_client(wide)
    assert info.value.code == "too_large"


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_parse_client_raises_only_protocol_errors_on_arbitrary_input(
    frame: str | bytes,
) -> None:
    try:
        parse_client(frame)
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["type", "lat", "lng", "id", "enabled", "x"]), json_values, max_size=5
    ),
    st.sampled_from(["location", "ping", "sharing", "random_nearby", "nope", None]),
)
def test_parse_client_on_json_shaped_input(body: dict[str, Any], kind: str | None) -> None:
    if kind is not None:
        body["type"] = kind
    try:
        event = parse_client(orjson.dumps(body))
    except ProtocolError as exc:
        assert exc.code in {"bad_message", "unknown_type"}
        return
    if isinstance(event, LocationUpdate):
        assert -90 <= event.lat <= 90 and -180 <= event.lng <= 180
        assert math.isfinite(event.lat) and math.isfinite(event.lng)
    assert parse_client(encode_client(event)) == event


client_events = st.one_of(
    st.builds(
        LocationUpdate,
        st.floats(min_value=-90, max_value=90),
        st.floats(min_value=-180, max_value=180),
    ),
    st.builds(Ping, json_values),
    st.builds(SetSharing, st.booleans()),
    st.builds(SetRandomNearby, st.booleans()),
)


@given(client_events)
def test_client_events_round_trip(event: ClientEvent) -> None:
    assert parse_client(encode_client(event)) == event


# -- server frames ----------------------------------------------------------------------------

LOC = Location(42, 37.5665, 126.978, 1_700_000_000.25)


def test_every_server_message_has_version_and_type() -> None:
    frames = {
        "welcome": protocol.welcome(1, 8046.72, [(LOC, 1234.56)], True, False),
        "friend_location": protocol.friend_location(LOC, 1234.56),
        "friend_left_range": protocol.friend_left_range(42, 9000.04),
        "friend_offline": protocol.friend_offline(42),
        "friend_added": protocol.friend_added(42),
        "friend_removed": protocol.friend_removed(42),
        "nearby_person": protocol.nearby_person(LOC, 10.0),
        "error": protocol.error("rate_limited", "slow down"),
        "pong": protocol.pong({"n": 1}),
        "reconnect": protocol.reconnect(1500, "draining"),
    }
    assert set(frames) == set(protocol.SERVER_FIELDS)
    for kind, text in frames.items():
        assert isinstance(text, str)
        data = parse_server(text)
        assert data["v"] == 1 and data["type"] == kind
        assert set(data) == {"v", "type", *protocol.SERVER_FIELDS[kind]}


def test_server_message_contents() -> None:
    entry = {
        "user_id": 42,
        "lat": 37.5665,
        "lng": 126.978,
        "distance_m": 1234.6,
        "updated_at": 1_700_000_000.25,
    }
    assert parse_server(protocol.friend_location(LOC, 1234.56)) == {
        "v": 1,
        "type": "friend_location",
        **entry,
    }
    assert parse_server(protocol.welcome(1, 8046.72, [(LOC, 1234.56)], False, True)) == {
        "v": 1,
        "type": "welcome",
        "user_id": 1,
        "radius_m": 8046.72,
        "friends": [entry],
        "sharing": False,
        "random_nearby": True,
    }
    assert parse_server(protocol.nearby_person(LOC, 1234.56))["type"] == "nearby_person"
    assert parse_server(protocol.friend_left_range(7, 9000.04))["distance_m"] == 9000.0
    assert parse_server(protocol.pong(None))["id"] is None
    assert parse_server(protocol.reconnect(1500, "draining")) == {
        "v": 1,
        "type": "reconnect",
        "retry_after_ms": 1500,
        "reason": "draining",
    }


@given(
    st.integers(min_value=1, max_value=2**53),
    st.floats(min_value=-90, max_value=90),
    st.floats(min_value=-180, max_value=180),
    st.floats(min_value=0, max_value=2e9),
    st.floats(min_value=0, max_value=2e7),
)
def test_location_frames_round_trip(
    user: int, lat: float, lng: float, t: float, distance: float
) -> None:
    loc = Location(user, lat, lng, t)
    for text in (protocol.friend_location(loc, distance), protocol.nearby_person(loc, distance)):
        data = parse_server(text)
        assert Location(data["user_id"], data["lat"], data["lng"], data["updated_at"]) == loc
        # Metres to 0.1 (a tie may go either way), and a whole number of tenths.
        assert abs(data["distance_m"] - distance) <= 0.05 + 1e-9 * max(1.0, distance)
        assert data["distance_m"] == round(data["distance_m"] * 10) / 10


@given(json_values)
def test_pong_echoes_any_ping_id(ident: Any) -> None:
    event = parse_client(encode_client(Ping(ident)))
    assert isinstance(event, Ping)
    assert parse_server(protocol.pong(event.id))["id"] == ident


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("nope", "bad_json"),
        ("[1]", "bad_message"),
        ('{"type": "pong", "id": 1}', "bad_message"),
        ('{"v": 2, "type": "pong", "id": 1}', "bad_message"),
        ('{"v": true, "type": "pong", "id": 1}', "bad_message"),
        ('{"v": 1, "type": "pong"}', "bad_message"),
        ('{"v": 1}', "bad_message"),
        ('{"v": 1, "type": "hello"}', "unknown_type"),
    ],
)
def test_parse_server_checks_version_and_fields(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_server(text)
    assert info.value.code == code
