"""The nearby friends service's settings (env: SCALELAB_NEARBY_FRIENDS_<NAME>)."""

from __future__ import annotations

from dataclasses import dataclass

from scalelab.config import SystemSettings, setting

MILE_M = 1609.344


@dataclass(frozen=True)
class NearbyFriendsSettings(SystemSettings):
    system = "nearby_friends"

    port: int = setting(8082, "port of the REST API and the WebSocket endpoint /v1/ws")
    database_url: str | None = setting(
        None, "users, friendships and location history (default: SQLite; or postgresql://...)"
    )
    pubsub_url: str | None = setting(
        None, "pub/sub: in-process by default, or redis://host:port to span server processes"
    )
    pubsub_ring: str | None = setting(
        None,
        "comma-separated redis:// URLs: channels sharded over them by consistent hashing "
        "(overrides pubsub_url)",
    )
    cache_url: str | None = setting(
        None, "location cache: in-process TTL map by default, or redis://host:port/db"
    )
    cache_namespace: str = setting("nearby", "key prefix in the location cache")
    location_ttl_seconds: float = setting(
        600.0, "a location older than this is gone: its user drops out of friends' lists"
    )
    radius_miles: float = setting(5.0, "friends within this distance are 'nearby'")
    random_nearby_precision: int = setting(
        5, "geohash precision of the random-nearby channels (5: cells of about 4.9 x 4.9 km)"
    )
    max_messages_per_second: float = setting(
        2.0, "per connection: sustained client messages allowed (bursts up to 10)"
    )
    drain_seconds: float = setting(
        5.0, "on shutdown: after the reconnect hint, how long clients get to leave"
    )
    ws_compression: bool = setting(
        False,
        "offer permessage-deflate on /v1/ws; off: frames are ~100 bytes, and deflate costs a "
        "zlib state per socket and CPU per frame",
    )
    demo_walkers: int = setting(40, "simulated walkers `--demo` starts (friends moving about)")
