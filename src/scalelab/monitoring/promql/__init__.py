"""PromQL, evaluated over any `model.Querier` (the TSDB, or `memory.MemoryStorage` in tests).

`Engine(querier).instant(query, t_ms)` and `.range(query, start, end, step)` return a
`Vector`, `Matrix`, `Scalar` or `String`, whose `to_json()` is the `data` member of
Prometheus's HTTP API answer. Parsing is promql_parser's; evaluation is ours (numpy).
"""

from .engine import Engine
from .value import Matrix, Sample, Scalar, SeriesPoints, String, Value, Vector

__all__ = ["Engine", "Matrix", "Sample", "Scalar", "SeriesPoints", "String", "Value", "Vector"]
