"""The nearby friends service's errors; api.py maps each class once to an HTTP status.

The WebSocket adapter reuses `code` for its error frames, so one name means one thing on both
protocols.
"""

from __future__ import annotations

from typing import Any


class NearbyError(Exception):
    code = "nearby_error"
    status = 400

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class NotFound(NearbyError):
    code = "not_found"
    status = 404


class Invalid(NearbyError):
    """Well-typed input that makes no sense (befriending yourself, from after to...)."""

    code = "invalid_request"
    status = 422


class Conflict(NearbyError):
    """The request is fine but the state does not allow it yet (no fresh location...)."""

    code = "conflict"
    status = 409


class Unauthorized(NearbyError):
    code = "unauthorized"
    status = 401


class Forbidden(NearbyError):
    code = "forbidden"
    status = 403
