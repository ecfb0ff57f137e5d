"""
Tests for L{aigateway.llm.openai}: path mapping and body handling.
"""

import json

from twisted.trial.unittest import SynchronousTestCase

from aigateway.config import Backend
from aigateway.llm.openai import OpenAIProvider, ProviderError


def _provider(url: str = "https://api.openai.com", model: str | None = None) -> OpenAIProvider:
    return OpenAIProvider(Backend("b", "openai", url, model, None))


CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


class PathTests(SynchronousTestCase):
    """
    The path after the route's prefix maps to OpenAI's API.
    """

    def test_barePrefix(self) -> None:
        """
        Nothing or C{/} after the prefix means chat completions.
        """
        provider = _provider()
        self.assertEqual(provider.upstreamPath(b"")[0], b"/v1/chat/completions")
        self.assertEqual(provider.upstreamPath(b"/")[0], b"/v1/chat/completions")

    def test_v1AsIs(self) -> None:
        """
        C{/v1/...} is forwarded as it is.
        """
        self.assertEqual(_provider().upstreamPath(b"/v1/models")[0], b"/v1/models")
        self.assertEqual(_provider().upstreamPath(b"/v1/files/File-AbC")[0], b"/v1/files/File-AbC")

    def test_knownEndpointsInOneSpelling(self) -> None:
        """
        The endpoints the gateway knows are recognised in any letter case
        and forwarded in their one spelling; other paths keep theirs.
        """
        for remainder in (b"/V1/Chat/Completions", b"/v1/CHAT/completions", b"/Chat/Completions"):
            self.assertEqual(_provider().upstreamPath(remainder),
                             (b"/v1/chat/completions", b"/v1/chat/completions"))
        self.assertEqual(_provider().upstreamPath(b"/V1/Files/X")[0], b"/v1/Files/X")

    def test_withoutV1(self) -> None:
        """
        Other paths get C{/v1} in front, for SDKs whose base URL is the prefix.
        """
        self.assertEqual(_provider().upstreamPath(b"/chat/completions")[0], b"/v1/chat/completions")
        self.assertEqual(_provider().upstreamPath(b"/v1x")[0], b"/v1/v1x")

    def test_basePath(self) -> None:
        """
        A backend URL with a path keeps it in front.
        """
        provider = _provider("http://127.0.0.1:8000/proxy/")
        self.assertEqual(provider.origin, b"http://127.0.0.1:8000")
        self.assertEqual(provider.upstreamPath(b"")[0], b"/proxy/v1/chat/completions")
        call = provider.prepare(b"POST", b"", b"", CHAT)
        self.assertEqual(call.operation, "chat")

    def test_query(self) -> None:
        """
        The query string is kept.
        """
        call = _provider().prepare(b"GET", b"/v1/models", b"limit=2", b"")
        self.assertEqual(call.path, b"/v1/models?limit=2")


class BodyTests(SynchronousTestCase):
    """
    JSON bodies of model endpoints.
    """

    def test_chat(self) -> None:
        """
        A chat request is passed unchanged, with what was asked noted.
        """
        call = _provider().prepare(b"POST", b"", b"", CHAT)
        self.assertEqual(
            (call.body, call.operation, call.requestModel, call.stream),
            (CHAT, "chat", "gpt-4o-mini", False),
        )

    def test_stream(self) -> None:
        """
        C{stream: true} is noticed.
        """
        call = _provider().prepare(b"POST", b"/v1/chat/completions", b"", b'{"model":"m","stream":true}')
        self.assertTrue(call.stream)

    def test_modelOverride(self) -> None:
        """
        A backend's C{model} replaces the one asked for.
        """
        call = _provider(model="gpt-4o").prepare(b"POST", b"", b"", CHAT)
        self.assertEqual(json.loads(call.body)["model"], "gpt-4o")
        self.assertEqual(call.requestModel, "gpt-4o")

    def test_badJson(self) -> None:
        """
        Invalid JSON on a chat endpoint is a 400.
        """
        for body in (b"{", b"", b"\xff", b"[1]", b'"x"'):
            with self.assertRaises(ProviderError) as caught:
                _provider().prepare(b"POST", b"", b"", body)
            self.assertEqual(caught.exception.status, 400, body)

    def test_otherEndpointsUntouched(self) -> None:
        """
        Endpoints that take no model are not parsed.
        """
        call = _provider().prepare(b"POST", b"/v1/files", b"", b"not json")
        self.assertEqual((call.body, call.operation), (b"not json", None))


def _chunkEvent(content: str, finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}).encode() + b"\n\n"


class StreamReaderTests(SynchronousTestCase):
    """
    An OpenAI-style stream read into chunks, as the gateway does to
    translate it for a client of another API.
    """

    ERROR = b'data: {"error": {"message": "Overloaded, try again.", "type": "server_error"}}\n\n'

    def read(self, pieces: list[bytes]) -> tuple[list[str], str | None]:
        """
        The contents of the chunks read from C{pieces}, and the message of
        the error that ended the stream.
        """
        from aigateway.llm.provider import OpenAIReader
        from aigateway.llm.translate import StreamError

        stream = OpenAIReader().stream()
        contents: list[str] = []
        try:
            for piece in pieces:
                contents += [c["choices"][0]["delta"]["content"] for c in stream.feed(piece)]
            contents += [c["choices"][0]["delta"]["content"] for c in stream.end()]
        except StreamError as e:
            return contents, e.message
        return contents, None

    def test_errorAfterChunks(self) -> None:
        """
        The chunks before an error event are read however the bytes are
        cut, even when they come in one piece with the error; then the
        stream fails with the upstream's message.
        """
        body = _chunkEvent("Shall ") + _chunkEvent("I") + self.ERROR
        cuts = [[body]] + [[body[:i], body[i:]] for i in range(1, len(body))]
        cuts.append([body[i:i + 1] for i in range(len(body))])
        for pieces in cuts:
            contents, error = self.read(pieces)
            self.assertEqual(contents, ["Shall ", "I"])
            self.assertEqual(error, "the upstream's stream ended with an error: Overloaded, try again.")

    def test_complete(self) -> None:
        """
        A stream with its finish and [DONE] reads whole, without an error.
        """
        body = _chunkEvent("Hi", "stop") + b"data: [DONE]\n\n"
        self.assertEqual(self.read([body]), (["Hi"], None))

    def test_earlyEnd(self) -> None:
        """
        A stream that ends before its finish fails after its chunks.
        """
        contents, error = self.read([_chunkEvent("Hi")])
        self.assertEqual(contents, ["Hi"])
        self.assertEqual(error, "the upstream's stream ended before its last event")
