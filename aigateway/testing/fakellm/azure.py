"""
Azure OpenAI: chat completions and embeddings of a deployment
(C{/openai/deployments/<deployment>/...?api-version=...}), with the
C{api-key} check and Azure's answers to a missing key or API version.
"""

from __future__ import annotations

import hmac
from typing import Callable
from urllib.parse import unquote

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from aigateway.testing.fakellm.core import Answer, Refusal, encode, queryArgument
from aigateway.testing.fakellm.openai import chatAnswer, embeddingsAnswer

__all__ = ["Azure", "azureError"]

_TYPES = {429: "rate_limit_error"}


def azureError(refusal: Refusal) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
    """
    A refusal in Azure's error envelope: OpenAI's, with the status as the
    code of the errors Azure's own front answers.
    """
    status = refusal.status
    if refusal.code == "azure":
        error: dict[str, object] = {"code": str(status), "message": refusal.message}
    else:
        kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        error = {"message": refusal.message, "type": kind, "param": None,
                 "code": refusal.code if refusal.code != "fakellm_forced_status" else str(status)}
    return encode({"error": error}), refusal.headers


class Azure:
    """
    Azure OpenAI's deployments API.
    """

    def __init__(self, clock: IReactorTime, key: str | None, nextNumber: Callable[[], int]
                 ) -> None:
        """
        @param clock: gives C{created} times.
        @param key: when set, the C{api-key} every request must carry.
        @param nextNumber: numbers answers, for their ids.
        """
        self._clock = clock
        self._expected = None if key is None else key.encode("utf-8")
        self._nextNumber = nextNumber

    def checkKey(self, request: Request, body: bytes) -> None:
        """
        Refuse a request without the right C{api-key}.
        """
        if self._expected is None:
            return
        presented = request.getHeader(b"api-key") or b""
        if not hmac.compare_digest(presented, self._expected):
            raise Refusal(401, "Access denied due to invalid subscription key or wrong API "
                               "endpoint. Make sure to provide a valid key for an active "
                               "subscription and use a correct regional API endpoint for your "
                               "resource.", "azure")

    errorAnswer = staticmethod(azureError)

    def answer(self, request: Request, body: bytes) -> Answer:
        """
        A deployment's chat completions or embeddings; a 404 for the rest,
        and for a request without C{api-version}.
        """
        segments = request.path.split(b"/")
        # b"", b"openai", b"deployments", name, operation...
        if (len(segments) < 5 or segments[1:3] != [b"openai", b"deployments"]
                or not segments[3] or request.method != b"POST"
                or not queryArgument(request, b"api-version")):
            raise Refusal(404, "Resource not found", "azure")
        deployment = unquote(segments[3].decode("latin-1"))
        operation = b"/".join(segments[4:])
        if operation == b"chat/completions":
            return chatAnswer(request, body, self._nextNumber(), int(self._clock.seconds()),
                              model=deployment)
        if operation == b"embeddings":
            return embeddingsAnswer(body, model=deployment)
        raise Refusal(404, "Resource not found", "azure")
