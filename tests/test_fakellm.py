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
from twisted.python.failure import Failure
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
