"""HTTP routes: the book's API, thin over the services (server.py puts them on app.state)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from starlette.responses import Response

from scalelab.hotel.auth import Auth, Principal
from scalelab.hotel.availability import AvailabilityService
from scalelab.hotel.errors import HotelError, InvalidRequest
from scalelab.hotel.hotels import HotelService
from scalelab.hotel.model import (
    RESERVATION_ID,
    GuestIn,
    HotelIn,
    PaymentIn,
    RatesIn,
    ReservationIn,
    RoomIn,
    RoomTypeIn,
)
from scalelab.hotel.rates import list_rates, set_rates
from scalelab.hotel.reservations import ReservationService
from scalelab.hotel.status import Status
from scalelab.web import json_response

router = APIRouter(prefix="/v1")

HotelId = Annotated[int, Path(ge=1, le=2**62, description="hotel id")]
TypeId = Annotated[int, Path(ge=1, le=2**62, description="room type id")]
RoomId = Annotated[int, Path(ge=1, le=2**62, description="room id")]
ReservationId = Annotated[str, Path(pattern=RESERVATION_ID.pattern, description="reservationID")]
Authorization = Annotated[str | None, Header()]


def hotel_error(request: Request, exc: Exception) -> Response:
    """Every domain error: its status, its code, its message and the details it names."""
    assert isinstance(exc, HotelError)
    body = {"error": {"code": exc.code, "message": str(exc), **exc.details}}
    return json_response(body, exc.status)


def _hotels(request: Request) -> HotelService:
    service: HotelService = request.app.state.hotels
    return service


def _reservations(request: Request) -> ReservationService:
    service: ReservationService = request.app.state.reservations
    return service


def _who(request: Request, authorization: str | None) -> Principal:
    auth: Auth = request.app.state.auth
    return auth.authenticate(authorization)


def _staff(request: Request, authorization: str | None) -> None:
    _who(request, authorization).require_staff()


# -- guests ------------------------------------------------------------------------------


@router.post("/guests", status_code=201)
def register_guest(request: Request, body: GuestIn) -> Response:
    auth: Auth = request.app.state.auth
    return json_response(auth.register(body), 201)


# -- hotels, room types, rooms, rates ------------------------------------------------------


@router.get("/hotels/{hotel_id}")
def get_hotel(request: Request, hotel_id: HotelId) -> Response:
    return json_response(_hotels(request).get_hotel(hotel_id))


@router.post("/hotels", status_code=201)
def create_hotel(request: Request, body: HotelIn, authorization: Authorization = None) -> Response:
    _staff(request, authorization)
    hotel = _hotels(request).create_hotel(body)
    return json_response(hotel, 201, {"Location": f"/v1/hotels/{hotel['id']}"})


@router.put("/hotels/{hotel_id}")
def replace_hotel(
    request: Request, hotel_id: HotelId, body: HotelIn, authorization: Authorization = None
) -> Response:
    _staff(request, authorization)
    return json_response(_hotels(request).replace_hotel(hotel_id, body))


@router.delete("/hotels/{hotel_id}", status_code=204)
def delete_hotel(
    request: Request, hotel_id: HotelId, authorization: Authorization = None
) -> Response:
    _staff(request, authorization)
    _hotels(request).delete_hotel(hotel_id)
    return Response(status_code=204)


@router.get("/hotels/{hotel_id}/room-types")
def list_room_types(request: Request, hotel_id: HotelId) -> Response:
    return json_response({"roomTypes": _hotels(request).list_room_types(hotel_id)})


@router.get("/hotels/{hotel_id}/room-types/{room_type_id}")
def get_room_type(request: Request, hotel_id: HotelId, room_type_id: TypeId) -> Response:
    return json_response(_hotels(request).get_room_type(hotel_id, room_type_id))


@router.post("/hotels/{hotel_id}/room-types", status_code=201)
def create_room_type(
    request: Request, hotel_id: HotelId, body: RoomTypeIn, authorization: Authorization = None
) -> Response:
    _staff(request, authorization)
    created = _hotels(request).create_room_type(hotel_id, body)
    location = f"/v1/hotels/{hotel_id}/room-types/{created['id']}"
    return json_response(created, 201, {"Location": location})


@router.put("/hotels/{hotel_id}/room-types/{room_type_id}")
def replace_room_type(
    request: Request,
    hotel_id: HotelId,
    room_type_id: TypeId,
    body: RoomTypeIn,
    authorization: Authorization = None,
) -> Response:
    _staff(request, authorization)
    return json_response(_hotels(request).replace_room_type(hotel_id, room_type_id, body))


@router.delete("/hotels/{hotel_id}/room-types/{room_type_id}", status_code=204)
def delete_room_type(
    request: Request, hotel_id: HotelId, room_type_id: TypeId, authorization: Authorization = None
) -> Response:
    _staff(request, authorization)
    _hotels(request).delete_room_type(hotel_id, room_type_id)
    return Response(status_code=204)


@router.get("/hotels/{hotel_id}/room-types/{room_type_id}/rates")
def get_rates(
    request: Request,
    hotel_id: HotelId,
    room_type_id: TypeId,
    start: Annotated[date, Query(alias="from")],
    end: Annotated[date, Query(alias="to")],
) -> Response:
    if not start < end or (end - start).days > 800:
        raise InvalidRequest("need from < to, at most 800 days apart")
    hotels = _hotels(request)
    h = hotels.hotel_row(hotel_id)
    t = hotels.room_type_row(hotel_id, room_type_id)
    found = list_rates(hotels.shards, hotel_id, room_type_id, h.currency, t.base_price, start, end)
    return json_response({"rates": found})


@router.put("/hotels/{hotel_id}/room-types/{room_type_id}/rates")
def put_rates(
    request: Request,
    hotel_id: HotelId,
    room_type_id: TypeId,
    body: RatesIn,
    authorization: Authorization = None,
) -> Response:
    _staff(request, authorization)
    hotels = _hotels(request)
    h = hotels.hotel_row(hotel_id)
    hotels.room_type_row(hotel_id, room_type_id)
    return json_response(
        {"updated": set_rates(hotels.shards, hotel_id, room_type_id, h.currency, body)}
    )


# Concrete rooms are the hotel's business (guests book room types): staff only, reads too.
@router.get("/hotels/{hotel_id}/rooms")
def list_rooms(
    request: Request, hotel_id: HotelId, authorization: Authorization = None
) -> Response:
    _staff(request, authorization)
    return json_response({"rooms": _hotels(request).list_rooms(hotel_id)})


@router.get("/hotels/{hotel_id}/rooms/{room_id}")
def get_room(
    request: Request, hotel_id: HotelId, room_id: RoomId, authorization: Authorization = None
) -> Response:
    _staff(request, authorization)
    return json_response(_hotels(request).get_room(hotel_id, room_id))


@router.post("/hotels/{hotel_id}/rooms", status_code=201)
def create_room(
    request: Request, hotel_id: HotelId, body: RoomIn, authorization: Authorization = None
) -> Response:
    _staff(request, authorization)
    created = _hotels(request).create_room(hotel_id, body)
    return json_response(created, 201, {"Location": f"/v1/hotels/{hotel_id}/rooms/{created['id']}"})


@router.put("/hotels/{hotel_id}/rooms/{room_id}")
def replace_room(
    request: Request,
    hotel_id: HotelId,
    room_id: RoomId,
    body: RoomIn,
    authorization: Authorization = None,
) -> Response:
    _staff(request, authorization)
    return json_response(_hotels(request).replace_room(hotel_id, room_id, body))


@router.delete("/hotels/{hotel_id}/rooms/{room_id}", status_code=204)
def delete_room(
    request: Request, hotel_id: HotelId, room_id: RoomId, authorization: Authorization = None
) -> Response:
    _staff(request, authorization)
    _hotels(request).delete_room(hotel_id, room_id)
    return Response(status_code=204)


@router.get("/hotels/{hotel_id}/availability")
def availability(
    request: Request,
    hotel_id: HotelId,
    check_in: date,
    check_out: date,
    guests: Annotated[int, Query(ge=1, le=50)] = 1,
) -> Response:
    service: AvailabilityService = request.app.state.availability
    return json_response(service.search(hotel_id, check_in, check_out, guests))


# -- reservations --------------------------------------------------------------------------


@router.post("/reservations", status_code=201)
def create_reservation(
    request: Request,
    body: ReservationIn,
    authorization: Authorization = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Response:
    guest_id = _who(request, authorization).require_guest()
    key = idempotency_key.strip('"') if idempotency_key else None
    if key is not None and key != body.reservation_id:
        raise InvalidRequest("the Idempotency-Key header must equal the body's reservationID")
    status, payload, replayed = _reservations(request).create(guest_id, body)
    headers: dict[str, str] = {"Idempotent-Replayed": "true"} if replayed else {}
    if status == 201:
        headers["Location"] = f"/v1/reservations/{body.reservation_id}"
    return Response(payload, status_code=status, headers=headers, media_type="application/json")


@router.get("/reservations")
def list_reservations(
    request: Request,
    authorization: Authorization = None,
    hotel_id: Annotated[int | None, Query(alias="hotelID", ge=1)] = None,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    who = _who(request, authorization)
    found = _reservations(request).history(
        None if who.is_staff else who.guest_id,
        hotel_id=hotel_id,
        status=status.value if status else None,
        limit=limit,
    )
    return json_response({"reservations": found})


def _guest_scope(request: Request, authorization: str | None) -> int | None:
    """None for staff (every reservation), else the guest's own id."""
    who = _who(request, authorization)
    return None if who.is_staff else who.guest_id


@router.get("/reservations/{reservation_id}")
def get_reservation(
    request: Request, reservation_id: ReservationId, authorization: Authorization = None
) -> Response:
    scope = _guest_scope(request, authorization)
    return json_response(_reservations(request).get(reservation_id, scope))


@router.delete("/reservations/{reservation_id}")
def cancel_reservation(
    request: Request, reservation_id: ReservationId, authorization: Authorization = None
) -> Response:
    scope = _guest_scope(request, authorization)
    return json_response(_reservations(request).cancel(reservation_id, scope))


@router.post("/reservations/{reservation_id}/payment")
def pay_reservation(
    request: Request,
    reservation_id: ReservationId,
    body: PaymentIn,
    authorization: Authorization = None,
) -> Response:
    scope = _guest_scope(request, authorization)
    return json_response(_reservations(request).pay(reservation_id, scope, body.method))


@router.post("/reservations/{reservation_id}/check-in")
def check_in(
    request: Request, reservation_id: ReservationId, authorization: Authorization = None
) -> Response:
    scope = _guest_scope(request, authorization)
    return json_response(_reservations(request).check_in(reservation_id, scope))
