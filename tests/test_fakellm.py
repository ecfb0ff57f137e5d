"""
Tests for L{aigateway.testing.fakellm}, the fake LLM the demo, the tests and the
benchmarks rely on.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from treq import collect
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed
from twisted.web.iweb import IResponse
from twisted.web.server import Request, Site

from aigateway.testing.fakellm import POEM, FakeLLM, Options, SeenRequest, makeService

KEY = "sk-fake"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}


class _Client:
    """
    A L{FakeLLM} on a L{Clock}, in front of which sits a L{StubTreq}.
    """

    def __init__(self, key: str | None = KEY) -> None:
        self.clock = Clock()
        self.fakellm = FakeLLM(self.clock, key=key)
        self.stub = StubTreq(self.fakellm)

    def request(self, method: str, path: str, body: object = None,
                headers: dict[str, str] | None = None, key: str | None = KEY) -> Deferred[IResponse]:
        allHeaders = {"content-type": "application/json"}
        if key is not None:
            allHeaders["authorization"] = f"Bearer {key}"
        allHeaders.update(headers or {})
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        d = self.stub.request(method, "http://fake" + path, data=data, headers=allHeaders,
                              unbuffered=True)
        self.stub.flush()
        return d

    def advance(self, seconds: float, steps: int = 1) -> None:
        """
        Move the clock on by C{seconds}, C{steps} times.  A L{Clock} jumps,
        so what a timer schedules when it fires waits for the next step.
        """
        for _ in range(steps):
            self.clock.advance(seconds)
            self.stub.flush()


def _events(body: bytes) -> list[str]:
    """
    The C{data:} payloads of a server-sent event stream.
    """
    events = []
    for block in body.decode().split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            events.append(block[len("data: "):])
    return events


class _Wire:
    """
    A L{FakeLLM} behind a real L{HTTPChannel} on a L{StringTransport}, with
    every C{Request.write} recorded.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.writes: list[bytes] = []
        writes = self.writes

        class RecordingRequest(Request):
            def write(self, data: bytes) -> None:
                writes.append(data)
                super().write(data)

        site = Site(FakeLLM(self.clock), reactor=self.clock)
        site.requestFactory = RecordingRequest
        # No idle timeout, so the clock holds only the fake LLM's own calls.
        site.timeOut = None
        channel = site.buildProtocol(None)
        assert channel is not None
        self.channel = channel
        self.transport = StringTransport()
        channel.makeConnection(self.transport)

    def post(self, body: object, headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        head = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items())
        self.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\n" + head
            + b"Content-Length: %d\r\n\r\n" % (len(data),) + data
        )


class ChatTests(SynchronousTestCase):
    """
    Plain chat completions.
    """

    def setUp(self) -> None:
        self.client = _Client()

    def complete(self, body: object, headers: dict[str, str] | None = None) -> tuple[IResponse, Any]:
        response = self.successResultOf(
            self.client.request("POST", "/v1/chat/completions", body, headers)
        )
        return response, self.successResultOf(response.json())

    def test_shape(self) -> None:
        """
        A plain completion has the OpenAI shape and counts words as tokens.
        """
        self.client.clock.advance(1234.5)
        response, document = self.complete(CHAT)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(document["id"], "chatcmpl-fake-1")
        self.assertEqual(document["object"], "chat.completion")
        self.assertEqual(document["created"], 1234)
        self.assertEqual(document["model"], "gpt-4o-mini")
        [choice] = document["choices"]
        self.assertEqual(choice["index"], 0)
        self.assertEqual(choice["finish_reason"], "stop")
        self.assertEqual(choice["message"], {"role": "assistant", "content": " ".join(POEM[:8])})
        self.assertEqual(
            document["usage"], {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}
        )

    def test_idsCount(self) -> None:
        """
        Each completion gets the next id.
        """
        ids = [self.complete(CHAT)[1]["id"] for _ in range(2)]
        self.assertEqual(ids, ["chatcmpl-fake-1", "chatcmpl-fake-2"])

    def test_deterministic(self) -> None:
        """
        The same request gets the same answer text.
        """
        texts = [self.complete(CHAT)[1]["choices"][0]["message"]["content"] for _ in range(2)]
        self.assertEqual(texts[0], texts[1])

    def test_chunksHeader(self) -> None:
        """
        C{x-fakellm-chunks} sets the number of words of a plain answer too,
        starting over at the end of the poem.
        """
        count = len(POEM) + 2
        _, document = self.complete(CHAT, {"x-fakellm-chunks": str(count)})
        words = document["choices"][0]["message"]["content"].split(" ")
        self.assertEqual(words, list(POEM) + list(POEM[:2]))
        self.assertEqual(document["usage"]["completion_tokens"], count)

    def test_promptTokensCountEveryText(self) -> None:
        """
        Prompt tokens are the words of every message's text: string contents
        and the text of content parts, the system message's included.
        """
        messages = [
            {"role": "system", "content": "be  brief"},
            {"role": "user", "content": [{"type": "text", "text": "counted too"},
                                         {"type": "image_url", "image_url": {"url": "x y"}}]},
            {"role": "user", "content": "a b\nc"},
            "not a message",
        ]
        _, document = self.complete(dict(CHAT, messages=messages))
        self.assertEqual(document["usage"]["prompt_tokens"], 7)

    def test_badJson(self) -> None:
        """
        A body that is not JSON is a 400 in the error envelope.
        """
        response, document = self.complete(b"{")
        self.assertEqual(response.code, 400)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(document["error"]["type"], "invalid_request_error")
        self.assertIn("message", document["error"])
        self.assertIn("code", document["error"])

    def test_missingModelOrMessages(self) -> None:
        """
        A chat request without a string model or a list of messages is a 400.
        """
        for body in ({"messages": []}, {"model": 4, "messages": []}, {"model": "m"},
                     {"model": "m", "messages": "hi"}, ["not", "an", "object"]):
            response, document = self.complete(body)
            self.assertEqual(response.code, 400, body)
            self.assertEqual(document["error"]["type"], "invalid_request_error")

    def test_recorded(self) -> None:
        """
        C{requests} keeps method, full path, lower-cased headers (last value
        wins) and body of what was sent.
        """
        self.client.request("POST", "/v1/chat/completions?x=1", CHAT, {"X-Thing": "a"})
        [seen] = self.client.fakellm.requests
        self.assertIsInstance(seen, SeenRequest)
        self.assertEqual((seen.method, seen.path), ("POST", "/v1/chat/completions?x=1"))
        self.assertEqual(seen.headers["x-thing"], "a")
        self.assertEqual(seen.headers["authorization"], f"Bearer {KEY}")
        self.assertEqual(json.loads(seen.body), CHAT)

    def test_recordedLastHeaderWins(self) -> None:
        """
        Of a repeated header, the recorded value is the last one.
        """
        d = self.client.stub.get("http://fake/v1/models",
                                 headers={"X-Thing": ["a", "b"], "Authorization": f"Bearer {KEY}"})
        self.client.stub.flush()
        self.successResultOf(d)
        self.assertEqual(self.client.fakellm.requests[-1].headers["x-thing"], "b")

    def test_recordedBounded(self) -> None:
        """
        Only the last hundred requests are kept.
        """
        for i in range(105):
            self.client.request("GET", f"/v1/models?i={i}")
        requests = self.client.fakellm.requests
        self.assertEqual(len(requests), 100)
        self.assertEqual(requests[0].path, "/v1/models?i=5")


class StreamTests(SynchronousTestCase):
    """
    Streamed chat completions.
    """

    def setUp(self) -> None:
        self.client = _Client()

    def stream(self, body: dict[str, Any], headers: dict[str, str] | None = None,
               ) -> tuple[IResponse, list[bytes], Deferred[None]]:
        response = self.successResultOf(
            self.client.request("POST", "/v1/chat/completions", dict(body, stream=True), headers)
        )
        chunks: list[bytes] = []
        done = collect(response, chunks.append)
        return response, chunks, done

    def test_eventSequence(self) -> None:
        """
        A stream is a role chunk, one chunk per word, a finish chunk, the
        usage chunk when asked for, and C{[DONE]}.
        """
        response, chunks, done = self.stream(
            dict(CHAT, stream_options={"include_usage": True}), {"x-fakellm-chunks": "3"}
        )
        self.successResultOf(done)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream"])
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-cache"])
        events = _events(b"".join(chunks))
        self.assertEqual(len(events), 7)
        self.assertEqual(events[-1], "[DONE]")
        documents = [json.loads(e) for e in events[:-1]]
        for document in documents:
            self.assertEqual(document["object"], "chat.completion.chunk")
            self.assertEqual(document["id"], "chatcmpl-fake-1")
            self.assertEqual(document["model"], "gpt-4o-mini")
        self.assertEqual(
            documents[0]["choices"],
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        )
        words = [d["choices"][0]["delta"]["content"] for d in documents[1:4]]
        self.assertEqual(words, ["Shall ", "I ", "compare"])
        self.assertEqual([d["choices"][0]["finish_reason"] for d in documents[1:4]], [None] * 3)
        self.assertEqual(
            documents[4]["choices"], [{"index": 0, "delta": {}, "finish_reason": "stop"}]
        )
        self.assertEqual(documents[5]["choices"], [])
        self.assertEqual(
            documents[5]["usage"], {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        )

    def test_withoutUsage(self) -> None:
        """
        Without C{include_usage} the stream has no usage chunk; eight words
        by default.
        """
        _, chunks, done = self.stream(CHAT)
        self.successResultOf(done)
        events = _events(b"".join(chunks))
        self.assertNotIn('"usage"', "".join(events))
        self.assertEqual(len(events), 1 + 8 + 1 + 1)
        self.assertEqual(json.loads(events[-2])["choices"][0]["finish_reason"], "stop")

    def test_streamMatchesPlain(self) -> None:
        """
        A streamed answer spells the same text as the plain one.
        """
        _, chunks, done = self.stream(CHAT, {"x-fakellm-chunks": "12"})
        self.successResultOf(done)
        documents = [json.loads(e) for e in _events(b"".join(chunks))[1:-2]]
        streamed = "".join(d["choices"][0]["delta"]["content"] for d in documents)
        response = self.successResultOf(
            self.client.request("POST", "/v1/chat/completions", CHAT, {"x-fakellm-chunks": "12"})
        )
        plain = self.successResultOf(response.json())["choices"][0]["message"]["content"]
        self.assertEqual(streamed, plain)

    def test_gap(self) -> None:
        """
        With a gap, each word comes one gap after the one before, and the
        end follows the last word.
        """
        _, chunks, done = self.stream(CHAT, {"x-fakellm-chunks": "4", "x-fakellm-gap": "100"})
        self.assertEqual(len(_events(b"".join(chunks))), 1)
        self.client.advance(0.15)
        self.assertEqual(len(_events(b"".join(chunks))), 2)
        self.client.advance(0.1)
        self.assertEqual(len(_events(b"".join(chunks))), 3)
        self.assertNoResult(done)
        self.client.advance(0.1)
        self.assertEqual(len(_events(b"".join(chunks))), 4)
        self.assertNoResult(done)
        self.client.advance(0.1)
        self.successResultOf(done)
        events = _events(b"".join(chunks))
        self.assertEqual(len(events), 1 + 4 + 1 + 1)
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(self.client.clock.getDelayedCalls(), [])

    def test_fractionalGap(self) -> None:
        """
        The gap may be a fraction of a millisecond.
        """
        _, chunks, done = self.stream(CHAT, {"x-fakellm-chunks": "2", "x-fakellm-gap": "0.5"})
        self.client.advance(0.0005)
        self.assertNoResult(done)
        self.client.advance(0.0005)
        self.successResultOf(done)

    def test_oneWritePerChunk(self) -> None:
        """
        Every event is its own C{Request.write}, even without a gap.
        """
        wire = _Wire()
        wire.post(dict(CHAT, stream=True, stream_options={"include_usage": True}),
                  {"x-fakellm-chunks": "5"})
        self.assertEqual(len(wire.writes), 1 + 5 + 1 + 1 + 1)
        for write in wire.writes:
            self.assertEqual(len(_events(write)), 1)
        self.assertEqual(wire.writes[-1], b"data: [DONE]\n\n")

    def test_dropAfter(self) -> None:
        """
        With C{x-fakellm-drop-after}, the stream breaks after that many words:
        the client gets an error and no C{[DONE]}.
        """
        _, chunks, done = self.stream(
            CHAT, {"x-fakellm-chunks": "10", "x-fakellm-drop-after": "2"}
        )
        self.failureResultOf(done, ResponseFailed)
        events = _events(b"".join(chunks))
        self.assertEqual(len(events), 1 + 2)
        self.assertNotIn("[DONE]", events)

    def test_dropAfterWithGap(self) -> None:
        """
        A stream with a gap breaks when its last word allowed is out.
        """
        _, chunks, done = self.stream(
            CHAT, {"x-fakellm-chunks": "10", "x-fakellm-drop-after": "3", "x-fakellm-gap": "10"}
        )
        self.client.advance(0.01, steps=2)
        self.assertNoResult(done)
        self.assertEqual(len(_events(b"".join(chunks))), 1 + 2)
        self.client.advance(0.01)
        self.failureResultOf(done)
        self.assertEqual(len(_events(b"".join(chunks))), 1 + 3)
        self.assertEqual(self.client.clock.getDelayedCalls(), [])

    def test_dropAfterLastWord(self) -> None:
        """
        Dropping after the last word still loses the end of the stream.
        """
        _, chunks, done = self.stream(CHAT, {"x-fakellm-chunks": "3", "x-fakellm-drop-after": "3"})
        self.failureResultOf(done)
        self.assertEqual(len(_events(b"".join(chunks))), 1 + 3)

    def test_dropAfterBeyondAnswer(self) -> None:
        """
        A drop point past the answer's words never comes.
        """
        _, chunks, done = self.stream(CHAT, {"x-fakellm-chunks": "3", "x-fakellm-drop-after": "4"})
        self.successResultOf(done)
        self.assertEqual(_events(b"".join(chunks))[-1], "[DONE]")


class ControlTests(SynchronousTestCase):
    """
    The C{x-fakellm-*} request headers that are not about streams.
    """

    def setUp(self) -> None:
        self.client = _Client()

    def test_delay(self) -> None:
        """
        Nothing, not even the status line, is answered before the delay has
        passed.
        """
        d = self.client.request("POST", "/v1/chat/completions", CHAT, {"x-fakellm-delay": "250"})
        self.client.advance(0.249)
        self.assertNoResult(d)
        self.client.advance(0.001)
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_delayEveryEndpoint(self) -> None:
        """
        The delay holds back other endpoints and error answers too.
        """
        for method, path in (("GET", "/v1/models"), ("GET", "/nowhere")):
            d = self.client.request(method, path, headers={"x-fakellm-delay": "1.5"})
            self.assertNoResult(d)
            self.client.advance(0.0015)
            self.successResultOf(d)

    def test_delayThenStream(self) -> None:
        """
        A delayed stream starts after the delay, then keeps its gap.
        """
        d = self.client.request(
            "POST", "/v1/chat/completions", dict(CHAT, stream=True),
            {"x-fakellm-delay": "100", "x-fakellm-gap": "10", "x-fakellm-chunks": "2"},
        )
        self.assertNoResult(d)
        self.client.advance(0.1)
        response = self.successResultOf(d)
        chunks: list[bytes] = []
        done = collect(response, chunks.append)
        self.assertNoResult(done)
        self.client.advance(0.01, steps=2)
        self.successResultOf(done)

    def test_forcedStatus(self) -> None:
        """
        A forced status comes with an error envelope of a matching type.
        """
        for status, kind in ((500, "server_error"), (400, "invalid_request_error"),
                             (503, "server_error")):
            response = self.successResultOf(self.client.request(
                "POST", "/v1/chat/completions", CHAT, {"x-fakellm-status": str(status)}
            ))
            self.assertEqual(response.code, status)
            error = self.successResultOf(response.json())["error"]
            self.assertEqual(error["type"], kind)
            self.assertIsNone(response.headers.getRawHeaders("retry-after"))

    def test_forcedRateLimit(self) -> None:
        """
        A forced 429 carries C{retry-after: 1}, on any endpoint.
        """
        response = self.successResultOf(
            self.client.request("GET", "/v1/models", headers={"x-fakellm-status": "429"})
        )
        self.assertEqual((response.code, response.phrase), (429, b"Too Many Requests"))
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])
        self.assertEqual(self.successResultOf(response.json())["error"]["type"], "rate_limit_error")

    def test_badHeaders(self) -> None:
        """
        A control header with a bad value is a 400 that names it.
        """
        bad = [
            ("x-fakellm-delay", "soon"), ("x-fakellm-delay", "-1"), ("x-fakellm-delay", "nan"),
            ("x-fakellm-chunks", "many"), ("x-fakellm-chunks", "100001"),
            ("x-fakellm-chunks", "2.5"), ("x-fakellm-gap", "inf"),
            ("x-fakellm-status", "200"), ("x-fakellm-status", "teapot"),
            ("x-fakellm-drop-after", "-3"),
        ]
        for name, value in bad:
            response = self.successResultOf(self.client.request(
                "POST", "/v1/chat/completions", dict(CHAT, stream=True), {name: value}
            ))
            self.assertEqual(response.code, 400, (name, value))
            error = self.successResultOf(response.json())["error"]
            self.assertIn(name, error["message"])


class KeyTests(SynchronousTestCase):
    """
    The bearer key check.
    """

    def test_missingOrWrong(self) -> None:
        """
        No key, a wrong key, or the key without C{Bearer} is a 401 that does
        not echo what was presented.
        """
        client = _Client()
        for headers in ({}, {"authorization": "Bearer sk-wrong"}, {"authorization": KEY},
                        {"authorization": f"bearer {KEY}"}, {"authorization": f"Bearer {KEY}x"}):
            response = self.successResultOf(
                client.request("GET", "/v1/models", headers=headers, key=None)
            )
            self.assertEqual(response.code, 401, headers)
            body = self.successResultOf(response.content())
            self.assertNotIn(b"sk-wrong", body)
            error = json.loads(body)["error"]
            self.assertEqual(error["type"], "invalid_request_error")
            self.assertEqual(error["code"], "invalid_api_key")

    def test_keyBeforeAnythingElse(self) -> None:
        """
        Without the key, neither forced statuses nor delays apply.
        """
        client = _Client()
        response = self.successResultOf(client.request(
            "GET", "/v1/models", headers={"x-fakellm-status": "500", "x-fakellm-delay": "100"},
            key="sk-wrong",
        ))
        self.assertEqual(response.code, 401)

    def test_rightKey(self) -> None:
        """
        The right key gets through.
        """
        client = _Client()
        response = self.successResultOf(client.request("GET", "/v1/models"))
        self.assertEqual(response.code, 200)

    def test_noKeyConfigured(self) -> None:
        """
        Without a configured key any request gets through.
        """
        client = _Client(key=None)
        response = self.successResultOf(client.request("GET", "/v1/models", key=None))
        self.assertEqual(response.code, 200)


class ModelTests(SynchronousTestCase):
    """
    C{/v1/models}.
    """

    def setUp(self) -> None:
        self.client = _Client()

    def get(self, path: str) -> tuple[int, Any]:
        response = self.successResultOf(self.client.request("GET", path))
        return response.code, self.successResultOf(response.json())

    def test_list(self) -> None:
        """
        The model list names the models the demo uses.
        """
        code, document = self.get("/v1/models")
        self.assertEqual((code, document["object"]), (200, "list"))
        ids = [m["id"] for m in document["data"]]
        for model in ("gpt-4o-mini", "gpt-3.5-turbo", "text-embedding-3-small"):
            self.assertIn(model, ids)
        self.assertEqual(
            document["data"][0],
            {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "fakellm"},
        )

    def test_byId(self) -> None:
        """
        One model by id.
        """
        code, document = self.get("/v1/models/gpt-3.5-turbo")
        self.assertEqual(code, 200)
        self.assertEqual(
            document, {"id": "gpt-3.5-turbo", "object": "model", "created": 0, "owned_by": "fakellm"}
        )

    def test_unknown(self) -> None:
        """
        An unknown model is a 404 in the error envelope.
        """
        code, document = self.get("/v1/models/gpt-7")
        self.assertEqual(code, 404)
        self.assertEqual(document["error"]["code"], "model_not_found")


class EmbeddingTests(SynchronousTestCase):
    """
    C{POST /v1/embeddings}.
    """

    def setUp(self) -> None:
        self.client = _Client()

    def embed(self, body: object) -> tuple[int, Any]:
        response = self.successResultOf(self.client.request("POST", "/v1/embeddings", body))
        return response.code, self.successResultOf(response.json())

    def test_float(self) -> None:
        """
        One deterministic vector of eight floats per input, and words as tokens.
        """
        code, document = self.embed(
            {"model": "text-embedding-3-small", "input": ["a b", "c"], "encoding_format": "float"}
        )
        self.assertEqual(code, 200)
        self.assertEqual((document["object"], document["model"]), ("list", "text-embedding-3-small"))
        self.assertEqual([d["index"] for d in document["data"]], [0, 1])
        self.assertEqual({d["object"] for d in document["data"]}, {"embedding"})
        vectors = [d["embedding"] for d in document["data"]]
        self.assertEqual([len(v) for v in vectors], [8, 8])
        self.assertNotEqual(vectors[0], vectors[1])
        self.assertEqual(document["usage"], {"prompt_tokens": 3, "total_tokens": 3})
        _, again = self.embed({"model": "text-embedding-3-small", "input": "a b"})
        self.assertEqual(again["data"][0]["embedding"], vectors[0])

    def test_base64(self) -> None:
        """
        C{encoding_format: base64} is little-endian float32, as the OpenAI
        SDK reads it, and decodes to the float form exactly.
        """
        _, floats = self.embed({"model": "e", "input": "a"})
        _, encoded = self.embed({"model": "e", "input": "a", "encoding_format": "base64"})
        decoded = struct.unpack("<8f", base64.b64decode(encoded["data"][0]["embedding"]))
        self.assertEqual(list(decoded), floats["data"][0]["embedding"])

    def test_badInput(self) -> None:
        """
        An input that is not a string or a list of strings is a 400.
        """
        for body in ({"model": "e"}, {"model": "e", "input": 3}, {"model": "e", "input": []},
                     {"model": "e", "input": ["a", 1]},
                     {"model": "e", "input": "a", "encoding_format": "int8"}):
            code, document = self.embed(body)
            self.assertEqual(code, 400, body)
            self.assertIn("message", document["error"])


class PathTests(SynchronousTestCase):
    """
    Requests for anything the fake LLM does not serve.
    """

    def test_unknownPath(self) -> None:
        """
        An unknown path, or a known one with the wrong method, is a 404 in
        the error envelope.
        """
        client = _Client()
        for method, path in (("GET", "/v2/things"), ("GET", "/v1/chat/completions"),
                             ("POST", "/v1/models"), ("GET", "/")):
            response = self.successResultOf(client.request(method, path))
            self.assertEqual(response.code, 404, path)
            self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
            error = self.successResultOf(response.json())["error"]
            self.assertLessEqual({"message", "type", "code"}, set(error))


class DisconnectTests(SynchronousTestCase):
    """
    A client that goes away leaves nothing scheduled and nothing written.
    """

    def test_duringStream(self) -> None:
        """
        A disconnect between two words cancels the next word's timer.
        """
        wire = _Wire()
        wire.post(dict(CHAT, stream=True), {"x-fakellm-gap": "50"})
        self.assertEqual(len(wire.clock.getDelayedCalls()), 1)
        wire.clock.advance(0.05)
        self.assertEqual(len(wire.writes), 2)
        wire.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(wire.clock.getDelayedCalls(), [])
        wire.clock.advance(10)
        self.assertEqual(len(wire.writes), 2)

    def test_duringDelay(self) -> None:
        """
        A disconnect before the delay is over cancels the answer.
        """
        wire = _Wire()
        wire.post(CHAT, {"x-fakellm-delay": "500"})
        self.assertEqual(len(wire.clock.getDelayedCalls()), 1)
        wire.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(wire.clock.getDelayedCalls(), [])
        self.assertEqual(wire.writes, [])

    def test_dropCloses(self) -> None:
        """
        A drop closes the connection after what was written is sent.
        """
        wire = _Wire()
        wire.post(dict(CHAT, stream=True), {"x-fakellm-drop-after": "1"})
        self.assertTrue(wire.transport.disconnecting)
        self.assertEqual(len(wire.writes), 2)
        self.assertNotIn(b"[DONE]", wire.transport.value())


class _NoDelayTransport(StringTransport):
    noDelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


class ServiceTests(SynchronousTestCase):
    """
    The twistd plugin's options and service.
    """

    def test_options(self) -> None:
        """
        C{--listen} and C{--key}, with their defaults.
        """
        options = Options()
        options.parseOptions([])
        self.assertEqual((options["listen"], options["key"]), ("tcp:9000", None))
        options = Options()
        options.parseOptions(["--listen", "tcp:9100", "--key", "k"])
        self.assertEqual((options["listen"], options["key"]), ("tcp:9100", "k"))

    def test_site(self) -> None:
        """
        The service's site hides tracebacks, keeps no access log and turns
        off Nagle's algorithm on its connections.
        """
        options = Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--key", "k"])
        service = makeService(options)
        site = service.factory  # type: ignore[attr-defined]
        self.assertIsInstance(site, Site)
        self.assertFalse(site.displayTracebacks)
        self.assertIsNone(site.logPath)
        self.assertIsInstance(site.resource, FakeLLM)
        site.timeOut = None
        channel = site.buildProtocol(None)
        transport = _NoDelayTransport()
        channel.makeConnection(transport)
        self.assertTrue(transport.noDelay)
        channel.dataReceived(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        channel.connectionLost(Failure(ConnectionDone()))


def _named(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """
    The C{event:} names and JSON C{data:} of a server-sent event stream.
    """
    events = []
    for block in body.decode().split("\n\n"):
        if block:
            kind, data = block.split("\n")
            assert kind.startswith("event: ") and data.startswith("data: "), block
            events.append((kind[len("event: "):], json.loads(data[len("data: "):])))
    return events


class _APITests(SynchronousTestCase):
    """
    Requests to a L{FakeLLM} with a key, each carrying only the headers a
    test gives.
    """

    def setUp(self) -> None:
        self.client = _Client()

    def send(self, method: str, path: str, body: object = None,
             headers: dict[str, str] | None = None) -> tuple[IResponse, bytes]:
        response = self.successResultOf(self.client.request(method, path, body, headers, key=None))
        return response, self.successResultOf(collect_all(response))


def collect_all(response: IResponse) -> Deferred[bytes]:
    """
    The whole body of a response, even a streamed one.
    """
    chunks: list[bytes] = []
    return collect(response, chunks.append).addCallback(lambda _: b"".join(chunks))


BEARER = {"authorization": f"Bearer {KEY}"}
RESPONSE = {"model": "gpt-4o-mini", "instructions": "be brief", "input": "one two three"}
TOOLS_RESPONSES = [{"type": "function", "name": "count", "parameters": {"type": "object"}}]


class ResponsesTests(_APITests):
    """
    The OpenAI Responses API, C{POST /v1/responses}.
    """

    def test_plain(self) -> None:
        """
        A plain answer is a completed C{response} with one message of
        C{output_text} and the Responses usage, instructions counted.
        """
        self.client.clock.advance(77)
        response, body = self.send("POST", "/v1/responses", RESPONSE, BEARER)
        self.assertEqual(response.code, 200)
        document = json.loads(body)
        self.assertEqual((document["id"], document["object"], document["status"]),
                         ("resp_fake_1", "response", "completed"))
        self.assertEqual((document["created_at"], document["model"]), (77, "gpt-4o-mini"))
        [item] = document["output"]
        self.assertEqual((item["type"], item["role"], item["status"]),
                         ("message", "assistant", "completed"))
        self.assertEqual(item["content"], [{"type": "output_text", "text": " ".join(POEM[:8]),
                                            "annotations": []}])
        self.assertEqual(document["usage"], {
            "input_tokens": 5, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 8, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 13,
        })

    def test_usageHeaders(self) -> None:
        """
        Cached and reasoning tokens are reported in the details and
        included in the input and output counts.
        """
        _, body = self.send("POST", "/v1/responses", RESPONSE, dict(
            BEARER, **{"x-fakellm-cached-tokens": "100", "x-fakellm-reasoning-tokens": "7"}))
        self.assertEqual(json.loads(body)["usage"], {
            "input_tokens": 105, "input_tokens_details": {"cached_tokens": 100},
            "output_tokens": 15, "output_tokens_details": {"reasoning_tokens": 7},
            "total_tokens": 120,
        })

    def test_stream(self) -> None:
        """
        A stream is the Responses event sequence, one text delta per word,
        numbered in order, the completed response with its usage last.
        """
        response, body = self.send("POST", "/v1/responses", dict(RESPONSE, stream=True),
                                       dict(BEARER, **{"x-fakellm-chunks": "3"}))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream"])
        events = _named(body)
        self.assertEqual([kind for kind, _ in events], [
            "response.created", "response.in_progress", "response.output_item.added",
            "response.content_part.added", "response.output_text.delta",
            "response.output_text.delta", "response.output_text.delta",
            "response.output_text.done", "response.content_part.done",
            "response.output_item.done", "response.completed",
        ])
        for kind, data in events:
            self.assertEqual(data["type"], kind)
        self.assertEqual([d["sequence_number"] for _, d in events], list(range(len(events))))
        self.assertEqual([d["delta"] for _, d in events[4:7]], ["Shall ", "I ", "compare"])
        self.assertEqual(events[7][1]["text"], "Shall I compare")
        completed = events[-1][1]["response"]
        self.assertEqual(completed["status"], "completed")
        self.assertEqual(completed["usage"]["output_tokens"], 3)
        self.assertEqual(completed["output"][0]["content"][0]["text"], "Shall I compare")
        self.assertIsNone(events[0][1]["response"]["usage"])

    def test_toolCall(self) -> None:
        """
        A steered tool call is a C{function_call} item, streamed as two
        argument deltas that spell the arguments.
        """
        headers = dict(BEARER, **{"x-fakellm-tool-call": "count"})
        body = dict(RESPONSE, tools=TOOLS_RESPONSES)
        _, plain = self.send("POST", "/v1/responses", body, headers)
        [item] = json.loads(plain)["output"]
        self.assertEqual((item["type"], item["name"], json.loads(item["arguments"])),
                         ("function_call", "count", {"words": 8}))
        self.assertTrue(item["call_id"].startswith("call_"))
        _, streamed = self.send("POST", "/v1/responses", dict(body, stream=True), headers)
        events = _named(streamed)
        deltas = [d["delta"] for k, d in events if k == "response.function_call_arguments.delta"]
        self.assertEqual(len(deltas), 2)
        self.assertEqual(json.loads("".join(deltas)), {"words": 8})
        self.assertIn("response.function_call_arguments.done", [k for k, _ in events])
        self.assertEqual(events[-1][0], "response.completed")

    def test_maxOutputTokens(self) -> None:
        """
        C{max_output_tokens} below the answer cuts it: an incomplete response.
        """
        _, body = self.send("POST", "/v1/responses", dict(RESPONSE, max_output_tokens=2),
                                BEARER)
        document = json.loads(body)
        self.assertEqual((document["status"], document["incomplete_details"]),
                         ("incomplete", {"reason": "max_output_tokens"}))
        self.assertEqual(document["output"][0]["content"][0]["text"], "Shall I")

    def test_streamError(self) -> None:
        """
        C{x-fakellm-stream-error} ends the stream with an C{error} event of
        that code instead of the completed response.
        """
        _, body = self.send("POST", "/v1/responses", dict(RESPONSE, stream=True),
                                dict(BEARER, **{"x-fakellm-stream-error": "server_error",
                                                "x-fakellm-chunks": "2"}))
        events = _named(body)
        self.assertEqual(events[-1][0], "error")
        self.assertEqual(events[-1][1]["code"], "server_error")
        self.assertNotIn("response.completed", [k for k, _ in events])

    def test_errors(self) -> None:
        """
        The bearer key is checked, and a forced status is in the OpenAI envelope.
        """
        response, body = self.send("POST", "/v1/responses", RESPONSE)
        self.assertEqual(response.code, 401)
        response, body = self.send("POST", "/v1/responses", RESPONSE,
                                       dict(BEARER, **{"x-fakellm-status": "429"}))
        self.assertEqual(response.code, 429)
        self.assertEqual(json.loads(body)["error"]["type"], "rate_limit_error")


class ChatSteeringTests(_APITests):
    """
    The steering headers on OpenAI chat completions.
    """

    def test_toolCall(self) -> None:
        """
        A steered tool call is an OpenAI C{tool_calls} message; streamed,
        a header delta with id and name, then the arguments in two pieces.
        """
        body = dict(CHAT, tools=[{"type": "function", "function": {"name": "count"}}])
        headers = dict(BEARER, **{"x-fakellm-tool-call": "count"})
        _, plain = self.send("POST", "/v1/chat/completions", body, headers)
        [choice] = json.loads(plain)["choices"]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        [call] = choice["message"]["tool_calls"]
        self.assertEqual((call["type"], call["function"]["name"]), ("function", "count"))
        self.assertEqual(json.loads(call["function"]["arguments"]), {"words": 8})
        _, streamed = self.send(
            "POST", "/v1/chat/completions",
            dict(body, stream=True, stream_options={"include_usage": True}), headers)
        documents = [json.loads(e) for e in _events(streamed)[:-1]]
        first = documents[0]["choices"][0]["delta"]
        self.assertEqual(first["role"], "assistant")
        [head] = first["tool_calls"]
        self.assertEqual((head["index"], head["type"], head["function"]),
                         (0, "function", {"name": "count", "arguments": ""}))
        self.assertTrue(head["id"].startswith("call_"))
        pieces = [d["choices"][0]["delta"]["tool_calls"][0] for d in documents[1:3]]
        self.assertEqual([p["index"] for p in pieces], [0, 0])
        self.assertEqual(json.loads("".join(p["function"]["arguments"] for p in pieces)),
                         {"words": 8})
        self.assertEqual(documents[3]["choices"][0]["finish_reason"], "tool_calls")
        self.assertEqual(documents[4]["choices"], [])

    def test_unknownTool(self) -> None:
        """
        A tool call to a tool the request does not offer is a 400 naming
        the header, in every API.
        """
        requests = [
            ("/v1/chat/completions", CHAT, BEARER),
            ("/v1/responses", RESPONSE, BEARER),
            ("/v1/messages", MESSAGES, ANTHROPIC),
            ("/v1beta/models/gemini-2.5-flash:generateContent", GENERATE, GOOGLE),
            ("/openai/deployments/prod/chat/completions?api-version=2024-10-21", CHAT, AZURE),
        ]
        for path, body, headers in requests:
            response, answer = self.send("POST", path, body, dict(
                headers, **{"x-fakellm-tool-call": "nothing"}))
            self.assertEqual(response.code, 400, path)
            self.assertIn(b"x-fakellm-tool-call", answer)

    def test_usageHeaders(self) -> None:
        """
        Cached tokens are in C{prompt_tokens} and its details, reasoning
        tokens in C{completion_tokens} and its details, streamed too.
        """
        headers = dict(BEARER, **{"x-fakellm-cached-tokens": "10",
                                  "x-fakellm-reasoning-tokens": "4"})
        expected = {"prompt_tokens": 13, "completion_tokens": 12, "total_tokens": 25,
                    "prompt_tokens_details": {"cached_tokens": 10},
                    "completion_tokens_details": {"reasoning_tokens": 4}}
        _, plain = self.send("POST", "/v1/chat/completions", CHAT, headers)
        self.assertEqual(json.loads(plain)["usage"], expected)
        _, streamed = self.send(
            "POST", "/v1/chat/completions",
            dict(CHAT, stream=True, stream_options={"include_usage": True}), headers)
        self.assertEqual(json.loads(_events(streamed)[-2])["usage"], expected)

    def test_maxTokens(self) -> None:
        """
        C{max_tokens} below the answer cuts it, with finish reason C{length}.
        """
        _, plain = self.send("POST", "/v1/chat/completions", dict(CHAT, max_tokens=3),
                                 BEARER)
        [choice] = json.loads(plain)["choices"]
        self.assertEqual((choice["message"]["content"], choice["finish_reason"]),
                         ("Shall I compare", "length"))

    def test_streamError(self) -> None:
        """
        C{x-fakellm-stream-error} ends a chat stream with an error event
        after the words, without C{[DONE]}.
        """
        _, streamed = self.send(
            "POST", "/v1/chat/completions", dict(CHAT, stream=True),
            dict(BEARER, **{"x-fakellm-stream-error": "server_error", "x-fakellm-chunks": "2"}))
        events = _events(streamed)
        self.assertEqual(len(events), 1 + 2 + 1)
        self.assertEqual(json.loads(events[-1])["error"]["type"], "server_error")


ANTHROPIC = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 100, "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "one two three"}]}]}
TOOLS_ANTHROPIC = [{"name": "count", "input_schema": {"type": "object"}}]


class AnthropicTests(_APITests):
    """
    Anthropic's Messages API.
    """

    def test_plain(self) -> None:
        """
        A plain answer is a C{message} of one text block, C{end_turn}, with
        Anthropic's usage; system text counts as input.
        """
        response, body = self.send("POST", "/v1/messages", MESSAGES, ANTHROPIC)
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("request-id")[0].startswith("req_"))
        self.assertEqual(json.loads(body), {
            "id": "msg_fake_1", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": " ".join(POEM[:8])}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 5, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 8},
        })

    def test_stream(self) -> None:
        """
        A stream is exactly message_start, content_block_start, ping, one
        text delta per word, content_block_stop, message_delta with the
        stop reason and usage, message_stop.
        """
        _, body = self.send("POST", "/v1/messages", dict(MESSAGES, stream=True),
                            dict(ANTHROPIC, **{"x-fakellm-chunks": "3"}))
        events = _named(body)
        self.assertEqual([kind for kind, _ in events], [
            "message_start", "content_block_start", "ping", "content_block_delta",
            "content_block_delta", "content_block_delta", "content_block_stop",
            "message_delta", "message_stop",
        ])
        for kind, data in events:
            self.assertEqual(data["type"], kind)
        self.assertEqual(events[0][1]["message"]["usage"]["input_tokens"], 5)
        self.assertEqual(events[1][1]["content_block"], {"type": "text", "text": ""})
        self.assertEqual([d["delta"] for _, d in events[3:6]], [
            {"type": "text_delta", "text": "Shall "}, {"type": "text_delta", "text": "I "},
            {"type": "text_delta", "text": "compare"}])
        self.assertEqual(events[7][1], {"type": "message_delta", "delta": {
            "stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 3}})

    def test_maxTokens(self) -> None:
        """
        C{max_tokens} is required, and a lower one cuts the answer with
        stop reason C{max_tokens}.
        """
        body = {k: v for k, v in MESSAGES.items() if k != "max_tokens"}
        response, answer = self.send("POST", "/v1/messages", body, ANTHROPIC)
        self.assertEqual(response.code, 400)
        error = json.loads(answer)
        self.assertEqual((error["type"], error["error"]["type"]), ("error", "invalid_request_error"))
        self.assertIn("max_tokens", error["error"]["message"])
        _, answer = self.send("POST", "/v1/messages", dict(MESSAGES, max_tokens=2), ANTHROPIC)
        document = json.loads(answer)
        self.assertEqual((document["content"][0]["text"], document["stop_reason"]),
                         ("Shall I", "max_tokens"))
        self.assertEqual(document["usage"]["output_tokens"], 2)

    def test_versionMissing(self) -> None:
        """
        Without C{anthropic-version} a request is a 400 in Anthropic's error shape.
        """
        response, body = self.send("POST", "/v1/messages", MESSAGES, {"x-api-key": KEY})
        self.assertEqual(response.code, 400)
        self.assertEqual(json.loads(body), {"type": "error", "error": {
            "type": "invalid_request_error", "message": "anthropic-version: header is required"}})

    def test_key(self) -> None:
        """
        The key goes in C{x-api-key} or, as the Anthropic SDK sends it, as a
        bearer token; a missing or wrong one is a 401 C{authentication_error}.
        """
        version = {"anthropic-version": "2023-06-01"}
        response, _ = self.send("POST", "/v1/messages", MESSAGES, dict(version, **BEARER))
        self.assertEqual(response.code, 200)
        for headers in (version, dict(ANTHROPIC, **{"x-api-key": "sk-wrong"}),
                        dict(version, authorization="Bearer sk-wrong"),
                        dict(version, authorization=KEY),
                        dict(BEARER, **{"x-api-key": "sk-wrong"}, **version)):
            response, body = self.send("POST", "/v1/messages", MESSAGES, headers)
            self.assertEqual(response.code, 401, headers)
            self.assertEqual(json.loads(body)["error"]["type"], "authentication_error")

    def test_forcedErrors(self) -> None:
        """
        A forced 529 is an C{overloaded_error}, a 429 a C{rate_limit_error}
        with C{retry-after}.
        """
        for status, kind in ((529, "overloaded_error"), (429, "rate_limit_error"),
                             (500, "api_error"), (404, "not_found_error")):
            response, body = self.send("POST", "/v1/messages", MESSAGES,
                                       dict(ANTHROPIC, **{"x-fakellm-status": str(status)}))
            self.assertEqual(response.code, status)
            self.assertEqual(json.loads(body)["error"]["type"], kind)
            self.assertEqual(response.headers.getRawHeaders("retry-after"),
                             ["1"] if status == 429 else None)

    def test_toolCall(self) -> None:
        """
        A steered tool call is a C{tool_use} block; streamed, a tool_use
        block start and two C{input_json_delta} pieces.
        """
        body = dict(MESSAGES, tools=TOOLS_ANTHROPIC)
        headers = dict(ANTHROPIC, **{"x-fakellm-tool-call": "count"})
        _, plain = self.send("POST", "/v1/messages", body, headers)
        document = json.loads(plain)
        [block] = document["content"]
        self.assertEqual((block["type"], block["name"], block["input"]),
                         ("tool_use", "count", {"words": 8}))
        self.assertTrue(block["id"].startswith("toolu_"))
        self.assertEqual(document["stop_reason"], "tool_use")
        _, streamed = self.send("POST", "/v1/messages", dict(body, stream=True), headers)
        events = _named(streamed)
        start = events[1][1]["content_block"]
        self.assertEqual((start["type"], start["name"], start["input"]), ("tool_use", "count", {}))
        deltas = [d["delta"] for k, d in events if k == "content_block_delta"]
        self.assertEqual([d["type"] for d in deltas], ["input_json_delta"] * 2)
        self.assertEqual(json.loads("".join(d["partial_json"] for d in deltas)), {"words": 8})
        self.assertEqual(events[-2][1]["delta"]["stop_reason"], "tool_use")

    def test_usageHeaders(self) -> None:
        """
        Cached tokens are C{cache_read_input_tokens}, left out of
        C{input_tokens}; reasoning tokens count as output.
        """
        headers = dict(ANTHROPIC, **{"x-fakellm-cached-tokens": "50",
                                     "x-fakellm-reasoning-tokens": "5"})
        _, body = self.send("POST", "/v1/messages", MESSAGES, headers)
        self.assertEqual(json.loads(body)["usage"], {
            "input_tokens": 5, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 50, "output_tokens": 13})

    def test_streamError(self) -> None:
        """
        C{x-fakellm-stream-error} ends the stream with an C{error} event of
        that type instead of the closing events.
        """
        _, body = self.send("POST", "/v1/messages", dict(MESSAGES, stream=True),
                            dict(ANTHROPIC, **{"x-fakellm-stream-error": "overloaded_error",
                                               "x-fakellm-chunks": "2"}))
        events = _named(body)
        self.assertEqual([k for k, _ in events][-3:],
                         ["content_block_delta", "content_block_delta", "error"])
        self.assertEqual(events[-1][1]["error"]["type"], "overloaded_error")

    def test_dropAfter(self) -> None:
        """
        C{x-fakellm-drop-after} breaks a Messages stream too.
        """
        d = self.client.request("POST", "/v1/messages", dict(MESSAGES, stream=True),
                                dict(ANTHROPIC, **{"x-fakellm-drop-after": "1"}), key=None)
        self.failureResultOf(collect_all(self.successResultOf(d)), ResponseFailed)

    def test_countTokens(self) -> None:
        """
        C{count_tokens} answers the input's words, system included.
        """
        body = {k: v for k, v in MESSAGES.items() if k != "max_tokens"}
        _, answer = self.send("POST", "/v1/messages/count_tokens", body, ANTHROPIC)
        self.assertEqual(json.loads(answer), {"input_tokens": 5})

    def test_models(self) -> None:
        """
        C{/v1/models} with C{anthropic-version} is Anthropic's model list;
        without it, OpenAI's.
        """
        _, body = self.send("GET", "/v1/models", headers=ANTHROPIC)
        document = json.loads(body)
        self.assertFalse(document["has_more"])
        self.assertEqual({m["type"] for m in document["data"]}, {"model"})
        self.assertEqual(document["first_id"], document["data"][0]["id"])
        _, one = self.send("GET", "/v1/models/" + document["first_id"], headers=ANTHROPIC)
        self.assertEqual(json.loads(one), document["data"][0])
        _, openai = self.send("GET", "/v1/models", headers=BEARER)
        self.assertEqual(json.loads(openai)["object"], "list")


GOOGLE = {"x-goog-api-key": KEY}
GENERATE = {"systemInstruction": {"parts": [{"text": "be brief"}]},
            "contents": [{"role": "user", "parts": [{"text": "one two three"}]}]}
TOOLS_GEMINI = [{"functionDeclarations": [{"name": "count", "parameters": {"type": "object"}}]}]
FLASH = "/v1beta/models/gemini-2.5-flash"


class GeminiTests(_APITests):
    """
    The Gemini API.
    """

    def test_plain(self) -> None:
        """
        A plain answer is a C{GenerateContentResponse}: one candidate of
        the model's text, C{STOP}, and the usage metadata.
        """
        response, body = self.send("POST", FLASH + ":generateContent", GENERATE, GOOGLE)
        self.assertEqual(response.code, 200)
        document = json.loads(body)
        self.assertEqual(document["candidates"], [{
            "content": {"parts": [{"text": " ".join(POEM[:8])}], "role": "model"},
            "finishReason": "STOP", "index": 0}])
        self.assertEqual(document["usageMetadata"], {
            "promptTokenCount": 5, "candidatesTokenCount": 8, "totalTokenCount": 13})
        self.assertEqual(document["modelVersion"], "gemini-2.5-flash")

    def test_streamSse(self) -> None:
        """
        With C{alt=sse} each event is a response with one word; the last
        carries the finish reason and the only usage metadata.
        """
        response, body = self.send("POST", FLASH + ":streamGenerateContent?alt=sse", GENERATE,
                                   dict(GOOGLE, **{"x-fakellm-chunks": "3"}))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream"])
        blocks = body.decode().split("\r\n\r\n")
        self.assertEqual(blocks[-1], "")
        documents = [json.loads(b[len("data: "):]) for b in blocks[:-1]]
        self.assertEqual(len(documents), 4)
        texts = [d["candidates"][0]["content"]["parts"][0]["text"] for d in documents]
        self.assertEqual(texts, ["Shall ", "I ", "compare", ""])
        self.assertEqual(["usageMetadata" in d for d in documents], [False] * 3 + [True])
        self.assertEqual(["finishReason" in d["candidates"][0] for d in documents],
                         [False] * 3 + [True])
        self.assertEqual(documents[-1]["usageMetadata"]["candidatesTokenCount"], 3)

    def test_streamArray(self) -> None:
        """
        Without C{alt=sse} the stream is one JSON array of the same responses.
        """
        _, body = self.send("POST", FLASH + ":streamGenerateContent", GENERATE,
                            dict(GOOGLE, **{"x-fakellm-chunks": "2"}))
        documents = json.loads(body)
        self.assertEqual(len(documents), 3)
        self.assertEqual(documents[-1]["candidates"][0]["finishReason"], "STOP")

    def test_key(self) -> None:
        """
        The key goes in C{x-goog-api-key} or C{?key=}; none is a 403
        C{PERMISSION_DENIED}, a wrong one a 400 C{INVALID_ARGUMENT}.
        """
        response, _ = self.send("POST", FLASH + f":generateContent?key={KEY}", GENERATE)
        self.assertEqual(response.code, 200)
        response, body = self.send("POST", FLASH + ":generateContent", GENERATE)
        self.assertEqual(response.code, 403)
        self.assertEqual(json.loads(body)["error"]["status"], "PERMISSION_DENIED")
        response, body = self.send("POST", FLASH + ":generateContent", GENERATE,
                                   {"x-goog-api-key": "wrong"})
        self.assertEqual(response.code, 400)
        error = json.loads(body)["error"]
        self.assertEqual((error["code"], error["status"]), (400, "INVALID_ARGUMENT"))

    def test_forcedErrors(self) -> None:
        """
        A forced status is Google's error envelope with the status's name.
        """
        for status, name in ((429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"),
                             (500, "INTERNAL"), (404, "NOT_FOUND"), (400, "INVALID_ARGUMENT")):
            response, body = self.send("POST", FLASH + ":generateContent", GENERATE,
                                       dict(GOOGLE, **{"x-fakellm-status": str(status)}))
            self.assertEqual(response.code, status)
            error = json.loads(body)["error"]
            self.assertEqual((error["code"], error["status"]), (status, name))

    def test_toolCall(self) -> None:
        """
        A steered tool call is a C{functionCall} part, streamed whole.
        """
        body = dict(GENERATE, tools=TOOLS_GEMINI)
        headers = dict(GOOGLE, **{"x-fakellm-tool-call": "count"})
        _, plain = self.send("POST", FLASH + ":generateContent", body, headers)
        [candidate] = json.loads(plain)["candidates"]
        self.assertEqual(candidate["content"]["parts"],
                         [{"functionCall": {"name": "count", "args": {"words": 8}}}])
        self.assertEqual(candidate["finishReason"], "STOP")
        _, streamed = self.send("POST", FLASH + ":streamGenerateContent?alt=sse", body, headers)
        first = json.loads(streamed.decode().split("\r\n\r\n")[0][len("data: "):])
        self.assertEqual(first["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
                         "count")

    def test_usageHeaders(self) -> None:
        """
        Cached tokens are in C{promptTokenCount} and C{cachedContentTokenCount};
        reasoning tokens are C{thoughtsTokenCount}, outside the candidates' count.
        """
        headers = dict(GOOGLE, **{"x-fakellm-cached-tokens": "20",
                                  "x-fakellm-reasoning-tokens": "6"})
        _, body = self.send("POST", FLASH + ":generateContent", GENERATE, headers)
        self.assertEqual(json.loads(body)["usageMetadata"], {
            "promptTokenCount": 25, "candidatesTokenCount": 8, "totalTokenCount": 39,
            "cachedContentTokenCount": 20, "thoughtsTokenCount": 6})

    def test_maxOutputTokens(self) -> None:
        """
        C{maxOutputTokens} below the answer cuts it: C{MAX_TOKENS}.
        """
        _, body = self.send("POST", FLASH + ":generateContent",
                            dict(GENERATE, generationConfig={"maxOutputTokens": 1}), GOOGLE)
        [candidate] = json.loads(body)["candidates"]
        self.assertEqual((candidate["content"]["parts"][0]["text"], candidate["finishReason"]),
                         ("Shall", "MAX_TOKENS"))

    def test_streamError(self) -> None:
        """
        C{x-fakellm-stream-error} ends the stream with an error object of
        that status.
        """
        _, body = self.send("POST", FLASH + ":streamGenerateContent?alt=sse", GENERATE,
                            dict(GOOGLE, **{"x-fakellm-stream-error": "UNAVAILABLE"}))
        last = json.loads(body.decode().split("\r\n\r\n")[-2][len("data: "):])
        self.assertEqual(last["error"]["status"], "UNAVAILABLE")
        self.assertEqual(last["error"]["code"], 503)

    def test_models(self) -> None:
        """
        C{/v1beta/models} lists models by resource name.
        """
        _, body = self.send("GET", "/v1beta/models", headers=GOOGLE)
        names = [m["name"] for m in json.loads(body)["models"]]
        self.assertIn("models/gemini-2.5-flash", names)
        _, one = self.send("GET", FLASH, headers=GOOGLE)
        self.assertEqual(json.loads(one)["name"], "models/gemini-2.5-flash")


AZURE = {"api-key": KEY}
DEPLOYMENT = "/openai/deployments/prod-chat"


class AzureTests(_APITests):
    """
    Azure OpenAI deployments.
    """

    def test_chat(self) -> None:
        """
        A chat completion answers as OpenAI's, the model being the deployment.
        """
        response, body = self.send("POST", DEPLOYMENT + "/chat/completions?api-version=2024-10-21",
                                   {"messages": CHAT["messages"]}, AZURE)
        self.assertEqual(response.code, 200)
        document = json.loads(body)
        self.assertEqual((document["object"], document["model"]), ("chat.completion", "prod-chat"))
        self.assertEqual(document["usage"]["prompt_tokens"], 3)

    def test_stream(self) -> None:
        """
        A streamed chat completion is OpenAI's stream with the deployment as model.
        """
        _, body = self.send("POST", DEPLOYMENT + "/chat/completions?api-version=2024-10-21",
                            dict(CHAT, stream=True), AZURE)
        events = _events(body)
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual({json.loads(e)["model"] for e in events[:-1]}, {"prod-chat"})

    def test_embeddings(self) -> None:
        """
        Embeddings answer as OpenAI's, the model being the deployment.
        """
        _, body = self.send("POST", "/openai/deployments/emb/embeddings?api-version=2024-10-21",
                            {"input": "a b"}, AZURE)
        self.assertEqual(json.loads(body)["model"], "emb")

    def test_apiVersionMissing(self) -> None:
        """
        Without C{api-version} the answer is Azure's 404.
        """
        response, body = self.send("POST", DEPLOYMENT + "/chat/completions", CHAT, AZURE)
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body), {"error": {"code": "404",
                                                      "message": "Resource not found"}})

    def test_key(self) -> None:
        """
        The key goes in C{api-key}; a bearer token or a wrong key is a 401.
        """
        for headers in (BEARER, {"api-key": "wrong"}, {}):
            response, body = self.send(
                "POST", DEPLOYMENT + "/chat/completions?api-version=2024-10-21", CHAT, headers)
            self.assertEqual(response.code, 401, headers)
            self.assertEqual(json.loads(body)["error"]["code"], "401")

    def test_forcedError(self) -> None:
        """
        A forced 429 carries C{retry-after}, in the OpenAI envelope.
        """
        response, body = self.send(
            "POST", DEPLOYMENT + "/chat/completions?api-version=2024-10-21", CHAT,
            dict(AZURE, **{"x-fakellm-status": "429"}))
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])
        self.assertEqual(json.loads(body)["error"]["code"], "429")


AWS_ID = "AKIDFAKE"
AWS_SECRET = "fake-secret"
CONVERSE = {"system": [{"text": "be brief"}],
            "messages": [{"role": "user", "content": [{"text": "one two three"}]}]}
TOOLS_BEDROCK = {"tools": [{"toolSpec": {"name": "count", "inputSchema": {"json": {}}}}]}
HAIKU = "/model/anthropic.claude-3-haiku-20240307-v1%3A0"


def _signed(path: str, body: object, headers: dict[str, str] | None = None,
            secret: str = AWS_SECRET) -> dict[str, str]:
    """
    The headers botocore signs a Bedrock request with.
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="POST", url="http://fake" + path, data=json.dumps(body).encode(),
                         headers=dict({"content-type": "application/json"}, **(headers or {})))
    SigV4Auth(Credentials(AWS_ID, secret), "bedrock", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def _frames(body: bytes) -> list[tuple[dict[str, Any], Any]]:
    """
    The headers and JSON payloads of an AWS event stream.
    """
    from botocore.eventstream import EventStreamBuffer

    buffer = EventStreamBuffer()
    buffer.add_data(body)
    return [(message.headers, json.loads(message.payload)) for message in buffer]


class BedrockTests(_APITests):
    """
    Bedrock's Converse API, with its signature checks.
    """

    def setUp(self) -> None:
        self.client = _Client()
        self.client.fakellm = FakeLLM(self.client.clock, key=KEY, awsAccessKeyId=AWS_ID,
                                      awsSecretAccessKey=AWS_SECRET)
        self.client.stub = StubTreq(self.client.fakellm)

    def converse(self, path: str, body: object, steering: dict[str, str] | None = None,
                 secret: str = AWS_SECRET) -> tuple[IResponse, bytes]:
        return self.send("POST", path, body, _signed(path, body, steering, secret))

    def test_plain(self) -> None:
        """
        A signed Converse request gets Bedrock's answer: the message, the
        stop reason, usage and metrics.
        """
        response, body = self.converse(HAIKU + "/converse", CONVERSE)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body), {
            "output": {"message": {"role": "assistant",
                                   "content": [{"text": " ".join(POEM[:8])}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 5, "outputTokens": 8, "totalTokens": 13},
            "metrics": {"latencyMs": 0},
        })

    def test_stream(self) -> None:
        """
        ConverseStream answers event stream frames: messageStart, one
        contentBlockDelta per word, contentBlockStop, messageStop, metadata.
        """
        response, body = self.converse(HAIKU + "/converse-stream", CONVERSE,
                                       {"x-fakellm-chunks": "3"})
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["application/vnd.amazon.eventstream"])
        frames = _frames(body)
        self.assertEqual([h[":event-type"] for h, _ in frames], [
            "messageStart", "contentBlockDelta", "contentBlockDelta", "contentBlockDelta",
            "contentBlockStop", "messageStop", "metadata"])
        self.assertEqual({h[":message-type"] for h, _ in frames}, {"event"})
        self.assertEqual(frames[0][1], {"role": "assistant"})
        self.assertEqual([p["delta"]["text"] for _, p in frames[1:4]], ["Shall ", "I ", "compare"])
        self.assertEqual(frames[5][1], {"stopReason": "end_turn"})
        self.assertEqual(frames[6][1], {"usage": {"inputTokens": 5, "outputTokens": 3,
                                                  "totalTokens": 8},
                                        "metrics": {"latencyMs": 0}})

    def test_signatureRefused(self) -> None:
        """
        A request signed with another secret, or changed after signing, is
        a 403 C{InvalidSignatureException}.
        """
        response, body = self.converse(HAIKU + "/converse", CONVERSE, secret="other")
        self.assertEqual(response.code, 403)
        self.assertEqual(response.headers.getRawHeaders("x-amzn-ErrorType"),
                         ["InvalidSignatureException"])
        self.assertTrue(json.loads(body)["message"].startswith(
            "The request signature we calculated does not match"))
        headers = _signed(HAIKU + "/converse", CONVERSE)
        response, _ = self.send("POST", HAIKU + "/converse", dict(CONVERSE, extra=1), headers)
        self.assertEqual(response.code, 403)

    def test_signatureMissing(self) -> None:
        """
        No SigV4 C{Authorization}, or one without C{x-amz-date}, is a 403.
        """
        response, body = self.send("POST", HAIKU + "/converse", CONVERSE, BEARER)
        self.assertEqual(response.code, 403)
        response, body = self.send("POST", HAIKU + "/converse", CONVERSE)
        self.assertEqual(response.headers.getRawHeaders("x-amzn-ErrorType"),
                         ["MissingAuthenticationTokenException"])
        headers = _signed(HAIKU + "/converse", CONVERSE)
        del headers["X-Amz-Date"]
        response, _ = self.send("POST", HAIKU + "/converse", CONVERSE, headers)
        self.assertEqual(response.code, 403)

    def test_unverifiedWithoutCredentials(self) -> None:
        """
        Without AWS credentials the fake checks the signature's form only.
        """
        self.client = _Client()
        response, _ = self.converse(HAIKU + "/converse", CONVERSE, secret="anything")
        self.assertEqual(response.code, 200)

    def test_forcedErrors(self) -> None:
        """
        A forced status names Bedrock's exception in C{x-amzn-ErrorType}.
        """
        for status, kind in ((429, "ThrottlingException"), (400, "ValidationException"),
                             (503, "ServiceUnavailableException"),
                             (500, "InternalServerException")):
            response, body = self.converse(HAIKU + "/converse", CONVERSE,
                                           {"x-fakellm-status": str(status)})
            self.assertEqual(response.code, status)
            self.assertEqual(response.headers.getRawHeaders("x-amzn-ErrorType"), [kind])
            self.assertIn("message", json.loads(body))

    def test_toolCall(self) -> None:
        """
        A steered tool call is a C{toolUse} block; streamed, a block start
        with its id and name and two C{toolUse} input deltas.
        """
        body = dict(CONVERSE, toolConfig=TOOLS_BEDROCK)
        steering = {"x-fakellm-tool-call": "count"}
        _, plain = self.converse(HAIKU + "/converse", body, steering)
        document = json.loads(plain)
        [block] = document["output"]["message"]["content"]
        self.assertEqual((block["toolUse"]["name"], block["toolUse"]["input"]),
                         ("count", {"words": 8}))
        self.assertEqual(document["stopReason"], "tool_use")
        _, streamed = self.converse(HAIKU + "/converse-stream", body, steering)
        frames = _frames(streamed)
        self.assertEqual(frames[1][0][":event-type"], "contentBlockStart")
        self.assertEqual(frames[1][1]["start"]["toolUse"]["name"], "count")
        pieces = [p["delta"]["toolUse"]["input"] for h, p in frames
                  if h[":event-type"] == "contentBlockDelta"]
        self.assertEqual(len(pieces), 2)
        self.assertEqual(json.loads("".join(pieces)), {"words": 8})
        self.assertEqual(frames[-2][1], {"stopReason": "tool_use"})
        response, _ = self.converse(HAIKU + "/converse", body, {"x-fakellm-tool-call": "other"})
        self.assertEqual(response.code, 400)

    def test_usageHeaders(self) -> None:
        """
        Cached tokens are C{cacheReadInputTokens}, outside C{inputTokens}
        and inside C{totalTokens}; reasoning tokens count as output.
        """
        _, body = self.converse(HAIKU + "/converse", CONVERSE, {
            "x-fakellm-cached-tokens": "30", "x-fakellm-reasoning-tokens": "2"})
        self.assertEqual(json.loads(body)["usage"], {
            "inputTokens": 5, "outputTokens": 10, "totalTokens": 45,
            "cacheReadInputTokens": 30, "cacheWriteInputTokens": 0})

    def test_streamError(self) -> None:
        """
        C{x-fakellm-stream-error} ends the stream with an exception frame
        of that type.
        """
        _, body = self.converse(HAIKU + "/converse-stream", CONVERSE, {
            "x-fakellm-stream-error": "throttlingException", "x-fakellm-chunks": "2"})
        frames = _frames(body)
        self.assertEqual(len(frames), 1 + 2 + 1)
        headers, payload = frames[-1]
        self.assertEqual((headers[":message-type"], headers[":exception-type"]),
                         ("exception", "throttlingException"))
        self.assertIn("message", payload)

    def test_dropAfter(self) -> None:
        """
        C{x-fakellm-drop-after} closes a ConverseStream connection mid-stream.
        """
        path = HAIKU + "/converse-stream"
        d = self.client.request("POST", path, CONVERSE,
                                _signed(path, CONVERSE, {"x-fakellm-drop-after": "2"}), key=None)
        chunks: list[bytes] = []
        self.failureResultOf(collect(self.successResultOf(d), chunks.append), ResponseFailed)
        self.assertEqual(len(_frames(b"".join(chunks))), 1 + 2)

    def test_recorded(self) -> None:
        """
        The request is recorded with every header it carried.
        """
        self.converse(HAIKU + "/converse", CONVERSE)
        seen = self.client.fakellm.requests[-1]
        self.assertEqual(seen.path, HAIKU + "/converse")
        self.assertTrue(seen.headers["authorization"].startswith("AWS4-HMAC-SHA256 "))
        self.assertIn("x-amz-date", seen.headers)


class QuietServiceTests(SynchronousTestCase):
    """
    The service's options for Bedrock and its quiet idle timeout.
    """

    def test_awsOptions(self) -> None:
        """
        The AWS credentials are taken together, never one alone.
        """
        options = Options()
        options.parseOptions(["--aws-access-key-id", "AKID", "--aws-secret-access-key", "s"])
        self.assertEqual((options["aws-access-key-id"], options["aws-secret-access-key"]),
                         ("AKID", "s"))
        for args in (["--aws-access-key-id", "AKID"], ["--aws-secret-access-key", "s"]):
            self.assertRaises(UsageError, Options().parseOptions, args)

    def test_idleTimeoutQuiet(self) -> None:
        """
        An idle connection is closed at the site's timeout without a
        "Timing out client" line in the log.
        """
        options = Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1"])
        site = makeService(options).factory  # type: ignore[attr-defined]
        clock = Clock()
        site.reactor = clock
        channel = site.buildProtocol(None)
        transport = StringTransport()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        channel.makeConnection(transport)
        clock.advance(site.timeOut + 1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual([e for e in events if "Timing out" in str(e.get("log_format"))], [])
        channel.connectionLost(Failure(ConnectionDone()))
