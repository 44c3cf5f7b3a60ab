"""HTTP routes: the book's API, thin over the services."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from starlette.responses import Response

from scalelab.proximity.errors import BusinessNotFound, InvalidCursor, InvalidQuery
from scalelab.proximity.model import BusinessIn
from scalelab.proximity.service import BusinessService, LocationService
from scalelab.web import HTTPError, json_response

ERROR_STATUSES: dict[type[Exception], int] = {
    BusinessNotFound: 404,
    InvalidQuery: 400,
    InvalidCursor: 400,
}

router = APIRouter(prefix="/v1")

BusinessId = Annotated[int, Path(ge=1, le=2**63 - 1, description="business id")]


def _lbs(request: Request) -> LocationService:
    service: LocationService = request.app.state.lbs
    return service


def _businesses(request: Request) -> BusinessService:
    service: BusinessService = request.app.state.business_service
    return service


def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """Writes need the owners' API key, as X-API-Key or Authorization: Bearer."""
    given = x_api_key
    if given is None and authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not given:
        raise HTTPError(401, "unauthorized", "business writes need an API key (X-API-Key)")
    expected: str = request.app.state.api_key
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPError(403, "forbidden", "the API key is not valid")


@router.get("/search/nearby")
async def search_nearby(
    request: Request,
    latitude: Annotated[float, Query(ge=-90, le=90, allow_inf_nan=False)],
    longitude: Annotated[float, Query(ge=-180, le=180, allow_inf_nan=False)],
    radius: Annotated[float | None, Query(gt=0, allow_inf_nan=False, description="metres")] = None,
    category: Annotated[str | None, Query(max_length=60)] = None,
    open_now: bool = False,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    # Runs on the event loop: the search is sub-millisecond CPU work under the GIL, and a
    # thread-pool hop per request cost more than the search. Only a cold geohash cell touches
    # the database.
    lbs = _lbs(request)
    if radius is None:
        radius = request.app.state.settings.default_radius_m
    elif radius > lbs.max_radius_m:
        raise HTTPError(
            422, "validation_error", f"radius: must be at most {lbs.max_radius_m:g} metres"
        )
    page = lbs.search(
        latitude,
        longitude,
        radius,
        category=category,
        open_now=open_now,
        limit=limit,
        cursor=cursor,
    )
    return json_response(
        {
            "total": page.total,
            "businesses": [{**b, "distance_m": round(d, 2)} for b, d in page.results],
            "next_cursor": page.next_cursor,
        }
    )


@router.get("/businesses/{business_id}")
def get_business(request: Request, business_id: BusinessId) -> Response:
    return json_response(_businesses(request).get(business_id))


@router.post("/businesses", status_code=201, dependencies=[Depends(require_api_key)])
def create_business(request: Request, body: BusinessIn) -> Response:
    business = _businesses(request).create(body)
    return json_response(
        business.public(), 201, headers={"Location": f"/v1/businesses/{business.id}"}
    )


@router.put("/businesses/{business_id}", dependencies=[Depends(require_api_key)])
def replace_business(request: Request, business_id: BusinessId, body: BusinessIn) -> Response:
    return json_response(_businesses(request).replace(business_id, body).public())


@router.delete(
    "/businesses/{business_id}", status_code=204, dependencies=[Depends(require_api_key)]
)
def delete_business(request: Request, business_id: BusinessId) -> Response:
    _businesses(request).delete(business_id)
    return Response(status_code=204)
