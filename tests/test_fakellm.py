"""
Tests for L{aigateway.fakellm}: the fake LLM the demo, tests and
benchmarks rely on.
"""

from __future__ import annotations

import base64
import json
import struct

from treq import collect
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aigateway.fakellm import FakeLLM, Options

KEY = "sk-fake"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}


class _Client:
    def __init__(self, key: str | None = KEY) -> None:
        self.clock = Clock()
        self.fakellm = FakeLLM(self.clock, key=key)
        self.stub = StubTreq(self.fakellm)

    def request(self, method: str, path: str, body: object = None, headers: dict | None = None,
                key: str | None = KEY):
        allHeaders = {"content-type": "application/json"}
        if key is not None:
            allHeaders["authorization"] = f"Bearer {key}"
        allHeaders.update(headers or {})
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        d = self.stub.request(method, "http://fake" + path, data=data, headers=allHeaders,
                              unbuffered=True)
        self.stub.flush()
        return d


def _events(body: bytes) -> list[str]:
    return [block[len("data: "):] for block in body.decode().split("\n\n") if block]


class ChatTests(SynchronousTestCase):
    """
    Chat completions, plain and streamed.
    """

    def setUp(self) -> None:
        self.client = _Client()

    def complete(self, body: object, headers: dict | None = None):
        response = self.successResultOf(self.client.request("POST", "/v1/chat/completions", body, headers))
        chunks: list[bytes] = []
        done = collect(response, chunks.append)
        return response, chunks, done

    def test_plain(self) -> None:
        """
        A plain completion has the OpenAI shape and counts words as tokens.
        """
        response, chunks, done = self.complete(CHAT)
        self.successResultOf(done)
        document = json.loads(b"".join(chunks))
        self.assertEqual(response.code, 200)
        self.assertEqual(document["object"], "chat.completion")
        self.assertEqual(document["model"], "gpt-4o-mini")
        self.assertEqual(document["choices"][0]["finish_reason"], "stop")
        self.assertEqual(
            document["usage"], {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}
        )
        self.assertEqual(len(document["choices"][0]["message"]["content"].split()), 8)

    def test_deterministic(self) -> None:
        """
        The same request gets the same text.
        """
        texts = []
        for _ in range(2):
            _, chunks, done = self.complete(CHAT)
            self.successResultOf(done)
            texts.append(json.loads(b"".join(chunks))["choices"][0]["message"]["content"])
        self.assertEqual(texts[0], texts[1])

    def test_stream(self) -> None:
        """
        A stream is a role chunk, one chunk per word, a finish chunk, the
        usage chunk when asked for, and C{[DONE]}.
        """
        response, chunks, done = self.complete(
            dict(CHAT, stream=True, stream_options={"include_usage": True}),
            {"x-fakellm-chunks": "3"},
        )
        self.successResultOf(done)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream"])
        events = _events(b"".join(chunks))
        self.assertEqual(events[-1], "[DONE]")
        documents = [json.loads(e) for e in events[:-1]]
        self.assertEqual(documents[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        words = [d["choices"][0]["delta"]["content"] for d in documents[1:4]]
        self.assertEqual("".join(words), "Shall I compare")
        self.assertEqual(documents[4]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(documents[5]["choices"], [])
        self.assertEqual(documents[5]["usage"]["completion_tokens"], 3)

    def test_streamWithoutUsage(self) -> None:
        """
        Without C{include_usage} there is no usage chunk.
        """
        _, chunks, done = self.complete(dict(CHAT, stream=True))
        self.successResultOf(done)
        self.assertNotIn(b'"usage"', b"".join(chunks))

    def test_gap(self) -> None:
        """
        With a gap, chunks come one per interval, not all at once.
        """
        _, chunks, done = self.complete(
            dict(CHAT, stream=True), {"x-fakellm-chunks": "4", "x-fakellm-gap": "100"}
        )
        self.assertNoResult(done)
        before = len(_events(b"".join(chunks)))
        self.client.clock.advance(0.1)
        self.client.stub.flush()
        self.assertEqual(len(_events(b"".join(chunks))), before + 1)
        for _ in range(10):
            self.client.clock.advance(0.1)
            self.client.stub.flush()
        self.successResultOf(done)
        self.assertEqual(_events(b"".join(chunks))[-1], "[DONE]")

    def test_delay(self) -> None:
        """
        Nothing is answered before the delay has passed.
        """
        d = self.client.request("POST", "/v1/chat/completions", CHAT, {"x-fakellm-delay": "250"})
        self.assertNoResult(d)
        self.client.clock.advance(0.25)
        self.client.stub.flush()
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_forcedStatus(self) -> None:
        """
        A forced status comes with an error envelope, and 429 with
        C{Retry-After}.
        """
        response, chunks, done = self.complete(CHAT, {"x-fakellm-status": "429"})
        self.successResultOf(done)
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])
        self.assertIn("error", json.loads(b"".join(chunks)))

    def test_dropAfter(self) -> None:
        """
        A dropped stream ends without C{[DONE]} and with an error.
        """
        _, chunks, done = self.complete(
            dict(CHAT, stream=True), {"x-fakellm-chunks": "10", "x-fakellm-drop-after": "2"}
        )
        self.failureResultOf(done)
        self.assertNotIn(b"[DONE]", b"".join(chunks))

    def test_badJson(self) -> None:
        """
        Invalid JSON is a 400.
        """
        response, _, done = self.complete(b"{")
        self.successResultOf(done)
        self.assertEqual(response.code, 400)

    def test_badHeader(self) -> None:
        """
        A control header that is not a number is a 400 naming it.
        """
        response, chunks, done = self.complete(CHAT, {"x-fakellm-chunks": "many"})
        self.successResultOf(done)
        self.assertEqual(response.code, 400)
        self.assertIn(b"x-fakellm-chunks", b"".join(chunks))


class KeyTests(SynchronousTestCase):
    """
    The bearer key check.
    """

    def test_missingOrWrong(self) -> None:
        """
        No key or a wrong key is a 401 that does not echo the key.
        """
        client = _Client()
        for key in (None, "sk-wrong"):
            response = self.successResultOf(client.request("GET", "/v1/models", key=key))
            self.assertEqual(response.code, 401)
            self.assertNotIn(b"sk-wrong", self.successResultOf(response.content()))

    def test_noKeyConfigured(self) -> None:
        """
        Without a configured key anything goes.
        """
        client = _Client(key=None)
        response = self.successResultOf(client.request("GET", "/v1/models", key=None))
        self.assertEqual(response.code, 200)


class OtherEndpointTests(SynchronousTestCase):
    """
    Models, embeddings and unknown paths.
    """

    def setUp(self) -> None:
        self.client = _Client()

    def json(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        response = self.successResultOf(self.client.request(method, path, body))
        return response.code, self.successResultOf(response.json())

    def test_models(self) -> None:
        """
        The model list, and one model by id.
        """
        code, document = self.json("GET", "/v1/models")
        self.assertIn("gpt-4o-mini", [m["id"] for m in document["data"]])
        code, document = self.json("GET", "/v1/models/gpt-4o-mini")
        self.assertEqual((code, document["id"]), (200, "gpt-4o-mini"))
        code, document = self.json("GET", "/v1/models/nope")
        self.assertEqual(code, 404)

    def test_embeddingsFloat(self) -> None:
        """
        One deterministic vector per input.
        """
        code, document = self.json("POST", "/v1/embeddings", {"model": "e", "input": ["a", "b"]})
        self.assertEqual(code, 200)
        self.assertEqual(len(document["data"]), 2)
        self.assertEqual(len(document["data"][0]["embedding"]), 8)
        _, again = self.json("POST", "/v1/embeddings", {"model": "e", "input": "a"})
        self.assertEqual(again["data"][0]["embedding"], document["data"][0]["embedding"])

    def test_embeddingsBase64(self) -> None:
        """
        C{encoding_format: base64} is little-endian float32, as the SDK reads it.
        """
        _, floats = self.json("POST", "/v1/embeddings", {"model": "e", "input": "a"})
        _, encoded = self.json(
            "POST", "/v1/embeddings", {"model": "e", "input": "a", "encoding_format": "base64"}
        )
        decoded = struct.unpack("<8f", base64.b64decode(encoded["data"][0]["embedding"]))
        for x, y in zip(decoded, floats["data"][0]["embedding"]):
            self.assertAlmostEqual(x, y, places=5)

    def test_unknownPath(self) -> None:
        """
        Anything else is a 404 in the error envelope.
        """
        code, document = self.json("GET", "/v2/things")
        self.assertEqual(code, 404)
        self.assertIn("message", document["error"])


class DisconnectTests(SynchronousTestCase):
    """
    A client that goes away leaves nothing scheduled.
    """

    def test_pendingCallsCancelled(self) -> None:
        """
        A disconnect mid-stream cancels the next chunk's timer.
        """
        from twisted.internet.error import ConnectionDone
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure
        from twisted.web.server import Site

        clock = Clock()
        channel = Site(FakeLLM(clock), reactor=clock).buildProtocol(None)
        channel.makeConnection(StringTransport())
        body = json.dumps(dict(CHAT, stream=True)).encode()
        channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: f\r\nx-fakellm-gap: 50\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        gaps = [call for call in clock.getDelayedCalls() if call.func.__name__ == "_run"]
        self.assertEqual(len(gaps), 1)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])


class OptionsTests(SynchronousTestCase):
    """
    The twistd options.
    """

    def test_options(self) -> None:
        """
        C{--listen} and C{--key}, with defaults.
        """
        options = Options()
        options.parseOptions([])
        self.assertEqual((options["listen"], options["key"]), ("tcp:9000", None))
        options.parseOptions(["--listen", "tcp:9100", "--key", "k"])
        self.assertEqual((options["listen"], options["key"]), ("tcp:9100", "k"))
