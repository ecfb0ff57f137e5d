"""
Error answers in the OpenAI error envelope, so SDKs show them as they
show the provider's own: C{{"error": {"message", "type", "code"}}}.
"""

from __future__ import annotations

import json
from typing import Iterable

from twisted.web.server import Request

__all__ = ["errorBody", "writeError"]

# The envelope's "type" for each status the gateway itself answers with.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def errorBody(status: int, message: str, code: str | None = None) -> bytes:
    """
    Encode the OpenAI error envelope for C{status}.
    """
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": _TYPES.get(status, "server_error"),
                "code": code,
            }
        },
        separators=(",", ":"),
    ).encode("utf-8")


def writeError(
    request: Request,
    status: int,
    message: str,
    code: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> bytes:
    """
    Set C{request}'s status and headers for an error and return its body,
    for a C{render} method to return.
    """
    body = errorBody(status, message, code)
    request.setResponseCode(status)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    for name, value in headers:
        request.responseHeaders.setRawHeaders(name, [value])
    return body
