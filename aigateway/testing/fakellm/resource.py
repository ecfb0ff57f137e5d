"""
The fake LLM's one resource: it records every request, picks the API the
path belongs to, checks that API's credentials, and answers after the delay
asked for.
"""

from __future__ import annotations

import collections
import itertools
from functools import partial

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from aigateway.testing.fakellm.anthropic import Anthropic
from aigateway.testing.fakellm.azure import Azure
from aigateway.testing.fakellm.bedrock import Bedrock
from aigateway.testing.fakellm.core import (
    Answer,
    Dialect,
    Exchange,
    Refusal,
    SeenRequest,
    integerHeader,
    millisecondsHeader,
)
from aigateway.testing.fakellm.gemini import Gemini
from aigateway.testing.fakellm.openai import OpenAI

__all__ = ["FakeLLM"]

_KEEP = 100


def _refusalAnswer(dialect: Dialect, refusal: Refusal) -> Answer:
    body, headers = dialect.errorAnswer(refusal)
    return partial(Exchange.respond, status=refusal.status, body=body, headers=headers)


class FakeLLM(Resource):
    """
    The fake LLM: one leaf resource that answers every path.

    @ivar requests: the last hundred requests received, oldest first.
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime, key: str | None = None,
                 awsAccessKeyId: str | None = None,
                 awsSecretAccessKey: str | None = None) -> None:
        """
        @param clock: schedules delays and stream gaps; C{created} times
            come from it too.
        @param key: when set, the key every request must carry, in the
            header its API carries keys in.
        @param awsAccessKeyId: with C{awsSecretAccessKey}, the credentials
            Bedrock requests must be signed with; without them a Bedrock
            signature is checked for its form only.
        @param awsSecretAccessKey: the secret that goes with
            C{awsAccessKeyId}.
        """
        super().__init__()
        self._clock = clock
        self.requests: collections.deque[SeenRequest] = collections.deque(maxlen=_KEEP)
        counter = itertools.count(1)

        def nextNumber() -> int:
            return next(counter)

        self._openai = OpenAI(clock, key, nextNumber)
        self._anthropic = Anthropic(key, nextNumber)
        self._gemini = Gemini(key, nextNumber)
        self._azure = Azure(clock, key, nextNumber)
        self._bedrock = Bedrock(awsAccessKeyId, awsSecretAccessKey, nextNumber)

    def _dialect(self, request: Request) -> Dialect:
        """
        The API a request is addressed to, by its path (and, for the model
        list both OpenAI and Anthropic serve, by C{anthropic-version}).
        """
        path = request.path
        if path == b"/v1/messages" or path.startswith(b"/v1/messages/"):
            return self._anthropic
        if (path == b"/v1/models" or path.startswith(b"/v1/models/")) \
                and request.getHeader(b"anthropic-version") is not None:
            return self._anthropic
        if path == b"/v1beta" or path.startswith(b"/v1beta/"):
            return self._gemini
        if path.startswith(b"/openai/"):
            return self._azure
        if path.startswith(b"/model/"):
            return self._bedrock
        return self._openai

    def render(self, request: Request) -> int:
        """
        Record the request and answer it, after the delay it asks for.
        """
        body = request.content.read() if request.content is not None else b""
        self.requests.append(
            SeenRequest(
                method=request.method.decode("latin-1"),
                path=request.uri.decode("latin-1"),
                headers={
                    name.decode("latin-1").lower(): values[-1].decode("latin-1")
                    for name, values in request.requestHeaders.getAllRawHeaders()
                },
                body=body,
            )
        )
        exchange = Exchange(self._clock, request)
        dialect = self._dialect(request)
        try:
            dialect.checkKey(request, body)
            delay = millisecondsHeader(request, b"x-fakellm-delay")
        except Refusal as refusal:
            exchange.later(0, _refusalAnswer(dialect, refusal), exchange)
            return NOT_DONE_YET
        try:
            status = integerHeader(request, b"x-fakellm-status", 400, 599)
            if status is not None:
                headers = ((b"retry-after", b"1"),) if status == 429 else ()
                raise Refusal(status, f"The fake LLM was asked to answer {status}.",
                              "fakellm_forced_status", headers)
            answer = dialect.answer(request, body)
        except Refusal as refusal:
            answer = _refusalAnswer(dialect, refusal)
        exchange.later(delay, answer, exchange)
        return NOT_DONE_YET
