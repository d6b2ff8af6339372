"""JSON request bodies read the way TGI's serde_json reads them, shared by the gateway and the emulator.

Python's `json` accepts what serde_json refuses, and fails in ways a server must not (a `RecursionError` on
deep nesting). serde_json (axum's `Json` extractor) refuses, as syntax errors (HTTP 400 "Failed to parse the
request body as JSON: ..."):

* bytes that are not UTF-8 ("invalid unicode code point"); Python would guess UTF-16 or UTF-32;
* `NaN`, `Infinity`, `-Infinity` ("expected value"), and numbers beyond f64 such as `1e400` ("number out of
  range"), which Python reads as `inf`;
* a `\\uD800`-`\\uDFFF` escape without its pair ("lone leading surrogate in hex escape"), which Python keeps
  as a lone surrogate that no UTF-8 encoder accepts later;
* nesting deeper than 128 arrays and objects ("recursion limit exceeded").

`loads` raises `JsonSyntaxError` with serde_json's message for each (positions only where Python knows them).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 128  # serde_json's recursion limit
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATES = re.compile("[\ud800-\udfff]")


class JsonSyntaxError(ValueError):
    """A body serde_json would refuse as a syntax error; `str()` is serde_json's message."""


def _no_constant(name: str) -> Any:
    raise JsonSyntaxError("expected value")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JsonSyntaxError("number out of range")
    return value


def _integer(text: str) -> int:
    """serde_json reads an integer beyond 64 bits as a float: one beyond f64 is out of range."""
    if len(text) > 300 and math.isinf(float(text)):
        raise JsonSyntaxError("number out of range")
    return int(text)


def _check(value: Any, escapes: bool) -> None:
    """Depth (iteratively: the check must not recurse) and lone surrogates, when escapes suggest any."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                raise JsonSyntaxError("recursion limit exceeded")
            if escapes:
                stack.extend((k, depth) for k in node)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise JsonSyntaxError("recursion limit exceeded")
            stack.extend((v, depth + 1) for v in node)
        elif escapes and isinstance(node, str) and _SURROGATES.search(node):
            raise JsonSyntaxError("lone leading surrogate in hex escape")


def loads(raw: bytes) -> Any:
    """The JSON value of `raw`, or JsonSyntaxError with serde_json's message."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonSyntaxError("invalid unicode code point") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite, parse_int=_integer)
    except JsonSyntaxError:
        raise
    except RecursionError:
        raise JsonSyntaxError("recursion limit exceeded") from None
    except json.JSONDecodeError as exc:
        raise JsonSyntaxError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise JsonSyntaxError(f"number out of range: {exc}") from None
    _check(value, _SURROGATE_ESCAPE.search(raw) is not None)
    return value
