"""The monitoring system's errors, each mapped once to Prometheus's API `errorType` and status.

The HTTP API answers `{"status": "error", "errorType": ..., "error": ...}` with the status
Prometheus uses for that type; everything below the API raises one of these.
"""

from __future__ import annotations


class MonitoringError(Exception):
    """Base class; `error_type` and `status` are what the HTTP API reports."""

    error_type = "internal"
    status = 500


class BadData(MonitoringError):
    """The request is malformed: a query that does not parse, a bad timestamp or step."""

    error_type = "bad_data"
    status = 400


class ExecutionError(MonitoringError):
    """A query parsed but cannot be evaluated (e.g. many-to-many matching)."""

    error_type = "execution"
    status = 422


class QueryTimeout(MonitoringError):
    error_type = "timeout"
    status = 503


class TooManySamples(ExecutionError):
    """A query would load more samples than the configured limit."""


class NotFound(MonitoringError):
    error_type = "not_found"
    status = 404


class Unavailable(MonitoringError):
    error_type = "unavailable"
    status = 503


class ParseError(BadData):
    """An exposition, remote-write body or line-protocol line that cannot be parsed."""


class LimitExceeded(MonitoringError):
    """A sample or series limit that protects the server was hit."""

    error_type = "bad_data"
    status = 429


class StorageError(MonitoringError):
    """Our own storage failed (a checksum mismatch, a failed fsync)."""


class OutOfOrderSample(BadData):
    """A sample older than its series' newest, or at the same time with another value."""
