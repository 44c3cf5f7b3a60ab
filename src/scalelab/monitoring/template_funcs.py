"""The functions alert templates can call: Go's text/template builtins and Prometheus's own.

Split from the template language (template.py) because the table is as long as its executor.
`eq`, `lt`, `printf`, `index` and the rest behave as in Go, down to their error wording;
`humanize`, `humanizeDuration`, `title`, `reReplaceAll`, `query`, `first`, `label` and the
rest as in Prometheus's template package. `make_funcs` binds `query` and `externalURL` to one
evaluation. A function raises `ArgError` for a wrong argument count or type (Go reports those
without "error calling") and any other exception for a failure of its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote_plus, urlparse

from scalelab.monitoring.gofmt import (
    GoStruct,
    go_format_value,
    go_g,
    go_print,
    go_sprintf,
    go_type,
    truth,
)


class ArgError(Exception):
    """Wrong argument count or type: Go reports these without "error calling"."""


def _want_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ArgError(f"wrong type for value; expected string; got {go_type(value)}")
    return value


def _arity(name: str, args: tuple[Any, ...], want: int) -> None:
    if len(args) != want:
        raise ArgError(f"wrong number of args for {name}: want {want} got {len(args)}")


_GO_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)\Z", re.I)


def to_float(value: Any) -> float:
    """Prometheus's convertToFloat: float64, int or a string strconv.ParseFloat accepts."""
    if isinstance(value, bool):
        raise ValueError("can't convert bool to float")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        if not _GO_FLOAT.match(value):
            raise ValueError(f'strconv.ParseFloat: parsing "{value}": invalid syntax')
        return float(value)
    raise ValueError(f"can't convert {go_type(value)} to float")


def humanize(value: Any) -> str:
    v = to_float(value)
    if v == 0 or math.isnan(v) or math.isinf(v):
        return go_g(v, 4)
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
        return go_g(v, 4) + prefix
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return go_g(v, 4) + prefix


def humanize1024(value: Any) -> str:
    v = to_float(value)
    if abs(v) <= 1 or math.isnan(v) or math.isinf(v):
        return go_g(v, 4)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024:
            break
        prefix, v = p, v / 1024
    return go_g(v, 4) + prefix


def humanize_duration(value: Any) -> str:
    v = to_float(value)
    if math.isnan(v) or math.isinf(v):
        return go_g(v, 4)
    if v == 0:
        return go_g(v, 4) + "s"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        v = abs(v)
        whole = int(v)
        secs, mins, hours, days = whole % 60, whole // 60 % 60, whole // 3600 % 24, whole // 86400
        if days:
            return f"{sign}{days}d {hours}h {mins}m {secs}s"
        if hours:
            return f"{sign}{hours}h {mins}m {secs}s"
        if mins:
            return f"{sign}{mins}m {secs}s"
        return f"{sign}{go_g(v, 4)}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return f"{go_g(v, 4)}{prefix}s"


def humanize_percentage(value: Any) -> str:
    return go_g(to_float(value) * 100, 4) + "%"


def _go_time(seconds: float) -> str:
    """Go's default time.Time formatting in UTC, as humanizeTimestamp prints it."""
    if math.isnan(seconds) or math.isinf(seconds):
        return go_g(seconds, 4)
    whole = math.floor(seconds)
    nanos = round((Decimal(repr(seconds)) - whole) * 1_000_000_000)
    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=whole)
    frac = f".{nanos:09d}".rstrip("0") if nanos else ""
    return t.strftime("%Y-%m-%d %H:%M:%S") + frac + " +0000 UTC"


def title(value: Any) -> str:
    """Go's strings.Title: upper-case letters that follow a separator, leave the rest."""
    text = _want_str(value)
    out: list[str] = []
    prev = " "
    for ch in text:
        out.append(ch.upper() if _separator(prev) else ch)
        prev = ch
    return "".join(out)


def _separator(ch: str) -> bool:
    if ch.isascii():
        return not (ch.isalnum() or ch == "_")
    if ch.isalpha() or ch.isdigit():
        return False
    return ch.isspace()


def go_eq(a: Any, *others: Any) -> bool:
    if not others:
        raise ValueError("missing argument for comparison")
    ka = _kind(a)
    for b in others:
        kb = _kind(b)
        if ka != kb:
            if a is not None and b is not None:
                raise ValueError("incompatible types for comparison")
            continue
        if ka == "other":
            if a is None or b is None:
                if (a is None) == (b is None):
                    return True
                continue
            if isinstance(a, dict | list):
                raise ValueError(f"non-comparable type {go_print(a)}: {go_type(a)}")
        if a == b:
            return True
    return False


def go_lt(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka in ("other", "bool") or kb in ("other", "bool"):
        if ka != kb and "other" not in (ka, kb):
            raise ValueError("incompatible types for comparison")
        raise ValueError("invalid type for comparison")
    if ka != kb:
        raise ValueError("incompatible types for comparison")
    return bool(a < b)


def go_le(a: Any, b: Any) -> bool:
    return go_lt(a, b) or go_eq(a, b)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def go_and(*args: Any) -> Any:
    if not args:
        raise ArgError("wrong number of args for and: want at least 1 got 0")
    for a in args:
        if not truth(a):
            return a
    return args[-1]


def go_or(*args: Any) -> Any:
    if not args:
        raise ArgError("wrong number of args for or: want at least 1 got 0")
    for a in args:
        if truth(a):
            return a
    return args[-1]


def go_len(value: Any) -> int:
    if isinstance(value, str | dict | list | tuple):
        return len(value.encode() if isinstance(value, str) else value)
    raise ValueError(f"len of type {go_type(value)}")


def go_index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key, "") if isinstance(key, str) else _bad_index(key)
        elif isinstance(value, list | tuple | str):
            if not isinstance(key, int) or not 0 <= key < len(value):
                raise ValueError(f"index out of range: {key}")
            value = value[key] if not isinstance(value, str) else value.encode()[key]
        else:
            raise ValueError(f"can't index item of type {go_type(value)}")
    return value


def _bad_index(key: Any) -> Any:
    raise ValueError(f"value has type {go_type(key)}; should be string")


def go_sprint(*args: Any) -> str:
    """fmt.Sprint: a space between operands only when neither side is a string."""
    out: list[str] = []
    for i, a in enumerate(args):
        if i > 0 and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append("<nil>" if a is None else go_format_value(a))
    return "".join(out)


def go_sprintln(*args: Any) -> str:
    return " ".join("<nil>" if a is None else go_format_value(a) for a in args) + "\n"


def go_printf(fmt: Any, *args: Any) -> str:
    return go_sprintf(_want_str(fmt), list(args))


def _html_escape(*args: Any) -> str:
    text = go_sprint(*args)
    for a, b in (("&", "&amp;"), ("'", "&#39;"), ('"', "&#34;"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(a, b)
    return text.replace("\x00", "\ufffd")


def _js_escape(*args: Any) -> str:
    text = go_sprint(*args)
    out = []
    for ch in text:
        if ch in "\\'\"<>&=":
            out.append(f"\\u{ord(ch):04X}" if ch in "<>&=" else "\\" + ch)
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _need(name: str, n: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function with Go's arity check, so `humanize 1 2` fails like Go does."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def checked(*args: Any) -> Any:
            _arity(name, args, n)
            return fn(*args)

        return checked

    return wrap


def _sample_of(value: Any) -> GoStruct:
    if not (isinstance(value, GoStruct) and value.type_name == "*template.sample"):
        raise ArgError(f"wrong type for value; expected *template.sample; got {go_type(value)}")
    return value


def _first(result: Any) -> Any:
    if not isinstance(result, list):
        raise ArgError(
            f"wrong type for value; expected template.queryResult; got {go_type(result)}"
        )
    if not result:
        raise ValueError("first() called on vector with no elements")
    return result[0]


def _sort_by_label(label: Any, result: Any) -> list[Any]:
    key = _want_str(label)
    if not isinstance(result, list):
        raise ArgError(
            f"wrong type for value; expected template.queryResult; got {go_type(result)}"
        )
    return sorted(result, key=lambda s: s.fields["Labels"].get(key, ""))


def _parse_duration(text: Any) -> float:
    from scalelab.monitoring.rulefile import parse_duration_ms

    return parse_duration_ms(_want_str(text)) / 1000


def _strip_port(host: Any) -> str:
    text = _want_str(host)
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    if text.count(":") == 1:
        return text.split(":", 1)[0]
    return text


def _no_query(q: Any) -> list[GoStruct]:
    raise ValueError("query is not available here")


FUNCS: dict[str, Callable[..., Any]] = {
    "and": go_and,
    "or": go_or,
    "not": _need("not", 1)(lambda v: not truth(v)),
    "len": _need("len", 1)(go_len),
    "index": go_index,
    "print": go_sprint,
    "printf": go_printf,
    "println": go_sprintln,
    "eq": go_eq,
    "ne": _need("ne", 2)(lambda a, b: not go_eq(a, b)),
    "lt": _need("lt", 2)(go_lt),
    "le": _need("le", 2)(go_le),
    "gt": _need("gt", 2)(lambda a, b: not go_le(a, b)),
    "ge": _need("ge", 2)(lambda a, b: not go_lt(a, b)),
    "html": _html_escape,
    "js": _js_escape,
    "urlquery": lambda *a: quote_plus(go_sprint(*a), safe=""),
    "humanize": _need("humanize", 1)(humanize),
    "humanize1024": _need("humanize1024", 1)(humanize1024),
    "humanizeDuration": _need("humanizeDuration", 1)(humanize_duration),
    "humanizePercentage": _need("humanizePercentage", 1)(humanize_percentage),
    "humanizeTimestamp": _need("humanizeTimestamp", 1)(lambda v: _go_time(to_float(v))),
    "toTime": _need("toTime", 1)(lambda v: _go_time(to_float(v))),
    "title": _need("title", 1)(title),
    "toUpper": _need("toUpper", 1)(lambda s: _want_str(s).upper()),
    "toLower": _need("toLower", 1)(lambda s: _want_str(s).lower()),
    "match": _need("match", 2)(lambda p, s: re.search(_want_str(p), _want_str(s)) is not None),
    "reReplaceAll": _need("reReplaceAll", 3)(
        lambda p, r, s: re.sub(_want_str(p), _go_repl(_want_str(r)), _want_str(s))
    ),
    "safeHtml": _need("safeHtml", 1)(_want_str),
    "stripPort": _need("stripPort", 1)(_strip_port),
    "query": _need("query", 1)(_no_query),
    "first": _need("first", 1)(_first),
    "label": _need("label", 2)(
        lambda name, s: _sample_of(s).fields["Labels"].get(_want_str(name), "")
    ),
    "value": _need("value", 1)(lambda s: _sample_of(s).fields["Value"]),
    "strvalue": _need("strvalue", 1)(lambda s: _sample_of(s).fields["Labels"].get("__value__", "")),
    "sortByLabel": _need("sortByLabel", 2)(_sort_by_label),
    "args": lambda *a: {f"arg{i}": v for i, v in enumerate(a)},
    "externalURL": _need("externalURL", 0)(lambda: ""),
    "pathPrefix": _need("pathPrefix", 0)(lambda: ""),
    "graphLink": _need("graphLink", 1)(
        lambda e: f"/graph?g0.expr={quote_plus(_want_str(e))}&g0.tab=0"
    ),
    "tableLink": _need("tableLink", 1)(
        lambda e: f"/graph?g0.expr={quote_plus(_want_str(e))}&g0.tab=1"
    ),
    "parseDuration": _need("parseDuration", 1)(_parse_duration),
}


def make_funcs(
    query: Callable[[str], list[GoStruct]] | None = None,
    external_url: str = "",
) -> dict[str, Callable[..., Any]]:
    """The function table bound to one evaluation: `query` runs PromQL at its timestamp."""
    funcs = dict(FUNCS)
    if query is not None:
        funcs["query"] = _need("query", 1)(lambda q: query(_want_str(q)))
    funcs["externalURL"] = _need("externalURL", 0)(lambda: external_url)
    funcs["pathPrefix"] = _need("pathPrefix", 0)(lambda: urlparse(external_url).path)
    return funcs


def _go_repl(repl: str) -> str:
    """Go's regexp replacement `$1`/`${name}` to Python's `\\g<1>`/`\\g<name>`."""
    out = repl.replace("\\", "\\\\")
    out = re.sub(r"\$\{(\w+)\}", r"\\g<\1>", out)
    out = re.sub(r"\$(\d+)", r"\\g<\1>", out)
    return re.sub(r"\$([A-Za-z_]\w*)", r"\\g<\1>", out).replace("$$", "$")


FUNC_NAMES = frozenset(FUNCS)
