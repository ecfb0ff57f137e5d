"""
Tests for L{aigateway.llm.messages}: OpenAI chat and Anthropic Messages,
translated both ways, on golden fixtures written from both APIs' references.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aigateway.llm.messages import (
    ChunksToMessages,
    MessagesStream,
    chatToMessages,
    completionToMessage,
    errorFromAnthropic,
    errorToAnthropic,
    messageToCompletion,
    messagesToChat,
)
from aigateway.llm.sse import SSEParser
from aigateway.llm.translate import StreamError, TranslationError, chunk, encodeEvent

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
CREATED = 1700000000
STREAMS = ["stream_plain", "stream_tool_call", "stream_usage"]


def _json(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text("utf-8"))


def _raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _translate(pieces: list[bytes], model: str = "claude") -> list[dict[str, Any]]:
    stream = MessagesStream(model, CREATED)
    out: list[dict[str, Any]] = []
    for piece in pieces:
        out.extend(stream.feed(piece))
    out.extend(stream.end())
    return out


def _events(data: bytes) -> list[tuple[str, Any]]:
    """
    The events of an SSE body, as (name, parsed data).
    """
    parser = SSEParser()
    events = parser.feed(data) + parser.end()
    return [(event.event, json.loads(event.data)) for event in events]


def _door(chunks: list[dict[str, Any]], model: str = "claude-sonnet-4-5") -> bytes:
    door = ChunksToMessages(model)
    return b"".join(door.chunk(doc) for doc in chunks) + door.end()


def _answering(body: bytes) -> Any:
    """
    An HTTP client for the official SDKs that answers every request with
    C{body} as an event stream, in memory.
    """
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx  # type: ignore[no-redef]

    def handler(request: Any) -> Any:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return httpx.Client(transport=httpx.MockTransport(handler))


def _chat(**fields: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}
    request.update(fields)
    return request


def _messages(**fields: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"model": "claude", "max_tokens": 100,
                               "messages": [{"role": "user", "content": "Hi"}]}
    request.update(fields)
    return request


class ChatToMessagesTests(SynchronousTestCase):
    """
    An OpenAI chat request becomes the Messages request that asks the same.
    """

    def _golden(self, name: str) -> None:
        fixture = _json(name)
        self.assertEqual(
            chatToMessages(fixture["request"], model=fixture["model"],
                           defaultMaxTokens=fixture["defaultMaxTokens"]),
            fixture["expected"])

    def test_plain(self) -> None:
        """
        System and developer messages are the top-level system, sampling
        fields and the user carry over, and hints are dropped.
        """
        self._golden("chat_plain")

    def test_tools(self) -> None:
        """
        Tools, a named tool choice without parallel calls, tool calls and
        tool results merged into the next user turn.
        """
        self._golden("chat_tools")

    def test_multimodal(self) -> None:
        """
        URL and data URL images, consecutive user messages merged into one
        turn.
        """
        self._golden("chat_multimodal")

    def test_reasoning(self) -> None:
        """
        A reasoning effort is a thinking budget.
        """
        self._golden("chat_reasoning")

    def test_defaultMaxTokens(self) -> None:
        """
        Without a limit from the client, the backend's default is sent, as
        Anthropic requires one.
        """
        self.assertEqual(
            chatToMessages(_chat(), model="m", defaultMaxTokens=777)["max_tokens"], 777)

    def test_singleSystemIsString(self) -> None:
        """
        One system text is sent as a plain string.
        """
        out = chatToMessages(_chat(messages=[{"role": "system", "content": "Be nice."},
                                             {"role": "user", "content": "Hi"}]),
                             model="m", defaultMaxTokens=10)
        self.assertEqual(out["system"], "Be nice.")

    def test_parallelWithoutChoice(self) -> None:
        """
        No parallel tool calls without a tool choice is auto with parallel
        use disabled; with C{none} it asks nothing more.
        """
        tools = [{"type": "function", "function": {"name": "f"}}]
        out = chatToMessages(_chat(tools=tools, parallel_tool_calls=False),
                             model="m", defaultMaxTokens=10)
        self.assertEqual(out["tool_choice"], {"type": "auto", "disable_parallel_tool_use": True})
        out = chatToMessages(_chat(tools=tools, parallel_tool_calls=False, tool_choice="none"),
                             model="m", defaultMaxTokens=10)
        self.assertEqual(out["tool_choice"], {"type": "none"})

    def test_refusedFields(self) -> None:
        """
        Every field that asks for what Anthropic cannot do is refused by
        name.
        """
        cases = {
            "n": 2,
            "logprobs": True,
            "top_logprobs": 2,
            "logit_bias": {"50256": -100},
            "presence_penalty": 0.5,
            "frequency_penalty": -1,
            "seed": 42,
            "audio": {"voice": "alloy", "format": "wav"},
            "modalities": ["text", "audio"],
            "prediction": {"type": "content", "content": "x"},
            "response_format": {"type": "json_object"},
            "store": True,
            "service_tier": "flex",
            "functions": [{"name": "f"}],
            "function_call": "auto",
            "web_search_options": {},
            "verbosity": "low",
        }
        for field, value in cases.items():
            with self.subTest(field=field):
                error = self.assertRaises(TranslationError, chatToMessages,
                                          _chat(**{field: value}), model="m",
                                          defaultMaxTokens=10)
                self.assertEqual(error.param, field)
        schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
        error = self.assertRaises(TranslationError, chatToMessages,
                                  _chat(response_format=schema), model="m", defaultMaxTokens=10)
        self.assertEqual(error.param, "response_format")

    def test_refusedValues(self) -> None:
        """
        Values outside what Anthropic takes are refused, naming the field.
        """
        cases: list[tuple[dict[str, Any], str]] = [
            ({"temperature": 1.5}, "temperature"),
            ({"max_tokens": 0}, "max_tokens"),
            ({"max_completion_tokens": "10"}, "max_completion_tokens"),
            ({"stop": [1]}, "stop"),
            ({"reasoning_effort": "extreme"}, "reasoning_effort"),
            ({"reasoning_effort": "high", "max_tokens": 16384}, "reasoning_effort"),
            ({"tool_choice": "sometimes"}, "tool_choice"),
            ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
            ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
             "tools[0].function.strict"),
            ({"user": 12}, "user"),
        ]
        for fields, param in cases:
            with self.subTest(param=param):
                error = self.assertRaises(TranslationError, chatToMessages, _chat(**fields),
                                          model="m", defaultMaxTokens=1000)
                self.assertEqual(error.param, param)

    def test_wrongShapes(self) -> None:
        """
        Messages of the wrong shape, or with parts or fields Anthropic
        cannot take, are refused naming their path.
        """
        cases = [
            ("not a list", "messages"),
            (["hi"], "messages[0]"),
            ([{"role": "function", "content": "x", "name": "f"}], "messages[0].role"),
            ([{"role": "user", "content": 3}], "messages[0].content"),
            ([{"role": "user", "content": [{"type": "input_audio",
                                            "input_audio": {"data": "", "format": "wav"}}]}],
             "messages[0].content[0].type"),
            ([{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}],
             "messages[0].content[0].type"),
            ([{"role": "user", "content": [{"type": "image_url",
                                            "image_url": {"url": "ftp://x/y.png"}}]}],
             "messages[0].content[0].image_url.url"),
            ([{"role": "user", "content": "x", "name": "alice"}], "messages[0].name"),
            ([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
             "messages[0].content[0].type"),
            ([{"role": "assistant", "content": "x", "refusal": "no"}], "messages[0].refusal"),
            ([{"role": "user", "content": "x", "cache": True}], "messages[0].cache"),
            ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
        ]
        for messages, param in cases:
            with self.subTest(param=param):
                error = self.assertRaises(TranslationError, chatToMessages,
                                          _chat(messages=messages), model="m",
                                          defaultMaxTokens=10)
                self.assertEqual(error.param, param)

    def test_badArguments(self) -> None:
        """
        Tool call arguments that are not a JSON object are refused naming
        them: Anthropic takes the input as an object.
        """
        for arguments in ["{not json", "[1, 2]", "3", None]:
            with self.subTest(arguments=arguments):
                messages = [{"role": "user", "content": "x"},
                            {"role": "assistant", "content": None, "tool_calls": [
                                {"id": "c", "type": "function",
                                 "function": {"name": "f", "arguments": arguments}}]}]
                error = self.assertRaises(TranslationError, chatToMessages,
                                          _chat(messages=messages), model="m",
                                          defaultMaxTokens=10)
                self.assertEqual(error.param, "messages[1].tool_calls[0].function.arguments")


class MessageToCompletionTests(SynchronousTestCase):
    """
    An Anthropic answer becomes the chat completion that says the same.
    """

    def _golden(self, name: str) -> None:
        fixture = _json(name)
        self.assertEqual(messageToCompletion(fixture["response"], created=CREATED),
                         fixture["expected"])

    def test_plain(self) -> None:
        """
        Text blocks are joined, a stop sequence is C{stop}.
        """
        self._golden("message_plain")

    def test_toolCall(self) -> None:
        """
        Tool use blocks are tool calls with the block's id and compact
        JSON arguments.
        """
        self._golden("message_tool_call")

    def test_usage(self) -> None:
        """
        Cache reads and writes count as prompt tokens, reads are cached;
        thinking is C{reasoning_content}.
        """
        self._golden("message_usage")

    def test_stopReasons(self) -> None:
        """
        Every Anthropic stop reason has its OpenAI finish reason.
        """
        base = _json("message_plain")["response"]
        cases = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "length",
                 "model_context_window_exceeded": "length"}
        for reason, finish in cases.items():
            with self.subTest(reason=reason):
                out = messageToCompletion(dict(base, stop_reason=reason), created=CREATED)
                self.assertEqual(out["choices"][0]["finish_reason"], finish)

    def test_notAMessage(self) -> None:
        """
        A document that is not a message cannot be translated.
        """
        self.assertRaises(StreamError, messageToCompletion, {"type": "error"}, created=CREATED)


class MessagesStreamTests(SynchronousTestCase):
    """
    An Anthropic stream, cut anywhere, becomes the same OpenAI chunks.
    """

    def test_golden(self) -> None:
        """
        Each recorded stream in one piece gives its expected chunks.
        """
        for name in STREAMS:
            with self.subTest(name=name):
                self.assertEqual(_translate([_raw(f"{name}.sse")]), _json(name))

    def test_everySplit(self) -> None:
        """
        Cut in two at every byte, including inside UTF-8 characters, each
        stream gives the same chunks.
        """
        for name in STREAMS:
            data = _raw(f"{name}.sse")
            expected = _json(name)
            for i in range(len(data) + 1):
                self.assertEqual(_translate([data[:i], data[i:]]), expected, (name, i))

    def test_byteAtATime(self) -> None:
        """
        Fed one byte at a time, each stream gives the same chunks.
        """
        for name in STREAMS:
            data = _raw(f"{name}.sse")
            pieces = [data[i:i + 1] for i in range(len(data))]
            self.assertEqual(_translate(pieces), _json(name), name)

    def test_crlf(self) -> None:
        """
        CRLF line ends are read like LF ones.
        """
        data = _raw("stream_plain.sse").replace(b"\n", b"\r\n")
        self.assertEqual(_translate([data]), _json("stream_plain"))

    def test_accounting(self) -> None:
        """
        The stream keeps the response id, model and final usage it read.
        """
        stream = MessagesStream("asked", CREATED)
        stream.feed(_raw("stream_usage.sse"))
        stream.end()
        self.assertEqual(stream.responseId, "msg_01Thinking")
        self.assertEqual(stream.responseModel, "claude-sonnet-4-5")
        self.assertEqual(stream.usage, _json("stream_usage")[-1]["usage"])

    def test_lastChunks(self) -> None:
        """
        Every stream ends with the finish chunk, then the usage chunk with
        no choices.
        """
        for name in STREAMS:
            chunks = _translate([_raw(f"{name}.sse")])
            self.assertIsNotNone(chunks[-2]["choices"][0]["finish_reason"])
            self.assertEqual(chunks[-1]["choices"], [])
            self.assertIn("usage", chunks[-1])

    def test_errorEvent(self) -> None:
        """
        An error event, wherever the stream is cut (in two, or byte by
        byte), raises a StreamError naming the upstream's error type, after
        the same chunks that came before it.
        """
        data = _raw("stream_error.sse")
        cuts = [[data[:i], data[i:]] for i in range(len(data) + 1)]
        cuts.append([data[i:i + 1] for i in range(len(data))])
        for pieces in cuts:
            stream = MessagesStream("claude", CREATED)
            seen: list[dict[str, Any]] = []
            with self.assertRaises(StreamError) as caught:
                for piece in pieces:
                    seen.extend(stream.feed(piece))
                stream.end()
            self.assertIn("overloaded_error", caught.exception.message)
            self.assertEqual([c["choices"][0]["delta"] for c in seen],
                             [{"role": "assistant", "content": ""}, {"content": "Once upon"}])
            self.assertRaises(StreamError, stream.feed, b"")

    def test_errorNotEchoed(self) -> None:
        """
        The upstream's error message, and an error type that does not look
        like one, never reach the StreamError's message.
        """
        event = {"type": "error", "error": {"type": "<script>alert(1)</script>",
                                            "message": "secret sk-ant-123"}}
        stream = MessagesStream("claude", CREATED)
        error = self.assertRaises(StreamError, stream.feed, encodeEvent(event, "error"))
        self.assertNotIn("secret", error.message)
        self.assertNotIn("script", error.message)

    def test_earlyEnd(self) -> None:
        """
        A stream cut anywhere before C{message_stop} raises a StreamError at
        its end: it never looks complete.
        """
        data = _raw("stream_plain.sse")
        end = data.index(b"event: message_stop")
        for i in range(end):
            stream = MessagesStream("claude", CREATED)
            stream.feed(data[:i])
            self.assertRaises(StreamError, stream.end)

    def test_badFrames(self) -> None:
        """
        Frames that are not what Anthropic sends raise a StreamError.
        """
        start = _raw("stream_plain.sse").split(b"\n\n")[0] + b"\n\n"
        cases = [
            b"data: {not json\n\n",
            b"data: [1]\n\n",
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"x"}}\n\n',
            start + b'data: {"type":"content_block_delta","index":5,'
                    b'"delta":{"type":"text_delta","text":"x"}}\n\n',
            start + start,
        ]
        for data in cases:
            with self.subTest(data=data):
                stream = MessagesStream("claude", CREATED)
                with self.assertRaises(StreamError):
                    stream.feed(data)
                    stream.end()

    def test_unknownEventsSkipped(self) -> None:
        """
        Events Anthropic may add later are skipped, as its documentation
        asks of clients.
        """
        data = _raw("stream_plain.sse")
        extra = b'event: future_event\ndata: {"type":"future_event","x":1}\n\n'
        cut = data.index(b"event: content_block_stop")
        self.assertEqual(_translate([data[:cut] + extra + data[cut:]]), _json("stream_plain"))

    def test_openAISDK(self) -> None:
        """
        The official OpenAI SDK reads the translated chunks as a complete
        answer with the tool calls assembled.
        """
        try:
            import openai
        except ImportError:
            raise self.skipTest("the openai SDK is not installed")
        chunks = _translate([_raw("stream_tool_call.sse")])
        body = b"".join(encodeEvent(c) for c in chunks) + b"data: [DONE]\n\n"
        client = openai.OpenAI(api_key="test", base_url="http://gateway/v1",
                               http_client=_answering(body))
        with client.chat.completions.stream(
                model="claude", messages=[{"role": "user", "content": "hi"}]) as stream:
            final = stream.get_final_completion()
        message = final.choices[0].message
        self.assertEqual(message.content, "Let me check the weather.")
        self.assertEqual([(c.id, c.function.name, c.function.arguments)
                          for c in message.tool_calls or []],
                         [("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather",
                           '{"location": "San Francisco, CA"}'),
                          ("toolu_02Second", "get_time", '{"tz": "PST"}')])
        self.assertEqual(final.choices[0].finish_reason, "tool_calls")
        self.assertEqual(final.usage.total_tokens if final.usage else None, 561)


class ErrorFromAnthropicTests(SynchronousTestCase):
    """
    Anthropic's error answers, in OpenAI's terms.
    """

    def test_golden(self) -> None:
        """
        Each error type keeps its message and finds its status and type;
        529 is a 503.
        """
        for case in _json("errors"):
            with self.subTest(comment=case["comment"]):
                error = errorFromAnthropic(case["status"], json.dumps(case["body"]).encode())
                self.assertEqual(
                    {"status": error.status, "message": error.message, "type": error.type,
                     "code": error.code},
                    case["expected"])

    def test_notTheShape(self) -> None:
        """
        A body that is not Anthropic's error is a generic message with the
        status, never the upstream's bytes.
        """
        bodies = [b"<html>502 Bad Gateway " + b"x" * 5000 + b"</html>", b"", b"\xff\xfe",
                  b'{"type":"error","error":"boom"}', b'{"error":{"message":"m"}}', b"[]"]
        for body in bodies:
            with self.subTest(body=body[:20]):
                error = errorFromAnthropic(502, body)
                self.assertEqual((error.status, error.type), (502, "server_error"))
                self.assertIn("502", error.message)
                self.assertLess(len(error.message), 100)
        self.assertEqual(errorFromAnthropic(529, b"overloaded").status, 503)
        self.assertEqual(errorFromAnthropic(429, b"").type, "rate_limit_error")

    def test_longMessageCut(self) -> None:
        """
        An upstream message is cut short before it reaches the client.
        """
        body = json.dumps({"type": "error", "error": {"type": "api_error",
                                                      "message": "x" * 100000}}).encode()
        self.assertLess(len(errorFromAnthropic(500, body).message), 1100)


class MessagesToChatTests(SynchronousTestCase):
    """
    At the C{/v1/messages} door, an Anthropic request becomes the chat
    request that asks the same.
    """

    def test_plain(self) -> None:
        """
        System blocks, images, stop sequences, the user and a thinking
        budget carry over; caching hints and past thinking are dropped.
        """
        fixture = _json("door_request_plain")
        self.assertEqual(messagesToChat(fixture["request"]), fixture["expected"])

    def test_tools(self) -> None:
        """
        Tools, tool choice, tool use and tool results (an error one said so)
        carry over, and a stream asks for its usage.
        """
        fixture = _json("door_request_tools")
        self.assertEqual(messagesToChat(fixture["request"]), fixture["expected"])

    def test_toolChoices(self) -> None:
        """
        Each Anthropic tool choice has its OpenAI one.
        """
        tools = [{"name": "f", "input_schema": {"type": "object"}}]
        cases = [({"type": "auto"}, "auto"), ({"type": "any"}, "required"),
                 ({"type": "none"}, "none"),
                 ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}})]
        for choice, expected in cases:
            with self.subTest(choice=choice):
                out = messagesToChat(_messages(tools=tools, tool_choice=choice))
                self.assertEqual(out["tool_choice"], expected)
                self.assertNotIn("parallel_tool_calls", out)
        self.assertNotIn("tool_choice", messagesToChat(_messages(tool_choice={"type": "any"})))

    def test_thinkingBudgets(self) -> None:
        """
        A thinking budget is the reasoning effort of its size; disabled
        thinking asks for none.
        """
        cases = [(1024, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"),
                 (16384, "high"), (64000, "high")]
        for budget, effort in cases:
            with self.subTest(budget=budget):
                out = messagesToChat(_messages(thinking={"type": "enabled",
                                                         "budget_tokens": budget}))
                self.assertEqual(out["reasoning_effort"], effort)
        for kind in ["disabled", "adaptive"]:
            self.assertNotIn("reasoning_effort",
                             messagesToChat(_messages(thinking={"type": kind})))

    def test_refused(self) -> None:
        """
        What OpenAI chat cannot say is refused naming its path.
        """
        image = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}
        cases: list[tuple[dict[str, Any], str]] = [
            ({"top_k": 5}, "top_k"),
            ({"container": "container_1"}, "container"),
            ({"mcp_servers": [{"type": "url", "url": "https://mcp", "name": "x"}]},
             "mcp_servers"),
            ({"context_management": {}}, "context_management"),
            ({"thinking": {"type": "sometimes"}}, "thinking.type"),
            ({"service_tier": "standard_only"}, "service_tier"),
            ({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]},
             "tools[0].type"),
            ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0].type"),
            ({"metadata": {"user_id": "u", "tag": "x"}}, "metadata.tag"),
            ({"messages": [{"role": "user", "content": [{"type": "document", "source": image}]}]},
             "messages[0].content[0].type"),
            ({"messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]},
             "messages[0].content[0].source.type"),
            ({"messages": [{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [
                    {"type": "image", "source": image}]}]}]},
             "messages[0].content[0].content[0].type"),
            ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
                {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]},
             "messages[1].content[0].type"),
        ]
        for fields, param in cases:
            with self.subTest(param=param):
                error = self.assertRaises(TranslationError, messagesToChat, _messages(**fields))
                self.assertEqual(error.param, param)

    def test_validation(self) -> None:
        """
        A request of the wrong shape is refused naming the path at fault.
        """
        cases: list[tuple[dict[str, Any], str]] = [
            ({"max_tokens": None}, "max_tokens"),
            ({"max_tokens": "100"}, "max_tokens"),
            ({"max_tokens": True}, "max_tokens"),
            ({"max_tokens": 0}, "max_tokens"),
            ({"messages": {"role": "user"}}, "messages"),
            ({"messages": ["hi"]}, "messages[0]"),
            ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
            ({"messages": [{"role": "user"}]}, "messages[0].content"),
            ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
            ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
             "messages[0].content[0].text"),
            ({"messages": [{"role": "user", "content": "x", "name": "n"}]}, "messages[0].name"),
            ({"system": 5}, "system"),
            ({"system": [{"type": "image"}]}, "system[0].type"),
            ({"stop_sequences": "STOP"}, "stop_sequences"),
            ({"temperature": "hot"}, "temperature"),
            ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
            ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
            ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ]
        for fields, param in cases:
            with self.subTest(param=param):
                error = self.assertRaises(TranslationError, messagesToChat, _messages(**fields))
                self.assertEqual(error.param, param)


class CompletionToMessageTests(SynchronousTestCase):
    """
    At the door, a chat completion becomes the Anthropic message that says
    the same.
    """

    def test_golden(self) -> None:
        """
        Plain, tool call and cut-short completions give their messages.
        """
        for name in ["door_response_plain", "door_response_tool_call", "door_response_length"]:
            with self.subTest(name=name):
                fixture = _json(name)
                self.assertEqual(completionToMessage(fixture["response"]), fixture["expected"])

    def test_finishReasons(self) -> None:
        """
        Every OpenAI finish reason has its stop reason.
        """
        base = _json("door_response_plain")["response"]
        cases = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "content_filter": "refusal"}
        for finish, reason in cases.items():
            with self.subTest(finish=finish):
                choice = dict(base["choices"][0], finish_reason=finish)
                out = completionToMessage(dict(base, choices=[choice]))
                self.assertEqual(out["stop_reason"], reason)

    def test_badAnswers(self) -> None:
        """
        An answer without a choice, or with tool arguments that are not a
        JSON object, cannot be translated.
        """
        self.assertRaises(StreamError, completionToMessage, {"id": "x", "choices": []})
        fixture = _json("door_response_tool_call")["response"]
        call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{cut"}}
        choice = dict(fixture["choices"][0],
                      message=dict(fixture["choices"][0]["message"], tool_calls=[call]))
        self.assertRaises(StreamError, completionToMessage, dict(fixture, choices=[choice]))


class ChunksToMessagesTests(SynchronousTestCase):
    """
    At the door, OpenAI chunks become Anthropic's event sequence.
    """

    def test_golden(self) -> None:
        """
        A text stream and a thinking and tool call stream give their exact
        event sequences.
        """
        for name in ["door_stream_plain", "door_stream_tool_call"]:
            with self.subTest(name=name):
                self.assertEqual(_events(_door(_json(name))), _events(_raw(f"{name}.sse")))

    def test_holdsMessageDelta(self) -> None:
        """
        The finish chunk closes the block but C{message_delta} waits for the
        usage chunk that follows it.
        """
        chunks = _json("door_stream_plain")
        door = ChunksToMessages("claude")
        for doc in chunks[:-1]:
            data = door.chunk(doc)
        self.assertEqual([name for name, _ in _events(data)], ["content_block_stop"])
        last = _events(door.chunk(chunks[-1]))
        self.assertEqual([name for name, _ in last], ["message_delta", "message_stop"])
        self.assertEqual(last[0][1]["usage"]["output_tokens"], 12)
        self.assertEqual(door.end(), b"")

    def test_endWithoutUsage(self) -> None:
        """
        A stream that never gave usage is finished by its end.
        """
        chunks = _json("door_stream_plain")[:-1]
        names = [name for name, _ in _events(_door(chunks))]
        self.assertEqual(names[-2:], ["message_delta", "message_stop"])

    def test_usageOnFinishChunk(self) -> None:
        """
        Usage that came with the finish chunk is in C{message_delta}.
        """
        chunks = _json("door_stream_plain")
        finish = dict(chunks[3], usage=chunks[4]["usage"])
        events = _events(_door(chunks[:3] + [finish]))
        self.assertEqual(events[-2][1]["usage"]["input_tokens"], 9)

    def test_refusal(self) -> None:
        """
        A refusal streamed as OpenAI's C{refusal} text is a text block, and
        the message stops as a refusal.
        """
        docs = [chunk("c", "m", 1, {"role": "assistant", "content": None}),
                chunk("c", "m", 1, {"refusal": "I can't help with that."}),
                chunk("c", "m", 1, {}, "stop")]
        events = _events(_door(docs))
        self.assertEqual([data["delta"] for name, data in events if name == "content_block_delta"],
                         [{"type": "text_delta", "text": "I can't help with that."}])
        self.assertEqual(events[-2][1]["delta"]["stop_reason"], "refusal")

    def test_noFinish(self) -> None:
        """
        A stream that ends without a finish reason raises a StreamError: it
        never looks complete.
        """
        door = ChunksToMessages("claude")
        for doc in _json("door_stream_plain")[:3]:
            door.chunk(doc)
        self.assertRaises(StreamError, door.end)
        self.assertRaises(StreamError, ChunksToMessages("claude").end)

    def test_untranslatable(self) -> None:
        """
        Chunks Anthropic's events cannot say raise a StreamError.
        """
        first = _json("door_stream_tool_call")[:8]
        back = chunk("chatcmpl-tools", "m", 1, {"tool_calls": [
            {"index": 0, "function": {"arguments": "more"}}]})
        cases = [
            [{"error": {"message": "boom", "type": "server_error"}}],
            [chunk("c", "m", 1, {"content": "a"})
             | {"choices": [{"index": 1, "delta": {"content": "b"}, "finish_reason": None}]}],
            [chunk("c", "m", 1, {"tool_calls": [{"index": 0, "id": "x",
                                                 "function": {"arguments": ""}}]})],
            first + [back],
        ]
        for docs in cases:
            door = ChunksToMessages("claude")
            with self.assertRaises(StreamError):
                for doc in docs:
                    door.chunk(doc)

    def test_anthropicSDK(self) -> None:
        """
        The official Anthropic SDK reads the door's stream as a complete
        message with its thinking, tool uses and usage.
        """
        try:
            import anthropic
        except ImportError:
            raise self.skipTest("the anthropic SDK is not installed")
        client = anthropic.Anthropic(api_key="test", base_url="http://gateway",
                                     http_client=_answering(_door(_json("door_stream_tool_call"))))
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            message = stream.get_final_message()
        self.assertEqual([block.type for block in message.content],
                         ["thinking", "tool_use", "tool_use"])
        self.assertEqual(message.content[1].input, {"location": "Boston"})  # type: ignore
        self.assertEqual(message.stop_reason, "tool_use")
        self.assertEqual((message.usage.input_tokens, message.usage.cache_read_input_tokens,
                          message.usage.output_tokens), (90, 10, 30))


class ErrorToAnthropicTests(SynchronousTestCase):
    """
    The door's errors are Anthropic's error bodies.
    """

    def test_types(self) -> None:
        """
        Each status the gateway answers with has Anthropic's error type.
        """
        cases = {400: "invalid_request_error", 401: "authentication_error",
                 403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
                 413: "request_too_large", 429: "rate_limit_error", 431: "invalid_request_error",
                 500: "api_error", 502: "api_error", 503: "overloaded_error",
                 504: "api_error", 529: "overloaded_error"}
        for status, kind in cases.items():
            with self.subTest(status=status):
                self.assertEqual(json.loads(errorToAnthropic(status, "Nope é")),
                                 {"type": "error", "error": {"type": kind, "message": "Nope é"}})


# -- round trips ----------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20)


@st.composite
def _chatRequests(draw: st.DrawFn) -> dict[str, Any]:
    """
    Chat requests that both APIs can express: alternating text turns, a
    system text, sampling fields and tools.
    """
    turns = draw(st.integers(1, 5))
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_text)})
    for i in range(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": draw(_text)})
    request: dict[str, Any] = {"model": "m", "messages": messages,
                               "max_tokens": draw(st.integers(1, 100000))}
    if draw(st.booleans()):
        request["temperature"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        request["top_p"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        request["stop"] = draw(st.lists(_text, min_size=1, max_size=3))
    if draw(st.booleans()):
        request["user"] = draw(_text)
    if draw(st.booleans()):
        request["tools"] = [{"type": "function", "function": {
            "name": name, "description": draw(_text),
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}
            for name in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1,
                                      max_size=3, unique=True))]
        request["tool_choice"] = draw(st.sampled_from(["auto", "required", "none"]))
    return request


@st.composite
def _messagesRequests(draw: st.DrawFn) -> dict[str, Any]:
    """
    Messages requests that both APIs can express: alternating text turns,
    a system text, sampling fields, tools and a thinking budget.
    """
    turns = draw(st.integers(1, 5))
    request: dict[str, Any] = {
        "model": "m",
        "max_tokens": draw(st.integers(16385, 100000)),
        "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": draw(_text)}
                     for i in range(turns)],
    }
    if draw(st.booleans()):
        request["system"] = draw(_text)
    if draw(st.booleans()):
        request["temperature"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        request["stop_sequences"] = draw(st.lists(_text, min_size=1, max_size=3))
    if draw(st.booleans()):
        request["metadata"] = {"user_id": draw(_text)}
    if draw(st.booleans()):
        request["thinking"] = {"type": "enabled",
                               "budget_tokens": draw(st.sampled_from([1024, 4096, 16384]))}
    if draw(st.booleans()):
        request["tools"] = [{"name": name, "description": draw(_text),
                             "input_schema": {"type": "object"}}
                            for name in draw(st.lists(st.sampled_from(["a", "b"]), min_size=1,
                                                      max_size=2, unique=True))]
        choice: dict[str, Any] = {"type": draw(st.sampled_from(["auto", "any", "tool"]))}
        if choice["type"] == "tool":
            choice["name"] = request["tools"][0]["name"]
        if draw(st.booleans()):
            choice["disable_parallel_tool_use"] = True
        request["tool_choice"] = choice
    return request


class RoundTripTests(SynchronousTestCase):
    """
    What both APIs can express survives a trip through the other one.
    """

    @settings(max_examples=200, deadline=None)
    @given(_chatRequests())
    def test_chatThroughMessages(self, request: dict[str, Any]) -> None:
        """
        A chat request sent as Messages and read back at the door asks the
        same.
        """
        back = messagesToChat(chatToMessages(request, model="m", defaultMaxTokens=10))
        for message in back["messages"]:
            if isinstance(message["content"], list):
                message["content"] = "".join(part["text"] for part in message["content"])
        self.assertEqual(back, request)

    @settings(max_examples=200, deadline=None)
    @given(_messagesRequests())
    def test_messagesThroughChat(self, request: dict[str, Any]) -> None:
        """
        A Messages request read at the door and sent to an Anthropic
        backend asks the same.
        """
        back = chatToMessages(messagesToChat(request), model="m", defaultMaxTokens=10)
        for message in back["messages"]:
            if message["role"] == "assistant":
                message["content"] = "".join(block["text"] for block in message["content"])
        self.assertEqual(back, request)

    def test_streamThroughDoor(self) -> None:
        """
        An Anthropic stream translated to chunks and back through the door
        gives the same content events and stop reason, and the same usage.
        """
        for name in STREAMS:
            with self.subTest(name=name):
                original = _events(_raw(f"{name}.sse"))
                chunks = _translate([_raw(f"{name}.sse")])
                again = _events(_door(chunks, model="claude-sonnet-4-5"))

                def content(events: list[tuple[str, Any]]) -> list[Any]:
                    out = []
                    for event, data in events:
                        if event.startswith("content_block"):
                            if data.get("delta", {}).get("type") == "signature_delta":
                                continue
                            if data.get("delta", {}).get("partial_json") == "":
                                continue
                            out.append(data)
                    return out

                self.assertEqual(content(again), content(original))
                self.assertEqual(again[-2][1]["delta"]["stop_reason"],
                                 original[-2][1]["delta"]["stop_reason"])
                usage = chunks[-1]["usage"]
                self.assertEqual(again[-2][1]["usage"]["output_tokens"],
                                 usage["completion_tokens"])
