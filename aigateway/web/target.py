"""
The request-target in one normal form, so that the gateway judges exactly
what it forwards.

A gateway and the server behind it must read a target the same way, or a
request judged as one thing is served as another (C{/v1/chat/%63ompletions},
C{/v1/chat/completions#x}, C{/r/..%2fv1}). L{normalTarget} reads the raw
target of the request line once and returns the path and query the gateway
routes on and forwards:

  - absolute-form (C{http://host/path?q}) is reduced to its path and query;
    any other form must start with C{/};
  - the fragment is dropped (clients never send one; servers ignore it);
  - the query is kept byte for byte, but must be printable ASCII with valid
    percent-escapes;
  - the path may hold only RFC 3986 path characters; C{;} is refused, since
    servers disagree on path parameters;
  - escapes of unreserved characters are decoded (C{%63} is C{c}); escapes of
    C{/} and C{\\} are refused, since servers disagree on whether they split
    segments; escapes of control bytes are refused; every other escape is
    kept, with upper-case hex;
  - runs of slashes become one, and a trailing slash is removed;
  - a C{.} or C{..} segment is refused rather than resolved: resolving
    C{..} could climb out of the prefix a route matched.

What cannot be read safely raises L{TargetError}, a 400 for the caller.
"""

from __future__ import annotations

import re

__all__ = ["TargetError", "normalTarget"]


class TargetError(ValueError):
    """
    A request-target that has no safe normal form.

    @ivar message: a short sentence, safe to show to the caller; it never
        holds the query, which can carry a token.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# RFC 3986 pchar without "%" and ";": unreserved, sub-delims but ";", ":", "@".
_PCHAR = rb"A-Za-z0-9\-._~!$&'()*+,=:@"

# The common case in one match: plain segments, no escape, no empty
# segment, no trailing slash, no fragment; an optional well-formed query.
# A dot segment still matches, so a path holding "/." takes the slow path.
_FAST = re.compile(
    rb"((?:/[" + _PCHAR + rb"]++)++|/)"
    rb"(?:\?((?:[\x21\x22\x24\x26-\x7e]++|%[0-9A-Fa-f]{2})*+))?"
)

_ABSOLUTE = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://([^/?#]*)(.*)", re.DOTALL)
_AUTHORITY = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,=:\[\]%]+")
_QUERY = re.compile(rb"(?:[\x21\x22\x24\x26-\x7e]++|%[0-9A-Fa-f]{2})*+")
_QUERY_BYTE = re.compile(rb"[^\x21-\x7e]")
_PATH = re.compile(rb"[" + _PCHAR + rb"/%]*")
_PATH_BYTE = re.compile(rb"[^" + _PCHAR + rb"/%]")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(rb"//+")

_UNRESERVED = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)


def _escapeTable() -> dict[bytes, bytes | str]:
    """
    What each two-digit hex escape becomes: the bytes to write, or the
    sentence of the L{TargetError} it raises.
    """
    table: dict[bytes, bytes | str] = {}
    digits = b"0123456789abcdefABCDEF"
    for high in digits:
        for low in digits:
            key = bytes([high, low])
            value = int(key, 16)
            result: bytes | str
            if value in _UNRESERVED:
                result = bytes([value])
            elif value in (0x2F, 0x5C):
                result = "the request path has an encoded slash"
            elif value < 0x20 or value == 0x7F:
                result = "the request path has an encoded control character"
            else:
                result = b"%" + key.upper()
            table[key] = result
    return table


_ESCAPES = _escapeTable()


def _unescape(match: re.Match[bytes]) -> bytes:
    result = _ESCAPES[match.group(1)]
    if isinstance(result, str):
        raise TargetError(result)
    return result


def normalTarget(target: bytes) -> tuple[bytes, bytes]:
    """
    Read a raw request-target into its normal form.

    @param target: the request-target exactly as the request line held it.
    @return: C{(path, query)}: the normal path, and the query without its
        C{?} (C{b""} when there is none).
    @raise TargetError: when the target has no safe normal form.
    """
    match = _FAST.fullmatch(target)
    if match is not None:
        path, query = match.groups(b"")
        if b"/." not in path:
            return path, query
    return _slowTarget(target)


def _slowTarget(target: bytes) -> tuple[bytes, bytes]:
    if not target:
        raise TargetError("the request target is empty")
    if target[:1] != b"/":
        absolute = _ABSOLUTE.match(target)
        if absolute is None:
            raise TargetError("the request target must be a path starting with '/'")
        authority, rest = absolute.groups()
        if b"@" in authority:
            raise TargetError("the request target has user information")
        if _AUTHORITY.fullmatch(authority) is None:
            raise TargetError("the request target has an invalid host")
        target = rest if rest[:1] == b"/" else b"/" + rest

    target = target.partition(b"#")[0]
    path, _, query = target.partition(b"?")

    if _QUERY.fullmatch(query) is None:
        if _QUERY_BYTE.search(query) is not None:
            raise TargetError("the request query has a byte that is not allowed")
        raise TargetError("the request query has an invalid percent-escape")

    if _PATH.fullmatch(path) is None:
        bad = _PATH_BYTE.search(path)
        assert bad is not None
        byte = bad.group()
        if byte == b";":
            raise TargetError("the request path has a parameter (';')")
        if byte == b"\\":
            raise TargetError("the request path has a backslash")
        raise TargetError(f"the request path has a byte that is not allowed (0x{byte[0]:02X})")

    if b"%" in path:
        if _BAD_ESCAPE.search(path) is not None:
            raise TargetError("the request path has an invalid percent-escape")
        path = _ESCAPE.sub(_unescape, path)

    if b"//" in path:
        path = _SLASHES.sub(b"/", path)
    if len(path) > 1 and path.endswith(b"/"):
        path = path[:-1]

    if b"/." in path:
        segments = path.split(b"/")
        if b"." in segments or b".." in segments:
            raise TargetError("the request path has a '.' or '..' segment")
    return path, query
