"""One WebSocket connection's state machine, sans-I/O: inputs in, actions out.

The asyncio adapter feeds a `Session` the client's frames (`receive_text`), the pub/sub messages
of the channels it asked for (`on_message`) and a periodic `tick`, and carries out the actions
each returns, in order: `Send` a frame, `Publish`/`Subscribe`/`Unsubscribe` on pub/sub,
`StoreLocation` (location cache with TTL, and history), `SaveSettings`. Time comes from the
injected clock, so TTLs and the rate limit run on virtual time in tests.

Rules, in one place:

- What the client sees of each friend is `FRIEND_TRANSITIONS`: (view, observation) -> (view,
  push). Every path that learns something about a friend (welcome, their update, their "off",
  our own move, TTL expiry on tick) goes through `_observe` and that table.
- Who may be pushed: only friends, and only through `loc:{friend}`; a pub/sub message on a
  channel we are not subscribed to is dropped, so a removed friend's update already queued
  before the Unsubscribe is never pushed. Non-friends appear only as `nearby_person`, from
  `geo:` channels, while we have opted in to random nearby (and they did, to publish there).
- Subscriptions are derived, never edited: `_wanted()` is {ctl:me} + {loc:f for each friend} +
  (geo cell and its 8 neighbours, when opted in and located), and `_resubscribe()` emits the
  difference after every change.
- Closing a socket is not turning sharing off: close() only unsubscribes, and the location
  cache's TTL drops the user from friends' lists.
- While sharing is off nothing of our location leaves the session (no cache write, no history,
  no publish), though the client still sees its friends.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from scalelab.geo.distance import haversine_m
from scalelab.geo.geohash import MAX_PRECISION, encode, neighbours
from scalelab.nearby_friends import protocol
from scalelab.nearby_friends.model import (
    Location,
    control_channel,
    geo_channel,
    location_channel,
    offline_payload,
)
from scalelab.nearby_friends.protocol import (
    LocationUpdate,
    Ping,
    ProtocolError,
    SetRandomNearby,
    SetSharing,
)

# -- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    text: str


@dataclass(frozen=True)
class Publish:
    channel: str
    payload: bytes


@dataclass(frozen=True)
class Subscribe:
    channel: str


@dataclass(frozen=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True)
class StoreLocation:
    """Write the location cache (with TTL) and append to the location history."""

    location: Location


@dataclass(frozen=True)
class SaveSettings:
    """Persist the user's settings and tell the user's other sockets (via ctl:{user})."""

    sharing: bool
    random_nearby: bool


Action = Send | Publish | Subscribe | Unsubscribe | StoreLocation | SaveSettings


# -- the friend table -------------------------------------------------------------------------


class View(enum.Enum):
    """What the client shows for one friend."""

    HIDDEN = "not on the client's list"
    SHOWN = "on the client's list, in range"


class Observation(enum.Enum):
    """What we now know of one friend (see `Session._observe`)."""

    IN_RANGE = "fresh location within the radius of ours"
    OUT_OF_RANGE = "fresh location beyond the radius"
    GONE = "stopped sharing, or the location expired (TTL)"
    UNPLACED = "fresh location, but we have none yet to measure from"


class Push(enum.Enum):
    NOTHING = "no frame"
    LOCATION = "friend_location"
    LEFT_RANGE = "friend_left_range"
    OFFLINE = "friend_offline"


V, Ob, P = View, Observation, Push
FRIEND_TRANSITIONS: dict[tuple[View, Observation], tuple[View, Push]] = {
    (V.HIDDEN, Ob.IN_RANGE): (V.SHOWN, P.LOCATION),
    (V.HIDDEN, Ob.OUT_OF_RANGE): (V.HIDDEN, P.NOTHING),
    (V.HIDDEN, Ob.GONE): (V.HIDDEN, P.NOTHING),
    (V.HIDDEN, Ob.UNPLACED): (V.HIDDEN, P.NOTHING),
    (V.SHOWN, Ob.IN_RANGE): (V.SHOWN, P.LOCATION),  # still near: the new position and distance
    (V.SHOWN, Ob.OUT_OF_RANGE): (V.HIDDEN, P.LEFT_RANGE),
    (V.SHOWN, Ob.GONE): (V.HIDDEN, P.OFFLINE),
    (V.SHOWN, Ob.UNPLACED): (V.SHOWN, P.NOTHING),  # unreachable: we never lose our location
}
del V, Ob, P


@dataclass
class SessionCounters:
    messages_in: int = 0  # client frames received
    messages_out: int = 0  # frames sent (Send actions)
    rate_limited: int = 0  # client frames refused by the rate limit
    bad_frames: int = 0  # client frames answered with an error (bad JSON, schema)
    pubsub_in: int = 0  # pub/sub messages handled
    published: int = 0  # Publish actions
    malformed: int = 0  # pub/sub payloads ignored because they could not be read


def _finite(value: Any, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and low <= number <= high else None


def _read_location(data: dict[str, Any]) -> Location | None:
    """A `loc:`/`geo:` payload as a Location, or None when any field is unusable."""
    user = data.get("u")
    lat = _finite(data.get("lat"), -90.0, 90.0)
    lng = _finite(data.get("lng"), -180.0, 180.0)
    t = _finite(data.get("t"), -math.inf, math.inf)
    if type(user) is not int or lat is None or lng is None or t is None:
        return None
    return Location(user, lat, lng, t)


@dataclass(frozen=True, slots=True)
class _Message:
    """A pub/sub payload, decoded: the JSON object (None if not one) and, read from it, a
    location (None unless it is a usable `loc:`/`geo:` payload)."""

    data: dict[str, Any] | None
    location: Location | None


_last_message: tuple[bytes, _Message] | None = None


def _parse(payload: bytes) -> _Message:
    """Decode once per message, not once per socket: one update fans out to every local
    friend's session in a row with the same bytes object, so a one-entry memo keyed by
    identity answers all but the first (the memo holds the bytes, so the identity stays
    unique; sessions only read the shared dict)."""
    global _last_message
    last = _last_message
    if last is not None and last[0] is payload:
        return last[1]
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        message = _Message(data, _read_location(data))
    else:
        message = _Message(None, None)
    _last_message = (payload, message)
    return message


class Session:
    """One connection of `user_id`: its friends' views, subscriptions and rate limit."""

    def __init__(
        self,
        user_id: int,
        friends: Iterable[int],
        *,
        radius_m: float,
        ttl: float,
        clock: Callable[[], float],
        sharing: bool = True,
        random_nearby: bool = False,
        geohash_precision: int = 5,
        rate: float = 2.0,
        burst: int = 10,
    ) -> None:
        if not (math.isfinite(radius_m) and radius_m > 0):
            raise ValueError(f"radius_m must be positive, got {radius_m}")
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        if not (rate > 0 and burst >= 1):
            raise ValueError(f"need rate > 0 and burst >= 1, got {rate}, {burst}")
        if not 1 <= geohash_precision <= MAX_PRECISION:
            raise ValueError(f"geohash precision must be 1..{MAX_PRECISION}")
        self._user_id = user_id
        self._friends = {f for f in friends if f != user_id}
        self._radius_m = radius_m
        self._ttl = ttl
        self._clock = clock
        self._sharing = sharing
        self._random_nearby = random_nearby
        self._precision = geohash_precision
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._refilled_at: float | None = None
        self._location: Location | None = None
        self._known: dict[int, Location] = {}  # friends' fresh locations, in range or not
        self._shown: set[int] = set()  # friends whose view is SHOWN
        self._subs: set[str] = set()
        self._geo_subs: set[str] = set()  # the geo: part of _subs
        self._started = False
        self._closed = False
        self._counters = SessionCounters()

    # -- read-only state ------------------------------------------------------------------

    @property
    def user_id(self) -> int:
        return self._user_id

    @property
    def friends(self) -> frozenset[int]:
        return frozenset(self._friends)

    @property
    def sharing(self) -> bool:
        return self._sharing

    @property
    def random_nearby(self) -> bool:
        return self._random_nearby

    @property
    def subscriptions(self) -> frozenset[str]:
        return frozenset(self._subs)

    @property
    def location(self) -> Location | None:
        return self._location

    @property
    def shown(self) -> frozenset[int]:
        """Friends the client currently lists as in range."""
        return frozenset(self._shown)

    @property
    def counters(self) -> SessionCounters:
        return self._counters

    @property
    def closed(self) -> bool:
        return self._closed

    # -- inputs ---------------------------------------------------------------------------

    def start(self, cached: Mapping[int, Location]) -> list[Action]:
        """Subscribe, and greet the client with the fresh friends in range of `cached`.

        `cached` may hold our own last location too (a reconnect): then the welcome can list
        friends at once; otherwise they are remembered and pushed on our first location.
        """
        if self._started:
            raise RuntimeError("Session.start() called twice")
        self._started = True
        now = self._clock()
        mine = cached.get(self._user_id)
        if mine is not None and mine.user_id == self._user_id and self._fresh(mine, now):
            self._location = mine
        entries: list[tuple[Location, float]] = []
        for friend in sorted(self._friends):
            loc = cached.get(friend)
            if loc is None or loc.user_id != friend:
                continue
            push, distance = self._step(friend, loc, now)
            if push is Push.LOCATION:
                entries.append((loc, distance))
        entries.sort(key=lambda entry: (entry[1], entry[0].user_id))
        actions = self._resubscribe()
        text = protocol.welcome(
            self._user_id, self._radius_m, entries, self._sharing, self._random_nearby
        )
        actions.append(self._send(text))
        return actions

    def receive_text(self, text: str | bytes) -> list[Action]:
        """One client frame. Refused frames get an error frame; the session goes on."""
        if not self._started:
            raise RuntimeError("Session.start() must come first: the welcome is the first frame")
        if self._closed:
            return []
        now = self._clock()
        self._counters.messages_in += 1
        if not self._take_token(now):
            self._counters.rate_limited += 1
            message = f"at most {self._rate:g} messages per second (bursts of {self._burst:g})"
            return [self._send(protocol.error(protocol.RATE_LIMITED, message))]
        try:
            event = protocol.parse_client(text)
        except ProtocolError as exc:
            self._counters.bad_frames += 1
            return [self._send(protocol.error(exc.code, exc.message))]
        match event:
            case LocationUpdate(lat, lng):
                return self._move(Location(self._user_id, lat, lng, now), now)
            case Ping(ident):
                return [self._send(protocol.pong(ident))]
            case SetSharing(enabled):
                return self._set_sharing(enabled, now, from_client=True)
            case SetRandomNearby(enabled):
                return self._set_random_nearby(enabled, from_client=True)
        raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover

    def on_message(self, channel: str, payload: bytes) -> list[Action]:
        """One pub/sub message, on a channel this session subscribed to (others are dropped)."""
        if not self._started or self._closed or channel not in self._subs:
            return []
        self._counters.pubsub_in += 1
        message = _parse(payload)
        data = message.data
        if data is None:
            self._counters.malformed += 1
            return []
        kind, _, rest = channel.partition(":")
        if kind == "loc":
            return self._on_friend(int(rest), data, message.location)
        if kind == "ctl":
            return self._on_control(data)
        return self._on_geo(data, message.location)

    def tick(self) -> list[Action]:
        """Expire friends whose location is older than the TTL (inactive users drop out)."""
        if not self._started or self._closed:
            return []
        now = self._clock()
        actions: list[Action] = []
        for friend, loc in sorted(self._known.items()):
            if not self._fresh(loc, now):
                actions.extend(self._update_friend(friend, loc, now))
        return actions

    def close(self) -> list[Action]:
        """Unsubscribe everything; publish nothing (the cache TTL retires our location)."""
        if self._closed:
            return []
        self._closed = True
        actions: list[Action] = [Unsubscribe(channel) for channel in sorted(self._subs)]
        self._subs.clear()
        self._geo_subs = set()
        return actions

    # -- the friend table, applied ----------------------------------------------------------

    def _fresh(self, loc: Location, now: float) -> bool:
        return loc.updated_at > now - self._ttl

    def _observe(self, loc: Location | None, now: float) -> tuple[Observation, float]:
        """Classify a friend's location (None: they stopped sharing) against ours."""
        if loc is None or not self._fresh(loc, now):
            return Observation.GONE, math.nan
        if self._location is None:
            return Observation.UNPLACED, math.nan
        distance = haversine_m(self._location.lat, self._location.lng, loc.lat, loc.lng)
        if distance <= self._radius_m:
            return Observation.IN_RANGE, distance
        return Observation.OUT_OF_RANGE, distance

    def _step(self, friend: int, loc: Location | None, now: float) -> tuple[Push, float]:
        """Apply FRIEND_TRANSITIONS to one friend: the only place views change."""
        observation, distance = self._observe(loc, now)
        view = View.SHOWN if friend in self._shown else View.HIDDEN
        new_view, push = FRIEND_TRANSITIONS[view, observation]
        if new_view is View.SHOWN:
            self._shown.add(friend)
        else:
            self._shown.discard(friend)
        if loc is None or observation is Observation.GONE:
            self._known.pop(friend, None)
        else:
            self._known[friend] = loc
        return push, distance

    def _update_friend(self, friend: int, loc: Location | None, now: float) -> list[Action]:
        push, distance = self._step(friend, loc, now)
        return self._push(friend, loc, push, distance)

    def _push(self, friend: int, loc: Location | None, push: Push, distance: float) -> list[Action]:
        """The frame a step calls for (encoded only here, when it is really sent)."""
        if push is Push.LOCATION:
            assert loc is not None
            return [self._send(protocol.friend_location(loc, distance))]
        if push is Push.LEFT_RANGE:
            return [self._send(protocol.friend_left_range(friend, distance))]
        if push is Push.OFFLINE:
            return [self._send(protocol.friend_offline(friend))]
        return []

    # -- client events ----------------------------------------------------------------------

    def _move(self, loc: Location, now: float) -> list[Action]:
        self._location = loc
        actions: list[Action] = []
        if self._sharing:
            actions.extend(self._share(loc))
        actions.extend(self._resubscribe_geo())
        for friend, known in sorted(self._known.items()):
            was_shown = friend in self._shown
            push, distance = self._step(friend, known, now)
            # Our own move: a friend the client lists and still near is not sent again (the
            # client has its coordinates and recomputes the distance); only changes of range
            # go out. That keeps pushes to the book's count, one per friend update.
            if was_shown and friend in self._shown:
                continue
            actions.extend(self._push(friend, known, push, distance))
        return actions

    def _share(self, loc: Location) -> list[Action]:
        payload = loc.payload()
        actions: list[Action] = [
            StoreLocation(loc),
            self._publish(location_channel(self._user_id), payload),
        ]
        if self._random_nearby:
            cell = encode(loc.lat, loc.lng, self._precision)
            actions.append(self._publish(geo_channel(cell), payload))
        return actions

    def _set_sharing(self, enabled: bool, now: float, *, from_client: bool) -> list[Action]:
        """Sharing changed here (from_client) or on another socket of ours (ctl: state only)."""
        was, self._sharing = self._sharing, enabled
        if not from_client:
            return []
        actions: list[Action] = []
        if was and not enabled:
            actions.append(
                self._publish(location_channel(self._user_id), offline_payload(self._user_id))
            )
        elif enabled and not was and self._location is not None:
            if self._fresh(self._location, now):
                actions.extend(self._share(self._location))
        actions.append(SaveSettings(self._sharing, self._random_nearby))
        return actions

    def _set_random_nearby(self, enabled: bool, *, from_client: bool) -> list[Action]:
        self._random_nearby = enabled
        actions = self._resubscribe()
        if from_client:
            actions.append(SaveSettings(self._sharing, self._random_nearby))
        return actions

    # -- pub/sub messages -------------------------------------------------------------------

    def _on_friend(self, friend: int, data: dict[str, Any], loc: Location | None) -> list[Action]:
        if friend not in self._friends:  # subscribed implies friend; belt and braces
            return []
        if data.get("off") is True:
            if type(data.get("u")) is not int or data["u"] != friend:
                self._counters.malformed += 1
                return []
            return self._update_friend(friend, None, self._clock())
        if loc is None or loc.user_id != friend:
            self._counters.malformed += 1
            return []
        return self._update_friend(friend, loc, self._clock())

    def _on_control(self, data: dict[str, Any]) -> list[Action]:
        op = data.get("op")
        if op in ("friend_added", "friend_removed"):
            friend = data.get("friend")
            if type(friend) is not int or friend == self._user_id:
                self._counters.malformed += 1
                return []
            if op == "friend_added":
                return self._add_friend(friend)
            return self._remove_friend(friend)
        enabled = data.get("enabled")
        if op in ("sharing", "random_nearby") and isinstance(enabled, bool):
            if op == "sharing":
                return self._set_sharing(enabled, self._clock(), from_client=False)
            return self._set_random_nearby(enabled, from_client=False)
        self._counters.malformed += 1
        return []

    def _add_friend(self, friend: int) -> list[Action]:
        if friend in self._friends:
            return []
        self._friends.add(friend)
        actions = self._resubscribe()
        actions.append(self._send(protocol.friend_added(friend)))
        return actions

    def _remove_friend(self, friend: int) -> list[Action]:
        if friend not in self._friends:
            return []
        self._friends.discard(friend)
        self._known.pop(friend, None)
        self._shown.discard(friend)
        actions = self._resubscribe()
        actions.append(self._send(protocol.friend_removed(friend)))
        return actions

    def _on_geo(self, data: dict[str, Any], loc: Location | None) -> list[Action]:
        if data.get("off") is True:
            return []  # nearby people have no "offline" frame; their entries just age out
        if loc is None:
            self._counters.malformed += 1
            return []
        me = self._location
        if (
            me is None
            or not self._random_nearby
            or loc.user_id == self._user_id
            or loc.user_id in self._friends  # friends come through loc:, with their own rules
            or not self._fresh(loc, self._clock())
        ):
            return []
        distance = haversine_m(me.lat, me.lng, loc.lat, loc.lng)
        if distance > self._radius_m:
            return []
        return [self._send(protocol.nearby_person(loc, distance))]

    # -- plumbing ---------------------------------------------------------------------------

    def _geo_cells(self) -> set[str]:
        if not self._random_nearby or self._location is None:
            return set()
        cell = encode(self._location.lat, self._location.lng, self._precision)
        return {cell, *neighbours(cell).values()}

    def _wanted_geo(self) -> set[str]:
        return {geo_channel(cell) for cell in self._geo_cells()}

    def _wanted(self) -> set[str]:
        wanted = {control_channel(self._user_id)}
        wanted.update(location_channel(f) for f in self._friends)
        wanted.update(self._wanted_geo())
        return wanted

    def _change_subs(self, current: set[str], wanted: set[str]) -> list[Action]:
        """Unsubscribe what `current` has and `wanted` lacks, then subscribe the reverse."""
        actions: list[Action] = [Unsubscribe(c) for c in sorted(current - wanted)]
        actions.extend(Subscribe(c) for c in sorted(wanted - current))
        return actions

    def _resubscribe(self) -> list[Action]:
        """Bring the subscriptions to `_wanted()` (friends, settings or cell changed)."""
        wanted = self._wanted()
        actions = self._change_subs(self._subs, wanted)
        self._subs = wanted
        self._geo_subs = self._wanted_geo()
        return actions

    def _resubscribe_geo(self) -> list[Action]:
        """Our own move can change only the geo-cell channels: compare just those (a move is
        the hot path; rebuilding 400 friend channel names per update cost more than the rest)."""
        wanted = self._wanted_geo()
        if wanted == self._geo_subs:
            return []
        actions = self._change_subs(self._geo_subs, wanted)
        self._subs = (self._subs - self._geo_subs) | wanted
        self._geo_subs = wanted
        return actions

    def _take_token(self, now: float) -> bool:
        """Token bucket: `rate` frames per second sustained, up to `burst` at once."""
        if self._refilled_at is not None:
            elapsed = max(0.0, now - self._refilled_at)
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _send(self, text: str) -> Send:
        self._counters.messages_out += 1
        return Send(text)

    def _publish(self, channel: str, payload: bytes) -> Publish:
        self._counters.published += 1
        return Publish(channel, payload)
