"""The book's REST API server: users, friendships, settings, a nearby-friends snapshot and the
location history. Stateless: everything lives in the services server.py puts on app.state.

A change that open WebSocket connections must act on at once (a friend added or removed,
sharing switched) is committed first and then announced with `notify` (a control message on
each affected user's `ctl:` channel, reaching their sockets on any server). The announcement
is sent even when nothing changed, so a client that retries after a failed announcement also
repairs the sockets; the sockets treat these messages as idempotent.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Header, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.responses import Response

from scalelab.geo import haversine_m
from scalelab.nearby_friends.errors import Conflict, Forbidden, Invalid, NearbyError, Unauthorized
from scalelab.nearby_friends.history import LocationHistory
from scalelab.nearby_friends.location_cache import LocationCache
from scalelab.nearby_friends.model import Location, control_payload
from scalelab.nearby_friends.users import UserStore
from scalelab.web import HTTPError, json_response

log = logging.getLogger("scalelab.nearby_friends.api")

router = APIRouter(prefix="/v1")

Notify = Callable[[int, bytes], Awaitable[None]]
T = TypeVar("T")

UserId = Annotated[int, Path(ge=1, le=2**62, description="user id")]
Authorization = Annotated[str | None, Header()]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserIn(_Body):
    name: str = Field(min_length=1, max_length=200)


class FriendIn(_Body):
    friend_id: int = Field(ge=1, le=2**62)


class SettingsIn(_Body):
    sharing: StrictBool | None = None
    random_nearby: StrictBool | None = None


def nearby_error(request: Request, exc: Exception) -> Response:
    """Every domain error: its status, its code, its message and the details it names."""
    assert isinstance(exc, NearbyError)
    body = {"error": {"code": exc.code, "message": str(exc), **exc.details}}
    return json_response(body, exc.status)


# -- services and callers ------------------------------------------------------------------


def _users(request: Request) -> UserStore:
    users: UserStore = request.app.state.users
    return users


def _token(authorization: str | None) -> str:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("send Authorization: Bearer <token>")
    return authorization[7:].strip()


def _caller(request: Request, authorization: str | None) -> int:
    return _users(request).authenticate(_token(authorization))


def _require_self(request: Request, user_id: int, authorization: str | None) -> None:
    """Private endpoints: only the user themselves (401 without a valid token, else 403)."""
    if _caller(request, authorization) != user_id:
        raise Forbidden(f"only user {user_id} may do this", user_id=user_id)


async def _blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Database work off the event loop (the async routes await notify between steps)."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def _announce(request: Request, messages: list[tuple[int, bytes]]) -> None:
    """Tell each user's open sockets; the change is already committed either way."""
    notify: Notify = request.app.state.notify
    try:
        for user_id, payload in messages:
            await notify(user_id, payload)
    except Exception:
        log.exception("could not notify open connections")
        raise HTTPError(
            503,
            "notify_failed",
            "the change is saved, but open connections were not told; retrying is safe",
        ) from None


def _location(loc: Location) -> dict[str, float]:
    return {"lat": loc.lat, "lng": loc.lng, "updated_at": loc.updated_at}


# -- users -----------------------------------------------------------------------------------


@router.post("/users", status_code=201)
def register(request: Request, body: UserIn) -> Response:
    """Open registration: the token in the answer is shown once."""
    user_id, token = _users(request).register(body.name)
    return json_response(
        {"id": user_id, "name": body.name, "token": token},
        201,
        {"Location": f"/v1/users/{user_id}"},
    )


@router.get("/users/{user_id}")
def get_user(request: Request, user_id: UserId, authorization: Authorization = None) -> Response:
    """Any signed-in user sees a name; only the user sees their own settings."""
    caller = _caller(request, authorization)
    user = _users(request).get(user_id)
    if caller != user_id:
        user = {k: user[k] for k in ("id", "name", "created_at")}
    return json_response(user)


# -- friendships -----------------------------------------------------------------------------


@router.get("/users/{user_id}/friends")
def list_friends(
    request: Request, user_id: UserId, authorization: Authorization = None
) -> Response:
    _require_self(request, user_id, authorization)
    return json_response({"friends": _users(request).friends(user_id)})


@router.post("/users/{user_id}/friends", status_code=201)
async def add_friend(
    request: Request, user_id: UserId, body: FriendIn, authorization: Authorization = None
) -> Response:
    """201 for a new friendship, 200 if it existed; both users' sockets subscribe at once."""
    await _blocking(_require_self, request, user_id, authorization)
    friend_id = body.friend_id
    added = await _blocking(_users(request).add_friend, user_id, friend_id)
    await _announce(
        request,
        [
            (user_id, control_payload("friend_added", friend=friend_id)),
            (friend_id, control_payload("friend_added", friend=user_id)),
        ],
    )
    return json_response({"user_id": user_id, "friend_id": friend_id}, 201 if added else 200)


@router.delete("/users/{user_id}/friends/{friend_id}", status_code=204)
async def remove_friend(
    request: Request, user_id: UserId, friend_id: UserId, authorization: Authorization = None
) -> Response:
    """204 whether or not they were friends; both users' sockets unsubscribe at once."""
    await _blocking(_require_self, request, user_id, authorization)
    await _blocking(_users(request).remove_friend, user_id, friend_id)
    await _announce(
        request,
        [
            (user_id, control_payload("friend_removed", friend=friend_id)),
            (friend_id, control_payload("friend_removed", friend=user_id)),
        ],
    )
    return Response(status_code=204)


# -- settings --------------------------------------------------------------------------------


def _settings_body(sharing: bool, random_nearby: bool) -> dict[str, bool]:
    return {"sharing": sharing, "random_nearby": random_nearby}


@router.get("/users/{user_id}/settings")
def get_settings(
    request: Request, user_id: UserId, authorization: Authorization = None
) -> Response:
    _require_self(request, user_id, authorization)
    return json_response(_settings_body(*_users(request).settings(user_id)))


@router.put("/users/{user_id}/settings")
async def put_settings(
    request: Request, user_id: UserId, body: SettingsIn, authorization: Authorization = None
) -> Response:
    """Change what the body names; the user's sockets hear of each named setting at once."""
    await _blocking(_require_self, request, user_id, authorization)
    sharing, random_nearby = await _blocking(
        _users(request).set_settings,
        user_id,
        sharing=body.sharing,
        random_nearby=body.random_nearby,
    )
    messages: list[tuple[int, bytes]] = []
    if body.sharing is not None:
        messages.append((user_id, control_payload("sharing", enabled=sharing)))
    if body.random_nearby is not None:
        messages.append((user_id, control_payload("random_nearby", enabled=random_nearby)))
    await _announce(request, messages)
    return json_response(_settings_body(sharing, random_nearby))


# -- locations -------------------------------------------------------------------------------


@router.get("/users/{user_id}/nearby-friends")
def nearby_friends(
    request: Request, user_id: UserId, authorization: Authorization = None
) -> Response:
    """A snapshot from the location cache: friends who share, are fresh and within the radius,
    nearest first. 409 while the caller has no fresh location of their own."""
    _require_self(request, user_id, authorization)
    cache: LocationCache = request.app.state.cache
    radius_m = float(request.app.state.radius_m)
    me = cache.get(user_id)
    if me is None:
        raise Conflict(
            "no fresh location of yours: send one over the WebSocket first", user_id=user_id
        )
    found = cache.get_many(_users(request).sharing_friends(user_id))
    friends = []
    for friend_id, loc in found.items():
        distance = haversine_m(me.lat, me.lng, loc.lat, loc.lng)
        if distance <= radius_m:
            friends.append({"user_id": friend_id, **_location(loc), "distance_m": distance})
    friends.sort(key=lambda f: (f["distance_m"], f["user_id"]))
    return json_response(
        {"user_id": user_id, "location": _location(me), "radius_m": radius_m, "friends": friends}
    )


@router.get("/users/{user_id}/locations")
def location_history(
    request: Request,
    user_id: UserId,
    authorization: Authorization = None,
    start: Annotated[float, Query(alias="from", allow_inf_nan=False)] = 0.0,
    end: Annotated[float | None, Query(alias="to", allow_inf_nan=False)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """The user's own fixes with from <= updated_at < to (epoch seconds), oldest first."""
    _require_self(request, user_id, authorization)
    if end is not None and not start < end:
        raise Invalid("need from < to", start=start, end=end)
    history: LocationHistory = request.app.state.history
    found = history.query(user_id, start, float("inf") if end is None else end, limit)
    return json_response({"user_id": user_id, "locations": [_location(loc) for loc in found]})
