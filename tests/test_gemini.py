"""
Tests for L{aigateway.llm.gemini}: OpenAI chat requests become Gemini
C{generateContent} bodies, and Gemini's answers, streams, errors and model
lists become OpenAI's, on golden fixtures written from the two API
references.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from aigateway.llm.gemini import (
    GeminiStream,
    chatToGemini,
    errorFromGemini,
    geminiToCompletion,
    modelsToOpenAI,
    retryDelay,
)
from aigateway.llm.translate import StreamError, TranslationError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "gemini")
CREATED = 1700000000
MODEL = "gemini-2.5-flash"
ID = "chatcmpl-test"


def _json(name: str) -> Any:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return json.load(f)


def _bytes(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def _chat(**fields: Any) -> dict[str, Any]:
    chat: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    chat.update(fields)
    return chat


def _run(pieces: list[bytes]) -> tuple[list[dict[str, Any]], str | None, GeminiStream]:
    """
    Feed a stream in the given pieces: the chunks it gave, and the
    L{StreamError}'s message if it raised one.
    """
    stream = GeminiStream(MODEL, CREATED, ID)
    chunks: list[dict[str, Any]] = []
    try:
        for piece in pieces:
            chunks.extend(stream.feed(piece))
        chunks.extend(stream.end())
    except StreamError as e:
        return chunks, e.message, stream
    return chunks, None, stream


def _userMessage(content: Any) -> dict[str, Any]:
    return _chat(messages=[{"role": "user", "content": content}])


class RequestTests(SynchronousTestCase):
    """
    L{chatToGemini} turns OpenAI chat requests into Gemini request bodies.
    """

    def assertRefused(self, chat: dict[str, Any], param: str) -> None:
        with self.assertRaises(TranslationError) as caught:
            chatToGemini(chat)
        self.assertEqual(caught.exception.param, param)
        self.assertEqual(caught.exception.status, 400)

    def test_plain(self) -> None:
        """
        System text, alternating turns and the sampling parameters land where
        Gemini reads them; fields that do not change the answer are not sent.
        """
        fixture = _json("request_plain.json")
        self.assertEqual(chatToGemini(fixture["openai"]), fixture["gemini"])

    def test_multimodal(self) -> None:
        """
        Images (data and http URLs), audio and files are inline or file
        data, consecutive user messages are one turn, and
        max_completion_tokens wins over max_tokens.
        """
        fixture = _json("request_multimodal.json")
        self.assertEqual(chatToGemini(fixture["openai"]), fixture["gemini"])

    def test_tools(self) -> None:
        """
        Tools, a named tool choice, assistant tool calls (with their thought
        signature) and tool results (JSON and text) become Gemini's function
        declarations, calls and responses.
        """
        fixture = _json("request_tools.json")
        self.assertEqual(chatToGemini(fixture["openai"]), fixture["gemini"])

    def test_structured(self) -> None:
        """
        A JSON schema response format is responseJsonSchema, and
        reasoning_effort is a thinking budget.
        """
        fixture = _json("request_structured.json")
        self.assertEqual(chatToGemini(fixture["openai"]), fixture["gemini"])

    def test_notModified(self) -> None:
        """
        Translating leaves the client's request as it was.
        """
        fixture = _json("request_tools.json")
        chat = copy.deepcopy(fixture["openai"])
        chatToGemini(chat)
        self.assertEqual(chat, fixture["openai"])

    def test_refusedFields(self) -> None:
        """
        Every field Gemini cannot honour is a 400 naming it, whatever else
        the request holds.
        """
        refused = {
            "logprobs": True,
            "top_logprobs": 3,
            "logit_bias": {"1234": -100},
            "audio": {"voice": "alloy", "format": "wav"},
            "prediction": {"type": "content", "content": "x"},
            "modalities": ["text", "audio"],
            "functions": [{"name": "f"}],
            "function_call": "auto",
            "web_search_options": {},
            "verbosity": "low",
            "service_tier": "flex",
            "parallel_tool_calls": False,
            "n": 2,
            "frobnicate": 1,
        }
        for field, value in refused.items():
            self.assertRefused(_chat(**{field: value}), field)

    def test_nothingAsked(self) -> None:
        """
        A field whose value asks for nothing counts as absent.
        """
        chat = _chat(logprobs=False, logit_bias={}, audio=None, frobnicate=None,
                     top_logprobs=None, n=1, service_tier="auto", parallel_tool_calls=True,
                     modalities=["text"], temperature=None)
        self.assertEqual(chatToGemini(chat), chatToGemini(_chat()))

    def test_wrongTypes(self) -> None:
        """
        A parameter of the wrong type is a 400 naming it, not a body
        Gemini would reject with less to say.
        """
        wrong = {
            "temperature": "hot",
            "top_p": True,
            "max_tokens": 0,
            "max_completion_tokens": 1.5,
            "seed": "7",
            "stop": [1],
            "presence_penalty": [],
            "frequency_penalty": "0",
            "reasoning_effort": "extreme",
            "response_format": {"type": "grammar"},
            "tool_choice": "sometimes",
            "tools": {"type": "function"},
        }
        for field, value in wrong.items():
            with self.assertRaises(TranslationError) as caught:
                chatToGemini(_chat(**{field: value}))
            self.assertTrue(caught.exception.param.startswith(field), caught.exception.param)

    def test_reasoningEffort(self) -> None:
        """
        Each reasoning effort is its thinking budget, none turning thinking
        off.
        """
        budgets = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
        for effort, budget in budgets.items():
            body = chatToGemini(_chat(reasoning_effort=effort))
            self.assertEqual(body["generationConfig"]["thinkingConfig"], {"thinkingBudget": budget})

    def test_jsonObject(self) -> None:
        """
        The JSON object response format asks for JSON without a schema.
        """
        body = chatToGemini(_chat(response_format={"type": "json_object"}))
        self.assertEqual(body["generationConfig"], {"responseMimeType": "application/json"})

    def test_toolChoice(self) -> None:
        """
        The tool choice words are Gemini's calling modes.
        """
        for choice, mode in (("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")):
            body = chatToGemini(_chat(tool_choice=choice))
            self.assertEqual(body["toolConfig"], {"functionCallingConfig": {"mode": mode}})

    def test_refusedToolChoices(self) -> None:
        """
        A tool choice that is neither a word nor a named function is
        refused.
        """
        for choice in ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}},
                       {"type": "function"}, {"type": "custom", "custom": {"name": "x"}}, 3):
            self.assertRefused(_chat(tool_choice=choice), "tool_choice")

    def test_refusedTools(self) -> None:
        """
        A tool that is not a function, or a function with fields Gemini has
        no place for, is refused at its path.
        """
        self.assertRefused(_chat(tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0].type")
        self.assertRefused(_chat(tools=[{"type": "function", "function": {"description": "no name"}}]),
                           "tools[0].function")
        self.assertRefused(
            _chat(tools=[{"type": "function", "function": {"name": "f", "examples": []}}]),
            "tools[0].function.examples")

    def test_refusedParts(self) -> None:
        """
        A content part Gemini cannot take, or cannot take as given, is
        refused at its path.
        """
        cases = [
            ({"type": "input_text", "text": "x"}, "messages[0].content[0].type"),
            ({"type": "image_url", "image_url": {"url": "https://example.com/image"}},
             "messages[0].content[0].image_url.url"),
            ({"type": "image_url", "image_url": {"url": "https://example.com/a.bmp"}},
             "messages[0].content[0].image_url.url"),
            ({"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}},
             "messages[0].content[0].image_url.url"),
            ({"type": "image_url", "image_url": {"url": "data:image/png;base64,not base64!"}},
             "messages[0].content[0].image_url.url"),
            ({"type": "image_url", "image_url": {"url": "data:image/png,raw"}},
             "messages[0].content[0].image_url.url"),
            ({"type": "image_url"}, "messages[0].content[0].image_url"),
            ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "flac"}},
             "messages[0].content[0].input_audio.format"),
            ({"type": "file", "file": {"file_id": "file-123"}}, "messages[0].content[0].file.file_id"),
            ({"type": "file", "file": {"filename": "a.txt"}}, "messages[0].content[0].file.file_data"),
            ({"text": "no type"}, "messages[0].content[0]"),
        ]
        for part, param in cases:
            self.assertRefused(_userMessage([part]), param)
        self.assertRefused(_userMessage(42), "messages[0].content")

    def test_systemTextOnly(self) -> None:
        """
        A system or developer message may only hold text.
        """
        for role in ("system", "developer"):
            chat = _chat(messages=[
                {"role": role, "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "user", "content": "Hi"}])
            self.assertRefused(chat, "messages[0].content[0].type")

    def test_refusedMessages(self) -> None:
        """
        Roles and message fields Gemini has no place for are refused at
        their path, and a conversation needs a turn besides the system's.
        """
        self.assertRefused(_chat(messages=[{"role": "function", "name": "f", "content": "x"}]),
                           "messages[0].role")
        self.assertRefused(_chat(messages=[{"role": "user", "name": "ann", "content": "Hi"}]),
                           "messages[0].name")
        self.assertRefused(_chat(messages=[{"role": "user", "content": "Hi"},
                                           {"role": "assistant", "content": "x",
                                            "audio": {"id": "a1"}}]),
                           "messages[1].audio")
        self.assertRefused(_chat(messages=[{"role": "system", "content": "Be kind."}]), "messages")
        self.assertRefused(_chat(messages=[]), "messages")
        self.assertRefused(_chat(messages=["Hi"]), "messages[0]")

    def test_badArguments(self) -> None:
        """
        Tool call arguments that are not a JSON object are refused at their
        path: Gemini takes an object.
        """
        for arguments in ("{not json", "[1, 2]", "\"text\"", "null", 7):
            chat = _chat(messages=[
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
            ])
            self.assertRefused(chat, "messages[1].tool_calls[0].function.arguments")

    def test_unknownToolCallId(self) -> None:
        """
        A tool result whose id no earlier assistant tool call gave is
        refused: Gemini needs the function's name.
        """
        chat = _chat(messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c2", "content": "done"},
        ])
        self.assertRefused(chat, "messages[2].tool_call_id")
        early = _chat(messages=[{"role": "tool", "tool_call_id": "c1", "content": "done"}])
        self.assertRefused(early, "messages[0].tool_call_id")

    def test_reusedToolCallId(self) -> None:
        """
        A tool call id given again by a later assistant message names that
        later call's function.
        """
        chat = _chat(messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "first", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "one"},
            {"role": "assistant", "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "second", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "two"},
        ])
        contents = chatToGemini(chat)["contents"]
        self.assertEqual(contents[-1], {"role": "user", "parts": [
            {"functionResponse": {"name": "second", "response": {"content": "two"}}}]})

    def test_toolResultNotObject(self) -> None:
        """
        A tool result that is JSON but not an object, or not JSON, is the
        C{content} of Gemini's response object.
        """
        for content in ("[1, 2]", "42", "plain words", ""):
            chat = _chat(messages=[
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": content},
            ])
            self.assertEqual(chatToGemini(chat)["contents"][-1]["parts"],
                             [{"functionResponse": {"name": "f", "response": {"content": content}}}])

    def test_badThoughtSignature(self) -> None:
        """
        A thought signature given back that is not a string is refused.
        """
        chat = _chat(messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"},
                 "extra_content": {"google": {"thought_signature": 5}}}]},
        ])
        self.assertRefused(chat, "messages[1].tool_calls[0].extra_content.google.thought_signature")

    def test_emptyAssistant(self) -> None:
        """
        An assistant message with neither text nor tool calls says nothing
        and leaves no empty turn; the user turns around it become one.
        """
        chat = _chat(messages=[{"role": "user", "content": "a"},
                               {"role": "assistant", "content": ""},
                               {"role": "user", "content": "b"}])
        self.assertEqual(chatToGemini(chat)["contents"],
                         [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}])

    def test_assistantRefusal(self) -> None:
        """
        An assistant's refusal part is its text in the history.
        """
        chat = _chat(messages=[{"role": "user", "content": "a"},
                               {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
                               {"role": "user", "content": "b"}])
        self.assertEqual(chatToGemini(chat)["contents"][1], {"role": "model", "parts": [{"text": "No."}]})


class ResponseTests(SynchronousTestCase):
    """
    L{geminiToCompletion} turns Gemini answers into chat completions.
    """

    def assertFixture(self, name: str) -> None:
        fixture = _json(name)
        self.assertEqual(geminiToCompletion(fixture["gemini"], model=MODEL, created=CREATED, id=ID),
                         fixture["openai"])

    def test_plain(self) -> None:
        """
        Text parts are joined; the response id and model version are the
        answer's id and model.
        """
        self.assertFixture("response_plain.json")

    def test_toolCall(self) -> None:
        """
        Function calls are tool calls, with Gemini's id or a stable one of
        ours, compact JSON arguments and the thought signature, and the
        finish reason says so.
        """
        self.assertFixture("response_tool_call.json")

    def test_usage(self) -> None:
        """
        Thoughts are reasoning content; cached, tool-use and thought tokens
        are counted as OpenAI counts them.
        """
        self.assertFixture("response_usage.json")

    def test_blocked(self) -> None:
        """
        A blocked prompt is an empty answer stopped by the content filter.
        """
        self.assertFixture("response_blocked.json")

    def test_finishReasons(self) -> None:
        """
        Every Gemini finish reason has its OpenAI word.
        """
        reasons = {
            "STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
            "RECITATION": "content_filter", "LANGUAGE": "content_filter",
            "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter",
            "SPII": "content_filter", "IMAGE_SAFETY": "content_filter",
            "IMAGE_PROHIBITED_CONTENT": "content_filter", "OTHER": "stop",
            "MALFORMED_FUNCTION_CALL": "stop", "FINISH_REASON_UNSPECIFIED": "stop",
            "SOMETHING_NEW": "stop",
        }
        for reason, expected in reasons.items():
            response = {"candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]},
                                        "finishReason": reason}]}
            result = geminiToCompletion(response, model=MODEL, created=CREATED, id=ID)
            self.assertEqual(result["choices"][0]["finish_reason"], expected, reason)

    def test_noUsage(self) -> None:
        """
        An answer without usage metadata has no usage, rather than made-up
        counts.
        """
        response = {"candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]},
                                    "finishReason": "STOP"}]}
        self.assertNotIn("usage", geminiToCompletion(response, model=MODEL, created=CREATED, id=ID))

    def test_sameIdsAsStream(self) -> None:
        """
        A plain answer and a stream of the same function calls give them the
        same ids.
        """
        chunks, _, _ = _run([_bytes("stream_tool_call.sse")])
        streamed = [call["id"] for c in chunks for choice in c["choices"]
                    for call in choice["delta"].get("tool_calls", []) if "id" in call]
        response = {"responseId": "resp-tool-1", "candidates": [{
            "content": {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {}}},
                {"functionCall": {"id": "fc-2", "name": "get_time", "args": {}}}]},
            "finishReason": "STOP"}]}
        plain = geminiToCompletion(response, model=MODEL, created=CREATED, id=ID)
        self.assertEqual([c["id"] for c in plain["choices"][0]["message"]["tool_calls"]], streamed)


STREAMS = ["plain", "tool_call", "reasoning", "blocked", "error"]


class StreamTests(SynchronousTestCase):
    """
    L{GeminiStream} turns a Gemini SSE stream into chat completion chunks,
    however its bytes are cut.
    """

    def assertStream(self, name: str, pieces: list[bytes]) -> GeminiStream:
        expected = _json(f"stream_{name}.json")
        chunks, error, stream = _run(pieces)
        self.assertEqual(chunks, expected["chunks"])
        self.assertEqual(error, expected.get("error"))
        return stream

    def test_whole(self) -> None:
        """
        Each recorded stream in one piece gives its chunks, ending with the
        usage chunk (or the error), and reports its id and model.
        """
        for name in STREAMS:
            expected = _json(f"stream_{name}.json")
            stream = self.assertStream(name, [_bytes(f"stream_{name}.sse")])
            self.assertEqual(stream.responseId, expected["responseId"])
            self.assertEqual(stream.responseModel, expected["responseModel"])
            if "error" not in expected:
                self.assertEqual(stream.usage, expected["chunks"][-1]["usage"])

    def test_everySplit(self) -> None:
        """
        Each recorded stream cut in two at every byte gives the same chunks.
        """
        for name in STREAMS:
            data = _bytes(f"stream_{name}.sse")
            for i in range(len(data) + 1):
                self.assertStream(name, [data[:i], data[i:]])

    def test_byteByByte(self) -> None:
        """
        Each recorded stream fed one byte at a time gives the same chunks.
        """
        for name in STREAMS:
            data = _bytes(f"stream_{name}.sse")
            self.assertStream(name, [data[i:i + 1] for i in range(len(data))])

    def test_endsEarly(self) -> None:
        """
        A stream that ends before a finish reason is an error, never a
        complete-looking answer: wherever it is cut before the last event.
        """
        data = _bytes("stream_plain.sse")
        last = data.rindex(b"data:")
        for i in range(0, last + 1, 7):
            chunks, error, _ = _run([data[:i]])
            self.assertIsNotNone(error, i)
            self.assertFalse(any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks))

    def test_badFrames(self) -> None:
        """
        A frame that is not a JSON object is an error.
        """
        for frame in (b"data: {not json\n\n", b"data: [1]\n\n", b"data: \"x\"\n\n"):
            _, error, _ = _run([frame])
            self.assertIsNotNone(error, frame)

    def test_contentAfterFinish(self) -> None:
        """
        Content after the finish reason is an error, not text the client
        would take as part of a finished answer.
        """
        data = _bytes("stream_plain.sse") + (
            b'data: {"candidates": [{"content": {"parts": [{"text": "more"}]}}]}\r\n\r\n')
        _, error, _ = _run([data])
        self.assertIsNotNone(error)

    def test_usageAfterFinish(self) -> None:
        """
        Usage sent after the finish reason is the usage reported.
        """
        data = _bytes("stream_plain.sse") + (
            b'data: {"usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 7}}\n\n')
        chunks, error, _ = _run([data])
        self.assertIsNone(error)
        self.assertEqual(chunks[-1]["usage"], {"prompt_tokens": 8, "completion_tokens": 7,
                                               "total_tokens": 15})

    def test_errorStays(self) -> None:
        """
        After an error, the stream keeps failing: more bytes or the end
        never make it look complete.
        """
        data = _bytes("stream_error.sse")
        stream = GeminiStream(MODEL, CREATED, ID)
        self.assertEqual(len(stream.feed(data)), 2)
        self.assertRaises(StreamError, stream.feed, b"")
        self.assertRaises(StreamError, stream.end)

    def test_errorNamesOnlyItsStatus(self) -> None:
        """
        The error of an error event names the upstream's status and repeats
        nothing else it said.
        """
        _, error, _ = _run([b'data: {"error": {"code": 500, "message": "secret detail", '
                            b'"status": "INTERNAL"}}\n\n'])
        self.assertEqual(error, "The Gemini stream ended with an error (INTERNAL).")

    def test_fallbackIdAndModel(self) -> None:
        """
        A stream whose events carry no response id or model version uses the
        ones given.
        """
        chunks, error, stream = _run([
            b'data: {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "MAX_TOKENS"}]}\n\n'])
        self.assertIsNone(error)
        self.assertEqual({(c["id"], c["model"]) for c in chunks}, {(ID, MODEL)})
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "length")
        self.assertIsNone(stream.responseId)
        self.assertIsNone(stream.responseModel)


class ErrorTests(SynchronousTestCase):
    """
    L{errorFromGemini} turns Gemini error answers into OpenAI errors.
    """

    def test_errors(self) -> None:
        """
        Each recorded error answer has its status, type, code and message,
        list-wrapped or not, JSON or not.
        """
        for case in _json("errors.json"):
            body = case["body"]
            raw = body.encode("utf-8") if isinstance(body, str) else json.dumps(body).encode("utf-8")
            error = errorFromGemini(case["status"], raw)
            self.assertEqual(
                {"status": error.status, "type": error.type, "code": error.code, "message": error.message},
                case["expected"], case)
            self.assertEqual(retryDelay(raw), case["retryDelay"])


class ModelsTests(SynchronousTestCase):
    """
    L{modelsToOpenAI} turns Gemini's model list into OpenAI's.
    """

    def test_models(self) -> None:
        """
        Each model is listed by its id without the C{models/} prefix, owned
        by google.
        """
        fixture = _json("models.json")
        self.assertEqual(modelsToOpenAI(fixture["gemini"]), fixture["openai"])

    def test_empty(self) -> None:
        """
        An answer without models is an empty list.
        """
        self.assertEqual(modelsToOpenAI({}), {"object": "list", "data": []})
