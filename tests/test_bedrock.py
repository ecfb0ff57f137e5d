"""
Tests for L{aigateway.llm.bedrock}: Converse translation on golden
fixtures (C{tests/fixtures/bedrock/}), the event stream fed at every byte
boundary, Bedrock's errors, and SigV4 signing.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import botocore.auth  # type: ignore[import-untyped]
import botocore.awsrequest  # type: ignore[import-untyped]
import botocore.credentials  # type: ignore[import-untyped]
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from aigateway.llm.bedrock import (
    BedrockUnavailable,
    ConverseStream,
    Signer,
    chatToConverse,
    converseToCompletion,
    errorFromBedrock,
    modelPath,
    runtimeHost,
)
from aigateway.llm.translate import StreamError, TranslationError, UpstreamError
from aigateway.testing.eventstream import encodeMessage, event, exception

FIXTURES = FilePath(__file__).sibling("fixtures").child("bedrock")
MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
CREATED = 1700000000
ID = "chatcmpl-bedrock1"

# The AWS SigV4 test suite's example credentials.
EXAMPLE_KEY = "AKIDEXAMPLE"
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def fixture(name: str) -> Any:
    return json.loads(FIXTURES.child(name).getContent())


def encodeStream(events: list[dict[str, Any]]) -> bytes:
    """
    The event stream bytes of a fixture's events.
    """
    out = b""
    for e in events:
        payload = json.dumps(e["payload"], ensure_ascii=False).encode("utf-8")
        if "event" in e:
            out += event(e["event"], payload)
        else:
            out += exception(e["exception"], payload)
    return out


def translate(pieces: list[bytes]) -> tuple[list[dict[str, Any]], str | None]:
    """
    Feed C{pieces} to a new stream and end it: the chunks out, and the
    L{StreamError}'s message if one ended it.
    """
    stream = ConverseStream(MODEL, CREATED, ID)
    out: list[dict[str, Any]] = []
    try:
        for piece in pieces:
            out.extend(stream.feed(piece))
        out.extend(stream.end())
    except StreamError as e:
        return out, e.message
    return out, None


class ModelPathTests(SynchronousTestCase):
    """
    L{modelPath} and L{runtimeHost}.
    """

    def test_versionedModelId(self) -> None:
        """
        The C{:} of a versioned model id is percent-encoded, the dots kept.
        """
        self.assertEqual(modelPath(MODEL, False),
                         b"/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse")

    def test_stream(self) -> None:
        """
        A stream goes to C{converse-stream}.
        """
        self.assertEqual(modelPath("amazon.nova-lite-v1:0", True),
                         b"/model/amazon.nova-lite-v1%3A0/converse-stream")

    def test_inferenceProfileArn(self) -> None:
        """
        An ARN's C{/} stays inside the model segment.
        """
        arn = ("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/"
               "a1b2c3d4e5f6")
        self.assertEqual(
            modelPath(arn, False),
            b"/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3A"
            b"application-inference-profile%2Fa1b2c3d4e5f6/converse")

    def test_notAModelId(self) -> None:
        """
        An empty id or a dot segment is a 400 on C{model}, not a new path.
        """
        for modelId in ("", ".", ".."):
            e = self.assertRaises(TranslationError, modelPath, modelId, False)
            self.assertEqual(e.param, "model")

    def test_runtimeHost(self) -> None:
        """
        The runtime host is named after the region; a region that is not a
        name cannot make another host.
        """
        self.assertEqual(runtimeHost("eu-west-3"), b"bedrock-runtime.eu-west-3.amazonaws.com")
        for bad in ("", "us-east-1.evil.com", "us-east-1/", "US-EAST-1"):
            self.assertRaises(ValueError, runtimeHost, bad)


class RequestTests(SynchronousTestCase):
    """
    L{chatToConverse}.
    """

    def test_fixtures(self) -> None:
        """
        Each request fixture translates to its Converse body.
        """
        for name in ("request-plain.json", "request-tools.json", "request-structured.json"):
            case = fixture(name)
            self.assertEqual(chatToConverse(case["openai"]), case["converse"], name)

    def base(self, **fields: Any) -> dict[str, Any]:
        chat: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
        chat.update(fields)
        return chat

    def test_refusedFields(self) -> None:
        """
        Every field Converse cannot honour is a 400 naming it.
        """
        cases = {
            "n": 2, "logprobs": True, "top_logprobs": 3, "logit_bias": {"50256": -100},
            "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -1,
            "parallel_tool_calls": False, "audio": {"voice": "alloy", "format": "mp3"},
            "modalities": ["text", "audio"], "reasoning_effort": "high",
            "prediction": {"type": "content", "content": "x"}, "metadata": {"a": "b"},
            "store": True, "service_tier": "flex", "web_search_options": {},
            "functions": [{"name": "f"}], "function_call": "auto", "verbosity": "low",
            "some_future_field": 1,
        }
        for field, value in cases.items():
            e = self.assertRaises(TranslationError, chatToConverse, self.base(**{field: value}))
            self.assertEqual(e.param, field)
            self.assertEqual(e.status, 400)

    def test_neutralValues(self) -> None:
        """
        A field at the value that does nothing, or null, is no reason to
        refuse.
        """
        neutral = {"n": 1, "logprobs": False, "presence_penalty": 0.0, "frequency_penalty": 0,
                   "logit_bias": {}, "parallel_tool_calls": True, "store": False,
                   "modalities": ["text"], "seed": None, "reasoning_effort": None,
                   "response_format": {"type": "text"}, "user": "u-1", "top_logprobs": None}
        self.assertEqual(chatToConverse(self.base(**neutral)),
                         {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]})

    def test_refusedMessageFields(self) -> None:
        """
        A message field Converse has no place for is a 400 naming its path.
        """
        cases = [
            ({"role": "user", "content": "Hi", "name": "alice"}, "messages[0].name"),
            ({"role": "user", "content": "Hi", "cache": True}, "messages[0].cache"),
            ({"role": "critic", "content": "Hi"}, "messages[0].role"),
            ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
             "messages[0].content[0].type"),
            ({"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]},
             "messages[0].content[0].type"),
            ({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
             "messages[0].content[0].type"),
        ]
        for message, param in cases:
            e = self.assertRaises(TranslationError, chatToConverse, self.base(messages=[message]))
            self.assertEqual(e.param, param)

    def test_linkedImages(self) -> None:
        """
        An image given by link, or data that is not a supported base64
        image, is a 400 on its URL: Converse takes bytes only.
        """
        for url in ("https://example.com/cat.png", "HTTP://example.com/cat.png",
                    "data:image/tiff;base64,AAAA", "data:image/png,rawbytes",
                    "data:image/png;base64,not base64!"):
            chat = self.base(messages=[{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url}}]}])
            e = self.assertRaises(TranslationError, chatToConverse, chat)
            self.assertEqual(e.param, "messages[0].content[1].image_url.url")

    def test_imageFormats(self) -> None:
        """
        Each image type Converse takes is named by its format (C{jpg} as
        C{jpeg}).
        """
        for mime, fmt in (("png", "png"), ("jpeg", "jpeg"), ("jpg", "jpeg"), ("gif", "gif"),
                          ("webp", "webp")):
            chat = self.base(messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/{mime};base64,AAAA"}}]}])
            [block] = chatToConverse(chat)["messages"][0]["content"]
            self.assertEqual(block, {"image": {"format": fmt, "source": {"bytes": "AAAA"}}})

    def test_badToolArguments(self) -> None:
        """
        Tool call arguments that are not a JSON object are a 400 on them.
        """
        for arguments in ("{not json", "[1, 2]", "3"):
            chat = self.base(messages=[
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "t1", "type": "function",
                     "function": {"name": "f", "arguments": arguments}}]}])
            e = self.assertRaises(TranslationError, chatToConverse, chat)
            self.assertEqual(e.param, "messages[1].tool_calls[0].function.arguments")

    def test_refusedTools(self) -> None:
        """
        Tools that are not functions, or malformed, are a 400 naming the
        tool's field.
        """
        cases = [
            ({"type": "custom", "custom": {"name": "x"}}, "tools[0].type"),
            ({"type": "function", "function": {"description": "no name"}},
             "tools[0].function.name"),
            ({"type": "function", "function": {"name": "f", "parameters": "{}"}},
             "tools[0].function.parameters"),
            ({"type": "function", "function": {"name": "f", "examples": []}},
             "tools[0].function.examples"),
        ]
        for tool, param in cases:
            e = self.assertRaises(TranslationError, chatToConverse, self.base(tools=[tool]))
            self.assertEqual(e.param, param)

    def test_toolChoiceNone(self) -> None:
        """
        C{tool_choice} C{none} leaves the tools out, which Converse allows
        only while the conversation holds no tool calls.
        """
        tools = [{"type": "function", "function": {"name": "f"}}]
        body = chatToConverse(self.base(tools=tools, tool_choice="none"))
        self.assertNotIn("toolConfig", body)
        history = [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "done"},
        ]
        e = self.assertRaises(TranslationError, chatToConverse,
                              self.base(messages=history, tools=tools, tool_choice="none"))
        self.assertEqual(e.param, "tool_choice")

    def test_toolChoiceAuto(self) -> None:
        """
        C{tool_choice} C{auto} is Converse's C{auto}.
        """
        tools = [{"type": "function", "function": {"name": "f"}}]
        body = chatToConverse(self.base(tools=tools, tool_choice="auto"))
        self.assertEqual(body["toolConfig"]["toolChoice"], {"auto": {}})

    def test_toolChoiceWithoutTools(self) -> None:
        """
        A tool choice that names tools when none are given is a 400.
        """
        for choice in ("required", {"type": "function", "function": {"name": "f"}}):
            e = self.assertRaises(TranslationError, chatToConverse, self.base(tool_choice=choice))
            self.assertEqual(e.param, "tool_choice")

    def test_jsonObject(self) -> None:
        """
        JSON mode without a schema is a 400: Converse has none.
        """
        e = self.assertRaises(TranslationError, chatToConverse,
                              self.base(response_format={"type": "json_object"}))
        self.assertEqual(e.param, "response_format")

    def test_badValues(self) -> None:
        """
        Parameters of the wrong type are a 400 naming them.
        """
        cases = {"max_tokens": 0, "max_completion_tokens": "10", "temperature": "hot",
                 "top_p": True, "stop": [1], "stream_options": {"include_obfuscation": True}}
        for field, value in cases.items():
            e = self.assertRaises(TranslationError, chatToConverse, self.base(**{field: value}))
            self.assertTrue(e.param.startswith(field), (field, e.param))

    def test_systemOnly(self) -> None:
        """
        Messages are required: an empty list is a 400 on C{messages}.
        """
        e = self.assertRaises(TranslationError, chatToConverse, self.base(messages=[]))
        self.assertEqual(e.param, "messages")


class ResponseTests(SynchronousTestCase):
    """
    L{converseToCompletion}.
    """

    def test_fixtures(self) -> None:
        """
        Each Converse answer fixture translates to its OpenAI completion.
        """
        for name in ("response-plain.json", "response-tool.json",
                     "response-cache-reasoning.json", "response-guardrail.json"):
            case = fixture(name)
            self.assertEqual(
                converseToCompletion(case["converse"], model=MODEL, created=CREATED, id=ID),
                case["openai"], name)

    def answer(self, stopReason: str = "end_turn", **usage: int) -> dict[str, Any]:
        return {"output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
                "stopReason": stopReason, "usage": usage, "metrics": {"latencyMs": 1}}

    def test_finishReasons(self) -> None:
        """
        Every stop reason maps to OpenAI's finish reason.
        """
        cases = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls",
                 "max_tokens": "length", "model_context_window_exceeded": "length",
                 "guardrail_intervened": "content_filter", "content_filtered": "content_filter",
                 "malformed_model_output": "stop", "something_new": "stop"}
        for reason, finish in cases.items():
            out = converseToCompletion(self.answer(reason, inputTokens=1, outputTokens=1,
                                                   totalTokens=2),
                                       model=MODEL, created=CREATED, id=ID)
            self.assertEqual(out["choices"][0]["finish_reason"], finish, reason)

    def test_cacheCountedOnce(self) -> None:
        """
        Should C{totalTokens} show that C{inputTokens} already holds the
        cached tokens, they are not added again.
        """
        out = converseToCompletion(
            self.answer(inputTokens=2000, outputTokens=10, totalTokens=2010,
                        cacheReadInputTokens=1500, cacheWriteInputTokens=0),
            model=MODEL, created=CREATED, id=ID)
        self.assertEqual(out["usage"], {"prompt_tokens": 2000, "completion_tokens": 10,
                                        "total_tokens": 2010,
                                        "prompt_tokens_details": {"cached_tokens": 1500}})

    def test_cacheWriteOnly(self) -> None:
        """
        Tokens written to the cache count as prompt tokens; none were read.
        """
        out = converseToCompletion(
            self.answer(inputTokens=5, outputTokens=10, totalTokens=1015,
                        cacheWriteInputTokens=1000),
            model=MODEL, created=CREATED, id=ID)
        self.assertEqual(out["usage"], {"prompt_tokens": 1005, "completion_tokens": 10,
                                        "total_tokens": 1015})

    def test_toolCallsOnly(self) -> None:
        """
        An answer of tool calls alone has null content, as OpenAI's has.
        """
        answer = {"output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t1", "name": "f", "input": {"q": "é"}}}]}},
            "stopReason": "tool_use", "usage": {"inputTokens": 1, "outputTokens": 1,
                                                "totalTokens": 2}}
        message = converseToCompletion(answer, model=MODEL, created=CREATED,
                                       id=ID)["choices"][0]["message"]
        self.assertIsNone(message["content"])
        self.assertEqual(json.loads(message["tool_calls"][0]["function"]["arguments"]),
                         {"q": "é"})

    def test_notAnAnswer(self) -> None:
        """
        A body that is not a Converse answer is a 502.
        """
        bodies: list[dict[str, Any]] = [
            {}, {"output": {}}, {"output": {"message": {"content": "text"}}},
            {"output": {"message": {"content": ["text"]}}}]
        for body in bodies:
            e = self.assertRaises(UpstreamError, converseToCompletion, body, model=MODEL,
                                  created=CREATED, id=ID)
            self.assertEqual(e.status, 502)


STREAMS = ("stream-plain.json", "stream-tool.json", "stream-cache-reasoning.json",
           "stream-exception.json", "stream-model-error.json", "stream-early-end.json")


class StreamTests(SynchronousTestCase):
    """
    L{ConverseStream}.
    """

    def check(self, name: str, data: bytes, chunks: list[dict[str, Any]],
              error: str | None) -> None:
        """
        C{data} gives C{chunks} (and an error containing C{error}) whole,
        cut at every byte boundary into two, and one byte at a time.
        """
        cuts = [[data], [data[i:i + 1] for i in range(len(data))]]
        cuts.extend([data[:i], data[i:]] for i in range(1, len(data)))
        for pieces in cuts:
            out, message = translate(pieces)
            self.assertEqual(out, chunks, (name, [len(p) for p in pieces][:2]))
            if error is None:
                self.assertIsNone(message, name)
            else:
                self.assertIsNotNone(message, name)
                self.assertIn(error, message)

    def test_fixtures(self) -> None:
        """
        Each stream fixture gives its chunks however its bytes are cut.
        """
        for name in STREAMS:
            case = fixture(name)
            self.check(name, encodeStream(case["events"]), case["chunks"], case.get("error"))

    def test_exceptionNamesTypeOnly(self) -> None:
        """
        The error for an exception message names its type, never the
        upstream's text.
        """
        case = fixture("stream-model-error.json")
        out, message = translate([encodeStream(case["events"])])
        assert message is not None
        self.assertIn("modelStreamErrorException", message)
        self.assertNotIn("secret internals", message)
        self.assertNotIn("boom", message)

    def test_everyException(self) -> None:
        """
        Each exception Bedrock's stream can end with is a L{StreamError}
        naming it.
        """
        for name in ("internalServerException", "modelStreamErrorException",
                     "validationException", "throttlingException",
                     "serviceUnavailableException"):
            data = event("messageStart", b'{"role":"assistant"}') + exception(name, b'{}')
            out, message = translate([data])
            assert message is not None
            self.assertIn(name, message)

    def test_errorMessage(self) -> None:
        """
        An C{error} message (the framing's own failure) ends the stream.
        """
        data = encodeMessage({":message-type": "error", ":error-code": "InternalFailure",
                              ":error-message": "x"}, b"")
        out, message = translate([data])
        assert message is not None
        self.assertIn("InternalFailure", message)

    def test_badCrc(self) -> None:
        """
        A frame whose message or prelude CRC does not match is a
        L{StreamError}, after the chunks of the good frames before it.
        """
        good = event("messageStart", b'{"role":"assistant"}')
        frame = bytearray(event("contentBlockDelta",
                                b'{"contentBlockIndex":0,"delta":{"text":"Hi"}}'))
        payloadAt = len(frame) - 10
        for at in (payloadAt, 2):
            broken = bytearray(frame)
            broken[at] ^= 0x01
            data = good + bytes(broken)
            cuts = [[data], [data[i:i + 1] for i in range(len(data))]]
            for pieces in cuts:
                out, message = translate(pieces)
                self.assertEqual(len(out), 1)
                self.assertEqual(out[0]["choices"][0]["delta"],
                                 {"role": "assistant", "content": ""})
                assert message is not None
                self.assertIn("damaged", message)

    def test_failureSticks(self) -> None:
        """
        Once failed, a stream fails every later feed and its end.
        """
        stream = ConverseStream(MODEL, CREATED, ID)
        self.assertRaises(StreamError, stream.feed, exception("throttlingException", b"{}"))
        self.assertRaises(StreamError, stream.feed, event("messageStart", b"{}"))
        self.assertRaises(StreamError, stream.end)

    def test_notJson(self) -> None:
        """
        An event whose payload is not a JSON object is a L{StreamError}.
        """
        for payload in (b"not json", b"[1]"):
            out, message = translate([event("messageStart", payload)])
            self.assertIsNotNone(message)

    def test_unknownEventsSkipped(self) -> None:
        """
        Event types this module does not know are skipped.
        """
        case = fixture("stream-plain.json")
        data = encodeStream(case["events"][:1]) + event("someFutureEvent", b'{"x":1}')
        data += encodeStream(case["events"][1:])
        self.assertEqual(translate([data]), (case["chunks"], None))

    def test_afterTheEnd(self) -> None:
        """
        An event after C{messageStop} and C{metadata} is a L{StreamError}.
        """
        data = encodeStream(fixture("stream-plain.json")["events"])
        out, message = translate([data + event("contentBlockDelta",
                                               b'{"contentBlockIndex":0,"delta":{"text":"x"}}')])
        self.assertIsNotNone(message)

    def test_toolInputWithoutStart(self) -> None:
        """
        Tool input for a block that was never started as a tool call is a
        L{StreamError}.
        """
        data = event("messageStart", b'{"role":"assistant"}') + event(
            "contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"toolUse":{"input":"{}"}}}')
        out, message = translate([data])
        self.assertIsNotNone(message)

    def test_metadataFirst(self) -> None:
        """
        Usage that comes before C{messageStop} still comes out after the
        finish chunk.
        """
        data = (event("messageStart", b'{"role":"assistant"}')
                + event("metadata", b'{"usage":{"inputTokens":1,"outputTokens":2,'
                                    b'"totalTokens":3},"metrics":{"latencyMs":1}}')
                + event("messageStop", b'{"stopReason":"end_turn"}'))
        out, message = translate([data])
        self.assertIsNone(message)
        self.assertEqual([c["choices"][0]["finish_reason"] if c["choices"] else "usage"
                          for c in out], [None, "stop", "usage"])

    def test_emptyBody(self) -> None:
        """
        A body that ends before any event is a L{StreamError}.
        """
        self.assertEqual(translate([b""])[0], [])
        self.assertIsNotNone(translate([b""])[1])
        self.assertIsNotNone(translate([event("messageStart", b"{}")[:20]])[1])

    def test_exposed(self) -> None:
        """
        The stream exposes the model it names and, once reported, the usage.
        """
        stream = ConverseStream(MODEL, CREATED, ID)
        self.assertEqual(stream.responseModel, MODEL)
        self.assertIsNone(stream.usage)
        stream.feed(encodeStream(fixture("stream-cache-reasoning.json")["events"]))
        self.assertEqual(stream.usage, {"prompt_tokens": 2012, "completion_tokens": 300,
                                        "total_tokens": 2312,
                                        "prompt_tokens_details": {"cached_tokens": 1500}})
        self.assertEqual(stream.end(), [])


class ErrorTests(SynchronousTestCase):
    """
    L{errorFromBedrock}.
    """

    def test_fixtures(self) -> None:
        """
        Each Bedrock error answer becomes its status, type, code and message.
        """
        for case in fixture("errors.json"):
            body = case["body"]
            raw = body.encode("utf-8") if isinstance(body, str) else json.dumps(body).encode()
            e = errorFromBedrock(case["status"], case["errorType"], raw)
            self.assertEqual({"status": e.status, "type": e.type, "code": e.code,
                              "message": e.message}, case["expected"], case["errorType"])

    def test_byStatus(self) -> None:
        """
        An unnamed error is judged by its status.
        """
        cases = {400: 400, 401: 401, 403: 403, 404: 404, 408: 504, 422: 400, 429: 429,
                 500: 502, 503: 503, 504: 504, 599: 502}
        for status, answer in cases.items():
            self.assertEqual(errorFromBedrock(status, None, b"").status, answer, status)

    def test_oddTypeHeader(self) -> None:
        """
        An error type that is not a name is not repeated as the code.
        """
        e = errorFromBedrock(400, "<script>:x", b'{"message":"m"}')
        self.assertIsNone(e.code)
        self.assertEqual(e.status, 400)


def credentialsFiles(case: SynchronousTestCase, credentials: str = "",
                     config: str = "") -> dict[str, str]:
    """
    An environment whose profile files are the given texts.
    """
    directory = FilePath(case.mktemp())
    directory.makedirs()
    environ = {}
    for name, text, variable in (("credentials", credentials, "AWS_SHARED_CREDENTIALS_FILE"),
                                 ("config", config, "AWS_CONFIG_FILE")):
        path = directory.child(name)
        if text:
            path.setContent(text.encode("utf-8"))
        environ[variable] = path.path
    return environ


class SignerTests(SynchronousTestCase):
    """
    L{Signer}.
    """

    def test_awsTestVectors(self) -> None:
        """
        The AWS SigV4 test suite's get-vanilla and post-vanilla signatures
        come out.
        """
        signer = Signer("us-east-1", botocore.credentials.Credentials(EXAMPLE_KEY, EXAMPLE_SECRET),
                        service="service")
        now = datetime(2015, 8, 30, 12, 36, 0)
        prefix = (b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/"
                  b"aws4_request, SignedHeaders=host;x-amz-date, Signature=")
        for method, signature in (
                (b"GET", b"5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
                (b"POST", b"5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")):
            fields = signer.sign(method, b"https://example.amazonaws.com/",
                                 [(b"Host", b"example.amazonaws.com")], b"", now)
            self.assertEqual(fields, [(b"authorization", prefix + signature),
                                      (b"x-amz-date", b"20150830T123600Z")])

    def test_asBotocoreSigns(self) -> None:
        """
        A Bedrock request (a model id with C{:}, a body, a session token) is
        signed as botocore's own C{add_auth} signs it at the same time; the
        fields the HTTP client owns are not signed, and stale signing fields
        are replaced.
        """
        credentials = botocore.credentials.Credentials("AKIAEXAMPLE", "secret/key", "token+1")
        now = datetime(2024, 5, 6, 7, 8, 9)
        url = ("https://bedrock-runtime.us-west-2.amazonaws.com"
               "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse")
        body = b'{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}'
        ours = dict(Signer("us-west-2", credentials).sign(
            b"POST", url.encode("ascii"),
            [(b"Host", b"bedrock-runtime.us-west-2.amazonaws.com"),
             (b"Content-Type", b"application/json"), (b"Content-Length", b"57"),
             (b"User-Agent", b"aigateway"), (b"traceparent", b"00-abc-def-01"),
             (b"Authorization", b"Bearer caller"), (b"X-Amz-Date", b"19990101T000000Z")],
            body, now))

        request = botocore.awsrequest.AWSRequest(
            method="POST", url=url, data=body,
            headers={"Host": "bedrock-runtime.us-west-2.amazonaws.com",
                     "Content-Type": "application/json"})
        self.patch(botocore.auth, "get_current_datetime", lambda *a, **k: now)
        botocore.auth.SigV4Auth(credentials, "bedrock", "us-west-2").add_auth(request)

        self.assertEqual(ours[b"authorization"], request.headers["Authorization"].encode())
        self.assertEqual(ours[b"x-amz-date"], b"20240506T070809Z")
        self.assertEqual(ours[b"x-amz-security-token"], b"token+1")
        self.assertIn(b"SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,",
                      ours[b"authorization"])

    def test_awareTime(self) -> None:
        """
        A time with a zone is signed as the same instant in UTC.
        """
        signer = Signer("us-east-1", botocore.credentials.Credentials("AKIA", "s"))
        utc = datetime(2024, 1, 1, 12, 0, 0)
        paris = datetime(2024, 1, 1, 13, 0, 0, tzinfo=timezone(timedelta(hours=1)))
        url = b"https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"
        self.assertEqual(signer.sign(b"POST", url, [], b"{}", utc),
                         signer.sign(b"POST", url, [], b"{}", paris))

    def test_refreshedPerCall(self) -> None:
        """
        Refreshable credentials are read again at every signature.
        """
        keys = iter(["AKIAFIRST", "AKIASECOND"])

        def metadata(key: str) -> dict[str, Any]:
            # Five minutes from expiry: botocore must refresh before use.
            soon = datetime.now(timezone.utc) + timedelta(minutes=5)
            return {"access_key": key, "secret_key": "s", "token": None,
                    "expiry_time": soon.isoformat()}

        credentials = botocore.credentials.RefreshableCredentials.create_from_metadata(
            metadata("AKIALOADED"), lambda: metadata(next(keys)), "test")
        signer = Signer("us-east-1", credentials)
        args: tuple[Any, ...] = (
            b"POST", b"https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse",
            [], b"{}", datetime(2024, 1, 1))
        self.assertIn(b"Credential=AKIAFIRST/", dict(signer.sign(*args))[b"authorization"])
        self.assertIn(b"Credential=AKIASECOND/", dict(signer.sign(*args))[b"authorization"])

    def test_refreshFails(self) -> None:
        """
        Credentials that cannot be refreshed make signing refuse with
        L{BedrockUnavailable}, naming no secret.
        """
        def expired() -> dict[str, Any]:
            past = datetime.now(timezone.utc) - timedelta(minutes=1)
            return {"access_key": "AKIAOLD", "secret_key": "s", "token": None,
                    "expiry_time": past.isoformat()}

        credentials = botocore.credentials.RefreshableCredentials.create_from_metadata(
            expired(), expired, "test")
        e = self.assertRaises(BedrockUnavailable, Signer("us-east-1", credentials).sign,
                              b"POST", b"https://h/", [], b"", datetime(2024, 1, 1))
        self.assertNotIn("AKIAOLD", e.message)

    def test_fromEnvironmentVariables(self) -> None:
        """
        Keys in the environment given are used, a session token with them.
        """
        environ = credentialsFiles(self)
        environ.update({"AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "s",
                        "AWS_SESSION_TOKEN": "tok"})
        signer = Signer.fromEnvironment("eu-central-1", environ)
        self.assertIsNone(signer.problem)
        fields = dict(signer.sign(b"POST", b"https://bedrock-runtime.eu-central-1.amazonaws.com/"
                                  b"model/m/converse", [], b"{}", datetime(2024, 1, 1)))
        self.assertIn(b"Credential=AKIAENV/20240101/eu-central-1/bedrock/aws4_request",
                      fields[b"authorization"])
        self.assertEqual(fields[b"x-amz-security-token"], b"tok")

    def test_environmentGivenOnly(self) -> None:
        """
        The process environment is not read: only the mapping given.
        """
        self.patch(os, "environ", {"AWS_ACCESS_KEY_ID": "AKIAPROC",
                                   "AWS_SECRET_ACCESS_KEY": "s"})
        signer = Signer.fromEnvironment("us-east-1", credentialsFiles(self))
        self.assertIsNotNone(signer.problem)

    def test_profileFiles(self) -> None:
        """
        The profile C{AWS_PROFILE} names is read from the shared credentials
        file, else from the config file.
        """
        environ = credentialsFiles(
            self,
            credentials="[default]\naws_access_key_id = AKIADEFAULT\n"
                        "aws_secret_access_key = s\n"
                        "[work]\naws_access_key_id = AKIAWORK\naws_secret_access_key = s\n",
            config="[profile other]\naws_access_key_id = AKIACONFIG\n"
                   "aws_secret_access_key = s\n")
        url = b"https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"
        for profile, key in ((None, b"AKIADEFAULT"), ("work", b"AKIAWORK"),
                             ("other", b"AKIACONFIG")):
            env = dict(environ)
            if profile is not None:
                env["AWS_PROFILE"] = profile
            signer = Signer.fromEnvironment("us-east-1", env)
            fields = dict(signer.sign(b"POST", url, [], b"", datetime(2024, 1, 1)))
            self.assertIn(b"Credential=" + key + b"/", fields[b"authorization"])

    def test_missing(self) -> None:
        """
        No credentials is not an error at load: the problem says what to
        set, and signing refuses.
        """
        environ = credentialsFiles(self)
        environ["AWS_WEB_IDENTITY_TOKEN_FILE"] = "/var/run/secrets/token"
        signer = Signer.fromEnvironment("us-east-1", environ)
        assert signer.problem is not None
        self.assertIn("AWS_ACCESS_KEY_ID", signer.problem)
        self.assertIn("AWS_WEB_IDENTITY_TOKEN_FILE", signer.problem)
        self.assertRaises(BedrockUnavailable, signer.sign, b"POST", b"https://h/", [], b"",
                          datetime(2024, 1, 1))

    def test_partialNamesNoSecret(self) -> None:
        """
        Half a key pair is a problem naming the missing half, never the
        half that is there.
        """
        for present, missing in (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                                 ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")):
            environ = credentialsFiles(self)
            environ[present] = "SuperSecretValue123"
            signer = Signer.fromEnvironment("us-east-1", environ)
            assert signer.problem is not None
            self.assertIn(missing, signer.problem)
            self.assertNotIn("SuperSecretValue123", signer.problem)

    def test_unreadableFile(self) -> None:
        """
        A credentials file that cannot be parsed is a problem naming no
        secret.
        """
        environ = credentialsFiles(self, credentials="[default\naws_access_key_id = AKIABAD\n")
        signer = Signer.fromEnvironment("us-east-1", environ)
        assert signer.problem is not None
        self.assertNotIn("AKIABAD", signer.problem)


class WithoutBotocoreTests(SynchronousTestCase):
    """
    Without botocore, what needs it says how to install it; the rest works.
    """

    def setUp(self) -> None:
        saved = {name: module for name, module in sys.modules.items()
                 if name == "botocore" or name.startswith("botocore.")}
        for name in saved:
            sys.modules[name] = None  # type: ignore[assignment]
        sys.modules["botocore"] = None  # type: ignore[assignment]

        def restore() -> None:
            for name in list(sys.modules):
                if name == "botocore" or name.startswith("botocore."):
                    del sys.modules[name]
            sys.modules.update(saved)

        self.addCleanup(restore)

    def test_unavailable(self) -> None:
        """
        Signing and streams raise L{BedrockUnavailable} naming the extra.
        """
        for call in (lambda: Signer.fromEnvironment("us-east-1", {}),
                     lambda: ConverseStream(MODEL, CREATED, ID),
                     lambda: Signer("us-east-1", object()).sign(
                         b"POST", b"https://h/", [], b"", datetime(2024, 1, 1))):
            e = self.assertRaises(BedrockUnavailable, call)
            self.assertEqual(e.message, "the bedrock provider needs botocore: "
                                        "pip install 'aigateway[bedrock]'")

    def test_translationWithout(self) -> None:
        """
        Request and answer translation need no botocore.
        """
        case = fixture("request-plain.json")
        self.assertEqual(chatToConverse(case["openai"]), case["converse"])
        case = fixture("response-plain.json")
        self.assertEqual(converseToCompletion(case["converse"], model=MODEL, created=CREATED,
                                              id=ID), case["openai"])
