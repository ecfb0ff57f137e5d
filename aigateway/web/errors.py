"""
Error answers in the OpenAI error envelope, so SDKs show them as they
show the provider's own: C{{"error": {"message", "type", "code"}}}; at the
C{/v1/messages} door, in Anthropic's (C{{"type": "error", "error": {"type",
"message"}}}), which Anthropic clients read.

A stage that refuses a request does so with L{refuse} (or returns an
L{ErrorResource}), which also writes why on the request's record, so the
report says it.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Iterable

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from aigateway.llm.messages import errorToAnthropic
from aigateway.observe.record import IExchange

__all__ = ["ErrorResource", "errorBody", "finishWith", "refuse", "setStatus", "writeError"]

# Twisted has no reason phrase for some statuses (429 among them): its
# status lines would say "Unknown Status".
_PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_PHRASES[529] = b"Overloaded"


def setStatus(request: Request, status: int) -> None:
    """
    Set C{request}'s status with its standard reason phrase.
    """
    request.setResponseCode(status, _PHRASES.get(status))

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
    api: str = "openai",
) -> bytes:
    """
    Set C{request}'s status and headers for an error and return its body,
    for a C{render} method to return.

    @param api: the API the client speaks, whose error shape the body has
        (C{openai}, or C{anthropic} at the C{/v1/messages} door).
    """
    body = errorToAnthropic(status, message) if api == "anthropic" else errorBody(status, message, code)
    setStatus(request, status)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    for name, value in headers:
        request.responseHeaders.setRawHeaders(name, [value])
    return body


def refuse(
    request: IRequest,
    status: int,
    message: str,
    code: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> bytes:
    """
    Answer with an error the gateway decided on, and write why on the
    request's record.

    @return: the body, for a C{render} method to return.
    """
    exchange = request.getComponent(IExchange)
    if exchange is None:
        return writeError(request, status, message, code, headers)
    exchange.reason = message
    exchange.errorCode = code
    return writeError(request, status, message, code, headers, exchange.api)


def finishWith(request: IRequest, body: bytes | int) -> None:
    """
    Send what a C{render} method returned, for a request rendered after its
    first C{render} call had returned C{NOT_DONE_YET}.
    """
    if body is NOT_DONE_YET:
        return
    assert isinstance(body, bytes)
    request.setHeader(b"content-length", b"%d" % (len(body),))
    request.write(body)
    request.finish()


class ErrorResource(Resource):
    """
    A small resource that refuses every request it is given.
    """

    isLeaf = True

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        super().__init__()
        self.status = status
        self.message = message
        self.code = code
        self.headers = tuple(headers)

    def render(self, request: IRequest) -> bytes:
        return refuse(request, self.status, self.message, self.code, self.headers)
