"""What the text format and OpenMetrics parsers share: the grammar's pieces and the errors.

Both formats spell metric and label names, quoted label values, escapes and numbers the same
way, so the regular expressions for those live here, with what both parsers do with them:
error messages that name the line (`fail`), unescaping, rejecting repeated label names
(`duplicate_error`), and the OpenMetrics spelling of `le` and `quantile` values (`format_om_float`,
`normalized_bound`) that keeps a series' identity whichever format was served. Split from
exposition.py (the entry point and the text format) and openmetrics.py.
"""

from __future__ import annotations

import re

from scalelab.monitoring.errors import ParseError
from scalelab.monitoring.model import METRIC_NAME

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LNAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
REAL = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
NUMBER = rf"(?:{REAL}|[+-]?[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])"

PAIR = re.compile(rf'({LNAME}+)="([^"\\]*+)"')
NAME_AT = re.compile(NAME)
LNAME_AT = re.compile(LNAME)
QUOTED_AT = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
NUMBER_RE = re.compile(rf"{NUMBER}\Z")
_ESCAPE = re.compile(r"\\(.)", re.S)

LABEL_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def fail(lineno: int, problem: str, line: str) -> ParseError:
    shown = line if len(line) <= 120 else line[:117] + "..."
    hint = " (a CR: Windows line endings are not allowed)" if line.endswith("\r") else ""
    return ParseError(f"line {lineno}: {problem}{hint}: {shown!r}")


def unescape(raw: str, table: dict[str, str]) -> str:
    if "\\" not in raw:
        return raw
    return _ESCAPE.sub(lambda m: table.get(m.group(1), m.group(0)), raw)


def duplicate_error(pairs: list[tuple[str, str]], lineno: int, line: str) -> ParseError:
    """The error for a label set with a repeated name (the metric name was appended last)."""
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            break
        seen.add(k)
    what = "__name__ inside braces" if k == METRIC_NAME else f"label {k!r} repeated"
    return fail(lineno, what, line)


def format_om_float(value: float) -> str:
    """Go's FormatFloat(v, 'g', -1, 64) plus ".0" when that reads as an integer: the spelling
    Prometheus gives `le` and `quantile` values (1.0, 0.25, 1e-05, 100000.0, 1e+06, +Inf)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0.0"
    text = repr(value)
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, _, exp_text = text.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    point = len(whole) + (int(exp_text) if exp_text else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    exp = point - 1
    if exp < -4 or exp >= 6:
        rest = "." + digits[1:] if len(digits) > 1 else ""
        out = f"{digits[0]}{rest}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    elif point <= 0:
        out = "0." + "0" * -point + digits
    elif point >= len(digits):
        out = digits + "0" * (point - len(digits))
    else:
        out = digits[:point] + "." + digits[point:]
    if "." not in out and "e" not in out:
        out += ".0"
    return sign + out


_normal_cache: dict[str, str] = {}


def normalized_bound(value: str) -> str:
    """The OpenMetrics spelling of a float label value; values that are no float stay as is."""
    hit = _normal_cache.get(value)
    if hit is None:
        hit = format_om_float(float(value)) if NUMBER_RE.match(value) else value
        if len(_normal_cache) < 4096:
            _normal_cache[value] = hit
    return hit
