"""The hotel service's errors; api.py maps each class once to an HTTP status."""

from __future__ import annotations

from typing import Any


class HotelError(Exception):
    code = "hotel_error"
    status = 400

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class NotFound(HotelError):
    code = "not_found"
    status = 404


class InvalidRequest(HotelError):
    """Well-typed input that makes no sense (check-out before check-in, past dates...)."""

    code = "invalid_request"
    status = 422


class SoldOut(HotelError):
    """Some night of the stay has no reservable room of the type left."""

    code = "sold_out"
    status = 409


class Contention(HotelError):
    """Optimistic locking ran out of retries: rooms may be left, try again."""

    code = "contention"
    status = 409


class InvalidTransition(HotelError):
    """The reservation's status does not allow the action (cancel a refunded one...)."""

    code = "invalid_transition"
    status = 409


class InUse(HotelError):
    """A change would leave reservations without rooms (shrink inventory below bookings)."""

    code = "in_use"
    status = 409


class IdempotencyMismatch(HotelError):
    """The reservationID was used before with a different request body."""

    code = "idempotency_key_reused"
    status = 422


class RequestInFlight(HotelError):
    """A request with the same reservationID is still being processed."""

    code = "request_in_flight"
    status = 409


class PaymentDeclined(HotelError):
    code = "payment_declined"
    status = 402


class PaymentTimeout(HotelError):
    """The provider did not answer in time; the reservation stays pending and may be retried."""

    code = "payment_timeout"
    status = 504


class NoRoomFree(HotelError):
    """Check-in found no concrete room of the type free for the whole stay (overbooked)."""

    code = "no_room_free"
    status = 409


class Unauthorized(HotelError):
    code = "unauthorized"
    status = 401


class Forbidden(HotelError):
    code = "forbidden"
    status = 403
