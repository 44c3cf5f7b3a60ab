"""The exposition parser against prometheus_client (renderer and parser as the oracle), the text
format's corner cases, and fuzzing: any input yields an Exposition or a ParseError."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Timestamp
from prometheus_client.utils import floatToGoString

from scalelab.monitoring.errors import ParseError
from scalelab.monitoring.exposition import (
    ACCEPT_HEADER,
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    content_type_of,
    format_om_float,
    parse,
)
from scalelab.monitoring.model import Exposition, MetricMetadata, MetricType, labels_of

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
CONFORMANCE = Path(__file__).resolve().parent / "data" / "openmetrics" / "parsers"

Row = tuple[tuple[tuple[str, str], ...], object, int | None]


def rows(exposition: Exposition) -> list[Row]:
    """Samples with NaN made comparable."""
    return [(labels, "NaN" if math.isnan(v) else v, t) for labels, v, t in exposition.samples]


def oracle_rows(families: Iterable[Metric]) -> list[Row]:
    """prometheus_client's parse, in our shape: canonical labels, integer milliseconds."""
    out: list[Row] = []
    for family in families:
        for s in family.samples:
            labels = labels_of({**s.labels, "__name__": s.name})
            value = float(s.value)
            t = s.timestamp
            if isinstance(t, Timestamp):
                ms: int | None = t.sec * 1000 + t.nsec // 1_000_000
            elif t is None:
                ms = None
            else:
                ms = round(t * 1000)
            out.append((labels, "NaN" if math.isnan(value) else value, ms))
    return out


# ---------------------------------------------------------------------------------------------
# prometheus_client as the oracle

# Starting at a-k keeps clear of le, quantile and the metric names (m0_c...) an enum uses.
label_names = st.from_regex(r"[a-k][a-z0-9_]{0,6}", fullmatch=True)
# Lone surrogates are not text an exposition can carry (UTF-8 cannot encode them).
label_values = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
# prometheus_client's OpenMetrics parser loses track of quotes after a \" inside an exemplar.
exemplar_values = st.text(
    st.characters(exclude_characters='"', exclude_categories=["Cs"]), max_size=6
)
finite = st.floats(min_value=0, max_value=1e12, allow_nan=False)
any_float = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def registries(draw: st.DrawFn) -> CollectorRegistry:
    """A registry with a few metrics of every kind, random label values and observations."""
    registry = CollectorRegistry(auto_describe=True)
    kinds = draw(st.lists(st.sampled_from("cghsie"), min_size=1, max_size=5))
    for i, kind in enumerate(kinds):
        names = draw(st.lists(label_names, max_size=2, unique=True))
        label_sets = draw(
            st.lists(st.tuples(*[label_values] * len(names)), min_size=1, max_size=3, unique=True)
        )
        name = f"m{i}_{kind}"
        if kind == "c":
            counter = Counter(name, "a counter", names, registry=registry)
            for values in label_sets:
                child = counter.labels(*values) if names else counter
                exemplar = draw(st.none() | st.fixed_dictionaries({"trace": exemplar_values}))
                child.inc(draw(finite), exemplar=exemplar)
        elif kind == "g":
            gauge = Gauge(name, 'a "gauge"\nwith \\ escapes', names, registry=registry)
            for values in label_sets:
                (gauge.labels(*values) if names else gauge).set(draw(any_float))
        elif kind in "hs":
            if kind == "h":
                bounds = draw(st.lists(finite, min_size=1, max_size=4, unique=True))
                metric: Histogram | Summary = Histogram(
                    name, "a histogram", names, buckets=sorted(bounds), registry=registry
                )
            else:
                metric = Summary(name, "a summary", names, registry=registry)
            for values in label_sets:
                child = metric.labels(*values) if names else metric
                for v in draw(st.lists(finite, max_size=3)):
                    child.observe(v)
        elif kind == "i":
            info = Info(name, "an info", names, registry=registry)
            own_names = label_names.filter(lambda n, taken=tuple(names): n not in taken)
            for values in label_sets:
                keys = draw(st.lists(own_names, max_size=2, unique=True))
                (info.labels(*values) if names else info).info(
                    {k: draw(label_values) for k in keys}
                )
        else:
            enum = Enum(name, "an enum", names, states=["up", "down"], registry=registry)
            for values in label_sets:
                (enum.labels(*values) if names else enum).state(
                    draw(st.sampled_from(["up", "down"]))
                )
    return registry


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registries())
def test_text_format_agrees_with_prometheus_client(registry: CollectorRegistry) -> None:
    body = generate_latest(registry)
    ours = parse(body)
    assert rows(ours) == oracle_rows(text_string_to_metric_families(body.decode()))
    for family in text_string_to_metric_families(body.decode()):
        # prometheus_client names a counter family without the _total its TYPE line has.
        name = family.name + "_total" if family.type == "counter" else family.name
        meta = ours.metadata[name]
        assert (meta.type.value, meta.help) == (family.type, family.documentation)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registries())
def test_openmetrics_agrees_with_prometheus_client(registry: CollectorRegistry) -> None:
    body = om_exposition.generate_latest(registry)
    ours = parse(body, OPENMETRICS)
    assert rows(ours) == oracle_rows(om_parser.text_string_to_metric_families(body.decode()))
    for family in om_parser.text_string_to_metric_families(body.decode()):
        meta = ours.metadata[family.name]
        assert (meta.type.value, meta.help, meta.unit) == (
            family.type,
            family.documentation,
            family.unit,
        )


class _Timestamped(Collector):
    """A collector whose samples carry timestamps, which the built-in metrics never do."""

    def __init__(self, points: list[tuple[str, float, int]]) -> None:
        self.points = points

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily("stamped", "with timestamps", labels=["k"])
        counter = CounterMetricFamily("events", "with timestamps", labels=["k"])
        for key, value, ms in self.points:
            gauge.add_metric([key], value, timestamp=ms / 1000)
            counter.add_metric([key], abs(value), timestamp=ms / 1000)
        yield gauge
        yield counter


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=5),
        st.tuples(
            st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
            st.integers(min_value=0, max_value=4_102_444_800_000),  # epoch .. 2100, in ms
        ),
        min_size=1,
        max_size=4,
    )
)
def test_timestamps_agree_with_prometheus_client(points: dict[str, tuple[float, int]]) -> None:
    registry = CollectorRegistry()
    registry.register(_Timestamped([(k, v, ms) for k, (v, ms) in points.items()]))
    text = generate_latest(registry)
    assert rows(parse(text)) == oracle_rows(text_string_to_metric_families(text.decode()))
    om = om_exposition.generate_latest(registry)
    ours = rows(parse(om, OPENMETRICS))
    theirs = oracle_rows(om_parser.text_string_to_metric_families(om.decode()))
    assert [r[:2] for r in ours] == [r[:2] for r in theirs]
    for (_, _, t), (_, _, exact) in zip(ours, theirs, strict=True):
        # prometheus_client reads the decimal exactly; Prometheus (and we) multiply the float64
        # by 1000 and truncate, which can land one millisecond below.
        assert t is not None and exact is not None and 0 <= exact - t <= 1


@pytest.mark.parametrize(
    "value",
    [0.0, 1.0, -1.0, 0.25, 1e-05, 0.0001, 100000.0, 1e6, 1234567.0, 1e21, 5e-324, 1.5e300],
)
def test_le_spelling_matches_prometheus_client(value: float) -> None:
    assert format_om_float(value) == floatToGoString(value)


# ---------------------------------------------------------------------------------------------
# the text format's corner cases


def samples(body: bytes, content_type: str | None = None) -> list[tuple[dict[str, str], Any, Any]]:
    return [
        (dict(labels), "NaN" if math.isnan(v) else v, t)
        for labels, v, t in parse(body, content_type).samples
    ]


def test_escaped_label_values() -> None:
    body = rb'a{b="back\\slash",c="quo\"te",d="new\nline",e="other\q"} 1' + b"\n"
    assert samples(body) == [
        (
            {"__name__": "a", "b": "back\\slash", "c": 'quo"te', "d": "new\nline", "e": "other\\q"},
            1.0,
            None,
        )
    ]


def test_special_values() -> None:
    body = b"a +Inf\nb -Inf\nc NaN\nd nan\ne Inf\nf -infinity\ng 1e3\nh .5\ni 5.\n"
    assert [v for _, v, _ in samples(body)] == [
        math.inf,
        -math.inf,
        "NaN",
        "NaN",
        math.inf,
        -math.inf,
        1000.0,
        0.5,
        5.0,
    ]


@pytest.mark.parametrize("value", [b"1_0", b"0x10", b"0x1p-3", b"+nan", b"1e400", b"1.2.3", b"--1"])
def test_values_go_rejects(value: bytes) -> None:
    with pytest.raises(ParseError, match="^line 1: "):
        parse(b"a " + value + b"\n")


def test_missing_metadata_comments_blank_lines_and_whitespace() -> None:
    body = (
        b"\n# just a comment\n#\n#HELP not metadata\n\n"
        b'  indented{a="1" , b = "2" ,} 1 1000  \n'
        b"\t\n"
        b"tabbed\t2\t2000\n"
        b'packed{a="1"b="2"}3\n'
        b"trailing 4 \n"
        b'# HELP documented some \\\\ help\\nwith \\"quotes\\"\n'
        b"# TYPE documented counter\n"
        b"documented 5\n"
        b"# EOF is only a comment here\n"
    )
    exposition = parse(body)
    assert [(dict(labels), v, t) for labels, v, t in exposition.samples] == [
        ({"__name__": "indented", "a": "1", "b": "2"}, 1.0, 1000),
        ({"__name__": "tabbed"}, 2.0, 2000),
        ({"__name__": "packed", "a": "1", "b": "2"}, 3.0, None),
        ({"__name__": "trailing"}, 4.0, None),
        ({"__name__": "documented"}, 5.0, None),
    ]
    assert exposition.metadata == {
        "documented": MetricMetadata(MetricType.COUNTER, help='some \\ help\nwith \\"quotes\\"')
    }


def test_metadata_types_and_repeats() -> None:
    body = (
        b"# TYPE a untyped\n# HELP a first\n# HELP a second\n# TYPE h histogram\n"
        b"# HELP empty\n# TYPE s summary\n"
    )
    assert parse(body).metadata == {
        "a": MetricMetadata(MetricType.UNKNOWN, help="second"),
        "h": MetricMetadata(MetricType.HISTOGRAM),
        "empty": MetricMetadata(),
        "s": MetricMetadata(MetricType.SUMMARY),
    }


def test_empty_label_values_are_dropped_and_labels_canonical() -> None:
    ((labels, _, _),) = parse(b'z{b="",a="x",Z="y"} 1\n').samples
    assert labels == (("Z", "y"), ("__name__", "z"), ("a", "x"))


def test_le_and_quantile_normalized_like_prometheus() -> None:
    body = (
        b"# TYPE h histogram\n"
        b'h_bucket{le="1"} 1\nh_bucket{le="2.50"} 2\nh_bucket{le="+Inf"} 3\n'
        b'other{le="1"} 4\n'
        b"# TYPE s summary\n"
        b's{quantile="1"} 5\ns_count{quantile="1"} 6\n'
    )
    assert [(s[0].get("le"), s[0].get("quantile")) for s in samples(body)] == [
        ("1.0", None),
        ("2.5", None),
        ("+Inf", None),
        ("1", None),
        (None, "1.0"),
        (None, "1"),
    ]


def test_windows_line_endings_are_rejected_with_a_hint() -> None:
    # As in Prometheus, CR is no whitespace: a HELP keeps it, a sample line fails on it.
    with pytest.raises(ParseError, match=r"^line 2: .*Windows line endings"):
        parse(b"# HELP a help\r\na 1\r\n")
    assert parse(b"# HELP a help\r\n").metadata == {"a": MetricMetadata(help="help\r")}
    with pytest.raises(ParseError, match=r"^line 1: .*Windows line endings"):
        parse(b"a 1\r\n# EOF\r\n", OPENMETRICS)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'a{b="1",b="2"} 1\n', "line 1: label 'b' repeated"),
        (b'a{__name__="b"} 1\n', "line 1: __name__ inside braces"),
        (b"ok 1\na{b=1} 1\n", "line 2: expected a quoted value"),
        (b'a{b="1" 1\n', "line 1: expected a label name"),
        (b"a 1 -5\n", "line 1: expected a timestamp"),
        (b"a 1 1.5\n", "line 1: unexpected text after the timestamp"),
        (b"a 1 9223372036854775808\n", "line 1: timestamp out of int64 range"),
        (b"a\n", "line 1: expected a value"),
        (b"a-b 1\n", "line 1: expected whitespace after the metric name"),
        (b"1a 1\n", "line 1: expected a metric name"),
        (b"# TYPE a gaugehistogram\n", "line 1: invalid metric type"),
        (b"# TYPE a counter \n", "line 1: invalid metric type 'counter '"),
        (b"# HELP \n", "line 1: expected a metric name after HELP"),
        (b"a 1\n\xff 2\n", "line 2: invalid UTF-8"),
        (b"# HELP a \xff\n", "line 1: invalid UTF-8"),
    ],
)
def test_text_errors_name_the_line_and_problem(body: bytes, problem: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(body)
    assert str(caught.value).startswith(problem)


def test_invalid_utf8_in_a_plain_comment_is_ignored_as_prometheus_does() -> None:
    assert samples(b"# caf\xe9\na 1\n") == [({"__name__": "a"}, 1.0, None)]


def test_timestamps_are_integer_milliseconds() -> None:
    assert samples(b"a 1 0009223372036854775807\nb 2 0\nc 3 " + b"0" * 5000 + b"1\n") == [
        ({"__name__": "a"}, 1.0, 2**63 - 1),
        ({"__name__": "b"}, 2.0, 0),
        ({"__name__": "c"}, 3.0, 1),
    ]


# ---------------------------------------------------------------------------------------------
# OpenMetrics specifics and format selection


def test_openmetrics_timestamps_truncate_like_prometheus() -> None:
    body = b"a 1 1.001\nb 1 -1.5\nc 1 1700000000.123\nd 1 1e300\n# EOF\n"
    # float64 1.001 * 1000 is 1000.9999999999999: Prometheus's int64() makes it 1000 too.
    assert [t for _, _, t in parse(body, OPENMETRICS).samples] == [
        1000,
        -1500,
        1_700_000_000_123,
        2**63 - 1,
    ]


def test_openmetrics_keeps_created_and_drops_exemplars() -> None:
    body = (
        b"# TYPE r counter\n# UNIT r \n"
        b'r_total{p="x"} 3 # {trace_id="a\\"}bc"} 1 1700000000\n'
        b'r_created{p="x"} 1700000000.5\n'
        b"# EOF"
    )
    exposition = parse(body, OPENMETRICS)
    assert rows(exposition) == [
        ((("__name__", "r_total"), ("p", "x")), 3.0, None),
        ((("__name__", "r_created"), ("p", "x")), 1700000000.5, None),
    ]
    assert exposition.metadata == {"r": MetricMetadata(MetricType.COUNTER)}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"a 1\n", "line 2: missing '# EOF'"),
        (b"a 1\n# EOF\n\n", "line 3: text after # EOF"),
        (b"# TYPE a gauge\na 1\na 2 5\n# EOF\n", "line 3: one metric's samples mix"),
        (b"a 1 5\na 2 4\n# EOF\n", "line 2: timestamps of one metric go backwards"),
        (b"# TYPE a counter\na 1\n# EOF\n", "line 2: counter a has samples a_total, a_created"),
        (b'a{b="1"} 1\nc 1\na{b="2"} 1\n# EOF\n', "line 3: metric family a appears again"),
        (b"# TYPE a_total gauge\n# TYPE a counter\n# EOF\n", "line 2: a_total already belongs"),
    ],
)
def test_openmetrics_errors_name_the_line(body: bytes, problem: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(body, OPENMETRICS)
    assert str(caught.value).startswith(problem)


def test_repeated_series_are_left_to_the_scraper() -> None:
    # Neither the spec's suite nor Prometheus rejects them; storage reports the duplicate.
    assert [v for _, v, _ in parse(b"a 1\na 2\n# EOF\n", OPENMETRICS).samples] == [1.0, 2.0]
    assert [v for _, v, _ in parse(b"a 1\na 2\n").samples] == [1.0, 2.0]


def test_content_type_picks_the_parser() -> None:
    text_only = b"a 1\n"  # no # EOF: text format accepts, OpenMetrics rejects
    assert len(parse(text_only, None).samples) == 1
    assert len(parse(text_only, "text/plain; version=0.0.4; charset=utf-8").samples) == 1
    with pytest.raises(ParseError):
        parse(text_only, " Application/OpenMetrics-Text; version=0.0.1")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (ACCEPT_HEADER, OPENMETRICS_CONTENT_TYPE),
        (None, TEXT_CONTENT_TYPE),
        ("", TEXT_CONTENT_TYPE),
        ("*/*", TEXT_CONTENT_TYPE),
        ("text/plain;version=0.0.4;q=0.3,*/*;q=0.2", TEXT_CONTENT_TYPE),
        ("application/openmetrics-text;version=1.0.0", OPENMETRICS_CONTENT_TYPE),
        ("application/openmetrics-text;q=0.1,text/plain;q=0.5", TEXT_CONTENT_TYPE),
        ("application/openmetrics-text;q=0,*/*", TEXT_CONTENT_TYPE),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", OPENMETRICS_CONTENT_TYPE),
        (TEXT_CONTENT_TYPE, TEXT_CONTENT_TYPE),
    ],
)
def test_content_type_of(header: str | None, expected: str) -> None:
    assert content_type_of(header) == expected


def test_accept_header_prefers_openmetrics_then_text() -> None:
    parts = [p.split(";") for p in ACCEPT_HEADER.split(",")]
    assert [p[0] for p in parts] == [
        "application/openmetrics-text",
        "application/openmetrics-text",
        "text/plain",
        "text/plain",
        "*/*",
    ]
    weights = [float(p[-1].removeprefix("q=")) for p in parts]
    assert weights == sorted(weights, reverse=True)


# ---------------------------------------------------------------------------------------------
# fuzzing: nothing but an Exposition or a ParseError comes out

_SEEDS = [
    (CONFORMANCE / case / "metrics").read_bytes()
    for case in ("roundtrip", "escaping", "histogram_exemplars", "timestamps", "simple_stateset")
] + [
    b'# HELP a x\n# TYPE a histogram\na_bucket{le="1",b="x\\"y"} 1 1000\na_bucket{le="+Inf"} 2\n'
    b'a_count 2\na_sum 3\n# TYPE b summary\nb{quantile="0.5"} 1\nb_sum 1\n# EOF\n',
    b'node_cpu_seconds_total{cpu="0",mode="idle"} 1.5e+06 1700000000000\n  x 1\n',
]


def _check(data: bytes) -> None:
    for content_type in (None, OPENMETRICS):
        try:
            exposition = parse(data, content_type)
        except ParseError as exc:
            assert str(exc).startswith("line ")
        else:
            for labels, value, t in exposition.samples:
                assert labels == labels_of(labels) and isinstance(value, float)
                assert t is None or -(2**63) <= t < 2**63


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(_SEEDS),
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=1),
            st.sampled_from(["insert", "delete", "replace"]),
            st.sampled_from(list(b' \t\n\r\\"{},=#._-+:0123456789eEaINf') + [0, 0xFF, 0xC3]),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_fuzz_mutated_expositions(seed: bytes, edits: list[tuple[float, str, int]]) -> None:
    data = bytearray(seed)
    for where, op, byte in edits:
        i = int(where * len(data))
        if op == "insert":
            data[i:i] = bytes([byte])
        elif data and op == "delete":
            del data[min(i, len(data) - 1)]
        elif data:
            data[min(i, len(data) - 1)] = byte
    _check(bytes(data))
