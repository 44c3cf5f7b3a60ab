"""Go's formatting, where Prometheus's output shows it, and the Go values it formats.

Prometheus is written in Go, so the text it produces (expanded alert templates, alert values
and times in its API) follows Go's fmt, strconv and time packages. Those rules live here, apart
from the template language that is their main user (template.py), so that the rules API views
and promtool's messages (rules.py, ruletest.py) share them: fmt's %v and %g (`go_format_value`,
`go_g`), fmt.Sprintf's verbs (`go_sprintf`), strconv.Quote (`go_quote`), FormatFloat(v, 'e',
-1) (`go_float_e`) (RFC3339Nano is in params.py). So do the values those functions take: a Go
struct (`GoStruct`), Go's type names (`go_type`), and text/template's truth and "<no value>".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

# ------------------------------------------------------------------------- Go values


@dataclass(frozen=True, slots=True)
class GoStruct:
    """A Go struct value: named fields, as Prometheus's template data and query samples are."""

    type_name: str
    fields: dict[str, Any]


MISSING_VALUE = object()


def truth(value: Any) -> bool:
    """Go template truth: false, 0, nil and empty strings, maps and lists are false."""
    if value is None or value is MISSING_VALUE:
        return False
    if isinstance(value, bool | int | float):
        return bool(value)
    if isinstance(value, str | dict | list | tuple):
        return len(value) > 0
    return True


def go_print(value: Any) -> str:
    if value is None or value is MISSING_VALUE:
        return "<no value>"
    return go_format_value(value)


# -------------------------------------------------------------------------- Go's fmt


def go_type(value: Any) -> str:
    """The Go type name fmt and template errors print for a value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "map[string]string"
    if isinstance(value, list):
        return "template.queryResult"
    if isinstance(value, GoStruct):
        return value.type_name
    return type(value).__name__


def _digits(v: float, sig: int | None) -> tuple[str, int]:
    """Decimal digits of |v| (no trailing zeros) and the decimal point position, so that
    |v| = 0.DIGITS x 10**dp; `sig` significant digits, or the shortest round-trip ones."""
    text = repr(abs(v)) if sig is None else f"{abs(v):.{max(sig, 1) - 1}e}"
    sign, digits, exp = Decimal(text).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    nd_all = len(digits)
    assert isinstance(exp, int)
    return ds, nd_all + exp


def _special(v: float) -> str | None:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return None


def go_g(v: float, prec: int = -1) -> str:
    """Go's %g (prec -1: shortest, as %v prints a float64); %.4g is what humanize uses."""
    special = _special(v)
    if special is not None:
        return special
    neg = "-" if math.copysign(1.0, v) < 0 else ""
    if v == 0:
        return neg + "0"
    shortest = prec < 0
    ds, dp = _digits(v, None if shortest else max(prec, 1))
    nd = len(ds)
    eprec = 6 if shortest else max(prec, 1)
    if not shortest and eprec > nd >= dp:
        eprec = nd
    exp = dp - 1
    if exp < -4 or exp >= eprec:
        mant = ds[0] + ("." + ds[1:] if nd > 1 else "")
        return f"{neg}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{ds}"
    if dp >= nd:
        return neg + ds + "0" * (dp - nd)
    return f"{neg}{ds[:dp]}.{ds[dp:]}"


def go_quote(text: str) -> str:
    """strconv.Quote: a double-quoted Go string literal."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append(repr(ch)[1:-1] if ch not in "\a\v" else {"\a": "\\a", "\v": "\\v"}[ch])
        elif not ch.isprintable():
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_format_value(value: Any) -> str:
    """fmt's %v of a template value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_g(value)
    if isinstance(value, int | str):
        return str(value)
    if value is None:
        return "<nil>"
    if isinstance(value, dict):
        inner = " ".join(f"{k}:{go_format_value(value[k])}" for k in sorted(value))
        return f"map[{inner}]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_format_value(v) for v in value) + "]"
    if isinstance(value, GoStruct):
        inner = " ".join(go_format_value(v) for v in value.fields.values())
        return ("&" if value.type_name.startswith("*") else "") + "{" + inner + "}"
    return str(value)


_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+|\*)?)?([a-zA-Z%])")


def go_sprintf(fmt: str, args: list[Any]) -> str:
    """fmt.Sprintf for the verbs templates use: v s q d f F e E g G x X t c %."""
    out: list[str] = []
    pos = 0
    argi = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width_s, prec_s, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        width: int | None = None
        prec: int | None = None
        if width_s == "*" or prec_s == "*":
            for star in (width_s, prec_s):
                if star == "*":
                    n = args[argi] if argi < len(args) else None
                    argi += 1
                    if star is width_s:
                        width = n if isinstance(n, int) else None
                    else:
                        prec = n if isinstance(n, int) else None
        if width_s and width_s != "*":
            width = int(width_s)
        if prec_s is not None and prec_s != "*":
            prec = int(prec_s) if prec_s else 0
        elif m.group(0).find(".") >= 0 and prec is None and prec_s is None:
            prec = 0
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        out.append(_fmt_one(arg, flags, width, prec, verb))
    out.append(fmt[pos:])
    if argi < len(args):
        extra = ", ".join(f"{go_type(a)}={go_format_value(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _pad(text: str, flags: str, width: int | None) -> str:
    if width is None or len(text) >= width:
        return text
    return text.ljust(width) if "-" in flags else text.rjust(width)


def _fmt_one(arg: Any, flags: str, width: int | None, prec: int | None, verb: str) -> str:
    spec = "%" + flags + (str(width) if width is not None else "")
    spec += f".{prec}" if prec is not None else ""
    bad = f"%!{verb}({go_type(arg)}={go_format_value(arg)})"
    if arg is None:
        return "<nil>" if verb == "v" else f"%!{verb}(<nil>)"
    if isinstance(arg, bool):
        return _pad(go_format_value(arg), flags, width) if verb in "vt" else bad
    if isinstance(arg, float):
        special = _special(arg)
        if verb in "vgGeEfF" and special is not None:
            if "+" in flags and special == "NaN":
                special = "+NaN"
            return _pad(special, flags.replace("0", ""), width)
        if verb in "vgG":
            text = go_g(arg, -1 if prec is None else prec)
            if verb == "G":
                text = text.upper()
            if "+" in flags and not text.startswith("-"):
                text = "+" + text
            if "0" in flags and width is not None and "-" not in flags:
                sign = text[0] if text[0] in "+-" else ""
                return sign + text[len(sign) :].rjust(width - len(sign), "0")
            return _pad(text, flags, width)
        if verb in "eEfF":
            return (spec + verb.lower() if verb == "F" else spec + verb) % arg
        return bad
    if isinstance(arg, int):
        if verb in "vd":
            return (spec + "d") % arg
        if verb in "xXob":
            return format(
                arg, ("" if width is None else ("0" if "0" in flags else "") + str(width)) + verb
            )
        if verb == "c":
            return _rune(arg)
        if verb == "q":
            return "'" + _rune(arg) + "'"
        return bad
    if isinstance(arg, str):
        if verb in "vs":
            return (spec + "s") % arg
        if verb == "q":
            return _pad(go_quote(arg), flags, width)
        if verb in "xX":
            text = arg.encode().hex()
            return _pad(text.upper() if verb == "X" else text, flags, width)
        return bad
    if verb in "vs":
        return _pad(go_format_value(arg), flags, width)
    return bad


# ------------------------------------------------------------------ strconv and time


def _rune(code: int) -> str:
    """Go's conversion of an int to a rune: invalid code points (negative, surrogates, past
    U+10FFFF) become U+FFFD."""
    if 0 <= code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
        return chr(code)
    return "\ufffd"


def go_float_e(v: float) -> str:
    """strconv.FormatFloat(v, 'e', -1, 64), how the API prints an alert's value."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, v) < 0 else ""
    if v == 0:
        return sign + "0e+00"
    _, digits, exp = Decimal(repr(abs(v))).as_tuple()
    assert isinstance(exp, int)
    ds = "".join(map(str, digits))
    stripped = ds.rstrip("0")
    e = len(ds) + exp - 1
    mant = stripped[0] + ("." + stripped[1:] if len(stripped) > 1 else "")
    return f"{sign}{mant}e{'-' if e < 0 else '+'}{abs(e):02d}"
