"""The hotel reservation service's settings (env: SCALELAB_HOTEL_<NAME>)."""

from __future__ import annotations

from dataclasses import dataclass

from scalelab.config import SystemSettings, setting

STRATEGIES = ("guarded", "pessimistic", "optimistic", "constraint")


@dataclass(frozen=True)
class HotelSettings(SystemSettings):
    system = "hotel"

    port: int = setting(8085, "port of the REST API (0 picks a free port)")
    database_url: str | None = setting(
        None, "SQL database (default: SQLite under the data dir; or postgresql://...)"
    )
    shards: str | None = setting(
        None,
        "comma-separated database URLs, sharded by hotel_id % count (overrides database_url)",
    )
    concurrency: str = setting(
        "guarded",
        "how a booking claims inventory: guarded (conditional UPDATE), pessimistic "
        "(SELECT ... FOR UPDATE), optimistic (version column + retries) or constraint (CHECK)",
    )
    optimistic_retries: int = setting(
        100, "attempts an optimistic booking makes before answering 409 (contention)"
    )
    inventory_horizon_days: int = setting(
        730, "how far ahead room_type_inventory rows exist (the book sizes it at 2 years)"
    )
    max_stay_nights: int = setting(30, "longest stay one reservation may cover")
    default_overbooking_percent: int = setting(
        110, "reservable share of a room type's inventory, in percent, for new hotels"
    )
    pending_timeout_seconds: float = setting(
        900.0, "how long a pending (unpaid) reservation holds its rooms before it expires"
    )
    expiry_interval_seconds: float = setting(
        5.0, "how often the sweeper looks for expired pending reservations"
    )
    idempotency_lease_seconds: float = setting(
        30.0, "after this, a request that died mid-flight no longer blocks its key"
    )
    payment_timeout_seconds: float = setting(
        5.0, "how long the payment step waits for the provider before answering 504"
    )
    cache_url: str | None = setting(
        None, "inventory cache for availability: in-process by default, redis://... to share"
    )
    cache_enabled: bool = setting(True, "read availability through the inventory cache")
    cache_namespace: str = setting(
        "hotel", "key prefix in the cache (deployments sharing one Redis need their own)"
    )
    staff_token: str | None = setting(
        None, "bearer token of hotel staff (default: a dev token kept in the data dir)", secret=True
    )
