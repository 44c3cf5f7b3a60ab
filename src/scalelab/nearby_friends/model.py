"""Shared shapes: a location fix, the pub/sub channel names, and their payload encoding.

Channels (one naming scheme for in-process and Redis pub/sub):
- `loc:{user_id}`: the user's location updates (the book's one channel per user); payload
  `{"u": user_id, "lat": .., "lng": .., "t": updated_at}`, or `{"u": user_id, "off": true}`
  when the user stops sharing (friends show "went offline" at once).
- `ctl:{user_id}`: control messages for that user's open sockets on any server (the book's
  friend add/remove callback): `{"op": "friend_added" | "friend_removed", "friend": id}`,
  `{"op": "sharing", "enabled": bool}`, `{"op": "random_nearby", "enabled": bool}`.
- `geo:{geohash}`: random nearby people who opted in, by geohash cell; payload as `loc:`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class Location:
    user_id: int
    lat: float
    lng: float
    updated_at: float  # server clock, epoch seconds

    def payload(self) -> bytes:
        return orjson.dumps(
            {"u": self.user_id, "lat": self.lat, "lng": self.lng, "t": self.updated_at}
        )

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Location:
        return cls(int(data["u"]), float(data["lat"]), float(data["lng"]), float(data["t"]))


def location_channel(user_id: int) -> str:
    return f"loc:{user_id}"


def control_channel(user_id: int) -> str:
    return f"ctl:{user_id}"


def geo_channel(geohash: str) -> str:
    return f"geo:{geohash}"


def offline_payload(user_id: int) -> bytes:
    return orjson.dumps({"u": user_id, "off": True})


def control_payload(op: str, **fields: Any) -> bytes:
    return orjson.dumps({"op": op, **fields})
