"""The proximity service's errors; api.py maps each class once to an HTTP status."""


class ProximityError(Exception):
    code = "proximity_error"


class BusinessNotFound(ProximityError):
    code = "business_not_found"

    def __init__(self, business_id: int) -> None:
        super().__init__(f"no business with id {business_id}")
        self.business_id = business_id


class InvalidQuery(ProximityError):
    """A search whose parameters are well-typed but make no sense together."""

    code = "invalid_query"


class InvalidCursor(ProximityError):
    code = "invalid_cursor"
