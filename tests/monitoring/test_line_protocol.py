"""The book's line protocol: examples, every rejection with its line number, round trips, fuzz."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.monitoring import errors
from scalelab.monitoring.line_protocol import (
    format_line,
    format_lines,
    parse_line,
    parse_lines,
    parse_timestamp,
    parse_value,
)
from scalelab.monitoring.model import STALE_NAN, Labels, labels_of

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def test_the_books_example() -> None:
    body = b"CPU.load host=webserver01,region=us-east 1613856000 50\n"
    assert parse_lines(body) == [
        (
            (("__name__", "CPU_load"), ("host", "webserver01"), ("region", "us-east")),
            1613856000000,
            50.0,
        )
    ]


def test_labels_are_optional() -> None:
    assert parse_lines(b"up 1613856000 1") == [((("__name__", "up"),), 1613856000000, 1.0)]


def test_blank_lines_comments_crlf_and_blanks() -> None:
    body = (
        b"# pushed by agent 7\r\n"
        b"\r\n"
        b"   \t\n"
        b"  a.b.c\t x=1,y=2   1613856000  \t 1.5  \r\n"
        b"d 1613856001 2"
    )
    assert parse_lines(body) == [
        ((("__name__", "a_b_c"), ("x", "1"), ("y", "2")), 1613856000000, 1.5),
        ((("__name__", "d"),), 1613856001000, 2.0),
    ]
    assert parse_lines(b"") == []
    assert parse_lines(b"\n\n# only comments\n") == []


def test_labels_come_back_canonical() -> None:
    ((labels, _, _),) = parse_lines(b"m zone=b,az=a,empty= 1 1")
    assert labels == labels_of({"__name__": "m", "zone": "b", "az": "a"})


def test_metric_names_keep_colons() -> None:
    ((labels, _, _),) = parse_lines(b"job:rate.5m 1 1")
    assert labels == (("__name__", "job:rate_5m"),)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (r"a=x\ y", "x y"),
        (r"a=x\,y", "x,y"),
        (r"a=x\=y", "x=y"),
        (r"a=x\\y", "x\\y"),
        ("a=x\\\ty", "x\ty"),
        (r"a=C:\tmp", "C:\\tmp"),  # an unknown escape stays as written
        (r"a=x\\", "x\\"),  # a value ending in a backslash writes it escaped
        ("a=x=y", "x=y"),  # '=' in a value needs no escape
        ("a=ünïcødé", "ünïcødé"),
        ('a="quoted"', '"quoted"'),  # quotes are ordinary characters
    ],
)
def test_label_value_escapes(field: str, value: str) -> None:
    ((labels, _, _),) = parse_lines(f"m {field} 1 1".encode())
    assert labels == (("__name__", "m"), ("a", value))


@pytest.mark.parametrize(
    ("token", "millis"),
    [
        ("1613856000", 1613856000000),  # seconds
        ("1613856000.5", 1613856000500),
        ("1613856000.1234", 1613856000123),
        ("1613856000.0005", 1613856000000),  # half to even
        ("1613856000.0015", 1613856000002),
        ("1.613856e9", 1613856000000),
        (".5", 500),
        ("-1.5", -1500),
        ("0", 0),
        ("99999999999", 99999999999000),  # the last second before the ms range
        ("100000000000", 100000000000),  # milliseconds from 1e11 (1973-03-03)
        ("1613856000123", 1613856000123),
        ("1613856000123.5", 1613856000124),
        ("99999999999999", 99999999999999),
        ("100000000000000", 100000000000),  # microseconds from 1e14
        ("1613856000123500", 1613856000124),  # half to even
        ("1613856000122500", 1613856000122),
        ("100000000000000000", 100000000000),  # nanoseconds from 1e17
        ("1613856000123456789", 1613856000123),
        ("-1613856000123456789", -1613856000123),
        ("9223372036854775807000000", INT64_MAX),
        ("-9223372036854775808000000", INT64_MIN),
        ("+5", 5000),
    ],
)
def test_timestamp_units_by_magnitude(token: str, millis: int) -> None:
    assert parse_timestamp(token) == millis


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("50", 50.0),
        ("-1.5e3", -1500.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("+Inf", math.inf),
        ("-Inf", -math.inf),
        ("inf", math.inf),
        ("Infinity", math.inf),
    ],
)
def test_values(token: str, expected: float) -> None:
    assert parse_value(token) == expected


def test_nan_and_negative_zero_values() -> None:
    assert math.isnan(parse_value("NaN"))
    assert math.isnan(parse_value("nan"))
    assert math.copysign(1.0, parse_value("-0")) == -1.0


# --- rejections ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("cpu", "expected '<metric> \\[<labels>\\] <timestamp> <value>'"),
        ("cpu 1", "expected"),
        ("cpu a=1 b=2 1 1", "5 fields, expected at most 4"),
        ("cpu a=x y 1 1", "5 fields"),  # an unescaped space in a value
        ("cpu host=a 50", "missing timestamp or value"),
        ("1cpu 1 1", "invalid metric name '1cpu'"),
        ("cpu-load 1 1", "invalid metric name 'cpu-load'"),
        ("cpu{a=1} 1 1", "invalid metric name"),
        ("cpu 1a=x 1 1", "invalid label name '1a'"),
        ("cpu a-b=x 1 1", "invalid label name 'a-b'"),
        ("cpu a.b=x 1 1", "invalid label name 'a.b'"),
        ("cpu =x 1 1", "invalid label name ''"),
        ("cpu __name__=x 1 1", "reserved"),
        ("cpu __x=y 1 1", "reserved"),
        ("cpu a=1,a=2 1 1", "duplicate label name 'a'"),
        ("cpu a=1,a= 1 1", "duplicate label name 'a'"),
        ("cpu host 1 1", "bad label 'host'"),
        ("cpu a=1,b 1 1", "bad label 'b'"),
        ("cpu a=1, 1 1", "bad labels"),
        ("cpu a=1,,b=2 1 1", "bad label ''"),
        ("cpu a\\ b=1 1 1", "bad label"),
        ("cpu abc 1", "invalid timestamp 'abc'"),
        ("cpu 1_000 1", "invalid timestamp '1_000'"),
        ("cpu \u0661\u0662\u0663 1", "invalid timestamp"),  # Arabic-Indic digits
        ("cpu nan 1", "invalid timestamp 'nan'"),
        ("cpu inf 1", "invalid timestamp 'inf'"),
        ("cpu 0x10 1", "invalid timestamp"),
        ("cpu 1e30 1", "out of range"),
        ("cpu 9223372036854775808000001 1", "out of range"),
        ("cpu 9e999999999 1", "out of range"),
        ("cpu " + "1" * 65 + " 1", "too long"),
        ("cpu 1 abc", "invalid value 'abc'"),
        ("cpu 1 1_0", "invalid value"),
        ("cpu 1 0x10", "invalid value"),
        ("cpu 1 \u0661", "invalid value"),
        ("cpu 1 infinit", "invalid value"),
        ("cpu 1 1\\", "invalid value"),
        ("cpu 1 " + "1" * 65, "invalid value"),
    ],
)
def test_bad_lines_name_their_line_number(line: str, message: str) -> None:
    body = f"ok 1 1\n# comment\n{line}\nok 2 2\n".encode()
    with pytest.raises(errors.ParseError, match="^line 3: .*" + message):
        parse_lines(body)


def test_invalid_utf8_names_its_line() -> None:
    with pytest.raises(errors.ParseError, match="^line 2: not valid UTF-8"):
        parse_lines(b"ok 1 1\ncpu a=\xff 1 1\n")


def test_parse_line_raises_value_error() -> None:
    with pytest.raises(ValueError, match="invalid value"):
        parse_line("cpu 1 x")


# --- formatting ----------------------------------------------------------------------------


def test_format_line_examples() -> None:
    labels = (("__name__", "cpu_load"), ("host", "web 01"), ("path", "C:\\x,y=z"))
    line = format_line(labels, 1613856000500, 50.0)
    assert line == r"cpu_load host=web\ 01,path=C:\\x\,y\=z 1613856000.500 50.0"
    assert format_line((("__name__", "up"),), 1613856000000, math.nan) == "up 1613856000 NaN"
    assert format_line((("__name__", "up"),), -1500, -math.inf) == "up -1.500 -Inf"
    assert format_line((("__name__", "up"),), 10**14, math.inf) == "up 100000000000000000000 +Inf"
    body = format_lines([((("__name__", "a"),), 1000, 1.0), ((("__name__", "b"),), 2000, 2.0)])
    assert body == b"a 1 1.0\nb 2 2.0\n"


@pytest.mark.parametrize(
    "labels",
    [
        (("__name__", "up"), ("a", "x\ny")),
        (("__name__", "up"), ("a", "x\r")),
        (("__name__", "up"), ("1a", "x")),
        (("__name__", "up"), ("__meta", "x")),
        (("a", "x"),),
        (("__name__", "cpu.load"),),
    ],
)
def test_format_line_refuses_what_cannot_be_written(labels: Labels) -> None:
    with pytest.raises(ValueError):
        format_line(labels, 1, 1.0)


def test_staleness_marker_is_just_nan_here() -> None:
    ((_, _, value),) = parse_lines(format_line((("__name__", "up"),), 1, STALE_NAN).encode())
    assert math.isnan(value)


# --- round trips ---------------------------------------------------------------------------

metric_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,15}", fullmatch=True)
label_names = st.from_regex(
    r"[a-zA-Z][a-zA-Z0-9_]{0,10}|_[a-zA-Z0-9][a-zA-Z0-9_]{0,9}", fullmatch=True
)
label_values = st.text(
    st.characters(codec="utf-8", exclude_characters="\n\r"), min_size=1, max_size=12
)
values = st.one_of(
    st.floats(),
    st.integers(0, (1 << 64) - 1).map(lambda b: struct.unpack("<d", struct.pack("<Q", b))[0]),
    st.sampled_from([-0.0, 0.0, math.inf, -math.inf, math.nan]),
)
timestamps = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(-(10**15), 10**15),
    st.sampled_from([INT64_MIN, INT64_MAX, 0, -1, 10**14 - 1, 10**14, -(10**14)]),
)


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or struct.pack("<d", a) == struct.pack("<d", b)


@given(
    st.lists(
        st.tuples(
            metric_names,
            st.dictionaries(label_names, label_values, max_size=4),
            timestamps,
            values,
        ),
        max_size=5,
    )
)
def test_round_trip(samples: list[tuple[str, dict[str, str], int, float]]) -> None:
    expected = [(labels_of({**extra, "__name__": name}), t, v) for name, extra, t, v in samples]
    parsed = parse_lines(format_lines(expected))
    assert len(parsed) == len(expected)
    for (labels, t, v), (want_labels, want_t, want_v) in zip(parsed, expected, strict=True):
        assert (labels, t) == (want_labels, want_t)
        assert same_float(v, want_v)


@given(st.from_regex(r"[a-zA-Z_:.][a-zA-Z0-9_:.]{0,15}", fullmatch=True))
def test_dots_become_underscores(name: str) -> None:
    ((labels, _, _),) = parse_lines(f"{name} 1 1".encode())
    assert labels == (("__name__", name.replace(".", "_")),)


@given(st.integers(-(10**11) + 1, 10**11 - 1), st.integers(0, 999_999))
def test_fractional_seconds_round_to_the_nearest_millisecond(seconds: int, micros: int) -> None:
    sign = "-" if seconds < 0 else ""
    token = f"{sign}{abs(seconds)}.{micros:06d}"
    total_micros = abs(seconds) * 1_000_000 + micros
    millis, rest = divmod(total_micros, 1000)
    if rest > 500 or (rest == 500 and millis % 2):
        millis += 1
    assert parse_timestamp(token) == (-millis if sign else millis)


# --- fuzz ----------------------------------------------------------------------------------


def parse_or_parse_error(body: bytes) -> None:
    try:
        result = parse_lines(body)
    except errors.ParseError as exc:
        assert str(exc).startswith("line ")
        return
    for labels, t, v in result:
        assert labels == labels_of(labels)
        assert INT64_MIN <= t <= INT64_MAX
        assert isinstance(v, float)


@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(body: bytes) -> None:
    parse_or_parse_error(body)


@given(st.text(alphabet="ab_.:=,\\ \t\n\r#0123456789eE+-.xnaifNI\u00e9", max_size=80))
def test_fuzz_near_valid_text(text: str) -> None:
    parse_or_parse_error(text.encode())
