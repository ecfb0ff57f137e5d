"""
Strict JSON for the bodies of model endpoints, so that the gateway and the
provider read the same request.

Rules and limits judge fields of the body (C{model}, C{stream}); the
provider reads the same bytes with its own parser. Where parsers disagree,
a request can be judged by one reading and served by another: a second
C{model} key, which some parsers take first and others last, is the plain
case. L{readJSONObject} accepts only bodies that every JSON parser reads
alike, and refuses the rest:

  - bytes that are not UTF-8, a UTF-8 byte order mark, UTF-16 and UTF-32;
  - what is not JSON, including C{NaN} and C{Infinity}, which Python
    accepts;
  - a number Python cannot read faithfully: one too large for a double,
    which it reads as infinity, or an integer of thousands of digits;
  - an escaped lone surrogate (C{"\\ud800"}), which is no character at all;
  - a key twice in any object, at any depth;
  - nesting deeper than L{MAX_DEPTH} objects and arrays;
  - a top level that is not an object;
  - C{model} that is not a non-empty string, C{stream} that is not a
    boolean or null, C{stream_options} that is not an object or null.

What is refused raises L{BodyError}, a 400 for the caller.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["BodyError", "MAX_DEPTH", "readJSONObject"]

MAX_DEPTH = 64
"""
How deeply objects and arrays may nest; the top-level object is depth 1.
"""


class BodyError(ValueError):
    """
    A body that is not strict JSON, or whose known fields have the wrong
    type.

    @ivar message: a short sentence, safe to show to the caller; it names at
        most a key, never other content of the body.
    @ivar code: what kind of problem, for the error envelope's C{code}: one
        of C{invalid_encoding}, C{invalid_json}, C{duplicate_key},
        C{too_deep}, C{not_an_object}, C{invalid_field}.
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _keyName(key: str) -> str:
    """
    A key, quoted and cut short, to name in a message.
    """
    if len(key) > 40:
        return repr(key[:40]) + "..."
    return repr(key)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BodyError(f"the body has a duplicate key {_keyName(key)}", "duplicate_key")
            seen.add(key)
    return result


def _constant(name: str) -> Any:
    raise BodyError(f"the body is not valid JSON: {name} is not a JSON number", "invalid_json")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BodyError("the body has a number too large to read", "invalid_json")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float
)

# Where an escaped surrogate might be, to look no further in most bodies.
_MAYBE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")

# After a backslash: another (an escaped backslash, matched whole so that
# the scan never starts inside one), a surrogate pair, or a lone surrogate
# (group 1). Other escapes hold no backslash, so skipping them is safe.
_SURROGATE = re.compile(
    r"\\(?:\\"
    r"|u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|(u[dD][89a-fA-F][0-9a-fA-F]{2}))"
)


def _loneSurrogate(text: str) -> bool:
    """
    Whether a JSON text that parsed holds an escaped surrogate that is not
    half of a pair.
    """
    if _MAYBE_SURROGATE.search(text) is None:
        return False
    for match in _SURROGATE.finditer(text):
        if match.group(1) is not None:
            return True
    return False


_CONTAINERS = frozenset((dict, list))


def _deeperThan(root: dict[str, Any] | list[Any], limit: int) -> bool:
    """
    Whether objects and arrays nest more than C{limit} deep, C{root}
    counting as depth 1; walked a level at a time, without recursion.
    """
    level: list[Any] = [root]
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) in _CONTAINERS
        ]
        if not level:
            return False
    return True


_COUNT_UP_TO = 65536

_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def _decode(body: bytes) -> str:
    if body.startswith(_BOMS) or b"\x00" in body[:4]:
        if body.startswith(b"\xef\xbb\xbf"):
            raise BodyError("the body starts with a byte order mark", "invalid_encoding")
        raise BodyError("the body must be UTF-8, not UTF-16 or UTF-32", "invalid_encoding")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("the body is not valid UTF-8", "invalid_encoding") from None


def readJSONObject(body: bytes) -> dict[str, Any]:
    """
    Parse the body of a model endpoint strictly.

    @param body: the whole request body.
    @return: the top-level object.
    @raise BodyError: when the body is refused; see the module docstring.
    """
    text = _decode(body)
    # Counting brackets spares most bodies the walk; a large body is walked
    # without counting, since it nearly always has enough of them.
    nested = len(body) > _COUNT_UP_TO or body.count(b"[") + body.count(b"{") > MAX_DEPTH
    try:
        result = _DECODER.decode(text)
    except BodyError:
        raise
    except json.JSONDecodeError as e:
        if not text.strip(" \t\r\n"):
            raise BodyError("the body is empty", "invalid_json") from None
        where = "" if e.msg.endswith(" at") else " at"
        raise BodyError(
            f"the body is not valid JSON: {e.msg}{where} line {e.lineno} column {e.colno}",
            "invalid_json",
        ) from None
    except RecursionError:
        raise BodyError(f"the body nests deeper than {MAX_DEPTH} levels", "too_deep") from None
    except ValueError:
        # int() refuses numbers of thousands of digits.
        raise BodyError("the body has a number too long to read", "invalid_json") from None
    if nested and type(result) in (dict, list) and _deeperThan(result, MAX_DEPTH):
        raise BodyError(f"the body nests deeper than {MAX_DEPTH} levels", "too_deep")
    if _loneSurrogate(text):
        raise BodyError("the body has an escaped lone surrogate", "invalid_json")
    if type(result) is not dict:
        raise BodyError("the body must be a JSON object", "not_an_object")
    _checkFields(result)
    return result


def _checkFields(result: dict[str, Any]) -> None:
    if "model" in result:
        model = result["model"]
        if type(model) is not str:
            raise BodyError("'model' must be a string", "invalid_field")
        if not model:
            raise BodyError("'model' must not be empty", "invalid_field")
    if "stream" in result:
        stream = result["stream"]
        if stream is not None and type(stream) is not bool:
            raise BodyError("'stream' must be a boolean", "invalid_field")
    if "stream_options" in result:
        options = result["stream_options"]
        if options is not None and type(options) is not dict:
            raise BodyError("'stream_options' must be an object", "invalid_field")
