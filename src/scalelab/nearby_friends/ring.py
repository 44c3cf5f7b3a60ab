"""The consistent-hash ring that shards pub/sub channels over Redis servers (the book's
"Redis pub/sub server cluster ... with a hash ring held by service discovery").

Every WebSocket server builds the same ring from the same config (`pubsub_ring`: the Redis
URLs), so each agrees, without talking, which server carries `loc:{user_id}`. Growing the
cluster by one server moves only about 1/n of the channels, all to the new server.

The implementation lives in `scalelab.storage.pubsub`: `open_pubsub` builds the ring from
config there, and shared storage code may not import a system (tests/test_independence.py).
It is re-exported here so the book's component is found where the book puts it.
"""

from __future__ import annotations

from scalelab.storage.pubsub import HashRing, Ring

__all__ = ["HashRing", "Ring"]
